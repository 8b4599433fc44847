"""The Python SDK's rows of `npm run bench -- --only python` (run by bench/python.ts with Debian's python3):
warm invoke latency through the SDK vs raw httpx on the same server in the same run, and SIZE bytes streamed through
`cat` with execute_raw (throughput, peak RSS of this process). Prints one JSON object on stdout."""

import json
import resource
import statistics
import sys
import time

import httpx

from kindling import Kindling, RawResult

url, runs, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rss_start_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with Kindling(url) as k:
    k.functions.deploy("bench-py-echo", runtime="python", code="def h(b):\n    return b\n", handler="h", min_warm=1)
    for _ in range(20):
        k.functions.invoke("bench-py-echo", b"warm")
    sdk_ms, raw_ms = [], []
    with httpx.Client() as raw:
        # Interleaved, so that both see the same load on a shared machine.
        for _ in range(runs):
            t = time.perf_counter()
            assert k.functions.invoke("bench-py-echo", b"ping").body == b"ping"
            sdk_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            r = raw.post(url + "/v1/functions/bench-py-echo/invoke", content=b"ping", headers={"content-type": "application/octet-stream"})
            assert r.content == b"ping"
            raw_ms.append((time.perf_counter() - t) * 1000)
    k.functions.delete("bench-py-echo")

    block = bytes(range(256)) * 4096  # 1 MiB
    received = 0

    def sink(chunk: bytes) -> None:
        global received
        received += len(chunk)

    t = time.perf_counter()
    result = k.execute_raw({"image": "kindling/base", "command": ["cat"], "timeoutMs": 600_000}, (block for _ in range(size // len(block))), stdout=sink)
    seconds = time.perf_counter() - t
    assert isinstance(result, RawResult) and result.exit_code == 0 and received == size, (result, received)

print(json.dumps({
    "runs": runs,
    "sdkP50Ms": statistics.median(sdk_ms),
    "rawP50Ms": statistics.median(raw_ms),
    "sdkSamplesMs": sdk_ms,
    "rawSamplesMs": raw_ms,
    "streamBytes": size,
    "streamSeconds": seconds,
    "streamMiBps": size / 2**20 / seconds,
    "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "startRssMiB": rss_start_kib / 1024,
}))
