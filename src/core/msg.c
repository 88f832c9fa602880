/*
 * Messages (see msg.h): built once per publish with their SSE frame, and the WebSocket
 * encodings built on first use and shared by every reader; bare messages (no frame) for
 * read-backs that no SSE reader will see; reference counts and the budget's evictable bytes.
 */
#include "core/msg.h"

#include "core/topic.h"
#include "lib/budget.h"
#include "lib/sse.h"
#include "lib/ws.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The largest "id: <16 hex>-<20 digits>\n". */
#define ID_LINE_MAX (4 + 16 + 1 + 20 + 1)

static size_t msg_sizes(const char *event, const char *payload, size_t payload_len,
                        size_t *frame_len, int *split)
{
    size_t ev = event ? strlen(event) : 0;
    *split = sl_sse_needs_split(payload, payload_len);
    *frame_len = ID_LINE_MAX + (ev ? 7 + ev + 1 : 0) + sl_sse_data_len(payload, payload_len) + 1;
    return sizeof(sl_msg_t) + *frame_len + (*split ? payload_len : 0) + (ev ? ev + 1 : 0);
}

size_t sl_msg_charge(size_t name_len, const char *event, const char *payload, size_t payload_len)
{
    size_t frame_len;
    int split;
    (void)name_len;
    return sl_budget_size(msg_sizes(event, payload, payload_len, &frame_len, &split));
}

/* A message of `size` bytes in all (header and what follows it), zeroed header, one reference;
 * its charge is the caller's to make. */
static sl_msg_t *msg_alloc(size_t size, uint64_t seq)
{
    sl_msg_t *m = sl_malloc(size);
    memset(m, 0, sizeof(*m));
    m->refs = 1;
    m->seq = seq;
    m->charge = sl_budget_size(size);
    sl_list_init(&m->all);
    return m;
}

/* "id: <epoch, 16 hex digits>-<seq>\n", as sprintf("%016" PRIx64 "-%" PRIu64) would write it,
 * without the format machinery: this runs once for every message published. */
static char *put_id_line(char *p, uint64_t epoch, uint64_t seq)
{
    static const char hex[] = "0123456789abcdef";
    memcpy(p, "id: ", 4);
    p += 4;
    for (int i = 15; i >= 0; i--, epoch >>= 4)
        p[i] = hex[epoch & 15];
    p += 16;
    *p++ = '-';
    char d[20];
    int n = 0;
    do {
        d[n++] = (char)('0' + seq % 10);
        seq /= 10;
    } while (seq != 0);
    while (n > 0)
        *p++ = d[--n];
    *p++ = '\n';
    return p;
}

sl_msg_t *sl_msg_new(const sl_topic_t *t, uint64_t seq, const char *event, const char *payload,
                     size_t payload_len)
{
    size_t frame_max;
    int split;
    size_t size = msg_sizes(event, payload, payload_len, &frame_max, &split);
    /* Charged by the caller (sl_hub_publish reserves the batch first); freed with its charge
     * by the last sl_msg_unref. */
    sl_msg_t *m = msg_alloc(size, seq);
    m->frame = (char *)(m + 1);

    char *p = m->frame;
    p = put_id_line(p, t->epoch, seq);
    m->id_line_len = (size_t)(p - m->frame);
    char *after = m->frame + frame_max;
    if (event != NULL) {
        size_t ev = strlen(event);
        memcpy(p, "event: ", 7);
        memcpy(p + 7, event, ev);
        p[7 + ev] = '\n';
        p += 7 + ev + 1;
    }
    char *data = p;
    p = sl_sse_put_data(p, payload, payload_len);
    *p++ = '\n';
    m->frame_len = (size_t)(p - m->frame);
    if (split) {
        memcpy(after, payload, payload_len);
        m->payload = after;
        after += payload_len;
    } else {
        m->payload = data + 6; /* "data: " */
    }
    m->payload_len = payload_len;
    if (event != NULL) {
        size_t ev = strlen(event);
        memcpy(after, event, ev + 1);
        m->event = after;
        m->event_len = (uint16_t)ev;
    }
    return m;
}

static size_t bare_size(size_t event_len, size_t payload_len)
{
    return sizeof(sl_msg_t) + payload_len + (event_len ? event_len + 1 : 0);
}

size_t sl_msg_bare_charge(size_t event_len, size_t payload_len)
{
    return sl_budget_size(bare_size(event_len, payload_len));
}

sl_msg_t *sl_msg_new_bare(uint64_t seq, const char *event, size_t event_len, const char *payload,
                          size_t payload_len)
{
    size_t size = bare_size(event_len, payload_len);
    sl_msg_t *m = msg_alloc(size, seq);
    char *p = (char *)(m + 1);
    memcpy(p, payload, payload_len);
    m->payload = p;
    m->payload_len = payload_len;
    if (event_len > 0) {
        memcpy(p + payload_len, event, event_len);
        p[payload_len + event_len] = '\0';
        m->event = p + payload_len;
        m->event_len = (uint16_t)event_len;
    }
    return m;
}

size_t sl_msg_block_size(uint32_t cap)
{
    return sizeof(sl_msg_block_t) + (size_t)cap * sizeof(sl_msg_t);
}

sl_msg_block_t *sl_msg_block_new_in(void *mem, size_t mem_size, void *buf, size_t buf_size,
                                    uint32_t cap)
{
    assert(mem_size >= sl_msg_block_size(cap));
    sl_msg_block_t *b = mem;
    b->live = b->n = b->nevents = 0;
    b->cap = cap;
    b->buf = buf;
    b->buf_size = buf_size;
    b->release = NULL;
    b->mem_size = mem_size;
    b->release_mem = NULL;
    b->charge = sl_budget_size(mem_size) + sl_budget_size(buf_size);
    return b;
}

sl_msg_block_t *sl_msg_block_new(void *buf, size_t buf_size, uint32_t cap)
{
    size_t size = sl_msg_block_size(cap);
    return sl_msg_block_new_in(sl_malloc(size), size, buf, buf_size, cap);
}

sl_msg_t *sl_msg_block_add(sl_msg_block_t *b, uint64_t seq, const char *event, size_t event_len,
                           const char *payload, size_t payload_len)
{
    assert(b->n < b->cap);
    sl_msg_t *m = &b->msgs[b->n++];
    b->live++;
    memset(m, 0, sizeof(*m));
    m->refs = 1;
    m->seq = seq;
    m->block = b;
    sl_list_init(&m->all);
    m->payload = payload;
    m->payload_len = payload_len;
    if (event_len > 0) {
        char *ev = sl_malloc(event_len + 1);
        memcpy(ev, event, event_len);
        ev[event_len] = '\0';
        m->event = ev;
        m->event_len = (uint16_t)event_len;
        b->charge += sl_budget_size(event_len + 1);
        b->nevents++;
    }
    return m;
}

static void block_dispose(sl_msg_block_t *b)
{
    /* Only a block with events walks its messages (a 4 MiB block holds about 16,000). */
    for (uint32_t i = 0; b->nevents > 0 && i < b->n; i++)
        free((char *)b->msgs[i].event);
    if (b->release != NULL)
        b->release(b->buf, b->buf_size);
    else
        free(b->buf);
    if (b->release_mem != NULL)
        b->release_mem(b, b->mem_size);
    else
        free(b);
}

void sl_msg_block_free(sl_msg_block_t *b)
{
    block_dispose(b);
}

void sl_msg_link(sl_list_t *list, sl_msg_t *m)
{
    sl_list_insert_tail(list, &m->all);
    if (m->refs == 1)
        sl_budget.evictable += m->charge;
}

void sl_msg_unlink(sl_msg_t *m)
{
    if (m->refs == 1)
        sl_budget.evictable -= m->charge;
    sl_list_remove(&m->all);
}

void sl_msg_unref(sl_msg_t *m)
{
    assert(m->refs > 0);
    if (--m->refs > 0) {
        if (m->refs == 1 && sl_list_linked(&m->all))
            sl_budget.evictable += m->charge;
        return;
    }
    assert(!sl_list_linked(&m->all));
    sl_bfree(m->multi_id, m->multi_id_cap);
    sl_bfree(m->ws_json, m->ws_json_cap);
    sl_budget_release(m->charge);
    if (m->block != NULL) {
        /* Part of a block: the block goes with its last message. */
        sl_msg_block_t *b = m->block;
        if (--b->live == 0) {
            sl_budget_release(b->charge);
            block_dispose(b);
        }
        return;
    }
    free(m);
}

const char *sl_msg_multi_id(sl_msg_t *m, const char *stream_epoch_hex, size_t *len)
{
    if (m->multi_id == NULL) {
        assert(m->topic != NULL);
        size_t cap = 4 + 16 + 1 + 20 + 1 + m->topic->name_len + 2;
        m->multi_id = sl_balloc(cap);
        m->multi_id_cap = (uint16_t)cap;
        int n = snprintf(m->multi_id, cap, "id: %s-%" PRIu64 ":%s\n", stream_epoch_hex, m->gseq,
                         m->topic->name);
        m->multi_id_len = (uint16_t)n;
    }
    *len = m->multi_id_len;
    return m->multi_id;
}

const uint8_t *sl_msg_ws_header(sl_msg_t *m, size_t *len)
{
    if (m->ws_hdr_len == 0) {
        int op = sl_utf8_valid(m->payload, m->payload_len) ? SL_WS_TEXT : SL_WS_BINARY;
        m->ws_hdr_len = (uint8_t)sl_ws_frame_header(m->ws_hdr, op, m->payload_len);
    }
    *len = m->ws_hdr_len;
    return m->ws_hdr;
}

/* Bytes of s[0..n) as the inside of a JSON string (sl_json_put_string's escaping). */
static size_t json_inner_len(const char *s, size_t n)
{
    size_t l = n;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            l += 1;
        else if (c < 0x20)
            l += 5;
    }
    return l;
}

const char *sl_msg_ws_json(sl_msg_t *m, const char *stream_epoch_hex, size_t *len)
{
    if (m->ws_json == NULL) {
        assert(m->topic != NULL);
        const sl_topic_t *t = m->topic;
        size_t hdr_len;
        int b64 = !sl_utf8_valid(m->payload, m->payload_len);
        (void)sl_msg_ws_header(m, &hdr_len);
        size_t data = b64 ? 4 * ((m->payload_len + 2) / 3) + 2
                          : json_inner_len(m->payload, m->payload_len) + 2;
        size_t cap = SL_WS_HDR_MAX + 160 + 2 * t->name_len + (m->event ? m->event_len + 2 : 4) +
                     data + (b64 ? 24 : 0);
        char *body = sl_balloc(cap);
        char *p = body + SL_WS_HDR_MAX;
        size_t room = cap - SL_WS_HDR_MAX, l = 0;
        l += (size_t)snprintf(p, room,
                              "{\"id\":\"%s-%" PRIu64 "\",\"sid\":\"%s-%" PRIu64
                              ":%s\",\"topic\":\"%s\",\"event\":",
                              t->epoch_hex, m->seq, stream_epoch_hex, m->gseq, t->name, t->name);
        if (m->event != NULL)
            sl_json_put_string(p, &l, room, m->event, m->event_len);
        else
            l += (size_t)snprintf(p + l, room - l, "null");
        memcpy(p + l, ",\"data\":", 8);
        l += 8;
        if (b64) {
            p[l++] = '"';
            l += sl_base64_encode(p + l, m->payload, m->payload_len);
            l += (size_t)snprintf(p + l, room - l, "\",\"encoding\":\"base64\"}");
        } else {
            sl_json_put_string(p, &l, room, m->payload, m->payload_len);
            p[l++] = '}';
        }
        uint8_t hdr[SL_WS_HDR_MAX];
        size_t h = sl_ws_frame_header(hdr, SL_WS_TEXT, l);
        memcpy(p - h, hdr, h);
        /* The frame starts h bytes before the envelope; move it to the front. */
        memmove(body, p - h, h + l);
        m->ws_json = body;
        m->ws_json_len = h + l;
        m->ws_json_cap = cap;
    }
    *len = m->ws_json_len;
    return m->ws_json;
}
