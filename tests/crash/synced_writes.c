/*
 * An LD_PRELOAD shim that keeps, for every file under $SYNCED_DIR, a journal
 * of the writes that were fsync'd: what a disk is guaranteed to hold after a
 * power cut. tests/tests/crash_consistency.rs rebuilds each file from its
 * journal after `kill -9` (so every write not yet fsync'd is dropped, the
 * worst a power cut may do) and checks the queue it finds there.
 *
 * Writes (write, pwrite, pwrite64) and truncations (ftruncate) of a tracked
 * file are held in memory per file; fsync or fdatasync of any descriptor of
 * that file appends them to `<file>.journal` (which this shim writes with
 * the real calls, and which the "disk" keeps whole: it stands for the
 * platter). An unlink is journaled at once: a deleted file may stay deleted.
 * SQLite's -shm file is shared memory, never needed after a crash, and is
 * not tracked.
 *
 * Journal record: 1 byte kind ('W' write, 'T' truncate, 'D' delete), u64
 * offset (or length), u64 length, then the bytes of a write.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FD 4096
#define MAX_FILES 64

struct pending {
    char kind;
    uint64_t off;
    uint64_t len;
    char *data;
};

struct file {
    char path[1024];
    struct pending *items;
    size_t n, cap;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct file files[MAX_FILES];
static int nfiles;
static int fd_file[MAX_FD]; /* index + 1 into files, 0: untracked */

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_close)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_unlink)(const char *);
static off_t (*real_lseek)(int, off_t, int);

static void init(void) {
    if (real_open) return;
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_close = dlsym(RTLD_NEXT, "close");
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
    real_lseek = dlsym(RTLD_NEXT, "lseek");
}

/* The tracked file for `path`, made on first sight; -1 if not tracked. */
static int file_for(const char *path) {
    const char *dir = getenv("SYNCED_DIR");
    if (!dir || !path) return -1;
    char full[1024];
    if (path[0] == '/') snprintf(full, sizeof full, "%s", path);
    else {
        char cwd[512];
        if (!getcwd(cwd, sizeof cwd)) return -1;
        snprintf(full, sizeof full, "%s/%s", cwd, path);
    }
    size_t dl = strlen(dir);
    if (strncmp(full, dir, dl) != 0 || full[dl] != '/') return -1;
    size_t pl = strlen(full);
    if ((pl > 4 && strcmp(full + pl - 4, "-shm") == 0) || (pl > 8 && strcmp(full + pl - 8, ".journal") == 0))
        return -1;
    for (int i = 0; i < nfiles; i++)
        if (strcmp(files[i].path, full) == 0) return i;
    if (nfiles == MAX_FILES) return -1;
    snprintf(files[nfiles].path, sizeof files[nfiles].path, "%s", full);
    return nfiles++;
}

static void track(int fd, const char *path) {
    if (fd < 0 || fd >= MAX_FD) return;
    pthread_mutex_lock(&lock);
    int f = file_for(path);
    fd_file[fd] = f < 0 ? 0 : f + 1;
    pthread_mutex_unlock(&lock);
}

static void hold(int fd, char kind, uint64_t off, const void *buf, uint64_t len) {
    if (fd < 0 || fd >= MAX_FD) return;
    pthread_mutex_lock(&lock);
    int f = fd_file[fd] - 1;
    if (f >= 0) {
        struct file *fl = &files[f];
        if (fl->n == fl->cap) {
            fl->cap = fl->cap ? fl->cap * 2 : 64;
            fl->items = realloc(fl->items, fl->cap * sizeof *fl->items);
        }
        struct pending *p = &fl->items[fl->n++];
        p->kind = kind;
        p->off = off;
        p->len = kind == 'W' ? len : 0;
        p->data = NULL;
        if (kind == 'W') {
            p->data = malloc(len ? len : 1);
            memcpy(p->data, buf, len);
        }
    }
    pthread_mutex_unlock(&lock);
}

static void append(const char *path, char kind, uint64_t off, uint64_t len, const char *data) {
    char j[1100];
    snprintf(j, sizeof j, "%s.journal", path);
    int fd = real_open(j, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) abort();
    char head[17];
    head[0] = kind;
    memcpy(head + 1, &off, 8);
    memcpy(head + 9, &len, 8);
    if (real_write(fd, head, 17) != 17) abort();
    for (uint64_t done = 0; done < len;) {
        ssize_t n = real_write(fd, data + done, len - done);
        if (n <= 0) abort();
        done += (uint64_t)n;
    }
    real_close(fd);
}

/* The writes of `fd`'s file held so far become durable. */
static void flush_synced(int fd) {
    if (fd < 0 || fd >= MAX_FD) return;
    pthread_mutex_lock(&lock);
    int f = fd_file[fd] - 1;
    if (f >= 0) {
        struct file *fl = &files[f];
        for (size_t i = 0; i < fl->n; i++) {
            struct pending *p = &fl->items[i];
            append(fl->path, p->kind, p->off, p->len, p->data);
            free(p->data);
        }
        fl->n = 0;
    }
    pthread_mutex_unlock(&lock);
}

/* A descriptor just opened: tracked, and truncated if asked. */
static int opened(int fd, const char *path, int flags) {
    if (fd >= 0) {
        track(fd, path);
        if (flags & O_TRUNC) hold(fd, 'T', 0, NULL, 0);
    }
    return fd;
}

#define MODE(flags, mode)                                                             \
    do {                                                                              \
        if ((flags) & (O_CREAT | O_TMPFILE)) {                                        \
            va_list a;                                                                \
            va_start(a, flags);                                                       \
            mode = va_arg(a, mode_t);                                                 \
            va_end(a);                                                                \
        }                                                                             \
    } while (0)

int open(const char *path, int flags, ...) {
    init();
    mode_t mode = 0;
    MODE(flags, mode);
    return opened(real_open(path, flags, mode), path, flags);
}

int open64(const char *path, int flags, ...) {
    init();
    mode_t mode = 0;
    MODE(flags, mode);
    return opened(real_open64(path, flags, mode), path, flags);
}

int openat(int dirfd, const char *path, int flags, ...) {
    init();
    mode_t mode = 0;
    MODE(flags, mode);
    int fd = real_openat(dirfd, path, flags, mode);
    /* Relative to another directory: not a path this shim can place. */
    if (dirfd != AT_FDCWD && path[0] != '/') return fd;
    return opened(fd, path, flags);
}

int close(int fd) {
    init();
    if (fd >= 0 && fd < MAX_FD) {
        pthread_mutex_lock(&lock);
        fd_file[fd] = 0;
        pthread_mutex_unlock(&lock);
    }
    return real_close(fd);
}

ssize_t write(int fd, const void *buf, size_t n) {
    init();
    off_t at = (fd >= 0 && fd < MAX_FD && fd_file[fd]) ? real_lseek(fd, 0, SEEK_CUR) : -1;
    ssize_t r = real_write(fd, buf, n);
    if (r > 0 && at >= 0) hold(fd, 'W', (uint64_t)at, buf, (uint64_t)r);
    return r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    init();
    ssize_t r = real_pwrite(fd, buf, n, off);
    if (r > 0) hold(fd, 'W', (uint64_t)off, buf, (uint64_t)r);
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    init();
    ssize_t r = real_pwrite64(fd, buf, n, off);
    if (r > 0) hold(fd, 'W', (uint64_t)off, buf, (uint64_t)r);
    return r;
}

int ftruncate(int fd, off_t len) {
    init();
    int r = real_ftruncate(fd, len);
    if (r == 0) hold(fd, 'T', (uint64_t)len, NULL, 0);
    return r;
}

int ftruncate64(int fd, off64_t len) {
    init();
    int r = real_ftruncate64(fd, len);
    if (r == 0) hold(fd, 'T', (uint64_t)len, NULL, 0);
    return r;
}

int fsync(int fd) {
    init();
    int r = real_fsync(fd);
    if (r == 0) flush_synced(fd);
    return r;
}

int fdatasync(int fd) {
    init();
    int r = real_fdatasync(fd);
    if (r == 0) flush_synced(fd);
    return r;
}

int unlink(const char *path) {
    init();
    int r = real_unlink(path);
    if (r == 0) {
        pthread_mutex_lock(&lock);
        int f = file_for(path);
        if (f >= 0) {
            for (size_t i = 0; i < files[f].n; i++) free(files[f].items[i].data);
            files[f].n = 0;
            append(files[f].path, 'D', 0, 0, NULL);
        }
        pthread_mutex_unlock(&lock);
    }
    return r;
}
