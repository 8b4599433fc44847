"""Results the SDK returns: frozen dataclasses with snake_case fields. Units are in the names (``duration_ms``);
the whole wire object stays available as ``raw`` for fields newer servers add."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Union

from ._errors import KindlingError

JsonDict = dict[str, Any]


def _int(value: Any, default: int = 0) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _opt_int(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _float(value: Any, default: float = 0.0) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _opt_float(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _opt_str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _opt_bool(value: Any) -> Optional[bool]:
    return value if isinstance(value, bool) else None


def expect_dict(value: Any, what: str) -> JsonDict:
    """``value`` when it is a JSON object, else an ``INVALID_RESPONSE`` error."""
    if not isinstance(value, dict):
        raise KindlingError("INVALID_RESPONSE", f"Expected a JSON object for {what}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of one execution. A non-zero exit, a timeout or an OOM kill is a result, not an error."""

    id: str
    #: Exit status of the program (128+N when killed by signal N).
    exit_code: int
    #: The signal that ended the process (e.g. ``SIGKILL``), else None.
    signal: Optional[str]
    #: Everything written to stdout (UTF-8 text, or base64 with ``outputEncoding: base64``), up to ``outputBytes``.
    stdout: str
    stderr: str
    #: ``utf8`` or ``base64``: how ``stdout``/``stderr`` are encoded.
    output_encoding: str
    #: Wall-clock run time of the program in milliseconds.
    duration_ms: float
    #: True when a new sandbox was started for it (no warm one).
    cold_start: bool
    executor: str
    #: True when it was killed for passing its ``timeoutMs``.
    timed_out: bool
    #: True when it was killed for passing its ``memoryMb``.
    oom_killed: bool
    #: True when stdout or stderr was cut at ``outputBytes``.
    truncated: bool
    stdout_truncated: bool
    stderr_truncated: bool
    #: Phase timings in milliseconds: ``queuedMs``, ``startMs``, ``runMs``.
    timings: Mapping[str, float]
    #: The whole wire object.
    raw: JsonDict = field(repr=False, compare=False)

    @property
    def stdout_bytes(self) -> bytes:
        """stdout as bytes (base64-decoded with ``outputEncoding: base64``, else UTF-8 encoded)."""
        return base64.b64decode(self.stdout) if self.output_encoding == "base64" else self.stdout.encode()

    @property
    def stderr_bytes(self) -> bytes:
        """stderr as bytes, like :attr:`stdout_bytes`."""
        return base64.b64decode(self.stderr) if self.output_encoding == "base64" else self.stderr.encode()

    @classmethod
    def from_wire(cls, data: Any) -> "ExecutionResult":
        d = expect_dict(data, "an execution result")
        timings = d.get("timings")
        return cls(
            id=_str(d.get("id")),
            exit_code=_int(d.get("exitCode"), -1),
            signal=_opt_str(d.get("signal")),
            stdout=_str(d.get("stdout")),
            stderr=_str(d.get("stderr")),
            output_encoding=_str(d.get("outputEncoding"), "utf8"),
            duration_ms=_float(d.get("durationMs")),
            cold_start=d.get("coldStart") is True,
            executor=_str(d.get("executor")),
            timed_out=d.get("timedOut") is True,
            oom_killed=d.get("oomKilled") is True,
            truncated=d.get("truncated") is True,
            stdout_truncated=d.get("stdoutTruncated") is True,
            stderr_truncated=d.get("stderrTruncated") is True,
            timings={k: float(v) for k, v in timings.items() if isinstance(v, (int, float))} if isinstance(timings, dict) else {},
            raw=d,
        )


@dataclass(frozen=True)
class OutputEvent:
    """One event of :meth:`Kindling.stream`: ``stdout``/``stderr`` with the text as produced (chunks, not lines),
    then one ``exit`` event whose ``result`` is the :class:`ExecutionResult` (its ``data`` is the result as JSON)."""

    type: Literal["stdout", "stderr", "exit"]
    data: str
    result: Optional[ExecutionResult] = None


@dataclass(frozen=True)
class RawResult:
    """The outcome of a raw execution whose stdout went to a sink (:meth:`Kindling.execute_raw` with ``stdout=``).

    The facts come from the answer's HTTP trailers; ``stderr`` holds at most the first 4 KiB."""

    id: str
    exit_code: Optional[int]
    duration_ms: Optional[float]
    timed_out: bool
    oom_killed: bool
    truncated: bool
    cold_start: bool
    executor: str
    #: Bytes written to the stdout sink.
    stdout_bytes: int
    #: The first 4 KiB of stderr.
    stderr: bytes


@dataclass(frozen=True)
class FunctionInfo:
    """A deployed function: its latest version's spec plus identity and times (milliseconds since the epoch)."""

    name: str
    #: The latest version: 1 for the first deploy, +1 for each deploy after.
    version: int
    #: ``handler`` or ``command``.
    style: str
    runtime: Optional[str]
    handler: Optional[str]
    created_at_ms: float
    updated_at_ms: float
    raw: JsonDict = field(repr=False, compare=False)
    #: Debian packages it runs with (``apt``), and the image the deploy made (or reused) for them.
    apt: Optional[list[str]] = None
    apt_image: Optional[str] = None

    @classmethod
    def from_wire(cls, data: Any) -> "FunctionInfo":
        d = expect_dict(data, "a function")
        apt = d.get("apt")
        return cls(
            name=_str(d.get("name")),
            version=_int(d.get("version")),
            style=_str(d.get("style")),
            runtime=_opt_str(d.get("runtime")),
            handler=_opt_str(d.get("handler")),
            created_at_ms=_float(d.get("createdAtMs")),
            updated_at_ms=_float(d.get("updatedAtMs")),
            raw=d,
            apt=[_str(p) for p in apt] if isinstance(apt, list) else None,
            apt_image=_opt_str(d.get("aptImage")),
        )


@dataclass(frozen=True)
class FunctionBuildInfo:
    """One dependency build of a function's deploys (:meth:`Functions.builds`): npm ci or pip install, its status and error."""

    id: str
    function: str
    #: ``npm``, ``pip``, ``compile`` (a go or rust program) or ``apt`` (the image for the function's Debian packages).
    kind: str
    #: ``building`` while the deploy installs, ``ready`` once a layer was made or reused, ``failed`` (see ``error``).
    status: str
    #: Why a failed build failed (its BUILD_FAILED message).
    error: Optional[str]
    #: The layer a ready build made or reused.
    layer_sha256: Optional[str]
    started_at_ms: float
    finished_at_ms: Optional[float]
    raw: JsonDict = field(repr=False, compare=False)
    #: The function version a ready build's deploy stored.
    version: Optional[int] = None

    @classmethod
    def from_wire(cls, data: Any) -> "FunctionBuildInfo":
        d = expect_dict(data, "a function build")
        return cls(
            id=_str(d.get("id")),
            function=_str(d.get("function")),
            kind=_str(d.get("kind")),
            status=_str(d.get("status")),
            error=_opt_str(d.get("error")),
            layer_sha256=_opt_str(d.get("layerSha256")),
            started_at_ms=_float(d.get("startedAtMs")),
            finished_at_ms=_opt_float(d.get("finishedAtMs")),
            raw=d,
            version=d["version"] if isinstance(d.get("version"), int) else None,
        )


@dataclass(frozen=True)
class BuildLog:
    """A build's log (:meth:`Functions.build_logs`): what it wrote so far while it runs, its last 64 KiB once it ended."""

    status: str
    log: str


@dataclass(frozen=True)
class DeployAccepted:
    """The 202 of a bundle deploy that did not wait (:meth:`Functions.deploy_bundle` with ``wait=False``): the build
    runs on and the version is stored once it is ready; until then the previous version serves. Follow it with
    :meth:`Functions.follow_build_log` or poll :meth:`Functions.build`."""

    name: str
    #: ``building``.
    status: str
    build: FunctionBuildInfo

    @classmethod
    def from_wire(cls, data: Any) -> "DeployAccepted":
        d = expect_dict(data, "a deploy accepted")
        return cls(name=_str(d.get("name")), status=_str(d.get("status")), build=FunctionBuildInfo.from_wire(d.get("build")))


@dataclass(frozen=True)
class BuildLogEvent:
    """One event of a followed build log (:meth:`Functions.follow_build_log`): ``log`` (``text`` as npm/pip wrote it),
    ``skipped`` (``bytes`` of log the server left out: the reader was slower than the build, or joined after the head of
    a long log was dropped), ``end`` last (``build``: the final record, ``ready`` with its ``version`` or ``failed``)."""

    type: str
    text: Optional[str] = None
    bytes: Optional[int] = None
    build: Optional[FunctionBuildInfo] = None

    @classmethod
    def from_sse(cls, event: str, data: str) -> "BuildLogEvent":
        try:
            d = json.loads(data)
        except ValueError:
            d = {}
        if not isinstance(d, dict):
            d = {}
        if event == "end":
            return cls(type=event, build=FunctionBuildInfo.from_wire(d))
        if event == "skipped":
            return cls(type=event, bytes=d["bytes"] if isinstance(d.get("bytes"), int) else 0)
        return cls(type=event, text=_opt_str(d.get("text")))


@dataclass(frozen=True)
class FunctionVersionInfo:
    """One kept version of a function (:meth:`Functions.versions`): identity, style and when it was deployed."""

    name: str
    version: int
    #: ``handler`` or ``command``.
    style: str
    #: Whether new invocations run this version.
    latest: bool
    runtime: Optional[str]
    handler: Optional[str]
    #: When this version was deployed, in milliseconds since the epoch.
    created_at_ms: float
    #: The whole version as the server sent it (its spec: code, image, command, env, limits).
    raw: JsonDict = field(repr=False, compare=False)

    @classmethod
    def from_wire(cls, data: Any) -> "FunctionVersionInfo":
        d = expect_dict(data, "a function version")
        return cls(
            name=_str(d.get("name")),
            version=_int(d.get("version")),
            style=_str(d.get("style")),
            latest=d.get("latest") is True,
            runtime=_opt_str(d.get("runtime")),
            handler=_opt_str(d.get("handler")),
            created_at_ms=_float(d.get("createdAtMs")),
            raw=d,
        )


@dataclass(frozen=True)
class InvocationResult:
    """The outcome of :meth:`Functions.invoke`: the raw response body and the ``x-kindling-*`` facts."""

    #: The response: stdout of a command function, the return value of a handler (the error text when it raised).
    body: bytes
    invocation_id: str
    #: The function version that ran.
    version: int
    #: 0 on success; a command's exit status; 1 when a handler raised. None only from an old server (see ``streamed``).
    exit_code: Optional[int]
    #: Server-side run time in milliseconds.
    duration_ms: Optional[float]
    #: True when a sandbox was started for this invocation (no warm one was free).
    cold_start: bool
    #: True when the output (over 1 MiB) was streamed and the facts came from the invocation's record.
    streamed: bool
    #: Cluster mode: the worker that ran it (None when the server that answered ran it).
    node: Optional[str] = None

    @property
    def text(self) -> str:
        """``body`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True)
class AsyncInvocation:
    """The answer of :meth:`Functions.invoke_async`: the id to follow; ``created`` is False when an idempotency key
    returned an earlier invocation."""

    invocation_id: str
    created: bool
    status: str


InvocationStatus = Literal["queued", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class Invocation:
    """An invocation as ``GET /v1/invocations/ID`` describes it. Times are ISO 8601 strings."""

    id: str
    function: str
    version: int
    #: ``queued``, ``running``, ``succeeded`` or ``failed``.
    status: str
    #: ``async`` or ``sync``.
    mode: Optional[str]
    exit_code: Optional[int]
    duration_ms: Optional[float]
    cold_start: Optional[bool]
    timed_out: Optional[bool]
    error: Optional[str]
    payload_bytes: int
    output_bytes: Optional[int]
    #: Times it was started: more than 1 when its cluster worker was lost mid-run and it was delivered again (None from
    #: older servers).
    attempts: Optional[int]
    created_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    raw: JsonDict = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """True once it succeeded or failed."""
        return self.status in ("succeeded", "failed")

    @classmethod
    def from_wire(cls, data: Any) -> "Invocation":
        d = expect_dict(data, "an invocation")
        return cls(
            id=_str(d.get("id")),
            function=_str(d.get("function")),
            version=_int(d.get("version")),
            status=_str(d.get("status")),
            mode=_opt_str(d.get("mode")),
            exit_code=_opt_int(d.get("exitCode")),
            duration_ms=_opt_float(d.get("durationMs")),
            cold_start=_opt_bool(d.get("coldStart")),
            timed_out=_opt_bool(d.get("timedOut")),
            error=_opt_str(d.get("error")),
            payload_bytes=_int(d.get("payloadBytes")),
            output_bytes=_opt_int(d.get("outputBytes")),
            attempts=_opt_int(d.get("attempts")),
            created_at=_str(d.get("createdAt")),
            started_at=_opt_str(d.get("startedAt")),
            finished_at=_opt_str(d.get("finishedAt")),
            raw=d,
        )


@dataclass(frozen=True)
class InvocationOutput:
    """The raw stdout of a finished invocation."""

    body: bytes
    status: Optional[str]
    exit_code: Optional[int]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True)
class LogEvent:
    """One event of a log stream: ``start``, ``stdout``/``stderr`` (with ``text``), ``end`` (with ``status``)."""

    type: str
    invocation_id: str
    text: Optional[str] = None
    status: Optional[str] = None

    @classmethod
    def from_sse(cls, event: str, data: str) -> "LogEvent":
        try:
            d = json.loads(data)
        except ValueError:
            d = {}
        if not isinstance(d, dict):
            d = {}
        # The final `end` event of an invocation's own log stream carries the whole invocation (`id`, `status`).
        return cls(
            type=event,
            invocation_id=_str(d.get("invocationId"), _str(d.get("id"))),
            text=_opt_str(d.get("text")),
            status=_opt_str(d.get("status")),
        )


@dataclass(frozen=True)
class TenantInfo:
    """A tenant: the quotas set for it and the quotas in effect (None: no cap beyond the server's ranges)."""

    name: str
    quotas: Mapping[str, float]
    effective_quotas: Mapping[str, Optional[float]]
    created_at: str
    raw: JsonDict = field(repr=False, compare=False)

    @classmethod
    def from_wire(cls, data: Any) -> "TenantInfo":
        d = expect_dict(data, "a tenant")
        quotas = d.get("quotas") if isinstance(d.get("quotas"), dict) else {}
        effective = d.get("effectiveQuotas") if isinstance(d.get("effectiveQuotas"), dict) else {}
        assert isinstance(quotas, dict) and isinstance(effective, dict)
        return cls(
            name=_str(d.get("name")),
            quotas={k: float(v) for k, v in quotas.items() if isinstance(v, (int, float))},
            effective_quotas={k: (float(v) if isinstance(v, (int, float)) else None) for k, v in effective.items()},
            created_at=_str(d.get("createdAt")),
            raw=d,
        )


@dataclass(frozen=True)
class CreatedTenant:
    """A new tenant and its first API key (shown only here); ``admin_key`` only when the server was in open mode."""

    tenant: TenantInfo
    api_key: str
    key_id: str
    admin_key: Optional[str]


@dataclass(frozen=True)
class TenantSelf:
    """``GET /v1/tenant``: the caller's own tenant."""

    tenant: TenantInfo
    #: Whether the key used is the admin key.
    admin: bool
    #: The key's id (``env`` for KINDLING_ADMIN_KEY, None in open local mode).
    key_id: Optional[str]
    #: Executions of the tenant running now.
    running: int
    #: Whether the server asks for keys (False in open local mode).
    auth_enabled: bool


@dataclass(frozen=True)
class ApiKeyInfo:
    """An API key's record (never the key itself, except in :class:`CreatedApiKey`)."""

    id: str
    tenant: str
    #: The first characters of the key, to tell keys apart.
    prefix: str
    admin: bool
    created_at: str
    revoked_at: Optional[str]

    @classmethod
    def from_wire(cls, data: Any) -> "ApiKeyInfo":
        d = expect_dict(data, "an API key")
        return cls(
            id=_str(d.get("id")),
            tenant=_str(d.get("tenant")),
            prefix=_str(d.get("prefix")),
            admin=d.get("admin") is True,
            created_at=_str(d.get("createdAt")),
            revoked_at=_opt_str(d.get("revokedAt")),
        )


@dataclass(frozen=True)
class CreatedApiKey:
    """A new API key: ``api_key`` is shown only in this answer."""

    key: ApiKeyInfo
    api_key: str


@dataclass(frozen=True)
class Usage:
    """``GET /v1/usage``: rows per function (or day) and their totals. Numbers as the server sends them: CPU in ms,
    ``gbSeconds`` (memory limit in GB x wall time in s), ``storageGbHours`` (kept disks and snapshots of persistent
    sandboxes), bytes in/out. Persistent sandboxes have rows of their own, keyed by their id (``sb_...``, ``snap_...``)."""

    from_: str
    to: str
    group_by: str
    rows: list[JsonDict]
    totals: JsonDict
    raw: JsonDict = field(repr=False, compare=False)

    @classmethod
    def from_wire(cls, data: Any) -> "Usage":
        d = expect_dict(data, "usage")
        rows = d.get("rows") if isinstance(d.get("rows"), list) else []
        totals = d.get("totals") if isinstance(d.get("totals"), dict) else {}
        assert isinstance(rows, list) and isinstance(totals, dict)
        return cls(
            from_=_str(d.get("from")),
            to=_str(d.get("to")),
            group_by=_str(d.get("groupBy")),
            rows=[r for r in rows if isinstance(r, dict)],
            totals=totals,
            raw=d,
        )


def tenant_self_from_wire(data: Any) -> TenantSelf:
    d = expect_dict(data, "the caller's tenant")
    return TenantSelf(
        tenant=TenantInfo.from_wire(d),
        admin=d.get("admin") is True,
        key_id=_opt_str(d.get("keyId")),
        running=_int(d.get("running")),
        auth_enabled=d.get("authEnabled") is True,
    )


def created_tenant_from_wire(data: Any) -> CreatedTenant:
    d = expect_dict(data, "a created tenant")
    return CreatedTenant(
        tenant=TenantInfo.from_wire(d),
        api_key=_str(d.get("apiKey")),
        key_id=_str(d.get("keyId")),
        admin_key=_opt_str(d.get("adminKey")),
    )


def created_key_from_wire(data: Any) -> CreatedApiKey:
    d = expect_dict(data, "a created key")
    return CreatedApiKey(key=ApiKeyInfo.from_wire(d), api_key=_str(d.get("apiKey")))


Body = Union[bytes, bytearray, memoryview, str]
