# Pack while serving (notes.md, Server and FileStorage "Pack while serving"): real ZODB packs
# the database wcfs serves. wcfs keeps serving head/ and follows new commits; revisions the
# pack removed are refused with a clear error (@<rev>/ lookups, new block loads of @<rev>/
# files, watch requests); a watcher at such a revision gets `0 error: …` on its link; nobody
# sees wrong bytes.
import errno
import os
import subprocess
import sys
import threading
import time

import pytest
import transaction
import ZODB
import ZODB.FileStorage
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64

from wendelin.bigfile.file_zodb import ZBigFile

BS = 65536
HERE = os.path.dirname(os.path.abspath(__file__))


def blk(c):
    return bytes([c]) * BS


class Watcher:
    """rawwatch.py in a process of its own; lines() are what it received so far."""

    def __init__(self, srv, foid, at):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, 'rawwatch.py'), srv.mnt, foid, '%016x' % at],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._lines = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.proc.stdout:
            self._lines.append(line.decode().rstrip('\n'))

    def lines(self):
        return list(self._lines)

    def wait(self, pred, what, timeout=10):
        deadline = time.time() + timeout
        while not any(pred(l) for l in self.lines()):
            if time.time() > deadline:
                pytest.fail('watcher: no %s; got %r' % (what, self.lines()))
            time.sleep(0.01)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._t.join(timeout=10)
        self.proc.stdout.close()


@pytest.fixture
def watchers():
    ws = []
    yield ws
    for w in ws:
        w.stop()


def read(path, off=0, n=-1):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead into blocks we do not ask for
        if n < 0:
            n = os.fstat(fd).st_size - off
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


def test_pack_while_serving(tmpdb, serve, watchers, request):
    # >>> Python: a history of a ZBigFile (blocks 0, 1) in three commits
    db = ZODB.DB(ZODB.FileStorage.FileStorage(tmpdb))
    request.addfinalizer(db.close)  # also when an assertion fails (closing twice is fine)
    conn = db.open()
    f = conn.root()['f'] = ZBigFile(BS)
    f.write_block(0, blk(0x11))
    f.write_block(1, blk(0x12), 'ZBlk1')
    transaction.commit()
    at1 = u64(db.lastTransaction())
    foid = '%016x' % u64(f._p_oid)
    # served from at1 on (the history the server keeps starts at its start)
    srv = serve(tmpdb)
    assert srv.head_at() == at1
    head = srv.path('head', 'bigfile', foid)
    rev = lambda at: srv.path('@%016x' % at, 'bigfile', foid)  # noqa: E731
    assert read(head) == blk(0x11) + blk(0x12)  # blocks 0, 1 tracked from now on
    f.write_block(0, blk(0x21))
    transaction.commit()
    at2 = u64(db.lastTransaction())
    f.write_block(1, blk(0x32), 'ZBlk1')
    transaction.commit()
    at3 = u64(db.lastTransaction())
    srv.wait_head(at3)
    assert read(head) == blk(0x21) + blk(0x32)
    assert read(rev(at1)) == blk(0x11) + blk(0x12)
    # an @at2 file open before the pack, block 0 read (so loaded), block 1 never
    old = os.open(rev(at2), os.O_RDONLY)
    try:
        os.posix_fadvise(old, 0, 0, os.POSIX_FADV_RANDOM)
        assert os.pread(old, 4096, 0) == blk(0x21)[:4096]

        # watchers at at1 (pinned: both blocks changed since) and at head
        w1 = Watcher(srv, foid, at1)
        watchers.append(w1)
        w1.wait(lambda l: l == '1 ok', '"1 ok"')
        pins = sorted(l.split(' ', 1)[1] for l in w1.lines() if ' pin ' in l)
        assert pins == ['pin %s #0 @%016x' % (foid, at1), 'pin %s #1 @%016x' % (foid, at1)], w1.lines()
        w3 = Watcher(srv, foid, at3)
        watchers.append(w3)
        w3.wait(lambda l: l == '1 ok', '"1 ok"')

        # >>> Python packs: history before now is gone (the last txn stays: it is current)
        time.sleep(0.05)
        db.pack(t=time.time())
        # (ZODB itself: at1's block 0 record is gone)
        with pytest.raises(POSKeyError):
            db.storage.loadSerial(f.blktab[0]._p_oid, p64(at1))

        # <<< the watcher at at1 is told to resync, then its link ends (no kill)
        packed = 'packed away: history before @%016x is gone' % at3
        w1.wait(lambda l: l.startswith('0 error: '), 'error line')
        err = [l for l in w1.lines() if l.startswith('0 ')]
        assert err == ['0 error: watch f%s @%016x: %s; resync' % (foid, at1, packed)], w1.lines()
        w1.wait(lambda l: l == 'EOF', 'EOF')
        assert w1.proc.wait(timeout=10) == 0  # exited by itself, not killed

        # head/at and head data unchanged
        assert srv.head_at() == at3
        assert read(head) == blk(0x21) + blk(0x32)
        # @at1/, @at2/: new lookups fail with EIO (the log says why); never other bytes
        for at in (at1, at2):
            with pytest.raises(OSError) as e:
                os.stat(srv.path('@%016x' % at))
            assert e.value.errno == errno.EIO
        # the @at2 file open before: block 0 (loaded before the pack) reads right; block 1 fails
        assert os.pread(old, BS, 0) == blk(0x21)
        with pytest.raises(OSError) as e:
            os.pread(old, 4096, BS)
        assert e.value.errno == errno.EIO
    finally:
        os.close(old)
    # @at3 (= the pack boundary) is complete
    assert read(rev(at3)) == blk(0x21) + blk(0x32)

    # a watch at a packed revision: error reply; the watcher at head is still up
    w1b = Watcher(srv, foid, at1)
    watchers.append(w1b)
    w1b.wait(lambda l: l.startswith('1 '), 'reply')
    assert [l for l in w1b.lines() if l.startswith('1 ')] == ['1 error setup watch f<%s> @%016x: %s' % (foid, at1, packed)]
    assert 'EOF' not in w3.lines()

    # >>> Python commits after the pack: followed; the watcher at at3 is pinned when head's
    # block 0 is read, to at3 — readable, since at3 is the pack boundary
    f.write_block(0, blk(0x41))
    transaction.commit()
    at4 = u64(db.lastTransaction())
    srv.wait_head(at4)
    assert read(head) == blk(0x41) + blk(0x32)
    w3.wait(lambda l: l.endswith('pin %s #0 @%016x' % (foid, at3)), 'pin #0 @at3')
    assert read(rev(at3)) == blk(0x21) + blk(0x32)
    assert 'EOF' not in w3.lines()

    log = srv.output()
    assert 'database packed: history before @%016x is gone' % at3 in log, log
    assert 'zwatcher failed' not in log, log
    # the errors the clients got as EIO, with why
    assert 'EIO: PackedError: @%016x: %s' % (at1, packed) in log, log
    assert 'EIO: PackedError: @%016x/bigfile/%s #1: %s' % (at2, foid, packed) in log, log
    conn.close()
