/*
 * Server-Sent Events encoding. Turns payloads into `data:` lines so that no byte of a payload
 * can end an event early or inject a field (CR, LF and CRLF all split lines, as the SSE parser
 * in every browser does), and formats sluice's control events. Pure functions, no I/O.
 */
#ifndef SL_SSE_H
#define SL_SSE_H

#include "lib/json.h"

#include <stddef.h>
#include <stdint.h>

/* Bytes that sl_sse_put_data() writes for this payload. */
size_t sl_sse_data_len(const char *payload, size_t len);

/* Writes the payload as `data: <line>\n` lines (at least one) into dst, which must hold
 * sl_sse_data_len() bytes. Returns the end of what was written. */
char *sl_sse_put_data(char *dst, const char *payload, size_t len);

/* 1 if the payload contains CR or LF (its data lines differ from the payload bytes). */
int sl_sse_needs_split(const char *payload, size_t len);

/* The opening of every stream: "retry: <ms>\n\n". Returns bytes written (buf >= 48). */
size_t sl_sse_retry(char *buf, uint64_t retry_ms);

#endif
