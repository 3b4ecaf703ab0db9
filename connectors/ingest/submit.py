"""The one ingest sequence every way in shares: HTTP ingest, the drop folder and scenarios.

``submit`` takes an agency's request for one message type and returns what became of it:

- :class:`Accepted` (the message is on the agency's outbound topic: its id and recipients), or
- :class:`Rejected` with the HTTP status of the cause and every error (path, problem, expected,
  kind of value given; never the value).

The sequence: the agency's profile may send the type (403), the request reads against the schema
(422), the connector chooses recipients and seals (422 when it cannot be routed; a case the
connector has not seen yet gets one catch-up with the placement registry and a second try), and
the message is published (503 when Kafka cannot take it now: nothing was published). The status
of each refusal comes from the error's class, so the same cause always gets the same status.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.envelope import Outgoing
from broker.errors import (
    AccessDeniedError,
    NotPermittedError,
    PolicyError,
    ProtectionError,
    SerializationError,
    UnknownCaseError,
)
from broker.logging import get_logger
from broker.model import SYSTEM_TYPES
from broker.schema import limits
from connectors.gateway.connector import Connector
from connectors.ingest.request import Request, RequestReader

log = get_logger("ingest")


def error(path: str, problem: str, expected: str, got: str = "") -> dict[str, Any]:
    """One error of a refused request, in the shape every ingest path answers with."""
    return {"path": path, "problem": problem, "expected": expected, "got": got}


@dataclass(frozen=True)
class Accepted:
    """Published: the message id and the recipients it was sealed for."""

    outgoing: Outgoing
    request: Request

    def answer(self) -> dict[str, Any]:
        h = self.outgoing.header
        return {
            "message_id": str(h.message_id),
            "event_type": h.event_type,
            "case_ref": h.case_ref,
            "recipients": [{"agency": r.agency, "role": str(r.role)} for r in h.recipients],
            "published_at": dt.datetime.now(dt.UTC).isoformat(),
        }


@dataclass(frozen=True)
class Rejected:
    """Refused, with the HTTP status of the cause; nothing was published."""

    status: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: The case was not in the connector's placement registry (worth one catch-up and a retry).
    unknown_case: bool = False

    @property
    def retriable(self) -> bool:
        return self.status == 503

    def body(self) -> dict[str, Any]:
        """The JSON answer: ``errors`` always; ``error`` too (the first problem) unless 422."""
        if self.status == 422:
            return {"errors": self.errors}
        return {"error": self.errors[0]["problem"], "errors": self.errors}


@dataclass(frozen=True)
class Item:
    """One request to submit: its type, its JSON, and a message id chosen by the caller."""

    event_type: str
    payload: Any
    message_id: uuid.UUID | None = None


def _refused(exc: PolicyError | ProtectionError | AccessDeniedError) -> Rejected:
    if isinstance(exc, PolicyError):
        status = exc.http_status
        expected = "a type this agency sends" if status == 403 else "a routable message"
        return Rejected(status, [error("", str(exc), expected)], isinstance(exc, UnknownCaseError))
    return Rejected(403, [error("", str(exc), "a message this agency may send")])


def _transient(exc: Exception) -> bool:
    """Kafka could not take it now, and may later (cbx's or aiokafka's ``retriable`` says so)."""
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, TimeoutError | OSError)


class Submitter:
    """Checks, routes, seals and publishes requests for one connector."""

    def __init__(self, connector: Connector, reader: RequestReader | None = None) -> None:
        self.connector = connector
        self.reader = reader or RequestReader(connector.catalogue, connector.converters)

    def knows(self, event_type: str) -> bool:
        """Whether ``event_type`` is a message type an agency may post (else: 404)."""
        return event_type in self.connector.converters and event_type not in SYSTEM_TYPES

    def read(self, event_type: str, payload: Any) -> Request | Rejected:
        """The checked request, or why not (profile 403, unknown type 404, fields 422)."""
        if not self.knows(event_type):
            return Rejected(404, [error("", f"unknown message type {event_type}", "a type")])
        try:
            self.connector.profile.check_send(self.connector.agency, event_type)
        except NotPermittedError as exc:
            return _refused(exc)
        read = self.reader.read(event_type, payload)
        if isinstance(read, list):
            return Rejected(422, [e.as_dict() for e in read])
        return read

    def _prepare(self, request: Request, message_id: uuid.UUID | None) -> Outgoing | Rejected:
        try:
            out = request.prepare(self.connector, message_id)
        except (PolicyError, ProtectionError) as exc:
            return _refused(exc)
        except SerializationError as exc:  # the checked request still does not encode
            return Rejected(422, [error("", str(exc), "a request that fits the schema")])
        if len(out.value) > limits.MAX_MESSAGE:
            return Rejected(
                413,
                [
                    error(
                        "event",
                        f"the sealed message is {len(out.value)} bytes, over the exchange's "
                        f"limit of {limits.MAX_MESSAGE}",
                        "a smaller event (attach documents by reference)",
                    )
                ],
            )
        return out

    async def submit(
        self, event_type: str, payload: Any, message_id: uuid.UUID | None = None
    ) -> Accepted | Rejected:
        """Check, route, seal and publish one request."""
        return (await self.submit_many([Item(event_type, payload, message_id)]))[0]

    async def submit_many(self, items: Sequence[Item | Request]) -> list[Accepted | Rejected]:
        """Submit several requests with one signature and one publish for all accepted ones.

        Items may be raw (type and JSON) or already read. A request about a case the connector
        has not seen yet causes one catch-up with the placement registry and a second try.
        """
        reads: list[tuple[Request, uuid.UUID | None] | Rejected] = []
        for it in items:
            if isinstance(it, Request):
                reads.append((it, None))
                continue
            r = self.read(it.event_type, it.payload)
            reads.append(r if isinstance(r, Rejected) else (r, it.message_id))
        prepared: list[Outgoing | Rejected] = [
            r if isinstance(r, Rejected) else self._prepare(*r) for r in reads
        ]
        if any(self._unknown_case(p) for p in prepared):
            await self.connector.sync()
            prepared = [
                self._prepare(*r) if isinstance(r, tuple) and isinstance(p, Rejected) else p
                for r, p in zip(reads, prepared, strict=True)
            ]
        batch = [p for p in prepared if isinstance(p, Outgoing)]
        if batch:
            try:
                await self.connector.publish(batch)
            except (AccessDeniedError, ProtectionError) as exc:
                return [p if isinstance(p, Rejected) else _refused(exc) for p in prepared]
            except Exception as exc:
                if not _transient(exc):
                    raise
                log.warning("ingest_unavailable", error_class=type(exc).__name__)
                unavailable = Rejected(
                    503,
                    [
                        error(
                            "",
                            "the exchange could not take it now: retry with the same key",
                            "Kafka to be reachable",
                        )
                    ],
                )
                return [p if isinstance(p, Rejected) else unavailable for p in prepared]
        out: list[Accepted | Rejected] = []
        for read, p in zip(reads, prepared, strict=True):
            if isinstance(p, Rejected):
                out.append(p)
            else:
                assert isinstance(read, tuple)
                out.append(Accepted(p, read[0]))
        return out

    @staticmethod
    def _unknown_case(p: Outgoing | Rejected) -> bool:
        return isinstance(p, Rejected) and p.unknown_case
