"""The asyncio client against the real server: the same surface, and cancellation freeing the sandbox."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kindling
from kindling import AsyncKindling

from conftest import Server


async def _until(condition: "object", timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def test_async_executions_and_streams(server: Server) -> None:
    async def main() -> None:
        async with AsyncKindling(server.url, server.admin_key) as k:
            result = await k.run("python", "print(6 * 7)")
            assert result.stdout == "42\n" and result.exit_code == 0
            seen: list[str] = []
            streamed = await k.execute({"runtime": "bash", "code": "echo a; echo b"}, on_stdout=seen.append)
            assert "".join(seen) == "a\nb\n" and streamed.stdout == "a\nb\n"
            events = [event async for event in k.stream({"image": "kindling/base", "command": ["sh", "-c", "echo x >&2"]})]
            assert [(e.type, e.data) for e in events[:-1]] == [("stderr", "x\n")]
            assert events[-1].type == "exit" and events[-1].result is not None
            out = io.BytesIO()
            raw = await k.execute_raw({"image": "kindling/base", "command": ["cat"]}, (bytes([i]) * 65536 for i in range(64)), stdout=out)
            assert isinstance(raw, kindling.RawResult) and raw.exit_code == 0 and len(out.getvalue()) == 64 * 65536
            as_json = await k.execute_raw({"image": "kindling/base", "command": ["wc", "-c"]}, b"abc")
            assert isinstance(as_json, kindling.ExecutionResult) and as_json.stdout.strip() == "3"
            with pytest.raises(kindling.ValidationError) as caught:
                await k.run("cobol", "x")
            assert caught.value.code == "UNKNOWN_RUNTIME" and caught.value.request_id

    asyncio.run(main())


def test_async_cancellation_frees_the_sandbox(server: Server) -> None:
    async def main() -> None:
        async with AsyncKindling(server.url, server.admin_key) as k:
            async def running(n: int) -> bool:
                return (await k.tenants.me()).running == n

            for call in (
                lambda: k.run("bash", "sleep 60"),
                lambda: k.execute({"runtime": "bash", "code": "sleep 60"}, on_stdout=print),
                lambda: k.execute_raw({"image": "kindling/base", "command": ["sleep", "60"]}, b"", stdout=io.BytesIO()),
            ):
                task = asyncio.ensure_future(call())
                await _until(lambda: running(1), 20, "the execution to start")
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await _until(lambda: running(0), 20, "the cancelled execution to be killed")

    asyncio.run(main())


def test_async_functions_invocations_tenants(server: Server, name: str) -> None:
    async def main() -> None:
        async with AsyncKindling(server.url, server.admin_key) as k:
            info = await k.functions.deploy(name, runtime="python", code="def h(b):\n    return b[::-1]\n", handler="h")
            assert info.version == 1
            assert (await k.functions.invoke(name, b"abc")).body == b"cba"
            assert name in [f.name for f in await k.functions.list()]
            assert (await k.functions.get(name)).style == "handler"
            submitted = await k.functions.invoke_async(name, b"xyz")
            done = await k.invocations.wait(submitted.invocation_id, timeout=60)
            assert done.status == "succeeded"
            assert (await k.invocations.output(submitted.invocation_id)).body == b"zyx"
            assert (await k.invocations.get(submitted.invocation_id)).id == submitted.invocation_id
            assert submitted.invocation_id in [i.id for i in await k.invocations.list(function=name)]
            logs = [e async for e in k.invocations.logs(submitted.invocation_id)]
            assert logs[-1].type == "end"
            tail = [e async for e in k.functions.logs(name, tail=10)]
            assert any(e.type == "end" for e in tail)
            await k.functions.delete(name)
            with pytest.raises(kindling.NotFoundError):
                await k.functions.get(name)
            made = await k.tenants.create(name)
            assert (await k.tenants.get(name)).name == name
            assert name in [t.name for t in await k.tenants.list()]
            assert (await k.tenants.update(name, {"maxPids": 32})).quotas == {"maxPids": 32}
            key = await k.keys.create(name)
            assert key.key.id in [x.id for x in await k.keys.list(name)]
            await k.keys.revoke(name, key.key.id)
            async with AsyncKindling(server.url, made.api_key) as tenant:
                assert (await tenant.tenants.me()).tenant.name == name
                assert (await tenant.usage.get()).totals["invocations"] == 0
                assert (await tenant.usage.invocations()) == []
                assert "buckets" in await tenant.usage.timeseries()
                assert (await tenant.usage.csv()).startswith("tenant,")
                assert "pools" in await tenant.pools()
            await k.tenants.delete(name)
            assert (await k.health())["status"] == "ok"
            assert (await k.ready())["status"] == "ready"
            assert (await k.cluster()) == {"mode": "single"}
            assert "paths" in await k.openapi()

    asyncio.run(main())


def test_async_interactive(server: Server) -> None:
    async def main() -> None:
        async with AsyncKindling(server.url, server.admin_key) as k:
            async with k.interactive({"image": "kindling/python", "command": ["python3", "-u", "-c", "print(input()[::-1])"]}) as session:
                await session.write("olleh\n")
                result = await session.wait()
            assert result.exit_code == 0 and result.stdout == "hello\n"

    asyncio.run(main())


def test_cli_runs_code_and_exits_with_its_status(server: Server) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {"KINDLING_URL": server.url, "KINDLING_API_KEY": server.admin_key, "PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "kindling", "run", "--runtime", "python", "-c", "print(1)"], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
    failed = subprocess.run([sys.executable, "-m", "kindling", "run", "--image", "kindling/base", "--", "sh", "-c", "echo e >&2; exit 5"], env=env, capture_output=True, text=True, timeout=60)
    assert (failed.returncode, failed.stderr) == (5, "e\n")
    bad = subprocess.run([sys.executable, "-m", "kindling", "run", "--runtime", "cobol", "-c", "x"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "UNKNOWN_RUNTIME" in bad.stderr


def test_async_raw_mode_backpressure_and_async_sources(server: Server) -> None:
    async def main() -> None:
        pulled = 0

        async def source() -> "object":
            nonlocal pulled
            block = b"q" * (1024 * 1024)
            for _ in range(1024):
                pulled += 1
                yield block

        received = bytearray()

        async def sink(chunk: bytes) -> None:
            received.extend(chunk)

        async with AsyncKindling(server.url, server.admin_key) as k:
            result = await k.execute_raw({"image": "kindling/base", "command": ["head", "-c", "1048576"]}, source(), stdout=sink)
        assert isinstance(result, kindling.RawResult) and result.exit_code == 0
        assert len(received) == 1024 * 1024
        assert pulled < 64, f"pulled {pulled} MiB of the source for a program that read 1 MiB"

    asyncio.run(main())


def test_async_raw_mode_errors(server: Server, name: str) -> None:
    async def main() -> None:
        async with AsyncKindling(server.url, server.admin_key) as admin:
            made = await admin.tenants.create(name, quotas={"maxPayloadBytes": 1024 * 1024})
            async with AsyncKindling(server.url, made.api_key) as k:
                with pytest.raises(kindling.ValidationError) as caught:
                    await k.execute_raw({"image": "kindling/base", "command": ["cat"]}, (b"y" * 65536 for _ in range(64)))
                assert caught.value.code == "PAYLOAD_TOO_LARGE"
                with pytest.raises(kindling.ValidationError):
                    await k.execute_raw({"image": "kindling/base", "command": ["cat"]}, b"x" * (2 * 1024 * 1024), stdout=io.BytesIO())

                async def broken() -> "object":
                    yield b"first"
                    raise RuntimeError("the source broke")

                with pytest.raises(RuntimeError, match="the source broke"):
                    await k.execute_raw({"image": "kindling/base", "command": ["cat"]}, broken(), stdout=io.BytesIO())
                await _until(lambda: _running(k, 0), 20, "the execution to be killed")
            await admin.tenants.delete(name)

    asyncio.run(main())


async def _running(k: AsyncKindling, n: int) -> bool:
    return (await k.tenants.me()).running == n


def test_async_invoke_streams_both_ways_at_once(server: Server, name: str) -> None:
    async def main() -> None:
        import hashlib

        block = bytes(range(256)) * 4096
        sent, received = hashlib.sha256(), hashlib.sha256()

        async def source() -> "object":
            for _ in range(32):
                sent.update(block)
                yield block

        async def sink(chunk: bytes) -> None:
            received.update(chunk)

        async with AsyncKindling(server.url, server.admin_key) as k:
            await k.functions.deploy(name, image="kindling/base", command=["sh", "-c", "cat; exit 3"])
            result = await k.functions.invoke(name, source(), output=sink, timeout=60)
            assert received.hexdigest() == sent.hexdigest()
            assert result.streamed is True and result.exit_code == 3
            await k.functions.delete(name)

    asyncio.run(main())
