// The test-database switch (issue 10; upstream's WENDELIN_CORE_TEST_DB): where the server,
// isolation and client suites keep their databases.
//
//   WCFS_TEST_DB=fs1          (default) the FileStorage file itself: wcfs serves its path
//   WCFS_TEST_DB=zeo          a real runzeo (pickle encoding, Z5) over that file on 127.0.0.1
//   WCFS_TEST_DB=zeo-msgpack  the same with the msgpack encoding (M5)
//
// Owns: TEST_DB (the parsed switch) and liveDb (one database made reachable that way).
//
// Invariants:
//   - under zeo* every writer and every server goes through the ZEO server (a FileStorage
//     written behind runzeo's back is invisible to it until it restarts): tests take the
//     zurl from liveDb, never the file path;
//   - a fixture is served in place, read-only (runzeo's read-only config writes nothing next
//     to it); a writable database is the test's own copy or new file;
//   - close() stops what liveDb started; stopAllZeo (helpers/zeo.ts) is the backstop.
import { readFileSync } from 'node:fs';
import { copyInto } from './wcfs.js';
import { startZeo, type ZeoServer } from './zeo.js';

export type TestDbKind = 'fs1' | 'zeo' | 'zeo-msgpack';

function parseKind(v: string | undefined): TestDbKind {
  const k = v === undefined || v === '' ? 'fs1' : v;
  if (k !== 'fs1' && k !== 'zeo' && k !== 'zeo-msgpack') throw new Error(`WCFS_TEST_DB=${JSON.stringify(v)}: want fs1, zeo or zeo-msgpack`);
  return k;
}

export const TEST_DB: TestDbKind = parseKind(process.env.WCFS_TEST_DB);

export interface LiveDb {
  /** What writers open and wcfs serves: the path (fs1) or zeo://127.0.0.1:PORT. */
  readonly zurl: string;
  /** The runzeo in front of the file (zeo kinds only). */
  readonly zeo?: ZeoServer;
  close(): Promise<void>;
}

/** Make the FileStorage at fsPath reachable as WCFS_TEST_DB says (zeo: a new one is created). */
export async function liveDb(fsPath: string, opts: { readOnly?: boolean; kind?: TestDbKind } = {}): Promise<LiveDb> {
  const kind = opts.kind ?? TEST_DB;
  if (kind === 'fs1') return { zurl: fsPath, close: async () => {} };
  const zeo = await startZeo({ fsPath, encoding: kind === 'zeo' ? 'pickle' : 'msgpack', readOnly: opts.readOnly });
  return { zurl: zeo.zurl, zeo, close: () => zeo.stop() };
}

/**
 * A fixture database, read-only, as WCFS_TEST_DB says: fs1 → a copy in dir (the fs1 tests'
 * habit); zeo* → a read-only runzeo over the fixture in place (it writes nothing there).
 */
export async function fixtureDb(fixture: string, dir: string): Promise<LiveDb> {
  if (TEST_DB === 'fs1') return { zurl: copyInto(dir, fixture), close: async () => {} };
  return liveDb(fixture, { readOnly: true });
}

/** Whether the backend can open this FileStorage: Python 3's FileStorage (runzeo) refuses py2's FS21. */
export function servable(fixture: string): boolean {
  if (TEST_DB === 'fs1') return true;
  return readFileSync(fixture).subarray(0, 4).toString('latin1') === 'FS30';
}
