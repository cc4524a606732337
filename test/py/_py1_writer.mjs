// The project's FileStorage writer in a process of its own, for test/py/test_python_writer.py
// (lock exclusion against ZODB/py). Plain JS on the compiled dist/.
//
//   node _py1_writer.mjs <Data.fs>
//     → one JSON line {op:'opened', pid, head} and then holds the storage open for writing
//       (Data.fs.lock held) until stdin reaches EOF; then closes, prints {op:'closed'}, exits 0;
//     → or one JSON line {op:'error', name, code, message} and exit 1.

import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const { FileStorage } = await import(path.resolve(here, '../../dist/zodb/fs1/filestorage.js'));

const say = (m) => process.stdout.write(JSON.stringify(m) + '\n');

let st;
try {
  st = await FileStorage.open(process.argv[2], { warn: () => {} });
} catch (e) {
  say({ op: 'error', name: e?.name, code: e?.code, message: String(e?.message ?? e) });
  process.exit(1);
}
say({ op: 'opened', pid: process.pid, head: st.head().toString(16).padStart(16, '0') });
process.stdin.resume();
process.stdin.on('end', async () => {
  await st.close();
  say({ op: 'closed' });
  process.exit(0);
});
