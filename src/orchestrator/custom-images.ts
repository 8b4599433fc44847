/**
 * Custom images (see src/images/custom.ts for their definition and layout on disk): created through the API, built in
 * the background one at a time by the images' own builder (rootfs; Docker image when the docker executor is on; ext4
 * when the microvm executor is on), listed per tenant, deleted, and resolved when a request names one.
 *
 * Naming: a tenant says `kindling/<name>` (or `<name>` in the images routes); `resolve` turns it into the owner-scoped
 * image (`kindling/u.<tenant>.<name>`, else the shared `kindling/s.<name>`) before an executor sees it, and refuses a
 * scoped name of another tenant. Nothing a tenant sends is run during the build: the packages come from the operator's
 * Debian mirror (their maintainer scripts are Debian's), and the files are unpacked by the root's own tar.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type Dockerode from 'dockerode';
import { KindlingError } from '../core/errors.js';
import { buildImages, ImageBuildError, imagePaths, safeRemove, type ImageLog } from '../images/builder.js';
import {
  baseRecipe,
  CUSTOM_FILES_TAR,
  CUSTOM_RECORD_FILE,
  customRecipe,
  customShort,
  FUNCTION_IMAGE_PREFIX,
  readCustomRecords,
  validateCustomSpec,
  writeCustomRecord,
  type CustomImageRecord,
  type CustomImageSpec,
} from '../images/custom.js';
import { IMAGE_SHORT_NAMES, findRecipe, recipeHash, type ImageShortName } from '../images/recipes.js';
import { checkStorageQuota, checkStorageRoom } from './storage-quotas.js';
import { TarGuard } from './tar-guard.js';

export const DEFAULT_MAX_CUSTOM_IMAGES_PER_TENANT = 10;
/** Images made for functions' Debian packages a tenant may keep (one per distinct base + package set in use). */
export const DEFAULT_MAX_FUNCTION_IMAGES_PER_TENANT = 20;
/** What delete renames an image's record to before it removes anything else. */
const DELETED_MARK = 'custom.json.deleted';
export const DEFAULT_MAX_IMAGE_FILES_BYTES = 256 * 1024 * 1024;
export const DEFAULT_IMAGE_BUILD_TIMEOUT_MS = 20 * 60_000;
/** Bytes of build log kept with the record (the end: mmdebstrap and apt print their errors last). */
const LOG_KEPT_BYTES = 32 * 1024;
const ORPHAN_AGE_MS = 60 * 60_000;

export interface CustomImageServiceOptions {
  imagesDir: string;
  /** The engine to import into (the docker executor is enabled); absent: rootfs only. */
  docker?: Dockerode;
  /** Also write rootfs.ext4 (the microvm executor is enabled). */
  ext4?: boolean;
  mirror?: string;
  securityMirror?: string;
  npmRegistry?: string;
  maxPerTenant?: number;
  /** Images made for functions' packages a tenant may keep; default DEFAULT_MAX_FUNCTION_IMAGES_PER_TENANT. */
  maxFunctionImagesPerTenant?: number;
  /**
   * The data dir's identity: images made for functions' packages are this server's (their names include it, and only
   * their owner removes them), as its functions are. Default: none (one server per images dir).
   */
  ownerId?: string;
  /**
   * The images the kept function versions name, with their tenant and function (the store's): an image in use is not
   * deleted (409 IMAGE_IN_USE), and one made for functions' packages is removed once nothing uses it.
   */
  imageReferences?: () => ImageReference[];
  maxFilesBytes?: number;
  buildTimeoutMs?: number;
  /** A tenant's maxImageBytes (null: no cap): the root file systems of its images, checked before and after a build. */
  imageBytesQuotaOf?: (tenant: string) => number | null;
  /** Told when an image was built or removed, so the executors re-read their image lists. */
  onImagesChanged?: () => Promise<void> | void;
  log?: { info(obj: object, msg?: string): void; warn(obj: object, msg?: string): void };
}

/** A function version's image as its tenant named it. */
export interface ImageReference {
  tenant: string;
  function: string;
  image: string;
}

/** The image a deploy got for its function's packages; release() once the version that names it is stored (or not). */
export interface PackagesImage {
  /** What the function's runs are given: `kindling/u.<tenant>.pkgs-<hash>`. */
  image: string;
  reused: boolean;
  buildMs: number;
  sizeBytes: number | null;
  release(): void;
}

export interface Principal {
  tenant: string;
  isAdmin: boolean;
}

/** What the API shows of an image. */
export interface CustomImageView {
  name: string;
  /** What requests name: `kindling/<name>`. */
  image: string;
  shared: boolean;
  from: string;
  apt: string[];
  files: CustomImageRecord['files'];
  /** Made by a deploy for functions' Debian packages ("apt"); removed once no kept function version uses it. */
  forFunctions: boolean;
  status: CustomImageRecord['status'];
  error: string | null;
  sizeBytes: number | null;
  recipeHash: string;
  createdAt: string;
  finishedAt: string | null;
  log?: string;
}

export class CustomImageService {
  private readonly records = new Map<string, CustomImageRecord>();
  /** Builds run one after another: each is mostly single-threaded dpkg work and disk I/O. */
  private queue: Promise<void> = Promise.resolve();
  private readonly building = new Set<string>();
  /** The build of each image being built (a deploy that needs one waits for it). */
  private readonly builds = new Map<string, Promise<void>>();
  /** Images made for packages that a deploy holds until its version is stored: not collected meanwhile. */
  private readonly pinned = new Map<string, number>();
  private collecting: Promise<void> = Promise.resolve();
  /** Builds refused once their size was known (the tenant's maxImageBytes): a deploy answers with this error. */
  private readonly overQuota = new WeakMap<CustomImageRecord, KindlingError>();

  constructor(private readonly options: CustomImageServiceOptions) {}

  /** Loads the records; a build the server did not finish (it stopped) is marked failed. */
  async start(): Promise<void> {
    await this.removeOrphans();
    await this.removeOrphanDockerImages();
    for (const record of await readCustomRecords(this.options.imagesDir)) {
      if (record.status === 'building') {
        record.status = 'failed';
        record.error = 'the server stopped during the build; create the image again';
        record.finishedAtMs = Date.now();
        await writeCustomRecord(this.options.imagesDir, record).catch(() => undefined);
      }
      this.records.set(record.short, record);
    }
  }

  /**
   * A custom image's directory without its record is what a create that crashed before writing it left: removed once
   * it is an hour old (a younger one may be another server's create in progress on the same images dir). One whose
   * record was renamed to DELETED_MARK is what an interrupted delete left: removed at once.
   */
  private async removeOrphans(): Promise<void> {
    const names = await fs.readdir(this.options.imagesDir).catch(() => [] as string[]);
    const recorded = new Set((await readCustomRecords(this.options.imagesDir)).map((record) => record.short));
    for (const short of names.filter((name) => (name.startsWith('u.') || name.startsWith('s.')) && !recorded.has(name))) {
      const dir = imagePaths(this.options.imagesDir, short).dir;
      const deleted = await fs.stat(path.join(dir, DELETED_MARK)).then(() => true, () => false);
      const stat = await fs.stat(dir).catch(() => null);
      if (stat === null || (!deleted && Date.now() - stat.mtimeMs < ORPHAN_AGE_MS)) continue;
      this.options.log?.warn({ dir }, 'removing the directory of a custom image that has no record (an interrupted create)');
      await safeRemove(dir).catch(() => undefined);
    }
  }

  /**
   * Docker images of custom images that have no record: what a delete interrupted between removing the record and
   * removing the Docker image left (a create writes its record before it builds, so none of these is being built).
   */
  private async removeOrphanDockerImages(): Promise<void> {
    const docker = this.options.docker;
    if (docker === undefined) return;
    const recorded = new Set((await readCustomRecords(this.options.imagesDir)).map((record) => record.short));
    const images = await docker.listImages({ filters: JSON.stringify({ reference: ['kindling/u.*', 'kindling/s.*'] }) }).catch(() => []);
    for (const tag of images.flatMap((image) => image.RepoTags ?? [])) {
      const short = /^kindling\/([us]\.[a-z0-9][a-z0-9.-]*):[A-Za-z0-9_.-]+$/.exec(tag)?.[1];
      if (short === undefined || recorded.has(short)) continue;
      this.options.log?.warn({ image: tag }, 'removing the Docker image of a custom image that has no record (an interrupted delete)');
      await docker.getImage(tag).remove({ force: true }).catch(() => undefined);
    }
  }

  /** Waits for the builds queued so far (shutdown, tests). */
  async idle(): Promise<void> {
    await this.queue;
  }

  list(principal: Principal): CustomImageView[] {
    return [...this.records.values()].filter((r) => (r.tenant === null || r.tenant === principal.tenant) && this.visible(r)).map((r) => view(r, false));
  }

  /** Images made for another server's functions (a shared images dir) are not this server's to show. */
  private visible(record: CustomImageRecord): boolean {
    return record.forFunctions !== true || record.short.startsWith(`u.${record.tenant}.${FUNCTION_IMAGE_PREFIX}${this.ownerTag}`);
  }

  /** What the names of this server's images for functions' packages start with after the prefix. */
  private get ownerTag(): string {
    return this.options.ownerId === undefined ? '' : `${this.options.ownerId.slice(0, 8)}-`;
  }

  /** Bytes of the root file systems of `tenant`'s built images (its own and those for its functions' packages). */
  bytesOf(tenant: string): number {
    let bytes = 0;
    // Images made for another server's functions (a shared images dir) are that server's tenants'.
    for (const record of this.records.values()) if (record.tenant === tenant && this.visible(record)) bytes += record.sizeBytes ?? 0;
    return bytes;
  }

  private imageQuotaOf(tenant: string | null): number | null {
    return tenant === null ? null : (this.options.imageBytesQuotaOf?.(tenant) ?? null);
  }

  get(principal: Principal, name: string): CustomImageView {
    return view(this.find(principal, name), true);
  }

  /**
   * Creates (or replaces) the image `name` of the caller's tenant, or a shared one (`shared`, the admin only), and
   * queues its build. `files` is a tar stream of the files to add (checked as it is stored).
   */
  async create(principal: Principal, name: string, spec: CustomImageSpec & { shared?: boolean }, files?: Readable): Promise<CustomImageView> {
    const { base, apt, dest } = validateCustomSpec(name, spec);
    if (spec.shared === true && !principal.isAdmin) throw new KindlingError('FORBIDDEN', 'only the admin key may create a shared image ("shared": true)');
    const tenant = spec.shared === true ? null : principal.tenant;
    const short = customShort(tenant, name);
    const existing = this.records.get(short);
    if (existing?.status === 'building' || this.building.has(short)) throw notReady(name, 'is being built; wait until its status is ready or failed, then create it again');
    const max = this.options.maxPerTenant ?? DEFAULT_MAX_CUSTOM_IMAGES_PER_TENANT;
    const owned = [...this.records.values()].filter((r) => r.tenant === tenant && r.forFunctions !== true).length;
    if (existing === undefined && owned >= max) {
      throw new KindlingError('IMAGE_LIMIT', `${tenant === null ? 'the shared images' : `tenant "${tenant}"`} already keep${tenant === null ? '' : 's'} ${owned} custom images, the most allowed (${max}); delete one first`, { details: { limit: max } });
    }
    // The image it replaces is rebuilt in place: its bytes are not the tenant's once the new build starts.
    if (tenant !== null) checkStorageRoom(tenant, 'maxImageBytes', this.imageQuotaOf(tenant), this.bytesOf(tenant) - (existing?.sizeBytes ?? 0));
    this.building.add(short);
    try {
      const dir = imagePaths(this.options.imagesDir, short).dir;
      await fs.mkdir(dir, { recursive: true, mode: 0o755 });
      const stored = files === undefined ? null : await this.storeFiles(dir, files);
      if (stored === null) await fs.rm(path.join(dir, CUSTOM_FILES_TAR), { force: true });
      const recipe = customRecipe(short, name, base, apt, stored === null ? null : { tarball: path.join(dir, CUSTOM_FILES_TAR), sha256: stored.sha256, dest });
      const record = newRecord(name, tenant, short, base.short as ImageShortName, apt, stored === null ? null : { ...stored, dest }, recipeHash(recipe));
      await writeCustomRecord(this.options.imagesDir, record);
      this.records.set(short, record);
      this.queueBuild(record, recipe);
      return view(record, false);
    } catch (error) {
      this.building.delete(short);
      // A refused first create (bad files) leaves nothing; a refused replacement keeps the image it would replace.
      if (existing === undefined) await safeRemove(imagePaths(this.options.imagesDir, short).dir).catch(() => undefined);
      throw error;
    }
  }

  /** Queues the build of a record just written; the promise of its build is kept until it ends. */
  private queueBuild(record: CustomImageRecord, recipe: ReturnType<typeof customRecipe>, onLog?: (text: string) => void): Promise<void> {
    const short = record.short;
    const done = this.queue.then(() => this.build(record, recipe, onLog)).finally(() => {
      this.building.delete(short);
      if (this.builds.get(short) === done) this.builds.delete(short);
    });
    this.builds.set(short, done);
    this.queue = done;
    return done;
  }

  /**
   * The image for a function of `tenant` whose runs need Debian `packages` on top of the built-in image `from` (its
   * runtime's): made once per (server, tenant, base, package set) by the images' own builder, then reused by every
   * function and version that asks for the same set. Waits for the build; its log goes to `onLog`. A failed build
   * throws 422 BUILD_FAILED with apt's words. The image stays pinned (never collected) until release().
   */
  async imageForPackages(tenant: string, from: string, packages: readonly string[], onLog: (text: string) => void): Promise<PackagesImage> {
    const base = findRecipe(from);
    if (base === undefined) throw new KindlingError('UNKNOWN_IMAGE', `no built-in image "${from.slice(0, 120)}" to install packages on`);
    const apt = [...new Set(packages)].sort();
    const hash = createHash('sha256').update(`${base.short}\n${apt.join('\n')}`).digest('hex').slice(0, 16);
    const name = `${FUNCTION_IMAGE_PREFIX}${this.ownerTag}${hash}`;
    const short = customShort(tenant, name);
    const what = `${base.name} + ${apt.join(' ')}`;
    this.pinned.set(short, (this.pinned.get(short) ?? 0) + 1);
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      const left = (this.pinned.get(short) ?? 1) - 1;
      if (left > 0) this.pinned.set(short, left);
      else this.pinned.delete(short);
    };
    try {
      const running = this.builds.get(short);
      if (running !== undefined) {
        onLog(`another deploy is building the image for ${what}; waiting for it\n`);
        await running;
      }
      const existing = this.records.get(short);
      if (existing?.status === 'ready') {
        if (running === undefined) onLog(`the image for ${what} is built already (kindling/${name}): reused\n`);
        return { image: existing.image, reused: true, buildMs: 0, sizeBytes: existing.sizeBytes, release };
      }
      if (running !== undefined || this.builds.has(short)) throw packagesFailed(what, existing);
      const max = this.options.maxFunctionImagesPerTenant ?? DEFAULT_MAX_FUNCTION_IMAGES_PER_TENANT;
      const owned = [...this.records.values()].filter((r) => r.tenant === tenant && r.forFunctions === true && r.short !== short).length;
      if (owned >= max) {
        throw new KindlingError('IMAGE_LIMIT', `tenant "${tenant}" already keeps ${owned} images for its functions' Debian packages, the most allowed (${max}); use the same "apt" list in more functions, or delete functions that use other lists`, { details: { limit: max } });
      }
      checkStorageRoom(tenant, 'maxImageBytes', this.imageQuotaOf(tenant), this.bytesOf(tenant) - (existing?.sizeBytes ?? 0));
      const started = Date.now();
      const recipe = customRecipe(short, name, base, apt, null);
      const record = { ...newRecord(name, tenant, short, base.short as ImageShortName, apt, null, recipeHash(recipe)), forFunctions: true };
      this.building.add(short);
      try {
        await fs.mkdir(imagePaths(this.options.imagesDir, short).dir, { recursive: true, mode: 0o755 });
        await writeCustomRecord(this.options.imagesDir, record);
      } catch (error) {
        this.building.delete(short);
        throw error;
      }
      this.records.set(short, record);
      onLog(`building the image for ${what} (kindling/${name})\n`);
      await this.queueBuild(record, recipe, onLog);
      if (record.status !== 'ready') throw this.overQuota.get(record) ?? packagesFailed(what, record);
      return { image: record.image, reused: false, buildMs: Date.now() - started, sizeBytes: record.sizeBytes, release };
    } catch (error) {
      release();
      throw error;
    }
  }

  /** The kept function versions that run on the image `short` (at most `max`), as "tenant/function" for the shared ones. */
  private usersOf(short: string, max = 5): string[] {
    const users = new Set<string>();
    for (const reference of this.options.imageReferences?.() ?? []) {
      if (this.shortOf(reference.image, reference.tenant) !== short) continue;
      users.add(short.startsWith('s.') ? `${reference.tenant}/${reference.function}` : reference.function);
      if (users.size >= max) break;
    }
    return [...users];
  }

  /** The custom image a tenant's name refers to (as resolve() would pick it), or null for a built-in or unknown one. */
  private shortOf(image: string, tenant: string): string | null {
    const short = /^kindling\/([a-z0-9][a-z0-9_.-]*)(?::[A-Za-z0-9_.-]+)?$/.exec(image)?.[1];
    if (short === undefined || (IMAGE_SHORT_NAMES as readonly string[]).includes(short)) return null;
    if (short.startsWith('u.') || short.startsWith('s.')) return short;
    return (this.records.get(customShort(tenant, short)) ?? this.records.get(customShort(null, short)))?.short ?? null;
  }

  /**
   * Removes this server's images made for functions' packages that no kept function version uses any more (after
   * deploys and deletes, in the background; serialised).
   */
  collectFunctionImages(): Promise<void> {
    this.collecting = this.collecting.then(async () => {
      const used = new Set<string>();
      for (const reference of this.options.imageReferences?.() ?? []) {
        const short = this.shortOf(reference.image, reference.tenant);
        if (short !== null) used.add(short);
      }
      for (const record of [...this.records.values()]) {
        if (record.forFunctions !== true || !this.visible(record) || used.has(record.short) || this.pinned.has(record.short) || this.building.has(record.short)) continue;
        this.options.log?.info({ image: record.image }, 'removing an image made for functions\' packages that no function uses any more');
        await this.remove(record);
      }
    }).catch((error: unknown) => this.options.log?.warn({ err: error }, 'removing unused images of functions\' packages failed; tried again after the next deploy'));
    return this.collecting;
  }

  async delete(principal: Principal, name: string): Promise<void> {
    const record = this.find(principal, name);
    if (record.tenant === null && !principal.isAdmin) throw new KindlingError('FORBIDDEN', `"${name}" is a shared image: only the admin key may delete it`);
    if (record.status === 'building' || this.building.has(record.short)) throw notReady(name, 'is being built; delete it once its status is ready or failed');
    const users = this.usersOf(record.short);
    if (users.length > 0) {
      const fix = record.forFunctions === true ? 'it was made for their "apt" packages and goes by itself once none of them uses it' : 'deploy them on another image or delete them first';
      throw new KindlingError('IMAGE_IN_USE', `image "${name}" is used by function${users.length > 1 ? 's' : ''} ${users.map((u) => `"${u}"`).join(', ')}${users.length >= 5 ? ' (and maybe more)' : ''} (a kept version names it): ${fix}`, { details: { image: name, functions: users } });
    }
    if (this.pinned.has(record.short)) throw notReady(name, 'is being given to a function by a deploy; try again once it ended');
    await this.remove(record);
  }

  private async remove(record: CustomImageRecord): Promise<void> {
    this.records.delete(record.short);
    // The record goes first: a delete interrupted after it is finished at the next start (the directory by
    // removeOrphans, the Docker image by removeOrphanDockerImages), never undone.
    const dir = imagePaths(this.options.imagesDir, record.short).dir;
    await fs.rename(path.join(dir, CUSTOM_RECORD_FILE), path.join(dir, DELETED_MARK)).catch(() => undefined);
    await this.options.onImagesChanged?.();
    if (this.options.docker !== undefined) {
      await this.options.docker.getImage(`${record.image}:latest`).remove({ force: true }).catch(() => undefined);
    }
    await safeRemove(imagePaths(this.options.imagesDir, record.short).dir);
    await this.options.onImagesChanged?.();
  }

  /**
   * The image an executor is given for `image` as named by `tenant` (null: an internal caller, no tenant's images):
   * a tenant's own custom image first, then a shared one; built-in and other names unchanged. A scoped name of another
   * tenant, or of an image not built yet, is refused.
   */
  resolve(image: string, tenant: string | null): string {
    // Any tag: the sandbox and gvisor executors drop it and take the short name, so a tag must not hide a scoped name.
    const match = /^kindling\/([a-z0-9][a-z0-9_.-]*)(?::[A-Za-z0-9_.-]+)?$/.exec(image);
    const short = match?.[1];
    if (short === undefined || (IMAGE_SHORT_NAMES as readonly string[]).includes(short)) return image;
    if (short.startsWith('u.') || short.startsWith('s.')) {
      const own = short.startsWith('s.') || (tenant !== null && short.startsWith(`u.${tenant}.`));
      if (!own) throw new KindlingError('UNKNOWN_IMAGE', `image "${image}" is not one of this tenant's images; see GET /v1/images`, { details: { field: 'image' } });
      const record = this.records.get(short);
      if (record !== undefined && record.status !== 'ready') throw notReady(record.name, `is ${record.status}`);
      return image;
    }
    const record = (tenant === null ? undefined : this.records.get(customShort(tenant, short))) ?? this.records.get(customShort(null, short));
    if (record === undefined) return image;
    if (record.status !== 'ready') throw notReady(record.name, record.status === 'failed' ? `failed to build (${(record.error ?? '').slice(0, 200)}); see GET /v1/images/${record.name}` : 'is still being built');
    return record.image;
  }

  /** The built-in image a custom image (as resolve() returned it) was built from; null for any other name. */
  baseOf(image: string): string | null {
    const short = /^kindling\/([a-z0-9][a-z0-9_.-]*)(?::[A-Za-z0-9_.-]+)?$/.exec(image)?.[1];
    const record = short === undefined ? undefined : this.records.get(short);
    return record === undefined ? null : baseRecipe(record.from).name;
  }

  private find(principal: Principal, name: string): CustomImageRecord {
    const record = this.records.get(customShort(principal.tenant, name)) ?? this.records.get(customShort(null, name));
    if (record === undefined) throw new KindlingError('IMAGE_NOT_FOUND', `no custom image "${name.slice(0, 80)}" for tenant "${principal.tenant}" (nor a shared one); see GET /v1/images`);
    return record;
  }

  /** Stores the uploaded tar as files.tar once it passed the guard and the size limit; its sha256 names its content. */
  private async storeFiles(dir: string, files: Readable): Promise<{ sha256: string; bytes: number; entries: number }> {
    const max = this.options.maxFilesBytes ?? DEFAULT_MAX_IMAGE_FILES_BYTES;
    const hash = createHash('sha256');
    let bytes = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        bytes += chunk.length;
        if (bytes > max) return done(new KindlingError('PAYLOAD_TOO_LARGE', `the image's files are larger than ${max} bytes (--max-image-files-bytes)`));
        hash.update(chunk);
        done(null, chunk);
      },
    });
    const guard = new TarGuard();
    const partial = path.join(dir, `${CUSTOM_FILES_TAR}.${randomBytes(4).toString('hex')}.tmp`);
    try {
      await pipeline(files, meter, guard, createWriteStream(partial, { mode: 0o600 }));
      await fs.rename(partial, path.join(dir, CUSTOM_FILES_TAR));
    } catch (error) {
      await fs.rm(partial, { force: true });
      if (error instanceof KindlingError && error.code !== 'BUNDLE_INVALID' && error.code !== 'SANDBOX_TAR_INVALID') throw error;
      throw new KindlingError('IMAGE_FILES_INVALID', `the image's files: ${(error as Error).message}`, { details: { field: 'files' } });
    }
    return { sha256: hash.digest('hex'), bytes, entries: guard.summary.entries };
  }

  private async build(record: CustomImageRecord, recipe: ReturnType<typeof customRecipe>, onLog?: (text: string) => void): Promise<void> {
    let log = '';
    const keep = (line: string): void => {
      onLog?.(`${line}\n`);
      log += `${line}\n`;
      if (log.length > LOG_KEPT_BYTES * 2) log = log.slice(-LOG_KEPT_BYTES);
    };
    const imageLog: ImageLog = { info: keep, warn: (line) => keep(`warning: ${line}`), debug: keep };
    const abort = AbortSignal.timeout(this.options.buildTimeoutMs ?? DEFAULT_IMAGE_BUILD_TIMEOUT_MS);
    // The record shows the outcome only once it is final (written, the files of a refused image gone): whoever sees
    // "ready" may use the image, and whoever sees "failed" may remove its directory.
    let outcome: Pick<CustomImageRecord, 'status' | 'error' | 'sizeBytes'>;
    try {
      const [result] = await buildImages({
        imagesDir: this.options.imagesDir,
        recipes: [recipe],
        force: true,
        ...(this.options.docker !== undefined ? { docker: this.options.docker } : {}),
        ext4: this.options.ext4 ?? false,
        concurrency: 1,
        ...(this.options.mirror !== undefined ? { mirror: this.options.mirror } : {}),
        ...(this.options.securityMirror !== undefined ? { securityMirror: this.options.securityMirror } : {}),
        ...(this.options.npmRegistry !== undefined ? { npmRegistry: this.options.npmRegistry } : {}),
        log: imageLog,
        signal: abort,
      });
      const sizeBytes = result?.sizeBytes ?? null;
      const refusal = this.imageQuotaRefusal(record, sizeBytes);
      if (refusal === null) {
        outcome = { status: 'ready', error: null, sizeBytes };
        this.options.log?.info({ image: record.image, ms: result?.durationMs }, 'custom image built');
      } else {
        keep(`the image is ${sizeBytes} bytes: ${refusal.message}`);
        this.overQuota.set(record, refusal);
        await this.removeBuilt(record);
        outcome = { status: 'failed', error: refusal.message, sizeBytes: null };
        this.options.log?.warn({ image: record.image, sizeBytes }, 'custom image refused: past its tenant\'s maxImageBytes');
      }
    } catch (error) {
      const cause = error instanceof ImageBuildError ? error.results[0]?.error : error;
      outcome = { status: 'failed', error: (cause instanceof Error ? cause.message : String(cause)).slice(0, 2000), sizeBytes: null };
      this.options.log?.warn({ image: record.image, error: outcome.error }, 'custom image build failed');
    }
    const final = { ...outcome, finishedAtMs: Date.now(), log: log.slice(-LOG_KEPT_BYTES) };
    // Deleted while it was queued: nothing to record.
    if (this.records.get(record.short) === record) await writeCustomRecord(this.options.imagesDir, { ...record, ...final }).catch(() => undefined);
    Object.assign(record, final);
    if (this.records.get(record.short) === record) await this.options.onImagesChanged?.();
  }

  /**
   * The refusal of a build that ended past its tenant's maxImageBytes (builds run one at a time, so the others' bytes
   * are settled), or null.
   */
  private imageQuotaRefusal(record: CustomImageRecord, sizeBytes: number | null): KindlingError | null {
    const tenant = record.tenant;
    const limit = this.imageQuotaOf(tenant);
    if (tenant === null || limit === null || sizeBytes === null) return null;
    try {
      // The record is still "building": its own bytes are not counted yet.
      checkStorageQuota(tenant, 'maxImageBytes', limit, this.bytesOf(tenant), sizeBytes);
      return null;
    } catch (error) {
      if (error instanceof KindlingError) return error;
      throw error;
    }
  }

  /** What a build made (root file system, ext4 disk, Docker image, stamp); the record and the files' tar stay. */
  private async removeBuilt(record: CustomImageRecord): Promise<void> {
    const paths = imagePaths(this.options.imagesDir, record.short);
    if (this.options.docker !== undefined) await this.options.docker.getImage(`${record.image}:latest`).remove({ force: true }).catch(() => undefined);
    await safeRemove(paths.rootfsDir).catch(() => undefined);
    await fs.rm(paths.ext4File, { force: true });
    await fs.rm(paths.stampFile, { force: true });
  }
}

function newRecord(name: string, tenant: string | null, short: string, from: ImageShortName, apt: string[], files: CustomImageRecord['files'], hash: string): CustomImageRecord {
  return { name, tenant, short, image: `kindling/${short}`, from, apt, files, status: 'building', error: null, recipeHash: hash, sizeBytes: null, createdAtMs: Date.now(), finishedAtMs: null, log: '' };
}

/** A failed build of the image for a function's packages, as a deploy reports it (apt says why at the end of the log). */
function packagesFailed(what: string, record: CustomImageRecord | undefined): KindlingError {
  return new KindlingError('BUILD_FAILED', `installing the Debian packages (${what}) failed: ${(record?.error ?? 'the build did not finish').slice(0, 1000)}\nThe build's log is below; check the package names (apt-cache search, packages.debian.org).`, {
    details: { log: record?.log ?? '' },
  });
}

function notReady(name: string, why: string): KindlingError {
  return new KindlingError('IMAGE_NOT_READY', `custom image "${name}" ${why}`, { details: { image: name } });
}

function view(record: CustomImageRecord, withLog: boolean): CustomImageView {
  return {
    name: record.name,
    image: `kindling/${record.name}`,
    shared: record.tenant === null,
    from: record.from,
    apt: record.apt,
    files: record.files,
    forFunctions: record.forFunctions === true,
    status: record.status,
    error: record.error,
    sizeBytes: record.sizeBytes,
    recipeHash: record.recipeHash,
    createdAt: new Date(record.createdAtMs).toISOString(),
    finishedAt: record.finishedAtMs === null ? null : new Date(record.finishedAtMs).toISOString(),
    ...(withLog ? { log: record.log } : {}),
  };
}

