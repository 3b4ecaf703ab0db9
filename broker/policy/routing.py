"""Where the recipient list is decided: routing rules plus the case registry.

One module for both sides: a connector calls :meth:`Rules.route` to choose its role and whom to
seal for; the router calls :meth:`Rules.check` to verify the sender's choice, find route gaps and
refuse what the rules do not allow. Both resolve roles to agencies with :meth:`Rules.audience`: the
case's parties in force at the message's event time, and for a message about an open missing
episode everyone who heard of it. The rules are data (``schemas/policy/routing.yaml``); the case
registry is ``cbx.placements`` (:mod:`broker.policy.registry`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from broker.errors import (
    ConfigurationError,
    NoRecipientError,
    PolicyError,
    UnknownCaseError,
    UnknownRecipientError,
)
from broker.model import SERVICE_PREFIX, URGENT_LANE_URGENCIES, Recipient, Role
from broker.paths import schemas_dir
from broker.policy.profiles import profile_for
from broker.policy.reference import Reference, reference
from broker.policy.registry import Episode, Placement, split_case_id

# Roles that the case registry can resolve for a case (placement roles and registered parties).
CASE_ROLES = (
    Role.PLACING_AUTHORITY,
    Role.HOST_AUTHORITY,
    Role.HOST_FORCE,
    Role.HOME_FORCE,
    Role.PLACING_ICB,
    Role.HOST_ICB,
    Role.CARE_PROVIDER,
    Role.GP,
    Role.SCHOOL,
    Role.IRO,
    Role.RHI_PROVIDER,
)
#: Roles an agency takes by where something happened, not by a place in the case.
AREA_ROLES = (Role.OTHER_FORCE, Role.OTHER_AUTHORITY)
#: Roles the placing authority adds to and removes from a case (CasePartiesChanged).
REGISTERED_ROLES = frozenset({Role.GP, Role.SCHOOL, Role.IRO, Role.RHI_PROVIDER})

EPISODE_STEPS = ("opens", "continues", "closes")


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
    changes_parties: bool = False
    deadline: str = ""
    #: The message is complete when every required party is the sender itself (no one else told).
    sender_alone_ok: bool = False
    #: Its place in a missing episode: opens, continues or closes one ("" none).
    episode: str = ""
    #: A clear body field holding a council code where it happened: that council and its force
    #: are told (as OTHER_AUTHORITY and OTHER_FORCE) unless they are parties already.
    area_field: str = ""

    @property
    def allowed(self) -> frozenset[Role]:
        return frozenset(self.required) | frozenset(self.required_if_known) | self.optional


@dataclass(frozen=True)
class Delivery:
    """One recipient agency of a routed message, with every role it holds in it."""

    agency: str
    roles: tuple[Role, ...]
    reason: str | None = None

    @property
    def role_names(self) -> str:
        return "+".join(str(r) for r in self.roles)


@dataclass(frozen=True)
class RoutingDecision:
    """The router's verdict on a message's recipients."""

    deliver: list[Delivery]
    gaps: list[Recipient]
    placement_update: Placement | None = None
    unregistered_case: bool = False


@dataclass(frozen=True)
class PartyChange:
    """A party the placing authority adds to or removes from a case."""

    agency: str
    role: Role
    added: bool


@dataclass
class Audience:
    """Who holds which role for one message: (agency, role) pairs, and why each is there."""

    members: list[Recipient] = field(default_factory=list)
    #: Those who heard of the open missing episode a message is about (told in any role).
    episode: list[Recipient] = field(default_factory=list)

    def holders(self, role: Role) -> list[str]:
        return sorted({m.agency for m in self.members if m.role == role})

    def roles_of(self, agency: str) -> list[Role]:
        return [m.role for m in self.members if m.agency == agency]

    def __contains__(self, r: object) -> bool:
        return r in self.members


def _group(recipients: Iterable[Recipient], sender: str) -> list[Delivery]:
    """One delivery per agency (never the sender), with all its roles, in first-seen order."""
    roles: dict[str, list[Role]] = {}
    reasons: dict[str, str] = {}
    for r in recipients:
        if r.agency == sender:
            continue
        held = roles.setdefault(r.agency, [])
        if r.role not in held:
            held.append(r.role)
        if r.reason and r.agency not in reasons:
            reasons[r.agency] = r.reason
    return [Delivery(a, tuple(rs), reasons.get(a)) for a, rs in roles.items()]


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
                episode = str(r.get("episode", ""))
                if episode and episode not in EPISODE_STEPS:
                    raise ValueError(f"episode must be one of {', '.join(EPISODE_STEPS)}")
                rules[event] = Rule(
                    event_type=event,
                    senders=frozenset(Role(x) for x in r["senders"]),
                    required=tuple(Role(x) for x in r.get("required", [])),
                    required_if_known=tuple(Role(x) for x in r.get("required_if_known", [])),
                    optional=frozenset(Role(x) for x in r.get("optional", [])),
                    registers_placement=bool(r.get("registers_placement", False)),
                    ends_placement=bool(r.get("ends_placement", False)),
                    changes_parties=bool(r.get("changes_parties", False)),
                    sender_alone_ok=bool(r.get("sender_alone_ok", False)),
                    episode=episode,
                    area_field=str(r.get("area_field", "")),
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

    def urgent_lane(self, event_type: str, urgency: str) -> bool:
        """Whether a message travels the urgent lane: IMMEDIATE and URGENT ones, and every
        message of a missing episode whatever its urgency, so that a found report is never
        behind bulk work, and never ahead of its sender's missing report (one partition)."""
        if urgency in URGENT_LANE_URGENCIES:
            return True
        rule = self.rules.get(event_type)
        return rule is not None and bool(rule.episode)

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

    def area_recipients(self, rule: Rule, council_code: str | None) -> list[Recipient]:
        """The council and force of the area a rule's location field names (OTHER_AUTHORITY and
        OTHER_FORCE), with the reason written in the delivery log."""
        if not council_code:
            return []
        council = council_code if council_code.startswith("la-") else f"la-{council_code.lower()}"
        try:
            force = self.ref.force_for_council(council).agency_id
        except (ConfigurationError, KeyError) as exc:
            raise PolicyError(
                f"event.{rule.area_field}: {council_code} is not a council code in the reference "
                f"data ({exc})"
            ) from exc
        why = f"{rule.event_type} in the area of {council} ({rule.area_field})"
        return [
            Recipient(council, Role.OTHER_AUTHORITY, why),
            Recipient(force, Role.OTHER_FORCE, why),
        ]

    # --- who is who for one message -------------------------------------------------------------

    @staticmethod
    def placement_audience(parties: dict[Role, str], case: Placement | None) -> Audience:
        """Who hears of a (new) placement: its parties, and the parties the placing authority
        registered to the case (they stay across placements)."""
        members = [Recipient(a, r) for r, a in parties.items()]
        if case is not None:
            members += [Recipient(a, r) for r, a in case.parties.items() if r in REGISTERED_ROLES]
        return Audience(members)

    def audience(self, rule: Rule, case: Placement, at: dt.datetime) -> Audience:
        """The (agency, role) pairs a message about ``case`` at ``at`` resolves roles to.

        The parties in force at the event time; for the end notice, the parties of the placement
        it ends; for a message about an open missing episode, also everyone who heard of it.
        """
        members = case.parties_at(at)
        if rule.ends_placement:
            members = [Recipient(a, r) for r, a in case.parties.items()]
        heard: list[Recipient] = []
        if rule.episode in ("continues", "closes") and case.episode is not None:
            heard = list(case.episode.heard)
            members += [h for h in heard if h not in members]
        return Audience(members, heard)

    def _refuse_sender(
        self, rule: Rule, case: Placement, sender: str, role: Role | None, at: dt.datetime
    ) -> PolicyError:
        for r in [role] if role else sorted(rule.senders):
            was = case.former(sender, r, at)
            if was is not None and was.until is not None:
                return PolicyError(
                    f"{sender} was the {r} of case {case.case_ref} until "
                    f"{was.until.isoformat()} ({was.ended_by}); it is no longer a party and may "
                    f"send nothing about the case"
                )
        if role is not None:
            return PolicyError(f"{sender} is not the {role} of case {case.case_ref}")
        return PolicyError(
            f"{sender} has no role in case {case.case_ref} that may send {rule.event_type}"
        )

    def sender_role(
        self,
        rule: Rule,
        case: Placement | None,
        sender: str,
        at: dt.datetime,
        claimed: Role | None = None,
        audience: Audience | None = None,
    ) -> Role:
        """The role ``sender`` sends ``rule``'s type in: one it holds in the case at ``at``, or an
        area role its kind can take (a force reporting what happened in its own area).

        With ``claimed`` (the router), checks that role; without (a connector), chooses one.
        ``audience`` is the case's audience for the message, when the caller has it already.
        """
        if Role.EXCHANGE in rule.senders or claimed == Role.EXCHANGE:
            # The exchange's own messages (an overdue-obligation reminder): from one of its
            # services, in no case role; the outbound topic and signature prove which service.
            if not sender.startswith(SERVICE_PREFIX):
                raise PolicyError(f"{rule.event_type} is sent by the exchange only, not {sender}")
            if Role.EXCHANGE not in rule.senders:
                raise PolicyError(f"the exchange does not send {rule.event_type}")
            return Role.EXCHANGE
        try:
            kind = profile_for(sender)
        except ConfigurationError as exc:
            raise PolicyError(str(exc)) from exc
        if claimed is not None:
            if claimed not in rule.senders:
                raise PolicyError(f"a {claimed} may not send {rule.event_type}")
            if claimed not in kind.roles:
                raise PolicyError(f"{sender} is a {kind.kind}, which cannot be a {claimed}")
        if case is None:
            if claimed is not None:
                return claimed
            fits = [r for r in sorted(rule.senders) if r in kind.roles]
            if not fits:
                raise PolicyError(f"a {kind.kind} may not send {rule.event_type}")
            return fits[0]
        held = (audience or self.audience(rule, case, at)).roles_of(sender)
        if claimed is not None:
            if claimed in held:
                return claimed
            if claimed in AREA_ROLES and not any(r in CASE_ROLES for r in held):
                return claimed
            if claimed in AREA_ROLES:
                raise PolicyError(
                    f"{sender} is the {'+'.join(map(str, held))} of case {case.case_ref}, "
                    f"not an {claimed}"
                )
            raise self._refuse_sender(rule, case, sender, claimed, at)
        for r in held:
            if r in rule.senders:
                return r
        if not held:
            area = [r for r in AREA_ROLES if r in rule.senders and r in kind.roles]
            if area:
                return area[0]
        raise self._refuse_sender(rule, case, sender, None, at)

    # --- connectors: choose recipients ----------------------------------------------------------

    def recipients(
        self,
        event_type: str,
        sender: str,
        parties: dict[Role, str] | Audience,
        extra: list[Recipient] | None = None,
    ) -> list[Recipient]:
        """Recipients the rules require, plus optional ones the sender adds; never the sender.

        One entry per (agency, role): an agency holding two roles is named in both.
        """
        rule = self.rule(event_type)
        audience = (
            parties
            if isinstance(parties, Audience)
            else Audience([Recipient(a, r) for r, a in parties.items()])
        )
        out: list[Recipient] = []
        for role in (*rule.required, *rule.required_if_known):
            holders = audience.holders(role)
            if (
                not holders
                and role in rule.required
                and role in CASE_ROLES
                and not isinstance(parties, Audience)
            ):
                raise PolicyError(
                    f"{event_type} must reach the {role} of the case, and it is not known"
                )
            out += [Recipient(a, role) for a in holders if a != sender]
        out += [m for m in audience.episode if m.agency != sender]
        for r in extra or []:
            self.check_extra(rule, r, audience)
            if r.agency != sender:
                out.append(r)
        unique = list(dict.fromkeys(out))
        if not unique:
            self._nowhere(rule, sender, audience)
        return unique

    def check_extra(self, rule: Rule, r: Recipient, audience: Audience) -> None:
        """A recipient beyond the statutory set: its role is one the rule allows, its kind fits
        the role, and a case role is addressed to the agency holding it."""
        if r.role not in rule.allowed:
            raise PolicyError(
                f"{rule.event_type} may not be sent to a {r.role} "
                f"(allowed: {', '.join(sorted(map(str, rule.allowed))) or 'none'})"
            )
        try:
            kind = profile_for(r.agency)
        except ConfigurationError as exc:
            raise PolicyError(f"also_notify: {exc}") from exc
        if r.role not in kind.roles:
            raise PolicyError(
                f"{r.agency} is a {kind.kind}, which cannot be notified as {r.role} "
                f"(a {kind.kind} can be {', '.join(map(str, kind.roles))})"
            )
        holders = audience.holders(r.role)
        if r.role in CASE_ROLES and holders and r.agency not in holders:
            raise PolicyError(
                f"{r.agency} is addressed as {r.role}, which in this case is {', '.join(holders)}"
            )

    def choose(
        self,
        event_type: str,
        sender: str,
        case: Placement | None,
        body: dict[str, Any],
        at: dt.datetime,
        extra: list[Recipient] | None = None,
    ) -> tuple[Role, list[Recipient]]:
        """A connector's choice for one message: its role and the recipients to seal for.

        ``case`` is the registry's record (None: not registered). A placement message names its
        parties in the body; a party change is addressed to the parties it changes; anything else
        resolves the rule's roles to the case's parties at ``at``.
        """
        rule = self.rule(event_type)
        if rule.registers_placement:
            parties = self.placement_parties(sender, body["host_authority"], body.get("provider"))
            role = self.sender_role(rule, None, sender, at)
            audience = self.placement_audience(parties, case)
            return role, self.recipients(event_type, sender, audience, extra)
        if case is None:
            raise UnknownCaseError("the case is not in the placement registry: name the recipients")
        if rule.changes_parties:
            self.sender_role(rule, case, sender, at, Role.PLACING_AUTHORITY)
            changes = [
                PartyChange(c["agency"], Role(c["role"]), c["change"] == "ADDED")
                for c in body["changes"]
            ]
            changed = list(dict.fromkeys(Recipient(c.agency, c.role) for c in changes))
            self._check_changes(rule, changed, changes)
            return Role.PLACING_AUTHORITY, changed
        area = body.get(rule.area_field) if rule.area_field else None
        return self.route(event_type, sender, case, at, extra, area)

    def route(
        self,
        event_type: str,
        sender: str,
        case: Placement,
        at: dt.datetime,
        extra: list[Recipient] | None = None,
        area: str | None = None,
    ) -> tuple[Role, list[Recipient]]:
        """Roles resolved for a registered case: the sender's role at ``at`` and the recipients."""
        rule = self.rule(event_type)
        audience = self.audience(rule, case, at)
        role = self.sender_role(rule, case, sender, at, audience=audience)
        told = {m.agency for m in audience.members}
        area_extra = [r for r in self.area_recipients(rule, area) if r.agency not in told]
        return role, self.recipients(event_type, sender, audience, [*(extra or []), *area_extra])

    def _nowhere(self, rule: Rule, sender: str, audience: Audience) -> None:
        """Refuse a message that would reach no one but its sender, unless its rule allows it."""
        if rule.sender_alone_ok:
            return
        roles = [r for r in (*rule.required, *rule.required_if_known) if audience.holders(r)]
        verb = "is" if len(roles) == 1 else "are"
        named = ", ".join(str(r) for r in roles)
        why = (
            f"the {named} of this case {verb} {sender} itself"
            if roles
            else "no party the rules require is in force for this case"
        )
        raise NoRecipientError(
            f"{rule.event_type} would reach no one: it must reach the "
            f"{', '.join(str(r) for r in rule.required) or 'parties the rules name'}, and {why}"
        )

    # --- router: check --------------------------------------------------------------------------

    def check(
        self,
        event_type: str,
        sender: str,
        sender_role: Role,
        recipients: list[Recipient],
        case: Placement | None,
        is_known_agency: Callable[[str], bool],
        repair: bool = False,
        case_ref: str | None = None,
        at: dt.datetime | None = None,
        message_id: Any = None,
        changes: list[PartyChange] | None = None,
    ) -> RoutingDecision:
        """Verify a message's recipients against the rules; find what is missing; say how the
        case changes."""
        rule = self.rule(event_type)
        now = dt.datetime.now(dt.UTC)
        at = at or now
        # A change to the case takes effect at its event time, but never later than now: a
        # placement dated in the future must not leave the old parties in force until then.
        effective = min(at, now)
        update: Placement | None = None
        if rule.registers_placement:
            self.sender_role(rule, None, sender, at, sender_role)
            if case_ref is not None and split_case_id(case_ref)[0] != sender:
                raise PolicyError(
                    f"a placement is registered under its placing authority's own case id "
                    f"({sender}/<reference>), not {case_ref}"
                )
            if case is not None and case.parties.get(Role.PLACING_AUTHORITY) not in (None, sender):
                raise PolicyError(f"the case belongs to {case.parties.get(Role.PLACING_AUTHORITY)}")
            parties = self._parties_from_header(sender, recipients)
            audience = self.placement_audience(parties, case)
            if case is None:
                update = Placement.new(case_ref or "", parties, message_id)
            else:
                update = case.superseded(parties, effective, message_id)
        elif case is None:
            self.sender_role(rule, None, sender, at, sender_role)
            audience = Audience()
        else:
            audience = self.audience(rule, case, at)
            self.sender_role(rule, case, sender, at, sender_role, audience)
            if rule.ends_placement:
                update = case.ended(effective, message_id)
        if rule.changes_parties:
            if case is None:
                raise PolicyError(f"{event_type}: case {case_ref} is not in the placement registry")
            self._check_changes(rule, recipients, changes or [])

        for r in recipients:
            if not is_known_agency(r.agency):
                raise UnknownRecipientError(
                    f"recipient {r.agency} is not on the exchange (unknown recipient)"
                )
            if rule.changes_parties:
                continue
            if case is not None and not rule.registers_placement and r in audience:
                if r.role not in rule.allowed and r not in audience.episode:
                    raise PolicyError(f"{event_type} may not be sent to {r.agency} as {r.role}")
                continue
            self.check_extra(rule, r, audience)
            if case is not None and r.role in CASE_ROLES and not audience.holders(r.role):
                was = case.former(r.agency, r.role, at)
                if was is not None and was.until is not None:
                    raise PolicyError(
                        f"{r.agency} was the {r.role} of case {case.case_ref} until "
                        f"{was.until.isoformat()} ({was.ended_by}): it is not sent anything new "
                        f"about the case"
                    )
        deliver = _group(recipients, sender)
        sealed = {(r.agency, r.role) for r in recipients}
        gaps: list[Recipient] = []
        if not repair and not rule.changes_parties:
            expected = self.recipients(event_type, sender, audience) if audience.members else []
            gaps = [g for g in expected if (g.agency, g.role) not in sealed]
        if not deliver and not gaps:
            self._nowhere(rule, sender, audience)
        if case is not None and rule.changes_parties:
            update = case.with_parties(
                [Recipient(c.agency, c.role) for c in changes or [] if c.added],
                [Recipient(c.agency, c.role) for c in changes or [] if not c.added],
                effective,
                message_id,
            )
        if case is not None and rule.episode and message_id is not None:
            update = self._episode(
                rule, update or case, sender, sender_role, recipients, effective, message_id
            )
        if update is case:
            update = None
        unregistered = case is None and not rule.registers_placement
        return RoutingDecision(deliver, gaps, update, unregistered)

    def _check_changes(
        self, rule: Rule, recipients: list[Recipient], changes: list[PartyChange]
    ) -> None:
        """A party change is addressed to exactly the parties it changes, in registered roles."""
        if not changes:
            raise PolicyError(f"{rule.event_type} changes no party")
        for c in changes:
            if c.role not in REGISTERED_ROLES:
                raise PolicyError(
                    f"{c.role} is not a party the placing authority registers "
                    f"({', '.join(sorted(map(str, REGISTERED_ROLES)))})"
                )
            try:
                kind = profile_for(c.agency)
            except ConfigurationError as exc:
                raise PolicyError(f"event.changes: {exc}") from exc
            if c.role not in kind.roles:
                raise PolicyError(f"{c.agency} is a {kind.kind}, which cannot be the {c.role}")
        named = {(r.agency, r.role) for r in recipients}
        changed = {(c.agency, c.role) for c in changes}
        if named != changed:
            raise PolicyError(
                f"{rule.event_type} must be addressed to exactly the parties it changes "
                f"({', '.join(sorted(f'{a} as {r}' for a, r in changed))})"
            )

    @staticmethod
    def _episode(
        rule: Rule,
        case: Placement,
        sender: str,
        sender_role: Role,
        recipients: list[Recipient],
        at: dt.datetime,
        message_id: Any,
    ) -> Placement:
        told = [Recipient(sender, sender_role), *(Recipient(r.agency, r.role) for r in recipients)]
        if rule.episode == "closes":
            return case.with_episode(None, message_id) if case.episode else case
        if case.episode is None:
            if rule.episode != "opens":
                return case
            return case.with_episode(
                Episode(message_id, at, tuple(dict.fromkeys(told))), message_id
            )
        heard = tuple(dict.fromkeys([*case.episode.heard, *told]))
        if heard == case.episode.heard:
            return case
        return case.with_episode(
            Episode(case.episode.message_id, case.episode.began_at, heard), message_id
        )

    def _parties_from_header(self, sender: str, recipients: list[Recipient]) -> dict[Role, str]:
        """For a placement message: the parties, derived from the two councils."""
        named = {r.role: r.agency for r in recipients}
        host = named.get(Role.HOST_AUTHORITY, sender)
        return self.placement_parties(sender, host, named.get(Role.CARE_PROVIDER))


@cache
def rules() -> Rules:
    """The shipped routing rules (loaded once)."""
    return Rules.load()
