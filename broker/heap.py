"""What a service reads at start lives as long as the process: kept out of the collector's walk.

CPython's cyclic garbage collector walks every container object of its oldest generation at
each full collection. A router holding a nation's placement registry (about 90,000 cases) was
seen spending 400 to 1,040 ms in one, its event loop stopped the while, and an urgent report
waited as long; while it read that registry at start, it spent 270 to 425 ms in each of several.

:func:`loading` holds the collector off while a service reads its views (nothing it reads makes
reference cycles worth collecting then), and :func:`keep`, at its end, collects what is garbage,
then moves every object still tracked into the permanent generation (``gc.freeze``), which no
collection walks again. Those objects are still freed when their last reference goes (reference
counting); only a cycle among them would stay, and the collection just before leaves none.
Objects made afterwards are collected as usual.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator

from broker.logging import get_logger

log = get_logger("heap")

#: Views being read at once in this process (services started side by side in one process).
_loading = 0
#: Whether the collector ran before the first of them began.
_was_enabled = True


def keep(what: str) -> int:
    """Collect, then put every object tracked so far out of the collector's walk; how many
    objects are kept so in all. ``what`` names what was just read, for the log."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    kept = gc.get_freeze_count()
    log.debug(
        "heap_kept", what=what, objects=kept, ms=round((time.perf_counter() - started) * 1000, 1)
    )
    return kept


@contextlib.contextmanager
def loading(what: str) -> Iterator[None]:
    """Read views with the collector held off, then :func:`keep` what was read. Nested or side by
    side, the collector runs again once the last reading ends (if it ran before the first)."""
    global _loading, _was_enabled
    if _loading == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _loading += 1
    try:
        yield
    finally:
        _loading -= 1
        if _loading == 0:
            keep(what)
            if _was_enabled:
                gc.enable()


__all__ = ["keep", "loading"]
