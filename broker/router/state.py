"""What the router remembers: the placement registry and the message ids it has routed.

Changes are staged per transaction and kept only when it commits, so a batch that is aborted and
read again is decided again from the same state.
"""

from __future__ import annotations

import hashlib

from broker.envelope import Header
from broker.policy.registry import Placement, PlacementRegistry


def message_identity(header: Header) -> str:
    """What a message id stands for, as far as the router can see: who sent what to whom.

    A sender that sends a message again after a crash re-seals it (new nonces, new recording time),
    so the bytes differ; the identity does not. A message id reused for another case, type, sender
    or set of recipients has another identity and is refused. (The sealed body is not visible here.)
    """
    parts = [
        header.sender,
        header.event_type,
        header.case_ref,
        header.schema_fingerprint.hex(),
        ",".join(sorted(f"{r.agency}:{r.role}" for r in header.recipients)),
        str(header.related_message_id or ""),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


class RouterState:
    """Registry and routed ids, with tentative changes per transaction."""

    def __init__(self) -> None:
        self.registry = PlacementRegistry()
        # Routed message id (or dead-lettered source) -> the identity of what was routed under it
        # ("" when unknown: markers written before identities were kept).
        self.routed: dict[str, str] = {}
        #: Outbound partitions remade by ``cbx agency migrate``: how many of their first offsets
        #: are copies of records routed before (``moved:<topic>/<partition>`` markers).
        self.moved: dict[tuple[str, int], int] = {}
        self._pending_cases: dict[str, Placement] = {}
        self._pending_ids: dict[str, str] = {}

    def note_moved(self, topic: str, partition: int, copies: int) -> None:
        """``topic`` was made again: its ``partition`` starts with ``copies`` records already
        routed, and the dead-letter positions of the topic it replaced mean nothing now."""
        self.moved[(topic, partition)] = copies
        old = f"{topic}/"
        for key in [k for k in self.routed if k.startswith(old)]:
            del self.routed[key]

    def copied(self, topic: str, partition: int, offset: int) -> bool:
        """Whether this record is a copy a migration wrote of a record routed before."""
        return offset < self.moved.get((topic, partition), 0)

    def case(self, case_ref: str) -> Placement | None:
        return self._pending_cases.get(case_ref) or self.registry.get(case_ref)

    def seen(self, message_id: str) -> bool:
        return message_id in self.routed or message_id in self._pending_ids

    def identity_of(self, message_id: str) -> str | None:
        """What was routed under ``message_id`` (None: nothing; "": not recorded)."""
        found = self._pending_ids.get(message_id)
        return found if found is not None else self.routed.get(message_id)

    def stage(self, message_id: str, placement: Placement | None, identity: str = "") -> None:
        self._pending_ids[message_id] = identity
        if placement is not None:
            self._pending_cases[placement.case_ref] = placement

    def unstage(self, key: str) -> None:
        """Forget a tentative decision about ``key`` (before deciding again)."""
        self._pending_ids.pop(key, None)

    def commit(self) -> None:
        self.routed.update(self._pending_ids)
        for p in self._pending_cases.values():
            self.registry.put(p)
        self.rollback()

    def rollback(self) -> None:
        self._pending_ids = {}
        self._pending_cases = {}
