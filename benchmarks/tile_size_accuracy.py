"""How the prediction tile size changes MLFF-GAN accuracy (AdaIN/BatchNorm statistics are per tile).

Usage: python benchmarks/tile_size_accuracy.py CHECKPOINT [DATA_DIR] [--split test] [--tiles 64 96 128 ...]
Prints one JSON line per tile size: mean RMSE and SSIM over bands on each case of the split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stfusion import fusion
from stfusion.blocks import predict_scene
from stfusion.checkpoint import load
from stfusion.inputs import CaseReader
from stfusion.metrics import compute_metrics
from stfusion.predict import TileOptions
from stfusion.sample import SAMPLE_ROOT
from stfusion.scenes import discover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data_dir", type=Path, nargs="?", default=SAMPLE_ROOT)
    parser.add_argument("--split", default="test")
    parser.add_argument("--tiles", type=int, nargs="+", default=[64, 96, 128, 192, 256])
    parser.add_argument("--overlap-fraction", type=float, default=0.25)
    args = parser.parse_args()
    checkpoint = load(args.checkpoint)
    for case in discover(args.data_dir).split(args.split):
        reader = CaseReader(case, require_truth=True)
        truth = reader.read("fine_t2")
        for tile in args.tiles:
            overlap = int(tile * args.overlap_fraction)
            tiles = TileOptions((tile, tile), (overlap, overlap), 4)
            preparer = fusion.get("mlffgan").preparer(checkpoint=checkpoint, runtime={"tiles": tiles})
            prediction = predict_scene(preparer(reader), reader)
            report = compute_metrics(prediction, truth, band_names=reader.band_names)
            print(
                json.dumps(
                    {
                        "case": case.name,
                        "tile": tile,
                        "overlap": overlap,
                        "rmse": round(report.mean["rmse"] or 0, 5),
                        "ssim": round(report.mean["ssim"] or 0, 5),
                    }
                )
            )


if __name__ == "__main__":
    main()
