"""Cheap, explicit validation helpers shared by the ingress dialects.

Each helper raises InvalidRequestError with `param` set to the offending field path, so a client sees
exactly which field is wrong. Booleans are rejected where numbers are expected (bool is an int in Python).
"""

from __future__ import annotations

import math
from typing import Any

from ai_gateway.errors import InvalidRequestError

__all__ = [
    "FORBIDDEN_PARAMS",
    "opt_bool",
    "opt_int",
    "opt_number",
    "opt_str",
    "reject_forbidden",
    "req_str",
    "type_name",
]

# Fields that would let a request choose infrastructure or credentials (research/reliability.md K1,
# CVE-2024-6587). Base URLs and keys come only from operator configuration.
FORBIDDEN_PARAMS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "extra_headers",
        "litellm_params",
        "custom_llm_provider",
    }
)


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _wrong(param: str, expected: str, value: object) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {expected}, but got {type_name(value)}.",
        param=param,
        code="invalid_type",
    )


def req_str(body: dict[str, Any], key: str, param: str | None = None) -> str:
    value = body.get(key)
    param = param or key
    if value is None:
        raise InvalidRequestError(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required"
        )
    if not isinstance(value, str):
        raise _wrong(param, "a string", value)
    return value


def opt_str(body: dict[str, Any], key: str, param: str | None = None) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _wrong(param or key, "a string", value)
    return value


def opt_bool(body: dict[str, Any], key: str, param: str | None = None) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _wrong(param or key, "a boolean", value)
    return value


def opt_int(body: dict[str, Any], key: str, lo: int, hi: int, param: str | None = None) -> int | None:
    value = body.get(key)
    param = param or key
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer() and lo <= value <= hi:
            return int(value)
        raise _wrong(param, "an integer", value)
    if not lo <= value <= hi:
        raise InvalidRequestError(
            f"Invalid value for '{param}': {value} is out of range; expected {lo} to {hi}.",
            param=param,
            code="invalid_value",
        )
    return value


def opt_number(
    body: dict[str, Any], key: str, lo: float, hi: float, param: str | None = None
) -> float | None:
    value = body.get(key)
    param = param or key
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(param, "a number", value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidRequestError(
            f"Invalid value for '{param}': {value} is out of range; expected {lo:g} to {hi:g}.",
            param=param,
            code="invalid_value",
        )
    return float(value)


def reject_forbidden(body: dict[str, Any], prefix: str = "") -> None:
    for key in body:
        if key in FORBIDDEN_PARAMS:
            raise InvalidRequestError(
                f"'{prefix}{key}' cannot be set by a request: upstream URLs and credentials come only from "
                "the gateway's configuration.",
                param=prefix + key,
                code="forbidden_param",
            )
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and prefix == "":
        reject_forbidden(metadata, "metadata.")
