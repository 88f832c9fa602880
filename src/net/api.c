/*
 * The HTTP API: routes a complete request to publishing, subscribing, or one of the read-only
 * endpoints (/topics, /metrics, /sinks, /healthz). Validation of every peer-supplied part (topic
 * names, event types, ids, query) happens here, before anything is created or allocated for it.
 * docs/protocol.md is the contract this file implements.
 */
#define _GNU_SOURCE
#include "net/api.h"

#include "core/rules.h"
#include "lib/budget.h"
#include "lib/log.h"
#include "lib/sse.h"
#include "lib/ws.h"
#include "net/sse_conn.h"
#include "net/ws_conn.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_QUERY_TOPICS 1024

/* A decoded query parameter value, bounded by the target limit. */
typedef struct qval {
    char *s;
    size_t len;
} qval_t;

/* Everything the query string may say; values point into one decoded buffer. */
typedef struct query {
    char *buf;
    qval_t topics[MAX_QUERY_TOPICS];
    uint32_t ntopics;
    qval_t since, last_event_id, from, event, mode, format, ack, durable, wait, access_token;
    int too_many;
} query_t;

static int parse_query(query_t *q, const char *s, size_t len)
{
    memset(q, 0, sizeof(*q));
    q->buf = sl_malloc(len + 1);
    size_t used = 0;
    const char *end = s + len, *k, *v;
    size_t klen, vlen;
    while (sl_query_next(&s, end, &k, &klen, &v, &vlen)) {
        int n = sl_url_decode(q->buf + used, v, vlen);
        if (n < 0)
            return -1;
        qval_t val = {q->buf + used, (size_t)n};
        q->buf[used + (size_t)n] = '\0';
        used += (size_t)n + 1;
        if (klen == 5 && memcmp(k, "topic", 5) == 0) {
            if (q->ntopics == MAX_QUERY_TOPICS)
                q->too_many = 1;
            else
                q->topics[q->ntopics++] = val;
        } else if (klen == 5 && memcmp(k, "since", 5) == 0) {
            q->since = val;
        } else if (klen == 11 && memcmp(k, "lastEventId", 11) == 0) {
            q->last_event_id = val;
        } else if (klen == 4 && memcmp(k, "from", 4) == 0) {
            q->from = val;
        } else if (klen == 5 && memcmp(k, "event", 5) == 0) {
            q->event = val;
        } else if (klen == 4 && memcmp(k, "mode", 4) == 0) {
            q->mode = val;
        } else if (klen == 6 && memcmp(k, "format", 6) == 0) {
            q->format = val;
        } else if (klen == 3 && memcmp(k, "ack", 3) == 0) {
            q->ack = val;
        } else if (klen == 7 && memcmp(k, "durable", 7) == 0) {
            q->durable = val;
        } else if (klen == 4 && memcmp(k, "wait", 4) == 0) {
            q->wait = val;
        } else if (klen == 12 && memcmp(k, "access_token", 12) == 0) {
            q->access_token = val;
        }
        /* Other parameters (cache busters and the like) are ignored. */
    }
    return 0;
}

/* ---- read-only endpoints ---------------------------------------------------------------- */

/* The most one /topics entry takes beside its escaped name: every number at its widest
 * (20 digits), ids at SL_ID_MAX, all optional members present. */
#define TOPIC_ENTRY_MAX                                                                            \
    (sizeof("{\"name\":\"\",\"epoch\":\"\",\"head\":\"\",\"tail\":\"\"") + 16 + 2 * SL_ID_MAX +    \
     sizeof(",\"messages\":,\"bytes\":,\"readers\":") + 3 * 20 +                                   \
     sizeof(",\"lossless\":true,\"log_bytes\":,\"durable_cursors\":") + 2 * 20 + 2)

/* snprintf at buf+*len that never moves *len past cap - 1. The caller sized buf for the
 * worst case; running out would be our bug, so it is asserted. */
static void put_json(char *buf, size_t *len, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void put_json(char *buf, size_t *len, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
    va_end(ap);
    assert(n >= 0 && (size_t)n < cap - *len);
    *len += n < 0 ? 0 : ((size_t)n < cap - *len ? (size_t)n : cap - *len - 1);
}

static void get_topics(sl_conn_t *c)
{
    sl_hub_t *hub = &c->srv->hub;
    size_t cap = 64, len = 0;
    sl_list_t *it;
    sl_list_each(it, &hub->topics)
    {
        cap += sl_container_of(it, sl_topic_t, all_link)->name_len * 6 + TOPIC_ENTRY_MAX;
    }
    char *buf = sl_malloc(cap);
    sl_budget_charge(cap);
    put_json(buf, &len, cap, "{\"topics\":[");
    int first = 1;
    sl_list_each(it, &hub->topics)
    {
        sl_topic_t *t = sl_container_of(it, sl_topic_t, all_link);
        char head[SL_ID_MAX], tail[SL_ID_MAX];
        put_json(buf, &len, cap, "%s{\"name\":", first ? "" : ",");
        first = 0;
        int rc = sl_json_put_string(buf, &len, cap, t->name, t->name_len);
        assert(rc == 0);
        (void)rc;
        /* A lossless topic retains what its log holds as well as its ring. */
        uint64_t oldest = t->ll != NULL ? sl_ll_floor(t) : sl_topic_tail(t);
        if (t->head_seq >= oldest && t->head_seq > 0) {
            sl_id_format(head, t->epoch, t->head_seq);
            sl_id_format(tail, t->epoch, oldest);
            put_json(buf, &len, cap, ",\"epoch\":\"%s\",\"head\":\"%s\",\"tail\":\"%s\"",
                     t->epoch_hex, head, tail);
        } else {
            put_json(buf, &len, cap, ",\"epoch\":\"%s\",\"head\":null,\"tail\":null", t->epoch_hex);
        }
        put_json(buf, &len, cap, ",\"messages\":%zu,\"bytes\":%" PRIu64 ",\"readers\":%zu",
                 t->count, t->bytes, t->nreaders);
        if (t->ll != NULL)
            put_json(buf, &len, cap,
                     ",\"lossless\":true,\"log_bytes\":%" PRIu64 ",\"durable_cursors\":%zu",
                     t->ll->disk_bytes, t->ll->ncursors);
        put_json(buf, &len, cap, "}");
    }
    put_json(buf, &len, cap, "]}\n");
    sl_conn_respond(c, 200, "application/json", NULL, buf, len);
    sl_budget_release(cap);
    free(buf);
}

/* GET /sinks: the sinks render it (through core, as /metrics' sink series); none running is
 * an empty list. */
static void get_sinks(sl_conn_t *c)
{
    size_t len = 0;
    char *body = sl_metrics_sinks_json(&len);
    if (body == NULL) {
        static const char none[] = "{\"sinks\":[]}\n";
        sl_conn_respond(c, 200, "application/json", NULL, none, sizeof(none) - 1);
        return;
    }
    sl_conn_respond(c, 200, "application/json", NULL, body, len);
    free(body);
}

static void get_metrics(sl_conn_t *c)
{
    size_t len;
    char *body = sl_metrics_render(&c->srv->hub, &len);
    sl_conn_respond(c, 200, "text/plain; version=0.0.4", NULL, body, len);
    free(body);
}

/* ---- authorization ---------------------------------------------------------------------- */

static int auth_on(const sl_conn_t *c)
{
    return c->srv->auth != NULL && c->srv->cfg->auth;
}

/* Answers a refusal of core/auth.h: 401 or 403 with its WWW-Authenticate challenge, counted by
 * reason and logged once (never with the token). */
static void refuse_auth(sl_conn_t *c, sl_verdict_t v, const char *what, const char *topic)
{
    char extra[256];
    sl_auth_challenge(&v, extra, sizeof(extra));
    if (v.reason > 0 && v.reason < SL_AUTH_R__COUNT)
        sl_metrics.auth_rejected[v.reason]++;
    char sub[65];
    sl_auth_subject_log(c->claims, sub);
    SL_INFO("auth refused", "reason=%s what=%s topic=\"%.*s\" subject=\"%.*s\"",
            sl_auth_reason_name(v.reason), what, topic ? 200 : 0, topic ? topic : "", 64, sub);
    sl_conn_respond_error(c, v.status, v.code, v.message, extra);
}

static int tries_websocket(const sl_http_req_t *req);

/* A browser attaches cookies to requests that any page makes, so a token in a cookie does not
 * show that the page chose to send it. A read is safe (CORS keeps the answer from a foreign
 * page), but a publish, a cursor change or a WebSocket (which CORS does not cover) from a
 * browser is taken on a cookie only when its Origin is in the `origins` allow-list, as Mercure
 * does for its cookie. Requests without Origin are not a browser's. Returns 1 to ignore it. */
static int cookie_forged(sl_conn_t *c, sl_http_req_t *req)
{
    int method = llhttp_get_method(&req->parser);
    if ((method == HTTP_GET || method == HTTP_HEAD) && !tries_websocket(req))
        return 0;
    size_t olen;
    const char *origin = sl_http_header(req, SL_H_ORIGIN, &olen);
    if (origin == NULL)
        return 0;
    return c->srv->cfg->origins == NULL || !sl_config_origin_allowed(c->srv->cfg, origin, olen);
}

/* Verifies the token a request carries, if any, and keeps its claims in c->claims. A bad token
 * is refused wherever it is sent, also where no token is needed, so a client learns that its
 * token is wrong instead of being served as anonymous. Returns 0, or -1 when answered. */
static int authenticate(sl_conn_t *c, sl_http_req_t *req, const query_t *q, sl_auth_cred_t *cred)
{
    *cred = (sl_auth_cred_t){NULL, 0, NULL};
    sl_jwt_claims_free(c->claims);
    c->claims = NULL;
    if (!auth_on(c))
        return 0;
    size_t alen, clen;
    const char *authz = sl_http_header(req, SL_H_AUTHORIZATION, &alen);
    const char *cookie = sl_http_header(req, SL_H_COOKIE, &clen);
    *cred = sl_auth_find(c->srv->cfg, authz, alen, q->access_token.s, q->access_token.len, cookie,
                         clen);
    if (cred->token != NULL && strcmp(cred->where, "cookie") == 0 && cookie_forged(c, req)) {
        /* Not this page's to use: as if no token was sent. */
        SL_INFO("cookie token ignored", "reason=cross_site_request");
        *cred = (sl_auth_cred_t){NULL, 0, NULL};
    }
    if (cred->token == NULL || sl_auth_is_admin_token(c->srv->auth, cred))
        return 0;
    sl_verdict_t v = sl_auth_verify(c->srv->auth, cred, (int64_t)(sl_wall_ms() / 1000), &c->claims);
    if (v.status != 0) {
        refuse_auth(c, v, cred->where, NULL);
        return -1;
    }
    sl_metrics.auth_accepted++;
    return 0;
}

/* Checks `action` on every topic of names (NUL-terminated); answers the first refusal. */
static int authorize(sl_conn_t *c, int action, const qval_t *names, uint32_t n)
{
    if (!auth_on(c))
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        sl_verdict_t v = sl_auth_topic(c->srv->cfg, c->claims, action, names[i].s);
        if (v.status != 0) {
            if (action == SL_AUTH_PUBLISH)
                sl_metrics.pub_rejected[SL_REJECT_PUB_AUTH]++;
            refuse_auth(c, v, action == SL_AUTH_PUBLISH ? "publish" : "subscribe", names[i].s);
            return -1;
        }
    }
    return 0;
}

/* GET /sources: what the sources wired beside the server report (docs/protocol.md). */
static void get_sources(sl_conn_t *c)
{
    size_t n;
    char *arr = sl_metrics_sources(&n);
    size_t cap = n + 32;
    char *body = sl_malloc(cap);
    int len = snprintf(body, cap, "{\"sources\":%.*s}\n", (int)n, arr);
    sl_conn_respond(c, 200, "application/json", NULL, body, (size_t)len);
    free(body);
    free(arr);
}

/* ---- publishing ------------------------------------------------------------------------- */

static void respond_ids(sl_conn_t *c, const sl_topic_t *t, uint64_t first, size_t n)
{
    size_t cap = 32 + n * (SL_ID_MAX + 3);
    char *buf = sl_malloc(cap);
    sl_budget_charge(cap);
    size_t len = 0;
    char id[SL_ID_MAX];
    if (n == 1) {
        sl_id_format(id, t->epoch, first);
        len = (size_t)snprintf(buf, cap, "{\"id\":\"%s\"}\n", id);
    } else {
        len = (size_t)snprintf(buf, cap, "{\"ids\":[");
        for (size_t i = 0; i < n; i++) {
            sl_id_format(id, t->epoch, first + i);
            len += (size_t)snprintf(buf + len, cap - len, "%s\"%s\"", i ? "," : "", id);
        }
        len += (size_t)snprintf(buf + len, cap - len, "]}\n");
    }
    sl_conn_respond(c, 202, "application/json", NULL, buf, len);
    sl_budget_release(cap);
    free(buf);
}

/* A publish that cannot be made durable: the log's disk failed (every later publish is refused
 * the same way), or the write did not complete within max_publish_wait. The messages may
 * still have reached live subscribers; the publisher is told they are not known to be kept. */
static void disk_error(sl_conn_t *c, int status)
{
    if (status == SL_WAKE_TIMEOUT) {
        sl_metrics.pub_rejected[SL_REJECT_PUB_DISK_TIMEOUT]++;
        sl_conn_error(c, 503, "disk_timeout", "lossless topic: not written within the wait");
    } else {
        sl_metrics.pub_rejected[SL_REJECT_PUB_DISK_ERROR]++;
        sl_conn_error(c, 503, "disk_error", "lossless topic: its log cannot be written");
    }
}

static void api_request(sl_conn_t *c, sl_http_req_t *req);

static void api_resume(sl_conn_t *c, int kind, int status)
{
    if (status == SL_WAKE_FAILED || (kind == SL_WAIT_DURABLE && status == SL_WAKE_TIMEOUT)) {
        disk_error(c, status);
    } else if (kind == SL_WAIT_DURABLE) {
        respond_ids(c, c->wait.topic, c->park_first, c->park_n);
    } else if (status == SL_WAKE_TIMEOUT) {
        sl_metrics.pub_rejected[SL_REJECT_PUB_TOPIC_FULL]++;
        sl_conn_error(c, 429, "topic_full", "lossless topic still full after the wait");
    } else {
        api_request(c, c->req);
    }
}

/* Looks up or creates a topic for a request, answering the error itself. */
static sl_topic_t *topic_for(sl_conn_t *c, const char *name, size_t len, int publishing)
{
    int err;
    sl_topic_t *t = sl_hub_topic(&c->srv->hub, name, len, 1, &err);
    if (t != NULL)
        return t;
    if (err == SL_ELIMIT) {
        if (publishing)
            sl_metrics.pub_rejected[SL_REJECT_PUB_MAX_TOPICS]++;
        SL_WARN("topic refused", "reason=max_topics limit=%" PRIu64, c->srv->cfg->max_topics);
        sl_conn_error(c, 503, "over_capacity", "max_topics reached");
    } else {
        if (publishing)
            sl_metrics.pub_rejected[SL_REJECT_PUB_BUDGET]++;
        sl_conn_error(c, 503, "over_capacity", "memory budget exhausted");
    }
    return NULL;
}

/* Answers a publish the rules refused, and counts it. */
static void refuse_publish(sl_conn_t *c, sl_verdict_t v)
{
    if (v.reason >= 0)
        sl_metrics.pub_rejected[v.reason]++;
    sl_conn_error(c, v.status, v.code, v.message);
}

static void publish(sl_conn_t *c, sl_http_req_t *req, const char *name, size_t nlen,
                    const query_t *q)
{
    const sl_config_t *cfg = c->srv->cfg;
    char event[65];
    const char *ev = NULL;
    const char *body = req->body ? req->body : "";
    size_t body_len = req->body_len, n = 1;
    const char **payloads = NULL;
    size_t *lens = NULL;
    sl_verdict_t v = sl_rule_publish_topic(cfg, name, nlen);
    if (v.status == 0 && q->event.s != NULL &&
        (v = sl_rule_event(q->event.s, q->event.len)).status == 0) {
        memcpy(event, q->event.s, q->event.len);
        event[q->event.len] = '\0';
        ev = event;
    }
    if (v.status == 0 && req->ndjson) {
        v = sl_rule_ndjson(cfg, body, body_len, &payloads, &lens, &n);
    } else if (v.status == 0 && (v = sl_rule_payload(cfg, body, body_len)).status == 0) {
        payloads = sl_malloc(sizeof(*payloads));
        lens = sl_malloc(sizeof(*lens));
        payloads[0] = body;
        lens[0] = body_len;
    }
    if (v.status != 0) {
        refuse_publish(c, v);
        return;
    }
    /* A retry after waiting for room was admitted already. */
    if (c->park_deadline_ms == 0) {
        size_t bytes = 0;
        for (size_t i = 0; i < n; i++)
            bytes += lens[i];
        uint64_t ms = sl_conn_rate_publish(c, n, bytes);
        if (ms != 0) {
            free(payloads);
            free(lens);
            if (ms == UINT64_MAX) {
                sl_conn_error(c, 413, "too_large", "larger than the publish rate's burst allows");
            } else {
                char extra[48];
                snprintf(extra, sizeof(extra), "Retry-After: %" PRIu64 "\r\n", (ms + 999) / 1000);
                sl_conn_respond_error(c, 429, "rate_limited", "publish rate limit", extra);
            }
            return;
        }
    }
    uint64_t wait_ms = 0;
    if (q->wait.s != NULL) {
        if (sl_parse_duration_ms(q->wait.s, &wait_ms) != 0) {
            free(payloads);
            free(lens);
            sl_conn_error(c, 400, "bad_query", "wait= must be a duration");
            return;
        }
        if (wait_ms > cfg->max_publish_wait_ms)
            wait_ms = cfg->max_publish_wait_ms;
    }
    sl_topic_t *t = topic_for(c, name, nlen, 1);
    if (t != NULL) {
        uint64_t first;
        int rc = sl_hub_publish(&c->srv->hub, t, ev, payloads, lens, n, &first);
        if (rc == SL_EFULL) {
            if (wait_ms > 0) {
                /* Wait for room, once, up to the deadline of the first attempt. */
                if (c->park_deadline_ms == 0)
                    c->park_deadline_ms = sl_now_ms() + wait_ms;
                sl_conn_park(c, t, SL_WAIT_ROOM, 0, c->park_deadline_ms);
            } else {
                sl_metrics.pub_rejected[SL_REJECT_PUB_TOPIC_FULL]++;
                sl_conn_error(c, 429, "topic_full",
                              "lossless topic full: its readers have not caught up");
            }
        } else if (rc == SL_EDISK) {
            disk_error(c, SL_WAKE_FAILED);
        } else if (rc != 0) {
            SL_WARN("publish refused", "reason=budget topic=%s used=%" PRIu64 " limit=%" PRIu64,
                    t->name, sl_budget.used, sl_budget.limit);
            sl_conn_error(c, 503, "over_capacity", "memory budget exhausted");
        } else if (t->ll != NULL && sl_ll_durable(t) < first + n - 1) {
            /* Acknowledged once written (and with fsync=always, fsync'ed): a crash of the
             * process then loses nothing that was acknowledged. */
            c->park_first = first;
            c->park_n = (uint32_t)n;
            sl_conn_park(c, t, SL_WAIT_DURABLE, first + n - 1,
                         sl_ll_write_deadline(cfg, sl_now_ms()));
            if (sl_hub_flush_due(&c->srv->hub))
                sl_hub_flush(&c->srv->hub, sl_now_ms());
            sl_server_kick(c->srv);
        } else {
            respond_ids(c, t, first, n);
            if (sl_hub_flush_due(&c->srv->hub))
                sl_hub_flush(&c->srv->hub, sl_now_ms());
            sl_server_kick(c->srv);
        }
    }
    free(payloads);
    free(lens);
}

/* ---- subscribing ------------------------------------------------------------------------ */

static int accepts_sse(const sl_http_req_t *req)
{
    size_t len;
    const char *a = sl_http_header(req, SL_H_ACCEPT, &len);
    return a != NULL && sl_http_has_token(a, len, "text/event-stream");
}

/* Validates the topic names of a subscription; answers the error itself. */
static int check_names(sl_conn_t *c, const qval_t *names, uint32_t n, const query_t *q)
{
    const sl_config_t *cfg = c->srv->cfg;
    if (n == 0) {
        sl_conn_error(c, 400, "bad_query", "at least one topic= is required");
        return -1;
    }
    if (n > cfg->max_topics_per_connection || q->too_many) {
        sl_conn_error(c, 400, "too_many_topics", "more topics than max_topics_per_connection");
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!sl_topic_name_valid(names[i].s, names[i].len, cfg->max_topic_name)) {
            sl_conn_error(c, 400, "bad_topic", "invalid topic name");
            return -1;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (names[j].len == names[i].len && memcmp(names[j].s, names[i].s, names[i].len) == 0) {
                sl_conn_error(c, 400, "bad_query", "a topic is named twice");
                return -1;
            }
        }
    }
    return 0;
}

/* The starting point: since=, then Last-Event-ID, then lastEventId=, then from=. Answers the
 * error itself. */
static int parse_start(sl_conn_t *c, sl_http_req_t *req, const query_t *q, int multi,
                       sl_start_t *start)
{
    start->kind = SL_START_NEW;
    start->disk = (uint8_t)!multi;
    size_t hlen;
    const char *hid = sl_http_header(req, SL_H_LAST_EVENT_ID, &hlen);
    const char *id = NULL;
    size_t idlen = 0;
    if (q->since.s != NULL) {
        id = q->since.s;
        idlen = q->since.len;
    } else if (hid != NULL && hlen > 0) {
        id = hid;
        idlen = hlen;
    } else if (q->last_event_id.s != NULL) {
        id = q->last_event_id.s;
        idlen = q->last_event_id.len;
    }
    if (id != NULL) {
        uint64_t epoch, seq;
        if (sl_id_parse(id, idlen, multi, &epoch, &seq) != 0) {
            sl_conn_error(c, 400, "bad_id", "malformed message id");
            return -1;
        }
        start->kind = multi ? SL_START_GSEQ : SL_START_SINCE;
        start->epoch = epoch;
        start->seq = seq;
    } else if (q->from.s != NULL) {
        if (q->from.len == 6 && memcmp(q->from.s, "oldest", 6) == 0) {
            start->kind = SL_START_OLDEST;
        } else if (!(q->from.len == 3 && memcmp(q->from.s, "new", 3) == 0)) {
            sl_conn_error(c, 400, "bad_query", "from= must be oldest or new");
            return -1;
        }
    }
    return 0;
}

/* Looks up (creating) every topic of a subscription; NULL when one could not be (answered). */
static sl_topic_t **lookup_topics(sl_conn_t *c, const qval_t *names, uint32_t n)
{
    sl_topic_t **topics = sl_malloc(n * sizeof(*topics));
    for (uint32_t i = 0; i < n; i++) {
        if ((topics[i] = topic_for(c, names[i].s, names[i].len, 0)) == NULL) {
            free(topics);
            return NULL;
        }
    }
    return topics;
}

static sl_start_t *same_starts(const sl_start_t *start, uint32_t n)
{
    sl_start_t *starts = sl_malloc((n ? n : 1) * sizeof(*starts));
    for (uint32_t i = 0; i < n; i++)
        starts[i] = *start;
    return starts;
}

/* A new durable cursor must fit max_cursors_per_topic and max_cursors; an existing one is
 * never refused, and cursors recovered from disk count but are never dropped. Returns 0, or -1
 * when answered (409: the client can make room by deleting a cursor; waiting alone does not
 * help unless cursor_ttl is set, so there is no Retry-After). */
static int refuse_cursor(sl_conn_t *c, sl_topic_t *t)
{
    const sl_config_t *cfg = c->srv->cfg;
    if (t->ll->ncursors >= cfg->max_cursors_per_topic) {
        sl_metrics.cursors_rejected[SL_REJECT_CURSOR_PER_TOPIC]++;
        SL_WARN("durable cursor refused", "reason=per_topic topic=%s limit=%" PRIu64, t->name,
                cfg->max_cursors_per_topic);
        sl_conn_error(c, 409, "too_many_cursors", "the topic has max_cursors_per_topic cursors");
        return -1;
    }
    if (sl_metrics.log.cursors >= cfg->max_cursors) {
        sl_metrics.cursors_rejected[SL_REJECT_CURSOR_TOTAL]++;
        SL_WARN("durable cursor refused", "reason=total topic=%s limit=%" PRIu64, t->name,
                cfg->max_cursors);
        sl_conn_error(c, 409, "too_many_cursors", "the server has max_cursors cursors");
        return -1;
    }
    return 0;
}

/* ?durable=NAME: validates it for this subscription, finds or creates the cursor and turns
 * the start point into the cursor's. *cur is NULL without durable=. Returns 0, or -1 when
 * answered with an error. */
static int durable_start(sl_conn_t *c, const query_t *q, sl_topic_t *t, int multi,
                         sl_start_t *start, sl_cursor_t **cur)
{
    *cur = NULL;
    if (q->durable.s == NULL)
        return 0;
    if (multi) {
        sl_conn_error(c, 400, "bad_query", "durable= needs a single-topic subscription");
        return -1;
    }
    if (t->ll == NULL) {
        sl_conn_error(c, 400, "not_lossless", "durable readers need a lossless topic");
        return -1;
    }
    if (!sl_ll_cursor_name_valid(q->durable.s, q->durable.len)) {
        sl_conn_error(c, 400, "bad_query", "durable= must be 1..64 of [A-Za-z0-9._-]");
        return -1;
    }
    sl_cursor_t *cu = sl_ll_cursor(t, q->durable.s, q->durable.len, 0);
    char owner[65] = "";
    if (auth_on(c)) {
        sl_auth_owner(c->claims, owner);
        /* Reading a cursor consumes it (and over WebSocket acknowledges it): only its owner
         * or an admin may. */
        if (cu != NULL && cu->owner[0] != '\0' && strcmp(cu->owner, owner) != 0 &&
            (c->claims == NULL || !c->claims->admin)) {
            refuse_auth(c,
                        (sl_verdict_t){403, "insufficient_scope",
                                       "the cursor belongs to another subject", SL_AUTH_R_SCOPE},
                        "cursor", t->name);
            return -1;
        }
        uint64_t limit = c->srv->cfg->auth_max_cursors_per_subject;
        char subj[65];
        if (cu == NULL && owner[0] != '\0' && limit > 0 && sl_ll_cursors_owned(owner) >= limit) {
            sl_metrics.cursors_rejected[SL_REJECT_CURSOR_SUBJECT]++;
            SL_WARN("durable cursor refused",
                    "reason=per_subject topic=%s subject=\"%s\" limit=%" PRIu64, t->name,
                    sl_auth_subject_log(c->claims, subj), limit);
            sl_conn_error(c, 409, "too_many_cursors", "the subject has max_cursors_per_subject");
            return -1;
        }
    }
    if (cu == NULL && refuse_cursor(c, t) != 0)
        return -1;
    if (cu == NULL) {
        /* A new cursor starts where the request says: its checkpoint is just before. */
        uint64_t ck = t->head_seq;
        /* An id of another epoch, or beyond the head, names nothing in this log: the cursor
         * starts at its oldest message, as a reader resuming from it would (reset). */
        if (start->kind == SL_START_OLDEST ||
            (start->kind == SL_START_SINCE &&
             (start->epoch != t->epoch || start->seq > t->head_seq)))
            ck = sl_ll_floor(t) - 1;
        else if (start->kind == SL_START_SINCE)
            ck = start->seq;
        cu = sl_ll_cursor(t, q->durable.s, q->durable.len, 1);
        cu->checkpoint = ck;
        memcpy(cu->owner, owner, sizeof(cu->owner));
        sl_ll_cursor_created(t);
    }
    start->kind = SL_START_SINCE;
    start->epoch = t->epoch;
    start->seq = cu->checkpoint;
    *cur = cu;
    return 0;
}

/* Hands the durable cursor to the subscription's reader once it exists. */
static void use_cursor(sl_conn_t *c, sl_cursor_t *cu)
{
    if (cu == NULL || c->closing || c->sub.nreaders == 0)
        return;
    c->sub.readers[0].cursor = cu;
    sl_ll_cursor_use(cu, 1);
}

static void subscribe(sl_conn_t *c, sl_http_req_t *req, const qval_t *names, uint32_t n, int multi,
                      const query_t *q)
{
    sl_start_t start;
    if (check_names(c, names, n, q) != 0 || authorize(c, SL_AUTH_SUBSCRIBE, names, n) != 0 ||
        parse_start(c, req, q, multi, &start) != 0)
        return;
    sl_topic_t **topics = lookup_topics(c, names, n);
    if (topics == NULL)
        return;
    sl_cursor_t *cu;
    if (durable_start(c, q, topics[0], multi, &start, &cu) == 0) {
        sl_start_t *starts = same_starts(&start, n);
        if (sl_sse_subscribe(c, topics, starts, n, multi) == 0)
            use_cursor(c, cu);
        free(starts);
    }
    free(topics);
}

/* ---- WebSocket -------------------------------------------------------------------------- */

static int wants_websocket(const sl_http_req_t *req)
{
    size_t len;
    const char *u = sl_http_header(req, SL_H_UPGRADE, &len);
    return u != NULL && sl_http_has_token(u, len, "websocket");
}

/* A request that tries to open a WebSocket, well-formed or not: it asks for an upgrade or
 * carries a WebSocket handshake header. Such a request gets a handshake error, not an SSE one. */
static int tries_websocket(const sl_http_req_t *req)
{
    size_t len;
    return sl_http_header(req, SL_H_UPGRADE, &len) != NULL ||
           sl_http_header(req, SL_H_SEC_WS_KEY, &len) != NULL ||
           sl_http_header(req, SL_H_SEC_WS_VERSION, &len) != NULL;
}

static int qval_is(const qval_t *v, const char *s)
{
    return v->len == strlen(s) && memcmp(v->s, s, v->len) == 0;
}

/* The opening handshake (RFC 6455 4.2), then the connection's options from the query. */
static void websocket(sl_conn_t *c, sl_http_req_t *req, const qval_t *names, uint32_t n, int multi,
                      const query_t *q)
{
    const sl_config_t *cfg = c->srv->cfg;
    size_t len;
    const char *v;
    char accept[29];
    if (llhttp_get_http_major(&req->parser) != 1 || llhttp_get_http_minor(&req->parser) < 1) {
        sl_conn_error(c, 400, "bad_handshake", "WebSocket needs HTTP/1.1");
        return;
    }
    if (!wants_websocket(req) || (v = sl_http_header(req, SL_H_CONNECTION, &len)) == NULL ||
        !sl_http_has_token(v, len, "upgrade")) {
        sl_conn_error(c, 400, "bad_handshake", "want Upgrade: websocket and Connection: Upgrade");
        return;
    }
    v = sl_http_header(req, SL_H_SEC_WS_VERSION, &len);
    if (v == NULL || len != 2 || memcmp(v, "13", 2) != 0) {
        SL_INFO("websocket refused", "reason=version");
        sl_conn_respond_error(c, 426, "upgrade_required", "only Sec-WebSocket-Version 13",
                              "Sec-WebSocket-Version: 13\r\n");
        return;
    }
    v = sl_http_header(req, SL_H_SEC_WS_KEY, &len);
    if (v == NULL || sl_ws_accept_key(v, len, accept) != 0) {
        sl_conn_error(c, 400, "bad_handshake", "missing or invalid Sec-WebSocket-Key");
        return;
    }
    v = sl_http_header(req, SL_H_ORIGIN, &len);
    if (v != NULL && !sl_config_origin_allowed(cfg, v, len)) {
        SL_INFO("websocket refused", "reason=origin origin=\"%.*s\"", (int)(len > 200 ? 200 : len),
                v);
        sl_metrics.origin_rejected++;
        sl_conn_error(c, 403, "forbidden_origin", "Origin not in the allow-list");
        return;
    }
    sl_ws_opts_t opts = {.mode = SL_WS_SUB, .json = (uint8_t)multi, .ack = 0};
    if (q->mode.s != NULL) {
        if (qval_is(&q->mode, "sub"))
            opts.mode = SL_WS_SUB;
        else if (qval_is(&q->mode, "pub"))
            opts.mode = SL_WS_PUB;
        else if (qval_is(&q->mode, "pubsub"))
            opts.mode = SL_WS_SUB | SL_WS_PUB;
        else {
            sl_conn_error(c, 400, "bad_query", "mode= must be sub, pub or pubsub");
            return;
        }
    }
    if (q->format.s != NULL) {
        if (qval_is(&q->format, "json"))
            opts.json = 1;
        else if (qval_is(&q->format, "raw"))
            opts.json = 0;
        else {
            sl_conn_error(c, 400, "bad_query", "format= must be raw or json");
            return;
        }
    }
    if (q->ack.s != NULL) {
        if (qval_is(&q->ack, "1") || qval_is(&q->ack, "true"))
            opts.ack = 1;
        else if (!qval_is(&q->ack, "0") && !qval_is(&q->ack, "false")) {
            sl_conn_error(c, 400, "bad_query", "ack= must be 1 or 0");
            return;
        }
    }
    sl_start_t start;
    if (check_names(c, names, n, q) != 0)
        return;
    /* Refused before the upgrade: subscribing needs every topic; a raw publisher publishes to
     * the first topic only, a json one names a topic per message (checked then). */
    if ((opts.mode & SL_WS_SUB) && authorize(c, SL_AUTH_SUBSCRIBE, names, n) != 0)
        return;
    if ((opts.mode & SL_WS_PUB) && !opts.json && authorize(c, SL_AUTH_PUBLISH, names, 1) != 0)
        return;
    if (parse_start(c, req, q, multi, &start) != 0)
        return;
    uint32_t nsub = (opts.mode & SL_WS_SUB) ? n : 0;
    sl_topic_t **topics = NULL;
    if (nsub > 0 && (topics = lookup_topics(c, names, nsub)) == NULL)
        return;
    sl_cursor_t *cu = NULL;
    if (nsub > 0 && durable_start(c, q, topics[0], multi, &start, &cu) != 0) {
        free(topics);
        return;
    }
    sl_start_t *starts = same_starts(&start, nsub);
    if (sl_ws_upgrade(c, accept, topics, starts, nsub, multi, &opts, names[0].s, names[0].len) == 0)
        use_cursor(c, cu);
    free(topics);
    free(starts);
}

static void not_allowed(sl_conn_t *c, const char *allow);

/* ---- durable cursors ------------------------------------------------------------------- */

static void cursors(sl_conn_t *c, sl_http_req_t *req, int method, const char *name, size_t nlen,
                    const char *cname, size_t clen, int admin)
{
    int err;
    sl_topic_t *t = sl_topic_name_valid(name, nlen, c->srv->cfg->max_topic_name)
                        ? sl_hub_topic(&c->srv->hub, name, nlen, 0, &err)
                        : NULL;
    if (t == NULL) {
        sl_conn_error(c, 404, "not_found", "no such topic");
        return;
    }
    if (t->ll == NULL) {
        sl_conn_error(c, 400, "not_lossless", "durable cursors exist on lossless topics only");
        return;
    }
    if (cname == NULL) {
        if (method != HTTP_GET) {
            not_allowed(c, "GET");
            return;
        }
        size_t len;
        char *body = sl_ll_cursors_json(t, &len);
        sl_conn_respond(c, 200, "application/json", NULL, body, len);
        free(body);
        return;
    }
    if (method != HTTP_POST && method != HTTP_DELETE) {
        not_allowed(c, "POST, DELETE");
        return;
    }
    sl_cursor_t *cu = sl_ll_cursor_name_valid(cname, clen) ? sl_ll_cursor(t, cname, clen, 0) : NULL;
    if (cu == NULL) {
        sl_conn_error(c, 404, "not_found", "no such cursor");
        return;
    }
    if (auth_on(c) && !admin) {
        /* Acknowledging or deleting: the owner's, or an admin's. */
        char owner[65];
        sl_auth_owner(c->claims, owner);
        if (cu->owner[0] == '\0' || strcmp(cu->owner, owner) != 0) {
            sl_verdict_t v =
                c->claims == NULL
                    ? (sl_verdict_t){401, "token_required", "a token is required",
                                     SL_AUTH_R_MISSING}
                    : (sl_verdict_t){403, "insufficient_scope",
                                     "the cursor belongs to another subject", SL_AUTH_R_SCOPE};
            refuse_auth(c, v, "cursor", t->name);
            return;
        }
    }
    if (method == HTTP_DELETE) {
        SL_INFO("durable cursor deleted", "topic=%s cursor=%s", t->name, cu->name);
        sl_ll_cursor_delete(t, cu);
        sl_conn_respond(c, 204, NULL, NULL, "", 0);
        return;
    }
    uint64_t epoch, seq;
    if (sl_rule_ack_id(req->body ? req->body : "", req->body_len, &epoch, &seq) != 0) {
        sl_conn_error(c, 400, "bad_id", "want the acknowledged id as the body");
        return;
    }
    const char *code;
    int status = sl_ll_ack_id(t, cu, epoch, seq, &code);
    if (status != 0)
        sl_conn_error(c, status, code,
                      status == 409 ? "id of another epoch" : "id beyond the topic's head");
    else
        sl_conn_respond(c, 204, NULL, NULL, "", 0);
}

/* If path names the cursor API ({topic}/cursors or {topic}/cursors/{NAME}), sets the pieces
 * and returns 1. */
static int cursor_path(const char *p, size_t n, size_t *tlen, const char **cname, size_t *clen)
{
    for (size_t i = 0; i + 8 <= n; i++) {
        if (memcmp(p + i, "/cursors", 8) != 0 || (i + 8 < n && p[i + 8] != '/'))
            continue;
        *tlen = i;
        *cname = NULL;
        *clen = 0;
        if (i + 8 < n) {
            *cname = p + i + 9;
            *clen = n - i - 9;
        }
        return 1;
    }
    return 0;
}

/* ---- routing ---------------------------------------------------------------------------- */

static void not_allowed(sl_conn_t *c, const char *allow)
{
    char extra[64];
    snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
    char body[] = "{\"error\":\"method_not_allowed\",\"message\":\"method not allowed\"}\n";
    sl_conn_respond(c, 405, "application/json", extra, body, sizeof(body) - 1);
}

/* Whether path is an admin or listing endpoint: /metrics, the /topics listing, the cursor
 * API. These never answer CORS for any origin, only for listed ones. */
static int admin_path(const char *path, size_t plen)
{
    size_t tlen, clen;
    const char *cname;
    if (strcmp(path, "/metrics") == 0 || strcmp(path, "/sinks") == 0 ||
        strcmp(path, "/topics") == 0 || strcmp(path, "/topics/") == 0 ||
        strcmp(path, "/sources") == 0)
        return 1;
    return plen > 8 && strncmp(path, "/topics/", 8) == 0 &&
           cursor_path(path + 8, plen - 8, &tlen, &cname, &clen);
}

/* With an `origins` allow-list, a browser page of another origin may still send requests:
 * CORS only hides the answer from it. So a request carrying an Origin that is not listed is
 * refused before it does anything, unless it is a preflight or a read that changes nothing
 * (/healthz and the admin reads). A request without Origin is not a browser's cross-site
 * request and is served. WebSocket handshakes check the origin themselves. Returns 1 when
 * refused (answered). */
static int origin_refused(sl_conn_t *c, sl_http_req_t *req, int method, const char *path, int admin)
{
    const sl_config_t *cfg = c->srv->cfg;
    size_t len;
    const char *origin = sl_http_header(req, SL_H_ORIGIN, &len);
    if (cfg->origins == NULL || origin == NULL || sl_config_origin_allowed(cfg, origin, len))
        return 0;
    if (method == HTTP_OPTIONS)
        return 0;
    if (method == HTTP_GET || method == HTTP_HEAD) {
        if (admin || strcmp(path, "/healthz") == 0 || tries_websocket(req))
            return 0;
    } else if (method == HTTP_POST && !admin) {
        sl_metrics.pub_rejected[SL_REJECT_PUB_ORIGIN]++;
    }
    sl_metrics.origin_rejected++;
    SL_INFO("request refused", "reason=origin origin=\"%.*s\"", (int)(len > 200 ? 200 : len),
            origin);
    sl_conn_error(c, 403, "origin_not_allowed", "Origin not in the allow-list");
    return 1;
}

static void api_request(sl_conn_t *c, sl_http_req_t *req)
{
    int method = llhttp_get_method(&req->parser);
    const char *url = req->url ? req->url : "";
    size_t url_len = req->url_len;
    const char *qm = memchr(url, '?', url_len);
    size_t path_len = qm ? (size_t)(qm - url) : url_len;
    char *path = sl_malloc(path_len + 1);
    int plen = sl_url_decode(path, url, path_len);
    query_t q;
    int qrc = parse_query(&q, qm ? qm + 1 : url + url_len, qm ? url_len - path_len - 1 : 0);
    int is_get = method == HTTP_GET;
    if (plen < 0 || qrc < 0) {
        sl_conn_error(c, 400, "bad_query", "malformed percent-encoding");
        goto out_free_query;
    }
    path[plen] = '\0';
    int admin = admin_path(path, (size_t)plen);
    req->cors_admin = (uint8_t)admin;
    if (origin_refused(c, req, method, path, admin))
        goto out_free_query;
    /* Preflights carry no credentials, and /healthz stays open to probes. */
    sl_auth_cred_t cred;
    int is_admin = 1;
    if (method != HTTP_OPTIONS && strcmp(path, "/healthz") != 0) {
        if (authenticate(c, req, &q, &cred) != 0)
            goto out_free_query;
        sl_verdict_t v = SL_VERDICT_OK;
        if (auth_on(c))
            v = sl_auth_admin(c->srv->auth, &cred, c->claims);
        is_admin = v.status == 0;
        /* A cursor's owner may acknowledge and delete it (checked there); the rest of the
         * admin endpoints are the admin's. */
        size_t tl, cl;
        const char *cn = NULL;
        int owner_op = admin && (method == HTTP_POST || method == HTTP_DELETE) && plen > 8 &&
                       strncmp(path, "/topics/", 8) == 0 &&
                       cursor_path(path + 8, (size_t)plen - 8, &tl, &cn, &cl) && cn != NULL;
        if (admin && !is_admin && !owner_op) {
            refuse_auth(c, v, "admin", NULL);
            goto out_free_query;
        }
    }
    if (method == HTTP_OPTIONS) {
        /* A CORS preflight; the allowed origin is added by the response itself. */
        sl_conn_respond(
            c, 204, NULL,
            "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
            "Access-Control-Allow-Headers: Authorization, Content-Type, Last-Event-ID\r\n"
            "Access-Control-Max-Age: 600\r\n",
            "", 0);
    } else if (strcmp(path, "/healthz") == 0) {
        if (is_get)
            sl_conn_respond(c, 200, "text/plain", NULL, "ok\n", 3);
        else
            not_allowed(c, "GET");
    } else if (strcmp(path, "/metrics") == 0) {
        if (is_get)
            get_metrics(c);
        else
            not_allowed(c, "GET");
    } else if (strcmp(path, "/sources") == 0) {
        if (is_get)
            get_sources(c);
    } else if (strcmp(path, "/sinks") == 0) {
        if (is_get)
            get_sinks(c);
        else
            not_allowed(c, "GET");
    } else if (strcmp(path, "/topics") == 0 || strcmp(path, "/topics/") == 0) {
        if (is_get)
            get_topics(c);
        else
            not_allowed(c, "GET");
    } else if (strncmp(path, "/topics/", 8) == 0) {
        const char *name = path + 8;
        size_t nlen = (size_t)plen - 8, tlen, clen;
        const char *cname;
        if (cursor_path(name, nlen, &tlen, &cname, &clen)) {
            cursors(c, req, method, name, tlen, cname, clen, is_admin);
        } else if (method == HTTP_POST) {
            sl_verdict_t v = sl_rule_topic(c->srv->cfg, name, nlen);
            qval_t one = {(char *)name, nlen};
            if (v.status != 0)
                refuse_publish(c, v);
            else if (authorize(c, SL_AUTH_PUBLISH, &one, 1) == 0)
                publish(c, req, name, nlen, &q);
        } else if (method == HTTP_GET && tries_websocket(req)) {
            qval_t one = {(char *)name, nlen};
            websocket(c, req, &one, 1, 0, &q);
        } else if (method == HTTP_GET) {
            if (!accepts_sse(req)) {
                sl_conn_error(c, 406, "not_acceptable", "subscribe with Accept: text/event-stream");
            } else {
                qval_t one = {(char *)name, nlen};
                subscribe(c, req, &one, 1, 0, &q);
            }
        } else {
            not_allowed(c, "GET, POST");
        }
    } else if (strcmp(path, "/ws") == 0) {
        if (method != HTTP_GET)
            not_allowed(c, "GET");
        else if (!tries_websocket(req))
            sl_conn_respond_error(c, 426, "upgrade_required", "GET /ws needs a WebSocket upgrade",
                                  "Upgrade: websocket\r\nConnection: Upgrade\r\n");
        else
            websocket(c, req, q.topics, q.ntopics, 1, &q);
    } else if (strcmp(path, "/sse") == 0) {
        if (method == HTTP_GET)
            subscribe(c, req, q.topics, q.ntopics, 1, &q);
        else
            not_allowed(c, "GET");
    } else {
        sl_conn_error(c, 404, "not_found", "no such endpoint");
    }
out_free_query:
    /* Claims stay only with a connection that now subscribes or speaks WebSocket. */
    if (c->state == SL_CONN_REQUEST && !c->parked) {
        sl_jwt_claims_free(c->claims);
        c->claims = NULL;
    }
    free(q.buf);
    free(path);
}

static const sl_handler_t api_handler = {
    .request = api_request,
    .resume = api_resume,
};

void sl_api_install(sl_server_t *srv)
{
    srv->handler = &api_handler;
}
