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
