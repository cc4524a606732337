# wcfs's writer, Python reads: a seeded random ZBigFile history written by the project's
# writer (write_history.mjs, from dist/) is read back with real ZODB at every revision.
#
#   - every block of every file at every revision is what the writer's manifest says
#     (sha256 of the whole block; absent = hole), blksize too, and files created later do not
#     exist before their creation;
#   - BTrees.check.check and BTree._check pass on every blktab (LOBTree) and every ZBlk1
#     chunktab (IOBTree) at every revision, and the trees have the splits the history is meant
#     to cause (buckets of blktabs and chunktabs, a root tree node, int64 keys);
#   - the ZBlk1 writer invariant (deltatail.md §1): a txn that stores a ZData or a chunktab
#     node of a ZBlk1 also stores that ZBlk1;
#   - `python -m ZODB.scripts.fstest` accepts the file;
#   - the .index our writer saved is byte for byte the one ZODB saves for the same Data.fs.
#
# Seed: $WCFS_SEED (default 1), printed (pytest shows it on failure).
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import ZODB
import ZODB.FileStorage
from BTrees.check import check
from BTrees.LOBTree import LOBTree
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64

from wendelin.bigfile.file_zodb import ZBigFile, ZBlk0, ZBlk1

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = int(os.environ.get('WCFS_SEED', '1'))


@pytest.fixture(scope='module')
def history(tmp_path_factory):
    """(Data.fs path, manifest) of the history our writer wrote with SEED."""
    repo = os.path.dirname(os.path.dirname(HERE))
    if not os.path.exists(os.path.join(repo, 'dist', 'zodb', 'zbigfile.js')):
        pytest.fail('dist/ is missing: run npm run build first')
    node = os.environ.get('WCFS_NODE', 'node')
    path = str(tmp_path_factory.mktemp('writer') / 'data.fs')
    print('WCFS_SEED=%d' % SEED)
    r = subprocess.run([node, os.path.join(HERE, 'write_history.mjs'), path, str(SEED)], capture_output=True, timeout=120)
    assert r.returncode == 0, 'seed %d: %s' % (SEED, r.stderr.decode())
    m = json.loads(r.stdout)
    assert m['seed'] == SEED
    return path, m


def buckets(tree):
    """The buckets of a BTree (a small tree's one bucket is embedded: oid None)."""
    out = []
    b = tree._firstbucket
    while b is not None:
        out.append(b)
        b = b._next
    return out


def check_tree(tree):
    """BTrees.check.check (keys ordered and within their separators, walking the tree) and
    tree._check() (the bucket chain: firstbucket, each bucket's next = the next leaf)."""
    check(tree)
    tree._check()


def test_blocks_at_every_revision(history):
    path, m = history
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path, read_only=True))
    try:
        tids = [t.tid for t in db.storage.iterator()]
        assert ['%016x' % u64(t) for t in tids] == [t['tid'] for t in m['txns']], 'seed %d' % SEED
        all_files = {f for t in m['txns'] for f in t['files']}
        nblocks = nzblk1 = 0
        for t in m['txns']:
            conn = db.open(at=p64(int(t['tid'], 16)))
            try:
                root = conn.root()
                for foid in sorted(all_files):
                    want = t['files'].get(foid)
                    if want is None:  # created later: not there yet
                        with pytest.raises(POSKeyError):
                            conn.get(p64(int(foid, 16)))._p_activate()
                        continue
                    f = conn.get(p64(int(foid, 16)))
                    where = 'seed %d @%s file %s (%s)' % (SEED, t['tid'], foid, want['name'])
                    assert isinstance(f, ZBigFile), where
                    assert root[want['name']] is f, where
                    assert f.blksize == want['blksize'], where
                    assert f.extra == (), where
                    check_tree(f.blktab)  # the structure first: keys() below walks the bucket chain
                    assert list(f.blktab.keys()) == sorted(int(b) for b in want['blocks']), where
                    for blk, zblk in f.blktab.items():
                        assert isinstance(zblk, (ZBlk0, ZBlk1)), '%s blk %d' % (where, blk)
                        if isinstance(zblk, ZBlk1):
                            check_tree(zblk.chunktab)
                            for off, zd in zblk.chunktab.items():
                                assert off % 4096 == 0 and zd.data and not zd.data.endswith(b'\0'), '%s blk %d chunk %d' % (where, blk, off)
                            nzblk1 += 1
                        else:
                            assert not zblk.data.endswith(b'\0'), '%s blk %d' % (where, blk)
                        data = f.read_block(blk)
                        assert len(data) == f.blksize
                        assert hashlib.sha256(data).hexdigest() == want['blocks'][str(blk)], '%s blk %d' % (where, blk)
                        nblocks += 1
                    assert f.size() == (0 if not want['blocks'] else (max(int(b) for b in want['blocks']) + 1) * f.blksize)
            finally:
                conn.close()
        assert nblocks > 5000 and nzblk1 > 500, (nblocks, nzblk1)
    finally:
        db.close()


def test_trees_split(history):
    # the history does reach the shapes it is meant to test: multi-bucket blktabs and chunktabs
    path, m = history
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path, read_only=True))
    try:
        conn = db.open()
        root = conn.root()
        assert len(buckets(root['many'].blktab)) >= 3, 'seed %d' % SEED
        assert len(buckets(root['sparse'].blktab)) >= 3
        assert max(int(b) for b in root['sparse'].blktab.keys()) >= 1 << 32  # int64 keys
        # the root of 'huge' was split: its children are tree nodes, not buckets
        huge = root['huge'].blktab
        kids = huge.__getstate__()[0][::2]
        assert len(kids) >= 2 and all(isinstance(k, LOBTree) for k in kids)
        assert len(buckets(huge)) > 1000
        assert max(u64(r.oid) for t in db.storage.iterator() for r in t) > 0xffff  # .index: oid prefixes 0 and 1
        most = 0
        for t in m['txns']:
            c = db.open(at=p64(int(t['tid'], 16)))
            big = [f for f in t['files'].values() if f['name'] == 'big']
            if big:
                for zblk in c.root()['big'].blktab.values():
                    if isinstance(zblk, ZBlk1):
                        most = max(most, len(buckets(zblk.chunktab)))
            c.close()
        assert most >= 2, 'seed %d: no ZBlk1 chunktab with more than one bucket' % SEED
        conn.close()
    finally:
        db.close()


def test_zblk1_stored_with_its_chunks(history):
    # deltatail.md §1: a txn storing a ZData or a chunktab node of a ZBlk1 stores the ZBlk1 too
    path, m = history
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path, read_only=True))
    try:
        nchecked = 0
        for txn in db.storage.iterator():
            stored = {r.oid for r in txn}
            conn = db.open(at=txn.tid)
            try:
                for name in conn.root().keys():
                    for blk, zblk in conn.root()[name].blktab.items():
                        if not isinstance(zblk, ZBlk1):
                            continue
                        inner = {zblk.chunktab._p_oid} | {b._p_oid for b in buckets(zblk.chunktab)} | {zd._p_oid for zd in zblk.chunktab.values()}
                        inner.discard(None)
                        if inner & stored:
                            assert zblk._p_oid in stored, 'seed %d @%016x %s blk %d: ZBlk1 not stored with its chunks' % (SEED, u64(txn.tid), name, blk)
                            nchecked += 1
            finally:
                conn.close()
        assert nchecked > 20
    finally:
        db.close()


def test_fstest(history):
    path, _ = history
    r = subprocess.run([sys.executable, '-m', 'ZODB.scripts.fstest', '-v', path], capture_output=True, timeout=120)
    assert r.returncode == 0, 'seed %d: %s' % (SEED, (r.stdout + r.stderr).decode())


def test_index_equals_zodbs(history, tmp_path):
    # our .index vs the one ZODB builds (scan) and saves (on close) for a copy of the same Data.fs
    path, _ = history
    ours = path + '.index'
    assert os.path.exists(ours)
    copy = str(tmp_path / 'copy.fs')
    shutil.copyfile(path, copy)
    st = ZODB.FileStorage.FileStorage(copy)
    st.close()
    with open(ours, 'rb') as a, open(copy + '.index', 'rb') as b:
        mine, theirs = a.read(), b.read()
    assert len(mine) == len(theirs), 'seed %d' % SEED
    assert mine == theirs, 'seed %d' % SEED
