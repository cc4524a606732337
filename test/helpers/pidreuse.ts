// Pid reuse on demand (root only): the next process forked gets the pid written + 1 into
// /proc/sys/kernel/ns_last_pid — unless another process on the machine forks in between, so
// spawnWithPid retries until it gets the pid it asked for.
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';

/** `cmd args…` started as process `pid` (which must be free); throws after many misses. */
export async function spawnWithPid(pid: number, cmd: string, args: string[]): Promise<ChildProcess> {
  for (let i = 0; i < 200; i++) {
    writeFileSync('/proc/sys/kernel/ns_last_pid', String(pid - 1));
    const p = spawn(cmd, args, { stdio: 'ignore' });
    if (p.pid === pid) return p;
    p.kill('SIGKILL');
    await new Promise((r) => p.once('exit', r));
  }
  throw new Error(`could not get pid ${pid} (something else forks all the time)`);
}

/** Resolves once `p` has exited (at once if it already has). */
export function exitOf(p: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve({ code: p.exitCode, signal: p.signalCode });
  return new Promise((resolve) => p.once('exit', (code, signal) => resolve({ code, signal })));
}
