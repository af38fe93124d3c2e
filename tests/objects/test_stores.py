"""Object store behaviour, the same tests over the local folder and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest
from botocore.exceptions import ClientError

from sdserver.config import Settings
from sdserver.errors import NotFoundError, StorageError
from sdserver.objects.base import ObjectStore, is_server_key, make_object_key, temp_expires_at
from sdserver.objects.local import LocalObjectStore
from sdserver.objects.s3 import S3ObjectStore
from tests.support.s3_server import S3Server

BASE_URL = "http://sd.test:8000"
SECRET = b"test-signing-secret"
TTL = 24 * 3600
PNG = "image/png"


def _payload(size: int = 70_000) -> bytes:
    """Bytes no codec or text mode would leave alone: NULs, CR/LF and every byte value."""
    return (bytes(range(256)) * (size // 256 + 1))[:size] + uuid.uuid4().bytes


def _s3_settings(server: S3Server, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "storage": "s3",
        "s3_endpoint_url": server.endpoint_url,
        "s3_bucket": server.bucket,
        "s3_region": server.region,
        "s3_access_key_id": server.access_key,
        "s3_secret_access_key": server.secret_key,
        # A fresh prefix per test isolates tests that share the session's bucket (purge counts, listings).
        "s3_prefix": f"t-{uuid.uuid4().hex[:12]}",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def local_store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects", BASE_URL, SECRET, TTL)


@pytest.fixture
def s3_store(s3_server: S3Server) -> S3ObjectStore:
    return S3ObjectStore.from_settings(_s3_settings(s3_server))


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    fixture: ObjectStore = request.getfixturevalue(f"{request.param}_store")
    return fixture


# --- keys -------------------------------------------------------------------------------------------------


def test_permanent_key_shape() -> None:
    now = datetime(2025, 3, 9, 23, 59, tzinfo=UTC)
    key = make_object_key("uploads", "png", temp=False, now=now)
    assert re.fullmatch(r"uploads/2025/03/09/[0-9a-f]{32}\.png", key)
    assert is_server_key(key)
    assert temp_expires_at(key, TTL) is None


def test_temp_key_lives_under_temp_and_carries_its_creation_time() -> None:
    now = datetime(2025, 3, 9, 12, 0, tzinfo=UTC)
    key = make_object_key("outputs", "webp", temp=True, now=now)
    assert re.fullmatch(rf"temp/outputs/2025/03/09/{int(now.timestamp())}-[0-9a-f]{{32}}\.webp", key)
    assert temp_expires_at(key, TTL) == now + timedelta(seconds=TTL)


def test_keys_are_unique() -> None:
    keys = {make_object_key("outputs", "jpg", temp=flag) for flag in (False, True) for _ in range(500)}
    assert len(keys) == 1000


GOOD = "uploads/2025/01/02/" + "a" * 32 + ".png"
BAD_KEYS = [
    "../../etc/passwd",
    "/etc/passwd",
    "/" + GOOD,
    "uploads/../x",
    "uploads/2025/01/02/../../../../etc/passwd",
    GOOD.replace("uploads", "downloads"),
    GOOD.replace(".png", ".exe"),
    GOOD.replace("a" * 32, "A" * 32),
    GOOD + "\n",
    "temp/" + GOOD,  # a temp key without its creation time
    "uploads/2025/01/02/%2e%2e/" + "a" * 32 + ".png",
    "uploads\\2025\\01\\02\\" + "a" * 32 + ".png",
    "uploads/２０２５/01/02/" + "a" * 32 + ".png",  # non-ASCII digits
    "",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_foreign_keys_are_refused_by_every_method(store: ObjectStore, key: str) -> None:
    assert not is_server_key(key)
    calls: list[Callable[[], object]] = [
        lambda: store.put(key, b"x", PNG),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.url_for(key),
    ]
    for call in calls:
        with pytest.raises(NotFoundError):
            call()


def test_local_path_for_stays_under_root(local_store: LocalObjectStore) -> None:
    key = make_object_key("uploads", "png", temp=False)
    assert local_store.path_for(key) == local_store.root.joinpath(*key.split("/"))
    with pytest.raises(NotFoundError):
        local_store.path_for("uploads/../../etc/passwd")


# --- bytes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_put_get_round_trip(store: ObjectStore, ext: str) -> None:
    key = make_object_key("outputs", ext, temp=False)  # type: ignore[arg-type]
    data = _payload()
    content_type = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[ext]
    stored = store.put(key, data, content_type)
    assert (stored.key, stored.size, stored.content_type, stored.expires_at) == (key, len(data), content_type, None)
    assert stored.url == store.url_for(key)
    assert store.get(key) == data
    assert store.exists(key)


def test_put_temp_reports_expiry(store: ObjectStore) -> None:
    key = make_object_key("uploads", "png", temp=True)
    stored = store.put(key, b"temp bytes", PNG)
    assert stored.expires_at == temp_expires_at(key, TTL)
    assert stored.expires_at is not None and stored.expires_at > datetime.now(UTC) + timedelta(hours=23)


def test_put_refuses_content_type_that_contradicts_the_key(store: ObjectStore) -> None:
    key = make_object_key("uploads", "png", temp=False)
    with pytest.raises(ValueError, match="image/jpeg"):
        store.put(key, b"x", "image/jpeg")
    assert not store.exists(key)


def test_missing_object(store: ObjectStore) -> None:
    key = make_object_key("outputs", "png", temp=False)
    with pytest.raises(NotFoundError):
        store.get(key)
    assert not store.exists(key)
    store.delete(key)  # idempotent: deleting nothing is fine


def test_delete_removes_and_is_idempotent(store: ObjectStore) -> None:
    key = make_object_key("outputs", "png", temp=False)
    store.put(key, b"bytes", PNG)
    store.delete(key)
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(NotFoundError):
        store.get(key)


def test_overwrite_replaces_bytes(store: ObjectStore) -> None:
    key = make_object_key("outputs", "png", temp=False)
    store.put(key, b"first", PNG)
    store.put(key, b"second", PNG)
    assert store.get(key) == b"second"


def test_concurrent_puts_do_not_collide(store: ObjectStore) -> None:
    written: dict[str, bytes] = {}
    lock = threading.Lock()
    shared_key = make_object_key("outputs", "png", temp=False)
    shared_payloads = [f"shared-{n}".encode() * 1000 for n in range(8)]
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            store.put(shared_key, shared_payloads[worker], PNG)
            for _ in range(6):
                key = make_object_key("outputs", "png", temp=worker % 2 == 0)
                data = _payload(5_000)
                store.put(key, data, PNG)
                with lock:
                    written[key] = data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(written) == 48
    assert all(store.get(key) == data for key, data in written.items())
    # Writers of one key race; the survivor is one whole payload, never a mix.
    assert store.get(shared_key) in shared_payloads


def test_local_put_leaves_no_partial_files(local_store: LocalObjectStore) -> None:
    key = make_object_key("uploads", "png", temp=False)
    local_store.put(key, b"data", PNG)
    assert sorted(p.name for p in local_store.path_for(key).parent.iterdir()) == [key.rsplit("/", 1)[1]]


# --- links ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temp", [False, True], ids=["permanent", "temp"])
def test_key_from_url_round_trip(store: ObjectStore, temp: bool) -> None:
    key = make_object_key("uploads", "png", temp=temp)
    url = store.url_for(key)
    assert store.key_from_url(url) == key
    assert store.key_from_url(f"  {url}  ") == key
    parts = urlsplit(url)
    assert store.key_from_url(urlunsplit(parts._replace(query="other=1"))) == key


def _look_alikes(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", f":{parts.port}" if parts.port else ""
    key_at = parts.path.rindex("uploads/")
    return {
        "other host": urlunsplit(parts._replace(netloc="evil.test" + port)),
        "suffix host": urlunsplit(parts._replace(netloc=f"{host}.evil.test{port}")),
        "prefix host": urlunsplit(parts._replace(netloc=f"evil{host}{port}")),
        "user info": urlunsplit(parts._replace(netloc=f"{parts.netloc}@evil.test")),
        # Reaches our host, but a URL with credentials in it is nothing this store ever issued.
        "user info on our host": urlunsplit(parts._replace(netloc=f"evil.test@{parts.netloc}")),
        "other port": urlunsplit(parts._replace(netloc=f"{host}:1")),
        "other scheme": urlunsplit(parts._replace(scheme="ftp")),
        "path above": urlunsplit(parts._replace(path="/evil" + parts.path)),
        "dot dot": urlunsplit(parts._replace(path=parts.path[:key_at] + "uploads/../" + parts.path[key_at:])),
        "encoded dot dot": urlunsplit(parts._replace(path=parts.path[:key_at] + "%2e%2e/etc/passwd")),
        "traversal": urlunsplit(parts._replace(path=parts.path[:key_at] + "../../etc/passwd")),
        "not a key": urlunsplit(parts._replace(path=parts.path[:key_at] + "uploads/x.png")),
    }


def test_key_from_url_refuses_foreign_and_look_alike_urls(store: ObjectStore) -> None:
    key = make_object_key("uploads", "png", temp=False)
    look_alikes = _look_alikes(store.url_for(key))
    assert len(look_alikes) == 12
    for name, url in look_alikes.items():
        assert store.key_from_url(url) is None, name
    for junk in [
        "",
        "not a url",
        "data:image/png;base64,AAAA",
        "file:///etc/passwd",
        "http://[::1/x",
        key,
        "/files/" + key,
    ]:
        assert store.key_from_url(junk) is None, junk


def test_local_permanent_link(local_store: LocalObjectStore) -> None:
    key = make_object_key("uploads", "png", temp=False)
    local_store.put(key, b"served bytes", PNG)
    url = local_store.url_for(key)
    assert url == f"{BASE_URL}/files/{key}"
    # What the API's /files route does: map the path back to a key, check the link, read the file.
    assert local_store.check_link(key, None, None)
    assert local_store.path_for(key).read_bytes() == b"served bytes"


def _link_params(url: str) -> tuple[str, str]:
    query = parse_qs(urlsplit(url).query)
    return query["expires"][0], query["sig"][0]


def test_local_temp_link_is_signed_and_deterministic(local_store: LocalObjectStore) -> None:
    created = datetime.now(UTC).replace(microsecond=0)
    key = make_object_key("outputs", "png", temp=True, now=created)
    url = local_store.url_for(key)  # before the object exists: future_links are allocated at submit
    local_store.put(key, b"later", PNG)
    assert local_store.url_for(key) == url
    expires, sig = _link_params(url)
    assert int(expires) == int(created.timestamp()) + TTL
    assert urlsplit(url).path == f"/files/{key}"
    assert local_store.check_link(key, expires, sig)


def test_local_temp_link_refuses_tampering_and_expiry(local_store: LocalObjectStore, tmp_path: Path) -> None:
    key = make_object_key("outputs", "png", temp=True)
    other_key = make_object_key("outputs", "png", temp=True)
    expires, sig = _link_params(local_store.url_for(key))
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert not local_store.check_link(key, expires, flipped)
    assert not local_store.check_link(key, expires, sig.upper())
    assert not local_store.check_link(key, str(int(expires) + 3600), sig)  # extended expiry
    assert not local_store.check_link(other_key, expires, sig)  # signature of another key
    assert not local_store.check_link(key, None, sig)
    assert not local_store.check_link(key, expires, None)
    assert not local_store.check_link(key, "１２３", sig)
    other_secret = LocalObjectStore(tmp_path / "o", BASE_URL, b"another secret", TTL)
    assert not other_secret.check_link(key, expires, sig)
    expiry = datetime.fromtimestamp(int(expires), UTC)
    assert local_store.check_link(key, expires, sig, now=expiry - timedelta(seconds=1))
    assert not local_store.check_link(key, expires, sig, now=expiry)
    assert not local_store.check_link("../" + key, expires, sig)


def test_local_store_refuses_empty_secret(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="signing_secret"):
        LocalObjectStore(tmp_path, BASE_URL, b"", TTL)


@pytest.mark.parametrize("temp", [False, True], ids=["permanent", "temp"])
def test_s3_presigned_link_downloads_the_bytes(s3_store: S3ObjectStore, temp: bool) -> None:
    key = make_object_key("outputs", "png", temp=temp)
    url = s3_store.url_for(key)  # allocated before the object exists
    data = _payload()
    s3_store.put(key, data, PNG)
    reply = httpx.get(url, timeout=10)
    assert reply.status_code == 200
    assert reply.content == data
    assert reply.headers["content-type"] == PNG
    expires_in = parse_qs(urlsplit(url).query)["X-Amz-Expires"][0]
    assert expires_in == ("86400" if temp else str(7 * 24 * 3600))


def test_s3_presigned_link_refuses_tampering(s3_store: S3ObjectStore) -> None:
    key = make_object_key("outputs", "png", temp=True)
    s3_store.put(key, b"secret image", PNG)
    other = make_object_key("outputs", "png", temp=True)
    s3_store.put(other, b"other image", PNG)
    url = s3_store.url_for(key)
    assert httpx.get(url.replace(key, other), timeout=10).status_code == 403
    assert httpx.get(url.split("?")[0], timeout=10).status_code == 403


def test_s3_temp_object_carries_expires_header(s3_server: S3Server) -> None:
    prefix = f"exp-{uuid.uuid4().hex[:12]}"
    store = S3ObjectStore.from_settings(_s3_settings(s3_server, s3_prefix=prefix))
    key = make_object_key("outputs", "png", temp=True)
    stored = store.put(key, b"x", PNG)
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key=f"{prefix}/{key}")
    assert stored.expires_at is not None
    expected = stored.expires_at.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert head["ResponseMetadata"]["HTTPHeaders"]["expires"] == expected


@pytest.fixture
def public_bucket(s3_server: S3Server) -> str:
    """A bucket anonymous clients may read, as a CDN or r2.dev front would make it."""
    bucket = f"public-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    client.put_bucket_acl(Bucket=bucket, ACL="public-read")
    return bucket


def test_s3_public_link(s3_server: S3Server, public_bucket: str) -> None:
    public_base = f"{s3_server.endpoint_url}/{public_bucket}"
    store = S3ObjectStore.from_settings(
        _s3_settings(s3_server, s3_bucket=public_bucket, s3_public_base_url=public_base, s3_prefix="images/")
    )
    key = make_object_key("uploads", "jpg", temp=False)
    data = _payload()
    stored = store.put(key, data, "image/jpeg")
    assert stored.url == f"{public_base}/images/{key}"
    reply = httpx.get(stored.url, timeout=10)  # anonymous: no signature in the URL
    assert (reply.status_code, reply.content) == (200, data)
    assert store.key_from_url(stored.url) == key
    temp_key = make_object_key("uploads", "jpg", temp=True)
    store.put(temp_key, data, "image/jpeg")
    temp_url = store.url_for(temp_key)
    assert "X-Amz-Signature=" in temp_url  # temp objects stay presigned: a public link would never expire
    assert store.key_from_url(temp_url) == temp_key
    assert httpx.get(temp_url, timeout=10).content == data


def test_s3_recognises_virtual_host_links(s3_store: S3ObjectStore, s3_server: S3Server) -> None:
    key = make_object_key("uploads", "png", temp=False)
    parts = urlsplit(s3_store.url_for(key))
    path = parts.path.removeprefix(f"/{s3_server.bucket}")
    virtual = urlunsplit(parts._replace(netloc=f"{s3_server.bucket}.{parts.netloc}", path=path))
    assert s3_store.key_from_url(virtual) == key
    assert s3_store.key_from_url(urlunsplit(parts._replace(netloc=f"other.{parts.netloc}", path=path))) is None


# --- purge ------------------------------------------------------------------------------------------------


def test_purge_removes_only_expired_temp_objects(store: ObjectStore) -> None:
    temps = [make_object_key("outputs", "png", temp=True) for _ in range(3)]
    permanent = make_object_key("outputs", "png", temp=False)
    for key in [*temps, permanent]:
        store.put(key, b"data", PNG)
    now = datetime.now(UTC)
    assert store.purge_expired(now=now) == 0
    assert all(store.exists(key) for key in temps)
    assert store.purge_expired(now=now + timedelta(seconds=TTL + 120)) == 3
    assert not any(store.exists(key) for key in temps)
    assert store.exists(permanent)
    assert store.purge_expired(now=now + timedelta(seconds=TTL + 120)) == 0


def test_local_purge_uses_the_creation_time_in_the_key(local_store: LocalObjectStore) -> None:
    now = datetime.now(UTC)
    old = make_object_key("uploads", "png", temp=True, now=now - timedelta(seconds=TTL + 1))
    fresh = make_object_key("uploads", "png", temp=True, now=now - timedelta(seconds=TTL - 60))
    for key in (old, fresh):
        local_store.put(key, b"data", PNG)
    # A file written late (a long-queued job) still goes when its link expires, whatever its mtime.
    assert local_store.purge_expired() == 1
    assert not local_store.exists(old)
    assert local_store.exists(fresh)


def test_local_purge_ignores_foreign_files(local_store: LocalObjectStore) -> None:
    stray = local_store.root / "temp" / "notes.txt"
    stray.parent.mkdir(parents=True)
    stray.write_text("operator file")
    os.utime(stray, (0, 0))
    assert local_store.purge_expired(now=datetime.now(UTC) + timedelta(days=365)) == 0
    assert stray.exists()


# --- probe and failures -----------------------------------------------------------------------------------


def test_probe_succeeds_and_leaves_nothing_behind(store: ObjectStore) -> None:
    store.probe()
    store.probe()
    assert store.purge_expired(now=datetime.now(UTC) + timedelta(days=30)) == 0


def test_s3_server_refuses_wrong_credentials(s3_server: S3Server) -> None:
    with pytest.raises(ClientError) as caught:
        s3_server.client(secret_key="wrong-" + s3_server.secret_key).list_buckets()
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_probe_with_wrong_secret_raises_without_leaking_it(s3_server: S3Server) -> None:
    bad_secret = "wrong-secret-" + uuid.uuid4().hex
    store = S3ObjectStore.from_settings(_s3_settings(s3_server, s3_secret_access_key=bad_secret), max_attempts=1)
    with pytest.raises(StorageError) as caught:
        store.probe()
    assert "SignatureDoesNotMatch" in caught.value.message
    for text in (str(caught.value), repr(caught.value), str(caught.value.__cause__)):
        assert bad_secret not in text
        assert s3_server.secret_key not in text


def test_probe_with_unreachable_endpoint_fails_fast(s3_server: S3Server) -> None:
    settings = _s3_settings(s3_server, s3_endpoint_url=f"http://127.0.0.1:{_closed_port()}")
    store = S3ObjectStore.from_settings(settings, connect_timeout_s=0.5, read_timeout_s=1, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        store.probe()
    assert time.monotonic() - started < 5
    assert "EndpointConnectionError" in caught.value.message
    assert s3_server.secret_key not in str(caught.value)


def test_s3_missing_bucket_is_a_storage_error_not_a_missing_object(s3_server: S3Server) -> None:
    store = S3ObjectStore.from_settings(_s3_settings(s3_server, s3_bucket=f"absent-{uuid.uuid4().hex[:8]}"))
    with pytest.raises(StorageError, match="NoSuchBucket"):
        store.get(make_object_key("uploads", "png", temp=False))


def test_s3_invalid_endpoint_is_a_storage_error(s3_server: S3Server) -> None:
    with pytest.raises(StorageError, match="Invalid S3 settings"):
        S3ObjectStore.from_settings(_s3_settings(s3_server, s3_endpoint_url="not a url"))


def test_local_probe_fails_when_root_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the objects folder should be")
    store = LocalObjectStore(blocker, BASE_URL, SECRET, TTL)
    with pytest.raises(StorageError, match="Could not write"):
        store.probe()


# --- factory ----------------------------------------------------------------------------------------------


def test_create_object_store_local(tmp_path: Path) -> None:
    from sdserver.objects.switching import create_object_store

    settings = Settings(data_dir=tmp_path, base_url="https://sd.example/api/")
    store = create_object_store(settings, signing_secret=SECRET)
    assert isinstance(store, LocalObjectStore)
    key = make_object_key("uploads", "png", temp=False)
    stored = store.put(key, b"bytes", PNG)
    assert stored.url == f"https://sd.example/api/files/{key}"
    assert store.key_from_url(stored.url) == key
    assert store.key_from_url(f"https://sd.example/files/{key}") is None
    assert (tmp_path / "objects" / key).read_bytes() == b"bytes"


def test_create_object_store_s3(s3_server: S3Server) -> None:
    from sdserver.objects.switching import create_object_store

    store = create_object_store(_s3_settings(s3_server), signing_secret=SECRET)
    assert isinstance(store, S3ObjectStore)
    store.probe()
