"""Request schemas of the model-management endpoints and the rules that turn a load request into a load plan."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Final
from urllib.parse import urlsplit, urlunsplit

from pydantic import BeforeValidator, Field

from sdserver.api.fields import Flag, OptionalText, RequiredText, parse_choice
from sdserver.api.schemas import LenientRequest
from sdserver.api.schemas_generation import TrackId, check_webhook
from sdserver.catalog.files import SOURCE_HUB, SOURCE_LOCAL, SOURCE_URL, ModelFileError, local_import_path
from sdserver.catalog.ids import is_valid_model_id
from sdserver.catalog.registry import ModelKind
from sdserver.config import Settings
from sdserver.errors import ValidationError
from sdserver.jobs import TEST_MODEL_PREFIX

# The vendor's model_type values and the kind each loads as; huggingface means a diffusers pipeline.
MODEL_TYPES: Final[dict[str, ModelKind]] = {
    "huggingface": ModelKind.CHECKPOINT,
    "custom_ckpt": ModelKind.CHECKPOINT,
    "lora": ModelKind.LORA,
    "embeddings": ModelKind.EMBEDDINGS,
    "vae": ModelKind.VAE,
    "controlnet": ModelKind.CONTROLNET,
    "upscaler": ModelKind.UPSCALER,
}
# load_model_v2 categories; every base-model family is a checkpoint here.
MODEL_CATEGORIES: Final[dict[str, ModelKind]] = {
    "stable_diffusion": ModelKind.CHECKPOINT,
    "stable_diffusion_xl": ModelKind.CHECKPOINT,
    "sdxl": ModelKind.CHECKPOINT,
    "checkpoint": ModelKind.CHECKPOINT,
    "lora": ModelKind.LORA,
    "embeddings": ModelKind.EMBEDDINGS,
    "vae": ModelKind.VAE,
    "controlnet": ModelKind.CONTROLNET,
    "upscaler": ModelKind.UPSCALER,
}
MODEL_FORMATS: Final = ("diffusers", "safetensors", "ckpt")
# Kinds that may come from the hub: they are diffusers folders there.
_HUB_KINDS: Final = frozenset({ModelKind.CHECKPOINT, ModelKind.VAE, ModelKind.CONTROLNET})
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_HUB_HOSTS: Final = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
_ID_RULE: Final = "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"

Choice = Annotated[str | None, BeforeValidator(parse_choice)]


class LoadModelRequest(LenientRequest):
    url: RequiredText = Field(description="http(s) URL, Hugging Face repo id (owner/name), or a local path.")
    model_id: RequiredText = Field(description="The id the model will be used under.")
    model_type: Choice = Field(default=None, description="One of: " + ", ".join(MODEL_TYPES) + ".")
    from_safetensors: Flag = Field(default=None, description="Accepted; the file type is read from the bytes.")
    revision: OptionalText = Field(default=None, description="Hub branch, tag or commit (hub ids only).")
    upcast_attention: Flag = Field(default=None, description="Accepted for compatibility.")
    webhook: OptionalText = Field(default=None, description="URL told when the load ends.")
    track_id: TrackId = Field(default=None, description="Echoed unchanged in the webhook.")


class LoadModelV2Request(LenientRequest):
    url: RequiredText = Field(description="http(s) URL, Hugging Face repo id (owner/name), or a local path.")
    model_id: RequiredText = Field(description="The id the model will be used under.")
    model_category: Choice = Field(default=None, description="One of: " + ", ".join(MODEL_CATEGORIES) + ".")
    model_format: Choice = Field(default=None, description="One of: " + ", ".join(MODEL_FORMATS) + ".")
    revision: OptionalText = None
    webhook: OptionalText = None
    track_id: TrackId = None


class LoadVaeRequest(LenientRequest):
    vae_id: RequiredText = Field(description="The id the VAE will be used under.")
    vae_url: RequiredText = Field(description="http(s) URL, Hugging Face repo id, or a local path.")
    vae_type: OptionalText = Field(default=None, description="Accepted; the format is read from the files.")
    webhook: OptionalText = None
    track_id: TrackId = None


class VerifyModelRequest(LenientRequest):
    model_id: RequiredText = Field(description="The model id to look for.")


class DeleteModelRequest(LenientRequest):
    model_id: RequiredText = Field(description="The model to delete (its files and its registry row).")
    model_type: Choice = Field(default=None, description="Only this kind (default: every kind under this id).")


@dataclass(frozen=True)
class LoadPlan:
    """A validated load: what the job params and the registry row are built from."""

    kind: ModelKind
    model_id: str
    source_type: str
    # What the worker fetches, and what the registry shows (no query string: it may carry a token).
    source: str
    shown_source: str
    revision: str | None
    format: str
    webhook: str | None
    track_id: str | int | None


def plan_load_model(request: LoadModelRequest, settings: Settings) -> LoadPlan:
    if request.model_type is None:
        raise ValidationError.for_field("model_type", "is required: one of " + ", ".join(MODEL_TYPES), None)
    kind = _choice("model_type", request.model_type, MODEL_TYPES)
    hub_ok = kind in _HUB_KINDS and request.model_type != "custom_ckpt"
    fmt = "safetensors" if request.from_safetensors else ""
    return _plan(kind, request.model_id, request.url, "url", hub_ok, request.revision, fmt, settings, request)


def plan_load_model_v2(request: LoadModelV2Request, settings: Settings) -> LoadPlan:
    if request.model_category is None:
        rule = "is required: one of " + ", ".join(MODEL_CATEGORIES)
        raise ValidationError.for_field("model_category", rule, None)
    kind = _choice("model_category", request.model_category, MODEL_CATEGORIES)
    fmt = request.model_format or ""
    if fmt and fmt not in MODEL_FORMATS:
        raise ValidationError.for_field("model_format", "must be one of " + ", ".join(MODEL_FORMATS), fmt)
    hub_ok = kind in _HUB_KINDS and fmt in ("", "diffusers")
    return _plan(kind, request.model_id, request.url, "url", hub_ok, request.revision, fmt, settings, request)


def plan_load_vae(request: LoadVaeRequest, settings: Settings) -> LoadPlan:
    fmt = request.vae_type or ""
    return _plan(ModelKind.VAE, request.vae_id, request.vae_url, "vae_url", True, None, fmt, settings, request)


def check_model_id(model_id: str, settings: Settings, *, field: str = "model_id") -> str:
    if not is_valid_model_id(model_id):
        raise ValidationError.for_field(field, _ID_RULE, model_id)
    if "test" in settings.engines and model_id.startswith(TEST_MODEL_PREFIX):
        raise ValidationError.for_field(
            field, f"must not start with {TEST_MODEL_PREFIX!r} (the test engine's)", model_id
        )
    return model_id


def kind_for_type(value: str | None) -> ModelKind | None:
    """delete_model's optional model_type: a vendor type name or one of our kind names."""
    if value is None:
        return None
    kinds = {**MODEL_TYPES, **{kind.value: kind for kind in ModelKind}}
    return _choice("model_type", value, kinds)


def _plan(
    kind: ModelKind,
    model_id: str,
    url: str,
    url_field: str,
    hub_ok: bool,
    revision: str | None,
    fmt: str,
    settings: Settings,
    request: LoadModelRequest | LoadModelV2Request | LoadVaeRequest,
) -> LoadPlan:
    id_field = "vae_id" if isinstance(request, LoadVaeRequest) else "model_id"
    check_model_id(model_id, settings, field=id_field)
    source_type, source, shown = _source(url, url_field, kind, hub_ok, settings)
    if revision and source_type != SOURCE_HUB:
        raise ValidationError.for_field("revision", "applies only to Hugging Face repo ids", revision)
    return LoadPlan(
        kind=kind,
        model_id=model_id,
        source_type=source_type,
        source=source,
        shown_source=shown,
        revision=revision,
        format=fmt,
        webhook=check_webhook(request.webhook),
        track_id=request.track_id,
    )


def _source(url: str, field: str, kind: ModelKind, hub_ok: bool, settings: Settings) -> tuple[str, str, str]:
    """(source type, source, source as shown) of a load's `url`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if "@" in parts.netloc:
            raise ValidationError.for_field(field, "must not carry a user name or password", "<redacted>")
        host = (parts.hostname or "").lower()
        repo = "/".join(parts.path.strip("/").split("/")[:2])
        if hub_ok and host in _HUB_HOSTS and _HUB_ID.fullmatch(repo) and "/resolve/" not in parts.path:
            return SOURCE_HUB, repo, repo
        return SOURCE_URL, url, urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    if url.startswith("/") or scheme == "file":
        try:
            local_import_path(url, settings.model_import_dirs)
        except ModelFileError as exc:
            raise ValidationError.for_field(field, f"must be a path inside model_import_dirs ({exc})", url) from None
        return SOURCE_LOCAL, url, url
    if hub_ok and _HUB_ID.fullmatch(url) and ".." not in url:
        return SOURCE_HUB, url, url
    hub = "a Hugging Face repo id (owner/name), " if hub_ok else ""
    rule = f"must be an http(s) URL, {hub}or an absolute path inside model_import_dirs for a {kind.value}"
    raise ValidationError.for_field(field, rule, url)


def _choice(field: str, value: str, choices: dict[str, ModelKind]) -> ModelKind:
    kind = choices.get(value)
    if kind is None:
        raise ValidationError.for_field(field, "must be one of " + ", ".join(choices), value)
    return kind
