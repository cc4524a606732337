// The error registry (src/errors.ts): codes, the guard, errno names in TS and from native.

import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { errnoName, isCode, WcfsError } from '../src/errors.js';
import { FuseError } from '../src/fuse/errors.js';
import { native } from '../src/native.js';
import { LinkDownError, PinError } from '../src/watchlink/errors.js';
import { NotZBigFileError } from '../src/zodb/errors.js';

describe('registry', () => {
  it('every layer error is a WcfsError with its code and class name', () => {
    const e = new NotZBigFileError(1n, 'BTrees.LOBTree.LOBTree');
    expect(e).toBeInstanceOf(WcfsError);
    expect(e.name).toBe('NotZBigFileError');
    expect(e.message).toBe('oid 0000000000000001: not a ZBigFile (class BTrees.LOBTree.LOBTree)');
    expect(isCode(e, 'WCFS_ENOTZBIGFILE')).toBe(true);
    expect(isCode(e, 'WCFS_EFORMAT')).toBe(false);
    expect(isCode(new FuseError(os.constants.errno.ENOENT), 'WCFS_EFUSE')).toBe(true);
    expect(new FuseError(os.constants.errno.ENOENT).message).toBe('ENOENT');
  });

  it('isCode takes anything', () => {
    expect(isCode(undefined, 'WCFS_EPIN')).toBe(false);
    expect(isCode('WCFS_EPIN', 'WCFS_EPIN')).toBe(false);
    expect(isCode({ code: 'WCFS_EBUSY' }, 'WCFS_EBUSY')).toBe(true); // a plain native error
  });

  it('a link taken down by a failed pin carries the PinError as its cause', () => {
    const pe = new PinError('pin #3 @head', new Error('timeout (1.0s)'));
    const down = new LinkDownError('link is down', pe.message, { cause: pe });
    expect(down.message).toBe('link is down: pin #3 @head: timeout (1.0s)');
    expect(isCode(down, 'WCFS_ELINKDOWN')).toBe(true);
    expect(isCode(down.cause, 'WCFS_EPIN')).toBe(true);
    expect(new LinkDownError('link is down', '').message).toBe('link is down');
  });
});

describe('the registry lists every code', () => {
  it("each quoted 'WCFS_E…' in src/ and native/ is a WcfsCode, and each WcfsCode is used", () => {
    const files = ['src', 'native'].flatMap((d) =>
      readdirSync(d, { recursive: true, encoding: 'utf8' })
        .filter((f) => /\.(ts|cc|h)$/.test(f))
        .map((f) => path.join(d, f)),
    );
    const registry = new Set([...readFileSync('src/errors.ts', 'utf8').matchAll(/^\s*\| '(WCFS_E[A-Z]+)'/gm)].map((m) => m[1]));
    const used = new Set<string>();
    for (const f of files) {
      let text = readFileSync(f, 'utf8');
      if (f === path.join('src', 'errors.ts')) text = text.slice(text.indexOf('export class WcfsError')); // past the list
      for (const m of text.matchAll(/['"](WCFS_E[A-Z]+)['"]/g)) used.add(m[1]!);
    }
    expect(registry.size).toBeGreaterThan(30);
    expect([...used].filter((c) => !registry.has(c))).toEqual([]);
    expect([...registry].filter((c) => !used.has(c!))).toEqual([]);
  });
});

describe('errno names', () => {
  it('every name os.constants.errno knows (first one of aliases)', () => {
    expect(errnoName(os.constants.errno.ENOENT)).toBe('ENOENT');
    expect(errnoName(os.constants.errno.EHOSTUNREACH)).toBe('EHOSTUNREACH');
    expect(errnoName(os.constants.errno.EAGAIN)).toBe('EAGAIN');
    expect(errnoName(100000)).toBe('E100000');
  });

  it('native errno errors carry the same names (beyond the ones native used to know)', () => {
    const fd = openSync(os.tmpdir(), 'r'); // a directory: mmap fails with ENODEV
    try {
      let err: NodeJS.ErrnoException | undefined;
      try {
        native().mapFile(fd, 4096);
      } catch (e) {
        err = e as NodeJS.ErrnoException;
      }
      expect(err?.code).toBe('ENODEV');
      expect(err?.errno).toBe(-os.constants.errno.ENODEV);
      expect(err?.message).toMatch(/^ENODEV: /);
    } finally {
      closeSync(fd);
    }
  });
});
