/*
 * handshake: subscribe handshakes against sluice, for bench/auth.sh. One thread, epoll.
 *
 *   handshake storm -n N -c C [--token-file F] [--server-pid PID]
 *       N SSE subscribe handshakes (a reconnect storm), C in flight at a time: connect, send
 *       the GET with the token (Authorization: Bearer), read the response head, check for 200,
 *       reset the connection (no TIME_WAIT). Reports handshakes/s and handshakes per server
 *       CPU-second.
 *   handshake idle -n N [--token-file F] [--server-pid PID] [--ws 1]
 *       N subscribers that stay connected after their 200 (101 with --ws 1: WebSocket
 *       handshakes instead of SSE): server RSS per connection.
 *
 * Topics are /topics/bench/<i % 64>. Ends with one line of key=value pairs.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int opt_port = 8080, opt_pid, opt_ws;
static long opt_n = 10000, opt_c = 200;
static char *token;

typedef struct client {
    int fd;
    long id;
    size_t sent, reqlen, got;
    char req[10240];
    char head[512];
} client_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double server_cpu(void)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", opt_pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double server_rss(void)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", opt_pid);
    FILE *f = fopen(path, "r");
    double kb = 0;
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmRSS: %lf", &kb) == 1)
            break;
    fclose(f);
    return kb * 1024;
}

static int ep;
static long started, done, failed;

static void start(client_t *c, long id)
{
    c->id = id;
    c->sent = c->got = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt_port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) != 0 && errno != EINPROGRESS) {
        perror("connect");
        exit(1);
    }
    int n =
        snprintf(c->req, sizeof(c->req),
                 "GET /topics/bench/%ld HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%s%s%s\r\n", id % 64,
                 opt_ws ? "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n"
                        : "Accept: text/event-stream\r\n",
                 token ? "Authorization: Bearer " : "", token ? token : "", token ? "\r\n" : "");
    c->reqlen = (size_t)n;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    started++;
}

/* Returns 1 when the handshake finished (c->fd closed unless keep). */
static int step(client_t *c, int keep)
{
    while (c->sent < c->reqlen) {
        ssize_t w = write(c->fd, c->req + c->sent, c->reqlen - c->sent);
        if (w < 0)
            return errno == EAGAIN || errno == ENOTCONN ? 0 : (failed++, close(c->fd), 1);
        c->sent += (size_t)w;
    }
    for (;;) {
        ssize_t r = read(c->fd, c->head + c->got, sizeof(c->head) - 1 - c->got);
        if (r < 0 && errno == EAGAIN)
            return 0;
        if (r <= 0) {
            failed++;
            close(c->fd);
            return 1;
        }
        c->got += (size_t)r;
        c->head[c->got] = '\0';
        if (strstr(c->head, "\r\n\r\n") != NULL || c->got == sizeof(c->head) - 1)
            break;
    }
    int ok = strncmp(c->head, opt_ws ? "HTTP/1.1 101" : "HTTP/1.1 200", 12) == 0;
    if (ok)
        done++;
    else
        failed++;
    if (!ok && failed == 1)
        fprintf(stderr, "first refusal: %.200s\n", c->head);
    if (keep && ok) {
        struct epoll_event ev = {.events = 0, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        return 1;
    }
    struct linger lg = {1, 0}; /* reset: no TIME_WAIT for the next 10,000 */
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(c->fd);
    return 1;
}

static void run(long n, long conc, int keep, client_t *cl)
{
    long next = 0;
    for (; next < conc && next < n; next++)
        start(&cl[keep ? next : next % conc], next);
    struct epoll_event evs[256];
    while (done + failed < n) {
        int k = epoll_wait(ep, evs, 256, 5000);
        if (k == 0) {
            fprintf(stderr, "stalled: done=%ld failed=%ld\n", done, failed);
            exit(1);
        }
        for (int i = 0; i < k; i++) {
            client_t *c = evs[i].data.ptr;
            if (step(c, keep) && next < n) {
                start(keep ? &cl[next] : c, next);
                next++;
            }
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 2)
        goto usage;
    const char *mode = argv[1];
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "-n") == 0)
            opt_n = atol(argv[i + 1]);
        else if (strcmp(argv[i], "-c") == 0)
            opt_c = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--port") == 0)
            opt_port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--ws") == 0)
            opt_ws = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--server-pid") == 0)
            opt_pid = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--token-file") == 0) {
            FILE *f = fopen(argv[i + 1], "r");
            if (f == NULL) {
                perror(argv[i + 1]);
                return 1;
            }
            token = calloc(1, 8192);
            if (fgets(token, 8192, f) == NULL)
                return 1;
            token[strcspn(token, "\r\n")] = '\0';
            fclose(f);
        } else
            goto usage;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    ep = epoll_create1(0);
    if (strcmp(mode, "storm") == 0) {
        client_t *cl = calloc((size_t)opt_c, sizeof(*cl));
        double cpu0 = server_cpu(), t0 = now_s();
        run(opt_n, opt_c, 0, cl);
        double dt = now_s() - t0, cpu = server_cpu() - cpu0;
        printf("scenario=storm n=%ld concurrency=%ld ok=%ld failed=%ld seconds=%.3f "
               "handshakes_per_s=%.0f server_cpu_s=%.3f handshakes_per_cpu_s=%.0f\n",
               opt_n, opt_c, done, failed, dt, (double)done / dt, cpu,
               cpu > 0 ? (double)done / cpu : 0);
        return failed != 0;
    }
    if (strcmp(mode, "idle") == 0) {
        client_t *cl = calloc((size_t)opt_n, sizeof(*cl));
        double rss0 = server_rss();
        run(opt_n, opt_n < 500 ? opt_n : 500, 1, cl);
        /* Let the server settle (freed request state) before sampling. */
        usleep(1000000);
        double rss1 = server_rss();
        printf("scenario=idle n=%ld ok=%ld failed=%ld rss_before=%.0f rss_after=%.0f "
               "rss_per_conn=%.0f transport=%s\n",
               opt_n, done, failed, rss0, rss1, (rss1 - rss0) / (double)(done ? done : 1),
               opt_ws ? "ws" : "sse");
        return failed != 0;
    }
usage:
    fprintf(stderr, "usage: handshake storm|idle -n N [-c C] [--port P] [--server-pid PID] "
                    "[--token-file F]\n");
    return 2;
}
