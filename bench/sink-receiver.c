/*
 * sluice-sinkrecv: a fast local webhook receiver for bench/sinks.py, and the sequential
 * keep-alive loop its figures are compared with. One thread, epoll, llhttp.
 *
 *   sluice-sinkrecv [--port N] [--latency]
 *       Answers every request `200` with an empty body on a kept-alive connection. Counts
 *       requests, body bytes and messages (the lines of an ndjson body; a body without a
 *       newline, format = raw, is one message). With --latency, every line's `"data":"<ns>"`
 *       (a wall-clock send time in nanoseconds, as bench/sinks.py publishes) gives a
 *       publish-to-receiver latency. `GET /stats` answers the counters as one line of
 *       key=value pairs (nothing else is counted for it), with the CLOCK_MONOTONIC times (ns)
 *       of the first and the last counted message, so a drain is timed by its deliveries and
 *       not by how often it is polled; `GET /reset` zeroes counters and times. SIGTERM
 *       prints the stats line and exits.
 *       Prints `port=N` once listening (N is ephemeral unless --port is given).
 *
 *   sluice-sinkrecv --loop --port N [--seconds S] [--size B]
 *       A sequential keep-alive loop of single POSTs (B bytes of body) to 127.0.0.1:N for S
 *       seconds; prints `requests=… seconds=… cpu_seconds=… requests_per_s=…
 *       requests_per_cpu_s=…`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define URL_CAP 64
/* With --latency, a body is kept (up to this much) so that lines split across reads parse. */
#define BODY_CAP (8 << 20)
#define LAT_CAP (4 << 20)
#define OUT_CAP 4096

typedef struct conn {
    int fd;
    llhttp_t parser;
    char url[URL_CAP];
    size_t url_len;
    uint64_t body_len, body_nl;
    char *body; /* --latency only */
    size_t blen;
    char out[OUT_CAP];
    size_t olen;
} conn_t;

static uint64_t n_requests, n_messages, n_bytes;
static uint64_t first_ns, last_ns; /* CLOCK_MONOTONIC of the first and last counted message */
static double *lat_ms;
static size_t n_lat;
static int opt_latency;
static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static uint64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile (p in 0..100) of the sorted latencies. */
static double pct(double p)
{
    if (n_lat == 0)
        return 0;
    size_t k = (size_t)((p / 100.0) * (double)n_lat + 0.999999);
    if (k < 1)
        k = 1;
    if (k > n_lat)
        k = n_lat;
    return lat_ms[k - 1];
}

static int stats_line(char *buf, size_t cap)
{
    if (n_lat > 0)
        qsort(lat_ms, n_lat, sizeof(*lat_ms), cmp_double);
    return snprintf(buf, cap,
                    "requests=%llu messages=%llu bytes=%llu latency_n=%zu latency_p50_ms=%.3f "
                    "latency_p99_ms=%.3f latency_max_ms=%.3f first_ns=%llu last_ns=%llu\n",
                    (unsigned long long)n_requests, (unsigned long long)n_messages,
                    (unsigned long long)n_bytes, n_lat, pct(50), pct(99), pct(100),
                    (unsigned long long)first_ns, (unsigned long long)last_ns);
}

/* Latencies from the lines of one body: `"data":` followed by a send time in ns. */
static void body_latencies(const char *p, size_t len)
{
    uint64_t now = wall_ns();
    const char *end = p + len;
    while (p < end && n_lat < LAT_CAP) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *d = memmem(p, (size_t)(le - p), "\"data\":", 7);
        if (d != NULL) {
            d += 7;
            if (d < le && *d == '"')
                d++; /* the payload is a JSON string of digits */
            uint64_t v = 0;
            int digits = 0;
            while (d < le && *d >= '0' && *d <= '9' && digits < 20) {
                v = v * 10 + (uint64_t)(*d++ - '0');
                digits++;
            }
            if (digits > 0)
                lat_ms[n_lat++] = ((double)now - (double)v) / 1e6;
        }
        p = nl ? nl + 1 : end;
    }
}

static int on_url(llhttp_t *h, const char *at, size_t len)
{
    conn_t *c = h->data;
    size_t room = URL_CAP - 1 - c->url_len;
    size_t k = len < room ? len : room;
    memcpy(c->url + c->url_len, at, k);
    c->url_len += k;
    return 0;
}

static int on_message_begin(llhttp_t *h)
{
    conn_t *c = h->data;
    c->url_len = 0;
    c->body_len = c->body_nl = 0;
    c->blen = 0;
    return 0;
}

static int on_body(llhttp_t *h, const char *at, size_t len)
{
    conn_t *c = h->data;
    c->body_len += len;
    for (const char *p = at, *e = at + len; (p = memchr(p, '\n', (size_t)(e - p))) != NULL; p++)
        c->body_nl++;
    if (c->body != NULL) {
        size_t k = len < BODY_CAP - c->blen ? len : BODY_CAP - c->blen;
        memcpy(c->body + c->blen, at, k);
        c->blen += k;
    }
    return 0;
}

static void out_put(conn_t *c, const char *p, size_t n)
{
    if (n > OUT_CAP - c->olen)
        n = OUT_CAP - c->olen; /* pipelined beyond OUT_CAP: the peer is misbehaving */
    memcpy(c->out + c->olen, p, n);
    c->olen += n;
}

static int on_message_complete(llhttp_t *h)
{
    conn_t *c = h->data;
    c->url[c->url_len] = '\0';
    if (llhttp_get_method(h) == HTTP_GET && strcmp(c->url, "/stats") == 0) {
        char body[512], head[128];
        int bl = stats_line(body, sizeof(body));
        int hl = snprintf(
            head, sizeof(head),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n", bl);
        out_put(c, head, (size_t)hl);
        out_put(c, body, (size_t)bl);
        return 0;
    }
    if (llhttp_get_method(h) == HTTP_GET && strcmp(c->url, "/reset") == 0) {
        n_requests = n_messages = n_bytes = first_ns = last_ns = 0;
        n_lat = 0;
        static const char done[] = "HTTP/1.1 204 No Content\r\n\r\n";
        out_put(c, done, sizeof(done) - 1);
        return 0;
    }
    last_ns = mono_ns();
    if (first_ns == 0)
        first_ns = last_ns;
    n_requests++;
    n_bytes += c->body_len;
    n_messages += c->body_nl > 0 ? c->body_nl : c->body_len > 0;
    if (c->body != NULL)
        body_latencies(c->body, c->blen);
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    out_put(c, ok, sizeof(ok) - 1);
    return 0;
}

static llhttp_settings_t settings;

static void conn_close(int ep, conn_t *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->body);
    free(c);
}

/* Writes what is pending; 0 when all of it went, 1 when the socket is full, -1 on error. */
static int flush_out(conn_t *c)
{
    size_t off = 0;
    while (off < c->olen) {
        ssize_t w = send(c->fd, c->out + off, c->olen - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            break;
        if (w <= 0)
            return -1;
        off += (size_t)w;
    }
    memmove(c->out, c->out + off, c->olen - off);
    c->olen -= off;
    return c->olen > 0;
}

static int serve(int port)
{
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 1024) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) != 0) {
        perror("sluice-sinkrecv: listen");
        return 1;
    }
    if (opt_latency && (lat_ms = malloc(LAT_CAP * sizeof(*lat_ms))) == NULL)
        return 1;
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("port=%d\n", ntohs(a.sin_port));
    fflush(stdout);
    static char buf[256 * 1024];
    struct epoll_event evs[MAX_EVENTS];
    while (!stop) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, 200);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    c = calloc(1, sizeof(*c));
                    if (c == NULL || (opt_latency && (c->body = malloc(BODY_CAP)) == NULL)) {
                        free(c);
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    llhttp_init(&c->parser, HTTP_REQUEST, &settings);
                    c->parser.data = c;
                    struct epoll_event ce = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce);
                }
                continue;
            }
            if (evs[i].events & EPOLLOUT) {
                int r = flush_out(c);
                if (r < 0) {
                    conn_close(ep, c);
                    continue;
                }
                if (r == 0) {
                    struct epoll_event ce = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ce);
                }
            }
            if (!(evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0 || llhttp_execute(&c->parser, buf, (size_t)r) != HPE_OK) {
                conn_close(ep, c);
                continue;
            }
            int w = flush_out(c);
            if (w < 0) {
                conn_close(ep, c);
            } else if (w > 0) {
                struct epoll_event ce = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ce);
            }
        }
    }
    char line[512];
    stats_line(line, sizeof(line));
    fputs(line, stdout);
    fflush(stdout);
    return 0;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The sequential loop: one request, wait for its whole answer, the next. */
static int loop(int port, double seconds, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        perror("sluice-sinkrecv: connect");
        return 1;
    }
    char *req = malloc(size + 256);
    if (req == NULL)
        return 1;
    int hl = snprintf(req, 256,
                      "POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      size);
    memset(req + hl, 'x', size);
    size_t rl = (size_t)hl + size;
    char buf[4096];
    uint64_t n = 0;
    double t0 = mono(), c0 = cpu_seconds(), t = t0;
    while (t - t0 < seconds) {
        for (size_t off = 0; off < rl;) {
            ssize_t w = send(fd, req + off, rl - off, MSG_NOSIGNAL);
            if (w <= 0) {
                perror("sluice-sinkrecv: send");
                return 1;
            }
            off += (size_t)w;
        }
        /* The receiver's answer has no body: the head's end is the answer's end. */
        size_t got = 0;
        for (;;) {
            ssize_t r = recv(fd, buf + got, sizeof(buf) - got, 0);
            if (r <= 0) {
                perror("sluice-sinkrecv: recv");
                return 1;
            }
            got += (size_t)r;
            if (got >= 4 && memcmp(buf + got - 4, "\r\n\r\n", 4) == 0)
                break;
            if (got == sizeof(buf))
                return 1;
        }
        n++;
        t = mono();
    }
    double dt = t - t0, cpu = cpu_seconds() - c0;
    printf("requests=%llu seconds=%.3f cpu_seconds=%.3f requests_per_s=%.0f "
           "requests_per_cpu_s=%.0f\n",
           (unsigned long long)n, dt, cpu, (double)n / dt, cpu > 0 ? (double)n / cpu : 0.0);
    free(req);
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    int port = 0, as_loop = 0;
    double seconds = 3;
    size_t size = 64;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--latency") == 0)
            opt_latency = 1;
        else if (strcmp(argv[i], "--loop") == 0)
            as_loop = 1;
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc)
            size = (size_t)atol(argv[++i]);
        else {
            fprintf(stderr, "usage: sluice-sinkrecv [--port N] [--latency] | --loop --port N "
                            "[--seconds S] [--size B]\n");
            return 2;
        }
    }
    if (as_loop)
        return loop(port, seconds, size);
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return serve(port);
}
