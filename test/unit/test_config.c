/*
 * Unit tests of configuration: sizes, durations, globs, listen addresses, a file that sets every
 * key, and every error path with its file:line.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/config.h"
#include "lib/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void test_sizes(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(sl_parse_size("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(sl_parse_size("64k", &v), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(sl_parse_size("256MiB", &v), 0);
    assert_int_equal(v, 256u << 20);
    assert_int_equal(sl_parse_size("1G", &v), 0);
    assert_int_equal(v, 1u << 30);
    assert_int_equal(sl_parse_size("12KB", &v), 0);
    assert_int_equal(v, 12 * 1024);
    assert_int_equal(sl_parse_size("7b", &v), 0);
    assert_int_equal(v, 7);
    const char *bad[] = {
        "", "12x", "-1", "1 k", "k", "1.5m", "99999999999999999999", "17179869184g"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_not_equal(sl_parse_size(bad[i], &v), 0);
}

static void test_durations(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(sl_parse_duration_ms("500ms", &v), 0);
    assert_int_equal(v, 500);
    assert_int_equal(sl_parse_duration_ms("30s", &v), 0);
    assert_int_equal(v, 30000);
    assert_int_equal(sl_parse_duration_ms("5m", &v), 0);
    assert_int_equal(v, 300000);
    assert_int_equal(sl_parse_duration_ms("2h", &v), 0);
    assert_int_equal(v, 7200000);
    assert_int_equal(sl_parse_duration_ms("7", &v), 0);
    assert_int_equal(v, 7000);
    const char *bad[] = {"", "s", "5 s", "5sec", "-5s", "1.5s", "99999999999999999999h"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_not_equal(sl_parse_duration_ms(bad[i], &v), 0);
}

static void test_globs(void **state)
{
    (void)state;
    assert_true(sl_glob_match("*", "anything/at/all"));
    assert_true(sl_glob_match("chat/*", "chat/a/b"));
    assert_false(sl_glob_match("chat/*", "chatter"));
    assert_true(sl_glob_match("a?c", "abc"));
    assert_false(sl_glob_match("a?c", "ac"));
    assert_true(sl_glob_match("*.log", "x.y.log"));
    assert_false(sl_glob_match("exact", "exactly"));
    assert_true(sl_glob_match("", ""));
    /* Backtracking stays linear: this must answer at once. */
    char s[4097];
    memset(s, 'a', 4096);
    s[4096] = '\0';
    clock_t t0 = clock();
    assert_false(sl_glob_match("*a*a*a*a*a*a*a*a*b", s));
    assert_true((double)(clock() - t0) / CLOCKS_PER_SEC < 1.0);
}

static void test_listen(void **state)
{
    (void)state;
    sl_config_t c;
    sl_config_init(&c);
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 8080);
    assert_int_equal(sl_config_set_listen(&c, "0.0.0.0:0"), 0);
    assert_string_equal(c.listen_host, "0.0.0.0");
    assert_int_equal(c.listen_port, 0);
    assert_int_equal(sl_config_set_listen(&c, "[::1]:9000"), 0);
    assert_string_equal(c.listen_host, "::1");
    assert_int_equal(c.listen_port, 9000);
    const char *bad[] = {"127.0.0.1", "127.0.0.1:", "127.0.0.1:70000", "host:80",
                         ":80",       "[::1:80",    "1.2.3.4:8x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_not_equal(sl_config_set_listen(&c, bad[i]), 0);
    assert_int_equal(c.listen_port, 9000); /* unchanged by failures */
    sl_config_dispose(&c);
}

static const char full[] = "[server]\n"
                           "listen = 127.0.0.2:9001\n"
                           "data_dir = /tmp/sl\n"
                           "memory_limit = 64MiB\n"
                           "shutdown_drain = 3s\n"
                           "header_timeout = 2s\n"
                           "idle_timeout = 1m\n"
                           "write_stall_timeout = 500ms\n"
                           "sse_retry = 1500ms\n"
                           "topic_idle_ttl = 10s\n"
                           "send_buffer = 64k\n"
                           "log_level = debug\n"
                           "; a comment\n"
                           "[limits]\n"
                           "max_connections = 10\n"
                           "max_connections_per_ip = 5\n"
                           "max_header_bytes = 2k\n"
                           "max_url_bytes = 1k\n"
                           "max_message_bytes = 4k\n"
                           "max_body_bytes = 1m\n"
                           "max_topics_per_connection = 3\n"
                           "max_topic_name = 32\n"
                           "max_topics = 100\n"
                           "max_cursors_per_topic = 7\n"
                           "max_cursors = 70\n"
                           "ipv6_prefix = 56\n"
                           "[topic \"*\"]\n"
                           "max_messages = 10\n"
                           "max_bytes = 1k\n"
                           "max_age = 1m\n"
                           "overflow = disconnect\n"
                           "lag_hard_messages = 5\n"
                           "lag_hard_bytes = 2k\n"
                           "lag_soft_messages = 3\n"
                           "lag_soft_bytes = 1k\n"
                           "lag_soft = 2s\n"
                           "lag_max_age = 30s\n"
                           "heartbeat = 5s\n"
                           "heartbeat_event = yes\n"
                           "[topic \"chat/*\"]\n"
                           "max_messages = 99\n"
                           "overflow = skip\n";

static void test_full_file(void **state)
{
    (void)state;
    sl_config_t c;
    sl_config_init(&c);
    assert_int_equal(sl_config_load_string(&c, "full.ini", full, NULL), 0);
    assert_string_equal(c.listen_host, "127.0.0.2");
    assert_int_equal(c.listen_port, 9001);
    assert_string_equal(c.data_dir, "/tmp/sl");
    assert_int_equal(c.memory_limit, 64u << 20);
    assert_int_equal(c.shutdown_drain_ms, 3000);
    assert_int_equal(c.header_timeout_ms, 2000);
    assert_int_equal(c.idle_timeout_ms, 60000);
    assert_int_equal(c.write_stall_ms, 500);
    assert_int_equal(c.sse_retry_ms, 1500);
    assert_int_equal(c.topic_idle_ttl_ms, 10000);
    assert_int_equal(c.send_buffer, 65536);
    assert_int_equal(c.log_level, SL_LOG_DEBUG);
    assert_int_equal(c.max_connections, 10);
    assert_int_equal(c.max_connections_per_ip, 5);
    assert_int_equal(c.max_header_bytes, 2048);
    assert_int_equal(c.max_url_bytes, 1024);
    assert_int_equal(c.max_message_bytes, 4096);
    assert_int_equal(c.max_body_bytes, 1u << 20);
    assert_int_equal(c.max_topics_per_connection, 3);
    assert_int_equal(c.max_topic_name, 32);
    assert_int_equal(c.max_topics, 100);
    assert_int_equal(c.max_cursors_per_topic, 7);
    assert_int_equal(c.max_cursors, 70);
    assert_int_equal(c.ipv6_prefix, 56);
    assert_int_equal(c.nrules, 2);

    sl_topic_conf_t t;
    sl_config_topic(&c, "news", &t);
    assert_int_equal(t.max_messages, 10);
    assert_int_equal(t.max_bytes, 1024);
    assert_int_equal(t.max_age_ms, 60000);
    assert_int_equal(t.overflow, SL_OVERFLOW_DISCONNECT);
    assert_int_equal(t.lag_hard_messages, 5);
    assert_int_equal(t.lag_hard_bytes, 2048);
    assert_int_equal(t.lag_soft_messages, 3);
    assert_int_equal(t.lag_soft_bytes, 1024);
    assert_int_equal(t.lag_soft_ms, 2000);
    assert_int_equal(t.lag_max_age_ms, 30000);
    assert_int_equal(t.heartbeat_ms, 5000);
    assert_int_equal(t.heartbeat_event, 1);
    /* The later, more specific rule overrides only what it sets. */
    sl_config_topic(&c, "chat/1", &t);
    assert_int_equal(t.max_messages, 99);
    assert_int_equal(t.overflow, SL_OVERFLOW_SKIP);
    assert_int_equal(t.max_bytes, 1024);
    assert_int_equal(t.heartbeat_ms, 5000);
    sl_config_dispose(&c);

    /* Defaults apply where no rule matches. */
    sl_config_init(&c);
    assert_int_equal(c.max_cursors_per_topic, 1024);
    assert_int_equal(c.max_cursors, 65536);
    assert_int_equal(c.ipv6_prefix, 64);
    sl_config_topic(&c, "x", &t);
    assert_int_equal(t.max_messages, 1024);
    assert_int_equal(t.overflow, SL_OVERFLOW_SKIP);
    assert_int_equal(t.heartbeat_ms, 15000);
    sl_config_dispose(&c);
}

/* Loads `text` and returns the errors printed, for matching. */
static int load_errors(const char *text, char *out, size_t cap)
{
    sl_config_t c;
    sl_config_init(&c);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    int n = sl_config_load_string(&c, "t.ini", text, f);
    fclose(f);
    snprintf(out, cap, "%s", buf ? buf : "");
    free(buf);
    sl_config_dispose(&c);
    return n;
}

static void test_errors(void **state)
{
    (void)state;
    char out[4096];
    const char *text = "[server]\n"                  /* 1 */
                       "listen = 127.0.0.1:99999\n"  /* 2 */
                       "memory_limit = lots\n"       /* 3 */
                       "bogus = 1\n"                 /* 4 */
                       "memory_limit = 1k\n"         /* 5 out of range */
                       "[limits]\n"                  /* 6 */
                       "max_topic_name = 2000\n"     /* 7 */
                       "max_connections = -5\n"      /* 8 */
                       "[topic \"*\"]\n"             /* 9 */
                       "overflow = sometimes\n"      /* 10 */
                       "heartbeat_event = perhaps\n" /* 11 */
                       "max_messages = 0\n"          /* 12 */
                       "nope = 1\n"                  /* 13 */
                       "[topic chat]\n"              /* 14 */
                       "max_messages = 5\n"          /* 15 */
                       "[empty_unknown]\n"           /* 16 */
                       "[server]\n"                  /* 17 */
                       "log_level = loud\n"          /* 18 */
                       "this line is not ini\n";     /* 19 */
    int n = load_errors(text, out, sizeof(out));
    const char *want[] = {
        "t.ini:2:",  "t.ini:3:",  "t.ini:4:",  "t.ini:5:",  "t.ini:7:",  "t.ini:8:",  "t.ini:10:",
        "t.ini:11:", "t.ini:12:", "t.ini:13:", "t.ini:14:", "t.ini:16:", "t.ini:18:", "t.ini:19:"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (strstr(out, want[i]) == NULL)
            fail_msg("no error at %s in:\n%s", want[i], out);
    }
    assert_int_equal(n, (int)(sizeof(want) / sizeof(want[0])));
    assert_non_null(strstr(out, "unknown key 'bogus'"));
    assert_non_null(strstr(out, "unknown section [empty_unknown]"));

    /* Cross-key check. */
    n = load_errors("[limits]\nmax_body_bytes = 1k\nmax_message_bytes = 2k\n", out, sizeof(out));
    assert_int_equal(n, 1);
    assert_non_null(strstr(out, "t.ini:3:"));
    /* The new limits: a cursor limit of 0 would refuse every durable reader; a prefix is
     * 0..128 bits (0 counts every IPv6 peer as one address, 128 each address alone). */
    n = load_errors("[limits]\n"
                    "max_cursors_per_topic = 0\n" /* 2 */
                    "max_cursors = 0\n"           /* 3 */
                    "ipv6_prefix = 129\n"         /* 4 */
                    "ipv6_prefix = -1\n"          /* 5 */
                    "ipv6_prefix = 64bits\n"      /* 6 */
                    "max_cursors = many\n",       /* 7 */
                    out, sizeof(out));
    assert_int_equal(n, 6);
    for (int line = 2; line <= 7; line++) {
        char at[16];
        snprintf(at, sizeof(at), "t.ini:%d:", line);
        if (strstr(out, at) == NULL)
            fail_msg("no error at %s in:\n%s", at, out);
    }
    assert_int_equal(load_errors("[limits]\nipv6_prefix = 0\nmax_cursors = 1\n", out, sizeof(out)),
                     0);
    assert_int_equal(load_errors("[limits]\nipv6_prefix = 128\n", out, sizeof(out)), 0);
    /* Messages whose encodings could pass 4 GiB are not configurable. */
    n = load_errors("[limits]\nmax_body_bytes = 2GiB\nmax_message_bytes = 513MiB\n", out,
                    sizeof(out));
    assert_int_equal(n, 1);
    assert_non_null(strstr(out, "max_message_bytes"));
    assert_int_equal(load_errors("[limits]\nmax_body_bytes = 2GiB\nmax_message_bytes = 512MiB\n",
                                 out, sizeof(out)),
                     0);
    /* A key outside any section. */
    n = load_errors("stray = 1\n", out, sizeof(out));
    assert_int_equal(n, 1);
    assert_non_null(strstr(out, "t.ini:1:"));

    /* A missing file. */
    sl_config_t c;
    sl_config_init(&c);
    assert_int_not_equal(sl_config_load(&c, "/nonexistent/sluice.ini", NULL), 0);
    sl_config_dispose(&c);

    /* A real file, through the FILE reader. */
    char path[] = "/tmp/sluice-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *body = "[server]\nsse_retry = 3s\n\n[limits]\nmax_topics = x\n";
    assert_int_equal(write(fd, body, strlen(body)), (ssize_t)strlen(body));
    close(fd);
    sl_config_init(&c);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(sl_config_load(&c, path, f), 1);
    fclose(f);
    assert_int_equal(c.sse_retry_ms, 3000);
    char want5[300];
    snprintf(want5, sizeof(want5), "%s:5:", path);
    assert_non_null(strstr(buf, want5));
    free(buf);
    unlink(path);
    sl_config_dispose(&c);
}

/* WebSocket keys and the origin allow-list. */
static void test_websocket_and_origins(void **state)
{
    (void)state;
    sl_config_t c;
    sl_config_init(&c);
    assert_null(c.origins);
    assert_int_equal(c.ws_ping_interval_ms, 30000);
    assert_int_equal(c.ws_pong_timeout_ms, 20000);
    assert_int_equal(c.ws_close_timeout_ms, 5000);
    /* No list: any origin. */
    assert_true(sl_config_origin_allowed(&c, "https://any.example", 19));
    assert_int_equal(sl_config_load_string(&c, "ws.ini",
                                           "[server]\n"
                                           "origins = https://a.example ,http://b.example:8080,\n"
                                           "ws_ping_interval = 0\n"
                                           "ws_pong_timeout = 1500ms\n"
                                           "ws_close_timeout = 2s\n",
                                           NULL),
                     0);
    assert_string_equal(c.origins, "https://a.example,http://b.example:8080");
    assert_int_equal(c.ws_ping_interval_ms, 0);
    assert_int_equal(c.ws_pong_timeout_ms, 1500);
    assert_int_equal(c.ws_close_timeout_ms, 2000);
    const char *ok[] = {"https://a.example", "HTTPS://A.EXAMPLE", "http://b.example:8080"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        assert_true(sl_config_origin_allowed(&c, ok[i], strlen(ok[i])));
    const char *no[] = {"https://a.example.evil",
                        "https://a.exampl",
                        "http://b.example",
                        "",
                        "null",
                        "https://a.example,http://b.example:8080"};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        assert_false(sl_config_origin_allowed(&c, no[i], strlen(no[i])));
    /* An empty value goes back to any origin. */
    assert_int_equal(sl_config_load_string(&c, "ws.ini", "[server]\norigins =\n", NULL), 0);
    assert_null(c.origins);
    sl_config_dispose(&c);

    char out[2048];
    int n = load_errors("[server]\n"
                        "origins = a.example\n"             /* 2: no scheme */
                        "origins = https://ok.example x:\n" /* 3: the second is bad */
                        "ws_pong_timeout = 0\n"             /* 4: out of range */
                        "ws_ping_interval = often\n",       /* 5 */
                        out, sizeof(out));
    assert_int_equal(n, 4);
    const char *want[] = {"t.ini:2:", "t.ini:3:", "t.ini:4:", "t.ini:5:"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(out, want[i]) == NULL)
            fail_msg("no error at %s in:\n%s", want[i], out);
}

static int load_text(sl_config_t *cfg, const char *text, char *errs, size_t cap)
{
    FILE *f = fmemopen(errs, cap, "w");
    sl_config_init(cfg);
    int n = sl_config_load_string(cfg, "t.ini", text, f);
    fclose(f);
    return n;
}

static void test_sources(void **state)
{
    (void)state;
    char errs[4096] = "";
    sl_config_t cfg;
    int n = load_text(&cfg,
                      "[server]\nnode = n7\n"
                      "[source \"orders\"]\ntype = kafka\nbrokers = 127.0.0.1:9092\n"
                      "kafka_topics = orders, refunds ,\ntopic = shop/{kafka_topic}/{partition}\n"
                      "event = {header:type}\nstart = latest\nfan_in = local\nprefetch = 4MiB\n"
                      "on_reject = pause\ncommit_interval = 250ms\n"
                      "kafka.security.protocol = plaintext\n"
                      "[source \"cdc\"]\ntype = kafka\nbrokers = b:1\nkafka_topics = ^cdc\\..*\n"
                      "topic = cdc/{key}\n",
                      errs, sizeof(errs));
    assert_int_equal(n, 0);
    assert_string_equal(cfg.node, "n7");
    assert_int_equal(cfg.nsources, 2);
    sl_source_conf_t *s = &cfg.sources[0];
    assert_string_equal(s->name, "orders");
    assert_true(s->kafka);
    assert_string_equal(s->brokers, "127.0.0.1:9092");
    assert_string_equal(s->group, "sluice-{node}");
    assert_int_equal(s->ntopics, 2);
    assert_string_equal(s->topics[0], "orders");
    assert_string_equal(s->topics[1], "refunds");
    assert_string_equal(s->topic_tmpl, "shop/{kafka_topic}/{partition}");
    assert_string_equal(s->event_tmpl, "{header:type}");
    assert_true(s->start_latest);
    assert_true(s->fan_in_local);
    assert_true(s->reject_pause);
    assert_int_equal(s->prefetch, 4u << 20);
    assert_int_equal(s->commit_interval_ms, 250);
    assert_int_equal(s->nprops, 1);
    assert_string_equal(s->props[0], "security.protocol");
    assert_string_equal(s->props[1], "plaintext");
    s = &cfg.sources[1];
    assert_string_equal(s->topics[0], "^cdc\\..*");
    assert_false(s->start_latest);
    assert_int_equal(s->prefetch, 2u << 20);
    sl_config_dispose(&cfg);

    /* Every refusal, with its line. */
    n = load_text(&cfg,
                  "[source \"a\"]\n"                        /* 1: needs type, brokers, topics */
                  "kafka.group.id = x\n"                    /* 2: managed */
                  "kafka.enable.auto.offset.store = true\n" /* 3: managed */
                  "topic = a/{nope}\n"                      /* 4 */
                  "start = middle\n"                        /* 5 */
                  "fan_in = maybe\n"                        /* 6 */
                  "prefetch = 1k\n"                         /* 7 */
                  "group = g-{partition}\n"                 /* 8 */
                  "color = red\n"                           /* 9 */
                  "type = rabbit\n"                         /* 10 */
                  "[source \"bad name\"]\n"                 /* 11 */
                  "[source \"a\"]\n",                       /* 12: duplicate */
                  errs, sizeof(errs));
    const char *want[] = {"t.ini:2: kafka.group.id is managed",
                          "t.ini:3: kafka.enable.auto.offset.store is managed",
                          "t.ini:4: invalid topic template",
                          "t.ini:5: invalid start",
                          "t.ini:6: invalid fan_in",
                          "t.ini:7: invalid prefetch",
                          "t.ini:8: invalid group",
                          "t.ini:9: unknown key 'color'",
                          "t.ini:10: invalid type",
                          "t.ini:11: malformed section",
                          "t.ini:12: duplicate section",
                          "t.ini:1: [source \"a\"] needs type = kafka",
                          "t.ini:1: [source \"a\"] needs brokers",
                          "t.ini:1: [source \"a\"] needs kafka_topics",
                          "t.ini:1: [source \"a\"] needs topic"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (strstr(errs, want[i]) == NULL)
            fail_msg("missing '%s' in:\n%s", want[i], errs);
    }
    assert_int_equal(n, (int)(sizeof(want) / sizeof(want[0])));
    sl_config_dispose(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_globs),
        cmocka_unit_test(test_listen),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_websocket_and_origins),
        cmocka_unit_test(test_sources),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
