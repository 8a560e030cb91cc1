"""The farm's queueing on Celery (Redis, or the embedded filesystem broker).

* ``names`` — the task and queue names (binding constants);
* ``app`` — the configured Celery app (:func:`farm.queue.app.get_app`);
* ``enqueue`` — sending wake-up messages for ledger jobs, the reaper pass, the retry policy;
* ``tasks`` — the ``farm.render`` task (workers only; producers send by name).
"""
