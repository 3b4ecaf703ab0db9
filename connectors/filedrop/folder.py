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
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.errors import CbxError
from broker.logging import get_logger
from connectors.filedrop.mappings import Mapping, load_mappings, row_request
from connectors.gateway.connector import Connector
from connectors.ingest.idempotency import IdempotencyStore
from connectors.ingest.submit import Item, Rejected, Submitter

log = get_logger("filedrop")

# Message ids of rows are uuid5(ROW_NAMESPACE, "<agency>/<row digest>").
ROW_NAMESPACE = uuid.UUID("5b0f3c1e-8d0a-4f53-9a43-2f1e0c6b9d21")
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
    ) -> None:
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
        """Files ready to take, oldest first."""
        now = time.time()
        out = []
        for p in self.root.iterdir():
            if not p.is_file() or p.name.startswith(".") or p.name.endswith(IGNORED_SUFFIXES):
                continue
            try:
                if now - p.stat().st_mtime < self.settle_s:
                    continue
            except FileNotFoundError:
                continue
            out.append(p)
        return sorted(out, key=lambda p: (p.stat().st_mtime, p.name))

    async def scan(self) -> list[dict[str, Any]]:
        """Process every ready file; the reports, in order."""
        return [await self.process(p) for p in self.pending()]

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
            return "jsonl", self._jsonl_rows(text), []
        if name.endswith(".csv"):
            mapping = next((m for m in self.mappings if m.matches(path.name)), None)
            if mapping is None:
                known = "; ".join(f"{m.name}: {', '.join(m.match)}" for m in self.mappings)
                raise FileRejected(f"no column mapping matches the file name (known: {known})")
            rows, ignored = self._csv_rows(mapping, text)
            return mapping.name, rows, ignored
        raise FileRejected("only .csv and .jsonl files are taken")

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

    async def process(self, path: Path) -> dict[str, Any]:
        data = await asyncio.to_thread(path.read_bytes)
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
            report.update(read_as=None, error=str(exc), rows=0, accepted=[], rejected=[])
            return self._finish(path, report, self.failed)
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
            raise CbxError(unavailable[0].errors[0]["problem"])
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
        target = dest / path.name
        if target.exists():
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
            target = dest / f"{path.stem}.{stamp}{path.suffix}"
        report["outcome"] = dest.name
        report["moved_to"] = f"{dest.name}/{target.name}"
        report["finished_at"] = dt.datetime.now(dt.UTC).isoformat()
        report_path = target.with_name(target.name + ".report.json")
        tmp = report_path.with_name("." + report_path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, report_path)
        os.replace(path, target)
        log.info(
            "file_processed",
            file=path.name,
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
