"""`python -m bench`: every benchmark (P1–P8 of #7, P9–P10 of #16) in one process tree; a table, latest.json, charts.

python -m bench                    # everything, full sizes (CPU; GPU sizes when CUDA is available)
python -m bench --quick            # tiny sizes, seconds: a smoke check, its numbers mean nothing
python -m bench --only P1,P4       # a subset
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

# Before diffusers/huggingface_hub read it: nothing here may try the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Download/load progress bars would bury the table; the servers' workers inherit these too.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench.common import SD15_HALF_MODEL, SD15_MODEL, RunContext, machine
from bench.report import table, write_charts, write_json

BENCHMARKS = {
    "P1": "bench.p1_roundtrip",
    "P2": "bench.p2_throughput",
    "P3": "bench.p3_upscale",
    "P4": "bench.p4_upload",
    "P5": "bench.p5_footprint",
    "P6": "bench.p6_fetch",
    "P7": "bench.p7_affinity",
    "P8": "bench.p8_precision",
    "P9": "bench.p9_batching",
    "P10": "bench.p10_eta",
}
RESULTS = Path(__file__).parent / "results"
# Shared resources and the benchmarks that use them: each is freed once none of its users is left to run.
RESOURCE_USERS = {
    "gen-server": {"P1", "P2"},
    f"bare-pipeline-{SD15_MODEL}": {"P1", "P2"},
    f"bare-pipeline-{SD15_HALF_MODEL}": {"P2"},
}


def selected(only: str | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names = [name.strip().upper() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"--only: unknown benchmark {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    return [name for name in BENCHMARKS if name in names]


def detect_device() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_all(names: list[str], ctx: RunContext) -> list[dict[str, Any]]:
    results = []
    for name in names:
        print(f"{name}: running", flush=True)
        started = time.perf_counter()
        try:
            entry = importlib.import_module(BENCHMARKS[name]).run(ctx)
        except Exception as exc:  # one broken benchmark must not lose the others' figures
            traceback.print_exc()
            entry = {"id": name, "error": f"{type(exc).__name__}: {exc}"}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        later = set(names[names.index(name) + 1 :])
        for resource, users in RESOURCE_USERS.items():
            if resource in ctx.cache and not users & later:
                ctx.drop(resource)
        # Printed as it lands, so a run stopped part-way still leaves every finished figure in its log.
        print(f"{name}: done in {entry['seconds']} s: {json.dumps(entry, default=str)}", flush=True)
        results.append(entry)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", help="comma-separated ids, e.g. P1,P4 (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke check (figures meaningless)")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results; --quick: a temp folder)")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    args = parser.parse_args(argv)
    names = selected(args.only)
    workdir = Path(tempfile.mkdtemp(prefix="sdserver-bench-"))
    # A quick run never overwrites the committed figures unless told where to write.
    out = args.out or (workdir / "results" if args.quick else RESULTS)
    ctx = RunContext(quick=args.quick, device=detect_device(), workdir=workdir)
    started = time.perf_counter()
    try:
        results = run_all(names, ctx)
    finally:
        ctx.close()
    report: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "device": ctx.device,
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    report["charts"] = [] if args.no_charts else write_charts(report, out)
    write_json(report, out / "latest.json")
    print()
    print(table(report))
    print(f"\n{report['seconds']} s; wrote {out / 'latest.json'}" + "".join(f", {c}" for c in report["charts"]))
    # Scratch data (models, data dirs) goes; a quick run's results folder, if inside, stays for a look.
    for child in workdir.iterdir():
        if child != out:
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
    if not any(workdir.iterdir()):
        workdir.rmdir()
    return 1 if any("error" in entry for entry in results) else 0


if __name__ == "__main__":
    sys.exit(main())
