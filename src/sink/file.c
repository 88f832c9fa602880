/*
 * A file sink's writer (see file.h): segments, their index, recovery after a crash.
 */
#define _GNU_SOURCE /* sync_file_range */
#include "sink/file.h"

#include "lib/sinkconf.h"
#include "sink/batch.h"
#include "lib/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define TAIL_READ 4096
/* iovecs per pwritev for raw records (two a record; IOV_MAX is 1024 on Linux). */
#define IOV_BATCH 512
/* fsync = rotate: the kernel is asked to start writing a segment's data back each time this
 * much has been written since it was last asked (Linux), so that closing the segment waits
 * for little and the disk works while the sink does. A hint: it syncs nothing. */
#define WRITEBACK_BYTES (1u << 20)

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
    w->size = w->wb_from = size;
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
    w->size = w->isize = w->wb_from = 0;
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

/* pwritev until all of iov[0..n) is written (a short write resumes mid-vector). */
static int pwritev_all(int fd, struct iovec *iov, int n, uint64_t off)
{
    while (n > 0) {
        ssize_t k = pwritev(fd, iov, n, (off_t)off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        off += (uint64_t)k;
        while (n > 0 && (size_t)k >= iov->iov_len) {
            k -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + k;
            iov->iov_len -= (size_t)k;
        }
    }
    return 0;
}

/* Raw records straight from the payloads, IOV_BATCH iovecs a syscall. *off advances. */
static int write_raw(sl_fwriter_t *w, const sl_fjob_t *j, uint32_t from, uint64_t *off)
{
    struct iovec iov[IOV_BATCH];
    int n = 0;
    size_t bytes = 0;
    for (uint32_t i = from; i < j->n; i++) {
        const sl_msg_t *m = j->msgs[i];
        iov[n].iov_base = (void *)m->payload;
        iov[n++].iov_len = m->payload_len;
        iov[n].iov_base = (void *)"\n";
        iov[n++].iov_len = 1;
        bytes += m->payload_len + 1;
        if (n == IOV_BATCH || i + 1 == j->n) {
            int rc = pwritev_all(w->fd, iov, n, *off);
            if (rc != 0)
                return rc;
            *off += bytes;
            n = 0;
            bytes = 0;
        }
    }
    return 0;
}

/* Jsonl records, built into the scratch buffer and written each time it is full. */
static int write_jsonl(sl_fwriter_t *w, const sl_fjob_t *j, uint32_t from, uint64_t *off)
{
    size_t len = 0;
    for (uint32_t i = from; i < j->n; i++) {
        const sl_msg_t *m = j->msgs[i];
        size_t max = sl_batch_line_max(j->topic_len, m->event_len, m->payload_len);
        if (max > j->scratch_cap)
            return -EOVERFLOW; /* the caller sized the scratch for every record */
        if (len + max > j->scratch_cap) {
            int rc = pwrite_all(w->fd, j->scratch, len, *off);
            if (rc != 0)
                return rc;
            *off += len;
            len = 0;
        }
        len += sl_batch_put_line(j->scratch + len, j->topic, j->topic_len, j->epoch, m->seq,
                                 m->event, m->payload, m->payload_len);
    }
    if (len > 0) {
        int rc = pwrite_all(w->fd, j->scratch, len, *off);
        if (rc != 0)
            return rc;
        *off += len;
    }
    return 0;
}

static void start_writeback(sl_fwriter_t *w)
{
#ifdef __linux__
    if (w->fsync_mode != SL_FILE_SYNC_ROTATE || w->size < w->wb_from + WRITEBACK_BYTES)
        return;
    (void)sync_file_range(w->fd, (off_t)w->wb_from, (off_t)(w->size - w->wb_from),
                          SYNC_FILE_RANGE_WRITE);
    w->wb_from = w->size;
#else
    (void)w;
#endif
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
    const sl_fileidx_rec_t *last = w->have_last ? &w->last : NULL;
    uint32_t skip = 0;
    while (skip < j->n && sl_fileidx_written(last, j->epoch, j->msgs[skip]->seq))
        skip++;
    w->skipped = skip;
    int gap = j->gap != NULL && skip == 0;
    if (skip == j->n && !gap)
        return 0;
    if (w->fd >= 0 &&
        sl_fileseg_rotate_due(w->size, w->opened_ms, j->now_ms, w->rotate_bytes, w->rotate_ms)) {
        close_files(w, w->fsync_mode != SL_FILE_SYNC_NEVER);
        w->index++;
    }
    if (w->fd < 0 && (rc = open_next(w, j->now_ms)) != 0)
        goto out_fail;
    uint64_t off = w->size;
    if (gap) {
        if ((rc = pwrite_all(w->fd, j->gap, j->gap_len, off)) != 0) {
            set_what(w, "write data");
            goto out_fail;
        }
        off += j->gap_len;
    }
    rc = j->raw ? write_raw(w, j, skip, &off) : write_jsonl(w, j, skip, &off);
    if (rc != 0) {
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
    rec.seq = j->n > 0 ? j->msgs[j->n - 1]->seq : (w->have_last ? w->last.seq : 0);
    rec.size = off;
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
    start_writeback(w);
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
