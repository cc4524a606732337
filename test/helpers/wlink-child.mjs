#!/usr/bin/env node
// A raw head/watch client in its own process, driven by the test over IPC (the test process
// must never block in a read of the link). A worker thread blocks in read(2) of the link and
// forwards every byte; the main thread writes what the test says, or misbehaves as told.
//
// argv: <path of head/watch> [noread]
// IPC from the test: {write: "<line>\n"} | {close: true} | {exit: code} | {abort: true} | {stop: true} (SIGSTOP self)
// IPC to the test:   {ready: pid} | {data: "<bytes>"} | {eof: true} | {err: code}
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

if (!isMainThread) {
  const { fd } = workerData;
  const buf = Buffer.alloc(4096);
  for (;;) {
    let n;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      parentPort.postMessage({ err: e.code });
      break;
    }
    if (n === 0) {
      parentPort.postMessage({ eof: true });
      break;
    }
    parentPort.postMessage({ data: buf.subarray(0, n).toString('latin1') });
  }
} else {
  const fd = openSync(process.argv[2], 'r+');
  // argv[3] === 'noread': never read the link (a client that does not read pins)
  if (process.argv[3] !== 'noread') {
    const w = new Worker(new URL(import.meta.url), { workerData: { fd } });
    w.on('message', (m) => process.send(m));
  }
  process.on('message', (m) => {
    try {
      if (m.write !== undefined) writeSync(fd, m.write);
      if (m.close) closeSync(fd);
      if (m.exit !== undefined) process.exit(m.exit);
      // die at once (process.exit() waits for the reader thread, which may be blocked in read(2))
      if (m.abort) process.kill(process.pid, 'SIGKILL');
      if (m.stop) process.kill(process.pid, 'SIGSTOP');
    } catch (e) {
      process.send({ err: e.code });
    }
  });
  process.on('disconnect', () => process.exit(0));
  process.send({ ready: process.pid });
}
