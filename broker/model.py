"""The plain values every layer shares: roles, recipients, sensitivity classes, system ids.

Nothing here does I/O or imports another cbx module, so any module may use these without pulling
in the layer that produces them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

#: Principals of the exchange's own services (also their ids in headers and the directory).
ROUTER = "svc-router"
TRACKER = "svc-tracker"
OPERATOR = "svc-operator"
SERVICE_PREFIX = "svc-"

#: Message types the exchange itself uses; agencies never post them.
RECEIPT = "Receipt"
ROUTE_GAP_NOTICE = "RouteGapNotice"
OBLIGATION_OVERDUE = "ObligationOverdue"
SYSTEM_TYPES = frozenset({RECEIPT, ROUTE_GAP_NOTICE, OBLIGATION_OVERDUE})

#: Urgencies that travel the urgent lane of the outbound and inbox topics.
URGENT_LANE_URGENCIES = frozenset({"IMMEDIATE", "URGENT"})


class SensitivityClass(StrEnum):
    """Class of a sensitive field; the sharing policy gives each class its audience."""

    IDENTITY = "IDENTITY"
    """Who the child or another person is: names, birth dates, NHS numbers, photos, descriptions."""
    LOCATION = "LOCATION"
    """Where someone is or goes: addresses, postcodes, last-seen and found places."""
    HEALTH = "HEALTH"
    """Health needs, medication, health records."""
    INTELLIGENCE = "INTELLIGENCE"
    """Police and safeguarding intelligence: associates, phones, vehicles, disclosures."""
    CARE = "CARE"
    """Care planning: risk summaries, care plans, reasons and details of care decisions."""


class Role(StrEnum):
    """The capacity in which an agency takes part in a case (mirrors the Avro ``cbx.Role``)."""

    PLACING_AUTHORITY = "PLACING_AUTHORITY"
    """The council responsible for the looked-after child."""
    HOST_AUTHORITY = "HOST_AUTHORITY"
    """The council where the child is placed."""
    HOST_FORCE = "HOST_FORCE"
    """The police force for the placement address."""
    HOME_FORCE = "HOME_FORCE"
    """The police force of the placing authority's area."""
    PLACING_ICB = "PLACING_ICB"
    """The integrated care board for the placing area."""
    HOST_ICB = "HOST_ICB"
    """The integrated care board for the placement address."""
    CARE_PROVIDER = "CARE_PROVIDER"
    """The children's home or fostering agency."""
    GP = "GP"
    """The child's GP practice."""
    SCHOOL = "SCHOOL"
    """The child's school or virtual school."""
    IRO = "IRO"
    """The independent reviewing officer."""
    RHI_PROVIDER = "RHI_PROVIDER"
    """The independent return home interview provider."""
    OTHER_FORCE = "OTHER_FORCE"
    """Any other police force with an interest (the area where a child was found or seen)."""
    OTHER_AUTHORITY = "OTHER_AUTHORITY"
    """Any other council with an interest (the area where a child was found or seen)."""
    OFSTED = "OFSTED"
    """The regulator."""
    EXCHANGE = "EXCHANGE"
    """cbx itself (router, tracker), sending notices; never a recipient of personal data."""


@dataclass(frozen=True)
class Recipient:
    """An agency a message is addressed to, in a role (and why, when beyond the statutory set).

    Two recipients are the same when agency and role are; the reason does not count.
    """

    agency: str
    role: Role
    reason: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Withheld:
    """A sealed field this recipient is not entitled to: present, but not readable here."""

    sensitivity: SensitivityClass

    def as_json(self) -> dict[str, str]:
        return {"withheld": str(self.sensitivity)}
