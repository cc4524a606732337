#!/usr/bin/env node
// A client application with nothing keeping Node alive but the WatchLink it waits on (no IPC,
// no timers): watches one file, prints the reply, waits for one server request, acks it,
// prints it, closes. Prints JSON lines on stdout.
//
// argv: <mountpoint> <foid hex16> <at hex16>
import { WatchLink } from 'wcfs/watchlink';

const [mnt, foid, at] = process.argv.slice(2);
const wl = await WatchLink.open(mnt);
process.stdout.write(JSON.stringify({ watch: await wl.sendReq(`watch ${foid} @${at}`) }) + '\n');
const r = await wl.recvReq(); // only the link keeps the process alive meanwhile
r.reply('ack');
process.stdout.write(JSON.stringify({ req: r.text }) + '\n');
await wl.close();
process.stdout.write(JSON.stringify({ closed: true }) + '\n');
