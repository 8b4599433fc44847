"""Kindling's Python SDK: run code in sandboxes, deploy and invoke functions, follow async invocations.

>>> from kindling import Kindling
>>> with Kindling() as k:                      # KINDLING_URL / KINDLING_API_KEY
...     print(k.run("python", "print(6 * 7)").stdout)
42
"""

from ._async import AsyncExecutionStream, AsyncKindling
from ._core import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, DEFAULT_URL, EXECUTION_GRACE_S, __version__
from ._errors import (
    ERROR_CODE_CLASSES,
    AbortError,
    AuthenticationError,
    ConflictError,
    ConnectionError,
    KindlingError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TimeoutError,
    ValidationError,
    error_from_payload,
)
from ._bundle import tar_directory
from ._images import AsyncImages, CustomImage, ImageBuildFailedError, Images
from ._routes import COVERED_ROUTES, NOT_COVERED_ROUTES
from ._sandboxes import AsyncSandbox, AsyncSandboxes, Sandbox, Sandboxes
from ._sync import ExecutionStream, Kindling
from ._types import (
    ApiKeyInfo,
    AsyncInvocation,
    CreatedApiKey,
    CreatedTenant,
    ExecutionResult,
    FunctionInfo,
    BuildLog,
    BuildLogEvent,
    DeployAccepted,
    FunctionBuildInfo,
    FunctionVersionInfo,
    Invocation,
    InvocationOutput,
    InvocationResult,
    LogEvent,
    OutputEvent,
    RawResult,
    TenantInfo,
    TenantSelf,
    Usage,
)

# ConnectionError and TimeoutError are importable by name but left out of `import *`: they would shadow the built-ins.
__all__ = [
    "AsyncImages",
    "CustomImage",
    "ImageBuildFailedError",
    "Images",
    "Sandbox",
    "Sandboxes",
    "AsyncSandbox",
    "AsyncSandboxes",
    "AbortError",
    "ApiKeyInfo",
    "AsyncExecutionStream",
    "AsyncInvocation",
    "AsyncKindling",
    "AuthenticationError",
    "COVERED_ROUTES",
    "ConflictError",
    "CreatedApiKey",
    "CreatedTenant",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_URL",
    "ERROR_CODE_CLASSES",
    "EXECUTION_GRACE_S",
    "ExecutionResult",
    "ExecutionStream",
    "FunctionInfo",
    "BuildLog",
    "BuildLogEvent",
    "DeployAccepted",
    "FunctionBuildInfo",
    "FunctionVersionInfo",
    "Invocation",
    "InvocationOutput",
    "InvocationResult",
    "Kindling",
    "KindlingError",
    "LogEvent",
    "NOT_COVERED_ROUTES",
    "NotFoundError",
    "OutputEvent",
    "PermissionDeniedError",
    "RateLimitError",
    "RawResult",
    "ServerError",
    "TenantInfo",
    "TenantSelf",
    "Usage",
    "ValidationError",
    "__version__",
    "error_from_payload",
    "tar_directory",
]
