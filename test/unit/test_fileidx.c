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

static void job_of(sl_fjob_t *j, char *buf, size_t *ends, uint64_t *seqs, uint64_t from, uint32_t n)
{
    size_t len = 0;
    for (uint32_t i = 0; i < n; i++) {
        len += (size_t)sprintf(buf + len, "m%llu\n", (unsigned long long)(from + i));
        ends[i] = len;
        seqs[i] = from + i;
    }
    memset(j, 0, sizeof(*j));
    j->buf = buf;
    j->ends = ends;
    j->seqs = seqs;
    j->n = n;
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
    char buf[4096], got[4096], path[512];
    size_t ends[64];
    uint64_t seqs[64];
    sl_fjob_t j;
    snprintf(root, sizeof(root), "/tmp/sl_fileidx_%d", (int)getpid());
    sl_fwriter_t *w = sl_fwriter_new(root, "a/b", 3, "raw", SL_FILE_SYNC_NEVER, 1 << 20, 0);
    job_of(&j, buf, ends, seqs, 1, 3);
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
    job_of(&j, buf, ends, seqs, 2, 5);
    assert_int_equal(sl_fwriter_write(w, &j), 0);
    assert_int_equal(w->skipped, 2);
    assert_int_equal(w->truncated_tail, 1);
    sl_fwriter_free(w);
    read_all(path, got, sizeof(got));
    assert_string_equal(got, "m1\nm2\nm3\nm4\nm5\nm6\n");

    /* Everything already there: nothing written. */
    w = sl_fwriter_new(root, "a/b", 3, "raw", SL_FILE_SYNC_BATCH, 1 << 20, 0);
    job_of(&j, buf, ends, seqs, 5, 2);
    assert_int_equal(sl_fwriter_write(w, &j), 0);
    assert_int_equal(w->skipped, 2);
    sl_fwriter_free(w);
    read_all(path, got, sizeof(got));
    assert_string_equal(got, "m1\nm2\nm3\nm4\nm5\nm6\n");
}

static void test_writer_rotates(void **state)
{
    (void)state;
    char buf[8192], got[8192], path[512];
    size_t ends[64];
    uint64_t seqs[64];
    sl_fjob_t j;
    sl_fwriter_t *w = sl_fwriter_new(root, "r", 1, "raw", SL_FILE_SYNC_ROTATE, 4096, 0);
    uint64_t seq = 1;
    for (int k = 0; k < 40; k++) {
        job_of(&j, buf, ends, seqs, seq, 50);
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
    job_of(&j, buf, ends, seqs, seq, 1);
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
    char buf[256], path[512];
    size_t ends[4];
    uint64_t seqs[4];
    sl_fjob_t j;
    /* The directory's parent is a plain file: every try fails until it is a directory. */
    snprintf(path, sizeof(path), "/tmp/sl_fileidx_u%d", (int)getpid());
    FILE *f = fopen(path, "w");
    fclose(f);
    char dir[600];
    snprintf(dir, sizeof(dir), "%s/sub", path);
    sl_fwriter_t *w = sl_fwriter_new(dir, "t", 1, "raw", SL_FILE_SYNC_BATCH, 1 << 20, 0);
    job_of(&j, buf, ends, seqs, 1, 2);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_lines),         cmocka_unit_test(test_last_commit),
        cmocka_unit_test(test_names_rotation_skip), cmocka_unit_test(test_writer_recovers),
        cmocka_unit_test(test_writer_rotates),      cmocka_unit_test(test_writer_unwritable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
