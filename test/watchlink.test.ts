// WatchLink (src/server/wlink.ts) without FUSE: the bounds on what a client can make the
// server hold (B1 line length, B2 requests in flight, B3 outgoing queue, B4 quoting), driven
// through the same write/read entry points the FUSE handlers use.
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { FuseError } from '../src/fuse/errors.js';
import { errno } from '../src/fuse/kernel.js';
import { MAX_INFLIGHT, MAX_LINE, TX_MAX, WatchLink, type LinkHandlers } from '../src/server/wlink.js';
import { LinkTimeoutError } from '../src/watchlink/errors.js';
import { ProcessRef } from '../src/util/proc.js';
import { goQuote, QUOTE_MAX } from '../src/watchlink/wire.js';
import { exitOf } from './helpers/pidreuse.js';
import { seedOr } from './helpers/fuzz.js';
import { rng } from '../src/util/rng.js';

const SEED = seedOr(1);

const tid = process.pid; // the "client thread" of every READ/WRITE here
const links: WatchLink[] = [];
const children: ChildProcess[] = [];
afterEach(async () => {
  for (const l of links.splice(0)) l.release(); // closes the pidfd
  for (const c of children.splice(0)) {
    c.kill('SIGKILL');
    await exitOf(c);
  }
});

function newLink(request?: LinkHandlers['request']) {
  const downs: Array<string | undefined> = [];
  const l = new WatchLink(1, ProcessRef.open(process.pid), {
    request: request ?? ((link, stream) => link.send(stream, 'ok')),
    down: (_l, down) => void downs.push(down?.why),
  });
  links.push(l);
  return { l, downs };
}
const w = (l: WatchLink, s: string | Buffer) => l.write(typeof s === 'string' ? Buffer.from(s, 'latin1') : s, tid);

/** Everything queued for the client, read the way a client would (4 KiB reads). */
async function drain(l: WatchLink): Promise<string> {
  let out = '';
  while (l.queued.bytes > 0) out += Buffer.from(await l.read(4096, new AbortController().signal, tid)).toString('latin1');
  return out;
}
const never = new Promise<void>(() => {});

describe('B4 quoting', () => {
  it('quotes at most QUOTE_MAX characters of peer text', () => {
    expect(goQuote('zzz hello\n')).toBe('"zzz hello\\n"');
    expect(goQuote('y'.repeat(5000))).toBe(`"${'y'.repeat(QUOTE_MAX)}"...`);
  });
});

describe('B1 line length', () => {
  it('an incomplete line longer than MAX_LINE is a protocol error', async () => {
    const { l, downs } = newLink();
    w(l, 'a'.repeat(MAX_LINE)); // may still end here
    expect(l.down).toBe(false);
    w(l, 'a');
    expect(l.down).toBe(true);
    expect(downs).toEqual([`invalid frame: "${'a'.repeat(QUOTE_MAX)}"... (line longer than ${MAX_LINE} bytes)`]);
    expect(await drain(l)).toBe(`0 error: ${downs[0]}\n`);
    expect((await l.read(4096, new AbortController().signal, tid)).length).toBe(0); // EOF
    expect(() => w(l, 'b\n')).toThrow(FuseError); // EPIPE: nothing more is taken in
  });

  it('64 MiB without a newline: refused at once, nothing kept', async () => {
    const { l, downs } = newLink();
    w(l, Buffer.alloc(64 << 20, 0x61));
    expect(l.down).toBe(true);
    expect(downs[0]).toMatch(/line longer than/);
    expect((await drain(l)).length).toBeLessThan(200);
  });

  it('a complete line longer than MAX_LINE is a protocol error; MAX_LINE itself is fine', async () => {
    const { l, downs } = newLink();
    const max = `1 ${'y'.repeat(MAX_LINE - 3)}\n`; // exactly MAX_LINE bytes: a bad request
    expect(max.length).toBe(MAX_LINE);
    w(l, max);
    expect(l.down).toBe(false);
    expect(await drain(l)).toBe(`1 error bad watch: not a watch request: "${'y'.repeat(QUOTE_MAX)}"...\n`);
    w(l, `3 ${'y'.repeat(MAX_LINE)}\n`);
    expect(l.down).toBe(true);
    expect(downs[0]).toMatch(/^invalid frame: "3 y+"\.\.\. \(line longer than 4096 bytes\)$/);
  });

  it('lines split across writes, several lines per write', async () => {
    const { l } = newLink();
    const req = `1 watch ${'0'.repeat(16)} -\n`;
    w(l, req.slice(0, 5));
    w(l, req.slice(5) + '3 bla\n5 wat');
    w(l, 'ch 1\n');
    expect(await drain(l)).toBe('1 ok\n3 error bad watch: not a watch request: "bla"\n5 error bad watch: expected 2 arguments, got 1\n');
  });
});

describe('B2 requests in flight', () => {
  it('MAX_INFLIGHT requests may wait; one more ends the link', () => {
    const { l, downs } = newLink(() => never);
    let s = '';
    for (let i = 0; i < MAX_INFLIGHT; i++) s += `${2 * i + 1} watch ${'0'.repeat(16)} -\n`;
    w(l, s);
    expect(l.down).toBe(false);
    expect(l.queued.inflight).toBe(MAX_INFLIGHT);
    w(l, `${2 * MAX_INFLIGHT + 1} bla\n`);
    expect(l.down).toBe(true);
    expect(downs).toEqual([`${2 * MAX_INFLIGHT + 1}: too many requests in flight (${MAX_INFLIGHT})`]);
  });

  it('a request is in flight until its reply is read; bad ones count too', async () => {
    const { l } = newLink();
    for (let round = 0; round < 3; round++) {
      let s = '';
      for (let i = 0; i < MAX_INFLIGHT; i++) s += i % 2 ? `${2 * i + 1} bla\n` : `${2 * i + 1} watch ${'0'.repeat(16)} -\n`;
      w(l, s);
      await Promise.resolve();
      expect(l.queued.inflight).toBe(MAX_INFLIGHT);
      const out = (await drain(l)).split('\n');
      expect(out.length).toBe(MAX_INFLIGHT + 1);
      for (let i = 0; i < 5; i++) await Promise.resolve(); // the reply promises settle
      expect(l.queued.inflight).toBe(0);
    }
    expect(l.down).toBe(false);
  });
});

describe('B3 outgoing queue', () => {
  it('a client that does not read: at most TX_MAX bytes queued, the rest waits, all go out in order', async () => {
    const { l } = newLink();
    const N = 5000;
    const sent: Array<Promise<void>> = [];
    for (let i = 0; i < N; i++) sent.push(l.send(BigInt(2 * i + 1), `error message number ${i}`));
    const q = l.queued;
    expect(q.bytes).toBeGreaterThanOrEqual(TX_MAX);
    expect(q.bytes).toBeLessThan(TX_MAX + 100);
    expect(q.waiting).toBeGreaterThan(0);
    let out = '';
    while (l.queued.bytes > 0) out += await drain(l);
    const lines = out.trimEnd().split('\n');
    expect(lines.length).toBe(N);
    lines.forEach((x, i) => expect(x).toBe(`${2 * i + 1} error message number ${i}`));
    await Promise.all(sent);
  });

  it('a pin that cannot be queued within its deadline times out; waiting frames are dropped at shutdown', async () => {
    const { l } = newLink();
    const sent: Array<Promise<void>> = [];
    for (let i = 0; i < 2 * (TX_MAX / 60) && l.queued.waiting === 0; i++) sent.push(l.send(BigInt(2 * i + 1), 'x'.repeat(60)));
    expect(l.queued.waiting).toBe(1); // the queue is full
    const admitted = l.queued.bytes;
    await expect(l.request(`pin ${'0'.repeat(16)} #1 @head`, 50)).rejects.toBeInstanceOf(LinkTimeoutError);
    l.shutdown('pin #1 @head: timeout', 'fatal: pin #1 @head: timeout');
    expect(l.queued.waiting).toBe(0);
    const out = await drain(l);
    await Promise.all(sent); // the admitted ones were read, the waiting ones dropped
    expect(out.length).toBe(admitted + '0 fatal: pin #1 @head: timeout\n'.length);
    expect(out.endsWith('\n0 fatal: pin #1 @head: timeout\n')).toBe(true);
    expect(out).not.toMatch(/^\d+ pin /m); // the pin itself never went out
  });
});

describe('request deadlines (one timer per link)', () => {
  /** Reply `ack` to stream s, as the client would. */
  const ack = (l: WatchLink, s: bigint) => w(l, `${s} ack\n`);
  const outcome = (p: Promise<string>) =>
    p.then(
      (r) => r,
      (e: unknown) => (e instanceof LinkTimeoutError ? 'timeout' : String(e)),
    );

  it('a later request with a shorter timeout expires at its own deadline, not the earlier one', async () => {
    const { l } = newLink();
    const long = outcome(l.request('pin a', 60_000)); // arms the link's timer for 60 s
    const t0 = Date.now();
    expect(await outcome(l.request('pin b', 30))).toBe('timeout');
    expect(Date.now() - t0).toBeLessThan(10_000); // not the 60 s of the first one
    ack(l, 2n);
    expect(await long).toBe('ack');
  });

  it('several requests past their deadline expire one at a time: a shutdown by the first fails the rest as link down', async () => {
    const downs: string[] = [];
    const { l } = newLink();
    const rs = [0, 1, 2].map(() =>
      l.request('pin x', 20).catch((e: unknown) => {
        downs.push(e instanceof LinkTimeoutError ? 'timeout' : 'down');
        if (e instanceof LinkTimeoutError) l.shutdown(e, 'fatal: timeout'); // as Isolation.pinFailed does
      }),
    );
    await Promise.all(rs);
    expect(downs).toEqual(['timeout', 'down', 'down']);
  });

  it(`seeded random requests, replies and timeouts: each settles once, as its own deadline says (seed ${SEED})`, async () => {
    const r = rng(SEED);
    for (let round = 0; round < 5; round++) {
      const { l } = newLink();
      const n = 3 + Math.floor(r() * 6);
      const timeouts = Array.from({ length: n }, () => (r() < 0.5 ? 20 + Math.floor(r() * 40) : 60_000));
      const reply = timeouts.map((t) => t === 60_000 || r() < 0.3); // replied before its deadline
      const got = timeouts.map((t) => outcome(l.request('pin y', t)));
      await new Promise((res) => setTimeout(res, 5));
      reply.forEach((yes, i) => yes && ack(l, BigInt(2 * (i + 1))));
      const want = reply.map((yes) => (yes ? 'ack' : 'timeout'));
      expect(await Promise.all(got), `round ${round}: timeouts ${timeouts}`).toEqual(want);
      expect(l.down).toBe(false);
    }
  });
});

describe('the client process', () => {
  const noHandlers: LinkHandlers = { request: () => Promise.resolve(), down: () => {} };

  it('an OPEN by a thread that is gone, or not visible in our pid namespace (pid 0), is refused', async () => {
    const p = spawn('sleep', ['600'], { stdio: 'ignore' });
    children.push(p);
    p.kill('SIGKILL');
    await exitOf(p);
    for (const tid of [p.pid!, 0]) {
      let err: unknown;
      try {
        links.push(WatchLink.open(7, tid, noHandlers));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(FuseError);
      expect((err as FuseError).errno).toBe(errno.ESRCH);
    }
  });

  it('is taken over by the process using the link once the opener has exited: on WRITE, and on a READ answered after waiting', async () => {
    for (const how of ['write', 'read'] as const) {
      const opener = spawn('sleep', ['600'], { stdio: 'ignore' });
      children.push(opener);
      const l = new WatchLink(1, ProcessRef.open(opener.pid!), noHandlers);
      links.push(l);
      expect(l.proc!.pid).toBe(opener.pid);
      let reading: Promise<Uint8Array> | undefined;
      if (how === 'read') reading = l.read(4096, new AbortController().signal, tid); // waits
      w(l, '1 watch 0000000000000001 -\n'); // opener alive: no takeover
      expect(l.proc!.pid).toBe(opener.pid);
      opener.kill('SIGKILL');
      await exitOf(opener);
      if (how === 'write') w(l, '3 watch 0000000000000001 -\n');
      else {
        void l.send(2n, 'pin 0000000000000001 #0 @head');
        await reading;
      }
      expect(l.proc!.pid).toBe(process.pid);
    }
  });
});
