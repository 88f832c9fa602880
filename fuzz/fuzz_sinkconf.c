/*
 * libFuzzer target: sink settings ([sinks], [sink "NAME"]) through the configuration parser,
 * then topic matching on what it accepted.
 */
#include "lib/config.h"
#include "lib/sinkconf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    sl_config_t cfg;
    sl_config_init(&cfg);
    sl_config_load_string(&cfg, "fuzz.ini", text, NULL);
    for (size_t i = 0; i < cfg.sinks.n; i++)
        if (cfg.sinks.v[i].topics != NULL)
            (void)sl_sinkconf_matches(&cfg.sinks.v[i], "billing/eu");
    sl_config_dispose(&cfg);
    free(text);
    return 0;
}
