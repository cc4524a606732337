# Python (real ZODB, FileStorage) is the writer, wcfs the reader (issue 9, tests 1 and 3):
#
#   test_random_commits_served_live   random ZBigFile changes committed by ZODB/py while
#                                     `wcfs serve` follows; after every commit (or burst of
#                                     2-4 commits) head/ and a sample of @<tid>/ views equal
#                                     what Python read at each tid; at the end every @<tid>/
#   test_abort_after_vote_not_reported  a commit aborted after the storage voted (status-'c'
#                                     txn on disk, then truncated) is never reported
#   test_pause_between_vote_and_finish  a commit paused between tpc_vote and tpc_finish is
#                                     not reported before tpc_finish, and is right after it
#   test_lock_ours_then_python / test_lock_python_then_ours
#                                     Data.fs.lock excludes the other writer, both directions,
#                                     with each side's exact error text
#
# Seed: WCFS_SEED (default fixed); printed, so a failing run can be repeated.
# WCFS_PY1_COMMITS: commits in the random run (default 120, ~5 s).
import json
import os
import random
import subprocess
import time

import pytest
import transaction
import zc.lockfile
import ZODB
import ZODB.FileStorage
from ZODB.utils import p64, u64

from wendelin.bigfile.file_zodb import ZBigFile, ZBlk0, ZBlk1

HERE = os.path.dirname(os.path.abspath(__file__))
CHUNK = 4096


def hexs(tid):
    return '%016x' % tid


def seed():
    s = int(os.environ.get('WCFS_SEED', '20261206'))
    print('WCFS_SEED=%d' % s)
    return s


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def py_state(db, tid, foids):
    """What Python reads at tid: {foid: file bytes (every block up to the end of the last)}."""
    conn = db.open(at=p64(tid))
    try:
        out = {}
        for foid in foids:
            f = conn.get(p64(int(foid, 16)))
            out[foid] = b''.join(f.read_block(b) for b in range(f.size() // f.blksize))
        return out
    finally:
        conn.close()


def rand_block(rng, bs):
    """Block content built from 4 KiB chunks: zeros, one byte repeated, random, or a short
    head with a zero tail (ZBlk0/ZData strip trailing NULs)."""
    out = bytearray()
    for _ in range(bs // CHUNK):
        k = rng.randrange(4)
        if k == 0:
            out += bytes(CHUNK)
        elif k == 1:
            out += bytes([rng.randrange(1, 256)]) * CHUNK
        elif k == 2:
            out += rng.randbytes(CHUNK)
        else:
            n = rng.randrange(1, CHUNK)
            out += rng.randbytes(n) + bytes(CHUNK - n)
    if rng.random() < 0.2:  # trailing zeros across the block end
        cut = rng.randrange(1, bs)
        out[cut:] = bytes(bs - cut)
    return bytes(out)


def change(rng, f, nblk):
    """One random change to f; returns its name (for the failure message)."""
    bs = f.blksize
    blks = list(f.blktab.keys())
    k = rng.random()
    if k < 0.12 and blks:  # punch a hole (the last block too: the file shrinks)
        blk = rng.choice(blks)
        f.write_block(blk, None)
        return 'punch %d' % blk
    if k < 0.25:  # grow: past the end
        blk = (f.size() // bs) + rng.randrange(0, 3)
        f.write_block(blk, rand_block(rng, bs), rng.choice(['ZBlk0', 'ZBlk1']))
        return 'grow %d' % blk
    if k < 0.45 and blks:  # ZBlk1 partial change: one chunk of an existing block
        blk = rng.choice(blks)
        data = bytearray(f.read_block(blk))
        off = rng.randrange(bs // CHUNK) * CHUNK
        data[off:off + CHUNK] = rand_block(rng, CHUNK) if rng.random() < 0.7 else bytes(CHUNK)
        f.write_block(blk, bytes(data), 'ZBlk1')
        return 'zblk1-chunk %d@%d' % (blk, off)
    blk = rng.randrange(nblk)
    fmt = rng.choice(['ZBlk0', 'ZBlk1'])
    f.write_block(blk, rand_block(rng, bs) if rng.random() < 0.9 else bytes(bs), fmt)
    return '%s %d' % (fmt, blk)


def test_random_commits_served_live(tmpdb, serve):
    s = seed()
    rng = random.Random(s)
    t0 = time.time()
    db = ZODB.DB(ZODB.FileStorage.FileStorage(tmpdb))
    try:
        conn = db.open()
        root = conn.root()
        files = {}  # foid → ZBigFile (in conn)
        for bs in (8192, 16384):
            f = ZBigFile(bs)
            root['f%d' % len(files)] = f
            f.write_block(0, rand_block(rng, bs), 'ZBlk0')
            f.write_block(2, rand_block(rng, bs), 'ZBlk1')
            transaction.commit()
            files[hexs(u64(f._p_oid))] = f
        tid = u64(db.lastTransaction())
        srv = serve(tmpdb)
        assert srv.head_at() == tid

        model = {tid: py_state(db, tid, list(files))}  # tid → {foid → bytes}
        tids = [tid]
        created_at = {foid: tids[0] for foid in files}
        kinds = set()
        nburst = 0
        NCOMMIT = int(os.environ.get('WCFS_PY1_COMMITS', '120'))
        burst = 0
        for i in range(NCOMMIT):
            if burst == 0 and rng.random() < 0.4:
                # @<head>/ looked up (read) while it is head: the next commit keeps its old
                # data there (commit step 3b stores it into the @rev file's cache)
                for foid, want in model[tids[-1]].items():
                    assert read(srv.path('@' + hexs(tids[-1]), 'bigfile', foid)) == want
            what = []
            if i in (NCOMMIT // 3, 2 * NCOMMIT // 3):  # new files mid-run
                bs = rng.choice([8192, 16384, 32768])
                f = ZBigFile(bs)
                root['f%d' % len(files)] = f
                f.write_block(rng.randrange(3), rand_block(rng, bs), rng.choice(['ZBlk0', 'ZBlk1']))
                conn.add(f)
                files[hexs(u64(f._p_oid))] = f
                what.append('new file %s' % hexs(u64(f._p_oid)))
            for _ in range(rng.randrange(1, 4)):
                foid = rng.choice(list(files))
                c = change(rng, files[foid], 12)
                kinds.add(c.split()[0])
                what.append('%s: %s' % (foid, c))
            transaction.get().note(' ; '.join(what))
            transaction.commit()
            tid = u64(db.lastTransaction())
            assert tid > tids[-1]
            for foid in files:
                created_at.setdefault(foid, tid)
            tids.append(tid)
            model[tid] = py_state(db, tid, list(files))

            # now and then a burst: several commits before the server is looked at
            if burst == 0 and rng.random() < 0.15:
                burst = rng.randrange(1, 4)
                nburst += 1
                continue
            if burst > 0:
                burst -= 1
                if burst > 0:
                    continue

            # head/ follows to tid, every file equals what Python reads at tid
            srv.wait_head(tid)
            assert srv.head_at() == tid
            for foid, want in model[tid].items():
                got = read(srv.path('head', 'bigfile', foid))
                assert got == want, 'commit %d (%s) %s: head/ differs from Python at %s' % (i, ' ; '.join(what), foid, hexs(tid))

            # a sample of earlier revisions: @tid/ equals what Python read then
            for old in rng.sample(tids[:-1], min(3, len(tids) - 1)):
                for foid, want in model[old].items():
                    got = read(srv.path('@' + hexs(old), 'bigfile', foid))
                    assert got == want, 'commit %d: @%s/bigfile/%s differs from Python at that tid' % (i, hexs(old), foid)
                for foid in files:  # files created later do not exist at old
                    if created_at[foid] > old:
                        assert not os.path.exists(srv.path('@' + hexs(old), 'bigfile', foid))
        srv.wait_head(tids[-1])
        assert nburst > 0
        # the run did exercise every kind of change
        assert {'punch', 'grow', 'zblk1-chunk', 'ZBlk0', 'ZBlk1'} <= kinds, kinds
        assert len(files) == 4
        # formats: both block kinds present at the end
        fmts = {type(z) for f in files.values() for z in f.blktab.values()}
        assert fmts == {ZBlk0, ZBlk1}, fmts
        # every revision, once more at the end (views of all tids, the whole history)
        for old in tids:
            for foid, want in model[old].items():
                assert read(srv.path('@' + hexs(old), 'bigfile', foid)) == want, '@%s/bigfile/%s' % (hexs(old), foid)
        conn.close()
    finally:
        db.close()
    print('%d commits, %.1f s' % (len(tids), time.time() - t0))


class VoteHook:
    """A data manager that joins a transaction and runs `hook` in tpc_vote after the
    storage voted (its sort key sorts after the FileStorage's: its name is a path, '/…')."""

    def __init__(self, hook):
        self.hook = hook
        self.transaction_manager = transaction.manager

    def sortKey(self):
        return '~~~ vote hook'

    def tpc_begin(self, txn):
        pass

    def commit(self, txn):
        pass

    def tpc_vote(self, txn):
        self.hook()

    def tpc_finish(self, txn):
        pass

    def tpc_abort(self, txn):
        pass

    def abort(self, txn):
        pass


def voted_txn(path, pos):
    """The txn at pos in Data.fs as the storage voted it: (tid, status byte)."""
    with open(path, 'rb') as f:
        f.seek(pos)
        h = f.read(17)
    assert len(h) == 17, 'no txn header at %d' % pos
    return u64(h[:8]), h[16:17]


def start_file(tmpdb, serve, fill):
    db = ZODB.DB(ZODB.FileStorage.FileStorage(tmpdb))
    conn = db.open()
    f = conn.root()['f'] = ZBigFile(8192)
    f.write_block(0, fill * 8192)
    f.write_block(1, fill * 8192, 'ZBlk1')
    transaction.commit()
    at1 = u64(db.lastTransaction())
    srv = serve(tmpdb)
    assert srv.head_at() == at1
    return db, conn, f, hexs(u64(f._p_oid)), at1, srv


def test_abort_after_vote_not_reported(tmpdb, serve):
    db, conn, f, foid, at1, srv = start_file(tmpdb, serve, b'\x01')
    try:
        old = b'\x01' * 16384
        assert read(srv.path('head', 'bigfile', foid)) == old
        seen = {}

        def hook():
            # the storage voted: its status-'c' txn is in Data.fs past the old end
            tid, status = voted_txn(tmpdb, seen['size'])
            assert status == b'c' and tid > at1
            seen['tid'] = tid
            deadline = time.time() + 1.5  # 75 poll periods of the server
            while time.time() < deadline:
                assert srv.head_at() == at1, 'head/at moved to an unfinished txn'
                time.sleep(0.02)
            raise RuntimeError('abort after vote')

        seen['size'] = os.path.getsize(tmpdb)
        f.write_block(0, b'\x02' * 8192)
        f.write_block(1, b'\x02' * 8192, 'ZBlk1')
        f.write_block(3, b'\x02' * 8192)
        transaction.get().join(VoteHook(hook))
        with pytest.raises(RuntimeError, match='abort after vote'):
            transaction.commit()
        transaction.abort()
        assert 'tid' in seen
        assert os.path.getsize(tmpdb) == seen['size']  # tpc_abort truncated the voted txn
        assert u64(db.lastTransaction()) == at1

        # never reported: head/at stays, data unchanged, also after a while
        time.sleep(0.5)
        assert srv.head_at() == at1
        assert read(srv.path('head', 'bigfile', foid)) == old

        # the next commit (written where the aborted one was) is reported, with its own data
        f = conn.root()['f']
        f.write_block(0, b'\x03' * 8192, 'ZBlk1')
        transaction.commit()
        at2 = u64(db.lastTransaction())
        assert at2 > seen['tid']
        assert voted_txn(tmpdb, seen['size']) == (at2, b' ')  # where the aborted txn was
        srv.wait_head(at2)
        assert srv.head_at() == at2
        assert read(srv.path('head', 'bigfile', foid)) == b'\x03' * 8192 + b'\x01' * 8192
        # at the aborted tid the database is as at1 (the aborted data never existed)
        assert read(srv.path('@' + hexs(seen['tid']), 'bigfile', foid)) == old
        assert read(srv.path('@' + hexs(at1), 'bigfile', foid)) == old
        assert srv.proc.poll() is None, srv.output()  # still serving
        conn.close()
    finally:
        db.close()


def test_pause_between_vote_and_finish(tmpdb, serve):
    db, conn, f, foid, at1, srv = start_file(tmpdb, serve, b'\x01')
    try:
        old = b'\x01' * 16384
        new = b'\x02' * 8192 + b'\x01' * 8192 + b'\0' * 8192 + b'\x04' * 8192
        assert read(srv.path('head', 'bigfile', foid)) == old
        seen = {}

        def hook():
            tid, status = voted_txn(tmpdb, seen['size'])
            assert status == b'c' and tid > at1
            seen['tid'] = tid
            # pause 3 s between tpc_vote and tpc_finish: not reported, old data served
            deadline = time.time() + 3
            n = 0
            while time.time() < deadline:
                assert srv.head_at() == at1, 'head/at moved to %s before tpc_finish' % hexs(srv.head_at())
                assert read(srv.path('head', 'bigfile', foid)) == old
                n += 1
                time.sleep(0.05)
            assert n > 20
            assert voted_txn(tmpdb, seen['size'])[1] == b'c'

        seen['size'] = os.path.getsize(tmpdb)
        f.write_block(0, b'\x02' * 8192, 'ZBlk1')
        f.write_block(3, b'\x04' * 8192)
        transaction.get().join(VoteHook(hook))
        transaction.commit()  # → tpc_finish after the hook returned
        at2 = u64(db.lastTransaction())
        assert at2 == seen['tid']
        assert voted_txn(tmpdb, seen['size'])[1] == b' '

        # after tpc_finish it moves
        srv.wait_head(at2)
        assert srv.head_at() == at2
        assert read(srv.path('head', 'bigfile', foid)) == new
        assert read(srv.path('@' + hexs(at1), 'bigfile', foid)) == old
        assert read(srv.path('@' + hexs(at2), 'bigfile', foid)) == new
        assert srv.proc.poll() is None, srv.output()  # still serving
        conn.close()
    finally:
        db.close()


# ---- lock exclusion: the project's writer vs ZODB/py ----


class OurWriter:
    """test/py/_py1_writer.mjs: the project's FileStorage opened for writing in a process."""

    def __init__(self, node, path):
        self.proc = subprocess.Popen([node, os.path.join(HERE, '_py1_writer.mjs'), path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline()
        try:
            self.msg = json.loads(line)
        except ValueError:
            self.proc.kill()
            self.proc.wait()
            pytest.fail('writer said %r; stderr: %s' % (line, self.proc.stderr.read().decode(errors='replace')))

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                assert json.loads(self.proc.stdout.readline()) == {'op': 'closed'}
                assert self.proc.wait(timeout=20) == 0
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
        else:
            self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc.stderr.close()


def make_db(tmpdb):
    db = ZODB.DB(ZODB.FileStorage.FileStorage(tmpdb))
    conn = db.open()
    conn.root()['f'] = ZBigFile(8192)
    transaction.commit()
    at = u64(db.lastTransaction())
    conn.close()
    db.close()
    return at


def test_lock_ours_then_python(tmpdb, node):
    at = make_db(tmpdb)
    w = OurWriter(node, tmpdb)
    try:
        assert w.msg == {'op': 'opened', 'pid': w.proc.pid, 'head': hexs(at)}
        # ZODB/py cannot open it for writing while ours holds it
        with pytest.raises(zc.lockfile.LockError) as e:
            ZODB.FileStorage.FileStorage(tmpdb)
        assert str(e.value) == "Couldn't lock %r" % (tmpdb + '.lock')
        # ours wrote the lock file as zc.lockfile does (and ZODB/py's failed try kept it)
        with open(tmpdb + '.lock') as lf:
            assert lf.read() == ' %d\n' % w.proc.pid
        # ... read-only it can (no lock)
        ZODB.FileStorage.FileStorage(tmpdb, read_only=True).close()
    finally:
        w.close()
    # released: now ZODB/py opens it for writing
    st = ZODB.FileStorage.FileStorage(tmpdb)
    try:
        assert u64(st.lastTransaction()) == at
    finally:
        st.close()


def test_lock_python_then_ours(tmpdb, node):
    at = make_db(tmpdb)
    st = ZODB.FileStorage.FileStorage(tmpdb)
    try:
        with open(tmpdb + '.lock') as lf:
            assert lf.read() == ' %d\n' % os.getpid()
        # ours cannot open it for writing while ZODB/py holds it
        w = OurWriter(node, tmpdb)
        try:
            assert w.msg == {
                'op': 'error',
                'name': 'StorageLockedError',
                'code': 'WCFS_ELOCKED',
                'message': '%s.lock: locked by another process (pid %d)' % (tmpdb, os.getpid()),
            }
            assert w.proc.wait(timeout=20) == 1
        finally:
            w.close()
    finally:
        st.close()
    # released: now ours opens it for writing
    w = OurWriter(node, tmpdb)
    try:
        assert w.msg == {'op': 'opened', 'pid': w.proc.pid, 'head': hexs(at)}
    finally:
        w.close()
