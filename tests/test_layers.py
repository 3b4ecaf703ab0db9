"""The floor plan: every import points down, and nothing imports in a loop.

Walks the import statements of ``broker/``, ``connectors/`` and ``cbx/`` (function-local ones
included: hiding an import inside a function does not change which way it points) and fails on a
loop between files, a loop between packages, or an import of a higher layer, naming both files.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("broker", "connectors", "cbx")

# Lowest first. A module may import its own rank or lower; same-rank imports are checked for loops.
LAYERS: list[tuple[str, ...]] = [
    ("broker.env", "broker.errors", "broker.model"),
    (
        "broker.paths",
        "broker.logging",
        "broker.files",
        "broker.web",
        "broker.health",
        "broker.heap",
    ),
    ("broker.kafka", "broker.schema"),
    ("broker.policy", "broker.crypto"),
    ("broker.envelope", "broker.directory", "broker.delivery_log"),
    ("broker.admin",),
    ("broker.router", "broker.tracker"),
    ("broker.console",),
    ("connectors",),
    ("cbx",),
]
# Services of the same rank that must not import one another.
SERVICES = ("broker.router", "broker.tracker")


def rank(module: str) -> int:
    best = (-1, -1)
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[1]:
                best = (i, len(prefix))
    if best[0] < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return best[0]


def package_of(module: str) -> str:
    """The unit of the package graph: ``broker.kafka``, ``connectors.ingest``, ``cbx.cli``."""
    parts = module.split(".")
    return ".".join(parts[:2])


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """cbx modules ``path`` imports (``from a import b`` is ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            if node.module not in PACKAGES:
                names.append(node.module)
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def graph() -> tuple[dict[str, set[str]], dict[str, Path]]:
    mods = modules()
    known = set(mods)
    g = {
        m: {i for i in imports_of(p, known) if i != m and not m.startswith(i + ".")}
        for m, p in mods.items()
    }
    # a package's own __init__ being imported by its children is not an edge worth checking
    return g, mods


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_every_import_points_down() -> None:
    g, mods = graph()
    wrong = []
    for m, deps in sorted(g.items()):
        for d in sorted(deps):
            if rank(d) > rank(m):
                wrong.append(f"{mods[m].relative_to(ROOT)} imports {mods[d].relative_to(ROOT)}")
            for svc in SERVICES:
                other = [s for s in SERVICES if s != svc]
                if m.startswith(svc + ".") and any(d.startswith(o + ".") for o in other):
                    wrong.append(
                        f"service {mods[m].relative_to(ROOT)} imports {mods[d].relative_to(ROOT)}"
                    )
    assert not wrong, "upward imports:\n" + "\n".join(wrong)


def test_no_loop_between_files() -> None:
    g, mods = graph()
    cycle = find_cycle(g)
    assert cycle is None, "import loop: " + " -> ".join(
        str(mods[m].relative_to(ROOT)) for m in cycle or []
    )


def test_no_loop_between_packages() -> None:
    g, _ = graph()
    pg: dict[str, set[str]] = {}
    for m, deps in g.items():
        pm = package_of(m)
        pg.setdefault(pm, set()).update(package_of(d) for d in deps if package_of(d) != pm)
    cycle = find_cycle(pg)
    assert cycle is None, "package loop: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("module", "deps", "expected"),
    [
        ("broker.a", {"broker.b"}, None),
        ("broker.a", {"broker.b"}, ["broker.a", "broker.b", "broker.a"]),
    ],
)
def test_the_loop_finder_finds_loops(
    module: str, deps: set[str], expected: list[str] | None
) -> None:
    g = {module: deps, "broker.b": {"broker.a"} if expected else set()}
    assert find_cycle(g) == expected


def test_the_rank_check_sees_an_upward_import() -> None:
    assert rank("broker.kafka.settings") < rank("broker.router.core") < rank("cbx.cli")
    with pytest.raises(AssertionError, match="in no layer"):
        rank("elsewhere.module")
