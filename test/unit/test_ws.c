/*
 * Unit tests of the WebSocket protocol pieces: the handshake's accept key, server frame
 * headers, the incremental UTF-8 validator (against a reference decoder, fed whole and in
 * every split), close codes, the publish envelope, and the encodings cached on a message.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/budget.h"
#include "lib/config.h"
#include "core/topic.h"
#include "lib/ws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_accept_key(void **state)
{
    (void)state;
    char out[29];
    /* The example of RFC 6455 section 1.3. */
    assert_int_equal(sl_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_int_equal(sl_ws_accept_key("  dGhlIHNhbXBsZSBub25jZQ== ", 27, out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    static const char *const bad[] = {
        "",
        "dGhlIHNhbXBsZSBub25jZQ",       /* no padding */
        "dGhlIHNhbXBsZSBub25jZQ=",      /* short padding */
        "dGhlIHNhbXBsZSBub25jZQ===",    /* 25 characters */
        "dGhlIHNhbXBsZSBub25j!Q==",     /* not base64 */
        "dGhlIHNhbXBsZSBub25jZR==",     /* non-zero trailing bits */
        "dGhlIHNhbXBsZSBub25jZXh0cmE=", /* 20 bytes */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sl_ws_accept_key(bad[i], strlen(bad[i]), out), -1);
}

static void test_frame_header(void **state)
{
    (void)state;
    uint8_t h[SL_WS_HDR_MAX];
    assert_int_equal(sl_ws_frame_header(h, SL_WS_TEXT, 0), 2);
    assert_int_equal(h[0], 0x81);
    assert_int_equal(h[1], 0);
    assert_int_equal(sl_ws_frame_header(h, SL_WS_BINARY, 125), 2);
    assert_int_equal(h[0], 0x82);
    assert_int_equal(h[1], 125);
    assert_int_equal(sl_ws_frame_header(h, SL_WS_TEXT, 126), 4);
    assert_int_equal(h[1], 126);
    assert_int_equal(h[2] << 8 | h[3], 126);
    assert_int_equal(sl_ws_frame_header(h, SL_WS_TEXT, 65535), 4);
    assert_int_equal(h[2] << 8 | h[3], 65535);
    assert_int_equal(sl_ws_frame_header(h, SL_WS_CLOSE, 65536), 10);
    assert_int_equal(h[0], 0x88);
    assert_int_equal(h[1], 127);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | h[2 + i];
    assert_int_equal(v, 65536);
    assert_int_equal(sl_ws_frame_header(h, SL_WS_TEXT, 1ull << 40), 10);
    v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | h[2 + i];
    assert_true(v == 1ull << 40);
}

/* A reference UTF-8 check written differently: decode each sequence to a code point and judge
 * the code point (length must be the shortest, no surrogates, at most U+10FFFF). */
static int ref_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

static int split_valid(const uint8_t *s, size_t n, size_t at)
{
    uint32_t st = 0;
    if (sl_utf8_feed(&st, s, at) != 0)
        return 0;
    if (sl_utf8_feed(&st, s + at, n - at) != 0)
        return 0;
    return st == 0;
}

static void check_utf8(const uint8_t *s, size_t n)
{
    int want = ref_utf8(s, n);
    assert_int_equal(sl_utf8_valid(s, n), want);
    for (size_t at = 0; at <= n; at++)
        assert_int_equal(split_valid(s, n, at), want);
}

static void test_utf8(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "",
        "plain ascii",
        "caf\xc3\xa9",
        "\xe2\x82\xac euro",
        "\xf0\x9f\x98\x80 smile",
        "\xf4\x8f\xbf\xbf", /* U+10FFFF */
        "\xef\xbf\xbf",     /* U+FFFF */
        "\xc0\x80",         /* overlong NUL */
        "\xc1\xbf",         /* overlong */
        "\xe0\x80\x80",     /* overlong */
        "\xe0\x9f\xbf",     /* overlong */
        "\xed\xa0\x80",     /* surrogate */
        "\xed\xbf\xbf",     /* surrogate */
        "\xf0\x80\x80\x80", /* overlong */
        "\xf0\x8f\xbf\xbf", /* overlong */
        "\xf4\x90\x80\x80", /* beyond U+10FFFF */
        "\xf5\x80\x80\x80", /* bad lead byte */
        "\xff",
        "\x80",         /* lone continuation */
        "\xc3",         /* truncated */
        "\xe2\x82",     /* truncated */
        "\xf0\x9f\x98", /* truncated */
        "a\xc3(b",      /* bad continuation */
        "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"
        "edited",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_utf8((const uint8_t *)cases[i], strlen(cases[i]));
    /* Random bytes biased towards the interesting lead bytes. */
    srand(12345);
    static const uint8_t pick[] = {0x41, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc2,
                                   0xdf, 0xe0, 0xe1, 0xed, 0xef, 0xf0, 0xf1, 0xf4, 0xf5};
    for (int round = 0; round < 20000; round++) {
        uint8_t buf[8];
        size_t n = (size_t)(rand() % 8);
        for (size_t k = 0; k < n; k++)
            buf[k] = pick[rand() % (int)sizeof(pick)];
        check_utf8(buf, n);
    }
}

/* Long inputs for the eight-bytes-at-a-time ASCII skip: ASCII runs of every length with a
 * multi-byte sequence (valid or not) or a stray byte at random places, split everywhere. */
static void test_utf8_long(void **state)
{
    (void)state;
    static const char *const pieces[] = {
        "\xc3\xa9",     "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xc3", "\x80",
        "\xed\xa0\x80", "\xff",         "\xf4\x90\x80\x80", "\x7f", "\x00"};
    srand(777);
    for (int round = 0; round < 5000; round++) {
        uint8_t buf[80];
        size_t n = 0;
        size_t want = (size_t)(rand() % 72);
        while (n < want) {
            if (rand() % 12 == 0) {
                const char *p = pieces[rand() % (int)(sizeof(pieces) / sizeof(pieces[0]))];
                size_t l = strlen(p) ? strlen(p) : 1; /* "\x00" */
                if (n + l > sizeof(buf))
                    break;
                memcpy(buf + n, p, l);
                n += l;
            } else {
                buf[n++] = (uint8_t)(0x20 + rand() % 0x5f);
            }
        }
        check_utf8(buf, n);
    }
    /* A long ASCII run, then one bad byte at every position. */
    uint8_t run[70];
    memset(run, 'a', sizeof(run));
    check_utf8(run, sizeof(run));
    for (size_t at = 0; at < sizeof(run); at++) {
        run[at] = 0x80;
        assert_int_equal(sl_utf8_valid(run, sizeof(run)), 0);
        run[at] = 'a';
    }
}

static void test_close_codes(void **state)
{
    (void)state;
    static const unsigned ok[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009,
                                  1010, 1011, 1012, 1013, 1014, 3000, 4999};
    static const unsigned bad[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        assert_true(sl_ws_close_code_ok(ok[i]));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(sl_ws_close_code_ok(bad[i]));
}

static int envelope(const char *s, sl_ws_envelope_t *env, char *scratch)
{
    return sl_ws_parse_envelope(s, strlen(s), scratch, env);
}

static void test_envelope(void **state)
{
    (void)state;
    char scratch[256];
    sl_ws_envelope_t e;
    assert_int_equal(envelope("{\"topic\":\"a/b\",\"event\":\"ev\",\"data\":\"hi\"}", &e, scratch),
                     0);
    assert_int_equal(e.topic_len, 3);
    assert_memory_equal(e.topic, "a/b", 3);
    assert_int_equal(e.event_len, 2);
    assert_memory_equal(e.event, "ev", 2);
    assert_int_equal(e.data_len, 2);
    assert_memory_equal(e.data, "hi", 2);

    assert_int_equal(envelope(" { \"data\" : \"\" , \"event\" : null } \n", &e, scratch), 0);
    assert_null(e.topic);
    assert_null(e.event);
    assert_non_null(e.data);
    assert_int_equal(e.data_len, 0);

    /* Escapes decode to the bytes they name, surrogate pairs to one 4-byte character. */
    assert_int_equal(
        envelope("{\"data\":\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t \\u00e9 \\ud83d\\ude00 \\u0000\"}",
                 &e, scratch),
        0);
    static const char want[] = "q\" b\\ s/ \b\f\n\r\t \xc3\xa9 \xf0\x9f\x98\x80 ";
    assert_int_equal(e.data_len, sizeof(want) - 1 + 1);
    assert_memory_equal(e.data, want, sizeof(want) - 1);
    assert_int_equal(e.data[e.data_len - 1], '\0');

    static const char *const bad[] = {
        "",
        "[]",
        "{}",              /* data is required */
        "{\"data\":null}", /* … and must be a string */
        "{\"data\":1}",
        "{\"data\":\"x\"} trailing",
        "{\"data\":\"x\",}",
        "{\"data\":\"x\" \"topic\":\"t\"}",
        "{\"data\":\"x\",\"data\":\"y\"}",  /* duplicate */
        "{\"data\":\"x\",\"other\":\"y\"}", /* unknown member */
        "{\"data\":\"a\nb\"}",              /* raw control character */
        "{\"data\":\"\\x\"}",               /* unknown escape */
        "{\"data\":\"\\u12\"}",             /* short escape */
        "{\"data\":\"\\ude00\"}",           /* lone low surrogate */
        "{\"data\":\"\\ud83d\"}",           /* lone high surrogate */
        "{\"data\":\"\\ud83d\\u0041\"}",    /* high surrogate, then no low one */
        "{\"data\":\"unterminated}",
        "{\"data\":\"x\"",
        "{data:\"x\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(envelope(bad[i], &e, scratch), -1);
}

static void test_base64(void **state)
{
    (void)state;
    char out[16];
    assert_int_equal(sl_base64_encode(out, "", 0), 0);
    assert_int_equal(sl_base64_encode(out, "f", 1), 4);
    assert_memory_equal(out, "Zg==", 4);
    assert_int_equal(sl_base64_encode(out, "foob", 4), 8);
    assert_memory_equal(out, "Zm9vYg==", 8);
    assert_int_equal(sl_base64_encode(out, "\xff\x00\x01", 3), 4);
    assert_memory_equal(out, "/wAB", 4);
}

static void on_evict(sl_topic_t *t, sl_msg_t *m, sl_evict_reason_t why, void *arg)
{
    (void)t, (void)why, (void)arg;
    sl_list_remove(&m->all);
    sl_msg_unref(m);
}

/* Cached encodings: the raw header matches the payload's kind, the json frame is one text
 * frame holding the envelope, both are built once and charged to the budget until freed. */
static void test_message_encodings(void **state)
{
    (void)state;
    sl_budget_set_limit(1ull << 30, 0);
    uint64_t base = sl_budget.used;
    sl_config_t cfg;
    sl_config_init(&cfg);
    sl_topic_t *t = sl_topic_new("room/1", 6, &cfg.topic_defaults, 0);
    sl_list_t order;
    sl_list_init(&order);
    static const struct {
        const char *payload;
        size_t len;
        const char *event;
        int op;
        const char *data_json;
    } cases[] = {
        {"hello", 5, NULL, SL_WS_TEXT, "\"data\":\"hello\"}"},
        {"a\"b\nc", 5, "ev", SL_WS_TEXT, "\"data\":\"a\\\"b\\u000ac\"}"},
        {"\xff\x00", 2, NULL, SL_WS_BINARY, "\"data\":\"/wA=\",\"encoding\":\"base64\"}"},
        {"", 0, NULL, SL_WS_TEXT, "\"data\":\"\"}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sl_msg_t *m =
            sl_msg_new(t, t->head_seq + 1, cases[i].event, cases[i].payload, cases[i].len);
        sl_budget_charge(m->charge);
        m->gseq = 40 + i;
        sl_list_insert_tail(&order, &m->all);
        sl_topic_append(t, m, on_evict, NULL);
        size_t hl;
        const uint8_t *h = sl_msg_ws_header(m, &hl);
        assert_int_equal(hl, 2);
        assert_int_equal(h[0], 0x80 | cases[i].op);
        assert_int_equal(h[1], cases[i].len);
        size_t jl, jl2;
        uint64_t before = sl_budget.used;
        const char *j = sl_msg_ws_json(m, "00000000000000aa", &jl);
        assert_true(sl_budget.used > before);
        assert_ptr_equal(sl_msg_ws_json(m, "00000000000000aa", &jl2), j);
        assert_int_equal(jl, jl2);
        assert_int_equal((uint8_t)j[0], 0x81);
        size_t body = (uint8_t)j[1] < 126 ? 2 : 4;
        assert_int_equal(jl - body, (uint8_t)j[1] < 126 ? (uint8_t)j[1] : jl - 4);
        char want[256];
        snprintf(want, sizeof(want),
                 "{\"id\":\"%s-%zu\",\"sid\":\"00000000000000aa-%zu:room/1\",\"topic\":\"room/1\","
                 "\"event\":%s%s%s,%s",
                 t->epoch_hex, i + 1, 40 + i, cases[i].event ? "\"" : "",
                 cases[i].event ? cases[i].event : "null", cases[i].event ? "\"" : "",
                 cases[i].data_json);
        assert_int_equal(jl - body, strlen(want));
        assert_memory_equal(j + body, want, strlen(want));
    }
    sl_topic_free(t);
    sl_config_dispose(&cfg);
    assert_int_equal(sl_budget.used, base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_key),  cmocka_unit_test(test_frame_header),
        cmocka_unit_test(test_utf8),        cmocka_unit_test(test_utf8_long),
        cmocka_unit_test(test_close_codes), cmocka_unit_test(test_envelope),
        cmocka_unit_test(test_base64),      cmocka_unit_test(test_message_encodings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
