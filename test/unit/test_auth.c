/*
 * Unit tests of the authorization decisions: where a token is found, topic policies from
 * [topic] sections with and without [auth], claims against globs, the admin check, the
 * WWW-Authenticate challenge, the [auth] configuration keys, and a key reload that fails
 * leaving the old keys in force.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/auth.h"
#include "lib/budget.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void load(sl_config_t *c, const char *text)
{
    sl_config_init(c);
    char errs[1024] = "";
    FILE *f = fmemopen(errs, sizeof(errs), "w");
    int n = sl_config_load_string(c, "t.ini", text, f);
    fclose(f);
    if (n != 0)
        fail_msg("config errors: %s", errs);
}

static void test_find_token(void **state)
{
    (void)state;
    sl_config_t c;
    load(&c, "[auth]\nadmin_token_file = /x\ncookie = tok\n");
    const char *h = "bearer  abc.def.ghi ";
    sl_auth_cred_t r = sl_auth_find(&c, h, strlen(h), "q.q.q", 5, "tok=c.c.c", 9);
    assert_int_equal(r.len, 11);
    assert_memory_equal(r.token, "abc.def.ghi", 11);
    assert_string_equal(r.where, "header");
    /* Basic credentials are not a token: the query parameter is used */
    h = "Basic dXNlcjpwYXNz";
    r = sl_auth_find(&c, h, strlen(h), "q.q.q", 5, NULL, 0);
    assert_string_equal(r.where, "query");
    const char *ck = "a=1; tok=\"c.c.c\" ; tokx=2";
    r = sl_auth_find(&c, NULL, 0, NULL, 0, ck, strlen(ck));
    assert_string_equal(r.where, "cookie");
    assert_int_equal(r.len, 5);
    assert_memory_equal(r.token, "c.c.c", 5);
    ck = "xtok=1; tokx=2";
    r = sl_auth_find(&c, NULL, 0, NULL, 0, ck, strlen(ck));
    assert_null(r.token);
    sl_config_dispose(&c);
    /* without a cookie name, cookies are never read */
    load(&c, "[auth]\nadmin_token_file = /x\n");
    r = sl_auth_find(&c, NULL, 0, NULL, 0, "tok=c.c.c", 9);
    assert_null(r.token);
    sl_config_dispose(&c);
}

static void test_policies(void **state)
{
    (void)state;
    sl_config_t c;
    int pub, sub;
    load(&c, "[topic \"*\"]\nmax_messages = 5\n");
    sl_config_topic_policy(&c, "a", &pub, &sub);
    assert_int_equal(pub, SL_POLICY_ANYONE);
    assert_int_equal(sub, SL_POLICY_ANYONE);
    sl_config_dispose(&c);
    load(&c, "[auth]\nadmin_token_file = /x\n"
             "[topic \"public/*\"]\npublish = anyone\nsubscribe = anyone\n"
             "[topic \"public/locked\"]\npublish = token\n");
    sl_config_topic_policy(&c, "a", &pub, &sub);
    assert_int_equal(pub, SL_POLICY_TOKEN);
    assert_int_equal(sub, SL_POLICY_TOKEN);
    sl_config_topic_policy(&c, "public/x", &pub, &sub);
    assert_int_equal(pub, SL_POLICY_ANYONE);
    assert_int_equal(sub, SL_POLICY_ANYONE);
    sl_config_topic_policy(&c, "public/locked", &pub, &sub);
    assert_int_equal(pub, SL_POLICY_TOKEN);
    assert_int_equal(sub, SL_POLICY_ANYONE);
    sl_topic_conf_t tc;
    sl_config_topic(&c, "public/locked", &tc);
    assert_int_equal(tc.publish_auth, SL_POLICY_TOKEN);
    assert_int_equal(tc.subscribe_auth, SL_POLICY_ANYONE);

    /* claims against globs */
    size_t sz = sizeof(sl_jwt_claims_t) + 64;
    sl_jwt_claims_t *cl = calloc(1, sz);
    memcpy(cl->data, "bob\0chat/*\0chat/*\0news\0", 24);
    cl->subject = cl->data;
    cl->pub = cl->data + 4;
    cl->npub = 1;
    cl->subs = cl->data + 11;
    cl->nsub = 2;
    sl_verdict_t v = sl_auth_topic(&c, NULL, SL_AUTH_SUBSCRIBE, "chat/1");
    assert_int_equal(v.status, 401);
    assert_int_equal(v.reason, SL_AUTH_R_MISSING);
    assert_int_equal(sl_auth_topic(&c, NULL, SL_AUTH_SUBSCRIBE, "public/x").status, 0);
    assert_int_equal(sl_auth_topic(&c, cl, SL_AUTH_SUBSCRIBE, "chat/a/b").status, 0);
    assert_int_equal(sl_auth_topic(&c, cl, SL_AUTH_SUBSCRIBE, "news").status, 0);
    v = sl_auth_topic(&c, cl, SL_AUTH_PUBLISH, "news");
    assert_int_equal(v.status, 403);
    assert_int_equal(v.reason, SL_AUTH_R_SCOPE);
    assert_int_equal(sl_auth_topic(&c, cl, SL_AUTH_PUBLISH, "public/locked").status, 403);
    assert_int_equal(sl_auth_topic(&c, cl, SL_AUTH_SUBSCRIBE, "newsroom").status, 403);

    /* admin */
    sl_auth_t a = {
        .cfg = &c, .admin_token = strdup("0123456789abcdef0123456789abcdef"), .admin_len = 32};
    sl_auth_cred_t none = {NULL, 0, NULL}, adm = {"0123456789abcdef0123456789abcdef", 32, "h"};
    sl_auth_cred_t near = {"0123456789abcdef0123456789abcdeX", 32, "h"};
    assert_int_equal(sl_auth_admin(&a, &none, NULL).status, 401);
    assert_int_equal(sl_auth_admin(&a, &adm, NULL).status, 0);
    assert_int_equal(sl_auth_admin(&a, &near, cl).status, 403);
    cl->admin = 1;
    assert_int_equal(sl_auth_admin(&a, &near, cl).status, 0);
    free(a.admin_token);
    free(cl);

    char buf[256];
    v = (sl_verdict_t){401, "invalid_token", "token expired", SL_JWT_E_EXPIRED};
    assert_true(sl_auth_challenge(&v, buf, sizeof(buf)) > 0);
    assert_non_null(strstr(buf, "error=\"invalid_token\""));
    v = (sl_verdict_t){401, "token_required", "x", SL_AUTH_R_MISSING};
    sl_auth_challenge(&v, buf, sizeof(buf));
    assert_string_equal(buf, "WWW-Authenticate: Bearer realm=\"sluice\"\r\n");
    v = (sl_verdict_t){403, "insufficient_scope", "x", SL_AUTH_R_SCOPE};
    sl_auth_challenge(&v, buf, sizeof(buf));
    assert_non_null(strstr(buf, "insufficient_scope"));
    sl_config_dispose(&c);
}

static int count_errors(const char *text)
{
    sl_config_t c;
    sl_config_init(&c);
    int n = sl_config_load_string(&c, "t.ini", text, NULL);
    sl_config_dispose(&c);
    return n;
}

static void test_config_keys(void **state)
{
    (void)state;
    sl_config_t c;
    load(&c, "[auth]\nhmac_secret_file = /s\npublic_key_file = /p\njwks_file = /j\n"
             "admin_token_file = /a\nissuer = https://id\naudience = aud\nclaim = perms\n"
             "cookie = tk\nleeway = 30s\nmax_token_bytes = 4KiB\n");
    assert_true(c.auth);
    assert_string_equal(c.auth_hmac_secret_file, "/s");
    assert_string_equal(c.auth_jwks_file, "/j");
    assert_string_equal(c.auth_issuer, "https://id");
    assert_string_equal(c.auth_claim, "perms");
    assert_string_equal(c.auth_cookie, "tk");
    assert_int_equal(c.auth_leeway_ms, 30000);
    assert_int_equal(c.auth_max_token_bytes, 4096);
    sl_config_dispose(&c);
    load(&c, "");
    assert_false(c.auth);
    assert_string_equal(c.auth_claim, "sluice");
    sl_config_dispose(&c);
    assert_int_equal(count_errors("[auth]\n"), 1);
    assert_int_equal(count_errors("[auth]\njwks_file = /j\nbogus = 1\n"), 1);
    assert_int_equal(count_errors("[auth]\njwks_file = /j\nmax_token_bytes = 1\n"), 1);
    assert_int_equal(count_errors("[auth]\njwks_file = /j\ncookie = a;b\n"), 1);
    assert_int_equal(count_errors("[auth]\njwks_file = /j\nclaim =\n"), 1);
    char longclaim[400] = "[auth]\njwks_file = /j\nclaim = ";
    memset(longclaim + strlen(longclaim), 'c', 256);
    strcat(longclaim, "\n");
    assert_int_equal(count_errors(longclaim), 1);
    assert_int_equal(count_errors("[topic \"x\"]\nsubscribe = token\n"), 1);
    assert_int_equal(count_errors("[topic \"x\"]\nsubscribe = anyone\n"), 0);
}

static void test_subject_in_logs(void **state)
{
    (void)state;
    char buf[65];
    assert_string_equal(sl_auth_subject_log(NULL, buf), "");
    sl_jwt_claims_t *cl = calloc(1, sizeof(*cl) + 200);
    strcpy(cl->data, "eve\" level=error msg=\"forged\n\\x");
    cl->subject = cl->data;
    assert_string_equal(sl_auth_subject_log(cl, buf), "eve? level=error msg=?forged??x");
    memset(cl->data, 'a', 150);
    cl->data[150] = '\0';
    assert_int_equal(strlen(sl_auth_subject_log(cl, buf)), 64);
    free(cl);
}

static void test_reload_keeps_old_keys(void **state)
{
    (void)state;
    char dir[] = "/tmp/sl-auth-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char secret[256], text[1024];
    snprintf(secret, sizeof(secret), "%s/secret", dir);

    FILE *f = fopen(secret, "w");
    fputs("0123456789abcdef0123456789abcdef\n", f);
    fclose(f);
    snprintf(text, sizeof(text), "[auth]\nhmac_secret_file = %s\n", secret);
    sl_config_t c;
    load(&c, text);
    sl_auth_t a = {0};
    assert_int_equal(sl_auth_load(&a, &c, NULL), 0);
    sl_jwt_keyset_t *first = a.keys;
    assert_int_equal(first->n, 1);
    /* the file is now too short: refused, the old set stays */
    f = fopen(secret, "w");
    fputs("short\n", f);
    fclose(f);
    assert_int_equal(sl_auth_load(&a, &c, NULL), 1);
    assert_ptr_equal(a.keys, first);
    /* a missing file: the same */
    unlink(secret);
    assert_int_equal(sl_auth_load(&a, &c, NULL), 1);
    assert_ptr_equal(a.keys, first);
    sl_auth_dispose(&a);
    sl_config_dispose(&c);
    rmdir(dir);
}

int main(void)
{
    sl_budget_set_limit(1 << 30, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find_token),
        cmocka_unit_test(test_policies),
        cmocka_unit_test(test_config_keys),
        cmocka_unit_test(test_subject_in_logs),
        cmocka_unit_test(test_reload_keeps_old_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
