// wcfs as a drop-in for wendelin.core's (issue 13, items 1-4): what upstream's own tests see.
//
//  1. .wcfs/debug/zhead (server option debugFiles, `wcfs serve --debug`): a line `<tid>\n` per
//     commit, after head/at shows it; a reader that never reads is dropped (logged with its
//     pid) and commits go on; ZHeadLink counts readers. Without the option, no .wcfs/debug/.
//  2. Reply texts byte for byte: "too far away back" with δt as Go prints a Duration, sent
//     UTF-8 as Go sends it; peer text quoted as Go's %q.
//  3. mtimes are ZODB's TimeStamp of the tid, to the microsecond (checked against the venv's
//     persistent.TimeStamp, exactly, and within upstream's 1 µs).
//  4. The page-cache state after commits as upstream's test_wcfs_basic walks it: changed blocks
//     leave head's cache, unchanged ones stay (also across a size change), and the old data
//     of a changed block is found in @<BlkRevAt(blk, oldHead)>'s cache — a file nobody had
//     looked up before — while an @<rev> where the block lies past the end is left alone.
import { spawnSync } from 'node:child_process';
import { open, readdir, readFile, stat, type FileHandle } from 'node:fs/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { cacheResidency } from '../src/fuse/pagecache.js';
import { ZHEAD_BUF_LINES } from '../src/server/zhead.js';
import { goDuration, goQuote } from '../src/watchlink/wire.js';
import { WriteTxn } from '../src/zodb/db.js';
import { hex16, tidToEpochMicros, type Oid, type Tid } from '../src/zodb/ids.js';
import { openStorage } from '../src/zodb/open.js';
import type { IWritableStorage } from '../src/zodb/storage.js';
import { createZBigFile, ensureRoot, setBlock } from '../src/zodb/zbigfile.js';
import { sleep } from './helpers/mount.js';
import { python, pythonEnv } from './helpers/python.js';
import { expectResidency } from './helpers/residency.js';
import { startServer, stopAllServers, tmpDir, type TestServer } from './helpers/wcfs.js';
import { TWatchLink } from './helpers/wlink.js';

afterAll(stopAllServers, 30_000);

const BS = 65536;
const PAGE = 4096;

interface Db {
  path: string;
  db: IWritableStorage;
  foid: Oid;
  at0: Tid;
  /** Commit blocks (text, zero-padded to the block; '' = a block of zeros); the new tid. */
  commit(blocks: Record<number, string>): Promise<Tid>;
}

/** A fresh data.fs: the root (a PersistentMapping, oid 0) and one empty ZBigFile, committed @at0. */
async function freshDb(dir: string): Promise<Db> {
  const path = `${dir}/data.fs`;
  const db = (await openStorage(path, { create: true })) as IWritableStorage;
  await ensureRoot(db);
  const txn = new WriteTxn(db);
  const foid = createZBigFile(txn, BS);
  const at0 = await txn.commit();
  return {
    path,
    db,
    foid,
    at0,
    async commit(blocks) {
      const t = new WriteTxn(db);
      for (const [blk, s] of Object.entries(blocks)) await setBlock(t, foid, Number(blk), Buffer.from(s, 'latin1'));
      return t.commit();
    },
  };
}

async function statsOf(srv: TestServer): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const m of (await readFile(srv.at('.wcfs/stats'))).toString().matchAll(/^(\w+)\t: (\d+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

/** A reader of .wcfs/debug/zhead in this process: reads only when asked for a line. */
class ZHeadReader {
  private rx = '';
  private constructor(private readonly fh: FileHandle) {}
  static async open(p: string): Promise<ZHeadReader> {
    return new ZHeadReader(await open(p, 'r'));
  }
  async line(): Promise<string> {
    for (;;) {
      const i = this.rx.indexOf('\n');
      if (i >= 0) {
        const l = this.rx.slice(0, i);
        this.rx = this.rx.slice(i + 1);
        return l;
      }
      const b = Buffer.alloc(4096);
      const { bytesRead } = await this.fh.read(b, 0, b.length, null);
      if (bytesRead === 0) throw new Error('zhead: EOF');
      this.rx += b.toString('latin1', 0, bytesRead);
    }
  }
  close(): Promise<void> {
    return this.fh.close();
  }
}

describe('.wcfs/debug/zhead (item 1)', () => {
  it('a line per commit, after head/at shows it; a reader that never reads is dropped and commits go on; ZHeadLink counts readers', async () => {
    const dir = tmpDir();
    const d = await freshDb(dir);
    const srv = await startServer(d.path, { dir, args: ['--debug'] });
    expect((await readdir(srv.at('.wcfs'))).sort()).toEqual(['debug', 'pintimeout', 'stats', 'zurl']);
    expect(await readdir(srv.at('.wcfs/debug'))).toEqual(['zhead']);
    expect((await statsOf(srv)).ZHeadLink).toBe(0);
    const z = await ZHeadReader.open(srv.at('.wcfs/debug/zhead'));
    expect((await statsOf(srv)).ZHeadLink).toBe(1);

    // >>> commits, one at a time: each one's tid comes, and head/at shows it by then
    for (let i = 0; i < 5; i++) {
      const tid = hex16(await d.commit({ [i]: `x${i}` }));
      expect(await z.line()).toBe(tid);
      expect(await srv.head()).toBe(tid);
    }

    // >>> a second reader that never reads; many commits, the first reader keeps up
    const idle = await open(srv.at('.wcfs/debug/zhead'), 'r');
    expect((await statsOf(srv)).ZHeadLink).toBe(2);
    const chunk = 50;
    const tids: string[] = [];
    while (tids.length < ZHEAD_BUF_LINES + chunk) {
      const these: string[] = [];
      for (let i = 0; i < chunk; i++) these.push(hex16(await d.commit({ 0: `y${tids.length + i}` })));
      for (const t of these) expect(await z.line()).toBe(t); // exactly these, in order
      tids.push(...these);
    }
    // <<< commit processing went on: head/at is the last commit; the idle reader was dropped
    expect(await srv.head()).toBe(tids[tids.length - 1]);
    expect((await statsOf(srv)).ZHeadLink).toBe(1);
    expect(srv.stderr()).toMatch(new RegExp(`\\.wcfs/debug/zhead: reader pid ${process.pid} \\(fh \\d+\\) has ${ZHEAD_BUF_LINES} lines unread: dropped`));
    // its reads end (EOF); the other reader goes on
    const { bytesRead } = await idle.read(Buffer.alloc(64), 0, 64, null);
    expect(bytesRead).toBe(0);
    await idle.close();
    const last = hex16(await d.commit({ 1: 'z' }));
    expect(await z.line()).toBe(last);

    // >>> release: ZHeadLink back to 0
    await z.close();
    for (let i = 0; i < 100 && (await statsOf(srv)).ZHeadLink !== 0; i++) await sleep(10); // RELEASE is asynchronous
    expect((await statsOf(srv)).ZHeadLink).toBe(0);
    await d.db.close();
    await srv.stop();
  }, 120_000);
});

describe('reply texts (item 2)', () => {
  it("goDuration is Go's time.Duration.String", () => {
    // [ns, what Go prints]
    const table: Array<[bigint, string]> = [
      [0n, '0s'],
      [1n, '1ns'],
      [999n, '999ns'],
      [1000n, '1µs'],
      [1500n, '1.5µs'],
      [1_000_000n, '1ms'],
      [1_234_567n, '1.234567ms'],
      [1_000_000_000n, '1s'],
      [1_500_000_000n, '1.5s'],
      [60_000_000_000n, '1m0s'],
      [61_000_001_000n, '1m1.000001s'],
      [3_600_000_000_000n, '1h0m0s'],
      [3_661_000_000_000n, '1h1m1s'],
      [100n * 3_600_000_000_000n + 1n, '100h0m0.000000001s'],
      [-1_500_000_000n, '-1.5s'],
    ];
    for (const [ns, want] of table) expect(goDuration(ns), String(ns)).toBe(want);
  });

  it("goQuote is Go's %q of the peer's bytes (taken as UTF-8)", () => {
    const bytes = (...b: number[]) => Buffer.from(b).toString('latin1');
    // [bytes as received (latin1 string), what Go's strconv.Quote gives]
    const table: Array<[string, string]> = [
      ['bla bla', '"bla bla"'],
      ['zzz hello\n', '"zzz hello\\n"'],
      ['a"b\\c', '"a\\"b\\\\c"'],
      [bytes(0, 7, 8, 9, 11, 12, 13, 0x1b, 0x7f), '"\\x00\\a\\b\\t\\v\\f\\r\\x1b\\x7f"'],
      [Buffer.from('δt µs', 'utf8').toString('latin1'), '"δt µs"'],
      [bytes(0xff, 0xfe, 0x41), '"\\xff\\xfeA"'],
      [bytes(0xce), '"\\xce"'], // a cut sequence
      [bytes(0xc0, 0x80), '"\\xc0\\x80"'], // overlong
      [Buffer.from('\u00a0\u200b', 'utf8').toString('latin1'), '"\\u00a0\\u200b"'], // not printable
      [Buffer.from('😀', 'utf8').toString('latin1'), '"😀"'],
    ];
    for (const [s, want] of table) expect(goQuote(s), JSON.stringify(s)).toBe(want);
  });

  it("live: every reply and control text of upstream's wire protocol, byte for byte", async () => {
    const dir = tmpDir();
    const d = await freshDb(dir);
    const t1 = await d.commit({ 0: 'a' });
    const srv = await startServer(d.path, { dir }); // history tail = t1
    const t2 = await d.commit({ 0: 'b' });
    await srv.waitHead(hex16(t2));
    const txn = new WriteTxn(d.db);
    const g = createZBigFile(txn, BS); // a second file, created @t3
    const t3 = await txn.commit();
    await srv.waitHead(hex16(t3));
    const F = hex16(d.foid);
    const G = hex16(g);
    const fh = await open(srv.at(`head/bigfile/${F}`), 'r');
    const gh = await open(srv.at(`head/bigfile/${G}`), 'r');
    const utf8 = (s: string) => Buffer.from(s, 'latin1').toString('utf8');
    const wl = await TWatchLink.open(srv.at('head/watch'));
    try {
      // [request, reply] on one link, in order (upstream: wcfs.go parseWatch, setupWatch; wcfs_test.py)
      const table: Array<[string, string]> = [
        ['bla bla', 'error bad watch: not a watch request: "bla bla"'],
        ['watch', 'error bad watch: not a watch request: "watch"'],
        ['watch a b c', 'error bad watch: expected 2 arguments, got 3'],
        [`watch ${F}`, 'error bad watch: expected 2 arguments, got 1'],
        [`watch zzzzzzzzzzzzzzzz @${hex16(t2)}`, 'error bad watch: invalid oid'],
        [`watch ${F} @head`, 'error bad watch: invalid at'],
        [`watch 000000000000dead @${hex16(t2)}`, `error setup watch f<000000000000dead> @${hex16(t2)}: file not yet known to wcfs or is not a ZBigFile`],
        [
          `watch ${F} @${hex16(t1 - (1n << 32n))}`,
          `error setup watch f<${F}> @${hex16(t1 - (1n << 32n))}: too far away back from head/at (@${hex16(t3)}); δt = ${goDuration(BigInt(tidToEpochMicros(t3) - tidToEpochMicros(t1 - (1n << 32n))) * 1000n)}`,
        ],
        [`watch ${G} @${hex16(t2)}`, `error setup watch f<${G}> @${hex16(t2)}: file epoch detected @${hex16(t3)} in between (at,head=@${hex16(t3)}]`],
        [`watch ${F} @${hex16(t2)}`, 'ok'],
        [`watch ${F} @${hex16(t1)}`, `error setup watch f<${F}> @${hex16(t1)}: going back in history is forbidden`],
        [`watch ${F} -`, 'ok'],
      ];
      for (const [req, want] of table) expect(utf8(await wl.request(req)), req).toBe(want);
      // a reply nobody asked for: the link ends with an error on stream 0
      wl.send('2 ack\n');
      expect(await wl.untilEOF()).toEqual(['0 error: 2: reply on unexpected stream']);
    } finally {
      await wl.close();
    }
    const wl2 = await TWatchLink.open(srv.at('head/watch'));
    try {
      // not a frame: the same, quoted as Go's %q
      wl2.send('zzz hello\n');
      expect(await wl2.untilEOF()).toEqual(['0 error: invalid frame: "zzz hello\\n" (invalid stream)']);
    } finally {
      await wl2.close();
    }
    await fh.close();
    await gh.close();
    await d.db.close();
    await srv.stop();
  }, 60_000);

  it('live: "too far away back" carries δt = <Go duration>, UTF-8 encoded; a request with UTF-8 in it is quoted back as is', async () => {
    const dir = tmpDir();
    const d = await freshDb(dir);
    const t1 = await d.commit({ 0: 'a' });
    const srv = await startServer(d.path, { dir }); // history tail = t1
    const fh = await open(srv.at(`head/bigfile/${hex16(d.foid)}`), 'r'); // the file is known
    const wl = await TWatchLink.open(srv.at('head/watch'));
    const utf8 = (s: string) => Buffer.from(s, 'latin1').toString('utf8'); // the helper hands bytes as latin1
    try {
      for (const at of [t1 - (5n << 32n) - 12345n, t1 - 1n, t1 - (3n << 32n) * 24n * 60n]) {
        const δt = BigInt(tidToEpochMicros(t1) - tidToEpochMicros(at)) * 1000n;
        expect(utf8(await wl.request(`watch ${hex16(d.foid)} @${hex16(at)}`))).toBe(
          `error setup watch f<${hex16(d.foid)}> @${hex16(at)}: too far away back from head/at (@${hex16(t1)}); δt = ${goDuration(δt)}`,
        );
      }
      expect(utf8(await wl.request('bla δ bla'))).toBe('error bad watch: not a watch request: "bla δ bla"');
    } finally {
      await wl.close();
      await fh.close();
    }
    await d.db.close();
    await srv.stop();
  }, 60_000);
});

/** Residency per page as '0'/'1'. */
async function pages(p: string, nblk: number): Promise<string> {
  return [...(await cacheResidency(p, 0, nblk * BS))].map((x) => String(x & 1)).join('');
}
/** Per block: cached (1) or not (0), as pages. */
const blocks = (bits: number[]) => bits.map((b) => String(b).repeat(BS / PAGE)).join('');
/** Poll until f's residency is `want` or the time is up (uploads run after the READ). */
async function cacheBecomes(f: string, bits: number[], what: string): Promise<void> {
  const want = blocks(bits);
  let got = '';
  for (let i = 0; i < 300; i++) {
    got = await pages(f, bits.length);
    if (got === want) break;
    await sleep(10);
  }
  expectResidency(got, want, what);
}
/** The file's data is `want` per block (zero-padded texts). */
async function expectData(f: string, want: string[]): Promise<void> {
  const got = await readFile(f);
  expect(got.length, `${f}: size`).toBe(want.length * BS);
  want.forEach((s, i) => {
    const exp = Buffer.alloc(BS);
    exp.write(s, 'latin1');
    expect(got.subarray(i * BS, (i + 1) * BS).equals(exp), `${f}: block ${i} = ${JSON.stringify(s)}`).toBe(true);
  });
}

/** tid → [str(TimeStamp), TimeStamp.timeTime()] by the venv's ZODB. */
function zodbTimes(tids: Tid[]): Array<[string, number]> {
  const py = String.raw`
import sys, json, struct
from persistent.timestamp import TimeStamp
json.dump([[str(TimeStamp(struct.pack('>Q', int(h, 16)))), TimeStamp(struct.pack('>Q', int(h, 16))).timeTime()] for h in json.load(sys.stdin)], sys.stdout)
`;
  const p = spawnSync(python(), ['-c', py], { input: JSON.stringify(tids.map(hex16)), env: pythonEnv(), encoding: 'utf8', timeout: 60_000 });
  expect(p.status, p.stderr).toBe(0);
  return JSON.parse(p.stdout) as Array<[string, number]>;
}
/** "YYYY-MM-DD HH:MM:SS.ffffff" → ns since the epoch. */
const strNs = (s: string): bigint => {
  const n = /^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})$/.exec(s)!.slice(1).map(Number);
  return (BigInt(Date.UTC(n[0]!, n[1]! - 1, n[2]!, n[3]!, n[4]!, n[5]!)) * 1000n + BigInt(n[6]!)) * 1000n;
};

describe('test_wcfs_basic, in our words (items 3, 4): data, mtimes and the page cache after each commit', () => {
  it('no isolation: changed blocks leave head; the old data is in @<BlkRevAt(blk, oldHead)>, looked up by the server itself', async () => {
    const dir = tmpDir();
    const d = await freshDb(dir);
    const srv = await startServer(d.path, { dir, args: ['--gc-interval', '120'] }); // views stay for the test
    const mtimes: Array<[string, bigint, Tid]> = []; // [path, st_mtime ns, tid it must be]
    const noteMtime = async (p: string, tid: Tid) => mtimes.push([p, (await stat(p, { bigint: true })).mtimeNs, tid]);
    const commit = async (blocks: Record<number, string>): Promise<Tid> => {
      const tid = await d.commit(blocks);
      await srv.waitHead(hex16(tid));
      return tid;
    };
    const foid = hex16(d.foid);
    const F = srv.at(`head/bigfile/${foid}`);
    const at = (rev: Tid) => srv.at(`@${hex16(rev)}/bigfile/${foid}`);

    // no .wcfs/debug/ without debugFiles
    await expect(stat(srv.at('.wcfs/debug'))).rejects.toMatchObject({ code: 'ENOENT' });
    // an object that is not a ZBigFile (the root): EINVAL
    await expect(stat(srv.at('head/bigfile/0000000000000000'))).rejects.toMatchObject({ code: 'EINVAL' });

    // the empty file: size 0, mtime = at0
    expect((await stat(F)).size).toBe(0);
    await noteMtime(F, d.at0);

    // >>> commit @t1: block 2
    const t1 = await commit({ 2: 'c1' });
    expect((await stat(F)).size).toBe(3 * BS);
    expect(await pages(F, 3)).toBe(blocks([0, 0, 0])); // nothing read yet
    await expectData(F, ['', '', 'c1']);
    await cacheBecomes(F, [1, 1, 1], 'head @t1 after read');
    await noteMtime(F, t1);

    // >>> commit @t2: blocks 2, 3, 5 (the file grows): 0 and 1 stay cached, 2 leaves
    const t2 = await commit({ 2: 'c2', 3: 'd2', 5: 'f2' });
    expect((await stat(F)).size).toBe(6 * BS);
    expectResidency(await pages(F, 6), blocks([1, 1, 0, 0, 0, 0]), 'head @t2');
    // @t1: nobody looked it up, yet its block 2 (changed @t1) is cached — stored at the commit
    expectResidency(await pages(at(t1), 3), blocks([0, 0, 1]), '@t1 fresh');
    await expectData(F, ['', '', 'c2', 'd2', '', 'f2']);
    await expectData(at(t1), ['', '', 'c1']);
    await cacheBecomes(F, [1, 1, 1, 1, 1, 1], 'head @t2 after read');
    await cacheBecomes(at(t1), [1, 1, 1], '@t1 after read');
    await noteMtime(F, t2);

    // >>> commit @t3: blocks 0, 2, 5 (no size change)
    const t3 = await commit({ 0: 'a3', 2: 'c3', 5: 'f3' });
    expectResidency(await pages(F, 6), blocks([0, 1, 0, 1, 1, 0]), 'head @t3');
    // blocks 2 and 5 changed @t2: their old data is in @t2 (never looked up by us);
    // block 0 never changed: BlkRevAt = the history tail (at0), where the file is empty —
    // nothing is stored past its end, its size stays 0
    expectResidency(await pages(at(t2), 6), blocks([0, 0, 1, 0, 0, 1]), '@t2 fresh');
    expect((await stat(at(d.at0))).size).toBe(0);
    // @t1 keeps what it had: an @rev view never changes
    expectResidency(await pages(at(t1), 3), blocks([1, 1, 1]), '@t1 after @t3');
    await expectData(at(t1), ['', '', 'c1']);
    await expectData(at(t2), ['', '', 'c2', 'd2', '', 'f2']);
    await expectData(F, ['a3', '', 'c3', 'd2', '', 'f3']);
    await cacheBecomes(F, [1, 1, 1, 1, 1, 1], 'head @t3 after read');
    await noteMtime(F, t3); // (head/'s own mtime is the kernel's to cache for a second, as upstream's: not checked)
    await noteMtime(srv.at(`@${hex16(t1)}`), t1);
    await noteMtime(srv.at(`@${hex16(t2)}`), t2);

    // mtimes: ZODB's TimeStamp of the tid — exactly its µs, and within upstream's 1 µs of timeTime()
    const ref = zodbTimes(mtimes.map((m) => m[2]));
    mtimes.forEach(([p, ns, tid], i) => {
      const [str, timeTime] = ref[i]!;
      expect(ns, `${p} mtime vs ${str} (@${hex16(tid)})`).toBe(strNs(str));
      expect(Math.abs(Number(ns) / 1e9 - timeTime), `${p} mtime vs timeTime()`).toBeLessThanOrEqual(1e-6);
    });
    await d.db.close();
    await srv.stop();
  }, 120_000);

  it('hole → data (test_wcfs_basic_hole2zblk): only that block leaves head; its old zeros belong to the tail, where the file is empty — nothing stored', async () => {
    const dir = tmpDir();
    const d = await freshDb(dir);
    const srv = await startServer(d.path, { dir, args: ['--gc-interval', '120'] });
    const foid = hex16(d.foid);
    const F = srv.at(`head/bigfile/${foid}`);
    const t1 = await d.commit({ 2: 'c1' });
    await srv.waitHead(hex16(t1));
    await expectData(F, ['', '', 'c1']);
    await cacheBecomes(F, [1, 1, 1], 'head @t1 after read');

    // >>> commit @t2: block 1, a hole until now
    const t2 = await d.commit({ 1: 'b2' });
    await srv.waitHead(hex16(t2));
    expectResidency(await pages(F, 3), blocks([1, 0, 1]), 'head @t2');
    await expectData(F, ['', 'b2', 'c1']);
    // BlkRevAt(1, t1) = at0 (the tail): @at0 was looked up for the store, but its file is empty
    expect((await stat(srv.at(`@${hex16(d.at0)}/bigfile/${foid}`))).size).toBe(0);
    expect(await readdir(srv.mnt)).not.toContain(`@${hex16(t1)}`);
    await d.db.close();
    await srv.stop();
  }, 60_000);
});
