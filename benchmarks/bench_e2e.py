"""End to end: notifications from a connector through the router to three recipient connectors.

    .venv/bin/python -m benchmarks.bench_e2e [--messages 50000] [--rate 1000 --rate-seconds 10]
                                             [--http-requests 2000] [--skip-baseline]

Every part runs in its own process, as in a deployment: the sending connector (Lancashire
Constabulary, the library path: choose recipients from the placement registry, seal, batch-sign,
publish), the router, and three recipient connectors (Kent County Council, Kent Police, Lancashire
County Council) that verify, unseal and hand each message over, sending a DELIVERED receipt. The
broker is the embedded one (or ``CBX_BOOTSTRAP_SERVERS``) on the same machine.

Measured in one run, side by side:

1. throughput: N ChildMissingReported notifications as fast as the sender can make them;
   notifications per second (first sent to last unsealed at every recipient), latency from ingest
   (the header's recorded_at) to unsealed at the recipient, CPU seconds per notification of each
   process (and the broker's JVM), bytes of records per notification on every topic;
2. the baseline: raw aiokafka over the same topology (a producer; a consume-transform-produce
   stage in transactions fanning out to three topics; three consumers), payloads of the cbx
   outbound record's size, the same producer and consumer settings; ratios cbx/baseline;
3. latency at a fixed rate (default 1,000 a second) for cbx and the baseline;
4. HTTP ingest: requests per second and latency of ``POST /v1/events/ChildMissingReported``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from benchmarks.samples import PAYLOADS
from broker import model
from broker.admin import provision
from broker.kafka import clients as kafka
from broker.kafka import embedded as local_kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.kafka.topics import TopicSpec

RESULTS = Path(__file__).parent / "results"
PLA, HLA, HOF, HF = "la-e10000016", "la-e10000017", "pf-e23000032", "pf-e23000003"
RECIPIENTS = [PLA, HOF, HLA]
PARTIES = [PLA, HLA, HOF, HF, "icb-e54000032", "icb-e54000048"]
CASES = 64
BATCH = 500
CLK_TCK = os.sysconf("SC_CLK_TCK")


def sharing() -> Any:
    from broker.envelope import SharingDecision

    return SharingDecision(
        "locate a missing child",
        ("UK_GDPR_6_1_E_PUBLIC_TASK",),
        "NOT_SOUGHT",
        "Duty inspector",
        "risk of significant harm",
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))], 2)

    return {"p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "max": round(s[-1], 2)}


# --- child processes ------------------------------------------------------------------------------


def child(role: str, args: dict[str, Any], pipe: Any) -> None:
    """Entry point of every child process: run ``role`` with its own event loop."""
    from broker.logging import configure_logging

    os.environ.update(args.get("env", {}))
    configure_logging(level="WARNING")
    asyncio.run(ROLES[role](args, pipe))


async def _commands(pipe: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, pipe.recv)


async def role_router(args: dict[str, Any], pipe: Any) -> None:
    from broker.router.service import RouterService

    service = RouterService(principals.settings_for(args["ns"], model.ROUTER))
    task = asyncio.create_task(service.run())
    pipe.send(("ready",))
    await _commands(pipe)  # stop
    service.stop_event.set()
    await task
    pipe.send(("stopped",))


async def started_connector(args: dict[str, Any]) -> Any:
    """The connector of the agency whose keystore ``args`` names, started, as that agency."""
    from broker.crypto import keys as keystore
    from connectors.gateway.connector import Connector

    keys = keystore.load(Path(args["keystore"]))
    conn = Connector(principals.settings_for(args["ns"], keys.agency), keys)
    await conn.start()
    return conn


class Counter:
    """Latencies of one phase at one recipient."""

    def __init__(self) -> None:
        self.expect = 0
        self.label = ""
        self.lat: list[float] = []
        self.last_at = 0.0
        self.reported = True

    def start(self, label: str, expect: int) -> None:
        self.label, self.expect, self.lat, self.reported = label, expect, [], False


async def _recipient_loop(pipe: Any, counter: Counter, run: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(run)
    pipe.send(("ready",))
    while True:
        cmd = await _commands(pipe)
        if cmd[0] == "stop":
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            pipe.send(("stopped",))
            return
        counter.start(cmd[1], cmd[2])
        while len(counter.lat) < counter.expect:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        pipe.send(("done", counter.label, counter.lat, counter.last_at))


async def role_cbx_recipient(args: dict[str, Any], pipe: Any) -> None:
    from connectors.gateway.inbox import Delivered

    conn = await started_connector(args)
    counter = Counter()

    async def sink(d: Delivered) -> None:
        if d.header.event_type != "ChildMissingReported" or not counter.expect:
            return
        now = time.time()
        counter.lat.append((now - d.header.recorded_at.timestamp()) * 1000)
        counter.last_at = now

    try:
        await _recipient_loop(pipe, counter, conn.inbox.run(sink))
    finally:
        await conn.stop()


async def role_cbx_sender(args: dict[str, Any], pipe: Any) -> None:
    conn = await started_connector(args)
    while True:
        await conn.sync()
        if all(conn.registry.get(f"KCC-LAC-{i}") for i in range(CASES)):
            break
        await asyncio.sleep(0.2)
    body = conn.convert("ChildMissingReported", PAYLOADS["ChildMissingReported"])
    share = sharing()
    pipe.send(("ready",))

    async def send(i0: int, count: int) -> None:
        batch = [
            conn.prepare(
                "ChildMissingReported",
                body,
                case_ref=f"KCC-LAC-{i % CASES}",
                sharing=share,
                urgency="IMMEDIATE",
            )
            for i in range(i0, i0 + count)
        ]
        await conn.publish(batch)

    try:
        await _sender_loop(pipe, send)
    finally:
        await conn.stop()


async def _sender_loop(pipe: Any, send: Callable[[int, int], Coroutine[Any, Any, None]]) -> None:
    while True:
        cmd = await _commands(pipe)
        if cmd[0] == "stop":
            pipe.send(("stopped",))
            return
        _, n, rate = cmd
        t0 = time.time()
        if rate is None:
            for i in range(0, n, BATCH):
                await send(i, min(BATCH, n - i))
        else:
            # A batch every 10 ms, not waiting for one batch's acknowledgements before making
            # the next (as a connector taking requests from many users would).
            tick = 0.01
            per_tick = max(1, round(rate * tick))
            in_flight: list[asyncio.Task[None]] = []
            for k, i in enumerate(range(0, n, per_tick)):
                delay = t0 + k * tick - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                in_flight.append(asyncio.create_task(send(i, min(per_tick, n - i))))
                for t in in_flight:
                    if t.done():
                        t.result()  # a failed send stops the run here
                in_flight = [t for t in in_flight if not t.done()]
            await asyncio.gather(*in_flight)
        pipe.send(("sent", t0, time.time()))


async def role_raw_sender(args: dict[str, Any], pipe: Any) -> None:
    settings: KafkaSettings = args["ns"]
    producer = kafka.producer(settings)
    await producer.start()
    pad = b"x" * max(0, args["size"] - 8)
    keys = [f"KCC-LAC-{i}".encode() for i in range(CASES)]
    pipe.send(("ready",))

    async def send(i0: int, count: int) -> None:
        stamp = struct.pack(">d", time.time())
        futures = [
            await producer.send(args["topic"], stamp + pad, key=keys[i % CASES])
            for i in range(i0, i0 + count)
        ]
        await asyncio.gather(*futures)

    try:
        await _sender_loop(pipe, send)
    finally:
        await producer.stop()


async def fan_out(
    settings: KafkaSettings, consumer: Any, producers: dict[int, Any], group: str, outs: list[str]
) -> int:
    """One fetch: copy each record to every topic of ``outs`` in a transaction with the offsets
    (one transactional producer per input partition, as the router). Returns records copied."""
    batch = await consumer.getmany(timeout_ms=200, max_records=2000)
    for tp, records in batch.items():
        p = producers.get(tp.partition)
        if p is None:
            p = kafka.transactional_producer(settings, f"{group}.{tp.partition}", linger_ms=2)
            await p.start()
            producers[tp.partition] = p
        async with p.transaction():
            futures = [
                await p.send(t, r.value, key=r.key, headers=list(r.headers))
                for r in records
                for t in outs
            ]
            await asyncio.gather(*futures)
            await p.send_offsets_to_transaction({tp: records[-1].offset + 1}, group)
    return sum(len(r) for r in batch.values())


async def role_raw_router(args: dict[str, Any], pipe: Any) -> None:
    """Consume, write three copies in a transaction with the offsets: what the router does."""
    settings: KafkaSettings = args["ns"]
    group = f"{settings.topic_prefix}-raw-router"
    consumer = kafka.consumer(settings, args["topic"], group_id=group)
    await consumer.start()
    producers: dict[int, Any] = {}
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await fan_out(settings, consumer, producers, group, args["outs"])

    task = asyncio.create_task(loop())
    pipe.send(("ready",))
    await _commands(pipe)
    stop.set()
    await task
    await consumer.stop()
    for p in producers.values():
        await p.stop()
    pipe.send(("stopped",))


async def role_raw_recipient(args: dict[str, Any], pipe: Any) -> None:
    settings: KafkaSettings = args["ns"]
    consumer = kafka.consumer(settings, args["topic"], group_id=f"{args['topic']}-g")
    await consumer.start()
    counter = Counter()

    async def run() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            now = time.time()
            for records in batch.values():
                for r in records:
                    if counter.expect:
                        counter.lat.append((now - struct.unpack(">d", r.value[:8])[0]) * 1000)
                        counter.last_at = now
            if batch:
                await consumer.commit()

    try:
        await _recipient_loop(pipe, counter, run())
    finally:
        await consumer.stop()


async def role_http(args: dict[str, Any], pipe: Any) -> None:
    import uvicorn

    from connectors.ingest.http import create_app
    from connectors.ingest.idempotency import IdempotencyStore

    conn = await started_connector(args)
    store = IdempotencyStore(Path(args["store"]))
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(conn, store), host="127.0.0.1", port=args["port"], log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.05)
    pipe.send(("ready",))
    await _commands(pipe)
    server.should_exit = True
    await task
    await conn.stop()
    pipe.send(("stopped",))


ROLES: dict[str, Callable[[dict[str, Any], Any], Coroutine[Any, Any, None]]] = {
    "router": role_router,
    "cbx_recipient": role_cbx_recipient,
    "cbx_sender": role_cbx_sender,
    "raw_sender": role_raw_sender,
    "raw_router": role_raw_router,
    "raw_recipient": role_raw_recipient,
    "http": role_http,
}


# --- the orchestrator -----------------------------------------------------------------------------


class Proc:
    def __init__(self, name: str, role: str, args: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self.pipe, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=child, args=(role, args, theirs), name=name, daemon=True)
        self.proc.start()

    async def recv(self, timeout_s: float = 900) -> Any:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        while not await loop.run_in_executor(None, self.pipe.poll, 0.5):
            if not self.proc.is_alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.exitcode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not answer in {timeout_s:.0f} s")
        return self.pipe.recv()

    def send(self, *msg: Any) -> None:
        self.pipe.send(msg)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc.pid else 0.0

    async def stop(self) -> None:
        if self.proc.is_alive():
            self.send("stop")
            with contextlib.suppress(Exception):
                await self.recv(60)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


async def topic_bytes(settings: KafkaSettings, topics: list[str]) -> dict[str, int]:
    """Bytes of key, value and headers of every record on each topic."""
    out: dict[str, int] = {}
    for t in topics:
        total = 0

        def add(r: Any) -> None:
            nonlocal total
            total += len(r.key or b"") + len(r.value or b"")
            total += sum(len(k) + len(v or b"") for k, v in r.headers)

        await kafka.read_to_end(settings, t, add)
        out[t] = total
    return out


async def phase(
    label: str,
    sender: Proc,
    recipients: list[Proc],
    n: int,
    rate: int | None,
    watch: dict[str, Callable[[], float]],
) -> dict[str, Any]:
    """Send ``n`` (at ``rate`` a second, or flat out) and wait for every recipient to have them."""
    cpu0 = {k: f() for k, f in watch.items()}
    for r in recipients:
        r.send("expect", label, n)
    sender.send("send", n, rate)
    sent = await sender.recv()
    done = [await r.recv() for r in recipients]
    cpu1 = {k: f() for k, f in watch.items()}
    first_sent, last_sent = sent[1], sent[2]
    last_done = max(d[3] for d in done)
    latencies = [x for d in done for x in d[2]]
    return {
        "notifications": n,
        "rate_asked": rate,
        "seconds": round(last_done - first_sent, 3),
        "notifications_per_s": round(n / (last_done - first_sent), 1),
        "send_seconds": round(last_sent - first_sent, 3),
        "latency_ms": percentiles(latencies),
        "deliveries": len(latencies),
        "cpu_us_per_notification": {k: round((cpu1[k] - cpu0[k]) / n * 1e6, 1) for k in watch},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    external = KafkaSettings.from_env()
    started_here = external is None and local_kafka.status() is None
    settings = external or local_kafka.start().settings()
    state = local_kafka.status() if external is None else None
    try:
        with tempfile.TemporaryDirectory(prefix="cbx-bench-") as tmp:
            return await _measure(settings, args, Path(tmp), state.pid if state else None)
    finally:
        if started_here:
            local_kafka.stop()


async def setup(settings: KafkaSettings, tmp: Path) -> dict[str, Path]:
    """Provision the six agencies, their keys and 64 placements (routed by a router process)."""
    from broker.crypto import keys as keystore
    from broker.crypto.keys import AgencyKeys
    from connectors.gateway.connector import Connector

    await provision.setup(settings)
    stores = {}
    for a in PARTIES:
        await provision.add_agency(settings, a)
        keys = AgencyKeys.new(a)
        await provision.publish_agency_keys(settings, keys)
        stores[a] = keystore.save(keys, tmp / f"{a}.keystore.json")
    placing = Connector(principals.settings_for(settings, PLA), keystore.load(stores[PLA]))
    await placing.start()
    await placing.sync()
    body = placing.convert(
        "PlacementNotified",
        {**PAYLOADS["PlacementNotified"], "provider": None, "host_authority": HLA},
    )
    await placing.publish(
        [
            placing.prepare("PlacementNotified", body, case_ref=f"KCC-LAC-{i}", sharing=sharing())
            for i in range(CASES)
        ]
    )
    await placing.stop()
    return stores


async def _measure(
    admin: KafkaSettings, args: argparse.Namespace, tmp: Path, broker_pid: int | None
) -> dict[str, Any]:
    ns = admin.with_prefix(f"e2e{uuid.uuid4().hex[:6]}")
    env = {"CBX_HOME": os.environ.get("CBX_HOME", "")} if os.environ.get("CBX_HOME") else {}
    stores = await setup(ns, tmp)
    n = args.messages
    rate_n = args.rate * args.rate_seconds
    result: dict[str, Any] = {
        "benchmark": "e2e",
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "recipients": 3,
    }
    broker_cpu = {"broker": (lambda: cpu_seconds(broker_pid))} if broker_pid else {}

    # cbx: router, three recipients, the sender.
    router = Proc("router", "router", {"ns": ns, "env": env})
    await router.recv(120)
    recipients = [
        Proc(f"recipient {a}", "cbx_recipient", {"ns": ns, "keystore": str(stores[a]), "env": env})
        for a in RECIPIENTS
    ]
    for r in recipients:
        await r.recv(120)
    sender = Proc("sender", "cbx_sender", {"ns": ns, "keystore": str(stores[HF]), "env": env})
    await sender.recv(180)
    procs = [sender, router, *recipients]
    watch = {p.name: p.cpu for p in procs} | broker_cpu
    topics = [
        ns.topics.outbound(HF),
        *(ns.topics.inbox(a) for a in RECIPIENTS),
        ns.topics.delivery_log,
        ns.topics.receipts,
        ns.topics.routed,
    ]
    try:
        before = await topic_bytes(ns, topics)
        print(f"cbx: {n} notifications flat out", flush=True)
        result["cbx"] = await phase("throughput", sender, recipients, n, None, watch)
        after = await topic_bytes(ns, topics)
        per_topic = {
            t.removeprefix(ns.topic_prefix + "."): round((after[t] - before[t]) / n, 1)
            for t in topics
        }
        result["cbx"]["bytes_per_notification"] = {
            "total": round(sum(per_topic.values()), 1),
            **per_topic,
        }
        print(f"cbx: {rate_n} notifications at {args.rate}/s", flush=True)
        result["cbx_fixed_rate"] = await phase("rate", sender, recipients, rate_n, args.rate, watch)
    finally:
        for p in procs:
            await p.stop()
    outbound_size = (after[ns.topics.outbound(HF)] - before[ns.topics.outbound(HF)]) // n

    if not args.skip_baseline:
        result["baseline"], result["baseline_fixed_rate"] = await baseline(
            ns, n, rate_n, args.rate, outbound_size, env, broker_cpu
        )
        b, c = result["baseline"], result["cbx"]
        result["ratios"] = {
            "throughput_cbx_over_baseline": round(
                c["notifications_per_s"] / b["notifications_per_s"], 3
            ),
            "p99_latency_cbx_over_baseline": round(
                c["latency_ms"]["p99"] / b["latency_ms"]["p99"], 2
            ),
            "fixed_rate_p99_cbx_over_baseline": round(
                result["cbx_fixed_rate"]["latency_ms"]["p99"]
                / result["baseline_fixed_rate"]["latency_ms"]["p99"],
                2,
            ),
        }
    if args.http_requests:
        print(f"HTTP ingest: {args.http_requests} requests", flush=True)
        result["http_ingest"] = await http_run(ns, stores[HF], tmp, args, env)
    return result


async def baseline(
    ns: KafkaSettings,
    n: int,
    rate_n: int,
    rate: int,
    size: int,
    env: dict[str, str],
    broker_cpu: dict[str, Callable[[], float]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Raw aiokafka over the same topology, as the admin principal, topics sized as cbx's."""
    parts = len(await kafka.partitions(ns, ns.topics.outbound(HF)))
    inbox_parts = len(await kafka.partitions(ns, ns.topics.inbox(PLA)))
    out = f"{ns.topic_prefix}.raw.outbound"
    inboxes = [f"{ns.topic_prefix}.raw.inbox{i}" for i in range(3)]
    await kafka.ensure_topics(
        ns, [TopicSpec(out, parts), *(TopicSpec(t, inbox_parts) for t in inboxes)]
    )
    router = Proc("router", "raw_router", {"ns": ns, "topic": out, "outs": inboxes, "env": env})
    await router.recv(120)
    recipients = [
        Proc(f"recipient {i}", "raw_recipient", {"ns": ns, "topic": t, "env": env})
        for i, t in enumerate(inboxes)
    ]
    for r in recipients:
        await r.recv(120)
    sender = Proc("sender", "raw_sender", {"ns": ns, "topic": out, "size": size, "env": env})
    await sender.recv(120)
    procs = [sender, router, *recipients]
    watch = {p.name: p.cpu for p in procs} | broker_cpu
    try:
        print(f"baseline: {n} records flat out ({size} bytes each)", flush=True)
        flat = await phase("throughput", sender, recipients, n, None, watch)
        flat["payload_bytes"] = size
        print(f"baseline: {rate_n} records at {rate}/s", flush=True)
        fixed = await phase("rate", sender, recipients, rate_n, rate, watch)
    finally:
        for p in procs:
            await p.stop()
    return flat, fixed


async def http_run(
    ns: KafkaSettings, keystore: Path, tmp: Path, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Proc(
        "http",
        "http",
        {
            "ns": ns,
            "keystore": str(keystore),
            "store": str(tmp / "http-sent.jsonl"),
            "port": port,
            "env": env,
        },
    )
    await server.recv(120)
    cpu0 = server.cpu()
    request = {
        "case_ref": "KCC-LAC-1",
        "urgency": "IMMEDIATE",
        "sharing": {
            "purpose": "locate a missing child",
            "lawful_basis": ["UK_GDPR_6_1_E_PUBLIC_TASK"],
            "consent": "NOT_SOUGHT",
            "consent_not_sought_reason": "risk of significant harm",
            "decision_maker_role": "Duty inspector",
        },
        "event": PAYLOADS["ChildMissingReported"],
    }
    latencies: list[float] = []
    codes: dict[int, int] = {}
    todo = list(range(args.http_requests))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

            async def worker() -> None:
                while todo:
                    i = todo.pop()
                    t = time.perf_counter()
                    r = await client.post(
                        "/v1/events/ChildMissingReported",
                        json=request,
                        headers={"Idempotency-Key": f"bench-{i}"},
                    )
                    latencies.append((time.perf_counter() - t) * 1000)
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.http_concurrency)))
            seconds = time.perf_counter() - t0
    finally:
        cpu1 = server.cpu()
        await server.stop()
    return {
        "requests": args.http_requests,
        "concurrency": args.http_concurrency,
        "status_codes": codes,
        "requests_per_s": round(args.http_requests / seconds, 1),
        "latency_ms": percentiles(latencies),
        "connector_cpu_s_per_request_us": round((cpu1 - cpu0) / args.http_requests * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--rate-seconds", type=int, default=10)
    parser.add_argument("--http-requests", type=int, default=2000)
    parser.add_argument("--http-concurrency", type=int, default=8)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", default="e2e.json", help="file name under benchmarks/results")
    args = parser.parse_args()
    from broker.logging import configure_logging

    configure_logging(level=os.environ.get("CBX_LOG_LEVEL", "WARNING"))
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


def print_table(r: dict[str, Any]) -> None:
    def row(name: str, p: dict[str, Any]) -> None:
        lat = p["latency_ms"]
        print(
            f"  {name:<24} {p['notifications_per_s']:>9.0f}/s  p50 {lat['p50']:>8.1f}  "
            f"p95 {lat['p95']:>8.1f}  p99 {lat['p99']:>8.1f}  max {lat['max']:>8.1f} ms"
        )

    print(f"end to end, {r['cbx']['notifications']} notifications, 3 recipients each")
    row("cbx", r["cbx"])
    if "baseline" in r:
        row("raw aiokafka", r["baseline"])
    row(f"cbx at {r['cbx_fixed_rate']['rate_asked']}/s", r["cbx_fixed_rate"])
    if "baseline_fixed_rate" in r:
        row(f"raw at {r['baseline_fixed_rate']['rate_asked']}/s", r["baseline_fixed_rate"])
    if "ratios" in r:
        print(f"  ratios cbx/baseline: {r['ratios']}")
    print("  CPU µs per notification:", r["cbx"]["cpu_us_per_notification"])
    print("  bytes per notification:", r["cbx"]["bytes_per_notification"])
    if "http_ingest" in r:
        h = r["http_ingest"]
        print(
            f"  HTTP ingest: {h['requests_per_s']:.0f} requests/s, latency {h['latency_ms']}, "
            f"codes {h['status_codes']}"
        )


if __name__ == "__main__":
    main()
