/*
 * WebSocket protocol pieces on bytes (see ws.h): accept key, frame headers, UTF-8 validation,
 * close codes and the publish envelope.
 */
#include "lib/ws.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <string.h>

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

int sl_ws_accept_key(const char *key, size_t len, char out[29])
{
    while (len > 0 && (*key == ' ' || *key == '\t')) {
        key++;
        len--;
    }
    while (len > 0 && (key[len - 1] == ' ' || key[len - 1] == '\t'))
        len--;
    /* 16 bytes encode to 22 characters and "==". */
    if (len != 24 || key[22] != '=' || key[23] != '=')
        return -1;
    unsigned char raw[18];
    if (EVP_DecodeBlock(raw, (const unsigned char *)key, 24) != 18)
        return -1;
    /* The last character carries 2 bits; the other 4 must be zero in a canonical key. */
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = memchr(b64, key[21], 64);
    if (p == NULL || ((p - b64) & 15) != 0)
        return -1;
    unsigned char buf[24 + sizeof(ws_guid) - 1];
    memcpy(buf, key, 24);
    memcpy(buf + 24, ws_guid, sizeof(ws_guid) - 1);
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1(buf, sizeof(buf), digest);
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH);
    out[28] = '\0';
    return 0;
}

size_t sl_ws_frame_header(uint8_t *buf, int opcode, uint64_t len)
{
    buf[0] = (uint8_t)(0x80 | (opcode & 0x0f));
    if (len < 126) {
        buf[1] = (uint8_t)len;
        return 2;
    }
    if (len < 65536) {
        buf[1] = 126;
        buf[2] = (uint8_t)(len >> 8);
        buf[3] = (uint8_t)len;
        return 4;
    }
    buf[1] = 127;
    for (int i = 0; i < 8; i++)
        buf[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

int sl_ws_close_code_ok(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* ---- the publish envelope --------------------------------------------------------------- */

typedef struct jp {
    const char *s, *end;
    char *out;
} jp_t;

static void skip_ws(jp_t *p)
{
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r'))
        p->s++;
}

static int hex4(const char *s, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

static char *put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xc0 | cp >> 6);
        *o++ = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xe0 | cp >> 12);
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
    } else {
        *o++ = (char)(0xf0 | cp >> 18);
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
    }
    return o;
}

/* Parses a JSON string at p->s (which is at the opening quote) into p->out. */
static int parse_string(jp_t *p, const char **str, size_t *len)
{
    if (p->s >= p->end || *p->s != '"')
        return -1;
    p->s++;
    char *start = p->out, *o = p->out;
    while (p->s < p->end && *p->s != '"') {
        unsigned char c = (unsigned char)*p->s++;
        if (c < 0x20)
            return -1;
        if (c != '\\') {
            *o++ = (char)c;
            continue;
        }
        if (p->s >= p->end)
            return -1;
        char e = *p->s++;
        switch (e) {
        case '"':
        case '\\':
        case '/':
            *o++ = e;
            break;
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'u': {
            unsigned cp, lo;
            if (p->end - p->s < 4 || hex4(p->s, &cp) != 0)
                return -1;
            p->s += 4;
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return -1;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (p->end - p->s < 6 || p->s[0] != '\\' || p->s[1] != 'u' ||
                    hex4(p->s + 2, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff)
                    return -1;
                p->s += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            o = put_utf8(o, cp);
            break;
        }
        default:
            return -1;
        }
    }
    if (p->s >= p->end)
        return -1;
    p->s++;
    *str = start;
    *len = (size_t)(o - start);
    p->out = o;
    return 0;
}

int sl_ws_parse_envelope(const char *s, size_t n, char *scratch, sl_ws_envelope_t *env)
{
    jp_t p = {s, s + n, scratch};
    memset(env, 0, sizeof(*env));
    skip_ws(&p);
    if (p.s >= p.end || *p.s++ != '{')
        return -1;
    skip_ws(&p);
    int first = 1, seen = 0;
    while (p.s < p.end && *p.s != '}') {
        if (!first) {
            if (*p.s++ != ',')
                return -1;
            skip_ws(&p);
        }
        first = 0;
        const char *key;
        size_t klen;
        if (parse_string(&p, &key, &klen) != 0)
            return -1;
        skip_ws(&p);
        if (p.s >= p.end || *p.s++ != ':')
            return -1;
        skip_ws(&p);
        const char **dst;
        size_t *dlen;
        int bit;
        if (klen == 5 && memcmp(key, "topic", 5) == 0) {
            dst = &env->topic, dlen = &env->topic_len, bit = 1;
        } else if (klen == 5 && memcmp(key, "event", 5) == 0) {
            dst = &env->event, dlen = &env->event_len, bit = 2;
        } else if (klen == 4 && memcmp(key, "data", 4) == 0) {
            dst = &env->data, dlen = &env->data_len, bit = 4;
        } else {
            return -1;
        }
        if (seen & bit)
            return -1;
        seen |= bit;
        if (p.end - p.s >= 4 && memcmp(p.s, "null", 4) == 0) {
            p.s += 4;
            *dst = NULL;
            *dlen = 0;
        } else if (parse_string(&p, dst, dlen) != 0) {
            return -1;
        }
        skip_ws(&p);
    }
    if (p.s >= p.end)
        return -1;
    p.s++;
    skip_ws(&p);
    if (p.s != p.end || env->data == NULL)
        return -1;
    return 0;
}
