// cfuse — the C reference server of the benchmarks: the smallest useful libfuse3 low-level
// server. It serves one read-only file, /data, whose N bytes it holds in RAM (read once at
// start from <srcfile>), so a READ costs one fuse_reply_buf straight from that memory.
//
//   cfuse [-k] <srcfile> <mountpoint>
//
// -k opens /data with FOPEN_KEEP_CACHE (hot-cache benches); without it every open drops the
// file's page cache, so each open+read sends every byte through this server (cold benches).
// Like wcfs it runs fuse_session_loop_mt with 4 workers and raises max_background to 64; it
// keeps libfuse's other defaults. Runs in the foreground until unmounted (fusermount3 -u) or
// SIGTERM/SIGINT; on exit it prints "cfuse: <reads> READs, <bytes> bytes" on stderr.
//
// Built by bench/util.js: cc -O2 -o bench/out/cfuse bench/cfuse.c $(pkg-config --cflags --libs fuse3)

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *data;
static size_t size;
static int keep_cache;
static atomic_ulong nreads, nbytes;

#define INO_DATA 2

static void fill_attr(fuse_ino_t ino, struct stat *st) {
  memset(st, 0, sizeof *st);
  st->st_ino = ino;
  if (ino == FUSE_ROOT_ID) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
  } else {
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = (off_t)size;
    st->st_blocks = (blkcnt_t)((size + 511) / 512);
  }
}

static void op_init(void *u, struct fuse_conn_info *conn) {
  (void)u;
  conn->max_background = 64;
  conn->congestion_threshold = 48;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  if (parent != FUSE_ROOT_ID || strcmp(name, "data") != 0) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  e.ino = INO_DATA;
  e.attr_timeout = 1.0;
  e.entry_timeout = 1.0;
  fill_attr(INO_DATA, &e.attr);
  fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  if (ino != FUSE_ROOT_ID && ino != INO_DATA) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st;
  fill_attr(ino, &st);
  fuse_reply_attr(req, &st, 1.0);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if (ino != INO_DATA) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY) {
    fuse_reply_err(req, EROFS);
    return;
  }
  fi->keep_cache = keep_cache;
  fi->direct_io = 0;
  fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t n, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  (void)ino;
  if ((size_t)off >= size) n = 0;
  else if (n > size - (size_t)off) n = size - (size_t)off;
  atomic_fetch_add_explicit(&nreads, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&nbytes, n, memory_order_relaxed);
  fuse_reply_buf(req, n ? data + off : NULL, n);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t n, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  if (ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  char buf[512];
  size_t pos = 0;
  const char *names[] = {".", "..", "data"};
  fuse_ino_t inos[] = {FUSE_ROOT_ID, FUSE_ROOT_ID, INO_DATA};
  for (off_t i = off; i < 3; i++) {
    struct stat st;
    fill_attr(inos[i], &st);
    size_t want = fuse_add_direntry(req, buf + pos, sizeof buf - pos, names[i], &st, i + 1);
    if (want > sizeof buf - pos || pos + want > n) break;
    pos += want;
  }
  fuse_reply_buf(req, buf, pos);
}

static const struct fuse_lowlevel_ops ops = {
    .init = op_init,
    .lookup = op_lookup,
    .getattr = op_getattr,
    .open = op_open,
    .read = op_read,
    .readdir = op_readdir,
};

static int load(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  struct stat st;
  if (fstat(fd, &st) < 0) return -1;
  size = (size_t)st.st_size;
  data = malloc(size ? size : 1);
  if (!data) return -1;
  for (size_t got = 0; got < size;) {
    ssize_t r = read(fd, data + got, size - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  int i = 1;
  if (i < argc && strcmp(argv[i], "-k") == 0) {
    keep_cache = 1;
    i++;
  }
  if (argc - i != 2) {
    fprintf(stderr, "usage: cfuse [-k] <srcfile> <mountpoint>\n");
    return 2;
  }
  const char *src = argv[i], *mnt = argv[i + 1];
  if (load(src) < 0) {
    perror(src);
    return 1;
  }
  char *fargv[] = {argv[0], "-o", "fsname=cfuse,subtype=cfuse", NULL};
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  if (!se) return 1;
  if (fuse_set_signal_handlers(se) != 0) return 1;
  if (fuse_session_mount(se, mnt) != 0) return 1;
  struct fuse_loop_config *cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(cfg, 0);
  fuse_loop_cfg_set_max_threads(cfg, 4); // as wcfs (native/fuse.cc maxThreads)
  int rc = fuse_session_loop_mt(se, cfg);
  fuse_loop_cfg_destroy(cfg);
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  fprintf(stderr, "cfuse: %lu READs, %lu bytes\n", (unsigned long)nreads, (unsigned long)nbytes);
  return rc < 0 ? 1 : 0;
}
