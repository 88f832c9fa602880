/*
 * What a sink sends: request bodies built from messages (the batch builder). Pure: no libuv, bytes
 * in, bytes out.
 *
 * Formats:
 *   ndjson  one envelope per line: {"id","topic"[,"event"],"data"[,"encoding":"base64"]}
 *   json    the same envelopes as one JSON array
 *   raw     one message per request, the payload bytes unchanged
 * A gap (a lossy stream fell behind the ring) is an envelope of its own,
 * {"sluice":"gap","topic","from","to","missed"}, in the batch that follows it; in raw format it
 * is a request of its own (header sluice-control: gap).
 */
#ifndef SL_SINK_BATCH_H
#define SL_SINK_BATCH_H

#include <stddef.h>
#include <stdint.h>

typedef enum { SL_FMT_NDJSON = 0, SL_FMT_JSON, SL_FMT_RAW } sl_sink_format_t;
int sl_sink_format_parse(const char *s, sl_sink_format_t *out);

/* A growable buffer charged to the memory budget (sl_brealloc). Owned by whoever embeds it;
 * freed by sl_bbuf_free. */
typedef struct sl_bbuf {
    char *p;
    size_t len, cap;
} sl_bbuf_t;
void sl_bbuf_reserve(sl_bbuf_t *b, size_t more);
void sl_bbuf_put(sl_bbuf_t *b, const void *s, size_t n);
void sl_bbuf_free(sl_bbuf_t *b);

/* Starts a body (json: '['). */
void sl_batch_begin(sl_bbuf_t *b, sl_sink_format_t fmt);
/* Adds one message (the n-th of the body, counting from 0). raw: the payload itself, n must
 * be 0. */
void sl_batch_add(sl_bbuf_t *b, sl_sink_format_t fmt, uint32_t n, const char *topic,
                  size_t topic_len, const char *epoch_hex, uint64_t seq, const char *event,
                  const char *payload, size_t len);
/* The most bytes sl_batch_put_line writes for a message with these lengths. */
size_t sl_batch_line_max(size_t topic_len, size_t event_len, size_t len);
/* Writes one ndjson envelope and its newline into out, which holds sl_batch_line_max bytes at
 * least; returns its length. Allocates nothing and touches no budget, so it may run on a
 * worker thread over immutable inputs. */
size_t sl_batch_put_line(char *out, const char *topic, size_t topic_len, const char *epoch_hex,
                         uint64_t seq, const char *event, const char *payload, size_t len);
/* Adds a gap envelope (missed may be 0 when unknown: "missed":null). */
void sl_batch_add_gap(sl_bbuf_t *b, sl_sink_format_t fmt, uint32_t n, const char *topic,
                      size_t topic_len, const char *epoch_hex, uint64_t from, uint64_t to,
                      uint64_t missed);
/* Ends a body (json: ']'). */
void sl_batch_end(sl_bbuf_t *b, sl_sink_format_t fmt);
const char *sl_batch_content_type(sl_sink_format_t fmt);

#endif
