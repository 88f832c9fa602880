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
#include "budget.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "sse.h"
#include "ws.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wslay/wslay.h>

#define ALLOC_OVERHEAD 16
/* wslay's frame context: its input buffer and a little state (charged, not measured). */
#define WSLAY_CTX_CHARGE (4096 + 256)
/* A publisher whose answers pile up beyond this is not read until they drain. */
#define OUT_HIGH (64u << 10)
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

size_t sl_ws_prefix_len(const sl_conn_t *c)
{
    const sl_ws_t *ws = c->ws;
    return (ws->pong_pending ? 2 + ws->pong_len : 0) + (ws->ping_due ? 2 + 8 : 0) + ws->out_len;
}

size_t sl_ws_take_prefix(sl_conn_t *c, char *dst)
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
        /* The payload is the send time, which a client echoes back. */
        uint64_t now = ws->ping_sent_ms;
        dst[n++] = (char)(0x80 | SL_WS_PING);
        dst[n++] = 8;
        for (int i = 0; i < 8; i++)
            dst[n++] = (char)(now >> (56 - 8 * i));
        ws->ping_due = 0;
    }
    if (ws->out_len > 0) {
        memcpy(dst + n, ws->out, ws->out_len);
        n += ws->out_len;
        ws->out_len = 0;
        if (ws->out_cap > MSG_KEEP) {
            sl_budget_release(ws->out_cap + ALLOC_OVERHEAD);
            free(ws->out);
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
        sl_budget_charge(cap - ws->out_cap + (ws->out_cap ? 0 : ALLOC_OVERHEAD));
        ws->out = sl_realloc(ws->out, cap);
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
    if (sl_hub_reserve(&c->srv->hub, sizeof(sl_ws_parser_t) + WSLAY_CTX_CHARGE) != 0)
        return NULL;
    sl_ws_parser_t *p = sl_calloc(1, sizeof(*p));
    static const struct wslay_frame_callbacks cbs = {no_send, feed, no_mask};
    if (wslay_frame_context_init(&p->ctx, &cbs, p) != 0) {
        free(p);
        sl_budget_release(sizeof(sl_ws_parser_t) + WSLAY_CTX_CHARGE);
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
        sl_budget_release(p->msg_cap + ALLOC_OVERHEAD);
        free(p->msg);
    }
    wslay_frame_context_free(p->ctx);
    sl_budget_release(sizeof(sl_ws_parser_t) + WSLAY_CTX_CHARGE);
    free(p);
    ws->parser = NULL;
}

void sl_ws_free(sl_conn_t *c)
{
    sl_ws_t *ws = c->ws;
    if (ws == NULL)
        return;
    parser_free(ws);
    if (ws->out != NULL)
        sl_budget_release(ws->out_cap + ALLOC_OVERHEAD);
    free(ws->out);
    if (ws->topic != NULL)
        sl_budget_release(ws->topic_len + 1 + ALLOC_OVERHEAD);
    free(ws->topic);
    if (ws->held != NULL) {
        sl_budget_release(ws->held_len + ALLOC_OVERHEAD);
        free(ws->held);
    }
    sl_budget_release(sizeof(*ws) + ALLOC_OVERHEAD);
    free(ws);
    c->ws = NULL;
}

/* Appends a data frame's bytes to the message, within the budget. */
static int msg_append(sl_conn_t *c, sl_ws_parser_t *p, const uint8_t *data, size_t len)
{
    size_t need = p->msg_len + len;
    if (need > p->msg_cap) {
        size_t cap = p->msg_cap ? p->msg_cap : 256;
        while (cap < need)
            cap *= 2;
        size_t grow = cap - p->msg_cap + (p->msg_cap ? 0 : ALLOC_OVERHEAD);
        if (sl_hub_reserve(&c->srv->hub, grow) != 0)
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
 * room (sl_ws_resume publishes it then). */
static void hold(sl_conn_t *c, sl_topic_t *t, const char *event, const char *payload, size_t len,
                 int text)
{
    sl_ws_t *ws = c->ws;
    ws->held = sl_malloc(len ? len : 1);
    memcpy(ws->held, payload, len);
    ws->held_len = len;
    sl_budget_charge(len + ALLOC_OVERHEAD);
    memcpy(ws->held_topic, t->name, t->name_len);
    ws->held_topic_len = t->name_len;
    ws->held_has_event = event != NULL;
    if (event != NULL)
        snprintf(ws->held_event, sizeof(ws->held_event), "%s", event);
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
    if (rc != 0) {
        SL_WARN("publish refused", "reason=budget topic=%s transport=ws", t->name);
        send_error(c, "over_capacity", "memory budget exhausted");
        return;
    }
    if (ws->ack) {
        if (t->ll != NULL && sl_ll_durable(t) < seq)
            sl_conn_park(c, t, SL_WAIT_DURABLE, seq, 0); /* acknowledged once written */
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
    if (sl_api_body_id(data, len, &epoch, &seq) == 0)
        status = sl_api_ack(r->topic, r->cursor, epoch, seq, &code);
    if (status != 0)
        send_error(c, code, "cannot acknowledge this id");
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
    if (ws->json) {
        sl_ws_envelope_t env;
        scratch = sl_malloc(len + 1);
        if (!text || sl_ws_parse_envelope(data, len, scratch, &env) != 0) {
            sl_metrics.pub_rejected[SL_REJECT_PUB_BAD_ENVELOPE]++;
            send_error(c, "bad_envelope",
                       "want a text message {\"topic\":…,\"event\":…,\"data\":\"…\"}");
            goto out;
        }
        if (env.topic != NULL) {
            topic = env.topic;
            topic_len = env.topic_len;
        }
        if (env.event != NULL) {
            const char *code, *msg;
            int rc = sl_event_check(env.event, env.event_len, &code, &msg);
            if (rc != 0) {
                sl_metrics.pub_rejected[rc == SL_ERESERVED ? SL_REJECT_PUB_CTL_EVENT
                                                           : SL_REJECT_PUB_BAD_EVENT]++;
                send_error(c, code, msg);
                goto out;
            }
            memcpy(ev, env.event, env.event_len);
            ev[env.event_len] = '\0';
            event = ev;
        }
        payload = env.data;
        payload_len = env.data_len;
    }
    if (topic == NULL || !sl_topic_name_valid(topic, topic_len, cfg->max_topic_name)) {
        sl_metrics.pub_rejected[SL_REJECT_PUB_BAD_TOPIC]++;
        send_error(c, "bad_topic", "invalid or missing topic name");
        goto out;
    }
    if (payload_len > cfg->max_message_bytes) {
        sl_metrics.pub_rejected[SL_REJECT_PUB_TOO_LARGE]++;
        send_error(c, "too_large", "payload over max_message_bytes");
        goto out;
    }
    if (sl_api_reserved(payload, payload_len)) {
        sl_metrics.pub_rejected[SL_REJECT_PUB_RESERVED]++;
        send_error(c, "reserved_payload", "payloads may not begin with {\"sluice\":");
        goto out;
    }
    publish_to(c, topic, topic_len, event, payload, payload_len, text);
out:
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
        if (!p->dropping && msg_append(c, p, f->data, f->data_length) != 0) {
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
        sl_budget_release(p->msg_cap + ALLOC_OVERHEAD);
        free(p->msg);
        p->msg = NULL;
        p->msg_cap = 0;
    }
    return c->closing ? -1 : 0;
}

void sl_ws_input(sl_conn_t *c, const char *data, size_t len)
{
    sl_ws_t *ws = c->ws;
    if (c->closing || ws == NULL || ws->close_pending)
        return; /* after our close frame, input is discarded */
    if (ws->parser == NULL && (ws->parser = parser_new(c)) == NULL) {
        sl_ws_fail(c, 1013, "memory budget exhausted", SL_CLOSE_PROTOCOL);
        return;
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
        if (c->parked) {
            /* Pushed back: the rest waits (wslay keeps what it buffered). */
            sl_conn_stash(c, p->in, p->in_len);
            p->in = NULL;
            p->in_len = 0;
            return;
        }
    }
    if (c->closing || c->ws == NULL)
        return;
    p->in = NULL;
    p->in_len = 0;
    /* Everything wslay was given belongs to complete frames: it holds nothing, so neither
     * need we, unless a fragmented message is still being assembled. */
    if (!ws->close_pending && !p->in_frame && p->fed == p->used && p->msg_op == 0)
        parser_free(ws);
    sl_conn_pump(c);
    if (!c->closing && !c->read_paused &&
        (ws->out_len > OUT_HIGH || c->tcp.write_queue_size > OUT_HIGH)) {
        /* A publisher that does not read its answers is not read either. */
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->read_paused = 1;
    }
}

void sl_ws_resume(sl_conn_t *c, int kind, int timed_out)
{
    sl_ws_t *ws = c->ws;
    (void)timed_out; /* WebSocket publishers wait without a deadline */
    if (kind == SL_WAIT_DURABLE) {
        queue_ack(c, c->wait.topic, c->wait.seq);
    } else if (ws->held != NULL) {
        char *msg = ws->held;
        size_t len = ws->held_len;
        ws->held = NULL;
        publish_to(c, ws->held_topic, ws->held_topic_len,
                   ws->held_has_event ? ws->held_event : NULL, msg, len, ws->held_text);
        sl_budget_release(len + ALLOC_OVERHEAD);
        free(msg);
    }
    if (c->parked || c->closing)
        return;
    /* Go on with what arrived meanwhile, then read again (the caller resumes reading). */
    size_t n = c->stash_len;
    char *st = c->stash;
    c->stash = NULL;
    c->stash_len = 0;
    sl_ws_input(c, st ? st : "", n);
    if (st != NULL) {
        sl_budget_release(n + ALLOC_OVERHEAD);
        free(st);
    }
    sl_conn_pump(c);
}

void sl_ws_tick(sl_conn_t *c, uint64_t now)
{
    sl_ws_t *ws = c->ws;
    const sl_config_t *cfg = c->srv->cfg;
    if (ws == NULL || ws->close_pending)
        return;
    if (ws->ping_sent_ms != 0 && now - ws->ping_sent_ms >= cfg->ws_pong_timeout_ms) {
        SL_INFO("websocket ping timeout", "waited_ms=%" PRIu64, now - ws->ping_sent_ms);
        sl_conn_close(c, SL_CLOSE_PING_TIMEOUT);
        return;
    }
    if (cfg->ws_ping_interval_ms && ws->ping_sent_ms == 0 &&
        now - ws->last_ping_ms >= cfg->ws_ping_interval_ms) {
        ws->ping_due = 1;
        ws->ping_sent_ms = now;
        ws->last_ping_ms = now;
        sl_metrics.ws_pings++;
        sl_conn_pump(c);
    }
}
