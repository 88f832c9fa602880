/*
 * Unit tests of the file sink's bookkeeping (sink/fileidx.h): index lines, the last commit
 * found behind a torn tail, segment names, the rotation rule and what a redelivery skips; and
 * of its writer (sink/file.h) on a scratch directory: a torn tail cut back at the next start,
 * records already written never written twice, rotation by size.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/sinkconf.h"
#include "sink/batch.h"
#include "sink/file.h"
#include "sink/fileidx.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_index_lines(void **state)
{
    (void)state;
    sl_fileidx_rec_t r = {.epoch = "0a1b", .seq = 42, .size = 1234}, p;
    char line[SL_FILEIDX_LINE_MAX];
    int n = sl_fileidx_format(&r, line, sizeof(line));
    assert_string_equal(line, "0a1b 42 1234\n");
    assert_int_equal(sl_fileidx_parse(line, (size_t)n - 1, &p), 0);
    assert_string_equal(p.epoch, "0a1b");
    assert_int_equal(p.seq, 42);
    assert_int_equal(p.size, 1234);
    const char *bad[] = {"",         "0a1b",     "0a1b 42",
                         "0a1b 42 ", "0A1B 1 2", "x 1 2",
                         "0a 1 2 3", "0a -1 2",  "0a 1 99999999999999999999",
                         " 1 2"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sl_fileidx_parse(bad[i], strlen(bad[i]), &p), -1);
    assert_int_equal(sl_fileidx_format(&r, line, 5), -1);
}

static void test_last_commit(void **state)
{
    (void)state;
    sl_fileidx_rec_t r;
    size_t end;
    const char *a = "aa 1 10\naa 5 50\naa 9 9";
    assert_int_equal(sl_fileidx_last(a, strlen(a), &r, &end), 1);
    assert_int_equal(r.seq, 5);
    assert_int_equal(r.size, 50);
    assert_int_equal(end, 16);
    /* A complete but garbled last line does not hide the one before it. */
    const char *b = "aa 1 10\nzz?\n";
    assert_int_equal(sl_fileidx_last(b, strlen(b), &r, &end), 1);
    assert_int_equal(r.seq, 1);
    assert_int_equal(end, 8);
    assert_int_equal(sl_fileidx_last("aa 1", 4, &r, &end), 0);
    assert_int_equal(sl_fileidx_last("", 0, &r, &end), 0);
}

static void test_names_rotation_skip(void **state)
{
    (void)state;
    char name[32];
    assert_int_equal(sl_fileseg_name(7, "jsonl", name, sizeof(name)), 16);
    assert_string_equal(name, "0000000007.jsonl");
    assert_int_equal(sl_fileseg_parse(name, "jsonl"), 7);
    assert_int_equal(sl_fileseg_parse(name, "raw"), 0);
    assert_int_equal(sl_fileseg_parse("000000007.jsonl", "jsonl"), 0);
    assert_int_equal(sl_fileseg_parse("00000000x7.jsonl", "jsonl"), 0);
    assert_int_equal(sl_fileseg_parse("9999999999.idx", "idx"), 0); /* above 32 bits */

    assert_false(sl_fileseg_rotate_due(0, 0, 1000000, 10, 1)); /* empty never rotates */
    assert_true(sl_fileseg_rotate_due(10, 0, 0, 10, 0));
    assert_false(sl_fileseg_rotate_due(9, 0, 1000000, 10, 0)); /* no interval */
    assert_true(sl_fileseg_rotate_due(9, 100, 1100, 10, 1000));
    assert_false(sl_fileseg_rotate_due(9, 100, 1099, 10, 1000));

    sl_fileidx_rec_t last = {.epoch = "ab", .seq = 5};
    uint64_t seqs[] = {3, 4, 5, 6, 7};
    assert_int_equal(sl_fileidx_skip(&last, "ab", seqs, 5), 3);
    assert_int_equal(sl_fileidx_skip(&last, "cd", seqs, 5), 0); /* another epoch */
    assert_int_equal(sl_fileidx_skip(NULL, "ab", seqs, 5), 0);
    assert_int_equal(sl_fileidx_skip(&last, "ab", seqs + 3, 2), 0);
}

/* ---- the writer on a scratch directory ---- */

static char root[256];

/* Messages m<from> … as a raw job (payload "m<seq>"); the test's own, never published. */
#define NMSG 1200
static sl_msg_t msgv[NMSG];
static sl_msg_t *msgp[NMSG];
static char pay[NMSG][32];

static void job_of(sl_fjob_t *j, uint64_t from, uint32_t n)
{
    assert_true(n <= NMSG);
    for (uint32_t i = 0; i < n; i++) {
        sl_msg_t *m = &msgv[i];
        memset(m, 0, sizeof(*m));
        m->seq = from + i;
        m->payload_len = (size_t)sprintf(pay[i], "m%llu", (unsigned long long)(from + i));
        m->payload = pay[i];
        msgp[i] = m;
    }
    memset(j, 0, sizeof(*j));
    j->msgs = msgp;
    j->n = n;
    j->raw = 1;
    j->topic = "a/b";
    j->topic_len = 3;
    j->epoch = "e1";
    j->now_ms = 1000;
}

static size_t read_all(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(out, 1, cap - 1, f);
    fclose(f);
    out[n] = '\0';
    return n;
}

static void test_writer_recovers(void **state)
{
    (void)state;
    char got[4096], path[512];
    sl_fjob_t j;
    snprintf(root, sizeof(root), "/tmp/sl_fileidx_%d", (int)getpid());
    sl_fwriter_t *w = sl_fwriter_new(root, "a/b", 3, "raw", SL_FILE_SYNC_NEVER, 1 << 20, 0);
    job_of(&j, 1, 3);
    assert_int_equal(sl_fwriter_write(w, &j), 0);
    sl_fwriter_free(w);
    snprintf(path, sizeof(path), "%s/a%%2Fb/0000000001.raw", root);
    read_all(path, got, sizeof(got));
    assert_string_equal(got, "m1\nm2\nm3\n");

    /* A crash mid-write: bytes past the commit, a torn record among them. */
    FILE *f = fopen(path, "a");
    fputs("m4\nm5\nm", f);
    fclose(f);
    w = sl_fwriter_new(root, "a/b", 3, "raw", SL_FILE_SYNC_NEVER, 1 << 20, 0);
    /* The redelivery starts at the last acknowledged point, before what was committed. */
    job_of(&j, 2, 5);
    assert_int_equal(sl_fwriter_write(w, &j), 0);
    assert_int_equal(w->skipped, 2);
    assert_int_equal(w->truncated_tail, 1);
    sl_fwriter_free(w);
    read_all(path, got, sizeof(got));
    assert_string_equal(got, "m1\nm2\nm3\nm4\nm5\nm6\n");

    /* Everything already there: nothing written. */
    w = sl_fwriter_new(root, "a/b", 3, "raw", SL_FILE_SYNC_BATCH, 1 << 20, 0);
    job_of(&j, 5, 2);
    assert_int_equal(sl_fwriter_write(w, &j), 0);
    assert_int_equal(w->skipped, 2);
    sl_fwriter_free(w);
    read_all(path, got, sizeof(got));
    assert_string_equal(got, "m1\nm2\nm3\nm4\nm5\nm6\n");
}

static void test_writer_rotates(void **state)
{
    (void)state;
    char got[8192], path[512];
    sl_fjob_t j;
    sl_fwriter_t *w = sl_fwriter_new(root, "r", 1, "raw", SL_FILE_SYNC_ROTATE, 4096, 0);
    uint64_t seq = 1;
    for (int k = 0; k < 40; k++) {
        job_of(&j, seq, 50);
        seq += 50;
        assert_int_equal(sl_fwriter_write(w, &j), 0);
    }
    sl_fwriter_free(w);
    /* Every record once, in order, across the segments; none much above rotate_bytes. */
    uint64_t want = 1;
    for (uint32_t i = 1;; i++) {
        snprintf(path, sizeof(path), "%s/r/%010u.raw", root, i);
        size_t n = read_all(path, got, sizeof(got));
        if (n == 0)
            break;
        assert_true(n < 4096 + 600);
        for (char *p = got; *p; p = strchr(p, '\n') + 1) {
            assert_int_equal(strtoull(p + 1, NULL, 10), want);
            want++;
        }
    }
    assert_int_equal(want, seq);
    /* A restart appends to the newest segment and numbers on from it. */
    w = sl_fwriter_new(root, "r", 1, "raw", SL_FILE_SYNC_ROTATE, 4096, 0);
    job_of(&j, seq, 1);
    assert_int_equal(sl_fwriter_write(w, &j), 0);
    assert_int_equal(w->skipped, 0);
    sl_fwriter_free(w);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

static void test_writer_unwritable(void **state)
{
    (void)state;
    char path[512];
    sl_fjob_t j;
    /* The directory's parent is a plain file: every try fails until it is a directory. */
    snprintf(path, sizeof(path), "/tmp/sl_fileidx_u%d", (int)getpid());
    FILE *f = fopen(path, "w");
    fclose(f);
    char dir[600];
    snprintf(dir, sizeof(dir), "%s/sub", path);
    sl_fwriter_t *w = sl_fwriter_new(dir, "t", 1, "raw", SL_FILE_SYNC_BATCH, 1 << 20, 0);
    job_of(&j, 1, 2);
    assert_true(sl_fwriter_write(w, &j) < 0);
    assert_string_equal(w->what, "mkdir");
    assert_true(sl_fwriter_write(w, &j) < 0);
    unlink(path);
    assert_int_equal(sl_fwriter_write(w, &j), 0);
    sl_fwriter_free(w);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    assert_int_equal(system(cmd), 0);
}

/* A jsonl job: the envelopes built on the worker are byte for byte what the batch builder makes,
 * across several scratch flushes, with a gap line first, events and a base64 payload; a
 * redelivery that overlaps writes neither the gap nor the records again. */
static void test_writer_jsonl(void **state)
{
    (void)state;
    char path[600];
    snprintf(root, sizeof(root), "/tmp/sl_fileidx_j%d", (int)getpid());
    sl_fjob_t j;
    job_of(&j, 1, 600);
    j.raw = 0;
    msgv[7].event = "kind.a";
    msgv[7].event_len = 6;
    msgv[9].payload = "\xff\xfe\x01";
    msgv[9].payload_len = 3;
    msgv[11].payload = "quote\" and \\ and \n";
    msgv[11].payload_len = strlen(msgv[11].payload);
    const char gap[] = "{\"sluice\":\"gap\"}\n";
    j.gap = gap;
    j.gap_len = sizeof(gap) - 1;
    size_t cap = sl_batch_line_max(3, 6, 32) * 4; /* a few records a flush */
    char *scratch = malloc(cap);
    j.scratch = scratch;
    j.scratch_cap = cap;
    sl_fwriter_t *w = sl_fwriter_new(root, "a/b", 3, "jsonl", SL_FILE_SYNC_NEVER, 1 << 30, 0);
    assert_int_equal(sl_fwriter_write(w, &j), 0);

    sl_bbuf_t want = {0};
    sl_bbuf_put(&want, gap, sizeof(gap) - 1);
    for (uint32_t i = 0; i < 600; i++)
        sl_batch_add(&want, SL_FMT_NDJSON, i, "a/b", 3, "e1", msgv[i].seq, msgv[i].event,
                     msgv[i].payload, msgv[i].payload_len);

    /* Overlapping redelivery (seqs 501..700) after a gap: only 601..700 are new. */
    job_of(&j, 501, 200);
    j.raw = 0;
    j.gap = gap;
    j.gap_len = sizeof(gap) - 1;
    j.scratch = scratch;
    j.scratch_cap = cap;
    assert_int_equal(sl_fwriter_write(w, &j), 0);
    assert_int_equal(w->skipped, 100);
    sl_fwriter_free(w);
    for (uint32_t i = 100; i < 200; i++)
        sl_batch_add(&want, SL_FMT_NDJSON, i, "a/b", 3, "e1", msgv[i].seq, NULL, msgv[i].payload,
                     msgv[i].payload_len);

    snprintf(path, sizeof(path), "%s/a%%2Fb/0000000001.jsonl", root);
    size_t sz = want.len + 1;
    char *got = malloc(sz + 1);
    assert_int_equal(read_all(path, got, sz + 1), want.len);
    assert_memory_equal(got, want.p, want.len);
    const char first[] = "{\"id\":\"e1-1\",\"topic\":\"a/b\",\"data\":\"m1\"}\n";
    assert_memory_equal(got + sizeof(gap) - 1, first, sizeof(first) - 1);
    assert_non_null(strstr(got, "{\"id\":\"e1-600\",\"topic\":\"a/b\",\"data\":\"m600\"}\n"));
    assert_non_null(strstr(got, "\"event\":\"kind.a\""));
    assert_non_null(strstr(got, "\"encoding\":\"base64\""));

    /* A scratch too small for a record: refused, nothing committed. */
    w = sl_fwriter_new(root, "a/b", 3, "jsonl", SL_FILE_SYNC_NEVER, 1 << 30, 0);
    job_of(&j, 701, 3);
    j.raw = 0;
    j.scratch = scratch;
    j.scratch_cap = 16;
    assert_true(sl_fwriter_write(w, &j) < 0);
    job_of(&j, 701, 1);
    j.raw = 0;
    j.scratch = scratch;
    j.scratch_cap = cap;
    assert_int_equal(sl_fwriter_write(w, &j), 0);
    assert_int_equal(w->skipped, 0);
    sl_fwriter_free(w);
    sl_batch_add(&want, SL_FMT_NDJSON, 0, "a/b", 3, "e1", 701, NULL, "m701", 4);
    free(got);
    got = malloc(want.len + 2);
    assert_int_equal(read_all(path, got, want.len + 2), want.len);
    assert_memory_equal(got, want.p, want.len);
    free(got);
    free(scratch);
    sl_bbuf_free(&want);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

/* Raw records go out many a pwritev, more than one vector's worth in one job. */
static void test_writer_raw_many(void **state)
{
    (void)state;
    char path[600];
    snprintf(root, sizeof(root), "/tmp/sl_fileidx_r%d", (int)getpid());
    sl_fjob_t j;
    job_of(&j, 1, 1100);
    sl_fwriter_t *w = sl_fwriter_new(root, "x", 1, "raw", SL_FILE_SYNC_BATCH, 1 << 30, 0);
    assert_int_equal(sl_fwriter_write(w, &j), 0);
    sl_fwriter_free(w);
    snprintf(path, sizeof(path), "%s/x/0000000001.raw", root);
    static char got[16384];
    size_t n = read_all(path, got, sizeof(got));
    size_t off = 0;
    for (uint64_t i = 1; i <= 1100; i++) {
        char want[32];
        int l = sprintf(want, "m%llu\n", (unsigned long long)i);
        assert_true(off + (size_t)l <= n);
        assert_memory_equal(got + off, want, (size_t)l);
        off += (size_t)l;
    }
    assert_int_equal(off, n);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_lines),         cmocka_unit_test(test_last_commit),
        cmocka_unit_test(test_names_rotation_skip), cmocka_unit_test(test_writer_recovers),
        cmocka_unit_test(test_writer_rotates),      cmocka_unit_test(test_writer_unwritable),
        cmocka_unit_test(test_writer_jsonl),        cmocka_unit_test(test_writer_raw_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
