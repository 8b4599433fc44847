import { KindlingError } from '../core/errors.js';
import type { RuntimeName } from '../core/types.js';
import { RUNTIMES } from './runtimes.js';

/**
 * Image names of the FaaS blueprint Kindling descends from (its SDKs send Docker Hub names such as `alpine:latest` or
 * `python:3.11-slim`; its on-chain job 0 takes one too) mapped to the project's images. Kindling pulls nothing from a
 * registry: each name maps to an image built here from Debian packages, so only families with an equivalent are
 * accepted, and anything else is refused with the list rather than run in a different environment than asked.
 */
export type ImageAlias = { runtime: RuntimeName } | { image: string };

/** Names whose image is a plain userland with a POSIX shell: the project's base image. */
const BASE_FAMILIES = ['alpine', 'debian', 'ubuntu', 'busybox'] as const;
/** Names whose image is a language runtime: the runtime of that name (its image, its defaults). */
const RUNTIME_FAMILIES: Record<string, RuntimeName> = { python: 'python', node: 'node', rust: 'rust', golang: 'go', openjdk: 'java', amazoncorretto: 'java' };
/** Tags that name a version Kindling has (`node:18-slim`, `python:3.11`); other tags get the family's newest. */
const VERSIONED_TAGS: readonly { family: string; tag: RegExp; runtime: RuntimeName }[] = [
  { family: 'node', tag: /^20(?![0-9])/, runtime: 'node20' },
  { family: 'node', tag: /^18(?![0-9])/, runtime: 'node18' },
  { family: 'python', tag: /^3\.13(?![0-9])/, runtime: 'python3.13' },
  { family: 'python', tag: /^3\.11(?![0-9])/, runtime: 'python3.11' },
];
/** The official images of the TypeScript runtimes (`denoland/deno:2`, `oven/bun:1-slim`): those runtimes. */
const NAMESPACED_RUNTIMES: Record<string, RuntimeName> = { 'denoland/deno': 'deno', 'oven/bun': 'bun' };
const PROJECT_PREFIX = 'kindling/';
/** Longest name echoed back in an error (a name is short; the message must not carry an arbitrary blob). */
const MAX_ECHOED_CHARS = 100;

/** The accepted names, for messages and docs. */
export const ACCEPTED_IMAGE_NAMES: readonly string[] = [
  ...BASE_FAMILIES.map((family) => `${family}[:tag]`),
  ...[...Object.keys(RUNTIME_FAMILIES), ...Object.keys(NAMESPACED_RUNTIMES)].map((family) => `${family}[:tag]`),
  'kindling/<name>',
];

/**
 * `alpine`, `debian`, `ubuntu`, `busybox` (any tag) -> the base image; `python:*`, `node:*`, `rust:*` -> that runtime;
 * `golang:*` -> go; `openjdk:*`, `amazoncorretto:*` -> java; `denoland/deno:*`, `oven/bun:*` -> deno, bun;
 * a `kindling/...` name as is (the executor then says whether it exists). Anything else: UNKNOWN_IMAGE (400) listing
 * the accepted names. A tag picks a version Kindling has: `node:20*` -> node20, `node:18*` -> node18, `python:3.13*` ->
 * python3.13, `python:3.11*` -> python3.11; other tags get the family's newest (see docs/operator.md).
 */
export function resolveImageAlias(name: string): ImageAlias {
  if (name.startsWith(PROJECT_PREFIX) && name.length > PROJECT_PREFIX.length) return { image: name };
  const namespaced = /^([a-z0-9]+\/[a-z0-9]+)(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$/.exec(name)?.[1];
  if (namespaced !== undefined && Object.hasOwn(NAMESPACED_RUNTIMES, namespaced)) return { runtime: NAMESPACED_RUNTIMES[namespaced] as RuntimeName };
  const match = /^([a-z0-9]+)(?::([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?$/.exec(name);
  const family = match?.[1];
  if (family !== undefined) {
    if ((BASE_FAMILIES as readonly string[]).includes(family)) return { image: RUNTIMES.bash.image };
    const tag = match?.[2] ?? '';
    const versioned = VERSIONED_TAGS.find((entry) => entry.family === family && entry.tag.test(tag));
    if (versioned !== undefined) return { runtime: versioned.runtime };
    const runtime = RUNTIME_FAMILIES[family];
    if (runtime !== undefined) return { runtime };
  }
  const shown = name.length > MAX_ECHOED_CHARS ? `${name.slice(0, MAX_ECHOED_CHARS)}…` : name;
  throw new KindlingError('UNKNOWN_IMAGE', `image "${shown}" has no equivalent here; use one of ${ACCEPTED_IMAGE_NAMES.join(', ')} (see docs/operator.md, "Migrating from the FaaS blueprint")`, {
    details: { field: 'image', accepted: ACCEPTED_IMAGE_NAMES },
  });
}

/** The image an alias runs in. */
export function imageOfAlias(alias: ImageAlias): string {
  return 'runtime' in alias ? RUNTIMES[alias.runtime].image : alias.image;
}
