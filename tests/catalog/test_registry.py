"""Model registry on SQLite and on a real PostgreSQL server: load lifecycle, uniqueness, reconciling dead jobs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sdserver.catalog.registry import ModelKind, ModelRegistry, ModelState, models
from sdserver.database import create_db_engine
from sdserver.errors import ValidationError
from sdserver.job_params import ModelLoadParams
from sdserver.jobs import JobKind, JobSpec, JobStatus
from sdserver.jobstore.store import JobStore

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (
        f"sqlite:///{tmp_path / 'models.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    )
    engine = create_db_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.delete(models))
    yield engine
    engine.dispose()


@pytest.fixture
def registry(engine: Engine) -> ModelRegistry:
    return ModelRegistry(engine, clock=lambda: NOW)


def test_a_load_goes_from_loading_through_progress_to_ready(registry: ModelRegistry) -> None:
    record = registry.begin_load(ModelKind.LORA, "ink", source="https://example.com/ink.safetensors")
    assert (record.state, record.bytes_done, record.job_id, record.loaded_at) == (ModelState.LOADING, 0, None, None)
    registry.attach_job(ModelKind.LORA, "ink", 41)
    assert registry.progress(ModelKind.LORA, "ink", done=25, total=100)
    loading = registry.get(ModelKind.LORA, "ink")
    assert loading is not None
    assert (loading.job_id, loading.bytes_done, loading.bytes_total, loading.progress_percent) == (41, 25, 100, 25.0)
    assert registry.mark_ready(ModelKind.LORA, "ink", format="safetensors", size=100)
    ready = registry.get(ModelKind.LORA, "ink")
    assert ready is not None
    assert (ready.state, ready.format, ready.progress_percent, ready.loaded_at) == (
        ModelState.READY,
        "safetensors",
        100.0,
        NOW,
    )
    assert ready.source == "https://example.com/ink.safetensors"


def test_the_same_id_may_exist_once_per_kind(registry: ModelRegistry) -> None:
    registry.begin_load(ModelKind.VAE, "shared", source="a")
    registry.begin_load(ModelKind.LORA, "shared", source="b")
    assert [(r.kind, r.model_id) for r in registry.list()] == [
        (ModelKind.LORA, "shared"),
        (ModelKind.VAE, "shared"),
    ]
    assert [r.kind for r in registry.list(kind=ModelKind.VAE)] == [ModelKind.VAE]


def test_a_model_already_loading_is_refused_with_the_field_named(registry: ModelRegistry) -> None:
    registry.begin_load(ModelKind.CHECKPOINT, "busy", source="a")
    with pytest.raises(ValidationError) as caught:
        registry.begin_load(ModelKind.CHECKPOINT, "busy", source="b")
    assert "model_id" in caught.value.field_errors
    assert "already loading" in caught.value.message and "'busy'" in caught.value.message


def test_a_failed_or_ready_model_can_be_loaded_again(registry: ModelRegistry) -> None:
    registry.begin_load(ModelKind.CHECKPOINT, "again", source="a")
    registry.mark_failed(ModelKind.CHECKPOINT, "again", "the server answered HTTP 404")
    failed = registry.get(ModelKind.CHECKPOINT, "again")
    assert failed is not None and (failed.state, failed.message) == (ModelState.FAILED, "the server answered HTTP 404")
    record = registry.begin_load(ModelKind.CHECKPOINT, "again", source="b")
    assert (record.state, record.source, record.message) == (ModelState.LOADING, "b", "")
    registry.mark_ready(ModelKind.CHECKPOINT, "again", format="diffusers", size=5)
    assert registry.begin_load(ModelKind.CHECKPOINT, "again", source="c").state is ModelState.LOADING


def test_delete_returns_the_row_and_later_updates_find_nothing(registry: ModelRegistry) -> None:
    registry.begin_load(ModelKind.EMBEDDINGS, "gone", source="a")
    deleted = registry.delete(ModelKind.EMBEDDINGS, "gone")
    assert deleted is not None and deleted.model_id == "gone"
    assert registry.delete(ModelKind.EMBEDDINGS, "gone") is None
    assert registry.get(ModelKind.EMBEDDINGS, "gone") is None
    # A worker finishing a load that was deleted meanwhile learns it from the return value.
    assert not registry.progress(ModelKind.EMBEDDINGS, "gone", done=1, total=2)
    assert not registry.mark_ready(ModelKind.EMBEDDINGS, "gone", format="pt", size=2)


def test_list_filters_by_state(registry: ModelRegistry) -> None:
    registry.begin_load(ModelKind.CHECKPOINT, "a", source="x")
    registry.begin_load(ModelKind.CHECKPOINT, "b", source="x")
    registry.mark_ready(ModelKind.CHECKPOINT, "b", format="diffusers", size=1)
    assert [r.model_id for r in registry.list(state=ModelState.READY)] == ["b"]
    assert [r.model_id for r in registry.list(state=ModelState.LOADING)] == ["a"]


def test_a_loading_row_whose_job_died_reads_as_failed_with_the_jobs_reason(engine: Engine) -> None:
    registry = ModelRegistry(engine)
    jobs = JobStore(engine)
    try:
        spec = JobSpec(
            owner_key_id=1,
            kind=JobKind.MODEL_LOAD,
            model_id="orphan",
            params=ModelLoadParams("checkpoint", "url", "http://models.test/orphan"),
            output_keys=(),
            future_links=(),
            max_attempts=1,
        )
        job = jobs.submit(spec)
        registry.begin_load(ModelKind.CHECKPOINT, "orphan", source="x")
        registry.attach_job(ModelKind.CHECKPOINT, "orphan", job.id)
        [claimed] = jobs.claim("w1", kinds=[JobKind.MODEL_LOAD], lease_s=30)
        jobs.fail(claimed.id, "w1", code="engine_error", message="the worker died on its last attempt")
        assert jobs.get(job.id, owner_key_id=None).status is JobStatus.FAILED
        record = registry.get(ModelKind.CHECKPOINT, "orphan")
        assert record is not None
        assert (record.state, record.message) == (ModelState.FAILED, "the worker died on its last attempt")
    finally:
        jobs.close()
