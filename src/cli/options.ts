/** Small helpers shared by the CLI's commands. */
import { KindlingError as SdkError } from '@kindling/sdk';

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

/** Runs an SDK call; a server-side error is one line on stderr and exit code 2. */
export async function guarded(action: () => Promise<void>): Promise<void> {
  try {
    await action();
  } catch (error) {
    if (error instanceof SdkError) {
      process.stderr.write(`kindling: ${error.code}: ${error.message}\n`);
      process.exitCode = 2;
      return;
    }
    throw error;
  }
}
