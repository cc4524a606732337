// Commit processing under concurrent READs (issue 7 item 1): a writer commits changes to
// blocks 0-1 in a loop while plain readers drop the page cache and read those blocks again and
// again, with and without watchers that re-watch at head and ack every pin. head/at must
// follow the writer the whole time: a READ the kernel issued (holding its pages locked) must
// never wait for commit processing while commit processing waits for those pages.
//
// >>> writer: commit #0 #1 ← fill byte, as fast as it can, for RUN_S seconds
// >>> readers ×4: fadvise(DONTNEED) + pread(#0 #1), every page uniform
// >>> watchers ×k: watch <foid> @<head/at> every 20 ms, ack every pin
// <<< head/at never stays behind the writer for STALL_S seconds; ends at the last commit
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { hex16, type Tid } from '../src/zodb/ids.js';
import { sleep } from './helpers/mount.js';
import { repoRoot } from './helpers/paths.js';
import { BS, TDB } from './helpers/tdb.js';
import { stopAllServers } from './helpers/wcfs.js';

afterAll(stopAllServers, 30_000);

const RUN_S = 20;
const STALL_S = 10;
const NREADERS = 4;
const stressPy = path.join(repoRoot, 'test', 'helpers', 'stress.py');

interface Child {
  what: string;
  proc: ChildProcess;
  out: () => string;
  exited: Promise<number | string>;
}
const children = new Set<Child>();

function spawnPy(what: string, args: string[]): Child {
  const proc = spawn('python3', [stressPy, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  // 'close', not 'exit': exit can come before the last of stdout (a reader's "reads N" line)
  const exited = new Promise<number | string>((resolve) => proc.on('close', (code, sig) => resolve(sig ?? code ?? -1)));
  const c = { what, proc, out: () => out, exited };
  children.add(c);
  void exited.then(() => children.delete(c));
  return c;
}

afterAll(async () => {
  for (const c of children) c.proc.kill('SIGKILL');
  await Promise.all([...children].map((c) => c.exited));
});

/** Kernel stacks of every thread of pid: what a stuck server waits for. */
function kernelStacks(pid: number): string {
  const out: string[] = [];
  try {
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      let comm = '?';
      let stack = '?';
      try {
        comm = readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim();
        stack = readFileSync(`/proc/${pid}/task/${t}/stack`, 'utf8');
      } catch (e) {
        stack = (e as Error).message;
      }
      out.push(`--- task ${t} (${comm})\n${stack}`);
    }
  } catch (e) {
    out.push((e as Error).message);
  }
  return out.join('\n');
}

async function stress(nwatchers: number): Promise<void> {
  const t = new TDB();
  t.pinTimeout = 30; // a slow CI machine must not turn a late ack into a kill
  try {
    await t.open();
    const foid = await t.newFile('stress');
    await t.commit([[foid, { 0: 1, 1: 2 }]]);
    t.serveArgs = ['--gc-interval', '0.2', '--untrack-interval', '0.2']; // the view and untrack sweeps run all along
    await t.serve();
    const file = t.srv.at(`head/bigfile/${hex16(foid)}`);
    statSync(file); // known to wcfs before any watcher asks (else: "file not yet known to wcfs")
    const kids: Child[] = [];
    for (let i = 0; i < NREADERS; i++) kids.push(spawnPy(`reader ${i}`, ['reader', file, String(BS), '2', String(RUN_S)]));
    for (let i = 0; i < nwatchers; i++) kids.push(spawnPy(`watcher ${i}`, ['watcher', t.srv.mnt, hex16(foid), String(RUN_S)]));

    // >>> writer loop; head/at is polled after each commit (not waited for: the writer must
    //     go on committing even when the server is stuck)
    let last: Tid = t.head();
    let lastSeen = { head: await t.srv.head(), t: Date.now() };
    let ncommits = 0;
    const t0 = Date.now();
    let fill = 3;
    while (Date.now() - t0 < RUN_S * 1000) {
      last = await t.commit([[foid, { 0: fill & 0xff || 1, 1: (fill + 1) & 0xff || 1 }]], { wait: false });
      fill += 2;
      ncommits++;
      const h = await headNow(t);
      if (h !== lastSeen.head) lastSeen = { head: h, t: Date.now() };
      else if (h < hex16(last) && Date.now() - lastSeen.t > STALL_S * 1000) {
        throw new Error(
          `head/at stuck at ${h} for ${STALL_S} s while the writer is at ${hex16(last)}; server kernel stacks:\n${kernelStacks(t.srv.proc.pid!)}`,
        );
      }
    }
    // <<< head/at reaches the last commit
    const tEnd = Date.now();
    for (;;) {
      const h = await headNow(t);
      if (h === hex16(last)) break;
      if (Date.now() - tEnd > STALL_S * 1000) {
        throw new Error(`head/at stuck at ${h}, want ${hex16(last)}; server kernel stacks:\n${kernelStacks(t.srv.proc.pid!)}`);
      }
      await sleep(20);
    }
    expect(ncommits).toBeGreaterThan(50);

    for (const k of kids) {
      const r = await Promise.race([k.exited, sleep(60_000).then(() => 'timeout')]);
      expect(r, `${k.what}: ${k.out()}`).toBe(0);
      if (k.what.startsWith('reader')) expect(Number(/reads (\d+)/.exec(k.out())?.[1] ?? 0), k.out()).toBeGreaterThan(0);
      if (k.what.startsWith('watcher')) expect(Number(/pins (\d+)/.exec(k.out())?.[1] ?? 0), k.out()).toBeGreaterThan(0);
    }
    // the server survived it all, and still serves the last data
    expect(t.srv.proc.exitCode).toBe(null);
    const b = readFileSync(file);
    expect(b.length).toBe(2 * BS);
    expect(b[0]).toBe(t.data.get(foid)!.get(0));
    expect(b[BS]).toBe(t.data.get(foid)!.get(1));
    expect(t.srv.stderr()).not.toMatch(/BUG|zwatcher failed/);
  } finally {
    for (const c of children) c.proc.kill('SIGKILL');
    await Promise.all([...children].map((c) => c.exited));
    await t.close();
  }
}

/** head/at, bounded: a stuck server must fail the test, not hang it. */
async function headNow(t: TDB): Promise<string> {
  return Promise.race([t.srv.head(), sleep(STALL_S * 1000).then(() => 'stuck')]).then((h) => {
    if (h === 'stuck') throw new Error(`reading head/at hangs; server kernel stacks:\n${kernelStacks(t.srv.proc.pid!)}`);
    return h;
  });
}

describe('commit processing vs in-flight READs', () => {
  it('head/at follows the writer under readers that drop and re-read the changing blocks', () => stress(0), 120_000);
  it('… and with watchers pinning at older revisions', () => stress(2), 120_000);
});
