"""Custom images against the real server: one built from ``base`` plus a directory of files, used, listed, deleted;
bad requests raise typed errors."""

from __future__ import annotations

import asyncio
import pathlib
import uuid

import pytest

import kindling
from kindling import AsyncKindling, Kindling

from conftest import Server


def test_an_image_with_files_is_built_used_listed_and_deleted(k: Kindling, tmp_path: pathlib.Path) -> None:
    name = "py-" + uuid.uuid4().hex[:10]
    (tmp_path / "hello.txt").write_text("hello from the image\n")
    try:
        image = k.images.create(name, from_="base", files_dir=str(tmp_path), poll_interval=0.5)
        assert image.status == "ready" and image.image == f"kindling/{name}" and image.from_ == "base"
        assert image.raw["files"]["dest"] == f"/opt/{name}"
        result = k.run_command(f"kindling/{name}", ["cat", f"/opt/{name}/hello.txt"])
        assert result.exit_code == 0 and result.stdout == "hello from the image\n"
        assert name in [i.name for i in k.images.list()]
        assert "building rootfs" in (k.images.get(name).log or "")
    finally:
        k.images.delete(name)
    with pytest.raises(kindling.NotFoundError):
        k.images.get(name)


def test_bad_requests_raise_typed_errors(k: Kindling, server: Server) -> None:
    with pytest.raises(kindling.ValidationError) as caught:
        k.images.create("x-bad", from_="base", apt=["not a package"], wait=False)
    assert caught.value.code == "VALIDATION_FAILED" and "Debian package name" in str(caught.value)
    with pytest.raises(kindling.ValidationError) as unknown:
        k.images.create("x-bad", from_="no-such-image", wait=False)
    assert unknown.value.code == "UNKNOWN_IMAGE"

    async def missing() -> None:
        async with AsyncKindling(server.url, server.admin_key) as client:
            with pytest.raises(kindling.NotFoundError):
                await client.images.get("never-made")

    asyncio.run(missing())
