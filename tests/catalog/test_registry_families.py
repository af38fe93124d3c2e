"""The registry's family columns: recorded by a load, cleared by a reload, and added to a database an older build
created (its rows read as family unknown), on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sdserver.catalog.families import FamilyInfo, FewStep, ModelFamily, PredictionType
from sdserver.catalog.registry import ModelKind, ModelRegistry, ModelState, models
from sdserver.database import add_missing_columns, create_db_engine

FAMILY_COLUMNS = ("family", "prediction_type", "few_step", "inpainting")
# The models table as the build before family detection created it.
OLD_MODELS_TABLE = """
CREATE TABLE models (
    id INTEGER PRIMARY KEY, kind VARCHAR(16) NOT NULL, model_id VARCHAR(128) NOT NULL, state VARCHAR(16) NOT NULL,
    source TEXT NOT NULL, format VARCHAR(32) NOT NULL, message TEXT NOT NULL, bytes_done BIGINT NOT NULL,
    bytes_total BIGINT NOT NULL, job_id INTEGER, created_at TIMESTAMP NOT NULL, loaded_at TIMESTAMP,
    CONSTRAINT uq_models_kind_model_id UNIQUE (kind, model_id)
)
"""
OLD_ROW = """
INSERT INTO models (kind, model_id, state, source, format, message, bytes_done, bytes_total, created_at, loaded_at)
VALUES ('checkpoint', 'old', 'ready', 'https://example.com/old.safetensors', 'safetensors', '', 5, 5,
        '2026-01-02 03:04:05', '2026-01-02 03:04:05')
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'models.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = create_db_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.delete(models))
    yield engine
    engine.dispose()


def test_a_load_records_the_family_and_a_reload_clears_it(engine: Engine) -> None:
    registry = ModelRegistry(engine)
    registry.begin_load(ModelKind.CHECKPOINT, "lcm", source="a")
    info = FamilyInfo(ModelFamily.SD15, PredictionType.EPSILON, inpainting=True, few_step=FewStep.LCM)
    assert registry.set_family(ModelKind.CHECKPOINT, "lcm", info)
    registry.mark_ready(ModelKind.CHECKPOINT, "lcm", format="safetensors", size=1)
    record = registry.get(ModelKind.CHECKPOINT, "lcm")
    assert record is not None and record.family_info is not None
    recorded = record.family_info
    assert (recorded.family, recorded.prediction_type, recorded.few_step, recorded.inpainting) == (
        ModelFamily.SD15,
        PredictionType.EPSILON,
        FewStep.LCM,
        True,
    )
    registry.begin_load(ModelKind.CHECKPOINT, "lcm", source="b")
    reloaded = registry.get(ModelKind.CHECKPOINT, "lcm")
    assert reloaded is not None and reloaded.family is None and reloaded.family_info is None


def test_a_family_this_build_does_not_know_reads_as_unknown(engine: Engine) -> None:
    registry = ModelRegistry(engine)
    registry.begin_load(ModelKind.CHECKPOINT, "future", source="a")
    with engine.begin() as conn:
        conn.execute(sa.update(models).values(family="sd9", prediction_type="epsilon"))
    record = registry.get(ModelKind.CHECKPOINT, "future")
    assert record is not None and record.family is None and record.prediction_type is PredictionType.EPSILON


def test_an_existing_database_gains_the_family_columns_and_its_rows_read_as_unknown(url: str) -> None:
    old = sa.create_engine(url)
    with old.begin() as conn:
        if old.dialect.name == "postgresql":
            # The shared test server already has the new table: take it back to the old schema.
            conn.execute(sa.delete(models))
            for column in FAMILY_COLUMNS:
                conn.execute(sa.text(f"ALTER TABLE models DROP COLUMN IF EXISTS {column}"))
        else:
            conn.execute(sa.text(OLD_MODELS_TABLE))
        conn.execute(sa.text(OLD_ROW))
    old.dispose()
    engine = create_db_engine(url)
    try:
        columns = {column["name"] for column in sa.inspect(engine).get_columns("models")}
        assert set(FAMILY_COLUMNS) <= columns
        record = ModelRegistry(engine).get(ModelKind.CHECKPOINT, "old")
        assert record is not None and record.state is ModelState.READY and record.family_info is None
        # A second start finds nothing to add.
        with engine.begin() as conn:
            assert add_missing_columns(conn) == []
            conn.execute(sa.delete(models))
    finally:
        engine.dispose()
