"""The asyncio client, :class:`AsyncKindling`: the surface of :class:`~kindling.Kindling` with ``async`` methods.

Cancelling a task that awaits a call (``asyncio.wait_for``, ``task.cancel()``) closes its connection, and the server
then kills the execution and frees its sandbox."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Mapping, Optional, Union

import httpx

from . import _core, _raw
from ._core import Config, StdinSource, seg
from ._sandboxes import AsyncSandboxes
from ._images import AsyncImages
from ._errors import AbortError, ConnectionError, KindlingError, TimeoutError, error_from_payload
from ._sync import Sink, _build_log_path, _bundle_request, _deploy_answer, _function_spec, _loads, _map_transport, _replay
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
    from ._interactive import AsyncInteractiveSession

_UNSET: Any = object()
Timeout = Optional[float]


class _AsyncHttp:
    """The one transport of an asyncio client: headers, timeouts, retries and error mapping."""

    def __init__(self, config: Config, client: Optional[httpx.AsyncClient]) -> None:
        self.config = config
        self._owned = client is None
        self.client = client or httpx.AsyncClient(timeout=config.timeout, headers=_core.base_headers(config))
        if not self._owned:
            self.client.headers.update(_core.base_headers(config))

    def url(self, path: str) -> str:
        return self.config.url + path

    async def send(
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
        url = self.url(path)
        effective = self.config.timeout if timeout is _UNSET else timeout
        attempt = 0
        while True:
            error: KindlingError
            try:
                request = self.client.build_request(
                    method, url, json=json_body, content=content, headers=headers, timeout=httpx.Timeout(effective)
                )
                response = await self.client.send(request, stream=True)
            except httpx.HTTPError as exc:
                error = _map_transport(exc, url, effective, sent=True)
            else:
                if response.status_code >= 400 and response.status_code not in accept_statuses:
                    try:
                        body = await response.aread()
                    except httpx.HTTPError:
                        body = b""
                    finally:
                        await response.aclose()
                    error = _core.error_from_response(response.status_code, response.headers, body)
                elif stream:
                    return response
                else:
                    try:
                        await response.aread()
                        return response
                    except httpx.HTTPError as exc:
                        raise _map_transport(exc, url, effective, sent=True) from exc
                    finally:
                        await response.aclose()
            delay = _core.should_retry(error, idempotent, attempt, self.config.max_retries)
            if delay is None or (not replayable and not getattr(error, "_not_sent", False)):
                raise error
            attempt += 1
            await asyncio.sleep(delay)

    async def json(self, method: str, path: str, *, idempotent: Optional[bool] = None, **kwargs: Any) -> Any:
        response = await self.send(method, path, idempotent=method in ("GET", "PUT", "DELETE") if idempotent is None else idempotent, **kwargs)
        if response.status_code == 204:
            return None
        return _core.parse_json(response.content, response.status_code, str(response.url))

    async def aclose(self) -> None:
        if self._owned:
            await self.client.aclose()


class AsyncExecutionStream:
    """The asyncio :class:`~kindling.ExecutionStream`: ``async for event in stream``; ``async with`` closes it."""

    def __init__(self, http: _AsyncHttp, wire: JsonDict, timeout: Timeout) -> None:
        self._http = http
        self._wire = wire
        self._timeout = timeout
        self._response: Optional[httpx.Response] = None
        self._started = False
        self._finished = False
        #: The result, once the ``exit`` event arrived.
        self.result: Optional[ExecutionResult] = None

    async def __aenter__(self) -> "AsyncExecutionStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stops the execution (closes the connection) unless it already ended."""
        if self._response is not None and not self._finished:
            await self._response.aclose()
        self._finished = True

    def __aiter__(self) -> AsyncIterator[OutputEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[OutputEvent]:
        if self._started:
            raise RuntimeError("an AsyncExecutionStream can be iterated once")
        self._started = True
        if self._finished:
            raise AbortError("ABORTED", "the stream was closed before it started")
        url = self._http.url("/v1/execute")
        response = await self._http.send(
            "POST", "/v1/execute", json_body=self._wire, headers={"accept": "text/event-stream"}, timeout=self._timeout,
            idempotent=False, stream=True,
        )
        self._response = response
        try:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                result = ExecutionResult.from_wire(_core.parse_json(await response.aread(), response.status_code, url))
                for event in _replay(result):
                    yield event
                self.result = result
                self._finished = True
                return
            parser = _core.SseParser()
            try:
                async for chunk in response.aiter_raw():
                    for sse in parser.feed(chunk):
                        if sse.event in ("stdout", "stderr"):
                            yield OutputEvent(sse.event, sse.data)  # type: ignore[arg-type]
                        elif sse.event == "exit":
                            result = ExecutionResult.from_wire(_core.parse_json(sse.data.encode(), 200, url))
                            self.result = result
                            self._finished = True
                            yield OutputEvent("exit", sse.data, result)
                            return
                        elif sse.event == "error":
                            raise error_from_payload(_loads(sse.data), fallback_message=sse.data)
            except httpx.HTTPError as exc:
                raise _map_transport(exc, url, self._timeout, sent=True) from exc
            raise ConnectionError("STREAM_INTERRUPTED", f"The event stream from {url} ended before the exit event", retryable=True)
        finally:
            await self.aclose()


async def _sse_build_log(http: _AsyncHttp, path: str, timeout: Timeout) -> AsyncIterator[BuildLogEvent]:
    response = await http.send("GET", path, headers={"accept": "text/event-stream"}, timeout=timeout, idempotent=True, stream=True)
    try:
        parser = _core.SseParser()
        async for chunk in response.aiter_raw():
            for event in parser.feed(chunk):
                if event.event in ("log", "skipped", "end"):
                    yield BuildLogEvent.from_sse(event.event, event.data)
                if event.event == "end":
                    return
    except httpx.HTTPError as exc:
        raise _map_transport(exc, http.url(path), timeout, sent=True) from exc
    finally:
        await response.aclose()
    raise ConnectionError("STREAM_INTERRUPTED", f"The build log from {http.url(path)} ended before the build did", retryable=True)


async def _sse_logs(http: _AsyncHttp, path: str, timeout: Timeout) -> AsyncIterator[LogEvent]:
    response = await http.send("GET", path, headers={"accept": "text/event-stream"}, timeout=timeout, idempotent=True, stream=True)
    try:
        parser = _core.SseParser()
        async for chunk in response.aiter_raw():
            for event in parser.feed(chunk):
                yield LogEvent.from_sse(event.event, event.data)
    except httpx.HTTPError as exc:
        raise _map_transport(exc, http.url(path), timeout, sent=True) from exc
    finally:
        await response.aclose()


async def _aiter_source(source: StdinSource) -> AsyncIterator[bytes]:
    """An async iterator of a source; async iterators are passed through (see :func:`_core.iter_source`)."""
    if hasattr(source, "__aiter__"):
        async for chunk in source:  # type: ignore[union-attr]
            yield bytes(chunk)
        return
    for chunk in _core.iter_source(source):
        yield chunk


class AsyncFunctions:
    """``/v1/functions`` (asyncio): see :class:`kindling._sync.Functions`."""

    def __init__(self, http: _AsyncHttp) -> None:
        self._http = http

    async def deploy(
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
        """``PUT /v1/functions/NAME``: deploys a new version (see :meth:`kindling._sync.Functions.deploy`)."""
        if file is not None:
            if code is not None:
                raise ValueError("give code or file, not both")
            with open(file, encoding="utf-8") as handle:
                code = handle.read()
        spec = _function_spec(runtime=runtime, code=code, handler=handler, image=image, command=command, **fields)
        # Waits for its build, if any (a go or rust program, the image for ``apt`` packages): give a timeout that allows it.
        return FunctionInfo.from_wire(await self._http.json("PUT", f"/v1/functions/{seg(name)}", json_body=spec, timeout=timeout))

    async def deploy_bundle(
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
        """``PUT /v1/functions/NAME`` with a bundle (see :meth:`kindling._sync.Functions.deploy_bundle`). The directory is
        tarred in a worker thread."""
        body, headers = await asyncio.to_thread(_bundle_request, directory, tar, wait, dict(fields, runtime=runtime, handler=handler, image=image, command=command))
        # Not retried: sent again while its build runs, the same deploy would be refused as BUILD_IN_PROGRESS.
        response = await self._http.send("PUT", f"/v1/functions/{seg(name)}", content=body, headers=headers, timeout=timeout, idempotent=False)
        return _deploy_answer(response)

    async def build(self, name: str, build_id: str) -> FunctionBuildInfo:
        """``GET /v1/functions/NAME/builds/ID``: one build's record."""
        return FunctionBuildInfo.from_wire(await self._http.json("GET", f"/v1/functions/{seg(name)}/builds/{seg(build_id)}"))

    def follow_build_log(self, name: str, build_id: str, *, timeout: Timeout = None) -> AsyncIterator[BuildLogEvent]:
        """``GET /v1/functions/NAME/builds/ID/logs?follow=true`` (see :meth:`kindling._sync.Functions.follow_build_log`)."""
        return _sse_build_log(self._http, _build_log_path(name, build_id), timeout)

    async def get(self, name: str) -> FunctionInfo:
        """``GET /v1/functions/NAME``."""
        return FunctionInfo.from_wire(await self._http.json("GET", f"/v1/functions/{seg(name)}"))

    async def versions(self, name: str) -> list[FunctionVersionInfo]:
        """``GET /v1/functions/NAME/versions``: oldest first."""
        answer = expect_dict(await self._http.json("GET", f"/v1/functions/{seg(name)}/versions"), "the version list")
        return [FunctionVersionInfo.from_wire(item) for item in answer.get("versions") or []]

    async def builds(self, name: str) -> list[FunctionBuildInfo]:
        """``GET /v1/functions/NAME/builds``: the dependency builds of the function's deploys, newest first (a first
        deploy's failed build shows here before the function exists)."""
        answer = expect_dict(await self._http.json("GET", f"/v1/functions/{seg(name)}/builds"), "the build list")
        return [FunctionBuildInfo.from_wire(item) for item in answer.get("builds") or []]

    async def build_logs(self, name: str, build_id: str) -> BuildLog:
        """``GET /v1/functions/NAME/builds/ID/logs``: a build's log and status. The id is in BUILD_FAILED's
        ``details["buildId"]``; an id the function does not have raises :class:`NotFoundError` (BUILD_NOT_FOUND)."""
        response = await self._http.send("GET", f"/v1/functions/{seg(name)}/builds/{seg(build_id)}/logs", idempotent=True)
        return BuildLog(status=response.headers.get("x-kindling-build-status", "ready"), log=response.text)

    async def list(self) -> list[FunctionInfo]:
        """``GET /v1/functions``."""
        answer = expect_dict(await self._http.json("GET", "/v1/functions"), "the function list")
        return [FunctionInfo.from_wire(item) for item in answer.get("functions") or []]

    async def delete(self, name: str) -> None:
        """``DELETE /v1/functions/NAME``."""
        await self._http.json("DELETE", f"/v1/functions/{seg(name)}")

    async def invoke(
        self,
        name: str,
        body: Any = b"",
        *,
        content_type: Optional[str] = None,
        output: Optional[Sink] = None,
        timeout: Timeout = _UNSET,
    ) -> InvocationResult:
        """``POST /v1/functions/NAME/invoke`` (see :meth:`kindling._sync.Functions.invoke`); ``body`` may also be an
        async iterator of bytes and ``output`` an async callable."""
        path = f"/v1/functions/{seg(name)}/invoke"
        headers = _core.invoke_headers(content_type)
        if _raw.wants_stream(body, output):
            effective = self._http.config.timeout if timeout is _UNSET else timeout
            answer = await _raw.exchange_async(self._http.config, path, headers, body, output, effective)
            return await self._result(*_raw.invoke_facts(answer))
        response = await self._http.send("POST", path, content=_core.as_bytes(body), headers=headers, timeout=timeout, idempotent=False)
        return await self._result(response.headers, response.content)

    async def _result(self, headers: Mapping[str, str], body: bytes) -> InvocationResult:
        invocation_id = headers.get("x-kindling-invocation-id", "")
        streamed = headers.get("x-kindling-output") == "streamed"
        exit_code = _core.header_int(headers, "x-kindling-exit-code")
        duration_ms = _core.header_float(headers, "x-kindling-duration-ms")
        if streamed and invocation_id and exit_code is None:
            record = Invocation.from_wire(await self._http.json("GET", f"/v1/invocations/{seg(invocation_id)}"))
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

    async def invoke_async(
        self,
        name: str,
        body: Union[bytes, str] = b"",
        *,
        content_type: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        callback_url: Optional[str] = None,
    ) -> AsyncInvocation:
        """``POST /v1/functions/NAME/invoke`` with ``x-kindling-async: true`` (202 once stored)."""
        answer = expect_dict(
            await self._http.json(
                "POST", f"/v1/functions/{seg(name)}/invoke", content=_core.as_bytes(body),
                headers=_core.invoke_headers(content_type, idempotency_key, callback_url, is_async=True),
                idempotent=idempotency_key is not None,
            ),
            "an async invocation",
        )
        return AsyncInvocation(str(answer.get("invocationId", "")), answer.get("created") is not False, str(answer.get("status", "")))

    def logs(self, name: str, *, follow: bool = False, tail: Optional[int] = None, timeout: Timeout = _UNSET) -> AsyncIterator[LogEvent]:
        """``GET /v1/functions/NAME/logs`` as an async iterator (see :meth:`kindling._sync.Functions.logs`)."""
        effective = (None if follow else self._http.config.timeout) if timeout is _UNSET else timeout
        return _sse_logs(self._http, f"/v1/functions/{seg(name)}/logs{_core.logs_query(follow, tail)}", effective)


class AsyncInvocations:
    """``/v1/invocations`` (asyncio)."""

    def __init__(self, http: _AsyncHttp) -> None:
        self._http = http

    async def get(self, invocation_id: str) -> Invocation:
        """``GET /v1/invocations/ID``."""
        return Invocation.from_wire(await self._http.json("GET", f"/v1/invocations/{seg(invocation_id)}"))

    async def list(
        self, *, function: Optional[str] = None, status: Optional[str] = None, since: Optional[Union[int, str]] = None,
        until: Optional[Union[int, str]] = None, limit: Optional[int] = None,
    ) -> list[Invocation]:
        """``GET /v1/invocations``: newest first."""
        query = _core.list_query({"function": function, "status": status, "since": since, "until": until, "limit": limit})
        answer = expect_dict(await self._http.json("GET", f"/v1/invocations{query}"), "the invocation list")
        return [Invocation.from_wire(item) for item in answer.get("invocations") or []]

    async def output(self, invocation_id: str) -> InvocationOutput:
        """``GET /v1/invocations/ID/output``: the raw stdout of a finished invocation."""
        response = await self._http.send("GET", f"/v1/invocations/{seg(invocation_id)}/output", headers={"accept": "*/*"}, idempotent=True)
        return InvocationOutput(response.content, response.headers.get("x-kindling-status"), _core.header_int(response.headers, "x-kindling-exit-code"))

    async def wait(self, invocation_id: str, *, timeout: Optional[float] = 600.0, interval: float = 0.25) -> Invocation:
        """Polls every ``interval`` seconds until it finished; :class:`TimeoutError` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            invocation = await self.get(invocation_id)
            if invocation.finished:
                return invocation
            if deadline is not None and time.monotonic() + interval > deadline:
                raise TimeoutError("TIMEOUT", f"invocation {invocation_id} was still {invocation.status} after {timeout} s")
            await asyncio.sleep(interval)

    def logs(self, invocation_id: str, *, timeout: Timeout = None) -> AsyncIterator[LogEvent]:
        """``GET /v1/invocations/ID/logs`` as an async iterator."""
        return _sse_logs(self._http, f"/v1/invocations/{seg(invocation_id)}/logs", timeout)


class AsyncTenants:
    """``/v1/tenants`` (asyncio)."""

    def __init__(self, http: _AsyncHttp) -> None:
        self._http = http

    async def create(self, name: str, *, quotas: Optional[Mapping[str, Optional[float]]] = None) -> CreatedTenant:
        """``POST /v1/tenants``."""
        body: JsonDict = {"name": name}
        if quotas:
            body["quotas"] = dict(quotas)
        return created_tenant_from_wire(await self._http.json("POST", "/v1/tenants", json_body=body))

    async def list(self) -> list[TenantInfo]:
        """``GET /v1/tenants``."""
        answer = expect_dict(await self._http.json("GET", "/v1/tenants"), "the tenant list")
        return [TenantInfo.from_wire(item) for item in answer.get("tenants") or []]

    async def get(self, name: str) -> TenantInfo:
        """``GET /v1/tenants/NAME``."""
        return TenantInfo.from_wire(await self._http.json("GET", f"/v1/tenants/{seg(name)}"))

    async def update(self, name: str, quotas: Mapping[str, Optional[float]]) -> TenantInfo:
        """``PATCH /v1/tenants/NAME``."""
        return TenantInfo.from_wire(await self._http.json("PATCH", f"/v1/tenants/{seg(name)}", json_body={"quotas": dict(quotas)}, idempotent=True))

    async def delete(self, name: str) -> None:
        """``DELETE /v1/tenants/NAME``."""
        await self._http.json("DELETE", f"/v1/tenants/{seg(name)}")

    async def me(self) -> TenantSelf:
        """``GET /v1/tenant``."""
        return tenant_self_from_wire(await self._http.json("GET", "/v1/tenant"))


class AsyncKeys:
    """``/v1/tenants/NAME/keys`` (asyncio)."""

    def __init__(self, http: _AsyncHttp) -> None:
        self._http = http

    async def create(self, tenant: str) -> CreatedApiKey:
        """``POST /v1/tenants/NAME/keys``."""
        return created_key_from_wire(await self._http.json("POST", f"/v1/tenants/{seg(tenant)}/keys"))

    async def list(self, tenant: str) -> list[ApiKeyInfo]:
        """``GET /v1/tenants/NAME/keys``."""
        answer = expect_dict(await self._http.json("GET", f"/v1/tenants/{seg(tenant)}/keys"), "the key list")
        return [ApiKeyInfo.from_wire(item) for item in answer.get("keys") or []]

    async def revoke(self, tenant: str, key_id: str) -> None:
        """``DELETE /v1/tenants/NAME/keys/ID``."""
        await self._http.json("DELETE", f"/v1/tenants/{seg(tenant)}/keys/{seg(key_id)}")


class AsyncUsageResource:
    """``/v1/usage`` (asyncio)."""

    def __init__(self, http: _AsyncHttp) -> None:
        self._http = http

    async def get(self, *, from_: Optional[str] = None, to: Optional[str] = None, group_by: Optional[str] = None, tenant: Optional[str] = None) -> Usage:
        """``GET /v1/usage``."""
        query = _core.list_query({"from": from_, "to": to, "groupBy": group_by, "tenant": tenant})
        return Usage.from_wire(await self._http.json("GET", f"/v1/usage{query}"))

    async def csv(self, *, from_: Optional[str] = None, to: Optional[str] = None, group_by: Optional[str] = None, tenant: Optional[str] = None) -> str:
        """``GET /v1/usage`` as CSV."""
        query = _core.list_query({"from": from_, "to": to, "groupBy": group_by, "tenant": tenant})
        return (await self._http.send("GET", f"/v1/usage{query}", headers={"accept": "text/csv"}, idempotent=True)).text

    async def invocations(self, *, limit: Optional[int] = None, tenant: Optional[str] = None) -> list[JsonDict]:
        """``GET /v1/usage/invocations``."""
        answer = expect_dict(await self._http.json("GET", f"/v1/usage/invocations{_core.list_query({'limit': limit, 'tenant': tenant})}"), "usage")
        return [item for item in answer.get("invocations") or [] if isinstance(item, dict)]

    async def timeseries(self, *, minutes: Optional[int] = None, bucket_seconds: Optional[int] = None, tenant: Optional[str] = None) -> JsonDict:
        """``GET /v1/usage/timeseries``."""
        query = _core.list_query({"minutes": minutes, "bucketSeconds": bucket_seconds, "tenant": tenant})
        return expect_dict(await self._http.json("GET", f"/v1/usage/timeseries{query}"), "a usage time series")


class AsyncKindling:
    """asyncio client of one Kindling server: the surface of :class:`~kindling.Kindling`, with ``await``.
    ``async with AsyncKindling(url, api_key) as k:``."""

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        tenant: Optional[str] = None,
        timeout: Optional[float] = _core.DEFAULT_TIMEOUT_S,
        max_retries: int = _core.DEFAULT_MAX_RETRIES,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self._config = _core.make_config(url, api_key, tenant, timeout, max_retries)
        self._http = _AsyncHttp(self._config, http_client)
        self.functions = AsyncFunctions(self._http)
        self.invocations = AsyncInvocations(self._http)
        self.tenants = AsyncTenants(self._http)
        self.sandboxes = AsyncSandboxes(self._http)
        self.keys = AsyncKeys(self._http)
        self.images = AsyncImages(self._http)
        self.usage = AsyncUsageResource(self._http)

    @property
    def url(self) -> str:
        return self._config.url

    async def __aenter__(self) -> "AsyncKindling":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the pooled connections (not those of an ``http_client`` you passed in)."""
        await self._http.aclose()

    async def health(self) -> JsonDict:
        """``GET /healthz``."""
        return expect_dict(await self._http.json("GET", "/healthz"), "health")

    async def ready(self) -> JsonDict:
        """``GET /readyz``."""
        return expect_dict(await self._http.json("GET", "/readyz", accept_statuses=(503,)), "readiness")

    async def pools(self) -> JsonDict:
        """``GET /v1/pools``."""
        return expect_dict(await self._http.json("GET", "/v1/pools"), "pools")

    async def cluster(self) -> JsonDict:
        """``GET /v1/cluster``."""
        return expect_dict(await self._http.json("GET", "/v1/cluster"), "cluster")

    async def openapi(self) -> JsonDict:
        """``GET /openapi.json``."""
        return expect_dict(await self._http.json("GET", "/openapi.json"), "the OpenAPI document")

    async def execute(
        self,
        spec: Mapping[str, Any],
        *,
        on_stdout: Optional[Callable[[str], Any]] = None,
        on_stderr: Optional[Callable[[str], Any]] = None,
        timeout: Timeout = _UNSET,
    ) -> ExecutionResult:
        """``POST /v1/execute`` (see :meth:`kindling.Kindling.execute`). Cancelling the awaiting task closes the
        connection: the server kills the execution and frees its sandbox."""
        wire = _core.to_wire_spec(spec)
        request_timeout = _core.execution_timeout(self._config.timeout if timeout is _UNSET else timeout, wire)
        if on_stdout is not None or on_stderr is not None:
            async with AsyncExecutionStream(self._http, wire, request_timeout) as stream:
                async for event in stream:
                    callback = on_stdout if event.type == "stdout" else on_stderr if event.type == "stderr" else None
                    if callback is not None:
                        outcome = callback(event.data)
                        if isinstance(outcome, Awaitable):
                            await outcome
                    if event.result is not None:
                        return event.result
            raise ConnectionError("STREAM_INTERRUPTED", "the stream ended without a result")
        return ExecutionResult.from_wire(await self._http.json("POST", "/v1/execute", json_body=wire, timeout=request_timeout))

    async def run(self, runtime: str, code: str, **spec: Any) -> ExecutionResult:
        """Runs source code: ``await run("python", "print(1)")``."""
        return await self.execute({**spec, "runtime": runtime, "code": code})

    async def run_command(self, image: str, command: list[str], **spec: Any) -> ExecutionResult:
        """Runs a command in an image."""
        return await self.execute({**spec, "image": image, "command": command})

    def stream(self, spec: Mapping[str, Any], *, timeout: Timeout = _UNSET) -> AsyncExecutionStream:
        """``POST /v1/execute`` as server-sent events: ``async for event in k.stream(spec)``."""
        wire = _core.to_wire_spec(spec)
        return AsyncExecutionStream(self._http, wire, _core.execution_timeout(self._config.timeout if timeout is _UNSET else timeout, wire))

    async def execute_raw(
        self,
        spec: Mapping[str, Any],
        stdin: Any = None,
        *,
        stdout: Optional[Sink] = None,
        timeout: Timeout = _UNSET,
    ) -> Union[ExecutionResult, RawResult]:
        """Raw mode (see :meth:`kindling.Kindling.execute_raw`); ``stdin`` may also be an async iterator of bytes and
        ``stdout`` an async callable."""
        from . import _raw

        header = _core.raw_spec_header(spec)
        wire = _core.to_wire_spec(spec)
        request_timeout = _core.execution_timeout(self._config.timeout if timeout is _UNSET else timeout, wire)
        return await _raw.execute_raw_async(self._config, header, stdin, stdout, request_timeout)

    def interactive(self, spec: Mapping[str, Any], *, timeout: Timeout = _UNSET) -> "AsyncInteractiveSession":
        """``GET /v1/execute/ws``: ``async with k.interactive(spec) as session:`` (needs ``websockets``)."""
        from ._interactive import AsyncInteractiveSession

        return AsyncInteractiveSession(self._config, _core.to_wire_spec(spec), self._config.timeout if timeout is _UNSET else timeout)
