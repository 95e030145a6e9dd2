"""Documentation that cannot drift: every option has help, docs/cli.md is current, no dangling references."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click

from stfusion.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def test_every_option_of_every_command_has_help() -> None:
    assert isinstance(cli, click.Group)
    missing = [
        f"{name} {param.opts[0]}"
        for name, command in [("stfusion", cli), *cli.commands.items()]
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]
    assert not missing, missing


def test_cli_reference_is_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_cli_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in listed.stdout.splitlines()]


def test_no_reference_to_a_file_the_repository_lacks() -> None:
    """Markdown links and backquoted repository paths in docs and code point to files that exist."""
    files = tracked_files()
    present = {str(path.relative_to(ROOT)) for path in files}
    problems = []
    for path in files:
        if path.suffix not in {".md", ".py", ".sh", ".toml"} or not path.exists():
            continue
        text = path.read_text(errors="replace")
        if path.name != "test_docs.py" and ("shared/spec" in text or "METRICS.md" in text):
            problems.append(f"{path.relative_to(ROOT)}: cites a file outside the repository")
        if path.suffix != ".md":
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            resolved = (path.parent / target).resolve()
            if not resolved.exists():
                problems.append(f"{path.relative_to(ROOT)}: link to missing {target}")
        if "docs/specs" in str(path):  # the specs cite files of other projects' repositories
            continue
        for target in re.findall(r"`((?:docs|src|scripts|benchmarks|tests)/[\w./-]+)`", text):
            if target.rstrip("/") not in present and not (ROOT / target).exists():
                problems.append(f"{path.relative_to(ROOT)}: mentions missing {target}")
    assert not problems, problems


def _layers() -> dict[str, int]:
    """Row of docs/architecture.md's module table (bottom to top) for each module named in it."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## Modules, bottom to top", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return {
        name.rstrip("/"): i
        for i, row in enumerate(rows)
        for name in re.findall(r"`([\w/]+)`", row.split("|")[1])
    }


def _stfusion_imports(path: Path) -> set[str]:
    """Modules of stfusion that ``path`` imports (at the top or inside functions), dotted."""
    import ast

    package = ".".join(path.relative_to(ROOT / "src").with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("stfusion."))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .x import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base == "stfusion":
                found.update(f"stfusion.{a.name}" for a in node.names)
            elif base.startswith("stfusion."):
                found.add(base)
    return found


def _layer_of(module: str, layers: dict[str, int]) -> int:
    parts = module.split(".")[1:]  # stfusion.models.mlffgan -> models (a package's row), else the module
    return layers[parts[0]]


def test_imports_point_down_the_architecture_table_and_every_module_is_in_it() -> None:
    """docs/architecture.md's module table is the layering: a module imports only its own row or rows
    below it (lazy imports inside functions included), and the import graph has no cycle."""
    layers = _layers()
    sources = sorted((ROOT / "src" / "stfusion").rglob("*.py"))
    graph: dict[str, set[str]] = {}
    unlisted, upward = [], []
    for path in sources:
        module = ".".join(path.relative_to(ROOT / "src").with_suffix("").parts).removesuffix(".__init__")
        if module in ("stfusion", "stfusion.__main__"):  # the package's entry points sit on top
            continue
        if module.split(".")[1] not in layers:
            unlisted.append(module)
            continue
        imports = {m for m in _stfusion_imports(path) if m.split(".")[1] in layers}
        graph[module] = imports
        upward += [
            f"{module} -> {target}"
            for target in imports
            if _layer_of(target, layers) > _layer_of(module, layers)
        ]
    assert not unlisted, f"modules missing from docs/architecture.md's table: {unlisted}"
    assert not upward, f"imports pointing up the table: {upward}"
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path, node, target])}")
            if target in graph and not state.get(target):
                visit(target, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [])
