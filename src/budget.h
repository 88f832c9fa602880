/*
 * The memory budget: one account of everything that grows with load (message bytes in every
 * ring and in flight, connection state, request and response buffers). Callers charge before
 * they allocate and release when they free, so `used` is what the load costs right now. The
 * hub decides what to evict when a charge does not fit; this module only keeps the books.
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
} sl_budget_t;

extern sl_budget_t sl_budget;

void sl_budget_set_limit(uint64_t limit);

/* Charges n bytes if they fit under the limit; returns 1 if charged, 0 if not. */
int sl_budget_try(size_t n);

/* Charges n bytes unconditionally (for memory already committed, e.g. a lazily encoded frame
 * of a message that is being written). */
void sl_budget_charge(size_t n);

/* Releases n bytes charged earlier. */
void sl_budget_release(size_t n);

/* 1 if n more bytes would fit. */
static inline int sl_budget_fits(size_t n)
{
    return sl_budget.used + n <= sl_budget.limit;
}

#endif
