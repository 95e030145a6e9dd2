"""``stfusion methods``: every fusion method, its reference pairs, blocks and options."""

from __future__ import annotations

import click

from stfusion import fusion
from stfusion.cli.options import one_line_errors, say


@click.command("methods")
@click.argument("name", required=False, type=click.Choice(fusion.names()))
@one_line_errors()
def methods_command(name: str | None) -> None:
    """List the fusion methods (or one) with their options: name (type, default): meaning.

    Options are given as `--option key=value` (or `--option method.key=value` where several methods
    run, e.g. in `stfusion compare`).
    """
    chosen = [fusion.get(name)] if name else [fusion.get(n) for n in fusion.names()]
    for index, method in enumerate(chosen):
        if index:
            say("")
        say(method.help_text())
        if method.name == fusion.DEFAULT_METHOD:
            say(f"  (the default of `stfusion predict` without --checkpoint: {fusion.DEFAULT_REASON})")
