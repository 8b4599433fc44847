"""The README's examples run as written (in order, in a scratch directory, against the test server)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

from conftest import Server

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KINDLING_URL", server.url)
    monkeypatch.setenv("KINDLING_API_KEY", server.admin_key)
    (tmp_path / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    scope: dict[str, object] = {"ADMIN_KEY": server.admin_key, "__name__": "readme"}
    printed = io.StringIO()
    for block in blocks:
        # The tour's first lines pass url/api_key explicitly: point them at the test server.
        code = block.replace('"http://127.0.0.1:8080", api_key=None', f'"{server.url}", api_key="{server.admin_key}"')
        with contextlib.redirect_stdout(printed):
            exec(compile(code, str(README), "exec"), scope)
    output = printed.getvalue()
    assert "42" in output and "b'hi there'" in output
