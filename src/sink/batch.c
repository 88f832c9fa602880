/*
 * Batch bodies and URL templates (see batch.h).
 */
#include "sink/batch.h"

#include "lib/budget.h"
#include "lib/sse.h"
#include "lib/ws.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

int sl_sink_format_parse(const char *s, sl_sink_format_t *out)
{
    if (strcmp(s, "ndjson") == 0)
        *out = SL_FMT_NDJSON;
    else if (strcmp(s, "json") == 0)
        *out = SL_FMT_JSON;
    else if (strcmp(s, "raw") == 0)
        *out = SL_FMT_RAW;
    else
        return -1;
    return 0;
}

void sl_bbuf_reserve(sl_bbuf_t *b, size_t more)
{
    if (b->cap - b->len >= more)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < more)
        cap *= 2;
    b->p = sl_brealloc(b->p, b->cap, cap);
    b->cap = cap;
}

void sl_bbuf_put(sl_bbuf_t *b, const void *s, size_t n)
{
    sl_bbuf_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void sl_bbuf_free(sl_bbuf_t *b)
{
    sl_bfree(b->p, b->cap);
    b->p = NULL;
    b->len = b->cap = 0;
}

void sl_batch_begin(sl_bbuf_t *b, sl_sink_format_t fmt)
{
    b->len = 0;
    if (fmt == SL_FMT_JSON)
        sl_bbuf_put(b, "[", 1);
}

static void sep(sl_bbuf_t *b, sl_sink_format_t fmt, uint32_t n)
{
    if (fmt == SL_FMT_JSON && n > 0)
        sl_bbuf_put(b, ",", 1);
}

static void put_str(sl_bbuf_t *b, const char *s, size_t n)
{
    /* A JSON string takes at most 6 bytes per byte and its quotes. */
    sl_bbuf_reserve(b, n * 6 + 2);
    size_t len = b->len;
    int rc = sl_json_put_string(b->p, &len, b->cap, s, n);
    (void)rc;
    b->len = len;
}

static void put_id(sl_bbuf_t *b, const char *epoch_hex, uint64_t seq)
{
    char id[64];
    int n = snprintf(id, sizeof(id), "\"%s-%" PRIu64 "\"", epoch_hex, seq);
    sl_bbuf_put(b, id, (size_t)n);
}

size_t sl_batch_line_max(size_t topic_len, size_t event_len, size_t len)
{
    /* {"id":"<16 hex>-<20 digits>","topic":S,"event":S,"data":S,"encoding":"base64"}\n, each
     * string at most 6 bytes a byte and its quotes (base64 takes fewer). */
    return 128 + 6 * topic_len + 6 * event_len + 6 * len;
}

/* One envelope, without a separator or newline, into out (sl_batch_line_max bytes at least). */
static size_t put_envelope(char *out, const char *topic, size_t topic_len, const char *epoch_hex,
                           uint64_t seq, const char *event, const char *payload, size_t len)
{
    size_t cap = sl_batch_line_max(topic_len, event != NULL ? strlen(event) : 0, len);
    /* {"id":"<epoch>-<seq>","topic": without printf (visible in a file sink's profile) */
    size_t el = strlen(epoch_hex), n = 0;
    memcpy(out, "{\"id\":\"", 7);
    n += 7;
    memcpy(out + n, epoch_hex, el);
    n += el;
    out[n++] = '-';
    char digits[20];
    size_t nd = 0;
    do {
        digits[nd++] = (char)('0' + seq % 10);
        seq /= 10;
    } while (seq > 0);
    while (nd > 0)
        out[n++] = digits[--nd];
    memcpy(out + n, "\",\"topic\":", 10);
    n += 10;
    (void)sl_json_put_string(out, &n, cap, topic, topic_len);
    if (event != NULL) {
        memcpy(out + n, ",\"event\":", 9);
        n += 9;
        (void)sl_json_put_string(out, &n, cap, event, strlen(event));
    }
    memcpy(out + n, ",\"data\":", 8);
    n += 8;
    /* Escaped at once; only a payload with a byte >= 0x80 is checked for UTF-8 as well, and
     * written again in base64 when it is not. */
    size_t at = n;
    int high = 0;
    (void)sl_json_put_string_high(out, &n, cap, payload, len, &high);
    if (!high || sl_utf8_valid(payload, len)) {
        out[n++] = '}';
    } else {
        n = at;
        out[n++] = '"';
        n += sl_base64_encode(out + n, payload, len);
        memcpy(out + n, "\",\"encoding\":\"base64\"}", 22);
        n += 22;
    }
    return n;
}

size_t sl_batch_put_line(char *out, const char *topic, size_t topic_len, const char *epoch_hex,
                         uint64_t seq, const char *event, const char *payload, size_t len)
{
    size_t n = put_envelope(out, topic, topic_len, epoch_hex, seq, event, payload, len);
    out[n++] = '\n';
    return n;
}

void sl_batch_add(sl_bbuf_t *b, sl_sink_format_t fmt, uint32_t n, const char *topic,
                  size_t topic_len, const char *epoch_hex, uint64_t seq, const char *event,
                  const char *payload, size_t len)
{
    if (fmt == SL_FMT_RAW) {
        sl_bbuf_put(b, payload, len);
        return;
    }
    sep(b, fmt, n);
    sl_bbuf_reserve(b, sl_batch_line_max(topic_len, event != NULL ? strlen(event) : 0, len));
    if (fmt == SL_FMT_NDJSON)
        b->len +=
            sl_batch_put_line(b->p + b->len, topic, topic_len, epoch_hex, seq, event, payload, len);
    else
        b->len +=
            put_envelope(b->p + b->len, topic, topic_len, epoch_hex, seq, event, payload, len);
}

void sl_batch_add_gap(sl_bbuf_t *b, sl_sink_format_t fmt, uint32_t n, const char *topic,
                      size_t topic_len, const char *epoch_hex, uint64_t from, uint64_t to,
                      uint64_t missed)
{
    sep(b, fmt, n);
    sl_bbuf_put(b, "{\"sluice\":\"gap\",\"topic\":", 24);
    put_str(b, topic, topic_len);
    sl_bbuf_put(b, ",\"from\":", 8);
    put_id(b, epoch_hex, from);
    sl_bbuf_put(b, ",\"to\":", 6);
    put_id(b, epoch_hex, to);
    char tail[48];
    int l = missed ? snprintf(tail, sizeof(tail), ",\"missed\":%" PRIu64 "}", missed)
                   : snprintf(tail, sizeof(tail), ",\"missed\":null}");
    sl_bbuf_put(b, tail, (size_t)l);
    if (fmt != SL_FMT_JSON)
        sl_bbuf_put(b, "\n", 1);
}

void sl_batch_end(sl_bbuf_t *b, sl_sink_format_t fmt)
{
    if (fmt == SL_FMT_JSON)
        sl_bbuf_put(b, "]", 1);
}

const char *sl_batch_content_type(sl_sink_format_t fmt)
{
    switch (fmt) {
    case SL_FMT_NDJSON:
        return "application/x-ndjson";
    case SL_FMT_JSON:
        return "application/json";
    case SL_FMT_RAW:
        return "application/octet-stream";
    }
    return "application/octet-stream";
}
