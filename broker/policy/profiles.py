"""Agency profiles: council, police force, health body, care provider.

A profile says which message types an agency of that kind sends and receives and how its connector
delivers to the agency's system by default. It is data (``schemas/policy/profiles.yaml``), kept in
step with the routing rules by a test; the connector refuses to send a type outside its profile
(before any routing) and refuses, with a REJECTED receipt, a received type outside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from broker.errors import ConfigurationError, NotPermittedError
from broker.kafka.topics import Topics, TopicSpec
from broker.model import SERVICE_PREFIX, SYSTEM_TYPES, Role
from broker.paths import schemas_dir

ALWAYS_RECEIVED = SYSTEM_TYPES
SINKS = ("folder", "webhook")


@dataclass(frozen=True)
class Profile:
    kind: str
    prefix: str
    directory_kind: str
    #: "own": the cases the agency is a party to; "all": the whole registry (police forces).
    registry: str
    description: str
    roles: frozenset[Role]
    sends: frozenset[str]
    receives: frozenset[str]
    sink: str
    #: The official code an id of this kind must carry: (regular expression, what it means).
    id_format: tuple[str, str] | None = None
    #: Bulk partitions of each of the agency's topics (outbound and inbox have the urgent lane
    #: besides): what its volume needs, and no more, since partitions cost every broker.
    partitions: int = 3
    #: Whether outbound and inbox have an urgent lane besides. An agency of one partition that
    #: sends and receives a few messages a day has no bulk for urgent work to wait behind, and
    #: the router reads such a topic first, as it reads lanes (see broker/kafka/lanes.py).
    lane: bool = True

    def check_id(self, agency: str) -> None:
        """Refuse an id whose code is not the official code of this kind."""
        if self.id_format and not re.fullmatch(self.id_format[0], agency):
            raise ConfigurationError(
                f"agency id {agency!r} is not a {self.kind} id: expected {self.id_format[1]}"
            )

    def check_send(self, agency: str, event_type: str) -> None:
        if event_type not in self.sends:
            raise NotPermittedError(
                f"{agency} is a {self.kind}; a {self.kind} does not send {event_type} "
                f"(it sends {', '.join(sorted(self.sends))})"
            )

    def may_receive(self, event_type: str) -> bool:
        return event_type in self.receives or event_type in ALWAYS_RECEIVED


@cache
def profiles(path: Path | None = None) -> dict[str, Profile]:
    """The profiles by kind, from ``schemas/policy/profiles.yaml``."""
    path = path or schemas_dir() / "policy" / "profiles.yaml"
    data = yaml.safe_load(path.read_text())
    out: dict[str, Profile] = {}
    for kind, p in data["profiles"].items():
        where = f"{path.name}: profile {kind}"
        if p.get("sink") not in SINKS:
            raise ConfigurationError(f"{where}: sink must be one of {', '.join(SINKS)}")
        partitions = p.get("partitions", 3)
        if (
            not isinstance(partitions, int)
            or isinstance(partitions, bool)
            or not 1 <= partitions <= 32
        ):
            raise ConfigurationError(f"{where}: partitions must be a whole number from 1 to 32")
        lane = p.get("lane", True)
        if not isinstance(lane, bool):
            raise ConfigurationError(f"{where}: lane must be true or false")
        if not lane and partitions != 1:
            raise ConfigurationError(
                f"{where}: lane: false is for an agency of one partition; {partitions} bulk "
                "partitions need the lane, or urgent work waits behind bulk"
            )
        try:
            roles = frozenset(Role(r) for r in p["roles"])
        except ValueError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        out[kind] = Profile(
            kind=kind,
            prefix=p["prefix"],
            directory_kind=p["directory_kind"],
            registry=p.get("registry", "own"),
            description=p["description"],
            roles=roles,
            sends=frozenset(p["sends"]),
            receives=frozenset(p["receives"]),
            sink=p["sink"],
            id_format=(
                (p["id_format"]["pattern"], p["id_format"]["means"]) if "id_format" in p else None
            ),
            partitions=partitions,
            lane=lane,
        )
    return out


def agency_topics(topics: Topics, agency: str) -> list[TopicSpec]:
    """An agency's topics, with the partitions its kind is given (``partitions`` in
    profiles.yaml)."""
    profile = profile_for(agency)
    return topics.agency(agency, profile.partitions, profile.lane)


def profile_for(agency: str) -> Profile:
    """The profile of an agency, from the prefix of its id."""
    for p in profiles().values():
        if agency.startswith(p.prefix):
            p.check_id(agency)
            return p
    prefixes = ", ".join(f"{p.prefix} ({p.kind})" for p in profiles().values())
    raise ConfigurationError(f"agency id {agency!r} has no profile: ids start with {prefixes}")


def directory_kind(agency: str) -> str:
    """The ``AgencyKind`` of an agency's directory entry (SERVICE for cbx's own services)."""
    if agency.startswith(SERVICE_PREFIX):
        return "SERVICE"
    return profile_for(agency).directory_kind
