"""Start-up against the size of the placement registry: what a connector of a small agency, a
police force's connector and the router cost to start when the exchange holds N cases, each
against a raw aiokafka read of the same topic measured in the same run.

    .venv/bin/python -m benchmarks.bench_registry [--cases 10000 83000]

For each N, in a fresh namespace on the embedded broker (or ``CBX_BOOTSTRAP_SERVERS``):

- N cases are written to ``cbx.placements`` and to the views (``cbx.cases.<agency>``) of their
  parties, exactly as the router writes them (the same encoder), by the administrator: routing
  83,000 placements one by one would measure the router, not start-up. A children's home is a
  party to 10 of them; every case's parties are Kent County Council (placing), Lancashire County
  Council (host), both forces and both ICBs.
- Each measured process starts in a child process of its own, so its memory is its own:
  ``small``: the children's home's connector (follows its own view: 10 cases);
  ``police``: Lancashire Constabulary's connector (follows the whole registry);
  ``router``: the router, from start to ready (producers made, registry and routed ids read).
  Reported: seconds to start, peak resident memory, and cases held.
- The baseline: a raw aiokafka consumer reading the same topic to its end (``cbx.placements``
  for the police connector and the router, the home's view for the small connector).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from broker import model
from broker.admin import provision
from broker.kafka import clients as kafka
from broker.kafka import embedded as local_kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.model import Role

RESULTS = Path(__file__).parent / "results"
KENT, LANCS = "la-e10000016", "la-e10000017"
KENT_POLICE, LANCS_POLICE = "pf-e23000032", "pf-e23000003"
KENT_ICB, LANCS_ICB = "icb-e54000032", "icb-e54000048"
HOME = "cp-sc482913"
AGENCIES = (KENT, LANCS, KENT_POLICE, LANCS_POLICE, KENT_ICB, LANCS_ICB, HOME)
HOME_CASES = 10


def parties(with_home: bool) -> dict[Role, str]:
    out = {
        Role.PLACING_AUTHORITY: KENT,
        Role.HOST_AUTHORITY: LANCS,
        Role.HOME_FORCE: KENT_POLICE,
        Role.HOST_FORCE: LANCS_POLICE,
        Role.PLACING_ICB: KENT_ICB,
        Role.HOST_ICB: LANCS_ICB,
    }
    if with_home:
        out[Role.CARE_PROVIDER] = HOME
    return out


async def load(ns: KafkaSettings, n: int) -> float:
    """Write ``n`` cases as the router would; returns the seconds it took."""
    from broker.policy.registry import Placement, case_id
    from broker.schema import codec
    from broker.schema.catalogue import Catalogue

    v = Catalogue.load().latest("PlacementRecord")
    producer = kafka.producer(ns, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = []
        for i in range(n):
            home = i < HOME_CASES
            p = Placement.new(case_id(KENT, f"KCC-LAC-{i:06d}"), parties(home), uuid.uuid4())
            key = p.case_ref.encode()
            value = codec.encode(v.parsed, v.fingerprint, p.to_record())
            for topic in (ns.topics.placements, *(ns.topics.cases(a) for a in p.agencies())):
                futures.append(await kafka.send(producer, topic, value, key=key))
            if len(futures) > 20_000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def raw_read(settings: KafkaSettings, topic: str) -> dict[str, Any]:
    started = time.perf_counter()
    n = await kafka.read_to_end(settings, topic, lambda r: None, timeout_s=600)
    return {"records": n, "seconds": round(time.perf_counter() - started, 3)}


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM), in MiB."""
    status = Path("/proc/self/status").read_text()
    return next(int(x.split()[1]) / 1024 for x in status.splitlines() if x.startswith("VmHWM:"))


def child(what: str) -> None:
    """Run in a child process: start one service, print what it cost as JSON."""
    from broker.crypto.keys import AgencyKeys
    from broker.logging import configure_logging

    configure_logging(level="WARNING")
    settings = KafkaSettings.from_env()
    assert settings is not None

    async def go() -> dict[str, Any]:
        if what == "router":
            from broker.router.service import RouterService

            router = RouterService(settings)
            started = time.perf_counter()
            task = asyncio.create_task(router.run())
            await asyncio.wait_for(router.ready.wait(), 600)
            took = time.perf_counter() - started
            held = len(router.state.registry)
            router.stop_event.set()
            await task
        else:
            from connectors.gateway.connector import Connector

            agency = settings.sasl_username or ""
            with tempfile.TemporaryDirectory() as state:
                conn = Connector(settings, AgencyKeys.new(agency), state_dir=Path(state))
                started = time.perf_counter()
                await conn.start()
                took = time.perf_counter() - started
                held = len(conn.registry)
                await conn.stop()
        # VmHWM, not getrusage's ru_maxrss: Linux keeps the latter across exec, so a child of a
        # large process reported its parent's peak.
        rss = peak_rss_mib()
        return {"start_s": round(took, 3), "peak_rss_mib": round(rss, 1), "cases_held": held}

    print(json.dumps(asyncio.run(go())))


def spawn(settings: KafkaSettings, what: str) -> dict[str, Any]:
    env = {**os.environ, **settings.to_env()}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_registry", "--child", what],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def measure(settings: KafkaSettings, n: int) -> dict[str, Any]:
    ns = settings.with_prefix(f"reg{uuid.uuid4().hex[:8]}")
    await provision.setup(ns)
    from broker.crypto.keys import AgencyKeys

    for agency in AGENCIES:
        await provision.add_agency(ns, agency)
        await provision.publish_agency_keys(ns, AgencyKeys.new(agency))
    load_s = await load(ns, n)
    small = spawn(principals.settings_for(ns, HOME), "connector")
    police = spawn(principals.settings_for(ns, LANCS_POLICE), "connector")
    router = spawn(principals.settings_for(ns, model.ROUTER), "router")
    raw_small = await raw_read(ns, ns.topics.cases(HOME))
    raw_all = await raw_read(ns, ns.topics.placements)
    return {
        "cases": n,
        "load_s": round(load_s, 1),
        "small_connector": small,
        "police_connector": police,
        "router": router,
        "baseline_raw_read": {"home_view": raw_small, "placements": raw_all},
        "small_vs_raw": round(small["start_s"] / max(raw_small["seconds"], 1e-3), 2),
        "police_vs_raw": round(police["start_s"] / max(raw_all["seconds"], 1e-3), 2),
    }


async def run(sizes: list[int]) -> dict[str, Any]:
    external = KafkaSettings.from_env()
    started_here = external is None and local_kafka.status() is None
    settings = external or local_kafka.start().settings()
    try:
        rows = [await measure(settings, n) for n in sizes]
    finally:
        if started_here:
            local_kafka.stop()
    return {"runs": rows, "at": dt.datetime.now(dt.UTC).isoformat()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[10_000, 83_000])
    parser.add_argument("--out", default="registry.json", help="File name under results/.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    from broker.logging import configure_logging

    configure_logging(level=os.environ.get("CBX_LOG_LEVEL", "WARNING"))
    with tempfile.TemporaryDirectory(prefix="cbx-bench-registry-") as home:
        os.environ.setdefault("CBX_HOME", home)
        result = asyncio.run(run(args.cases))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2) + "\n")
    for row in result["runs"]:
        s, p, r = row["small_connector"], row["police_connector"], row["router"]
        print(
            f"{row['cases']:>7} cases: small connector {s['start_s']} s {s['peak_rss_mib']} MiB "
            f"({s['cases_held']} cases); police connector {p['start_s']} s "
            f"{p['peak_rss_mib']} MiB; router ready {r['start_s']} s {r['peak_rss_mib']} MiB; "
            f"raw read of the registry {row['baseline_raw_read']['placements']['seconds']} s"
        )


if __name__ == "__main__":
    main()
