"""A national exchange on one machine: every council, police force and ICB in
``schemas/reference`` and some thousands of care providers, 83,000 placements, a day of national
traffic played faster, the router restarted in the middle of it and some connectors restarted too.
What it costs, and how each cost grows with the number of agencies.

    .venv/bin/python -m benchmarks.bench_national [--providers 3000] [--cases 83000]
        [--day-s 120] [--routers 2] [--keep DIR] [--out national.json]

With ``--keep DIR`` the exchange outlives the run: its prefix and the played agencies' keys are
written to ``DIR``, and a later run with the same ``DIR`` plays the day again on it, without
provisioning or loading (minutes instead of half an hour). The broker must outlive the run too:
start it first (``CBX_KAFKA_HEAP=2048m cbx kafka start``), and the run uses it; a broker the
run started itself is stopped and purged at its end, ``--keep`` or not.

Reported (``results/national.json`` and a table on stdout):

- per step of provisioning (the public bodies, then providers in steps): agencies, seconds an
  agency, topics, partitions, ACL entries, and the broker's open file descriptors, memory maps and
  resident memory (read from ``/proc``; the embedded broker only);
- the routers' start to ready with the whole registry (``--routers``, 2 by default, as deployed:
  one instance's restart never stops routing), and one instance's warm-up after a restart in the
  middle of the day (SIGTERM, start again, until ``/readyz`` and until it owns partitions again),
  with the latency of IMMEDIATE missing reports posted every 200 ms from the SIGTERM until a
  second after it is ready again (from the force's send to the last of the four recipients'
  systems). The instance restarted is the one that owns the reporting force's urgent lane: the
  worst case, as the lane changes hands when it leaves and may again when it comes back;
- IMMEDIATE latency the rest of the day, and routine messages delivered;
- a small agency's and a police force's connector started again mid-day: seconds and peak
  memory (each in a child process, as in ``bench_registry``).

A day of national traffic, and where the figures come from (Department for Education, "Children
looked after in England including adoptions", year ending 31 March 2024, and its missing-from-care
tables; rounded):

- 83,630 children looked after on 31 March: the placements loaded (``--cases``);
- about 33,000 started to be looked after in the year, and placements change more often than
  that (moves, ends): about 100,000 placement notifications and endings a year, 275 a day;
- about 12,500 looked-after children went missing in the year, in about 80,000 incidents: 220 a
  day, each a missing report (IMMEDIATE), a risk grading, a found report and a return interview
  (four messages): 880 a day;
- the rest (strategy discussions, health assessment requests, CSE risk assessments): taken as
  another 300 a day.

About 1,450 messages a day, each to four to six recipients, is what the exchange carries; a
council's nightly export can add thousands of rows at once (``bench_urgent`` measures that). The
day is played in ``--day-s`` seconds, urgent and routine interleaved, through the connectors of
the agencies of one placement (Kent placing in Lancashire); the other agencies are provisioned
and idle, as most are at any moment.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_cold import missing_report, placement, summary
from benchmarks.bench_e2e import sharing
from benchmarks.bench_registry import (
    AGENCIES,
    HOME,
    HOME_CASES,
    KENT,
    LANCS,
    LANCS_POLICE,
    load,
    spawn,
)
from broker import model
from broker.admin import provision
from broker.kafka import clients as kafka
from broker.kafka import embedded as local_kafka
from broker.kafka import lanes, principals
from broker.kafka.settings import KafkaSettings
from broker.policy.profiles import agency_topics
from broker.policy.reference import reference
from broker.policy.registry import case_id

RESULTS = Path(__file__).parent / "results"
#: The recipients of the host force's missing report about a case with the home among its
#: parties: both councils, the home force and the home.
MISSING_TO = {KENT, LANCS, "pf-e23000032", HOME}
#: Messages of a day (see the module's docstring).
DAY = {"PlacementNotified": 275, "ChildMissingReported": 220, "other": 955}


def providers(n: int) -> list[str]:
    """``n`` care providers' ids (Ofsted-style URNs), the benchmark's home among them."""
    out = [HOME]
    i = 0
    while len(out) < n:
        urn = f"cp-sc{900000 + i:06d}"
        if urn != HOME:
            out.append(urn)
        i += 1
    return out


def broker_proc(pid: int | None) -> dict[str, Any]:
    """Open descriptors, memory maps and resident memory of the broker's JVM."""
    if pid is None:
        return {}
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/maps") as fh:
            maps = sum(1 for _ in fh)
        rss = next(
            int(line.split()[1]) / 1024
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
    except OSError:
        return {}
    return {"broker_fds": fds, "broker_maps": maps, "broker_rss_mib": round(rss)}


class Router:
    """``cbx router`` as a child process with a health port."""

    def __init__(self, settings: KafkaSettings, home: Path, name: str = "router") -> None:
        self.settings = principals.settings_for(settings, model.ROUTER)
        self.home = home
        self.name = name
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        env = {
            **os.environ,
            **self.settings.to_env(),
            "CBX_LOG_FORMAT": "json",
            # Each instance its own name, the same across its restart (its transactional id).
            "CBX_ROUTER_INSTANCE": self.name,
        }
        log = open(self.home / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cbx.cli", "router", "--health-port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return time.perf_counter()

    async def ready(self, since: float, within_s: float = 900) -> float:
        async with httpx.AsyncClient() as h:
            while time.perf_counter() - since < within_s:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the router exited with {self.proc.returncode}")
                try:
                    r = await h.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1)
                    if r.status_code == 200:
                        return time.perf_counter() - since
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError("the router was not ready")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


async def provision_all(
    ns: KafkaSettings, agencies: list[str], steps: list[int], pid: int | None
) -> list[dict[str, Any]]:
    """Provision ``agencies`` in order; a row of costs after each of ``steps`` agencies."""
    rows = []
    topics = partitions = acls = 0
    done = 0
    for stop in steps:
        started = time.perf_counter()
        chunk = agencies[done:stop]
        for agency in chunk:
            made = await provision.add_agency(ns, agency)
            specs = agency_topics(ns.topics, agency)
            topics += len(specs)
            partitions += sum(s.partitions for s in specs)
            acls += len(made.grants)
        took = time.perf_counter() - started
        done = stop
        row = {
            "agencies": done,
            "seconds_an_agency": round(took / max(1, len(chunk)), 3),
            "topics": topics,
            "partitions": partitions,
            "acl_entries": acls,
            **broker_proc(pid),
        }
        rows.append(row)
        print(f"  {row}", flush=True)
    return rows


def owned(router: Router) -> set[str]:
    """The partitions ``router`` owns now (``topic/partition``), from its log."""
    mine: set[str] = set()
    path = router.home / f"{router.name}.log"
    for line in path.read_text().splitlines() if path.exists() else []:
        if '"partitions_assigned"' in line or '"partitions_revoked"' in line:
            entry = json.loads(line)
            parts = set(entry["partitions"])
            mine = mine | parts if entry["event"] == "partitions_assigned" else mine - parts
    return mine


async def lane_owner(ns: KafkaSettings, routers: list[Router], agency: str) -> Router:
    """The instance that owns ``agency``'s urgent lane: the one whose restart its reports feel
    (the others' restarts move none of its partitions)."""
    topic = ns.topics.outbound(agency)
    lane = f"{topic}/{lanes.lane_of(len(await kafka.partitions(ns, topic)))}"
    return next((r for r in routers if lane in owned(r)), routers[0])


async def play_day(
    ns: KafkaSettings, conns: dict[str, Any], day_s: float, routers: list[Router], fraction: float
) -> dict[str, Any]:
    """The day's messages in ``day_s`` seconds; the router instance that owns the reporting
    force's urgent lane restarted half-way, and a small agency's and a force's connector started
    again (in child processes) meanwhile."""
    kent, force = conns[KENT], conns[LANCS_POLICE]
    rng = random.Random(20261128)
    day = {k: max(1, round(v * fraction)) for k, v in DAY.items()}
    plan = ["PlacementNotified"] * day["PlacementNotified"]
    plan += ["ChildMissingReported"] * day["ChildMissingReported"]
    plan += ["PlacementNotified"] * day["other"]  # routine, as the other types are
    rng.shuffle(plan)
    gap = day_s / len(plan)
    urgent_ms: list[float] = []
    warm_ms: list[float] = []
    lost: list[str] = []
    routine = 0
    restart: dict[str, Any] = {}

    async def report(
        bucket: list[float], timeline: list[tuple[float, float]] | None = None
    ) -> None:
        # One of the cases the home is a party to (bench_registry's first ten).
        case = case_id(KENT, f"KCC-LAC-{rng.randrange(HOME_CASES):06d}")
        out = missing_report(force, case)
        mid = str(out.header.message_id)
        started = time.perf_counter()
        waiting[mid] = asyncio.Event()
        await force.publish([out])
        try:
            await asyncio.wait_for(waiting[mid].wait(), 120)
            bucket.append((arrived[mid] - started) * 1000)
            if timeline is not None:
                timeline.append((started, bucket[-1]))
        except TimeoutError:
            lost.append(mid)

    async def restart_router() -> None:
        router = await lane_owner(ns, routers, LANCS_POLICE)
        restart["router_restarted"] = router.name
        signalled = time.perf_counter()
        assert router.stop() == 0, "the router did not stop cleanly on SIGTERM"
        restart["router_stop_s"] = round(time.perf_counter() - signalled, 3)
        since = router.start()
        pending = []
        timeline: list[tuple[float, float]] = []

        async def posting() -> None:
            while True:
                pending.append(asyncio.create_task(report(warm_ms, timeline)))
                await asyncio.sleep(0.2)

        poster = asyncio.create_task(posting())
        restart["router_warm_up_s"] = round(await router.ready(since), 3)
        for _ in range(1200):  # a minute at most
            if owned(router):
                break
            await asyncio.sleep(0.05)
        restart["router_owns_partitions_s"] = round(time.perf_counter() - since, 3)
        # And a second more: with several instances, the group shares the partitions out again
        # as the restarted one comes back, which pauses the partitions that move.
        await asyncio.sleep(1.0)
        poster.cancel()
        await asyncio.gather(*pending)
        # Each report's posting (seconds from the SIGTERM) and its time to the last recipient:
        # where in the restart the worst ones fell.
        restart["immediate_during_router_warm_up_each"] = [
            [round(at - signalled, 3), round(ms, 1)] for at, ms in sorted(timeline)
        ]

    tasks: list[asyncio.Task[Any]] = []
    started = time.perf_counter()
    for i, kind in enumerate(plan):
        if i == len(plan) // 2:
            await restart_router()
            loop = asyncio.get_running_loop()
            small, police = await asyncio.gather(
                loop.run_in_executor(None, spawn, principals.settings_for(ns, HOME), "connector"),
                loop.run_in_executor(
                    None, spawn, principals.settings_for(ns, LANCS_POLICE), "connector"
                ),
            )
            restart["small_connector"] = small
            restart["police_connector"] = police
        if kind == "ChildMissingReported":
            tasks.append(asyncio.create_task(report(urgent_ms)))
        else:
            body = kent.convert("PlacementNotified", placement())
            ref = f"NAT-{uuid.uuid4().hex[:10].upper()}"
            tasks.append(
                asyncio.create_task(
                    kent.send("PlacementNotified", body, case_ref=ref, sharing=sharing())
                )
            )
            routine += 1
        await asyncio.sleep(max(0.0, started + (i + 1) * gap - time.perf_counter()))
    await asyncio.gather(*tasks)
    return {
        "messages": len(plan),
        "routine_sent": routine,
        "immediate": summary([m / 1000 for m in urgent_ms]) | {"count": len(urgent_ms)},
        "immediate_during_router_warm_up": summary([m / 1000 for m in warm_ms])
        | {"count": len(warm_ms)},
        "not_arrived": len(lost),
        **restart,
        "played_s": round(time.perf_counter() - started, 1),
    }


#: When each IMMEDIATE report reached the last of its recipients, by message id.
arrived: dict[str, float] = {}
waiting: dict[str, asyncio.Event] = {}
_seen: dict[str, set[str]] = {}


def sink(agency: str) -> Any:
    async def take(d: Any) -> None:
        mid = str(d.header.message_id)
        if mid not in waiting:
            return
        got = _seen.setdefault(mid, set())
        got.add(agency)
        if got >= MISSING_TO and mid not in arrived:
            arrived[mid] = time.perf_counter()
            waiting[mid].set()

    return take


async def make_exchange(
    ns: KafkaSettings, n_providers: int, cases: int, n_public: int | None, pid: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Provision every agency under ``ns``'s prefix, publish the played agencies' keys and load
    ``cases`` placements: what it cost, and the keys."""
    from broker.crypto.keys import AgencyKeys

    print("setting up", flush=True)
    await provision.setup(ns)
    ref = reference()
    public = [*ref.councils, *ref.forces, *ref.icbs]
    if n_public is not None:  # a smaller run: the agencies of the played placement first
        rest = [a for a in public if a not in AGENCIES and a != HOME]
        public = [a for a in AGENCIES if a != HOME] + rest[: max(0, n_public - 6)]
    homes = providers(n_providers)
    everyone = [*public, *homes]
    steps = [len(public)]
    step = max(1, n_providers // 6)
    steps += [len(public) + k for k in range(step, n_providers, step)]
    steps.append(len(everyone))
    steps = sorted(set(steps))
    print(f"provisioning {len(everyone)} agencies", flush=True)
    growth = await provision_all(ns, everyone, steps, pid)

    keys = {a: AgencyKeys.new(a) for a in AGENCIES}
    for k in keys.values():
        await provision.publish_agency_keys(ns, k)
    print(f"loading {cases} placements", flush=True)
    load_s = await load(ns, cases)
    made = {
        "prefix": ns.topics.prefix,
        "agencies": len(everyone),
        "providers": n_providers,
        "cases": cases,
        "load_s": round(load_s, 1),
        "growth": growth,
    }
    return made, keys


class Kept:
    """An exchange kept for later runs (``--keep``): its prefix, what setting it up cost, and
    the played agencies' keys."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.file = folder / "exchange.json"

    def load(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """What the first run wrote, and the keys; None when nothing is kept here yet."""
        from broker.crypto import keys as keystore

        if not self.file.exists():
            return None
        made = json.loads(self.file.read_text())
        keys = {a: keystore.load(self.folder / "keys" / f"{a}.json") for a in AGENCIES}
        return made, keys

    def save(self, made: dict[str, Any], keys: dict[str, Any]) -> None:
        from broker.crypto import keys as keystore

        for agency, k in keys.items():
            keystore.save(k, self.folder / "keys" / f"{agency}.json")
        self.file.write_text(json.dumps(made, indent=2) + "\n")


async def run(
    n_providers: int,
    cases: int,
    day_s: float,
    home: Path,
    n_public: int | None = None,
    fraction: float = 1.0,
    n_routers: int = 2,
    keep: Path | None = None,
) -> dict[str, Any]:
    from connectors.gateway.connector import Connector

    external = KafkaSettings.from_env()
    started_here = external is None and local_kafka.status() is None
    if external is None:
        os.environ.setdefault("CBX_KAFKA_HEAP", "2048m")
        state = local_kafka.start()
        settings, pid = state.settings(), state.pid
    else:
        settings, pid = external, None
    kept = Kept(keep) if keep is not None else None
    found = kept.load() if kept is not None else None
    try:
        if found is not None:
            made, keys = found
            ns = settings.with_prefix(made["prefix"])
            print(f"playing again on {made['prefix']}, kept in {keep}", flush=True)
        else:
            ns = settings.with_prefix(f"nat{uuid.uuid4().hex[:6]}")
            made, keys = await make_exchange(ns, n_providers, cases, n_public, pid)
            if kept is not None:
                kept.save(made, keys)

        routers = [Router(ns, home, f"router-{i + 1}") for i in range(n_routers)]
        since = [r.start() for r in routers]
        first_ready = max([await r.ready(t) for r, t in zip(routers, since, strict=True)])
        print(f"{n_routers} router(s) ready in {first_ready:.2f} s", flush=True)

        conns = {}
        for a in AGENCIES:
            c = Connector(principals.settings_for(ns, a), keys[a], state_dir=home / a)
            await c.start()
            if a in MISSING_TO:
                c.start_inbox(sink(a))
            conns[a] = c
        try:
            print(f"playing a day in {day_s:.0f} s", flush=True)
            day = await play_day(ns, conns, day_s, routers, fraction)
        finally:
            for c in conns.values():
                await c.stop()
            for r in routers:
                r.stop()
        return {
            "routers": n_routers,
            **{k: v for k, v in made.items() if k != "prefix"},
            "played_again": found is not None,
            "router_first_ready_s": round(first_ready, 3),
            "day": day,
            "at": dt.datetime.now(dt.UTC).isoformat(),
        }
    finally:
        if started_here:
            local_kafka.stop(purge=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--providers", type=int, default=3000)
    parser.add_argument("--cases", type=int, default=83_000)
    parser.add_argument("--day-s", type=float, default=120.0)
    parser.add_argument(
        "--fraction", type=float, default=1.0, help="Of a day's messages, to play (1: all)."
    )
    parser.add_argument(
        "--public", type=int, help="Councils, forces and ICBs to provision (all unless given)."
    )
    parser.add_argument(
        "--routers", type=int, default=2, help="Router instances (one of them is restarted)."
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="Keep the exchange for later runs in this folder; play again on what it holds.",
    )
    parser.add_argument("--out", default="national.json", help="File name under results/.")
    args = parser.parse_args()
    from broker.logging import configure_logging

    configure_logging(level=os.environ.get("CBX_LOG_LEVEL", "WARNING"))
    with tempfile.TemporaryDirectory(prefix="cbx-bench-national-") as tmp:
        if args.keep is None:  # a broker of its own; with --keep, the one already running
            os.environ.setdefault("CBX_HOME", tmp)
        result = asyncio.run(
            run(
                args.providers,
                args.cases,
                args.day_s,
                Path(tmp),
                args.public,
                args.fraction,
                args.routers,
                args.keep,
            )
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2) + "\n")
    d = result["day"]
    print(
        f"{result['agencies']} agencies, {result['growth'][-1]['partitions']} partitions; "
        f"router ready {result['router_first_ready_s']} s, warm-up after a restart "
        f"{d['router_warm_up_s']} s; IMMEDIATE during it p50 "
        f"{d['immediate_during_router_warm_up']['p50_ms']} ms max "
        f"{d['immediate_during_router_warm_up']['max_ms']} ms; the rest of the day p50 "
        f"{d['immediate']['p50_ms']} ms p99 {d['immediate']['p99_ms']} ms; small connector "
        f"{d['small_connector']['start_s']} s, police connector "
        f"{d['police_connector']['start_s']} s; not arrived in 120 s: {d['not_arrived']}"
    )


if __name__ == "__main__":
    main()
