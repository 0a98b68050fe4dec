/* lbbench.load._scan: the load client's fast path for a whole, plain HTTP/1.1 response in one read.
 *
 * scan(data) -> (status, keep_alive, pod, pod_ip, queue_ms, service_ms, proxy_queue_ms,
 *                proxy_upstream_ms) or None
 *
 * The C twin of lbbench/load/head.py's scan_py (the reference, and the fallback when this module is
 * not built); the two agree on every input (tests/load/test_head.py checks it with hypothesis, and
 * checks both against httptools). It accepts only a strict subset of HTTP/1.1 and answers None for
 * anything else, which the client then parses with httptools as before: so wherever it answers,
 * httptools would have recorded the same thing. Why C: the response head parsed with httptools costs
 * ~34k instructions per response (a Python callback per header field), this ~2k.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static unsigned char TCHAR[256]; /* RFC 9110 token characters */
static PyObject *EMPTY_STR;
static PyObject *NAN_FLOAT;

enum { F_POD, F_POD_IP, F_QUEUE_MS, F_SERVICE_MS, F_PROXY_QUEUE_MS, F_PROXY_UPSTREAM_MS, F_N };
enum { K_IGNORED = -1, K_LENGTH = F_N, K_CONNECTION, K_FALLBACK };

/* ASCII case-insensitive equality of name[0:n] with an all-lower-case literal */
static int name_is(const unsigned char *name, Py_ssize_t n, const char *lower) {
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = name[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return lower[n] == '\0';
}

static int kind_of(const unsigned char *name, Py_ssize_t n) {
    switch (n) {
    case 5:
        return name_is(name, n, "x-pod") ? F_POD : K_IGNORED;
    case 7:
        return name_is(name, n, "upgrade") ? K_FALLBACK : K_IGNORED;
    case 8:
        return name_is(name, n, "x-pod-ip") ? F_POD_IP : K_IGNORED;
    case 10:
        if (name_is(name, n, "x-queue-ms"))
            return F_QUEUE_MS;
        return name_is(name, n, "connection") ? K_CONNECTION : K_IGNORED;
    case 12:
        return name_is(name, n, "x-service-ms") ? F_SERVICE_MS : K_IGNORED;
    case 14:
        return name_is(name, n, "content-length") ? K_LENGTH : K_IGNORED;
    case 16:
        if (name_is(name, n, "x-proxy-queue-ms"))
            return F_PROXY_QUEUE_MS;
        return name_is(name, n, "proxy-connection") ? K_FALLBACK : K_IGNORED;
    case 17:
        return name_is(name, n, "transfer-encoding") ? K_FALLBACK : K_IGNORED;
    case 19:
        return name_is(name, n, "x-proxy-upstream-ms") ? F_PROXY_UPSTREAM_MS : K_IGNORED;
    default:
        return K_IGNORED;
    }
}

/* float(value) as Python computes it for bytes, into *out; a value float() rejects leaves *out
   as it was (the field keeps an earlier good value, or stays missing), as the client's callback does.
   -1 on any other error. */
static int set_float(PyObject **out, const unsigned char *v, Py_ssize_t n) {
    PyObject *b = PyBytes_FromStringAndSize((const char *)v, n);
    PyObject *f;
    if (b == NULL)
        return -1;
    f = PyFloat_FromString(b);
    Py_DECREF(b);
    if (f == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    Py_XSETREF(*out, f);
    return 0;
}

static PyObject *scan(PyObject *module, PyObject *arg) {
    const unsigned char *d, *text[F_QUEUE_MS];
    Py_ssize_t n, p, text_len[F_QUEUE_MS], name_start, name_len, v, i;
    long long length = -1;
    int status, keep_alive = -1, k;
    PyObject *out = NULL, *item, *num[F_N - F_QUEUE_MS] = {NULL, NULL, NULL, NULL};
    (void)module;

    if (!PyBytes_CheckExact(arg))
        Py_RETURN_NONE;
    d = (const unsigned char *)PyBytes_AS_STRING(arg);
    n = PyBytes_GET_SIZE(arg);
    /* status line: "HTTP/1.1 DDD reason\r\n", reason printable ASCII */
    if (n < 17 || memcmp(d, "HTTP/1.1 ", 9) != 0)
        Py_RETURN_NONE;
    for (i = 9; i < 12; i++)
        if (d[i] < '0' || d[i] > '9')
            Py_RETURN_NONE;
    if (d[12] != ' ')
        Py_RETURN_NONE;
    status = (d[9] - '0') * 100 + (d[10] - '0') * 10 + (d[11] - '0');
    /* 1xx, 204 and 304 have their own body rules: httptools decides those */
    if (status < 200 || status > 599 || status == 204 || status == 304)
        Py_RETURN_NONE;
    for (p = 13; p < n && d[p] != '\r'; p++)
        if (d[p] < 0x20 || d[p] > 0x7e)
            Py_RETURN_NONE;
    if (p + 1 >= n || d[p + 1] != '\n')
        Py_RETURN_NONE;
    p += 2;
    for (i = 0; i < F_QUEUE_MS; i++)
        text[i] = NULL;
    /* header fields: "name: value\r\n", name a token, value printable ASCII without leading
       tabs or trailing blanks, not empty; then the empty line */
    for (;;) {
        if (p + 1 >= n)
            goto none; /* the head is not all here */
        if (d[p] == '\r') {
            if (d[p + 1] != '\n')
                goto none;
            p += 2;
            break;
        }
        name_start = p;
        while (p < n && TCHAR[d[p]])
            p++;
        name_len = p - name_start;
        if (name_len == 0 || p >= n || d[p] != ':')
            goto none;
        p++;
        while (p < n && d[p] == ' ')
            p++;
        v = p;
        for (; p < n && d[p] != '\r'; p++)
            if (d[p] < 0x20 || d[p] > 0x7e)
                goto none;
        if (p + 1 >= n || d[p + 1] != '\n' || p == v || d[p - 1] == ' ')
            goto none;
        k = kind_of(d + name_start, name_len);
        if (k >= 0 && k < F_QUEUE_MS) {
            text[k] = d + v; /* the last one counts, as with httptools' callbacks */
            text_len[k] = p - v;
        } else if (k >= F_QUEUE_MS && k < F_N) {
            if (set_float(&num[k - F_QUEUE_MS], d + v, p - v) < 0)
                goto error;
        } else if (k == K_LENGTH) {
            if (length >= 0 || p - v > 15)
                goto none; /* a second Content-Length is httptools' to reject */
            length = 0;
            for (i = v; i < p; i++) {
                if (d[i] < '0' || d[i] > '9')
                    goto none;
                length = length * 10 + (d[i] - '0');
            }
        } else if (k == K_CONNECTION) {
            if (keep_alive >= 0)
                goto none;
            if (p - v == 10 && name_is(d + v, 10, "keep-alive"))
                keep_alive = 1;
            else if (p - v == 5 && name_is(d + v, 5, "close"))
                keep_alive = 0;
            else
                goto none;
        } else if (k == K_FALLBACK) {
            goto none;
        }
        p += 2;
    }
    /* exactly one response, all of it: the body is what Content-Length says, nothing more */
    if (length < 0 || n - p != length)
        goto none;

    item = PyLong_FromLong(status);
    if (item == NULL)
        goto error;
    out = PyTuple_New(2 + F_N);
    if (out == NULL) {
        Py_DECREF(item);
        goto error;
    }
    PyTuple_SET_ITEM(out, 0, item);
    item = keep_alive == 0 ? Py_False : Py_True; /* HTTP/1.1: persistent unless "close" */
    Py_INCREF(item);
    PyTuple_SET_ITEM(out, 1, item);
    for (i = 0; i < F_QUEUE_MS; i++) {
        if (text[i] == NULL) {
            item = EMPTY_STR;
            Py_INCREF(item);
        } else if ((item = PyUnicode_DecodeLatin1((const char *)text[i], text_len[i], NULL)) == NULL) {
            goto error;
        }
        PyTuple_SET_ITEM(out, 2 + i, item);
    }
    for (i = 0; i < F_N - F_QUEUE_MS; i++) {
        item = num[i] != NULL ? num[i] : NAN_FLOAT;
        Py_INCREF(item);
        PyTuple_SET_ITEM(out, 2 + F_QUEUE_MS + i, item);
    }
    for (i = 0; i < F_N - F_QUEUE_MS; i++)
        Py_XDECREF(num[i]);
    return out;
none:
    for (i = 0; i < F_N - F_QUEUE_MS; i++)
        Py_XDECREF(num[i]);
    Py_RETURN_NONE;
error:
    Py_XDECREF(out);
    for (i = 0; i < F_N - F_QUEUE_MS; i++)
        Py_XDECREF(num[i]);
    return NULL;
}

static PyMethodDef METHODS[] = {
    {"scan", scan, METH_O,
     "scan(data) -> (status, keep_alive, pod, pod_ip, queue_ms, service_ms, proxy_queue_ms, proxy_upstream_ms)"
     " for one whole plain HTTP/1.1 response, else None (see lbbench.load.head)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT,
    .m_name = "lbbench.load._scan",
    .m_doc = "C twin of lbbench.load.head.scan_py",
    .m_size = -1,
    .m_methods = METHODS,
};

PyMODINIT_FUNC PyInit__scan(void) {
    const char *extra = "!#$%&'*+-.^_`|~";
    int c;
    for (c = '0'; c <= '9'; c++)
        TCHAR[c] = 1;
    for (c = 'a'; c <= 'z'; c++)
        TCHAR[c] = TCHAR[c - 32] = 1;
    for (; *extra; extra++)
        TCHAR[(unsigned char)*extra] = 1;
    EMPTY_STR = PyUnicode_FromStringAndSize("", 0);
    NAN_FLOAT = PyFloat_FromDouble(Py_NAN);
    if (EMPTY_STR == NULL || NAN_FLOAT == NULL)
        return NULL;
    return PyModule_Create(&MODULE);
}
