// Demo: serve a FileStorage with wcfs and show isolation at work.
//
//   npm run demo          (after npm run build; scripts/quickstart.sh does both)
//
// 1. writes a small database with our writer (two ZBigFiles, a short history);
// 2. starts `wcfs serve` on it (/dev/shm/wcfs/<sha1 of the path>);
// 3. a client at revision at0 watches file a over head/watch;
// 4. the writer commits a change to block 0; reading head/ now makes the server pin the
//    client's block 0 to @at0 *before* the new data enters the shared page cache — the
//    client acks (a real client remaps the block from @at0/bigfile/<oid>);
// 5. head/ shows the new data, @at0/ the old: each client sees its own revision.
import { mkdtempSync, rmSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { zodbDemo } from '../dist/cli/zodb.js';
import { start, stop } from '../dist/control/control.js';
import { openStorage } from '../dist/zodb/open.js';
import { WriteTxn } from '../dist/zodb/db.js';
import { sleep } from '../dist/util/async.js';
import { hex16 } from '../dist/zodb/ids.js';
import { rootEntries, setBlock } from '../dist/zodb/zbigfile.js';
import { StorageLoader } from '../dist/zodb/db.js';

const say = (s) => console.log(s);
const dir = mkdtempSync(path.join(os.tmpdir(), 'wcfs-demo-'));
const db = path.join(dir, 'data.fs');
let mnt;
try {
  await zodbDemo(db);
  const w = await openStorage(db);
  const a = (await rootEntries(new StorageLoader(w), w.head())).get('a').oid;
  await w.close();

  const srv = await start(db, { logFile: path.join(dir, 'wcfs.log') });
  mnt = srv.mountpoint;
  say(`wcfs serving ${db}\n  on ${mnt} (pid ${srv.pid})`);
  const at0 = (await readFile(`${mnt}/head/at`)).toString();
  const F = `${mnt}/head/bigfile/${hex16(a)}`;
  const blk0 = async (p) => {
    const fh = await open(p, 'r');
    const b = Buffer.alloc(8);
    await fh.read(b, 0, 8, 0);
    await fh.close();
    return b.toString('hex');
  };
  say(`head/at = ${at0}; file a = head/bigfile/${hex16(a)}, block 0 starts ${await blk0(F)}`);

  // a client at at0: open head/watch, watch file a @at0, ack every pin
  const link = await open(`${mnt}/head/watch`, 'r+');
  let rx = '';
  const replies = [];
  const reader = (async () => {
    const b = Buffer.alloc(4096);
    for (;;) {
      const { bytesRead } = await link.read(b, 0, b.length, null);
      if (bytesRead === 0) return;
      rx += b.subarray(0, bytesRead).toString();
      let i;
      while ((i = rx.indexOf('\n')) >= 0) {
        const line = rx.slice(0, i);
        rx = rx.slice(i + 1);
        say(`  client <- ${line}`);
        const m = /^(\d+) pin /.exec(line);
        if (m) {
          say(`  client -> ${m[1]} ack   (a real client remaps the block from @${at0} first)`);
          await link.write(`${m[1]} ack\n`);
        } else replies.push(line);
      }
    }
  })();
  say(`client -> 1 watch ${hex16(a)} @${at0}`);
  await link.write(`1 watch ${hex16(a)} @${at0}\n`);
  while (replies.length === 0) await sleep(10);

  // the writer commits a change to block 0 of a
  const ws = await openStorage(db);
  const txn = new WriteTxn(ws);
  await setBlock(txn, a, 0, new Uint8Array(65536).fill(0xee));
  const at1 = hex16(await txn.commit({ description: 'demo: change block 0' }));
  await ws.close();
  say(`writer committed @${at1} (block 0 := ee…)`);
  while ((await readFile(`${mnt}/head/at`)).toString() !== at1) await sleep(10);

  say('reading head/ block 0 (the server pins the client first):');
  say(`  head/           block 0 starts ${await blk0(F)}`);
  say(`  @${at0}/ block 0 starts ${await blk0(`${mnt}/@${at0}/bigfile/${hex16(a)}`)}   (what the client at ${at0} sees)`);
  say(
    (await readFile(`${mnt}/.wcfs/stats`))
      .toString()
      .trim()
      .split('\n')
      .map((l) => '  ' + l)
      .join('\n'),
  );
  await link.write('3 bye\n');
  await reader;
  await link.close();
} finally {
  if (mnt) await stop(mnt).then((r) => say(r.join('\n')));
  rmSync(dir, { recursive: true, force: true });
}
