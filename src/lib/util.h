/*
 * Small shared helpers: allocation wrappers that abort on OOM (sizes from peers are capped
 * before they get here), an intrusive doubly-linked list used by every module, error names,
 * and the monotonic clock. No libuv calls.
 */
#ifndef SL_UTIL_H
#define SL_UTIL_H

#include <stddef.h>
#include <stdint.h>

void *sl_malloc(size_t n);
void *sl_calloc(size_t n, size_t size);
void *sl_realloc(void *p, size_t n);
char *sl_strdup(const char *s);
char *sl_strndup(const char *s, size_t n);

/* Negative error codes of our own, beyond the UV_E* ones. */
enum {
    SL_EOVERLOAD = -30001, /* memory budget exhausted */
    SL_ETOOBIG = -30002,   /* a peer-controlled size is over its limit */
    SL_EBADID = -30003,    /* malformed message id */
    SL_ELIMIT = -30004,    /* a count limit (topics, connections) reached */
    SL_EFULL = -30005,     /* a lossless topic has no room: push back on the publisher */
    SL_EDISK = -30006,     /* a lossless topic's log cannot be written (disk error) */
    SL_EINVAL = -30007,    /* a peer-supplied name or value is malformed */
    SL_ERESERVED = -30008, /* a peer-supplied name is reserved for sluice's own use */
    SL_EBUSY = -30009,     /* the object is in use and cannot be changed so */
};
const char *sl_strerror(int err);

/* Monotonic milliseconds. */
uint64_t sl_now_ms(void);
/* Wall clock milliseconds since the epoch. */
uint64_t sl_wall_ms(void);
/* 64 random bits from the OS. */
uint64_t sl_random64(void);

/* Intrusive circular doubly-linked list; an empty list points at itself. */
typedef struct sl_list {
    struct sl_list *next, *prev;
} sl_list_t;

static inline void sl_list_init(sl_list_t *l)
{
    l->next = l->prev = l;
}
static inline int sl_list_empty(const sl_list_t *l)
{
    return l->next == l;
}
static inline void sl_list_insert_tail(sl_list_t *head, sl_list_t *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}
/* Unlinks n and leaves it pointing at itself, so removing twice is harmless. */
static inline void sl_list_remove(sl_list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n->prev = n;
}
static inline int sl_list_linked(const sl_list_t *n)
{
    return n->next != n;
}

#define sl_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define sl_list_each(it, head) for ((it) = (head)->next; (it) != (head); (it) = (it)->next)
#define sl_list_each_safe(it, tmp, head)                                                           \
    for ((it) = (head)->next, (tmp) = (it)->next; (it) != (head); (it) = (tmp), (tmp) = (it)->next)

/* A growable text buffer; buf is malloc'ed (sl_realloc) and belongs to whoever holds the
 * struct. Start it with {sl_malloc(cap), 0, cap} (cap > 0). The text stays NUL-terminated. */
typedef struct sl_buf {
    char *buf;
    size_t len, cap;
} sl_buf_t;

/* Appends formatted text, growing the buffer as needed. */
void sl_buf_printf(sl_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends n bytes as they are (a large block through printf costs a pass per doubling). */
void sl_buf_put(sl_buf_t *b, const char *p, size_t n);

#endif
