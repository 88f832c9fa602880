/*
 * libFuzzer target: the JSON string escaper and the UTF-8 validator, whose fast paths work a
 * word at a time. The escaper must write exactly what a byte-by-byte escaper writes (and fail
 * at the same capacities); the validator must agree with a plain decoder, whole and split.
 * The first input byte picks a start offset and a capacity slack; the rest is the string.
 */
#include "lib/json.h"
#include "lib/utf8.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ref_escape(char *buf, size_t *len, size_t cap, const uint8_t *s, size_t n)
{
    size_t l = *len;
    if (l + 2 > cap)
        return -1;
    buf[l++] = '"';
    for (size_t i = 0; i < n; i++) {
        if (l + 7 > cap)
            return -1;
        if (s[i] == '"' || s[i] == '\\') {
            buf[l++] = '\\';
            buf[l++] = (char)s[i];
        } else if (s[i] < 0x20) {
            l += (size_t)snprintf(buf + l, 7, "\\u%04x", s[i]);
        } else {
            buf[l++] = (char)s[i];
        }
    }
    if (l + 1 > cap)
        return -1;
    buf[l++] = '"';
    *len = l;
    return 0;
}

/* Strict UTF-8 by decoding code points (RFC 3629). */
static int ref_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i], cp;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 2, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 3, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 4, cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + k > n)
            return 0;
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t start = data[0] & 7, slack = data[0] >> 3;
    const uint8_t *s = data + 1;
    size_t n = size - 1;
    size_t full = start + 6 * n + 2;
    char *want = malloc(full + 1), *got = malloc(full + 1);
    size_t wl = start;
    if (ref_escape(want, &wl, full + 1, s, n) != 0)
        abort();
    /* Capacities around the exact length, where the result changes from -1 to 0. */
    for (size_t cap = wl > 32 ? wl - 32 + slack : slack; cap <= full + 1; cap += 1 + slack) {
        size_t a = start, b = start;
        int ra = ref_escape(want, &a, cap, s, n);
        int rb = sl_json_put_string(got, &b, cap, (const char *)s, n);
        if (ra != rb || a != b || (ra == 0 && memcmp(want + start, got + start, a - start) != 0))
            abort();
        if (cap > wl + 8)
            break;
    }
    free(want);
    free(got);

    int v = ref_utf8(s, n);
    if (sl_utf8_valid(s, n) != v)
        abort();
    size_t at = slack < n ? slack : n;
    uint32_t st = 0;
    int split = sl_utf8_feed(&st, s, at) == 0 && sl_utf8_feed(&st, s + at, n - at) == 0 && st == 0;
    if (split != v)
        abort();
    return 0;
}
