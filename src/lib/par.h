/*
 * Blocking calls side by side: fn(arg, i) for every i in [0, n), on up to `threads` threads
 * (the caller's among them), returning when all are done. For the exit's file syncs, which
 * each wait for the device: made one after another they wait once each, made together the
 * file system commits them together. Outside the loop only (it blocks).
 */
#ifndef SL_PAR_H
#define SL_PAR_H

#include <stddef.h>

#define SL_PAR_MAX 16 /* threads at most */

void sl_par_run(size_t n, unsigned threads, void (*fn)(void *arg, size_t i), void *arg);

#endif
