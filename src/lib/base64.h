/*
 * Standard base64 encoding. Pure.
 */
#ifndef SL_BASE64_H
#define SL_BASE64_H

#include <stddef.h>

/* Standard base64 (with padding) of src into dst, which must hold 4 * ((n + 2) / 3) + 1 bytes
 * (a NUL follows). Returns the length written. */
size_t sl_base64_encode(char *dst, const void *src, size_t n);

#endif
