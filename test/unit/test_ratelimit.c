/*
 * Unit tests of the token buckets: burst then refill at the rate, all-or-nothing over the
 * buckets, requests larger than a burst, independent keys, the sweep of idle entries, and the
 * cap on tracked keys. Time is passed in, so nothing here sleeps.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/ratelimit.h"
#include "lib/budget.h"

#include <string.h>

static sl_rl_key_t key(uint8_t kind, uint8_t b)
{
    sl_rl_key_t k = {.kind = kind};
    memset(k.k, b, sizeof(k.k));
    return k;
}

static void test_burst_and_refill(void **state)
{
    (void)state;
    sl_rl_rate_t rates[SL_RL__COUNT] = {{10, 5}, {0, 0}, {0, 0}};
    sl_ratelimit_t rl;
    sl_rl_init(&rl, rates, 100);
    sl_rl_key_t a = key('s', 1), b = key('i', 1);
    double one[SL_RL__COUNT] = {1, 100, 1};
    for (int i = 0; i < 5; i++)
        assert_int_equal(sl_rl_take(&rl, &a, one, 1000), 0);
    uint64_t ms = sl_rl_take(&rl, &a, one, 1000);
    assert_int_equal(ms, 100); /* one token at 10/s */
    assert_int_equal(sl_rl_take(&rl, &a, one, 1050), 50);
    assert_int_equal(sl_rl_take(&rl, &a, one, 1100), 0);
    /* another key has its own bucket; same bytes, other kind */
    assert_int_equal(sl_rl_take(&rl, &b, one, 1100), 0);
    /* more than the burst never passes */
    double six[SL_RL__COUNT] = {6, 0, 0};
    assert_int_equal(sl_rl_take(&rl, &b, six, 1100), UINT64_MAX);
    /* long idle refills to the burst, not beyond */
    double five[SL_RL__COUNT] = {5, 0, 0};
    assert_int_equal(sl_rl_take(&rl, &a, five, 100000), 0);
    assert_int_not_equal(sl_rl_take(&rl, &a, one, 100000), 0);
    sl_rl_dispose(&rl);
}

static void test_all_or_nothing(void **state)
{
    (void)state;
    sl_rl_rate_t rates[SL_RL__COUNT] = {{100, 100}, {1000, 1000}, {0, 0}};
    sl_ratelimit_t rl;
    sl_rl_init(&rl, rates, 100);
    sl_rl_key_t a = key('s', 2);
    double big[SL_RL__COUNT] = {1, 800, 0};
    assert_int_equal(sl_rl_take(&rl, &a, big, 0), 0);
    /* 200 bytes left: refused, and the message token is not taken either */
    assert_int_equal(sl_rl_take(&rl, &a, big, 0), 600);
    for (int i = 0; i < 99; i++) {
        double small[SL_RL__COUNT] = {1, 1, 0};
        assert_int_equal(sl_rl_take(&rl, &a, small, 0), 0);
    }
    double small[SL_RL__COUNT] = {1, 1, 0};
    assert_int_equal(sl_rl_take(&rl, &a, small, 0), 10);
    sl_rl_dispose(&rl);
}

static void test_sweep_and_cap(void **state)
{
    (void)state;
    uint64_t before = sl_budget.used;
    sl_rl_rate_t rates[SL_RL__COUNT] = {{0, 0}, {0, 0}, {1, 1}};
    sl_ratelimit_t rl;
    sl_rl_init(&rl, rates, 3);
    assert_true(sl_rl_enabled(&rl));
    double c[SL_RL__COUNT] = {0, 0, 1};
    for (uint8_t i = 0; i < 3; i++) {
        sl_rl_key_t k = key('i', i);
        assert_int_equal(sl_rl_take(&rl, &k, c, 0), 0);
    }
    assert_int_equal(rl.n, 3);
    /* key 0 used again: key 1 is now the least recently used, and goes for key 9 */
    sl_rl_key_t k0 = key('i', 0), k1 = key('i', 1), k9 = key('i', 9);
    assert_int_not_equal(sl_rl_take(&rl, &k0, c, 10), 0);
    assert_int_equal(sl_rl_take(&rl, &k9, c, 10), 0);
    assert_int_equal(rl.n, 3);
    /* key 1 was forgotten: a fresh bucket */
    assert_int_equal(sl_rl_take(&rl, &k1, c, 20), 0);
    assert_int_equal(rl.n, 3);
    /* a second later every bucket is full again: the sweep drops them all */
    sl_rl_sweep(&rl, 5000);
    assert_int_equal(rl.n, 0);
    assert_int_equal(sl_budget.used, before);
    /* nothing wanted of a limited bucket: no entry is made */
    double none[SL_RL__COUNT] = {1, 1, 0};
    assert_int_equal(sl_rl_take(&rl, &k1, none, 6000), 0);
    assert_int_equal(rl.n, 0);
    sl_rl_dispose(&rl);
}

int main(void)
{
    sl_budget_set_limit(1 << 30, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_and_refill),
        cmocka_unit_test(test_all_or_nothing),
        cmocka_unit_test(test_sweep_and_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
