/* lbbench.frontends.proxy._heads: the L7 proxy's fast path for the common request and response.
 *
 * request(data)  -> (method, target, host, head, count, keep_alive) or None
 * response(data) -> (status, reason, fields, body, keep_alive) or None
 * Exchange(client) -> the proxy's per-request state, the C twin of exchange.py's class (_exchange.h)
 *
 * Each answers only for one whole message of a strict subset of HTTP/1.1 in one read, and None for
 * anything else, which the proxy then parses with httptools (llhttp) as it always did: so wherever
 * it answers, the proxy does what it would have done with llhttp's callbacks
 * (tests/frontends/proxy/test_proxy_heads.py feeds the same bytes to both paths and compares what
 * reaches the backend and the client). `fields` is the forwarded header fields as the callbacks
 * build them ("Name: value\r\n" each, in order), without the Connection field, which is hop-by-hop;
 * a request's `head` is its request line (forwarded as it came) and then its `fields`.
 * `count` counts every field (the 431 limit's figure); keep_alive is llhttp's should_keep_alive().
 *
 * The subset. Request: "GET" or "HEAD", an origin-form target ("/" then RFC 3986 path and query
 * characters), "HTTP/1.1", exactly one Host, no body framing, nothing after the head. Response:
 * "HTTP/1.1 DDD reason" (200-599 but 204 and 304, reason printable without blanks at either end),
 * exactly one Content-Length and a body of exactly that many bytes, nothing after it. Both: CRLF
 * line ends; fields "name: value" (a token; printable ASCII, not empty, no tab, no trailing blank),
 * at most FIELDS_MAX of them; at most one Connection, "keep-alive" or "close"; none of the fields
 * the proxy decides on (Transfer-Encoding, Expect, X-Forwarded-For, Via, the other hop-by-hop ones;
 * a request's Content-Length).
 *
 * Why C: llhttp calls back into Python once per header field and once per event; for wrk's
 * request and nginx's answer that was ~25k of the proxy's ~84k instructions per exchange
 * (callgrind, tests/benchmarks/instructions.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdarg.h>

#include "../../load/_http.h" /* the status line, header field and Content-Length scans of the subset */
#include "_exchange.h"       /* the Exchange type */

#define FIELDS_MAX 128 /* more: llhttp's path (the proxy's own limit is 100 by default) */

enum { R_PASS, R_HOST, R_LENGTH, R_CONNECTION, R_FALLBACK };

static unsigned char URL_CHAR[256]; /* an origin-form target's characters past its "/" */
static PyObject *GET, *HEAD;

/* What the fast path does with a field, by name: the proxy's tables in lbbench/frontends/proxy/http.py,
   where everything but plain fields, Host, a response's Content-Length and Connection is left to llhttp. */
static int role(const unsigned char *name, ssize_t n, int response) {
    switch (n) {
    case 2:
        return http_name_is(name, n, "te") ? R_FALLBACK : R_PASS;
    case 3:
        return http_name_is(name, n, "via") ? R_FALLBACK : R_PASS;
    case 4:
        return !response && http_name_is(name, n, "host") ? R_HOST : R_PASS;
    case 6:
        return !response && http_name_is(name, n, "expect") ? R_FALLBACK : R_PASS;
    case 7:
        return http_name_is(name, n, "upgrade") || http_name_is(name, n, "trailer") ? R_FALLBACK : R_PASS;
    case 10:
        if (http_name_is(name, n, "connection"))
            return R_CONNECTION;
        return http_name_is(name, n, "keep-alive") ? R_FALLBACK : R_PASS;
    case 14:
        if (!http_name_is(name, n, "content-length"))
            return R_PASS;
        return response ? R_LENGTH : R_FALLBACK;
    case 15:
        return !response && http_name_is(name, n, "x-forwarded-for") ? R_FALLBACK : R_PASS;
    case 16:
        return http_name_is(name, n, "proxy-connection") ? R_FALLBACK : R_PASS;
    case 17:
        return http_name_is(name, n, "transfer-encoding") ? R_FALLBACK : R_PASS;
    case 18:
        return http_name_is(name, n, "proxy-authenticate") ? R_FALLBACK : R_PASS;
    case 19:
        return http_name_is(name, n, "proxy-authorization") ? R_FALLBACK : R_PASS;
    default:
        return R_PASS;
    }
}

typedef struct {
    ssize_t name[FIELDS_MAX], name_len[FIELDS_MAX], value[FIELDS_MAX], value_len[FIELDS_MAX];
    int forwarded;            /* fields kept, in name[]/value[] */
    int count;                /* all fields */
    int keep_alive;           /* 0 after "Connection: close" */
    ssize_t host, host_len;   /* -1: none */
    long long length;         /* -1: no Content-Length */
    ssize_t end;              /* just past the empty line */
} fields_t;

/* The header fields from d[p] to the empty line; 1: all of the subset (f filled), 0: not. */
static int scan_fields(const unsigned char *d, ssize_t n, ssize_t p, int response, fields_t *f) {
    ssize_t name, name_len, v, vlen;
    int connection = 0, r, k, i;

    f->forwarded = f->count = 0;
    f->keep_alive = 1;
    f->host = -1;
    f->length = -1;
    while ((r = http_field(d, n, &p, &name, &name_len, &v, &vlen)) > 0) {
        if (++f->count > FIELDS_MAX)
            return 0;
        k = role(d + name, name_len, response);
        if (k == R_FALLBACK)
            return 0;
        if (k == R_CONNECTION) {
            if (connection++)
                return 0;
            if (vlen == 5 && http_name_is(d + v, 5, "close"))
                f->keep_alive = 0;
            else if (!(vlen == 10 && http_name_is(d + v, 10, "keep-alive")))
                return 0; /* it may name fields to drop: the proxy decides that */
            continue;     /* hop-by-hop: not forwarded */
        }
        if (k == R_HOST) {
            if (f->host >= 0)
                return 0; /* two Hosts: llhttp's path refuses it */
            f->host = v;
            f->host_len = vlen;
        } else if (k == R_LENGTH) {
            if (f->length >= 0 || (f->length = http_length(d + v, vlen)) < 0)
                return 0; /* a second Content-Length is llhttp's to judge */
        }
        i = f->forwarded++;
        f->name[i] = name;
        f->name_len[i] = name_len;
        f->value[i] = v;
        f->value_len[i] = vlen;
    }
    f->end = p;
    return r == 0;
}

/* The first `line` bytes of `d` (a request line forwarded as it came, or nothing), then the forwarded
   fields, "Name: value\r\n" each, as one bytes object. */
static PyObject *joined(const unsigned char *d, ssize_t line, const fields_t *f) {
    ssize_t size = line;
    int i;
    char *out;
    PyObject *b;

    for (i = 0; i < f->forwarded; i++)
        size += f->name_len[i] + f->value_len[i] + 4;
    b = PyBytes_FromStringAndSize(NULL, size);
    if (b == NULL)
        return NULL;
    out = PyBytes_AS_STRING(b);
    memcpy(out, d, (size_t)line);
    out += line;
    for (i = 0; i < f->forwarded; i++) {
        memcpy(out, d + f->name[i], (size_t)f->name_len[i]);
        out += f->name_len[i];
        *out++ = ':';
        *out++ = ' ';
        memcpy(out, d + f->value[i], (size_t)f->value_len[i]);
        out += f->value_len[i];
        *out++ = '\r';
        *out++ = '\n';
    }
    return b;
}

static PyObject *bytes_of(const unsigned char *d, ssize_t n) {
    return PyBytes_FromStringAndSize((const char *)d, n);
}

static PyObject *bool_of(int b) {
    PyObject *o = b ? Py_True : Py_False;
    Py_INCREF(o);
    return o;
}

/* A tuple of the n new references given (Py_BuildValue parses its format on every call); NULL, with
   every reference released, if any of them is NULL (its error set) or the tuple cannot be made. */
static PyObject *tuple_of(int n, ...) {
    PyObject *items[8], *t;
    va_list ap;
    int i, failed = 0;

    va_start(ap, n);
    for (i = 0; i < n; i++)
        failed |= (items[i] = va_arg(ap, PyObject *)) == NULL;
    va_end(ap);
    t = failed ? NULL : PyTuple_New(n);
    for (i = 0; i < n; i++) {
        if (t != NULL)
            PyTuple_SET_ITEM(t, i, items[i]);
        else
            Py_XDECREF(items[i]);
    }
    return t;
}

/* 1 and the bytes of `arg` if it is exactly bytes (anything else is no message of the subset), else 0 */
static int bytes_arg(PyObject *arg, const unsigned char **d, ssize_t *n) {
    if (!PyBytes_CheckExact(arg))
        return 0;
    *d = (const unsigned char *)PyBytes_AS_STRING(arg);
    *n = PyBytes_GET_SIZE(arg);
    return 1;
}

static PyObject *request(PyObject *module, PyObject *arg) {
    const unsigned char *d;
    ssize_t n, p, target;
    PyObject *method;
    fields_t f;
    (void)module;

    if (!bytes_arg(arg, &d, &n))
        Py_RETURN_NONE;
    if (n >= 4 && memcmp(d, "GET ", 4) == 0) {
        method = GET;
        p = 4;
    } else if (n >= 5 && memcmp(d, "HEAD ", 5) == 0) {
        method = HEAD;
        p = 5;
    } else {
        Py_RETURN_NONE;
    }
    target = p;
    if (p >= n || d[p] != '/')
        Py_RETURN_NONE;
    for (p++; p < n && URL_CHAR[d[p]]; p++)
        ;
    if (n - p < 11 || memcmp(d + p, " HTTP/1.1\r\n", 11) != 0)
        Py_RETURN_NONE;
    if (!scan_fields(d, n, p + 11, 0, &f) || f.host < 0 || f.end != n)
        Py_RETURN_NONE;
    Py_INCREF(method);
    return tuple_of(6, method, bytes_of(d + target, p - target), bytes_of(d + f.host, f.host_len), joined(d, p + 11, &f),
                    PyLong_FromLong(f.count), bool_of(f.keep_alive));
}

static PyObject *response(PyObject *module, PyObject *arg) {
    const unsigned char *d;
    ssize_t n, p, reason_end;
    int status;
    fields_t f;
    (void)module;

    if (!bytes_arg(arg, &d, &n))
        Py_RETURN_NONE;
    status = http_status_line(d, n, &reason_end, &p);
    if (!http_plain_status(status))
        Py_RETURN_NONE;
    /* the reason: not empty, no blank at either end (as llhttp hands it on) */
    if (reason_end == 13 || d[13] == ' ' || d[reason_end - 1] == ' ')
        Py_RETURN_NONE;
    if (!scan_fields(d, n, p, 1, &f) || f.length < 0 || n - f.end != f.length)
        Py_RETURN_NONE;
    return tuple_of(5, PyLong_FromLong(status), bytes_of(d + 13, reason_end - 13), joined(d, 0, &f),
                    bytes_of(d + f.end, n - f.end), bool_of(f.keep_alive));
}

static PyMethodDef METHODS[] = {
    {"request", request, METH_O,
     "request(data) -> (method, target, host, head, count, keep_alive) for one whole plain HTTP/1.1 GET or "
     "HEAD request, else None"},
    {"response", response, METH_O,
     "response(data) -> (status, reason, fields, body, keep_alive) for one whole plain HTTP/1.1 response "
     "with Content-Length, else None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT,
    .m_name = "lbbench.frontends.proxy._heads",
    .m_doc = "The L7 proxy's fast path: the common request and response head, and the Exchange (see _heads.c)",
    .m_size = -1,
    .m_methods = METHODS,
};

PyMODINIT_FUNC PyInit__heads(void) {
    const char *extra = "-._~!$&'()*+,;=:@/?%";
    PyObject *module;
    int c;

    http_init();
    for (c = '0'; c <= '9'; c++)
        URL_CHAR[c] = 1;
    for (c = 'a'; c <= 'z'; c++)
        URL_CHAR[c] = URL_CHAR[c - 32] = 1;
    for (; *extra; extra++)
        URL_CHAR[(unsigned char)*extra] = 1;
    GET = PyBytes_FromString("GET");
    HEAD = PyBytes_FromString("HEAD");
    if (GET == NULL || HEAD == NULL)
        return NULL;
    module = PyModule_Create(&MODULE);
    if (module != NULL && exchange_init(module) < 0)
        Py_CLEAR(module);
    return module;
}
