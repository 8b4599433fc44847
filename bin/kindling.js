#!/usr/bin/env -S node --initial-old-space-size=64
// A V8 heap flag for raw streams (measured: README, Benchmarks). Every read of a stream allocates a 64 KiB buffer;
// with node's defaults a 1 GiB stream through a fresh server ran 70-90 mark-compacts that freed nothing (the old
// generation's initial limit is tiny, ~30 MB, and 21 MB are live), 2.3-4.8 s of server CPU per GiB. A 64 MiB initial
// old generation leaves the buffers to scavenges: 1.7-2.6 s per GiB, and no measurable cost for small calls (a
// smaller young generation, --max-semi-space-size=1..4, saved a little more CPU on streams but added ~0.15 ms to the
// median warm invoke and cost 10-15% of the small-call throughput, side by side).
// scripts/start.sh and the bench pass the same flag; add it when you run `node bin/kindling.js` yourself.
import '../dist/src/main.js';
