/*
 * Unit tests of the hub and the budget: all-or-nothing publishing, eviction across topics in
 * publish order when the budget is short, the topic limit, the sweep (idle topics, max_age), and
 * the flush pass's contract with transports (deliver only to subs owed something and idle).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/budget.h"
#include "core/hub.h"
#include "core/metrics.h"

#include <stdio.h>
#include <string.h>

static sl_config_t cfg;
static sl_hub_t hub;
static uint64_t base;

static int setup(void **state)
{
    (void)state;
    sl_config_init(&cfg);
    sl_budget_set_limit(1u << 30, 0);
    base = sl_budget.used;
    sl_hub_init(&hub, &cfg);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sl_hub_dispose(&hub);
    sl_config_dispose(&cfg);
    assert_int_equal(sl_budget.used, base);
    return 0;
}

static sl_topic_t *topic(const char *name)
{
    int err;
    sl_topic_t *t = sl_hub_topic(&hub, name, strlen(name), 1, &err);
    assert_non_null(t);
    assert_int_equal(err, 0);
    return t;
}

static int publish(sl_topic_t *t, const char *payload)
{
    size_t len = strlen(payload);
    uint64_t first;
    return sl_hub_publish(&hub, t, NULL, &payload, &len, 1, &first);
}

static void test_budget_books(void **state)
{
    (void)state;
    sl_budget_set_limit(base + 100, 0);
    assert_true(sl_budget_fits(100));
    assert_false(sl_budget_fits(101));
    assert_true(sl_budget_try(60));
    assert_false(sl_budget_try(41));
    sl_budget_charge(50); /* unconditional: may exceed */
    assert_int_equal(sl_budget.used, base + 110);
    assert_true(sl_budget.peak >= base + 110);
    sl_budget_release(110);
    assert_int_equal(sl_budget.used, base);
    sl_budget_set_limit(1u << 30, 0);
}

static void test_lookup_and_topic_limit(void **state)
{
    (void)state;
    cfg.max_topics = 2;
    sl_topic_t *a = topic("a");
    assert_ptr_equal(topic("a"), a);
    int err;
    assert_null(sl_hub_topic(&hub, "nope", 4, 0, &err));
    assert_int_equal(err, 0);
    topic("b");
    assert_null(sl_hub_topic(&hub, "c", 1, 1, &err));
    assert_int_equal(err, SL_ELIMIT);
    assert_int_equal(hub.ntopics, 2);
    /* Many topics through rehashing. */
    cfg.max_topics = 1000;
    char name[16];
    for (int i = 0; i < 500; i++) {
        snprintf(name, sizeof(name), "t%d", i);
        topic(name);
    }
    for (int i = 0; i < 500; i++) {
        snprintf(name, sizeof(name), "t%d", i);
        assert_non_null(sl_hub_topic(&hub, name, strlen(name), 0, &err));
    }
    assert_int_equal(hub.ntopics, 502);
}

static void test_budget_eviction_across_topics(void **state)
{
    (void)state;
    sl_topic_t *a = topic("a"), *b = topic("b");
    char payload[1000];
    memset(payload, 'p', sizeof(payload) - 1);
    payload[sizeof(payload) - 1] = '\0';
    assert_int_equal(publish(a, payload), 0); /* a:1 is the oldest message */
    assert_int_equal(publish(b, payload), 0);
    assert_int_equal(publish(a, payload), 0);
    uint64_t before = sl_metrics.evictions[SL_EVICT_BUDGET];
    /* Room for half a message: each publish must evict exactly the oldest one. */
    size_t charge = sl_msg_charge(1, NULL, payload, strlen(payload));
    sl_budget_set_limit(sl_budget.used + charge / 2, 0);
    assert_int_equal(publish(b, payload), 0);
    assert_int_equal(publish(b, payload), 0);
    assert_int_equal(sl_metrics.evictions[SL_EVICT_BUDGET] - before, 2);
    /* The two oldest went: a:1 then b:1. */
    assert_int_equal(sl_topic_tail(a), 2);
    assert_int_equal(sl_topic_tail(b), 2);
    assert_int_equal(b->head_seq, 3);

    /* A batch that cannot fit even after evicting everything is refused whole. */
    const char *p[8];
    size_t lens[8];
    for (int i = 0; i < 8; i++) {
        p[i] = payload;
        lens[i] = 999;
    }
    uint64_t first, rej = sl_metrics.pub_rejected[SL_REJECT_PUB_BUDGET];
    /* 8 messages need more than the 3 retained ones free plus the 100 bytes of room. */
    sl_budget_set_limit(sl_budget.used + 100, 0);
    assert_int_equal(sl_hub_publish(&hub, a, NULL, p, lens, 8, &first), SL_EOVERLOAD);
    assert_int_equal(sl_metrics.pub_rejected[SL_REJECT_PUB_BUDGET] - rej, 1);
    assert_int_equal(a->head_seq, 2); /* nothing of the batch was appended */
    /* It is refused before anything is evicted: the other messages are all still there. */
    assert_int_equal(a->count + b->count, 3);
    assert_int_equal(sl_metrics.evictions[SL_EVICT_BUDGET] - before, 2);
    sl_budget_set_limit(1u << 30, 0);
    assert_int_equal(sl_hub_publish(&hub, a, "ev", p, lens, 3, &first), 0);
    assert_int_equal(first, 3);
    assert_int_equal(a->head_seq, 5);
    assert_string_equal(sl_topic_get(a, 4)->event, "ev");
}

static void test_sweep(void **state)
{
    (void)state;
    cfg.topic_idle_ttl_ms = 1000;
    sl_topic_t *idle = topic("idle");
    (void)idle;
    sl_topic_t *kept = topic("kept");
    publish(kept, "m");
    sl_hub_sweep(&hub, 10000); /* starts the idle clock */
    assert_int_equal(hub.ntopics, 2);
    sl_hub_sweep(&hub, 10999);
    assert_int_equal(hub.ntopics, 2);
    sl_hub_sweep(&hub, 11000);
    assert_int_equal(hub.ntopics, 1);
    int err;
    assert_null(sl_hub_topic(&hub, "idle", 4, 0, &err));
    assert_non_null(sl_hub_topic(&hub, "kept", 4, 0, &err));

    /* max_age evicts in the sweep; the emptied topic is then freed after its TTL. */
    kept->conf.max_age_ms = 500;
    uint64_t ts = sl_topic_get(kept, 1)->ts_ms;
    sl_hub_sweep(&hub, ts + 499);
    assert_int_equal(kept->count, 1);
    sl_hub_sweep(&hub, ts + 500);
    assert_int_equal(kept->count, 0);
    assert_int_equal(hub.ntopics, 1);
    sl_hub_sweep(&hub, ts + 501);
    sl_hub_sweep(&hub, ts + 1501);
    assert_int_equal(hub.ntopics, 0);
}

/* A fake transport: records deliveries and takes everything owed. */
static int delivered;
static size_t fake_deliver(sl_sub_t *sub)
{
    delivered++;
    for (uint32_t i = 0; i < sub->nreaders; i++) {
        sub->readers[i].next = sub->readers[i].topic->head_seq + 1;
        sub->readers[i].mark = SL_MARK_NONE;
    }
    return 1;
}
static const sl_sub_ops_t fake_ops = {.deliver = fake_deliver};

static void test_flush_contract(void **state)
{
    (void)state;
    sl_topic_t *a = topic("a"), *b = topic("b");
    sl_sub_t s1, s2;
    memset(&s1, 0, sizeof(s1));
    memset(&s2, 0, sizeof(s2));
    s1.ops = s2.ops = &fake_ops;
    sl_topic_t *ts[2] = {a, b};
    sl_start_t st[2] = {{.kind = SL_START_NEW}, {.kind = SL_START_NEW}};
    sl_sub_init(&hub, &s1, ts, st, 2);
    sl_sub_init(&hub, &s2, ts + 1, st, 1);
    delivered = 0;
    sl_hub_flush(&hub, 0);
    assert_int_equal(delivered, 0); /* nothing owed yet */

    publish(a, "x");
    assert_true(sl_hub_pending(&hub));
    sl_hub_flush(&hub, 0);
    assert_int_equal(delivered, 1); /* only s1 reads a */
    assert_false(sl_hub_pending(&hub));

    publish(b, "y");
    s2.writing = 1; /* a write in flight: not offered */
    sl_hub_flush(&hub, 0);
    assert_int_equal(delivered, 2);
    s2.writing = 0;
    sl_hub_sub_ready(&hub, &s2, 0); /* its write completed */
    sl_hub_flush(&hub, 0);
    assert_int_equal(delivered, 3);

    /* Disconnect policy: a reader past a hard limit makes its sub owe an overflow. */
    b->conf.overflow = SL_OVERFLOW_DISCONNECT;
    b->conf.lag_hard_messages = 2;
    uint64_t ovf = sl_metrics.overflow_disconnects[SL_LAG_HARD];
    s2.writing = 1;
    for (int i = 0; i < 3; i++)
        publish(b, "z");
    sl_hub_flush(&hub, 0);
    assert_true(s2.overflow);
    assert_int_equal(s2.overflow_reason, SL_LAG_HARD);
    assert_int_equal(s2.overflow_missed, 3);
    assert_int_equal(sl_metrics.overflow_disconnects[SL_LAG_HARD] - ovf, 1);
    s2.writing = 0;

    sl_sub_dispose(&hub, &s1);
    sl_sub_dispose(&hub, &s2);
    sl_sub_dispose(&hub, &s2); /* idempotent */
    assert_int_equal(a->nreaders + b->nreaders, 0);
}

/* A topic whose head jumps (an external log's offsets skipping): the ids between are holes
 * that cost nothing, that readers pass without a gap, and that eviction does not turn into
 * gaps; a reader that lost a real message still gets one. */
static void test_holes(void **state)
{
    (void)state;
    sl_topic_t *t = topic("h");
    uint64_t gaps0 = sl_metrics.gaps[SL_LAG_EVICTED], first;
    const char *p = "x";
    size_t len = 1;
    for (int i = 0; i < 3; i++)
        assert_int_equal(publish(t, "a"), 0);
    assert_int_equal(sl_hub_publish_at(&hub, t, 10000001, NULL, &p, &len, 1, &first), 0);
    assert_int_equal(first, 10000001);
    assert_int_equal(t->head_seq, 10000001);
    assert_int_equal(t->count, 4);
    assert_true(t->cap <= 16); /* no slot for a hole */
    assert_null(sl_topic_get(t, 4));
    assert_null(sl_topic_get(t, 10000000));
    assert_int_equal(sl_topic_get(t, 3)->seq, 3);
    assert_int_equal(sl_topic_at(t, 4)->seq, 10000001);
    assert_int_equal(sl_topic_at(t, 2)->seq, 2);
    assert_int_equal(sl_topic_index(t, 9999999), 3);
    assert_null(sl_topic_at(t, 10000002));
    /* 0 and head + 1 publish as before. */
    assert_int_equal(sl_hub_publish_at(&hub, t, 0, NULL, &p, &len, 1, &first), 0);
    assert_int_equal(first, 10000002);
    assert_int_equal(sl_hub_publish_at(&hub, t, 10000003, NULL, &p, &len, 1, &first), 0);
    assert_int_equal(first, 10000003);

    /* A reader resuming inside the hole owes nothing missed: no gap, the next message is
     * the one after the hole. */
    sl_sub_t s1;
    memset(&s1, 0, sizeof(s1));
    s1.ops = &fake_ops;
    sl_start_t st = {.kind = SL_START_SINCE, .epoch = t->epoch, .seq = 3};
    sl_sub_init(&hub, &s1, &t, &st, 1);
    sl_reader_t *r = &s1.readers[0];
    assert_int_equal(r->mark, SL_MARK_NONE);
    assert_int_equal(sl_topic_at(t, r->next)->seq, 10000001);

    /* Eviction past the hole: a reader inside it is moved silently; one whose message was
     * evicted gets a gap. */
    t->conf.max_messages = 1;
    assert_int_equal(sl_hub_publish_at(&hub, t, 20000001, NULL, &p, &len, 1, &first), 0);
    assert_int_equal(sl_topic_tail(t), 20000001);
    assert_int_equal(t->evicted_seq, 10000003);
    sl_sub_t s2, s3;
    memset(&s2, 0, sizeof(s2));
    memset(&s3, 0, sizeof(s3));
    s2.ops = s3.ops = &fake_ops;
    sl_start_t in_hole = {.kind = SL_START_SINCE, .epoch = t->epoch, .seq = 10000005};
    sl_sub_init(&hub, &s2, &t, &in_hole, 1);
    assert_int_equal(s2.readers[0].mark, SL_MARK_NONE);
    assert_int_equal(s2.readers[0].next, 20000001);
    assert_int_equal(sl_metrics.gaps[SL_LAG_EVICTED] - gaps0, 0);
    sl_start_t lost = {.kind = SL_START_SINCE, .epoch = t->epoch, .seq = 10000002};
    sl_sub_init(&hub, &s3, &t, &lost, 1);
    assert_true(s3.readers[0].mark & SL_MARK_GAP);
    assert_int_equal(s3.readers[0].next, 20000001);
    assert_int_equal(sl_metrics.gaps[SL_LAG_EVICTED] - gaps0, 1);
    /* The first reader was still at 4 (evicted): its check gives it the gap too. */
    sl_hub_check_reader(&hub, r, 0);
    assert_true(r->mark & SL_MARK_GAP);

    /* A renumbering (a topic bound to another partition): what came before it was never seen
     * here, so a reader below it has missed it. */
    sl_sub_dispose(&hub, &s1);
    sl_sub_dispose(&hub, &s2);
    sl_sub_dispose(&hub, &s3);
    sl_msg_t *m;
    while ((m = sl_topic_pop_tail(t)) != NULL) {
        sl_msg_unlink(m);
        sl_msg_unref(m);
    }
    assert_int_equal(sl_topic_rebase(t, 77, 500), 0);
    assert_int_equal(t->evicted_seq, 500);
    assert_int_equal(publish(t, "b"), 0);
    assert_int_equal(t->head_seq, 501);
    sl_sub_t s4;
    memset(&s4, 0, sizeof(s4));
    s4.ops = &fake_ops;
    sl_start_t old = {.kind = SL_START_SINCE, .epoch = 77, .seq = 100};
    sl_sub_init(&hub, &s4, &t, &old, 1);
    assert_true(s4.readers[0].mark & SL_MARK_GAP);
    assert_int_equal(s4.readers[0].gap_missed, 400);
    sl_sub_dispose(&hub, &s4);
}

/* What the transports' delivery loop (net/conn.c, deliver) gives reader r: gap markers as
 * "g<from>-<to>/<missed>" and messages as their seqs, in order. */
static void walk(sl_reader_t *r, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    sl_hub_check_reader(&hub, r, 0);
    for (;;) {
        if (r->mark & SL_MARK_GAP) {
            n += (size_t)snprintf(out + n, cap - n, "g%llu-%llu/%llu ",
                                  (unsigned long long)r->gap_from, (unsigned long long)r->gap_to,
                                  (unsigned long long)r->gap_missed);
            r->mark = SL_MARK_NONE;
        }
        if (r->next > r->topic->head_seq)
            break;
        sl_msg_t *m = sl_topic_at(r->topic, r->next);
        if (m == NULL)
            break;
        if (m->seq > r->next && sl_reader_cross(r, m->seq))
            continue; /* the marker first */
        n += (size_t)snprintf(out + n, cap - n, "%llu ", (unsigned long long)m->seq);
        r->next = m->seq + 1;
    }
}

static void since(sl_sub_t *s, sl_topic_t *t, uint64_t seq)
{
    memset(s, 0, sizeof(*s));
    s->ops = &fake_ops;
    sl_start_t st = {.kind = seq ? SL_START_SINCE : SL_START_NEW, .epoch = t->epoch, .seq = seq};
    sl_sub_init(&hub, s, &t, &st, 1);
}

static int publish_lost(sl_topic_t *t, uint64_t from, uint64_t to, uint64_t at)
{
    const char *p = "x";
    size_t len = 1;
    uint64_t first;
    if (from)
        sl_hub_lose(&hub, t, from, to);
    int rc = sl_hub_publish_at(&hub, t, at, NULL, &p, &len, 1, &first);
    if (rc == 0)
        assert_int_equal(first, at);
    return rc;
}

/* Ids declared lost beside holes: a reader crossing them (live, resuming from the ring, or
 * below the tail past evicted messages) gets one gap marker counting exactly the lost ids it
 * crossed, reason lost, counted; a reader crossing only holes gets nothing. */
static void test_lost_ranges(void **state)
{
    (void)state;
    char out[256];
    sl_topic_t *t = topic("l");
    for (int i = 0; i < 3; i++)
        assert_int_equal(publish(t, "a"), 0);
    sl_sub_t live, back, inside, holes, far;
    since(&live, t, 0); /* caught up at 3 */
    uint64_t gaps0 = sl_metrics.gaps[SL_LAG_LOST], msgs0 = sl_metrics.gap_messages;
    /* 4..6 lost, 7..9 holes, then 10; then 11..19 holes only, then 20. */
    assert_int_equal(publish_lost(t, 4, 6, 10), 0);
    assert_int_equal(publish_lost(t, 0, 0, 20), 0);
    assert_int_equal(t->nlosses, 1);
    walk(&live.readers[0], out, sizeof(out));
    assert_string_equal(out, "g4-6/3 10 20 ");
    assert_int_equal(live.readers[0].mark_reason, SL_LAG_LOST);
    assert_int_equal(sl_metrics.gaps[SL_LAG_LOST] - gaps0, 1);
    assert_int_equal(sl_metrics.gap_messages - msgs0, 3);
    /* Resumes from the ring: before the range, inside it, in the holes after it. */
    since(&back, t, 1);
    walk(&back.readers[0], out, sizeof(out));
    assert_string_equal(out, "2 3 g4-6/3 10 20 ");
    since(&inside, t, 5);
    walk(&inside.readers[0], out, sizeof(out));
    assert_string_equal(out, "g6-6/1 10 20 ");
    since(&holes, t, 7);
    walk(&holes.readers[0], out, sizeof(out));
    assert_string_equal(out, "10 20 ");
    since(&far, t, 12);
    walk(&far.readers[0], out, sizeof(out));
    assert_string_equal(out, "20 ");
    /* A multi-topic stream resuming by position after message 3: the same gap. */
    sl_sub_t multi;
    memset(&multi, 0, sizeof(multi));
    multi.ops = &fake_ops;
    multi.multi = 1;
    sl_start_t gs = {.kind = SL_START_GSEQ, .epoch = hub.epoch, .seq = sl_topic_get(t, 3)->gseq};
    sl_sub_init(&hub, &multi, &t, &gs, 1);
    walk(&multi.readers[0], out, sizeof(out));
    assert_string_equal(out, "g4-6/3 10 20 ");
    sl_sub_dispose(&hub, &multi);
    gaps0++;
    msgs0 += 3;
    assert_int_equal(sl_metrics.gaps[SL_LAG_LOST] - gaps0, 3);
    assert_int_equal(sl_metrics.gap_messages - msgs0, 3 + 3 + 1);
    /* Two ranges crossed at once (no message between them): one marker, lost ids only. */
    assert_int_equal(publish_lost(t, 21, 22, 25), 0);
    /* Declared, its publish refused (the range stays), declared again: no change. */
    sl_hub_lose(&hub, t, 26, 27);
    assert_int_equal(publish_lost(t, 26, 27, 30), 0);
    assert_int_equal(t->nlosses, 3);
    sl_sub_dispose(&hub, &live);
    sl_sub_dispose(&hub, &back);
    since(&live, t, 20);
    walk(&live.readers[0], out, sizeof(out));
    assert_string_equal(out, "g21-22/2 25 g26-27/2 30 ");
    since(&back, t, 20);
    sl_reader_t *r = &back.readers[0];
    assert_int_equal(sl_reader_cross(r, 30), 1);
    assert_int_equal(r->gap_missed, 4);
    assert_int_equal(r->gap_from, 21);
    assert_int_equal(r->gap_to, 27);
    assert_int_equal(r->next, 30);
    assert_int_equal(sl_reader_cross(r, 30), 0);
    /* Below the tail past evicted messages: the lost ids there are told, exactly. */
    t->conf.max_messages = 1;
    assert_int_equal(publish_lost(t, 31, 34, 40), 0);
    assert_int_equal(sl_topic_tail(t), 40);
    assert_int_equal(t->evicted_seq, 30);
    sl_sub_dispose(&hub, &inside);
    sl_sub_dispose(&hub, &holes);
    sl_sub_dispose(&hub, &far);
    since(&inside, t, 30);
    walk(&inside.readers[0], out, sizeof(out));
    assert_string_equal(out, "g31-34/4 40 ");
    assert_int_equal(inside.readers[0].mark_reason, SL_LAG_LOST);
    since(&holes, t, 35);
    walk(&holes.readers[0], out, sizeof(out));
    assert_string_equal(out, "40 ");
    /* Evicted messages: the eviction gap covers lost ids too (counted in ids, as ever). */
    since(&far, t, 20);
    walk(&far.readers[0], out, sizeof(out));
    assert_string_equal(out, "g21-39/19 40 ");
    assert_int_equal(far.readers[0].mark_reason, SL_LAG_EVICTED);
    /* Ranges no reader can cross are dropped; the count stays bounded. */
    for (uint64_t i = 0; i < 2 * SL_TOPIC_LOSSES_MAX; i++)
        assert_int_equal(publish_lost(t, 41 + 3 * i, 41 + 3 * i, 43 + 3 * i), 0);
    assert_true(t->nlosses <= 2);
    /* A new epoch forgets them. */
    sl_sub_dispose(&hub, &live);
    sl_sub_dispose(&hub, &back);
    sl_sub_dispose(&hub, &inside);
    sl_sub_dispose(&hub, &holes);
    sl_sub_dispose(&hub, &far);
    sl_msg_t *m;
    while ((m = sl_topic_pop_tail(t)) != NULL) {
        sl_msg_unlink(m);
        sl_msg_unref(m);
    }
    assert_int_equal(sl_topic_rebase(t, 99, 1000), 0);
    assert_int_equal(t->nlosses, 0);
}

/* The bound on remembered ranges when every one is still reachable: the oldest two merge. */
static void test_lost_ranges_cap(void **state)
{
    (void)state;
    sl_topic_t *t = topic("c");
    uint64_t first = 0, last = 0;
    for (uint64_t i = 0; i < SL_TOPIC_LOSSES_MAX + 3; i++)
        assert_int_equal(publish_lost(t, 10 * i + 1, 10 * i + 2, 10 * i + 5), 0);
    assert_int_equal(t->nlosses, SL_TOPIC_LOSSES_MAX);
    /* The newest are exact; the oldest absorbed the ids between the first four. */
    assert_int_equal(
        sl_topic_lost(t, 10 * (SL_TOPIC_LOSSES_MAX + 2), UINT64_MAX - 1, &first, &last), 2);
    assert_int_equal(first, 10 * (SL_TOPIC_LOSSES_MAX + 2) + 1);
    assert_int_equal(sl_topic_lost(t, 1, 32, &first, &last), 32);
    assert_int_equal(first, 1);
    assert_int_equal(last, 32);
    assert_int_equal(sl_topic_lost(t, 7, 3, &first, &last), 0);
}

static void test_pending_pool(void **state)
{
    (void)state;
    /* limit 1000 above what is used, 300 of it set aside for input still arriving */
    sl_budget_set_limit(base + 1000, 300);
    assert_true(sl_budget_fits(700));
    assert_false(sl_budget_fits(701));
    assert_true(sl_budget_try_pending(200));
    assert_true(sl_budget_fits(700)); /* the pool's use is inside its own room */
    assert_false(sl_budget_try_pending(101));
    assert_true(sl_budget_try_pending(100));
    assert_false(sl_budget_try_pending(1));
    /* Unconditional charges may eat into the pool's room; the limit still holds for input. */
    sl_budget_charge(700);
    sl_budget_release_pending(300);
    assert_false(sl_budget_try_pending(301));
    assert_true(sl_budget_try_pending(300));
    sl_budget_release_pending(300);
    sl_budget_release(700);
    assert_int_equal(sl_budget.used, base);
    assert_int_equal(sl_budget.pending, 0);
    sl_budget_set_limit(1u << 30, 0);
}

static void test_evictable_follows_references(void **state)
{
    (void)state;
    sl_topic_t *a = topic("ev");
    uint64_t e0 = sl_budget.evictable;
    assert_int_equal(publish(a, "one"), 0);
    sl_msg_t *m = sl_topic_get(a, 1);
    assert_int_equal(sl_budget.evictable - e0, m->charge);
    sl_msg_ref(m); /* a write holds it: evicting it would free nothing */
    assert_int_equal(sl_budget.evictable, e0);
    sl_msg_unref(m);
    assert_int_equal(sl_budget.evictable - e0, m->charge);
    sl_msg_ref(m);
    sl_msg_t *popped = sl_topic_pop_tail(a);
    assert_ptr_equal(popped, m);
    sl_msg_unlink(m);
    sl_msg_unref(m); /* the ring's reference */
    assert_int_equal(sl_budget.evictable, e0);
    sl_msg_unref(m); /* the write's: freed */
    assert_int_equal(sl_budget.evictable, e0);
}

/* Readers that do not keep their topics alive (sl_sub_ops_t.release): a topic whose readers
 * all agree is freed after its TTL and they are told to let go; one that refuses keeps it (for
 * the others too, who are not let go of it), and restarts the TTL; a plain reader keeps it. */
static int weak_busy[2], weak_asked[2], weak_gone[2];
static sl_sub_t weak[2];
static size_t weak_deliver(sl_sub_t *sub)
{
    (void)sub;
    return 0;
}
static int weak_release(sl_sub_t *sub, sl_reader_t *r, int go)
{
    int i = sub == &weak[1];
    assert_ptr_equal(r, &sub->readers[0]);
    weak_asked[i]++;
    if (weak_busy[i])
        return 0;
    if (go) {
        weak_gone[i]++;
        sl_sub_dispose(&hub, sub);
    }
    return 1;
}
static const sl_sub_ops_t weak_ops = {.deliver = weak_deliver, .release = weak_release};

static void test_sweep_weak_readers(void **state)
{
    (void)state;
    cfg.topic_idle_ttl_ms = 1000;
    sl_topic_t *t = topic("w");
    sl_start_t st = {.kind = SL_START_NEW};
    memset(weak, 0, sizeof(weak));
    memset(weak_busy, 0, sizeof(weak_busy));
    memset(weak_gone, 0, sizeof(weak_gone));
    for (int i = 0; i < 2; i++) {
        weak[i].ops = &weak_ops;
        sl_sub_init(&hub, &weak[i], &t, &st, 1);
    }
    /* One busy: not idle, however long. */
    weak_busy[1] = 1;
    sl_hub_sweep(&hub, 10000);
    sl_hub_sweep(&hub, 20000);
    assert_int_equal(hub.ntopics, 1);
    assert_int_equal(weak_gone[0] + weak_gone[1], 0);
    /* Both free from 30000: freed 1000 later, not before (the TTL restarted). */
    weak_busy[1] = 0;
    sl_hub_sweep(&hub, 30000);
    sl_hub_sweep(&hub, 30999);
    assert_int_equal(hub.ntopics, 1);
    assert_int_equal(weak_gone[0] + weak_gone[1], 0);
    sl_hub_sweep(&hub, 31000);
    assert_int_equal(hub.ntopics, 0);
    assert_int_equal(weak_gone[0], 1);
    assert_int_equal(weak_gone[1], 1);
    assert_null(weak[0].readers);

    /* A plain reader beside a weak one keeps the topic; the weak one is never let go. */
    t = topic("p");
    sl_sub_t plain;
    memset(&plain, 0, sizeof(plain));
    plain.ops = &fake_ops;
    weak_gone[0] = 0;
    sl_sub_init(&hub, &weak[0], &t, &st, 1);
    sl_sub_init(&hub, &plain, &t, &st, 1);
    sl_hub_sweep(&hub, 40000);
    sl_hub_sweep(&hub, 50000);
    assert_int_equal(hub.ntopics, 1);
    assert_int_equal(weak_gone[0], 0);
    /* A message in the ring keeps it too, whoever reads it. */
    sl_sub_dispose(&hub, &plain);
    publish(t, "m");
    sl_hub_sweep(&hub, 60000);
    sl_hub_sweep(&hub, 70000);
    assert_int_equal(hub.ntopics, 1);
    assert_int_equal(weak_gone[0], 0);
    sl_sub_dispose(&hub, &weak[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_budget_books, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_and_topic_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_eviction_across_topics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_evictable_follows_references, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sweep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_contract, setup, teardown),
        cmocka_unit_test_setup_teardown(test_holes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_ranges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_ranges_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sweep_weak_readers, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
