# The Python reference of bench/bench-zeo.js (not a bench itself: run by it with .venv/bin/python).
#
#   zeo-load.py HOST:PORT REPS
#
# Each rep opens a fresh ZEO.ClientStorage + ZODB.DB (so the ZEO client cache and the
# connection's object cache start empty) and times, for root['big'] (a ZBigFile, the stand-in
# classes of test/py/wendelin/bigfile/file_zodb.py):
#   read_block: file.read_block(blk) for every blk — blktab B-tree + ZBlk loads, like
#               ZBigFileView.loadBlock;
#   loadBefore: storage.loadBefore(zblk_oid, head+1) for every block's ZBlk oid (collected
#               first, not timed) — the bare record loads, from a second fresh client.
# Prints one JSON line: {"bytes": …, "read_block_ns": [...], "loadBefore_ns": [...]}.
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'py'))

import ZODB  # noqa: E402
from ZEO.ClientStorage import ClientStorage  # noqa: E402
from ZODB.utils import p64, u64  # noqa: E402

import wendelin.bigfile.file_zodb  # noqa: E402,F401  (the classes the records name)


def opendb(addr):
    host, port = addr.rsplit(':', 1)
    st = ClientStorage((host, int(port)), wait=True, read_only=True)
    return st, ZODB.DB(st)


def main():
    addr, reps = sys.argv[1], int(sys.argv[2])
    out = {'bytes': 0, 'read_block_ns': [], 'loadBefore_ns': []}
    for _ in range(reps):
        st, db = opendb(addr)
        conn = db.open()
        f = conn.root()['big']
        nblk = f.size() // f.blksize
        t0 = time.perf_counter_ns()
        n = 0
        for blk in range(nblk):
            n += len(f.read_block(blk))
        out['read_block_ns'].append(time.perf_counter_ns() - t0)
        out['bytes'] = n
        oids = [f.blktab[blk]._p_oid for blk in range(nblk)]
        conn.close()
        db.close()

        st, db = opendb(addr)
        before = p64(u64(st.lastTransaction()) + 1)
        t0 = time.perf_counter_ns()
        for oid in oids:
            data, _serial, _next = st.loadBefore(oid, before)
        out['loadBefore_ns'].append(time.perf_counter_ns() - t0)
        db.close()
    print(json.dumps(out))


main()
