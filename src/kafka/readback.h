/*
 * Read-back from Kafka: the storage (sl_backend_t, core/topic.h) of a lossy sluice topic fed by
 * a Kafka partition, through which a reader behind the topic's ring gets the messages it missed
 * from Kafka, as a reader of a lossless topic gets them from disk. Each source has one more
 * consumer for this, without a group (assign with offsets, no subscribe, no commit), served on
 * the loop like the main consumer, with a bounded number of read-backs at a time and bounded
 * bytes per read-back batch, charged to the memory budget. Offsets Kafka no longer has (below
 * the partition's log start) become a counted gap for the reader; offsets Kafka has no record
 * of for this topic (compaction, transaction markers, records routed to other topics) are
 * holes, passed silently. kafka/source.c creates one per source and binds topics to it. Loop
 * thread only.
 */
#ifndef SL_KAFKA_READBACK_H
#define SL_KAFKA_READBACK_H

#include "lib/config.h"
#include "core/topic.h"

#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <uv.h>

/* Read-backs running at once per source (each holds one partition of the read-back consumer). */
#define SL_KRB_ACTIVE_MAX 4
/* One read-back batch holds at most this many messages and about this many payload bytes. */
#define SL_KRB_BATCH_MSGS 512
#define SL_KRB_BATCH_BYTES (256u << 10)
/* What librdkafka may prefetch for the read-back consumer, charged to the budget while it
 * exists. */
#define SL_KRB_PREFETCH (1u << 20)
/* A read-back that gets no record for this long (brokers down) ends; what it could not read
 * is a counted gap for its reader. */
#define SL_KRB_TIMEOUT_MS 10000

typedef struct sl_krb sl_krb_t;

/* Counters of one source's read-backs (for /metrics and GET /sources). */
typedef struct sl_krb_stats {
    uint64_t readbacks; /* read-backs started */
    uint64_t messages;  /* messages read back */
    uint64_t gaps;      /* gap markers given (offsets Kafka no longer has, or a timeout) */
    uint64_t missed;    /* ids in those gaps */
    uint64_t timeouts;  /* read-backs ended without their records */
    uint32_t active, queued;
} sl_krb_stats_t;

/* The read-back side of source `sc` (its brokers and kafka.* properties). The consumer is made
 * at the first read-back. Never NULL; free with sl_krb_free after sl_krb_stop and the loop. */
sl_krb_t *sl_krb_new(uv_loop_t *loop, const sl_source_conf_t *sc, const sl_config_t *cfg);

/* Gives lossy topic t (no storage yet) the Kafka backend, reading back from (ktopic,
 * partition). No-op for a topic that has a storage already (a lossless log keeps reading
 * back from disk). */
void sl_krb_bind(sl_krb_t *rb, sl_topic_t *t, const char *ktopic, int32_t partition);

/* Ends every read-back (their readers get a counted gap), destroys the consumer on the thread
 * pool and closes the handles. Idempotent. */
void sl_krb_stop(sl_krb_t *rb);

/* Frees rb once its handles are closed (after the loop ended). */
void sl_krb_free(sl_krb_t *rb);

void sl_krb_get_stats(const sl_krb_t *rb, sl_krb_stats_t *st);

/* The sluice topic name (and event type) a record goes to, as the source's templates render
 * them. Returns the name's length (> 0, NUL-terminated in name), or SL_KRB_ROUTE_BAD_TOPIC /
 * SL_KRB_ROUTE_BAD_EVENT. *event is evbuf or NULL (no event template, or it rendered empty
 * for a missing header). */
enum { SL_KRB_ROUTE_BAD_TOPIC = -1, SL_KRB_ROUTE_BAD_EVENT = -2 };
int sl_kafka_route(const sl_source_conf_t *sc, size_t max_topic_name, const rd_kafka_message_t *m,
                   char *name, size_t cap, char *evbuf, size_t evcap, const char **event);

#endif
