/*
 * Connections: the one close path, response writes, the delivery path to subscribers, and the
 * input gate. A connection knows no protocol and no route: it holds a transport table
 * (sl_transport_t) that the HTTP/1, SSE and WebSocket modules export, and hands complete
 * requests to the handler the API installed on the server (sl_handler_t). A connection has
 * exactly one exit, sl_conn_close(), and its memory is freed only in the libuv close callback;
 * gauges move only when a connection is created and in that callback, so they always equal
 * what the kernel sees.
 *
 * Connection states (and the transport of each):
 *
 *     accept ──► REQUEST ──(GET SSE)──► STREAM ──┐                  http1 / sse / ws
 *                 │  ▲ └──(101 upgrade)──► DUPLEX ──┤ (close frame sent or echoed)
 *                 │  ▲ keep-alive           │ overflow / shutdown: final frame
 *                 ▼  │                      ▼
 *           respond, close-after-write ──► LINGER (FIN sent, discard input) ──► close
 *
 * Any state can go straight to close (peer gone, socket error, timeout, drain deadline).
 * Loop thread only.
 */
#ifndef SL_CONN_H
#define SL_CONN_H

#include "core/hub.h"
#include "core/metrics.h"
#include "lib/http.h"
#include "net/server.h"
#include "store/lossless.h"

#include <uv.h>

/* REQUEST: requests and answers (http1); STREAM: output only, input discarded (SSE); DUPLEX:
 * an upgraded protocol with input and output (WebSocket); LINGER: FIN sent, input discarded. */
enum { SL_CONN_REQUEST = 0, SL_CONN_STREAM, SL_CONN_DUPLEX, SL_CONN_LINGER };

struct sl_conn;
struct sl_ws;

/* A subscriber write: references to the messages it sends plus control bytes, gathered into
 * one writev. Owned by the delivery path (conn.c); transports append to it. */
typedef struct sl_sub_write {
    uv_write_t req;
    size_t size;    /* of the allocation (sl_bfree) */
    size_t uv_copy; /* charged for libuv's copy of a long iov array while queued */
    uint32_t nmsgs, niov, max_iov;
    sl_msg_t **msgs;
    uv_buf_t *iov;
    char *ctrl;
    size_t ctrl_len, ctrl_cap;
} sl_sub_write_t;

/* Appends a buffer (shared bytes that outlive the write, e.g. a message's frame) to w. */
void sl_sub_write_put(sl_sub_write_t *w, const void *base, size_t len);

/* A connection's protocol, as the generic code sees it. Input: every transport; output: the
 * subscriber transports (SSE, WebSocket); NULL members do nothing. Exported by net/http1.c,
 * net/sse_conn.c and net/ws_conn.c. */
typedef struct sl_transport {
    const char *name;
    /* Handles input; returns the bytes taken (fewer when it stopped because the connection's
     * input is blocked, sl_conn_input_blocked). NULL: input is discarded. */
    size_t (*input)(struct sl_conn *c, const char *data, size_t len);
    /* A publish of this connection that was parked is woken (SL_WAKE_* status). */
    void (*resume)(struct sl_conn *c, int kind, int status);
    /* Input held back is handled again. */
    void (*input_resumed)(struct sl_conn *c, uint64_t now_ms);
    /* A subscriber write completed: its bytes are in the kernel. */
    void (*written)(struct sl_conn *c, uint64_t now_ms);
    /* Deadlines of the protocol (pings), every sweep tick. */
    void (*tick)(struct sl_conn *c, uint64_t now_ms);
    /* Frees the transport's state (close callback). */
    void (*free)(struct sl_conn *c);
    /* Replies and control frames owed ahead of any message: their length, and copying them out
     * (clearing them). NULL: there are none. */
    size_t (*prefix_len)(const struct sl_conn *c);
    size_t (*take_prefix)(struct sl_conn *c, char *dst);
    /* 1 if the connection's final frame is owed now (a WebSocket close). */
    int (*final_due)(const struct sl_conn *c);
    /* Output of subscribers: buffers per message; appends message m to w (its bytes). */
    uint32_t iov_per_msg;
    size_t (*put_msg)(struct sl_conn *c, sl_sub_write_t *w, sl_msg_t *m);
    /* Formats a gap/reset/overflow marker for reader r into buf; returns its length. */
    size_t (*marker)(char *buf, size_t cap, const sl_sub_t *sub, const sl_reader_t *r, int kind,
                     int reason, uint64_t missed);
    /* After the overflow marker: the bytes that end the stream (a WebSocket close frame) into
     * buf (>= 160 bytes); returns their length, 0 for none. */
    size_t (*overflow_end)(struct sl_conn *c, char *buf, int reason);
    /* The last frame of a stream that is not overflowing (shutdown; for WebSocket also a close
     * handshake or a protocol error) into buf (>= 160 bytes); returns its length. */
    size_t (*closing)(struct sl_conn *c, char *buf);
    /* A heartbeat into buf (>= 96 bytes); returns its length, 0 for none. */
    size_t (*heartbeat)(struct sl_conn *c, char *buf);
    /* The connection's token expired: end it the transport's way (NULL: close at once). */
    void (*expired)(struct sl_conn *c);
    /* How long a closing connection waits for its peer (NULL: 2 s). */
    uint64_t (*linger_ms)(const struct sl_conn *c);
    /* Gauges the transport keeps: its connections, and those of them that subscribe (moved
     * when a connection takes the transport and in its close callback). NULL: none. */
    uint64_t *connections;
    uint64_t *subscribers;
} sl_transport_t;

/* What a connection hands complete requests to: the API (net/api.c) installs it on the server
 * at start-up. */
typedef struct sl_handler {
    /* Routes one complete request; answers it (or parks, subscribes, upgrades). */
    void (*request)(struct sl_conn *c, sl_http_req_t *req);
    /* A parked HTTP publish is woken (SL_WAKE_* status): retry or answer it. */
    void (*resume)(struct sl_conn *c, int kind, int status);
} sl_handler_t;

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
    uint8_t is_sub;   /* counted in its transport's subscribers gauge */
    uint32_t pending_writes;
    size_t resp_bytes;         /* responses allocated and not yet called back (the input gate) */
    uint64_t deadline_ms;      /* request header / idle / linger deadline; 0 = none */
    uint64_t body_deadline_ms; /* the request body in progress must be complete by then */
    uint8_t deadline_kind;     /* sl_close_reason_t to use when it passes */
    uint64_t stall_since_ms;   /* when the write queue last made progress */
    size_t stall_wq;           /* write queue size seen then */
    uint64_t last_write_ms;    /* last time anything was queued (heartbeats) */
    sl_http_req_t *req;        /* HTTP state only */
    sl_sub_t sub;              /* subscribers (SSE, WebSocket) only */
    const sl_transport_t *tp;  /* the protocol spoken now */
    struct sl_ws *ws;          /* WebSocket state (net/ws_conn.c) */
    /* A publish waiting on a lossless topic (for room, or to be on disk). While parked, or
     * while replies are backed up (out_blocked), no input is handled: the rest of the read
     * that was being handled, and what is read meanwhile, waits in `stash` (reading stops when
     * it holds 64 KiB) until the block is gone and the stash is handled. */
    sl_waiter_t wait;
    uint8_t parked;
    char *stash;
    size_t stash_len;
    uint64_t park_deadline_ms; /* ?wait= of the request, kept across retries */
    uint64_t park_first;       /* waiting to be durable: the ids to answer with */
    uint32_t park_n;
    /* The claims of the token the connection was authorized with (NULL: none): kept while it
     * subscribes or publishes over WebSocket, for expiry, cursor ownership and the topics of
     * later publishes; freed in the close callback. */
    sl_jwt_claims_t *claims;
    uint8_t expired; /* closing because the token expired (the final frame says so) */
} sl_conn_t;

/* The transport a connection starts with: HTTP/1 requests (net/http1.c). */
extern const sl_transport_t sl_http1_transport;

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

/* Queues raw bytes (a response head the caller formatted). */
void sl_conn_write_raw(sl_conn_t *c, const char *data, size_t len);

/* Takes n messages of `bytes` payload bytes from the publish buckets of c's subject (or, with
 * no subject, its address). Returns 0, or the ms until they would fit (UINT64_MAX: larger than
 * a burst, never), counting and logging the refusal. */
uint64_t sl_conn_rate_publish(sl_conn_t *c, size_t n, size_t bytes);

/* The CORS header lines for the current request (docs/protocol.md) into buf (>= SL_CORS_MAX);
 * returns their length. */
#define SL_CORS_MAX 320
size_t sl_conn_cors(const sl_conn_t *c, char *buf, size_t cap);

/* Checks that n readers (and `extra` bytes) fit in the budget, answering 503 if not. Returns 0
 * or SL_EOVERLOAD. */
int sl_conn_reserve_readers(sl_conn_t *c, uint32_t n, size_t extra);

/* Turns the connection into a subscriber of topics[i] from starts[i] with transport tp (the
 * response head is written already): the request is dropped, the hub delivers from now on. */
void sl_conn_start_sub(sl_conn_t *c, const sl_transport_t *tp, int state, sl_topic_t **topics,
                       const sl_start_t *starts, uint32_t n, int multi);

/* The members of the JSON body of a gap, reset or overflow marker for reader r, after the
 * opening brace: "topic":…,…} (the closing brace included). Same for every transport. */
size_t sl_conn_marker_fields(char *buf, size_t cap, const sl_reader_t *r, int kind, int reason,
                             uint64_t missed);
const char *sl_conn_marker_name(int kind);
#define SL_MARK_OVERFLOW 4

/* 1 if any topic of the subscriber asked for visible heartbeats. */
int sl_conn_wants_heartbeat_event(const sl_conn_t *c);

/* Writes what a subscriber or WebSocket connection is owed now, unless a write is in flight
 * (then it goes out when that completes). */
void sl_conn_pump(sl_conn_t *c);

/* Handles input a block held back (the stash) once the block is gone, then reads the socket
 * again if the connection takes input. Called when something that blocks input may have
 * changed (a write completed, a waiter woke); harmless otherwise. */
void sl_conn_resume_input(sl_conn_t *c);

/* The one place that decides whether a connection's socket is read: 1 unless it is closing,
 * or a publish is parked, its replies are backed up, or held-back input waits, with a full
 * stash. Subscribers (SSE) and lingering connections are always read, to see the peer's FIN.
 * A connection that filled the read buffer waits for the next loop turn (deferred), so a
 * flooding peer gets one read per turn, like everyone else. Pure: reads only the connection's
 * fields. */
int sl_conn_input_wanted(const sl_conn_t *c);

/* 1 if input handling must stop now: a publish is parked or the replies queued for the peer
 * passed the high mark (and have not drained below the low mark since). Updates out_blocked. */
int sl_conn_input_blocked(sl_conn_t *c);

/* Reads again the connections that were deferred because they had a full read buffer this
 * loop turn (called once per turn, after the flush pass). */
void sl_conn_resume_deferred(sl_server_t *srv);

/* Connects lossless topics' disk reads to the delivery path; once at start. */
void sl_conn_init_disk(void);

/* Parks the connection's current publish on topic t's log (see sl_conn_t.wait); the waiter's
 * wake-up goes to the transport's resume. Input handling stops until then. */
void sl_conn_park(sl_conn_t *c, sl_topic_t *t, int kind, uint64_t seq, uint64_t deadline_ms);

/* Sets the connection's deadline (header, body, idle, linger) and what closing at it means. */
void sl_conn_set_deadline(sl_conn_t *c, uint64_t now, uint64_t after, sl_close_reason_t kind);

/* Shuts the connection down once what it is owed is written (FIN, then linger). */
void sl_conn_finish(sl_conn_t *c);

/* Starts reading a freshly accepted connection. */
void sl_conn_start(sl_conn_t *c);

/* Answers a connection over a limit with 503 and closes it after the answer. */
void sl_conn_reject(sl_conn_t *c, const char *why);
/* The same with another answer (429 rate_limited with a Retry-After). */
void sl_conn_reject_status(sl_conn_t *c, int status, const char *code, const char *why,
                           const char *extra);

/* Per-connection deadlines, write-stall detection and heartbeats; called by the sweep. */
void sl_conn_tick(sl_conn_t *c, uint64_t now_ms);

/* Shutdown of one connection: subscribers get what they are owed, then the final frame. */
void sl_conn_drain(sl_conn_t *c);

#endif
