"""Tenants, keys, usage, typed errors and retries against the real server."""

from __future__ import annotations

import time

import pytest

import kindling
from kindling import Kindling

from conftest import Server


def test_tenant_lifecycle_keys_and_me(k: Kindling, server: Server, name: str) -> None:
    made = k.tenants.create(name, quotas={"maxMemoryMb": 512})
    assert made.tenant.name == name and made.api_key and made.admin_key is None
    assert made.tenant.quotas == {"maxMemoryMb": 512}
    assert name in [t.name for t in k.tenants.list()]
    with Kindling(server.url, made.api_key) as tenant:
        me = tenant.tenants.me()
        assert me.tenant.name == name and me.admin is False and me.auth_enabled is True
        with pytest.raises(kindling.PermissionDeniedError) as caught:
            tenant.tenants.list()
        assert caught.value.code == "FORBIDDEN" and caught.value.status == 403
    updated = k.tenants.update(name, {"maxMemoryMb": None, "maxPids": 64})
    assert updated.quotas == {"maxPids": 64}
    assert k.tenants.get(name).effective_quotas["maxPids"] == 64
    extra = k.keys.create(name)
    assert extra.key.tenant == name and extra.api_key.startswith(extra.key.prefix)
    assert extra.key.id in [key.id for key in k.keys.list(name)]
    k.keys.revoke(name, extra.key.id)
    with Kindling(server.url, extra.api_key, max_retries=0) as revoked:
        with pytest.raises(kindling.AuthenticationError) as denied:
            revoked.tenants.me()
        assert denied.value.code == "UNAUTHORIZED"
    k.tenants.delete(name)
    with pytest.raises(kindling.NotFoundError) as gone:
        k.tenants.get(name)
    assert gone.value.code == "TENANT_NOT_FOUND"
    with pytest.raises(kindling.ConflictError) as exists:
        k.tenants.create(name)
    assert exists.value.code == "TENANT_EXISTS"


def test_usage(k: Kindling, server: Server, name: str) -> None:
    made = k.tenants.create(name)
    with Kindling(server.url, made.api_key) as tenant:
        tenant.functions.deploy("meter", runtime="python", code="def h(b):\n    return b\n", handler="h")
        tenant.functions.invoke("meter", b"1234")
        usage = tenant.usage.get()
        assert [row.get("function") for row in usage.rows] == ["meter"]
        assert usage.totals["invocations"] == 1 and usage.group_by == "function"
        assert "meter" in tenant.usage.csv()
        assert tenant.usage.invocations(limit=5)[0]["function"] == "meter"
        assert sum(b["invocations"] for b in tenant.usage.timeseries(minutes=5)["buckets"]) == 1
        by_day = tenant.usage.get(group_by="day")
        assert by_day.group_by == "day" and by_day.totals["invocations"] == 1
        assert "pools" in tenant.pools()
        with pytest.raises(kindling.PermissionDeniedError):
            tenant.cluster()  # the workers' load tells about every tenant: admin only
    assert k.usage.get(tenant=name).totals["invocations"] == 1
    k.tenants.delete(name)


def test_health_ready_openapi(k: Kindling) -> None:
    assert k.health() == {"status": "ok"}
    assert k.ready()["status"] == "ready"
    assert k.cluster() == {"mode": "single"}
    assert k.openapi()["openapi"].startswith("3.")


def test_typed_errors_carry_code_status_and_request_id(k: Kindling) -> None:
    with pytest.raises(kindling.ValidationError) as caught:
        k.run("cobol", "DISPLAY 'HI'")
    error = caught.value
    assert error.code == "UNKNOWN_RUNTIME" and error.status == 400 and error.retryable is False
    assert error.request_id and error.request_id in str(error)
    assert isinstance(error, kindling.KindlingError)


def test_wrong_key_is_an_authentication_error(server: Server) -> None:
    with Kindling(server.url, "kp_wrong", max_retries=0) as bad:
        with pytest.raises(kindling.AuthenticationError) as caught:
            bad.run("bash", "true")
    assert caught.value.code == "UNAUTHORIZED" and caught.value.status == 401


def test_no_server_is_a_connection_error_after_retries() -> None:
    started = time.monotonic()
    with Kindling("http://127.0.0.1:9", "k", max_retries=2) as nowhere:
        with pytest.raises(kindling.ConnectionError) as caught:
            nowhere.health()
    assert caught.value.code == "CONNECTION_FAILED" and caught.value.status is None
    assert time.monotonic() - started < 10


def test_rate_limits_are_retried_after_retry_after(k: Kindling, server: Server, name: str) -> None:
    made = k.tenants.create(name, quotas={"requestsPerSecond": 1, "burst": 1})
    with Kindling(server.url, made.api_key, max_retries=0) as impatient:
        impatient.tenants.me()
        with pytest.raises(kindling.RateLimitError) as caught:
            impatient.tenants.me()
        assert caught.value.code == "TENANT_RATE_LIMITED"
        assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 2
        assert caught.value.retryable is True
    with Kindling(server.url, made.api_key, max_retries=3) as patient:
        patient.tenants.me()
        # A POST too: the server refused it before doing anything, so sending it again is safe.
        assert patient.run("bash", "echo again").stdout == "again\n"
        assert patient.tenants.me().tenant.name == name
    k.tenants.delete(name)


def test_retry_policy() -> None:
    """The policy alone (pure logic): which failures are sent again, and how long it waits."""
    from kindling._core import should_retry

    def error(code: str, status: int | None, retryable: bool, retry_after: float | None = None) -> kindling.KindlingError:
        return kindling.KindlingError(code, "x", status=status, retryable=retryable, retry_after=retry_after)

    assert should_retry(error("EXECUTOR_UNAVAILABLE", 503, True), idempotent=True, attempt=0, max_retries=2) is not None
    # Not idempotent and the server may have started: never sent twice.
    assert should_retry(error("EXECUTOR_FAILED", 502, True), idempotent=False, attempt=0, max_retries=2) is None
    assert should_retry(error("TENANT_RATE_LIMITED", 429, True, 0.5), idempotent=False, attempt=0, max_retries=2) == 0.5
    assert should_retry(error("VALIDATION_FAILED", 400, False), idempotent=True, attempt=0, max_retries=2) is None
    assert should_retry(error("TIMEOUT", None, True), idempotent=True, attempt=0, max_retries=2) is None
    assert should_retry(error("EXECUTOR_UNAVAILABLE", 503, True), idempotent=True, attempt=2, max_retries=2) is None
    assert should_retry(error("STORAGE_FULL", 507, True, 30), idempotent=True, attempt=0, max_retries=2) is None
    delays = [should_retry(error("EXECUTOR_UNAVAILABLE", 503, True), idempotent=True, attempt=n, max_retries=9) for n in range(6)]
    assert all(d is not None and 0 < d <= 8 for d in delays)


def test_errors_map_every_class_from_the_payload() -> None:
    payload = {"error": {"code": "TOO_MANY_REQUESTS", "message": "slow down"}, "requestId": "req_1"}
    error = kindling.error_from_payload(payload, status=429, retry_after="3")
    assert isinstance(error, kindling.RateLimitError) and error.retry_after == 3.0 and error.request_id == "req_1"
    assert isinstance(kindling.error_from_payload(None, status=502), kindling.ServerError)
    assert isinstance(kindling.error_from_payload({"error": {"code": "EXECUTOR_FAILED"}}), kindling.ServerError)


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    monkeypatch.setenv("KINDLING_URL", server.url + "/")
    monkeypatch.setenv("KINDLING_API_KEY", server.admin_key)
    with Kindling() as from_env:
        assert from_env.url == server.url
        assert from_env.tenants.me().admin is True
    with pytest.raises(ValueError):
        Kindling("ftp://example.com")
    with pytest.raises(ValueError):
        Kindling(server.url, timeout=-1)


def test_star_import_does_not_shadow_builtins() -> None:
    import builtins

    scope: dict[str, object] = {}
    exec("from kindling import *", scope)
    assert "TimeoutError" not in scope and "ConnectionError" not in scope
    assert "Kindling" in scope and "AsyncKindling" in scope and "NotFoundError" in scope
    assert issubclass(kindling.TimeoutError, kindling.ConnectionError) and kindling.TimeoutError is not builtins.TimeoutError
