// The real-ZEO harness (test/helpers/zeo.ts) works: the venv's runzeo over a FileStorage our
// writer made, per encoding, over TCP and a Unix socket.
//
// What it proves:
//   - startZeo returns a server that greets a raw connection with its encoding's handshake
//     (Z5 pickle, M5 msgpack), and that ZEO's own ClientStorage reads our writer's head from it;
//   - stop() leaves no process (the pid is gone) and frees the address; restart() and kill9() +
//     restart() serve on the same address again; stopAllZeo() ends what is left;
//   - read-only mode over a directory without write permission starts and serves, and changes
//     nothing in it (no .lock, .index, .tmp; same names, sizes and mtimes) — across restart,
//     kill9 and restart (tests run as root, whom mode 555 does not stop: the snapshot is the proof);
//   - a server that cannot start fails startZeo loudly with runzeo's stderr, leaving nothing.
import { spawnSync } from 'node:child_process';
import { chmodSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { hex16, type Tid } from '../src/zodb/ids.js';
import { openStorage } from '../src/zodb/open.js';
import type { IWritableStorage } from '../src/zodb/storage.js';
import { ensureRoot } from '../src/zodb/zbigfile.js';
import { python, pythonEnv } from './helpers/python.js';
import { makeTmpDir } from './helpers/tmp.js';
import { readGreeting, startZeo, stopAllZeo, type ZeoEncoding } from './helpers/zeo.js';

const cleanups: Array<() => void> = [];
afterEach(async () => {
  await stopAllZeo();
  for (const c of cleanups.splice(0)) c();
});
afterAll(stopAllZeo);

/** A fresh FileStorage written by our writer (one transaction: the root); returns its path and head. */
async function freshFs(): Promise<{ dir: string; fsPath: string; head: Tid }> {
  const { dir, cleanup } = makeTmpDir('wcfs-zeo-test-');
  cleanups.push(cleanup);
  const fsPath = path.join(dir, 'data.fs');
  const db = (await openStorage(fsPath, { create: true })) as IWritableStorage;
  await ensureRoot(db);
  const head = db.head();
  await db.close();
  return { dir, fsPath, head };
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw e;
  }
}

/** lastTransaction() as ZEO's ClientStorage sees it (16 hex digits). */
function zeoLastTid(addr: string): string {
  const target = addr.includes('/') ? JSON.stringify(addr) : `(${JSON.stringify(addr.split(':')[0])}, ${addr.split(':')[1]})`;
  const code = [
    'from ZEO.ClientStorage import ClientStorage',
    `cs = ClientStorage(${target}, wait_timeout=10, read_only=True)`,
    'print(cs.lastTransaction().hex())',
    'cs.close()',
  ].join('\n');
  const r = spawnSync(python(), ['-c', code], { env: pythonEnv(), encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`ClientStorage on ${addr} failed (${r.status ?? r.signal}):\n${r.stderr}`);
  return r.stdout.trim();
}

/** name → [size, mtime] of everything in dir. */
function snapshot(dir: string): Record<string, [number, number]> {
  const out: Record<string, [number, number]> = {};
  for (const n of readdirSync(dir).sort()) {
    const st = statSync(path.join(dir, n));
    out[n] = [st.size, st.mtimeMs];
  }
  return out;
}

const GREETING: Record<ZeoEncoding, string> = { pickle: 'Z5', msgpack: 'M5' };

describe.each(['pickle', 'msgpack'] as const)('runzeo, %s', (encoding) => {
  it('greets with its handshake, serves our file, stops without a trace', async () => {
    const { fsPath, head } = await freshFs();
    const zeo = await startZeo({ fsPath, encoding });
    expect(zeo.addr).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(zeo.zurl).toBe(`zeo://${zeo.addr}`);
    expect(await readGreeting(zeo.addr)).toBe(GREETING[encoding]);
    expect(zeoLastTid(zeo.addr)).toBe(hex16(head));
    const pid = zeo.pid;
    expect(pidAlive(pid)).toBe(true);
    await zeo.stop();
    expect(pidAlive(pid)).toBe(false);
    await expect(readGreeting(zeo.addr, 1000)).rejects.toThrow(/ECONNREFUSED/);
    await zeo.stop(); // idempotent
  });

  it('restart and kill9 + restart keep the address', async () => {
    const { fsPath, head } = await freshFs();
    const zeo = await startZeo({ fsPath, encoding });
    const addr = zeo.addr;
    const pid1 = zeo.pid;
    await zeo.restart();
    expect(zeo.addr).toBe(addr);
    expect(pidAlive(pid1)).toBe(false);
    const pid2 = zeo.pid;
    expect(pid2).not.toBe(pid1);
    expect(await readGreeting(addr)).toBe(GREETING[encoding]);
    await zeo.kill9();
    expect(pidAlive(pid2)).toBe(false);
    await expect(readGreeting(addr, 1000)).rejects.toThrow(/ECONNREFUSED/);
    await zeo.restart();
    expect(zeo.addr).toBe(addr);
    expect(await readGreeting(addr)).toBe(GREETING[encoding]);
    expect(zeoLastTid(addr)).toBe(hex16(head));
    await zeo.stop();
  });

  it('on a Unix socket', async () => {
    const { fsPath, head } = await freshFs();
    const zeo = await startZeo({ fsPath, encoding, unixSocket: true });
    expect(zeo.addr.startsWith('/')).toBe(true);
    expect(zeo.zurl).toBe(`zeo://${zeo.addr}`); // zeo:///path/to/sock
    expect(zeo.zurl.startsWith('zeo:///')).toBe(true);
    expect(await readGreeting(zeo.addr)).toBe(GREETING[encoding]);
    expect(zeoLastTid(zeo.addr)).toBe(hex16(head));
    await zeo.restart();
    expect(await readGreeting(zeo.addr)).toBe(GREETING[encoding]);
    const pid = zeo.pid;
    await zeo.stop();
    expect(pidAlive(pid)).toBe(false);
  });

  it('read-only over a directory without write permission writes nothing', async () => {
    const { dir, fsPath, head } = await freshFs();
    const before = snapshot(dir);
    chmodSync(fsPath, 0o444);
    chmodSync(dir, 0o555);
    cleanups.unshift(() => chmodSync(dir, 0o755)); // before its removal
    const zeo = await startZeo({ fsPath, encoding, readOnly: true });
    expect(await readGreeting(zeo.addr)).toBe(GREETING[encoding]);
    expect(zeoLastTid(zeo.addr)).toBe(hex16(head));
    expect(zeo.stderr()).toMatch(/StorageServer created RO with storages: 1:RO:/);
    await zeo.restart();
    await zeo.kill9();
    await zeo.restart();
    await zeo.stop();
    expect(snapshot(dir)).toEqual(before);
  });
});

describe('runzeo harness', () => {
  it('a server that cannot start fails startZeo with its stderr and leaves nothing', async () => {
    const { dir, cleanup } = makeTmpDir('wcfs-zeo-test-');
    cleanups.push(cleanup);
    const fsPath = path.join(dir, 'data.fs');
    writeFileSync(fsPath, 'not a FileStorage');
    await expect(startZeo({ fsPath, encoding: 'pickle', timeoutMs: 20_000 })).rejects.toThrow(
      /exited .* before it served:[\s\S]*(FileStorageFormatError|Error)/,
    );
  });

  it('stopAllZeo ends every server still running', async () => {
    const { fsPath } = await freshFs();
    const a = await startZeo({ fsPath, encoding: 'pickle', readOnly: true });
    const b = await startZeo({ fsPath, encoding: 'msgpack', readOnly: true, unixSocket: true });
    const pids = [a.pid, b.pid];
    await stopAllZeo();
    for (const p of pids) expect(pidAlive(p)).toBe(false);
  });
});
