"""The official `modelslab-py` SDK, unchanged but for its base URL, against a live server: its shared calls
(system_details, clear_cache, clear_queue, restart, update, fetch) under each SDK class prefix."""

from __future__ import annotations

import pytest
from modelslab_py.core.apis.community import Community
from modelslab_py.core.apis.image_editing import Image_editing
from modelslab_py.core.apis.realtime import Realtime
from modelslab_py.core.client import Client

from sdserver.auth import Role
from tests.support.live_server import LiveServer

# The SDK's schemas use pydantic v1-style config; its deprecation warnings are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SDK_CLASSES = [Community, Image_editing, Realtime]


def sdk_client(live: LiveServer, key: str) -> Client:
    client = Client(api_key=key, fetch_retry=1, fetch_timeout=0)
    # The one change an existing app makes: the base URL.
    client.base_url = live.url("/api/")
    return client


@pytest.mark.parametrize("api_class", SDK_CLASSES, ids=lambda cls: cls.__name__)
def test_the_sdks_admin_calls_work_under_every_class_prefix(local_server: LiveServer, api_class: type) -> None:
    api = api_class(sdk_client(local_server, local_server.new_key(Role.ADMIN)), enterprise=True)
    details = api.system_details()
    assert details["status"] == "ok", details
    assert api.clear_cache()["status"] == "success"
    assert api.clear_queue()["status"] == "success"
    assert api.restart()["status"] == "success"
    update = api.update()
    assert update["updated"] is False and "operator upgrades" in update["message"]  # self-hosted
    assert api.fetch("999999")["message"] == "Request not found"


def test_the_sdks_user_key_is_refused_on_admin_calls(local_server: LiveServer) -> None:
    api = Community(sdk_client(local_server, local_server.new_key(Role.USER)), enterprise=True)
    reply = api.system_details()
    assert reply["status"] == "error"
