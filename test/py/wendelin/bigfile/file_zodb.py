# State-compatible stand-ins for wendelin.core's ZBigFile classes (module path
# wendelin.bigfile.file_zodb, as the pickles name it), written for the cross-language tests:
# real ZODB loads and stores them exactly as wendelin.core would (deltatail.md §1, zodb.md §3.6).
#
#   ZBigFile  state (blksize, blktab); blktab: LOBTree blk → ZBlk0 | ZBlk1 (absent = hole)
#   ZBlk0     state bytes: the block, trailing NULs stripped
#   ZBlk1     state IOBTree chunktab: offset in block → ZData; 4 KiB chunks, all-zero absent
#   ZData     state bytes: one chunk, trailing NULs stripped
#
# A ZBigFile state with extra trailing fields (a public wendelin.core copy pickles
# (blksize, blktab, zblk_fmt)) is accepted here too; the extras are kept as they are.
from BTrees.IOBTree import IOBTree
from BTrees.LOBTree import LOBTree
from persistent import Persistent

CHUNK = 4096


class ZData(Persistent):
    def __init__(self, data=b''):
        self.data = bytes(data).rstrip(b'\0')

    def __getstate__(self):
        return self.data

    def __setstate__(self, state):
        self.data = state


class ZBlk0(Persistent):
    def __init__(self, data=b''):
        self.data = bytes(data).rstrip(b'\0')

    def __getstate__(self):
        return self.data

    def __setstate__(self, state):
        self.data = state

    def load(self, blksize):
        return self.data.ljust(blksize, b'\0')


class ZBlk1(Persistent):
    def __init__(self, data=b''):
        self.chunktab = IOBTree()
        self.set(data)

    def set(self, data):
        """Store data, chunk by chunk: changed chunks get new ZData, zero chunks go."""
        data = bytes(data)
        for off in range(0, max(len(data), 1), CHUNK):
            chunk = data[off:off + CHUNK].rstrip(b'\0')
            if not chunk:
                if off in self.chunktab:
                    del self.chunktab[off]
                continue
            have = self.chunktab.get(off)
            if have is not None and have.data == chunk:
                continue
            self.chunktab[off] = ZData(chunk)
        self._p_changed = True  # a watcher needs only ZBlk1 oids: store it with its chunks

    def __getstate__(self):
        return self.chunktab

    def __setstate__(self, state):
        self.chunktab = state

    def load(self, blksize):
        out = bytearray(blksize)
        for off, zd in self.chunktab.items():
            out[off:off + len(zd.data)] = zd.data
        return bytes(out)


class ZBigFile(Persistent):
    def __init__(self, blksize):
        self.blksize = blksize
        self.blktab = LOBTree()
        self.extra = ()

    def __getstate__(self):
        return (self.blksize, self.blktab) + tuple(self.extra)

    def __setstate__(self, state):
        self.blksize, self.blktab = state[0], state[1]
        self.extra = tuple(state[2:])

    def size(self):
        """Bytes: up to the end of the last block present."""
        return 0 if not self.blktab else (self.blktab.maxKey() + 1) * self.blksize

    def read_block(self, blk):
        zblk = self.blktab.get(blk)
        return b'\0' * self.blksize if zblk is None else zblk.load(self.blksize)

    def write_block(self, blk, data, fmt='ZBlk0'):
        """data None: punch a hole."""
        if data is None:
            if blk in self.blktab:
                del self.blktab[blk]
            return
        if fmt == 'ZBlk1':
            zblk = self.blktab.get(blk)
            if isinstance(zblk, ZBlk1):
                zblk.set(data)
                return
            self.blktab[blk] = ZBlk1(data)
        else:
            self.blktab[blk] = ZBlk0(data)
