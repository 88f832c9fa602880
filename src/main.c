/*
 * The sluice binary: command line, configuration, and the loop. Everything else lives in the
 * modules; main only wires them and checks that the loop closes cleanly.
 */
#include "core/auth.h"
#include "lib/budget.h"
#include "lib/config.h"
#include "lib/log.h"
#include "kafka/source.h"
#include "net/api.h"
#include "net/server.h"
#include "sink/sink.h"

#include <arpa/inet.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* A push server holds one descriptor per subscriber: take every descriptor we are allowed. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            SL_WARN("cannot raise the descriptor limit", NULL);
    }
}

/* Whether the listen address is reachable only from this machine. */
static int loopback_only(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return strcmp(host, "localhost") == 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: sluice [--config FILE] [--listen ADDR:PORT] [--check-config] [--version] "
               "[--help]\n"
               "\n"
               "  --config FILE     read settings from an INI file (see README.md)\n"
               "  --listen ADDR:PORT  listen address, overrides the config (default "
               "127.0.0.1:8080;\n"
               "                    port 0 picks a free port and logs it)\n"
               "  --check-config    validate the configuration, report every error, and exit\n"
               "  --version         print the version and exit\n"
               "  --help            this text\n");
}

static void kick_server(void *arg)
{
    sl_server_kick(arg);
}

static void stop_sources(void *arg)
{
    (void)arg;
    sl_kafka_stop();
}

/* libuv's thread pool is shared by the lossless log (its writes, reads and cursor saves) and
 * the file sinks (at most `workers` jobs each). It is sized before the first job is queued
 * (libuv reads UV_THREADPOOL_SIZE once) so that the sinks, all busy on a slow disk, still leave
 * the log its 4 threads. An operator's larger value is kept. */
static void size_thread_pool(const sl_config_t *cfg)
{
    unsigned long want = 4;
    for (size_t i = 0; i < cfg->sinks.n; i++)
        if (cfg->sinks.v[i].type == SL_SINK_FILE)
            want += cfg->sinks.v[i].workers;
    if (want > 1024)
        want = 1024; /* libuv's own maximum */
    const char *env = getenv("UV_THREADPOOL_SIZE");
    if (env != NULL && strtoul(env, NULL, 10) >= want)
        return;
    char v[16];
    snprintf(v, sizeof(v), "%lu", want);
    setenv("UV_THREADPOOL_SIZE", v, 1);
}

/* glibc raises its mmap threshold to the size of every large block freed, up to 32 MiB, so
 * that after one big /metrics or /sinks answer (16 MiB with 10,000 sinks) every later one comes
 * from the heap, whose freed middle is never given back: RSS creeps up scrape after scrape. A
 * fixed threshold keeps large blocks in their own mappings, returned to the kernel when freed.
 * It sits above librdkafka's fetch buffers (1 MB with the default prefetch): a block mapped
 * for every fetch response is faulted in and zeroed page by page, each time. The trim
 * threshold is what glibc's own rule would make it (twice the mmap threshold), so a block
 * freed at the top of the heap is not given back only to be faulted in again at the next. */
#define MMAP_THRESHOLD (4u << 20)
static void fix_malloc_thresholds(void)
{
#if defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
    if (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 ||
        mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD) != 1)
        SL_WARN("cannot fix the malloc thresholds", NULL);
#endif
}

int main(int argc, char **argv)
{
    const char *config_path = NULL, *listen = NULL;
    int check_only = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--config") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            config_path = a + 9;
        } else if (strcmp(a, "--listen") == 0 && i + 1 < argc) {
            listen = argv[++i];
        } else if (strncmp(a, "--listen=", 9) == 0) {
            listen = a + 9;
        } else if (strcmp(a, "--check-config") == 0) {
            check_only = 1;
        } else if (strcmp(a, "--version") == 0) {
            printf("sluice %s\n", SLUICE_VERSION);
            return 0;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "sluice: unknown argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }

    fix_malloc_thresholds();
    sl_config_t cfg;
    sl_config_init(&cfg);
    int errors = 0;
    if (config_path != NULL)
        errors = sl_config_load(&cfg, config_path, stderr);
    if (listen != NULL && sl_config_set_listen(&cfg, listen) != 0) {
        fprintf(stderr, "--listen: invalid address '%s' (want ADDR:PORT)\n", listen);
        errors++;
    }
    sl_auth_t auth = {0};
    if (!errors && cfg.auth) {
        int n = sl_auth_load(&auth, &cfg, stderr);
        if (n != 0) {
            fprintf(stderr, "%s: [auth]: %d key file error%s\n",
                    config_path ? config_path : "sluice", n, n == 1 ? "" : "s");
            errors += n;
        }
    }
    /* Anyone who reaches the port may then publish, subscribe and read every metric. */
    int open_to_all = !cfg.auth && !loopback_only(cfg.listen_host);
    if (open_to_all && check_only)
        fprintf(stderr,
                "warning: listening on %s without an [auth] section: anyone who can reach it "
                "may publish, subscribe and use the admin endpoints\n",
                cfg.listen_host);
    if (errors == 0)
        errors += sl_kafka_check_config(&cfg, config_path, stderr);
    if (check_only || errors) {
        if (errors)
            fprintf(stderr, "sluice: %d configuration error%s\n", errors, errors == 1 ? "" : "s");
        else
            printf("configuration ok\n");
        sl_auth_dispose(&auth);
        sl_config_dispose(&cfg);
        return errors ? 1 : 0;
    }
    sl_log_level = cfg.log_level;
    if (open_to_all)
        SL_WARN("no [auth] section on a non-loopback address: anyone may publish, subscribe and "
                "use the admin endpoints",
                "listen=%s", cfg.listen_host);
    raise_fd_limit();
    size_thread_pool(&cfg);

    uv_loop_t loop;
    uv_loop_init(&loop);
    sl_server_t *srv = sl_calloc(1, sizeof(*srv));
    int rc = sl_server_start(srv, &loop, &cfg);
    /* The one place the layers are wired: the API answers the server's requests. */
    sl_api_install(srv);
    /* Sinks read the hub beside the server and stop on the same signals. */
    int sink_err = 0;
    sl_sinks_t *sinks =
        rc == 0 ? sl_sinks_start(&loop, &srv->hub, &cfg, kick_server, srv, &sink_err) : NULL;
    if (sink_err != 0) {
        rc = sink_err;
        sl_server_shutdown(srv);
    }
    srv->auth = cfg.auth ? &auth : NULL;
    /* Kafka sources publish into the server's hub and stop when it shuts down. */
    if (rc == 0 && cfg.nsources > 0) {
        srv->on_shutdown = stop_sources;
        if (sl_kafka_start(&loop, &srv->hub, &cfg, kick_server, srv) != 0) {
            rc = SL_EINVAL;
            sl_server_shutdown(srv);
        }
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    sl_sinks_free(sinks);
    sl_kafka_dispose();
    sl_server_dispose(srv);
    free(srv);
    int close_rc = uv_loop_close(&loop);
    if (close_rc != 0) {
        SL_ERROR("loop did not close: a handle leaked", "error=%s", uv_strerror(close_rc));
        rc = close_rc;
    }
    if (rc == 0)
        SL_INFO("stopped", "memory_accounted=%llu", (unsigned long long)sl_budget.used);
    sl_auth_dispose(&auth);
    sl_config_dispose(&cfg);
    return rc == 0 ? 0 : 1;
}
