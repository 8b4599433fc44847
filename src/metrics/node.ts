import { statfs } from 'node:fs/promises';

/** Longest --node-name: a host name (253) fits; anything longer is a mistake, not a name. */
export const MAX_NODE_NAME_LENGTH = 253;

/**
 * Checks a --node-name (the `node` label of every metric): Prometheus takes any text as a label value, but an empty one
 * drops the label and control characters break dashboards and alert messages. Returns the name or throws saying why.
 */
export function checkNodeName(name: string): string {
  if (name.length === 0) throw new Error('--node-name must not be empty (it is the node label of every metric; default: the host name)');
  if (name.length > MAX_NODE_NAME_LENGTH) throw new Error(`--node-name is ${name.length} characters long; at most ${MAX_NODE_NAME_LENGTH}`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) throw new Error('--node-name must not contain control characters (newlines, tabs); use letters, digits, "-", "." or "_"');
  return name;
}

/**
 * Free and total bytes of the filesystem that holds `path`. Free is what an unprivileged process may still write
 * (statfs bavail): the root-reserved blocks are not counted, so an alert fires before the server runs out of room.
 */
export async function filesystemSpace(path: string): Promise<{ freeBytes: number; sizeBytes: number } | null> {
  try {
    const stats = await statfs(path);
    return { freeBytes: stats.bavail * stats.bsize, sizeBytes: stats.blocks * stats.bsize };
  } catch {
    // The data dir gone or unreadable: no number rather than a made-up one (the gauges read NaN).
    return null;
  }
}
