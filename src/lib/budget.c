/*
 * Bookkeeping of the memory budget (see budget.h).
 */
#include "lib/budget.h"

#include "lib/util.h"

#include <assert.h>
#include <stdlib.h>

sl_budget_t sl_budget = {.limit = 256u << 20, .pending_cap = 32u << 20};

void sl_budget_set_limit(uint64_t limit, uint64_t pending_cap)
{
    assert(pending_cap < limit);
    sl_budget.limit = limit;
    sl_budget.pending_cap = pending_cap;
}

static void note_peak(void)
{
    if (sl_budget.used > sl_budget.peak)
        sl_budget.peak = sl_budget.used;
}

int sl_budget_try(size_t n)
{
    if (!sl_budget_fits(n))
        return 0;
    sl_budget.used += n;
    note_peak();
    return 1;
}

void sl_budget_charge(size_t n)
{
    sl_budget.used += n;
    note_peak();
}

void sl_budget_release(size_t n)
{
    assert(sl_budget.used >= n);
    sl_budget.used -= n;
}

int sl_budget_try_pending(size_t n)
{
    /* Other charges may have eaten into the pool's room (unconditional charges); the limit
     * still holds. */
    if (sl_budget.pending + n > sl_budget.pending_cap || sl_budget.used + n > sl_budget.limit)
        return 0;
    sl_budget.pending += n;
    sl_budget.used += n;
    note_peak();
    return 1;
}

void sl_budget_release_pending(size_t n)
{
    assert(sl_budget.pending >= n && sl_budget.used >= n);
    sl_budget.pending -= n;
    sl_budget.used -= n;
}

void *sl_balloc(size_t n)
{
    void *p = sl_malloc(n);
    sl_budget_charge(sl_budget_size(n));
    return p;
}

void *sl_bcalloc(size_t n)
{
    void *p = sl_calloc(1, n);
    sl_budget_charge(sl_budget_size(n));
    return p;
}

void *sl_brealloc(void *p, size_t old, size_t n)
{
    void *q = sl_realloc(p, n);
    if (p == NULL)
        sl_budget_charge(sl_budget_size(n));
    else if (n >= old)
        sl_budget_charge(n - old);
    else
        sl_budget_release(old - n);
    return q;
}

void sl_bfree(void *p, size_t n)
{
    if (p == NULL)
        return;
    sl_budget_release(sl_budget_size(n));
    free(p);
}
