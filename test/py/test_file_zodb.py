# The stand-in classes against real ZODB, and the smallest round trip across languages: a
# database Python writes is read by the project's CLI (`wcfs zodb cat`) block for block.
import subprocess

import transaction
import ZODB
import ZODB.FileStorage
from ZODB.utils import u64

from wendelin.bigfile.file_zodb import ZBigFile

BS = 8192


def test_python_writes_wcfs_reads(tmpdb, wcfs):
    # >>> Python: a ZBigFile with a ZBlk0 block, a ZBlk1 block and a hole, in one commit
    db = ZODB.DB(ZODB.FileStorage.FileStorage(tmpdb))
    conn = db.open()
    f = ZBigFile(BS)
    conn.root()['f'] = f
    b0 = bytes(range(256)) * (BS // 256)
    b2 = b'\0' * 4096 + b'\x07' * 100 + b'\0' * (BS - 4196)
    f.write_block(0, b0, 'ZBlk0')
    f.write_block(2, b2, 'ZBlk1')
    transaction.commit()
    foid = '%016x' % u64(f._p_oid)
    conn.close()
    db.close()

    # <<< wcfs reads each block as Python wrote it; the hole reads as zeros
    def cat(blk):
        r = subprocess.run(wcfs + ['zodb', 'cat', tmpdb, foid, str(blk)], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout

    assert cat(0) == b0
    assert cat(1) == b'\0' * BS
    assert cat(2) == b2


def test_python_writes_wcfs_serves(tmpdb, serve):
    # >>> Python: a file, then a change while wcfs serves
    db = ZODB.DB(ZODB.FileStorage.FileStorage(tmpdb))
    conn = db.open()
    f = conn.root()['f'] = ZBigFile(BS)
    f.write_block(0, b'\x01' * BS)
    transaction.commit()
    at1 = u64(db.lastTransaction())
    foid = '%016x' % u64(f._p_oid)
    srv = serve(tmpdb)
    assert srv.head_at() == at1
    f.write_block(0, b'\x02' * BS)
    f.write_block(1, b'\x03' * BS, 'ZBlk1')
    transaction.commit()
    at2 = u64(db.lastTransaction())
    conn.close()
    db.close()

    # <<< head/ follows to at2; @at1/ keeps the old data
    srv.wait_head(at2)
    with open(srv.path('head', 'bigfile', foid), 'rb') as h:
        assert h.read() == b'\x02' * BS + b'\x03' * BS
    with open(srv.path('@%016x' % at1, 'bigfile', foid), 'rb') as h:
        assert h.read() == b'\x01' * BS
