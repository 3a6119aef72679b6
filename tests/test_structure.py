"""How genlab's modules hang together: floors that only look down, no import circle, argparse only in the
commands. Read from the source with ``ast``, so it holds for imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import its own floor and the floors below it, never one above.
FLOORS = [
    ("core", ("genlab.errors", "genlab.config", "genlab.rng")),
    ("data", ("genlab.data",)),
    ("models", ("genlab.models",)),
    ("training", ("genlab.train", "genlab.graphs", "genlab.distributed", "genlab.checkpoint", "genlab.rundir")),
    ("metrics", ("genlab.metrics", "genlab.evaluate", "genlab.scoring")),
    ("viz", ("genlab.viz",)),
    ("report", ("genlab.report", "genlab.reproduce")),
    ("commands", ("genlab.commands", "genlab.cli", "genlab.serve")),
]


def floor_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is on no floor; add it to FLOORS")


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "genlab").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: set[str], top_level_only: bool = False) -> set[str]:
    """The genlab modules ``path`` imports (``from genlab.x import y`` counts as genlab.x.y when that is a
    module, else genlab.x); the package facade ``genlab`` itself (its ``__version__``) is left out."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n.startswith("genlab.")}
    return out


def test_floors_only_look_down():
    found = modules()
    wrong = []
    for name, path in found.items():
        if name == "genlab":
            continue  # the package facade: its version string and lazy entry points
        for target in imports(path, set(found)):
            if floor_of(target) > floor_of(name):
                wrong.append(f"{name} ({FLOORS[floor_of(name)][0]}) imports {target} "
                             f"({FLOORS[floor_of(target)][0]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle():
    found = modules()
    graph = {name: {t for t in imports(path, set(found), top_level_only=True) if t in found} - {name}
             for name, path in found.items()}
    # A package imports its own modules (data/__init__ re-exports data.datasets): not a circle.
    graph = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [node])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, " -> ".join(cycle)


def test_argparse_only_in_the_commands():
    users = sorted(name for name, path in modules().items() if "argparse" in path.read_text())
    assert users and all(floor_of(name) == len(FLOORS) - 1 for name in users), users


def test_the_checks_catch_a_wrong_import(tmp_path):
    """The floor rule is not vacuous: a model importing viz is on a higher floor than the model."""
    assert floor_of("genlab.viz.figures") > floor_of("genlab.models.vae")
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from genlab.viz.figures import save_grid\n")
    assert imports(bad, set(modules())) == {"genlab.viz.figures"}


def test_every_name_the_benchmarks_take_from_genlab_is_there():
    # A restructure moved a table out of the module benchmarks/conditional.py took it from: the script no longer
    # started (ImportError), and nothing else imports the benchmarks.
    import importlib.util

    missing = []
    for path in sorted((SRC.parent / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "genlab":
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)
                            and not (hasattr(module, "__path__")
                                     and importlib.util.find_spec(f"{node.module}.{a.name}") is not None)]
            elif isinstance(node, ast.Import):
                missing += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("genlab")
                            and importlib.util.find_spec(a.name) is None]
    assert not missing, missing
