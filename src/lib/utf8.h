/*
 * UTF-8 validation, strict (RFC 3629): no overlong forms, no surrogates, nothing past
 * U+10FFFF. Pure.
 */
#ifndef SL_UTF8_H
#define SL_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Incremental validation. Start with *state = 0; feed pieces in order. Returns -1 as soon as
 * the input cannot be UTF-8, else 0. At the end of a message the input is complete only if
 * *state is 0 again. */
int sl_utf8_feed(uint32_t *state, const uint8_t *s, size_t n);

/* 1 if s[0..n) is complete, valid UTF-8. */
int sl_utf8_valid(const void *s, size_t n);

#endif
