"""Codec benchmark: encode, decode, and agency JSON to record, against baselines in the same run.

    .venv/bin/python -m benchmarks.bench_codec [--seconds 1.0]

Baselines: fastavro's ``schemaless_writer``/``schemaless_reader`` without framing (what the
single-object header costs), and ``fastavro.validation.validate`` + conversion of the same JSON
(what the compiled converter replaces).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from collections.abc import Callable
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any

import fastavro
from fastavro.validation import validate

from benchmarks.samples import PAYLOADS
from broker.schema import codec
from broker.schema.catalogue import Catalogue
from broker.schema.json_to_avro import JsonToAvro
from broker.schema.store import SchemaStore

RESULTS = Path(__file__).parent / "results"


def per_op(fn: Callable[[], Any], seconds: float) -> float:
    """Microseconds per call, best of three runs of about ``seconds`` / 3 each."""
    n = 1
    while True:  # calibrate
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed > 0.05:
            break
        n *= 2
    per_run = max(1, int(n * (seconds / 3) / elapsed))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(per_run):
            fn()
        best = min(best, (time.perf_counter() - t0) / per_run)
    return best * 1e6


def _naive_convert(parsed: Any, payload: Any) -> Any:
    """The obvious path: convert dates and times by schema walk, then validate with fastavro."""
    record = _walk(parsed, payload)
    validate(record, parsed, raise_errors=True)
    return record


def _walk(schema: Any, value: Any) -> Any:
    if isinstance(schema, list):
        if value is None:
            return None
        branch = next(s for s in schema if s != "null")
        return _walk(branch, value)
    if isinstance(schema, dict):
        lt = schema.get("logicalType")
        if lt == "date":
            return dt.date.fromisoformat(value)
        if lt == "timestamp-millis":
            return dt.datetime.fromisoformat(value)
        if schema["type"] == "record":
            return {
                f["name"]: _walk(f["type"], value[f["name"]])
                if f["name"] in value
                else f.get("default")
                for f in schema["fields"]
            }
        if schema["type"] == "array":
            return [_walk(schema["items"], v) for v in value]
    return value


def run(seconds: float) -> dict[str, Any]:
    cat = Catalogue.load()
    store = SchemaStore(cat)
    rows = []
    for name, payload in PAYLOADS.items():
        v = cat.latest(name)
        conv = JsonToAvro(v.parsed)
        record = conv.convert(payload)
        data = codec.encode(v.parsed, v.fingerprint, record)

        def raw_write(v: Any = v, record: Any = record) -> bytes:
            buf = BytesIO()
            fastavro.schemaless_writer(buf, v.parsed, record)
            return buf.getvalue()

        raw = raw_write()

        def raw_read(v: Any = v, raw: bytes = raw) -> Any:
            return fastavro.schemaless_reader(BytesIO(raw), v.parsed, None)

        row: dict[str, Any] = {
            "message": name,
            "bytes": len(data),
            "encode_us": per_op(partial(codec.encode, v.parsed, v.fingerprint, record), seconds),
            "encode_baseline_us": per_op(raw_write, seconds),
            "decode_us": per_op(partial(codec.decode, data, store.writer_for), seconds),
            "decode_baseline_us": per_op(raw_read, seconds),
            "json_to_record_us": per_op(partial(conv.convert, payload), seconds),
            "json_validate_baseline_us": per_op(
                partial(_naive_convert, v.parsed, payload), seconds
            ),
        }
        row["encode_ratio"] = row["encode_us"] / row["encode_baseline_us"]
        row["decode_ratio"] = row["decode_us"] / row["decode_baseline_us"]
        row["json_speedup"] = row["json_validate_baseline_us"] / row["json_to_record_us"]
        rows.append(row)
    return {
        "benchmark": "codec",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    result = run(args.seconds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "codec.json").write_text(json.dumps(result, indent=2) + "\n")
    cols = ["message", "bytes", "encode µs", "(raw)", "decode µs", "(raw)", "json→rec µs"]
    cols += ["(validate)", "speed-up"]
    print("  ".join(f"{c:>12}" for c in cols))
    for r in result["rows"]:
        cells = [r["message"][:12], str(r["bytes"])]
        cells += [f"{r[k]:.1f}" for k in ("encode_us", "encode_baseline_us", "decode_us")]
        cells += [f"{r[k]:.1f}" for k in ("decode_baseline_us", "json_to_record_us")]
        cells += [f"{r['json_validate_baseline_us']:.1f}", f"{r['json_speedup']:.2f}x"]
        print("  ".join(f"{c:>12}" for c in cells))


if __name__ == "__main__":
    main()
