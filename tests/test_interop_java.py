"""Apache Avro Java reads what cbx writes, and writes it back byte for byte.

Every schema cbx publishes (each version of the catalogue and the wire form of every body) gets
the same CRC-64-AVRO fingerprint from Avro Java (`SchemaNormalization.parsingFingerprint64`); and
every record kind cbx puts on Kafka (the envelope and sealed body of each request in the shipped
scenarios and of every message type, a case record with parties over time and an open episode, a
delivery-log entry, a directory entry) decodes with `BinaryMessageDecoder`, UUIDs, dates and
timestamps as logical types, and encodes again to the same bytes. The Java side is
`tests/interop/Interop.java`, compiled against the Avro jars Maven resolves (cached like the Kafka
jars). No broker: the records are built exactly as connectors and the router build them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from agencies import CATALOGUE, FORMS, header, network

from broker.crypto.keys import AgencyKeys
from broker.delivery_log import LogCodec, LogEntry, Status
from broker.directory import AgencyEntry, DirectoryCodec
from broker.envelope import EnvelopeCodec
from broker.model import Recipient, Role
from broker.paths import cbx_cache, project_root
from broker.policy.profiles import directory_kind, profile_for
from broker.policy.registry import Episode, Placement
from broker.schema import codec
from cbx.scenarios import spec
from connectors.ingest.request import Request, RequestReader

AVRO_JAVA = "1.12.2"
HERE = project_root() / "tests" / "interop"


def _tool(tmp: Path) -> list[str]:
    """The java command line that runs Interop, after resolving and compiling what it needs."""
    mvn, javac, java = shutil.which("mvn"), shutil.which("javac"), shutil.which("java")
    missing = [n for n, p in (("mvn", mvn), ("javac", javac), ("java", java)) if p is None]
    assert not missing, f"the interoperability test needs {', '.join(missing)} on PATH"
    assert mvn is not None
    assert javac is not None
    assert java is not None
    libs = cbx_cache() / "avro-java" / AVRO_JAVA / "libs"
    if not (libs / ".complete").exists():
        partial = libs.with_name("libs.partial")
        shutil.rmtree(partial, ignore_errors=True)
        done = subprocess.run(
            [mvn, "-B", "-q", "-f", str(HERE / "pom.xml"), f"-Davro.version={AVRO_JAVA}",
             "dependency:copy-dependencies", f"-DoutputDirectory={partial}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        (libs / ".complete").write_text(AVRO_JAVA)
    classes = tmp / "classes"
    cp = f"{libs}/*"
    built = subprocess.run(
        [javac, "-d", str(classes), "-cp", cp, str(HERE / "Interop.java")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    return [java, "-cp", f"{cp}:{classes}", "Interop"]


def _sealed(net: Any, event_type: str, sender: str, body: dict[str, Any]) -> bytes:
    others = [a for a in net.keys if a != sender]
    recipients = [Recipient(a, sorted(profile_for(a).roles)[0]) for a in others]
    role = sorted(profile_for(sender).roles)[0]
    h = header(event_type, sender, role, recipients, case_ref="la-e10000016/KCC-LAC-1")
    out = net.protector(sender).seal(h, body)
    return out.value


def _write_records(folder: Path) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    envelopes = EnvelopeCodec(CATALOGUE)
    from broker.schema.json_to_avro import JsonToAvro

    reader = RequestReader(
        CATALOGUE, {n: JsonToAvro(CATALOGUE.latest(n).parsed) for n in CATALOGUE.event_types()}
    )
    played: list[tuple[str, str, str, dict[str, Any]]] = []
    agencies: set[str] = set()
    for path in spec.shipped():
        case = spec.load(path)
        context = spec.Context(case)
        agencies |= set(case.agencies.values())
        for step in case.steps:
            if step.event_type is None:
                continue
            request = context.resolve(step.request, step.id)
            context.values["steps"][step.id] = {"request": request, "case_ref": request["case_ref"]}
            read = reader.read(step.event_type, request)
            if isinstance(read, Request):
                played.append((f"{path.stem}-{step.id}", step.event_type,
                               case.agencies[step.sender], read.body))  # fmt: skip
    net = network(*sorted(agencies))
    from test_case_shapes import body as minimal_body

    for event_type in CATALOGUE.event_types():
        sender = (
            "la-e10000016" if event_type != "HealthRecordTransferRequested" else "icb-e54000032"
        )
        played.append((f"minimal-{event_type}", event_type, sender, minimal_body(event_type)))
    for name, event_type, sender, body in played:
        value = _sealed(net, event_type, sender, body)
        records[f"{name}.envelope"] = value
        records[f"{name}.body"] = envelopes.decode(value)[1]

    t = dt.datetime(2026, 7, 21, 9, 30, tzinfo=dt.UTC)
    case = Placement.new(
        "la-e10000016/KCC-LAC-1",
        {Role.PLACING_AUTHORITY: "la-e10000016", Role.HOST_AUTHORITY: "la-e10000017"},
        uuid.uuid4(),
    ).ended(t, uuid.uuid4())
    case = case.with_episode(
        Episode(uuid.uuid4(), t, (Recipient("pf-e23000003", Role.HOST_FORCE),)), uuid.uuid4()
    )
    v = CATALOGUE.latest("PlacementRecord")
    records["case-record"] = codec.encode(v.parsed, v.fingerprint, case.to_record())
    records["delivery-log"] = LogCodec(CATALOGUE).encode(
        LogEntry(
            message_id=str(uuid.uuid4()), status=Status.ROUTED, at=t, event_type="ChildFound",
            sender="pf-e23000003", recipient="icb-e54000032", role="HOST_ICB+PLACING_ICB",
            case_ref="la-e10000016/KCC-LAC-1", urgency="URGENT", occurred_at=t,
            reason="also notified: travelling to Manchester",
        )
    )  # fmt: skip
    keys = AgencyKeys.new("rhi-1122334")
    records["directory"] = DirectoryCodec(CATALOGUE).encode(
        AgencyEntry.from_keys(keys, "A return-interview provider", directory_kind(keys.agency))
    )
    (folder / "records").mkdir(parents=True)
    for name, value in records.items():
        (folder / "records" / f"{name}.bin").write_bytes(value)
    return records


def _write_schemas(folder: Path) -> int:
    (folder / "schemas").mkdir(parents=True)
    schemas = {v.fingerprint: v.raw for v in CATALOGUE.all_versions()}
    schemas |= {f.wire_fingerprint: f.wire_raw for f in FORMS.by_wire.values()}
    for fp, raw in schemas.items():
        (folder / "schemas" / f"{fp.hex()}.avsc").write_text(json.dumps(raw))
    return len(schemas)


@pytest.mark.timeout(600)
def test_avro_java_agrees_on_every_fingerprint_and_every_record(tmp_path: Path) -> None:
    count = _write_schemas(tmp_path / "data")
    records = _write_records(tmp_path / "data")
    run = subprocess.run(
        [*_tool(tmp_path), str(tmp_path / "data")], capture_output=True, text=True, check=False
    )
    lines = run.stdout.splitlines()
    assert run.returncode == 0, "\n".join(line for line in lines if "FAIL" in line) + run.stderr
    assert lines[-1] == "ALL OK"
    print(f"\nAvro Java {AVRO_JAVA}: {count} fingerprints and {len(records)} records agree")
    assert sum(1 for line in lines if line.startswith("FINGERPRINT OK")) == count
    assert sum(1 for line in lines if line.startswith("RECORD OK")) == len(records)
    decoded_as = {line.split()[-1] for line in lines if line.startswith("RECORD OK")}
    # Every message type's wire form, the envelope and the infrastructure records were read.
    wire = {f"cbx.wire.{t}" for t in CATALOGUE.event_types()}
    assert wire | {"cbx.Envelope", "cbx.PlacementRecord", "cbx.DeliveryLogEntry"} <= decoded_as


def _java_over(tmp_path: Path, records: dict[str, bytes]) -> list[str]:
    """Write the schemas and ``records`` to a folder, run Avro Java over it; its output lines."""
    folder = tmp_path / "played"
    _write_schemas(folder)
    (folder / "records").mkdir()
    for name, value in records.items():
        (folder / "records" / f"{name}.bin").write_bytes(value)
    run = subprocess.run(
        [*_tool(tmp_path), str(folder)], capture_output=True, text=True, check=False
    )
    lines = run.stdout.splitlines()
    assert run.returncode == 0, "\n".join(line for line in lines if "FAIL" in line) + run.stderr
    return lines


@pytest.mark.kafka
@pytest.mark.timeout(900)
async def test_avro_java_reads_every_record_of_a_played_scenario(
    kafka_settings: Any, tmp_path: Path
) -> None:
    """The demo played on the real broker; then every record on every topic of its namespace,
    read back as raw bytes, goes through Avro Java (and each envelope's body too)."""
    from broker.kafka import clients as kafka
    from cbx.scenarios.runner import Runner

    runner = Runner(kafka_settings, spec.load(spec.demo()))
    report = await runner.run()
    assert report["ok"], report["failures"]
    admin = kafka.admin(runner.ns)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(runner.ns.topic_prefix + ".")]
    finally:
        await admin.close()
    envelopes = EnvelopeCodec(CATALOGUE)
    records: dict[str, bytes] = {}

    def take(topic: str) -> Any:
        def keep(r: Any) -> None:
            if r.value is None or r.value[:2] != b"\xc3\x01":
                return  # schemas (JSON) and the router's markers (text) are not Avro
            name = f"{topic}-{r.partition}-{r.offset}"
            records[name] = r.value
            if codec.read_fingerprint(r.value) == envelopes.fingerprint:
                records[f"{name}-body"] = envelopes.decode(r.value)[1]

        return keep

    for topic in names:
        await kafka.read_to_end(runner.ns, topic, take(topic))
    lines = await asyncio.to_thread(_java_over, tmp_path, records)
    decoded_as = {line.split()[-1] for line in lines if line.startswith("RECORD OK")}
    played = {s.event_type for s in spec.load(spec.demo()).steps if s.event_type}
    assert {f"cbx.wire.{t}" for t in played} <= decoded_as
    assert {"cbx.Envelope", "cbx.DeliveryLogEntry", "cbx.PlacementRecord"} <= decoded_as
    assert {"cbx.DirectoryEntry", "cbx.wire.Receipt"} <= decoded_as
    assert sum(1 for line in lines if line.startswith("RECORD OK")) == len(records) > 100
