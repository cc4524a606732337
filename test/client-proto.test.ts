// The client against a scripted server: a fake mount (plain files) and a socketpair for
// head/watch, driven line by line from this test. The real server cannot produce these
// races on demand: pins during setup and in bulk, a pin for a block in the zero region
// before a resync grows the file (H2), a mapping that starts past the old EOF (H3), pins
// for files just closed (H6), a reply queued behind many pins (H1), garbage, EOF, a server
// that never closes the link; and a seeded random run of the rx loop's framing (pins cut at
// random, bad input between lines).
import { afterEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { closeSync, constants as fsc, mkdirSync, openSync, readdirSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { WCFS, type Conn } from '../src/client/index.js';
import { FakeWcfs, assertRangeFaults, PAGE, SIGSEGV } from './helpers/client.js';
import { sleep } from './helpers/mount.js';
import { seedOr } from './helpers/fuzz.js';
import { native } from '../src/native.js';
import { rng } from '../src/util/rng.js';
import { hex16 } from '../src/zodb/ids.js';

const F = 0x1n; // foid
const G = 0x2n;

let fakes: FakeWcfs[] = [];
let conns: Conn[] = [];
afterEach(async () => {
  for (const f of fakes) f.serveAll();
  for (const c of conns) await Promise.race([c.close().catch(() => {}), sleep(3000)]);
  for (const f of fakes) f.close();
  fakes = [];
  conns = [];
});

async function setup(at = 8n): Promise<{ fk: FakeWcfs; conn: Conn }> {
  const fk = new FakeWcfs();
  fakes.push(fk);
  fk.setHead(10n);
  fk.writeFile(F, null, [0xa0, 0xa1, 0xa2]);
  fk.writeFile(G, null, [0xb0]);
  fk.writeFile(F, 5n, [0x50, 0x51, 0x52]);
  fk.writeFile(F, 3n, [0x30]); // shorter: blocks ≥ 1 did not exist @3
  fk.writeFile(F, 6n, [0x60, 0x61, 0x62, 0x63, 0x64]);
  const wc = WCFS.attach(fk.mnt);
  const conn = await wc.connect(at, { watchFd: fk.link(), closeTimeoutMs: 1000 });
  conns.push(conn);
  return { fk, conn };
}

/** Byte at the start of each block of a mapping. */
const firsts = (b: Uint8Array, n: number) => Array.from({ length: n }, (_, i) => b[i * PAGE]);

describe('client against a scripted watch link', { timeout: 20_000 }, () => {
  it('pins during open, mmap layers (head, zeros, pins), pin/unpin, resync growth (H2, H3), close', async () => {
    const { fk, conn } = await setup();

    // >>> open: the server pins #1 @5 during watch setup, then answers ok
    const opening = conn.open(F);
    const req = await fk.serveReq('ok', async () => {
      const s = fk.pin(F, 1, 5n);
      expect(await fk.next()).toBe(`${s} ack`);
    });
    expect(req).toBe('watch 0000000000000001 @0000000000000008');
    const fh = await opening;
    expect(fh.blksize).toBe(PAGE);
    expect([...fh.pinned()]).toEqual([[1, 5n]]);

    // mmap: #0 head, #1 pinned @5, #2 head, #3 #4 past EOF → zeros
    const m = fh.mmap(0, 5);
    expect(m.bytes.length).toBe(5 * PAGE);
    expect(firsts(m.bytes, 5)).toEqual([0xa0, 0x51, 0xa2, 0, 0]);
    expect(m.bytes.subarray(PAGE, 2 * PAGE).every((x) => x === 0x51)).toBe(true);
    expect(m.view(Float64Array).length).toBe((5 * PAGE) / 8);

    // >>> pin #2 @3: the @3 file is shorter → zeros;  unpin #1 → head
    let s = fk.pin(F, 2, 3n);
    expect(await fk.next()).toBe(`${s} ack`);
    s = fk.pin(F, 1, null);
    expect(await fk.next()).toBe(`${s} ack`);
    expect(firsts(m.bytes, 5)).toEqual([0xa0, 0xa1, 0, 0, 0]);
    expect([...fh.pinned()]).toEqual([[2, 3n]]);

    // a new mapping applies the pinned table
    const m2 = fh.mmap(1, 2);
    expect(firsts(m2.bytes, 2)).toEqual([0xa1, 0]);

    // >>> pin #4 (in the zero region) @6: pinned blocks show their revision wherever they are
    s = fk.pin(F, 4, 6n);
    expect(await fk.next()).toBe(`${s} ack`);
    expect(firsts(m.bytes, 5)).toEqual([0xa0, 0xa1, 0, 0, 0x64]);
    const m3 = fh.mmap(6, 2); // entirely past EOF (H3: its unzero must not start before it)
    expect(firsts(m3.bytes, 2)).toEqual([0, 0]);
    const guard = fh.mmap(0, 3); // mmap goes top-down: most likely right below m3
    expect(firsts(guard.bytes, 3)).toEqual([0xa0, 0xa1, 0]);

    // >>> the head file grows to 7 blocks; resync: unzero [3,7), re-pin #4 (H2)
    fk.writeFile(F, null, [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6]);
    const resync = conn.resync(9n);
    expect(await fk.serveReq('ok')).toBe('watch 0000000000000001 @0000000000000009');
    await resync;
    expect(conn.at).toBe(9n);
    expect(firsts(m.bytes, 5)).toEqual([0xa0, 0xa1, 0, 0xa3, 0x64]);
    expect(firsts(m2.bytes, 2)).toEqual([0xa1, 0]);
    expect(firsts(m3.bytes, 2)).toEqual([0xa6, 0]); // #6 head, #7 still past EOF
    expect(firsts(guard.bytes, 3)).toEqual([0xa0, 0xa1, 0]); // not clobbered
    expect(m.bytes.subarray(4 * PAGE).every((x) => x === 0x64)).toBe(true);

    // >>> unmap: views are detached, memory gone; twice is fine
    m2.unmap();
    expect(m2.bytes.length).toBe(0);
    m2.unmap();

    // >>> close: unwatch, then the mappings fault
    const closing = fh.close();
    expect(await fk.serveReq('ok')).toBe('watch 0000000000000001 -');
    await closing;
    assertRangeFaults(m.bytes, 0, 5 * PAGE);
    assertRangeFaults(m3.bytes, 0, 2 * PAGE);
    expect(() => fh.mmap(0, 1)).toThrow(/file already closed/);
    // a pin for the closed file (sent before the server saw the unwatch) is acked (H6)
    s = fk.pin(F, 0, 5n);
    expect(await fk.next()).toBe(`${s} ack`);
    s = fk.pin(0x99n, 0, 5n); // never opened
    expect(await fk.next()).toBe(`${s} ack`);

    // >>> conn close: bye, the server closes, threads end
    await conn.close();
    expect(fk.log[fk.log.length - 1]).toMatch(/^\d+ bye$/);
    await expect(conn.open(F)).rejects.toThrow(/connection closed/);
    await expect(conn.resync(10n)).rejects.toThrow(/connection closed/);
  });

  it('same foid opened twice is one FileH; closes count; error replies do not leave it open', async () => {
    const { fk, conn } = await setup();
    // the server refuses: open fails, nothing stays registered
    const o1 = conn.open(G);
    await fk.serveReq('error setup watch f<0000000000000002> @0000000000000008: file epoch detected');
    await expect(o1).rejects.toThrow(/open f0000000000000002: watch: error setup watch .*file epoch detected/);
    const o2 = conn.open(G);
    await fk.serveReq('ok');
    const fh = await o2;
    const fh2 = await conn.open(G);
    expect(fh2).toBe(fh);
    const m = fh.mmap(0);
    expect(m.blkLen).toBe(1);
    await fh.close(); // one open left: nothing sent
    expect(m.bytes[0]).toBe(0xb0);
    const c = fh2.close();
    await fk.serveReq('ok');
    await c;
    assertRangeFaults(m.bytes, 0, PAGE);
  });

  it('H1: a reply queued behind many pins in flight is read; every pin is acked', async () => {
    const { fk, conn } = await setup();
    const o = conn.open(F);
    await fk.serveReq('ok');
    const fh = await o;
    const m = fh.mmap(0, 3);
    const closing = fh.close();
    const r = await fk.expect(/^(\d+) watch 0000000000000001 -$/);
    // 300 pins, then the reply to the unwatch, all before reading any ack
    const streams: number[] = [];
    for (let i = 0; i < 300; i++) streams.push(fk.pin(F, i % 3, i % 2 ? 5n : null));
    fk.send(`${r[1]} ok`);
    await closing;
    const acks = new Set<string>();
    while (acks.size < 300) acks.add(await fk.next());
    expect(acks).toEqual(new Set(streams.map((s) => `${s} ack`)));
    assertRangeFaults(m.bytes, 0, 3 * PAGE);
  });

  it('H1 with a stuck pinner: replies still arrive; a late pin of a closed watch leaves the reopened file alone', async () => {
    const { fk, conn } = await setup();
    // @77 of G is a FIFO: the pinner blocks in open(2) until we open its other end
    const fifoDir = path.join(fk.mnt, '@0000000000000077', 'bigfile');
    mkdirSync(fifoDir, { recursive: true });
    const fifo = path.join(fifoDir, '0000000000000002');
    execFileSync('mkfifo', [fifo]);
    let o = conn.open(F);
    await fk.serveReq('ok');
    const fh = await o;
    o = conn.open(G);
    await fk.serveReq('ok');
    await o;
    const sG = fk.pin(G, 0, 0x77n); // the pinner is stuck on this one from now on
    await sleep(50);
    // >>> close F: the unwatch reply comes after a pin for F (sent before the server saw the
    //     unwatch); the pinner is stuck, yet the reply is read and close completes
    const closing = fh.close();
    const r = await fk.expect(/^(\d+) watch 0000000000000001 -$/);
    const sLate = fk.pin(F, 0, 5n);
    fk.send(`${r[1]} ok`);
    await closing;
    // >>> reopen F before the pinner got to the late pin: it must not pin the new FileH
    o = conn.open(F);
    await fk.serveReq('ok');
    const fh2 = await o;
    const m = fh2.mmap(0, 1);
    const w = openSync(fifo, fsc.O_WRONLY | fsc.O_NONBLOCK); // unblock the pinner
    expect(new Set([await fk.next(), await fk.next()])).toEqual(new Set([`${sG} ack`, `${sLate} ack`]));
    closeSync(w);
    expect(fh2.pinned().size).toBe(0);
    expect(m.bytes[0]).toBe(0xa0); // head, not @5
  });

  it('@rev files stay open only while some block is pinned to them', async () => {
    const { fk, conn } = await setup();
    const o = conn.open(F);
    await fk.serveReq('ok');
    const fh = await o;
    const revFds = () =>
      readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`).includes('/@0000000000000005/');
        } catch {
          return false;
        }
      }).length;
    for (const blk of [0, 1, 2]) {
      const s = fk.pin(F, blk, 5n);
      expect(await fk.next()).toBe(`${s} ack`);
    }
    expect(revFds()).toBe(1);
    for (const blk of [0, 1]) {
      const s = fk.pin(F, blk, null);
      expect(await fk.next()).toBe(`${s} ack`);
    }
    expect(revFds()).toBe(1);
    const s = fk.pin(F, 2, 6n);
    expect(await fk.next()).toBe(`${s} ack`);
    expect(revFds()).toBe(0);
    expect([...fh.pinned()]).toEqual([[2, 6n]]);
    // exactly one reply per pin, also for those that released an @rev file (the pinner
    // closes it and replies when rx handled the pin)
    await sleep(50);
    expect(fk.lines).toEqual([]);
  });

  it('a bad pin poisons the conn: nak, every mapping faults, calls fail "connection closed"', async () => {
    const { fk, conn } = await setup();
    const o = conn.open(F);
    await fk.serveReq('ok');
    const fh = await o;
    const o2 = conn.open(G);
    await fk.serveReq('ok');
    const fg = await o2;
    const m = fh.mmap(0, 2);
    const mg = fg.mmap(0, 1);
    expect(m.bytes[0]).toBe(0xa0);
    fk.send('2 pin zzz');
    expect(await fk.next()).toMatch(/^2 nak: bad pin: 'pin zzz': expected 3 arguments, got 1$/);
    // poisoned at once, natively: no JS needed
    assertRangeFaults(m.bytes, 0, 2 * PAGE);
    assertRangeFaults(mg.bytes, 0, PAGE);
    expect(() => fh.mmap(0, 1)).toThrow(/file already closed/);
    await expect(conn.open(0x3n)).rejects.toThrow(/connection closed/);
    // the conn closes itself (upstream: async Conn.close after a pinner failure): unwatch both, bye
    expect(await fk.serveReq('ok')).toMatch(/^watch 000000000000000[12] -$/);
    expect(await fk.serveReq('ok')).toMatch(/^watch 000000000000000[12] -$/);
    await conn.close();
    await fk.untilEOF();
  });

  it('unexpected EOF poisons the conn; close still completes', async () => {
    const { fk, conn } = await setup();
    const o = conn.open(F);
    await fk.serveReq('ok');
    const fh = await o;
    const m = fh.mmap(0, 1);
    expect(m.bytes[0]).toBe(0xa0);
    fk.sock.end();
    for (let i = 0; i < 100 && conn.native.down() === null; i++) await sleep(10);
    expect(conn.native.down()).toBe('connection closed');
    assertRangeFaults(m.bytes, 0, PAGE);
    await conn.close();
    await expect(fh.close()).resolves.toBeUndefined();
  });

  it('protocol errors from the server: reply on an unknown stream, request on a used stream', async () => {
    const { fk, conn } = await setup();
    const o = conn.open(F);
    await fk.serveReq('ok');
    const fh = await o;
    const m = fh.mmap(0, 1);
    fk.send('7 ok'); // nobody asked
    for (let i = 0; i < 100 && conn.native.down() === null; i++) await sleep(10);
    expect(conn.native.down()).not.toBe(null);
    assertRangeFaults(m.bytes, 0, PAGE);
    await conn.close();
  });

  it('stream 0 messages are kept; a server that never closes the link: close interrupts the reader', async () => {
    const { fk, conn } = await setup();
    fk.answerBye = false;
    fk.send('0 error: something is wrong');
    for (let i = 0; i < 100 && conn.fatals().length === 0; i++) await sleep(10);
    expect(conn.fatals()).toEqual(['error: something is wrong']);
    const t0 = Date.now();
    await conn.close();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900); // closeTimeoutMs = 1000
    expect(fk.log[fk.log.length - 1]).toMatch(/^\d+ bye$/);
    await fk.untilEOF(); // the fd was closed after the threads ended
  });

  it('Conn.close does not wait forever for an unwatch reply', async () => {
    const { fk, conn } = await setup();
    const o = conn.open(F);
    await fk.serveReq('ok');
    const fh = await o;
    const m = fh.mmap(0, 1);
    const t0 = Date.now();
    await conn.close(); // closeTimeoutMs = 1000; the fake never answers the unwatch
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    expect(fk.log.slice(-2)[0]).toBe('3 watch 0000000000000001 -');
    expect(fk.log.slice(-1)[0]).toMatch(/^\d+ bye$/);
    assertRangeFaults(m.bytes, 0, PAGE);
  });

  it('mappings larger than an ArrayBuffer can be are refused up front', async () => {
    const { fk, conn } = await setup();
    const o = conn.open(F);
    await fk.serveReq('ok');
    const fh = await o;
    const m = fh.mmap(0, 1 << 20); // 4 GiB: the largest Node 20 allows; mostly zeros
    expect(m.bytes.length).toBe(2 ** 32);
    expect(m.bytes[2 ** 32 - 1]).toBe(0);
    m.unmap();
    expect(() => fh.mmap(0, (1 << 20) + 1)).toThrow(/larger than the largest ArrayBuffer/);
  });

  it('resync failure takes the conn down', async () => {
    const { fk, conn } = await setup();
    const o = conn.open(F);
    await fk.serveReq('ok');
    const fh = await o;
    const m = fh.mmap(0, 1);
    const r = conn.resync(7n);
    await fk.serveReq('error setup watch f<0000000000000001> @0000000000000007: going back in history is forbidden');
    expect(await fk.serveReq('ok')).toBe('watch 0000000000000001 -'); // close after the failure
    await expect(r).rejects.toThrow(/going back in history is forbidden/);
    assertRangeFaults(m.bytes, 0, PAGE);
    await expect(conn.open(F)).rejects.toThrow(/connection closed/);
  });
});

// The native rx loop's framing (client_wlink.cc 1): pins cut into random pieces, each piece
// its own write(2) — lines split anywhere, several lines in one read — then, in half of the
// rounds, one bad input between two lines. The line parser alone is fuzzed in
// wire-fuzz.test.ts; this is the loop around it, on a real socket.
describe(`client rx framing: seeded random pieces and bad input (seed ${seedOr(13)})`, { timeout: 120_000 }, () => {
  const BAD: Array<[string, string]> = [
    ['a line that is no message', 'x pin\n'],
    ['NUL bytes', '\0\0\0\n'],
    ['a reply nobody asked for', '7 ok\n'],
    ['a line longer than the bound, never ended', 'y'.repeat(70 * 1024)],
    ['a bad pin', '2 pin zzz\n'],
    ['invalid UTF-8 in a pin', '2 pin \xff\xfe #0 @head\n'],
  ];

  const streams = (n: number) => Array.from({ length: n }, (_, i) => 2 + 2 * i);
  /** The streams of the next n lines, each `<stream> ack`, sorted. */
  async function acks(fk: FakeWcfs, n: number): Promise<number[]> {
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const l = await fk.next();
      expect(l).toMatch(/^\d+ ack$/);
      out.push(Number(l.split(' ')[0]));
    }
    return out.sort((a, b) => a - b);
  }

  /** The mapping's first byte faults now (the conn was poisoned): polled up to 3 s. */
  async function faultsSoon(bytes: Uint8Array): Promise<boolean> {
    for (let i = 0; i < 300; i++) {
      if (native().clientProbe(bytes, [0], 'raw').values[0] === -SIGSEGV) return true;
      await sleep(10);
    }
    return false;
  }

  it('every pin acked once, the mapping as the last pin of each block says; bad input poisons the conn, never crashes it', async () => {
    const R = rng(seedOr(13));
    for (let round = 0; round < 24; round++) {
      const { fk, conn } = await setup();
      const o = conn.open(F);
      await fk.serveReq('ok');
      const fh = await o;
      const m = fh.mmap(0, 3);
      // >>> K pins of #0..#2 @5 or @head (unpin), on streams 2, 4, …
      const K = 1 + Math.floor(R() * 24);
      const want = new Map<number, bigint>();
      let text = '';
      for (let i = 0; i < K; i++) {
        const blk = Math.floor(R() * 3);
        const rev = R() < 0.6 ? 5n : null;
        text += `${2 + 2 * i} pin ${hex16(F)} #${blk} @${rev === null ? 'head' : hex16(rev)}\n`;
        if (rev === null) want.delete(blk);
        else want.set(blk, rev);
      }
      const bad = round % 2 === 1 ? BAD[Math.floor(R() * BAD.length)]! : undefined;
      const badAt = Math.floor(R() * (K + 1)); // after this many pins
      if (bad !== undefined) {
        const cut = text.split('\n').slice(0, badAt).join('\n').length + (badAt > 0 ? 1 : 0);
        text = text.slice(0, cut) + bad[1] + text.slice(cut);
      }
      const bytes = Buffer.from(text, 'latin1');
      for (let p = 0; p < bytes.length;) {
        const n = 1 + Math.floor(R() * (R() < 0.2 ? 4000 : 40));
        await new Promise<void>((res) => fk.sock.write(bytes.subarray(p, p + n), () => res()));
        p += n;
      }
      const what = `round ${round}: ${K} pins${bad ? `, then ${bad[0]} after ${badAt}` : ''}`;
      if (bad === undefined) {
        // >>> one ack per pin (by stream: a pin that closed an @rev file is replied by the
        // pinner, so a later pin's ack may overtake it); nothing else; the mapping follows the
        // last pins
        expect(await acks(fk, K), what).toEqual(streams(K));
        await sleep(20);
        expect(fk.lines, what).toEqual([]);
        expect([...fh.pinned()].sort(), what).toEqual([...want].sort());
        expect(firsts(m.bytes, 3), what).toEqual([0, 1, 2].map((b) => (want.has(b) ? 0x50 : 0xa0) + b));
        expect(conn.native.down(), what).toBe(null);
      } else {
        // >>> the pins before it are acked; then the conn is poisoned: the mapping faults
        expect(await faultsSoon(m.bytes), what).toBe(true);
        assertRangeFaults(m.bytes, 0, 3 * PAGE);
        await sleep(20);
        const got = fk.lines.splice(0);
        const acked = got.filter((l) => / ack$/.test(l)).map((l) => Number(l.split(' ')[0]));
        expect(
          acked.sort((a, b) => a - b),
          what,
        ).toEqual(streams(badAt));
        for (const l of got) expect(l, what).toMatch(/^(\d+ ack|\d+ nak: .*|\d+ watch 0000000000000001 -|\d+ bye)$/);
      }
      fk.serveAll();
      await conn.close();
      fk.close();
    }
  });
});
