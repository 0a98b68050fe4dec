/* The proxy's Exchange (lbbench/frontends/proxy/exchange.py) as a C type, part of the _heads module.
 *
 * One Exchange is made per request. The Python class sets its 29 attributes one statement at a
 * time (~250 ns a request); this type gives them the same defaults from C (~50 ns). It is that
 * class's twin, not a second design: the same attribute names (slots of the same kind, so
 * CPython's attribute caches treat them alike), the same defaults, the same constructor
 * (Exchange(client)). exchange.new_exchange is this type when the module is built and not turned off
 * (LBBENCH_PURE_HEADS=1), except in the mypyc build; tests/frontends/proxy/test_proxy_heads.py
 * requires the two to agree attribute by attribute.
 */
#ifndef LBBENCH_PROXY_EXCHANGE_H
#define LBBENCH_PROXY_EXCHANGE_H

#include <Python.h>
#include <structmember.h>

/* exchange.py's __slots__, in its (alphabetical) order */
#define EXCHANGE_SLOTS(X)                                                                                    \
    X(attempts) X(backend) X(body_bytes) X(client) X(dispatched_at) X(expect_continue) X(framing) X(head_sent) \
    X(idempotent) X(is_head) X(keep_alive) X(method) X(out) X(out_bytes) X(out_framing) X(out_written) X(pool) \
    X(queue_timer) X(queue_wait_s) X(queued_at) X(reject) X(replayable) X(request_done) X(state) X(status)    \
    X(target) X(tried) X(upstream) X(version11)

typedef struct {
    PyObject_HEAD
#define EXCHANGE_FIELD(name) PyObject *name;
    EXCHANGE_SLOTS(EXCHANGE_FIELD)
#undef EXCHANGE_FIELD
} exchange_t;

/* The defaults that are objects of their own (the rest are ints, bools, None or ()): made once. */
static PyObject *EX_GET, *EX_ROOT, *EX_ZERO_F, *EX_ZERO, *EX_ONE, *EX_EMPTY;

static PyTypeObject ExchangeType;

static PyObject *exchange_of(PyObject *client) {
    exchange_t *ex;
    PyObject *out = PyList_New(0);

    if (out == NULL)
        return NULL;
    ex = PyObject_GC_New(exchange_t, &ExchangeType);
    if (ex == NULL) {
        Py_DECREF(out);
        return NULL;
    }
#define SET(name, value) (Py_INCREF(value), ex->name = (value))
    SET(client, client);
    SET(state, EX_ZERO); /* PARSING */
    SET(method, EX_GET);
    SET(target, EX_ROOT);
    SET(version11, Py_True);
    SET(keep_alive, Py_True);
    SET(framing, EX_ZERO);
    SET(is_head, Py_False);
    SET(idempotent, Py_True);
    SET(expect_continue, Py_False);
    SET(reject, Py_None);
    SET(pool, Py_None);
    ex->out = out;
    SET(out_bytes, EX_ZERO);
    SET(out_written, EX_ZERO);
    SET(replayable, Py_True);
    SET(request_done, Py_False);
    SET(body_bytes, EX_ZERO);
    SET(backend, Py_None);
    SET(upstream, Py_None);
    SET(attempts, EX_ONE);
    SET(tried, EX_EMPTY);
    SET(queued_at, EX_ZERO_F);
    SET(queue_wait_s, EX_ZERO_F);
    SET(queue_timer, Py_None);
    SET(dispatched_at, EX_ZERO_F);
    SET(head_sent, Py_False);
    SET(out_framing, EX_ZERO);
    SET(status, EX_ZERO);
#undef SET
    PyObject_GC_Track(ex);
    return (PyObject *)ex;
}

/* Exchange(client) or Exchange(client=...), as the class: called per request, so by vectorcall
   (no argument tuple) */
static PyObject *exchange_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t n = PyVectorcall_NARGS(nargsf), k = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    (void)type;
    if (n + k != 1 || (k == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "client") != 0)) {
        PyErr_SetString(PyExc_TypeError, "Exchange() takes exactly one argument, client");
        return NULL;
    }
    return exchange_of(args[0]);
}

static PyObject *exchange_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *names[] = {"client", NULL};
    PyObject *client;
    (void)type;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Exchange", names, &client))
        return NULL;
    return exchange_of(client);
}

static int exchange_traverse(exchange_t *ex, visitproc visit, void *arg) {
#define VISIT(name) Py_VISIT(ex->name);
    EXCHANGE_SLOTS(VISIT)
#undef VISIT
    return 0;
}

static int exchange_clear(exchange_t *ex) {
#define CLEAR(name) Py_CLEAR(ex->name);
    EXCHANGE_SLOTS(CLEAR)
#undef CLEAR
    return 0;
}

static void exchange_dealloc(exchange_t *ex) {
    PyObject_GC_UnTrack(ex);
    Py_TRASHCAN_BEGIN(ex, exchange_dealloc)
    exchange_clear(ex);
    PyObject_GC_Del(ex);
    Py_TRASHCAN_END
}

/* T_OBJECT_EX, as the members of a Python class's __slots__: a deleted attribute raises AttributeError */
static PyMemberDef EXCHANGE_MEMBERS[] = {
#define MEMBER(name) {#name, T_OBJECT_EX, offsetof(exchange_t, name), 0, NULL},
    EXCHANGE_SLOTS(MEMBER)
#undef MEMBER
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ExchangeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lbbench.frontends.proxy._heads.Exchange",
    .tp_doc = "One request's trip through the proxy (the C twin of lbbench.frontends.proxy.exchange.Exchange)",
    .tp_basicsize = sizeof(exchange_t),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = exchange_new,
    .tp_vectorcall = exchange_vectorcall,
    .tp_traverse = (traverseproc)exchange_traverse,
    .tp_clear = (inquiry)exchange_clear,
    .tp_dealloc = (destructor)exchange_dealloc,
    .tp_members = EXCHANGE_MEMBERS,
};

/* Add the type to `module`; -1 with an exception set on failure. */
static int exchange_init(PyObject *module) {
    EX_GET = PyUnicode_InternFromString("GET");
    EX_ROOT = PyBytes_FromString("/");
    EX_ZERO_F = PyFloat_FromDouble(0.0);
    EX_ZERO = PyLong_FromLong(0);
    EX_ONE = PyLong_FromLong(1);
    EX_EMPTY = PyTuple_New(0);
    if (EX_GET == NULL || EX_ROOT == NULL || EX_ZERO_F == NULL || EX_ZERO == NULL || EX_ONE == NULL ||
        EX_EMPTY == NULL || PyType_Ready(&ExchangeType) < 0)
        return -1;
    Py_INCREF(&ExchangeType);
    if (PyModule_AddObject(module, "Exchange", (PyObject *)&ExchangeType) < 0) {
        Py_DECREF(&ExchangeType);
        return -1;
    }
    return 0;
}

#endif
