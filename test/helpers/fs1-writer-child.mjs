// A FileStorage writer in its own process, driven by the test over IPC (child_process.fork).
// Plain JS on the compiled dist/ (npm test builds it first).
//
//   → {op:'open', path, opts?}                       ← {op:'opened', head, truncatedBytes, pid}
//   → {op:'commit', records:[{oid, data}], pause?}   ← {op:'committed', tid, oids}
//        oid: 16-hex or 'new';  data: string or null (delete)
//        pause 'voted': stop for good after the status-'c' txn is durable   ← {op:'paused', tpos, len}
//        pause 'half':  same, but first cut the file in the middle of the txn header
//   → {op:'close'}                                    ← {op:'closed'}, then exit
// Any failure                                         ← {op:'error', name, code, message}

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const { FileStorage } = await import(path.resolve(here, '../../dist/zodb/fs1/filestorage.js'));

const hex16 = (x) => x.toString(16).padStart(16, '0');
let st = null;
let pause = null;

async function handle(m) {
  switch (m.op) {
    case 'open': {
      st = await FileStorage.open(m.path, {
        ...(m.opts ?? {}),
        warn: () => {},
        hooks: {
          afterVote: async (tpos, len) => {
            if (pause === null) return;
            if (pause === 'half') fs.truncateSync(m.path, tpos + 11);
            process.send({ op: 'paused', tpos, len });
            await new Promise(() => {}); // until SIGKILL
          },
        },
      });
      return { op: 'opened', head: hex16(st.head()), truncatedBytes: st.openInfo.truncatedBytes, pid: process.pid };
    }
    case 'commit': {
      pause = m.pause ?? null;
      const records = m.records.map((r) => ({
        oid: r.oid === 'new' ? st.newOid() : BigInt('0x' + r.oid),
        data: r.data === null ? null : new TextEncoder().encode(r.data),
      }));
      const tid = await st.commit({ description: m.description ?? '', records });
      return { op: 'committed', tid: hex16(tid), oids: records.map((r) => hex16(r.oid)) };
    }
    case 'close':
      await st?.close();
      st = null;
      return { op: 'closed' };
    default:
      throw new Error(`unknown op ${m.op}`);
  }
}

process.on('message', (m) => {
  handle(m).then(
    (reply) => {
      process.send(reply);
      if (m.op === 'close') process.disconnect();
    },
    (e) => process.send({ op: 'error', name: e?.name, code: e?.code, message: String(e?.message ?? e) }),
  );
});
process.on('disconnect', () => process.exit(0));
