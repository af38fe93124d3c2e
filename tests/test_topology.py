"""Whole-system runs with real processes: restart safety on one box, and the many-box topology on one machine."""

from __future__ import annotations

from pathlib import Path

import httpx
import sqlalchemy as sa

from tests.api.conftest import s3_overrides
from tests.support.cluster import (
    ADMIN_KEY,
    Cluster,
    cluster,
    cluster_env,
    submit_many,
    wait_all_success,
    wait_ready,
)
from tests.support.live_server import free_port
from tests.support.postgres_server import fresh_database
from tests.support.s3_server import S3Server

__all__ = ["cluster"]  # pytest fixture, imported for the tests below


def test_api_restart_with_20_queued_jobs_completes_them_all(tmp_path: Path, cluster: Cluster) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = cluster_env(tmp_path / "data", port)
    api = cluster.start(env, "serve", "--workers", "0")
    wait_ready(base_url)
    ids = [reply["id"] for reply in submit_many(base_url, 20)]
    cluster.stop(api)

    cluster.start(env, "serve", "--workers", "1")
    wait_ready(base_url)
    finished = wait_all_success(base_url, ids)
    for reply in finished.values():
        assert httpx.get(reply["output"][0], timeout=10).status_code == 200


def test_many_box_topology_on_postgresql_and_s3(
    tmp_path: Path, cluster: Cluster, postgres_url: str, s3_server: S3Server
) -> None:
    """One API process and two worker processes sharing PostgreSQL and S3: 20 jobs spread over both workers."""
    database_url = fresh_database(postgres_url)
    s3 = s3_overrides(s3_server)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = cluster_env(tmp_path / "api-data", port, database_url=database_url, **s3)
    cluster.start(env, "serve", "--workers", "0")
    wait_ready(base_url)
    for index in range(2):
        cluster.start({**env, "SDSERVER_DATA_DIR": str(tmp_path / f"worker-{index}")}, "worker")
    replies = submit_many(base_url, 20, num_inference_steps=4)
    finished = wait_all_success(base_url, [reply["id"] for reply in replies])

    for reply in finished.values():
        assert "X-Amz-" in reply["output"][0] or s3["s3_bucket"] in reply["output"][0]
        assert httpx.get(reply["output"][0], timeout=10).content.startswith(b"\x89PNG")
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        workers = conn.execute(sa.text("SELECT DISTINCT worker_id FROM jobs WHERE status = 'succeeded'")).all()
    engine.dispose()
    assert len(workers) == 2, "both workers should have taken part"


def test_a_model_loaded_through_box_a_generates_on_box_b(
    tmp_path: Path, cluster: Cluster, postgres_url: str, s3_server: S3Server
) -> None:
    """Box A: the API and a `models` worker; box B: a diffusers worker with its own disk. Same PostgreSQL and
    bucket. load_model on A publishes the files; B's worker claims the job for a model it does not have yet,
    pulls it from the bucket (sha256-checked) and generates."""
    from sdserver.engines.diffusion.tiny import make_tiny_model

    imports = tmp_path / "imports"
    source = make_tiny_model(imports, "tiny")
    database_url = fresh_database(postgres_url)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    box_a = cluster_env(
        tmp_path / "box-a", port, database_url=database_url, engines="models", model_import_dirs=imports,
        **s3_overrides(s3_server),
    )  # fmt: skip
    box_b = {**box_a, "SDSERVER_DATA_DIR": str(tmp_path / "box-b"), "SDSERVER_ENGINES": "diffusers"}
    cluster.start(box_a, "serve", "--workers", "1")
    worker_b = cluster.start(box_b, "worker")
    wait_ready(base_url)

    loading = httpx.post(
        f"{base_url}/api/v1/enterprise/load_model",
        json={"key": ADMIN_KEY, "model_id": "tiny", "url": str(source), "model_type": "custom_ckpt"},
        timeout=30,
    ).json()
    assert loading["status"] == "success", loading
    wait_all_success(base_url, [loading["id"]], timeout=60)
    assert (tmp_path / "box-a" / "models" / "diffusers" / "tiny" / "model_index.json").is_file()

    [reply] = submit_many(base_url, 1, model_id="tiny", num_inference_steps=2, seed=7)
    [done] = wait_all_success(base_url, [reply["id"]], timeout=90).values()

    assert httpx.get(done["output"][0], timeout=10).content.startswith(b"\x89PNG")
    assert (tmp_path / "box-b" / "models" / "diffusers" / "tiny" / "model_index.json").is_file(), "B pulled it"
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        ran_on = conn.execute(sa.text("SELECT worker_id FROM jobs WHERE id = :id"), {"id": reply["id"]}).scalar_one()
    engine.dispose()
    assert f":{worker_b.pid}:" in ran_on
