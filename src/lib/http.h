/*
 * HTTP/1.1 requests: an incremental parser on top of llhttp that keeps only what sluice needs
 * (method, target, a few headers, the body) and enforces every size limit before it
 * allocates, naming the status each violation earns (413, 414, 431, 400). Also the helpers for
 * query strings and percent-decoding, and response formatting. No I/O, no libuv: the
 * connection feeds it bytes, which makes it easy to fuzz.
 */
#ifndef SL_HTTP_H
#define SL_HTTP_H

#include <llhttp.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sl_http_limits {
    size_t max_url;          /* the request target */
    size_t max_header_bytes; /* every other byte of the head: request line, header lines with
                              * their whitespace and line ends, the blank line */
    size_t max_message;      /* body limit for a single-message publish */
    size_t max_body;         /* body limit for an NDJSON batch */
} sl_http_limits_t;

/* Headers sluice reads; all others are counted against the limit and dropped. */
enum {
    SL_H_ACCEPT = 0,
    SL_H_CONTENT_TYPE,
    SL_H_LAST_EVENT_ID,
    SL_H_EXPECT,
    SL_H_ORIGIN,
    SL_H_UPGRADE,
    SL_H_SEC_WS_KEY,
    SL_H_SEC_WS_VERSION,
    SL_H_CONNECTION,
    SL_H_AUTHORIZATION,
    SL_H_COOKIE,
    SL_H__COUNT,
    SL_H_OTHER = 255,
};

/* One request being parsed. Owned by its connection; sl_http_req_dispose frees what it holds.
 * Its heap parts (target, header values, body) are charged to the budget's pool for input
 * still arriving (budget.h) as their bytes arrive, never ahead of them: a Content-Length
 * reserves nothing. */
typedef struct sl_http_req {
    llhttp_t parser;
    const sl_http_limits_t *lim;
    char *url;
    size_t url_len;
    size_t header_bytes;
    size_t head_raw; /* bytes of the request head fed so far, target included */
    char *hval[SL_H__COUNT];
    uint16_t hlen[SL_H__COUNT];
    char hname[24];
    uint8_t hname_len;
    uint8_t hcur; /* SL_H_* of the header whose value is being read */
    uint8_t in_value;
    uint8_t started; /* first byte of a request seen */
    uint8_t headers_done;
    uint8_t complete;
    uint8_t expect_continue;
    uint8_t ndjson;
    uint8_t after_lf;   /* the last head byte scanned was a line feed */
    uint8_t cors_admin; /* an admin or listing endpoint: no CORS for any origin */
    int status;         /* error status to answer with, 0 if none */
    const char *error;  /* short error code for the JSON body */
    char *body;
    size_t body_len, body_cap, body_limit;
    size_t charged; /* bytes of this request charged to the budget */
} sl_http_req_t;

typedef enum {
    SL_HTTP_MORE = 0, /* all input consumed, request not complete */
    SL_HTTP_DONE,     /* a request is complete; *consumed bytes were used */
    SL_HTTP_ERROR,    /* answer req->status and close the connection */
} sl_http_result_t;

void sl_http_req_init(sl_http_req_t *req, const sl_http_limits_t *lim);
/* Frees what the request holds; harmless to call twice. */
void sl_http_req_dispose(sl_http_req_t *req);
/* Prepares for the next request on a keep-alive connection. */
void sl_http_req_next(sl_http_req_t *req);

/* Feeds bytes to the parser. Stops right after a complete request (pipelined bytes after it
 * are left unconsumed). */
sl_http_result_t sl_http_feed(sl_http_req_t *req, const char *data, size_t len, size_t *consumed);

/* Whether the connection stays open after this request (HTTP/1.1 default, Connection header).
 * A request that asked for an upgrade (Upgrade + Connection: upgrade) and was not switched to
 * WebSocket never keeps its connection: what follows it is in no agreed protocol. */
int sl_http_keep_alive(const sl_http_req_t *req);

static inline const char *sl_http_header(const sl_http_req_t *req, int h, size_t *len)
{
    *len = req->hlen[h];
    return req->hval[h];
}

/* Case-insensitive search for a token in a comma-separated header value. */
int sl_http_has_token(const char *v, size_t len, const char *token);

/* Percent-decodes src into dst (which must hold len bytes); '+' stays '+'. Returns the decoded
 * length or -1 on a malformed escape. */
int sl_url_decode(char *dst, const char *src, size_t len);

/* Iterates "k=v&k2=v2". Returns 1 with raw (undecoded) pieces, 0 at the end. */
int sl_query_next(const char **q, const char *end, const char **k, size_t *klen, const char **v,
                  size_t *vlen);

/* The reason phrase of a status code. */
const char *sl_http_reason(int status);

#endif
