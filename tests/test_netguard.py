"""The SSRF guard: what it refuses, what it lets through, and the limits it keeps on every fetch."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from sdserver import netguard
from sdserver.config import Settings
from sdserver.errors import FetchError
from sdserver.netguard import FetchedResponse, FetchPolicy, fetch_url, guarded_request, guarded_stream
from tests.support.http_host import Hang, HttpHost, Redirect, Reply, Slow, Stream
from tests.support.image_files import png_bytes

T = TypeVar("T")

LOCAL = FetchPolicy(allowlist=("127.0.0.1",), timeout_s=5.0, max_redirects=3, max_bytes=1_000_000)
CLOSED = FetchPolicy(allowlist=(), timeout_s=5.0, max_redirects=3, max_bytes=1_000_000)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def refusal(url: str, policy: FetchPolicy = CLOSED, **kwargs: Any) -> FetchError:
    with pytest.raises(FetchError) as caught:
        run(fetch_url(url, policy, **kwargs))
    return caught.value


@pytest.fixture
def host() -> Iterator[HttpHost]:
    with HttpHost() as running:
        yield running


REFUSED = [
    ("http://127.0.0.1/", "refused: 127.0.0.1 is a loopback address (not in the fetch allow-list)"),
    ("http://localhost:8080/x", "refused: localhost resolves to"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://10.0.0.1/", "10.0.0.1 is a private address"),
    ("http://172.16.5.4/", "172.16.5.4 is a private address"),
    ("http://192.168.1.1/", "192.168.1.1 is a private address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("http://[fd00:ec2::254]/", "a cloud metadata address"),
    ("http://100.100.100.200/", "a cloud metadata address"),
    ("http://0.0.0.0/", "0.0.0.0 is an unspecified address"),
    ("http://[::]/", ":: is an unspecified address"),
    ("http://100.64.0.1/", "100.64.0.1 is a carrier-grade NAT address"),
    ("http://[::ffff:127.0.0.1]/", "an IPv6 form of 127.0.0.1, a loopback address"),
    ("http://[::ffff:a9fe:a9fe]/", "an IPv6 form of 169.254.169.254, a cloud metadata address"),
    ("http://[2002:a00:1::]/", "an IPv6 form of 10.0.0.1, a private address"),
    ("http://[64:ff9b::c0a8:101]/", "an IPv6 form of 192.168.1.1, a private address"),
    ("http://[fe80::1]/", "fe80::1 is a link-local address"),
    ("http://[fc00::5]/", "a private address"),
    ("http://224.0.0.1/", "a multicast address"),
    ("http://240.0.0.1/", "a reserved address"),
    ("http://2130706433/", "2130706433 resolves to 127.0.0.1, a loopback address"),
    ("http://0x7f.0.0.1/", "0x7f.0.0.1 resolves to 127.0.0.1"),
    ("http://0x7f.1/", "0x7f.1 resolves to 127.0.0.1"),
    ("http://017700000001/", "017700000001 resolves to 127.0.0.1"),
    ("http://127.1/", "127.1 resolves to 127.0.0.1"),
    ("  http://127.0.0.1/  ", "127.0.0.1 is a loopback address"),
    ("file:///etc/passwd", "refused: only http and https URLs are fetched, got 'file'"),
    ("ftp://example.com/a.png", "got 'ftp'"),
    ("gopher://example.com/", "got 'gopher'"),
    ("//example.com/a.png", "only http and https URLs"),
    ("http://user@example.com/", "refused: URLs with a user name or password are not fetched"),
    ("http://user:pw@127.0.0.1/", "user name or password"),
    ("http://127.0.0.1:99999/", "is not a valid URL"),
    ("http:///a.png", "has no host"),
    ("http://exa mple.com/", "refused: 'exa mple.com' is not a valid host name"),
    ("http://93.184.216.34/a\x00b", "refused: the URL is not valid"),
]


@pytest.mark.parametrize(("url", "fragment"), REFUSED, ids=[url.strip() for url, _ in REFUSED])
def test_refused_targets_name_the_rule_and_the_address(url: str, fragment: str) -> None:
    error = refusal(url, field="init_image")
    assert fragment in error.reason
    assert error.field == "init_image"
    assert error.field_errors == {"init_image": [error.reason]}
    assert error.message == "Unable to fetch image from provided URL"


def test_a_refused_host_is_never_contacted(host: HttpHost) -> None:
    host.routes["/a.png"] = Reply(png_bytes(), "image/png")
    error = refusal(host.url("/a.png"))
    assert "127.0.0.1 is a loopback address" in error.reason
    assert host.requests == []


def test_an_allow_listed_address_is_fetched(host: HttpHost) -> None:
    image = png_bytes()
    host.routes["/a.png"] = Reply(image, "image/png", headers={"X-Extra": "yes"})
    response = run(fetch_url(host.url("/a.png"), LOCAL))
    assert response == FetchedResponse(
        status_code=200,
        headers=response.headers,
        content=image,
        final_url=host.url("/a.png"),
    )
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-extra"] == "yes"


@pytest.mark.parametrize(
    ("allowlist", "name"),
    [
        (("127.0.0.0/8",), "127.0.0.1"),
        (("10.0.0.0/8", "127.0.0.1"), "127.0.0.1"),
        (("localhost",), "localhost"),
        (("LOCALHOST.",), "localhost"),
    ],
    ids=["cidr", "one-of-several", "host-name", "host-name-spelled-differently"],
)
def test_allow_list_entries_can_be_cidrs_ips_or_names(host: HttpHost, allowlist: tuple[str, ...], name: str) -> None:
    host.routes["/ok"] = Reply(b"ok")
    policy = FetchPolicy(allowlist=allowlist, timeout_s=5.0, max_redirects=0, max_bytes=100)
    response = run(fetch_url(f"http://{name}:{host.port}/ok", policy))
    assert response.content == b"ok"
    # The request names the host it was meant for, even though the socket went to a checked IP.
    assert host.requests[-1].headers["host"] == f"{name}:{host.port}"


def test_an_allow_listed_name_does_not_open_other_names() -> None:
    policy = FetchPolicy(allowlist=("images.internal",), timeout_s=5.0, max_redirects=0, max_bytes=100)
    assert "loopback" in refusal("http://localhost/", policy).reason


def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
    host: HttpHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name is resolved once, checked, and the socket goes to that very IP."""
    lookups: list[str] = []

    def fake_resolve(name: str, port: int) -> list[str]:
        lookups.append(name)
        if name != "rebind.test":
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return ["127.0.0.1"]

    monkeypatch.setattr(netguard, "_resolve", fake_resolve)
    host.routes["/a"] = Reply(b"pinned")
    response = run(fetch_url(f"http://rebind.test:{host.port}/a?x=1", LOCAL))
    assert response.content == b"pinned"
    assert lookups == ["rebind.test"]
    assert host.requests[-1].headers["host"] == f"rebind.test:{host.port}"
    assert host.requests[-1].path == "/a?x=1"


def test_https_requests_carry_the_real_name_for_sni_and_certificate_checks() -> None:
    target = netguard._Target(
        url="https://images.example:8443/a.png",
        scheme="https",
        host="images.example",
        host_header="images.example:8443",
        port=8443,
        path_query="/a.png",
        addresses=("93.184.216.34",),
    )

    async def build() -> Any:
        import httpx

        async with httpx.AsyncClient() as client:
            return netguard._pinned_request(client, "GET", target, "2606:2800::1", {"host": "evil"}, None)

    request = run(build())
    assert str(request.url) == "https://[2606:2800::1]:8443/a.png"
    assert request.headers["host"] == "images.example:8443"
    assert request.extensions["sni_hostname"] == "images.example"


def test_an_unknown_host_is_reported_by_name() -> None:
    assert refusal("http://nope.invalid/x").reason == "could not resolve host 'nope.invalid'"


@pytest.mark.parametrize(
    "target",
    ["http://10.0.0.1/", "http://[::1]/", "http://169.254.169.254/latest/", "http://0x0a.1/"],
    ids=["private", "ipv6-loopback", "metadata", "numeric-spelling-of-private"],
)
def test_a_redirect_from_an_allowed_host_to_a_refused_one_is_refused(host: HttpHost, target: str) -> None:
    policy = FetchPolicy(allowlist=("127.0.0.1/32",), timeout_s=5.0, max_redirects=3, max_bytes=1000)
    host.routes["/jump"] = Redirect(target)
    error = refusal(host.url("/jump"), policy)
    assert error.reason.startswith(f"refused: redirect to {target} — ")
    assert len(host.requests) == 1


def test_a_redirect_to_another_scheme_is_refused(host: HttpHost) -> None:
    host.routes["/jump"] = Redirect("file:///etc/passwd", status=301)
    error = refusal(host.url("/jump"), LOCAL)
    assert error.reason == "refused: redirect to file:///etc/passwd — only http and https URLs are fetched, got 'file'"


def test_a_redirect_chain_within_the_allow_list_is_followed(host: HttpHost) -> None:
    host.routes["/one"] = Redirect(host.url("/two"), status=301)
    host.routes["/two"] = Redirect("/three", status=308)
    host.routes["/three"] = Reply(b"arrived")
    response = run(fetch_url(host.url("/one"), LOCAL))
    assert (response.content, response.final_url) == (b"arrived", host.url("/three"))
    assert [r.path for r in host.requests] == ["/one", "/two", "/three"]


@pytest.mark.parametrize(("hops", "ok"), [(3, True), (4, False)], ids=["at-the-limit", "one-over"])
def test_redirects_are_capped(host: HttpHost, hops: int, ok: bool) -> None:
    for index in range(hops):
        host.routes[f"/r{index}"] = Redirect(f"/r{index + 1}")
    host.routes[f"/r{hops}"] = Reply(b"end")
    if ok:
        assert run(fetch_url(host.url("/r0"), LOCAL)).content == b"end"
    else:
        assert refusal(host.url("/r0"), LOCAL).reason == "too many redirects (the limit is 3)"


def test_without_following_a_redirect_comes_back_as_is(host: HttpHost) -> None:
    host.routes["/jump"] = Redirect("http://10.0.0.1/")
    response = run(guarded_request("GET", host.url("/jump"), LOCAL, follow_redirects=False))
    assert (response.status_code, response.headers["location"]) == (302, "http://10.0.0.1/")


@pytest.mark.parametrize(
    ("status", "method", "body"),
    [(303, "GET", b""), (302, "GET", b""), (307, "POST", b"payload"), (308, "POST", b"payload")],
    ids=["303-becomes-get", "302-becomes-get", "307-keeps-post", "308-keeps-post"],
)
def test_redirect_method_rules(host: HttpHost, status: int, method: str, body: bytes) -> None:
    host.routes["/post"] = Redirect("/landing", status=status)
    host.routes["/landing"] = Reply(b"done")
    headers = {"Content-Type": "text/plain", "Authorization": "Bearer secret"}
    run(guarded_request("POST", host.url("/post"), LOCAL, headers=headers, content=b"payload"))
    landing = host.requests_to("/landing")[0]
    assert (landing.method, landing.body) == (method, body)
    assert landing.headers["authorization"] == "Bearer secret"  # same origin keeps credentials


def test_credentials_are_dropped_when_a_redirect_changes_host(host: HttpHost) -> None:
    host.routes["/post"] = Redirect(f"http://localhost:{host.port}/landing", status=307)
    host.routes["/landing"] = Reply(b"done")
    policy = FetchPolicy(allowlist=("127.0.0.1", "localhost"), timeout_s=5, max_redirects=2, max_bytes=100)
    run(guarded_request("POST", host.url("/post"), policy, headers={"Authorization": "Bearer s", "X-Sig": "1"}))
    landing = host.requests_to("/landing")[0]
    assert "authorization" not in landing.headers
    assert landing.headers["x-sig"] == "1"


def test_a_post_sends_its_body_and_headers(host: HttpHost) -> None:
    host.routes["/hook"] = Reply(b"", status=204)
    response = run(
        guarded_request("POST", host.url("/hook"), LOCAL, headers={"X-Signature": "abc"}, content=b'{"a":1}')
    )
    seen = host.requests_to("/hook")[0]
    assert response.status_code == 204
    assert (seen.method, seen.body, seen.headers["x-signature"]) == ("POST", b'{"a":1}', "abc")


@pytest.mark.parametrize("status", [404, 500, 302], ids=["not-found", "server-error", "redirect-not-followed"])
def test_fetch_url_refuses_anything_but_2xx(host: HttpHost, status: int) -> None:
    host.routes["/x"] = Reply(b"nope", status=status)
    assert refusal(host.url("/x"), LOCAL).reason == f"the server answered HTTP {status}"


def test_guarded_request_returns_error_statuses_to_the_caller(host: HttpHost) -> None:
    assert run(guarded_request("GET", host.url("/missing"), LOCAL)).status_code == 404


@pytest.mark.parametrize(
    "route",
    [
        Reply(b"x" * 2000),
        Reply(b"x" * 2000, send_length=False),
        Stream(declare_length=10**12, delay_s=0.05),
        Stream(),
    ],
    ids=["content-length", "no-content-length", "lying-huge-content-length", "endless-stream"],
)
def test_bodies_over_the_cap_are_cut_off(host: HttpHost, route: Reply | Stream) -> None:
    host.routes["/big"] = route
    policy = FetchPolicy(allowlist=("127.0.0.1",), timeout_s=5.0, max_redirects=0, max_bytes=1000)
    started = time.monotonic()
    error = refusal(host.url("/big"), policy)
    assert error.reason.startswith("response exceeds 1000 bytes")
    assert time.monotonic() - started < 2


def test_a_body_of_exactly_the_cap_is_accepted(host: HttpHost) -> None:
    host.routes["/edge"] = Reply(b"x" * 1000, send_length=False)
    policy = FetchPolicy(allowlist=("127.0.0.1",), timeout_s=5.0, max_redirects=0, max_bytes=1000)
    assert len(run(fetch_url(host.url("/edge"), policy)).content) == 1000


@pytest.mark.parametrize(
    "route",
    [Hang(), Slow(chunks=(b"a",) * 20, delay_s=0.1)],
    ids=["hangs", "trickles-each-read-in-time"],
)
def test_the_timeout_is_one_deadline_for_the_whole_fetch(host: HttpHost, route: Hang | Slow) -> None:
    host.routes["/slow"] = route
    policy = FetchPolicy(allowlist=("127.0.0.1",), timeout_s=0.5, max_redirects=0, max_bytes=1000)
    started = time.monotonic()
    assert refusal(host.url("/slow"), policy).reason == "timed out after 0.5 s"
    assert time.monotonic() - started < 1.5


def test_a_closed_port_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert refusal(f"http://127.0.0.1:{port}/", LOCAL).reason.startswith(f"could not connect to 127.0.0.1:{port}")


def test_policy_from_settings() -> None:
    settings = Settings(fetch_allowlist=["10.0.0.0/8", "minio"], fetch_timeout_s=3, fetch_max_redirects=2)
    assert FetchPolicy.from_settings(settings) == FetchPolicy(("10.0.0.0/8", "minio"), 3.0, 2, 10 * 1024 * 1024)
    assert FetchPolicy.from_settings(settings, max_bytes=5).max_bytes == 5


async def _stream(url: str, policy: FetchPolicy) -> tuple[int, bytes, str]:
    """Status, body and the Accept-Encoding sent, read chunk by chunk as a model download does."""
    async with guarded_stream(url, policy) as response:
        body = b""
        async for chunk in response.aiter_raw():
            body += chunk
        return response.status_code, body, response.request.headers["accept-encoding"]


def stream_refusal(url: str, policy: FetchPolicy) -> FetchError:
    with pytest.raises(FetchError) as caught:
        run(_stream(url, policy))
    return caught.value


def test_a_stream_follows_checked_redirects_and_leaves_the_body_to_the_reader(host: HttpHost) -> None:
    host.routes["/model"] = Redirect("/files/model.safetensors", status=302)
    host.routes["/files/model.safetensors"] = Stream(total=200_000)
    # The cap is the reader's to keep: a stream hands over more than max_bytes if the reader asks.
    policy = FetchPolicy(allowlist=("127.0.0.1",), timeout_s=5.0, max_redirects=1, max_bytes=10)
    assert run(_stream(host.url("/model"), policy)) == (200, b"\0" * 200_000, "identity")
    assert [r.path for r in host.requests] == ["/model", "/files/model.safetensors"]


def test_a_stream_is_refused_like_any_fetch(host: HttpHost) -> None:
    host.routes["/model"] = Redirect("http://169.254.169.254/latest/")
    error = stream_refusal(host.url("/model"), LOCAL)
    assert error.reason.startswith("refused: redirect to http://169.254.169.254/latest/ — ")
    assert error.field == "url" and len(host.requests) == 1
    assert "loopback" in stream_refusal(host.url("/model"), CLOSED).reason


def test_a_stream_bounds_each_read_not_the_whole_transfer(host: HttpHost) -> None:
    host.routes["/trickle"] = Slow(chunks=(b"a",) * 8, delay_s=0.1)
    host.routes["/hang"] = Hang()
    policy = FetchPolicy(allowlist=("127.0.0.1",), timeout_s=0.5, max_redirects=0, max_bytes=1000)
    assert run(_stream(host.url("/trickle"), policy))[1] == b"a" * 8, "0.8 s in all, each read in time"
    assert stream_refusal(host.url("/hang"), policy).reason == "timed out after 0.5 s without data"
