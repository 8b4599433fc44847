"""Persistent sandboxes through both clients against the real server (sandbox executor)."""

from __future__ import annotations

import asyncio

import pytest

import kindling
from kindling import AsyncKindling, Kindling

from conftest import Server


def test_sandbox_commands_files_pause_resume(k: Kindling) -> None:
    sb = k.sandboxes.create(runtime="bash", limits={"diskMb": 8}, metadata={"via": "python"})
    try:
        assert sb.state == "running" and sb.info["metadata"] == {"via": "python"}
        started = sb.commands.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"])
        pid = started.stdout.strip()
        assert sb.commands.run(["sh", "-c", f"test -d /proc/{pid} && echo alive"]).stdout == "alive\n"
        assert sb.files.write("notes/a.txt", "hello")["size"] == 5
        assert sb.files.read("/work/notes/a.txt") == "hello"
        assert sb.commands.run(["cat", "notes/a.txt"]).stdout == "hello"
        assert [(e["name"], e["type"], e["size"]) for e in sb.files.list("notes")] == [("a.txt", "file", 5)]
        timed = sb.commands.run(["sleep", "30"], timeout_ms=300)
        assert timed.timed_out and timed.exit_code == 137
        with pytest.raises(kindling.ValidationError):
            sb.files.read("../etc/passwd")
        with pytest.raises(kindling.NotFoundError):
            sb.files.read("missing")
        sb.pause()
        assert sb.state == "paused"
        with pytest.raises(kindling.ConflictError) as refused:
            sb.commands.run(["true"], auto_resume=False)
        assert refused.value.code == "SANDBOX_PAUSED"
        sb.resume()
        assert sb.commands.run(["sh", "-c", f"test -d /proc/{pid} && echo still"]).stdout == "still\n"
        sb.files.remove("notes")
        with pytest.raises(kindling.NotFoundError):
            sb.files.list("notes")
        assert any(item["id"] == sb.id for item in k.sandboxes.list(state="running"))
    finally:
        sb.kill()
    with pytest.raises(kindling.NotFoundError):
        k.sandboxes.get(sb.id)


def test_async_sandbox(server: Server) -> None:
    async def main() -> None:
        async with AsyncKindling(server.url, server.admin_key) as client:
            sb = await client.sandboxes.create(image="kindling/base", idle_timeout_ms=1000)
            try:
                await sb.files.write("/tmp/x", b"\x00\x01")
                assert await sb.files.read_bytes("/tmp/x") == b"\x00\x01"
                assert (await sb.commands.run(["echo", "hi"])).stdout == "hi\n"
                for _ in range(200):
                    if (await sb.refresh())["state"] == "paused":
                        break
                    await asyncio.sleep(0.05)
                assert sb.state == "paused"
                assert (await sb.commands.run(["echo", "back"])).stdout == "back\n"
            finally:
                await sb.kill()

    asyncio.run(main())


def test_other_tenant_sees_404(k: Kindling, server: Server, name: str) -> None:
    created = k.tenants.create(name)
    other = Kindling(server.url, created.api_key)
    sb = k.sandboxes.create()
    try:
        with pytest.raises(kindling.NotFoundError):
            other.sandboxes.get(sb.id)
        assert other.sandboxes.list() == []
    finally:
        sb.kill()
        other.close()
        k.tenants.delete(name)


def test_background_commands(k: Kindling) -> None:
    sb = k.sandboxes.create(runtime="bash")
    try:
        handle = sb.commands.start(["sh", "-c", "echo hi; echo oops >&2; sleep 300 & sleep 300; exit 0"])
        assert handle.id.startswith("cmd_") and isinstance(handle.pid, int)
        assert any(c["id"] == handle.id and c["state"] == "running" for c in sb.commands.list())
        seen: list[str] = []
        done = sb.commands.start(["sh", "-c", "echo one; echo two >&2; exit 5"], stdin=b"\x00")
        result = done.wait(on_stdout=seen.append)
        assert (result["exitCode"], result["stdout"], result["stderr"], seen) == (5, "one\n", "two\n", ["one\n"])
        killed = handle.kill()
        assert (killed["state"], killed["killed"], killed["exitCode"]) == ("exited", True, 137)
        assert sb.commands.connect(handle.id).info["exitCode"] == 137
        assert sb.commands.run(["echo", "alive"]).stdout == "alive\n"
        with pytest.raises(kindling.NotFoundError):
            sb.commands.connect("cmd_nope")
    finally:
        sb.kill()


def test_async_background_commands(server: Server) -> None:
    async def main() -> None:
        async with AsyncKindling(server.url, server.admin_key) as client:
            sb = await client.sandboxes.create(image="kindling/base")
            try:
                handle = await sb.commands.start(["sh", "-c", "echo async; exit 2"])
                result = await handle.wait()
                assert (result["exitCode"], result["stdout"]) == (2, "async\n")
                assert [c["id"] for c in await sb.commands.list()] == [handle.id]
            finally:
                await sb.kill()

    asyncio.run(main())
