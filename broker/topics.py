"""Topic names and settings: the one place that says which topics exist and how they are kept."""

from __future__ import annotations

import re

from broker.errors import ConfigurationError
from broker.kafka import TopicSpec

SCHEMAS = "cbx.schemas"
DIRECTORY = "cbx.directory"
PLACEMENTS = "cbx.placements"
RECEIPTS = "cbx.receipts"
DELIVERY_LOG = "cbx.delivery-log"
DEADLETTER = "cbx.deadletter"
OUTBOUND_PREFIX = "cbx.outbound."
INBOX_PREFIX = "cbx.inbox."

_AGENCY_ID = re.compile(r"^[a-z]{2,4}-[a-z0-9]{3,20}$")
_COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}


def check_agency_id(agency: str) -> str:
    """Return ``agency`` if it is a well-formed agency id (``la-e10000016``), else raise."""
    if not _AGENCY_ID.match(agency):
        raise ConfigurationError(
            f"agency id {agency!r} is not of the form <kind>-<code> in lower case "
            "(for example la-e10000016, pf-e23000032, icb-e54000032)"
        )
    return agency


def outbound(agency: str) -> str:
    """The topic only ``agency`` writes and the router reads."""
    return OUTBOUND_PREFIX + check_agency_id(agency)


def inbox(agency: str) -> str:
    """The topic the router writes and only ``agency`` reads."""
    return INBOX_PREFIX + check_agency_id(agency)


def core_topics(partitions: int = 3) -> list[TopicSpec]:
    """The shared topics every deployment has."""
    return [
        TopicSpec(SCHEMAS, 1, dict(_COMPACTED)),
        TopicSpec(DIRECTORY, 1, dict(_COMPACTED)),
        TopicSpec(PLACEMENTS, partitions, dict(_COMPACTED)),
        TopicSpec(RECEIPTS, partitions),
        TopicSpec(DELIVERY_LOG, partitions),
        TopicSpec(DEADLETTER, 1),
    ]


def agency_topics(agency: str, partitions: int = 3) -> list[TopicSpec]:
    """An agency's outbound and inbox topics."""
    return [TopicSpec(outbound(agency), partitions), TopicSpec(inbox(agency), partitions)]
