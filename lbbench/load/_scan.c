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

#include "_http.h" /* the scan itself, shared with the native client (_engine.c) */

static PyObject *EMPTY_STR;
static PyObject *NAN_FLOAT;

/* float(value) as Python computes it for bytes, into nums[which]; a value float() rejects leaves it
   as it was (the field keeps an earlier good value, or stays missing), as the client's callback does.
   -1 on any other error. */
static int set_float(void *ctx, int which, const unsigned char *v, ssize_t n) {
    PyObject **out = (PyObject **)ctx + which;
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
    http_head h;
    PyObject *out = NULL, *item, *num[HF_NUMS] = {NULL, NULL, NULL, NULL};
    Py_ssize_t i;
    int rc;
    (void)module;

    if (!PyBytes_CheckExact(arg))
        Py_RETURN_NONE;
    rc = http_scan_whole((const unsigned char *)PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg), &h, set_float, num);
    if (rc < 0)
        goto error;
    if (rc == 0)
        goto none;
    item = PyLong_FromLong(h.status);
    if (item == NULL)
        goto error;
    out = PyTuple_New(2 + HF_N);
    if (out == NULL) {
        Py_DECREF(item);
        goto error;
    }
    PyTuple_SET_ITEM(out, 0, item);
    item = h.keep_alive == 0 ? Py_False : Py_True; /* HTTP/1.1: persistent unless "close" */
    Py_INCREF(item);
    PyTuple_SET_ITEM(out, 1, item);
    for (i = 0; i < HF_TEXTS; i++) {
        if (h.text[i] == NULL) {
            item = EMPTY_STR;
            Py_INCREF(item);
        } else if ((item = PyUnicode_DecodeLatin1((const char *)h.text[i], h.text_len[i], NULL)) == NULL) {
            goto error;
        }
        PyTuple_SET_ITEM(out, 2 + i, item);
    }
    for (i = 0; i < HF_NUMS; i++) {
        item = num[i] != NULL ? num[i] : NAN_FLOAT;
        Py_INCREF(item);
        PyTuple_SET_ITEM(out, 2 + HF_TEXTS + i, item);
    }
    for (i = 0; i < HF_NUMS; i++)
        Py_XDECREF(num[i]);
    return out;
none:
    for (i = 0; i < HF_NUMS; i++)
        Py_XDECREF(num[i]);
    Py_RETURN_NONE;
error:
    Py_XDECREF(out);
    for (i = 0; i < HF_NUMS; i++)
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
    http_init();
    EMPTY_STR = PyUnicode_FromStringAndSize("", 0);
    NAN_FLOAT = PyFloat_FromDouble(Py_NAN);
    if (EMPTY_STR == NULL || NAN_FLOAT == NULL)
        return NULL;
    return PyModule_Create(&MODULE);
}
