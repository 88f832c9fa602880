/*
 * The sink streams' scheduler (see sched.h).
 */
#include "sink/sched.h"

static const char *const names[] = {
    [SL_SS_IDLE] = "idle",
    [SL_SS_LINGER] = "linger",
    [SL_SS_WAIT_BREG] = "wait_registry",
    [SL_SS_WAIT_SLOT] = "wait_slot",
    [SL_SS_WAIT_BREAKER] = "wait_breaker",
    [SL_SS_SENDING] = "sending",
    [SL_SS_BACKOFF] = "backoff",
    [SL_SS_STOPPED] = "stopped",
};

const char *sl_ss_state_name(int state)
{
    return state >= 0 && state <= SL_SS_STOPPED ? names[state] : "?";
}

void sl_sched_init(sl_sched_t *s, sl_breg_t *breg, const sl_ss_ops_t *ops, uint64_t max_inflight,
                   uint64_t max_host)
{
    s->breg = breg;
    s->ops = ops;
    sl_list_init(&s->wait_breg);
    sl_list_init(&s->wait_slot);
    sl_list_init(&s->wait_breaker);
    s->inflight = 0;
    s->max_inflight = max_inflight;
    s->max_host = max_host;
    s->stopping = 0;
}

void sl_ss_init(sl_ss_t *ss, sl_ss_group_t *g, const char *origin, size_t origin_len)
{
    ss->state = SL_SS_IDLE;
    ss->has_batch = 0;
    ss->timer_on = 0;
    sl_list_init(&ss->wait_link);
    ss->brk = NULL;
    ss->origin = origin;
    ss->origin_len = origin_len;
    ss->group = g;
}

static void timer(sl_sched_t *s, sl_ss_t *ss, uint64_t delay_ms)
{
    ss->timer_on = delay_ms > 0;
    s->ops->timer(ss, delay_ms);
}

/* Everyone waiting gets another try, in order; those still blocked queue again. Waiters that
 * are blocked whatever else freed queue again without a try (a request stream while every
 * request slot is taken; a registry waiter, once another found every breaker busy, unless its
 * origin's breaker is there): thousands of waiters cost a list walk per wake-up, not
 * thousands of tries and registry scans. */
static void wake_list(sl_sched_t *s, sl_list_t *list, uint64_t now_ms)
{
    if (sl_list_empty(list))
        return;
    sl_list_t tmp;
    tmp.next = list->next;
    tmp.prev = list->prev;
    tmp.next->prev = &tmp;
    tmp.prev->next = &tmp;
    sl_list_init(list);
    int breg_full = 0;
    while (!sl_list_empty(&tmp)) {
        sl_ss_t *ss = sl_container_of(tmp.next, sl_ss_t, wait_link);
        sl_list_remove(&ss->wait_link);
        if (list == &s->wait_slot && !ss->group->no_breaker && s->inflight >= s->max_inflight) {
            sl_list_insert_tail(list, &ss->wait_link);
            continue;
        }
        /* Once one registry waiter found every breaker busy, the others can only share an
         * entry already there (a cheap lookup), not take a slot. */
        if (list == &s->wait_breg && breg_full &&
            sl_breg_find(s->breg, ss->origin, ss->origin_len) == NULL) {
            sl_list_insert_tail(list, &ss->wait_link);
            continue;
        }
        sl_sched_try(s, ss, now_ms);
        if (list == &s->wait_breg && ss->state == SL_SS_WAIT_BREG)
            breg_full = 1;
    }
}

void sl_sched_release(sl_sched_t *s, sl_ss_t *ss, uint64_t now_ms)
{
    if (ss->brk == NULL)
        return;
    int idle = sl_breg_release(s->breg, ss->brk, now_ms);
    ss->brk = NULL;
    if (idle)
        wake_list(s, &s->wait_breg, now_ms);
}

static void wait_on(sl_ss_t *ss, int state, sl_list_t *list)
{
    ss->state = state;
    sl_list_insert_tail(list, &ss->wait_link);
}

void sl_sched_try(sl_sched_t *s, sl_ss_t *ss, uint64_t now_ms)
{
    sl_ss_group_t *g = ss->group;
    sl_list_remove(&ss->wait_link);
    sl_list_init(&ss->wait_link);
    if (ss->timer_on)
        timer(s, ss, 0);
    if (ss->state == SL_SS_STOPPED || s->stopping)
        return;
    if (g->disabled) {
        s->ops->disabled(ss);
        return;
    }
    if (!ss->has_batch) {
        sl_sched_idle(s, ss, now_ms);
        return;
    }
    if (g->no_breaker) {
        if (g->inflight >= g->cap) {
            wait_on(ss, SL_SS_WAIT_SLOT, &s->wait_slot);
            return;
        }
        g->inflight++;
        ss->state = SL_SS_SENDING;
        s->ops->start(ss);
        return;
    }
    if (ss->brk == NULL) {
        ss->brk = sl_breg_acquire(s->breg, ss->origin, ss->origin_len, now_ms);
        if (ss->brk == NULL) {
            wait_on(ss, SL_SS_WAIT_BREG, &s->wait_breg);
            return;
        }
    }
    /* Slots before the breaker: a half-open probe must go as soon as it is allowed. */
    if (s->inflight >= s->max_inflight || g->inflight >= g->cap ||
        ss->brk->inflight >= s->max_host) {
        wait_on(ss, SL_SS_WAIT_SLOT, &s->wait_slot);
        return;
    }
    if (!sl_breaker_allow(&ss->brk->b, &s->breg->conf, now_ms)) {
        uint64_t at = sl_breaker_next_ms(&ss->brk->b, &s->breg->conf);
        wait_on(ss, SL_SS_WAIT_BREAKER, &s->wait_breaker);
        timer(s, ss, at > now_ms ? at - now_ms : 1);
        return;
    }
    s->inflight++;
    g->inflight++;
    ss->brk->inflight++;
    ss->state = SL_SS_SENDING;
    s->ops->start(ss);
}

int sl_sched_done(sl_sched_t *s, sl_ss_t *ss, int report, int ok, uint64_t now_ms)
{
    sl_ss_group_t *g = ss->group;
    g->inflight--;
    if (g->no_breaker || ss->brk == NULL)
        return 0;
    s->inflight--;
    ss->brk->inflight--;
    if (!report)
        return 0;
    sl_breaker_state_t before = ss->brk->b.state;
    sl_breaker_report(&ss->brk->b, &s->breg->conf, ok, now_ms);
    return before != SL_BREAKER_CLOSED && ss->brk->b.state == SL_BREAKER_CLOSED;
}

void sl_sched_wake(sl_sched_t *s, int reopened, uint64_t now_ms)
{
    if (reopened)
        wake_list(s, &s->wait_breaker, now_ms);
    wake_list(s, &s->wait_slot, now_ms);
}

void sl_sched_timer(sl_sched_t *s, sl_ss_t *ss, uint64_t now_ms)
{
    ss->timer_on = 0;
    if (ss->state == SL_SS_LINGER) {
        ss->state = SL_SS_IDLE;
        if (!s->stopping)
            s->ops->ready(ss);
        return;
    }
    if (ss->state == SL_SS_BACKOFF || ss->state == SL_SS_WAIT_BREAKER)
        sl_sched_try(s, ss, now_ms);
}

void sl_sched_backoff(sl_sched_t *s, sl_ss_t *ss, uint64_t delay_ms)
{
    ss->state = SL_SS_BACKOFF;
    timer(s, ss, delay_ms ? delay_ms : 1);
}

void sl_sched_linger(sl_sched_t *s, sl_ss_t *ss, uint64_t delay_ms)
{
    ss->state = SL_SS_LINGER;
    timer(s, ss, delay_ms ? delay_ms : 1);
}

void sl_sched_idle(sl_sched_t *s, sl_ss_t *ss, uint64_t now_ms)
{
    sl_sched_release(s, ss, now_ms);
    ss->state = SL_SS_IDLE;
    if (!s->stopping)
        s->ops->ready(ss);
}

void sl_sched_stop(sl_sched_t *s, sl_ss_t *ss, uint64_t now_ms)
{
    ss->state = SL_SS_STOPPED;
    sl_list_remove(&ss->wait_link);
    sl_list_init(&ss->wait_link);
    if (ss->timer_on)
        timer(s, ss, 0);
    sl_sched_release(s, ss, now_ms);
}

void sl_sched_sweep(sl_sched_t *s, uint64_t now_ms)
{
    if (sl_breg_sweep(s->breg, now_ms) > 0)
        wake_list(s, &s->wait_breg, now_ms);
}
