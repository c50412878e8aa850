"""The layers hold: lib's modules import one another without a cycle, each only from its
own layer or those below, and no lib import hides inside a function to dodge one."""

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "lib"

# docs/architecture.md's layers, lowest first: a module imports from its layer or below
LAYERS = [
    {"lib.config", "lib.data", "lib.models", "lib.metrics", "lib.core"},
    {"lib.families"},
    {"lib.training"},
    {"lib.notebook"},
    {"lib.__main__", "lib.runner"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in LIB.rglob("*.py")}


def layer(name: str) -> int:
    if name == "lib":  # the empty top package (its __file__ locates the project)
        return 0
    return next(i for i, tops in enumerate(LAYERS) for top in tops
                if name == top or name.startswith(top + "."))


def target(node: ast.ImportFrom | ast.Import, alias: ast.alias) -> str | None:
    """The lib module an import reads: `from lib.a import b` is lib.a.b when that is a
    module, else lib.a."""
    name = alias.name if isinstance(node, ast.Import) else node.module or ""
    if isinstance(node, ast.ImportFrom) and f"{name}.{alias.name}" in MODULES:
        name = f"{name}.{alias.name}"
    return name if name in MODULES else None


def type_checking_only(tree: ast.Module) -> set[int]:
    """Lines under `if TYPE_CHECKING:`: annotations, never run."""
    return {n.lineno for block in ast.walk(tree) if isinstance(block, ast.If)
            and getattr(block.test, "id", None) == "TYPE_CHECKING"
            for stmt in block.body for n in ast.walk(stmt) if hasattr(n, "lineno")}


def imports(name: str) -> tuple[set[str], list[str]]:
    """(the lib modules `name` imports, wherever; its imports hidden inside functions)."""
    path = MODULES[name]
    text = path.read_text()
    tree = ast.parse(text)
    lines = text.splitlines()
    skip = type_checking_only(tree)
    inner = {n.lineno for f in ast.walk(tree)
             if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
             for n in ast.walk(f) if isinstance(n, ast.Import | ast.ImportFrom)}
    top, hidden = set(), []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in skip:
            continue
        for alias in node.names:
            to = target(node, alias)
            if to is None:
                continue
            top.add(to)
            if node.lineno not in inner:
                continue
            # allowed for a heavy dependency a light caller must not pay for, said so, and
            # in the CLI, which nothing imports (no cycle) and loads each command's modules
            if name != "lib.__main__" and "heavy" not in "".join(
                    lines[node.lineno - 2 : node.lineno]):
                hidden.append(f"{path.relative_to(LIB.parent)}:{node.lineno} imports {to}")
    return top, hidden


def test_no_import_cycle_and_no_import_hidden_in_a_function():
    graph, hidden = {}, []
    for name in MODULES:
        graph[name], inside = imports(name)
        hidden += inside
    assert not hidden, "imports inside functions, not marked heavy:\n" + "\n".join(hidden)

    # depth-first search: a module met again while it is still being visited closes a cycle
    state, cycles = {}, []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for to in sorted(graph[name]):
            if state.get(to) == "open":
                cycles.append(" -> ".join([*path[path.index(to):], to]))
            elif to not in state:
                visit(to, [*path, to])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_each_layer_imports_only_from_its_own_or_lower_layers():
    upward = [f"{name} imports {to}" for name in MODULES for to in imports(name)[0]
              if layer(to) > layer(name)]
    assert not upward, "\n".join(upward)

