"""Urgent under load: how long an IMMEDIATE missing report takes to reach all its recipients while
a bulk load flows, against raw aiokafka carrying the same load, in one run.

    .venv/bin/python -m benchmarks.bench_urgent [--bulk 50000] [--concurrency 16]

Every agency runs as it would in production, in a process of its own:

* the router (``cbx router``);
* Hartlepool Borough Council drops a nightly export of ``--bulk``/2 placements (JSON lines) into
  its connector's file-drop folder; the children are placed in Lancashire;
* Middlesbrough Council posts ``--bulk``/2 placements to its connector's HTTP edge
  (``--concurrency`` requests at a time); the children are placed in Kent;
* the recipients of the urgent reports (Kent County Council, Kent Police, Lancashire County Council
  and the children's home), each in its own process, read their inboxes, which the bulk fills too,
  and note when each report is handed to their system;
* Lancashire Constabulary posts an IMMEDIATE ChildMissingReported to its HTTP edge once a second,
  before the load (idle), while it flows, and after.

Measured: for each report, from the POST to its hand-over at the last of its four recipients
(p50, p99, max) at idle and under load; the bulk's own throughput. The baseline: raw aiokafka, a
producer sending the same number of 1.5 KB records as fast as it can while another sends one a
second to the same topic, a consume-transform-produce relay in transactions fanning each record out
to three topics, three consumers: the latency of the one-a-second records, from send to all three.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.bench_cold import missing, summary
from benchmarks.bench_e2e import sharing
from benchmarks.raw import RawRelay
from broker import model
from broker.admin import provision
from broker.kafka import clients as kafka
from broker.kafka import embedded as local_kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings

RESULTS = Path(__file__).parent / "results"
KENT, LANCS = "la-e10000016", "la-e10000017"
KENT_POLICE, LANCS_POLICE = "pf-e23000032", "pf-e23000003"
KENT_ICB, LANCS_ICB = "icb-e54000032", "icb-e54000048"
PROVIDER = "cp-sc482913"
FILE_COUNCIL, HTTP_COUNCIL = "la-e06000001", "la-e06000002"  # Hartlepool, Middlesbrough
TEES = ("pf-e23000013", "icb-e54000050")  # their home force and ICB
RECIPIENTS = (KENT, KENT_POLICE, LANCS, PROVIDER)
AGENCIES = (KENT, LANCS, KENT_POLICE, LANCS_POLICE, KENT_ICB, LANCS_ICB, PROVIDER)
EVERYONE = (*AGENCIES, FILE_COUNCIL, HTTP_COUNCIL, *TEES)
#: The end of the case references of the placements the urgent reports are about.
WARM_UP = "-URGENT-BENCH"


def bulk_placement(council: str, host: str, n: int) -> dict[str, Any]:
    """One row of a council's export: an ordinary (ROUTINE) placement notice."""
    return {
        "case_ref": f"{council.upper()}-{n:07d}",
        "urgency": "ROUTINE",
        "sharing": sharing_json(),
        "event": {
            "placement_id": str(uuid.uuid4()),
            "legal_status": "C2",
            "placement_type": "CHILDRENS_HOME",
            "start_date": dt.date.today().isoformat(),
            "host_authority": host,
            "provider": PROVIDER,
            "approved_by_role": "Director of Children's Services",
            "identity": {
                "given_names": "Sam",
                "family_name": f"Bulk{n}",
                "date_of_birth": "2011-01-01",
            },
            "address": {"lines": ["1 Bench Row"], "town": "Town", "postcode": "PR1 1AA"},
        },
    }


def sharing_json() -> dict[str, Any]:
    """The sharing decision of the benchmark's messages, as HTTP ingest and file drop take it."""
    s = sharing()
    return {
        "purpose": s.purpose,
        "lawful_basis": list(s.lawful_basis),
        "consent": s.consent,
        "consent_not_sought_reason": s.consent_not_sought_reason,
        "decision_maker_role": s.decision_maker_role,
    }


# --- the processes ------------------------------------------------------------------------------


async def connector_for(agency: str, state: Path, base: KafkaSettings | None = None) -> Any:
    """``agency``'s connector, with its own credentials and keystore (under ``CBX_HOME``)."""
    from broker.admin.identity import own_keys
    from connectors.gateway.connector import Connector

    base = base or KafkaSettings.from_env()
    assert base is not None
    settings = principals.settings_for(base, agency)
    conn = Connector(settings, own_keys(agency), state_dir=state / agency)
    await conn.start()
    return conn


async def serve_app(app: Any) -> tuple[str, Any, asyncio.Task[None]]:
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(400):
        if server.started:
            break
        await asyncio.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, task


async def role_filedrop(n: int, state: Path) -> dict[str, Any]:
    from connectors.filedrop.folder import FileDrop
    from connectors.ingest.idempotency import IdempotencyStore

    conn = await connector_for(FILE_COUNCIL, state)
    folder = state / "drop"
    folder.mkdir(parents=True, exist_ok=True)
    export = folder / "placements.jsonl"
    rows = (
        json.dumps({"event_type": "PlacementNotified", **bulk_placement(FILE_COUNCIL, LANCS, i)})
        for i in range(n)
    )
    export.write_text("\n".join(rows) + "\n")
    drop = FileDrop(conn, folder, IdempotencyStore(state / "drop-sent.jsonl"), settle_s=0)
    started = time.perf_counter()
    reports = await drop.scan()
    seconds = time.perf_counter() - started
    await conn.stop()
    published = sum(len(r.get("accepted", [])) for r in reports)
    rejected = sum(len(r.get("rejected", [])) for r in reports)
    return {"published": published, "rejected": rejected, "seconds": round(seconds, 2)}


async def role_http(n: int, concurrency: int, state: Path) -> dict[str, Any]:
    import httpx

    from connectors.ingest.http import create_app
    from connectors.ingest.idempotency import IdempotencyStore

    conn = await connector_for(HTTP_COUNCIL, state)
    url, server, task = await serve_app(create_app(conn, IdempotencyStore(state / "http.jsonl")))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    refused: list[int] = []
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                r = await client.post(
                    "/v1/events/PlacementNotified", json=bulk_placement(HTTP_COUNCIL, KENT, i)
                )
                if r.status_code != 202:
                    refused.append(r.status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    server.should_exit = True
    await task
    await conn.stop()
    return {"published": n - len(refused), "refused": len(refused), "seconds": round(seconds, 2)}


async def role_recipient(agency: str, state: Path) -> dict[str, Any]:
    """Read one recipient's inbox, noting when each urgent report is handed over, until
    SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    count = 0
    notes = (state / f"arrivals-{agency}.jsonl").open("a", buffering=1)

    async def sink(d: Any) -> None:
        nonlocal count
        count += 1
        urgent = d.header.event_type == "ChildMissingReported"
        if urgent or d.header.case_ref.endswith(WARM_UP):
            line = {"id": str(d.header.message_id), "agency": agency, "t": time.time()}
            notes.write(json.dumps(line) + "\n")

    conn = await connector_for(agency, state)
    conn.start_inbox(sink)
    await stop.wait()
    await conn.stop()
    notes.close()
    return {"handed_over": count}


def role_main(args: argparse.Namespace) -> None:
    from broker.logging import configure_logging

    configure_logging(level=os.environ.get("CBX_LOG_LEVEL", "WARNING"))
    state = Path(args.state)
    if args.role == "filedrop":
        result = asyncio.run(role_filedrop(args.bulk, state))
        name = args.role
    elif args.role == "http":
        result = asyncio.run(role_http(args.bulk, args.concurrency, state))
        name = args.role
    else:
        result = asyncio.run(role_recipient(args.agency, state))
        name = f"recipient-{args.agency}"
    (state / f"{name}.json").write_text(json.dumps(result))


# --- the run ------------------------------------------------------------------------------------


def spawn(settings: KafkaSettings, agency: str, home: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **principals.settings_for(settings, agency).to_env(),
        "CBX_HOME": str(home),
        "CBX_LOG_FORMAT": "json",
    }
    log = open(home / f"{agency}-{args[0]}.log", "ab")  # noqa: SIM115 - the child's
    proc = subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    CHILDREN.append(proc)
    return proc


#: Every process this run started: none outlives it, whatever happens.
CHILDREN: list[subprocess.Popen[bytes]] = []


def stop_children() -> None:
    for proc in CHILDREN:
        if proc.poll() is None:
            proc.terminate()
    for proc in CHILDREN:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def role_args(role: str, home: Path, bulk: int, concurrency: int, agency: str = "") -> list[str]:
    return [
        "-m", "benchmarks.bench_urgent", "--role", role, "--state", str(home),
        "--bulk", str(bulk), "--concurrency", str(concurrency), "--agency", agency,
    ]  # fmt: skip


async def measure_cbx(settings: KafkaSettings, bulk: int, concurrency: int, home: Path) -> Any:
    import httpx

    from broker.admin.identity import own_keys
    from broker.delivery_log import LogCodec, Status
    from broker.schema.catalogue import Catalogue
    from connectors.ingest.http import create_app
    from connectors.ingest.idempotency import IdempotencyStore

    logs = LogCodec(Catalogue.load())
    os.environ["CBX_HOME"] = str(home)
    ns = settings.with_prefix(f"urgent{uuid.uuid4().hex[:8]}")
    await provision.setup(ns)
    for agency in EVERYONE:
        await provision.add_agency(ns, agency)
        await provision.publish_agency_keys(ns, own_keys(agency))
    # The placements the urgent reports are about: Kent's children in Lancashire.
    procs = [spawn(ns, model.ROUTER, home, "-m", "cbx.cli", "router")]
    readers = [
        spawn(ns, a, home, *role_args("recipient", home, bulk, concurrency, a)) for a in RECIPIENTS
    ]
    force = await connector_for(LANCS_POLICE, home, ns)
    kent = await connector_for(KENT, home / "kent-sender", ns)
    cases, placements = [], []
    for i in range(3):
        sent = await kent.send(
            "PlacementNotified",
            kent.convert("PlacementNotified", bulk_placement(KENT, LANCS, i)["event"]),
            case_ref=f"KCC-{i:04d}{WARM_UP}",
            sharing=sharing(),
        )
        cases.append(sent.header.case_ref)
        placements.append(sent.header.message_id)
    await kent.stop()
    while any(force.registry.get(c) is None for c in cases):
        await force.sync()
        await asyncio.sleep(0.05)
    url, server, task = await serve_app(create_app(force, IdempotencyStore(home / "force.jsonl")))
    posted: dict[str, tuple[float, str]] = {}  # id -> (wall time of the POST, phase)

    async def post(client: httpx.AsyncClient, phase: str) -> None:
        body = {
            "case_ref": cases[len(posted) % len(cases)],
            "urgency": "IMMEDIATE",
            "sharing": sharing_json(),
            "event": missing(),
        }
        t = time.time()
        r = await client.post("/v1/events/ChildMissingReported", json=body)
        if r.status_code == 202:
            posted[r.json()["message_id"]] = (t, phase)

    def arrived() -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for path in home.glob("arrivals-*.jsonl"):
            for line in path.read_text().splitlines():
                a = json.loads(line)
                out.setdefault(a["id"], {})[a["agency"]] = a["t"]
        return out

    async def all_arrived(ids: list[str], within_s: float, at: int = len(RECIPIENTS)) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            got = arrived()
            if all(len(got.get(i, {})) >= at for i in ids):
                return
            await asyncio.sleep(0.2)

    # Every recipient reads its inbox before anything is measured: the warm-up placements
    # reached the three of them that are told of a placement.
    await all_arrived([str(p) for p in placements], 120, at=3)

    load: list[subprocess.Popen[bytes]] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for _ in range(10):  # idle: one a second, nothing else flowing
                await post(client, "idle")
                await asyncio.sleep(1)
            await all_arrived(list(posted), 120)
            load_started = time.perf_counter()
            half = bulk // 2
            load = [
                spawn(ns, FILE_COUNCIL, home, *role_args("filedrop", home, half, concurrency)),
                spawn(ns, HTTP_COUNCIL, home, *role_args("http", home, bulk - half, concurrency)),
            ]
            while any(p.poll() is None for p in load):
                await post(client, "load")
                await asyncio.sleep(1)
            sent_s = time.perf_counter() - load_started
            # The bulk is sent; it flows until the router has routed it all.
            while True:
                done, total = await router_progress(ns)
                if done >= total:
                    break
                await post(client, "load")
                await asyncio.sleep(1)
            routed_s = time.perf_counter() - load_started
            for _ in range(5):
                await post(client, "after")
                await asyncio.sleep(1)
            await all_arrived(list(posted), 300)
    finally:
        for p in readers:
            p.send_signal(signal.SIGTERM)
        server.should_exit = True
        await task
        await force.stop()
        for p in readers + load:
            p.wait(120) if p.poll() is None else None
        procs[0].send_signal(signal.SIGTERM)
        procs[0].wait(60)
    got = arrived()
    # When the router routed each report (its ROUTED entries' time), to split the latency into
    # the part up to the router's commit and the part from there to the recipients' systems.
    routed_at: dict[str, float] = {}

    def note(r: Any) -> None:
        for entry in logs.entries(r.value):
            if entry.message_id in posted and entry.status == Status.ROUTED:
                t = entry.at.timestamp()
                routed_at[entry.message_id] = max(routed_at.get(entry.message_id, 0.0), t)

    await kafka.read_to_end(ns, ns.topics.delivery_log, note)
    phases: dict[str, list[float]] = {}
    to_router: dict[str, list[float]] = {}
    lost = 0
    for mid, (t, phase) in posted.items():
        seen = got.get(mid, {})
        if len(seen) < len(RECIPIENTS):
            lost += 1
            continue
        phases.setdefault(phase, []).append(max(seen.values()) - t)
        if mid in routed_at:
            to_router.setdefault(phase, []).append(max(0.0, routed_at[mid] - t))
    roles = {r: json.loads((home / f"{r}.json").read_text()) for r in ("filedrop", "http")}
    published = sum(int(r["published"]) for r in roles.values())
    handed_over = {
        a: json.loads((home / f"recipient-{a}.json").read_text())["handed_over"] for a in RECIPIENTS
    }
    return {
        "urgent": {phase: {**summary(v), "reports": len(v)} for phase, v in phases.items()},
        "urgent_posted_to_routed": {phase: summary(v) for phase, v in to_router.items()},
        "urgent_not_arrived": lost,
        "bulk": {
            "published": published,
            "sent_s": round(sent_s, 1),
            "routed_s": round(routed_s, 1),
            "routed_per_s": round(published / routed_s, 1),
            "file_drop": roles["filedrop"],
            "http": roles["http"],
        },
        "handed_over": handed_over,
    }


async def router_progress(ns: KafkaSettings) -> tuple[int, int]:
    """(records the router has committed, records on outbound topics)."""
    from aiokafka import TopicPartition

    admin = kafka.admin(ns)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(ns.topics.group("router"))
        names = [t for t in await admin.list_topics() if t.startswith(ns.topics.outbound_prefix)]
    finally:
        await admin.close()
    c = kafka.consumer(ns, group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(t, p) for t in names for p in await kafka.partitions(ns, t)]
        ends = await c.end_offsets(tps)
    finally:
        await c.stop()
    done = sum(m.offset for tp, m in committed.items() if tp in ends and m.offset >= 0)
    return done, sum(ends.values())


async def measure_raw(settings: KafkaSettings, bulk: int) -> dict[str, Any]:
    """The same load through raw aiokafka: no lanes, so the one-a-second records share the
    topic with the bulk (what a plain Kafka pipeline does)."""
    marks: dict[bytes, float] = {}
    done_at: dict[bytes, float] = {}

    def arrived(key: bytes) -> None:
        if key in marks:
            done_at[key] = time.perf_counter()

    relay = RawRelay(settings, "urgentraw", arrived)
    await relay.start()
    payload = os.urandom(1500)

    async def flood() -> None:
        for i in range(bulk):
            await relay.send(f"bulk-{i}".encode(), payload)
        await relay.producer.flush()

    async def tick(phase: str) -> None:
        key = f"{phase}-{uuid.uuid4()}".encode()
        marks[key] = time.perf_counter()
        await relay.send(key, payload)

    try:
        for _ in range(5):
            await tick("idle")
            await asyncio.sleep(1)
        loader = asyncio.create_task(flood())
        started = time.perf_counter()
        while not loader.done() or len(done_at) < len(marks) - 1:
            await tick("load")
            await asyncio.sleep(1)
            if time.perf_counter() - started > 600:
                break
        await loader
        for _ in range(1200):  # the last ones, for up to two minutes
            if len(done_at) >= len(marks):
                break
            await asyncio.sleep(0.1)
    finally:
        await relay.stop()
    phases: dict[str, list[float]] = {}
    for key, sent_at in marks.items():
        if key in done_at:
            phases.setdefault(key.decode().split("-")[0], []).append(done_at[key] - sent_at)
    return {
        "urgent": {phase: {**summary(v), "reports": len(v)} for phase, v in phases.items()},
        "urgent_not_arrived": sum(1 for k in marks if k not in done_at),
    }


async def run(bulk: int, concurrency: int) -> dict[str, Any]:
    external = KafkaSettings.from_env()
    started_here = external is None and local_kafka.status() is None
    settings = external or local_kafka.start().settings()
    try:
        with tempfile.TemporaryDirectory(prefix="cbx-bench-urgent-") as tmp:
            try:
                cbx = await measure_cbx(settings, bulk, concurrency, Path(tmp))
            finally:
                stop_children()
        raw = await measure_raw(settings, bulk)
    finally:
        if started_here:
            local_kafka.stop()
    under, raw_under = cbx["urgent"].get("load"), raw["urgent"].get("load")
    return {
        "bulk": bulk,
        "cbx": cbx,
        "baseline_raw_aiokafka": raw,
        "load_p99_vs_raw": (
            round(under["p99_ms"] / raw_under["p99_ms"], 2) if under and raw_under else None
        ),
        "at": dt.datetime.now(dt.UTC).isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bulk", type=int, default=50_000, help="ROUTINE records in the load.")
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP posts at a time.")
    parser.add_argument("--out", default="urgent.json", help="File name under results/.")
    parser.add_argument("--role", choices=["filedrop", "http", "recipient"], help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--agency", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role_main(args)
        return
    from broker.logging import configure_logging

    configure_logging(level=os.environ.get("CBX_LOG_LEVEL", "WARNING"))
    result = asyncio.run(run(args.bulk, args.concurrency))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2) + "\n")
    c, r = result["cbx"], result["baseline_raw_aiokafka"]
    for phase in ("idle", "load", "after"):
        if phase in c["urgent"]:
            u, b = c["urgent"][phase], r["urgent"].get(phase, {})
            routed = c["urgent_posted_to_routed"].get(phase, {})
            print(
                f"IMMEDIATE {phase}: cbx p50 {u['p50_ms']} ms, p99 {u['p99_ms']} ms, "
                f"max {u['max_ms']} ms ({u['reports']} reports; routed by p50 "
                f"{routed.get('p50_ms')} ms, p99 {routed.get('p99_ms')} ms); "
                f"raw p50 {b.get('p50_ms')} ms, p99 {b.get('p99_ms')} ms"
            )
    print(
        f"bulk: {c['bulk']['published']} ROUTINE placements sent in {c['bulk']['sent_s']} s, "
        f"routed in {c['bulk']['routed_s']} s ({c['bulk']['routed_per_s']}/s); "
        f"not arrived: cbx {c['urgent_not_arrived']}, raw {r['urgent_not_arrived']}"
    )


if __name__ == "__main__":
    main()
