/*
 * The HTTP/1 transport: a connection's input parsed as requests (lib/http.c does the grammar
 * and the limits), each complete request handed to the server's handler, with the header,
 * body and keep-alive deadlines, 100-continue, and the return to the next request once one is
 * answered. A request that becomes a subscription or a WebSocket hands the connection over to
 * that transport.
 */
#include "net/conn.h"

#include "lib/budget.h"
#include "lib/log.h"

#include <stdlib.h>
#include <string.h>

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

/* A request was answered (or is being answered): the connection goes on with the next one, or
 * is shut down once the answer is written. */
static void request_done(sl_conn_t *c)
{
    c->park_deadline_ms = 0;
    if (c->close_after_write) {
        if (c->pending_writes == 0)
            sl_conn_finish(c);
        return;
    }
    sl_http_req_next(c->req);
    sl_conn_set_deadline(c, sl_now_ms(), c->srv->cfg->idle_timeout_ms, SL_CLOSE_IDLE_TIMEOUT);
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
            c->req = sl_balloc(sizeof(*c->req));
            sl_http_req_init(c->req, &srv->limits);
        }
        sl_http_req_t *req = c->req;
        int was_started = req->started, had_headers = req->headers_done;
        size_t used = 0;
        sl_http_result_t res = sl_http_feed(req, data + off, len - off, &used);
        off += used;
        uint64_t now = sl_now_ms();
        if (!was_started && req->started)
            sl_conn_set_deadline(c, now, cfg->header_timeout_ms, SL_CLOSE_HEADER_TIMEOUT);
        if (req->headers_done && !had_headers)
            c->body_deadline_ms = now + cfg->body_timeout_ms;
        if (req->headers_done && res == SL_HTTP_MORE) {
            /* A body must keep coming (no byte for idle_timeout: gone) and be complete within
             * body_timeout of its start, however it trickles. */
            if (now + cfg->idle_timeout_ms < c->body_deadline_ms)
                sl_conn_set_deadline(c, now, cfg->idle_timeout_ms, SL_CLOSE_IDLE_TIMEOUT);
            else
                sl_conn_set_deadline(c, now, c->body_deadline_ms - now, SL_CLOSE_BODY_TIMEOUT);
        }
        if (res == SL_HTTP_MORE) {
            if (req->expect_continue && !c->continue_sent) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                c->continue_sent = 1;
                sl_metrics_http(100);
                sl_conn_write_raw(c, cont, sizeof(cont) - 1);
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
        srv->handler->request(c, req);
        if (c->parked)
            return off;
        if (c->closing)
            return len;
        if (c->tp != &sl_http1_transport)
            /* Upgraded: what follows belongs to the new protocol (frames sent right behind a
             * WebSocket handshake); a subscriber's input is discarded. */
            return c->tp->input != NULL ? off : len;
        request_done(c);
        if (c->close_after_write)
            return len;
        if (sl_conn_input_blocked(c))
            return off;
    }
    return len;
}

/* A parked publish of this connection was woken: the handler retries or answers it; once
 * answered, the connection goes on with the next request. */
static void http1_resume(sl_conn_t *c, int kind, int status)
{
    c->srv->handler->resume(c, kind, status);
    if (!c->parked && !c->closing && c->tp == &sl_http1_transport)
        request_done(c);
}

const sl_transport_t sl_http1_transport = {
    .name = "http1",
    .input = process,
    .resume = http1_resume,
};
