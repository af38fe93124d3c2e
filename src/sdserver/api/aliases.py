"""The path families real clients call, in one table: which prefixes exist and which paths each endpoint has."""

from __future__ import annotations

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
