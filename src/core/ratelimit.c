/*
 * Token buckets per key (core/ratelimit.h): a chained hash table of entries plus an LRU list
 * for the cap. Refill is computed from the time since an entry was last touched, so nothing
 * runs per key between requests.
 */
#include "core/ratelimit.h"

#include "lib/budget.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sl_rl_init(sl_ratelimit_t *rl, const sl_rl_rate_t rates[SL_RL__COUNT], size_t max_entries)
{
    memset(rl, 0, sizeof(*rl));
    memcpy(rl->rates, rates, sizeof(rl->rates));
    for (int i = 0; i < SL_RL__COUNT; i++)
        if (rl->rates[i].rate > 0 && rl->rates[i].burst < 1)
            rl->rates[i].burst = rl->rates[i].rate < 1 ? 1 : rl->rates[i].rate;
    rl->max_entries = max_entries ? max_entries : 1;
    rl->nslots = 1024;
    while (rl->nslots < rl->max_entries && rl->nslots < (1u << 20))
        rl->nslots *= 2;
    rl->slots = sl_calloc(rl->nslots, sizeof(*rl->slots));
    sl_list_init(&rl->lru);
}

static void drop(sl_ratelimit_t *rl, sl_rl_entry_t *e, sl_rl_entry_t **link)
{
    *link = e->next;
    sl_list_remove(&e->lru);
    rl->n--;
    sl_bfree(e, sizeof(*e));
}

static sl_rl_entry_t **find(sl_ratelimit_t *rl, const sl_rl_key_t *key)
{
    /* FNV-1a over the key; keys are hashes or addresses already, this only spreads them. */
    uint64_t h = 1469598103934665603ull ^ key->kind;
    for (size_t i = 0; i < sizeof(key->k); i++)
        h = (h ^ key->k[i]) * 1099511628211ull;
    sl_rl_entry_t **link = &rl->slots[h & (rl->nslots - 1)];
    while (*link != NULL &&
           ((*link)->key.kind != key->kind || memcmp((*link)->key.k, key->k, sizeof(key->k)) != 0))
        link = &(*link)->next;
    return link;
}

void sl_rl_dispose(sl_ratelimit_t *rl)
{
    for (size_t i = 0; rl->slots != NULL && i < rl->nslots; i++)
        while (rl->slots[i] != NULL)
            drop(rl, rl->slots[i], &rl->slots[i]);
    free(rl->slots);
    rl->slots = NULL;
}

int sl_rl_enabled(const sl_ratelimit_t *rl)
{
    for (int i = 0; i < SL_RL__COUNT; i++)
        if (rl->rates[i].rate > 0)
            return 1;
    return 0;
}

static void refill(const sl_ratelimit_t *rl, sl_rl_entry_t *e, uint64_t now_ms)
{
    double dt = now_ms > e->last_ms ? (double)(now_ms - e->last_ms) / 1000.0 : 0;
    for (int i = 0; i < SL_RL__COUNT; i++) {
        const sl_rl_rate_t *r = &rl->rates[i];
        if (r->rate > 0)
            e->tokens[i] = fmin(r->burst, e->tokens[i] + dt * r->rate);
    }
    e->last_ms = now_ms;
}

uint64_t sl_rl_take(sl_ratelimit_t *rl, const sl_rl_key_t *key, const double want[SL_RL__COUNT],
                    uint64_t now_ms)
{
    int any = 0;
    for (int i = 0; i < SL_RL__COUNT; i++) {
        if (rl->rates[i].rate > 0 && want[i] > 0) {
            if (want[i] > rl->rates[i].burst)
                return UINT64_MAX;
            any = 1;
        }
    }
    if (!any)
        return 0;
    sl_rl_entry_t **link = find(rl, key), *e = *link;
    if (e == NULL) {
        if (rl->n >= rl->max_entries) {
            sl_rl_entry_t *old = sl_container_of(rl->lru.prev, sl_rl_entry_t, lru);
            drop(rl, old, find(rl, &old->key));
            link = find(rl, key);
        }
        e = sl_bcalloc(sizeof(*e));
        e->key = *key;
        e->last_ms = now_ms;
        for (int i = 0; i < SL_RL__COUNT; i++)
            e->tokens[i] = rl->rates[i].burst;
        sl_list_init(&e->lru);
        *link = e;
        rl->n++;
    }
    sl_list_remove(&e->lru);
    sl_list_insert_tail(rl->lru.next, &e->lru); /* to the front: just after the head */
    refill(rl, e, now_ms);
    double wait_s = 0;
    for (int i = 0; i < SL_RL__COUNT; i++) {
        const sl_rl_rate_t *r = &rl->rates[i];
        if (r->rate > 0 && want[i] > e->tokens[i])
            wait_s = fmax(wait_s, (want[i] - e->tokens[i]) / r->rate);
    }
    if (wait_s > 0) {
        uint64_t ms = (uint64_t)ceil(wait_s * 1000.0);
        return ms ? ms : 1;
    }
    for (int i = 0; i < SL_RL__COUNT; i++)
        if (rl->rates[i].rate > 0)
            e->tokens[i] -= want[i];
    return 0;
}

void sl_rl_sweep(sl_ratelimit_t *rl, uint64_t now_ms)
{
    for (size_t s = 0; s < rl->nslots; s++) {
        sl_rl_entry_t **link = &rl->slots[s];
        while (*link != NULL) {
            sl_rl_entry_t *e = *link;
            refill(rl, e, now_ms);
            int full = 1;
            for (int i = 0; i < SL_RL__COUNT; i++)
                if (rl->rates[i].rate > 0 && e->tokens[i] < rl->rates[i].burst)
                    full = 0;
            if (full)
                drop(rl, e, link);
            else
                link = &e->next;
        }
    }
}
