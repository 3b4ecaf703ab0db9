"""What this agency's system has received and not yet acknowledged, kept across restarts.

Acknowledging a message needs its header (whom to tell, about which case, how urgent). A connector
that kept those in memory forgot them on restart, and a message delivered before the restart could
never be acknowledged: it escalated with no way to clear it. Each delivered header is appended to
``delivered.jsonl`` beside the connector's other state (one fsync per inbox batch, before the batch
is committed), acknowledgements are appended too, and the file is read back at start. Entries are
kept until acknowledged or until they are older than ``keep`` (30 days by default: far past any
acknowledgement deadline); the file is rewritten without the rest when it has grown twice as large
as what it must keep. Only headers are kept (metadata: no field of any message).

The same file says which messages were handed over at all, acknowledged or not: a batch whose
commit did not happen (the group moved on while a broker was down, or the process stopped) is read
again, and its messages must not reach the agency's system twice. An acknowledged message keeps a
``seen`` line (its id and time, nothing else) for as long as ``keep``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from pathlib import Path

from broker.envelope import EnvelopeCodec, Header
from broker.files import write_private


class DeliveredStore:
    """Headers of delivered, unacknowledged messages, by message id."""

    def __init__(
        self, path: Path, envelopes: EnvelopeCodec, keep: dt.timedelta = dt.timedelta(days=30)
    ) -> None:
        self.path = path
        self.envelopes = envelopes
        self.keep = keep
        self._headers: dict[str, tuple[str, Header]] = {}  # id -> (delivered at, header)
        self._seen: dict[str, str] = {}  # id -> delivered at, acknowledged or not
        #: Acknowledged before their batch was recorded (the system answered from the sink).
        self._acked_first: set[str] = set()
        self._lines = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        cutoff = (dt.datetime.now(dt.UTC) - self.keep).isoformat()
        acks: set[str] = set()
        for line in self.path.read_text().splitlines():
            self._lines += 1
            try:
                rec = json.loads(line)
                if "ack" in rec:
                    acks.add(rec["ack"])
                elif rec["at"] < cutoff:
                    continue
                elif "seen" in rec:
                    self._seen[rec["seen"]] = rec["at"]
                else:
                    header, _ = self.envelopes.decode(base64.b64decode(rec["header"]))
                    self._headers[str(header.message_id)] = (rec["at"], header)
                    self._seen[str(header.message_id)] = rec["at"]
            except Exception:  # noqa: S112 - a line cut short by a crash: its batch was re-read
                continue
        # An acknowledgement may precede its message's line (see ``acknowledged``).
        for mid in acks:
            if self._headers.pop(mid, None) is None and mid not in self._seen:
                self._acked_first.add(mid)
        if self._lines > 2 * len(self._seen) + 100:
            self._compact()

    def _compact(self) -> None:
        lines = [self._line(at, h) for at, h in self._headers.values()]
        lines += [
            json.dumps({"seen": mid, "at": at}) + "\n"
            for mid, at in self._seen.items()
            if mid not in self._headers
        ]
        write_private(self.path, "".join(lines))
        self._lines = len(lines)

    def _line(self, at: str, header: Header) -> str:
        value = self.envelopes.encode(header, b"")
        return json.dumps({"at": at, "header": base64.b64encode(value).decode()}) + "\n"

    def _append(self, lines: list[str]) -> None:
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
        self._lines += len(lines)

    def add_many(self, headers: list[Header]) -> None:
        """Remember delivered messages; returns once they are on disk."""
        at = dt.datetime.now(dt.UTC).isoformat()
        self._append([self._line(at, h) for h in headers])
        for h in headers:
            mid = str(h.message_id)
            self._seen[mid] = at
            if mid in self._acked_first:
                self._acked_first.discard(mid)
            else:
                self._headers[mid] = (at, h)

    def handed(self, message_id: str) -> bool:
        """Whether the message was handed to the agency's system already (acknowledged or not)."""
        return message_id in self._seen

    def get(self, message_id: str) -> Header | None:
        found = self._headers.get(message_id)
        return found[1] if found else None

    def acknowledged(self, message_id: str) -> None:
        """Remember an acknowledgement; it may come before its message is recorded (the agency's
        system answered while the rest of the batch was being handed over)."""
        self._append([json.dumps({"ack": message_id}) + "\n"])
        if self._headers.pop(message_id, None) is None and message_id not in self._seen:
            self._acked_first.add(message_id)

    def __len__(self) -> int:
        return len(self._headers)
