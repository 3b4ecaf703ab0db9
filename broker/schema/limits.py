"""What a value may be, in one place: every stage of the exchange can represent these.

A date or timestamp outside the range, a string longer than its limit or with a lone surrogate, a
list too long, JSON nested too deep: refused at the edge (HTTP ingest, the drop folder, scenarios)
with the field path, so a value one stage accepts can never be one another stage cannot decode.
The time range leaves a day's margin inside what Python and Avro represent after any time-zone
conversion (a timestamp near year 1 or 9999 can overflow when moved to UTC).
"""

from __future__ import annotations

import datetime as dt

#: Dates and timestamps (after conversion to UTC) must lie within these years.
EARLIEST_YEAR = 1900
LATEST_YEAR = 2100
EARLIEST = dt.datetime(EARLIEST_YEAR, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(LATEST_YEAR, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC)
EARLIEST_DATE = EARLIEST.date()
LATEST_DATE = LATEST.date()
TIME_RANGE = f"{EARLIEST_YEAR}-01-01 to {LATEST_YEAR}-12-31 (UTC)"

#: Characters in a string field unless its schema says ``"maxLength"``.
MAX_STRING = 20_000
#: Items in an array, entries in a map.
MAX_ITEMS = 1_000
#: Bytes in a bytes or fixed field.
MAX_BYTES = 1_000_000
#: Bytes of one sealed message on the wire: under Kafka's default ``max.message.bytes`` (1 MiB),
#: with room for the record's headers.
MAX_MESSAGE = 1_000_000
#: Nesting of a request's JSON (objects and arrays); the deepest schema needs far fewer.
MAX_DEPTH = 32
#: Errors reported for one request; the rest are counted, not listed.
MAX_ERRORS = 100
#: Characters of a field path quoted in an error (an unknown field's name is the sender's text).
MAX_PATH = 200


def depth_of(value: object) -> int:
    """How deeply a parsed JSON value nests objects and arrays (iteratively: no recursion)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children: list[object] = list(v.values())
        elif isinstance(v, list):
            children = v
        else:
            continue
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in children if isinstance(c, dict | list))
    return deepest
