"""Helpers shared by the benchmark scripts (not a test, not part of the package).

* JSON-lines output (:func:`emit`, figures on stdout) and logs (:func:`log`, on stderr);
* memory of the current process from ``/proc/self/status`` (:func:`peak_rss_mib`, :func:`rss_mib`);
* facts about the machine (:func:`machine_info`);
* fresh subprocesses that report one JSON object (:func:`run_child`), so that every measured case
  has a peak RSS of its own;
* synthetic scenes as int16 GeoTIFFs written window by window (:func:`synthetic_scene`), so that a
  10980 x 10980 x 6 scene never exists as one array in memory.

Peak RSS is read as ``VmHWM`` of ``/proc/self/status`` inside the measured process, not as the
``ru_maxrss`` of a child seen by its parent: Linux carries the parent's high-water mark into a child
across ``exec`` (``signal->maxrss``), so a parent holding torch would inflate every child's figure.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Band count of every synthetic scene and model in the benchmarks.
BANDS = 6
#: Fine pixels per coarse pixel side of the synthetic scenes (MODIS 500 m / Landsat 30 m, as in CIA).
COARSE_FACTOR = 16
#: Bumped whenever :func:`synthetic_scene` changes, so that stale cached files are not reused.
SCENE_VERSION = 1
#: Rows generated and written per step (a multiple of the GeoTIFF block and of COARSE_FACTOR).
GENERATION_ROWS = 256
BAND_NAMES = ("blue", "green", "red", "nir", "swir1", "swir2")

# Reflectance (0..1) of five land covers per band (blue, green, red, nir, swir1, swir2), and their
# change from t1 to t2 (crops green up, bare soil dries): realistic magnitudes, not a library.
_SPECTRA = np.array(
    [
        [0.060, 0.050, 0.030, 0.020, 0.010, 0.008],  # water
        [0.030, 0.060, 0.030, 0.350, 0.180, 0.080],  # forest
        [0.050, 0.080, 0.070, 0.280, 0.230, 0.130],  # crop
        [0.090, 0.120, 0.150, 0.230, 0.310, 0.250],  # bare soil
        [0.100, 0.110, 0.120, 0.180, 0.200, 0.180],  # urban
    ],
    dtype=np.float32,
)
_CHANGE = np.array(
    [
        [0.000, 0.000, 0.000, 0.000, 0.000, 0.000],
        [0.000, 0.005, -0.005, 0.030, 0.000, -0.005],
        [-0.010, 0.010, -0.030, 0.150, -0.040, -0.040],
        [0.010, 0.010, 0.015, 0.010, 0.020, 0.020],
        [0.000, 0.000, 0.000, 0.000, 0.000, 0.000],
    ],
    dtype=np.float32,
)
_DATES = ("20200601", "20200617")  # t1, t2 (in the file names, as the flat-folder layout has them)


# ------------------------------------------------------------------------------------------------
# Output, memory, machine
# ------------------------------------------------------------------------------------------------


def emit(record: dict[str, Any]) -> None:
    """Print one figure as one JSON line on stdout."""
    print(json.dumps(record), flush=True)


def log(message: str) -> None:
    """A progress message on stderr (stdout carries only JSON lines)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _status_kib(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (VmHWM; ru_maxrss where /proc is missing)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round(kib / 1024.0, 1)


def rss_mib() -> float:
    """Current resident set size of this process, MiB (VmRSS)."""
    kib = _status_kib("VmRSS")
    return round((kib or 0.0) / 1024.0, 1)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() as a fallback)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return round(float(line.split()[1]) / 2**20, 1)
    except OSError:
        return None
    return None


def set_threads(threads: int | None) -> None:
    """Use ``threads`` torch intra-op threads (None: leave torch's default)."""
    import torch

    if threads:
        torch.set_num_threads(threads)


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment variables that give a child process ``threads`` threads in every library."""
    if not threads:
        return {}
    value = str(threads)
    return {name: value for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Versions, CPU and thread counts (imports torch: call it in a child process)."""
    import rasterio
    import torch

    set_threads(threads)
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gib": _mem_total_gib(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": torch.cuda.is_available(),
        "numpy": np.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    try:
        from stfusion import __version__

        info["stfusion"] = __version__
    except ImportError:
        info["stfusion"] = None
    return info


def git_commit(repo: Path) -> str | None:
    """Short commit id of ``repo`` plus "+dirty" when the tree has changes (None outside git)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def run_child(script: str, arguments: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python script *arguments`` in a fresh process; return the JSON object it printed last.

    The child's stderr (its logs) passes through; a failing child raises RuntimeError.
    """
    command = [sys.executable, script, *arguments]
    proc = subprocess.run(
        command, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child failed (exit {proc.returncode}): {' '.join(command)}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W); a single number N means N x N."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    height, width = (int(p) for p in parts)
    if height < 1 or width < 1:
        raise ValueError(f"bad size {text!r}: expected HxW with positive integers")
    return height, width


# ------------------------------------------------------------------------------------------------
# Synthetic scenes
# ------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _hash01(seed: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) float32 from integer coordinates (broadcast), a pure function of its inputs.

    A murmur3 finaliser over the coordinates, so any window of a scene can be made on its own.
    """
    with np.errstate(over="ignore"):
        h = (rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
            cols.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        )
        h ^= np.uint64((seed * 0x165667B19E3779F9 + 0x27D4EB2F165667C5) & _MASK64)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 2**24)


# Per-pixel noise comes from a table of coprime size, indexed by absolute coordinates (cheaper than
# hashing every pixel; the period is far longer than DEFLATE's 32 KiB window can exploit).
_NOISE_ROWS, _NOISE_COLS = 1021, 1019


@functools.cache
def _noise_table(seed: int) -> np.ndarray:
    """(1021, 1019) float32 uniform noise of width 0.006 reflectance (std ~0.0017), centred on 0."""
    table = _hash01(seed, np.arange(_NOISE_ROWS)[:, None], np.arange(_NOISE_COLS)[None, :]) - 0.5
    return (0.006 * table).astype(np.float32)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def value_noise(rows: np.ndarray, cols: np.ndarray, scale: int, seed: int) -> np.ndarray:
    """(len(rows), len(cols)) smooth noise in [0, 1): hashed lattice values every ``scale`` pixels,
    smoothstep-interpolated; a function of absolute pixel coordinates (windows agree with the scene).
    """
    i0, j0 = rows // scale, cols // scale
    sy = _smoothstep(((rows % scale) + 0.5) / scale)[:, None]
    sx = _smoothstep(((cols % scale) + 0.5) / scale)[None, :]
    lattice_i = np.arange(i0.min(), i0.max() + 2)
    lattice_j = np.arange(j0.min(), j0.max() + 2)
    grid = _hash01(seed, lattice_i[:, None], lattice_j[None, :])
    gj = j0 - lattice_j[0]
    along_x = grid[:, gj] * (1 - sx) + grid[:, gj + 1] * sx  # (lattice rows, W)
    gi = i0 - lattice_i[0]
    return along_x[gi] * (1 - sy) + along_x[gi + 1] * sy


def _cell_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor cells from the window origin, replicated back to (C, h, w)."""
    _, height, width = image.shape
    row_starts, col_starts = np.arange(0, height, factor), np.arange(0, width, factor)
    sums = np.add.reduceat(np.add.reduceat(image, row_starts, axis=1), col_starts, axis=2)
    counts = np.outer(np.diff(np.append(row_starts, height)), np.diff(np.append(col_starts, width)))
    means = (sums / counts[None]).astype(np.float32)
    return np.repeat(np.repeat(means, factor, axis=1), factor, axis=2)[:, :height, :width]


def scene_window(row0: int, row1: int, width: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows [row0, row1) of the synthetic scene, each role (C, h, W) float32 reflectance.

    ``row0`` must be a multiple of :data:`COARSE_FACTOR` (the coarse cells are aligned to the scene).
    Fine images: five land covers in patches of ~50-250 px (sharp edges), a slow brightness field
    (~500 px), field texture (~8 px) and per-pixel noise (std 0.0017 reflectance); t2 adds a per-cover
    change modulated by a ~128 px field. Coarse images: COARSE_FACTOR-pixel cell means of the fine
    image of the same date plus a sensor bias and per-cell noise, on the fine grid.
    """
    if row0 % COARSE_FACTOR:
        raise ValueError(f"row0={row0} is not a multiple of {COARSE_FACTOR}")
    rows, cols = np.arange(row0, row1), np.arange(width)
    cover_field = 0.65 * value_noise(rows, cols, 64, seed + 1) + 0.35 * value_noise(rows, cols, 256, seed + 2)
    cover = np.digitize(cover_field, np.array([0.30, 0.44, 0.56, 0.68], dtype=np.float32))
    brightness = 0.85 + 0.3 * value_noise(rows, cols, 512, seed + 3)
    texture = 1.0 + 0.3 * (value_noise(rows, cols, 8, seed + 4) - 0.5)
    shade = (brightness * texture).astype(np.float32)
    change_field = 0.5 + value_noise(rows, cols, 128, seed + 5)
    fine: dict[str, np.ndarray] = {}
    for date, t in (("t1", 0), ("t2", 1)):
        planes = []
        for band in range(BANDS):
            value = _SPECTRA[cover, band] + t * _CHANGE[cover, band] * change_field
            noise = _noise_table(seed + 10 + 2 * band + t)[np.ix_(rows % _NOISE_ROWS, cols % _NOISE_COLS)]
            planes.append(value * shade + noise)
        fine[date] = np.clip(np.stack(planes), 0.0, 1.0).astype(np.float32)
    result = {"fine_t1": fine["t1"], "fine_t2": fine["t2"]}
    cell_rows, cell_cols = rows // COARSE_FACTOR, cols // COARSE_FACTOR
    for date, t in (("t1", 0), ("t2", 1)):
        cell_noise = _hash01(seed + 50 + t, cell_rows[:, None], cell_cols[None, :]) - 0.5
        coarse = _cell_mean(fine[date], COARSE_FACTOR) + 0.005 + 0.004 * cell_noise[None]
        result[f"coarse_{date}"] = np.clip(coarse, 0.0, 1.0).astype(np.float32)
    return result


def scene_paths(folder: Path) -> dict[str, Path]:
    """The files of a synthetic scene folder by role (fine_t2, the truth, is not written)."""
    t1, t2 = _DATES
    return {
        "coarse_t1": folder / f"coarse_{t1}.tif",
        "fine_t1": folder / f"fine_{t1}.tif",
        "coarse_t2": folder / f"coarse_{t2}.tif",
    }


def synthetic_scene(data_dir: Path, height: int, width: int, *, seed: int = 0) -> dict[str, Any]:
    """Write (or reuse) a synthetic height x width x 6 case under ``data_dir``; returns its facts.

    Files: int16 reflectance x 1e4, nodata -9999, tiled 256 x 256, DEFLATE, EPSG:32633 at 10 m,
    written :data:`GENERATION_ROWS` rows at a time into a ``.partial`` folder that is renamed when
    complete (an interrupted run never leaves a half-written scene to be reused).
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    folder = data_dir / f"scene_{height}x{width}_v{SCENE_VERSION}_s{seed}"
    paths = scene_paths(folder)
    info_path = folder / "scene.json"
    if info_path.exists() and all(p.exists() for p in paths.values()):
        facts: dict[str, Any] = json.loads(info_path.read_text())
        return facts | {"cached": True, "paths": {k: str(v) for k, v in paths.items()}}
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    profile = {
        "driver": "GTiff",
        "dtype": "int16",
        "nodata": -9999,
        "count": BANDS,
        "height": height,
        "width": width,
        "crs": "EPSG:32633",
        "transform": from_origin(399960.0, 5000040.0, 10.0, 10.0),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "num_threads": "ALL_CPUS",
        "bigtiff": "IF_SAFER",
    }
    start = time.perf_counter()
    files = {role: rasterio.open(partial / path.name, "w", **profile) for role, path in paths.items()}
    try:
        for dst in files.values():
            for band, name in enumerate(BAND_NAMES, start=1):
                dst.set_band_description(band, name)
        for row0 in range(0, height, GENERATION_ROWS):
            row1 = min(height, row0 + GENERATION_ROWS)
            window = scene_window(row0, row1, width, seed=seed)
            for role, dst in files.items():
                stored = np.clip(np.rint(window[role] * 1e4), -32767, 32767).astype(np.int16)
                dst.write(stored, window=Window(0, row0, width, row1 - row0))
            if row0 // GENERATION_ROWS % 8 == 0:
                log(f"synthetic {height}x{width}: row {row1}/{height}")
    finally:
        for dst in files.values():
            dst.close()
    seconds = time.perf_counter() - start
    file_bytes = {role: (partial / path.name).stat().st_size for role, path in paths.items()}
    facts = {
        "height": height,
        "width": width,
        "bands": BANDS,
        "seed": seed,
        "version": SCENE_VERSION,
        "generate_s": round(seconds, 2),
        "file_mib": {role: round(size / 2**20, 1) for role, size in file_bytes.items()},
        "compression_ratio": round(BANDS * height * width * 2 * len(paths) / sum(file_bytes.values()), 2),
    }
    (partial / "scene.json").write_text(json.dumps(facts))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return facts | {"cached": False, "paths": {k: str(v) for k, v in paths.items()}}
