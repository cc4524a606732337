// ZEO driver against bad and unreliable peers: ZeoConn (src/zodb/zeo/conn.ts) and ZeoStorage
// (src/zodb/zeo/zeostorage.ts) talking to FAKE ZEO5 servers written here (node:net, on
// 127.0.0.1 port 0 and on a Unix socket in a tmp dir), in both encodings (Z5 pickle, M5 msgpack;
// the fakes encode with the driver's own codec).
//
// What it proves — each failure is a typed error (checked by `.code`; the message names the
// server address), never a crash, an unhandled rejection, a leaked socket or timer:
//   - protocol violations are fatal (WCFS_EZEOPROTO): a garbage frame after the handshake, a
//     length prefix over the bound (refused on its 4 bytes, the payload never awaited), an
//     unknown handshake (Z4, X5, ruok, …), a reply to a call never made, a malformed exception
//     reply; a ZeoStorage that saw one fails every later load and every watch with it;
//   - a silent peer is temporary (WCFS_EZEOCONN): no greeting within connectTimeoutMs; a peer
//     that stops answering is found by the heartbeat ping; a load waiting on it is retried on
//     the next connection, or fails after reconnectWaitMs;
//   - reconnect with gap recovery (iterator_*): the missed transactions reach a watch in order,
//     exactly once, then the invalidations buffered meanwhile; a server that lacks the last
//     transaction we saw, a packed transaction in the gap, a history that ends short of
//     register's tid, or a register tid that went backwards → WCFS_EZEOGAP;
//   - exception replies map to the zodb errors (POSKeyError → WCFS_ENOOBJ, None → WCFS_ENODATA,
//     ConflictError → WCFS_ECONFLICT with oid and serials);
//   - invalidations pushed before register's reply: dropped if tid ≤ register's tid, kept if
//     greater (zodb.md §4.5); pushes after it arrive in order;
//   - at most maxInFlight calls are on the wire at once;
//   - closing a storage while it reconnects (waiting for a greeting, or between attempts)
//     leaves no connection and no timer behind;
//   - seeded random: the fake's writes cut at random points (1-byte writes, frames split and
//     merged) while loads and invalidations interleave — results and event order exactly as sent,
//     and every invalidation sent before a reply is delivered when that reply's load resolves.
import net from 'node:net';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { WcfsError, type WcfsCode } from '../src/errors.js';
import { ConflictError, NoObjectError } from '../src/zodb/errors.js';
import type { CommitEvent, StorageWatch } from '../src/zodb/storage.js';
import { ZTuple, ZDict, bytesId, decodeMessage, encodeMessage, idBytes, type ZValue, type ZeoMessage } from '../src/zodb/zeo/codec.js';
import { ZeoConn, type ZeoAddr, type ZeoConnOptions } from '../src/zodb/zeo/conn.js';
import { FrameDecoder, encodeFrame, type ZeoEncoding } from '../src/zodb/zeo/frame.js';
import { ZeoStorage, type ZeoOptions } from '../src/zodb/zeo/zeostorage.js';
import { rng } from '../src/util/rng.js';
import { hex16 } from '../src/zodb/ids.js';
import { seedOr } from './helpers/fuzz.js';
import { makeTmpDir } from './helpers/tmp.js';

// ---- the fake server ----

/** The client closed the connection: a fake's script ends quietly. */
class PeerClosed extends Error {}

type Writer = (sock: net.Socket, bytes: Uint8Array) => Promise<void>;

const plainWrite: Writer = (sock, bytes) => {
  sock.write(bytes);
  return Promise.resolve();
};

/** One accepted connection, seen from the server side. */
class Peer {
  /** The client's handshake ("Z5"/"M5"), once it arrived. */
  handshake: string | null = null;
  closed = false;
  readonly whenClosed: Promise<void>;
  /** Messages received and not yet taken by the script (recv). */
  private readonly inbox: ZeoMessage[] = [];
  private readonly waiters: Array<() => void> = [];
  private readonly decoder = new FrameDecoder();
  private out: Promise<void> = Promise.resolve();

  constructor(
    readonly sock: net.Socket,
    readonly fake: Fake,
    readonly n: number,
  ) {
    if (sock.setNoDelay) sock.setNoDelay(true);
    sock.on('error', () => {});
    this.whenClosed = new Promise((resolve) =>
      sock.on('close', () => {
        this.closed = true;
        for (const w of this.waiters.splice(0)) w();
        resolve();
      }),
    );
    sock.on('data', (b: Buffer) => {
      try {
        for (const f of this.decoder.push(b)) {
          if (this.handshake === null) this.handshake = Buffer.from(f).toString('latin1');
          else this.inbox.push(decodeMessage(fake.enc, f));
        }
      } catch (e) {
        fake.errors.push(e);
        sock.destroy();
      }
      for (const w of this.waiters.splice(0)) w();
    });
  }

  /** The next message from the client (throws PeerClosed once it is gone). */
  async recv(): Promise<ZeoMessage> {
    for (;;) {
      const m = this.inbox.shift();
      if (m !== undefined) return m;
      if (this.closed) throw new PeerClosed();
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  /** The next message, which must be a call of `method`. */
  async expectCall(method: string): Promise<ZeoMessage> {
    const m = await this.recv();
    expect(m.method).toBe(method);
    return m;
  }

  /** Raw bytes, through the fake's writer, in order. */
  write(bytes: Uint8Array): Promise<void> {
    this.out = this.out.then(() => (this.closed ? undefined : this.fake.writer(this.sock, bytes)));
    return this.out;
  }

  greet(s = this.fake.enc === 'pickle' ? 'Z5' : 'M5'): Promise<void> {
    return this.write(encodeFrame(Buffer.from(s, 'latin1')));
  }

  send(m: ZeoMessage): Promise<void> {
    return this.write(encodeFrame(encodeMessage(this.fake.enc, m)));
  }

  reply(msgid: ZValue, v: ZValue): Promise<void> {
    return this.send({ msgid, flags: 0, method: '.reply', args: v });
  }

  raise(msgid: ZValue, cls: string, args: ZValue): Promise<void> {
    return this.send({ msgid, flags: 2, method: '.reply', args: new ZTuple([cls, args]) });
  }

  push(method: string, ...args: ZValue[]): Promise<void> {
    return this.send({ msgid: 0, flags: true, method, args: new ZTuple(args) });
  }

  invalidate(tid: bigint, oids: bigint[]): Promise<void> {
    return this.push('invalidateTransaction', idBytes(tid), oids.map(idBytes));
  }

  /** Close our side after everything written so far. */
  async hangUp(): Promise<void> {
    await this.out;
    this.sock.end();
  }
}

interface FakeOptions {
  enc: ZeoEncoding;
  unix: boolean;
  /** Runs for every accepted connection (n = 0, 1, …); must greet itself. */
  script: (p: Peer) => Promise<void>;
  writer?: Writer;
}

const fakes: Fake[] = [];

class Fake {
  readonly peers: Peer[] = [];
  /** What went wrong inside the fake (a failed expectation in a script, an undecodable client frame). */
  readonly errors: unknown[] = [];
  readonly writer: Writer;
  addr!: ZeoAddr;
  url!: string;
  where!: string;
  private readonly server: net.Server;
  private readonly tmp: { dir: string; cleanup: () => void } | null;
  private readonly newPeer: Array<(p: Peer) => void> = [];

  private constructor(
    readonly enc: ZeoEncoding,
    unix: boolean,
    script: (p: Peer) => Promise<void>,
    writer: Writer,
  ) {
    this.writer = writer;
    this.tmp = unix ? makeTmpDir('wcfs-zeopeer-') : null;
    this.server = net.createServer((sock) => {
      const p = new Peer(sock, this, this.peers.length);
      this.peers.push(p);
      for (const w of this.newPeer.splice(0)) w(p);
      script(p).catch((e: unknown) => {
        if (!(e instanceof PeerClosed)) this.errors.push(e);
      });
    });
  }

  static async start(o: FakeOptions): Promise<Fake> {
    const f = new Fake(o.enc, o.unix, o.script, o.writer ?? plainWrite);
    fakes.push(f);
    if (f.tmp !== null) {
      const p = path.join(f.tmp.dir, 'zeo.sock');
      await new Promise<void>((r) => f.server.listen(p, r));
      f.addr = { kind: 'unix', path: p };
      f.url = `zeo://${p}`;
      f.where = p;
    } else {
      await new Promise<void>((r) => f.server.listen(0, '127.0.0.1', r));
      const port = (f.server.address() as net.AddressInfo).port;
      f.addr = { kind: 'tcp', host: '127.0.0.1', port };
      f.url = `zeo://127.0.0.1:${port}`;
      f.where = `127.0.0.1:${port}`;
    }
    return f;
  }

  /** The n-th accepted connection (waits for it). */
  async peer(n: number): Promise<Peer> {
    while (this.peers.length <= n) await new Promise<Peer>((r) => this.newPeer.push(r));
    return this.peers[n]!;
  }

  /** Every connection the client opened has been closed by the client (or by us). */
  async allClosed(ms: number): Promise<boolean> {
    let t: NodeJS.Timeout | undefined;
    const late = new Promise<boolean>((r) => (t = setTimeout(() => r(false), ms)));
    return Promise.race([Promise.all(this.peers.map((p) => p.whenClosed)).then(() => true), late]).finally(() => clearTimeout(t));
  }

  async stop(): Promise<void> {
    for (const p of this.peers) p.sock.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
    this.tmp?.cleanup();
  }
}

// ---- a small database the standard handlers serve ----

/** A handler's answer: no reply (an async call, or the handler wrote the reply itself). */
const NOREPLY: { readonly noreply: true } = { noreply: true };
type Handler = (m: ZeoMessage, p: Peer) => ZValue | typeof NOREPLY | Promise<ZValue | typeof NOREPLY>;

interface Txn {
  tid: bigint;
  status?: string;
  oids: bigint[];
}

interface Db {
  head: bigint;
  objs: Map<bigint, { data: Uint8Array; serial: bigint }>;
  /** History for iterator_*. */
  txns: Txn[];
  /** The (start, stop) of every iterator_start received. */
  starts: Array<[bigint, bigint]>;
}

const T = (n: number): bigint => 0x03f0000000000000n + BigInt(n) * 0x1000n;
const rec = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s));

function argv(m: ZeoMessage): ZValue[] {
  if (!(m.args instanceof ZTuple)) throw new Error(`fake: ${m.method}: args not a tuple`);
  return m.args.items;
}

function stdHandlers(db: Db): Record<string, Handler> {
  const iters = new Map<number, Txn[]>();
  const recIters = new Map<number, Array<[bigint, bigint]>>();
  let nextIter = 1;
  let nextOid = 100n;
  return {
    register: () => idBytes(db.head),
    ping: () => null,
    lastTransaction: () => idBytes(db.head),
    tpc_abort: () => null,
    new_oids: () => Array.from({ length: 100 }, () => idBytes(nextOid++)),
    loadBefore: (m, p) => {
      const oid = bytesId(argv(m)[0]);
      const o = db.objs.get(oid);
      if (o === undefined) {
        void p.raise(m.msgid, 'ZODB.POSException.POSKeyError', new ZTuple([idBytes(oid)]));
        return NOREPLY;
      }
      return new ZTuple([o.data, idBytes(o.serial), null]);
    },
    // the driver asks after a POSKeyError whether the object was deleted (ZEO answers both alike)
    history: (m, p) => {
      const oid = bytesId(argv(m)[0]);
      const o = db.objs.get(oid);
      if (o === undefined) {
        void p.raise(m.msgid, 'ZODB.POSException.POSKeyError', new ZTuple([idBytes(oid)]));
        return NOREPLY;
      }
      return [
        new ZDict([
          ['tid', idBytes(o.serial)],
          ['size', o.data.length],
        ]),
      ];
    },
    iterator_start: (m) => {
      const [lo, hi] = argv(m).map((x) => bytesId(x));
      db.starts.push([lo!, hi!]);
      const id = nextIter++;
      iters.set(
        id,
        db.txns.filter((t) => t.tid >= lo! && t.tid <= hi!),
      );
      return id;
    },
    iterator_next: (m) => {
      const id = argv(m)[0] as number;
      const t = iters.get(id)!.shift();
      if (t === undefined) {
        iters.delete(id);
        return null;
      }
      return new ZTuple([idBytes(t.tid), t.status ?? ' ', rec('user'), rec('desc'), new ZDict()]);
    },
    iterator_record_start: (m) => {
      const tid = bytesId(argv(m)[1]);
      const t = db.txns.find((x) => x.tid === tid)!;
      const id = nextIter++;
      recIters.set(
        id,
        t.oids.map((o) => [o, tid]),
      );
      return id;
    },
    iterator_record_next: (m) => {
      const id = argv(m)[0] as number;
      const r = recIters.get(id)!.shift();
      if (r === undefined) return null;
      return new ZTuple([idBytes(r[0]), idBytes(r[1]), rec(`data ${r[0]}`), null]);
    },
    iterator_gc: () => NOREPLY,
  };
}

/** Answer calls until the client goes away: `h` first, then the standard handlers. */
async function serve(p: Peer, db: Db, h: Record<string, Handler> = {}): Promise<void> {
  const std = stdHandlers(db);
  for (;;) {
    const m = await p.recv();
    const f = h[m.method] ?? std[m.method];
    if (f === undefined) throw new Error(`fake: unexpected call ${m.method}`);
    const r = await f(m, p);
    if (r !== NOREPLY && m.msgid !== 0) await p.reply(m.msgid, r as ZValue);
  }
}

function mkDb(head: bigint, objs: Array<[bigint, string, bigint]> = []): Db {
  return { head, objs: new Map(objs.map(([o, d, s]) => [o, { data: rec(d), serial: s }])), txns: [], starts: [] };
}

// ---- test scaffolding: everything opened is closed, nothing leaks ----

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const conns: ZeoConn[] = [];
const storages: ZeoStorage[] = [];
const unhandled: unknown[] = [];
const onUnhandled = (e: unknown): void => void unhandled.push(e);
let timersBefore = 0;
const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

beforeAll(() => void process.on('unhandledRejection', onUnhandled));
afterAll(() => void process.off('unhandledRejection', onUnhandled));
beforeEach(() => {
  unhandled.length = 0;
  timersBefore = timers();
});

afterEach(async () => {
  for (const s of storages.splice(0)) await s.close();
  for (const c of conns.splice(0)) c.close();
  // every connection the client made is closed by the client: no socket left behind
  const open: string[] = [];
  for (const f of fakes) if (!(await f.allClosed(1000))) open.push(f.where);
  const errors = fakes.flatMap((f) => f.errors);
  for (const f of fakes.splice(0)) await f.stop();
  await sleep(5); // let late rejections surface
  expect(errors).toEqual([]);
  expect(open).toEqual([]);
  expect(unhandled).toEqual([]);
  // no timer left behind (polled: the runner's own timers come and go around a test)
  for (let i = 0; i < 40 && timers() > timersBefore; i++) await sleep(5);
  expect(timers()).toBeLessThanOrEqual(timersBefore);
});

const quiet = { log: () => {} };

async function connect(f: Fake, o: ZeoConnOptions = {}): Promise<ZeoConn> {
  const c = await ZeoConn.connect(f.addr, { heartbeatMs: 0, ...o });
  conns.push(c);
  return c;
}

async function open(f: Fake, o: ZeoOptions = {}): Promise<ZeoStorage> {
  const s = await ZeoStorage.open(f.url, { readOnly: true, heartbeatMs: 0, backoffMinMs: 10, backoffMaxMs: 50, ...quiet, ...o });
  storages.push(s);
  return s;
}

/** The rejection of p (fails if p resolves). */
async function errOf(p: Promise<unknown> | (() => Promise<unknown>)): Promise<WcfsError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return e as WcfsError;
  }
  throw new Error('expected a rejection, got a result');
}

function expectCode(e: unknown, code: WcfsCode, f?: Fake): void {
  expect(e).toBeInstanceOf(WcfsError);
  expect((e as WcfsError).code).toBe(code);
  if (f !== undefined) expect((e as Error).message).toContain(f.where);
}

async function next(w: StorageWatch): Promise<CommitEvent> {
  const r = await w[Symbol.asyncIterator]().next();
  if (r.done) throw new Error('watch ended');
  return r.value;
}

/**
 * After a sync, no event is left for `w` (ready() cannot tell: it counts a replay that is
 * exhausted but not yet found to be). Leaves a next() pending: close the watch after.
 */
async function nothingMore(w: StorageWatch): Promise<boolean> {
  let t: NodeJS.Timeout | undefined;
  const none = new Promise<boolean>((r) => (t = setTimeout(() => r(true), 30)));
  const some = w[Symbol.asyncIterator]()
    .next()
    .then(
      (r) => r.done === true,
      () => false,
    );
  return Promise.race([none, some]).finally(() => clearTimeout(t));
}

const MODES: Array<{ enc: ZeoEncoding; unix: boolean; name: string }> = [
  { enc: 'pickle', unix: false, name: 'Z5 tcp' },
  { enc: 'msgpack', unix: false, name: 'M5 tcp' },
  { enc: 'pickle', unix: true, name: 'Z5 unix' },
  { enc: 'msgpack', unix: true, name: 'M5 unix' },
];

// ---- the tests ----

describe.each(MODES)('bad peers ($name)', ({ enc, unix }) => {
  const fake = (script: (p: Peer) => Promise<void>, writer?: Writer) => Fake.start({ enc, unix, script, ...(writer ? { writer } : {}) });

  it('garbage frame after the handshake: the pending call fails WCFS_EZEOPROTO', { timeout: 5000 }, async () => {
    const f = await fake(async (p) => {
      await p.greet();
      await p.expectCall('register');
      // >>> a payload that is neither a pickle nor msgpack
      await p.write(encodeFrame(Uint8Array.from([0xc1, 0xff, 0x00, 0x13, 0x37])));
    });
    let onClose!: (e: Error | null) => void;
    const closed = new Promise<Error | null>((r) => (onClose = r));
    const c = await connect(f, { onClose });
    const e = await errOf(c.call('register', ['1', 0]));
    expectCode(e, 'WCFS_EZEOPROTO', f);
    expectCode(await closed, 'WCFS_EZEOPROTO');
    // >>> the connection is dead: a later call throws the same error
    expect(await errOf(c.call('ping', []))).toBe(e);
  });

  it('garbage frame: ZeoStorage becomes fatal (pending load, later load, watch)', { timeout: 5000 }, async () => {
    const db = mkDb(T(1), [[0n, 'root', T(1)]]);
    const f = await fake(async (p) => {
      await p.greet();
      await serve(p, db, {
        loadBefore: async () => {
          // >>> loadBefore → garbage
          await p.write(encodeFrame(rec('not a ZEO message')));
          return NOREPLY;
        },
      });
    });
    const s = await open(f);
    const w = s.watch();
    const e = await errOf(s.load(0n, T(1)));
    expectCode(e, 'WCFS_EZEOPROTO', f);
    expectCode(await errOf(s.load(0n, T(1))), 'WCFS_EZEOPROTO');
    expectCode(await errOf(next(w)), 'WCFS_EZEOPROTO');
    expectCode(await errOf(next(s.watch())), 'WCFS_EZEOPROTO');
    // fatal: no reconnect
    await sleep(50);
    expect(f.peers.length).toBe(1);
  });

  it('oversized length prefix: WCFS_EZEOPROTO on its 4 bytes, the payload never awaited', { timeout: 5000 }, async () => {
    const f = await fake(async (p) => {
      await p.greet();
      await p.expectCall('register');
      // >>> 0xFFFFFFF0 and nothing more: the socket stays open
      await p.write(Uint8Array.from([0xff, 0xff, 0xff, 0xf0]));
    });
    const c = await connect(f);
    const t0 = Date.now();
    expectCode(await errOf(c.call('register', ['1', 0])), 'WCFS_EZEOPROTO', f);
    expect(Date.now() - t0).toBeLessThan(1000);
    // the client hung up: nothing more is read
    await f.peers[0]!.whenClosed;
  });

  it('oversized length prefix above maxFrame in the greeting and in a reply', { timeout: 5000 }, async () => {
    const f = await fake(async (p) => {
      if (p.n === 0) {
        // >>> greeting frame claims 2 MiB with maxFrame 1 MiB
        await p.write(Uint8Array.from([0x00, 0x20, 0x00, 0x00]));
        return;
      }
      await p.greet();
      await serve(p, mkDb(T(1)), {
        loadBefore: async () => {
          await p.write(Uint8Array.from([0x00, 0x10, 0x00, 0x01]));
          return NOREPLY;
        },
      });
    });
    expectCode(await errOf(ZeoConn.connect(f.addr, { maxFrame: 1 << 20 })), 'WCFS_EZEOPROTO', f);
    const s = await open(f, { maxFrame: 1 << 20 });
    expectCode(await errOf(s.load(0n, T(1))), 'WCFS_EZEOPROTO', f);
  });

  it.each(['Z4', 'X5', 'ruok', 'Z', 'Z5Z5', ''])('unknown handshake %j: connect and open fail WCFS_EZEOPROTO', { timeout: 5000 }, async (hs) => {
    const f = await fake(async (p) => {
      await p.greet(hs);
    });
    expectCode(await errOf(ZeoConn.connect(f.addr)), 'WCFS_EZEOPROTO', f);
    expectCode(await errOf(ZeoStorage.open(f.url, { ...quiet })), 'WCFS_EZEOPROTO', f);
    // the client never answered a handshake it does not speak
    await Promise.all(f.peers.map((p) => p.whenClosed));
    expect(f.peers.map((p) => p.handshake)).toEqual([null, null]);
  });

  it('a reply to an unknown msgid: WCFS_EZEOPROTO, calls in flight fail with it', { timeout: 5000 }, async () => {
    const f = await fake(async (p) => {
      await p.greet();
      const m = await p.expectCall('register');
      // >>> reply to msgid+1000, never called
      await p.reply((m.msgid as number) + 1000, idBytes(T(1)));
    });
    const c = await connect(f);
    expectCode(await errOf(c.call('register', ['1', 0])), 'WCFS_EZEOPROTO', f);
  });

  it('a reply to an unknown msgid during open: ZeoStorage.open fails WCFS_EZEOPROTO', { timeout: 5000 }, async () => {
    const f = await fake(async (p) => {
      await p.greet();
      await p.expectCall('register');
      await p.reply(new ZTuple([idBytes(0n), idBytes(T(1))]), idBytes(T(1)));
    });
    expectCode(await errOf(ZeoStorage.open(f.url, { ...quiet })), 'WCFS_EZEOPROTO', f);
  });

  it('exception replies: POSKeyError → WCFS_ENOOBJ, None → WCFS_ENODATA, other → WCFS_EZEOREMOTE', { timeout: 5000 }, async () => {
    const db = mkDb(T(3), [[1n, 'one', T(2)]]);
    const f = await fake(async (p) => {
      await p.greet();
      await serve(p, db, {
        loadBefore: (m) => {
          const oid = bytesId(argv(m)[0]);
          if (oid === 2n) return null; // >>> no revision before tid
          if (oid === 3n) {
            void p.raise(m.msgid, 'builtins.ValueError', new ZTuple(['nope']));
            return NOREPLY;
          }
          return stdHandlers(db).loadBefore!(m, p);
        },
      });
    });
    const s = await open(f);
    expect(await s.load(1n, T(3))).toMatchObject({ data: rec('one'), serial: T(2) });
    const e0 = await errOf(s.load(7n, T(3)));
    expectCode(e0, 'WCFS_ENOOBJ');
    expect(e0).toBeInstanceOf(NoObjectError);
    expect((e0 as NoObjectError).oid).toBe(7n);
    expectCode(await errOf(s.load(2n, T(3))), 'WCFS_ENODATA');
    const e3 = await errOf(s.load(3n, T(3)));
    expectCode(e3, 'WCFS_EZEOREMOTE', f);
    expect(e3).toMatchObject({ className: 'builtins.ValueError', method: 'loadBefore' });
    // none of these broke the connection
    expect(await s.load(1n, T(3))).toMatchObject({ serial: T(2) });
    expect(f.peers.length).toBe(1);
  });

  it('vote → ConflictError dict: WCFS_ECONFLICT with oid and serials; the transaction is aborted', { timeout: 5000 }, async () => {
    const db = mkDb(T(3), [[5n, 'five', T(3)]]);
    const seen: string[] = [];
    const f = await fake(async (p) => {
      await p.greet();
      await serve(p, db, {
        tpc_begin: () => (seen.push('tpc_begin'), NOREPLY),
        storea: (m) => (seen.push(`storea ${bytesId(argv(m)[0])} ${bytesId(argv(m)[1])}`), NOREPLY),
        vote: async (m) => {
          seen.push('vote');
          // >>> ConflictError's __dict__: serials = (current, stale)
          const d = new ZDict([
            ['message', 'database conflict error'],
            ['oid', idBytes(5n)],
            ['class_name', 'persistent.mapping.PersistentMapping'],
            ['serials', new ZTuple([idBytes(T(3)), idBytes(T(1))])],
          ]);
          await p.raise(m.msgid, 'ZODB.POSException.ConflictError', d);
          return NOREPLY;
        },
        tpc_abort: () => (seen.push('tpc_abort'), null),
      });
    });
    const s = await open(f, { readOnly: false });
    const e = await errOf(s.commit({ records: [{ oid: 5n, data: rec('five v2'), oldSerial: T(1) }] }));
    expectCode(e, 'WCFS_ECONFLICT');
    expect(e).toBeInstanceOf(ConflictError);
    expect(e).toMatchObject({ oid: 5n, expected: T(1), actual: T(3) });
    await s.sync(); // tpc_abort was sent before this
    expect(seen).toEqual(['tpc_begin', `storea 5 ${T(1)}`, 'vote', 'tpc_abort']);
  });

  it.each<[string, ZValue]>([
    ['not a tuple', 'boom'],
    ['3-tuple', new ZTuple(['ZODB.POSException.POSKeyError', new ZTuple([]), 1])],
    ['class name not text', new ZTuple([42, new ZTuple([])])],
    ['empty tuple', new ZTuple([])],
  ])('malformed exception reply (%s): WCFS_EZEOPROTO, fatal', { timeout: 5000 }, async (_, args) => {
    const f = await fake(async (p) => {
      await p.greet();
      await serve(p, mkDb(T(1)), {
        loadBefore: async (m) => {
          await p.send({ msgid: m.msgid, flags: 2, method: '.reply', args });
          return NOREPLY;
        },
      });
    });
    const s = await open(f);
    const w = s.watch();
    expectCode(await errOf(s.load(0n, T(1))), 'WCFS_EZEOPROTO', f);
    expectCode(await errOf(s.load(0n, T(1))), 'WCFS_EZEOPROTO', f);
    expectCode(await errOf(next(w)), 'WCFS_EZEOPROTO', f);
  });

  it('invalidations before register’s reply: ≤ its tid dropped, > kept; later ones in order', { timeout: 5000 }, async () => {
    const f = await fake(async (p) => {
      await p.greet();
      const m = await p.expectCall('register');
      // >>> invalidateTransaction(T1), (T2), (T3) then register → T2
      await p.invalidate(T(1), [1n]);
      await p.invalidate(T(2), [2n]);
      await p.invalidate(T(3), [3n]);
      await p.reply(m.msgid, idBytes(T(2)));
      // >>> after: T4, T5
      await p.invalidate(T(4), [4n]);
      await p.invalidate(T(5), [5n, 6n]);
      await serve(p, mkDb(T(5)));
    });
    const s = await open(f);
    const w = s.watch(T(2));
    expect(await next(w)).toEqual({ tid: T(3), oids: [3n] });
    expect(await next(w)).toEqual({ tid: T(4), oids: [4n] });
    expect(await next(w)).toEqual({ tid: T(5), oids: [5n, 6n] });
    expect(await s.sync()).toBe(T(5));
    expect(await nothingMore(w)).toBe(true);
    w.close();
  });

  it('bounded in-flight: at most maxInFlight calls on the wire, all complete', { timeout: 5000 }, async () => {
    let out = 0;
    let maxOut = 0;
    const f = await fake(async (p) => {
      await p.greet();
      for (;;) {
        const m = await p.recv();
        out++;
        maxOut = Math.max(maxOut, out);
        // >>> answer slowly
        setTimeout(() => {
          out--;
          void p.reply(m.msgid, new ZTuple([rec(`r ${String(argv(m)[0])}`), idBytes(T(1)), null]));
        }, 5);
      }
    });
    const c = await connect(f, { maxInFlight: 4 });
    const rs = await Promise.all(Array.from({ length: 30 }, (_, i) => c.call('echo', [i])));
    expect(rs.map((r) => Buffer.from((r as ZTuple).items[0] as Uint8Array).toString())).toEqual(Array.from({ length: 30 }, (_, i) => `r ${i}`));
    expect(maxOut).toBe(4);
  });

  it('bounded in-flight through ZeoStorage: 40 concurrent loads, at most 4 on the wire', { timeout: 5000 }, async () => {
    let out = 0;
    let maxOut = 0;
    const f = await fake(async (p) => {
      await p.greet();
      await serve(p, mkDb(T(1)), {
        loadBefore: (m) => {
          out++;
          maxOut = Math.max(maxOut, out);
          const oid = bytesId(argv(m)[0]);
          setTimeout(() => {
            out--;
            void p.reply(m.msgid, new ZTuple([rec(`obj ${oid}`), idBytes(T(1)), null]));
          }, 3);
          return NOREPLY;
        },
      });
    });
    const s = await open(f, { maxInFlight: 4 });
    const rs = await Promise.all(Array.from({ length: 40 }, (_, i) => s.load(BigInt(i), T(1))));
    expect(rs.map((r) => Buffer.from(r.data).toString())).toEqual(Array.from({ length: 40 }, (_, i) => `obj ${i}`));
    expect(maxOut).toBe(4);
  });
});

describe.each([MODES[0]!, MODES[3]!])('silent peers ($name)', ({ enc, unix }) => {
  const fake = (script: (p: Peer) => Promise<void>) => Fake.start({ enc, unix, script });

  it('no greeting: connect and open fail WCFS_EZEOCONN within connectTimeoutMs', { timeout: 5000 }, async () => {
    const f = await fake(() => new Promise(() => {})); // >>> accept, say nothing
    let t0 = Date.now();
    expectCode(await errOf(ZeoConn.connect(f.addr, { connectTimeoutMs: 150 })), 'WCFS_EZEOCONN', f);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
    expect(Date.now() - t0).toBeLessThan(1000);
    t0 = Date.now();
    expectCode(await errOf(ZeoStorage.open(f.url, { connectTimeoutMs: 150, ...quiet })), 'WCFS_EZEOCONN', f);
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('nobody listening: connect fails WCFS_EZEOCONN', { timeout: 5000 }, async () => {
    const f = await fake(() => Promise.resolve());
    await f.stop();
    expectCode(await errOf(ZeoConn.connect(f.addr, { connectTimeoutMs: 1000 })), 'WCFS_EZEOCONN', f);
  });

  it('silent after register: the heartbeat fails the connection WCFS_EZEOCONN', { timeout: 5000 }, async () => {
    let pinged = false;
    const f = await fake(async (p) => {
      await p.greet();
      const m = await p.expectCall('register');
      await p.reply(m.msgid, idBytes(T(1)));
      // >>> then silence
      for (;;) if ((await p.recv()).method === 'ping') pinged = true;
    });
    let onClose!: (e: Error | null) => void;
    const closed = new Promise<Error | null>((r) => (onClose = r));
    const c = await connect(f, { heartbeatMs: 200, pingTimeoutMs: 300, onClose });
    expect(await c.call('register', ['1', 0])).toEqual(idBytes(T(1)));
    c.startHeartbeat(); // (the driver starts it once register answered)
    const t0 = Date.now();
    const e = await errOf(c.call('loadBefore', [idBytes(0n), idBytes(T(2))]));
    expectCode(e, 'WCFS_EZEOCONN', f);
    expect(await closed).toBe(e);
    expect(pinged).toBe(true);
    expect(Date.now() - t0).toBeLessThan(1500);
  });

  it('silent after register: a waiting load is retried on the next connection', { timeout: 5000 }, async () => {
    const db = mkDb(T(1), [[0n, 'root', T(1)]]);
    const f = await fake(async (p) => {
      await p.greet();
      if (p.n === 0) {
        const m = await p.expectCall('register');
        await p.reply(m.msgid, idBytes(T(1)));
        for (;;) await p.recv(); // >>> silence: the load and the ping go unanswered
      }
      await serve(p, db);
    });
    const s = await open(f, { heartbeatMs: 200, pingTimeoutMs: 300 });
    expect(await s.load(0n, T(1))).toMatchObject({ data: rec('root'), serial: T(1) });
    expect(f.peers.length).toBe(2);
  });

  it('silent after register, no reconnect possible: a waiting load fails WCFS_EZEOCONN after reconnectWaitMs', { timeout: 5000 }, async () => {
    const f = await fake(async (p) => {
      if (p.n > 0) return; // >>> later connections: accepted, never greeted
      await p.greet();
      const m = await p.expectCall('register');
      await p.reply(m.msgid, idBytes(T(1)));
      for (;;) await p.recv();
    });
    const s = await open(f, { heartbeatMs: 200, pingTimeoutMs: 300, reconnectWaitMs: 400, connectTimeoutMs: 100 });
    const t0 = Date.now();
    const e = await errOf(s.load(0n, T(1)));
    expectCode(e, 'WCFS_EZEOCONN', f);
    const dt = Date.now() - t0;
    expect(dt).toBeGreaterThanOrEqual(400);
    expect(dt).toBeLessThan(2500);
    expect(f.peers.length).toBeGreaterThan(1);
  });

  it('closed while reconnecting: the connection that comes up late is closed', { timeout: 5000 }, async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const db = mkDb(T(1));
    const f = await fake(async (p) => {
      if (p.n === 0) {
        await p.greet();
        const m = await p.expectCall('register');
        await p.reply(m.msgid, idBytes(T(1)));
        await p.hangUp(); // >>> drop the first connection
        return;
      }
      await gate; // >>> greet the reconnect only after the storage was closed
      await p.greet();
      await serve(p, db);
    });
    const s = await open(f, { connectTimeoutMs: 1000 });
    await f.peer(1);
    await s.close();
    release();
    // afterEach: every connection closed by the client, no timer left
    expect(await f.allClosed(1500)).toBe(true);
  });
});

describe.each([MODES[0]!, MODES[3]!])('close while reconnecting ($name)', ({ enc, unix }) => {
  /** conn 0: register → T1, then hang up; later connections: accepted, never greeted. */
  const dropOnce = () =>
    Fake.start({
      enc,
      unix,
      script: async (p) => {
        if (p.n > 0) return;
        await p.greet();
        const m = await p.expectCall('register');
        await p.reply(m.msgid, idBytes(T(1)));
        await p.hangUp();
      },
    });

  it('waiting for a greeting (default connectTimeoutMs): close() drops the attempt at once', { timeout: 5000 }, async () => {
    const f = await dropOnce();
    const s = await open(f, { connectTimeoutMs: 10_000 });
    await f.peer(1); // >>> the reconnect is waiting for its greeting
    await s.close();
    // afterEach: the attempt's socket is closed (within 1 s, not after 10), no timer left
  });

  it('sleeping between attempts: close() leaves no backoff timer behind', { timeout: 5000 }, async () => {
    const f = await dropOnce();
    const s = await open(f, { backoffMinMs: 3000 });
    await f.peers[0]!.whenClosed;
    await sleep(20); // >>> the reconnect loop sleeps 3 s before its first attempt
    await s.close();
    // afterEach: no timer left, no second connection
    expect(f.peers.length).toBe(1);
  });
});

describe.each(MODES)('reconnect and the gap ($name)', ({ enc, unix }) => {
  const fake = (script: (p: Peer) => Promise<void>) => Fake.start({ enc, unix, script });

  /** conn 0: register → T1, push T2, hang up once the test says so; conn 1: `second`. */
  async function twoConns(second: (p: Peer) => Promise<void>) {
    let drop!: () => void;
    const dropped = new Promise<void>((r) => (drop = r));
    const f = await fake(async (p) => {
      if (p.n > 1) throw new Error(`fake: unexpected connection #${p.n}`);
      if (p.n === 1) return second(p);
      await p.greet();
      const m = await p.expectCall('register');
      await p.reply(m.msgid, idBytes(T(1)));
      await p.invalidate(T(2), [1n]);
      await dropped;
      await p.hangUp();
    });
    const s = await open(f);
    const w = s.watch(T(1)); // T2 may have arrived with register's reply
    expect(await next(w)).toEqual({ tid: T(2), oids: [1n] });
    drop();
    return { f, s, w };
  }

  it('missed transactions are delivered in order, exactly once, then the buffered ones', { timeout: 5000 }, async () => {
    const db = mkDb(T(5));
    db.txns = [
      { tid: T(1), oids: [9n] },
      { tid: T(2), oids: [1n] },
      { tid: T(3), oids: [1n, 2n] },
      { tid: T(4), oids: [] },
      { tid: T(5), oids: [3n] },
    ];
    const { f, s, w } = await twoConns(async (p) => {
      await p.greet();
      const m = await p.expectCall('register');
      // >>> before the reply: T4, T5 (≤ register's tid: dropped, the iterator brings them)
      await p.invalidate(T(4), []);
      await p.invalidate(T(5), [3n]);
      await p.reply(m.msgid, idBytes(T(5)));
      // >>> after the reply, during recovery: T6 (delivered after the missed ones)
      await p.invalidate(T(6), [6n]);
      await serve(p, db);
    });
    const got: CommitEvent[] = [];
    for (let i = 0; i < 4; i++) got.push(await next(w));
    expect(got).toEqual([
      { tid: T(3), oids: [1n, 2n] },
      { tid: T(4), oids: [] },
      { tid: T(5), oids: [3n] },
      { tid: T(6), oids: [6n] },
    ]);
    db.head = T(6);
    expect(await s.sync()).toBe(T(6));
    expect(await nothingMore(w)).toBe(true);
    expect(db.starts).toEqual([
      [T(2), T(2)], // >>> the server has T2, the last transaction we saw
      [T(2) + 1n, T(5)], // >>> the gap up to register's tid
    ]);
    expect(f.peers[1]!.handshake).toBe(enc === 'pickle' ? 'Z5' : 'M5');
    // a watch from before the disconnect replays the same, once
    const w2 = s.watch(T(1));
    const again: bigint[] = [];
    for (let i = 0; i < 5; i++) again.push((await next(w2)).tid);
    expect(again).toEqual([T(2), T(3), T(4), T(5), T(6)]);
    expect(await nothingMore(w2)).toBe(true);
    w.close();
    w2.close();
  });

  it('more pushes while recovering than maxRecoveryBuffer: that attempt is dropped (temporary), the next one recovers', { timeout: 5000 }, async () => {
    const db = mkDb(T(3));
    db.txns = [
      { tid: T(1), oids: [9n] },
      { tid: T(2), oids: [1n] },
      { tid: T(3), oids: [2n] },
    ];
    let drop!: () => void;
    const dropped = new Promise<void>((r) => (drop = r));
    const f = await fake(async (p) => {
      await p.greet();
      const m = await p.expectCall('register');
      if (p.n === 0) {
        await p.reply(m.msgid, idBytes(T(1)));
        await p.invalidate(T(2), [1n]);
        await dropped;
        return p.hangUp();
      }
      await p.reply(m.msgid, idBytes(T(3)));
      if (p.n === 1) {
        // >>> five commits pushed before the recovery's first answer: one over the bound of 4
        for (let i = 0; i < 5; i++) await p.invalidate(T(10 + i), [7n]);
        return p.whenClosed; // the client hangs up on it
      }
      await serve(p, db); // >>> the next attempt: recovery as usual
    });
    const s = await open(f, { maxRecoveryBuffer: 4 });
    const w = s.watch(T(1));
    expect(await next(w)).toEqual({ tid: T(2), oids: [1n] });
    drop();
    expect(await next(w)).toEqual({ tid: T(3), oids: [2n] });
    expect(f.peers.length).toBe(3);
    expect(await nothingMore(w)).toBe(true);
    w.close();
  });

  it('no transactions missed: reconnect without iterating', { timeout: 5000 }, async () => {
    const db = mkDb(T(2), [[0n, 'root', T(1)]]);
    const { f, s, w } = await twoConns(async (p) => {
      await p.greet();
      await serve(p, db, { iterator_start: () => Promise.reject(new Error('fake: iterator_start without a gap')) });
    });
    expect(await s.load(0n, T(2))).toMatchObject({ data: rec('root') });
    expect(f.peers.length).toBe(2);
    expect(await nothingMore(w)).toBe(true);
    w.close();
  });

  it('a packed transaction in the gap: the watch fails WCFS_EZEOGAP', { timeout: 5000 }, async () => {
    const db = mkDb(T(4));
    db.txns = [
      { tid: T(2), oids: [1n] },
      { tid: T(3), status: 'p', oids: [1n] },
      { tid: T(4), oids: [2n] },
    ];
    let gcd = false;
    const { f, s, w } = await twoConns(async (p) => {
      await p.greet();
      await serve(p, db, { iterator_gc: () => ((gcd = true), NOREPLY) });
    });
    expectCode(await errOf(next(w)), 'WCFS_EZEOGAP', f);
    expectCode(await errOf(s.load(0n, T(4))), 'WCFS_EZEOGAP', f);
    await sleep(50);
    expect(db.starts).toEqual([
      [T(2), T(2)], // >>> the server still has T2, the last transaction we saw
      [T(2) + 1n, T(4)], // >>> the gap, which stops at the packed T3
    ]);
    expect(gcd).toBe(true); // the server's iterator was freed
    expect(f.peers.length).toBe(2); // fatal: no more reconnects
  });

  it('the last transaction we saw was packed (status p): WCFS_EZEOGAP before the gap is read', { timeout: 5000 }, async () => {
    // a pack to a time ≥ T2 rewrote T2 and may have dropped, without a trace, transactions
    // after it that lost all their records: the gap must not be trusted even if it looks whole
    const db = mkDb(T(4));
    db.txns = [
      { tid: T(2), status: 'p', oids: [1n] },
      { tid: T(4), oids: [2n] },
    ];
    const { f, w } = await twoConns(async (p) => {
      await p.greet();
      await serve(p, db);
    });
    const e = await errOf(next(w));
    expectCode(e, 'WCFS_EZEOGAP', f);
    expect((e as Error).message).toContain(`transaction @${hex16(T(2))}, the last one we saw, was packed`);
    expect(db.starts).toEqual([[T(2), T(2)]]);
  });

  it('the history ends before register’s tid: the watch fails WCFS_EZEOGAP', { timeout: 5000 }, async () => {
    const db = mkDb(T(5));
    db.txns = [
      { tid: T(2), oids: [1n] },
      { tid: T(3), oids: [1n] },
      { tid: T(4), oids: [2n] },
    ];
    const { f, s, w } = await twoConns(async (p) => {
      await p.greet();
      await serve(p, db);
    });
    const e = await errOf(next(w));
    expectCode(e, 'WCFS_EZEOGAP', f);
    expect(db.starts).toEqual([
      [T(2), T(2)],
      [T(2) + 1n, T(5)],
    ]);
    // nothing of the incomplete gap was delivered
    expect(s.head()).toBe(T(2));
    expectCode(await errOf(next(s.watch())), 'WCFS_EZEOGAP');
  });

  it('the server lacks the last transaction we saw (another database, or packed): WCFS_EZEOGAP', { timeout: 5000 }, async () => {
    const db = mkDb(T(5));
    db.txns = [
      { tid: T(3), oids: [1n] },
      { tid: T(4), oids: [2n] },
      { tid: T(5), oids: [2n] },
    ];
    const { f, s, w } = await twoConns(async (p) => {
      await p.greet();
      await serve(p, db);
    });
    expectCode(await errOf(next(w)), 'WCFS_EZEOGAP', f);
    expect(db.starts).toEqual([[T(2), T(2)]]); // >>> T2 not found: the gap is not even tried
    expect(s.head()).toBe(T(2));
  });

  it('register’s tid went backwards: WCFS_EZEOGAP', { timeout: 5000 }, async () => {
    const { f, s, w } = await twoConns(async (p) => {
      await p.greet();
      await serve(p, mkDb(T(1)));
    });
    expectCode(await errOf(next(w)), 'WCFS_EZEOGAP', f);
    expectCode(await errOf(s.load(0n, T(2))), 'WCFS_EZEOGAP', f);
    expect(s.head()).toBe(T(2));
  });
});

// ---- seeded random: chunking of the server's writes ----

describe(`random chunking of the server’s writes (seed ${seedOr(20261206)}; WCFS_SEED replays)`, () => {
  const seed = seedOr(20261206);

  it.each(MODES)('$name: loads and pushes arrive exactly as sent', { timeout: 10_000 }, async ({ enc, unix }) => {
    const r = rng(seed + (enc === 'pickle' ? 0 : 1) + (unix ? 2 : 0));
    const int = (n: number) => Math.floor(r() * n);
    // >>> every write cut: 1-byte pieces, random pieces, or whole; a yield between pieces
    const writer: Writer = async (sock, bytes) => {
      const mode = int(3);
      let i = 0;
      while (i < bytes.length) {
        const k = mode === 0 ? 1 : mode === 1 ? 1 + int(Math.min(bytes.length - i, 9)) : bytes.length - i;
        sock.write(bytes.subarray(i, i + k));
        i += k;
        if (int(3) === 0) await new Promise((res) => setImmediate(res));
      }
    };
    const objs: Array<[bigint, string, bigint]> = Array.from({ length: 8 }, (_, i) => [BigInt(i), `obj ${i} `.repeat(1 + int(40)), T(1 + int(3))]);
    const db = mkDb(T(10), objs);
    const sent: CommitEvent[] = [];
    /** tid of the last invalidation sent before each load's reply, by the load's oid-and-seq key. */
    const before = new Map<number, bigint>();
    let tid = T(10);
    const f = await Fake.start({
      enc,
      unix,
      writer,
      script: async (p) => {
        await p.greet();
        const m = await p.expectCall('register');
        // >>> pushes ≤ register's tid before the reply: dropped
        await p.invalidate(T(9), [1n]);
        await p.reply(m.msgid, idBytes(db.head));
        await serve(p, db, {
          loadBefore: async (lm) => {
            const [oidB, beforeB] = argv(lm);
            // >>> 0..3 invalidations ahead of the reply, as a committing neighbour would cause
            for (let n = int(4); n > 0; n--) {
              tid += BigInt(1 + int(0x1000));
              const ev = { tid, oids: Array.from({ length: int(4) }, () => BigInt(int(1000))) };
              sent.push(ev);
              void p.invalidate(ev.tid, ev.oids);
            }
            before.set(Number(bytesId(beforeB) - T(100)), tid);
            const o = db.objs.get(bytesId(oidB))!;
            return new ZTuple([o.data, idBytes(o.serial), null]);
          },
          lastTransaction: () => idBytes(tid),
        });
      },
    });
    const s = await open(f);
    const w = s.watch();
    const got: CommitEvent[] = [];
    const drain = (async () => {
      for await (const ev of w) got.push(ev);
    })();
    // >>> rounds of 1..4 concurrent loads; `at` carries the load's number to the fake
    let seq = 0;
    for (let round = 0; round < 25; round++) {
      const batch = Array.from({ length: 1 + int(4) }, () => ({ oid: BigInt(int(8)), k: seq++ }));
      await Promise.all(
        batch.map(async ({ oid, k }) => {
          const res = await s.load(oid, T(100) + BigInt(k) - 1n);
          const o = db.objs.get(oid)!;
          expect(Buffer.from(res.data).toString()).toBe(Buffer.from(o.data).toString());
          expect(res.serial).toBe(o.serial);
          // stream order: everything pushed before this reply has been delivered
          expect(s.head()).toBeGreaterThanOrEqual(before.get(k)!);
        }),
      );
    }
    expect(await s.sync()).toBe(tid);
    w.close();
    await drain;
    expect(got).toEqual(sent);
    expect(sent.length).toBeGreaterThan(20);
  });
});
