"""Write docs/cli.md from the `--help` of every command (the reference can never drift from the code).

.venv/bin/python scripts/make_cli_docs.py            # rewrite docs/cli.md
.venv/bin/python scripts/make_cli_docs.py --check    # exit 1 if docs/cli.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

from stfusion.cli import cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def help_text(command: click.Command, name: str) -> str:
    with click.Context(command, info_name=name, terminal_width=100, max_content_width=100) as ctx:
        return command.get_help(ctx)


def render() -> str:
    lines = [
        "# Command-line reference",
        "",
        "Generated from `--help` by `scripts/make_cli_docs.py`; every option of every command.",
        "Errors are one line (`error: <file>: <problem>`) with exit code 2; Ctrl-C exits 130 and says",
        "how to continue. Global options go before the command: `stfusion -q --threads 4 predict ...`.",
        "",
        "## stfusion",
        "",
        "```text",
        help_text(cli, "stfusion"),
        "```",
    ]
    assert isinstance(cli, click.Group)
    for name in sorted(cli.commands):
        lines += [
            "",
            f"## stfusion {name}",
            "",
            "```text",
            help_text(cli.commands[name], f"stfusion {name}"),
            "```",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that docs/cli.md is current")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python scripts/make_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
