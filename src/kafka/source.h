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

/* The lag of a partition: its high watermark `hi` minus `next`, the offset of the next record
 * sluice has to take. -1 when either is unknown (negative); 0 when the watermark, being a
 * cached or older figure, is below `next`. Pure. */
int64_t sl_kafka_lag(int64_t hi, int64_t next);

/* Records that Kafka's retention removed from under a paused partition: `expected` is the
 * offset the partition should have delivered next after its resume, `offset` the one it did
 * deliver, `lo` the partition's log start as last known (negative: unknown). Offsets missing
 * below the log start were deleted by retention; those between the log start and `offset`
 * are compaction or transaction markers, not losses, unless the consumer reset to the end of
 * the log (`reset_latest`, start = latest), which skipped them too. 0 when nothing was lost.
 * Pure. */
int64_t sl_kafka_retention_lost(int64_t expected, int64_t offset, int64_t lo, int reset_latest);

/* The delay before recreating a consumer after a fatal error: doubles from 1 s up to 60 s.
 * `prev` is the previous delay (0 for the first failure). Pure. */
uint64_t sl_kafka_backoff_next(uint64_t prev);

/* librdkafka's fetch.max.bytes for a source's `prefetch` (its queued.max.messages.kbytes): a
 * quarter of it, at least 1,000,000 (librdkafka's minimum, message.max.bytes) and at most
 * 52,428,800 (librdkafka's default), so that one fetch response never fills the queue by
 * itself (docs/design-notes.md, "Prefetch"). Pure. */
uint64_t sl_kafka_fetch_max_bytes(uint64_t prefetch);

#endif
