// Preload for `wcfs serve` in benchmarks (node --expose-gc --import bench/gc-signal.js):
// SIGUSR2 runs a full garbage collection, so a memory figure taken after it (bench/util.js
// rssAnonAfterGc) is what the server retains — not garbage V8 has yet to collect. V8 gives
// freed heap back on its own only after ~20 s idle (its memory reducer): RssAnon sampled
// sooner moved by 2× between otherwise equal runs.
process.on('SIGUSR2', () => {
  if (typeof globalThis.gc !== 'function') throw new Error('bench/gc-signal.js: run node with --expose-gc');
  globalThis.gc();
});
