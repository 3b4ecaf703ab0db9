"""Where the recipient list is decided: routing rules plus the placement registry.

One module for both sides: a connector calls :meth:`Rules.recipients` to choose whom to seal
for; the router calls :meth:`Rules.check` to verify the sender's choice, find route gaps and
refuse what the rules do not allow. The rules are data (``schemas/policy/routing.yaml``); the
registry of who is who in each case is built from the cleartext headers of placement messages
(``cbx.placements``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from broker.errors import (
    ConfigurationError,
    NoRecipientError,
    PolicyError,
    UnknownRecipientError,
)
from broker.model import Recipient, Role
from broker.paths import schemas_dir
from broker.policy.profiles import profile_for
from broker.policy.reference import Reference, reference
from broker.policy.registry import Placement, split_case_id

# Roles that the placement registry can resolve for a case.
CASE_ROLES = (
    Role.PLACING_AUTHORITY,
    Role.HOST_AUTHORITY,
    Role.HOST_FORCE,
    Role.HOME_FORCE,
    Role.PLACING_ICB,
    Role.HOST_ICB,
    Role.CARE_PROVIDER,
)


@dataclass(frozen=True)
class Rule:
    """Who may send one message type and who must receive it."""

    event_type: str
    senders: frozenset[Role]
    required: tuple[Role, ...]
    required_if_known: tuple[Role, ...] = ()
    optional: frozenset[Role] = frozenset()
    registers_placement: bool = False
    ends_placement: bool = False
    deadline: str = ""
    #: The message is complete when every required party is the sender itself (no one else told).
    sender_alone_ok: bool = False

    @property
    def allowed(self) -> frozenset[Role]:
        return frozenset(self.required) | frozenset(self.required_if_known) | self.optional


@dataclass(frozen=True)
class RoutingDecision:
    """The router's verdict on a message's recipients."""

    deliver: list[Recipient]
    gaps: list[Recipient]
    placement_update: Placement | None = None
    unregistered_case: bool = False


class Rules:
    """The routing rules, with reference data to derive forces and ICBs from councils."""

    def __init__(self, rules: dict[str, Rule], ref: Reference) -> None:
        self.rules = rules
        self.ref = ref

    @classmethod
    def load(cls, path: Path | None = None, ref: Reference | None = None) -> Rules:
        path = path or schemas_dir() / "policy" / "routing.yaml"
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"routing rules {path} are unreadable: {exc}") from exc
        rules: dict[str, Rule] = {}
        for event, r in (doc.get("rules") or {}).items():
            try:
                rules[event] = Rule(
                    event_type=event,
                    senders=frozenset(Role(x) for x in r["senders"]),
                    required=tuple(Role(x) for x in r.get("required", [])),
                    required_if_known=tuple(Role(x) for x in r.get("required_if_known", [])),
                    optional=frozenset(Role(x) for x in r.get("optional", [])),
                    registers_placement=bool(r.get("registers_placement", False)),
                    ends_placement=bool(r.get("ends_placement", False)),
                    sender_alone_ok=bool(r.get("sender_alone_ok", False)),
                    deadline=str(r.get("deadline", "")),
                )
            except (KeyError, ValueError) as exc:
                raise ConfigurationError(f"{path}: rule {event}: {exc}") from exc
        return cls(rules, ref or reference())

    def rule(self, event_type: str) -> Rule:
        try:
            return self.rules[event_type]
        except KeyError:
            raise PolicyError(f"no routing rule for message type {event_type}") from None

    # --- the parties of a new placement -------------------------------------------------------

    def placement_parties(
        self, placing_authority: str, host_authority: str, provider: str | None = None
    ) -> dict[Role, str]:
        """Every party of a placement, derived from the two councils (and the provider).

        A council code not in the reference data is the request's problem (PolicyError naming it),
        not the exchange's configuration.
        """
        try:
            parties = {
                Role.PLACING_AUTHORITY: placing_authority,
                Role.HOST_AUTHORITY: host_authority,
                Role.HOST_FORCE: self.ref.force_for_council(host_authority).agency_id,
                Role.HOME_FORCE: self.ref.force_for_council(placing_authority).agency_id,
                Role.HOST_ICB: self.ref.icb_for_council(host_authority).agency_id,
                Role.PLACING_ICB: self.ref.icb_for_council(placing_authority).agency_id,
            }
        except (ConfigurationError, KeyError) as exc:
            raise PolicyError(f"unknown council: {exc}") from exc
        if provider:
            parties[Role.CARE_PROVIDER] = provider
        return parties

    # --- connectors: choose recipients ----------------------------------------------------------

    def recipients(
        self,
        event_type: str,
        sender: str,
        parties: dict[Role, str],
        extra: list[Recipient] | None = None,
    ) -> list[Recipient]:
        """Recipients the rules require, plus optional ones the sender adds; never the sender."""
        rule = self.rule(event_type)
        out: dict[str, Recipient] = {}
        for role in (*rule.required, *rule.required_if_known):
            agency = parties.get(role)
            if agency is None:
                if role in rule.required:
                    raise PolicyError(
                        f"{event_type} must reach the {role} of the case, and it is not known"
                    )
                continue
            if agency != sender and agency not in out:
                out[agency] = Recipient(agency, role)
        for r in extra or []:
            if r.role not in rule.allowed:
                raise PolicyError(f"{event_type} may not be sent to a {r.role}")
            if r.agency != sender and r.agency not in out:
                out[r.agency] = r
        if not out:
            self._nowhere(rule, sender, parties)
        return list(out.values())

    def _nowhere(self, rule: Rule, sender: str, parties: dict[Role, str]) -> None:
        """Refuse a message that would reach no one but its sender, unless its rule allows it."""
        if rule.sender_alone_ok:
            return
        roles = [r for r in (*rule.required, *rule.required_if_known) if r in parties]
        verb = "is" if len(roles) == 1 else "are"
        named = ", ".join(str(r) for r in roles)
        why = (
            f"the {named} of this case {verb} {sender} itself"
            if roles
            else "no party the rules require is known for this case"
        )
        raise NoRecipientError(
            f"{rule.event_type} would reach no one: it must reach the "
            f"{', '.join(str(r) for r in rule.required) or 'parties the rules name'}, and {why}"
        )

    # --- router: check --------------------------------------------------------------------------

    def sender_role_of(self, case: Placement | None, sender: str, claimed: Role) -> None:
        """Check the sender holds the role it claims in the case (when the case is known)."""
        if case is None or claimed not in CASE_ROLES:
            return
        holder = case.parties.get(claimed)
        if holder is not None and holder != sender:
            raise PolicyError(f"{sender} claims to be the {claimed} of the case, which is {holder}")

    def check(
        self,
        event_type: str,
        sender: str,
        sender_role: Role,
        recipients: list[Recipient],
        case: Placement | None,
        is_known_agency: Any,
        repair: bool = False,
        case_ref: str | None = None,
    ) -> RoutingDecision:
        """Verify a message's recipients against the rules; find what is missing."""
        rule = self.rule(event_type)
        if sender_role not in rule.senders:
            raise PolicyError(f"a {sender_role} may not send {event_type}")
        try:
            kind = profile_for(sender)
        except ConfigurationError as exc:
            raise PolicyError(str(exc)) from exc
        if sender_role not in kind.roles:
            raise PolicyError(f"{sender} is a {kind.kind}, which cannot be a {sender_role}")
        parties: dict[Role, str]
        update: Placement | None = None
        if rule.registers_placement:
            if case_ref is not None and split_case_id(case_ref)[0] != sender:
                raise PolicyError(
                    f"a placement is registered under its placing authority's own case id "
                    f"({sender}/<reference>), not {case_ref}"
                )
            parties = self._parties_from_header(sender, sender_role, recipients)
            if (
                case is not None
                and case.active
                and case.parties.get(Role.PLACING_AUTHORITY) != sender
            ):
                raise PolicyError(f"the case belongs to {case.parties.get(Role.PLACING_AUTHORITY)}")
            update = Placement(case_ref="", parties=parties)
        else:
            self.sender_role_of(case, sender, sender_role)
            parties = dict(case.parties) if case is not None else {}
            if rule.ends_placement and case is not None:
                update = Placement(case_ref=case.case_ref, parties=dict(case.parties), active=False)

        seen: set[str] = set()
        deliver: list[Recipient] = []
        for r in recipients:
            if r.role not in rule.allowed:
                raise PolicyError(f"{event_type} may not be sent to {r.agency} as {r.role}")
            if not is_known_agency(r.agency):
                raise UnknownRecipientError(
                    f"recipient {r.agency} is not on the exchange (unknown recipient)"
                )
            holder = parties.get(r.role)
            if r.role in CASE_ROLES and holder is not None and holder != r.agency:
                raise PolicyError(
                    f"{r.agency} is addressed as {r.role}, which in this case is {holder}"
                )
            if r.agency == sender or r.agency in seen:
                continue
            seen.add(r.agency)
            deliver.append(r)

        gaps: list[Recipient] = []
        if not repair:
            for role in (*rule.required, *rule.required_if_known):
                agency = parties.get(role)
                if agency is None or agency == sender or agency in seen:
                    continue
                seen.add(agency)
                gaps.append(Recipient(agency, role))
        if not deliver and not gaps:
            self._nowhere(rule, sender, parties)
        unregistered = case is None and not rule.registers_placement
        return RoutingDecision(deliver, gaps, update, unregistered)

    def _parties_from_header(
        self, sender: str, sender_role: Role, recipients: list[Recipient]
    ) -> dict[Role, str]:
        """For a placement message: the parties, derived from the two councils."""
        named = {r.role: r.agency for r in recipients}
        host = named.get(Role.HOST_AUTHORITY, sender)
        return self.placement_parties(sender, host, named.get(Role.CARE_PROVIDER))


@cache
def rules() -> Rules:
    """The shipped routing rules (loaded once)."""
    return Rules.load()
