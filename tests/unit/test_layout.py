"""The library's layout: one direction of imports, no cycle, small classes, README's map true."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "container_compute"
MAX_CLASS_LINES = 260

# What each part of the library may import (besides the foundation modules below).
FOUNDATION = {
    "config",
    "constants",
    "units",
    "errors",
    "rendering",
    "rootfs",
    "lxdclient",
    "identity",
    "owner",
    "privatefiles",
    "instruments",
}
ALLOWED = {
    "host": {"host"},
    "backends": {"backends"},
    "jobs": {"jobs", "backends"},
    "actions": {"actions", "jobs", "backends", "host"},
    "metrics": {"metrics", "jobs", "backends"},
    "agent": {"jobs", "host", "backends", "metrics"},
    "cli": {"actions", "agent", "jobs", "host", "backends"},
    "contract": {"actions", "jobs"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def library_imports() -> dict[str, set[str]]:
    """Map every library module to the library modules it imports (resolved, at any depth)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                if not stem.startswith("container_compute"):
                    continue
                for alias in node.names:
                    candidate = f"{stem}.{alias.name}"
                    is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists()
                    is_package = (PACKAGE.parent / candidate.replace(".", "/")).is_dir()
                    targets.add(candidate if is_module or is_package else stem)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("container_compute")}
        graph[name] = targets - {name}
    return graph


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def test_no_import_cycle() -> None:
    graph = library_imports()
    # A package imports its own submodules from __init__; count only module-level cycles.
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            cycle = [*visiting[visiting.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        visiting.append(node)
        for target in graph.get(node, ()):
            if not node.startswith(target + "."):  # a submodule importing its own package
                visit(target)
        visiting.pop()
        done.add(node)

    for module in graph:
        visit(module)


def test_imports_go_one_way() -> None:
    wrong = []
    for module, targets in library_imports().items():
        own = part(module)
        if own in FOUNDATION or own == "":
            continue
        for target in targets:
            other = part(target)
            if other and other not in FOUNDATION and other not in ALLOWED[own]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_library_never_imports_ops() -> None:
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            assert not any(n == "ops" or n.startswith("ops.") for n in names), path


def test_no_class_is_over_the_size_limit() -> None:
    large = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "src").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    large.append(f"{path.name}:{node.name} {size} lines")
    assert large == []


def test_readme_package_map_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    mentioned = set(re.findall(r"\b([a-z_]+(?:\.py|/))", block))
    packages = {p.name + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert packages <= mentioned, f"packages missing from the README: {packages - mentioned}"
    assert modules <= mentioned, f"modules missing from the README: {modules - mentioned}"
    for package in sorted(packages):
        docstring = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
        assert docstring, f"{package}__init__.py has no docstring saying what lives there"
    for name in mentioned:
        if name.endswith(".py") and name not in ("charm.py", "relations.py", "cos_agent.py"):
            assert any(PACKAGE.rglob(name)), f"README names {name}, which does not exist"


def test_templates_are_one_copy_in_the_package() -> None:
    top = ROOT / "templates"
    assert top.is_symlink() and top.resolve() == (PACKAGE / "templates").resolve()
