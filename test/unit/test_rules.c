/*
 * Unit tests of the publish rules (core/rules.c) that HTTP and WebSocket share: each check's
 * status, code and counted reason, the NDJSON split (lines, CRLF, empty lines, the batch and
 * line limits, the reserved prefix), and the acknowledged-id body.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/metrics.h"
#include "core/rules.h"

#include <stdlib.h>
#include <string.h>

static sl_config_t cfg;

static int setup(void **state)
{
    (void)state;
    sl_config_init(&cfg);
    cfg.max_message_bytes = 8;
    cfg.max_batch_messages = 3;
    cfg.max_topic_name = 16;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sl_config_dispose(&cfg);
    return 0;
}

static void expect(sl_verdict_t v, int status, const char *code, int reason)
{
    assert_int_equal(v.status, status);
    if (status == 0)
        return;
    assert_string_equal(v.code, code);
    assert_non_null(v.message);
    assert_int_equal(v.reason, reason);
}

static void test_checks(void **state)
{
    (void)state;
    expect(sl_rule_topic(&cfg, "chat/42", 7), 0, NULL, 0);
    expect(sl_rule_topic(&cfg, NULL, 0), 400, "bad_topic", SL_REJECT_PUB_BAD_TOPIC);
    expect(sl_rule_topic(&cfg, "a//b", 4), 400, "bad_topic", SL_REJECT_PUB_BAD_TOPIC);
    expect(sl_rule_topic(&cfg, "aaaaaaaaaaaaaaaaa", 17), 400, "bad_topic", SL_REJECT_PUB_BAD_TOPIC);
    expect(sl_rule_event("greet", 5), 0, NULL, 0);
    expect(sl_rule_event("sluice.reset", 12), 400, "reserved_event", SL_REJECT_PUB_CTL_EVENT);
    expect(sl_rule_event("a b", 3), 400, "bad_event", SL_REJECT_PUB_BAD_EVENT);
    expect(sl_rule_payload(&cfg, "12345678", 8), 0, NULL, 0);
    expect(sl_rule_payload(&cfg, "123456789", 9), 413, "too_large", SL_REJECT_PUB_TOO_LARGE);
    expect(sl_rule_payload(&cfg, "{\"sluice\":", 10), 413, "too_large",
           SL_REJECT_PUB_TOO_LARGE); /* size first */
    cfg.max_message_bytes = 64;
    expect(sl_rule_payload(&cfg, "{\"sluice\":1}", 12), 400, "reserved_payload",
           SL_REJECT_PUB_RESERVED);
    expect(sl_rule_payload(&cfg, " {\"sluice\":1}", 13), 0, NULL, 0);
}

static void test_ndjson(void **state)
{
    (void)state;
    const char **p;
    size_t *l, n;
    const char body[] = "a\r\n\nbc\n\r\nd";
    expect(sl_rule_ndjson(&cfg, body, strlen(body), &p, &l, &n), 0, NULL, 0);
    assert_int_equal(n, 3);
    assert_int_equal(l[0], 1);
    assert_memory_equal(p[0], "a", 1);
    assert_int_equal(l[1], 2);
    assert_memory_equal(p[1], "bc", 2);
    assert_int_equal(l[2], 1);
    assert_memory_equal(p[2], "d", 1);
    free(p);
    free(l);
    const char four[] = "1\n2\n3\n4\n";
    expect(sl_rule_ndjson(&cfg, four, strlen(four), &p, &l, &n), 413, "too_many_messages",
           SL_REJECT_PUB_TOO_LARGE);
    assert_null(p);
    assert_null(l);
    /* Many empty lines are not messages: three lines among them pass. */
    char many[4096];
    memset(many, '\n', sizeof(many));
    memcpy(many + 100, "x", 1);
    memcpy(many + 2000, "y", 1);
    expect(sl_rule_ndjson(&cfg, many, sizeof(many), &p, &l, &n), 0, NULL, 0);
    assert_int_equal(n, 2);
    free(p);
    free(l);
    const char big[] = "ok\n123456789\n";
    expect(sl_rule_ndjson(&cfg, big, strlen(big), &p, &l, &n), 413, "too_large",
           SL_REJECT_PUB_TOO_LARGE);
    cfg.max_message_bytes = 64;
    const char ctl[] = "ok\n{\"sluice\":\"gap\"}\n";
    expect(sl_rule_ndjson(&cfg, ctl, strlen(ctl), &p, &l, &n), 400, "reserved_payload",
           SL_REJECT_PUB_RESERVED);
    expect(sl_rule_ndjson(&cfg, "\n\r\n", 3, &p, &l, &n), 400, "bad_request", -1);
}

static void test_ack_id(void **state)
{
    (void)state;
    uint64_t e, s;
    assert_int_equal(sl_rule_ack_id("0123456789abcdef-42\n", 20, &e, &s), 0);
    assert_true(e == 0x0123456789abcdefull && s == 42);
    const char js[] = " {\"id\":\"0123456789abcdef-7\"} ";
    assert_int_equal(sl_rule_ack_id(js, strlen(js), &e, &s), 0);
    assert_true(s == 7);
    assert_int_equal(sl_rule_ack_id("{\"id\":\"0123", 11, &e, &s), SL_EBADID);
    assert_int_equal(sl_rule_ack_id("", 0, &e, &s), SL_EBADID);
    assert_int_equal(sl_rule_ack_id("0123456789abcdef-7:t", 20, &e, &s), SL_EBADID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_checks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ndjson, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ack_id, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
