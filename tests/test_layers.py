"""The package's layers point one way: data → tasks → runs → cli, no import cycle anywhere (imports inside
functions count: they only postpone the cycle)."""

import ast
from pathlib import Path

import ginformer

PACKAGE = Path(ginformer.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the ginformer modules it imports (a name imported from a package counts as its submodule)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def known(name: str) -> str | None:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in modules else None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [known(f"{base}.{alias.name}") or known(base) for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [known(alias.name) for alias in node.names]
            else:
                continue
            found |= {t for t in targets if t and t.startswith("ginformer")}
        # A package's __init__ re-exporting its submodules is not a dependency of theirs on it.
        graph[name] = {t for t in found if t != name and not name.startswith(t + ".") and not t == "ginformer"}
    return graph


def test_no_module_of_data_or_tasks_imports_the_run_layer():
    lower = ("ginformer.data", "ginformer.tasks", "ginformer.settings", "ginformer.generation", "ginformer.errors")
    upward = sorted((m, t) for m, targets in imports().items() if m.startswith(lower) for t in targets
                    if t.startswith(("ginformer.runs", "ginformer.cli")))
    assert not upward, upward


def test_there_is_no_import_cycle():
    graph = imports()
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(module):] + [module])}")
        if module in done:
            return
        path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
