/*
 * libFuzzer target: SSE encoding. Whatever the payload, a standard SSE parser must see exactly
 * one event whose data is the payload with CR and CRLF read as LF.
 */
#include "lib/sse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    size_t need = sl_sse_data_len(p, size);
    char *buf = malloc(need + 1);
    char *end = sl_sse_put_data(buf, p, size);
    if ((size_t)(end - buf) != need)
        abort();
    *end++ = '\n';
    /* Parse: lines end at CR, LF or CRLF; data appends value + LF; a blank line dispatches. */
    char *got = malloc(size + need + 1);
    size_t glen = 0;
    int events = 0, dispatched_data = 0;
    size_t i = 0, len = (size_t)(end - buf);
    while (i < len) {
        size_t s = i;
        while (i < len && buf[i] != '\r' && buf[i] != '\n')
            i++;
        size_t e = i;
        if (i < len && buf[i] == '\r' && i + 1 < len && buf[i + 1] == '\n')
            i++;
        i++;
        if (e == s) {
            if (glen > 0 || dispatched_data) {
                events++;
            }
            continue;
        }
        if (e - s < 5 || memcmp(buf + s, "data:", 5) != 0)
            abort(); /* only data lines may appear */
        size_t v = s + 5;
        if (v < e && buf[v] == ' ')
            v++;
        memcpy(got + glen, buf + v, e - v);
        glen += e - v;
        got[glen++] = '\n';
        dispatched_data = 1;
    }
    if (events != 1 || glen == 0)
        abort();
    glen--; /* the last LF is not part of the data */
    /* The expected data: the payload with CRLF and CR as LF. */
    size_t o = 0;
    for (size_t k = 0; k < size; k++) {
        char c = p[k];
        if (c == '\r') {
            c = '\n';
            if (k + 1 < size && p[k + 1] == '\n')
                k++;
        }
        if (o >= glen || got[o] != c)
            abort();
        o++;
    }
    if (o != glen)
        abort();
    free(got);
    free(buf);
    return 0;
}
