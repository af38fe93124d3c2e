"""The #7 report: the printed table, latest.json and the PNG charts (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Context figures shown in the table, per benchmark (all are in the JSON).
KEY_FIGURES: dict[str, tuple[str, ...]] = {
    "P1": ("api_median_s", "bare_median_s", "output_mean_abs_diff"),
    "P2": ("api_jobs_per_s", "bare_jobs_per_s"),
    "P3": ("auto_speedup_over_fp32", "mad_auto_vs_fp32"),
    "P4": ("p50_ms", "floor_median_ms", "requests_per_s"),
    "P5": ("rss_after_start_mib", "rss_after_uploads_mib", "start_to_ready_s", "torch_mapped"),
    "P6": ("p50_ms", "p99_ms", "fetches"),
    "P7": ("loads_affinity", "loads_round_robin"),
    "P8": ("chosen_median_s", "fp32_median_s", "relative_output_difference"),
    "P9": ("jobs_per_s_on", "jobs_per_s_off", "p99_on_vs_single"),
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def key_figures(entry: dict[str, Any]) -> str:
    context = entry.get("context", {})
    names = KEY_FIGURES.get(entry["id"], ())
    return ", ".join(f"{name}={_fmt(context[name])}" for name in names if name in context)


def table(report: dict[str, Any]) -> str:
    """A Markdown table: the README pastes it as is."""
    lines = ["| id | measure | ratio | goal | met | figures (context) |", "|---|---|---|---|---|---|"]
    for entry in report["results"]:
        if "error" in entry:
            lines.append(f"| {entry['id']} | {entry.get('measure', '')} | — | — | error | {entry['error'][:120]} |")
            continue
        ratio = "—" if entry["ratio"] is None else f"{entry['ratio']:.3f}"
        met = {True: "yes", False: "**no**", None: "—"}[entry["met"]]
        lines.append(
            f"| {entry['id']} | {entry['measure']} | {ratio} | {entry['goal']} | {met} | {key_figures(entry)} |"
        )
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_charts(report: dict[str, Any], folder: Path) -> list[str]:
    """ratios.png (every ratio against its goal) and times.png (the absolute times behind P1, P2, P4, P8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    done = [entry for entry in report["results"] if "error" not in entry and entry["ratio"] is not None]
    written = []
    if done:
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(done) + 1.5))
        names = [entry["id"] for entry in done]
        colours = ["tab:green" if entry["met"] else "tab:red" for entry in done]
        ax.barh(names, [entry["ratio"] for entry in done], color=colours)
        for row, entry in enumerate(done):
            if entry["limit"] is not None:
                ax.plot([entry["limit"]] * 2, [row - 0.4, row + 0.4], color="black", linewidth=2)
            arrow = "≤" if entry["better"] == "lower" else "≥"
            ax.annotate(f" {entry['ratio']:.2f} (goal {arrow} {entry['limit']})", (entry["ratio"], row), va="center")
        ax.invert_yaxis()
        ax.set_xlabel("ratio to the same-run baseline (black tick: goal; green: met)")
        ax.set_title(f"sdserver benchmarks, {report['machine']['date']} ({report['mode']}, {report['device']})")
        fig.tight_layout()
        fig.savefig(folder / "ratios.png", dpi=100)
        plt.close(fig)
        written.append("ratios.png")
    pairs = []
    by_id = {entry["id"]: entry["context"] for entry in done}
    for pid, ours, base, label in (
        ("P1", "api_median_s", "bare_median_s", "P1 round trip (s)"),
        ("P2", "api_total_s", "bare_total_s", "P2 all jobs (s)"),
        ("P4", "p50_ms", "floor_median_ms", "P4 upload p50 (ms)"),
        ("P8", "chosen_median_s", "fp32_median_s", "P8 UNet step (s)"),
    ):
        if pid in by_id and ours in by_id[pid] and base in by_id[pid]:
            pairs.append((label, by_id[pid][ours], by_id[pid][base]))
    if pairs:
        fig, axes = plt.subplots(1, len(pairs), figsize=(3 * len(pairs), 3.2), squeeze=False)
        for ax, (label, ours, base) in zip(axes[0], pairs, strict=True):
            ax.bar(["measured", "baseline"], [ours, base], color=["tab:blue", "tab:gray"])
            ax.set_title(label, fontsize=9)
        fig.suptitle("absolute times (context only)", fontsize=10)
        fig.tight_layout()
        fig.savefig(folder / "times.png", dpi=100)
        plt.close(fig)
        written.append("times.png")
    return written
