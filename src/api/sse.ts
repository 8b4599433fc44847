import type { ServerResponse } from 'node:http';

/** Writes one Server-Sent Event. Multi-line data becomes several `data:` lines, which clients join with "\n". */
export function writeSseEvent(response: ServerResponse, event: string, data: string): boolean {
  const lines = data.split(/\r\n|\r|\n/);
  let frame = `event: ${event}\n`;
  for (const line of lines) frame += `data: ${line}\n`;
  return response.write(`${frame}\n`);
}

export function startSse(response: ServerResponse, headers: Record<string, string>): void {
  response.writeHead(200, {
    ...headers,
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  // Flush headers now so the client sees the stream open before the first chunk.
  response.write(': stream open\n\n');
}
