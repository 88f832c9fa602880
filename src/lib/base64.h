/*
 * Standard base64 encoding. Pure.
 */
#ifndef SL_BASE64_H
#define SL_BASE64_H

#include <stddef.h>

/* Standard base64 (with padding) of src into dst, which must hold 4 * ((n + 2) / 3) + 1 bytes
 * (a NUL follows). Returns the length written. */
size_t sl_base64_encode(char *dst, const void *src, size_t n);

/* Decodes base64 in[0..n) (no padding) into out (at most cap bytes) with the standard
 * alphabet, or the URL one (RFC 4648 §5) if `url`; with `strict`, the bits left over after
 * the last byte must be zero (one encoding per byte string). Returns the length, or -1 for a
 * character outside the alphabet, an impossible length, or out too small. */
long sl_base64_decode_as(const char *in, size_t n, unsigned char *out, size_t cap, int url,
                         int strict);

/* Standard base64 with optional `=` padding, leftover bits ignored: sl_base64_decode_as. */
int sl_base64_decode(const char *in, size_t n, unsigned char *out, size_t cap);

#endif
