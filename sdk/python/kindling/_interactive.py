"""Interactive executions over ``GET /v1/execute/ws``: stdin as you send it, output as it is produced.

The protocol: the spec as the first text message; binary messages are stdin; ``{"type":"stdin_end"}`` closes stdin.
The server sends ``started``, ``stdout``/``stderr`` messages, then ``exit`` (the result) and closes with 1000, or
``error`` and closes with 1008/1009 (the client's fault) or 1011 (the server's). Closing the socket kills the
execution. Uses the ``websockets`` package (Debian: python3-websockets); the blocking session runs the asyncio one on
a private event loop in a thread."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, AsyncIterator, Coroutine, Iterator, Optional, TypeVar, Union

from . import _core
from ._core import Config
from ._errors import ConnectionError, KindlingError, error_from_payload
from ._types import ExecutionResult, JsonDict, OutputEvent

T = TypeVar("T")


def _ws_url(config: Config) -> str:
    return ("wss" + config.url[5:] if config.url.startswith("https") else "ws" + config.url[4:]) + "/v1/execute/ws"


class AsyncInteractiveSession:
    """One interactive execution (asyncio). ``async with k.interactive(spec) as session:`` connects and waits until
    the program started (``session.started``: id, executor, coldStart); :meth:`write` sends stdin (awaiting it
    applies backpressure), :meth:`end` closes stdin, ``async for event in session`` yields output events and finally
    ``exit`` with the result; :meth:`wait` returns the result. Leaving the block closes the socket, which kills the
    execution if it still runs."""

    def __init__(self, config: Config, wire: JsonDict, timeout: Optional[float]) -> None:
        if "stdin" in wire or "stdinBase64" in wire:
            raise ValueError("an interactive execution's stdin is sent with write(), not as a spec field")
        self._config = config
        self._wire = wire
        self._timeout = timeout
        self._ws: Any = None
        self._error: Optional[JsonDict] = None
        #: What the server said when the program started: ``id``, ``executor``, ``coldStart``.
        self.started: JsonDict = {}
        #: The result, once the ``exit`` message arrived.
        self.result: Optional[ExecutionResult] = None

    async def __aenter__(self) -> "AsyncInteractiveSession":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> JsonDict:
        """Connects, sends the spec and waits for the ``started`` message."""
        try:
            import websockets.client
            import websockets.exceptions
        except ImportError as exc:  # pragma: no cover - depends on the host
            raise KindlingError("WEBSOCKET_UNAVAILABLE", "interactive() needs the websockets package (apt install python3-websockets)") from exc
        headers = {k: v for k, v in _core.base_headers(self._config).items() if k != "accept"}
        url = _ws_url(self._config)
        try:
            self._ws = await asyncio.wait_for(
                websockets.client.connect(url, extra_headers=headers, max_size=None, open_timeout=self._timeout), self._timeout
            )
        except websockets.exceptions.InvalidStatusCode as exc:
            raise error_from_payload(None, status=exc.status_code, request_id_header=exc.headers.get("x-request-id")) from exc
        except asyncio.TimeoutError as exc:
            raise _core.timed_out(url, self._timeout, exc) from exc
        except OSError as exc:
            raise _core.connection_failed(url, exc, sent=False) from exc
        await self._ws.send(json.dumps(self._wire))
        while not self.started:
            message = await self._next_message()
            if message is None:
                raise self._closed_error()
            if message.get("type") == "started":
                self.started = {k: v for k, v in message.items() if k != "type"}
        return self.started

    async def write(self, data: Union[bytes, str]) -> None:
        """Sends bytes (text as UTF-8) to the program's stdin; returns once they went out."""
        await self._socket().send(data.encode() if isinstance(data, str) else bytes(data))

    async def end(self) -> None:
        """Closes stdin (end of file for the program)."""
        await self._socket().send(json.dumps({"type": "stdin_end"}))

    def __aiter__(self) -> AsyncIterator[OutputEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[OutputEvent]:
        while self.result is None:
            message = await self._next_message()
            if message is None:
                raise self._closed_error()
            kind = message.get("type")
            if kind in ("stdout", "stderr"):
                yield OutputEvent(kind, str(message.get("data", "")))
            elif kind == "exit":
                data = {k: v for k, v in message.items() if k != "type"}
                self.result = ExecutionResult.from_wire(data)
                yield OutputEvent("exit", json.dumps(data), self.result)

    async def wait(self) -> ExecutionResult:
        """Reads (and drops) the remaining output until the program exits; returns its result."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def close(self) -> None:
        """Closes the socket: the server kills the execution if it still runs."""
        if self._ws is not None:
            await self._ws.close()

    def _socket(self) -> Any:
        if self._ws is None:
            raise ConnectionError("CONNECTION_CLOSED", "the interactive session is not started (use it in an `async with`)")
        return self._ws

    async def _next_message(self) -> Optional[JsonDict]:
        import websockets.exceptions

        while True:
            try:
                raw = await self._socket().recv()
            except websockets.exceptions.ConnectionClosed:
                return None
            if isinstance(raw, bytes):
                continue
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if message.get("type") == "error":
                # The close code that follows says whose fault it was.
                self._error = message
                continue
            return message

    def _closed_error(self) -> KindlingError:
        code = getattr(self._ws, "close_code", None)
        if self._error is not None:
            return error_from_payload(self._error, status=500 if code == 1011 else 413 if code == 1009 else 400)
        return ConnectionError("CONNECTION_CLOSED", f"the WebSocket closed ({code}) before the execution ended")


class InteractiveSession:
    """The blocking :class:`AsyncInteractiveSession`: ``with k.interactive(spec) as session:``, ``session.write()``,
    ``session.end()``, ``for event in session``, ``session.wait()``."""

    def __init__(self, config: Config, wire: JsonDict, timeout: Optional[float]) -> None:
        self._inner = AsyncInteractiveSession(config, wire, timeout)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kindling-interactive", daemon=True)
        self._thread.start()
        self._iterator: Optional[AsyncIterator[OutputEvent]] = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def started(self) -> JsonDict:
        return self._inner.started

    @property
    def result(self) -> Optional[ExecutionResult]:
        return self._inner.result

    def __enter__(self) -> "InteractiveSession":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> JsonDict:
        """Connects, sends the spec and waits for the ``started`` message."""
        return self._call(self._inner.start())

    def write(self, data: Union[bytes, str]) -> None:
        """Sends bytes (text as UTF-8) to stdin."""
        self._call(self._inner.write(data))

    def end(self) -> None:
        """Closes stdin."""
        self._call(self._inner.end())

    def __iter__(self) -> Iterator[OutputEvent]:
        if self._iterator is None:
            self._iterator = self._inner.__aiter__()
        while True:
            try:
                yield self._call(self._next())
            except StopAsyncIteration:
                return

    async def _next(self) -> OutputEvent:
        assert self._iterator is not None
        return await self._iterator.__anext__()

    def wait(self) -> ExecutionResult:
        """Reads the remaining output until the program exits; returns its result."""
        for _ in self:
            pass
        assert self._inner.result is not None
        return self._inner.result

    def close(self) -> None:
        """Closes the socket (kills the execution if it still runs) and the private event loop."""
        if self._loop.is_closed():
            return
        try:
            self._call(self._inner.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
