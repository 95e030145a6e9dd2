"""Build the built-in sample (src/stfusion/sample/cia) from ../shared/data/cia-crop.

Run once by a developer; the result is committed. Pixel values are copied unchanged; band
descriptions (blue..swir2, from the crop's manifest) are added, and files get CIA-style names in the
MLFF-GAN paper's pair-folder layout.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from pathlib import Path

import rasterio

SOURCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cia-crop"
TARGET = Path(__file__).resolve().parents[1] / "src" / "stfusion" / "sample" / "cia"
BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
CASES = {
    "train": [("20011008", "20011017")],
    "val": [("20011017", "20011008")],
    "test": [("20011017", "20011102")],
}


def label(stamp: str) -> str:
    date = dt.datetime.strptime(stamp, "%Y%m%d").date()
    return f"{date:%Y}_{date.timetuple().tm_yday:03d}_{date:%m%d}"


def copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with rasterio.open(dst, "r+") as ds:
        for index, name in enumerate(BANDS, start=1):
            ds.set_band_description(index, name)


def main() -> int:
    if TARGET.exists():
        shutil.rmtree(TARGET)
    for split, pairs in CASES.items():
        for t1, t2 in pairs:
            folder = TARGET / split / f"{label(t1)}-{label(t2)}"
            folder.mkdir(parents=True)
            for stamp in (t1, t2):
                doy = label(stamp).split("_")[1]
                copy(
                    SOURCE / f"fine_{stamp}.tif",
                    folder / f"L71093084_084{stamp}_HRF_modtran_surf_ref_agd66.tif",
                )
                copy(SOURCE / f"coarse_{stamp}.tif", folder / f"MOD09GA_A{stamp[:4]}{doy}.sur_refl.tif")
    return 0


if __name__ == "__main__":
    sys.exit(main())
