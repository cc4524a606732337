// Auto-exit (`serve --autoexit`, upstream's -autoexit): the server stops once no file has been
// open for the delay. Files opened by the server's own process — commit processing looks up
// @<rev> files through its own mount, start-up probes .wcfs/stats — neither keep it alive nor
// restart the delay (they did: a stream of commits could keep an abandoned server up). At the
// seam (no mount: who opens is just the request's pid); isOwnThread on real threads is in
// proc.test.ts.
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { WcfsServer } from '../src/server/server.js';
import { openStorage } from '../src/zodb/open.js';
import type { IWritableStorage } from '../src/zodb/storage.js';
import { ensureRoot } from '../src/zodb/zbigfile.js';
import { lookupPath, nullKernel } from './helpers/seam.js';
import { makeTmpDir } from './helpers/tmp.js';

const tmp = makeTmpDir('wcfs-autoexit-');
afterAll(() => tmp.cleanup());
let ndb = 0;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Not one of this process's threads (init). */
const OTHER = 1;

async function serve(delayMs: number): Promise<{ srv: WcfsServer; stopped: () => boolean }> {
  const dbPath = path.join(tmp.dir, `data${ndb++}.fs`);
  const db = (await openStorage(dbPath, { create: true })) as IWritableStorage;
  await ensureRoot(db);
  await db.close();
  const storage = await openStorage(dbPath, { readOnly: true }); // the server closes it
  const srv = WcfsServer.serve({ zurl: dbPath, mountpoint: '/nonexistent', log: () => {}, autoExit: true, autoExitDelayMs: delayMs }, storage, nullKernel());
  let stopped = false;
  void srv.done.then(() => (stopped = true));
  return { srv, stopped: () => stopped };
}

/** OPEN of head/at by `pid`; returns its RELEASE. */
async function openAt(srv: WcfsServer, pid: number): Promise<() => void> {
  const nodeid = await lookupPath(srv, ['head', 'at'], { pid });
  const hdr = { id: 1, uid: 0, gid: 0, pid };
  const { fh } = srv.open({ ...hdr, op: 'OPEN', nodeid, flags: 0 });
  return () => srv.release({ ...hdr, op: 'RELEASE', nodeid, fh: fh!, flags: 0 });
}

describe('auto-exit', () => {
  it('stops once the last file is released and the delay passes; an open file keeps it up', { timeout: 20_000 }, async () => {
    const { srv, stopped } = await serve(300);
    try {
      const close = await openAt(srv, OTHER);
      await sleep(900);
      expect(stopped(), 'a client holds head/at open').toBe(false);
      close();
      // >>> a new open within the delay cancels it
      await sleep(100);
      const close2 = await openAt(srv, OTHER);
      await sleep(600);
      expect(stopped()).toBe(false);
      close2();
      for (let i = 0; i < 100 && !stopped(); i++) await sleep(50);
      expect(stopped(), 'nothing open for the delay').toBe(true);
    } finally {
      await srv.stop();
    }
  });

  it("the server's own opens neither keep it up nor restart the delay", { timeout: 20_000 }, async () => {
    const { srv, stopped } = await serve(300);
    try {
      (await openAt(srv, OTHER))(); // a client came and went: the delay runs
      // >>> the server's own process opens and releases files every 50 ms, and holds one
      const held = await openAt(srv, process.pid);
      for (let i = 0; i < 100 && !stopped(); i++) {
        (await openAt(srv, process.pid))();
        await sleep(50);
      }
      expect(stopped(), 'own opens do not count').toBe(true);
      held();
    } finally {
      await srv.stop();
    }
  });
});
