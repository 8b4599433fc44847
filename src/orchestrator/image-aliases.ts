/**
 * Image names of the FaaS blueprint Kindling descends from (Docker Hub names such as `alpine:latest` or
 * `python:3.11-slim`) mapped onto the project's runtime images, so that jobs and SDK calls written for it run here
 * unchanged. A `kindling/...` name (or any other name) is used as is: the executor then says whether it has that image.
 */
import type { RuntimeName } from '../core/types.js';

export type ResolvedImage = { runtime: RuntimeName } | { image: string };

/** Distribution images whose shell and coreutils the base image (the bash runtime's) provides. */
const BASE_DISTRIBUTIONS = new Set(['alpine', 'debian', 'ubuntu', 'busybox']);
/** Language images: the name before the tag picks the runtime whatever the version (the project has one of each). */
const LANGUAGE_RUNTIMES: Record<string, RuntimeName> = { python: 'python', node: 'node', rust: 'rust' };

export function resolveImageAlias(name: string): ResolvedImage {
  if (name.startsWith('kindling/')) return { image: name };
  // `docker.io/library/python:3.11` and `library/python` name the same image as `python`.
  const repository = name.replace(/^(docker\.io\/)?(library\/)?/, '').split(/[:@]/, 1)[0]!;
  if (BASE_DISTRIBUTIONS.has(repository)) return { runtime: 'bash' };
  const runtime = LANGUAGE_RUNTIMES[repository];
  return runtime === undefined ? { image: name } : { runtime };
}
