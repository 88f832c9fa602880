/*
 * The ceiling of the Kafka benchmark (bench/kafka.py): a plain librdkafka consumer, as an
 * application would write it without sluice, reading a topic's partitions from their ends
 * (assign, no group) while a producer runs. It counts records and bytes for a window and
 * prints one line: "records N bytes B seconds S rate R lat_n L p50_ms A p99_ms B max_ms C".
 *
 *   sluice-kafka-ceiling [-X PROP=VALUE]... BOOTSTRAP TOPIC PARTITIONS SECONDS [WARMUP_SECONDS]
 *
 * The window starts at the first record after the warm-up, so connecting is not measured.
 * -X sets a librdkafka property, so the bench can give this consumer the settings it gives
 * sluice's where that is fair (fetch.wait.max.ms, queue limits). Records whose payload starts
 * with "t<CLOCK_REALTIME ns>:" (the mock helper's `flood`) give the produce -> consume
 * latency, measured when rd_kafka_consumer_poll returns the record, in a histogram of 0.1 ms
 * buckets up to 10 s (later ones count in the last bucket).
 */
#include <librdkafka/rdkafka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LAT_BUCKETS 100000 /* 0.1 ms each: 10 s */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The send time a record carries ("t<ns>:"), or -1. */
static int64_t sent_ns(const rd_kafka_message_t *m)
{
    const char *p = m->payload;
    if (m->len < 3 || p[0] != 't')
        return -1;
    int64_t v = 0;
    size_t i = 1;
    for (; i < m->len && i < 21 && p[i] >= '0' && p[i] <= '9'; i++)
        v = v * 10 + (p[i] - '0');
    return i > 1 && i < m->len && p[i] == ':' ? v : -1;
}

static double lat_percentile(const uint32_t *h, uint64_t n, double p)
{
    uint64_t want = (uint64_t)(p * (double)n + 0.999999), seen = 0;
    if (want == 0)
        want = 1;
    for (int i = 0; i < LAT_BUCKETS; i++) {
        seen += h[i];
        if (seen >= want)
            return (i + 1) * 0.1;
    }
    return LAT_BUCKETS * 0.1;
}

int main(int argc, char **argv)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    int a = 1;
    for (; a + 1 < argc && strcmp(argv[a], "-X") == 0; a += 2) {
        char *eq = strchr(argv[a + 1], '=');
        if (eq == NULL) {
            fprintf(stderr, "-X wants PROP=VALUE\n");
            return 2;
        }
        *eq = '\0';
        if (rd_kafka_conf_set(conf, argv[a + 1], eq + 1, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s\n", err);
            return 2;
        }
    }
    if (argc - a < 4) {
        fprintf(stderr,
                "usage: %s [-X PROP=VALUE]... BOOTSTRAP TOPIC PARTITIONS SECONDS [WARMUP]\n",
                argv[0]);
        return 2;
    }
    const char *bootstrap = argv[a], *topic = argv[a + 1];
    int parts = atoi(argv[a + 2]);
    double window = atof(argv[a + 3]), warmup = argc - a > 4 ? atof(argv[a + 4]) : 1.0;
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err, sizeof(err)) != 0 ||
        rd_kafka_conf_set(conf, "group.id", "sluice-ceiling", err, sizeof(err)) != 0 ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (rk == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    uint32_t *hist = calloc(LAT_BUCKETS, sizeof(*hist));
    if (hist == NULL)
        return 1;
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++)
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_END;
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    double t0 = now_s(), start = 0, end = 0, lat_max = 0;
    uint64_t records = 0, bytes = 0, lat_n = 0;
    for (;;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        double t = now_s();
        if (m != NULL) {
            if (m->err == 0 && t - t0 >= warmup) {
                if (start == 0)
                    start = t;
                records++;
                bytes += m->len;
                int64_t sent = sent_ns(m);
                if (sent > 0) {
                    double ms = (double)(realtime_ns() - sent) / 1e6;
                    long b = ms <= 0 ? 0 : (long)(ms * 10);
                    hist[b < LAT_BUCKETS ? b : LAT_BUCKETS - 1]++;
                    lat_n++;
                    if (ms > lat_max)
                        lat_max = ms;
                }
            }
            rd_kafka_message_destroy(m);
        }
        if (start != 0 && t - start >= window) {
            end = t;
            break;
        }
        if (start == 0 && t - t0 > warmup + 30) {
            fprintf(stderr, "no records\n");
            break;
        }
    }
    if (end > start)
        printf("records %llu bytes %llu seconds %.3f rate %.0f lat_n %llu p50_ms %.1f p99_ms %.1f "
               "max_ms %.1f\n",
               (unsigned long long)records, (unsigned long long)bytes, end - start,
               (double)records / (end - start), (unsigned long long)lat_n,
               lat_percentile(hist, lat_n, 0.5), lat_percentile(hist, lat_n, 0.99), lat_max);
    free(hist);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return end > start ? 0 : 1;
}
