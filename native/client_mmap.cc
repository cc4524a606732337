// wcfs native client — the memory layer (declarations and invariants I1–I5 in client.h).
//
// A Mapping of blocks [blkStart, blkStart+blkLen) of one file is one VA range, built as:
//   1) mmap(NULL, len, PROT_READ, MAP_SHARED, headfd, blkStart·bs)   — all of it head
//   2) the part at or past headfsize → read-only zeros (a fault there would be SIGBUS)
//   3) every pinned block in range → its @rev file (or zeros past that file's size)
// Later changes all go through remapBlkLocked (pin, unpin, re-pin after growth) or
// MAP_FIXED head over [old size, new size) ("unzero", resync phase 1), and end in either
// efault (PROT_NONE over the whole range: close, poison, fork) or munmap (unmap).
//
// All functions here run with ConnCore::mu held and do no FUSE IO: mmap(2) of a FUSE file
// sends no request, and the @rev files are opened by the caller beforehand.
//
// Zero fill is MAP_PRIVATE|MAP_ANONYMOUS read-only: it maps the shared zero page and costs no
// memory (upstream maps /dev/zero MAP_SHARED, which is shmem-backed; wcfs-client.md §6).
#include "client.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace wcfs {
namespace client {

int MapZeros(void* addr, size_t len) {
  void* p = mmap(addr, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return errno;
  return p == addr ? 0 : EFAULT;
}

int MapNone(void* addr, size_t len) {
  void* p = mmap(addr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return errno;
  return p == addr ? 0 : EFAULT;
}

int MapFile(void* addr, size_t len, int fd, uint64_t off) {
  void* p = mmap(addr, len, PROT_READ, MAP_SHARED | MAP_FIXED, fd, off_t(off));
  if (p == MAP_FAILED) return errno;
  return p == addr ? 0 : EFAULT;
}

// Overlay block blk of m per I2. Caller: mu held, m live and not efaulted, blk in range.
int ConnCore::remapBlkLocked(Mapping* m, uint64_t blk) {
  FileState* f = m->file.get();
  const uint64_t bs = f->blksize;
  char* addr = m->mem + (blk - m->blkStart) * bs;
  auto p = f->pinned.find(blk);
  int fd;
  uint64_t size;
  if (p == f->pinned.end()) {
    // head: the cached size, never an fstat here (hazard H5)
    fd = f->headfd;
    size = f->headfsize;
  } else {
    auto r = f->revTab.find(p->second);
    if (r == f->revTab.end()) return EINVAL;  // I3 broken: a bug
    fd = r->second.fd;
    size = r->second.size;
  }
  if ((blk + 1) * bs > size) return MapZeros(addr, bs);
  int err = MapFile(addr, bs, fd, blk * bs);
  // A pinned block: no readaround on its faults. The kernel would otherwise read the
  // neighbouring @rev pages too, and the server would cache those whole blocks of @rev,
  // which no client maps (bench/bench-memory.js). The server uploads the rest of the
  // faulted block itself. Head keeps its readahead: its pages are shared by everyone.
  if (err == 0 && p != f->pinned.end()) madvise(addr, bs, MADV_RANDOM);  // advice only: failure is harmless
  return err;
}

int ConnCore::efaultLocked(Mapping* m) {
  if (m->unmapped || m->efaulted) return 0;
  m->efaulted = true;  // even if the remap below fails: never map data here again (I4)
  return MapNone(m->mem, m->len);
}

int ConnCore::unmapLocked(Mapping* m) {
  if (m->unmapped) return 0;
  m->unmapped = true;
  int err = munmap(m->mem, m->len) == 0 ? 0 : errno;
  m->file->mmaps.erase(m);
  mappings.erase(m->id);  // may drop the last reference but one (the caller's)
  return err;
}

void ConnCore::efaultAllLocked() {
  for (auto& [id, m] : mappings) efaultLocked(m.get());
}

std::vector<int> ConnCore::fileRemoveLocked(FileState* f) {
  std::vector<int> fds;
  if (f->removed) return fds;
  f->removed = true;
  for (Mapping* m : f->mmaps) efaultLocked(m);
  auto it = byFoid.find(f->foid);
  if (it != byFoid.end() && it->second == f) byFoid.erase(it);
  fds.push_back(f->headfd);
  for (auto& [rev, r] : f->revTab) fds.push_back(r.fd);
  f->revTab.clear();
  f->pinned.clear();
  files.erase(f->id);  // f stays alive through its mappings (if any) or the caller
  return fds;
}

// Resync phase 1 for one file (wcfs-client.md §4 step 6): the head file grew from headfsize
// to newSize. Blocks in [old, new) of every mapping were zeros and become head — except
// pinned ones, which are re-applied right after (hazard H2: the server will not resend a
// pin it already has). The range is clamped on both sides, in signed arithmetic (H3).
std::string ConnCore::resizeLocked(FileState* f, uint64_t newSize, const char** code) {
  const uint64_t bs = f->blksize;
  if (f->removed) {
    *code = "WCFS_EFILECLOSED";
    return "file closed";
  }
  *code = "WCFS_ESERVERBUG";  // the server broke its promise (TS: ServerBugError)
  if (newSize % bs != 0) return "head/file size % blksize != 0";
  if (newSize < f->headfsize) return "head/file size not ↑";
  *code = nullptr;
  const int64_t oldSz = int64_t(f->headfsize), newSz = int64_t(newSize);
  for (Mapping* m : f->mmaps) {
    if (m->efaulted) continue;
    const int64_t mStart = int64_t(m->blkStart * bs), mStop = mStart + int64_t(m->len);
    const int64_t lo = std::max(oldSz, mStart), hi = std::min(newSz, mStop);
    if (lo >= hi) continue;
    int err = MapFile(m->mem + (lo - mStart), size_t(hi - lo), f->headfd, uint64_t(lo));
    if (err != 0) return std::string("unzero: ") + strerror(err);
    // re-apply pins inside [lo, hi)
    for (auto p = f->pinned.lower_bound(uint64_t(lo) / bs); p != f->pinned.end() && p->first < uint64_t(hi) / bs; ++p) {
      err = remapBlkLocked(m, p->first);
      if (err != 0) return "re-pin #" + std::to_string(p->first) + ": " + strerror(err);
    }
  }
  f->headfsize = newSize;
  return "";
}

// Pin (or unpin) blk of f to rev in every live mapping, then record it in f->pinned (even if
// no mapping covers blk: later mmaps apply it). For rev ≠ head the @rev file must be known:
// already in revTab, or handed in as revFile (then moved into revTab; else its fd goes to
// toClose).
std::string ConnCore::pinLocked(FileState* f, uint64_t blk, uint64_t rev, RevFile* revFile, std::vector<int>* toClose) {
  // 1) bookkeeping first (remapBlkLocked reads it): pinned and revTab refcounts (I3)
  auto unref = [&](uint64_t r) {
    auto it = f->revTab.find(r);
    if (it != f->revTab.end() && --it->second.nref == 0) {
      toClose->push_back(it->second.fd);
      f->revTab.erase(it);
    }
  };
  if (rev != kTidHead) {
    auto it = f->revTab.find(rev);
    if (it == f->revTab.end()) {
      if (revFile == nullptr) return "internal error: @rev file not opened";
      it = f->revTab.emplace(rev, *revFile).first;
      it->second.nref = 0;
      revFile->fd = -1;  // moved
    }
    it->second.nref++;
  }
  if (revFile != nullptr && revFile->fd >= 0) {
    toClose->push_back(revFile->fd);  // not needed (already known)
    revFile->fd = -1;
  }
  auto old = f->pinned.find(blk);
  if (old != f->pinned.end()) {
    uint64_t oldRev = old->second;
    f->pinned.erase(old);
    unref(oldRev);
  }
  if (rev != kTidHead) f->pinned[blk] = rev;

  // 2) remap every live mapping covering blk; stop at the first error (the conn gets
  //    poisoned anyway)
  for (Mapping* m : f->mmaps) {
    if (m->efaulted || blk < m->blkStart || blk >= m->blkStart + m->blkLen) continue;
    int err = remapBlkLocked(m, blk);
    if (err != 0) return std::string("remap: ") + strerror(err);
  }
  return "";
}

}  // namespace client
}  // namespace wcfs
