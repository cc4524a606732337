// Commit → head/at latency: how soon after a commit wcfs shows the new head.
//
//   npm run bench -- latency     (or: node bench/bench-commit-latency.js after npm run build)
//
// This process is the writer (our FileStorage writer on a Data.fs in /dev/shm, where fsync
// is free, so "commit() returned" ≈ "the txn is complete in the file"); `wcfs serve` runs with
// its default storage poll interval (1 s) in a child process. 100 commits (after 5 warm-up
// ones), 10–30 ms apart, each change one 4 KiB block of a small ZBigFile that wcfs has not
// opened (so no invalidation work: bench-invalidation.js measures that). After each commit
// this process polls head/at back to back (one open handle, one DIRECT_IO READ per poll) until
// it shows the new tid. Prints p50/p90/p99/max of commit-started → head/at (an upper bound of
// "txn complete in the file → head/at": the writer finishes its txn at most a commit() before),
// of commit-returned → head/at, of the commit itself, and of one poll of an idle server (the
// resolution), and how often the server had the new head before commit() even returned.
// Latencies far below the poll interval mean inotify (fs.watch) woke the server.
// To compare without inotify's help there is no switch in the server; to see the effect of
// the poll interval: WCFS_BENCH_SERVE_ARGS="--poll-ms 50" npm run bench -- latency.
import path from 'node:path';
import { commitLatencies, hex16, headPoller, makeDb, nowMs, quantile, runMain, startWcfs, table, tools, workDir } from './util.js';

const N = 100;
const WARMUP = 5;

async function main() {
  await tools();
  const dir = workDir('latency');
  const dbPath = path.join(dir, 'data.fs');
  const { storage, small } = await makeDb(dbPath, { nblk: 1 });
  const wcfs = await startWcfs(dbPath, path.join(dir, 'wcfs'));
  const poll = await headPoller(wcfs.mnt);
  await poll.waitFor(hex16(storage.head()));

  // resolution: one poll of an idle server
  const idle = [];
  for (let i = 0; i < 200; i++) {
    const t = nowMs();
    await poll.read();
    idle.push(nowMs() - t);
  }

  const { afterStart, afterReturn, commitMs, firstPoll } = await commitLatencies(storage, small, poll, { warmup: WARMUP, n: N });
  await poll.close();
  await wcfs.stop();

  const row = (name, xs) => [name, ...[0.5, 0.9, 0.99, 1].map((q) => quantile(xs, q).toFixed(2))];
  const args = (process.env.WCFS_BENCH_SERVE_ARGS ?? '').trim();
  console.log(`commit → head/at, ${N} commits, wcfs serve ${args || '(default poll interval 1000 ms)'}; ms`);
  table(
    ['what', 'p50', 'p90', 'p99', 'max'],
    [
      row('commit started → head/at', afterStart),
      row('commit returned → head/at', afterReturn),
      row('commit() itself (writer)', commitMs),
      row('one head/at poll, idle server', idle),
    ],
  );
  console.log(`head/at already showed the new tid at the first poll after commit() returned: ${firstPoll}/${N} commits`);
  const p99 = quantile(afterStart, 0.99);
  console.log(`commit → head/at p99 ${p99.toFixed(2)} ms vs poll interval: ${p99 < 100 ? 'woken by inotify' : 'looks like polling'}`);
}

runMain(main);
