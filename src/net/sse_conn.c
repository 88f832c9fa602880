/*
 * Server-Sent Events subscribers (see sse_conn.h): the event-stream head, and the output side of
 * the SSE transport. A message goes out as its shared, pre-encoded frame (on a multi-topic
 * stream, its multi-topic id line first); markers and heartbeats are formatted per write.
 */
#include "net/sse_conn.h"

#include "lib/sse.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static size_t sse_put_msg(sl_conn_t *c, sl_sub_write_t *w, sl_msg_t *m)
{
    if (c->sub.multi) {
        size_t idlen;
        const char *id = sl_msg_multi_id(m, c->srv->hub.epoch_hex, &idlen);
        sl_sub_write_put(w, id, idlen);
        sl_sub_write_put(w, m->frame + m->id_line_len, m->frame_len - m->id_line_len);
        return idlen + m->frame_len - m->id_line_len;
    }
    sl_sub_write_put(w, m->frame, m->frame_len);
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
    len += (size_t)snprintf(buf + len, cap - len, "event: sluice.%s\ndata: {",
                            sl_conn_marker_name(kind));
    len += sl_conn_marker_fields(buf + len, cap - len, r, kind, reason, missed);
    memcpy(buf + len, "\n\n", 2);
    return len + 2;
}

static size_t sse_closing(sl_conn_t *c, char *buf)
{
    if (c->expired) {
        /* The client reconnects with a fresh token; EventSource would reconnect by itself
         * with the old one, so the event tells the page to fetch a new token first. */
        c->reason = SL_CLOSE_TOKEN_EXPIRED;
        return (size_t)snprintf(buf, 160,
                                "event: sluice.expired\ndata: {\"reason\":\"token_expired\","
                                "\"exp\":%lld}\n\n",
                                (long long)(c->claims != NULL ? c->claims->exp : 0));
    }
    size_t n = sl_sse_retry(buf, c->srv->cfg->sse_retry_ms);
    n -= 1; /* "retry: N\n" then the comment ends the block */
    memcpy(buf + n, ": shutdown\n\n", 12);
    c->reason = SL_CLOSE_SHUTDOWN;
    return n + 12;
}

static size_t sse_heartbeat(sl_conn_t *c, char *buf)
{
    if (sl_conn_wants_heartbeat_event(c))
        return (size_t)snprintf(buf, 96, "event: sluice.heartbeat\ndata: {\"ts\":%" PRIu64 "}\n\n",
                                sl_wall_ms());
    return (size_t)snprintf(buf, 96, ": hb\n\n");
}

const sl_transport_t sl_sse_transport = {
    .name = "sse",
    .iov_per_msg = 2,
    .put_msg = sse_put_msg,
    .marker = sse_marker,
    .closing = sse_closing,
    .expired = sl_conn_drain,
    .heartbeat = sse_heartbeat,
    .subscribers = &sl_metrics.subscribers_sse,
};

int sl_sse_subscribe(sl_conn_t *c, sl_topic_t **topics, const sl_start_t *starts, uint32_t n,
                     int multi)
{
    if (sl_conn_reserve_readers(c, n, 0) != 0)
        return SL_EOVERLOAD;
    static const char head[] = "HTTP/1.1 200 OK\r\nServer: sluice\r\n"
                               "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                               "X-Accel-Buffering: no\r\nConnection: close\r\n";
    char buf[sizeof(head) + SL_CORS_MAX + 64];
    size_t len = sizeof(head) - 1;
    memcpy(buf, head, len);
    len += sl_conn_cors(c, buf + len, SL_CORS_MAX);
    memcpy(buf + len, "\r\n", 2);
    len += 2;
    len += sl_sse_retry(buf + len, c->srv->cfg->sse_retry_ms);
    sl_metrics_http(200);
    sl_conn_write_raw(c, buf, len);
    if (c->closing)
        return 0;
    sl_conn_start_sub(c, &sl_sse_transport, SL_CONN_STREAM, topics, starts, n, multi);
    return 0;
}
