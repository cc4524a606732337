// wcfs command line.
//
//   wcfs zodb info <zurl>                          database summary and its ZBigFiles
//   wcfs zodb cat  <zurl> <foid> <blk> [--at tid]  raw bytes of one block to stdout
//   wcfs zodb demo <path>                          create a demo database with our writer
//
// Every failure prints "wcfs: <message>" on stderr and exits with code 1; messages carry
// context (which file, which oid, which revision).

import { Command, CommanderError } from 'commander';
import { zodbCat, zodbDemo, zodbInfo } from './zodb.js';

export async function main(argv: string[]): Promise<void> {
  const program = new Command();
  program
    .name('wcfs')
    .description('isolating FUSE file cache for ZODB ZBigFiles')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  const zodb = program.command('zodb').description('inspect and create ZODB databases (FileStorage)');
  zodb
    .command('info')
    .description('head revision, transaction count and the ZBigFiles of a database')
    .argument('<zurl>', 'database URL: file:///path/data.fs or a path')
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
    .description('create a demo FileStorage with two ZBigFiles and a short history')
    .argument('<path>', 'path of the new data.fs (must not exist)')
    .action(async (p: string) => zodbDemo(p));

  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode;
      return;
    }
    process.stderr.write(`wcfs: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}
