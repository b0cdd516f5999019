"""The one exception tree.

    GatewayError                      client-facing: knows its HTTP status, type, code and param
    ├── InvalidRequestError           400 invalid_request_error
    │   └── UnsupportedFeatureError   400 a feature the chosen provider cannot carry
    ├── AuthenticationError           401 authentication_error
    ├── PermissionDeniedError         403 permission_error
    ├── NotFoundError                 404 not_found_error (model_not_found, not_found)
    ├── MethodNotAllowedError         405
    ├── ConflictError                 409 conflict (a name already taken, a revoked key edited)
    ├── RequestTooLargeError          413 request_too_large
    ├── UnsupportedMediaTypeError     415
    ├── RateLimitError                429 rate_limited | tokens_rate_limited | budget_exceeded
    │                                     | upstream_rate_limited
    ├── UpstreamError                 502 all_providers_failed | upstream_bad_response
    ├── ServiceUnavailableError       503 provider_not_configured | all_providers_unavailable | draining
    │                                     | rate_limiter_unavailable
    └── DeadlineExceededError         504 upstream_timeout

    ProviderError                     one failed upstream attempt; never shown to a client as is.
                                      The router turns a chain of these into a GatewayError.
    BackendUnavailableError           a shared store (Redis) did not answer; never shown as is: the
                                      limiter applies `limits.on_backend_error`, the cache misses.

Foreign errors (the transport's OSErrors, malformed HTTP, JSON decoding) become ProviderError in
exactly one place (`providers/_http.py`); SQLAlchemy errors become ServiceUnavailableError or ConflictError in
`stores/sql.py` (keys, tenants), and ServiceUnavailableError or `RowRefusedError` (a ValueError: the
database refused a value) in `stores/_ledger_db.py` (the ledger and its reports); redis errors are
absorbed (logged, then retried) in `stores/revocations.py` and become BackendUnavailableError in
`stores/_redis.py` for the limiter and the cache.
No message built here ever includes an upstream body, a key or a DSN.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = [
    "AuthenticationError",
    "BackendUnavailableError",
    "ConflictError",
    "DeadlineExceededError",
    "GatewayError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProviderError",
    "ProviderErrorKind",
    "RateLimitError",
    "RequestTooLargeError",
    "ServiceUnavailableError",
    "UnsupportedFeatureError",
    "UnsupportedMediaTypeError",
    "UpstreamError",
    "scrub",
]


class GatewayError(Exception):
    status: int = 500
    type: str = "api_error"
    default_code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.retry_after = retry_after
        self.headers = headers or {}


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class UnsupportedFeatureError(InvalidRequestError):
    default_code = "unsupported_feature"


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status = 403
    type = "permission_error"
    default_code = "permission_denied"


class NotFoundError(GatewayError):
    status = 404
    type = "not_found_error"
    default_code = "model_not_found"


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class ConflictError(GatewayError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class RequestTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RateLimitError(GatewayError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limited"


class UpstreamError(GatewayError):
    status = 502
    type = "api_error"
    default_code = "all_providers_failed"


class ServiceUnavailableError(GatewayError):
    status = 503
    type = "api_error"
    default_code = "service_unavailable"


class DeadlineExceededError(GatewayError):
    status = 504
    type = "timeout_error"
    default_code = "upstream_timeout"


class BackendUnavailableError(Exception):
    """A shared store (Redis) failed or timed out; `transient` is False for a reply that says the data
    itself is wrong (e.g. WRONGTYPE at one key), which is no reason to stop calling the store."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


ProviderErrorKind = Literal[
    "connect",  # could not connect (refused, DNS, TLS)
    "timeout",  # a clock ran out: connect, first byte, idle or overall
    "status",  # the upstream answered with an HTTP error status
    "bad_response",  # 2xx but unparseable or missing required fields
    "reset",  # the connection broke mid-response
    "not_configured",  # the provider has no key; skipped without a call
    "circuit_open",  # skipped: too many recent failures
]

# Upstream statuses worth trying again on the same target, and statuses that say "this target cannot
# serve you now, try the next one" (401/403: its key is bad; 404: it does not have the model).
_RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


class ProviderError(Exception):
    """One failed attempt against one upstream target."""

    def __init__(
        self,
        kind: ProviderErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        upstream_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        # The upstream's own error message (scrubbed), shown only for errors the client caused.
        self.upstream_message = upstream_message

    @property
    def retryable(self) -> bool:
        """Worth another try on the same target after a backoff.

        A refused connection or a timeout says the target is down or stuck: waiting to try it again only
        delays the fallback (research/reliability.md F-07), so those move on to the next target at once.
        """
        if self.kind == "reset":
            return True
        return self.kind == "status" and self.status in _RETRYABLE_STATUS

    @property
    def client_fault(self) -> bool:
        """The upstream rejected the request itself (400/413/422): no other target would accept it."""
        return self.kind == "status" and self.status in (400, 413, 422)

    @property
    def counts_for_breaker(self) -> bool:
        return self.kind not in ("not_configured", "circuit_open") and not self.client_fault


_SECRETISH = re.compile(r"(sk-[A-Za-z0-9_\-]{4,}|[A-Za-z0-9_\-]{32,}|(?i:bearer)\s+\S+)")


def scrub(text: str, limit: int = 300) -> str:
    """Strip anything that looks like a credential from an upstream message and bound its length."""
    text = _SECRETISH.sub("[redacted]", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"
