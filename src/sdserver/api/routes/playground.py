"""Routes: the web playground (`/playground`, its script, style and limits) and the `/` landing page.

Public like `/docs`: the pages hold no data; the key is typed into the page and sent only with API calls."""

from __future__ import annotations

from importlib import resources
from typing import Any, Final

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from sdserver import __version__
from sdserver.api.deps import ServicesDep
from sdserver.api.schemas_family import MIN_SIDE
from sdserver.api.schemas_generation import MAX_SAMPLES, MAX_STEPS
from sdserver.catalog.families.capabilities import FAMILY_CAPABILITIES
from sdserver.catalog.ids import DEFAULT_UPSCALER, UPSCALER_MODELS
from sdserver.job_params import DEFAULT_GUIDANCE_SCALE, DEFAULT_SCHEDULER_NAME, DEFAULT_STEPS, DEFAULT_STRENGTH

router = APIRouter(tags=["playground"])

PLAYGROUND_URL: Final = "/playground"
# The page's own files, served from package data (no build step, no CDN); name → media type.
ASSETS: Final[dict[str, str]] = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
# Sizes offered in the size picker (any multiple of 8 in range is accepted by the API).
SIZES: Final = (64, 128, 256, 384, 512, 640, 768, 1024)
# Scripts and API calls stay on this origin; output pictures may live on a public bucket (any image source).
_CSP: Final = (
    "default-src 'self'; img-src 'self' data: blob: http: https:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": _CSP,
    # The page's URL never carries the key, but no referrer leaks it anywhere either.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
_LANDING: Final = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sdserver</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{PLAYGROUND_URL}/playground.css"></head>
<body class="landing"><main><h1>sdserver {__version__}</h1>
<p>A self-hosted Stable Diffusion API (ModelsLab compatible).</p>
<ul><li><a href="{PLAYGROUND_URL}">Playground</a>: try text2img, img2img, inpaint and upscale in the browser</li>
<li><a href="/docs">API reference</a> (Swagger UI) · <a href="/redoc">ReDoc</a></li></ul></main></body></html>
"""

# The largest side any model family accepts (each family's own cap is checked at submit).
MAX_SIDE = max(capabilities.max_size for capabilities in FAMILY_CAPABILITIES.values())


def _asset(name: str) -> str:
    return resources.files("sdserver.api").joinpath("playground", name).read_text(encoding="utf-8")


@router.get("/", include_in_schema=False)
async def landing() -> HTMLResponse:
    return HTMLResponse(_LANDING, headers=_PAGE_HEADERS)


@router.get(PLAYGROUND_URL, include_in_schema=False)
async def playground_page() -> HTMLResponse:
    return HTMLResponse(_asset("index.html"), headers=_PAGE_HEADERS)


@router.get(PLAYGROUND_URL + "/config.json", include_in_schema=False)
async def playground_config(services: ServicesDep) -> dict[str, Any]:
    """Limits and defaults the forms start from; model and scheduler lists come from the API with the key."""
    return {
        "version": __version__,
        # The largest any family allows; the server refuses a size past the chosen model's own cap.
        "sizes": [size for size in SIZES if MIN_SIDE <= size <= MAX_SIDE],
        "min_side": MIN_SIDE,
        "max_side": MAX_SIDE,
        "max_steps": MAX_STEPS,
        "max_samples": MAX_SAMPLES,
        "default_steps": DEFAULT_STEPS,
        "default_guidance_scale": DEFAULT_GUIDANCE_SCALE,
        "default_strength": DEFAULT_STRENGTH,
        "default_scheduler": DEFAULT_SCHEDULER_NAME,
        "default_model_id": services.settings.default_model_id,
        "upscalers": list(UPSCALER_MODELS),
        "default_upscaler": DEFAULT_UPSCALER,
        "max_upscale_input_pixels": services.settings.max_upscale_input_pixels,
    }


@router.get(PLAYGROUND_URL + "/playground.js", include_in_schema=False)
async def playground_script() -> Response:
    return _asset_response("playground.js")


@router.get(PLAYGROUND_URL + "/playground.css", include_in_schema=False)
async def playground_style() -> Response:
    return _asset_response("playground.css")


def _asset_response(name: str) -> Response:
    return Response(_asset(name), media_type=ASSETS[name], headers=_PAGE_HEADERS)
