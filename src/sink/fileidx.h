/*
 * A file sink's bookkeeping, pure (no I/O): segment file names, the index line that commits a
 * write, and the rotation rule. The writer (sink/file.c) does the I/O with these.
 *
 * A topic's files live in DIRECTORY/<escaped topic>/ as numbered segments, NNNNNNNNNN.jsonl (or
 * .raw) beside NNNNNNNNNN.idx. The data file holds the records; the index holds one line per
 * completed write, "<epoch hex> <last seq> <data length>\n", appended only after the data is
 * written (and synced, under fsync = batch). The index is the commit record: on restart the
 * newest segment's data is cut back to the length its last complete index line names (a torn
 * record goes), and records up to that line's seq are not written again.
 */
#ifndef SL_SINK_FILEIDX_H
#define SL_SINK_FILEIDX_H

#include <stddef.h>
#include <stdint.h>

#define SL_FILEIDX_LINE_MAX 64
#define SL_EPOCH_HEX_MAX 32

/* One committed write. */
typedef struct sl_fileidx_rec {
    char epoch[SL_EPOCH_HEX_MAX + 1];
    uint64_t seq;  /* last message seq written (0 when only a gap line was) */
    uint64_t size; /* length of the data file after the write */
} sl_fileidx_rec_t;

/* Formats one index line into out[cap]; returns its length or -1 if it does not fit. */
int sl_fileidx_format(const sl_fileidx_rec_t *r, char *out, size_t cap);

/* Parses one line (without its newline). Returns 0 or -1 when malformed. */
int sl_fileidx_parse(const char *line, size_t len, sl_fileidx_rec_t *r);

/* The last complete, well-formed line of an index's tail buf[len], which begins at a line
 * start and may end in a torn line. Returns 1 with *r set and *end the offset in buf just after
 * that line's newline, or 0 when there is none. */
int sl_fileidx_last(const char *buf, size_t len, sl_fileidx_rec_t *r, size_t *end);

/* Segment file names: "%010u.<ext>". Returns the length or -1. */
int sl_fileseg_name(uint32_t index, const char *ext, char *out, size_t cap);
/* The index of a segment file name with extension ext, or 0 when it is not one. */
uint32_t sl_fileseg_parse(const char *name, const char *ext);

/* 1 when a segment of `size` bytes opened at `opened_ms` must be closed before the next write
 * (size reached rotate_bytes, or it is older than rotate_ms when rotate_ms > 0). An empty
 * segment never rotates. */
int sl_fileseg_rotate_due(uint64_t size, uint64_t opened_ms, uint64_t now_ms, uint64_t rotate_bytes,
                          uint64_t rotate_ms);

/* 1 when the index says the message with this epoch and seq was written (last is the last
 * commit, or NULL when there is none). */
int sl_fileidx_written(const sl_fileidx_rec_t *last, const char *epoch, uint64_t seq);

/* How many of the n records with these seqs (ascending) a write must skip because the index
 * says they were written: those with seq <= last->seq when the epochs match. */
uint32_t sl_fileidx_skip(const sl_fileidx_rec_t *last, const char *epoch, const uint64_t *seqs,
                         uint32_t n);

#endif
