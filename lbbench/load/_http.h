/* The strict scan of one whole, plain HTTP/1.1 response, shared by lbbench.load._scan (which hands
 * its fields to Python) and lbbench.load._engine (the native load client, which parses without
 * the GIL). No Python objects here: the caller turns the timing values into numbers (float() in
 * _scan, a C parser with float()'s grammar in _engine) through `on_num`.
 *
 * The subset (see lbbench/load/head.py, the reference): status line "HTTP/1.1 DDD reason" (200-599
 * but 204 and 304), header fields "name: value" (a token; printable ASCII, not empty, no tab, no
 * trailing blank), CRLF line ends, exactly one Content-Length and a body of exactly that many bytes,
 * no Transfer-Encoding, Upgrade or Proxy-Connection, at most one Connection ("keep-alive" or "close").
 */
#ifndef LBBENCH_HTTP_H
#define LBBENCH_HTTP_H

#include <string.h>
#include <sys/types.h>

static unsigned char HTTP_TCHAR[256]; /* RFC 9110 token characters; http_init() fills it */

enum { HF_POD, HF_POD_IP, HF_QUEUE_MS, HF_SERVICE_MS, HF_PROXY_QUEUE_MS, HF_PROXY_UPSTREAM_MS, HF_N };
enum { HK_IGNORED = -1, HK_LENGTH = HF_N, HK_CONNECTION, HK_FALLBACK, HK_TRANSFER_ENCODING };
#define HF_TEXTS HF_QUEUE_MS        /* fields below this are text (pod, pod_ip) */
#define HF_NUMS (HF_N - HF_QUEUE_MS) /* the four timing values */

static void http_init(void) {
    const char *extra = "!#$%&'*+-.^_`|~";
    int c;
    for (c = '0'; c <= '9'; c++)
        HTTP_TCHAR[c] = 1;
    for (c = 'a'; c <= 'z'; c++)
        HTTP_TCHAR[c] = HTTP_TCHAR[c - 32] = 1;
    for (; *extra; extra++)
        HTTP_TCHAR[(unsigned char)*extra] = 1;
}

/* ASCII case-insensitive equality of name[0:n] with an all-lower-case literal */
static int http_name_is(const unsigned char *name, ssize_t n, const char *lower) {
    ssize_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = name[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return lower[n] == '\0';
}

/* What a header field is for. Transfer-Encoding is HK_FALLBACK to the strict scan (which leaves it
   to the full parser) and HK_TRANSFER_ENCODING to that full parser (http_kind_full). */
static inline int http_kind(const unsigned char *name, ssize_t n) {
    switch (n) {
    case 5:
        return http_name_is(name, n, "x-pod") ? HF_POD : HK_IGNORED;
    case 7:
        return http_name_is(name, n, "upgrade") ? HK_FALLBACK : HK_IGNORED;
    case 8:
        return http_name_is(name, n, "x-pod-ip") ? HF_POD_IP : HK_IGNORED;
    case 10:
        if (http_name_is(name, n, "x-queue-ms"))
            return HF_QUEUE_MS;
        return http_name_is(name, n, "connection") ? HK_CONNECTION : HK_IGNORED;
    case 12:
        return http_name_is(name, n, "x-service-ms") ? HF_SERVICE_MS : HK_IGNORED;
    case 14:
        return http_name_is(name, n, "content-length") ? HK_LENGTH : HK_IGNORED;
    case 16:
        if (http_name_is(name, n, "x-proxy-queue-ms"))
            return HF_PROXY_QUEUE_MS;
        return http_name_is(name, n, "proxy-connection") ? HK_FALLBACK : HK_IGNORED;
    case 17:
        return http_name_is(name, n, "transfer-encoding") ? HK_TRANSFER_ENCODING : HK_IGNORED;
    case 19:
        return http_name_is(name, n, "x-proxy-upstream-ms") ? HF_PROXY_UPSTREAM_MS : HK_IGNORED;
    default:
        return HK_IGNORED;
    }
}

typedef struct {
    int status;
    int keep_alive;                   /* -1: no Connection field (HTTP/1.1: persistent) */
    const unsigned char *text[HF_TEXTS]; /* NULL: missing */
    ssize_t text_len[HF_TEXTS];
} http_head;

/* A timing field's value (which: 0..HF_NUMS-1): the caller parses it; < 0 stops the scan (an error). */
typedef int (*http_num_cb)(void *ctx, int which, const unsigned char *v, ssize_t n);

/* The status line "HTTP/1.1 DDD reason\r\n" (reason printable ASCII, perhaps empty) at the start of
   d[0:n]: its status, with *reason_end at the reason's end (the CR) and *p past the line; 0: not one. */
static inline int http_status_line(const unsigned char *d, ssize_t n, ssize_t *reason_end, ssize_t *p) {
    ssize_t i;
    if (n < 17 || memcmp(d, "HTTP/1.1 ", 9) != 0 || d[12] != ' ')
        return 0;
    for (i = 9; i < 12; i++)
        if (d[i] < '0' || d[i] > '9')
            return 0;
    for (i = 13; i < n && d[i] != '\r'; i++)
        if (d[i] < 0x20 || d[i] > 0x7e)
            return 0;
    if (i + 1 >= n || d[i + 1] != '\n')
        return 0;
    *reason_end = i;
    *p = i + 2;
    return (d[9] - '0') * 100 + (d[10] - '0') * 10 + (d[11] - '0');
}

/* Whether a status has the plain body rules (1xx, 204 and 304 have their own: the full parser's). */
static inline int http_plain_status(int status) {
    return status >= 200 && status <= 599 && status != 204 && status != 304;
}

/* The header field "name: value\r\n" at d[*p] (name a token; value printable ASCII without leading
   spaces, which are skipped, not empty, no tab, no trailing blank), or the empty line ending the head.
   1: a field (its spans set, *p past it); 0: the empty line (*p past it); -1: neither, or not all here. */
static inline int http_field(const unsigned char *d, ssize_t n, ssize_t *p, ssize_t *name, ssize_t *name_len,
                             ssize_t *value, ssize_t *value_len) {
    ssize_t i = *p, v;
    if (i + 1 >= n)
        return -1;
    if (d[i] == '\r') {
        if (d[i + 1] != '\n')
            return -1;
        *p = i + 2;
        return 0;
    }
    *name = i;
    while (i < n && HTTP_TCHAR[d[i]])
        i++;
    *name_len = i - *name;
    if (*name_len == 0 || i >= n || d[i] != ':')
        return -1;
    i++;
    while (i < n && d[i] == ' ')
        i++;
    v = i;
    for (; i < n && d[i] != '\r'; i++)
        if (d[i] < 0x20 || d[i] > 0x7e)
            return -1;
    if (i + 1 >= n || d[i + 1] != '\n' || i == v || d[i - 1] == ' ')
        return -1;
    *value = v;
    *value_len = i - v;
    *p = i + 2;
    return 1;
}

/* A Content-Length value of at most 15 digits, else -1. */
static inline long long http_length(const unsigned char *v, ssize_t n) {
    long long length = 0;
    ssize_t i;
    if (n > 15)
        return -1;
    for (i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        length = length * 10 + (v[i] - '0');
    }
    return length;
}

/* 1: d[0:n] is exactly one whole response of the subset (h filled, on_num called for each timing
   field in order); 0: it is not (h undefined; on_num may have been called); -1: on_num failed. */
static inline int http_scan_whole(const unsigned char *d, ssize_t n, http_head *h, http_num_cb on_num, void *ctx) {
    ssize_t p, reason_end, name, name_len, v, vlen, i;
    long long length = -1;
    int k, r;

    h->status = http_status_line(d, n, &reason_end, &p);
    if (!http_plain_status(h->status))
        return 0;
    h->keep_alive = -1;
    for (i = 0; i < HF_TEXTS; i++)
        h->text[i] = NULL;
    while ((r = http_field(d, n, &p, &name, &name_len, &v, &vlen)) > 0) {
        k = http_kind(d + name, name_len);
        if (k >= 0 && k < HF_TEXTS) {
            h->text[k] = d + v; /* the last one counts, as with httptools' callbacks */
            h->text_len[k] = vlen;
        } else if (k >= HF_TEXTS && k < HF_N) {
            if (on_num(ctx, k - HF_TEXTS, d + v, vlen) < 0)
                return -1;
        } else if (k == HK_LENGTH) {
            if (length >= 0)
                return 0; /* a second Content-Length is the full parser's to reject */
            if ((length = http_length(d + v, vlen)) < 0)
                return 0;
        } else if (k == HK_CONNECTION) {
            if (h->keep_alive >= 0)
                return 0;
            if (vlen == 10 && http_name_is(d + v, 10, "keep-alive"))
                h->keep_alive = 1;
            else if (vlen == 5 && http_name_is(d + v, 5, "close"))
                h->keep_alive = 0;
            else
                return 0;
        } else if (k == HK_FALLBACK || k == HK_TRANSFER_ENCODING) {
            return 0;
        }
    }
    /* exactly one response, all of it: the body is what Content-Length says, nothing more */
    return r == 0 && length >= 0 && n - p == length;
}

#endif
