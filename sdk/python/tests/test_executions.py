"""Executions through the blocking client against the real server: run, execute, stream, raw mode, cancellation."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import tracemalloc
from typing import Iterator

import pytest

import kindling
from kindling import Kindling

from conftest import Server, wait_until


def test_run_returns_the_result(k: Kindling) -> None:
    result = k.run("python", "import sys; print(6 * 7); print('warn', file=sys.stderr)")
    assert result.stdout == "42\n"
    assert result.stderr == "warn\n"
    assert result.exit_code == 0
    assert result.timed_out is False and result.oom_killed is False
    assert result.duration_ms > 0
    assert result.executor == "sandbox"
    assert result.id.startswith("ex_")


def test_a_failing_program_is_a_result_not_an_error(k: Kindling) -> None:
    result = k.run("bash", "echo no >&2; exit 3")
    assert result.exit_code == 3
    assert result.stderr == "no\n"


def test_timeout_in_seconds_kills_the_program(k: Kindling) -> None:
    result = k.run("bash", "sleep 30", timeout=1)
    assert result.timed_out is True
    assert result.exit_code != 0
    assert result.duration_ms < 15_000


def test_execute_takes_snake_case_fields_and_bytes_stdin(k: Kindling) -> None:
    result = k.execute({
        "image": "kindling/base",
        "command": ["sh", "-c", 'printf "%s:" "$GREETING"; od -An -tx1 | tr -d " \\n"'],
        "stdin": b"\x00\xff\x10",
        "env": {"GREETING": "hi"},
        "timeout_ms": 10_000,
        "memory_mb": 128,
    })
    assert result.stdout == "hi:00ff10"


def test_base64_output_is_byte_exact(k: Kindling) -> None:
    result = k.run_command("kindling/base", ["sh", "-c", "printf '\\377\\000\\001'"], output_encoding="base64")
    assert result.output_encoding == "base64"
    assert result.stdout_bytes == b"\xff\x00\x01"


def test_stream_yields_output_then_exit(k: Kindling) -> None:
    events = list(k.stream({"image": "kindling/base", "command": ["sh", "-c", "echo a; echo b >&2; echo c"]}))
    assert events[-1].type == "exit"
    assert events[-1].result is not None and events[-1].result.exit_code == 0
    assert "".join(e.data for e in events if e.type == "stdout") == "a\nc\n"
    assert "".join(e.data for e in events if e.type == "stderr") == "b\n"
    assert all(e.type != "exit" for e in events[:-1])


def test_execute_with_callbacks_streams(k: Kindling) -> None:
    seen: list[str] = []
    result = k.execute({"runtime": "bash", "code": "for i in 1 2 3; do echo $i; done"}, on_stdout=seen.append)
    assert "".join(seen) == "1\n2\n3\n"
    assert result.stdout == "1\n2\n3\n"


def test_leaving_a_stream_early_kills_the_execution(k: Kindling) -> None:
    stream = k.stream({"runtime": "bash", "code": "echo started; sleep 60"})
    with stream:
        for event in stream:
            assert event.type == "stdout" and event.data == "started\n"
            assert k.tenants.me().running == 1
            break
    # The server sees the connection go, kills the program and frees its slot.
    wait_until(lambda: k.tenants.me().running == 0, 20, "the execution to be killed")
    assert stream.result is None


def test_raw_mode_streams_stdin_and_returns_the_json_result(k: Kindling) -> None:
    result = k.execute_raw({"image": "kindling/base", "command": ["wc", "-c"]}, b"x" * 3_000_000)
    assert isinstance(result, kindling.ExecutionResult)
    assert result.stdout.strip() == "3000000"


def test_raw_mode_from_a_file_to_a_file(k: Kindling) -> None:
    payload = os.urandom(5 * 1024 * 1024 + 17)
    with tempfile.TemporaryFile() as source, tempfile.TemporaryFile() as target:
        source.write(payload)
        source.seek(0)
        result = k.execute_raw({"image": "kindling/base", "command": ["cat"]}, source, stdout=target)
        assert isinstance(result, kindling.RawResult)
        assert result.exit_code == 0
        assert result.stdout_bytes == len(payload)
        target.seek(0)
        assert target.read() == payload


def test_raw_mode_reports_exit_code_and_stderr_from_trailers(k: Kindling) -> None:
    out = io.BytesIO()
    result = k.execute_raw({"image": "kindling/base", "command": ["sh", "-c", "cat; echo oops >&2; exit 7"]}, b"abc", stdout=out)
    assert isinstance(result, kindling.RawResult)
    assert out.getvalue() == b"abc"
    assert result.exit_code == 7
    assert result.stderr == b"oops\n"


def test_raw_mode_memory_stays_flat_with_an_iterator(k: Kindling) -> None:
    """64 MiB through `cat` from a generator to a hashing sink: the SDK never holds more than a few chunks."""
    total = 64 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    sent = hashlib.sha256()

    def source() -> Iterator[bytes]:
        for _ in range(total // len(chunk)):
            sent.update(chunk)
            yield chunk

    received = hashlib.sha256()
    tracemalloc.start()
    try:
        result = k.execute_raw({"image": "kindling/base", "command": ["cat"], "timeout": 120}, source(), stdout=received.update)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, kindling.RawResult)
    assert result.exit_code == 0 and result.stdout_bytes == total
    assert received.hexdigest() == sent.hexdigest()
    assert peak < 16 * 1024 * 1024, f"peak Python allocations {peak / 2**20:.1f} MiB for a 64 MiB stream"


def test_raw_mode_a_failing_source_stops_the_execution(k: Kindling) -> None:
    def source() -> Iterator[bytes]:
        yield b"first"
        wait_until(lambda: k.tenants.me().running == 1, 20, "the execution to start")
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        k.execute_raw({"image": "kindling/base", "command": ["cat"]}, source(), stdout=io.BytesIO())
    wait_until(lambda: k.tenants.me().running == 0, 20, "the execution to be killed")


def test_raw_mode_rejects_a_bad_spec_with_a_typed_error(k: Kindling) -> None:
    with pytest.raises(kindling.ValidationError) as caught:
        k.execute_raw({"image": "kindling/base", "command": ["cat"], "memoryMb": -5}, b"x", stdout=io.BytesIO())
    assert caught.value.status == 400
    assert caught.value.request_id


def test_timeouts_of_the_client_are_seconds(server: Server) -> None:
    with Kindling(server.url, server.admin_key, timeout=0.5, max_retries=0) as slow:
        with pytest.raises(kindling.TimeoutError) as caught:
            # No timeoutMs in the spec: the client's 0.5 s holds (a spec's limit would raise it to limit + 30 s).
            slow.run("bash", "sleep 5")
        assert caught.value.code == "TIMEOUT"
    with Kindling(server.url, server.admin_key) as k:
        wait_until(lambda: k.tenants.me().running == 0, 20, "the abandoned execution to be killed")


def test_interactive_session(k: Kindling) -> None:
    with k.interactive({"image": "kindling/base", "command": ["sh", "-c", "read a; echo got:$a; cat"]}) as session:
        assert session.started["id"].startswith("ex_")
        session.write("one\n")
        events = iter(session)
        first = next(events)
        assert first.type == "stdout" and first.data == "got:one\n"
        session.write(b"two")
        session.end()
        rest = list(events)
    assert "".join(e.data for e in rest if e.type == "stdout") == "two"
    assert rest[-1].type == "exit" and rest[-1].result is not None and rest[-1].result.exit_code == 0


def test_closing_an_interactive_session_kills_it(k: Kindling) -> None:
    with k.interactive({"image": "kindling/base", "command": ["sleep", "60"]}):
        wait_until(lambda: k.tenants.me().running == 1, 20, "the session to run")
    wait_until(lambda: k.tenants.me().running == 0, 20, "the session to be killed")


def test_interactive_rejects_a_bad_spec(k: Kindling) -> None:
    with pytest.raises(kindling.ValidationError) as caught:
        with k.interactive({"image": "kindling/nope", "command": ["true"]}):
            pass
    assert caught.value.code == "UNKNOWN_IMAGE"


def test_many_threads_share_one_client(k: Kindling) -> None:
    results: list[str] = []
    threads = [threading.Thread(target=lambda i=i: results.append(k.run("bash", f"echo {i}").stdout)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["0\n", "1\n", "2\n", "3\n"]


def test_raw_mode_pulls_stdin_only_as_fast_as_the_program_reads_it(k: Kindling) -> None:
    """Backpressure on the upload: `head` reads 1 MiB of a 1 GiB source and exits; the SDK must not have pulled (let
    alone held) the rest of the iterator."""
    pulled = 0

    def source() -> Iterator[bytes]:
        nonlocal pulled
        block = b"q" * (1024 * 1024)
        for _ in range(1024):
            pulled += 1
            yield block

    out = io.BytesIO()
    result = k.execute_raw({"image": "kindling/base", "command": ["head", "-c", "1048576"]}, source(), stdout=out)
    assert isinstance(result, kindling.RawResult) and result.exit_code == 0
    assert len(out.getvalue()) == 1024 * 1024
    assert pulled < 64, f"pulled {pulled} MiB of the source for a program that read 1 MiB"


def test_raw_mode_too_large_is_a_typed_error_whether_the_length_is_known_or_not(k: Kindling, server: Server, name: str) -> None:
    made = k.tenants.create(name, quotas={"maxPayloadBytes": 1024 * 1024})
    big = b"x" * (2 * 1024 * 1024)
    with Kindling(server.url, made.api_key) as tenant:
        # A declared length over the limit: 413 before anything runs, in both answer modes.
        for sink in (None, io.BytesIO()):
            with pytest.raises(kindling.ValidationError) as caught:
                tenant.execute_raw({"image": "kindling/base", "command": ["cat"]}, big, stdout=sink)
            assert caught.value.code == "PAYLOAD_TOO_LARGE" and caught.value.status == 413
        # No declared length (an iterator): counted while it streams. The JSON answer is still a 413 ...
        with pytest.raises(kindling.ValidationError) as caught:
            tenant.execute_raw({"image": "kindling/base", "command": ["cat"]}, (b"y" * 65536 for _ in range(64)))
        assert caught.value.code == "PAYLOAD_TOO_LARGE"
        # ... but once raw output streams the server's headers said 200: it breaks the answer, the SDK says so.
        with pytest.raises(kindling.ConnectionError) as broken:
            tenant.execute_raw({"image": "kindling/base", "command": ["cat"]}, (b"y" * 65536 for _ in range(64)), stdout=io.BytesIO())
        assert broken.value.code == "STREAM_INTERRUPTED"
    k.tenants.delete(name)
