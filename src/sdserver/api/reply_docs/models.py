"""Reply shapes of model management: load_model (v2, VAE), verify_model, get_all_models, delete_model."""

from __future__ import annotations

from typing import Literal, NotRequired

from pydantic import with_config
from typing_extensions import TypedDict

from sdserver.api.reply_docs.declare import ADMIN_CODES, BASE_CODES, JOB_CODES, Replies
from sdserver.api.reply_docs.envelopes import CLOSED
from sdserver.catalog.registry import ModelKind, ModelState
from sdserver.errors import ModelNotFoundError


@with_config(CLOSED)
class LoadStarted(TypedDict):
    """The load is queued as job `id`; `fetch_result` (or get_all_models) follows it."""

    status: Literal["success"]
    message: str
    id: int
    model_id: str
    model_type: ModelKind
    state: Literal["loading"]
    fetch_result: str


@with_config(CLOSED)
class VerifyModelReply(TypedDict):
    """The model id is known. For a loaded generation model: its family, and what it runs here."""

    status: Literal["success"]
    message: str
    family: NotRequired[str | None]
    prediction_type: NotRequired[str | None]
    few_step: NotRequired[str | None]
    supported: NotRequired[bool]
    unsupported_reason: NotRequired[str]
    runs: NotRequired[list[str]]
    schedulers: NotRequired[list[str]]


@with_config(CLOSED)
class ModelListing(TypedDict):
    """One model with its load state; `family` is `unsupported` (with the reason) for files of no known layout."""

    model_id: str
    model_type: ModelKind
    state: ModelState
    load_data: str
    progress: float
    bytes_done: int
    bytes_total: int
    message: str
    id: int | None
    family: str | None
    prediction_type: str | None
    few_step: str | None
    supported: NotRequired[bool]
    unsupported_reason: NotRequired[str]


@with_config(CLOSED)
class AllModelsReply(TypedDict):
    """Every model, VAE and add-on with its load state."""

    status: Literal["success"]
    models: list[ModelListing]


@with_config(CLOSED)
class DeleteModelReply(TypedDict):
    """The kinds of model deleted under this id (files removed, loads cancelled)."""

    status: Literal["success"]
    message: str
    model_id: str
    deleted: list[ModelKind]


LOAD_REPLIES = Replies(ok=LoadStarted, codes=(*ADMIN_CODES, *JOB_CODES))
VERIFY_REPLIES = Replies(ok=VerifyModelReply, codes=(*BASE_CODES, ModelNotFoundError.code))
ALL_MODELS_REPLIES = Replies(ok=AllModelsReply)
DELETE_REPLIES = Replies(ok=DeleteModelReply, codes=(*ADMIN_CODES, ModelNotFoundError.code))
