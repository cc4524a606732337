// Upstream's command line: wendelin.core starts its server as `wcfs [flags] <zurl> <mntpt>`
// (wcfs/__init__.py: `$WENDELIN_CORE_WCFS_OPTIONS` flags, then `-autoexit` when joining) with
// Go-style flags (wcfs-server.md §4.1). This front-end accepts exactly that, and also the same
// after `serve` (`wcfs serve [flags] <zurl> [<mntpt>]`), and maps it onto our `wcfs serve`
// (src/cli/serve.ts). Our own CLI (src/cli/main.ts) stays as it is; isUpstreamArgv decides
// which of the two a command line is for.
//
// Flags (Go spellings, parsed by goflags.ts):
//   -autoexit               → autoExit
//   -pintimeout <duration>  → pin timeout (Go duration: 30s, 100ms, 1m30s) [30s]
//   -debug                  → debugFiles: .wcfs/debug/ (upstream: "debugging features")
//   -trace.fuse (-d)        → the wcfs:fuse trace namespace (every FUSE request)
//   -authkeyfile <path>     → authkeyfile (multi-user authentication, wcfs-server.md §7)
//   glog's -v=N             → trace namespaces: 1 commits (wcfs:server*), ≥2 all but wcfs:fuse
//   glog's -logtostderr, -alsologtostderr, -stderrthreshold, -log_dir, -vmodule,
//   -log_backtrace_at       → accepted and ignored: we always log to stderr

import createDebug from 'debug';
import { goFlagsUsage, parseGoFlags, type FlagDef } from './goflags.js';
import { serve, type ServeOptions } from './serve.js';

/** Upstream's flag set (wcfs.go main), plus the glog flags its launcher may pass. */
export const UPSTREAM_FLAGS: Readonly<Record<string, FlagDef>> = {
  autoexit: { kind: 'bool', usage: 'automatically stop service when there is no client activity' },
  pintimeout: { kind: 'duration', usage: 'clients are killed if they do not handle pin notification in pintimeout time', dflt: '30s' },
  debug: { kind: 'bool', usage: 'enable debugging features (.wcfs/debug/)' },
  'trace.fuse': { kind: 'bool', usage: 'trace FUSE exchange (debug namespace wcfs:fuse)' },
  d: { kind: 'bool', usage: 'old name of -trace.fuse' },
  authkeyfile: { kind: 'string', usage: 'file with the key clients must present on .wcfs/auth' },
  // glog
  v: { kind: 'int', usage: 'log level for V logs: 1 commit trace, 2 debug traces' },
  logtostderr: { kind: 'bool', usage: 'log to standard error instead of files (always so here: accepted, ignored)' },
  alsologtostderr: { kind: 'bool', usage: 'log to standard error as well as files (accepted, ignored)' },
  stderrthreshold: { kind: 'string', usage: 'logs at or above this threshold go to stderr (accepted, ignored)' },
  log_dir: { kind: 'string', usage: 'if non-empty, write log files in this directory (accepted, ignored)' },
  vmodule: { kind: 'string', usage: 'comma-separated list of pattern=N settings for file-filtered logging (accepted, ignored)' },
  log_backtrace_at: { kind: 'string', usage: 'when logging hits line file:N, emit a stack trace (accepted, ignored)' },
};

const OUR_COMMANDS = new Set(['serve', 'stop', 'status', 'zodb', 'help']);

/**
 * Whether args (argv after the program) are for upstream's front-end:
 *   - flags first: `-autoexit …`, `--pintimeout=1m …` (anything but -h / --help);
 *   - two arguments, the first a URL or a path: `<zurl> <mntpt>`;
 *   - `serve` with an option our `wcfs serve` does not have (ourServeOpts: main.ts
 *     serveOptionFlags, from the commander definition), up to `--`: a single-dash long
 *     flag (`-autoexit`, `-v=1`, `-pintimeout`) or a double-dash one that is not ours
 *     (`--autoexit`, `--trace.fuse`).
 */
export function isUpstreamArgv(args: readonly string[], ourServeOpts: ReadonlySet<string>): boolean {
  const a0 = args[0];
  if (a0 === undefined) return false;
  if (a0.startsWith('-') && a0 !== '-h' && a0 !== '--help') return true;
  if (args.length === 2 && !OUR_COMMANDS.has(a0) && /^(?:[a-z][a-z0-9+.-]*:|\.{0,2}\/)/i.test(a0)) return true; // a URL or a path, not a mistyped command
  if (a0 !== 'serve') return false;
  for (const a of args.slice(1)) {
    if (a === '--') break;
    if (!a.startsWith('-') || a === '-') continue;
    if (!ourServeOpts.has(a.replace(/=.*$/s, ''))) return true;
  }
  return false;
}

export interface UpstreamServe {
  zurl: string;
  /** undefined: the default mountpoint of zurl (`wcfs serve [flags] <zurl>`). */
  mountpoint: string | undefined;
  opts: ServeOptions;
  /** Debug namespaces to enable ('' = none). */
  debugNamespaces: string;
}

export type UpstreamParse = { kind: 'serve'; serve: UpstreamServe } | { kind: 'help'; text: string } | { kind: 'usage'; text: string };

export const upstreamUsage = (prog: string): string =>
  `Usage: ${prog} [OPTIONS] zurl mntpt\n       ${prog} serve [OPTIONS] zurl [mntpt]\n` +
  `(Go-style flags, as wendelin.core passes them; \`${prog} --help\` for the rest of the wcfs command)\n` +
  goFlagsUsage(UPSTREAM_FLAGS);

/** Pure: the command line (after the program) → what to serve, or what to print (exit 0 help, 2 usage). */
export function parseUpstreamArgv(args: readonly string[], prog = 'wcfs'): UpstreamParse {
  let rest = args;
  let viaServe = false;
  if (rest[0] === 'serve') {
    viaServe = true;
    rest = rest.slice(1);
  }
  const r = parseGoFlags(UPSTREAM_FLAGS, rest);
  if (r.kind === 'help') return { kind: 'help', text: upstreamUsage(prog) };
  if (r.kind === 'error') return { kind: 'usage', text: `${r.message}\n${upstreamUsage(prog)}` };
  let pos = r.args;
  if (!viaServe && pos[0] === 'serve' && pos.length >= 2) {
    viaServe = true; // flags before `serve`
    pos = pos.slice(1);
  }
  if (!(pos.length === 2 || (viaServe && pos.length === 1))) return { kind: 'usage', text: upstreamUsage(prog) };
  const f = r.flags;
  const opts: ServeOptions = {};
  if (f.get('autoexit') === true) opts.autoExit = true;
  const pt = f.get('pintimeout');
  if (typeof pt === 'number') opts.pintimeout = String(pt / 1e9); // seconds; serve() refuses ≤ 0
  if (f.get('debug') === true) opts.debugFiles = true;
  const key = f.get('authkeyfile');
  if (typeof key === 'string') opts.authkeyfile = key;
  const ns: string[] = [];
  const v = f.get('v');
  const traceFuse = f.get('trace.fuse') === true || f.get('d') === true;
  if (typeof v === 'number' && v >= 2) ns.push('wcfs:*', ...(traceFuse ? [] : ['-wcfs:fuse']));
  else if (typeof v === 'number' && v >= 1) ns.push('wcfs:server*');
  if (traceFuse && !(typeof v === 'number' && v >= 2)) ns.push('wcfs:fuse');
  return { kind: 'serve', serve: { zurl: pos[0]!, mountpoint: pos[1], opts, debugNamespaces: ns.join(',') } };
}

/** Run upstream's front-end: serve in the foreground, or print help/usage and exit 0/2. */
export async function upstreamMain(args: readonly string[]): Promise<void> {
  const r = parseUpstreamArgv(args);
  if (r.kind !== 'serve') {
    process.stderr.write(r.text);
    process.exit(r.kind === 'help' ? 0 : 2);
  }
  const s = r.serve;
  const namespaces = [s.debugNamespaces, process.env.DEBUG].filter(Boolean).join(',');
  if (namespaces) createDebug.enable(namespaces);
  await serve(s.zurl, s.mountpoint, s.opts);
}
