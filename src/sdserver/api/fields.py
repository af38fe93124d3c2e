"""Lenient field types for request schemas: numbers as strings, flags in every spelling, "null" as absent."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import pydantic
from pydantic import BaseModel, BeforeValidator, PlainSerializer
from pydantic_core import PydanticCustomError

from sdserver.errors import ValidationError, show_value

_TRUE = {"yes", "y", "true", "t", "1", "on"}
_FALSE = {"no", "n", "false", "f", "0", "off"}
_ABSENT = {"", "null", "none", "undefined"}


def is_absent(value: object) -> bool:
    """`""`, `null` and the string `"null"` all mean "not given"."""
    return value is None or (isinstance(value, str) and value.strip().lower() in _ABSENT)


def parse_flag(value: object) -> bool | None:
    if is_absent(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise PydanticCustomError("flag", "must be a flag (yes/no, true/false, 1/0)")


def parse_optional_text(value: object) -> str | None:
    if is_absent(value):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise PydanticCustomError("text", "must be a string")


def parse_required_text(value: object) -> str:
    text = parse_optional_text(value)
    if text is None:
        raise PydanticCustomError("required", "is required")
    return text


def parse_number(value: object) -> float | None:
    """`512`, `512.0` and `"512"` are the same number; absent values are None; anything else is an error."""
    if is_absent(value):
        return None
    if isinstance(value, bool):
        raise PydanticCustomError("number", "must be a number")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise PydanticCustomError("number", "must be a number") from None
    else:
        raise PydanticCustomError("number", "must be a number")
    if number != number or number in (float("inf"), float("-inf")):
        raise PydanticCustomError("number", "must be a finite number")
    return number


def parse_integer(value: object) -> int | None:
    number = parse_number(value)
    if number is None:
        return None
    if not number.is_integer():
        raise PydanticCustomError("integer", "must be a whole number")
    return int(number)


def parse_choice(value: object) -> object:
    """Choices are matched without regard to case or surrounding spaces."""
    if is_absent(value):
        return None
    return value.strip().lower() if isinstance(value, str) else value


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


# A flag that is absent (None) unless given; echoed back as "yes"/"no" in `meta`.
Flag = Annotated[bool | None, BeforeValidator(parse_flag), PlainSerializer(_yes_no)]
OptionalText = Annotated[str | None, BeforeValidator(parse_optional_text)]
RequiredText = Annotated[str, BeforeValidator(parse_required_text)]
LenientInt = Annotated[int | None, BeforeValidator(parse_integer)]
LenientFloat = Annotated[float | None, BeforeValidator(parse_number)]

_RULES = {
    "missing": "is required",
    "required": "is required",
    "string_type": "must be a string",
    "literal_error": "must be one of {expected}",
    "flag": "must be a flag (yes/no, true/false, 1/0)",
    "text": "must be a string",
    "number": "must be a number",
    "integer": "must be a whole number",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
}

ModelT = TypeVar("ModelT", bound=BaseModel)


def validate_request(model: type[ModelT], values: dict[str, Any]) -> ModelT:
    """Validate merged request values; every broken rule names the field, the rule and the value."""
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as exc:
        field_errors: dict[str, list[str]] = {}
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]) or "body"
            template = _RULES.get(error["type"])
            rule = template.format(**error.get("ctx", {})) if template else error["msg"]
            shown = "nothing" if error["type"] == "missing" else show_value(error.get("input"))
            field_errors.setdefault(name, []).append(f"{rule}, got {shown}")
        message = "; ".join(f"{name}: {msgs[0]}" for name, msgs in field_errors.items())
        raise ValidationError(message, field_errors=field_errors) from None
