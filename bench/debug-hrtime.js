// Preload for `wcfs serve` in benchmarks (node --import bench/debug-hrtime.js, with DEBUG=…):
// every `debug` line starts with process.hrtime.bigint() — ns of CLOCK_MONOTONIC, the clock of
// the bench's nowMs() too — instead of an ISO date with ms resolution.
import createDebug from 'debug';

createDebug.formatArgs = function formatArgs(args) {
  args[0] = `${process.hrtime.bigint()} ${this.namespace} ${args[0]}`;
};
