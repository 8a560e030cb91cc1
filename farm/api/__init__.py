"""farm's HTTP API (FastAPI): ``farm api`` serves :func:`farm.api.app.create_app`.

Modules: ``app`` (the factory, error answers), ``routes`` (the ``/v1`` routes, ``/healthz``,
``/metrics``), ``lists`` (the list routes, labels and stars), ``auth`` (bearer token, start-up
policy), ``schemas`` (request models), ``views`` (typed answers), ``openapi_rules`` and
``patterns`` (the spec's rules in the OpenAPI schema), ``bodies`` (manifests in request bodies),
``files`` (which file a download serves).

Producer code: never imports torch, diffusers, numpy, ``farm.engine`` or ``farm.worker.task``.
"""

from farm.api.app import create_app

__all__ = ["create_app"]
