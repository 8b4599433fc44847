/**
 * The Docker side of a runtime image: `docker import` of a built rootfs through the engine API, labelled with its
 * recipe hash, and the inspections that tell whether an image is current.
 */
import { spawn } from 'node:child_process';
import type Dockerode from 'dockerode';
import { imageRef, type ImageRecipe } from './recipes.js';
import type { ImageLog } from './files.js';

/** The recipe hash an image was imported from (a current image carries the current hash). */
export const RECIPE_LABEL = 'dev.kindling.recipe';
export const IMAGE_LABEL = 'dev.kindling.image';

export async function pingDocker(docker: Dockerode, timeoutMs = 3000): Promise<string | null> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  try {
    // dockerode's ping accepts { abortSignal } (its typings do not say so).
    const ping = docker.ping.bind(docker) as unknown as (o: { abortSignal: AbortSignal }) => Promise<unknown>;
    await ping({ abortSignal: ac.signal });
    return null;
  } catch (err) {
    return ac.signal.aborted ? `no answer within ${timeoutMs} ms` : (err as Error).message;
  } finally {
    clearTimeout(timer);
  }
}

export interface ExistingImage {
  id: string;
  label: string | undefined;
  sizeBytes: number;
}

export async function inspectImage(docker: Dockerode, ref: string): Promise<ExistingImage | null> {
  try {
    const info = await docker.getImage(ref).inspect();
    return { id: info.Id, label: info.Config?.Labels?.[RECIPE_LABEL], sizeBytes: info.Size };
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) return null;
    throw err;
  }
}

/** `docker import` of the rootfs as a tar stream (GNU tar, numeric owners) through the engine API. */
export async function importRootfs(
  docker: Dockerode,
  recipe: ImageRecipe,
  hash: string,
  rootfsDir: string,
  signal: AbortSignal,
): Promise<string> {
  const ac = new AbortController();
  const onAbort = (): void => ac.abort(signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  const tar = spawn('tar', ['--numeric-owner', '--one-file-system', '-C', rootfsDir, '-cf', '-', '.'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let tarErr = '';
  tar.stderr.on('data', (d: Buffer) => (tarErr = (tarErr + d.toString()).slice(-2000)));
  const tarDone = new Promise<void>((resolve, reject) => {
    tar.on('error', (e) => {
      ac.abort(e);
      reject(e);
    });
    tar.on('close', (code, sig) => {
      if (code === 0) resolve();
      else {
        const e = new Error(`tar of ${rootfsDir} failed (${code ?? sig}): ${tarErr.trim()}`);
        ac.abort(e);
        reject(e);
      }
    });
  });
  tarDone.catch(() => {}); // observed below; avoid an unhandled rejection while the import is still running
  const changes = [
    ...Object.entries(recipe.env).map(([k, v]) => `ENV ${k}=${v}`),
    'WORKDIR /work',
    `LABEL ${RECIPE_LABEL}=${hash}`,
    `LABEL ${IMAGE_LABEL}=${recipe.short}`,
    'CMD ["bash"]',
  ];
  try {
    const stream = await docker.importImage(tar.stdout, {
      repo: recipe.name,
      tag: recipe.tag,
      changes,
      message: `kindling recipe ${recipe.short} ${hash}`,
      abortSignal: ac.signal,
    });
    const output = await new Promise<Array<Record<string, unknown>>>((resolve, reject) => {
      docker.modem.followProgress(stream, (err: Error | null, out: Array<Record<string, unknown>>) =>
        err ? reject(err) : resolve(out),
      );
    });
    await tarDone;
    const failed = output.find((o) => o.error || o.errorDetail);
    if (failed) throw new Error(`docker import of ${imageRef(recipe)} failed: ${String(failed.error ?? JSON.stringify(failed.errorDetail))}`);
  } catch (err) {
    if (tar.exitCode === null) tar.kill('SIGKILL');
    // The original error wins, but a tar failure explains an aborted upload better than "aborted".
    const tarFailure = await tarDone.then(() => null, (e: unknown) => e);
    throw tarFailure instanceof Error && ac.signal.aborted ? tarFailure : err;
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
  const after = await inspectImage(docker, imageRef(recipe));
  if (!after || after.label !== hash) {
    throw new Error(`docker import of ${imageRef(recipe)} finished but the image does not carry ${RECIPE_LABEL}=${hash}`);
  }
  return after.id;
}

export async function removeOldImage(docker: Dockerode, id: string, log: ImageLog): Promise<void> {
  try {
    const info = await docker.getImage(id).inspect();
    if (!info.Config?.Labels?.[RECIPE_LABEL]) return; // never touch an image we did not make
    await docker.getImage(id).remove();
    log.debug?.(`removed superseded image ${id}`);
  } catch (err) {
    log.debug?.(`kept superseded image ${id}: ${(err as Error).message}`); // e.g. a container still uses it
  }
}

