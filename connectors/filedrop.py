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
import fnmatch
import hashlib
import io
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fastavro.schema import expand_schema

from broker.envelope import Outgoing
from broker.errors import ConfigurationError, PolicyError
from broker.logging import get_logger
from broker.paths import schemas_dir
from broker.schema.json_to_avro import FieldError
from connectors.gateway.connector import Connector
from connectors.ingest.idempotency import IdempotencyStore
from connectors.ingest.request import Request, RequestReader

log = get_logger("filedrop")

# Message ids of rows are uuid5(ROW_NAMESPACE, "<agency>/<row digest>").
ROW_NAMESPACE = uuid.UUID("5b0f3c1e-8d0a-4f53-9a43-2f1e0c6b9d21")
IGNORED_SUFFIXES = (".part", ".tmp", ".report.json")
WRAPPER_FIELDS = {"case_ref": True, "urgency": False, "occurred_at": False}
_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


def parse_path(path: str) -> tuple[str | int, ...]:
    """``event.address.lines[0]`` → ``("event", "address", "lines", 0)``."""
    out: list[str | int] = []
    for name, index in _SEGMENT.findall(path):
        out.append(int(index) if index else name)
    if not out or "".join(str(p) for p in out) != re.sub(r"[.\[\]]", "", path):
        raise ConfigurationError(f"bad column path {path!r}")
    return tuple(out)


@dataclass(frozen=True)
class Column:
    name: str
    path: tuple[str | int, ...]
    split: str | None
    kind: str  # boolean, int, number or string: how a cell's text is read
    required: bool

    @property
    def dotted(self) -> str:
        out = ""
        for p in self.path:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
        return out


@dataclass(frozen=True)
class Mapping:
    name: str
    match: tuple[str, ...]
    event_type: str
    urgency: str
    sharing: dict[str, Any]
    columns: tuple[Column, ...]

    def matches(self, filename: str) -> bool:
        return any(fnmatch.fnmatch(filename.lower(), m) for m in self.match)

    def column_for(self, error_path: str) -> str | None:
        """The column whose path is, or contains, the field an error is about."""
        best: tuple[int, str] | None = None
        for c in self.columns:
            dotted = c.dotted
            inside = error_path == dotted or error_path.startswith((dotted + ".", dotted + "["))
            if inside and (best is None or len(dotted) > best[0]):
                best = (len(dotted), c.name)
        return best[1] if best else None


def _leaf(schema: Any, path: tuple[str | int, ...]) -> tuple[str, bool]:
    """(kind of the value at ``path`` in an expanded Avro schema, whether it is required)."""
    t = schema
    required = True
    for seg in path:
        if isinstance(t, list):
            branches = [b for b in t if b != "null"]
            required = required and len(branches) == len(t)
            t = branches[0]
        if isinstance(seg, int):
            if not (isinstance(t, dict) and t.get("type") == "array"):
                raise ConfigurationError("index on a field that is not a list")
            t = t["items"]
            required = required and seg == 0
            continue
        if not (isinstance(t, dict) and t.get("type") == "record"):
            raise ConfigurationError(f"{seg!r}: the field above it is not a record")
        field = next((f for f in t["fields"] if f["name"] == seg), None)
        if field is None:
            raise ConfigurationError(f"{t['name']} has no field {seg!r}")
        ft = field["type"]
        required = (
            required and "default" not in field and not (isinstance(ft, list) and "null" in ft)
        )
        t = ft
    if isinstance(t, list):
        t = next(b for b in t if b != "null")
    if isinstance(t, dict) and t.get("type") == "array":
        t = t["items"]
    base = t.get("type") if isinstance(t, dict) else t
    logical = t.get("logicalType") if isinstance(t, dict) else None
    if base == "boolean":
        return "boolean", required
    if base in ("int", "long") and logical is None:
        return "int", required
    if base in ("float", "double"):
        return "number", required
    return "string", required


def load_mapping(path: Path, reader: RequestReader) -> Mapping:
    data = yaml.safe_load(path.read_text())
    where = f"{path.name}"
    try:
        event_type = data["event_type"]
        if event_type not in reader.converters:
            raise ConfigurationError(f"{where}: unknown message type {event_type}")
        event_schema: Any = expand_schema(reader.catalogue.latest(event_type).raw)
        wrapper: Any = expand_schema(reader.wrapper_raw)
        columns = []
        for name, spec in data["columns"].items():
            spec = spec if isinstance(spec, dict) else {"path": spec}
            p = parse_path(spec["path"])
            if p[0] == "event":
                kind, required = _leaf(event_schema, p[1:])
            elif p[0] in WRAPPER_FIELDS and len(p) == 1:
                kind, required = _leaf(wrapper, p)
                required = WRAPPER_FIELDS[str(p[0])]
            else:
                raise ConfigurationError(
                    f"path must start with event. or be one of {', '.join(WRAPPER_FIELDS)}"
                )
            columns.append(Column(name, p, spec.get("split"), kind, required))
        match = data["match"]
        return Mapping(
            name=data["name"],
            match=tuple([match] if isinstance(match, str) else match),
            event_type=event_type,
            urgency=data.get("urgency", "ROUTINE"),
            sharing=data["sharing"],
            columns=tuple(columns),
        )
    except KeyError as exc:
        raise ConfigurationError(f"{where}: missing {exc.args[0]!r}") from None
    except ConfigurationError as exc:
        if str(exc).startswith(where):
            raise
        raise ConfigurationError(f"{where}: {exc}") from None


def load_mappings(reader: RequestReader, folders: list[Path] | None = None) -> list[Mapping]:
    """Mappings shipped in ``schemas/filedrop`` plus any in ``folders`` (theirs come first)."""
    out: list[Mapping] = []
    for folder in [*(folders or []), schemas_dir() / "filedrop"]:
        out += [load_mapping(p, reader) for p in sorted(folder.glob("*.yaml"))]
    return out


def _cell(text: str, kind: str) -> Any:
    """A cell's text as the JSON value the field takes (left as text when it does not read)."""
    t = text.strip()
    low = t.lower()
    if kind == "boolean":
        return True if low in _TRUE else False if low in _FALSE else t
    if kind == "int":
        try:
            return int(t)
        except ValueError:
            return t
    if kind == "number":
        try:
            return float(t)
        except ValueError:
            return t
    return t


def _put(target: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    node: Any = target
    for seg in path[:-1]:
        if isinstance(seg, int):
            raise ConfigurationError("nested lists are not supported in column paths")
        node = node.setdefault(seg, {})  # a list is built as {index: value}, see _lists
    node[path[-1]] = value


def _lists(value: Any) -> Any:
    """Turn ``{0: a, 2: b}`` placeholders into lists ``[a, b]``, recursively."""
    if isinstance(value, dict):
        if value and all(isinstance(k, int) for k in value):
            return [_lists(value[k]) for k in sorted(value)]
        return {k: _lists(v) for k, v in value.items()}
    return value


def row_request(mapping: Mapping, row: dict[str, str]) -> dict[str, Any]:
    """One CSV row as the request HTTP ingest would take."""
    request: dict[str, Any] = {"urgency": mapping.urgency, "sharing": mapping.sharing}
    for c in mapping.columns:
        text = row.get(c.name)
        if text is None or not text.strip():
            continue
        if c.split is not None:
            value: Any = [_cell(x, c.kind) for x in text.split(c.split) if x.strip()]
        else:
            value = _cell(text, c.kind)
        _put(request, c.path, value)
    request.setdefault("event", {})
    return dict(_lists(request))


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
        self.reader = RequestReader(connector.catalogue, connector.converters)
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
        await self.connector.sync()
        accepted: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        pending: list[tuple[Row, str, Request, Outgoing]] = []
        first_of: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row.errors or row.request is None or row.event_type is None:
                rejected.append({"row": row.number, "errors": row.errors})
                continue
            digest = row_digest(row.event_type, row.request)
            if digest in first_of:
                accepted.append({**first_of[digest], "row": row.number, "duplicate": True})
                continue
            seen = self.store.get(f"file:{digest}")
            if seen is not None:
                entry = {"row": row.number, **seen["answer"]}
                entry.pop("file_sha256", None)
                if seen["answer"].get("file_sha256") != sha:
                    entry["already_sent"] = True
                accepted.append(entry)
                first_of[digest] = entry
                continue
            errors = self._check(row, mapping)
            if isinstance(errors, list):
                rejected.append({"row": row.number, "errors": errors})
                continue
            request = errors
            try:
                row_id = uuid.uuid5(ROW_NAMESPACE, f"{self.connector.agency}/{digest}")
                out = request.prepare(self.connector, row_id)
            except PolicyError as exc:
                column = mapping.column_for("case_ref") if mapping else None
                rejected.append(
                    {
                        "row": row.number,
                        "errors": [_err("case_ref", str(exc), "a routable message", column)],
                    }
                )
                continue
            pending.append((row, digest, request, out))
            if len(pending) >= self.batch:
                accepted += await self._flush(pending, sha)
                pending = []
            first_of[digest] = {"row": row.number, "message_id": str(out.header.message_id)}
        if pending:
            accepted += await self._flush(pending, sha)
        accepted.sort(key=lambda a: a["row"])
        report.update(rows=len(rows), accepted=accepted, rejected=rejected)
        return self._finish(path, report, self.failed if rejected else self.processed)

    def _check(self, row: Row, mapping: Mapping | None) -> Request | list[dict[str, Any]]:
        assert row.event_type is not None
        try:
            self.connector.profile.check_send(self.connector.agency, row.event_type)
        except PolicyError as exc:
            return [_err("event_type", str(exc), "a type this agency sends")]
        read = self.reader.read(row.event_type, row.request)
        if isinstance(read, list):
            return [_field_error(e, mapping) for e in read]
        return read

    async def _flush(
        self, pending: list[tuple[Row, str, Request, Outgoing]], sha: str
    ) -> list[dict[str, Any]]:
        await self.connector.publish([o for *_, o in pending])
        entries = []
        records: list[tuple[str | None, str, str, dict[str, Any]]] = []
        for row, digest, request, out in pending:
            answer = {
                "message_id": str(out.header.message_id),
                "event_type": request.event_type,
                "case_ref": request.case_ref,
                "recipients": [
                    {"agency": r.agency, "role": str(r.role)} for r in out.header.recipients
                ],
                "file_sha256": sha,
            }
            records.append((f"file:{digest}", digest, request.event_type, answer))
            entry = {"row": row.number, **answer}
            entry.pop("file_sha256")
            entries.append(entry)
        self.store.record_many(records)
        return entries

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


def _field_error(e: FieldError, mapping: Mapping | None) -> dict[str, Any]:
    return {"column": mapping.column_for(e.path) if mapping else None, **e.as_dict()}
