/*
 * Configuration: the INI file (parsed with inih), its defaults, and the per-topic settings
 * resolved from `[topic "glob"]` sections. This module makes no libuv calls; it turns bytes
 * into a validated sl_config_t or a list of errors, each with file:line.
 */
#ifndef SL_CONFIG_H
#define SL_CONFIG_H

#include "lib/sinkconf.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    SL_FSYNC_INTERVAL = 0, /* fsync every fsync_interval; acknowledge at once */
    SL_FSYNC_ALWAYS,       /* acknowledge only what is fsync'ed */
    SL_FSYNC_NEVER,        /* leave it to the kernel */
} sl_fsync_t;

typedef enum {
    SL_OVERFLOW_SKIP = 0,   /* gap marker, then continue */
    SL_OVERFLOW_DISCONNECT, /* final overflow marker, then close */
} sl_overflow_t;

/* Settings that apply to one topic; resolved once when the topic is created. Durations in
 * milliseconds, sizes in bytes. A limit of 0 means "no limit" except where noted. */
typedef struct sl_topic_conf {
    uint64_t max_messages;      /* ring bound, >= 1; default 1024 */
    uint64_t max_bytes;         /* ring bound in payload bytes; default 16 MiB */
    uint64_t max_age_ms;        /* ring bound; 0 = none; default 0 */
    sl_overflow_t overflow;     /* default skip */
    uint64_t lag_hard_messages; /* acts at once; 0 = off */
    uint64_t lag_hard_bytes;    /* acts at once; 0 = off */
    uint64_t lag_soft_messages; /* acts after lag_soft_ms held; 0 = off */
    uint64_t lag_soft_bytes;    /* acts after lag_soft_ms held; 0 = off */
    uint64_t lag_soft_ms;       /* default 10 s */
    uint64_t lag_max_age_ms;    /* reader's oldest undelivered message older than this; 0 = off */
    uint64_t heartbeat_ms;      /* SSE heartbeat interval; 0 = off; default 15 s */
    int heartbeat_event;        /* 1: heartbeat as `event: sluice.heartbeat`, 0: comment */
    int lossless;               /* durability = lossless: every message goes to the disk log */
    sl_fsync_t fsync;           /* default interval */
    uint64_t fsync_interval_ms; /* default 100 ms */
    uint64_t segment_bytes;     /* log segments rotate at this size; default 16 MiB */
    uint64_t disk_quota;        /* this topic's log; 0 = only the server's; default 1 GiB */
    uint64_t cursor_ttl_ms;     /* an unused durable cursor expires after; 0 = never */
    uint8_t publish_auth;       /* SL_POLICY_*: who may publish; default: token with [auth] */
    uint8_t subscribe_auth;     /* SL_POLICY_*: who may subscribe; default: token with [auth] */
} sl_topic_conf_t;

/* Who may publish to or subscribe to a topic. DEFAULT resolves to TOKEN when an [auth] section
 * is configured and to ANYONE otherwise (sl_config_topic does it). */
enum { SL_POLICY_DEFAULT = 0, SL_POLICY_ANYONE, SL_POLICY_TOKEN };

/* One `[topic "glob"]` section: the keys it set (bit per field, SL_TK_*) and their values. */
typedef struct sl_topic_rule {
    char *glob;
    uint32_t set;
    sl_topic_conf_t conf;
} sl_topic_rule_t;

enum {
    SL_TK_MAX_MESSAGES = 1u << 0,
    SL_TK_MAX_BYTES = 1u << 1,
    SL_TK_MAX_AGE = 1u << 2,
    SL_TK_OVERFLOW = 1u << 3,
    SL_TK_LAG_HARD_MESSAGES = 1u << 4,
    SL_TK_LAG_HARD_BYTES = 1u << 5,
    SL_TK_LAG_SOFT_MESSAGES = 1u << 6,
    SL_TK_LAG_SOFT_BYTES = 1u << 7,
    SL_TK_LAG_SOFT = 1u << 8,
    SL_TK_LAG_MAX_AGE = 1u << 9,
    SL_TK_HEARTBEAT = 1u << 10,
    SL_TK_HEARTBEAT_EVENT = 1u << 11,
    SL_TK_DURABILITY = 1u << 12,
    SL_TK_FSYNC = 1u << 13,
    SL_TK_FSYNC_INTERVAL = 1u << 14,
    SL_TK_SEGMENT_BYTES = 1u << 15,
    SL_TK_DISK_QUOTA = 1u << 16,
    SL_TK_CURSOR_TTL = 1u << 17,
    SL_TK_PUBLISH = 1u << 18,
    SL_TK_SUBSCRIBE = 1u << 19,
};

/* One `[source "NAME"]` section: a Kafka source (see README.md, "Kafka sources"). Strings are
 * owned by the configuration. */
typedef struct sl_source_conf {
    char *name;
    int line;      /* of the section header, for messages */
    int kafka;     /* type = kafka (the only type there is) */
    char *brokers; /* bootstrap.servers */
    char *group;   /* group.id template: may use {node}; default "sluice-{node}" */
    char **topics; /* Kafka topic names, or regexes (a name starting with '^') */
    size_t ntopics;
    char *topic_tmpl;  /* sluice topic name template (lib/template.h) */
    char *event_tmpl;  /* SSE event type template, or NULL */
    int start_latest;  /* start = latest: where a group without offsets starts (else earliest) */
    int fan_in_local;  /* fan_in = local: several partitions may feed one topic */
    int reject_pause;  /* on_reject = pause: a record sluice cannot take pauses its partition */
    uint64_t prefetch; /* bytes librdkafka may hold for this source; default 2 MiB */
    uint64_t commit_interval_ms; /* stored offsets are committed this often; default 1 s */
    char **props;                /* kafka.* pass-through: props[2i] = props[2i+1] */
    size_t nprops;
} sl_source_conf_t;

/* 1 if librdkafka property `name` is one sluice sets itself (refused as kafka.NAME). */
int sl_source_managed_property(const char *name);

typedef struct sl_config {
    /* [server] */
    char *listen_host;          /* default "127.0.0.1" */
    int listen_port;            /* default 8080 */
    char *data_dir;             /* default "./sluice-data" */
    uint64_t memory_limit;      /* default 256 MiB */
    uint64_t shutdown_drain_ms; /* default 5 s */
    uint64_t header_timeout_ms; /* request headers must complete within; default 10 s */
    uint64_t idle_timeout_ms;   /* keep-alive idle (non-subscriber); default 60 s */
    uint64_t write_stall_ms;    /* pending data, no byte accepted; default 30 s */
    uint64_t sse_retry_ms;      /* SSE `retry:` hint; default 2000 */
    uint64_t topic_idle_ttl_ms; /* free empty reader-less topics after; default 60 s */
    uint64_t
        send_buffer; /* SO_SNDBUF of subscriber sockets; 0 = kernel autotuning; default 128 KiB */
    int log_level;   /* SL_LOG_* from log.h; default info */
    char *origins;   /* allowed browser origins, comma-separated, no blanks; NULL = any */
    uint64_t ws_ping_interval_ms; /* WebSocket ping interval; 0 = off; default 30 s */
    uint64_t ws_pong_timeout_ms;  /* no pong this long after a ping: close; default 20 s */
    uint64_t ws_close_timeout_ms; /* wait for the peer's close frame; default 5 s */
    uint64_t disk_quota;          /* every lossless topic's log together; default 8 GiB */
    uint64_t max_publish_wait_ms; /* the longest ?wait= on a full lossless topic; default 30 s */
    uint64_t body_timeout_ms;     /* a request body (or a WebSocket message) must be complete
                                     this long after it began; default 30 s */
    /* [limits] */
    uint64_t max_connections;           /* default 100000 */
    uint64_t max_connections_per_ip;    /* default 10000 */
    uint64_t max_header_bytes;          /* whole header block; default 16 KiB */
    uint64_t max_url_bytes;             /* request target; default 8 KiB */
    uint64_t max_message_bytes;         /* one message payload; default 1 MiB */
    uint64_t max_body_bytes;            /* one request body (NDJSON batch); default 8 MiB */
    uint64_t max_topics_per_connection; /* default 64 */
    uint64_t max_topic_name;            /* bytes; default 256 */
    uint64_t max_topics;                /* registry bound; default 100000 */
    uint64_t max_batch_messages;        /* messages in one NDJSON batch; default 10000 */
    uint64_t max_pending_bytes;         /* input still arriving (requests, WebSocket messages), set
                                           aside inside memory_limit; 0 = memory_limit / 8 (default) */
    uint64_t max_cursors_per_topic;     /* durable cursors on one topic; default 1024 */
    uint64_t max_cursors;               /* durable cursors on all topics; default 65536 */
    uint64_t ipv6_prefix; /* per-IP limits key IPv6 peers by this prefix, 0..128; default 64 */
    /* Token buckets (0 = off): publishes per subject (a token's sub) or, without one, per
     * address; new connections per address. A burst of 0 is one second's worth. */
    uint64_t publish_rate, publish_burst;             /* messages/s */
    uint64_t publish_bytes_rate, publish_bytes_burst; /* payload bytes/s */
    uint64_t connection_rate, connection_burst;       /* new connections/s */
    uint64_t rate_limit_keys; /* subjects and addresses tracked at once; default 100000 */
    /* [auth]: present when `auth` is set; every file is read at start and on SIGHUP */
    int auth;
    char *auth_hmac_secret_file;   /* raw secret (one trailing line end dropped), >= 32 bytes */
    char *auth_public_key_file;    /* PEM public key */
    char *auth_jwks_file;          /* JWKS document */
    char *auth_admin_token_file;   /* a static bearer token for the admin endpoints */
    char *auth_issuer;             /* NULL: iss not checked */
    char *auth_audience;           /* NULL: aud not checked */
    char *auth_claim;              /* the claim holding pub/sub/admin; default "sluice" */
    char *auth_cookie;             /* cookie that may carry the token; NULL: none */
    uint64_t auth_leeway_ms;       /* clock skew allowed on exp and nbf; default 5 s */
    uint64_t auth_max_token_bytes; /* longer tokens are refused unread; default 8 KiB */
    uint64_t auth_max_cursors_per_subject; /* durable cursors one subject owns; 0 = no limit;
                                              default 100 */
    /* [topic "glob"] sections in file order; later matching sections override earlier ones
     * for the keys they set. */
    sl_topic_rule_t *rules;
    size_t nrules;
    sl_topic_conf_t topic_defaults;
    /* [sinks] and [sink "NAME"] sections (lib/sinkconf.h). */
    sl_sinks_conf_t sinks;
    /* [source "NAME"] sections in file order. */
    sl_source_conf_t *sources;
    size_t nsources;
    char *node; /* [server] node: this process's name in {node}; default the host name */
} sl_config_t;

/* Fills *cfg with the built-in defaults. The caller owns the result; free with
 * sl_config_dispose(). */
void sl_config_init(sl_config_t *cfg);

/* Releases what sl_config_init/sl_config_load allocated inside *cfg (not cfg itself). */
void sl_config_dispose(sl_config_t *cfg);

/* Parses the INI file at `path` into *cfg (which must have been sl_config_init'ed). Every error
 * is written to `errs` as "path:line: message\n" and counted. Unknown sections and keys are
 * errors. Returns the number of errors (0 on success); on any error *cfg is left in a valid
 * state but must not be used to serve. */
int sl_config_load(sl_config_t *cfg, const char *path, FILE *errs);

/* The same from an in-memory string (for tests and fuzzing); `name` is used in messages. */
int sl_config_load_string(sl_config_t *cfg, const char *name, const char *text, FILE *errs);

/* Parses "ADDR:PORT" (IPv4 or [IPv6]) into the listen fields. Returns 0 or -EINVAL. */
int sl_config_set_listen(sl_config_t *cfg, const char *addr_port);

/* Resolves the settings for topic `name`: the defaults, then every rule whose glob matches,
 * in order. */
void sl_config_topic(const sl_config_t *cfg, const char *name, sl_topic_conf_t *out);

/* Only the publish and subscribe policies of topic `name` (SL_POLICY_ANYONE or _TOKEN),
 * without resolving the rest: checked on every request. */
void sl_config_topic_policy(const sl_config_t *cfg, const char *name, int *publish, int *subscribe);

/* Size with optional suffix: b, k/kb/kib, m/mb/mib, g/gb/gib (case-insensitive; k = 1024).
 * Returns 0 or -EINVAL (empty, junk, overflow). */
int sl_parse_size(const char *s, uint64_t *out);

/* Duration: a number with ms, s, m, h (a bare number is seconds). Returns 0 or -EINVAL. */
int sl_parse_duration_ms(const char *s, uint64_t *out);

/* 1 if a request with this Origin header value may be served: any origin when `origins` is
 * not configured, else an exact (case-insensitive) match with one of the list. */
int sl_config_origin_allowed(const sl_config_t *cfg, const char *origin, size_t len);

/* Shell-style glob: `*` matches any run of characters (including '/'), `?` one character. */
int sl_glob_match(const char *glob, const char *s);

#endif
