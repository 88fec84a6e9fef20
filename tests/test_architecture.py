"""The house's rules, read from the code's own imports (module level and inside functions alike).

* no import cycles at any depth inside ``tfrecords_schema``, ``beam_jobs`` and ``trainer``;
* nothing in those three imports ``affectstream`` (the command-line layer on top);
* every import points down: a module imports only rooms on a lower floor of :data:`FLOORS`, or modules of its own
  room. ``docs/architecture.md`` draws the same floors.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ("tfrecords_schema", "beam_jobs", "trainer")

# Room (a package or sub-package; the longest prefix wins) -> floor. A module may import a room on a lower floor,
# or a module of its own room. Rooms on one floor never import each other.
FLOORS = {
    "tfrecords_schema": 0,
    "beam_jobs.media": 1,
    "beam_jobs.faces": 1,
    "trainer.common": 1,
    "beam_jobs.sources": 2,
    "trainer.input": 2,
    "trainer.model": 2,
    "beam_jobs.pipeline": 3,
    "trainer.evaluation": 3,
    "beam_jobs": 4,  # the entry points: convert, convert_options, inspect_dataset
    "trainer.training": 4,
    "trainer.prediction": 4,
    "trainer": 5,  # the package face (registers the layers) and the ``python -m trainer.train`` entry point
}
# Rooms that one side may take from the other: the Beam-free parts of beam_jobs serve prediction and training.
CROSSINGS = {"trainer": ("beam_jobs.media", "beam_jobs.faces", "beam_jobs.sources")}


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for package in LIBRARY:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every project module ``module`` imports, at module level or inside functions."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            if name.split(".")[0] == "affectstream":
                found.add(name)
            target = _resolve(name)
            # A submodule importing its own package's __init__ is Python's import order, not an edge.
            if target and target != module and not (MODULES[target].name == "__init__.py"
                                                    and module.startswith(target + ".")):
                found.add(target)
    return found


EDGES = {module: _imports(module) for module in MODULES}


def room(module: str) -> str:
    return max((r for r in FLOORS if module == r or module.startswith(r + ".")), key=len)


def test_every_library_module_has_a_room():
    assert all(module.split(".")[0] in LIBRARY and room(module) for module in MODULES)


def test_no_library_module_imports_the_command_line_layer():
    upward = sorted(f"{m} -> {t}" for m, targets in EDGES.items() for t in targets if t.startswith("affectstream"))
    assert upward == []


def test_no_import_cycles():
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components.
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(t for t in EDGES[v] if t in MODULES):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert cycles == []


def test_imports_point_down():
    upward = []
    for module, targets in EDGES.items():
        mine = room(module)
        for target in (t for t in targets if t in MODULES):
            theirs = room(target)
            crossing = mine.split(".")[0] != theirs.split(".")[0] and theirs != "tfrecords_schema"
            if crossing and not theirs.startswith(CROSSINGS.get(mine.split(".")[0], ())):
                upward.append(f"{module} -> {target} (crosses into {theirs})")
            elif theirs != mine and FLOORS[theirs] >= FLOORS[mine]:
                upward.append(f"{module} ({mine}, floor {FLOORS[mine]}) -> {target} ({theirs}, floor {FLOORS[theirs]})")
    assert sorted(upward) == []


@pytest.mark.parametrize("package", LIBRARY)
def test_library_modules_stay_under_500_lines(package):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_the_checks_catch_a_cycle_and_an_upward_import():
    """The rules above are not vacuous: an edge added from the model up to training is both."""
    EDGES["trainer.model.build"].add("trainer.training.step")
    try:
        with pytest.raises(AssertionError):
            test_imports_point_down()
        with pytest.raises(AssertionError):
            test_no_import_cycles()
    finally:
        EDGES["trainer.model.build"].discard("trainer.training.step")
