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


def test_streamed_command_snapshots_and_forks(k: Kindling) -> None:
    sb = k.sandboxes.create(runtime="bash", limits={"diskMb": 16})
    forks: list[kindling.Sandbox] = []
    made: list[kindling.Sandbox] = []
    try:
        chunks: list[tuple[str, str, float]] = []
        import time

        script = "echo first; sleep 0.5; echo oops >&2; sleep 0.5; echo last; exit 3"
        result = sb.commands.run(["sh", "-c", script], on_stdout=lambda d: chunks.append(("out", d, time.monotonic())), on_stderr=lambda d: chunks.append(("err", d, time.monotonic())))
        done = time.monotonic()
        assert (result.exit_code, result.stdout, result.stderr) == (3, "first\nlast\n", "oops\n")
        assert [(kind, data) for kind, data, _ in chunks] == [("out", "first\n"), ("err", "oops\n"), ("out", "last\n")]
        assert done - chunks[0][2] >= 0.8, "the first chunk arrived live, not with the result"

        sb.files.write("state.txt", "v1")
        snap = sb.snapshot()
        assert snap["id"] and snap["sandboxId"] == sb.id and snap["memory"] is False
        assert k.sandboxes.get_snapshot(snap["id"])["id"] == snap["id"]
        assert [s["id"] for s in k.sandboxes.list_snapshots(sandbox_id=sb.id)] == [snap["id"]]
        sb.files.write("state.txt", "v2")
        restored = k.sandboxes.create(from_snapshot=snap["id"])
        made.append(restored)
        assert restored.info["storage"]["fromSnapshot"] == snap["id"] and restored.info["runtime"] == "bash"
        assert restored.files.read("state.txt") == "v1"
        with pytest.raises(kindling.ConflictError) as in_use:
            k.sandboxes.delete_snapshot(snap["id"])
        assert in_use.value.code == "SNAPSHOT_IN_USE"

        forks = sb.fork(2)
        assert len(forks) == 2 and len({f.id for f in forks}) == 2
        forks[0].files.write("state.txt", "mine")
        assert [f.files.read("state.txt") for f in forks] == ["mine", "v2"]
    finally:
        snapshots = k.sandboxes.list_snapshots(sandbox_id=sb.id)
        for handle in [*forks, *made]:
            handle.kill()
        sb.kill()
    # Snapshots outlive their sandbox until deleted (the fork made the second one).
    assert len(snapshots) == 2
    for snapshot in snapshots:
        k.sandboxes.delete_snapshot(snapshot["id"])
    with pytest.raises(kindling.NotFoundError):
        k.sandboxes.get_snapshot(snap["id"])


def test_background_command_followed_at_start(k: Kindling) -> None:
    sb = k.sandboxes.create(runtime="bash")
    try:
        seen: list[str] = []
        handle = sb.commands.start(["sh", "-c", "echo a; sleep 0.3; echo b >&2; exit 4"], on_stdout=seen.append, on_stderr=seen.append)
        result = handle.wait()
        assert (result["exitCode"], result["stdout"], result["stderr"], seen) == (4, "a\n", "b\n", ["a\n", "b\n"])
        again: list[str] = []
        connected = sb.commands.connect(handle.id, on_stdout=again.append)
        assert connected.wait()["stdout"] == "a\n" and again == ["a\n"]
    finally:
        sb.kill()


def test_async_streamed_command_snapshots_and_forks(server: Server) -> None:
    async def main() -> None:
        async with AsyncKindling(server.url, server.admin_key) as client:
            sb = await client.sandboxes.create(runtime="bash", limits={"diskMb": 16})
            others: list[kindling.AsyncSandbox] = []
            try:
                chunks: list[str] = []
                result = await sb.commands.run(["sh", "-c", "echo x; echo y >&2"], on_stdout=chunks.append, on_stderr=chunks.append)
                assert (result.exit_code, result.stdout, chunks) == (0, "x\n", ["x\n", "y\n"])
                seen: list[str] = []
                handle = await sb.commands.start(["sh", "-c", "echo bg; exit 1"], on_stdout=seen.append)
                assert (await handle.wait())["exitCode"] == 1 and seen == ["bg\n"]

                await sb.files.write("f", "one")
                snap = await sb.snapshot()
                assert (await client.sandboxes.get_snapshot(snap["id"]))["bytes"] == snap["bytes"]
                assert snap["id"] in [s["id"] for s in await client.sandboxes.list_snapshots()]
                restored = await client.sandboxes.create(from_snapshot=snap["id"])
                others.append(restored)
                assert await restored.files.read("f") == "one"
                forks = await sb.fork(1)
                others.extend(forks)
                assert await forks[0].files.read("f") == "one"
            finally:
                snapshots = await client.sandboxes.list_snapshots(sandbox_id=sb.id)
                for other in others:
                    await other.kill()
                await sb.kill()
            for snapshot in snapshots:
                await client.sandboxes.delete_snapshot(snapshot["id"])
            assert [s for s in await client.sandboxes.list_snapshots() if s["sandboxId"] == sb.id] == []

    asyncio.run(main())
