"""SSRF-guarded outbound HTTP: every server-side fetch (init images, webhooks, model downloads) goes here."""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import anyio
import anyio.to_thread
import certifi
import httpx

from sdserver.config import Settings
from sdserver.errors import FetchError

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# 301/302/303 become a body-less GET, as browsers and httpx do; 307/308 replay method and body.
_REDIRECT_TO_GET = frozenset({301, 302, 303})
# Credentials meant for the first host must not follow a redirect to another one.
_CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")

_METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_HOST_CHARS = re.compile(r"[A-Za-z0-9._:%-]+")


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of one outbound fetch. `allowlist` entries are IPs, CIDRs or host names that may be private."""

    allowlist: tuple[str, ...]
    timeout_s: float
    max_redirects: int
    max_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings, *, max_bytes: int | None = None) -> FetchPolicy:
        return cls(
            allowlist=tuple(settings.fetch_allowlist),
            timeout_s=settings.fetch_timeout_s,
            max_redirects=settings.fetch_max_redirects,
            max_bytes=settings.max_image_bytes if max_bytes is None else max_bytes,
        )


@dataclass(frozen=True)
class FetchedResponse:
    """A fully read reply. `headers` has lowercase names; `final_url` is the URL after redirects."""

    status_code: int
    headers: dict[str, str]
    content: bytes
    final_url: str


@dataclass(frozen=True)
class _Target:
    """One checked hop: the URL as given, and the addresses it may be reached at (all of them checked)."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, without brackets
    host_header: str
    port: int
    path_query: str
    addresses: tuple[str, ...]


class _Refused(Exception):
    """A hop broke a guard rule; `detail` says which, without the 'refused:' prefix."""

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(detail)


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """Building a TLS context costs ~20 ms of CPU; one shared, read-only context serves every fetch."""
    # certifi's bundle, as httpx uses by default, so behaviour does not depend on the host's CA store.
    return ssl.create_default_context(cafile=certifi.where())


@functools.lru_cache(maxsize=64)
def _parse_allowlist(entries: tuple[str, ...]) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    networks: list[IPNetwork] = []
    names: set[str] = set()
    for entry in entries:
        text = entry.strip().strip("[]")
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            names.add(text.lower().rstrip("."))
    return tuple(networks), frozenset(names)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a v6 form carries (mapped, compatible, 6to4, NAT64), which is what gets reached."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    # Deprecated IPv4-compatible form ::a.b.c.d (but not :: and ::1, which are classified as v6).
    if int(ip) >> 32 == 0 and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip))
    return None


def _classify(ip: IPAddress) -> str | None:
    """Why an address must not be fetched from ("a loopback address"), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        v4 = _embedded_v4(ip)
        if v4 is not None:
            inner = _classify(v4)
            return f"an IPv6 form of {v4}, {inner}" if inner else None
    checks = (
        (ip in _METADATA, "a cloud metadata address"),
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip in _CGNAT, "a carrier-grade NAT address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (not ip.is_global, "a non-public address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _allowed(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and (v4 := _embedded_v4(ip)) is not None:
        candidates.append(v4)
    return any(c in n for c in candidates for n in networks)


def _resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to; getaddrinfo also turns numeric spellings (0x7f.1) into real IPs."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _split_url(url: str) -> tuple[SplitResult, str, int]:
    """Scheme, userinfo and port rules; returns the parts, the ASCII host and the port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _Refused(f"{url!r} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _Refused(f"only http and https URLs are fetched, got {scheme or url!r}")
    if "@" in parts.netloc:
        raise _Refused("URLs with a user name or password are not fetched")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _Refused(f"{url!r} has no host")
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_host = ""
    if not _HOST_CHARS.fullmatch(ascii_host):
        raise _Refused(f"{host!r} is not a valid host name")
    host = ascii_host
    return parts, host, port or (443 if scheme == "https" else 80)


async def _check_hop(url: str, allowlist: tuple[str, ...]) -> _Target:
    """Resolve one hop's host and refuse it if any address is non-public and not allow-listed."""
    parts, host, port = _split_url(url)
    networks, names = _parse_allowlist(allowlist)
    try:
        # The thread may outlive a cancelled fetch; abandoning it keeps the overall deadline honest.
        addresses = await anyio.to_thread.run_sync(_resolve, host, port, abandon_on_cancel=True)
    except (OSError, UnicodeError):
        raise FetchError(f"could not resolve host {host!r}") from None
    if host.lower() not in names:
        for address in addresses:
            ip = ipaddress.ip_address(address)
            reason = _classify(ip)
            if reason is not None and not _allowed(ip, networks):
                subject = f"{address} is" if address == host else f"{host} resolves to {address},"
                raise _Refused(f"{subject} {reason} (not in the fetch allow-list)")
    netloc_host = f"[{host}]" if ":" in host else host
    default_port = parts.port is None
    return _Target(
        url=url,
        scheme=parts.scheme.lower(),
        host=host,
        host_header=netloc_host if default_port else f"{netloc_host}:{port}",
        port=port,
        path_query=urlunsplit(("", "", parts.path or "/", parts.query, "")),
        addresses=tuple(addresses),
    )


def _pinned_request(
    client: httpx.AsyncClient,
    method: str,
    target: _Target,
    address: str,
    headers: Mapping[str, str],
    content: bytes | None,
) -> httpx.Request:
    """A request to the checked IP (no second DNS lookup), carrying the real name in Host and TLS SNI."""
    ip_host = f"[{address}]" if ":" in address else address
    url = f"{target.scheme}://{ip_host}:{target.port}{target.path_query}"
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return client.build_request(
        method,
        url,
        headers={**{k: v for k, v in headers.items() if k.lower() != "host"}, "Host": target.host_header},
        content=content,
        extensions=extensions,
    )


async def _send(
    client: httpx.AsyncClient,
    method: str,
    target: _Target,
    headers: Mapping[str, str],
    content: bytes | None,
) -> httpx.Response:
    """Try each checked address in turn (a host may list an unreachable IPv6 first)."""
    last_error: httpx.ConnectError | None = None
    for address in target.addresses:
        request = _pinned_request(client, method, target, address, headers, content)
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            last_error = exc
    raise FetchError(f"could not connect to {target.host_header}: {last_error}")


async def _read_body(response: httpx.Response, max_bytes: int) -> bytes:
    """Read the body, stopping the moment it passes `max_bytes` (decoded bytes, so gzip cannot cheat)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"response exceeds {max_bytes} bytes (Content-Length {declared})")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(f"response exceeds {max_bytes} bytes")
    return bytes(body)


def _next_hop(
    response: httpx.Response,
    target: _Target,
    method: str,
    headers: dict[str, str],
    content: bytes | None,
) -> tuple[str, str, dict[str, str], bytes | None]:
    """URL, method, headers and body of the request a redirect asks for."""
    url = urljoin(target.url, response.headers["location"].strip())
    if response.status_code in _REDIRECT_TO_GET and method != "HEAD":
        method, content = "GET", None
        headers = {k: v for k, v in headers.items() if k.lower() not in ("content-type", "content-length")}
    if urlsplit(url).netloc.lower() != urlsplit(target.url).netloc.lower():
        headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
    return url, method, headers, content


async def _open(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    policy: FetchPolicy,
    headers: dict[str, str],
    content: bytes | None,
    follow_redirects: bool,
) -> tuple[httpx.Response, str]:
    """Send the request, following redirects with every hop checked again; returns the final reply, its body
    unread, and its URL. Each hop's connect and reply headers must come within `policy.timeout_s`."""
    redirects = 0
    while True:
        try:
            target = await _check_hop(url, policy.allowlist)
        except _Refused as refusal:
            prefix = f"redirect to {url} — " if redirects else ""
            raise FetchError(f"refused: {prefix}{refusal.detail}") from None
        with anyio.fail_after(policy.timeout_s):
            response = await _send(client, method, target, headers, content)
        # A 3xx without Location is no redirect (RFC 9110); it goes back to the caller as is.
        if not (follow_redirects and response.status_code in _REDIRECT_CODES and "location" in response.headers):
            return response, url
        await response.aclose()
        if redirects >= policy.max_redirects:
            raise FetchError(f"too many redirects (the limit is {policy.max_redirects})")
        redirects += 1
        url, method, headers, content = _next_hop(response, target, method, headers, content)


def _client(policy: FetchPolicy) -> httpx.AsyncClient:
    # trust_env=False: proxy variables would send the request somewhere the guard never checked.
    return httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=policy.timeout_s, verify=_tls_context())


def _identity_encoding(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Identity encoding keeps a size cap honest against compressed bombs; callers may override it."""
    request_headers = dict(headers or {})
    if not any(name.lower() == "accept-encoding" for name in request_headers):
        request_headers["Accept-Encoding"] = "identity"
    return request_headers


@contextmanager
def _fetch_errors(field: str, timed_out: str) -> Iterator[None]:
    """Every failure of a guarded fetch, including transport errors, as a `FetchError` for `field`."""
    try:
        yield
    except FetchError as exc:
        raise FetchError(exc.reason, field=field) from None
    except (TimeoutError, httpx.TimeoutException):
        raise FetchError(timed_out, field=field) from None
    except httpx.InvalidURL as exc:
        raise FetchError(f"refused: the URL is not valid ({exc})", field=field) from None
    except httpx.HTTPError as exc:
        raise FetchError(f"the connection failed: {str(exc) or type(exc).__name__}", field=field) from None


async def guarded_request(
    method: str,
    url: str,
    policy: FetchPolicy,
    *,
    field: str = "url",
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    follow_redirects: bool = True,
) -> FetchedResponse:
    """Send one request through the SSRF guard and read the reply (at most `policy.max_bytes`), all within
    `policy.timeout_s`; any failure or refusal raises `FetchError` for `field`."""
    method = method.upper()
    with _fetch_errors(field, f"timed out after {policy.timeout_s} s"), anyio.fail_after(policy.timeout_s):
        async with _client(policy) as client:
            response, final_url = await _open(
                client, method, url.strip(), policy, _identity_encoding(headers), content, follow_redirects
            )
            try:
                body = b"" if method == "HEAD" else await _read_body(response, policy.max_bytes)
            finally:
                await response.aclose()
            return FetchedResponse(
                status_code=response.status_code,
                headers=dict(response.headers.items()),
                content=body,
                final_url=final_url,
            )


@asynccontextmanager
async def guarded_stream(
    url: str, policy: FetchPolicy, *, field: str = "url", headers: Mapping[str, str] | None = None
) -> AsyncIterator[httpx.Response]:
    """GET `url` through the SSRF guard for a body too large to hold in memory (model downloads): yields the
    final reply, every redirect hop checked, with its body unread and whatever its status. `policy.timeout_s`
    bounds each connect and each read, not the whole transfer (a large file takes as long as it takes while bytes
    keep coming); `policy.max_bytes` is the reader's to enforce. Failures, also those of reading the body inside
    the `with`, raise `FetchError` for `field`."""
    with _fetch_errors(field, f"timed out after {policy.timeout_s} s without data"):
        async with _client(policy) as client:
            response, _ = await _open(client, "GET", url.strip(), policy, _identity_encoding(headers), None, True)
            try:
                yield response
            finally:
                await response.aclose()


async def fetch_url(url: str, policy: FetchPolicy, *, field: str = "url") -> FetchedResponse:
    """GET `url` through the guard; anything but a 2xx reply is a `FetchError`."""
    response = await guarded_request("GET", url, policy, field=field)
    if not 200 <= response.status_code < 300:
        raise FetchError(f"the server answered HTTP {response.status_code}", field=field)
    return response
