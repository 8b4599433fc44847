/**
 * /v1/images: custom images (src/orchestrator/custom-images.ts). PUT creates or replaces one and answers 202 while
 * it builds; GET lists the caller's tenant's images and the shared ones, or shows one with its build log; DELETE
 * removes it. Thin: HTTP <-> the service.
 */
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type, type Static } from '@sinclair/typebox';
import type { CustomImageService } from '../../orchestrator/custom-images.js';
import { ErrorResponseSchema } from '../schemas.js';
import { parseSpecHeader } from '../spec-header.js';
import { IMAGE_SHORT_NAMES } from '../../images/recipes.js';

const errors = { '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema };
const tags = ['images'];
const TAR_TYPES = ['application/x-tar', 'application/tar'];
const SPEC_HEADER = 'kindling-image-spec';

export const ImageSpecSchema = Type.Object(
  {
    from: Type.String({ description: `The built-in image it starts from: ${IMAGE_SHORT_NAMES.join(', ')} (or a runtime name)`, examples: ['python'] }),
    apt: Type.Optional(Type.Array(Type.String({ maxLength: 100 }), { maxItems: 64, description: "Debian packages installed on top of the base image's (from the server's Debian mirror)", examples: [['python3-numpy']] })),
    filesDest: Type.Optional(Type.String({ maxLength: 200, description: 'With a tar body: the directory its files go to, under /opt, /srv or /usr/local; default /opt/NAME' })),
    shared: Type.Optional(Type.Boolean({ description: 'The admin key only: an image every tenant may use' })),
  },
  { additionalProperties: false },
);
type ImageSpec = Static<typeof ImageSpecSchema>;

const FilesSchema = Type.Union([Type.Null(), Type.Object({ sha256: Type.String(), bytes: Type.Integer(), entries: Type.Integer(), dest: Type.String() })]);
export const ImageSchema = Type.Object({
  name: Type.String(),
  image: Type.String({ description: 'What requests name as "image": kindling/NAME' }),
  shared: Type.Boolean(),
  from: Type.String(),
  apt: Type.Array(Type.String()),
  files: FilesSchema,
  forFunctions: Type.Boolean({ description: 'Made by a deploy for functions\' Debian packages ("apt"): removed by the server once no kept function version uses it' }),
  status: Type.Union([Type.Literal('building'), Type.Literal('ready'), Type.Literal('failed')]),
  error: Type.Union([Type.String(), Type.Null()]),
  sizeBytes: Type.Union([Type.Integer(), Type.Null()]),
  recipeHash: Type.String(),
  createdAt: Type.String(),
  finishedAt: Type.Union([Type.String(), Type.Null()]),
  log: Type.Optional(Type.String({ description: 'The end of the build log (GET of one image)' })),
});
const ImageListSchema = Type.Object({ images: Type.Array(ImageSchema) });
const NameParams = Type.Object({ name: Type.String({ maxLength: 100 }) });
type NameParamsT = Static<typeof NameParams>;


export function registerImageRoutes(app: FastifyInstance, options: { images: CustomImageService }): void {
  const images = options.images;

  app.get('/v1/images', { schema: { tags, summary: "The caller's tenant's custom images and the shared ones", response: { 200: ImageListSchema, ...errors } } }, async (request) => ({
    images: images.list(request.principal),
  }));

  app.get<{ Params: NameParamsT }>(
    '/v1/images/:name',
    { schema: { tags, summary: 'One custom image: its definition, build status, size, error and the end of its build log', params: NameParams, response: { 200: ImageSchema, ...errors } } },
    async (request) => images.get(request.principal, request.params.name),
  );

  app.delete<{ Params: NameParamsT }>(
    '/v1/images/:name',
    { schema: { tags, summary: 'Delete a custom image (its rootfs, Docker image and ext4 file); 409 IMAGE_IN_USE while a kept function version runs on it', params: NameParams, response: { 204: Type.Null(), ...errors } } },
    async (request, reply) => {
      await images.delete(request.principal, request.params.name);
      reply.code(204);
      return null;
    },
  );

  // JSON (the spec) or a tar of the files to add (the spec in the Kindling-Image-Spec header), streamed to disk.
  void app.register(async (scope) => {
    const asStream = (_request: FastifyRequest, payload: IncomingMessage, done: (error: Error | null, body?: unknown) => void): void => done(null, payload);
    scope.addContentTypeParser(TAR_TYPES, asStream);
    scope.put<{ Params: NameParamsT; Body: ImageSpec }>(
      '/v1/images/:name',
      {
        schema: {
          tags,
          summary: 'Create (or replace) a custom image: a built-in image plus Debian packages and files; 202 while it builds',
          description:
            'JSON body: the spec. With files: a tar as the body (Content-Type application/x-tar) and the spec as JSON in the Kindling-Image-Spec header; entries that leave the directory (absolute, "..", links out), devices and fifos: 400 IMAGE_FILES_INVALID. The build runs in the background (GET /v1/images/NAME: status building, ready or failed with the error and log). Requests then name it as image "kindling/NAME" on every executor of this server.',
          params: NameParams,
          body: { content: { 'application/json': { schema: ImageSpecSchema }, 'application/x-tar': { schema: {} } } },
          headers: { type: 'object', properties: { 'kindling-image-spec': { type: 'string', description: 'The spec (JSON) when the body is a tar of files' } } },
          response: { 202: ImageSchema, ...errors },
        },
      },
      async (request, reply: FastifyReply) => {
        const contentType = (request.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
        const withFiles = TAR_TYPES.includes(contentType);
        try {
          const spec = withFiles
            ? parseSpecHeader(request.headers[SPEC_HEADER], ImageSpecSchema, 'Kindling-Image-Spec', 'an image with files needs its spec as JSON in the Kindling-Image-Spec header, e.g. {"from":"python","apt":["python3-numpy"]}')
            : request.body;
          const created = await images.create(request.principal, request.params.name, spec, withFiles ? (request.body as unknown as IncomingMessage) : undefined);
          reply.code(202).header('location', `/v1/images/${created.name}`);
          return created;
        } catch (error) {
          if (withFiles) {
            const upload = request.body as unknown as IncomingMessage;
            if (!upload.complete) {
              upload.unpipe();
              upload.resume();
              reply.header('connection', 'close');
            }
          }
          throw error;
        }
      },
    );
  });
}
