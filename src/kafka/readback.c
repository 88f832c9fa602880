/*
 * Read-back from Kafka (readback.h).
 *
 * Design note.
 *
 * A topic bound to a partition (sl_krb_bind) gets the Kafka backend; its state (kb_t) names
 * the partition. A reader with r->disk_ok whose `next` is below the ring's tail asks for a
 * read-back (read_fetch): a job is queued for it (r->disk_job, r->disk_wait). At most
 * SL_KRB_ACTIVE_MAX jobs are active, one per partition; an active job's partition is assigned
 * to the source's read-back consumer at the job's next offset (rd_kafka_assign with the whole
 * set: no group, no subscribe, no commit; the group.id librdkafka insists on is never used).
 *
 *   (new) ──read_fetch──► QUEUED ──a slot and its partition free──► ACTIVE ──► done
 *                            └──────────── reader_gone / stop ─────────┴──► freed
 *
 * An active job takes the partition's records in offset order into a batch (messages built
 * like the ring's, charged to the budget) and is done when the next record is already in the
 * ring, the batch is full (SL_KRB_BATCH_MSGS or SL_KRB_BATCH_BYTES), Kafka reports the end of
 * the partition, or nothing came for SL_KRB_TIMEOUT_MS. Then the batch becomes r->disk, read
 * by read_next, and the reader is told (sl_reader_notify_ready); it asks again if it is still
 * behind.
 *
 * Gaps and holes. If the first record Kafka returns is past the offset asked for, the offsets
 * below the partition's log start (the low watermark librdkafka learnt from the fetch) are gone:
 * a gap marker counting them, and t->disk_floor rises to the log start so that later readers
 * are told at once by the hub's check. Offsets at or past the log start that have no record
 * for this topic (compacted, transaction markers, records another key routed elsewhere,
 * records the source rejected) are holes, passed silently: the batch simply has no message
 * with those ids. A job that times out with nothing read gives its reader a counted gap up to
 * the ring instead of leaving it waiting (never silence).
 *
 * Wake-ups are the main consumer's: the consumer queue writes to a pipe on empty -> non-empty,
 * a uv_poll serves a bounded turn and a uv_idle continues while the queue is not empty.
 */
#include "kafka/readback.h"

#include "lib/budget.h"
#include "lib/log.h"
#include "lib/template.h"
#include "lib/util.h"
#include "core/hub.h"
#include "core/rules.h"
#include "store/lossless.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TURN_MAX 256
#define TURN_MS 2
#define TICK_MS 200

struct sl_krb;

/* A topic's binding to its partition: the Kafka backend's state (t->backend_state). Owned by
 * the topic, freed by the backend's `free`. */
typedef struct kb {
    struct sl_krb *rb;
    sl_topic_t *t;
    char *ktopic;
    int32_t partition;
} kb_t;

/* One read-back for one reader. Owned by the read-back side (rb->queued or rb->active); the
 * reader points at it (r->disk_job) until it is done or cancelled. */
typedef struct job {
    sl_list_t link;
    struct sl_krb *rb;
    sl_reader_t *r;
    kb_t *kb;
    int active;
    int first_seen;
    int64_t want;           /* the next offset it needs */
    uint64_t last_ms;       /* when it started or last got a record */
    sl_disk_batch_t *batch; /* SL_KRB_BATCH_MSGS slots */
    size_t bytes;
} job_t;

struct sl_krb {
    uv_loop_t *loop;
    const sl_source_conf_t *sc;
    const sl_config_t *cfg;
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;
    int pipefd[2];
    uv_poll_t poll;
    uv_idle_t idle;
    uv_timer_t tick;
    uv_work_t work;
    int handles_open;
    int stopped;
    int broken; /* the consumer could not be made: read-backs end as gaps */
    uint64_t prefetch_charge;
    sl_list_t queued, active;
    uint32_t nqueued, nactive;
    sl_krb_stats_t st;
};

extern const sl_backend_t sl_krb_backend;

/* ---- routing ----------------------------------------------------------------------------- */

typedef struct hdr_arg {
    rd_kafka_headers_t *h;
} hdr_arg_t;

static int get_header(void *arg, const char *name, size_t len, const char **val, size_t *vlen)
{
    hdr_arg_t *a = arg;
    char n[80];
    if (a->h == NULL || len >= sizeof(n))
        return 0;
    memcpy(n, name, len);
    n[len] = '\0';
    const void *v;
    size_t sz;
    if (rd_kafka_header_get_last(a->h, n, &v, &sz) != 0 || v == NULL)
        return 0;
    *val = v;
    *vlen = sz;
    return 1;
}

int sl_kafka_route(const sl_source_conf_t *sc, size_t max_topic_name, const rd_kafka_message_t *m,
                   char *name, size_t cap, char *evbuf, size_t evcap, const char **event)
{
    const char *ktopic = rd_kafka_topic_name(m->rkt);
    hdr_arg_t ha = {NULL};
    /* Reading the headers parses them into the message, which librdkafka allows on a const
     * message it handed out. */
    rd_kafka_message_headers((rd_kafka_message_t *)m, &ha.h);
    sl_tmpl_vars_t v = {.kafka_topic = ktopic,
                        .kafka_topic_len = strlen(ktopic),
                        .partition = m->partition,
                        .key = m->key,
                        .key_len = m->key ? m->key_len : 0,
                        .header = get_header,
                        .header_arg = &ha};
    *event = NULL;
    int n = sl_tmpl_render(sc->topic_tmpl, &v, name, cap);
    if (n <= 0 || !sl_topic_name_valid(name, (size_t)n, max_topic_name)) {
        if (n < 0 && cap > 10)
            strcpy(name, "(too long)");
        return SL_KRB_ROUTE_BAD_TOPIC;
    }
    if (sc->event_tmpl != NULL) {
        evbuf[0] = '\0';
        if (sl_tmpl_render(sc->event_tmpl, &v, evbuf, evcap) != 0 &&
            (evbuf[0] == '\0' || sl_rule_event(evbuf, strlen(evbuf)).status != 0))
            return SL_KRB_ROUTE_BAD_EVENT;
        if (evbuf[0] != '\0')
            *event = evbuf;
    }
    return n;
}

/* ---- jobs -------------------------------------------------------------------------------- */

static void batch_free(sl_disk_batch_t *b)
{
    if (b == NULL)
        return;
    for (uint32_t i = 0; i < b->n; i++)
        sl_msg_unref(b->v[i]);
    sl_bfree(b, b->size);
}

static void reassign(sl_krb_t *rb);
static void start_jobs(sl_krb_t *rb);
static void on_tick(uv_timer_t *h);

/* Unlinks j from its list; the caller frees or finishes it. */
static void job_unlink(job_t *j)
{
    sl_krb_t *rb = j->rb;
    sl_list_remove(&j->link);
    if (j->active) {
        rb->nactive--;
        j->active = 0;
        reassign(rb);
    } else {
        rb->nqueued--;
    }
}

static void job_free(job_t *j)
{
    batch_free(j->batch);
    sl_bfree(j, sizeof(*j));
}

/* A gap for reader r up to (not including) seq `upto`. */
static void give_gap(sl_krb_t *rb, sl_reader_t *r, uint64_t upto)
{
    if (upto <= r->next)
        return;
    uint64_t missed = upto - r->next;
    rb->st.gaps++;
    rb->st.missed += missed;
    sl_reader_gap(r, r->next, upto - 1, missed);
}

enum { END_TAIL = 0, END_FULL, END_EOF, END_TIMEOUT, END_STOP };

/* Job j ends (`why`); `eof_seq` is, for END_EOF, the seq after the partition's end. Its batch
 * becomes the reader's and the reader is told. */
static void job_done(job_t *j, int why, uint64_t eof_seq)
{
    sl_krb_t *rb = j->rb;
    sl_reader_t *r = j->r;
    sl_topic_t *t = r->topic;
    job_unlink(j);
    r->disk_job = NULL;
    r->disk_wait = 0;
    sl_disk_batch_t *b = j->batch;
    j->batch = NULL;
    uint64_t tail = sl_topic_tail(t);
    if (b != NULL && b->n > 0) {
        batch_free(r->disk);
        r->disk = b;
    } else {
        batch_free(b);
        if (why == END_TAIL) {
            /* Everything between the reader and the ring is holes, or ids the source declared
             * lost (a gap). */
            sl_reader_cross(r, tail);
        } else if (why == END_EOF) {
            /* Kafka has nothing more up to its end: holes up to there (or lost ids). */
            sl_reader_cross(r, eof_seq < tail ? eof_seq : tail);
        } else if (why == END_TIMEOUT || why == END_STOP) {
            rb->st.timeouts += why == END_TIMEOUT;
            give_gap(rb, r, tail);
        }
    }
    job_free(j);
    sl_reader_notify_ready(r);
    start_jobs(rb);
}

static int partition_busy(const sl_krb_t *rb, const kb_t *kb)
{
    const sl_list_t *it;
    sl_list_each(it, &rb->active)
    {
        const job_t *a = sl_container_of(it, job_t, link);
        if (a->kb->partition == kb->partition && strcmp(a->kb->ktopic, kb->ktopic) == 0)
            return 1;
    }
    return 0;
}

static int make_consumer(sl_krb_t *rb);

static void start_jobs(sl_krb_t *rb)
{
    int changed = 0;
    if (rb->stopped)
        return;
    sl_list_t *it, *tmp;
    sl_list_each_safe(it, tmp, &rb->queued)
    {
        if (rb->nactive >= SL_KRB_ACTIVE_MAX)
            break;
        job_t *j = sl_container_of(it, job_t, link);
        if (partition_busy(rb, j->kb))
            continue;
        sl_list_remove(&j->link);
        rb->nqueued--;
        sl_list_insert_tail(&rb->active, &j->link);
        rb->nactive++;
        j->active = 1;
        j->last_ms = sl_now_ms();
        /* The batch is made when the job runs, so waiting readers cost no slots. */
        size_t size = sizeof(sl_disk_batch_t) + SL_KRB_BATCH_MSGS * sizeof(sl_msg_t *);
        j->batch = sl_balloc(size);
        j->batch->n = j->batch->pos = 0;
        j->batch->size = size;
        rb->st.readbacks++;
        changed = 1;
    }
    if (!changed)
        return;
    if (rb->rk == NULL && !rb->broken && make_consumer(rb) != 0)
        rb->broken = 1;
    if (rb->broken) {
        /* No consumer: every active job ends as a gap. */
        while (!sl_list_empty(&rb->active))
            job_done(sl_container_of(rb->active.next, job_t, link), END_TIMEOUT, 0);
        return;
    }
    reassign(rb);
    if (!uv_is_active((uv_handle_t *)&rb->tick))
        uv_timer_start(&rb->tick, on_tick, TICK_MS, TICK_MS);
}

/* The consumer's assignment: every active job's partition at the offset it needs next. Records
 * of the previous assignment still queued are older than a job's `want` or of no job, and
 * dropped when served. */
static void reassign(sl_krb_t *rb)
{
    if (rb->rk == NULL || rb->stopped)
        return;
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new(rb->nactive ? (int)rb->nactive : 1);
    sl_list_t *it;
    sl_list_each(it, &rb->active)
    {
        job_t *j = sl_container_of(it, job_t, link);
        rd_kafka_topic_partition_list_add(l, j->kb->ktopic, j->kb->partition)->offset = j->want;
    }
    rd_kafka_resp_err_t err = rd_kafka_assign(rb->rk, l->cnt ? l : NULL);
    if (err != 0)
        SL_WARN("kafka read-back assign failed", "source=%s error=%s", rb->sc->name,
                rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_destroy(l);
}

static job_t *job_of(sl_krb_t *rb, const char *ktopic, int32_t partition)
{
    sl_list_t *it;
    sl_list_each(it, &rb->active)
    {
        job_t *j = sl_container_of(it, job_t, link);
        if (j->kb->partition == partition && strcmp(j->kb->ktopic, ktopic) == 0)
            return j;
    }
    return NULL;
}

/* ---- records ------------------------------------------------------------------------------ */

static void on_first(job_t *j, int64_t off)
{
    sl_krb_t *rb = j->rb;
    sl_reader_t *r = j->r;
    sl_topic_t *t = r->topic;
    int64_t lo = -1, hi = -1;
    if (off <= j->want)
        return;
    /* Kafka gave a later offset than asked: below its log start the records are gone; at or
     * past it, the offsets skipped are holes. An unknown log start counts all as gone. */
    if (rd_kafka_get_watermark_offsets(rb->rk, j->kb->ktopic, j->kb->partition, &lo, &hi) != 0 ||
        lo < 0)
        lo = off;
    if (lo > j->want) {
        uint64_t gone_to = (uint64_t)(lo < off ? lo : off); /* offsets want..gone_to-1 */
        give_gap(rb, r, gone_to + 1);
        if (t->disk_floor < (uint64_t)lo + 1)
            t->disk_floor = (uint64_t)lo + 1;
    }
}

static void on_record(sl_krb_t *rb, const rd_kafka_message_t *m)
{
    job_t *j = job_of(rb, rd_kafka_topic_name(m->rkt), m->partition);
    if (j == NULL || m->offset < j->want)
        return; /* of an earlier assignment */
    sl_reader_t *r = j->r;
    sl_topic_t *t = r->topic;
    j->last_ms = sl_now_ms();
    if (!j->first_seen) {
        j->first_seen = 1;
        on_first(j, m->offset);
    }
    uint64_t seq = (uint64_t)m->offset + 1;
    if (seq >= sl_topic_tail(t) || seq > t->head_seq) {
        job_done(j, END_TAIL, 0);
        return;
    }
    j->want = m->offset + 1;
    if (seq < r->next)
        return; /* inside the gap just given */
    uint64_t f, l;
    if (sl_topic_lost(t, seq, seq, &f, &l) > 0)
        return; /* the source declared it lost (it skipped it): a gap for every reader alike */
    /* A record this topic never had (routed elsewhere, rejected) is a hole. */
    char name[1024], evbuf[80];
    const char *ev;
    int n = sl_kafka_route(rb->sc, rb->cfg->max_topic_name, m, name, sizeof(name), evbuf,
                           sizeof(evbuf), &ev);
    const char *payload = m->payload ? (const char *)m->payload : "";
    size_t plen = m->payload ? m->len : 0;
    if (n <= 0 || (size_t)n != t->name_len || memcmp(name, t->name, t->name_len) != 0 ||
        plen > rb->cfg->max_message_bytes || sl_rule_reserved(payload, plen))
        return;
    sl_msg_t *msg = sl_msg_new(t, seq, ev, payload, plen);
    sl_budget_charge(msg->charge);
    msg->ts_ms = 0;
    msg->topic = t; /* for the json envelope; the message is never in the ring */
    sl_disk_batch_t *b = j->batch;
    b->v[b->n++] = msg;
    j->bytes += plen;
    rb->st.messages++;
    if (b->n >= SL_KRB_BATCH_MSGS || j->bytes >= SL_KRB_BATCH_BYTES)
        job_done(j, END_FULL, 0);
}

static void on_error(sl_krb_t *rb, const rd_kafka_message_t *m)
{
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF && m->rkt != NULL) {
        job_t *j = job_of(rb, rd_kafka_topic_name(m->rkt), m->partition);
        if (j != NULL && m->offset >= j->want)
            job_done(j, END_EOF, (uint64_t)m->offset + 1);
        return;
    }
    SL_DEBUG("kafka read-back error", "source=%s error=\"%s\"", rb->sc->name,
             rd_kafka_err2str(m->err));
}

/* One bounded turn of the queue. Returns 1 if it may hold more. */
static int serve(sl_krb_t *rb)
{
    uint64_t deadline = sl_now_ms() + TURN_MS;
    int n = 0;
    for (; n < TURN_MAX && !rb->stopped; n++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rb->rk, 0);
        if (m == NULL)
            break;
        if (m->err)
            on_error(rb, m);
        else
            on_record(rb, m);
        rd_kafka_message_destroy(m);
        if ((n & 15) == 15 && sl_now_ms() >= deadline) {
            n++;
            break;
        }
    }
    return !rb->stopped && n > 0 && rd_kafka_queue_length(rb->q) > 0;
}

static void on_idle(uv_idle_t *h)
{
    sl_krb_t *rb = h->data;
    if (rb->stopped || !serve(rb))
        uv_idle_stop(&rb->idle);
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    (void)events;
    sl_krb_t *rb = h->data;
    char buf[64];
    if (status < 0 || rb->stopped)
        return;
    while (read(rb->pipefd[0], buf, sizeof(buf)) > 0)
        ;
    if (serve(rb) && !uv_is_active((uv_handle_t *)&rb->idle))
        uv_idle_start(&rb->idle, on_idle);
}

static void on_tick(uv_timer_t *h)
{
    sl_krb_t *rb = h->data;
    uint64_t now = sl_now_ms();
    sl_list_t *it, *tmp;
    sl_list_each_safe(it, tmp, &rb->active)
    {
        job_t *j = sl_container_of(it, job_t, link);
        if (now - j->last_ms >= SL_KRB_TIMEOUT_MS) {
            SL_WARN("kafka read-back got nothing in time; the reader gets a gap",
                    "source=%s kafka_topic=%s partition=%d topic=%s", rb->sc->name, j->kb->ktopic,
                    (int)j->kb->partition, j->r->topic->name);
            job_done(j, END_TIMEOUT, 0);
        }
    }
    /* A queue that became non-empty while a turn was ending signals nothing: look again. */
    if (rb->q != NULL && rd_kafka_queue_length(rb->q) > 0 &&
        !uv_is_active((uv_handle_t *)&rb->idle))
        uv_idle_start(&rb->idle, on_idle);
    if (rb->nactive == 0 && rb->nqueued == 0)
        uv_timer_stop(&rb->tick);
}

/* ---- the consumer ------------------------------------------------------------------------- */

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    sl_krb_t *rb = rd_kafka_opaque(rk);
    (void)level;
    SL_DEBUG("kafka read-back", "source=%s facility=%s text=\"%s\"", rb ? rb->sc->name : "?", fac,
             buf);
}

static int conf_set(rd_kafka_conf_t *c, const char *k, const char *v, char *err, size_t cap)
{
    return rd_kafka_conf_set(c, k, v, err, cap) == RD_KAFKA_CONF_OK ? 0 : -1;
}

static int make_consumer(sl_krb_t *rb)
{
    char err[512] = "", num[32];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    if (conf_set(c, "reconnect.backoff.max.ms", "1000", err, sizeof(err)) != 0 ||
        conf_set(c, "log.queue", "true", err, sizeof(err)) != 0)
        goto out_conf;
    for (size_t i = 0; i < rb->sc->nprops; i++)
        if (conf_set(c, rb->sc->props[2 * i], rb->sc->props[2 * i + 1], err, sizeof(err)) != 0)
            goto out_conf;
    snprintf(num, sizeof(num), "%u", SL_KRB_PREFETCH >> 10);
    /* librdkafka wants a group.id to assign; with no subscribe and no commit it is never sent
     * to the cluster. */
    if (conf_set(c, "bootstrap.servers", rb->sc->brokers, err, sizeof(err)) != 0 ||
        conf_set(c, "group.id", "sluice-readback", err, sizeof(err)) != 0 ||
        conf_set(c, "enable.auto.commit", "false", err, sizeof(err)) != 0 ||
        conf_set(c, "enable.auto.offset.store", "false", err, sizeof(err)) != 0 ||
        conf_set(c, "enable.partition.eof", "true", err, sizeof(err)) != 0 ||
        conf_set(c, "auto.offset.reset", "earliest", err, sizeof(err)) != 0 ||
        conf_set(c, "queued.max.messages.kbytes", num, err, sizeof(err)) != 0 ||
        conf_set(c, "fetch.max.bytes", "1000000", err, sizeof(err)) != 0 ||
        conf_set(c, "max.partition.fetch.bytes", "262144", err, sizeof(err)) != 0)
        goto out_conf;
    rd_kafka_conf_set_opaque(c, rb);
    rd_kafka_conf_set_log_cb(c, on_log);
    if ((rb->rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof(err))) == NULL)
        goto out_conf;
    rd_kafka_poll_set_consumer(rb->rk);
    rd_kafka_set_log_queue(rb->rk, NULL);
    rb->q = rd_kafka_queue_get_consumer(rb->rk);
    if (pipe(rb->pipefd) != 0 || fcntl(rb->pipefd[0], F_SETFL, O_NONBLOCK) != 0 ||
        fcntl(rb->pipefd[1], F_SETFL, O_NONBLOCK) != 0 ||
        fcntl(rb->pipefd[0], F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(rb->pipefd[1], F_SETFD, FD_CLOEXEC) != 0) {
        snprintf(err, sizeof(err), "pipe: %s", strerror(errno));
        goto out_rk;
    }
    rd_kafka_queue_io_event_enable(rb->q, rb->pipefd[1], "1", 1);
    uv_poll_init(rb->loop, &rb->poll, rb->pipefd[0]);
    rb->poll.data = rb;
    rb->handles_open++;
    uv_poll_start(&rb->poll, UV_READABLE, on_readable);
    rb->prefetch_charge = SL_KRB_PREFETCH;
    sl_budget_charge(rb->prefetch_charge);
    SL_INFO("kafka read-back consumer started", "source=%s", rb->sc->name);
    return 0;
out_rk:
    rd_kafka_queue_destroy(rb->q);
    rd_kafka_destroy(rb->rk);
    rb->rk = NULL;
    rb->q = NULL;
    goto out_log;
out_conf:
    rd_kafka_conf_destroy(c);
out_log:
    SL_ERROR("kafka read-back consumer cannot start; readers behind the ring get gaps",
             "source=%s error=\"%s\"", rb->sc->name, err);
    return SL_EINVAL;
}

sl_krb_t *sl_krb_new(uv_loop_t *loop, const sl_source_conf_t *sc, const sl_config_t *cfg)
{
    sl_krb_t *rb = sl_calloc(1, sizeof(*rb));
    rb->loop = loop;
    rb->sc = sc;
    rb->cfg = cfg;
    rb->pipefd[0] = rb->pipefd[1] = -1;
    sl_list_init(&rb->queued);
    sl_list_init(&rb->active);
    uv_idle_init(loop, &rb->idle);
    uv_timer_init(loop, &rb->tick);
    rb->idle.data = rb->tick.data = rb;
    rb->handles_open = 2;
    return rb;
}

static void on_closed(uv_handle_t *h)
{
    sl_krb_t *rb = h->data;
    rb->handles_open--;
}

static void destroy_work(uv_work_t *w)
{
    sl_krb_t *rb = w->data;
    /* Not in a group: nothing to leave or commit. */
    rd_kafka_queue_destroy(rb->q);
    rd_kafka_destroy_flags(rb->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
}

static void destroy_done(uv_work_t *w, int status)
{
    (void)status;
    sl_krb_t *rb = w->data;
    rb->rk = NULL;
    rb->q = NULL;
    uv_close((uv_handle_t *)&rb->poll, on_closed);
}

void sl_krb_stop(sl_krb_t *rb)
{
    if (rb == NULL || rb->stopped)
        return;
    /* Readers still attached (draining) get what could not be read as a gap; stopped first,
     * so that ending one job starts no other. */
    rb->stopped = 1;
    while (!sl_list_empty(&rb->queued))
        job_done(sl_container_of(rb->queued.next, job_t, link), END_STOP, 0);
    while (!sl_list_empty(&rb->active))
        job_done(sl_container_of(rb->active.next, job_t, link), END_STOP, 0);
    uv_idle_stop(&rb->idle);
    uv_timer_stop(&rb->tick);
    uv_close((uv_handle_t *)&rb->idle, on_closed);
    uv_close((uv_handle_t *)&rb->tick, on_closed);
    if (rb->prefetch_charge) {
        sl_budget_release(rb->prefetch_charge);
        rb->prefetch_charge = 0;
    }
    if (rb->rk != NULL) {
        uv_poll_stop(&rb->poll);
        rd_kafka_queue_io_event_enable(rb->q, -1, NULL, 0);
        rb->work.data = rb;
        uv_queue_work(rb->loop, &rb->work, destroy_work, destroy_done);
    }
}

void sl_krb_free(sl_krb_t *rb)
{
    if (rb == NULL)
        return;
    if (rb->pipefd[0] >= 0)
        close(rb->pipefd[0]);
    if (rb->pipefd[1] >= 0)
        close(rb->pipefd[1]);
    free(rb);
}

void sl_krb_get_stats(const sl_krb_t *rb, sl_krb_stats_t *st)
{
    *st = rb->st;
    st->active = rb->nactive;
    st->queued = rb->nqueued;
}

/* ---- the backend -------------------------------------------------------------------------- */

void sl_krb_bind(sl_krb_t *rb, sl_topic_t *t, const char *ktopic, int32_t partition)
{
    if (t->backend != NULL || t->conf.lossless)
        return;
    kb_t *kb = sl_bcalloc(sizeof(*kb));
    kb->rb = rb;
    kb->t = t;
    kb->ktopic = sl_strdup(ktopic);
    kb->partition = partition;
    t->backend_state = kb;
    t->backend = &sl_krb_backend;
    /* Where Kafka's log starts is learnt by the first read-back that goes below it. */
    t->disk_floor = 1;
}

static int kb_admit(sl_topic_t *t)
{
    (void)t;
    return 0;
}

static int kb_prepare(sl_topic_t *t, size_t n)
{
    (void)t;
    (void)n;
    return 0;
}

static void kb_append(sl_topic_t *t, sl_msg_t *m)
{
    (void)t;
    (void)m;
}

static void kb_reader_gone(sl_reader_t *r)
{
    job_t *j = r->disk_job;
    if (j != NULL) {
        job_unlink(j);
        job_free(j);
        r->disk_job = NULL;
        start_jobs(((kb_t *)r->topic->backend_state)->rb);
    }
    batch_free(r->disk);
    r->disk = NULL;
    r->disk_wait = 0;
}

static int kb_idle(const sl_topic_t *t)
{
    (void)t;
    return 1; /* Kafka keeps the records, not this process */
}

static void kb_free(sl_topic_t *t)
{
    kb_t *kb = t->backend_state;
    free(kb->ktopic);
    sl_bfree(kb, sizeof(*kb));
    t->backend_state = NULL;
    t->backend = NULL;
    t->disk_floor = UINT64_MAX;
}

static sl_msg_t *kb_read_next(sl_reader_t *r)
{
    sl_disk_batch_t *b = r->disk;
    if (b == NULL)
        return NULL;
    while (b->pos < b->n && b->v[b->pos]->seq < r->next)
        b->pos++;
    /* A message past r->next: the ids between are holes, or lost ids that the caller tells
     * (sl_reader_cross) before it takes the message, which stays next until r->next passes
     * it. */
    if (b->pos < b->n)
        return b->v[b->pos];
    batch_free(b);
    r->disk = NULL;
    return NULL;
}

static int kb_read_fetch(sl_reader_t *r)
{
    sl_topic_t *t = r->topic;
    kb_t *kb = t->backend_state;
    sl_krb_t *rb = kb->rb;
    uint64_t tail = sl_topic_tail(t);
    if (!r->disk_ok || r->next >= tail || r->disk_job != NULL)
        return 0;
    if (r->next < t->disk_floor)
        give_gap(rb, r, t->disk_floor < tail ? t->disk_floor : tail);
    if (r->next >= tail)
        return 0;
    if (rb->stopped || rb->broken) {
        give_gap(rb, r, tail);
        return 0;
    }
    job_t *j = sl_bcalloc(sizeof(*j));
    j->rb = rb;
    j->r = r;
    j->kb = kb;
    j->want = (int64_t)(r->next - 1);
    sl_list_insert_tail(&rb->queued, &j->link);
    rb->nqueued++;
    r->disk_job = j;
    r->disk_wait = 1;
    start_jobs(rb);
    return 1;
}

const sl_backend_t sl_krb_backend = {
    .name = "kafka",
    .reads_back = 1,
    .oldest_in_ring = 1,
    .admit = kb_admit,
    .prepare = kb_prepare,
    .append = kb_append,
    .reader_gone = kb_reader_gone,
    .idle = kb_idle,
    .free = kb_free,
    .read_next = kb_read_next,
    .read_fetch = kb_read_fetch,
};
