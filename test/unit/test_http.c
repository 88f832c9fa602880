/*
 * Unit tests of the HTTP request parser: complete and byte-by-byte input, pipelining, bodies,
 * every limit with its status, captured headers, and the query and escape helpers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/budget.h"
#include "lib/http.h"

#include <stdio.h>
#include <string.h>

static const sl_http_limits_t lim = {
    .max_url = 64, .max_header_bytes = 1024, .max_message = 16, .max_body = 64};

/* Feeds all of s (in pieces of `step`, 0 = at once); returns the result of the last feed and
 * the bytes consumed in total. */
static sl_http_result_t feed(sl_http_req_t *req, const char *s, size_t step, size_t *used)
{
    size_t len = strlen(s), off = 0;
    sl_http_result_t r = SL_HTTP_MORE;
    while (off < len) {
        size_t n = step ? (len - off < step ? len - off : step) : len - off;
        size_t c = 0;
        r = sl_http_feed(req, s + off, n, &c);
        off += c;
        if (r != SL_HTTP_MORE)
            break;
    }
    *used = off;
    return r;
}

static void test_simple_and_bytewise(void **state)
{
    (void)state;
    uint64_t start = sl_budget.used;
    const char *r = "GET /topics/a?since=x HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n"
                    "Last-Event-ID: abc\r\n\r\n";
    for (size_t step = 0; step <= 1; step++) {
        sl_http_req_t req;
        sl_http_req_init(&req, &lim);
        size_t used;
        assert_int_equal(feed(&req, r, step, &used), SL_HTTP_DONE);
        assert_int_equal(used, strlen(r));
        assert_int_equal(llhttp_get_method(&req.parser), HTTP_GET);
        assert_string_equal(req.url, "/topics/a?since=x");
        size_t len;
        const char *v = sl_http_header(&req, SL_H_ACCEPT, &len);
        assert_non_null(v);
        assert_string_equal(v, "text/event-stream");
        v = sl_http_header(&req, SL_H_LAST_EVENT_ID, &len);
        assert_int_equal(len, 3);
        assert_memory_equal(v, "abc", 3);
        assert_null(sl_http_header(&req, SL_H_CONTENT_TYPE, &len));
        assert_true(sl_http_keep_alive(&req));
        sl_http_req_dispose(&req);
    }
    assert_int_equal(sl_budget.used, start);
}

static void test_pipelining_and_bodies(void **state)
{
    (void)state;
    uint64_t start = sl_budget.used;
    const char *one = "POST /topics/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    const char *two = "POST /topics/b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "2\r\nde\r\n1\r\nf\r\n0\r\n\r\n";
    char both[512];
    snprintf(both, sizeof(both), "%s%s", one, two);
    sl_http_req_t req;
    sl_http_req_init(&req, &lim);
    size_t used;
    assert_int_equal(sl_http_feed(&req, both, strlen(both), &used), SL_HTTP_DONE);
    assert_int_equal(used, strlen(one));
    assert_int_equal(req.body_len, 3);
    assert_memory_equal(req.body, "abc", 3);
    sl_http_req_next(&req);
    size_t used2;
    assert_int_equal(sl_http_feed(&req, both + used, strlen(both) - used, &used2), SL_HTTP_DONE);
    assert_int_equal(used2, strlen(two));
    assert_string_equal(req.url, "/topics/b");
    assert_int_equal(req.body_len, 3);
    assert_memory_equal(req.body, "def", 3);
    sl_http_req_dispose(&req);
    assert_int_equal(sl_budget.used, start);
}

static void expect_status(const char *r, int status)
{
    sl_http_req_t req;
    sl_http_req_init(&req, &lim);
    size_t used;
    assert_int_equal(feed(&req, r, 0, &used), SL_HTTP_ERROR);
    assert_int_equal(req.status, status);
    sl_http_req_dispose(&req);
}

static void test_limits(void **state)
{
    (void)state;
    uint64_t start = sl_budget.used;
    char url[200];
    memset(url, 'a', sizeof(url));
    url[199] = '\0';
    char r[2048];
    snprintf(r, sizeof(r), "GET /%s HTTP/1.1\r\n\r\n", url);
    expect_status(r, 414);
    char big[1200];
    memset(big, 'v', sizeof(big));
    big[1199] = '\0';
    snprintf(r, sizeof(r), "GET / HTTP/1.1\r\nX-Big: %s\r\n\r\n", big);
    expect_status(r, 431);
    expect_status("POST /t HTTP/1.1\r\nContent-Length: 17\r\n\r\n", 413);
    expect_status("POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "10\r\n0123456789abcdef\r\n1\r\nx\r\n0\r\n\r\n",
                  413);
    /* NDJSON bodies get the larger limit. */
    expect_status("POST /t HTTP/1.1\r\nContent-Type: application/x-ndjson\r\n"
                  "Content-Length: 65\r\n\r\n",
                  413);
    sl_http_req_t req;
    sl_http_req_init(&req, &lim);
    size_t used;
    const char *nd = "POST /t HTTP/1.1\r\nContent-Type: application/x-ndjson\r\n"
                     "Content-Length: 20\r\n\r\n01234567890123456789";
    assert_int_equal(feed(&req, nd, 0, &used), SL_HTTP_DONE);
    assert_true(req.ndjson);
    sl_http_req_dispose(&req);
    expect_status("POST /t HTTP/1.1\r\nExpect: something\r\nContent-Length: 1\r\n\r\n", 417);
    expect_status("GARBAGE\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400);
    assert_int_equal(sl_budget.used, start);
}

/* Inputs other parsers on the path could read differently are refused, fed whole or bytewise. */
static void test_strict_framing(void **state)
{
    (void)state;
    uint64_t start = sl_budget.used;
    static const struct {
        const char *r;
        int status;
    } bad[] = {
        {"POST /t HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nX-A: a\r\n\tb\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\n X-A: a\r\n\r\n", 400},
        {"POST /t HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"POST /t HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
         "Content-Length: 1\r\n\r\nx",
         400},
        {"CONNECT h:1 HTTP/1.1\r\n\r\n", 400},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        for (size_t step = 0; step <= 1; step++) {
            sl_http_req_t req;
            sl_http_req_init(&req, &lim);
            size_t used;
            assert_int_equal(feed(&req, bad[i].r, step, &used), SL_HTTP_ERROR);
            assert_int_equal(req.status, bad[i].status);
            sl_http_req_dispose(&req);
        }
    }
    /* Whitespace llhttp skips is counted all the same. */
    char r[4096];
    int n = snprintf(r, sizeof(r), "GET / HTTP/1.1\r\nX-A:");
    memset(r + n, ' ', 1100);
    snprintf(r + n + 1100, sizeof(r) - (size_t)n - 1100, "v\r\n\r\n");
    expect_status(r, 431);
    /* A GET asking for another protocol is answered, but never keeps its connection. */
    sl_http_req_t req;
    sl_http_req_init(&req, &lim);
    size_t used;
    assert_int_equal(
        feed(&req, "GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n", 0, &used),
        SL_HTTP_DONE);
    assert_false(sl_http_keep_alive(&req));
    sl_http_req_dispose(&req);
    assert_int_equal(sl_budget.used, start);
}

static void test_expect_continue_and_keepalive(void **state)
{
    (void)state;
    sl_http_req_t req;
    sl_http_req_init(&req, &lim);
    size_t used;
    assert_int_equal(feed(&req,
                          "POST /t HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
                          0, &used),
                     SL_HTTP_MORE);
    assert_true(req.expect_continue);
    assert_int_equal(feed(&req, "ok", 0, &used), SL_HTTP_DONE);
    sl_http_req_dispose(&req);

    sl_http_req_init(&req, &lim);
    assert_int_equal(feed(&req, "GET / HTTP/1.0\r\n\r\n", 0, &used), SL_HTTP_DONE);
    assert_false(sl_http_keep_alive(&req));
    sl_http_req_dispose(&req);
    sl_http_req_init(&req, &lim);
    assert_int_equal(feed(&req, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 0, &used),
                     SL_HTTP_DONE);
    assert_false(sl_http_keep_alive(&req));
    sl_http_req_dispose(&req);

    /* A repeated header replaces the earlier value, also when split across feeds. */
    sl_http_req_init(&req, &lim);
    assert_int_equal(feed(&req, "GET / HTTP/1.1\r\nAccept: a\r\nAcc", 0, &used), SL_HTTP_MORE);
    assert_int_equal(feed(&req, "ept: text/ev", 0, &used), SL_HTTP_MORE);
    assert_int_equal(feed(&req, "ent-stream\r\n\r\n", 0, &used), SL_HTTP_DONE);
    size_t len;
    assert_string_equal(sl_http_header(&req, SL_H_ACCEPT, &len), "text/event-stream");
    sl_http_req_dispose(&req);
}

static void test_helpers(void **state)
{
    (void)state;
    const char *a = "text/html, text/event-stream;q=0.9, */*";
    assert_true(sl_http_has_token(a, strlen(a), "text/event-stream"));
    assert_true(sl_http_has_token(a, strlen(a), "TEXT/HTML"));
    assert_false(sl_http_has_token(a, strlen(a), "text/event"));
    assert_false(sl_http_has_token("", 0, "x"));
    char out[32];
    assert_int_equal(sl_url_decode(out, "a%2Fb%20c+", 10), 6);
    assert_memory_equal(out, "a/b c+", 6);
    assert_int_equal(sl_url_decode(out, "%zz", 3), -1);
    assert_int_equal(sl_url_decode(out, "%4", 2), -1);
    assert_int_equal(sl_url_decode(out, "%", 1), -1);
    const char *q = "topic=a&&topic=b&flag&since=1-2", *end = q + strlen(q);
    const char *k, *v;
    size_t kl, vl;
    assert_true(sl_query_next(&q, end, &k, &kl, &v, &vl));
    assert_int_equal(kl, 5);
    assert_memory_equal(v, "a", vl);
    assert_true(sl_query_next(&q, end, &k, &kl, &v, &vl));
    assert_memory_equal(v, "b", vl);
    assert_true(sl_query_next(&q, end, &k, &kl, &v, &vl));
    assert_int_equal(kl, 4);
    assert_int_equal(vl, 0);
    assert_true(sl_query_next(&q, end, &k, &kl, &v, &vl));
    assert_memory_equal(k, "since", kl);
    assert_memory_equal(v, "1-2", vl);
    assert_false(sl_query_next(&q, end, &k, &kl, &v, &vl));
    assert_string_equal(sl_http_reason(431), "Request Header Fields Too Large");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_and_bytewise),
        cmocka_unit_test(test_pipelining_and_bodies),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_strict_framing),
        cmocka_unit_test(test_expect_continue_and_keepalive),
        cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
