#!/usr/bin/env -S node --max-semi-space-size=1
// --max-semi-space-size=1 (MiB): a small young generation. Raw streams allocate a 64 KiB buffer per read; with the
// default (up to 16 MiB) scavenges are rare, unfreed buffers pile up as external memory and V8 answers with a full
// mark-compact every ~64 MiB, which halved the throughput of 1 GiB streams (see README, Benchmarks).
import '../dist/src/main.js';
