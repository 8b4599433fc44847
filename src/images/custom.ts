/**
 * Custom images: a built-in image plus Debian packages and files, built by the same recipe machinery (mmdebstrap,
 * the rootfs, the Docker image, the ext4 file), owned by one tenant or shared by the admin.
 *
 * On disk an image lives beside the built-in ones as `${imagesDir}/${short}/` with `custom.json` (its definition and
 * build state) and `files.tar` (its files, checked on upload). The short name carries the owner, so two tenants' `ml`
 * never meet: `u.<tenant>.<name>` for a tenant's, `s.<name>` for a shared one. Tenant and image names are lower-case
 * letters, digits and dashes, so the dots cannot be forged and executors take the short name like any other
 * (`kindling/u.acme.ml`).
 */
import * as fs from 'node:fs/promises';
import path from 'node:path';
import { KindlingError } from '../core/errors.js';
import { RUNTIME_ALIASES, runtimeImage } from '../orchestrator/runtimes.js';
import { IMAGE_RECIPES, IMAGE_SHORT_NAMES, findRecipe, type ImageRecipe, type ImageShortName } from './recipes.js';

export const CUSTOM_IMAGE_NAME = /^[a-z0-9][a-z0-9-]{0,39}$/;
/** Debian policy: lower-case letters, digits, `+`, `-`, `.`; at least two characters, starting alphanumeric. */
export const DEBIAN_PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]{1,99}$/;
export const MAX_CUSTOM_PACKAGES = 64;
/** Where a custom image's files may go: fresh directories under these, made by the build (no link of the image's). */
export const FILES_ROOTS = ['/opt/', '/srv/', '/usr/local/'] as const;
const FILES_DEST = /^\/(?:opt|srv|usr\/local)(?:\/[A-Za-z0-9._-]+)+$/;
/**
 * Names of the images a deploy makes for a function's Debian packages (`"apt"` in its spec or its bundle's
 * kindling.json): `pkgs-` + a hash of the base and the packages. Users cannot create names with this prefix.
 */
export const FUNCTION_IMAGE_PREFIX = 'pkgs-';
export const CUSTOM_RECORD_FILE = 'custom.json';
export const CUSTOM_FILES_TAR = 'files.tar';

export type CustomImageStatus = 'building' | 'ready' | 'failed';

/** What a user asks for. */
export interface CustomImageSpec {
  /** A built-in image by short, Docker or runtime name (`python`, `kindling/node20`, `go`). */
  from: string;
  /** Debian packages installed on top of the base image's. */
  apt?: string[];
  /** Where the uploaded files go; default `/opt/<name>`. */
  filesDest?: string;
}

/** custom.json: the definition and the state of its last build. */
export interface CustomImageRecord {
  name: string;
  /** The owning tenant, or null for a shared image (made by the admin, usable by every tenant). */
  tenant: string | null;
  short: string;
  /** What executors are given: `kindling/<short>`. */
  image: string;
  from: ImageShortName;
  apt: string[];
  files: { sha256: string; bytes: number; entries: number; dest: string } | null;
  status: CustomImageStatus;
  error: string | null;
  recipeHash: string;
  sizeBytes: number | null;
  createdAtMs: number;
  finishedAtMs: number | null;
  /** The end of the build's log (mmdebstrap's errors come last). */
  log: string;
  /**
   * Made by a deploy for functions' Debian packages (not by `kindling images create`): removed once no kept function
   * version uses it, and counted apart from the tenant's own images.
   */
  forFunctions?: boolean;
}

export function customShort(tenant: string | null, name: string): string {
  return tenant === null ? `s.${name}` : `u.${tenant}.${name}`;
}

/** Checks a request; throws a 400 that says what to change. Returns the base recipe and the package list. */
export function validateCustomSpec(name: string, spec: CustomImageSpec): { base: ImageRecipe; apt: string[]; dest: string } {
  if (!CUSTOM_IMAGE_NAME.test(name)) {
    throw new KindlingError('VALIDATION_FAILED', `image name "${name.slice(0, 80)}" must match ${CUSTOM_IMAGE_NAME.source} (lower-case letters, digits, dashes; at most 40)`, { details: { field: 'name' } });
  }
  if ((IMAGE_SHORT_NAMES as readonly string[]).includes(name) || findRecipe(name) !== undefined) {
    throw new KindlingError('VALIDATION_FAILED', `"${name}" names a built-in image or runtime; choose another name`, { details: { field: 'name' } });
  }
  if (name.startsWith(FUNCTION_IMAGE_PREFIX)) {
    throw new KindlingError('VALIDATION_FAILED', `image names starting with "${FUNCTION_IMAGE_PREFIX}" are those the server makes for functions' Debian packages; choose another name`, { details: { field: 'name' } });
  }
  // `python` and `node` mean what they mean as runtimes, the newest (kindling/python3.13, kindling/node20): a handler
  // of runtime `python` runs on an image --from python. `kindling/python` names bookworm's image.
  const from = typeof spec.from === 'string' && Object.hasOwn(RUNTIME_ALIASES, spec.from) ? runtimeImage(spec.from) : spec.from;
  const base = typeof from === 'string' ? findRecipe(from) : undefined;
  if (base === undefined) {
    throw new KindlingError('UNKNOWN_IMAGE', `"from" must name a built-in image: ${IMAGE_SHORT_NAMES.join(', ')}`, { details: { field: 'from', known: [...IMAGE_SHORT_NAMES] } });
  }
  const apt = validatePackages(spec.apt ?? [], 'apt');
  const dest = spec.filesDest ?? `/opt/${name}`;
  if (typeof dest !== 'string' || !FILES_DEST.test(dest) || dest.split('/').some((part) => part === '.' || part === '..')) {
    throw new KindlingError('VALIDATION_FAILED', `"filesDest" must be a directory under ${FILES_ROOTS.join(', ')} (e.g. /opt/${name}), without . or .. segments`, { details: { field: 'filesDest' } });
  }
  return { base, apt, dest };
}

/** Checks a list of Debian package names (`field` names it in the 400); returns it without duplicates, in its order. */
export function validatePackages(apt: unknown, field: string): string[] {
  if (!Array.isArray(apt) || apt.length > MAX_CUSTOM_PACKAGES) {
    throw new KindlingError('VALIDATION_FAILED', `"${field}" is a list of at most ${MAX_CUSTOM_PACKAGES} Debian package names`, { details: { field } });
  }
  for (const pkg of apt) {
    if (typeof pkg !== 'string' || !DEBIAN_PACKAGE_NAME.test(pkg)) {
      throw new KindlingError('VALIDATION_FAILED', `"${String(pkg).slice(0, 80)}" is not a Debian package name (lower-case letters, digits, + - .; no versions or options)`, { details: { field } });
    }
  }
  return [...new Set(apt as string[])];
}

/** The recipe of a custom image: its base's, with more packages and its files. */
export function customRecipe(short: string, name: string, base: ImageRecipe, apt: readonly string[], files: { tarball: string; sha256: string; dest: string } | null): ImageRecipe {
  const { aliases: _aliases, ...rest } = base;
  return {
    ...rest,
    short,
    name: `kindling/${short}`,
    tag: 'latest',
    description: `custom image ${name}: ${base.short}${apt.length > 0 ? ` + ${apt.join(' ')}` : ''}${files ? ` + files at ${files.dest}` : ''}`,
    packages: [...base.packages, ...apt.filter((pkg) => !base.packages.includes(pkg))],
    ...(files !== null ? { files } : {}),
  };
}

export function baseRecipe(short: ImageShortName): ImageRecipe {
  return IMAGE_RECIPES[short];
}

/** Every custom image record under imagesDir (a directory with custom.json). */
export async function readCustomRecords(imagesDir: string): Promise<CustomImageRecord[]> {
  let names: string[];
  try {
    names = await fs.readdir(imagesDir);
  } catch {
    return [];
  }
  const records: CustomImageRecord[] = [];
  for (const short of names.filter((n) => n.startsWith('u.') || n.startsWith('s.')).sort()) {
    try {
      records.push(JSON.parse(await fs.readFile(path.join(imagesDir, short, CUSTOM_RECORD_FILE), 'utf8')) as CustomImageRecord);
    } catch {
      // A directory without a readable record (removed half-way): not an image.
    }
  }
  return records;
}

/** Writes custom.json atomically (a reader sees the old or the new record, never half of one). */
export async function writeCustomRecord(imagesDir: string, record: CustomImageRecord): Promise<void> {
  const dir = path.join(imagesDir, record.short);
  await fs.mkdir(dir, { recursive: true, mode: 0o755 });
  const tmp = path.join(dir, `${CUSTOM_RECORD_FILE}.${process.pid}.tmp`);
  await fs.writeFile(tmp, JSON.stringify(record, null, 2));
  await fs.rename(tmp, path.join(dir, CUSTOM_RECORD_FILE));
}
