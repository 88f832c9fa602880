/*
 * Unit tests of the on-disk log's codec and files: CRC32C, records, the sparse index, scanning
 * (torn tails truncated, corruption found where it starts), and reading a range back.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "store/spill.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_crc32c(void **state)
{
    (void)state;
    /* The check value of CRC-32C. */
    assert_int_equal(sl_crc32c(0, "123456789", 9), 0xe3069283u);
    assert_int_equal(sl_crc32c(0, "", 0), 0);
    /* Incremental equals whole. */
    uint32_t c = sl_crc32c(0, "1234", 4);
    assert_int_equal(sl_crc32c(c, "56789", 5), 0xe3069283u);
    assert_int_equal(sl_crc32c_sw(0, "123456789", 9), 0xe3069283u);
    /* The accelerated and the table versions agree on every length and alignment. */
    uint8_t buf[300];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 131 + 7);
    for (size_t off = 0; off < 9; off++)
        for (size_t n = 0; n + off <= sizeof(buf); n += 7)
            assert_int_equal(sl_crc32c(0x1234, buf + off, n), sl_crc32c_sw(0x1234, buf + off, n));
}

static void test_record_roundtrip(void **state)
{
    (void)state;
    uint8_t buf[256];
    size_t n = sl_rec_size(3, 5);
    assert_int_equal(n, SL_REC_HDR + SL_REC_FIXED + 8);
    sl_rec_encode(buf, 42, 1700000000123ull, "evt", 3, "hello", 5);
    sl_rec_t r;
    assert_int_equal(sl_rec_decode(buf, n, &r), SL_REC_OK);
    assert_int_equal(r.seq, 42);
    assert_true(r.ts_ms == 1700000000123ull);
    assert_int_equal(r.event_len, 3);
    assert_memory_equal(r.event, "evt", 3);
    assert_int_equal(r.payload_len, 5);
    assert_memory_equal(r.payload, "hello", 5);
    assert_int_equal(r.size, n);
    /* No event, empty payload. */
    sl_rec_encode(buf, 7, 1, NULL, 0, "", 0);
    assert_int_equal(sl_rec_decode(buf, sl_rec_size(0, 0), &r), SL_REC_OK);
    assert_null(r.event);
    assert_int_equal(r.payload_len, 0);
    /* Every shorter prefix is short, every flipped bit is corrupt. */
    sl_rec_encode(buf, 42, 5, "evt", 3, "hello", 5);
    for (size_t k = 0; k < n; k++)
        assert_int_equal(sl_rec_decode(buf, k, &r), SL_REC_SHORT);
    for (size_t k = 4; k < n; k++) {
        for (int bit = 0; bit < 8; bit++) {
            buf[k] ^= (uint8_t)(1 << bit);
            assert_int_equal(sl_rec_decode(buf, n, &r), SL_REC_CORRUPT);
            buf[k] ^= (uint8_t)(1 << bit);
        }
    }
    /* An absurd length is corrupt, not a reason to wait for more. */
    uint8_t bad[16] = {0xff, 0xff, 0xff, 0xff};
    assert_int_equal(sl_rec_decode(bad, sizeof(bad), &r), SL_REC_CORRUPT);
    uint8_t tiny[16] = {3, 0, 0, 0};
    assert_int_equal(sl_rec_decode(tiny, sizeof(tiny), &r), SL_REC_CORRUPT);
}

static void test_index(void **state)
{
    (void)state;
    sl_index_t ix = {0};
    assert_int_equal(sl_index_find(&ix, 5), 0);
    sl_index_add(&ix, 10, 0);
    sl_index_add(&ix, 20, 1000);
    sl_index_add(&ix, 35, 2500);
    assert_int_equal(sl_index_find(&ix, 9), 0);
    assert_int_equal(sl_index_find(&ix, 10), 0);
    assert_int_equal(sl_index_find(&ix, 19), 0);
    assert_int_equal(sl_index_find(&ix, 20), 1000);
    assert_int_equal(sl_index_find(&ix, 34), 1000);
    assert_int_equal(sl_index_find(&ix, 35), 2500);
    assert_int_equal(sl_index_find(&ix, 1000000), 2500);
    free(ix.v);
}

/* Writes records first..last (payload "p<seq>" padded to `pad` bytes) to a new file; returns
 * the offsets at which each record starts (caller frees). */
static uint64_t *write_segment(const char *path, uint64_t first, uint64_t last, size_t pad)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    uint64_t *offs = calloc(last - first + 2, sizeof(*offs));
    uint64_t off = 0;
    char payload[4096];
    uint8_t buf[8192];
    for (uint64_t s = first; s <= last; s++) {
        memset(payload, 'x', pad);
        int n = snprintf(payload, sizeof(payload), "p%llu", (unsigned long long)s);
        payload[n] = 'x';
        size_t size = sl_rec_size(s % 2 ? 2 : 0, pad);
        sl_rec_encode(buf, s, 1000 + s, s % 2 ? "ev" : NULL, s % 2 ? 2 : 0, payload, pad);
        assert_int_equal(sl_spill_append(fd, off, buf, size, 0), 0);
        offs[s - first] = off;
        off += size;
    }
    offs[last - first + 1] = off;
    close(fd);
    return offs;
}

static void test_scan_and_repair(void **state)
{
    (void)state;
    char dir[] = "/tmp/sluice-spill-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    sl_spill_seg_path(path, sizeof(path), dir, 100);
    assert_non_null(strstr(path, "/00000000000000000100.seg"));

    /* Intact: 100..399, 1000-byte payloads: the index has an entry every 64 KiB. */
    uint64_t *offs = write_segment(path, 100, 399, 1000);
    sl_scan_t sc;
    assert_int_equal(sl_spill_scan(path, 1, &sc), 0);
    assert_int_equal(sc.count, 300);
    assert_int_equal(sc.first, 100);
    assert_int_equal(sc.last, 399);
    assert_int_equal(sc.valid_len, offs[300]);
    assert_false(sc.torn);
    assert_false(sc.corrupt);
    assert_true(sc.index.n >= offs[300] / SL_IDX_STEP);
    assert_int_equal(sc.index.v[0].seq, 100);
    assert_int_equal(sc.index.v[0].off, 0);

    /* Reading back from the middle, through the index. */
    uint8_t *buf;
    size_t len;
    uint64_t last = 0;
    int n = sl_spill_read(path, sl_index_find(&sc.index, 250), sc.valid_len, 250, 20 * 1030, 0,
                          NULL, &buf, &len, &last, NULL);
    assert_true(n >= 19);
    sl_rec_t r;
    assert_int_equal(sl_rec_decode(buf, len, &r), SL_REC_OK);
    assert_int_equal(r.seq, 250);
    assert_memory_equal(r.payload, "p250", 4);
    size_t pos = 0;
    uint64_t want = 250;
    while (pos < len) {
        assert_int_equal(sl_rec_decode(buf + pos, len - pos, &r), SL_REC_OK);
        assert_int_equal(r.seq, want++);
        pos += r.size;
    }
    assert_int_equal(last, want - 1);
    free(buf);
    free(sc.index.v);

    /* A torn tail: half of one more record. Scanning repairs the file to the valid part. */
    int fd = open(path, O_WRONLY | O_APPEND);
    uint8_t rec[2048];
    sl_rec_encode(rec, 400, 1, NULL, 0, "torn", 4);
    assert_int_equal(write(fd, rec, 10), 10);
    close(fd);
    assert_int_equal(sl_spill_scan(path, 1, &sc), 0);
    assert_true(sc.torn);
    assert_false(sc.corrupt);
    assert_int_equal(sc.count, 300);
    assert_int_equal(sc.valid_len, offs[300]);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal((uint64_t)st.st_size, offs[300]);
    free(sc.index.v);

    /* A flipped byte inside record 200: everything before it stays, the scan stops there. */
    fd = open(path, O_RDWR);
    uint8_t b;
    assert_int_equal(pread(fd, &b, 1, (off_t)offs[100] + 30), 1);
    b ^= 0x40;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)offs[100] + 30), 1);
    close(fd);
    assert_int_equal(sl_spill_scan(path, 0, &sc), 0);
    assert_true(sc.corrupt);
    assert_int_equal(sc.count, 100);
    assert_int_equal(sc.last, 199);
    assert_int_equal(sc.valid_len, offs[100]);
    free(sc.index.v);
    /* A read that meets the damage returns what came before it. */
    n = sl_spill_read(path, 0, offs[300], 190, 1u << 20, 0, NULL, &buf, &len, &last, NULL);
    assert_int_equal(n, 10);
    assert_int_equal(last, 199);
    free(buf);
    /* Repair cuts it there. */
    assert_int_equal(sl_spill_scan(path, 1, &sc), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal((uint64_t)st.st_size, offs[100]);
    free(sc.index.v);

    /* A missing file. */
    assert_int_equal(
        sl_spill_read("/nonexistent/x.seg", 0, 10, 1, 100, 0, NULL, &buf, &len, &last, NULL),
        -ENOENT);
    free(offs);
    unlink(path);
    rmdir(dir);
}

/* A log whose ids are an external log's offsets has holes: seqs only increase. The scan takes
 * them, reading from inside a hole starts at the next record, and a seq that goes back is
 * corruption. */
static void test_holes(void **state)
{
    (void)state;
    char dir[] = "/tmp/sluice-spill-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    sl_spill_seg_path(path, sizeof(path), dir, 5);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    static const uint64_t seqs[] = {5, 6, 9, 10000000, 10000002, 10000001};
    uint8_t buf[256];
    uint64_t off = 0, offs[6];
    for (int i = 0; i < 6; i++) {
        size_t size = sl_rec_size(0, 4);
        sl_rec_encode(buf, seqs[i], 1, NULL, 0, "data", 4);
        assert_int_equal(sl_spill_append(fd, off, buf, size, 0), 0);
        offs[i] = off;
        off += size;
    }
    close(fd);
    sl_scan_t sc;
    assert_int_equal(sl_spill_scan(path, 0, &sc), 0);
    assert_true(sc.corrupt); /* 10000001 after 10000002 */
    assert_int_equal(sc.count, 5);
    assert_int_equal(sc.first, 5);
    assert_int_equal(sc.last, 10000002);
    assert_int_equal(sc.valid_len, offs[5]);
    uint8_t *rb;
    size_t len;
    uint64_t last = 0;
    int n = sl_spill_read(path, sl_index_find(&sc.index, 7), sc.valid_len, 7, 1u << 20, 0, NULL,
                          &rb, &len, &last, NULL);
    assert_int_equal(n, 3);
    sl_rec_t r;
    assert_int_equal(sl_rec_decode(rb, len, &r), SL_REC_OK);
    assert_int_equal(r.seq, 9);
    assert_int_equal(last, 10000002);
    free(rb);
    free(sc.index.v);
    unlink(path);
    rmdir(dir);
}

/* A record larger than the scan's buffer is read whole. */
static void test_large_record(void **state)
{
    (void)state;
    char dir[] = "/tmp/sluice-spill-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    sl_spill_seg_path(path, sizeof(path), dir, 1);
    size_t big = 3u << 20;
    uint8_t *rec = malloc(sl_rec_size(0, big));
    char *payload = malloc(big);
    memset(payload, 'z', big);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    sl_rec_encode(rec, 1, 1, NULL, 0, payload, big);
    assert_int_equal(sl_spill_append(fd, 0, rec, sl_rec_size(0, big), 1), 0);
    sl_rec_encode(rec, 2, 1, NULL, 0, "small", 5);
    assert_int_equal(sl_spill_append(fd, sl_rec_size(0, big), rec, sl_rec_size(0, 5), 1), 0);
    close(fd);
    sl_scan_t sc;
    assert_int_equal(sl_spill_scan(path, 1, &sc), 0);
    assert_int_equal(sc.count, 2);
    assert_false(sc.torn || sc.corrupt);
    uint8_t *buf;
    size_t len;
    uint64_t last;
    assert_int_equal(
        sl_spill_read(path, 0, sc.valid_len, 1, 1024, 0, NULL, &buf, &len, &last, NULL), 1);
    sl_rec_t r;
    assert_int_equal(sl_rec_decode(buf, len, &r), SL_REC_OK);
    assert_int_equal(r.payload_len, big);
    free(buf);
    free(sc.index.v);
    free(rec);
    free(payload);
    unlink(path);
    rmdir(dir);
}

/* Reads from every kind of start against what the records are: the records with seq >= from,
 * in order, taken while fewer than max_bytes were collected; whatever the start offset (at or
 * before from's record), however max_bytes falls across records and the 64 KiB read slack. A
 * limit that cuts a record is damage when nothing came before it. */
static void test_read_cases(void **state)
{
    (void)state;
    char dir[] = "/tmp/sluice-spill-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    sl_spill_seg_path(path, sizeof(path), dir, 1);
    uint64_t *offs = write_segment(path, 1, 600, 700); /* offs[i]: record 1 + i */
    uint64_t end = offs[600];
    static const size_t maxes[] = {1, 700, 5000, 65536, 70000, 300000, 1u << 20};
    for (uint64_t from = 1; from <= 600; from += 37) {
        for (size_t mi = 0; mi < sizeof(maxes) / sizeof(maxes[0]); mi++) {
            uint64_t starts[] = {0, offs[from - 1], offs[(from - 1) / 2]};
            for (size_t si = 0; si < 3; si++) {
                uint8_t *buf;
                size_t len;
                uint64_t last = 0;
                int n = sl_spill_read(path, starts[si], end, from, maxes[mi], 0, NULL, &buf, &len,
                                      &last, NULL);
                size_t want_n = 0, want_len = 0;
                for (uint64_t q = from; q <= 600 && want_len < maxes[mi]; q++) {
                    want_len += (size_t)(offs[q] - offs[q - 1]);
                    want_n++;
                }
                assert_int_equal(n, want_n);
                assert_int_equal(len, want_len);
                assert_int_equal(last, from + want_n - 1);
                size_t pos = 0;
                for (uint64_t q = from; pos < len; q++) {
                    sl_rec_t r;
                    assert_int_equal(sl_rec_decode(buf + pos, len - pos, &r), SL_REC_OK);
                    assert_int_equal(r.seq, q);
                    pos += r.size;
                }
                free(buf);
            }
        }
    }
    /* A limit inside record 11: records 1..10, then nothing more; from 11, damage. */
    uint8_t *buf;
    size_t len;
    uint64_t last = 0;
    assert_int_equal(
        sl_spill_read(path, 0, offs[10] + 100, 1, 1u << 20, 0, NULL, &buf, &len, &last, NULL), 10);
    assert_int_equal(last, 10);
    free(buf);
    assert_int_equal(sl_spill_read(path, offs[10], offs[10] + 100, 11, 1u << 20, 0, NULL, &buf,
                                   &len, &last, NULL),
                     -EBADMSG);
    /* A limit past the end of the file. */
    assert_int_equal(
        sl_spill_read(path, offs[599], end + 10, 600, 1u << 20, 0, NULL, &buf, &len, &last, NULL),
        1);
    free(buf);
    free(offs);
    unlink(path);
    rmdir(dir);
}

/* Flips one payload byte of the record at `off` (its CRC no longer matches). */
static void damage_at(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b;
    off_t at = (off_t)(off + SL_REC_HDR + SL_REC_FIXED + 3);
    assert_int_equal(pread(fd, &b, 1, at), 1);
    b ^= 0x40;
    assert_int_equal(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

/* A read skips the CRC of records below `trusted` (checked by this process's scan) and checks
 * every other one; a failed check reports the offset of the record that failed it, and the
 * records before it come back. */
static void test_read_trusted(void **state)
{
    (void)state;
    char dir[] = "/tmp/sluice-spill-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    sl_spill_seg_path(path, sizeof(path), dir, 1);
    uint64_t *offs = write_segment(path, 1, 100, 300); /* offs[i]: record 1 + i */
    uint64_t end = offs[100];
    damage_at(path, offs[49]); /* record 50 */
    uint8_t *buf;
    size_t len;
    uint64_t last = 0, bad = 0;
    /* Nothing trusted: records 1..49, then the failure at record 50. */
    assert_int_equal(sl_spill_read(path, 0, end, 1, 1u << 20, 0, NULL, &buf, &len, &last, &bad),
                     49);
    assert_int_equal(last, 49);
    assert_int_equal(bad, offs[49]);
    free(buf);
    bad = 0;
    assert_int_equal(
        sl_spill_read(path, offs[49], end, 50, 1u << 20, 0, NULL, &buf, &len, &last, &bad),
        -EBADMSG);
    assert_int_equal(bad, offs[49]);
    /* Trusted up to record 50's start: it is still checked. */
    assert_int_equal(
        sl_spill_read(path, offs[49], end, 50, 1u << 20, offs[49], NULL, &buf, &len, &last, &bad),
        -EBADMSG);
    /* Trusted past it: not checked, all 100 come back, and decode without their CRC. */
    assert_int_equal(
        sl_spill_read(path, 0, end, 1, 1u << 20, offs[50], NULL, &buf, &len, &last, NULL), 100);
    assert_int_equal(last, 100);
    size_t pos = 0;
    for (uint64_t q = 1; pos < len; q++) {
        sl_rec_t r;
        assert_int_equal(sl_rec_decode_trusted(buf + pos, len - pos, &r), SL_REC_OK);
        assert_int_equal(r.seq, q);
        if (q == 50)
            assert_int_equal(sl_rec_decode(buf + pos, len - pos, &r), SL_REC_CORRUPT);
        pos += r.size;
    }
    assert_int_equal(pos, end);
    /* A buffer given to read into is used (and returned), or freed on failure (the sanitizer
     * build would report it leaked). */
    uint8_t *into = malloc(4096 + SL_READ_SLACK);
    uint8_t *got;
    int n = sl_spill_read(path, 0, end, 1, 4096, 0, into, &got, &len, &last, NULL);
    assert_true(n > 1);
    assert_ptr_equal(got, into);
    assert_int_equal(last, n);
    assert_int_equal(len, offs[n]);
    free(got);
    into = malloc(4096 + SL_READ_SLACK);
    assert_int_equal(
        sl_spill_read("/nonexistent/x.seg", 0, end, 1, 4096, 0, into, &got, &len, &last, NULL),
        -ENOENT);
    assert_null(got);
    into = malloc(4096 + SL_READ_SLACK);
    assert_int_equal(sl_spill_read(path, offs[49], end, 50, 4096, 0, into, &got, &len, &last, NULL),
                     -EBADMSG);
    assert_null(got);
    /* Lengths are checked even so: a trusted decode never reads past its buffer. */
    sl_rec_t r;
    assert_int_equal(sl_rec_decode_trusted(buf, offs[1] - 1, &r), SL_REC_SHORT);
    free(buf);
    free(offs);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_cases),   cmocka_unit_test(test_read_trusted),
        cmocka_unit_test(test_crc32c),       cmocka_unit_test(test_record_roundtrip),
        cmocka_unit_test(test_index),        cmocka_unit_test(test_scan_and_repair),
        cmocka_unit_test(test_large_record), cmocka_unit_test(test_holes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
