/*
 * Rate limits: token buckets for publish messages/s, publish bytes/s and new connections/s,
 * kept per key (a token's subject, or a peer's address cut to its IPv6 prefix). A key's
 * entry holds its three buckets; an entry whose buckets are all full again says nothing a
 * fresh one would not, so the sweep drops those, and the table is capped (past the cap the
 * least recently used entry goes). Pure: time is passed in. Loop thread only.
 */
#ifndef SL_RATELIMIT_H
#define SL_RATELIMIT_H

#include "lib/util.h"

#include <stddef.h>
#include <stdint.h>

enum { SL_RL_MSGS = 0, SL_RL_BYTES, SL_RL_CONNS, SL_RL__COUNT };

/* A bucket's refill rate per second and its capacity; rate 0 means unlimited. */
typedef struct sl_rl_rate {
    double rate, burst;
} sl_rl_rate_t;

/* A key: a kind byte ('s' subject, 'i' address) and 32 bytes. */
typedef struct sl_rl_key {
    uint8_t kind;
    uint8_t k[32];
} sl_rl_key_t;

typedef struct sl_rl_entry {
    sl_list_t lru; /* most recently used first */
    struct sl_rl_entry *next;
    sl_rl_key_t key;
    double tokens[SL_RL__COUNT];
    uint64_t last_ms;
} sl_rl_entry_t;

/* Owned by the server; freed with sl_rl_dispose(). */
typedef struct sl_ratelimit {
    sl_rl_rate_t rates[SL_RL__COUNT];
    sl_rl_entry_t **slots;
    size_t nslots, n, max_entries;
    sl_list_t lru;
} sl_ratelimit_t;

void sl_rl_init(sl_ratelimit_t *rl, const sl_rl_rate_t rates[SL_RL__COUNT], size_t max_entries);
void sl_rl_dispose(sl_ratelimit_t *rl);

/* 1 if any bucket has a rate. */
int sl_rl_enabled(const sl_ratelimit_t *rl);

/* Takes want[i] tokens from every bucket i of key at now_ms, all or none. Returns 0 when
 * taken, otherwise the milliseconds until they would all be there (at least 1; UINT64_MAX
 * when a request is larger than a bucket's burst and can never pass). */
uint64_t sl_rl_take(sl_ratelimit_t *rl, const sl_rl_key_t *key, const double want[SL_RL__COUNT],
                    uint64_t now_ms);

/* Drops entries whose buckets are all full at now_ms. */
void sl_rl_sweep(sl_ratelimit_t *rl, uint64_t now_ms);

#endif
