"""``/v1/sandboxes``: persistent sandboxes, for the blocking and the asyncio client (E2B's shape: ``create`` gives a
handle with ``commands.run``, ``files.write/read/list/remove``, ``pause``, ``resume``, ``kill``)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from typing import IO, TYPE_CHECKING, Any, AsyncIterable, cast, AsyncIterator, Callable, Iterable, Iterator, List, Mapping, Optional, Union
from urllib.parse import quote

from ._core import SseParser, seg
import httpx

from ._core import base_headers, error_from_response, seg
from ._pty import AsyncPty, OnData, Pty
from ._errors import KindlingError
from ._types import ExecutionResult, JsonDict

if TYPE_CHECKING:
    from ._async import _AsyncHttp
    from ._sync import _Http

Data = Union[str, bytes]
#: What an upload may be: text, bytes, a file object (read in chunks, text or binary), or an iterable of chunks; the
#: asyncio client also takes async iterables. Streams are sent as they are read, never gathered in memory.
Upload = Union[str, bytes, bytearray, memoryview, IO[bytes], IO[str], Iterable[Union[bytes, str]], AsyncIterable[Union[bytes, str]]]
#: Bytes read from a file object per chunk of an upload.
UPLOAD_CHUNK = 256 * 1024
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
    """snake_case options to the wire (camelCase); ``limits`` is a dict of memoryMb, cpus, pids, diskMb. Without
    runtime, image and from_snapshot the runtime is ``bash``; from a snapshot they default to the snapshot's."""
    body: JsonDict = {}
    if runtime is None and image is None and fields.get("from_snapshot") is None:
        runtime = "bash"
    if runtime is not None:
        body["runtime"] = runtime
    if image is not None:
        body["image"] = image
    names = {"executor": "executor", "limits": "limits", "env": "env", "idle_timeout_ms": "idleTimeoutMs", "max_lifetime_ms": "maxLifetimeMs", "metadata": "metadata", "from_snapshot": "fromSnapshot"}
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
    elif event == "error":
        from ._errors import error_from_payload

        try:
            payload: Any = json.loads(data)
        except ValueError:
            payload = {"error": {"code": "STREAM_ERROR", "message": data}}
        raise error_from_payload(payload)
    return None


def _split_callbacks(options: dict[str, Any]) -> tuple[Callback, Callback]:
    """Takes ``on_stdout``/``on_stderr`` out of a command's options (they are not sent)."""
    return options.pop("on_stdout", None), options.pop("on_stderr", None)


def _run_timeout(config_timeout: Optional[float], body: JsonDict) -> Optional[float]:
    """The request outlives the command's own timeout by a little."""
    return None if config_timeout is None else max(config_timeout, body.get("timeoutMs", 60000) / 1000 + 30)


def _plain_result(response_content: bytes, status: int, url: str, on_stdout: Callback, on_stderr: Callback) -> ExecutionResult:
    """A server (or proxy) that ignored ``Accept: text/event-stream`` answered the plain result: replay its output once."""
    from ._core import parse_json

    result = ExecutionResult.from_wire(parse_json(response_content, status, url))
    if result.stdout and on_stdout is not None:
        on_stdout(result.stdout)
    if result.stderr and on_stderr is not None:
        on_stderr(result.stderr)
    return result


def _bounded(parts: list[str], limit: Any) -> str:
    """The output seen by a follower, kept as bounded as on the server: the newest ``outputBytes`` characters."""
    text = "".join(parts)
    return text[-max(int(limit), 1):] if isinstance(limit, int) else text


def _fork_answer(made: Any) -> tuple[JsonDict, JsonList]:
    return dict(made["snapshot"]), [dict(item) for item in made.get("sandboxes") or []]


def _snapshots_query(sandbox_id: Optional[str]) -> str:
    return "/v1/snapshots" if sandbox_id is None else f"/v1/snapshots?sandboxId={quote(sandbox_id, safe='')}"


def _content(data: Data) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _chunk(piece: Union[bytes, str, bytearray, memoryview]) -> bytes:
    return piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)


def _file_chunks(source: Any) -> Iterator[bytes]:
    while True:
        piece = source.read(UPLOAD_CHUNK)
        if not piece:
            return
        yield _chunk(piece)


def _upload(data: Upload) -> tuple[Union[bytes, Iterator[bytes]], bool]:
    """The body of an upload and whether it can be sent again (bytes can; a stream is read once)."""
    if isinstance(data, (str, bytes, bytearray, memoryview)):
        return _chunk(data), True
    if callable(getattr(data, "read", None)):
        return _file_chunks(data), False
    if isinstance(data, Iterable):
        return (_chunk(piece) for piece in cast(Iterable[Union[bytes, str]], data)), False
    raise TypeError("upload data must be str, bytes, a file object or an iterable of chunks (async iterables on the asyncio client)")


async def _async_chunks(data: Any) -> AsyncIterator[bytes]:
    if hasattr(data, "__aiter__"):
        async for piece in data:
            yield _chunk(piece)
    elif callable(getattr(data, "read", None)):
        # A blocking file is read off the event loop.
        while True:
            piece = await asyncio.to_thread(data.read, UPLOAD_CHUNK)
            if not piece:
                return
            yield _chunk(piece)
    else:
        for piece in data:
            yield _chunk(piece)


def _async_upload(data: Upload) -> tuple[Union[bytes, AsyncIterator[bytes]], bool]:
    if isinstance(data, (str, bytes, bytearray, memoryview)):
        return _chunk(data), True
    if hasattr(data, "__aiter__") or callable(getattr(data, "read", None)) or isinstance(data, Iterable):
        return _async_chunks(data), False
    raise TypeError("upload data must be str, bytes, a file object, an iterable or an async iterable of chunks")


def _list_query(state: Optional[str], metadata: Optional[Mapping[str, str]]) -> str:
    pairs = ([("state", state)] if state is not None else []) + [(f"metadata.{key}", value) for key, value in (metadata or {}).items()]
    return "" if not pairs else "?" + "&".join(f"{quote(key, safe='.')}={quote(value, safe='')}" for key, value in pairs)


def _update_body(timeout_ms: Optional[int], idle_timeout_ms: Optional[int]) -> JsonDict:
    body: JsonDict = {}
    if timeout_ms is not None:
        body["timeoutMs"] = timeout_ms
    if idle_timeout_ms is not None:
        body["idleTimeoutMs"] = idle_timeout_ms
    if not body:
        raise TypeError("give timeout_ms, idle_timeout_ms or both")
    return body


class Sandboxes:
    """``/v1/sandboxes`` on the blocking client. ``create``/``connect`` give a :class:`Sandbox`; the other methods
    take an id. Sandbox answers are the server's JSON (``id``, ``state``, ``limits``, ``usage``...) as dicts."""

    def __init__(self, http: "_Http") -> None:
        self._http = http

    def create(self, *, runtime: Optional[str] = None, image: Optional[str] = None, **options: Any) -> "Sandbox":
        """``POST /v1/sandboxes``. Options: ``executor``, ``limits`` (memoryMb, cpus, pids, diskMb), ``env``,
        ``idle_timeout_ms`` (default 600000), ``max_lifetime_ms`` (default 3600000), ``metadata``, ``from_snapshot`` (a
        snapshot id: /work starts as its files; runtime/image and limits default to the snapshot's)."""
        info = self._http.json("POST", "/v1/sandboxes", json_body=_create_body(runtime, image, options))
        return Sandbox(self, info)

    def connect(self, sandbox_id: str) -> "Sandbox":
        return Sandbox(self, self.get(sandbox_id))

    def list(self, *, state: Optional[str] = None, metadata: Optional[Mapping[str, str]] = None) -> JsonList:
        """The tenant's sandboxes, of one ``state`` and/or with every ``metadata`` pair given (exact values)."""
        return list(self._http.json("GET", f"/v1/sandboxes{_list_query(state, metadata)}").get("sandboxes") or [])

    def update(self, sandbox_id: str, *, timeout_ms: Optional[int] = None, idle_timeout_ms: Optional[int] = None) -> JsonDict:
        """``PATCH /v1/sandboxes/ID``: ``timeout_ms`` from now the sandbox stops (E2B's set_timeout); a new idle timeout."""
        return dict(self._http.json("PATCH", _path(sandbox_id), json_body=_update_body(timeout_ms, idle_timeout_ms), idempotent=True))

    def set_timeout(self, sandbox_id: str, timeout_ms: int) -> JsonDict:
        return self.update(sandbox_id, timeout_ms=timeout_ms)

    def pty(self, sandbox_id: str, *, cols: int = 80, rows: int = 24, command: Optional[Command] = None, env: Optional[Mapping[str, str]] = None, on_data: OnData = None) -> Pty:
        """``GET /v1/sandboxes/ID/pty``: an interactive terminal (WebSocket), running once this returns. ``on_data``
        gets its output (bytes, on the terminal's own thread); ``write``, ``resize``, ``wait`` (exit code), ``kill``."""
        return Pty(self._http.config.url, base_headers(self._http.config), sandbox_id, cols=cols, rows=rows, command=command, env=env, on_data=on_data)

    def hibernate(self, sandbox_id: str) -> JsonDict:
        """``POST /v1/sandboxes/ID/hibernate``: releases its RAM; ``info["hibernation"]["processesKept"]`` says whether
        its processes come back on resume (else its files are kept and its processes ended)."""
        return dict(self._http.json("POST", _path(sandbox_id, "/hibernate"), json_body={}, idempotent=True))

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
        command's process tree is killed, the sandbox lives on), ``output_bytes``, ``auto_resume`` (default True).
        With ``on_stdout``/``on_stderr`` the output streams to them as it is produced (SSE; chunks, not lines)."""
        if options.get("background"):
            raise TypeError("a background command answers a handle: use start() (commands.start)")
        on_stdout, on_stderr = _split_callbacks(options)
        body = _command_body(command, options)
        timeout = _run_timeout(self._http.config.timeout, body)
        path = _path(sandbox_id, "/commands")
        if on_stdout is None and on_stderr is None:
            return ExecutionResult.from_wire(self._http.json("POST", path, json_body=body, timeout=timeout))
        response = self._http.send("POST", path, json_body=body, headers={"accept": "text/event-stream"}, timeout=timeout, idempotent=False, stream=True)
        try:
            if "text/event-stream" not in response.headers.get("content-type", "").lower():
                return _plain_result(response.read(), response.status_code, str(response.url), on_stdout, on_stderr)
            parser = SseParser()
            for chunk in response.iter_raw():
                for event in parser.feed(chunk):
                    final = _deliver(event.event, event.data, on_stdout, on_stderr)
                    if final is not None:
                        return ExecutionResult.from_wire(final)
        finally:
            response.close()
        raise kindling_stream_interrupted(path)

    # Background commands ------------------------------------------------------------------------------------------

    def start(self, sandbox_id: str, command: Command, **options: Any) -> "CommandHandle":
        """``POST /v1/sandboxes/ID/commands`` with ``background: true``: answers the command's handle once it runs.
        With ``on_stdout``/``on_stderr`` its output is followed at once (from the start, as kept by the server) on a
        thread of the handle's; ``wait()`` then returns what that follower saw."""
        on_stdout, on_stderr = _split_callbacks(options)
        body = _command_body(command, {**options, "background": True})
        info = dict(self._http.json("POST", _path(sandbox_id, "/commands"), json_body=body))
        return CommandHandle(self, sandbox_id, info, on_stdout=on_stdout, on_stderr=on_stderr)

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

    def write_file(self, sandbox_id: str, path: str, data: Upload) -> JsonDict:
        """Writes the file (parents made): text, bytes, a file object or an iterable of chunks, streamed."""
        headers = {"content-type": "application/octet-stream"}
        body, replayable = _upload(data)
        return dict(self._http.json("PUT", _files(sandbox_id, path), content=body, headers=headers, replayable=replayable))

    def mkdir(self, sandbox_id: str, path: str, *, parents: bool = True) -> JsonDict:
        """``POST .../files/mkdir``: ``{"path", "created"}`` (created False when it existed)."""
        return dict(self._http.json("POST", _path(sandbox_id, "/files/mkdir"), json_body={"path": path, "parents": parents}, idempotent=True))

    def write_tar(self, sandbox_id: str, path: str, tar: Upload) -> JsonDict:
        """``PUT .../files/tar``: extracts a tar archive (bytes, a file object or chunks; streamed) into the directory
        ``path``; entries leaving it are refused (``ValidationError`` SANDBOX_TAR_INVALID) and nothing changes."""
        body, replayable = _upload(tar)
        return dict(self._http.json("PUT", _files(sandbox_id, path, "/tar"), content=body, headers={"content-type": "application/x-tar"}, replayable=replayable))

    def read_tar(self, sandbox_id: str, path: str) -> Iterator[bytes]:
        """``GET .../files/tar``: the directory as a tar archive, in chunks as they arrive (close the iterator to stop)."""
        response = self._http.send("GET", _files(sandbox_id, path, "/tar"), headers={"accept": "application/x-tar"}, idempotent=True, stream=True)

        def chunks() -> Iterator[bytes]:
            try:
                yield from response.iter_bytes()
            finally:
                response.close()

        return chunks()

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        response = self._http.send("GET", _files(sandbox_id, path), headers={"accept": "application/octet-stream"}, idempotent=True)
        return bytes(response.content)

    def list_files(self, sandbox_id: str, path: str = "/work") -> JsonList:
        return list(self._http.json("GET", _files(sandbox_id, path, "/list")).get("entries") or [])

    def remove_file(self, sandbox_id: str, path: str) -> None:
        self._http.json("DELETE", _files(sandbox_id, path))

    # Snapshots and forks ------------------------------------------------------------------------------------------

    def snapshot(self, sandbox_id: str) -> JsonDict:
        """``POST /v1/sandboxes/ID/snapshots``: an immutable copy of the sandbox's files (``id``, ``bytes``, ``memory``...)."""
        return dict(self._http.json("POST", _path(sandbox_id, "/snapshots"), json_body={}))

    def fork(self, sandbox_id: str, count: int) -> tuple[JsonDict, List["Sandbox"]]:
        """``POST /v1/sandboxes/ID/fork``: a snapshot and ``count`` sandboxes made from it, as (snapshot, handles)."""
        snapshot, made = _fork_answer(self._http.json("POST", _path(sandbox_id, "/fork"), json_body={"count": count}))
        return snapshot, [Sandbox(self, info) for info in made]

    def list_snapshots(self, *, sandbox_id: Optional[str] = None) -> JsonList:
        """``GET /v1/snapshots``: the tenant's snapshots (of one sandbox with ``sandbox_id``)."""
        return list(self._http.json("GET", _snapshots_query(sandbox_id)).get("snapshots") or [])

    def get_snapshot(self, snapshot_id: str) -> JsonDict:
        return dict(self._http.json("GET", f"/v1/snapshots/{seg(snapshot_id)}"))

    def delete_snapshot(self, snapshot_id: str) -> None:
        """``DELETE /v1/snapshots/ID`` (``ConflictError`` SNAPSHOT_IN_USE while sandboxes are made from it)."""
        self._http.json("DELETE", f"/v1/snapshots/{seg(snapshot_id)}")
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
        """A foreground command's result; ``run(cmd, background=True)`` is :meth:`start`."""
        return self._api.run(self._id, command, **options)

    def start(self, command: Command, **options: Any) -> "CommandHandle":
        return self._api.start(self._id, command, **options)

    def list(self) -> JsonList:
        return self._api.list_commands(self._id)

    def connect(self, command_id: str, *, on_stdout: Callback = None, on_stderr: Callback = None) -> "CommandHandle":
        """A handle on a background command by id; with callbacks its output is followed at once (see ``start``)."""
        return CommandHandle(self._api, self._id, self._api.get_command(self._id, command_id), on_stdout=on_stdout, on_stderr=on_stderr)

    def kill(self, command_id: str) -> JsonDict:
        return self._api.kill_command(self._id, command_id)


class _Files:
    def __init__(self, api: Sandboxes, sandbox_id: str) -> None:
        self._api, self._id = api, sandbox_id

    def write(self, path: str, data: Upload) -> JsonDict:
        """Text, bytes, a file object or an iterable of chunks (streamed, not read into memory)."""
        return self._api.write_file(self._id, path, data)

    def make_dir(self, path: str) -> bool:
        """Makes the directory and its parents; False when it existed (E2B's ``make_dir``)."""
        return bool(self._api.mkdir(self._id, path)["created"])

    def upload_dir(self, path: str, tar: Upload) -> JsonDict:
        """Extracts a tar archive into the directory ``path``."""
        return self._api.write_tar(self._id, path, tar)

    def download_dir(self, path: str) -> Iterator[bytes]:
        """The directory ``path`` as a tar archive, in chunks."""
        return self._api.read_tar(self._id, path)

    def read(self, path: str) -> str:
        return self._api.read_file(self._id, path).decode("utf-8")

    def read_bytes(self, path: str) -> bytes:
        return self._api.read_file(self._id, path)

    def list(self, path: str = "/work") -> JsonList:
        return self._api.list_files(self._id, path)

    def remove(self, path: str) -> None:
        self._api.remove_file(self._id, path)


class _Terminals:
    def __init__(self, api: Sandboxes, sandbox_id: str) -> None:
        self._api, self._id = api, sandbox_id

    def create(self, *, cols: int = 80, rows: int = 24, command: Optional[Command] = None, env: Optional[Mapping[str, str]] = None, on_data: OnData = None) -> Pty:
        """An interactive terminal (the image's shell unless ``command``); needs python3 in the sandbox's image."""
        return self._api.pty(self._id, cols=cols, rows=rows, command=command, env=env, on_data=on_data)


class _AsyncTerminals:
    def __init__(self, api: "AsyncSandboxes", sandbox_id: str) -> None:
        self._api, self._id = api, sandbox_id

    async def create(self, *, cols: int = 80, rows: int = 24, command: Optional[Command] = None, env: Optional[Mapping[str, str]] = None, on_data: OnData = None) -> AsyncPty:
        return await self._api.pty(self._id, cols=cols, rows=rows, command=command, env=env, on_data=on_data)


class Sandbox:
    """A handle on one persistent sandbox (blocking client)."""

    def __init__(self, api: Sandboxes, info: JsonDict) -> None:
        self._api = api
        self.id: str = str(info["id"])
        self.info: JsonDict = dict(info)
        self.commands = _Commands(api, self.id)
        self.files = _Files(api, self.id)
        self.pty = _Terminals(api, self.id)

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

    def hibernate(self) -> JsonDict:
        """Releases its RAM; ``info["hibernation"]["processesKept"]`` says whether its processes come back."""
        self.info = self._api.hibernate(self.id)
        return self.info

    def set_timeout(self, timeout_ms: int) -> None:
        """The sandbox stops ``timeout_ms`` from now (E2B's ``set_timeout``)."""
        self.info = self._api.set_timeout(self.id, timeout_ms)

    def snapshot(self) -> JsonDict:
        """An immutable snapshot of the sandbox's files (and of its processes on gvisor: ``memory`` is true)."""
        return self._api.snapshot(self.id)

    def fork(self, count: int) -> "list[Sandbox]":
        """``count`` new sandboxes from one snapshot of this one; none sees the others' later writes."""
        return self._api.fork(self.id, count)[1]

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

    async def list(self, *, state: Optional[str] = None, metadata: Optional[Mapping[str, str]] = None) -> JsonList:
        return list((await self._http.json("GET", f"/v1/sandboxes{_list_query(state, metadata)}")).get("sandboxes") or [])

    async def update(self, sandbox_id: str, *, timeout_ms: Optional[int] = None, idle_timeout_ms: Optional[int] = None) -> JsonDict:
        return dict(await self._http.json("PATCH", _path(sandbox_id), json_body=_update_body(timeout_ms, idle_timeout_ms), idempotent=True))

    async def set_timeout(self, sandbox_id: str, timeout_ms: int) -> JsonDict:
        return await self.update(sandbox_id, timeout_ms=timeout_ms)

    async def pty(self, sandbox_id: str, *, cols: int = 80, rows: int = 24, command: Optional[Command] = None, env: Optional[Mapping[str, str]] = None, on_data: OnData = None) -> AsyncPty:
        """See :meth:`Sandboxes.pty`; ``on_data`` is called in the event loop."""
        return await AsyncPty.open(self._http.config.url, base_headers(self._http.config), sandbox_id, cols=cols, rows=rows, command=command, env=env, on_data=on_data)

    async def hibernate(self, sandbox_id: str) -> JsonDict:
        return dict(await self._http.json("POST", _path(sandbox_id, "/hibernate"), json_body={}, idempotent=True))

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
        on_stdout, on_stderr = _split_callbacks(options)
        body = _command_body(command, options)
        timeout = _run_timeout(self._http.config.timeout, body)
        path = _path(sandbox_id, "/commands")
        if on_stdout is None and on_stderr is None:
            return ExecutionResult.from_wire(await self._http.json("POST", path, json_body=body, timeout=timeout))
        response = await self._http.send("POST", path, json_body=body, headers={"accept": "text/event-stream"}, timeout=timeout, idempotent=False, stream=True)
        try:
            if "text/event-stream" not in response.headers.get("content-type", "").lower():
                return _plain_result(await response.aread(), response.status_code, str(response.url), on_stdout, on_stderr)
            parser = SseParser()
            async for chunk in response.aiter_raw():
                for event in parser.feed(chunk):
                    final = _deliver(event.event, event.data, on_stdout, on_stderr)
                    if final is not None:
                        return ExecutionResult.from_wire(final)
        finally:
            await response.aclose()
        raise kindling_stream_interrupted(path)

    # Background commands ------------------------------------------------------------------------------------------

    async def start(self, sandbox_id: str, command: Command, **options: Any) -> "AsyncCommandHandle":
        """See :meth:`Sandboxes.start`; with callbacks the output is followed at once by a task of the handle's."""
        on_stdout, on_stderr = _split_callbacks(options)
        body = _command_body(command, {**options, "background": True})
        info = dict(await self._http.json("POST", _path(sandbox_id, "/commands"), json_body=body))
        return AsyncCommandHandle(self, sandbox_id, info, on_stdout=on_stdout, on_stderr=on_stderr)

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

    async def write_file(self, sandbox_id: str, path: str, data: Upload) -> JsonDict:
        headers = {"content-type": "application/octet-stream"}
        body, replayable = _async_upload(data)
        return dict(await self._http.json("PUT", _files(sandbox_id, path), content=body, headers=headers, replayable=replayable))

    async def mkdir(self, sandbox_id: str, path: str, *, parents: bool = True) -> JsonDict:
        return dict(await self._http.json("POST", _path(sandbox_id, "/files/mkdir"), json_body={"path": path, "parents": parents}, idempotent=True))

    async def write_tar(self, sandbox_id: str, path: str, tar: Upload) -> JsonDict:
        body, replayable = _async_upload(tar)
        return dict(await self._http.json("PUT", _files(sandbox_id, path, "/tar"), content=body, headers={"content-type": "application/x-tar"}, replayable=replayable))

    async def read_tar(self, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        """The directory as a tar archive, in chunks as they arrive."""
        response = await self._http.send("GET", _files(sandbox_id, path, "/tar"), headers={"accept": "application/x-tar"}, idempotent=True, stream=True)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for piece in response.aiter_bytes():
                    yield piece
            finally:
                await response.aclose()

        return chunks()

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

    # Snapshots and forks ------------------------------------------------------------------------------------------

    async def snapshot(self, sandbox_id: str) -> JsonDict:
        return dict(await self._http.json("POST", _path(sandbox_id, "/snapshots"), json_body={}))

    async def fork(self, sandbox_id: str, count: int) -> tuple[JsonDict, List["AsyncSandbox"]]:
        snapshot, made = _fork_answer(await self._http.json("POST", _path(sandbox_id, "/fork"), json_body={"count": count}))
        return snapshot, [AsyncSandbox(self, info) for info in made]

    async def list_snapshots(self, *, sandbox_id: Optional[str] = None) -> JsonList:
        return list((await self._http.json("GET", _snapshots_query(sandbox_id))).get("snapshots") or [])

    async def get_snapshot(self, snapshot_id: str) -> JsonDict:
        return dict(await self._http.json("GET", f"/v1/snapshots/{seg(snapshot_id)}"))

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._http.json("DELETE", f"/v1/snapshots/{seg(snapshot_id)}")


class _AsyncCommands:
    def __init__(self, api: AsyncSandboxes, sandbox_id: str) -> None:
        self._api, self._id = api, sandbox_id

    async def run(self, command: Command, **options: Any) -> ExecutionResult:
        return await self._api.run(self._id, command, **options)

    async def start(self, command: Command, **options: Any) -> "AsyncCommandHandle":
        return await self._api.start(self._id, command, **options)

    async def list(self) -> JsonList:
        return await self._api.list_commands(self._id)

    async def connect(self, command_id: str, *, on_stdout: Callback = None, on_stderr: Callback = None) -> "AsyncCommandHandle":
        return AsyncCommandHandle(self._api, self._id, await self._api.get_command(self._id, command_id), on_stdout=on_stdout, on_stderr=on_stderr)

    async def kill(self, command_id: str) -> JsonDict:
        return await self._api.kill_command(self._id, command_id)


class _AsyncFiles:
    def __init__(self, api: AsyncSandboxes, sandbox_id: str) -> None:
        self._api, self._id = api, sandbox_id

    async def write(self, path: str, data: Upload) -> JsonDict:
        return await self._api.write_file(self._id, path, data)

    async def make_dir(self, path: str) -> bool:
        return bool((await self._api.mkdir(self._id, path))["created"])

    async def upload_dir(self, path: str, tar: Upload) -> JsonDict:
        return await self._api.write_tar(self._id, path, tar)

    async def download_dir(self, path: str) -> AsyncIterator[bytes]:
        return await self._api.read_tar(self._id, path)

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
        self.pty = _AsyncTerminals(api, self.id)

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

    async def hibernate(self) -> JsonDict:
        self.info = await self._api.hibernate(self.id)
        return self.info

    async def set_timeout(self, timeout_ms: int) -> None:
        self.info = await self._api.set_timeout(self.id, timeout_ms)

    async def snapshot(self) -> JsonDict:
        return await self._api.snapshot(self.id)

    async def fork(self, count: int) -> "list[AsyncSandbox]":
        return (await self._api.fork(self.id, count))[1]

    def get_host(self, port: int) -> str:
        """The URL of ``port`` in this sandbox through the API."""
        return self._api.port_url(self.id, port)

    async def fetch(self, port: int, path: str = "/", **options: Any) -> httpx.Response:
        """An HTTP request to the server on ``port`` in this sandbox: ``method``, ``content``, ``headers``."""
        return await self._api.fetch_port(self.id, port, path, **options)

    async def kill(self) -> None:
        await self._api.delete(self.id)


def kindling_stream_interrupted(path: str) -> Exception:
    from ._errors import ConnectionError as _ConnectionError

    return _ConnectionError("STREAM_INTERRUPTED", f"the event stream of {path} ended before the exit event")


class CommandHandle:
    """A background command (blocking client): ``wait()`` follows its output (kept bounded by the server) until it
    exits and returns the command with ``stdout``/``stderr``; ``kill()`` kills its process tree. Given callbacks at
    ``start``/``connect``, a thread of the handle's follows the output at once and ``wait()`` joins it."""

    def __init__(self, api: Sandboxes, sandbox_id: str, info: JsonDict, *, on_stdout: Callback = None, on_stderr: Callback = None) -> None:
        self._api, self.sandbox_id, self.info = api, sandbox_id, info
        self.id: str = str(info["id"])
        self.pid: Optional[int] = info.get("pid")
        self._lock = threading.Lock()
        self._result: Optional[JsonDict] = None
        self._failure: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        if on_stdout is not None or on_stderr is not None:
            self._thread = threading.Thread(target=self._background, args=(on_stdout, on_stderr), name=f"kindling-{self.id}", daemon=True)
            self._thread.start()

    def _background(self, on_stdout: Callback, on_stderr: Callback) -> None:
        try:
            self._result = self._follow(on_stdout, on_stderr)
        except BaseException as exc:  # surfaced by wait()
            self._failure = exc

    def _follow(self, on_stdout: Callback, on_stderr: Callback) -> JsonDict:
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

        info = self._api.command_logs(self.sandbox_id, self.id, on_stdout=stdout, on_stderr=stderr)
        self.info = info
        limit = info.get("outputBytes")
        return {**info, "stdout": _bounded(out, limit), "stderr": _bounded(err, limit)}

    def wait(self, *, on_stdout: Callback = None, on_stderr: Callback = None) -> JsonDict:
        """Returns once the command exited. When the handle already follows (callbacks given at start), joins that
        follower (a failed one is retried here, with these callbacks)."""
        with self._lock:
            thread = self._thread
            if thread is not None:
                thread.join()
                if self._result is not None:
                    return self._result
                self._thread = None
            return self._follow(on_stdout, on_stderr)

    def kill(self) -> JsonDict:
        self.info = self._api.kill_command(self.sandbox_id, self.id)
        return self.info

    def refresh(self) -> JsonDict:
        self.info = self._api.get_command(self.sandbox_id, self.id)
        return self.info


class AsyncCommandHandle:
    """A background command (asyncio client); see :class:`CommandHandle`. Given callbacks, a task of the handle's
    follows the output at once (created in the running loop)."""

    def __init__(self, api: AsyncSandboxes, sandbox_id: str, info: JsonDict, *, on_stdout: Callback = None, on_stderr: Callback = None) -> None:
        self._api, self.sandbox_id, self.info = api, sandbox_id, info
        self.id: str = str(info["id"])
        self.pid: Optional[int] = info.get("pid")
        self._task: Optional["asyncio.Task[JsonDict]"] = None
        if on_stdout is not None or on_stderr is not None:
            self._task = asyncio.get_running_loop().create_task(self._follow(on_stdout, on_stderr))
            # A failure surfaces in wait(); not "never retrieved" when nobody waits.
            self._task.add_done_callback(lambda task: None if task.cancelled() else task.exception())

    async def _follow(self, on_stdout: Callback, on_stderr: Callback) -> JsonDict:
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

        info = await self._api.command_logs(self.sandbox_id, self.id, on_stdout=stdout, on_stderr=stderr)
        self.info = info
        limit = info.get("outputBytes")
        return {**info, "stdout": _bounded(out, limit), "stderr": _bounded(err, limit)}

    async def wait(self, *, on_stdout: Callback = None, on_stderr: Callback = None) -> JsonDict:
        task = self._task
        if task is not None:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._task = None  # a failed follow is retried below
        return await self._follow(on_stdout, on_stderr)

    async def kill(self) -> JsonDict:
        self.info = await self._api.kill_command(self.sandbox_id, self.id)
        return self.info

    async def refresh(self) -> JsonDict:
        self.info = await self._api.get_command(self.sandbox_id, self.id)
        return self.info
