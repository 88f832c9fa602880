/*
 * Unit tests of the circuit breaker (its state table) and of the hard-capped registry: its
 * invariants checked after every step of random acquire/release/sweep sequences.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/budget.h"
#include "lib/util.h"
#include "sink/breaker.h"

#include <stdio.h>
#include <string.h>

static const sl_breaker_conf_t conf = {
    .failures = 3, .open_ms = 1000, .open_max_ms = 8000, .probe_timeout = 500};

static void test_breaker_table(void **state)
{
    (void)state;
    sl_breaker_t b;
    sl_breaker_init(&b, &conf);
    uint64_t t = 100;
    assert_true(sl_breaker_allow(&b, &conf, t));
    assert_int_equal(sl_breaker_next_ms(&b, &conf), 0);
    /* A success between failures resets the run. */
    sl_breaker_report(&b, &conf, 0, t);
    sl_breaker_report(&b, &conf, 0, t);
    sl_breaker_report(&b, &conf, 1, t);
    sl_breaker_report(&b, &conf, 0, t);
    sl_breaker_report(&b, &conf, 0, t);
    assert_int_equal(b.state, SL_BREAKER_CLOSED);
    sl_breaker_report(&b, &conf, 0, t);
    assert_int_equal(b.state, SL_BREAKER_OPEN);
    assert_int_equal(sl_breaker_next_ms(&b, &conf), t + 1000);
    assert_false(sl_breaker_allow(&b, &conf, t + 999));
    /* Half-open: one probe, nothing else while it is out. */
    assert_true(sl_breaker_allow(&b, &conf, t + 1000));
    assert_int_equal(b.state, SL_BREAKER_HALF_OPEN);
    assert_false(sl_breaker_allow(&b, &conf, t + 1001));
    assert_int_equal(sl_breaker_next_ms(&b, &conf), t + 1500);
    /* A failed probe reopens it for twice as long, up to the maximum. */
    sl_breaker_report(&b, &conf, 0, t + 1100);
    assert_int_equal(b.state, SL_BREAKER_OPEN);
    assert_int_equal(b.until_ms, t + 1100 + 2000);
    uint64_t now = t + 3100;
    uint64_t expect[] = {4000, 8000, 8000};
    for (int i = 0; i < 3; i++) {
        assert_true(sl_breaker_allow(&b, &conf, now));
        sl_breaker_report(&b, &conf, 0, now);
        assert_int_equal(b.until_ms - now, expect[i]);
        now = b.until_ms;
    }
    /* A probe that never reports counts as failed once probe_timeout passed. */
    assert_true(sl_breaker_allow(&b, &conf, now));
    assert_false(sl_breaker_allow(&b, &conf, now + 499));
    assert_false(sl_breaker_allow(&b, &conf, now + 500));
    assert_int_equal(b.state, SL_BREAKER_OPEN);
    now = b.until_ms;
    /* A successful probe closes it and resets the open period. */
    assert_true(sl_breaker_allow(&b, &conf, now));
    sl_breaker_report(&b, &conf, 1, now);
    assert_int_equal(b.state, SL_BREAKER_CLOSED);
    assert_int_equal(b.open_ms, 1000);
    assert_string_equal(sl_breaker_state_name(b.state), "closed");
}

static void test_breaker_ratio(void **state)
{
    (void)state;
    /* Alternating outcomes never make 3 in a row, but 50 % of 20 opens it. */
    sl_breaker_t b;
    sl_breaker_init(&b, &conf);
    int i;
    for (i = 0; i < 40 && b.state == SL_BREAKER_CLOSED; i++)
        sl_breaker_report(&b, &conf, i % 2, 0);
    assert_int_equal(b.state, SL_BREAKER_OPEN);
    assert_int_equal(i, 21); /* judged when a failure arrives: the 21st report */
    /* 1 failure in 3 (below half) never opens it. */
    sl_breaker_init(&b, &conf);
    for (i = 0; i < 200; i++)
        sl_breaker_report(&b, &conf, i % 3 != 0, 0);
    assert_int_equal(b.state, SL_BREAKER_CLOSED);
}

static void check_registry(const sl_breg_t *r)
{
    size_t n = 0;
    const sl_list_t *it;
    uint64_t prev = 0;
    sl_list_each(it, &r->lru)
    {
        const sl_breg_entry_t *e = sl_container_of(it, const sl_breg_entry_t, lru);
        assert_true(e->last_used_ms >= prev); /* LRU order */
        prev = e->last_used_ms;
        n++;
    }
    assert_int_equal(n, r->n);
    assert_true(r->n <= r->cap); /* the cap is hard */
    size_t hashed = 0;
    for (size_t i = 0; i < r->nbuckets; i++)
        for (const sl_breg_entry_t *e = r->buckets[i]; e != NULL; e = e->hnext)
            hashed++;
    assert_int_equal(hashed, r->n);
}

#define KEYS 64
#define CAP 8

static void test_registry_random(void **state)
{
    (void)state;
    uint64_t used = sl_budget.used;
    sl_breg_t r;
    sl_breg_init(&r, CAP, 1000, &conf);
    /* Holders: which entry each of 32 streams holds (NULL: none), and by which key. */
    sl_breg_entry_t *held[32] = {0};
    int heldkey[32];
    uint64_t now = 1;
    uint64_t seed = 12345;
    for (int step = 0; step < 200000; step++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        unsigned op = (unsigned)(seed >> 33) % 10, s = (unsigned)(seed >> 40) % 32;
        now += (seed >> 50) % 50;
        if (op < 5 && held[s] == NULL) {
            char key[32];
            int k = (int)((seed >> 20) % KEYS);
            int len = snprintf(key, sizeof(key), "http://h%d:80", k);
            size_t busy = 0;
            for (int i = 0; i < 32; i++)
                busy += held[i] != NULL;
            /* Entries with users, distinct. */
            size_t distinct = 0;
            sl_list_t *it;
            int exists = 0;
            sl_list_each(it, &r.lru)
            {
                sl_breg_entry_t *e = sl_container_of(it, sl_breg_entry_t, lru);
                distinct += e->users > 0;
                exists |= strcmp(e->key, key) == 0;
            }
            sl_breg_entry_t *e = sl_breg_acquire(&r, key, (size_t)len, now);
            if (e == NULL) {
                /* Refused only when it is new and every slot is busy. */
                assert_false(exists);
                assert_int_equal(distinct, CAP);
            } else {
                assert_string_equal(e->key, key);
                held[s] = e;
                heldkey[s] = k;
                /* A breaker someone uses was never evicted: it is still the held one. */
                for (int i = 0; i < 32; i++)
                    if (held[i] != NULL && i != (int)s && heldkey[i] == k)
                        assert_ptr_equal(held[i], e);
                if (e->users == 1 && (seed >> 7) % 2)
                    sl_breaker_report(&e->b, &conf, 0, now); /* some open ones */
            }
            (void)busy;
        } else if (op < 9 && held[s] != NULL) {
            sl_breg_release(&r, held[s], now);
            held[s] = NULL;
        } else if (op == 9) {
            sl_breg_sweep(&r, now);
            /* Nothing idle past the TTL survives a sweep; nothing in use is removed. */
            sl_list_t *it;
            sl_list_each(it, &r.lru)
            {
                sl_breg_entry_t *e = sl_container_of(it, sl_breg_entry_t, lru);
                assert_true(e->users > 0 || now - e->last_used_ms < 1000);
            }
        }
        check_registry(&r);
        for (int i = 0; i < 32; i++) {
            if (held[i] != NULL) {
                assert_true(held[i]->users > 0);
            }
        }
    }
    assert_true(r.evictions > 0);
    assert_true(r.full > 0);
    for (int i = 0; i < 32; i++)
        if (held[i] != NULL)
            sl_breg_release(&r, held[i], now);
    /* Everything idle: the TTL empties the registry, open breakers included. */
    assert_true(sl_breg_sweep(&r, now + 1000) > 0);
    assert_int_equal(r.n, 0);
    sl_breg_dispose(&r);
    assert_int_equal(sl_budget.used, used);
}

static void test_registry_evicts_open_lru(void **state)
{
    (void)state;
    sl_breg_t r;
    sl_breg_init(&r, 2, 100000, &conf);
    sl_breg_entry_t *a = sl_breg_acquire(&r, "a", 1, 1);
    for (int i = 0; i < 3; i++)
        sl_breaker_report(&a->b, &conf, 0, 1);
    assert_int_equal(a->b.state, SL_BREAKER_OPEN);
    sl_breg_release(&r, a, 2);
    sl_breg_entry_t *b = sl_breg_acquire(&r, "b", 1, 3);
    sl_breg_release(&r, b, 4);
    /* "a" (open, idle, least recently used) goes; "b" stays. */
    sl_breg_entry_t *c = sl_breg_acquire(&r, "c", 1, 5);
    assert_non_null(c);
    assert_int_equal(r.evictions, 1);
    size_t by[3];
    sl_breg_count(&r, by);
    assert_int_equal(by[SL_BREAKER_OPEN], 0);
    assert_int_equal(by[SL_BREAKER_CLOSED], 2);
    /* Both busy now: a third endpoint waits. */
    sl_breg_entry_t *b2 = sl_breg_acquire(&r, "b", 1, 6);
    assert_ptr_equal(b2, b);
    assert_null(sl_breg_acquire(&r, "d", 1, 7));
    assert_int_equal(r.full, 1);
    assert_int_equal(sl_breg_release(&r, b2, 8), 1);
    assert_non_null(sl_breg_acquire(&r, "d", 1, 9));
    sl_breg_dispose(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_breaker_table),
        cmocka_unit_test(test_breaker_ratio),
        cmocka_unit_test(test_registry_random),
        cmocka_unit_test(test_registry_evicts_open_lru),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
