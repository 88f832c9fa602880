/*
 * Topics: the in-memory log of one topic (a ring of refcounted, immutable, pre-encoded messages)
 * and its readers, which are cursors into that ring. There are no per-reader queues: a message
 * is stored once however many readers lag behind it. This module decides what a reader is owed
 * (messages, gap and reset markers, overflow) but performs no I/O and makes no libuv calls; the
 * hub drives it and the transports turn its decisions into bytes.
 *
 * Invariants:
 *   - ring[first .. first+count) holds messages in increasing seq order from tail to head,
 *     where head = head_seq is the newest message's seq and tail the oldest's (head_seq + 1
 *     when empty). Seqs are contiguous unless the topic's head jumped (sl_hub_publish_at, a
 *     topic fed by an external log whose offsets skip): the seqs in between are *holes*, ids
 *     that no message has. A hole is not a loss; a reader passes it silently. Nothing is
 *     allocated for a hole, whatever its width;
 *   - every message in a ring is also on the hub's publish-order list (msg->all) and holds one
 *     reference for the ring; each in-flight write holds one more;
 *   - a reader's `next` is the seq it needs next: tail <= next <= head + 1 once checked by
 *     sl_reader_check(); before that it may be below tail (it fell behind eviction). It may
 *     point into a hole: it is then owed the first message after it;
 *   - evicted_seq is the newest evicted message's seq: a reader below the tail but past it
 *     missed only holes (and the lost ranges there);
 *   - losses[0 .. nlosses) are the ranges of ids declared lost (sl_hub_lose), sorted, disjoint
 *     and not adjacent. A lost id is a hole that had a message the topic never got (an
 *     external log removed it first): a reader crossing it is told, with a gap marker (reason
 *     lost) that counts exactly the lost ids it crossed. A hole is not told.
 */
#ifndef SL_TOPIC_H
#define SL_TOPIC_H

#include "lib/config.h"
#include "core/msg.h"
#include "lib/budget.h"
#include "lib/util.h"

#include <stddef.h>
#include <stdint.h>

struct sl_topic;
struct sl_sub;
struct sl_lossless;
struct sl_disk_batch;
struct sl_cursor;

/* Why a reader missed messages (gap and overflow reasons; also metrics labels). */
typedef enum {
    SL_LAG_EVICTED = 0,
    SL_LAG_HARD,
    SL_LAG_SOFT,
    SL_LAG_AGE,
    SL_LAG_LOST, /* ids declared lost by the topic's source (not the reader's doing) */
    SL_LAG__COUNT,
} sl_lag_reason_t;
const char *sl_lag_reason_name(sl_lag_reason_t r);

/* Why the ring dropped a message (metrics labels). */
typedef enum {
    SL_EVICT_MAX_MESSAGES = 0,
    SL_EVICT_MAX_BYTES,
    SL_EVICT_MAX_AGE,
    SL_EVICT_BUDGET,
    SL_EVICT__COUNT,
} sl_evict_reason_t;
const char *sl_evict_reason_name(sl_evict_reason_t r);

/* Control markers owed to a reader before its next message (bit flags). A reset is written
 * before a gap. Gaps coalesce: a second gap before the first was written widens the first. */
enum {
    SL_MARK_NONE = 0,
    SL_MARK_GAP = 1,
    SL_MARK_RESET = 2,
};

/* A cursor of one subscriber into one topic. Owned by its sl_sub (array member); attached to
 * the topic with sl_reader_attach() and detached with sl_reader_detach(). */
typedef struct sl_reader {
    struct sl_topic *topic;
    struct sl_sub *sub;
    sl_list_t link;         /* in topic->readers */
    uint64_t next;          /* next seq owed */
    uint64_t soft_since_ms; /* when the soft lag limit was first exceeded; 0 if not */
    uint8_t mark;           /* SL_MARK_* bits */
    uint8_t mark_reason;    /* sl_lag_reason_t for gaps */
    uint8_t gap_from_known;
    uint8_t disk_ok;   /* may read what the ring no longer holds from the topic's log */
    uint8_t disk_wait; /* a disk read (or the write it needs) is under way */
    uint8_t ahead;     /* a queued reset is for an id beyond the head (not another epoch) */
    uint8_t disk_read; /* a read-back was queued since attach (the first is smaller) */
    uint64_t gap_from, gap_to, gap_missed;
    struct sl_disk_batch *disk; /* messages read back from the log, not yet delivered */
    void *disk_job;             /* the read in flight */
    struct sl_cursor *cursor;   /* the durable cursor this reader moves, if any */
} sl_reader_t;

struct sl_topic;

/* A range of ids declared lost, inclusive. */
typedef struct sl_loss {
    uint64_t from, to;
} sl_loss_t;

/* A topic remembers at most this many lost ranges; past it the oldest two merge (the ids
 * between them then count as lost too). Ranges no reader can cross any more are dropped. */
#define SL_TOPIC_LOSSES_MAX 32

/* A topic's storage beyond its ring, as a table of functions: the lossless log
 * (store/lossless.c) and a lossy topic fed by Kafka (kafka/readback.c). The hub and the
 * transports call these and nothing else of a storage; a topic without one (t->backend NULL)
 * lives in its ring only. The backend's state hangs off the topic (t->ll for the log,
 * t->backend_state otherwise) and is freed by `free`. Loop thread only. */
typedef struct sl_backend {
    const char *name;
    int reads_back; /* readers behind the ring read older messages back from it */
    /* `from=oldest` starts at the ring's tail, not at the storage's floor (Kafka: a partition's
     * whole retention is not what a subscriber asking for the oldest retained means). */
    int oldest_in_ring;
    /* May messages be appended now? 0, SL_EFULL (push back on the publisher) or SL_EDISK (the
     * storage failed: refuse). Asked before anything is charged. */
    int (*admit)(struct sl_topic *t);
    /* n messages are about to be appended (the budget is reserved): 0, or as admit. */
    int (*prepare)(struct sl_topic *t, size_t n);
    /* Message m (already numbered) joins the topic; the backend may take references. */
    void (*append)(struct sl_topic *t, sl_msg_t *m);
    /* Reader r of the topic is going away (its read-backs and cursor are released). */
    void (*reader_gone)(sl_reader_t *r);
    /* 1 if the storage holds nothing worth keeping the topic for once it is idle. */
    int (*idle)(const struct sl_topic *t);
    /* Frees the backend's state (the topic is being freed). */
    void (*free)(struct sl_topic *t);
    /* The topic's ring is empty and it is being renumbered by sl_topic_rebase (t->epoch is
     * already the new one; `same_epoch` says whether it changed): 0 if the storage can follow,
     * else SL_EBUSY. Optional (NULL: as for a topic without storage). */
    int (*rebase)(struct sl_topic *t, int same_epoch, uint64_t head);
    /* Read-back (when reads_back), for a reader r with r->disk_ok whose `next` is below the
     * ring's tail. `read_next` returns the next message its read-back batch holds for it (seq
     * >= r->next: a seq above it means the ids between are holes), a borrowed reference valid
     * until r's next call, or NULL. `read_fetch` then starts a read-back (marking r->disk_wait;
     * sl_reader_notify_ready(r) is called when it completes) and returns 1, or returns 0 when
     * nothing is to be read: r is not behind, or what it needs is gone, in which case a gap
     * marker has been queued and counted and r->next moved past it. */
    sl_msg_t *(*read_next)(sl_reader_t *r);
    int (*read_fetch)(sl_reader_t *r);
} sl_backend_t;

/* One topic's log. Owned by the hub, freed by sl_topic_free() when it is idle past its TTL or
 * at shutdown. */
typedef struct sl_topic {
    char *name;
    size_t name_len;
    uint64_t epoch;
    char epoch_hex[17];
    uint64_t head_seq;  /* last seq assigned; 0 before the first message */
    uint64_t cum_bytes; /* payload bytes ever appended to this log */
    sl_msg_t **ring;
    size_t cap, first, count;
    uint64_t bytes;             /* payload bytes retained in the ring */
    uint64_t created_gseq;      /* the hub's gseq when this log was created */
    uint64_t last_evicted_gseq; /* gseq of the newest message evicted so far; 0 if none */
    sl_topic_conf_t conf;
    sl_list_t readers;
    size_t nreaders;
    sl_list_t all_link;          /* hub's list of topics */
    sl_list_t dirty_link;        /* hub's dirty list, when it has undelivered messages */
    struct sl_topic *hnext;      /* hub hash chain */
    uint64_t idle_since_ms;      /* when it last became empty with no readers; 0 if in use */
    const sl_backend_t *backend; /* its storage beyond the ring, or NULL */
    struct sl_lossless *ll;      /* the lossless backend's state: the on-disk log */
    void *backend_state;         /* another backend's state */
    uint64_t disk_floor;  /* first seq the backend may still hold for read-back; UINT64_MAX none */
    uint64_t evicted_seq; /* seq of the newest message evicted from the ring; 0 if none */
    sl_loss_t *losses;    /* SL_TOPIC_LOSSES_MAX slots once a loss is declared, else NULL */
    uint32_t nlosses;
    uint64_t losses_gen; /* changes whenever losses does (a storage records them) */
} sl_topic_t;

/* Creates an empty topic log with a fresh random epoch. `name` is copied. */
sl_topic_t *sl_topic_new(const char *name, size_t name_len, const sl_topic_conf_t *conf,
                         uint64_t created_gseq);

/* Renumbers a topic whose ring is empty: its epoch becomes `epoch` and its next message gets
 * seq head+1. This is how a topic fed by an external log (Kafka) takes that log's coordinates,
 * so that ids name the same message on every node. Within the same epoch a topic is never
 * renumbered backwards past what its readers may have seen: without storage only forwards
 * (head >= head_seq); with storage, as the storage allows (a lossless log: down to the last seq
 * it holds, undoing the skip a crash recovery makes). Readers, all waiting for new messages,
 * move with it. Returns 0 or SL_EBUSY. */
int sl_topic_rebase(sl_topic_t *t, uint64_t epoch, uint64_t head);

/* Frees the topic, dropping the ring's references. It must have no readers. The caller must
 * already have unlinked it from every hub list; ring messages are unlinked from msg->all here. */
void sl_topic_free(sl_topic_t *t);

/* The oldest retained message's seq, or head + 1 when the ring is empty. */
static inline uint64_t sl_topic_tail(const sl_topic_t *t)
{
    return t->count ? t->ring[t->first]->seq : t->head_seq + 1;
}

/* The i-th retained message, oldest first (i < count). */
static inline sl_msg_t *sl_topic_nth(const sl_topic_t *t, size_t i)
{
    return t->ring[(t->first + i) & (t->cap - 1)];
}

/* The index (0..count) of the first retained message whose seq is >= `seq`. O(1) while seqs
 * are contiguous, a binary search past holes. */
size_t sl_topic_index(const sl_topic_t *t, uint64_t seq);

/* The retained message with sequence `seq`, or NULL if none has it (outside tail..head, or a
 * hole). */
sl_msg_t *sl_topic_get(const sl_topic_t *t, uint64_t seq);

/* The first retained message whose seq is >= `seq`, or NULL if there is none. This is what a
 * reader whose `next` is `seq` (and not below the tail) is owed next: holes are passed. */
sl_msg_t *sl_topic_at(const sl_topic_t *t, uint64_t seq);

/* Moves the head forward to `head` (> head_seq) without a message, so that the next message
 * appended gets seq head + 1: the ids between are holes. The caller appends that message at
 * once (sl_hub_publish_at). */
void sl_topic_skip(sl_topic_t *t, uint64_t head);

/* Declares ids from..to (from <= to, all above the head) lost: the caller publishes a message
 * past `to` next (sl_hub_lose). Merges with an overlapping or adjacent range; drops ranges no
 * reader can cross any more (below both the evicted seq and the storage's floor); past
 * SL_TOPIC_LOSSES_MAX merges the oldest two. */
void sl_topic_lose(sl_topic_t *t, uint64_t from, uint64_t to);

/* Replaces the topic's lost ranges by v[0..n) (sorted, disjoint; a storage's recovery). */
void sl_topic_set_losses(sl_topic_t *t, const sl_loss_t *v, uint32_t n);

/* How many ids in from..to (inclusive; none if to < from) are declared lost; when some are,
 * *first and *last are the first and the last of them. */
uint64_t sl_topic_lost(const sl_topic_t *t, uint64_t from, uint64_t to, uint64_t *first,
                       uint64_t *last);

/* Appends `m` (taking over the caller's reference) as seq head+1 (the head may have been moved
 * by sl_topic_skip). The caller links m->all.
 * Then evicts from the tail to honour max_messages and max_bytes; evicted messages are passed
 * to `on_evict` (which must unlink m->all and drop the ring's reference). */
typedef void (*sl_evict_cb)(sl_topic_t *t, sl_msg_t *m, sl_evict_reason_t why, void *arg);
void sl_topic_append(sl_topic_t *t, sl_msg_t *m, sl_evict_cb on_evict, void *arg);

/* Removes the oldest message from the ring and returns it (the ring's reference passes to the
 * caller), or NULL when empty. Updates last_evicted_gseq and bytes. */
sl_msg_t *sl_topic_pop_tail(sl_topic_t *t);

/* Where a new reader starts. */
typedef enum {
    SL_START_NEW = 0, /* only messages published from now on */
    SL_START_OLDEST,  /* everything retained */
    SL_START_SINCE,   /* after (epoch, seq) */
    SL_START_GSEQ,    /* after server-wide counter value (multi-topic resume) */
} sl_start_kind_t;

typedef struct sl_start {
    sl_start_kind_t kind;
    uint8_t disk;   /* the reader may read back from a lossless topic's log */
    uint64_t epoch; /* SINCE: topic epoch; GSEQ: stream epoch */
    uint64_t seq;   /* SINCE: seq; GSEQ: gseq */
} sl_start_t;

/* Attaches reader `r` (owned by `sub`) to topic `t` and sets its cursor from `start`, queueing a
 * reset marker (other epoch). A resume point past retention leaves the cursor below the tail,
 * for sl_reader_check() to apply the topic's policy; a multi-topic resume point whose first
 * missed message is no longer known queues a gap itself and returns 1 (0 otherwise).
 * `stream_epoch` is the server's epoch, compared for SL_START_GSEQ. */
int sl_reader_attach(sl_reader_t *r, struct sl_sub *sub, sl_topic_t *t, const sl_start_t *start,
                     uint64_t stream_epoch);

/* Detaches `r` from its topic; harmless if already detached. */
void sl_reader_detach(sl_reader_t *r);

/* What a reader check found that the caller must act on. */
typedef enum {
    SL_CHECK_OK = 0,   /* nothing, or a gap marker was queued (policy skip) */
    SL_CHECK_OVERFLOW, /* policy disconnect: the reader must get an overflow marker and close */
} sl_check_t;

/* Applies eviction and lag limits to reader `r` at time `now_ms`. Under `skip` it moves the
 * cursor and queues (or widens) a gap marker; under `disconnect` it returns SL_CHECK_OVERFLOW
 * and sets *reason and *missed. A reader below the tail is always acted on (reason evicted).
 * Lag limits judge only a reader that is `behind`: one whose previous write has not been taken
 * by its socket yet. A reader with nothing in flight is about to be offered everything owed, so
 * messages published since its last write are not held against it (as Redis judges a client
 * by its pending output, not by what it has yet to be sent).
 * Counts nothing itself: `*reason` and `*missed` are set whenever a gap or an overflow was
 * decided (*missed = 0 when nothing was decided), and the caller counts them. */
sl_check_t sl_reader_check(sl_reader_t *r, uint64_t now_ms, int behind, sl_lag_reason_t *reason,
                           uint64_t *missed);

/* True when `r` is owed something: a marker or a retained message. */
static inline int sl_reader_ready(const sl_reader_t *r)
{
    return r->mark != SL_MARK_NONE || (r->next <= r->topic->head_seq && !r->disk_wait);
}

/* The oldest seq reader r can still be given: the ring's tail, or for a reader that reads back
 * (a lossless topic's log, Kafka), the oldest seq the backend may still hold. */
static inline uint64_t sl_reader_floor(const sl_reader_t *r)
{
    uint64_t tail = sl_topic_tail(r->topic);
    if (r->disk_ok && r->topic->disk_floor < tail)
        return r->topic->disk_floor;
    return tail;
}

/* Read-back through r's topic backend (see sl_backend_t): the next message its batch holds, or
 * NULL; and starting a read (1) or not (0). */
static inline sl_msg_t *sl_reader_read_next(sl_reader_t *r)
{
    return r->disk_ok ? r->topic->backend->read_next(r) : NULL;
}
static inline int sl_reader_read_fetch(sl_reader_t *r)
{
    return r->disk_ok ? r->topic->backend->read_fetch(r) : 0;
}

/* Tells r's subscriber that a read-back for r completed: its sub's own callback
 * (sl_sub_ops_t.disk_ready) if it has one, else the one set here (connections). */
void sl_reader_notify_ready(sl_reader_t *r);
void sl_reader_set_ready_cb(void (*on_ready)(sl_reader_t *r));

/* Queues (or widens) a gap marker for reader r over seqs from..to (`missed` messages, reason
 * evicted), counts it, and moves r->next to to + 1. For read-back backends. */
void sl_reader_gap(sl_reader_t *r, uint64_t from, uint64_t to, uint64_t missed);

/* Reader r moves on from r->next to `seq` (> r->next): the message it is given next, or the
 * first seq that the storage or the ring holds after ids it passes. Ids declared lost in
 * between become a gap marker (reason lost; queued, or widening a pending gap), counted;
 * holes are passed silently. r->next becomes seq. Returns 1 if lost ids were crossed: the
 * marker must then go out before the message at `seq`. */
int sl_reader_cross(sl_reader_t *r, uint64_t seq);

/* Message ids. */
#define SL_ID_MAX 48
/* Formats "<16 hex>-<seq>" into buf (>= SL_ID_MAX bytes); returns the length. */
size_t sl_id_format(char *buf, uint64_t epoch, uint64_t seq);
/* Parses "<16 hex>-<seq>" (seq >= 0, decimal, no sign, no leading junk). For a multi-topic id
 * "<16 hex>-<gseq>:<topic>" the topic suffix is accepted and ignored when `allow_suffix`.
 * Returns 0 or SL_EBADID. */
int sl_id_parse(const char *s, size_t len, int allow_suffix, uint64_t *epoch, uint64_t *seq);

/* Validates a topic name: 1..max bytes of [A-Za-z0-9._~/-], no empty '/'-segment. */
int sl_topic_name_valid(const char *s, size_t len, size_t max);
/* The prefix of sluice's own SSE events (sluice.gap, sluice.reset, sluice.overflow …). */
#define SL_EVENT_RESERVED_PREFIX "sluice."

#endif
