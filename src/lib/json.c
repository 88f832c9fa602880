/*
 * JSON output helpers (see json.h). Payloads are mostly runs of bytes that need no escaping,
 * so the escaper tests sixteen bytes at a time (SSE2, x86-64's baseline), else eight, and
 * copies a clean block whole; in a sixteen-byte block holding a quote, a backslash or a
 * control byte, the bytes before the first of them are kept and that one is escaped, and an
 * eight-byte one goes through the byte loop.
 */
#include "lib/json.h"

#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

/* Nonzero if any byte of w is zero (exact as a yes/no answer; not which byte). */
static inline uint64_t has_zero(uint64_t w)
{
    return (w - ONES) & ~w & HIGHS;
}

/* Nonzero if any byte of w needs escaping in a JSON string: below 0x20, '"' or '\\'. The
 * first term is exact for "a byte below 0x20" (a byte >= 0x80 never sets it). */
static inline uint64_t needs_escape(uint64_t w)
{
    return ((w - ONES * 0x20) & ~w & HIGHS) | has_zero(w ^ (ONES * '"')) |
           has_zero(w ^ (ONES * '\\'));
}

/* One byte that needs escaping (or a byte of the byte loop) at buf[l]; the new length. The
 * caller has checked that 7 bytes fit. */
static inline size_t put_byte(char *buf, size_t l, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";
    if (c == '"' || c == '\\') {
        buf[l++] = '\\';
        buf[l++] = (char)c;
    } else if (c < 0x20) {
        memcpy(buf + l, "\\u00", 4);
        buf[l + 4] = hex[c >> 4];
        buf[l + 5] = hex[c & 15];
        l += 6;
    } else {
        buf[l++] = (char)c;
    }
    return l;
}

int sl_json_put_string_high(char *buf, size_t *len, size_t cap, const char *s, size_t n, int *high)
{
    size_t l = *len;
    uint64_t hi = 0;
    if (l + 2 > cap)
        return -1;
    buf[l++] = '"';
    size_t i = 0;
    while (i < n) {
        /* A block is taken sixteen (or eight) bytes at a time when the byte loop would have
         * found room for each of its bytes (7 bytes of headroom before the last of them), so
         * what fits and what does not is the same as byte by byte. */
#ifdef __SSE2__
        if (n - i >= 16 && l + 16 + 6 <= cap) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
            /* max(v, 0x1f) == 0x1f exactly for the bytes below 0x20 (unsigned) */
            __m128i low = _mm_set1_epi8(0x1f);
            __m128i bad = _mm_or_si128(_mm_cmpeq_epi8(_mm_max_epu8(v, low), low),
                                       _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
                                                    _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))));
            hi |= (unsigned)_mm_movemask_epi8(v); /* bytes >= 0x80 (some perhaps taken later) */
            unsigned m = (unsigned)_mm_movemask_epi8(bad);
            _mm_storeu_si128((__m128i *)(void *)(buf + l), v);
            if (m == 0) {
                l += 16;
                i += 16;
                continue;
            }
            /* The clean bytes before the first bad one stay; that one is escaped. */
            unsigned k = (unsigned)__builtin_ctz(m);
            l = put_byte(buf, l + k, (unsigned char)s[i + k]);
            i += k + 1;
            continue;
        }
#endif
        if (n - i >= 8 && l + 8 + 6 <= cap) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (needs_escape(w) == 0) {
                hi |= w & HIGHS;
                memcpy(buf + l, &w, 8);
                l += 8;
                i += 8;
                continue;
            }
        }
        size_t end = n - i > 8 ? i + 8 : n;
        for (; i < end; i++) {
            unsigned char c = (unsigned char)s[i];
            if (l + 7 > cap)
                return -1;
            hi |= c & 0x80;
            l = put_byte(buf, l, c);
        }
    }
    if (l + 1 > cap)
        return -1;
    buf[l++] = '"';
    *len = l;
    if (high != NULL)
        *high = hi != 0;
    return 0;
}

int sl_json_put_string(char *buf, size_t *len, size_t cap, const char *s, size_t n)
{
    return sl_json_put_string_high(buf, len, cap, s, n, NULL);
}
