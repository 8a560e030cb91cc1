"""``/docs`` (Swagger UI) and ``/redoc`` served from local files: no CDN, no external fonts, works offline.

Swagger UI's and ReDoc's files ship inside the ``fastapi-offline`` package (its ``static/``
folder); :data:`ASSETS` names the only files served, by a fixed name (never a path from the
request), under ``/docs/assets/``. The pages are FastAPI's own (``get_swagger_ui_html``,
``get_redoc_html``) pointed at those URLs, with Swagger UI's online validator badge off (it
would call swagger.io). Like every path but the probes, they need the bearer token or a review
room session (a browser logged in at ``/ui/login`` opens them).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

ASSETS_PREFIX = "/docs/assets"
#: Served file name -> its media type (files of fastapi-offline's static folder).
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


def assets_dir() -> Path:
    """fastapi-offline's folder of Swagger UI / ReDoc files."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("fastapi-offline is not installed: /docs needs its Swagger UI files")
    return Path(spec.origin).with_name("static")


def add_docs(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and their local assets to ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    folder = assets_dir()
    title = f"{app.title} — API docs"
    openapi_url = app.openapi_url or "/openapi.json"

    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=title,
            swagger_js_url=f"{ASSETS_PREFIX}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PREFIX}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
        )

    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=title,
                              redoc_js_url=f"{ASSETS_PREFIX}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS_PREFIX}/favicon.png", with_google_fonts=False)

    def asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(status_code=404, detail="no such file")
        return FileResponse(folder / name, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
    app.add_api_route(ASSETS_PREFIX + "/{name}", asset, methods=["GET"], include_in_schema=False)
