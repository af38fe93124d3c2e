"""Checks on an OpenAPI document: its operations, their declared reply schemas, and which are aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sdserver.api.aliases import ALIAS_OF

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path, operation) for every operation the document lists."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref`s into the document's components until a schema of its own."""
    while "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def is_bare(document: dict[str, Any], schema: dict[str, Any]) -> bool:
    """True for a schema that says nothing about the reply: `{}`, or an object of any fields."""
    schema = resolve(document, schema)
    if any(key in schema for key in ("anyOf", "oneOf", "allOf", "const", "enum")):
        return False
    if schema.get("type") not in (None, "object"):
        return False
    return not schema.get("properties") and schema.get("additionalProperties", True) is not False


def reply_schemas(operation: dict[str, Any]) -> list[dict[str, Any]]:
    """The schemas of the operation's 2xx replies, every media type."""
    return [
        media["schema"]
        for status, reply in operation.get("responses", {}).items()
        if str(status).startswith("2")
        for media in reply.get("content", {}).values()
        if "schema" in media
    ]


def undeclared_replies(document: dict[str, Any]) -> list[str]:
    """`METHOD path` of each operation without a 2xx reply schema, or with only bare ones."""
    return [
        f"{method} {path}"
        for method, path, operation in operations(document)
        if not (schemas := reply_schemas(operation)) or any(is_bare(document, schema) for schema in schemas)
    ]


def canonical(operation: dict[str, Any]) -> bool:
    return ALIAS_OF not in operation
