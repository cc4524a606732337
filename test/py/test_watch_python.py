# Python watch clients against our server (wire compatibility, wcfs-server.md §2): a raw
# head/watch link client in Python (_wlink.py) watches ZBigFiles that Python writes with real
# ZODB while wcfs serves them. Expectations come from the history written here: the pins of a
# watch @at are the tracked blocks changed after at, each @<its revision as of at>
# (revision as of at = the last commit ≤ at that changed the block, or the tail — head at
# serve start — if none did).
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import transaction
import ZODB
import ZODB.FileStorage
from ZODB.utils import u64

from _wlink import WatchLink, pin
from wendelin.bigfile.file_zodb import ZBigFile

BS = 8192
NBLK = 4  # blocks of f: 0..3 (3 is a hole at at0)


def blkdata(tag):
    return (tag.encode() * BS)[:BS]


class History:
    """
    f (4 blocks) and g (2 blocks) written at at0, wcfs serving from at0 (tail), then
      at1: f#1 f#3(new) g#0      at2: f#1 f#2      at3: f#0(ZBlk1) g#1
    """

    def __init__(self, tmpdb, serve, *args):
        self.db = ZODB.DB(ZODB.FileStorage.FileStorage(tmpdb))
        self.conn = self.db.open()
        root = self.conn.root()
        f = root['f'] = ZBigFile(BS)
        g = root['g'] = ZBigFile(BS)
        self.f, self.g = f, g
        self.data = {}  # (file, blk) → head data
        self.changes = {}  # (file, blk) → [tids]
        for blk in range(3):
            self._write(f, blk, 'f%da' % blk)
        for blk in range(2):
            self._write(g, blk, 'g%da' % blk)
        self.ats = [self._commit()]
        self.foid = u64(f._p_oid)
        self.goid = u64(g._p_oid)
        self.srv = serve(tmpdb, *args)
        assert self.srv.head_at() == self.ats[0]
        self.tail = self.ats[0]
        self.commit({(f, 1): 'f1b', (f, 3): 'f3b', (g, 0): 'g0b'})
        self.commit({(f, 1): 'f1c', (f, 2): 'f2c'})
        self.commit({(f, 0): 'f0d', (g, 1): 'g1d'}, fmt='ZBlk1')

    def _write(self, zf, blk, tag, fmt='ZBlk0'):
        zf.write_block(blk, blkdata(tag), fmt)
        self.data[(zf, blk)] = blkdata(tag)

    def _commit(self):
        transaction.commit()
        return u64(self.db.lastTransaction())

    def commit(self, changes, fmt='ZBlk0'):
        """Write {(file, blk): tag} in one commit; wait for wcfs head to follow. → the tid."""
        for (zf, blk), tag in changes.items():
            self._write(zf, blk, tag, fmt)
        at = self._commit()
        for key in changes:
            self.changes.setdefault(key, []).append(at)
        self.ats.append(at)
        self.srv.wait_head(at)
        return at

    def oid(self, zf):
        return u64(zf._p_oid)

    def rev(self, zf, blk, at):
        """Revision of blk as of at: last change ≤ at, else the tail."""
        return max([t for t in self.changes.get((zf, blk), []) if t <= at], default=self.tail)

    def pins(self, zf, at, blks):
        """Pins of a watch zf@at over tracked blocks blks (the exact set)."""
        return [pin(self.oid(zf), b, self.rev(zf, b, at)) for b in blks if any(t > at for t in self.changes.get((zf, b), []))]

    def read_head(self, zf, blk):
        with open(self.srv.path('head', 'bigfile', '%016x' % self.oid(zf)), 'rb') as h:
            return os.pread(h.fileno(), BS, blk * BS)

    def lookup(self, zf):
        """Make zf known to wcfs (a watch of a file not yet looked up in head/bigfile/ is refused)."""
        st = os.stat(self.srv.path('head', 'bigfile', '%016x' % self.oid(zf)))
        assert st.st_size == max(b + 1 for (z, b) in self.data if z is zf) * BS

    def track(self, zf, nblk):
        """Read every block through head/ (the server tracks only blocks read): data checked."""
        for blk in range(nblk):
            assert self.read_head(zf, blk) == self.data.get((zf, blk), b'\0' * BS), (zf, blk)

    def watchlink(self, **kw):
        return WatchLink(self.srv.path('head', 'watch'), **kw)

    def close(self):
        self.conn.close()
        self.db.close()


@pytest.fixture
def hist(tmpdb, serve):
    hs = []

    def make(*args):
        h = History(tmpdb, serve, *args)
        hs.append(h)
        return h

    yield make
    for h in hs:
        h.close()


@pytest.fixture
def links():
    """Links opened through this list are closed (bye) in teardown."""
    ls = []
    yield ls
    for l in ls:
        try:
            l.close(timeout=3)
        except Exception:
            pass


def test_watch_at_head(hist, links):
    h = hist()
    h.track(h.f, NBLK)
    wl = h.watchlink()
    links.append(wl)
    head = h.srv.head_at()
    assert head == h.ats[-1]
    wl.watch(h.foid, head, [])
    assert wl.pins == [] and wl.ctl == [] and wl.junk == []
    # pins on access: none (nothing changed after head)
    for blk in range(NBLK):
        assert h.read_head(h.f, blk) == h.data[(h.f, blk)]
    time.sleep(0.1)
    assert wl.pins == []
    wl.close()
    assert wl.ctl == [] and wl.rxerr is None
    assert [l for _, l in wl.rx] == ['1 ok']


def test_watch_older_pins_before_ok(hist, links):
    h = hist()
    h.track(h.f, NBLK)
    at0, at1, at2, at3 = h.ats
    wl = h.watchlink()
    links.append(wl)
    # @at0: every block changed since → pinned to its revision as of at0 (tail: f#3 was a hole)
    want = h.pins(h.f, at0, range(NBLK))
    assert sorted(want) == sorted(pin(h.foid, b, at0) for b in range(NBLK))
    st = wl.send_req('watch %016x @%016x' % (h.foid, at0))
    got = []
    for _ in want:
        pst, msg = wl.next_pin()
        assert pst % 2 == 0 and pst > 0
        got.append((pst, msg))
    assert sorted(m for _, m in got) == sorted(want)
    # no "ok" before the acks, and no further pins
    time.sleep(0.3)
    assert not wl.has_reply(st), 'ok before the pins were acked'
    assert wl.pending_pins() == []
    for pst, _ in got[:-1]:
        wl.ack(pst)
    time.sleep(0.2)
    assert not wl.has_reply(st), 'ok before the last pin was acked'
    wl.ack(got[-1][0])
    assert wl.reply(st) == 'ok'
    # distinct even streams
    assert len({pst for pst, _ in got}) == len(got)

    # @at1 on the same link: f#1 and f#2 (changed at at2), f#0 (at3) keep or get their pins;
    # f#3 (last change at1) is unpinned
    assert h.pins(h.f, at1, range(NBLK)) == [pin(h.foid, 0, at0), pin(h.foid, 1, at1), pin(h.foid, 2, at0)]
    wl.watch(h.foid, at1, [pin(h.foid, 1, at1), pin(h.foid, 3, None)])  # #0 @at0, #2 @at0: already so
    wl.close()


def test_pin_on_access(hist, links):
    h = hist()
    at0, at1, at2, at3 = h.ats
    wl = h.watchlink()
    links.append(wl)
    # not yet known to wcfs: refused (as upstream); known but nothing read yet → nothing
    # tracked → no pins at setup
    assert wl.req('watch %016x @%016x' % (h.foid, at1)) == \
        'error setup watch f<%016x> @%016x: file not yet known to wcfs or is not a ZBigFile' % (h.foid, at1)
    h.lookup(h.f)
    wl.watch(h.foid, at1, [])

    # a read of f#1 (changed at at2) in another thread: pin #1 @at1, and the read waits for the ack
    res = {}

    def read(blk):
        t0 = time.monotonic()
        res[blk] = h.read_head(h.f, blk)
        res[blk, 'dt'] = time.monotonic() - t0

    t = threading.Thread(target=read, args=(1,))
    t.start()
    try:
        pst, msg = wl.next_pin()
        assert msg == pin(h.foid, 1, at1) == pin(h.foid, 1, h.rev(h.f, 1, at1))
        time.sleep(0.5)
        assert t.is_alive() and 1 not in res, 'read completed before the ack'
        wl.ack(pst)
        t.join(5)
        assert not t.is_alive()
    finally:
        if t.is_alive():
            wl.ack(pst)
            t.join(5)
    assert res[1] == h.data[(h.f, 1)] == blkdata('f1c')  # head data, not the pinned revision
    assert res[1, 'dt'] >= 0.5

    # f#0 (changed at at3; as of at1 it is at at0): pin @at0, acked by the reader
    wl.autoack = True
    assert h.read_head(h.f, 0) == blkdata('f0d')
    assert wl.acked == [pin(h.foid, 0, at0)]
    # f#3 (last change at1 ≤ at1): no pin; f#1 again: pinned already, no resend
    assert h.read_head(h.f, 3) == blkdata('f3b')
    assert h.read_head(h.f, 1) == blkdata('f1c')
    # a commit after the watch: f#3 changes → pin #3 @at1 on access
    at4 = h.commit({(h.f, 3): 'f3e'})
    assert h.read_head(h.f, 3) == blkdata('f3e')
    assert wl.acked == [pin(h.foid, 0, at0), pin(h.foid, 3, at1)]
    assert wl.pending_pins() == [] and wl.junk == [] and wl.ctl == []
    assert at4 > at3
    wl.close()


def test_pin_on_access_other_process(hist, links):
    """The read is done by another process: the pin still goes to the watcher, the read waits."""
    h = hist()
    at0, at1, at2, at3 = h.ats
    wl = h.watchlink()
    links.append(wl)
    h.lookup(h.f)
    wl.watch(h.foid, at2, [])
    path = h.srv.path('head', 'bigfile', '%016x' % h.foid)
    code = 'import os,sys; f=os.open(sys.argv[1], os.O_RDONLY); sys.stdout.buffer.write(os.pread(f, %d, 0))' % BS
    p = subprocess.Popen([sys.executable, '-c', code, path], stdout=subprocess.PIPE)
    try:
        pst, msg = wl.next_pin()
        assert msg == pin(h.foid, 0, at0)  # f#0 changed at at3; as of at2 it is at the tail
        time.sleep(0.5)
        assert p.poll() is None, 'reader finished before the ack'
        wl.ack(pst)
        out, _ = p.communicate(timeout=10)
        assert p.returncode == 0
        assert out == blkdata('f0d')
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    wl.close()


def test_unpin_on_rewatch_at_head(hist, links):
    h = hist()
    h.track(h.f, NBLK)
    at0, at1, at2, at3 = h.ats
    wl = h.watchlink()
    links.append(wl)
    wl.watch(h.foid, at0, h.pins(h.f, at0, range(NBLK)))
    # @at2: only f#0 still needs its pin (@at0 already); #1 #2 #3 go back to head
    wl.watch(h.foid, at2, [pin(h.foid, 1, None), pin(h.foid, 2, None), pin(h.foid, 3, None)])
    # @head: the last pin goes
    wl.watch(h.foid, at3, [pin(h.foid, 0, None)])
    # reading head now: no pins
    wl.autoack = True
    h.track(h.f, NBLK)
    time.sleep(0.1)
    assert wl.acked == [] and wl.pending_pins() == []
    # watch again @at3 (same at): nothing to do
    wl.watch(h.foid, at3, [])
    wl.close()


def test_watch_going_back(hist, links):
    h = hist()
    h.track(h.f, NBLK)
    at0, at1, at2, at3 = h.ats
    wl = h.watchlink()
    links.append(wl)
    wl.watch(h.foid, at2, h.pins(h.f, at2, range(NBLK)))
    r = wl.req('watch %016x @%016x' % (h.foid, at1))
    # the exact text of upstream (wcfs.go setupWatch: "setup watch f<%s> @%s")
    # The reason after ": " is upstream's exactly; that is what upstream's clients match on.
    assert r == 'error setup watch f<%016x> @%016x: going back in history is forbidden' % (h.foid, at1)
    # the link stays up and the watch stays @at2: forward is fine, with exactly the unpins
    wl.watch(h.foid, at3, [pin(h.foid, 0, None)])
    assert wl.ctl == [] and not wl.eof
    wl.close()


def test_two_files_one_link(hist, links):
    h = hist()
    h.track(h.f, NBLK)
    h.track(h.g, 2)
    at0, at1, at2, at3 = h.ats
    wl = h.watchlink()
    links.append(wl)
    wl.watch(h.foid, at0, h.pins(h.f, at0, range(NBLK)))
    assert h.pins(h.g, at1, range(2)) == [pin(h.goid, 1, at0)]
    wl.watch(h.goid, at1, [pin(h.goid, 1, at0)])
    # a commit touching both: the pins on access name each file with its own at
    at4 = h.commit({(h.f, 2): 'f2e', (h.g, 0): 'g0e'})
    wl.autoack = True
    assert h.read_head(h.f, 2) == blkdata('f2e')  # f#2 pinned @at0 already: no resend
    assert h.read_head(h.g, 0) == blkdata('g0e')
    assert wl.acked == [pin(h.goid, 0, at1)]
    # stop watching g: f's pins stay, g gets none any more
    wl.autoack = False
    wl.watch(h.goid, None, [])
    at5 = h.commit({(h.g, 1): 'g1f', (h.f, 3): 'f3f'})
    wl.autoack = True
    assert h.read_head(h.g, 1) == blkdata('g1f')
    assert h.read_head(h.f, 3) == blkdata('f3f')
    time.sleep(0.1)
    assert wl.acked == [pin(h.goid, 0, at1)]  # f#3 is pinned @at0 since the watch: no resend
    # f moves to at5: unpins of f only
    wl.autoack = False
    wl.watch(h.foid, at5, [pin(h.foid, b, None) for b in range(NBLK)])
    assert at5 > at4
    wl.close()


def test_bye(hist, links):
    h = hist()
    h.track(h.f, NBLK)
    wl = h.watchlink()
    links.append(wl)
    wl.watch(h.foid, h.ats[0], h.pins(h.f, h.ats[0], range(NBLK)))
    st = wl.send_req('bye')
    wl.wait_eof()
    # no reply to bye, no control line, nothing else
    assert wl.ctl == [] and wl.junk == [] and wl.rxerr is None and st not in wl.replies
    # writes after the link went down fail with EPIPE
    with pytest.raises(OSError) as e:
        wl.write('5 watch %016x @%016x\n' % (h.foid, h.ats[-1]))
    assert e.value.errno == errno.EPIPE
    wl.close()
    # the server goes on: a new link works
    wl2 = h.watchlink()
    links.append(wl2)
    wl2.watch(h.foid, h.ats[-1], [])
    wl2.close()
    assert 'killing' not in h.srv.output()


def test_bad_lines(hist, links):
    h = hist()
    h.track(h.f, NBLK)
    at0, at1, at2, at3 = h.ats
    wl = h.watchlink()
    links.append(wl)
    # bad requests: an "error" reply, the link stays
    assert wl.req('bla bla') == 'error bad watch: not a watch request: "bla bla"'
    assert wl.req('watch %016x' % h.foid) == 'error bad watch: expected 2 arguments, got 1'
    assert wl.req('watch zzz @%016x' % at0) == 'error bad watch: invalid oid'
    assert wl.req('watch %016x @1234' % h.foid) == 'error bad watch: invalid at'
    nofile = 0  # the root object: no ZBigFile
    assert wl.req('watch %016x @%016x' % (nofile, at3)) == \
        'error setup watch f<%016x> @%016x: file not yet known to wcfs or is not a ZBigFile' % (nofile, at3)
    r = wl.req('watch %016x @%016x' % (h.foid, at0 - 1))
    assert r.startswith('error setup watch f<%016x> @%016x: too far away back from head/at (@%016x); ' % (h.foid, at0 - 1, at3)), r
    # still usable
    wl.watch(h.foid, at3, [])
    assert wl.ctl == [] and not wl.eof
    # a line that is no frame: "0 error: …" on stream 0, then EOF
    wl.write('zzz hello\n')
    wl.wait_eof()
    assert wl.ctl == ['error: invalid frame: "zzz hello\\n" (invalid stream)']
    wl.close()

    # a reply on a stream where no pin was sent: protocol error as well
    wl = h.watchlink()
    links.append(wl)
    wl.write('2 ack\n')
    wl.wait_eof()
    assert wl.ctl == ['error: 2: reply on unexpected stream']
    wl.close()
    assert 'killing' not in h.srv.output()


STUCK = textwrap.dedent('''
    import os, resource, sys, time
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    fd = os.open(sys.argv[1], os.O_RDWR)
    os.write(fd, ('1 watch %s @%s\\n' % (sys.argv[2], sys.argv[3])).encode())
    buf = b''
    while b'\\n' not in buf:
        buf += os.read(fd, 4096)
    sys.stdout.write(buf.decode().split('\\n')[0] + '\\n')
    sys.stdout.flush()
    time.sleep(60)  # never ack
''')


def test_client_never_acks(hist, links):
    h = hist('--pintimeout', '2')
    h.track(h.f, NBLK)
    at0, at1, at2, at3 = h.ats
    p = subprocess.Popen([sys.executable, '-c', STUCK, h.srv.path('head', 'watch'), '%016x' % h.foid, '%016x' % at1],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        line = p.stdout.readline().decode()
        assert line.startswith('2 pin %016x #' % h.foid), line
        assert line.rstrip('\n').split(' ', 1)[1] in h.pins(h.f, at1, range(NBLK))
        # another client, another link: its own setup pins and ok go on meanwhile
        wl = h.watchlink()
        links.append(wl)
        wl.watch(h.foid, at1, h.pins(h.f, at1, range(NBLK)))
        # reads of blocks nobody needs pinned go on as well (f#3: last change at1)
        assert h.read_head(h.f, 3) == blkdata('f3b')
        assert wl.pending_pins() == []
        assert p.poll() is None and time.monotonic() - t0 < 1.9  # before the pin timeout
        # the stuck one is killed after the pin timeout (2s)
        rc = p.wait(timeout=10)
        dt = time.monotonic() - t0
        assert rc in (-signal.SIGBUS, -signal.SIGKILL), (rc, p.stderr.read())
        assert 2 <= dt < 8, dt  # t0 is before the pin went out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    out = h.srv.output()
    assert 'client failed to handle pin notification correctly and timely in 2s' in out, out
    assert 'killing it' in out
    # the other client goes on: pins on access after a new commit, reads, re-watch
    at4 = h.commit({(h.f, 3): 'f3g'})
    wl.autoack = True
    assert h.read_head(h.f, 3) == blkdata('f3g')
    assert wl.acked == [pin(h.foid, 3, at1)]
    wl.autoack = False
    wl.watch(h.foid, at4, [pin(h.foid, b, None) for b in (0, 1, 2, 3)])
    assert wl.ctl == [] and not wl.eof
    wl.close()
