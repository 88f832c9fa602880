/*
 * A file sink's writer (see file.h): segments, their index, recovery after a crash.
 */
#include "sink/file.h"

#include "lib/sinkconf.h"
#include "lib/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TAIL_READ 4096

sl_fwriter_t *sl_fwriter_new(const char *directory, const char *topic, size_t topic_len,
                             const char *ext, int fsync_mode, uint64_t rotate_bytes,
                             uint64_t rotate_ms)
{
    /* '/' and a leading '.' are escaped, so a topic is one directory and never "." or "..". */
    size_t dl = strlen(directory);
    char *dir = sl_malloc(dl + 1 + topic_len * 3 + 1);
    memcpy(dir, directory, dl);
    size_t n = dl;
    dir[n++] = '/';
    for (size_t i = 0; i < topic_len; i++) {
        if (topic[i] == '/' || (i == 0 && topic[i] == '.')) {
            n += (size_t)sprintf(dir + n, "%%%02X", (unsigned char)topic[i]);
        } else {
            dir[n++] = topic[i];
        }
    }
    dir[n] = '\0';
    sl_fwriter_t *w = sl_calloc(1, sizeof(*w));
    w->dir = dir;
    w->ext = ext;
    w->fsync_mode = fsync_mode;
    w->rotate_bytes = rotate_bytes;
    w->rotate_ms = rotate_ms;
    w->fd = w->ifd = -1;
    return w;
}

static void set_what(sl_fwriter_t *w, const char *what)
{
    snprintf(w->what, sizeof(w->what), "%s", what);
}

static void close_files(sl_fwriter_t *w, int sync)
{
    if (w->fd >= 0) {
        if (sync)
            (void)fdatasync(w->fd);
        close(w->fd);
    }
    if (w->ifd >= 0) {
        if (sync)
            (void)fdatasync(w->ifd);
        close(w->ifd);
    }
    w->fd = w->ifd = -1;
}

/* mkdir -p of the writer's directory. */
static int make_dirs(sl_fwriter_t *w)
{
    char *p = w->dir;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        int rc = mkdir(p, 0755);
        *s = '/';
        if (rc != 0 && errno != EEXIST)
            return -errno;
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static int open_seg(sl_fwriter_t *w, uint32_t index, const char *ext, int flags)
{
    char name[32];
    char path[4096];
    if (sl_fileseg_name(index, ext, name, sizeof(name)) < 0 ||
        snprintf(path, sizeof(path), "%s/%s", w->dir, name) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    int fd = open(path, flags | O_CLOEXEC, 0644);
    return fd >= 0 ? fd : -errno;
}

/* The last committed record of segment `index` (1 if there is one) and, when `fix`, the index
 * file cut back to it. ifd is the open index. */
static int read_last(int ifd, sl_fileidx_rec_t *rec, uint64_t *isize, int fix)
{
    struct stat sb;
    if (fstat(ifd, &sb) != 0)
        return -errno;
    uint64_t size = (uint64_t)sb.st_size;
    uint64_t from = size > TAIL_READ ? size - TAIL_READ : 0;
    char buf[TAIL_READ];
    ssize_t got = pread(ifd, buf, (size_t)(size - from), (off_t)from);
    if (got < 0)
        return -errno;
    size_t skip = 0;
    if (from > 0) {
        /* Begin at a line start. */
        while (skip < (size_t)got && buf[skip] != '\n')
            skip++;
        skip++;
    }
    size_t end = 0;
    int found =
        skip <= (size_t)got && sl_fileidx_last(buf + skip, (size_t)got - skip, rec, &end) == 1;
    uint64_t keep = found ? from + skip + end : 0;
    if (fix && keep != size && ftruncate(ifd, (off_t)keep) != 0)
        return -errno;
    *isize = keep;
    return found;
}

/* The start-up scan: find the newest segment, cut a torn tail off it, learn the last committed
 * seq (from an older segment when the newest has none), and leave the newest open. */
static int recover(sl_fwriter_t *w)
{
    int rc = make_dirs(w);
    if (rc != 0) {
        set_what(w, "mkdir");
        return rc;
    }
    DIR *d = opendir(w->dir);
    if (d == NULL) {
        set_what(w, "opendir");
        return -errno;
    }
    uint32_t newest = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint32_t i = sl_fileseg_parse(de->d_name, w->ext);
        if (i == 0)
            i = sl_fileseg_parse(de->d_name, "idx");
        if (i > newest)
            newest = i;
    }
    closedir(d);
    w->have_last = 0;
    w->truncated_tail = 0;
    if (newest == 0) {
        w->index = 1;
        w->recovered = 1;
        return 0;
    }
    /* The newest segment: the index says how much of the data counts. */
    int fd = open_seg(w, newest, w->ext, O_RDWR | O_CREAT);
    if (fd < 0) {
        set_what(w, "open data");
        return fd;
    }
    int ifd = open_seg(w, newest, "idx", O_RDWR | O_CREAT);
    if (ifd < 0) {
        set_what(w, "open index");
        close(fd);
        return ifd;
    }
    sl_fileidx_rec_t rec;
    uint64_t isize = 0;
    int found = read_last(ifd, &rec, &isize, 1);
    struct stat sb;
    if (found < 0 || fstat(fd, &sb) != 0) {
        set_what(w, "read index");
        rc = found < 0 ? found : -errno;
        goto out_close;
    }
    uint64_t size = found ? rec.size : 0;
    if ((uint64_t)sb.st_size != size) {
        if ((uint64_t)sb.st_size < size) {
            /* The data is shorter than its commit record (a disk that lost a write under
             * fsync = never): keep what is there rather than invent bytes. */
            size = (uint64_t)sb.st_size;
        } else {
            w->truncated_tail = 1;
            if (ftruncate(fd, (off_t)size) != 0) {
                set_what(w, "truncate");
                rc = -errno;
                goto out_close;
            }
        }
    }
    if (found) {
        w->last = rec;
        w->have_last = 1;
    }
    /* The newest segment had no commit yet: the last seq is in an older one. */
    for (uint32_t i = newest - 1; !w->have_last && i >= 1 && newest - i <= 8; i--) {
        int ofd = open_seg(w, i, "idx", O_RDONLY);
        if (ofd < 0)
            continue;
        uint64_t osize;
        if (read_last(ofd, &rec, &osize, 0) == 1) {
            w->last = rec;
            w->have_last = 1;
        }
        close(ofd);
    }
    w->fd = fd;
    w->ifd = ifd;
    w->index = newest;
    w->size = size;
    w->isize = isize;
    w->recovered = 1;
    return 0;

out_close:
    close(ifd);
    close(fd);
    return rc;
}

static int open_next(sl_fwriter_t *w, uint64_t now_ms)
{
    int fd = open_seg(w, w->index, w->ext, O_WRONLY | O_CREAT | O_TRUNC);
    if (fd < 0) {
        set_what(w, "create data");
        return fd;
    }
    int ifd = open_seg(w, w->index, "idx", O_WRONLY | O_CREAT | O_TRUNC);
    if (ifd < 0) {
        set_what(w, "create index");
        close(fd);
        return ifd;
    }
    w->fd = fd;
    w->ifd = ifd;
    w->size = w->isize = 0;
    w->opened_ms = now_ms;
    return 0;
}

static int pwrite_all(int fd, const char *p, size_t n, uint64_t off)
{
    while (n > 0) {
        ssize_t k = pwrite(fd, p, n, (off_t)off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

int sl_fwriter_write(sl_fwriter_t *w, const sl_fjob_t *j)
{
    int rc;
    w->skipped = 0;
    w->truncated_tail = 0;
    if (!w->recovered) {
        close_files(w, 0);
        if ((rc = recover(w)) != 0)
            return rc;
        if (w->fd >= 0)
            w->opened_ms = j->now_ms;
    }
    /* Records the files already hold (written before a crash, not acknowledged) are skipped;
     * a gap line before them went with them. */
    uint32_t first = j->has_gap ? 1 : 0;
    uint32_t skip =
        sl_fileidx_skip(w->have_last ? &w->last : NULL, j->epoch, j->seqs + first, j->n - first);
    w->skipped = skip;
    size_t from = 0;
    if (skip > 0)
        from = j->ends[first + skip - 1];
    size_t to = j->n > 0 ? j->ends[j->n - 1] : 0;
    if (from == to)
        return 0;
    if (w->fd >= 0 &&
        sl_fileseg_rotate_due(w->size, w->opened_ms, j->now_ms, w->rotate_bytes, w->rotate_ms)) {
        close_files(w, w->fsync_mode != SL_FILE_SYNC_NEVER);
        w->index++;
    }
    if (w->fd < 0 && (rc = open_next(w, j->now_ms)) != 0)
        goto out_fail;
    if ((rc = pwrite_all(w->fd, j->buf + from, to - from, w->size)) != 0) {
        set_what(w, "write data");
        goto out_fail;
    }
    if (w->fsync_mode == SL_FILE_SYNC_BATCH && fdatasync(w->fd) != 0) {
        rc = -errno;
        set_what(w, "fsync data");
        goto out_fail;
    }
    sl_fileidx_rec_t rec;
    snprintf(rec.epoch, sizeof(rec.epoch), "%s", j->epoch);
    rec.seq = j->n > first ? j->seqs[j->n - 1] : (w->have_last ? w->last.seq : 0);
    rec.size = w->size + (to - from);
    char line[SL_FILEIDX_LINE_MAX];
    int ll = sl_fileidx_format(&rec, line, sizeof(line));
    if (ll < 0) {
        rc = -EINVAL;
        set_what(w, "index line");
        goto out_fail;
    }
    if ((rc = pwrite_all(w->ifd, line, (size_t)ll, w->isize)) != 0) {
        set_what(w, "write index");
        goto out_fail;
    }
    if (w->fsync_mode == SL_FILE_SYNC_BATCH && fdatasync(w->ifd) != 0) {
        rc = -errno;
        set_what(w, "fsync index");
        goto out_fail;
    }
    w->size = rec.size;
    w->isize += (uint64_t)ll;
    w->last = rec;
    w->have_last = 1;
    return 0;

out_fail:
    /* Whatever reached the files uncommitted is cut off by the scan before the next try. */
    close_files(w, 0);
    w->recovered = 0;
    return rc;
}

void sl_fwriter_free(sl_fwriter_t *w)
{
    if (w == NULL)
        return;
    close_files(w, w->fsync_mode != SL_FILE_SYNC_NEVER);
    free(w->dir);
    free(w);
}
