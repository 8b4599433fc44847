"""Ports of persistent sandboxes through both clients against the real server (sandbox executor)."""

from __future__ import annotations

import asyncio
import time

import pytest

import kindling
from kindling import AsyncKindling, Kindling

from conftest import Server

# A tiny server inside the sandbox (python3's standard library): GET answers the path, POST echoes the body.
SERVER = r"""
import sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a): pass
    def reply(self, status, body):
        self.send_response(status); self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self): self.reply(404 if self.path.startswith('/missing') else 200, ('got ' + self.path).encode())
    def do_POST(self): self.reply(201, self.rfile.read(int(self.headers['Content-Length'])))
ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"""


def _serve(sb: kindling.Sandbox) -> None:
    sb.files.write("/work/srv.py", SERVER)
    assert sb.commands.run(["sh", "-c", "python3 /work/srv.py 8080 >/dev/null 2>&1 &"]).exit_code == 0
    deadline = time.monotonic() + 20
    while True:
        try:
            if sb.fetch(8080, "/ready").status_code == 200:
                return
        except kindling.ServerError:
            pass
        assert time.monotonic() < deadline, "the server in the sandbox never answered"
        time.sleep(0.1)


def test_fetch_a_port(k: Kindling, server: Server) -> None:
    sb = k.sandboxes.create(runtime="python")
    try:
        _serve(sb)
        assert sb.get_host(8080) == f"{server.url}/v1/sandboxes/{sb.id}/ports/8080"
        answer = sb.fetch(8080, "/a/b?c=d")
        assert answer.status_code == 200 and answer.text == "got /a/b?c=d" and answer.headers["x-kindling-port"] == "8080"
        missing = sb.fetch(8080, "/missing")
        assert missing.status_code == 404 and missing.text == "got /missing"
        posted = sb.fetch(8080, "/echo", method="POST", content=b"\x00bytes" * 1000)
        assert posted.status_code == 201 and posted.content == b"\x00bytes" * 1000
        with pytest.raises(kindling.ServerError) as unreachable:
            sb.fetch(8081)
        assert unreachable.value.code == "SANDBOX_PORT_UNREACHABLE"
        with pytest.raises(kindling.NotFoundError):
            k.sandboxes.fetch_port("sb_missing", 8080)
    finally:
        sb.kill()


def test_async_fetch_a_port(k: Kindling, server: Server) -> None:
    sb = k.sandboxes.create(runtime="python")
    try:
        _serve(sb)

        async def main() -> None:
            async with AsyncKindling(server.url, server.admin_key) as client:
                handle = await client.sandboxes.connect(sb.id)
                assert handle.get_host(8080) == sb.get_host(8080)
                answer = await handle.fetch(8080, "/x")
                assert answer.status_code == 200 and answer.text == "got /x"
                with pytest.raises(kindling.ServerError):
                    await handle.fetch(8081)

        asyncio.run(main())
    finally:
        sb.kill()
