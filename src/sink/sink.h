/*
 * Sinks: server-side readers that deliver matching topics to HTTP endpoints (webhooks). A sink
 * stream is one topic's reader on the hub's shared delivery path (an sl_sub_t with one reader
 * and its own `deliver`), with no queue of its own: it takes a batch from its cursor, sends it,
 * and moves the cursor (on lossless topics the durable cursor `sink.NAME`) only after a 2xx.
 * main.c starts them after the server and stops them on shutdown. Loop thread only.
 */
#ifndef SL_SINK_H
#define SL_SINK_H

#include "lib/config.h"
#include "core/hub.h"

#include <uv.h>

struct sl_sinks;
typedef struct sl_sinks sl_sinks_t;

/* Starts every configured sink on `loop`, following the topics of `hub` that match (those that
 * exist now and those created later). `cfg` and `hub` must outlive the sinks. `kick(kick_arg)`
 * is called when a stream became ready outside the hub's flush pass (a request done, a timer,
 * a read-back): it must make the loop run that pass soon without blocking in poll (the
 * server's sl_server_kick). Returns the sinks (NULL when none are configured) with *err 0, or
 * NULL with *err < 0 (logged). */
sl_sinks_t *sl_sinks_start(uv_loop_t *loop, sl_hub_t *hub, const sl_config_t *cfg,
                           void (*kick)(void *), void *kick_arg, int *err);

/* Shutdown, step one: no new request starts; requests in flight get `shutdown_drain`, then are
 * cancelled without moving any cursor (they are sent again after a restart); then every stream
 * is detached from the hub and every handle closed, so the loop can end. Idempotent. With
 * `now`, cancels at once. */
void sl_sinks_stop(sl_sinks_t *s, int now);

/* Frees what is left once the loop has ended (after sl_sinks_stop). */
void sl_sinks_free(sl_sinks_t *s);

#endif
