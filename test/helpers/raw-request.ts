import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';

/** A JSON answer: an error's code and message, or the fields of a result. */
export type Json = { error: { code: string; message: string } } & Record<string, unknown>;

export interface RawAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  json: () => Json;
}

/**
 * An HTTP request with exactly these headers (Host included, which fetch would not let a test forge) and a body that
 * is already encoded (a JSON body is sent as `application/json` with its length; `headers` may override both).
 */
export function rawRequest(url: string, method: string, path: string, body: Buffer | string | undefined, headers: Record<string, string> = {}): Promise<RawAnswer> {
  const target = new URL(url);
  const payload = body === undefined ? undefined : typeof body === 'string' ? Buffer.from(body) : body;
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: target.hostname,
        port: target.port,
        method,
        path,
        headers: { ...(payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(payload.length) }), ...headers },
      },
      (response) => {
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => (text += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, text, json: () => JSON.parse(text) as Json }));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}
