// Isolation end to end: K client processes (the client library, native pinner) at different
// revisions map the same head/bigfile while our writer commits random changes. At all times
// every client's bytes equal the database as of its own revision; after resync, as of the
// new one. The head page cache is shared: a client's @<rev> view holds only the blocks that
// changed after its revision — everything else it reads from head's pages.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { fork, type ChildProcess } from 'node:child_process';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { cacheResidency } from '../src/fuse/pagecache.js';
import { hex16, type Tid } from '../src/zodb/ids.js';
import { repoRoot } from './helpers/paths.js';
import { BS, TDB, rng, stats } from './helpers/tdb.js';
import { ENV_SEED } from './helpers/fuzz.js';
import { stopAllServers } from './helpers/wcfs.js';

const NBLK = 8;
const PAGE = 4096;

class Client {
  private pending: Array<(m: Record<string, unknown>) => void> = [];
  at: Tid = 0n;
  constructor(readonly proc: ChildProcess) {
    proc.on('message', (m: Record<string, unknown>) => {
      if (m.ready) return;
      this.pending.shift()?.(m);
    });
  }
  static async start(t: TDB, foid: bigint): Promise<Client> {
    const p = fork(path.join(repoRoot, 'test', 'helpers', 'iso-client.mjs'), [t.srv.zurl, t.srv.mnt, hex16(foid), String(NBLK)], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    await new Promise<void>((resolve, reject) => {
      p.once('message', () => resolve());
      p.once('exit', (c, s) => reject(new Error(`client exited ${c ?? s}`)));
    });
    return new Client(p);
  }
  call(msg: Record<string, unknown>): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      this.pending.push((m) => (m.err ? reject(new Error(String(m.err))) : resolve(m)));
      this.proc.send(msg);
    });
  }
  async connect(at: Tid): Promise<void> {
    this.at = at;
    await this.call({ connect: hex16(at) });
  }
  async resync(at: Tid): Promise<void> {
    this.at = at;
    await this.call({ resync: hex16(at) });
  }
  async check(fills: number[]): Promise<number[]> {
    return (await this.call({ check: fills })).bad as number[];
  }
}

const clients: Client[] = [];
const tdbs: TDB[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.proc.kill('SIGKILL');
  for (const t of tdbs.splice(0)) await t.close();
}, 30_000);
afterAll(stopAllServers, 30_000);

describe('isolation end to end', () => {
  for (const seed of ENV_SEED !== undefined ? [ENV_SEED] : [1, 2]) {
    it(`3 client processes at different revisions, random commits, resync (seed ${seed})`, async () => {
      const r = rng(seed);
      const t = new TDB();
      tdbs.push(t);
      await t.open();
      const f = await t.newFile('f');
      /** fills as of each revision (the model): rev → blk → byte */
      const at = new Map<Tid, number[]>();
      const snapshot = () => [...Array(NBLK).keys()].map((b) => t.data.get(f)!.get(b) ?? 0);
      const commit = async () => {
        const blocks: Record<number, number> = {};
        for (let i = 0, n = 1 + Math.floor(r() * 3); i < n; i++) blocks[Math.floor(r() * NBLK)] = 1 + Math.floor(r() * 254);
        const tid = await t.commit([[f, blocks]]);
        at.set(tid, snapshot());
        return tid;
      };
      at.set(await t.commit([[f, { 0: 1, 2: 1, 3: 1 }]]), snapshot()); // blocks 1, 4.. are holes / beyond EOF
      await t.serve();
      await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
      for (let i = 0; i < 2; i++) await commit();

      // three clients at three revisions
      const revs = [...at.keys()];
      for (const rev of [revs[0]!, revs[1]!, revs[2]!]) {
        const c = await Client.start(t, f);
        clients.push(c);
        await c.connect(rev);
      }
      const checkAll = async (what: string) => {
        for (const c of clients) expect(await c.check(at.get(c.at)!), `${what}: client @${hex16(c.at)}`).toEqual([]);
      };
      await checkAll('start');
      for (let step = 0; step < 12; step++) {
        const tid = await commit();
        await checkAll(`after commit @${hex16(tid)}`);
        if (r() < 0.3) {
          const c = clients[Math.floor(r() * clients.length)]!;
          const later = [...at.keys()].filter((x) => x >= c.at);
          await c.resync(later[Math.floor(r() * later.length)]!);
          await checkAll(`after resync of a client to @${hex16(c.at)}`);
        }
      }

      // sharing: a client's @<at> view caches only blocks that changed after its at
      const head = t.head();
      for (const c of clients) {
        if (c.at === head) continue;
        const res = await cacheResidency(t.srv.at(`@${hex16(c.at)}/bigfile/${hex16(f)}`), 0, NBLK * BS).catch(() => new Uint8Array(0));
        const mine = at.get(c.at)!;
        const now = at.get(head)!;
        for (let blk = 0; blk < NBLK && blk * BS < res.length * PAGE; blk++) {
          if (mine[blk] !== now[blk]) continue; // may be pinned: lives in @at's cache
          const cachedPages = [...res.subarray((blk * BS) / PAGE, ((blk + 1) * BS) / PAGE)].filter((x) => x & 1).length;
          expect(cachedPages, `client @${hex16(c.at)}: unchanged blk ${blk} must come from head, not @at`).toBe(0);
        }
      }
      const s = await stats(t);
      expect(s.pin).toBeGreaterThan(0);
      expect(s.pinkill).toBe(0);
      for (const c of clients) await c.call({ close: true });
      clients.splice(0);
    }, 120_000);
  }
});
