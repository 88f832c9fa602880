/*
 * Connections (see conn.h): the one close path, response writes, the delivery path shared by
 * every subscriber transport, and the input gate. A connection's memory is charged to the
 * budget when it is accepted and released in its close callback. Writes to subscribers hold
 * references to the shared, pre-encoded message frames, never copies; one write per subscriber
 * is in flight at a time and carries as many messages as fit in one writev. What a protocol
 * does is in its transport table (http1.c, sse_conn.c, ws_conn.c).
 */
#include "net/conn.h"

#include "lib/budget.h"
#include "lib/log.h"
#include "lib/sse.h"
#include "lib/ws.h"

#include <assert.h>
#include <inttypes.h>
#include <openssl/evp.h>
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

/* A plain response write: owned by the write request, freed in its callback. */
typedef struct resp_write {
    uv_write_t req;
    size_t size; /* of the allocation (sl_bfree) */
    char data[];
} resp_write_t;

typedef sl_sub_write_t sub_write_t;

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
    /* uv_close closes the socket now, not in the callback at the end of the loop turn: the
     * gauges fall now too, so a /metrics answer later in this turn matches the kernel. */
    sl_metrics.connections--;
    sl_metrics.closed[c->reason]++;
    if (c->is_sub && c->tp->subscribers != NULL)
        (*c->tp->subscribers)--;
    if (c->tp->connections != NULL)
        (*c->tp->connections)--;
    /* Cursors go now, so no flush pass offers this connection anything more. */
    sl_sub_dispose(&c->srv->hub, &c->sub);
    if (c->req != NULL) {
        sl_http_req_dispose(c->req);
        sl_bfree(c->req, sizeof(*c->req));
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
    if (c->tp->free != NULL)
        c->tp->free(c);
    sl_bfree(c->stash, c->stash_len);
    sl_list_remove(&c->link);
    srv->nconns--;
    ip_release(srv, c->ip);
    sl_jwt_claims_free(c->claims);
    sl_bfree(c, sizeof(*c));
    sl_server_conn_gone(srv);
}

/* How long a closing connection waits for its peer: for a WebSocket, the close reply. */
static uint64_t linger_ms(const sl_conn_t *c)
{
    return c->tp->linger_ms != NULL ? c->tp->linger_ms(c) : LINGER_MS;
}

/* ---- lingering close -------------------------------------------------------------------- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
    sl_conn_t *c = req->data;
    sl_bfree(req, sizeof(*req));
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
void sl_conn_finish(sl_conn_t *c)
{
    if (c->closing || c->state == SL_CONN_LINGER)
        return;
    if (c->peer_eof) {
        /* The peer has closed its side already: nothing to linger for. */
        sl_conn_close(c, c->reason);
        return;
    }
    if (c->state == SL_CONN_STREAM || c->state == SL_CONN_DUPLEX)
        sl_sub_dispose(&c->srv->hub, &c->sub);
    c->state = SL_CONN_LINGER;
    /* Whatever input was held back will never be handled now. */
    c->input_held = 0;
    sync_reading(c);
    uv_shutdown_t *sr = sl_balloc(sizeof(*sr));
    sr->data = c;
    c->deadline_ms = sl_now_ms() + linger_ms(c);
    c->deadline_kind = c->reason;
    if (uv_shutdown(sr, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        sl_bfree(sr, sizeof(*sr));
        sl_conn_close(c, c->reason);
    }
}

/* ---- responses -------------------------------------------------------------------------- */

static void on_resp_write(uv_write_t *req, int status)
{
    resp_write_t *w = (resp_write_t *)req;
    sl_conn_t *c = req->data;
    c->resp_bytes -= w->size;
    sl_bfree(w, w->size);
    c->pending_writes--;
    if (c->closing)
        return;
    if (status < 0) {
        sl_conn_close(c, SL_CLOSE_ERROR);
        return;
    }
    if (c->close_after_write && c->pending_writes == 0) {
        sl_conn_finish(c);
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
    c->resp_bytes += w->size;
    c->last_write_ms = sl_now_ms();
    if (c->tcp.write_queue_size == 0)
        c->stall_since_ms = c->last_write_ms;
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, (unsigned)nbufs, on_resp_write);
    if (bufs != &one)
        free(bufs);
    if (rc != 0) {
        c->pending_writes--;
        c->resp_bytes -= w->size;
        sl_bfree(w, w->size);
        sl_conn_close(c, SL_CLOSE_ERROR);
    }
}

static resp_write_t *resp_alloc(size_t cap)
{
    /* A response is owed once the request was taken; it is charged, never refused. */
    resp_write_t *w = sl_balloc(sizeof(resp_write_t) + cap);
    w->size = sizeof(resp_write_t) + cap;
    return w;
}

/* The CORS header lines for the current request's Origin (docs/protocol.md): `*` when no
 * allow-list is configured (but not for admin and listing endpoints), the origin itself when
 * it is listed, nothing otherwise. */
size_t sl_conn_cors(const sl_conn_t *c, char *buf, size_t cap)
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

void sl_conn_write_raw(sl_conn_t *c, const char *data, size_t len)
{
    if (c->closing)
        return;
    resp_write_t *w = resp_alloc(len);
    memcpy(w->data, data, len);
    queue_bytes(c, w, len);
}

void sl_conn_respond(sl_conn_t *c, int status, const char *content_type, const char *extra,
                     const char *body, size_t body_len)
{
    if (c->closing)
        return;
    sl_metrics_http(status);
    size_t extra_len = extra ? strlen(extra) : 0;
    char cors[SL_CORS_MAX];
    sl_conn_cors(c, cors, sizeof(cors));
    /* The head is formatted first, so the write holds exactly what goes out: a pipelining peer's
     * answers cost their bytes, not a worst case each. */
    char small[1024];
    size_t hcap = 256 + SL_CORS_MAX + extra_len;
    char *head = hcap <= sizeof(small) ? small : sl_malloc(hcap);
    int n;
    if (status == 204)
        n = snprintf(head, hcap, "HTTP/1.1 204 No Content\r\nServer: sluice\r\n%s%s%s\r\n",
                     c->close_after_write ? "Connection: close\r\n" : "", cors, extra ? extra : "");
    else
        n = snprintf(head, hcap,
                     "HTTP/1.1 %d %s\r\nServer: sluice\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\nCache-Control: no-store\r\n%s%s%s\r\n",
                     status, sl_http_reason(status), content_type ? content_type : "text/plain",
                     body_len, c->close_after_write ? "Connection: close\r\n" : "", cors,
                     extra ? extra : "");
    resp_write_t *w = resp_alloc((size_t)n + body_len);
    memcpy(w->data, head, (size_t)n);
    memcpy(w->data + n, body, body_len);
    if (head != small)
        free(head);
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
    sub_write_t *w = sl_balloc(size);
    memset(w, 0, sizeof(*w));
    w->size = size;
    /* libuv keeps its own copy of an iov array longer than 4 while the write is queued. */
    w->uv_copy = max_iov > 4 ? sl_budget_size(max_iov * sizeof(uv_buf_t)) : 0;
    sl_budget_charge(w->uv_copy);
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
    sl_budget_release(w->uv_copy);
    sl_bfree(w, w->size);
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

#define MARKER_MAX(name_len) ((name_len)*6 + 256)

static size_t marker_room(const sl_sub_t *sub)
{
    size_t room = 0;
    for (uint32_t i = 0; i < sub->nreaders; i++)
        if (sub->readers[i].mark != SL_MARK_NONE)
            room += 2 * MARKER_MAX(sub->readers[i].topic->name_len);
    return room;
}

const char *sl_conn_marker_name(int kind)
{
    return kind == SL_MARK_GAP ? "gap" : kind == SL_MARK_RESET ? "reset" : "overflow";
}

size_t sl_conn_marker_fields(char *buf, size_t cap, const sl_reader_t *r, int kind, int reason,
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

void sl_sub_write_put(sl_sub_write_t *w, const void *base, size_t len)
{
    assert(w->niov < w->max_iov);
    w->iov[w->niov++] = uv_buf_init((char *)base, (unsigned)len);
}

int sl_conn_wants_heartbeat_event(const sl_conn_t *c)
{
    for (uint32_t i = 0; i < c->sub.nreaders; i++)
        if (c->sub.readers[i].topic->conf.heartbeat_event)
            return 1;
    return 0;
}

/* ---- the delivery path ------------------------------------------------------------------ */

static void on_sub_write(uv_write_t *req, int status);
static void send_final(sl_conn_t *c);
static size_t deliver(sl_sub_t *sub);

static const sl_sub_ops_t sub_ops = {.deliver = deliver};

static size_t prefix_len(const sl_conn_t *c)
{
    return c->tp->prefix_len != NULL ? c->tp->prefix_len(c) : 0;
}

static int final_due(const sl_conn_t *c)
{
    return c->tp->final_due != NULL && c->tp->final_due(c);
}

static void put_prefix(sl_conn_t *c, sub_write_t *w, size_t len)
{
    if (len == 0)
        return;
    char *p = take_ctrl(w, len);
    size_t n = c->tp->take_prefix(c, p);
    assert(n == len);
    (void)n;
}

/* What follows a completed subscriber write: the final FIN, or the next batch. */
static void sub_write_done(sl_conn_t *c)
{
    c->sub.writing = 0;
    if (c->tp->written != NULL)
        c->tp->written(c, sl_now_ms());
    if (c->close_after_write) {
        sl_conn_finish(c);
        return;
    }
    sl_hub_sub_ready(&c->srv->hub, &c->sub, sl_now_ms());
    if (prefix_len(c) > 0 || final_due(c)) {
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
    const sl_transport_t *tp = c->tp;
    sl_sub_t *sub = &c->sub;
    size_t pre = prefix_len(c);
    sub_write_t *w;
    if (sub->overflow) {
        const sl_reader_t *r = sub->overflow_reader;
        size_t room;
        w = sub_write_new(0, 3, pre + MARKER_MAX(r->topic->name_len) + 160);
        put_prefix(c, w, pre);
        char *buf = ctrl_free(w, &room);
        take_ctrl(w, tp->marker(buf, room, sub, r, SL_MARK_OVERFLOW, sub->overflow_reason,
                                sub->overflow_missed));
        buf = ctrl_free(w, &room);
        size_t end = tp->overflow_end != NULL ? tp->overflow_end(c, buf, sub->overflow_reason) : 0;
        if (end > 0)
            take_ctrl(w, end);
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
        sl_msg_t *m = sl_topic_at(r->topic, r->next);
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
    if (c->closing || (c->state != SL_CONN_STREAM && c->state != SL_CONN_DUPLEX) || sub->writing ||
        c->close_after_write)
        return 0;
    if (sub->overflow || final_due(c)) {
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
    const sl_transport_t *tp = c->tp;
    int crossed;
again:
    crossed = 0;
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
        sl_msg_t *m = r->next >= sl_topic_tail(r->topic) ? sl_topic_at(r->topic, r->next) : NULL;
        if (m == NULL && r->disk_ok && (m = sl_reader_read_next(r)) == NULL) {
            /* Behind the ring of a topic that reads back (a lossless log, Kafka): read back,
             * or report what is gone (a gap the next write carries) or pass holes. */
            if (!sl_reader_read_fetch(r) &&
                (r->mark != SL_MARK_NONE || r->next >= sl_topic_tail(r->topic)))
                sl_hub_sub_ready(&c->srv->hub, sub, now);
            break;
        }
        if (m == NULL)
            break;
        if (m->seq > r->next && sl_reader_cross(r, m->seq)) {
            /* Ids declared lost before m: their gap marker goes out before it. */
            crossed = 1;
            break;
        }
        bytes += tp->put_msg(c, w, m);
        sl_msg_ref(m);
        w->msgs[w->nmsgs++] = m;
        r->next = m->seq + 1; /* past any hole before it */
    }
    if (w->niov == 0) {
        sub_write_free(w);
        if (crossed)
            goto again; /* the marker first, now that it is owed; it is not owed twice */
        if (c->draining)
            send_final(c);
        return 0;
    }
    sl_metrics.deliveries += w->nmsgs;
    sl_metrics.delivered_bytes += bytes;
    sub_send(c, w);
    return bytes;
}

/* A read-back for reader r completed (its topic's backend). */
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
    sl_reader_set_ready_cb(on_disk_ready);
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
    size_t n = c->tp->heartbeat(c, buf);
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
    if (c->state == SL_CONN_STREAM || c->state == SL_CONN_DUPLEX) {
        c->draining = 1;
        if (!c->sub.writing)
            (void)deliver(&c->sub);
    } else if (c->state == SL_CONN_REQUEST) {
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
    sl_bfree(c->req, sizeof(*c->req));
    c->req = NULL;
}

void sl_conn_start_sub(sl_conn_t *c, const sl_transport_t *tp, int state, sl_topic_t **topics,
                       const sl_start_t *starts, uint32_t n, int multi)
{
    drop_request(c);
    c->tp = tp;
    c->state = (uint8_t)state;
    c->deadline_ms = 0;
    /* A stream ends by closing whatever the request said about keep-alive. */
    c->close_after_write = 0;
    c->reason = SL_CLOSE_PEER;
    if (tp->connections != NULL)
        (*tp->connections)++;
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
        if (tp->subscribers != NULL)
            (*tp->subscribers)++;
        sl_sub_init(&c->srv->hub, sub, topics, starts, n);
    }
    sl_server_kick(c->srv);
}

int sl_conn_reserve_readers(sl_conn_t *c, uint32_t n, size_t extra)
{
    size_t rsize = n * sizeof(sl_reader_t) + extra;
    if (sl_hub_reserve(&c->srv->hub, sl_budget_size(rsize)) != 0) {
        sl_metrics.conn_rejected[SL_REJECT_CONN_BUDGET]++;
        sl_conn_error(c, 503, "over_capacity", "memory budget exhausted");
        return SL_EOVERLOAD;
    }
    sl_budget_release(sl_budget_size(rsize)); /* only a check: sl_sub_init charges them */
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

void sl_conn_set_deadline(sl_conn_t *c, uint64_t now, uint64_t after, sl_close_reason_t kind)
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
    if (c->state == SL_CONN_STREAM || c->state == SL_CONN_LINGER)
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
    /* Responses count until libuv has called them back, also when the kernel took their bytes
     * at once: a loop turn's worth of answers to a pipelining peer is memory until then. */
    return c->resp_bytes + c->tcp.write_queue_size + prefix_len(c);
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
    c->stash = sl_brealloc(c->stash, c->stash_len, c->stash_len + len);
    memcpy(c->stash + c->stash_len, data, len);
    c->stash_len += len;
}

/* Handles input in the connection's current state (HTTP requests, then WebSocket frames after
 * an upgrade; subscribers and lingering connections discard it). Stops where the input is
 * blocked and keeps the rest in the stash for sl_conn_resume_input. */
static void take_input(sl_conn_t *c, const char *data, size_t len)
{
    size_t off = 0;
    c->in_input = 1;
    for (;;) {
        if (c->tp->input == NULL || c->state == SL_CONN_LINGER)
            break; /* discarded */
        size_t used = c->tp->input(c, data + off, len - off);
        off += used;
        if (off >= len || c->closing || sl_conn_input_blocked(c) || used == 0)
            break;
    }
    c->in_input = 0;
    if (c->closing || c->tp->input == NULL || c->state == SL_CONN_LINGER)
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
        if (c->tp->input_resumed != NULL)
            c->tp->input_resumed(c, sl_now_ms());
        /* Also with nothing stashed: a WebSocket parser may hold buffered frames. */
        take_input(c, st != NULL ? st : "", n);
        sl_bfree(st, n);
    }
    sync_reading(c);
}

static void on_wake(sl_waiter_t *w, int status)
{
    sl_conn_t *c = sl_container_of(w, sl_conn_t, wait);
    int kind = w->kind ? w->kind : c->parked;
    c->parked = 0;
    if (c->closing)
        return;
    c->tp->resume(c, kind, status);
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
        } else if (c->state == SL_CONN_REQUEST && nread == UV_EOF && c->pending_writes > 0 &&
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
    if (c->state == SL_CONN_LINGER || c->tp->input == NULL) {
        sync_reading(c); /* discarded: only the peer's FIN matters now */
        return;
    }
    if (c->input_held) {
        /* Blocked: keep it for when the block is gone (sl_conn_input_wanted bounds it). */
        stash_input(c, buf->base, (size_t)nread);
        sync_reading(c);
        return;
    }
    take_input(c, buf->base, (size_t)nread);
    if ((size_t)nread == c->srv->rbuf_size && !c->closing && c->tp->input != NULL &&
        c->state != SL_CONN_LINGER && !c->deferred) {
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
    c->tp = &sl_http1_transport;
    c->reason = SL_CLOSE_PEER;
    sl_conn_set_deadline(c, sl_now_ms(), c->srv->cfg->header_timeout_ms, SL_CLOSE_HEADER_TIMEOUT);
    sync_reading(c);
}

void sl_conn_reject(sl_conn_t *c, const char *why)
{
    sl_conn_reject_status(c, 503, "over_capacity", why, NULL);
}

void sl_conn_reject_status(sl_conn_t *c, int status, const char *code, const char *why,
                           const char *extra)
{
    c->tp = &sl_http1_transport;
    c->rejected = 1;
    c->close_after_write = 1;
    c->reason = SL_CLOSE_PROTOCOL;
    sl_conn_set_deadline(c, sl_now_ms(), LINGER_MS, SL_CLOSE_PROTOCOL);
    sl_conn_respond_error(c, status, code, why, extra);
    sync_reading(c);
}

uint64_t sl_conn_rate_publish(sl_conn_t *c, size_t n, size_t bytes)
{
    sl_ratelimit_t *rl = &c->srv->rl;
    if (rl->rates[SL_RL_MSGS].rate <= 0 && rl->rates[SL_RL_BYTES].rate <= 0)
        return 0;
    sl_rl_key_t key = {.kind = 'i'};
    int by_subject = c->claims != NULL && c->claims->subject[0] != '\0';
    if (by_subject) {
        unsigned int mdlen = 0;
        key.kind = 's';
        EVP_Digest(c->claims->subject, strlen(c->claims->subject), key.k, &mdlen, EVP_sha256(),
                   NULL);
    } else {
        memcpy(key.k, c->ip->addr, 16);
    }
    double want[SL_RL__COUNT] = {(double)n, (double)bytes, 0};
    char subj[65];
    uint64_t ms = sl_rl_take(rl, &key, want, sl_now_ms());
    if (ms != 0) {
        sl_metrics.rate_limited[by_subject ? 0 : 1]++;
        sl_metrics.pub_rejected[SL_REJECT_PUB_RATE]++;
        SL_INFO("publish refused",
                "reason=rate_limited key=%s subject=\"%.200s\" retry_ms=%" PRIu64,
                by_subject ? "subject" : "ip", sl_auth_subject_log(c->claims, subj),
                ms == UINT64_MAX ? 0 : ms);
    }
    return ms;
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
    if (c->tp->tick != NULL) {
        c->tp->tick(c, now);
        if (c->closing)
            return;
    }
    /* A subscriber or WebSocket lives no longer than its token (plus the leeway the token was
     * accepted with). */
    if (c->claims != NULL && c->claims->exp != 0 && !c->expired && c->srv->auth != NULL &&
        (c->state == SL_CONN_STREAM || c->state == SL_CONN_DUPLEX) &&
        (int64_t)(sl_wall_ms() / 1000) > c->claims->exp + c->srv->auth->opts.leeway_s) {
        c->expired = 1;
        sl_metrics.auth_expired++;
        char subj[65];
        SL_INFO("token expired, closing", "transport=%s subject=\"%s\"", c->tp->name,
                sl_auth_subject_log(c->claims, subj));
        if (c->tp->expired != NULL)
            c->tp->expired(c);
        else
            sl_conn_close(c, SL_CLOSE_TOKEN_EXPIRED);
        return;
    }
    if ((c->state == SL_CONN_STREAM || c->state == SL_CONN_DUPLEX) && c->is_sub &&
        !c->sub.writing && !c->draining && c->sub.heartbeat_ms &&
        now - c->last_write_ms >= c->sub.heartbeat_ms)
        heartbeat(c);
}
