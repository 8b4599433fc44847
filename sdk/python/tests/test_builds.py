"""Dependency builds through the blocking and async clients: a bundle whose build fails (a lockfile npm cannot read,
so no registry is needed) is refused with BUILD_FAILED naming its build, whose record and log the SDK reads."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import httpx
import pytest

import kindling
from kindling import AsyncKindling, Kindling

from conftest import Server


def _bundle(files: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _deploy_broken(server: Server, name: str) -> str:
    """Deploys a node bundle whose lockfile is not JSON: the build fails; returns its id from BUILD_FAILED."""
    bundle = _bundle({
        "package.json": '{"name":"app","version":"1.0.0","dependencies":{"ms":"2.1.3"}}\n',
        "package-lock.json": "{ not json",
        "index.js": 'exports.handler = () => "x";\n',
    })
    spec = json.dumps({"runtime": "node", "handler": "index.js:handler"})
    answer = httpx.put(
        f"{server.url}/v1/functions/{name}",
        content=bundle,
        headers={"authorization": f"Bearer {server.admin_key}", "content-type": "application/x-tar", "kindling-function-spec": spec},
        timeout=120,
    )
    error = kindling.error_from_payload(answer.json(), status=answer.status_code)
    assert isinstance(error, kindling.ValidationError) and error.code == "BUILD_FAILED", answer.text
    assert error.details is not None and isinstance(error.details.get("buildId"), str)
    return str(error.details["buildId"])


def test_a_failed_build_is_listed_with_its_log(k: Kindling, server: Server, name: str) -> None:
    build_id = _deploy_broken(server, name)
    builds = k.functions.builds(name)
    assert [b.id for b in builds] == [build_id]
    assert builds[0].status == "failed" and builds[0].kind == "npm" and builds[0].error
    log = k.functions.build_logs(name, build_id)
    assert log.status == "failed" and log.log
    with pytest.raises(kindling.NotFoundError) as missing:
        k.functions.build_logs(name, "bld_doesnotexist")
    assert missing.value.code == "BUILD_NOT_FOUND"


def test_the_async_client_reads_builds_too(server: Server, name: str) -> None:
    build_id = _deploy_broken(server, name)

    async def read() -> tuple[list[kindling.FunctionBuildInfo], kindling.BuildLog]:
        async with AsyncKindling(server.url, server.admin_key) as client:
            return await client.functions.builds(name), await client.functions.build_logs(name, build_id)

    builds, log = asyncio.run(read())
    assert builds[0].id == build_id and builds[0].status == "failed"
    assert log.status == "failed"


_BROKEN_NODE = {
    "package.json": '{"name":"app","version":"1.0.0","dependencies":{"ms":"2.1.3"}}\n',
    "package-lock.json": "{ not json",
    "index.js": 'exports.handler = () => "x";\n',
}


def _write(directory: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_text(text)


def test_deploy_bundle_from_a_directory_leaves_out_ignored_files_and_refuses_links_out(k: Kindling, name: str, tmp_path: Path) -> None:
    _write(tmp_path, {
        "handler.py": "from pkg.util import shout\n\ndef main(body):\n    return shout(body.decode())\n",
        "pkg/__init__.py": "",
        "pkg/util.py": "def shout(text):\n    return text.upper()\n",
        "secret.env": "TOKEN=x\n",
        ".kindlingignore": "secret.env\n",
        ".git/HEAD": "ref: refs/heads/main\n",
    })
    deployed = k.functions.deploy_bundle(name, str(tmp_path), runtime="python", handler="handler.py:main")
    assert isinstance(deployed, kindling.FunctionInfo) and deployed.version == 1
    assert k.functions.invoke(name, b"hi").body == b"HI"
    names = set(tarfile.open(fileobj=io.BytesIO(kindling.tar_directory(str(tmp_path)))).getnames())
    assert names == {".kindlingignore", "handler.py", "pkg", "pkg/__init__.py", "pkg/util.py"}
    # The same content gives the same bytes (times and owners zeroed): the server's content hash is stable.
    assert deployed.raw["bundle"]["sha256"] == hashlib.sha256(kindling.tar_directory(str(tmp_path))).hexdigest()

    # A link out of the directory is refused here, naming it, before anything is sent (the server would answer 400).
    os.symlink("/etc/passwd", tmp_path / "passwd")
    with pytest.raises(ValueError, match="passwd: a symlink to /etc/passwd leaves the bundle"):
        k.functions.deploy_bundle(name, str(tmp_path), runtime="python", handler="handler.py:main")
    assert k.functions.get(name).version == 1
    os.remove(tmp_path / "passwd")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="pipe: a device, fifo or socket cannot be in a bundle"):
        kindling.tar_directory(str(tmp_path))


def test_deploy_bundle_without_waiting_answers_the_build_and_its_log_is_followed(k: Kindling, name: str, tmp_path: Path) -> None:
    _write(tmp_path, _BROKEN_NODE)
    accepted = k.functions.deploy_bundle(name, str(tmp_path), runtime="node", handler="index.js:handler", wait=False)
    assert isinstance(accepted, kindling.DeployAccepted), accepted
    assert accepted.status == "building" and accepted.build.id.startswith("bld_") and accepted.build.status == "building"
    events = list(k.functions.follow_build_log(name, accepted.build.id))
    assert events[-1].type == "end" and events[-1].build is not None
    assert events[-1].build.status == "failed" and events[-1].build.error
    assert "".join(e.text or "" for e in events if e.type == "log")
    assert k.functions.build(name, accepted.build.id).status == "failed"
    # Waiting, the same bundle raises the build's error.
    with pytest.raises(kindling.ValidationError) as failed:
        k.functions.deploy_bundle(name, str(tmp_path), runtime="node", handler="index.js:handler")
    assert failed.value.code == "BUILD_FAILED"
    with pytest.raises(kindling.NotFoundError) as missing:
        list(k.functions.follow_build_log(name, "bld_doesnotexist"))
    assert missing.value.code == "BUILD_NOT_FOUND"


def test_the_async_client_deploys_bundles_and_follows_builds(server: Server, name: str, tmp_path: Path) -> None:
    _write(tmp_path, _BROKEN_NODE)

    async def run() -> tuple[kindling.DeployAccepted, list[kindling.BuildLogEvent], kindling.FunctionBuildInfo]:
        async with AsyncKindling(server.url, server.admin_key) as client:
            accepted = await client.functions.deploy_bundle(name, str(tmp_path), runtime="node", handler="index.js:handler", wait=False)
            assert isinstance(accepted, kindling.DeployAccepted)
            events = [event async for event in client.functions.follow_build_log(name, accepted.build.id)]
            return accepted, events, await client.functions.build(name, accepted.build.id)

    accepted, events, build = asyncio.run(run())
    assert accepted.status == "building"
    assert events[-1].type == "end" and events[-1].build is not None and events[-1].build.status == "failed"
    assert build.status == "failed"


def test_apt_packages_are_sent_and_checked_by_the_server(k: Kindling, name: str) -> None:
    """``apt`` goes to the server as given: a name that is not a Debian package is a 400 that says so, before any build;
    an empty list is no packages (the deploy needs no build)."""
    with pytest.raises(kindling.ValidationError) as refused:
        k.functions.deploy(name, runtime="python", code="print(1)", apt=["Not A Package"])
    assert "not a Debian package name" in str(refused.value)
    assert k.functions.builds(name) == []
    info = k.functions.deploy(name, runtime="python", code="print(1)", apt=[], timeout=60)
    assert info.apt is None and info.apt_image is None
