"""Streamed uploads, mkdir, tar both ways, hibernate, set_timeout, list filters and the terminal, through both
clients against the real server (sandbox executor)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

import kindling
from kindling import AsyncKindling, Kindling

from conftest import Server


def _tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_streamed_writes_mkdir_tar_hibernate_timeout_filters(k: Kindling) -> None:
    sb = k.sandboxes.create(image="kindling/base", limits={"diskMb": 64}, metadata={"suite": "py-files", "n": "1"})
    try:
        # A file object is read in chunks, never whole: 20 MiB from a temporary file.
        with tempfile.TemporaryFile() as source:
            block = bytes(range(256)) * 4096
            digest = hashlib.sha256()
            for _ in range(20):
                source.write(block)
                digest.update(block)
            source.seek(0)
            assert sb.files.write("big.bin", source)["size"] == 20 * len(block)
        assert sb.commands.run(["sha256sum", "big.bin"]).stdout.split()[0] == digest.hexdigest()

        def pieces() -> Iterator[str]:
            yield "it"
            yield "er"

        sb.files.write("iter.txt", pieces())
        assert sb.files.read("iter.txt") == "iter"
        sb.files.write("text.txt", io.StringIO("from a text file"))
        assert sb.files.read("text.txt") == "from a text file"

        assert sb.files.make_dir("d/e") is True
        assert sb.files.make_dir("d/e") is False
        written = sb.files.upload_dir("d/e", _tar_of({"x.txt": b"ex", "sub/y.txt": b"why"}))
        assert written["bytes"] == 5 and written["path"] == "/work/d/e"
        back = b"".join(sb.files.download_dir("d/e"))
        with tarfile.open(fileobj=io.BytesIO(back)) as archive:
            names = sorted(name.lstrip("./") for name in archive.getnames() if name not in (".", "./"))
            assert names == ["sub", "sub/y.txt", "x.txt"]
        with pytest.raises(kindling.ValidationError) as refused:
            sb.files.upload_dir("d/e", _tar_of({"../escape.txt": b"no"}))
        assert refused.value.code == "SANDBOX_TAR_INVALID"

        before = time.time()
        sb.set_timeout(300_000)
        expires = time.mktime(time.strptime(sb.info["expiresAt"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert abs(expires - (before + 300)) < 10
        assert [s["id"] for s in k.sandboxes.list(metadata={"suite": "py-files", "n": "1"})] == [sb.id]
        assert k.sandboxes.list(metadata={"suite": "py-files", "n": "2"}) == []

        # The base image has no python3, which the terminal needs: refused over the socket, with the server's code.
        with pytest.raises(kindling.ConflictError) as no_pty:
            sb.pty.create(cols=80, rows=24)
        assert no_pty.value.code == "SANDBOX_PTY_UNSUPPORTED"

        info = sb.hibernate()
        assert info["state"] == "hibernated" and info["hibernation"]["processesKept"] is False
        assert [s["id"] for s in k.sandboxes.list(state="hibernated", metadata={"suite": "py-files"})] == [sb.id]
        with pytest.raises(kindling.ConflictError):
            sb.commands.run(["true"], auto_resume=False)
        assert sb.files.read("iter.txt") == "iter"
        assert sb.refresh()["state"] == "running"
    finally:
        sb.kill()


def test_terminal_blocking_client(k: Kindling) -> None:
    sb = k.sandboxes.create(runtime="python")
    try:
        seen = bytearray()
        lock = threading.Lock()

        def on_data(data: bytes) -> None:
            with lock:
                seen.extend(data)

        pty = sb.pty.create(cols=100, rows=30, on_data=on_data)
        pty.write("stty size; echo marker-$((6*7))\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                if b"marker-42" in seen:
                    break
            time.sleep(0.05)
        with lock:
            text = bytes(seen).decode("utf-8", "replace")
        assert "marker-42" in text and "30 100" in text, text[-500:]
        pty.write("exit 3\n")
        assert pty.wait() == 3
        with pytest.raises(kindling.NotFoundError):
            k.sandboxes.pty("sb_nope", cols=80, rows=24)
    finally:
        sb.kill()


def test_async_streams_tar_and_terminal(server: Server) -> None:
    async def main() -> None:
        async with AsyncKindling(server.url, server.admin_key) as client:
            sb = await client.sandboxes.create(runtime="python", metadata={"suite": "py-async"})
            try:
                async def chunks() -> AsyncIterator[bytes]:
                    for piece in (b"as", b"ync"):
                        yield piece

                await sb.files.write("a.txt", chunks())
                assert await sb.files.read("a.txt") == "async"
                assert await sb.files.make_dir("t") is True
                await sb.files.upload_dir("t", _tar_of({"z.txt": b"zed"}))
                archive = b"".join([piece async for piece in await sb.files.download_dir("t")])
                assert b"zed" in archive
                assert [s["id"] for s in await client.sandboxes.list(metadata={"suite": "py-async"})] == [sb.id]
                await sb.set_timeout(120_000)

                output = bytearray()
                pty = await sb.pty.create(cols=80, rows=24, command=["sh", "-c", "read line; echo got-$line; exit 5"], on_data=output.extend)
                await pty.write("hi\n")
                assert await pty.wait() == 5
                assert b"got-hi" in output
                await pty.kill()
                assert (await sb.hibernate())["state"] == "hibernated"
            finally:
                await sb.kill()

    asyncio.run(main())


def test_an_archive_of_the_hosts_gnu_tar_goes_in_as_it_is(k: Kindling, tmp_path: Path) -> None:
    """An archive of GNU tar on the host (long names, a symlink inside) goes in as it is."""
    (tmp_path / "src" / ("n" * 120)).mkdir(parents=True)
    (tmp_path / "src" / ("n" * 120) / "f.txt").write_text("deep")
    (tmp_path / "src" / "link").symlink_to("n" * 120)
    archive = subprocess.run(["tar", "-C", str(tmp_path / "src"), "-cf", "-", "."], check=True, capture_output=True).stdout
    sb = k.sandboxes.create(image="kindling/base")
    try:
        with open(tmp_path / "a.tar", "wb") as out:
            out.write(archive)
        with open(tmp_path / "a.tar", "rb") as source:
            sb.files.upload_dir("up", source)
        assert sb.commands.run(["cat", "up/link/f.txt"]).stdout == "deep"
    finally:
        sb.kill()
