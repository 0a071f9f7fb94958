/*
 * Power-cut shim (LD_PRELOAD). For files under $POWERCUT_DIR it keeps an undo journal in
 * $POWERCUT_JOURNAL so that, after the process is killed, test/helpers/powercut.ts can put
 * every watched file back to the state a power cut would have left: its content at its last
 * completed fsync/fdatasync, plus the writes made through O_DSYNC/O_SYNC descriptors.
 *
 * Records (little endian, one write(2) each, O_APPEND):
 *   u32 magic 'PCUT' | u8 type | u64 seq | u64 dev | u64 ino | i64 off | u64 len |
 *   i64 old_size | u32 path_len | path | len bytes
 *   type 'P': pre-image: the `len` bytes at `off` before a write (or a shrinking ftruncate),
 *             and the file size before it (old_size).
 *   type 'D': a write through a synchronous descriptor: the new bytes (durable on return).
 *   type 'S': a completed fsync/fdatasync/msync/sync_file_range(WAIT_AFTER): every record
 *             of this file with seq < off (the sequence when the sync began) is durable.
 * Only the first pre-image of a region since the file's last sync is needed; later ones in a
 * region already covered are skipped (a region is covered if a single earlier range holds it).
 *
 * POWERCUT_SYNC_DELAY_US: each watched sync first sleeps this long (a slower device), so that
 * a cut lands more often between the writes of a commit and their sync.
 * POWERCUT_SYNC_DELAY_FILE: a file read at each watched sync; while it exists and holds a
 * number, that many microseconds replace POWERCUT_SYNC_DELAY_US (the device slows down, or
 * recovers, while the process runs).
 * POWERCUT_FAKE_SYNC=1: syncs succeed without syncing nor writing 'S', and O_DSYNC writes are
 * not durable either (a drive that lies about flushes): the negative control.
 * POWERCUT_DROP_DSYNC=1: only writes through O_DSYNC/O_SYNC descriptors (LMDB's meta page)
 * lose their durability; they become ordinary writes that a later sync of the file covers.
 * fsync/fdatasync stay real. The second negative control.
 * POWERCUT_BOOT_ID: what /proc/sys/kernel/random/boot_id reads in this process. A power cut
 * is also a reboot: LMDB (lmdb-js's overlapping sync) trusts a meta page not yet marked
 * flushed only when it was written during the current boot, so each start after a cut must
 * see a new boot id, as it would after a real one.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char watch_dir[4096];
static size_t watch_len;
static int journal_fd = -1;
static int fake_sync;
static int drop_dsync;
static useconds_t sync_delay_us;
static const char *sync_delay_file;
static uint64_t seq = 1;

static ssize_t (*r_write)(int, const void *, size_t);
static ssize_t (*r_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*r_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*r_writev)(int, const struct iovec *, int);
static ssize_t (*r_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*r_pwritev2)(int, const struct iovec *, int, off_t, int);
static int (*r_ftruncate)(int, off_t);
static int (*r_fsync)(int);
static int (*r_fdatasync)(int);
static int (*r_msync)(void *, size_t, int);
static int (*r_sync_file_range)(int, off64_t, off64_t, unsigned int);
static int (*r_open)(const char *, int, ...);
static int (*r_open64)(const char *, int, ...);
static ssize_t (*r_read)(int, void *, size_t);
static int (*r_close)(int);
static const char *boot_id;
static volatile int boot_fd = -1;
static size_t boot_pos;
static const char BOOT_ID_PATH[] = "/proc/sys/kernel/random/boot_id";

/* Ranges written since the last sync, per file. */
struct range { off_t off; size_t len; };
struct file { dev_t dev; ino_t ino; struct range *r; size_t n, cap; };
static struct file *files;
static size_t nfiles;

static void init(void) {
  r_open = dlsym(RTLD_NEXT, "open");
  r_open64 = dlsym(RTLD_NEXT, "open64");
  r_read = dlsym(RTLD_NEXT, "read");
  r_close = dlsym(RTLD_NEXT, "close");
  boot_id = getenv("POWERCUT_BOOT_ID");
  if (boot_id && !*boot_id) boot_id = NULL;
  r_write = dlsym(RTLD_NEXT, "write");
  r_pwrite = dlsym(RTLD_NEXT, "pwrite");
  r_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
  r_writev = dlsym(RTLD_NEXT, "writev");
  r_pwritev = dlsym(RTLD_NEXT, "pwritev");
  r_pwritev2 = dlsym(RTLD_NEXT, "pwritev2");
  r_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
  r_fsync = dlsym(RTLD_NEXT, "fsync");
  r_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
  r_msync = dlsym(RTLD_NEXT, "msync");
  r_sync_file_range = dlsym(RTLD_NEXT, "sync_file_range");
  const char *d = getenv("POWERCUT_DIR"), *j = getenv("POWERCUT_JOURNAL"), *f = getenv("POWERCUT_FAKE_SYNC");
  fake_sync = f && strcmp(f, "1") == 0;
  const char *dd = getenv("POWERCUT_DROP_DSYNC");
  drop_dsync = dd && strcmp(dd, "1") == 0;
  const char *delay = getenv("POWERCUT_SYNC_DELAY_US");
  sync_delay_us = delay ? (useconds_t)strtoul(delay, NULL, 10) : 0;
  sync_delay_file = getenv("POWERCUT_SYNC_DELAY_FILE");
  if (sync_delay_file && !*sync_delay_file) sync_delay_file = NULL;
  if (!d || !j || !*d) return;
  if (!realpath(d, watch_dir)) { snprintf(watch_dir, sizeof watch_dir, "%s", d); }
  watch_len = strlen(watch_dir);
  while (watch_len > 1 && watch_dir[watch_len - 1] == '/') watch_dir[--watch_len] = 0;
  journal_fd = r_open(j, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (journal_fd < 0) { fprintf(stderr, "powercut: cannot open journal %s: %s\n", j, strerror(errno)); abort(); }
}

/* The watched file behind fd, or 0. */
static int watched(int fd, char *path, struct stat *st) {
  pthread_once(&once, init);
  if (journal_fd < 0 || fd == journal_fd) return 0;
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, 4095);
  if (n <= 0) return 0;
  path[n] = 0;
  if ((size_t)n <= watch_len || strncmp(path, watch_dir, watch_len) != 0 || path[watch_len] != '/') return 0;
  if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) return 0;
  return 1;
}

static struct file *file_of(const struct stat *st) {
  for (size_t i = 0; i < nfiles; i++)
    if (files[i].dev == st->st_dev && files[i].ino == st->st_ino) return &files[i];
  files = realloc(files, (nfiles + 1) * sizeof *files);
  if (!files) abort();
  files[nfiles] = (struct file){ st->st_dev, st->st_ino, NULL, 0, 0 };
  return &files[nfiles++];
}

static int covered(struct file *f, off_t off, size_t len) {
  for (size_t i = 0; i < f->n; i++)
    if (f->r[i].off <= off && (off_t)(f->r[i].off + f->r[i].len) >= (off_t)(off + len)) return 1;
  return 0;
}

static void cover(struct file *f, off_t off, size_t len) {
  if (f->n == f->cap) {
    f->cap = f->cap ? f->cap * 2 : 16;
    f->r = realloc(f->r, f->cap * sizeof *f->r);
    if (!f->r) abort();
  }
  f->r[f->n++] = (struct range){ off, len };
}

/* Appends one record (caller holds mu). */
static void record(char type, const struct stat *st, const char *path, int64_t off, uint64_t len, int64_t old_size, const void *bytes) {
  uint32_t plen = strlen(path);
  size_t total = 4 + 1 + 8 * 6 + 4 + plen + len;
  unsigned char *b = malloc(total), *p = b;
  if (!b) abort();
  uint32_t magic = 0x54554350; /* 'PCUT' */
  uint64_t s = seq++, dev = st->st_dev, ino = st->st_ino;
  memcpy(p, &magic, 4); p += 4;
  *p++ = (unsigned char)type;
  memcpy(p, &s, 8); p += 8;
  memcpy(p, &dev, 8); p += 8;
  memcpy(p, &ino, 8); p += 8;
  memcpy(p, &off, 8); p += 8;
  memcpy(p, &len, 8); p += 8;
  memcpy(p, &old_size, 8); p += 8;
  memcpy(p, &plen, 4); p += 4;
  memcpy(p, path, plen); p += plen;
  if (len) memcpy(p, bytes, len);
  size_t done = 0;
  while (done < total) {
    ssize_t w = r_write(journal_fd, b + done, total - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) { fprintf(stderr, "powercut: journal write failed: %s\n", strerror(errno)); abort(); }
    done += w;
  }
  free(b);
}

/* Before a write of len bytes at off (caller holds mu): records the pre-image if needed. */
static void before_write(int fd, const struct stat *st, const char *path, off_t off, size_t len) {
  struct file *f = file_of(st);
  off_t size = st->st_size;
  if (len == 0) return;
  if (off + (off_t)len <= size && covered(f, off, len)) return;
  size_t have = off < size ? (size_t)(size - off < (off_t)len ? size - off : (off_t)len) : 0;
  unsigned char *old = have ? malloc(have) : NULL;
  if (have) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int rfd = open(link, O_RDONLY | O_CLOEXEC);
    ssize_t got = rfd >= 0 ? pread(rfd, old, have, off) : -1;
    if (rfd >= 0) close(rfd);
    if (got != (ssize_t)have) { fprintf(stderr, "powercut: cannot read pre-image of %s\n", path); abort(); }
  }
  record('P', st, path, off, have, size, old);
  free(old);
  cover(f, off, len);
}

static int sync_fd(int fd, int flags) {
  if (flags & (O_DSYNC | O_SYNC)) return 1;
  (void)fd;
  return 0;
}

/* Gathers iov into one buffer (for 'D' records). */
static unsigned char *gather(const struct iovec *iov, int n, size_t *len) {
  size_t t = 0;
  for (int i = 0; i < n; i++) t += iov[i].iov_len;
  unsigned char *b = malloc(t ? t : 1), *p = b;
  if (!b) abort();
  for (int i = 0; i < n; i++) { memcpy(p, iov[i].iov_base, iov[i].iov_len); p += iov[i].iov_len; }
  *len = t;
  return b;
}

/* The common path of every write. off < 0: at the current position (or the end with O_APPEND). */
static ssize_t do_write(int fd, const struct iovec *iov, int n, off_t off, int rwf, ssize_t (*call)(void *), void *ctx) {
  char path[4096];
  struct stat st;
  if (!watched(fd, path, &st)) return call(ctx);
  int fl = fcntl(fd, F_GETFL);
  int durable = !fake_sync && !drop_dsync && (sync_fd(fd, fl) || (rwf & (RWF_DSYNC | RWF_SYNC)));
  pthread_mutex_lock(&mu);
  fstat(fd, &st); /* the size now, not before waiting for the lock */
  off_t at = off;
  if (at < 0) at = (fl & O_APPEND) ? st.st_size : lseek(fd, 0, SEEK_CUR);
  size_t len;
  unsigned char *bytes = gather(iov, n, &len);
  before_write(fd, &st, path, at, len);
  ssize_t r = call(ctx);
  if (r > 0 && durable) record('D', &st, path, at, (size_t)r, -1, bytes);
  free(bytes);
  pthread_mutex_unlock(&mu);
  return r;
}

struct wctx { int fd; const void *buf; size_t n; off_t off; const struct iovec *iov; int cnt; int flags; int kind; };
static ssize_t wcall(void *p) {
  struct wctx *c = p;
  switch (c->kind) {
    case 0: return r_write(c->fd, c->buf, c->n);
    case 1: return r_pwrite(c->fd, c->buf, c->n, c->off);
    case 2: return r_pwrite64(c->fd, c->buf, c->n, c->off);
    case 3: return r_writev(c->fd, c->iov, c->cnt);
    case 4: return r_pwritev(c->fd, c->iov, c->cnt, c->off);
    default: return r_pwritev2(c->fd, c->iov, c->cnt, c->off, c->flags);
  }
}

ssize_t write(int fd, const void *buf, size_t n) {
  pthread_once(&once, init);
  struct iovec v = { (void *)buf, n };
  struct wctx c = { fd, buf, n, -1, NULL, 0, 0, 0 };
  return do_write(fd, &v, 1, -1, 0, wcall, &c);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
  pthread_once(&once, init);
  struct iovec v = { (void *)buf, n };
  struct wctx c = { fd, buf, n, off, NULL, 0, 0, 1 };
  return do_write(fd, &v, 1, off, 0, wcall, &c);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
  pthread_once(&once, init);
  struct iovec v = { (void *)buf, n };
  struct wctx c = { fd, buf, n, off, NULL, 0, 0, 2 };
  return do_write(fd, &v, 1, off, 0, wcall, &c);
}
ssize_t writev(int fd, const struct iovec *iov, int cnt) {
  pthread_once(&once, init);
  struct wctx c = { fd, NULL, 0, -1, iov, cnt, 0, 3 };
  return do_write(fd, iov, cnt, -1, 0, wcall, &c);
}
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
  pthread_once(&once, init);
  struct wctx c = { fd, NULL, 0, off, iov, cnt, 0, 4 };
  return do_write(fd, iov, cnt, off, 0, wcall, &c);
}
ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off) { return pwritev(fd, iov, cnt, off); }
ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
  pthread_once(&once, init);
  struct wctx c = { fd, NULL, 0, off, iov, cnt, flags, 5 };
  return do_write(fd, iov, cnt, off == -1 ? -1 : off, flags, wcall, &c);
}

int ftruncate(int fd, off_t len) {
  pthread_once(&once, init);
  char path[4096];
  struct stat st;
  if (!watched(fd, path, &st)) return r_ftruncate(fd, len);
  pthread_mutex_lock(&mu);
  fstat(fd, &st);
  if (len != st.st_size) {
    /* Shrinking loses bytes: keep them; growing only changes the size. */
    if (len < st.st_size) {
      struct file *f = file_of(&st);
      f->n = 0; /* the coverage no longer matches the bytes; record the cut bytes whole */
      before_write(fd, &st, path, len, (size_t)(st.st_size - len));
    } else {
      record('P', &st, path, st.st_size, 0, st.st_size, NULL);
    }
  }
  int r = r_ftruncate(fd, len);
  pthread_mutex_unlock(&mu);
  return r;
}
int ftruncate64(int fd, off64_t len) { return ftruncate(fd, len); }

/* The delay of the next sync: POWERCUT_SYNC_DELAY_FILE's number while it has one, else POWERCUT_SYNC_DELAY_US. */
static useconds_t sync_delay(void) {
  if (!sync_delay_file) return sync_delay_us;
  int fd = r_open(sync_delay_file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sync_delay_us;
  char buf[32];
  ssize_t n = r_read(fd, buf, sizeof buf - 1);
  r_close(fd);
  if (n <= 0) return sync_delay_us;
  buf[n] = 0;
  char *end;
  unsigned long us = strtoul(buf, &end, 10);
  return end == buf ? sync_delay_us : (useconds_t)us;
}

/* A sync of fd: begins a new epoch (coverage cleared, sequence noted), then on success 'S'. */
static int do_sync(int fd, int (*call)(void *), void *ctx) {
  pthread_once(&once, init);
  char path[4096];
  struct stat st;
  if (!watched(fd, path, &st)) return call(ctx);
  if (fake_sync) return 0;
  pthread_mutex_lock(&mu);
  uint64_t begin = seq;
  struct file *f = file_of(&st);
  size_t saved_n = f->n;
  f->n = 0;
  pthread_mutex_unlock(&mu);
  useconds_t delay = sync_delay();
  if (delay) usleep(delay); /* a slower device: a wider window for the cut */
  int r = call(ctx);
  pthread_mutex_lock(&mu);
  f = file_of(&st); /* files may have moved (realloc) meanwhile */
  if (r == 0) record('S', &st, path, (int64_t)begin, 0, -1, NULL);
  else if (f->n == 0) f->n = saved_n; /* failed: nothing became durable */
  pthread_mutex_unlock(&mu);
  return r;
}

struct sctx { int fd; off64_t off, n; unsigned int flags; int kind; };
static int scall(void *p) {
  struct sctx *c = p;
  if (c->kind == 0) return r_fsync(c->fd);
  if (c->kind == 1) return r_fdatasync(c->fd);
  return r_sync_file_range(c->fd, c->off, c->n, c->flags);
}
int fsync(int fd) { pthread_once(&once, init); struct sctx c = { fd, 0, 0, 0, 0 }; return do_sync(fd, scall, &c); }
int fdatasync(int fd) { pthread_once(&once, init); struct sctx c = { fd, 0, 0, 0, 1 }; return do_sync(fd, scall, &c); }
int sync_file_range(int fd, off64_t off, off64_t n, unsigned int flags) {
  pthread_once(&once, init);
  struct sctx c = { fd, off, n, flags, 2 };
  /* Only a wait for completion makes anything durable (and even then not the metadata). */
  if (!(flags & SYNC_FILE_RANGE_WAIT_AFTER)) return r_sync_file_range(fd, off, n, flags);
  return do_sync(fd, scall, &c);
}
/* msync: the shim does not track writes through mappings; it passes through. */
int msync(void *addr, size_t len, int flags) {
  pthread_once(&once, init);
  if (fake_sync && journal_fd >= 0) return 0;
  return r_msync(addr, len, flags);
}

/* The boot id: open() of its /proc file is noted, read() of that descriptor gets POWERCUT_BOOT_ID. */
static int open_common(int (*real)(const char *, int, ...), const char *path, int flags, va_list ap) {
  mode_t mode = 0;
  if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) mode = va_arg(ap, mode_t);
  int fd = real(path, flags, mode);
  if (fd >= 0 && boot_id && strcmp(path, BOOT_ID_PATH) == 0) { boot_pos = 0; boot_fd = fd; }
  return fd;
}
int open(const char *path, int flags, ...) {
  pthread_once(&once, init);
  va_list ap;
  va_start(ap, flags);
  int fd = open_common(r_open, path, flags, ap);
  va_end(ap);
  return fd;
}
int open64(const char *path, int flags, ...) {
  pthread_once(&once, init);
  va_list ap;
  va_start(ap, flags);
  int fd = open_common(r_open64, path, flags, ap);
  va_end(ap);
  return fd;
}
ssize_t read(int fd, void *buf, size_t n) {
  pthread_once(&once, init);
  if (fd >= 0 && fd == boot_fd) {
    size_t l = strlen(boot_id) - boot_pos;
    if (l > n) l = n;
    memcpy(buf, boot_id + boot_pos, l);
    boot_pos += l;
    return (ssize_t)l;
  }
  return r_read(fd, buf, n);
}
int close(int fd) {
  pthread_once(&once, init);
  if (fd >= 0 && fd == boot_fd) boot_fd = -1;
  return r_close(fd);
}
