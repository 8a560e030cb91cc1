"""The farm's Celery application, configured against the traps of Celery on Redis.

A Celery message is only a *wake-up* carrying one job id; the ledger is the source of truth, so
there is no result backend (``task_ignore_result``). The settings that matter:

* JSON only (``task_serializer``, ``accept_content``, ``result_accept_content``): a pickled message
  is refused before it is deserialised.
* ``task_acks_late`` + ``worker_prefetch_multiplier=1``: a worker reserves one message at a time and
  acknowledges it when the job ends; ``task_reject_on_worker_lost`` puts the message back when the
  worker dies. Both make a message run twice sometimes: the ledger claim (a conditional update
  with a lease) makes the second run a no-op, and the ledger's attempt count caps poison jobs.
* The visibility timeout is set in ``broker_transport_options``, ``result_backend_transport_options``
  and ``visibility_timeout`` (the shortest one wins where apps share a broker). kombu sweeps the
  unacknowledged messages only every ``unacked_restore_interval * unacked_restore_throttle``
  seconds (10 x 10 by default): the sweep is set to a quarter of the timeout (1 s to 30 s) with no
  throttle, so an abandoned message comes back about when the timeout says.
* Broker connection retries never give up (a worker outlives a broker restart); socket timeouts
  keep a dead TCP connection from hanging a publish forever.
* Task events from workers (``worker_send_task_events``) for Flower; producers send none
  (``task_send_sent_event`` off: a producer process would show up as a worker in Flower's metrics).
* One queue per route (class x model, :mod:`farm.queue.names`), each declared on its own direct
  exchange; a worker consumes only the routes of the models it serves.

Without ``FARM_BROKER_URL`` the embedded filesystem broker under ``FARM_DATA_DIR/broker`` is used
(no services needed). Producers import this module; it never imports torch or the task module.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from farm.kinds import Priority, route_of
from farm.queue.names import all_queues, queue_for
from farm.settings import Settings, get_settings

#: Seconds to wait for a TCP connection to the broker.
BROKER_CONNECT_TIMEOUT_S = 5.0
#: Seconds a blocking broker socket operation may take (BRPOP itself polls with 1 s timeouts).
BROKER_SOCKET_TIMEOUT_S = 30.0
#: Bounds of kombu's sweep for unacknowledged messages past the visibility timeout.
RESTORE_INTERVAL_MIN_S = 1
RESTORE_INTERVAL_MAX_S = 30
#: kombu's own quick publish retries (a reconnect), before farm's backoff takes over.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.5}

_apps: dict[str, Celery] = {}


def restore_interval(visibility_timeout_s: float) -> int:
    """Seconds between kombu's sweeps for messages whose visibility timeout passed."""
    return int(max(RESTORE_INTERVAL_MIN_S, min(RESTORE_INTERVAL_MAX_S, visibility_timeout_s // 4)))


def transport_options(settings: Settings) -> dict[str, Any]:
    """``broker_transport_options`` for the configured broker."""
    vt = settings.visibility_timeout_s
    if settings.broker_url is None:
        folder = str(settings.broker_path / "queue")
        return {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "processed_folder": str(settings.broker_path / "processed"),
            "control_folder": str(settings.broker_path / "control"),
            "store_processed": False,
            "visibility_timeout": vt,
        }
    return {
        "visibility_timeout": vt,
        "unacked_restore_interval": restore_interval(vt),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
        "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        "retry_on_timeout": True,
    }


def _queue(name: str) -> Queue:
    """The queue ``name`` on its own direct exchange, routed by its name."""
    exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]  # kombu has no type hints
    return Queue(name, exchange, routing_key=name)  # type: ignore[no-untyped-call]  # kombu has no type hints


def make_app(settings: Settings) -> Celery:
    """A Celery app configured for ``settings`` (see the module docstring)."""
    if settings.broker_url is None:
        for sub in ("queue", "processed", "control"):
            (settings.broker_path / sub).mkdir(parents=True, exist_ok=True)
    vt = settings.visibility_timeout_s
    app = Celery("farm", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker,
        broker_transport_options=transport_options(settings),
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT_S,
        result_backend=None,
        result_backend_transport_options={"visibility_timeout": vt},
        visibility_timeout=vt,
        task_ignore_result=True,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        # (no "sent" events: they would make every producer process a "worker" in Flower's metrics)
        task_send_sent_event=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_enable_remote_control=True,
        task_queues=[_queue(name) for name in all_queues()],
        task_default_queue=queue_for(route_of(Priority.BATCH.value, settings.default_model)),
        task_create_missing_queues=False,
        task_publish_retry=True,
        task_publish_retry_policy=dict(PUBLISH_RETRY_POLICY),
        enable_utc=True,
        timezone="UTC",
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
    )
    return app


def get_app(settings: Settings | None = None) -> Celery:
    """The process's app for ``settings`` (default: :func:`farm.settings.get_settings`), cached."""
    settings = settings or get_settings()
    key = settings.model_dump_json()
    app = _apps.get(key)
    if app is None:
        app = _apps[key] = make_app(settings)
    return app
