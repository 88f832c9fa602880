/*
 * Blocking calls side by side (see par.h).
 */
#include "lib/par.h"

#include <pthread.h>

typedef struct par {
    void (*fn)(void *arg, size_t i);
    void *arg;
    size_t n;
    size_t next; /* the next index to take (atomic) */
} par_t;

static void *par_main(void *p)
{
    par_t *w = p;
    size_t i;
    while ((i = __atomic_fetch_add(&w->next, 1, __ATOMIC_RELAXED)) < w->n)
        w->fn(w->arg, i);
    return NULL;
}

void sl_par_run(size_t n, unsigned threads, void (*fn)(void *arg, size_t i), void *arg)
{
    par_t w = {fn, arg, n, 0};
    pthread_t t[SL_PAR_MAX];
    if (threads > SL_PAR_MAX)
        threads = SL_PAR_MAX;
    if (threads > n)
        threads = (unsigned)n;
    unsigned started = 0;
    /* A thread that cannot be made leaves its share to the others, the caller's at least. */
    for (unsigned k = 1; k < threads; k++)
        if (pthread_create(&t[started], NULL, par_main, &w) == 0)
            started++;
    par_main(&w);
    for (unsigned k = 0; k < started; k++)
        pthread_join(t[k], NULL);
}
