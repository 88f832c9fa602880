/*
 * The server: listening, accepting under the connection limits and the budget, the flush pass
 * hook, the periodic sweep, signals and graceful shutdown. Shutdown ends with every handle
 * closed so that the caller's uv_loop_close() succeeds.
 */
#include "net/server.h"

#include "core/metrics.h"
#include "lib/budget.h"
#include "lib/log.h"
#include "net/conn.h"
#include "store/lossless.h"

#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define SWEEP_MS 250
/* A new connection is accepted only with room for its request state and first answer. */
#define CONN_ROOM 4096

static void on_flush(uv_check_t *h)
{
    sl_server_t *srv = h->data;
    if (sl_hub_pending(&srv->hub))
        sl_hub_flush(&srv->hub, sl_now_ms());
    if (!sl_hub_pending(&srv->hub))
        uv_idle_stop(&srv->flush_idle);
    sl_conn_resume_deferred(srv);
}

static void on_idle(uv_idle_t *h)
{
    (void)h; /* Its only purpose is to make the loop poll without blocking. */
}

void sl_server_kick(sl_server_t *srv)
{
    if (!uv_is_active((uv_handle_t *)&srv->flush_idle) &&
        !uv_is_closing((uv_handle_t *)&srv->flush_idle))
        uv_idle_start(&srv->flush_idle, on_idle);
}

static uint64_t sweep_count;

static void on_sweep(uv_timer_t *h)
{
    sl_server_t *srv = h->data;
    uint64_t now = sl_now_ms();
    sl_list_t *it, *tmp;
    sl_list_each_safe(it, tmp, &srv->conns)
    {
        sl_conn_t *c = sl_container_of(it, sl_conn_t, link);
        sl_conn_tick(c, now);
    }
    /* Topic maintenance needs no finer grain than a second. */
    if (++sweep_count % 4 == 0) {
        sl_hub_sweep(&srv->hub, now);
        sl_rl_sweep(&srv->rl, now);
    }
    sl_hub_sweep_storage(&srv->hub, now);
    if (sl_hub_pending(&srv->hub))
        sl_server_kick(srv);
}

void sl_server_ip_key(const struct sockaddr *sa, unsigned v6_prefix, uint8_t key[16])
{
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memset(key, 0, 16);
    if (sa->sa_family == AF_INET) {
        memcpy(key, v4mapped, 12);
        memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        if (memcmp(a, v4mapped, 12) == 0) {
            /* A dual-stack listener sees IPv4 peers this way: they count as IPv4. */
            memcpy(key, a, 16);
            return;
        }
        if (v6_prefix > 128)
            v6_prefix = 128;
        memcpy(key, a, v6_prefix / 8);
        if (v6_prefix % 8 != 0)
            key[v6_prefix / 8] = a[v6_prefix / 8] & (uint8_t)(0xff << (8 - v6_prefix % 8));
    }
}

static sl_ipent_t *ip_acquire(sl_server_t *srv, const struct sockaddr_storage *ss)
{
    uint8_t addr[16];
    sl_server_ip_key((const struct sockaddr *)ss, (unsigned)srv->cfg->ipv6_prefix, addr);
    uint32_t h = 0;
    for (int i = 0; i < 16; i++)
        h = h * 31 + addr[i];
    sl_ipent_t **head = &srv->ips[h % SL_IP_BUCKETS];
    for (sl_ipent_t *e = *head; e != NULL; e = e->next) {
        if (memcmp(e->addr, addr, 16) == 0) {
            e->count++;
            return e;
        }
    }
    sl_ipent_t *e = sl_calloc(1, sizeof(*e));
    memcpy(e->addr, addr, 16);
    e->count = 1;
    e->next = *head;
    *head = e;
    return e;
}

/* The connection-rate bucket of c's address: 0, or the ms until a new connection fits. */
static uint64_t conn_rate(sl_server_t *srv, const sl_conn_t *c)
{
    if (srv->rl.rates[SL_RL_CONNS].rate <= 0)
        return 0;
    sl_rl_key_t key = {.kind = 'i'};
    memcpy(key.k, c->ip->addr, 16);
    double want[SL_RL__COUNT] = {0, 0, 1};
    return sl_rl_take(&srv->rl, &key, want, sl_now_ms());
}

static void on_connection(uv_stream_t *server, int status)
{
    sl_server_t *srv = server->data;
    if (status < 0) {
        SL_WARN("accept failed", "error=%s", uv_strerror(status));
        return;
    }
    sl_conn_t *c = sl_bcalloc(sizeof(*c));
    c->srv = srv;
    /* Every close path reads the transport, including the two below that come before
     * sl_conn_start. */
    c->tp = &sl_http1_transport;
    uv_tcp_init(srv->loop, &c->tcp);
    sl_list_init(&c->link);
    sl_list_init(&c->defer_link);
    sl_list_init(&c->sub.ready_link);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        /* Never counted: freed through the same close callback path. */
        sl_list_insert_tail(&srv->conns, &c->link);
        srv->nconns++;
        sl_metrics.connections++;
        sl_conn_close(c, SL_CLOSE_ERROR);
        return;
    }
    sl_list_insert_tail(&srv->conns, &c->link);
    srv->nconns++;
    sl_metrics.connections++;
    sl_metrics.accepted++;
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    memset(&ss, 0, sizeof(ss));
    uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen);
    c->ip = ip_acquire(srv, &ss);
    uv_tcp_nodelay(&c->tcp, 1);
    uv_tcp_keepalive(&c->tcp, 1, 60);
    const sl_config_t *cfg = srv->cfg;
    uint64_t retry_ms;
    if (srv->shutting_down) {
        sl_conn_close(c, SL_CLOSE_SHUTDOWN);
    } else if (srv->nconns > cfg->max_connections) {
        sl_metrics.conn_rejected[SL_REJECT_CONN_MAX]++;
        SL_WARN("connection refused", "reason=max_connections limit=%" PRIu64,
                cfg->max_connections);
        sl_conn_reject(c, "too many connections");
    } else if (c->ip->count > cfg->max_connections_per_ip) {
        sl_metrics.conn_rejected[SL_REJECT_CONN_PER_IP]++;
        SL_WARN("connection refused", "reason=per_ip limit=%" PRIu64, cfg->max_connections_per_ip);
        sl_conn_reject(c, "too many connections from this address");
    } else if ((retry_ms = conn_rate(srv, c)) != 0) {
        sl_metrics.rate_limited[2]++;
        SL_INFO("connection refused", "reason=connection_rate retry_ms=%" PRIu64, retry_ms);
        char extra[48];
        snprintf(extra, sizeof(extra), "Retry-After: %" PRIu64 "\r\n", (retry_ms + 999) / 1000);
        sl_conn_reject_status(c, 429, "rate_limited", "too many new connections from this address",
                              extra);
    } else if (sl_hub_reserve(&srv->hub, CONN_ROOM) != 0) {
        /* Room for the connection's request state and first answer must exist. */
        sl_metrics.conn_rejected[SL_REJECT_CONN_BUDGET]++;
        SL_WARN("connection refused", "reason=budget used=%" PRIu64 " limit=%" PRIu64,
                sl_budget.used, sl_budget.limit);
        sl_conn_reject(c, "memory budget exhausted");
    } else {
        sl_budget_release(CONN_ROOM); /* only a check: the connection charges as it goes */
        sl_conn_start(c);
    }
}

/* SIGHUP: reads the key files of [auth] again. Connections keep their claims (they were
 * verified when they were made); new requests use the new keys. A file that cannot be read or
 * used refuses the whole reload, and the keys in force stay. */
static void on_sighup(uv_signal_t *h, int signum)
{
    sl_server_t *srv = h->data;
    (void)signum;
    if (srv->auth == NULL) {
        SL_INFO("SIGHUP: no [auth] section, nothing to reload", NULL);
        return;
    }
    char *errs = NULL;
    size_t errs_len = 0;
    FILE *f = open_memstream(&errs, &errs_len);
    int n = sl_auth_load(srv->auth, srv->cfg, f);
    if (f != NULL)
        fclose(f);
    if (n == 0) {
        sl_metrics.auth_reloads++;
        SL_INFO("keys reloaded", "keys=%zu admin_token=%s",
                srv->auth->keys != NULL ? srv->auth->keys->n : (size_t)0,
                srv->auth->admin_token != NULL ? "yes" : "no");
    } else {
        sl_metrics.auth_reload_failures++;
        for (char *line = errs, *nl; line != NULL && *line != '\0'; line = nl ? nl + 1 : NULL) {
            nl = strchr(line, '\n');
            if (nl != NULL)
                *nl = '\0';
            SL_ERROR("key reload refused, the old keys stay", "error=\"%s\"", line);
        }
    }
    free(errs);
}

static void on_signal(uv_signal_t *h, int signum)
{
    sl_server_t *srv = h->data;
    if (signum == SIGPIPE)
        return;
    if (srv->shutting_down) {
        SL_INFO("second signal, closing now", "signal=%d", signum);
        sl_list_t *it, *tmp;
        sl_list_each_safe(it, tmp, &srv->conns)
        {
            sl_conn_close(sl_container_of(it, sl_conn_t, link), SL_CLOSE_SHUTDOWN);
        }
        return;
    }
    SL_INFO("shutting down", "signal=%d connections=%zu", signum, srv->nconns);
    sl_server_shutdown(srv);
}

static void on_drain_deadline(uv_timer_t *h)
{
    sl_server_t *srv = h->data;
    SL_INFO("drain deadline reached, closing the rest", "connections=%zu", srv->nconns);
    sl_list_t *it, *tmp;
    sl_list_each_safe(it, tmp, &srv->conns)
    {
        sl_conn_close(sl_container_of(it, sl_conn_t, link), SL_CLOSE_SHUTDOWN);
    }
}

int sl_server_start(sl_server_t *srv, uv_loop_t *loop, const sl_config_t *cfg)
{
    memset(srv, 0, sizeof(*srv));
    srv->loop = loop;
    srv->cfg = cfg;
    sl_list_init(&srv->conns);
    sl_list_init(&srv->deferred);
    sl_hub_init(&srv->hub, cfg);
    srv->limits.max_url = cfg->max_url_bytes;
    srv->limits.max_header_bytes = cfg->max_header_bytes;
    srv->limits.max_message = cfg->max_message_bytes;
    srv->limits.max_body = cfg->max_body_bytes;
    srv->rbuf_size = 64 * 1024;
    /* A bytes burst below max_message_bytes would refuse a legal message for ever. */
    uint64_t bytes_burst = cfg->publish_bytes_burst;
    if (bytes_burst == 0)
        bytes_burst = cfg->publish_bytes_rate > cfg->max_message_bytes ? cfg->publish_bytes_rate
                                                                       : cfg->max_message_bytes;
    sl_rl_rate_t rates[SL_RL__COUNT] = {
        {(double)cfg->publish_rate, (double)cfg->publish_burst},
        {(double)cfg->publish_bytes_rate, (double)bytes_burst},
        {(double)cfg->connection_rate, (double)cfg->connection_burst},
    };
    sl_rl_init(&srv->rl, rates, cfg->rate_limit_keys);
    srv->rbuf = sl_malloc(srv->rbuf_size);
    /* Requests and WebSocket messages still arriving get a pool of their own inside the
     * limit, so they never evict published messages (budget.h). */
    sl_budget_set_limit(cfg->memory_limit,
                        cfg->max_pending_bytes ? cfg->max_pending_bytes : cfg->memory_limit / 8);
    sl_ll_setup(loop, cfg->data_dir);
    sl_conn_init_disk();
    sl_hub_set_storage(&srv->hub, &sl_ll_storage);
    if (sl_hub_recover(&srv->hub) < 0)
        SL_ERROR("data directory unreadable", "data_dir=%s", cfg->data_dir);

    struct sockaddr_storage addr;
    int rc;
    if (strchr(cfg->listen_host, ':') != NULL)
        rc = uv_ip6_addr(cfg->listen_host, cfg->listen_port, (struct sockaddr_in6 *)&addr);
    else
        rc = uv_ip4_addr(cfg->listen_host, cfg->listen_port, (struct sockaddr_in *)&addr);
    if (rc != 0) {
        SL_ERROR("bad listen address", "addr=%s error=%s", cfg->listen_host, uv_strerror(rc));
        return rc;
    }
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    uv_check_init(loop, &srv->flush_check);
    srv->flush_check.data = srv;
    uv_idle_init(loop, &srv->flush_idle);
    srv->flush_idle.data = srv;
    uv_timer_init(loop, &srv->sweep_timer);
    srv->sweep_timer.data = srv;
    uv_timer_init(loop, &srv->drain_timer);
    srv->drain_timer.data = srv;
    uv_signal_init(loop, &srv->sigterm);
    srv->sigterm.data = srv;
    uv_signal_init(loop, &srv->sigint);
    srv->sigint.data = srv;
    uv_signal_init(loop, &srv->sigpipe);
    srv->sigpipe.data = srv;
    uv_signal_init(loop, &srv->sighup);
    srv->sighup.data = srv;
    srv->listening = 1;

    rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&srv->listener, 4096, on_connection);
    if (rc != 0) {
        SL_ERROR("cannot listen", "addr=%s port=%d error=%s", cfg->listen_host, cfg->listen_port,
                 uv_strerror(rc));
        srv->shutting_down = 1;
        sl_server_shutdown(srv);
        return rc;
    }
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &blen);
    srv->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    uv_check_start(&srv->flush_check, on_flush);
    uv_timer_start(&srv->sweep_timer, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
    uv_signal_start(&srv->sigint, on_signal, SIGINT);
    uv_signal_start(&srv->sigpipe, on_signal, SIGPIPE);
    uv_signal_start(&srv->sighup, on_sighup, SIGHUP);
    if (strchr(cfg->listen_host, ':') != NULL)
        SL_INFO("listening", "addr=[%s]:%d memory_limit=%" PRIu64, cfg->listen_host, srv->port,
                cfg->memory_limit);
    else
        SL_INFO("listening", "addr=%s:%d memory_limit=%" PRIu64, cfg->listen_host, srv->port,
                cfg->memory_limit);
    return 0;
}

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void sl_server_shutdown(sl_server_t *srv)
{
    if (!srv->shutting_down) {
        srv->shutting_down = 1;
        sl_hub_shutdown_storage(&srv->hub);
        if (srv->on_shutdown != NULL)
            srv->on_shutdown(srv->on_shutdown_arg);
        close_handle((uv_handle_t *)&srv->listener);
        srv->listening = 0;
        sl_list_t *it, *tmp;
        sl_list_each_safe(it, tmp, &srv->conns)
        {
            sl_conn_drain(sl_container_of(it, sl_conn_t, link));
        }
        if (srv->nconns > 0) {
            uv_timer_start(&srv->drain_timer, on_drain_deadline, srv->cfg->shutdown_drain_ms, 0);
            sl_server_kick(srv);
            return;
        }
    }
    if (srv->nconns > 0)
        return;
    /* Every connection is gone: close our own handles so the loop ends. */
    close_handle((uv_handle_t *)&srv->listener);
    close_handle((uv_handle_t *)&srv->flush_check);
    close_handle((uv_handle_t *)&srv->flush_idle);
    close_handle((uv_handle_t *)&srv->sweep_timer);
    close_handle((uv_handle_t *)&srv->drain_timer);
    close_handle((uv_handle_t *)&srv->sigterm);
    close_handle((uv_handle_t *)&srv->sigint);
    close_handle((uv_handle_t *)&srv->sigpipe);
    close_handle((uv_handle_t *)&srv->sighup);
}

void sl_server_dispose(sl_server_t *srv)
{
    sl_hub_dispose(&srv->hub);
    sl_rl_dispose(&srv->rl);
    for (size_t i = 0; i < SL_IP_BUCKETS; i++) {
        sl_ipent_t *e = srv->ips[i], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            free(e);
        }
        srv->ips[i] = NULL;
    }
    free(srv->rbuf);
    srv->rbuf = NULL;
}

void sl_server_conn_gone(sl_server_t *srv)
{
    if (srv->shutting_down && srv->nconns == 0)
        sl_server_shutdown(srv);
}
