/*
 * Circuit breakers, one per endpoint (origin), and their registry. Pure: times are passed in,
 * nothing here arms a timer; the webhook sink arms one for the instant sl_breaker_next_ms()
 * names.
 *
 * A breaker:
 *
 *     closed ──N consecutive failures, or >= 50 % of the last 20──► open
 *     open ──open_ms passed (sl_breaker_allow)──► half-open: one probe allowed
 *     half-open ──probe ok──► closed          half-open ──probe failed or lost──► open (x2)
 *
 * The open time doubles on every failed probe up to open_max_ms and is reset by a success. A
 * probe that never reports (sl_breaker_allow sees it older than probe_timeout_ms) counts as a
 * failure, so a lost completion cannot hold a breaker half-open for ever.
 *
 * The registry has a HARD cap: it never holds more than `cap` breakers. A breaker is busy while
 * a stream uses it (sending or waiting on it: `users` > 0) and idle otherwise; only idle
 * breakers are evicted, least recently used first, open ones included, and idle ones past
 * `idle_ttl_ms` are removed by the sweep. When every slot is busy, sl_breg_acquire() fails and
 * the caller waits for a slot: sl_breg_release() and the sweep report a slot that became free.
 */
#ifndef SL_SINK_BREAKER_H
#define SL_SINK_BREAKER_H

#include "lib/util.h"

#include <stddef.h>
#include <stdint.h>

typedef enum { SL_BREAKER_CLOSED = 0, SL_BREAKER_OPEN, SL_BREAKER_HALF_OPEN } sl_breaker_state_t;
const char *sl_breaker_state_name(sl_breaker_state_t s);

typedef struct sl_breaker_conf {
    uint32_t failures;      /* consecutive failures that open it (>= 1) */
    uint64_t open_ms;       /* first open period */
    uint64_t open_max_ms;   /* the doubling stops here */
    uint64_t probe_timeout; /* a half-open probe silent this long counts as failed */
} sl_breaker_conf_t;

/* One endpoint's breaker. Owned by the registry (or embedded, in tests). */
typedef struct sl_breaker {
    sl_breaker_state_t state;
    uint32_t consecutive;
    uint32_t window;      /* the last `nwindow` outcomes, bit set = failure (newest in bit 0) */
    uint32_t nwindow;     /* <= 20 */
    uint64_t open_ms;     /* the current open period */
    uint64_t until_ms;    /* open: when a probe may go */
    uint64_t probe_at_ms; /* half-open: when the probe went; 0 = no probe out */
} sl_breaker_t;

void sl_breaker_init(sl_breaker_t *b, const sl_breaker_conf_t *c);
/* May a request go now? Closed: yes. Open: no until until_ms, then half-open and yes for one
 * probe (the caller must report it). Half-open: no while the probe is out (a probe out longer
 * than probe_timeout counts as failed and reopens it). */
int sl_breaker_allow(sl_breaker_t *b, const sl_breaker_conf_t *c, uint64_t now_ms);
/* Reports the outcome of a request that sl_breaker_allow let through. */
void sl_breaker_report(sl_breaker_t *b, const sl_breaker_conf_t *c, int ok, uint64_t now_ms);
/* When sl_breaker_allow may next change its mind (open: until_ms; half-open with a probe out:
 * its deadline); 0 when closed. */
uint64_t sl_breaker_next_ms(const sl_breaker_t *b, const sl_breaker_conf_t *c);

/* A registry entry. */
typedef struct sl_breg_entry {
    struct sl_breg_entry *hnext;
    sl_list_t lru; /* most recently used at the tail */
    uint64_t last_used_ms;
    uint32_t users;    /* streams sending or waiting on it; evictable only at 0 */
    uint32_t inflight; /* requests in flight to this endpoint (its sink counts them) */
    sl_breaker_t b;
    size_t key_len;
    char key[]; /* the origin, "scheme://host:port" */
} sl_breg_entry_t;

typedef struct sl_breg {
    size_t cap, n;
    uint64_t idle_ttl_ms;
    sl_breg_entry_t **buckets;
    size_t nbuckets;
    sl_list_t lru;
    sl_breaker_conf_t conf;
    uint64_t evictions, ttl_evictions, full; /* counters (metrics) */
} sl_breg_t;

/* cap >= 1. Entries are budgeted (sl_balloc). */
void sl_breg_init(sl_breg_t *r, size_t cap, uint64_t idle_ttl_ms, const sl_breaker_conf_t *c);
void sl_breg_dispose(sl_breg_t *r);
/* The breaker of `key`, created if missing (evicting the least recently used idle entry when
 * the registry is full), with one more user. NULL when the registry is full of busy entries
 * (counted in `full`): the caller waits for a freed slot. */
sl_breg_entry_t *sl_breg_acquire(sl_breg_t *r, const char *key, size_t len, uint64_t now_ms);
/* The breaker of `key` if the registry has it, without using it (for /sinks); else NULL. */
const sl_breg_entry_t *sl_breg_find(const sl_breg_t *r, const char *key, size_t len);
/* Drops a user. Returns 1 if the entry became idle (a slot a waiter may take). */
int sl_breg_release(sl_breg_t *r, sl_breg_entry_t *e, uint64_t now_ms);
/* Removes idle entries unused for idle_ttl_ms. Returns how many. */
size_t sl_breg_sweep(sl_breg_t *r, uint64_t now_ms);
/* Counts by state (for /metrics and /sinks). */
void sl_breg_count(const sl_breg_t *r, size_t by_state[3]);

#endif
