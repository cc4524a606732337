// tWatchLink: a raw head/watch link in a child process (wlink-child.mjs), with helpers that
// read like the protocol: watch(foid, at, expectPins), expectPins(during), ack policies.
import { fork, spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import path from 'node:path';
import { expect } from 'vitest';
import { sleep } from '../../src/util/async.js';
import { hex16, type Tid } from '../../src/zodb/ids.js';
import { repoRoot } from './paths.js';

export type PinSet = Map<number, Tid | null>; // blk → rev (null = @head)

export const pinText = (foid: bigint, blk: number, rev: Tid | null) => `pin ${hex16(foid)} #${blk} @${rev === null ? 'head' : hex16(rev)}`;

export class TWatchLink {
  readonly lines: string[] = [];
  eof = false;
  err: string | undefined;
  private rx = '';
  private nextStream = 1n;
  private waiters: Array<() => void> = [];
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  pid = 0;
  /** What the client has been told per file: foid → blk → rev (model of w.pinned). */
  readonly pinned = new Map<bigint, Map<number, Tid>>();
  /** `at` per watched file. */
  readonly at = new Map<bigint, Tid>();

  private constructor(readonly proc: ChildProcess) {
    proc.on('message', (m: { data?: string; eof?: boolean; err?: string; ready?: number }) => {
      if (m.data !== undefined) {
        this.rx += m.data;
        let i: number;
        while ((i = this.rx.indexOf('\n')) >= 0) {
          this.lines.push(this.rx.slice(0, i));
          this.rx = this.rx.slice(i + 1);
        }
      }
      if (m.eof) this.eof = true;
      if (m.err) this.err = m.err;
      this.wake();
    });
    this.exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
    void this.exited.then(() => this.wake()); // exited never rejects
  }

  /** `as`: a command prefix the child runs under, e.g. setpriv (another user: wcfs-share.test.ts). */
  static async open(watchPath: string, opts: { noread?: boolean; as?: string[] } = {}): Promise<TWatchLink> {
    const args = [watchPath, ...(opts.noread ? ['noread'] : [])];
    const child = path.join(repoRoot, 'test', 'helpers', 'wlink-child.mjs');
    const stdio: StdioOptions = ['ignore', 'inherit', 'inherit', 'ipc'];
    const proc = opts.as ? spawn(opts.as[0]!, [...opts.as.slice(1), process.execPath, child, ...args], { stdio }) : fork(child, args, { stdio });
    const l = new TWatchLink(proc);
    l.pid = await new Promise<number>((resolve, reject) => {
      proc.once('message', (m: { ready?: number; err?: string }) => (m.ready ? resolve(m.ready) : reject(new Error(`wlink child: ${m.err}`))));
      proc.once('exit', (c) => reject(new Error(`wlink child exited ${c}`)));
    });
    return l;
  }

  send(line: string): void {
    this.proc.send({ write: line });
  }

  /** Next received line (in order), or throws after ms. */
  async next(ms = 5000): Promise<string> {
    const t0 = Date.now();
    while (this.lines.length === 0) {
      if (this.eof) throw new Error('wlink: EOF');
      if (Date.now() - t0 > ms) throw new Error(`wlink: nothing received in ${ms} ms`);
      await this.waitAny(ms - (Date.now() - t0));
    }
    return this.lines.shift()!;
  }

  /** Lines until EOF. */
  async untilEOF(ms = 5000): Promise<string[]> {
    const t0 = Date.now();
    while (!this.eof) {
      if (Date.now() - t0 > ms) throw new Error(`wlink: no EOF in ${ms} ms`);
      await this.waitAny(ms - (Date.now() - t0));
    }
    return this.lines.splice(0);
  }

  /**
   * Send a client request and process what comes back until its reply: every pin must be in
   * `expected` (each exactly once; ack'ed); after the reply, no pin may be missing.
   */
  async request(msg: string, expected: Array<[bigint, PinSet]> = [], opts: { ack?: boolean } = {}): Promise<string> {
    const stream = this.nextStream;
    this.nextStream += 2n;
    this.send(`${stream} ${msg}\n`);
    const want = new Set<string>();
    for (const [foid, pins] of expected) for (const [blk, rev] of pins) want.add(pinText(foid, blk, rev));
    for (;;) {
      const l = await this.next();
      const m = /^(\d+) (.*)$/.exec(l)!;
      if (BigInt(m[1]!) === stream) {
        expect([...want].join('; '), `pins missing before "${l}"`).toBe('');
        return m[2]!;
      }
      if (BigInt(m[1]!) % 2n === 0n && m[2]!.startsWith('pin ')) {
        expect(want.has(m[2]!), `unexpected ${m[2]} (want ${[...want].join(', ') || 'none'})`).toBe(true);
        want.delete(m[2]!);
        this.record(m[2]!);
        if (opts.ack !== false) this.send(`${m[1]} ack\n`);
        continue;
      }
      throw new Error(`wlink: unexpected line ${JSON.stringify(l)}`);
    }
  }

  /** watch foid @at, expecting exactly `pins` (computed by the caller's model) and ok. */
  async watch(foid: bigint, at: Tid, pins: PinSet): Promise<void> {
    const reply = await this.request(`watch ${hex16(foid)} @${hex16(at)}`, [[foid, pins]]);
    expect(reply).toBe('ok');
    this.at.set(foid, at);
  }

  async stopWatch(foid: bigint): Promise<void> {
    expect(await this.request(`watch ${hex16(foid)} -`)).toBe('ok');
    this.at.delete(foid);
    this.pinned.delete(foid);
  }

  /**
   * Run `f` (e.g. a read on head) while expecting exactly `pins` on this link, ack'ed; fails
   * on any extra pin up to f's end.
   */
  async expectPinsDuring<T>(f: () => Promise<T>, pins: Array<[bigint, PinSet]>): Promise<T> {
    const want = new Set<string>();
    for (const [foid, ps] of pins) for (const [blk, rev] of ps) want.add(pinText(foid, blk, rev));
    let done = false;
    const p = f().finally(() => {
      done = true;
      this.wake();
    });
    while (!done || this.lines.length > 0) {
      if (this.lines.length === 0) {
        await this.waitAny(100);
        continue;
      }
      const l = this.lines.shift()!;
      const m = /^(\d+) (pin .*)$/.exec(l);
      expect(m, `unexpected line ${l}`).not.toBe(null);
      expect(want.has(m![2]!), `unexpected ${m![2]} (want ${[...want].join(', ') || 'none'})`).toBe(true);
      want.delete(m![2]!);
      this.record(m![2]!);
      this.send(`${m![1]} ack\n`);
    }
    expect([...want].join('; '), 'pins not received').toBe('');
    return p;
  }

  private record(pin: string): void {
    const m = /^pin ([0-9a-f]{16}) #(\d+) @(\S+)$/.exec(pin)!;
    const foid = BigInt('0x' + m[1]);
    let p = this.pinned.get(foid);
    if (p === undefined) this.pinned.set(foid, (p = new Map()));
    if (m[3] === 'head') p.delete(Number(m[2]));
    else p.set(Number(m[2]), BigInt('0x' + m[3]));
  }

  async close(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGKILL');
      await this.exited;
    }
  }

  private wake(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }
  private waitAny(ms: number): Promise<void> {
    const woken = new AbortController();
    this.waiters.push(() => woken.abort());
    return sleep(Math.max(1, ms), woken.signal);
  }
}
