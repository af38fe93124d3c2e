"""Reply shapes of the routes that answer at once about a client image: the uploads and the NSFW check."""

from __future__ import annotations

from typing import Literal

from pydantic import with_config
from typing_extensions import TypedDict

from sdserver.api.reply_docs.declare import BASE_CODES, IMAGE_CODES, Replies
from sdserver.api.reply_docs.envelopes import CLOSED, StablecogError
from sdserver.errors import MissingFileError


@with_config(CLOSED)
class UploadImageReply(TypedDict):
    """The stored image: its URL and upload id."""

    status: Literal["success"]
    message: str
    image_url: str
    id: int


@with_config(CLOSED)
class Base64CropReply(TypedDict):
    """The stored (maybe cropped) image: its URL and upload id."""

    status: Literal["success"]
    messege: str
    message: str
    link: str
    request_id: int


@with_config(CLOSED)
class Base64ToUrlReply(TypedDict):
    """The stored image: its URL (a one-item list) and upload id."""

    status: Literal["success"]
    id: int
    output: list[str]


@with_config(CLOSED)
class StablecogUploadReply(TypedDict):
    """The stored image's URL, accepted as init_image / init_image_url."""

    object: str


@with_config(CLOSED)
class NsfwCheckReply(TypedDict):
    """`images` is the stored copy that was checked; one flag and one open_nsfw score per image."""

    status: Literal["success"]
    images: str
    has_nsfw_concept: list[bool]
    nsfw_score: list[float]


UPLOAD_CODES = (*BASE_CODES, *IMAGE_CODES)
UPLOAD_IMAGE_REPLIES = Replies(ok=UploadImageReply, codes=UPLOAD_CODES)
BASE64_CROP_REPLIES = Replies(ok=Base64CropReply, codes=UPLOAD_CODES)
BASE64_TO_URL_REPLIES = Replies(ok=Base64ToUrlReply, codes=UPLOAD_CODES)
NSFW_CHECK_REPLIES = Replies(ok=NsfwCheckReply, codes=UPLOAD_CODES)
STABLECOG_UPLOAD_REPLIES = Replies(
    ok=StablecogUploadReply,
    codes=(*UPLOAD_CODES, MissingFileError.code),
    error=StablecogError,
    errors_at_200=False,
)
