/*
 * Messages: immutable once published, reference-counted (the ring holds one reference, each
 * in-flight write or disk job another), encoded once for every reader: the SSE frame at
 * publish, the WebSocket encodings on first use. Loop thread only.
 */
#ifndef SL_MSG_H
#define SL_MSG_H

#include "lib/budget.h"
#include "lib/util.h"

#include <stddef.h>
#include <stdint.h>

struct sl_topic;
struct sl_msg_block;

/* An immutable published message. Owned by its references: the ring's and each in-flight
 * write's; freed by the last sl_msg_unref(). Its budget charge is released when freed. */
typedef struct sl_msg {
    uint32_t refs;
    uint16_t event_len;
    uint16_t multi_id_len, multi_id_cap;
    uint64_t seq;
    uint64_t gseq;          /* server-wide publish counter, for multi-topic ordering */
    uint64_t ts_ms;         /* monotonic publish time */
    uint64_t cum_bytes;     /* topic's payload bytes published up to and including this one */
    struct sl_topic *topic; /* valid only while the message is in its topic's ring */
    sl_list_t all;          /* hub publish-order list, while in a ring */
    size_t charge;          /* bytes charged to the memory budget */
    const char *payload;    /* may point inside `frame` */
    size_t payload_len;
    const char *event; /* NUL-terminated, or NULL */
    char *frame;       /* the SSE event: "id: ...\n" then the rest; NULL in a bare message */
    size_t frame_len;
    size_t id_line_len; /* length of the leading "id: ...\n" line */
    char *multi_id;     /* "id: <epoch>-<gseq>:<topic>\n", encoded on first use */
    /* WebSocket encodings, built on first use by a WebSocket reader and shared from then on:
     * the header of the raw frame (text if the payload is UTF-8, else binary), and the whole
     * format=json frame (header and envelope). */
    uint8_t ws_hdr_len; /* 0 until built */
    uint8_t ws_hdr[10];
    char *ws_json;
    size_t ws_json_len, ws_json_cap;
    struct sl_msg_block *block; /* a bare message of a read-back block, else NULL */
} sl_msg_t;

/* Bare messages read back together (sl_msg_block_new): one allocation holds them all, and
 * their payloads point into the records' buffer, which the block owns. The block is charged to
 * the budget as a whole (`charge`; its messages' own charges are 0) and freed, charge released,
 * when the last of its messages is unreferenced. */
typedef struct sl_msg_block {
    uint32_t live; /* messages not yet freed */
    uint32_t n, cap;
    uint32_t nevents; /* messages with an event (an allocation each) */
    size_t charge;
    void *buf; /* the records' bytes */
    size_t buf_size;
    /* Where buf goes when the block is freed (on the loop thread): NULL frees it; the log's
     * reader sets its pool of read buffers (store/lossless.c). */
    void (*release)(void *buf, size_t size);
    /* The block's own memory (mem_size bytes) goes there too when set (on the loop thread),
     * else it is freed. */
    size_t mem_size;
    void (*release_mem)(void *mem, size_t size);
    sl_msg_t msgs[];
} sl_msg_block_t;

/* Builds a message for topic `t` (not yet appended): encodes its SSE frame once. The payload
 * and event are copied. `charge` is set; the caller must have reserved it in the budget.
 * Returns the message with one reference (the caller's, which sl_topic_append takes over). */
sl_msg_t *sl_msg_new(const struct sl_topic *t, uint64_t seq, const char *event, const char *payload,
                     size_t payload_len);

/* A message without an SSE frame (frame NULL, frame_len 0): payload and event copied, nothing
 * encoded. For messages read back from storage for a reader whose sub never sends SSE frames
 * (sl_sub_ops_t.frameless: a sink); such a message must never reach an SSE connection. Its
 * charge is set (sl_msg_bare_charge) and not yet charged. Returns it with one reference. */
sl_msg_t *sl_msg_new_bare(uint64_t seq, const char *event, size_t event_len, const char *payload,
                          size_t payload_len);
size_t sl_msg_bare_charge(size_t event_len, size_t payload_len);

/* A block for up to `cap` bare messages whose payloads lie in `buf` (malloc'ed, buf_size
 * bytes; the block takes ownership). Touches no shared state, so a worker thread may build a
 * block; the loop thread charges it (sl_budget_charge(b->charge)) before any of its messages
 * is used, and must not use a block that has no message (sl_msg_block_free it instead). */
sl_msg_block_t *sl_msg_block_new(void *buf, size_t buf_size, uint32_t cap);
/* The bytes a block for `cap` messages takes. */
size_t sl_msg_block_size(uint32_t cap);
/* The same block made in `mem` (malloc'ed, mem_size >= sl_msg_block_size(cap) bytes, charged
 * as a whole), which it takes over. */
sl_msg_block_t *sl_msg_block_new_in(void *mem, size_t mem_size, void *buf, size_t buf_size,
                                    uint32_t cap);
/* Adds a bare message to b (fewer than cap so far): its payload stays where it is (inside
 * b->buf); the event, if any, is copied. Returns it, with one reference. Any thread. */
sl_msg_t *sl_msg_block_add(sl_msg_block_t *b, uint64_t seq, const char *event, size_t event_len,
                           const char *payload, size_t payload_len);
/* Frees a block none of whose messages was handed out (an error path); releases nothing. */
void sl_msg_block_free(sl_msg_block_t *b);

/* The number of bytes sl_msg_new will charge for this message. */
size_t sl_msg_charge(size_t name_len, const char *event, const char *payload, size_t payload_len);

/* A reference for a write or a disk job. A ring message that such a reference holds is not
 * evictable (budget.h): evicting it would free nothing until the reference is dropped. */
static inline void sl_msg_ref(sl_msg_t *m)
{
    if (m->refs++ == 1 && sl_list_linked(&m->all))
        sl_budget.evictable -= m->charge;
}
void sl_msg_unref(sl_msg_t *m);

/* Puts a new message (one reference, the ring's) on the hub's eviction list, or takes it off
 * (when it leaves its ring), keeping sl_budget.evictable. */
void sl_msg_link(sl_list_t *list, sl_msg_t *m);
void sl_msg_unlink(sl_msg_t *m);

/* The lazily built multi-topic id line of `m` ("id: <stream_epoch>-<gseq>:<topic>\n"). The
 * message must still be in its ring the first time (it needs the topic name); later calls
 * return the cached line. Its bytes are charged to the budget. */
const char *sl_msg_multi_id(sl_msg_t *m, const char *stream_epoch_hex, size_t *len);

/* The header of m's raw WebSocket frame (the payload follows it unchanged); *len is set. */
const uint8_t *sl_msg_ws_header(sl_msg_t *m, size_t *len);

/* m's format=json WebSocket frame: header and envelope
 * {"id","sid","topic","event","data"[,"encoding":"base64"]}. Like sl_msg_multi_id, the message
 * must be in its ring the first time; the frame is charged to the budget and cached. */
const char *sl_msg_ws_json(sl_msg_t *m, const char *stream_epoch_hex, size_t *len);

#endif
