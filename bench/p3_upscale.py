"""P3: the upscale benchmark (bench/upscale_bench.py) run inside the one command, its figures as a P-result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import RunContext, result

RESULTS = Path(__file__).parent / "results"
GOAL = 0.35


def run(ctx: RunContext) -> dict[str, Any]:
    from bench import upscale_bench

    # --quick writes to the scratch folder so the committed upscale.json/png keep the last full run.
    out = ctx.workdir / "p3" if ctx.quick else RESULTS
    # Full: the standalone defaults (128 px input) with 2 repeats instead of 3, for the suite's 15-minute budget.
    args = ["--size", "32", "--repeats", "1"] if ctx.quick else ["--repeats", "2"]
    upscale_bench.main([*args, "--out", str(out)])
    report = json.loads((out / "upscale.json").read_text(encoding="utf-8"))
    ratios = report["ratios"]
    ratio = ratios["ours_auto_over_ncnn"]
    size = report["input"]["size"][0]
    absolute = {name: entry["median_s"] for name, entry in report["absolute"].items()}
    return result(
        "P3",
        f"RealESRGAN_x4plus ×4 on a {size}×{size} input, our engine at auto precision ({report['auto_precision']})",
        "ncnn (realesrgan-ncnn weights, CPU), the faster of fp32 and fp16-storage",
        ratio,
        f"≤ {GOAL}",
        None if ratio is None else ratio <= GOAL,
        limit=GOAL,
        median_s=absolute,
        auto_speedup_over_fp32=ratios["auto_speedup_over_fp32"],
        mad_auto_vs_fp32=ratios["mad_auto_vs_fp32"],
        ncnn_error=report.get("ncnn_error"),
        details="upscale.json",
    )
