/*
 * Kafka sources (source.h): a librdkafka consumer per `[source "NAME"]`, run on the libuv loop.
 *
 * Design note.
 *
 * Wake-ups. The consumer queue (with the main queue forwarded to it by
 * rd_kafka_poll_set_consumer, so rebalances, errors, logs and commit results arrive there too)
 * writes a byte to a non-blocking pipe when it goes from empty to non-empty; a uv_poll watches
 * the pipe. librdkafka signals only that transition, so a wake-up that leaves records in the
 * queue must itself come back for them: each turn serves at most BATCH_MAX records or
 * BATCH_MS, and while the queue is not empty the uv_idle handle calls the next turn. Waiting
 * for another pipe event instead is the stall of platformatic/kafka #254.
 *
 * States of a source:
 *
 *   STARTING ──cluster id known (thread pool)──► RUNNING ──sl_kafka_stop──► STOPPING ──► CLOSED
 *     ▲  └──────────────────────sl_kafka_stop──────┼─────────────────────────┘        ▲
 *     │                                fatal error ▼                                  │
 *     └──recreate (after backoff_ms)──────────── RESTARTING ──sl_kafka_stop───────────┘
 *
 * STARTING asks the cluster id off the loop (a blocking call) and retries it every
 * CLUSTER_ID_RETRY_MS until a broker answers; only then does the consumer subscribe, because
 * the ids of every record depend on it. STOPPING stores what is done, gives the consumer to the
 * thread pool to leave the group, commit and be destroyed, then closes the handles (CLOSED).
 * RESTARTING (fail_source) gives the partitions up, destroys the failed consumer on the thread
 * pool (destroy_failed, from the tick) and makes a new one after a backoff (recreate); the
 * handles, the pipe and the cluster id stay. One uv_work_t runs the cluster id, the close and
 * the destruction; a second runs the watermark and committed-offset rounds (wm_query). Both
 * use the consumer, so nothing destroys it while either is busy.
 *
 * Partitions follow kafka/kpart.h (assigned, paused with a stash, revoked). Performed here:
 * pause and resume in librdkafka (only what kpart decided, so never a partition sluice did not
 * pause), the wait for room on the lossless log (the waiter HTTP and WebSocket publishers use),
 * retries of a budget refusal from the maintenance timer, and storing offsets kpart released.
 * librdkafka commits the stored offsets every commit_interval, on revoke and on close.
 *
 * Ids. A sluice topic is bound to one partition by its first record: it is renumbered
 * (sl_topic_rebase) to the partition's epoch with head = offset, so the record gets
 * seq = offset + 1 and id <E>-<offset+1>. A record whose offset is not past the head is a
 * duplicate (redelivered after a rebalance, restart or outage) and is dropped and counted.
 * A record whose offset skips past head + 1 (compaction, transaction markers, records that
 * other keys routed to other topics, records rejected) is published at seq = offset + 1 all
 * the same (sl_hub_publish_at): the topic's head jumps and the ids between are holes, which
 * readers pass without a gap marker and which cost no memory however wide. So ids always
 * equal offsets + 1, on every node; a lossless topic's log keeps the same holes. (The other
 * way, a contiguous internal seq with the offset carried beside it, would have needed the
 * offset in every frame, in the disk records and in every resume lookup.) Skips are counted
 * in sluice_kafka_offset_skips_total, not as gaps.
 *
 * Read-back (kafka/readback.c). A lossy topic bound to a partition gets the Kafka backend: a
 * reader behind its ring reads the missed records back from Kafka with the source's second,
 * group-less consumer; what Kafka no longer has is a counted gap.
 */
#include "kafka/source.h"

#include "lib/log.h"
#include "lib/template.h"
#include "lib/util.h"
#include "core/metrics.h"
#include "core/rules.h"
#include "core/topic.h"
#include "kafka/kpart.h"
#include "kafka/readback.h"
#include "store/lossless.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BATCH_MAX 256
#define BATCH_MS 2
#define TICK_MS 50
#define CLUSTER_ID_RETRY_MS 1000
#define NAME_CAP 1024
#define WM_QUERY_MS 2000   /* paused partitions' watermarks are asked this often */
#define WM_TIMEOUT_MS 1000 /* per blocking query, on the thread pool */
#define WM_QUERY_MAX 64    /* partitions per query round */
#define WM_ROUND_MS 4000   /* a round's thread is waited for this long (wm_work) */
#define WM_PAUSE_MS 60000  /* no round for this long after one was abandoned */
#define STABLE_MS 60000    /* a recreated consumer running this long resets the backoff */
#define LOSSES_KEPT 4      /* retention losses a partition remembers for its topics */
/* How long a broker may hold a fetch with nothing to return (fetch.wait.max.ms; the
 * pass-through may change it). One fetch is in flight per broker connection, so a partition
 * resumed or restarted while an empty fetch is held waits for it: 100 ms keeps that short at
 * the cost of at most 10 empty fetches a second per idle broker connection. A real broker
 * answers as soon as records arrive, whatever the wait. */
#define FETCH_WAIT_MS "100"
#define WAKE_MS 10 /* no record this long after a big drain: restart the fetches */

/* Why a record was not taken (metrics labels). */
enum {
    REJ_TOO_BIG = 0,
    REJ_BAD_TOPIC,
    REJ_BAD_EVENT,
    REJ_RESERVED,
    REJ_FAN_IN,
    REJ_TOPIC_LIMIT,
    REJ__COUNT,
};
static const char *const rej_names[REJ__COUNT] = {"too_big",  "bad_topic", "bad_event",
                                                  "reserved", "fan_in",    "topic_limit"};

/* SRC_RESTARTING (after a fatal error) sorts after SRC_STOPPING on purpose: the callbacks that
 * librdkafka may still run while a failed consumer is destroyed touch nothing, as when leaving. */
enum { SRC_STARTING = 0, SRC_RUNNING, SRC_STOPPING, SRC_CLOSED, SRC_RESTARTING };

struct ksrc;

/* One assigned (or once assigned) partition. Owned by its source, freed with it. */
typedef struct kpe {
    struct ksrc *src;
    char *ktopic;
    int32_t partition;
    uint64_t epoch;
    sl_kpart_t kp;
    sl_waiter_t w;         /* waits for room on a lossless topic, while paused for it */
    int wake;              /* the waiter was woken: offer the stash again */
    int budget_retry;      /* paused for the budget: offer the stash again at the next tick */
    uint32_t rej_logged;   /* reasons already logged for this partition (bits) */
    uint64_t paused_at_ms; /* while paused */
    uint64_t paused_ms;    /* in total */
    int64_t committed;     /* the group's committed offset, when committed_known == 1 */
    int committed_known;   /* 0 not known yet, 1 known, 2 the group has none for it */
    int64_t lo_wm, hi_wm;  /* watermarks as last known; -1 unknown */
    uint64_t wm_ms;        /* when they were last refreshed */
    int64_t resume_next;   /* after a resume: the offset the next record should have; -1 */
    int64_t polled_next;   /* the offset after the last record taken from the queue while the
                              partition was active (librdkafka's own resume position); -1 */
    int gone;              /* Kafka said its topic does not exist (deleted): logged once */
    int check_gone;        /* revoked: does its topic still exist? (asked off the loop) */
    /* Offsets retention removed before sluice took them (the newest LOSSES_KEPT ranges,
     * inclusive, oldest first): declared lost on each topic the partition feeds when it
     * publishes past them (declare_losses), so that its readers are told. */
    int64_t lost_from[LOSSES_KEPT], lost_to[LOSSES_KEPT];
    int nlost;
} kpe_t;

/* One partition of a watermark and committed-offset query, run on the thread pool. */
typedef struct wmq {
    char *ktopic;
    int32_t partition;
    int want_wm, want_committed, want_exists;
    int64_t lo, hi, committed;
    int wm_err, committed_err;
    int exists; /* want_exists: 1 yes, 0 the cluster does not know the topic, -1 no answer */
} wmq_t;

/* A stashed record: one budgeted block holding the topic name, the event and the payload. */
typedef struct stash_rec {
    size_t nlen, plen;
    char *name, *event, *payload;
} stash_rec_t;

/* One source. Owned by the sources list; freed when its handles are closed. */
typedef struct ksrc {
    const sl_source_conf_t *conf;
    int state;
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;
    int pipefd[2];
    uv_poll_t poll;
    uv_idle_t idle;
    uv_timer_t tick;
    uv_work_t work;
    int work_busy;
    int handles_open;
    int closed_cleanly;    /* the group was left and the last offsets committed */
    int destroy_abandoned; /* rd_kafka_destroy did not end in time (destroy_bounded) */
    char cluster_id[256];
    uint64_t cluster_retry_at_ms;
    kpe_t **parts;
    size_t nparts, capparts;
    kpe_t *last; /* the partition of the previous record (records come in runs) */
    int store_dirty;
    int brokers_down; /* logged once per change */
    uint64_t prefetch_charge;
    uint64_t last_progress_ms;
    uint64_t drained_bytes; /* record bytes served since the queue was last seen empty */
    uint64_t wake_due_ms;   /* a big drain left the queue empty: restart the fetches then,
                               unless a record arrives first (wake_fetchers); 0 none */
    uint64_t fetch_wakes;   /* wake_fetchers rounds (fetches restarted after a full queue) */
    uv_work_t wm_work;      /* the watermark query: one in flight at most */
    int wm_busy;
    uint64_t wm_next_ms;
    wmq_t *wmq;
    size_t nwmq;
    int wm_abandoned;       /* the last round did not end in time (wm_work) */
    int failed;             /* the consumer raised a fatal error: it is destroyed, then made
                               again after backoff_ms */
    uint64_t backoff_ms;    /* the last delay before a recreation; 0 after a stable run */
    uint64_t restart_at_ms; /* when to recreate; 0 while the failed one is being destroyed */
    uint64_t created_ms;    /* when the current consumer was made */
    int test_fatal_done;    /* the test hook fired */
    /* counters */
    uint64_t published, duplicates, rejected[REJ__COUNT], pauses[SL_KP_WHY__COUNT], resumes;
    uint64_t rebalances, commits, commit_errors, offset_skips, errors;
    uint64_t fatal_errors, restarts, topics_gone, retention_gaps;
    uint64_t retention_lost[2]; /* records retention removed from paused partitions, by the
                                   durability of the topic they were for: lossy, lossless */
    sl_krb_t *rb;               /* read-back for readers behind the rings of its lossy topics */
} ksrc_t;

static struct {
    uv_loop_t *loop;
    sl_hub_t *hub;
    const sl_config_t *cfg;
    void (*kick)(void *);
    void *kick_arg;
    ksrc_t **v;
    size_t n;
    int stopping;
    uint64_t test_fatal_after; /* SLUICE_KAFKA_TEST_FATAL_AFTER (tests only; README) */
} ks;

uint64_t sl_kafka_epoch(const char *cluster_id, const char *topic, int32_t partition)
{
    uint64_t h = 0xcbf29ce484222325ull;
    char num[16];
    const char *parts[3] = {cluster_id, topic, num};
    snprintf(num, sizeof(num), "%d", (int)partition);
    for (int i = 0; i < 3; i++) {
        for (const char *p = parts[i]; *p; p++) {
            h ^= (uint8_t)*p;
            h *= 0x100000001b3ull;
        }
        h ^= 0xff; /* a separator no name contains */
        h *= 0x100000001b3ull;
    }
    return h ? h : 1;
}

int64_t sl_kafka_lag(int64_t hi, int64_t next)
{
    if (hi < 0 || next < 0)
        return -1;
    return hi > next ? hi - next : 0;
}

int64_t sl_kafka_retention_lost(int64_t expected, int64_t offset, int64_t lo, int reset_latest)
{
    if (expected < 0 || offset <= expected || lo <= expected)
        return 0;
    return (reset_latest || lo > offset ? offset : lo) - expected;
}

uint64_t sl_kafka_backoff_next(uint64_t prev)
{
    if (prev < 1000)
        return 1000;
    return prev >= 30000 ? 60000 : 2 * prev;
}

/* ---- partitions ------------------------------------------------------------------------- */

static kpe_t *part_find(ksrc_t *s, const char *topic, int32_t partition, int create)
{
    if (s->last != NULL && s->last->partition == partition && strcmp(s->last->ktopic, topic) == 0)
        return s->last;
    for (size_t i = 0; i < s->nparts; i++) {
        kpe_t *e = s->parts[i];
        if (e->partition == partition && strcmp(e->ktopic, topic) == 0)
            return s->last = e;
    }
    if (!create)
        return NULL;
    if (s->nparts == s->capparts) {
        s->capparts = s->capparts ? 2 * s->capparts : 16;
        s->parts = sl_realloc(s->parts, s->capparts * sizeof(*s->parts));
    }
    kpe_t *e = sl_calloc(1, sizeof(*e));
    e->src = s;
    e->ktopic = sl_strdup(topic);
    e->partition = partition;
    e->epoch = sl_kafka_epoch(s->cluster_id, topic, partition);
    e->kp.stored = -1;
    e->committed = -1;
    e->lo_wm = e->hi_wm = -1;
    e->resume_next = e->polled_next = -1;
    s->parts[s->nparts++] = e;
    return s->last = e;
}

static void stash_free(sl_kp_stash_t *st)
{
    if (st->data != NULL)
        sl_bfree(st->data, st->bytes);
    st->data = NULL;
}

static void one_partition(rd_kafka_topic_partition_list_t **l, kpe_t *e, int64_t offset)
{
    *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(*l, e->ktopic, e->partition)->offset = offset;
}

/* Restarts the fetch of a partition at its current position: librdkafka 2.0.2 neither wakes
 * the broker thread when a partition is resumed nor when the application drains a queue that
 * was over queued.max.messages.kbytes, so the next fetch waits for other traffic on that
 * connection or for the thread's 1 s timeout (later versions have fetch.queue.backoff.ms). A
 * seek to the position the consumer would fetch from anyway wakes it at once. Nothing is
 * skipped or fetched twice: polled_next is the offset after the last record polled for the
 * partition, where librdkafka itself restarts a resumed partition, and records of the
 * partition still queued or in flight are dropped by the seek's version barrier and fetched
 * again. The seek is asynchronous. */
static void seek_position(kpe_t *e)
{
    if (e->polled_next < 0 || e->kp.state != SL_KP_ACTIVE || e->src->failed)
        return;
    rd_kafka_topic_partition_list_t *l;
    one_partition(&l, e, e->polled_next);
    rd_kafka_error_t *err = rd_kafka_seek_partitions(e->src->rk, l, 0);
    if (err != NULL) {
        SL_DEBUG("kafka seek failed", "source=%s kafka_topic=%s partition=%d error=\"%s\"",
                 e->src->conf->name, e->ktopic, (int)e->partition, rd_kafka_error_string(err));
        rd_kafka_error_destroy(err);
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static void set_paused(kpe_t *e, int paused)
{
    rd_kafka_topic_partition_list_t *l;
    one_partition(&l, e, RD_KAFKA_OFFSET_INVALID);
    rd_kafka_resp_err_t err = paused ? rd_kafka_pause_partitions(e->src->rk, l)
                                     : rd_kafka_resume_partitions(e->src->rk, l);
    if (err == 0 && l->elems[0].err != 0)
        err = l->elems[0].err;
    if (err != 0)
        SL_WARN(paused ? "kafka pause failed" : "kafka resume failed",
                "source=%s kafka_topic=%s partition=%d error=%s", e->src->conf->name, e->ktopic,
                (int)e->partition, rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_destroy(l);
}

/* Performs what kpart decided. */
static void perform(kpe_t *e, int act)
{
    ksrc_t *s = e->src;
    if (e->kp.store_dirty)
        s->store_dirty = 1;
    if (act == SL_KP_ACT_PAUSE) {
        if (!s->failed)
            set_paused(e, 1);
        s->pauses[e->kp.why]++;
        e->paused_at_ms = sl_now_ms();
        SL_DEBUG("kafka partition paused", "source=%s kafka_topic=%s partition=%d reason=%s",
                 s->conf->name, e->ktopic, (int)e->partition, sl_kp_why_name(e->kp.why));
    } else if (act == SL_KP_ACT_RESUME) {
        if (!s->failed) {
            set_paused(e, 0); /* a failed consumer is destroyed with its pauses */
            seek_position(e); /* fetch now, not at the broker thread's next wake-up */
        }
        if (e->kp.state == SL_KP_ACTIVE)
            e->resume_next = e->kp.seen + 1;
        s->resumes++;
        e->paused_ms += sl_now_ms() - e->paused_at_ms;
        e->paused_at_ms = 0;
        SL_DEBUG("kafka partition resumed", "source=%s kafka_topic=%s partition=%d", s->conf->name,
                 e->ktopic, (int)e->partition);
    }
}

/* Hands librdkafka every offset kpart released since the last call. */
static void store_offsets(ksrc_t *s)
{
    if (!s->store_dirty || s->failed)
        return;
    s->store_dirty = 0;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
    for (size_t i = 0; i < s->nparts; i++) {
        kpe_t *e = s->parts[i];
        if (!e->kp.store_dirty)
            continue;
        e->kp.store_dirty = 0;
        if (e->kp.state == SL_KP_ACTIVE || e->kp.state == SL_KP_PAUSED)
            rd_kafka_topic_partition_list_add(l, e->ktopic, e->partition)->offset = e->kp.stored;
    }
    if (l->cnt > 0) {
        rd_kafka_resp_err_t err = rd_kafka_offsets_store(s->rk, l);
        if (err != 0)
            SL_DEBUG("kafka offsets store", "source=%s error=%s", s->conf->name,
                     rd_kafka_err2str(err));
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* ---- offering records to topics --------------------------------------------------------- */

typedef struct offer {
    sl_kv_t v;
    sl_topic_t *t;
    uint64_t seq;
    sl_kp_why_t why;
    int reason; /* REJ_*, when v is SL_KV_REJECTED */
} offer_t;

static void reject_log(kpe_t *e, int reason, const char *name)
{
    e->src->rejected[reason]++;
    if (e->rej_logged & (1u << reason))
        return;
    e->rej_logged |= 1u << reason;
    SL_WARN("kafka record skipped (logged once per partition and reason; counted in "
            "sluice_kafka_messages_total)",
            "source=%s kafka_topic=%s partition=%d reason=%s topic=%s", e->src->conf->name,
            e->ktopic, (int)e->partition, rej_names[reason], name);
}

/* The partition's retention losses that topic t (bound to it) has not passed become lost ids
 * of t, before its record at seq `at` is published: its readers crossing them get a gap. Ids
 * are offsets + 1. */
static void declare_losses(const kpe_t *e, sl_topic_t *t, uint64_t at)
{
    for (int i = 0; i < e->nlost; i++) {
        uint64_t from = (uint64_t)e->lost_from[i] + 1, to = (uint64_t)e->lost_to[i] + 1;
        if (from <= t->head_seq)
            from = t->head_seq + 1;
        if (from <= to && to < at)
            sl_hub_lose(ks.hub, t, from, to);
    }
}

/* Offers one record (or a stash) to the topic `name`. */
static offer_t offer(kpe_t *e, const char *name, size_t nlen, const char *ev, const char *payload,
                     size_t plen, int64_t off)
{
    ksrc_t *s = e->src;
    const sl_config_t *cfg = ks.cfg;
    offer_t o = {.v = SL_KV_REJECTED};
    if (plen > cfg->max_message_bytes) {
        o.reason = REJ_TOO_BIG;
        return o;
    }
    if (sl_rule_reserved(payload, plen)) {
        o.reason = REJ_RESERVED;
        return o;
    }
    int err;
    sl_topic_t *t = sl_hub_topic(ks.hub, name, nlen, SL_TOPIC_CREATE, &err);
    if (t == NULL) {
        if (err == SL_EOVERLOAD) {
            o.v = SL_KV_FULL;
            o.why = SL_KP_WHY_BUDGET;
        } else {
            o.reason = REJ_TOPIC_LIMIT;
        }
        return o;
    }
    o.t = t;
    uint64_t want = (uint64_t)off + 1;
    if (!s->conf->fan_in_local) {
        if (t->epoch != e->epoch) {
            if (sl_topic_rebase(t, e->epoch, want - 1) != 0) {
                o.reason = REJ_FAN_IN;
                return o;
            }
        } else if (t->count == 0 && want - 1 < t->head_seq &&
                   sl_topic_rebase(t, e->epoch, want - 1) == 0) {
            /* An empty ring follows the record back to the last record a lossless log holds
             * after a crash recovery skipped ids. */
        } else if (want <= t->head_seq) {
            /* Redelivered. Done only once the original is written, if the topic is lossless. */
            s->duplicates++;
            if (t->ll != NULL && sl_ll_durable(t) < want) {
                o.v = SL_KV_PENDING;
                o.seq = want;
            } else {
                o.v = SL_KV_DUPLICATE;
            }
            return o;
        }
        sl_krb_bind(s->rb, t, e->ktopic, e->partition);
    }
    /* Offsets this topic has no record for (compaction, transaction markers, other keys'
     * records): the head jumps to the record's id, the ids between are holes, except those
     * retention removed: lost. */
    uint64_t at = s->conf->fan_in_local ? 0 : want;
    if (at != 0)
        declare_losses(e, t, at);
    int skip = at > t->head_seq + 1;
    int rc = sl_hub_publish_at(ks.hub, t, at, ev, &payload, &plen, 1, &o.seq);
    if (rc == 0) {
        s->published++;
        s->offset_skips += skip;
        o.v = t->ll != NULL ? SL_KV_PENDING : SL_KV_DONE;
    } else if (rc == SL_EFULL) {
        o.v = SL_KV_FULL;
        o.why = SL_KP_WHY_FULL;
    } else {
        /* The budget (or a log that cannot be written): retried from the timer. */
        o.v = SL_KV_FULL;
        o.why = SL_KP_WHY_BUDGET;
    }
    return o;
}

static void on_room(sl_waiter_t *w, int status);

/* After a FULL offer: waits on the topic's log for room, or retries from the timer. */
static void wait_room(kpe_t *e, const offer_t *o)
{
    if (o->why == SL_KP_WHY_FULL && o->t != NULL && o->t->ll != NULL) {
        e->w.wake = on_room;
        sl_ll_wait(&e->w, o->t, SL_WAIT_ROOM, 0, 0);
    } else {
        e->budget_retry = 1;
    }
}

static sl_kp_stash_t make_stash(const char *name, size_t nlen, const char *ev, const char *payload,
                                size_t plen)
{
    size_t elen = ev ? strlen(ev) + 1 : 0;
    sl_kp_stash_t st;
    st.bytes = sizeof(stash_rec_t) + nlen + 1 + elen + plen;
    stash_rec_t *r = sl_balloc(st.bytes);
    r->nlen = nlen;
    r->plen = plen;
    r->name = (char *)(r + 1);
    memcpy(r->name, name, nlen);
    r->name[nlen] = '\0';
    r->event = ev ? r->name + nlen + 1 : NULL;
    if (ev)
        memcpy(r->event, ev, elen);
    r->payload = r->name + nlen + 1 + elen;
    memcpy(r->payload, payload, plen);
    st.data = r;
    st.offset = 0;
    return st;
}

/* Offers the stash of a paused partition again (room freed, or the budget retry). */
static void unstash(kpe_t *e)
{
    stash_rec_t *r = e->kp.stash.data;
    if (e->kp.state != SL_KP_PAUSED || r == NULL)
        return;
    offer_t o = offer(e, r->name, r->nlen, r->event, r->payload, r->plen, e->kp.stash.offset);
    if (o.v == SL_KV_REJECTED)
        reject_log(e, o.reason, r->name);
    if (o.v == SL_KV_FULL) {
        e->kp.why = (uint8_t)o.why;
        wait_room(e, &o);
        return;
    }
    sl_kp_stash_t back;
    int act = sl_kp_unstash(&e->kp, o.v, o.t, o.seq, &back);
    stash_free(&back);
    perform(e, act);
    e->src->last_progress_ms = sl_now_ms();
    if (ks.kick)
        ks.kick(ks.kick_arg);
}

static void start_idle(ksrc_t *s);

static void on_room(sl_waiter_t *w, int status)
{
    (void)status;
    kpe_t *e = sl_container_of(w, kpe_t, w);
    /* Woken from inside the log's update: offer the stash from the idle turn instead. */
    e->wake = 1;
    start_idle(e->src);
}

/* The first record after a resume: did Kafka's retention pass the partition while it was
 * paused? Returns how many records it removed (0 if none). */
static int64_t retention_check(kpe_t *e, int64_t offset)
{
    ksrc_t *s = e->src;
    int64_t expected = e->resume_next, lo = -1, hi = -1;
    if (offset < expected)
        return 0; /* an older record still queued: the next one tells */
    e->resume_next = -1;
    if (offset == expected)
        return 0;
    /* The fetch that delivered this record carried the log start; the paused partition's
     * last query may know a later one. */
    if (rd_kafka_get_watermark_offsets(s->rk, e->ktopic, e->partition, &lo, &hi) != 0)
        lo = -1;
    if (lo > e->lo_wm)
        e->lo_wm = lo;
    return sl_kafka_retention_lost(expected, offset, e->lo_wm, s->conf->start_latest);
}

/* Offsets from..to of partition e were removed by retention before sluice took them. */
static void remember_loss(kpe_t *e, int64_t from, int64_t to)
{
    if (e->nlost == LOSSES_KEPT) {
        memmove(e->lost_from, e->lost_from + 1, (LOSSES_KEPT - 1) * sizeof(*e->lost_from));
        memmove(e->lost_to, e->lost_to + 1, (LOSSES_KEPT - 1) * sizeof(*e->lost_to));
        e->nlost--;
    }
    e->lost_from[e->nlost] = from;
    e->lost_to[e->nlost] = to;
    e->nlost++;
}

/* Counts and logs records that retention removed from under a paused partition. Each event is
 * logged: it happens at most once per pause. */
static void retention_count(kpe_t *e, const sl_topic_t *t, int64_t lost, int64_t offset)
{
    ksrc_t *s = e->src;
    int lossless = t != NULL && t->ll != NULL;
    s->retention_gaps++;
    s->retention_lost[lossless] += (uint64_t)lost;
    SL_WARN(lossless ? "kafka retention removed records of a paused partition before sluice took "
                       "them: a lossless topic lost them"
                     : "kafka retention removed records of a paused partition before sluice took "
                       "them",
            "source=%s kafka_topic=%s partition=%d topic=%s lost=%" PRId64 " resumed_at=%" PRId64,
            s->conf->name, e->ktopic, (int)e->partition, t != NULL ? t->name : "-", lost, offset);
}

/* One record from the consumer queue. */
static void on_record(ksrc_t *s, rd_kafka_message_t *m)
{
    const char *ktopic = rd_kafka_topic_name(m->rkt);
    kpe_t *e = part_find(s, ktopic, m->partition, 0);
    if (e == NULL || sl_kp_accept(&e->kp, m->offset) != SL_KP_ACT_NONE)
        return; /* not ours (any more): Kafka delivers it again after the resume or assign */
    e->polled_next = m->offset + 1;
    int64_t lost = e->resume_next >= 0 ? retention_check(e, m->offset) : 0;
    if (lost > 0)
        remember_loss(e, m->offset - lost, m->offset - 1);
    char name[NAME_CAP], evbuf[80];
    const char *ev = NULL;
    const char *payload = m->payload ? (const char *)m->payload : "";
    size_t plen = m->payload ? m->len : 0;
    offer_t o = {.v = SL_KV_REJECTED};
    int n = sl_kafka_route(s->conf, ks.cfg->max_topic_name, m, name, sizeof(name), evbuf,
                           sizeof(evbuf), &ev);
    if (n == SL_KRB_ROUTE_BAD_TOPIC)
        o.reason = REJ_BAD_TOPIC;
    else if (n == SL_KRB_ROUTE_BAD_EVENT)
        o.reason = REJ_BAD_EVENT;
    else
        o = offer(e, name, (size_t)n, ev, payload, plen, m->offset);
    if (o.v == SL_KV_REJECTED) {
        reject_log(e, o.reason, name);
        if (s->conf->reject_pause) {
            o.v = SL_KV_FULL;
            o.why = SL_KP_WHY_REJECT;
        }
    }
    sl_kp_stash_t st = {0};
    if (o.v == SL_KV_FULL)
        st = make_stash(o.reason == REJ_BAD_TOPIC ? "" : name,
                        o.reason == REJ_BAD_TOPIC ? 0 : strlen(name), ev, payload, plen);
    int act = sl_kp_offered(&e->kp, m->offset, o.v, o.t, o.seq, &st, o.why);
    if (lost > 0)
        retention_count(e, o.t, lost, m->offset);
    if (o.v == SL_KV_FULL && o.why != SL_KP_WHY_REJECT)
        wait_room(e, &o);
    perform(e, act); /* serve stamps last_progress_ms once per turn */
}

/* ---- the consumer queue ----------------------------------------------------------------- */

static void give_up(kpe_t *e);

/* 1 if the error text names `topic` as librdkafka writes it ("...: NAME: ..."); for errors
 * that come without their topic. */
static int mentions(const char *what, const char *topic)
{
    size_t n = strlen(topic);
    for (const char *p = what; (p = strstr(p, topic)) != NULL; p++)
        if (p >= what + 2 && p[-2] == ':' && p[-1] == ' ' && (p[n] == ':' || p[n] == '\0'))
            return 1;
    return 0;
}

/* Kafka says a topic of the subscription does not exist: deleted (or never created). Its
 * partitions are revoked by the group's next rebalance; the sluice topics they fed stay and
 * keep serving what they hold. Counted and logged once per topic while it is gone. */
static void topic_gone(ksrc_t *s, const char *ktopic, const char *what)
{
    int known = 0;
    for (size_t i = 0; i < s->nparts; i++) {
        kpe_t *e = s->parts[i];
        if (e->gone ||
            !(ktopic != NULL ? strcmp(e->ktopic, ktopic) == 0 : mentions(what, e->ktopic)))
            continue;
        e->gone = 1;
        known++;
    }
    if (known == 0) {
        SL_DEBUG("kafka topic not available", "source=%s error=\"%s\"", s->conf->name, what);
        return;
    }
    s->topics_gone++;
    SL_WARN("kafka topic deleted (unknown to the cluster); its partitions are revoked, the sluice "
            "topics they fed keep serving",
            "source=%s partitions=%d error=\"%s\"", s->conf->name, known, what);
}

/* The consumer raised a fatal error: it cannot go on. Its partitions are given up here (their
 * stashes freed: those records were not taken and are delivered again, as is everything after
 * the last commit, which the topics' heads drop as duplicates); the tick destroys it on the
 * thread pool and makes a new one after a backoff. Topics keep serving meanwhile. */
static void fail_source(ksrc_t *s, const char *why)
{
    if (s->failed || (s->state != SRC_RUNNING && s->state != SRC_STARTING))
        return;
    s->failed = 1;
    s->fatal_errors++;
    s->state = SRC_RESTARTING;
    s->backoff_ms = sl_kafka_backoff_next(s->backoff_ms);
    s->restart_at_ms = 0;
    uv_idle_stop(&s->idle);
    for (size_t i = 0; i < s->nparts; i++)
        if (s->parts[i]->kp.state == SL_KP_ACTIVE || s->parts[i]->kp.state == SL_KP_PAUSED)
            give_up(s->parts[i]);
    SL_ERROR("kafka consumer fatal error; it is made again after a backoff (topics keep serving, "
             "records after the last commit come again and are dropped as duplicates)",
             "source=%s error=\"%s\" backoff_ms=%" PRIu64 " fatal_errors=%" PRIu64, s->conf->name,
             why, s->backoff_ms, s->fatal_errors);
}

static void on_error_event(ksrc_t *s, rd_kafka_message_t *m)
{
    rd_kafka_resp_err_t err = m->err;
    const char *what = rd_kafka_message_errstr(m);
    if (err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
        return;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || err == RD_KAFKA_RESP_ERR__TRANSPORT ||
        err == RD_KAFKA_RESP_ERR__RESOLVE) {
        if (!s->brokers_down) {
            s->brokers_down = 1;
            SL_WARN("kafka brokers unreachable; topics keep serving, the consumer reconnects",
                    "source=%s error=\"%s\"", s->conf->name, what);
        }
        return;
    }
    s->errors++;
    char fatal[256] = "";
    if (rd_kafka_fatal_error(s->rk, fatal, sizeof(fatal)) != 0 || err == RD_KAFKA_RESP_ERR__FATAL) {
        fail_source(s, fatal[0] ? fatal : what);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) {
        topic_gone(s, m->rkt != NULL ? rd_kafka_topic_name(m->rkt) : NULL, what);
        return;
    }
    SL_DEBUG("kafka error", "source=%s error=\"%s\"", s->conf->name, what);
}

/* The queue was emptied after holding at least half of queued.max.messages.kbytes and no
 * record has arrived for WAKE_MS since: librdkafka 2.0.2 has probably stopped fetching at the
 * limit and would wait up to 1 s for its broker thread to look again (seek_position).
 * Restarts the fetch of every active partition. Waiting WAKE_MS first leaves a fetcher that
 * is still running alone: its in-flight response would be thrown away by the seek, and a
 * partition that a producer outruns (retention moving past it) could then never catch up. */
static void wake_fetchers(ksrc_t *s)
{
    s->fetch_wakes++;
    for (size_t i = 0; i < s->nparts; i++)
        seek_position(s->parts[i]);
}

static void on_tick(uv_timer_t *h);

/* Serves one bounded turn of the queue. Returns 1 if the queue may hold more. */
static int serve(ksrc_t *s)
{
    uint64_t deadline = sl_now_ms() + BATCH_MS;
    int n = 0, published = 0;
    for (; n < BATCH_MAX; n++) {
        if (s->state != SRC_RUNNING && s->state != SRC_STARTING)
            break;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s->rk, 0);
        if (m == NULL)
            break;
        if (m->err) {
            on_error_event(s, m);
        } else {
            if (s->brokers_down) {
                s->brokers_down = 0;
                SL_INFO("kafka brokers reachable again", "source=%s", s->conf->name);
            }
            on_record(s, m);
            s->drained_bytes += m->len;
            s->wake_due_ms = 0; /* the fetcher is running */
            published = 1;
            if (ks.test_fatal_after != 0 && !s->test_fatal_done &&
                s->published >= ks.test_fatal_after) {
                s->test_fatal_done = 1;
                rd_kafka_test_fatal_error(s->rk, RD_KAFKA_RESP_ERR__STATE,
                                          "SLUICE_KAFKA_TEST_FATAL_AFTER");
            }
        }
        rd_kafka_message_destroy(m);
        if ((n & 15) == 15 && sl_now_ms() >= deadline) {
            n++;
            break;
        }
    }
    if (published)
        s->last_progress_ms = sl_now_ms();
    store_offsets(s);
    if (published && ks.kick)
        ks.kick(ks.kick_arg);
    if (s->failed)
        return 0;
    if (rd_kafka_queue_length(s->q) > 0)
        return n > 0;
    if (s->drained_bytes >= s->conf->prefetch / 2 && s->wake_due_ms == 0 &&
        s->state == SRC_RUNNING) {
        s->wake_due_ms = sl_now_ms() + WAKE_MS;
        uv_timer_start(&s->tick, on_tick, WAKE_MS, TICK_MS); /* the tick looks then */
    }
    s->drained_bytes = 0;
    return 0;
}

static void drain_pipe(ksrc_t *s)
{
    char buf[64];
    while (read(s->pipefd[0], buf, sizeof(buf)) > 0)
        ;
}

static void on_idle(uv_idle_t *h)
{
    ksrc_t *s = h->data;
    for (size_t i = 0; i < s->nparts; i++) {
        kpe_t *e = s->parts[i];
        if (e->wake) {
            e->wake = 0;
            unstash(e);
        }
    }
    store_offsets(s);
    if (!serve(s))
        uv_idle_stop(&s->idle);
}

static void start_idle(ksrc_t *s)
{
    if (s->state <= SRC_RUNNING && !uv_is_active((uv_handle_t *)&s->idle))
        uv_idle_start(&s->idle, on_idle);
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    (void)events;
    ksrc_t *s = h->data;
    if (status < 0)
        return;
    drain_pipe(s);
    if (serve(s))
        start_idle(s);
}

static int is_durable(void *arg, const void *topic, uint64_t seq)
{
    (void)arg;
    return sl_ll_durable(topic) >= seq;
}

static void start_cluster_id(ksrc_t *s);
static void destroy_failed(ksrc_t *s);
static void recreate(ksrc_t *s);
static void wm_query(ksrc_t *s, uint64_t now);

static void on_tick(uv_timer_t *h)
{
    ksrc_t *s = h->data;
    uint64_t now = sl_now_ms();
    if (s->failed) {
        if (s->rk != NULL)
            destroy_failed(s);
        else if (s->restart_at_ms != 0 && now >= s->restart_at_ms)
            recreate(s);
        return;
    }
    if (s->state == SRC_RUNNING && s->backoff_ms != 0 && now - s->created_ms >= STABLE_MS)
        s->backoff_ms = 0; /* ran long enough: the next fatal error waits 1 s again */
    if (s->state == SRC_STARTING && !s->work_busy && now >= s->cluster_retry_at_ms)
        start_cluster_id(s);
    for (size_t i = 0; i < s->nparts; i++) {
        kpe_t *e = s->parts[i];
        if (e->kp.npend > 0)
            perform(e, sl_kp_durable(&e->kp, is_durable, NULL));
        if (e->budget_retry) {
            e->budget_retry = 0;
            unstash(e);
        }
    }
    store_offsets(s);
    wm_query(s, now);
    if (s->wake_due_ms != 0 && now >= s->wake_due_ms) {
        s->wake_due_ms = 0;
        if (s->state == SRC_RUNNING && rd_kafka_queue_length(s->q) == 0)
            wake_fetchers(s);
    }
    /* A queue that became non-empty while a turn was ending signals nothing: look again. */
    if (rd_kafka_queue_length(s->q) > 0)
        start_idle(s);
}

/* ---- lag and committed offsets ---------------------------------------------------------- */

/* The thread pool's part of a query round: the committed offsets of the partitions that do
 * not know theirs, the watermarks of the paused ones (whose fetches, stopped, no longer
 * refresh librdkafka's cached figures) and of running ones with no log start known yet, and
 * whether the topics of revoked partitions still exist. Blocking calls, bounded by
 * WM_TIMEOUT_MS each and the round by twice that. */
static void wm_queries(rd_kafka_t *rk, wmq_t *wmq, size_t nwmq)
{
    uint64_t deadline = sl_now_ms() + 2 * WM_TIMEOUT_MS;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)nwmq);
    for (size_t i = 0; i < nwmq; i++)
        if (wmq[i].want_committed)
            rd_kafka_topic_partition_list_add(l, wmq[i].ktopic, wmq[i].partition)->opaque = &wmq[i];
    if (l->cnt > 0) {
        rd_kafka_resp_err_t err = rd_kafka_committed(rk, l, WM_TIMEOUT_MS);
        for (int i = 0; i < l->cnt; i++) {
            wmq_t *q = l->elems[i].opaque;
            q->committed_err = err != 0 ? err : l->elems[i].err;
            q->committed = l->elems[i].offset;
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    for (size_t i = 0; i < nwmq; i++) {
        wmq_t *q = &wmq[i];
        if (!q->want_wm)
            continue;
        if (sl_now_ms() >= deadline) {
            q->wm_err = RD_KAFKA_RESP_ERR__TIMED_OUT;
            continue;
        }
        q->wm_err = rd_kafka_query_watermark_offsets(rk, q->ktopic, q->partition, &q->lo, &q->hi,
                                                     WM_TIMEOUT_MS);
    }
    for (size_t i = 0; i < nwmq; i++) {
        wmq_t *q = &wmq[i];
        q->exists = -1;
        if (!q->want_exists || sl_now_ms() >= deadline)
            continue;
        /* A regex subscription loses a deleted topic without an error: only the metadata
         * of the topic tells a deletion from a rebalance. */
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, q->ktopic, NULL);
        const struct rd_kafka_metadata *md;
        if (rkt != NULL && rd_kafka_metadata(rk, 0, rkt, &md, WM_TIMEOUT_MS) == 0) {
            if (md->topic_cnt == 1)
                q->exists = md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ? 0
                            : md->topics[0].err == 0                                     ? 1
                                                                                         : -1;
            rd_kafka_metadata_destroy(md);
        }
        if (rkt != NULL)
            rd_kafka_topic_destroy(rkt);
    }
}

/* A round runs on a thread of its own, waited for at most WM_ROUND_MS: on librdkafka 2.0.2
 * rd_kafka_query_watermark_offsets can wait for ever, its timeout notwithstanding, when the
 * brokers vanish while it runs, and a stuck pool thread would keep the loop, hence a shutdown,
 * from ending. Past the wait the round's thread is left to finish (or not) on its own with
 * its partitions list, and its results are dropped. */
typedef struct wmjob {
    rd_kafka_t *rk;
    wmq_t *q;
    size_t n;
    int done, abandoned;
    uv_mutex_t mu;
    uv_cond_t cv;
} wmjob_t;

static void wmjob_free(wmjob_t *j, int with_queries)
{
    if (with_queries) {
        for (size_t i = 0; i < j->n; i++)
            free(j->q[i].ktopic);
        free(j->q);
    }
    uv_cond_destroy(&j->cv);
    uv_mutex_destroy(&j->mu);
    free(j);
}

static void wmjob_main(void *arg)
{
    wmjob_t *j = arg;
    wm_queries(j->rk, j->q, j->n);
    uv_mutex_lock(&j->mu);
    j->done = 1;
    int abandoned = j->abandoned;
    uv_cond_signal(&j->cv);
    uv_mutex_unlock(&j->mu);
    if (abandoned)
        wmjob_free(j, 1);
}

static void wm_work(uv_work_t *w)
{
    ksrc_t *s = w->data;
    wmjob_t *j = sl_calloc(1, sizeof(*j));
    j->rk = s->rk;
    j->q = s->wmq;
    j->n = s->nwmq;
    uv_mutex_init(&j->mu);
    uv_cond_init(&j->cv);
    uv_thread_t t;
    if (uv_thread_create(&t, wmjob_main, j) != 0) {
        wmjob_free(j, 0);
        return; /* no results this round */
    }
    pthread_detach(t);
    uint64_t deadline = sl_now_ms() + WM_ROUND_MS;
    uv_mutex_lock(&j->mu);
    while (!j->done) {
        uint64_t now = sl_now_ms();
        if (now >= deadline)
            break;
        uv_cond_timedwait(&j->cv, &j->mu, (deadline - now) * 1000000);
    }
    int done = j->done;
    j->abandoned = !done;
    uv_mutex_unlock(&j->mu);
    if (done) {
        wmjob_free(j, 0);
    } else {
        s->wmq = NULL; /* the round's thread owns them now */
        s->nwmq = 0;
        s->wm_abandoned = 1;
    }
}

static void stop_source(ksrc_t *s);

static void wm_done(uv_work_t *w, int status)
{
    ksrc_t *s = w->data;
    uint64_t now = sl_now_ms();
    s->wm_busy = 0;
    for (size_t i = 0; i < s->nwmq; i++) {
        wmq_t *q = &s->wmq[i];
        kpe_t *e = status == 0 && !s->failed && s->state == SRC_RUNNING
                       ? part_find(s, q->ktopic, q->partition, 0)
                       : NULL;
        if (e != NULL && q->want_committed && q->committed_err == 0) {
            if (q->committed >= 0) {
                if (e->committed_known != 1 || q->committed > e->committed)
                    e->committed = q->committed;
                e->committed_known = 1;
            } else if (e->committed_known == 0) {
                e->committed_known = 2; /* the group has never committed this partition */
            }
        }
        if (e != NULL && q->want_wm && q->wm_err == 0) {
            e->lo_wm = q->lo;
            e->hi_wm = q->hi;
            e->wm_ms = now;
        }
        if (e != NULL && q->want_exists && q->exists >= 0 && e->kp.state == SL_KP_REVOKED) {
            e->check_gone = 0;
            if (q->exists == 0)
                topic_gone(s, e->ktopic, "not in the cluster's metadata after its revoke");
        }
        free(q->ktopic);
    }
    free(s->wmq);
    s->wmq = NULL;
    s->nwmq = 0;
    if (s->wm_abandoned) {
        s->wm_abandoned = 0;
        s->wm_next_ms = now + WM_PAUSE_MS;
        SL_WARN("kafka watermark query did not end in time (brokers unreachable?); paused "
                "partitions' lag is not refreshed for a minute",
                "source=%s", s->conf->name);
    }
    if (s->state == SRC_STOPPING)
        stop_source(s);
}

/* Starts a query round when one is due: at most one in flight per source, every WM_QUERY_MS,
 * not while the brokers are known to be down (it would only wait for its timeouts). */
static void wm_query(ksrc_t *s, uint64_t now)
{
    if (s->state != SRC_RUNNING || s->failed || s->wm_busy || s->brokers_down ||
        now < s->wm_next_ms)
        return;
    s->wm_next_ms = now + WM_QUERY_MS;
    size_t n = 0;
    for (size_t i = 0; i < s->nparts && n < WM_QUERY_MAX; i++) {
        kpe_t *e = s->parts[i];
        /* Paused: no fetch refreshes the cache. Running with no log start known yet: the
         * lag of a partition the group never committed counts from it. */
        int want_wm = e->kp.state == SL_KP_PAUSED || (e->kp.state == SL_KP_ACTIVE && e->lo_wm < 0);
        int want_c = (e->kp.state == SL_KP_ACTIVE || want_wm) && e->committed_known == 0;
        int want_x = e->kp.state == SL_KP_REVOKED && e->check_gone && !e->gone;
        if (!want_wm && !want_c && !want_x)
            continue;
        if (s->wmq == NULL)
            s->wmq = sl_calloc(WM_QUERY_MAX, sizeof(*s->wmq));
        s->wmq[n++] = (wmq_t){.ktopic = sl_strdup(e->ktopic),
                              .partition = e->partition,
                              .want_wm = want_wm,
                              .want_committed = want_c,
                              .want_exists = want_x,
                              .lo = -1,
                              .hi = -1,
                              .committed = -1};
    }
    if (n == 0)
        return;
    s->nwmq = n;
    s->wm_busy = 1;
    s->wm_work.data = s;
    uv_queue_work(ks.loop, &s->wm_work, wm_work, wm_done);
}

/* Running partitions: librdkafka's cached watermarks, refreshed by every fetch response. */
static void wm_cached(ksrc_t *s, uint64_t now)
{
    if (s->failed || s->rk == NULL || s->state != SRC_RUNNING)
        return;
    for (size_t i = 0; i < s->nparts; i++) {
        kpe_t *e = s->parts[i];
        int64_t lo, hi;
        if (e->kp.state != SL_KP_ACTIVE ||
            rd_kafka_get_watermark_offsets(s->rk, e->ktopic, e->partition, &lo, &hi) != 0 || hi < 0)
            continue;
        e->hi_wm = hi;
        if (lo >= 0)
            e->lo_wm = lo;
        e->wm_ms = now;
    }
}

/* The offset of the next record the partition has to take; -1 unknown. */
static int64_t next_offset(const kpe_t *e)
{
    if (e->kp.state == SL_KP_PAUSED && e->kp.stash.data != NULL)
        return e->kp.stash.offset;
    if (e->kp.seen >= 0)
        return e->kp.seen + 1;
    if (e->committed_known == 1)
        return e->committed;
    /* No commit: the consumer starts at the log's start or end, as `start` says. */
    if (e->committed_known == 2)
        return e->src->conf->start_latest ? e->hi_wm : e->lo_wm;
    return -1;
}

static int64_t lag_of(const kpe_t *e)
{
    if (e->kp.state != SL_KP_ACTIVE && e->kp.state != SL_KP_PAUSED)
        return -1;
    return sl_kafka_lag(e->hi_wm, next_offset(e));
}

/* ---- rebalances ------------------------------------------------------------------------- */

static void give_up(kpe_t *e)
{
    if (sl_ll_waiting(&e->w))
        sl_ll_unwait(&e->w);
    e->wake = e->budget_retry = 0;
    sl_kp_stash_t back;
    int act = sl_kp_revoke(&e->kp, &back);
    stash_free(&back);
    perform(e, act);
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    ksrc_t *s = opaque;
    int coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *e2 = NULL;
    if (s->state >= SRC_STOPPING) {
        /* Leaving the group (on the thread pool): touch nothing of the hub. */
        if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
            e2 = coop ? rd_kafka_incremental_assign(rk, parts) : NULL;
        else
            e2 = coop ? rd_kafka_incremental_unassign(rk, parts) : NULL;
        if (!coop)
            rd_kafka_assign(rk, err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? parts : NULL);
        if (e2)
            rd_kafka_error_destroy(e2);
        return;
    }
    s->rebalances++;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        for (int i = 0; i < parts->cnt; i++) {
            kpe_t *e = part_find(s, parts->elems[i].topic, parts->elems[i].partition, 1);
            sl_kp_assign(&e->kp);
            e->committed_known = 0; /* another member may have moved it: asked again */
            e->resume_next = e->polled_next = -1;
            e->gone = e->check_gone = 0;
        }
        SL_INFO("kafka partitions assigned", "source=%s count=%d", s->conf->name, parts->cnt);
        if (coop)
            e2 = rd_kafka_incremental_assign(rk, parts);
        else
            rd_kafka_assign(rk, parts);
    } else {
        /* Store what is done before librdkafka commits on revoke; nothing after. */
        for (int i = 0; i < parts->cnt; i++) {
            kpe_t *e = part_find(s, parts->elems[i].topic, parts->elems[i].partition, 0);
            if (e != NULL && e->kp.npend > 0)
                sl_kp_durable(&e->kp, is_durable, NULL);
        }
        store_offsets(s);
        rd_kafka_commit(rk, NULL, 1);
        for (int i = 0; i < parts->cnt; i++) {
            kpe_t *e = part_find(s, parts->elems[i].topic, parts->elems[i].partition, 0);
            if (e != NULL) {
                give_up(e);
                e->check_gone = 1;
            }
        }
        SL_INFO("kafka partitions revoked", "source=%s count=%d", s->conf->name, parts->cnt);
        if (coop)
            e2 = rd_kafka_incremental_unassign(rk, parts);
        else
            rd_kafka_assign(rk, NULL);
    }
    if (e2 != NULL) {
        SL_WARN("kafka rebalance failed", "source=%s error=\"%s\"", s->conf->name,
                rd_kafka_error_string(e2));
        rd_kafka_error_destroy(e2);
    }
}

static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk;
    ksrc_t *s = opaque;
    if (err == 0)
        s->commits++;
    if (err == 0 && s->brokers_down && s->state < SRC_STOPPING) {
        s->brokers_down = 0;
        SL_INFO("kafka brokers reachable again", "source=%s", s->conf->name);
    } else if (err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        s->commit_errors++;
    if (s->state >= SRC_STOPPING || offsets == NULL)
        return; /* leaving the group, on the thread pool: the partitions are gone */
    for (int i = 0; i < offsets->cnt; i++) {
        const rd_kafka_topic_partition_t *p = &offsets->elems[i];
        kpe_t *e = p->err == 0 ? part_find(s, p->topic, p->partition, 0) : NULL;
        if (e != NULL && p->offset >= 0 && (e->committed_known != 1 || p->offset > e->committed)) {
            e->committed = p->offset;
            e->committed_known = 1;
        }
    }
}

/* librdkafka's own lines repeat for as long as a condition lasts (a broker down logs every
 * reconnect): they are debug output. The state changes they describe are logged once by
 * on_error_event and the rebalance callback. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    ksrc_t *s = rd_kafka_opaque(rk);
    (void)level;
    SL_DEBUG("kafka", "source=%s facility=%s text=\"%s\"", s ? s->conf->name : "?", fac, buf);
}

/* ---- metrics and status ----------------------------------------------------------------- */

static const char *const state_names[] = {"starting", "running", "stopping", "closed",
                                          "restarting"};
static const char *const part_states[] = {"new", "assigned", "paused", "revoked"};

static uint64_t paused_ms_of(const kpe_t *e, uint64_t now)
{
    return e->paused_ms + (e->paused_at_ms ? now - e->paused_at_ms : 0);
}

/* The read-back counters of every source, one family at a time. */
/* A metric with one sample per source: the uint64_t at `off` in each source. */
static void per_source(sl_buf_t *o, const char *name, const char *type, const char *help,
                       size_t off)
{
    sl_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    for (size_t i = 0; i < ks.n; i++)
        sl_buf_printf(o, "%s{source=\"%s\"} %" PRIu64 "\n", name, ks.v[i]->conf->name,
                      *(const uint64_t *)(const void *)((const char *)ks.v[i] + off));
}

static void render_readback_metrics(sl_buf_t *o)
{
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"sluice_kafka_readbacks_total", "counter",
         "Read-backs from Kafka for readers behind a ring."},
        {"sluice_kafka_readback_messages_total", "counter", "Messages read back from Kafka."},
        {"sluice_kafka_readback_gaps_total", "counter",
         "Gaps read-backs gave (offsets Kafka no longer has, or a read-back that timed out)."},
        {"sluice_kafka_readback_missed_total", "counter", "Ids in those gaps."},
        {"sluice_kafka_readbacks_active", "gauge", "Read-backs running."},
        {"sluice_kafka_readbacks_queued", "gauge", "Read-backs waiting for a slot."},
    };
    for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
        sl_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", fam[f].name, fam[f].help, fam[f].name,
                      fam[f].type);
        for (size_t i = 0; i < ks.n; i++) {
            sl_krb_stats_t st;
            sl_krb_get_stats(ks.v[i]->rb, &st);
            uint64_t v[] = {st.readbacks, st.messages, st.gaps, st.missed, st.active, st.queued};
            sl_buf_printf(o, "%s{source=\"%s\"} %" PRIu64 "\n", fam[f].name, ks.v[i]->conf->name,
                          v[f]);
        }
    }
}

static char *render_metrics(size_t *len)
{
    sl_buf_t o = {sl_malloc(4096), 0, 4096};
    uint64_t now = sl_now_ms();
    for (size_t i = 0; i < ks.n; i++)
        wm_cached(ks.v[i], now);
    sl_buf_printf(&o, "# HELP sluice_kafka_messages_total Kafka records by what became of them.\n"
                      "# TYPE sluice_kafka_messages_total counter\n");
    for (size_t i = 0; i < ks.n; i++) {
        ksrc_t *s = ks.v[i];
        sl_buf_printf(
            &o, "sluice_kafka_messages_total{source=\"%s\",result=\"published\"} %" PRIu64 "\n",
            s->conf->name, s->published);
        sl_buf_printf(
            &o, "sluice_kafka_messages_total{source=\"%s\",result=\"duplicate\"} %" PRIu64 "\n",
            s->conf->name, s->duplicates);
        for (int r = 0; r < REJ__COUNT; r++)
            sl_buf_printf(
                &o,
                "sluice_kafka_messages_total{source=\"%s\",result=\"rejected\",reason=\"%s\"} "
                "%" PRIu64 "\n",
                s->conf->name, rej_names[r], s->rejected[r]);
    }
    sl_buf_printf(&o, "# HELP sluice_kafka_partitions Partitions of a source by state.\n"
                      "# TYPE sluice_kafka_partitions gauge\n");
    for (size_t i = 0; i < ks.n; i++) {
        ksrc_t *s = ks.v[i];
        uint64_t assigned = 0, paused = 0;
        for (size_t j = 0; j < s->nparts; j++) {
            assigned +=
                s->parts[j]->kp.state == SL_KP_ACTIVE || s->parts[j]->kp.state == SL_KP_PAUSED;
            paused += s->parts[j]->kp.state == SL_KP_PAUSED;
        }
        sl_buf_printf(&o, "sluice_kafka_partitions{source=\"%s\",state=\"assigned\"} %" PRIu64 "\n",
                      s->conf->name, assigned);
        sl_buf_printf(&o, "sluice_kafka_partitions{source=\"%s\",state=\"paused\"} %" PRIu64 "\n",
                      s->conf->name, paused);
    }
    sl_buf_printf(&o, "# HELP sluice_kafka_pauses_total Partition pauses, by reason.\n"
                      "# TYPE sluice_kafka_pauses_total counter\n");
    for (size_t i = 0; i < ks.n; i++)
        for (int r = 0; r < SL_KP_WHY__COUNT; r++)
            sl_buf_printf(&o,
                          "sluice_kafka_pauses_total{source=\"%s\",reason=\"%s\"} %" PRIu64 "\n",
                          ks.v[i]->conf->name, sl_kp_why_name((sl_kp_why_t)r), ks.v[i]->pauses[r]);
    per_source(&o, "sluice_kafka_resumes_total", "counter", "Partition resumes.",
               offsetof(ksrc_t, resumes));
    per_source(&o, "sluice_kafka_fetch_restarts_total", "counter",
               "Fetches restarted after the "
               "prefetch queue was drained from its limit.",
               offsetof(ksrc_t, fetch_wakes));
    sl_buf_printf(&o, "# HELP sluice_kafka_paused_seconds_total Time partitions spent paused.\n"
                      "# TYPE sluice_kafka_paused_seconds_total counter\n");
    for (size_t i = 0; i < ks.n; i++) {
        uint64_t ms = 0;
        for (size_t j = 0; j < ks.v[i]->nparts; j++)
            ms += paused_ms_of(ks.v[i]->parts[j], now);
        sl_buf_printf(&o, "sluice_kafka_paused_seconds_total{source=\"%s\"} %.3f\n",
                      ks.v[i]->conf->name, (double)ms / 1000.0);
    }
    per_source(&o, "sluice_kafka_rebalances_total", "counter",
               "Assignments and revocations served.", offsetof(ksrc_t, rebalances));
    sl_buf_printf(&o, "# HELP sluice_kafka_commits_total Offset commits, by result.\n"
                      "# TYPE sluice_kafka_commits_total counter\n");
    for (size_t i = 0; i < ks.n; i++) {
        sl_buf_printf(&o, "sluice_kafka_commits_total{source=\"%s\",result=\"ok\"} %" PRIu64 "\n",
                      ks.v[i]->conf->name, ks.v[i]->commits);
        sl_buf_printf(&o,
                      "sluice_kafka_commits_total{source=\"%s\",result=\"error\"} %" PRIu64 "\n",
                      ks.v[i]->conf->name, ks.v[i]->commit_errors);
    }
    per_source(&o, "sluice_kafka_offset_skips_total", "counter",
               "Records whose offset skipped past "
               "their topic's head (the ids between are holes, not gaps).",
               offsetof(ksrc_t, offset_skips));
    render_readback_metrics(&o);
    sl_buf_printf(&o, "# HELP sluice_kafka_stash_bytes Records held by paused partitions.\n"
                      "# TYPE sluice_kafka_stash_bytes gauge\n");
    for (size_t i = 0; i < ks.n; i++) {
        uint64_t b = 0;
        for (size_t j = 0; j < ks.v[i]->nparts; j++)
            b += ks.v[i]->parts[j]->kp.stash.data ? ks.v[i]->parts[j]->kp.stash.bytes : 0;
        sl_buf_printf(&o, "sluice_kafka_stash_bytes{source=\"%s\"} %" PRIu64 "\n",
                      ks.v[i]->conf->name, b);
    }
    sl_buf_printf(
        &o, "# HELP sluice_kafka_prefetch_bytes librdkafka's prefetch, charged to the budget.\n"
            "# TYPE sluice_kafka_prefetch_bytes gauge\n");
    for (size_t i = 0; i < ks.n; i++)
        sl_buf_printf(&o, "sluice_kafka_prefetch_bytes{source=\"%s\"} %" PRIu64 "\n",
                      ks.v[i]->conf->name, ks.v[i]->prefetch_charge);
    sl_buf_printf(&o, "# HELP sluice_kafka_seconds_since_progress Since a record was last taken.\n"
                      "# TYPE sluice_kafka_seconds_since_progress gauge\n");
    for (size_t i = 0; i < ks.n; i++)
        sl_buf_printf(
            &o, "sluice_kafka_seconds_since_progress{source=\"%s\"} %.3f\n", ks.v[i]->conf->name,
            ks.v[i]->last_progress_ms ? (double)(now - ks.v[i]->last_progress_ms) / 1000.0 : 0.0);
    sl_buf_printf(
        &o, "# HELP sluice_kafka_committed_offset The group's committed offset per partition.\n"
            "# TYPE sluice_kafka_committed_offset gauge\n");
    for (size_t i = 0; i < ks.n; i++)
        for (size_t j = 0; j < ks.v[i]->nparts; j++) {
            kpe_t *e = ks.v[i]->parts[j];
            if (e->committed_known != 1)
                continue; /* not known (yet), or the group has none: no sample */
            sl_buf_printf(&o,
                          "sluice_kafka_committed_offset{source=\"%s\",kafka_topic=\"%s\","
                          "partition=\"%d\"} %" PRId64 "\n",
                          ks.v[i]->conf->name, e->ktopic, (int)e->partition, e->committed);
        }
    sl_buf_printf(&o, "# HELP sluice_kafka_partition_lag Records a partition holds past the next "
                      "one sluice takes (high watermark minus next offset), per assigned "
                      "partition whose watermark is known.\n"
                      "# TYPE sluice_kafka_partition_lag gauge\n");
    for (size_t i = 0; i < ks.n; i++)
        for (size_t j = 0; j < ks.v[i]->nparts; j++) {
            kpe_t *e = ks.v[i]->parts[j];
            int64_t lag = lag_of(e);
            if (lag < 0)
                continue;
            sl_buf_printf(&o,
                          "sluice_kafka_partition_lag{source=\"%s\",kafka_topic=\"%s\","
                          "partition=\"%d\"} %" PRId64 "\n",
                          ks.v[i]->conf->name, e->ktopic, (int)e->partition, lag);
        }
    per_source(&o, "sluice_kafka_fatal_errors_total", "counter",
               "Fatal consumer errors (the consumer "
               "is made again after a backoff).",
               offsetof(ksrc_t, fatal_errors));
    per_source(&o, "sluice_kafka_consumer_restarts_total", "counter",
               "Consumers made again after a "
               "fatal error.",
               offsetof(ksrc_t, restarts));
    per_source(&o, "sluice_kafka_topics_deleted_total", "counter",
               "Kafka topics that disappeared "
               "from the cluster while assigned.",
               offsetof(ksrc_t, topics_gone));
    per_source(&o, "sluice_kafka_retention_gaps_total", "counter",
               "Resumes that found Kafka's "
               "retention had removed records of the paused partition.",
               offsetof(ksrc_t, retention_gaps));
    sl_buf_printf(&o, "# HELP sluice_kafka_retention_lost_total Records retention removed before "
                      "sluice took them, by the durability of their topic (lossless: lost).\n"
                      "# TYPE sluice_kafka_retention_lost_total counter\n");
    for (size_t i = 0; i < ks.n; i++)
        for (int d = 0; d < 2; d++)
            sl_buf_printf(&o,
                          "sluice_kafka_retention_lost_total{source=\"%s\",durability=\"%s\"} "
                          "%" PRIu64 "\n",
                          ks.v[i]->conf->name, d ? "lossless" : "lossy",
                          ks.v[i]->retention_lost[d]);
    *len = o.len;
    return o.buf;
}

/* Appends `"key":N` for n >= 0, else `"key":null`. */
static void json_i64(sl_buf_t *o, const char *key, int64_t n)
{
    if (n >= 0)
        sl_buf_printf(o, ",\"%s\":%" PRId64, key, n);
    else
        sl_buf_printf(o, ",\"%s\":null", key);
}

static char *render_sources(size_t *len)
{
    sl_buf_t o = {sl_malloc(1024), 0, 1024};
    uint64_t now = sl_now_ms();
    sl_buf_printf(&o, "[");
    for (size_t i = 0; i < ks.n; i++) {
        ksrc_t *s = ks.v[i];
        sl_krb_stats_t rst;
        sl_krb_get_stats(s->rb, &rst);
        wm_cached(s, now);
        sl_buf_printf(
            &o,
            "%s{\"name\":\"%s\",\"type\":\"kafka\",\"state\":\"%s\",\"cluster_id\":\"%s\","
            "\"brokers_down\":%s,\"published\":%" PRIu64 ",\"duplicates\":%" PRIu64
            ",\"resumes\":%" PRIu64 ",\"commits\":%" PRIu64 ",\"offset_skips\":%" PRIu64
            ",\"readback\":{\"readbacks\":%" PRIu64 ",\"messages\":%" PRIu64 ",\"gaps\":%" PRIu64
            ",\"missed\":%" PRIu64 ",\"timeouts\":%" PRIu64 ",\"active\":%u,\"queued\":%u}"
            ",\"fatal_errors\":%" PRIu64 ",\"restarts\":%" PRIu64 ",\"topics_deleted\":%" PRIu64
            ",\"retention_gaps\":%" PRIu64 ",\"retention_lost\":%" PRIu64
            ",\"fetch_restarts\":%" PRIu64,
            i ? "," : "", s->conf->name, state_names[s->state], s->cluster_id,
            s->brokers_down ? "true" : "false", s->published, s->duplicates, s->resumes, s->commits,
            s->offset_skips, rst.readbacks, rst.messages, rst.gaps, rst.missed, rst.timeouts,
            rst.active, rst.queued, s->fatal_errors, s->restarts, s->topics_gone, s->retention_gaps,
            s->retention_lost[0] + s->retention_lost[1], s->fetch_wakes);
        json_i64(&o, "restart_in_ms",
                 s->failed && s->restart_at_ms > now ? (int64_t)(s->restart_at_ms - now)
                 : s->failed                         ? 0
                                                     : -1);
        if (s->last_progress_ms != 0)
            sl_buf_printf(&o, ",\"seconds_since_progress\":%.3f",
                          (double)(now - s->last_progress_ms) / 1000.0);
        else
            sl_buf_printf(&o, ",\"seconds_since_progress\":null");
        sl_buf_printf(&o, ",\"partitions\":[");
        for (size_t j = 0; j < s->nparts; j++) {
            kpe_t *e = s->parts[j];
            sl_buf_printf(&o,
                          "%s{\"kafka_topic\":\"%s\",\"partition\":%d,\"state\":\"%s\","
                          "\"paused_reason\":%s%s%s,\"stored\":%" PRId64
                          ",\"stash_bytes\":%zu,\"pauses\":%" PRIu64 ",\"resumes\":%" PRIu64
                          ",\"paused_ms\":%" PRIu64 ",\"kafka_topic_deleted\":%s",
                          j ? "," : "", e->ktopic, (int)e->partition, part_states[e->kp.state],
                          e->kp.state == SL_KP_PAUSED ? "\"" : "",
                          e->kp.state == SL_KP_PAUSED ? sl_kp_why_name(e->kp.why) : "null",
                          e->kp.state == SL_KP_PAUSED ? "\"" : "", e->kp.stored,
                          e->kp.stash.data ? e->kp.stash.bytes : 0, e->kp.pauses, e->kp.resumes,
                          paused_ms_of(e, now), e->gone ? "true" : "false");
            /* committed: the group's offset, or null with the reason. */
            json_i64(&o, "committed", e->committed_known == 1 ? e->committed : -1);
            if (e->committed_known != 1)
                sl_buf_printf(&o, ",\"committed_note\":\"%s\"",
                              e->committed_known == 2 ? "the group has no committed offset"
                              : e->kp.state == SL_KP_ACTIVE || e->kp.state == SL_KP_PAUSED
                                  ? "not known yet (asked off the loop)"
                                  : "not known");
            json_i64(&o, "next_offset",
                     e->kp.state == SL_KP_ACTIVE || e->kp.state == SL_KP_PAUSED ? next_offset(e)
                                                                                : -1);
            json_i64(&o, "lag", lag_of(e));
            json_i64(&o, "high_watermark", e->hi_wm);
            json_i64(&o, "log_start", e->lo_wm);
            json_i64(&o, "watermark_age_ms", e->wm_ms ? (int64_t)(now - e->wm_ms) : -1);
            sl_buf_printf(&o, "}");
        }
        sl_buf_printf(&o, "]}");
    }
    sl_buf_printf(&o, "]");
    *len = o.len;
    return o.buf;
}

/* ---- starting ---------------------------------------------------------------------------- */

static void cluster_id_work(uv_work_t *w)
{
    ksrc_t *s = w->data;
    char *id = rd_kafka_clusterid(s->rk, 2000);
    s->cluster_id[0] = '\0';
    if (id != NULL) {
        /* It names the id space and appears in JSON and logs: keep it to safe bytes. */
        size_t n = 0;
        for (const char *p = id; *p && n + 1 < sizeof(s->cluster_id); p++)
            if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                *p == '-' || *p == '_' || *p == '.')
                s->cluster_id[n++] = *p;
        s->cluster_id[n] = '\0';
        rd_kafka_mem_free(s->rk, id);
    }
}

static void subscribe(ksrc_t *s);

static void cluster_id_done(uv_work_t *w, int status)
{
    ksrc_t *s = w->data;
    s->work_busy = 0;
    if (s->state == SRC_STOPPING) {
        stop_source(s);
        return;
    }
    if (s->failed)
        return; /* the tick destroys the failed consumer */
    if (status != 0 || s->cluster_id[0] == '\0') {
        if (!s->brokers_down) {
            s->brokers_down = 1;
            SL_WARN("kafka cluster id unknown (brokers unreachable); retrying",
                    "source=%s brokers=%s", s->conf->name, s->conf->brokers);
        }
        s->cluster_retry_at_ms = sl_now_ms() + CLUSTER_ID_RETRY_MS;
        return;
    }
    s->brokers_down = 0;
    subscribe(s);
}

/* Subscribes the consumer (the cluster id is known): RUNNING. */
static void subscribe(ksrc_t *s)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)s->conf->ntopics);
    for (size_t i = 0; i < s->conf->ntopics; i++)
        rd_kafka_topic_partition_list_add(l, s->conf->topics[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(s->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err != 0) {
        SL_ERROR("kafka subscribe failed", "source=%s error=%s", s->conf->name,
                 rd_kafka_err2str(err));
        return;
    }
    s->state = SRC_RUNNING;
    s->last_progress_ms = sl_now_ms();
    SL_INFO("kafka source running", "source=%s cluster_id=%s", s->conf->name, s->cluster_id);
}

static void start_cluster_id(ksrc_t *s)
{
    s->work_busy = 1;
    s->work.data = s;
    uv_queue_work(ks.loop, &s->work, cluster_id_work, cluster_id_done);
}

uint64_t sl_kafka_fetch_max_bytes(uint64_t prefetch)
{
    uint64_t v = prefetch / 4;
    return v < 1000000 ? 1000000 : v > 52428800 ? 52428800 : v;
}

static int conf_set(rd_kafka_conf_t *c, const char *k, const char *v, char *err, size_t cap)
{
    return rd_kafka_conf_set(c, k, v, err, cap) == RD_KAFKA_CONF_OK ? 0 : -1;
}

/* The librdkafka configuration of a source: its pass-through properties, then what sluice
 * manages. Returns NULL with err set. */
static rd_kafka_conf_t *make_conf(const sl_source_conf_t *sc, const char *node, char *err,
                                  size_t cap)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    char group[512], num[32];
    sl_tmpl_vars_t v = {.node = node};
    /* Defaults a production team expects, which the pass-through may override: a 3 s outage
     * must not stall delivery for 6-11 s (the default backoff's cap is 10 s). */
    if (conf_set(c, "reconnect.backoff.max.ms", "1000", err, cap) != 0 ||
        conf_set(c, "fetch.wait.max.ms", FETCH_WAIT_MS, err, cap) != 0 ||
        conf_set(c, "log.queue", "true", err, cap) != 0)
        goto out_conf;
    for (size_t i = 0; i < sc->nprops; i++) {
        if (conf_set(c, sc->props[2 * i], sc->props[2 * i + 1], err, cap) != 0)
            goto out_conf;
    }
    if (sl_tmpl_render(sc->group, &v, group, sizeof(group)) <= 0) {
        snprintf(err, cap, "group name too long");
        goto out_conf;
    }
    if (conf_set(c, "bootstrap.servers", sc->brokers, err, cap) != 0 ||
        conf_set(c, "group.id", group, err, cap) != 0 ||
        conf_set(c, "enable.auto.offset.store", "false", err, cap) != 0 ||
        conf_set(c, "enable.auto.commit", "true", err, cap) != 0 ||
        conf_set(c, "auto.offset.reset", sc->start_latest ? "latest" : "earliest", err, cap) != 0 ||
        conf_set(c, "partition.assignment.strategy", "cooperative-sticky", err, cap) != 0)
        goto out_conf;
    snprintf(num, sizeof(num), "%" PRIu64, sc->commit_interval_ms);
    if (conf_set(c, "auto.commit.interval.ms", num, err, cap) != 0)
        goto out_conf;
    /* Prefetch: the consumer queue's bound (librdkafka counts it over the whole queue of a
     * group consumer) is what bounds memory. A fetch is sent only while the queue is under it,
     * so a response overshoots it by at most fetch.max.bytes per broker connection: a quarter
     * of the prefetch, at least librdkafka's minimum (message.max.bytes, 1 MB), at most its
     * default (50 MiB). Tying fetch.max.bytes to the whole prefetch made every response fill
     * the queue, and librdkafka 2.0.2 then waited up to 1 s to fetch again (wake_fetchers). */
    snprintf(num, sizeof(num), "%" PRIu64, sc->prefetch >> 10);
    if (conf_set(c, "queued.max.messages.kbytes", num, err, cap) != 0)
        goto out_conf;
    snprintf(num, sizeof(num), "%" PRIu64, sl_kafka_fetch_max_bytes(sc->prefetch));
    if (conf_set(c, "fetch.max.bytes", num, err, cap) != 0)
        goto out_conf;
    snprintf(num, sizeof(num), "%" PRIu64,
             sc->prefetch < (1u << 20) ? sc->prefetch : (uint64_t)(1u << 20));
    if (conf_set(c, "max.partition.fetch.bytes", num, err, cap) != 0)
        goto out_conf;
    return c;
out_conf:
    rd_kafka_conf_destroy(c);
    return NULL;
}

int sl_kafka_check_config(const sl_config_t *cfg, const char *path, FILE *errs)
{
    int n = 0;
    for (size_t i = 0; i < cfg->nsources; i++) {
        char err[512] = "";
        rd_kafka_conf_t *c = make_conf(&cfg->sources[i], cfg->node, err, sizeof(err));
        if (c == NULL) {
            n++;
            if (errs != NULL)
                fprintf(errs, "%s:%d: [source \"%s\"] %s\n", path ? path : "config",
                        cfg->sources[i].line, cfg->sources[i].name, err);
        } else {
            rd_kafka_conf_destroy(c);
        }
    }
    return n;
}

/* Makes the source's consumer and points its queue's wake-ups at the pipe. Returns 0, or -1
 * with err set. */
static int make_consumer(ksrc_t *s, char *err, size_t cap)
{
    rd_kafka_conf_t *c = make_conf(s->conf, ks.cfg->node, err, cap);
    if (c == NULL)
        return -1;
    rd_kafka_conf_set_opaque(c, s);
    rd_kafka_conf_set_rebalance_cb(c, on_rebalance);
    rd_kafka_conf_set_offset_commit_cb(c, on_commit);
    rd_kafka_conf_set_log_cb(c, on_log);
    if ((s->rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, cap)) == NULL) {
        rd_kafka_conf_destroy(c);
        return -1;
    }
    rd_kafka_poll_set_consumer(s->rk);
    rd_kafka_set_log_queue(s->rk, NULL);
    s->q = rd_kafka_queue_get_consumer(s->rk);
    rd_kafka_queue_io_event_enable(s->q, s->pipefd[1], "1", 1);
    s->created_ms = sl_now_ms();
    return 0;
}

static int start_source(ksrc_t *s)
{
    char err[512];
    if (pipe(s->pipefd) != 0 || fcntl(s->pipefd[0], F_SETFL, O_NONBLOCK) != 0 ||
        fcntl(s->pipefd[1], F_SETFL, O_NONBLOCK) != 0 ||
        fcntl(s->pipefd[0], F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(s->pipefd[1], F_SETFD, FD_CLOEXEC) != 0) {
        snprintf(err, sizeof(err), "pipe: %s", strerror(errno));
        goto out_log; /* free_source closes what was opened */
    }
    if (make_consumer(s, err, sizeof(err)) != 0)
        goto out_log;
    uv_poll_init(ks.loop, &s->poll, s->pipefd[0]);
    uv_idle_init(ks.loop, &s->idle);
    uv_timer_init(ks.loop, &s->tick);
    s->poll.data = s->idle.data = s->tick.data = s;
    s->handles_open = 3;
    uv_poll_start(&s->poll, UV_READABLE, on_readable);
    uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
    /* librdkafka's prefetch is memory the load makes grow: it is charged up front. */
    s->prefetch_charge = s->conf->prefetch;
    sl_budget_charge(s->prefetch_charge);
    start_cluster_id(s);
    SL_INFO("kafka source starting", "source=%s brokers=%s", s->conf->name, s->conf->brokers);
    return 0;
out_log:
    SL_ERROR("kafka source cannot start", "source=%s error=\"%s\"", s->conf->name, err);
    return SL_EINVAL;
}

/* ---- fatal errors ----------------------------------------------------------------------- */

/* rd_kafka_destroy on a thread of its own, waited for at most `ms`. On librdkafka 2.0.2 it
 * can hang for ever (seen after a subscribed topic was deleted: its main thread never ends);
 * a shutdown or a recreation must still go on, so past the wait the instance is left to its
 * thread, which frees the state below if it ever ends. Returns 1 if the instance was destroyed
 * in time. Thread pool. */
typedef struct destroyer {
    rd_kafka_t *rk;
    int flags;
    int done, abandoned;
    uv_mutex_t mu;
    uv_cond_t cv;
} destroyer_t;

static void destroyer_free(destroyer_t *d)
{
    uv_cond_destroy(&d->cv);
    uv_mutex_destroy(&d->mu);
    free(d);
}

static void destroy_main(void *arg)
{
    destroyer_t *d = arg;
    rd_kafka_destroy_flags(d->rk, d->flags);
    uv_mutex_lock(&d->mu);
    d->done = 1;
    int abandoned = d->abandoned;
    uv_cond_signal(&d->cv);
    uv_mutex_unlock(&d->mu);
    if (abandoned)
        destroyer_free(d);
}

static int destroy_bounded(rd_kafka_t *rk, int flags, uint64_t ms)
{
    destroyer_t *d = sl_calloc(1, sizeof(*d));
    d->rk = rk;
    d->flags = flags;
    uv_mutex_init(&d->mu);
    uv_cond_init(&d->cv);
    uv_thread_t t;
    if (uv_thread_create(&t, destroy_main, d) != 0) {
        destroyer_free(d);
        rd_kafka_destroy_flags(rk, flags);
        return 1;
    }
    pthread_detach(t);
    uint64_t deadline = sl_now_ms() + ms;
    uv_mutex_lock(&d->mu);
    while (!d->done) {
        uint64_t now = sl_now_ms();
        if (now >= deadline)
            break;
        uv_cond_timedwait(&d->cv, &d->mu, (deadline - now) * 1000000);
    }
    int done = d->done;
    d->abandoned = !done;
    uv_mutex_unlock(&d->mu);
    if (done)
        destroyer_free(d);
    return done;
}

static void destroy_work(uv_work_t *w)
{
    ksrc_t *s = w->data;
    /* A failed consumer cannot leave its group or commit: the group's session timeout
     * removes it, and the next consumer starts from the last commit. */
    rd_kafka_queue_destroy(s->q);
    s->destroy_abandoned = !destroy_bounded(s->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE, 10000);
}

static void destroy_done(uv_work_t *w, int status)
{
    (void)status;
    ksrc_t *s = w->data;
    s->work_busy = 0;
    s->rk = NULL;
    s->q = NULL;
    drain_pipe(s);
    if (s->destroy_abandoned)
        SL_WARN("kafka consumer not destroyed within 10 s (librdkafka hangs); it is left behind",
                "source=%s", s->conf->name);
    if (s->state == SRC_STOPPING) {
        stop_source(s);
        return;
    }
    s->restart_at_ms = sl_now_ms() + s->backoff_ms;
}

/* Destroys a failed consumer on the thread pool, once no other work uses it. */
static void destroy_failed(ksrc_t *s)
{
    if (!s->failed || s->rk == NULL || s->work_busy || s->wm_busy)
        return;
    rd_kafka_queue_io_event_enable(s->q, -1, NULL, 0);
    s->work_busy = 1;
    s->work.data = s;
    uv_queue_work(ks.loop, &s->work, destroy_work, destroy_done);
}

/* Makes the consumer again after a fatal error's backoff. */
static void recreate(ksrc_t *s)
{
    char err[512];
    s->restart_at_ms = 0;
    if (make_consumer(s, err, sizeof(err)) != 0) {
        s->backoff_ms = sl_kafka_backoff_next(s->backoff_ms);
        s->restart_at_ms = sl_now_ms() + s->backoff_ms;
        SL_ERROR("kafka consumer cannot be made again; retrying",
                 "source=%s error=\"%s\""
                 " backoff_ms=%" PRIu64,
                 s->conf->name, err, s->backoff_ms);
        return;
    }
    s->failed = 0;
    s->restarts++;
    s->state = SRC_STARTING;
    s->brokers_down = 0;
    SL_INFO("kafka consumer made again after a fatal error", "source=%s restarts=%" PRIu64,
            s->conf->name, s->restarts);
    if (s->cluster_id[0] != '\0')
        subscribe(s);
    else
        start_cluster_id(s);
}

int sl_kafka_start(uv_loop_t *loop, sl_hub_t *hub, const sl_config_t *cfg, void (*kick)(void *arg),
                   void *kick_arg)
{
    ks.loop = loop;
    ks.hub = hub;
    ks.cfg = cfg;
    ks.kick = kick;
    ks.kick_arg = kick_arg;
    ks.stopping = 0;
    if (cfg->nsources == 0)
        return 0;
    /* A test hook, for the environment only (never the configuration or a peer): after N
     * records, each source's consumer raises a fabricated fatal error once. */
    const char *hook = getenv("SLUICE_KAFKA_TEST_FATAL_AFTER");
    ks.test_fatal_after = hook != NULL ? strtoull(hook, NULL, 10) : 0;
    if (ks.test_fatal_after != 0)
        SL_WARN("test hook: each Kafka consumer raises a fatal error after N records",
                "SLUICE_KAFKA_TEST_FATAL_AFTER=%" PRIu64, ks.test_fatal_after);
    sl_metrics_set_sources(render_metrics, render_sources);
    ks.v = sl_calloc(cfg->nsources, sizeof(*ks.v));
    for (size_t i = 0; i < cfg->nsources; i++) {
        ksrc_t *s = sl_calloc(1, sizeof(*s));
        s->conf = &cfg->sources[i];
        s->pipefd[0] = s->pipefd[1] = -1;
        s->rb = sl_krb_new(loop, s->conf, cfg);
        ks.v[ks.n++] = s;
        if (start_source(s) != 0) {
            s->state = SRC_CLOSED;
            return SL_EINVAL;
        }
    }
    return 0;
}

/* ---- stopping ---------------------------------------------------------------------------- */

/* Frees what a closed source still holds (its struct stays until sl_kafka_dispose). */
static void free_source(ksrc_t *s)
{
    for (size_t i = 0; i < s->nparts; i++) {
        free(s->parts[i]->ktopic);
        free(s->parts[i]);
    }
    free(s->parts);
    s->parts = NULL;
    s->nparts = 0;
    if (s->pipefd[0] >= 0)
        close(s->pipefd[0]);
    if (s->pipefd[1] >= 0)
        close(s->pipefd[1]);
    s->pipefd[0] = s->pipefd[1] = -1;
    s->state = SRC_CLOSED;
}

static void on_handle_closed(uv_handle_t *h)
{
    ksrc_t *s = h->data;
    if (--s->handles_open == 0)
        free_source(s);
}

static void close_work(uv_work_t *w)
{
    ksrc_t *s = w->data;
    /* Leaves the group, which revokes (unassigning only, now) and commits what was stored.
     * That waits on the network, hence the thread pool, and for no longer than the drain
     * deadline: with the brokers down, a shutdown must still end. */
    uint64_t limit = ks.cfg->shutdown_drain_ms < 1000 ? 1000 : ks.cfg->shutdown_drain_ms;
    uint64_t deadline = sl_now_ms() + (limit > 10000 ? 10000 : limit);
    rd_kafka_queue_t *cq = rd_kafka_queue_new(s->rk);
    /* With the brokers known to be down, a close would only wait for its timeouts. */
    rd_kafka_error_t *err = s->brokers_down
                                ? rd_kafka_error_new(RD_KAFKA_RESP_ERR__TRANSPORT, "down")
                                : rd_kafka_consumer_close_queue(s->rk, cq);
    if (err != NULL)
        rd_kafka_error_destroy(err);
    while (err == NULL && !rd_kafka_consumer_closed(s->rk) && sl_now_ms() < deadline) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(cq, 100);
        if (ev == NULL)
            continue;
        if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE) {
            rd_kafka_topic_partition_list_t *l = rd_kafka_event_topic_partition_list(ev);
            if (strcmp(rd_kafka_rebalance_protocol(s->rk), "COOPERATIVE") == 0) {
                rd_kafka_error_t *e2 =
                    rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS
                        ? rd_kafka_incremental_assign(s->rk, l)
                        : rd_kafka_incremental_unassign(s->rk, l);
                if (e2 != NULL)
                    rd_kafka_error_destroy(e2);
            } else {
                rd_kafka_assign(s->rk, NULL);
            }
        }
        rd_kafka_event_destroy(ev);
    }
    int closed = rd_kafka_consumer_closed(s->rk);
    rd_kafka_queue_destroy(cq);
    rd_kafka_queue_destroy(s->q);
    int destroyed = destroy_bounded(s->rk, closed ? 0 : RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE,
                                    deadline > sl_now_ms() + 1000 ? deadline - sl_now_ms() : 1000);
    s->closed_cleanly = closed;
    s->destroy_abandoned = !destroyed;
}

static void close_handles(ksrc_t *s)
{
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
    uv_close((uv_handle_t *)&s->idle, on_handle_closed);
    uv_close((uv_handle_t *)&s->tick, on_handle_closed);
}

static void close_done(uv_work_t *w, int status)
{
    (void)status;
    ksrc_t *s = w->data;
    s->rk = NULL;
    s->q = NULL;
    if (s->destroy_abandoned)
        SL_WARN("kafka consumer not destroyed within the drain deadline (librdkafka hangs); the "
                "process exits without it",
                "source=%s", s->conf->name);
    if (s->closed_cleanly)
        SL_INFO("kafka source stopped", "source=%s published=%" PRIu64 " commits=%" PRIu64,
                s->conf->name, s->published, s->commits);
    else
        SL_WARN("kafka source stopped without leaving its group (brokers unreachable, or the "
                "close timed out): the "
                "last offsets may not be committed; records after them are delivered again "
                "and dropped as duplicates",
                "source=%s published=%" PRIu64, s->conf->name, s->published);
    close_handles(s);
}

static void stop_source(ksrc_t *s)
{
    if (s->work_busy || s->wm_busy)
        return; /* their done callbacks come back here */
    if (s->failed && s->rk != NULL) {
        destroy_failed(s); /* destroy_done comes back here */
        return;
    }
    uv_poll_stop(&s->poll);
    uv_idle_stop(&s->idle);
    uv_timer_stop(&s->tick);
    if (s->failed) {
        /* Waiting for its backoff: there is no consumer to close. */
        sl_budget_release(s->prefetch_charge);
        s->prefetch_charge = 0;
        SL_INFO("kafka source stopped (its consumer had failed)", "source=%s published=%" PRIu64,
                s->conf->name, s->published);
        close_handles(s);
        return;
    }
    rd_kafka_queue_io_event_enable(s->q, -1, NULL, 0);
    for (size_t i = 0; i < s->nparts; i++) {
        kpe_t *e = s->parts[i];
        if (e->kp.npend > 0)
            sl_kp_durable(&e->kp, is_durable, NULL);
        if (e->kp.store_dirty)
            s->store_dirty = 1;
    }
    store_offsets(s);
    for (size_t i = 0; i < s->nparts; i++) {
        kpe_t *e = s->parts[i];
        if (sl_ll_waiting(&e->w))
            sl_ll_unwait(&e->w);
        sl_kp_stash_t back;
        sl_kp_revoke(&e->kp, &back);
        stash_free(&back);
    }
    sl_budget_release(s->prefetch_charge);
    s->prefetch_charge = 0;
    s->work_busy = 1;
    s->work.data = s;
    uv_queue_work(ks.loop, &s->work, close_work, close_done);
}

void sl_kafka_dispose(void)
{
    for (size_t i = 0; i < ks.n; i++) {
        if (ks.v[i]->state != SRC_CLOSED || ks.v[i]->parts != NULL)
            free_source(ks.v[i]);
        sl_krb_free(ks.v[i]->rb);
        free(ks.v[i]);
    }
    free(ks.v);
    ks.v = NULL;
    ks.n = 0;
}

void sl_kafka_stop(void)
{
    if (ks.stopping)
        return;
    ks.stopping = 1;
    for (size_t i = 0; i < ks.n; i++) {
        ksrc_t *s = ks.v[i];
        sl_krb_stop(s->rb);
        if (s->state == SRC_STOPPING || s->state == SRC_CLOSED || (s->rk == NULL && !s->failed))
            continue;
        s->state = SRC_STOPPING;
        stop_source(s);
    }
}
