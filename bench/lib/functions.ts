/** Deploying a bundle and invoking a function over plain HTTP, timed from the client (shared by the bench groups). */

/** PUT of a tar with its spec in the header; the ms until the deploy answered (after its build). */
export async function deploy(url: string, name: string, tar: Buffer, spec: Record<string, unknown>): Promise<number> {
  const started = performance.now();
  const response = await fetch(`${url}/v1/functions/${name}`, { method: 'PUT', body: new Uint8Array(tar), headers: { 'content-type': 'application/x-tar', 'kindling-function-spec': JSON.stringify(spec) } });
  const text = await response.text();
  const ms = performance.now() - started;
  if (response.status !== 201 && response.status !== 200) throw new Error(`deploy of ${name} answered ${response.status}: ${text.slice(0, 300)}`);
  return ms;
}

/** One invocation with the body "x"; its ms, whether it was a cold start, and its output. */
export async function invoke(url: string, name: string): Promise<{ ms: number; cold: boolean; body: string }> {
  const started = performance.now();
  const response = await fetch(`${url}/v1/functions/${name}/invoke`, { method: 'POST', body: 'x' });
  const body = await response.text();
  const ms = performance.now() - started;
  if (response.status !== 200 || response.headers.get('x-kindling-exit-code') !== '0') throw new Error(`invoke of ${name} answered ${response.status}: ${body.slice(0, 300)}`);
  return { ms, cold: response.headers.get('x-kindling-cold-start') === 'true', body };
}
