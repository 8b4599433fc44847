/**
 * The files a warm sandbox gets for the node agent are self-contained: copied flat under /.kindling, each module finds
 * what it imports (node-wrapper.js -> protocol.js -> frame.js), and they load and speak the protocol from there.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { missingImports, relativeImports, writeTree } from '../test/helpers/shipped-modules.js';
import { NODE_AGENT_MODULES, agentLaunch, genericAgentLaunch } from './files.js';
import type * as Protocol from './protocol.js';

describe('agent files', () => {
  for (const [label, launch] of [
    ['handler launch', agentLaunch('node', 'export function handler() { return 1; }\n', 'handler')],
    ['generic launch', genericAgentLaunch('node')],
  ] as const) {
    it(`${label}: ships every module of the node agent, and each one's relative imports`, () => {
      const files = new Map(launch.files.map((file) => [file.name, file.content]));
      for (const name of NODE_AGENT_MODULES) assert.ok(files.has(name), `${name} is shipped`);
      // The chain is really there (a check that finds no import at all would prove nothing).
      assert.ok(relativeImports(files.get('node-wrapper.js')!.toString()).includes('./protocol.js'));
      assert.ok(relativeImports(files.get('protocol.js')!.toString()).includes('./frame.js'));
      assert.deepEqual(missingImports(files), []);
    });
  }

  it('the shipped protocol loads from the sandbox layout and round-trips a frame', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'kindling-agent-files-'));
    try {
      const launch = genericAgentLaunch('node');
      await writeTree(dir, new Map(launch.files.map((file) => [file.name, file.content])));
      const shipped = (await import(pathToFileURL(path.join(dir, 'protocol.js')).href)) as typeof Protocol;
      const decoder = new shipped.FrameDecoder();
      const [frame, ...rest] = decoder.push(shipped.encodeFrame(shipped.FrameType.HELLO, 0, '{"version":2}'));
      assert.equal(rest.length, 0);
      assert.equal(frame?.type, shipped.FrameType.HELLO);
      assert.equal(frame?.payload.toString(), '{"version":2}');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
