// Faster reads of history (issue 11). Recent records (src/zodb/fs1/recent.ts): a load as of an
// older revision starts at the nearest published record instead of walking prev links down
// from the newest. The table pins R1's answer; the seeded random test checks it against a
// model with trimming; the FileStorage tests load every object at every revision with the
// list full, trimmed hard and off (same answers), and across a real ZODB pack (positions
// change: the list must start over). SeqReader's adaptive window (the index rebuild scan):
// any mix of dense and sparse views returns the file's bytes.

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { RecentRecords } from '../src/zodb/fs1/recent.js';
import { SeqReader } from '../src/zodb/fs1/scan.js';
import fs from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { hex16, type Oid, type Tid } from '../src/zodb/ids.js';
import { rng } from '../src/util/rng.js';
import { sleep } from '../src/util/async.js';
import { TmpDirs, bytes } from './helpers/fs1util.js';
import { seedOr } from './helpers/fuzz.js';
import { python, pythonEnv } from './helpers/python.js';

const tmp = new TmpDirs();
const open: FileStorage[] = [];
afterEach(async () => {
  for (const s of open.splice(0)) await s.close();
  tmp.cleanup();
});

describe('RecentRecords', () => {
  it('start(): newest record ≤ at, else the oldest known, else nothing (table)', () => {
    const r = new RecentRecords(4);
    r.add(1n, 10n, 100);
    r.add(2n, 10n, 110);
    r.add(1n, 20n, 200);
    r.add(1n, 30n, 300);
    const cases: Array<[Oid, Tid, number | undefined]> = [
      [1n, 9n, 100], // all known ones newer: start at the oldest, the walk goes on from there
      [1n, 10n, 100],
      [1n, 19n, 100],
      [1n, 20n, 200],
      [1n, 29n, 200],
      [1n, 30n, 300],
      [1n, 99n, 300],
      [2n, 5n, 110],
      [2n, 50n, 110],
      [3n, 50n, undefined],
    ];
    for (const [oid, at, want] of cases) expect(r.start(oid, at), `oid ${oid} at ${at}`).toBe(want);
    // >>> a fifth record: the oldest (oid 1 @10) goes; oid 1's oldest known is now @20
    r.add(2n, 40n, 400);
    expect(r.size).toBe(4);
    expect(r.start(1n, 15n)).toBe(200);
    expect(r.start(2n, 45n)).toBe(400);
    // >>> oid 2's records go too: nothing known for it
    for (let t = 50n; t < 54n; t++) r.add(5n, t, Number(t));
    expect(r.start(2n, 45n)).toBeUndefined();
    expect(r.start(1n, 99n)).toBeUndefined();
    expect(() => r.add(5n, 53n, 0)).toThrow(/not after/);
    expect(new RecentRecords(0).start(1n, 1n)).toBeUndefined();
  });

  it('agrees with a model of the last maxEntries records (seeded random)', () => {
    const seed = seedOr(11);
    const rand = rng(seed);
    for (let round = 0; round < 50; round++) {
      const max = 1 + Math.floor(rand() * 40);
      const r = new RecentRecords(max);
      const all: Array<{ oid: Oid; tid: Tid; pos: number }> = [];
      let tid = 1n;
      for (let i = 0; i < 600; i++) {
        tid += 1n + BigInt(Math.floor(rand() * 3));
        const n = 1 + Math.floor(rand() * 3);
        const oids = new Set<Oid>();
        for (let j = 0; j < n; j++) oids.add(BigInt(Math.floor(rand() * 6)));
        for (const oid of oids) {
          const rec = { oid, tid, pos: all.length };
          all.push(rec);
          r.add(oid, tid, rec.pos);
        }
        const live = all.slice(-max);
        const oid = BigInt(Math.floor(rand() * 7));
        const at = BigInt(Math.floor(rand() * Number(tid + 2n)));
        const mine = live.filter((x) => x.oid === oid);
        const le = mine.filter((x) => x.tid <= at);
        const want = mine.length === 0 ? undefined : (le.at(-1) ?? mine[0]!).pos;
        expect(r.start(oid, at), `seed ${seed} round ${round} step ${i}: oid ${oid} at ${at}`).toBe(want);
      }
    }
  });
});

describe('FileStorage loads of older revisions', () => {
  it('every object at every revision: the same with the list full, trimmed to 7 records, and off', async () => {
    const f = path.join(tmp.make(), 'data.fs');
    const w = await FileStorage.open(f, { create: true, warn: () => {} });
    open.push(w);
    const rand = rng(seedOr(7));
    const model = new Map<Oid, Array<[Tid, string | null]>>();
    const tids: Tid[] = [];
    const oids: Oid[] = [0n];
    for (let i = 0; i < 5; i++) oids.push(w.newOid());
    for (let i = 0; i < 300; i++) {
      const recs = new Map<Oid, string | null>();
      const n = 1 + Math.floor(rand() * 3);
      for (let j = 0; j < n; j++) {
        const oid = oids[Math.floor(rand() * oids.length)]!;
        recs.set(oid, rand() < 0.05 ? null : `${hex16(oid)} v${i}`);
      }
      const tid = await w.commit({ records: [...recs].map(([oid, d]) => ({ oid, data: d === null ? null : bytes(d) })) });
      tids.push(tid);
      for (const [oid, d] of recs) {
        if (!model.has(oid)) model.set(oid, []);
        model.get(oid)!.push([tid, d]);
      }
    }
    // the writer published every commit (its list is full); a reader opened now knows none of
    // them, and one that follows them with a short list keeps only the last few
    const expectAll = async (s: FileStorage, what: string) => {
      for (const [oid, hist] of model) {
        for (const at of [tids[0]! - 1n, ...tids.flatMap((t) => [t - 1n, t])]) {
          let want: [Tid, string | null] | undefined;
          for (const e of hist) if (e[0] <= at) want = e;
          const got = await s.load(oid, at).then(
            (r) => `${hex16(r.serial)} ${Buffer.from(r.data).toString()}`,
            (e: Error) => e.name,
          );
          const exp = want === undefined ? 'NoDataError' : want[1] === null ? 'NoDataError' : `${hex16(want[0])} ${want[1]}`;
          expect(got, `${what}: oid ${hex16(oid)} at ${hex16(at)}`).toBe(exp);
        }
      }
    };
    await expectAll(w, 'writer (list full)');
    await w.close();
    open.splice(open.indexOf(w), 1);

    const r0 = await FileStorage.open(f, { readOnly: true, recentRecords: 0, warn: () => {} });
    open.push(r0);
    await expectAll(r0, 'reader (no list)');

    // a writer with a list of 7 publishes 40 more commits; then everything is checked again
    const w7 = await FileStorage.open(f, { recentRecords: 7, warn: () => {} });
    open.push(w7);
    for (let i = 300; i < 340; i++) {
      const oid = oids[i % oids.length]!;
      const tid = await w7.commit({ records: [{ oid, data: bytes(`${hex16(oid)} v${i}`) }] });
      tids.push(tid);
      model.get(oid)!.push([tid, `${hex16(oid)} v${i}`]);
    }
    await expectAll(w7, 'writer (list of 7)');
  });

  it('a real ZODB pack moves every record: loads after the switch read the new file right', async () => {
    const dir = tmp.make();
    const f = path.join(dir, 'Data.fs');
    // Python: commits (phase init); later more commits, a pack to now, more commits (phase
    // more), printing what loadBefore answers for every oid at every tid from the pack on
    const prog = `
import json, sys, time, transaction, ZODB, ZODB.FileStorage
from persistent.mapping import PersistentMapping
from ZODB.utils import p64, u64
path, phase = sys.argv[1], sys.argv[2]
st = ZODB.FileStorage.FileStorage(path)
db = ZODB.DB(st)
c = db.open()
root = c.root()
def commits(n, tag):
    for i in range(n):
        if 'm' not in root:
            root['m'] = PersistentMapping()
        root['m']['v'] = '%s%d' % (tag, i)
        root['n'] = '%s%d' % (tag, i)
        transaction.commit()
        time.sleep(0.002)
if phase == 'init':
    commits(5, 'a')
else:
    commits(6, 'b')
    time.sleep(0.05)
    db.pack(time.time())
    time.sleep(0.3)
    commits(4, 'c')
    out = {'oids': ['%016x' % u64(root._p_oid), '%016x' % u64(root['m']._p_oid)], 'tids': [], 'loads': {}}
    tids = [u64(t.tid) for t in st.iterator()]
    out['tids'] = ['%016x' % t for t in tids]
    for o in out['oids']:
        for t in tids:
            try:
                data, serial, _ = st.loadBefore(p64(int(o, 16)), p64(t + 1))
                out['loads']['%s %016x' % (o, t)] = '%016x %s' % (u64(serial), data.hex())
            except Exception as e:
                out['loads']['%s %016x' % (o, t)] = type(e).__name__
    print(json.dumps(out))
db.close()
`;
    const run = (phase: string) => {
      const p = spawnSync(python(), ['-c', prog, f, phase], { env: pythonEnv(), encoding: 'utf8', timeout: 60_000 });
      if (p.status !== 0) throw new Error(`python ${phase}: ${p.stderr}`);
      return p.stdout;
    };
    run('init');
    const r = await FileStorage.open(f, { readOnly: true, pollMs: 20, garbageMs: 10000, warn: () => {} });
    open.push(r);
    const packs: Tid[] = [];
    r.onPacked((p) => packs.push(p));
    const out = JSON.parse(run('more')) as { oids: string[]; tids: string[]; loads: Record<string, string> };
    const last = BigInt('0x' + out.tids.at(-1)!);
    const t0 = Date.now();
    while ((packs.length === 0 || r.head() < last) && Date.now() - t0 < 10_000) {
      await r.sync();
      await sleep(20);
    }
    expect(packs.length, 'the follower switched to the packed file').toBe(1);
    expect(hex16(r.head())).toBe(out.tids.at(-1));
    // every (oid, tid) the packed file still has, read as ZODB reads it; the commits after
    // the pack were published into the list at positions in the new file, those before it
    // were at positions in the old one
    for (const [key, want] of Object.entries(out.loads)) {
      const [o, t] = key.split(' ') as [string, string];
      const got = await r.load(BigInt('0x' + o), BigInt('0x' + t)).then(
        (x) => `${hex16(x.serial)} ${Buffer.from(x.data).toString('hex')}`,
        (e: Error) => (e.name === 'NoDataError' ? 'POSKeyError' : `${e.name}: ${e.message}`),
      );
      expect(got, key).toBe(want);
    }
  });
});

describe('SeqReader', () => {
  it('dense runs, sparse strides, trailer peeks, views at the end: always the file bytes (seeded random)', () => {
    const f = path.join(tmp.make(), 'bytes');
    const bytes = randomFillSync(new Uint8Array(3 << 20));
    fs.writeFileSync(f, bytes);
    const fd = fs.openSync(f, 'r');
    try {
      const rand = rng(seedOr(5));
      for (let round = 0; round < 20; round++) {
        const r = new SeqReader(fd, bytes.length);
        let pos = Math.floor(rand() * 1000);
        for (let step = 0; step < 400; step++) {
          const mode = rand();
          // dense: small steps; sparse: 64 KiB-2 MiB strides (record headers); now and then
          // a peek far ahead (a trailer) or a view bigger than the window, or past the end
          const n = mode < 0.05 ? 1 + Math.floor(rand() * 200_000) : 1 + Math.floor(rand() * 60);
          const what = `round ${round} step ${step}: @${pos} +${n}`;
          const v = rand() < 0.1 ? r.peek(Math.min(pos + Math.floor(rand() * (1 << 20)), bytes.length), Math.min(n, 64)) : r.view(pos, n);
          if (v !== null) expect(v.length, what).toBeGreaterThan(0);
          if (rand() < 0.1) {
            const p2 = Math.floor(rand() * bytes.length);
            const got = r.view(p2, 8);
            expect(got === null ? null : Buffer.from(got).toString('hex'), `${what} (jump to ${p2})`).toBe(
              p2 + 8 > bytes.length ? null : Buffer.from(bytes.subarray(p2, p2 + 8)).toString('hex'),
            );
          }
          const got = r.view(pos, n);
          expect(got === null ? null : Buffer.compare(got, bytes.subarray(pos, pos + n)), what).toBe(pos + n > bytes.length ? null : 0);
          pos += mode < 0.5 ? n : 42 + (1 << 16) + Math.floor(rand() * (2 << 20));
          if (pos >= bytes.length) pos = Math.floor(rand() * 4096);
        }
      }
    } finally {
      fs.closeSync(fd);
    }
  });
});
