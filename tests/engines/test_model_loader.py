"""The `models` engine on real HTTP (a local host serving Range), a real SQLite registry and real files."""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sdserver.catalog.files import SOURCE_HUB, SOURCE_LOCAL, SOURCE_URL, part_path, stale_parts
from sdserver.catalog.layout import models_dir_for
from sdserver.catalog.registry import ModelKind, ModelRegistry, ModelState
from sdserver.config import Settings
from sdserver.database import create_db_engine
from sdserver.engines.base import JobCancelled, JobFailed
from sdserver.engines.model_loader import ModelLoaderEngine, kib
from sdserver.job_params import ModelLoadParams
from sdserver.jobs import Job, JobKind, JobStatus
from tests.support.family_layouts import checkpoint_bytes
from tests.support.http_host import HttpHost, RecordedRequest, Reply, Slow, Stream

MIB = 1024 * 1024


def weights(n_floats: int) -> bytes:
    """A real safetensors file of about `n_floats` float32 values (not torch: this engine is torch-free), keyed like
    an SD 1.x checkpoint so that checkpoint loads pass family detection."""
    return checkpoint_bytes("sd15", extra_floats=n_floats)


def pickled_weights() -> bytes:
    buffer = io.BytesIO()
    pickle.dump({"w": [1.0, 2.0]}, buffer, protocol=2)
    return buffer.getvalue()


def ranged(body: bytes) -> Any:
    """A route that honours `Range: bytes=N-` with 206 and Content-Range, like real file hosts."""

    def answer(request: RecordedRequest) -> Reply:
        header = request.headers.get("range", "")
        if header.startswith("bytes=") and header.endswith("-"):
            start = int(header[6:-1])
            if start >= len(body):
                return Reply(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
            content_range = f"bytes {start}-{len(body) - 1}/{len(body)}"
            return Reply(body[start:], status=206, headers={"Content-Range": content_range})
        return Reply(body)

    return answer


@dataclass
class Steps:
    """A step context recording (done, total) in KiB; raises JobCancelled once `cancel_after` KiB are done."""

    cancel_after: int | None = None
    seen: list[tuple[int, int]] = field(default_factory=list)

    def step(self, done: int, total: int) -> None:
        self.seen.append((done, total))
        if self.cancel_after is not None and done >= self.cancel_after:
            raise JobCancelled("cancel requested")


@dataclass
class Loader:
    settings: Settings
    registry: ModelRegistry
    engine: ModelLoaderEngine

    @property
    def models_dir(self) -> Path:
        return models_dir_for(self.settings)

    def run(self, job: Job, steps: Steps | None = None) -> dict[str, Any]:
        params = job.params_as(ModelLoadParams)
        self.registry.begin_load(ModelKind(params.model_kind), job.model_id, source=params.source)
        context = steps or Steps()
        [output] = self.engine.run([job], lambda _job: context)
        assert output.images == []
        return output.meta

    def state(self, kind: ModelKind, model_id: str) -> tuple[ModelState, str]:
        record = self.registry.get(kind, model_id)
        assert record is not None
        return record.state, record.message


def make_loader(tmp_path: Path, **overrides: Any) -> Loader:
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "fetch_allowlist": ["127.0.0.1"], **overrides}
    settings = Settings.model_validate(values)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    registry = ModelRegistry(create_db_engine(settings.sql_url))
    return Loader(settings, registry, ModelLoaderEngine(settings, registry))


@pytest.fixture
def loader(tmp_path: Path) -> Loader:
    return make_loader(tmp_path)


@pytest.fixture
def host() -> Iterator[HttpHost]:
    with HttpHost() as running:
        yield running


def load_job(model_id: str, kind: ModelKind, source_type: str, source: str, **params: Any) -> Job:
    return Job(
        id=7,
        owner_key_id=1,
        kind=JobKind.MODEL_LOAD,
        model_id=model_id,
        params=ModelLoadParams(kind.value, source_type, source, **params),
        output_keys=(),
        future_links=(),
        width=0,
        height=0,
        steps=0,
        scheduler="",
        status=JobStatus.RUNNING,
        attempts=1,
        max_attempts=3,
        created_at=datetime.now(UTC),
    )


def test_a_url_download_lands_in_the_kinds_folder_and_the_row_turns_ready(loader: Loader, host: HttpHost) -> None:
    body = weights(1000)
    host.routes["/files/ink.safetensors"] = Reply(body)
    steps = Steps()
    meta = loader.run(load_job("ink", ModelKind.LORA, SOURCE_URL, host.url("/files/ink.safetensors")), steps)
    target = loader.models_dir / "lora" / "ink.safetensors"
    assert target.read_bytes() == body
    assert meta == {"model_id": "ink", "model_type": "lora", "format": "safetensors"}
    assert steps.seen[-1] == (kib(len(body)), kib(len(body)))
    record = loader.registry.get(ModelKind.LORA, "ink")
    assert record is not None and record.state is ModelState.READY
    assert (record.bytes_done, record.bytes_total, record.format) == (len(body), len(body), "safetensors")
    assert stale_parts(loader.models_dir, ModelKind.LORA, "ink") == []


def test_a_cut_download_resumes_with_range_on_the_next_attempt(loader: Loader, host: HttpHost) -> None:
    body = weights(300_000)  # 1.2 MB: several progress reports
    half = len(body) // 2
    url = host.url("/big.safetensors")
    # First attempt: the server promises the whole file and hangs up halfway.
    host.routes["/big.safetensors"] = Reply(body[:half], headers={"Content-Length": str(len(body))}, send_length=False)
    job = load_job("big", ModelKind.CHECKPOINT, SOURCE_URL, url)
    with pytest.raises(JobFailed) as failed:
        loader.run(job)
    assert "connection failed" in failed.value.message or "ended after" in failed.value.message
    part = part_path(loader.models_dir, ModelKind.CHECKPOINT, "big", url)
    kept = part.stat().st_size
    assert 0 < kept <= half
    assert loader.state(ModelKind.CHECKPOINT, "big")[0] is ModelState.FAILED
    # Second attempt: the server honours Range; only the rest is sent.
    host.routes["/big.safetensors"] = ranged(body)
    steps = Steps()
    loader.run(job, steps)
    assert host.requests_to("/big.safetensors")[-1].headers["range"] == f"bytes={kept}-"
    assert (loader.models_dir / "checkpoints" / "big.safetensors").read_bytes() == body
    assert steps.seen[0] == (kib(kept), kib(len(body)))
    assert not part.exists()


def test_a_server_that_ignores_range_restarts_the_file(loader: Loader, host: HttpHost) -> None:
    body = weights(5000)
    url = host.url("/plain.safetensors")
    part = part_path(loader.models_dir, ModelKind.VAE, "plain", url)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from somewhere else")
    host.routes["/plain.safetensors"] = Reply(body)
    loader.run(load_job("plain", ModelKind.VAE, SOURCE_URL, url))
    assert (loader.models_dir / "vae" / "plain.safetensors").read_bytes() == body


def test_a_complete_part_file_is_installed_without_downloading_again(loader: Loader, host: HttpHost) -> None:
    body = weights(2000)
    url = host.url("/done.safetensors")
    part = part_path(loader.models_dir, ModelKind.LORA, "done", url)
    part.parent.mkdir(parents=True)
    part.write_bytes(body)
    host.routes["/done.safetensors"] = ranged(body)
    loader.run(load_job("done", ModelKind.LORA, SOURCE_URL, url))
    assert (loader.models_dir / "lora" / "done.safetensors").read_bytes() == body


@pytest.mark.parametrize(
    "route",
    [Stream(total=3 * MIB, declare_length=3 * MIB), Stream(total=3 * MIB)],
    ids=["declared-length", "no-length"],
)
def test_a_file_over_the_size_cap_is_refused(tmp_path: Path, host: HttpHost, route: Stream) -> None:
    loader = make_loader(tmp_path, model_download_max_bytes=MIB)
    host.routes["/huge"] = route
    with pytest.raises(JobFailed) as failed:
        loader.run(load_job("huge", ModelKind.CHECKPOINT, SOURCE_URL, host.url("/huge")))
    assert "download limit of 1048576 bytes" in failed.value.message
    state, message = loader.state(ModelKind.CHECKPOINT, "huge")
    assert state is ModelState.FAILED and "download limit" in message
    assert not (loader.models_dir / "checkpoints").exists()


def test_a_private_address_is_refused_without_an_allow_list(tmp_path: Path, host: HttpHost) -> None:
    loader = make_loader(tmp_path, fetch_allowlist=[])
    host.routes["/x.safetensors"] = Reply(weights(10))
    with pytest.raises(JobFailed) as failed:
        loader.run(load_job("x", ModelKind.LORA, SOURCE_URL, host.url("/x.safetensors")))
    assert "refused" in failed.value.message and "loopback" in failed.value.message
    assert host.requests == []


def test_a_pickle_is_refused_for_a_kind_that_takes_only_safetensors(loader: Loader, host: HttpHost) -> None:
    host.routes["/lora.ckpt"] = Reply(pickled_weights())
    with pytest.raises(JobFailed) as failed:
        loader.run(load_job("pick", ModelKind.LORA, SOURCE_URL, host.url("/lora.ckpt")))
    assert "must be a .safetensors file" in failed.value.message


def test_a_pickle_checkpoint_is_stored_as_ckpt(loader: Loader, host: HttpHost) -> None:
    host.routes["/model"] = Reply(pickled_weights())
    loader.run(load_job("old", ModelKind.CHECKPOINT, SOURCE_URL, host.url("/model")))
    assert (loader.models_dir / "checkpoints" / "old.ckpt").read_bytes() == pickled_weights()


def test_a_cancel_mid_download_stops_and_keeps_the_part_for_later(loader: Loader, host: HttpHost) -> None:
    body = weights(1_000_000)  # 4 MB: progress every MiB
    url = host.url("/slow.safetensors")
    host.routes["/slow.safetensors"] = Reply(body)
    with pytest.raises(JobCancelled):
        loader.run(load_job("slow", ModelKind.CHECKPOINT, SOURCE_URL, url), Steps(cancel_after=1024))
    assert part_path(loader.models_dir, ModelKind.CHECKPOINT, "slow", url).stat().st_size >= MIB
    assert not (loader.models_dir / "checkpoints" / "slow.safetensors").exists()


def test_a_local_file_inside_an_import_dir_is_copied(tmp_path: Path) -> None:
    imports = tmp_path / "imports"
    imports.mkdir()
    (imports / "emb.safetensors").write_bytes(weights(50))
    loader = make_loader(tmp_path, model_import_dirs=[imports])
    loader.run(load_job("emb", ModelKind.EMBEDDINGS, SOURCE_LOCAL, str(imports / "emb.safetensors")))
    assert (loader.models_dir / "embeddings" / "emb.safetensors").read_bytes() == weights(50)
    assert (imports / "emb.safetensors").exists()  # copied, not moved


def test_a_local_diffusers_folder_becomes_a_folder_model(tmp_path: Path) -> None:
    imports = tmp_path / "imports"
    (imports / "myvae").mkdir(parents=True)
    (imports / "myvae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (imports / "myvae" / "diffusion_pytorch_model.safetensors").write_bytes(weights(10))
    loader = make_loader(tmp_path, model_import_dirs=[imports])
    meta = loader.run(load_job("myvae", ModelKind.VAE, SOURCE_LOCAL, str(imports / "myvae")))
    assert meta["format"] == "diffusers"
    assert (loader.models_dir / "vae" / "myvae" / "config.json").is_file()


@pytest.mark.parametrize("escape", ["outside.safetensors", "imports/../outside.safetensors", "imports/link"])
def test_a_local_path_outside_the_import_dirs_is_refused(tmp_path: Path, escape: str) -> None:
    imports = tmp_path / "imports"
    imports.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(weights(10))
    (imports / "link").symlink_to(tmp_path / "outside.safetensors")
    loader = make_loader(tmp_path, model_import_dirs=[imports])
    with pytest.raises(JobFailed) as failed:
        loader.run(load_job("esc", ModelKind.LORA, SOURCE_LOCAL, str(tmp_path / escape)))
    assert "outside the model import folders" in failed.value.message
    assert not (loader.models_dir / "lora").exists()


def test_a_hub_id_while_offline_fails_with_a_clear_message(loader: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(JobFailed) as failed:
        loader.run(load_job("hubby", ModelKind.CHECKPOINT, SOURCE_HUB, "owner/some-model"))
    assert "could not download 'owner/some-model' from the Hugging Face Hub" in failed.value.message
    assert loader.state(ModelKind.CHECKPOINT, "hubby")[0] is ModelState.FAILED


def test_a_model_deleted_while_it_finished_loading_leaves_no_files(loader: Loader, host: HttpHost) -> None:
    host.routes["/l.safetensors"] = Reply(weights(10))

    class DeleteAtTheEnd(Steps):
        def step(self, done: int, total: int) -> None:
            if total and done >= total:
                loader.registry.delete(ModelKind.LORA, "late")

    with pytest.raises(JobFailed) as failed:
        loader.run(load_job("late", ModelKind.LORA, SOURCE_URL, host.url("/l.safetensors")), DeleteAtTheEnd())
    assert failed.value.code == "model_deleted"
    assert not (loader.models_dir / "lora" / "late.safetensors").exists()


def test_the_default_engines_include_the_model_loader_which_needs_no_object_store(tmp_path: Path) -> None:
    from sdserver.engines.factory import build_engines

    assert "models" in Settings().engines
    [engine] = build_engines(Settings(data_dir=tmp_path, engines=["models"]))
    assert isinstance(engine, ModelLoaderEngine)
    assert set(engine.kinds()) == {JobKind.MODEL_LOAD} and engine.models() is None


def test_a_worker_stopped_mid_download_releases_the_job_and_the_next_worker_resumes(
    loader: Loader, host: HttpHost
) -> None:
    import threading
    import time

    from sdserver.jobs import JobSpec
    from sdserver.jobstore.store import JobStore
    from sdserver.objects.local import LocalObjectStore
    from sdserver.worker.loop import Worker

    body = weights(1_048_576)  # 4 MiB, sent slowly in 256 KiB pieces
    url = host.url("/slow.safetensors")
    chunks = tuple(body[i : i + 262_144] for i in range(0, len(body), 262_144))
    host.routes["/slow.safetensors"] = Slow(chunks, delay_s=0.05)
    settings = loader.settings.model_copy(update={"job_lease_s": 3.0})
    jobs = JobStore(create_db_engine(settings.sql_url))
    objects = LocalObjectStore(settings.objects_dir, "http://127.0.0.1:1", b"s" * 32, 3600)
    params = ModelLoadParams("checkpoint", SOURCE_URL, url)
    spec = JobSpec(1, JobKind.MODEL_LOAD, "resumed", params, output_keys=(), future_links=())
    job = jobs.submit(spec)
    loader.registry.begin_load(ModelKind.CHECKPOINT, "resumed", source=url)

    def work(worker_id: str, until: Callable[[], bool]) -> None:
        stop = threading.Event()
        worker = Worker(settings, jobs, objects, [loader.engine], worker_id, grace_s=0.0, idle_wait_s=0.05)
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not until() and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        thread.join(timeout=10)

    # First worker: stopped (no grace) once some bytes are in; the job goes back to the queue.
    work("w1", lambda: jobs.get(job.id, owner_key_id=None).progress_step > 0)
    assert jobs.get(job.id, owner_key_id=None).status is JobStatus.QUEUED
    kept = part_path(loader.models_dir, ModelKind.CHECKPOINT, "resumed", url).stat().st_size
    assert 0 < kept < len(body)
    # Second worker: continues where the first stopped.
    host.routes["/slow.safetensors"] = ranged(body)
    work("w2", lambda: jobs.get(job.id, owner_key_id=None).status.is_terminal)
    assert jobs.get(job.id, owner_key_id=None).status is JobStatus.SUCCEEDED
    assert host.requests_to("/slow.safetensors")[-1].headers["range"] == f"bytes={kept}-"
    assert (loader.models_dir / "checkpoints" / "resumed.safetensors").read_bytes() == body
    jobs.close()
