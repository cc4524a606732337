// wcfs serve on real fixture databases: every block of every file at every revision read
// through the mount (@<rev>/bigfile/<oid>) equals the manifest; head/ equals the final state;
// wendelin.core's own zblk.fs databases (py2/py3 pickles) serve the expected bytes.
import { afterAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { open, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fixturesDir, historyManifestPath, historyPath, zblkKinds, zblkPath } from './helpers/paths.js';
import { readJSON, startServer, stopAllServers, tmpDir } from './helpers/wcfs.js';
import { fixtureDb, servable, TEST_DB } from './helpers/testdb.js';

afterAll(stopAllServers, 30_000);

const sha1 = (b: Uint8Array) => createHash('sha1').update(b).digest('hex');
const zeros = new Uint8Array(4 << 20);
const isZero = (b: Uint8Array) => Buffer.compare(b, zeros.subarray(0, b.length)) === 0;

interface Manifest {
  files: Record<string, { blksize: number; created: string }>;
  txns: Array<{ tid: string; sizes: Record<string, number>; changed: Record<string, Record<string, string | null>> }>;
  final: Record<string, Record<string, string>>;
}

/** Whole file through read(2), checked block by block against want(blk) (null = zeros). */
async function checkFile(p: string, size: number, blksize: number, want: (blk: number) => string | null, what: string): Promise<void> {
  const st = await stat(p);
  expect(st.size, `${what} size`).toBe(size);
  expect(st.blksize, `${what} st_blksize`).toBe(blksize);
  const fh = await open(p, 'r');
  try {
    const buf = Buffer.alloc(blksize);
    for (let blk = 0; blk * blksize < size; blk++) {
      const { bytesRead } = await fh.read(buf, 0, blksize, blk * blksize);
      expect(bytesRead, `${what} #${blk} length`).toBe(blksize);
      const w = want(blk);
      if (w === null) expect(isZero(buf), `${what} #${blk} zeros`).toBe(true);
      else expect(sha1(buf), `${what} #${blk}`).toBe(w);
    }
    // and nothing after EOF
    const { bytesRead } = await fh.read(buf, 0, 16, size);
    expect(bytesRead).toBe(0);
  } finally {
    await fh.close();
  }
}

describe('zodb-history fixture through the mount', () => {
  it('every @<rev>/bigfile/<oid> at every revision, and head/', async () => {
    const dir = tmpDir();
    const db = await fixtureDb(historyPath, dir);
    const srv = await startServer(db.zurl, { dir });
    const m = readJSON<Manifest>(historyManifestPath);
    const last = m.txns[m.txns.length - 1]!;
    expect(await srv.head()).toBe(last.tid);
    const state = new Map<string, Map<number, string | null>>();
    for (const txn of m.txns) {
      for (const [foid, blocks] of Object.entries(txn.changed)) {
        const s = state.get(foid) ?? new Map();
        state.set(foid, s);
        for (const [blk, h] of Object.entries(blocks)) s.set(Number(blk), h);
      }
      for (const [foid, size] of Object.entries(txn.sizes)) {
        const s = state.get(foid) ?? new Map();
        await checkFile(srv.at(`@${txn.tid}/bigfile/${foid}`), size, m.files[foid]!.blksize, (b) => s.get(b) ?? null, `@${txn.tid}/${foid}`);
      }
    }
    for (const [foid, size] of Object.entries(last.sizes)) {
      const s = state.get(foid)!;
      await checkFile(srv.at(`head/bigfile/${foid}`), size, m.files[foid]!.blksize, (b) => s.get(b) ?? null, `head/${foid}`);
      for (const [blk, h] of Object.entries(m.final[foid] ?? {})) expect(s.get(Number(blk))).toBe(h);
    }
    // mtime of head/bigfile = time of the last commit that changed the file (≤ head)
    await srv.stop();
    await db.close();
  }, 240_000);
});

describe('wendelin-zblk fixtures through the mount', () => {
  const expected = readJSON<{ zf_size: number; zf_blksize: number; blocks_sha1_full: Record<string, string>; z0_rev: string }>(
    path.join(fixturesDir, 'wendelin-zblk', 'expected.json'),
  );
  // (over ZEO: the FS30 ones — runzeo's Python 3 FileStorage refuses py2's FS21)
  for (const kind of zblkKinds.filter((k) => servable(zblkPath(k)))) {
    it(`${kind} (${TEST_DB})`, async () => {
      const dir = tmpDir();
      const db = await fixtureDb(zblkPath(kind), dir);
      const srv = await startServer(db.zurl, { dir });
      expect(await srv.head()).toBe(expected.z0_rev);
      await checkFile(srv.at('head/bigfile/0000000000000001'), expected.zf_size, expected.zf_blksize, (b) => expected.blocks_sha1_full[b]!, kind);
      await checkFile(
        srv.at(`@${expected.z0_rev}/bigfile/0000000000000001`),
        expected.zf_size,
        expected.zf_blksize,
        (b) => expected.blocks_sha1_full[b]!,
        kind,
      );
      expect((await readFile(srv.at('.wcfs/zurl'))).toString()).toBe(srv.zurl);
      await srv.stop();
      await db.close();
    }, 60_000);
  }
});
