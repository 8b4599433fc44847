/**
 * Function bundles: a tar of a directory, checked as it streams in and unpacked once per content hash into a
 * read-only directory that sandboxes of every version with that content bind at their work dir (no copy per sandbox).
 *
 * The upload goes through a byte limit (--max-bundle-bytes), a sha256 of the raw archive, and the TarGuard (no
 * absolute names, no `..`, no links out, no devices or fifos) before GNU tar sees it. tar runs as an unprivileged uid
 * (nobody) into a staging directory it owns, so even an entry the guard missed can write only where nobody can; the
 * tree is then handed to root and made world-readable (sandbox uids read it through a read-only bind), and renamed to
 * `<dir>/<sha256>`. The same content uploaded twice is unpacked once.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chown, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, Writable, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { KindlingError } from '../core/errors.js';
import type { FunctionBundle } from '../store/store.js';
import { TarGuard } from './tar-guard.js';

/** Default of --max-bundle-bytes: the archive as uploaded. */
export const DEFAULT_MAX_BUNDLE_BYTES = 64 * 1024 * 1024;
/** Where a bundle is seen inside the sandbox: the work dir of command and handler functions alike. */
export const BUNDLE_MOUNT = '/work';

/** What a version records of its bundle (shown in the function's and the version's info). */
export type BundleInfo = FunctionBundle;

export interface BundleStoreOptions {
  /** Host directory holding one unpacked directory per content hash; its ancestors must be searchable by sandbox uids. */
  dir: string;
  maxBytes?: number;
  /** uid/gid tar runs as while unpacking. Default 65534 (nobody). */
  unpackUid?: number;
  unpackGid?: number;
  tarPath?: string;
  setprivPath?: string;
  /** Make the mount points of dependency layers: node_modules in a tree with a package-lock.json, .deps with a requirements.txt. */
  nodeModulesMountPoint?: boolean;
}

const SHA256 = /^[0-9a-f]{64}$/;

/** Hashes the archive as it passes, and fails it past `maxBytes` (fastify's bodyLimit does not see streamed bodies). */
class HashAndLimit extends Transform {
  private readonly hash = createHash('sha256');
  private count = 0;
  constructor(private readonly maxBytes: number) {
    super();
  }
  get bytes(): number {
    return this.count;
  }
  digest(): string {
    return this.hash.digest('hex');
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.count += chunk.length;
    if (this.count > this.maxBytes) {
      done(new KindlingError('PAYLOAD_TOO_LARGE', `the bundle is larger than this server's limit of ${this.maxBytes} bytes; leave out what the function does not need (see .kindlingignore) or raise --max-bundle-bytes`));
      return;
    }
    this.hash.update(chunk);
    done(null, chunk);
  }
}

export class BundleStore {
  readonly maxBytes: number;
  private readonly dir: string;
  /** Unpacks in flight by hash: a second upload of the same bytes waits for the first. */
  private readonly unpacking = new Map<string, Promise<void>>();
  /** Bundles collect() is removing: an ingest of the same content waits for the removal, then unpacks it afresh. */
  private readonly removing = new Map<string, Promise<void>>();
  private staged = 0;
  /** Bundles uploaded but not yet referenced by a stored version: collect() leaves them (see release). */
  private readonly pinned = new Map<string, number>();

  constructor(private readonly options: BundleStoreOptions) {
    this.dir = options.dir;
    this.maxBytes = options.maxBytes ?? DEFAULT_MAX_BUNDLE_BYTES;
  }

  /** The host directory of an unpacked bundle (bound read-only at BUNDLE_MOUNT). */
  pathOf(sha256: string): string {
    if (!SHA256.test(sha256)) throw new Error(`not a bundle hash: ${sha256}`);
    return join(this.dir, sha256);
  }

  /** Whether it is unpacked here (one being removed is not: a caller unpacks it again, after the removal). */
  async has(sha256: string): Promise<boolean> {
    if (this.removing.has(sha256)) return false;
    return stat(this.pathOf(sha256)).then(
      (s) => s.isDirectory(),
      () => false,
    );
  }

  /**
   * Reads a tar archive from `upload` (at most maxBytes), checks it, and unpacks it unless the same content is there.
   * Throws PAYLOAD_TOO_LARGE past the limit and BUNDLE_INVALID (naming the entry) for an unsafe or corrupt archive.
   * The bundle stays pinned (kept by collect()) until `release` is called: call it once the version is stored or not.
   */
  async ingest(upload: Readable, options: { key?: string } = {}): Promise<BundleInfo> {
    await mkdir(this.dir, { recursive: true, mode: 0o711 });
    const stage = join(this.dir, `.stage-${process.pid}-${++this.staged}-${Math.random().toString(36).slice(2, 8)}`);
    await mkdir(stage, { mode: 0o700 });
    try {
      await chown(stage, this.options.unpackUid ?? 65534, this.options.unpackGid ?? 65534);
      const hash = new HashAndLimit(this.maxBytes);
      const guard = new TarGuard();
      const tar = spawn(
        this.options.setprivPath ?? 'setpriv',
        [
          `--reuid=${this.options.unpackUid ?? 65534}`,
          `--regid=${this.options.unpackGid ?? 65534}`,
          '--clear-groups',
          this.options.tarPath ?? 'tar',
          // No owners or modes from the archive (modes are normalised below); links created after the files
          // (GNU tar's placeholders), so no file is written through a link of the same archive.
          '-x', '--no-same-owner', '--no-same-permissions', '--delay-directory-restore', '-C', stage, '-f', '-',
        ],
        { stdio: ['pipe', 'ignore', 'pipe'] },
      );
      let stderr = '';
      tar.stderr.setEncoding('utf8').on('data', (text: string) => {
        if (stderr.length < 4096) stderr += text;
      });
      const exited = new Promise<number>((resolve, reject) => {
        tar.on('error', reject);
        tar.on('close', (code) => resolve(code ?? 128));
      });
      try {
        await pipeline(upload, hash, guard, intoTar(tar.stdin));
      } catch (error) {
        tar.kill('SIGKILL');
        await exited.catch(() => undefined);
        throw asBundleError(error);
      }
      const code = await exited;
      if (code !== 0) {
        throw new KindlingError('BUNDLE_INVALID', `unpacking the bundle failed: ${stderr.trim().split('\n').pop()?.slice(0, 300) || `tar exited with ${code}`}`);
      }
      // A dependency layer is kept under its lockfile's hash (`key`), not its archive's: the same lockfile, one layer.
      const info: BundleInfo = { sha256: options.key ?? hash.digest(), bytes: hash.bytes, entries: guard.summary.entries };
      this.pinned.set(info.sha256, (this.pinned.get(info.sha256) ?? 0) + 1);
      try {
        await this.place(stage, info.sha256);
      } catch (error) {
        this.release(info.sha256);
        throw error;
      }
      return info;
    } finally {
      await rm(stage, { recursive: true, force: true }).catch(() => undefined);
    }
  }

  /** Hands the staged tree to root, readable by every uid, and moves it to its hash (unless it is there already). */
  private async place(stage: string, sha256: string): Promise<void> {
    const target = this.pathOf(sha256);
    const running = this.unpacking.get(sha256);
    if (running !== undefined) await running.catch(() => undefined);
    // Pinned already (by ingest): no removal starts from here on, but one that started before may still run.
    const removal = this.removing.get(sha256);
    if (removal !== undefined) await removal.catch(() => undefined);
    if (await this.has(sha256)) return;
    const work = (async () => {
      // chown/chmod -R do not follow symlinks met during the walk (-h: nor the links themselves).
      await run('chown', ['-hR', '0:0', stage]);
      await run('chmod', ['-R', 'u+rwX,go+rX,go-w', stage]);
      // The mount point of a dependency layer (bound at /work/node_modules over this read-only tree) must exist.
      // Likewise a python layer's, at /work/.deps, in a tree with a requirements.txt.
      if (this.options.nodeModulesMountPoint === true) {
        for (const [file, mountPoint] of [['package-lock.json', 'node_modules'], ['requirements.txt', '.deps']] as const) {
          if (await stat(join(stage, file)).then((s) => s.isFile(), () => false)) await mkdir(join(stage, mountPoint), { recursive: true, mode: 0o755 }).catch(() => undefined);
        }
      }
      await rename(stage, target);
    })();
    this.unpacking.set(sha256, work);
    try {
      await work;
    } finally {
      this.unpacking.delete(sha256);
    }
  }

  /** Unpins a bundle `ingest` returned (its version was stored, or the deploy failed). */
  release(sha256: string): void {
    const count = (this.pinned.get(sha256) ?? 0) - 1;
    if (count > 0) this.pinned.set(sha256, count);
    else this.pinned.delete(sha256);
  }

  /**
   * Removes unpacked bundles no version refers to (and stale staging dirs). `referenced` is a set taken before, or a
   * question asked of each bundle just before it goes. Returns the hashes removed.
   */
  async collect(referenced: ReadonlySet<string> | ((sha256: string) => boolean)): Promise<string[]> {
    const kept = typeof referenced === 'function' ? referenced : (sha256: string) => referenced.has(sha256);
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const removed: string[] = [];
    for (const name of names) {
      if (this.unpacking.has(name) || this.pinned.has(name) || this.removing.has(name)) continue;
      if (SHA256.test(name) ? kept(name) : !name.startsWith('.stage-') || name.startsWith(`.stage-${process.pid}-`)) continue;
      // Marked before the first await: an ingest of this content that pins it from now on waits for the removal
      // instead of taking the directory that is going away.
      const removal = rm(join(this.dir, name), { recursive: true, force: true });
      this.removing.set(name, removal);
      try {
        await removal;
      } finally {
        this.removing.delete(name);
      }
      if (SHA256.test(name)) removed.push(name);
    }
    return removed;
  }
}

/**
 * A writable that passes the archive on to tar's stdin and, once tar has exited, takes what is left without it.
 * GNU tar reads a pipe in whole records (20 blocks) and exits at the end-of-archive blocks without waiting for end of
 * file: when the archive ends on a record boundary, tar can exit before this side has ended its stdin, and Node
 * destroys the stdin of an exited child. Piped straight into tar.stdin, that failed a good bundle with "Premature
 * close" (1 in 20 sizes, when the end of the upload came late). Whether the archive was complete is tar's exit code;
 * the upload is still read to its end, so its hash and size are the whole file's.
 */
function intoTar(stdin: Writable): Writable {
  let exited = false;
  /** The callback of the chunk in flight (one at a time), called once tar's pipe took it or tar is gone. */
  let pending: (() => void) | null = null;
  const release = (): void => {
    const done = pending;
    pending = null;
    done?.();
  };
  const gone = (): void => {
    exited = true;
    release();
  };
  stdin.on('close', gone);
  // EPIPE when tar exits during a write: tar's exit code says what went wrong.
  stdin.on('error', gone);
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      if (exited) {
        done();
        return;
      }
      pending = () => done();
      stdin.write(chunk, release);
    },
    final(done) {
      if (exited) {
        done();
        return;
      }
      pending = () => done();
      stdin.once('finish', release);
      stdin.end();
    },
  });
}

function asBundleError(error: unknown): unknown {
  if (error instanceof KindlingError && error.code === 'SANDBOX_TAR_INVALID') {
    return new KindlingError('BUNDLE_INVALID', error.message.replace(/target directory/g, 'bundle'), { details: error.details ?? {} });
  }
  if (error instanceof KindlingError) return error;
  return new KindlingError('BUNDLE_INVALID', `the bundle could not be read: ${(error as Error).message}`);
}

function run(command: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${command} failed: ${stderr.trim().slice(0, 300)}`))));
  });
}
