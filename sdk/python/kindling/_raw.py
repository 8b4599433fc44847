"""Requests whose body and answer both stream: raw executions (``POST /v1/execute`` with ``Content-Type:
application/octet-stream``: stdin from the body, stdout as the answer, the result in HTTP trailers) and invocations of
command functions with a streamed body (``POST /v1/functions/NAME/invoke``).

Two things rule out httpx here: it sends the whole request body before it reads the answer (a program like ``cat``
writes output while it still reads input, so such a client deadlocks once the buffers on the way are full), and it
drops HTTP trailers. So these requests are spoken with h11 (the HTTP/1.1 state machine httpx itself is built on), the
upload and the download running at the same time: over a plain socket with an upload thread (blocking client), or
with asyncio streams and an upload task (asyncio client, and the blocking client over TLS)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Union
from urllib.parse import urlsplit

import h11

from . import _core
from ._core import Config
from ._types import ExecutionResult, RawResult


@dataclass
class Answer:
    """What came back: status, headers, trailers (lower-case names), and the body unless it went to a sink."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    body: list[bytes] = field(default_factory=list)
    sent_to_sink: int = 0
    complete: bool = False

    @property
    def facts(self) -> dict[str, str]:
        """Headers and trailers together (trailers win)."""
        return {**self.headers, **self.trailers}


def _target(config: Config) -> tuple[str, int, str, bool, str]:
    parts = urlsplit(config.url)
    tls = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if tls else 80)
    return host, port, parts.netloc, tls, parts.path


def _request(config: Config, netloc: str, target: str, headers: dict[str, str], length: Optional[int]) -> h11.Request:
    merged = {**_core.base_headers(config), **headers, "host": netloc}
    items = list(merged.items())
    items.append(("content-length", str(length)) if length is not None else ("transfer-encoding", "chunked"))
    return h11.Request(method="POST", target=target, headers=items)


def _headers(raw: Any) -> dict[str, str]:
    return {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in raw}


def _write(sink: Any, chunk: bytes) -> Any:
    write = getattr(sink, "write", None)
    return write(chunk) if callable(write) else sink(chunk)


def _take(answer: Answer, event: Any, sink: Any) -> tuple[bool, Any]:
    """Records one h11 event of the answer in ``answer``: status and headers, body bytes (to ``sink`` unless the answer
    is an error, whose body is kept to be raised), trailers. Returns whether the answer is over, and what the sink's
    write returned (an awaitable for an async sink: the asyncio exchange awaits it)."""
    if isinstance(event, h11.Response):
        answer.status = event.status_code
        answer.headers = _headers(event.headers)
    elif isinstance(event, h11.Data):
        if sink is not None and answer.status < 400:
            outcome = _write(sink, bytes(event.data))
            answer.sent_to_sink += len(event.data)
            return False, outcome
        answer.body.append(bytes(event.data))
    elif isinstance(event, h11.EndOfMessage):
        answer.trailers = _headers(event.headers)
        answer.complete = True
        return True, None
    elif isinstance(event, h11.ConnectionClosed):
        return True, None
    return False, None


def _check_complete(answer: Answer, url: str, sink: Any) -> None:
    # An answer cut short (no end of message) carries no result: the server broke it (it had already said 200).
    if answer.status == 0 or (sink is not None and answer.status < 400 and not answer.complete):
        raise _core.connection_failed(url, ConnectionResetError("the answer ended before the result"), sent=True)
    if answer.status >= 400:
        raise _core.error_from_response(answer.status, answer.headers, b"".join(answer.body))


def exchange_sync(
    config: Config, path: str, headers: dict[str, str], body: _core.StdinSource, sink: Any, timeout: Optional[float]
) -> Answer:
    """Sends ``body`` while the answer's body goes to ``sink`` (or is kept, without one). Raises the typed error of
    an error answer."""
    host, port, netloc, tls, prefix = _target(config)
    if tls:
        # An SSL socket must not be read and written by two threads at once: over TLS the one-threaded asyncio
        # implementation runs on a private event loop (in a thread of its own, so that a running loop of the caller
        # does not matter). Sync sources and sinks work there as they are.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kindling-raw") as pool:
            def run() -> Answer:
                return asyncio.run(exchange_async(config, path, headers, body, sink, timeout))

            return pool.submit(run).result()
    url = config.url + path
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise _core.connection_failed(url, exc, sent=False) from exc
    conn = h11.Connection(h11.CLIENT)
    lock = threading.Lock()
    answer = Answer()
    done_reading = threading.Event()
    upload_error: list[BaseException] = []

    def send(event: Any) -> None:
        with lock:
            data = conn.send(event)
        if data:
            sock.sendall(data)

    def upload() -> None:
        try:
            for chunk in _core.iter_source(body):
                if done_reading.is_set():
                    return
                send(h11.Data(data=chunk))
            send(h11.EndOfMessage())
        except (OSError, h11.LocalProtocolError):
            return  # the server answered (and may have closed) before taking the whole body: its answer decides
        except BaseException as exc:  # the caller's iterator or file failed: stop the request
            upload_error.append(exc)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    try:
        send(_request(config, netloc, prefix + path, headers, _core.source_length(body)))
        threading.Thread(target=upload, name="kindling-upload", daemon=True).start()
        while True:
            with lock:
                event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(_core.CHUNK_BYTES)
                with lock:
                    conn.receive_data(data)
                continue
            over, _ = _take(answer, event, sink)
            if over:
                break
    except socket.timeout as exc:
        raise _core.timed_out(url, timeout, exc) from exc
    except (OSError, h11.RemoteProtocolError) as exc:
        if upload_error:
            raise upload_error[0] from exc
        raise _core.connection_failed(url, exc, sent=True) from exc
    finally:
        done_reading.set()
        try:
            sock.close()
        except OSError:
            pass
    if upload_error:
        raise upload_error[0]
    _check_complete(answer, url, sink)
    return answer


async def exchange_async(
    config: Config, path: str, headers: dict[str, str], body: Any, sink: Any, timeout: Optional[float]
) -> Answer:
    """The asyncio :func:`exchange_sync`; ``body`` may be an async iterator and ``sink`` an async callable.
    Cancelling it aborts the connection (the server then stops the work and frees its sandbox)."""
    host, port, netloc, tls, prefix = _target(config)
    url = config.url + path
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl.create_default_context() if tls else None, server_hostname=host if tls else None),
            timeout,
        )
    except (OSError, asyncio.TimeoutError) as exc:
        raise _core.connection_failed(url, exc, sent=False) from exc
    conn = h11.Connection(h11.CLIENT)
    answer = Answer()
    length = None if hasattr(body, "__aiter__") else _core.source_length(body)

    async def send(event: Any) -> None:
        data = conn.send(event)
        if data:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), timeout)

    async def upload() -> None:
        from ._async import _aiter_source

        try:
            async for chunk in _aiter_source(body):
                if answer.complete:
                    return
                await send(h11.Data(data=chunk))
            await send(h11.EndOfMessage())
        except (OSError, asyncio.TimeoutError, h11.LocalProtocolError):
            # The server answered (and may have closed) before taking the whole body: its answer decides. Anything
            # else (the caller's iterator failed) ends the task with that error, which the reader raises.
            return

    uploader: Optional[asyncio.Task[None]] = None
    read: Optional[asyncio.Future[bytes]] = None
    try:
        await send(_request(config, netloc, prefix + path, headers, length))
        uploader = asyncio.ensure_future(upload())
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                read = asyncio.ensure_future(reader.read(_core.CHUNK_BYTES))
                waiting: set[asyncio.Future[Any]] = {read} if uploader.done() else {read, uploader}
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    raise asyncio.TimeoutError()
                if read not in done:
                    failure = uploader.exception()
                    if failure is not None:
                        raise failure
                    data = await asyncio.wait_for(read, timeout)
                else:
                    data = read.result()
                read = None
                conn.receive_data(data)
                continue
            over, outcome = _take(answer, event, sink)
            if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future):
                await outcome
            if over:
                break
    except asyncio.TimeoutError as exc:
        raise _core.timed_out(url, timeout, exc) from exc
    except (OSError, h11.RemoteProtocolError) as exc:
        raise _core.connection_failed(url, exc, sent=True) from exc
    finally:
        if read is not None and not read.done():
            read.cancel()
        if uploader is not None and not uploader.done():
            uploader.cancel()
        # An abort (not a graceful close): a cancelled call must end the work on the server at once.
        writer.transport.abort()
    _check_complete(answer, url, sink)
    return answer


# --- raw executions -----------------------------------------------------------------------------------------------


def _raw_headers(spec_header: str, raw_output: bool) -> dict[str, str]:
    return {
        "content-type": "application/octet-stream",
        "accept": "application/octet-stream" if raw_output else "application/json",
        "x-kindling-spec": spec_header,
    }


def _raw_result(answer: Answer, url: str, raw_output: bool) -> Union[ExecutionResult, RawResult]:
    if not raw_output:
        return ExecutionResult.from_wire(_core.parse_json(b"".join(answer.body), answer.status, url))
    facts = answer.facts
    stderr = facts.get("x-kindling-stderr-base64", "")
    return RawResult(
        id=facts.get("x-kindling-execution-id", ""),
        exit_code=_core.header_int(facts, "x-kindling-exit-code"),
        duration_ms=_core.header_float(facts, "x-kindling-duration-ms"),
        timed_out=facts.get("x-kindling-timed-out") == "true",
        oom_killed=facts.get("x-kindling-oom-killed") == "true",
        truncated=facts.get("x-kindling-truncated") == "true",
        cold_start=facts.get("x-kindling-cold-start") == "true",
        executor=facts.get("x-kindling-executor", ""),
        stdout_bytes=answer.sent_to_sink,
        stderr=base64.b64decode(stderr) if stderr else b"",
    )


def execute_raw_sync(
    config: Config, spec_header: str, stdin: _core.StdinSource, stdout: Any, timeout: Optional[float]
) -> Union[ExecutionResult, RawResult]:
    answer = exchange_sync(config, "/v1/execute", _raw_headers(spec_header, stdout is not None), stdin, stdout, timeout)
    return _raw_result(answer, config.url + "/v1/execute", stdout is not None)


async def execute_raw_async(
    config: Config, spec_header: str, stdin: Any, stdout: Any, timeout: Optional[float]
) -> Union[ExecutionResult, RawResult]:
    answer = await exchange_async(config, "/v1/execute", _raw_headers(spec_header, stdout is not None), stdin, stdout, timeout)
    return _raw_result(answer, config.url + "/v1/execute", stdout is not None)


# --- invocations with a streamed body or answer ------------------------------------------------------------------

#: Bodies up to this size (bytes in memory) without an output sink go through the pooled client; larger ones stream.
STREAM_INVOKE_ABOVE_BYTES = 1024 * 1024


def wants_stream(body: Any, output: Any) -> bool:
    """Whether an invoke must stream both ways (see the module's docstring) rather than go through httpx."""
    if output is not None:
        return True
    if body is None or isinstance(body, (bytes, bytearray, memoryview, str)):
        return len(body or b"") > STREAM_INVOKE_ABOVE_BYTES
    return True


def invoke_facts(answer: Answer) -> tuple[dict[str, str], bytes]:
    """The facts (headers, with the trailers of a streamed output) and the kept body of an invoke answer."""
    return answer.facts, b"".join(answer.body)
