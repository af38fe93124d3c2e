"""face_enhance on a CUDA device: both restorers run in their GPU precision (bf16: neither network survives fp16)
and restore the face like the CPU fp32 reference. Skipped without a CUDA device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdserver.engines.restore.enhance import FaceEnhancer
from sdserver.engines.restore.restorer import RestorerName
from sdserver.engines.restore.tiny import write_restorer_weights
from tests.engines.restore.faces import face_on_canvas

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", ["gfpgan-1.4", "codeformer"])
def test_restores_on_cuda_close_to_the_cpu_reference(tmp_path: Path, name: RestorerName) -> None:
    write_restorer_weights(tmp_path, name, seed=3)
    source, (x, y, w, h) = face_on_canvas(130, 60)
    upscaled = source.resize((source.width * 2, source.height * 2), Image.Resampling.BICUBIC)
    cuda = FaceEnhancer(tmp_path, name, device="cuda", precision="auto")
    assert cuda.restorer().precision in ("bf16", "fp32")
    on_gpu = cuda.enhance(source, upscaled)
    reference = FaceEnhancer(tmp_path, name, device="cpu", precision="fp32").enhance(source, upscaled)
    assert on_gpu.faces == reference.faces == 1
    face = (slice(y * 2, (y + h) * 2), slice(x * 2, (x + w) * 2))
    gpu_face = np.asarray(on_gpu.image)[face].astype(float)
    cpu_face = np.asarray(reference.image)[face].astype(float)
    before = np.asarray(upscaled)[face].astype(float)
    assert np.isfinite(gpu_face).all()
    # The GPU run changed the face as much as the reference did, and into nearly the same pixels.
    assert np.abs(gpu_face - before).mean() > 10
    assert np.abs(gpu_face - cpu_face).mean() < 0.25 * np.abs(cpu_face - before).mean()
