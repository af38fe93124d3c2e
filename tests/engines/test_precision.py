"""Device and dtype choice: fp16 on CUDA, bf16 on CPUs with native bf16, fp32 otherwise, or what the setting forces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdserver.config import Settings
from sdserver.engines import precision
from sdserver.engines.diffusion.engine import DiffusionEngine
from sdserver.engines.precision import Placement, choose_placement, cpu_has_native_bf16
from tests.support.tiny_sd import RecordingContext, make_job, make_tiny_model

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
AVX512_ONLY = "processor\t: 0\nflags\t\t: fpu avx512f avx512bw avx512_vnni\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [(SAPPHIRE_RAPIDS, True), (ZEN3, False), (AVX512_ONLY, False), ("", False)],
    ids=["amx", "avx2", "avx512-no-bf16", "empty"],
)
def test_native_bf16_is_read_from_cpu_flags(cpuinfo: str, native: bool) -> None:
    assert cpu_has_native_bf16(cpuinfo) is native


@pytest.mark.parametrize(("cpuinfo", "expected"), [(SAPPHIRE_RAPIDS, "bf16"), (ZEN3, "fp32")], ids=["bf16", "fp32"])
def test_auto_on_cpu_follows_the_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpuinfo: str, expected: str
) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo)
    monkeypatch.setattr(precision, "CPUINFO", fake)
    assert choose_placement("auto", "cpu") == Placement("cpu", expected)  # type: ignore[arg-type]


def test_auto_on_cuda_is_fp16() -> None:
    assert choose_placement("auto", "cuda") == Placement("cuda", "fp16")


@pytest.mark.parametrize("forced", ["fp32", "bf16", "fp16"])
def test_a_setting_forces_the_precision(forced: str) -> None:
    assert choose_placement(forced, "cpu").precision == forced  # type: ignore[arg-type]


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_this_machine_runs_bf16_in_auto_mode() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device takes precedence")
    assert choose_placement().precision == "bf16"


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
def test_the_model_runs_in_the_chosen_dtype(tmp_path: Path, forced: str) -> None:
    make_tiny_model(tmp_path / "models", "tiny")
    engine = DiffusionEngine(Settings(data_dir=tmp_path), objects=None, precision=forced, device="cpu")  # type: ignore[arg-type]
    [output] = engine.run([make_job("tiny")], lambda _job: RecordingContext())
    assert output.meta["precision"] == forced
    [loaded] = engine._loaded.values()
    assert loaded.pipelines[next(iter(loaded.pipelines))].unet.dtype == precision.DTYPES[forced]  # type: ignore[index]


def test_cpu_without_proc_cpuinfo_is_fp32(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "missing")
    assert choose_placement("auto", "cpu").precision == "fp32"
