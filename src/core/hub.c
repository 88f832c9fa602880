/*
 * The hub: topic registry, publishing, budget eviction, the flush pass and the sweep. See
 * hub.h. Delivery is pull-based: a topic never pushes bytes to a reader; it marks itself dirty
 * and the flush pass lets each owed subscriber take what it can write in one go.
 */
#include "core/hub.h"

#include "lib/budget.h"
#include "lib/log.h"
#include "core/metrics.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t hash_name(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

void sl_hub_init(sl_hub_t *hub, const sl_config_t *cfg)
{
    memset(hub, 0, sizeof(*hub));
    hub->cfg = cfg;
    hub->nbuckets = 64;
    hub->buckets = sl_calloc(hub->nbuckets, sizeof(*hub->buckets));
    sl_list_init(&hub->topics);
    sl_list_init(&hub->dirty);
    sl_list_init(&hub->ready);
    sl_list_init(&hub->msgs);
    do {
        hub->epoch = sl_random64();
    } while (hub->epoch == 0);
    snprintf(hub->epoch_hex, sizeof(hub->epoch_hex), "%016" PRIx64, hub->epoch);
}

static void unlink_topic(sl_hub_t *hub, sl_topic_t *t)
{
    sl_topic_t **pp = &hub->buckets[hash_name(t->name, t->name_len) & (hub->nbuckets - 1)];
    while (*pp != t)
        pp = &(*pp)->hnext;
    *pp = t->hnext;
    sl_list_remove(&t->all_link);
    sl_list_remove(&t->dirty_link);
    hub->ntopics--;
}

static void free_topic(sl_topic_t *t)
{
    if (t->backend != NULL)
        t->backend->free(t);
    sl_topic_free(t);
    sl_metrics.topics_freed++;
}

void sl_hub_set_storage(sl_hub_t *hub, const sl_storage_t *storage)
{
    hub->storage = storage;
}

int sl_hub_recover(sl_hub_t *hub)
{
    return hub->storage != NULL ? hub->storage->recover(hub) : 0;
}

void sl_hub_sweep_storage(sl_hub_t *hub, uint64_t now_ms)
{
    if (hub->storage != NULL)
        hub->storage->sweep(hub, now_ms);
}

void sl_hub_shutdown_storage(sl_hub_t *hub)
{
    if (hub->storage != NULL && hub->storage->shutdown != NULL)
        hub->storage->shutdown();
}

void sl_hub_dispose(sl_hub_t *hub)
{
    sl_list_t *it, *tmp;
    sl_list_each_safe(it, tmp, &hub->topics)
    {
        sl_topic_t *t = sl_container_of(it, sl_topic_t, all_link);
        unlink_topic(hub, t);
        free_topic(t);
    }
    assert(sl_list_empty(&hub->msgs));
    free(hub->buckets);
    hub->buckets = NULL;
}

static void rehash(sl_hub_t *hub)
{
    size_t n = hub->nbuckets * 2;
    sl_topic_t **nb = sl_calloc(n, sizeof(*nb));
    for (size_t i = 0; i < hub->nbuckets; i++) {
        sl_topic_t *t = hub->buckets[i], *next;
        for (; t != NULL; t = next) {
            next = t->hnext;
            size_t b = hash_name(t->name, t->name_len) & (n - 1);
            t->hnext = nb[b];
            nb[b] = t;
        }
    }
    free(hub->buckets);
    hub->buckets = nb;
    hub->nbuckets = n;
}

sl_topic_t *sl_hub_topic(sl_hub_t *hub, const char *name, size_t len, int create, int *err)
{
    *err = 0;
    size_t b = hash_name(name, len) & (hub->nbuckets - 1);
    for (sl_topic_t *t = hub->buckets[b]; t != NULL; t = t->hnext)
        if (t->name_len == len && memcmp(t->name, name, len) == 0)
            return t;
    if (!create)
        return NULL;
    if (hub->ntopics >= hub->cfg->max_topics) {
        *err = SL_ELIMIT;
        return NULL;
    }
    /* Topics are small, but a flood of names must still fit the budget. */
    if (sl_hub_reserve(hub, sizeof(sl_topic_t) + len + 256) != 0) {
        *err = SL_EOVERLOAD;
        return NULL;
    }
    sl_budget_release(sizeof(sl_topic_t) + len + 256);
    char *cname = sl_strndup(name, len);
    sl_topic_conf_t conf;
    sl_config_topic(hub->cfg, cname, &conf);
    free(cname);
    sl_topic_t *t = sl_topic_new(name, len, &conf, hub->gseq);
    if (hub->ntopics + 1 > hub->nbuckets)
        rehash(hub);
    b = hash_name(name, len) & (hub->nbuckets - 1);
    t->hnext = hub->buckets[b];
    hub->buckets[b] = t;
    sl_list_insert_tail(&hub->topics, &t->all_link);
    hub->ntopics++;
    sl_metrics.topics_created++;
    if (create != SL_TOPIC_CREATE_BARE && hub->storage != NULL)
        hub->storage->attach(t);
    SL_DEBUG("topic created", "topic=%s epoch=%s", t->name, t->epoch_hex);
    if (create != SL_TOPIC_CREATE_BARE && hub->on_topic != NULL)
        hub->on_topic(hub->on_topic_arg, t);
    return t;
}

static void evict_one(sl_topic_t *t, sl_msg_t *m, sl_evict_reason_t why, void *arg)
{
    (void)t;
    (void)arg;
    sl_msg_unlink(m);
    sl_metrics.evictions[why]++;
    sl_msg_unref(m);
}

int sl_hub_reserve(sl_hub_t *hub, size_t n)
{
    /* Decide before evicting: a charge that cannot fit even with every evictable message gone
     * is refused with nothing changed. */
    if (!sl_budget_fits(n) && !sl_budget_fits_evicting(n))
        return SL_EOVERLOAD;
    while (!sl_budget_fits(n) && !sl_list_empty(&hub->msgs)) {
        sl_msg_t *m = sl_container_of(hub->msgs.next, sl_msg_t, all);
        sl_topic_t *t = m->topic;
        sl_msg_t *popped = sl_topic_pop_tail(t);
        assert(popped == m);
        (void)popped;
        evict_one(t, m, SL_EVICT_BUDGET, hub);
    }
    if (!sl_budget_try(n))
        return SL_EOVERLOAD;
    return 0;
}

static void mark_dirty(sl_hub_t *hub, sl_topic_t *t)
{
    if (!sl_list_linked(&t->dirty_link))
        sl_list_insert_tail(&hub->dirty, &t->dirty_link);
}

int sl_hub_publish(sl_hub_t *hub, sl_topic_t *t, const char *event, const char *const *payloads,
                   const size_t *lens, size_t n, uint64_t *first_seq)
{
    return sl_hub_publish_at(hub, t, 0, event, payloads, lens, n, first_seq);
}

int sl_hub_publish_at(sl_hub_t *hub, sl_topic_t *t, uint64_t seq, const char *event,
                      const char *const *payloads, const size_t *lens, size_t n,
                      uint64_t *first_seq)
{
    const sl_backend_t *be = t->backend;
    uint64_t old_head = t->head_seq;
    int rc;
    if (be != NULL && (rc = be->admit(t)) != 0)
        return rc;
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += sl_msg_charge(t->name_len, event, payloads[i], lens[i]);
    if (sl_hub_reserve(hub, total) != 0) {
        sl_metrics.pub_rejected[SL_REJECT_PUB_BUDGET]++;
        return SL_EOVERLOAD;
    }
    /* Each message's charge is released when it is freed; hand the reservation over. */
    sl_budget_release(total);
    /* The head jumps now, so that the storage prepares for the seqs it will really get; it
     * is put back if the storage refuses. */
    if (seq > old_head + 1)
        sl_topic_skip(t, seq - 1);
    if (be != NULL && (rc = be->prepare(t, n)) != 0) {
        t->head_seq = old_head;
        return rc;
    }
    uint64_t now = sl_now_ms();
    *first_seq = t->head_seq + 1;
    for (size_t i = 0; i < n; i++) {
        sl_msg_t *m = sl_msg_new(t, t->head_seq + 1, event, payloads[i], lens[i]);
        sl_budget_charge(m->charge);
        m->gseq = ++hub->gseq;
        m->ts_ms = now;
        sl_msg_link(&hub->msgs, m);
        if (be != NULL)
            be->append(t, m);
        sl_topic_append(t, m, evict_one, hub);
        sl_metrics.published++;
        sl_metrics.published_bytes += lens[i];
    }
    hub->unflushed += n;
    t->idle_since_ms = 0;
    if (t->nreaders > 0)
        mark_dirty(hub, t);
    return 0;
}

void sl_hub_lose(sl_hub_t *hub, sl_topic_t *t, uint64_t from, uint64_t to)
{
    (void)hub;
    sl_topic_lose(t, from, to);
    SL_DEBUG("ids declared lost", "topic=%s from=%" PRIu64 " to=%" PRIu64, t->name, from, to);
}

static void (*reader_ready_cb)(sl_reader_t *r);

void sl_reader_set_ready_cb(void (*on_ready)(sl_reader_t *r))
{
    reader_ready_cb = on_ready;
}

void sl_reader_notify_ready(sl_reader_t *r)
{
    if (r->sub != NULL && r->sub->ops->disk_ready != NULL)
        r->sub->ops->disk_ready(r->sub);
    else if (reader_ready_cb != NULL)
        reader_ready_cb(r);
}

void sl_reader_gap(sl_reader_t *r, uint64_t from, uint64_t to, uint64_t missed)
{
    if (r->mark & SL_MARK_GAP) {
        r->gap_to = to;
        r->gap_missed += missed;
    } else {
        r->mark |= SL_MARK_GAP;
        r->gap_from = from;
        r->gap_from_known = 1;
        r->gap_to = to;
        r->gap_missed = missed;
        r->mark_reason = SL_LAG_EVICTED;
        sl_metrics.gaps[SL_LAG_EVICTED]++;
    }
    sl_metrics.gap_messages += missed;
    if (r->next <= to)
        r->next = to + 1;
}

int sl_reader_cross(sl_reader_t *r, uint64_t seq)
{
    uint64_t first = 0, last = 0;
    if (seq <= r->next)
        return 0;
    uint64_t lost = sl_topic_lost(r->topic, r->next, seq - 1, &first, &last);
    r->next = seq;
    if (lost == 0)
        return 0;
    if (r->mark & SL_MARK_GAP) {
        r->gap_to = last;
        r->gap_missed += lost;
    } else {
        r->mark |= SL_MARK_GAP;
        r->gap_from = first;
        r->gap_from_known = 1;
        r->gap_to = last;
        r->gap_missed = lost;
        r->mark_reason = SL_LAG_LOST;
        sl_metrics.gaps[SL_LAG_LOST]++;
    }
    sl_metrics.gap_messages += lost;
    return 1;
}

static void make_ready(sl_hub_t *hub, sl_sub_t *sub)
{
    if (!sl_list_linked(&sub->ready_link))
        sl_list_insert_tail(&hub->ready, &sub->ready_link);
}

int sl_hub_check_reader(sl_hub_t *hub, sl_reader_t *r, uint64_t now_ms)
{
    (void)hub;
    sl_lag_reason_t why = SL_LAG_EVICTED;
    uint64_t missed;
    sl_sub_t *sub = r->sub;
    if (sub->overflow)
        return 1;
    int had_gap = (r->mark & SL_MARK_GAP) != 0;
    sl_check_t res = sl_reader_check(r, now_ms, sub->writing, &why, &missed);
    if (res == SL_CHECK_OVERFLOW) {
        sub->overflow = 1;
        sub->overflow_reason = (uint8_t)why;
        sub->overflow_missed = missed;
        sub->overflow_reader = r;
        sl_metrics.overflow_disconnects[why]++;
        sl_metrics.gap_messages += missed;
        SL_INFO("reader overflow", "topic=%s reason=%s missed=%" PRIu64, r->topic->name,
                sl_lag_reason_name(why), missed);
        return 1;
    }
    if (missed > 0) {
        /* A gap that widens a marker not yet written is one gap, with more messages. */
        if (!had_gap)
            sl_metrics.gaps[why]++;
        sl_metrics.gap_messages += missed;
    }
    return 0;
}

void sl_sub_init(sl_hub_t *hub, sl_sub_t *sub, sl_topic_t **topics, const sl_start_t *starts,
                 uint32_t n)
{
    uint64_t now = sl_now_ms();
    sl_list_init(&sub->ready_link);
    sub->readers = sl_bcalloc(n * sizeof(sl_reader_t));
    sub->nreaders = n;
    sub->heartbeat_ms = 0;
    for (uint32_t i = 0; i < n; i++) {
        sl_reader_t *r = &sub->readers[i];
        sl_start_t st = starts[i];
        /* A stream position beyond the server's counter was never issued: reset, as for
         * another stream epoch (docs/protocol.md). */
        int ahead = st.kind == SL_START_GSEQ && st.epoch == hub->epoch && st.seq > hub->gseq;
        if (ahead)
            st.kind = SL_START_OLDEST;
        if (sl_reader_attach(r, sub, topics[i], &st, hub->epoch)) {
            sl_metrics.gaps[SL_LAG_EVICTED]++;
            sl_metrics.gap_messages += r->gap_missed;
        }
        if (ahead) {
            r->mark |= SL_MARK_RESET;
            r->ahead = 1;
        }
        uint64_t hb = topics[i]->conf.heartbeat_ms;
        if (hb && (sub->heartbeat_ms == 0 || hb < sub->heartbeat_ms))
            sub->heartbeat_ms = hb;
        sl_hub_check_reader(hub, r, now);
    }
    sl_hub_sub_ready(hub, sub, now);
}

void sl_sub_dispose(sl_hub_t *hub, sl_sub_t *sub)
{
    (void)hub;
    if (sub->readers == NULL)
        return;
    for (uint32_t i = 0; i < sub->nreaders; i++) {
        sl_reader_t *r = &sub->readers[i];
        if (r->topic->backend != NULL)
            r->topic->backend->reader_gone(r);
        sl_reader_detach(r);
    }
    sl_list_remove(&sub->ready_link);
    sl_bfree(sub->readers, sub->nreaders * sizeof(sl_reader_t));
    sub->readers = NULL;
    sub->nreaders = 0;
}

void sl_hub_sub_ready(sl_hub_t *hub, sl_sub_t *sub, uint64_t now_ms)
{
    if (sub->writing || sub->readers == NULL)
        return;
    int owed = sub->overflow;
    for (uint32_t i = 0; i < sub->nreaders && !owed; i++) {
        sl_reader_t *r = &sub->readers[i];
        if (sl_hub_check_reader(hub, r, now_ms) || sl_reader_ready(r))
            owed = 1;
    }
    if (owed)
        make_ready(hub, sub);
}

void sl_hub_flush(sl_hub_t *hub, uint64_t now_ms)
{
    hub->unflushed = 0;
    while (!sl_list_empty(&hub->dirty)) {
        sl_topic_t *t = sl_container_of(hub->dirty.next, sl_topic_t, dirty_link);
        sl_list_remove(&t->dirty_link);
        sl_list_t *it;
        sl_list_each(it, &t->readers)
        {
            sl_reader_t *r = sl_container_of(it, sl_reader_t, link);
            sl_sub_t *sub = r->sub;
            /* Writing readers are checked too: lag limits act while a reader is behind. */
            int overflow = sl_hub_check_reader(hub, r, now_ms);
            if (!sub->writing && (overflow || sl_reader_ready(r)))
                make_ready(hub, sub);
        }
    }
    /* Serve the subs ready now; those made ready by this pass go to hub->ready for the next. */
    sl_list_t pass;
    sl_list_init(&pass);
    if (!sl_list_empty(&hub->ready)) {
        pass.next = hub->ready.next;
        pass.prev = hub->ready.prev;
        pass.next->prev = &pass;
        pass.prev->next = &pass;
        sl_list_init(&hub->ready);
    }
    size_t bytes = 0;
    while (!sl_list_empty(&pass) && bytes < SL_HUB_PASS_BYTES) {
        sl_sub_t *sub = sl_container_of(pass.next, sl_sub_t, ready_link);
        sl_list_remove(&sub->ready_link);
        if (!sub->writing)
            bytes += sub->ops->deliver(sub);
    }
    /* Over budget: the rest goes first next time. */
    while (!sl_list_empty(&pass)) {
        sl_list_t *n = pass.prev;
        sl_list_remove(n);
        n->next = hub->ready.next;
        n->prev = &hub->ready;
        hub->ready.next->prev = n;
        hub->ready.next = n;
    }
}

static void expire_by_age(sl_hub_t *hub, sl_topic_t *t, uint64_t now_ms)
{
    sl_msg_t *m;
    while ((m = sl_topic_get(t, sl_topic_tail(t))) != NULL &&
           now_ms - m->ts_ms >= t->conf.max_age_ms)
        evict_one(t, sl_topic_pop_tail(t), SL_EVICT_MAX_AGE, hub);
}

/* With go 0: 1 if every reader of t (none at all included) can let go of it now (their subs
 * have `release` and agree). With go 1: tells each to. */
static int readers_release(sl_topic_t *t, int go)
{
    sl_list_t *it, *tmp;
    sl_list_each_safe(it, tmp, &t->readers)
    {
        sl_reader_t *r = sl_container_of(it, sl_reader_t, link);
        sl_sub_t *sub = r->sub;
        if (sub->ops->release == NULL || !sub->ops->release(sub, r, go))
            return 0;
    }
    return 1;
}

void sl_hub_sweep(sl_hub_t *hub, uint64_t now_ms)
{
    sl_list_t *it, *tmp;
    sl_list_each_safe(it, tmp, &hub->topics)
    {
        sl_topic_t *t = sl_container_of(it, sl_topic_t, all_link);
        if (t->conf.max_age_ms)
            expire_by_age(hub, t, now_ms);
        const sl_topic_conf_t *c = &t->conf;
        if (c->lag_soft_messages || c->lag_soft_bytes || c->lag_max_age_ms || c->max_age_ms) {
            sl_list_t *rit;
            sl_list_each(rit, &t->readers)
            {
                sl_reader_t *r = sl_container_of(rit, sl_reader_t, link);
                int overflow = sl_hub_check_reader(hub, r, now_ms);
                if (!r->sub->writing && (overflow || r->mark != SL_MARK_NONE))
                    make_ready(hub, r->sub);
            }
        }
        /* A lossless topic only subscribed to has nothing on disk and goes the same way. */
        if (t->count == 0 && (t->backend == NULL || t->backend->idle(t)) && readers_release(t, 0)) {
            if (t->idle_since_ms == 0) {
                t->idle_since_ms = now_ms ? now_ms : 1;
            } else if (now_ms - t->idle_since_ms >= hub->cfg->topic_idle_ttl_ms) {
                readers_release(t, 1);
                if (t->nreaders > 0) {
                    SL_ERROR("a reader did not let go of an idle topic", "topic=%s", t->name);
                    continue;
                }
                SL_DEBUG("topic freed", "topic=%s", t->name);
                unlink_topic(hub, t);
                free_topic(t);
            }
        } else if (t->nreaders > 0) {
            t->idle_since_ms = 0; /* a reader still needs it: the TTL starts again when not */
        }
    }
}
