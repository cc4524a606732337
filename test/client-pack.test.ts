// Pack while serving, as client-library processes see it (notes.md, Server "Pack while
// serving"): a Conn at a revision the pack removed gets `0 error: …; resync` on its link and
// is poisoned (its resync fails: no silently stale isolation); a Conn at the pack boundary
// goes on — pinned to the boundary, resyncs, sees new commits. The pack is made by hand (every
// txn's status set to 'p', the copy renamed over Data.fs: a pack to "now" that dropped
// nothing; test/py/test_pack.py packs with real ZODB).
import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { sleep } from '../src/util/async.js';
import { markAllPacked } from './helpers/fs1util.js';
import { hex16, type Tid } from '../src/zodb/ids.js';
import { openStorage } from '../src/zodb/open.js';
import type { IWritableStorage } from '../src/zodb/storage.js';
import { repoRoot } from './helpers/paths.js';
import { TDB } from './helpers/tdb.js';
import { stopAllServers } from './helpers/wcfs.js';

const NBLK = 2;

class Client {
  private pending: Array<(m: Record<string, unknown>) => void> = [];
  /** What the client library logged (stderr). */
  stderr = '';
  constructor(readonly proc: ChildProcess) {
    proc.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()));
    proc.on('message', (m: Record<string, unknown>) => {
      if (m.ready) return;
      this.pending.shift()?.(m);
    });
  }
  static async start(t: TDB, foid: bigint): Promise<Client> {
    const p = fork(path.join(repoRoot, 'test', 'helpers', 'iso-client.mjs'), [t.srv.zurl, t.srv.mnt, hex16(foid), String(NBLK)], {
      stdio: ['ignore', 'inherit', 'pipe', 'ipc'],
    });
    const c = new Client(p);
    await new Promise<void>((resolve, reject) => {
      p.once('message', () => resolve());
      p.once('exit', (code, s) => reject(new Error(`client exited ${code ?? s}: ${c.stderr}`)));
    });
    return c;
  }
  call(msg: Record<string, unknown>): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      this.pending.push((m) => (m.err ? reject(new Error(String(m.err))) : resolve(m)));
      this.proc.send(msg);
    });
  }
}

const clients: Client[] = [];
const tdbs: TDB[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.proc.kill('SIGKILL');
  for (const t of tdbs.splice(0)) await t.close();
}, 30_000);
afterAll(stopAllServers, 30_000);

describe('pack while clients are connected', () => {
  it('a conn below the boundary is told to resync and poisoned; one at it goes on', async () => {
    const t = new TDB();
    tdbs.push(t);
    await t.open();
    const f = await t.newFile('f');
    const r1: Tid = await t.commit([[f, { 0: 1, 1: 2 }]]);
    await t.serve();
    await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
    const r2: Tid = await t.commit([[f, { 0: 3 }]]);

    const a = await Client.start(t, f);
    clients.push(a);
    await a.call({ connect: hex16(r1) });
    expect((await a.call({ check: [1, 2] })).bad).toEqual([]);
    const b = await Client.start(t, f);
    clients.push(b);
    await b.call({ connect: hex16(r2) });
    expect((await b.call({ check: [3, 2] })).bad).toEqual([]);

    // >>> pack: history before r2 (the last txn) is gone
    const dbPath = `${t.dir}/data.fs`;
    await t.db.close();
    fs.copyFileSync(dbPath, `${dbPath}.pack`);
    markAllPacked(`${dbPath}.pack`);
    fs.renameSync(dbPath, `${dbPath}.old`);
    fs.renameSync(`${dbPath}.pack`, dbPath);
    t.db = (await openStorage(dbPath)) as IWritableStorage;

    // <<< client a (at r1 < r2): the error line, then its conn is down
    const want = `error: watch f${hex16(f)} @${hex16(r1)}: packed away: history before @${hex16(r2)} is gone; resync`;
    const t0 = Date.now();
    let fatals: string[] = [];
    while (!fatals.includes(want)) {
      if (Date.now() - t0 > 10_000) throw new Error(`client a: no "${want}"; fatals ${JSON.stringify(fatals)}`);
      await sleep(20);
      fatals = (await a.call({ fatals: true })).fatals as string[];
    }
    await expect(a.call({ resync: hex16(r2) })).rejects.toThrow(/connection closed|link is down/);
    expect(a.proc.exitCode).toBeNull(); // not killed
    // the client library logs why, and does not expect to be killed
    expect(a.stderr).toContain(`CRITICAL: pinner: link closed by wcfs: ${want}`);
    expect(a.stderr).not.toContain('will likely kill us');

    // client b (at r2 = the boundary) goes on: a new commit pins it to r2, resync works
    const r3 = await t.commit([[f, { 1: 4 }]]);
    expect((await b.call({ check: [3, 2] })).bad).toEqual([]);
    await b.call({ resync: hex16(r3) });
    expect((await b.call({ check: [3, 4] })).bad).toEqual([]);
    expect((await b.call({ fatals: true })).fatals).toEqual([]);
  });
});
