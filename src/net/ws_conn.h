/*
 * WebSocket connections after the handshake (RFC 6455): input framing and the protocol rules a
 * server must enforce, pings and the pong deadline, the close handshake, publishing what a
 * client sends, and the output side of the transport (messages as shared frames, markers and
 * control messages, close frames). The generic delivery path (net/conn.c) calls it through
 * sl_ws_transport.
 */
#ifndef SL_WS_CONN_H
#define SL_WS_CONN_H

#include "net/conn.h"

/* WebSocket connection modes (bits). */
enum { SL_WS_SUB = 1, SL_WS_PUB = 2 };

struct sl_ws_parser;

/* The WebSocket state of an upgraded connection. Owned by its connection and freed in its close
 * path (sl_ws_free). Control frames (pong, ping, close) and publish answers wait here until the
 * connection's single write in flight completes; the next write carries them first, ahead of
 * any message, so they are never queued behind data. */
typedef struct sl_ws {
    struct sl_ws_parser *parser; /* only while a frame or message is partly received */
    char *out;                   /* pending ack/error text frames */
    size_t out_len, out_cap;
    char *topic; /* the first topic's name: raw publishes go there */
    size_t topic_len;
    uint64_t ping_sent_ms; /* an unanswered ping reached the kernel then; 0 if none */
    uint64_t last_ping_ms; /* the last ping was queued then (its payload) */
    uint8_t mode;          /* SL_WS_SUB | SL_WS_PUB */
    uint8_t json;          /* format=json */
    uint8_t ack;           /* ack=1 */
    uint8_t ping_due;      /* a ping is queued for the next write */
    uint8_t ping_writing;  /* a ping is in the write in flight: its pong clock starts when done */
    uint8_t pong_pending;
    uint8_t pong_len;
    uint8_t close_pending; /* a close frame is owed: the final write */
    uint8_t close_reason;  /* sl_close_reason_t for the metrics */
    uint16_t close_code;
    uint8_t close_msg_len;
    char close_msg[123];
    uint8_t pong[125];
    /* A publish held while its lossless topic is full: one allocation holding the payload,
     * then the topic name, then the event type (NUL-terminated) if there is one. */
    char *held;
    size_t held_len, held_topic_len, held_size;
    uint8_t held_text, held_has_event;
} sl_ws_t;

/* The WebSocket transport table (net/conn.h). */
extern const sl_transport_t sl_ws_transport;

/* Options of a WebSocket connection, from its query string. */
typedef struct sl_ws_opts {
    uint8_t mode, json, ack;
} sl_ws_opts_t;

/* Answers the handshake with 101 (`accept` is the Sec-WebSocket-Accept value) and turns the
 * connection into a WebSocket on `topics` (n of them, may be 0 for a pure publisher) from
 * `starts`. `pub_topic` names the topic raw publishes go to (copied). Returns 0 or
 * SL_EOVERLOAD (answered 503). */
int sl_ws_upgrade(sl_conn_t *c, const char *accept, sl_topic_t **topics, const sl_start_t *starts,
                  uint32_t n, int multi, const sl_ws_opts_t *opts, const char *pub_topic,
                  size_t pub_topic_len);

/* Queues a close frame with `code` and `msg` (the final write of the connection) and stops
 * reading messages; `reason` is what the metrics will say. Idempotent: the first close wins. */
void sl_ws_fail(sl_conn_t *c, unsigned code, const char *msg, sl_close_reason_t reason);

#endif
