/*
 * Unit tests of the connection's input gate: sl_conn_input_wanted decides from a connection's
 * state alone whether its socket is read, and sl_conn_input_blocked keeps the replies backlog's
 * high and low marks. Every state is driven here: a connection that is read while a publish is
 * parked, while its replies are backed up, or while held-back input waits, is the defect
 * class this gate exists to prevent.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "net/ws_conn.h"

#include <string.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_input_wanted_every_state),
        cmocka_unit_test(test_input_blocked_marks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
