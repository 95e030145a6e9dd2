"""Real training steps, outputs, resume after SIGKILL, and run.py, on tiny models and data."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from stfusion import scenes
from stfusion.checkpoint import load as load_checkpoint
from stfusion.dataset import PatchDataset, load_cases
from stfusion.losses import GeneratorLossWeights
from stfusion.models import PatchDiscriminator
from stfusion.sample import SAMPLE_ROOT
from stfusion.train import TrainConfig, gan_step, train

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "channels": (4, 4, 8, 8, 8),
    "patch_size": 32,
    "patch_stride": 16,
    "batch_size": 2,
    "coarse_factor": 4,
    "val_tile": (32, 32),
    "val_overlap": (8, 8),
    "seed": 5,
    # MS-SSIM needs >= 161 px patches; the tiny runs leave it out.
    "weights": GeneratorLossWeights(adversarial=0.01, l1=1.0, cosine=1.0, ms_ssim=0.0),
}


def tiny_config(save_dir: Path, **changes: object) -> TrainConfig:
    return TrainConfig(save_dir=str(save_dir), **{**TINY, "epochs": 2, **changes})  # type: ignore[arg-type]


def test_two_real_gan_steps_update_both_networks(tiny_paper_data: Path, tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    cases = load_cases(scenes.discover(tiny_paper_data).split("train"), coarse_factor=4)
    dataset = PatchDataset(cases, patch_size=32, stride=16)
    batch = {k: torch.stack([dataset[i][k] for i in range(2)]) for k in dataset[0]}
    torch.manual_seed(0)
    generator = config.model_spec(3).build()
    discriminator = PatchDiscriminator(3)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    g_before = [p.detach().clone() for p in generator.parameters()]
    d_before = [p.detach().clone() for p in discriminator.parameters()]
    for _ in range(2):
        losses = gan_step(generator, discriminator, opt_g, opt_d, batch, config)
    assert set(losses) >= {"d_loss", "g_loss", "g_l1", "g_cosine", "g_adversarial"}
    assert all(np.isfinite(v) for v in losses.values())
    assert losses["g_loss"] == pytest.approx(
        losses["g_l1"] + losses["g_cosine"] + 0.01 * losses["g_adversarial"], rel=1e-5
    )
    assert any(not torch.equal(a, b) for a, b in zip(g_before, generator.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, discriminator.parameters(), strict=True))


def test_train_writes_run_folder(tiny_paper_data: Path, tmp_path: Path) -> None:
    found = scenes.discover(tiny_paper_data)
    result = train(
        tiny_config(tmp_path / "run"), found.split("train"), found.split("val"), band_names=["g", "r", "n"]
    )
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["best.ckpt", "config.json", "history.csv", "last.ckpt"]
    assert len(result.history) == 2 and result.history[-1]["epoch"] == 2
    assert (tmp_path / "run" / "history.csv").read_text().count("\n") == 3
    last = load_checkpoint(result.last)
    assert last.epoch == 2 and last.band_names == ["g", "r", "n"] and last.coarse_factor == 4
    assert last.versions["torch"] == torch.__version__ and last.config["seed"] == 5
    assert last.has_training_state()
    best = load_checkpoint(result.best)
    assert best.best_val == min(h["val_mse"] for h in result.history)
    assert not best.has_training_state()
    assert not best.build_generator().training


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).generator


def test_resume_after_sigkill_reaches_the_same_weights(tiny_paper_data: Path, tmp_path: Path) -> None:
    common = ["--data-dir", str(tiny_paper_data), "--coarse-factor", "4", "--seed", "5"]
    config_file = tmp_path / "tiny.json"
    import json

    tiny = {
        **TINY,
        "weights": {"adversarial": 0.01, "l1": 1.0, "cosine": 1.0, "ms_ssim": 0.0},
        "random_crops": 60,
    }
    tiny["channels"] = list(TINY["channels"])  # type: ignore[call-overload]
    config_file.write_text(json.dumps({**tiny, "epochs": 4}))
    args = [sys.executable, "-m", "stfusion", "train", *common, "--config", str(config_file)]

    # the uninterrupted reference run trains beside the interrupted one (separate processes and
    # folders; each run's result does not depend on what else the machine runs)
    reference_log = tmp_path / "full.log"
    with reference_log.open("wb") as log:  # a file, not a pipe: nothing can block the run
        reference = subprocess.Popen(
            [*args, "--save-dir", str(tmp_path / "full")], stdout=log, stderr=subprocess.STDOUT
        )

    # interrupted run: SIGKILL once the first epoch's checkpoint exists, mid-way through a later epoch
    interrupted = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [*args, "--save-dir", str(interrupted)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 300
        while not (interrupted / "last.ckpt").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert process.poll() is None, "training finished before it could be killed; make the epochs longer"
        process.send_signal(signal.SIGKILL)
        process.wait()
        epochs_done = load_checkpoint(interrupted / "last.ckpt").epoch
        assert 1 <= epochs_done < 4
        subprocess.run(
            [*args, "--save-dir", str(interrupted), "--resume"], check=True, capture_output=True, timeout=600
        )
        assert reference.wait(timeout=600) == 0, reference_log.read_text(errors="replace")
    finally:
        for running in (process, reference):
            if running.poll() is None:
                running.kill()
                running.wait()

    full, resumed = _weights(tmp_path / "full" / "last.ckpt"), _weights(interrupted / "last.ckpt")
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=1e-6, msg=key)
    history = load_checkpoint(interrupted / "last.ckpt").history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert list(interrupted.glob(".*.part")) == []  # no temporary left by the killed save


def test_run_py_end_to_end(tiny_paper_data: Path, tmp_path: Path) -> None:
    save = tmp_path / "S"
    command = [
        sys.executable,
        str(ROOT / "run.py"),
        "--data_dir",
        str(tiny_paper_data),
        "--save_dir",
        str(save),
        "--epochs",
        "1",
        "--train_patch_size",
        "32",
        "--patch_stride",
        "16",
        "--batch_size",
        "2",
        "--coarse_factor",
        "4",
        "--patch_size",
        "32",
        "32",
        "--d",
        "0",
        "--ifAmplificat",
        "True",
        "--image_size",
        "40",
        "48",
        "--cut_num",
        "3",
        "--cuda",
        "False",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "--image_size 40 48: not needed" in done.stdout
    for name in (
        "best.ckpt",
        "last.ckpt",
        "history.csv",
        "config.json",
        "test/metrics.csv",
        "test/metrics.md",
        "test/2001_322_1118-2001_338_1204.png",  # the test case's figure, as docs/training.md says
    ):
        assert (save / name).exists(), name
    prediction = save / "test" / "2001_322_1118-2001_338_1204" / "mlffgan.tif"
    with rasterio.open(prediction) as src:
        assert src.crs is not None and src.count == 3 and src.shape == (40, 48)
    table = (save / "test" / "metrics.md").read_text()
    assert "mlffgan" in table and "coarse-delta" in table


def test_run_py_rejects_bad_data_dir(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "--data_dir",
            str(tmp_path),
            "--save_dir",
            str(tmp_path / "S"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "no fusion cases found" in done.stderr
    assert "Traceback" not in done.stderr


class InvalidOnlyGenerator(torch.nn.Module):
    """fine t1 plus a learnable offset on the invalid pixels only: every gradient it gets comes from there."""

    def __init__(self, invalid: torch.Tensor) -> None:
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(0.3))
        self.invalid = invalid

    def forward(
        self, coarse_t1: torch.Tensor | None, fine_t1: torch.Tensor, coarse_t2: torch.Tensor
    ) -> torch.Tensor:
        return fine_t1 + self.offset * self.invalid


def test_invalid_pixels_give_the_generator_no_gradient(tmp_path: Path) -> None:
    """Masked losses ignore invalid pixels and the discriminator sees the truth there, so a model
    whose output differs only on invalid pixels is not moved by a training step (all loss terms on)."""
    torch.manual_seed(0)
    valid = torch.ones(2, 1, 64, 64, dtype=torch.bool)
    valid[:, :, 10:30, 20:50] = False
    roles = ("coarse_t1", "fine_t1", "coarse_t2", "fine_t2")
    batch = {role: torch.rand(2, 3, 64, 64) * valid for role in roles}
    batch["valid"] = valid
    generator = InvalidOnlyGenerator((~valid).float())
    discriminator = PatchDiscriminator(3)
    every_term = GeneratorLossWeights(adversarial=1.0, l1=1.0, cosine=1.0, ms_ssim=1.0)
    config = tiny_config(tmp_path, weights=every_term)
    optimizer_g = torch.optim.SGD(generator.parameters(), lr=1.0)
    optimizer_d = torch.optim.SGD(discriminator.parameters(), lr=0.01)
    losses = gan_step(generator, discriminator, optimizer_g, optimizer_d, batch, config)
    assert all(np.isfinite(v) for v in losses.values())
    assert generator.offset.grad is not None and float(generator.offset.grad) == 0.0
    assert generator.offset.detach().item() == float(torch.tensor(0.3))  # unchanged by the step


def test_ctrl_c_leaves_a_resumable_state_and_one_line(tiny_paper_data: Path, tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) mid-training: exit 130, one line saying how to go on, no temporaries, and a
    loadable last.ckpt (resuming from it is tested after SIGKILL above)."""
    import json

    config = {**TINY, "weights": {"adversarial": 0.01, "l1": 1.0, "cosine": 1.0, "ms_ssim": 0.0}}
    config.update(channels=list(TINY["channels"]), random_crops=60, epochs=50)  # type: ignore[call-overload]
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    save_dir = tmp_path / "run"
    command = [sys.executable, "-m", "stfusion", "train", "--data-dir", str(tiny_paper_data)]
    command += ["--config", str(tmp_path / "tiny.json"), "--save-dir", str(save_dir)]
    # A background job of a shell without job control inherits SIGINT as ignored; Python then installs
    # no KeyboardInterrupt handler. Restore the default so the child behaves as under a terminal.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not (save_dir / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: rerun with --resume")
    assert list(save_dir.glob(".*.part")) == []
    done = load_checkpoint(save_dir / "last.ckpt").epoch
    assert done >= 1
    # as the line says: the same data and --save-dir with --resume go on (the run's config.json is the
    # base, so options left at their defaults are not "changed"); here for one more epoch only
    from click.testing import CliRunner

    from stfusion.cli import cli

    resume = ["train", "--data-dir", str(tiny_paper_data), "--save-dir", str(save_dir), "--resume"]
    resumed = CliRunner().invoke(cli, [*resume, "--epochs", str(done + 1)])
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(save_dir / "last.ckpt").epoch == done + 1


def test_val_holdout_validates_on_unseen_rows(tiny_paper_data: Path, tmp_path: Path) -> None:
    found = scenes.discover(tiny_paper_data)
    config = tiny_config(tmp_path / "run", val_holdout=0.25, epochs=1, patch_size=16)
    result = train(config, found.split("train"), [], band_names=["g", "r", "n"])
    assert len(result.history) == 1 and np.isfinite(result.history[0]["val_mse"])
    assert load_checkpoint(result.best).config["val_holdout"] == 0.25


def test_train_cli_reprojects_native_coarse_images(tiny_paper_data: Path, tmp_path: Path) -> None:
    """Coarse images at twice the fine pixel size (not on the fine grid) are reprojected for training
    too, with the resampling asked for, and the run records it."""
    import json

    from click.testing import CliRunner
    from rasterio.transform import Affine

    from stfusion.cli import cli
    from tests.conftest import write_tif

    for coarse in tiny_paper_data.rglob("MOD09GA_*.tif"):
        with rasterio.open(coarse) as src:
            data, transform, crs = src.read()[:, ::2, ::2], src.transform, src.crs
        write_tif(coarse, data, crs=crs.to_string(), transform=transform @ Affine.scale(2))
    config = {**TINY, "weights": {"adversarial": 0.01, "l1": 1.0, "cosine": 1.0, "ms_ssim": 0.0}}
    config.update(channels=list(TINY["channels"]), epochs=1, fine_scale=1e-4)  # type: ignore[call-overload]
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    save_dir = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_paper_data), "--save-dir", str(save_dir)]
    args += ["--config", str(tmp_path / "tiny.json"), "--resampling", "nearest"]
    args += ["--coarse-scale", "1e-4", "--coarse-offset", "0"]  # reading options on the command line win
    # an offset on the command line belongs to the scale in the config: checked after the merge, so
    # without a fine scale in either it is refused in one line, before any output
    no_scale = {k: v for k, v in config.items() if k != "fine_scale"}
    (tmp_path / "no-scale.json").write_text(json.dumps(no_scale))
    refused = CliRunner().invoke(
        cli, [*args, "--fine-offset", "0", "--config", str(tmp_path / "no-scale.json")]
    )
    message = refused.output.strip()
    assert refused.exit_code == 2 and "\n" not in message and not save_dir.exists(), refused.output
    assert message.startswith(
        "error: --fine-offset: fine_offset: 0.0 needs fine_scale too, in the config or on"
    )
    nan = CliRunner().invoke(cli, [*args, "--fine-offset", "nan"])  # named as the option typed
    assert nan.exit_code == 2 and not save_dir.exists(), nan.output
    assert nan.output.startswith("error: --fine-offset: fine_offset: expected a finite number"), nan.output
    # a bad value of the config is the config's, even when a typed --bands would have filled it
    (tmp_path / "bad.json").write_text(json.dumps({**config, "coarse_bands": 5}))
    blamed = CliRunner().invoke(cli, [*args, "--config", str(tmp_path / "bad.json"), "--bands", "1,2,3"])
    assert blamed.exit_code == 2 and not save_dir.exists(), blamed.output
    assert blamed.output.startswith(f"error: {tmp_path / 'bad.json'}: coarse_bands: expected a list"), (
        blamed.output
    )
    # --bands sets fine_bands as typed, and coarse_bands unless the config has its own (a reordering)
    config["coarse_bands"] = ["3", "2", "1"]
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    result = CliRunner().invoke(cli, [*args, "--fine-offset", "0", "--bands", "1,2,3"])
    assert result.exit_code == 0, result.output
    assert f"--bands: coarse_bands kept from {tmp_path / 'tiny.json'}: ['3', '2', '1']" in result.output
    recorded = json.loads((save_dir / "config.json").read_text())
    assert recorded["resampling"] == "nearest" and (recorded["coarse_scale"], recorded["coarse_offset"]) == (
        1e-4,
        0,
    )
    assert (recorded["fine_scale"], recorded["fine_offset"]) == (1e-4, 0)
    assert (recorded["fine_bands"], recorded["coarse_bands"]) == (["1", "2", "3"], ["3", "2", "1"])
    assert load_checkpoint(save_dir / "last.ckpt").epoch == 1


def test_flat_folder_training_and_compare_marks_the_cases_a_checkpoint_saw(tmp_path: Path) -> None:
    """`stfusion train FLAT` splits by date (latest target = test); compare marks the trained-on case."""
    from click.testing import CliRunner

    from stfusion.cli import cli
    from stfusion.sample import DATASETS

    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", str(DATASETS["cia-crop"]), "--save-dir", str(run), "--epochs", "1"]
    args += ["--patch-size", "32", "--random-crops", "1", "--coarse-factor", "1", "--residual"]
    result = runner.invoke(cli, [*args, "--coarse-ratio", "16"])
    assert result.exit_code == 0, result.output
    assert "ERGAS ratio=0.0625" in (run / "test" / "metrics.md").read_text()  # from --coarse-ratio
    state = load_checkpoint(run / "best.ckpt")
    assert state.config["data"]["train"] == ["20011008-20011017"] and state.config["val_holdout"] == 0.25
    assert "fine_20011102.tif" not in state.training_files()  # the test date was never seen
    out = tmp_path / "cmp"
    compared = runner.invoke(
        cli,
        [
            "compare",
            str(DATASETS["cia-crop"]),
            "--out",
            str(out),
            "--methods",
            "coarse-delta,mlffgan",  # mlffgan named too: the checkpoint's column, once
            "--checkpoint",
            str(run / "best.ckpt"),
            "--tile",
            "64",
            "64",
            "--overlap",
            "8",
        ],
    )
    assert compared.exit_code == 0, compared.output
    rows = {line.split("|")[1].strip(): line for line in compared.output.splitlines() if "/mlffgan |" in line}
    assert "TRAINED ON THIS CASE" in rows["20011008-20011017/mlffgan"]
    assert "TRAINED ON THIS CASE" not in rows["20011017-20011102/mlffgan"]
    # `stfusion test` on the same flat folder scores the date train held out (the latest), or another
    tested = runner.invoke(
        cli,
        [
            "test",
            str(DATASETS["cia-crop"]),
            "--checkpoint",
            str(run / "best.ckpt"),
            "--out",
            str(tmp_path / "t"),
        ],
    )
    assert tested.exit_code == 0, tested.output
    assert sorted(p.name for p in (tmp_path / "t").iterdir() if p.is_dir()) == ["20011017-20011102"]
    args = [
        "test",
        str(DATASETS["cia-crop"]),
        "--checkpoint",
        str(run / "best.ckpt"),
        "--out",
        str(tmp_path / "t2"),
    ]
    assert "TRAINED ON THIS CASE" not in tested.output
    # an earlier date is the case the model trained on: scored, but marked as no fair test
    earlier = runner.invoke(cli, [*args, "--test-date", "2001-10-17", "--baselines", "coarse-delta"])
    assert earlier.exit_code == 0, earlier.output
    assert sorted(p.name for p in (tmp_path / "t2").iterdir() if p.is_dir()) == ["20011008-20011017"]
    marked = [line for line in earlier.output.splitlines() if "TRAINED ON THIS CASE" in line]
    assert len(marked) == 1 and "mlffgan" in marked[0]
    refused = runner.invoke(cli, [*args, "--baselines", "estarfm"])  # one pair per case: never run
    assert refused.exit_code == 2 and "method estarfm needs 2 reference pairs" in refused.output
    assert "`stfusion compare DATA --pairs 2 --checkpoint ...` makes two-pair ones" in refused.output
    # on the paper layout, which compare --pairs 2 does not take, no such advice
    paper = [*args[:1], str(SAMPLE_ROOT), *args[2:-1], str(tmp_path / "t4"), "--baselines", "estarfm"]
    refused = runner.invoke(cli, paper)
    assert refused.exit_code == 2 and "method estarfm needs 2 reference pairs" in refused.output
    assert "--pairs 2" not in refused.output, refused.output
    # a latest date with a coarse image only: test refuses in one line; train tests on it without a figure
    extended = tmp_path / "extended"
    shutil.copytree(DATASETS["cia-crop"], extended)
    shutil.copy(extended / "coarse_20011102.tif", extended / "coarse_20011120.tif")
    # a date to predict after the last fine date: the test is the latest date with a truth
    tested = runner.invoke(
        cli, ["test", str(extended), "--checkpoint", str(run / "best.ckpt"), "--out", str(tmp_path / "t3")]
    )
    assert tested.exit_code == 0, tested.output
    assert sorted(p.name for p in (tmp_path / "t3").iterdir() if p.is_dir()) == ["20011017-20011102"]
    later = ["test", str(extended), "--checkpoint", str(run / "best.ckpt"), "--out", str(tmp_path / "t4")]
    no_truth = runner.invoke(cli, [*later, "--test-date", "2001-11-20"])
    assert (
        no_truth.exit_code == 2 and "has a fine image of its target date to score against" in no_truth.output
    )
    assert not (tmp_path / "t4").exists()
    args = [
        "train",
        str(extended),
        "--save-dir",
        str(tmp_path / "run2"),
        "--epochs",
        "1",
        "--patch-size",
        "32",
    ]
    args += ["--random-crops", "1", "--coarse-factor", "1", "--residual"]
    refused = runner.invoke(cli, [*args, "--test-date", "2001-11-20"])
    assert refused.exit_code == 2 and not (tmp_path / "run2").exists(), refused.output
    assert "test date(s) 2001-11-20: no fine image to score a test against" in refused.output
    trained = runner.invoke(cli, args)
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "run2" / "test" / "20011017-20011102" / "mlffgan.tif").exists()
    assert (tmp_path / "run2" / "test" / "metrics.md").exists()


def test_config_file_values_are_checked_and_band_numbers_read_as_on_the_command_line() -> None:
    values = {"save_dir": "run", "fine_bands": [3, "nir"], "coarse_bands": [1, 2], "fine_scale": 1}
    config = TrainConfig.from_dict(values)
    # the command line's --bands / --scale are two keys in a config: the message names them
    with pytest.raises(ValueError, match=r"unknown training option\(s\): nope, bands \(give fine_bands and "):
        TrainConfig.from_dict({"save_dir": "run", "bands": [1], "nope": 1})
    assert config.fine_bands == ("3", "nir") and config.coarse_bands == ("1", "2")
    assert config.fine_scale == 1
    for bad, message in [
        ({"val_overlap": [1, 2, 3]}, "val_overlap: .* must be two integers"),
        ({"coarse_bands": []}, "coarse_bands: expected a list of band numbers or names"),
        ({"coarse_scale": 0}, "coarse_scale: expected a positive number"),
        ({"weights": {"cosine": float("nan")}}, r"weights\.cosine: expected a number >= 0"),
        ({"device": 3}, "device: expected a device name"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_dict({"save_dir": "run", **bad})
