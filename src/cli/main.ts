// wcfs command line.
//
//   wcfs zodb info <zurl>                          database summary and its ZBigFiles
//   wcfs zodb cat  <zurl> <foid> <blk> [--at tid]  raw bytes of one block to stdout
//   wcfs zodb demo <path|zeo://…>                  create a demo database with our writer
//   wcfs serve [opts] <zurl> [<mountpoint>]        serve a database (foreground)
//   wcfs stop <zurl|mountpoint>                    robust stop
//   wcfs status <zurl|mountpoint>                  health check (exit 1 on failure)
//   wcfs [Go-style flags] <zurl> <mntpt>           upstream's command line (src/cli/upstream.ts)
//   wcfs serve [Go-style flags] <zurl> [<mntpt>]   the same
//
// Every failure prints "wcfs: <message>" on stderr and exits with code 1; messages carry
// context (which file, which oid, which revision).

import { Command, CommanderError } from 'commander';
import { say, writeStderr } from '../util/log.js';
import { serve, statusCmd, stopCmd } from './serve.js';
import { zodbCat, zodbDemo, zodbInfo } from './zodb.js';
import { isUpstreamArgv, upstreamMain } from './upstream.js';
import { PROBE_CMD, runProbe } from '../control/control.js';

export async function main(argv: string[]): Promise<void> {
  const args = argv.slice(2);
  if (args[0] === PROBE_CMD) return runProbe(args.slice(1)); // status's probes in build/wcfs (control.ts 6)
  const program = buildProgram();
  if (isUpstreamArgv(args, serveOptionFlags(program))) {
    try {
      await upstreamMain(args);
    } catch (e) {
      say((e as Error).message);
      process.exitCode = 1;
    }
    return;
  }
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode;
      return;
    }
    say((e as Error).message);
    process.exitCode = 1;
  }
}

/** The flags our `wcfs serve` takes (with -h/--help): any other makes a command line upstream's. */
export function serveOptionFlags(program: Command = buildProgram()): Set<string> {
  const serve = program.commands.find((c) => c.name() === 'serve')!;
  const flags = new Set(['--help', '-h']);
  for (const o of serve.options) for (const f of [o.long, o.short]) if (f) flags.add(f);
  return flags;
}

/** Our CLI (commander). */
export function buildProgram(): Command {
  const program = new Command();
  program.name('wcfs').description('isolating FUSE file cache for ZODB ZBigFiles').exitOverride().configureOutput({ writeErr: writeStderr });

  const zodb = program.command('zodb').description('inspect and create ZODB databases (FileStorage)');
  zodb
    .command('info')
    .description('head revision, transaction count and the ZBigFiles of a database')
    .argument('<zurl>', 'database URL: file:///path/data.fs, a path, or zeo://host:port')
    .option('--json', 'machine-readable output')
    .action(async (zurl: string, opts: { json?: boolean }) => zodbInfo(zurl, opts));
  zodb
    .command('cat')
    .description('write the raw bytes of block <blk> of ZBigFile <foid> to stdout')
    .argument('<zurl>', 'database URL')
    .argument('<foid>', 'ZBigFile oid (hex)')
    .argument('<blk>', 'block number (decimal)')
    .option('--at <tid>', 'revision (hex tid); default: head')
    .action(async (zurl: string, foid: string, blk: string, opts: { at?: string }) => zodbCat(zurl, foid, blk, opts));
  zodb
    .command('demo')
    .description('create a demo database with two ZBigFiles and a short history')
    .argument('<zurl>', 'path of the new data.fs (must not exist), or zeo://… of an empty database')
    .action(async (p: string) => zodbDemo(p));

  program
    .command('serve')
    .description('serve the ZBigFiles of a database on a FUSE mount, until unmounted')
    .argument('<zurl>', 'database URL: file:///path/data.fs, a path, or zeo://host:port')
    .argument('[mountpoint]', 'default: /dev/shm/wcfs/<sha1(zurl)>')
    .option('--pintimeout <seconds>', 'how long a client may take to answer a pin', '30')
    .option('--debug', 'trace to stderr (DEBUG=wcfs:*) and expose .wcfs/debug/ (zhead)')
    .option('--auto-exit', 'exit when no file has been open for a while (joined servers)')
    .option('--poll-ms <ms>', 'storage change poll interval (inotify wakes it earlier)')
    .option('--gc-interval <seconds>', 'drop @<rev>/ views unused for this long', '10')
    .option('--untrack-interval <seconds>', 'forget the history of head blocks no longer in the page cache this often', '60')
    .option('--stats-window <seconds>', 'the pin round-trip quantiles in .wcfs/stats cover pins acked this long ago at most', '60')
    .option('--share-with <group:NAME>', 'let members of group NAME (or group:GID) use the mount (allow_other; see README)')
    .option('--authkeyfile <path>', 'only processes that authenticate with the key in this file may open files (.wcfs/auth)')
    .action(async (zurl: string, mnt: string | undefined, opts) => serve(zurl, mnt, opts));
  program
    .command('stop')
    .description('stop a server: unmount, then SIGTERM, FUSE abort, SIGKILL as needed')
    .argument('<target>', 'zurl or mountpoint')
    .action(async (t: string) => stopCmd(t));
  program
    .command('status')
    .description('check a server (each probe in a child process with a timeout)')
    .argument('<target>', 'zurl or mountpoint')
    .action(async (t: string) => statusCmd(t));
  return program;
}
