"""The sharing policy (``schemas/policy/sharing.yaml``): which roles may read each class.

Data that people review, not code: the audience of each class, plus additions for particular message
types. Connectors use it to choose whom to wrap each data key for; recipients and the router use
the same file to check.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from broker.errors import ConfigurationError
from broker.model import Role, SensitivityClass
from broker.paths import schemas_dir


@dataclass(frozen=True)
class SharingPolicy:
    """Audiences per sensitivity class, with per-message-type additions."""

    audiences: dict[SensitivityClass, frozenset[Role]]
    additions: dict[str, dict[SensitivityClass, frozenset[Role]]]

    def audience(self, event_type: str, sensitivity: SensitivityClass) -> frozenset[Role]:
        """Roles entitled to read fields of ``sensitivity`` in a message of ``event_type``."""
        extra = self.additions.get(event_type, {}).get(sensitivity, frozenset())
        return self.audiences.get(sensitivity, frozenset()) | extra

    @classmethod
    def load(cls, path: Path | None = None) -> SharingPolicy:
        path = path or schemas_dir() / "policy" / "sharing.yaml"
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"sharing policy {path} is unreadable: {exc}") from exc

        def roles(where: str, items: object) -> frozenset[Role]:
            if not isinstance(items, list):
                raise ConfigurationError(f"{path}: {where} must be a list of roles")
            try:
                return frozenset(Role(r) for r in items)
            except ValueError as exc:
                raise ConfigurationError(f"{path}: {where}: {exc}") from exc

        def cls_of(where: str, name: str) -> SensitivityClass:
            try:
                return SensitivityClass(name)
            except ValueError:
                raise ConfigurationError(
                    f"{path}: {where}: {name!r} is not a sensitivity class"
                ) from None

        audiences = {
            cls_of("audiences", k): roles(f"audiences.{k}", v)
            for k, v in (doc.get("audiences") or {}).items()
        }
        missing = set(SensitivityClass) - set(audiences)
        if missing:
            raise ConfigurationError(f"{path}: no audience for {', '.join(sorted(missing))}")
        additions = {
            event: {
                cls_of(f"additions.{event}", k): roles(f"additions.{event}.{k}", v)
                for k, v in (per or {}).items()
            }
            for event, per in (doc.get("additions") or {}).items()
        }
        return cls(audiences, additions)


def readers(catalogue: Any, policy: SharingPolicy) -> dict[str, dict[str, tuple[str, list[Role]]]]:
    """For each message type, each sensitive field: its class and the roles that can read it
    (every other field travels in clear to every recipient)."""
    out: dict[str, dict[str, tuple[str, list[Role]]]] = {}
    for name in catalogue.event_types():
        fields = catalogue.latest(name).sensitive_fields
        out[name] = {
            f: (str(cls), [r for r in Role if r in policy.audience(name, cls)])
            for f, cls in sorted(fields.items())
        }
    return out


def readers_markdown(catalogue: Any, policy: SharingPolicy) -> str:
    """The table of who reads which sealed field, as ``docs/architecture.md`` carries it."""
    lines = [
        "| Message type | Field | Class | Roles that can read it |",
        "|---|---|---|---|",
    ]
    for name, fields in readers(catalogue, policy).items():
        for f, (cls, roles) in fields.items():
            lines.append(f"| {name} | `{f}` | {cls} | {', '.join(map(str, roles))} |")
    return "\n".join(lines) + "\n"


@cache
def sharing_policy() -> SharingPolicy:
    """The shipped sharing policy (loaded once)."""
    return SharingPolicy.load()
