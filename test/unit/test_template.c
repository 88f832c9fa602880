/*
 * Unit tests of name templates: every placeholder, what the check refuses, rendering limits.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/template.h"

#include <string.h>

static int hdr(void *arg, const char *name, size_t len, const char **val, size_t *vlen)
{
    (void)arg;
    if (len == 4 && memcmp(name, "type", 4) == 0) {
        *val = "created";
        *vlen = 7;
        return 1;
    }
    return 0;
}

static const sl_tmpl_vars_t vars = {
    .kafka_topic = "orders",
    .kafka_topic_len = 6,
    .partition = 7,
    .key = "k-1",
    .key_len = 3,
    .node = "n1",
    .header = hdr,
};

static void test_render(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(sl_tmpl_render("shop/{kafka_topic}/{partition}", &vars, out, sizeof(out)), 13);
    assert_string_equal(out, "shop/orders/7");
    assert_int_equal(sl_tmpl_render("{key}:{header:type}", &vars, out, sizeof(out)), 11);
    assert_string_equal(out, "k-1:created");
    /* A missing header renders as nothing. */
    assert_int_equal(sl_tmpl_render("a{header:none}b", &vars, out, sizeof(out)), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(sl_tmpl_render("sluice-{node}", &vars, out, sizeof(out)), 9);
    assert_string_equal(out, "sluice-n1");
    /* Too long for the buffer: refused, never truncated. */
    assert_int_equal(sl_tmpl_render("shop/{kafka_topic}", &vars, out, 8), -1);
    assert_int_equal(sl_tmpl_render("{kafka_topic}", &vars, out, 6), -1);
    assert_int_equal(sl_tmpl_render("{kafka_topic}", &vars, out, 7), 6);
}

static void test_check(void **state)
{
    (void)state;
    const char *why;
    assert_int_equal(sl_tmpl_check("shop/{kafka_topic}/{partition}", SL_TMPL_RECORD, &why), 0);
    assert_int_equal(sl_tmpl_check("{header:x-type.v1}", SL_TMPL_RECORD, &why), 0);
    assert_int_equal(sl_tmpl_check("plain", SL_TMPL_RECORD, &why), 0);
    assert_int_equal(sl_tmpl_check("sluice-{node}", SL_TMPL_NODE, &why), 0);
    const char *bad[] = {
        "",        "{",      "}",    "a{b", "{kafka_topic", "{x}", "{header:}", "{header:a b}",
        "{{key}}", "{node}", "{Key}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why = NULL;
        assert_int_equal(sl_tmpl_check(bad[i], SL_TMPL_RECORD, &why), -1);
        assert_non_null(why);
    }
    /* A group name may not depend on a record. */
    assert_int_equal(sl_tmpl_check("g-{partition}", SL_TMPL_NODE, &why), -1);
}

static void test_prefix(void **state)
{
    (void)state;
    assert_int_equal(sl_tmpl_prefix_len("shop/{kafka_topic}"), 5);
    assert_int_equal(sl_tmpl_prefix_len("{key}"), 0);
    assert_int_equal(sl_tmpl_prefix_len("fixed"), 5);
    assert_true(sl_tmpl_has("a/{partition}", "{partition}"));
    assert_false(sl_tmpl_has("a/{key}", "{partition}"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
