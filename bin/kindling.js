#!/usr/bin/env -S node --max-semi-space-size=4 --initial-old-space-size=64
// V8 heap flags for raw streams (measured: README, Benchmarks). Every read of a stream allocates a 64 KiB buffer; with
// node's defaults a 1 GiB stream through a fresh server caused 70-90 mark-compacts (freeing nothing on the heap: the
// old generation's initial limit is tiny) and 2.3-4.8 s of CPU per GiB instead of ~1.4-1.8 s. A 4 MiB young generation
// (default: up to 16) frees the buffers in scavenges; a 64 MiB initial old generation stops the pointless full GCs
// (4-5 per GiB). Cost: warm invokes ~0.15 ms more at the median (more scavenges), measured side by side.
// scripts/start.sh and the bench pass the same flags; add them when you run `node bin/kindling.js` yourself.
import '../dist/src/main.js';
