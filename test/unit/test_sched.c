/*
 * Unit test of the sink streams' scheduler (sink/sched.h) under random interleavings of every
 * event that can wake a stream: an append, a disk read-back, a request (or file write) done
 * with any outcome, a backoff, linger or breaker timer, a registry sweep. After every step it
 * checks that no stream is parked without a pending wake-up (the missed-wake-up bug class),
 * and at the end that every stream, the endpoints healed, delivers everything it was owed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/budget.h"
#include "lib/util.h"
#include "sink/sched.h"

#include <stdio.h>
#include <string.h>

#define NSTREAMS 12
#define NORIGINS 4
#define BATCH_MAX 3

typedef struct fstream {
    sl_ss_t ss;
    int owed;          /* messages appended, not yet delivered */
    int batch;         /* messages in the batch held */
    int ready;         /* the hub will deliver to it (its pending wake-up while idle) */
    int fetch_pending; /* a disk read-back will wake it */
    int lingered;
    int sending;
    uint64_t timer_at; /* 0: no timer */
} fstream_t;

static sl_sched_t sched;
static sl_breg_t breg;
static sl_ss_group_t groups[3];
static fstream_t streams[NSTREAMS];
static char origins[NORIGINS][16];
static uint64_t now;
static uint64_t rng;
static int healed; /* the endpoints answer 2xx from now on */

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static fstream_t *of(sl_ss_t *ss)
{
    return sl_container_of(ss, fstream_t, ss);
}

static void op_timer(sl_ss_t *ss, uint64_t delay)
{
    of(ss)->timer_at = delay > 0 ? now + delay : 0;
}

static void op_start(sl_ss_t *ss)
{
    of(ss)->sending = 1;
}

static void op_ready(sl_ss_t *ss)
{
    of(ss)->ready = 1;
}

static void op_disabled(sl_ss_t *ss)
{
    sl_sched_stop(&sched, ss, now);
}

static const sl_ss_ops_t ops = {
    .timer = op_timer, .start = op_start, .ready = op_ready, .disabled = op_disabled};

static const sl_breaker_conf_t bconf = {
    .failures = 3, .open_ms = 20, .open_max_ms = 80, .probe_timeout = 30};

static void setup_world(uint64_t seed)
{
    rng = seed * 2654435761u + 1;
    now = 1000;
    healed = 0;
    sl_breg_init(&breg, 2, 100, &bconf); /* fewer breakers than origins: streams wait */
    sl_sched_init(&sched, &breg, &ops, 3, 2);
    memset(groups, 0, sizeof(groups));
    groups[0].cap = 2;
    groups[1].cap = 2;
    groups[2].cap = 1;
    groups[2].no_breaker = 1; /* a file sink */
    for (int i = 0; i < NORIGINS; i++)
        snprintf(origins[i], sizeof(origins[i]), "http://o%d:80", i);
    for (int i = 0; i < NSTREAMS; i++) {
        fstream_t *f = &streams[i];
        memset(f, 0, sizeof(*f));
        const char *o = origins[i % NORIGINS];
        sl_ss_init(&f->ss, &groups[i % 3], o, strlen(o));
    }
}

/* The hub's deliver (webhook.c stream_deliver, reduced): a batch from what is owed. */
static void deliver(fstream_t *f)
{
    if (f->ss.state != SL_SS_IDLE || f->owed == 0)
        return;
    if (!healed && rnd(5) == 0) {
        f->fetch_pending = 1; /* behind the ring: a read-back will wake it */
        return;
    }
    if (!f->lingered && rnd(4) == 0) {
        f->lingered = 1;
        sl_sched_linger(&sched, &f->ss, 1 + rnd(10));
        return;
    }
    f->lingered = 0;
    f->batch = f->owed < BATCH_MAX ? f->owed : BATCH_MAX;
    f->ss.has_batch = 1;
    sl_sched_try(&sched, &f->ss, now);
}

static void hub_flush(void)
{
    for (int i = 0; i < NSTREAMS; i++) {
        fstream_t *f = &streams[i];
        if (f->ready) {
            f->ready = 0;
            deliver(f);
        }
    }
}

/* A completion, as webhook.c request_done/file_done handle it. */
static void complete(fstream_t *f)
{
    f->sending = 0;
    int outcome = healed ? 0 : (int)rnd(10); /* 0-5 ok, 6-8 retry, 9 reject */
    int ok = outcome <= 5 || outcome == 9;
    int reopened = sl_sched_done(&sched, &f->ss, 1, ok, now);
    if (outcome <= 5) {
        f->owed -= f->batch;
        f->batch = 0;
        f->ss.has_batch = 0;
        sl_sched_idle(&sched, &f->ss, now);
    } else if (outcome <= 8) {
        sl_sched_backoff(&sched, &f->ss, 1 + rnd(30));
    } else if (f->batch > 1) {
        f->batch /= 2; /* split */
        sl_sched_try(&sched, &f->ss, now);
    } else {
        f->owed -= 1; /* dead-lettered */
        f->batch = 0;
        f->ss.has_batch = 0;
        sl_sched_idle(&sched, &f->ss, now);
    }
    sl_sched_wake(&sched, reopened, now);
}

static int blocked_on_slot(const fstream_t *f)
{
    const sl_ss_group_t *g = f->ss.group;
    if (g->inflight >= g->cap)
        return 1;
    if (g->no_breaker)
        return 0;
    return sched.inflight >= sched.max_inflight ||
           (f->ss.brk != NULL && f->ss.brk->inflight >= sched.max_host);
}

static int in_list(const sl_list_t *list, const sl_ss_t *ss)
{
    const sl_list_t *it;
    sl_list_each(it, list)
    {
        if (it == &ss->wait_link)
            return 1;
    }
    return 0;
}

static void check(int step)
{
    for (int i = 0; i < NSTREAMS; i++) {
        fstream_t *f = &streams[i];
        sl_ss_t *ss = &f->ss;
        int st = ss->state;
        if (ss->timer_on != (f->timer_at != 0))
            fail_msg("step %d stream %d: timer mirror wrong", step, i);
        if (f->sending != (st == SL_SS_SENDING))
            fail_msg("step %d stream %d: sending but %s", step, i, sl_ss_state_name(st));
        int waits = st == SL_SS_WAIT_BREG || st == SL_SS_WAIT_SLOT || st == SL_SS_WAIT_BREAKER;
        if (!waits && sl_list_linked(&ss->wait_link))
            fail_msg("step %d stream %d: on a wait list while %s", step, i, sl_ss_state_name(st));
        switch (st) {
        case SL_SS_IDLE:
            if (ss->timer_on || ss->brk != NULL)
                fail_msg("step %d stream %d: idle with a timer or a breaker", step, i);
            if (f->owed > 0 && !f->ready && !f->fetch_pending)
                fail_msg("step %d stream %d: idle, %d owed, nothing will wake it", step, i,
                         f->owed);
            break;
        case SL_SS_LINGER:
        case SL_SS_BACKOFF:
            if (!ss->timer_on)
                fail_msg("step %d stream %d: %s without a timer", step, i, sl_ss_state_name(st));
            break;
        case SL_SS_WAIT_BREAKER:
            if (!ss->timer_on || !in_list(&sched.wait_breaker, ss))
                fail_msg("step %d stream %d: waits on a breaker without timer or list", step, i);
            break;
        case SL_SS_WAIT_SLOT:
            if (!in_list(&sched.wait_slot, ss))
                fail_msg("step %d stream %d: waits for a slot, not listed", step, i);
            /* A slot it waits for is really taken, so a completion will wake it. */
            if (!blocked_on_slot(f))
                fail_msg("step %d stream %d: waits for a slot that is free", step, i);
            break;
        case SL_SS_WAIT_BREG: {
            if (!in_list(&sched.wait_breg, ss))
                fail_msg("step %d stream %d: waits for the registry, not listed", step, i);
            /* Only while every breaker is busy: an idle one would have been handed over. */
            if (breg.n < breg.cap)
                fail_msg("step %d stream %d: waits for the registry, which has room", step, i);
            const sl_list_t *it;
            sl_list_each(it, &breg.lru)
            {
                const sl_breg_entry_t *e = sl_container_of(it, const sl_breg_entry_t, lru);
                if (e->users == 0)
                    fail_msg("step %d stream %d: waits for the registry beside an idle breaker",
                             step, i);
            }
            break;
        }
        case SL_SS_SENDING:
        case SL_SS_STOPPED:
            break;
        }
    }
}

/* One random event. */
static void step_once(void)
{
    fstream_t *f = &streams[rnd(NSTREAMS)];
    switch (rnd(8)) {
    case 0:
    case 1: /* append (none once healed: the backlog must drain) */
        if (healed)
            break;
        f->owed += 1 + (int)rnd(3);
        if (f->ss.state == SL_SS_IDLE)
            f->ready = 1;
        break;
    case 2: /* the hub's flush pass */
        hub_flush();
        break;
    case 3: /* a read-back completes */
        if (f->fetch_pending) {
            f->fetch_pending = 0;
            if (f->ss.state == SL_SS_IDLE)
                f->ready = 1;
        }
        break;
    case 4: /* a request or write completes */
        for (int k = 0; k < NSTREAMS; k++) {
            fstream_t *g = &streams[(rnd(NSTREAMS) + (uint32_t)k) % NSTREAMS];
            if (g->sending) {
                complete(g);
                break;
            }
        }
        break;
    case 5: /* a timer fires (time moves to it) */
        for (int k = 0; k < NSTREAMS; k++) {
            fstream_t *g = &streams[(rnd(NSTREAMS) + (uint32_t)k) % NSTREAMS];
            if (g->timer_at != 0) {
                if (g->timer_at > now)
                    now = g->timer_at;
                g->timer_at = 0;
                sl_sched_timer(&sched, &g->ss, now);
                break;
            }
        }
        break;
    case 6: /* the registry sweep */
        now += rnd(150);
        sl_sched_sweep(&sched, now);
        break;
    case 7:
        now += rnd(5);
        break;
    }
}

static int all_delivered(void)
{
    for (int i = 0; i < NSTREAMS; i++)
        if (streams[i].owed > 0 || streams[i].ss.state != SL_SS_IDLE)
            return 0;
    return 1;
}

static void test_no_stream_parked_without_wakeup(void **state)
{
    (void)state;
    sl_budget_set_limit(1ull << 30, 0);
    for (uint64_t seed = 1; seed <= 300; seed++) {
        setup_world(seed);
        int step;
        for (step = 0; step < 3000; step++) {
            step_once();
            check(step);
        }
        /* The endpoints heal: only wake-ups drive the streams, and they all drain. */
        healed = 1;
        for (int i = 0; i < NSTREAMS; i++)
            streams[i].fetch_pending = 0, streams[i].ready |= streams[i].ss.state == SL_SS_IDLE;
        int n;
        for (n = 0; n < 200000 && !all_delivered(); n++) {
            switch (rnd(3)) {
            case 0:
                hub_flush();
                break;
            default:
                step_once();
                break;
            }
            check(step + n);
        }
        if (!all_delivered())
            for (int i = 0; i < NSTREAMS; i++)
                print_message("stream %d: %s owed %d batch %d ready %d timer %llu brk %p\n", i,
                              sl_ss_state_name(streams[i].ss.state), streams[i].owed,
                              streams[i].batch, streams[i].ready,
                              (unsigned long long)streams[i].timer_at, (void *)streams[i].ss.brk);
        if (!all_delivered())
            fail_msg("seed %llu: streams did not drain", (unsigned long long)seed);
        assert_int_equal(sched.inflight, 0);
        for (int g = 0; g < 3; g++)
            assert_int_equal(groups[g].inflight, 0);
        sl_breg_dispose(&breg);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_stream_parked_without_wakeup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
