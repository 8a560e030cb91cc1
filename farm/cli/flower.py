"""``farm flower [--port P] [--address A]``: Flower, the live Celery monitor, on farm's Celery app.

Basic auth is mandatory: the command refuses to start (exit 2) unless ``FARM_FLOWER_BASIC_AUTH``
holds ``user:password``. The credentials go to Flower in-process — never on a command line (where
``ps`` would show them), never printed or logged.

Flower shows the workers by their Celery names (``farm-gpu0@host``, one per GPU) and the tasks they
run, from the workers' task events. It is a live view, not a history (the ledger is); its state is
saved to ``FARM_FLOWER_DB`` (default ``flower.db`` in the data dir) every
:data:`FLOWER_STATE_SAVE_INTERVAL_S` seconds and at shutdown, and loaded at start, so a restart does
not empty the dashboard. Workers offline for ``FARM_FLOWER_PURGE_OFFLINE_S`` seconds are dropped.

**Flower's own ``/metrics`` and ``/healthcheck`` are NOT behind its auth** (Flower serves them to
anyone). Keep Flower's port private — bound to 127.0.0.1 (the default here), or on an internal
network reachable only by Prometheus and an authenticating reverse proxy — never published as is.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import click

from farm.cli.common import EXIT_BAD_INPUT, broker_option, handle_errors, option, settings_with
from farm.settings import Settings, redacted_url

log = logging.getLogger(__name__)

#: Default bind address: private unless explicitly opened.
DEFAULT_ADDRESS = "127.0.0.1"
#: Seconds between two saves of Flower's state to FARM_FLOWER_DB (it is saved at shutdown too).
FLOWER_STATE_SAVE_INTERVAL_S = 60


class FlowerConfigError(Exception):
    """Flower must not start with this configuration (the message never holds the secret)."""


def basic_auth_credentials(settings: Settings) -> str:
    """``user:password`` from FARM_FLOWER_BASIC_AUTH, checked; :class:`FlowerConfigError` otherwise."""
    secret = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth is not None else ""
    if not secret:
        raise FlowerConfigError(
            "FARM_FLOWER_BASIC_AUTH is not set: Flower refuses to start without basic auth (user:password)"
        )
    user, sep, password = secret.partition(":")
    if not sep or not user or not password:
        raise FlowerConfigError("FARM_FLOWER_BASIC_AUTH must be user:password (both non-empty)")
    if "," in secret:
        raise FlowerConfigError("FARM_FLOWER_BASIC_AUTH must hold one user:password pair (no commas)")
    return secret


def flower_options(settings: Settings, *, port: int, address: str, credentials: str) -> Any:
    """Flower's (tornado) options for farm: bind, basic auth, persistence and purging of offline workers."""
    from flower.options import options

    options.port = port
    options.address = address
    options.basic_auth = [credentials]
    options.auth = ""
    options.persistent = True
    options.db = str(settings.flower_db_path)
    options.state_save_interval = FLOWER_STATE_SAVE_INTERVAL_S * 1000  # milliseconds
    options.purge_offline_workers = settings.flower_purge_offline_s or None  # None: never
    return options


def make_flower(celery_app: Any, settings: Settings, *, port: int, address: str, credentials: str) -> Any:
    """A Flower application for ``celery_app`` (not started); its saved state, if any, is loaded."""
    from flower.app import Flower
    from flower.urls import settings as flower_settings

    options = flower_options(settings, port=port, address=address, credentials=credentials)
    settings.flower_db_path.parent.mkdir(parents=True, exist_ok=True)
    return Flower(capp=celery_app, options=options, **flower_settings)


def run_flower(celery_app: Any, settings: Settings, *, port: int, address: str, credentials: str) -> None:
    """Serve Flower for ``celery_app`` until SIGTERM/SIGINT.

    Configured in-process: no ``flowerconfig.py`` from the working directory, no
    environment, no argv.
    """
    flower = make_flower(celery_app, settings, port=port, address=address, credentials=credentials)

    def stop(signum: int, _frame: Any) -> None:
        log.info("flower: signal %d, shutting down", signum)
        flower.stop()

    signal.signal(signal.SIGTERM, stop)
    bound = flower.start_http_server()
    log.info("flower: listening on %s:%s (basic auth on; /metrics and /healthcheck are public: keep "
             "this port private)", address or "0.0.0.0", bound)  # noqa: S104 - only describes the bind
    try:
        flower.start()
    except KeyboardInterrupt:
        flower.stop()


def register(group: click.Group) -> None:
    """Add ``farm flower`` to ``group``."""
    @group.command("flower")
    @option("--port", envvar="FARM_FLOWER_PORT", type=click.IntRange(1, 65535), default=None,
            help="Port to listen on (default: FARM_FLOWER_PORT, else 5555).")
    @option("--address", default=DEFAULT_ADDRESS, show_default=True, allow_from_autoenv=False,
            help="Address to bind. Flower's /metrics and /healthcheck are public: keep it private.")
    @broker_option()
    @handle_errors()
    def flower_command(port: int | None, address: str, broker_url: str | None) -> None:
        """Run Flower (basic auth from FARM_FLOWER_BASIC_AUTH, required) on farm's Celery app."""
        settings = settings_with(flower_port=port, broker_url=broker_url)
        try:
            credentials = basic_auth_credentials(settings)
        except FlowerConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        from farm.queue.app import get_app

        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log.info("flower: broker %s, state in %s", redacted_url(settings.broker), settings.flower_db_path)
        run_flower(get_app(settings), settings, port=settings.flower_port, address=address, credentials=credentials)
