"""The layering rules of ARCHITECTURE.md, checked on the source: every module has a layer in
ARCHITECTURE.md's layer table (read from there, so the document and this test cannot drift), no
import goes up a layer (lazy imports included, `if TYPE_CHECKING:` imports exempt), no module imports
another module's underscore names, no import cycles between torchslim modules, no module longer than
450 lines; one quiet(), no branch on an engine name."""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "torchslim"
ARCHITECTURE = ROOT.parent / "ARCHITECTURE.md"
MAX_LINES = 450


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


MODULES = _modules()


def _target(mod: str, node: ast.ImportFrom) -> str | None:
    if not node.level:
        return node.module
    base = mod.split(".")
    if MODULES[mod].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:` (never runs: not an import of the code)."""
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every import statement in the tree (in functions and classes too), except under TYPE_CHECKING."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _type_checking(node):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def module_imports(mod: str, source: str) -> tuple[set[str], list[str]]:
    """The torchslim modules `mod` (whose text is `source`) imports, and the private names it imports
    from other modules."""
    found: set[str] = set()
    private = []
    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            target = _target(mod, node)
            if not target or not target.startswith("torchslim"):
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in MODULES:
                    found.add(full)
                elif target in MODULES:
                    found.add(target)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{mod} imports {target}.{alias.name}")
        else:
            found.update(a.name for a in node.names if a.name in MODULES)
    return found, private


def _imports() -> tuple[dict[str, set[str]], list[str]]:
    """The torchslim modules each module imports (anywhere in it, lazy imports included), and the
    private names imported across modules."""
    graph: dict[str, set[str]] = {}
    private = []
    for mod, path in MODULES.items():
        graph[mod], names = module_imports(mod, path.read_text())
        private += names
    return graph, private


# -- the layer table ---------------------------------------------------------------------------------

def read_layers(markdown: str) -> dict[str, tuple[int, str]]:
    """ARCHITECTURE.md's layer table: each entry of a row's "where" column (`measure.py`, a folder such
    as `quant/`, or `generation/runner.py`) -> (layer number, layer name)."""
    table: dict[str, tuple[int, str]] = {}
    for line in markdown.splitlines():
        m = re.match(r"\|\s*(\d+)\.\s*([\w ]+?)\s*\|.*\|([^|]*)\|\s*$", line)
        if not m:
            continue
        for entry in re.findall(r"`([^`]+)`", m.group(3)):
            assert entry not in table, f"ARCHITECTURE.md places {entry} in two layers"
            table[entry] = (int(m.group(1)), m.group(2))
    return table


def layer_of(mod: str, table: dict[str, tuple[int, str]]) -> tuple[int, str] | None:
    """The layer of a module: its own file's entry, else the nearest folder's; None if none covers it."""
    parts = mod.split(".")[1:]
    path = MODULES[mod].relative_to(ROOT).as_posix() if mod in MODULES else "/".join(parts) + ".py"
    if path in table:
        return table[path]
    folders = path.split("/")[:-1]
    for i in range(len(folders), 0, -1):
        key = "/".join(folders[:i]) + "/"
        if key in table:
            return table[key]
    return None


LAYERS = read_layers(ARCHITECTURE.read_text())


def upward(graph: dict[str, set[str]], table: dict[str, tuple[int, str]]) -> list[str]:
    """Every import of a module in a higher layer than the importer's."""
    out = []
    for mod in sorted(graph):
        mine = layer_of(mod, table)
        for target in sorted(graph[mod]):
            theirs = layer_of(target, table)
            if mine and theirs and theirs[0] > mine[0]:
                out.append(f"{mod} ({mine[0]}. {mine[1]}) imports {target} ({theirs[0]}. {theirs[1]})")
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            # a package's own __init__ importing its submodules (registration) is not a cycle of logic
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_private_imports_across_modules():
    _, private = _imports()
    assert not private, "make these names public where they belong:\n" + "\n".join(private)


def test_no_import_cycles():
    graph, _ = _imports()
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_every_module_has_a_layer():
    missing = [m for m in sorted(MODULES) if layer_of(m, LAYERS) is None]
    assert not missing, "give these modules a layer in ARCHITECTURE.md's layer table:\n" + "\n".join(missing)
    stale = [e for e in LAYERS if not (ROOT / e).exists()]
    assert not stale, "ARCHITECTURE.md's layer table names what no longer exists: " + ", ".join(stale)


def test_no_import_goes_up_a_layer():
    graph, _ = _imports()
    bad = upward(graph, LAYERS)
    assert not bad, ("imports that go up a layer (move the function down, or pass it in):\n" + "\n".join(bad))


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_module_size(mod):
    lines = len(MODULES[mod].read_text().splitlines())
    assert lines <= MAX_LINES, f"{mod} has {lines} lines: split it by responsibility"


def test_checker_sees_a_cycle_and_a_private_import():
    """The checks above would catch a violation (they are not vacuous)."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    graph, _ = _imports()
    assert graph["torchslim.optimize"], "the import graph is empty: the parser found no imports"


def test_checker_sees_an_upward_import():
    """A lazy import from a primitive into a technique is caught; the same under TYPE_CHECKING is not;
    a module no table entry covers has no layer; the table read from ARCHITECTURE.md has every layer."""
    src = ("from typing import TYPE_CHECKING\n"
           "if TYPE_CHECKING:\n    from .recipes import Recipe\n"
           "def size(model):\n    from .techniques.torchscript import StaticRuntime\n    return StaticRuntime\n")
    found, _ = module_imports("torchslim.measure", src)
    assert found == {"torchslim.techniques.torchscript"}
    assert upward({"torchslim.measure": found}, LAYERS) == [
        "torchslim.measure (1. primitives) imports torchslim.techniques.torchscript (3. techniques)"]
    assert upward({"torchslim.techniques.torchscript": {"torchslim.measure"}}, LAYERS) == []
    assert layer_of("torchslim.not_in_the_table", LAYERS) is None
    assert layer_of("torchslim.techniques.fast_transformer.core", LAYERS) == (3, "techniques")
    assert layer_of("torchslim.search.output", LAYERS)[0] > layer_of("torchslim.search.loop", LAYERS)[0]
    assert sorted({n for n, _ in LAYERS.values()}) == [1, 2, 3, 4, 5]


def test_one_quiet_and_no_branch_on_an_engine_name():
    """Engines are looked up in EngineModule.registry (no `== "onnxruntime"` outside an engine's own
    file), and upstream chatter is silenced by one helper, progress.quiet."""
    from torchslim.engines import EngineModule

    names = set(EngineModule.registry)
    assert {"aoti", "onnxruntime", "openvino"} <= names
    branches, quiets = [], []
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("quiet"):
                quiets.append(f"{mod}.{node.name}")
            if isinstance(node, ast.Compare) and mod != "torchslim.engines." + path.stem:
                consts = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                for c in [node.left, *node.comparators]:
                    if isinstance(c, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                        consts += [e.value for e in getattr(c, "elts", None) or c.keys if isinstance(e, ast.Constant)]
                hit = names & {c for c in consts if isinstance(c, str)}
                if hit:
                    branches.append(f"{mod}:{node.lineno} compares with {sorted(hit)}")
    assert quiets == ["torchslim.progress.quiet"], quiets
    assert not branches, "look the engine up in EngineModule.registry instead:\n" + "\n".join(branches)
