/*
 * Unit tests of the server's pure helpers: the key under which per-IP connection limits count
 * a peer (IPv4, IPv4-mapped IPv6, and IPv6 cut to a configurable prefix).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "net/server.h"

#include <arpa/inet.h>
#include <string.h>

/* The key of a textual address (IPv4 or IPv6) with this IPv6 prefix. */
static void key_of(const char *text, unsigned prefix, uint8_t key[16])
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(text, ':') != NULL) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(1234);
        assert_int_equal(inet_pton(AF_INET6, text, &s6->sin6_addr), 1);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(1234);
        assert_int_equal(inet_pton(AF_INET, text, &s4->sin_addr), 1);
    }
    memset(key, 0xaa, 16); /* every byte must be written */
    sl_server_ip_key((const struct sockaddr *)&ss, prefix, key);
}

static int same_key(const char *a, const char *b, unsigned prefix)
{
    uint8_t ka[16], kb[16];
    key_of(a, prefix, ka);
    key_of(b, prefix, kb);
    return memcmp(ka, kb, 16) == 0;
}

static void test_ipv4(void **state)
{
    (void)state;
    uint8_t k[16];
    key_of("192.0.2.7", 64, k);
    const uint8_t want[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7};
    assert_memory_equal(k, want, 16);
    assert_false(same_key("192.0.2.7", "192.0.2.8", 0));
    assert_false(same_key("127.0.0.1", "127.0.0.2", 64));
    /* The prefix applies to IPv6 only. */
    assert_false(same_key("10.0.0.1", "10.0.0.2", 0));
}

static void test_ipv4_mapped_counts_as_ipv4(void **state)
{
    (void)state;
    for (unsigned prefix = 0; prefix <= 128; prefix += 8) {
        assert_true(same_key("::ffff:192.0.2.7", "192.0.2.7", prefix));
        assert_false(same_key("::ffff:192.0.2.7", "::ffff:192.0.2.8", prefix));
    }
    /* The old IPv4-compatible form is an ordinary IPv6 address, not IPv4. */
    assert_false(same_key("::192.0.2.7", "192.0.2.7", 128));
}

static void test_ipv6_prefix(void **state)
{
    (void)state;
    /* Default /64: one host's /64 is one address; the next /64 is another. */
    assert_true(same_key("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", 64));
    assert_true(same_key("2001:db8:1:2::1", "2001:db8:1:2:a:b:c:d", 64));
    assert_false(same_key("2001:db8:1:2::1", "2001:db8:1:3::1", 64));
    uint8_t k[16];
    key_of("2001:db8:1:2:a:b:c:d", 64, k);
    const uint8_t want[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2};
    assert_memory_equal(k, want, 16);
    /* 128: every address alone; 0: every IPv6 peer together (still apart from IPv4). */
    assert_false(same_key("2001:db8::1", "2001:db8::2", 128));
    assert_true(same_key("2001:db8::1", "fd00::2", 0));
    assert_false(same_key("::1", "0.0.0.1", 0));
    /* A prefix that is not a whole number of bytes. */
    assert_true(same_key("2001:db8:ab00::1", "2001:db8:abff::1", 40));
    assert_false(same_key("2001:db8:ab00::1", "2001:db8:ac00::1", 40));
    assert_true(same_key("2001:db8:a0::", "2001:db8:af::", 44));
    assert_false(same_key("2001:db8:a0::", "2001:db8:b0::", 44));
    assert_true(same_key("8000::", "ffff::", 1));
    assert_false(same_key("7fff::", "8000::", 1));
    /* Out of range is taken as 128. */
    assert_false(same_key("2001:db8::1", "2001:db8::2", 1000));
}

static void test_other_family(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_UNIX;
    uint8_t k[16];
    memset(k, 0xaa, 16);
    sl_server_ip_key((const struct sockaddr *)&ss, 64, k);
    const uint8_t zero[16] = {0};
    assert_memory_equal(k, zero, 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4),
        cmocka_unit_test(test_ipv4_mapped_counts_as_ipv4),
        cmocka_unit_test(test_ipv6_prefix),
        cmocka_unit_test(test_other_family),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
