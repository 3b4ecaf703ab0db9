"""HTTP ingest: ``POST /v1/events/{event_type}`` and friends, in front of a connector.

A request is agency JSON as ``connectors.ingest.request`` reads it (case reference, urgency, sharing
decision, event).

Answers: 202 with the message id and recipients; 400 for a body that is not JSON or nests too
deep; 403 for a type the agency may not send; 404 for an unknown type; 409 when an
``Idempotency-Key`` is reused for a different request; 413 for a body over the limit (read no
further than the limit) or a message too large once sealed; 415 unless the body is declared JSON;
422 with every field error (path, problem, expected, kind of value given; never the value; at most
``MAX_ERRORS`` listed); 503 only when Kafka cannot take it now (nothing was published: retry with
the same key). The OpenAPI document's request bodies are generated from the Avro schemas.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from broker.errors import PolicyError
from broker.logging import get_logger
from broker.policy.reference import reference
from broker.schema import limits
from broker.web import serve_api_docs
from connectors.gateway.chronology import to_csv, to_html
from connectors.gateway.connector import Connector
from connectors.ingest.auth import AuthError, Scope, TokenStore
from connectors.ingest.idempotency import IdempotencyStore, body_hash
from connectors.ingest.openapi import event_paths
from connectors.ingest.submit import Rejected, Submitter

log = get_logger("http_ingest")
#: Default request body limit.
MAX_BODY = 1024 * 1024


class BodyTooLarge(Exception):
    """The request body is over the limit."""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read no further than ``limit`` bytes (BodyTooLarge past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def is_json(content_type: str | None) -> bool:
    """``application/json`` or a ``+json`` type, with any parameters."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def problem(status: int, text: str, path: str = "", expected: str = "") -> JSONResponse:
    """An error answer in the shape every ingest refusal has."""
    err = {"path": path, "problem": text, "expected": expected, "got": ""}
    return JSONResponse(status_code=status, content={"error": text, "errors": [err]})


def capped(rejected: Rejected) -> dict[str, Any]:
    """A refusal's body with at most ``MAX_ERRORS`` errors listed (and how many were left out)."""
    body = rejected.body()
    extra = len(rejected.errors) - limits.MAX_ERRORS
    if extra > 0:
        body["errors"] = rejected.errors[: limits.MAX_ERRORS]
        body["more_errors"] = extra
    return body


def _file_name(case_ref: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in case_ref)[:80]
    return f"chronology-{safe}"


def create_app(
    connector: Connector,
    store: IdempotencyStore,
    *,
    max_body: int = MAX_BODY,
    tokens: TokenStore | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The connector's HTTP edge.

    ``tokens`` None is anonymous access, for development only (the command line allows it only on
    a loopback address). ``allowed_hosts`` (``Host`` header values, ``*.example`` patterns) guards
    against DNS rebinding. Any request with an ``Origin`` header is refused: the edge is for the
    agency's systems, never for a web page in somebody's browser (and no CORS is served).
    """
    app = FastAPI(
        title=f"cbx connector for {connector.agency}",
        version="1",
        description="Post an agency's safeguarding events to the Cross-Boundary Exchange.",
        docs_url=None,
        redoc_url=None,
    )
    serve_api_docs(app, f"cbx connector for {connector.agency}")
    submitter = Submitter(connector)
    wrapper_raw = submitter.reader.wrapper_raw

    @app.middleware("http")
    async def edge(request: Request, call_next: Any) -> Response:
        if request.headers.get("origin") is not None:
            return problem(403, "cross-origin requests are refused (no browser may post here)")
        response: Response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    def denied(request: Request, scope: Scope) -> Response | None:
        """None when the request may use ``scope``; else the 401 or 403 answer."""
        if tokens is None:
            return None
        try:
            tokens.check(request.headers.get("authorization"), scope)
        except AuthError as exc:
            answer = problem(exc.status, exc.problem)
            if exc.status == 401:
                answer.headers["WWW-Authenticate"] = 'Bearer realm="cbx"'
            return answer
        return None

    @app.post("/v1/events/{event_type}", status_code=202, include_in_schema=False)
    async def ingest(event_type: str, request: Request) -> Response:
        if (refused := denied(request, Scope.SUBMIT)) is not None:
            return refused
        if not submitter.knows(event_type):
            return JSONResponse(
                status_code=404, content={"error": f"unknown message type {event_type}"}
            )
        if not is_json(request.headers.get("content-type")):
            return problem(415, "the body must be JSON", "", "Content-Type: application/json")
        try:
            raw = await read_body(request, max_body)
        except BodyTooLarge:
            return problem(413, f"the body is over {max_body} bytes", "", f"at most {max_body}")
        except ClientDisconnect:
            return problem(400, "the client went away before the body arrived")
        key = request.headers.get("Idempotency-Key")
        if key is not None and (len(key) > 200 or not key.isprintable()):
            return problem(400, "Idempotency-Key is over 200 characters or not printable")
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's stack
            return problem(400, "not valid JSON", "", "a JSON object")
        if not isinstance(payload, dict):
            return problem(400, "the body is not a JSON object", "", "a JSON object")
        if limits.depth_of(payload) > limits.MAX_DEPTH:
            return problem(400, f"JSON nested deeper than {limits.MAX_DEPTH} levels")
        digest = body_hash(raw)
        lock = store.lock(key) if key else None
        if lock is not None:
            await lock.acquire()
        try:
            if key:
                seen = store.get(key)
                if seen is not None:
                    if seen["hash"] != digest or seen["event_type"] != event_type:
                        return JSONResponse(
                            status_code=409,
                            content={
                                "error": "Idempotency-Key already used for a different request"
                            },
                        )
                    return JSONResponse(
                        status_code=202, content={**seen["answer"], "replayed": True}
                    )
            result = await submitter.submit(event_type, payload)
            if isinstance(result, Rejected):
                return JSONResponse(status_code=result.status, content=capped(result))
            answer = result.answer()
            store.record(key, digest, event_type, answer)
            log.info(
                "event_published",
                message_id=answer["message_id"],
                event_type=event_type,
                recipients=len(answer["recipients"]),
            )
            return JSONResponse(status_code=202, content=answer)
        finally:
            if lock is not None:
                lock.release()

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        """The process answers."""
        return JSONResponse(content={"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        """Ready while the inbox loop runs (a connector without one is never ready)."""
        running = connector.inbox.running
        return JSONResponse(
            status_code=200 if running else 503,
            content={"ready": running, "inbox": "running" if running else "stopped"},
        )

    @app.get("/v1/messages/{message_id}")
    async def message(message_id: str, request: Request) -> Response:
        """What became of a message this agency sent: each recipient's state.

        ``status`` is PUBLISHED until the router has taken the message, then ACCEPTED, ROUTED,
        DELIVERED (every recipient's system has it) and ACKNOWLEDGED (every recipient confirmed);
        REJECTED, ROUTE_GAP, RECIPIENT_REJECTED, OVERDUE or ESCALATED when something needs a
        person. Metadata only.
        """
        if (refused := denied(request, Scope.READ)) is not None:
            return refused
        rec = store.message(message_id)
        if rec is None:
            return JSONResponse(
                status_code=404, content={"error": "no such message from this agency"}
            )
        known = connector.delivery_status(message_id)
        if known is None:
            known = {
                "status": "PUBLISHED",
                "recipients": [{**r, "status": "PUBLISHED"} for r in rec["answer"]["recipients"]],
            }
        return JSONResponse(content={**rec["answer"], **known})

    @app.get("/v1/cases/{case_ref:path}/chronology")
    async def chronology(case_ref: str, request: Request, format: str = "json") -> Response:
        """The case as this agency holds it: every message it sent or received about the case, in
        order, with its time, type, sender and recipients (names and roles), the fields this
        agency may read (a withheld field says so, with its class), delivery and acknowledgement
        states, and the statutory clocks each message started or met.

        ``format``: ``json`` (the export ``cbx chronology merge`` combines), ``csv`` or ``html``
        (a printable page). Only messages this agency took part in; nobody else's.
        """
        if (refused := denied(request, Scope.CHRONOLOGY)) is not None:
            return refused
        if format not in ("json", "csv", "html"):
            return problem(400, "format must be json, csv or html", "format", "json|csv|html")
        found = connector.registry.get(case_ref)
        case_id = found.case_ref if found is not None else case_ref
        try:
            doc = await connector.chronologies.chronology(case_id)
        except PolicyError as exc:
            return JSONResponse(status_code=404, content={"error": str(exc)})
        if format == "csv":
            return Response(
                to_csv(doc),
                media_type="text/csv; charset=utf-8",
                headers={
                    "Content-Disposition": f'attachment; filename="{_file_name(case_id)}.csv"'
                },
            )
        if format == "html":
            return HTMLResponse(
                to_html(doc),
                headers={
                    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"
                },
            )
        return JSONResponse(content=doc)

    @app.get("/v1/cases/{case_ref:path}")
    async def case(case_ref: str, request: Request) -> Response:
        """Whom a message about this case will reach now: its parties in force and their roles, and
        the former parties with until when (no content).

        ``case_ref`` as the agency's system knows it (bare, or ``<placing authority>/<ref>``).
        Only cases this agency can see (those it is a party to; every case for a police force).
        """
        if (refused := denied(request, Scope.READ)) is not None:
            return refused
        found = connector.registry.get(case_ref)
        if found is None:  # perhaps registered a moment ago: catch up once, not on every call
            await connector.sync()
            found = connector.registry.get(case_ref)
        if found is None:
            matches = connector.registry.find(case_ref)
            problem = (
                f"case reference {case_ref} names {len(matches)} cases: give "
                "<placing authority>/<reference>"
                if matches
                else f"no case {case_ref} that this agency can see"
            )
            return JSONResponse(status_code=409 if matches else 404, content={"error": problem})
        return JSONResponse(content=found.view(reference().name_of))

    @app.post("/v1/messages/{message_id}/ack", status_code=202)
    async def acknowledge(message_id: str, request: Request) -> Response:
        """The agency's system confirms a message delivered to it: an ACKNOWLEDGED receipt."""
        if (refused := denied(request, Scope.ACKNOWLEDGE)) is not None:
            return refused
        try:
            await connector.acknowledge(message_id)
        except PolicyError as exc:
            return JSONResponse(status_code=404, content={"error": str(exc)})
        return JSONResponse(
            status_code=202, content={"message_id": message_id, "status": "ACKNOWLEDGED"}
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        if tokens is not None:
            doc.setdefault("components", {})["securitySchemes"] = {
                "apiToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "cbx_<id>_<secret>, from cbx connector token add",
                }
            }
            doc["security"] = [{"apiToken": []}]
        paths, schemas = event_paths(connector.catalogue, wrapper_raw)
        doc.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        doc["paths"].update(paths)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
    return app
