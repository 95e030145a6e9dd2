"""Markdown tables of a `stfusion benchmark` run for the docs: every case x method (RMSE / SSIM), means.

    .venv/bin/python scripts/benchmark_table.py BENCHMARK_OUT/benchmark.json [--methods a,b,c]

Bold: the lowest RMSE of a case. The means are over the one-pair and the two-pair cases separately, and
a "beats coarse-delta" row counts the cases where a method's RMSE and SSIM both beat coarse-delta's.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def load(path: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """case -> method label -> (RMSE, SSIM)."""
    stored = json.loads(path.read_text())["methods"]
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for key, entry in stored.items():
        case = entry["extra"]["case"]
        label = key[len(case) + 1 :]
        mean = entry["metrics"]["mean"]
        table.setdefault(case, {})[label] = (float(mean["rmse"]), float(mean["ssim"]))
    return table


def render(table: dict[str, dict[str, tuple[float, float]]], methods: list[str]) -> str:
    lines = [
        "| case (RMSE / SSIM) | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    groups: dict[int, list[str]] = {1: [], 2: []}
    for case in table:
        groups[2 if "+" in case else 1].append(case)
    for case in groups[1] + groups[2]:
        scores = table[case]
        best = min((scores[m][0] for m in methods if m in scores), default=math.nan)
        cells = []
        for method in methods:
            if method not in scores:
                cells.append("-")
                continue
            rmse, ssim = scores[method]
            text = f"{rmse:.4f} / {ssim:.3f}"
            cells.append(f"**{text}**" if rmse == best else text)
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    for n_pairs, cases in groups.items():
        cells = []
        for method in methods:
            values = [table[c][method] for c in cases if method in table[c]]
            if not values:
                cells.append("-")
                continue
            rmse = sum(v[0] for v in values) / len(values)
            ssim = sum(v[1] for v in values) / len(values)
            cells.append(f"{rmse:.4f} / {ssim:.3f}")
        label = "one pair" if n_pairs == 1 else "two pairs"
        lines.append(f"| **mean, {label} ({len(cases)} cases)** | " + " | ".join(cells) + " |")
    cells = []
    for method in methods:
        pairs = [
            (table[c][method], table[c]["coarse-delta"])
            for c in table
            if method in table[c] and "coarse-delta" in table[c]
        ]
        wins = sum(1 for (r, s), (rc, sc) in pairs if r < rc and s > sc)
        cells.append(f"{wins} / {len(pairs)}" if method != "coarse-delta" else "-")
    lines.append("| beats coarse-delta (RMSE and SSIM) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--methods", default=None, help="comma list of method labels, in column order")
    args = parser.parse_args()
    table = load(args.json)
    methods = (
        args.methods.split(",")
        if args.methods
        else sorted({m for scores in table.values() for m in scores}, key=str)
    )
    print(render(table, methods))


if __name__ == "__main__":
    main()
