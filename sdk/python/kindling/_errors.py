"""Typed errors. Every failure of a request is a :class:`KindlingError`; a program that exits non-zero is a result.

Server error answers (``{"error": {"code", "message", "details"?}, "requestId"}``) are converted in exactly one place,
:func:`error_from_payload`; failures without an answer (network, timeout) in the transports.
"""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any, Mapping, Optional


class KindlingError(Exception):
    """Base class of every error the SDK raises for a request.

    Attributes:
        code: stable machine-readable code: the server's (``VALIDATION_FAILED``, ...) or the SDK's
            (``CONNECTION_FAILED``, ``TIMEOUT``, ``STREAM_INTERRUPTED``, ``INVALID_RESPONSE``, ``ABORTED``).
        message: what went wrong and, for the server's errors, how to fix it.
        status: HTTP status of the answer; None when there was none (network failure, timeout, stream error).
        request_id: the server's request id (body ``requestId`` or header ``x-request-id``), for logs and support.
        retryable: whether the same request may succeed when sent again later.
        details: extra facts from the server (which field, the allowed range), when it gave some.
        retry_after: seconds the server asked to wait before retrying (``Retry-After``), when it said.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: Optional[int] = None,
        request_id: Optional[str] = None,
        retryable: bool = False,
        details: Optional[dict[str, Any]] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id
        self.retryable = retryable
        self.details = details
        self.retry_after = retry_after

    def __str__(self) -> str:
        suffix = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.code}: {self.message}{suffix}"


class AuthenticationError(KindlingError):
    """401 (or 403): the API key is missing or wrong, or not allowed to do this."""


class PermissionDeniedError(AuthenticationError):
    """403 ``FORBIDDEN``: a valid key that may not do this (an admin-only route with a tenant key)."""


class NotFoundError(KindlingError):
    """404: the resource or route does not exist, or belongs to another tenant."""


class ValidationError(KindlingError):
    """Any other 4xx (400, 405, 406, 413, 415, 431, ...): the request is wrong; fix it before sending it again."""


class ConflictError(ValidationError):
    """409 (``TENANT_EXISTS``, ``LAST_ADMIN_KEY``, ``INVOCATION_NOT_FINISHED``): conflicts with what exists."""


class RateLimitError(KindlingError):
    """429: too many requests. ``retry_after`` (seconds) says how long to wait when the server sent it."""


class ServerError(KindlingError):
    """5xx, or an ``error`` event in the middle of a stream: the platform failed. ``retryable`` says whether to retry."""


class ConnectionError(KindlingError):  # noqa: A001 - mirrors the TypeScript SDK's name; import it qualified
    """No (complete) answer: the server could not be reached or the connection broke (``CONNECTION_FAILED``,
    ``STREAM_INTERRUPTED``). The request may or may not have run."""


class TimeoutError(ConnectionError):  # noqa: A001 - mirrors the TypeScript SDK's name; import it qualified
    """The request (or a wait) took longer than its timeout (code ``TIMEOUT``). The request may or may not have run."""


class AbortError(KindlingError):
    """The caller stopped the request (closed a stream before its end). Code ``ABORTED``."""


# Codes whose failure is transient when no status is known (``error`` events inside a stream).
_RETRYABLE_CODES = frozenset(
    {"TOO_MANY_REQUESTS", "SANDBOX_PORT_UNREACHABLE", "SANDBOX_PORT_LIMIT", "EXECUTOR_UNAVAILABLE", "EXECUTOR_FAILED", "SHUTTING_DOWN", "SANDBOX_START_TIMEOUT", "STORAGE_FULL", "NO_WORKERS", "WORKER_LOST", "CLUSTER_UNAVAILABLE"}
)
_RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504, 507})

#: The class each error code of the server's registry (src/core/errors.ts) maps to. A code missing here falls back to
#: its HTTP status; the drift test checks that every code of the registry is listed.
ERROR_CODE_CLASSES: dict[str, type[KindlingError]] = {
    "INVALID_JSON": ValidationError,
    "VALIDATION_FAILED": ValidationError,
    "UNKNOWN_RUNTIME": ValidationError,
    "UNKNOWN_IMAGE": ValidationError,
    "UNKNOWN_EXECUTOR": ValidationError,
    "CONFLICTING_FIELDS": ValidationError,
    "LIMIT_OUT_OF_RANGE": ValidationError,
    "UNSUPPORTED_NETWORK": ValidationError,
    "HANDLERS_UNSUPPORTED": ValidationError,
    "SANDBOXES_UNSUPPORTED": ValidationError,
    "SANDBOX_PATH_INVALID": ValidationError,
    "SANDBOX_TAR_INVALID": ValidationError,
    "BUNDLE_INVALID": ValidationError,
    "BUNDLES_UNSUPPORTED": ValidationError,
    "BUILD_FAILED": ValidationError,
    "BUILD_NOT_FOUND": NotFoundError,
    "BUILD_IN_PROGRESS": ConflictError,
    "SANDBOX_NOT_FOUND": NotFoundError,
    "SANDBOX_COMMAND_NOT_FOUND": NotFoundError,
    "SANDBOX_COMMAND_LIMIT": RateLimitError,
    "SANDBOX_PTY_UNSUPPORTED": ConflictError,
    "SANDBOX_STATE_LOST": ConflictError,
    "SANDBOX_COMMANDS_RUNNING": ConflictError,
    "SANDBOX_FILE_NOT_FOUND": NotFoundError,
    "SANDBOX_PAUSED": ConflictError,
    "SANDBOX_NOT_RUNNING": ConflictError,
    "SANDBOX_DISK_FULL": ValidationError,
    "TENANT_SANDBOX_LIMIT": RateLimitError,
    "SNAPSHOT_NOT_FOUND": NotFoundError,
    "SNAPSHOT_IN_USE": ConflictError,
    "IMAGE_NOT_FOUND": NotFoundError,
    "IMAGE_NOT_READY": ConflictError,
    "IMAGE_LIMIT": ConflictError,
    "IMAGE_IN_USE": ConflictError,
    "IMAGE_FILES_INVALID": ValidationError,
    "TENANT_SNAPSHOT_LIMIT": RateLimitError,
    "SNAPSHOTS_UNSUPPORTED": ValidationError,
    "SANDBOX_PORT_LIMIT": RateLimitError,
    "UNAUTHORIZED": AuthenticationError,
    "FORBIDDEN": PermissionDeniedError,
    "FORBIDDEN_ORIGIN": PermissionDeniedError,
    "HOST_NOT_ALLOWED": ValidationError,
    "TENANT_NOT_FOUND": NotFoundError,
    "TENANT_EXISTS": ConflictError,
    "LAST_ADMIN_KEY": ConflictError,
    "TENANT_STORAGE_LIMIT": ConflictError,
    "TENANT_LIMIT_EXCEEDED": ValidationError,
    "TENANT_RATE_LIMITED": RateLimitError,
    "TENANT_CONCURRENCY_LIMIT": RateLimitError,
    "TENANT_BUILD_LIMIT": RateLimitError,
    "NOT_FOUND": NotFoundError,
    "FUNCTION_NOT_FOUND": NotFoundError,
    "ROUTE_NOT_FOUND": NotFoundError,
    "METHOD_NOT_ALLOWED": ValidationError,
    "MALFORMED_REQUEST": ValidationError,
    "HEADERS_TOO_LARGE": ValidationError,
    "NOT_ACCEPTABLE": ValidationError,
    "INVOCATION_NOT_FINISHED": ConflictError,
    "PAYLOAD_TOO_LARGE": ValidationError,
    "UNSUPPORTED_MEDIA_TYPE": ValidationError,
    "TOO_MANY_REQUESTS": RateLimitError,
    "CLIENT_DISCONNECTED": ValidationError,
    "EXECUTOR_UNAVAILABLE": ServerError,
    "SANDBOX_START_TIMEOUT": ServerError,
    "STORAGE_FULL": ServerError,
    "EXECUTOR_FAILED": ServerError,
    "SANDBOX_PORT_UNREACHABLE": ServerError,
    "SHUTTING_DOWN": ServerError,
    "NO_WORKERS": ServerError,
    "CLUSTER_UNAVAILABLE": ServerError,
    "WORKER_LOST": ServerError,
    "COMPAT_UNSUPPORTED": ServerError,
    "OPERATOR_RESULT_NOT_FOUND": NotFoundError,
    "OPERATOR_OUT_OF_FUNDS": ServerError,
    "OPERATOR_GAS_CAP": ServerError,
    "INTERNAL": ServerError,
}


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """``Retry-After`` (seconds, or an HTTP date) in seconds; None when absent or unparsable."""
    if value is None:
        return None
    text = value.strip()
    if text == "":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isnan(seconds):
        return seconds if seconds >= 0 and math.isfinite(seconds) else None
    try:
        at = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, at.timestamp() - (time.time() if now is None else now))


def _class_for_status(status: int) -> type[KindlingError]:
    if status == 401:
        return AuthenticationError
    if status == 403:
        return PermissionDeniedError
    if status == 404:
        return NotFoundError
    if status == 409:
        return ConflictError
    if status == 429:
        return RateLimitError
    if status >= 500:
        return ServerError
    if status >= 400:
        return ValidationError
    return KindlingError


def error_from_payload(
    payload: Any,
    *,
    status: Optional[int] = None,
    retry_after: Optional[str] = None,
    request_id_header: Optional[str] = None,
    fallback_message: Optional[str] = None,
) -> KindlingError:
    """THE mapping from a server error answer (parsed body, or anything else: then the status decides) to a typed
    error. ``status`` is None for an ``error`` event inside a stream."""
    body: Mapping[str, Any] = payload if isinstance(payload, dict) else {}
    error: Mapping[str, Any] = body.get("error") if isinstance(body.get("error"), dict) else {}  # type: ignore[assignment]
    raw_code = error.get("code")
    code = raw_code if isinstance(raw_code, str) and raw_code else ("INTERNAL" if status is None else f"HTTP_{status}")
    raw_message = error.get("message")
    message = (
        raw_message
        if isinstance(raw_message, str) and raw_message
        else (fallback_message or ("The server reported an error" if status is None else f"HTTP {status}"))
    )
    raw_id = body.get("requestId")
    request_id = raw_id if isinstance(raw_id, str) else (request_id_header or None)
    raw_details = error.get("details")
    details = raw_details if isinstance(raw_details, dict) else None
    raw_retryable = error.get("retryable")
    if isinstance(raw_retryable, bool):
        retryable = raw_retryable
    elif status is None:
        retryable = code in _RETRYABLE_CODES
    else:
        retryable = status in _RETRYABLE_STATUSES
    cls = ERROR_CODE_CLASSES.get(code)
    if cls is None:
        cls = ServerError if status is None else _class_for_status(status)
    return cls(
        code,
        message,
        status=status,
        request_id=request_id,
        retryable=retryable,
        details=details,
        retry_after=parse_retry_after(retry_after),
    )
