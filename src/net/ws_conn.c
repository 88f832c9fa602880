/*
 * WebSocket connections after the handshake: input framing (wslay's frame parser), the
 * protocol rules RFC 6455 puts on a server (masking, reserved bits, opcodes, control frames,
 * fragmentation, UTF-8, sizes), pings and the pong deadline, the close handshake, and
 * publishing what a client sends. Output goes through the connection's one delivery path
 * (conn.c), which sends the control frames and answers queued here ahead of any message.
 *
 * Memory: an idle WebSocket holds only its sl_ws_t. The parser (wslay's context with its 4 KiB
 * input buffer, and the message being assembled) exists only while a frame or a fragmented
 * message is partly received, and is charged to the budget while it does.
 */
#include "net/ws_conn.h"

#include "core/rules.h"
#include "lib/budget.h"
#include "lib/log.h"
#include "lib/sse.h"
#include "lib/ws.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wslay/wslay.h>

/* wslay's frame context: its input buffer and a little state (charged, not measured). */
#define WSLAY_CTX_CHARGE (4096 + 256)
/* The buffer of a finished message is kept for the next one up to this size. */
#define MSG_KEEP (4u << 10)

/* Input state while a frame or message is partly received. Owned by its sl_ws_t. */
typedef struct sl_ws_parser {
    wslay_frame_context_ptr ctx;
    sl_conn_t *conn;
    const char *in; /* the rest of the read being fed to wslay */
    size_t in_len;
    uint64_t fed, used; /* bytes given to wslay; bytes of the frames it completed */
    uint64_t frame_off; /* payload bytes of the current frame seen so far */
    uint64_t since_ms;  /* when the message (or control frame) being received began */
    uint8_t in_frame;   /* a frame's header was seen, its payload is not complete */
    uint8_t frame_op;   /* opcode of the current frame */
    uint8_t msg_op;     /* SL_WS_TEXT/BINARY while a data message is being assembled, else 0 */
    uint8_t clen;       /* control frame payload so far */
    uint8_t dropping;   /* the message did not fit the budget: read on, refuse it at its end */
    uint64_t msg_total; /* bytes of the message so far, kept or dropped (for its size limit) */
    uint32_t utf8;      /* validator state of the text message */
    char *msg;          /* the data message being assembled */
    size_t msg_len, msg_cap;
    uint8_t cbuf[125];
} sl_ws_parser_t;

/* ---- output queued for the delivery path -------------------------------------------------- */

static size_t ws_prefix_len(const sl_conn_t *c)
{
    const sl_ws_t *ws = c->ws;
    return (ws->pong_pending ? 2 + ws->pong_len : 0) + (ws->ping_due ? 2 + 8 : 0) + ws->out_len;
}

static size_t ws_take_prefix(sl_conn_t *c, char *dst)
{
    sl_ws_t *ws = c->ws;
    size_t n = 0;
    if (ws->pong_pending) {
        dst[n++] = (char)(0x80 | SL_WS_PONG);
        dst[n++] = (char)ws->pong_len;
        memcpy(dst + n, ws->pong, ws->pong_len);
        n += ws->pong_len;
        ws->pong_pending = 0;
    }
    if (ws->ping_due) {
        /* The payload is the time it was queued, which a client echoes back. */
        uint64_t now = ws->last_ping_ms;
        dst[n++] = (char)(0x80 | SL_WS_PING);
        dst[n++] = 8;
        for (int i = 0; i < 8; i++)
            dst[n++] = (char)(now >> (56 - 8 * i));
        ws->ping_due = 0;
        ws->ping_writing = 1;
    }
    if (ws->out_len > 0) {
        memcpy(dst + n, ws->out, ws->out_len);
        n += ws->out_len;
        ws->out_len = 0;
        if (ws->out_cap > MSG_KEEP) {
            sl_bfree(ws->out, ws->out_cap);
            ws->out = NULL;
            ws->out_cap = 0;
        }
    }
    return n;
}

/* Queues a text frame holding `body` (an ack or an error) behind the control frames. */
static void queue_text(sl_conn_t *c, const char *body, size_t len)
{
    sl_ws_t *ws = c->ws;
    size_t need = ws->out_len + SL_WS_HDR_MAX + len;
    if (need > ws->out_cap) {
        size_t cap = ws->out_cap ? ws->out_cap : 512;
        while (cap < need)
            cap *= 2;
        ws->out = sl_brealloc(ws->out, ws->out_cap, cap);
        ws->out_cap = cap;
    }
    ws->out_len += sl_ws_frame_header((uint8_t *)ws->out + ws->out_len, SL_WS_TEXT, len);
    memcpy(ws->out + ws->out_len, body, len);
    ws->out_len += len;
}

static void send_error(sl_conn_t *c, const char *code, const char *msg)
{
    char body[256];
    size_t len =
        (size_t)snprintf(body, sizeof(body), "{\"sluice\":\"error\",\"error\":\"%s\",", code);
    memcpy(body + len, "\"message\":", 10);
    len += 10;
    sl_json_put_string(body, &len, sizeof(body) - 2, msg, strlen(msg));
    body[len++] = '}';
    queue_text(c, body, len);
}

void sl_ws_fail(sl_conn_t *c, unsigned code, const char *msg, sl_close_reason_t reason)
{
    sl_ws_t *ws = c->ws;
    if (ws == NULL || ws->close_pending || c->closing)
        return;
    ws->close_pending = 1;
    ws->close_code = (uint16_t)code;
    ws->close_reason = (uint8_t)reason;
    size_t n = strlen(msg);
    if (n > sizeof(ws->close_msg))
        n = sizeof(ws->close_msg);
    memcpy(ws->close_msg, msg, n);
    ws->close_msg_len = (uint8_t)n;
    if (code != SL_WS_CLOSE_NORMAL && reason != SL_CLOSE_WS_CLOSE)
        SL_INFO("websocket closed by server", "code=%u reason=\"%s\"", code, msg);
    sl_conn_pump(c);
}

/* ---- the parser --------------------------------------------------------------------------- */

static ssize_t feed(uint8_t *buf, size_t len, int flags, void *user)
{
    sl_ws_parser_t *p = user;
    (void)flags;
    if (len > p->in_len)
        len = p->in_len;
    memcpy(buf, p->in, len);
    p->in += len;
    p->in_len -= len;
    p->fed += len;
    return (ssize_t)len;
}

static ssize_t no_send(const uint8_t *data, size_t len, int flags, void *user)
{
    (void)data, (void)len, (void)flags, (void)user;
    return -1;
}

static int no_mask(uint8_t *buf, size_t len, void *user)
{
    (void)buf, (void)len, (void)user;
    return -1;
}

static sl_ws_parser_t *parser_new(sl_conn_t *c)
{
    /* Input still arriving: charged to its own pool, never making room by eviction. */
    (void)c;
    if (!sl_budget_try_pending(sizeof(sl_ws_parser_t) + WSLAY_CTX_CHARGE))
        return NULL;
    sl_ws_parser_t *p = sl_calloc(1, sizeof(*p));
    static const struct wslay_frame_callbacks cbs = {no_send, feed, no_mask};
    if (wslay_frame_context_init(&p->ctx, &cbs, p) != 0) {
        free(p);
        sl_budget_release_pending(sizeof(sl_ws_parser_t) + WSLAY_CTX_CHARGE);
        return NULL;
    }
    p->conn = c;
    return p;
}

static void parser_free(sl_ws_t *ws)
{
    sl_ws_parser_t *p = ws->parser;
    if (p == NULL)
        return;
    if (p->msg != NULL) {
        sl_budget_release_pending(sl_budget_size(p->msg_cap));
        free(p->msg);
    }
    wslay_frame_context_free(p->ctx);
    sl_budget_release_pending(sizeof(sl_ws_parser_t) + WSLAY_CTX_CHARGE);
    free(p);
    ws->parser = NULL;
}

static void ws_free(sl_conn_t *c)
{
    sl_ws_t *ws = c->ws;
    if (ws == NULL)
        return;
    parser_free(ws);
    sl_bfree(ws->out, ws->out_cap);
    sl_bfree(ws->topic, ws->topic_len + 1);
    sl_bfree(ws->held, ws->held_size);
    sl_bfree(ws, sizeof(*ws));
    c->ws = NULL;
}

/* Appends a data frame's bytes to the message, within the pool for input still arriving. */
static int msg_append(sl_ws_parser_t *p, const uint8_t *data, size_t len)
{
    size_t need = p->msg_len + len;
    if (need > p->msg_cap) {
        size_t cap = p->msg_cap ? p->msg_cap : 256;
        while (cap < need)
            cap *= 2;
        size_t grow = p->msg_cap ? cap - p->msg_cap : sl_budget_size(cap);
        if (!sl_budget_try_pending(grow))
            return -1;
        p->msg = sl_realloc(p->msg, cap);
        p->msg_cap = cap;
    }
    memcpy(p->msg + p->msg_len, data, len);
    p->msg_len += len;
    return 0;
}

/* ---- publishing --------------------------------------------------------------------------- */

static void queue_ack(sl_conn_t *c, const sl_topic_t *t, uint64_t seq)
{
    char body[96 + 6 * 256];
    char id[SL_ID_MAX];
    sl_id_format(id, t->epoch, seq);
    size_t l = (size_t)snprintf(body, sizeof(body), "{\"sluice\":\"ack\",\"topic\":");
    sl_json_put_string(body, &l, sizeof(body) - 64, t->name, t->name_len);
    l += (size_t)snprintf(body + l, sizeof(body) - l, ",\"id\":\"%s\"}", id);
    queue_text(c, body, l);
}

/* Keeps a publish that a full lossless topic pushed back, and stops reading until there is
 * room (ws_resume publishes it then). The payload, the topic's name and the event type are
 * copied into one allocation sized for them. */
static void hold(sl_conn_t *c, sl_topic_t *t, const char *event, const char *payload, size_t len,
                 int text)
{
    sl_ws_t *ws = c->ws;
    size_t ev_len = event != NULL ? strlen(event) : 0;
    size_t size = len + t->name_len + ev_len + 1;
    ws->held = sl_balloc(size);
    ws->held_size = size;
    memcpy(ws->held, payload, len);
    memcpy(ws->held + len, t->name, t->name_len);
    memcpy(ws->held + len + t->name_len, event != NULL ? event : "", ev_len + 1);
    ws->held_len = len;
    ws->held_topic_len = t->name_len;
    ws->held_has_event = event != NULL;
    ws->held_text = (uint8_t)text;
    sl_conn_park(c, t, SL_WAIT_ROOM, 0, 0);
}

/* Publishes one message to a named topic; answers errors, acks, and pushback. */
static void publish_to(sl_conn_t *c, const char *topic, size_t topic_len, const char *event,
                       const char *payload, size_t payload_len, int text)
{
    sl_ws_t *ws = c->ws;
    sl_server_t *srv = c->srv;
    int err;
    sl_topic_t *t = sl_hub_topic(&srv->hub, topic, topic_len, 1, &err);
    if (t == NULL) {
        if (err == SL_ELIMIT) {
            sl_metrics.pub_rejected[SL_REJECT_PUB_MAX_TOPICS]++;
            send_error(c, "over_capacity", "max_topics reached");
        } else {
            sl_metrics.pub_rejected[SL_REJECT_PUB_BUDGET]++;
            send_error(c, "over_capacity", "memory budget exhausted");
        }
        return;
    }
    uint64_t seq;
    int rc = sl_hub_publish(&srv->hub, t, event, &payload, &payload_len, 1, &seq);
    if (rc == SL_EFULL) {
        hold(c, t, event, payload, payload_len, text);
        return;
    }
    if (rc == SL_EDISK) {
        sl_metrics.pub_rejected[SL_REJECT_PUB_DISK_ERROR]++;
        send_error(c, "disk_error", "lossless topic: its log cannot be written");
        return;
    }
    if (rc != 0) {
        SL_WARN("publish refused", "reason=budget topic=%s transport=ws", t->name);
        send_error(c, "over_capacity", "memory budget exhausted");
        return;
    }
    if (ws->ack) {
        if (t->ll != NULL && sl_ll_durable(t) < seq)
            sl_conn_park(c, t, SL_WAIT_DURABLE, seq, /* acknowledged once written */
                         sl_ll_write_deadline(srv->cfg, sl_now_ms()));
        else
            queue_ack(c, t, seq);
    }
    if (sl_hub_flush_due(&srv->hub))
        sl_hub_flush(&srv->hub, sl_now_ms());
    sl_server_kick(srv);
}

/* {"sluice":"ack","id":"…"} from a durable reader moves its cursor. */
static void client_ack(sl_conn_t *c, const char *data, size_t len)
{
    sl_reader_t *r = &c->sub.readers[0];
    uint64_t epoch, seq;
    const char *code = "bad_id";
    int status = 400;
    if (sl_rule_ack_id(data, len, &epoch, &seq) == 0)
        status = sl_ll_ack_id(r->topic, r->cursor, epoch, seq, &code);
    if (status != 0)
        send_error(c, code, "cannot acknowledge this id");
}

/* {"sluice":"token","token":"…"}: replaces the connection's token without reconnecting. The
 * new token must verify, name the same subject, and grant every topic the connection
 * subscribes to; otherwise it is refused with an error message and the old one stays (and the
 * connection still closes at the old one's exp). */
static void refresh_token(sl_conn_t *c, const char *data, size_t len)
{
    sl_server_t *srv = c->srv;
    const sl_config_t *cfg = srv->cfg;
    if (srv->auth == NULL || !cfg->auth) {
        send_error(c, "bad_envelope", "tokens are not used by this server");
        return;
    }
    if (len > cfg->auth_max_token_bytes + 64) {
        sl_metrics.auth_rejected[SL_JWT_E_TOO_LARGE]++;
        send_error(c, "invalid_token", "token too large");
        return;
    }
    char *tok = sl_malloc(len + 1);
    sl_jwt_claims_t *nc = NULL;
    long n = sl_jwt_json_string(data, len, "token", tok, len + 1);
    if (n <= 0) {
        send_error(c, "bad_envelope", "want {\"sluice\":\"token\",\"token\":\"<jwt>\"}");
        goto out_free;
    }
    sl_auth_cred_t cred = {tok, (size_t)n, "ws"};
    sl_verdict_t v = sl_auth_verify(srv->auth, &cred, (int64_t)(sl_wall_ms() / 1000), &nc);
    if (v.status == 0 && c->claims != NULL && strcmp(c->claims->subject, nc->subject) != 0)
        v = (sl_verdict_t){403, "insufficient_scope", "a new token must name the same subject",
                           SL_AUTH_R_SCOPE};
    for (uint32_t i = 0; v.status == 0 && i < c->sub.nreaders; i++)
        v = sl_auth_topic(cfg, nc, SL_AUTH_SUBSCRIBE, c->sub.readers[i].topic->name);
    if (v.status != 0) {
        sl_metrics.auth_rejected[v.reason]++;
        SL_INFO("auth refused", "reason=%s what=ws_token", sl_auth_reason_name(v.reason));
        send_error(c, v.code, v.message);
        goto out_free;
    }
    sl_jwt_claims_free(c->claims);
    c->claims = nc;
    nc = NULL;
    sl_metrics.auth_refreshed++;
    char body[96];
    size_t bl = (size_t)snprintf(body, sizeof(body), "{\"sluice\":\"token\",\"exp\":%lld}",
                                 (long long)c->claims->exp);
    if (c->claims->exp == 0)
        bl = (size_t)snprintf(body, sizeof(body), "{\"sluice\":\"token\",\"exp\":null}");
    queue_text(c, body, bl);
out_free:
    sl_jwt_claims_free(nc);
    free(tok);
}

static void publish(sl_conn_t *c, const char *data, size_t len, int text)
{
    sl_ws_t *ws = c->ws;
    sl_server_t *srv = c->srv;
    const sl_config_t *cfg = srv->cfg;
    static const char ack_prefix[] = "{\"sluice\":\"ack\"";
    if (text && c->sub.nreaders == 1 && c->sub.readers[0].cursor != NULL &&
        len >= sizeof(ack_prefix) - 1 && memcmp(data, ack_prefix, sizeof(ack_prefix) - 1) == 0) {
        /* On a durable connection this is an acknowledgement; elsewhere a refused publish. */
        client_ack(c, data, len);
        return;
    }
    static const char token_prefix[] = "{\"sluice\":\"token\"";
    if (text && len >= sizeof(token_prefix) - 1 &&
        memcmp(data, token_prefix, sizeof(token_prefix) - 1) == 0) {
        refresh_token(c, data, len);
        return;
    }
    sl_metrics.ws_messages_in++;
    if (!(ws->mode & SL_WS_PUB)) {
        sl_metrics.pub_rejected[SL_REJECT_PUB_NOT_PUBLISHER]++;
        send_error(c, "not_publisher", "this connection was opened without mode=pub or pubsub");
        return;
    }
    const char *topic = ws->topic, *event = NULL, *payload = data;
    size_t topic_len = ws->topic_len, payload_len = len;
    char *scratch = NULL;
    char ev[65];
    sl_verdict_t v;
    if (ws->json) {
        sl_ws_envelope_t env;
        scratch = sl_malloc(len + 1);
        if (!text || sl_ws_parse_envelope(data, len, scratch, &env) != 0) {
            sl_metrics.pub_rejected[SL_REJECT_PUB_BAD_ENVELOPE]++;
            send_error(c, "bad_envelope",
                       "want a text message {\"topic\":…,\"event\":…,\"data\":\"…\"}");
            goto out_free;
        }
        if (env.topic != NULL) {
            topic = env.topic;
            topic_len = env.topic_len;
        }
        if (env.event != NULL) {
            v = sl_rule_event(env.event, env.event_len);
            if (v.status != 0)
                goto out_refuse;
            memcpy(ev, env.event, env.event_len);
            ev[env.event_len] = '\0';
            event = ev;
        }
        payload = env.data;
        payload_len = env.data_len;
    }
    if ((v = sl_rule_topic(cfg, topic, topic_len)).status != 0 ||
        (v = sl_rule_publish_topic(cfg, topic, topic_len)).status != 0 ||
        (v = sl_rule_payload(cfg, payload, payload_len)).status != 0)
        goto out_refuse;
    if (srv->auth != NULL && cfg->auth) {
        /* The token the connection opened with (or last refreshed) must grant this topic. */
        char name[1025];
        memcpy(name, topic, topic_len); /* a valid name is at most max_topic_name <= 1024 */
        name[topic_len] = '\0';
        v = sl_auth_topic(cfg, c->claims, SL_AUTH_PUBLISH, name);
        if (v.status != 0) {
            sl_metrics.pub_rejected[SL_REJECT_PUB_AUTH]++;
            sl_metrics.auth_rejected[v.reason]++;
            SL_INFO("auth refused", "reason=%s what=ws_publish topic=\"%s\"",
                    sl_auth_reason_name(v.reason), name);
            send_error(c, v.code, v.message);
            goto out_free;
        }
    }
    uint64_t ms = sl_conn_rate_publish(c, 1, payload_len);
    if (ms != 0) {
        /* The connection is kept: the client slows down. */
        char msg[80];
        if (ms == UINT64_MAX)
            snprintf(msg, sizeof(msg), "larger than the publish rate's burst allows");
        else
            snprintf(msg, sizeof(msg), "publish rate limit: retry after %" PRIu64 " ms", ms);
        send_error(c, "rate_limited", msg);
        goto out_free;
    }
    publish_to(c, topic, topic_len, event, payload, payload_len, text);
    goto out_free;
out_refuse:
    /* The same rules and words as over HTTP (core/rules.h). */
    if (v.reason >= 0)
        sl_metrics.pub_rejected[v.reason]++;
    send_error(c, v.code, v.message);
out_free:
    free(scratch);
}

/* ---- frames ------------------------------------------------------------------------------- */

static void on_control(sl_conn_t *c, sl_ws_parser_t *p)
{
    sl_ws_t *ws = c->ws;
    switch (p->frame_op) {
    case SL_WS_PING:
        /* Only the latest ping needs its pong (RFC 6455 5.5.3). */
        memcpy(ws->pong, p->cbuf, p->clen);
        ws->pong_len = p->clen;
        ws->pong_pending = 1;
        break;
    case SL_WS_PONG:
        ws->ping_sent_ms = 0;
        ws->ping_writing = 0;
        break;
    case SL_WS_CLOSE: {
        if (p->clen == 1) {
            sl_ws_fail(c, SL_WS_CLOSE_PROTOCOL, "close frame with a 1-byte payload",
                       SL_CLOSE_PROTOCOL);
            return;
        }
        unsigned code = SL_WS_CLOSE_NORMAL;
        if (p->clen >= 2) {
            code = (unsigned)p->cbuf[0] << 8 | p->cbuf[1];
            if (!sl_ws_close_code_ok(code)) {
                sl_ws_fail(c, SL_WS_CLOSE_PROTOCOL, "invalid close code", SL_CLOSE_PROTOCOL);
                return;
            }
            if (!sl_utf8_valid(p->cbuf + 2, p->clen - 2U)) {
                sl_ws_fail(c, SL_WS_CLOSE_BAD_DATA, "close reason is not UTF-8", SL_CLOSE_PROTOCOL);
                return;
            }
        }
        /* Echo the peer's code: the close handshake is complete when it is written. */
        sl_ws_fail(c, code, "", SL_CLOSE_WS_CLOSE);
        return;
    }
    }
}

/* Handles one piece of a frame as wslay returns it. Returns 0 to go on, -1 when the connection
 * is closing (a close frame is owed) and the rest of the input must be ignored. */
static int on_piece(sl_conn_t *c, sl_ws_parser_t *p, const struct wslay_frame_iocb *f)
{
    sl_ws_t *ws = c->ws;
    const sl_config_t *cfg = c->srv->cfg;
    if (!p->in_frame) {
        p->in_frame = 1;
        p->frame_off = 0;
        p->frame_op = f->opcode;
        if (p->msg_op == 0)
            p->since_ms = sl_now_ms();
        if (!f->mask) {
            sl_ws_fail(c, SL_WS_CLOSE_PROTOCOL, "client frames must be masked", SL_CLOSE_PROTOCOL);
            return -1;
        }
        if (f->rsv != 0) {
            sl_ws_fail(c, SL_WS_CLOSE_PROTOCOL, "reserved bits set", SL_CLOSE_PROTOCOL);
            return -1;
        }
        switch (f->opcode) {
        case SL_WS_CONT:
            if (p->msg_op == 0) {
                sl_ws_fail(c, SL_WS_CLOSE_PROTOCOL, "continuation without a message",
                           SL_CLOSE_PROTOCOL);
                return -1;
            }
            break;
        case SL_WS_TEXT:
        case SL_WS_BINARY:
            if (p->msg_op != 0) {
                sl_ws_fail(c, SL_WS_CLOSE_PROTOCOL, "new message inside a fragmented one",
                           SL_CLOSE_PROTOCOL);
                return -1;
            }
            p->msg_op = f->opcode;
            p->msg_len = 0;
            p->msg_total = 0;
            p->utf8 = 0;
            break;
        case SL_WS_CLOSE:
        case SL_WS_PING:
        case SL_WS_PONG:
            p->clen = 0;
            break;
        default:
            sl_ws_fail(c, SL_WS_CLOSE_PROTOCOL, "unknown opcode", SL_CLOSE_PROTOCOL);
            return -1;
        }
        if (f->opcode <= SL_WS_BINARY) {
            uint64_t limit = ws->json ? cfg->max_body_bytes : cfg->max_message_bytes;
            if (f->payload_length > limit || p->msg_total + f->payload_length > limit) {
                sl_ws_fail(c, SL_WS_CLOSE_TOO_BIG, "message over the size limit",
                           SL_CLOSE_PROTOCOL);
                return -1;
            }
        }
    }
    if (p->frame_op >= SL_WS_CLOSE) {
        memcpy(p->cbuf + p->clen, f->data, f->data_length); /* wslay caps them at 125 */
        p->clen = (uint8_t)(p->clen + f->data_length);
    } else if (f->data_length > 0) {
        if (p->msg_op == SL_WS_TEXT && sl_utf8_feed(&p->utf8, f->data, f->data_length) != 0) {
            sl_ws_fail(c, SL_WS_CLOSE_BAD_DATA, "text message is not UTF-8", SL_CLOSE_PROTOCOL);
            return -1;
        }
        p->msg_total += f->data_length;
        if (!p->dropping && msg_append(p, f->data, f->data_length) != 0) {
            /* Refuse this message, not the connection: the rest of it is read and dropped. */
            p->dropping = 1;
            p->msg_len = 0;
        }
    }
    p->frame_off += f->data_length;
    if (p->frame_off < f->payload_length)
        return 0;
    /* The frame is complete. */
    p->in_frame = 0;
    uint64_t len = f->payload_length;
    p->used += 2 + (len >= 126) * 2 + (len >= 65536) * 6 + 4 + len;
    if (p->frame_op >= SL_WS_CLOSE) {
        on_control(c, p);
        return ws->close_pending ? -1 : 0;
    }
    if (!f->fin)
        return 0;
    if (p->msg_op == SL_WS_TEXT && p->utf8 != 0) {
        sl_ws_fail(c, SL_WS_CLOSE_BAD_DATA, "text message ends inside a character",
                   SL_CLOSE_PROTOCOL);
        return -1;
    }
    int text = p->msg_op == SL_WS_TEXT;
    p->msg_op = 0;
    if (p->dropping) {
        p->dropping = 0;
        sl_metrics.ws_messages_in++;
        sl_metrics.pub_rejected[SL_REJECT_PUB_BUDGET]++;
        SL_WARN("publish refused", "reason=budget transport=ws");
        send_error(c, "over_capacity", "memory budget exhausted");
    } else {
        publish(c, p->msg ? p->msg : "", p->msg_len, text);
    }
    p->msg_len = 0;
    if (p->msg_cap > MSG_KEEP) {
        sl_budget_release_pending(sl_budget_size(p->msg_cap));
        free(p->msg);
        p->msg = NULL;
        p->msg_cap = 0;
    }
    return c->closing ? -1 : 0;
}

static size_t ws_input(sl_conn_t *c, const char *data, size_t len)
{
    sl_ws_t *ws = c->ws;
    if (c->closing || ws == NULL || ws->close_pending)
        return len; /* after our close frame, input is discarded */
    if (ws->parser == NULL && (ws->parser = parser_new(c)) == NULL) {
        sl_ws_fail(c, 1013, "memory budget exhausted", SL_CLOSE_PROTOCOL);
        return len;
    }
    sl_ws_parser_t *p = ws->parser;
    p->in = data;
    p->in_len = len;
    for (;;) {
        struct wslay_frame_iocb f;
        memset(&f, 0, sizeof(f));
        ssize_t r = wslay_frame_recv(p->ctx, &f);
        if (r == WSLAY_ERR_WANT_READ)
            break;
        if (r < 0) {
            /* wslay refuses fragmented or oversized control frames and non-minimal lengths. */
            sl_ws_fail(c, SL_WS_CLOSE_PROTOCOL, "malformed frame", SL_CLOSE_PROTOCOL);
            break;
        }
        if (on_piece(c, p, &f) != 0)
            break;
        if (sl_conn_input_blocked(c)) {
            /* Parked, or answers piling up: the rest waits (wslay keeps what it buffered). */
            size_t used = len - p->in_len;
            p->in = NULL;
            p->in_len = 0;
            sl_conn_pump(c);
            return used;
        }
    }
    if (c->closing || c->ws == NULL)
        return len;
    p->in = NULL;
    p->in_len = 0;
    /* Everything wslay was given belongs to complete frames: it holds nothing, so neither
     * need we, unless a fragmented message is still being assembled. */
    if (!ws->close_pending && !p->in_frame && p->fed == p->used && p->msg_op == 0)
        parser_free(ws);
    sl_conn_pump(c);
    return len;
}

static void ws_resume(sl_conn_t *c, int kind, int status)
{
    sl_ws_t *ws = c->ws;
    /* WebSocket publishers wait for room without a deadline (TCP pushes back on them), but
     * not for a log that cannot be written, nor longer than max_publish_wait for the disk. */
    if (status == SL_WAKE_FAILED || (kind == SL_WAIT_DURABLE && status == SL_WAKE_TIMEOUT)) {
        sl_bfree(ws->held, ws->held_size);
        ws->held = NULL;
        int timeout = status == SL_WAKE_TIMEOUT;
        sl_metrics.pub_rejected[timeout ? SL_REJECT_PUB_DISK_TIMEOUT : SL_REJECT_PUB_DISK_ERROR]++;
        send_error(c, timeout ? "disk_timeout" : "disk_error",
                   timeout ? "lossless topic: not written within the wait"
                           : "lossless topic: its log cannot be written");
    } else if (kind == SL_WAIT_DURABLE) {
        queue_ack(c, c->wait.topic, c->wait.seq);
    } else if (ws->held != NULL) {
        char *held = ws->held;
        size_t len = ws->held_len, size = ws->held_size;
        const char *topic = held + len, *event = topic + ws->held_topic_len;
        ws->held = NULL;
        publish_to(c, topic, ws->held_topic_len, ws->held_has_event ? event : NULL, held, len,
                   ws->held_text);
        sl_bfree(held, size);
    }
    /* The caller goes on with the input that waited (sl_conn_resume_input). */
    sl_conn_pump(c);
}

static void ws_input_resumed(sl_conn_t *c, uint64_t now_ms)
{
    if (c->ws != NULL && c->ws->ping_sent_ms != 0)
        c->ws->ping_sent_ms = now_ms;
}

/* The write carrying a ping is in the kernel: the peer can see it, its pong clock starts. A
 * ping queued behind a write the peer does not read is the write stall's business, not a pong
 * timeout: a slow but live reader is not closed as dead because its socket was full. */
static void ws_written(sl_conn_t *c, uint64_t now_ms)
{
    sl_ws_t *ws = c->ws;
    if (ws != NULL && ws->ping_writing) {
        ws->ping_writing = 0;
        ws->ping_sent_ms = now_ms;
    }
}

static void ws_tick(sl_conn_t *c, uint64_t now)
{
    sl_ws_t *ws = c->ws;
    const sl_config_t *cfg = c->srv->cfg;
    if (ws == NULL || ws->close_pending)
        return;
    const sl_ws_parser_t *p = ws->parser;
    if (p != NULL && (p->in_frame || p->msg_op != 0) && !c->parked && !c->input_held &&
        now - p->since_ms >= cfg->body_timeout_ms) {
        /* A message (or a frame header promising one) that does not complete in time holds
         * input memory for nothing: like a request body, it has a deadline. */
        SL_INFO("websocket message timed out", "waited_ms=%" PRIu64, now - p->since_ms);
        sl_ws_fail(c, SL_WS_CLOSE_POLICY, "message not complete in time", SL_CLOSE_BODY_TIMEOUT);
        return;
    }
    /* While its input is held back (a parked publish, unread answers) a pong cannot be seen:
     * the pong clock restarts when input is handled again (ws_input_resumed). */
    if (ws->ping_sent_ms != 0 && !c->input_held && !c->parked &&
        now - ws->ping_sent_ms >= cfg->ws_pong_timeout_ms) {
        SL_INFO("websocket ping timeout", "waited_ms=%" PRIu64, now - ws->ping_sent_ms);
        sl_conn_close(c, SL_CLOSE_PING_TIMEOUT);
        return;
    }
    /* A ping still behind unwritten data: the peer cannot answer it yet. If the socket takes
     * nothing for a pong timeout (counted from the ping or from the last byte it took, the
     * later), the peer is gone all the same; while it takes bytes, it is a slow live reader. */
    if ((ws->ping_due || ws->ping_writing) && c->tcp.write_queue_size > 0 && !c->input_held &&
        !c->parked) {
        uint64_t since =
            ws->last_ping_ms > c->stall_since_ms ? ws->last_ping_ms : c->stall_since_ms;
        if (now - since >= cfg->ws_pong_timeout_ms) {
            SL_INFO("websocket ping timeout", "unwritten_ms=%" PRIu64, now - since);
            sl_conn_close(c, SL_CLOSE_PING_TIMEOUT);
            return;
        }
    }
    if (cfg->ws_ping_interval_ms && ws->ping_sent_ms == 0 && !ws->ping_due && !ws->ping_writing &&
        now - ws->last_ping_ms >= cfg->ws_ping_interval_ms) {
        ws->ping_due = 1;
        ws->last_ping_ms = now;
        sl_metrics.ws_pings++;
        sl_conn_pump(c);
    }
}

/* ---- output ------------------------------------------------------------------------------- */

static size_t ws_put_msg(sl_conn_t *c, sl_sub_write_t *w, sl_msg_t *m)
{
    size_t len;
    if (c->ws->json) {
        const char *f = sl_msg_ws_json(m, c->srv->hub.epoch_hex, &len);
        sl_sub_write_put(w, f, len);
        return len;
    }
    const uint8_t *h = sl_msg_ws_header(m, &len);
    sl_sub_write_put(w, h, len);
    sl_sub_write_put(w, m->payload, m->payload_len);
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
    size_t len = (size_t)snprintf(body, room, "{\"sluice\":\"%s\",", sl_conn_marker_name(kind));
    len += sl_conn_marker_fields(body + len, room - len, r, kind, reason, missed);
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

static void ws_expired(sl_conn_t *c)
{
    sl_ws_fail(c, SL_WS_CLOSE_TOKEN_EXPIRED, "token expired", SL_CLOSE_TOKEN_EXPIRED);
}

static size_t ws_heartbeat(sl_conn_t *c, char *buf)
{
    /* Pings keep WebSocket connections alive; a visible heartbeat only when asked for. */
    if (!sl_conn_wants_heartbeat_event(c))
        return 0;
    size_t len = (size_t)snprintf(buf + SL_WS_HDR_MAX, 96 - SL_WS_HDR_MAX,
                                  "{\"sluice\":\"heartbeat\",\"ts\":%" PRIu64 "}", sl_wall_ms());
    return ws_text_frame(buf, len);
}

static size_t ws_overflow_end(sl_conn_t *c, char *buf, int reason)
{
    char msg[64];
    int n = snprintf(msg, sizeof(msg), "overflow: %s", sl_lag_reason_name((sl_lag_reason_t)reason));
    c->ws->close_pending = 1;
    return ws_close_frame(buf, SL_WS_CLOSE_OVERFLOW, msg, (size_t)n);
}

static int ws_final_due(const sl_conn_t *c)
{
    return c->ws->close_pending;
}

static uint64_t ws_linger_ms(const sl_conn_t *c)
{
    return c->srv->cfg->ws_close_timeout_ms; /* the peer's close reply */
}

const sl_transport_t sl_ws_transport = {
    .name = "ws",
    .input = ws_input,
    .resume = ws_resume,
    .input_resumed = ws_input_resumed,
    .written = ws_written,
    .tick = ws_tick,
    .free = ws_free,
    .prefix_len = ws_prefix_len,
    .take_prefix = ws_take_prefix,
    .final_due = ws_final_due,
    .iov_per_msg = 2,
    .put_msg = ws_put_msg,
    .marker = ws_marker,
    .overflow_end = ws_overflow_end,
    .closing = ws_closing,
    .expired = ws_expired,
    .heartbeat = ws_heartbeat,
    .linger_ms = ws_linger_ms,
    .connections = &sl_metrics.ws_connections,
    .subscribers = &sl_metrics.subscribers_ws,
};

/* ---- the handshake ------------------------------------------------------------------------ */

int sl_ws_upgrade(sl_conn_t *c, const char *accept, sl_topic_t **topics, const sl_start_t *starts,
                  uint32_t n, int multi, const sl_ws_opts_t *opts, const char *pub_topic,
                  size_t pub_topic_len)
{
    if (sl_conn_reserve_readers(c, n, sizeof(sl_ws_t) + pub_topic_len + 1) != 0)
        return SL_EOVERLOAD;
    static const char head[] = "HTTP/1.1 101 Switching Protocols\r\nServer: sluice\r\n"
                               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: ";
    char buf[sizeof(head) + 32];
    size_t len = sizeof(head) - 1;
    memcpy(buf, head, len);
    memcpy(buf + len, accept, 28);
    len += 28;
    memcpy(buf + len, "\r\n\r\n", 4);
    len += 4;
    sl_metrics_http(101);
    sl_conn_write_raw(c, buf, len);
    if (c->closing)
        return 0;
    sl_ws_t *ws = sl_bcalloc(sizeof(*ws));
    ws->mode = opts->mode;
    ws->json = opts->json;
    ws->ack = opts->ack;
    ws->last_ping_ms = sl_now_ms();
    if (pub_topic_len > 0) {
        ws->topic = sl_balloc(pub_topic_len + 1);
        memcpy(ws->topic, pub_topic, pub_topic_len);
        ws->topic[pub_topic_len] = '\0';
        ws->topic_len = pub_topic_len;
    }
    c->ws = ws;
    sl_conn_start_sub(c, &sl_ws_transport, SL_CONN_DUPLEX, topics, starts,
                      (opts->mode & SL_WS_SUB) ? n : 0, multi);
    return 0;
}
