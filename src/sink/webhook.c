/*
 * Sinks (see sink.h): webhook streams on libcurl's multi interface driven by the libuv loop,
 * and file streams writing on the thread pool (sink/file.h); one stream per (sink, matching
 * topic) as a reader on the hub's delivery path.
 *
 * A stream's states and their wake-ups are the scheduler's (sink/sched.h, a pure module with
 * its own random-interleaving test); this file supplies the effects and the outcomes:
 *
 *   IDLE ──hub deliver: messages owed──► (LINGER ──timer──► IDLE: deliver again) ──batch taken──►
 *   sl_sched_try: WAIT_BREG | WAIT_SLOT | WAIT_BREAKER | SENDING
 *   SENDING ──2xx / write done──► cursor acknowledged, batch dropped ──► IDLE (hub ready)
 *   SENDING ──retryable failure──► BACKOFF (full jitter / Retry-After) ──timer──► try again
 *   SENDING ──400/413/422──► half the batch again … one message left: dead letter, go on
 *   STOPPED     poison without a dead-letter topic, or the sink got 410 (disabled): stays
 *
 * While a stream holds a batch its sub is `writing`, so the hub's flush pass leaves it alone;
 * it becomes deliverable again only through sl_hub_sub_ready() when the batch is done.
 * Sockets are ours (open/close callbacks): a socket is closed only after its uv_poll is.
 */
#include "sink/sink.h"

#include "lib/budget.h"
#include "lib/log.h"
#include "lib/par.h"
#include "lib/sse.h"
#include "lib/util.h"
#include "core/hub.h"
#include "core/metrics.h"
#include "store/lossless.h"
#include "sink/batch.h"
#include "sink/breaker.h"
#include "sink/file.h"
#include "sink/sched.h"
#include "sink/policy.h"
#include "sink/sign.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define ANSWER_MAX 512
#define URL_MAX 4096
#define ORIGIN_MAX 600
/* A 2xx whose body has not finished this long after the headers counts as delivered and the
 * connection is dropped (a receiver that answers and then hangs must not cost a retry). */
#define BODY_GRACE_MS 1000
#define SWEEP_MS 1000
/* A pooled request keeps a body buffer up to this size; a larger one is freed. */
#define POOL_BODY_MAX (64 * 1024)
/* A pooled request unused this long is freed (by the sweep). */
#define POOL_IDLE_MS 30000
/* A stream that still owes messages writes its durable cursor at most this often (a caught-up
 * stream at once; see ack_flush). */
#define ACK_EVERY_MS 100
/* A file sink's batch_max_messages when the configuration gives none: its batches are bounded
 * by batch_max_bytes (a job writes up to that much in a few syscalls), not by a count made for
 * HTTP requests. */
#define FILE_BATCH_MESSAGES 16384
/* A file job's jsonl scratch buffer: envelopes are built into it on the worker and written
 * each time it fills. */
#define SCRATCH (256u << 10)
/* A stream's batch array starts this small and grows while batches need more. */
#define MSGS_MIN 64
/* Upper bounds (ms) of the request-duration histogram's buckets; +Inf follows. */
static const uint64_t dur_bounds_ms[] = {5,   10,   25,   50,   100,   250,
                                         500, 1000, 2500, 5000, 10000, 30000};
#define NDUR (sizeof(dur_bounds_ms) / sizeof(dur_bounds_ms[0]))

typedef struct sink sink_t;
typedef struct stream stream_t;

/* A request's own header lines (those that change from batch to batch), in this order. */
enum { H_CT, H_ID, H_TS, H_SIG, H_SID, H_CTL, H_N };

/* One request: a curl easy handle with its buffers. In flight it is its stream's (st->req);
 * between requests it waits in its sink's pool (sink->pool), options set, for the next
 * stream of that sink, so a request costs no easy handle, no header list and (up to
 * POOL_BODY_MAX) no body buffer. Only a request that ended cleanly (CURLE_OK) goes back; one
 * with an error, a timeout or an abandoned body is freed (req_free), as are pooled ones idle
 * for POOL_IDLE_MS and all of them at shutdown. A sink has at most max_in_flight of them. */
typedef struct req {
    CURL *easy;
    sink_t *sink;
    stream_t *st;    /* while in flight */
    sl_list_t link;  /* sink->pool, while pooled */
    uint64_t url_of; /* the stream (id) whose URL the handle has; 0: none */
    uint64_t idle_since;
    sl_bbuf_t body;
    int got_2xx;
    int refused_private;
    uint64_t started_ms;
    uint64_t headers_at;
    char answer[ANSWER_MAX];
    size_t alen;
    char retry_after[64];
    size_t ralen;
    char errbuf[CURL_ERROR_SIZE];
    /* The header list curl sends: these nodes, then the stream's fixed lines (st->hdrs). */
    struct curl_slist hn[H_N];
    char hid[160], hts[48], hsid[96];
    char hsig[24 + SL_SIGN_MAX_SECRETS * 48 + 1];
} req_t;

/* One topic of one sink: a reader (the sub) and at most one batch. Owned by its sink; freed
 * in its timer's close callback. */
struct stream {
    sl_sub_t sub;
    sink_t *sink;
    sl_topic_t *topic;
    sl_list_t link; /* sink->streams */
    sl_ss_t ss;     /* state, wait list, breaker (sink/sched.h) */
    int lingered;
    uv_timer_t timer;
    char *url;
    uint64_t id;             /* unique among the sink's streams, never 0 */
    struct curl_slist *hdrs; /* fixed header lines: sluice-topic, Expect:, the sink's */
    char origin[ORIGIN_MAX];
    size_t origin_len;
    sl_cursor_t *cursor;
    uint64_t ack_seq; /* delivered up to here, not yet acknowledged to the cursor (0: none) */
    uint64_t ack_ms;  /* when the cursor was last acknowledged */
    sl_msg_t **msgs;  /* the batch: references held until delivered */
    uint32_t nmsgs, send_n;
    size_t nbytes;     /* the batch's payload bytes */
    size_t line_max;   /* its largest sl_batch_line_max since it was last empty (a file job's
                        * scratch size; never less than any message's in it) */
    uint32_t msgs_cap; /* grows up to the sink's batch_msgs while a batch needs it */
    int gap;
    uint64_t gap_from, gap_to, gap_missed;
    unsigned attempt;
    req_t *req;
    /* type = file: the writer and the job on the thread pool (one at a time). While it runs
     * the worker reads the job, the batch's messages and the scratch; the loop changes none of
     * them until file_done. */
    sl_fwriter_t *fw;
    uv_work_t work;
    int job_rc;
    sl_fjob_t job;
    sl_bbuf_t fgap;         /* the job's gap line */
    char job_epoch[17];     /* the topic's epoch when the job was made */
    size_t job_scratch_cap; /* the job's scratch buffer's size (from the sink's spares) */
    int sent;               /* the batch went out at least once: it may not grow any more */
    /* A message read back (read_next hands each out once) that did not fit the batch: the
     * next batch starts with it (a reference held). */
    sl_msg_t *carry;
    /* A lossless topic with nothing on disk yet: the durable cursor is made with its first
     * message (make_cursor), so a sink alone never makes a topic's directory. */
    int want_cursor;
};

struct sink {
    sl_sinks_t *all;
    const sl_sink_conf_t *conf;
    sl_signer_t signer;
    char cursor_name[64];
    char ct_line[64]; /* "Content-Type: …" of the sink's format */
    sl_list_t streams;
    size_t nstreams;
    sl_ss_group_t group; /* in flight, cap, disabled */
    sl_list_t pool;      /* idle requests (req_t.link), most recently used last */
    size_t nreqs;        /* requests in flight or pooled */
    uint64_t reqs_made;  /* easy handles made (logged at stop) */
    uint32_t batch_msgs; /* messages a batch may hold (batch_max_messages, or a file default) */
    /* File sinks: scratch buffers for the jobs' jsonl (SCRATCH bytes each, at most `workers`
     * kept; a job that needs a larger one gets its own). Budgeted; freed at the end. */
    char **spare;
    size_t nspare;
    /* Counters (logged at stop; labels would be sink names, never URLs). */
    uint64_t delivered, requests_ok, requests_failed, requests_rejected, retries, dead_letters,
        gap_messages, stopped_streams;
    /* Request (or file write) durations: cumulative buckets as Prometheus wants them. */
    uint64_t dur_le[NDUR + 1], dur_count, dur_sum_ms;
};

/* A socket curl uses, with its poll. Ours (opened by on_open_socket) live as long as the
 * socket, and it is closed when curl closes the socket. Between transfers, while the
 * connection waits in curl's cache, the poll keeps waiting for reading when that is what it
 * waited for (the next transfer on the connection waits for its answer the same way, and
 * libuv makes a stop and a start two epoll_ctl calls); anything else stops it. Any other socket
 * curl watches gets one for as long as curl watches it. Freed in on_sock_closed. */
typedef struct sock {
    uv_poll_t poll;
    curl_socket_t fd;
    sl_sinks_t *all;
    int own;      /* opened by on_open_socket: only on_close_socket ends it */
    int close_fd; /* curl closed it while the poll was live: close in the close callback */
    int events;   /* what the poll waits for (UV_READABLE, UV_WRITABLE); 0: stopped */
    int watched;  /* curl watches it (between its socket callback and CURL_POLL_REMOVE) */
} sock_t;

struct sl_sinks {
    uv_loop_t *loop;
    sl_hub_t *hub;
    void (*kick)(void *); /* makes the loop run the hub's flush pass without blocking */
    void *kick_arg;
    const sl_config_t *cfg;
    CURLM *multi;
    uv_timer_t curl_timer, sweep_timer, drain_timer;
    uv_signal_t sigterm, sigint;
    sl_breg_t breg;
    sink_t *v;
    size_t n;
    sl_sched_t sched;
    sock_t **byfd;
    size_t nbyfd;
    int stopping, finished;
    uint64_t jobs;      /* file jobs on the thread pool: finish() waits for them */
    int finish_pending; /* finish() was asked for while jobs ran */
    int handles;        /* open handles of ours (streams' timers, polls, the rest) */
    uint64_t stream_ids;
};

static void try_send(stream_t *st);

/* A stream can take its next batch: the hub's next flush pass serves it. The stream is made
 * ready from curl's, the timers' and the thread pool's callbacks, outside the hub's own pass,
 * so the loop is kicked: without it, the loop could block in poll until some unrelated event
 * (the server's 250 ms sweep, when the endpoint answers faster than anything else happens)
 * while the ready stream waits. */
static void sub_ready(sl_sinks_t *s, sl_sub_t *sub)
{
    sl_hub_sub_ready(s->hub, sub, sl_now_ms());
    if (s->kick != NULL && sl_hub_pending(s->hub))
        s->kick(s->kick_arg);
}

static void on_stream_timer_closed(uv_handle_t *h);
static size_t take(stream_t *st, int fetch);
static void finish(sl_sinks_t *s);
static void make_cursor(stream_t *st);

/* ---- sockets and timers for curl ---------------------------------------------------- */

static void check_done(sl_sinks_t *s);

static void on_handle_closed(uv_handle_t *h)
{
    sl_sinks_t *s = h->data;
    s->handles--;
}

static void on_sock_closed(uv_handle_t *h)
{
    sock_t *sk = (sock_t *)h;
    sl_sinks_t *s = sk->all;
    if (sk->fd >= 0 && (size_t)sk->fd < s->nbyfd && s->byfd[sk->fd] == sk)
        s->byfd[sk->fd] = NULL;
    if (sk->close_fd)
        close(sk->fd);
    s->handles--;
    free(sk);
}

static void sock_close(sock_t *sk)
{
    if (!uv_is_closing((uv_handle_t *)&sk->poll))
        uv_close((uv_handle_t *)&sk->poll, on_sock_closed);
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Makes the poll wait for `ev` (0: stops it); nothing when it already does, since libuv's
 * uv_poll_start stops and starts the watcher again (two epoll_ctl calls) even then. */
static void poll_set(sock_t *sk, int ev)
{
    if (ev == sk->events)
        return;
    if (ev == 0)
        uv_poll_stop(&sk->poll);
    else
        uv_poll_start(&sk->poll, ev, on_poll);
    sk->events = ev;
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_t *sk = (sock_t *)h;
    sl_sinks_t *s = sk->all;
    if (!sk->watched) {
        /* An idle connection in curl's cache became readable: the endpoint closed it or sent
         * something. Not curl's business until it reuses the connection (it checks a cached
         * connection before reusing it); stop polling so a level-triggered event cannot
         * spin. */
        poll_set(sk, 0);
        return;
    }
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    int running;
    curl_multi_socket_action(s->multi, sk->fd, flags, &running);
    check_done(s);
}

/* A sock for fd, registered in byfd. Returns NULL when libuv refuses the fd. */
static sock_t *sock_new(sl_sinks_t *s, curl_socket_t fd, int own)
{
    sock_t *sk = sl_calloc(1, sizeof(*sk));
    sk->fd = fd;
    sk->all = s;
    sk->own = own;
    if (uv_poll_init_socket(s->loop, &sk->poll, fd) != 0) {
        free(sk);
        return NULL;
    }
    sk->poll.data = s;
    s->handles++;
    if ((size_t)fd >= s->nbyfd) {
        size_t n = s->nbyfd ? s->nbyfd : 64;
        while (n <= (size_t)fd)
            n *= 2;
        s->byfd = sl_realloc(s->byfd, n * sizeof(*s->byfd));
        memset(s->byfd + s->nbyfd, 0, (n - s->nbyfd) * sizeof(*s->byfd));
        s->nbyfd = n;
    }
    s->byfd[fd] = sk;
    return sk;
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    sl_sinks_t *s = userp;
    sock_t *sk = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sk != NULL) {
            curl_multi_assign(s->multi, fd, NULL);
            sk->watched = 0;
            /* Ours wait for the connection's next transfer or for its close, still waiting
             * for reading if they did (see sock_t); others are done. */
            if (!sk->own || sk->events != UV_READABLE)
                poll_set(sk, 0);
            if (!sk->own)
                sock_close(sk);
        }
        return 0;
    }
    if (sk == NULL) {
        /* A socket of ours is open (and its sock live) until on_close_socket: the fd number
         * cannot belong to anything else meanwhile. */
        sk = (size_t)fd < s->nbyfd ? s->byfd[fd] : NULL;
        if (sk == NULL || !sk->own || uv_is_closing((uv_handle_t *)&sk->poll))
            sk = sock_new(s, fd, 0);
        if (sk == NULL)
            return -1;
        curl_multi_assign(s->multi, fd, sk);
    }
    int ev = 0;
    if (what & CURL_POLL_IN)
        ev |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        ev |= UV_WRITABLE;
    sk->watched = 1;
    poll_set(sk, ev);
    return 0;
}

static void on_curl_timeout(uv_timer_t *h)
{
    sl_sinks_t *s = h->data;
    int running;
    curl_multi_socket_action(s->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(s);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    sl_sinks_t *s = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&s->curl_timer);
    else
        uv_timer_start(&s->curl_timer, on_curl_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

/* SSRF protection after DNS: the address curl is about to connect to. */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *addr)
{
    req_t *rq = clientp;
    (void)purpose;
    if (!rq->sink->conf->allow_private && sl_addr_private(&addr->addr)) {
        rq->refused_private = 1;
        return CURL_SOCKET_BAD;
    }
    curl_socket_t fd = socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
    if (fd >= 0 && sock_new(rq->sink->all, fd, 1) == NULL) {
        close(fd);
        return CURL_SOCKET_BAD;
    }
    return fd;
}

static int on_close_socket(void *clientp, curl_socket_t fd)
{
    sl_sinks_t *s = clientp;
    sock_t *sk = (size_t)fd < s->nbyfd ? s->byfd[fd] : NULL;
    if (sk != NULL) {
        /* Never close a socket under a live poll: the poll's close callback does it. */
        sk->close_fd = 1;
        if (!uv_is_closing((uv_handle_t *)&sk->poll)) {
            poll_set(sk, 0);
            sock_close(sk);
        }
        return 0;
    }
    close(fd);
    return 0;
}

/* ---- a request ---------------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    req_t *rq = ud;
    size_t len = size * n;
    size_t take = len < ANSWER_MAX - rq->alen ? len : ANSWER_MAX - rq->alen;
    memcpy(rq->answer + rq->alen, p, take);
    rq->alen += take;
    return len; /* the rest is read and dropped: only the start goes into a dead letter */
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    req_t *rq = ud;
    size_t len = size * n;
    if (len > 12 && strncasecmp(p, "retry-after:", 12) == 0) {
        size_t v = len - 12;
        if (v >= sizeof(rq->retry_after))
            v = sizeof(rq->retry_after) - 1;
        memcpy(rq->retry_after, p + 12, v);
        rq->ralen = v;
    } else if (len <= 2 && (p[0] == '\r' || p[0] == '\n')) {
        long code = 0;
        curl_easy_getinfo(rq->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200 && code <= 299) {
            rq->got_2xx = 1;
            rq->headers_at = sl_now_ms();
        }
    }
    return len;
}

static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    req_t *rq = ud;
    /* Delivered: do not wait for a body that hangs. */
    return rq->got_2xx && sl_now_ms() - rq->headers_at >= BODY_GRACE_MS;
}

static void build_body(stream_t *st, sl_bbuf_t *b)
{
    sink_t *k = st->sink;
    sl_sink_format_t fmt = (sl_sink_format_t)k->conf->format;
    sl_topic_t *t = st->topic;
    sl_batch_begin(b, fmt);
    uint32_t n = 0;
    if (st->gap) {
        sl_batch_add_gap(b, fmt == SL_FMT_RAW ? SL_FMT_NDJSON : fmt, n++, t->name, t->name_len,
                         t->epoch_hex, st->gap_from, st->gap_to, st->gap_missed);
        if (fmt == SL_FMT_RAW) {
            b->len--; /* no newline in a request of its own */
            return;
        }
    }
    for (uint32_t i = 0; i < st->send_n; i++) {
        sl_msg_t *m = st->msgs[i];
        sl_batch_add(b, fmt, n++, t->name, t->name_len, t->epoch_hex, m->seq, m->event, m->payload,
                     m->payload_len);
    }
    sl_batch_end(b, fmt);
}

/* A new request for sink k, with every option that does not change from one request to the
 * next. */
static req_t *req_new(sink_t *k)
{
    const sl_sink_conf_t *c = k->conf;
    req_t *rq = sl_bcalloc(sizeof(*rq));
    CURL *e = curl_easy_init();
    if (e == NULL) {
        /* Only an allocation can fail in there. */
        SL_ERROR("out of memory: libcurl cannot make a handle", NULL);
        abort();
    }
    rq->easy = e;
    rq->sink = k;
    sl_list_init(&rq->link);
    k->nreqs++;
    k->reqs_made++;
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, &rq->hn[0]);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    /* No proxy from the environment (http_proxy, all_proxy…): the private-address check at
     * socket open would see the proxy's address, not the endpoint's. "" also spares libcurl
     * its getenv calls on every transfer. */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_NOPROXY, "");
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)((c->timeout_ms + 999) / 1000));
    curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, 60L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, rq);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, rq);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, rq);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, rq);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, k->all);
    curl_easy_setopt(e, CURLOPT_PRIVATE, rq);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, rq->errbuf);
    return rq;
}

/* Frees a request that is neither in flight nor pooled. */
static void req_free(req_t *rq)
{
    rq->sink->nreqs--;
    curl_easy_cleanup(rq->easy);
    sl_bbuf_free(&rq->body);
    sl_bfree(rq, sizeof(*rq));
}

/* A pooled request of sink k, or a new one. Whatever the last request left is cleared here:
 * the answer, the status flags, the error buffer and the header lines (curl resets its own
 * per-transfer state, status included, when the transfer starts). */
static req_t *req_get(sink_t *k)
{
    req_t *rq;
    if (!sl_list_empty(&k->pool)) {
        rq = sl_container_of(k->pool.prev, req_t, link);
        sl_list_remove(&rq->link);
    } else {
        rq = req_new(k);
    }
    rq->got_2xx = 0;
    rq->refused_private = 0;
    rq->headers_at = 0;
    rq->alen = 0;
    rq->ralen = 0;
    rq->errbuf[0] = '\0';
    return rq;
}

/* Frees the pooled requests of k idle since before `before` (all of them with UINT64_MAX). The
 * pool's head holds the longest idle. */
static void pool_trim(sink_t *k, uint64_t before)
{
    while (!sl_list_empty(&k->pool)) {
        req_t *rq = sl_container_of(k->pool.next, req_t, link);
        if (rq->idle_since >= before)
            break;
        sl_list_remove(&rq->link);
        req_free(rq);
    }
}

/* Appends header line `line` as node *n of the request's own list. */
static void hdr_put(req_t *rq, int *n, char *line)
{
    rq->hn[*n].data = line;
    rq->hn[*n].next = NULL;
    if (*n > 0)
        rq->hn[*n - 1].next = &rq->hn[*n];
    (*n)++;
}

/* Copies the n bytes of p to d; returns the end. */
static char *put_mem(char *d, const char *p, size_t n)
{
    memcpy(d, p, n);
    return d + n;
}

/* Writes v in decimal at d (at most 20 digits); returns the end. */
static char *put_u64(char *d, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    return put_mem(d, tmp + i, sizeof(tmp) - i);
}

/* Builds the request's own header lines and returns their count. They are formatted by hand:
 * with one message a request, the four snprintf calls they took were about 4,000 instructions a
 * request (callgrind), some 4 % of the sink's whole cost per message. Every line fits its
 * buffer: an epoch is 16 hex digits, a number at most 20. */
static int put_headers(stream_t *st, req_t *rq, int raw_gap)
{
    sink_t *k = st->sink;
    sl_topic_t *t = st->topic;
    size_t elen = strnlen(t->epoch_hex, sizeof(t->epoch_hex));
    int n = 0;
    char *d = put_mem(rq->hid, "webhook-id: ", 12);
    /* The id's text starts after "webhook-id: " (12 bytes). */
    if (st->send_n > 0 && !raw_gap) {
        d = put_mem(d, "msg_", 4);
        d = put_mem(d, t->epoch_hex, elen);
        *d++ = '_';
        d = put_u64(d, st->msgs[0]->seq);
        *d++ = '_';
        d = put_u64(d, st->msgs[st->send_n - 1]->seq);
    } else {
        d = put_mem(d, "gap_", 4);
        d = put_mem(d, t->epoch_hex, elen);
        *d++ = '_';
        d = put_u64(d, st->gap_from);
        *d++ = '_';
        d = put_u64(d, st->gap_to);
    }
    *d = '\0';
    uint64_t ts = sl_wall_ms() / 1000;
    /* A raw sink's gap envelope is JSON. curl reads header lines, never changes them. */
    static char ct_gap[] = "Content-Type: application/json";
    hdr_put(rq, &n, raw_gap ? ct_gap : k->ct_line);
    hdr_put(rq, &n, rq->hid);
    *put_u64(put_mem(rq->hts, "webhook-timestamp: ", 19), ts) = '\0';
    hdr_put(rq, &n, rq->hts);
    if (k->signer.n > 0) {
        /* The value starts after "webhook-signature: " (19 bytes). */
        memcpy(rq->hsig, "webhook-signature: ", 19);
        if (sl_signer_sign(&k->signer, rq->hid + 12, ts, rq->body.p, rq->body.len, rq->hsig + 19) >
            0)
            hdr_put(rq, &n, rq->hsig);
    }
    if (st->send_n > 0 && !raw_gap) {
        d = put_mem(rq->hsid, "sluice-id: ", 11);
        d = put_mem(d, t->epoch_hex, elen);
        *d++ = '-';
        *put_u64(d, st->msgs[0]->seq) = '\0';
        hdr_put(rq, &n, rq->hsid);
    }
    static char ctl_gap[] = "sluice-control: gap";
    if (raw_gap)
        hdr_put(rq, &n, ctl_gap);
    return n;
}

static void start_request(stream_t *st)
{
    sink_t *k = st->sink;
    sl_sinks_t *s = k->all;
    const sl_sink_conf_t *c = k->conf;
    req_t *rq = req_get(k);
    rq->st = st;
    build_body(st, &rq->body);
    int raw_gap = st->gap && c->format == SL_FMT_RAW;
    int n = put_headers(st, rq, raw_gap);
    rq->hn[n - 1].next = st->hdrs;

    CURL *e = rq->easy;
    if (rq->url_of != st->id) {
        curl_easy_setopt(e, CURLOPT_URL, st->url);
        rq->url_of = st->id;
    }
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->body.p ? rq->body.p : "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body.len);
    rq->started_ms = sl_now_ms();
    st->req = rq;
    curl_multi_add_handle(s->multi, e);
}

/* Ends the stream's request (not its outcome): back to the pool when `reuse` (it ended
 * cleanly and the sinks are not stopping), freed otherwise. */
static void end_request(stream_t *st, int reuse)
{
    req_t *rq = st->req;
    sink_t *k = st->sink;
    curl_multi_remove_handle(k->all->multi, rq->easy);
    st->req = NULL;
    rq->st = NULL;
    if (!reuse || k->all->stopping) {
        req_free(rq);
        return;
    }
    if (rq->body.cap > POOL_BODY_MAX)
        sl_bbuf_free(&rq->body);
    rq->idle_since = sl_now_ms();
    sl_list_insert_tail(&k->pool, &rq->link);
}

/* ---- the stream ----------------------------------------------------------------------- */

static void release_breaker(stream_t *st)
{
    sl_sched_release(&st->sink->all->sched, &st->ss, sl_now_ms());
}

static void drop_front(stream_t *st, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        st->nbytes -= st->msgs[i]->payload_len;
        sl_msg_unref(st->msgs[i]);
    }
    memmove(st->msgs, st->msgs + n, (st->nmsgs - n) * sizeof(*st->msgs));
    st->nmsgs -= n;
    if (st->nmsgs == 0)
        st->line_max = 0;
}

/* A stream that still owes messages moves its durable cursor at most every ACK_EVERY_MS (at
 * once when it has caught up, and at shutdown; the sweep writes a move held back longer).
 * Every move is a cursor file written and synced by the log, one save in flight per topic
 * and two at a time on the housekeeping lane: a backlog drained with one move per request or
 * job spent more on them than on the deliveries. A crash in between costs a redelivery: a
 * duplicate request for a webhook (at least once), nothing for a file, whose commit index
 * skips it. File streams used 250 ms while saves could take the whole thread pool; since the
 * lane, 100 ms drained the file-sink benchmark 4 % sooner from spawn to exit (8 alternating
 * pairs), the more frequent syncs leaving less unwritten for the last one to wait for. */
/* Writes what was delivered to the durable cursor. */
static void ack_flush(stream_t *st, uint64_t now)
{
    if (st->ack_seq == 0)
        return;
    sl_ll_ack(st->topic, st->cursor, st->ack_seq);
    st->ack_seq = 0;
    st->ack_ms = now;
}

/* The front n messages of the batch are done with (delivered, or dead-lettered when !ok):
 * acknowledge and go on. A stream with more to send acknowledges at most every
 * ACK_EVERY_MS (the sweep and shutdown write what is left); otherwise at once. */
static void passed(stream_t *st, uint32_t n, int ok)
{
    sink_t *k = st->sink;
    if (n > 0) {
        uint64_t last = st->msgs[n - 1]->seq;
        if (ok)
            k->delivered += n;
        drop_front(st, n);
        if (st->cursor != NULL) {
            uint64_t now = sl_now_ms();
            int owes = st->nmsgs > 0 || st->sub.readers[0].next <= st->topic->head_seq;
            st->ack_seq = last;
            if (!owes || k->all->stopping || now - st->ack_ms >= ACK_EVERY_MS)
                ack_flush(st, now);
        }
    }
    if (st->nmsgs == 0)
        st->sent = 0;
    if (st->gap) {
        k->gap_messages += st->gap_missed;
        st->gap = 0;
    }
    st->attempt = 0;
}

static void to_idle(stream_t *st)
{
    sl_sched_idle(&st->sink->all->sched, &st->ss, sl_now_ms());
}

static void on_stream_timer(uv_timer_t *h)
{
    stream_t *st = h->data;
    sl_sched_timer(&st->sink->all->sched, &st->ss, sl_now_ms());
}

static void stop_stream(stream_t *st, const char *why)
{
    sl_sched_stop(&st->sink->all->sched, &st->ss, sl_now_ms());
    st->sink->stopped_streams++;
    SL_ERROR("sink stream stopped", "sink=%s topic=%s reason=%s", st->sink->conf->name,
             st->topic->name, why);
}

/* Publishes the poison message to the dead-letter topic. Returns 0 or a negative code. */
static int dead_letter(stream_t *st, long status, const char *answer, size_t alen)
{
    sink_t *k = st->sink;
    sl_sinks_t *s = k->all;
    const char *name = k->conf->dead_letter;
    int err;
    sl_topic_t *dt = sl_hub_topic(s->hub, name, strlen(name), SL_TOPIC_CREATE, &err);
    if (dt == NULL)
        return err;
    sl_msg_t *m = st->msgs[0];
    sl_bbuf_t b = {0};
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "{\"sluice\":\"dead_letter\",\"sink\":\"%s\",\"status\":%ld,\"attempts\":%u,"
                      "\"answer\":",
                      k->conf->name, status, st->attempt + 1);
    sl_bbuf_put(&b, head, (size_t)hl);
    /* The answer is the endpoint's bytes: keep printable ASCII only, so it is always JSON. */
    char clean[ANSWER_MAX];
    for (size_t i = 0; i < alen; i++)
        clean[i] = answer[i] >= 0x20 && answer[i] < 0x7f ? answer[i] : '?';
    sl_bbuf_reserve(&b, alen * 6 + 2);
    size_t len = b.len;
    sl_json_put_string(b.p, &len, b.cap, clean, alen);
    b.len = len;
    sl_bbuf_put(&b, ",\"message\":", 11);
    sl_batch_add(&b, SL_FMT_JSON, 0, st->topic->name, st->topic->name_len, st->topic->epoch_hex,
                 m->seq, m->event, m->payload, m->payload_len);
    sl_bbuf_put(&b, "}", 1);
    const char *payloads[1] = {b.p};
    size_t lens[1] = {b.len};
    uint64_t seq;
    int rc = b.len <= s->cfg->max_message_bytes
                 ? sl_hub_publish(s->hub, dt, NULL, payloads, lens, 1, &seq)
                 : SL_ETOOBIG;
    sl_bbuf_free(&b);
    return rc;
}

static void backoff(stream_t *st, uint64_t delay)
{
    sl_sched_backoff(&st->sink->all->sched, &st->ss, delay);
}

static void observe_duration(sink_t *k, uint64_t ms)
{
    for (size_t i = 0; i < NDUR; i++)
        if (ms <= dur_bounds_ms[i])
            k->dur_le[i]++;
    k->dur_le[NDUR]++;
    k->dur_count++;
    k->dur_sum_ms += ms;
}

static void request_done(stream_t *st, CURLcode res)
{
    req_t *rq = st->req;
    sink_t *k = st->sink;
    sl_sinks_t *s = k->all;
    const sl_sink_conf_t *c = k->conf;
    long status = 0;
    if (res == CURLE_OK || rq->got_2xx)
        curl_easy_getinfo(rq->easy, CURLINFO_RESPONSE_CODE, &status);
    sl_status_class_t cls = sl_status_class(status);
    uint64_t now = sl_now_ms();
    observe_duration(k, now - rq->started_ms);
    /* A probe that closed its breaker frees the streams that waited on it (they re-check). */
    int reopened = sl_sched_done(&s->sched, &st->ss, 1, cls != SL_STATUS_RETRY, now);
    char answer[ANSWER_MAX];
    size_t alen = rq->alen;
    memcpy(answer, rq->answer, alen);
    uint64_t ra_ms = 0;
    int has_ra = rq->ralen > 0 && sl_retry_after_parse(rq->retry_after, rq->ralen, sl_wall_ms(),
                                                       c->retry_max_ms, &ra_ms) == 0;
    if (rq->refused_private)
        SL_WARN("sink endpoint refused: private address (allow_private = false)",
                "sink=%s topic=%s", c->name, st->topic->name);
    else if (cls == SL_STATUS_RETRY)
        SL_DEBUG("sink request failed", "sink=%s topic=%s status=%ld error=%s", c->name,
                 st->topic->name, status, res != CURLE_OK ? curl_easy_strerror(res) : "-");
    /* Only a handle whose transfer ended cleanly is used again: after an error, a timeout or
     * an abandoned body (a 2xx that hung) it is freed, and curl closes its connection. */
    end_request(st, res == CURLE_OK);

    if (s->stopping) {
        /* Draining: keep what was delivered, send nothing more. */
        if (cls == SL_STATUS_OK)
            passed(st, st->send_n, 1);
        release_breaker(st);
        st->ss.state = SL_SS_IDLE;
        return;
    }
    switch (cls) {
    case SL_STATUS_OK:
        k->requests_ok++;
        passed(st, st->send_n, 1);
        if (st->nmsgs > 0) {
            /* The rest of a split batch. */
            st->send_n = st->nmsgs;
            try_send(st);
        } else {
            to_idle(st);
        }
        break;
    case SL_STATUS_RETRY:
        k->requests_failed++;
        k->retries++;
        st->attempt++;
        backoff(st, has_ra ? ra_ms
                           : sl_backoff_ms(c->retry_initial_ms, c->retry_max_ms, st->attempt,
                                           sl_random64()));
        break;
    case SL_STATUS_REJECT:
        k->requests_rejected++;
        if (st->send_n > 1) {
            st->send_n /= 2;
            try_send(st);
            break;
        }
        if (st->send_n == 0) {
            /* The gap envelope alone was refused: drop it (it was counted) and go on. */
            passed(st, 0, 1);
            to_idle(st);
            break;
        }
        if (c->dead_letter == NULL) {
            stop_stream(st, "poison message and no dead_letter topic");
            break;
        }
        if (dead_letter(st, status, answer, alen) != 0) {
            /* The dead-letter topic pushes back: try the whole thing again later. */
            st->attempt++;
            backoff(st, sl_backoff_ms(c->retry_initial_ms, c->retry_max_ms, st->attempt,
                                      sl_random64()));
            break;
        }
        k->dead_letters++;
        SL_WARN("sink message dead-lettered", "sink=%s topic=%s seq=%" PRIu64 " status=%ld",
                c->name, st->topic->name, st->msgs[0]->seq, status);
        passed(st, 1, 0);
        if (st->nmsgs > 0) {
            st->send_n = st->nmsgs;
            try_send(st);
        } else {
            to_idle(st);
        }
        break;
    case SL_STATUS_GONE:
        SL_ERROR("sink disabled: the endpoint answered 410 Gone", "sink=%s topic=%s", c->name,
                 st->topic->name);
        k->group.disabled = 1;
        stop_stream(st, "410 gone");
        break;
    }
    sl_sched_wake(&s->sched, reopened, sl_now_ms());
}

/* ---- file sinks: a write on the thread pool ---------------------------------------- */

static void file_work(uv_work_t *w)
{
    stream_t *st = w->data;
    st->job_rc = sl_fwriter_write(st->fw, &st->job);
}

/* A scratch buffer of at least `need` bytes for a job (a spare one when it is big enough). */
static char *scratch_get(sink_t *k, size_t need, size_t *cap)
{
    if (need <= SCRATCH) {
        *cap = SCRATCH;
        return k->nspare > 0 ? k->spare[--k->nspare] : sl_balloc(SCRATCH);
    }
    *cap = need;
    return sl_balloc(need);
}

static void scratch_put(sink_t *k, char *p, size_t cap)
{
    if (p == NULL)
        return;
    if (cap == SCRATCH && k->nspare < k->conf->workers) {
        k->spare[k->nspare++] = p;
        return;
    }
    sl_bfree(p, cap);
}

static void file_done(uv_work_t *w, int status)
{
    stream_t *st = w->data;
    sink_t *k = st->sink;
    sl_sinks_t *s = k->all;
    const sl_sink_conf_t *c = k->conf;
    int rc = status < 0 ? status : st->job_rc;
    scratch_put(k, st->job.scratch, st->job_scratch_cap);
    st->job.scratch = NULL;
    sl_bbuf_free(&st->fgap);
    observe_duration(k, sl_now_ms() - st->job.now_ms);
    s->jobs--;
    sl_sched_done(&s->sched, &st->ss, 0, 0, sl_now_ms());
    if (rc == 0) {
        if (st->fw->truncated_tail)
            SL_WARN("file sink: a torn record was cut off the newest file", "sink=%s topic=%s",
                    c->name, st->topic->name);
        if (st->fw->skipped > 0)
            SL_INFO("file sink: records already in the file were not written again",
                    "sink=%s topic=%s skipped=%" PRIu32, c->name, st->topic->name, st->fw->skipped);
        if (st->attempt > 0)
            SL_INFO("file sink writing again", "sink=%s topic=%s attempts=%u", c->name,
                    st->topic->name, st->attempt + 1);
        k->requests_ok++;
        passed(st, st->send_n, 1);
        if (s->stopping)
            st->ss.state = SL_SS_IDLE;
        else
            to_idle(st);
    } else if (s->stopping) {
        /* Not acknowledged: written again after a restart, never twice (the index). */
        k->requests_failed++;
        st->ss.state = SL_SS_IDLE;
    } else {
        k->requests_failed++;
        k->retries++;
        if (st->attempt == 0)
            SL_ERROR("file sink cannot write, retrying with backoff",
                     "sink=%s topic=%s op=%s error=%s", c->name, st->topic->name, st->fw->what,
                     uv_strerror(rc));
        st->attempt++;
        backoff(st,
                sl_backoff_ms(c->retry_initial_ms, c->retry_max_ms, st->attempt, sl_random64()));
    }
    if (s->stopping) {
        if (s->jobs == 0 && (s->finish_pending || s->sched.inflight == 0))
            finish(s);
        return;
    }
    sl_sched_wake(&s->sched, 0, sl_now_ms());
}

/* Queues the batch's write. The records are built on the worker from the messages (the batch
 * holds a reference to each and does not change until file_done); the loop only makes the gap
 * line and hands over a scratch buffer charged to the budget, so the budget is never touched
 * off the loop. */
static void start_write(stream_t *st)
{
    sink_t *k = st->sink;
    sl_sinks_t *s = k->all;
    const sl_sink_conf_t *c = k->conf;
    sl_topic_t *t = st->topic;
    int raw = c->format == SL_FMT_RAW;
    sl_fjob_t *j = &st->job;
    memset(j, 0, sizeof(*j));
    memcpy(st->job_epoch, t->epoch_hex, sizeof(st->job_epoch));
    st->fgap.len = 0;
    if (st->gap && !raw) {
        /* Raw files hold payloads only: a gap there is counted and logged, not written. */
        sl_batch_add_gap(&st->fgap, SL_FMT_NDJSON, 0, t->name, t->name_len, st->job_epoch,
                         st->gap_from, st->gap_to, st->gap_missed);
        j->gap = st->fgap.p;
        j->gap_len = st->fgap.len;
    }
    if (st->send_n == 0 && j->gap == NULL) {
        /* A gap alone on a raw file: nothing to write. */
        if (st->gap)
            SL_WARN("file sink: messages missed (gap)", "sink=%s topic=%s missed=%" PRIu64, c->name,
                    t->name, st->gap_missed);
        sl_sched_done(&s->sched, &st->ss, 0, 0, sl_now_ms());
        passed(st, 0, 1);
        to_idle(st);
        sl_sched_wake(&s->sched, 0, sl_now_ms());
        return;
    }
    j->msgs = st->msgs;
    j->n = st->send_n;
    j->raw = raw;
    j->topic = t->name;
    j->topic_len = t->name_len;
    j->epoch = st->job_epoch;
    j->now_ms = sl_now_ms();
    if (!raw && st->send_n > 0) {
        j->scratch = scratch_get(k, st->line_max, &st->job_scratch_cap);
        j->scratch_cap = st->job_scratch_cap;
    }
    st->work.data = st;
    s->jobs++;
    int rc = uv_queue_work(s->loop, &st->work, file_work, file_done);
    if (rc != 0)
        file_done(&st->work, rc);
}

static void check_done(sl_sinks_t *s)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(s->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        req_t *rq = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&rq);
        CURLcode res = msg->data.result;
        request_done(rq->st, res);
    }
    if (s->stopping && s->sched.inflight == 0 && s->jobs == 0)
        finish(s);
}

static void try_send(stream_t *st)
{
    st->ss.has_batch = st->send_n > 0 || st->gap;
    sl_sched_try(&st->sink->all->sched, &st->ss, sl_now_ms());
}

/* The scheduler's effects (sink/sched.h). */
static void ss_timer(sl_ss_t *ss, uint64_t delay_ms)
{
    stream_t *st = sl_container_of(ss, stream_t, ss);
    if (delay_ms > 0)
        uv_timer_start(&st->timer, on_stream_timer, delay_ms, 0);
    else
        uv_timer_stop(&st->timer);
}

static void ss_start(sl_ss_t *ss)
{
    stream_t *st = sl_container_of(ss, stream_t, ss);
    /* A batch that waited (for a slot, the registry, a breaker) before its first send takes
     * what arrived meanwhile: with many streams and few slots, batches stay full. Once sent,
     * a batch never changes (its webhook-id and body are stable across retries). */
    if (!st->sent && st->sub.readers[0].mark == SL_MARK_NONE)
        take(st, 0);
    st->sent = 1;
    if (st->sink->conf->type == SL_SINK_FILE)
        start_write(st);
    else
        start_request(st);
}

static void ss_ready(sl_ss_t *ss)
{
    stream_t *st = sl_container_of(ss, stream_t, ss);
    st->sub.writing = 0;
    sub_ready(st->sink->all, &st->sub);
}

static void ss_disabled(sl_ss_t *ss)
{
    stop_stream(sl_container_of(ss, stream_t, ss), "sink disabled");
}

static const sl_ss_ops_t ss_ops = {
    .timer = ss_timer, .start = ss_start, .ready = ss_ready, .disabled = ss_disabled};

/* Makes room for more messages in the batch (up to the sink's batch_msgs). */
static void grow_msgs(stream_t *st)
{
    uint32_t max = st->sink->batch_msgs;
    uint32_t cap = st->msgs_cap * 2 < max ? st->msgs_cap * 2 : max;
    st->msgs = sl_brealloc(st->msgs, st->msgs_cap * sizeof(*st->msgs), cap * sizeof(*st->msgs));
    st->msgs_cap = cap;
}

/* Adds what the reader has (ring, or a disk batch already read) to the batch, up to its caps;
 * with `fetch`, schedules a disk read when that is where the next message is (disk_ready
 * wakes the stream). Returns the payload bytes added. */
static size_t take(stream_t *st, int fetch)
{
    const sl_sink_conf_t *c = st->sink->conf;
    sl_reader_t *r = &st->sub.readers[0];
    /* A raw webhook request carries one message (or the gap alone); a raw file takes many. */
    uint64_t max = c->format == SL_FMT_RAW && c->type == SL_SINK_WEBHOOK ? (st->gap ? 0 : 1)
                                                                         : st->sink->batch_msgs;
    size_t bytes = st->nbytes, added = 0;
    while (st->nmsgs < max && (st->nmsgs == 0 || bytes < c->batch_max_bytes)) {
        if (r->next > st->topic->head_seq)
            break;
        sl_msg_t *m = NULL;
        int owned = 0;
        if (st->carry != NULL) {
            if (st->carry->seq >= r->next) {
                m = st->carry;
                owned = 1;
            } else {
                sl_msg_unref(st->carry); /* the cursor moved past it (a gap) */
            }
            st->carry = NULL;
        }
        if (m == NULL)
            m = r->next >= sl_topic_tail(st->topic) ? sl_topic_at(st->topic, r->next) : NULL;
        if (m == NULL && r->disk_ok && (m = sl_reader_read_next(r)) == NULL) {
            if (fetch)
                (void)sl_reader_read_fetch(r);
            break;
        }
        if (m == NULL)
            break;
        /* Ids declared lost before m: their gap goes first, in the next batch. Or m does not
         * fit the batch's bytes. Either way a read-back message, which is not handed out
         * again, is kept for the next batch. */
        if ((m->seq > r->next && sl_reader_cross(r, m->seq)) ||
            (st->nmsgs > 0 && bytes + m->payload_len > c->batch_max_bytes)) {
            if (m->seq < sl_topic_tail(st->topic)) {
                if (!owned)
                    sl_msg_ref(m);
                st->carry = m;
            } else if (owned) {
                sl_msg_unref(m);
            }
            break;
        }
        if (st->nmsgs == st->msgs_cap)
            grow_msgs(st);
        if (!owned)
            sl_msg_ref(m);
        st->msgs[st->nmsgs++] = m;
        bytes += m->payload_len;
        added += m->payload_len;
        size_t line = sl_batch_line_max(st->topic->name_len, m->event_len, m->payload_len);
        if (line > st->line_max)
            st->line_max = line;
        r->next = m->seq + 1; /* past any hole before it */
        sl_metrics.deliveries++;
    }
    st->nbytes = bytes;
    st->send_n = st->nmsgs;
    /* Read the next disk batch while this one is written: a reader behind the ring whose read
     * batch is used up fetches now rather than after the write. */
    if (fetch && r->disk_ok && r->disk_job == NULL && !r->disk_wait &&
        (r->disk == NULL || r->disk->pos >= r->disk->n) && r->next <= st->topic->head_seq &&
        sl_topic_get(st->topic, r->next) == NULL)
        (void)sl_ll_fetch(r);
    return added;
}

/* The hub's deliver: takes a batch from the cursor when the stream is idle. */
static size_t stream_deliver(sl_sub_t *sub)
{
    stream_t *st = sl_container_of(sub, stream_t, sub);
    sink_t *k = st->sink;
    sl_sinks_t *s = k->all;
    const sl_sink_conf_t *c = k->conf;
    if (s->stopping)
        return 0;
    if (st->want_cursor && st->topic->ll->on_disk)
        make_cursor(st);
    if (st->ss.state != SL_SS_IDLE || k->group.disabled)
        return 0;
    sl_reader_t *r = &sub->readers[0];
    uint64_t now = sl_now_ms();
    if (sl_hub_check_reader(s->hub, r, now) || sub->overflow) {
        /* A topic whose policy is `disconnect` cannot disconnect a sink: it is a gap. */
        sub->overflow = 0;
        uint64_t tail = sl_reader_floor(r);
        r->mark |= SL_MARK_GAP;
        r->gap_from = r->next;
        r->gap_to = tail - 1;
        r->gap_missed = tail - r->next;
        r->next = tail;
    }
    if (r->mark & (SL_MARK_GAP | SL_MARK_RESET)) {
        if (!st->gap) {
            st->gap = 1;
            st->gap_from = r->gap_from;
            st->gap_missed = 0;
        }
        st->gap_to = r->gap_to;
        st->gap_missed += r->gap_missed;
        r->mark = SL_MARK_NONE;
    }
    uint64_t owed = r->next <= st->topic->head_seq ? st->topic->head_seq - r->next + 1 : 0;
    if (owed == 0 && !st->gap)
        return 0;
    if (c->batch_linger_ms > 0 && !st->lingered && owed < k->batch_msgs &&
        !(c->format == SL_FMT_RAW && c->type == SL_SINK_WEBHOOK) && !st->gap) {
        st->lingered = 1;
        sub->writing = 1;
        sl_sched_linger(&s->sched, &st->ss, c->batch_linger_ms);
        return 0;
    }
    st->lingered = 0;
    size_t bytes = take(st, 1);
    if (st->nmsgs == 0 && !st->gap) {
        /* A read-back that queued a gap or passed holes has nothing to send yet: go again. */
        if (r->mark != SL_MARK_NONE || (!r->disk_wait && r->next <= st->topic->head_seq &&
                                        r->next >= sl_topic_tail(st->topic)))
            sub_ready(s, sub);
        return 0;
    }
    sub->writing = 1;
    st->attempt = 0;
    try_send(st);
    return bytes;
}

static void stream_disk_ready(sl_sub_t *sub)
{
    stream_t *st = sl_container_of(sub, stream_t, sub);
    if (st->sink->all->stopping)
        return;
    if (st->ss.state == SL_SS_IDLE) {
        sub_ready(st->sink->all, sub);
        return;
    }
    /* A batch read back from disk that waits for a slot (or the registry, or a breaker) and
     * was never sent keeps filling from the log, reading ahead, up to its caps: when slots are
     * scarce, every request carries a full batch. */
    if (!st->sent &&
        (st->ss.state == SL_SS_WAIT_SLOT || st->ss.state == SL_SS_WAIT_BREG ||
         st->ss.state == SL_SS_WAIT_BREAKER) &&
        sub->readers[0].mark == SL_MARK_NONE)
        take(st, 1);
}

/* Detaches a stream from its topic and closes it (freed in its timer's close callback). */
static void stream_close(stream_t *st)
{
    uv_timer_stop(&st->timer);
    if (st->carry != NULL) {
        sl_msg_unref(st->carry);
        st->carry = NULL;
    }
    release_breaker(st);
    sl_list_remove(&st->ss.wait_link);
    sl_sub_dispose(st->sink->all->hub, &st->sub);
    sl_list_remove(&st->link);
    st->sink->nstreams--;
    uv_close((uv_handle_t *)&st->timer, on_stream_timer_closed);
}

/* The hub's sweep asks whether the stream lets go of its idle topic (see sl_sub_ops_t). It
 * does when it holds nothing and is owed nothing and has no durable cursor (a cursor keeps a
 * lossless topic on disk anyway); the stream is closed, and the hub's on_topic makes a new one
 * if the topic is created again. */
static int stream_release(sl_sub_t *sub, sl_reader_t *r, int go)
{
    stream_t *st = sl_container_of(sub, stream_t, sub);
    if (st->sink->all->stopping || st->ss.state != SL_SS_IDLE || sub->writing || st->nmsgs > 0 ||
        st->carry != NULL || st->gap || st->cursor != NULL || r->mark != SL_MARK_NONE ||
        r->next <= st->topic->head_seq || r->disk != NULL || r->disk_job != NULL)
        return 0;
    if (go) {
        SL_INFO("sink stream closed: its topic is idle", "sink=%s topic=%s", st->sink->conf->name,
                st->topic->name);
        stream_close(st);
    }
    return 1;
}

/* Frameless: a sink builds its own envelopes from payload and event, never an SSE frame. */
static const sl_sub_ops_t stream_ops = {.deliver = stream_deliver,
                                        .disk_ready = stream_disk_ready,
                                        .release = stream_release,
                                        .frameless = 1};

static void use_cursor(stream_t *st, sl_cursor_t *cu)
{
    st->cursor = cu;
    cu->yields = st->sink->conf->skip_on_backlog;
    st->sub.readers[0].cursor = cu;
    sl_ll_cursor_use(cu, 1);
}

/* The first message of a lossless topic the stream has followed since before it had one: the
 * durable cursor starts where the reader is (nothing of the log was delivered yet). */
static void make_cursor(stream_t *st)
{
    sl_topic_t *t = st->topic;
    const char *name = st->sink->cursor_name;
    sl_cursor_t *cu = sl_ll_cursor(t, name, strlen(name), 0);
    st->want_cursor = 0;
    if (cu == NULL) {
        cu = sl_ll_cursor(t, name, strlen(name), 1);
        cu->checkpoint = st->sub.readers[0].next - 1;
        sl_ll_cursor_created(t);
    }
    use_cursor(st, cu);
}

/* curl_slist_append, aborting when it cannot allocate (it copies `line`). */
static struct curl_slist *hdr_append(struct curl_slist *l, const char *line)
{
    struct curl_slist *r = curl_slist_append(l, line);
    if (r == NULL) {
        SL_ERROR("out of memory: libcurl cannot make a header list", NULL);
        abort();
    }
    return r;
}

static void stream_new(sink_t *k, sl_topic_t *t)
{
    sl_sinks_t *s = k->all;
    const sl_sink_conf_t *c = k->conf;
    char url[URL_MAX];
    if (c->type == SL_SINK_WEBHOOK &&
        sl_url_expand(c->url, t->name, t->name_len, c->name, url, sizeof(url)) < 0) {
        SL_ERROR("sink url too long for topic", "sink=%s topic=%s", c->name, t->name);
        return;
    }
    stream_t *st = sl_bcalloc(sizeof(*st));
    st->sink = k;
    st->topic = t;
    st->sub.ops = &stream_ops;
    if (c->type == SL_SINK_WEBHOOK) {
        st->url = sl_strdup(url);
        int ol = sl_url_origin(url, st->origin, sizeof(st->origin));
        st->origin_len = ol > 0 ? (size_t)ol : 0;
        st->id = ++s->stream_ids;
        /* The header lines that never change for this stream, after each request's own. */
        char line[1024];
        snprintf(line, sizeof(line), "sluice-topic: %s", t->name);
        st->hdrs = hdr_append(NULL, line);
        st->hdrs = hdr_append(st->hdrs, "Expect:");
        for (size_t i = 0; i < c->nheaders; i++)
            st->hdrs = hdr_append(st->hdrs, c->headers[i]);
    } else {
        st->fw = sl_fwriter_new(c->directory, t->name, t->name_len,
                                c->format == SL_FMT_RAW ? "raw" : "jsonl", c->fsync_mode,
                                c->rotate_bytes, c->rotate_interval_ms);
    }
    st->msgs_cap = k->batch_msgs < MSGS_MIN ? k->batch_msgs : MSGS_MIN;
    st->msgs = sl_balloc(st->msgs_cap * sizeof(*st->msgs));
    sl_ss_init(&st->ss, &k->group, st->origin, st->origin_len);
    sl_start_t start = {.kind = c->start_oldest ? SL_START_OLDEST : SL_START_NEW};
    sl_cursor_t *cu = NULL;
    if (t->ll != NULL && !t->ll->on_disk) {
        /* Nothing to keep yet: read like a subscriber until the first message (publishing it
         * makes the log's directory), then make the cursor from where the reader is. */
        start.disk = 1;
        st->want_cursor = 1;
    } else if (t->ll != NULL) {
        size_t nl = strlen(k->cursor_name);
        cu = sl_ll_cursor(t, k->cursor_name, nl, 0);
        if (cu == NULL) {
            cu = sl_ll_cursor(t, k->cursor_name, nl, 1);
            cu->checkpoint = c->start_oldest ? sl_ll_floor(t) - 1 : t->head_seq;
            sl_ll_cursor_created(t);
        }
        start.kind = SL_START_SINCE;
        start.epoch = t->epoch;
        start.seq = cu->checkpoint;
        start.disk = 1;
    }
    uv_timer_init(s->loop, &st->timer);
    st->timer.data = st;
    s->handles++;
    sl_list_insert_tail(&k->streams, &st->link);
    k->nstreams++;
    sl_sub_init(s->hub, &st->sub, &t, &start, 1);
    if (cu != NULL)
        use_cursor(st, cu);
    SL_INFO("sink stream started", "sink=%s topic=%s", c->name, t->name);
}

static void on_topic(void *arg, sl_topic_t *t)
{
    sl_sinks_t *s = arg;
    if (s->stopping)
        return;
    for (size_t i = 0; i < s->n; i++) {
        sink_t *k = &s->v[i];
        if (sl_sinkconf_matches(k->conf, t->name))
            stream_new(k, t);
    }
}

/* ---- metrics -------------------------------------------------------------------------- */

/* A stream's backlog: messages not yet acknowledged (held, or owed from the ring or the disk),
 * and the payload bytes of those in memory (held or in the ring; the disk's are not read). */
static void stream_backlog(const stream_t *st, uint64_t *msgs, uint64_t *bytes)
{
    const sl_reader_t *r = &st->sub.readers[0];
    *msgs = st->nmsgs;
    *bytes = st->nbytes;
    /* Owed ids (holes included: a topic fed by Kafka counts offsets), and the bytes of those
     * still in the ring. */
    const sl_topic_t *t = st->topic;
    if (r->next <= t->head_seq)
        *msgs += t->head_seq - r->next + 1;
    for (size_t i = sl_topic_index(t, r->next); i < t->count; i++)
        *bytes += sl_topic_nth(t, i)->payload_len;
}

/* The stream's oldest unacknowledged message's age (ms), 0 when none is known. */
static uint64_t stream_oldest_ms(const stream_t *st, uint64_t now)
{
    const sl_reader_t *r = &st->sub.readers[0];
    const sl_msg_t *m = NULL;
    if (st->nmsgs > 0)
        m = st->msgs[0];
    else if (r->next <= st->topic->head_seq)
        m = r->next >= sl_topic_tail(st->topic) ? sl_topic_at(st->topic, r->next) : NULL;
    return m != NULL && now > m->ts_ms ? now - m->ts_ms : 0;
}

/* GET /sinks: every sink and every stream, by name (never a URL). */
static char *render_json(void *arg, size_t *len)
{
    sl_sinks_t *s = arg;
    sl_bbuf_t b = {0};
    char line[512];
    uint64_t now = sl_now_ms();
#define PUT(...)                                                                                   \
    do {                                                                                           \
        int n_ = snprintf(line, sizeof(line), __VA_ARGS__);                                        \
        if (n_ > 0)                                                                                \
            sl_bbuf_put(&b, line, (size_t)n_ < sizeof(line) ? (size_t)n_ : sizeof(line) - 1);      \
    } while (0)
    PUT("{\"sinks\":[");
    for (size_t i = 0; i < s->n; i++) {
        sink_t *k = &s->v[i];
        PUT("%s{\"name\":\"%s\",\"type\":\"%s\",\"state\":\"%s\",\"in_flight\":%" PRIu64
            ",\"delivered\":%" PRIu64 ",\"streams\":[",
            i ? "," : "", k->conf->name, k->conf->type == SL_SINK_FILE ? "file" : "webhook",
            k->group.disabled ? "disabled"
            : s->stopping     ? "stopping"
                              : "running",
            k->group.inflight, k->delivered);
        int first = 1;
        sl_list_t *it;
        sl_list_each(it, &k->streams)
        {
            stream_t *st = sl_container_of(it, stream_t, link);
            uint64_t msgs, bytes;
            stream_backlog(st, &msgs, &bytes);
            const char *brk = "null";
            if (st->ss.brk != NULL)
                brk = sl_breaker_state_name(st->ss.brk->b.state);
            else if (k->conf->type == SL_SINK_WEBHOOK) {
                const sl_breg_entry_t *e = sl_breg_find(&s->breg, st->origin, st->origin_len);
                brk = e != NULL ? sl_breaker_state_name(e->b.state) : "none";
            }
            sl_bbuf_put(&b, first ? "" : ",", first ? 0 : 1);
            first = 0;
            PUT("{\"topic\":\"%s\",\"state\":\"%s\",\"breaker\":%s%s%s,"
                "\"backlog_messages\":%" PRIu64 ",\"backlog_bytes\":%" PRIu64
                ",\"oldest_unacked_seconds\":%.3f,\"in_flight\":%d,\"attempts\":%u}",
                st->topic->name, sl_ss_state_name(st->ss.state), strcmp(brk, "null") ? "\"" : "",
                brk, strcmp(brk, "null") ? "\"" : "", msgs, bytes,
                (double)stream_oldest_ms(st, now) / 1000.0, st->ss.state == SL_SS_SENDING,
                st->attempt);
        }
        PUT("]}");
    }
    PUT("]}\n");
#undef PUT
    char *out = sl_malloc(b.len + 1);
    memcpy(out, b.p, b.len);
    *len = b.len;
    sl_bbuf_free(&b);
    return out;
}

/* The age of a sink's oldest unacknowledged message: a held batch's first message, else the
 * next one owed if the ring still has it (a message only on disk counts once read back). */
static uint64_t oldest_unacked_ms(sink_t *k)
{
    uint64_t now = sl_now_ms(), oldest = 0;
    sl_list_t *it;
    sl_list_each(it, &k->streams)
    {
        uint64_t age = stream_oldest_ms(sl_container_of(it, stream_t, link), now);
        if (age > oldest)
            oldest = age;
    }
    return oldest;
}

/* The sinks' series for /metrics. Labels are sink names (never URLs) and fixed words. */
static char *render_metrics(void *arg, size_t *len)
{
    sl_sinks_t *s = arg;
    sl_bbuf_t b = {0};
    char line[256];
#define LINE(...)                                                                                  \
    do {                                                                                           \
        int n_ = snprintf(line, sizeof(line), __VA_ARGS__);                                        \
        if (n_ > 0)                                                                                \
            sl_bbuf_put(&b, line, (size_t)n_ < sizeof(line) ? (size_t)n_ : sizeof(line) - 1);      \
    } while (0)
    static const struct {
        const char *name, *type, *help;
    } series[] = {
        {"sluice_sink_delivered_messages_total", "counter", "Messages acknowledged by a 2xx."},
        {"sluice_sink_requests_total", "counter", "Sink requests by outcome."},
        {"sluice_sink_retries_total", "counter", "Requests retried after a failure."},
        {"sluice_sink_in_flight", "gauge", "Sink requests in flight."},
        {"sluice_sink_backlog_messages", "gauge", "Messages not yet acknowledged."},
        {"sluice_sink_backlog_bytes", "gauge", "Payload bytes not yet acknowledged, in memory."},
        {"sluice_sink_dead_letters_total", "counter", "Messages sent to the dead-letter topic."},
        {"sluice_sink_gap_messages_total", "counter", "Messages a lossy stream missed."},
        {"sluice_sink_streams_stopped", "gauge", "Streams stopped (poison, 410)."},
        {"sluice_sink_disabled", "gauge", "1 when the sink got 410 Gone."},
        {"sluice_sink_oldest_unacked_seconds", "gauge",
         "Age of the oldest message not yet acknowledged (held or in the ring)."},
        {"sluice_sink_request_duration_seconds", "histogram",
         "Duration of sink requests (webhook) and writes (file), whatever their outcome."},
    };
    for (size_t i = 0; i < sizeof(series) / sizeof(series[0]); i++) {
        LINE("# HELP %s %s\n# TYPE %s %s\n", series[i].name, series[i].help, series[i].name,
             series[i].type);
        for (size_t j = 0; j < s->n; j++) {
            sink_t *k = &s->v[j];
            const char *nm = k->conf->name;
            switch (i) {
            case 0:
                LINE("%s{sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm, k->delivered);
                break;
            case 1:
                LINE("%s{outcome=\"ok\",sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm,
                     k->requests_ok);
                LINE("%s{outcome=\"failed\",sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm,
                     k->requests_failed);
                LINE("%s{outcome=\"rejected\",sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm,
                     k->requests_rejected);
                break;
            case 2:
                LINE("%s{sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm, k->retries);
                break;
            case 3:
                LINE("%s{sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm, k->group.inflight);
                break;
            case 4: {
                uint64_t backlog = 0;
                sl_list_t *it;
                sl_list_each(it, &k->streams)
                {
                    stream_t *st = sl_container_of(it, stream_t, link);
                    const sl_reader_t *r = &st->sub.readers[0];
                    backlog += st->nmsgs;
                    if (r->next <= st->topic->head_seq)
                        backlog += st->topic->head_seq - r->next + 1;
                }
                LINE("%s{sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm, backlog);
                break;
            }
            case 5: {
                uint64_t bytes = 0;
                sl_list_t *it;
                sl_list_each(it, &k->streams)
                {
                    uint64_t sm, sb;
                    stream_backlog(sl_container_of(it, stream_t, link), &sm, &sb);
                    bytes += sb;
                }
                LINE("%s{sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm, bytes);
                break;
            }
            case 6:
                LINE("%s{reason=\"rejected\",sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm,
                     k->dead_letters);
                break;
            case 7:
                LINE("%s{sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm, k->gap_messages);
                break;
            case 8:
                LINE("%s{sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm, k->stopped_streams);
                break;
            case 9:
                LINE("%s{sink=\"%s\"} %d\n", series[i].name, nm, k->group.disabled);
                break;
            case 10:
                LINE("%s{sink=\"%s\"} %.3f\n", series[i].name, nm,
                     (double)oldest_unacked_ms(k) / 1000.0);
                break;
            case 11:
                for (size_t d = 0; d < NDUR; d++)
                    LINE("%s_bucket{le=\"%.3f\",sink=\"%s\"} %" PRIu64 "\n", series[i].name,
                         (double)dur_bounds_ms[d] / 1000.0, nm, k->dur_le[d]);
                LINE("%s_bucket{le=\"+Inf\",sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm,
                     k->dur_le[NDUR]);
                LINE("%s_sum{sink=\"%s\"} %.3f\n", series[i].name, nm,
                     (double)k->dur_sum_ms / 1000.0);
                LINE("%s_count{sink=\"%s\"} %" PRIu64 "\n", series[i].name, nm, k->dur_count);
                break;
            }
        }
    }
    size_t by[3];
    sl_breg_count(&s->breg, by);
    LINE("# HELP sluice_sink_breakers Circuit breakers in the registry, by state.\n"
         "# TYPE sluice_sink_breakers gauge\n");
    for (int i = 0; i < 3; i++)
        LINE("sluice_sink_breakers{state=\"%s\"} %zu\n",
             sl_breaker_state_name((sl_breaker_state_t)i), by[i]);
    LINE("# HELP sluice_sink_breaker_evictions_total Breakers evicted, by reason.\n"
         "# TYPE sluice_sink_breaker_evictions_total counter\n"
         "sluice_sink_breaker_evictions_total{reason=\"lru\"} %" PRIu64 "\n"
         "sluice_sink_breaker_evictions_total{reason=\"ttl\"} %" PRIu64 "\n",
         s->breg.evictions, s->breg.ttl_evictions);
    LINE("# HELP sluice_sink_breaker_registry_full_total Breakers refused: every entry busy.\n"
         "# TYPE sluice_sink_breaker_registry_full_total counter\n"
         "sluice_sink_breaker_registry_full_total %" PRIu64 "\n",
         s->breg.full);
#undef LINE
    /* The block is handed over in plain malloc memory (the caller frees it with free()). */
    char *out = sl_malloc(b.len + 1);
    memcpy(out, b.p, b.len);
    *len = b.len;
    sl_bbuf_free(&b);
    return out;
}

/* ---- start, stop ------------------------------------------------------------------------ */

static void on_sweep(uv_timer_t *h)
{
    sl_sinks_t *s = h->data;
    uint64_t now = sl_now_ms();
    sl_sched_sweep(&s->sched, now);
    for (size_t i = 0; i < s->n; i++) {
        sink_t *k = &s->v[i];
        if (now > POOL_IDLE_MS)
            pool_trim(k, now - POOL_IDLE_MS);
        sl_list_t *it;
        sl_list_each(it, &k->streams)
        {
            stream_t *st = sl_container_of(it, stream_t, link);
            /* Acknowledgements a busy stream held back, if it has not passed more since. */
            if (st->ack_seq != 0 && now - st->ack_ms >= ACK_EVERY_MS)
                ack_flush(st, now);
            /* A batch array grown by a backlog goes back to its small size once idle. */
            if (st->msgs_cap > MSGS_MIN && st->nmsgs == 0 && st->ss.state == SL_SS_IDLE &&
                !st->sub.writing) {
                st->msgs = sl_brealloc(st->msgs, st->msgs_cap * sizeof(*st->msgs),
                                       MSGS_MIN * sizeof(*st->msgs));
                st->msgs_cap = MSGS_MIN;
            }
        }
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    sl_sinks_t *s = h->data;
    (void)signum;
    /* A second signal cancels what is still in flight. */
    sl_sinks_stop(s, s->stopping);
}

static void on_drain_deadline(uv_timer_t *h)
{
    sl_sinks_t *s = h->data;
    SL_INFO("sink drain deadline reached, cancelling", "in_flight=%" PRIu64, s->sched.inflight);
    finish(s);
}

/* Closing a file writer may fsync (fsync = batch or rotate): while the loop runs (a stream
 * whose topic was freed) that is done on the thread pool, counted as a job. */
typedef struct close_job {
    uv_work_t work;
    sl_sinks_t *all;
    sl_fwriter_t *fw;
} close_job_t;

static void close_work(uv_work_t *w)
{
    close_job_t *j = w->data;
    sl_fwriter_free(j->fw);
}

static void close_done(uv_work_t *w, int status)
{
    close_job_t *j = w->data;
    sl_sinks_t *s = j->all;
    (void)status;
    free(j);
    s->jobs--;
    if (s->stopping && s->jobs == 0 && (s->finish_pending || s->sched.inflight == 0))
        finish(s);
}

/* Threads closing the file writers at shutdown (see finish). */
#define FW_CLOSE_THREADS 8

static void close_fw(void *arg, size_t i)
{
    sl_fwriter_free(((sl_fwriter_t **)arg)[i]);
}

static void on_stream_timer_closed(uv_handle_t *h)
{
    stream_t *st = h->data;
    sl_sinks_t *s = st->sink->all;
    s->handles--;
    free(st->url);
    curl_slist_free_all(st->hdrs);
    if (st->fw != NULL && !s->finished) {
        close_job_t *j = sl_calloc(1, sizeof(*j));
        j->work.data = j;
        j->all = s;
        j->fw = st->fw;
        s->jobs++;
        if (uv_queue_work(s->loop, &j->work, close_work, close_done) != 0) {
            s->jobs--;
            free(j);
            sl_fwriter_free(st->fw);
        }
    } else if (st->fw != NULL) {
        /* A stream closed just before shutdown whose close ends after it. */
        sl_fwriter_free(st->fw);
    }
    sl_bfree(st->msgs, st->msgs_cap * sizeof(*st->msgs));
    sl_bfree(st, sizeof(*st));
}

/* Cancels what is in flight (nothing acknowledged: sent again after a restart), detaches every
 * stream and closes every handle. */
static void finish(sl_sinks_t *s)
{
    if (s->finished)
        return;
    if (s->jobs > 0) {
        /* A write on the thread pool cannot be cancelled: the last one to end finishes. */
        s->finish_pending = 1;
        return;
    }
    s->finished = 1;
    /* The file writers close here, side by side: under fsync = batch or rotate each ends with
     * a sync that waits for the device (one after another, a wait each). */
    size_t nfw = 0;
    for (size_t i = 0; i < s->n; i++) {
        sl_list_t *it;
        sl_list_each(it, &s->v[i].streams)
        {
            nfw += sl_container_of(it, stream_t, link)->fw != NULL;
        }
    }
    sl_fwriter_t **fws = sl_malloc((nfw ? nfw : 1) * sizeof(*fws));
    nfw = 0;
    for (size_t i = 0; i < s->n; i++) {
        sink_t *k = &s->v[i];
        sl_list_t *it, *tmp;
        sl_list_each_safe(it, tmp, &k->streams)
        {
            stream_t *st = sl_container_of(it, stream_t, link);
            if (st->fw != NULL) {
                fws[nfw++] = st->fw;
                st->fw = NULL;
            }
            if (st->req != NULL)
                end_request(st, 0);
            ack_flush(st, sl_now_ms());
            release_breaker(st);
            sl_list_remove(&st->ss.wait_link);
            drop_front(st, st->nmsgs);
            sl_sub_dispose(s->hub, &st->sub);
            sl_list_remove(&st->link);
            uv_close((uv_handle_t *)&st->timer, on_stream_timer_closed);
        }
        SL_INFO("sink stopped",
                "sink=%s delivered=%" PRIu64 " requests_ok=%" PRIu64 " failed=%" PRIu64
                " rejected=%" PRIu64 " dead_letters=%" PRIu64 " gap_messages=%" PRIu64
                " handles_made=%" PRIu64,
                k->conf->name, k->delivered, k->requests_ok, k->requests_failed,
                k->requests_rejected, k->dead_letters, k->gap_messages, k->reqs_made);
    }
    sl_par_run(nfw, FW_CLOSE_THREADS, close_fw, fws);
    free(fws);
    if (s->hub->on_topic_arg == s)
        s->hub->on_topic = NULL;
    sl_metrics_set_extra(NULL, NULL);
    sl_metrics_set_sinks_json(NULL, NULL);
    for (size_t i = 0; i < s->n; i++)
        pool_trim(&s->v[i], UINT64_MAX);
    curl_multi_cleanup(s->multi);
    s->multi = NULL;
    for (size_t i = 0; i < s->nbyfd; i++)
        if (s->byfd[i] != NULL)
            sock_close(s->byfd[i]);
    uv_close((uv_handle_t *)&s->curl_timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->sweep_timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->drain_timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->sigterm, on_handle_closed);
    uv_close((uv_handle_t *)&s->sigint, on_handle_closed);
}

void sl_sinks_stop(sl_sinks_t *s, int now)
{
    if (s == NULL || s->finished)
        return;
    if (!s->stopping) {
        s->stopping = 1;
        s->sched.stopping = 1;
        SL_INFO("sinks draining", "in_flight=%" PRIu64, s->sched.inflight);
        for (size_t i = 0; i < s->n; i++) {
            sl_list_t *it;
            sl_list_each(it, &s->v[i].streams)
            {
                stream_t *st = sl_container_of(it, stream_t, link);
                uv_timer_stop(&st->timer);
            }
        }
        uv_timer_stop(&s->sweep_timer);
    }
    if (now || (s->sched.inflight == 0 && s->jobs == 0)) {
        finish(s);
        return;
    }
    uv_timer_start(&s->drain_timer, on_drain_deadline, s->cfg->shutdown_drain_ms, 0);
}

static int load_secrets(sink_t *k)
{
    const char *path = k->conf->signing_secret_file;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        SL_ERROR("cannot read signing_secret_file", "sink=%s path=%s error=%s", k->conf->name, path,
                 strerror(errno));
        return -EINVAL;
    }
    char buf[4096];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    int bad = 0;
    int rc = sl_signer_parse(&k->signer, buf, n, &bad);
    if (rc <= 0) {
        SL_ERROR("bad signing secret", "sink=%s path=%s line=%d", k->conf->name, path, bad);
        return -EINVAL;
    }
    return 0;
}

sl_sinks_t *sl_sinks_start(uv_loop_t *loop, sl_hub_t *hub, const sl_config_t *cfg,
                           void (*kick)(void *), void *kick_arg, int *err)
{
    *err = 0;
    const sl_sinks_conf_t *sc = &cfg->sinks;
    if (sc->n == 0)
        return NULL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        SL_ERROR("libcurl failed to initialise", NULL);
        *err = -EINVAL;
        return NULL;
    }
    sl_sinks_t *s = sl_calloc(1, sizeof(*s));
    s->loop = loop;
    s->hub = hub;
    s->kick = kick;
    s->kick_arg = kick_arg;
    s->cfg = cfg;
    s->n = sc->n;
    s->v = sl_calloc(s->n, sizeof(*s->v));
    for (size_t i = 0; i < s->n; i++) {
        sink_t *k = &s->v[i];
        k->all = s;
        k->conf = &sc->v[i];
        sl_list_init(&k->streams);
        sl_list_init(&k->pool);
        snprintf(k->cursor_name, sizeof(k->cursor_name), "sink.%s", k->conf->name);
        snprintf(k->ct_line, sizeof(k->ct_line), "Content-Type: %s",
                 sl_batch_content_type((sl_sink_format_t)k->conf->format));
        k->group.no_breaker = k->conf->type == SL_SINK_FILE;
        k->batch_msgs = (uint32_t)k->conf->batch_max_messages;
        if (k->conf->type == SL_SINK_FILE) {
            if (!k->conf->batch_max_messages_set)
                k->batch_msgs = FILE_BATCH_MESSAGES;
            k->spare = sl_calloc(k->conf->workers, sizeof(*k->spare));
        }
        k->group.cap = k->group.no_breaker ? k->conf->workers : k->conf->max_in_flight;
        if (k->conf->signing_secret_file != NULL && load_secrets(k) != 0)
            *err = -EINVAL;
        else if (k->signer.n > 0 && sl_signer_prepare(&k->signer) != 0)
            SL_WARN("cannot prepare the signing keys, signing without them", "sink=%s",
                    k->conf->name);
    }
    if (*err != 0) {
        for (size_t i = 0; i < s->n; i++)
            sl_signer_dispose(&s->v[i].signer);
        free(s->v);
        free(s);
        curl_global_cleanup();
        return NULL;
    }
    /* One breaker setting for the registry: the strictest of the sinks (endpoints are shared
     * by origin, whichever sink reaches them). */
    sl_breaker_conf_t bc = {.failures = UINT32_MAX, .open_ms = 0, .open_max_ms = 0};
    for (size_t i = 0; i < s->n; i++) {
        const sl_sink_conf_t *c = s->v[i].conf;
        if (c->breaker_failures < bc.failures)
            bc.failures = (uint32_t)c->breaker_failures;
        if (c->breaker_open_ms > bc.open_ms)
            bc.open_ms = c->breaker_open_ms;
        if (c->breaker_open_max_ms > bc.open_max_ms)
            bc.open_max_ms = c->breaker_open_max_ms;
        if (c->timeout_ms + c->connect_timeout_ms > bc.probe_timeout)
            bc.probe_timeout = c->timeout_ms + c->connect_timeout_ms;
    }
    sl_breg_init(&s->breg, sc->breaker_registry_max, sc->breaker_idle_ttl_ms, &bc);
    sl_sched_init(&s->sched, &s->breg, &ss_ops, sc->max_in_flight, sc->max_host_connections);
    s->multi = curl_multi_init();
    curl_multi_setopt(s->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(s->multi, CURLMOPT_SOCKETDATA, s);
    curl_multi_setopt(s->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(s->multi, CURLMOPT_TIMERDATA, s);
    curl_multi_setopt(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)sc->max_host_connections);
    curl_multi_setopt(s->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)sc->max_in_flight);
    /* The cache of idle connections: by default four per easy handle attached, which is few
     * when handles are detached as soon as their transfer ends, and connections were closed
     * and opened again under a steady load. */
    curl_multi_setopt(s->multi, CURLMOPT_MAXCONNECTS, (long)sc->max_in_flight);
    uv_timer_init(loop, &s->curl_timer);
    uv_timer_init(loop, &s->sweep_timer);
    uv_timer_init(loop, &s->drain_timer);
    uv_signal_init(loop, &s->sigterm);
    uv_signal_init(loop, &s->sigint);
    s->curl_timer.data = s->sweep_timer.data = s->drain_timer.data = s;
    s->sigterm.data = s->sigint.data = s;
    s->handles += 5;
    uv_timer_start(&s->sweep_timer, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    /* Topics that exist now (recovered lossless logs), then every topic created later. */
    hub->on_topic = on_topic;
    hub->on_topic_arg = s;
    sl_metrics_set_extra(render_metrics, s);
    sl_metrics_set_sinks_json(render_json, s);
    sl_list_t *it;
    sl_list_each(it, &hub->topics)
    {
        on_topic(s, sl_container_of(it, sl_topic_t, all_link));
    }
    for (size_t i = 0; i < s->n; i++)
        SL_INFO("sink started", "sink=%s streams=%zu", s->v[i].conf->name, s->v[i].nstreams);
    return s;
}

void sl_sinks_free(sl_sinks_t *s)
{
    if (s == NULL)
        return;
    sl_breg_dispose(&s->breg);
    for (size_t i = 0; i < s->n; i++) {
        sink_t *k = &s->v[i];
        sl_signer_dispose(&k->signer);
        while (k->nspare > 0)
            sl_bfree(k->spare[--k->nspare], SCRATCH);
        free(k->spare);
    }
    free(s->byfd);
    free(s->v);
    free(s);
    curl_global_cleanup();
}
