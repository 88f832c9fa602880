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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_epoch),
        cmocka_unit_test(test_check_properties),
        cmocka_unit_test(test_publish_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
