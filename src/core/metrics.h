/*
 * Counters and gauges, and their Prometheus text rendering. Every module bumps the fields of
 * the one global `sl_metrics`; rendering reads them together with the hub's topic table and
 * the budget. Gauges of connections change only where a connection is created and in its close
 * callback (see conn.c). Loop thread only.
 */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include "core/topic.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    SL_CLOSE_PEER = 0,    /* the peer closed or reset */
    SL_CLOSE_WRITE_STALL, /* pending data, no byte accepted for write_stall_timeout */
    SL_CLOSE_HEADER_TIMEOUT,
    SL_CLOSE_IDLE_TIMEOUT,
    SL_CLOSE_OVERFLOW, /* overflow policy disconnect */
    SL_CLOSE_SHUTDOWN,
    SL_CLOSE_ERROR,         /* a socket error */
    SL_CLOSE_PROTOCOL,      /* bad request, or `Connection: close` / an answered limit */
    SL_CLOSE_PING_TIMEOUT,  /* WebSocket: no pong within ws_pong_timeout */
    SL_CLOSE_WS_CLOSE,      /* WebSocket: a close handshake ended the connection */
    SL_CLOSE_BODY_TIMEOUT,  /* a request body or WebSocket message not complete in time */
    SL_CLOSE_TOKEN_EXPIRED, /* the connection's token expired */
    SL_CLOSE__COUNT,
} sl_close_reason_t;
const char *sl_close_reason_name(sl_close_reason_t r);

typedef enum {
    SL_REJECT_CONN_MAX = 0,
    SL_REJECT_CONN_PER_IP,
    SL_REJECT_CONN_BUDGET,
    SL_REJECT_CONN__COUNT,
} sl_conn_reject_t;

typedef enum {
    SL_REJECT_PUB_BUDGET = 0,
    SL_REJECT_PUB_TOO_LARGE,
    SL_REJECT_PUB_BAD_TOPIC,
    SL_REJECT_PUB_MAX_TOPICS,
    SL_REJECT_PUB_BAD_EVENT,
    SL_REJECT_PUB_RESERVED,      /* payload begins with the control-message prefix */
    SL_REJECT_PUB_BAD_ENVELOPE,  /* WebSocket json envelope malformed */
    SL_REJECT_PUB_NOT_PUBLISHER, /* data message on a subscribe-only WebSocket */
    SL_REJECT_PUB_TOPIC_FULL,    /* a lossless topic pushed back (429) */
    SL_REJECT_PUB_DISK_ERROR,    /* a lossless topic's log cannot be written (503) */
    SL_REJECT_PUB_DISK_TIMEOUT,  /* not on disk within max_publish_wait (503) */
    SL_REJECT_PUB_CTL_EVENT,     /* event type in the sluice. namespace */
    SL_REJECT_PUB_ORIGIN,        /* Origin not in the allow-list (403) */
    SL_REJECT_PUB_AUTH,          /* no valid token, or one that does not grant it (401/403) */
    SL_REJECT_PUB_RATE,          /* over publish_rate or publish_bytes_rate (429) */
    SL_REJECT_PUB_SOURCE_TOPIC,  /* under the prefix a Kafka source owns (409) */
    SL_REJECT_PUB__COUNT,
} sl_pub_reject_t;

/* Refusal reasons of core/auth.h (SL_AUTH_R__COUNT); here so metrics need not include it. */
#define SL_AUTH_REASONS 14

typedef enum {
    SL_REJECT_CURSOR_PER_TOPIC = 0, /* max_cursors_per_topic */
    SL_REJECT_CURSOR_TOTAL,         /* max_cursors */
    SL_REJECT_CURSOR_SUBJECT,       /* [auth] max_cursors_per_subject */
    SL_REJECT_CURSOR__COUNT,
} sl_cursor_reject_t;

#define SL_HTTP_CODES 22

/* Totals of the lossless topics' logs (kept by store/lossless.c). */
typedef struct sl_log_stats {
    uint64_t disk_bytes, segments, written_bytes, read_bytes, fsyncs, cursors, cursors_expired,
        corrupt, truncated_bytes, waiting, write_errors;
} sl_log_stats_t;

typedef struct sl_metrics {
    uint64_t connections;     /* gauge */
    uint64_t subscribers_sse; /* gauge */
    uint64_t subscribers_ws;  /* gauge */
    uint64_t ws_connections;  /* gauge: every upgraded connection, publishers included */
    uint64_t ws_messages_in;  /* data messages received over WebSocket */
    uint64_t ws_pings;        /* pings sent */
    uint64_t accepted;
    uint64_t conn_rejected[SL_REJECT_CONN__COUNT];
    uint64_t closed[SL_CLOSE__COUNT];
    uint64_t published;
    uint64_t published_bytes;
    uint64_t pub_rejected[SL_REJECT_PUB__COUNT];
    uint64_t cursors_rejected[SL_REJECT_CURSOR__COUNT]; /* new durable cursors refused */
    uint64_t origin_rejected; /* requests and handshakes refused for their Origin (403) */
    uint64_t auth_rejected[SL_AUTH_REASONS]; /* by SL_AUTH_R_* (core/auth.h) */
    uint64_t auth_accepted;                  /* tokens that verified */
    uint64_t auth_expired;                   /* connections closed at their token's exp */
    uint64_t rate_limited[3]; /* publishes by subject, publishes by address, connections */
    uint64_t auth_refreshed;  /* WebSocket tokens replaced in place */
    uint64_t auth_reloads, auth_reload_failures; /* SIGHUP key reloads */
    uint64_t deliveries;
    uint64_t delivered_bytes;
    uint64_t writes; /* write syscalls batches issued to subscribers */
    uint64_t gaps[SL_LAG__COUNT];
    uint64_t gap_messages;
    uint64_t overflow_disconnects[SL_LAG__COUNT];
    uint64_t evictions[SL_EVICT__COUNT];
    uint64_t topics_created;
    uint64_t topics_freed;
    uint64_t http_codes[SL_HTTP_CODES]; /* indexed by sl_metrics_code_index() */
    uint64_t heartbeats;
    sl_log_stats_t log;
} sl_metrics_t;

extern sl_metrics_t sl_metrics;

/* Counts one HTTP response with this status code. */
void sl_metrics_http(int code);

/* Series and status of modules beside the server (the Kafka sources), which the API cannot
 * include: each registers a renderer that returns a malloc'ed buffer and sets *len. Metrics
 * text is appended to /metrics; the status is the JSON array of GET /sources. Loop thread. */
typedef char *(*sl_render_fn)(size_t *len);
void sl_metrics_set_sources(sl_render_fn metrics_text, sl_render_fn sources_json);
/* The registered sources JSON array ("[]" when none), malloc'ed. */
char *sl_metrics_sources(size_t *len);

struct sl_hub;
/* Renders every series in Prometheus text format into a malloc'ed buffer; the caller frees it.
 * Returns the buffer and sets *len. */
char *sl_metrics_render(const struct sl_hub *hub, size_t *len);

/* Series of a module above the core (the sinks), rendered after the built-in ones: `render`
 * returns a malloc'ed block of complete Prometheus lines (and sets *len), which the caller
 * frees. One renderer; NULL removes it. */
void sl_metrics_set_extra(char *(*render)(void *arg, size_t *len), void *arg);

/* The JSON document of GET /sinks, rendered by the sinks (a module beside the API, which may
 * not include it): `render` returns a malloc'ed document (and sets *len). One renderer; NULL
 * removes it. sl_metrics_sinks_json() returns that document (the caller frees it), or NULL
 * when no sinks run. Loop thread only. */
void sl_metrics_set_sinks_json(char *(*render)(void *arg, size_t *len), void *arg);
char *sl_metrics_sinks_json(size_t *len);

#endif
