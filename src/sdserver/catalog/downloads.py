"""Streamed, resumable, size-capped model downloads through the SSRF guard (`netguard.guarded_stream`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Final

import anyio
import httpx

from sdserver.errors import FetchError
from sdserver.netguard import FetchPolicy, guarded_stream

# One progress report per this many bytes at most (the worker throttles the database writes further).
_REPORT_EVERY: Final = 1024 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

Progress = Callable[[int, int], None]


def download_to_part(url: str, part: Path, policy: FetchPolicy, progress: Progress) -> int:
    """Download `url` into `part`, continuing from what `part` already holds when the server honours Range.

    `policy.max_bytes` caps the whole file; `policy.timeout_s` bounds each connect and read, not the whole
    download (a large model takes as long as it takes while bytes keep coming). `progress(done, total)` is called
    as bytes arrive (total 0 when unknown) and may raise to stop. Returns the final size.
    """
    have = part.stat().st_size if part.exists() else 0
    try:
        return anyio.run(_download, url, part, have, policy, progress)
    except _StartOver:
        part.unlink()
        message = "the server refused to resume the partial download; the next try starts over"
        raise FetchError(message, field="url") from None


class _StartOver(Exception):
    """The server will not resume this part file: it must be dropped."""


async def _download(url: str, part: Path, have: int, policy: FetchPolicy, progress: Progress) -> int:
    headers = {"Range": f"bytes={have}-"} if have else {}
    async with guarded_stream(url, policy, field="url", headers=headers) as response:
        return await _save(response, part, have, policy.max_bytes, progress)


async def _save(response: httpx.Response, part: Path, have: int, max_bytes: int, progress: Progress) -> int:
    if response.status_code == 416 and have:
        # The part file already holds everything (a crash came between the last byte and the install).
        if response.headers.get("content-range", "").strip() == f"bytes */{have}":
            progress(have, have)
            return have
        raise _StartOver()
    start, total = _plan(response, have)
    if total > max_bytes:
        raise FetchError(f"the file is {total} bytes, over the download limit of {max_bytes} bytes", field="url")
    part.parent.mkdir(parents=True, exist_ok=True)
    done = start
    reported = done
    progress(done, total)
    # Appending when resuming; a fresh answer (200) starts the file over.
    with part.open("r+b" if start else "wb") as handle:
        handle.seek(start)
        handle.truncate()
        # Unbuffered: every received piece is on disk before the next read, so a cut keeps all it got.
        async for chunk in response.aiter_raw():
            done += len(chunk)
            if done > max_bytes:
                raise FetchError(f"the file passed the download limit of {max_bytes} bytes", field="url")
            handle.write(chunk)
            if done - reported >= _REPORT_EVERY:
                handle.flush()
                reported = done
                progress(done, total)
    if total and done != total:
        raise FetchError(f"the download ended after {done} of {total} bytes", field="url")
    progress(done, total or done)
    return done


def _plan(response: httpx.Response, have: int) -> tuple[int, int]:
    """Where the body starts in the file and the full size (0: unknown), from the status and headers."""
    status = response.status_code
    if status == 206 and have:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
        if match is None or int(match.group(1)) != have:
            raise FetchError("the server answered a range request with a range we did not ask for", field="url")
        return have, 0 if match.group(3) == "*" else int(match.group(3))
    if status != 200:
        raise FetchError(f"the server answered HTTP {status}", field="url")
    declared = response.headers.get("content-length", "")
    return 0, int(declared) if declared.isdigit() else 0
