/*
 * Unit tests of lossless.c's state machine, without disk or loop: fullness and quotas,
 * segment deletion by cursors, cursor checkpoints, and the promise that no interleaving of
 * publishes, writes, acknowledgements, cursor changes and disconnects leaves a publisher
 * waiting while there is room. The .c is included to reach its static functions.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <strings.h>
#include <cmocka.h>

#include "../../src/store/lossless.c"

static sl_config_t cfg;

static sl_topic_t *make_topic(uint64_t max_bytes, uint64_t quota)
{
    sl_budget_set_limit(1ull << 30, 0);
    sl_config_init(&cfg);
    ll_cfg = &cfg;
    cfg.disk_quota = 0;
    sl_topic_conf_t conf = cfg.topic_defaults;
    conf.lossless = 1;
    conf.max_bytes = max_bytes;
    conf.disk_quota = quota;
    sl_topic_t *t = sl_topic_new("ll", 2, &conf, 0);
    sl_lossless_t *ll = ll_new(t, sl_strdup("/nonexistent/sluice-test"));
    ll->on_disk = 1; /* as if made: without a loop, nothing is written */
    ll->reserved = UINT64_MAX;
    seg_add(ll, 1);
    return t;
}

static void drop_topic(sl_topic_t *t)
{
    sl_lossless_t *ll = t->ll;
    ll->broken = 1; /* nothing to write, no cursor file */
    ll->npending = 0;
    sl_ll_free(t);
    sl_topic_free(t);
    sl_config_dispose(&cfg);
}

/* The effect of a completed write of `bytes` carrying `msgs` messages: what write_done does. */
static void written(sl_topic_t *t, uint64_t bytes, uint64_t msgs, uint64_t seg_bytes)
{
    sl_lossless_t *ll = t->ll;
    if (bytes > ll->unwritten)
        bytes = ll->unwritten;
    sl_seg_t *s = &ll->segs[ll->nsegs - 1];
    if (s->len >= seg_bytes)
        s = seg_add(ll, s->last + 1);
    s->len += bytes;
    s->last += msgs;
    ll->disk_bytes += bytes;
    ll_total_disk += bytes;
    ll->unwritten -= bytes;
    ll->written_seq = ll->durable_seq = s->last;
    update_floor(ll);
    ll_update(ll);
}

static void test_full_and_trim(void **state)
{
    (void)state;
    sl_topic_t *t = make_topic(1000, 3000);
    sl_lossless_t *ll = t->ll;
    assert_false(sl_ll_full(t));
    /* Unwritten bytes over the memory share: full until written. */
    ll->unwritten = 1001;
    assert_true(sl_ll_full(t));
    t->head_seq = 10;
    written(t, 1001, 10, 1000);
    assert_false(sl_ll_full(t));
    /* No cursors: over quota, the oldest segments go. */
    for (int i = 0; i < 5; i++) {
        ll->unwritten = 900;
        t->head_seq += 10;
        written(t, 900, 10, 1000);
    }
    assert_true(ll->disk_bytes <= 3000 + 1000);
    assert_false(sl_ll_full(t));
    /* A cursor at the start pins everything: over quota means full. */
    sl_cursor_t *c = sl_ll_cursor(t, "a", 1, 1);
    c->checkpoint = ll->segs[0].base - 1;
    for (int i = 0; i < 5; i++) {
        ll->unwritten = 900;
        t->head_seq += 10;
        written(t, 900, 10, 1000);
    }
    assert_true(sl_ll_full(t));
    uint64_t first = ll->segs[0].base;
    /* Acknowledging frees what it passed and the room comes back. */
    assert_int_equal(sl_ll_ack(t, c, t->head_seq - 5), 0);
    assert_true(ll->segs[0].base > first);
    assert_false(sl_ll_full(t));
    /* Acks never move back, and never past the head. */
    uint64_t ck = c->checkpoint;
    assert_int_equal(sl_ll_ack(t, c, 1), 0);
    assert_int_equal(c->checkpoint, ck);
    assert_int_equal(sl_ll_ack(t, c, t->head_seq + 1), SL_EBADID);
    drop_topic(t);
}

/* A yielding cursor (a sink with on_max_backlog = skip) pins nothing once the quota is full;
 * a holding one beside it still does. */
static void test_yielding_cursor(void **state)
{
    (void)state;
    sl_topic_t *t = make_topic(1000, 3000);
    sl_lossless_t *ll = t->ll;
    sl_cursor_t *y = sl_ll_cursor(t, "y", 1, 1);
    y->yields = 1;
    y->checkpoint = 0;
    for (int i = 0; i < 8; i++) {
        ll->unwritten = 900;
        t->head_seq += 10;
        written(t, 900, 10, 1000);
    }
    assert_false(sl_ll_full(t));
    assert_true(ll->disk_bytes <= 3000 + 1000);
    assert_true(ll->segs[0].base > y->checkpoint + 1); /* its reader will find a gap */
    sl_cursor_t *h = sl_ll_cursor(t, "h", 1, 1);
    h->checkpoint = ll->segs[0].base - 1;
    for (int i = 0; i < 5; i++) {
        ll->unwritten = 900;
        t->head_seq += 10;
        written(t, 900, 10, 1000);
    }
    assert_true(sl_ll_full(t));
    drop_topic(t);
}

/* ---- no publisher is left waiting while there is room ------------------------------------ */

#define NPUB 24

typedef struct pub {
    sl_waiter_t w;
    int wakes;
} pub_t;

static pub_t pubs[NPUB];
static sl_lossless_t *cur_ll;

static void on_wake_pub(sl_waiter_t *w, int status)
{
    pub_t *p = (pub_t *)w;
    p->wakes++;
    /* Woken for room only when there is room (no deadlines in this test). */
    assert_int_equal(status, SL_WAKE_OK);
    assert_false(cur_ll->full);
}

static void check_invariant(sl_lossless_t *ll)
{
    assert_int_equal(ll->full, compute_full(ll));
    if (!ll->full)
        assert_true(sl_list_empty(&ll->waiters));
}

static void test_no_publisher_left_waiting(void **state)
{
    (void)state;
    srand(4242);
    for (int round = 0; round < 20; round++) {
        sl_topic_t *t = make_topic(2000, 6000);
        sl_lossless_t *ll = t->ll;
        cur_ll = ll;
        memset(pubs, 0, sizeof(pubs));
        for (int i = 0; i < NPUB; i++)
            pubs[i].w.wake = on_wake_pub;
        sl_cursor_t *cursors[3] = {NULL, NULL, NULL};
        int waits = 0;
        for (int step = 0; step < 3000; step++) {
            int op = rand() % 6;
            int i = rand() % NPUB;
            if (op == 0 || op == 1) {
                /* A publisher tries (as sl_hub_publish and its callers do). */
                if (sl_ll_waiting(&pubs[i].w))
                    continue;
                if (sl_ll_full(t)) {
                    sl_ll_wait(&pubs[i].w, t, SL_WAIT_ROOM, 0, 0);
                    waits++;
                } else {
                    uint64_t size = 100 + (uint64_t)(rand() % 400);
                    t->head_seq++;
                    ll->unwritten += size;
                    if (!ll->full && compute_full(ll))
                        ll_update(ll);
                }
            } else if (op == 2) {
                /* The writer completes some of what is pending. */
                uint64_t msgs = t->head_seq - ll->written_seq;
                if (msgs > 0)
                    written(t, ll->unwritten, msgs, 1500);
            } else if (op == 3) {
                /* A durable reader acknowledges up to somewhere it has read. */
                int k = rand() % 3;
                if (cursors[k] != NULL && t->head_seq > cursors[k]->checkpoint)
                    sl_ll_ack(t, cursors[k],
                              cursors[k]->checkpoint + 1 +
                                  (uint64_t)rand() % (t->head_seq - cursors[k]->checkpoint));
            } else if (op == 4) {
                /* Cursors come and go. */
                int k = rand() % 3;
                if (cursors[k] == NULL) {
                    char name[2] = {(char)('a' + k), 0};
                    cursors[k] = sl_ll_cursor(t, name, 1, 1);
                    cursors[k]->checkpoint = ll->written_seq;
                    ll_update(ll);
                } else if (rand() % 4 == 0) {
                    sl_ll_cursor_delete(t, cursors[k]);
                    cursors[k] = NULL;
                }
            } else {
                /* A waiting publisher disconnects. */
                sl_ll_unwait(&pubs[i].w);
            }
            check_invariant(ll);
        }
        /* Everything is written and acknowledged: nobody may still wait. */
        written(t, ll->unwritten, t->head_seq - ll->written_seq, 1500);
        for (int k = 0; k < 3; k++)
            if (cursors[k] != NULL)
                sl_ll_ack(t, cursors[k], t->head_seq);
        check_invariant(ll);
        assert_false(ll->full);
        assert_true(sl_list_empty(&ll->waiters));
        assert_true(waits > 0); /* the run did exercise waiting */
        for (int i = 0; i < NPUB; i++)
            assert_false(sl_ll_waiting(&pubs[i].w));
        drop_topic(t);
    }
}

/* Durable waiters wake when their seq is durable; deadlines wake with SL_WAKE_TIMEOUT; a
 * broken log wakes everyone at once with SL_WAKE_FAILED. */
static int durable_wakes, timeouts, failures;

static void on_wake_count(sl_waiter_t *w, int status)
{
    (void)w;
    if (status == SL_WAKE_TIMEOUT)
        timeouts++;
    else if (status == SL_WAKE_FAILED)
        failures++;
    else
        durable_wakes++;
}

static void test_durable_and_deadlines(void **state)
{
    (void)state;
    sl_topic_t *t = make_topic(1u << 20, 0);
    sl_lossless_t *ll = t->ll;
    sl_waiter_t a = {.wake = on_wake_count}, b = {.wake = on_wake_count},
                c = {.wake = on_wake_count};
    t->head_seq = 5;
    ll->unwritten = 500;
    sl_ll_wait(&a, t, SL_WAIT_DURABLE, 3, 0);
    sl_ll_wait(&b, t, SL_WAIT_DURABLE, 5, 0);
    written(t, 300, 3, 1u << 20);
    assert_int_equal(durable_wakes, 1);
    assert_true(sl_ll_waiting(&b));
    written(t, 200, 2, 1u << 20);
    assert_int_equal(durable_wakes, 2);
    /* A full topic with a deadline: woken at the deadline with SL_WAKE_TIMEOUT. */
    ll->unwritten = 2u << 20;
    ll_update(ll);
    sl_ll_wait(&c, t, SL_WAIT_ROOM, 0, 1000);
    wake(ll, 999);
    assert_int_equal(timeouts, 0);
    wake(ll, 1000);
    assert_int_equal(timeouts, 1);
    assert_false(sl_ll_waiting(&c));
    /* The disk fails: the waiters for durability and for room are all answered, at once and
     * before any deadline. */
    t->head_seq = 7;
    sl_ll_wait(&a, t, SL_WAIT_DURABLE, 6, 0);
    sl_ll_wait(&b, t, SL_WAIT_DURABLE, 7, 5000);
    sl_ll_wait(&c, t, SL_WAIT_ROOM, 0, 0);
    ll->broken = 1;
    ll_update(ll);
    assert_int_equal(failures, 3);
    assert_int_equal(timeouts, 1);
    assert_false(sl_ll_waiting(&a) || sl_ll_waiting(&b) || sl_ll_waiting(&c));
    drop_topic(t);
}

/* Directory names: bounded, one path component, told apart by the hash of the exact bytes. */
static void test_dir_names(void **state)
{
    (void)state;
    char a[SL_LL_DIR_NAME_CAP], b[SL_LL_DIR_NAME_CAP];
    char longest[1025];
    for (int i = 0; i < 1024; i++)
        longest[i] = i % 2 ? '/' : 'a';
    longest[1024] = '\0';
    sl_ll_dir_name(longest, 1024, a);
    assert_int_equal(strlen(a), SL_LL_DIR_NAME_CAP - 1);
    assert_null(strchr(a, '/'));
    assert_int_equal(strncmp(a, "t-a_a_", 6), 0);
    sl_ll_dir_name("chat/42", 7, a);
    assert_int_equal(strncmp(a, "t-chat_42-", 10), 0);
    assert_int_equal(strlen(a), 10 + 32);
    sl_ll_dir_name("chat/42", 7, b);
    assert_string_equal(a, b);
    /* Same readable part, other names: '/' and '_' read the same, case differs. */
    sl_ll_dir_name("chat_42", 7, b);
    assert_string_not_equal(a, b);
    assert_int_equal(strncmp(a, b, 10), 0);
    sl_ll_dir_name("Chat/42", 7, a);
    sl_ll_dir_name("chat/42", 7, b);
    assert_true(strcasecmp(a, b) != 0);
}

static void test_cursor_names(void **state)
{
    (void)state;
    assert_true(sl_ll_cursor_name_valid("a", 1));
    assert_true(sl_ll_cursor_name_valid("worker-1.eu_west", 16));
    assert_false(sl_ll_cursor_name_valid("", 0));
    assert_false(sl_ll_cursor_name_valid("a/b", 3));
    assert_false(sl_ll_cursor_name_valid("a b", 3));
    char long_name[66];
    memset(long_name, 'x', 65);
    assert_false(sl_ll_cursor_name_valid(long_name, 65));
    assert_true(sl_ll_cursor_name_valid(long_name, 64));
}

/* The cursor file's format: the newest intact slot wins; a torn or damaged slot is passed
 * over; the older plain text is recognised; header fields from disk are checked. */
static void test_cursor_file_format(void **state)
{
    (void)state;
    const size_t size = CKPT_MIN_SLOT;
    char *f = malloc(2 * size);
    ckpt_slot_format(f, size, 7, "a 5\n", 4);
    ckpt_slot_format(f + size, size, 8, "a 9\nb 1\n", 8);
    ckpt_view_t v;
    assert_int_equal(ckpt_file_parse(f, 2 * size, &v), 0);
    assert_int_equal(v.slot, 1);
    assert_int_equal(v.gen, 8);
    assert_int_equal(v.slot_size, size);
    assert_int_equal(v.len, 8);
    assert_memory_equal(v.text, "a 9\nb 1\n", 8);

    /* A torn write of generation 8: its slot's tail is old, so its sum fails. */
    f[size + CKPT_HDR_LEN + 2] = '7';
    assert_int_equal(ckpt_file_parse(f, 2 * size, &v), 0);
    assert_int_equal(v.slot, 0);
    assert_int_equal(v.gen, 7);
    assert_memory_equal(v.text, "a 5\n", 4);

    /* A header torn in the middle, and a length that points past the slot. */
    ckpt_slot_format(f + size, size, 8, "a 9\n", 4);
    memset(f + size + 40, 0, 20);
    assert_int_equal(ckpt_file_parse(f, 2 * size, &v), 0);
    assert_int_equal(v.gen, 7);
    ckpt_slot_format(f + size, size, 9, "a 9\n", 4);
    memcpy(f + size + strlen(CKPT_MAGIC) + 39, "ffffffff", 8);
    assert_int_equal(ckpt_file_parse(f, 2 * size, &v), 0);
    assert_int_equal(v.gen, 7);

    /* Slot 0 damaged too: nothing to restore, and it says so. */
    f[CKPT_HDR_LEN] = 'x';
    assert_int_equal(ckpt_file_parse(f, 2 * size, &v), -1);
    /* A file cut short: not two equal slots. */
    ckpt_slot_format(f, size, 7, "a 5\n", 4);
    assert_int_equal(ckpt_file_parse(f, size + 100, &v), -1);
    assert_int_equal(ckpt_file_parse(f, 2 * CKPT_HDR_LEN - 2, &v), -1);

    /* The older format: plain lines. */
    assert_int_equal(ckpt_file_parse("a 5\nb 6\n", 8, &v), 1);
    assert_int_equal(v.len, 8);
    assert_int_equal(v.slot_size, 0);
    free(f);
}

static void read_file_bytes(const char *path, char *buf, size_t n)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, buf, n, 0), (ssize_t)n);
    close(fd);
}

/* Saving on disk: the file is made once, then its slots are overwritten in place, in turn; a
 * slot spoilt by a crash leaves the previous checkpoint; the plain-text file of earlier
 * versions is read and replaced. */
static void test_cursor_file_on_disk(void **state)
{
    (void)state;
    sl_topic_t *t = make_topic(1 << 20, 0);
    sl_lossless_t *ll = t->ll;
    char tmpl[] = "/tmp/sluice-test-cursors-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    free(ll->dir);
    ll->dir = sl_strdup(tmpl);
    char path[PATH_CAP];
    snprintf(path, sizeof(path), "%s/cursors", tmpl);
    t->head_seq = 100;

    sl_cursor_t *c = sl_ll_cursor(t, "a", 1, 1);
    c->checkpoint = 5;
    assert_int_equal(save_cursors_now(ll, NULL), 0);
    struct stat st0, st;
    assert_int_equal(stat(path, &st0), 0);
    assert_int_equal(st0.st_size, 2 * CKPT_MIN_SLOT);
    assert_int_equal(ll->ckpt_slot, 0);
    c->checkpoint = 9;
    assert_int_equal(save_cursors_now(ll, NULL), 0);
    assert_int_equal(ll->ckpt_slot, 1);
    c->checkpoint = 12;
    assert_int_equal(save_cursors_now(ll, NULL), 0);
    assert_int_equal(ll->ckpt_slot, 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_ino, st0.st_ino); /* in place, no rename */
    assert_int_equal(st.st_size, st0.st_size);

    /* A crash tore the write of 12 (slot 0): recovery finds 9. */
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "zz", 2, CKPT_HDR_LEN), 2);
    close(fd);
    sl_ll_cursor_delete(t, c);
    ll->ckpt_size = 0;
    read_cursors(t);
    c = sl_ll_cursor(t, "a", 1, 0);
    assert_non_null(c);
    assert_int_equal(c->checkpoint, 9);
    assert_int_equal(ll->ckpt_size, CKPT_MIN_SLOT);
    assert_int_equal(ll->ckpt_slot, 1);
    /* The next save goes to the spoilt slot, never over the good one. */
    c->checkpoint = 20;
    assert_int_equal(save_cursors_now(ll, NULL), 0);
    assert_int_equal(ll->ckpt_slot, 0);
    char *buf = malloc(2 * CKPT_MIN_SLOT);
    read_file_bytes(path, buf, 2 * CKPT_MIN_SLOT);
    ckpt_view_t v;
    assert_int_equal(ckpt_file_parse(buf, 2 * CKPT_MIN_SLOT, &v), 0);
    assert_int_equal(v.slot, 0);
    assert_memory_equal(v.text, "a 20\n", 5);
    uint64_t g;
    const char *tx;
    size_t l;
    assert_int_equal(ckpt_slot_parse(buf + CKPT_MIN_SLOT, CKPT_MIN_SLOT, &g, &tx, &l), 0);
    assert_memory_equal(tx, "a 9\n", 4);

    /* More cursors than a slot holds: the file is made anew, larger. */
    for (int i = 0; i < 60; i++) {
        char name[80];
        int n = snprintf(name, sizeof(name), "cursor-with-a-long-name-%040d", i);
        sl_ll_cursor(t, name, (size_t)n, 1)->checkpoint = (uint64_t)i;
    }
    assert_int_equal(save_cursors_now(ll, NULL), 0);
    assert_true(ll->ckpt_size > CKPT_MIN_SLOT);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal((size_t)st.st_size, 2 * ll->ckpt_size);

    /* The plain-text file of earlier versions. */
    while (!sl_list_empty(&ll->cursors))
        sl_ll_cursor_delete(t, sl_container_of(ll->cursors.next, sl_cursor_t, link));
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "old 33\n", 7), 7);
    close(fd);
    ll->ckpt_size = 0;
    read_cursors(t);
    assert_int_equal(ll->ncursors, 1);
    assert_int_equal(sl_ll_cursor(t, "old", 3, 0)->checkpoint, 33);
    assert_int_equal(ll->ckpt_size, 0);
    assert_int_equal(save_cursors_now(ll, NULL), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 2 * CKPT_MIN_SLOT);

    free(buf);
    unlink(path);
    rmdir(tmpl);
    drop_topic(t);
}

/* A read-back batch of bare messages seq first..first+n-1, skipping `hole` (0: none). */
static sl_disk_batch_t *bare_batch(uint64_t first, uint32_t n, uint64_t hole)
{
    size_t size = sizeof(sl_disk_batch_t) + n * sizeof(sl_msg_t *);
    sl_disk_batch_t *b = sl_balloc(size);
    b->n = b->pos = 0;
    b->size = size;
    for (uint64_t seq = first; b->n < n; seq++) {
        if (seq == hole)
            continue;
        sl_msg_t *m = sl_msg_new_bare(seq, "ev", 2, "payload", 7);
        sl_budget_charge(m->charge);
        assert_null(m->frame);
        assert_string_equal(m->event, "ev");
        assert_memory_equal(m->payload, "payload", 7);
        b->v[b->n++] = m;
    }
    return b;
}

/* A reader that leaves the message sl_ll_next returned (a sink whose batch filled up) gets it
 * again on its next call, not a gap; one that takes it gets the next; a real hole in the log
 * still reads as one; the batch is dropped once used up. */
static void test_read_next_untaken(void **state)
{
    (void)state;
    sl_topic_t *t = make_topic(1u << 20, 1u << 30);
    uint64_t start = sl_budget.used;
    sl_reader_t r = {.topic = t, .next = 1, .disk_ok = 1};
    r.disk = bare_batch(1, 5, 4); /* 1 2 3 5 6 */
    sl_msg_t *m = sl_ll_next(&r);
    assert_int_equal(m->seq, 1);
    assert_int_equal(sl_ll_next(&r)->seq, 1); /* not taken: the same again */
    r.next = 2;
    assert_int_equal(sl_ll_next(&r)->seq, 2);
    r.next = 3;
    assert_int_equal(sl_ll_next(&r)->seq, 3);
    assert_int_equal(sl_ll_next(&r)->seq, 3);
    r.next = 4;
    assert_null(sl_ll_next(&r)); /* 4 is a hole: sl_ll_fetch reports it */
    assert_int_equal(batch_hole_end(&r), 5);
    r.next = 5;
    assert_int_equal(sl_ll_next(&r)->seq, 5);
    r.next = 6;
    assert_int_equal(sl_ll_next(&r)->seq, 6);
    assert_int_equal(sl_ll_next(&r)->seq, 6);
    r.next = 7;
    assert_null(sl_ll_next(&r));
    assert_null(r.disk);
    assert_int_equal(sl_budget.used, start);
    drop_topic(t);
}

/* A read-back block: payloads stay in the records' buffer, events are copied, and the block
 * (and its charge) goes with the last of its messages, in whatever order they are dropped. */
static void test_msg_block(void **state)
{
    (void)state;
    sl_budget_set_limit(1ull << 30, 0);
    uint64_t start = sl_budget.used;
    for (int order = 0; order < 3; order++) {
        char *buf = sl_malloc(64);
        memcpy(buf, "aaaabbbbcccc", 12);
        sl_msg_block_t *b = sl_msg_block_new(buf, 64, 3);
        sl_msg_t *m[3];
        m[0] = sl_msg_block_add(b, 10, NULL, 0, buf, 4);
        m[1] = sl_msg_block_add(b, 11, "tick", 4, buf + 4, 4);
        m[2] = sl_msg_block_add(b, 12, NULL, 0, buf + 8, 4);
        sl_budget_charge(b->charge);
        assert_true(sl_budget.used > start + 64);
        assert_ptr_equal(m[1]->payload, buf + 4);
        assert_string_equal(m[1]->event, "tick");
        assert_int_equal(m[1]->event_len, 4);
        assert_null(m[0]->event);
        assert_null(m[2]->frame);
        assert_int_equal(m[2]->seq, 12);
        sl_msg_ref(m[order]); /* one of them held longer, as by a job in flight */
        for (int i = 0; i < 3; i++)
            sl_msg_unref(m[i]);
        assert_true(sl_budget.used > start);
        assert_memory_equal(m[order]->payload, "aaaabbbbcccc" + 4 * order, 4);
        sl_msg_unref(m[order]);
        assert_int_equal(sl_budget.used, start);
    }
}

/* Read sizes: 256 KiB for a subscriber; for a sink (frameless), 1/256 of memory_limit up to
 * 1 MiB while the budget stays under half full with four times that charged. */
static void test_read_bytes(void **state)
{
    (void)state;
    static const sl_sub_ops_t conn_ops = {0}, sink_ops = {.frameless = 1};
    sl_sub_t conn = {.ops = &conn_ops}, sink = {.ops = &sink_ops};
    /* rs has read before (its first read is smaller, below) */
    sl_reader_t rc = {.sub = &conn}, rs = {.sub = &sink, .disk_read = 1}, none = {0};
    sl_budget_set_limit(1ull << 30, 0);
    uint64_t used = sl_budget.used;
    assert_int_equal(read_bytes(&rc), READ_BATCH_BYTES);
    assert_int_equal(read_bytes(&none), READ_BATCH_BYTES);
    assert_int_equal(read_bytes(&rs), READ_BATCH_MAX);
    assert_int_equal(READ_BATCH_MAX, 1u << 20);
    sl_budget_set_limit(256ull << 20, 0);
    assert_int_equal(read_bytes(&rs), 1u << 20);
    sl_budget_set_limit(128ull << 20, 0);
    assert_int_equal(read_bytes(&rs), 512u << 10);
    sl_budget_set_limit(64ull << 20, 0);
    assert_int_equal(read_bytes(&rs), READ_BATCH_BYTES);
    /* Past half of the budget: back to 256 KiB. */
    sl_budget_set_limit(1ull << 30, 0);
    size_t big = (size_t)(512u << 20) - (size_t)used - 4 * READ_BATCH_MAX - (1u << 20);
    sl_budget_charge(big);
    assert_int_equal(read_bytes(&rs), READ_BATCH_MAX);
    sl_budget_charge(2u << 20);
    assert_int_equal(read_bytes(&rs), READ_BATCH_BYTES);
    sl_budget_release(big + (2u << 20));
    assert_int_equal(read_bytes(&rs), READ_BATCH_MAX);
    /* A reader's first read is the small one. */
    sl_reader_t first = {.sub = &sink};
    assert_int_equal(read_bytes(&first), READ_BATCH_BYTES);
    first.disk_read = 1;
    assert_int_equal(read_bytes(&first), READ_BATCH_MAX);
}

/* Re-signs a clean-shutdown record whose body was edited, so that only its consistency checks
 * can refuse it. */
static void clean_resign(char *buf, size_t *len)
{
    size_t body = *len - CLEAN_SUM_LEN;
    snprintf(buf + body, CLEAN_SUM_LEN + 1, "sum %08" PRIx32 "\n", sl_crc32c(0, buf, body));
}

/* The clean-shutdown record: what is written parses back to the same segments and indexes;
 * any changed byte, a cut, and edits that keep the sum right but break an invariant (offsets
 * out of order, an index past the length, an empty segment with entries) are refused. */
static void test_clean_record(void **state)
{
    (void)state;
    sl_topic_t *t = make_topic(1u << 20, 0);
    sl_lossless_t *ll = t->ll;
    ll->segs[0].len = 300000;
    ll->segs[0].last = 120;
    for (uint64_t k = 0; k < 5; k++)
        sl_index_add(&ll->segs[0].index, 1 + k * 25, k * 65600);
    seg_add(ll, 121); /* an empty segment with a file */
    seg_add(ll, 121); /* and one without (left out) */
    uint8_t has_file[3] = {1, 1, 0};
    size_t len;
    /* A log that deleted nothing writes no `trimmed` line (and older records have none). */
    char *text = clean_format(ll, has_file, &len);
    {
        clean_seg_t *v0;
        size_t n0;
        uint64_t t0;
        ll->trimmed = 77;
        size_t l2;
        char *t2 = clean_format(ll, has_file, &l2);
        assert_int_equal(clean_parse(t2, l2, &v0, &n0, &t0), 0);
        assert_int_equal(t0, 77);
        assert_int_equal(n0, 2);
        clean_segs_free(v0, n0);
        free(t2);
        ll->trimmed = 0;
    }
    clean_seg_t *v;
    size_t nv;
    uint64_t tr;
    assert_int_equal(clean_parse(text, len, &v, &nv, &tr), 0);
    assert_int_equal(tr, 0);
    assert_int_equal(nv, 2);
    assert_int_equal(v[0].base, 1);
    assert_int_equal(v[0].len, 300000);
    assert_int_equal(v[0].last, 120);
    assert_int_equal(v[0].index.n, 5);
    assert_int_equal(v[0].index.v[4].seq, 101);
    assert_int_equal(v[0].index.v[4].off, 4 * 65600);
    assert_int_equal(v[1].base, 121);
    assert_int_equal(v[1].len, 0);
    assert_int_equal(v[1].last, 120);
    assert_int_equal(v[1].index.n, 0);
    clean_segs_free(v, nv);
    /* Every byte matters (the sum or the syntax), and so does every length. */
    char *bad = malloc(len + 1);
    for (size_t i = 0; i < len; i++) {
        memcpy(bad, text, len);
        bad[i] ^= 0x01;
        assert_int_not_equal(clean_parse(bad, len, &v, &nv, &tr), 0);
    }
    for (size_t n = 0; n < len; n++)
        assert_int_not_equal(clean_parse(text, n, &v, &nv, &tr), 0);
    /* Signed, but inconsistent. */
    static const struct {
        const char *from, *to;
    } edits[] = {
        {"seg 1 300000 120 5\n", "seg 1 300000 120 6\n"}, /* more entries than lines */
        {"seg 1 300000 120 5\n", "seg 1 200000 120 5\n"}, /* index past the length */
        {"seg 1 300000 120 5\n", "seg 1 300000 100 5\n"}, /* index past the last seq */
        {"seg 121 0 120 0\n", "seg 121 0 121 0\n"},       /* empty, yet a last seq */
        {"seg 121 0 120 0\n", "seg 1 0 0 0\n"},           /* bases not ascending */
        {"\n26 65600\n", "\n26 0\n"},                     /* offsets not ascending */
        {"\n26 65600\n", "\n1 65600\n"},                  /* seqs not ascending */
        {"1 0\n26", "2 10\n26"},                          /* the first record not at 0 */
    };
    for (size_t e = 0; e < sizeof(edits) / sizeof(edits[0]); e++) {
        char *at = strstr(text, edits[e].from);
        assert_non_null(at);
        size_t fl = strlen(edits[e].from), tl = strlen(edits[e].to);
        char *ed = malloc(len + tl + 16);
        size_t pre = (size_t)(at - text);
        memcpy(ed, text, pre);
        memcpy(ed + pre, edits[e].to, tl);
        memcpy(ed + pre + tl, at + fl, len - pre - fl);
        size_t el = len - fl + tl;
        clean_resign(ed, &el);
        assert_int_not_equal(clean_parse(ed, el, &v, &nv, &tr), 0);
        free(ed);
    }
    /* The unedited text re-signed the same way still parses (the helper is right). */
    memcpy(bad, text, len);
    clean_resign(bad, &len);
    assert_int_equal(clean_parse(bad, len, &v, &nv, &tr), 0);
    clean_segs_free(v, nv);
    free(bad);
    free(text);
    drop_topic(t);
}

/* Writes `n` empty segment files with these bases into dir, and a clean-shutdown record for
 * `rec` of them (its `trimmed` line saying `trimmed`); returns what clean_load says and sets
 * *stale. */
static int clean_case(const char *dir, const uint64_t *bases, size_t n, size_t rec_from,
                      uint64_t trimmed, size_t *stale)
{
    char path[PATH_CAP];
    DIR *d = opendir(dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    sl_topic_t *t = make_topic(1u << 20, 0);
    sl_lossless_t *ll = t->ll;
    ll->segs[0].base = bases[rec_from];
    ll->segs[0].last = bases[rec_from] - 1;
    for (size_t i = rec_from + 1; i < n; i++)
        seg_add(ll, bases[i]);
    for (size_t i = 0; i < n; i++) {
        sl_spill_seg_path(path, sizeof(path), dir, bases[i]);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        assert_true(fd >= 0);
        close(fd);
    }
    ll->trimmed = trimmed;
    uint8_t has_file[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    size_t len;
    char *text = clean_format(ll, has_file, &len);
    snprintf(path, sizeof(path), "%s/" CLEAN_NAME, dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    free(text);
    drop_topic(t);
    clean_seg_t *v = NULL;
    *stale = 0;
    int rc = clean_load(dir, bases, n, &v, stale);
    if (rc == 0)
        clean_segs_free(v, n - *stale);
    return rc;
}

/* Segment files the record does not list: only the oldest, and none newer than the segment
 * last deleted from the log (a shutdown's skipped deletes). A file recovery skipped, newer
 * than that, or any extra file with no `trimmed` line, makes the start scan. */
static void test_clean_record_stale_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/sluice-test-clean-XXXXXX";
    assert_non_null(mkdtemp(dir));
    const uint64_t bases[] = {2, 4, 5, 9};
    size_t stale;
    assert_int_equal(clean_case(dir, bases, 4, 0, 0, &stale), 0); /* all on record */
    assert_int_equal(stale, 0);
    assert_int_equal(clean_case(dir, bases, 4, 2, 4, &stale), 0); /* 2 and 4 deleted, left */
    assert_int_equal(stale, 2);
    assert_int_equal(clean_case(dir, bases, 4, 2, 3, &stale), -1); /* 4 is not a deleted one */
    assert_int_equal(clean_case(dir, bases, 4, 2, 0, &stale), -1); /* no deletes on record */
    assert_int_equal(clean_case(dir, bases, 4, 1, 2, &stale), 0);
    assert_int_equal(stale, 1);
    char path[PATH_CAP];
    snprintf(path, sizeof(path), "%s/" CLEAN_NAME, dir);
    unlink(path); /* a refused record is removed; an accepted one stays */
    for (size_t i = 0; i < 4; i++) {
        sl_spill_seg_path(path, sizeof(path), dir, bases[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* The limits a pool of kept memory (`put`, `*n` kept) holds to, emptied first: at most `max`
 * kept, each charged while kept and released when the pools are drained, and nothing kept
 * with the budget a quarter full. */
static void pool_limits(void (*put)(void *, size_t), const size_t *n, size_t max, size_t size)
{
    rbuf_drain();
    uint64_t used = sl_budget.used;
    for (size_t i = 0; i < max + 2; i++)
        put(malloc(size), size);
    assert_int_equal(*n, max);
    assert_int_equal(sl_budget.used, used + max * sl_budget_size(size));
    rbuf_drain();
    assert_int_equal(*n, 0);
    assert_int_equal(sl_budget.used, used);
    size_t big = (size_t)(sl_budget.limit / 4);
    sl_budget_charge(big);
    put(malloc(size), size);
    assert_int_equal(*n, 0);
    sl_budget_release(big);
}

/* The pool of read buffers: a freed block's buffer of at least RBUF_MIN is kept, charged to the
 * budget, and handed to the next read of that size with its charge released; one size at a
 * time (not a first read's), at most RBUF_POOL, nothing kept with the budget a quarter full or
 * after the last log. */
static void test_read_buffer_pool(void **state)
{
    (void)state;
    sl_topic_t *t = make_topic(1u << 20, 0); /* a log: the pool is open */
    size_t size = READ_BATCH_MAX + SL_READ_SLACK;
    uint64_t used = sl_budget.used;
    assert_null(rbuf_get(size));
    rbuf_put(malloc(size), size);
    assert_int_equal(rbuf.n, 1);
    assert_int_equal(sl_budget.used, used + sl_budget_size(size));
    assert_null(rbuf_get(size / 2)); /* another size */
    void *b = rbuf_get(size);
    assert_non_null(b);
    assert_int_equal(sl_budget.used, used);
    /* Through a block, as a read-back frees it. */
    sl_msg_block_t *blk = sl_msg_block_new(b, size, 1);
    blk->release = rbuf_put;
    sl_msg_block_free(blk);
    assert_int_equal(rbuf.n, 1);
    assert_int_equal(sl_budget.used, used + sl_budget_size(size));
    rbuf_put(malloc(size / 2), size / 2); /* not the size kept: freed */
    rbuf_put(malloc(65536), 65536);       /* small: freed */
    rbuf_put(malloc(READ_BATCH_BYTES + SL_READ_SLACK), READ_BATCH_BYTES + SL_READ_SLACK);
    assert_int_equal(rbuf.n, 1); /* nor a first read's (smaller than RBUF_MIN) */
    pool_limits(rbuf_put, &rbuf.n, RBUF_POOL, size);
    /* The last log freed: the pool is emptied and keeps nothing more. */
    rbuf_put(malloc(size), size);
    assert_int_equal(rbuf.n, 1);
    /* (dropping the topic releases its own charges too) */
    uint64_t before = sl_budget.used;
    drop_topic(t);
    assert_int_equal(rbuf.n, 0);
    assert_true(sl_budget.used <= before - sl_budget_size(size));
    rbuf_put(malloc(size), size);
    assert_int_equal(rbuf.n, 0);
}

/* The pool of block memories: a freed block's own memory of at least RBUF_MIN is kept, charged,
 * and taken by the next read whatever its size (the block made in it only when large enough),
 * at most BMEM_POOL, on the read buffers' terms otherwise. */
static void test_block_memory_pool(void **state)
{
    (void)state;
    sl_topic_t *t = make_topic(1u << 20, 0);
    uint64_t used = sl_budget.used;
    size_t msize;
    assert_null(bmem_get(&msize));
    /* A block of 4,608 messages (about 850 KB, a 1 MiB read of 230-byte records) freed on the
     * loop: its memory is kept. */
    uint32_t cap = 4608;
    sl_msg_block_t *blk = sl_msg_block_new(malloc(64), 64, cap);
    blk->release_mem = bmem_put;
    assert_int_equal(blk->mem_size, sl_msg_block_size(cap));
    void *mem = blk;
    sl_msg_block_free(blk);
    assert_int_equal(rbuf.nmem, 1);
    assert_int_equal(sl_budget.used, used + sl_budget_size(sl_msg_block_size(cap)));
    void *got = bmem_get(&msize);
    assert_ptr_equal(got, mem);
    assert_int_equal(msize, sl_msg_block_size(cap));
    assert_int_equal(sl_budget.used, used);
    /* A smaller block made in it charges the whole memory, and gives it back whole. */
    sl_msg_block_t *b2 = sl_msg_block_new_in(got, msize, malloc(64), 64, 10);
    assert_ptr_equal(b2, got);
    assert_int_equal(b2->charge, sl_budget_size(msize) + sl_budget_size(64));
    for (uint32_t i = 0; i < 10; i++)
        (void)sl_msg_block_add(b2, i + 1, NULL, 0, "x", 1);
    b2->release_mem = bmem_put;
    sl_budget_charge(b2->charge); /* as read_done does */
    for (uint32_t i = 0; i < 10; i++)
        sl_msg_unref(&b2->msgs[i]); /* the last one frees the block */
    assert_int_equal(rbuf.nmem, 1);
    assert_int_equal(sl_budget.used, used + sl_budget_size(msize));
    bmem_put(malloc(65536), 65536); /* small: freed */
    assert_int_equal(rbuf.nmem, 1);
    pool_limits(bmem_put, &rbuf.nmem, BMEM_POOL, RBUF_MIN);
    /* The last log freed: emptied, and nothing more kept. */
    bmem_put(malloc(RBUF_MIN), RBUF_MIN);
    assert_int_equal(rbuf.nmem, 1);
    drop_topic(t);
    assert_int_equal(rbuf.nmem, 0);
    bmem_put(malloc(RBUF_MIN), RBUF_MIN);
    assert_int_equal(rbuf.nmem, 0);
}

/* The exit's batch: a record whose file synced is renamed into place; one whose sync failed
 * (here a pipe, which fdatasync refuses) is not, and the old record goes too. */
static void test_exit_batch(void **state)
{
    (void)state;
    char dir[2][64];
    for (int k = 0; k < 2; k++) {
        snprintf(dir[k], sizeof(dir[k]), "/tmp/sluice-test-exit-XXXXXX");
        assert_non_null(mkdtemp(dir[k]));
    }
    char path[256];
    snprintf(path, sizeof(path), "%s/" CLEAN_NAME, dir[1]);
    FILE *f = fopen(path, "w"); /* an old record */
    assert_non_null(f);
    fclose(f);
    for (int k = 0; k < 2; k++) {
        exit_item_t *e = exit_item(&(sl_lossless_t){.dir = dir[k]});
        e->clean_fd = tmp_write(dir[k], CLEAN_NAME, "rec", 3, 0);
        assert_true(e->clean_fd >= 0);
        if (k == 1) {
            int p[2];
            assert_int_equal(pipe(p), 0);
            close(e->clean_fd);
            close(p[1]);
            e->clean_fd = p[0];
        }
    }
    exit_run();
    assert_int_equal(exits.n, 0);
    for (int k = 0; k < 2; k++) {
        struct stat st;
        snprintf(path, sizeof(path), "%s/" CLEAN_NAME, dir[k]);
        assert_int_equal(stat(path, &st) == 0, k == 0);
        snprintf(path, sizeof(path), "%s/" CLEAN_NAME ".tmp", dir[k]);
        assert_int_equal(stat(path, &st), -1);
        snprintf(path, sizeof(path), "%s/" CLEAN_NAME, dir[k]);
        unlink(path);
        rmdir(dir[k]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_and_trim),
        cmocka_unit_test(test_yielding_cursor),
        cmocka_unit_test(test_no_publisher_left_waiting),
        cmocka_unit_test(test_durable_and_deadlines),
        cmocka_unit_test(test_dir_names),
        cmocka_unit_test(test_cursor_names),
        cmocka_unit_test(test_cursor_file_format),
        cmocka_unit_test(test_cursor_file_on_disk),
        cmocka_unit_test(test_read_next_untaken),
        cmocka_unit_test(test_msg_block),
        cmocka_unit_test(test_read_bytes),
        cmocka_unit_test(test_clean_record),
        cmocka_unit_test(test_clean_record_stale_files),
        cmocka_unit_test(test_read_buffer_pool),
        cmocka_unit_test(test_block_memory_pool),
        cmocka_unit_test(test_exit_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
