# wcfs over ZEO with real Python peers (issue 10, tests 3 and 4): a real `runzeo` from the
# project virtualenv in both encodings (Z5 pickle, M5 msgpack) on a Unix socket, `wcfs serve
# zeo:///path/to/socket`, and Python ZODB (ZEO.ClientStorage) committing through the same
# server.
#
#   live:     every revision Python committed reads the same through @<tid>/bigfile/<oid> as
#             Python's own historical connection at that tid; head/ reads as Python's head.
#   restart:  runzeo stops; a commit goes into its FileStorage directly while it is down; it
#             starts again on the same socket: wcfs reconnects, delivers the missed commit
#             (head/ shows the new bytes, the old revision stays intact) and follows on.
#   gap:      the same, but the file is packed past the missed commit while the server is
#             down: the commit cannot be recovered transaction by transaction, so wcfs goes
#             into EIO mode (FUSE aborted: ENOTCONN) rather than serve stale bytes, and says why.
import errno
import os
import random
import socket
import struct
import subprocess
import sys
import time

import pytest
import transaction
import ZODB
import ZODB.FileStorage
from ZEO.ClientStorage import ClientStorage
from ZODB.utils import p64, u64

from wendelin.bigfile.file_zodb import ZBigFile

BS = 8192
NBLK = 6


class Zeo:
    """A real runzeo over fs on a Unix socket; stop() in teardown."""

    def __init__(self, fs, sock, encoding):
        self.fs, self.sock, self.encoding = fs, sock, encoding
        self.proc = None
        self.start()

    def start(self):
        env = dict(os.environ)
        env.pop('ZEO_MSGPACK', None)
        if self.encoding == 'msgpack':
            env['ZEO_MSGPACK'] = '1'
        runzeo = os.path.join(os.path.dirname(sys.executable), 'runzeo')
        self.log = open(self.fs + '.zeo.log', 'ab')
        self.proc = subprocess.Popen([runzeo, '-a', self.sock, '-f', self.fs], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 30
        want = b'M5' if self.encoding == 'msgpack' else b'Z5'
        while True:
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                pytest.fail('runzeo did not come up')
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(5)
                    s.connect(self.sock)
                    hdr = s.recv(6, socket.MSG_WAITALL)
                    assert hdr == struct.pack('>I', 2) + want, hdr
                    return
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        self.log.close()


@pytest.fixture(params=['pickle', 'msgpack'])
def zeo(request, tmp_path):
    z = Zeo(str(tmp_path / 'data.fs'), str(tmp_path / 'zeo.sock'), request.param)
    yield z
    z.stop()


def blk(tag):
    return (tag.encode() * BS)[:BS]


class PyClient:
    """Python ZODB through the ZEO server: one ZBigFile `f`."""

    def __init__(self, zeo, foid=None):
        self.db = ZODB.DB(ClientStorage(zeo.sock, wait_timeout=30))
        self.conn = self.db.open()
        self.foid = foid

    def create(self):
        root = self.conn.root()
        self.f = root['f'] = ZBigFile(BS)
        for b in range(3):
            self.f.write_block(b, blk('init%d' % b))
        transaction.commit()
        self.foid = u64(self.f._p_oid)
        return u64(self.db.lastTransaction())

    def commit(self, changes, fmt='ZBlk0'):
        self.conn.sync()
        f = self.conn.root()['f']
        for b, data in changes.items():
            f.write_block(b, data, fmt)
        transaction.commit()
        return u64(self.db.lastTransaction())

    def view(self, tid):
        """f's blocks as of tid, through Python's historical connection."""
        c = self.db.open(at=p64(tid))
        try:
            f = c.root()['f']
            return [f.read_block(b) for b in range(NBLK)], f.size()
        finally:
            c.close()

    def close(self):
        self.conn.close()
        self.db.close()


def read_file(path, size):
    with open(path, 'rb') as h:
        data = h.read()
    assert len(data) == size, (path, len(data), size)
    return data


def check_rev(py, srv, tid, where='@%016x'):
    blocks, size = py.view(tid)
    at = where % tid if '%' in where else where
    got = read_file(srv.path(at, 'bigfile', '%016x' % py.foid), size)
    for b in range(size // BS):
        assert got[b * BS:(b + 1) * BS] == blocks[b], '%s #%d' % (at, b)


def test_live_python_commits(zeo, serve):
    # >>> Python creates f through ZEO; wcfs serves the ZEO server
    py = PyClient(zeo)
    try:
        tids = [py.create()]
        srv = serve('zeo://' + zeo.sock)
        assert srv.head_at() == tids[0]
        with open(srv.path('.wcfs', 'zurl')) as h:
            assert h.read() == 'zeo://' + zeo.sock
        # >>> Python commits (seeded random blocks, both ZBlk formats, growth, holes); wcfs follows
        rng = random.Random(int(os.environ.get('WCFS_SEED', '1')))
        for i in range(10):
            changes = {}
            for _ in range(1 + rng.randrange(3)):
                b = rng.randrange(NBLK)
                changes[b] = None if rng.random() < 0.15 else blk('c%d.%d' % (i, b))
            tids.append(py.commit(changes, fmt=rng.choice(['ZBlk0', 'ZBlk1'])))
            srv.wait_head(tids[-1])
            check_rev(py, srv, tids[-1], where='head')
        # >>> every revision reads as Python's view at it
        for t in tids:
            check_rev(py, srv, t)
    finally:
        py.close()


def test_restart_recovers_missed_commit(zeo, serve, tmp_path):
    py = PyClient(zeo)
    t0 = py.create()
    srv = serve('zeo://' + zeo.sock)
    check_rev(py, srv, t0, where='head')  # head/ pages cached by the kernel
    t1 = py.commit({0: blk('one')})
    srv.wait_head(t1)
    check_rev(py, srv, t1, where='head')
    py.close()

    # >>> the server stops; a commit goes into its file directly; it comes back
    zeo.stop()
    db = ZODB.DB(ZODB.FileStorage.FileStorage(zeo.fs))
    c = db.open()
    c.root()['f'].write_block(1, blk('missed'))
    c.root()['f'].write_block(4, blk('grown'))
    transaction.commit()
    t2 = u64(db.lastTransaction())
    c.close()
    db.close()
    zeo.start()

    # >>> wcfs reconnects and delivers the missed commit: head/ shows it, old revisions stay
    srv.wait_head(t2, timeout=30)
    py = PyClient(zeo, py.foid)
    try:
        check_rev(py, srv, t2, where='head')
        check_rev(py, srv, t1)
        # >>> and goes on following
        t3 = py.commit({2: blk('after')})
        srv.wait_head(t3)
        check_rev(py, srv, t3, where='head')
    finally:
        py.close()
    assert 'reconnected; recovered 1 transaction' in srv.output()


def test_unrecoverable_gap_fails_closed(zeo, serve):
    py = PyClient(zeo)
    t0 = py.create()
    srv = serve('zeo://' + zeo.sock)
    check_rev(py, srv, t0, where='head')
    py.close()

    # >>> while the server is down: two commits of block 0, then a pack past them
    zeo.stop()
    db = ZODB.DB(ZODB.FileStorage.FileStorage(zeo.fs))
    c = db.open()
    for tag in ('gone1', 'gone2'):
        c.root()['f'].write_block(0, blk(tag))
        transaction.commit()
    c.close()
    time.sleep(0.01)
    db.pack(time.time())
    db.close()
    zeo.start()

    # >>> wcfs cannot tell what changed one transaction at a time: EIO mode (the FUSE
    # connection is aborted: clients get ENOTCONN), never the old bytes; the log says why
    srv.proc.wait(timeout=30)
    assert srv.proc.returncode == 1
    out = srv.output()
    assert 'cannot be recovered one by one' in out, out
    assert 'switching filesystem to EIO mode' in out, out
    with pytest.raises(OSError) as e:
        with open(srv.path('head', 'bigfile', '%016x' % py.foid), 'rb') as h:
            os.pread(h.fileno(), BS, 0)
    assert e.value.errno == errno.ENOTCONN


def zeo_writer(node, repo, zeo, *args):
    """test/py/_zeo_writer.mjs: one transaction by our writer through our ZEO driver."""
    import json
    r = subprocess.run([node, os.path.join(repo, 'test', 'py', '_zeo_writer.mjs'), 'zeo://' + zeo.sock, *args], capture_output=True, timeout=60)
    assert r.stdout, r.stderr.decode()
    return r.returncode, json.loads(r.stdout.decode().splitlines()[-1])


def test_python_reads_our_commits(zeo, node, repo):
    # >>> our writer creates f through ZEO; Python reads it as written
    code, r = zeo_writer(node, repo, zeo, 'new', '0=a', '1=b,ZBlk1', '3=c')
    assert code == 0, r
    foid, t1 = int(r['foid'], 16), int(r['tid'], 16)
    py = PyClient(zeo, foid)
    try:
        blocks, size = py.view(t1)
        assert size == 4 * BS
        assert blocks[:4] == [blk('a'), blk('b'), b'\0' * BS, blk('c')]
        # >>> Python holds f loaded; our commit reaches it as an invalidation
        f = py.conn.root()['f']
        assert f.read_block(0) == blk('a')
        code, r = zeo_writer(node, repo, zeo, r['foid'], '0=ours', '1=-', '2=new,ZBlk1')
        assert code == 0, r
        t2 = int(r['tid'], 16)
        deadline = time.time() + 10
        while u64(py.db.lastTransaction()) < t2:
            assert time.time() < deadline, 'no invalidation for our commit reached Python'
            time.sleep(0.01)
        py.conn.sync()
        f = py.conn.root()['f']
        assert [f.read_block(b) for b in range(4)] == [blk('ours'), b'\0' * BS, blk('new'), blk('c')]
        # >>> a transaction based on a stale read is refused: ConflictError naming the object
        code, r = zeo_writer(node, repo, zeo, r['foid'], '--at', '%016x' % t1, '0=stale')
        assert code == 1 and r['error']['code'] == 'WCFS_ECONFLICT', r
        assert int(r['error']['oid'], 16) == u64(py.conn.root()['f'].blktab[0]._p_oid)
        assert u64(py.db.lastTransaction()) == t2
    finally:
        py.close()
