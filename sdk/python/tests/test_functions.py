"""Functions and invocations through the blocking client against the real server."""

from __future__ import annotations

import io
import threading
import time

import pytest

import kindling
from kindling import Kindling, LogEvent

from conftest import Server, wait_until

HANDLER = "def handler(body):\n    print('handling', len(body))\n    return b'echo:' + body\n"


def test_deploy_invoke_list_get_delete(k: Kindling, name: str) -> None:
    info = k.functions.deploy(name, runtime="python", code=HANDLER, handler="handler")
    assert info.name == name and info.version == 1 and info.style == "handler"
    first = k.functions.invoke(name, b"\x00ping")
    assert first.body == b"echo:\x00ping"
    assert first.exit_code == 0
    assert isinstance(first.cold_start, bool)
    assert first.version == 1 and first.invocation_id
    assert first.node is None  # a server on its own ran it (cluster mode names the worker)
    warm = k.functions.invoke(name, "pong")
    assert warm.text == "echo:pong" and warm.cold_start is False
    assert name in [f.name for f in k.functions.list()]
    second = k.functions.deploy(name, runtime="python", code=HANDLER.replace("echo:", "v2:"), handler="handler")
    assert second.version == 2 and k.functions.get(name).version == 2
    versions = k.functions.versions(name)
    assert [(v.version, v.latest, v.style) for v in versions] == [(1, False, "handler"), (2, True, "handler")]
    assert "v2:" in str(versions[1].raw["code"]) and "v2:" not in str(versions[0].raw["code"])
    assert k.functions.invoke(name, b"x").body == b"v2:x"
    k.functions.delete(name)
    with pytest.raises(kindling.NotFoundError) as caught:
        k.functions.get(name)
    assert caught.value.code == "FUNCTION_NOT_FOUND" and caught.value.request_id


def test_deploy_from_a_file(k: Kindling, name: str, tmp_path: "object") -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "handler.py"
    path.write_text(HANDLER)
    k.functions.deploy(name, runtime="python", file=str(path), handler="handler")
    assert k.functions.invoke(name, b"f").body == b"echo:f"


def test_a_raising_handler_is_a_result(k: Kindling, name: str) -> None:
    k.functions.deploy(name, runtime="python", code="def handler(body):\n    raise ValueError('bad input')\n", handler="handler")
    result = k.functions.invoke(name, b"")
    assert result.exit_code == 1
    assert b"bad input" in result.body


def test_command_function_streams_a_file_in_and_a_large_output_out(k: Kindling, name: str) -> None:
    k.functions.deploy(name, image="kindling/base", command=["sh", "-c", "cat > /tmp/in; cat /tmp/in /tmp/in; exit 4"])
    payload = bytes(range(256)) * 4096  # 1 MiB: doubled, the output is streamed (over 1 MiB)
    out = io.BytesIO()
    result = k.functions.invoke(name, io.BytesIO(payload), output=out)
    assert out.getvalue() == payload * 2
    assert result.body == b""
    assert result.streamed is True
    assert result.exit_code == 4  # from the HTTP trailers


def test_invoke_async_wait_output_and_idempotency(k: Kindling, name: str) -> None:
    k.functions.deploy(name, runtime="python", code=HANDLER, handler="handler")
    submitted = k.functions.invoke_async(name, b"later", idempotency_key=f"key-{name}")
    assert submitted.created is True
    again = k.functions.invoke_async(name, b"later", idempotency_key=f"key-{name}")
    assert again.invocation_id == submitted.invocation_id and again.created is False
    done = k.invocations.wait(submitted.invocation_id, timeout=60)
    assert done.status == "succeeded" and done.exit_code == 0 and done.function == name
    output = k.invocations.output(submitted.invocation_id)
    assert output.body == b"echo:later"
    assert submitted.invocation_id in [i.id for i in k.invocations.list(function=name)]
    assert k.invocations.get(submitted.invocation_id).mode == "async"
    events = list(k.invocations.logs(submitted.invocation_id))
    assert events[-1].type == "end" and events[-1].status == "succeeded"
    assert any(e.type in ("stdout", "stderr") and "handling 5" in (e.text or "") for e in events), events


def test_wait_times_out_and_output_conflicts_while_running(k: Kindling, server: Server, name: str) -> None:
    # A tenant of its own: the invocation it leaves running must not count in other tests' running executions.
    made = k.tenants.create(name)
    with Kindling(server.url, made.api_key) as tenant:
        tenant.functions.deploy(name, runtime="python", code="import time\ndef handler(body):\n    time.sleep(10)\n    return b''\n", handler="handler")
        submitted = tenant.functions.invoke_async(name)
        with pytest.raises(kindling.TimeoutError):
            tenant.invocations.wait(submitted.invocation_id, timeout=0.5)
        with pytest.raises(kindling.ConflictError) as caught:
            tenant.invocations.output(submitted.invocation_id)
        assert caught.value.code == "INVOCATION_NOT_FINISHED"
    k.tenants.delete(name)


def test_function_logs_tail_and_follow(k: Kindling, name: str) -> None:
    k.functions.deploy(name, runtime="python", code=HANDLER, handler="handler")
    k.functions.invoke(name, b"abc")
    wait_until(lambda: any(e.type == "end" for e in k.functions.logs(name, tail=5)), 20, "the invocation in the logs")
    seen: list[LogEvent] = []
    stop = threading.Event()

    def invoke_until_seen() -> None:
        # Invoke until the follower saw one live: no guessing when its subscription is in place.
        while not stop.is_set():
            k.functions.invoke(name, b"live")
            time.sleep(0.2)

    stream = k.functions.logs(name, follow=True, tail=0)
    worker = threading.Thread(target=invoke_until_seen)
    worker.start()
    try:
        for event in stream:
            seen.append(event)
            if event.type == "end":
                break
    finally:
        stop.set()
        worker.join()
    assert seen[0].type == "start"
    assert seen[-1].type == "end" and seen[-1].invocation_id == seen[0].invocation_id


def test_unknown_function_is_not_found(k: Kindling, name: str) -> None:
    with pytest.raises(kindling.NotFoundError):
        k.functions.invoke(name, b"x")


def test_invoke_streams_both_ways_at_once(k: Kindling, name: str) -> None:
    """A `cat` function with 64 MiB in and out: the upload and the download must run together (a client that sent
    the whole body before reading would deadlock once the buffers on the way are full)."""
    import hashlib

    k.functions.deploy(name, image="kindling/base", command=["cat"], timeout_ms=120_000)
    block = bytes(range(256)) * 4096
    sent, received = hashlib.sha256(), hashlib.sha256()

    def source() -> "object":
        for _ in range(64):
            sent.update(block)
            yield block

    result = k.functions.invoke(name, source(), output=received.update, timeout=60)
    assert received.hexdigest() == sent.hexdigest()
    assert result.streamed is True and result.exit_code == 0 and result.duration_ms is not None
