"""The path families real clients call, in one table: which prefixes exist and which paths each endpoint has;
and `add_alias_routes`, the one way an endpoint is served under its aliases (see `api.reply_docs` for `replies`)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel

from sdserver.api.openapi_tags import alias_tag
from sdserver.api.reply_docs.declare import Replies
from sdserver.api.schemas import openapi_body

# The OpenAPI extension on every alias operation: the path of the documented operation it behaves like.
ALIAS_OF = "x-alias-of"

# Every prefix family a client may submit under; `fetch` and `cancel` exist under each of them.
PREFIXES: tuple[str, ...] = (
    "/api/v1/enterprise",
    "/api/v1/enterprise/images",  # official modelslab-py SDK, enterprise mode
    "/api/v1/enterprise/txt2img",  # the older stablediffusionapi package
    "/api/v1/enterprise/image_editing",
    "/api/v1/enterprise/super_resolution",
    "/api/v1/image_editing",
    "/api/v3",
    "/api/v4/dreambooth",
    "/api/v5",
    "/api/v6/images",
    "/api/v6/image_editing",
    "/api/v6/realtime",
    "/api/v7/images",
    "/api/v1/enterprise/realtime",
)

# The official SDK posts its shared calls (fetch, system_details, restart_server, update, clear_cache,
# clear_queue) under the prefix of the SDK class the caller holds; these are the classes whose endpoints we serve.
SDK_CLASS_PREFIXES: tuple[str, ...] = (
    "/api/v1/enterprise/images",
    "/api/v1/enterprise/image_editing",
    "/api/v1/enterprise/realtime",
    "/api/v6/images",
    "/api/v6/image_editing",
    "/api/v6/realtime",
)

# text2img under each family's own spelling; the first path is the documented one.
TEXT2IMG_PATHS: tuple[str, ...] = (
    "/api/v1/enterprise/text2img",
    "/api/v1/enterprise/images/text2img",
    "/api/v1/enterprise/txt2img/text2img",
    "/api/v3/text2img",
    "/api/v4/dreambooth",
    "/api/v6/images/text2img",
    "/api/v6/realtime/text2img",
    "/api/v7/images/text-to-image",
)

IMG2IMG_PATHS: tuple[str, ...] = (
    "/api/v1/enterprise/img2img",
    "/api/v1/enterprise/images/img2img",
    "/api/v3/img2img",
    "/api/v4/dreambooth/img2img",
    "/api/v6/images/img2img",
    "/api/v6/realtime/img2img",
    "/api/v7/images/image-to-image",
)
INPAINT_PATHS: tuple[str, ...] = (
    "/api/v1/enterprise/inpaint",
    "/api/v1/enterprise/images/inpaint",
    "/api/v3/inpaint",
    "/api/v4/dreambooth/inpaint",
    "/api/v6/images/inpaint",
    "/api/v6/realtime/inpaint",
    "/api/v7/images/inpaint",
)


def family_prefix(path: str) -> str:
    """The longest known prefix of a request path: where its `fetch` lives."""
    matches = [prefix for prefix in PREFIXES if path == prefix or path.startswith(prefix + "/")]
    return max(matches, key=len) if matches else PREFIXES[0]


# Super resolution. On these paths `output` is a single URL string; on the others, a list.
SUPER_RESOLUTION_STRING_PATHS: tuple[str, ...] = (
    "/api/v1/enterprise/super_resolution",
    "/api/v3/super_resolution",
)
SUPER_RESOLUTION_LIST_PATHS: tuple[str, ...] = (
    "/api/v6/image_editing/super_resolution",
    "/api/v1/enterprise/image_editing/super_resolution",
    "/api/v1/image_editing/super_resolution",
    "/api/v1/enterprise/super_resolution/make",
)


# The image-editing family: each endpoint under the v6 path, the enterprise one and the v1 one.
def editing_paths(name: str) -> tuple[str, ...]:
    return (
        f"/api/v6/image_editing/{name}",
        f"/api/v1/enterprise/image_editing/{name}",
        f"/api/v1/image_editing/{name}",
    )


OUTPAINT_PATHS: tuple[str, ...] = editing_paths("outpaint")
OBJECT_REMOVAL_PATHS: tuple[str, ...] = editing_paths("object_removal")
EDITING_INPAINT_PATHS: tuple[str, ...] = editing_paths("inpaint")
REMOVEBG_MASK_PATHS: tuple[str, ...] = editing_paths("removebg_mask")

CONTROLNET_PATHS: tuple[str, ...] = (
    "/api/v1/enterprise/controlnet",
    "/api/v1/enterprise/images/controlnet",
    "/api/v5/controlnet",
    "/api/v6/images/controlnet",
)

NSFW_CHECK_PATHS: tuple[str, ...] = (
    "/api/v1/enterprise/nsfw_image_check",
    "/api/v3/nsfw_image_check",
)


def add_alias_routes(
    router: APIRouter,
    paths: Sequence[str],
    endpoint: Callable[..., Any],
    *,
    summary: str,
    replies: Replies,
    body: type[BaseModel] | None = None,
    methods: Sequence[str] = ("POST",),
    documented: Collection[str] = ("POST",),
    operation_id: str | None = None,
) -> None:
    """Serve `endpoint` under every path, one route per method (a shared route would give its methods one
    OpenAPI operation id). `replies` declares what it answers (required: no route goes undocumented).
    The first path's `documented` methods are the canonical operations, under the router's tag; every other
    path and method is listed too, tagged by its path family, with `x-alias-of` naming the first path.
    `body` documents the JSON body the handler validates itself; `operation_id` (canonical operations only)
    gets `_<method>` appended."""
    extra = openapi_body(body) if body is not None else {}
    options = replies.route_options()
    alias_note = f"The same endpoint as `{paths[0]}`: the same fields and replies, under this path family."
    for index, path in enumerate(paths):
        for method in methods:
            canonical = index == 0 and method in documented
            router.add_api_route(
                path,
                endpoint,
                methods=[method],
                summary=summary,
                operation_id=f"{operation_id}_{method.lower()}" if operation_id and canonical else None,
                openapi_extra=extra if canonical else {**extra, ALIAS_OF: paths[0], "description": alias_note},
                **options,
            )
            if not canonical:
                route = router.routes[-1]
                assert isinstance(route, APIRoute)
                # Only the family tag: the router's tag would list every alias again under the endpoint family.
                route.tags = [alias_tag(family_prefix(path))]
