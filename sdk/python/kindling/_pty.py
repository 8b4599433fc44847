"""Terminals in persistent sandboxes over ``GET /v1/sandboxes/ID/pty`` (WebSocket), as the TypeScript SDK's pty.ts:
the first text message is ``{cols, rows, command?, env?}``; binary messages are terminal bytes both ways;
``{"type": "resize", "cols", "rows"}`` resizes; the server answers ``{"type": "started"}``, and ends with
``{"type": "exit", "exitCode"}`` and close 1000, or ``{"type": "error", ...}`` and close 1008/1009/1011. Closing the
socket kills the terminal's process tree.

Uses the ``websockets`` package (Debian: python3-websockets; its asyncio client, which every version since 10 has).
The blocking :class:`Pty` runs that client on an event loop of its own, in a daemon thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from ._errors import ConnectionError as _ConnectionError
from ._errors import KindlingError, error_from_payload

#: Called with each piece of terminal output (raw bytes: escape sequences included).
OnData = Optional[Callable[[bytes], None]]
#: One message at most (the server's own cap on a message is 64 KiB of input; output comes in smaller pieces).
_MAX_MESSAGE_BYTES = 1024 * 1024


def _socket_url(base_url: str, sandbox_id: str) -> str:
    from urllib.parse import quote

    scheme, rest = base_url.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/v1/sandboxes/{quote(sandbox_id, safe='')}/pty"


class AsyncPty:
    """One terminal (asyncio). ``await AsyncPty.open(...)`` returns once it runs; ``wait()`` gives its exit code."""

    def __init__(self) -> None:
        self._socket: Any = None
        self._reader: Optional["asyncio.Task[None]"] = None
        self._started: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self._exit: "asyncio.Future[int]" = asyncio.get_running_loop().create_future()
        # Whoever never waits must not see "exception was never retrieved".
        self._started.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        self._exit.add_done_callback(lambda f: None if f.cancelled() else f.exception())

    @classmethod
    async def open(
        cls,
        base_url: str,
        headers: Mapping[str, str],
        sandbox_id: str,
        *,
        cols: int,
        rows: int,
        command: Optional[Sequence[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        on_data: OnData = None,
    ) -> "AsyncPty":
        try:
            import websockets.client
            import websockets.exceptions
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise KindlingError("WEBSOCKET_UNAVAILABLE", "pty.create() needs the websockets package (apt install python3-websockets, or pip install websockets)") from exc
        pty = cls()
        url = _socket_url(base_url, sandbox_id)
        extra = {key: value for key, value in headers.items() if key.lower() in ("authorization", "x-kindling-tenant", "user-agent")}
        try:
            pty._socket = await websockets.client.connect(url, extra_headers=extra, max_size=_MAX_MESSAGE_BYTES, compression=None)
        except websockets.exceptions.InvalidStatusCode as exc:
            # The refusal's body is not kept by the client: the status decides the class.
            raise error_from_payload(None, status=exc.status_code, fallback_message=f"the terminal of {sandbox_id} was refused (HTTP {exc.status_code})") from exc
        except (OSError, websockets.exceptions.WebSocketException) as exc:
            raise _ConnectionError("CONNECTION_FAILED", f"WebSocket to {url} failed: {exc}") from exc
        opening: dict[str, Any] = {"cols": cols, "rows": rows}
        if command is not None:
            opening["command"] = list(command)
        if env is not None:
            opening["env"] = dict(env)
        await pty._socket.send(json.dumps(opening))
        pty._reader = asyncio.get_running_loop().create_task(pty._read(on_data))
        try:
            await asyncio.shield(pty._started)
        except BaseException:
            # Refused after the upgrade (no python3 in the image, bad size): nothing is left running.
            await pty.kill()
            raise
        return pty

    async def _read(self, on_data: OnData) -> None:
        server_error: Optional[dict[str, Any]] = None
        try:
            async for message in self._socket:
                if isinstance(message, bytes):
                    if on_data is not None:
                        on_data(message)
                    continue
                try:
                    parsed = json.loads(message)
                except ValueError:
                    continue
                if not isinstance(parsed, dict):
                    continue
                kind = parsed.get("type")
                if kind == "started" and not self._started.done():
                    self._started.set_result(None)
                elif kind == "error":
                    server_error = parsed
                elif kind == "exit" and not self._exit.done():
                    if not self._started.done():
                        self._started.set_result(None)
                    self._exit.set_result(int(parsed.get("exitCode", -1)))
        except Exception as exc:  # the socket broke: reported below as the end
            if server_error is None:
                self._fail(_ConnectionError("CONNECTION_FAILED", f"the terminal's WebSocket failed: {exc}"))
        code = getattr(self._socket, "close_code", None)
        if server_error is not None:
            status = server_error.get("status")
            self._fail(error_from_payload(server_error, status=status if isinstance(status, int) else 500 if code == 1011 else 413 if code == 1009 else 400))
        self._fail(_ConnectionError("CONNECTION_CLOSED", f"the WebSocket closed ({code}) before the terminal ended"))

    def _fail(self, error: KindlingError) -> None:
        if not self._started.done():
            self._started.set_exception(error)
        if not self._exit.done():
            self._exit.set_exception(error)

    async def write(self, data: Union[bytes, str]) -> None:
        """Terminal input (a str as UTF-8; "\\x03" is Ctrl-C)."""
        await self._socket.send(data.encode("utf-8") if isinstance(data, str) else bytes(data))

    async def resize(self, cols: int, rows: int) -> None:
        """Changes the terminal's size (the foreground process gets SIGWINCH)."""
        await self._socket.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    async def wait(self) -> int:
        """The exit code of the terminal's command once it ended (raises a ``KindlingError`` when it could not run)."""
        return await asyncio.shield(self._exit)

    async def kill(self) -> None:
        """Closes the socket: the server kills the terminal's process tree."""
        if self._socket is not None:
            await self._socket.close(1000)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class Pty:
    """One terminal (blocking client): :class:`AsyncPty` on an event loop of its own, in a daemon thread. ``on_data``
    is called on that thread."""

    def __init__(self, base_url: str, headers: Mapping[str, str], sandbox_id: str, *, cols: int, rows: int, command: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None, on_data: OnData = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"kindling-pty-{sandbox_id}", daemon=True)
        self._thread.start()
        try:
            self._pty: AsyncPty = self._call(AsyncPty.open(base_url, headers, sandbox_id, cols=cols, rows=rows, command=command, env=env, on_data=on_data))
        except BaseException:
            self._stop()
            raise

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def write(self, data: Union[bytes, str]) -> None:
        self._call(self._pty.write(data))

    def resize(self, cols: int, rows: int) -> None:
        self._call(self._pty.resize(cols, rows))

    def wait(self) -> int:
        """The exit code of the terminal's command once it ended; the terminal's thread ends with it."""
        try:
            return int(self._call(self._pty.wait()))
        finally:
            self.kill()

    def kill(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._pty.kill())
        finally:
            self._stop()

    def _stop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
