/*
 * A Kafka cluster for tests: starts librdkafka's in-process mock cluster (rdkafka_mock.h, which
 * speaks the real protocol), prints "bootstrap <host:port,...>" on stdout and then serves line
 * commands from stdin, answering each with one line "ok ..." or "err <reason>":
 *
 *   topic NAME PARTITIONS                   create a topic
 *   produce TOPIC PARTITION COUNT PREFIX [SIZE] [KEY] [HNAME=HVAL]
 *                                           produce COUNT messages "PREFIX<i>" (i from 0), padded
 *                                           with '.' to SIZE bytes, wait until all are acked
 *   down BROKER / up BROKER                 take a broker down or bring it back
 *   error APIKEY COUNT CODE                 the next COUNT requests of APIKEY fail with CODE
 *   topic-error NAME CODE                   Metadata answers CODE for topic NAME (0 clears it):
 *                                           with 3 (unknown topic or partition) the clients see
 *                                           the topic deleted; the mock cannot delete its data
 *   flood TOPIC PARTITION RATE SIZE         a background producer (one at a time): RATE records
 *                                           a second (0: as fast as it can) of SIZE bytes, each
 *                                           starting "t<CLOCK_REALTIME ns>:"; PARTITION -1
 *                                           spreads them over the partitions
 *   flood-stop                              stops it, answers "ok <records produced>"
 *   quit                                    (or end of input) destroy the cluster and exit
 *
 * pytest drives it (test/integ/kafka_mock.py); it is not part of the server.
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int delivery_failed;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err)
        delivery_failed++;
}

static rd_kafka_t *new_client(rd_kafka_type_t type, const char *bootstraps)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (bootstraps != NULL &&
        rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps, err, sizeof(err)) != 0)
        goto out_conf;
    if (rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof(err)) != 0)
        goto out_conf;
    if (rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err)) != 0)
        goto out_conf;
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_t *rk = rd_kafka_new(type, conf, err, sizeof(err));
    if (rk == NULL)
        fprintf(stderr, "kafka-mock: %s\n", err);
    return rk;
out_conf:
    fprintf(stderr, "kafka-mock: %s\n", err);
    rd_kafka_conf_destroy(conf);
    return NULL;
}

static int produce(rd_kafka_t *p, const char *topic, int part, long count, const char *prefix,
                   long size, const char *key, const char *header)
{
    char *buf = malloc((size_t)size + 64);
    if (buf == NULL)
        return -1;
    delivery_failed = 0;
    for (long i = 0; i < count; i++) {
        int n = snprintf(buf, (size_t)size + 64, "%s%ld", prefix, i);
        while (n < size)
            buf[n++] = '.';
        rd_kafka_headers_t *hdrs = NULL;
        if (header != NULL) {
            const char *eq = strchr(header, '=');
            hdrs = rd_kafka_headers_new(1);
            rd_kafka_header_add(hdrs, header, eq ? eq - header : -1, eq ? eq + 1 : "", -1);
        }
        rd_kafka_resp_err_t err;
        for (;;) {
            err = rd_kafka_producev(
                p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(part),
                RD_KAFKA_V_VALUE(buf, (size_t)n), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
                RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
            if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                break;
            rd_kafka_poll(p, 50);
        }
        if (err) {
            if (hdrs)
                rd_kafka_headers_destroy(hdrs);
            free(buf);
            return -1;
        }
        rd_kafka_poll(p, 0);
    }
    free(buf);
    if (rd_kafka_flush(p, 60000) != 0 || delivery_failed)
        return -1;
    return 0;
}

/* The background producer of `flood`. */
static struct {
    pthread_t thread;
    int running;
    volatile int stop;
    rd_kafka_t *p;
    char topic[256];
    int partition;
    long rate, size;
    unsigned long long produced;
} fl;

static uint64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *flood_main(void *arg)
{
    (void)arg;
    char *buf = malloc((size_t)fl.size + 64);
    uint64_t start = now_ns(CLOCK_MONOTONIC);
    while (buf != NULL && !fl.stop) {
        if (fl.rate > 0) {
            /* Paced: never ahead of RATE a second since the start. */
            uint64_t due = start + fl.produced * 1000000000ull / (uint64_t)fl.rate;
            uint64_t now = now_ns(CLOCK_MONOTONIC);
            if (now < due) {
                struct timespec ts = {0, (long)(due - now < 1000000 ? due - now : 1000000)};
                nanosleep(&ts, NULL);
                rd_kafka_poll(fl.p, 0);
                continue;
            }
        }
        int n = snprintf(buf, (size_t)fl.size + 64,
                         "t%llu:", (unsigned long long)now_ns(CLOCK_REALTIME));
        while (n < fl.size)
            buf[n++] = '.';
        rd_kafka_resp_err_t err =
            rd_kafka_producev(fl.p, RD_KAFKA_V_TOPIC(fl.topic), RD_KAFKA_V_PARTITION(fl.partition),
                              RD_KAFKA_V_VALUE(buf, (size_t)n),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            rd_kafka_poll(fl.p, 10);
            continue;
        }
        if (err == 0)
            fl.produced++;
        if ((fl.produced & 1023) == 0)
            rd_kafka_poll(fl.p, 0);
    }
    free(buf);
    rd_kafka_flush(fl.p, 10000);
    return NULL;
}

int main(int argc, char **argv)
{
    int nbrokers = argc > 1 ? atoi(argv[1]) : 1;
    if (nbrokers < 1)
        nbrokers = 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    rd_kafka_t *owner = new_client(RD_KAFKA_PRODUCER, NULL);
    if (owner == NULL)
        return 1;
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(owner, nbrokers);
    if (mc == NULL) {
        fprintf(stderr, "kafka-mock: cannot start the mock cluster\n");
        rd_kafka_destroy(owner);
        return 1;
    }
    const char *boot = rd_kafka_mock_cluster_bootstraps(mc);
    rd_kafka_t *p = new_client(RD_KAFKA_PRODUCER, boot);
    if (p == NULL) {
        rd_kafka_mock_cluster_destroy(mc);
        rd_kafka_destroy(owner);
        return 1;
    }
    printf("bootstrap %s\n", boot);
    char line[4096];
    while (fgets(line, sizeof(line), stdin) != NULL) {
        char cmd[32] = "", a[1024] = "", prefix[512] = "", key[512] = "", hdr[1024] = "";
        long x = 0, y = 0, z = 0, size = 0;
        if (sscanf(line, "%31s", cmd) != 1)
            continue;
        if (strcmp(cmd, "quit") == 0) {
            printf("ok\n");
            break;
        } else if (strcmp(cmd, "topic") == 0 && sscanf(line, "%*s %1023s %ld", a, &x) == 2) {
            rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, a, (int)x, 1);
            printf(e ? "err %s\n" : "ok\n", rd_kafka_err2str(e));
        } else if (strcmp(cmd, "produce") == 0) {
            int n = sscanf(line, "%*s %1023s %ld %ld %511s %ld %511s %1023s", a, &x, &y, prefix,
                           &size, key, hdr);
            if (n < 4) {
                printf("err usage\n");
                continue;
            }
            if (n < 5 || size < 0 || size > (16 << 20))
                size = 0;
            const char *k = n >= 6 && strcmp(key, "-") != 0 ? key : NULL;
            int rc = produce(p, a, (int)x, y, prefix, size, k, n >= 7 ? hdr : NULL);
            printf(rc ? "err produce failed\n" : "ok\n");
        } else if ((strcmp(cmd, "down") == 0 || strcmp(cmd, "up") == 0) &&
                   sscanf(line, "%*s %ld", &x) == 1) {
            rd_kafka_resp_err_t e = cmd[0] == 'd' ? rd_kafka_mock_broker_set_down(mc, (int)x)
                                                  : rd_kafka_mock_broker_set_up(mc, (int)x);
            printf(e ? "err %s\n" : "ok\n", rd_kafka_err2str(e));
        } else if (strcmp(cmd, "topic-error") == 0 && sscanf(line, "%*s %1023s %ld", a, &x) == 2) {
            rd_kafka_mock_topic_set_error(mc, a, (rd_kafka_resp_err_t)x);
            printf("ok\n");
        } else if (strcmp(cmd, "flood") == 0 &&
                   sscanf(line, "%*s %255s %ld %ld %ld", fl.topic, &x, &y, &size) == 4) {
            if (fl.running || size < 0 || size > (1 << 20) || y < 0) {
                printf("err flood running or bad arguments\n");
                continue;
            }
            fl.partition = x < 0 ? RD_KAFKA_PARTITION_UA : (int)x;
            fl.rate = y;
            fl.size = size;
            fl.produced = 0;
            fl.stop = 0;
            if ((fl.p = new_client(RD_KAFKA_PRODUCER, boot)) == NULL) {
                printf("err cannot make the producer\n");
                continue;
            }
            if (pthread_create(&fl.thread, NULL, flood_main, NULL) != 0) {
                rd_kafka_destroy(fl.p);
                printf("err cannot start the producer\n");
                continue;
            }
            fl.running = 1;
            printf("ok\n");
        } else if (strcmp(cmd, "flood-stop") == 0) {
            if (fl.running) {
                fl.stop = 1;
                pthread_join(fl.thread, NULL);
                rd_kafka_destroy(fl.p);
                fl.running = 0;
            }
            printf("ok %llu\n", fl.produced);
        } else if (strcmp(cmd, "error") == 0 && sscanf(line, "%*s %ld %ld %ld", &x, &y, &z) == 3) {
            for (long i = 0; i < y; i++)
                rd_kafka_mock_push_request_errors(mc, (int16_t)x, 1, (rd_kafka_resp_err_t)z);
            printf("ok\n");
        } else {
            printf("err unknown command\n");
        }
    }
    if (fl.running) {
        fl.stop = 1;
        pthread_join(fl.thread, NULL);
        rd_kafka_destroy(fl.p);
    }
    rd_kafka_destroy(p);
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(owner);
    return 0;
}
