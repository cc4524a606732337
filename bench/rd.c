// rd — the one reader every benchmark uses, so wcfs, the C reference server (cfuse) and tmpfs
// are read by exactly the same code. Times only the read loop (CLOCK_MONOTONIC) and prints
// one JSON line on stdout.
//
//   rd seq  <file> <bufsize> [drop]  read(2) from offset 0 to EOF into one buffer of bufsize.
//                                    drop: posix_fadvise(DONTNEED) first, which evicts the
//                                    file's clean page-cache pages (a no-op on tmpfs, whose
//                                    page cache is the file). "resident" = pages cached just
//                                    before the loop (mincore).
//   rd mmap <file> <reps>            per repetition: mmap(MAP_SHARED, PROT_READ), then either
//                                    touch one byte per 4 KiB page ("touch": page-fault cost) or
//                                    sum every 8-byte word ("sum": faults + memory bandwidth);
//                                    munmap. Only the loop is timed. Refuses (exit 3) unless the
//                                    whole file is in the page cache before each repetition.
//   rd res  <file> [drop]            pages of the file in the page cache (after DONTNEED if drop;
//                                    drop_ns = how long the posix_fadvise call took).
//   rd sum  <file>                   a 64-bit checksum of the contents (not timed; used to check
//                                    that all sources serve the same bytes).
//
// Built by bench/util.js: cc -O2 -o bench/out/rd bench/rd.c

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "rd: %s: %s\n", what, strerror(errno));
  exit(1);
}

static size_t file_size(int fd) {
  struct stat st;
  if (fstat(fd, &st) < 0) die("fstat");
  return (size_t)st.st_size;
}

/** Pages of fd's [0, size) in the page cache (mincore; does not fault anything in). */
static size_t resident(int fd, size_t size) {
  if (size == 0) return 0;
  void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) die("mmap (residency)");
  size_t n = (size + PAGE - 1) / PAGE, r = 0;
  unsigned char *vec = malloc(n);
  if (!vec) die("malloc");
  if (mincore(p, size, vec) < 0) die("mincore");
  for (size_t i = 0; i < n; i++) r += vec[i] & 1;
  free(vec);
  munmap(p, size);
  return r;
}

static int cmd_seq(const char *path, size_t bufsize, int drop) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) die(path);
  size_t size = file_size(fd);
  if (drop && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0) die("posix_fadvise");
  size_t res = resident(fd, size);
  char *buf = aligned_alloc(PAGE, bufsize);
  if (!buf) die("malloc");
  memset(buf, 0, bufsize); // fault the buffer in outside the timed loop
  uint64_t t0 = now_ns();
  size_t total = 0;
  for (;;) {
    ssize_t r = read(fd, buf, bufsize);
    if (r < 0) die("read");
    if (r == 0) break;
    total += (size_t)r;
  }
  uint64_t t1 = now_ns();
  printf("{\"bytes\":%zu,\"ns\":%llu,\"size\":%zu,\"resident\":%zu,\"pages\":%zu}\n", total,
         (unsigned long long)(t1 - t0), size, res, (size + PAGE - 1) / PAGE);
  close(fd);
  return total == size ? 0 : 4;
}

static void print_arr(const char *name, const uint64_t *a, int n) {
  printf("\"%s\":[", name);
  for (int i = 0; i < n; i++) printf("%s%llu", i ? "," : "", (unsigned long long)a[i]);
  printf("]");
}

static int cmd_mmap(const char *path, int reps) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) die(path);
  size_t size = file_size(fd) & ~(size_t)7;
  size_t pages = (size + PAGE - 1) / PAGE;
  uint64_t *touch = calloc(reps, sizeof *touch), *sum = calloc(reps, sizeof *sum);
  volatile uint64_t sink = 0;
  for (int r = 0; r < reps; r++) {
    size_t res = resident(fd, size); // before every repetition: something may evict meanwhile
    if (res != pages) {
      printf("{\"error\":\"not fully cached\",\"rep\":%d,\"resident\":%zu,\"pages\":%zu}\n", r, res, pages);
      return 3;
    }
    const unsigned char *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) die("mmap");
    uint64_t t0 = now_ns(), s = 0;
    for (size_t off = 0; off < size; off += PAGE) s += p[off];
    touch[r] = now_ns() - t0;
    sink += s;
    munmap((void *)p, size);

    const uint64_t *q = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (q == MAP_FAILED) die("mmap");
    t0 = now_ns();
    s = 0;
    for (size_t i = 0; i < size / 8; i++) s += q[i];
    sum[r] = now_ns() - t0;
    sink += s;
    munmap((void *)q, size);
  }
  printf("{\"size\":%zu,", size);
  print_arr("touch", touch, reps);
  printf(",");
  print_arr("sum", sum, reps);
  printf(",\"sink\":%llu}\n", (unsigned long long)(sink & 0xffff));
  close(fd);
  return 0;
}

static int cmd_res(const char *path, int drop) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) die(path);
  size_t size = file_size(fd);
  uint64_t t0 = now_ns();
  if (drop && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0) die("posix_fadvise");
  uint64_t t1 = now_ns();
  printf("{\"resident\":%zu,\"pages\":%zu,\"drop_ns\":%llu}\n", resident(fd, size), (size + PAGE - 1) / PAGE,
         (unsigned long long)(t1 - t0));
  close(fd);
  return 0;
}

static int cmd_sum(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) die(path);
  size_t bufsize = 1 << 20, total = 0;
  uint64_t *buf = aligned_alloc(PAGE, bufsize), h = 1469598103934665603ull;
  for (;;) {
    ssize_t r = read(fd, buf, bufsize);
    if (r < 0) die("read");
    if (r == 0) break;
    if (r % 8) memset((char *)buf + r, 0, 8 - r % 8);
    for (ssize_t i = 0; i < (r + 7) / 8; i++) h = (h ^ buf[i]) * 1099511628211ull;
    total += (size_t)r;
  }
  printf("{\"bytes\":%zu,\"sum\":\"%016llx\"}\n", total, (unsigned long long)h);
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 5 && strcmp(argv[1], "seq") == 0) return cmd_seq(argv[2], (size_t)atol(argv[3]), strcmp(argv[4], "drop") == 0);
  if (argc == 4 && strcmp(argv[1], "seq") == 0) return cmd_seq(argv[2], (size_t)atol(argv[3]), 0);
  if (argc == 4 && strcmp(argv[1], "mmap") == 0) return cmd_mmap(argv[2], atoi(argv[3]));
  if (argc >= 3 && strcmp(argv[1], "res") == 0) return cmd_res(argv[2], argc >= 4 && strcmp(argv[3], "drop") == 0);
  if (argc == 3 && strcmp(argv[1], "sum") == 0) return cmd_sum(argv[2]);
  fprintf(stderr, "usage: rd seq <file> <bufsize> [drop] | rd mmap <file> <reps> | rd res <file> [drop] | rd sum <file>\n");
  return 2;
}
