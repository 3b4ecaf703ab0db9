"""``cbx tracker``, ``cbx deliveries``, ``cbx trace``: delivery states for operators."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any

import typer
from rich.table import Table

from broker import model
from broker.delivery_log import LogCodec, LogEntry
from broker.errors import CbxError
from broker.kafka import clients as kafka
from broker.kafka.settings import KafkaSettings
from broker.schema.catalogue import Catalogue
from broker.tracker.view import DeliveryView
from cbx.cli.output import console, fail, print_json
from cbx.cli.router_cmd import HealthHost, HealthPort, service_settings

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def tracker(
    health_port: HealthPort = None,
    health_host: HealthHost = "127.0.0.1",
) -> None:
    """Follow receipts and the delivery log; escalate unacknowledged urgent notifications; keep
    the statutory clocks and remind whoever owes an overdue follow-up."""
    from broker.tracker.service import serve

    try:
        settings = service_settings(model.TRACKER)
        health = (health_host, health_port) if health_port is not None else None
        asyncio.run(serve(settings, health))
    except CbxError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


NamespaceOpt = Annotated[
    str | None,
    typer.Option(help="Topic namespace to read (default: CBX_TOPIC_PREFIX, or cbx)."),
]


async def _entries(settings: KafkaSettings) -> list[LogEntry]:
    logs = LogCodec(Catalogue.load())
    out: list[LogEntry] = []
    async with kafka.access(settings):
        await kafka.read_to_end(
            settings, settings.topics.delivery_log, lambda r: out.extend(logs.entries(r.value))
        )
    return out


def _iso(v: dt.datetime | None) -> str | None:
    return v.isoformat() if v else None


def deliveries(
    agency: Annotated[
        str | None, typer.Option(help="Only messages to or from this agency.")
    ] = None,
    status: Annotated[
        str | None, typer.Option(help="Only this state (for example ESCALATED).")
    ] = None,
    event_type: Annotated[
        str | None, typer.Option("--type", help="Only this message type.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only messages accepted since (ISO time).")
    ] = None,
    namespace: NamespaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Who received what, and when: one row per message and recipient."""
    try:
        entries = asyncio.run(_entries(service_settings(model.OPERATOR, namespace)))
        since_at = dt.datetime.fromisoformat(since) if since else None
    except (CbxError, ValueError) as exc:
        fail(str(exc))
    if since_at is not None and since_at.tzinfo is None:
        since_at = since_at.replace(tzinfo=dt.UTC)
    view = DeliveryView()
    for e in entries:
        view.apply(e)
    rows: list[dict[str, Any]] = []
    for m in view.messages.values():
        if event_type and m.event_type != event_type:
            continue
        if since_at and (m.accepted_at is None or m.accepted_at < since_at):
            continue
        for recipient, r in m.recipients.items():
            if agency and agency not in (recipient, m.sender):
                continue
            if status and str(r.status) != status.upper():
                continue
            rows.append(
                {
                    "message_id": m.message_id,
                    "event_type": m.event_type,
                    "sender": m.sender,
                    "recipient": recipient,
                    "role": r.role,
                    "status": str(r.status),
                    "urgency": m.urgency,
                    "case_ref": m.case_ref,
                    "accepted_at": _iso(m.accepted_at),
                    "ack_deadline": _iso(m.ack_deadline),
                    "times": {k: v.isoformat() for k, v in r.at.items()},
                }
            )
    if json_out:
        print_json(rows)
        return
    table = Table("message", "type", "from", "to", "status", "deadline")
    for row in rows:
        table.add_row(
            row["message_id"][:8],
            row["event_type"] or "",
            row["sender"] or "",
            row["recipient"],
            row["status"],
            row["ack_deadline"] or "-",
        )
    console.print(table)


def trace(
    message_id: Annotated[str, typer.Argument(help="The message to follow.")],
    namespace: NamespaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A message's timeline across its recipients (and its route-gap repairs)."""
    try:
        entries = asyncio.run(_entries(service_settings(model.OPERATOR, namespace)))
    except CbxError as exc:
        fail(str(exc))
    mine = [e for e in entries if message_id in (e.message_id, e.related_message_id)]
    if not mine:
        fail(f"no delivery-log entries for message {message_id}")
    mine.sort(key=lambda e: e.at)
    if json_out:
        print_json([e.as_json() for e in mine])
        return
    table = Table("at", "status", "recipient", "role", "reason", title=message_id)
    for e in mine:
        table.add_row(
            e.at.isoformat(timespec="milliseconds"),
            str(e.status),
            e.recipient or "-",
            e.role or "-",
            e.reason or "",
        )
    console.print(table)
