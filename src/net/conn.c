/*
 * Connections: reading and parsing requests, writing responses, the SSE transport, and the one
 * close path. A connection's memory is charged to the budget when it is accepted and released
 * in its close callback. Writes to subscribers hold references to the shared, pre-encoded
 * message frames, never copies; one write per subscriber is in flight at a time and carries as
 * many messages as fit in one writev.
 */
#include "lib/budget.h"
#include "lib/log.h"
#include "core/metrics.h"
#include "net/server.h"
#include "lib/sse.h"
#include "lib/ws.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A subscriber write gathers at most this many buffers and bytes; the rest waits for the next. */
#define SUB_MAX_IOV 512
#define SUB_MAX_BYTES (256u << 10)
/* Replies queued for a peer (pipelined responses, WebSocket answers and control frames, not
 * yet taken by its socket) beyond this stop its input, within the read being handled, until
 * they drain below the low mark: a peer that does not read its answers is not read either. */
#define OUT_HIGH (64u << 10)
#define OUT_LOW (16u << 10)
/* Input held back while a connection is blocked: beyond this its socket is not read. */
#define STASH_MAX (64u << 10)
/* How long a closing connection may linger to let the peer read our last bytes. */
#define LINGER_MS 2000
#define ALLOC_OVERHEAD 16

/* A plain response write: owned by the write request, freed in its callback. */
typedef struct resp_write {
    uv_write_t req;
    size_t charge;
    char data[];
} resp_write_t;

/* A subscriber write: references to the messages it sends plus any control bytes. */
typedef struct sub_write {
    uv_write_t req;
    size_t charge;
    uint32_t nmsgs, niov, max_iov;
    sl_msg_t **msgs;
    uv_buf_t *iov;
    char *ctrl;
    size_t ctrl_len, ctrl_cap;
} sub_write_t;

static void on_close(uv_handle_t *h);
static void sync_reading(sl_conn_t *c);

/* ---- close ------------------------------------------------------------------------------ */

void sl_conn_close(sl_conn_t *c, sl_close_reason_t reason)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->reason = (uint8_t)reason;
    if (c->deferred)
        sl_list_remove(&c->defer_link);
    sl_ll_unwait(&c->wait);
    /* Cursors go now, so no flush pass offers this connection anything more. */
    sl_sub_dispose(&c->srv->hub, &c->sub);
    if (c->req != NULL) {
        sl_http_req_dispose(c->req);
        sl_budget_release(sizeof(*c->req) + ALLOC_OVERHEAD);
        free(c->req);
        c->req = NULL;
    }
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void ip_release(sl_server_t *srv, sl_ipent_t *e)
{
    if (e == NULL || --e->count > 0)
        return;
    uint32_t h = 0;
    for (int i = 0; i < 16; i++)
        h = h * 31 + e->addr[i];
    sl_ipent_t **pp = &srv->ips[h % SL_IP_BUCKETS];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    free(e);
}

static void on_close(uv_handle_t *h)
{
    sl_conn_t *c = (sl_conn_t *)h;
    sl_server_t *srv = c->srv;
    sl_metrics.connections--;
    if (c->is_sub) {
        if (c->is_ws)
            sl_metrics.subscribers_ws--;
        else
            sl_metrics.subscribers_sse--;
    }
    if (c->is_ws)
        sl_metrics.ws_connections--;
    sl_ws_free(c);
    if (c->stash != NULL) {
        sl_budget_release(c->stash_len + ALLOC_OVERHEAD);
        free(c->stash);
    }
    sl_metrics.closed[c->reason]++;
    sl_list_remove(&c->link);
    srv->nconns--;
    ip_release(srv, c->ip);
    sl_budget_release(sizeof(*c) + ALLOC_OVERHEAD);
    free(c);
    if (srv->shutting_down && srv->nconns == 0)
        sl_server_shutdown(srv);
}

/* How long a closing connection waits for its peer: for a WebSocket, the close reply. */
static uint64_t linger_ms(const sl_conn_t *c)
{
    return c->is_ws ? c->srv->cfg->ws_close_timeout_ms : LINGER_MS;
}

/* ---- lingering close -------------------------------------------------------------------- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
    sl_conn_t *c = req->data;
    free(req);
    sl_budget_release(sizeof(*req) + ALLOC_OVERHEAD);
    if (c->closing)
        return;
    if (status < 0) {
        sl_conn_close(c, c->reason);
        return;
    }
    /* Our FIN is out. Keep reading (and discarding) until the peer closes, so that unread
     * input does not turn our close into a reset that destroys the answer. */
    c->deadline_ms = sl_now_ms() + linger_ms(c);
    c->deadline_kind = c->reason;
}

/* Everything is written: send FIN and linger. */
static void finish(sl_conn_t *c)
{
    if (c->closing || c->state == SL_CONN_LINGER)
        return;
    if (c->peer_eof) {
        /* The peer has closed its side already: nothing to linger for. */
        sl_conn_close(c, c->reason);
        return;
    }
    if (c->state == SL_CONN_SSE || c->state == SL_CONN_WS)
        sl_sub_dispose(&c->srv->hub, &c->sub);
    c->state = SL_CONN_LINGER;
    sync_reading(c);
    uv_shutdown_t *sr = sl_malloc(sizeof(*sr));
    sl_budget_charge(sizeof(*sr) + ALLOC_OVERHEAD);
    sr->data = c;
    c->deadline_ms = sl_now_ms() + linger_ms(c);
    c->deadline_kind = c->reason;
    if (uv_shutdown(sr, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        free(sr);
        sl_budget_release(sizeof(*sr) + ALLOC_OVERHEAD);
        sl_conn_close(c, c->reason);
    }
}

/* ---- responses -------------------------------------------------------------------------- */

static void on_resp_write(uv_write_t *req, int status)
{
    resp_write_t *w = (resp_write_t *)req;
    sl_conn_t *c = req->data;
    sl_budget_release(w->charge);
    free(w);
    c->pending_writes--;
    if (c->closing)
        return;
    if (status < 0) {
        sl_conn_close(c, SL_CLOSE_ERROR);
        return;
    }
    if (c->close_after_write && c->pending_writes == 0) {
        finish(c);
        return;
    }
    sl_conn_resume_input(c);
}

static void queue_bytes(sl_conn_t *c, resp_write_t *w, size_t len)
{
    /* A uv_buf_t holds at most 4 GiB and a response (a long /topics listing, the ids of a
     * large NDJSON batch) is bounded only by the budget: describe it in 1 GiB pieces. libuv
     * copies the array it is given, so it may be freed right after. */
    enum { PIECE = 1u << 30 };
    uv_buf_t one, *bufs = &one;
    size_t nbufs = len / PIECE + 1;
    if (nbufs > 1)
        bufs = sl_malloc(nbufs * sizeof(*bufs));
    for (size_t i = 0; i < nbufs; i++) {
        size_t off = i * (size_t)PIECE;
        bufs[i] = uv_buf_init(w->data + off, (unsigned)(len - off < PIECE ? len - off : PIECE));
    }
    w->req.data = c;
    c->pending_writes++;
    c->last_write_ms = sl_now_ms();
    if (c->tcp.write_queue_size == 0)
        c->stall_since_ms = c->last_write_ms;
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, (unsigned)nbufs, on_resp_write);
    if (bufs != &one)
        free(bufs);
    if (rc != 0) {
        c->pending_writes--;
        sl_budget_release(w->charge);
        free(w);
        sl_conn_close(c, SL_CLOSE_ERROR);
    }
}

static resp_write_t *resp_alloc(size_t cap)
{
    size_t charge = sizeof(resp_write_t) + cap + ALLOC_OVERHEAD;
    resp_write_t *w = sl_malloc(sizeof(resp_write_t) + cap);
    /* A response is owed once the request was taken; it is charged, never refused. */
    sl_budget_charge(charge);
    w->charge = charge;
    return w;
}

/* The CORS header lines for the current request's Origin (docs/protocol.md): `*` when no
 * allow-list is configured (but not for admin and listing endpoints), the origin itself when
 * it is listed, nothing otherwise. */
static size_t cors_header(const sl_conn_t *c, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (c->srv->cfg->origins == NULL)
        return c->req != NULL && c->req->cors_admin
                   ? 0
                   : (size_t)snprintf(buf, cap, "Access-Control-Allow-Origin: *\r\n");
    size_t len = 0;
    const char *origin = c->req ? sl_http_header(c->req, SL_H_ORIGIN, &len) : NULL;
    if (origin == NULL || len > cap - 64 || !sl_config_origin_allowed(c->srv->cfg, origin, len))
        return 0;
    return (size_t)snprintf(buf, cap, "Access-Control-Allow-Origin: %.*s\r\nVary: Origin\r\n",
                            (int)len, origin);
}

#define CORS_MAX 320

void sl_conn_respond(sl_conn_t *c, int status, const char *content_type, const char *extra,
                     const char *body, size_t body_len)
{
    if (c->closing)
        return;
    sl_metrics_http(status);
    size_t extra_len = extra ? strlen(extra) : 0;
    char cors[CORS_MAX];
    cors_header(c, cors, sizeof(cors));
    size_t cap = 256 + CORS_MAX + extra_len + body_len;
    resp_write_t *w = resp_alloc(cap);
    int n;
    if (status == 204)
        n = snprintf(w->data, cap, "HTTP/1.1 204 No Content\r\nServer: sluice\r\n%s%s%s\r\n",
                     c->close_after_write ? "Connection: close\r\n" : "", cors, extra ? extra : "");
    else
        n = snprintf(w->data, cap,
                     "HTTP/1.1 %d %s\r\nServer: sluice\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\nCache-Control: no-store\r\n%s%s%s\r\n",
                     status, sl_http_reason(status), content_type ? content_type : "text/plain",
                     body_len, c->close_after_write ? "Connection: close\r\n" : "", cors,
                     extra ? extra : "");
    memcpy(w->data + n, body, body_len);
    queue_bytes(c, w, (size_t)n + body_len);
}

void sl_conn_respond_error(sl_conn_t *c, int status, const char *code, const char *msg,
                           const char *extra)
{
    char body[512];
    size_t len = 0;
    memcpy(body, "{\"error\":", 9);
    len = 9;
    sl_json_put_string(body, &len, sizeof(body) - 64, code, strlen(code));
    memcpy(body + len, ",\"message\":", 11);
    len += 11;
    if (sl_json_put_string(body, &len, sizeof(body) - 4, msg, strlen(msg)) != 0)
        sl_json_put_string(body, &len, sizeof(body) - 4, "", 0);
    body[len++] = '}';
    body[len++] = '\n';
    if (extra == NULL && (status == 503 || status == 429))
        extra = "Retry-After: 1\r\n";
    sl_conn_respond(c, status, "application/json", extra, body, len);
}

void sl_conn_error(sl_conn_t *c, int status, const char *code, const char *msg)
{
    sl_conn_respond_error(c, status, code, msg, NULL);
}

/* ---- subscriber writes (every transport) ------------------------------------------------ */

static sub_write_t *sub_write_new(uint32_t max_msgs, uint32_t max_iov, size_t ctrl_cap)
{
    size_t size =
        sizeof(sub_write_t) + max_msgs * sizeof(sl_msg_t *) + max_iov * sizeof(uv_buf_t) + ctrl_cap;
    sub_write_t *w = sl_malloc(size);
    memset(w, 0, sizeof(*w));
    /* libuv keeps its own copy of an iov array longer than 4 while the write is queued. */
    w->charge = size + ALLOC_OVERHEAD + (max_iov > 4 ? max_iov * sizeof(uv_buf_t) : 0);
    sl_budget_charge(w->charge);
    w->msgs = (sl_msg_t **)(w + 1);
    w->iov = (uv_buf_t *)(w->msgs + max_msgs);
    w->ctrl = (char *)(w->iov + max_iov);
    w->ctrl_cap = ctrl_cap;
    w->max_iov = max_iov;
    return w;
}

static void sub_write_free(sub_write_t *w)
{
    for (uint32_t i = 0; i < w->nmsgs; i++)
        sl_msg_unref(w->msgs[i]);
    sl_budget_release(w->charge);
    free(w);
}

/* Appends control bytes and an iov for them. The ctrl area never moves, so iovs may point in. */
static void put_ctrl(sub_write_t *w, const char *s, size_t len)
{
    assert(w->ctrl_len + len <= w->ctrl_cap && w->niov < w->max_iov);
    memcpy(w->ctrl + w->ctrl_len, s, len);
    w->iov[w->niov++] = uv_buf_init(w->ctrl + w->ctrl_len, (unsigned)len);
    w->ctrl_len += len;
}

/* The free part of the ctrl area, to format into before take_ctrl() claims what was used. */
static char *ctrl_free(const sub_write_t *w, size_t *room)
{
    *room = w->ctrl_cap - w->ctrl_len;
    return w->ctrl + w->ctrl_len;
}

/* Reserves len bytes of the ctrl area for the caller to fill, with an iov for them. */
static char *take_ctrl(sub_write_t *w, size_t len)
{
    assert(w->ctrl_len + len <= w->ctrl_cap && w->niov < w->max_iov);
    char *p = w->ctrl + w->ctrl_len;
    w->iov[w->niov++] = uv_buf_init(p, (unsigned)len);
    w->ctrl_len += len;
    return p;
}

#define MARK_OVERFLOW 4
#define MARKER_MAX(name_len) ((name_len)*6 + 256)

static size_t marker_room(const sl_sub_t *sub)
{
    size_t room = 0;
    for (uint32_t i = 0; i < sub->nreaders; i++)
        if (sub->readers[i].mark != SL_MARK_NONE)
            room += 2 * MARKER_MAX(sub->readers[i].topic->name_len);
    return room;
}

static const char *marker_name(int kind)
{
    return kind == SL_MARK_GAP ? "gap" : kind == SL_MARK_RESET ? "reset" : "overflow";
}

/* The members of the JSON body of a gap, reset or overflow marker for reader r, after the
 * opening brace: "topic":…,…} (the closing brace included). Same for every transport. */
static size_t marker_fields(char *buf, size_t cap, const sl_reader_t *r, int kind, int reason,
                            uint64_t missed)
{
    const sl_topic_t *t = r->topic;
    char from[SL_ID_MAX], to[SL_ID_MAX];
    size_t len = (size_t)snprintf(buf, cap, "\"topic\":");
    sl_json_put_string(buf, &len, cap, t->name, t->name_len);
    if (kind == SL_MARK_GAP) {
        sl_id_format(to, t->epoch, r->gap_to);
        if (r->gap_from_known) {
            sl_id_format(from, t->epoch, r->gap_from);
            len += (size_t)snprintf(buf + len, cap - len,
                                    ",\"from\":\"%s\",\"to\":\"%s\",\"missed\":%" PRIu64, from, to,
                                    r->gap_missed);
        } else {
            len += (size_t)snprintf(buf + len, cap - len,
                                    ",\"from\":null,\"to\":\"%s\",\"missed\":null", to);
        }
        len += (size_t)snprintf(buf + len, cap - len, ",\"reason\":\"%s\"}",
                                sl_lag_reason_name((sl_lag_reason_t)r->mark_reason));
    } else if (kind == SL_MARK_RESET) {
        len += (size_t)snprintf(buf + len, cap - len, ",\"epoch\":\"%s\",\"reason\":\"%s\"}",
                                t->epoch_hex, r->ahead ? "ahead" : "epoch");
    } else {
        len += (size_t)snprintf(buf + len, cap - len, ",\"reason\":\"%s\",\"missed\":%" PRIu64 "}",
                                sl_lag_reason_name((sl_lag_reason_t)reason), missed);
    }
    return len;
}

/* ---- transports ------------------------------------------------------------------------- */

/* What differs between SSE and WebSocket: how a message, a marker, a heartbeat and the last
 * frame look on the wire. Everything else (cursors, batching, budget, backpressure, closing) is
 * the one delivery path below. */
typedef struct transport {
    uint32_t iov_per_msg;
    /* Appends message m's iovs (shared, pre-encoded bytes) to w; returns their byte count. */
    size_t (*put_msg)(sl_conn_t *c, sub_write_t *w, sl_msg_t *m);
    /* Formats a gap/reset/overflow marker for reader r into buf; returns its length. */
    size_t (*marker)(char *buf, size_t cap, const sl_sub_t *sub, const sl_reader_t *r, int kind,
                     int reason, uint64_t missed);
    /* Formats the last frame of a connection that is not overflowing (shutdown; for WebSocket
     * also a close handshake or a protocol error) into buf (>= 160 bytes); returns its length. */
    size_t (*closing)(sl_conn_t *c, char *buf);
    /* Formats a heartbeat into buf (>= 96 bytes); returns its length, 0 for none. */
    size_t (*heartbeat)(sl_conn_t *c, char *buf);
} transport_t;

static size_t sse_put_msg(sl_conn_t *c, sub_write_t *w, sl_msg_t *m)
{
    if (c->sub.multi) {
        size_t idlen;
        const char *id = sl_msg_multi_id(m, c->srv->hub.epoch_hex, &idlen);
        w->iov[w->niov++] = uv_buf_init((char *)id, (unsigned)idlen);
        w->iov[w->niov++] =
            uv_buf_init(m->frame + m->id_line_len, (unsigned)(m->frame_len - m->id_line_len));
        return idlen + m->frame_len - m->id_line_len;
    }
    w->iov[w->niov++] = uv_buf_init(m->frame, (unsigned)m->frame_len);
    return m->frame_len;
}

static size_t sse_marker(char *buf, size_t cap, const sl_sub_t *sub, const sl_reader_t *r, int kind,
                         int reason, uint64_t missed)
{
    size_t len = 0;
    if (kind == SL_MARK_GAP && !sub->multi) {
        len += (size_t)snprintf(buf + len, cap - len, "id: ");
        len += sl_id_format(buf + len, r->topic->epoch, r->gap_to);
        buf[len++] = '\n';
    }
    len += (size_t)snprintf(buf + len, cap - len, "event: sluice.%s\ndata: {", marker_name(kind));
    len += marker_fields(buf + len, cap - len, r, kind, reason, missed);
    memcpy(buf + len, "\n\n", 2);
    return len + 2;
}

static size_t sse_closing(sl_conn_t *c, char *buf)
{
    size_t n = sl_sse_retry(buf, c->srv->cfg->sse_retry_ms);
    n -= 1; /* "retry: N\n" then the comment ends the block */
    memcpy(buf + n, ": shutdown\n\n", 12);
    c->reason = SL_CLOSE_SHUTDOWN;
    return n + 12;
}

static int wants_heartbeat_event(const sl_conn_t *c)
{
    for (uint32_t i = 0; i < c->sub.nreaders; i++)
        if (c->sub.readers[i].topic->conf.heartbeat_event)
            return 1;
    return 0;
}

static size_t sse_heartbeat(sl_conn_t *c, char *buf)
{
    if (wants_heartbeat_event(c))
        return (size_t)snprintf(buf, 96, "event: sluice.heartbeat\ndata: {\"ts\":%" PRIu64 "}\n\n",
                                sl_wall_ms());
    return (size_t)snprintf(buf, 96, ": hb\n\n");
}

static const transport_t sse_transport = {
    .iov_per_msg = 2,
    .put_msg = sse_put_msg,
    .marker = sse_marker,
    .closing = sse_closing,
    .heartbeat = sse_heartbeat,
};

static size_t ws_put_msg(sl_conn_t *c, sub_write_t *w, sl_msg_t *m)
{
    size_t len;
    if (c->ws->json) {
        const char *f = sl_msg_ws_json(m, c->srv->hub.epoch_hex, &len);
        w->iov[w->niov++] = uv_buf_init((char *)f, (unsigned)len);
        return len;
    }
    const uint8_t *h = sl_msg_ws_header(m, &len);
    w->iov[w->niov++] = uv_buf_init((char *)h, (unsigned)len);
    w->iov[w->niov++] = uv_buf_init((char *)m->payload, (unsigned)m->payload_len);
    return len + m->payload_len;
}

/* A text frame whose body was formatted at buf + SL_WS_HDR_MAX: moves it behind its header at
 * buf. Returns the frame's length. */
static size_t ws_text_frame(char *buf, size_t body_len)
{
    uint8_t hdr[SL_WS_HDR_MAX];
    size_t h = sl_ws_frame_header(hdr, SL_WS_TEXT, body_len);
    memmove(buf + h, buf + SL_WS_HDR_MAX, body_len);
    memcpy(buf, hdr, h);
    return h + body_len;
}

static size_t ws_marker(char *buf, size_t cap, const sl_sub_t *sub, const sl_reader_t *r, int kind,
                        int reason, uint64_t missed)
{
    (void)sub;
    char *body = buf + SL_WS_HDR_MAX;
    size_t room = cap - SL_WS_HDR_MAX;
    size_t len = (size_t)snprintf(body, room, "{\"sluice\":\"%s\",", marker_name(kind));
    len += marker_fields(body + len, room - len, r, kind, reason, missed);
    return ws_text_frame(buf, len);
}

static size_t ws_close_frame(char *buf, unsigned code, const char *msg, size_t msg_len)
{
    buf[0] = (char)(0x80 | SL_WS_CLOSE);
    buf[1] = (char)(2 + msg_len);
    buf[2] = (char)(code >> 8);
    buf[3] = (char)code;
    memcpy(buf + 4, msg, msg_len);
    return 4 + msg_len;
}

static size_t ws_closing(sl_conn_t *c, char *buf)
{
    sl_ws_t *ws = c->ws;
    if (!ws->close_pending) {
        ws->close_pending = 1;
        ws->close_code = SL_WS_CLOSE_GOING_AWAY;
        ws->close_reason = SL_CLOSE_SHUTDOWN;
        ws->close_msg_len = (uint8_t)snprintf(ws->close_msg, sizeof(ws->close_msg), "shutdown");
    }
    c->reason = ws->close_reason;
    return ws_close_frame(buf, ws->close_code, ws->close_msg, ws->close_msg_len);
}

static size_t ws_heartbeat(sl_conn_t *c, char *buf)
{
    /* Pings keep WebSocket connections alive; a visible heartbeat only when asked for. */
    if (!wants_heartbeat_event(c))
        return 0;
    size_t len = (size_t)snprintf(buf + SL_WS_HDR_MAX, 96 - SL_WS_HDR_MAX,
                                  "{\"sluice\":\"heartbeat\",\"ts\":%" PRIu64 "}", sl_wall_ms());
    return ws_text_frame(buf, len);
}

static const transport_t ws_transport = {
    .iov_per_msg = 2,
    .put_msg = ws_put_msg,
    .marker = ws_marker,
    .closing = ws_closing,
    .heartbeat = ws_heartbeat,
};

static const transport_t *transport_of(const sl_conn_t *c)
{
    return c->is_ws ? &ws_transport : &sse_transport;
}

/* ---- the delivery path ------------------------------------------------------------------ */

static void on_sub_write(uv_write_t *req, int status);
static void send_final(sl_conn_t *c);
static size_t deliver(sl_sub_t *sub);

static const sl_sub_ops_t sub_ops = {.deliver = deliver};

static size_t prefix_len(const sl_conn_t *c)
{
    return c->ws != NULL ? sl_ws_prefix_len(c) : 0;
}

static void put_prefix(sl_conn_t *c, sub_write_t *w, size_t len)
{
    if (len == 0)
        return;
    char *p = take_ctrl(w, len);
    size_t n = sl_ws_take_prefix(c, p);
    assert(n == len);
    (void)n;
}

/* What follows a completed subscriber write: the final FIN, or the next batch. */
static void sub_write_done(sl_conn_t *c)
{
    c->sub.writing = 0;
    if (c->close_after_write) {
        finish(c);
        return;
    }
    sl_hub_sub_ready(&c->srv->hub, &c->sub, sl_now_ms());
    if (prefix_len(c) > 0 || (c->ws != NULL && c->ws->close_pending)) {
        /* Control frames and answers go out before anything else is queued; reading resumes
         * once they are written. */
        (void)deliver(&c->sub);
        return;
    }
    sl_conn_resume_input(c);
    if (c->closing)
        return;
    if (c->draining && sl_list_empty(&c->sub.ready_link)) {
        send_final(c);
        return;
    }
    sl_server_kick(c->srv);
}

/* Sends w. A reader that keeps up has room in its socket, so the write is tried at once and
 * w is freed right away; only what the socket did not take is queued (w and its message
 * references then live until on_sub_write). */
static void sub_send(sl_conn_t *c, sub_write_t *w)
{
    uv_stream_t *stream = (uv_stream_t *)&c->tcp;
    c->sub.writing = 1;
    c->last_write_ms = sl_now_ms();
    sl_metrics.writes++;
    size_t total = 0;
    for (uint32_t i = 0; i < w->niov; i++)
        total += w->iov[i].len;
    int n = uv_try_write(stream, w->iov, w->niov);
    if (n == UV_EAGAIN)
        n = 0;
    if (n < 0) {
        c->sub.writing = 0;
        sub_write_free(w);
        sl_conn_close(c, n == UV_EPIPE || n == UV_ECONNRESET ? SL_CLOSE_PEER : SL_CLOSE_ERROR);
        return;
    }
    if ((size_t)n == total) {
        sub_write_free(w);
        sub_write_done(c);
        return;
    }
    /* Queue the rest. */
    uint32_t first = 0;
    size_t done = (size_t)n;
    while (done >= w->iov[first].len) {
        done -= w->iov[first].len;
        first++;
    }
    w->iov[first].base += done;
    w->iov[first].len -= done;
    if (c->tcp.write_queue_size == 0)
        c->stall_since_ms = c->last_write_ms;
    c->pending_writes++;
    w->req.data = c;
    int rc = uv_write(&w->req, stream, w->iov + first, w->niov - first, on_sub_write);
    if (rc != 0) {
        c->sub.writing = 0;
        c->pending_writes--;
        sub_write_free(w);
        sl_conn_close(c, SL_CLOSE_ERROR);
    }
}

/* The last write of a stream (overflow marker, shutdown, WebSocket close), then FIN. */
static void send_final(sl_conn_t *c)
{
    const transport_t *tp = transport_of(c);
    sl_sub_t *sub = &c->sub;
    size_t pre = prefix_len(c);
    sub_write_t *w;
    if (sub->overflow) {
        const sl_reader_t *r = sub->overflow_reader;
        size_t room;
        w = sub_write_new(0, 3, pre + MARKER_MAX(r->topic->name_len) + 160);
        put_prefix(c, w, pre);
        char *buf = ctrl_free(w, &room);
        take_ctrl(w, tp->marker(buf, room, sub, r, MARK_OVERFLOW, sub->overflow_reason,
                                sub->overflow_missed));
        if (c->ws != NULL) {
            char reason[64];
            int rl = snprintf(reason, sizeof(reason), "overflow: %s",
                              sl_lag_reason_name((sl_lag_reason_t)sub->overflow_reason));
            buf = ctrl_free(w, &room);
            take_ctrl(w, ws_close_frame(buf, SL_WS_CLOSE_OVERFLOW, reason, (size_t)rl));
            c->ws->close_pending = 1;
        }
        c->reason = SL_CLOSE_OVERFLOW;
    } else {
        w = sub_write_new(0, 2, pre + 160);
        put_prefix(c, w, pre);
        char buf[160];
        put_ctrl(w, buf, tp->closing(c, buf));
    }
    c->close_after_write = 1;
    sub_send(c, w);
}

static sl_reader_t *next_reader(sl_sub_t *sub)
{
    sl_reader_t *best = NULL;
    uint64_t best_gseq = UINT64_MAX;
    for (uint32_t i = 0; i < sub->nreaders; i++) {
        sl_reader_t *r = &sub->readers[i];
        if (r->next > r->topic->head_seq)
            continue;
        sl_msg_t *m = sl_topic_get(r->topic, r->next);
        if (m != NULL && m->gseq < best_gseq) {
            best = r;
            best_gseq = m->gseq;
        }
    }
    return best;
}

/* The one delivery path: control frames and answers first (WebSocket), then markers, then as
 * many owed messages as fit in one write, in order (gseq order on multi-topic streams). */
static size_t deliver(sl_sub_t *sub)
{
    sl_conn_t *c = sl_container_of(sub, sl_conn_t, sub);
    if (c->closing || (c->state != SL_CONN_SSE && c->state != SL_CONN_WS) || sub->writing ||
        c->close_after_write)
        return 0;
    if (sub->overflow || (c->ws != NULL && c->ws->close_pending)) {
        send_final(c);
        return 0;
    }
    /* Re-check every cursor: messages may have been evicted while we were writing. */
    uint64_t now = sl_now_ms();
    for (uint32_t i = 0; i < sub->nreaders; i++) {
        if (sl_hub_check_reader(&c->srv->hub, &sub->readers[i], now)) {
            send_final(c);
            return 0;
        }
    }
    const transport_t *tp = transport_of(c);
    /* Size the write for what is owed now, not for the largest batch. */
    uint64_t owed = 0;
    uint32_t marks = 0;
    for (uint32_t i = 0; i < sub->nreaders; i++) {
        const sl_reader_t *r = &sub->readers[i];
        if (owed < SUB_MAX_IOV)
            owed += r->next <= r->topic->head_seq ? r->topic->head_seq - r->next + 1 : 0;
        /* Every reader's markers go into this write, however many messages are owed. */
        marks += r->mark != SL_MARK_NONE ? 2 : 0;
    }
    uint32_t per_msg = tp->iov_per_msg;
    uint32_t max_msgs = (uint32_t)(owed < SUB_MAX_IOV / per_msg ? owed : SUB_MAX_IOV / per_msg);
    size_t pre = prefix_len(c);
    uint32_t max_iov = max_msgs * per_msg + marks + (pre > 0);
    if (max_iov == 0) {
        if (c->draining)
            send_final(c);
        return 0;
    }
    sub_write_t *w = sub_write_new(max_msgs, max_iov, pre + marker_room(sub));
    put_prefix(c, w, pre);
    for (uint32_t i = 0; i < sub->nreaders; i++) {
        sl_reader_t *r = &sub->readers[i];
        for (int kind = SL_MARK_RESET; kind >= SL_MARK_GAP; kind--) {
            if (!(r->mark & kind))
                continue;
            size_t room;
            char *buf = ctrl_free(w, &room);
            take_ctrl(w, tp->marker(buf, room, sub, r, kind, 0, 0));
        }
        r->mark = SL_MARK_NONE;
    }
    size_t bytes = 0;
    while (w->nmsgs < max_msgs && bytes < SUB_MAX_BYTES) {
        sl_reader_t *r = sub->multi ? next_reader(sub) : &sub->readers[0];
        if (r == NULL || r->next > r->topic->head_seq)
            break;
        sl_msg_t *m = sl_topic_get(r->topic, r->next);
        if (m == NULL && r->disk_ok && (m = sl_ll_next(r)) == NULL) {
            /* Behind the ring of a lossless topic: read back from its log (or report a hole
             * in it, which the next write carries). */
            if (!sl_ll_fetch(r) && r->mark != SL_MARK_NONE)
                sl_hub_sub_ready(&c->srv->hub, sub, now);
            break;
        }
        if (m == NULL)
            break;
        bytes += tp->put_msg(c, w, m);
        sl_msg_ref(m);
        w->msgs[w->nmsgs++] = m;
        r->next++;
    }
    if (w->niov == 0) {
        sub_write_free(w);
        if (c->draining)
            send_final(c);
        return 0;
    }
    sl_metrics.deliveries += w->nmsgs;
    sl_metrics.delivered_bytes += bytes;
    sub_send(c, w);
    return bytes;
}

/* A disk read for reader r completed (lossless.c). */
static void on_disk_ready(sl_reader_t *r)
{
    sl_conn_t *c = sl_container_of(r->sub, sl_conn_t, sub);
    if (c->closing)
        return;
    sl_hub_sub_ready(&c->srv->hub, &c->sub, sl_now_ms());
    sl_server_kick(c->srv);
}

void sl_conn_init_disk(void)
{
    sl_ll_set_ready_cb(on_disk_ready);
}

void sl_conn_pump(sl_conn_t *c)
{
    if (!c->closing && !c->sub.writing)
        (void)deliver(&c->sub);
}

static void on_sub_write(uv_write_t *req, int status)
{
    sub_write_t *w = (sub_write_t *)req;
    sl_conn_t *c = req->data;
    sub_write_free(w);
    c->pending_writes--;
    if (c->closing) {
        c->sub.writing = 0;
        return;
    }
    if (status < 0) {
        c->sub.writing = 0;
        sl_conn_close(c, SL_CLOSE_ERROR);
        return;
    }
    sub_write_done(c);
}

/* Sends a heartbeat to an idle subscriber. */
static void heartbeat(sl_conn_t *c)
{
    char buf[96];
    size_t n = transport_of(c)->heartbeat(c, buf);
    c->last_write_ms = sl_now_ms();
    if (n == 0)
        return;
    sub_write_t *w = sub_write_new(0, 1, n);
    put_ctrl(w, buf, n);
    sl_metrics.heartbeats++;
    sub_send(c, w);
}

void sl_conn_drain(sl_conn_t *c)
{
    if (c->closing)
        return;
    if (c->state == SL_CONN_SSE || c->state == SL_CONN_WS) {
        c->draining = 1;
        if (!c->sub.writing)
            (void)deliver(&c->sub);
    } else if (c->state == SL_CONN_HTTP) {
        /* A request under way is completed and answered (with Connection: close); an idle
         * keep-alive connection goes now. */
        c->draining = 1;
        c->reason = SL_CLOSE_SHUTDOWN;
        if (c->req != NULL && c->req->started)
            return;
        if (c->pending_writes > 0)
            c->close_after_write = 1;
        else
            sl_conn_close(c, SL_CLOSE_SHUTDOWN);
    }
}

/* The request is done with: a subscriber or WebSocket keeps no parser state. */
static void drop_request(sl_conn_t *c)
{
    sl_http_req_dispose(c->req);
    sl_budget_release(sizeof(*c->req) + ALLOC_OVERHEAD);
    free(c->req);
    c->req = NULL;
}

/* Common to every subscription: from here on the hub delivers to this connection. */
static void start_sub(sl_conn_t *c, sl_topic_t **topics, const sl_start_t *starts, uint32_t n,
                      int multi)
{
    /* Bound what the kernel buffers for this reader: left to autotuning, a stalled reader's
     * socket takes megabytes before it reports itself full, and that memory and copying are
     * outside the budget. */
    if (c->srv->cfg->send_buffer > 0) {
        int sndbuf = (int)c->srv->cfg->send_buffer;
        uv_send_buffer_size((uv_handle_t *)&c->tcp, &sndbuf);
    }
    sl_sub_t *sub = &c->sub;
    memset(sub, 0, sizeof(*sub));
    sub->ops = &sub_ops;
    sub->multi = (uint8_t)multi;
    sl_list_init(&sub->ready_link);
    if (n > 0) {
        c->is_sub = 1;
        if (c->is_ws)
            sl_metrics.subscribers_ws++;
        else
            sl_metrics.subscribers_sse++;
        sl_sub_start(&c->srv->hub, sub, topics, starts, n);
    }
    sl_server_kick(c->srv);
}

/* Checks that the readers' array fits in the budget (answering 503 if not). */
static int reserve_readers(sl_conn_t *c, uint32_t n, size_t extra)
{
    size_t rsize = n * sizeof(sl_reader_t) + extra;
    if (sl_hub_reserve(&c->srv->hub, rsize + ALLOC_OVERHEAD) != 0) {
        sl_metrics.conn_rejected[SL_REJECT_CONN_BUDGET]++;
        sl_conn_error(c, 503, "over_capacity", "memory budget exhausted");
        return SL_EOVERLOAD;
    }
    sl_budget_release(rsize + ALLOC_OVERHEAD);
    return 0;
}

int sl_conn_subscribe_sse(sl_conn_t *c, sl_topic_t **topics, const sl_start_t *starts, uint32_t n,
                          int multi)
{
    if (reserve_readers(c, n, 0) != 0)
        return SL_EOVERLOAD;
    static const char head[] = "HTTP/1.1 200 OK\r\nServer: sluice\r\n"
                               "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                               "X-Accel-Buffering: no\r\nConnection: close\r\n";
    char cors[CORS_MAX];
    size_t cors_len = cors_header(c, cors, sizeof(cors));
    resp_write_t *w = resp_alloc(sizeof(head) + cors_len + 52);
    memcpy(w->data, head, sizeof(head) - 1);
    size_t len = sizeof(head) - 1;
    memcpy(w->data + len, cors, cors_len);
    len += cors_len;
    memcpy(w->data + len, "\r\n", 2);
    len += 2;
    len += sl_sse_retry(w->data + len, c->srv->cfg->sse_retry_ms);
    sl_metrics_http(200);
    queue_bytes(c, w, len);
    if (c->closing)
        return 0;
    drop_request(c);
    c->state = SL_CONN_SSE;
    c->deadline_ms = 0;
    /* A stream ends by closing whatever the request said about keep-alive. */
    c->close_after_write = 0;
    c->reason = SL_CLOSE_PEER;
    start_sub(c, topics, starts, n, multi);
    return 0;
}

int sl_conn_upgrade_ws(sl_conn_t *c, const char *accept, sl_topic_t **topics,
                       const sl_start_t *starts, uint32_t n, int multi, const sl_ws_opts_t *opts,
                       const char *pub_topic, size_t pub_topic_len)
{
    if (reserve_readers(c, n, sizeof(sl_ws_t) + pub_topic_len + 1) != 0)
        return SL_EOVERLOAD;
    static const char head[] = "HTTP/1.1 101 Switching Protocols\r\nServer: sluice\r\n"
                               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: ";
    resp_write_t *w = resp_alloc(sizeof(head) + 32);
    memcpy(w->data, head, sizeof(head) - 1);
    size_t len = sizeof(head) - 1;
    memcpy(w->data + len, accept, 28);
    len += 28;
    memcpy(w->data + len, "\r\n\r\n", 4);
    len += 4;
    sl_metrics_http(101);
    queue_bytes(c, w, len);
    if (c->closing)
        return 0;
    drop_request(c);
    sl_ws_t *ws = sl_calloc(1, sizeof(*ws));
    sl_budget_charge(sizeof(*ws) + ALLOC_OVERHEAD);
    ws->mode = opts->mode;
    ws->json = opts->json;
    ws->ack = opts->ack;
    ws->last_ping_ms = sl_now_ms();
    if (pub_topic_len > 0) {
        ws->topic = sl_strndup(pub_topic, pub_topic_len);
        ws->topic_len = pub_topic_len;
        sl_budget_charge(pub_topic_len + 1 + ALLOC_OVERHEAD);
    }
    c->ws = ws;
    c->is_ws = 1;
    sl_metrics.ws_connections++;
    c->state = SL_CONN_WS;
    c->deadline_ms = 0;
    c->close_after_write = 0;
    c->reason = SL_CLOSE_PEER;
    start_sub(c, topics, starts, (opts->mode & SL_WS_SUB) ? n : 0, multi);
    return 0;
}

/* ---- reading requests ------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sl_conn_t *c = (sl_conn_t *)h;
    (void)suggested;
    /* One buffer for every connection: a read is fully handled before the next one, and
     * whatever a request needs is copied out of it, bounded by the request limits. */
    buf->base = c->srv->rbuf;
    buf->len = c->srv->rbuf_size;
}

static const char *status_message(int status)
{
    switch (status) {
    case 413:
        return "request body over the configured limit";
    case 414:
        return "request target over the configured limit";
    case 417:
        return "only 100-continue is supported";
    case 431:
        return "header block over the configured limit";
    case 503:
        return "memory budget exhausted";
    default:
        return "malformed HTTP request";
    }
}

static void set_deadline(sl_conn_t *c, uint64_t now, uint64_t after, sl_close_reason_t kind)
{
    c->deadline_ms = now + after;
    c->deadline_kind = (uint8_t)kind;
}

/* ---- input: one decision whether to read, one path for held-back input ------------------- */

int sl_conn_input_wanted(const sl_conn_t *c)
{
    if (c->closing)
        return 0;
    /* Input of subscribers and lingering connections is discarded; reading shows the FIN. */
    if (c->state == SL_CONN_SSE || c->state == SL_CONN_LINGER)
        return 1;
    if (c->peer_eof)
        return 0;
    /* Blocked: the socket is still read, into the stash and up to its cap, so a peer that
     * goes away is seen at once instead of holding a connection nobody reads. */
    if (c->parked || c->out_blocked || c->input_held)
        return c->stash_len < STASH_MAX;
    return !c->deferred;
}

/* Bytes of replies queued for the peer and not yet taken by its socket. */
static size_t out_backlog(const sl_conn_t *c)
{
    return c->tcp.write_queue_size + (c->ws != NULL ? c->ws->out_len : 0);
}

int sl_conn_input_blocked(sl_conn_t *c)
{
    size_t b = out_backlog(c);
    if (b > OUT_HIGH)
        c->out_blocked = 1;
    else if (b <= OUT_LOW)
        c->out_blocked = 0;
    return c->parked || c->out_blocked;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* Starts or stops reading the socket as sl_conn_input_wanted says. */
static void sync_reading(sl_conn_t *c)
{
    if (c->closing)
        return;
    int want = sl_conn_input_wanted(c);
    if (want && !c->reading) {
        int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        if (rc != 0 && rc != UV_EALREADY) {
            sl_conn_close(c, SL_CLOSE_ERROR);
            return;
        }
        c->reading = 1;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

/* Keeps input that a block held back: the rest of the read being handled, then what is read
 * while blocked until the stash reaches STASH_MAX (so it stays below STASH_MAX plus one read
 * buffer). */
static void stash_input(sl_conn_t *c, const char *data, size_t len)
{
    if (len == 0)
        return;
    c->stash = sl_realloc(c->stash, c->stash_len + len);
    memcpy(c->stash + c->stash_len, data, len);
    sl_budget_charge(len + (c->stash_len ? 0 : ALLOC_OVERHEAD));
    c->stash_len += len;
}

static size_t process(sl_conn_t *c, const char *data, size_t len);

/* Handles input in the connection's current state (HTTP requests, then WebSocket frames after
 * an upgrade; subscribers and lingering connections discard it). Stops where the input is
 * blocked and keeps the rest in the stash for sl_conn_resume_input. */
static void take_input(sl_conn_t *c, const char *data, size_t len)
{
    size_t off = 0;
    c->in_input = 1;
    for (;;) {
        size_t used;
        if (c->state == SL_CONN_HTTP)
            used = process(c, data + off, len - off);
        else if (c->state == SL_CONN_WS)
            used = sl_ws_input(c, data + off, len - off);
        else
            break;
        off += used;
        if (off >= len || c->closing || sl_conn_input_blocked(c) || used == 0)
            break;
    }
    c->in_input = 0;
    if (c->closing || (c->state != SL_CONN_HTTP && c->state != SL_CONN_WS))
        return;
    if (sl_conn_input_blocked(c)) {
        c->input_held = 1;
        stash_input(c, data + off, len - off);
    }
}

void sl_conn_resume_input(sl_conn_t *c)
{
    if (c->closing || c->in_input)
        return;
    if (c->input_held && !sl_conn_input_blocked(c)) {
        c->input_held = 0;
        char *st = c->stash;
        size_t n = c->stash_len;
        c->stash = NULL;
        c->stash_len = 0;
        if (c->state == SL_CONN_WS)
            sl_ws_input_resumed(c, sl_now_ms());
        /* Also with nothing stashed: a WebSocket parser may hold buffered frames. */
        take_input(c, st != NULL ? st : "", n);
        if (st != NULL) {
            sl_budget_release(n + ALLOC_OVERHEAD);
            free(st);
        }
    }
    sync_reading(c);
}

/* A request was answered (or is being answered): the connection goes on with the next one, or
 * is shut down once the answer is written. */
static void request_done(sl_conn_t *c)
{
    c->park_deadline_ms = 0;
    if (c->close_after_write) {
        if (c->pending_writes == 0)
            finish(c);
        return;
    }
    sl_http_req_next(c->req);
    set_deadline(c, sl_now_ms(), c->srv->cfg->idle_timeout_ms, SL_CLOSE_IDLE_TIMEOUT);
}

static void on_wake(sl_waiter_t *w, int status)
{
    sl_conn_t *c = sl_container_of(w, sl_conn_t, wait);
    int kind = w->kind ? w->kind : c->parked;
    c->parked = 0;
    if (c->closing)
        return;
    if (c->state == SL_CONN_WS) {
        sl_ws_resume(c, kind, status);
    } else {
        sl_api_resume(c, kind, status);
        if (!c->parked && !c->closing && c->state == SL_CONN_HTTP)
            request_done(c);
    }
    sl_conn_resume_input(c);
}

void sl_conn_park(sl_conn_t *c, sl_topic_t *t, int kind, uint64_t seq, uint64_t deadline_ms)
{
    /* Input stops while parked (sl_conn_input_wanted), so nothing can park twice. */
    assert(!c->parked);
    c->parked = (uint8_t)kind;
    c->wait.wake = on_wake;
    sl_ll_wait(&c->wait, t, kind, seq, deadline_ms);
    c->deadline_ms = 0; /* the waiter has its own deadline */
    sync_reading(c);
}

/* Parses and dispatches the HTTP requests in data. Returns the bytes it took: all of them,
 * unless the input was blocked after a request or the connection became a WebSocket (then the
 * rest are frames). */
static size_t process(sl_conn_t *c, const char *data, size_t len)
{
    sl_server_t *srv = c->srv;
    const sl_config_t *cfg = srv->cfg;
    size_t off = 0;
    while (off < len) {
        if (c->close_after_write)
            return len; /* answered for good: what follows is discarded */
        if (c->req == NULL) {
            c->req = sl_malloc(sizeof(*c->req));
            sl_budget_charge(sizeof(*c->req) + ALLOC_OVERHEAD);
            sl_http_req_init(c->req, &srv->limits);
        }
        sl_http_req_t *req = c->req;
        int was_started = req->started, had_headers = req->headers_done;
        size_t used = 0;
        sl_http_result_t res = sl_http_feed(req, data + off, len - off, &used);
        off += used;
        uint64_t now = sl_now_ms();
        if (!was_started && req->started)
            set_deadline(c, now, cfg->header_timeout_ms, SL_CLOSE_HEADER_TIMEOUT);
        if (req->headers_done && !had_headers)
            /* The body must be complete in time; trickling bytes does not extend it. */
            set_deadline(c, now, cfg->body_timeout_ms, SL_CLOSE_BODY_TIMEOUT);
        if (res == SL_HTTP_MORE) {
            if (req->expect_continue && !c->continue_sent) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                resp_write_t *w = resp_alloc(sizeof(cont));
                memcpy(w->data, cont, sizeof(cont) - 1);
                c->continue_sent = 1;
                sl_metrics_http(100);
                queue_bytes(c, w, sizeof(cont) - 1);
            }
            return len;
        }
        if (res == SL_HTTP_ERROR) {
            SL_INFO("bad request", "status=%d error=%s llhttp=\"%s\"", req->status, req->error,
                    llhttp_get_error_reason(&req->parser) ? llhttp_get_error_reason(&req->parser)
                                                          : "");
            /* Bodies are publishes: refusing one is a refused publish. */
            if (req->status == 413)
                sl_metrics.pub_rejected[SL_REJECT_PUB_TOO_LARGE]++;
            else if (req->status == 503)
                sl_metrics.pub_rejected[SL_REJECT_PUB_BUDGET]++;
            c->close_after_write = 1;
            c->reason = SL_CLOSE_PROTOCOL;
            sl_conn_error(c, req->status, req->error, status_message(req->status));
            return len;
        }
        if (c->draining) {
            c->close_after_write = 1;
        } else if (!sl_http_keep_alive(req)) {
            c->close_after_write = 1;
            c->reason = SL_CLOSE_PROTOCOL;
        }
        c->continue_sent = 0;
        sl_api_dispatch(c, req);
        if (c->parked)
            return off;
        if (c->closing)
            return len;
        if (c->state == SL_CONN_WS)
            return off; /* frames sent right behind the handshake follow */
        if (c->state != SL_CONN_HTTP)
            return len; /* a subscriber's further input is discarded */
        request_done(c);
        if (c->close_after_write)
            return len;
        if (sl_conn_input_blocked(c))
            return off;
    }
    return len;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sl_conn_t *c = (sl_conn_t *)s;
    if (c->closing || nread == 0)
        return;
    if (nread < 0) {
        if (nread != UV_EOF && nread != UV_ECONNRESET)
            SL_DEBUG("read error", "error=%s", uv_strerror((int)nread));
        c->peer_eof = 1;
        c->reading = 0; /* libuv stops reading at EOF or an error */
        if (c->state == SL_CONN_LINGER) {
            sl_conn_close(c, c->reason);
        } else if (c->state == SL_CONN_HTTP && nread == UV_EOF && c->pending_writes > 0 &&
                   !c->parked) {
            /* A half-close after the request: answer, then close. (A parked publish is not
             * done yet: its peer is gone, and waiting for room on its behalf would keep a
             * connection nobody reads.) */
            c->close_after_write = 1;
        } else {
            sl_conn_close(c, nread == UV_EOF || nread == UV_ECONNRESET ? SL_CLOSE_PEER
                                                                       : SL_CLOSE_ERROR);
        }
        return;
    }
    if (c->input_held) {
        /* Blocked: keep it for when the block is gone (sl_conn_input_wanted bounds it). */
        stash_input(c, buf->base, (size_t)nread);
        sync_reading(c);
        return;
    }
    take_input(c, buf->base, (size_t)nread);
    if ((size_t)nread == c->srv->rbuf_size && !c->closing &&
        (c->state == SL_CONN_HTTP || c->state == SL_CONN_WS) && !c->deferred) {
        /* More is likely waiting: it is read at the next turn, after the others had theirs
         * and the flush pass ran, so one peer cannot fill a turn with its input. */
        c->deferred = 1;
        sl_list_insert_tail(&c->srv->deferred, &c->defer_link);
        sl_server_kick(c->srv);
    }
    sync_reading(c);
}

void sl_conn_resume_deferred(sl_server_t *srv)
{
    sl_list_t list;
    sl_list_init(&list);
    /* Move them out first: a connection resumed here may be deferred again, for next turn. */
    while (!sl_list_empty(&srv->deferred)) {
        sl_list_t *it = srv->deferred.next;
        sl_list_remove(it);
        sl_list_insert_tail(&list, it);
    }
    while (!sl_list_empty(&list)) {
        sl_conn_t *c = sl_container_of(list.next, sl_conn_t, defer_link);
        sl_list_remove(&c->defer_link);
        c->deferred = 0;
        sl_conn_resume_input(c);
    }
}

void sl_conn_start(sl_conn_t *c)
{
    c->reason = SL_CLOSE_PEER;
    set_deadline(c, sl_now_ms(), c->srv->cfg->header_timeout_ms, SL_CLOSE_HEADER_TIMEOUT);
    sync_reading(c);
}

void sl_conn_reject(sl_conn_t *c, const char *why)
{
    c->rejected = 1;
    c->close_after_write = 1;
    c->reason = SL_CLOSE_PROTOCOL;
    set_deadline(c, sl_now_ms(), LINGER_MS, SL_CLOSE_PROTOCOL);
    sl_conn_error(c, 503, "over_capacity", why);
    sync_reading(c);
}

void sl_conn_tick(sl_conn_t *c, uint64_t now)
{
    if (c->closing)
        return;
    if (c->deadline_ms && now >= c->deadline_ms) {
        if (c->deadline_kind == SL_CLOSE_HEADER_TIMEOUT ||
            c->deadline_kind == SL_CLOSE_IDLE_TIMEOUT || c->deadline_kind == SL_CLOSE_BODY_TIMEOUT)
            SL_DEBUG("connection timed out", "reason=%s",
                     sl_close_reason_name((sl_close_reason_t)c->deadline_kind));
        sl_conn_close(c, (sl_close_reason_t)c->deadline_kind);
        return;
    }
    size_t wq = c->tcp.write_queue_size;
    if (wq == 0 || wq != c->stall_wq) {
        c->stall_wq = wq;
        c->stall_since_ms = now;
    } else if (now - c->stall_since_ms >= c->srv->cfg->write_stall_ms) {
        SL_INFO("write stalled, closing", "pending_bytes=%zu stalled_ms=%" PRIu64, wq,
                now - c->stall_since_ms);
        sl_conn_close(c, SL_CLOSE_WRITE_STALL);
        return;
    }
    if (c->state == SL_CONN_WS) {
        sl_ws_tick(c, now);
        if (c->closing)
            return;
    }
    if ((c->state == SL_CONN_SSE || c->state == SL_CONN_WS) && c->is_sub && !c->sub.writing &&
        !c->draining && c->sub.heartbeat_ms && now - c->last_write_ms >= c->sub.heartbeat_ms)
        heartbeat(c);
}
