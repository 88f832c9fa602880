/*
 * The HTTP/1.1 request parser (see http.h). llhttp does the grammar; the callbacks here keep
 * the few parts sluice reads and check every limit as bytes arrive, so an oversized target,
 * header block or body is refused before it is stored.
 */
#include "lib/http.h"

#include "lib/budget.h"
#include "lib/util.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const known_headers[SL_H__COUNT] = {
    "accept",  "content-type",      "last-event-id",         "expect",     "origin",
    "upgrade", "sec-websocket-key", "sec-websocket-version", "connection", "authorization",
    "cookie",
};

static sl_http_req_t *req_of(llhttp_t *p)
{
    return (sl_http_req_t *)p->data;
}

/* Charges n bytes for the request to the pool of input still arriving; 1 if charged. */
static int charge(const sl_http_req_t *req, size_t n)
{
    (void)req;
    return sl_budget_try_pending(n);
}

static int fail(sl_http_req_t *req, int status, const char *error)
{
    if (req->status == 0) {
        req->status = status;
        req->error = error;
    }
    return -1;
}

/* Grows *buf to hold `need` bytes (doubling, but never past `most` when that is known to be
 * enough), charging the growth to the budget. */
static int grow(sl_http_req_t *req, char **buf, size_t *cap, size_t need, size_t most)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < need)
        ncap *= 2;
    if (most >= need && ncap > most)
        ncap = most;
    if (!charge(req, ncap - *cap))
        return fail(req, 503, "over_capacity");
    req->charged += ncap - *cap;
    *buf = sl_realloc(*buf, ncap);
    *cap = ncap;
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    req_of(p)->started = 1;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    sl_http_req_t *req = req_of(p);
    req->started = 1;
    if (req->url_len + len > req->lim->max_url)
        return fail(req, 414, "uri_too_long");
    /* The target is small and bounded; grow it exactly. */
    if (!charge(req, len))
        return fail(req, 503, "over_capacity");
    req->charged += len;
    req->url = sl_realloc(req->url, req->url_len + len + 1);
    memcpy(req->url + req->url_len, at, len);
    req->url_len += len;
    req->url[req->url_len] = '\0';
    return 0;
}

static int count_header(sl_http_req_t *req, size_t len)
{
    req->header_bytes += len;
    if (req->header_bytes > req->lim->max_header_bytes)
        return fail(req, 431, "headers_too_large");
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    sl_http_req_t *req = req_of(p);
    if (count_header(req, len + 4) != 0)
        return -1;
    if (req->in_value) {
        req->in_value = 0;
        req->hname_len = 0;
    }
    for (size_t i = 0; i < len; i++) {
        if (req->hname_len < sizeof(req->hname) - 1)
            req->hname[req->hname_len] = (char)(at[i] | 0x20);
        if (req->hname_len < 255)
            req->hname_len++;
    }
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    sl_http_req_t *req = req_of(p);
    req->hcur = SL_H_OTHER;
    if (req->hname_len < sizeof(req->hname)) {
        req->hname[req->hname_len] = '\0';
        for (int i = 0; i < SL_H__COUNT; i++)
            if (strcmp(req->hname, known_headers[i]) == 0)
                req->hcur = (uint8_t)i;
    }
    req->in_value = 1;
    /* A repeated header replaces the earlier value. */
    if (req->hcur != SL_H_OTHER && req->hval[req->hcur] != NULL) {
        sl_budget_release_pending(req->hlen[req->hcur]);
        req->charged -= req->hlen[req->hcur];
        free(req->hval[req->hcur]);
        req->hval[req->hcur] = NULL;
        req->hlen[req->hcur] = 0;
    }
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    sl_http_req_t *req = req_of(p);
    if (count_header(req, len) != 0)
        return -1;
    int h = req->hcur;
    if (h == SL_H_OTHER)
        return 0;
    if (!charge(req, len))
        return fail(req, 503, "over_capacity");
    req->charged += len;
    size_t old = req->hlen[h];
    req->hval[h] = sl_realloc(req->hval[h], old + len + 1);
    memcpy(req->hval[h] + old, at, len);
    req->hlen[h] = (uint16_t)(old + len); /* bounded by max_header_bytes <= 64 KiB */
    req->hval[h][old + len] = '\0';
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    sl_http_req_t *req = req_of(p);
    req->headers_done = 1;
    /* llhttp sets `upgrade` for CONNECT and for Upgrade + Connection: upgrade, and then parses
     * nothing more of the connection as HTTP. Only a WebSocket GET may switch protocols;
     * anything else is refused before its body is read, and the connection closed. */
    if (p->upgrade && p->method != HTTP_GET)
        return fail(req, 400, "bad_upgrade");
    size_t len;
    const char *ct = sl_http_header(req, SL_H_CONTENT_TYPE, &len);
    req->ndjson = ct != NULL && strncasecmp(ct, "application/x-ndjson", 20) == 0;
    req->body_limit = req->ndjson ? req->lim->max_body : req->lim->max_message;
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > req->body_limit)
        return fail(req, 413, "too_large");
    const char *ex = sl_http_header(req, SL_H_EXPECT, &len);
    if (ex != NULL) {
        if (len == 12 && strncasecmp(ex, "100-continue", 12) == 0)
            req->expect_continue = 1;
        else
            return fail(req, 417, "expectation_failed");
    }
    /* Pause, so that sl_http_feed learns where the head ends and checks it whole. */
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    sl_http_req_t *req = req_of(p);
    if (req->body_len + len > req->body_limit)
        return fail(req, 413, "too_large");
    /* Memory follows the bytes that arrived, whatever Content-Length announced; a known
     * length only keeps the last doubling from overshooting it. llhttp has already counted
     * these bytes off content_length. */
    size_t need = req->body_len + len;
    size_t most = (p->flags & F_CONTENT_LENGTH) ? need + (size_t)p->content_length : 0;
    if (grow(req, &req->body, &req->body_cap, need, most) != 0)
        return -1;
    memcpy(req->body + req->body_len, at, len);
    req->body_len += len;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    req_of(p)->complete = 1;
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void sl_http_req_init(sl_http_req_t *req, const sl_http_limits_t *lim)
{
    memset(req, 0, sizeof(*req));
    req->lim = lim;
    llhttp_init(&req->parser, HTTP_REQUEST, &settings);
    /* Strict parsing only: every leniency is a way for two parsers on the path to disagree
     * about where a request ends (request smuggling). They are off by default; say so. */
    llhttp_set_lenient_headers(&req->parser, 0);
    llhttp_set_lenient_chunked_length(&req->parser, 0);
    llhttp_set_lenient_keep_alive(&req->parser, 0);
    llhttp_set_lenient_transfer_encoding(&req->parser, 0);
    req->parser.lenient_flags = 0; /* also the ones this llhttp has no setter for */
    req->parser.data = req;
}

static void free_parts(sl_http_req_t *req)
{
    free(req->url);
    req->url = NULL;
    req->url_len = 0;
    for (int i = 0; i < SL_H__COUNT; i++) {
        free(req->hval[i]);
        req->hval[i] = NULL;
        req->hlen[i] = 0;
    }
    free(req->body);
    req->body = NULL;
    req->body_len = req->body_cap = 0;
    sl_budget_release_pending(req->charged);
    req->charged = 0;
}

void sl_http_req_dispose(sl_http_req_t *req)
{
    free_parts(req);
}

void sl_http_req_next(sl_http_req_t *req)
{
    free_parts(req);
    req->header_bytes = 0;
    req->head_raw = 0;
    req->after_lf = 0;
    req->cors_admin = 0;
    req->hname_len = 0;
    req->hcur = SL_H_OTHER;
    req->in_value = 0;
    req->started = 0;
    req->headers_done = 0;
    req->complete = 0;
    req->expect_continue = 0;
    req->ndjson = 0;
    req->status = 0;
    req->error = NULL;
    req->body_limit = 0;
    if (llhttp_get_errno(&req->parser) == HPE_PAUSED)
        llhttp_resume(&req->parser);
}

/* Checks the head bytes [p, end) that llhttp has just parsed: counts them against
 * max_header_bytes (the target has its own limit) and refuses obsolete line folding, a line
 * feed followed by a space or tab, which llhttp accepts as part of the previous value. */
static int check_head(sl_http_req_t *req, const char *p, const char *end)
{
    for (; p < end; p++) {
        if (req->after_lf && (*p == ' ' || *p == '\t'))
            return fail(req, 400, "bad_request");
        req->after_lf = *p == '\n';
        req->head_raw++;
    }
    if (req->head_raw > req->url_len && req->head_raw - req->url_len > req->lim->max_header_bytes)
        return fail(req, 431, "headers_too_large");
    return 0;
}

sl_http_result_t sl_http_feed(sl_http_req_t *req, const char *data, size_t len, size_t *consumed)
{
    const char *p = data, *end = data + len;
    llhttp_errno_t err;
    for (;;) {
        int in_head = !req->headers_done;
        err = llhttp_execute(&req->parser, p, (size_t)(end - p));
        if (!in_head)
            break;
        if (err == HPE_OK) {
            if (check_head(req, p, end) != 0)
                goto refuse;
            break;
        }
        if (err != HPE_PAUSED || !req->headers_done || req->complete)
            break;
        /* Paused by on_headers_complete: the head ends here. */
        const char *stop = llhttp_get_error_pos(&req->parser);
        if (check_head(req, p, stop) != 0)
            goto refuse;
        llhttp_resume(&req->parser);
        p = stop;
    }
    if (err == HPE_OK) {
        *consumed = len;
        return SL_HTTP_MORE;
    }
    if ((err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) && req->complete) {
        *consumed = (size_t)(llhttp_get_error_pos(&req->parser) - data);
        if (err == HPE_PAUSED_UPGRADE)
            llhttp_resume_after_upgrade(&req->parser);
        return SL_HTTP_DONE;
    }
refuse:
    *consumed = len;
    if (req->status == 0) {
        req->status = 400;
        req->error = "bad_request";
    }
    return SL_HTTP_ERROR;
}

int sl_http_keep_alive(const sl_http_req_t *req)
{
    if (req->parser.upgrade)
        return 0;
    return llhttp_should_keep_alive(&req->parser);
}

int sl_http_has_token(const char *v, size_t len, const char *token)
{
    size_t tl = strlen(token);
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < len && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        /* A media range may carry parameters: "text/event-stream;q=0.9". */
        const char *semi = memchr(v + s, ';', e - s);
        if (semi != NULL)
            e = (size_t)(semi - v);
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, token, tl) == 0)
            return 1;
    }
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int sl_url_decode(char *dst, const char *src, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '%') {
            if (i + 2 >= len)
                return -1;
            int h = hexval(src[i + 1]), l = hexval(src[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            dst[o++] = (char)(h << 4 | l);
            i += 2;
        } else {
            dst[o++] = src[i];
        }
    }
    return (int)o;
}

int sl_query_next(const char **q, const char *end, const char **k, size_t *klen, const char **v,
                  size_t *vlen)
{
    const char *p = *q;
    while (p < end && *p == '&')
        p++;
    if (p >= end)
        return 0;
    const char *amp = memchr(p, '&', (size_t)(end - p));
    const char *stop = amp ? amp : end;
    const char *eq = memchr(p, '=', (size_t)(stop - p));
    *k = p;
    if (eq != NULL) {
        *klen = (size_t)(eq - p);
        *v = eq + 1;
        *vlen = (size_t)(stop - eq - 1);
    } else {
        *klen = (size_t)(stop - p);
        *v = stop;
        *vlen = 0;
    }
    *q = stop;
    return 1;
}

const char *sl_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 101:
        return "Switching Protocols";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 417:
        return "Expectation Failed";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}
