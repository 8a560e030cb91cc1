"""``farm api [--host H] [--port P] [--insecure-local]``: serve the HTTP API with uvicorn.

Every ``/v1`` route, ``/metrics`` and ``/openapi.json`` require ``Authorization: Bearer $FARM_API_TOKEN``
(``/healthz`` and ``/readyz`` excepted); the review room (``/ui/``) and ``/docs`` take the same token
through a login form (a session cookie). Without a token
the command refuses to start (exit 2), unless it binds to 127.0.0.1 (or ::1) and is given
``--insecure-local`` — for a developer's own machine only. The token is never printed or logged.
"""

from __future__ import annotations

import logging

import click

from farm.cli.common import EXIT_BAD_INPUT, broker_option, database_option, handle_errors, option, settings_with

#: The token is never an option (an option's value can leak into ``ps``, shell history and help
#: output): it is read from the environment only, and ``--help`` says so.
_AUTH_EPILOG = (
    "Authentication: every API route but /healthz and /readyz requires `Authorization: Bearer <token>`, where "
    "the token is the value of the FARM_API_TOKEN environment variable (at least 16 characters); the review room "
    "at /ui/ and /docs ask for the same token on a login page (a session cookie). It is read from "
    "the environment only (there is no option for it) and is never printed or logged. Without "
    "FARM_API_TOKEN the command refuses to start, unless it binds to 127.0.0.1 or ::1 with --insecure-local."
)


def register(group: click.Group) -> None:
    """Add ``farm api`` to ``group``."""
    @group.command("api", short_help="Serve farm's HTTP API (needs FARM_API_TOKEN).", epilog=_AUTH_EPILOG)
    @option("--host", envvar="FARM_API_HOST", default=None,
            help="Address to bind (default: FARM_API_HOST, else 127.0.0.1).")
    @option("--port", envvar="FARM_API_PORT", type=click.IntRange(1, 65535), default=None,
            help="Port to listen on (default: FARM_API_PORT, else 8400).")
    @option("--insecure-local", is_flag=True, default=False, allow_from_autoenv=False,
            help="Serve WITHOUT a token: only on 127.0.0.1/::1, for a developer's machine "
            "(a flag only: no environment variable turns it on).")
    @option("--log-level", envvar="FARM_LOG_LEVEL", default=None, help="uvicorn log level (default: FARM_LOG_LEVEL).")
    @database_option()
    @broker_option()
    @handle_errors()
    def api(host: str | None, port: int | None, insecure_local: bool, log_level: str | None,
            database_url: str | None, broker_url: str | None) -> None:
        """Serve farm's HTTP API and the review room (/ui/); needs FARM_API_TOKEN."""
        import uvicorn

        from farm.api.app import create_app
        from farm.api.auth import ApiConfigError

        settings = settings_with(api_host=host, api_port=port, database_url=database_url, broker_url=broker_url)
        logging.basicConfig(level=(log_level or settings.log_level).upper(),
                            format="%(levelname)s:     %(name)s: %(message)s")
        try:
            app = create_app(settings, insecure_local=insecure_local)
        except ApiConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(EXIT_BAD_INPUT) from None
        shown = f"[{settings.api_host}]" if ":" in settings.api_host else settings.api_host
        click.echo(f"farm api: review room at http://{shown}:{settings.api_port}/ui/ "
                   f"(API docs at /docs)", err=True)
        uvicorn.run(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level=(log_level or settings.log_level).lower(),
            server_header=False,
        )
