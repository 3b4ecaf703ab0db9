"""Topic names and settings: the one place that says which topics exist and how they are kept.

Every name starts with a namespace prefix (``cbx`` unless ``CBX_TOPIC_PREFIX`` says otherwise), so
several partnerships or environments can share one Kafka cluster, each with its own ACL prefix, and
tests can run side by side on one broker. Services take the names from their :class:`KafkaSettings`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from broker.errors import ConfigurationError
from broker.model import TRACKER

_AGENCY_ID = re.compile(r"^[a-z]{2,4}-[a-z0-9]{3,20}$")
_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
#: Partitions an outbound or inbox topic has beyond its bulk ones: its urgent lane, the last.
URGENT_LANES = 1
# Message ids the router has routed: compacted, and kept a week (retries come within minutes).
_ROUTED = {"cleanup.policy": "compact,delete", "retention.ms": str(7 * 24 * 3600 * 1000)}


#: The routed-ids key saying an outbound partition was made again by a migration, its value how
#: many of its first offsets are copies of records routed before: ``moved:<topic>/<partition>``.
MOVED_KEY = b"moved:"


def moved_key(topic: str, partition: int) -> bytes:
    return MOVED_KEY + f"{topic}/{partition}".encode()


@dataclass(frozen=True)
class TopicSpec:
    """A topic cbx needs, with its partitions and configuration."""

    name: str
    partitions: int = 1
    config: dict[str, str] = field(default_factory=dict)


def check_agency_id(agency: str) -> str:
    """Return ``agency`` if it is a well-formed agency id (``la-e10000016``), else raise."""
    if not _AGENCY_ID.match(agency):
        shown = repr(agency) if len(agency) <= 60 else f"{agency[:40]!r}... ({len(agency)} chars)"
        raise ConfigurationError(
            f"agency id {shown} is not of the form <kind>-<code> in lower case "
            "(for example la-e10000016, pf-e23000032, icb-e54000032)"
        )
    return agency


@dataclass(frozen=True)
class Topics:
    """All topic names of one cbx namespace."""

    prefix: str = "cbx"

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ConfigurationError(
                f"topic prefix {self.prefix!r} must be lower-case letters, digits and dashes"
            )

    @property
    def schemas(self) -> str:
        return f"{self.prefix}.schemas"

    @property
    def directory(self) -> str:
        return f"{self.prefix}.directory"

    @property
    def placements(self) -> str:
        return f"{self.prefix}.placements"

    @property
    def receipts(self) -> str:
        return f"{self.prefix}.receipts"

    @property
    def delivery_log(self) -> str:
        return f"{self.prefix}.delivery-log"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def audit(self) -> str:
        """What operators did at the console: notes, replays, sign-ins (refused ones too)."""
        return f"{self.prefix}.audit"

    @property
    def routed(self) -> str:
        return f"{self.prefix}.router.routed"

    @property
    def outbound_prefix(self) -> str:
        return f"{self.prefix}.outbound."

    @property
    def inbox_prefix(self) -> str:
        return f"{self.prefix}.inbox."

    @property
    def status_prefix(self) -> str:
        return f"{self.prefix}.status."

    @property
    def outbound_pattern(self) -> str:
        return "^" + re.escape(self.outbound_prefix) + ".+"

    def outbound(self, agency: str) -> str:
        """The topic only ``agency`` writes and the router reads."""
        return self.outbound_prefix + check_agency_id(agency)

    def inbox(self, agency: str) -> str:
        """The topic the router writes and only ``agency`` reads."""
        return self.inbox_prefix + check_agency_id(agency)

    @staticmethod
    def is_agency_id(name: str) -> bool:
        return bool(_AGENCY_ID.match(name))

    @property
    def cases_prefix(self) -> str:
        return f"{self.prefix}.cases."

    def cases(self, agency: str) -> str:
        """The placement records of the cases ``agency`` is a party to: the router writes them,
        only that agency reads them (the whole registry is the router's alone)."""
        return self.cases_prefix + check_agency_id(agency)

    def status(self, agency: str) -> str:
        """Delivery-log entries about messages ``agency`` sent: the tracker writes, it reads."""
        return self.status_prefix + check_agency_id(agency)

    def owner_of_outbound(self, topic: str) -> str:
        return topic.removeprefix(self.outbound_prefix)

    def group(self, name: str) -> str:
        """A service's consumer group or transactional id in this namespace."""
        return f"{self.prefix}-{name}"

    def agency_group(self, agency: str, name: str) -> str:
        """An agency's consumer group or transactional id (its ACLs allow the prefix)."""
        return f"{self.prefix}-{check_agency_id(agency)}.{name}"

    def core(self, partitions: int = 3) -> list[TopicSpec]:
        """The shared topics every deployment has."""
        return [
            TopicSpec(self.schemas, 1, dict(_COMPACTED)),
            TopicSpec(self.directory, 1, dict(_COMPACTED)),
            TopicSpec(self.placements, partitions, dict(_COMPACTED)),
            TopicSpec(self.receipts, partitions),
            TopicSpec(self.delivery_log, partitions),
            TopicSpec(self.deadletter, 1),
            TopicSpec(self.audit, 1),
            TopicSpec(self.routed, partitions, dict(_ROUTED)),
            # The tracker's own outbound topic: its overdue-obligation reminders, routed like
            # any agency's message (one partition and the urgent lane).
            TopicSpec(self.outbound(TRACKER), 1 + URGENT_LANES),
        ]

    def agency(self, agency: str, partitions: int = 3, lane: bool = True) -> list[TopicSpec]:
        """An agency's outbound, inbox, status and cases topics. Outbound and inbox have
        ``partitions`` for bulk work and, with ``lane``, one more: the urgent lane
        (:mod:`broker.kafka.lanes`)."""
        lanes = URGENT_LANES if lane else 0
        return [
            TopicSpec(self.outbound(agency), partitions + lanes),
            TopicSpec(self.inbox(agency), partitions + lanes),
            TopicSpec(self.status(agency), partitions),
            TopicSpec(self.cases(agency), partitions, dict(_COMPACTED)),
        ]
