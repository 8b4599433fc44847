/** Small helpers shared by the CLI's commands. */

export async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string));
  return Buffer.concat(chunks);
}

/** commander collector for repeatable options (`-e A=1 -e B=2`). */
export const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** commander parser that turns an option's text into a finite number, or says which option was wrong. */
export function parseNumber(name: string): (value: string) => number {
  return (value) => {
    const parsed = Number(value);
    if (!Number.isFinite(parsed)) throw new Error(`${name} must be a number, got "${value}"`);
    return parsed;
  };
}
