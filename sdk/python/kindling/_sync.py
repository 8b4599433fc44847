"""The blocking client, :class:`Kindling`. Every method raises a :class:`~kindling.KindlingError` subclass on failure."""

from __future__ import annotations

import json
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Union

import httpx

from . import _core, _raw
from ._core import Config, StdinSource, seg
from ._sandboxes import Sandboxes
from ._images import Images
from ._errors import AbortError, ConnectionError, KindlingError, TimeoutError, error_from_payload
from ._bundle import tar_directory
from ._types import (
    ApiKeyInfo,
    AsyncInvocation,
    CreatedApiKey,
    CreatedTenant,
    ExecutionResult,
    FunctionInfo,
    BuildLog,
    BuildLogEvent,
    DeployAccepted,
    FunctionBuildInfo,
    FunctionVersionInfo,
    Invocation,
    InvocationOutput,
    InvocationResult,
    JsonDict,
    LogEvent,
    OutputEvent,
    RawResult,
    TenantInfo,
    TenantSelf,
    Usage,
    created_key_from_wire,
    created_tenant_from_wire,
    expect_dict,
    tenant_self_from_wire,
)

if TYPE_CHECKING:
    from ._interactive import InteractiveSession

_UNSET: Any = object()
Timeout = Optional[float]
Sink = Union[IO[bytes], Callable[[bytes], Any]]


def _map_transport(exc: httpx.HTTPError, url: str, timeout: Timeout, *, sent: bool) -> KindlingError:
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return _core.connection_failed(url, exc, sent=False)
    if isinstance(exc, httpx.TimeoutException):
        return _core.timed_out(url, timeout, exc)
    return _core.connection_failed(url, exc, sent=sent)


class _Http:
    """The one transport of a blocking client: headers, timeouts, retries and error mapping."""

    def __init__(self, config: Config, client: Optional[httpx.Client]) -> None:
        self.config = config
        self._owned = client is None
        self.client = client or httpx.Client(timeout=config.timeout, headers=_core.base_headers(config))
        if not self._owned:
            self.client.headers.update(_core.base_headers(config))

    def url(self, path: str) -> str:
        return self.config.url + path

    def send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Timeout = _UNSET,
        idempotent: bool,
        stream: bool = False,
        accept_statuses: tuple[int, ...] = (),
        replayable: bool = True,
    ) -> httpx.Response:
        """Sends a request (again on retryable failures when that is safe) and returns the answer, read whole unless
        ``stream``. An error status (other than ``accept_statuses``) is raised as a typed error."""
        url = self.url(path)
        effective = self.config.timeout if timeout is _UNSET else timeout
        attempt = 0
        while True:
            error: KindlingError
            try:
                request = self.client.build_request(
                    method, url, json=json_body, content=content, headers=headers, timeout=httpx.Timeout(effective)
                )
                response = self.client.send(request, stream=True)
            except httpx.HTTPError as exc:
                error = _map_transport(exc, url, effective, sent=True)
            else:
                if response.status_code >= 400 and response.status_code not in accept_statuses:
                    try:
                        body = response.read()
                    except httpx.HTTPError:
                        body = b""
                    finally:
                        response.close()
                    error = _core.error_from_response(response.status_code, response.headers, body)
                elif stream:
                    return response
                else:
                    try:
                        response.read()
                        return response
                    except httpx.HTTPError as exc:
                        raise _map_transport(exc, url, effective, sent=True) from exc
                    finally:
                        response.close()
            delay = _core.should_retry(error, idempotent, attempt, self.config.max_retries)
            if delay is None or (not replayable and not getattr(error, "_not_sent", False)):
                raise error
            attempt += 1
            time.sleep(delay)

    def json(self, method: str, path: str, *, idempotent: Optional[bool] = None, **kwargs: Any) -> Any:
        response = self.send(method, path, idempotent=method in ("GET", "PUT", "DELETE") if idempotent is None else idempotent, **kwargs)
        if response.status_code == 204:
            return None
        return _core.parse_json(response.content, response.status_code, str(response.url))

    def close(self) -> None:
        if self._owned:
            self.client.close()


class ExecutionStream:
    """A streaming execution (``POST /v1/execute`` as server-sent events). Iterate it for :class:`OutputEvent`\\ s as
    the program produces them; the last one is ``exit`` with the :class:`ExecutionResult`, also in :attr:`result`.

    The request is sent when iteration starts. Leaving the loop early (``break``, an exception) or :meth:`close`
    closes the connection, and the server kills the execution and frees its sandbox. Use it as a context manager to
    make that happen at once. It can be iterated once."""

    def __init__(self, http: _Http, wire: JsonDict, timeout: Timeout) -> None:
        self._http = http
        self._wire = wire
        self._timeout = timeout
        self._response: Optional[httpx.Response] = None
        self._started = False
        self._finished = False
        #: The result, once the ``exit`` event arrived.
        self.result: Optional[ExecutionResult] = None

    def __enter__(self) -> "ExecutionStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the execution (closes the connection) unless it already ended."""
        if self._response is not None and not self._finished:
            self._response.close()
        self._finished = True

    def __iter__(self) -> Iterator[OutputEvent]:
        if self._started:
            raise RuntimeError("an ExecutionStream can be iterated once")
        self._started = True
        if self._finished:
            raise AbortError("ABORTED", "the stream was closed before it started")
        response = self._http.send(
            "POST", "/v1/execute", json_body=self._wire, headers={"accept": "text/event-stream"}, timeout=self._timeout,
            idempotent=False, stream=True,
        )
        self._response = response
        url = self._http.url("/v1/execute")
        try:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                # A server (or proxy) that ignores Accept answers with the plain result: replay its output once.
                result = ExecutionResult.from_wire(_core.parse_json(response.read(), response.status_code, url))
                yield from _replay(result)
                self.result = result
                self._finished = True
                return
            parser = _core.SseParser()
            try:
                for chunk in response.iter_raw():
                    for event in parser.feed(chunk):
                        if event.event in ("stdout", "stderr"):
                            yield OutputEvent(event.event, event.data)  # type: ignore[arg-type]
                        elif event.event == "exit":
                            result = ExecutionResult.from_wire(_core.parse_json(event.data.encode(), 200, url))
                            self.result = result
                            self._finished = True
                            yield OutputEvent("exit", event.data, result)
                            return
                        elif event.event == "error":
                            raise error_from_payload(_loads(event.data), fallback_message=event.data)
            except httpx.HTTPError as exc:
                raise _map_transport(exc, url, self._timeout, sent=True) from exc
            raise ConnectionError("STREAM_INTERRUPTED", f"The event stream from {url} ended before the exit event", retryable=True)
        finally:
            self.close()


def _replay(result: ExecutionResult) -> Iterator[OutputEvent]:
    if result.stdout:
        yield OutputEvent("stdout", result.stdout)
    if result.stderr:
        yield OutputEvent("stderr", result.stderr)
    yield OutputEvent("exit", json.dumps(result.raw), result)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _bundle_request(directory: Optional[str], tar: Optional[bytes], wait: bool, fields: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a bundle deploy: the tar (made from ``directory``, or given) and the spec header."""
    if (directory is None) == (tar is None):
        raise ValueError("give directory (tarred here) or tar (the archive's bytes), one of them")
    if fields.get("code") is not None:
        raise ValueError("a bundle brings its own code: drop code (the handler names the file, FILE:FUNCTION)")
    body = tar_directory(directory) if directory is not None else bytes(tar or b"")
    headers = {"content-type": "application/x-tar", "kindling-function-spec": json.dumps(_function_spec(**fields), separators=(",", ":"))}
    if not wait:
        headers["prefer"] = "respond-async"
    return body, headers


def _deploy_answer(response: httpx.Response) -> Union[FunctionInfo, DeployAccepted]:
    data = _core.parse_json(response.content, response.status_code, str(response.url))
    return DeployAccepted.from_wire(data) if response.status_code == 202 else FunctionInfo.from_wire(data)


def _build_log_path(name: str, build_id: str) -> str:
    return f"/v1/functions/{seg(name)}/builds/{seg(build_id)}/logs?follow=true"


def _sse_build_log(http: _Http, path: str, timeout: Timeout) -> Iterator[BuildLogEvent]:
    response = http.send("GET", path, headers={"accept": "text/event-stream"}, timeout=timeout, idempotent=True, stream=True)
    try:
        parser = _core.SseParser()
        for chunk in response.iter_raw():
            for event in parser.feed(chunk):
                if event.event in ("log", "skipped", "end"):
                    yield BuildLogEvent.from_sse(event.event, event.data)
                if event.event == "end":
                    return
    except httpx.HTTPError as exc:
        raise _map_transport(exc, http.url(path), timeout, sent=True) from exc
    finally:
        response.close()
    raise ConnectionError("STREAM_INTERRUPTED", f"The build log from {http.url(path)} ended before the build did", retryable=True)


def _sse_logs(http: _Http, path: str, timeout: Timeout) -> Iterator[LogEvent]:
    response = http.send("GET", path, headers={"accept": "text/event-stream"}, timeout=timeout, idempotent=True, stream=True)
    try:
        parser = _core.SseParser()
        for chunk in response.iter_raw():
            for event in parser.feed(chunk):
                yield LogEvent.from_sse(event.event, event.data)
    except httpx.HTTPError as exc:
        raise _map_transport(exc, http.url(path), timeout, sent=True) from exc
    finally:
        response.close()


class Functions:
    """``/v1/functions``: deploy, inspect, delete, invoke and follow deployed functions."""

    def __init__(self, http: _Http) -> None:
        self._http = http

    def deploy(
        self,
        name: str,
        *,
        runtime: Optional[str] = None,
        code: Optional[str] = None,
        file: Optional[str] = None,
        handler: Optional[str] = None,
        image: Optional[str] = None,
        command: Optional[list[str]] = None,
        timeout: Timeout = _UNSET,
        **fields: Any,
    ) -> FunctionInfo:
        """``PUT /v1/functions/NAME``: deploys a new immutable version and returns the function (``version`` is the
        new one). Give ``runtime`` + ``code`` (or ``file``: a path whose text is the code), with ``handler`` for the
        handler style; or ``image`` + ``command``. Other fields: ``env``, ``timeout_ms``, ``memory_mb``, ``cpus``,
        ``min_warm``, ``max_concurrency``, ``max_queued``, ``executor``, ``apt`` (Debian packages on top of the runtime's
        image: the deploy builds an image with them once per package set and waits for it; ``timeout`` bounds the wait, None:
        no bound)
        (snake_case or the wire's camelCase)."""
        if file is not None:
            if code is not None:
                raise ValueError("give code or file, not both")
            with open(file, encoding="utf-8") as handle:
                code = handle.read()
        spec = _function_spec(runtime=runtime, code=code, handler=handler, image=image, command=command, **fields)
        # Waits for its build, if any (a go or rust program, the image for ``apt`` packages): give a timeout that allows it.
        return FunctionInfo.from_wire(self._http.json("PUT", f"/v1/functions/{seg(name)}", json_body=spec, timeout=timeout))

    def deploy_bundle(
        self,
        name: str,
        directory: Optional[str] = None,
        *,
        tar: Optional[bytes] = None,
        runtime: Optional[str] = None,
        handler: Optional[str] = None,
        image: Optional[str] = None,
        command: Optional[list[str]] = None,
        wait: bool = True,
        timeout: Timeout = None,
        **fields: Any,
    ) -> Union[FunctionInfo, DeployAccepted]:
        """``PUT /v1/functions/NAME`` with a bundle: ``directory`` tarred here (see :func:`kindling.tar_directory`:
        ``.git`` and ``.kindlingignore``'s patterns left out; an entry the server would refuse raises
        :class:`ValueError` naming it before anything is sent), or ``tar``, an archive's bytes. ``handler`` is
        ``FILE:FUNCTION`` (``handler.py:main``) with ``runtime``; or ``command`` with ``runtime``/``image``.

        A bundle with dependencies (requirements.txt, package.json + package-lock.json) is built first. ``wait=True``
        returns the :class:`FunctionInfo` once the build is done (a failed build raises ``ValidationError``
        BUILD_FAILED; the previous version keeps serving); ``timeout`` defaults to none, since a build may take minutes.
        ``wait=False`` returns :class:`DeployAccepted` (the build's id, status ``building``) as soon as the build
        started (a bundle without dependencies is stored at once and returns :class:`FunctionInfo`). While a deploy of
        the function builds, another raises ``ConflictError`` BUILD_IN_PROGRESS."""
        body, headers = _bundle_request(directory, tar, wait, dict(fields, runtime=runtime, handler=handler, image=image, command=command))
        # Not retried: sent again while its build runs, the same deploy would be refused as BUILD_IN_PROGRESS.
        response = self._http.send("PUT", f"/v1/functions/{seg(name)}", content=body, headers=headers, timeout=timeout, idempotent=False)
        return _deploy_answer(response)

    def build(self, name: str, build_id: str) -> FunctionBuildInfo:
        """``GET /v1/functions/NAME/builds/ID``: one build's record (``version`` is the one a ready build stored)."""
        return FunctionBuildInfo.from_wire(self._http.json("GET", f"/v1/functions/{seg(name)}/builds/{seg(build_id)}"))

    def follow_build_log(self, name: str, build_id: str, *, timeout: Timeout = None) -> Iterator[BuildLogEvent]:
        """``GET /v1/functions/NAME/builds/ID/logs?follow=true``: the build's log as it is written (first what it wrote
        so far), ending with an ``end`` event carrying the final record (at once for a build that ended). No read
        timeout by default (a build may be quiet for a while); another tenant's build raises NotFoundError."""
        return _sse_build_log(self._http, _build_log_path(name, build_id), timeout)

    def get(self, name: str) -> FunctionInfo:
        """``GET /v1/functions/NAME``: the function and its latest version; :class:`NotFoundError` when there is none."""
        return FunctionInfo.from_wire(self._http.json("GET", f"/v1/functions/{seg(name)}"))

    def versions(self, name: str) -> list[FunctionVersionInfo]:
        """``GET /v1/functions/NAME/versions``: the versions the server keeps, oldest first (``latest`` marks the one that runs)."""
        answer = expect_dict(self._http.json("GET", f"/v1/functions/{seg(name)}/versions"), "the version list")
        return [FunctionVersionInfo.from_wire(item) for item in answer.get("versions") or []]

    def builds(self, name: str) -> list[FunctionBuildInfo]:
        """``GET /v1/functions/NAME/builds``: the dependency builds of the function's deploys, newest first (a first
        deploy's failed build shows here before the function exists)."""
        answer = expect_dict(self._http.json("GET", f"/v1/functions/{seg(name)}/builds"), "the build list")
        return [FunctionBuildInfo.from_wire(item) for item in answer.get("builds") or []]

    def build_logs(self, name: str, build_id: str) -> BuildLog:
        """``GET /v1/functions/NAME/builds/ID/logs``: a build's log and status. The id is in BUILD_FAILED's
        ``details["buildId"]``; an id the function does not have raises :class:`NotFoundError` (BUILD_NOT_FOUND)."""
        response = self._http.send("GET", f"/v1/functions/{seg(name)}/builds/{seg(build_id)}/logs", idempotent=True)
        return BuildLog(status=response.headers.get("x-kindling-build-status", "ready"), log=response.text)

    def list(self) -> list[FunctionInfo]:
        """``GET /v1/functions``: the functions of the caller's tenant (latest versions)."""
        answer = expect_dict(self._http.json("GET", "/v1/functions"), "the function list")
        return [FunctionInfo.from_wire(item) for item in answer.get("functions") or []]

    def delete(self, name: str) -> None:
        """``DELETE /v1/functions/NAME``: removes every version and its warm sandboxes."""
        self._http.json("DELETE", f"/v1/functions/{seg(name)}")

    def invoke(
        self,
        name: str,
        body: StdinSource = b"",
        *,
        content_type: Optional[str] = None,
        output: Optional[Sink] = None,
        timeout: Timeout = _UNSET,
    ) -> InvocationResult:
        """``POST /v1/functions/NAME/invoke``: ``body`` (bytes, text as UTF-8, a binary file or an iterator of bytes,
        streamed as it is read) in, the raw response out. A non-zero exit (or a handler that raised) is a result.

        With ``output`` (a binary file or a callable taking bytes) the response streams there as it arrives and
        ``body`` of the result is empty: memory stays flat for outputs of any size. A streamed body (file, iterator,
        or over 1 MiB) or an ``output`` makes the upload and the download run at once, as a command function like
        ``cat`` needs; such calls are not retried."""
        path = f"/v1/functions/{seg(name)}/invoke"
        headers = _core.invoke_headers(content_type)
        if _raw.wants_stream(body, output):
            # Upload and download at once (httpx would send the whole body first), with the trailers read.
            effective = self._http.config.timeout if timeout is _UNSET else timeout
            answer = _raw.exchange_sync(self._http.config, path, headers, body, output, effective)
            return self._result(*_raw.invoke_facts(answer))
        response = self._http.send("POST", path, content=_core.as_bytes(body), headers=headers, timeout=timeout, idempotent=False)  # type: ignore[arg-type]
        return self._result(response.headers, response.content)

    def _result(self, headers: Mapping[str, str], body: bytes) -> InvocationResult:
        invocation_id = headers.get("x-kindling-invocation-id", "")
        streamed = headers.get("x-kindling-output") == "streamed"
        exit_code = _core.header_int(headers, "x-kindling-exit-code")
        duration_ms = _core.header_float(headers, "x-kindling-duration-ms")
        if streamed and invocation_id and exit_code is None:
            # No trailers (an HTTP/1.0 hop drops them): the server records every invocation, the facts come from there.
            record = Invocation.from_wire(self._http.json("GET", f"/v1/invocations/{seg(invocation_id)}"))
            exit_code, duration_ms = record.exit_code, record.duration_ms
        return InvocationResult(
            body=body,
            invocation_id=invocation_id,
            version=_core.header_int(headers, "x-kindling-function-version") or 0,
            exit_code=exit_code,
            duration_ms=duration_ms,
            cold_start=headers.get("x-kindling-cold-start") == "true",
            streamed=streamed,
            node=headers.get("x-kindling-node"),
        )

    def invoke_async(
        self,
        name: str,
        body: Union[bytes, str] = b"",
        *,
        content_type: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        callback_url: Optional[str] = None,
    ) -> AsyncInvocation:
        """``POST /v1/functions/NAME/invoke`` with ``x-kindling-async: true``: returns once the server stored the
        invocation (202). With ``idempotency_key`` the same key returns the first invocation (``created`` False) and
        the call is retried safely. Follow it with ``client.invocations.wait(id)``."""
        answer = expect_dict(
            self._http.json(
                "POST", f"/v1/functions/{seg(name)}/invoke", content=_core.as_bytes(body),
                headers=_core.invoke_headers(content_type, idempotency_key, callback_url, is_async=True),
                idempotent=idempotency_key is not None,
            ),
            "an async invocation",
        )
        return AsyncInvocation(str(answer.get("invocationId", "")), answer.get("created") is not False, str(answer.get("status", "")))

    def logs(self, name: str, *, follow: bool = False, tail: Optional[int] = None, timeout: Timeout = _UNSET) -> Iterator[LogEvent]:
        """``GET /v1/functions/NAME/logs``: the last ``tail`` (server default 10) finished invocations' log events,
        then with ``follow`` every invocation live until the loop is left. A followed stream has no timeout unless
        one is given (seconds)."""
        effective = (None if follow else self._http.config.timeout) if timeout is _UNSET else timeout
        return _sse_logs(self._http, f"/v1/functions/{seg(name)}/logs{_core.logs_query(follow, tail)}", effective)


def _function_spec(**fields: Any) -> JsonDict:
    spec = _core.to_wire_spec({k: v for k, v in fields.items() if k not in ("min_warm", "max_concurrency", "max_queued")})
    for snake, wire in (("min_warm", "minWarm"), ("max_concurrency", "maxConcurrency"), ("max_queued", "maxQueued")):
        if fields.get(snake) is not None:
            spec[wire] = fields[snake]
    return spec


class Invocations:
    """``/v1/invocations``: invocations (async and sync) of the caller's tenant, their status, output and logs."""

    def __init__(self, http: _Http) -> None:
        self._http = http

    def get(self, invocation_id: str) -> Invocation:
        """``GET /v1/invocations/ID``; :class:`NotFoundError` for an unknown (or expired) id."""
        return Invocation.from_wire(self._http.json("GET", f"/v1/invocations/{seg(invocation_id)}"))

    def list(
        self, *, function: Optional[str] = None, status: Optional[str] = None, since: Optional[Union[int, str]] = None,
        until: Optional[Union[int, str]] = None, limit: Optional[int] = None,
    ) -> list[Invocation]:
        """``GET /v1/invocations``: newest first. ``since``/``until``: milliseconds since the epoch or ISO 8601;
        ``limit`` 1-1000 (server default 100)."""
        query = _core.list_query({"function": function, "status": status, "since": since, "until": until, "limit": limit})
        answer = expect_dict(self._http.json("GET", f"/v1/invocations{query}"), "the invocation list")
        return [Invocation.from_wire(item) for item in answer.get("invocations") or []]

    def output(self, invocation_id: str) -> InvocationOutput:
        """``GET /v1/invocations/ID/output``: the raw stdout of a finished invocation (:class:`ConflictError`
        ``INVOCATION_NOT_FINISHED`` before)."""
        response = self._http.send("GET", f"/v1/invocations/{seg(invocation_id)}/output", headers={"accept": "*/*"}, idempotent=True)
        return InvocationOutput(response.content, response.headers.get("x-kindling-status"), _core.header_int(response.headers, "x-kindling-exit-code"))

    def wait(self, invocation_id: str, *, timeout: Optional[float] = 600.0, interval: float = 0.25) -> Invocation:
        """Polls every ``interval`` seconds until the invocation succeeded or failed and returns it (a failed one is
        returned too). Raises :class:`TimeoutError` after ``timeout`` seconds (None: wait for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            invocation = self.get(invocation_id)
            if invocation.finished:
                return invocation
            if deadline is not None and time.monotonic() + interval > deadline:
                raise TimeoutError("TIMEOUT", f"invocation {invocation_id} was still {invocation.status} after {timeout} s")
            time.sleep(interval)

    def logs(self, invocation_id: str, *, timeout: Timeout = None) -> Iterator[LogEvent]:
        """``GET /v1/invocations/ID/logs``: its output events, live while it runs; ends with an ``end`` event."""
        return _sse_logs(self._http, f"/v1/invocations/{seg(invocation_id)}/logs", timeout)


class Tenants:
    """``/v1/tenants`` (admin key): create, list, change and delete tenants; :meth:`me` with any key."""

    def __init__(self, http: _Http) -> None:
        self._http = http

    def create(self, name: str, *, quotas: Optional[Mapping[str, Optional[float]]] = None) -> CreatedTenant:
        """``POST /v1/tenants``: the tenant and its first API key (shown only here)."""
        body: JsonDict = {"name": name}
        if quotas:
            body["quotas"] = dict(quotas)
        return created_tenant_from_wire(self._http.json("POST", "/v1/tenants", json_body=body))

    def list(self) -> list[TenantInfo]:
        """``GET /v1/tenants``."""
        answer = expect_dict(self._http.json("GET", "/v1/tenants"), "the tenant list")
        return [TenantInfo.from_wire(item) for item in answer.get("tenants") or []]

    def get(self, name: str) -> TenantInfo:
        """``GET /v1/tenants/NAME``; :class:`NotFoundError` when there is none."""
        return TenantInfo.from_wire(self._http.json("GET", f"/v1/tenants/{seg(name)}"))

    def update(self, name: str, quotas: Mapping[str, Optional[float]]) -> TenantInfo:
        """``PATCH /v1/tenants/NAME``: merges quota fields (camelCase, e.g. ``requestsPerSecond``); None puts one
        back to the server default."""
        return TenantInfo.from_wire(self._http.json("PATCH", f"/v1/tenants/{seg(name)}", json_body={"quotas": dict(quotas)}, idempotent=True))

    def delete(self, name: str) -> None:
        """``DELETE /v1/tenants/NAME``: revokes its keys, removes its functions; the name is not reused."""
        self._http.json("DELETE", f"/v1/tenants/{seg(name)}")

    def me(self) -> TenantSelf:
        """``GET /v1/tenant``: the caller's own tenant, its quotas in effect and whether the key is the admin's."""
        return tenant_self_from_wire(self._http.json("GET", "/v1/tenant"))


class Keys:
    """``/v1/tenants/NAME/keys`` (admin key): make, list and revoke a tenant's API keys."""

    def __init__(self, http: _Http) -> None:
        self._http = http

    def create(self, tenant: str) -> CreatedApiKey:
        """``POST /v1/tenants/NAME/keys``: a new key, shown only in this answer (``api_key``)."""
        return created_key_from_wire(self._http.json("POST", f"/v1/tenants/{seg(tenant)}/keys"))

    def list(self, tenant: str) -> list[ApiKeyInfo]:
        """``GET /v1/tenants/NAME/keys``: id, prefix, created, revoked; never the key."""
        answer = expect_dict(self._http.json("GET", f"/v1/tenants/{seg(tenant)}/keys"), "the key list")
        return [ApiKeyInfo.from_wire(item) for item in answer.get("keys") or []]

    def revoke(self, tenant: str, key_id: str) -> None:
        """``DELETE /v1/tenants/NAME/keys/ID``: the key stops working with the next request."""
        self._http.json("DELETE", f"/v1/tenants/{seg(tenant)}/keys/{seg(key_id)}")


class UsageResource:
    """``/v1/usage``: metered usage (a tenant key sees its own tenant; the admin all, or one with ``tenant``)."""

    def __init__(self, http: _Http) -> None:
        self._http = http

    def get(self, *, from_: Optional[str] = None, to: Optional[str] = None, group_by: Optional[str] = None, tenant: Optional[str] = None) -> Usage:
        """``GET /v1/usage``: rows per ``function`` (default) or ``day``; ``from_``/``to`` are UTC dates
        (YYYY-MM-DD, ``to`` inclusive) or ISO 8601 times (default: the last 30 days)."""
        query = _core.list_query({"from": from_, "to": to, "groupBy": group_by, "tenant": tenant})
        return Usage.from_wire(self._http.json("GET", f"/v1/usage{query}"))

    def csv(self, *, from_: Optional[str] = None, to: Optional[str] = None, group_by: Optional[str] = None, tenant: Optional[str] = None) -> str:
        """``GET /v1/usage`` with ``Accept: text/csv``: the same rows as CSV text."""
        query = _core.list_query({"from": from_, "to": to, "groupBy": group_by, "tenant": tenant})
        return self._http.send("GET", f"/v1/usage{query}", headers={"accept": "text/csv"}, idempotent=True).text

    def invocations(self, *, limit: Optional[int] = None, tenant: Optional[str] = None) -> list[JsonDict]:
        """``GET /v1/usage/invocations``: the newest metered invocations (``limit`` 1-1000, default 50)."""
        answer = expect_dict(self._http.json("GET", f"/v1/usage/invocations{_core.list_query({'limit': limit, 'tenant': tenant})}"), "usage")
        return [item for item in answer.get("invocations") or [] if isinstance(item, dict)]

    def timeseries(self, *, minutes: Optional[int] = None, bucket_seconds: Optional[int] = None, tenant: Optional[str] = None) -> JsonDict:
        """``GET /v1/usage/timeseries``: invocations, errors, cold starts and latency percentiles per bucket."""
        query = _core.list_query({"minutes": minutes, "bucketSeconds": bucket_seconds, "tenant": tenant})
        return expect_dict(self._http.json("GET", f"/v1/usage/timeseries{query}"), "a usage time series")


class Kindling:
    """Blocking client of one Kindling server.

    ``Kindling(url, api_key)``; without arguments ``KINDLING_URL`` (default ``http://127.0.0.1:8080``) and
    ``KINDLING_API_KEY`` are read. ``timeout`` is in seconds, for each network operation of a request (connect, each
    read, each write; None: none); executions raise it to their own ``timeoutMs`` + 30 s. ``max_retries``: how often a
    retryable failure is retried when that is safe (see the README). Use it as a context manager, or call
    :meth:`close`, to release its connections."""

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        tenant: Optional[str] = None,
        timeout: Optional[float] = _core.DEFAULT_TIMEOUT_S,
        max_retries: int = _core.DEFAULT_MAX_RETRIES,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        self._config = _core.make_config(url, api_key, tenant, timeout, max_retries)
        self._http = _Http(self._config, http_client)
        #: Deployed functions: deploy, get, list, delete, invoke, invoke_async, logs.
        self.functions = Functions(self._http)
        #: Invocations: get, list, output, wait, logs.
        self.invocations = Invocations(self._http)
        #: Tenants (admin key): create, list, get, update, delete; ``me()`` with any key.
        self.tenants = Tenants(self._http)
        self.sandboxes = Sandboxes(self._http)
        #: API keys of tenants (admin key): create, list, revoke.
        self.keys = Keys(self._http)
        self.images = Images(self._http)
        #: Metered usage: get, csv, invocations, timeseries.
        self.usage = UsageResource(self._http)

    @property
    def url(self) -> str:
        """The normalized base URL."""
        return self._config.url

    def __enter__(self) -> "Kindling":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the pooled connections (not those of an ``http_client`` you passed in)."""
        self._http.close()

    def health(self) -> JsonDict:
        """``GET /healthz``: ``{"status": "ok"}`` once the server accepts work."""
        return expect_dict(self._http.json("GET", "/healthz"), "health")

    def ready(self) -> JsonDict:
        """``GET /readyz``: each executor's state; a server that is not ready answers ``status: not_ready``."""
        return expect_dict(self._http.json("GET", "/readyz", accept_statuses=(503,)), "readiness")

    def pools(self) -> JsonDict:
        """``GET /v1/pools``: the warm pools of the caller's tenant (idle, busy, creating, waiting sandboxes)."""
        return expect_dict(self._http.json("GET", "/v1/pools"), "pools")

    def cluster(self) -> JsonDict:
        """``GET /v1/cluster`` (admin key): ``{"mode": "single"}`` on a server on its own; in cluster mode this node's
        role, id and NATS connection and the workers it sees (capacity, in flight, warm versions, last heartbeat)."""
        return expect_dict(self._http.json("GET", "/v1/cluster"), "cluster")

    def openapi(self) -> JsonDict:
        """``GET /openapi.json``: the server's OpenAPI 3 document."""
        return expect_dict(self._http.json("GET", "/openapi.json"), "the OpenAPI document")

    def execute(
        self,
        spec: Mapping[str, Any],
        *,
        on_stdout: Optional[Callable[[str], Any]] = None,
        on_stderr: Optional[Callable[[str], Any]] = None,
        timeout: Timeout = _UNSET,
    ) -> ExecutionResult:
        """``POST /v1/execute``: runs ``spec`` to completion. ``spec`` is a dict of the wire's fields, snake_case or
        camelCase (``runtime``, ``code``, ``image``, ``command``, ``stdin`` (str or bytes), ``env``, ``timeout_ms``
        or ``timeout`` in seconds, ``memory_mb``, ...). A non-zero exit, a timeout or an OOM kill is a result.
        With ``on_stdout``/``on_stderr`` the output streams and the callbacks see it as it is produced."""
        wire = _core.to_wire_spec(spec)
        request_timeout = _core.execution_timeout(self._config.timeout if timeout is _UNSET else timeout, wire)
        if on_stdout is not None or on_stderr is not None:
            with ExecutionStream(self._http, wire, request_timeout) as stream:
                for event in stream:
                    callback = on_stdout if event.type == "stdout" else on_stderr if event.type == "stderr" else None
                    if callback is not None:
                        callback(event.data)
                    if event.result is not None:
                        return event.result
            raise ConnectionError("STREAM_INTERRUPTED", "the stream ended without a result")
        return ExecutionResult.from_wire(self._http.json("POST", "/v1/execute", json_body=wire, timeout=request_timeout))

    def run(self, runtime: str, code: str, **spec: Any) -> ExecutionResult:
        """Runs source code: ``run("python", "print(1)", stdin="...", timeout=5)``; keyword arguments are spec fields."""
        return self.execute({**spec, "runtime": runtime, "code": code})

    def run_command(self, image: str, command: list[str], **spec: Any) -> ExecutionResult:
        """Runs a command in an image: ``run_command("kindling/base", ["sh", "-c", "echo hi"])``."""
        return self.execute({**spec, "image": image, "command": command})

    def stream(self, spec: Mapping[str, Any], *, timeout: Timeout = _UNSET) -> ExecutionStream:
        """``POST /v1/execute`` as server-sent events: iterate the returned stream for output events as they are
        produced, ending with an ``exit`` event carrying the result. See :class:`ExecutionStream`."""
        wire = _core.to_wire_spec(spec)
        return ExecutionStream(self._http, wire, _core.execution_timeout(self._config.timeout if timeout is _UNSET else timeout, wire))

    def execute_raw(
        self,
        spec: Mapping[str, Any],
        stdin: StdinSource = None,
        *,
        stdout: Optional[Sink] = None,
        timeout: Timeout = _UNSET,
    ) -> Union[ExecutionResult, RawResult]:
        """Raw mode for large payloads: ``stdin`` (bytes, a binary file or an iterator of bytes) streams to the
        program's stdin as it is read, never held whole. Without ``stdout`` the answer is the JSON
        :class:`ExecutionResult`. With ``stdout`` (a binary file or a callable taking bytes) the program's stdout
        streams there with backpressure and a :class:`RawResult` (exit code, duration, the first 4 KiB of stderr)
        is returned: memory stays flat for any size (a 1 GiB file through ``cat``)."""
        from . import _raw

        header = _core.raw_spec_header(spec)
        wire = _core.to_wire_spec(spec)
        request_timeout = _core.execution_timeout(self._config.timeout if timeout is _UNSET else timeout, wire)
        return _raw.execute_raw_sync(self._config, header, stdin, stdout, request_timeout)

    def interactive(self, spec: Mapping[str, Any], *, timeout: Timeout = _UNSET) -> "InteractiveSession":
        """``GET /v1/execute/ws``: an interactive execution over a WebSocket (needs the ``websockets`` package).
        Use it as a context manager; see :class:`InteractiveSession`."""
        from ._interactive import InteractiveSession

        return InteractiveSession(self._config, _core.to_wire_spec(spec), self._config.timeout if timeout is _UNSET else timeout)

