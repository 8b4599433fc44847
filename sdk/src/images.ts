import { APIResource, call, sendDelete, type RequestOptions } from './resource.js';
import type { CustomImageInfo, CustomImageSpec } from './types.js';

const imagePath = (name: string): string => `/v1/images/${encodeURIComponent(name)}`;

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
    await sendDelete(this.http, imagePath(name), options);
  }
}
