/*
 * sluice-load: the load tool behind bench/run.sh. One thread, epoll, raw sockets, so that it
 * drives sluice and nginx+nchan identically. Scenarios:
 *
 *   idle     N idle subscribers: server RSS per connection
 *   fanout   S subscribers on one topic, a publisher at R msg/s: deliveries/s, deliveries per
 *            server CPU-second, publish-to-receive latency, loss
 *   stalled  F fast + T stalled subscribers (tiny SO_RCVBUF, never read) at R msg/s: server RSS
 *            over time (CSV, with the fast readers' p99 and max latency per sample), its slope,
 *            fast readers' loss and latency
 *
 * Subscribers use SSE, or with --ws WebSocket: a handshake on the subscribe path, then unmasked
 * server frames, one message each (a text or binary frame with the raw payload, as sluice's
 * format=raw and nchan's websocket subscriber send them); pings are answered with masked pongs.
 * With --mix every other subscriber of each kind (fast, stalled, idle) is WebSocket, on
 * --ws-sub-path when given (nchan serves the two on different paths). Publishing is always
 * HTTP POST.
 *
 * Payloads carry "<seq> <send time ns>" so every subscriber measures latency and detects loss.
 * fanout --external publishes nothing: the topic is fed from elsewhere (bench/kafka.py: a Kafka
 * source) with payloads "t<CLOCK_REALTIME send time ns>:..." (the Kafka mock helper's `flood`);
 * the sequence is then the number after the last '-' of the SSE id (a Kafka offset + 1).
 * Each run ends with one line of key=value pairs for scripts.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
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

/* ---- options ---------------------------------------------------------------------------- */

static const char *opt_host = "127.0.0.1";
static int opt_port = 8080;
static const char *opt_sub = "/topics/bench";
static const char *opt_pub = "/topics/bench";
static const char *opt_pids = "";
static const char *opt_csv = NULL;
static long opt_n = 1000, opt_fast = 50, opt_stalled = 200, opt_size = 100;
static double opt_rate = 100, opt_duration = 10, opt_sample_ms = 2000, opt_settle = 2;
static int opt_ws;                    /* subscribers use WebSocket instead of SSE */
static int opt_mix;                   /* every other subscriber uses WebSocket */
static const char *opt_ws_sub = NULL; /* WebSocket subscribe path (default: opt_sub) */
static int opt_external;              /* fanout: no publisher, the topic is fed elsewhere */
static int64_t real_minus_mono;       /* CLOCK_REALTIME - CLOCK_MONOTONIC, ns (--external) */

/* ---- clocks and server probes ----------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double now_s(void)
{
    return (double)now_ns() / 1e9;
}

/* Sums a per-process figure over the comma-separated PID list. */
static double sum_pids(double (*fn)(int pid))
{
    double total = 0;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", opt_pids);
    for (char *tok = strtok(buf, ","); tok != NULL; tok = strtok(NULL, ","))
        total += fn(atoi(tok));
    return total;
}

static double rss_of(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    double kb = 0;
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = atof(line + 6);
    fclose(f);
    return kb * 1024;
}

static double cpu_of(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return 0;
    unsigned long ut = 0, st = 0;
    /* Fields after ")": state is field 3; utime and stime are fields 14 and 15. */
    p += 2;
    for (int i = 3; i < 14 && p != NULL; i++) {
        p = strchr(p, ' ');
        if (p != NULL)
            p++;
    }
    if (p == NULL || sscanf(p, "%lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double server_rss(void)
{
    return sum_pids(rss_of);
}

static double server_cpu(void)
{
    return sum_pids(cpu_of);
}

/* ---- latency histogram: 1 us buckets up to 1 s ------------------------------------------ */

#define HIST_MAX 1000000
static uint32_t *hist;
static uint64_t hist_n, hist_over;

/* The same for the current CSV sample's window only (stalled): 10 us buckets up to 1 s. */
#define WIN_MAX 100000
static uint32_t *win;
static uint64_t win_n;
static double win_max_ms;

static void hist_add(uint64_t ns)
{
    uint64_t us = ns / 1000;
    hist_n++;
    if (us >= HIST_MAX)
        hist_over++;
    else
        hist[us]++;
    win_n++;
    win[us / 10 < WIN_MAX ? us / 10 : WIN_MAX - 1]++;
    if ((double)ns / 1e6 > win_max_ms)
        win_max_ms = (double)ns / 1e6;
}

/* The window's p-quantile in ms, then a new window. */
static double win_pct_reset(double p)
{
    uint64_t want = (uint64_t)ceil(p * (double)win_n), seen = 0;
    double v = 0;
    for (uint64_t i = 0; i < WIN_MAX && win_n > 0; i++) {
        seen += win[i];
        if (seen >= want) {
            v = (double)i / 100.0;
            break;
        }
    }
    memset(win, 0, WIN_MAX * sizeof(*win));
    win_n = 0;
    win_max_ms = 0;
    return v;
}

static double hist_pct(double p)
{
    uint64_t want = (uint64_t)ceil(p * (double)hist_n), seen = 0;
    if (hist_n == 0)
        return 0;
    for (uint64_t i = 0; i < HIST_MAX; i++) {
        seen += hist[i];
        if (seen >= want)
            return (double)i / 1000.0;
    }
    return HIST_MAX / 1000.0;
}

static double hist_maxv(void)
{
    if (hist_over)
        return HIST_MAX / 1000.0;
    for (uint64_t i = HIST_MAX; i-- > 0;)
        if (hist[i])
            return (double)i / 1000.0;
    return 0;
}

/* ---- connections ------------------------------------------------------------------------ */

enum { C_SUB, C_STALLED, C_PUB };

typedef struct client {
    int fd, kind;
    int ws; /* a WebSocket subscriber */
    int got_head, status, closed;
    int subscribed; /* SSE: 200; WebSocket: 101 with the right Sec-WebSocket-Accept */
    int ws_in_msg;  /* WebSocket: inside a fragmented data message */
    uint64_t events, gaps, gap_missed, lost, last_seq;
    char *buf; /* unparsed bytes */
    size_t len, cap;
    int in_gap;    /* current event is a sluice.gap */
    long data_seq; /* seq found in the current event's data, -1 if none */
    long id_seq;   /* --external: seq from the current event's id, -1 if none */
    uint64_t data_ts;
} client_t;

static int ep;
static client_t *clients;
static long nclients;
static uint64_t total_events, total_lost, total_gaps, total_closed, pub_ok, pub_err;
static uint64_t ws_pings, ws_closes, ws_errors;
static long nkind[3]; /* clients added, by kind */

/* RFC 6455's example key and its accept value: any fixed valid key will do. */
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static int connect_to(int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        perror("socket");
        exit(1);
    }
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt_port)};
    inet_pton(AF_INET, opt_host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        perror("connect");
        exit(1);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static client_t *add_client(int kind, int rcvbuf)
{
    client_t *c = &clients[nclients];
    memset(c, 0, sizeof(*c));
    c->fd = connect_to(rcvbuf);
    c->kind = kind;
    c->data_seq = c->id_seq = -1;
    c->ws = kind != C_PUB && (opt_ws || (opt_mix && nkind[kind] % 2 == 1));
    nkind[kind]++;
    if (kind != C_PUB) {
        char req[512];
        const char *hdrs = c->ws ? "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                   "Sec-WebSocket-Key: " WS_KEY "\r\nSec-WebSocket-Version: 13\r\n"
                                 : "Accept: text/event-stream\r\n";
        const char *path = c->ws && opt_ws_sub != NULL ? opt_ws_sub : opt_sub;
        int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", path, opt_host,
                         hdrs);
        if (write(c->fd, req, (size_t)n) != n) {
            perror("write");
            exit(1);
        }
    }
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    /* Stalled readers are only watched for the server closing them; they are never read. */
    struct epoll_event ev = {.events = kind == C_STALLED ? EPOLLRDHUP : EPOLLIN,
                             .data.u64 = (uint64_t)nclients};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    nclients++;
    return c;
}

/* Stops watching c; by_server: the server ended it (counted as closed_by_server). */
static void close_client(client_t *c, int by_server)
{
    if (!c->closed) {
        c->closed = 1;
        if (by_server)
            total_closed++;
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    }
}

static void end_event(client_t *c)
{
    if (c->in_gap) {
        c->gaps++;
        total_gaps++;
    } else if (c->data_seq >= 0) {
        uint64_t seq = (uint64_t)c->data_seq;
        c->events++;
        total_events++;
        /* A gap marker reports a hole explicitly; anything else missing is loss. */
        if (c->last_seq != 0 && seq > c->last_seq + 1 && !c->gap_missed) {
            c->lost += seq - c->last_seq - 1;
            total_lost += seq - c->last_seq - 1;
        }
        c->gap_missed = 0;
        c->last_seq = seq;
        hist_add(now_ns() - c->data_ts);
    }
    c->in_gap = 0;
    c->data_seq = -1;
    c->id_seq = -1;
}

/* Takes "<seq> <send time ns>" from the start of a payload. */
static void event_data(client_t *c, const char *d, size_t n)
{
    char tmp[48];
    size_t k = n < sizeof(tmp) - 1 ? n : sizeof(tmp) - 1;
    memcpy(tmp, d, k);
    tmp[k] = '\0';
    unsigned long long seq, ts;
    if (opt_external) {
        if (sscanf(tmp, "t%llu:", &ts) == 1 && c->id_seq >= 0) {
            c->data_seq = c->id_seq;
            c->data_ts = (uint64_t)((int64_t)ts - real_minus_mono);
        }
    } else if (sscanf(tmp, "%llu %llu", &seq, &ts) == 2) {
        c->data_seq = (long)seq;
        c->data_ts = ts;
    }
}

static void sse_line(client_t *c, const char *l, size_t n)
{
    if (n == 0) {
        end_event(c);
    } else if (n >= 17 && memcmp(l, "event: sluice.gap", 17) == 0) {
        c->in_gap = 1;
        c->gap_missed = 1;
    } else if (n > 6 && memcmp(l, "data: ", 6) == 0 && !c->in_gap) {
        event_data(c, l + 6, n - 6);
    } else if (opt_external && n > 4 && memcmp(l, "id: ", 4) == 0) {
        const char *dash = memrchr(l, '-', n);
        c->id_seq = dash != NULL ? strtol(dash + 1, NULL, 10) : -1;
    }
}

/* Sends one masked frame of at most 125 bytes (control frames only). */
static void ws_send(client_t *c, int opcode, const char *p, size_t n)
{
    unsigned char f[2 + 4 + 125];
    uint32_t key = (uint32_t)rand();
    if (n > 125)
        n = 125;
    f[0] = (unsigned char)(0x80 | opcode);
    f[1] = (unsigned char)(0x80 | n);
    memcpy(f + 2, &key, 4);
    for (size_t i = 0; i < n; i++)
        f[6 + i] = (unsigned char)p[i] ^ f[2 + i % 4];
    /* A subscriber sends nothing else, so its send buffer has room. */
    if (write(c->fd, f, 6 + n) != (ssize_t)(6 + n))
        ws_errors++;
}

static void ws_frame(client_t *c, int fin, int opcode, const char *p, size_t n)
{
    switch (opcode) {
    case 0x1: /* text */
    case 0x2: /* binary */
        if (c->ws_in_msg) {
            ws_errors++; /* a new message inside a fragmented one */
            c->data_seq = -1;
        }
        /* sluice's control messages begin with {"sluice":"; only a gap is counted. */
        if (n >= 11 && memcmp(p, "{\"sluice\":\"", 11) == 0) {
            if (n >= 15 && memcmp(p + 11, "gap\"", 4) == 0) {
                c->in_gap = 1;
                c->gap_missed = 1;
            }
        } else {
            event_data(c, p, n);
        }
        c->ws_in_msg = !fin;
        if (fin)
            end_event(c);
        break;
    case 0x0: /* continuation: the sequence number was in the first fragment */
        if (!c->ws_in_msg) {
            ws_errors++;
        } else if (fin) {
            c->ws_in_msg = 0;
            end_event(c);
        }
        break;
    case 0x8: /* close: echo the code; the server then closes the connection */
        ws_closes++;
        ws_send(c, 0x8, p, n >= 2 ? 2 : 0);
        break;
    case 0x9: /* ping */
        ws_pings++;
        ws_send(c, 0xA, p, n);
        break;
    case 0xA: /* unsolicited pong */
        break;
    default:
        ws_errors++;
    }
}

/* Consumes complete frames of c->buf from off; returns where the unconsumed bytes begin. */
static size_t ws_parse(client_t *c, size_t off)
{
    while (c->len - off >= 2) {
        const unsigned char *h = (const unsigned char *)c->buf + off;
        size_t avail = c->len - off, hl = 2;
        uint64_t plen = h[1] & 0x7f;
        if (plen == 126) {
            if (avail < 4)
                break;
            plen = (uint64_t)h[2] << 8 | h[3];
            hl = 4;
        } else if (plen == 127) {
            if (avail < 10)
                break;
            plen = 0;
            for (int i = 2; i < 10; i++)
                plen = plen << 8 | h[i];
            hl = 10;
        }
        /* Server frames are unmasked, with no extension bits (none is negotiated). */
        if ((h[1] & 0x80) || (h[0] & 0x70) || plen > (1u << 24)) {
            ws_errors++;
            close_client(c, 0);
            shutdown(c->fd, SHUT_RDWR);
            return c->len;
        }
        if (avail - hl < plen)
            break;
        ws_frame(c, h[0] & 0x80, h[0] & 0x0f, c->buf + off + hl, (size_t)plen);
        off += hl + (size_t)plen;
        if (c->closed)
            return c->len;
    }
    return off;
}

/* Consumes complete lines (SSE) or frames (WebSocket) of c->buf; the response head first. */
static void parse(client_t *c)
{
    size_t off = 0;
    if (!c->got_head) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (end == NULL)
            return;
        c->got_head = 1;
        c->status = atoi(c->buf + 9);
        off = (size_t)(end - c->buf) + 4;
        if (!c->ws)
            c->subscribed = c->status == 200;
        else
            c->subscribed = c->status == 101 && memmem(c->buf, off, WS_ACCEPT, 28) != NULL;
        if (c->ws && !c->subscribed) {
            /* Whatever follows is not a WebSocket stream. */
            close_client(c, 0);
            shutdown(c->fd, SHUT_RDWR);
            c->len = 0;
            return;
        }
    }
    if (c->ws) {
        off = ws_parse(c, off);
        memmove(c->buf, c->buf + off, c->len - off);
        c->len -= off;
        return;
    }
    for (;;) {
        char *nl = memchr(c->buf + off, '\n', c->len - off);
        if (nl == NULL)
            break;
        size_t n = (size_t)(nl - (c->buf + off));
        if (n > 0 && c->buf[off + n - 1] == '\r')
            n--;
        sse_line(c, c->buf + off, n);
        off = (size_t)(nl - c->buf) + 1;
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
}

static void on_readable(client_t *c)
{
    char tmp[65536];
    while (!c->closed) {
        ssize_t n = read(c->fd, tmp, sizeof(tmp));
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            close_client(c, 1);
            return;
        }
        if (n < 0)
            return;
        if (c->kind == C_PUB) {
            /* Count answers by their status lines. */
            for (ssize_t i = 0; i + 12 <= n; i++) {
                if (memcmp(tmp + i, "HTTP/1.1 ", 9) == 0) {
                    if (tmp[i + 9] == '2')
                        pub_ok++;
                    else
                        pub_err++;
                }
            }
            continue;
        }
        if (c->len + (size_t)n > c->cap) {
            c->cap = (c->len + (size_t)n) * 2;
            c->buf = realloc(c->buf, c->cap);
        }
        memcpy(c->buf + c->len, tmp, (size_t)n);
        c->len += (size_t)n;
        parse(c);
    }
}

static void on_stalled_event(client_t *c)
{
    close_client(c, 1);
}

static void poll_once(int timeout_ms)
{
    struct epoll_event evs[1024];
    int k = epoll_wait(ep, evs, 1024, timeout_ms);
    for (int i = 0; i < k; i++) {
        client_t *c = &clients[evs[i].data.u64];
        if (c->kind == C_STALLED)
            on_stalled_event(c);
        else
            on_readable(c);
    }
}

/* ---- publishing ------------------------------------------------------------------------- */

static uint64_t pub_seq, pub_blocked;
static char *body;
/* The publisher's unsent bytes. It never blocks: a server that stops reading its publisher
 * makes this queue fill, and messages due while it is full are counted as blocked, not sent. */
static char *pub_out;
static size_t pub_len;
#define PUB_QUEUE (1u << 20)

static void pub_flush(client_t *p)
{
    while (pub_len > 0) {
        ssize_t n = write(p->fd, pub_out, pub_len);
        if (n <= 0)
            return;
        memmove(pub_out, pub_out + n, pub_len - (size_t)n);
        pub_len -= (size_t)n;
    }
}

static void publish_one(client_t *p)
{
    pub_flush(p);
    if (pub_len + 512 + (size_t)opt_size > PUB_QUEUE) {
        pub_blocked++;
        return;
    }
    int hlen = snprintf(pub_out + pub_len, 512,
                        "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %ld\r\n\r\n", opt_pub,
                        opt_host, opt_size);
    pub_len += (size_t)hlen;
    int m = snprintf(body, (size_t)opt_size + 1, "%llu %llu ", (unsigned long long)++pub_seq,
                     (unsigned long long)now_ns());
    if (m < opt_size)
        body[m] = 'x';
    memcpy(pub_out + pub_len, body, (size_t)opt_size);
    pub_len += (size_t)opt_size;
    pub_flush(p);
}

/* Publishes at opt_rate for opt_duration while serving subscribers; samples RSS into CSV. */
static void run_publishing(client_t *pub, FILE *csv, double *rss_max, double *slope)
{
    double t0 = now_s(), next = t0, next_sample = t0;
    double *st = malloc(sizeof(double) * 100000), *sr = malloc(sizeof(double) * 100000);
    size_t ns = 0;
    uint64_t last_events = 0, last_ok = 0;
    *rss_max = 0;
    while (now_s() < t0 + opt_duration) {
        double t = now_s();
        while (next <= t) {
            publish_one(pub);
            next += 1.0 / opt_rate;
        }
        if (t >= next_sample) {
            double rss = server_rss();
            if (rss > *rss_max)
                *rss_max = rss;
            if (ns < 100000) {
                st[ns] = t - t0;
                sr[ns++] = rss;
            }
            if (csv != NULL) {
                double wmax = win_max_ms;
                fprintf(csv, "%.2f,%.0f,%.0f,%.3f,%.3f,%.0f\n", t - t0, rss,
                        (double)(total_events - last_events) / (opt_sample_ms / 1000.0),
                        win_pct_reset(0.99), wmax,
                        (double)(pub_ok - last_ok) / (opt_sample_ms / 1000.0));
            }
            last_events = total_events;
            last_ok = pub_ok;
            next_sample += opt_sample_ms / 1000.0;
        }
        int wait_ms = (int)((next - now_s()) * 1000);
        poll_once(wait_ms < 0 ? 0 : wait_ms);
    }
    /* Least-squares slope of RSS over the second half, in MB per minute. */
    size_t from = ns / 2, m = ns - from;
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (size_t i = from; i < ns; i++) {
        sx += st[i];
        sy += sr[i];
        sxx += st[i] * st[i];
        sxy += st[i] * sr[i];
    }
    double den = (double)m * sxx - sx * sx;
    *slope = m >= 2 && den != 0 ? ((double)m * sxy - sx * sy) / den * 60.0 / 1e6 : 0;
    free(st);
    free(sr);
}

static void drain(double seconds)
{
    double until = now_s() + seconds;
    while (now_s() < until)
        poll_once(50);
}

/* ---- scenarios -------------------------------------------------------------------------- */

/* The transport, and for WebSocket what happened at that level, as key=value pairs. */
static const char *transport_kv(void)
{
    static char kv[160];
    if (!opt_ws && !opt_mix)
        return "transport=sse";
    snprintf(kv, sizeof(kv), "transport=%s ws_pings=%llu ws_closes=%llu ws_errors=%llu",
             opt_mix ? "mixed" : "ws", (unsigned long long)ws_pings, (unsigned long long)ws_closes,
             (unsigned long long)ws_errors);
    return kv;
}

static long count_ok_subscribers(int kind)
{
    long ok = 0;
    for (long i = 0; i < nclients; i++)
        if (clients[i].kind == kind && clients[i].subscribed)
            ok++;
    return ok;
}

static int scenario_idle(void)
{
    double before = server_rss();
    for (long i = 0; i < opt_n; i++) {
        add_client(C_SUB, 0);
        if (i % 256 == 0)
            poll_once(0);
    }
    drain(opt_settle);
    long ok = count_ok_subscribers(C_SUB);
    double after = server_rss();
    printf("scenario=idle %s connections=%ld ok=%ld rss_before=%.0f rss_after=%.0f "
           "rss_per_conn=%.0f closed_by_server=%llu\n",
           transport_kv(), opt_n, ok, before, after, ok ? (after - before) / (double)ok : 0,
           (unsigned long long)total_closed);
    return ok == opt_n ? 0 : 1;
}

static int scenario_fanout(void)
{
    for (long i = 0; i < opt_n; i++) {
        add_client(C_SUB, 0);
        if (i % 256 == 0)
            poll_once(0);
    }
    drain(1.0);
    long subscribed = count_ok_subscribers(C_SUB);
    double cpu0 = server_cpu(), t0 = now_s(), rss_max = 0, slope;
    if (opt_external) {
        /* Count from here: the feed ran before the subscribers were all in. */
        total_events = total_lost = total_gaps = 0;
        hist_n = hist_over = 0;
        memset(hist, 0, HIST_MAX * sizeof(*hist));
        for (long i = 0; i < nclients; i++)
            clients[i].last_seq = 0;
        drain(opt_duration);
    } else {
        client_t *pub = add_client(C_PUB, 0);
        run_publishing(pub, NULL, &rss_max, &slope);
        drain(1.0);
    }
    double secs = now_s() - t0, cpu = server_cpu() - cpu0;
    uint64_t expected = pub_ok * (uint64_t)opt_n; /* what the server accepted */
    printf("scenario=fanout %s subscribers=%ld subscribed=%ld rate=%.0f size=%ld published=%llu "
           "pub_ok=%llu "
           "pub_err=%llu pub_blocked=%llu expected=%llu delivered=%llu lost=%llu gaps=%llu "
           "deliveries_per_s=%.0f "
           "server_cpu_s=%.2f deliveries_per_cpu_s=%.0f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f "
           "rss_max=%.0f closed_by_server=%llu\n",
           transport_kv(), opt_n, subscribed, opt_rate, opt_size, (unsigned long long)pub_seq,
           (unsigned long long)pub_ok, (unsigned long long)pub_err, (unsigned long long)pub_blocked,
           (unsigned long long)expected, (unsigned long long)total_events,
           (unsigned long long)total_lost, (unsigned long long)total_gaps,
           (double)total_events / secs, cpu, cpu > 0 ? (double)total_events / cpu : 0,
           hist_pct(0.50), hist_pct(0.99), hist_maxv(), rss_max, (unsigned long long)total_closed);
    return 0;
}

static int scenario_stalled(void)
{
    FILE *csv = NULL;
    if (opt_csv != NULL) {
        csv = fopen(opt_csv, "w");
        if (csv == NULL) {
            perror(opt_csv);
            return 1;
        }
        fprintf(csv, "t_s,rss_bytes,deliveries_per_s,p99_ms,max_ms,accepted_per_s\n");
    }
    double base = server_rss();
    for (long i = 0; i < opt_fast; i++)
        add_client(C_SUB, 0);
    for (long i = 0; i < opt_stalled; i++)
        add_client(C_STALLED, 1024);
    drain(1.0);
    client_t *pub = add_client(C_PUB, 0);
    double rss_max, slope;
    run_publishing(pub, csv, &rss_max, &slope);
    drain(1.0);
    if (csv != NULL)
        fclose(csv);
    uint64_t fast_events = 0, fast_lost = 0, fast_gaps = 0, stalled_closed = 0;
    long fast_ws = 0, stalled_ws = 0;
    for (long i = 0; i < nclients; i++) {
        client_t *c = &clients[i];
        if (c->kind == C_SUB)
            fast_ws += c->ws;
        else if (c->kind == C_STALLED)
            stalled_ws += c->ws;
        if (c->kind == C_SUB) {
            fast_events += c->events;
            fast_lost += c->lost;
            fast_gaps += c->gaps;
        } else if (c->kind == C_STALLED && c->closed) {
            stalled_closed++;
        }
    }
    uint64_t expected = pub_ok * (uint64_t)opt_fast; /* what the server accepted */
    printf("scenario=stalled %s fast=%ld fast_ws=%ld fast_subscribed=%ld stalled=%ld "
           "stalled_ws=%ld rate=%.0f size=%ld duration_s=%.0f "
           "published=%llu pub_ok=%llu pub_err=%llu pub_blocked=%llu fast_expected=%llu "
           "fast_delivered=%llu "
           "fast_missing=%llu fast_gaps=%llu fast_p50_ms=%.3f fast_p99_ms=%.3f rss_base=%.0f "
           "rss_max=%.0f rss_slope_mb_per_min=%.3f stalled_closed_by_server=%llu\n",
           transport_kv(), opt_fast, fast_ws, count_ok_subscribers(C_SUB), opt_stalled, stalled_ws,
           opt_rate, opt_size, opt_duration, (unsigned long long)pub_seq,
           (unsigned long long)pub_ok, (unsigned long long)pub_err, (unsigned long long)pub_blocked,
           (unsigned long long)expected, (unsigned long long)fast_events,
           (unsigned long long)(expected > fast_events ? expected - fast_events : 0),
           (unsigned long long)fast_gaps, hist_pct(0.50), hist_pct(0.99), base, rss_max, slope,
           (unsigned long long)stalled_closed);
    (void)fast_lost;
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: sluice-load idle|fanout|stalled [options]\n"
                    "  --port N --host ADDR --sub-path P --pub-path P --server-pid PID[,PID...]\n"
                    "  --ws | --transport sse|ws (WebSocket subscribers on --sub-path)\n"
                    "  --mix (every other subscriber WebSocket)  --ws-sub-path P (their path)\n"
                    "  -n N (idle, fanout subscribers)  -f FAST -t STALLED (stalled)\n"
                    "  -r RATE msg/s  -d SECONDS  --size BYTES  --settle SECONDS\n"
                    "  --sample-ms MS  --csv FILE (stalled)\n"
                    "  --external (fanout: publish nothing, the topic is fed elsewhere)\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    const char *scenario = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--ws") == 0) {
            opt_ws = 1;
            continue;
        }
        if (strcmp(a, "--mix") == 0) {
            opt_mix = 1;
            continue;
        }
        if (strcmp(a, "--external") == 0) {
            opt_external = 1;
            continue;
        }
        if (v == NULL) {
            usage();
            return 2;
        }
        if (strcmp(a, "--port") == 0)
            opt_port = atoi(v);
        else if (strcmp(a, "--host") == 0)
            opt_host = v;
        else if (strcmp(a, "--sub-path") == 0)
            opt_sub = v;
        else if (strcmp(a, "--ws-sub-path") == 0)
            opt_ws_sub = v;
        else if (strcmp(a, "--pub-path") == 0)
            opt_pub = v;
        else if (strcmp(a, "--server-pid") == 0)
            opt_pids = v;
        else if (strcmp(a, "-n") == 0 || strcmp(a, "-s") == 0)
            opt_n = atol(v);
        else if (strcmp(a, "-f") == 0)
            opt_fast = atol(v);
        else if (strcmp(a, "-t") == 0)
            opt_stalled = atol(v);
        else if (strcmp(a, "-r") == 0)
            opt_rate = atof(v);
        else if (strcmp(a, "-d") == 0)
            opt_duration = atof(v);
        else if (strcmp(a, "--size") == 0)
            opt_size = atol(v);
        else if (strcmp(a, "--settle") == 0)
            opt_settle = atof(v);
        else if (strcmp(a, "--sample-ms") == 0)
            opt_sample_ms = atof(v);
        else if (strcmp(a, "--csv") == 0)
            opt_csv = v;
        else if (strcmp(a, "--transport") == 0 && (strcmp(v, "sse") == 0 || strcmp(v, "ws") == 0))
            opt_ws = strcmp(v, "ws") == 0;
        else {
            usage();
            return 2;
        }
        i++;
    }
    if (opt_size < 48 || opt_size > 8192 || opt_rate <= 0) {
        fprintf(stderr, "--size must be 48..8192 and -r positive\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)now_ns());
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    real_minus_mono = (int64_t)rt.tv_sec * 1000000000 + rt.tv_nsec - (int64_t)now_ns();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    ep = epoll_create1(0);
    hist = calloc(HIST_MAX, sizeof(*hist));
    win = calloc(WIN_MAX, sizeof(*win));
    body = malloc((size_t)opt_size + 1);
    pub_out = malloc(PUB_QUEUE);
    memset(body, 'x', (size_t)opt_size);
    clients = calloc((size_t)(opt_n + opt_fast + opt_stalled + 2), sizeof(*clients));
    if (strcmp(scenario, "idle") == 0)
        return scenario_idle();
    if (strcmp(scenario, "fanout") == 0)
        return scenario_fanout();
    if (strcmp(scenario, "stalled") == 0)
        return scenario_stalled();
    usage();
    return 2;
}
