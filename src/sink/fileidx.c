/*
 * File sink bookkeeping (see fileidx.h).
 */
#include "sink/fileidx.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sl_fileidx_format(const sl_fileidx_rec_t *r, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s %" PRIu64 " %" PRIu64 "\n", r->epoch, r->seq, r->size);
    return n > 0 && (size_t)n < cap ? n : -1;
}

static int parse_u64(const char **p, const char *end, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    if (s >= end || *s < '0' || *s > '9')
        return -1;
    while (s < end && *s >= '0' && *s <= '9') {
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
        s++;
    }
    *p = s;
    *out = v;
    return 0;
}

int sl_fileidx_parse(const char *line, size_t len, sl_fileidx_rec_t *r)
{
    const char *end = line + len;
    const char *sp = memchr(line, ' ', len);
    if (sp == NULL || sp == line || (size_t)(sp - line) > SL_EPOCH_HEX_MAX)
        return -1;
    for (const char *c = line; c < sp; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
            return -1;
    sl_fileidx_rec_t t;
    memcpy(t.epoch, line, (size_t)(sp - line));
    t.epoch[sp - line] = '\0';
    const char *p = sp + 1;
    if (parse_u64(&p, end, &t.seq) != 0 || p >= end || *p != ' ')
        return -1;
    p++;
    if (parse_u64(&p, end, &t.size) != 0 || p != end)
        return -1;
    *r = t;
    return 0;
}

int sl_fileidx_last(const char *buf, size_t len, sl_fileidx_rec_t *r, size_t *end)
{
    /* Walk back over complete lines (each ends in '\n'); the last that parses wins. */
    size_t stop = len;
    while (stop > 0 && buf[stop - 1] != '\n')
        stop--; /* a torn last line */
    while (stop > 0) {
        size_t nl = stop - 1; /* the newline ending this line */
        size_t start = nl;
        while (start > 0 && buf[start - 1] != '\n')
            start--;
        if (sl_fileidx_parse(buf + start, nl - start, r) == 0) {
            *end = stop;
            return 1;
        }
        stop = start;
    }
    return 0;
}

int sl_fileseg_name(uint32_t index, const char *ext, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%010" PRIu32 ".%s", index, ext);
    return n > 0 && (size_t)n < cap ? n : -1;
}

uint32_t sl_fileseg_parse(const char *name, const char *ext)
{
    size_t el = strlen(ext);
    if (strlen(name) != 11 + el || name[10] != '.' || strcmp(name + 11, ext) != 0)
        return 0;
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (name[i] < '0' || name[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    return v <= UINT32_MAX ? (uint32_t)v : 0;
}

int sl_fileseg_rotate_due(uint64_t size, uint64_t opened_ms, uint64_t now_ms, uint64_t rotate_bytes,
                          uint64_t rotate_ms)
{
    if (size == 0)
        return 0;
    if (size >= rotate_bytes)
        return 1;
    return rotate_ms > 0 && now_ms >= opened_ms && now_ms - opened_ms >= rotate_ms;
}

int sl_fileidx_written(const sl_fileidx_rec_t *last, const char *epoch, uint64_t seq)
{
    return last != NULL && seq <= last->seq && strcmp(last->epoch, epoch) == 0;
}

uint32_t sl_fileidx_skip(const sl_fileidx_rec_t *last, const char *epoch, const uint64_t *seqs,
                         uint32_t n)
{
    uint32_t i = 0;
    while (i < n && sl_fileidx_written(last, epoch, seqs[i]))
        i++;
    return i;
}
