/*
 * Lossless topics, the loop side: every message of a lossless topic is appended to its on-disk
 * log (spill.c) by one write job at a time on libuv's thread pool, so the loop never waits for
 * the disk; readers behind the in-memory ring read batches back from disk and rejoin the ring;
 * durable cursors pin the segments they have not acknowledged; a topic whose disk quota is full
 * of pinned data, or whose unwritten bytes pass its memory share (max_bytes), pushes back on
 * publishers, which wait on the log and are woken the moment that changes.
 *
 * States of a log's writer:   idle ──append──► pending ──job──► writing ──done──► idle/pending
 * A publisher waiter:         (full) wait ──room or deadline──► woken (exactly once)
 * Invariant: a waiter for room exists only while the log is full; every change that can make
 * it not full ends in ll_update(), which wakes them all.
 *
 * Loop thread only (the jobs' work functions touch nothing but their own job).
 */
#ifndef SL_LOSSLESS_H
#define SL_LOSSLESS_H

#include "store/spill.h"
#include "core/hub.h"
#include "core/topic.h"

#include <uv.h>

struct sl_hub;

/* A durable cursor: a named reader position that survives disconnects and restarts. Owned by
 * its log; freed when deleted, expired or at shutdown. */
typedef struct sl_cursor {
    sl_list_t link;
    char name[65];
    uint64_t checkpoint;    /* last acknowledged seq; 0 = nothing yet */
    uint32_t nconn;         /* readers using it now */
    uint64_t idle_since_ms; /* when the last reader left; 0 while in use */
    char owner[65];         /* SHA-256 (hex) of the subject that created it; "" = nobody's */
    /* Yields to a full quota (a sink with on_max_backlog = skip): it pins segments while there
     * is room, but a full quota deletes what only it still needs, and its reader finds a gap.
     * Not saved: whoever uses the cursor sets it. */
    int yields;
    /* The checkpoint the cursor file holds for it (what a crash comes back to), once a save
     * that included it has completed: segments are deleted only below it, so a crash never
     * brings back a checkpoint below the log's floor (a false gap over acknowledged
     * messages). A cursor no save has included yet would not come back at all: its
     * checkpoint counts as it is. plan_* is what the save in flight writes. */
    uint64_t saved, plan_ckpt, plan_gen;
    int has_saved;
} sl_cursor_t;

enum { SL_WAIT_ROOM = 1, SL_WAIT_DURABLE = 2 };

/* Why a waiter was woken: what it waited for happened, its deadline passed, or the log cannot
 * be written (a disk error), which it will never recover from before a restart. */
enum { SL_WAKE_OK = 0, SL_WAKE_TIMEOUT = 1, SL_WAKE_FAILED = 2 };

/* A publisher waiting on a log: for room (retry its publish) or for its message to be on disk
 * (then acknowledge). Embedded in the connection, which owns it and must sl_ll_unwait() it in
 * its close path. `wake` is called once, with an SL_WAKE_* status. */
typedef struct sl_waiter {
    sl_list_t link;
    int kind;
    uint64_t seq;         /* SL_WAIT_DURABLE: until this seq is durable */
    uint64_t deadline_ms; /* 0 = none */
    sl_topic_t *topic;
    void (*wake)(struct sl_waiter *w, int status);
} sl_waiter_t;

/* Messages read back from disk for one reader, consumed in order. Owned by the reader. */
typedef struct sl_disk_batch {
    uint32_t n, pos;
    size_t size; /* of the allocation (sl_bfree) */
    sl_msg_t *v[];
} sl_disk_batch_t;

typedef struct sl_seg {
    uint64_t base; /* first seq of the segment (its file name) */
    uint64_t last; /* last seq in it; base - 1 while empty */
    uint64_t len;  /* bytes written */
    /* Bytes from the start whose records this process's start-up scan checked (CRC and all):
     * a read-back does not check them again. 0 for a segment trusted from the clean-shutdown
     * record (then every record is checked when read back) and for one written by this
     * process. */
    uint64_t verified;
    sl_index_t index;
} sl_seg_t;

struct write_job;

/* A lossless topic's log. Owned by its topic (t->ll), freed by sl_ll_free(). */
typedef struct sl_lossless {
    sl_list_t link; /* every log, for the server-wide quota */
    sl_topic_t *topic;
    char *dir;
    sl_seg_t *segs; /* oldest first; the last one is written to */
    size_t nsegs, capsegs;
    int fd; /* the active segment; used only by the write job in flight */
    uint64_t disk_bytes;
    uint64_t written_seq; /* every seq up to this is in a segment file */
    uint64_t durable_seq; /* … and fsync'ed (or, with fsync=never, written) */
    uint64_t last_fsync_ms;
    int unsynced;       /* written since the last fsync */
    sl_msg_t **pending; /* appended, waiting for the next write job */
    size_t npending, cappending;
    uint64_t unwritten; /* record bytes appended and not yet written */
    struct write_job *job;
    sl_list_t cursors;
    size_t ncursors;
    int cursors_busy, cursors_dirty; /* the cursor file is being written / must be again */
    /* The last save failed: the sweep tries again at cursors_retry_ms (0: not failing);
     * cursors_failures in a row (logged at the first and when one succeeds). */
    uint64_t cursors_retry_ms;
    uint32_t cursors_failures;
    /* The cursor file's slots (lossless.c, "the cursor file"): their size (0: the file must be
     * made anew), the one holding the newest generation, and that generation. */
    size_t ckpt_size;
    int ckpt_slot;
    uint64_t ckpt_gen;
    sl_list_t waiters;
    int full;
    int broken;  /* the log cannot be written (disk error): publishes are refused */
    int on_disk; /* its directory and meta file exist (made at the first publish or cursor) */
    /* The high-water mark of issued seqs as recorded in meta: no seq above it was ever given
     * to a message, so recovery restarts numbering past it even when it finds less on disk.
     * Raised ahead of use by RESERVE_BLOCK, on the thread pool (reserving: a write in flight). */
    uint64_t reserved;
    int reserving;
    /* Its ids are an external log's coordinates (it was renumbered into another epoch by
     * sl_topic_rebase, for a Kafka partition): recorded in meta as `external=1`, and recovery
     * after a crash does not skip past the mark, since the feed delivers the same messages
     * under the same ids again. */
    int external;
    /* The topic's lost ranges (t->losses) as meta records them: losses_gen when meta was
     * last written with them. A publish after a loss waits until meta has it. */
    uint64_t losses_gen;
    /* The directory may hold a clean-shutdown record (lossless.c, "the clean-shutdown
     * record"): the first write removes it before it touches a segment. */
    int marked;
    /* A read-back found a record that failed its checks: the next start scans, whatever the
     * shutdown. */
    int suspect;
    /* The base of the newest segment deleted from the log (its file may still be there: see
     * ll_shutdown), recorded in the clean-shutdown record; 0 while none. */
    uint64_t trimmed;
} sl_lossless_t;

/* Acknowledges seq (of epoch) on durable cursor cu of topic t: 0, or the HTTP status of the
 * refusal (409 another epoch, 400 beyond the head) with *err its code. */
int sl_ll_ack_id(sl_topic_t *t, sl_cursor_t *cu, uint64_t epoch, uint64_t seq, const char **err);

/* The log as a topic backend (core/topic.h) and as the hub's storage (core/hub.h): what the
 * hub calls, and all it knows of lossless topics. */
extern const sl_backend_t sl_ll_backend;
extern const sl_storage_t sl_ll_storage;

/* Where the log's libuv work runs, and the data directory. Set once by the server. */
void sl_ll_setup(uv_loop_t *loop, const char *data_dir);

/* Reads every lossless topic back from data_dir/topics and registers it in the hub (with its
 * epoch, head and cursors); a topic the configuration no longer calls lossless is left alone
 * and logged. Returns the number of topics loaded, or -1 if the directory cannot be made. */
int sl_ll_recover(struct sl_hub *hub);

/* Gives a newly created lossless topic its log, in memory only: its directory and meta file
 * (name, epoch) are made on disk by the first publish or durable cursor, so subscribing alone
 * leaves nothing on disk. Returns 0. */
int sl_ll_new(sl_topic_t *t);

/* The directory name of a topic's log under data_dir/topics (see lossless.c); out must hold
 * SL_LL_DIR_NAME_CAP bytes. */
#define SL_LL_DIR_NAME_CAP 76
void sl_ll_dir_name(const char *name, size_t len, char *out);

/* Before n messages are appended: makes the log's directory if it is not on disk yet and makes
 * sure their seqs are below the recorded high-water mark. Returns 0, SL_EDISK if the log
 * cannot be written, or SL_EFULL while the mark is being raised (rare: a burst outran it). */
int sl_ll_prepare(sl_topic_t *t, size_t n);

/* 1 if the log has nothing on disk and nobody waits on it: the topic may be freed when idle. */
int sl_ll_idle(const sl_topic_t *t);

/* Writes what is pending, fsyncs and saves the cursors synchronously (shutdown), then frees the
 * log. Every reader and waiter must be gone. */
void sl_ll_free(sl_topic_t *t);

/* 1 if a publish of `bytes` more must be refused or wait (see the header comment). */
int sl_ll_full(const sl_topic_t *t);

/* Queues an appended message for the disk (takes a reference). */
void sl_ll_append(sl_topic_t *t, sl_msg_t *m);

/* The first seq a disk-capable reader can still get (ring or disk). */
uint64_t sl_ll_floor(const sl_topic_t *t);

/* Delivery from disk, the backend's read_next and read_fetch (core/topic.h). sl_ll_next()
 * returns the next message for reader r if its batch holds it (a borrowed reference, valid
 * until r's next call), else NULL; in an external log, ids it skips are holes and it returns
 * the next message past them. Then, if r is behind the ring, sl_ll_fetch() schedules a read
 * (marking r->disk_wait) and returns 1, or 0 when nothing is to be read.
 * sl_reader_notify_ready(r) is called when a read completes. */
sl_msg_t *sl_ll_next(sl_reader_t *r);
int sl_ll_fetch(sl_reader_t *r);
/* Drops r's batch and cancels its read; for reader detach. */
void sl_ll_reader_gone(sl_reader_t *r);

/* Durable cursors. NAME must be valid (sl_ll_cursor_name_valid). */
int sl_ll_cursor_name_valid(const char *s, size_t len);
sl_cursor_t *sl_ll_cursor(sl_topic_t *t, const char *name, size_t len, int create);

/* The durable cursors owned by `owner` (an sl_cursor_t.owner value) on every lossless topic. */
size_t sl_ll_cursors_owned(const char *owner);
/* Moves the checkpoint forward to seq (never back); 0, or SL_EBADID if seq > head. */
int sl_ll_ack(sl_topic_t *t, sl_cursor_t *c, uint64_t seq);
void sl_ll_cursor_delete(sl_topic_t *t, sl_cursor_t *c);
/* Saves the cursors after one was created with its checkpoint set. */
void sl_ll_cursor_created(sl_topic_t *t);
void sl_ll_cursor_use(sl_cursor_t *c, int delta);
/* {"cursors":[…]} into a malloc'ed buffer. */
char *sl_ll_cursors_json(const sl_topic_t *t, size_t *len);

/* The deadline of a publisher waiting for its write: max_publish_wait from now (0, none, when
 * that is configured as 0). */
static inline uint64_t sl_ll_write_deadline(const sl_config_t *cfg, uint64_t now_ms)
{
    return cfg->max_publish_wait_ms ? now_ms + cfg->max_publish_wait_ms : 0;
}

/* Waiting publishers. */
void sl_ll_wait(sl_waiter_t *w, sl_topic_t *t, int kind, uint64_t seq, uint64_t deadline_ms);
void sl_ll_unwait(sl_waiter_t *w);
static inline int sl_ll_waiting(const sl_waiter_t *w)
{
    return w->kind != 0;
}
static inline uint64_t sl_ll_durable(const sl_topic_t *t);

/* Periodic work: fsync=interval, cursor expiry, waiter deadlines. */
void sl_ll_sweep(struct sl_hub *hub, uint64_t now_ms);

static inline uint64_t sl_ll_durable(const sl_topic_t *t)
{
    return t->ll ? t->ll->durable_seq : t->head_seq;
}

#endif
