"""Raw executions (``POST /v1/execute`` with ``Content-Type: application/octet-stream``): stdin streams from the
request body, stdout streams back as the response body, the result follows in HTTP trailers.

httpx (through httpcore) drops HTTP trailers, so this one request is spoken with h11 (the HTTP/1.1 state machine
httpx itself is built on) over a plain socket. The upload and the download run at the same time: a program like
``cat`` writes output while it still reads input, and a client that only uploaded would deadlock against it."""

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
from ._errors import KindlingError
from ._types import ExecutionResult, RawResult


@dataclass
class _Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    body: list[bytes] = field(default_factory=list)
    sent_to_sink: int = 0
    complete: bool = False


def _target(config: Config) -> tuple[str, int, str, bool, str]:
    parts = urlsplit(config.url)
    tls = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if tls else 80)
    return host, port, parts.netloc, tls, parts.path + "/v1/execute"


def _request(config: Config, netloc: str, path: str, spec_header: str, length: Optional[int], raw_output: bool) -> h11.Request:
    headers = [(k, v) for k, v in _core.base_headers(config).items() if k != "accept"]
    headers += [
        ("host", netloc),
        ("content-type", "application/octet-stream"),
        ("accept", "application/octet-stream" if raw_output else "application/json"),
        ("x-kindling-spec", spec_header),
    ]
    headers.append(("content-length", str(length)) if length is not None else ("transfer-encoding", "chunked"))
    return h11.Request(method="POST", target=path, headers=headers)


def _finish(answer: _Answer, url: str, raw_output: bool) -> Union[ExecutionResult, RawResult]:
    if answer.status >= 400:
        raise _core.error_from_response(answer.status, answer.headers, b"".join(answer.body))
    if not raw_output:
        return ExecutionResult.from_wire(_core.parse_json(b"".join(answer.body), answer.status, url))
    facts = {**answer.headers, **answer.trailers}
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


def _headers(raw: Any) -> dict[str, str]:
    return {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in raw}


def execute_raw_sync(
    config: Config, spec_header: str, stdin: _core.StdinSource, stdout: Any, timeout: Optional[float]
) -> Union[ExecutionResult, RawResult]:
    host, port, netloc, tls, path = _target(config)
    if tls:
        # An SSL socket must not be read and written by two threads at once: over TLS the one-threaded asyncio
        # implementation runs on a private event loop (in a thread of its own, so that a running loop of the caller
        # does not matter). Sync sources and sinks work there as they are.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kindling-raw") as pool:
            def run() -> Union[ExecutionResult, RawResult]:
                return asyncio.run(execute_raw_async(config, spec_header, stdin, stdout, timeout))

            return pool.submit(run).result()
    url = config.url + "/v1/execute"
    raw_output = stdout is not None
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout as exc:
        raise _core.connection_failed(url, exc, sent=False) from exc
    except OSError as exc:
        raise _core.connection_failed(url, exc, sent=False) from exc
    conn = h11.Connection(h11.CLIENT)
    lock = threading.Lock()
    answer = _Answer()
    upload_error: list[BaseException] = []

    def send(event: Any) -> None:
        with lock:
            data = conn.send(event)
        if data:
            sock.sendall(data)

    def upload() -> None:
        try:
            for chunk in _core.iter_source(stdin):
                if answer.complete:
                    return
                send(h11.Data(data=chunk))
            send(h11.EndOfMessage())
        except (OSError, h11.LocalProtocolError) as exc:
            # The server answered (and may have closed) before taking all of stdin: its answer decides.
            if not answer.complete:
                upload_error.append(exc)
        except BaseException as exc:  # the caller's iterator or file failed: stop the execution
            upload_error.append(exc)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    try:
        send(_request(config, netloc, path, spec_header, _core.source_length(stdin), raw_output))
        uploader = threading.Thread(target=upload, name="kindling-raw-upload", daemon=True)
        uploader.start()
        while True:
            with lock:
                event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(_core.CHUNK_BYTES)
                with lock:
                    conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                answer.status = event.status_code
                answer.headers = _headers(event.headers)
            elif isinstance(event, h11.Data):
                if raw_output and answer.status < 400:
                    _write(stdout, bytes(event.data))
                    answer.sent_to_sink += len(event.data)
                else:
                    answer.body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                answer.trailers = _headers(event.headers)
                answer.complete = True
                break
            elif isinstance(event, h11.ConnectionClosed):
                break
    except socket.timeout as exc:
        raise _core.timed_out(url, timeout, exc) from exc
    except (OSError, h11.RemoteProtocolError) as exc:
        if upload_error and not isinstance(upload_error[0], (OSError, h11.LocalProtocolError)):
            raise upload_error[0] from exc
        raise _core.connection_failed(url, exc, sent=True) from exc
    finally:
        answer.complete = True
        try:
            sock.close()
        except OSError:
            pass
    if upload_error and not isinstance(upload_error[0], (OSError, h11.LocalProtocolError)):
        raise upload_error[0]
    if answer.status == 0 or (raw_output and answer.status < 400 and not _ended(answer)):
        raise _core.connection_failed(url, ConnectionResetError("the answer ended before the result"), sent=True)
    return _finish(answer, url, raw_output)


def _ended(answer: _Answer) -> bool:
    return answer.complete and bool(answer.trailers)


def _write(sink: Any, chunk: bytes) -> None:
    write = getattr(sink, "write", None)
    if callable(write):
        write(chunk)
    else:
        sink(chunk)


async def execute_raw_async(
    config: Config, spec_header: str, stdin: Any, stdout: Any, timeout: Optional[float]
) -> Union[ExecutionResult, RawResult]:
    host, port, netloc, tls, path = _target(config)
    url = config.url + "/v1/execute"
    raw_output = stdout is not None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl.create_default_context() if tls else None), timeout
        )
    except asyncio.TimeoutError as exc:
        raise _core.connection_failed(url, exc, sent=False) from exc
    except OSError as exc:
        raise _core.connection_failed(url, exc, sent=False) from exc
    conn = h11.Connection(h11.CLIENT)
    answer = _Answer()
    length = None if hasattr(stdin, "__aiter__") else _core.source_length(stdin)

    async def send(event: Any) -> None:
        data = conn.send(event)
        if data:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), timeout)

    async def upload() -> None:
        from ._async import _aiter_source

        try:
            async for chunk in _aiter_source(stdin):
                if answer.complete:
                    return
                await send(h11.Data(data=chunk))
            await send(h11.EndOfMessage())
        except (OSError, asyncio.TimeoutError, h11.LocalProtocolError):
            # The server answered (and may have closed) before taking all of stdin: its answer decides. Anything
            # else (the caller's iterator failed) ends the task with that error, which the reader raises.
            return

    uploader: Optional[asyncio.Task[None]] = None
    read: Optional[asyncio.Future[bytes]] = None
    try:
        await send(_request(config, netloc, path, spec_header, length, raw_output))
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
            if isinstance(event, h11.Response):
                answer.status = event.status_code
                answer.headers = _headers(event.headers)
            elif isinstance(event, h11.Data):
                if raw_output and answer.status < 400:
                    outcome = _write_any(stdout, bytes(event.data))
                    if outcome is not None:
                        await outcome
                    answer.sent_to_sink += len(event.data)
                else:
                    answer.body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                answer.trailers = _headers(event.headers)
                answer.complete = True
                break
            elif isinstance(event, h11.ConnectionClosed):
                break
    except asyncio.TimeoutError as exc:
        raise _core.timed_out(url, timeout, exc) from exc
    except (OSError, h11.RemoteProtocolError) as exc:
        raise _core.connection_failed(url, exc, sent=True) from exc
    finally:
        answer.complete = True
        if read is not None and not read.done():
            read.cancel()
        if uploader is not None and not uploader.done():
            uploader.cancel()
        # An abort (not a graceful close): a cancelled call must end the execution on the server at once.
        writer.transport.abort()
    if answer.status == 0 or (raw_output and answer.status < 400 and not _ended(answer)):
        raise _core.connection_failed(url, ConnectionResetError("the answer ended before the result"), sent=True)
    return _finish(answer, url, raw_output)


def _write_any(sink: Any, chunk: bytes) -> Any:
    write = getattr(sink, "write", None)
    outcome = write(chunk) if callable(write) else sink(chunk)
    return outcome if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future) else None


__all__ = ["execute_raw_sync", "execute_raw_async", "KindlingError"]
