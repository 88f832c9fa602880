/*
 * A file sink's writer: one topic's segment files (see fileidx.h for the layout and the commit
 * rule), written with plain blocking POSIX calls. It runs on libuv's thread pool (webhook.c
 * queues one job per stream at a time, so a writer is never used by two threads at once) and
 * touches neither the loop nor the memory budget: it reads the job's messages (immutable) and
 * writes from the job's scratch buffer, many records a syscall.
 *
 * States: CLOSED (no segment open; `recovered` says whether the start-up scan ran) ──write──►
 * OPEN (fd and ifd valid) ──rotation due──► OPEN on the next segment; any I/O error closes
 * the files and clears `recovered`, so the retry scans the directory again (it may have been
 * replaced, made writable, or the disk freed).
 */
#ifndef SL_SINK_FILE_H
#define SL_SINK_FILE_H

#include "core/msg.h"
#include "sink/fileidx.h"

#include <stddef.h>
#include <stdint.h>

/* Owned by its stream (webhook.c); freed with sl_fwriter_free on the loop once no job runs. */
typedef struct sl_fwriter {
    char *dir;       /* DIRECTORY/<escaped topic> */
    const char *ext; /* "jsonl" or "raw" */
    int fsync_mode;  /* sl_file_sync_t */
    uint64_t rotate_bytes, rotate_ms;
    int fd, ifd;    /* data and index of the open segment, -1 when closed */
    uint32_t index; /* the open (or next) segment's number */
    uint64_t size, isize, opened_ms;
    uint64_t wb_from; /* fsync = rotate: writeback was started for the data below this */
    int recovered;
    int have_last;
    sl_fileidx_rec_t last; /* the last committed write */
    /* Outcome of the last write, for the loop's log line. */
    uint32_t skipped, truncated_tail;
    char what[48]; /* the call that failed */
} sl_fwriter_t;

/* One write: the records of msgs[0..n) (seq ascending), after an optional gap line. A record
 * is the message's payload and a newline (raw) or its jsonl envelope (sink/batch.h), built
 * here, on the worker, from the messages' immutable fields: the caller holds a reference to
 * each message and changes nothing of the job until the write returns. */
typedef struct sl_fjob {
    sl_msg_t *const *msgs;
    uint32_t n;
    int raw;
    const char *gap; /* a jsonl gap envelope line written first, or NULL */
    size_t gap_len;
    const char *topic; /* for the envelopes */
    size_t topic_len;
    const char *epoch;
    uint64_t now_ms;
    /* jsonl: where envelopes are built and written from, at least the largest record's
     * sl_batch_line_max bytes (the caller's memory, charged to the budget on the loop). */
    char *scratch;
    size_t scratch_cap;
} sl_fjob_t;

/* A writer for topic `topic` under `directory`; nothing is opened yet. */
sl_fwriter_t *sl_fwriter_new(const char *directory, const char *topic, size_t topic_len,
                             const char *ext, int fsync_mode, uint64_t rotate_bytes,
                             uint64_t rotate_ms);

/* Writes a job's records that the files do not already hold, then commits them (index line;
 * fsync as the policy says). Blocking: thread pool only. Returns 0 (the job is durable as the
 * policy promises and may be acknowledged) or a negative errno (nothing of it counts; the
 * files are cut back at the next try). */
int sl_fwriter_write(sl_fwriter_t *w, const sl_fjob_t *j);

/* Closes the open segment (fsync under batch and rotate) and frees the writer. Blocking. */
void sl_fwriter_free(sl_fwriter_t *w);

#endif
