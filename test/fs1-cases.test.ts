// Cases the fixtures lack (zodb.md §6.3), built by hand from the format description:
// backpointers (undo), deleted objects, empty txns, packed ('p') and legacy ('u') status,
// metadata, and a tail that is incomplete or still in status 'c'.

import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { checkFile } from '../src/zodb/fs1/scan.js';
import { NoDataError, NoObjectError } from '../src/zodb/errors.js';
import { FsBuilder, TmpDirs, collect } from './helpers/fs1util.js';

const tmp = new TmpDirs();
const open: FileStorage[] = [];
afterEach(async () => {
  for (const s of open.splice(0)) await s.close();
  tmp.cleanup();
});
async function openFile(f: string, readOnly = true): Promise<FileStorage> {
  const s = await FileStorage.open(f, { readOnly, warn: () => {} });
  open.push(s);
  return s;
}
const text = (b: Uint8Array | null) => (b === null ? null : Buffer.from(b).toString());

const T = (n: number) => 0x03f0000000000000n + BigInt(n) * 0x1000n;

describe('backpointers and deletion', () => {
  function build() {
    const b = new FsBuilder();
    const t1 = b.txn(T(1), [
      { oid: 0n, data: 'root' },
      { oid: 1n, data: 'A' },
      { oid: 2n, data: 'x' },
    ]);
    b.txn(T(2), [{ oid: 1n, data: 'B' }]);
    // undo of t2: oid 1 back to A by a backpointer; undo of oid 2's creation: backpointer 0
    const t3 = b.txn(
      T(3),
      [
        { oid: 1n, data: { bp: t1.dpos[1]! } },
        { oid: 2n, data: 'deleted' },
      ],
      { status: ' ', desc: 'undo' },
    );
    // a chain: a backpointer to a backpointer record
    b.txn(T(4), [{ oid: 1n, data: { bp: t3.dpos[0]! } }]);
    b.txn(T(5), [{ oid: 1n, data: 'deleted' }]);
    return b;
  }

  it('file passes checkFile', () => {
    const f = build().write(path.join(tmp.make(), 'data.fs'));
    const rep = checkFile(f);
    expect(rep.txns).toBe(5);
    expect(rep.tail).toBe('eof');
  });

  it('load follows backpointer chains; serial is the record reached by prev, not the target', async () => {
    const b = build();
    const b1 = b.txns[0]!;
    const s = await openFile(b.write(path.join(tmp.make(), 'data.fs')));
    const ld = async (oid: bigint, at: bigint) => {
      const r = await s.load(oid, at);
      return [text(r.data), r.serial];
    };
    expect(await ld(1n, T(1))).toEqual(['A', T(1)]);
    expect(await ld(1n, T(2))).toEqual(['B', T(2)]);
    expect(await ld(1n, T(3))).toEqual(['A', T(3)]);
    expect(await ld(1n, T(3) + 5n)).toEqual(['A', T(3)]);
    expect(await ld(1n, T(4))).toEqual(['A', T(4)]);
    // where = the record that holds the bytes (t1's record of oid 1, reached by backpointers)
    expect((await s.load(1n, T(4))).where).toBe(`${s.path} @${b1.dpos[1]}`);
    await expect(s.load(1n, T(5))).rejects.toMatchObject({ name: 'NoDataError', deletedAt: T(5) });
    await expect(s.load(1n, T(9))).rejects.toMatchObject({ deletedAt: T(5) });
    await expect(s.load(2n, T(3))).rejects.toMatchObject({ deletedAt: T(3) });
    expect(await ld(2n, T(2))).toEqual(['x', T(1)]);
    // created later: NoDataError without deletedAt
    const e = await s.load(1n, T(0)).catch((x) => x);
    expect(e).toBeInstanceOf(NoDataError);
    expect(e.deletedAt).toBeUndefined();
    await expect(s.load(3n, T(5))).rejects.toBeInstanceOf(NoObjectError);
    expect(s.lastOid()).toBe(2n);
  });

  it('iterate resolves backpointers; deleted = null', async () => {
    const s = await openFile(build().write(path.join(tmp.make(), 'data.fs')));
    const txns = await collect(s.iterate());
    expect(txns.map((t) => t.records.map((r) => [r.oid, text(r.data)]))).toEqual([
      [
        [0n, 'root'],
        [1n, 'A'],
        [2n, 'x'],
      ],
      [[1n, 'B']],
      [
        [1n, 'A'],
        [2n, null],
      ],
      [[1n, 'A']],
      [[1n, null]],
    ]);
    expect(text(txns[2]!.description)).toBe('undo');
  });
});

describe('txn kinds', () => {
  it('empty txn, packed and legacy-undone status, metadata', async () => {
    const b = new FsBuilder();
    const ext = Uint8Array.from([0x80, 0x03, 0x7d, 0x71, 0x00, 0x2e]); // {} pickled
    b.txn(
      T(1),
      [
        { oid: 0n, data: 'r1' },
        { oid: 7n, data: 'seven' },
      ],
      { status: 'p', user: '/ alice', desc: 'packed', ext },
    );
    b.txn(T(2), [], { desc: 'empty' });
    b.txn(T(3), [{ oid: 0n, data: 'r3' }], { status: 'u' });
    b.txn(T(4), []);
    const f = b.write(path.join(tmp.make(), 'data.fs'));
    expect(checkFile(f).txns).toBe(4);
    const s = await openFile(f);
    expect(s.head()).toBe(T(4));
    const txns = await collect(s.iterate());
    expect(txns.map((t) => [t.tid, t.status, t.records.length])).toEqual([
      [T(1), 'p', 2],
      [T(2), ' ', 0],
      [T(3), 'u', 1],
      [T(4), ' ', 0],
    ]);
    expect(text(txns[0]!.user)).toBe('/ alice');
    expect(text(txns[0]!.description)).toBe('packed');
    expect([...txns[0]!.extension]).toEqual([...ext]);
    expect(text((await s.load(0n, T(2))).data)).toBe('r1');
    expect(text((await s.load(0n, T(4))).data)).toBe('r3');
    expect((await s.load(7n, T(4))).serial).toBe(T(1));
    // a watch from the beginning replays the empty txns too
    const w = s.watch(0n);
    const evs = [];
    for await (const ev of w) {
      evs.push(ev);
      if (evs.length === 4) break;
    }
    expect(evs).toEqual([
      { tid: T(1), oids: [0n, 7n] },
      { tid: T(2), oids: [] },
      { tid: T(3), oids: [0n] },
      { tid: T(4), oids: [] },
    ]);
  });
});

describe('tail', () => {
  function base() {
    const b = new FsBuilder();
    b.txn(T(1), [{ oid: 0n, data: 'root' }]);
    b.txn(T(2), [{ oid: 1n, data: 'one' }]);
    return b;
  }

  it('incomplete txn (cut mid-record): readers see the committed part; a writer truncates it', async () => {
    const b = base();
    const end = b.pos;
    b.txn(T(3), [
      { oid: 1n, data: 'x'.repeat(100) },
      { oid: 2n, data: 'two' },
    ]);
    const full = b.build();
    const dir = tmp.make();
    const f = path.join(dir, 'data.fs');
    for (const cut of [end + 5, end + 23, end + 23 + 42 + 10, full.length - 1]) {
      fs.writeFileSync(f, full.subarray(0, cut));
      expect(checkFile(f)).toMatchObject({ tail: 'partial', topPos: end, txns: 2 });
      const r = await openFile(f);
      expect(r.head()).toBe(T(2));
      expect(text((await r.load(1n, T(9))).data)).toBe('one');
      await expect(r.load(2n, T(9))).rejects.toBeInstanceOf(NoObjectError);
      expect(fs.statSync(f).size).toBe(cut); // readers never modify
      await r.close();
      open.pop();

      const w = await openFile(f, false);
      expect(w.openInfo.truncatedBytes).toBe(cut - end);
      expect(fs.statSync(f).size).toBe(end);
      await w.close();
      open.pop();
      expect(checkFile(f).tail).toBe('eof');
    }
  });

  it("a status 'c' txn at the tail is invisible to readers and removed by a writer", async () => {
    const b = base();
    const end = b.pos;
    b.txn(T(3), [{ oid: 2n, data: 'two' }], { status: 'c' });
    const f = b.write(path.join(tmp.make(), 'data.fs'));
    expect(checkFile(f)).toMatchObject({ tail: 'inprogress', topPos: end });
    const r = await openFile(f);
    expect(r.head()).toBe(T(2));
    expect(await collect(r.iterate())).toHaveLength(2);
    await expect(r.load(2n, T(9))).rejects.toBeInstanceOf(NoObjectError);
    const w = await openFile(f, false);
    expect(w.openInfo.truncatedBytes).toBe(fs.statSync(f).size === end ? b.pos - end : -1);
    expect(w.head()).toBe(T(2));
  });
});
