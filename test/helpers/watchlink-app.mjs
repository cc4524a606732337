#!/usr/bin/env node
// A client application using only the public WatchLink API (`wcfs/watchlink`, the package's
// own export; needs dist/): opens head/watch, watches one file, answers every server request
// with "ack" and reports it, closes when told.
//
// argv: <mountpoint> <foid hex16> <at hex16>
// IPC to the test:   {watch: reply} | {req: text, pin: {foid, blk, rev} | null} | {closed: true, down, after: {code, message}} | {error: message}
// IPC from the test: {close: true}
import { WatchLink } from 'wcfs/watchlink';

const [mnt, foid, at] = process.argv.slice(2);
try {
  const wl = await WatchLink.open(mnt);
  let closed;
  process.on('message', (m) => {
    if (!m.close) return;
    closed = wl.close().then(async () => {
      let after = null;
      await wl.sendReq(`watch ${foid} -`).catch((e) => (after = { code: e.code, message: e.message }));
      process.send({ closed: true, down: wl.down ?? null, after });
    });
  });
  process.send({ watch: await wl.sendReq(`watch ${foid} @${at}`) });
  for (let r; (r = await wl.recvReq()) !== null;) {
    const pin =
      r.pin === undefined
        ? null
        : { foid: r.pin.foid.toString(16).padStart(16, '0'), blk: r.pin.blk, rev: r.pin.rev === null ? null : r.pin.rev.toString(16).padStart(16, '0') };
    r.reply('ack');
    process.send({ req: r.text, pin });
  }
  await closed; // recvReq → null: the link went down, or close() began
  process.disconnect();
} catch (e) {
  process.send({ error: e.message });
  process.exit(1);
}
