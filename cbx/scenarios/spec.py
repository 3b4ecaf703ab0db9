"""Scenario files: a case as YAML (agencies, steps, expectations), checked and loaded.

The format is documented in ``docs/scenarios.md``. A later step can refer to what an earlier one
produced (``${steps.placement.case_ref}``, ``${uuid}``), resolved by :class:`Context`.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from broker.errors import ConfigurationError
from broker.kafka.topics import check_agency_id
from broker.paths import schemas_dir
from broker.policy.deadlines import Windows, ack_windows, parse_duration
from broker.schema.catalogue import Catalogue

_REF = re.compile(r"\$\{([^}]+)\}")
_STEP_ID = re.compile(r"^[a-z][a-z0-9_-]*$")


def scenarios_dir() -> Path:
    return schemas_dir() / "scenarios"


def demo() -> Path:
    """The case ``cbx demo`` plays."""
    return scenarios_dir() / "out-of-area-missing.yaml"


def shipped() -> list[Path]:
    """The example scenarios shipped with cbx."""
    return sorted(scenarios_dir().glob("*.yaml"))


@dataclass(frozen=True)
class StepSpec:
    id: str
    title: str
    sender: str  # alias
    event_type: str | None  # None for a pause
    request: Any
    outcome: str = "accepted"
    recipients: tuple[str, ...] = ()
    not_recipients: tuple[str, ...] = ()
    acknowledge: tuple[str, ...] | None = None  # None: every recipient acknowledges
    pause_s: float = 0.0
    #: Exactly these recipients must be escalated by the tracker (None: not checked).
    escalated: tuple[str, ...] | None = None
    #: A phrase the refusal must contain (the step must be refused).
    refused_because: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    agencies: dict[str, str]
    vars: dict[str, Any]
    steps: tuple[StepSpec, ...]
    windows: Windows | None
    wait_s: float
    source: str


class ScenarioError(ConfigurationError):
    """A scenario file that cannot be played, with where and why."""


def _seconds(text: Any, where: str) -> float:
    try:
        return parse_duration(str(text)).total_seconds()
    except ConfigurationError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def load(path: Path) -> Scenario:
    """Read and check a scenario file (every problem names the step and the key)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path.name}: unreadable: {exc}") from None
    where = path.name
    if not isinstance(doc, dict):
        raise ScenarioError(f"{where}: expected a mapping with name, agencies and steps")
    for key in ("name", "agencies", "steps"):
        if key not in doc:
            raise ScenarioError(f"{where}: missing {key!r}")
    agencies = doc["agencies"]
    if not isinstance(agencies, dict) or not agencies:
        raise ScenarioError(f"{where}: agencies must map aliases to agency ids")
    for alias, agency in agencies.items():
        try:
            check_agency_id(str(agency))
        except ConfigurationError as exc:
            raise ScenarioError(f"{where}: agencies.{alias}: {exc}") from None
    known_types = set(Catalogue.load().event_types())
    windows: Windows | None = None
    if "deadlines" in doc:
        windows = dict(ack_windows())
        for urgency, v in (doc["deadlines"] or {}).items():
            w = f"{where}: deadlines.{urgency}"
            windows[urgency] = None if v is None else dt.timedelta(seconds=_seconds(v, w))
    steps: list[StepSpec] = []
    ids: set[str] = set()
    for n, raw in enumerate(doc["steps"] or [], start=1):
        w = f"{where}: steps[{n}]"
        if not isinstance(raw, dict):
            raise ScenarioError(f"{w}: expected a mapping")
        step_id = str(raw.get("id", f"step{n}"))
        if not _STEP_ID.match(step_id) or step_id in ids:
            raise ScenarioError(f"{w}: id {step_id!r} must be unique, lower-case, like 'missing'")
        ids.add(step_id)
        if "pause" in raw:
            pause = _seconds(raw["pause"], f"{w}.pause")
            title = str(raw.get("title", "pause"))
            steps.append(StepSpec(step_id, title, "", None, None, pause_s=pause))
            continue
        for key in ("sender", "type", "request"):
            if key not in raw:
                raise ScenarioError(f"{w}: missing {key!r}")
        if raw["sender"] not in agencies:
            raise ScenarioError(f"{w}.sender: {raw['sender']!r} is not one of the agencies")
        if raw["type"] not in known_types:
            raise ScenarioError(f"{w}.type: unknown message type {raw['type']!r}")
        expect = raw.get("expect") or {}
        refused_because = expect.get("refused_because")
        if refused_because is not None and not str(refused_because).strip():
            raise ScenarioError(f"{w}.expect.refused_because: give a phrase the refusal contains")
        outcome = expect.get("outcome", "rejected" if refused_because else "accepted")
        if refused_because and outcome != "rejected":
            raise ScenarioError(f"{w}.expect.refused_because: the outcome must be rejected")
        if outcome not in ("accepted", "rejected"):
            raise ScenarioError(f"{w}.expect.outcome: accepted or rejected, not {outcome!r}")
        lists = {}
        for key, source in (
            ("recipients", expect),
            ("not_recipients", expect),
            ("escalated", expect),
            ("acknowledge", raw),
        ):
            value = source.get(key)
            if value is None or isinstance(value, bool):
                continue
            if not isinstance(value, list):
                raise ScenarioError(f"{w}.{key}: expected a list of agency aliases")
            unknown = [a for a in value if a not in agencies]
            if unknown:
                raise ScenarioError(f"{w}.{key}: {', '.join(map(str, unknown))} not agencies")
            lists[key] = tuple(value)
        ack = raw.get("acknowledge", True)
        steps.append(
            StepSpec(
                id=step_id,
                title=str(raw.get("title", raw["type"])),
                sender=raw["sender"],
                event_type=raw["type"],
                request=raw["request"],
                outcome=outcome,
                recipients=lists.get("recipients", ()),
                not_recipients=lists.get("not_recipients", ()),
                acknowledge=None if ack is True else lists.get("acknowledge", ()),
                escalated=lists.get("escalated"),
                refused_because=str(refused_because) if refused_because else None,
            )
        )
    return Scenario(
        name=str(doc["name"]),
        description=str(doc.get("description", "")),
        agencies={str(k): str(v) for k, v in agencies.items()},
        vars=doc.get("vars") or {},
        steps=tuple(steps),
        windows=windows,
        wait_s=_seconds(doc.get("wait", "60s"), f"{where}: wait"),
        source=where,
    )


class Context:
    """What ``${...}`` can refer to: agencies, vars, earlier steps, fresh values."""

    def __init__(self, scenario: Scenario) -> None:
        self.values: dict[str, Any] = {"agencies": dict(scenario.agencies), "steps": {}}
        self.values["vars"] = {}
        for k, v in scenario.vars.items():
            self.values["vars"][k] = self.resolve(v, f"vars.{k}")

    def lookup(self, ref: str, where: str) -> Any:
        ref = ref.strip()
        if ref == "uuid":
            return str(uuid.uuid4())
        if ref == "random":
            return secrets.token_hex(3).upper()
        if ref == "now":
            return dt.datetime.now(dt.UTC).isoformat()
        if ref == "today":
            return dt.date.today().isoformat()
        node: Any = self.values
        for part in ref.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ScenarioError(f"{where}: ${{{ref}}} refers to nothing (at {part!r})")
        return node

    def resolve(self, value: Any, where: str) -> Any:
        if isinstance(value, str):
            whole = _REF.fullmatch(value)
            if whole:
                return self.lookup(whole.group(1), where)
            return _REF.sub(lambda m: str(self.lookup(m.group(1), where)), value)
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dt.datetime | dt.date):
            return value.isoformat()
        return value
