/*
 * Unit tests of the [sinks] and [sink "NAME"] sections: defaults, every key, and the errors an
 * operator gets for bad values, missing keys and malformed names.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/config.h"
#include "lib/sinkconf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int load(sl_config_t *cfg, const char *text, char *errs, size_t cap)
{
    sl_config_init(cfg);
    FILE *f = fmemopen(errs, cap, "w");
    int n = sl_config_load_string(cfg, "t.ini", text, f);
    fclose(f);
    return n;
}

static void test_full(void **state)
{
    (void)state;
    char errs[2048] = "";
    sl_config_t cfg;
    int n = load(&cfg,
                 "[sinks]\nmax_in_flight = 64\nbreaker_registry_max = 10\nbreaker_idle_ttl = 1h\n"
                 "[sink \"billing\"]\ntype = webhook\ntopics = billing/*, audit\nstart = oldest\n"
                 "url = https://hooks.example.com/{topic}\nformat = json\n"
                 "batch_max_messages = 50\nbatch_max_bytes = 1MiB\nbatch_linger = 20ms\n"
                 "max_in_flight = 4\nstream_in_flight = 1\nconnect_timeout = 2s\ntimeout = 3s\n"
                 "retry_initial = 100ms\nretry_max = 10m\ndead_letter = dlq/billing\n"
                 "header = Authorization: Bearer x\nheader = X-A: b\nbreaker_failures = 2\n"
                 "breaker_open = 1s\nbreaker_open_max = 1m\non_max_backlog = block\n"
                 "allow_private = true\n",
                 errs, sizeof(errs));
    assert_int_equal(n, 0);
    assert_int_equal(cfg.sinks.max_in_flight, 64);
    assert_int_equal(cfg.sinks.breaker_registry_max, 10);
    assert_int_equal(cfg.sinks.breaker_idle_ttl_ms, 3600000);
    assert_int_equal(cfg.sinks.n, 1);
    const sl_sink_conf_t *c = &cfg.sinks.v[0];
    assert_string_equal(c->name, "billing");
    assert_int_equal(c->type, SL_SINK_WEBHOOK);
    assert_int_equal(c->start_oldest, 1);
    assert_int_equal(c->format, 1);
    assert_int_equal(c->batch_max_messages, 50);
    assert_int_equal(c->batch_max_bytes, 1 << 20);
    assert_int_equal(c->batch_linger_ms, 20);
    assert_int_equal(c->max_in_flight, 4);
    assert_int_equal(c->connect_timeout_ms, 2000);
    assert_int_equal(c->timeout_ms, 3000);
    assert_int_equal(c->retry_initial_ms, 100);
    assert_int_equal(c->retry_max_ms, 600000);
    assert_string_equal(c->dead_letter, "dlq/billing");
    assert_int_equal(c->nheaders, 2);
    assert_string_equal(c->headers[1], "X-A: b");
    assert_int_equal(c->breaker_failures, 2);
    assert_int_equal(c->skip_on_backlog, 0);
    assert_int_equal(c->allow_private, 1);
    assert_true(sl_sinkconf_matches(c, "billing/eu"));
    assert_true(sl_sinkconf_matches(c, "audit"));
    assert_false(sl_sinkconf_matches(c, "auditx"));
    sl_config_dispose(&cfg);
}

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"[sink \"a b\"]\n", "t.ini:1: malformed section"},
        {"[sink \"ok\"]\ntopics = x\nurl = http://h/\n", "type is required"},
        {"[sink \"ok\"]\ntype = webhook\nurl = http://h/\n", "topics is required"},
        {"[sink \"ok\"]\ntype = webhook\ntopics = x\n", "url is required"},
        {"[sink \"ok\"]\ntype = webhook\ntopics = x\nurl = ftp://h/\n", "invalid url"},
        {"[sink \"ok\"]\ntype = webhook\ntopics = x\nurl = http://{topic}/\n", "host"},
        {"[sink \"ok\"]\ntype = smtp\n", "t.ini:2: invalid value 'smtp' for type"},
        {"[sink \"ok\"]\nbogus = 1\n", "t.ini:2: unknown key 'bogus'"},
        {"[sinks]\nbogus = 1\n", "unknown key 'bogus' in [sinks]"},
        {"[sinks]\nmax_in_flight = 0\n", "out of range"},
        {"[sink \"ok\"]\ntimeout = soon\n", "invalid value 'soon' for timeout"},
        {"[sink \"ok\"]\nstream_in_flight = 2\n", "stream_in_flight must be 1"},
        {"[sink \"ok\"]\nheader = NoColon\n", "header must be"},
        {"[sink \"ok\"]\ndead_letter = /bad\n", "not a valid topic name"},
        {"[sink \"ok\"]\ntype = webhook\ntopics = x/*\nurl = http://h/\ndead_letter = x/d\n",
         "one of the sink's own topics"},
        {"[sink \"ok\"]\ntype = webhook\ntopics = x\nurl = http://h/\nretry_initial = 2m\n"
         "retry_max = 1m\n",
         "retry_initial is above retry_max"},
        {"[sink \"ok\"]\ntype = file\ntopics = x\n", "directory is required"},
        {"[sink \"ok\"]\ntype = file\ntopics = x\ndirectory = /d\nformat = json\n",
         "format is raw or jsonl"},
        {"[sink \"ok\"]\ntype = file\ntopics = x\ndirectory = /d\nurl = http://h/\n",
         "url is for type = webhook"},
        {"[sink \"ok\"]\nfsync = sometimes\n", "invalid value 'sometimes' for fsync"},
        {"[sink \"ok\"]\nworkers = 0\n", "out of range"},
        {"[sink \"ok\"]\nrotate_bytes = 1\n", "out of range"},
        {"[sink \"ok\"]\non_max_backlog = later\n", "invalid value 'later' for on_max_backlog"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char errs[2048];
        memset(errs, 0, sizeof(errs));
        sl_config_t cfg;
        int n = load(&cfg, cases[i].text, errs, sizeof(errs));
        if (n == 0 || strstr(errs, cases[i].want) == NULL)
            fail_msg("case %zu: %d errors, '%s' (wanted '%s')", i, n, errs, cases[i].want);
        sl_config_dispose(&cfg);
    }
}

static void test_file_sink(void **state)
{
    (void)state;
    char errs[2048] = "";
    sl_config_t cfg;
    int n = load(&cfg,
                 "[sink \"arch\"]\ntype = file\ntopics = audio/*\ndirectory = /var/x\n"
                 "format = jsonl\nrotate_bytes = 1MiB\nrotate_interval = 2m\nfsync = rotate\n"
                 "workers = 2\n"
                 "[sink \"d\"]\ntype = file\ntopics = a\ndirectory = /var/y\nformat = raw\n",
                 errs, sizeof(errs));
    assert_int_equal(n, 0);
    const sl_sink_conf_t *c = &cfg.sinks.v[0];
    assert_int_equal(c->type, SL_SINK_FILE);
    assert_string_equal(c->directory, "/var/x");
    assert_int_equal(c->format, 0);
    assert_int_equal(c->rotate_bytes, 1 << 20);
    assert_int_equal(c->rotate_interval_ms, 120000);
    assert_int_equal(c->fsync_mode, SL_FILE_SYNC_ROTATE);
    assert_int_equal(c->workers, 2);
    c = &cfg.sinks.v[1];
    assert_int_equal(c->format, 2);
    assert_int_equal(c->fsync_mode, SL_FILE_SYNC_BATCH);
    assert_int_equal(c->rotate_bytes, 64 << 20);
    assert_int_equal(c->workers, 4);
    sl_config_dispose(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_file_sink),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
