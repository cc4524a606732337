// Upstream's command line (src/cli/goflags.ts, src/cli/upstream.ts): Go's flag syntax in every
// form, Go durations, the mapping onto our serve options, and which front-end a command line
// goes to. Pure functions: no process, no mount.
import { describe, expect, it } from 'vitest';
import { parseGoDuration, parseGoFlags, type FlagDef } from '../src/cli/goflags.js';
import { isUpstreamArgv, parseUpstreamArgv } from '../src/cli/upstream.js';
import { serveOptionFlags } from '../src/cli/main.js';

const OURS = serveOptionFlags();

const T: Record<string, FlagDef> = {
  b: { kind: 'bool', usage: '' },
  s: { kind: 'string', usage: '' },
  d: { kind: 'duration', usage: '' },
  n: { kind: 'int', usage: '' },
};

describe('parseGoFlags: Go flag package syntax', () => {
  const ok: Array<[string[], Record<string, unknown>, string[]]> = [
    [['-b', 'x'], { b: true }, ['x']],
    [['--b', 'x'], { b: true }, ['x']],
    [['-b=false', 'x'], { b: false }, ['x']],
    [['-b=0'], { b: false }, []],
    [['-b=T', '-b=TRUE'], { b: true }, []],
    [['--b=f'], { b: false }, []],
    [['-b', 'true'], { b: true }, ['true']], // a bool never takes the next argument
    [['-s', 'v', 'x'], { s: 'v' }, ['x']],
    [['-s=v'], { s: 'v' }, []],
    [['--s', 'v'], { s: 'v' }, []],
    [['-s='], { s: '' }, []],
    [['-s', '-b'], { s: '-b' }, []], // a non-bool takes the next argument whatever it is
    [['-s=a=b'], { s: 'a=b' }, []],
    [['-d', '30s'], { d: 30e9 }, []],
    [['-d=100ms'], { d: 100e6 }, []],
    [['--d', '1m'], { d: 60e9 }, []],
    [['-n=3', '-n', '-1'], { n: -1 }, []], // the last one wins
    [['--', '-b'], {}, ['-b']],
    [['x', '-b'], {}, ['x', '-b']], // the first positional ends the flags
    [['-', '-b'], {}, ['-', '-b']],
    [[], {}, []],
  ];
  for (const [args, flags, rest] of ok)
    it(`${JSON.stringify(args)} → ${JSON.stringify(flags)} ${JSON.stringify(rest)}`, () => {
      const r = parseGoFlags(T, args);
      expect(r.kind).toBe('ok');
      if (r.kind !== 'ok') return;
      expect(Object.fromEntries(r.flags)).toEqual(flags);
      expect(r.args).toEqual(rest);
    });

  const bad: Array<[string[], string]> = [
    [['-x'], 'flag provided but not defined: -x'],
    [['--x=1'], 'flag provided but not defined: -x'],
    [['-s'], 'flag needs an argument: -s'],
    [['-d'], 'flag needs an argument: -d'],
    [['-d', '30'], 'invalid value "30" for flag -d: parse error'],
    [['-d=abc'], 'invalid value "abc" for flag -d: parse error'],
    [['-n=x'], 'invalid value "x" for flag -n: parse error'],
    [['-b=yes'], 'invalid boolean value "yes" for -b: parse error'],
    [['---b'], 'bad flag syntax: ---b'],
    [['-=b'], 'bad flag syntax: -=b'],
  ];
  for (const [args, message] of bad) it(`${JSON.stringify(args)} → ${message}`, () => expect(parseGoFlags(T, args)).toEqual({ kind: 'error', message }));

  for (const h of ['-h', '-help', '--help', '--h']) it(`${h} → help`, () => expect(parseGoFlags(T, ['-b', h, 'x'])).toEqual({ kind: 'help' }));
  it('-h defined by the table is a flag, not help', () => {
    const r = parseGoFlags({ h: { kind: 'bool', usage: '' } }, ['-h']);
    expect(r.kind === 'ok' && r.flags.get('h')).toBe(true);
  });
});

describe('parseGoDuration: time.ParseDuration', () => {
  const cases: Array<[string, number | undefined]> = [
    ['30s', 30e9],
    ['100ms', 100e6],
    ['1m', 60e9],
    ['1m30s', 90e9],
    ['1h2m3s4ms5us6ns', 3723004005006],
    ['1.5h', 5400e9],
    ['.5s', 0.5e9],
    ['1.s', 1e9],
    ['10µs', 10e3],
    ['10μs', 10e3],
    ['0', 0],
    ['-2s', -2e9],
    ['+2s', 2e9],
    ['', undefined],
    ['30', undefined], // missing unit
    ['s', undefined],
    ['.s', undefined],
    ['1m30', undefined],
    ['3d', undefined], // unknown unit
    ['1 s', undefined],
    ['-', undefined],
  ];
  for (const [s, ns] of cases) it(`${JSON.stringify(s)} → ${ns}`, () => expect(parseGoDuration(s)).toBe(ns));
});

describe("parseUpstreamArgv: upstream's command line → our serve", () => {
  const Z = 'file:///d/data.fs';
  const M = '/dev/shm/wcfs/abc';
  const cases: Array<[string, string[], { mnt: string | undefined; opts: Record<string, unknown>; ns?: string }]> = [
    ['join (wcfs/__init__.py _start)', ['-autoexit', Z, M], { mnt: M, opts: { autoExit: true } }],
    ['no flags', [Z, M], { mnt: M, opts: {} }],
    ['serve first', ['serve', '-autoexit', Z, M], { mnt: M, opts: { autoExit: true } }],
    ['flags before serve', ['-autoexit', 'serve', Z, M], { mnt: M, opts: { autoExit: true } }],
    ['serve, default mountpoint', ['serve', '-autoexit', Z], { mnt: undefined, opts: { autoExit: true } }],
    ['-pintimeout=30s', ['-pintimeout=30s', Z, M], { mnt: M, opts: { pintimeout: '30' } }],
    ['-pintimeout 100ms', ['-pintimeout', '100ms', Z, M], { mnt: M, opts: { pintimeout: '0.1' } }],
    ['--pintimeout=1m', ['--pintimeout=1m', Z, M], { mnt: M, opts: { pintimeout: '60' } }],
    ['-debug', ['-debug', Z, M], { mnt: M, opts: { debugFiles: true } }],
    ['-debug=false', ['-debug=false', Z, M], { mnt: M, opts: {} }],
    ['-trace.fuse', ['-trace.fuse', Z, M], { mnt: M, opts: {}, ns: 'wcfs:fuse' }],
    ['-d (old -trace.fuse)', ['-d', Z, M], { mnt: M, opts: {}, ns: 'wcfs:fuse' }],
    ['-authkeyfile=PATH', ['-authkeyfile=/k/key', Z, M], { mnt: M, opts: { authkeyfile: '/k/key' } }],
    ['-authkeyfile PATH', ['-authkeyfile', '/k/key', Z, M], { mnt: M, opts: { authkeyfile: '/k/key' } }],
    ['upstream test suite: -debug -logtostderr', ['-debug', '-logtostderr', Z, M], { mnt: M, opts: { debugFiles: true } }],
    [
      'glog: ignored',
      ['-alsologtostderr', '-stderrthreshold=ERROR', '-log_dir', '/tmp', '-vmodule=x=2', '-log_backtrace_at=a.go:1', Z, M],
      { mnt: M, opts: {} },
    ],
    ['-v=1: commit traces', ['-v=1', Z, M], { mnt: M, opts: {}, ns: 'wcfs:server*' }],
    ['-v 2: all traces but FUSE', ['-v', '2', Z, M], { mnt: M, opts: {}, ns: 'wcfs:*,-wcfs:fuse' }],
    ['-v=2 -trace.fuse: all', ['-v=2', '-trace.fuse', Z, M], { mnt: M, opts: {}, ns: 'wcfs:*' }],
    [
      '$WENDELIN_CORE_WCFS_OPTIONS then -autoexit',
      ['-pintimeout', '5s', '-debug', '-autoexit', Z, M],
      { mnt: M, opts: { pintimeout: '5', debugFiles: true, autoExit: true } },
    ],
  ];
  for (const [what, args, want] of cases)
    it(`${what}: ${args.join(' ')}`, () => {
      expect(isUpstreamArgv(args, OURS)).toBe(true);
      const r = parseUpstreamArgv(args);
      expect(r.kind).toBe('serve');
      if (r.kind !== 'serve') return;
      expect(r.serve.zurl).toBe(Z);
      expect(r.serve.mountpoint).toBe(want.mnt);
      expect(r.serve.opts).toEqual(want.opts);
      expect(r.serve.debugNamespaces).toBe(want.ns ?? '');
    });

  const usage: Array<[string, string[], RegExp]> = [
    ['unknown flag', ['-bogus', Z, M], /^flag provided but not defined: -bogus\nUsage: wcfs \[OPTIONS\] zurl mntpt\n/],
    ['bad duration', ['-pintimeout=30', Z, M], /^invalid value "30" for flag -pintimeout: parse error\n/],
    ['missing value', ['-autoexit', '-pintimeout'], /^flag needs an argument: -pintimeout\n/],
    ['one argument', ['-autoexit', Z], /^Usage: wcfs \[OPTIONS\] zurl mntpt\n/],
    ['three arguments', ['-autoexit', Z, M, 'x'], /^Usage: /],
    ['a flag after the arguments', [Z, '-autoexit', M], /^Usage: /],
  ];
  for (const [what, args, re] of usage)
    it(`${what} → usage, exit 2`, () => {
      const r = parseUpstreamArgv(args);
      expect(r.kind).toBe('usage');
      expect(r.kind === 'usage' && r.text).toMatch(re);
    });
  it('-h → help (exit 0) with every flag', () => {
    const r = parseUpstreamArgv(['-autoexit', '-h']);
    expect(r.kind).toBe('help');
    for (const f of ['-autoexit', '-pintimeout duration', '-debug', '-trace.fuse', '-authkeyfile string', '-v value', '-logtostderr'])
      expect(r.kind === 'help' && r.text).toContain(`  ${f}\n`);
  });
});

describe('isUpstreamArgv: which front-end', () => {
  const ours: string[][] = [
    [],
    ['--help'],
    ['-h'],
    ['serve', 'file:///d/data.fs'],
    ['serve', 'file:///d/data.fs', '/mnt'],
    ['serve', '--pintimeout', '3', '--debug', '--auto-exit', '--poll-ms=10', '--gc-interval', '1', '--untrack-interval', '1', 'x', '/mnt'],
    ['serve', '--share-with', 'group:wcfs', 'x', '/mnt'], // an option added after the front-end was written: derived, not listed
    ['serve', '-h'],
    ['serve', 'x', '--', '-autoexit'],
    ['stop', '/mnt'],
    ['status', 'x'],
    ['zodb', 'info', 'x'],
    ['zodb', 'cat', 'x', '1', '-3'],
    ['help', 'serve'],
    ['statu', 'x'], // a mistyped command: commander says so
  ];
  for (const a of ours) it(`ours: ${a.join(' ')}`, () => expect(isUpstreamArgv(a, OURS)).toBe(false));
  const theirs: string[][] = [
    ['-autoexit', 'z', 'm'],
    ['file:///d/data.fs', 'm'],
    ['zeo://h:1', 'm'],
    ['/d/data.fs', 'm'],
    ['./data.fs', 'm'],
    ['serve', '-autoexit', 'z', 'm'],
    ['serve', '--autoexit', 'z', 'm'],
    ['serve', 'z', 'm', '-v=1'],
    ['-help'],
    ['--trace.fuse', 'z', 'm'],
  ];
  for (const a of theirs) it(`upstream's: ${a.join(' ')}`, () => expect(isUpstreamArgv(a, OURS)).toBe(true));
});
