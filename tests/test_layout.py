"""The house rules that keep the package readable, checked on its source (no imports run).

* no import cycle between the package's modules (imports inside functions count too);
* the rooms stack in `LAYERS`, bottom first: a module imports only its own layer and those
  below; every module of the package sits in one layer;
* within the lowest rooms: `nets/` never imports `data/`, `losses/` never imports `nets/`,
  `evaluation/` needs no model (no `nets/`, `losses/`), `data/` imports none of them;
* no module over 450 lines;
* no docstring or comment points at a notes file the repository does not contain.
"""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "occreid_jax"
MAX_LINES = 450


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """The package modules `path` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports the module `pkg.mod`; `from mod import name`, `mod`.
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [m for m in submodules if m in known] or [node.module]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: _imports(path, known) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "occreid_jax.families" in graph and graph["occreid_jax.families"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


# Bottom first. A module imports only modules of its own layer and the layers below.
LAYERS = (
    # shared by every layer
    ("errors", "distributed", "config_files", "motion"),
    # data -> nets -> losses -> evaluation (their own rules in `test_the_lowest_rooms_...`)
    ("data", "nets", "losses", "evaluation"),
    ("families",),  # one record per model: its net, forward, objective, matching rule
    ("probes",),  # MAT's flow probe and part records
    ("training",),  # a run's setup, the train step and the loop
    ("bundles",),  # export bundles, their portable formats, search on image files
    ("pictures",),  # ranked lists and MAT's parts, drawn
    ("experiment", "main", "cli", "search", "index"),  # the modes and the entry points
)


def layer_of(module: str) -> int:
    """The index in `LAYERS` of a package module (`occreid_jax.training.run` -> 4)."""
    room = module.split(".")[1] if "." in module else ""
    for index, rooms in enumerate(LAYERS):
        if room in rooms:
            return index
    raise KeyError(module)


def test_every_module_sits_in_a_layer():
    homeless = []
    for module in import_graph():
        try:
            layer_of(module)
        except KeyError:
            homeless.append(module)
    assert homeless == ["occreid_jax"], f"add these to LAYERS: {homeless}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a layer above the importer's, as "a imports b"."""
    return [
        f"{module} imports {name}"
        for module, imports in sorted(graph.items())
        if module != "occreid_jax"
        for name in sorted(imports)
        if layer_of(name) > layer_of(module)
    ]


def test_the_layer_check_finds_a_planted_upward_import():
    graph = {
        "occreid_jax.families": {"occreid_jax.nets.forward", "occreid_jax.training.train"},
        "occreid_jax.training.train": {"occreid_jax.nets.forward"},
        "occreid_jax.pictures.visrank": {"occreid_jax.bundles.export", "occreid_jax.main"},
    }
    assert upward_imports(graph) == [
        "occreid_jax.families imports occreid_jax.training.train",
        "occreid_jax.pictures.visrank imports occreid_jax.main",
    ]


def test_no_module_imports_a_layer_above_its_own():
    upward = upward_imports(import_graph())
    assert not upward, upward


def test_the_lowest_rooms_import_only_downwards():
    forbidden = {
        "occreid_jax.data": ("occreid_jax.nets", "occreid_jax.losses", "occreid_jax.evaluation"),
        "occreid_jax.nets": ("occreid_jax.data",),
        "occreid_jax.losses": ("occreid_jax.nets",),
        "occreid_jax.evaluation": ("occreid_jax.nets", "occreid_jax.losses"),
    }
    problems = []
    for module, imports in import_graph().items():
        for layer, banned in forbidden.items():
            if module == layer or module.startswith(layer + "."):
                problems += [
                    f"{module} imports {name}"
                    for name in imports
                    if any(name == b or name.startswith(b + ".") for b in banned)
                ]
    assert not problems, problems


def test_no_module_is_longer_than_the_limit():
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_file_points_at_notes_outside_the_repository():
    pattern = re.compile(r"\.\./shared|(^|[^a-z/])(papers|reference)/[a-z-]+\.md|protocols\.md")
    hits = []
    for folder in ("occreid_jax", "configs", "benchmarks", "tests", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md") and path.name != "test_layout.py":
                for number, line in enumerate(path.read_text().splitlines(), 1):
                    if pattern.search(line) and "docs/protocols.md" not in line:
                        hits.append(f"{path.relative_to(ROOT)}:{number}")
    for name in ("README.md", "BENCHMARKS.md"):
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            if pattern.search(line) and "docs/protocols.md" not in line:
                hits.append(f"{name}:{number}")
    assert not hits, hits
