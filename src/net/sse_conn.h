/*
 * Server-Sent Events subscribers: the response head and the output side of the SSE transport
 * (messages as their shared frames, gap/reset/overflow events, heartbeats, the shutdown
 * `retry:`). The generic delivery path (net/conn.c) calls it through sl_sse_transport.
 */
#ifndef SL_SSE_CONN_H
#define SL_SSE_CONN_H

#include "net/conn.h"

/* The SSE transport table (net/conn.h). */
extern const sl_transport_t sl_sse_transport;

/* Answers 200 with the event-stream head and turns the connection into an SSE subscriber on
 * `topics` (n of them) from `starts`. `multi` selects multi-topic ids. Copies what it needs.
 * Returns 0 or SL_EOVERLOAD (answered). */
int sl_sse_subscribe(sl_conn_t *c, sl_topic_t **topics, const sl_start_t *starts, uint32_t n,
                     int multi);

#endif
