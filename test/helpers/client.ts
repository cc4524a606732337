// Harness for the client library tests (test/client*.test.ts).
//
//   ClientTDB        a fresh database with ZBigFiles, served by a real `wcfs serve` (child
//                    process), commits by our writer; blk data as upstream's tests write it
//                    ("c1" = the text, zero-padded to blksize).
//   FakeWcfs         a directory laid out like a mount (head/at, head/bigfile/<foid>,
//                    @<rev>/bigfile/<foid>, plain files with blksize = st_blksize = 4 KiB) and
//                    a socketpair standing in for head/watch, whose server end this process
//                    drives line by line: protocol races on demand (H1, H2, H3, H6, poison).
//   probe helpers    reads in a child (native clientProbe), so faults only kill the child:
//                    readMustFault (upstream read_mustfault), assertBlkFaults.
import { Socket } from 'node:net';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { native } from '../../src/native.js';
import { sleep } from '../../src/util/async.js';
import { WriteTxn } from '../../src/zodb/db.js';
import { hex16, type Tid } from '../../src/zodb/ids.js';
import { openStorage } from '../../src/zodb/open.js';
import { liveDb, type LiveDb } from './testdb.js';
import { PersistentRef } from '../../src/zodb/pickle/index.js';
import type { IWritableStorage } from '../../src/zodb/storage.js';
import { createZBigFile, ensureRoot, rootSet, setBlock, ZBIGFILE_CLASS } from '../../src/zodb/zbigfile.js';
import { findMount } from '../../src/fuse/mountinfo.js';
import type { FileH, Mapping } from '../../src/client/index.js';
import { startServer, tmpDir, type TestServer } from './wcfs.js';

export const PAGE = 4096;
export const SIGSEGV = 11;

// ---- probes ----

/** Upstream read_mustfault: reading bytes[off] kills a child with SIGSEGV. */
export function readMustFault(bytes: Uint8Array, off: number): void {
  const r = native().clientProbe(bytes, [off], 'crash');
  expect(r.status, `read @${off} must fault`).toBe(`signal:${SIGSEGV}`);
}

/** Every page of [off, off+len) faults when read (one child), and the first one kills. */
export function assertRangeFaults(bytes: Uint8Array, off: number, len: number): void {
  const offs: number[] = [];
  for (let o = off; o < off + len; o += PAGE) offs.push(o);
  const r = native().clientProbe(bytes, offs, 'raw');
  expect(r.status).toBe('exit:0');
  expect(
    [...r.values].filter((v) => v !== -SIGSEGV),
    'pages that do not fault',
  ).toEqual([]);
  readMustFault(bytes, off);
}

export function assertBlkFaults(m: Mapping, blk: number): void {
  const bs = m.fileh.blksize;
  assertRangeFaults(m.bytes, (blk - m.blkStart) * bs, bs);
}

/** Block data as upstream's tests write it: the text, zero-padded to bs. */
export function blkData(text: string, bs: number): Uint8Array {
  const b = new Uint8Array(bs);
  b.set(Buffer.from(text, 'latin1'));
  return b;
}

/**
 * Upstream tMapping.assertBlk: read the block's first byte on *this* (the JS) thread — the
 * page fault may need a pin from our own pinner —, compare the whole block, and check the
 * complete pinned table of the file.
 */
export function assertBlk(m: Mapping, blk: number, text: string, pinnedOK: Record<number, Tid>): void {
  const bs = m.fileh.blksize;
  const off = (blk - m.blkStart) * bs;
  expect(m.bytes[off], `#${blk}[0]`).toBe(text.length > 0 ? text.charCodeAt(0) : 0);
  const got = m.bytes.subarray(off, off + bs);
  const want = blkData(text, bs);
  if (Buffer.compare(got, want) !== 0) {
    const head = Buffer.from(got.subarray(0, 16)).toString('latin1').replace(/\0+$/, '');
    expect.fail(`#${blk}: data ${JSON.stringify(head)}…, want ${JSON.stringify(text)}`);
  }
  expect(pinnedText(m.fileh), `#${blk}: pinned`).toEqual(pinnedText(pinnedOK));
}

/** Pinned table as {blk: 16-hex} for readable diffs. */
export function pinnedText(p: FileH | Record<number, Tid>): Record<number, string> {
  const out: Record<number, string> = {};
  const entries = 'pinned' in p && typeof p.pinned === 'function' ? [...(p as FileH).pinned()] : Object.entries(p as Record<number, Tid>);
  for (const [blk, rev] of entries) out[Number(blk)] = hex16(rev as bigint);
  return out;
}

// ---- real server ----

export class ClientTDB {
  db!: IWritableStorage;
  srv!: TestServer;
  readonly dir = tmpDir('wcfs-client-');
  readonly revs: Tid[] = [];

  constructor(readonly bs = 65536) {}

  /** The database as WCFS_TEST_DB says (testdb.ts): a file, or a runzeo over it. */
  live!: LiveDb;

  get zurl(): string {
    return this.live.zurl;
  }

  /** A new database with `nfile` ZBigFiles; their creation is at0 (the server's tail). */
  async create(nfile = 1): Promise<bigint[]> {
    this.live = await liveDb(`${this.dir}/data.fs`);
    this.db = (await openStorage(this.zurl, { create: true })) as IWritableStorage;
    await ensureRoot(this.db);
    const txn = new WriteTxn(this.db);
    const foids: bigint[] = [];
    for (let i = 0; i < nfile; i++) {
      const foid = createZBigFile(txn, this.bs);
      await rootSet(txn, `f${i}`, new PersistentRef(foid, ZBIGFILE_CLASS));
      foids.push(foid);
    }
    this.revs.push(await txn.commit({ description: 'at0: files' }));
    return foids;
  }

  async serve(args: string[] = []): Promise<void> {
    this.srv = await startServer(this.zurl, { dir: this.dir, args: ['--pintimeout', '10', ...args] });
    // no readahead: a fault in one block must not read (and so pin) its neighbours
    const m = findMount(this.srv.mnt)!;
    writeFileSync(`/sys/class/bdi/0:${m.minor}/read_ahead_kb`, '0');
  }

  get at0(): Tid {
    return this.revs[0]!;
  }

  head(): Tid {
    return this.revs[this.revs.length - 1]!;
  }

  /** Commit {blk: text | null (punch)} to foid; waits until the server's head is there. */
  async commit(foid: bigint, blocks: Record<number, string | null>): Promise<Tid> {
    const txn = new WriteTxn(this.db);
    for (const [blk, text] of Object.entries(blocks)) {
      await setBlock(txn, foid, Number(blk), text === null ? null : blkData(text, this.bs), { format: 'ZBlk0' });
    }
    const tid = await txn.commit();
    this.revs.push(tid);
    if (this.srv) await this.srv.waitHead(hex16(tid));
    return tid;
  }

  async close(): Promise<void> {
    await this.db?.close();
    await this.srv?.stop();
    await this.live?.close();
  }
}

// ---- fake mount + scripted watch link ----

export class FakeWcfs {
  readonly bs = PAGE;
  readonly mnt: string;
  /** Server end of the watch link. */
  sock!: Socket;
  /** Client end: hand to wc.connect(at, {watchFd}). */
  clientFd = -1;
  readonly lines: string[] = [];
  eof = false;
  /** Close the link when the client says bye (as the server does). */
  answerBye = true;
  /** Every line received, for the record. */
  readonly log: string[] = [];
  /** Answer watch requests with ok by itself (teardown). */
  private autoOk = false;
  private rx = '';
  private waiters: Array<() => void> = [];
  private nextPin = 2;

  constructor(private readonly dir = tmpDir('wcfs-fake-')) {
    this.mnt = path.join(dir, 'mnt');
    mkdirSync(path.join(this.mnt, 'head', 'bigfile'), { recursive: true });
    this.setHead(1n);
  }

  setHead(at: Tid): void {
    writeFileSync(path.join(this.mnt, 'head', 'at'), hex16(at));
  }

  /** Write file foid as of rev (null: head): block i filled with byte fills[i]. */
  writeFile(foid: bigint, rev: Tid | null, fills: number[]): void {
    const d = path.join(this.mnt, rev === null ? 'head' : `@${hex16(rev)}`, 'bigfile');
    mkdirSync(d, { recursive: true });
    const b = Buffer.alloc(fills.length * this.bs);
    fills.forEach((f, i) => b.fill(f, i * this.bs, (i + 1) * this.bs));
    writeFileSync(path.join(d, hex16(foid)), b);
  }

  /** A new link: returns the client's fd. */
  link(): number {
    const [c, s] = native().clientSocketpair();
    this.clientFd = c;
    this.sock = new Socket({ fd: s, readable: true, writable: true });
    this.sock.setEncoding('latin1');
    this.sock.on('data', (d: string) => {
      this.rx += d;
      let i: number;
      while ((i = this.rx.indexOf('\n')) >= 0) {
        const line = this.rx.slice(0, i);
        this.rx = this.rx.slice(i + 1);
        this.log.push(line);
        if (/^\d+ bye$/.test(line) && this.answerBye) this.sock.end();
        else if (this.autoOk && /^\d+ watch /.test(line)) this.send(`${line.split(' ')[0]} ok`);
        else this.lines.push(line);
      }
      this.wake();
    });
    this.sock.on('end', () => {
      this.eof = true;
      this.wake();
    });
    this.sock.on('error', () => {
      this.eof = true;
      this.wake();
    });
    return c;
  }

  send(line: string): void {
    this.sock.write(line + '\n');
  }

  /** Send `pin` on a new even stream; returns the stream. */
  pin(foid: bigint, blk: number, rev: Tid | null): number {
    const s = this.nextPin;
    this.nextPin += 2;
    this.send(`${s} pin ${hex16(foid)} #${blk} @${rev === null ? 'head' : hex16(rev)}`);
    return s;
  }

  /** The next line from the client (in order). */
  async next(ms = 5000): Promise<string> {
    const t0 = Date.now();
    while (this.lines.length === 0) {
      if (this.eof) throw new Error('fake wlink: EOF');
      if (Date.now() - t0 > ms) throw new Error(`fake wlink: nothing received in ${ms} ms`);
      await this.waitAny(ms - (Date.now() - t0));
    }
    return this.lines.shift()!;
  }

  /** Wait for a line matching re (skipping nothing: it must be the next one). */
  async expect(re: RegExp, ms = 5000): Promise<RegExpExecArray> {
    const l = await this.next(ms);
    const m = re.exec(l);
    if (!m) throw new Error(`fake wlink: got ${JSON.stringify(l)}, want ${re}`);
    return m;
  }

  /** Serve one watch/unwatch request with `reply` (after `before` ran). Returns its text. */
  async serveReq(reply = 'ok', before?: (req: string) => Promise<void>): Promise<string> {
    const m = await this.expect(/^(\d+) (watch .*)$/);
    await before?.(m[2]!);
    this.send(`${m[1]} ${reply}`);
    return m[2]!;
  }

  async untilEOF(ms = 5000): Promise<string[]> {
    const t0 = Date.now();
    while (!this.eof) {
      if (Date.now() - t0 > ms) throw new Error(`fake wlink: no EOF in ${ms} ms`);
      await this.waitAny(ms - (Date.now() - t0));
    }
    return this.lines.splice(0);
  }

  /** From now on answer every watch request ok (also those received already). */
  serveAll(): void {
    this.autoOk = true;
    for (const l of this.lines.splice(0)) if (/^\d+ watch /.test(l) && !this.sock.destroyed) this.send(`${l.split(' ')[0]} ok`);
  }

  /** Ends the link and removes the fake mount's directory (mappings of its files stay valid). */
  close(): void {
    this.sock?.destroy();
    rmSync(this.dir, { recursive: true, force: true });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private waitAny(ms: number): Promise<void> {
    const woken = new AbortController();
    this.waiters.push(() => woken.abort());
    return sleep(Math.max(ms, 0), woken.signal);
  }
}
