/*
 * Unit tests of the sinks' pure parts: backoff with full jitter, Retry-After (seconds and
 * HTTP-date, capped), status classes, Standard Webhooks signatures (the spec's test vector),
 * batch bodies and URL templates.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/budget.h"
#include "lib/sinkconf.h"
#include "lib/util.h"
#include "sink/batch.h"
#include "sink/policy.h"
#include "sink/sign.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_backoff_bounds(void **state)
{
    (void)state;
    /* Every draw lies in [0, min(max, initial * 2^(n-1))]; the extremes are reachable. */
    for (unsigned a = 1; a < 80; a++) {
        uint64_t ceil = a < 40 ? 1000ull << (a - 1) : UINT64_MAX;
        if (ceil > 600000)
            ceil = 600000;
        uint64_t hi = 0;
        for (int i = 0; i < 2000; i++) {
            uint64_t d = sl_backoff_ms(1000, 600000, a, sl_random64());
            assert_true(d <= ceil);
            if (d > hi)
                hi = d;
        }
        assert_int_equal(sl_backoff_ms(1000, 600000, a, ceil), ceil);
        assert_int_equal(sl_backoff_ms(1000, 600000, a, ceil + 1), 0);
        /* Full jitter spreads over the whole range, not just its top. */
        assert_true(hi > ceil / 2);
    }
    assert_int_equal(sl_backoff_ms(1000, 600000, 0, 1000), 1000);
    assert_true(sl_backoff_ms(UINT64_MAX / 2, UINT64_MAX, 200, UINT64_MAX - 1) <= UINT64_MAX);
}

static void test_retry_after(void **state)
{
    (void)state;
    uint64_t ms;
    assert_int_equal(sl_retry_after_parse("120", 3, 0, 600000, &ms), 0);
    assert_int_equal(ms, 120000);
    assert_int_equal(sl_retry_after_parse(" 0 ", 3, 0, 600000, &ms), 0);
    assert_int_equal(ms, 0);
    /* Capped. */
    assert_int_equal(sl_retry_after_parse("99999", 5, 0, 600000, &ms), 0);
    assert_int_equal(ms, 600000);
    /* HTTP-date, relative to now. */
    const char *d = "Thu, 25 Feb 2021 15:02:10 GMT";
    uint64_t at = 1614265330ull * 1000;
    assert_int_equal(sl_retry_after_parse(d, strlen(d), at - 30000, 600000, &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(sl_retry_after_parse(d, strlen(d), at + 5000, 600000, &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(sl_retry_after_parse(d, strlen(d), 0, 600000, &ms), 0);
    assert_int_equal(ms, 600000);
    const char *bad[] = {"",
                         "-1",
                         "1.5",
                         "12a",
                         "12345678901",
                         "Thu, 25 Feb 2021 15:02:10 UTC",
                         "Xyz, 25 Feb 2021 15:02:10 GMT",
                         "Thu, 32 Feb 2021 15:02:10 GMT",
                         "Thu, 25 Foo 2021 15:02:10 GMT",
                         "Thu, 25 Feb 2021 25:02:10 GMT",
                         "Thursday, 25-Feb-21 15:02:10 GMT"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sl_retry_after_parse(bad[i], strlen(bad[i]), 0, 600000, &ms), -1);
    assert_int_equal(sl_retry_after_parse(NULL, 0, 0, 1, &ms), -1);
}

static void test_status_classes(void **state)
{
    (void)state;
    for (long s = 200; s < 300; s++)
        assert_int_equal(sl_status_class(s), SL_STATUS_OK);
    long retry[] = {0, 301, 302, 304, 401, 403, 404, 408, 425, 429, 500, 502, 503, 504, 599, 418};
    for (size_t i = 0; i < sizeof(retry) / sizeof(retry[0]); i++)
        assert_int_equal(sl_status_class(retry[i]), SL_STATUS_RETRY);
    assert_int_equal(sl_status_class(400), SL_STATUS_REJECT);
    assert_int_equal(sl_status_class(413), SL_STATUS_REJECT);
    assert_int_equal(sl_status_class(422), SL_STATUS_REJECT);
    assert_int_equal(sl_status_class(410), SL_STATUS_GONE);
    assert_string_equal(sl_status_class_name(SL_STATUS_GONE), "gone");
}

static void test_sign_vector(void **state)
{
    (void)state;
    /* The test vector of the Standard Webhooks reference libraries. */
    sl_signer_t s;
    memset(&s, 0, sizeof(s));
    const char *sec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    assert_int_equal(sl_signer_add(&s, sec, strlen(sec)), 0);
    const char *body = "{\"test\": 2432232314}";
    char out[256];
    int n = sl_signer_sign(&s, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, strlen(body), out);
    assert_int_equal(n, (int)strlen("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
    assert_string_equal(out, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    /* Prepared (keyed contexts, reused): the same signature, again and again, and a different
     * body between two uses leaves nothing behind. */
    assert_int_equal(sl_signer_prepare(&s), 0);
    assert_non_null(s.ctx[0]);
    for (int round = 0; round < 3; round++) {
        char other[256];
        assert_true(sl_signer_sign(&s, "msg_x", 1, "other", 5, other) > 0);
        assert_string_not_equal(other, out);
        char again[256];
        n = sl_signer_sign(&s, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, strlen(body),
                           again);
        assert_string_equal(again, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
    sl_signer_dispose(&s);
    assert_null(s.ctx[0]);
    /* Two secrets (rotation): both signatures, space-separated, the first unchanged. */
    const char *text = "# rotation\nwhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n\n  c2Vjb25k  \n";
    sl_signer_t two;
    memset(&two, 0, sizeof(two));
    int bad = 0;
    assert_int_equal(sl_signer_parse(&two, text, strlen(text), &bad), 2);
    assert_true(sl_signer_value_cap(&two) <= sizeof(out));
    n = sl_signer_sign(&two, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, strlen(body), out);
    assert_true(n > 0);
    assert_true(strncmp(out, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1,", 51) == 0);
    assert_int_equal((size_t)n, strlen(out));
    char slow[256];
    memcpy(slow, out, sizeof(slow));
    assert_int_equal(sl_signer_prepare(&two), 0);
    n = sl_signer_sign(&two, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, strlen(body), out);
    assert_string_equal(out, slow);
    sl_signer_dispose(&two);
    /* Malformed secrets. */
    const char *badtext = "whsec_ok==\nnot base64!\n";
    sl_signer_t b3;
    memset(&b3, 0, sizeof(b3));
    assert_int_equal(sl_signer_parse(&b3, badtext, strlen(badtext), &bad), -1);
    assert_int_equal(bad, 2);
    assert_int_equal(sl_signer_add(&b3, "whsec_", 6), -1);
}

static void test_batch_formats(void **state)
{
    (void)state;
    sl_bbuf_t b = {0};
    uint64_t used = sl_budget.used;
    sl_batch_begin(&b, SL_FMT_NDJSON);
    sl_batch_add(&b, SL_FMT_NDJSON, 0, "a/b", 3, "00000000000000ab", 7, NULL, "hi \"x\"\n", 7);
    sl_batch_add(&b, SL_FMT_NDJSON, 1, "a/b", 3, "00000000000000ab", 8, "ev", "\xff\x00", 2);
    sl_batch_add_gap(&b, SL_FMT_NDJSON, 2, "a/b", 3, "00000000000000ab", 9, 12, 4);
    sl_batch_end(&b, SL_FMT_NDJSON);
    const char *want = "{\"id\":\"00000000000000ab-7\",\"topic\":\"a/b\",\"data\":\"hi "
                       "\\\"x\\\"\\u000a\"}\n"
                       "{\"id\":\"00000000000000ab-8\",\"topic\":\"a/b\",\"event\":\"ev\","
                       "\"data\":\"/wA=\",\"encoding\":\"base64\"}\n"
                       "{\"sluice\":\"gap\",\"topic\":\"a/b\",\"from\":\"00000000000000ab-9\","
                       "\"to\":\"00000000000000ab-12\",\"missed\":4}\n";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.p, want, b.len);
    assert_true(sl_budget.used > used);

    /* Valid UTF-8 beyond ASCII stays text; a long payload with one bad byte after the
     * escaper's sixteen-byte blocks is written again in base64. */
    char line[512];
    size_t ln = sl_batch_put_line(line, "t", 1, "00000000000000ab", 3, NULL, "caf\xc3\xa9", 5);
    const char *want3 =
        "{\"id\":\"00000000000000ab-3\",\"topic\":\"t\",\"data\":\"caf\xc3\xa9\"}\n";
    assert_int_equal(ln, strlen(want3));
    assert_memory_equal(line, want3, ln);
    const char *bad = "abcdefghijklmnopqrstuvwxyz\"0123\xc3";
    ln = sl_batch_put_line(line, "t", 1, "00000000000000ab", 4, NULL, bad, strlen(bad));
    const char *want4 =
        "{\"id\":\"00000000000000ab-4\",\"topic\":\"t\",\"data\":"
        "\"YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoiMDEyM8M=\",\"encoding\":\"base64\"}\n";
    assert_int_equal(ln, strlen(want4));
    assert_memory_equal(line, want4, ln);

    sl_batch_begin(&b, SL_FMT_JSON);
    sl_batch_add(&b, SL_FMT_JSON, 0, "t", 1, "00000000000000ab", 1, NULL, "1", 1);
    sl_batch_add(&b, SL_FMT_JSON, 1, "t", 1, "00000000000000ab", 2, NULL, "2", 1);
    sl_batch_end(&b, SL_FMT_JSON);
    const char *want2 = "[{\"id\":\"00000000000000ab-1\",\"topic\":\"t\",\"data\":\"1\"},"
                        "{\"id\":\"00000000000000ab-2\",\"topic\":\"t\",\"data\":\"2\"}]";
    assert_int_equal(b.len, strlen(want2));
    assert_memory_equal(b.p, want2, b.len);

    sl_batch_begin(&b, SL_FMT_RAW);
    sl_batch_add(&b, SL_FMT_RAW, 0, "t", 1, "00000000000000ab", 1, NULL, "\x01\x02", 2);
    sl_batch_end(&b, SL_FMT_RAW);
    assert_int_equal(b.len, 2);
    assert_memory_equal(b.p, "\x01\x02", 2);
    sl_bbuf_free(&b);
    assert_int_equal(sl_budget.used, used);
    sl_sink_format_t f;
    assert_int_equal(sl_sink_format_parse("json", &f), 0);
    assert_int_equal(f, SL_FMT_JSON);
    assert_int_equal(sl_sink_format_parse("xml", &f), -1);
}

static void test_url_templates(void **state)
{
    (void)state;
    const char *why;
    assert_int_equal(sl_url_template_check("https://h.example/{topic}?s={sink}", &why), 0);
    const char *bad[] = {"ftp://h/x",          "http://",         "http:///x",
                         "http://{topic}/x",   "http://u@h/x",    "http://h/{foo}",
                         "http://h/a b",       "http://h/x#frag", "http://h/}",
                         "file:///etc/passwd", "gopher://h/",     "http://h/\x01"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sl_url_template_check(bad[i], &why), -1);
    char out[128];
    int n = sl_url_expand("http://h:8/in/{topic}?s={sink}", "a/b c~", 6, "bill", out, sizeof(out));
    assert_string_equal(out, "http://h:8/in/a%2Fb%20c~?s=bill");
    assert_int_equal(n, (int)strlen(out));
    /* Escaping keeps a topic from leaving its path segment or adding a query. */
    n = sl_url_expand("http://h/{topic}", "../x?y=1&z#", 11, "s", out, sizeof(out));
    assert_string_equal(out, "http://h/..%2Fx%3Fy%3D1%26z%23");
    assert_int_equal(sl_url_expand("http://h/{topic}", "abcdef", 6, "s", out, 12), -1);
    n = sl_url_origin("HTTP://Example.COM/x", out, sizeof(out));
    assert_string_equal(out, "http://example.com:80");
    sl_url_origin("https://h:8443?q", out, sizeof(out));
    assert_string_equal(out, "https://h:8443");
    sl_url_origin("http://[::1]:9/x", out, sizeof(out));
    assert_string_equal(out, "http://[::1]:9");
    sl_url_origin("https://[::1]/x", out, sizeof(out));
    assert_string_equal(out, "https://[::1]:443");
    assert_int_equal(sl_url_origin("http://h:/x", out, sizeof(out)), -1);
    assert_int_equal(sl_url_origin("ws://h/x", out, sizeof(out)), -1);
}

static int private4(const char *a)
{
    struct sockaddr_in in = {.sin_family = AF_INET};
    assert_int_equal(inet_pton(AF_INET, a, &in.sin_addr), 1);
    return sl_addr_private((struct sockaddr *)&in);
}

static int private6(const char *a)
{
    struct sockaddr_in6 in = {.sin6_family = AF_INET6};
    assert_int_equal(inet_pton(AF_INET6, a, &in.sin6_addr), 1);
    return sl_addr_private((struct sockaddr *)&in);
}

static void test_private_addresses(void **state)
{
    (void)state;
    const char *priv4[] = {"127.0.0.1",   "10.1.2.3",        "172.16.0.1", "172.31.255.255",
                           "192.168.1.1", "169.254.169.254", "0.0.0.0",    "100.64.0.1",
                           "224.0.0.1",   "255.255.255.255"};
    for (size_t i = 0; i < sizeof(priv4) / sizeof(priv4[0]); i++)
        assert_true(private4(priv4[i]));
    const char *pub4[] = {"8.8.8.8", "172.32.0.1", "172.15.255.255", "100.128.0.1", "1.1.1.1"};
    for (size_t i = 0; i < sizeof(pub4) / sizeof(pub4[0]); i++)
        assert_false(private4(pub4[i]));
    const char *priv6[] = {"::1",     "::",      "fe80::1",          "fc00::1",
                           "fd12::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"};
    for (size_t i = 0; i < sizeof(priv6) / sizeof(priv6[0]); i++)
        assert_true(private6(priv6[i]));
    assert_false(private6("2001:4860:4860::8888"));
    assert_false(private6("::ffff:8.8.8.8"));
    struct sockaddr other = {.sa_family = AF_UNIX};
    assert_true(sl_addr_private(&other));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_bounds),    cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_status_classes),    cmocka_unit_test(test_sign_vector),
        cmocka_unit_test(test_batch_formats),     cmocka_unit_test(test_url_templates),
        cmocka_unit_test(test_private_addresses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
