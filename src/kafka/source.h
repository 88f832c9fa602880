/*
 * Kafka sources: each `[source "NAME"]` of the configuration is a librdkafka consumer driven by
 * the libuv loop (no polling thread). Records become messages of the sluice topics their
 * template names, with ids that are Kafka coordinates; a full topic pauses exactly the
 * partitions feeding it. main.c starts the sources after the server and stops them when the
 * server shuts down. Loop thread only, except where a function says otherwise.
 */
#ifndef SL_KAFKA_SOURCE_H
#define SL_KAFKA_SOURCE_H

#include "lib/config.h"
#include "core/hub.h"

#include <stdio.h>
#include <uv.h>

/* Starts every source of cfg on `loop`, publishing into `hub`. `kick(kick_arg)` is called after
 * records were published, so that the flush pass runs without waiting for other I/O. cfg and
 * hub must outlive the sources. Returns 0, or a negative code after logging why a source could
 * not be created (a broker being down is not an error: the consumer reconnects). */
int sl_kafka_start(uv_loop_t *loop, sl_hub_t *hub, const sl_config_t *cfg, void (*kick)(void *arg),
                   void *kick_arg);

/* Stops every source: stores and commits what is done, leaves the groups (on the thread pool)
 * and closes the handles; the loop then runs out of them. Idempotent. */
void sl_kafka_stop(void);

/* Frees the sources after the loop has ended. */
void sl_kafka_dispose(void);

/* Checks what only librdkafka can check: every kafka.* property of every source. Writes one
 * "path: [source "NAME"] …" line per error to errs; returns the number of errors. Any thread. */
int sl_kafka_check_config(const sl_config_t *cfg, const char *path, FILE *errs);

/* The epoch of the ids of a partition's records: a stable 64-bit hash of (cluster id, Kafka
 * topic, partition), never 0, so every node names a record alike. Pure. */
uint64_t sl_kafka_epoch(const char *cluster_id, const char *topic, int32_t partition);

#endif
