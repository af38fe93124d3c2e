"""The tags /openapi.json groups operations by: one per endpoint family, then one per alias path family."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

# Each canonical operation sits under its endpoint family (the router's tag), in this order in /docs.
ENDPOINT_TAGS: Final[dict[str, str]] = {
    "generation": "text2img, img2img, inpaint and ControlNet: each queues a job and answers like `fetch`.",
    "super resolution": "Upscale an image (Real-ESRGAN) as a job.",
    "image editing": "Outpaint, object removal and inpaint as jobs on the inpainting pipeline.",
    "jobs": "Follow (`fetch`) or stop (`cancel`) a job, under every prefix family.",
    "uploads": "Turn a client image into a URL on this server's object store.",
    "stablecog": "Stablecog's multipart upload, with Stablecog's error bodies.",
    "safety": "Score an image with the open_nsfw classifier.",
    "model management": "Load, list, verify and delete models, VAEs and add-ons.",
    "server management": "The server's state, queue and workers; the object store switch.",
    "files": "Stored objects (generated and uploaded images).",
    "health": "Readiness probe.",
    "metrics": "Prometheus metrics.",
    "OpenAI Images API": "OpenAI's `/v1/images/*` and `/v1/models`: synchronous, OpenAI's shapes and errors.",
    "AUTOMATIC1111 API": "AUTOMATIC1111's `/sdapi/v1`: synchronous, A1111's shapes and errors.",
}
ALIAS_TAG_PREFIX: Final = "aliases "


def alias_tag(prefix: str) -> str:
    """The tag of the alias operations under one path family (`aliases.family_prefix`), e.g. `aliases /api/v3`."""
    return ALIAS_TAG_PREFIX + prefix


def openapi_tags(alias_prefixes: Iterable[str]) -> list[dict[str, str]]:
    """Tag metadata for FastAPI(openapi_tags=...): endpoint families first, then the alias families."""
    tags = [{"name": name, "description": text} for name, text in ENDPOINT_TAGS.items()]
    for prefix in sorted(alias_prefixes):
        tags.append(
            {
                "name": alias_tag(prefix),
                "description": f"The same endpoints under `{prefix}`, as clients of that family call them; each "
                "operation's `x-alias-of` names the documented one it behaves like.",
            }
        )
    return tags
