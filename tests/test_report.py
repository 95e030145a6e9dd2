"""Tests of stfusion.report: table round trips, Markdown, PNG figures and atomic writes."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from stfusion import report as report_module
from stfusion.metrics import METRIC_COLUMNS, MetricReport, compute_metrics
from stfusion.report import (
    NAN_COLOUR,
    _atomic_write,
    _to_rgb,
    benchmark_figure,
    compare_figure,
    format_table,
    metrics_markdown,
    quicklook_png,
    read_metrics_json,
    series_figure,
    sidecar_path,
    stretch_limits,
    write_metrics_csv,
    write_metrics_json,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.02, 0.5, size=(4, 24, 32)).astype(np.float32)
    prediction = (truth + rng.normal(0, 0.02, size=truth.shape)).astype(np.float32)
    prediction[:, :3, :3] = np.nan  # unpredicted corner
    return {"truth": truth, "prediction": prediction, "fine_t1": truth * 0.9}


@pytest.fixture
def reports(images: dict[str, np.ndarray]) -> dict[str, MetricReport]:
    names = ["blue", "green", "red", "nir"]
    return {
        "starfm": compute_metrics(images["prediction"], images["truth"], ratio=0.05, band_names=names),
        "copy": compute_metrics(images["truth"].copy(), images["truth"], band_names=names),
    }


def _only(tmp_path: Path, *names: str) -> None:
    """The folder holds exactly these files (no temporary file left behind)."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def _cell(text: str) -> float | None:
    return None if text == "" else float(text)


# ------------------------------------------------------------------------------------------ tables


def test_csv_round_trip(tmp_path: Path, reports: dict[str, MetricReport]) -> None:
    path = tmp_path / "metrics.csv"
    written, side = write_metrics_csv(
        path, reports, extra={"starfm": {"wall_s": 1.25}}, protocol={"crop": "none"}
    )
    assert written == path and side == sidecar_path(path)
    _only(tmp_path, "metrics.csv", "metrics.conventions.json")

    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 5  # (4 bands + mean) per method
    for method, report in reports.items():
        mine = [row for row in rows if row["method"] == method]
        for row, expected in zip(mine, report.rows(), strict=True):
            assert row["band"] == expected["band"]
            for metric in METRIC_COLUMNS:
                value = _cell(row[metric])
                if expected[metric] is None:
                    assert value is None
                elif math.isnan(expected[metric]):
                    assert value is not None and math.isnan(value)
                else:
                    assert value == expected[metric]  # full precision
            assert int(row["n_valid"]) == report.conventions["n_valid"]
    assert [row["psnr"] for row in rows if row["method"] == "copy"] == ["inf"] * 5
    assert {row["wall_s"] for row in rows if row["method"] == "starfm"} == {"1.25"}
    assert {row["wall_s"] for row in rows if row["method"] == "copy"} == {""}
    assert all(row["ergas"] == "" for row in rows if row["method"] == "copy")

    sidecar = json.loads(side.read_text())
    assert sidecar["protocol"] == {"crop": "none"}
    assert sidecar["methods"]["starfm"]["ergas_ratio"] == 0.05
    assert sidecar["methods"]["starfm"]["n_unpredicted"] == 9


def test_json_round_trip(tmp_path: Path, reports: dict[str, MetricReport]) -> None:
    path = tmp_path / "metrics.json"
    write_metrics_json(path, reports, extra={"starfm": {"wall_s": 2.5, "device": "cpu"}})
    _only(tmp_path, "metrics.json")
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    back, extra = read_metrics_json(path)
    assert list(back) == list(reports)
    for name, report in reports.items():
        assert back[name].per_band == report.per_band
        assert back[name].mean == report.mean
        assert back[name].band_names == report.band_names
        assert back[name].conventions["n_valid"] == report.conventions["n_valid"]
    assert back["copy"].mean["psnr"] == math.inf
    assert back["copy"].mean["ergas"] is None
    assert extra == {"starfm": {"wall_s": 2.5, "device": "cpu"}, "copy": {}}


def test_markdown_and_terminal_table(reports: dict[str, MetricReport]) -> None:
    text = metrics_markdown(reports, extra={"starfm": {"wall_s": 1.0}})
    assert "| starfm |" in text and "| copy |" in text
    assert "wall_s" in text and "ERGAS ratio=0.0500" in text
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + 2  # header, separator, one mean row per method
    per_band = metrics_markdown(reports, per_band=True, metrics=["rmse", "ssim"])
    assert "| starfm | nir |" in per_band and "| copy | mean |" in per_band
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics_markdown(reports, metrics=["nope"])

    table = format_table(reports["copy"])
    lines = table.splitlines()
    assert lines[0].split() == ["band", *METRIC_COLUMNS]
    assert any(line.startswith("mean") and "inf" in line for line in lines)
    assert "not computed" in table


def test_table_errors(tmp_path: Path, reports: dict[str, MetricReport]) -> None:
    with pytest.raises(ValueError, match="empty"):
        write_metrics_csv(tmp_path / "m.csv", {})
    with pytest.raises(ValueError, match="without a report"):
        write_metrics_json(tmp_path / "m.json", reports, extra={"other": {"x": 1}})
    with pytest.raises(ValueError, match="clashes"):
        write_metrics_csv(tmp_path / "m.csv", reports, extra={"copy": {"rmse": 1}})
    with pytest.raises(TypeError, match="JSON"):
        write_metrics_json(tmp_path / "m.json", reports, extra={"copy": {"x": object()}})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_metrics_json(tmp_path / "missing" / "m.json", reports)
    _only(tmp_path)


# ----------------------------------------------------------------------------------------- figures


def _read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 0
    return imread(path)


def test_quicklook_png(tmp_path: Path, images: dict[str, np.ndarray]) -> None:
    path = tmp_path / "quicklook.png"
    quicklook_png(
        path,
        panels={"fine_t1": images["fine_t1"]},
        truth=images["truth"],
        prediction=images["prediction"],
        panel_inches=2.0,
        dpi=50,
    )
    _only(tmp_path, "quicklook.png")
    pixels = _read_png(path)
    # 4 panels (fine_t1, prediction, truth, error) of 2 in at 50 dpi
    assert pixels.shape[:2] == (100, 400)

    only_panel = tmp_path / "one.png"
    quicklook_png(only_panel, panels={"a": images["truth"]}, truth=None, prediction=None, dpi=40)
    assert _read_png(only_panel).shape[:2] == (120, 120)


def test_compare_figure(tmp_path: Path, images: dict[str, np.ndarray]) -> None:
    path = tmp_path / "compare.png"
    compare_figure(
        path,
        inputs={"coarse_t1": images["fine_t1"], "fine_t1": images["fine_t1"]},
        predictions={"starfm": images["prediction"], "copy": images["truth"]},
        truth=images["truth"],
        rgb_bands=(3, 2, 1),
        error_band=0,
        panel_inches=2.0,
        dpi=50,
    )
    _only(tmp_path, "compare.png")
    # 5 columns (2 inputs, 2 methods, truth), 2 rows
    assert _read_png(path).shape[:2] == (200, 500)


def test_figure_errors(tmp_path: Path, images: dict[str, np.ndarray]) -> None:
    truth = images["truth"]
    with pytest.raises(ValueError, match="rgb_bands"):
        quicklook_png(tmp_path / "q.png", panels={"a": truth}, rgb_bands=(4, 1, 0))
    with pytest.raises(ValueError, match="reserved"):
        quicklook_png(tmp_path / "q.png", panels={"truth": truth}, truth=truth)
    with pytest.raises(ValueError, match="nothing to show"):
        quicklook_png(tmp_path / "q.png", panels={})
    with pytest.raises(ValueError, match="at least one"):
        compare_figure(tmp_path / "c.png", inputs={}, predictions={}, truth=truth)
    with pytest.raises(ValueError, match="one shape"):
        compare_figure(tmp_path / "c.png", inputs={}, predictions={"a": truth[:, :5]}, truth=truth)
    with pytest.raises(ValueError, match="percentiles"):
        compare_figure(
            tmp_path / "c.png",
            inputs={},
            predictions={"a": truth},
            truth=truth,
            percentiles=(50.0, 10.0),
        )
    _only(tmp_path)


def test_compare_figure_metrics_dates_band_names(tmp_path: Path, images: dict[str, np.ndarray]) -> None:
    path = tmp_path / "compare.png"
    compare_figure(
        path,
        inputs={"coarse t1": images["fine_t1"], "fine t1": images["fine_t1"]},
        predictions={"starfm": images["prediction"], "copy": images["truth"]},
        truth=images["truth"],
        metrics={"starfm": {"rmse": 0.0366, "ssim": 0.874}, "copy": {"rmse": 0.0, "ssim": None}},
        dates={"coarse t1": "2001-10-17", "fine t1": "2001-10-17", "truth": "2001-11-02"},
        band_names=["blue", "green", "red", "nir"],
        rgb_bands=(3, 2, 1),
        error_band=3,
        panel_inches=2.0,
        dpi=50,
    )
    _only(tmp_path, "compare.png")
    assert _read_png(path).shape[:2] == (200, 500)  # titles and suptitle do not change the size
    # One method with a "$" in its name: no bold (nothing to compare), the name stays literal.
    compare_figure(
        tmp_path / "one.png",
        inputs={},
        predictions={"a$b": images["prediction"]},
        truth=images["truth"],
        metrics={"a$b": {"psnr": math.inf, "bias": -0.001, "sam": math.nan}},
        panel_inches=2.0,
        dpi=50,
    )
    assert _read_png(tmp_path / "one.png").shape[:2] == (200, 200)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": {"other": {"rmse": 0.1}}}, "metrics has methods without a prediction"),
        ({"metrics": {"a": {"rmsd": 0.1}}}, r"metrics\['a'\]: unknown metric 'rmsd'"),
        ({"metrics": {"a": {"rmse": "0.1"}}}, r"metrics\['a'\]\['rmse'\] must be a number"),
        ({"metrics": {"a": [0.1]}}, r"metrics\['a'\] must be a mapping"),
        ({"dates": {"fine t2": "2001-11-02"}}, "dates has unknown panels"),
        ({"band_names": ["blue", "green"]}, "band_names has 2 names for 4 bands"),
    ],
)
def test_compare_figure_errors(
    tmp_path: Path, images: dict[str, np.ndarray], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        compare_figure(
            tmp_path / "c.png",
            inputs={"fine t1": images["fine_t1"]},
            predictions={"a": images["prediction"], "b": images["truth"]},
            truth=images["truth"],
            **kwargs,  # type: ignore[arg-type]
        )
    _only(tmp_path)


def test_best_values() -> None:
    best = report_module._best_mask
    np.testing.assert_array_equal(best("rmse", np.array([0.2, 0.1, np.nan])), [False, True, False])
    np.testing.assert_array_equal(best("ssim", np.array([0.2, 0.9, 0.9])), [False, True, True])
    np.testing.assert_array_equal(best("bias", np.array([-0.01, 0.02, np.nan])), [True, False, False])
    np.testing.assert_array_equal(best("psnr", np.array([30.0, math.inf])), [False, True])
    np.testing.assert_array_equal(best("rmse", np.array([0.1, np.nan])), [False, False])  # one value


def _series_dates(n: int) -> list[dt.date]:
    return [dt.date(2001, 5, 1) + dt.timedelta(days=16 * i) for i in range(n)]


def test_series_figure(tmp_path: Path, images: dict[str, np.ndarray]) -> None:
    days = _series_dates(9)
    rng = np.random.default_rng(1)
    values = {name: rng.uniform(0.02, 0.4, 9) for name in ["blue", "green", "red", "nir"]}
    values["nir"][[2, 5]] = np.nan
    values["NDVI-like"] = [math.nan] * 9  # an empty series is drawn as nothing
    thumbnails = {day: images["truth"] * (1 + 0.05 * i) for i, day in enumerate(days) if i != 5}
    path = tmp_path / "series.png"
    series_figure(
        path,
        dates=days,
        values=values,
        fine_dates=[days[0], days[8]],
        cloudy_dates=[days[5]],
        thumbnails=thumbnails,
        rgb_bands=(3, 2, 1),
        title="band means",
        width_inches=8.0,
        dpi=50,
    )
    _only(tmp_path, "series.png")
    pixels = _read_png(path)
    assert pixels.shape[1] == 400  # 8 in at 50 dpi
    assert 3.5 * 50 < pixels.shape[0] < 6.0 * 50  # the plot plus one row of quick-looks
    # Without thumbnails: the plot alone; datetimes are dates too.
    plain = tmp_path / "plain.png"
    moments = [dt.datetime(2001, 1, 1, 10, 30) + dt.timedelta(days=i) for i in range(3)]
    series_figure(plain, dates=moments, values={"NDVI": [0.3, math.nan, 0.5]}, ylabel="NDVI", dpi=50)
    assert _read_png(plain).shape[:2] == (175, 500)


def test_series_thumbnail_choice() -> None:
    days = _series_dates(20)
    picked = report_module._pick_evenly(days, 6)
    assert len(picked) == 6 and picked[0] == days[0] and picked[-1] == days[-1]
    assert report_module._pick_evenly(days[:3], 6) == days[:3]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"dates": []}, ValueError, "dates is empty"),
        ({"dates": _series_dates(3)[::-1]}, ValueError, "dates must be sorted"),
        ({"dates": [dt.date(2001, 1, 1)] * 3}, ValueError, "dates must be sorted without repeats"),
        (
            {"dates": ["2001-01-01", "2001-02-01", "2001-03-01"]},
            TypeError,
            r"dates\[0\] must be a datetime.date",
        ),
        ({"values": {}}, ValueError, "values is empty"),
        ({"values": {"red": [0.1, 0.2]}}, ValueError, r"values\['red'\] has shape \(2,\)"),
        ({"values": {"red": ["a", "b", "c"]}}, ValueError, r"values\['red'\] must be a sequence of numbers"),
        ({"fine_dates": ["2001-01-01"]}, TypeError, r"fine_dates\[0\] must be a datetime.date"),
        ({"cloudy_dates": [1]}, TypeError, r"cloudy_dates\[0\]"),
        ({"thumbnails": {dt.date(1999, 1, 1): np.zeros((4, 8, 8))}}, ValueError, "thumbnails has a date"),
        ({"thumbnails": {dt.date(2001, 5, 1): np.zeros((8, 8))}}, ValueError, "must have shape"),
        ({"thumbnails": {dt.date(2001, 5, 1): np.zeros((2, 8, 8))}}, ValueError, "rgb_bands"),
        ({"max_thumbnails": 0}, ValueError, "max_thumbnails"),
        ({"thumbnail_size": 0}, ValueError, "max_size"),
    ],
)
def test_series_figure_errors(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    arguments: dict[str, object] = {"dates": _series_dates(3), "values": {"red": [0.1, 0.2, 0.3]}}
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        series_figure(tmp_path / "s.png", **arguments)  # type: ignore[arg-type]
    _only(tmp_path)


BENCH_SCORES: dict[str, dict[str, float | None]] = {
    "CIA 2001-11-02": {"starfm": 0.0366, "fsdaf": 0.0331, "mlffgan": 0.0291},
    "CIA 2002-01-11": {"starfm": 0.0401, "fsdaf": 0.0385, "mlffgan": 0.0402},
    "LGC 2004-05-02": {"starfm": 0.0280, "fsdaf": None, "mlffgan": math.nan},
}


def test_benchmark_figure(tmp_path: Path) -> None:
    path = tmp_path / "bench.png"
    benchmark_figure(path, scores=BENCH_SCORES, dpi=50)
    _only(tmp_path, "bench.png")
    height, width = _read_png(path).shape[:2]
    assert 100 < width < 400 and 75 < height < 300  # 3 methods x (3 cases + mean), a few inches
    ssim = tmp_path / "ssim.png"
    scores = {"a": {"x": 0.8, "y": 0.85}, "b": {"x": 0.9, "y": 0.9}, "c": {"x": 0.7}}
    benchmark_figure(ssim, scores=scores, metric="ssim", lower_is_better=False, title="SSIM", dpi=50)
    benchmark_figure(tmp_path / "bias.png", scores={"a": {"x": 0.01, "y": -0.002}}, metric="bias", dpi=50)
    benchmark_figure(tmp_path / "time.png", scores={"a": {"x": 1.5}}, metric="wall_s", digits=1, dpi=50)
    for name in ("ssim.png", "bias.png", "time.png"):
        _read_png(tmp_path / name)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": {}}, "scores is empty"),
        ({"scores": {"a": {}}}, r"scores\['a'\] is empty"),
        ({"scores": {"a": [0.1]}}, r"scores\['a'\] must be a mapping"),
        ({"scores": {"a": {"x": "0.1"}}}, r"scores\['a'\]\['x'\] must be a number"),
        ({"scores": {"a": {"x": True}}}, r"scores\['a'\]\['x'\] must be a number"),
        ({"scores": {"a": {"x": None}, "b": {"y": math.nan}}}, "scores has no values"),
        ({"metric": "rmsd"}, "metric: unknown metric 'rmsd'"),
        ({"metric": "ssim", "lower_is_better": True}, "lower_is_better=True contradicts metric 'ssim'"),
        ({"metric": "rmse", "lower_is_better": False}, "lower_is_better=False contradicts"),
        ({"metric": "bias", "lower_is_better": False}, "closer to 0"),
        ({"digits": -1}, "digits"),
    ],
)
def test_benchmark_figure_errors(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"scores": BENCH_SCORES}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        benchmark_figure(tmp_path / "b.png", **arguments)  # type: ignore[arg-type]
    _only(tmp_path)


def test_rank_fraction() -> None:
    ranks = report_module._rank_fraction(np.array([0.3, 0.1, np.nan, 0.1, 0.2]))
    np.testing.assert_allclose(ranks, [1.0, 0.0, np.nan, 0.0, 0.5])


def test_stretch_and_nan_colour(images: dict[str, np.ndarray]) -> None:
    truth = images["truth"]
    low, high = stretch_limits(truth, rgb_bands=(2, 1, 0), percentiles=(2.0, 98.0))
    np.testing.assert_allclose(low[0], np.percentile(truth[2], 2.0))
    np.testing.assert_allclose(high[2], np.percentile(truth[0], 98.0))
    rgb = _to_rgb(images["prediction"], (2, 1, 0), low, high, max_size=None)
    assert rgb.shape == (24, 32, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    np.testing.assert_array_equal(rgb[0, 0], NAN_COLOUR)
    assert _to_rgb(truth, (2, 1, 0), low, high, max_size=8).shape == (6, 8, 3)


# ----------------------------------------------------------------------------------- atomic writes


def test_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _atomic_write(target, broken)
    assert target.read_text() == "old"  # previous content intact
    _only(tmp_path, "out.txt")
