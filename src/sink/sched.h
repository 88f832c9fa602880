/*
 * The sink streams' scheduler: which state a stream with a batch goes to and what will wake
 * it, shared by webhook and file sinks. Pure: no libuv, no curl; the effects (timers, sending,
 * asking the hub for more) go through an ops table, so a unit test can drive it with random
 * interleavings (test/unit/test_sched.c).
 *
 * States, and what wakes a stream from each (nothing parks without a wake-up):
 *
 *   IDLE          no batch; the hub's deliver (an append, a read-back) gives it one
 *   LINGER        waiting for a batch to fill        ── its timer
 *   WAIT_BREG     registry full of busy breakers     ── a breaker became idle, or a sweep
 *   WAIT_SLOT     in-flight caps (all, sink, origin) ── a request (or file write) finished
 *   WAIT_BREAKER  its origin's breaker is open       ── its timer (sl_breaker_next_ms), or a
 *                                                       probe that closed the breaker
 *   SENDING       a request or write in flight       ── its completion (sl_sched_done)
 *   BACKOFF       after a failure                    ── its timer
 *   STOPPED       poison without dead letter, 410    ── none: it stays
 *
 * sl_sched_try() performs IDLE/timer/wait-list → WAIT_* | SENDING; sl_sched_done() ends
 * SENDING (the caller then picks backoff, idle or try again); sl_sched_idle(), _backoff(),
 * _linger(), _stop() perform the others. A stream holds its breaker (`users`) from its first
 * try until it is idle or stopped, so idle streams leave their breakers evictable.
 */
#ifndef SL_SINK_SCHED_H
#define SL_SINK_SCHED_H

#include "lib/util.h"
#include "sink/breaker.h"

#include <stddef.h>
#include <stdint.h>

enum {
    SL_SS_IDLE = 0,
    SL_SS_LINGER,
    SL_SS_WAIT_BREG,
    SL_SS_WAIT_SLOT,
    SL_SS_WAIT_BREAKER,
    SL_SS_SENDING,
    SL_SS_BACKOFF,
    SL_SS_STOPPED,
};
const char *sl_ss_state_name(int state);

/* One sink's share: its in-flight count and cap. File sinks have no breaker and do not count
 * against the server-wide request cap. Embedded in the sink. */
typedef struct sl_ss_group {
    uint64_t inflight, cap;
    int no_breaker;
    int disabled; /* streams that try stop (the sink got 410) */
} sl_ss_group_t;

/* One stream's scheduling part, embedded in the stream. */
typedef struct sl_ss {
    int state;
    int has_batch; /* the caller's: something to send (messages or a gap) */
    int timer_on;  /* mirrors the stream's timer (for the invariants) */
    sl_list_t wait_link;
    sl_breg_entry_t *brk;
    const char *origin;
    size_t origin_len;
    sl_ss_group_t *group;
} sl_ss_t;

typedef struct sl_ss_ops {
    /* Starts the stream's timer (delay_ms > 0) or stops it (0). */
    void (*timer)(sl_ss_t *ss, uint64_t delay_ms);
    /* Sends the batch (a request, a file write): the state is SENDING and the slots counted. */
    void (*start)(sl_ss_t *ss);
    /* The stream became idle: the hub may deliver to it again. */
    void (*ready)(sl_ss_t *ss);
    /* Its sink was disabled: stop the stream (sl_sched_stop) and count it. */
    void (*disabled)(sl_ss_t *ss);
} sl_ss_ops_t;

/* Shared by every sink. Owned by the sinks. */
typedef struct sl_sched {
    sl_breg_t *breg;
    const sl_ss_ops_t *ops;
    sl_list_t wait_breg, wait_slot, wait_breaker;
    uint64_t inflight; /* requests (not file writes) in flight */
    uint64_t max_inflight, max_host;
    int stopping; /* nothing new starts */
} sl_sched_t;

void sl_sched_init(sl_sched_t *s, sl_breg_t *breg, const sl_ss_ops_t *ops, uint64_t max_inflight,
                   uint64_t max_host);
void sl_ss_init(sl_ss_t *ss, sl_ss_group_t *g, const char *origin, size_t origin_len);

/* A stream with a batch (or woken from a wait) tries to send it. */
void sl_sched_try(sl_sched_t *s, sl_ss_t *ss, uint64_t now_ms);
/* Ends SENDING: releases the slots and, when `report`, tells the breaker the outcome. Returns
 * 1 when that closed a breaker that was not closed (pass it to sl_sched_wake). The stream's
 * next state is the caller's choice. */
int sl_sched_done(sl_sched_t *s, sl_ss_t *ss, int report, int ok, uint64_t now_ms);
/* After a completion has been handled: streams waiting for a slot (and, when `reopened`, on
 * breakers) try again. */
void sl_sched_wake(sl_sched_t *s, int reopened, uint64_t now_ms);
/* Its timer fired. */
void sl_sched_timer(sl_sched_t *s, sl_ss_t *ss, uint64_t now_ms);
void sl_sched_backoff(sl_sched_t *s, sl_ss_t *ss, uint64_t delay_ms);
void sl_sched_linger(sl_sched_t *s, sl_ss_t *ss, uint64_t delay_ms);
/* The batch is done: the breaker is released, the stream idle and the hub told (unless
 * stopping). */
void sl_sched_idle(sl_sched_t *s, sl_ss_t *ss, uint64_t now_ms);
/* For good: out of every list, timer stopped, breaker released. */
void sl_sched_stop(sl_sched_t *s, sl_ss_t *ss, uint64_t now_ms);
/* Releases the stream's breaker (waking registry waiters if it became idle). */
void sl_sched_release(sl_sched_t *s, sl_ss_t *ss, uint64_t now_ms);
/* TTL sweep of the registry; registry waiters try again when it freed entries. */
void sl_sched_sweep(sl_sched_t *s, uint64_t now_ms);

#endif
