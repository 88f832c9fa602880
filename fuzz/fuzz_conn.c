/*
 * libFuzzer target: whole connections. Every input gets a real server (sl_server_start on a
 * fresh uv_loop_t, listening on 127.0.0.1 port 0, with lossy and lossless topics and small
 * limits) and up to three real TCP clients that write the input's bytes into it. Afterwards the
 * clients close, every deadline is made to pass, and the driver checks what must always hold:
 * no connection outlives its client, the server shuts down with every handle closed
 * (uv_loop_close() == 0), and the memory budget is back at the value it had before the server
 * started. While it runs, every event stream a client reads must consist of SSE lines only.
 *
 * Input format: byte 0 chooses how chunks are written (low 6 bits: write in pieces of that many
 * bytes with one loop iteration between pieces, 0 = whole chunk at once; bit 6: let the server
 * settle between pieces). The rest is split into chunks at the marker "~#~"; the byte after a
 * marker is an operation: bits 0-1 pick the client the following bytes go to (0-2; 3 is 0), bits
 * 2-4 an action on that client (1 settle, 2 advance the clock by (bits 5-7 + 1) seconds and run
 * the sweep, 3 shut down its writing side, 4 close it, 5 stop reading from it, 6 read from it
 * again; 0 and 7 just switch). A client connects when bytes are first written to it; its receive
 * buffer is small, so a client that stops reading soon stalls the server's writes to it.
 *
 * Time: the server's clock, sl_now_ms(), is replaced (the build links this target with
 * -Wl,--wrap=sl_now_ms, see __wrap_sl_now_ms) by a virtual clock: the real one plus whole
 * seconds added by the input. The driver runs the server's sweeps at that time; the configured
 * timeouts are placed half a second away from whole seconds so the few real milliseconds an
 * input takes never change the outcome. The server's own 250 ms sweep timer (libuv time) never
 * fires within a normal input.
 */
#define _GNU_SOURCE /* nftw */
#include "lib/budget.h"
#include "lib/config.h"
#include "core/hub.h"
#include "lib/log.h"
#include "store/lossless.h"
#include "core/metrics.h"
#include "net/conn.h"
#include "net/api.h"
#include "net/server.h"
#include "lib/util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NCLIENTS 3
#define MARKER "~#~"
#define MARKER_LEN 3
/* The server's budget for an input: far below the 1 MiB minimum of the configuration, so that
 * small inputs can fill it. */
#define FUZZ_BUDGET (256u << 10)
/* The longest the driver waits for the loop to settle or end before it calls it a hang. */
#define SETTLE_LIMIT_MS 10000
#define END_LIMIT_MS 5000
#define MAX_PIECES 256
/* Clients' receive buffers are small so that a client that stops reading stalls the server's
 * writes soon. */
#define CLIENT_RCVBUF 4096

enum {
    OP_SWITCH = 0,
    OP_SETTLE = 1,
    OP_TICK = 2,
    OP_SHUT_WR = 3,
    OP_CLOSE = 4,
    OP_STOP_READING = 5,
    OP_READ = 6,
};

/* What a client makes of the bytes it reads: HTTP responses, until one of them opens an event
 * stream (whose lines are then checked) or something else that is not checked. */
enum { RESP_HEAD = 0, RESP_BODY, RESP_SSE, RESP_OFF };

typedef struct client {
    int fd;   /* -1 when not connected */
    int resp; /* RESP_* */
    char head[4096];
    size_t head_len;
    size_t body_left; /* RESP_BODY */
    char line[8];     /* RESP_SSE: the start of the current line */
    size_t line_len;
    int broken;  /* the server reset or closed it: further bytes are dropped */
    int stalled; /* reads nothing, like a stopped browser tab */
} client_t;

static char data_dir[64];
static sl_config_t cfg;
static uv_loop_t loop;
static sl_server_t *srv;
static client_t clients[NCLIENTS];
static uint64_t clock_offset_ms;
static int trace; /* FUZZ_CONN_TRACE=1: copy what the server answers to stderr */

static const char config_text[] = "[server]\n"
                                  "listen = 127.0.0.1:0\n"
                                  "memory_limit = 1m\n"
                                  "header_timeout = 2500ms\n"
                                  "idle_timeout = 4500ms\n"
                                  "write_stall_timeout = 3500ms\n"
                                  "ws_ping_interval = 1500ms\n"
                                  "ws_pong_timeout = 1500ms\n"
                                  "ws_close_timeout = 2500ms\n"
                                  "shutdown_drain = 500ms\n"
                                  "topic_idle_ttl = 5500ms\n"
                                  "send_buffer = 4k\n"
                                  "disk_quota = 64k\n"
                                  "max_publish_wait = 3500ms\n"
                                  "log_level = error\n"
                                  "[limits]\n"
                                  "max_connections = 8\n"
                                  "max_connections_per_ip = 2\n"
                                  "max_header_bytes = 2048\n"
                                  "max_url_bytes = 2048\n"
                                  "max_message_bytes = 1k\n"
                                  "max_body_bytes = 4k\n"
                                  "max_topics_per_connection = 4\n"
                                  "max_topic_name = 1024\n"
                                  "max_topics = 16\n"
                                  "[topic \"*\"]\n"
                                  "max_messages = 8\n"
                                  "max_bytes = 4k\n"
                                  "heartbeat = 2500ms\n"
                                  "[topic \"m/*\"]\n"
                                  "max_messages = 1024\n"
                                  "max_bytes = 64k\n"
                                  "[topic \"d/*\"]\n"
                                  "overflow = disconnect\n"
                                  "lag_hard_messages = 4\n"
                                  "lag_soft_messages = 2\n"
                                  "lag_soft = 1500ms\n"
                                  "[topic \"ll/*\"]\n"
                                  "durability = lossless\n"
                                  "segment_bytes = 4k\n"
                                  "disk_quota = 16k\n"
                                  "cursor_ttl = 3500ms\n"
                                  "[topic \"ll/sync/*\"]\n"
                                  "fsync = always\n";

uint64_t __real_sl_now_ms(void);
uint64_t __wrap_sl_now_ms(void);

/* The server's clock: monotonic time plus what the input added. */
uint64_t __wrap_sl_now_ms(void)
{
    return __real_sl_now_ms() + clock_offset_ms;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void die(const char *what)
{
    fprintf(stderr, "fuzz_conn: %s\n", what);
    abort();
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    if (ftw->level > 0)
        remove(path);
    return 0;
}

/* Empties the data directory, so that every input starts from the same disk state. */
static void wipe_data_dir(void)
{
    nftw(data_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void remove_data_dir(void)
{
    wipe_data_dir();
    rmdir(data_dir);
}

static void setup_once(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    /* Lossless topics fsync; a memory file system makes that cheap. */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(data_dir, sizeof(data_dir), "%s/fuzz-conn-XXXXXX", base);
    if (mkdtemp(data_dir) == NULL)
        die("cannot create the data directory");
    atexit(remove_data_dir);
    sl_config_init(&cfg);
    if (sl_config_load_string(&cfg, "fuzz_conn", config_text, stderr) != 0)
        die("the built-in configuration is invalid");
    free(cfg.data_dir);
    cfg.data_dir = sl_strdup(data_dir);
    sl_log_level = SL_LOG_ERROR + 1;
    /* The clients write with MSG_NOSIGNAL; this covers the moments between servers, when the
     * server's SIGPIPE watcher has been closed and the disposition reset. */
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < NCLIENTS; i++)
        clients[i].fd = -1;
    trace = getenv("FUZZ_CONN_TRACE") != NULL;
}

/* The header block of one response is complete in cl->head: decide what follows it. */
static void response_head(client_t *cl)
{
    cl->head[cl->head_len] = '\0';
    const char *h = cl->head;
    if (strncmp(h, "HTTP/1.1 ", 9) != 0) {
        cl->resp = RESP_OFF;
        return;
    }
    int status = atoi(h + 9);
    const char *cl_hdr = strcasestr(h, "\r\nContent-Length: ");
    if (status == 100) {
        cl->resp = RESP_HEAD;
    } else if (status == 200 && strcasestr(h, "\r\nContent-Type: text/event-stream\r\n")) {
        cl->resp = RESP_SSE;
        cl->line_len = 0;
    } else if (status != 101 && cl_hdr != NULL) {
        cl->body_left = strtoul(cl_hdr + 18, NULL, 10);
        cl->resp = cl->body_left > 0 ? RESP_BODY : RESP_HEAD;
    } else {
        cl->resp = RESP_OFF; /* a WebSocket, or something this reader does not follow */
    }
    cl->head_len = 0;
}

/* 1 if `p` (n bytes, the whole line if `ended`) can begin a line of an event stream. */
static int sse_line_ok(const char *p, size_t n, int ended)
{
    static const char *const fields[] = {"data:", "id:", "event:", "retry:", ":"};
    if (n == 0)
        return ended;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        size_t fl = strlen(fields[i]);
        size_t k = n < fl ? n : fl;
        if (memcmp(p, fields[i], k) == 0 && (k == fl || !ended))
            return 1;
    }
    return 0;
}

static void bad_sse_line(const client_t *cl)
{
    fprintf(stderr, "fuzz_conn: event stream line begins with:");
    for (size_t i = 0; i < cl->line_len; i++)
        fprintf(stderr, " %02x", (unsigned char)cl->line[i]);
    fprintf(stderr, "\n");
    die("malformed line in an event stream");
}

/* Follows the responses a client reads. An event stream must consist of SSE lines only: a
 * marker or message whose bytes were overwritten shows up here, even where the sanitizers see
 * nothing (a buffer overrun inside one allocation). */
static void client_parse(client_t *cl, const char *p, size_t n)
{
    while (n > 0 && cl->resp != RESP_OFF) {
        if (cl->resp == RESP_BODY) {
            size_t k = n < cl->body_left ? n : cl->body_left;
            cl->body_left -= k;
            p += k;
            n -= k;
            if (cl->body_left == 0)
                cl->resp = RESP_HEAD;
        } else if (cl->resp == RESP_HEAD) {
            if (cl->head_len + 1 >= sizeof(cl->head)) {
                cl->resp = RESP_OFF;
                break;
            }
            cl->head[cl->head_len++] = *p++;
            n--;
            if (cl->head_len >= 4 && memcmp(cl->head + cl->head_len - 4, "\r\n\r\n", 4) == 0)
                response_head(cl);
        } else {
            char ch = *p++;
            n--;
            if (ch == '\n') {
                if (!sse_line_ok(cl->line, cl->line_len, 1))
                    bad_sse_line(cl);
                cl->line_len = 0;
            } else if (cl->line_len < sizeof(cl->line)) {
                cl->line[cl->line_len++] = ch;
                if (!sse_line_ok(cl->line, cl->line_len, 0))
                    bad_sse_line(cl);
            }
        }
    }
}

/* Reads whatever the server sent, checks event streams, and discards the rest; returns the
 * number of bytes read. */
static size_t drain_clients(void)
{
    static char buf[16384];
    size_t total = 0;
    for (int i = 0; i < NCLIENTS; i++) {
        client_t *cl = &clients[i];
        if (cl->fd < 0 || cl->stalled)
            continue;
        for (;;) {
            ssize_t n = recv(cl->fd, buf, sizeof(buf), MSG_DONTWAIT);
            if (n > 0) {
                total += (size_t)n;
                if (trace)
                    fprintf(stderr, "[client %d] %.*s\n", i, (int)n, buf);
                client_parse(cl, buf, (size_t)n);
                continue;
            }
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                cl->broken = 1;
            break;
        }
    }
    return total;
}

/* Requests in flight on the connections' sockets: writes and shutdowns. */
static unsigned socket_reqs(void)
{
    unsigned n = 0;
    sl_list_t *it;
    for (it = srv->conns.next; it != &srv->conns; it = it->next) {
        const sl_conn_t *c = sl_container_of(it, sl_conn_t, link);
        n += c->pending_writes + (c->tcp.shutdown_req != NULL);
    }
    return n;
}

/* Requests in flight elsewhere: thread-pool jobs and file operations of the lossless logs. */
static unsigned background_reqs(void)
{
    unsigned all = loop.active_reqs.count, net = socket_reqs();
    return all > net ? all - net : 0;
}

/* One loop iteration that does not block, then the clients read; then the loop runs until the
 * thread pool is idle, so that when its jobs complete does not depend on the threads' speed. */
static size_t step(void)
{
    uv_run(&loop, UV_RUN_NOWAIT);
    size_t got = drain_clients();
    uint64_t start = wall_ms();
    while (background_reqs() > 0 && wall_ms() - start < SETTLE_LIMIT_MS) {
        sched_yield();
        uv_run(&loop, UV_RUN_NOWAIT);
        got += drain_clients();
    }
    return got;
}

static int any_stalled(void)
{
    for (int i = 0; i < NCLIENTS; i++) {
        if (clients[i].fd >= 0 && clients[i].stalled)
            return 1;
    }
    return 0;
}

/* Runs the loop until nothing moves, twice in a row: no bytes for the clients, no flush
 * pending, no write in flight, except writes to clients that stopped reading, which never
 * complete: those only must not change. step() has already waited for the thread pool. */
static void settle(void)
{
    uint64_t start = wall_ms();
    int quiet = 0, stalled = any_stalled();
    unsigned net = socket_reqs();
    while (quiet < 2) {
        size_t got = step();
        unsigned now_net = socket_reqs();
        if (got == 0 && !sl_hub_pending(&srv->hub) && (now_net == 0 || (stalled && now_net == net)))
            quiet++;
        else
            quiet = 0;
        net = now_net;
        if (wall_ms() - start > SETTLE_LIMIT_MS)
            return; /* something keeps moving; the caller's checks decide */
    }
}

/* What the server's sweep timer does, at the virtual time: deadlines, heartbeats, write
 * stalls, pings, topic ages and idle topics, waiting publishers. */
static void sweep(void)
{
    uint64_t now = sl_now_ms();
    sl_list_t *it, *tmp;
    sl_list_each_safe(it, tmp, &srv->conns)
    {
        sl_conn_tick(sl_container_of(it, sl_conn_t, link), now);
    }
    sl_hub_sweep(&srv->hub, now);
    sl_hub_sweep_storage(&srv->hub, now);
    if (sl_hub_pending(&srv->hub))
        sl_server_kick(srv);
}

static void client_close(client_t *cl)
{
    if (cl->fd >= 0)
        close(cl->fd);
    cl->fd = -1;
    cl->broken = 0;
    cl->stalled = 0;
    cl->resp = RESP_HEAD;
    cl->head_len = 0;
}

static void client_connect(client_t *cl)
{
    cl->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (cl->fd < 0)
        die("socket");
    int rcvbuf = CLIENT_RCVBUF;
    setsockopt(cl->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)srv->port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(cl->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS)
        die("connect");
    /* Wait until the server has accepted it, so that the order of events is the input's. */
    size_t before = srv->nconns;
    uint64_t start = wall_ms();
    while (srv->nconns == before) {
        step();
        if (wall_ms() - start > SETTLE_LIMIT_MS)
            die("the server did not accept a connection");
    }
}

/* Writes one piece; a server that stopped reading gets a chance to catch up, then the rest of
 * the piece is dropped. */
static void client_write(client_t *cl, const uint8_t *p, size_t n)
{
    int stuck = 0;
    while (n > 0 && !cl->broken) {
        ssize_t w = send(cl->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            stuck = 0;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (++stuck > 2)
                return;
            settle();
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else {
            cl->broken = 1;
        }
    }
}

static void write_chunk(client_t *cl, const uint8_t *p, size_t n, unsigned mode)
{
    if (n == 0)
        return;
    if (cl->fd < 0)
        client_connect(cl);
    size_t piece = mode & 63;
    if (piece == 0)
        piece = n;
    /* Each piece costs a loop iteration: keep a large chunk to a bounded number of them. */
    if (piece < n / MAX_PIECES)
        piece = n / MAX_PIECES;
    for (size_t off = 0; off < n; off += piece) {
        client_write(cl, p + off, n - off < piece ? n - off : piece);
        if (mode & 64)
            settle();
        else
            step();
    }
    settle();
}

static void do_op(uint8_t op)
{
    client_t *cl = &clients[(op & 3) == 3 ? 0 : op & 3];
    switch ((op >> 2) & 7) {
    case OP_SETTLE:
        settle();
        break;
    case OP_TICK:
        clock_offset_ms += ((uint64_t)(op >> 5) + 1) * 1000;
        sweep();
        settle();
        break;
    case OP_SHUT_WR:
        if (cl->fd >= 0)
            shutdown(cl->fd, SHUT_WR);
        settle();
        break;
    case OP_CLOSE:
        client_close(cl);
        settle();
        break;
    case OP_STOP_READING:
        cl->stalled = 1;
        break;
    case OP_READ:
        cl->stalled = 0;
        settle();
        break;
    default:
        break;
    }
}

static const uint8_t *find_marker(const uint8_t *p, const uint8_t *end)
{
    for (; p + MARKER_LEN <= end; p++) {
        if (memcmp(p, MARKER, MARKER_LEN) == 0)
            return p;
    }
    return NULL;
}

/* Closes every client and lets every deadline pass until the server has no connection left. */
static void close_all(void)
{
    for (int i = 0; i < NCLIENTS; i++)
        client_close(&clients[i]);
    settle();
    /* A publisher parked on a full lossless topic is not read, so it sees its client's close
     * only after its wait ends; a lingering close ends at its deadline. Each round moves the
     * clock past every configured timeout. */
    for (int round = 0; round < 4 && srv->nconns > 0; round++) {
        clock_offset_ms += 3600 * 1000;
        sweep();
        settle();
    }
    if (srv->nconns != 0)
        die("a connection outlived its client");
    if (sl_metrics.connections != 0)
        die("the connections gauge is not 0 with no connection left");
}

/* Shuts the server down, runs the loop until it ends, and checks that nothing leaked. */
static void stop_server(uint64_t budget_before)
{
    sl_server_shutdown(srv);
    uint64_t start = wall_ms();
    while (uv_loop_alive(&loop)) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (loop.active_reqs.count > 0)
            sched_yield();
        if (wall_ms() - start > END_LIMIT_MS) {
            uv_print_all_handles(&loop, stderr);
            die("the loop did not end after shutdown");
        }
    }
    sl_server_dispose(srv);
    free(srv);
    srv = NULL;
    if (uv_loop_close(&loop) != 0) {
        uv_print_all_handles(&loop, stderr);
        die("uv_loop_close failed: a handle leaked");
    }
    if (sl_budget.used != budget_before) {
        fprintf(stderr, "fuzz_conn: budget used %llu, was %llu before the server started\n",
                (unsigned long long)sl_budget.used, (unsigned long long)budget_before);
        die("the memory budget did not return to its starting value");
    }
    signal(SIGPIPE, SIG_IGN);
    wipe_data_dir();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    setup_once();
    uint64_t budget_before = sl_budget.used;
    clock_offset_ms = 0;
    if (uv_loop_init(&loop) != 0)
        die("uv_loop_init");
    srv = sl_calloc(1, sizeof(*srv));
    if (sl_server_start(srv, &loop, &cfg) != 0)
        die("the server did not start");
    sl_api_install(srv);
    sl_budget_set_limit(FUZZ_BUDGET, FUZZ_BUDGET / 4);

    unsigned mode = data[0];
    const uint8_t *p = data + 1, *end = data + size;
    client_t *cl = &clients[0];
    for (;;) {
        const uint8_t *m = find_marker(p, end);
        write_chunk(cl, p, (size_t)((m ? m : end) - p), mode);
        if (m == NULL || m + MARKER_LEN >= end)
            break;
        uint8_t op = m[MARKER_LEN];
        cl = &clients[(op & 3) == 3 ? 0 : op & 3];
        do_op(op);
        p = m + MARKER_LEN + 1;
    }

    close_all();
    stop_server(budget_before);
    return 0;
}
