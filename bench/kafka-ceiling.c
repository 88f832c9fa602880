/*
 * The ceiling of the Kafka benchmark (bench/kafka.py): a plain librdkafka consumer, as an
 * application would write it without sluice, reading a topic's partitions from their ends
 * (assign, no group) while a producer runs. It counts records and bytes for a window and
 * prints one line: "records N bytes B seconds S rate R".
 *
 *   sluice-kafka-ceiling BOOTSTRAP TOPIC PARTITIONS SECONDS [WARMUP_SECONDS]
 *
 * The window starts at the first record after the warm-up, so connecting is not measured.
 */
#include <librdkafka/rdkafka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s BOOTSTRAP TOPIC PARTITIONS SECONDS [WARMUP]\n", argv[0]);
        return 2;
    }
    int parts = atoi(argv[3]);
    double window = atof(argv[4]), warmup = argc > 5 ? atof(argv[5]) : 1.0;
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", argv[1], err, sizeof(err)) != 0 ||
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
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++)
        rd_kafka_topic_partition_list_add(l, argv[2], p)->offset = RD_KAFKA_OFFSET_END;
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    double t0 = now_s(), start = 0, end = 0;
    uint64_t records = 0, bytes = 0;
    for (;;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        double t = now_s();
        if (m != NULL) {
            if (m->err == 0 && t - t0 >= warmup) {
                if (start == 0)
                    start = t;
                records++;
                bytes += m->len;
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
        printf("records %llu bytes %llu seconds %.3f rate %.0f\n", (unsigned long long)records,
               (unsigned long long)bytes, end - start, (double)records / (end - start));
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return end > start ? 0 : 1;
}
