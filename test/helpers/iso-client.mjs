#!/usr/bin/env node
// A client process of the end-to-end isolation test: joins wcfs with the client library
// (dist/client), keeps a Conn at its own revision with one mapping of the whole file, and
// answers the test over IPC.
//   argv: <zurl> <mountpoint> <foid hex> <nblk>
//   {connect: at}  → {ok}                          conn at `at`, open, mmap blocks [0, nblk)
//   {check: fills} → {bad: [blk…]}                 fills[blk] = expected byte of every byte of blk,
//                                                  for blk < fills.length (≤ nblk)
//   {resync: at}   → {ok}
//   {fatals}       → {fatals: [line…]}              the stream-0 lines the server sent (conn.fatals())
//   {close}        → {ok}, then exit
import { WCFS } from '../../dist/client/index.js';

const [zurl, mnt, foidHex, nblkText] = process.argv.slice(2);
const foid = BigInt('0x' + foidHex);
const nblk = Number(nblkText);
let wc, conn, fh, m;

async function handle(msg) {
  if (msg.connect !== undefined) {
    wc = await WCFS.join(zurl, { mountpoint: mnt, autostart: false });
    conn = await wc.connect(BigInt('0x' + msg.connect));
    fh = await conn.open(foid);
    m = fh.mmap(0, nblk);
    return { ok: true };
  }
  if (msg.check !== undefined) {
    const bs = fh.blksize;
    const bad = [];
    for (let blk = 0; blk < Math.min(nblk, msg.check.length); blk++) {
      const want = msg.check[blk];
      const b = m.bytes.subarray(blk * bs, (blk + 1) * bs);
      // every page of the block (a fault per page goes through the isolation machinery)
      for (let off = 0; off < bs; off += 4096) {
        if (b[off] !== want || b[off + 4095] !== want) {
          bad.push(blk);
          break;
        }
      }
    }
    return { bad };
  }
  if (msg.fatals) return { fatals: conn.fatals() };
  if (msg.resync !== undefined) {
    await conn.resync(BigInt('0x' + msg.resync));
    return { ok: true };
  }
  if (msg.close) {
    m.unmap();
    await fh.close();
    await conn.close();
    await wc.close();
    return { ok: true, exit: true };
  }
  throw new Error(`unknown message ${JSON.stringify(msg)}`);
}

process.on('message', (msg) => {
  handle(msg).then(
    (r) => {
      process.send(r);
      if (r.exit) setTimeout(() => process.exit(0), 10);
    },
    (e) => process.send({ err: String(e && e.stack ? e.stack : e) }),
  );
});
process.on('disconnect', () => process.exit(0));
process.send({ ready: true });
