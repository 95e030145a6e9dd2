"""Draw docs/images/overview.png, the README's picture: what spatiotemporal fusion does.

The ESTARFM sample (bundled): fine + coarse images of 2001-05-24 and 2001-08-12 and the coarse image of
2001-07-11 give a fine image of 2001-07-11 (ESTARFM), shown beside the real Landsat image of that date.

    .venv/bin/python scripts/make_overview.py
"""

from __future__ import annotations

from pathlib import Path

from stfusion import fusion, report
from stfusion.blocks import predict_scene
from stfusion.inputs import CaseReader
from stfusion.metrics import compute_metrics
from stfusion.sample import DATASETS
from stfusion.scenes import flat_cases

OUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "overview.png"


def main() -> None:
    case = flat_cases(DATASETS["estarfm-site"], "two-pair")[0]
    reader = CaseReader(case)
    prediction = predict_scene(fusion.get("estarfm").preparer()(reader), reader)
    truth = reader.read("fine_t2")
    scores = compute_metrics(prediction, truth).mean
    report.compare_figure(
        OUT,
        inputs={
            "fine, May 24": reader.read("fine_t1"),
            "coarse, May 24": reader.read("coarse_t1"),
            "coarse, July 11": reader.read("coarse_t2"),
            "fine, Aug 12": reader.read("fine_t3"),
        },
        predictions={"fused, July 11 (ESTARFM)": prediction},
        truth=truth,
        rgb_bands=(2, 1, 0),
        metrics={"fused, July 11 (ESTARFM)": {"rmse": scores["rmse"], "ssim": scores["ssim"]}},
        dates={"truth": "real Landsat, July 11"},
        band_names=["green", "red", "nir"],
        max_size=200,
        panel_inches=2.2,
        dpi=80,
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
