/**
 * Jobs 2-4 and 6-11 on persistent sandboxes (an "instance" of the original is a persistent sandbox; a "container" id
 * is a sandbox id too). Each is one call of the sandboxes service, as the matching HTTP route makes it.
 */
import { Readable } from 'node:stream';
import { KindlingError } from '../../core/errors.js';
import { resolveImageAlias } from '../../orchestrator/image-aliases.js';
import type { CreateSandboxRequest } from '../../orchestrator/sandboxes.js';
import { JobError, type JobContext, type JobOutput } from './context.js';
import { resolveSnapshotRef } from './refs.js';

/** Metadata key holding a branch's name (job 4). */
export const BRANCH_METADATA_KEY = 'kindling.branch';
const MAX_NAME_CHARS = 256;

function requireId(value: string, field: string): string {
  if (value === '') throw new KindlingError('VALIDATION_FAILED', `${field} is empty: give the id the job that made it answered`, { details: { field } });
  return value;
}

/** Job 2: a snapshot of /work of the sandbox; `name` and `description` are not kept (see docs/operator.md). */
export async function createSnapshot(context: JobContext, containerId: string): Promise<JobOutput> {
  const snapshot = await context.services.sandboxes.snapshot(context.tenant, requireId(containerId, 'containerId'));
  return { values: [snapshot.id] };
}

/** Job 3: a new sandbox on the snapshot's files. */
export async function restoreSnapshot(context: JobContext, snapshotRef: string): Promise<JobOutput> {
  const fromSnapshot = resolveSnapshotRef(context, requireId(snapshotRef, 'snapshotId'));
  const sandbox = await context.services.sandboxes.create(context.tenant, { fromSnapshot });
  return { values: [sandbox.id] };
}

/** Job 4: like job 3, the branch's name kept as the sandbox's metadata `kindling.branch`. */
export async function createBranch(context: JobContext, parentSnapshotRef: string, branchName: string): Promise<JobOutput> {
  if (branchName.length > MAX_NAME_CHARS) throw new KindlingError('VALIDATION_FAILED', `branchName has ${branchName.length} characters; at most ${MAX_NAME_CHARS}`, { details: { field: 'branchName' } });
  const fromSnapshot = resolveSnapshotRef(context, requireId(parentSnapshotRef, 'parentSnapshotId'));
  const sandbox = await context.services.sandboxes.create(context.tenant, { fromSnapshot, ...(branchName === '' ? {} : { metadata: { [BRANCH_METADATA_KEY]: branchName } }) });
  return { values: [sandbox.id] };
}

export interface StartInstanceArgs {
  snapshotId: string;
  image: string;
  cpuCores: number;
  memoryMb: number;
  diskGb: number;
  enableSsh: boolean;
}

/** Job 6: a new sandbox (from a snapshot, or of an image: default the base image); 0 for a size: the server's default. */
export async function startInstance(context: JobContext, args: StartInstanceArgs): Promise<JobOutput> {
  if (args.enableSsh) {
    throw new JobError('SSH_UNSUPPORTED', 'Kindling runs no SSH server in sandboxes: send enableSsh false, run commands with job 1 (mode persistent), or open a terminal over the API (WebSocket /v1/sandboxes/ID/pty)');
  }
  const request: CreateSandboxRequest = {};
  if (args.snapshotId !== '') request.fromSnapshot = resolveSnapshotRef(context, args.snapshotId);
  if (args.image !== '') {
    const resolved = resolveImageAlias(args.image);
    if ('runtime' in resolved) request.runtime = resolved.runtime;
    else request.image = resolved.image;
  } else if (request.fromSnapshot === undefined) {
    request.runtime = 'bash';
  }
  if (args.cpuCores > 0) request.cpus = args.cpuCores;
  if (args.memoryMb > 0) request.memoryMb = args.memoryMb;
  if (args.diskGb > 0) request.diskMb = args.diskGb * 1024;
  const sandbox = await context.services.sandboxes.create(context.tenant, request);
  return { values: [sandbox.id] };
}

/** Job 7: the instance ends for good (processes and files), as the original's stop did. */
export async function stopInstance(context: JobContext, instanceId: string): Promise<JobOutput> {
  await context.services.sandboxes.delete(context.tenant, requireId(instanceId, 'instanceId'));
  return { values: [true] };
}

export async function pauseInstance(context: JobContext, instanceId: string): Promise<JobOutput> {
  const view = await context.services.sandboxes.pause(context.tenant, requireId(instanceId, 'instanceId'));
  return { values: [view.state] };
}

export async function resumeInstance(context: JobContext, instanceId: string): Promise<JobOutput> {
  const view = await context.services.sandboxes.resume(context.tenant, requireId(instanceId, 'instanceId'));
  return { values: [view.state] };
}

/** Protocols the port route carries: HTTP and upgrades (WebSocket). Empty: http. */
const PORT_PROTOCOLS = new Set(['', 'http', 'https', 'ws', 'wss', 'websocket']);

/** Job 10: the URL of the API's port route for the port (`subdomain` is not supported and is ignored). */
export function exposePort(context: JobContext, instanceId: string, port: number, protocol: string): JobOutput {
  const sandbox = context.services.sandboxes.get(context.tenant, requireId(instanceId, 'instanceId'));
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new KindlingError('VALIDATION_FAILED', `internalPort must be from 1 to 65535, got ${port}`, { details: { field: 'internalPort' } });
  if (!PORT_PROTOCOLS.has(protocol.toLowerCase())) {
    throw new JobError('PROTOCOL_UNSUPPORTED', `protocol "${protocol.slice(0, 20)}" cannot be exposed: the port route carries HTTP and upgrades (WebSocket) only; use "http"`);
  }
  return { values: [`${context.settings.publicUrl}/v1/sandboxes/${sandbox.id}/ports/${port}/`] };
}

/** Job 11: a tar archive extracted into targetPath (default /work) through the API's tar upload (its guards). */
export async function uploadFiles(context: JobContext, instanceId: string, targetPath: string, filesData: Uint8Array): Promise<JobOutput> {
  const cap = context.scope.maxPayloadBytes;
  if (cap !== undefined && filesData.length > cap) {
    throw new KindlingError('PAYLOAD_TOO_LARGE', `filesData has ${filesData.length} bytes; this caller's quota maxPayloadBytes allows ${cap}`, { details: { maxPayloadBytes: cap } });
  }
  const written = await context.services.sandboxes.writeTar(context.tenant, requireId(instanceId, 'instanceId'), targetPath === '' ? '/work' : targetPath, Readable.from([Buffer.from(filesData)]));
  return { values: [BigInt(written.bytes)] };
}
