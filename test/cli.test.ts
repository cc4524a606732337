// `wcfs zodb info|cat|demo` as a user runs them: real process, real files, exit codes and
// stderr messages. Needs dist/ (npm test builds first).
import { describe, expect, it, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { historyManifestPath, historyPath, repoRoot, zblkPath, fixturesDir } from './helpers/paths.js';
import { makeTmpDir } from './helpers/tmp.js';

const wcfs = (...args: string[]) => {
  const r = spawnSync(process.execPath, [path.join(repoRoot, 'bin', 'wcfs.js'), ...args], { timeout: 30_000, maxBuffer: 64 << 20 });
  return { code: r.status, stdout: r.stdout, out: r.stdout.toString('latin1'), err: r.stderr.toString() };
};
const sha1 = (b: Uint8Array) => createHash('sha1').update(b).digest('hex');
const tmp = makeTmpDir();
afterAll(() => tmp.cleanup());

describe('wcfs zodb info', () => {
  it('wendelin zblk.fs: one ZBigFile, 2 MiB blocks, 8 MiB', () => {
    const r = wcfs('zodb', 'info', '--json', zblkPath('py2_pickle2'));
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const info = JSON.parse(r.out);
    expect(info.head).toBe('0285cbac3851eb99');
    expect(info.txns).toBe(2);
    expect(info.zbigfiles).toEqual([{ oid: '0000000000000001', blksize: 2097152, size: 8388608 }]);
  });
  it('zodb-history via file:// URL: 3 ZBigFiles with the manifest sizes', () => {
    const m = JSON.parse(readFileSync(historyManifestPath, 'utf8'));
    const last = m.txns[m.txns.length - 1];
    const r = wcfs('zodb', 'info', '--json', 'file://' + historyPath);
    expect(r.code).toBe(0);
    const info = JSON.parse(r.out);
    expect(info.head).toBe(last.tid);
    expect(info.zbigfiles.map((f: { oid: string }) => f.oid)).toEqual(Object.keys(m.files).sort());
    for (const f of info.zbigfiles) {
      expect(f.blksize).toBe(m.files[f.oid].blksize);
      expect(f.size).toBe(last.sizes[f.oid]);
    }
  });
  it('text output names head time and files', () => {
    const r = wcfs('zodb', 'info', zblkPath('py3_pickle3'));
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/head:\s+0285cbac3851eb99/);
    expect(r.out).toMatch(/0000000000000001\s+blksize 2097152\s+size 8388608/);
  });
});

describe('wcfs zodb cat', () => {
  const expected = JSON.parse(readFileSync(path.join(fixturesDir, 'wendelin-zblk', 'expected.json'), 'utf8'));
  it('raw block bytes', () => {
    for (const blk of ['0', '1', '3']) {
      const r = wcfs('zodb', 'cat', zblkPath('py2_pickle1'), '1', blk);
      expect(r.code).toBe(0);
      expect(r.stdout.length).toBe(2097152);
      expect(sha1(r.stdout)).toBe(expected.blocks_sha1_full[blk]);
    }
  });
  it('--at an older revision', () => {
    const m = JSON.parse(readFileSync(historyManifestPath, 'utf8'));
    // first txn that changed block 1 of file 2
    const t = m.txns.find((x: { changed: Record<string, Record<string, string>> }) => x.changed['0000000000000002']?.['1']);
    const r = wcfs('zodb', 'cat', historyPath, '2', '1', '--at', t.tid);
    expect(r.code).toBe(0);
    expect(sha1(r.stdout)).toBe(t.changed['0000000000000002']['1']);
  });
});

describe('wcfs zodb: clear errors, exit 1', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['missing file', ['zodb', 'info', '/nonexistent/data.fs'], /nonexistent\/data\.fs/],
    ['not a ZBigFile', ['zodb', 'cat', zblkPath('py2_pickle1'), '0', '0'], /0000000000000000.*not a ZBigFile.*PersistentMapping/],
    ['unknown oid', ['zodb', 'cat', zblkPath('py2_pickle1'), 'ff', '0'], /00000000000000ff.*no such object/],
    ['bad tid', ['zodb', 'cat', zblkPath('py2_pickle1'), '1', '0', '--at', 'xyz'], /invalid tid "xyz"/],
    ['tid before the object existed', ['zodb', 'cat', zblkPath('py2_pickle1'), '1', '0', '--at', '0285cbac20da7419'], /0000000000000001.*no data/],
    ['bad block number', ['zodb', 'cat', zblkPath('py2_pickle1'), '1', '-3'], /block number/],
    ['unsupported scheme', ['zodb', 'info', 'neo://cluster@localhost:1234'], /neo:\/\/ storages are not yet supported/],
    ['zeo server not there', ['zodb', 'info', 'zeo://127.0.0.1:1'], /zeo 127\.0\.0\.1:1: connect: .*ECONNREFUSED/],
  ];
  for (const [name, args, re] of cases) {
    it(name, () => {
      const r = wcfs(...args);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/^wcfs: /);
      expect(r.err).toMatch(re);
      expect(r.out).toBe('');
    });
  }
  it('corrupt record: the error names the file and offset', () => {
    const p = path.join(tmp.dir, 'corrupt.fs');
    copyFileSync(zblkPath('py3_pickle3'), p);
    const b = readFileSync(p);
    // find the ZBigFile record (oid 1) and garble its pickle
    let pos = 4;
    let hit = -1;
    while (pos < b.length && hit < 0) {
      const tlen = Number(b.readBigUInt64BE(pos + 8));
      const hdr = 23 + b.readUInt16BE(pos + 17) + b.readUInt16BE(pos + 19) + b.readUInt16BE(pos + 21);
      for (let d = pos + hdr; d < pos + tlen;) {
        const plen = Number(b.readBigUInt64BE(d + 34));
        if (b.readBigUInt64BE(d) === 1n) hit = d;
        d += 42 + plen;
      }
      pos += tlen + 8;
    }
    expect(hit).toBeGreaterThan(0);
    b.fill(0xff, hit + 42 + 2, hit + 42 + 12); // inside the class pickle
    writeFileSync(p, b);
    const r = wcfs('zodb', 'cat', p, '1', '0');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/0000000000000001/);
    expect(r.err).toMatch(/corrupt\.fs/);
    expect(r.err).toMatch(new RegExp(String(hit)));
  });
});

describe('wcfs zodb demo', () => {
  it('creates a database that info and cat read back', () => {
    const p = path.join(tmp.dir, 'demo.fs');
    const c = wcfs('zodb', 'demo', p);
    expect(c.err).toBe('');
    expect(c.code).toBe(0);
    const info = JSON.parse(wcfs('zodb', 'info', '--json', p).out);
    expect(info.zbigfiles).toHaveLength(2);
    expect(info.txns).toBe(6);
    expect(wcfs('zodb', 'demo', p).code).toBe(1); // refuses to overwrite
  });
});

describe('wcfs serve: duration options', () => {
  it.each([
    ['--pintimeout', '0'],
    ['--pintimeout', 'x'],
    ['--gc-interval', 'NaN'],
    ['--untrack-interval', '0s'],
    ['--stats-window', 'soon'],
  ])('%s %s is refused before anything is mounted or created', (flag, value) => {
    const mnt = path.join(tmp.dir, `mnt-${flag.slice(2)}-${value}`);
    const r = wcfs('serve', flag, value, zblkPath('py2_pickle2'), mnt);
    expect(r.code).toBe(1);
    expect(r.err).toContain(`invalid ${flag} "${value}": want seconds > 0`);
    expect(() => readFileSync(mnt), 'no mountpoint created').toThrow(/ENOENT/);
  });
});
