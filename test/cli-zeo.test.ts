// `wcfs zodb demo|info|cat` on zeo:// URLs, as a user runs them, against a real runzeo (both
// encodings): what they print over ZEO equals what they print on the server's file itself.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/paths.js';
import { makeTmpDir } from './helpers/tmp.js';
import { startZeo, stopAllZeo, type ZeoEncoding } from './helpers/zeo.js';

const wcfs = (...args: string[]) => {
  const r = spawnSync(process.execPath, [path.join(repoRoot, 'bin', 'wcfs.js'), ...args], { timeout: 60_000, maxBuffer: 64 << 20 });
  return { code: r.status, stdout: r.stdout, out: r.stdout.toString('latin1'), err: r.stderr.toString() };
};
const tmp = makeTmpDir();
afterEach(stopAllZeo);
afterAll(() => tmp.cleanup());

for (const encoding of ['pickle', 'msgpack'] as ZeoEncoding[]) {
  describe(`wcfs zodb over zeo:// (${encoding})`, () => {
    it('demo writes through ZEO; info and cat over ZEO equal info and cat on the file', { timeout: 120_000 }, async () => {
      const fsPath = path.join(tmp.dir, `${encoding}.fs`);
      const zeo = await startZeo({ fsPath, encoding });
      // >>> demo into the empty database behind the server
      const d = wcfs('zodb', 'demo', zeo.zurl);
      expect(d.err).toBe('');
      expect(d.code).toBe(0);
      // >>> a second demo is refused: the database is not empty
      const d2 = wcfs('zodb', 'demo', zeo.zurl);
      expect(d2.code).toBe(1);
      expect(d2.err).toMatch(/^wcfs: .*the database is not empty/);
      // >>> info and cat over ZEO
      const info = wcfs('zodb', 'info', '--json', zeo.zurl);
      expect(info.err).toBe('');
      expect(info.code).toBe(0);
      const zi = JSON.parse(info.out);
      expect(zi.txns).toBe(6); // the root; the two files; four rounds of writes
      expect(zi.zbigfiles.length).toBe(2);
      const cats = zi.zbigfiles.map((f: { oid: string }) => wcfs('zodb', 'cat', zeo.zurl, f.oid, '2'));
      for (const c of cats) expect(c.code, c.err).toBe(0);
      const old = wcfs('zodb', 'cat', zeo.zurl, zi.zbigfiles[0].oid, '1', '--at', zi.head.replace(/.$/, '0'));
      await zeo.stop();
      // >>> the same commands on the file: the same answers (the zurl aside)
      const fi = JSON.parse(wcfs('zodb', 'info', '--json', fsPath).out);
      expect({ ...zi, zurl: '' }).toEqual({ ...fi, zurl: '' });
      zi.zbigfiles.forEach((f: { oid: string }, i: number) => expect(Buffer.compare(wcfs('zodb', 'cat', fsPath, f.oid, '2').stdout, cats[i].stdout)).toBe(0));
      const fold = wcfs('zodb', 'cat', fsPath, zi.zbigfiles[0].oid, '1', '--at', zi.head.replace(/.$/, '0'));
      expect(old.code).toBe(fold.code);
      expect(Buffer.compare(old.stdout, fold.stdout)).toBe(0);
    });
  });
}

it('a zeo:// URL with no server: a clear error naming the address, exit 1', () => {
  const r = wcfs('zodb', 'info', 'zeo://127.0.0.1:1?storage=1');
  expect(r.code).toBe(1);
  expect(r.err).toMatch(/^wcfs: zeo 127\.0\.0\.1:1: connect: .*ECONNREFUSED/);
});
