/*
 * libFuzzer target: the configuration parser, on arbitrary text.
 */
#include "lib/config.h"

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
    sl_topic_conf_t t;
    sl_config_topic(&cfg, "chat/42", &t);
    sl_config_dispose(&cfg);
    free(text);
    return 0;
}
