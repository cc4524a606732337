// Slow or faulty clients (wcfs-server.md §2.9; upstream wcfs_faultyprot_test.py): a client
// that mishandles a pin is killed (SIGBUS, then SIGKILL) unless it is already exiting, and
// everybody else goes on — the test's own link gets its pins and "ok" within 2·pintimeout.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { stat } from 'node:fs/promises';
import { hex16 } from '../src/zodb/ids.js';
import { sleep } from './helpers/mount.js';
import { stopAllServers } from './helpers/wcfs.js';
import { TDB, stats } from './helpers/tdb.js';
import { TWatchLink } from './helpers/wlink.js';

const PINTIMEOUT = 2; // seconds

const tdbs: TDB[] = [];
afterEach(async () => {
  for (const t of tdbs.splice(0)) await t.close();
}, 30_000);
afterAll(stopAllServers, 30_000);

type Faulty = 'no_pin_read' | 'no_pin_reply' | 'stop_on_pin' | 'eof_pin_reply' | 'nak_pin_reply' | 'sigstop_on_pin';
const kinds: Faulty[] = ['no_pin_read', 'no_pin_reply', 'stop_on_pin', 'eof_pin_reply', 'nak_pin_reply', 'sigstop_on_pin'];

/**
 * A faulty client: watches `foid @at` on its own link and misbehaves on the first pin.
 * Other lines it receives are kept in `others`.
 */
async function faultyClient(t: TDB, kind: Faulty, foid: bigint, at: bigint): Promise<TWatchLink & { others: string[] }> {
  const c = Object.assign(await TWatchLink.open(t.srv.at('head/watch'), { noread: kind === 'no_pin_read' }), { others: [] as string[] });
  c.send(`1 watch ${hex16(foid)} @${hex16(at)}\n`);
  if (kind === 'no_pin_read') return c;
  void (async () => {
    for (;;) {
      let l: string;
      try {
        l = await c.next(30_000);
      } catch {
        return;
      }
      const m = /^(\d+) pin /.exec(l);
      if (!m) {
        c.others.push(l);
        continue;
      }
      if (kind === 'stop_on_pin') c.proc.send({ abort: true });
      if (kind === 'eof_pin_reply') c.proc.send({ close: true });
      if (kind === 'nak_pin_reply') c.send(`${m[1]} nak\n`);
      if (kind === 'sigstop_on_pin') c.proc.send({ stop: true });
      return; // no_pin_reply: just don't answer
    }
  })();
  return c;
}

async function expectOutcome(t: TDB, c: TWatchLink, kind: Faulty): Promise<void> {
  const end = await Promise.race([c.exited, sleep(2 * PINTIMEOUT * 1000 + 2000).then(() => 'alive' as const)]);
  expect(end, `${kind}: the client must end`).not.toBe('alive');
  if (kind === 'stop_on_pin') {
    expect(end).toMatchObject({ signal: 'SIGKILL' }); // it ended on its own (kill -9 of itself)
    expect(t.srv.stderr()).not.toMatch(/client failed to handle pin/);
    await sleep(2 * PINTIMEOUT * 1000);
    expect((await stats(t)).pinkill, 'a dying client is not killed').toBe(0);
  } else {
    expect((end as { signal: string }).signal).toMatch(/SIGBUS|SIGKILL/);
    const t0 = Date.now();
    while ((await stats(t)).pinkill === 0 && Date.now() - t0 < PINTIMEOUT * 1000) await sleep(20); // counted once dead
    expect((await stats(t)).pinkill).toBe(1);
    expect(t.srv.stderr()).toMatch(new RegExp(`pid${c.pid}: client failed to handle pin notification correctly and timely`));
  }
}

describe('faulty client on watch setup', () => {
  for (const kind of kinds) {
    it(kind, async () => {
      const t = new TDB();
      t.pinTimeout = PINTIMEOUT;
      tdbs.push(t);
      await t.open();
      const f = await t.newFile('f');
      await t.commit([[f, { 2: 1 }]]);
      await t.serve();
      await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
      await t.read(f, 2);
      const at1 = await t.commit([[f, { 2: 2 }]]);
      await t.commit([[f, { 2: 3 }]]);
      await t.read(f, 2);
      const c = await faultyClient(t, kind, f, at1);
      await sleep(100);
      // meanwhile we watch @at1 too: our pin and ok come within 2·pintimeout
      const l = await t.link();
      const t0 = Date.now();
      await t.watch(l, f, at1);
      expect(l.pinned.get(f)).toEqual(new Map([[2, at1]]));
      expect(Date.now() - t0).toBeLessThan(2 * PINTIMEOUT * 1000 + 1000);
      await expectOutcome(t, c, kind);
      // and the server goes on serving
      await t.commit([[f, { 3: 4 }]]);
      await t.read(f, 3);
    }, 30_000);
  }
});

describe('faulty client on access', () => {
  for (const kind of kinds) {
    it(kind, async () => {
      const t = new TDB();
      t.pinTimeout = PINTIMEOUT;
      tdbs.push(t);
      await t.open();
      const f = await t.newFile('f');
      await t.commit([[f, { 1: 1, 2: 1 }]]);
      await t.serve();
      await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
      await t.read(f, 1);
      await t.read(f, 2);
      const at1 = await t.commit([[f, { 2: 2 }]]);
      const at2 = await t.commit([[f, { 2: 3 }]]);
      const l = await t.link();
      await t.watch(l, f, at1); // {2: at1}
      const c = await faultyClient(t, kind, f, at2);
      if (kind !== 'no_pin_read') {
        for (let i = 0; i < 100 && c.others.length === 0; i++) await sleep(20);
        expect(c.others).toEqual(['1 ok']);
      } else await sleep(200);
      await t.commit([[f, { 1: 5 }]]); // at3: block 1 changes
      const t0 = Date.now();
      await t.read(f, 1); // pins us {1: tail}; the faulty client gets its pin and misbehaves
      expect(Date.now() - t0).toBeLessThan(2 * PINTIMEOUT * 1000 + 1000);
      expect(l.pinned.get(f)).toEqual(new Map([[1, t.tail], [2, at1]]));
      await expectOutcome(t, c, kind);
    }, 30_000);
  }
});
