/*
 * The hub: the registry of topics, publishing, and the delivery machinery shared by every
 * transport. Publishing only appends to a topic and marks it dirty; one flush pass per loop
 * iteration (sl_hub_flush) checks the readers of dirty topics against their limits and asks
 * each subscriber that is owed something and not already writing to deliver, so many messages
 * go out in one write. A periodic sweep (sl_hub_sweep) applies age limits and frees idle topics.
 * The hub also decides what to evict when the memory budget is short: the oldest messages
 * across all topics go first. No libuv calls: the server drives it from its loop.
 */
#ifndef SL_HUB_H
#define SL_HUB_H

#include "lib/config.h"
#include "core/topic.h"

struct sl_sub;

/* What a transport provides so the hub can deliver through it. */
typedef struct sl_sub_ops {
    /* Write what the sub's readers are owed (markers first, then messages, in order), or the
     * overflow marker and close if sub->overflow is set. Called only when the sub is not
     * writing. Must not call back into sl_hub_flush. Returns the bytes it wrote or queued. */
    size_t (*deliver)(struct sl_sub *sub);
    /* Optional: a read-back for one of the sub's readers completed (a lossless topic's log,
     * Kafka). Without it the global callback (sl_reader_set_ready_cb) is used. Lets readers
     * other than connections (sinks) read back. */
    void (*disk_ready)(struct sl_sub *sub);
    /* Optional: the sub's readers do not keep their topics alive (a sink's streams). A topic
     * with no messages, idle storage and only such readers is freed after topic_idle_ttl like
     * a topic with none: the sweep asks each reader's sub whether it can let go of reader r
     * now (`go` 0: returns 1 if so, changing nothing), and when all can, tells each to (`go`
     * 1: the sub detaches r before returning, as sl_sub_dispose does, and returns 1). A sub
     * that still needs the topic (a batch in flight, messages owed) returns 0 and the topic
     * stays. Without it a reader keeps its topic alive. */
    int (*release)(struct sl_sub *sub, sl_reader_t *r, int go);
    /* The sub never sends a message's SSE frame (a sink's streams, which build their own
     * envelopes): messages read back from storage for its readers are built bare
     * (sl_msg_new_bare), and in larger reads. Only for readers whose read-back batch no other
     * reader sees (batches are per reader). */
    int frameless;
} sl_sub_ops_t;

/* A subscriber: the transport-independent delivery state of one connection. Embedded in its
 * connection, which owns it; the readers array is owned by the sub and freed by
 * sl_sub_dispose(). */
typedef struct sl_sub {
    const sl_sub_ops_t *ops;
    sl_reader_t *readers;
    uint32_t nreaders;
    uint8_t multi;    /* multi-topic stream: ids name their topic, gseq order */
    uint8_t writing;  /* a write is in flight; the sub is resumed by sl_hub_sub_ready */
    uint8_t overflow; /* policy disconnect hit: deliver the marker and close */
    uint8_t overflow_reason;
    uint64_t overflow_missed;
    sl_reader_t *overflow_reader;
    sl_list_t ready_link; /* on the hub's ready list */
    uint64_t heartbeat_ms;
} sl_sub_t;

struct sl_hub;

/* A kind of topic storage as the hub sees it at start-up and in its sweep (the lossless log is
 * the one there is). Registered once with sl_hub_set_storage. */
typedef struct sl_storage {
    /* A topic was created: gives it this storage (t->backend) if its settings ask for it. */
    void (*attach)(sl_topic_t *t);
    /* At start: registers every topic the storage holds (sl_hub_topic with
     * SL_TOPIC_CREATE_BARE, then attaching its state). Returns how many, or -1. */
    int (*recover)(struct sl_hub *hub);
    /* Periodic maintenance (expiries, quotas). */
    void (*sweep)(struct sl_hub *hub, uint64_t now_ms);
    /* The server is shutting down: work that may wait for the next start is dropped. */
    void (*shutdown)(void);
} sl_storage_t;

typedef struct sl_hub {
    const sl_config_t *cfg;
    const sl_storage_t *storage; /* NULL: topics live in their rings only */
    sl_topic_t **buckets;
    size_t nbuckets, ntopics;
    sl_list_t topics;   /* every topic */
    sl_list_t dirty;    /* topics with messages not yet offered to their readers */
    sl_list_t ready;    /* subs owed something and not writing */
    sl_list_t msgs;     /* every ring message, oldest first (budget eviction order) */
    uint64_t gseq;      /* last server-wide publish counter value */
    uint64_t unflushed; /* messages published since the last flush pass */
    uint64_t epoch;     /* names this process's multi-topic id space */
    char epoch_hex[17];
    /* Told about every topic created (after its storage attached), so that server-side readers
     * (sinks) can follow topics matching their patterns; NULL when nobody listens. */
    void (*on_topic)(void *arg, sl_topic_t *t);
    void *on_topic_arg;
} sl_hub_t;

void sl_hub_init(sl_hub_t *hub, const sl_config_t *cfg);
/* Frees every topic. All subs must have been disposed. */
void sl_hub_dispose(sl_hub_t *hub);

/* How sl_hub_topic treats a missing topic: not at all, create it (and let the storage attach
 * itself), or create it bare (the storage's recovery attaches what it found). */
enum { SL_TOPIC_FIND = 0, SL_TOPIC_CREATE = 1, SL_TOPIC_CREATE_BARE = 2 };

/* Looks a topic up by name; with `create` (SL_TOPIC_*), creates it if missing. Returns NULL with
 * *err set to SL_ELIMIT (max_topics) or SL_EOVERLOAD (budget) when it cannot be created, or 0
 * with NULL when it does not exist and `create` is SL_TOPIC_FIND. The name must be valid. */
sl_topic_t *sl_hub_topic(sl_hub_t *hub, const char *name, size_t len, int create, int *err);

/* Registers the kind of storage topics may have (once, before sl_hub_recover). */
void sl_hub_set_storage(sl_hub_t *hub, const sl_storage_t *storage);

/* Registers the topics the storage holds (at start). Returns their number, or -1. */
int sl_hub_recover(sl_hub_t *hub);

/* The storage's periodic maintenance (every sweep tick). */
void sl_hub_sweep_storage(sl_hub_t *hub, uint64_t now_ms);
/* Tells the storage that the server is shutting down. */
void sl_hub_shutdown_storage(sl_hub_t *hub);

/* Publishes n messages (payloads[i], lens[i]) with optional event type to topic t, all or
 * nothing: the budget is reserved for all of them first (evicting the oldest messages across
 * topics if needed). On success *first_seq is the seq of the first; returns 0 or SL_EOVERLOAD. */
int sl_hub_publish(sl_hub_t *hub, sl_topic_t *t, const char *event, const char *const *payloads,
                   const size_t *lens, size_t n, uint64_t *first_seq);

/* As sl_hub_publish, but the first message gets seq `seq` when that is past head + 1: the
 * topic's head jumps and the seqs skipped are holes (an external log's offsets that this topic
 * has no message for: compacted, transaction markers, records routed elsewhere). 0 means
 * head + 1. Nothing changes if the publish is refused. */
int sl_hub_publish_at(sl_hub_t *hub, sl_topic_t *t, uint64_t seq, const char *event,
                      const char *const *payloads, const size_t *lens, size_t n,
                      uint64_t *first_seq);

/* Declares ids from..to of topic t lost (from <= to, both above the head): ids of messages
 * that the topic's source (an external log) lost before the topic took them. The caller then
 * publishes past `to` (sl_hub_publish_at): readers crossing the range get one gap marker
 * (reason lost) counting exactly the lost ids they crossed, where a hole tells them nothing.
 * Kept even if that publish is refused (declaring the same range again changes nothing); a
 * lossless log records it with the message's id (the storage's prepare). */
void sl_hub_lose(sl_hub_t *hub, sl_topic_t *t, uint64_t from, uint64_t to);

/* Makes room for n bytes in the budget by evicting the oldest messages across topics, and
 * charges them. Returns 0 or SL_EOVERLOAD (nothing left to evict). */
int sl_hub_reserve(sl_hub_t *hub, size_t n);

/* Starts a subscription on `sub` to topics[i] from starts[i]: allocates and charges its readers
 * (the caller has checked the budget), applies start points and policies, and queues the sub
 * if it is owed anything. */
void sl_sub_init(sl_hub_t *hub, sl_sub_t *sub, sl_topic_t **topics, const sl_start_t *starts,
                 uint32_t n);

/* Detaches every reader and takes the sub off the ready list; frees the readers array.
 * Idempotent. */
void sl_sub_dispose(sl_hub_t *hub, sl_sub_t *sub);

/* Called by a transport when its write completed: re-checks the sub's readers and puts it on
 * the ready list if it is owed anything. */
void sl_hub_sub_ready(sl_hub_t *hub, sl_sub_t *sub, uint64_t now_ms);

/* Checks reader r (counting any gap or overflow it decides); returns 1 if the sub must now
 * deliver an overflow. */
int sl_hub_check_reader(sl_hub_t *hub, sl_reader_t *r, uint64_t now_ms);

/* A burst of publishes within one loop iteration (a pipelining publisher's reads are many per
 * iteration) gets a flush pass every this many messages, so that readers are offered messages
 * before the ring has to evict them. */
#define SL_HUB_FLUSH_EVERY 64

/* 1 if enough was published since the last flush pass that one should run now. */
static inline int sl_hub_flush_due(const sl_hub_t *hub)
{
    return hub->unflushed >= SL_HUB_FLUSH_EVERY;
}

/* 1 if there is work for sl_hub_flush. */
static inline int sl_hub_pending(const sl_hub_t *hub)
{
    return !sl_list_empty(&hub->dirty) || !sl_list_empty(&hub->ready);
}

/* One flush pass writes at most this much; the rest waits for the next loop iteration, so
 * that reading publishers and timers are never starved by a pass (a stalled reader's kernel
 * send buffer can take megabytes before it reports itself full). */
#define SL_HUB_PASS_BYTES (64u << 20)

/* The flush pass: offers new messages of dirty topics to their readers and lets the subs that
 * are ready deliver, once each, in the order they became ready, up to SL_HUB_PASS_BYTES. A sub
 * that becomes ready again during the pass waits for the next one. */
void sl_hub_flush(sl_hub_t *hub, uint64_t now_ms);

/* The periodic pass: max_age eviction, soft-lag and lag-age checks, idle topic freeing (see
 * sl_sub_ops_t.release for readers that do not keep a topic alive). */
void sl_hub_sweep(sl_hub_t *hub, uint64_t now_ms);

#endif
