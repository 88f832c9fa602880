/*
 * JSON output: strings quoted and escaped for the bodies sluice writes (control events,
 * errors, listings). Pure.
 */
#ifndef SL_JSON_H
#define SL_JSON_H

#include <stddef.h>

/* Appends `s` as a JSON string (quoted, escaped) to buf[*len..cap); returns -1 if it did not
 * fit (then *len is unchanged). */
int sl_json_put_string(char *buf, size_t *len, size_t cap, const char *s, size_t n);
/* The same, and *high (when not NULL) set to 1 if a byte of `s` is 0x80 or above, else to 0
 * (all ASCII: valid UTF-8, with no second pass); not touched when it did not fit. */
int sl_json_put_string_high(char *buf, size_t *len, size_t cap, const char *s, size_t n, int *high);
/* 1 when the escaper takes 32 bytes at a time (x86-64 with AVX2, found at start-up); a test
 * may clear it to try the 16-byte path. */
extern int sl_json_wide;

#endif
