/*
 * JSON Web Tokens (RFC 7519) in JWS compact form (RFC 7515), verified with OpenSSL 3 EVP:
 * HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 and EdDSA (Ed25519, RFC 8037). This
 * module parses and verifies bytes a peer sent and loads key files; it makes no libuv calls and
 * does no cryptography of its own. Keys live in a key set that the server swaps whole on
 * reload, so a verification never sees half a set.
 */
#ifndef SL_JWT_H
#define SL_JWT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Algorithms, in the order of the "alg" names they stand for (sl_jwt_alg_name). */
typedef enum {
    SL_JWT_HS256 = 0,
    SL_JWT_HS384,
    SL_JWT_HS512,
    SL_JWT_RS256,
    SL_JWT_RS384,
    SL_JWT_RS512,
    SL_JWT_PS256,
    SL_JWT_PS384,
    SL_JWT_PS512,
    SL_JWT_ES256,
    SL_JWT_ES384,
    SL_JWT_EDDSA,
    SL_JWT_NALGS,
} sl_jwt_alg_t;

/* Why a token was refused; sl_jwt_error_name() gives the metrics label. */
typedef enum {
    SL_JWT_OK = 0,
    SL_JWT_E_TOO_LARGE, /* over the size cap, checked before anything else */
    SL_JWT_E_MALFORMED, /* not three strict base64url parts of JSON objects */
    SL_JWT_E_ALG,       /* "none", unknown, or "crit" we do not understand */
    SL_JWT_E_NO_KEY,    /* no key with this kid, or none of the algorithm's type */
    SL_JWT_E_SIGNATURE, /* no key verifies the signature */
    SL_JWT_E_EXPIRED,   /* exp + leeway is past */
    SL_JWT_E_NOT_YET,   /* nbf - leeway is ahead */
    SL_JWT_E_ISSUER,    /* iss differs from the configured issuer */
    SL_JWT_E_AUDIENCE,  /* aud does not name the configured audience */
    SL_JWT_E_CLAIMS,    /* a registered claim or the sluice claim has the wrong shape */
    SL_JWT_NERRORS,
} sl_jwt_err_t;

const char *sl_jwt_error_name(int err);
const char *sl_jwt_alg_name(int alg);

typedef struct sl_jwt_key sl_jwt_key_t;

/* A set of verification keys. Owned by whoever loaded it; freed with sl_jwt_keyset_free(). */
typedef struct sl_jwt_keyset {
    sl_jwt_key_t *keys;
    size_t n;
} sl_jwt_keyset_t;

#define SL_JWT_MAX_KEYS 64

sl_jwt_keyset_t *sl_jwt_keyset_new(void);
void sl_jwt_keyset_free(sl_jwt_keyset_t *ks);

/* Adds an HMAC secret (at least 32 bytes). kid may be NULL. Returns 0 or a negative code with a
 * reason in *why. */
int sl_jwt_keyset_add_secret(sl_jwt_keyset_t *ks, const char *kid, const void *secret, size_t len,
                             const char **why);
/* Adds a PEM public key (RSA of 2048 bits or more, EC P-256/P-384, Ed25519). */
int sl_jwt_keyset_add_pem(sl_jwt_keyset_t *ks, const char *kid, const char *pem, size_t len,
                          const char **why);
/* Adds every key of a JWKS document ({"keys":[…]}: kty oct, RSA, EC, OKP/Ed25519). A key that
 * cannot be used refuses the whole document, so a typo never silently drops a key. */
int sl_jwt_keyset_add_jwks(sl_jwt_keyset_t *ks, const char *json, size_t len, const char **why);

/* Loads a file into *out (NUL-terminated, malloc'ed), at most max bytes. Returns 0 or a
 * negative errno. */
int sl_jwt_read_file(const char *path, size_t max, char **out, size_t *len);

/* What verification checks beyond the signature. */
typedef struct sl_jwt_opts {
    size_t max_bytes;   /* a longer token is refused unread */
    int64_t leeway_s;   /* allowed clock skew for exp and nbf */
    const char *issuer; /* NULL: iss not checked */
    const char *audience;
    const char *claim; /* name of the sluice claim; NULL: "sluice" */
} sl_jwt_opts_t;

/* What a verified token grants. One allocation charged to the memory budget (the token it came
 * from was capped, so this is too); freed with sl_jwt_claims_free(). Glob lists are packed
 * NUL-terminated strings, one after the other. */
typedef struct sl_jwt_claims {
    size_t size; /* bytes of this allocation */
    int64_t exp; /* 0: none */
    int admin;
    uint16_t npub, nsub;
    const char *subject; /* "sub", or "" */
    const char *pub;     /* npub globs */
    const char *subs;    /* nsub globs */
    char data[];
} sl_jwt_claims_t;

/* Verifies a compact token of len bytes at wall-clock time now_s (seconds). On success *out
 * holds the claims (the caller owns them) and 0 is returned; otherwise an sl_jwt_err_t. Safe to
 * call with any bytes. */
int sl_jwt_verify(const sl_jwt_keyset_t *ks, const sl_jwt_opts_t *opts, const char *tok, size_t len,
                  int64_t now_s, sl_jwt_claims_t **out);

void sl_jwt_claims_free(sl_jwt_claims_t *c);

/* 1 if one of the n packed globs in list matches name. */
int sl_jwt_globs_match(const char *list, uint16_t n, const char *name);

/* Reads the string member `key` of the JSON object text (strictly parsed, the member present
 * once) into out (cap bytes, NUL-terminated, escapes decoded). Returns its length, or -1. */
long sl_jwt_json_string(const char *json, size_t len, const char *key, char *out, size_t cap);

/* Strict base64url (RFC 4648 §5, no padding, no whitespace, unused bits zero). out must hold
 * len * 3 / 4 bytes. Returns the decoded length or -1. */
long sl_b64url_decode(const char *in, size_t len, unsigned char *out);

#endif
