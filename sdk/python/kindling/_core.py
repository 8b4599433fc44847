"""Logic shared by the blocking and the asyncio clients, without I/O: configuration, the execution spec on the wire,
the retry policy, error answers, the server-sent events parser and the invoke answer's headers."""

from __future__ import annotations

import codecs
import json
import os
import random
import re
from dataclasses import dataclass
from typing import IO, Any, Iterable, Iterator, Mapping, Optional, Union
from urllib.parse import quote, urlsplit

from ._errors import (
    ConnectionError,
    KindlingError,
    TimeoutError,
    error_from_payload,
)
from ._types import JsonDict

__version__ = "0.1.0"

#: Where a client talks to when neither ``url`` nor ``KINDLING_URL`` is given.
DEFAULT_URL = "http://127.0.0.1:8080"
#: Default timeout in seconds of each network operation (connect, each read, each write) of a request.
DEFAULT_TIMEOUT_S = 120.0
#: Extra seconds allowed beyond a spec's ``timeoutMs`` (queueing, sandbox start), so a long run is not cut off.
EXECUTION_GRACE_S = 30.0
#: Retries of a failed request (only retryable errors, only when sending it again is safe).
DEFAULT_MAX_RETRIES = 2
#: A ``Retry-After`` longer than this (seconds) is not waited for: the error is raised to the caller instead.
MAX_RETRY_WAIT_S = 10.0
#: Size of the chunks read from files and sent to sinks, in bytes.
CHUNK_BYTES = 256 * 1024

#: Codes of requests the server refused before doing any work: a POST that got one may be sent again.
# NO_WORKERS: a cluster gateway placed the call nowhere, so nothing ran (WORKER_LOST may have run: not here).
_NOT_STARTED_CODES = frozenset({"TOO_MANY_REQUESTS", "TENANT_RATE_LIMITED", "TENANT_CONCURRENCY_LIMIT", "TENANT_BUILD_LIMIT", "NO_WORKERS"})

StdinSource = Union[bytes, bytearray, memoryview, str, IO[bytes], Iterable[bytes], None]


@dataclass(frozen=True)
class Config:
    """A client's settings, validated."""

    url: str
    api_key: Optional[str]
    tenant: Optional[str]
    timeout: Optional[float]
    max_retries: int


def make_config(
    url: Optional[str],
    api_key: Optional[str],
    tenant: Optional[str],
    timeout: Optional[float],
    max_retries: int,
    env: Optional[Mapping[str, str]] = None,
) -> Config:
    """Arguments win; ``KINDLING_URL`` / ``KINDLING_API_KEY`` fill what is not given (empty counts as unset)."""
    environ = os.environ if env is None else env
    raw_url = url if url else (environ.get("KINDLING_URL") or DEFAULT_URL)
    key = api_key if api_key else (environ.get("KINDLING_API_KEY") or None)
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout must be a number of seconds > 0 (or None: no timeout), got {timeout!r}")
    if not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be a whole number >= 0, got {max_retries!r}")
    return Config(normalize_url(raw_url), key, tenant or None, None if timeout is None else float(timeout), max_retries)


def normalize_url(raw: str) -> str:
    """The base URL without a trailing slash; a path prefix (behind a reverse proxy) is kept."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Kindling url must be http:// or https:// with a host, got {raw!r} (e.g. {DEFAULT_URL})")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("Kindling url must not carry a query, a fragment or credentials (use api_key)")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def base_headers(config: Config) -> dict[str, str]:
    headers = {"user-agent": f"kindling-python/{__version__}", "accept": "application/json"}
    if config.api_key:
        headers["authorization"] = f"Bearer {config.api_key}"
    if config.tenant:
        headers["x-kindling-tenant"] = config.tenant
    return headers


def seg(value: str) -> str:
    """One path segment, percent-encoded."""
    return quote(value, safe="")


# --- the execution spec -------------------------------------------------------------------------------------------

_SPEC_FIELDS = (
    "runtime code image command stdin stdinBase64 env workdir timeoutMs memoryMb cpus pids outputBytes diskMb "
    "openFiles network executor outputEncoding"
).split()
_SNAKE = {re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower(): name for name in _SPEC_FIELDS}
_SNAKE["stdin_base64"] = "stdinBase64"


def to_wire_spec(spec: Mapping[str, Any]) -> JsonDict:
    """The JSON body for a spec: snake_case keys (``timeout_ms``) become the wire's camelCase (``timeoutMs``),
    ``timeout`` (seconds) becomes ``timeoutMs``, bytes ``stdin`` becomes ``stdinBase64``. Unknown keys are sent as
    they are (the server rejects them with a message naming them)."""
    if not isinstance(spec, Mapping):
        raise TypeError("the execution spec must be a dict, e.g. {'runtime': 'python', 'code': 'print(1)'}")
    out: JsonDict = {}
    for key, value in spec.items():
        if value is None:
            continue
        if key == "timeout":
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"timeout must be a number of seconds > 0, got {value!r}")
            out["timeoutMs"] = int(round(value * 1000))
            continue
        name = _SNAKE.get(key, key)
        if name == "stdin" and isinstance(value, (bytes, bytearray, memoryview)):
            import base64

            out["stdinBase64"] = base64.b64encode(bytes(value)).decode("ascii")
            continue
        if name == "command" and isinstance(value, (list, tuple)):
            value = list(value)
        out[name] = value
    if "stdin" in out and "stdinBase64" in out:
        raise ValueError("give at most one of stdin and stdin_base64")
    return out


def execution_timeout(base: Optional[float], wire: Mapping[str, Any]) -> Optional[float]:
    """The request timeout for an execution: the client's, raised to the spec's limit + a grace when longer."""
    if base is None:
        return None
    limit = wire.get("timeoutMs")
    if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > 0:
        return max(base, limit / 1000 + EXECUTION_GRACE_S)
    return base


def raw_spec_header(spec: Mapping[str, Any]) -> str:
    wire = to_wire_spec(spec)
    if "stdin" in wire or "stdinBase64" in wire:
        raise ValueError("a raw execution's stdin is the stdin= argument, not a spec field")
    return json.dumps(wire, separators=(",", ":"))


def iter_source(source: StdinSource, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Bytes of a stdin/body source in chunks, read lazily (a file is read as it is sent, never whole)."""
    if source is None:
        return
    if isinstance(source, str):
        yield source.encode()
        return
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        for at in range(0, len(data), chunk_bytes):
            yield data[at : at + chunk_bytes]
        return
    read = getattr(source, "read", None)
    if callable(read):
        while True:
            chunk = read(chunk_bytes)
            if not chunk:
                return
            if not isinstance(chunk, (bytes, bytearray)):
                raise TypeError("a stdin/body file must be opened in binary mode ('rb')")
            yield bytes(chunk)
    for chunk in source:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"a stdin/body iterator must yield bytes, got {type(chunk).__name__}")
        if chunk:
            yield bytes(chunk)


def source_length(source: StdinSource) -> Optional[int]:
    """The size in bytes of a source when it is known up front (bytes, a regular file read from its start)."""
    if source is None:
        return 0
    if isinstance(source, str):
        return len(source.encode())
    if isinstance(source, (bytes, bytearray, memoryview)):
        return source.nbytes if isinstance(source, memoryview) else len(source)
    fileno = getattr(source, "fileno", None)
    tell = getattr(source, "tell", None)
    if callable(fileno) and callable(tell):
        try:
            import stat

            st = os.fstat(fileno())
            if stat.S_ISREG(st.st_mode):
                return max(0, st.st_size - int(tell()))
        except (OSError, ValueError):
            return None
    return None


# --- errors and retries -------------------------------------------------------------------------------------------


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> KindlingError:
    text = body.decode("utf-8", "replace")
    try:
        payload: Any = json.loads(text)
    except ValueError:
        payload = None
    snippet = text.strip()[:200]
    return error_from_payload(
        payload,
        status=status,
        retry_after=headers.get("retry-after"),
        request_id_header=headers.get("x-request-id"),
        fallback_message=f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}",
    )


def connection_failed(url: str, cause: BaseException, *, sent: bool) -> ConnectionError:
    """A failure with no answer. ``sent`` is False only when no connection was made (nothing reached the server)."""
    error = ConnectionError(
        "CONNECTION_FAILED" if not sent else "STREAM_INTERRUPTED",
        f"Could not reach Kindling at {url}: {cause}" if not sent else f"The connection to {url} broke: {cause}",
        retryable=True,
    )
    error._not_sent = not sent  # type: ignore[attr-defined]
    return error


def timed_out(url: str, timeout: Optional[float], cause: BaseException) -> TimeoutError:
    return TimeoutError("TIMEOUT", f"Request to {url} timed out (timeout {timeout} s): {cause}", retryable=True)


def should_retry(error: KindlingError, idempotent: bool, attempt: int, max_retries: int) -> Optional[float]:
    """Seconds to wait before sending the request again, or None: do not retry.

    Only retryable errors, and only when sending again is safe: an idempotent call (GET, PUT, DELETE, an async
    invoke with an idempotency key), or a request the server refused before doing anything (429) or that never left
    (no connection). Timeouts are not retried (the call already took as long as the caller allowed). Exponential
    backoff with jitter, or the server's ``Retry-After`` when it sent one (up to ``MAX_RETRY_WAIT_S``)."""
    if attempt >= max_retries or not error.retryable or error.code == "TIMEOUT":
        return None
    safe = idempotent or error.code in _NOT_STARTED_CODES or getattr(error, "_not_sent", False)
    if not safe:
        return None
    if error.retry_after is not None:
        return error.retry_after if error.retry_after <= MAX_RETRY_WAIT_S else None
    return min(8.0, 0.25 * (2.0**attempt)) * (0.5 + random.random() / 2)


# --- server-sent events -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str


class SseParser:
    """Incremental server-sent events parser (WHATWG rules): CRLF/LF/CR line ends split anywhere (even inside a UTF-8
    character), comments skipped, ``data:`` lines joined with newlines, an unfinished event at the end dropped."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._line = ""
        self._skip_lf = False
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        text = self._decoder.decode(chunk)
        events: list[SseEvent] = []
        if self._skip_lf and text.startswith("\n"):
            text = text[1:]
        self._skip_lf = False
        start = 0
        for match in re.finditer(r"\r\n|\r|\n", text):
            line = self._line + text[start : match.start()]
            self._line = ""
            start = match.end()
            if match.group() == "\r" and match.end() == len(text):
                self._skip_lf = True
            self._process(line, events)
        self._line += text[start:]
        return events

    def _process(self, line: str, events: list[SseEvent]) -> None:
        if line == "":
            if self._data:
                events.append(SseEvent(self._event or "message", "\n".join(self._data)))
            self._data = []
            self._event = ""
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)


# --- function invocations -----------------------------------------------------------------------------------------


def header_int(headers: Mapping[str, str], name: str) -> Optional[int]:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def header_float(headers: Mapping[str, str], name: str) -> Optional[float]:
    value = headers.get(name)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def invoke_headers(
    content_type: Optional[str], idempotency_key: Optional[str] = None, callback_url: Optional[str] = None, is_async: bool = False
) -> dict[str, str]:
    headers = {"content-type": content_type or "application/octet-stream", "accept": "*/*"}
    if is_async:
        headers["x-kindling-async"] = "true"
        headers["accept"] = "application/json"
    if idempotency_key is not None:
        headers["idempotency-key"] = idempotency_key
    if callback_url is not None:
        headers["x-kindling-callback"] = callback_url
    return headers


def logs_query(follow: bool, tail: Optional[int]) -> str:
    params = []
    if follow:
        params.append("follow=true")
    if tail is not None:
        params.append(f"tail={int(tail)}")
    return ("?" + "&".join(params)) if params else ""


def list_query(params: Mapping[str, Any]) -> str:
    from urllib.parse import urlencode

    clean = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in params.items() if v is not None}
    return ("?" + urlencode(clean)) if clean else ""


def as_bytes(body: Union[bytes, bytearray, memoryview, str, None]) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode()
    return bytes(body)


def parse_json(body: bytes, status: int, url: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        snippet = body[:200].decode("utf-8", "replace").strip() or "(empty body)"
        raise KindlingError("INVALID_RESPONSE", f"Expected JSON from {url} (HTTP {status}), got: {snippet}", status=status) from None
