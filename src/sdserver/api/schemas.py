"""Request schemas of the upload endpoints: the only place their fields are named and coerced."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from sdserver.api.fields import Flag, RequiredText, parse_choice


class LenientRequest(BaseModel):
    """Unknown fields are ignored: real clients send extras (`key`, `track_id`, SDK leftovers)."""

    model_config = ConfigDict(extra="ignore")


ImageType = Annotated[Literal["png", "jpeg", "jpg"] | None, BeforeValidator(parse_choice)]


class UploadImageRequest(LenientRequest):
    base64_image: RequiredText = Field(description="The image: raw base64, a data URL, or an http(s) URL.")
    image_type: ImageType = Field(
        default=None,
        description="Declared type (png, jpeg, jpg). The stored type is always the one the bytes really have.",
    )
    temp: Flag = Field(default=None, description="yes: the link expires after 24 hours.")


class Base64CropRequest(LenientRequest):
    image: RequiredText = Field(description="The image: a data URL, raw base64 or an http(s) URL.")
    crop: Flag = Field(default=None, description="yes: centre-crop to a square and resize to 512×512.")
    temp: Flag = None


class Base64ToUrlRequest(LenientRequest):
    base64_string: RequiredText = Field(description="The image: raw base64 or a data URL.")
    temp: Flag = None


class ImageEditingBase64ToUrlRequest(LenientRequest):
    init_image: RequiredText = Field(description="The image: raw base64 or a data URL.")
    temp: Flag = None


# Request schemas named by openapi_body, merged into /openapi.json's components (api.openapi_doc).
_REQUEST_SCHEMAS: dict[str, dict[str, Any]] = {}
_COMPONENT_REF = "#/components/schemas/{model}"


def openapi_body(model: type[BaseModel]) -> dict[str, object]:
    """Document a schema we validate by hand (query < form < JSON merge) as the operation's request body: one
    component, referenced by every route (and alias) that takes it."""
    schema = model.model_json_schema(ref_template=_COMPONENT_REF)
    _REQUEST_SCHEMAS.update(schema.pop("$defs", {}))
    schema["properties"] = {
        "key": {"type": "string", "description": "Your API key (or header `key`, Bearer, or ?key=)."},
        **schema.get("properties", {}),
    }
    _REQUEST_SCHEMAS[model.__name__] = schema
    content = {"schema": {"$ref": _COMPONENT_REF.format(model=model.__name__)}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": content,
                "application/x-www-form-urlencoded": content,
                "multipart/form-data": content,
            },
        }
    }


def request_schemas() -> dict[str, dict[str, Any]]:
    """Every request schema openapi_body documented so far (and the schemas they reference), by name."""
    return dict(_REQUEST_SCHEMAS)
