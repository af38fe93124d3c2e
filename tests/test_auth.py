"""Key store behaviour on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sdserver.auth import KeyStore, Role, hash_key
from sdserver.database import api_keys, create_db_engine
from sdserver.errors import InvalidKeyError, NotFoundError, ValidationError


@pytest.fixture(params=["sqlite", "postgresql"])
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    url = f"sqlite:///{tmp_path / 'keys.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_db_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.delete(api_keys))
    yield KeyStore(engine)
    engine.dispose()


def test_created_key_verifies_with_its_role(keys: KeyStore) -> None:
    admin, admin_secret = keys.create("ops", Role.ADMIN)
    _user, user_secret = keys.create("app", Role.USER)
    assert keys.verify(admin_secret).is_admin
    assert keys.verify(admin_secret).id == admin.id
    assert not keys.verify(user_secret).is_admin
    assert keys.verify(user_secret).name == "app"
    assert admin_secret != user_secret and admin_secret.startswith("sd_")


def test_only_the_hash_is_stored(keys: KeyStore) -> None:
    _, secret = keys.create("app")
    with keys._engine.connect() as conn:
        rows = [tuple(str(v) for v in row) for row in conn.execute(sa.select(api_keys)).all()]
    flat = " ".join(" ".join(row) for row in rows)
    assert secret not in flat
    assert hash_key(secret) in flat


@pytest.mark.parametrize("bad", [None, "", "sd_wrong", "x" * 500], ids=["none", "empty", "wrong", "long"])
def test_wrong_keys_are_refused(keys: KeyStore, bad: str | None) -> None:
    keys.create("app")
    with pytest.raises(InvalidKeyError) as info:
        keys.verify(bad)
    assert info.value.message == "Invalid Api Key"


def test_a_near_miss_is_refused(keys: KeyStore) -> None:
    _, secret = keys.create("app")
    with pytest.raises(InvalidKeyError):
        keys.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    with pytest.raises(InvalidKeyError):
        keys.verify(secret + " ")


def test_revoked_key_stops_working_at_once(keys: KeyStore) -> None:
    key, secret = keys.create("app")
    keys.verify(secret)
    revoked = keys.revoke(key.id)
    assert revoked.revoked_at is not None
    with pytest.raises(InvalidKeyError):
        keys.verify(secret)
    assert keys.count_active() == 0
    # Revoking again is harmless and keeps the first time.
    assert keys.revoke(key.id).revoked_at == revoked.revoked_at


def test_revoking_an_unknown_id_says_so(keys: KeyStore) -> None:
    with pytest.raises(NotFoundError, match="No key with id 999"):
        keys.revoke(999)


def test_operator_key_is_installed_once(keys: KeyStore) -> None:
    first, created = keys.ensure("operator-chosen-key-123", name="env", role=Role.ADMIN)
    again, created_again = keys.ensure("operator-chosen-key-123", name="env", role=Role.ADMIN)
    assert created and not created_again
    assert first.id == again.id
    assert keys.verify("operator-chosen-key-123").is_admin
    assert len(keys.list()) == 1


def test_short_operator_keys_and_empty_names_are_refused(keys: KeyStore) -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        keys.ensure("short", name="env", role=Role.ADMIN)
    with pytest.raises(ValidationError, match="name: must not be empty"):
        keys.create("  ")


def test_listing_never_shows_secrets(keys: KeyStore) -> None:
    _, secret = keys.create("one")
    keys.create("two", Role.ADMIN)
    listed = keys.list()
    assert [k.name for k in listed] == ["one", "two"]
    assert listed[0].prefix == secret[:8]
    assert all(secret not in repr(k) for k in listed)


def test_concurrent_verification_from_threads(keys: KeyStore) -> None:
    _, secret = keys.create("app")
    failures: list[BaseException] = []

    def check() -> None:
        try:
            for _ in range(20):
                keys.verify(secret)
        except BaseException as exc:  # collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
