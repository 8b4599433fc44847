"""Drift between the server and this SDK: every route of GET /openapi.json is covered (the methods exist on both
clients) or listed as not covered, and every error code of the server's registry has a class here."""

from __future__ import annotations

import json
import subprocess

import kindling
from kindling import AsyncKindling, Kindling

from conftest import REPO, Server


def _routes(document: dict[str, object]) -> set[str]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    return {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}


def test_every_route_is_covered_by_both_clients_or_listed(k: Kindling, server: Server) -> None:
    routes = _routes(k.openapi()) | {"GET /openapi.json"}  # the document hides its own route
    listed = set(kindling.COVERED_ROUTES) | set(kindling.NOT_COVERED_ROUTES)
    assert routes - listed == set(), "routes in the document the Python SDK neither covers nor lists"
    assert listed - routes == set(), "routes listed by the Python SDK that the server does not have"
    async_client = AsyncKindling(server.url)
    for route, methods in kindling.COVERED_ROUTES.items():
        for method in methods:
            for client in (k, async_client):
                target: object = client
                for part in method.split("."):
                    target = getattr(target, part)
                assert callable(target), f"{type(client).__name__}.{method} (for {route})"


def test_every_error_code_of_the_registry_is_mapped() -> None:
    script = "import('./dist/src/core/errors.js').then((m) => console.log(JSON.stringify(m.ERROR_CODES)))"
    registry = json.loads(subprocess.run(["node", "-e", script], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    assert set(registry) - set(kindling.ERROR_CODE_CLASSES) == set(), "codes of src/core/errors.ts without a class"
    for code, definition in registry.items():
        error = kindling.error_from_payload({"error": {"code": code, "message": "m"}, "requestId": "req_1"}, status=definition["statusCode"])
        assert type(error) is kindling.ERROR_CODE_CLASSES[code] and error.code == code and error.request_id == "req_1"
        expected = {401: kindling.AuthenticationError, 403: kindling.PermissionDeniedError, 404: kindling.NotFoundError, 409: kindling.ConflictError, 429: kindling.RateLimitError}
        status = definition["statusCode"]
        assert isinstance(error, expected.get(status, kindling.ServerError if status >= 500 else kindling.ValidationError)), code
