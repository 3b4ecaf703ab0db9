"""Web assets cbx serves itself, so its pages work on networks with no internet.

``static/govuk-frontend``: GOV.UK Frontend's compiled CSS and JavaScript (MIT).
``static/swagger-ui``: Swagger UI's bundle (Apache 2.0), for a connector's ``/docs``.
Versions, and the changes made to them, are in ``static/VENDORED.md``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
SWAGGER_PREFIX = "/assets/swagger-ui"


def serve_api_docs(app: FastAPI, title: str) -> None:
    """Serve Swagger UI for ``app`` at ``/docs`` from local assets (never a CDN)."""

    app.mount(SWAGGER_PREFIX, StaticFiles(directory=str(STATIC / "swagger-ui")), name="swagger")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title}: API",
            swagger_js_url=f"{SWAGGER_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_PREFIX}/swagger-ui.css",
            swagger_favicon_url="data:,",
        )
