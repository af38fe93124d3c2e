"""Every model family end to end: a tiny model made by `sdserver models make-tiny --family` (folder, and single file
where the family has one) serves text2img, img2img and inpaint through the HTTP API and a real worker process,
and the same request gives the same bytes."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from sdserver.auth import Role
from sdserver.cli import main as sdserver_cli
from sdserver.engines.diffusion.tiny_families.names import FOLDER_ONLY, TinyFamily
from sdserver.worker.supervisor import WorkerSupervisor
from tests.support.image_files import png_bytes
from tests.support.live_server import LiveServer, make_settings, run_server

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

# Generation families (the refiner only refines: it has no text2img).
FAMILIES = [family for family in TinyFamily if family is not TinyFamily.SDXL_REFINER]
MODELS = [(family, f"{family.value}-folder", False) for family in FAMILIES] + [
    (family, f"{family.value}-file", True) for family in FAMILIES if family not in FOLDER_ONLY
]
# The family get_all_models reports for each recipe (LCM is an SD 1.5 layout with a few-step scheduler).
FAMILY_NAMES = {
    TinyFamily.SD15: "sd15",
    TinyFamily.SD2V: "sd2",
    TinyFamily.SDXL: "sdxl",
    TinyFamily.SD3: "sd3",
    TinyFamily.FLUX: "flux",
    TinyFamily.LCM: "sd15",
}
KIND_PATHS = {
    "text2img": "/api/v6/images/text2img",
    "img2img": "/api/v6/images/img2img",
    "inpaint": "/api/v6/images/inpaint",
}


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("families")
    for family, model_id, single_file in MODELS:
        argv = ["models", "make-tiny", model_id, "--family", family.value, "--data-dir", str(data_dir)]
        assert sdserver_cli([*argv, "--single-file"] if single_file else argv) == 0
    settings = make_settings(data_dir, engines=["diffusers"], sync_wait_s=120.0, worker_poll_s=0.05)
    with run_server(settings) as live:
        supervisor = WorkerSupervisor(settings, 1, log_level="warning")
        supervisor.start()
        try:
            yield live
        finally:
            supervisor.stop(timeout=30)


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def generate(http: httpx.Client, live: LiveServer, key: str, model_id: str, kind: str) -> list[bytes]:
    body: dict[str, Any] = {"key": key, "model_id": model_id, "prompt": "a red house", "width": 64, "height": 64}
    body |= {"num_inference_steps": 2, "seed": 42, "safety_checker": "no"}
    if kind != "text2img":
        body["init_image"] = base64.b64encode(png_bytes(64, 64)).decode()
        body["strength"] = 0.8
    if kind == "inpaint":
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))
        body["mask_image"] = _b64(mask)
    reply = http.post(live.url(KIND_PATHS[kind]), json=body, timeout=180).json()
    assert reply["status"] == "success", (model_id, kind, reply)
    return [http.get(url).content for url in reply["output"]]


@pytest.mark.parametrize(("family", "model_id", "single_file"), MODELS, ids=[model for _, model, _ in MODELS])
def test_every_family_serves_every_kind_over_http_with_repeatable_bytes(
    families: LiveServer, http: httpx.Client, family: TinyFamily, model_id: str, single_file: bool
) -> None:
    key = families.new_key(Role.USER)
    admin = families.new_key(Role.ADMIN)
    listed = http.post(families.url("/api/v1/enterprise/get_all_models"), json={"key": admin}).json()
    [entry] = [entry for entry in listed["models"] if entry["model_id"] == model_id]
    assert entry["family"] == FAMILY_NAMES[family], entry
    for kind in KIND_PATHS:
        first = generate(http, families, key, model_id, kind)
        again = generate(http, families, key, model_id, kind)
        assert first == again, (model_id, kind)
        with Image.open(io.BytesIO(first[0])) as image:
            assert image.size == (64, 64), (model_id, kind, image.size)
