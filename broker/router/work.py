"""What the router has read and not yet routed, urgent first.

Records of partitions read first (urgent lanes, and small agencies' only partitions) are routed
before any bulk record, all of them in one transaction; bulk records go in chunks, one transaction
each, so an IMMEDIATE report read while a council's export is being routed waits for one chunk at
most. Each partition's records stay in their order: a partition is either read first or bulk, so
its records are all in one queue.

The bulk kept here is bounded: past ``most`` records, the router pauses its bulk partitions (the
urgent lanes go on being read) until half of it is routed.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any

Part = tuple[str, int]


def part_of(r: Any) -> Part:
    return (r.topic(), r.partition())


class Work:
    def __init__(self, read_first: Callable[[str, int], bool], chunk: int, most: int) -> None:
        self.read_first = read_first
        self.chunk = chunk
        self.most = most
        self.first: list[Any] = []
        self.bulk: collections.deque[Any] = collections.deque()

    def __len__(self) -> int:
        return len(self.first) + len(self.bulk)

    def add(self, records: Iterable[Any]) -> None:
        for r in records:
            (self.first if self.read_first(r.topic(), r.partition()) else self.bulk).append(r)

    def take(self) -> list[Any]:
        """The next transaction's records: everything read first, else a chunk of bulk."""
        if self.first:
            out, self.first = self.first, []
            return out
        n = min(self.chunk, len(self.bulk))
        return [self.bulk.popleft() for _ in range(n)]

    def put_back(self, records: list[Any]) -> None:
        """Bulk ``records`` taken and not routed: first again, in their order."""
        self.bulk.extendleft(reversed(records))

    def drop(self, parts: set[Part]) -> int:
        """Forget the records of ``parts`` (given up, or to be read again): how many."""
        before = len(self)
        self.first = [r for r in self.first if part_of(r) not in parts]
        self.bulk = collections.deque(r for r in self.bulk if part_of(r) not in parts)
        return before - len(self)

    def full(self) -> bool:
        return len(self.bulk) >= self.most

    def low(self) -> bool:
        return len(self.bulk) <= self.most // 2
