"""Which route of the server's OpenAPI document each client method covers. The drift test checks that every route of
``GET /openapi.json`` is either here (and the methods exist on both clients) or listed as not covered, with why."""

#: ``"METHOD /path"`` (as in the OpenAPI document) -> the client methods that call it (attribute paths on a client).
COVERED_ROUTES: dict[str, tuple[str, ...]] = {
    "GET /healthz": ("health",),
    "GET /readyz": ("ready",),
    "GET /openapi.json": ("openapi",),
    "POST /v1/execute": ("execute", "run", "run_command", "stream", "execute_raw"),
    "GET /v1/execute/ws": ("interactive",),
    "PUT /v1/functions/{name}": ("functions.deploy",),
    "GET /v1/functions/{name}": ("functions.get",),
    "DELETE /v1/functions/{name}": ("functions.delete",),
    "GET /v1/functions": ("functions.list",),
    "POST /v1/functions/{name}/invoke": ("functions.invoke", "functions.invoke_async"),
    "GET /v1/functions/{name}/logs": ("functions.logs",),
    "GET /v1/functions/{name}/versions": ("functions.versions",),
    "GET /v1/invocations": ("invocations.list",),
    "GET /v1/invocations/{id}": ("invocations.get", "invocations.wait"),
    "GET /v1/invocations/{id}/output": ("invocations.output",),
    "GET /v1/invocations/{id}/logs": ("invocations.logs",),
    "POST /v1/tenants": ("tenants.create",),
    "GET /v1/tenants": ("tenants.list",),
    "GET /v1/tenants/{name}": ("tenants.get",),
    "PATCH /v1/tenants/{name}": ("tenants.update",),
    "DELETE /v1/tenants/{name}": ("tenants.delete",),
    "GET /v1/tenant": ("tenants.me",),
    "POST /v1/tenants/{name}/keys": ("keys.create",),
    "GET /v1/tenants/{name}/keys": ("keys.list",),
    "DELETE /v1/tenants/{name}/keys/{id}": ("keys.revoke",),
    "GET /v1/usage": ("usage.get", "usage.csv"),
    "GET /v1/usage/invocations": ("usage.invocations",),
    "GET /v1/usage/timeseries": ("usage.timeseries",),
    "GET /v1/pools": ("pools",),
    "POST /v1/sandboxes": ("sandboxes.create",),
    "GET /v1/sandboxes": ("sandboxes.list",),
    "GET /v1/sandboxes/{id}": ("sandboxes.get", "sandboxes.connect"),
    "DELETE /v1/sandboxes/{id}": ("sandboxes.delete",),
    "POST /v1/sandboxes/{id}/pause": ("sandboxes.pause",),
    "POST /v1/sandboxes/{id}/resume": ("sandboxes.resume",),
    "POST /v1/sandboxes/{id}/commands": ("sandboxes.run",),
    "PUT /v1/sandboxes/{id}/files": ("sandboxes.write_file",),
    "GET /v1/sandboxes/{id}/files": ("sandboxes.read_file",),
    "DELETE /v1/sandboxes/{id}/files": ("sandboxes.remove_file",),
    "GET /v1/sandboxes/{id}/files/list": ("sandboxes.list_files",),
}

#: Routes of the document the SDK leaves alone on purpose, and why.
NOT_COVERED_ROUTES: dict[str, str] = {}
