"""File-drop ingest: an agency's exports picked up from a folder and sent row by row.

An agency's system (or a person) puts files in the drop folder:

- ``*.csv`` exports, read through a column mapping (``schemas/filedrop/*.yaml``, matched on the
  file name): a council's placement register, a missing-episode log;
- ``*.jsonl``: one request per line, as HTTP ingest takes it plus ``"event_type"``.

A file is taken once it has not changed for ``settle_s`` seconds (names starting with ``.`` or
ending ``.part``/``.tmp`` are left alone, so an exporter can write and then rename). Every row is
checked as HTTP ingest checks a request, sealed, signed and published in batches; then a report
(``<file>.report.json``: accepted rows with message ids and recipients, rejected rows with every
field error, naming the column, never the value) is written and the file moves to ``processed/``
(every row accepted) or ``failed/`` (any row rejected, or the file unreadable).

Nothing is lost or repeated when the connector is killed mid-file: a row's message id is derived
from the agency and the row's content, and each batch is recorded in the connector's idempotency
store (fsync'd) once Kafka has it. After a restart the recorded rows are not sent again; a batch
that was published but not yet recorded is sent again with the same message ids, which the router
drops as duplicates. The same derivation makes a daily full export send only new or changed rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.errors import KafkaUnavailableError
from broker.files import write_private_json
from broker.logging import get_logger
from connectors.filedrop.mappings import Mapping, load_mappings, row_request
from connectors.gateway.connector import Connector
from connectors.ingest.idempotency import IdempotencyStore
from connectors.ingest.submit import Item, Rejected, Submitter

log = get_logger("filedrop")

# Message ids of rows are uuid5(ROW_NAMESPACE, "<agency>/<row digest>").
ROW_NAMESPACE = uuid.UUID("5b0f3c1e-8d0a-4f53-9a43-2f1e0c6b9d21")
#: Longest file name taken (the report adds ``.report.json`` and a time stamp, within 255 bytes).
MAX_NAME = 200
#: Largest file taken.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Most rows in one file.
MAX_ROWS = 100_000
IGNORED_SUFFIXES = (".part", ".tmp", ".report.json")


def row_digest(event_type: str, request: dict[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{event_type}\n{canonical}".encode()).hexdigest()


@dataclass
class Row:
    number: int
    event_type: str | None
    request: dict[str, Any] | None
    errors: list[dict[str, Any]]


class FileRejected(Exception):
    """The whole file cannot be read (no mapping, missing columns, not text)."""


class FileDrop:
    """Watches one folder for an agency's exports. ``scan`` once, or ``run`` until stopped."""

    def __init__(
        self,
        connector: Connector,
        root: Path,
        store: IdempotencyStore,
        *,
        mappings: list[Mapping] | None = None,
        mapping_folders: list[Path] | None = None,
        settle_s: float = 1.0,
        batch: int = 200,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.max_file_bytes = max_file_bytes
        self.connector = connector
        self.root = root
        self.store = store
        self.submitter = Submitter(connector)
        self.reader = self.submitter.reader
        self.mappings = (
            mappings if mappings is not None else load_mappings(self.reader, mapping_folders)
        )
        self.settle_s = settle_s
        self.batch = batch
        self.processed = root / "processed"
        self.failed = root / "failed"
        for d in (root, self.processed, self.failed):
            d.mkdir(parents=True, exist_ok=True)

    def pending(self) -> list[Path]:
        """Entries ready to take, oldest first (symbolic links and other non-files included:
        they are refused, not read)."""
        now = time.time()
        out = []
        for p in self.root.iterdir():
            if p.name.startswith(".") or p.name.endswith(IGNORED_SUFFIXES):
                continue
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                continue  # processed/, failed/, or an agency's own subfolder: not ours to take
            if now - st.st_mtime < self.settle_s:
                continue
            out.append((st.st_mtime, p.name, p))
        return [p for *_, p in sorted(out)]

    async def scan(self) -> list[dict[str, Any]]:
        """Process every ready file; the reports, in order.

        A file's failure is its own: it goes to ``failed/`` with a report and the next file is
        taken. Only a transient failure (Kafka cannot take it now) leaves the file where it is, to
        be tried again on the next scan.
        """
        reports = []
        for p in self.pending():
            try:
                reports.append(await self.process(p))
            except Exception as exc:
                if _transient(exc):
                    raise
                log.error("file_failed", file=_short(p.name), error_class=type(exc).__name__)
                reports.append(self._refuse(p, f"could not be processed ({type(exc).__name__})"))
        return reports

    async def run(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        while not stop.is_set():
            try:
                await self.scan()
            except Exception as exc:  # Kafka down, disk full: keep the file, try again later
                log.warning("filedrop_scan_failed", error=str(exc), error_class=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    # --- one file -----------------------------------------------------------------------------

    def rows(self, path: Path, data: bytes) -> tuple[str, list[Row], list[str]]:
        """(what the file was read as, its rows, ignored columns) or FileRejected."""
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise FileRejected(f"not UTF-8 text (byte {exc.start})") from None
        name = path.name.lower()
        if name.endswith(".jsonl"):
            kind, rows, ignored = "jsonl", self._jsonl_rows(text), list[str]()
        elif name.endswith(".csv"):
            mapping = next((m for m in self.mappings if m.matches(path.name)), None)
            if mapping is None:
                known = "; ".join(f"{m.name}: {', '.join(m.match)}" for m in self.mappings)
                raise FileRejected(f"no column mapping matches the file name (known: {known})")
            try:
                rows, ignored = self._csv_rows(mapping, text)
            except csv.Error as exc:  # a cell over the csv module's limit, a stray NUL...
                raise FileRejected(f"not a readable CSV file: {exc}") from None
            kind = mapping.name
        else:
            raise FileRejected("only .csv and .jsonl files are taken")
        if len(rows) > MAX_ROWS:
            raise FileRejected(f"{len(rows)} rows, over the limit of {MAX_ROWS} a file")
        return kind, rows, ignored

    def _jsonl_rows(self, text: str) -> list[Row]:
        out = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                out.append(Row(n, None, None, [_err("", "not valid JSON", "a JSON object")]))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("event_type"), str):
                problem = "missing event_type" if isinstance(obj, dict) else "not an object"
                out.append(Row(n, None, None, [_err("event_type", problem, "a message type")]))
                continue
            event_type = obj.pop("event_type")
            out.append(Row(n, event_type, obj, []))
        return out

    def _csv_rows(self, mapping: Mapping, text: str) -> tuple[list[Row], list[str]]:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c.name for c in mapping.columns if c.required and c.name not in header]
        if missing:
            raise FileRejected(
                f"{mapping.name}: the header lacks required column(s) {', '.join(missing)}"
            )
        known = {c.name for c in mapping.columns}
        ignored = [h for h in header if h not in known]
        out = []
        for row in reader:
            n = reader.line_num
            if None in row:
                out.append(Row(n, None, None, [_err("", "more cells than columns", "")]))
                continue
            out.append(Row(n, mapping.event_type, row_request(mapping, row), []))
        return out, ignored

    def _refuse(self, path: Path, error: str, sha: str | None = None) -> dict[str, Any]:
        """Move a file (or a link, or anything else) to failed/ with a report saying why."""
        report: dict[str, Any] = {
            "file": _short(path.name),
            "sha256": sha,
            "agency": self.connector.agency,
            "started_at": dt.datetime.now(dt.UTC).isoformat(),
            "read_as": None,
            "error": error,
            "rows": 0,
            "accepted": [],
            "rejected": [],
        }
        return self._finish(path, report, self.failed)

    async def process(self, path: Path) -> dict[str, Any]:
        if len(path.name) > MAX_NAME:
            return self._refuse(path, f"the file name is over {MAX_NAME} characters")
        try:
            data = await asyncio.to_thread(_read_regular, path, self.max_file_bytes)
        except FileRejected as exc:
            return self._refuse(path, str(exc))
        sha = hashlib.sha256(data).hexdigest()
        report: dict[str, Any] = {
            "file": path.name,
            "sha256": sha,
            "agency": self.connector.agency,
            "started_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        try:
            kind, rows, ignored = self.rows(path, data)
        except FileRejected as exc:
            return self._refuse(path, str(exc), sha)
        report.update(read_as=kind, ignored_columns=ignored)
        mapping = next((m for m in self.mappings if m.name == kind), None)
        accepted: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        pending: list[tuple[Row, str, Item]] = []
        first_of: dict[str, int] = {}  # row digest -> the first row with that content
        repeats: list[tuple[int, str]] = []
        for row in rows:
            if row.errors or row.request is None or row.event_type is None:
                rejected.append({"row": row.number, "errors": row.errors})
                continue
            digest = row_digest(row.event_type, row.request)
            if digest in first_of:
                repeats.append((row.number, digest))
                continue
            first_of[digest] = row.number
            seen = self.store.get(f"file:{digest}")
            if seen is not None:
                entry = {"row": row.number, **seen["answer"]}
                entry.pop("file_sha256", None)
                if seen["answer"].get("file_sha256") != sha:
                    entry["already_sent"] = True
                accepted.append(entry)
                continue
            row_id = uuid.uuid5(ROW_NAMESPACE, f"{self.connector.agency}/{digest}")
            pending.append((row, digest, Item(row.event_type, row.request, row_id)))
            if len(pending) >= self.batch:
                await self._flush(pending, sha, mapping, accepted, rejected)
                pending = []
        if pending:
            await self._flush(pending, sha, mapping, accepted, rejected)
        # A row repeating an earlier one of the file shares its outcome.
        by_row = {a["row"]: (accepted, a) for a in accepted} | {
            r["row"]: (rejected, r) for r in rejected
        }
        for number, digest in repeats:
            target, first = by_row[first_of[digest]]
            target.append({**first, "row": number, "duplicate": True})
        accepted.sort(key=lambda a: a["row"])
        rejected.sort(key=lambda a: a["row"])
        report.update(rows=len(rows), accepted=accepted, rejected=rejected)
        return self._finish(path, report, self.failed if rejected else self.processed)

    async def _flush(
        self,
        pending: list[tuple[Row, str, Item]],
        sha: str,
        mapping: Mapping | None,
        accepted: list[dict[str, Any]],
        rejected: list[dict[str, Any]],
    ) -> None:
        """Submit a batch (one signature, one publish); record what Kafka has, report the rest."""
        results = await self.submitter.submit_many([item for *_, item in pending])
        unavailable = [r for r in results if isinstance(r, Rejected) and r.retriable]
        if unavailable:  # Kafka cannot take it now: keep the file and try again later
            raise KafkaUnavailableError(unavailable[0].errors[0]["problem"])
        records: list[tuple[str | None, str, str, dict[str, Any]]] = []
        for (row, digest, item), result in zip(pending, results, strict=True):
            if isinstance(result, Rejected):
                rejected.append(
                    {"row": row.number, "errors": [_column(e, mapping) for e in result.errors]}
                )
                continue
            answer = result.answer()
            answer.pop("published_at")
            answer["file_sha256"] = sha
            records.append((f"file:{digest}", digest, item.event_type, answer))
            entry = {"row": row.number, **answer}
            entry.pop("file_sha256")
            accepted.append(entry)
        self.store.record_many(records)

    def _finish(self, path: Path, report: dict[str, Any], dest: Path) -> dict[str, Any]:
        name = _short(path.name)
        target = dest / name
        if target.exists() or target.is_symlink():
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
            stem, dot, suffix = name.rpartition(".")
            target = dest / (f"{stem}.{stamp}.{suffix}" if dot else f"{name}.{stamp}")
        report["outcome"] = dest.name
        report["moved_to"] = f"{dest.name}/{target.name}"
        report["finished_at"] = dt.datetime.now(dt.UTC).isoformat()
        report_path = target.with_name(target.name + ".report.json")
        write_private_json(report_path, report)
        os.replace(path, target)
        log.info(
            "file_processed",
            file=name,
            outcome=dest.name,
            rows=report.get("rows", 0),
            accepted=len(report["accepted"]),
            rejected=len(report["rejected"]),
        )
        return report


def _err(path: str, problem: str, expected: str, column: str | None = None) -> dict[str, Any]:
    return {"column": column, "path": path, "problem": problem, "expected": expected, "got": ""}


def _column(e: dict[str, Any], mapping: Mapping | None) -> dict[str, Any]:
    """An ingest error with the CSV column its path maps to (None for JSON lines)."""
    column = mapping.column_for(e["path"] or "case_ref") if mapping else None
    return {"column": column, **e}


def _short(name: str) -> str:
    """A file name that fits with a report suffix and a time stamp (and is valid UTF-8)."""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if len(name.encode()) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name.encode()[: MAX_NAME - 20].decode('utf-8', 'ignore')}-{digest}"


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file, never following a symbolic link; FileRejected otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if path.is_symlink():
            raise FileRejected("a symbolic link: only regular files are taken") from None
        raise FileRejected(f"cannot be opened ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise FileRejected("not a regular file: only regular files are taken")
        if st.st_size > limit:
            raise FileRejected(f"the file is {st.st_size} bytes, over the limit of {limit}")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise FileRejected(f"the file is over the limit of {limit} bytes")
    return data


def _transient(exc: BaseException) -> bool:
    """Kafka could not take it now: leave the file and try again later."""
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, TimeoutError)
