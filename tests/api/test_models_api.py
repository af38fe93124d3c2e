"""Model management through HTTP: loads run on a real worker thread against a local file host, then are usable."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors

from sdserver.auth import Role
from sdserver.catalog.registry import ModelKind, ModelState
from sdserver.engines.model_loader import ModelLoaderEngine
from sdserver.job_params import ModelLoadParams
from sdserver.jobs import JobStatus
from tests.support.family_layouts import checkpoint_bytes, write_folder_model
from tests.support.http_host import HttpHost, Reply
from tests.support.live_server import LiveServer, make_settings, run_server, worker_thread

V1 = "/api/v1/enterprise"
SETTINGS: dict[str, Any] = {
    "engines": ["models"],
    "fetch_allowlist": ["127.0.0.1"],
    "job_lease_s": 3.0,
    "worker_poll_s": 0.05,
}
WEIGHTS = save_safetensors({"w": np.arange(256, dtype=np.float32)})


@pytest.fixture
def models_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    """A live API plus one in-process worker thread running the `models` engine (unless with_worker=False)."""
    marker = request.node.get_closest_marker("settings")
    overrides = {**SETTINGS, **(marker.kwargs if marker else {})}
    with_worker = overrides.pop("with_worker", True)
    with run_server(make_settings(tmp_path, **overrides)) as live, contextlib.ExitStack() as stack:
        if with_worker:
            engine = ModelLoaderEngine(live.services.settings, live.services.registry)
            stack.enter_context(worker_thread(live, [engine], "models-worker"))
        yield live


@pytest.fixture
def admin(models_server: LiveServer) -> str:
    return models_server.new_key(Role.ADMIN)


@pytest.fixture
def user(models_server: LiveServer) -> str:
    return models_server.new_key(Role.USER)


@pytest.fixture
def host() -> Iterator[HttpHost]:
    routes = {"/ink.safetensors": Reply(WEIGHTS), "/sd15.safetensors": Reply(checkpoint_bytes("sd15"))}
    with HttpHost(routes) as running:
        yield running


def call(http: httpx.Client, live: LiveServer, endpoint: str, key: str, **fields: Any) -> dict[str, Any]:
    reply: dict[str, Any] = http.post(live.url(f"{V1}/{endpoint}"), json={"key": key, **fields}).json()
    return reply


def listed(http: httpx.Client, live: LiveServer, key: str, model_id: str) -> dict[str, Any] | None:
    reply = call(http, live, "get_all_models", key)
    assert reply["status"] == "success", reply
    return next((entry for entry in reply["models"] if entry["model_id"] == model_id), None)


def wait_for_state(http: httpx.Client, live: LiveServer, key: str, model_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    entry = None
    while time.monotonic() < deadline:
        entry = listed(http, live, key, model_id)
        if entry is not None and entry["state"] == state:
            return entry
        time.sleep(0.05)
    raise AssertionError(f"{model_id} never reached {state}: {entry}")


def test_a_lora_loaded_from_a_url_becomes_ready_and_verifiable(
    models_server: LiveServer, admin: str, user: str, host: HttpHost, http: httpx.Client
) -> None:
    url = host.url("/ink.safetensors") + "?token=secret-token"
    reply = call(http, models_server, "load_model", admin, url=url, model_id="ink", model_type="lora")
    assert reply["status"] == "success" and reply["message"] == "model load started", reply
    assert isinstance(reply["id"], int) and reply["state"] == "loading"
    entry = wait_for_state(http, models_server, user, "ink", "ready")
    assert entry["model_type"] == "lora" and entry["progress"] == 100.0
    assert entry["bytes_done"] == entry["bytes_total"] == len(WEIGHTS)
    assert re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d", entry["load_data"])
    lora = models_server.services.settings.data_dir / "models" / "lora" / "ink.safetensors"
    assert lora.read_bytes() == WEIGHTS
    verified = call(http, models_server, "verify_model", user, model_id="ink")
    assert verified == {"status": "success", "message": "Model exists on server"}
    fetched = http.post(models_server.url(f"{V1}/fetch/{reply['id']}"), json={"key": admin}).json()
    assert fetched["status"] == "success" and fetched["meta"]["model_id"] == "ink"
    # The token in the URL reached the host but is not kept where people can read it.
    assert host.requests_to("/ink.safetensors")[0].path.endswith("token=secret-token")
    record = models_server.services.registry.get(ModelKind.LORA, "ink")
    assert record is not None and "secret-token" not in record.source


def test_a_checkpoint_load_makes_the_model_id_usable_for_generation(
    models_server: LiveServer, admin: str, host: HttpHost, http: httpx.Client
) -> None:
    assert not models_server.services.models.exists("base")
    reply = call(
        http,
        models_server,
        "load_model_v2",
        admin,
        url=host.url("/sd15.safetensors"),
        model_id="base",
        model_category="stable_diffusion",
        model_format="safetensors",
    )
    assert reply["status"] == "success", reply
    entry = wait_for_state(http, models_server, admin, "base", "ready")
    assert (entry["family"], entry["prediction_type"]) == ("sd15", "epsilon")
    assert models_server.services.models.exists("base")
    assert (models_server.services.settings.data_dir / "models" / "checkpoints" / "base.safetensors").is_file()


def test_load_vae_answers_vae_load_started(
    models_server: LiveServer, admin: str, host: HttpHost, http: httpx.Client
) -> None:
    reply = call(http, models_server, "load_vae", admin, vae_id="myvae", vae_url=host.url("/ink.safetensors"))
    assert (reply["status"], reply["message"], reply["model_type"]) == ("success", "VAE load started", "vae")
    wait_for_state(http, models_server, admin, "myvae", "ready")
    assert (models_server.services.settings.data_dir / "models" / "vae" / "myvae.safetensors").is_file()


@pytest.mark.parametrize("endpoint", ["load_model", "load_model_v2", "load_vae", "delete_model"])
def test_a_user_key_is_refused_on_admin_endpoints(
    models_server: LiveServer, user: str, http: httpx.Client, endpoint: str
) -> None:
    reply = call(http, models_server, endpoint, user, model_id="x", url="https://example.com/x", model_type="lora")
    assert reply["status"] == "error" and reply["message"] == "This endpoint needs an admin key", reply
    assert models_server.services.registry.list() == []


@pytest.mark.settings(real_status_codes=True)
def test_a_user_key_gets_403_when_real_codes_are_on(models_server: LiveServer, user: str, http: httpx.Client) -> None:
    response = http.post(models_server.url(f"{V1}/load_model"), json={"key": user, "model_id": "x"})
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"model_type": "diffusers_magic"}, "model_type", "must be one of huggingface, custom_ckpt"),
        ({"model_type": None}, "model_type", "is required"),
        ({"model_id": "../etc"}, "model_id", "must be 1-128 letters"),
        ({"url": "ftp://example.com/a"}, "url", "must be an http(s) URL"),
        ({"url": "/etc/passwd"}, "url", "must be a path inside model_import_dirs"),
        ({"url": "https://user:pw@example.com/a"}, "url", "must not carry a user name or password"),
        ({"revision": "main"}, "revision", "applies only to Hugging Face repo ids"),
        ({"webhook": "not a url"}, "webhook", "must be an http(s) URL"),
    ],
    ids=["unknown-type", "no-type", "bad-id", "ftp", "outside-import-dirs", "credentials", "revision", "webhook"],
)
def test_a_bad_load_request_names_the_field_and_the_rule(
    models_server: LiveServer, admin: str, http: httpx.Client, fields: dict[str, Any], field: str, rule: str
) -> None:
    body = {"url": "https://example.com/m.safetensors", "model_id": "m", "model_type": "lora", **fields}
    reply = call(http, models_server, "load_model", admin, **body)
    assert reply["status"] == "error", reply
    assert field in reply["errors"] and rule in reply["message"], reply
    assert models_server.services.registry.list() == []


def test_a_local_path_inside_an_import_dir_loads(tmp_path: Path, http: httpx.Client) -> None:
    imports = tmp_path / "imports"
    imports.mkdir()
    (imports / "emb.safetensors").write_bytes(WEIGHTS)
    (tmp_path / "data").mkdir()
    settings = make_settings(tmp_path / "data", **{**SETTINGS, "model_import_dirs": [imports]})
    with run_server(settings) as live:
        key = live.new_key(Role.ADMIN)
        path = str(imports / "emb.safetensors")
        reply = call(http, live, "load_model", key, url=path, model_id="emb", model_type="embeddings")
        assert reply["status"] == "success", reply
        # No worker here: the load waits in the queue, visible as loading.
        entry = listed(http, live, key, "emb")
        assert entry is not None and entry["state"] == "loading" and entry["id"] == reply["id"]


@pytest.mark.settings(with_worker=False)
def test_deleting_a_model_that_is_loading_cancels_its_job(
    models_server: LiveServer, admin: str, http: httpx.Client
) -> None:
    reply = call(
        http,
        models_server,
        "load_model",
        admin,
        url="https://example.com/a.safetensors",
        model_id="a",
        model_type="custom_ckpt",
    )
    again = call(
        http,
        models_server,
        "load_model",
        admin,
        url="https://example.com/b.safetensors",
        model_id="a",
        model_type="custom_ckpt",
    )
    assert again["status"] == "error" and "already loading" in again["message"]
    deleted = call(http, models_server, "delete_model", admin, model_id="a")
    assert deleted["status"] == "success" and deleted["deleted"] == ["checkpoint"], deleted
    job = models_server.services.jobs.get(reply["id"], owner_key_id=None)
    assert job.status is JobStatus.CANCELLED
    assert listed(http, models_server, admin, "a") is None


def test_delete_removes_files_and_row_and_verify_then_says_not_found(
    models_server: LiveServer, admin: str, host: HttpHost, http: httpx.Client
) -> None:
    call(http, models_server, "load_model", admin, url=host.url("/ink.safetensors"), model_id="ink", model_type="lora")
    wait_for_state(http, models_server, admin, "ink", "ready")
    reply = call(http, models_server, "delete_model", admin, model_id="ink")
    assert reply == {
        "status": "success",
        "message": "Model deleted successfully",
        "model_id": "ink",
        "deleted": ["lora"],
    }
    assert not (models_server.services.settings.data_dir / "models" / "lora" / "ink.safetensors").exists()
    assert models_server.services.registry.get(ModelKind.LORA, "ink") is None
    gone = call(http, models_server, "verify_model", admin, model_id="ink")
    assert gone["status"] == "error" and gone["message"] == "Model id not found"
    # The vendor's exact message, and the id named in the field bag.
    assert gone["errors"] == {"model_id": ["no model 'ink' on this server (get_all_models lists them)"]}
    again = call(http, models_server, "delete_model", admin, model_id="ink")
    assert again["status"] == "error" and again["message"] == "Model id not found"


def test_a_failed_download_shows_as_failed_with_the_reason(
    models_server: LiveServer, admin: str, host: HttpHost, http: httpx.Client
) -> None:
    reply = call(http, models_server, "load_model", admin, url=host.url("/missing"), model_id="nope", model_type="lora")
    assert reply["status"] == "success"
    entry = wait_for_state(http, models_server, admin, "nope", "failed")
    assert "HTTP 404" in entry["message"]
    fetched = http.post(models_server.url(f"{V1}/fetch/{reply['id']}"), json={"key": admin}).json()
    assert fetched["status"] == "failed" and "HTTP 404" in fetched["message"]
    assert call(http, models_server, "verify_model", admin, model_id="nope")["status"] == "error"


def test_get_all_models_lists_models_on_disk_that_were_never_registered(
    models_server: LiveServer, user: str, http: httpx.Client
) -> None:
    models_dir = models_server.services.settings.data_dir / "models"
    (models_dir / "embeddings").mkdir(parents=True)
    (models_dir / "embeddings" / "dropped.pt").write_bytes(b"\x80\x02}q\x00.")
    (models_dir / "diffusers" / "folder-model").mkdir(parents=True)
    (models_dir / "diffusers" / "folder-model" / "model_index.json").write_text("{}")
    reply = http.get(models_server.url(f"{V1}/get_all_models"), params={"key": user}).json()
    by_id = {entry["model_id"]: entry for entry in reply["models"]}
    assert by_id["dropped"]["model_type"] == "embeddings" and by_id["dropped"]["state"] == ModelState.READY.value
    assert by_id["folder-model"]["model_type"] == "checkpoint" and by_id["folder-model"]["load_data"]
    assert call(http, models_server, "verify_model", user, model_id="folder-model")["status"] == "success"


@pytest.mark.parametrize("prefix", ["/api/v3", "/api/v4/dreambooth"])
def test_the_other_families_serve_the_same_endpoints(
    models_server: LiveServer, user: str, http: httpx.Client, prefix: str
) -> None:
    reply = http.post(models_server.url(f"{prefix}/verify_model"), json={"key": user, "model_id": "nothing"}).json()
    assert reply["message"] == "Model id not found"
    assert http.post(models_server.url(f"{prefix}/get_all_models"), json={"key": user}).json()["status"] == "success"


@pytest.mark.settings(with_worker=False)
@pytest.mark.parametrize(
    "url", ["runwayml/stable-diffusion-v1-5", "https://huggingface.co/runwayml/stable-diffusion-v1-5"]
)
def test_a_huggingface_load_queues_a_hub_snapshot(
    models_server: LiveServer, admin: str, http: httpx.Client, url: str
) -> None:
    reply = call(
        http, models_server, "load_model", admin, url=url, model_id="sd15", model_type="huggingface", revision="main"
    )
    assert reply["status"] == "success", reply
    job = models_server.services.jobs.get(reply["id"], owner_key_id=None)
    params = job.params_as(ModelLoadParams)
    assert (params.source_type, params.source, params.revision) == (
        "hub",
        "runwayml/stable-diffusion-v1-5",
        "main",
    )
    record = models_server.services.registry.get(ModelKind.CHECKPOINT, "sd15")
    assert record is not None and record.source == "runwayml/stable-diffusion-v1-5"


def test_deleting_a_model_fails_the_jobs_still_queued_for_it(
    models_server: LiveServer, admin: str, http: httpx.Client
) -> None:
    """No worker would ever claim a job whose model is gone: delete_model fails them at once (others stay queued)."""
    for model_id in ("gone", "kept"):
        write_folder_model(models_server.services.settings.data_dir / "models", model_id, "sd15")
    user = models_server.new_key(Role.USER)
    submitted = {}
    for model_id in ("gone", "kept"):
        body = {"key": user, "prompt": "a cat", "model_id": model_id, "width": 64, "height": 64}
        reply = http.post(models_server.url(f"{V1}/text2img"), json=body | {"instant_response": "yes"}).json()
        assert reply["status"] == "processing", reply
        submitted[model_id] = reply["id"]
    assert call(http, models_server, "delete_model", admin, model_id="gone")["status"] == "success"
    failed = http.post(models_server.url(f"{V1}/fetch/{submitted['gone']}"), json={"key": user}).json()
    assert failed["status"] == "failed" and "Model id not found" in failed["message"], failed
    kept = models_server.services.jobs.get(submitted["kept"], owner_key_id=None)
    assert kept.status is JobStatus.QUEUED
