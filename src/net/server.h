/*
 * The server: the libuv side of sluice. It owns the loop handles (listener, flush check, sweep
 * timer, signals), every connection (net/conn.h), the hub, and the request handler the API
 * installed (net/api.h). It accepts under the connection limits and the budget, runs the flush
 * pass once per loop turn, sweeps deadlines, and shuts down gracefully.
 */
#ifndef SL_SERVER_H
#define SL_SERVER_H

#include "lib/config.h"
#include "lib/http.h"
#include "core/auth.h"
#include "core/hub.h"
#include "core/ratelimit.h"
#include "core/metrics.h"

#include <uv.h>

/* One entry of the per-IP connection table: the peers that share a key (sl_server_ip_key)
 * and how many connections they hold. Owned by the server; freed when the count drops to 0. */
typedef struct sl_ipent {
    struct sl_ipent *next;
    uint32_t count;
    uint8_t addr[16]; /* the key, not necessarily one peer's address */
} sl_ipent_t;

/* The key under which per-IP limits count a peer. An IPv4 address, and an IPv4-mapped IPv6
 * one (::ffff:a.b.c.d, how a dual-stack listener sees IPv4 peers), key as ::ffff:a.b.c.d; any
 * other IPv6 address is cut to its first `v6_prefix` bits (0..128; more is taken as 128),
 * because one host commonly holds a whole /64. Other families key as all zeros. Pure. */
void sl_server_ip_key(const struct sockaddr *sa, unsigned v6_prefix, uint8_t key[16]);

#define SL_IP_BUCKETS 1024

struct sl_handler;

typedef struct sl_server {
    uv_loop_t *loop;
    const sl_config_t *cfg;
    sl_hub_t hub;
    sl_http_limits_t limits;
    uv_tcp_t listener;
    uv_check_t flush_check; /* the flush pass, once per loop iteration */
    uv_idle_t flush_idle;   /* keeps the loop from blocking while subs are ready */
    uv_timer_t sweep_timer; /* deadlines, heartbeats, write stalls, hub sweep */
    uv_timer_t drain_timer; /* shutdown deadline */
    uv_signal_t sigterm, sigint;
    uv_signal_t sigpipe; /* ignored: a dead peer must never kill the process */
    uv_signal_t sighup;  /* reloads the keys of [auth] */
    sl_list_t conns;
    sl_list_t deferred; /* connections that had their read this loop turn (conn.c) */
    size_t nconns;
    sl_ipent_t *ips[SL_IP_BUCKETS];
    int listening;
    int shutting_down;
    int port;   /* the bound port (useful with port 0) */
    char *rbuf; /* the shared read buffer: reads are handled before the next */
    size_t rbuf_size;
    const struct sl_handler *handler; /* what requests are handed to (set by the API) */
    sl_auth_t *auth;   /* the keys of [auth] (set by main; its keys swap on SIGHUP) */
    sl_ratelimit_t rl; /* publish and connection rates ([limits] *_rate) */
    /* Called once when a shutdown begins, for what main.c wired beside the server (the Kafka
     * sources), which must stop before the hub goes. */
    void (*on_shutdown)(void *arg);
    void *on_shutdown_arg;
} sl_server_t;

/* Sets up the server on `loop` with `cfg` (which must outlive it) and starts listening.
 * Returns 0 or a negative libuv error (logged). */
int sl_server_start(sl_server_t *srv, uv_loop_t *loop, const sl_config_t *cfg);

/* Begins a graceful shutdown (as SIGTERM does): stop accepting, drain subscribers within the
 * deadline, then close everything; the loop then runs out of handles. */
void sl_server_shutdown(sl_server_t *srv);

/* Frees what the server still holds after the loop has ended. */
void sl_server_dispose(sl_server_t *srv);

/* Makes sure the flush pass runs this iteration without blocking for I/O first. */
void sl_server_kick(sl_server_t *srv);

/* A connection of srv is gone (its close callback ran): ends a shutdown that waited for it. */
void sl_server_conn_gone(sl_server_t *srv);

#endif
