"""Repository layout: modules small enough to read in one sitting, and imports that only point down.

The import rule, read from the source with `ast` (module-level and function-level imports; those under
`if TYPE_CHECKING:` are type hints only and left out): no circle between modules, and no import from a package
to one on a higher floor or to a different package on its own floor (packages on one floor are independent).
The floors are `FLOORS` below, bottom first (docs/development.md, "Layout").
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
MAX_MODULE_LINES = 350  # a module above this is doing two jobs
MAX_DENSE_LINES = 650  # dense/ is the mm* glue only; the QAT loop, pipeline and generator core are shared

# Bottom first. A unit is a package under src/mimiq/ or a top-level module; "__init__" is src/mimiq/__init__.py.
FLOORS = (
    ("__init__", "utils", "config", "tracking", "budget", "validate"),  # helpers that know nothing of the method
    ("data", "evaluate"),  # datasets and loaders; top-1 of a classifier on a loader
    ("models",),  # timm builders, the attention modules we own (+ capture), the teacher (trained on data)
    ("quant",),  # fake-quant math, quantizers, quantize_model
    ("synth", "distill"),  # the two stages: synthetic-set generation, QAT (each owns its step function)
    ("dense",),  # the mm glue of the dense tasks (their generator context, attention swap, evaluation)
    ("task",),  # the task adapters: build the teacher, hand the stages what they need
    ("pipeline", "perf", "export", "teachers"),  # the run; timing of the real steps; exporting a finished run;
    # shipping the mini teachers (trains through the task adapter)
    ("report",),  # tables, figures, the bench's cells
)


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def module_names(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under src/mimiq (a package is its __init__.py)."""
    out = {}
    for p in sorted((src / "mimiq").rglob("*.py")):
        parts = p.relative_to(src).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(src: Path) -> set[tuple[str, str]]:
    """(importer, imported) module pairs within mimiq: `import a.b`, `from a import b` (b a module or a name in
    package a) and relative imports, at any depth (functions included) except under `if TYPE_CHECKING:`."""
    mods = module_names(src)
    edges = set()
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        stack: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
        while stack:
            for child in ast.iter_child_nodes(stack.pop()):
                if _is_type_checking(child):
                    stack.extend(child.orelse)
                    continue
                stack.append(child)
                if isinstance(child, ast.Import):
                    edges |= {(name, a.name) for a in child.names if a.name.split(".")[0] == "mimiq"}
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        up = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join([*up, base] if base else up)
                    if base.split(".")[0] == "mimiq":
                        edges |= {
                            (name, f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base) for a in child.names
                        }
    return {(a, b) for a, b in edges if a != b}


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(found)


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def floor_of(module: str, floors=FLOORS) -> int:
    for i, units in enumerate(floors):
        if unit(module) in units:
            return i
    raise KeyError(f"{module}: unit {unit(module)!r} is on no floor: add it to FLOORS in tests/test_layout.py")


def wrong_way(edges: set[tuple[str, str]], floors=FLOORS) -> list[str]:
    """Imports from a unit to one on a higher floor ("up") or to another unit of its own floor ("sideways")."""
    bad = []
    for a, b in sorted(edges):
        fa, fb = floor_of(a, floors), floor_of(b, floors)
        if unit(a) != unit(b) and fb >= fa:
            bad.append(f"{a} -> {b} ({'up' if fb > fa else 'sideways'}: floor {fa} -> {fb})")
    return bad


def test_no_module_over_the_limit():
    big = {str(p.relative_to(SRC)): lines(p) for p in (SRC / "mimiq").rglob("*.py") if lines(p) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_dense_is_only_the_mm_glue():
    total = sum(lines(p) for p in (SRC / "mimiq" / "dense").glob("*.py"))
    assert 0 < total <= MAX_DENSE_LINES, f"src/mimiq/dense/ has {total} lines (limit {MAX_DENSE_LINES})"


def test_imports_form_no_circle():
    edges = imports(SRC)
    assert len(edges) > 100  # the parser sees the package's imports
    assert not cycles(edges), f"import circles: {cycles(edges)}"


def test_imports_point_down_the_floors():
    edges = imports(SRC)
    assert {unit(m) for m in module_names(SRC)} <= {u for units in FLOORS for u in units}, "a unit is on no floor"
    assert not wrong_way(edges), "imports against the floors:\n" + "\n".join(wrong_way(edges))


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"mimiq/__init__.py": "", **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_checker_finds_a_planted_circle_and_wrong_way_imports(tmp_path):
    src = _tree(
        tmp_path,
        {
            "mimiq/utils/__init__.py": "",
            "mimiq/utils/a.py": "def f():\n    from mimiq.models.b import g\n    return g\n",  # function level, up
            "mimiq/models/__init__.py": "",
            "mimiq/models/b.py": "from mimiq.utils import a\n\ng = 1\n",
            "mimiq/data/__init__.py": "",
            "mimiq/data/c.py": "from ..evaluate import d\n",  # relative, sideways (data and evaluate: floor 1)
            "mimiq/evaluate/__init__.py": "",
            "mimiq/evaluate/d.py": (
                "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from mimiq.task import T\n"
            ),  # a type hint only: ignored
            "mimiq/task/__init__.py": "T = 1\n",
        },
    )
    edges = imports(src)
    assert edges == {
        ("mimiq.utils.a", "mimiq.models.b"),
        ("mimiq.models.b", "mimiq.utils.a"),
        ("mimiq.data.c", "mimiq.evaluate.d"),
    }
    assert cycles(edges) == [["mimiq.models.b", "mimiq.utils.a"]]
    assert wrong_way(edges) == [
        "mimiq.data.c -> mimiq.evaluate.d (sideways: floor 1 -> 1)",
        "mimiq.utils.a -> mimiq.models.b (up: floor 0 -> 2)",
    ]
    with pytest.raises(KeyError, match="unit 'nowhere' is on no floor"):
        floor_of("mimiq.nowhere.x")


def _script_problems(root: Path) -> list[str]:
    """`sys.path` edits and imports of another script in root/scripts/*.py and root/tests/**/*.py."""
    scripts = {p.stem for p in (root / "scripts").glob("*.py")}
    out = []
    for path in [*(root / "scripts").glob("*.py"), *(root / "tests").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
                out.append(f"{path.relative_to(root)}:{node.lineno} edits sys.path")
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            out += [f"{path.relative_to(root)}:{node.lineno} imports script {n}" for n in names if n in scripts]
    return out


def test_scripts_and_tests_import_only_the_library():
    assert _script_problems(ROOT) == []


def test_the_script_checker_finds_a_sys_path_insert_and_a_script_import(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "scripts" / "bench.py").write_text("X = 1\n")
    (tmp_path / "scripts" / "other.py").write_text("import sys\nsys.path.insert(0, 'scripts')\nfrom bench import X\n")
    found = _script_problems(tmp_path)
    assert sorted(found) == ["scripts/other.py:2 edits sys.path", "scripts/other.py:3 imports script bench"]
