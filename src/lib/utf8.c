/*
 * UTF-8 validation (see utf8.h), incremental so that a text message split across WebSocket
 * fragments is checked as it arrives.
 */
#include "lib/utf8.h"

#include <string.h>

/* The state packs the continuation bytes still needed (bits 0-1) and the allowed range of the
 * next byte (lo in bits 8-15, hi in bits 16-23), which is narrower than 80..BF only right after
 * E0, ED, F0 and F4 (overlongs, surrogates, beyond U+10FFFF). */
#define U8_STATE(need, lo, hi) ((uint32_t)(need) | ((uint32_t)(lo) << 8) | ((uint32_t)(hi) << 16))

int sl_utf8_feed(uint32_t *state, const uint8_t *s, size_t n)
{
    uint32_t st = *state;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        uint32_t need = st & 3;
        if (need > 0) {
            uint8_t lo = (uint8_t)(st >> 8), hi = (uint8_t)(st >> 16);
            if (c < lo || c > hi)
                return -1;
            st = need - 1 == 0 ? 0 : U8_STATE(need - 1, 0x80, 0xbf);
            continue;
        }
        if (c < 0x80) {
            /* The common case: skip ASCII runs, eight bytes at a time while no byte of the
             * word has its high bit set, then byte by byte up to the next non-ASCII byte. */
            while (n - (i + 1) >= 8) {
                uint64_t w;
                memcpy(&w, s + i + 1, 8);
                if (w & UINT64_C(0x8080808080808080))
                    break;
                i += 8;
            }
            while (i + 1 < n && s[i + 1] < 0x80)
                i++;
        } else if (c >= 0xc2 && c <= 0xdf) {
            st = U8_STATE(1, 0x80, 0xbf);
        } else if (c == 0xe0) {
            st = U8_STATE(2, 0xa0, 0xbf);
        } else if (c == 0xed) {
            st = U8_STATE(2, 0x80, 0x9f);
        } else if (c >= 0xe1 && c <= 0xef) {
            st = U8_STATE(2, 0x80, 0xbf);
        } else if (c == 0xf0) {
            st = U8_STATE(3, 0x90, 0xbf);
        } else if (c >= 0xf1 && c <= 0xf3) {
            st = U8_STATE(3, 0x80, 0xbf);
        } else if (c == 0xf4) {
            st = U8_STATE(3, 0x80, 0x8f);
        } else {
            return -1;
        }
    }
    *state = st;
    return 0;
}

int sl_utf8_valid(const void *s, size_t n)
{
    uint32_t st = 0;
    return sl_utf8_feed(&st, s, n) == 0 && st == 0;
}
