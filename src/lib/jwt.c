/*
 * JWT verification: strict base64url, a small strict JSON reader for the JOSE header, the claims
 * and JWKS documents, and the signature checks, each done by OpenSSL's EVP interface. The
 * token is peer input: its size is capped before anything is decoded, JSON nesting and token
 * counts are bounded, and the payload is parsed only after its signature verified.
 */
#include "lib/jwt.h"

#include "lib/base64.h"

#include "lib/budget.h"
#include "lib/config.h"
#include "lib/util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- names ---- */

static const char *const alg_names[SL_JWT_NALGS] = {
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
};

static const char *const err_names[SL_JWT_NERRORS] = {
    "ok",      "too_large",     "malformed", "bad_alg",  "unknown_key", "bad_signature",
    "expired", "not_yet_valid", "issuer",    "audience", "bad_claims",
};

const char *sl_jwt_alg_name(int alg)
{
    return alg >= 0 && alg < SL_JWT_NALGS ? alg_names[alg] : "?";
}

const char *sl_jwt_error_name(int err)
{
    return err >= 0 && err < SL_JWT_NERRORS ? err_names[err] : "?";
}

/* ---- base64url ---- */

long sl_b64url_decode(const char *in, size_t len, unsigned char *out)
{
    /* Strict: one encoding per byte string, so a signature or a kid cannot be varied without
     * changing its bytes. out holds 3 * len / 4 bytes (the caller's contract). */
    return sl_base64_decode_as(in, len, out, len * 3 / 4 + 1, 1, 1);
}

/* ---- a strict JSON reader ----
 * Tokens in document order; each records where its subtree ends, so a member is skipped in one
 * step. Strings are kept escaped and decoded on demand. */

enum { J_OBJ, J_ARR, J_STR, J_NUM, J_TRUE, J_FALSE, J_NULL };

typedef struct jtok {
    uint8_t type;
    uint32_t start, end; /* strings: between the quotes */
    uint32_t next;       /* index of the token after this subtree */
    uint32_t size;       /* members (objects: pairs) */
} jtok_t;

typedef struct jdoc {
    const char *s;
    size_t len, pos;
    jtok_t *t;
    uint32_t n, cap;
} jdoc_t;

#define JSON_MAX_DEPTH 16

static void skip_ws(jdoc_t *d)
{
    while (d->pos < d->len && (d->s[d->pos] == ' ' || d->s[d->pos] == '\t' ||
                               d->s[d->pos] == '\n' || d->s[d->pos] == '\r'))
        d->pos++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int parse_value(jdoc_t *d, int depth);

static int new_tok(jdoc_t *d, uint8_t type)
{
    if (d->n == d->cap)
        return -1;
    jtok_t *t = &d->t[d->n];
    memset(t, 0, sizeof(*t));
    t->type = type;
    t->start = (uint32_t)d->pos;
    return (int)d->n++;
}

static int parse_string(jdoc_t *d)
{
    int i = new_tok(d, J_STR);
    if (i < 0)
        return -1;
    d->pos++; /* the opening quote */
    d->t[i].start = (uint32_t)d->pos;
    while (d->pos < d->len) {
        unsigned char c = (unsigned char)d->s[d->pos];
        if (c == '"') {
            d->t[i].end = (uint32_t)d->pos++;
            d->t[i].next = d->n;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            if (++d->pos >= d->len)
                return -1;
            c = (unsigned char)d->s[d->pos];
            if (c == 'u') {
                if (d->pos + 4 >= d->len)
                    return -1;
                for (int k = 1; k <= 4; k++)
                    if (hexval(d->s[d->pos + k]) < 0)
                        return -1;
                d->pos += 4;
            } else if (strchr("\"\\/bfnrt", c) == NULL || c == '\0') {
                return -1;
            }
        }
        d->pos++;
    }
    return -1;
}

static int parse_number(jdoc_t *d)
{
    int i = new_tok(d, J_NUM);
    if (i < 0)
        return -1;
    size_t p = d->pos;
    if (p < d->len && d->s[p] == '-')
        p++;
    if (p >= d->len || d->s[p] < '0' || d->s[p] > '9')
        return -1;
    if (d->s[p] == '0')
        p++;
    else
        while (p < d->len && d->s[p] >= '0' && d->s[p] <= '9')
            p++;
    if (p < d->len && d->s[p] == '.') {
        p++;
        if (p >= d->len || d->s[p] < '0' || d->s[p] > '9')
            return -1;
        while (p < d->len && d->s[p] >= '0' && d->s[p] <= '9')
            p++;
    }
    if (p < d->len && (d->s[p] == 'e' || d->s[p] == 'E')) {
        p++;
        if (p < d->len && (d->s[p] == '+' || d->s[p] == '-'))
            p++;
        if (p >= d->len || d->s[p] < '0' || d->s[p] > '9')
            return -1;
        while (p < d->len && d->s[p] >= '0' && d->s[p] <= '9')
            p++;
    }
    d->pos = p;
    d->t[i].end = (uint32_t)p;
    d->t[i].next = d->n;
    return 0;
}

static int parse_word(jdoc_t *d, const char *w, uint8_t type)
{
    size_t n = strlen(w);
    if (d->len - d->pos < n || memcmp(d->s + d->pos, w, n) != 0)
        return -1;
    int i = new_tok(d, type);
    if (i < 0)
        return -1;
    d->pos += n;
    d->t[i].end = (uint32_t)d->pos;
    d->t[i].next = d->n;
    return 0;
}

static int parse_container(jdoc_t *d, int depth, int obj)
{
    if (depth >= JSON_MAX_DEPTH)
        return -1;
    int i = new_tok(d, obj ? J_OBJ : J_ARR);
    if (i < 0)
        return -1;
    char close = obj ? '}' : ']';
    d->pos++;
    skip_ws(d);
    if (d->pos < d->len && d->s[d->pos] == close) {
        d->pos++;
        d->t[i].next = d->n;
        return 0;
    }
    for (;;) {
        skip_ws(d);
        if (obj) {
            if (d->pos >= d->len || d->s[d->pos] != '"' || parse_string(d) != 0)
                return -1;
            skip_ws(d);
            if (d->pos >= d->len || d->s[d->pos] != ':')
                return -1;
            d->pos++;
        }
        if (parse_value(d, depth + 1) != 0)
            return -1;
        d->t[i].size++;
        skip_ws(d);
        if (d->pos >= d->len)
            return -1;
        if (d->s[d->pos] == ',') {
            d->pos++;
            continue;
        }
        if (d->s[d->pos] != close)
            return -1;
        d->pos++;
        d->t[i].end = (uint32_t)d->pos;
        d->t[i].next = d->n;
        return 0;
    }
}

static int parse_value(jdoc_t *d, int depth)
{
    skip_ws(d);
    if (d->pos >= d->len)
        return -1;
    switch (d->s[d->pos]) {
    case '{':
        return parse_container(d, depth, 1);
    case '[':
        return parse_container(d, depth, 0);
    case '"':
        return parse_string(d);
    case 't':
        return parse_word(d, "true", J_TRUE);
    case 'f':
        return parse_word(d, "false", J_FALSE);
    case 'n':
        return parse_word(d, "null", J_NULL);
    default:
        return parse_number(d);
    }
}

/* Parses a whole document that must be one object. d->t must hold cap tokens. */
static int json_parse(jdoc_t *d, const char *s, size_t len, jtok_t *t, uint32_t cap)
{
    if (len > UINT32_MAX / 2)
        return -1;
    *d = (jdoc_t){.s = s, .len = len, .t = t, .cap = cap};
    skip_ws(d);
    if (d->pos >= len || s[d->pos] != '{' || parse_value(d, 0) != 0)
        return -1;
    skip_ws(d);
    return d->pos == len ? 0 : -1;
}

/* Decodes string token i into out (cap bytes, NUL-terminated). Refuses \u0000 and lone
 * surrogates. Returns the length or -1. */
static long jstr(const jdoc_t *d, uint32_t i, char *out, size_t cap)
{
    const jtok_t *t = &d->t[i];
    if (t->type != J_STR)
        return -1;
    size_t o = 0;
    for (uint32_t p = t->start; p < t->end; p++) {
        uint32_t cp = (unsigned char)d->s[p];
        if (cp == '\\') {
            char e = d->s[++p];
            switch (e) {
            case 'b':
                cp = '\b';
                break;
            case 'f':
                cp = '\f';
                break;
            case 'n':
                cp = '\n';
                break;
            case 'r':
                cp = '\r';
                break;
            case 't':
                cp = '\t';
                break;
            case 'u':
                cp = 0;
                for (int k = 1; k <= 4; k++)
                    cp = cp << 4 | (uint32_t)hexval(d->s[p + k]);
                p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (p + 6 >= t->end || d->s[p + 1] != '\\' || d->s[p + 2] != 'u')
                        return -1;
                    uint32_t lo = 0;
                    for (int k = 3; k <= 6; k++)
                        lo = lo << 4 | (uint32_t)hexval(d->s[p + k]);
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        return -1;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return -1;
                }
                if (cp == 0)
                    return -1;
                break;
            default:
                cp = (unsigned char)e;
            }
            unsigned char u[4];
            size_t un;
            if (cp < 0x80) {
                u[0] = (unsigned char)cp;
                un = 1;
            } else if (cp < 0x800) {
                u[0] = (unsigned char)(0xC0 | cp >> 6);
                u[1] = (unsigned char)(0x80 | (cp & 0x3F));
                un = 2;
            } else if (cp < 0x10000) {
                u[0] = (unsigned char)(0xE0 | cp >> 12);
                u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                u[2] = (unsigned char)(0x80 | (cp & 0x3F));
                un = 3;
            } else {
                u[0] = (unsigned char)(0xF0 | cp >> 18);
                u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
                u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                u[3] = (unsigned char)(0x80 | (cp & 0x3F));
                un = 4;
            }
            if (o + un >= cap)
                return -1;
            memcpy(out + o, u, un);
            o += un;
            continue;
        }
        if (o + 1 >= cap)
            return -1;
        out[o++] = (char)cp;
    }
    out[o] = '\0';
    return (long)o;
}

/* 1 if string token i equals s (at most 255 bytes: member names, the configured claim). */
static int jstr_is(const jdoc_t *d, uint32_t i, const char *s)
{
    char buf[256];
    long n = jstr(d, i, buf, sizeof(buf));
    return n >= 0 && strcmp(buf, s) == 0;
}

/* Finds member key of object token obj. Returns its value's index, -1 if absent, -2 if the key
 * appears twice (ambiguous input is refused, never resolved one way or the other). */
static long jget(const jdoc_t *d, uint32_t obj, const char *key)
{
    if (d->t[obj].type != J_OBJ)
        return -1;
    long found = -1;
    uint32_t i = obj + 1;
    for (uint32_t m = 0; m < d->t[obj].size; m++) {
        uint32_t v = i + 1;
        if (jstr_is(d, i, key)) {
            if (found >= 0)
                return -2;
            found = v;
        }
        i = d->t[v].next;
    }
    return found;
}

/* A JSON number as whole seconds; fractions are dropped, out-of-range values refused. */
static int jnum_seconds(const jdoc_t *d, uint32_t i, int64_t *out)
{
    const jtok_t *t = &d->t[i];
    if (t->type != J_NUM || t->end - t->start >= 40)
        return -1;
    char buf[40];
    memcpy(buf, d->s + t->start, t->end - t->start);
    buf[t->end - t->start] = '\0';
    double v = strtod(buf, NULL);
    if (!isfinite(v) || v < -1e15 || v > 1e15)
        return -1;
    *out = (int64_t)floor(v);
    return 0;
}

/* ---- keys ---- */

enum { K_OCT, K_RSA, K_EC256, K_EC384, K_ED25519 };

struct sl_jwt_key {
    char *kid;      /* NULL: matches tokens without a kid, and any kid is not required */
    int kind;       /* K_* */
    int alg;        /* the JWK's "alg", or -1: any algorithm of the kind */
    EVP_PKEY *pkey; /* public keys */
    unsigned char *secret;
    size_t secret_len;
    /* HS256/384/512 contexts keyed once with the secret: a verification duplicates one
     * instead of fetching the algorithm and keying it again (most of an HMAC's cost). */
    EVP_MAC_CTX *mac[3];
};

static int alg_kind(int alg)
{
    switch (alg) {
    case SL_JWT_HS256:
    case SL_JWT_HS384:
    case SL_JWT_HS512:
        return K_OCT;
    case SL_JWT_ES256:
        return K_EC256;
    case SL_JWT_ES384:
        return K_EC384;
    case SL_JWT_EDDSA:
        return K_ED25519;
    default:
        return K_RSA;
    }
}

static const char *alg_digest(int alg)
{
    switch (alg) {
    case SL_JWT_HS256:
    case SL_JWT_RS256:
    case SL_JWT_PS256:
    case SL_JWT_ES256:
        return "SHA256";
    case SL_JWT_HS384:
    case SL_JWT_RS384:
    case SL_JWT_PS384:
    case SL_JWT_ES384:
        return "SHA384";
    case SL_JWT_EDDSA:
        return NULL;
    default:
        return "SHA512";
    }
}

static int alg_from_name(const char *s)
{
    for (int a = 0; a < SL_JWT_NALGS; a++)
        if (strcmp(s, alg_names[a]) == 0)
            return a;
    return -1;
}

sl_jwt_keyset_t *sl_jwt_keyset_new(void)
{
    sl_jwt_keyset_t *ks = sl_calloc(1, sizeof(*ks));
    ks->keys = sl_calloc(SL_JWT_MAX_KEYS, sizeof(sl_jwt_key_t));
    return ks;
}

void sl_jwt_keyset_free(sl_jwt_keyset_t *ks)
{
    if (ks == NULL)
        return;
    for (size_t i = 0; i < ks->n; i++) {
        sl_jwt_key_t *k = &ks->keys[i];
        free(k->kid);
        EVP_PKEY_free(k->pkey);
        for (int m = 0; m < 3; m++)
            EVP_MAC_CTX_free(k->mac[m]);
        if (k->secret != NULL)
            OPENSSL_clear_free(k->secret, k->secret_len);
    }
    free(ks->keys);
    free(ks);
}

static sl_jwt_key_t *add_key(sl_jwt_keyset_t *ks, const char *kid, const char **why)
{
    if (ks->n == SL_JWT_MAX_KEYS) {
        *why = "too many keys (at most 64)";
        return NULL;
    }
    sl_jwt_key_t *k = &ks->keys[ks->n];
    memset(k, 0, sizeof(*k));
    k->alg = -1;
    k->kid = kid != NULL ? sl_strdup(kid) : NULL;
    return k;
}

int sl_jwt_keyset_add_secret(sl_jwt_keyset_t *ks, const char *kid, const void *secret, size_t len,
                             const char **why)
{
    /* RFC 7518 §3.2: a key at least as long as the hash; 32 bytes is HS256's floor. */
    if (len < 32) {
        *why = "HMAC secret shorter than 32 bytes";
        return -EINVAL;
    }
    sl_jwt_key_t *k = add_key(ks, kid, why);
    if (k == NULL)
        return -EINVAL;
    k->kind = K_OCT;
    k->secret = OPENSSL_malloc(len);
    if (k->secret == NULL)
        abort();
    memcpy(k->secret, secret, len);
    k->secret_len = len;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    for (int m = 0; mac != NULL && m < 3; m++) {
        OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(
                                   OSSL_MAC_PARAM_DIGEST, (char *)alg_digest(SL_JWT_HS256 + m), 0),
                               OSSL_PARAM_construct_end()};
        k->mac[m] = EVP_MAC_CTX_new(mac);
        if (k->mac[m] != NULL && EVP_MAC_init(k->mac[m], secret, len, params) != 1) {
            EVP_MAC_CTX_free(k->mac[m]);
            k->mac[m] = NULL;
        }
    }
    EVP_MAC_free(mac);
    ks->n++;
    return 0;
}

/* Classifies a public key; refuses what no JWS algorithm may use. */
static int pkey_kind(EVP_PKEY *pk, const char **why)
{
    if (EVP_PKEY_is_a(pk, "RSA")) {
        if (EVP_PKEY_get_bits(pk) < 2048) {
            *why = "RSA key shorter than 2048 bits";
            return -1;
        }
        return K_RSA;
    }
    if (EVP_PKEY_is_a(pk, "ED25519"))
        return K_ED25519;
    if (EVP_PKEY_is_a(pk, "EC")) {
        char group[64];
        size_t gl = 0;
        if (EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                           &gl) == 1) {
            if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0)
                return K_EC256;
            if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
                return K_EC384;
        }
        *why = "EC key on a curve other than P-256 or P-384";
        return -1;
    }
    *why = "unsupported public key type";
    return -1;
}

static int add_pkey(sl_jwt_keyset_t *ks, const char *kid, EVP_PKEY *pk, int alg, const char **why)
{
    int kind = pkey_kind(pk, why);
    if (kind < 0)
        goto out_free_pkey;
    if (alg >= 0 && alg_kind(alg) != kind) {
        *why = "the key's \"alg\" does not fit its type";
        goto out_free_pkey;
    }
    sl_jwt_key_t *k = add_key(ks, kid, why);
    if (k == NULL)
        goto out_free_pkey;
    k->kind = kind;
    k->alg = alg;
    k->pkey = pk;
    ks->n++;
    return 0;
out_free_pkey:
    EVP_PKEY_free(pk);
    return -EINVAL;
}

int sl_jwt_keyset_add_pem(sl_jwt_keyset_t *ks, const char *kid, const char *pem, size_t len,
                          const char **why)
{
    if (len > INT32_MAX) {
        *why = "PEM too large";
        return -EINVAL;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL)
        abort();
    EVP_PKEY *pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (pk == NULL) {
        *why = "no PEM public key (BEGIN PUBLIC KEY) in the file";
        return -EINVAL;
    }
    return add_pkey(ks, kid, pk, -1, why);
}

/* Decodes base64url member `name` of JWK object o into a fresh malloc'ed buffer. */
static unsigned char *jwk_bytes(const jdoc_t *d, uint32_t o, const char *name, size_t *n)
{
    long i = jget(d, o, name);
    if (i < 0 || d->t[i].type != J_STR)
        return NULL;
    const jtok_t *t = &d->t[i];
    size_t len = t->end - t->start;
    unsigned char *out = sl_malloc(len * 3 / 4 + 1);
    long r = sl_b64url_decode(d->s + t->start, len, out);
    if (r <= 0) {
        free(out);
        return NULL;
    }
    *n = (size_t)r;
    return out;
}

static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pk = NULL;
    if (params != NULL && ctx != NULL && EVP_PKEY_fromdata_init(ctx) == 1)
        if (EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) != 1)
            pk = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pk;
}

static EVP_PKEY *jwk_rsa(const jdoc_t *d, uint32_t o)
{
    size_t nl = 0, el = 0;
    unsigned char *n = jwk_bytes(d, o, "n", &nl), *e = jwk_bytes(d, o, "e", &el);
    EVP_PKEY *pk = NULL;
    BIGNUM *bn = NULL, *be = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    if (n == NULL || e == NULL)
        goto out_free;
    bn = BN_bin2bn(n, (int)nl, NULL);
    be = BN_bin2bn(e, (int)el, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (bn == NULL || be == NULL || bld == NULL ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) != 1)
        goto out_free;
    pk = pkey_fromdata("RSA", bld);
out_free:
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return pk;
}

static EVP_PKEY *jwk_ec(const jdoc_t *d, uint32_t o, const char **why)
{
    long c = jget(d, o, "crv");
    const char *group;
    size_t flen;
    if (c >= 0 && jstr_is(d, (uint32_t)c, "P-256")) {
        group = "prime256v1";
        flen = 32;
    } else if (c >= 0 && jstr_is(d, (uint32_t)c, "P-384")) {
        group = "secp384r1";
        flen = 48;
    } else {
        *why = "EC key with a \"crv\" other than P-256 or P-384";
        return NULL;
    }
    size_t xl = 0, yl = 0;
    unsigned char *x = jwk_bytes(d, o, "x", &xl), *y = jwk_bytes(d, o, "y", &yl);
    EVP_PKEY *pk = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    unsigned char pt[1 + 2 * 48];
    if (x == NULL || y == NULL || xl != flen || yl != flen)
        goto out_free;
    /* The uncompressed point 04 || x || y; OpenSSL refuses a point not on the curve. */
    pt[0] = 0x04;
    memcpy(pt + 1, x, flen);
    memcpy(pt + 1 + flen, y, flen);
    bld = OSSL_PARAM_BLD_new();
    if (bld == NULL ||
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, 1 + 2 * flen) != 1)
        goto out_free;
    pk = pkey_fromdata("EC", bld);
out_free:
    OSSL_PARAM_BLD_free(bld);
    free(x);
    free(y);
    return pk;
}

static int add_jwk(sl_jwt_keyset_t *ks, const jdoc_t *d, uint32_t o, const char **why)
{
    char kid[256], kty[16], buf[16];
    long i;
    if (d->t[o].type != J_OBJ) {
        *why = "a key is not a JSON object";
        return -EINVAL;
    }
    if ((i = jget(d, o, "use")) >= 0 && !jstr_is(d, (uint32_t)i, "sig"))
        return 0; /* an encryption key: not ours to use, and not an error */
    if ((i = jget(d, o, "kty")) < 0 || jstr(d, (uint32_t)i, kty, sizeof(kty)) < 0) {
        *why = "a key without \"kty\"";
        return -EINVAL;
    }
    const char *kidp = NULL;
    if ((i = jget(d, o, "kid")) >= 0) {
        if (jstr(d, (uint32_t)i, kid, sizeof(kid)) < 0) {
            *why = "a \"kid\" that is not a string of at most 255 bytes";
            return -EINVAL;
        }
        kidp = kid;
    } else if (i == -2) {
        *why = "a key with two \"kid\"";
        return -EINVAL;
    }
    int alg = -1;
    if ((i = jget(d, o, "alg")) >= 0) {
        if (jstr(d, (uint32_t)i, buf, sizeof(buf)) < 0 || (alg = alg_from_name(buf)) < 0) {
            *why = "a key with an unknown \"alg\"";
            return -EINVAL;
        }
    }
    if (strcmp(kty, "oct") == 0) {
        size_t n = 0;
        unsigned char *k = jwk_bytes(d, o, "k", &n);
        if (k == NULL) {
            *why = "an oct key without a valid \"k\"";
            return -EINVAL;
        }
        if (alg >= 0 && alg_kind(alg) != K_OCT) {
            OPENSSL_cleanse(k, n);
            free(k);
            *why = "the key's \"alg\" does not fit its type";
            return -EINVAL;
        }
        int r = sl_jwt_keyset_add_secret(ks, kidp, k, n, why);
        OPENSSL_cleanse(k, n);
        free(k);
        if (r == 0)
            ks->keys[ks->n - 1].alg = alg;
        return r;
    }
    EVP_PKEY *pk = NULL;
    if (strcmp(kty, "RSA") == 0) {
        pk = jwk_rsa(d, o);
    } else if (strcmp(kty, "EC") == 0) {
        pk = jwk_ec(d, o, why);
    } else if (strcmp(kty, "OKP") == 0) {
        size_t xl = 0;
        unsigned char *x = NULL;
        if ((i = jget(d, o, "crv")) < 0 || !jstr_is(d, (uint32_t)i, "Ed25519")) {
            *why = "an OKP key with a \"crv\" other than Ed25519";
            return -EINVAL;
        }
        if ((x = jwk_bytes(d, o, "x", &xl)) != NULL && xl == 32)
            pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, xl);
        free(x);
    } else {
        *why = "a key of an unknown \"kty\"";
        return -EINVAL;
    }
    if (pk == NULL) {
        if (*why == NULL)
            *why = "a key whose parameters are missing or invalid";
        return -EINVAL;
    }
    return add_pkey(ks, kidp, pk, alg, why);
}

int sl_jwt_keyset_add_jwks(sl_jwt_keyset_t *ks, const char *json, size_t len, const char **why)
{
    *why = NULL;
    /* Every token takes at least one byte (two for most), so len + 1 tokens always suffice. */
    if (len > (1u << 20)) {
        *why = "JWKS document over 1 MiB";
        return -EINVAL;
    }
    uint32_t cap = (uint32_t)len + 1;
    jtok_t *t = sl_malloc(cap * sizeof(*t));
    jdoc_t d;
    int r = -EINVAL;
    if (json_parse(&d, json, len, t, cap) != 0) {
        *why = "not a JSON object";
        goto out_free_tokens;
    }
    long keys = jget(&d, 0, "keys");
    if (keys < 0 || d.t[keys].type != J_ARR) {
        *why = "no \"keys\" array";
        goto out_free_tokens;
    }
    size_t before = ks->n;
    uint32_t i = (uint32_t)keys + 1;
    for (uint32_t m = 0; m < d.t[keys].size; m++) {
        if (add_jwk(ks, &d, i, why) != 0)
            goto out_free_tokens;
        i = d.t[i].next;
    }
    if (ks->n == before) {
        *why = "no signing key in \"keys\"";
        goto out_free_tokens;
    }
    r = 0;
out_free_tokens:
    free(t);
    return r;
}

int sl_jwt_read_file(const char *path, size_t max, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    int r = 0;
    if (fstat(fd, &st) != 0) {
        r = -errno;
        goto out_close;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
        r = -EFBIG;
        goto out_close;
    }
    char *buf = sl_malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
out_close:
    close(fd);
    return r;
}

/* ---- signatures ---- */

static int verify_hmac(const sl_jwt_key_t *k, int alg, const unsigned char *in, size_t inlen,
                       const unsigned char *sig, size_t siglen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t maclen = 0;
    EVP_MAC_CTX *ctx = k->mac[alg - SL_JWT_HS256];
    if (ctx != NULL) {
        EVP_MAC_CTX *c = EVP_MAC_CTX_dup(ctx);
        int ok = c != NULL && EVP_MAC_update(c, in, inlen) == 1 &&
                 EVP_MAC_final(c, mac, &maclen, sizeof(mac)) == 1;
        EVP_MAC_CTX_free(c);
        if (!ok)
            return 0;
    } else if (EVP_Q_mac(NULL, "HMAC", NULL, alg_digest(alg), NULL, k->secret, k->secret_len, in,
                         inlen, mac, sizeof(mac), &maclen) == NULL) {
        return 0;
    }
    return maclen == siglen && CRYPTO_memcmp(mac, sig, siglen) == 0;
}

/* JOSE sends an ECDSA signature as r || s of fixed width; EVP wants DER. */
static unsigned char *ecdsa_der(const unsigned char *sig, size_t siglen, size_t *derlen)
{
    size_t half = siglen / 2;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)half, NULL), *s = BN_bin2bn(sig + half, (int)half, NULL);
    unsigned char *der = NULL;
    if (es == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(es, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return NULL;
    }
    int n = i2d_ECDSA_SIG(es, &der);
    ECDSA_SIG_free(es);
    if (n <= 0)
        return NULL;
    *derlen = (size_t)n;
    return der;
}

static int verify_pkey(const sl_jwt_key_t *k, int alg, const unsigned char *in, size_t inlen,
                       const unsigned char *sig, size_t siglen)
{
    unsigned char *der = NULL;
    if (alg == SL_JWT_ES256 || alg == SL_JWT_ES384) {
        if (siglen != (alg == SL_JWT_ES256 ? 64u : 96u))
            return 0;
        if ((der = ecdsa_der(sig, siglen, &siglen)) == NULL)
            return 0;
        sig = der;
    } else if (alg == SL_JWT_EDDSA && siglen != 64) {
        return 0;
    }
    int ok = 0;
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    const char *md = alg_digest(alg);
    if (mctx == NULL || EVP_DigestVerifyInit_ex(mctx, &pctx, md, NULL, NULL, k->pkey, NULL) != 1)
        goto out_free;
    if (alg >= SL_JWT_PS256 && alg <= SL_JWT_PS512) {
        /* RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash. */
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
            EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1)
            goto out_free;
    } else if (k->kind == K_RSA) {
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1)
            goto out_free;
    }
    ok = EVP_DigestVerify(mctx, sig, siglen, in, inlen) == 1;
out_free:
    EVP_MD_CTX_free(mctx);
    OPENSSL_free(der);
    return ok;
}

/* ---- tokens ---- */

#define HEADER_TOKENS 64

static int check_aud(const jdoc_t *d, long aud, const char *want)
{
    if (aud < 0)
        return 0;
    char buf[512];
    if (d->t[aud].type == J_STR)
        return jstr(d, (uint32_t)aud, buf, sizeof(buf)) >= 0 && strcmp(buf, want) == 0;
    if (d->t[aud].type != J_ARR)
        return 0;
    uint32_t i = (uint32_t)aud + 1;
    for (uint32_t m = 0; m < d->t[aud].size; m++) {
        if (jstr(d, i, buf, sizeof(buf)) >= 0 && strcmp(buf, want) == 0)
            return 1;
        i = d->t[i].next;
    }
    return 0;
}

/* Copies the string array at token a (or nothing when a < 0) into out as packed strings. */
static int pack_globs(const jdoc_t *d, long a, char *out, size_t *used, size_t cap, uint16_t *n)
{
    *n = 0;
    if (a < 0)
        return 0;
    if (d->t[a].type != J_ARR || d->t[a].size > UINT16_MAX)
        return -1;
    uint32_t i = (uint32_t)a + 1;
    for (uint32_t m = 0; m < d->t[a].size; m++) {
        long l = jstr(d, i, out + *used, cap - *used);
        if (l <= 0)
            return -1;
        *used += (size_t)l + 1;
        (*n)++;
        i = d->t[i].next;
    }
    return 0;
}

static int read_claims(const jdoc_t *d, const sl_jwt_opts_t *o, int64_t now, sl_jwt_claims_t **out)
{
    long exp = jget(d, 0, "exp"), nbf = jget(d, 0, "nbf"), iss = jget(d, 0, "iss");
    long aud = jget(d, 0, "aud"), sub = jget(d, 0, "sub");
    long cl = jget(d, 0, o->claim != NULL ? o->claim : "sluice");
    if (exp == -2 || nbf == -2 || iss == -2 || aud == -2 || sub == -2 || cl == -2)
        return SL_JWT_E_CLAIMS;
    int64_t e = 0, nb = 0;
    if ((exp >= 0 && jnum_seconds(d, (uint32_t)exp, &e) != 0) ||
        (nbf >= 0 && jnum_seconds(d, (uint32_t)nbf, &nb) != 0))
        return SL_JWT_E_CLAIMS;
    if (exp >= 0 && now > e + o->leeway_s)
        return SL_JWT_E_EXPIRED;
    if (nbf >= 0 && now + o->leeway_s < nb)
        return SL_JWT_E_NOT_YET;
    if (o->issuer != NULL) {
        char buf[512];
        if (iss < 0 || jstr(d, (uint32_t)iss, buf, sizeof(buf)) < 0 || strcmp(buf, o->issuer) != 0)
            return SL_JWT_E_ISSUER;
    }
    if (o->audience != NULL && !check_aud(d, aud, o->audience))
        return SL_JWT_E_AUDIENCE;
    long pub = -1, subs = -1, admin = -1;
    if (cl >= 0) {
        if (d->t[cl].type != J_OBJ)
            return SL_JWT_E_CLAIMS;
        pub = jget(d, (uint32_t)cl, "pub");
        subs = jget(d, (uint32_t)cl, "sub");
        admin = jget(d, (uint32_t)cl, "admin");
        if (pub == -2 || subs == -2 || admin == -2)
            return SL_JWT_E_CLAIMS;
        if (admin >= 0 && d->t[admin].type != J_TRUE && d->t[admin].type != J_FALSE)
            return SL_JWT_E_CLAIMS;
    }
    /* Decoded strings are never longer than the token text they come from. */
    size_t cap = d->len + 3;
    size_t size = sizeof(sl_jwt_claims_t) + cap;
    sl_jwt_claims_t *c = sl_balloc(size);
    memset(c, 0, sizeof(*c));
    c->size = size;
    c->exp = exp >= 0 ? e : 0;
    c->admin = admin >= 0 && d->t[admin].type == J_TRUE;
    size_t used = 0;
    c->subject = c->data;
    if (sub >= 0) {
        long l = jstr(d, (uint32_t)sub, c->data, cap);
        if (l < 0)
            goto out_bad;
        used = (size_t)l + 1;
    } else {
        c->data[0] = '\0';
        used = 1;
    }
    c->pub = c->data + used;
    if (pack_globs(d, pub, c->data, &used, cap, &c->npub) != 0)
        goto out_bad;
    c->subs = c->data + used;
    if (pack_globs(d, subs, c->data, &used, cap, &c->nsub) != 0)
        goto out_bad;
    *out = c;
    return 0;
out_bad:
    sl_bfree(c, size);
    return SL_JWT_E_CLAIMS;
}

int sl_jwt_verify(const sl_jwt_keyset_t *ks, const sl_jwt_opts_t *o, const char *tok, size_t len,
                  int64_t now, sl_jwt_claims_t **out)
{
    *out = NULL;
    if (len > o->max_bytes)
        return SL_JWT_E_TOO_LARGE;
    const char *d1 = memchr(tok, '.', len);
    if (d1 == NULL)
        return SL_JWT_E_MALFORMED;
    const char *d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok));
    if (d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - tok)) != NULL)
        return SL_JWT_E_MALFORMED;
    size_t hl = (size_t)(d1 - tok), pl = (size_t)(d2 - d1 - 1), sl = len - (size_t)(d2 + 1 - tok);
    if (hl == 0 || pl == 0)
        return SL_JWT_E_MALFORMED;
    /* One buffer for the three decoded parts; each is at most 3/4 of its text. */
    unsigned char *buf = sl_malloc(len + 3);
    unsigned char *h = buf, *p = h + hl, *s = p + pl;
    jtok_t *t = NULL;
    int r = SL_JWT_E_MALFORMED;
    long hn = sl_b64url_decode(tok, hl, h), pn = sl_b64url_decode(d1 + 1, pl, p);
    long sn = sl_b64url_decode(d2 + 1, sl, s);
    if (hn <= 0 || pn <= 0 || sn < 0)
        goto out_free;
    jdoc_t hd;
    jtok_t ht[HEADER_TOKENS];
    if (json_parse(&hd, (const char *)h, (size_t)hn, ht, HEADER_TOKENS) != 0)
        goto out_free;
    char name[16], kid[256];
    long ai = jget(&hd, 0, "alg"), ki = jget(&hd, 0, "kid");
    r = SL_JWT_E_ALG;
    if (ai < 0 || jstr(&hd, (uint32_t)ai, name, sizeof(name)) < 0)
        goto out_free;
    int alg = alg_from_name(name); /* "none" (in any case) is simply not a name we know */
    /* We implement no header extension, so any "crit" must be refused (RFC 7515 §4.1.11). */
    if (alg < 0 || jget(&hd, 0, "crit") != -1)
        goto out_free;
    r = SL_JWT_E_MALFORMED;
    if (ki == -2 || (ki >= 0 && jstr(&hd, (uint32_t)ki, kid, sizeof(kid)) < 0))
        goto out_free;
    /* Keys: the kid's, when the token names one; otherwise every key. Only keys of the
     * algorithm's type are ever tried, so an RSA public key is never an HMAC secret. */
    int tried = 0, ok = 0;
    const unsigned char *in = (const unsigned char *)tok;
    size_t inlen = (size_t)(d2 - tok);
    for (size_t i = 0; i < ks->n && !ok; i++) {
        const sl_jwt_key_t *k = &ks->keys[i];
        if (ki >= 0 && (k->kid == NULL || strcmp(k->kid, kid) != 0))
            continue;
        if (k->kind != alg_kind(alg) || (k->alg >= 0 && k->alg != alg))
            continue;
        tried++;
        if (k->kind == K_OCT)
            ok = verify_hmac(k, alg, in, inlen, s, (size_t)sn);
        else
            ok = verify_pkey(k, alg, in, inlen, s, (size_t)sn);
    }
    if (!ok) {
        r = tried == 0 ? SL_JWT_E_NO_KEY : SL_JWT_E_SIGNATURE;
        goto out_free;
    }
    /* The payload is the signer's: parsed only now, with a token allowance from its size. */
    uint32_t cap = (uint32_t)pn + 1;
    t = sl_malloc(cap * sizeof(*t));
    jdoc_t pd;
    r = SL_JWT_E_CLAIMS;
    if (json_parse(&pd, (const char *)p, (size_t)pn, t, cap) != 0)
        goto out_free;
    r = read_claims(&pd, o, now, out);
out_free:
    free(t);
    free(buf);
    return r;
}

long sl_jwt_json_string(const char *json, size_t len, const char *key, char *out, size_t cap)
{
    if (len > (1u << 24))
        return -1;
    uint32_t tcap = (uint32_t)len + 1;
    jtok_t *t = sl_malloc(tcap * sizeof(*t));
    jdoc_t d;
    long r = -1, i;
    if (json_parse(&d, json, len, t, tcap) == 0 && (i = jget(&d, 0, key)) >= 0)
        r = jstr(&d, (uint32_t)i, out, cap);
    free(t);
    return r;
}

void sl_jwt_claims_free(sl_jwt_claims_t *c)
{
    if (c != NULL)
        sl_bfree(c, c->size);
}

int sl_jwt_globs_match(const char *list, uint16_t n, const char *name)
{
    for (uint16_t i = 0; i < n; i++) {
        if (sl_glob_match(list, name))
            return 1;
        list += strlen(list) + 1;
    }
    return 0;
}
