"""Keys in `Authorization: Basic`, as A1111's --api-auth clients send them."""

from __future__ import annotations

import base64

import pytest

from sdserver.api.dialects.keys import basic_auth_key


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("header", "key"),
    [
        (basic("me:sd_secret"), "sd_secret"),
        (basic("sd_secret:"), "sd_secret"),
        (basic("sd_secret"), "sd_secret"),
        (basic("me:pass:with:colons"), "pass:with:colons"),
        (basic(":"), None),
        ("Basic !!!", None),
        ("Bearer sd_secret", None),
        ("", None),
    ],
)
def test_the_password_is_the_key_else_the_user_name(header: str, key: str | None) -> None:
    assert basic_auth_key(header) == key
