/*
 * Unit tests of connections. The input gate: sl_conn_input_wanted decides from a connection's
 * state alone whether its socket is read, and sl_conn_input_blocked keeps the replies backlog's
 * high and low marks; every state is driven here (a connection read while a publish is parked,
 * its replies are backed up, or held-back input waits, is the defect class the gate exists to
 * prevent). Then whole connections on a real loop: a server on 127.0.0.1 and connected socket
 * pairs driven by the test between loop turns; every such test ends with the connections gone,
 * the budget back at its start and uv_loop_close() == 0.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/budget.h"
#include "lib/log.h"
#include "net/api.h"
#include "net/ws_conn.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* One row: the fields that matter and whether the socket must be read. */
typedef struct gate_case {
    uint8_t state, closing, parked, out_blocked, input_held, deferred, peer_eof;
    size_t stash_len;
    int want;
} gate_case_t;

#define FULL (64u << 10) /* a stash at its cap */

static void test_input_wanted_every_state(void **state)
{
    (void)state;
    static const gate_case_t cases[] = {
        /* HTTP: read when nothing blocks. Blocked (parked, replies backed up, input held back):
         * read into the stash until it is full, so a peer that goes away is seen. */
        {SL_CONN_REQUEST, 0, 0, 0, 0, 0, 0, 0, 1},
        {SL_CONN_REQUEST, 0, SL_WAIT_ROOM, 0, 1, 0, 0, 0, 1},
        {SL_CONN_REQUEST, 0, SL_WAIT_ROOM, 0, 1, 0, 0, FULL - 1, 1},
        {SL_CONN_REQUEST, 0, SL_WAIT_ROOM, 0, 1, 0, 0, FULL, 0},
        {SL_CONN_REQUEST, 0, SL_WAIT_DURABLE, 0, 1, 0, 0, FULL, 0},
        {SL_CONN_REQUEST, 0, 0, 1, 0, 0, 0, FULL, 0},
        {SL_CONN_REQUEST, 0, 0, 1, 1, 0, 0, 10, 1},
        {SL_CONN_REQUEST, 0, 0, 0, 1, 0, 0, FULL, 0},
        {SL_CONN_REQUEST, 0, SL_WAIT_ROOM, 1, 1, 0, 0, FULL + 5, 0},
        /* a deferred connection waits for the next loop turn */
        {SL_CONN_REQUEST, 0, 0, 0, 0, 1, 0, 0, 0},
        /* after the peer's FIN nothing more is read; closing: nothing at all */
        {SL_CONN_REQUEST, 0, SL_WAIT_ROOM, 0, 1, 0, 1, 0, 0},
        {SL_CONN_REQUEST, 0, 0, 0, 0, 0, 1, 0, 0},
        {SL_CONN_REQUEST, 1, 0, 0, 0, 0, 0, 0, 0},
        /* WebSocket: the same rules */
        {SL_CONN_DUPLEX, 0, 0, 0, 0, 0, 0, 0, 1},
        {SL_CONN_DUPLEX, 0, SL_WAIT_ROOM, 0, 1, 0, 0, 0, 1},
        {SL_CONN_DUPLEX, 0, SL_WAIT_ROOM, 0, 1, 0, 0, FULL, 0},
        {SL_CONN_DUPLEX, 0, SL_WAIT_DURABLE, 0, 1, 0, 0, FULL, 0},
        {SL_CONN_DUPLEX, 0, 0, 1, 1, 0, 0, FULL, 0},
        {SL_CONN_DUPLEX, 0, 0, 0, 0, 1, 0, 0, 0},
        {SL_CONN_DUPLEX, 1, 0, 0, 0, 0, 0, 0, 0},
        /* SSE and lingering connections: input is discarded, the FIN must be seen */
        {SL_CONN_STREAM, 0, 0, 0, 0, 0, 0, 0, 1},
        {SL_CONN_STREAM, 0, 0, 1, 0, 0, 0, 0, 1},
        {SL_CONN_STREAM, 1, 0, 0, 0, 0, 0, 0, 0},
        {SL_CONN_LINGER, 0, 0, 0, 0, 0, 0, 0, 1},
        {SL_CONN_LINGER, 0, 0, 1, 1, 0, 0, FULL, 1},
        {SL_CONN_LINGER, 1, 0, 0, 0, 0, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const gate_case_t *k = &cases[i];
        sl_conn_t c;
        memset(&c, 0, sizeof(c));
        c.state = k->state;
        c.tp = &sl_http1_transport;
        c.closing = k->closing;
        c.parked = k->parked;
        c.out_blocked = k->out_blocked;
        c.input_held = k->input_held;
        c.deferred = k->deferred;
        c.peer_eof = k->peer_eof;
        c.stash_len = k->stash_len;
        if (sl_conn_input_wanted(&c) != k->want)
            fail_msg("case %zu: state=%u closing=%u parked=%u out_blocked=%u held=%u "
                     "deferred=%u eof=%u stash=%zu: want %d",
                     i, k->state, k->closing, k->parked, k->out_blocked, k->input_held, k->deferred,
                     k->peer_eof, k->stash_len, k->want);
    }
}

static void test_input_blocked_marks(void **state)
{
    (void)state;
    sl_conn_t c;
    memset(&c, 0, sizeof(c));
    c.state = SL_CONN_REQUEST;
    c.tp = &sl_http1_transport;
    assert_false(sl_conn_input_blocked(&c));
    c.tcp.write_queue_size = 64u << 10; /* at the high mark: not past it */
    assert_false(sl_conn_input_blocked(&c));
    c.tcp.write_queue_size = (64u << 10) + 1;
    assert_true(sl_conn_input_blocked(&c));
    c.input_held = 1;
    c.stash_len = FULL;
    assert_false(sl_conn_input_wanted(&c));
    c.input_held = 0;
    c.stash_len = 0;
    c.tcp.write_queue_size = 20u << 10; /* between the marks: still blocked */
    assert_true(sl_conn_input_blocked(&c));
    c.tcp.write_queue_size = 16u << 10; /* at the low mark: unblocked */
    assert_false(sl_conn_input_blocked(&c));
    assert_true(sl_conn_input_wanted(&c));
    /* A WebSocket's queued answers count as well as the socket's queue. */
    sl_ws_t ws;
    memset(&ws, 0, sizeof(ws));
    c.ws = &ws;
    c.tp = &sl_ws_transport;
    c.state = SL_CONN_DUPLEX;
    c.tcp.write_queue_size = 40u << 10;
    ws.out_len = 40u << 10;
    assert_true(sl_conn_input_blocked(&c));
    ws.out_len = 0;
    c.tcp.write_queue_size = 0;
    assert_false(sl_conn_input_blocked(&c));
    /* A parked publish blocks whatever the backlog. */
    c.parked = SL_WAIT_ROOM;
    assert_true(sl_conn_input_blocked(&c));
}

/* ---- whole connections on a real loop ---------------------------------------------------- */

static uv_loop_t loop;
static sl_server_t *srv;
static sl_config_t cfg;
static uint64_t budget_start;
static char data_dir[64];

static int loop_setup(void **state)
{
    (void)state;
    snprintf(data_dir, sizeof(data_dir), "/tmp/sluice-test-conn-XXXXXX");
    assert_non_null(mkdtemp(data_dir));
    sl_config_init(&cfg);
    char text[512];
    snprintf(text, sizeof(text),
             "[server]\nlisten = 127.0.0.1:0\nlog_level = error\ndata_dir = %s\n"
             "[topic \"ll/*\"]\ndurability = lossless\nsegment_bytes = 4k\ndisk_quota = 8k\n",
             data_dir);
    assert_int_equal(sl_config_load_string(&cfg, "test", text, stderr), 0);
    sl_log_level = cfg.log_level;
    budget_start = sl_budget.used;
    assert_int_equal(uv_loop_init(&loop), 0);
    srv = sl_calloc(1, sizeof(*srv));
    assert_int_equal(sl_server_start(srv, &loop, &cfg), 0);
    sl_api_install(srv);
    return 0;
}

/* Runs the loop until it has nothing left to do now (bounded). */
static void settle(void)
{
    for (int i = 0; i < 20; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(500);
    }
}

static int loop_teardown(void **state)
{
    (void)state;
    sl_server_shutdown(srv);
    for (int i = 0; i < 5000 && uv_run(&loop, UV_RUN_NOWAIT) != 0; i++)
        usleep(1000);
    assert_int_equal(srv->nconns, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    sl_server_dispose(srv);
    free(srv);
    assert_int_equal(sl_budget.used, budget_start);
    sl_config_dispose(&cfg);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", data_dir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

/* A client: a connected, non-blocking socket with a small receive buffer. */
static int client_new(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    int rcv = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)srv->port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    settle();
    return fd;
}

static void send_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN) {
            uv_run(&loop, UV_RUN_NOWAIT);
            continue;
        }
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

/* Reads what the server sent so far into buf (NUL-terminated); returns the length. */
static size_t recv_some(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    for (int i = 0, idle = 0; i < 400 && n + 1 < cap && idle < 20; i++) {
        settle();
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        if (r > 0) {
            n += (size_t)r;
            idle = 0;
        } else if (r == 0 || errno != EAGAIN) {
            break;
        } else if (n > 0) {
            idle++;
        }
    }
    buf[n] = '\0';
    return n;
}

/* The newest connection of the server, or NULL. */
static sl_conn_t *newest_conn(void)
{
    if (srv->nconns == 0)
        return NULL;
    return sl_container_of(srv->conns.prev, sl_conn_t, link);
}

static int count(const char *s, const char *what)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, what)) != NULL; p += strlen(what))
        n++;
    return n;
}

/* A pipelining peer that reads nothing: input stops within the read once the replies pass the
 * high mark, the socket is no longer read once the stash is full, and everything resumes and
 * is answered, in order, when the peer reads. */
static void test_unread_replies_stop_input(void **state)
{
    (void)state;
    int fd = client_new();
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    /* Enough answers to fill what the kernel buffers for the peer (an autotuned send buffer
     * takes up to 4 MiB) and then our queue. */
    enum { N = 60000 };
    char *all = malloc(N * (sizeof(req) - 1));
    for (int i = 0; i < N; i++)
        memcpy(all + i * (sizeof(req) - 1), req, sizeof(req) - 1);
    size_t sent = 0, total = N * (sizeof(req) - 1);
    for (int i = 0, idle = 0; i < 20000 && sent < total && idle < 200; i++) {
        ssize_t w = send(fd, all + sent, total - sent, MSG_NOSIGNAL);
        if (w > 0) {
            sent += (size_t)w;
            idle = 0;
        } else {
            idle++;
        }
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    sl_conn_t *c = newest_conn();
    assert_non_null(c);
    for (int i = 0; i < 1000 && !c->input_held; i++)
        settle();
    assert_true(c->out_blocked);
    assert_true(c->input_held);
    assert_true(c->stash_len <= (64u << 10) + srv->rbuf_size);
    assert_true(c->tcp.write_queue_size <= (64u << 10) + 4096);
    /* The peer reads: every request is answered, in order. */
    char *buf = malloc(1 << 16);
    int answers = 0;
    size_t carry = 0;
    for (int i = 0; i < 200000 && answers < N; i++) {
        if (sent < total) {
            ssize_t w = send(fd, all + sent, total - sent, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        /* The last bytes of the previous read come first: an answer may span two reads. */
        ssize_t r = recv(fd, buf + carry, (1 << 16) - 1 - carry, 0);
        if (r > 0) {
            size_t n = carry + (size_t)r;
            buf[n] = '\0';
            answers += count(buf, "HTTP/1.1 200 OK");
            carry = n < 14 ? n : 14; /* shorter than the needle: never counted twice */
            memmove(buf, buf + n - carry, carry);
        }
    }
    assert_int_equal(answers, N);
    free(buf);
    free(all);
    close(fd);
    settle();
}

/* A parked publish (full lossless topic, ?wait=) behind a pipelined GET: the answered GET does
 * not turn reading back on under it, the bytes that follow wait, and a peer that goes away
 * meanwhile is seen and the connection freed. */
static void test_parked_publish_then_peer_leaves(void **state)
{
    (void)state;
    /* A durable reader that never acknowledges pins the log; fill the 8 KiB quota. */
    int sub = client_new();
    static const char subreq[] =
        "GET /topics/ll/p?durable=c HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    send_all(sub, subreq, sizeof(subreq) - 1);
    settle();
    close(sub);
    settle();
    int pub = client_new();
    char body[1024];
    memset(body, 'x', sizeof(body));
    char head[128];
    int full = 0;
    for (int i = 0; i < 64 && !full; i++) {
        int hl = snprintf(head, sizeof(head),
                          "POST /topics/ll/p HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n",
                          sizeof(body));
        send_all(pub, head, (size_t)hl);
        send_all(pub, body, sizeof(body));
        char ans[4096];
        recv_some(pub, ans, sizeof(ans));
        full = strstr(ans, "429") != NULL;
    }
    assert_true(full);
    static const char pipelined[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                                    "POST /topics/ll/p?wait=20s HTTP/1.1\r\nHost: x\r\n"
                                    "Content-Length: 5\r\n\r\nhello";
    send_all(pub, pipelined, sizeof(pipelined) - 1);
    char ans[4096];
    recv_some(pub, ans, sizeof(ans));
    assert_non_null(strstr(ans, "200 OK"));
    sl_conn_t *c = newest_conn();
    assert_non_null(c);
    for (int i = 0; i < 1000 && !c->parked; i++)
        settle();
    assert_true(c->parked);
    send_all(pub, "GE", 2); /* held: read into the stash, not handled */
    for (int i = 0; i < 1000 && c->stash_len < 2; i++)
        settle();
    assert_true(c->parked);
    assert_int_equal(c->stash_len, 2);
    close(pub); /* gone: seen at once, not at the 20 s deadline */
    for (int i = 0; i < 1000 && srv->nconns > 0; i++)
        settle();
    assert_int_equal(srv->nconns, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_input_wanted_every_state),
        cmocka_unit_test(test_input_blocked_marks),
        cmocka_unit_test_setup_teardown(test_unread_replies_stop_input, loop_setup, loop_teardown),
        cmocka_unit_test_setup_teardown(test_parked_publish_then_peer_leaves, loop_setup,
                                        loop_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
