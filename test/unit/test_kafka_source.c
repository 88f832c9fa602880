/*
 * Unit tests of what the Kafka source decides without a broker: the id epoch of a partition,
 * the check of pass-through properties, and the rule that keeps publishers out of the topics
 * a source feeds.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/config.h"
#include "core/rules.h"
#include "kafka/source.h"

#include <stdio.h>
#include <string.h>

static void test_epoch(void **state)
{
    (void)state;
    uint64_t a = sl_kafka_epoch("cluster-1", "orders", 0);
    /* Stable across processes and nodes: a fixed function of its inputs. */
    assert_int_equal(a, sl_kafka_epoch("cluster-1", "orders", 0));
    assert_int_not_equal(a, 0);
    /* Each coordinate matters, and the separator keeps (ab, c) apart from (a, bc). */
    assert_int_not_equal(a, sl_kafka_epoch("cluster-1", "orders", 1));
    assert_int_not_equal(a, sl_kafka_epoch("cluster-2", "orders", 0));
    assert_int_not_equal(a, sl_kafka_epoch("cluster-1", "orders2", 0));
    assert_int_not_equal(sl_kafka_epoch("ab", "c", 0), sl_kafka_epoch("a", "bc", 0));
    assert_int_not_equal(sl_kafka_epoch("", "t1", 0), sl_kafka_epoch("", "t", 10));
}

static int load(sl_config_t *cfg, const char *text)
{
    sl_config_init(cfg);
    return sl_config_load_string(cfg, "t.ini", text, NULL);
}

static void test_check_properties(void **state)
{
    (void)state;
    sl_config_t cfg;
    const char *base = "[source \"a\"]\ntype = kafka\nbrokers = 127.0.0.1:9\nkafka_topics = x\n"
                       "topic = k/{partition}\n";
    char text[512];
    snprintf(text, sizeof(text), "%skafka.session.timeout.ms = 6000\n", base);
    assert_int_equal(load(&cfg, text), 0);
    assert_int_equal(sl_kafka_check_config(&cfg, "t.ini", NULL), 0);
    sl_config_dispose(&cfg);
    /* Only librdkafka knows its properties: an unknown one, or a bad value, is an error. */
    snprintf(text, sizeof(text), "%skafka.no.such.property = 1\nkafka.session.timeout.ms = x\n",
             base);
    assert_int_equal(load(&cfg, text), 0);
    char buf[2048] = "";
    FILE *f = fmemopen(buf, sizeof(buf), "w");
    assert_int_equal(sl_kafka_check_config(&cfg, "t.ini", f), 1); /* the first stops the source */
    fclose(f);
    assert_non_null(strstr(buf, "t.ini:1: [source \"a\"]"));
    assert_non_null(strstr(buf, "no.such.property"));
    sl_config_dispose(&cfg);
}

static void test_publish_rule(void **state)
{
    (void)state;
    sl_config_t cfg;
    assert_int_equal(load(&cfg, "[source \"a\"]\ntype = kafka\nbrokers = b:1\nkafka_topics = x\n"
                                "topic = shop/{kafka_topic}\n"
                                "[source \"b\"]\ntype = kafka\nbrokers = b:1\nkafka_topics = y\n"
                                "topic = {key}\n"),
                     0);
    sl_verdict_t v = sl_rule_publish_topic(&cfg, "shop/orders", 11);
    assert_int_equal(v.status, 409);
    assert_string_equal(v.code, "source_topic");
    assert_int_equal(sl_rule_publish_topic(&cfg, "shop/", 5).status, 409);
    assert_int_equal(sl_rule_publish_topic(&cfg, "shop", 4).status, 0);
    assert_int_equal(sl_rule_publish_topic(&cfg, "chat/1", 6).status, 0); /* {key}: no prefix */
    sl_config_dispose(&cfg);
}

static void test_lag(void **state)
{
    (void)state;
    assert_int_equal(sl_kafka_lag(100, 40), 60);
    assert_int_equal(sl_kafka_lag(100, 100), 0); /* caught up */
    assert_int_equal(sl_kafka_lag(90, 100), 0);  /* an older watermark: never negative */
    assert_int_equal(sl_kafka_lag(-1, 40), -1);  /* watermark unknown */
    assert_int_equal(sl_kafka_lag(-1001, 40), -1);
    assert_int_equal(sl_kafka_lag(100, -1), -1); /* next offset unknown */
}

static void test_retention_lost(void **state)
{
    (void)state;
    /* Resumed where it paused: nothing lost. */
    assert_int_equal(sl_kafka_retention_lost(50, 50, 200, 0), 0);
    /* A hole above the log start is compaction or transaction markers, not a loss. */
    assert_int_equal(sl_kafka_retention_lost(50, 60, 10, 0), 0);
    /* The log start passed the paused position: everything below it was removed... */
    assert_int_equal(sl_kafka_retention_lost(50, 200, 200, 0), 150);
    /* ...and only that, when the consumer restarted from the log start and found a hole. */
    assert_int_equal(sl_kafka_retention_lost(50, 230, 200, 0), 150);
    /* start = latest: the reset skipped to the end of the log, past the log start too. */
    assert_int_equal(sl_kafka_retention_lost(50, 900, 200, 1), 850);
    /* Log start unknown, or an older record still queued: no claim. */
    assert_int_equal(sl_kafka_retention_lost(50, 900, -1, 0), 0);
    assert_int_equal(sl_kafka_retention_lost(50, 40, 200, 0), 0);
    /* A log start newer than the record seen (a later query): bounded by the record. */
    assert_int_equal(sl_kafka_retention_lost(50, 120, 300, 0), 70);
}

static void test_backoff(void **state)
{
    (void)state;
    uint64_t d = sl_kafka_backoff_next(0);
    assert_int_equal(d, 1000);
    uint64_t seen[16];
    for (int i = 0; i < 16; i++) {
        seen[i] = d;
        d = sl_kafka_backoff_next(d);
    }
    assert_int_equal(seen[1], 2000);
    assert_int_equal(seen[2], 4000);
    for (int i = 1; i < 16; i++)
        assert_true(seen[i] >= seen[i - 1] && seen[i] <= 60000);
    assert_int_equal(seen[15], 60000); /* capped */
}

static void test_fetch_max_bytes(void **state)
{
    (void)state;
    /* The smallest prefetch config accepts (64 KiB) up to 4 MB: librdkafka's minimum. */
    assert_int_equal(sl_kafka_fetch_max_bytes(64u << 10), 1000000);
    assert_int_equal(sl_kafka_fetch_max_bytes(2u << 20), 1000000); /* the default prefetch */
    assert_int_equal(sl_kafka_fetch_max_bytes(4000000), 1000000);
    /* Above: a quarter, so a response cannot fill the queue by itself. */
    assert_int_equal(sl_kafka_fetch_max_bytes(64u << 20), 16u << 20);
    assert_true(sl_kafka_fetch_max_bytes(64u << 20) < (64u << 20));
    /* Capped at librdkafka's default for the largest prefetch (1 GiB). */
    assert_int_equal(sl_kafka_fetch_max_bytes(1u << 30), 52428800);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_epoch),           cmocka_unit_test(test_check_properties),
        cmocka_unit_test(test_publish_rule),    cmocka_unit_test(test_lag),
        cmocka_unit_test(test_retention_lost),  cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_fetch_max_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
