/*
 * sluice-curlloop: a sequential keep-alive loop of single POSTs made with libcurl's easy
 * interface, one handle reused (its connection kept alive), the simplest client that sends
 * webhooks with the library the webhook sink uses. bench/sinks.py compares the sink's
 * unbatched requests per CPU-second with it.
 *
 *   sluice-curlloop --port N [--seconds S] [--size B] [--headers sink|plain]
 *
 * With --headers sink (the default) each request carries the header lines the sink sends with
 * one raw message of bench/sinks.py's backlog, with values of the same length: Content-Type
 * (application/octet-stream), webhook-id, webhook-timestamp, sluice-id, sluice-topic and an
 * empty Expect: (curl adds Host, Accept and Content-Length itself, as it does for the sink).
 * libcurl's cost per request grows with every header line it is given (it matches each line
 * against the headers it would add, and copies each through its own printf), so a loop that
 * sent fewer would measure a lighter request. The values are fixed strings: formatting them per
 * request is the sink's own work, charged to it. Like the sink, it sets CURLOPT_PROXY and
 * CURLOPT_NOPROXY to "" (no proxy from the environment), which also spares libcurl about five
 * getenv calls a request. --headers plain sends only Content-Type (application/json) and
 * Expect:, and reads the environment's proxies: the loop's request before 2026-11-30 13:00.
 *
 * Prints "requests=… seconds=… cpu_s=… requests_per_s=… requests_per_cpu_s=…" (CPU: this
 * process's user + system time).
 */
#include <curl/curl.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    int port = 0;
    double seconds = 3;
    size_t size = 64;
    int plain = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc)
            size = (size_t)atol(argv[++i]);
        else if (strcmp(argv[i], "--headers") == 0 && i + 1 < argc &&
                 (strcmp(argv[i + 1], "sink") == 0 || strcmp(argv[i + 1], "plain") == 0))
            plain = strcmp(argv[++i], "plain") == 0;
        else {
            fprintf(stderr, "usage: sluice-curlloop --port N [--seconds S] [--size B] "
                            "[--headers sink|plain]\n");
            return 2;
        }
    }
    if (port <= 0 || size > (1u << 20)) {
        fprintf(stderr, "sluice-curlloop: --port is required (and --size at most 1 MiB)\n");
        return 2;
    }
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", port);
    char *body = malloc(size);
    if (body == NULL)
        return 1;
    memset(body, 'x', size);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *h = curl_easy_init();
    /* The sink's lines for message 1875 of topic b/0 (the middle of a 3,750-message topic). */
    static const char *const sink_lines[] = {
        "Content-Type: application/octet-stream",
        "webhook-id: msg_5f0e3c2a9b8d7e61_1875_1875",
        "webhook-timestamp: 1796040000",
        "sluice-id: 5f0e3c2a9b8d7e61-1875",
        "sluice-topic: b/0",
        "Expect:",
    };
    static const char *const plain_lines[] = {"Content-Type: application/json", "Expect:"};
    const char *const *lines = plain ? plain_lines : sink_lines;
    size_t nlines = plain ? sizeof(plain_lines) / sizeof(plain_lines[0])
                          : sizeof(sink_lines) / sizeof(sink_lines[0]);
    struct curl_slist *hdrs = NULL;
    for (size_t i = 0; i < nlines; i++) {
        struct curl_slist *l = curl_slist_append(hdrs, lines[i]);
        if (l == NULL)
            return 1;
        hdrs = l;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)size);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    if (!plain) {
        curl_easy_setopt(h, CURLOPT_PROXY, "");
        curl_easy_setopt(h, CURLOPT_NOPROXY, "");
    }
    double t0 = now_s(), c0 = cpu_s();
    long n = 0;
    while (now_s() - t0 < seconds) {
        CURLcode rc = curl_easy_perform(h);
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        if (rc != CURLE_OK || status / 100 != 2) {
            fprintf(stderr, "sluice-curlloop: request %ld failed: %s, status %ld\n", n,
                    curl_easy_strerror(rc), status);
            return 1;
        }
        n++;
    }
    double dt = now_s() - t0, cpu = cpu_s() - c0;
    printf("requests=%ld seconds=%.3f cpu_s=%.3f requests_per_s=%.1f requests_per_cpu_s=%.1f\n", n,
           dt, cpu, (double)n / dt, cpu > 0 ? (double)n / cpu : 0.0);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    curl_global_cleanup();
    free(body);
    return 0;
}
