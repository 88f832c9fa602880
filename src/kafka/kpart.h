/*
 * The Kafka source's state machine for one assigned partition, kept free of librdkafka and
 * libuv so that it can be driven by a fake Kafka in the unit tests. The consumer
 * (kafka/source.c) asks it what to do with each record, and performs what it decides: pause,
 * resume, store an offset.
 *
 * States:
 *
 *     (new) ──sl_kp_assign──► ACTIVE ──record FULL (stash it)──► PAUSED
 *                               ▲  ▲                                │
 *                               │  └─────sl_kp_unstash: taken ──────┘  (resume: we paused it)
 *     REVOKED ◄──sl_kp_revoke── ACTIVE | PAUSED   (stash and pending offsets dropped)
 *     REVOKED ──sl_kp_assign──► ACTIVE (a fresh start from the committed offset)
 *
 * Invariants (tested under random interleavings in test/unit/test_kpart.c):
 *   - only a partition this machine paused is ever resumed (`paused_by_us`): on librdkafka
 *     2.0.2 resuming a partition that is not paused rewinds it;
 *   - a PAUSED partition holds exactly one stashed record, the first it could not take, and
 *     nothing after it has been accepted;
 *   - `stored` only moves forward, and never past a record that is not done: a record is done
 *     when it was appended to a lossy topic, written by a lossless topic's log (its seq is
 *     durable), dropped as a duplicate or skipped as rejected;
 *   - nothing is stored for a partition between its revoke and its next assign.
 */
#ifndef SL_KPART_H
#define SL_KPART_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    SL_KP_NEW = 0,
    SL_KP_ACTIVE,
    SL_KP_PAUSED,
    SL_KP_REVOKED,
} sl_kp_state_t;

/* What became of a record offered to its topic. */
typedef enum {
    SL_KV_DONE = 0,  /* appended to a lossy topic: done now */
    SL_KV_PENDING,   /* appended to a lossless topic: done when `seq` is durable */
    SL_KV_DUPLICATE, /* its offset was already in the topic and done there: dropped. A
                        duplicate of a record whose log write is still under way (after a
                        revoke and assign) is SL_KV_PENDING with that record's seq, or else
                        committing it could pass a record a crash would lose */
    SL_KV_REJECTED,  /* cannot be taken (too big, bad name …) and skipped: done */
    SL_KV_FULL,      /* no room now: stash it and pause */
} sl_kv_t;

/* Why a partition is paused (also the metrics label). */
typedef enum {
    SL_KP_WHY_FULL = 0, /* a lossless topic pushes back */
    SL_KP_WHY_BUDGET,   /* the memory budget refused the record */
    SL_KP_WHY_REJECT,   /* on_reject = pause: a record that cannot be taken */
    SL_KP_WHY_DURABLE,  /* too many records wait for lossless logs (no stash) */
    SL_KP_WHY__COUNT,
} sl_kp_why_t;
const char *sl_kp_why_name(sl_kp_why_t why);

/* A record the partition could not take: a copy, owned by the partition, in budgeted memory
 * (the consumer allocates and frees it). */
typedef struct sl_kp_stash {
    int64_t offset;
    size_t bytes; /* the allocation's size, for sl_bfree */
    void *data;
} sl_kp_stash_t;

/* Offsets waiting for a lossless topic's log: every record up to `offset` is done once `seq`
 * of `topic` is durable. Kept in offset order in a small FIFO. A record for the same topic as
 * the newest entry (when that is not also the oldest, which must stay frozen to be stored under
 * a steady flow) widens that entry, so a partition feeding one topic uses two entries; one
 * whose records alternate between many lossless topics fills the FIFO and is then paused
 * (reason `durable`, no stash) until the logs catch up. */
#define SL_KP_PENDING_MAX 16
typedef struct sl_kp_pending {
    const void *topic;
    uint64_t seq;
    int64_t offset;
} sl_kp_pending_t;

/* One partition of a source. Owned by the source (kafka/source.c), freed with it. */
typedef struct sl_kpart {
    sl_kp_state_t state;
    uint8_t paused_by_us; /* we called pause and have not resumed yet */
    uint8_t why;          /* sl_kp_why_t, while paused */
    uint8_t store_dirty;  /* `stored` moved since the consumer last stored it */
    int64_t stored;       /* next offset to consume as stored for commit; -1 none yet */
    int64_t seen;         /* highest offset offered since the assign; -1 none */
    sl_kp_pending_t pend[SL_KP_PENDING_MAX];
    uint32_t phead, npend;
    sl_kp_stash_t stash; /* valid while PAUSED (data != NULL) */
    uint64_t pauses, resumes;
} sl_kpart_t;

/* What the consumer must do after a call. */
enum {
    SL_KP_ACT_NONE = 0,
    SL_KP_ACT_PAUSE = 1,  /* pause the partition in librdkafka (stash already taken) */
    SL_KP_ACT_RESUME = 2, /* resume it */
    SL_KP_ACT_IGNORE = 3, /* the record must not be used (paused or revoked partition) */
};

/* The partition was assigned (first time or again after a revoke): ACTIVE, nothing pending. */
void sl_kp_assign(sl_kpart_t *p);

/* The partition was revoked: REVOKED. Pending offsets are forgotten; a stash is handed back in
 * *stash for the caller to free (its data NULL if none). Returns SL_KP_ACT_RESUME if this
 * machine had paused it: librdkafka keeps a pause across unassign and assign, so the consumer
 * resumes it before giving it up. */
int sl_kp_revoke(sl_kpart_t *p, sl_kp_stash_t *stash);

/* May a record at `offset` be offered to its topic? SL_KP_ACT_NONE (yes) or SL_KP_ACT_IGNORE:
 * the partition is not ACTIVE, so the record is dropped unstored (Kafka delivers it again after
 * the resume or the next assign). */
int sl_kp_accept(const sl_kpart_t *p, int64_t offset);

/* The record at `offset` (ACTIVE partition) was offered to its topic with result v; for
 * SL_KV_PENDING, `topic` and `seq` name where it waits for the log. For SL_KV_FULL the caller
 * passes the stash it made (a copy of the record) and `why`; the partition takes ownership of
 * its data. Returns SL_KP_ACT_PAUSE when the partition must now be paused (a stash was taken,
 * or too many records wait for logs), else SL_KP_ACT_NONE. */
int sl_kp_offered(sl_kpart_t *p, int64_t offset, sl_kv_t v, const void *topic, uint64_t seq,
                  sl_kp_stash_t *stash, sl_kp_why_t why);

/* The stash of a PAUSED partition was offered again (room freed) with result v. Unless it is
 * SL_KV_FULL again, the stash is handed back in *stash for the caller to free and the call
 * returns SL_KP_ACT_RESUME if the partition is ACTIVE again (it stays paused, reason durable,
 * when its pending FIFO is full). */
int sl_kp_unstash(sl_kpart_t *p, sl_kv_t v, const void *topic, uint64_t seq, sl_kp_stash_t *stash);

/* Stores every pending offset whose seq is durable, asking is_durable(arg, topic, seq) for the
 * oldest first. Returns SL_KP_ACT_RESUME when a partition paused for `durable` may go on. */
int sl_kp_durable(sl_kpart_t *p, int (*is_durable)(void *arg, const void *topic, uint64_t seq),
                  void *arg);

#endif
