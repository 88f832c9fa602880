/*
 * The per-partition state machine of the Kafka source (kpart.h): which records may be offered,
 * when a partition pauses and resumes, and which offset may be stored. Pure: no librdkafka.
 */
#include "kafka/kpart.h"

#include <string.h>

const char *sl_kp_why_name(sl_kp_why_t why)
{
    static const char *const names[] = {"full", "budget", "reject", "durable"};
    return (unsigned)why < SL_KP_WHY__COUNT ? names[why] : "unknown";
}

static void store(sl_kpart_t *p, int64_t next)
{
    if (next > p->stored) {
        p->stored = next;
        p->store_dirty = 1;
    }
}

void sl_kp_assign(sl_kpart_t *p)
{
    p->state = SL_KP_ACTIVE;
    p->paused_by_us = 0;
    p->npend = p->phead = 0;
    p->seen = -1;
    p->stored = -1; /* librdkafka starts from the committed offset; nothing is stored yet */
    p->store_dirty = 0;
    memset(&p->stash, 0, sizeof(p->stash));
}

int sl_kp_revoke(sl_kpart_t *p, sl_kp_stash_t *stash)
{
    int act = p->paused_by_us ? SL_KP_ACT_RESUME : SL_KP_ACT_NONE;
    if (act == SL_KP_ACT_RESUME)
        p->resumes++;
    *stash = p->stash;
    memset(&p->stash, 0, sizeof(p->stash));
    p->state = SL_KP_REVOKED;
    p->paused_by_us = 0;
    p->npend = p->phead = 0;
    p->store_dirty = 0; /* what was not stored before the revoke never will be */
    return act;
}

int sl_kp_accept(const sl_kpart_t *p, int64_t offset)
{
    (void)offset;
    return p->state == SL_KP_ACTIVE ? SL_KP_ACT_NONE : SL_KP_ACT_IGNORE;
}

static sl_kp_pending_t *pend_at(sl_kpart_t *p, uint32_t i)
{
    return &p->pend[(p->phead + i) % SL_KP_PENDING_MAX];
}

/* Records the result of a record that was taken (anything but FULL). Returns 1 when the
 * pending FIFO is now full. */
static int taken(sl_kpart_t *p, int64_t offset, sl_kv_t v, const void *topic, uint64_t seq)
{
    if (v != SL_KV_PENDING) {
        if (p->npend == 0)
            store(p, offset + 1);
        else
            pend_at(p, p->npend - 1)->offset = offset; /* done once the newest entry is */
        return 0;
    }
    if (p->npend >= 2 && pend_at(p, p->npend - 1)->topic == topic) {
        sl_kp_pending_t *t = pend_at(p, p->npend - 1);
        t->seq = seq;
        t->offset = offset;
        return 0;
    }
    sl_kp_pending_t *t = pend_at(p, p->npend++);
    t->topic = topic;
    t->seq = seq;
    t->offset = offset;
    return p->npend == SL_KP_PENDING_MAX;
}

static void pause_for(sl_kpart_t *p, sl_kp_why_t why)
{
    p->state = SL_KP_PAUSED;
    p->why = (uint8_t)why;
    p->paused_by_us = 1;
    p->pauses++;
}

int sl_kp_offered(sl_kpart_t *p, int64_t offset, sl_kv_t v, const void *topic, uint64_t seq,
                  sl_kp_stash_t *stash, sl_kp_why_t why)
{
    if (p->state != SL_KP_ACTIVE)
        return SL_KP_ACT_IGNORE;
    if (offset > p->seen)
        p->seen = offset;
    if (v == SL_KV_FULL) {
        p->stash = *stash;
        p->stash.offset = offset;
        pause_for(p, why);
        return SL_KP_ACT_PAUSE;
    }
    if (taken(p, offset, v, topic, seq)) {
        pause_for(p, SL_KP_WHY_DURABLE);
        return SL_KP_ACT_PAUSE;
    }
    return SL_KP_ACT_NONE;
}

static int go_on(sl_kpart_t *p)
{
    p->state = SL_KP_ACTIVE;
    if (!p->paused_by_us)
        return SL_KP_ACT_NONE;
    p->paused_by_us = 0;
    p->resumes++;
    return SL_KP_ACT_RESUME;
}

int sl_kp_unstash(sl_kpart_t *p, sl_kv_t v, const void *topic, uint64_t seq, sl_kp_stash_t *stash)
{
    memset(stash, 0, sizeof(*stash));
    if (p->state != SL_KP_PAUSED || p->stash.data == NULL || v == SL_KV_FULL)
        return SL_KP_ACT_NONE;
    *stash = p->stash;
    memset(&p->stash, 0, sizeof(p->stash));
    if (taken(p, stash->offset, v, topic, seq)) {
        p->why = SL_KP_WHY_DURABLE; /* still paused, now waiting for the logs */
        return SL_KP_ACT_NONE;
    }
    return go_on(p);
}

int sl_kp_durable(sl_kpart_t *p, int (*is_durable)(void *arg, const void *topic, uint64_t seq),
                  void *arg)
{
    if (p->state != SL_KP_ACTIVE && p->state != SL_KP_PAUSED)
        return SL_KP_ACT_NONE;
    while (p->npend > 0) {
        sl_kp_pending_t *h = pend_at(p, 0);
        if (!is_durable(arg, h->topic, h->seq))
            break;
        store(p, h->offset + 1);
        p->phead = (p->phead + 1) % SL_KP_PENDING_MAX;
        p->npend--;
    }
    if (p->state == SL_KP_PAUSED && p->why == SL_KP_WHY_DURABLE && p->stash.data == NULL &&
        p->npend < SL_KP_PENDING_MAX)
        return go_on(p);
    return SL_KP_ACT_NONE;
}
