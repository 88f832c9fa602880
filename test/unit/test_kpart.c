/*
 * Unit tests of the Kafka partition state machine (kafka/kpart.c), driven by a fake Kafka and a
 * fake topic under random interleavings of deliveries, acknowledgements, log writes, revokes
 * and assigns. The fake Kafka behaves as librdkafka 2.0.2 does where it matters: a pause
 * restarts from the last delivered offset + 1, a pause survives unassign and assign, an assign
 * starts from the committed offset, and resuming a partition that is not paused is a failure.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "kafka/kpart.h"

#include <stdlib.h>
#include <string.h>

#define NREC 400

typedef struct fake {
    /* Kafka */
    int assigned, kpaused;
    int64_t pos, committed;
    /* the topic: a lossless-like log that holds `cap` unacknowledged messages */
    int lossy;
    uint64_t head, durable, acked, cap;
    int64_t head_off;      /* highest offset appended; -1 none */
    int64_t seen_max;      /* highest offset delivered; -1 none */
    int64_t log[NREC * 4]; /* offsets appended, in seq order */
    uint64_t seq_of[NREC]; /* seq each offset got */
    sl_kpart_t p;
    int64_t stored_floor; /* stored may not go below this within one assignment */
} fake_t;

static int is_durable(void *arg, const void *topic, uint64_t seq)
{
    fake_t *f = arg;
    (void)topic;
    return seq <= f->durable;
}

static sl_kv_t offer(fake_t *f, int64_t off, uint64_t *seq)
{
    if (off <= f->head_off) {
        /* A duplicate of a record the log has not written yet is done only when it is. */
        if (off % 37 == 11 || f->seq_of[off] <= f->durable)
            return SL_KV_DUPLICATE;
        *seq = f->seq_of[off];
        return SL_KV_PENDING;
    }
    if (off % 37 == 11)
        return SL_KV_REJECTED;
    if (!f->lossy && f->head - f->acked >= f->cap)
        return SL_KV_FULL;
    *seq = ++f->head;
    f->head_off = off;
    f->log[f->head - 1] = off;
    f->seq_of[off] = *seq;
    if (f->lossy)
        f->durable = f->head;
    return f->lossy ? SL_KV_DONE : SL_KV_PENDING;
}

/* The offset below which every record is done (appended and durable, or duplicate/rejected). */
static int64_t done_below(const fake_t *f)
{
    int64_t o = 0;
    while (o <= f->seen_max && o < NREC &&
           (o % 37 == 11 || (f->seq_of[o] != 0 && f->seq_of[o] <= f->durable)))
        o++;
    return o;
}

static void check(fake_t *f)
{
    sl_kpart_t *p = &f->p;
    if (p->state == SL_KP_PAUSED)
        assert_true(p->stash.data != NULL || p->why == SL_KP_WHY_DURABLE);
    if (p->state == SL_KP_ACTIVE)
        assert_null(p->stash.data);
    assert_int_equal(p->paused_by_us, f->kpaused);
    if (p->state != SL_KP_REVOKED) {
        assert_true(p->stored >= f->stored_floor || p->stored == -1);
        if (p->stored >= 0)
            f->stored_floor = p->stored;
        assert_true(p->stored <= done_below(f));
    }
    if (p->stash.data != NULL)
        assert_true(p->stash.offset > f->head_off);
}

static void act(fake_t *f, int a)
{
    if (a == SL_KP_ACT_PAUSE) {
        assert_false(f->kpaused);
        f->kpaused = 1;
        f->pos = f->p.seen + 1; /* a pause restarts from the last delivered offset + 1 */
    } else if (a == SL_KP_ACT_RESUME) {
        assert_true(f->kpaused); /* resuming what is not paused rewinds on 2.0.2 */
        f->kpaused = 0;
    }
}

static void commit(fake_t *f)
{
    if (f->p.store_dirty) {
        assert_true(f->assigned);
        f->committed = f->p.stored;
        f->p.store_dirty = 0;
    }
}

static void run(unsigned seed, int lossy)
{
    srand(seed);
    fake_t *f = calloc(1, sizeof(*f));
    f->lossy = lossy;
    f->cap = 1 + (unsigned)rand() % 8;
    f->head_off = -1;
    f->seen_max = -1;
    f->stored_floor = -1;
    f->assigned = 1;
    sl_kp_assign(&f->p);
    int stash_token = 0;
    for (int step = 0; step < 200000 && !(done_below(f) == NREC && f->committed == NREC); step++) {
        int r = rand() % 100;
        if (r < 50) { /* Kafka delivers the next record */
            if (!f->assigned || f->kpaused || f->pos >= NREC)
                continue;
            int64_t off = f->pos++;
            if (off > f->seen_max)
                f->seen_max = off;
            if (sl_kp_accept(&f->p, off) != SL_KP_ACT_NONE)
                continue;
            uint64_t seq = 0;
            sl_kv_t v = offer(f, off, &seq);
            sl_kp_stash_t st = {.data = &stash_token, .bytes = 1};
            act(f, sl_kp_offered(&f->p, off, v, f, seq, &st, SL_KP_WHY_FULL));
        } else if (r < 65) { /* a reader acknowledges; the room wake-up offers the stash */
            if (f->acked < f->durable)
                f->acked += 1 + (unsigned)rand() % (f->durable - f->acked);
            if (f->p.state == SL_KP_PAUSED && f->p.stash.data != NULL) {
                uint64_t seq = 0;
                sl_kv_t v = offer(f, f->p.stash.offset, &seq);
                sl_kp_stash_t back;
                int a = sl_kp_unstash(&f->p, v, f, seq, &back);
                if (v != SL_KV_FULL)
                    assert_ptr_equal(back.data, &stash_token);
                act(f, a);
            }
        } else if (r < 80) { /* the log writes */
            if (f->durable < f->head)
                f->durable += 1 + (unsigned)rand() % (f->head - f->durable);
            act(f, sl_kp_durable(&f->p, is_durable, f));
        } else if (r < 90) {
            if (f->assigned)
                commit(f);
        } else if (r < 95) { /* revoke: commit what is stored first (as on revoke) */
            if (!f->assigned)
                continue;
            commit(f);
            sl_kp_stash_t back;
            int a = sl_kp_revoke(&f->p, &back);
            act(f, a);
            f->assigned = 0;
            assert_false(f->p.store_dirty);
        } else { /* assign again: from the committed offset */
            if (f->assigned)
                continue;
            assert_false(f->p.store_dirty); /* nothing stored while revoked */
            f->assigned = 1;
            f->pos = f->committed < 0 ? 0 : f->committed;
            f->stored_floor = -1;
            sl_kp_assign(&f->p);
        }
        check(f);
    }
    /* Every offset reached the topic exactly once and in order, and all of it was committed. */
    assert_int_equal(done_below(f), NREC);
    assert_int_equal(f->committed, NREC);
    int64_t want = 0;
    for (uint64_t s = 0; s < f->head; s++) {
        while (want % 37 == 11)
            want++;
        assert_int_equal(f->log[s], want);
        want++;
    }
    assert_int_equal(f->p.pauses - f->p.resumes, f->kpaused);
    free(f);
}

static void test_random_lossless(void **state)
{
    (void)state;
    for (unsigned seed = 1; seed <= 300; seed++)
        run(seed, 0);
}

static void test_random_lossy(void **state)
{
    (void)state;
    for (unsigned seed = 1; seed <= 100; seed++)
        run(seed, 1);
}

static int durable_none(void *arg, const void *topic, uint64_t seq)
{
    (void)arg;
    (void)topic;
    (void)seq;
    return 0;
}

static int durable_all(void *arg, const void *topic, uint64_t seq)
{
    (void)arg;
    (void)topic;
    (void)seq;
    return 1;
}

/* A partition alternating between many lossless topics pauses (reason durable, no stash)
 * when its FIFO is full, and resumes once the logs have written. */
static void test_durable_pause(void **state)
{
    (void)state;
    sl_kpart_t p;
    memset(&p, 0, sizeof(p));
    sl_kp_assign(&p);
    int topics[2];
    int a = SL_KP_ACT_NONE;
    int64_t off = 0;
    for (; off < 100 && a == SL_KP_ACT_NONE; off++)
        a = sl_kp_offered(&p, off, SL_KV_PENDING, &topics[off % 2], (uint64_t)off + 1, NULL,
                          SL_KP_WHY_FULL);
    assert_int_equal(a, SL_KP_ACT_PAUSE);
    assert_int_equal(off, SL_KP_PENDING_MAX);
    assert_int_equal(p.state, SL_KP_PAUSED);
    assert_int_equal(p.why, SL_KP_WHY_DURABLE);
    assert_int_equal(p.stored, -1);
    assert_int_equal(sl_kp_durable(&p, durable_none, NULL), SL_KP_ACT_NONE);
    assert_int_equal(sl_kp_accept(&p, off), SL_KP_ACT_IGNORE);
    assert_int_equal(sl_kp_durable(&p, durable_all, NULL), SL_KP_ACT_RESUME);
    assert_int_equal(p.stored, off);
    assert_true(p.store_dirty);
    assert_int_equal(p.state, SL_KP_ACTIVE);
    /* A second resume never happens: nothing is paused. */
    assert_int_equal(sl_kp_durable(&p, durable_all, NULL), SL_KP_ACT_NONE);
}

/* A stash refused again keeps the partition paused; a revoke hands the stash back and asks for
 * the resume that librdkafka needs before the partition is given up. */
static void test_stash_and_revoke(void **state)
{
    (void)state;
    sl_kpart_t p;
    memset(&p, 0, sizeof(p));
    sl_kp_assign(&p);
    int data;
    sl_kp_stash_t st = {.data = &data, .bytes = 4}, back;
    assert_int_equal(sl_kp_offered(&p, 0, SL_KV_DONE, NULL, 0, NULL, 0), SL_KP_ACT_NONE);
    assert_int_equal(p.stored, 1);
    assert_int_equal(sl_kp_offered(&p, 1, SL_KV_FULL, NULL, 0, &st, SL_KP_WHY_BUDGET),
                     SL_KP_ACT_PAUSE);
    assert_int_equal(p.stash.offset, 1);
    assert_int_equal(sl_kp_unstash(&p, SL_KV_FULL, NULL, 0, &back), SL_KP_ACT_NONE);
    assert_null(back.data);
    assert_int_equal(p.state, SL_KP_PAUSED);
    p.store_dirty = 0;
    assert_int_equal(sl_kp_revoke(&p, &back), SL_KP_ACT_RESUME);
    assert_ptr_equal(back.data, &data);
    assert_int_equal(p.state, SL_KP_REVOKED);
    assert_int_equal(sl_kp_offered(&p, 2, SL_KV_DONE, NULL, 0, NULL, 0), SL_KP_ACT_IGNORE);
    assert_false(p.store_dirty);
    assert_int_equal(p.pauses, p.resumes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_lossless),
        cmocka_unit_test(test_random_lossy),
        cmocka_unit_test(test_durable_pause),
        cmocka_unit_test(test_stash_and_revoke),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
