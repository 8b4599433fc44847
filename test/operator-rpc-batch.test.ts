/**
 * The operator's JSON-RPC batching (--rpc-batch-size): a counting proxy sits between the real `kindling operator`
 * process and a real anvil. Jobs submitted together make the operator ask its checks together, and those go to the
 * node as JSON-RPC batches (fewer HTTP requests than calls); with --rpc-batch-size 0 every HTTP request carries one
 * call. Either way every job is answered on chain once.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { encodeFunctionData, type Hex } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { TANGLE_JOBS_ABI, encodeJobInputs } from '@kindling/sdk/tangle';
import { startAnvil } from './helpers/anvil.js';
import { chainOf, deployOn, startOperator, type ChainSetup } from './helpers/operator.js';
import { sandboxUnavailableReason } from './helpers/server.js';
import { waitFor } from './helpers/wait.js';

const skip = await sandboxUnavailableReason();

interface RpcProxy {
  url: string;
  /** HTTP requests and JSON-RPC calls seen since the last reset, and the largest batch. */
  counts: { requests: number; calls: number; largestBatch: number };
  close(): Promise<void>;
}

/** Forwards every POST to `target` and counts HTTP requests and the JSON-RPC calls they carry. */
async function startRpcProxy(target: string): Promise<RpcProxy> {
  const counts = { requests: 0, calls: 0, largestBatch: 0 };
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const body = Buffer.concat(chunks);
      const parsed = JSON.parse(body.toString()) as unknown;
      const calls = Array.isArray(parsed) ? parsed.length : 1;
      counts.requests++;
      counts.calls += calls;
      counts.largestBatch = Math.max(counts.largestBatch, calls);
      fetch(target, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
        .then(async (answer) => {
          response.writeHead(answer.status, { 'content-type': 'application/json' });
          response.end(Buffer.from(await answer.arrayBuffer()));
        })
        .catch(() => {
          response.writeHead(502);
          response.end();
        });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    counts,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Sends `jobs` job-0 submissions back to back (signed first, no waiting for receipts). */
async function submitTogether(setup: ChainSetup, jobs: number): Promise<void> {
  const account = privateKeyToAccount(setup.anvil.keys[9]!);
  const { createWalletClient, http } = await import('viem');
  const chain = chainOf(setup.anvil);
  const wallet = createWalletClient({ chain, transport: http(setup.anvil.rpcUrl), account });
  const data = encodeFunctionData({ abi: TANGLE_JOBS_ABI, functionName: 'submitJob', args: [setup.deployment.serviceId, 0, encodeJobInputs(0, ['alpine', ['echo', 'hi'], [], '0x'])] });
  const gas = ((await setup.publicClient.estimateGas({ account, to: setup.deployment.jobsContract, data })) * 3n) / 2n;
  const fees = await setup.publicClient.estimateFeesPerGas();
  let nonce = await setup.publicClient.getTransactionCount({ address: account.address, blockTag: 'pending' });
  const signed: Hex[] = [];
  for (let i = 0; i < jobs; i++) signed.push(await wallet.signTransaction({ account, chain, to: setup.deployment.jobsContract, data, gas, nonce: nonce++, maxFeePerGas: fees.maxFeePerGas * 2n, maxPriorityFeePerGas: fees.maxPriorityFeePerGas }));
  for (const serializedTransaction of signed) await setup.publicClient.sendRawTransaction({ serializedTransaction });
}

async function answered(setup: ChainSetup, jobs: number): Promise<number[]> {
  const counts: number[] = [];
  for (let callId = 0n; callId < BigInt(jobs); callId++) counts.push(Number((await setup.customer.getJobCall(setup.deployment.serviceId, callId)).resultCount));
  return counts;
}

for (const batchSize of [64, 0]) {
  test(`--rpc-batch-size ${batchSize}: 16 jobs submitted together are all answered once; ${batchSize > 0 ? 'the checks go to the node as JSON-RPC batches' : 'each HTTP request carries one call'}`, { skip: skip ?? false }, async () => {
    const anvil = await startAnvil();
    const proxy = await startRpcProxy(anvil.rpcUrl);
    let operator: Awaited<ReturnType<typeof startOperator>> | null = null;
    try {
      const setup = await deployOn(anvil);
      // The operator (only it) reaches the node through the proxy.
      operator = await startOperator({ ...setup, anvil: { ...anvil, rpcUrl: proxy.url } }, 1, { args: ['--capacity', '16', '--rpc-batch-size', String(batchSize)] });
      proxy.counts.requests = proxy.counts.calls = proxy.counts.largestBatch = 0;
      const jobs = 16;
      await submitTogether(setup, jobs);
      await waitFor(async () => (await answered(setup, jobs)).every((count) => count > 0), { timeoutMs: 60_000, intervalMs: 100, what: `${jobs} results on chain` });
      assert.deepEqual(await answered(setup, jobs), Array(jobs).fill(1));
      const { requests, calls, largestBatch } = proxy.counts;
      if (batchSize === 0) {
        assert.equal(largestBatch, 1, `an HTTP request carried ${largestBatch} calls with batching off`);
        assert.equal(requests, calls);
      } else {
        // A job's checks are 4 reads asked at once, and the jobs of one poll are checked in the same turn.
        assert.ok(largestBatch >= 4, `the largest batch held ${largestBatch} calls`);
        assert.ok(requests < calls, `${requests} HTTP requests for ${calls} calls`);
        assert.ok(largestBatch <= batchSize);
      }
    } finally {
      try {
        await operator?.stop();
        await operator?.remove();
      } finally {
        await proxy.close();
        await anvil.stop();
      }
    }
  });
}
