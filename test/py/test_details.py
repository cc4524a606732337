# Details users meet (issue 9, test 6):
#  1. a ZBigFile pickled as (blksize, blktab, zblk_fmt), as one public copy of wendelin.core
#     does, is served and read — with exactly one warning naming the file, however often it is
#     read or committed to;
#  2. times printed from tids are str(persistent.TimeStamp) to the microsecond, and the mtime
#     wcfs serves for @<tid>/ is the same time (µs rounded as TimeStamp rounds them).
import calendar
import json
import os
import struct
import subprocess
from fractions import Fraction

import transaction
import ZODB
import ZODB.FileStorage
from persistent.timestamp import TimeStamp
from ZODB.Connection import TransactionMetaData
from ZODB.utils import p64, u64, z64

from wendelin.bigfile.file_zodb import ZBigFile

BS = 8192


def _warnings(text, foid):
    lines = [l for l in text.splitlines() if 'warning' in l.lower()]
    return lines, [l for l in lines if foid in l]


def test_zbigfile_extra_state_fields(tmpdb, wcfs, serve):
    # >>> Python: a ZBigFile whose state is (blksize, blktab, 'ZBlk1')
    db = ZODB.DB(ZODB.FileStorage.FileStorage(tmpdb))
    conn = db.open()
    f = conn.root()['f'] = ZBigFile(BS)
    f.extra = ('ZBlk1',)
    f.write_block(0, b'\x01' * BS)
    f.write_block(2, b'\x02' * 100, 'ZBlk1')
    transaction.commit()
    foid = '%016x' % u64(f._p_oid)
    at1 = u64(db.lastTransaction())
    # it is what the public wendelin.core copy writes: real ZODB reads the 3 fields back
    st = ZODB.DB(ZODB.FileStorage.FileStorage(tmpdb, read_only=True))
    c2 = st.open()
    assert c2.root()['f'].__getstate__()[2:] == ('ZBlk1',)
    c2.close()
    st.close()

    want1 = b'\x01' * BS + b'\0' * BS + b'\x02' * 100 + b'\0' * (BS - 100)

    # <<< the CLI reads it, with one warning naming the file
    r = subprocess.run(wcfs + ['zodb', 'cat', tmpdb, foid, '2'], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == want1[2 * BS:]
    lines, named = _warnings(r.stderr.decode(), foid)
    assert len(lines) == 1 and named == lines, r.stderr.decode()
    assert "'ZBlk1'" in lines[0]

    # <<< wcfs serve serves it; reads and commits (including one that stores the ZBigFile
    # itself again, extras and all) do not repeat the warning
    srv = serve(tmpdb)
    for _ in range(3):
        with open(srv.path('head', 'bigfile', foid), 'rb') as h:
            assert h.read() == want1
    want = want1
    for i in range(3):
        f.write_block(1, bytes([0x10 + i]) * BS, 'ZBlk1' if i % 2 else 'ZBlk0')
        if i == 1:
            f._p_changed = True  # the ZBigFile record itself, 3 fields again
        transaction.commit()
        want = want[:BS] + bytes([0x10 + i]) * BS + want[2 * BS:]
        srv.wait_head(u64(db.lastTransaction()))
        for _ in range(2):
            with open(srv.path('head', 'bigfile', foid), 'rb') as h:
                assert h.read() == want
    with open(srv.path('@%016x' % at1, 'bigfile', foid), 'rb') as h:
        assert h.read() == want1
    conn.close()
    db.close()

    out = srv.output()
    lines, named = _warnings(out, foid)
    assert len(lines) == 1 and named == lines, out
    assert "'ZBlk1'" in lines[0], out


def _ref_micros(tid):
    """µs since the epoch of a tid, exactly: TimeStamp's minute + round(b·60/2³² s, 6)."""
    ts = TimeStamp(p64(tid))
    minute = calendar.timegm((ts.year(), ts.month(), 1, ts.hour(), ts.minute(), 0)) + (ts.day() - 1) * 86400
    return minute * 10**6 + round(Fraction((tid & 0xffffffff) * 60, 2**32) * 10**6)


def _commit_at(path, tid):
    """A transaction with the given tid (re-stores the root as it is)."""
    st = ZODB.FileStorage.FileStorage(path)
    try:
        t = TransactionMetaData()
        st.tpc_begin(t, p64(tid))
        data, serial = st.load(z64)
        st.store(z64, serial, data, '', t)
        st.tpc_vote(t)
        st.tpc_finish(t)
    finally:
        st.close()


def test_times_as_zodb_timestamp(tmpdb, wcfs, serve):
    db = ZODB.DB(ZODB.FileStorage.FileStorage(tmpdb))
    conn = db.open()
    conn.root()['f'] = ZBigFile(BS)
    transaction.commit()
    tids = [u64(db.lastTransaction())]
    for i in range(4):
        conn.root()['f'].write_block(i, bytes([i + 1]) * BS)
        transaction.commit()
        tids.append(u64(db.lastTransaction()))
    conn.close()
    db.close()

    def info_says(tid):
        # `wcfs zodb info` prints the head time as str(TimeStamp)
        r = subprocess.run(wcfs + ['zodb', 'info', '--json', tmpdb], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        info = json.loads(r.stdout)
        assert info['head'] == '%016x' % tid
        assert info['headTime'] == str(TimeStamp(p64(tid)))
        r = subprocess.run(wcfs + ['zodb', 'info', tmpdb], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        assert '(%s UTC)' % TimeStamp(p64(tid)) in r.stdout.decode()

    info_says(tids[-1])
    # tids whose microseconds a truncating conversion gets wrong: an exact tie rounded to even
    # (…0.1171875 → .117188), a round-up (b=71: .000001), 59.99999999… → 60.000000
    a = (tids[-1] >> 32) + 1
    for i, b in enumerate([1 << 23, 71, 0xffffffff, 3 << 23]):
        tid = ((a + i) << 32) | b
        _commit_at(tmpdb, tid)
        tids.append(tid)
        info_says(tid)
    assert [str(TimeStamp(p64(t)))[-9:] for t in tids[-4:]] == ['00.117188', '00.000001', '60.000000', '00.351562']

    srv = serve(tmpdb)
    assert srv.head_at() == tids[-1]
    for tid in tids:
        # @<tid>/: its mtime is the tid's time, µs as TimeStamp has them
        st = os.stat(srv.path('@%016x' % tid))
        assert st.st_mtime_ns == _ref_micros(tid) * 1000, '%016x %s' % (tid, TimeStamp(p64(tid)))
