"""Dependency builds through the blocking and async clients: a bundle whose build fails (a lockfile npm cannot read,
so no registry is needed) is refused with BUILD_FAILED naming its build, whose record and log the SDK reads."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile

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
