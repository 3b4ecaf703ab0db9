"""Reference data: councils with children's services, police forces, integrated care boards.

Loaded from ``schemas/reference/*.csv`` (each names its source in a header). Agency ids are derived
from the official GSS codes, in lower case, behind a prefix for the kind of agency:

    la-<council GSS code>   councils (E06, E08, E09, E10)        la-e10000016  Kent
    pf-<police force area>  police forces (E23, W15)              pf-e23000032  Kent Police
    icb-<ICB GSS code>      integrated care boards (E54)          icb-e54000032 NHS Kent and Medway
    cp-<Ofsted URN>         care providers (children's homes)     cp-sc123456
    gp-<ODS code>           GP practices                          gp-g82001

The codes are stable across renamings, published by ONS, and already used in each agency's systems.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from broker.errors import ConfigurationError
from broker.paths import schemas_dir


@dataclass(frozen=True)
class PoliceForce:
    code: str
    name: str
    country: str
    agency_id: str


@dataclass(frozen=True)
class IntegratedCareBoard:
    code: str
    name: str
    agency_id: str


@dataclass(frozen=True)
class Council:
    code: str
    name: str
    kind: str
    police_force_code: str
    icb_code: str
    other_icb_codes: tuple[str, ...]
    agency_id: str


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        lines = [line for line in fh if not line.startswith("#")]
    return list(csv.DictReader(lines))


@dataclass(frozen=True)
class Reference:
    """All reference data, with lookups by agency id."""

    councils: dict[str, Council]
    forces: dict[str, PoliceForce]
    icbs: dict[str, IntegratedCareBoard]

    @classmethod
    def load(cls, folder: Path | None = None) -> Reference:
        folder = folder or schemas_dir() / "reference"
        forces = {
            r["agency_id"]: PoliceForce(r["code"], r["name"], r["country"], r["agency_id"])
            for r in _rows(folder / "police_forces.csv")
        }
        icbs = {
            r["agency_id"]: IntegratedCareBoard(r["code"], r["name"], r["agency_id"])
            for r in _rows(folder / "icbs.csv")
        }
        councils = {
            r["agency_id"]: Council(
                code=r["code"],
                name=r["name"],
                kind=r["kind"],
                police_force_code=r["police_force_code"],
                icb_code=r["icb_code"],
                other_icb_codes=tuple(c for c in r["other_icb_codes"].split(";") if c),
                agency_id=r["agency_id"],
            )
            for r in _rows(folder / "councils.csv")
        }
        return cls(councils, forces, icbs)

    def council(self, agency_id: str) -> Council:
        try:
            return self.councils[agency_id]
        except KeyError:
            raise ConfigurationError(
                f"{agency_id!r} is not a council with children's services "
                "(expected la-<GSS code>, see schemas/reference/councils.csv)"
            ) from None

    def force_for_council(self, agency_id: str) -> PoliceForce:
        """The police force whose area contains the council's area."""
        code = self.council(agency_id).police_force_code
        return self.forces[f"pf-{code.lower()}"]

    def icb_for_council(self, agency_id: str) -> IntegratedCareBoard:
        """The integrated care board covering most of the council's population."""
        code = self.council(agency_id).icb_code
        return self.icbs[f"icb-{code.lower()}"]

    def name_of(self, agency_id: str) -> str:
        if agency_id in self.councils:
            return self.councils[agency_id].name
        if agency_id in self.forces:
            return self.forces[agency_id].name
        if agency_id in self.icbs:
            return self.icbs[agency_id].name
        return agency_id


@cache
def reference() -> Reference:
    """The reference data shipped with cbx (loaded once)."""
    return Reference.load()
