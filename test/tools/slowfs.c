/*
 * A preloaded library for the tests (LD_PRELOAD): makes chosen file calls slow, the way a
 * device busy with writeback or discards makes them, to show what waits behind them.
 *
 * SLOWFS_DIR names a directory the test owns. While SLOWFS_DIR/armed exists, fdatasync of a
 * file whose path ends in "/cursors" or "/cursors.tmp" (a lossless topic's cursor file, or the
 * one that replaces it) and unlink of a path
 * ending in ".seg" (a log segment) each sleep SLOWFS_DELAY_MS (default 5000) before doing the
 * call, appending a line to SLOWFS_DIR/started before the sleep and to SLOWFS_DIR/done after
 * the call, so the test can tell what ran before what without reading a clock. SLOWFS_ONLY
 * set to "cursors" or "seg" slows only that kind; with SLOWFS_FAIL set the slowed call fails
 * with EIO instead of being made.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), m = strlen(tail);
    return n >= m && memcmp(s + n - m, tail, m) == 0;
}

static void note(const char *dir, const char *file, const char *what)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    char line[PATH_MAX + 2];
    int n = snprintf(line, sizeof(line), "%s\n", what);
    if (n > 0)
        (void)!write(fd, line, (size_t)n);
    close(fd);
}

/* The directory when armed for this kind of call, else NULL. */
static const char *armed(const char *kind)
{
    const char *only = getenv("SLOWFS_ONLY");
    if (only != NULL && strcmp(only, kind) != 0)
        return NULL;
    const char *dir = getenv("SLOWFS_DIR");
    if (dir == NULL)
        return NULL;
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/armed", dir);
    return access(path, F_OK) == 0 ? dir : NULL;
}

static void pause_ms(void)
{
    const char *v = getenv("SLOWFS_DELAY_MS");
    long ms = v != NULL ? atol(v) : 5000;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int (*real_fdatasync)(int);
static int (*real_unlink)(const char *);

static int call_fdatasync(const void *arg)
{
    return real_fdatasync(*(const int *)arg);
}

static int call_unlink(const void *arg)
{
    return real_unlink((const char *)arg);
}

/* The slowed call: noted, paused, made (or failed), noted again. */
static int slowed(const char *dir, const char *path, int (*call)(const void *), const void *arg)
{
    note(dir, "started", path);
    pause_ms();
    int rc = getenv("SLOWFS_FAIL") != NULL ? (errno = EIO, -1) : call(arg);
    int saved = errno;
    note(dir, "done", path);
    errno = saved;
    return rc;
}

int fdatasync(int fd)
{
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *dir = armed("cursors");
    char link[64], path[PATH_MAX];
    ssize_t n = -1;
    if (dir != NULL) {
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        n = readlink(link, path, sizeof(path) - 1);
    }
    if (n <= 0)
        return real_fdatasync(fd);
    path[n] = '\0';
    if (!ends_with(path, "/cursors") && !ends_with(path, "/cursors.tmp"))
        return real_fdatasync(fd);
    return slowed(dir, path, call_fdatasync, &fd);
}

int unlink(const char *path)
{
    real_unlink = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
    const char *dir = armed("seg");
    if (dir == NULL || !ends_with(path, ".seg"))
        return real_unlink(path);
    return slowed(dir, path, call_unlink, path);
}
