"""Operators' accounts, sign-in sessions and CSRF tokens for the console.

Accounts are local (``cbx console user add|remove|list``), kept in a file readable by its owner
only, with passwords hashed by argon2id (argon2-cffi, the reference implementation's binding).
Sessions live in the console process: a restart signs everyone out, which is acceptable for a
service desk page and keeps session secrets off disk. A session ends after ``idle`` without a
request or ``absolute`` after sign-in, whichever comes first.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from broker.errors import CbxError
from broker.files import write_private


class Role(StrEnum):
    VIEWER = "viewer"
    """Sees every page; changes nothing."""
    OPERATOR = "operator"
    """Also records notes and replays dead letters."""


_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-_@")
MIN_PASSWORD = 12


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise CbxError(
            f"account name {name[:70]!r}: use 1 to 64 lower-case letters, digits and . - _ @"
        )
    return name


class Accounts:
    """The local accounts file: name → argon2 hash and role."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hasher = PasswordHasher()
        # Checked against when the account does not exist, so a wrong name costs the same time
        # as a wrong password and names cannot be found by timing.
        self._dummy = self._hasher.hash(secrets.token_hex(16))
        self._cached: tuple[tuple[int, int, int], dict[str, dict[str, Any]]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        """The accounts, read again only when the file changed (every page asks whether its
        session's account still exists)."""
        try:
            stamp = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (stamp.st_mtime_ns, stamp.st_size, stamp.st_ino)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, json.loads(self.path.read_text()))
        return self._cached[1]

    def _save(self, data: dict[str, dict[str, Any]]) -> None:
        write_private(self.path, json.dumps(data, indent=2, sort_keys=True).encode())

    def add(self, name: str, password: str, role: Role) -> None:
        check_name(name)
        if len(password) < MIN_PASSWORD:
            raise CbxError(f"password: at least {MIN_PASSWORD} characters")
        data = dict(self._load())
        data[name] = {
            "hash": self._hasher.hash(password),
            "role": str(role),
            "created": dt.datetime.now(dt.UTC).isoformat(),
        }
        self._save(data)

    def remove(self, name: str) -> None:
        data = dict(self._load())
        if name not in data:
            raise CbxError(f"no console account {name!r}")
        del data[name]
        self._save(data)

    def list(self) -> list[dict[str, str]]:
        return [
            {"name": n, "role": a["role"], "created": a["created"]}
            for n, a in sorted(self._load().items())
        ]

    def verify(self, name: str, password: str) -> Role | None:
        """The account's role when ``password`` is right; None otherwise (same time either way)."""
        account = self._load().get(name)
        try:
            self._hasher.verify(account["hash"] if account else self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return Role(account["role"]) if account else None

    def exists(self, name: str) -> bool:
        return name in self._load()


@dataclass
class Session:
    token: str
    user: str
    role: Role
    csrf: str
    started: dt.datetime
    seen: dt.datetime
    via: str = "password"
    """How the operator signed in: a local account ("password") or an identity provider."""
    data: dict[str, Any] = field(default_factory=dict)


class Expired(Exception):
    """The session existed but has ended."""

    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.user = user


class Sessions:
    def __init__(
        self,
        idle: dt.timedelta = dt.timedelta(minutes=30),
        absolute: dt.timedelta = dt.timedelta(hours=12),
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.idle = idle
        self.absolute = absolute
        self.clock = clock
        self._by_token: dict[str, Session] = {}

    def start(self, user: str, role: Role, via: str = "password") -> Session:
        now = self.clock()
        s = Session(secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(32), now, now, via)
        self._by_token[s.token] = s
        return s

    def get(self, token: str | None) -> Session | None:
        """The live session for ``token``; None if there is none; Expired if it ended."""
        if not token:
            return None
        s = self._by_token.get(token)
        if s is None:
            return None
        now = self.clock()
        if now - s.seen > self.idle or now - s.started > self.absolute:
            del self._by_token[token]
            raise Expired(s.user)
        s.seen = now
        return s

    def end(self, token: str) -> None:
        self._by_token.pop(token, None)


def csrf_matches(expected: str, given: str | None) -> bool:
    return bool(given) and secrets.compare_digest(expected.encode(), (given or "").encode())
