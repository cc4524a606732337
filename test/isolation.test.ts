// The isolation protocol's server-side decisions (src/server/isolation.ts) without a mount:
// which blocks a watch setup pins and to which revision, "ok" only after every ack, the setup
// errors, pins on reads, and what happens to a client that does not answer a pin correctly and
// in time (wcfs-server.md §2.5-§2.10).
//
// What is real and what is fake:
//   real  Isolation; ΔFtail over a small FileStorage history (test/helpers/fhist.ts); the
//         WatchLink (src/server/wlink.ts), driven through its write/read entry points as the
//         FUSE handlers do — so the protocol lines below are the bytes a client would see;
//   fake  the server around them (IsolationHost: head, headMu, files by oid, stats, log,
//         fatal), the files (Isolation uses only BigFile.foid), and the client process: a
//         FakeProc in place of the ProcessRef (pidfd) that records the signals the kill
//         decision sends and answers exited() as the case says.
//
// History (tail = t1; blocks 0-3 of f read via head/, i.e. tracked, at t1; #5 never read):
//   t0  f created                       (before tail: "too far back")
//   t1  f: #0 #1 #2 written             = tail
//   t2  f: #0 changed; g created        (g: a file epoch in (t1, t2])
//   t3  f: #1 #3 #5 changed
// so, as of t1 every tracked block is at its tail revision t1, and
//   changed in (t1, head] = #0 #1 #3,   in (t2, head] = #1 #3,   in (t3, head] = none.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BigFile } from '../src/server/bigfile.js';
import { Isolation, type IsolationHost } from '../src/server/isolation.js';
import { RWMutex } from '../src/server/lock.js';
import { WatchLink } from '../src/server/wlink.js';
import type { ProcessRef } from '../src/util/proc.js';
import { sleep } from '../src/util/async.js';
import { rng } from '../src/util/rng.js';
import { parseFrame, parsePin } from '../src/watchlink/wire.js';
import { hex16, type Oid, type Tid } from '../src/zodb/ids.js';
import { createZBigFile } from '../src/zodb/zbigfile.js';
import { FUZZ_SEED, fcParams } from './helpers/fuzz.js';
import { FHist } from './helpers/fhist.js';

/** Pin timeout of the fake server: every timeout case waits this long. */
const T = 300;
/** Thread id given to the link's READ/WRITE: no such thread (so no takeover of the link). */
const NO_TID = 999_999_999;
const x = hex16;

/** Let every pending promise callback run. */
const flush = () => new Promise<void>((r) => setImmediate(r));
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await sleep(5);
}

/** The client process as the kill decision sees it (in place of a ProcessRef = pidfd). */
class FakeProc {
  readonly pid = 4242;
  /** Holds on the "pidfd": the link's own (1) plus the kill decision's while it runs. */
  holds = 1;
  taken = 0;
  readonly signals: NodeJS.Signals[] = [];
  /** How the process takes a signal: it dies, it survives it, or the signal is refused. */
  readonly on: Partial<Record<NodeJS.Signals, 'dies' | 'survives' | 'EPERM'>> = {};
  private dead = false;
  exited(): boolean {
    this.check();
    return this.dead;
  }
  signal(sig: NodeJS.Signals): boolean {
    this.check();
    if (this.dead) return false;
    const how = this.on[sig] ?? 'dies';
    if (how === 'EPERM') throw Object.assign(new Error('EPERM: operation not permitted'), { code: 'EPERM' });
    this.signals.push(sig);
    if (how === 'dies') this.dead = true;
    return true;
  }
  hold(): this {
    this.check();
    this.holds++;
    this.taken++;
    return this;
  }
  close(): void {
    if (this.holds > 0) this.holds--;
  }
  /** The process has exited (a zombie). */
  exit(): void {
    this.dead = true;
  }
  /** The process is exiting: its fds are closed, it is a zombie a moment later. */
  exitSoon(): void {
    setTimeout(() => (this.dead = true), 10);
  }
  toString(): string {
    return `pid${this.pid}`;
  }
  private check(): void {
    if (this.holds === 0) throw new Error('FakeProc used after its last close (a closed pidfd)');
  }
}

/** The server around Isolation. */
class Host implements IsolationHost {
  readonly headMu = new RWMutex();
  readonly pinTimeoutMs = T;
  readonly stats = { Watch: 0, pin: 0, pinkill: 0 };
  readonly logs: string[] = [];
  readonly fatals: Error[] = [];
  readonly files = new Map<Oid, BigFile>();
  constructor(readonly h: FHist) {}
  get deltaFtail() {
    return this.h.δF;
  }
  packedTo(): Tid {
    return 0n;
  }
  headAt(): Tid {
    return this.h.δF.head();
  }
  headFile(foid: Oid): BigFile | undefined {
    return this.files.get(foid);
  }
  async waitHead(at: Tid): Promise<void> {
    if (at > this.headAt()) throw new Error('test host: waiting for a future head is not modelled here');
  }
  log(line: string): void {
    this.logs.push(line);
  }
  fatal(err: Error): void {
    this.fatals.push(err);
  }
  /** A head file known to the server (Isolation uses only its foid). */
  addFile(foid: Oid): BigFile {
    const f = { foid } as unknown as BigFile;
    this.files.set(foid, f);
    return f;
  }
  /** A commit, folded into ΔFtail under headMu exclusive (as commit processing does). */
  async commit(writes: Parameters<FHist['commitΔ']>[0]): Promise<Tid> {
    await this.headMu.lock();
    try {
      return (await this.h.commitΔ(writes)).tid;
    } finally {
      this.headMu.unlock();
    }
  }
}

let nextLinkId = 1;

/** The client's end of one watch link: what it sends, and every line it receives. */
class TClient {
  readonly proc = new FakeProc();
  readonly link: WatchLink;
  /** Setup requests in progress (Isolation.handleRequest), settled after their reply was read or the link went down. */
  readonly requests: Promise<void>[] = [];
  /** handlers.down calls: [reason, pending requests]. */
  readonly downs: Array<[string | undefined, number]> = [];
  private readonly rx: string[] = [];
  private partial = '';
  private waiters: Array<() => void> = [];
  eof = false;
  released = false;

  constructor(readonly iso: Isolation) {
    this.link = new WatchLink(nextLinkId++, this.proc as unknown as ProcessRef, {
      request: (l, stream, r) => {
        const p = iso.handleRequest(l, stream, r.foid, r.at);
        this.requests.push(p);
        return p;
      },
      down: (l, reason, n) => {
        this.downs.push([reason?.why, n]);
        iso.linkDown(l, reason, n);
      },
    });
    iso.linkOpened(this.link);
    void this.pump();
  }

  /** The client reads all the time (as the reference client's reader does). */
  private async pump(): Promise<void> {
    for (;;) {
      const b = await this.link.read(4096, new AbortController().signal, NO_TID);
      if (b.length === 0) break;
      this.partial += Buffer.from(b).toString('latin1');
      let nl: number;
      while ((nl = this.partial.indexOf('\n')) >= 0) {
        this.rx.push(this.partial.slice(0, nl));
        this.partial = this.partial.slice(nl + 1);
      }
      this.wake();
    }
    this.eof = true;
    this.wake();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  send(line: string): void {
    this.link.write(Buffer.from(line + '\n', 'latin1'), NO_TID);
  }

  /** The next line (null: EOF). */
  async recv(): Promise<string | null> {
    while (this.rx.length === 0 && !this.eof) await new Promise<void>((r) => this.waiters.push(r));
    return this.rx.shift() ?? null;
  }

  /** The lines received so far and not yet taken. */
  async received(): Promise<string[]> {
    await flush();
    return this.rx.splice(0);
  }

  /** Everything up to EOF. */
  async rest(): Promise<string[]> {
    const out: string[] = [];
    for (let l; (l = await this.recv()) !== null;) out.push(l);
    return out;
  }

  /**
   * The next pins, which must be exactly `want` (blk → rev, null = @head) for file foid, in any
   * order. Returns blk → the pin's stream, for the replies.
   */
  async expectPins(foid: Oid, want: Record<number, Tid | null>): Promise<Map<number, bigint>> {
    const n = Object.keys(want).length;
    const got = new Map<number, string>();
    const streams = new Map<number, bigint>();
    for (let i = 0; i < n; i++) {
      const line = await this.recv();
      if (line === null) throw new Error(`EOF; expected ${n - i} more pins`);
      const { stream, msg } = parseFrame(line + '\n');
      expect(stream % 2n, `a pin on an even stream: ${line}`).toBe(0n);
      const p = parsePin(msg);
      expect(p.foid).toBe(foid);
      got.set(p.blk, p.rev === null ? 'head' : x(p.rev));
      streams.set(p.blk, stream);
    }
    const wantText = new Map(Object.entries(want).map(([b, r]) => [Number(b), r === null ? 'head' : x(r)]));
    expect(new Map([...got].sort(([a], [b]) => a - b))).toEqual(new Map([...wantText].sort(([a], [b]) => a - b)));
    return streams;
  }

  ack(streams: Map<number, bigint>, except: number[] = []): void {
    for (const [blk, s] of streams) if (!except.includes(blk)) this.send(`${s} ack`);
  }

  /** FUSE RELEASE of the link's fd: the client closed it or its process is exiting. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.link.release();
  }

  /** Every decision in progress for this client made: setups settled, the kill decision's hold dropped. */
  async settled(): Promise<void> {
    await Promise.allSettled(this.requests);
    await until(() => this.proc.holds === (this.released ? 0 : 1));
  }
}

// ---- the world ----

let h: FHist;
let host: Host;
let iso: Isolation;
let clients: TClient[];
let f: Oid, g: Oid;
let t0: Tid, t1: Tid, t2: Tid, t3: Tid;
let F: string; // hex16(f)

async function makeWorld(): Promise<void> {
  h = await FHist.create();
  f = await h.newFile();
  t0 = h.head();
  t1 = await h.commit({ [String(f)]: { 0: 1, 1: 1, 2: 1 } });
  h.startΔF();
  for (const blk of [0, 1, 2, 3]) await h.track(f, blk);
  t2 = (await h.commitΔ({ [String(f)]: { 0: 2 } }, (txn) => void (g = createZBigFile(txn, h.blksize)))).tid;
  t3 = (await h.commitΔ({ [String(f)]: { 1: 3, 3: 3, 5: 3 } })).tid;
  host = new Host(h);
  host.addFile(f);
  host.addFile(g);
  iso = new Isolation(host);
  clients = [];
  F = x(f);
}

beforeEach(makeWorld);

afterEach(async () => {
  for (const c of clients) {
    c.release();
    await c.settled();
    // no pidfd outlives the link (wlink.ts invariants), whatever the decision was
    expect(c.proc.holds, 'holds on the client process after RELEASE').toBe(0);
  }
  expect(host.stats.Watch, 'watches left after every link went down').toBe(0);
  expect(iso.minWatchAt()).toBeUndefined();
  await h.close();
});

function client(): TClient {
  const c = new TClient(iso);
  clients.push(c);
  return c;
}

const at = (label: string): Tid => ({ t0, t1, t2, t3 })[label]!;

// ---- 1) watch setup ----

describe('watch setup: pins', () => {
  // [watch moves of one link, pins expected at each: blk → 'tN' | 'head']
  const cases: Array<[string, string[], Array<Record<number, string>>]> = [
    ['at tail: every tracked block changed since, to its revision as of at', ['t1'], [{ 0: 't1', 1: 't1', 3: 't1' }]],
    ['at t2: only blocks changed after t2', ['t2'], [{ 1: 't1', 3: 't1' }]],
    ['at head: nothing', ['t3'], [{}]],
    ['t1 → t2: #0 back to head; #1 #3 stay pinned (not sent again)', ['t1', 't2'], [{ 0: 't1', 1: 't1', 3: 't1' }, { 0: 'head' }]],
    [
      't1 → t3: everything back to head',
      ['t1', 't3'],
      [
        { 0: 't1', 1: 't1', 3: 't1' },
        { 0: 'head', 1: 'head', 3: 'head' },
      ],
    ],
    [
      't2 → t3',
      ['t2', 't3'],
      [
        { 1: 't1', 3: 't1' },
        { 1: 'head', 3: 'head' },
      ],
    ],
    ['t1 → t1: the same pins are not sent again (I1)', ['t1', 't1'], [{ 0: 't1', 1: 't1', 3: 't1' }, {}]],
    ['t3 → t3', ['t3', 't3'], [{}, {}]],
  ];
  it.each(cases)('%s', async (_what, ats, pins) => {
    const c = client();
    for (const [i, label] of ats.entries()) {
      const s = 2 * i + 1;
      // >>> watch f @at
      c.send(`${s} watch ${F} @${x(at(label))}`);
      const want = Object.fromEntries(Object.entries(pins[i]!).map(([b, r]) => [b, r === 'head' ? null : at(r)]));
      const streams = await c.expectPins(f, want);
      // <<< pin … (no "ok" before every pin was acked: I2)
      if (Object.keys(want).length > 0) expect(await c.received()).toEqual([]);
      c.ack(streams);
      expect(await c.recv()).toBe(`${s} ok`);
      expect(iso.minWatchAt()).toBe(at(label));
    }
    // what stays pinned: blocks pinned to a revision and not unpinned since
    const pinned = new Set<number>();
    for (const p of pins) for (const [b, r] of Object.entries(p)) r === 'head' ? pinned.delete(Number(b)) : pinned.add(Number(b));
    expect(iso.pinnedBlocks()).toBe(pinned.size);
    expect(host.stats.Watch).toBe(1);
    expect(c.proc.signals).toEqual([]);
  });

  it('an ack of each pin is needed: "ok" waits for the last one', async () => {
    const c = client();
    c.send(`1 watch ${F} @${x(t1)}`);
    const streams = await c.expectPins(f, { 0: t1, 1: t1, 3: t1 });
    c.ack(streams, [3]);
    expect(await c.received()).toEqual([]);
    c.send(`${streams.get(3)} ack`);
    expect(await c.recv()).toBe('1 ok');
  });

  it('a read during setup: the block being pinned is not pinned again, the read waits for that ack (I1)', async () => {
    const c = client();
    c.send(`1 watch ${F} @${x(t1)}`);
    const streams = await c.expectPins(f, { 0: t1, 1: t1, 3: t1 });
    // >>> read #0 at head while the setup's pin of #0 is in flight
    let done = false;
    const read = iso.readPinWatchers(host.files.get(f)!, 0).then(() => (done = true));
    await flush();
    expect(await c.received()).toEqual([]); // no second "pin #0"
    c.ack(streams, [0]);
    await flush();
    expect(done).toBe(false);
    c.send(`${streams.get(0)} ack`);
    await read;
    expect(await c.recv()).toBe('1 ok');
  });

  it('two links watching the same file get their own pins', async () => {
    const a = client();
    const b = client();
    a.send(`1 watch ${F} @${x(t1)}`);
    b.send(`1 watch ${F} @${x(t2)}`);
    a.ack(await a.expectPins(f, { 0: t1, 1: t1, 3: t1 }));
    b.ack(await b.expectPins(f, { 1: t1, 3: t1 }));
    expect(await a.recv()).toBe('1 ok');
    expect(await b.recv()).toBe('1 ok');
    expect(host.stats.Watch).toBe(2);
    expect(iso.minWatchAt()).toBe(t1);
  });

  it('watch - : the watch is gone (no pins on reads any more); unwatching nothing is ok too', async () => {
    const c = client();
    c.send(`1 watch ${F} @${x(t2)}`);
    c.ack(await c.expectPins(f, { 1: t1, 3: t1 }));
    expect(await c.recv()).toBe('1 ok');
    // >>> watch f -
    c.send(`3 watch ${F} -`);
    expect(await c.recv()).toBe('3 ok');
    expect(host.stats.Watch).toBe(0);
    expect(iso.minWatchAt()).toBeUndefined();
    await host.commit({ [String(f)]: { 2: 4 } });
    await h.track(f, 2);
    await iso.readPinWatchers(host.files.get(f)!, 2);
    expect(await c.received()).toEqual([]);
    c.send(`5 watch ${x(g)} -`);
    expect(await c.recv()).toBe('5 ok');
    // >>> a new watch may start further back than the dropped one was (it is not "going back")
    c.send(`7 watch ${F} @${x(t1)}`);
    c.ack(await c.expectPins(f, { 0: t1, 1: t1, 2: t1, 3: t1 }));
    expect(await c.recv()).toBe('7 ok');
  });
});

describe('watch setup: errors', () => {
  // [request (message), reply on its stream]; `prefix:` = the reply must start with it (the
  // "too far" text is matched up to "; " as upstream's tests do; its "δt = <Go duration>" tail,
  // UTF-8 encoded as upstream sends it, is checked in wcfs-dropin.test.ts)
  const cases: Array<[string, () => string, () => string]> = [
    ['at before tail', () => `watch ${F} @${x(t0)}`, () => `prefix:error setup watch f<${F}> @${x(t0)}: too far away back from head/at (@${x(t3)}); `],
    [
      'file not known at head',
      () => `watch 000000000000dead @${x(t1)}`,
      () => `error setup watch f<000000000000dead> @${x(t1)}: file not yet known to wcfs or is not a ZBigFile`,
    ],
    [
      'file epoch in (at, head]',
      () => `watch ${x(g)} @${x(t1)}`,
      () => `error setup watch f<${x(g)}> @${x(t1)}: file epoch detected @${x(t2)} in between (at,head=@${x(t3)}]`,
    ],
    ['bad request (link level)', () => `watch ${F} @head`, () => 'error bad watch: invalid at'],
  ];
  it.each(cases)('%s', async (_what, req, reply) => {
    const c = client();
    c.send(`1 ${req()}`);
    const got = await c.recv();
    const want = reply();
    if (want.startsWith('prefix:')) expect(got!.startsWith(`1 ${want.slice('prefix:'.length)}`), got!).toBe(true);
    else expect(got).toBe(`1 ${want}`);
    // a failed setup leaves no watch behind, and the link up
    expect(host.stats.Watch).toBe(0);
    expect(iso.minWatchAt()).toBeUndefined();
    expect(c.link.down).toBe(false);
    // >>> and the link still works
    c.send(`3 watch ${F} @${x(t3)}`);
    expect(await c.recv()).toBe('3 ok');
  });

  it('going back in history is forbidden; the watch stays where it was', async () => {
    const c = client();
    c.send(`1 watch ${F} @${x(t2)}`);
    c.ack(await c.expectPins(f, { 1: t1, 3: t1 }));
    expect(await c.recv()).toBe('1 ok');
    c.send(`3 watch ${F} @${x(t1)}`);
    expect(await c.recv()).toBe(`3 error setup watch f<${F}> @${x(t1)}: going back in history is forbidden`);
    expect(iso.minWatchAt()).toBe(t2);
    expect(host.stats.Watch).toBe(1);
  });

  it('a file born after at is fine to watch from its birth on (g @t2: no pins)', async () => {
    const c = client();
    c.send(`1 watch ${x(g)} @${x(t2)}`);
    expect(await c.recv()).toBe('1 ok');
  });
});

// ---- 2) reads ----

describe('reads pin watchers', () => {
  it("a read of a block changed after a watch's at pins it to its revision as of at; the read waits for the ack", async () => {
    const a = client(); // @t2: #2 unchanged until t4
    const b = client(); // @t4: up to date
    a.send(`1 watch ${F} @${x(t2)}`);
    a.ack(await a.expectPins(f, { 1: t1, 3: t1 }));
    expect(await a.recv()).toBe('1 ok');
    const t4 = await host.commit({ [String(f)]: { 2: 4 } });
    b.send(`1 watch ${F} @${x(t4)}`);
    expect(await b.recv()).toBe('1 ok');
    // >>> read #2 at head (the server tracks the block, then pins, then gives the data out)
    await h.track(f, 2);
    let done = false;
    const read = iso.readPinWatchers(host.files.get(f)!, 2).then(() => (done = true));
    // <<< a: pin #2 @t1 (its revision as of t2 is the tail); b: nothing
    const streams = await a.expectPins(f, { 2: t1 });
    await flush();
    expect(done).toBe(false);
    a.ack(streams);
    await read;
    expect(await b.received()).toEqual([]);
    // >>> read #2 again: already pinned to that revision, not sent again (I1)
    await iso.readPinWatchers(host.files.get(f)!, 2);
    // >>> read #0: changed at t2 ≤ at, nothing after: no pin
    await iso.readPinWatchers(host.files.get(f)!, 0);
    expect(await a.received()).toEqual([]);
    expect(iso.pinnedBlocks()).toBe(3); // a: #1 #3 #2
  });

  it('a pin that fails does not fail the read; the faulty client is killed, the other one is not', async () => {
    const good = client();
    const bad = client();
    for (const c of [good, bad]) {
      c.send(`1 watch ${F} @${x(t3)}`);
      expect(await c.recv()).toBe('1 ok');
    }
    await host.commit({ [String(f)]: { 0: 4 } });
    await h.track(f, 0);
    const read = iso.readPinWatchers(host.files.get(f)!, 0);
    good.ack(await good.expectPins(f, { 0: t2 }));
    await bad.expectPins(f, { 0: t2 }); // and never answers
    await read; // resolves (never throws), after the bad pin's timeout and the kill
    await bad.settled();
    expect(await bad.rest()).toEqual([`0 fatal: pin #0 @${x(t2)}: sendReq: waiting for reply: context deadline exceeded`]);
    expect(bad.proc.signals).toEqual(['SIGBUS']);
    expect(good.proc.signals).toEqual([]);
    expect(good.link.down).toBe(false);
    expect(host.stats.pinkill).toBe(1);
  });
});

// ---- 3) pin failures and the kill decision ----

describe('a client that does not answer pins right: the kill decision', () => {
  interface Case {
    what: string;
    /** Set up the process before the watch. */
    proc?: (p: FakeProc) => void;
    /** After the 3 pins of `watch f @t1` arrived (blk → stream). */
    client: (c: TClient, pins: Map<number, bigint>) => void | Promise<void>;
    /** Lines the client receives after the pins (until EOF if the link goes down). */
    lines: () => Array<string | RegExp>;
    down: boolean;
    signals: NodeJS.Signals[];
    pinkill: number;
    fatal?: RegExp;
    /** Lines the server logs (in this order, among others). */
    logs?: () => string[];
  }
  const fatalTimeout = /^0 fatal: pin #[013] @[0-9a-f]{16}: sendReq: waiting for reply: context deadline exceeded$/; // upstream's text
  const cases: Case[] = [
    { what: 'acks every pin → ok, nobody is hurt', client: (c, p) => c.ack(p), lines: () => ['1 ok'], down: false, signals: [], pinkill: 0 },
    {
      what: 'replies "nak" → wrong reply: killed without further checks',
      client: (c, p) => {
        c.ack(p, [1]);
        c.send(`${p.get(1)} nak: mmap failed`);
      },
      lines: () => [`0 fatal: pin #1 @${x(t1)}: expect "ack"; got "nak: mmap failed"`],
      down: true,
      signals: ['SIGBUS'],
      pinkill: 1,
      logs: () => [
        `wcfs: pid4242: client failed to handle pin notification correctly and timely in 300ms: pin #1 @${x(t1)}: expect "ack"; got "nak: mmap failed"`,
        'wcfs: pid4242: -> killing it because else 1) all other clients will be blocked, and 2) isolation cannot be guaranteed',
        'wcfs: pid4242: <- SIGBUS',
        'wcfs: pid4242: terminated',
      ],
    },
    {
      what: 'replies a malformed ack ("ack " with a space) → wrong reply: killed',
      client: (c, p) => {
        c.ack(p, [0]);
        c.send(`${p.get(0)} ack `);
      },
      lines: () => [`0 fatal: pin #0 @${x(t1)}: expect "ack"; got "ack "`],
      down: true,
      signals: ['SIGBUS'],
      pinkill: 1,
    },
    {
      what: 'no reply → timeout: killed',
      client: () => {},
      lines: () => [fatalTimeout],
      down: true,
      signals: ['SIGBUS'],
      pinkill: 1,
    },
    {
      what: 'no reply, and the process has exited meanwhile → not killed, nothing counted',
      client: (c) => c.proc.exit(),
      lines: () => [fatalTimeout],
      down: true,
      signals: [],
      pinkill: 0,
      logs: () => [],
    },
    {
      what: 'no reply, survives SIGBUS → SIGKILL',
      proc: (p) => (p.on.SIGBUS = 'survives'),
      client: () => {},
      lines: () => [fatalTimeout],
      down: true,
      signals: ['SIGBUS', 'SIGKILL'],
      pinkill: 1,
      logs: () => ['wcfs: pid4242: <- SIGBUS', 'wcfs: pid4242: is still alive after SIGBUS', 'wcfs: pid4242: <- SIGKILL', 'wcfs: pid4242: terminated'],
    },
    {
      what: 'no reply, cannot be killed → the server gives up (fatal: EIO mode)',
      proc: (p) => {
        p.on.SIGBUS = 'survives';
        p.on.SIGKILL = 'survives';
      },
      client: () => {},
      lines: () => [fatalTimeout],
      down: true,
      signals: ['SIGBUS', 'SIGKILL'],
      pinkill: 0,
      fatal: /^pid4242: failed to kill it: still alive; this is major unexpected event$/,
    },
    {
      what: 'no reply, signalling refused (EPERM) → fatal',
      proc: (p) => (p.on.SIGBUS = 'EPERM'),
      client: () => {},
      lines: () => [fatalTimeout],
      down: true,
      signals: [],
      pinkill: 0,
      fatal: /^pid4242: failed to kill it: EPERM: operation not permitted; this is major unexpected event$/,
    },
    {
      what: 'a bad frame while pins are in flight → protocol error, counts as a failed pin: killed',
      client: (c) => c.send('zzz hello'),
      lines: () => ['0 error: invalid frame: "zzz hello\\n" (invalid stream)'],
      down: true,
      signals: ['SIGBUS'],
      pinkill: 1,
    },
    {
      what: 'a bad frame while pins are in flight, from a process that is exiting → not killed',
      client: (c) => {
        c.proc.exitSoon();
        c.send('zzz hello');
      },
      lines: () => ['0 error: invalid frame: "zzz hello\\n" (invalid stream)'],
      down: true,
      signals: [],
      pinkill: 0,
    },
    {
      what: 'a reply on a stream with no pin pending, while pins are in flight → killed',
      client: (c) => c.send('8 ack'),
      lines: () => ['0 error: 8: reply on unexpected stream'],
      down: true,
      signals: ['SIGBUS'],
      pinkill: 1,
    },
    {
      what: 'EOF while pins are in flight (upstream "eof_pin_reply") → killed',
      client: (c) => c.release(),
      lines: () => [],
      down: true,
      signals: ['SIGBUS'],
      pinkill: 1,
    },
    {
      what: 'EOF while pins are in flight, the process is exiting (upstream "stop_on_pin") → not killed',
      client: (c) => {
        c.proc.exitSoon();
        c.release();
      },
      lines: () => [],
      down: true,
      signals: [],
      pinkill: 0,
    },
    {
      what: 'bye while pins are in flight → no kill, and no reply to the watch',
      client: (c) => c.send('3 bye'),
      lines: () => [],
      down: true,
      signals: [],
      pinkill: 0,
    },
    {
      what: 'EOF after every pin was acked → nothing in flight: no kill',
      client: async (c, p) => {
        c.ack(p);
        expect(await c.recv()).toBe('1 ok');
        c.release();
      },
      lines: () => [],
      down: true,
      signals: [],
      pinkill: 0,
    },
    {
      what: 'a bad frame after every pin was acked → protocol error, nothing in flight: no kill',
      client: async (c, p) => {
        c.ack(p);
        expect(await c.recv()).toBe('1 ok');
        c.send('zzz hello');
      },
      lines: () => ['0 error: invalid frame: "zzz hello\\n" (invalid stream)'],
      down: true,
      signals: [],
      pinkill: 0,
    },
  ];

  it.each(cases)(
    '$what',
    async (k) => {
      const c = client();
      k.proc?.(c.proc);
      // >>> watch f @t1
      c.send(`1 watch ${F} @${x(t1)}`);
      // <<< pin #0 #1 #3 @t1
      const pins = await c.expectPins(f, { 0: t1, 1: t1, 3: t1 });
      await k.client(c, pins);
      await c.settled();
      const lines = k.down ? await c.rest() : await c.received();
      await c.settled(); // (again: after EOF every decision has been taken)
      // the "1 ok" the client itself consumed in the EOF/bad-frame-after-ok cases is not here
      const want = k.lines();
      expect(lines.length, JSON.stringify(lines)).toBe(want.length);
      for (const [i, w] of want.entries()) {
        if (typeof w === 'string') expect(lines[i]).toBe(w);
        else expect(lines[i]).toMatch(w);
      }
      expect(c.link.down).toBe(k.down);
      expect(c.proc.signals).toEqual(k.signals);
      expect(host.stats.pinkill).toBe(k.pinkill);
      expect(host.fatals.map((e) => e.message)).toEqual(k.fatal ? [expect.stringMatching(k.fatal)] : []);
      if (k.logs) {
        const want = k.logs();
        const got = host.logs.filter((l) => want.includes(l));
        expect(got).toEqual(want);
        if (want.length === 0) expect(host.logs).toEqual([]);
      }
      if (k.down) expect(host.stats.Watch).toBe(0); // the link's watches are dropped with it
    },
    10_000,
  ); // a link that wrongly stays up would keep rest() waiting
});

// ---- seeded random: setups and reads against the model of test/helpers/tdb.ts ----

describe('random histories, watches and reads against the model (seeded)', () => {
  // The model (wcfs-server.md §2.5-§2.7): rev(blk, at) = last commit ≤ at that changed blk, or
  // tail; a watch at `at` has every read block changed in (at, head] pinned to rev(blk, at),
  // nothing else; a read of blk pins each watch with at < rev(blk, head).
  const runs = fcParams(6).numRuns!;
  it(`${runs} runs, seed ${FUZZ_SEED}`, async () => {
    for (let run = 0; run < runs; run++) {
      const rand = rng(FUZZ_SEED + run);
      const int = (n: number) => Math.floor(rand() * n);
      const NBLK = 6;
      const tail = h.δF.tail();
      const changes = new Map<number, Tid[]>(); // since tail, for blocks of f
      for (const [tid, blks] of [
        [t2, [0]],
        [t3, [1, 3, 5]],
      ] as Array<[Tid, number[]]>)
        for (const b of blks) changes.set(b, [...(changes.get(b) ?? []), tid]);
      const data = new Map<number, number>([
        [0, 2],
        [1, 3],
        [2, 1],
        [3, 3],
        [5, 3],
      ]);
      const read = new Set([0, 1, 2, 3]);
      const revs: Tid[] = [t1, t2, t3];
      const rev = (blk: number, a: Tid) => (changes.get(blk) ?? []).filter((t) => t <= a).pop() ?? tail;
      const links = [client(), client()];
      const state = links.map(() => ({ at: undefined as Tid | undefined, pinned: new Map<number, Tid>(), stream: 1 }));
      const log: string[] = [];
      const where = () => `run ${run} (seed FUZZ_SEED + ${run}): ${log.join('; ')}`;
      /** Answer the pins expected for link i, checking them. */
      const answer = async (i: number, want: Map<number, Tid | null>) => {
        const c = links[i]!;
        const streams = await c.expectPins(f, Object.fromEntries(want)).catch((e: Error) => {
          throw new Error(`${where()}: ${e.message}`);
        });
        for (const [b, r] of want) {
          if (r === null) state[i]!.pinned.delete(b);
          else state[i]!.pinned.set(b, r);
        }
        c.ack(streams);
      };
      for (let step = 0; step < 25; step++) {
        const op = int(3);
        if (op === 0) {
          // a commit of 1-3 blocks
          const w: Record<number, number | null> = {};
          for (let k = 1 + int(3); k > 0; k--) w[int(NBLK)] = rand() < 0.2 ? null : 1 + int(200);
          const tid = await host.commit({ [String(f)]: w });
          for (const [b, v] of Object.entries(w).map(([b, v]) => [Number(b), v] as const)) {
            const was = data.has(b);
            if (v === null) data.delete(b);
            else data.set(b, v);
            if (v !== null || was) changes.set(b, [...(changes.get(b) ?? []), tid]);
          }
          revs.push(tid);
          log.push(`commit ${JSON.stringify(w)}`);
        } else if (op === 1) {
          // a watch (new or moved forward) on one link
          const i = int(links.length);
          const st = state[i]!;
          const choices = revs.filter((r) => st.at === undefined || r >= st.at);
          const a = choices[int(choices.length)]!;
          log.push(`link ${i} watch @${revs.indexOf(a)}`);
          const want = new Map<number, Tid | null>();
          for (const b of read) if ((changes.get(b) ?? []).some((t) => t > a) && st.pinned.get(b) !== rev(b, a)) want.set(b, rev(b, a));
          for (const b of st.pinned.keys()) if (!(changes.get(b) ?? []).some((t) => t > a)) want.set(b, null);
          const s = st.stream;
          st.stream += 2;
          links[i]!.send(`${s} watch ${F} @${x(a)}`);
          await answer(i, want);
          expect(await links[i]!.recv(), where()).toBe(`${s} ok`);
          st.at = a;
        } else {
          // a read of one block at head
          const b = int(NBLK);
          log.push(`read #${b}`);
          await host.headMu.rlock();
          try {
            await h.track(f, b);
            const p = iso.readPinWatchers(host.files.get(f)!, b);
            for (const [i, st] of state.entries()) {
              if (st.at === undefined || rev(b, h.δF.head()) <= st.at || st.pinned.get(b) === rev(b, st.at)) continue;
              await answer(i, new Map([[b, rev(b, st.at)]]));
            }
            await p;
          } finally {
            host.headMu.runlock();
          }
          read.add(b);
        }
        for (const c of links) expect(await c.received(), where()).toEqual([]);
      }
      for (const c of links) expect(c.proc.signals, where()).toEqual([]);
      for (const c of clients.splice(0)) {
        c.release();
        await c.settled();
        expect(c.proc.holds).toBe(0);
      }
      // the next run starts from a fresh world
      if (run + 1 < runs) {
        await h.close();
        await makeWorld();
      }
    }
  });
});
