"""Live servers for the dialect tests: one with a real worker (tiny SD model, seeded Real-ESRGAN weights), one with
no worker at all (jobs stay queued: progress, interrupt, timeouts, caps)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sdserver.auth import Role
from sdserver.engines.factory import build_engines
from sdserver.engines.upscale.tiny import write_official_weights
from tests.support.live_server import LiveServer, make_settings, run_server, worker_thread
from tests.support.tiny_sd import make_tiny_model

MODEL = "tiny-sd"
SIZE = 64


@pytest.fixture(scope="package")
def working(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live API and an in-process worker running the diffusers and upscale engines on tiny models."""
    data_dir = tmp_path_factory.mktemp("dialects")
    make_tiny_model(data_dir / "models", MODEL)
    weights = data_dir / "models" / "upscalers"
    weights.mkdir(parents=True)
    write_official_weights(weights, "realesr-general-x4v3", "params")
    settings = make_settings(
        data_dir,
        engines=["diffusers", "upscale"],
        worker_poll_s=0.05,
        dialect_wait_s=120.0,
        max_upscale_input_pixels=SIZE * SIZE,
    )
    with run_server(settings) as live:
        services = live.services
        # The persisted default (as `models make-tiny` sets it), so an admin may switch it through A1111 options.
        services.control.save_default_model(MODEL)
        with worker_thread(live, build_engines(services.settings, services.objects), "w1", join_s=30.0):
            yield live


@pytest.fixture(scope="package")
def working_key(working: LiveServer) -> str:
    return working.new_key(Role.USER, "dialect-user")


@pytest.fixture
def queue_only(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live API with no worker: every job stays queued; a dialect request gives up after 1 s (a `settings`
    marker overrides)."""
    data_dir = tmp_path_factory.mktemp("queue")
    make_tiny_model(data_dir / "models", MODEL)
    marker = request.node.get_closest_marker("settings")
    overrides = {"dialect_wait_s": 1.0, "max_active_jobs_per_key": 2, **(marker.kwargs if marker else {})}
    settings = make_settings(data_dir, engines=["test"], default_model_id=MODEL, **overrides)
    with run_server(settings) as live:
        yield live
