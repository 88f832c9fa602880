/*
 * Circuit breakers and their hard-capped registry (see breaker.h for the states).
 */
#include "sink/breaker.h"

#include "lib/budget.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW 20

const char *sl_breaker_state_name(sl_breaker_state_t s)
{
    switch (s) {
    case SL_BREAKER_CLOSED:
        return "closed";
    case SL_BREAKER_OPEN:
        return "open";
    case SL_BREAKER_HALF_OPEN:
        return "half_open";
    }
    return "?";
}

void sl_breaker_init(sl_breaker_t *b, const sl_breaker_conf_t *c)
{
    memset(b, 0, sizeof(*b));
    b->open_ms = c->open_ms;
}

static void trip(sl_breaker_t *b, const sl_breaker_conf_t *c, uint64_t now_ms, int doubled)
{
    if (doubled) {
        b->open_ms = b->open_ms > c->open_max_ms / 2 ? c->open_max_ms : b->open_ms * 2;
        if (b->open_ms == 0)
            b->open_ms = c->open_ms;
    }
    b->state = SL_BREAKER_OPEN;
    b->until_ms = now_ms + b->open_ms;
    b->probe_at_ms = 0;
}

int sl_breaker_allow(sl_breaker_t *b, const sl_breaker_conf_t *c, uint64_t now_ms)
{
    switch (b->state) {
    case SL_BREAKER_CLOSED:
        return 1;
    case SL_BREAKER_OPEN:
        if (now_ms < b->until_ms)
            return 0;
        b->state = SL_BREAKER_HALF_OPEN;
        b->probe_at_ms = now_ms;
        return 1;
    case SL_BREAKER_HALF_OPEN:
        if (b->probe_at_ms != 0 && now_ms - b->probe_at_ms < c->probe_timeout)
            return 0;
        if (b->probe_at_ms != 0) {
            /* The probe never reported: it failed. */
            trip(b, c, now_ms, 1);
            return 0;
        }
        b->probe_at_ms = now_ms;
        return 1;
    }
    return 0;
}

void sl_breaker_report(sl_breaker_t *b, const sl_breaker_conf_t *c, int ok, uint64_t now_ms)
{
    b->window = (b->window << 1) | (ok ? 0u : 1u);
    b->window &= (1u << WINDOW) - 1;
    if (b->nwindow < WINDOW)
        b->nwindow++;
    if (b->state == SL_BREAKER_HALF_OPEN) {
        if (ok) {
            b->state = SL_BREAKER_CLOSED;
            b->consecutive = 0;
            b->window = 0;
            b->nwindow = 0;
            b->open_ms = c->open_ms;
            b->probe_at_ms = 0;
        } else {
            trip(b, c, now_ms, 1);
        }
        return;
    }
    if (b->state == SL_BREAKER_OPEN)
        return; /* a request that went before it opened: nothing more to learn */
    if (ok) {
        b->consecutive = 0;
        return;
    }
    b->consecutive++;
    if (b->consecutive >= c->failures ||
        (b->nwindow == WINDOW && (unsigned)__builtin_popcount(b->window) * 2 >= WINDOW))
        trip(b, c, now_ms, 0);
}

uint64_t sl_breaker_next_ms(const sl_breaker_t *b, const sl_breaker_conf_t *c)
{
    if (b->state == SL_BREAKER_OPEN)
        return b->until_ms;
    if (b->state == SL_BREAKER_HALF_OPEN && b->probe_at_ms != 0)
        return b->probe_at_ms + c->probe_timeout;
    return 0;
}

/* ---- the registry ---------------------------------------------------------------------- */

static uint64_t hash_key(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

void sl_breg_init(sl_breg_t *r, size_t cap, uint64_t idle_ttl_ms, const sl_breaker_conf_t *c)
{
    memset(r, 0, sizeof(*r));
    r->cap = cap ? cap : 1;
    r->idle_ttl_ms = idle_ttl_ms;
    r->conf = *c;
    r->nbuckets = 16;
    while (r->nbuckets < r->cap)
        r->nbuckets *= 2;
    r->buckets = sl_calloc(r->nbuckets, sizeof(*r->buckets));
    sl_list_init(&r->lru);
}

static size_t entry_size(size_t key_len)
{
    return sizeof(sl_breg_entry_t) + key_len + 1;
}

static void remove_entry(sl_breg_t *r, sl_breg_entry_t *e)
{
    assert(e->users == 0);
    sl_breg_entry_t **pp = &r->buckets[hash_key(e->key, e->key_len) & (r->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    sl_list_remove(&e->lru);
    r->n--;
    sl_bfree(e, entry_size(e->key_len));
}

void sl_breg_dispose(sl_breg_t *r)
{
    while (!sl_list_empty(&r->lru)) {
        sl_breg_entry_t *e = sl_container_of(r->lru.next, sl_breg_entry_t, lru);
        e->users = 0;
        remove_entry(r, e);
    }
    free(r->buckets);
    r->buckets = NULL;
}

const sl_breg_entry_t *sl_breg_find(const sl_breg_t *r, const char *key, size_t len)
{
    size_t h = hash_key(key, len) & (r->nbuckets - 1);
    for (const sl_breg_entry_t *e = r->buckets[h]; e != NULL; e = e->hnext)
        if (e->key_len == len && memcmp(e->key, key, len) == 0)
            return e;
    return NULL;
}

sl_breg_entry_t *sl_breg_acquire(sl_breg_t *r, const char *key, size_t len, uint64_t now_ms)
{
    size_t h = hash_key(key, len) & (r->nbuckets - 1);
    sl_breg_entry_t *e;
    for (e = r->buckets[h]; e != NULL; e = e->hnext)
        if (e->key_len == len && memcmp(e->key, key, len) == 0)
            break;
    if (e == NULL) {
        if (r->n >= r->cap) {
            /* Hard cap: make room by evicting the least recently used idle entry, whatever its
             * state (an open breaker nobody waits on protects nobody). */
            sl_breg_entry_t *victim = NULL;
            sl_list_t *it;
            sl_list_each(it, &r->lru)
            {
                sl_breg_entry_t *x = sl_container_of(it, sl_breg_entry_t, lru);
                if (x->users == 0) {
                    victim = x;
                    break;
                }
            }
            if (victim == NULL) {
                r->full++;
                return NULL;
            }
            remove_entry(r, victim);
            r->evictions++;
        }
        e = sl_balloc(entry_size(len));
        memset(e, 0, sizeof(*e));
        memcpy(e->key, key, len);
        e->key[len] = '\0';
        e->key_len = len;
        sl_breaker_init(&e->b, &r->conf);
        e->hnext = r->buckets[h];
        r->buckets[h] = e;
        r->n++;
    } else {
        sl_list_remove(&e->lru);
    }
    sl_list_insert_tail(&r->lru, &e->lru);
    e->users++;
    e->last_used_ms = now_ms;
    return e;
}

int sl_breg_release(sl_breg_t *r, sl_breg_entry_t *e, uint64_t now_ms)
{
    assert(e->users > 0);
    e->last_used_ms = now_ms;
    sl_list_remove(&e->lru);
    sl_list_insert_tail(&r->lru, &e->lru);
    return --e->users == 0;
}

size_t sl_breg_sweep(sl_breg_t *r, uint64_t now_ms)
{
    size_t n = 0;
    sl_list_t *it, *tmp;
    sl_list_each_safe(it, tmp, &r->lru)
    {
        sl_breg_entry_t *e = sl_container_of(it, sl_breg_entry_t, lru);
        if (e->users == 0 && now_ms - e->last_used_ms >= r->idle_ttl_ms) {
            remove_entry(r, e);
            r->ttl_evictions++;
            n++;
        }
    }
    return n;
}

void sl_breg_count(const sl_breg_t *r, size_t by_state[3])
{
    by_state[0] = by_state[1] = by_state[2] = 0;
    const sl_list_t *it;
    sl_list_each(it, &r->lru)
    {
        const sl_breg_entry_t *e = sl_container_of(it, const sl_breg_entry_t, lru);
        by_state[e->b.state]++;
    }
}
