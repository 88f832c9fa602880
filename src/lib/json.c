/*
 * JSON output helpers (see json.h). Payloads are mostly runs of bytes that need no escaping,
 * so the escaper tests thirty-two bytes at a time where the CPU has AVX2, else sixteen (SSE2,
 * x86-64's baseline), else eight, and copies a clean block whole; in a block of 32 or 16
 * holding a quote, a backslash or a control byte, the bytes before the first of them are kept
 * and that one is escaped, and an eight-byte one goes through the byte loop. The last bytes
 * of a string of 16 or more are tested as the string's last sixteen, so a payload's tail does
 * not go byte by byte.
 */
#include "lib/json.h"

#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__SSE2__) && defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define JSON_WIDE 1
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

int sl_json_wide;

#ifdef JSON_WIDE
__attribute__((constructor)) static void json_wide_init(void)
{
    __builtin_cpu_init();
    sl_json_wide = __builtin_cpu_supports("avx2") ? 1 : 0;
}

/* Copies the clean 32-byte blocks of s[*ip..n) to buf[*lp..) while each fits as the byte loop
 * would see it; stops at the first byte to escape (left to the caller) or with fewer than 32
 * bytes left. *hi gathers the bytes >= 0x80. */
__attribute__((target("avx2"))) static void
clean_run32(char *buf, size_t *lp, size_t cap, const char *s, size_t n, size_t *ip, uint64_t *hi)
{
    size_t l = *lp, i = *ip;
    const __m256i low = _mm256_set1_epi8(0x1f), quote = _mm256_set1_epi8('"'),
                  bslash = _mm256_set1_epi8('\\');
    while (n - i >= 32 && l + 32 + 6 <= cap) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(s + i));
        __m256i bad = _mm256_or_si256(
            _mm256_cmpeq_epi8(_mm256_max_epu8(v, low), low),
            _mm256_or_si256(_mm256_cmpeq_epi8(v, quote), _mm256_cmpeq_epi8(v, bslash)));
        *hi |= (uint32_t)_mm256_movemask_epi8(v);
        uint32_t m = (uint32_t)_mm256_movemask_epi8(bad);
        _mm256_storeu_si256((__m256i *)(void *)(buf + l), v);
        if (m != 0) {
            unsigned k = (unsigned)__builtin_ctz(m);
            l += k;
            i += k;
            break;
        }
        l += 32;
        i += 32;
    }
    *lp = l;
    *ip = i;
}
#endif

#ifdef __SSE2__
/* The bytes of a 16-byte block that need escaping, as a bit mask. */
static inline unsigned bad16(__m128i v)
{
    /* max(v, 0x1f) == 0x1f exactly for the bytes below 0x20 (unsigned) */
    __m128i low = _mm_set1_epi8(0x1f);
    __m128i bad = _mm_or_si128(_mm_cmpeq_epi8(_mm_max_epu8(v, low), low),
                               _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
                                            _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))));
    return (unsigned)_mm_movemask_epi8(bad);
}
#endif

int sl_json_put_string_high(char *buf, size_t *len, size_t cap, const char *s, size_t n, int *high)
{
    size_t l = *len;
    uint64_t hi = 0;
    if (l + 2 > cap)
        return -1;
    buf[l++] = '"';
    size_t i = 0;
#ifdef JSON_WIDE
    int wide = sl_json_wide;
#endif
    while (i < n) {
        /* A block is taken 32, 16 (or eight) bytes at a time when the byte loop would have
         * found room for each of its bytes (7 bytes of headroom before the last of them), so
         * what fits and what does not is the same as byte by byte. */
#ifdef JSON_WIDE
        if (wide && n - i >= 32) {
            clean_run32(buf, &l, cap, s, n, &i, &hi); /* up to a byte to escape, if any */
            if (i == n)
                break;
        }
#endif
#ifdef __SSE2__
        if (n - i >= 16 && l + 16 + 6 <= cap) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
            hi |= (unsigned)_mm_movemask_epi8(v); /* bytes >= 0x80 (some perhaps taken later) */
            unsigned m = bad16(v);
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
        if (n >= 16 && l + 16 + 6 <= cap) {
            /* The last r < 16 bytes, tested as the last sixteen of s (the first 16 - r were
             * taken already, and are bytes of s: the high-byte test may see them again). */
            size_t r = n - i;
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + n - 16));
            hi |= (unsigned)_mm_movemask_epi8(v);
            unsigned m = bad16(v) >> (16 - r);
            size_t k = m == 0 ? r : (size_t)__builtin_ctz(m);
            memcpy(buf + l, s + i, k);
            l += k;
            i += k;
            if (i < n)
                l = put_byte(buf, l, (unsigned char)s[i++]);
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
