/*
 * The memory budget: one account of everything that grows with load (message bytes in every
 * ring and in flight, connection state, request and response buffers). Callers charge before
 * they allocate and release when they free, so `used` is what the load costs right now. The
 * hub decides what to evict when a charge does not fit; this module only keeps the books.
 *
 * Input that is still arriving (request targets, headers and bodies; WebSocket frames and
 * messages being assembled) is charged to a pool of its own, `pending`, capped at
 * `pending_cap` and set aside inside the limit: everything else fits in `limit - pending_cap`,
 * so a slow or hostile sender can hold at most the pool, and never makes the hub evict
 * published messages to make room for bytes that may never complete.
 *
 * `evictable` is what evicting every ring message would free now: the charges of ring messages
 * that no write or disk job holds (topic.c keeps it). A charge that would not fit even then is
 * refused before anything is evicted.
 * Single-threaded: call from the loop thread only.
 */
#ifndef SL_BUDGET_H
#define SL_BUDGET_H

#include <stddef.h>
#include <stdint.h>

typedef struct sl_budget {
    uint64_t limit;
    uint64_t used;
    uint64_t peak;
    uint64_t pending;     /* part of `used`: input still arriving */
    uint64_t pending_cap; /* the pool set aside for it */
    uint64_t evictable;   /* see above */
} sl_budget_t;

extern sl_budget_t sl_budget;

/* Sets the limit and the pool for input still arriving (which must be below the limit). */
void sl_budget_set_limit(uint64_t limit, uint64_t pending_cap);

/* Charges n bytes if they fit under the limit (outside the pending pool); returns 1 if charged,
 * 0 if not. */
int sl_budget_try(size_t n);

/* Charges n bytes unconditionally (for memory already committed, e.g. a lazily encoded frame
 * of a message that is being written). */
void sl_budget_charge(size_t n);

/* Releases n bytes charged earlier. */
void sl_budget_release(size_t n);

/* Charges n bytes of input still arriving to the pending pool if they fit; 1 if charged. */
int sl_budget_try_pending(size_t n);

/* Releases n bytes charged with sl_budget_try_pending. */
void sl_budget_release_pending(size_t n);

/* The part of the pending pool not in use: kept free for input. */
static inline uint64_t sl_budget_pending_room(void)
{
    return sl_budget.pending_cap - sl_budget.pending;
}

/* What an allocation of n bytes costs the budget: n and the allocator's own header. */
#define SL_ALLOC_OVERHEAD 16
static inline size_t sl_budget_size(size_t n)
{
    return n + SL_ALLOC_OVERHEAD;
}

/* Budgeted memory, through one pair: sl_balloc(n) allocates n bytes (aborting on OOM, like
 * sl_malloc) and charges sl_budget_size(n) unconditionally, for memory the caller has decided
 * to commit (check first with sl_hub_reserve or sl_budget_try when the peer controls n);
 * sl_bfree(p, n) frees it and releases the same charge. sl_bcalloc zeroes; sl_brealloc moves
 * a block from `old` to `n` bytes (old 0: a new block). p may be NULL in sl_bfree (n is then
 * ignored). */
void *sl_balloc(size_t n);
void *sl_bcalloc(size_t n);
void *sl_brealloc(void *p, size_t old, size_t n);
void sl_bfree(void *p, size_t n);

/* 1 if n more bytes would fit (outside the pending pool). */
static inline int sl_budget_fits(size_t n)
{
    return sl_budget.used + n + sl_budget_pending_room() <= sl_budget.limit;
}

/* 1 if n more bytes would fit once every evictable message were evicted. */
static inline int sl_budget_fits_evicting(size_t n)
{
    return sl_budget.used - sl_budget.evictable + n + sl_budget_pending_room() <= sl_budget.limit;
}

#endif
