// The project's writer through our ZEO driver, in a process of its own, for test/py/test_zeo.py.
// Plain JS on the compiled dist/.
//
//   node _zeo_writer.mjs <zurl> new|<foid hex> [--at <tid hex>] <blk>=<tag>[,<ZBlk0|ZBlk1>] …
//     one transaction: "new" creates root['f'] = ZBigFile(8192) first; each block becomes
//     (tag × 8192)[:8192] (as test_zeo.py's blk()), or a hole for the tag "-"; --at bases the
//     transaction on an older revision (a stale read: the server must refuse it)
//     → one JSON line {tid, foid} and exit 0, or {error: {name, code, message, oid?}} and exit 1.

import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = (m) => import(path.resolve(here, '../../dist', m));
const { openStorage } = await dist('zodb/open.js');
const { WriteTxn } = await dist('zodb/db.js');
const { createZBigFile, ensureRoot, rootSet, setBlock, ZBIGFILE_CLASS } = await dist('zodb/zbigfile.js');
const { PersistentRef } = await dist('zodb/pickle/index.js');

const BS = 8192;
const say = (m) => process.stdout.write(JSON.stringify(m, (_, v) => (typeof v === 'bigint' ? v.toString(16).padStart(16, '0') : v)) + '\n');
const [zurl, fArg, ...rest] = process.argv.slice(2);
let at;
if (rest[0] === '--at') {
  at = BigInt('0x' + rest[1]);
  rest.splice(0, 2);
}
const st = await openStorage(zurl);
try {
  if (fArg === 'new') await ensureRoot(st);
  const txn = new WriteTxn(st, at);
  let foid;
  if (fArg === 'new') {
    foid = createZBigFile(txn, BS);
    await rootSet(txn, 'f', new PersistentRef(foid, ZBIGFILE_CLASS));
  } else foid = BigInt('0x' + fArg);
  for (const a of rest) {
    const [b, spec] = a.split('=');
    const [tag, format] = spec.split(',');
    const data = tag === '-' ? null : new TextEncoder().encode(tag.repeat(Math.ceil(BS / tag.length)).slice(0, BS));
    await setBlock(txn, foid, Number(b), data, format ? { format } : {});
  }
  say({ tid: await txn.commit({ description: 'by _zeo_writer.mjs' }), foid });
  await st.close();
} catch (e) {
  say({ error: { name: e?.name, code: e?.code, message: String(e?.message ?? e), oid: e?.oid } });
  await st.close();
  process.exit(1);
}
