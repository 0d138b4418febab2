"""Portal-compatible reading of JSON bodies into domain models.

Go's decoder, which Portal clients were written against, matched keys case-insensitively,
ignored unknown keys, took null as "not given", and refused a value of the wrong JSON type
with "Bad JSON syntax received in body". A value of the right type but wrong content (port 0,
an address that is not one) gets a message naming the field.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from portal_es.domain.models import UnsupportedValue

M = TypeVar("M", bound=BaseModel)

BAD_JSON = "Bad JSON syntax received in body"

# pydantic error types that mean "wrong JSON type", not "wrong value".
_TYPE_ERRORS = {
    "int_type", "int_parsing", "int_from_float", "string_type", "bool_type", "float_type",
    "list_type", "tuple_type", "dict_type", "model_type", "model_attributes_type",
    "json_invalid", "json_type", "string_unicode", "missing",
}


class BadInput(ValueError):
    """Input refused before anything was written; the message is for the client."""


MAX_DEPTH = 32  # Portal's deepest body (a list of services with servers) is 4 deep


def _valid(value: Any) -> bool:
    """No nesting deeper than MAX_DEPTH, no lone surrogate ("\\ud800") in any string."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, (dict, list)):
            if depth == MAX_DEPTH:
                return False
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return True


def decode(body: bytes) -> Any:
    """Bytes -> JSON value, refusing invalid UTF-8 and invalid JSON alike."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadInput(BAD_JSON) from None
    if not _valid(value):  # it could not be stored, or folded without a RecursionError
        raise BadInput(BAD_JSON)
    return value


def _fold_keys(value: Any) -> Any:
    """Lower-case object keys and drop nulls, recursively (Go decoder semantics)."""
    if isinstance(value, dict):
        return {str(k).lower(): _fold_keys(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_fold_keys(v) for v in value]
    return value


def _message(error: ValidationError) -> str:
    first_value_error = None
    for err in error.errors():
        if err["type"] in _TYPE_ERRORS:
            if err["type"] == "missing":
                field = ".".join(str(p) for p in err["loc"])
                return f"missing required field '{field}'"
            return BAD_JSON
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, UnsupportedValue):
            return str(cause)
        if first_value_error is None:
            field = ".".join(str(p) for p in err["loc"])
            text = str(cause) if cause is not None else err["msg"]
            first_value_error = f"{field}: {text}" if field else text
    return first_value_error or BAD_JSON


def to_model(model: type[M], value: Any) -> M:
    if not isinstance(value, dict):
        raise BadInput(BAD_JSON)
    try:
        return model.model_validate(_fold_keys(value))
    except ValidationError as e:
        raise BadInput(_message(e)) from None
    except ValueError as e:  # a validator outside pydantic's wrapping
        raise BadInput(str(e)) from None


def to_models(model: type[M], value: Any) -> tuple[M, ...]:
    """A JSON array of objects; null means an empty list (PUT null clears, as in Portal)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadInput(BAD_JSON)
    out = []
    for i, item in enumerate(value):
        try:
            out.append(to_model(model, item))
        except BadInput as e:
            raise BadInput(str(e) if str(e) == BAD_JSON else f"item {i}: {e}") from None
    return tuple(out)


def folded(value: Any) -> Any:
    """The body with Go's key semantics applied (for callers that pre-process fields)."""
    return _fold_keys(value)
