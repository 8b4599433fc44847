export { Kindling, DEFAULT_URL, DEFAULT_TIMEOUT_MS, type KindlingOptions, type KindlingEnv } from './client.js';
export { EXECUTION_GRACE_MS, type ExecuteOptions, type StreamOptions, type RunOptions } from './executions.js';
export type { RequestOptions } from './resource.js';
export { Functions, type InvokeOptions, type InvokeAsyncOptions, type LogsOptions, type DeployBundleOptions } from './functions.js';
export { Invocations, type ListInvocationsOptions, type WaitForOptions, type InvocationOutput } from './invocations.js';
export { Tenants, Keys, type CreateTenantOptions } from './tenants.js';
export { Images, ImageBuildFailedError, type CreateImageOptions } from './images.js';
export { Sandboxes, Sandbox, SandboxCommands, CommandHandle, type SandboxInfo, type CreateSandboxOptions, type RunCommandOptions, type BackgroundCommandOptions, type SandboxCommandInfo, type BackgroundCommandResult, type CommandLogsOptions, type SandboxFileEntry, type SnapshotInfo, type ListSandboxesOptions, type UpdateSandboxOptions } from './sandboxes.js';
export type { UploadData } from './upload.js';
export { PtyHandle, type PtyCreateOptions } from './pty.js';
export type { FetchFunction } from './http.js';
export { ExecutionStream } from './stream.js';
export { InteractiveExecution, type InteractiveOptions, type InteractiveStart } from './interactive.js';
export {
  KindlingError,
  AuthenticationError,
  PermissionDeniedError,
  ConflictError,
  NotFoundError,
  ValidationError,
  RateLimitError,
  ServerError,
  ConnectionError,
  AbortError,
  type KindlingErrorOptions,
} from './errors.js';
export type {
  CustomImageSpec,
  CustomImageInfo,
  Runtime,
  ExecutorName,
  ExecuteSpec,
  ExecutionResult,
  OutputEvent,
  HealthStatus,
  ExecutorStatus,
  ReadyStatus,
  ClusterStatus,
  FunctionSpec,
  FunctionInfo,
  FunctionBundleInfo,
  FunctionLayerInfo,
  FunctionBuildInfo,
  DeployAccepted,
  BuildLogEvent,
  FunctionVersionInfo,
  InvocationResult,
  Invocation,
  InvocationStatus,
  LogEvent,
  TenantQuotas,
  TenantInfo,
  TenantStorageUsage,
  CreatedTenant,
  TenantSelf,
  ApiKeyInfo,
  CreatedApiKey,
} from './types.js';
