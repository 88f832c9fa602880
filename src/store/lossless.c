/*
 * Lossless topics, the loop side (see lossless.h): the write pipeline, reading back, segment
 * deletion and quotas, durable cursors and their file, waiting publishers, and recovery.
 */
#include "store/lossless.h"

#include "lib/budget.h"
#include "core/hub.h"
#include "lib/log.h"
#include "lib/par.h"
#include "core/metrics.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A cursor save that failed is tried again this much later. */
#define CURSOR_RETRY_MS 1000
/* One write job writes at most this much; the rest waits for the next job. */
#define WRITE_BATCH_BYTES (4u << 20)
/* One read for a reader brings back at most this much. */
#define READ_BATCH_BYTES (256u << 10)
/* … and for a frameless reader (a sink, see read_bytes) up to this much: its messages are bare
 * (no SSE frame) and it goes through a backlog in jobs of up to batch_max_bytes, so larger
 * reads mean fewer reads and fewer, larger jobs. 4 MiB reads cost more than they saved: eight
 * streams held about 64 MiB of read buffers and 50 MB of blocks, every byte of them faulted in
 * and zeroed once, and a read's records left the cache before they were decoded. */
#define READ_BATCH_MAX (1u << 20)
/* Paths are data_dir (bounded by the config) plus short names. */
#define PATH_CAP 8192
/* The high-water mark of issued seqs is raised this far ahead of the head (see lossless.h). */
#define RESERVE_BLOCK ((uint64_t)65536)

static uv_loop_t *ll_loop;
static char *ll_data_dir;
static uint64_t ll_total_disk; /* every log's bytes: the server's disk_quota */
static const sl_config_t *ll_cfg;
static sl_list_t all_logs = {&all_logs, &all_logs}; /* for the server-wide quota */
/* Freed read buffers kept for the next reads (see "read buffers"). */
#define RBUF_POOL 4
#define RBUF_MIN ((size_t)512 << 10)
#define BMEM_POOL 8

static struct {
    void *v[RBUF_POOL];
    size_t n, size; /* buffers kept, and their size */
    int closed;     /* no log left: nothing is kept */
    /* The memory of freed blocks of messages (their arrays of sl_msg_t: 184 bytes a message,
     * about 830 KB for a 1 MiB read of 230-byte records), kept the same way. */
    void *mem[BMEM_POOL];
    size_t mem_size[BMEM_POOL];
    size_t nmem;
} rbuf;

static void ll_update(sl_lossless_t *ll);
static void start_write(sl_lossless_t *ll);
static void save_cursors(sl_lossless_t *ll);

/* ---- the housekeeping lane ------------------------------------------------------------
 *
 * Cursor-file saves and segment deletes go to the thread pool through this lane, which lets
 * at most LANE_MAX of them run at once and keeps the rest in order. Each can hold its thread
 * for as long as the device takes: a save ends in fdatasync, which waits for a cache flush
 * behind everything being written back, and a delete on a filesystem mounted with `discard`
 * waits for the discard of the whole segment (both 25-170 ms each, seen while a file sink
 * drained 260 MB). Queued straight to the pool, eight topics' saves and deletes took every
 * thread at once, and the log's reads and writes and the file sinks' jobs, which need the
 * pool to make progress, waited behind them with the CPUs idle. Neither kind is urgent: a
 * save carries what was acknowledged while it waited (cursors_dirty), and a delete only frees
 * space. Deletes go before saves (they are rarer, and a delete left for the end of a drain
 * makes the shutdown wait for its discard); they never overtake the save that allows them,
 * since only saved checkpoints let a segment go (sl_cursor_t.saved). Invariant: a job waits in
 * the lane only while LANE_MAX run, so the completion of one of them always starts it, and the
 * loop cannot end with a job left waiting. */
#define LANE_MAX 2

typedef struct lane_job {
    sl_list_t link;
    uv_work_t req;
    uv_work_cb work;
    uv_after_work_cb done; /* frees the job */
} lane_job_t;

static struct {
    sl_list_t deletes, saves;
    unsigned running;
    int closing; /* shutting down: deletes are left to the next start (ll_shutdown) */
} lane = {{&lane.deletes, &lane.deletes}, {&lane.saves, &lane.saves}, 0, 0};

static void lane_after(uv_work_t *req, int status);

static void lane_run(void)
{
    while (lane.running < LANE_MAX) {
        sl_list_t *q = !sl_list_empty(&lane.deletes) ? &lane.deletes : &lane.saves;
        if (sl_list_empty(q))
            return;
        lane_job_t *lj = sl_container_of(q->next, lane_job_t, link);
        sl_list_remove(&lj->link);
        lane.running++;
        int rc = uv_queue_work(ll_loop, &lj->req, lj->work, lane_after);
        if (rc != 0) {
            lane.running--;
            lj->done(&lj->req, rc);
        }
    }
}

static void lane_after(uv_work_t *req, int status)
{
    lane_job_t *lj = sl_container_of(req, lane_job_t, req);
    lane.running--;
    lj->done(req, status);
    lane_run();
}

/* Runs work(&lj->req) on the pool when the lane has room (deletes first), then done on the
 * loop. */
static void lane_queue(lane_job_t *lj, int is_delete, uv_work_cb work, uv_after_work_cb done)
{
    lj->work = work;
    lj->done = done;
    sl_list_insert_tail(is_delete ? &lane.deletes : &lane.saves, &lj->link);
    lane_run();
}

void sl_ll_setup(uv_loop_t *loop, const char *data_dir)
{
    ll_loop = loop;
    free(ll_data_dir);
    ll_data_dir = data_dir ? sl_strdup(data_dir) : NULL;
}

/* A read for r completed (or the write it waited for). */
static void notify_ready(sl_reader_t *r)
{
    sl_reader_notify_ready(r);
}

/* ---- directories and files ------------------------------------------------------------ */

/* A topic's directory name under data_dir/topics: "t-", a readable part, '-' and 32 hex
 * digits of the SHA-256 of the exact name. The readable part is the name's first
 * DIR_READABLE bytes with '/' and '~' as '_'; it is only for people: two names that differ
 * only there or only in letter case (which a case-insensitive file system would not tell
 * apart) differ in the hash. So the name is at most 2 + DIR_READABLE + 1 + 32 bytes whatever
 * max_topic_name is, and one safe path component. The full name is kept in the directory's
 * `meta` file, which is what recovery reads. */
#define DIR_READABLE 40
_Static_assert(SL_LL_DIR_NAME_CAP == 2 + DIR_READABLE + 1 + 32 + 1, "directory name size");

void sl_ll_dir_name(const char *name, size_t len, char *out)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)name, len, md);
    size_t l = 0;
    out[l++] = 't';
    out[l++] = '-';
    for (size_t i = 0; i < len && i < DIR_READABLE; i++)
        out[l++] = name[i] == '/' || name[i] == '~' ? '_' : name[i];
    out[l++] = '-';
    for (size_t i = 0; i < 16; i++)
        l += (size_t)snprintf(out + l, 3, "%02x", md[i]);
    out[l] = '\0';
}

static char *topic_dir(const char *name)
{
    char dn[SL_LL_DIR_NAME_CAP];
    sl_ll_dir_name(name, strlen(name), dn);
    size_t n = strlen(ll_data_dir) + 16 + sizeof(dn);
    char *d = sl_malloc(n);
    snprintf(d, n, "%s/topics/%s", ll_data_dir, dn);
    return d;
}

static int mkdir_p(const char *path)
{
    char *tmp = sl_strdup(path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
            int e = -errno;
            free(tmp);
            return e;
        }
        *p = '/';
    }
    int rc = mkdir(tmp, 0755) != 0 && errno != EEXIST ? -errno : 0;
    free(tmp);
    return rc;
}

/* Writes `data` to dir/name.tmp, synced when `sync`: its descriptor, or -errno. */
static int tmp_write(const char *dir, const char *name, const char *data, size_t len, int sync)
{
    char tmp[PATH_CAP];
    snprintf(tmp, sizeof(tmp), "%s/%s.tmp", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    int rc = sl_spill_append(fd, 0, data, len, sync);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    return fd;
}

/* Renames dir/name.tmp (written and synced) to dir/name: 0 or -errno. The directory's fsync,
 * which makes the rename durable, is the caller's (dir_sync). */
static int tmp_rename(const char *dir, const char *name)
{
    char tmp[PATH_CAP], dst[PATH_CAP];
    snprintf(tmp, sizeof(tmp), "%s/%s.tmp", dir, name);
    snprintf(dst, sizeof(dst), "%s/%s", dir, name);
    return rename(tmp, dst) != 0 ? -errno : 0;
}

static void dir_sync(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
}

/* Writes `data` to dir/name through a temporary file, fsync and rename, so a crash leaves the
 * old or the new file, never a mix. */
static int write_file_atomic(const char *dir, const char *name, const char *data, size_t len)
{
    int fd = tmp_write(dir, name, data, len, 1);
    if (fd < 0)
        return fd;
    close(fd);
    int rc = tmp_rename(dir, name);
    if (rc == 0)
        dir_sync(dir);
    return rc;
}

static sl_lossless_t *ll_new(sl_topic_t *t, char *dir)
{
    sl_lossless_t *ll = sl_bcalloc(sizeof(*ll));
    ll->topic = t;
    ll->dir = dir;
    ll->fd = -1;
    ll->marked = 1; /* until a write has made sure no clean-shutdown record is left */
    rbuf.closed = 0;
    sl_list_init(&ll->cursors);
    sl_list_init(&ll->waiters);
    sl_list_insert_tail(&all_logs, &ll->link);
    t->ll = ll;
    t->backend = &sl_ll_backend;
    return ll;
}

static sl_seg_t *seg_add(sl_lossless_t *ll, uint64_t base)
{
    if (ll->nsegs == ll->capsegs) {
        ll->capsegs = ll->capsegs ? ll->capsegs * 2 : 8;
        ll->segs = sl_realloc(ll->segs, ll->capsegs * sizeof(*ll->segs));
    }
    sl_seg_t *s = &ll->segs[ll->nsegs++];
    memset(s, 0, sizeof(*s));
    s->base = base;
    s->last = base - 1;
    sl_metrics.log.segments++;
    return s;
}

/* The log's first seq on disk, for readers' floors. */
static void update_floor(sl_lossless_t *ll)
{
    uint64_t f = UINT64_MAX;
    for (size_t i = 0; i < ll->nsegs; i++) {
        if (ll->segs[i].last >= ll->segs[i].base) {
            f = ll->segs[i].base;
            break;
        }
    }
    /* Nothing written yet, but messages appended: the log holds them as well (a reader behind
     * the ring waits for their write, sl_ll_fetch). Without this a first burst larger than the
     * ring, before its write completed, looked evicted and readers got a gap on a lossless
     * topic. */
    if (f == UINT64_MAX && ll->topic->head_seq > ll->written_seq)
        f = ll->written_seq + 1;
    ll->topic->disk_floor = f;
}

int sl_ll_new(sl_topic_t *t)
{
    sl_lossless_t *ll = ll_new(t, topic_dir(t->name));
    seg_add(ll, t->head_seq + 1);
    return 0;
}

/* meta: the topic's full name, its epoch, the high-water mark of issued seqs, and the ranges
 * of ids declared lost (`lost=FROM-TO`, at most SL_TOPIC_LOSSES_MAX lines of at most 47
 * bytes). Names are at most 1024 bytes (max_topic_name), so it fits META_CAP. */
#define META_CAP (1200 + SL_TOPIC_LOSSES_MAX * 48)

/* Formats ll's meta into buf (META_CAP bytes); returns its length, or -ENAMETOOLONG. */
static int format_meta(const sl_lossless_t *ll, uint64_t reserved, char *buf)
{
    const sl_topic_t *t = ll->topic;
    int n = snprintf(buf, META_CAP, "name=%s\nepoch=%s\nreserved=%" PRIu64 "\n%s", t->name,
                     t->epoch_hex, reserved, ll->external ? "external=1\n" : "");
    for (uint32_t i = 0; n >= 0 && n < META_CAP && i < t->nlosses; i++)
        n += snprintf(buf + n, META_CAP - (size_t)n, "lost=%" PRIu64 "-%" PRIu64 "\n",
                      t->losses[i].from, t->losses[i].to);
    if (n < 0 || n >= META_CAP)
        return -ENAMETOOLONG;
    return n;
}

static int write_meta(const sl_lossless_t *ll, const char *dir, uint64_t reserved)
{
    char meta[META_CAP];
    int n = format_meta(ll, reserved, meta);
    if (n < 0)
        return n;
    return write_file_atomic(dir, "meta", meta, (size_t)n);
}

/* Makes the log's directory and meta file the first time something must be kept (a publish
 * or a durable cursor). Synchronous on the loop, as it is once per topic. A directory that
 * already holds a meta file belongs to a log recovery did not load (or, were SHA-256 to
 * collide, to another topic); it is never written over. On failure the log is broken. */
static int make_on_disk(sl_lossless_t *ll)
{
    if (ll->on_disk)
        return 0;
    if (ll->broken)
        return SL_EDISK;
    sl_topic_t *t = ll->topic;
    char path[PATH_CAP];
    snprintf(path, sizeof(path), "%s/topics", ll_data_dir);
    int rc = mkdir_p(path);
    if (rc == 0 && mkdir(ll->dir, 0755) != 0) {
        rc = -errno;
        snprintf(path, sizeof(path), "%s/meta", ll->dir);
        if (rc == -EEXIST && access(path, F_OK) != 0)
            rc = 0; /* made, then a crash before its meta: nothing in it is ours to keep */
    }
    uint64_t reserved = t->head_seq + RESERVE_BLOCK;
    if (rc == 0)
        rc = write_meta(ll, ll->dir, reserved);
    if (rc != 0) {
        SL_ERROR("lossless log cannot be created", "topic=%s dir=%s error=%s", t->name, ll->dir,
                 strerror(-rc));
        ll->broken = 1;
        return SL_EDISK;
    }
    ll->reserved = reserved;
    ll->losses_gen = t->losses_gen;
    ll->on_disk = 1;
    SL_INFO("lossless topic created", "topic=%s dir=%s", t->name, ll->dir);
    return 0;
}

/* Raising the high-water mark on the thread pool, well before it is reached. */
typedef struct meta_job {
    uv_work_t req;
    sl_lossless_t *ll;
    char *dir;
    char *text;
    size_t len;
    uint64_t reserved;
    int rc;
} meta_job_t;

static void meta_work(uv_work_t *req)
{
    meta_job_t *j = req->data;
    j->rc = write_file_atomic(j->dir, "meta", j->text, j->len);
}

static void meta_done(uv_work_t *req, int status)
{
    meta_job_t *j = req->data;
    sl_lossless_t *ll = j->ll;
    (void)status;
    ll->reserving = 0;
    if (j->rc != 0) {
        SL_ERROR("lossless meta write failed; the topic refuses publishes", "topic=%s error=%s",
                 ll->topic->name, strerror(-j->rc));
        sl_metrics.log.write_errors++;
        ll->broken = 1;
    } else if (j->reserved > ll->reserved) {
        ll->reserved = j->reserved;
    }
    free(j->dir);
    free(j->text);
    free(j);
    ll_update(ll);
}

static void start_reserve(sl_lossless_t *ll, uint64_t reserved)
{
    char meta[META_CAP];
    int n = format_meta(ll, reserved, meta);
    if (n < 0)
        return; /* cannot happen: names are bounded; the mark is raised synchronously then */
    meta_job_t *j = sl_calloc(1, sizeof(*j));
    j->req.data = j;
    j->ll = ll;
    j->dir = sl_strdup(ll->dir);
    j->text = sl_strndup(meta, (size_t)n);
    j->len = (size_t)n;
    j->reserved = reserved;
    ll->reserving = 1;
    uv_queue_work(ll_loop, &j->req, meta_work, meta_done);
}

/* Writes meta with the high-water mark `mark`, synchronously; a failure breaks the topic. */
static int write_mark(sl_lossless_t *ll, const sl_topic_t *t, uint64_t mark)
{
    int rc = write_meta(ll, ll->dir, mark);
    if (rc != 0) {
        SL_ERROR("lossless meta write failed; the topic refuses publishes", "topic=%s error=%s",
                 t->name, strerror(-rc));
        sl_metrics.log.write_errors++;
        ll->broken = 1;
        ll_update(ll);
        return rc;
    }
    ll->reserved = mark;
    return 0;
}

int sl_ll_prepare(sl_topic_t *t, size_t n)
{
    sl_lossless_t *ll = t->ll;
    if (ll->broken || make_on_disk(ll) != 0)
        return SL_EDISK;
    uint64_t need = t->head_seq + n;
    if (t->losses_gen != ll->losses_gen) {
        /* Ids were declared lost: meta records them before the message past them is given
         * its id, so that readers are told across a restart too. Rare (a source's loss), so
         * written here; after a mark being raised, which would otherwise land last. */
        if (ll->reserving)
            return SL_EFULL;
        uint64_t mark = need > ll->reserved ? need + RESERVE_BLOCK : ll->reserved;
        if (write_mark(ll, t, mark) != 0)
            return SL_EDISK;
        ll->losses_gen = t->losses_gen;
    }
    if (need > ll->reserved) {
        /* Wait for the write in flight rather than race it: the larger mark must land last. */
        if (ll->reserving)
            return SL_EFULL;
        /* A burst (or a huge batch) outran the mark: raise it now, before any id is given. */
        if (write_mark(ll, t, need + RESERVE_BLOCK) != 0)
            return SL_EDISK;
    } else if (ll->reserved - need < RESERVE_BLOCK / 2 && !ll->reserving && ll_loop != NULL) {
        start_reserve(ll, need + RESERVE_BLOCK);
    }
    return 0;
}

int sl_ll_idle(const sl_topic_t *t)
{
    const sl_lossless_t *ll = t->ll;
    return !ll->on_disk && ll->ncursors == 0 && ll->npending == 0 && ll->job == NULL &&
           sl_list_empty(&ll->waiters);
}

/* ---- cursors --------------------------------------------------------------------------- */

int sl_ll_cursor_name_valid(const char *s, size_t len)
{
    if (len < 1 || len > 64)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* The lowest checkpoint of the cursors (only of those that hold a full quota, when `holding`:
 * a yielding cursor does not). */
static uint64_t min_checkpoint(const sl_lossless_t *ll, int *any, int holding)
{
    uint64_t m = UINT64_MAX;
    *any = 0;
    const sl_list_t *it;
    sl_list_each(it, &ll->cursors)
    {
        const sl_cursor_t *c = sl_container_of(it, sl_cursor_t, link);
        if (holding && c->yields)
            continue;
        uint64_t ck = c->has_saved ? c->saved : c->checkpoint;
        if (ck < m)
            m = ck;
        *any = 1;
    }
    return m;
}

sl_cursor_t *sl_ll_cursor(sl_topic_t *t, const char *name, size_t len, int create)
{
    sl_lossless_t *ll = t->ll;
    sl_list_t *it;
    sl_list_each(it, &ll->cursors)
    {
        sl_cursor_t *c = sl_container_of(it, sl_cursor_t, link);
        if (strlen(c->name) == len && memcmp(c->name, name, len) == 0)
            return c;
    }
    if (!create)
        return NULL;
    sl_cursor_t *c = sl_bcalloc(sizeof(*c));
    memcpy(c->name, name, len);
    c->idle_since_ms = sl_now_ms();
    sl_list_insert_tail(&ll->cursors, &c->link);
    ll->ncursors++;
    sl_metrics.log.cursors++;
    return c;
}

size_t sl_ll_cursors_owned(const char *owner)
{
    size_t n = 0;
    const sl_list_t *it, *ct;
    sl_list_each(it, &all_logs)
    {
        const sl_lossless_t *ll = sl_container_of(it, sl_lossless_t, link);
        sl_list_each(ct, &ll->cursors)
        {
            if (strcmp(sl_container_of(ct, sl_cursor_t, link)->owner, owner) == 0)
                n++;
        }
    }
    return n;
}

void sl_ll_cursor_use(sl_cursor_t *c, int delta)
{
    c->nconn = (uint32_t)((int)c->nconn + delta);
    c->idle_since_ms = c->nconn == 0 ? sl_now_ms() : 0;
}

typedef struct unlink_job {
    lane_job_t lj;
    int err;
    char path[];
} unlink_job_t;

static void unlink_work(uv_work_t *req)
{
    unlink_job_t *j = sl_container_of(req, unlink_job_t, lj.req);
    j->err = unlink(j->path) == 0 ? 0 : errno;
}

static void unlink_done(uv_work_t *req, int status)
{
    unlink_job_t *j = sl_container_of(req, unlink_job_t, lj.req);
    int err = status < 0 ? -status : j->err;
    if (err != 0 && err != ENOENT && status != UV_ECANCELED)
        SL_WARN("segment delete failed", "path=%s error=%s", j->path, strerror(err));
    free(j);
}

/* Deletes a file in the housekeeping lane (synchronously when there is no loop: tests,
 * shutdown). */
static void unlink_later(const char *path)
{
    if (ll_loop == NULL) {
        unlink(path);
        return;
    }
    if (lane.closing)
        return; /* the next start deletes it (see ll_shutdown) */
    size_t n = strlen(path) + 1;
    unlink_job_t *j = sl_malloc(sizeof(*j) + n);
    memcpy(j->path, path, n);
    lane_queue(&j->lj, 1, unlink_work, unlink_done);
}

/* Deletes segments nobody needs: all of them below every cursor's checkpoint (when there are
 * cursors), and the oldest ones while a quota is exceeded and no holding cursor needs them (a
 * yielding cursor's reader then finds a gap). The segment being written is never deleted. */
static void trim(sl_lossless_t *ll)
{
    const sl_topic_conf_t *conf = &ll->topic->conf;
    int any, hany;
    uint64_t ck = min_checkpoint(ll, &any, 0);
    uint64_t hck = min_checkpoint(ll, &hany, 1);
    while (ll->nsegs > 1) {
        sl_seg_t *s = &ll->segs[0];
        int passed = any && s->last <= ck;
        int over = (conf->disk_quota && ll->disk_bytes > conf->disk_quota) ||
                   (ll_cfg && ll_cfg->disk_quota && ll_total_disk > ll_cfg->disk_quota);
        if (!passed && !(over && (!hany || s->last <= hck)))
            break;
        char path[PATH_CAP];
        sl_spill_seg_path(path, sizeof(path), ll->dir, s->base);
        unlink_later(path);
        SL_DEBUG("segment deleted", "topic=%s base=%" PRIu64 " last=%" PRIu64, ll->topic->name,
                 s->base, s->last);
        ll->trimmed = s->base;
        ll->disk_bytes -= s->len;
        ll_total_disk -= s->len;
        sl_metrics.log.disk_bytes -= s->len;
        sl_metrics.log.segments--;
        free(s->index.v);
        memmove(ll->segs, ll->segs + 1, (ll->nsegs - 1) * sizeof(*ll->segs));
        ll->nsegs--;
    }
    update_floor(ll);
}

int sl_ll_ack(sl_topic_t *t, sl_cursor_t *c, uint64_t seq)
{
    if (seq > t->head_seq)
        return SL_EBADID;
    if (seq <= c->checkpoint)
        return 0;
    c->checkpoint = seq;
    save_cursors(t->ll);
    ll_update(t->ll);
    return 0;
}

void sl_ll_cursor_created(sl_topic_t *t)
{
    save_cursors(t->ll);
    ll_update(t->ll);
}

void sl_ll_cursor_delete(sl_topic_t *t, sl_cursor_t *c)
{
    sl_lossless_t *ll = t->ll;
    /* Readers using it keep reading, no longer durably. */
    sl_list_t *it;
    sl_list_each(it, &t->readers)
    {
        sl_reader_t *r = sl_container_of(it, sl_reader_t, link);
        if (r->cursor == c)
            r->cursor = NULL;
    }
    sl_list_remove(&c->link);
    ll->ncursors--;
    sl_metrics.log.cursors--;
    sl_bfree(c, sizeof(*c));
    save_cursors(ll);
    ll_update(ll);
}

char *sl_ll_cursors_json(const sl_topic_t *t, size_t *len)
{
    const sl_lossless_t *ll = t->ll;
    size_t cap = 64 + ll->ncursors * 280, l = 0;
    char *buf = sl_malloc(cap);
    l += (size_t)snprintf(buf, cap, "{\"cursors\":[");
    uint64_t now = sl_now_ms();
    const sl_list_t *it;
    int first = 1;
    sl_list_each(it, &ll->cursors)
    {
        const sl_cursor_t *c = sl_container_of(it, sl_cursor_t, link);
        char id[SL_ID_MAX + 2] = "null";
        if (c->checkpoint > 0) {
            id[0] = '"';
            size_t n = sl_id_format(id + 1, t->epoch, c->checkpoint);
            id[n + 1] = '"';
            id[n + 2] = '\0';
        }
        l += (size_t)snprintf(buf + l, cap - l,
                              "%s{\"name\":\"%s\",\"checkpoint\":%s,\"connected\":%u,"
                              "\"idle_ms\":%" PRIu64 ",\"owner\":%s%s%s}",
                              first ? "" : ",", c->name, id, c->nconn,
                              c->nconn ? 0 : now - c->idle_since_ms, c->owner[0] ? "\"" : "",
                              c->owner[0] ? c->owner : "null", c->owner[0] ? "\"" : "");
        first = 0;
    }
    l += (size_t)snprintf(buf + l, cap - l, "]}\n");
    *len = l;
    return buf;
}

/* ---- the cursor file ------------------------------------------------------------------
 *
 * <topic dir>/cursors holds the checkpoints of the topic's durable cursors as text lines
 * "name checkpoint [owner]". It is written at every checkpoint (for a draining sink, every
 * 100 ms per topic), so what one write costs matters. The file is two slots of equal size (a
 * power of two, at least 4 KiB); a slot is one header line
 *
 *     #sluice-cursors 2 size=<8 hex> gen=<16 hex> len=<8 hex> sum=<16 hex>\n
 *
 * then `len` bytes of text, padded with newlines to the slot's size. `sum` is the first 8
 * bytes of the SHA-256 of the header up to "sum=" and of the text. A checkpoint overwrites in
 * place the slot that does not hold the newest generation, with the next generation, and
 * fdatasyncs it: no new inode, no rename, no directory fsync, and the file's size does not
 * change, so fdatasync has no metadata to commit. Recovery takes the slot with a matching sum
 * and the highest generation: a write torn by a crash spoils only the slot it was writing,
 * and the other still holds the previous checkpoint. So a crash loses at most the checkpoint
 * being written, as with the rename.
 *
 * The file is made (and made again, larger, when the text outgrows a slot, or after a failed
 * write) as a whole through a temporary file, fsync, rename and a directory fsync: slot 0
 * holds the state, slot 1 only padding. A file that does not start with the header is the
 * plain-text format of earlier versions: it is read as such and replaced at the next save.
 */
#define CKPT_MAGIC "#sluice-cursors 2 "
#define CKPT_HDR_LEN 87                 /* the header line, newline included */
#define CKPT_SUM_AT (CKPT_HDR_LEN - 17) /* where the 16 hex digits of sum start */
#define CKPT_MIN_SLOT 4096u
#define CKPT_MAX_FILE (64u << 20) /* larger is not ours: refused at recovery */

static uint64_t ckpt_sum(const char *hdr, const char *text, size_t len)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (c == NULL) /* out of memory, like sl_malloc */
        abort();
    if (EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(c, hdr, CKPT_SUM_AT) != 1 || EVP_DigestUpdate(c, text, len) != 1 ||
        EVP_DigestFinal_ex(c, md, &mdlen) != 1 || mdlen < 8)
        abort(); /* SHA-256 is always there: only memory can be missing */
    EVP_MD_CTX_free(c);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | md[i];
    return v;
}

/* Fills the slot (size bytes, size >= CKPT_HDR_LEN + len) with the header, text and padding. */
static void ckpt_slot_format(char *slot, size_t size, uint64_t gen, const char *text, size_t len)
{
    char hdr[CKPT_HDR_LEN + 1];
    snprintf(hdr, sizeof(hdr),
             CKPT_MAGIC "size=%08x gen=%016" PRIx64 " len=%08x sum=", (unsigned)size, gen,
             (unsigned)len);
    uint64_t sum = ckpt_sum(hdr, text, len);
    snprintf(hdr + CKPT_SUM_AT, sizeof(hdr) - CKPT_SUM_AT, "%016" PRIx64 "\n", sum);
    memcpy(slot, hdr, CKPT_HDR_LEN);
    memcpy(slot + CKPT_HDR_LEN, text, len);
    memset(slot + CKPT_HDR_LEN + len, '\n', size - CKPT_HDR_LEN - len);
}

/* Parses a fixed-width hex field of n digits at p; -1 on anything else. */
static int ckpt_hex(const char *p, int n, uint64_t *v)
{
    uint64_t x = 0;
    for (int i = 0; i < n; i++) {
        char ch = p[i];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        x = x << 4 | (uint64_t)d;
    }
    *v = x;
    return 0;
}

/* A slot of `size` bytes: 0 and its generation and text when its header and sum are intact,
 * -1 otherwise. The slot comes from disk: every field is checked before it is used. */
static int ckpt_slot_parse(const char *slot, size_t size, uint64_t *gen, const char **text,
                           size_t *len)
{
    static const char magic[] = CKPT_MAGIC;
    const size_t m = sizeof(magic) - 1;
    uint64_t sz, g, l, sum;
    if (size < CKPT_HDR_LEN || memcmp(slot, magic, m) != 0 || memcmp(slot + m, "size=", 5) != 0 ||
        ckpt_hex(slot + m + 5, 8, &sz) != 0 || memcmp(slot + m + 13, " gen=", 5) != 0 ||
        ckpt_hex(slot + m + 18, 16, &g) != 0 || memcmp(slot + m + 34, " len=", 5) != 0 ||
        ckpt_hex(slot + m + 39, 8, &l) != 0 || memcmp(slot + m + 47, " sum=", 5) != 0 ||
        ckpt_hex(slot + CKPT_SUM_AT, 16, &sum) != 0 || slot[CKPT_HDR_LEN - 1] != '\n')
        return -1;
    if (sz != size || l > size - CKPT_HDR_LEN)
        return -1;
    if (ckpt_sum(slot, slot + CKPT_HDR_LEN, (size_t)l) != sum)
        return -1;
    *gen = g;
    *text = slot + CKPT_HDR_LEN;
    *len = (size_t)l;
    return 0;
}

/* What a cursor file's bytes hold. */
typedef struct ckpt_view {
    const char *text; /* the cursor lines */
    size_t len;
    size_t slot_size; /* 0: not the slotted format */
    int slot;         /* the slot text is from */
    uint64_t gen;
} ckpt_view_t;

/* Parses a cursor file's n bytes: 0 (slotted, the newest intact slot in v), 1 (the older plain
 * text: all of it in v), or -1 (slotted, and no slot is intact). */
static int ckpt_file_parse(const char *buf, size_t n, ckpt_view_t *v)
{
    memset(v, 0, sizeof(*v));
    if (n < sizeof(CKPT_MAGIC) - 1 || memcmp(buf, CKPT_MAGIC, sizeof(CKPT_MAGIC) - 1) != 0) {
        v->text = buf;
        v->len = n;
        return 1;
    }
    /* Both slots have the file's half as their size: slot 0's header may be the torn one. */
    size_t size = n / 2;
    if (n % 2 != 0 || size < CKPT_HDR_LEN)
        return -1;
    int found = -1;
    for (int s = 0; s < 2; s++) {
        uint64_t g;
        const char *t;
        size_t l;
        if (ckpt_slot_parse(buf + (size_t)s * size, size, &g, &t, &l) != 0)
            continue;
        if (found < 0 || g > v->gen) {
            found = s;
            v->gen = g;
            v->text = t;
            v->len = l;
        }
    }
    if (found < 0)
        return -1;
    v->slot_size = size;
    v->slot = found;
    return 0;
}

/* One save of the cursor file, planned on the loop (ckpt_plan), done by ckpt_write on the
 * thread pool or, at shutdown, synchronously. */
typedef struct cursor_job {
    lane_job_t lj;
    sl_lossless_t *ll;
    char *dir;
    char *text;
    size_t len;
    size_t size;  /* slot size */
    int in_place; /* overwrite `slot` of the existing file; else make the file anew */
    int slot;     /* the slot written (0 when made anew) */
    uint64_t gen; /* the generation written */
    int *keep_fd; /* exit: a slot written in place is not synced, its descriptor left here */
    int rc;
} cursor_job_t;

static char *cursors_text(const sl_lossless_t *ll, size_t *len)
{
    size_t cap = 16 + ll->ncursors * 170, l = 0;
    char *buf = sl_malloc(cap);
    const sl_list_t *it;
    sl_list_each(it, &ll->cursors)
    {
        /* name (<= 64), checkpoint (<= 20 digits), owner (64 hex, only when owned) */
        const sl_cursor_t *c = sl_container_of(it, sl_cursor_t, link);
        l += (size_t)snprintf(buf + l, cap - l, "%s %" PRIu64 "%s%s\n", c->name, c->checkpoint,
                              c->owner[0] ? " " : "", c->owner);
    }
    *len = l;
    return buf;
}

/* Fills j (text, slot, generation, mode) from ll's cursors and what is known of its file. */
static void ckpt_plan(sl_lossless_t *ll, cursor_job_t *j)
{
    j->text = cursors_text(ll, &j->len);
    j->gen = ll->ckpt_gen + 1;
    sl_list_t *it;
    sl_list_each(it, &ll->cursors)
    {
        sl_cursor_t *c = sl_container_of(it, sl_cursor_t, link);
        c->plan_ckpt = c->checkpoint;
        c->plan_gen = j->gen;
        if (!c->has_saved) {
            /* From now on a crash can bring it back, at this checkpoint at the lowest: the
             * deletes must not pass it before the save ends. */
            c->saved = c->checkpoint;
            c->has_saved = 1;
        }
    }
    if (ll->ckpt_size != 0 && CKPT_HDR_LEN + j->len <= ll->ckpt_size) {
        j->in_place = 1;
        j->size = ll->ckpt_size;
        j->slot = 1 - ll->ckpt_slot;
        return;
    }
    /* Room for the text to double before the file is made again. */
    size_t size = CKPT_MIN_SLOT;
    while (size < 2 * (CKPT_HDR_LEN + j->len))
        size *= 2;
    j->in_place = 0;
    j->size = size;
    j->slot = 0;
}

/* Writes the planned save: 0 or a negative errno. Runs on the thread pool. An in-place save
 * finding the file gone or of another size makes it anew instead (nothing was written yet). */
static int ckpt_write(cursor_job_t *j)
{
    char *buf;
    if (j->in_place) {
        char path[PATH_CAP];
        snprintf(path, sizeof(path), "%s/cursors", j->dir);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_size == 2 * (uint64_t)j->size) {
            buf = sl_malloc(j->size);
            ckpt_slot_format(buf, j->size, j->gen, j->text, j->len);
            int rc =
                sl_spill_append(fd, (uint64_t)j->slot * j->size, buf, j->size, j->keep_fd == NULL);
            free(buf);
            if (rc == 0 && j->keep_fd != NULL)
                *j->keep_fd = fd;
            else
                close(fd);
            return rc;
        }
        if (fd >= 0)
            close(fd);
        j->in_place = 0;
        j->slot = 0;
        size_t size = CKPT_MIN_SLOT;
        while (size < 2 * (CKPT_HDR_LEN + j->len))
            size *= 2;
        j->size = size;
    }
    buf = sl_malloc(2 * j->size);
    ckpt_slot_format(buf, j->size, j->gen, j->text, j->len);
    memset(buf + j->size, '\n', j->size);
    int rc = write_file_atomic(j->dir, "cursors", buf, 2 * j->size);
    free(buf);
    return rc;
}

/* What a finished save teaches about the file: the next one goes to the other slot; after a
 * failure, the file is made anew (the slot written may hold anything; the other is intact). */
static void ckpt_learn(sl_lossless_t *ll, const cursor_job_t *j)
{
    ll->ckpt_gen = j->gen;
    if (j->rc != 0) {
        ll->ckpt_size = 0;
        /* The file may hold anything now: deletes go by the checkpoints in memory until a
         * save succeeds (the sweep retries), so a save that keeps failing (a full disk) cannot
         * keep the deletes that would make room from running; a crash meanwhile may bring
         * back a checkpoint below the floor, as before there were saved checkpoints. */
        sl_list_t *it;
        sl_list_each(it, &ll->cursors)
        {
            sl_container_of(it, sl_cursor_t, link)->has_saved = 0;
        }
        return;
    }
    ll->ckpt_size = j->size;
    ll->ckpt_slot = j->slot;
    /* What the file now holds for the cursors the save included (see sl_cursor_t.saved). */
    sl_list_t *it;
    sl_list_each(it, &ll->cursors)
    {
        sl_cursor_t *c = sl_container_of(it, sl_cursor_t, link);
        if (c->plan_gen == j->gen) {
            c->saved = c->plan_ckpt;
            c->has_saved = 1;
        }
    }
}

static void cursor_work(uv_work_t *req)
{
    cursor_job_t *j = sl_container_of(req, cursor_job_t, lj.req);
    j->rc = ckpt_write(j);
}

static void cursor_done(uv_work_t *req, int status)
{
    cursor_job_t *j = sl_container_of(req, cursor_job_t, lj.req);
    if (status < 0)
        j->rc = status;
    sl_lossless_t *ll = j->ll;
    int failed = j->rc != 0;
    if (failed && (ll == NULL || ll->cursors_failures == 0))
        SL_ERROR("cursor file write failed, trying again every second", "dir=%s error=%s", j->dir,
                 strerror(-j->rc));
    else if (!failed && ll != NULL && ll->cursors_failures > 0)
        SL_INFO("cursor file written again", "dir=%s failures=%" PRIu32, j->dir,
                ll->cursors_failures);
    if (ll != NULL)
        ckpt_learn(ll, j);
    free(j->text);
    free(j->dir);
    free(j);
    if (ll == NULL)
        return;
    ll->cursors_busy = 0;
    if (failed) {
        /* Tried again by the sweep a second later (or by the next acknowledgement), not in a
         * loop: a broken disk fails every save at once. */
        ll->cursors_failures++;
        ll->cursors_dirty = 1;
        ll->cursors_retry_ms = sl_now_ms() + CURSOR_RETRY_MS;
    } else {
        ll->cursors_failures = 0;
        ll->cursors_retry_ms = 0;
        if (ll->cursors_dirty)
            save_cursors(ll);
    }
    ll_update(ll); /* segments the saved checkpoints passed may go now */
}

static void save_cursors(sl_lossless_t *ll)
{
    if (make_on_disk(ll) != 0)
        return; /* logged; the log is broken */
    if (ll->cursors_busy || ll_loop == NULL) {
        ll->cursors_dirty = 1;
        return;
    }
    ll->cursors_dirty = 0;
    ll->cursors_retry_ms = 0;
    ll->cursors_busy = 1;
    cursor_job_t *j = sl_calloc(1, sizeof(*j));
    j->ll = ll;
    j->dir = sl_strdup(ll->dir);
    ckpt_plan(ll, j);
    lane_queue(&j->lj, 0, cursor_work, cursor_done);
}

/* The same save, synchronously (shutdown: the loop has ended). With keep_fd, a slot written
 * in place is left unsynced, its descriptor in *keep_fd (the exit's batch syncs it). */
static int save_cursors_now(sl_lossless_t *ll, int *keep_fd)
{
    cursor_job_t j;
    memset(&j, 0, sizeof(j));
    j.dir = ll->dir;
    j.keep_fd = keep_fd;
    ckpt_plan(ll, &j);
    j.rc = ckpt_write(&j);
    ckpt_learn(ll, &j);
    free(j.text);
    return j.rc;
}

/* ---- the clean-shutdown record ---------------------------------------------------------
 *
 * A clean shutdown leaves <topic dir>/clean: what the start-up scan would learn from each
 * segment file, so that the next start need not read and check every record (for a large
 * backlog, most of the start-up time). Text lines:
 *
 *     sluice-clean 1
 *     seg <base> <len> <last> <index entries>      one a segment file, base ascending
 *     <seq> <off>                                  its sparse index, one a line
 *     sum <8 hex>                                  CRC32C of every byte before this line
 *
 * Start-up trusts it only when the sum matches, every field is consistent, and the segment
 * files present are exactly those listed, each of the listed length; anything else (no record
 * after a crash, a torn or foreign file, a segment deleted or grown since) means the full
 * scan, as after a crash, and the record is removed. Segments only grow, by appends, and
 * shrink only by the scan's repair, so a segment of the recorded length holds the recorded
 * records. The first write after a start removes the record before it touches a segment
 * (write_work; ll->marked), so after a crash there is none, and a grown segment would not
 * match anyway. Records trusted this way were not checked in this process, so a read-back
 * checks their CRC (sl_seg_t.verified is 0); one that fails is cut out with a gap, and the log
 * is marked suspect, so that no record is written at exit and the next start scans.
 */
#define CLEAN_NAME "clean"
#define CLEAN_MAGIC "sluice-clean 1\n"
#define CLEAN_SUM_LEN 13           /* "sum " + 8 hex digits + newline */
#define CLEAN_MAX_FILE (64u << 20) /* larger is not ours */

/* One segment as the record describes it. */
typedef struct clean_seg {
    uint64_t base, len, last;
    sl_index_t index;
} clean_seg_t;

/* Removes dir's clean-shutdown record: 0 (also when there was none) or -errno. Blocking. */
static int clean_remove(const char *dir)
{
    char path[PATH_CAP + 8];
    snprintf(path, sizeof(path), "%s/" CLEAN_NAME, dir);
    if (unlink(path) != 0 && errno != ENOENT)
        return -errno;
    return 0;
}

static void clean_put(char **buf, size_t *cap, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void clean_put(char **buf, size_t *cap, size_t *len, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < *cap - *len) {
            *len += (size_t)n;
            return;
        }
        *cap *= 2;
        *buf = sl_realloc(*buf, *cap);
    }
}

/* The record of ll's segments (malloc'ed, *len bytes); the caller has checked that every
 * segment file holds exactly its `len` bytes. A segment without a file (an empty one not
 * written yet) is left out. */
static char *clean_format(const sl_lossless_t *ll, const uint8_t *has_file, size_t *len)
{
    size_t cap = 4096, l = 0;
    char *buf = sl_malloc(cap);
    clean_put(&buf, &cap, &l, "%s", CLEAN_MAGIC);
    if (ll->trimmed > 0)
        clean_put(&buf, &cap, &l, "trimmed %" PRIu64 "\n", ll->trimmed);
    for (size_t i = 0; i < ll->nsegs; i++) {
        const sl_seg_t *s = &ll->segs[i];
        if (!has_file[i])
            continue;
        clean_put(&buf, &cap, &l, "seg %" PRIu64 " %" PRIu64 " %" PRIu64 " %zu\n", s->base, s->len,
                  s->last, s->index.n);
        for (size_t k = 0; k < s->index.n; k++)
            clean_put(&buf, &cap, &l, "%" PRIu64 " %" PRIu64 "\n", s->index.v[k].seq,
                      s->index.v[k].off);
    }
    clean_put(&buf, &cap, &l, "sum %08" PRIx32 "\n", sl_crc32c(0, buf, l));
    *len = l;
    return buf;
}

/* A decimal number of at most 19 digits at *p, followed by `sep`; moves *p past the sep. */
static int clean_num(const char **p, const char *end, char sep, uint64_t *v)
{
    const char *q = *p;
    uint64_t x = 0;
    int digits = 0;
    while (q < end && *q >= '0' && *q <= '9' && digits < 19) {
        x = x * 10 + (uint64_t)(*q++ - '0');
        digits++;
    }
    if (digits == 0 || q >= end || *q != sep)
        return -1;
    *p = q + 1;
    *v = x;
    return 0;
}

static void clean_segs_free(clean_seg_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i].index.v);
    free(v);
}

/* Parses a clean-shutdown record: 0 and the segments (*out, *nout; the caller frees them with
 * clean_segs_free), or -1 when it is damaged or inconsistent in any way. */
static int clean_parse(const char *buf, size_t n, clean_seg_t **out, size_t *nout,
                       uint64_t *trimmed)
{
    size_t ml = sizeof(CLEAN_MAGIC) - 1;
    *out = NULL;
    *nout = 0;
    *trimmed = 0;
    if (n < ml + CLEAN_SUM_LEN || memcmp(buf, CLEAN_MAGIC, ml) != 0)
        return -1;
    const char *sum = buf + n - CLEAN_SUM_LEN;
    if (memcmp(sum, "sum ", 4) != 0 || sum[CLEAN_SUM_LEN - 1] != '\n' || sum[-1] != '\n')
        return -1;
    uint32_t want = 0;
    for (int i = 4; i < 12; i++) {
        char c = sum[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        want = want << 4 | (uint32_t)d;
    }
    if (sl_crc32c(0, buf, (size_t)(sum - buf)) != want)
        return -1;
    clean_seg_t *v = NULL;
    size_t nv = 0, cap = 0;
    const char *p = buf + ml, *end = sum;
    if (end - p >= 8 && memcmp(p, "trimmed ", 8) == 0) {
        p += 8;
        if (clean_num(&p, end, '\n', trimmed) != 0 || *trimmed == 0)
            return -1;
    }
    while (p < end) {
        uint64_t nidx;
        clean_seg_t c;
        memset(&c, 0, sizeof(c));
        if (end - p < 4 || memcmp(p, "seg ", 4) != 0)
            goto out_bad;
        p += 4;
        if (clean_num(&p, end, ' ', &c.base) != 0 || clean_num(&p, end, ' ', &c.len) != 0 ||
            clean_num(&p, end, ' ', &c.last) != 0 || clean_num(&p, end, '\n', &nidx) != 0)
            goto out_bad;
        /* An index line takes at least 4 bytes: no count the file cannot hold is allocated. */
        if (c.base == 0 || (nv > 0 && c.base <= v[nv - 1].base) || c.last < c.base - 1 ||
            nidx > (uint64_t)(end - p) / 4 || (c.len == 0) != (nidx == 0) ||
            (nidx == 0 && c.last != c.base - 1))
            goto out_bad;
        if (nv == cap) {
            cap = cap ? cap * 2 : 8;
            v = sl_realloc(v, cap * sizeof(*v));
        }
        v[nv++] = c;
        clean_seg_t *s = &v[nv - 1];
        for (uint64_t k = 0; k < nidx; k++) {
            uint64_t seq, off;
            if (clean_num(&p, end, ' ', &seq) != 0 || clean_num(&p, end, '\n', &off) != 0)
                goto out_bad;
            /* As written: the first record at offset 0, then ascending seqs and offsets
             * inside the segment's length, none past its last seq. */
            if (k == 0 ? off != 0 || seq < s->base
                       : seq <= s->index.v[k - 1].seq || off <= s->index.v[k - 1].off)
                goto out_bad;
            if (off >= s->len || seq > s->last)
                goto out_bad;
            sl_index_add(&s->index, seq, off);
        }
    }
    *out = v;
    *nout = nv;
    return 0;

out_bad:
    clean_segs_free(v, nv);
    return -1;
}

/* Writes ll's clean-shutdown record at exit, when every segment file holds exactly what the
 * log knows of it; otherwise removes any old one. Blocking (the loop has ended). With keep_fd,
 * the record is left written and unsynced in its temporary file, the descriptor in *keep_fd:
 * the exit's batch syncs and renames it. */
static void clean_write(sl_lossless_t *ll, int *keep_fd)
{
    uint8_t *has_file = sl_calloc(ll->nsegs ? ll->nsegs : 1, 1);
    int ok = 1;
    for (size_t i = 0; i < ll->nsegs && ok; i++) {
        char path[PATH_CAP];
        struct stat st;
        sl_spill_seg_path(path, sizeof(path), ll->dir, ll->segs[i].base);
        if (stat(path, &st) == 0) {
            has_file[i] = 1;
            ok = (uint64_t)st.st_size == ll->segs[i].len;
        } else {
            ok = errno == ENOENT && ll->segs[i].len == 0;
        }
    }
    if (!ok) {
        SL_INFO("segments differ from the log's account, no clean-shutdown record", "dir=%s",
                ll->dir);
        free(has_file);
        (void)clean_remove(ll->dir);
        return;
    }
    size_t len;
    char *text = clean_format(ll, has_file, &len);
    int rc;
    if (keep_fd != NULL) {
        rc = tmp_write(ll->dir, CLEAN_NAME, text, len, 0);
        if (rc >= 0) {
            *keep_fd = rc;
            rc = 0;
        }
    } else {
        rc = write_file_atomic(ll->dir, CLEAN_NAME, text, len);
    }
    if (rc != 0)
        SL_WARN("clean-shutdown record not written; the next start scans the log",
                "dir=%s error=%s", ll->dir, strerror(-rc));
    free(text);
    free(has_file);
}

/* Reads n bytes from the start of fd into buf; returns how many it got (short on an error or
 * an early end of file). */
static size_t read_whole(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

/* The clean-shutdown record of dir, when it matches the segment files found (bases[0..nb),
 * ascending): 0 and one clean_seg_t a base (*out, freed with clean_segs_free). Else -1, and a
 * record that exists is removed (the start scans). Start-up only. Files older than every
 * segment on record, none newer than the segment last deleted from the log (its `trimmed`
 * line), are ones a shutdown left undeleted (ll_shutdown): *stale is set to their number, and
 * the record describes bases[*stale..nb). */
static int clean_load(const char *dir, const uint64_t *bases, size_t nb, clean_seg_t **out,
                      size_t *stale)
{
    char path[PATH_CAP + 8];
    snprintf(path, sizeof(path), "%s/" CLEAN_NAME, dir);
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    const char *why = NULL;
    char *buf = NULL;
    clean_seg_t *v = NULL;
    size_t nv = 0;
    uint64_t trimmed = 0;
    if (fstat(fd, &st) != 0 || st.st_size <= 0 || (uint64_t)st.st_size > CLEAN_MAX_FILE) {
        why = "size";
        goto out_bad;
    }
    size_t n = (size_t)st.st_size;
    buf = sl_malloc(n);
    size_t got = read_whole(fd, buf, n);
    if (got != n || clean_parse(buf, n, &v, &nv, &trimmed) != 0) {
        why = "damaged";
        goto out_bad;
    }
    /* Files the record does not list pass only as the oldest, none newer than the newest
     * segment deleted from the log before the record was written: a segment recovery skipped
     * (unreadable) is not in it either, and must not be taken for one. */
    if (nv > nb || (nv == 0 && nb > 0) || (nb > nv && bases[nb - nv - 1] > trimmed)) {
        why = "segment files";
        goto out_bad;
    }
    *stale = nb - nv;
    bases += *stale;
    for (size_t i = 0; i < nv; i++) {
        char sp[PATH_CAP];
        sl_spill_seg_path(sp, sizeof(sp), dir, bases[i]);
        if (v[i].base != bases[i] || stat(sp, &st) != 0 || (uint64_t)st.st_size != v[i].len) {
            why = "segment files";
            goto out_bad;
        }
    }
    close(fd);
    free(buf);
    *out = v;
    return 0;

out_bad:
    close(fd);
    free(buf);
    clean_segs_free(v, nv);
    if (strcmp(why, "segment files") == 0)
        SL_INFO("clean-shutdown record does not match the segments, scanning", "dir=%s", dir);
    else
        SL_WARN("clean-shutdown record damaged, scanning", "dir=%s reason=%s", dir, why);
    if (unlink(path) != 0 && errno != ENOENT)
        SL_WARN("clean-shutdown record not removed", "path=%s error=%s", path, strerror(errno));
    return -1;
}

/* ---- waiting publishers ---------------------------------------------------------------- */

void sl_ll_wait(sl_waiter_t *w, sl_topic_t *t, int kind, uint64_t seq, uint64_t deadline_ms)
{
    w->kind = kind;
    w->seq = seq;
    w->deadline_ms = deadline_ms;
    w->topic = t;
    sl_list_insert_tail(&t->ll->waiters, &w->link);
    sl_metrics.log.waiting++;
}

void sl_ll_unwait(sl_waiter_t *w)
{
    if (w->kind == 0)
        return;
    sl_list_remove(&w->link);
    w->kind = 0;
    sl_metrics.log.waiting--;
}

/* Wakes the waiters that may go on: for room when the log is not full, for durability when
 * their seq is durable, all of them when the log is broken (it will never be written again),
 * and any whose deadline passed. Each is unlinked before its callback, which may wait again
 * (it then waits in a fresh list and is not seen twice). */
static int wake_status(const sl_lossless_t *ll, const sl_waiter_t *w, uint64_t now_ms)
{
    if (w->kind == SL_WAIT_DURABLE && w->seq <= ll->durable_seq)
        return SL_WAKE_OK;
    if (ll->broken)
        return SL_WAKE_FAILED;
    if (w->kind == SL_WAIT_ROOM && !ll->full)
        return SL_WAKE_OK;
    if (w->deadline_ms && now_ms >= w->deadline_ms)
        return SL_WAKE_TIMEOUT;
    return -1;
}

static void wake(sl_lossless_t *ll, uint64_t now_ms)
{
    sl_list_t batch;
    sl_list_init(&batch);
    sl_list_t *it, *tmp;
    sl_list_each_safe(it, tmp, &ll->waiters)
    {
        sl_waiter_t *w = sl_container_of(it, sl_waiter_t, link);
        if (wake_status(ll, w, now_ms) >= 0) {
            sl_list_remove(&w->link);
            sl_list_insert_tail(&batch, &w->link);
        }
    }
    while (!sl_list_empty(&batch)) {
        sl_waiter_t *w = sl_container_of(batch.next, sl_waiter_t, link);
        int status = wake_status(ll, w, now_ms);
        if (status < 0)
            status = SL_WAKE_TIMEOUT; /* its deadline passed while earlier ones were served */
        sl_list_remove(&w->link);
        w->kind = 0;
        sl_metrics.log.waiting--;
        w->wake(w, status);
    }
}

static int compute_full(const sl_lossless_t *ll)
{
    const sl_topic_conf_t *conf = &ll->topic->conf;
    if (ll->broken)
        return 1;
    if (ll->unwritten > conf->max_bytes)
        return 1;
    int over = (conf->disk_quota && ll->disk_bytes >= conf->disk_quota) ||
               (ll_cfg && ll_cfg->disk_quota && ll_total_disk >= ll_cfg->disk_quota);
    if (!over)
        return 0;
    /* Over quota with nothing left that may be deleted: only pinned data, or only the segment
     * being written. */
    int any;
    uint64_t ck = min_checkpoint(ll, &any, 1);
    return ll->nsegs <= 1 || (any && ll->segs[0].last > ck);
}

/* The server-wide quota is shared: room freed by one log may let others go on. */
static void update_others(const sl_lossless_t *ll)
{
    sl_list_t *it;
    sl_list_each(it, &all_logs)
    {
        sl_lossless_t *o = sl_container_of(it, sl_lossless_t, link);
        if (o == ll || !o->full)
            continue;
        o->full = compute_full(o);
        if (!o->full) {
            SL_INFO("lossless topic has room again", "topic=%s", o->topic->name);
            wake(o, sl_now_ms());
        }
    }
}

/* Every change that can free room ends here. */
static void ll_update(sl_lossless_t *ll)
{
    uint64_t total = ll_total_disk;
    trim(ll);
    if (ll_total_disk < total && ll_cfg && ll_cfg->disk_quota)
        update_others(ll);
    int was = ll->full;
    ll->full = compute_full(ll);
    if (ll->full && !was)
        SL_WARN("lossless topic full, pushing back on publishers",
                "topic=%s disk=%" PRIu64 " unwritten=%" PRIu64, ll->topic->name, ll->disk_bytes,
                ll->unwritten);
    else if (!ll->full && was)
        SL_INFO("lossless topic has room again", "topic=%s", ll->topic->name);
    wake(ll, sl_now_ms());
}

int sl_ll_full(const sl_topic_t *t)
{
    return t->ll->full || compute_full(t->ll);
}

/* ---- writing --------------------------------------------------------------------------- */

/* Changes a write job made to one segment, applied on the loop when it completes. */
typedef struct seg_update {
    uint64_t base, last, len;
    sl_index_t added;
} seg_update_t;

typedef struct write_job {
    uv_work_t req;
    sl_lossless_t *ll;
    sl_msg_t **msgs;
    size_t n;
    uint64_t bytes; /* record bytes */
    /* inputs, copied from the log */
    const char *dir;
    int fd;
    int unmark; /* remove the clean-shutdown record before writing */
    uint64_t seg_base, seg_last, seg_len, seg_last_idx, seg_bytes;
    int fsync_mode;
    uint64_t fsync_interval, last_fsync_ms, mono_to_wall;
    int unsynced;
    /* outputs */
    int rc;
    int synced;
    seg_update_t *ups;
    size_t nups;
} write_job_t;

static seg_update_t *job_seg(write_job_t *j, uint64_t base)
{
    /* On the thread pool: checked allocations, not charged (bounded by one batch). */
    j->ups = sl_realloc(j->ups, (j->nups + 1) * sizeof(*j->ups));
    seg_update_t *u = &j->ups[j->nups++];
    memset(u, 0, sizeof(*u));
    u->base = base;
    u->last = base - 1;
    return u;
}

static int open_segment(const char *dir, uint64_t base)
{
    char path[PATH_CAP];
    sl_spill_seg_path(path, sizeof(path), dir, base);
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    return fd < 0 ? -errno : fd;
}

static void write_work(uv_work_t *req)
{
    write_job_t *j = req->data;
    if (j->unmark && (j->rc = clean_remove(j->dir)) != 0)
        return;
    seg_update_t *u = job_seg(j, j->seg_base);
    u->len = j->seg_len;
    u->last = j->seg_last;
    size_t cap = WRITE_BATCH_BYTES + (64u << 10), used = 0;
    uint8_t *buf = sl_malloc(cap);
    uint64_t off = j->seg_len, buf_off = off;
    uint64_t last_idx = j->seg_last_idx;
    for (size_t i = 0; i < j->n && j->rc == 0; i++) {
        const sl_msg_t *m = j->msgs[i];
        size_t size = sl_rec_size(m->event_len, m->payload_len);
        if (off > 0 && off + size > j->seg_bytes) {
            /* Rotate: flush, sync and close this segment, open the next one. */
            if (used > 0 && (j->rc = sl_spill_append(j->fd, buf_off, buf, used, 0)) != 0)
                break;
            used = 0;
            if (j->fsync_mode != SL_FSYNC_NEVER && fdatasync(j->fd) != 0) {
                j->rc = -errno;
                break;
            }
            close(j->fd);
            j->fd = open_segment(j->dir, m->seq);
            if (j->fd < 0) {
                j->rc = j->fd;
                break;
            }
            u = job_seg(j, m->seq);
            off = buf_off = 0;
            last_idx = 0;
        }
        if (used + size > cap) {
            if (used > 0 && (j->rc = sl_spill_append(j->fd, buf_off, buf, used, 0)) != 0)
                break;
            buf_off = off;
            used = 0;
            if (size > cap) {
                cap = size;
                buf = sl_realloc(buf, cap);
            }
        }
        sl_rec_encode(buf + used, m->seq, m->ts_ms + j->mono_to_wall, m->event, m->event_len,
                      m->payload, m->payload_len);
        if (off == 0 || off - last_idx >= SL_IDX_STEP) {
            sl_index_add(&u->added, m->seq, off);
            last_idx = off;
        }
        used += size;
        off += size;
        u->last = m->seq;
        u->len = off;
    }
    if (j->rc == 0 && used > 0)
        j->rc = sl_spill_append(j->fd, buf_off, buf, used, 0);
    free(buf);
    if (j->rc != 0)
        return;
    uint64_t now = sl_now_ms();
    int sync = j->fsync_mode == SL_FSYNC_ALWAYS ||
               (j->fsync_mode == SL_FSYNC_INTERVAL && (j->n > 0 || j->unsynced) &&
                now - j->last_fsync_ms >= j->fsync_interval);
    if (sync) {
        if (fdatasync(j->fd) != 0)
            j->rc = -errno;
        else
            j->synced = 1;
    }
}

static void write_done(uv_work_t *req, int status)
{
    write_job_t *j = req->data;
    sl_lossless_t *ll = j->ll;
    (void)status;
    ll->job = NULL;
    ll->fd = j->fd;
    if (j->unmark && j->rc == 0)
        ll->marked = 0;
    if (j->rc != 0) {
        SL_ERROR("lossless write failed; the topic refuses publishes", "topic=%s error=%s",
                 ll->topic->name, strerror(-j->rc));
        sl_metrics.log.write_errors++;
        ll->broken = 1;
    }
    for (size_t k = 0; k < j->nups; k++) {
        seg_update_t *u = &j->ups[k];
        sl_seg_t *s = ll->nsegs > 0 ? &ll->segs[ll->nsegs - 1] : NULL;
        if (s == NULL || s->base != u->base)
            s = seg_add(ll, u->base);
        uint64_t grew = u->len - s->len;
        s->len = u->len;
        s->last = u->last;
        for (size_t i = 0; i < u->added.n; i++)
            sl_index_add(&s->index, u->added.v[i].seq, u->added.v[i].off);
        free(u->added.v);
        ll->disk_bytes += grew;
        ll_total_disk += grew;
        sl_metrics.log.disk_bytes += grew;
        sl_metrics.log.written_bytes += grew;
    }
    free(j->ups);
    if (j->rc == 0 && j->n > 0) {
        ll->written_seq = j->msgs[j->n - 1]->seq;
        ll->unsynced = 1;
    }
    if (j->synced) {
        ll->unsynced = 0;
        ll->last_fsync_ms = sl_now_ms();
        sl_metrics.log.fsyncs++;
        ll->durable_seq = ll->written_seq;
    } else if (ll->topic->conf.fsync != SL_FSYNC_ALWAYS && j->rc == 0) {
        /* Nothing waits for an fsync that is not promised. */
        ll->durable_seq = ll->written_seq;
    }
    ll->unwritten -= j->bytes;
    for (size_t i = 0; i < j->n; i++)
        sl_msg_unref(j->msgs[i]);
    free(j->msgs);
    free(j);
    update_floor(ll);
    /* Readers that waited for this write to read it back. */
    sl_list_t *it;
    sl_list_each(it, &ll->topic->readers)
    {
        sl_reader_t *r = sl_container_of(it, sl_reader_t, link);
        if (r->disk_wait && r->disk_job == NULL) {
            r->disk_wait = 0;
            notify_ready(r);
        }
    }
    ll_update(ll);
    if (ll->npending > 0 && !ll->broken)
        start_write(ll);
}

static void start_write(sl_lossless_t *ll)
{
    if (ll->job != NULL || ll_loop == NULL)
        return;
    const sl_topic_conf_t *conf = &ll->topic->conf;
    write_job_t *j = sl_calloc(1, sizeof(*j));
    j->req.data = j;
    j->ll = ll;
    /* Take what fits one batch; the rest stays pending. */
    size_t n = 0;
    uint64_t bytes = 0;
    while (n < ll->npending && (n == 0 || bytes < WRITE_BATCH_BYTES)) {
        bytes += sl_rec_size(ll->pending[n]->event_len, ll->pending[n]->payload_len);
        n++;
    }
    j->msgs = sl_malloc((n ? n : 1) * sizeof(*j->msgs));
    memcpy(j->msgs, ll->pending, n * sizeof(*j->msgs));
    memmove(ll->pending, ll->pending + n, (ll->npending - n) * sizeof(*ll->pending));
    ll->npending -= n;
    j->n = n;
    j->bytes = bytes;
    j->dir = ll->dir;
    sl_seg_t *s = &ll->segs[ll->nsegs - 1];
    if (ll->fd < 0)
        ll->fd = open_segment(ll->dir, s->base);
    if (ll->fd < 0) {
        SL_ERROR("cannot open segment", "topic=%s error=%s", ll->topic->name, strerror(-ll->fd));
        ll->broken = 1;
        ll->npending += n; /* put back; they stay referenced until the log is freed */
        memmove(ll->pending + n, ll->pending, (ll->npending - n) * sizeof(*ll->pending));
        memcpy(ll->pending, j->msgs, n * sizeof(*j->msgs));
        free(j->msgs);
        free(j);
        ll_update(ll);
        return;
    }
    j->fd = ll->fd;
    j->seg_base = s->base;
    j->seg_last = s->last;
    j->seg_len = s->len;
    j->seg_last_idx = s->index.n ? s->index.v[s->index.n - 1].off : 0;
    j->seg_bytes = conf->segment_bytes;
    j->fsync_mode = conf->fsync;
    j->fsync_interval = conf->fsync_interval_ms;
    j->last_fsync_ms = ll->last_fsync_ms;
    j->unsynced = ll->unsynced;
    j->mono_to_wall = sl_wall_ms() - sl_now_ms();
    j->unmark = ll->marked;
    ll->job = j;
    uv_queue_work(ll_loop, &j->req, write_work, write_done);
}

void sl_ll_append(sl_topic_t *t, sl_msg_t *m)
{
    sl_lossless_t *ll = t->ll;
    if (ll->npending == ll->cappending) {
        ll->cappending = ll->cappending ? ll->cappending * 2 : 64;
        ll->pending = sl_realloc(ll->pending, ll->cappending * sizeof(*ll->pending));
    }
    /* An empty active segment without a file yet follows a jump of the head (holes), so that
     * it starts at its name. */
    sl_seg_t *act = &ll->segs[ll->nsegs - 1];
    if (ll->npending == 0 && ll->job == NULL && ll->fd < 0 && act->last < act->base &&
        m->seq > act->base) {
        act->base = m->seq;
        act->last = m->seq - 1;
    }
    sl_msg_ref(m);
    ll->pending[ll->npending++] = m;
    ll->unwritten += sl_rec_size(m->event_len, m->payload_len);
    if (t->disk_floor == UINT64_MAX)
        t->disk_floor = m->seq; /* see update_floor */
    if (!ll->broken)
        start_write(ll);
    if (!ll->full && compute_full(ll))
        ll_update(ll);
}

uint64_t sl_ll_floor(const sl_topic_t *t)
{
    uint64_t tail = sl_topic_tail(t);
    return t->disk_floor < tail ? t->disk_floor : tail;
}

/* ---- read buffers -------------------------------------------------------------------
 *
 * A sink's read-back fills a buffer of up to READ_BATCH_MAX (plus slack) that its block of
 * messages keeps until the last of them is freed. When glibc mapped such a buffer afresh each
 * time (4 MiB reads, main.c's mmap threshold then 256 KiB), every read faulted in and zeroed
 * its pages and every free unmapped them: about a fifth of sluice's CPU in the file-sink drain.
 * Freed read buffers of one size, at least RBUF_MIN (so not a first read's 256 KiB), are kept
 * for the next reads, up to RBUF_POOL of them. A kept buffer stays charged to the budget (so
 * the budget still counts every byte held) and none is kept while the budget is a quarter
 * full or more, or once the last log is freed (shutdown). Loop thread only: a buffer is taken
 * when a read is queued (sl_ll_fetch) and given back when its block is freed (by the last
 * sl_msg_unref of its messages).
 */
/* (the pool is declared at the top of the file: ll_new and sl_ll_free open and close it) */

/* Whether a freed memory of `size` bytes may be kept at all (both pools' terms): a log is
 * open, it is at least RBUF_MIN, and the budget stays under a quarter full with it. */
static int pool_may_keep(size_t size)
{
    return !rbuf.closed && size >= RBUF_MIN && sl_budget.used + size <= sl_budget.limit / 4;
}

/* A block's release: keeps buf (`size` bytes) for another read, or frees it. */
static void rbuf_put(void *buf, size_t size)
{
    if (buf == NULL)
        return;
    if (!pool_may_keep(size) || rbuf.n == RBUF_POOL || (rbuf.n > 0 && size != rbuf.size)) {
        free(buf);
        return;
    }
    sl_budget_charge(sl_budget_size(size));
    rbuf.size = size;
    rbuf.v[rbuf.n++] = buf;
}

/* A kept buffer of `size` bytes, its charge released (the block it goes to charges it), or
 * NULL. */
static void *rbuf_get(size_t size)
{
    if (rbuf.n == 0 || rbuf.size != size)
        return NULL;
    sl_budget_release(sl_budget_size(size));
    return rbuf.v[--rbuf.n];
}

static void rbuf_drain(void)
{
    while (rbuf.n > 0) {
        sl_budget_release(sl_budget_size(rbuf.size));
        free(rbuf.v[--rbuf.n]);
    }
    while (rbuf.nmem > 0) {
        rbuf.nmem--;
        sl_budget_release(sl_budget_size(rbuf.mem_size[rbuf.nmem]));
        free(rbuf.mem[rbuf.nmem]);
    }
}

/* A block's release_mem: keeps its memory (`size` bytes) for the block of another read, on
 * the terms of rbuf_put (any size of at least RBUF_MIN). Without it every read's block was
 * mapped afresh and its pages faulted in and zeroed: 184 MB for a million messages. */
static void bmem_put(void *mem, size_t size)
{
    if (mem == NULL)
        return;
    if (!pool_may_keep(size) || rbuf.nmem == BMEM_POOL) {
        free(mem);
        return;
    }
    sl_budget_charge(sl_budget_size(size));
    rbuf.mem_size[rbuf.nmem] = size;
    rbuf.mem[rbuf.nmem++] = mem;
}

/* A kept block memory (*size bytes), its charge released (the block made in it charges it), or
 * NULL. */
static void *bmem_get(size_t *size)
{
    if (rbuf.nmem == 0)
        return NULL;
    rbuf.nmem--;
    *size = rbuf.mem_size[rbuf.nmem];
    sl_budget_release(sl_budget_size(*size));
    return rbuf.mem[rbuf.nmem];
}

/* ---- reading back ---------------------------------------------------------------------- */

typedef struct read_job {
    uv_work_t req;
    sl_reader_t *reader; /* NULL once the reader is gone */
    sl_topic_t *topic;
    char path[PATH_CAP];
    uint64_t start, limit, from;
    uint64_t seg_base;
    uint64_t trusted; /* records below this offset were checked by this process's scan */
    uint64_t bad_off; /* -EBADMSG: where the record that failed its checks starts */
    size_t max_bytes;
    int bare; /* build bare messages (the reader's sub is frameless) */
    int rc;
    uint8_t *buf;
    size_t len;
    uint64_t last;
    void *mem; /* bare: kept block memory for the block (mem_size bytes), or NULL */
    size_t mem_size;
    int mem_small;         /* mem was too small for the block */
    sl_msg_block_t *block; /* bare: the messages, built on the worker (owns buf) */
} read_job_t;

/* The records of a bare read as one block of messages whose payloads stay in the buffer (the
 * block takes it over). Runs on the worker: nothing shared is touched; the loop charges the
 * block. */
static void build_block(read_job_t *j)
{
    /* What the buffer costs: its allocation (sl_spill_read's max_bytes and its slack, more for
     * a record larger than that). */
    size_t size = j->len > j->max_bytes + SL_READ_SLACK ? j->len : j->max_bytes + SL_READ_SLACK;
    sl_msg_block_t *b;
    if (j->mem != NULL && j->mem_size >= sl_msg_block_size((uint32_t)j->rc)) {
        b = sl_msg_block_new_in(j->mem, j->mem_size, j->buf, size, (uint32_t)j->rc);
        j->mem = NULL;
    } else {
        b = sl_msg_block_new(j->buf, size, (uint32_t)j->rc);
        /* A kept memory too small for this read is freed (read_done): kept again, it would
         * miss again at every read of this size, and hold a slot of the pool. */
        j->mem_small = j->mem != NULL;
    }
    j->buf = NULL;
    size_t pos = 0;
    while (pos < j->len && b->n < b->cap) {
        sl_rec_t rec;
        /* sl_spill_read checked these records (or a scan did): not again. */
        if (sl_rec_decode_trusted((const uint8_t *)b->buf + pos, j->len - pos, &rec) != SL_REC_OK)
            break;
        /* Events as sl_msg_new gets them (read_done): longer ones are not events. */
        size_t ev = rec.event_len > 0 && rec.event_len < 65 ? rec.event_len : 0;
        (void)sl_msg_block_add(b, rec.seq, rec.event, ev, rec.payload, rec.payload_len);
        pos += rec.size;
    }
    if (b->n == 0) {
        /* Nothing decoded (it was checked when read): read_done decodes the buffer again. */
        j->buf = b->buf;
        b->buf = NULL;
        sl_msg_block_free(b);
        b = NULL;
    } else {
        b->release = rbuf_put; /* called on the loop, when the block is freed */
        b->release_mem = bmem_put;
    }
    j->block = b;
}

static void read_work(uv_work_t *req)
{
    read_job_t *j = req->data;
    uint8_t *into = j->buf;
    j->buf = NULL;
    j->rc = sl_spill_read(j->path, j->start, j->limit, j->from, j->max_bytes, j->trusted, into,
                          &j->buf, &j->len, &j->last, &j->bad_off);
    if (j->bare && j->rc > 0)
        build_block(j);
}

/* How much one read brings back for r. A frameless reader reads up to READ_BATCH_MAX, scaled to
 * the memory budget (1/256 of memory_limit: 1 MiB from the default 256 MiB up, 256 KiB at 64 MiB),
 * while the budget stays under half full with four times that more charged (its messages cost
 * about twice the bytes read, for small records): many sink streams catching up at once must
 * not crowd publishers out of the budget with read-ahead. Otherwise, and for any other reader,
 * READ_BATCH_BYTES. */
static size_t read_bytes(const sl_reader_t *r)
{
    if (r->sub == NULL || !r->sub->ops->frameless)
        return READ_BATCH_BYTES;
    uint64_t want = sl_budget.limit / 256;
    if (want > READ_BATCH_MAX)
        want = READ_BATCH_MAX;
    if (want <= READ_BATCH_BYTES || sl_budget.used + 4 * want > sl_budget.limit / 2)
        return READ_BATCH_BYTES;
    /* The first read after attach is READ_BATCH_BYTES: its messages are read, checked and
     * handed on in a millisecond rather than after a whole read, so a reader starts
     * delivering at once. Eight file-sink streams starting together on two cores each waited
     * about 50 ms for a first 4 MiB read (the reads' size then), the disk idle meanwhile. (Growing
     * the reads step by step from there gained nothing more and changed the read buffers' size each
     * step.) */
    if (!r->disk_read)
        return READ_BATCH_BYTES;
    return (size_t)want;
}

static void batch_free(sl_disk_batch_t *b)
{
    for (uint32_t i = 0; i < b->n; i++)
        sl_msg_unref(b->v[i]);
    sl_bfree(b, b->size);
}

static void mark_hole(sl_reader_t *r, uint64_t resume);

/* A read-back of segment `base` met a record that fails its checks (damage after the start-up
 * scan, or in a log trusted from its clean-shutdown record): as the scan would have cut the
 * segment there, the reader passes the rest of it with a gap, and the next start scans (and
 * truncates the file). */
static void cut_bad(sl_reader_t *r, uint64_t base, uint64_t bad)
{
    sl_lossless_t *ll = r->topic->ll;
    if (!ll->suspect) {
        /* Not trusted again, even after a crash: removed now (a small file; the deletes' lane
         * could still hold it, or drop it at shutdown). */
        char path[PATH_CAP + 8];
        snprintf(path, sizeof(path), "%s/" CLEAN_NAME, ll->dir);
        if (unlink(path) != 0 && errno != ENOENT)
            SL_WARN("clean-shutdown record not removed", "path=%s error=%s", path, strerror(errno));
        ll->suspect = 1;
    }
    size_t i = 0;
    while (i < ll->nsegs && ll->segs[i].base != base)
        i++;
    if (i == ll->nsegs)
        return; /* deleted meanwhile: the next fetch finds where to go on */
    uint64_t resume = ll->segs[i].last + 1;
    if (resume > r->next) {
        SL_ERROR("corrupt record read back, the rest of its segment passed with a gap",
                 "topic=%s base=%" PRIu64 " at=%" PRIu64 " from=%" PRIu64 " to=%" PRIu64,
                 r->topic->name, base, bad, r->next, resume - 1);
        mark_hole(r, resume);
    }
}

static void read_done(uv_work_t *req, int status)
{
    read_job_t *j = req->data;
    sl_reader_t *r = j->reader;
    (void)status;
    if (j->mem_small) /* not taken by the block */
        free(j->mem);
    else
        bmem_put(j->mem, j->mem_size);
    if (r == NULL) {
        if (j->block != NULL)
            sl_msg_block_free(j->block);
        free(j->buf);
        free(j);
        return;
    }
    r->disk_job = NULL;
    r->disk_wait = 0;
    sl_topic_t *t = r->topic;
    if (j->rc < 0) {
        if (j->rc != -ENOENT)
            SL_WARN("log read failed", "topic=%s path=%s error=%s", t->name, j->path,
                    strerror(-j->rc));
        if (j->rc == -EBADMSG) {
            sl_metrics.log.corrupt++;
            cut_bad(r, j->seg_base, j->bad_off);
        }
    } else if (j->rc > 0) {
        sl_metrics.log.read_bytes += j->len;
        /* Messages built from the records, charged like any message. */
        size_t size = sizeof(sl_disk_batch_t) + (size_t)j->rc * sizeof(sl_msg_t *);
        sl_disk_batch_t *b = sl_balloc(size);
        b->n = 0;
        b->pos = 0;
        b->size = size;
        size_t pos = 0;
        if (j->block != NULL) {
            /* Built on the worker: charged here, its messages handed over as they are. */
            sl_msg_block_t *blk = j->block;
            sl_budget_charge(blk->charge);
            for (uint32_t i = 0; i < blk->n; i++) {
                blk->msgs[i].topic = t;
                b->v[b->n++] = &blk->msgs[i];
            }
            pos = j->len; /* nothing left to decode */
        }
        while (pos < j->len) {
            sl_rec_t rec;
            if (sl_rec_decode_trusted(j->buf + pos, j->len - pos, &rec) != SL_REC_OK)
                break;
            char ev[65];
            const char *event = NULL;
            if (rec.event_len > 0 && rec.event_len < sizeof(ev)) {
                memcpy(ev, rec.event, rec.event_len);
                ev[rec.event_len] = '\0';
                event = ev;
            }
            sl_msg_t *m = j->bare ? sl_msg_new_bare(rec.seq, event, event ? rec.event_len : 0,
                                                    rec.payload, rec.payload_len)
                                  : sl_msg_new(t, rec.seq, event, rec.payload, rec.payload_len);
            sl_budget_charge(m->charge);
            m->ts_ms = 0;
            m->topic = t; /* for the json envelope; the message is never in the ring */
            b->v[b->n++] = m;
            pos += rec.size;
        }
        if (r->disk != NULL)
            batch_free(r->disk);
        r->disk = b;
    }
    free(j->buf);
    free(j);
    notify_ready(r);
}

sl_msg_t *sl_ll_next(sl_reader_t *r)
{
    sl_disk_batch_t *b = r->disk;
    if (b == NULL)
        return NULL;
    /* A message returned by the last call and not taken (r->next did not pass it: a sink whose
     * batch was full) is returned again, not skipped as a hole. */
    while (b->pos > 0 && b->v[b->pos - 1]->seq >= r->next)
        b->pos--;
    while (b->pos < b->n && b->v[b->pos]->seq < r->next)
        b->pos++;
    if (b->pos < b->n && b->v[b->pos]->seq == r->next)
        return b->v[b->pos++];
    /* In a log whose ids are an external log's offsets, ids the log skips are holes (offsets
     * with no message for this topic), passed silently, or ids declared lost, which the
     * caller tells (sl_reader_cross) before it takes the message; recovery never cuts such a
     * log. The message stays next until r->next passes it. */
    if (b->pos < b->n && r->topic->ll->external)
        return b->v[b->pos];
    if (b->pos >= b->n) {
        batch_free(b);
        r->disk = NULL;
    }
    /* Otherwise the batch resumes past a hole in the log; sl_ll_fetch reports it. */
    return NULL;
}

/* The first seq the batch would give after a hole, or 0. */
static uint64_t batch_hole_end(const sl_reader_t *r)
{
    const sl_disk_batch_t *b = r->disk;
    if (b != NULL && b->pos < b->n && b->v[b->pos]->seq > r->next)
        return b->v[b->pos]->seq;
    return 0;
}

/* A range missing from the log (cut at recovery): a gap marker, counted, and on past it. */
static void mark_hole(sl_reader_t *r, uint64_t resume)
{
    uint64_t missed = resume - r->next;
    if (r->mark & SL_MARK_GAP) {
        r->gap_to = resume - 1;
        r->gap_missed += missed;
    } else {
        r->mark |= SL_MARK_GAP;
        r->gap_from = r->next;
        r->gap_from_known = 1;
        r->gap_to = resume - 1;
        r->gap_missed = missed;
        r->mark_reason = SL_LAG_EVICTED;
        sl_metrics.gaps[SL_LAG_EVICTED]++;
    }
    sl_metrics.gap_messages += missed;
    r->next = resume;
}

int sl_ll_fetch(sl_reader_t *r)
{
    sl_topic_t *t = r->topic;
    sl_lossless_t *ll = t->ll;
    uint64_t tail = sl_topic_tail(t);
    if (!r->disk_ok || ll == NULL || r->next >= tail || r->disk_job != NULL)
        return 0;
    uint64_t hole = batch_hole_end(r);
    if (hole) {
        mark_hole(r, hole);
        return 0;
    }
    if (r->next > ll->written_seq) {
        /* Evicted from the ring before it was written: wait for the write. */
        r->disk_wait = 1;
        return 1;
    }
    /* The segment holding r->next (or the first one after it, past a hole). */
    size_t i = 0;
    while (i < ll->nsegs && ll->segs[i].last < r->next)
        i++;
    /* Not in the log: a hole before the next segment, or (which should not happen) nothing
     * up to the ring. Either way the reader is told and moves on. */
    uint64_t resume = i < ll->nsegs ? ll->segs[i].base : tail;
    if (resume > r->next && ll->external && resume <= tail) {
        /* Ids between segments of an external log: holes (see sl_ll_next), passed, or lost
         * ids, told. */
        sl_reader_cross(r, resume);
        if (resume == tail)
            return 0;
    } else if (resume > r->next) {
        mark_hole(r, resume);
        return 0;
    }
    sl_seg_t *s = &ll->segs[i];
    read_job_t *j = sl_calloc(1, sizeof(*j));
    j->req.data = j;
    j->reader = r;
    j->topic = t;
    sl_spill_seg_path(j->path, sizeof(j->path), ll->dir, s->base);
    j->start = sl_index_find(&s->index, r->next);
    j->limit = s->len;
    j->from = r->next;
    j->seg_base = s->base;
    j->trusted = s->verified;
    j->max_bytes = read_bytes(r);
    r->disk_read = 1;
    j->bare = r->sub != NULL && r->sub->ops->frameless;
    if (j->bare) {
        j->buf = rbuf_get(j->max_bytes + SL_READ_SLACK); /* NULL: sl_spill_read allocates */
        j->mem = bmem_get(&j->mem_size);
    }
    r->disk_job = j;
    r->disk_wait = 1;
    uv_queue_work(ll_loop, &j->req, read_work, read_done);
    return 1;
}

void sl_ll_reader_gone(sl_reader_t *r)
{
    if (r->disk_job != NULL) {
        ((read_job_t *)r->disk_job)->reader = NULL;
        r->disk_job = NULL;
    }
    if (r->disk != NULL) {
        batch_free(r->disk);
        r->disk = NULL;
    }
    r->disk_wait = 0;
}

/* ---- sweep, shutdown ------------------------------------------------------------------- */

void sl_ll_sweep(sl_hub_t *hub, uint64_t now_ms)
{
    sl_list_t *it;
    sl_list_each(it, &hub->topics)
    {
        sl_topic_t *t = sl_container_of(it, sl_topic_t, all_link);
        sl_lossless_t *ll = t->ll;
        if (ll == NULL)
            continue;
        if (ll->unsynced && ll->job == NULL && !ll->broken && t->conf.fsync == SL_FSYNC_INTERVAL &&
            now_ms - ll->last_fsync_ms >= t->conf.fsync_interval_ms)
            start_write(ll); /* an empty batch: just the fsync */
        if (t->conf.cursor_ttl_ms) {
            sl_list_t *cit, *ctmp;
            sl_list_each_safe(cit, ctmp, &ll->cursors)
            {
                sl_cursor_t *c = sl_container_of(cit, sl_cursor_t, link);
                if (c->nconn == 0 && now_ms - c->idle_since_ms >= t->conf.cursor_ttl_ms) {
                    SL_WARN("durable cursor expired",
                            "topic=%s cursor=%s checkpoint=%" PRIu64 " idle_ms=%" PRIu64, t->name,
                            c->name, c->checkpoint, now_ms - c->idle_since_ms);
                    sl_metrics.log.cursors_expired++;
                    sl_ll_cursor_delete(t, c);
                }
            }
        }
        if (ll->cursors_retry_ms != 0 && now_ms >= ll->cursors_retry_ms && !ll->cursors_busy)
            save_cursors(ll);
        if (!sl_list_empty(&ll->waiters))
            wake(ll, now_ms);
    }
}

/* ---- the exit's syncs --------------------------------------------------------------------
 *
 * At exit every log on disk syncs its active segment (fsync = interval or always), writes its
 * cursor file and writes its clean-shutdown record through a temporary file, a rename and a
 * directory fsync. Each of those waits for the device; made one log after another, that was
 * four waits a log (53 ms for 8 logs on the benchmark machine's virtual disk, seconds for
 * thousands). So sl_ll_free writes them without syncing and leaves the files open in a batch,
 * which syncs them side by side (EXIT_THREADS threads), then, once all are synced, renames
 * each record whose log's files all synced and fsyncs its directory, side by side too (the
 * renames, one after another, took 3 ms for 8 logs): the order of every file's
 * steps is the one write_file_atomic keeps, and a record still counts only once what it
 * describes is on disk. The batch runs when EXIT_BATCH logs are in it (each holds up to three
 * descriptors), when the last log is freed, and at once for a log freed before shutdown. A
 * cursor file made anew (its first save, or one grown) and the meta file are written and
 * synced on the spot, as before.
 */
#define EXIT_BATCH 64
#define EXIT_THREADS 8

typedef struct exit_item {
    char *dir;
    int seg_fd;   /* the active segment, to be synced; -1 none */
    int ckpt_fd;  /* the cursor file, a slot written in place; -1 none */
    int clean_fd; /* clean.tmp, written; -1 none */
    int record;   /* clean.tmp was synced: to be renamed, its directory synced */
    int lost;     /* the record was not put in place (clean_rc says why) */
    int seg_rc, ckpt_rc, clean_rc;
} exit_item_t;

static struct {
    exit_item_t v[EXIT_BATCH];
    size_t n;
} exits;

static int sync_close(int fd)
{
    int rc = fdatasync(fd) != 0 ? -errno : 0;
    close(fd);
    return rc;
}

static void exit_sync_files(void *arg, size_t i)
{
    exit_item_t *e = &((exit_item_t *)arg)[i];
    if (e->seg_fd >= 0)
        e->seg_rc = sync_close(e->seg_fd);
    if (e->ckpt_fd >= 0)
        e->ckpt_rc = sync_close(e->ckpt_fd);
    if (e->clean_fd >= 0) {
        e->clean_rc = sync_close(e->clean_fd);
        e->clean_fd = -1;
        e->record = 1;
    }
}

/* Second pass, once every file of the batch is synced: the record is renamed into place and
 * its directory synced, or (a file of its log did not sync) removed. */
static void exit_commit(void *arg, size_t i)
{
    exit_item_t *e = &((exit_item_t *)arg)[i];
    if (!e->record)
        return;
    int rc = e->seg_rc != 0 ? e->seg_rc : e->clean_rc;
    if (rc == 0)
        rc = tmp_rename(e->dir, CLEAN_NAME);
    if (rc == 0) {
        dir_sync(e->dir);
        return;
    }
    e->clean_rc = rc;
    e->lost = 1;
    char tmp[PATH_CAP + 16];
    snprintf(tmp, sizeof(tmp), "%s/" CLEAN_NAME ".tmp", e->dir);
    (void)unlink(tmp);
    (void)clean_remove(e->dir);
}

static void exit_run(void)
{
    if (exits.n == 0)
        return;
    sl_par_run(exits.n, EXIT_THREADS, exit_sync_files, exits.v);
    sl_par_run(exits.n, EXIT_THREADS, exit_commit, exits.v);
    for (size_t i = 0; i < exits.n; i++) {
        exit_item_t *e = &exits.v[i];
        if (e->seg_rc != 0)
            SL_ERROR("log sync failed at exit", "dir=%s error=%s", e->dir, strerror(-e->seg_rc));
        if (e->ckpt_rc != 0)
            SL_ERROR("cursor file write failed", "dir=%s error=%s", e->dir, strerror(-e->ckpt_rc));
        if (e->lost)
            SL_WARN("clean-shutdown record not written; the next start scans the log",
                    "dir=%s error=%s", e->dir, strerror(-e->clean_rc));
        free(e->dir);
    }
    exits.n = 0;
}

/* A slot of the batch for ll's exit (run first when full). */
static exit_item_t *exit_item(const sl_lossless_t *ll)
{
    if (exits.n == EXIT_BATCH)
        exit_run();
    exit_item_t *e = &exits.v[exits.n++];
    memset(e, 0, sizeof(*e));
    e->dir = sl_strdup(ll->dir);
    e->seg_fd = e->ckpt_fd = e->clean_fd = -1;
    return e;
}

void sl_ll_free(sl_topic_t *t)
{
    sl_lossless_t *ll = t->ll;
    /* Whatever is pending is written now, synchronously: the loop has ended. */
    if (ll->npending > 0 && !ll->broken && ll->nsegs > 0) {
        write_job_t j;
        memset(&j, 0, sizeof(j));
        sl_seg_t *s = &ll->segs[ll->nsegs - 1];
        if (ll->fd < 0)
            ll->fd = open_segment(ll->dir, s->base);
        if (ll->fd >= 0) {
            j.req.data = &j;
            j.ll = ll;
            j.msgs = ll->pending;
            j.n = ll->npending;
            j.dir = ll->dir;
            j.fd = ll->fd;
            j.seg_base = s->base;
            j.seg_last = s->last;
            j.seg_len = s->len;
            j.seg_last_idx = s->index.n ? s->index.v[s->index.n - 1].off : 0;
            j.seg_bytes = t->conf.segment_bytes;
            j.fsync_mode = t->conf.fsync == SL_FSYNC_NEVER ? SL_FSYNC_NEVER : SL_FSYNC_ALWAYS;
            j.mono_to_wall = sl_wall_ms() - sl_now_ms();
            j.unmark = ll->marked;
            write_work(&j.req);
            ll->fd = j.fd;
            if (j.rc == 0) {
                ll->written_seq = ll->pending[ll->npending - 1]->seq;
                ll->marked = 0;
            } else {
                ll->broken = 1;
            }
            /* What it wrote, as write_done applies it: the clean-shutdown record below
             * describes the segments as they are on disk now. */
            for (size_t k = 0; k < j.nups; k++) {
                seg_update_t *u = &j.ups[k];
                sl_seg_t *us = &ll->segs[ll->nsegs - 1];
                if (us->base != u->base)
                    us = seg_add(ll, u->base);
                ll_total_disk += u->len - us->len;
                sl_metrics.log.disk_bytes += u->len - us->len;
                us->len = u->len;
                us->last = u->last;
                for (size_t i = 0; i < u->added.n; i++)
                    sl_index_add(&us->index, u->added.v[i].seq, u->added.v[i].off);
                free(u->added.v);
            }
            free(j.ups);
        }
    }
    exit_item_t *e = ll->on_disk ? exit_item(ll) : NULL;
    if (ll->fd >= 0 && ll->unsynced && t->conf.fsync != SL_FSYNC_NEVER && e != NULL) {
        e->seg_fd = ll->fd; /* synced (and closed) by the batch */
        ll->fd = -1;
    } else if (ll->fd >= 0 && ll->unsynced && t->conf.fsync != SL_FSYNC_NEVER) {
        fdatasync(ll->fd);
    }
    if (ll->fd >= 0)
        close(ll->fd);
    if (ll->on_disk && !ll->broken) {
        if (save_cursors_now(ll, &e->ckpt_fd) != 0)
            SL_ERROR("cursor file write failed", "dir=%s", ll->dir);
        /* Everything issued is written now: the high-water mark comes down to the head, so
         * a clean restart continues the ids without a gap. */
        if (ll->written_seq == t->head_seq && ll->reserved > t->head_seq &&
            write_meta(ll, ll->dir, t->head_seq) == 0)
            ll->reserved = t->head_seq;
        if (!ll->suspect)
            clean_write(ll, &e->clean_fd);
        else
            (void)clean_remove(ll->dir);
    }
    for (size_t i = 0; i < ll->npending; i++)
        sl_msg_unref(ll->pending[i]);
    free(ll->pending);
    ll->npending = 0;
    while (!sl_list_empty(&ll->cursors)) {
        sl_cursor_t *c = sl_container_of(ll->cursors.next, sl_cursor_t, link);
        sl_list_remove(&c->link);
        sl_metrics.log.cursors--;
        sl_bfree(c, sizeof(*c));
    }
    for (size_t i = 0; i < ll->nsegs; i++) {
        free(ll->segs[i].index.v);
        ll_total_disk -= ll->segs[i].len;
        sl_metrics.log.disk_bytes -= ll->segs[i].len;
        sl_metrics.log.segments--;
    }
    free(ll->segs);
    free(ll->dir);
    sl_list_remove(&ll->link);
    sl_bfree(ll, sizeof(*ll));
    t->ll = NULL;
    /* Before shutdown (a log freed while the server runs) its exit is not held back. */
    if (sl_list_empty(&all_logs) || !lane.closing)
        exit_run();
    if (sl_list_empty(&all_logs)) {
        rbuf_drain();
        rbuf.closed = 1;
    }
}

/* ---- recovery -------------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int parse_hex64(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 16);
    if (errno || end == s || (*end && *end != '\n') || x == 0)
        return -1;
    *v = x;
    return 0;
}

/* Reads the cursor file (see "the cursor file"): either format, every line checked. */
static void read_cursors(sl_topic_t *t)
{
    sl_lossless_t *ll = t->ll;
    char path[PATH_CAP];
    snprintf(path, sizeof(path), "%s/cursors", ll->dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 0 || (uint64_t)st.st_size > CKPT_MAX_FILE) {
        SL_ERROR("cursor file unreadable or too large, cursors not restored", "path=%s", path);
        close(fd);
        return;
    }
    size_t n = (size_t)st.st_size;
    char *buf = sl_malloc(n + 1);
    size_t got = read_whole(fd, buf, n);
    close(fd);
    ckpt_view_t v;
    int kind = ckpt_file_parse(buf, got, &v);
    if (kind < 0) {
        SL_ERROR("cursor file has no intact slot, cursors not restored", "path=%s bytes=%zu", path,
                 got);
        free(buf);
        return;
    }
    if (kind == 0) {
        ll->ckpt_size = v.slot_size;
        ll->ckpt_slot = v.slot;
        ll->ckpt_gen = v.gen;
    }
    const char *p = v.text, *end = v.text + v.len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t n_line = (size_t)(le - p);
        p = nl ? nl + 1 : end;
        if (n_line == 0)
            continue;
        char line[256], name[128], owner[128] = "";
        unsigned long long ck;
        int k = 0;
        if (n_line < sizeof(line)) {
            memcpy(line, le - n_line, n_line);
            line[n_line] = '\0';
            k = sscanf(line, "%100s %llu %100s", name, &ck, owner);
        }
        if (k < 2 || !sl_ll_cursor_name_valid(name, strlen(name)) ||
            (k == 3 && strspn(owner, "0123456789abcdef") != 64) || strlen(owner) > 64) {
            SL_WARN("bad line in cursor file ignored", "path=%s", path);
            continue;
        }
        sl_cursor_t *c = sl_ll_cursor(t, name, strlen(name), 1);
        c->checkpoint = ck > t->head_seq ? t->head_seq : ck;
        c->saved = c->checkpoint;
        c->has_saved = 1;
        memcpy(c->owner, owner, strlen(owner) + 1);
    }
    free(buf);
}

/* Reads a log directory's meta file: the full name (into name, NAME_CAP bytes), the epoch and
 * the high-water mark (0 when the file predates it). Returns 0 or -1. */
#define NAME_CAP 1100

static int read_meta(const char *dir, char *name, uint64_t *epoch, uint64_t *reserved,
                     int *external, sl_loss_t *losses, uint32_t *nlosses)
{
    char path[PATH_CAP + 8], line[META_CAP];
    snprintf(path, sizeof(path), "%s/meta", dir);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    name[0] = '\0';
    *epoch = *reserved = 0;
    *external = 0;
    *nlosses = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "name=", 5) == 0) {
            size_t l = strcspn(line + 5, "\n");
            l = l < NAME_CAP ? l : NAME_CAP - 1;
            memcpy(name, line + 5, l);
            name[l] = '\0';
        } else if (strncmp(line, "epoch=", 6) == 0) {
            parse_hex64(line + 6, epoch);
        } else if (strncmp(line, "reserved=", 9) == 0) {
            *reserved = strtoull(line + 9, NULL, 10);
        } else if (strncmp(line, "external=1", 10) == 0) {
            *external = 1;
        } else if (strncmp(line, "lost=", 5) == 0 && *nlosses < SL_TOPIC_LOSSES_MAX) {
            /* Sorted, disjoint and non-empty, as written; anything else is ignored. */
            char *end;
            uint64_t a = strtoull(line + 5, &end, 10), b = 0;
            if (*end == '-')
                b = strtoull(end + 1, &end, 10);
            if (a >= 1 && b >= a && (*nlosses == 0 || a > losses[*nlosses - 1].to + 1)) {
                losses[*nlosses].from = a;
                losses[*nlosses].to = b;
                (*nlosses)++;
            }
        }
    }
    fclose(f);
    return 0;
}

/* Loads one topic directory, found by the name in its meta file. A directory under another
 * name than the topic's (the layout before directory names were hashed) is renamed first. */
static void recover_topic(sl_hub_t *hub, const char *base, const char *entry)
{
    char path[PATH_CAP], dirbuf[PATH_CAP], dn[SL_LL_DIR_NAME_CAP];
    char name[NAME_CAP];
    uint64_t epoch, reserved;
    int external;
    sl_loss_t losses[SL_TOPIC_LOSSES_MAX];
    uint32_t nlosses;
    const char *dir = dirbuf;
    snprintf(dirbuf, sizeof(dirbuf), "%s/%s", base, entry);
    if (read_meta(dir, name, &epoch, &reserved, &external, losses, &nlosses) != 0) {
        SL_WARN("topic directory without meta ignored", "dir=%s", dir);
        return;
    }
    if (!sl_topic_name_valid(name, strlen(name), hub->cfg->max_topic_name) || epoch == 0) {
        SL_ERROR("topic meta file unreadable, directory ignored", "dir=%s", dir);
        sl_metrics.log.corrupt++;
        return;
    }
    sl_ll_dir_name(name, strlen(name), dn);
    if (strcmp(dn, entry) != 0) {
        snprintf(path, sizeof(path), "%s/%s", base, dn);
        int e = access(path, F_OK) == 0 ? EEXIST : rename(dirbuf, path) != 0 ? errno : 0;
        if (e != 0) {
            SL_ERROR("old log directory cannot be renamed, directory ignored",
                     "topic=%s dir=%s to=%s error=%s", name, dirbuf, path, strerror(e));
            return;
        }
        int dfd = open(base, O_RDONLY);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        SL_INFO("log directory renamed to the current layout", "topic=%s from=%s to=%s", name,
                entry, dn);
        snprintf(dirbuf, sizeof(dirbuf), "%s", path);
    }
    sl_topic_conf_t conf;
    sl_config_topic(hub->cfg, name, &conf);
    if (!conf.lossless) {
        SL_WARN("log of a topic no longer lossless left alone", "topic=%s dir=%s", name, dir);
        return;
    }
    /* Create the topic without a log, then attach the one on disk. */
    int err;
    sl_topic_t *t = sl_hub_topic(hub, name, strlen(name), SL_TOPIC_CREATE_BARE, &err);
    if (t == NULL) {
        SL_ERROR("topic could not be recovered", "topic=%s error=%s", name, sl_strerror(err));
        return;
    }
    if (t->ll != NULL) {
        SL_ERROR("second log directory for a topic ignored", "topic=%s dir=%s", name, dir);
        return;
    }
    t->epoch = epoch;
    snprintf(t->epoch_hex, sizeof(t->epoch_hex), "%016" PRIx64, epoch);
    sl_lossless_t *ll = ll_new(t, sl_strdup(dir));
    ll->external = external;
    sl_topic_set_losses(t, losses, nlosses);
    ll->losses_gen = t->losses_gen;
    /* Segments, oldest first. */
    DIR *d = opendir(dir);
    uint64_t *bases = NULL;
    size_t nb = 0, capb = 0;
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l != 24 || strcmp(e->d_name + 20, ".seg") != 0)
            continue;
        if (nb == capb) {
            capb = capb ? capb * 2 : 16;
            bases = sl_realloc(bases, capb * sizeof(*bases));
        }
        bases[nb++] = strtoull(e->d_name, NULL, 10);
    }
    if (d != NULL)
        closedir(d);
    if (nb > 0) /* qsort's base may not be NULL, even for no elements */
        qsort(bases, nb, sizeof(*bases), cmp_u64);
    /* After a clean shutdown, what the scan would find is on record (see "the clean-shutdown
     * record"); otherwise every segment is read and checked. */
    clean_seg_t *cs = NULL;
    size_t stale = 0;
    int clean = clean_load(dir, bases, nb, &cs, &stale) == 0;
    if (clean && stale > 0) {
        /* Passed by every cursor before the last shutdown, which left them (ll_shutdown). */
        SL_INFO("segments left by the last shutdown deleted", "topic=%s segments=%zu", name, stale);
        for (size_t i = 0; i < stale; i++) {
            sl_spill_seg_path(path, sizeof(path), dir, bases[i]);
            unlink_later(path);
        }
        ll->trimmed = bases[stale - 1]; /* recorded again if the deletes do not run */
        memmove(bases, bases + stale, (nb - stale) * sizeof(*bases));
        nb -= stale;
    }
    uint64_t head = 0;
    for (size_t i = 0; i < nb; i++) {
        sl_spill_seg_path(path, sizeof(path), dir, bases[i]);
        sl_scan_t sc;
        int rc = 0;
        if (clean) {
            memset(&sc, 0, sizeof(sc));
            sc.index = cs[i].index;
            cs[i].index.v = NULL;
            cs[i].index.n = 0;
            sc.count = sc.index.n;
            sc.first = sc.count ? sc.index.v[0].seq : 0;
            sc.last = sc.count ? cs[i].last : 0;
            sc.valid_len = sc.file_len = cs[i].len;
        } else {
            rc = sl_spill_scan(path, 1, &sc);
        }
        if (rc != 0) {
            SL_ERROR("segment unreadable, skipped", "path=%s error=%s", path, strerror(-rc));
            sl_metrics.log.corrupt++;
            free(sc.index.v);
            continue;
        }
        if (sc.torn || sc.corrupt) {
            uint64_t cut = sc.file_len - sc.valid_len;
            sl_metrics.log.truncated_bytes += cut;
            if (sc.corrupt) {
                sl_metrics.log.corrupt++;
                SL_ERROR("corrupt record, segment truncated",
                         "path=%s at=%" PRIu64 " dropped_bytes=%" PRIu64, path, sc.valid_len, cut);
            } else {
                SL_WARN("torn record at the end of a segment truncated",
                        "path=%s at=%" PRIu64 " dropped_bytes=%" PRIu64, path, sc.valid_len, cut);
            }
        }
        /* An external log's active segment may have been named before the head jumped. */
        if (sc.count > 0 && (sc.first < bases[i] || (sc.first > bases[i] && !external))) {
            SL_ERROR("segment does not start at its name, skipped", "path=%s", path);
            sl_metrics.log.corrupt++;
            free(sc.index.v);
            continue;
        }
        sl_seg_t *s = seg_add(ll, bases[i]);
        s->len = sc.valid_len;
        s->verified = clean ? 0 : sc.valid_len;
        s->last = sc.count ? sc.last : bases[i] - 1;
        s->index = sc.index;
        ll->disk_bytes += s->len;
        ll_total_disk += s->len;
        sl_metrics.log.disk_bytes += s->len;
        if (sc.count && sc.last > head)
            head = sc.last;
    }
    free(bases);
    if (clean)
        clean_segs_free(cs, nb);
    /* Ids up to the high-water mark may have been given to messages the log no longer has (not
     * written before a crash, or cut as torn or corrupt): numbering goes on past them, so no id
     * a client has seen is ever given to another message; readers get a gap over them. */
    /* Not for a log whose ids are an external log's coordinates (Kafka offsets): there the
     * same id is the same message, which its feed delivers again. */
    if (reserved > head && !external) {
        SL_INFO("ids skipped past the recorded high-water mark",
                "topic=%s head=%" PRIu64 " next=%" PRIu64, name, head, reserved + 1);
        head = reserved;
    }
    ll->on_disk = 1;
    ll->reserved = head;
    if (ll->nsegs == 0 || ll->segs[ll->nsegs - 1].last < head)
        seg_add(ll, head + 1);
    /* The last segment is written to next, after its valid part; a new one if it is full. */
    if (ll->segs[ll->nsegs - 1].len >= conf.segment_bytes)
        seg_add(ll, head + 1);
    t->head_seq = head;
    t->evicted_seq = head; /* none of it is in the ring: a reader below it missed it there */
    ll->written_seq = ll->durable_seq = head;
    update_floor(ll);
    read_cursors(t);
    /* What the cursors had passed and a crash left on disk (deletes come after the cursor
     * file is saved) goes now: an idle topic would otherwise keep it until its next ack. */
    trim(ll);
    ll->full = compute_full(ll);
    SL_INFO("lossless topic recovered",
            "topic=%s epoch=%s head=%" PRIu64 " segments=%zu"
            " bytes=%" PRIu64 " cursors=%zu start=%s",
            name, t->epoch_hex, head, ll->nsegs, ll->disk_bytes, ll->ncursors,
            clean ? "clean" : "scan");
}

int sl_ll_recover(sl_hub_t *hub)
{
    ll_cfg = hub->cfg;
    if (ll_data_dir == NULL)
        return 0;
    char base[PATH_CAP / 4];
    snprintf(base, sizeof(base), "%s/topics", ll_data_dir);
    DIR *d = opendir(base);
    if (d == NULL)
        return errno == ENOENT ? 0 : -1;
    /* The names first: recovery may rename directories, which readdir need not cope with. */
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "t-", 2) != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            names = sl_realloc(names, cap * sizeof(*names));
        }
        names[n++] = sl_strdup(e->d_name);
    }
    closedir(d);
    for (size_t i = 0; i < n; i++) {
        recover_topic(hub, base, names[i]);
        free(names[i]);
    }
    free(names);
    return (int)n;
}

/* ---- the tables the hub calls --------------------------------------------------------------- */

static int ll_admit(sl_topic_t *t)
{
    if (t->ll->broken)
        return SL_EDISK;
    return sl_ll_full(t) ? SL_EFULL : 0;
}

static void ll_reader_gone(sl_reader_t *r)
{
    if (r->disk_ok)
        sl_ll_reader_gone(r);
    if (r->cursor != NULL)
        sl_ll_cursor_use(r->cursor, -1);
}

static void ll_free_backend(sl_topic_t *t)
{
    sl_ll_free(t);
    t->backend = NULL;
}

/* A log follows a renumbering in two cases. In its own epoch, down to the last seq it holds
 * (never below what it or a cursor has), which undoes the skip a recovery makes past the
 * recorded high-water mark: for a topic whose ids are an external log's coordinates, the same
 * seq is the same message, so the ids are not reused for another. Into another epoch, only
 * while it holds no message and no cursor has acknowledged one; its meta file, if a durable
 * cursor made it already, is rewritten with the new epoch. Nothing may be pending either. */
static int ll_rebase(sl_topic_t *t, int same_epoch, uint64_t head)
{
    sl_lossless_t *ll = t->ll;
    if (ll->npending != 0 || ll->job != NULL || ll->reserving || ll->broken)
        return SL_EBUSY;
    /* The last seq held: the newest non-empty segment's. The active segment may be empty and
     * still without a file (made at its first write), numbered past the skip: it follows. */
    sl_seg_t *tail = ll->nsegs > 0 ? &ll->segs[ll->nsegs - 1] : NULL;
    int tail_empty = tail != NULL && tail->last < tail->base;
    if (tail_empty && ll->fd >= 0)
        return SL_EBUSY;
    uint64_t held = 0;
    for (size_t i = ll->nsegs; i-- > 0;) {
        if (ll->segs[i].last >= ll->segs[i].base) {
            held = ll->segs[i].last;
            break;
        }
    }
    sl_list_t *it;
    sl_list_each(it, &ll->cursors)
    {
        uint64_t ck = sl_container_of(it, sl_cursor_t, link)->checkpoint;
        if (same_epoch ? ck > head : ck != 0)
            return SL_EBUSY;
    }
    if (same_epoch) {
        if (head < held)
            return SL_EBUSY;
    } else {
        if (t->head_seq != 0 || held != 0)
            return SL_EBUSY;
        ll->external = 1; /* recorded in meta: recovery then keeps the numbering */
        if (ll->on_disk) {
            if (write_meta(ll, ll->dir, head + RESERVE_BLOCK) != 0)
                return SL_EBUSY;
            ll->reserved = head + RESERVE_BLOCK;
        }
    }
    if (tail_empty) {
        tail->base = head + 1;
        tail->last = head;
    }
    ll->written_seq = ll->durable_seq = head;
    return 0;
}

const sl_backend_t sl_ll_backend = {
    .name = "lossless",
    .reads_back = 1,
    .admit = ll_admit,
    .prepare = sl_ll_prepare,
    .append = sl_ll_append,
    .reader_gone = ll_reader_gone,
    .idle = sl_ll_idle,
    .free = ll_free_backend,
    .rebase = ll_rebase,
    .read_next = sl_ll_next,
    .read_fetch = sl_ll_fetch,
};

/* A new topic whose settings say lossless gets a log (in memory until something must be
 * kept); a log that cannot be made later refuses publishes. */
static void ll_attach(sl_topic_t *t)
{
    if (t->conf.lossless)
        (void)sl_ll_new(t);
}

/* At shutdown the deletes not yet started are dropped, and none are queued any more: the
 * next start deletes whatever the saved checkpoints passed (recover_topic), so the exit does
 * not wait for discards that free space nobody needs before then (about 20 ms per 32 MB
 * segment on a disk mounted with `discard`; the time grows with the backlog drained). The
 * ones running finish; the saves still run. */
static void ll_shutdown(void)
{
    lane.closing = 1;
    while (!sl_list_empty(&lane.deletes)) {
        lane_job_t *lj = sl_container_of(lane.deletes.next, lane_job_t, link);
        sl_list_remove(&lj->link);
        lj->done(&lj->req, UV_ECANCELED);
    }
}

const sl_storage_t sl_ll_storage = {
    .attach = ll_attach,
    .recover = sl_ll_recover,
    .sweep = sl_ll_sweep,
    .shutdown = ll_shutdown,
};

int sl_ll_ack_id(sl_topic_t *t, sl_cursor_t *cu, uint64_t epoch, uint64_t seq, const char **err)
{
    if (epoch != t->epoch) {
        *err = "epoch_mismatch";
        return 409;
    }
    if (sl_ll_ack(t, cu, seq) != 0) {
        *err = "bad_id";
        return 400;
    }
    return 0;
}
