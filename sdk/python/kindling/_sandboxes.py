"""``/v1/sandboxes``: persistent sandboxes, for the blocking and the asyncio client (E2B's shape: ``create`` gives a
handle with ``commands.run``, ``files.write/read/list/remove``, ``pause``, ``resume``, ``kill``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional, Union
from urllib.parse import quote

import httpx

from ._core import error_from_response, seg
from ._errors import KindlingError
from ._types import ExecutionResult, JsonDict

if TYPE_CHECKING:
    from ._async import _AsyncHttp
    from ._sync import _Http

Data = Union[str, bytes]
#: A list of JSON objects (named at module level: the resources' own ``list`` methods shadow the builtin in their bodies).
JsonList = list[JsonDict]
Command = list[str]


def _path(sandbox_id: str, suffix: str = "") -> str:
    return f"/v1/sandboxes/{seg(sandbox_id)}{suffix}"


def _files(sandbox_id: str, path: str, suffix: str = "") -> str:
    return f"{_path(sandbox_id, '/files' + suffix)}?path={quote(path, safe='')}"


def _port_path(sandbox_id: str, port: int, path: str) -> str:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"port must be a whole number from 1 to 65535, got {port!r}")
    return _path(sandbox_id, f"/ports/{port}") + (path if path == "" or path.startswith("/") else "/" + path)


#: Every status is the sandbox server's own answer; the platform's refusals are told apart by the missing header.
_ANY_STATUS = tuple(range(400, 600))


def _proxied_error(response: httpx.Response) -> Optional[KindlingError]:
    """The platform's refusal (no ``X-Kindling-Port`` on the answer: unknown sandbox, nothing listening, ...)."""
    if response.status_code < 400 or "x-kindling-port" in response.headers:
        return None
    return error_from_response(response.status_code, response.headers, response.content)


def _create_body(runtime: Optional[str], image: Optional[str], fields: Mapping[str, Any]) -> JsonDict:
    """snake_case options to the wire (camelCase); ``limits`` is a dict of memoryMb, cpus, pids, diskMb."""
    body: JsonDict = {}
    if runtime is None and image is None:
        runtime = "bash"
    if runtime is not None:
        body["runtime"] = runtime
    if image is not None:
        body["image"] = image
    names = {"executor": "executor", "limits": "limits", "env": "env", "idle_timeout_ms": "idleTimeoutMs", "max_lifetime_ms": "maxLifetimeMs", "metadata": "metadata"}
    for key, value in fields.items():
        if key not in names:
            raise TypeError(f"unknown sandbox option {key!r} (one of {', '.join(names)})")
        if value is not None:
            body[names[key]] = dict(value) if isinstance(value, Mapping) else value
    return body


def _command_body(command: Command, options: Mapping[str, Any]) -> JsonDict:
    body: JsonDict = {"command": list(command)}
    names = {"stdin": "stdin", "env": "env", "workdir": "workdir", "timeout_ms": "timeoutMs", "output_bytes": "outputBytes", "auto_resume": "autoResume"}
    for key, value in options.items():
        if key not in names:
            raise TypeError(f"unknown command option {key!r} (one of {', '.join(names)})")
        if value is not None:
            body[names[key]] = dict(value) if isinstance(value, Mapping) else value
    return body


def _content(data: Data) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


class Sandboxes:
    """``/v1/sandboxes`` on the blocking client. ``create``/``connect`` give a :class:`Sandbox`; the other methods
    take an id. Sandbox answers are the server's JSON (``id``, ``state``, ``limits``, ``usage``...) as dicts."""

    def __init__(self, http: "_Http") -> None:
        self._http = http

    def create(self, *, runtime: Optional[str] = None, image: Optional[str] = None, **options: Any) -> "Sandbox":
        """``POST /v1/sandboxes``. Options: ``executor``, ``limits`` (memoryMb, cpus, pids, diskMb), ``env``,
        ``idle_timeout_ms`` (default 600000), ``max_lifetime_ms`` (default 3600000), ``metadata``."""
        info = self._http.json("POST", "/v1/sandboxes", json_body=_create_body(runtime, image, options))
        return Sandbox(self, info)

    def connect(self, sandbox_id: str) -> "Sandbox":
        return Sandbox(self, self.get(sandbox_id))

    def list(self, *, state: Optional[str] = None) -> JsonList:
        query = "" if state is None else f"?state={quote(state, safe='')}"
        return list(self._http.json("GET", f"/v1/sandboxes{query}").get("sandboxes") or [])

    def get(self, sandbox_id: str) -> JsonDict:
        return dict(self._http.json("GET", _path(sandbox_id)))

    def delete(self, sandbox_id: str) -> None:
        self._http.json("DELETE", _path(sandbox_id))

    def pause(self, sandbox_id: str) -> JsonDict:
        return dict(self._http.json("POST", _path(sandbox_id, "/pause"), json_body={}, idempotent=True))

    def resume(self, sandbox_id: str) -> JsonDict:
        return dict(self._http.json("POST", _path(sandbox_id, "/resume"), json_body={}, idempotent=True))

    def run(self, sandbox_id: str, command: Command, **options: Any) -> ExecutionResult:
        """``POST /v1/sandboxes/ID/commands``: ``stdin``, ``env``, ``workdir``, ``timeout_ms`` (default 60000: the
        command's process tree is killed, the sandbox lives on), ``output_bytes``, ``auto_resume`` (default True)."""
        body = _command_body(command, options)
        timeout = None if self._http.config.timeout is None else max(self._http.config.timeout, body.get("timeoutMs", 60000) / 1000 + 30)
        return ExecutionResult.from_wire(self._http.json("POST", _path(sandbox_id, "/commands"), json_body=body, timeout=timeout))

    def write_file(self, sandbox_id: str, path: str, data: Data) -> JsonDict:
        headers = {"content-type": "application/octet-stream"}
        return dict(self._http.json("PUT", _files(sandbox_id, path), content=_content(data), headers=headers))

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        response = self._http.send("GET", _files(sandbox_id, path), headers={"accept": "application/octet-stream"}, idempotent=True)
        return bytes(response.content)

    def list_files(self, sandbox_id: str, path: str = "/work") -> JsonList:
        return list(self._http.json("GET", _files(sandbox_id, path, "/list")).get("entries") or [])

    def remove_file(self, sandbox_id: str, path: str) -> None:
        self._http.json("DELETE", _files(sandbox_id, path))

    # --- ports ---------------------------------------------------------------------------------------------------

    def port_url(self, sandbox_id: str, port: int, path: str = "") -> str:
        """The URL of ``port`` inside the sandbox through the API; requests to it need the API key."""
        return self._http.url(_port_path(sandbox_id, port, path))

    def fetch_port(
        self, sandbox_id: str, port: int, path: str = "/", *, method: str = "GET", content: Optional[Data] = None, headers: Optional[Mapping[str, str]] = None
    ) -> httpx.Response:
        """Any HTTP request to the server listening on ``port`` in the sandbox (``/v1/sandboxes/ID/ports/PORT/...``):
        its answer (read), whatever the status. Raises only for the platform's refusals (``NotFoundError``,
        ``ServerError`` with code ``SANDBOX_PORT_UNREACHABLE`` when nothing listens there)."""
        response = self._http.send(method, _port_path(sandbox_id, port, path), content=content, headers=headers, idempotent=False, accept_statuses=_ANY_STATUS)
        error = _proxied_error(response)
        if error is not None:
            raise error
        return response

    # --- end of ports --------------------------------------------------------------------------------------------


class _Commands:
    def __init__(self, api: Sandboxes, sandbox_id: str) -> None:
        self._api, self._id = api, sandbox_id

    def run(self, command: Command, **options: Any) -> ExecutionResult:
        return self._api.run(self._id, command, **options)


class _Files:
    def __init__(self, api: Sandboxes, sandbox_id: str) -> None:
        self._api, self._id = api, sandbox_id

    def write(self, path: str, data: Data) -> JsonDict:
        return self._api.write_file(self._id, path, data)

    def read(self, path: str) -> str:
        return self._api.read_file(self._id, path).decode("utf-8")

    def read_bytes(self, path: str) -> bytes:
        return self._api.read_file(self._id, path)

    def list(self, path: str = "/work") -> JsonList:
        return self._api.list_files(self._id, path)

    def remove(self, path: str) -> None:
        self._api.remove_file(self._id, path)


class Sandbox:
    """A handle on one persistent sandbox (blocking client)."""

    def __init__(self, api: Sandboxes, info: JsonDict) -> None:
        self._api = api
        self.id: str = str(info["id"])
        self.info: JsonDict = dict(info)
        self.commands = _Commands(api, self.id)
        self.files = _Files(api, self.id)

    @property
    def state(self) -> str:
        return str(self.info["state"])

    def pause(self) -> None:
        self.info = self._api.pause(self.id)

    def resume(self) -> None:
        self.info = self._api.resume(self.id)

    def refresh(self) -> JsonDict:
        self.info = self._api.get(self.id)
        return self.info

    def kill(self) -> None:
        self._api.delete(self.id)

    def get_host(self, port: int) -> str:
        """The URL of ``port`` in this sandbox through the API (append the path; send the API key with requests)."""
        return self._api.port_url(self.id, port)

    def fetch(self, port: int, path: str = "/", **options: Any) -> httpx.Response:
        """An HTTP request to the server on ``port`` in this sandbox: ``method``, ``content``, ``headers``."""
        return self._api.fetch_port(self.id, port, path, **options)


class AsyncSandboxes:
    """``/v1/sandboxes`` on the asyncio client: the surface of :class:`Sandboxes`, with ``await``."""

    def __init__(self, http: "_AsyncHttp") -> None:
        self._http = http

    async def create(self, *, runtime: Optional[str] = None, image: Optional[str] = None, **options: Any) -> "AsyncSandbox":
        info = await self._http.json("POST", "/v1/sandboxes", json_body=_create_body(runtime, image, options))
        return AsyncSandbox(self, info)

    async def connect(self, sandbox_id: str) -> "AsyncSandbox":
        return AsyncSandbox(self, await self.get(sandbox_id))

    async def list(self, *, state: Optional[str] = None) -> JsonList:
        query = "" if state is None else f"?state={quote(state, safe='')}"
        return list((await self._http.json("GET", f"/v1/sandboxes{query}")).get("sandboxes") or [])

    async def get(self, sandbox_id: str) -> JsonDict:
        return dict(await self._http.json("GET", _path(sandbox_id)))

    async def delete(self, sandbox_id: str) -> None:
        await self._http.json("DELETE", _path(sandbox_id))

    async def pause(self, sandbox_id: str) -> JsonDict:
        return dict(await self._http.json("POST", _path(sandbox_id, "/pause"), json_body={}, idempotent=True))

    async def resume(self, sandbox_id: str) -> JsonDict:
        return dict(await self._http.json("POST", _path(sandbox_id, "/resume"), json_body={}, idempotent=True))

    async def run(self, sandbox_id: str, command: Command, **options: Any) -> ExecutionResult:
        body = _command_body(command, options)
        timeout = None if self._http.config.timeout is None else max(self._http.config.timeout, body.get("timeoutMs", 60000) / 1000 + 30)
        return ExecutionResult.from_wire(await self._http.json("POST", _path(sandbox_id, "/commands"), json_body=body, timeout=timeout))

    async def write_file(self, sandbox_id: str, path: str, data: Data) -> JsonDict:
        headers = {"content-type": "application/octet-stream"}
        return dict(await self._http.json("PUT", _files(sandbox_id, path), content=_content(data), headers=headers))

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        response = await self._http.send("GET", _files(sandbox_id, path), headers={"accept": "application/octet-stream"}, idempotent=True)
        return bytes(response.content)

    async def list_files(self, sandbox_id: str, path: str = "/work") -> JsonList:
        return list((await self._http.json("GET", _files(sandbox_id, path, "/list"))).get("entries") or [])

    def port_url(self, sandbox_id: str, port: int, path: str = "") -> str:
        """The URL of ``port`` inside the sandbox through the API; requests to it need the API key."""
        return self._http.url(_port_path(sandbox_id, port, path))

    async def fetch_port(
        self, sandbox_id: str, port: int, path: str = "/", *, method: str = "GET", content: Optional[Data] = None, headers: Optional[Mapping[str, str]] = None
    ) -> httpx.Response:
        """:meth:`Sandboxes.fetch_port`, awaited."""
        response = await self._http.send(method, _port_path(sandbox_id, port, path), content=content, headers=headers, idempotent=False, accept_statuses=_ANY_STATUS)
        error = _proxied_error(response)
        if error is not None:
            raise error
        return response

    async def remove_file(self, sandbox_id: str, path: str) -> None:
        await self._http.json("DELETE", _files(sandbox_id, path))


class _AsyncCommands:
    def __init__(self, api: AsyncSandboxes, sandbox_id: str) -> None:
        self._api, self._id = api, sandbox_id

    async def run(self, command: Command, **options: Any) -> ExecutionResult:
        return await self._api.run(self._id, command, **options)


class _AsyncFiles:
    def __init__(self, api: AsyncSandboxes, sandbox_id: str) -> None:
        self._api, self._id = api, sandbox_id

    async def write(self, path: str, data: Data) -> JsonDict:
        return await self._api.write_file(self._id, path, data)

    async def read(self, path: str) -> str:
        return (await self._api.read_file(self._id, path)).decode("utf-8")

    async def read_bytes(self, path: str) -> bytes:
        return await self._api.read_file(self._id, path)

    async def list(self, path: str = "/work") -> JsonList:
        return await self._api.list_files(self._id, path)

    async def remove(self, path: str) -> None:
        await self._api.remove_file(self._id, path)


class AsyncSandbox:
    """A handle on one persistent sandbox (asyncio client)."""

    def __init__(self, api: AsyncSandboxes, info: JsonDict) -> None:
        self._api = api
        self.id: str = str(info["id"])
        self.info: JsonDict = dict(info)
        self.commands = _AsyncCommands(api, self.id)
        self.files = _AsyncFiles(api, self.id)

    @property
    def state(self) -> str:
        return str(self.info["state"])

    async def pause(self) -> None:
        self.info = await self._api.pause(self.id)

    async def resume(self) -> None:
        self.info = await self._api.resume(self.id)

    async def refresh(self) -> JsonDict:
        self.info = await self._api.get(self.id)
        return self.info

    async def kill(self) -> None:
        await self._api.delete(self.id)

    def get_host(self, port: int) -> str:
        """The URL of ``port`` in this sandbox through the API."""
        return self._api.port_url(self.id, port)

    async def fetch(self, port: int, path: str = "/", **options: Any) -> httpx.Response:
        """An HTTP request to the server on ``port`` in this sandbox: ``method``, ``content``, ``headers``."""
        return await self._api.fetch_port(self.id, port, path, **options)
