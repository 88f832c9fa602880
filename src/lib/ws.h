/*
 * WebSocket protocol pieces (RFC 6455) that work on bytes only: the handshake's accept key,
 * server frame headers, an incremental UTF-8 validator (text messages may be split across
 * frames and reads), close-code rules, and the JSON publish envelope. Frame parsing itself is
 * wslay's (see ws_conn.c); this module makes no libuv calls and is unit-tested and fuzzed.
 */
#ifndef SL_WS_H
#define SL_WS_H

#include "lib/base64.h"
#include "lib/utf8.h"

#include <stddef.h>
#include <stdint.h>

enum {
    SL_WS_CONT = 0x0,
    SL_WS_TEXT = 0x1,
    SL_WS_BINARY = 0x2,
    SL_WS_CLOSE = 0x8,
    SL_WS_PING = 0x9,
    SL_WS_PONG = 0xa,
};

/* Close codes sluice sends. */
enum {
    SL_WS_CLOSE_NORMAL = 1000,
    SL_WS_CLOSE_GOING_AWAY = 1001,
    SL_WS_CLOSE_PROTOCOL = 1002,
    SL_WS_CLOSE_BAD_DATA = 1007,
    SL_WS_CLOSE_POLICY = 1008,
    SL_WS_CLOSE_TOO_BIG = 1009,
    SL_WS_CLOSE_OVERFLOW = 4001,
    SL_WS_CLOSE_TOKEN_EXPIRED = 4401, /* the token's exp passed (mirrors HTTP 401) */
};

/* The longest server frame header: 2 bytes, then a 64-bit length. */
#define SL_WS_HDR_MAX 10

/* Validates a Sec-WebSocket-Key (base64 of exactly 16 bytes, surrounding blanks ignored) and
 * writes the Sec-WebSocket-Accept value (28 characters and a NUL) into `out`. Returns 0, or -1
 * for an invalid key. */
int sl_ws_accept_key(const char *key, size_t len, char out[29]);

/* Writes the header of an unmasked, final server frame with this opcode and payload length.
 * Returns its length (2, 4 or 10). */
size_t sl_ws_frame_header(uint8_t *buf, int opcode, uint64_t len);

/* 1 if a peer may send this code in a close frame (1000-1003, 1007-1014, 3000-4999). */
int sl_ws_close_code_ok(unsigned code);

/* A publish envelope `{"topic":"…","event":"…","data":"…"}` after decoding. The strings point
 * into the scratch buffer given to the parser; absent members are NULL. */
typedef struct sl_ws_envelope {
    const char *topic, *event, *data;
    size_t topic_len, event_len, data_len;
} sl_ws_envelope_t;

/* Parses one envelope from s[0..n): a JSON object whose members are strings (`topic`, `event`,
 * `data`) or null; unknown members are refused, as is anything but whitespace after the object.
 * Decoded strings are written to `scratch`, which must hold n bytes (decoding never grows).
 * `data` is required. Returns 0, or -1 for anything else. */
int sl_ws_parse_envelope(const char *s, size_t n, char *scratch, sl_ws_envelope_t *env);

#endif
