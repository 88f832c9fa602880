/*
 * Unit tests of the topic log: ring bounds and arithmetic, message refcounts and budget
 * accounting, reader start points, overflow policies and lag limits, ids and names.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/budget.h"
#include "core/hub.h"
#include "core/rules.h"
#include "core/topic.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static sl_topic_conf_t conf(uint64_t max_messages)
{
    sl_topic_conf_t c;
    memset(&c, 0, sizeof(c));
    c.max_messages = max_messages;
    c.max_bytes = 1u << 30;
    c.overflow = SL_OVERFLOW_SKIP;
    c.lag_soft_ms = 1000;
    return c;
}

/* The hub's role in these tests: the publish-order list and eviction. */
static sl_list_t order;
static int evicted;

static void on_evict(sl_topic_t *t, sl_msg_t *m, sl_evict_reason_t why, void *arg)
{
    (void)t;
    (void)why;
    (void)arg;
    evicted++;
    sl_list_remove(&m->all);
    sl_msg_unref(m);
}

static uint64_t gseq;

static sl_msg_t *append(sl_topic_t *t, const char *payload, uint64_t ts)
{
    sl_msg_t *m = sl_msg_new(t, t->head_seq + 1, NULL, payload, strlen(payload));
    sl_budget_charge(m->charge);
    m->gseq = ++gseq;
    m->ts_ms = ts;
    sl_list_insert_tail(&order, &m->all);
    sl_topic_append(t, m, on_evict, NULL);
    return m;
}

static void free_topic(sl_topic_t *t)
{
    sl_topic_free(t);
}

static int setup(void **state)
{
    (void)state;
    sl_list_init(&order);
    evicted = 0;
    gseq = 0;
    return 0;
}

static void test_ring_bounds_and_arithmetic(void **state)
{
    (void)state;
    uint64_t start = sl_budget.used;
    sl_topic_conf_t c = conf(100);
    sl_topic_t *t = sl_topic_new("a", 1, &c, 0);
    char buf[32];
    for (int i = 1; i <= 5000; i++) {
        snprintf(buf, sizeof(buf), "m%d", i);
        append(t, buf, 0);
    }
    assert_int_equal(t->head_seq, 5000);
    assert_int_equal(t->count, 100);
    assert_int_equal(sl_topic_tail(t), 4901);
    assert_int_equal(evicted, 4900);
    assert_null(sl_topic_get(t, 4900));
    assert_null(sl_topic_get(t, 5001));
    for (uint64_t s = 4901; s <= 5000; s++) {
        sl_msg_t *m = sl_topic_get(t, s);
        assert_non_null(m);
        assert_int_equal(m->seq, s);
        snprintf(buf, sizeof(buf), "m%llu", (unsigned long long)s);
        assert_int_equal(m->payload_len, strlen(buf));
        assert_memory_equal(m->payload, buf, m->payload_len);
    }
    free_topic(t);
    assert_true(sl_list_empty(&order));
    assert_int_equal(sl_budget.used, start);
}

/* Lookups in a ring with holes (seqs that skip, as an external log's offsets do) against a
 * linear scan, through growth, wrap-around and eviction, with skips from 1 to millions. */
static void test_holes_lookup(void **state)
{
    (void)state;
    uint64_t start = sl_budget.used;
    sl_topic_conf_t c = conf(37);
    sl_topic_t *t = sl_topic_new("h", 1, &c, 0);
    uint64_t rnd = 12345;
    for (int i = 0; i < 2000; i++) {
        rnd = rnd * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t r = (uint32_t)(rnd >> 33);
        /* Mostly contiguous, sometimes a small skip, rarely a huge one. */
        uint64_t skip = r % 4 ? 0 : r % 64 ? r % 5 + 1 : 5000000 + r % 1000;
        if (skip)
            sl_topic_skip(t, t->head_seq + skip);
        append(t, "p", 0);
        assert_true(t->cap <= 64); /* a slot per message, none per hole */
        if (i % 50 != 0)
            continue;
        /* Every seq from below the tail to past the head, around each message. */
        for (size_t k = 0; k < t->count; k++) {
            uint64_t s0 = sl_topic_nth(t, k)->seq;
            uint64_t prev = k ? sl_topic_nth(t, k - 1)->seq : s0 - 3;
            for (uint64_t q = prev + 1; q <= s0 + 1; q++) {
                size_t lin = 0;
                while (lin < t->count && sl_topic_nth(t, lin)->seq < q)
                    lin++;
                assert_int_equal(sl_topic_index(t, q), lin);
                sl_msg_t *at = sl_topic_at(t, q);
                assert_ptr_equal(at, lin < t->count ? sl_topic_nth(t, lin) : NULL);
                sl_msg_t *g = sl_topic_get(t, q);
                assert_ptr_equal(g, at != NULL && at->seq == q ? at : NULL);
                if (q - prev > 4 && q < s0 - 2)
                    q = s0 - 2; /* a huge hole: its middle is like its ends */
            }
        }
        assert_int_equal(sl_topic_tail(t), sl_topic_nth(t, 0)->seq);
        assert_int_equal(sl_topic_nth(t, t->count - 1)->seq, t->head_seq);
    }
    free_topic(t);
    assert_true(sl_list_empty(&order));
    assert_int_equal(sl_budget.used, start);
}

/* An empty topic takes an external log's coordinates: its next message is head+1 in the given
 * epoch, and its frame says so; a topic holding messages refuses. */
static void test_rebase(void **state)
{
    (void)state;
    sl_topic_conf_t c = conf(10);
    sl_topic_t *t = sl_topic_new("r", 1, &c, 0);
    assert_int_equal(sl_topic_rebase(t, 0, 5), SL_EBUSY); /* epoch 0 is never valid */
    assert_int_equal(sl_topic_rebase(t, 0xabcdef, 41), 0);
    assert_string_equal(t->epoch_hex, "0000000000abcdef");
    sl_msg_t *m = append(t, "x", 0);
    assert_int_equal(m->seq, 42);
    assert_memory_equal(m->frame, "id: 0000000000abcdef-42\n", 24);
    assert_int_equal(sl_topic_rebase(t, 0x1234, 7), SL_EBUSY);
    assert_int_equal(t->head_seq, 42);
    /* Emptied by eviction, it may be renumbered again (a lossy topic restarting elsewhere). */
    sl_msg_t *old = sl_topic_pop_tail(t);
    sl_list_remove(&old->all);
    sl_msg_unref(old);
    assert_int_equal(sl_topic_rebase(t, 0x1234, 99), 0);
    assert_int_equal(append(t, "y", 0)->seq, 100);
    free_topic(t);
}

/* The id line is written without sprintf: the same bytes as "%016" PRIx64 "-%" PRIu64. */
static void test_id_line_digits(void **state)
{
    (void)state;
    sl_topic_conf_t c = conf(10);
    sl_topic_t *t = sl_topic_new("d", 1, &c, 0);
    const uint64_t epochs[] = {1, 0xfedcba9876543210u, UINT64_MAX};
    const uint64_t seqs[] = {1, 9, 10, 1234567890123u, UINT64_MAX - 1, UINT64_MAX};
    for (size_t e = 0; e < sizeof(epochs) / sizeof(epochs[0]); e++) {
        for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
            t->epoch = epochs[e];
            sl_msg_t *m = sl_msg_new(t, seqs[i], NULL, "p", 1);
            sl_budget_charge(m->charge);
            char want[64];
            int n = snprintf(want, sizeof(want), "id: %016" PRIx64 "-%" PRIu64 "\ndata: p\n\n",
                             epochs[e], seqs[i]);
            assert_int_equal(m->frame_len, (size_t)n);
            assert_memory_equal(m->frame, want, (size_t)n);
            assert_int_equal(m->id_line_len, (size_t)(strchr(want, '\n') - want + 1));
            sl_msg_unref(m);
        }
    }
    free_topic(t);
}

static void test_max_bytes_keeps_newest(void **state)
{
    (void)state;
    sl_topic_conf_t c = conf(1000);
    c.max_bytes = 10;
    sl_topic_t *t = sl_topic_new("b", 1, &c, 0);
    append(t, "12345", 0);
    append(t, "12345", 0);
    assert_int_equal(t->count, 2);
    append(t, "1", 0);
    assert_int_equal(t->count, 2); /* 5 + 1 bytes; the oldest went */
    assert_int_equal(sl_topic_tail(t), 2);
    append(t, "this one is longer than max_bytes", 0);
    assert_int_equal(t->count, 1); /* the newest always stays */
    assert_int_equal(t->head_seq, 4);
    free_topic(t);
}

static void test_refcount_outlives_eviction(void **state)
{
    (void)state;
    uint64_t start = sl_budget.used;
    sl_topic_conf_t c = conf(1);
    sl_topic_t *t = sl_topic_new("c", 1, &c, 0);
    sl_msg_t *m = append(t, "held", 0);
    sl_msg_ref(m); /* an in-flight write */
    append(t, "next", 0);
    assert_int_equal(evicted, 1);
    assert_null(m->topic);
    assert_int_equal(m->refs, 1);
    assert_memory_equal(m->payload, "held", 4);
    assert_true(sl_budget.used > start);
    sl_msg_unref(m);
    free_topic(t);
    assert_int_equal(sl_budget.used, start);
}

static void test_reader_start_points(void **state)
{
    (void)state;
    sl_topic_conf_t c = conf(10);
    sl_topic_t *t = sl_topic_new("d", 1, &c, 0);
    for (int i = 0; i < 15; i++)
        append(t, "x", 0); /* retains 6..15 */
    sl_sub_t sub;
    memset(&sub, 0, sizeof(sub));
    sl_reader_t r;
    memset(&r, 0, sizeof(r));
    sl_start_t st = {.kind = SL_START_NEW};
    sl_reader_attach(&r, &sub, t, &st, 1);
    assert_int_equal(r.next, 16);
    assert_int_equal(t->nreaders, 1);
    sl_reader_detach(&r);
    assert_int_equal(t->nreaders, 0);
    sl_reader_detach(&r); /* harmless twice */

    st.kind = SL_START_OLDEST;
    sl_reader_attach(&r, &sub, t, &st, 1);
    assert_int_equal(r.next, 6);
    sl_reader_detach(&r);

    st = (sl_start_t){.kind = SL_START_SINCE, .epoch = t->epoch, .seq = 9};
    sl_reader_attach(&r, &sub, t, &st, 1);
    assert_int_equal(r.next, 10);
    assert_int_equal(r.mark, SL_MARK_NONE);
    sl_reader_detach(&r);

    st.seq = 15; /* the head: new messages only */
    sl_reader_attach(&r, &sub, t, &st, 1);
    assert_int_equal(r.next, 16);
    assert_int_equal(r.mark, SL_MARK_NONE);
    sl_reader_detach(&r);

    st.seq = 99; /* beyond head: never issued by this log, a reset */
    sl_reader_attach(&r, &sub, t, &st, 1);
    assert_int_equal(r.mark, SL_MARK_RESET);
    assert_true(r.ahead);
    assert_int_equal(r.next, 6);
    sl_reader_detach(&r);

    st.epoch = t->epoch ^ 1; /* another log */
    sl_reader_attach(&r, &sub, t, &st, 1);
    assert_int_equal(r.mark, SL_MARK_RESET);
    assert_int_equal(r.next, 6);
    sl_reader_detach(&r);

    /* Past retention: the check applies the policy with an exact gap. */
    st = (sl_start_t){.kind = SL_START_SINCE, .epoch = t->epoch, .seq = 2};
    sl_reader_attach(&r, &sub, t, &st, 1);
    assert_int_equal(r.next, 3);
    sl_lag_reason_t why;
    uint64_t missed;
    assert_int_equal(sl_reader_check(&r, 0, 1, &why, &missed), SL_CHECK_OK);
    assert_int_equal(why, SL_LAG_EVICTED);
    assert_int_equal(missed, 3);
    assert_int_equal(r.mark, SL_MARK_GAP);
    assert_int_equal(r.gap_from, 3);
    assert_int_equal(r.gap_to, 5);
    assert_int_equal(r.gap_missed, 3);
    assert_int_equal(r.next, 6);
    sl_reader_detach(&r);

    /* The same under disconnect. */
    t->conf.overflow = SL_OVERFLOW_DISCONNECT;
    memset(&r, 0, sizeof(r));
    sl_reader_attach(&r, &sub, t, &st, 1);
    assert_int_equal(sl_reader_check(&r, 0, 1, &why, &missed), SL_CHECK_OVERFLOW);
    assert_int_equal(why, SL_LAG_EVICTED);
    assert_int_equal(missed, 3);
    sl_reader_detach(&r);
    free_topic(t);
}

static void test_gseq_resume(void **state)
{
    (void)state;
    sl_topic_conf_t c = conf(4);
    /* Two topics published alternately: a gets odd gseqs, b even ones. */
    sl_topic_t *a = sl_topic_new("a", 1, &c, 0);
    sl_topic_t *b = sl_topic_new("b", 1, &c, 0);
    for (int i = 0; i < 3; i++) {
        append(a, "a", 0);
        append(b, "b", 0);
    }
    sl_sub_t sub;
    memset(&sub, 0, sizeof(sub));
    sl_reader_t ra, rb;
    memset(&ra, 0, sizeof(ra));
    memset(&rb, 0, sizeof(rb));
    sl_start_t st = {.kind = SL_START_GSEQ, .epoch = 7, .seq = 3}; /* a's 2nd message */
    assert_int_equal(sl_reader_attach(&ra, &sub, a, &st, 7), 0);
    assert_int_equal(sl_reader_attach(&rb, &sub, b, &st, 7), 0);
    assert_int_equal(ra.next, 3); /* gseq 5 */
    assert_int_equal(rb.next, 2); /* gseq 4 */
    sl_reader_detach(&ra);
    sl_reader_detach(&rb);

    /* Another stream epoch: reset. */
    st.epoch = 8;
    sl_reader_attach(&ra, &sub, a, &st, 7);
    assert_int_equal(ra.mark, SL_MARK_RESET);
    sl_reader_detach(&ra);

    /* After eviction: a holds 4 of its 6 messages (gseqs 5,7,9,11 after 3 more). */
    for (int i = 0; i < 3; i++)
        append(a, "a", 0);
    assert_int_equal(sl_topic_tail(a), 3);
    st = (sl_start_t){.kind = SL_START_GSEQ, .epoch = 7, .seq = 1};
    memset(&ra, 0, sizeof(ra));
    assert_int_equal(sl_reader_attach(&ra, &sub, a, &st, 7), 1);
    assert_int_equal(ra.mark, SL_MARK_GAP);
    assert_int_equal(ra.gap_to, 2);
    assert_false(ra.gap_from_known); /* gseq 1 is after a's creation at 0 */
    sl_reader_detach(&ra);

    /* A topic created after the client's position: the whole prefix is known missed. */
    sl_topic_t *late = sl_topic_new("late", 4, &c, 100);
    gseq = 100;
    for (int i = 0; i < 6; i++)
        append(late, "l", 0);
    memset(&ra, 0, sizeof(ra));
    st.seq = 50;
    assert_int_equal(sl_reader_attach(&ra, &sub, late, &st, 7), 1);
    assert_true(ra.gap_from_known);
    assert_int_equal(ra.gap_from, 1);
    assert_int_equal(ra.gap_to, 2);
    assert_int_equal(ra.gap_missed, 2);
    sl_reader_detach(&ra);
    free_topic(a);
    free_topic(b);
    free_topic(late);
}

static void test_lag_limits(void **state)
{
    (void)state;
    sl_topic_conf_t c = conf(1000);
    sl_topic_t *t = sl_topic_new("lag", 3, &c, 0);
    sl_sub_t sub;
    memset(&sub, 0, sizeof(sub));
    sl_reader_t r;
    memset(&r, 0, sizeof(r));
    sl_start_t st = {.kind = SL_START_OLDEST};
    sl_reader_attach(&r, &sub, t, &st, 1);
    for (int i = 0; i < 10; i++)
        append(t, "0123456789", 100); /* 10 messages of 10 bytes at t=100 */
    sl_lag_reason_t why;
    uint64_t missed;

    /* No limits: nothing happens. */
    assert_int_equal(sl_reader_check(&r, 100, 1, &why, &missed), SL_CHECK_OK);
    assert_int_equal(missed, 0);
    assert_int_equal(r.next, 1);

    /* Hard messages: 10 behind > 5: skip to the newest with a gap over 1..9. */
    t->conf.lag_hard_messages = 5;
    assert_int_equal(sl_reader_check(&r, 100, 1, &why, &missed), SL_CHECK_OK);
    assert_int_equal(why, SL_LAG_HARD);
    assert_int_equal(missed, 9);
    assert_int_equal(r.next, 10);
    assert_int_equal(r.gap_from, 1);
    assert_int_equal(r.gap_to, 9);

    /* A second gap before the first was written widens it. */
    for (int i = 0; i < 10; i++)
        append(t, "0123456789", 100);
    assert_int_equal(sl_reader_check(&r, 100, 1, &why, &missed), SL_CHECK_OK);
    assert_int_equal(r.gap_from, 1);
    assert_int_equal(r.gap_to, 19);
    assert_int_equal(r.gap_missed, 19); /* 1..19 */
    assert_int_equal(r.mark_reason, SL_LAG_HARD);
    t->conf.lag_hard_messages = 0;
    r.mark = SL_MARK_NONE;

    /* Hard bytes: 11 messages of 10 bytes behind > 50. */
    r.next = 10;
    t->conf.lag_hard_bytes = 50;
    assert_int_equal(sl_reader_check(&r, 100, 1, &why, &missed), SL_CHECK_OK);
    assert_int_equal(why, SL_LAG_HARD);
    assert_int_equal(r.next, 20);
    t->conf.lag_hard_bytes = 0;
    r.mark = SL_MARK_NONE;

    /* Soft: acts only once held for lag_soft_ms. */
    r.next = 10;
    t->conf.lag_soft_messages = 3;
    t->conf.lag_soft_ms = 1000;
    assert_int_equal(sl_reader_check(&r, 5000, 1, &why, &missed), SL_CHECK_OK);
    assert_int_equal(missed, 0);
    assert_int_equal(r.soft_since_ms, 5000);
    assert_int_equal(sl_reader_check(&r, 5999, 1, &why, &missed), SL_CHECK_OK);
    assert_int_equal(missed, 0);
    assert_int_equal(r.next, 10);
    assert_int_equal(sl_reader_check(&r, 6000, 1, &why, &missed), SL_CHECK_OK);
    assert_int_equal(why, SL_LAG_SOFT);
    assert_int_equal(missed, 10);
    assert_int_equal(r.next, 20);
    /* Dropping under the soft limit resets its clock. */
    assert_int_equal(r.soft_since_ms, 0);
    t->conf.lag_soft_messages = 0;
    r.mark = SL_MARK_NONE;

    /* Age: the oldest undelivered message is older than lag_max_age. */
    r.next = 15;
    t->conf.lag_max_age_ms = 500;
    assert_int_equal(sl_reader_check(&r, 600, 1, &why, &missed), SL_CHECK_OK);
    assert_int_equal(missed, 0);
    assert_int_equal(sl_reader_check(&r, 601, 1, &why, &missed), SL_CHECK_OK);
    assert_int_equal(why, SL_LAG_AGE);
    assert_int_equal(r.next, 20);

    /* A reader with no write in flight is not judged by lag, only by eviction. */
    r.mark = SL_MARK_NONE;
    r.next = 12;
    t->conf.lag_hard_messages = 2;
    assert_int_equal(sl_reader_check(&r, 100, 0, &why, &missed), SL_CHECK_OK);
    assert_int_equal(missed, 0);
    assert_int_equal(r.next, 12);
    assert_int_equal(r.mark, SL_MARK_NONE);

    /* Disconnect: the same limit asks for an overflow and leaves the cursor. */
    r.mark = SL_MARK_NONE;
    r.next = 12;
    t->conf.lag_max_age_ms = 0;
    t->conf.lag_hard_messages = 2;
    t->conf.overflow = SL_OVERFLOW_DISCONNECT;
    assert_int_equal(sl_reader_check(&r, 100, 1, &why, &missed), SL_CHECK_OVERFLOW);
    assert_int_equal(why, SL_LAG_HARD);
    assert_int_equal(missed, 9);
    assert_int_equal(r.next, 12);
    sl_reader_detach(&r);
    free_topic(t);
}

static void test_ids(void **state)
{
    (void)state;
    char buf[SL_ID_MAX];
    uint64_t e, s;
    size_t n = sl_id_format(buf, 0x9f2c4a1b7d3e5f60ull, 1042);
    assert_string_equal(buf, "9f2c4a1b7d3e5f60-1042");
    assert_int_equal(n, strlen(buf));
    assert_int_equal(sl_id_parse(buf, n, 0, &e, &s), 0);
    assert_true(e == 0x9f2c4a1b7d3e5f60ull);
    assert_int_equal(s, 1042);
    assert_int_equal(sl_id_parse("9F2C4A1B7D3E5F60-7", 18, 0, &e, &s), 0);
    assert_true(e == 0x9f2c4a1b7d3e5f60ull);
    const char *bad[] = {"",
                         "9f2c4a1b7d3e5f60",
                         "9f2c4a1b7d3e5f60-",
                         "9f2c4a1b7d3e5f6-12",
                         "9f2c4a1b7d3e5f60_12",
                         "9f2c4a1b7d3e5g60-12",
                         "9f2c4a1b7d3e5f60-1x",
                         "9f2c4a1b7d3e5f60--1",
                         "9f2c4a1b7d3e5f60-99999999999999999999",
                         "9f2c4a1b7d3e5f60-12:chat"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sl_id_parse(bad[i], strlen(bad[i]), 0, &e, &s), SL_EBADID);
    assert_int_equal(sl_id_parse("9f2c4a1b7d3e5f60-12:chat/1", 26, 1, &e, &s), 0);
    assert_int_equal(s, 12);
    assert_int_equal(sl_id_parse("9f2c4a1b7d3e5f60-12:bad//t", 26, 1, &e, &s), SL_EBADID);
    assert_int_equal(sl_id_parse("9f2c4a1b7d3e5f60-18446744073709551615", 37, 0, &e, &s), 0);
    assert_true(s == UINT64_MAX);
}

static void test_names(void **state)
{
    (void)state;
    assert_true(sl_topic_name_valid("chat/42", 7, 256));
    assert_true(sl_topic_name_valid("a.b_c~d-e", 9, 256));
    assert_false(sl_topic_name_valid("", 0, 256));
    assert_false(sl_topic_name_valid("/a", 2, 256));
    assert_false(sl_topic_name_valid("a/", 2, 256));
    assert_false(sl_topic_name_valid("a//b", 4, 256));
    assert_false(sl_topic_name_valid("a b", 3, 256));
    assert_false(sl_topic_name_valid("a:b", 3, 256));
    assert_false(sl_topic_name_valid("a%b", 3, 256));
    assert_true(sl_topic_name_valid("abcd", 4, 4));
    assert_false(sl_topic_name_valid("abcde", 5, 4));
    assert_true(sl_rule_event("price.update:v2", 15).status == 0);
    assert_false(sl_rule_event("", 0).status == 0);
    assert_false(sl_rule_event("a\nb", 3).status == 0);
    assert_false(sl_rule_event("a b", 3).status == 0);
    char long_name[65];
    memset(long_name, 'e', sizeof(long_name));
    assert_true(sl_rule_event(long_name, 64).status == 0);
    assert_false(sl_rule_event(long_name, 65).status == 0);

    /* The sluice. namespace is sluice's own, in any case; only the prefix is reserved. */
    sl_verdict_t v;
    assert_string_equal((v = sl_rule_event("sluice.reset", 12)).code, "reserved_event");
    assert_int_equal(v.status, 400);
    assert_non_null(v.message);
    assert_string_equal((v = sl_rule_event("SLUICE.gap", 10)).code, "reserved_event");
    assert_string_equal((v = sl_rule_event("sluice.", 7)).code, "reserved_event");
    assert_int_equal(sl_rule_event("sluice", 6).status, 0);
    assert_int_equal(sl_rule_event("sluicex.gap", 11).status, 0);
    assert_int_equal(sl_rule_event("my.sluice.gap", 13).status, 0);
    assert_false(sl_rule_event("sluice.gap", 10).status == 0);
    /* Nothing the SSE event line cannot carry, and a check before the namespace. */
    static const char *const bad[] = {"a\rb", "a\nb", "a\r\nb", " a", "a:\x7f", "\xc3\xa9"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_string_equal((v = sl_rule_event(bad[i], strlen(bad[i]))).code, "bad_event");
    }
    assert_string_equal((v = sl_rule_event("sluice.a\0b", 9)).code, "bad_event");
    assert_string_equal((v = sl_rule_event("sluice.a\nb", 9)).code, "bad_event");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_ring_bounds_and_arithmetic, setup),
        cmocka_unit_test_setup(test_rebase, setup),
        cmocka_unit_test_setup(test_id_line_digits, setup),
        cmocka_unit_test_setup(test_holes_lookup, setup),
        cmocka_unit_test_setup(test_max_bytes_keeps_newest, setup),
        cmocka_unit_test_setup(test_refcount_outlives_eviction, setup),
        cmocka_unit_test_setup(test_reader_start_points, setup),
        cmocka_unit_test_setup(test_gseq_resume, setup),
        cmocka_unit_test_setup(test_lag_limits, setup),
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
