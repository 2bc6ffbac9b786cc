"""Checks that napari_cinuseg's imports run down its floors and never in a circle.

Each module belongs to the floor of its folder (or, at the top level, its own name). An import may
reach its own floor's folder or a lower floor, never a higher one; and the graph of module imports
(every import, module-level or inside a function) has no cycle. Run it as
``python scripts/check_layers.py [SRC]``; it prints each violation and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "napari_cinuseg"
#: lowest first; a name is a folder of the package or a top-level module
FLOORS = [
    ["runtime"],
    ["io"],
    ["datasets"],
    ["model", "model_file"],
    ["analysis"],
    ["losses"],
    ["methods"],
    ["training"],
    ["inference"],
    ["annotations"],
    ["session"],
    ["benchmark"],
    ["plugin", "cli", "__main__"],
    ["ui"],
]
RANK = {name: i for i, names in enumerate(FLOORS) for name in names}


def module_name(src: Path, path: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(src: Path, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every napari_cinuseg import in one file."""
    mod = ".".join(filter(None, [PACKAGE, module_name(src, path)]))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            # "from pkg import submodule" imports the submodule
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append(
                    (
                        node.lineno,
                        sub
                        if (src / Path(*sub.split(".")[1:])).with_suffix(".py").exists()
                        or (src / Path(*sub.split(".")[1:])).is_dir()
                        else target,
                    )
                )
    return found


def floor(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def check(src: Path) -> list[str]:
    src = src / PACKAGE if (src / PACKAGE).is_dir() else src
    problems, graph = [], {}
    for path in sorted(src.rglob("*.py")):
        mod = PACKAGE + ("." + module_name(src, path) if module_name(src, path) else "")
        edges = graph.setdefault(mod, set())
        here = floor(mod)
        for line, target in imports(src, path):
            edges.add(target)
            there = floor(target)
            if here is None or there is None or here == there:
                continue
            if here not in RANK or there not in RANK:
                problems.append(f"{path.relative_to(src)}:{line}: {there or here} has no floor in check_layers.FLOORS")
            elif RANK[there] > RANK[here]:
                problems.append(f"{path.relative_to(src)}:{line}: {here} imports {target}, a floor above it")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other (a package's
    ``__init__`` counts as the package: ``from . import register`` is not a cycle with it)."""
    nodes = {m: {t for t in ts if t in graph and t != m and not m.startswith(t + ".")} for m, ts in graph.items()}
    found, state = [], {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(nodes[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(nodes):
        if node not in state:
            visit(node, [])
    return found


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "src"
    problems = check(src)
    for p in problems:
        print(p)
    print(f"{len(problems)} layering problems" if problems else "imports run down the floors, no cycle")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
