/*
 * Unit tests of SSE encoding: whatever a payload holds, a standard SSE parser sees exactly one
 * event whose data is the payload (with CR and CRLF read as line breaks, as browsers do).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/budget.h"
#include "lib/sse.h"
#include "core/topic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A reference parser after the WHATWG rules: lines end at CR, LF or CRLF; "data" appends its
 * value and LF; "event" sets the type; a blank line dispatches (dropping one trailing LF). */
typedef struct parsed {
    int events;
    char data[4096];
    char event[128];
    char id[128];
} parsed_t;

static void parse_sse(const char *s, size_t len, parsed_t *out)
{
    memset(out, 0, sizeof(*out));
    char data[4096] = "", event[128] = "";
    size_t dlen = 0;
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && s[i] != '\r' && s[i] != '\n')
            i++;
        size_t end = i;
        if (i < len && s[i] == '\r' && i + 1 < len && s[i + 1] == '\n')
            i++;
        i++;
        if (end == start) {
            if (dlen > 0) {
                out->events++;
                memcpy(out->data, data, dlen - 1);
                out->data[dlen - 1] = '\0';
                strcpy(out->event, event);
            }
            dlen = 0;
            event[0] = '\0';
            continue;
        }
        const char *colon = memchr(s + start, ':', end - start);
        size_t flen = colon ? (size_t)(colon - (s + start)) : end - start;
        const char *v = colon ? colon + 1 : s + end;
        if (colon && v < s + end && *v == ' ')
            v++;
        size_t vlen = (size_t)(s + end - v);
        if (flen == 4 && memcmp(s + start, "data", 4) == 0) {
            memcpy(data + dlen, v, vlen);
            dlen += vlen;
            data[dlen++] = '\n';
        } else if (flen == 5 && memcmp(s + start, "event", 5) == 0) {
            memcpy(event, v, vlen);
            event[vlen] = '\0';
        } else if (flen == 2 && memcmp(s + start, "id", 2) == 0) {
            memcpy(out->id, v, vlen);
            out->id[vlen] = '\0';
        }
    }
}

/* The payload as a browser sees it: CRLF and CR become LF. */
static void normalise(const char *in, char *out)
{
    size_t o = 0;
    for (size_t i = 0; in[i]; i++) {
        if (in[i] == '\r') {
            out[o++] = '\n';
            if (in[i + 1] == '\n')
                i++;
        } else {
            out[o++] = in[i];
        }
    }
    out[o] = '\0';
}

static const char *const payloads[] = {
    "plain",
    "",
    "two\nlines",
    "cr\ronly",
    "crlf\r\nlines",
    "mixed\r\n\n\rend",
    "trailing newline\n",
    "\n",
    "data: x",
    "\n\nevent: evil\ndata: injected\n\n",
    "id: 1\r\nretry: 0\r\n\r\n",
    " leading space",
};

static void test_data_lines_roundtrip(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof(payloads) / sizeof(payloads[0]); k++) {
        const char *p = payloads[k];
        size_t len = strlen(p);
        size_t need = sl_sse_data_len(p, len);
        char *buf = malloc(need + 2);
        char *end = sl_sse_put_data(buf, p, len);
        assert_int_equal((size_t)(end - buf), need);
        *end++ = '\n';
        parsed_t ev;
        parse_sse(buf, (size_t)(end - buf), &ev);
        assert_int_equal(ev.events, 1);
        char want[256];
        normalise(p, want);
        assert_string_equal(ev.data, want);
        assert_string_equal(ev.event, "");
        assert_int_equal(sl_sse_needs_split(p, len), strpbrk(p, "\r\n") != NULL);
        free(buf);
    }
}

/* Seconds of CPU to encode a payload (best of three). */
static double encode_cpu_s(const char *p, size_t n)
{
    double best = 1e9;
    for (int r = 0; r < 3; r++) {
        clock_t a = clock();
        size_t l = sl_sse_data_len(p, n);
        char *d = malloc(l);
        assert_int_equal((size_t)(sl_sse_put_data(d, p, n) - d), l);
        free(d);
        double t = (double)(clock() - a) / CLOCKS_PER_SEC;
        if (t < best)
            best = t;
    }
    return best;
}

/* A payload of CRs costs what a payload of as many LF-ended lines costs: a line search that
 * looked for the next LF from each CR scanned the rest of the payload per line (a 1 MiB
 * publish of CRs held the loop for tens of seconds). Compared with the LF payload of the same
 * run, not with a clock bar: quadratic made it hundreds of times slower. */
static void test_many_cr_lines_are_linear(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    char *cr = malloc(n), *lf = malloc(n);
    memset(cr, '\r', n);
    for (size_t i = 0; i < n; i++)
        lf[i] = (i & 1) ? '\n' : 'a';
    double t_lf = encode_cpu_s(lf, n / 2 * 2), t_cr = encode_cpu_s(cr, n);
    assert_true(t_cr < 20 * t_lf + 0.05);
    free(cr);
    free(lf);
}

static void test_message_frame(void **state)
{
    (void)state;
    uint64_t start = sl_budget.used;
    sl_topic_conf_t c;
    memset(&c, 0, sizeof(c));
    c.max_messages = 10;
    c.max_bytes = 1000;
    sl_topic_t *t = sl_topic_new("news", 4, &c, 0);
    for (size_t k = 0; k < sizeof(payloads) / sizeof(payloads[0]); k++) {
        const char *p = payloads[k];
        sl_msg_t *m = sl_msg_new(t, 7, k % 2 ? "price" : NULL, p, strlen(p));
        sl_budget_charge(m->charge);
        char id[SL_ID_MAX + 8];
        snprintf(id, sizeof(id), "id: %s-7\n", t->epoch_hex);
        assert_int_equal(m->id_line_len, strlen(id));
        assert_memory_equal(m->frame, id, m->id_line_len);
        assert_int_equal(m->payload_len, strlen(p));
        assert_memory_equal(m->payload, p, m->payload_len);
        parsed_t ev;
        parse_sse(m->frame, m->frame_len, &ev);
        assert_int_equal(ev.events, 1);
        char want[256];
        normalise(p, want);
        assert_string_equal(ev.data, want);
        assert_string_equal(ev.event, k % 2 ? "price" : "");
        id[strlen(id) - 1] = '\0'; /* the parsed id has no line end */
        assert_string_equal(ev.id, id + 4);
        if (k % 2)
            assert_string_equal(m->event, "price");
        else
            assert_null(m->event);
        sl_msg_unref(m);
    }
    sl_topic_free(t);
    assert_int_equal(sl_budget.used, start);
}

static void test_json_string(void **state)
{
    (void)state;
    char buf[64];
    size_t len = 0;
    assert_int_equal(sl_json_put_string(buf, &len, sizeof(buf), "a\"b\\c\n\x01", 7), 0);
    buf[len] = '\0';
    assert_string_equal(buf, "\"a\\\"b\\\\c\\u000a\\u0001\"");
    char small[4];
    len = 0;
    assert_int_equal(sl_json_put_string(small, &len, sizeof(small), "abcdef", 6), -1);
    char r[48];
    size_t n = sl_sse_retry(r, 2500);
    assert_int_equal(n, strlen("retry: 2500\n\n"));
    assert_memory_equal(r, "retry: 2500\n\n", n);
}

/* The escaper byte by byte, as it was before words were copied whole: the reference for what
 * is written and for when -1 is returned (7 bytes of headroom before each input byte). */
static int ref_json_put_string(char *buf, size_t *len, size_t cap, const char *s, size_t n)
{
    size_t l = *len;
    if (l + 2 > cap)
        return -1;
    buf[l++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (l + 7 > cap)
            return -1;
        if (c == '"' || c == '\\') {
            buf[l++] = '\\';
            buf[l++] = (char)c;
        } else if (c < 0x20) {
            l += (size_t)sprintf(buf + l, "\\u%04x", c);
        } else {
            buf[l++] = (char)c;
        }
    }
    if (l + 1 > cap)
        return -1;
    buf[l++] = '"';
    *len = l;
    return 0;
}

/* Strings long enough for the 16- and 8-byte paths, with bytes that need escaping (and the
 * bytes next to them in value) at random places, against the reference at every capacity
 * around the result's length and from a nonzero start offset. */
static void json_string_words(void)
{
    static const unsigned char pick[] = {'a',  'a',  'a',  'a',  'a',  'a',  'a',  'a',
                                         'a',  '"',  '\\', 0x00, 0x01, 0x1f, 0x20, 0x21,
                                         0x5b, 0x5d, 0x7f, 0x80, 0xc3, 0xff, '!',  '#'};
    srand(4242);
    for (int round = 0; round < 20000; round++) {
        char in[96];
        size_t n = (size_t)(rand() % (int)sizeof(in));
        int kind = rand() % 4; /* 0: nothing to escape at all; 1: one byte that may need it */
        for (size_t k = 0; k < n; k++)
            in[k] = kind <= 1 ? (char)('a' + rand() % 26) : (char)pick[rand() % (int)sizeof(pick)];
        if (kind == 1 && n > 0) /* in a clean run: each 16- and 8-byte block must notice it */
            in[rand() % (int)n] = (char)pick[9 + rand() % ((int)sizeof(pick) - 9)];
        size_t start = (size_t)(rand() % 5);
        char want[8 + 6 * sizeof(in) + 8], got[sizeof(want)];
        size_t wl = start;
        memset(want, 'x', sizeof(want));
        memset(got, 'x', sizeof(got));
        assert_int_equal(ref_json_put_string(want, &wl, sizeof(want), in, n), 0);
        int want_high = 0;
        for (size_t k = 0; k < n; k++)
            want_high |= (unsigned char)in[k] >= 0x80;
        for (size_t cap = wl > 16 ? wl - 16 : 0; cap <= wl + 8 && cap <= sizeof(got); cap++) {
            size_t w2 = start, g = start, g2 = start;
            int rw = ref_json_put_string(want, &w2, cap, in, n);
            int rg = sl_json_put_string(got, &g, cap, in, n);
            assert_int_equal(rg, rw);
            assert_int_equal(g, w2);
            if (rg == 0)
                assert_memory_equal(got + start, want + start, g - start);
            /* The variant that reports bytes >= 0x80: the same output, and the flag exact. */
            int high = -1;
            assert_int_equal(sl_json_put_string_high(got, &g2, cap, in, n, &high), rw);
            assert_int_equal(g2, w2);
            assert_int_equal(high, rw == 0 ? want_high : -1);
            if (rw == 0)
                assert_memory_equal(got + start, want + start, g2 - start);
        }
    }
}

/* Where the CPU has AVX2 (32-byte blocks), again without it. */
static void test_json_string_words(void **state)
{
    (void)state;
    int wide = sl_json_wide;
    json_string_words();
    sl_json_wide = 0;
    json_string_words();
    sl_json_wide = wide;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_lines_roundtrip),     cmocka_unit_test(test_message_frame),
        cmocka_unit_test(test_many_cr_lines_are_linear), cmocka_unit_test(test_json_string),
        cmocka_unit_test(test_json_string_words),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
