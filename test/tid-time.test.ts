// Times printed from tids agree with ZODB: tidToString is str(persistent.TimeStamp) exactly —
// the exact seconds b·60/2³² rounded to microseconds, ties to even, 60.000000 kept — and the
// times we hand out as mtime (tidToEpochMicros, tidToTimespec, tidToDate) use the same rounding.
//  1. a table computed once by real ZODB (persistent's C TimeStamp), edge cases included;
//  2. a seeded random sample checked against the venv's ZODB in one subprocess call.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { tidMicroseconds, tidToDate, tidToEpochMicros, tidToString, tidToTimespec } from '../src/zodb/ids.js';
import { python, pythonEnv } from './helpers/python.js';

// tid → str(TimeStamp(p64(tid))), by persistent 's TimeStamp (C implementation).
// Rows 1-17: one minute, chosen seconds fields b: 0, µs boundaries, exact ties b = odd·2²³
// (…0.1171875 → .117188, …0.3515625 → .351562: half to even), b near 2³² (60.000000).
// Then random tids of 1998-2017, Feb 30/31 (31-day months), and the ends of the range.
const TABLE: Array<[string, string]> = [
  ['03e0000a00000000', '2021-05-12 00:42:00.000000'],
  ['03e0000a00000001', '2021-05-12 00:42:00.000000'],
  ['03e0000a00000002', '2021-05-12 00:42:00.000000'],
  ['03e0000a00000047', '2021-05-12 00:42:00.000001'],
  ['03e0000a00000048', '2021-05-12 00:42:00.000001'],
  ['03e0000a00800000', '2021-05-12 00:42:00.117188'],
  ['03e0000a01800000', '2021-05-12 00:42:00.351562'],
  ['03e0000a02800000', '2021-05-12 00:42:00.585938'],
  ['03e0000aff800000', '2021-05-12 00:42:59.882812'],
  ['03e0000a00800001', '2021-05-12 00:42:00.117188'],
  ['03e0000a007fffff', '2021-05-12 00:42:00.117187'],
  ['03e0000a00bc614e', '2021-05-12 00:42:00.172467'],
  ['03e0000a80000000', '2021-05-12 00:42:30.000000'],
  ['03e0000afffffff0', '2021-05-12 00:42:60.000000'],
  ['03e0000affffffbc', '2021-05-12 00:42:59.999999'],
  ['03e0000affffffbb', '2021-05-12 00:42:59.999999'],
  ['03e0000affffffff', '2021-05-12 00:42:60.000000'],
  ['03baa978983b6369', '2016-10-17 17:28:35.679372'],
  ['034f526311d5d724', '2003-08-30 13:23:04.180152'],
  ['036d044bc1f49414', '2007-04-18 00:11:45.458293'],
  ['03c012f8a7865584', '2017-06-16 00:56:39.263611'],
  ['0364441c516b64ae', '2006-03-22 18:04:19.082696'],
  ['032ba9c8cf2ed1df', '1999-04-19 16:40:48.558490'],
  ['0326363fe6a11024', '1998-08-19 14:23:54.053708'],
  ['03322bd5635917d4', '2000-02-05 21:09:23.284692'],
  ['03f6e2933ec5c2e3', '2024-02-30 13:07:14.712306'],
  ['03eebbb305fe0288', '2023-02-31 13:07:01.404428'],
  ['00000000744ad6f8', '1900-01-01 00:00:27.256018'],
  ['00000001a222643e', '1900-01-01 00:01:38.000236'],
  ['00082c7fd194910b', '1900-12-31 23:59:49.120392'],
  ['00082c804ee14c1f', '1901-01-01 00:00:18.487516'],
  ['ffffffff0f0f15fa', '9917-10-14 04:15:03.529437'],
];

/** Reference µs since the epoch, exactly: calendar.timegm of the minute + round(Fraction(b·60, 2³²)·10⁶). */
const PY_REF = String.raw`
import sys, json, struct, calendar
from fractions import Fraction
from persistent.timestamp import TimeStamp
out = []
for h in json.load(sys.stdin):
    t = int(h, 16)
    ts = TimeStamp(struct.pack('>Q', t))
    a, b = t >> 32, t & 0xffffffff
    minute = calendar.timegm((ts.year(), ts.month(), 1, ts.hour(), ts.minute(), 0)) + (ts.day() - 1) * 86400
    out.append([str(ts), minute * 10**6 + round(Fraction(b * 60, 2**32) * 10**6)])
json.dump(out, sys.stdout)
`;

/** mulberry32: a small seeded PRNG. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const micros = (s: string) => {
  // "YYYY-MM-DD HH:MM:SS.ffffff" → µs since the epoch (Date.UTC rolls Feb 30 and :60 over)
  const m = /^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})$/.exec(s)!;
  const n = m.slice(1).map(Number);
  return Date.UTC(n[0]!, n[1]! - 1, n[2]!, n[3]!, n[4]!, n[5]!) * 1000 + n[6]!;
};

describe('tid → time as ZODB TimeStamp', () => {
  it('table computed by real ZODB: tidToString = str(TimeStamp)', () => {
    for (const [h, want] of TABLE) expect(tidToString(BigInt('0x' + h)), h).toBe(want);
  });

  it('mtime forms agree with the printed time (same µs rounding)', () => {
    for (const [h, want] of TABLE) {
      const tid = BigInt('0x' + h);
      const us = tidToEpochMicros(tid);
      expect(us, h).toBe(micros(want));
      const ts = tidToTimespec(tid);
      expect(ts.sec * 1e6 + ts.nsec / 1000, h).toBe(us);
      expect(ts.nsec % 1000).toBe(0);
      expect(ts.nsec).toBeLessThan(1e9);
      expect(tidToDate(tid).getTime(), h).toBe(Math.floor(us / 1000));
      expect(tidMicroseconds(tid)).toBe(Number(want.slice(-9, -7)) * 1e6 + Number(want.slice(-6)));
    }
  });

  it('300 seeded random tids against the venv ZODB (one subprocess)', () => {
    const r = rng(0x7157);
    const u32 = () => Math.floor(r() * 4294967296);
    const tids: bigint[] = [];
    for (let i = 0; i < 300; i++) {
      // mostly realistic tids (a of 1990-2040), some over the whole range; b always random
      const a = i % 5 === 0 ? u32() : 0x0300_0000 + Math.floor(r() * 0x00f0_0000);
      const b = i % 7 === 0 ? ((u32() >>> 23) | 1) * 2 ** 23 : u32(); // some exact ties
      tids.push((BigInt(a) << 32n) | BigInt(b));
    }
    const p = spawnSync(python(), ['-c', PY_REF], {
      input: JSON.stringify(tids.map((t) => t.toString(16))),
      env: pythonEnv(),
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(p.status, p.stderr).toBe(0);
    const ref = JSON.parse(p.stdout) as Array<[string, number]>;
    expect(ref).toHaveLength(tids.length);
    let floorDiffers = 0;
    tids.forEach((tid, i) => {
      const [str, us] = ref[i]!;
      const h = tid.toString(16).padStart(16, '0');
      expect(tidToString(tid), h).toBe(str);
      expect(tidToEpochMicros(tid), h).toBe(us);
      // how many of them a truncating conversion would get wrong: the sample tests rounding
      if (Number(((tid & 0xffffffffn) * 60_000_000n) >> 32n) !== tidMicroseconds(tid)) floorDiffers++;
    });
    expect(floorDiffers).toBeGreaterThan(100);
  });
});
