"""Realistic agency JSON payloads (invented people and places) for benchmarks and demos."""

from __future__ import annotations

from typing import Any

EPISODE = "6f1d2c3b-4a5e-4f60-9a7b-8c9d0e1f2a3b"

PAYLOADS: dict[str, dict[str, Any]] = {
    "PlacementNotified": {
        "placement_id": "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d",
        "legal_status": "C2",
        "placement_type": "CHILDRENS_HOME",
        "emergency": False,
        "start_date": "2026-03-02",
        "host_authority": "la-e10000017",
        "provider": "cp-sc482913",
        "distant_placement": True,
        "approved_by_role": "Director of Children's Services",
        "host_consulted": True,
        "identity": {
            "given_names": "Jordan Alex",
            "family_name": "Whitcombe",
            "date_of_birth": "2011-07-19",
            "nhs_number": "9434765919",
        },
        "address": {
            "lines": ["Larch House", "14 Orchard Rise"],
            "town": "Ashford",
            "postcode": "TN23 7QX",
        },
        "risk_summary": {
            "previous_missing_episodes": 4,
            "cse_risk_level": "MEDIUM",
            "known_risks": ["goes missing after contact", "older associates"],
        },
    },
    "ChildMissingReported": {
        "episode_id": EPISODE,
        "status": "MISSING",
        "reported_at": "2026-04-11T22:40:00+01:00",
        "police_reference": "KENT-26-041122-0345",
        "cse_flag": True,
        "initial_risk_grade": "HIGH",
        "last_seen": {
            "seen_at": "2026-04-11T20:15:00+01:00",
            "place": "bus station, Elwick Road",
            "postcode": "TN23 1AE",
            "with_whom": "two older males",
        },
        "clothing": "grey hoodie, black joggers, white trainers",
        "circumstances": "left after a phone call, did not return for curfew",
    },
    "CSERiskAssessed": {
        "assessment_id": "0b6c3d5e-2f41-4a7b-9c1d-5e8f7a6b4c3d",
        "tool": "CSE screening tool v3",
        "level": "HIGH",
        "category": "CATEGORY_2_OPPORTUNISTIC",
        "assessed_date": "2026-04-14",
        "review_date": "2026-07-14",
        "indicators": ["gifts from older males", "going missing", "new phone"],
    },
    "MissingRiskGraded": {
        "episode_id": EPISODE,
        "grade": "HIGH",
        "legacy_grade": "HIGH",
        "graded_at": "2026-04-11T23:05:00+01:00",
        "reviewing_officer_role": "Duty inspector",
        "next_review_at": "2026-04-12T03:05:00+01:00",
        "rationale": "CSE marker, older associates, no phone contact",
    },
}
