import type { HttpClient } from './http.js';
import { APIResource, type RequestOptions } from './resource.js';
import type { CustomImageInfo, CustomImageSpec } from './types.js';

const imagePath = (name: string): string => `/v1/images/${encodeURIComponent(name)}`;

function call(options: RequestOptions): { signal?: AbortSignal; timeoutMs?: number } {
  const out: { signal?: AbortSignal; timeoutMs?: number } = {};
  if (options.signal !== undefined) out.signal = options.signal;
  if (options.requestTimeoutMs !== undefined) out.timeoutMs = options.requestTimeoutMs;
  return out;
}

/** Options of `images.create()`. */
export interface CreateImageOptions extends RequestOptions {
  /** A tar of the files to add (they go to `spec.filesDest`, default /opt/NAME). */
  files?: Uint8Array | Blob | ReadableStream<Uint8Array>;
  /** Resolve once the build ended (ready, or `ImageBuildFailedError`); default true. `false`: resolve while it builds. */
  wait?: boolean;
  /** How often `wait` asks for the status, in ms; default 1000. */
  pollIntervalMs?: number;
}

/** A custom image's build failed: `image` is its record (status `failed`, `error`, the end of its `log`). */
export class ImageBuildFailedError extends Error {
  constructor(readonly image: CustomImageInfo) {
    super(`custom image "${image.name}" failed to build: ${image.error ?? 'unknown error'}`);
    this.name = 'ImageBuildFailedError';
  }
}

/**
 * `/v1/images`: custom images, a built-in image plus Debian packages and files, built by the server. Requests then
 * name one as `image: "kindling/NAME"` (one-off executions, command functions, persistent sandboxes).
 */
export class Images extends APIResource {
  /** `PUT /v1/images/NAME`; by default waits for the build (see `CreateImageOptions.wait`). */
  async create(name: string, spec: CustomImageSpec, options: CreateImageOptions = {}): Promise<CustomImageInfo> {
    const { files, wait, pollIntervalMs, ...rest } = options;
    let created: CustomImageInfo;
    if (files === undefined) {
      created = await this.http.json<CustomImageInfo>({ method: 'PUT', path: imagePath(name), body: spec, ...call(rest) });
    } else {
      const request = this.http.open(imagePath(name), call(rest));
      try {
        const response = await this.http.send(request, { method: 'PUT', path: imagePath(name), rawBody: files, contentType: 'application/x-tar', headers: { 'kindling-image-spec': JSON.stringify(spec) } });
        try {
          created = (await response.json()) as CustomImageInfo;
        } catch (err) {
          throw request.toError(err);
        }
      } finally {
        request.dispose();
      }
    }
    return wait === false ? created : this.waitReady(name, { ...rest, ...(pollIntervalMs === undefined ? {} : { pollIntervalMs }) });
  }

  /** Polls `GET /v1/images/NAME` until the build ended: the ready image, or `ImageBuildFailedError`. */
  async waitReady(name: string, options: RequestOptions & { pollIntervalMs?: number } = {}): Promise<CustomImageInfo> {
    for (;;) {
      const image = await this.get(name, options);
      if (image.status === 'ready') return image;
      if (image.status === 'failed') throw new ImageBuildFailedError(image);
      await new Promise((resolve) => setTimeout(resolve, options.pollIntervalMs ?? 1000));
      options.signal?.throwIfAborted();
    }
  }

  /** `GET /v1/images`: the caller's tenant's images and the shared ones. */
  async list(options: RequestOptions = {}): Promise<CustomImageInfo[]> {
    return (await this.http.json<{ images: CustomImageInfo[] }>({ method: 'GET', path: '/v1/images', ...call(options) })).images;
  }

  /** `GET /v1/images/NAME`, with the end of its build log; `NotFoundError` when there is none. */
  get(name: string, options: RequestOptions = {}): Promise<CustomImageInfo> {
    return this.http.json<CustomImageInfo>({ method: 'GET', path: imagePath(name), ...call(options) });
  }

  /** `DELETE /v1/images/NAME`. */
  async delete(name: string, options: RequestOptions = {}): Promise<void> {
    await deleteImage(this.http, imagePath(name), options);
  }
}

async function deleteImage(http: HttpClient, path: string, options: RequestOptions): Promise<void> {
  const request = http.open(path, call(options));
  try {
    const response = await http.send(request, { method: 'DELETE', path });
    await response.arrayBuffer().catch(() => undefined);
  } finally {
    request.dispose();
  }
}
