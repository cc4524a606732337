// ProcessRef (src/util/proc.ts): a pidfd-backed process handle — signals reach the process it
// was taken on and never a later process that reuses its pid; zombies count as exited; the fd
// is closed with the last hold.
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import type { Writable } from 'node:stream';
import { isOwnThread, ProcessGoneError, ProcessRef } from '../src/util/proc.js';
import { exitOf, spawnWithPid } from './helpers/pidreuse.js';
import { sleep } from './helpers/mount.js';

const procs: ChildProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) {
    p.kill('SIGKILL');
    await exitOf(p);
  }
});
function sleeper(): ChildProcess {
  const p = spawn('sleep', ['600'], { stdio: 'ignore' });
  procs.push(p);
  return p;
}
/** Number of pidfds this process holds. */
function pidfds(): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[pidfd]') n++;
    } catch {
      /* the fd of readdir itself */
    }
  }
  return n;
}

describe('ProcessRef', () => {
  it('signals the live process it was taken on', async () => {
    const p = sleeper();
    const ref = ProcessRef.open(p.pid!);
    expect(ref.pid).toBe(p.pid);
    expect(ref.exited()).toBe(false);
    expect(ref.signal('SIGBUS')).toBe(true);
    expect(await exitOf(p)).toMatchObject({ signal: 'SIGBUS' });
    expect(ref.exited()).toBe(true);
    expect(ref.signal('SIGKILL')).toBe(false); // gone: ESRCH, not an error
    ref.close();
  }, 20_000);

  it('a thread id gives its process', () => {
    const tids = readdirSync('/proc/self/task')
      .map(Number)
      .filter((t) => t !== process.pid);
    expect(tids.length).toBeGreaterThan(0);
    const ref = ProcessRef.open(tids[0]!);
    expect(ref.pid).toBe(process.pid);
    ref.close();
  });

  it('refuses a process that is gone or a zombie', async () => {
    const base = pidfds();
    const p = sleeper();
    p.kill('SIGKILL');
    await exitOf(p); // reaped
    expect(() => ProcessRef.open(p.pid!)).toThrow(ProcessGoneError);
    // a zombie: sh's background child, exiting (on a byte from fd 3) only once sh has become
    // `sleep`, which never reaps it
    const sh = spawn('sh', ['-c', 'head -c1 <&3 >/dev/null & echo $!; exec sleep 600 3<&-'], { stdio: ['ignore', 'pipe', 'ignore', 'pipe'] });
    procs.push(sh);
    const zpid = Number(await new Promise<string>((resolve) => sh.stdout!.once('data', (d: Buffer) => resolve(d.toString()))));
    const comm = () => readFileSync(`/proc/${sh.pid}/comm`, 'latin1').trim();
    for (let i = 0; i < 1000 && comm() !== 'sleep'; i++) await sleep(10);
    expect(comm()).toBe('sleep');
    (sh.stdio[3] as Writable).write('x');
    const state = () => {
      const st = readFileSync(`/proc/${zpid}/stat`, 'latin1');
      return st.charAt(st.lastIndexOf(')') + 2);
    };
    for (let i = 0; i < 500 && state() !== 'Z'; i++) await sleep(10);
    expect(state()).toBe('Z');
    expect(() => ProcessRef.open(zpid)).toThrow(/exited/);
    expect(pidfds()).toBe(base); // refused opens leave no fd behind
  }, 20_000);

  it('never signals a process that reused the pid', async () => {
    const a = sleeper();
    const ref = ProcessRef.open(a.pid!);
    a.kill('SIGKILL');
    await exitOf(a);
    // >>> an innocent process gets a's pid
    const innocent = await spawnWithPid(a.pid!, 'sleep', ['600']);
    procs.push(innocent);
    expect(ref.exited()).toBe(true);
    expect(ref.signal('SIGKILL')).toBe(false);
    await sleep(200);
    expect(innocent.exitCode ?? innocent.signalCode).toBe(null); // still running
    ref.close();
  }, 30_000);

  it('closes the pidfd with the last hold, and is unusable after', () => {
    const base = pidfds();
    const ref = ProcessRef.open(process.pid);
    expect(pidfds()).toBe(base + 1);
    ref.hold();
    ref.close();
    expect(pidfds()).toBe(base + 1); // one hold left
    expect(ref.exited()).toBe(false);
    ref.close();
    expect(pidfds()).toBe(base);
    expect(ref.closed).toBe(true);
    expect(() => ref.exited()).toThrow(/after close/);
    expect(() => ref.signal('SIGKILL')).toThrow(/after close/);
  });
});

describe('isOwnThread', () => {
  it('every thread of this process (the main one and the others: libuv, V8) is ours; another process, or a gone pid, is not', async () => {
    const tids = readdirSync('/proc/self/task').map(Number);
    expect(tids.length).toBeGreaterThan(1); // Node runs helper threads
    for (const t of tids) expect(isOwnThread(t), `thread ${t}`).toBe(true);
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      expect(isOwnThread(child.pid!)).toBe(false);
      expect(isOwnThread(process.ppid)).toBe(false);
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    expect(isOwnThread(0)).toBe(false);
    expect(isOwnThread(-1)).toBe(false);
  });
});
