"""``/v1/sandboxes``: persistent sandboxes, for the blocking and the asyncio client (E2B's shape: ``create`` gives a
handle with ``commands.run``, ``files.write/read/list/remove``, ``pause``, ``resume``, ``kill``)."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, Mapping, Optional, Union
from urllib.parse import quote

from ._core import SseParser, seg
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
    names = {"stdin": "stdin", "env": "env", "workdir": "workdir", "timeout_ms": "timeoutMs", "output_bytes": "outputBytes", "auto_resume": "autoResume", "background": "background"}
    for key, value in options.items():
        if key not in names:
            raise TypeError(f"unknown command option {key!r} (one of {', '.join(names)})")
        if key == "stdin" and isinstance(value, (bytes, bytearray, memoryview)):
            body["stdinBase64"] = base64.b64encode(bytes(value)).decode("ascii")
        elif value is not None:
            body[names[key]] = dict(value) if isinstance(value, Mapping) else value
    return body


def _command_path(sandbox_id: str, command_id: str, suffix: str = "") -> str:
    return _path(sandbox_id, f"/commands/{seg(command_id)}{suffix}")


Callback = Optional[Callable[[str], None]]


def _deliver(event: str, data: str, on_stdout: Callback, on_stderr: Callback) -> Optional[JsonDict]:
    """One SSE event of a command's logs: output to the callbacks; the ``exit`` event's command as a dict."""
    if event == "stdout" and on_stdout is not None:
        on_stdout(data)
    elif event == "stderr" and on_stderr is not None:
        on_stderr(data)
    elif event == "exit":
        return dict(json.loads(data))
    return None


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
        if options.get("background"):
            raise TypeError("a background command answers a handle: use start() (commands.start)")
        body = _command_body(command, options)
        timeout = None if self._http.config.timeout is None else max(self._http.config.timeout, body.get("timeoutMs", 60000) / 1000 + 30)
        return ExecutionResult.from_wire(self._http.json("POST", _path(sandbox_id, "/commands"), json_body=body, timeout=timeout))

    # Background commands ------------------------------------------------------------------------------------------

    def start(self, sandbox_id: str, command: Command, **options: Any) -> "CommandHandle":
        """``POST /v1/sandboxes/ID/commands`` with ``background: true``: answers the command's handle once it runs."""
        body = _command_body(command, {**options, "background": True})
        return CommandHandle(self, sandbox_id, dict(self._http.json("POST", _path(sandbox_id, "/commands"), json_body=body)))

    def list_commands(self, sandbox_id: str) -> JsonList:
        return list(self._http.json("GET", _path(sandbox_id, "/commands")).get("commands") or [])

    def get_command(self, sandbox_id: str, command_id: str) -> JsonDict:
        return dict(self._http.json("GET", _command_path(sandbox_id, command_id)))

    def kill_command(self, sandbox_id: str, command_id: str) -> JsonDict:
        return dict(self._http.json("DELETE", _command_path(sandbox_id, command_id)))

    def command_logs(self, sandbox_id: str, command_id: str, *, on_stdout: Callback = None, on_stderr: Callback = None) -> JsonDict:
        """Follows ``.../commands/CID/logs`` (SSE): the output kept so far, then live, to the callbacks; returns the
        command once it exited."""
        path = _command_path(sandbox_id, command_id, "/logs")
        response = self._http.send("GET", path, headers={"accept": "text/event-stream"}, timeout=None, idempotent=True, stream=True)
        try:
            parser = SseParser()
            for chunk in response.iter_raw():
                for event in parser.feed(chunk):
                    final = _deliver(event.event, event.data, on_stdout, on_stderr)
                    if final is not None:
                        return final
        finally:
            response.close()
        raise kindling_stream_interrupted(path)

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


class _Commands:
    def __init__(self, api: Sandboxes, sandbox_id: str) -> None:
        self._api, self._id = api, sandbox_id

    def run(self, command: Command, **options: Any) -> ExecutionResult:
        """A foreground command's result; ``run(cmd, background=True)`` is :meth:`start`."""
        return self._api.run(self._id, command, **options)

    def start(self, command: Command, **options: Any) -> "CommandHandle":
        return self._api.start(self._id, command, **options)

    def list(self) -> JsonList:
        return self._api.list_commands(self._id)

    def connect(self, command_id: str) -> "CommandHandle":
        return CommandHandle(self._api, self._id, self._api.get_command(self._id, command_id))

    def kill(self, command_id: str) -> JsonDict:
        return self._api.kill_command(self._id, command_id)


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
        if options.get("background"):
            raise TypeError("a background command answers a handle: use start() (commands.start)")
        body = _command_body(command, options)
        timeout = None if self._http.config.timeout is None else max(self._http.config.timeout, body.get("timeoutMs", 60000) / 1000 + 30)
        return ExecutionResult.from_wire(await self._http.json("POST", _path(sandbox_id, "/commands"), json_body=body, timeout=timeout))

    # Background commands ------------------------------------------------------------------------------------------

    async def start(self, sandbox_id: str, command: Command, **options: Any) -> "AsyncCommandHandle":
        body = _command_body(command, {**options, "background": True})
        return AsyncCommandHandle(self, sandbox_id, dict(await self._http.json("POST", _path(sandbox_id, "/commands"), json_body=body)))

    async def list_commands(self, sandbox_id: str) -> JsonList:
        return list((await self._http.json("GET", _path(sandbox_id, "/commands"))).get("commands") or [])

    async def get_command(self, sandbox_id: str, command_id: str) -> JsonDict:
        return dict(await self._http.json("GET", _command_path(sandbox_id, command_id)))

    async def kill_command(self, sandbox_id: str, command_id: str) -> JsonDict:
        return dict(await self._http.json("DELETE", _command_path(sandbox_id, command_id)))

    async def command_logs(self, sandbox_id: str, command_id: str, *, on_stdout: Callback = None, on_stderr: Callback = None) -> JsonDict:
        path = _command_path(sandbox_id, command_id, "/logs")
        response = await self._http.send("GET", path, headers={"accept": "text/event-stream"}, timeout=None, idempotent=True, stream=True)
        try:
            parser = SseParser()
            async for chunk in response.aiter_raw():
                for event in parser.feed(chunk):
                    final = _deliver(event.event, event.data, on_stdout, on_stderr)
                    if final is not None:
                        return final
        finally:
            await response.aclose()
        raise kindling_stream_interrupted(path)

    async def write_file(self, sandbox_id: str, path: str, data: Data) -> JsonDict:
        headers = {"content-type": "application/octet-stream"}
        return dict(await self._http.json("PUT", _files(sandbox_id, path), content=_content(data), headers=headers))

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        response = await self._http.send("GET", _files(sandbox_id, path), headers={"accept": "application/octet-stream"}, idempotent=True)
        return bytes(response.content)

    async def list_files(self, sandbox_id: str, path: str = "/work") -> JsonList:
        return list((await self._http.json("GET", _files(sandbox_id, path, "/list"))).get("entries") or [])

    async def remove_file(self, sandbox_id: str, path: str) -> None:
        await self._http.json("DELETE", _files(sandbox_id, path))


class _AsyncCommands:
    def __init__(self, api: AsyncSandboxes, sandbox_id: str) -> None:
        self._api, self._id = api, sandbox_id

    async def run(self, command: Command, **options: Any) -> ExecutionResult:
        return await self._api.run(self._id, command, **options)

    async def start(self, command: Command, **options: Any) -> "AsyncCommandHandle":
        return await self._api.start(self._id, command, **options)

    async def list(self) -> JsonList:
        return await self._api.list_commands(self._id)

    async def connect(self, command_id: str) -> "AsyncCommandHandle":
        return AsyncCommandHandle(self._api, self._id, await self._api.get_command(self._id, command_id))

    async def kill(self, command_id: str) -> JsonDict:
        return await self._api.kill_command(self._id, command_id)


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


def kindling_stream_interrupted(path: str) -> Exception:
    from ._errors import ConnectionError as _ConnectionError

    return _ConnectionError("STREAM_INTERRUPTED", f"the event stream of {path} ended before the exit event")


class CommandHandle:
    """A background command (blocking client): ``wait()`` follows its output (kept bounded by the server) until it
    exits and returns the command with ``stdout``/``stderr``; ``kill()`` kills its process tree."""

    def __init__(self, api: Sandboxes, sandbox_id: str, info: JsonDict) -> None:
        self._api, self.sandbox_id, self.info = api, sandbox_id, info
        self.id: str = str(info["id"])
        self.pid: Optional[int] = info.get("pid")

    def wait(self, *, on_stdout: Callback = None, on_stderr: Callback = None) -> JsonDict:
        out: list[str] = []
        err: list[str] = []

        def stdout(data: str) -> None:
            out.append(data)
            if on_stdout is not None:
                on_stdout(data)

        def stderr(data: str) -> None:
            err.append(data)
            if on_stderr is not None:
                on_stderr(data)

        self.info = self._api.command_logs(self.sandbox_id, self.id, on_stdout=stdout, on_stderr=stderr)
        return {**self.info, "stdout": "".join(out), "stderr": "".join(err)}

    def kill(self) -> JsonDict:
        self.info = self._api.kill_command(self.sandbox_id, self.id)
        return self.info

    def refresh(self) -> JsonDict:
        self.info = self._api.get_command(self.sandbox_id, self.id)
        return self.info


class AsyncCommandHandle:
    """A background command (asyncio client); see :class:`CommandHandle`."""

    def __init__(self, api: AsyncSandboxes, sandbox_id: str, info: JsonDict) -> None:
        self._api, self.sandbox_id, self.info = api, sandbox_id, info
        self.id: str = str(info["id"])
        self.pid: Optional[int] = info.get("pid")

    async def wait(self, *, on_stdout: Callback = None, on_stderr: Callback = None) -> JsonDict:
        out: list[str] = []
        err: list[str] = []

        def stdout(data: str) -> None:
            out.append(data)
            if on_stdout is not None:
                on_stdout(data)

        def stderr(data: str) -> None:
            err.append(data)
            if on_stderr is not None:
                on_stderr(data)

        self.info = await self._api.command_logs(self.sandbox_id, self.id, on_stdout=stdout, on_stderr=stderr)
        return {**self.info, "stdout": "".join(out), "stderr": "".join(err)}

    async def kill(self) -> JsonDict:
        self.info = await self._api.kill_command(self.sandbox_id, self.id)
        return self.info

    async def refresh(self) -> JsonDict:
        self.info = await self._api.get_command(self.sandbox_id, self.id)
        return self.info
