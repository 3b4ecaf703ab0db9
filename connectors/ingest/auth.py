"""Who may speak through a connector's HTTP edge: API tokens with scopes.

Only the agency's own systems may post its events, read its delivery statuses and acknowledge what
it received. Each system gets a token (``cbx connector token add``): 32 random bytes shown once,
kept only as a SHA-256 digest (a random secret of that length needs no slow hash), with scopes
(``submit``, ``read``, ``acknowledge``), an expiry, and revocation. A request carries it as
``Authorization: Bearer cbx_<id>_<secret>``; a missing, unknown, expired or revoked token is 401,
a valid token without the scope the endpoint needs is 403.

The store is a JSON file per connector (``$CBX_HOME/connectors/<agency>/tokens.json``, 0600),
read again when it changes, so a token revoked on the command line is refused by a running
connector at its next request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from broker.errors import ConfigurationError
from broker.files import write_private_json
from broker.paths import cbx_home

_TOKEN = re.compile(r"^cbx_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class Scope(StrEnum):
    """What a token lets its holder do."""

    SUBMIT = "submit"
    """Post events (POST /v1/events/{type})."""
    READ = "read"
    """Read delivery statuses of the agency's messages (GET /v1/messages/{id})."""
    ACKNOWLEDGE = "acknowledge"
    """Acknowledge messages delivered to the agency (POST /v1/messages/{id}/ack)."""
    CHRONOLOGY = "chronology"
    """Read a case's chronology with the fields this agency may read
    (GET /v1/cases/{case_ref}/chronology): content, not only metadata."""


@dataclass(frozen=True)
class TokenRecord:
    """One token as stored: never the secret, only its digest."""

    token_id: str
    digest: str
    scopes: tuple[str, ...]
    label: str
    created_at: str
    expires_at: str | None = None
    revoked_at: str | None = None

    def state(self, now: dt.datetime) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and dt.datetime.fromisoformat(self.expires_at) <= now:
            return "expired"
        return "active"

    def public(self, now: dt.datetime) -> dict[str, Any]:
        d = asdict(self)
        d.pop("digest")
        d["scopes"] = list(self.scopes)
        d["state"] = self.state(now)
        return d


class AuthError(Exception):
    """A request is not allowed: ``status`` is 401 (who are you?) or 403 (not this)."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem)
        self.status = status
        self.problem = problem


def tokens_path(agency: str) -> Path:
    return cbx_home() / "connectors" / agency / "tokens.json"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """An agency connector's API tokens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: dict[str, TokenRecord] = {}
        self._stamp: tuple[int, int] | None = None

    def _load(self) -> dict[str, TokenRecord]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._records, self._stamp = {}, None
            return self._records
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                doc = json.loads(self.path.read_text())
                records = {
                    r["token_id"]: TokenRecord(**{**r, "scopes": tuple(r["scopes"])})
                    for r in doc.get("tokens", [])
                }
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise ConfigurationError(f"token store {self.path} is unreadable: {exc}") from exc
            self._records, self._stamp = records, stamp
        return self._records

    def _save(self, records: dict[str, TokenRecord]) -> None:
        write_private_json(self.path, {"tokens": [asdict(r) for r in records.values()]})
        self._stamp = None

    def add(
        self, scopes: list[Scope], *, label: str = "", expires_in: dt.timedelta | None = None
    ) -> tuple[str, TokenRecord]:
        """A new token: (the token, shown once; its record)."""
        if not scopes:
            raise ConfigurationError("a token needs at least one scope")
        now = dt.datetime.now(dt.UTC)
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = TokenRecord(
            token_id=token_id,
            digest=_digest(secret),
            scopes=tuple(sorted({str(s) for s in scopes})),
            label=label,
            created_at=now.isoformat(),
            expires_at=(now + expires_in).isoformat() if expires_in else None,
        )
        records = dict(self._load())
        records[token_id] = record
        self._save(records)
        return f"cbx_{token_id}_{secret}", record

    def revoke(self, token_id: str) -> TokenRecord:
        records = dict(self._load())
        if token_id not in records:
            raise ConfigurationError(f"no token {token_id} (see cbx connector token list)")
        now = dt.datetime.now(dt.UTC).isoformat()
        records[token_id] = TokenRecord(**{**asdict(records[token_id]), "revoked_at": now})
        self._save(records)
        return records[token_id]

    def list(self) -> list[TokenRecord]:
        return sorted(self._load().values(), key=lambda r: r.created_at)

    def check(self, authorization: str | None, scope: Scope) -> TokenRecord:
        """The token record behind an ``Authorization`` header, if it may use ``scope``."""
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError(401, "an API token is required: Authorization: Bearer <token>")
        m = _TOKEN.match(authorization.removeprefix("Bearer ").strip())
        if m is None:
            raise AuthError(401, "the token is not a cbx token")
        record = self._load().get(m.group(1))
        if record is None or not hmac.compare_digest(record.digest, _digest(m.group(2))):
            raise AuthError(401, "the token is not valid for this connector")
        state = record.state(dt.datetime.now(dt.UTC))
        if state != "active":
            raise AuthError(401, f"the token is {state}")
        if str(scope) not in record.scopes:
            raise AuthError(
                403, f"the token may not {scope} (its scopes: {', '.join(record.scopes)})"
            )
        return record


def parse_duration(text: str) -> dt.timedelta:
    """``90d``, ``12h``, ``30m`` as a time span."""
    m = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if m is None:
        raise ConfigurationError(f"{text!r} is not a duration like 90d, 12h or 30m")
    unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(2)]
    return dt.timedelta(**{unit: int(m.group(1))})
