/*
 * The on-disk log of a lossless topic, as files and bytes: the record codec (length, CRC32C,
 * seq, timestamp, event, payload), scanning a segment at recovery (truncating a torn tail,
 * stopping at corruption), the sparse seq -> offset index, reading a range of records and
 * appending a batch. Every function here does blocking file I/O and is meant to run on a
 * thread-pool thread (or at start-up), never on the event loop; none touches libuv or the hub.
 * lossless.c drives them.
 *
 * Record layout (little-endian):
 *     u32 len      bytes after these 8
 *     u32 crc      CRC32C of those bytes
 *     u64 seq
 *     u64 ts_ms    wall clock at publish
 *     u16 event_len, event bytes, then the payload
 */
#ifndef SL_SPILL_H
#define SL_SPILL_H

#include <stddef.h>
#include <stdint.h>

#define SL_REC_HDR 8
#define SL_REC_FIXED 18 /* seq, ts, event_len */
/* A record never exceeds this (a message is at most 2 GiB by config, far less in practice). */
#define SL_REC_MAX ((uint64_t)1 << 31)
/* The index gets an entry whenever a record starts this far past the previous entry. */
#define SL_IDX_STEP (64u << 10)

/* CRC32C (Castagnoli) of data, continuing from crc (0 to start). Uses the CPU's CRC32
 * instruction where there is one; sl_crc32c_sw is the portable table version (same results). */
uint32_t sl_crc32c(uint32_t crc, const void *data, size_t n);
uint32_t sl_crc32c_sw(uint32_t crc, const void *data, size_t n);

/* Bytes a record with this event and payload takes on disk. */
static inline size_t sl_rec_size(size_t event_len, size_t payload_len)
{
    return SL_REC_HDR + SL_REC_FIXED + event_len + payload_len;
}

/* Encodes a record into buf (sl_rec_size bytes). */
void sl_rec_encode(uint8_t *buf, uint64_t seq, uint64_t ts_ms, const char *event, size_t event_len,
                   const char *payload, size_t payload_len);

/* A decoded record; the pointers point into the buffer it was decoded from. */
typedef struct sl_rec {
    uint64_t seq, ts_ms;
    const char *event, *payload;
    size_t event_len, payload_len;
    size_t size; /* bytes on disk */
} sl_rec_t;

typedef enum {
    SL_REC_OK = 0,
    SL_REC_SHORT = 1,   /* the buffer ends inside the record (a torn tail at end of file) */
    SL_REC_CORRUPT = 2, /* bad length or CRC */
} sl_rec_status_t;

/* Decodes the record at buf[0..n). */
sl_rec_status_t sl_rec_decode(const uint8_t *buf, size_t n, sl_rec_t *rec);

/* The same without the CRC: only for bytes whose records were checked already in this process
 * (by sl_spill_read, or by a scan of the same bytes). Lengths are still checked, so a buffer
 * is never read past. */
sl_rec_status_t sl_rec_decode_trusted(const uint8_t *buf, size_t n, sl_rec_t *rec);

typedef struct sl_idx {
    uint64_t seq, off;
} sl_idx_t;

/* A growable index; owned by whoever holds it, freed with free(idx->v). */
typedef struct sl_index {
    sl_idx_t *v;
    size_t n, cap;
} sl_index_t;

void sl_index_add(sl_index_t *ix, uint64_t seq, uint64_t off);
/* The offset to start reading at to find `seq`: the last entry at or before it (0 if none). */
uint64_t sl_index_find(const sl_index_t *ix, uint64_t seq);

/* What a scan of one segment found. */
typedef struct sl_scan {
    uint64_t count;       /* valid records */
    uint64_t first, last; /* their seqs (0 when count is 0) */
    uint64_t valid_len;   /* bytes of valid records from the start */
    uint64_t file_len;
    int torn;    /* the file ended inside a record */
    int corrupt; /* a record failed its checks (or seqs did not increase) */
    sl_index_t index;
} sl_scan_t;

/* Scans the segment at `path`: every record checked, the index built. With `repair`, a file
 * whose valid part is shorter than the file is truncated to it. Returns 0, or -errno when the
 * file cannot be read. */
int sl_spill_scan(const char *path, int repair, sl_scan_t *out);

/* Read slack: a read's buffer is max_bytes plus this, so the record that crosses max_bytes
 * usually fits without a second read. */
#define SL_READ_SLACK ((size_t)64 << 10)

/* Reads records of the segment at `path` with seq >= from, starting at byte `start` (from the
 * index), not past byte `limit` (the length known to be written), until `max_bytes` of records
 * were collected. `into`, when not NULL, is a malloc'ed buffer of max_bytes + SL_READ_SLACK
 * bytes to read into (the function takes it over: it comes back in *buf, maybe reallocated, or
 * is freed on failure); NULL: one is allocated. Records that start below byte `trusted` were
 * checked by a scan in this process and skip their CRC (0: every record is checked). The records'
 * bytes are copied to a malloc'ed buffer (*buf, *len); the caller decodes them with
 * sl_rec_decode_trusted (they were checked here). *last is the seq of the last record returned.
 * Returns the number of records (0 at the end), or -errno (-ENOENT: the segment was deleted
 * meanwhile; -EBADMSG: a record failed its checks, and *bad_off, when not NULL, is its offset in
 * the file). Blocking. */
int sl_spill_read(const char *path, uint64_t start, uint64_t limit, uint64_t from, size_t max_bytes,
                  uint64_t trusted, uint8_t *into, uint8_t **buf, size_t *len, uint64_t *last,
                  uint64_t *bad_off);

/* Appends `n` encoded bytes at offset `off` of the open segment `fd`; fsyncs when asked.
 * Returns 0 or -errno. */
int sl_spill_append(int fd, uint64_t off, const void *data, size_t n, int do_fsync);

/* "<dir>/<20-digit base seq>.seg" into buf. */
void sl_spill_seg_path(char *buf, size_t cap, const char *dir, uint64_t base);

#endif
