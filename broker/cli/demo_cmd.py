"""``cbx demo``: a smoke run on the embedded broker.

The full case walk-through replaces it once the connectors exist.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

import typer

from broker import kafka, local_kafka
from broker.cli.output import console, fail, print_json
from broker.errors import CbxError, EmbeddedKafkaError
from broker.settings import KafkaSettings, resolve_settings


async def _round_trip(settings: KafkaSettings) -> dict[str, Any]:
    topic = f"cbx.smoke.{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings, [kafka.TopicSpec(topic)])
    producer = kafka.producer(settings)
    consumer = kafka.consumer(settings, topic, group_id=f"{topic}.reader")
    await producer.start()
    await consumer.start()
    try:
        sent_at = time.perf_counter()
        meta = await producer.send_and_wait(topic, b"hello from cbx", key=b"smoke")
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
        latency_ms = (time.perf_counter() - sent_at) * 1000
    finally:
        await consumer.stop()
        await producer.stop()
    return {
        "topic": topic,
        "partition": meta.partition,
        "offset": meta.offset,
        "received": record.value.decode(),
        "round_trip_ms": round(latency_ms, 2),
    }


def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the embedded broker running.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Start Kafka if needed, send and receive one message, and report."""
    started_here = local_kafka.status() is None and KafkaSettings.from_env() is None
    try:
        settings = resolve_settings(start_embedded=True)
        if not json_out:
            console.print(f"Kafka at {settings.bootstrap_servers}", highlight=False)
        result = asyncio.run(_round_trip(settings))
    except EmbeddedKafkaError as exc:
        fail(exc.reason, exc.log_tail)
    except CbxError as exc:
        fail(str(exc))
    finally:
        if started_here and not keep:
            local_kafka.stop()
    result["c_extension"] = kafka.c_extension_loaded()
    if json_out:
        print_json(result)
    else:
        console.print(
            f"sent and received one message on {result['topic']} "
            f"(partition {result['partition']}, offset {result['offset']}) "
            f"in {result['round_trip_ms']} ms",
            highlight=False,
        )
