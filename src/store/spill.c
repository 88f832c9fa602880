/*
 * The on-disk log's files and bytes (see spill.h). Blocking I/O, thread-pool side.
 */
#include "store/spill.h"

#include "lib/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* CRC32C (Castagnoli), reflected polynomial 0x82F63B78, table-driven. */
static uint32_t crc_table[256];
static int crc_ready;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[i] = c;
    }
    crc_ready = 1;
}

uint32_t sl_crc32c_sw(uint32_t crc, const void *data, size_t n)
{
    if (!crc_ready)
        crc_init();
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* SSE 4.2 has a CRC32C instruction: 8 bytes per step instead of one table lookup per byte. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p,
                                                            size_t n)
{
    uint64_t c = ~crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
    }
    uint32_t c32 = (uint32_t)c;
    for (; n > 0; n--, p++)
        c32 = __builtin_ia32_crc32qi(c32, *p);
    return ~c32;
}

uint32_t sl_crc32c(uint32_t crc, const void *data, size_t n)
{
    static int hw = -1;
    if (hw < 0)
        hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    return hw ? crc32c_hw(crc, data, n) : sl_crc32c_sw(crc, data, n);
}
#else
uint32_t sl_crc32c(uint32_t crc, const void *data, size_t n)
{
    return sl_crc32c_sw(crc, data, n);
}
#endif

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

void sl_rec_encode(uint8_t *buf, uint64_t seq, uint64_t ts_ms, const char *event, size_t event_len,
                   const char *payload, size_t payload_len)
{
    size_t len = SL_REC_FIXED + event_len + payload_len;
    uint8_t *b = buf + SL_REC_HDR;
    put64(b, seq);
    put64(b + 8, ts_ms);
    b[16] = (uint8_t)event_len;
    b[17] = (uint8_t)(event_len >> 8);
    if (event_len)
        memcpy(b + SL_REC_FIXED, event, event_len);
    if (payload_len)
        memcpy(b + SL_REC_FIXED + event_len, payload, payload_len);
    put32(buf, (uint32_t)len);
    put32(buf + 4, sl_crc32c(0, b, len));
}

static sl_rec_status_t rec_decode(const uint8_t *buf, size_t n, sl_rec_t *rec, int check)
{
    if (n < SL_REC_HDR)
        return SL_REC_SHORT;
    uint32_t len = get32(buf);
    if (len < SL_REC_FIXED || len > SL_REC_MAX)
        return SL_REC_CORRUPT;
    if (n - SL_REC_HDR < len)
        return SL_REC_SHORT;
    const uint8_t *b = buf + SL_REC_HDR;
    if (check && sl_crc32c(0, b, len) != get32(buf + 4))
        return SL_REC_CORRUPT;
    size_t ev = (size_t)b[16] | (size_t)b[17] << 8;
    if (SL_REC_FIXED + ev > len)
        return SL_REC_CORRUPT;
    rec->seq = get64(b);
    rec->ts_ms = get64(b + 8);
    rec->event = ev ? (const char *)b + SL_REC_FIXED : NULL;
    rec->event_len = ev;
    rec->payload = (const char *)b + SL_REC_FIXED + ev;
    rec->payload_len = len - SL_REC_FIXED - ev;
    rec->size = SL_REC_HDR + len;
    return SL_REC_OK;
}

sl_rec_status_t sl_rec_decode(const uint8_t *buf, size_t n, sl_rec_t *rec)
{
    return rec_decode(buf, n, rec, 1);
}

sl_rec_status_t sl_rec_decode_trusted(const uint8_t *buf, size_t n, sl_rec_t *rec)
{
    return rec_decode(buf, n, rec, 0);
}

void sl_index_add(sl_index_t *ix, uint64_t seq, uint64_t off)
{
    if (ix->n == ix->cap) {
        ix->cap = ix->cap ? ix->cap * 2 : 16;
        ix->v = sl_realloc(ix->v, ix->cap * sizeof(*ix->v));
    }
    ix->v[ix->n].seq = seq;
    ix->v[ix->n].off = off;
    ix->n++;
}

uint64_t sl_index_find(const sl_index_t *ix, uint64_t seq)
{
    size_t lo = 0, hi = ix->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (ix->v[mid].seq <= seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo == 0 ? 0 : ix->v[lo - 1].off;
}

/* Reads up to n bytes at off, retrying short reads; returns bytes read or -errno. */
static ssize_t pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

#define SCAN_CHUNK (1u << 20)

int sl_spill_scan(const char *path, int repair, sl_scan_t *out)
{
    memset(out, 0, sizeof(*out));
    int fd = open(path, repair ? O_RDWR : O_RDONLY);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    out->file_len = (uint64_t)st.st_size;
    size_t cap = SCAN_CHUNK;
    uint8_t *buf = sl_malloc(cap);
    uint64_t off = 0, last_idx = 0;
    int have_idx = 0, rc = 0;
    while (off < out->file_len) {
        size_t want = cap;
        ssize_t n = pread_full(fd, buf, want, off);
        if (n < 0) {
            rc = (int)n;
            break;
        }
        size_t pos = 0;
        int stop = 0;
        while (pos < (size_t)n) {
            sl_rec_t rec;
            sl_rec_status_t s = sl_rec_decode(buf + pos, (size_t)n - pos, &rec);
            if (s == SL_REC_SHORT) {
                if (off + (size_t)n >= out->file_len) {
                    out->torn = 1;
                    stop = 1;
                } else if (pos == 0) {
                    /* A record larger than the buffer: grow and read again, unless it claims
                     * more than the file holds (then the file ends inside it). */
                    uint32_t len = get32(buf);
                    if (SL_REC_HDR + (uint64_t)len > out->file_len - off) {
                        out->torn = 1;
                        stop = 1;
                        break;
                    }
                    cap = SL_REC_HDR + (size_t)len;
                    buf = sl_realloc(buf, cap);
                }
                break;
            }
            if (s == SL_REC_CORRUPT || (out->count > 0 && rec.seq <= out->last)) {
                out->corrupt = 1;
                stop = 1;
                break;
            }
            uint64_t at = off + pos;
            if (!have_idx || at - last_idx >= SL_IDX_STEP) {
                sl_index_add(&out->index, rec.seq, at);
                last_idx = at;
                have_idx = 1;
            }
            if (out->count == 0)
                out->first = rec.seq;
            out->last = rec.seq;
            out->count++;
            pos += rec.size;
        }
        off += pos;
        out->valid_len = off;
        if (stop || (n == 0))
            break;
    }
    free(buf);
    if (rc == 0 && repair && out->valid_len < out->file_len) {
        if (ftruncate(fd, (off_t)out->valid_len) != 0 || fsync(fd) != 0)
            rc = -errno;
    }
    close(fd);
    return rc;
}

int sl_spill_read(const char *path, uint64_t start, uint64_t limit, uint64_t from, size_t max_bytes,
                  uint64_t trusted, uint8_t *into, uint8_t **bufp, size_t *lenp, uint64_t *last,
                  uint64_t *bad_off)
{
    uint8_t *given = into;
    *bufp = NULL;
    *lenp = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        free(given);
        return -errno;
    }
    /* One buffer, read into and decoded in place (no second copy of the records): out[base,
     * base + out_len) holds the records kept, the `have` bytes after them were read and not
     * decoded yet, and `off` is the file offset of the byte after those. Records below `from`
     * (before the first kept one: the index points at or before it) move `base` on. */
    size_t cap = max_bytes + SL_READ_SLACK;
    uint8_t *out = given != NULL ? given : sl_malloc(cap);
    size_t base = 0, out_len = 0, have = 0;
    int count = 0, rc = 0;
    uint64_t off = start;
    for (;;) {
        while (out_len < max_bytes && have > 0) {
            sl_rec_t rec;
            /* The file offset of this record: `off` less what is read and not decoded yet. */
            uint64_t at = off - have;
            sl_rec_status_t s = rec_decode(out + base + out_len, have, &rec, at >= trusted);
            if (s == SL_REC_SHORT)
                break;
            if (s == SL_REC_CORRUPT) {
                rc = -EBADMSG;
                goto out_close;
            }
            if (rec.seq >= from) {
                out_len += rec.size;
                *last = rec.seq;
                count++;
            } else if (out_len == 0) {
                base += rec.size;
            } else {
                /* Out of order within a segment (never written so): dropped like before. */
                memmove(out + base + out_len, out + base + out_len + rec.size, have - rec.size);
            }
            have -= rec.size;
        }
        if (out_len >= max_bytes)
            break;
        if (off >= limit) {
            if (have > 0)
                rc = -EBADMSG; /* a record cut short inside what is known to be written */
            break;
        }
        if (base > 0) {
            /* Skipped records leave room at the front (rare: the index points close). */
            memmove(out, out + base, out_len + have);
            base = 0;
        }
        size_t room = cap - (base + out_len + have);
        if (room == 0) {
            if (count > 0)
                break;
            /* One record larger than the buffer (which holds only its beginning). */
            uint32_t len = get32(out + base);
            if ((uint64_t)len + SL_REC_HDR > limit - (off - have)) {
                rc = -EBADMSG;
                goto out_close;
            }
            cap = SL_REC_HDR + (size_t)len;
            out = sl_realloc(out, cap);
            room = cap - have;
        }
        size_t want = limit - off < room ? (size_t)(limit - off) : room;
        ssize_t n = pread_full(fd, out + base + out_len + have, want, off);
        if (n <= 0) {
            rc = n < 0 ? (int)n : -EBADMSG;
            break;
        }
        off += (uint64_t)n;
        have += (size_t)n;
    }
out_close:
    close(fd);
    /* Every failed check happens at the first byte not decoded: the record there. */
    if (rc == -EBADMSG && bad_off != NULL)
        *bad_off = off - have;
    if (rc < 0 && count == 0) {
        free(out);
        return rc;
    }
    if (base > 0)
        memmove(out, out + base, out_len);
    *bufp = out;
    *lenp = out_len;
    return count;
}

int sl_spill_append(int fd, uint64_t off, const void *data, size_t n, int do_fsync)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = pwrite(fd, (const char *)data + done, n - done, (off_t)(off + done));
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        done += (size_t)w;
    }
    if (do_fsync && fdatasync(fd) != 0)
        return -errno;
    return 0;
}

void sl_spill_seg_path(char *buf, size_t cap, const char *dir, uint64_t base)
{
    snprintf(buf, cap, "%s/%020llu.seg", dir, (unsigned long long)base);
}
