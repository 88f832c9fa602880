/*
 * The server and its connections: the libuv side of sluice. The server owns the loop handles
 * (listener, flush check, sweep timer, signals), every connection, and the hub. A connection
 * has exactly one exit, sl_conn_close(), and its memory is freed only in the libuv close
 * callback; gauges move only when a connection is created and in that callback, so they
 * always equal what the kernel sees.
 *
 * Connection states:
 *
 *     accept ──► HTTP ──(GET SSE)──► SSE ──┐
 *                 │  ▲ └──(101 upgrade)──► WS ──┤ (close frame sent or echoed)
 *                 │  ▲ keep-alive           │ overflow / shutdown: final frame
 *                 ▼  │                      ▼
 *           respond, close-after-write ──► LINGER (FIN sent, discard input) ──► close
 *
 * Any state can go straight to close (peer gone, socket error, timeout, drain deadline).
 */
#ifndef SL_SERVER_H
#define SL_SERVER_H

#include "lib/config.h"
#include "lib/http.h"
#include "core/hub.h"
#include "store/lossless.h"
#include "core/metrics.h"

#include <uv.h>

/* One entry of the per-IP connection table: the peers that share a key (sl_server_ip_key)
 * and how many connections they hold. Owned by the server; freed when the count drops to 0. */
typedef struct sl_ipent {
    struct sl_ipent *next;
    uint32_t count;
    uint8_t addr[16]; /* the key, not necessarily one peer's address */
} sl_ipent_t;

/* The key under which per-IP limits count a peer. An IPv4 address, and an IPv4-mapped IPv6
 * one (::ffff:a.b.c.d, how a dual-stack listener sees IPv4 peers), key as ::ffff:a.b.c.d; any
 * other IPv6 address is cut to its first `v6_prefix` bits (0..128; more is taken as 128),
 * because one host commonly holds a whole /64. Other families key as all zeros. Pure. */
void sl_server_ip_key(const struct sockaddr *sa, unsigned v6_prefix, uint8_t key[16]);

#define SL_IP_BUCKETS 1024

typedef struct sl_server {
    uv_loop_t *loop;
    const sl_config_t *cfg;
    sl_hub_t hub;
    sl_http_limits_t limits;
    uv_tcp_t listener;
    uv_check_t flush_check; /* the flush pass, once per loop iteration */
    uv_idle_t flush_idle;   /* keeps the loop from blocking while subs are ready */
    uv_timer_t sweep_timer; /* deadlines, heartbeats, write stalls, hub sweep */
    uv_timer_t drain_timer; /* shutdown deadline */
    uv_signal_t sigterm, sigint;
    uv_signal_t sigpipe; /* ignored: a dead peer must never kill the process */
    sl_list_t conns;
    sl_list_t deferred; /* connections that had their read this loop turn (conn.c) */
    size_t nconns;
    sl_ipent_t *ips[SL_IP_BUCKETS];
    int listening;
    int shutting_down;
    int port;   /* the bound port (useful with port 0) */
    char *rbuf; /* the shared read buffer: reads are handled before the next */
    size_t rbuf_size;
} sl_server_t;

enum { SL_CONN_HTTP = 0, SL_CONN_SSE, SL_CONN_WS, SL_CONN_LINGER };

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
    uint64_t ping_sent_ms; /* an unanswered ping was sent then; 0 if none */
    uint64_t last_ping_ms;
    uint8_t mode; /* SL_WS_SUB | SL_WS_PUB */
    uint8_t json; /* format=json */
    uint8_t ack;  /* ack=1 */
    uint8_t ping_due;
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
    size_t held_len, held_topic_len, held_charge;
    uint8_t held_text, held_has_event;
} sl_ws_t;

/* One client connection. Owned by the server; freed only in its close callback. */
typedef struct sl_conn {
    uv_tcp_t tcp;
    sl_server_t *srv;
    sl_list_t link;       /* server->conns */
    sl_list_t defer_link; /* server->deferred, while deferred */
    sl_ipent_t *ip;
    uint8_t state;
    uint8_t closing;           /* sl_conn_close was called */
    uint8_t close_after_write; /* answer, then FIN and linger */
    uint8_t draining;          /* shutdown: send what is owed, then the final frame */
    uint8_t reading;           /* libuv is reading the socket (see sl_conn_input_wanted) */
    uint8_t out_blocked;       /* replies queued past the high mark, not yet below the low */
    uint8_t input_held;        /* input stopped by a block; the rest (if any) is in stash */
    uint8_t in_input;          /* input is being handled: nested resumes wait for it */
    uint8_t deferred;          /* had a full read this loop turn: read again at the next */
    uint8_t continue_sent;
    uint8_t reason;   /* sl_close_reason_t, once closing */
    uint8_t rejected; /* answered 503 at accept */
    uint8_t peer_eof; /* the peer closed its side */
    uint8_t is_sub;   /* counted in a subscribers gauge (by is_ws for the transport) */
    uint8_t is_ws;
    uint32_t pending_writes;
    uint64_t deadline_ms;    /* request header / idle / linger deadline; 0 = none */
    uint8_t deadline_kind;   /* sl_close_reason_t to use when it passes */
    uint64_t stall_since_ms; /* when the write queue last made progress */
    size_t stall_wq;         /* write queue size seen then */
    uint64_t last_write_ms;  /* last time anything was queued (heartbeats) */
    sl_http_req_t *req;      /* HTTP state only */
    sl_sub_t sub;            /* subscribers (SSE, WebSocket) only */
    sl_ws_t *ws;             /* WebSocket only */
    /* A publish waiting on a lossless topic (for room, or to be on disk). While parked, or
     * while replies are backed up (out_blocked), no input is handled: the rest of the read
     * that was being handled waits in `stash` (at most one read buffer), and the socket is not
     * read until the block is gone and the stash is handled. */
    sl_waiter_t wait;
    uint8_t parked;
    char *stash;
    size_t stash_len;
    uint64_t park_deadline_ms; /* ?wait= of the request, kept across retries */
    uint64_t park_first;       /* waiting to be durable: the ids to answer with */
    uint32_t park_n;
} sl_conn_t;

/* Sets up the server on `loop` with `cfg` (which must outlive it) and starts listening.
 * Returns 0 or a negative libuv error (logged). */
int sl_server_start(sl_server_t *srv, uv_loop_t *loop, const sl_config_t *cfg);

/* Begins a graceful shutdown (as SIGTERM does): stop accepting, drain subscribers within the
 * deadline, then close everything; the loop then runs out of handles. */
void sl_server_shutdown(sl_server_t *srv);

/* Frees what the server still holds after the loop has ended. */
void sl_server_dispose(sl_server_t *srv);

/* Makes sure the flush pass runs this iteration without blocking for I/O first. */
void sl_server_kick(sl_server_t *srv);

/* The one way out of a connection. Idempotent. */
void sl_conn_close(sl_conn_t *c, sl_close_reason_t reason);

/* Queues a full HTTP response. `extra` is a block of "Name: value\r\n" lines or NULL. With
 * c->close_after_write set the connection is shut down once the response is written. */
void sl_conn_respond(sl_conn_t *c, int status, const char *content_type, const char *extra,
                     const char *body, size_t body_len);

/* Answers with the JSON error body {"error":code,"message":msg} (503 and 429 get
 * Retry-After). */
void sl_conn_error(sl_conn_t *c, int status, const char *code, const char *msg);

/* The same with extra header lines ("Name: value\r\n"…). */
void sl_conn_respond_error(sl_conn_t *c, int status, const char *code, const char *msg,
                           const char *extra);

/* 1 if a payload begins with the bytes reserved for control messages, {"sluice": (api.c). */
int sl_api_reserved(const char *payload, size_t len);

/* Turns an HTTP connection into an SSE subscriber on `topics` (n of them) from `starts`:
 * writes the response head, then hands delivery to the hub. `multi` selects multi-topic ids.
 * Takes ownership of nothing; copies what it needs. Returns 0 or SL_EOVERLOAD (answered). */
int sl_conn_subscribe_sse(sl_conn_t *c, sl_topic_t **topics, const sl_start_t *starts, uint32_t n,
                          int multi);

/* Options of a WebSocket connection, from its query string. */
typedef struct sl_ws_opts {
    uint8_t mode, json, ack;
} sl_ws_opts_t;

/* Answers the handshake with 101 (`accept` is the Sec-WebSocket-Accept value) and turns the
 * connection into a WebSocket on `topics` (n of them, may be 0 for a pure publisher) from
 * `starts`. `pub_topic` names the topic raw publishes go to (copied). Returns 0 or
 * SL_EOVERLOAD (answered 503). */
int sl_conn_upgrade_ws(sl_conn_t *c, const char *accept, sl_topic_t **topics,
                       const sl_start_t *starts, uint32_t n, int multi, const sl_ws_opts_t *opts,
                       const char *pub_topic, size_t pub_topic_len);

/* Writes what a subscriber or WebSocket connection is owed now, unless a write is in flight
 * (then it goes out when that completes). */
void sl_conn_pump(sl_conn_t *c);

/* Handles input a block held back (the stash) once the block is gone, then reads the socket
 * again if the connection takes input. Called when something that blocks input may have
 * changed (a write completed, a waiter woke); harmless otherwise. Loop thread. */
void sl_conn_resume_input(sl_conn_t *c);

/* The one place that decides whether a connection's socket is read: 1 unless it is closing,
 * a publish is parked, its replies are backed up, or held-back input waits to be handled.
 * Subscribers (SSE) and lingering connections are always read, to see the peer's FIN. A
 * connection that filled the read buffer waits for the next loop turn (deferred), so a flooding
 * peer gets one read per turn, like everyone else.
 * Pure: reads only the connection's fields. */
int sl_conn_input_wanted(const sl_conn_t *c);

/* Reads again the connections that were deferred because they had a full read buffer this
 * loop turn (called once per turn, after the flush pass). */
void sl_conn_resume_deferred(sl_server_t *srv);

/* 1 if input handling must stop now: a publish is parked or the replies queued for the peer
 * passed the high mark (and have not drained below the low mark since). Updates out_blocked. */
int sl_conn_input_blocked(sl_conn_t *c);

/* WebSocket input: parses frames from the bytes of one read, answers control frames,
 * publishes messages and enforces the protocol (ws_conn.c). Stops after the frame that
 * blocked the connection's input (sl_conn_input_blocked); returns the bytes it took (wslay
 * may buffer some of them). */
size_t sl_ws_input(sl_conn_t *c, const char *data, size_t len);

/* Input held back is being handled again: an unanswered ping gets a full ws_pong_timeout from
 * now, since its pong could not be read meanwhile (ws_conn.c). */
void sl_ws_input_resumed(sl_conn_t *c, uint64_t now_ms);

/* WebSocket deadlines: pings and the pong timeout (ws_conn.c). */
void sl_ws_tick(sl_conn_t *c, uint64_t now_ms);

/* Queues a close frame with `code` and `msg` (the final write of the connection) and stops
 * reading messages; `reason` is what the metrics will say. Idempotent: the first close wins. */
void sl_ws_fail(sl_conn_t *c, unsigned code, const char *msg, sl_close_reason_t reason);

/* Bytes of control frames and answers waiting to be written, and copies them (clearing them)
 * to dst. Called by the connection's writer (ws_conn.c). */
size_t sl_ws_prefix_len(const sl_conn_t *c);
size_t sl_ws_take_prefix(sl_conn_t *c, char *dst);

/* Frees the WebSocket state. */
void sl_ws_free(sl_conn_t *c);

/* Resumes a WebSocket publisher parked on a lossless topic (ws_conn.c). */
void sl_ws_resume(sl_conn_t *c, int kind, int status);

/* Connects lossless topics' disk reads to the delivery path (conn.c); once at start. */
void sl_conn_init_disk(void);

/* Parks the connection's current publish on topic t's log (see sl_conn_t.wait); the waiter's
 * callback resumes it. Reading stops until then. */
void sl_conn_park(sl_conn_t *c, sl_topic_t *t, int kind, uint64_t seq, uint64_t deadline_ms);

/* Resumes a parked HTTP publish (api.c): retries it, answers 429 when its wait timed out, or
 * answers 202 once its messages are durable. */
void sl_api_resume(sl_conn_t *c, int kind, int status);

/* Parses an acknowledged id: the id itself, or {"id":"…"} (api.c). Returns 0 or SL_EBADID. */
int sl_api_body_id(const char *b, size_t n, uint64_t *epoch, uint64_t *seq);

/* Acknowledges seq (of epoch) on a durable cursor: 0, or the HTTP status of the refusal with
 * *err its code (api.c). */
int sl_api_ack(sl_topic_t *t, sl_cursor_t *cu, uint64_t epoch, uint64_t seq, const char **err);

/* Starts reading a freshly accepted connection (conn.c). */
void sl_conn_start(sl_conn_t *c);

/* Answers a connection over a limit with 503 and closes it after the answer. */
void sl_conn_reject(sl_conn_t *c, const char *why);

/* Per-connection deadlines, write-stall detection and heartbeats; called by the sweep. */
void sl_conn_tick(sl_conn_t *c, uint64_t now_ms);

/* Shutdown of one connection: subscribers get what they are owed, then the final frame. */
void sl_conn_drain(sl_conn_t *c);

/* Routes one complete request (api.c). */
void sl_api_dispatch(sl_conn_t *c, sl_http_req_t *req);

#endif
