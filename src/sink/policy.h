/*
 * Delivery policy of the sinks, as pure functions: how long to wait before a retry
 * (exponential backoff with full jitter, a server's Retry-After honoured up to a cap) and what an
 * endpoint's answer means (status classes). No libuv calls and no state: the webhook sink asks,
 * these answer, and the unit tests and fuzz targets drive them directly.
 */
#ifndef SL_SINK_POLICY_H
#define SL_SINK_POLICY_H

#include <stddef.h>
#include <stdint.h>

/* The backoff before retry number `attempt` (1 = the first retry): a uniformly random value in
 * [0, min(max_ms, initial_ms * 2^(attempt-1))] ("full jitter"), using `rnd` as the random
 * source (any 64-bit value). Never above max_ms; never overflows. */
uint64_t sl_backoff_ms(uint64_t initial_ms, uint64_t max_ms, unsigned attempt, uint64_t rnd);

/* Parses a Retry-After value: delta-seconds ("120") or an HTTP-date in IMF-fixdate form
 * ("Sun, 06 Nov 1994 08:49:37 GMT"), surrounding blanks allowed. A date is turned into a delay
 * from `now_wall_ms` (a date in the past is 0). The result is capped at cap_ms. Returns 0 with
 * *out_ms set, or -1 (absent, malformed, out of range: the caller falls back to its backoff). */
int sl_retry_after_parse(const char *s, size_t len, uint64_t now_wall_ms, uint64_t cap_ms,
                         uint64_t *out_ms);

/* What an endpoint's answer means for the batch that got it. */
typedef enum {
    SL_STATUS_OK = 0, /* 2xx: delivered; the cursor moves on */
    SL_STATUS_RETRY,  /* the endpoint's fault (network, timeout, 408, 425, 429, 5xx, 3xx,
                         401/403/404, anything unexpected): retry with backoff, breaker counts */
    SL_STATUS_REJECT, /* 400/413/422: the batch itself is refused: split it, dead-letter the
                         single message that keeps being refused */
    SL_STATUS_GONE,   /* 410: the endpoint says it is gone for good: disable the sink */
} sl_status_class_t;

/* The class of an HTTP status (0 means no answer: a network error or a timeout). */
sl_status_class_t sl_status_class(long status);
const char *sl_status_class_name(sl_status_class_t c);

struct sockaddr;
/* 1 if a sink must not connect to this address unless allowed: loopback, private (RFC 1918,
 * unique-local), link-local, carrier-grade NAT, unspecified, multicast and broadcast, also when
 * written as an IPv4-mapped IPv6 address; 0 for a public address. Unknown families are 1. */
int sl_addr_private(const struct sockaddr *sa);

#endif
