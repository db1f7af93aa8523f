"""Imports run one way: flows -> tasks -> model/storage, matching may use evaluation but not the reverse,
the data stage never reaches into matching, and nothing imports in a circle. Walks the source with `ast`,
counting imports inside functions too (a lazy import is still an arrow)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "tasks", "model", "storage")
FIRST_PARTY = (*PACKAGES, "settings")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    files = [ROOT / "settings.py"] + [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    return {_module_name(p): p for p in files}


def _resolve(name: str, modules: set[str]) -> str | None:
    """The first-party module `name` refers to: itself, or the longest known prefix (a name imported from
    a module, e.g. `tasks.images.load_image` -> `tasks.images`)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(imported first-party module, line) for every import statement in the file, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[tuple[str, int], None] = {}  # ordered and deduplicated: `from a import b, c` is one arrow
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` may import the module a.b or the name b of a; resolve each
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in FIRST_PARTY:
                continue
            target = _resolve(name, modules)
            if target and target != module:
                found[(target, node.lineno)] = None
    return list(found)


def _graph() -> dict[str, list[tuple[str, int]]]:
    sources = _sources()
    return {m: _imports(m, p, set(sources)) for m, p in sources.items()}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(graph, importer_in: tuple[str, ...], imported: str, allowed: tuple[str, ...] = ()) -> list[str]:
    return [
        f"{m} imports {target} ({_module_name_to_path(m)}:{line})"
        for m, edges in graph.items()
        if any(_within(m, p) for p in importer_in) and m not in allowed
        for target, line in edges
        if _within(target, imported)
    ]


def _module_name_to_path(module: str) -> str:
    return str(_sources()[module].relative_to(ROOT))


def _tangles(graph) -> list[list[str]]:
    """Every set of modules that import each other in a circle (strongly connected components of more
    than one module, by Tarjan's algorithm), each sorted."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    tangles = []

    def visit(node):
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for target, _ in graph.get(node, []):
            if target not in order:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], order[target])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                tangles.append(sorted(component))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return tangles


def test_the_walk_sees_imports_inside_functions():
    graph = _graph()
    assert len(graph) > 50, sorted(graph)
    # a known import made inside a function body: the walk must see it or every check below is blind
    lazy = {target for target, _ in graph["flows.cli"]}
    assert "tasks.matching.gallery" in lazy, sorted(lazy)


def test_no_import_cycle():
    graph = _graph()
    tangles = _tangles(graph)
    assert not tangles, "modules importing each other in a circle: " + "; ".join(
        ", ".join(f"{m} -> {[t for t, _ in graph[m] if t in tangle]}" for m in tangle) for tangle in tangles
    )


def test_evaluation_does_not_import_matching():
    found = _violations(_graph(), ("tasks.evaluation",), "tasks.matching")
    assert not found, "evaluation reaches into matching: " + "; ".join(found)


def test_data_does_not_import_matching():
    found = _violations(_graph(), ("tasks.data",), "tasks.matching")
    assert not found, "the data stage reaches into matching: " + "; ".join(found)


def test_nothing_below_flows_imports_flows():
    found = _violations(_graph(), ("tasks", "model", "storage", "settings"), "flows")
    assert not found, "imports that run back up into flows: " + "; ".join(found)


def test_model_and_storage_do_not_import_tasks():
    found = _violations(_graph(), ("model", "storage", "settings"), "tasks")
    assert not found, "imports that run back up into tasks: " + "; ".join(found)


def test_flows_do_not_import_the_entry_point():
    found = _violations(_graph(), ("flows",), "flows.main", allowed=("flows.main",))
    assert not found, "flows importing the entry point flows.main: " + "; ".join(found)


def test_promotion_and_registry_import_without_keras():
    probe = "import flows.promote, tasks.registry, sys; print('keras' in sys.modules or 'tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", (
        "importing flows.promote and tasks.registry loads Keras or TensorFlow: " + result.stdout + result.stderr
    )
