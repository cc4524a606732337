// Name rules and errno of the wcfs tree (wcfs-server.md §1.3), reads at and past EOF,
// writes refused, the watch link's framing while the isolation protocol is not there yet.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { open, readFile, readdir, stat } from 'node:fs/promises';
import { constants } from 'node:fs';
import { hex16 } from '../src/zodb/ids.js';
import { historyManifestPath, historyPath } from './helpers/paths.js';
import { copyInto, readJSON, startServer, stopAllServers, tmpDir, type TestServer } from './helpers/wcfs.js';

let srv: TestServer;
const m = readJSON<{ txns: Array<{ tid: string; sizes: Record<string, number> }> }>(historyManifestPath);
const first = m.txns[0]!.tid;
const FOID = '0000000000000004';

beforeAll(async () => {
  const dir = tmpDir();
  srv = await startServer(copyInto(dir, historyPath), { dir });
}, 30_000);
afterAll(stopAllServers, 30_000);

async function errnoOf(p: Promise<unknown>): Promise<string | undefined> {
  return p.then(
    () => undefined,
    (e: NodeJS.ErrnoException) => e.code,
  );
}

describe('lookup errno', () => {
  const cases: Array<[string, string]> = [
    ['nonsense', 'EINVAL'], // any unknown root name: not @rev
    ['@xyz', 'EINVAL'],
    ['@040D2988FE336233', 'EINVAL'], // uppercase is not the text form
    ['head/nonsense', 'ENOENT'],
    ['.wcfs/nonsense', 'ENOENT'],
    ['head/bigfile/xyz', 'EINVAL'],
    ['head/bigfile/4', 'EINVAL'], // not 16 digits
    ['head/bigfile/0000000000000000', 'EINVAL'], // the root: not a ZBigFile
    ['head/bigfile/0000000000000003', 'EINVAL'], // a BTree: not a ZBigFile
    ['head/bigfile/00000000000fffff', 'EINVAL'], // no such object
    [`@${first}/nonsense`, 'ENOENT'],
  ];
  for (const [p, want] of cases) it(`${p} → ${want}`, async () => expect(await errnoOf(stat(srv.at(p)))).toBe(want));

  it('@<rev> before the database existed: the view exists, its files do not', async () => {
    const early = '0000000000000001';
    expect((await stat(srv.at(`@${early}`))).isDirectory()).toBe(true);
    expect(await errnoOf(stat(srv.at(`@${early}/bigfile/${FOID}`)))).toBe('EINVAL');
  });
  it('a file at a revision before it was created', async () => {
    const created = m.txns.find((t) => t.sizes[FOID] !== undefined)!.tid;
    const before = m.txns[m.txns.findIndex((t) => t.tid === created) - 1]!.tid;
    expect(await errnoOf(stat(srv.at(`@${before}/bigfile/${FOID}`)))).toBe('EINVAL');
    expect((await stat(srv.at(`@${created}/bigfile/${FOID}`))).isFile()).toBe(true);
  });
});

describe('tree', () => {
  it('fixed entries, lazily visible @rev and oid entries', async () => {
    expect((await readdir(srv.at('head'))).sort()).toEqual(['at', 'bigfile', 'watch']);
    expect((await readdir(srv.at('.wcfs'))).sort()).toEqual(['pintimeout', 'stats', 'zurl']);
    expect((await readFile(srv.at('.wcfs/pintimeout'))).toString()).toBe('30.0');
    expect((await readFile(srv.at('head/at'))).toString()).toMatch(/^[0-9a-f]{16}$/);
    await stat(srv.at(`head/bigfile/${FOID}`));
    expect(await readdir(srv.at('head/bigfile'))).toContain(FOID);
    await stat(srv.at(`@${first}`));
    expect(await readdir(srv.at('.'))).toContain(`@${first}`);
    const st = await stat(srv.at(`head/bigfile/${FOID}`));
    expect(st.mode & 0o777).toBe(0o444);
    expect(st.blksize).toBe(65536);
    expect(st.size % 65536).toBe(0);
    expect((await stat(srv.at('head'))).mode & 0o777).toBe(0o555);
  });
  it('stats has the upstream keys in order, then ours', async () => {
    const keys = (await readFile(srv.at('.wcfs/stats')))
      .toString()
      .trim()
      .split('\n')
      .map((l) => l.split('\t:')[0]);
    expect(keys).toEqual([
      'BigFile',
      'RevHead',
      'ZHeadLink',
      'WatchLink',
      'Watch',
      'PinnedBlk',
      'pin',
      'pinkill',
      'RevFile',
      'TrackedBlk',
      'History',
      'Prefetch',
      'Untracked',
      'ReadFast',
      'ReadJS',
      'ReadLoad',
      'AuthLink',
      'AuthProc',
      'authfail',
      'PinRttP50',
      'PinRttP99',
    ]);
  });
});

describe('reads', () => {
  it('at and past EOF: 0 bytes; across EOF: truncated', async () => {
    const p = srv.at(`head/bigfile/${FOID}`);
    const size = (await stat(p)).size;
    const fh = await open(p, 'r');
    try {
      const b = Buffer.alloc(4);
      for (const off of [size, size + 1, size + 65536, size + 100 * 65536]) expect((await fh.read(b, 0, 4, off)).bytesRead).toBe(0);
      expect((await fh.read(b, 0, 4, size - 2)).bytesRead).toBe(2);
      expect((await fh.read(b, 0, 4, 0)).bytesRead).toBe(4);
    } finally {
      await fh.close();
    }
    const at = await open(srv.at('head/at'), 'r');
    try {
      expect((await at.read(Buffer.alloc(8), 0, 8, 100)).bytesRead).toBe(0); // small files guard off > len
    } finally {
      await at.close();
    }
  });
  it('writes are refused', async () => {
    expect(await errnoOf(open(srv.at(`head/bigfile/${FOID}`), 'r+'))).toBe('EROFS');
    expect(await errnoOf(open(srv.at('head/at'), constants.O_WRONLY))).toBe('EROFS');
  });
});

describe('head/watch framing (protocol proper: next milestone)', () => {
  async function talk(lines: string[], want: number): Promise<string> {
    const fh = await open(srv.at('head/watch'), 'r+');
    try {
      for (const l of lines) await fh.write(l);
      let got = '';
      const b = Buffer.alloc(4096);
      while (got.split('\n').length - 1 < want) {
        const { bytesRead } = await fh.read(b, 0, b.length, null);
        if (bytesRead === 0) break;
        got += b.subarray(0, bytesRead).toString();
      }
      return got;
    } finally {
      await fh.close();
    }
  }
  it('bad requests get upstream error texts; the link stays', async () => {
    expect(await talk(['1 bla bla\n', '3 watch 123 @xx\n', '5 watch 0000000000000004 @zz\n'], 3)).toBe(
      '1 error bad watch: not a watch request: "bla bla"\n3 error bad watch: invalid oid\n5 error bad watch: invalid at\n',
    );
  });
  it('a watch request is answered (not yet implemented)', async () => {
    const got = await talk([`7 watch ${FOID} @${first}\n`], 1);
    expect(got).toMatch(new RegExp(`^7 error setup watch f<${FOID}> @${first}: `));
  });
  it('an invalid frame gets a stream-0 error and EOF', async () => {
    expect(await talk(['zzz hello\n'], 2)).toBe('0 error: invalid frame: "zzz hello\\n" (invalid stream)\n');
  });
  it('bye closes the link (EOF)', async () => {
    expect(await talk(['1 bye\n'], 1)).toBe('');
    const stats = (await readFile(srv.at('.wcfs/stats'))).toString();
    expect(stats).toMatch(/WatchLink\t: 0/);
  });
});

void hex16;
