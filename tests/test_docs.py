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
