/*
 * The topic log: message construction (the SSE frame is encoded here, once), the ring with its
 * bounds, reader cursors with their start points, and the overflow policies. See topic.h for
 * the invariants. The hub owns topics and calls in here; nothing here does I/O.
 */
#include "core/topic.h"

#include "lib/budget.h"
#include "lib/sse.h"
#include "lib/ws.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* What one malloc costs beyond its size, roughly; counted so the budget tracks RSS. */

const char *sl_lag_reason_name(sl_lag_reason_t r)
{
    static const char *const names[] = {"evicted", "lag_hard", "lag_soft", "lag_age", "lost"};
    return r < SL_LAG__COUNT ? names[r] : "unknown";
}

const char *sl_evict_reason_name(sl_evict_reason_t r)
{
    static const char *const names[] = {"max_messages", "max_bytes", "max_age", "budget"};
    return r < SL_EVICT__COUNT ? names[r] : "unknown";
}

/* ---- ids and names ---------------------------------------------------------------------- */

size_t sl_id_format(char *buf, uint64_t epoch, uint64_t seq)
{
    return (size_t)snprintf(buf, SL_ID_MAX, "%016" PRIx64 "-%" PRIu64, epoch, seq);
}

static int parse_u64_dec(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 20)
        return SL_EBADID;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return SL_EBADID;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return SL_EBADID;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int sl_id_parse(const char *s, size_t len, int allow_suffix, uint64_t *epoch, uint64_t *seq)
{
    uint64_t e = 0;
    if (len < 18 || s[16] != '-')
        return SL_EBADID;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return SL_EBADID;
        e = (e << 4) | (uint64_t)d;
    }
    const char *num = s + 17;
    size_t nlen = len - 17;
    if (allow_suffix) {
        const char *colon = memchr(num, ':', nlen);
        if (colon != NULL) {
            size_t tlen = nlen - (size_t)(colon - num) - 1;
            if (!sl_topic_name_valid(colon + 1, tlen, 1024))
                return SL_EBADID;
            nlen = (size_t)(colon - num);
        }
    }
    if (parse_u64_dec(num, nlen, seq) != 0)
        return SL_EBADID;
    *epoch = e;
    return 0;
}

int sl_topic_name_valid(const char *s, size_t len, size_t max)
{
    if (len == 0 || len > max || s[0] == '/' || s[len - 1] == '/')
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '~' || c == '-' || c == '/';
        if (!ok || (c == '/' && s[i + 1] == '/'))
            return 0;
    }
    /* "cursors" is reserved as a segment: /topics/{name}/cursors is the cursor API. */
    for (size_t i = 0; i + 7 <= len; i++) {
        if ((i == 0 || s[i - 1] == '/') && memcmp(s + i, "cursors", 7) == 0 &&
            (i + 7 == len || s[i + 7] == '/'))
            return 0;
    }
    return 1;
}

/* ---- the ring --------------------------------------------------------------------------- */

sl_topic_t *sl_topic_new(const char *name, size_t name_len, const sl_topic_conf_t *conf,
                         uint64_t created_gseq)
{
    sl_topic_t *t = sl_bcalloc(sizeof(*t));
    t->name = sl_balloc(name_len + 1);
    memcpy(t->name, name, name_len);
    t->name[name_len] = '\0';
    t->name_len = name_len;
    do {
        t->epoch = sl_random64();
    } while (t->epoch == 0);
    t->disk_floor = UINT64_MAX;
    snprintf(t->epoch_hex, sizeof(t->epoch_hex), "%016" PRIx64, t->epoch);
    t->conf = *conf;
    t->created_gseq = created_gseq;
    sl_list_init(&t->readers);
    sl_list_init(&t->all_link);
    sl_list_init(&t->dirty_link);
    return t;
}

int sl_topic_rebase(sl_topic_t *t, uint64_t epoch, uint64_t head)
{
    int same = epoch == t->epoch;
    if (t->count != 0 || epoch == 0)
        return SL_EBUSY;
    if (same && head == t->head_seq)
        return 0;
    if (same && head < t->head_seq && (t->backend == NULL || t->backend->rebase == NULL))
        return SL_EBUSY;
    uint64_t old = t->epoch;
    /* The storage sees the new epoch (it may record it) and may still refuse. */
    t->epoch = epoch;
    snprintf(t->epoch_hex, sizeof(t->epoch_hex), "%016" PRIx64, epoch);
    if (t->backend != NULL && t->backend->rebase != NULL &&
        t->backend->rebase(t, same, head) != 0) {
        t->epoch = old;
        snprintf(t->epoch_hex, sizeof(t->epoch_hex), "%016" PRIx64, old);
        return SL_EBUSY;
    }
    if (!same || head < t->head_seq)
        sl_topic_set_losses(t, NULL, 0); /* they named ids of the old numbering */
    t->head_seq = head;
    /* What came before the new numbering was never seen here: a reader below it missed it. */
    t->evicted_seq = head;
    sl_list_t *it;
    sl_list_each(it, &t->readers)
    {
        sl_reader_t *r = sl_container_of(it, sl_reader_t, link);
        r->next = head + 1;
    }
    return 0;
}

void sl_topic_free(sl_topic_t *t)
{
    assert(t->nreaders == 0);
    sl_msg_t *m;
    while ((m = sl_topic_pop_tail(t)) != NULL) {
        sl_msg_unlink(m);
        sl_msg_unref(m);
    }
    sl_bfree(t->ring, t->cap * sizeof(*t->ring));
    if (t->losses != NULL)
        sl_bfree(t->losses, SL_TOPIC_LOSSES_MAX * sizeof(*t->losses));
    sl_bfree(t->name, t->name_len + 1);
    sl_bfree(t, sizeof(*t));
}

size_t sl_topic_index(const sl_topic_t *t, uint64_t seq)
{
    if (t->count == 0)
        return 0;
    uint64_t tail = sl_topic_tail(t);
    if (seq <= tail)
        return 0;
    if (seq > t->head_seq)
        return t->count;
    /* Contiguous (the common case): the slot seq - tail holds it. */
    uint64_t d = seq - tail;
    if (d < t->count && sl_topic_nth(t, (size_t)d)->seq == seq)
        return (size_t)d;
    /* Past holes the message is at or before that slot. */
    size_t lo = 0, hi = d < t->count ? (size_t)d : t->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sl_topic_nth(t, mid)->seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

sl_msg_t *sl_topic_at(const sl_topic_t *t, uint64_t seq)
{
    size_t i = sl_topic_index(t, seq);
    return i < t->count ? sl_topic_nth(t, i) : NULL;
}

sl_msg_t *sl_topic_get(const sl_topic_t *t, uint64_t seq)
{
    sl_msg_t *m = sl_topic_at(t, seq);
    return m != NULL && m->seq == seq ? m : NULL;
}

void sl_topic_skip(sl_topic_t *t, uint64_t head)
{
    assert(head > t->head_seq);
    t->head_seq = head;
}

/* ---- lost ranges ------------------------------------------------------------------------ */

void sl_topic_set_losses(sl_topic_t *t, const sl_loss_t *v, uint32_t n)
{
    assert(n <= SL_TOPIC_LOSSES_MAX);
    if (n > 0 && t->losses == NULL)
        t->losses = sl_balloc(SL_TOPIC_LOSSES_MAX * sizeof(*t->losses));
    if (n > 0)
        memcpy(t->losses, v, n * sizeof(*v));
    if (n > 0 || t->nlosses > 0)
        t->losses_gen++;
    t->nlosses = n;
}

/* 1 if no reader can cross lost range l any more: a reader below it is below the ring's tail
 * past evicted messages (an eviction gap covers it) and below what the storage holds. */
static int loss_unreachable(const sl_topic_t *t, const sl_loss_t *l)
{
    return l->to < t->evicted_seq && (t->backend == NULL || !t->backend->reads_back ||
                                      (t->disk_floor != UINT64_MAX && l->to < t->disk_floor));
}

void sl_topic_lose(sl_topic_t *t, uint64_t from, uint64_t to)
{
    assert(from <= to && from > t->head_seq);
    if (t->losses == NULL)
        t->losses = sl_balloc(SL_TOPIC_LOSSES_MAX * sizeof(*t->losses));
    t->losses_gen++;
    if (t->nlosses > 0) {
        /* Declared again (a publish refused, then offered again), or adjacent: one range. */
        sl_loss_t *l = &t->losses[t->nlosses - 1];
        if (from <= l->to + 1 && to + 1 >= l->from) {
            l->from = from < l->from ? from : l->from;
            l->to = to > l->to ? to : l->to;
            return;
        }
    }
    uint32_t keep = 0;
    for (uint32_t i = 0; i < t->nlosses; i++)
        if (!loss_unreachable(t, &t->losses[i]))
            t->losses[keep++] = t->losses[i];
    t->nlosses = keep;
    if (t->nlosses == SL_TOPIC_LOSSES_MAX) {
        t->losses[0].to = t->losses[1].to;
        memmove(&t->losses[1], &t->losses[2], (t->nlosses - 2) * sizeof(*t->losses));
        t->nlosses--;
    }
    t->losses[t->nlosses].from = from;
    t->losses[t->nlosses].to = to;
    t->nlosses++;
}

uint64_t sl_topic_lost(const sl_topic_t *t, uint64_t from, uint64_t to, uint64_t *first,
                       uint64_t *last)
{
    uint64_t n = 0;
    if (to < from || t->nlosses == 0)
        return 0;
    /* The first range that ends at or after `from`. */
    uint32_t lo = 0, hi = t->nlosses;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (t->losses[mid].to < from)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (uint32_t i = lo; i < t->nlosses && t->losses[i].from <= to; i++) {
        uint64_t a = t->losses[i].from > from ? t->losses[i].from : from;
        uint64_t b = t->losses[i].to < to ? t->losses[i].to : to;
        if (n == 0)
            *first = a;
        *last = b;
        n += b - a + 1;
    }
    return n;
}

static void ring_grow(sl_topic_t *t)
{
    size_t ncap = t->cap ? t->cap * 2 : 16;
    sl_msg_t **nr = sl_balloc(ncap * sizeof(*nr));
    for (size_t i = 0; i < t->count; i++)
        nr[i] = t->ring[(t->first + i) & (t->cap - 1)];
    sl_bfree(t->ring, t->cap * sizeof(*t->ring));
    t->ring = nr;
    t->cap = ncap;
    t->first = 0;
}

sl_msg_t *sl_topic_pop_tail(sl_topic_t *t)
{
    if (t->count == 0)
        return NULL;
    sl_msg_t *m = t->ring[t->first];
    t->ring[t->first] = NULL;
    t->first = (t->first + 1) & (t->cap - 1);
    t->count--;
    t->bytes -= m->payload_len;
    t->last_evicted_gseq = m->gseq;
    t->evicted_seq = m->seq;
    m->topic = NULL;
    return m;
}

void sl_topic_append(sl_topic_t *t, sl_msg_t *m, sl_evict_cb on_evict, void *arg)
{
    assert(m->seq == t->head_seq + 1);
    if (t->count == t->cap)
        ring_grow(t);
    t->ring[(t->first + t->count) & (t->cap - 1)] = m;
    t->count++;
    t->head_seq = m->seq;
    t->bytes += m->payload_len;
    t->cum_bytes += m->payload_len;
    m->cum_bytes = t->cum_bytes;
    m->topic = t;
    while (t->count > t->conf.max_messages)
        on_evict(t, sl_topic_pop_tail(t), SL_EVICT_MAX_MESSAGES, arg);
    /* The newest message is always kept, so one message over max_bytes is still delivered. */
    while (t->count > 1 && t->bytes > t->conf.max_bytes)
        on_evict(t, sl_topic_pop_tail(t), SL_EVICT_MAX_BYTES, arg);
}

/* ---- readers ---------------------------------------------------------------------------- */

static void queue_gap(sl_reader_t *r, uint64_t from, int from_known, uint64_t to, uint64_t missed,
                      sl_lag_reason_t why)
{
    if (r->mark & SL_MARK_GAP) {
        /* Widen the pending gap; it keeps its first reason. */
        r->gap_to = to;
        r->gap_missed += missed;
        return;
    }
    r->mark |= SL_MARK_GAP;
    r->mark_reason = (uint8_t)why;
    r->gap_from = from;
    r->gap_from_known = (uint8_t)from_known;
    r->gap_to = to;
    r->gap_missed = missed;
}

/* Where a reader resumes after stream position g: past the last retained message with
 * gseq <= g (so that lost ids after it are crossed, and told), else at the first retained one,
 * or head+1. Ring gseqs increase. */
static uint64_t first_after_gseq(const sl_topic_t *t, uint64_t g)
{
    size_t lo = 0, hi = t->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sl_topic_nth(t, mid)->gseq > g)
            hi = mid;
        else
            lo = mid + 1;
    }
    if (lo > 0)
        return sl_topic_nth(t, lo - 1)->seq + 1;
    return lo < t->count ? sl_topic_nth(t, lo)->seq : t->head_seq + 1;
}

int sl_reader_attach(sl_reader_t *r, struct sl_sub *sub, sl_topic_t *t, const sl_start_t *start,
                     uint64_t stream_epoch)
{
    int gap = 0;
    r->topic = t;
    r->sub = sub;
    r->mark = SL_MARK_NONE;
    r->ahead = 0;
    r->disk_read = 0;
    r->soft_since_ms = 0;
    r->disk_ok = (uint8_t)(start->disk && t->backend != NULL && t->backend->reads_back);
    sl_list_insert_tail(&t->readers, &r->link);
    t->nreaders++;
    t->idle_since_ms = 0;
    uint64_t tail = sl_reader_floor(r);
    /* Where "the oldest" is: the floor, or the ring's tail for a backend that says so. */
    uint64_t oldest = r->disk_ok && t->backend->oldest_in_ring ? sl_topic_tail(t) : tail;
    switch (start->kind) {
    case SL_START_NEW:
        r->next = t->head_seq + 1;
        break;
    case SL_START_OLDEST:
        r->next = oldest;
        break;
    case SL_START_SINCE:
        if (start->epoch != t->epoch || start->seq > t->head_seq) {
            /* An id beyond the head was never issued by this log as it is now (a lossless log
             * that lost an unsynced tail in a crash, say): what the client holds and what the
             * log holds disagree, as with another epoch. */
            r->mark |= SL_MARK_RESET;
            r->ahead = (uint8_t)(start->epoch == t->epoch);
            r->next = oldest;
        } else if (start->seq == t->head_seq) {
            r->next = t->head_seq + 1;
        } else {
            r->next = start->seq + 1; /* may be below tail: the check applies the policy */
        }
        break;
    case SL_START_GSEQ:
        if (start->epoch != stream_epoch) {
            r->mark |= SL_MARK_RESET;
            r->next = oldest;
            break;
        }
        r->next = first_after_gseq(t, start->seq);
        if (t->last_evicted_gseq > start->seq && tail > 1) {
            /* Something after the resume point was evicted. Every message of this log came
             * after created_gseq, so if the client's point precedes the log, all of 1..tail-1
             * are missed; otherwise where its gap starts is no longer known. */
            int known = start->seq <= t->created_gseq;
            queue_gap(r, known ? 1 : 0, known, tail - 1, known ? tail - 1 : 0, SL_LAG_EVICTED);
            gap = 1;
        }
        break;
    }
    return gap;
}

void sl_reader_detach(sl_reader_t *r)
{
    if (r->topic == NULL)
        return;
    sl_list_remove(&r->link);
    r->topic->nreaders--;
    r->topic = NULL;
}

sl_check_t sl_reader_check(sl_reader_t *r, uint64_t now_ms, int behind, sl_lag_reason_t *reason,
                           uint64_t *missed)
{
    sl_topic_t *t = r->topic;
    const sl_topic_conf_t *c = &t->conf;
    uint64_t tail = sl_reader_floor(r), head = t->head_seq;
    *missed = 0;
    if (r->next < tail && r->next > t->evicted_seq && tail == sl_topic_tail(t)) {
        /* Nothing was evicted at or after next: it points into a hole before the tail, or
         * into ids declared lost, which are told (whatever the policy: the reader did not
         * fall behind) and counted exactly. */
        uint64_t first = 0, last = 0;
        uint64_t lost = sl_topic_lost(t, r->next, tail - 1, &first, &last);
        r->next = tail;
        if (lost > 0) {
            *reason = SL_LAG_LOST;
            *missed = lost;
            queue_gap(r, first, 1, last, lost, SL_LAG_LOST);
            return SL_CHECK_OK;
        }
    }
    if (r->next < tail) {
        *reason = SL_LAG_EVICTED;
        *missed = tail - r->next;
        if (c->overflow == SL_OVERFLOW_DISCONNECT)
            return SL_CHECK_OVERFLOW;
        queue_gap(r, r->next, 1, tail - 1, *missed, SL_LAG_EVICTED);
        r->next = tail;
        r->soft_since_ms = 0;
        return SL_CHECK_OK;
    }
    if (r->next > head || !behind) {
        r->soft_since_ms = 0;
        return SL_CHECK_OK;
    }
    if (r->next < sl_topic_tail(t))
        return SL_CHECK_OK; /* reading back: its lag is not held against it */
    const sl_msg_t *m = sl_topic_at(t, r->next);
    if (m == NULL)
        return SL_CHECK_OK;
    uint64_t lag_msgs = head - r->next + 1;
    uint64_t lag_bytes = t->cum_bytes - m->cum_bytes + m->payload_len;
    int act = 0;
    if ((c->lag_hard_messages && lag_msgs > c->lag_hard_messages) ||
        (c->lag_hard_bytes && lag_bytes > c->lag_hard_bytes)) {
        act = 1;
        *reason = SL_LAG_HARD;
    } else if (c->lag_max_age_ms && now_ms > m->ts_ms && now_ms - m->ts_ms > c->lag_max_age_ms) {
        act = 1;
        *reason = SL_LAG_AGE;
    } else if ((c->lag_soft_messages && lag_msgs > c->lag_soft_messages) ||
               (c->lag_soft_bytes && lag_bytes > c->lag_soft_bytes)) {
        if (r->soft_since_ms == 0) {
            r->soft_since_ms = now_ms ? now_ms : 1;
        } else if (now_ms - r->soft_since_ms >= c->lag_soft_ms) {
            act = 1;
            *reason = SL_LAG_SOFT;
        }
    } else {
        r->soft_since_ms = 0;
    }
    if (!act)
        return SL_CHECK_OK;
    r->soft_since_ms = 0;
    if (c->overflow == SL_OVERFLOW_DISCONNECT) {
        *missed = lag_msgs;
        return SL_CHECK_OVERFLOW;
    }
    if (head > r->next) {
        /* Skip to the newest message: everything before it is reported as a gap (counted in
         * ids, holes included). */
        *missed = head - r->next;
        queue_gap(r, r->next, 1, head - 1, *missed, *reason);
        r->next = head;
    }
    return SL_CHECK_OK;
}
