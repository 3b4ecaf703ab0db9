"""The console's web application: server-rendered GOV.UK Design System pages and a JSON API over
the same queries, behind sign-in.

Every page is HTML rendered by Jinja2 with autoescaping; the only script is a small module of our
own (``console.js``) that starts GOV.UK Frontend and refreshes the board. Every asset is served
from here (``/assets``): the page works on a network with no internet. A content security policy
forbids anything else.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from broker.admin.provision import SERVICES
from broker.errors import CbxError
from broker.kafka.acls import grants
from broker.kafka.settings import KafkaSettings
from broker.policy.obligations import Clocks, Seen, from_text
from broker.web import STATIC

from .auth import Accounts, Expired, Role, Session, Sessions, csrf_matches
from .feed import AuditLog, FeedState, GroupLag
from .oidc import OidcSettings, name_of
from .oidc import client as oidc_client
from .store import STATUSES, Search, ViewStore, utc

HERE = Path(__file__).parent
COOKIE = "cbx_console_session"
LOGIN_CSRF_COOKIE = "cbx_console_signin"
CSRF_REFUSED = "missing or wrong CSRF token"
_SIGN_IN_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")
WINDOWS = {"hour": 3600, "day": 86_400, "week": 7 * 86_400}
MAX_FORM_BYTES = 64 * 1024
ROTATE_AFTER_DAYS = 365
"""A key older than this is shown as due for rotation (the keys runbook's yearly rotation)."""

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'; object-src 'none'"
)


@dataclass
class Console:
    """What the pages read and write."""

    settings: KafkaSettings
    store: ViewStore
    audit: AuditLog
    accounts: Accounts
    sessions: Sessions
    feed: FeedState
    replay: Callable[[str, str], Awaitable[Any]]
    """(dead letter id, operator) → replays it."""
    secure_cookies: bool = False
    lag: Callable[[], dict[str, GroupLag]] = dict
    oidc: OidcSettings | None = None


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _when(v: Any) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, int | float):
        v = utc(float(v))
    if isinstance(v, str):
        try:
            v = dt.datetime.fromisoformat(v)
        except ValueError:
            return str(v)
    assert isinstance(v, dt.datetime)
    return v.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(abs(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    text = f"{h} h {m} min" if h else (f"{m} min {sec} s" if m else f"{sec} s")
    return text if seconds >= 0 else f"in {text}"


_TAGS = {
    "ACKNOWLEDGED": "green",
    "DELIVERED": "blue",
    "ROUTED": "light-blue",
    "ACCEPTED": "grey",
    "REPAIRED": "turquoise",
    "ROUTE_GAP": "orange",
    "OVERDUE": "orange",
    "ESCALATED": "red",
    "REJECTED": "red",
    "RECIPIENT_REJECTED": "red",
    "REPLAYED": "purple",
    "IMMEDIATE": "red",
    "URGENT": "orange",
    "ROUTINE": "grey",
}


def create_app(c: Console) -> FastAPI:
    app = FastAPI(title="cbx operator console", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["when"] = _when
    env.filters["duration"] = _duration
    env.globals["tag_colour"] = lambda s: _TAGS.get(str(s), "grey")
    app.mount("/assets/console", StaticFiles(directory=str(HERE / "static")), name="console")
    app.mount("/assets/vendor", StaticFiles(directory=str(STATIC)), name="vendor")

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        if request.method == "POST":
            # Every form here is small; the sign-in form is open to anyone, so a body is
            # refused before it is read unless its length is given and modest.
            try:
                length = int(request.headers.get("content-length", ""))
            except ValueError:
                return PlainTextResponse("Content-Length required", status_code=411)
            if length > MAX_FORM_BYTES:
                return PlainTextResponse(
                    f"form too large ({length} bytes; at most {MAX_FORM_BYTES})", status_code=413
                )
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.url.path.startswith("/assets/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    def client(request: Request) -> str | None:
        return request.client.host if request.client else None

    async def session_of(request: Request) -> Session | None:
        try:
            s = c.sessions.get(request.cookies.get(COOKIE))
            if s is not None and s.via == "password" and not c.accounts.exists(s.user):
                c.sessions.end(s.token)
                raise Expired(s.user)
            return s
        except Expired as exc:
            await c.audit.record(
                exc.user,
                "session",
                "REFUSED",
                reason="session expired",
                client=client(request),
            )
            raise Refused(440, "Your session has expired. Sign in again.") from None

    def page(
        request: Request, name: str, s: Session | None, status: int = 200, **ctx: Any
    ) -> Response:
        r: Response = templates.TemplateResponse(
            request,
            name,
            {"s": s, "path": request.url.path, **ctx},
            status_code=status,
        )
        return r

    def to_sign_in(request: Request, expired: bool = False) -> Response:
        nxt = urllib.parse.quote(str(request.url.path))
        return RedirectResponse(
            f"/sign-in?next={nxt}{'&expired=1' if expired else ''}", status_code=303
        )

    async def viewer(request: Request) -> Session | Response:
        """The signed-in session, or the answer that sends the browser to sign in."""
        api = request.url.path.startswith("/api/")
        try:
            s = await session_of(request)
        except Refused as exc:
            if api:
                return JSONResponse({"error": exc.message}, status_code=401)
            return to_sign_in(request, expired=True)
        if s is None:
            if api:
                return JSONResponse({"error": "sign in first"}, status_code=401)
            return to_sign_in(request)
        return s

    class _Answer(Exception):
        def __init__(self, response: Response) -> None:
            super().__init__()
            self.response = response

    async def signed(request: Request) -> Session:
        """A dependency: the signed-in session, or the answer sending the browser to sign in."""
        s = await viewer(request)
        if isinstance(s, Response):
            raise _Answer(s)
        return s

    @app.exception_handler(_Answer)
    async def answer(request: Request, exc: _Answer) -> Response:
        return exc.response

    async def acting(request: Request, action: str, **about: Any) -> tuple[Session, Any]:
        """For a POST: the signed-in session, with its CSRF token checked and, for anything but
        a sign-out, the operator role. Every refusal is recorded in the audit topic."""
        try:
            s = await session_of(request)
        except Refused as exc:
            raise Refused(401, exc.message) from None
        form = await request.form()
        if s is None:
            await c.audit.record(
                "(not signed in)",
                action,
                "REFUSED",
                reason="not signed in",
                client=client(request),
                **about,
            )
            raise Refused(401, "Sign in first.")
        if not csrf_matches(s.csrf, _text(form.get("csrf_token"))):
            await c.audit.record(
                s.user,
                action,
                "REFUSED",
                actor_role=str(s.role),
                reason=CSRF_REFUSED,
                client=client(request),
                **about,
            )
            raise Refused(403, "This form is missing its security token. Reload the page.")
        if action != "sign-out" and s.role != Role.OPERATOR:
            await c.audit.record(
                s.user,
                action,
                "REFUSED",
                actor_role=str(s.role),
                reason=f"the {s.role} role may not {action}",
                client=client(request),
                **about,
            )
            raise Refused(403, f"Your role ({s.role}) may not {action}.")
        return s, form

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        if exc.status == 401:
            return to_sign_in(request, expired="expired" in exc.message)
        s = None
        try:
            s = c.sessions.get(request.cookies.get(COOKIE))
        except Expired:
            s = None
        return page(request, "refused.html", s, status=exc.status, message=exc.message)

    # -- health -------------------------------------------------------------------------------

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        if not c.feed.caught_up:
            return JSONResponse({"status": "catching up"}, status_code=503)
        if c.feed.failing:
            return JSONResponse({"status": f"view failing: {c.feed.failing}"}, status_code=503)
        return JSONResponse({"status": "ready"})

    # -- sign-in ------------------------------------------------------------------------------

    def sign_in_page(
        request: Request,
        nxt: str,
        status: int = 200,
        expired: bool = False,
        error: str | None = None,
        username: str = "",
    ) -> Response:
        """The sign-in form, with a double-submit token in the form and a cookie. A browser that
        already holds a well-formed sign-in token keeps it, so a second sign-in page (another
        tab, a reload, a redirect racing a submit) does not invalidate a form already open."""
        held = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
        token = held if _SIGN_IN_TOKEN.fullmatch(held) else secrets.token_urlsafe(24)
        r = page(
            request,
            "sign_in.html",
            None,
            status=status,
            next=nxt,
            csrf=token,
            expired=expired,
            error=error,
            username=username,
            oidc=c.oidc,
        )
        r.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=c.secure_cookies,
            max_age=1800,
        )
        return r

    @app.get("/sign-in", response_class=HTMLResponse)
    async def sign_in_form(request: Request, next: str = "/board", expired: int = 0) -> Response:
        return sign_in_page(request, _safe_next(next), expired=bool(expired))

    @app.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        form = await request.form()
        name = (_text(form.get("username")) or "").strip().lower()
        password = _text(form.get("password")) or ""
        nxt = _safe_next(_text(form.get("next")) or "/board")
        reason = token_refused = _sign_in_token_refusal(
            request.cookies.get(LOGIN_CSRF_COOKIE), _text(form.get("csrf_token"))
        )
        role = None
        if token_refused is None and (not name or not password):
            reason = "account name or password missing"
        elif token_refused is None:
            role = c.accounts.verify(name, password)
            if role is None:
                reason = "wrong password" if c.accounts.exists(name) else "no such account"
        if role is None:
            await c.audit.record(
                name or "(blank)",
                "sign-in",
                "REFUSED",
                reason=reason,
                client=client(request),
            )
            status = 403 if token_refused else 401
            return sign_in_page(
                request,
                nxt,
                status=status,
                error=(
                    "The form had expired. Try again."
                    if status == 403
                    else "The account name or password is not right."
                ),
                username=name,
            )
        r = await signed_in(request, name, role, nxt, "password")
        r.delete_cookie(LOGIN_CSRF_COOKIE)
        return r

    async def signed_in(request: Request, name: str, role: Role, nxt: str, how: str) -> Response:
        s = c.sessions.start(name, role, how)
        await c.audit.record(
            name, "sign-in", "DONE", actor_role=str(role), target=how, client=client(request)
        )
        r = RedirectResponse(nxt, status_code=303)
        r.set_cookie(COOKIE, s.token, httponly=True, samesite="strict", secure=c.secure_cookies)
        return r

    if c.oidc is not None:
        from authlib.integrations.starlette_client import OAuthError
        from starlette.middleware.sessions import SessionMiddleware

        idp = oidc_client(c.oidc)
        oidc = c.oidc
        # Holds only the authorisation request's state and nonce between the redirect and the
        # callback: Lax, because the callback arrives from the provider's site.
        app.add_middleware(
            SessionMiddleware,
            secret_key=secrets.token_urlsafe(32),
            session_cookie="cbx_console_oidc",
            max_age=600,
            same_site="lax",
            https_only=c.secure_cookies,
        )

        @app.get("/sign-in/oidc")
        async def oidc_start(request: Request, next: str = "/board") -> Response:
            request.session["next"] = _safe_next(next)
            answer: Response = await idp.authorize_redirect(
                request, str(request.url_for("oidc_callback"))
            )
            return answer

        @app.get("/sign-in/oidc/callback", name="oidc_callback")
        async def oidc_callback(request: Request) -> Response:
            nxt = _safe_next(request.session.pop("next", "/board"))
            reason = None
            claims: dict[str, Any] = {}
            try:
                token = await idp.authorize_access_token(request)
                claims = dict(token.get("userinfo") or {})
            except OAuthError as exc:
                reason = f"identity provider: {exc.error}"[:300]
            except Exception as exc:  # a bad ID token (signature, issuer, audience, nonce, expiry)
                reason = f"identity provider: the ID token was refused ({type(exc).__name__})"
            role = oidc.role_of(claims) if claims else None
            if role is None:
                name = name_of(claims) if claims else "(unknown)"
                reason = reason or f"no console role in the {oidc.claim!r} claim"
                await c.audit.record(
                    name, "sign-in", "REFUSED", reason=reason, target="oidc", client=client(request)
                )
                raise Refused(403, f"Sign-in refused: {reason}.")
            return await signed_in(request, name_of(claims), role, nxt, "oidc")

    @app.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        s, _form = await acting(request, "sign-out")
        c.sessions.end(s.token)
        await c.audit.record(s.user, "sign-out", "DONE", actor_role=str(s.role))
        r = RedirectResponse("/sign-in", status_code=303)
        r.delete_cookie(COOKIE)
        return r

    # -- board --------------------------------------------------------------------------------

    def board_data(window: str) -> dict[str, Any]:
        now = time.time()
        seconds = WINDOWS.get(window, 3600)
        rows = c.store.board(now - seconds, now)
        lag = c.lag()
        for r in rows:
            g = lag.get(r["agency"])
            r["waiting"] = g.lag if g else None
        services = [
            {
                "name": name,
                "group": g.group,
                "lag": g.lag,
                "committed": g.committed,
                "progressed_at": g.progressed_at,
            }
            for name, g in sorted(lag.items())
            if name in ("router", "tracker")
        ]
        return {
            "window": window if window in WINDOWS else "hour",
            "rows": rows,
            "services": services,
            "view": {
                "caught_up": c.feed.caught_up,
                "read": c.feed.read,
                "skipped": c.feed.skipped,
                "last_batch_at": c.feed.last_batch_at,
                "failing": c.feed.failing,
            },
            "now": now,
        }

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/board", status_code=303)

    @app.get("/board", response_class=HTMLResponse)
    async def board(
        request: Request, window: str = "hour", s: Session = Depends(signed)
    ) -> Response:
        return page(request, "board.html", s, **board_data(window))

    @app.get("/board/table", response_class=HTMLResponse)
    async def board_table(
        request: Request, window: str = "hour", s: Session = Depends(signed)
    ) -> Response:
        return page(request, "board_table.html", s, **board_data(window))

    @app.get("/api/board")
    async def api_board(
        request: Request, window: str = "hour", s: Session = Depends(signed)
    ) -> Response:
        return JSONResponse(_jsonable(board_data(window)))

    # -- escalations and notes ----------------------------------------------------------------

    @app.get("/escalations", response_class=HTMLResponse)
    async def escalations(request: Request, s: Session = Depends(signed)) -> Response:
        return page(
            request,
            "escalations.html",
            s,
            rows=c.store.escalations(time.time()),
            reminders=c.store.reminders(),
        )

    @app.get("/api/escalations")
    async def api_escalations(request: Request, s: Session = Depends(signed)) -> Response:
        return JSONResponse(_jsonable(c.store.escalations(time.time())))

    @app.get("/api/obligations/overdue")
    async def api_reminders(request: Request, s: Session = Depends(signed)) -> Response:
        return JSONResponse(_jsonable(c.store.reminders()))

    @app.post("/messages/{message_id}/notes")
    async def add_note(request: Request, message_id: str) -> Response:
        s, form = await acting(request, "note", message_id=message_id)
        text = (_text(form.get("note")) or "").strip()
        m = c.store.message(message_id)
        if m is None:
            raise Refused(404, f"No message {message_id} in the delivery log.")
        if not text or len(text) > 2000:
            return page(
                request,
                "trace.html",
                s,
                status=400,
                m=m,
                note_error="Write what you did, in 1 to 2000 characters.",
                note=text[:2000],
            )
        await c.audit.record(
            s.user,
            "note",
            "DONE",
            actor_role=str(s.role),
            message_id=message_id,
            case_ref=m["case_ref"],
            text=text,
            client=client(request),
        )
        return RedirectResponse(f"/messages/{message_id}#notes", status_code=303)

    # -- search and trace ---------------------------------------------------------------------

    def search_of(request: Request) -> Search:
        q = request.query_params

        def t(name: str) -> float | None:
            v = q.get(name)
            if not v:
                return None
            try:
                at = dt.datetime.fromisoformat(v)
            except ValueError:
                raise Refused(400, f"{name}: not a date and time ({v[:40]!r})") from None
            return (at if at.tzinfo else at.replace(tzinfo=dt.UTC)).timestamp()

        try:
            page_no = max(1, int(q.get("page") or 1))
        except ValueError:
            raise Refused(400, "page: not a number") from None
        status = q.get("status") or None
        if status and status not in STATUSES:
            raise Refused(400, f"status: not one of {', '.join(STATUSES)}")
        return Search(
            message_id=(q.get("message_id") or "").strip() or None,
            case_ref=(q.get("case_ref") or "").strip() or None,
            agency=(q.get("agency") or "").strip() or None,
            event_type=q.get("event_type") or None,
            status=status,
            urgency=q.get("urgency") or None,
            since=t("since"),
            until=t("until"),
            page=page_no,
        )

    @app.get("/messages", response_class=HTMLResponse)
    async def messages(request: Request, s: Session = Depends(signed)) -> Response:
        q = search_of(request)
        rows, total = c.store.search(q)
        pages = max(1, -(-total // q.per_page))
        base = {k: v for k, v in request.query_params.items() if k != "page" and v}
        return page(
            request,
            "messages.html",
            s,
            q=q,
            rows=rows,
            total=total,
            pages=pages,
            statuses=STATUSES,
            page_link=lambda n: "/messages?" + urllib.parse.urlencode({**base, "page": n}),
        )

    @app.get("/api/messages")
    async def api_messages(request: Request, s: Session = Depends(signed)) -> Response:
        q = search_of(request)
        rows, total = c.store.search(q)
        return JSONResponse(_jsonable({"total": total, "page": q.page, "messages": rows}))

    @app.get("/messages/{message_id}", response_class=HTMLResponse)
    async def trace(request: Request, message_id: str, s: Session = Depends(signed)) -> Response:
        m = c.store.message(message_id)
        if m is None:
            raise Refused(404, f"No message {message_id} in the delivery log.")
        return page(request, "trace.html", s, m=m, note_error=None, note="")

    @app.get("/api/messages/{message_id}")
    async def api_trace(
        request: Request, message_id: str, s: Session = Depends(signed)
    ) -> Response:
        m = c.store.message(message_id)
        if m is None:
            return JSONResponse({"error": f"no message {message_id}"}, status_code=404)
        return JSONResponse(_jsonable(m))

    # -- cases --------------------------------------------------------------------------------

    @app.get("/cases", response_class=HTMLResponse)
    async def case_lookup(
        request: Request, case_ref: str = "", s: Session = Depends(signed)
    ) -> Response:
        if case_ref.strip():
            return RedirectResponse(
                f"/cases/{urllib.parse.quote(case_ref.strip(), safe='/')}", status_code=303
            )
        return page(request, "case.html", s, case_ref=None, rows=[], clocks=[])

    @app.get("/cases/{case_ref:path}/chronology.csv")
    async def case_csv(request: Request, case_ref: str, s: Session = Depends(signed)) -> Response:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(
            [
                "occurred_at",
                "accepted_at",
                "message_id",
                "event_type",
                "sender",
                "urgency",
                "message_status",
                "recipient",
                "role",
                "recipient_status",
                "routed_at",
                "delivered_at",
                "acknowledged_at",
                "escalated_at",
            ]
        )
        for m in c.store.case(case_ref):
            for r in m["recipient_states"] or [{}]:
                w.writerow(
                    [
                        _iso(m["occurred_at"]),
                        _iso(m["accepted_at"]),
                        m["message_id"],
                        m["event_type"],
                        m["sender"],
                        m["urgency"],
                        m["status"],
                        r.get("agency", ""),
                        r.get("role", ""),
                        r.get("status", ""),
                        _iso(r.get("routed_at")),
                        _iso(r.get("delivered_at")),
                        _iso(r.get("acknowledged_at")),
                        _iso(r.get("escalated_at")),
                    ]
                )
        await c.audit.record(
            s.user,
            "export",
            "DONE",
            actor_role=str(s.role),
            case_ref=case_ref,
            client=client(request),
        )
        name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in case_ref)[:80]
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="case-{name}.csv"'},
        )

    def case_clocks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The statutory clocks of one case, from its messages' clear facts."""
        clocks = Clocks()
        for m in sorted(rows, key=lambda m: m["first_at"]):
            if not (m["event_type"] and m["accepted_at"] and m["case_ref"]):
                continue
            clocks.observe(
                Seen(
                    m["message_id"],
                    m["event_type"],
                    m["case_ref"],
                    utc(m["occurred_at"] or m["first_at"]) or dt.datetime.now(dt.UTC),
                    utc(m["accepted_at"]) or dt.datetime.now(dt.UTC),
                    {k: from_text(v) for k, v in (m["facts"] or {}).items()},
                )
            )
        clocks.overdue(dt.datetime.now(dt.UTC))
        counted = [c.as_json() for c in sorted(clocks.clocks.values(), key=lambda c: c.due_at)]
        return counted + [
            {"clock": cid, "obligation": cid.split(":")[0], "status": "UNCOUNTED", "reason": why}
            for cid, why in sorted(clocks.uncounted.items())
        ]

    @app.get("/cases/{case_ref:path}", response_class=HTMLResponse)
    async def case(request: Request, case_ref: str, s: Session = Depends(signed)) -> Response:
        rows = c.store.case(case_ref)
        return page(request, "case.html", s, case_ref=case_ref, rows=rows, clocks=case_clocks(rows))

    @app.get("/api/cases/{case_ref:path}")
    async def api_case(request: Request, case_ref: str, s: Session = Depends(signed)) -> Response:
        rows = c.store.case(case_ref)
        return JSONResponse(
            _jsonable({"case_ref": case_ref, "messages": rows, "clocks": case_clocks(rows)})
        )

    # -- dead letters -------------------------------------------------------------------------

    @app.get("/dead-letters", response_class=HTMLResponse)
    async def dead_letters(request: Request, s: Session = Depends(signed)) -> Response:
        return page(
            request,
            "dead_letters.html",
            s,
            rows=c.store.dead_letters(),
            replays=c.store.replays(),
        )

    @app.get("/api/dead-letters")
    async def api_dead_letters(request: Request, s: Session = Depends(signed)) -> Response:
        replays = c.store.replays()
        return JSONResponse(
            _jsonable(
                [{**d.__dict__, "replayed": replays.get(d.id)} for d in c.store.dead_letters()]
            )
        )

    @app.get("/dead-letters/{dead_letter_id}/replay", response_class=HTMLResponse)
    async def replay_confirm(
        request: Request, dead_letter_id: str, s: Session = Depends(signed)
    ) -> Response:
        d = c.store.dead_letter(dead_letter_id)
        if d is None:
            raise Refused(404, f"No dead letter {dead_letter_id}.")
        return page(
            request,
            "replay.html",
            s,
            d=d,
            replayed=c.store.replays().get(dead_letter_id),
        )

    @app.post("/dead-letters/{dead_letter_id}/replay")
    async def replay(request: Request, dead_letter_id: str) -> Response:
        d = c.store.dead_letter(dead_letter_id)
        s, form = await acting(
            request,
            "replay",
            target=dead_letter_id,
            message_id=d.message_id if d else None,
        )
        if d is None:
            raise Refused(404, f"No dead letter {dead_letter_id}.")
        if _text(form.get("confirm")) != "yes":
            raise Refused(400, "Confirm the replay by ticking the box.")
        try:
            await c.replay(dead_letter_id, s.user)
        except CbxError as exc:
            await c.audit.record(
                s.user,
                "replay",
                "REFUSED",
                actor_role=str(s.role),
                reason=str(exc)[:300],
                target=dead_letter_id,
                message_id=d.message_id,
                client=client(request),
            )
            raise Refused(409, str(exc)) from None
        await c.audit.record(
            s.user,
            "replay",
            "DONE",
            actor_role=str(s.role),
            target=dead_letter_id,
            message_id=d.message_id,
            client=client(request),
        )
        return RedirectResponse("/dead-letters", status_code=303)

    # -- agencies and the audit trail ---------------------------------------------------------

    def agencies_data() -> list[dict[str, Any]]:
        now = dt.datetime.now(dt.UTC)
        out = []
        for a in c.store.directory():
            for k in a["keys"]:
                nb = dt.datetime.fromisoformat(k["not_before"])
                na = dt.datetime.fromisoformat(k["not_after"])
                k["age_days"] = (now - nb).days
                k["expires_in_days"] = (na - now).days
                k["rotation_due"] = k["age_days"] >= ROTATE_AFTER_DAYS or k["expires_in_days"] <= 30
            role = SERVICES[a["agency"]][0] if a["agency"] in SERVICES else "agency"
            a["acls"] = (
                [g.as_json() for g in grants(role, c.settings.topic_prefix, a["agency"])]
                if a["kind"] != "SERVICE" or a["agency"] in SERVICES
                else []
            )
            out.append(a)
        return out

    @app.get("/agencies", response_class=HTMLResponse)
    async def agencies(request: Request, s: Session = Depends(signed)) -> Response:
        return page(request, "agencies.html", s, rows=agencies_data())

    @app.get("/api/agencies")
    async def api_agencies(request: Request, s: Session = Depends(signed)) -> Response:
        return JSONResponse(_jsonable(agencies_data()))

    @app.get("/audit", response_class=HTMLResponse)
    async def audit(request: Request, s: Session = Depends(signed)) -> Response:
        return page(request, "audit.html", s, rows=c.store.actions())

    @app.get("/api/audit")
    async def api_audit(request: Request, s: Session = Depends(signed)) -> Response:
        return JSONResponse(_jsonable(c.store.actions()))

    return app


def _sign_in_token_refusal(cookie: str | None, given: str | None) -> str | None:
    """Why a sign-in form's double-submit token is refused, naming the half that was wrong (the
    operator who reports "the form had expired" can then be told why), or None."""
    if not cookie:
        return f"{CSRF_REFUSED}: the browser sent no sign-in cookie"
    if not given:
        return f"{CSRF_REFUSED}: the form had no token"
    if not csrf_matches(cookie, given):
        return f"{CSRF_REFUSED}: the form's token is not the cookie's"
    return None


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _safe_next(v: str) -> str:
    """Only a path of this site (never //host or a scheme): no open redirect after sign-in."""
    if not v.startswith("/") or v.startswith("//") or "\\" in v:
        return "/board"
    return v


def _iso(v: Any) -> str:
    return utc(float(v)).isoformat() if v is not None else ""  # type: ignore[union-attr]


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items() if not callable(x)}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, set | frozenset):
        return sorted(_jsonable(x) for x in v)
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if hasattr(v, "__dataclass_fields__"):
        return _jsonable(v.__dict__)
    return v
