/* userspace-dnat's native relay engine: one epoll thread splicing TCP connection pairs.
 *
 * Python (lbbench/frontends/dnat/native.py) accepts and picks the endpoint; it hands the accepted
 * client fd and the endpoint's address to Engine.relay, which starts the non-blocking connect and
 * queues the pair for the engine's thread. That thread owns every pair from then on and never
 * touches a Python object, so it runs without the GIL; Python only reads the counters (atomics).
 *
 * Behaviour is the Python relay's (relay.py), event for event:
 * - connect failure: connect_failures += 1, the client is reset (SO_LINGER 0, close);
 * - client bytes that arrive while the pod connection is being set up are held, at most
 *   PENDING_MAX of them (then the client is not read), and flushed once it is up;
 * - flow control: a destination whose send would block keeps the rest (at most one read's worth)
 *   and its source is not read until it has drained (the EPOLLOUT edge);
 * - half-close: EOF from one side is passed on as shutdown(SHUT_WR) of the other once what is
 *   buffered for it is flushed; both directions done: both sockets are closed;
 * - an error or RST on one side resets the other.
 *
 * Per keep-alive chunk: one recv into the thread's buffer, one send. epoll is edge-triggered, so
 * a pair is registered once and never modified (no epoll_ctl for flow control); a read shorter
 * than asked means the socket is drained (TCP returns all it has), unless the peer's FIN is known
 * to be queued (EPOLLRDHUP), then it is read to the EOF. Measured under wrk keep-alive to nginx: two
 * recv, two send and a fraction of an epoll_wait per request, ~0.25 us of user time (the Python
 * relay's: 1.2 us) and ~7.4 us of system time (the loopback sends waking the peers, as HAProxy's).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define PENDING_MAX (64 * 1024) /* as relay.PENDING_MAX */
#define READ_SIZE (128 * 1024)  /* one recv; also the most a blocked destination holds */
#define EVENTS 64               /* per epoll_wait */
#define BUDGET 16               /* reads per pair per turn: a fast pair must not starve the others */

#define CLIENT 0
#define POD 1

struct conn;

typedef struct side {
    struct conn *c;
    int fd;
    uint8_t idx;          /* CLIENT or POD */
    uint8_t readable;     /* edge seen, not yet read to EAGAIN (or a short read) */
    uint8_t rdhup;        /* its FIN is queued: read on to the EOF */
    uint8_t eof;          /* read its EOF */
    uint8_t shut_pending; /* the other side's EOF: SHUT_WR once `out` is flushed */
    uint8_t shut_done;
    char *out;            /* bytes for this fd that it did not take yet */
    size_t out_off, out_len, out_cap;
} side_t;

typedef struct conn {
    side_t s[2];
    struct conn *prev, *next; /* the engine's open pairs (under lock) */
    struct conn *qnext;       /* handover queue */
    struct conn *rnext;       /* run list: more to read after its budget */
    struct conn *dnext;       /* dead list: freed after the batch that killed it */
    uint8_t connecting, dead, on_run;
} conn_t;

typedef struct {
    PyObject_HEAD
    int ep, evfd;
    pthread_t thread;
    int started, closed, stopping;
    pthread_mutex_t lock; /* queue and open list */
    conn_t *queue, *queue_tail;
    conn_t *open;
    conn_t *run, *dead; /* the thread's own */
    char *rbuf;
    Py_buffer loads; /* the shared Loads array, with shared accept */
    int64_t *load_slot;
    /* counters: written with atomics, read by Python */
    uint64_t accepted, rejected, connect_failures, bytes_up, bytes_down;
    int64_t active;
} Engine;

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define ADD(x, n) __atomic_fetch_add(&(x), (n), __ATOMIC_RELAXED)

static void active_add(Engine *e, int64_t n) {
    ADD(e->active, n);
    int64_t *slot = __atomic_load_n(&e->load_slot, __ATOMIC_ACQUIRE);
    if (slot != NULL) ADD(*slot, n); /* the siblings' acceptors read it */
}

static void close_reset(int fd) {
    struct linger lg = {1, 0}; /* close() sends RST, as the kernel's REJECT or a dead pod */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* ---- the engine thread ------------------------------------------------------------------- */

static void conn_kill(Engine *e, conn_t *c, int reset_client, int reset_pod) {
    if (c->dead) return;
    c->dead = 1;
    pthread_mutex_lock(&e->lock); /* unlinked before its fds close: Engine.nodelay reads them */
    if (c->prev) c->prev->next = c->next; else e->open = c->next;
    if (c->next) c->next->prev = c->prev;
    pthread_mutex_unlock(&e->lock);
    /* counted before the closes: whoever sees the FIN or RST and then asks must find it counted */
    active_add(e, -1);
    if (reset_client) close_reset(c->s[CLIENT].fd); else close(c->s[CLIENT].fd);
    if (reset_pod) close_reset(c->s[POD].fd); else close(c->s[POD].fd);
    c->dnext = e->dead; /* its events later in this batch are skipped, then it is freed */
    e->dead = c;
}

/* `bad` failed (error, RST): the other side is reset, as relay._Side.connection_lost does. */
static void conn_fail(Engine *e, conn_t *c, side_t *bad) {
    conn_kill(e, c, bad->idx != CLIENT, bad->idx != POD);
}

static void count_sent(Engine *e, side_t *dst, size_t n) {
    /* one writer thread: a relaxed load+store, no locked add on the hot path */
    uint64_t *ctr = dst->idx == POD ? &e->bytes_up : &e->bytes_down;
    __atomic_store_n(ctr, LOAD(*ctr) + n, __ATOMIC_RELAXED);
}

/* Send what is buffered for dst. 1: all of it, 0: some is left (EPOLLOUT will come), -1: failed. */
static int flush_out(Engine *e, conn_t *c, side_t *dst) {
    while (dst->out_len > 0) {
        ssize_t n = send(dst->fd, dst->out + dst->out_off, dst->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            conn_fail(e, c, dst);
            return -1;
        }
        count_sent(e, dst, (size_t)n);
        dst->out_off += (size_t)n;
        dst->out_len -= (size_t)n;
    }
    free(dst->out); /* blocked sends are rare with keep-alive: hold no memory while idle */
    dst->out = NULL;
    dst->out_off = dst->out_cap = 0;
    return 1;
}

static int hold(side_t *dst, const char *data, size_t n) {
    free(dst->out); /* an unused pending buffer */
    dst->out = malloc(n);
    if (dst->out == NULL) return -1;
    memcpy(dst->out, data, n);
    dst->out_off = 0;
    dst->out_len = dst->out_cap = n;
    return 0;
}

/* Move src -> dst as far as the sockets allow. 0: done for now; 1: budget spent, more to read;
 * -1: the pair is dead. */
static int pump(Engine *e, conn_t *c, side_t *src, side_t *dst) {
    int connecting = c->connecting && dst->idx == POD;
    if (dst->out_len > 0 && !connecting) {
        int r = flush_out(e, c, dst);
        if (r < 0) return -1;
        if (r == 0) return 0; /* flow control: src waits until dst drains */
    }
    int reads = 0;
    while (src->readable && !src->eof) {
        if (++reads > BUDGET) return 1;
        ssize_t n;
        size_t want;
        if (connecting) { /* hold it for the pod, bounded */
            if (dst->out_cap == 0) {
                dst->out = malloc(PENDING_MAX);
                if (dst->out == NULL) { conn_fail(e, c, src); return -1; }
                dst->out_cap = PENDING_MAX;
            }
            want = PENDING_MAX - dst->out_len;
            if (want == 0) break; /* not read until the pod connection is up */
            n = recv(src->fd, dst->out + dst->out_len, want, MSG_DONTWAIT);
            if (n > 0) dst->out_len += (size_t)n;
        } else {
            want = READ_SIZE;
            n = recv(src->fd, e->rbuf, want, MSG_DONTWAIT);
            if (n > 0) {
                ssize_t w = send(dst->fd, e->rbuf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (w < 0) {
                    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                        conn_fail(e, c, dst);
                        return -1;
                    }
                    w = 0;
                }
                if (w > 0) count_sent(e, dst, (size_t)w);
                if (w < n) { /* dst is full: keep the rest, stop reading src until it drains */
                    if (hold(dst, e->rbuf + w, (size_t)(n - w)) < 0) { conn_fail(e, c, dst); return -1; }
                    if ((size_t)n < want && !src->rdhup) src->readable = 0;
                    break;
                }
            }
        }
        if (n > 0) {
            if ((size_t)n < want && !src->rdhup) src->readable = 0; /* drained */
        } else if (n == 0) {
            src->eof = 1;
            src->readable = 0;
            dst->shut_pending = 1;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            src->readable = 0;
        } else if (errno != EINTR) {
            conn_fail(e, c, src);
            return -1;
        }
    }
    if (dst->shut_pending && !dst->shut_done && dst->out_len == 0 && !connecting) {
        shutdown(dst->fd, SHUT_WR); /* an error here (the pod is gone) shows as EPOLLERR */
        dst->shut_done = 1;
    }
    return 0;
}

static void progress(Engine *e, conn_t *c) {
    int up = pump(e, c, &c->s[CLIENT], &c->s[POD]);
    if (up < 0) return;
    int down = pump(e, c, &c->s[POD], &c->s[CLIENT]);
    if (down < 0) return;
    side_t *a = &c->s[CLIENT], *b = &c->s[POD];
    if (a->eof && b->eof && a->shut_done && b->shut_done) { /* both directions done */
        conn_kill(e, c, 0, 0);
        return;
    }
    if ((up > 0 || down > 0) && !c->on_run) {
        c->on_run = 1;
        c->rnext = e->run;
        e->run = c;
    }
}

static void pod_connected(Engine *e, conn_t *c, uint32_t ev) {
    int err = 0;
    socklen_t len = sizeof err;
    /* EPOLLOUT alone: connected (no getsockopt, one syscall less per connection) */
    if ((ev & (EPOLLERR | EPOLLHUP)) && getsockopt(c->s[POD].fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if ((ev & EPOLLERR) && err == 0) err = ECONNREFUSED; /* the error was taken already: still a failure */
    if (err != 0) {
        ADD(e->connect_failures, 1);
        conn_kill(e, c, 1, 0);
        return;
    }
    c->connecting = 0; /* progress() flushes what the client sent meanwhile, and its EOF */
    side_t *pod = &c->s[POD];
    if (pod->out_len == 0 && pod->out != NULL) { /* an empty hold buffer: no 64 KiB kept per idle pair */
        free(pod->out);
        pod->out = NULL;
        pod->out_off = pod->out_cap = 0;
    }
}

static void on_event(Engine *e, side_t *s, uint32_t ev) {
    conn_t *c = s->c;
    if (c->connecting && s->idx == POD) {
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        pod_connected(e, c, ev);
        if (c->dead) return;
    } else if (ev & EPOLLERR) {
        conn_fail(e, c, s);
        return;
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) s->readable = 1;
    if (ev & (EPOLLRDHUP | EPOLLHUP)) s->rdhup = 1;
    progress(e, c);
}

static void take_handovers(Engine *e) {
    uint64_t v;
    ssize_t r = read(e->evfd, &v, sizeof v); /* before taking the queue: a later push writes again */
    (void)r;
    pthread_mutex_lock(&e->lock);
    conn_t *c = e->queue;
    e->queue = e->queue_tail = NULL;
    for (conn_t *p = c; p != NULL; p = p->qnext) {
        p->prev = NULL;
        p->next = e->open;
        if (e->open) e->open->prev = p;
        e->open = p;
    }
    pthread_mutex_unlock(&e->lock);
    while (c != NULL) {
        conn_t *next = c->qnext;
        int ok = 1;
        for (int i = 0; i < 2 && ok; i++) {
            struct epoll_event ev = {EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, {.ptr = &c->s[i]}};
            ok = epoll_ctl(e->ep, EPOLL_CTL_ADD, c->s[i].fd, &ev) == 0;
        }
        if (!ok) conn_kill(e, c, 1, 1); /* readiness now shows as the first events */
        c = next;
    }
}

static void run_more(Engine *e) {
    conn_t *c = e->run;
    e->run = NULL;
    while (c != NULL) {
        conn_t *next = c->rnext;
        c->on_run = 0;
        if (!c->dead) progress(e, c);
        c = next;
    }
}

static void free_dead(Engine *e) {
    while (e->dead != NULL) {
        conn_t *c = e->dead;
        e->dead = c->dnext;
        free(c->s[0].out);
        free(c->s[1].out);
        free(c);
    }
}

static void *engine_main(void *arg) {
    Engine *e = arg;
    struct epoll_event evs[EVENTS];
    while (!__atomic_load_n(&e->stopping, __ATOMIC_ACQUIRE)) {
        int n = epoll_wait(e->ep, evs, EVENTS, e->run != NULL ? 0 : -1);
        if (n < 0 && errno != EINTR) break;
        for (int i = 0; i < n; i++) {
            side_t *s = evs[i].data.ptr;
            if (s == NULL) take_handovers(e);
            else if (!s->c->dead) on_event(e, s, evs[i].events);
        }
        run_more(e);
        free_dead(e);
    }
    return NULL;
}

/* ---- Python side ------------------------------------------------------------------------- */

static void engine_shutdown(Engine *e) {
    if (e->closed) return;
    e->closed = 1;
    if (e->started) {
        __atomic_store_n(&e->stopping, 1, __ATOMIC_RELEASE);
        uint64_t one = 1;
        ssize_t r = write(e->evfd, &one, sizeof one);
        (void)r;
        Py_BEGIN_ALLOW_THREADS
        pthread_join(e->thread, NULL);
        Py_END_ALLOW_THREADS
        e->started = 0;
    }
    /* the thread is gone: everything is ours, no lock needed */
    for (conn_t *c = e->queue; c != NULL;) {
        conn_t *next = c->qnext;
        c->prev = NULL;
        c->next = e->open;
        e->open = c;
        c = next;
    }
    e->queue = e->queue_tail = NULL;
    for (conn_t *c = e->open; c != NULL;) {
        conn_t *next = c->next;
        close(c->s[CLIENT].fd);
        close(c->s[POD].fd);
        free(c->s[0].out);
        free(c->s[1].out);
        free(c);
        active_add(e, -1);
        c = next;
    }
    e->open = NULL;
    e->run = NULL;
    free_dead(e);
    if (e->ep >= 0) close(e->ep);
    if (e->evfd >= 0) close(e->evfd);
    e->ep = e->evfd = -1;
    free(e->rbuf);
    e->rbuf = NULL;
    if (e->load_slot != NULL) {
        e->load_slot = NULL;
        PyBuffer_Release(&e->loads);
    }
}

static void Engine_dealloc(Engine *e) {
    engine_shutdown(e);
    pthread_mutex_destroy(&e->lock);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Engine", kwlist)) return NULL;
    Engine *e = (Engine *)type->tp_alloc(type, 0);
    if (e == NULL) return NULL;
    e->ep = e->evfd = -1;
    pthread_mutex_init(&e->lock, NULL);
    e->closed = 1; /* until the thread runs: dealloc then only frees */
    e->rbuf = malloc(READ_SIZE);
    e->ep = epoll_create1(EPOLL_CLOEXEC);
    e->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->rbuf == NULL || e->ep < 0 || e->evfd < 0) goto fail;
    struct epoll_event ev = {EPOLLIN, {.ptr = NULL}}; /* data NULL: the handover queue */
    if (epoll_ctl(e->ep, EPOLL_CTL_ADD, e->evfd, &ev) < 0) goto fail;
    /* The thread takes no signals: Python's handlers run in the main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&e->thread, NULL, engine_main, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errno = rc;
        goto fail;
    }
    e->started = 1;
    e->closed = 0;
    return (PyObject *)e;
fail:
    PyErr_SetFromErrno(PyExc_OSError);
    e->closed = 0;
    engine_shutdown(e);
    Py_DECREF(e);
    return NULL;
}

static int check_open(Engine *e) {
    if (e->closed) {
        PyErr_SetString(PyExc_ValueError, "the relay engine is closed");
        return -1;
    }
    return 0;
}

static PyObject *Engine_accept(Engine *e, PyObject *arg) {
    int lfd;
    if (!PyArg_Parse(arg, "i:accept", &lfd)) return NULL;
    if (check_open(e) < 0) return NULL;
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) return PyLong_FromLong(fd);
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) return PyLong_FromLong(-1);
        return PyErr_SetFromErrno(PyExc_OSError); /* e.g. EMFILE: it stays queued */
    }
}

static PyObject *Engine_reject(Engine *e, PyObject *arg) {
    int fd;
    if (!PyArg_Parse(arg, "i:reject", &fd)) return NULL;
    ADD(e->accepted, 1);
    ADD(e->rejected, 1);
    close_reset(fd);
    Py_RETURN_NONE;
}

static PyObject *Engine_relay(Engine *e, PyObject *args) {
    int fd, port;
    const char *host;
    if (!PyArg_ParseTuple(args, "isi:relay", &fd, &host, &port)) return NULL;
    if (check_open(e) < 0) {
        close(fd);
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t slen;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (port < 1 || port > 65535) goto bad_address;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        slen = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        slen = sizeof *v6;
    } else {
        goto bad_address;
    }
    ADD(e->accepted, 1);
    active_add(e, 1);
    int one = 1; /* fd is non-blocking: Engine.accept made it so */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as uvloop's transports */
    int pod = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int connecting = 0;
    if (pod >= 0) {
        setsockopt(pod, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(pod, (struct sockaddr *)&ss, slen) < 0) {
            if (errno == EINPROGRESS) connecting = 1;
            else { close(pod); pod = -1; }
        }
    }
    if (pod < 0) { /* refused at once (or no socket): the client is reset, as on a late failure */
        ADD(e->connect_failures, 1);
        active_add(e, -1);
        close_reset(fd);
        Py_RETURN_FALSE;
    }
    conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(pod);
        active_add(e, -1);
        close_reset(fd);
        return PyErr_NoMemory();
    }
    c->connecting = (uint8_t)connecting;
    for (int i = 0; i < 2; i++) {
        c->s[i].c = c;
        c->s[i].idx = (uint8_t)i;
    }
    c->s[CLIENT].fd = fd;
    c->s[POD].fd = pod;
    /* The thread registers it: it must own the pair from its first event (it may free it). */
    pthread_mutex_lock(&e->lock);
    int wake = e->queue == NULL;
    if (e->queue_tail) e->queue_tail->qnext = c; else e->queue = c;
    e->queue_tail = c;
    pthread_mutex_unlock(&e->lock);
    if (wake) {
        uint64_t v = 1;
        ssize_t r = write(e->evfd, &v, sizeof v);
        (void)r;
    }
    Py_RETURN_TRUE;
bad_address:
    close_reset(fd);
    PyErr_Format(PyExc_ValueError, "not an IP address and port: %s:%d", host, port);
    return NULL;
}

static PyObject *Engine_share_loads(Engine *e, PyObject *args) {
    PyObject *obj;
    Py_ssize_t index;
    if (!PyArg_ParseTuple(args, "On:share_loads", &obj, &index)) return NULL;
    if (check_open(e) < 0) return NULL;
    if (e->load_slot != NULL) {
        PyErr_SetString(PyExc_ValueError, "the engine already keeps a loads array");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (view.itemsize != 8 || view.format == NULL || strcmp(view.format, "q") != 0 || index < 0 ||
        index >= view.len / 8 || ((uintptr_t)view.buf & 7) != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "loads must be an aligned, writable 'q' array holding the index");
        return NULL;
    }
    e->loads = view;
    int64_t *slot = (int64_t *)view.buf + index;
    ADD(*slot, LOAD(e->active)); /* the pairs already open count too */
    __atomic_store_n(&e->load_slot, slot, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *Engine_stats(Engine *e, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{s:K,s:L,s:K,s:K,s:K,s:K}",
                         "accepted", (unsigned long long)LOAD(e->accepted),
                         "active", (long long)LOAD(e->active),
                         "rejected", (unsigned long long)LOAD(e->rejected),
                         "connect_failures", (unsigned long long)LOAD(e->connect_failures),
                         "bytes_up", (unsigned long long)LOAD(e->bytes_up),
                         "bytes_down", (unsigned long long)LOAD(e->bytes_down));
}

static PyObject *Engine_nodelay(Engine *e, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    pthread_mutex_lock(&e->lock); /* the thread unlinks a pair before closing its fds */
    for (conn_t *c = e->open; c != NULL; c = c->next) {
        int v[2] = {-1, -1};
        for (int i = 0; i < 2; i++) {
            socklen_t len = sizeof v[i];
            if (getsockopt(c->s[i].fd, IPPROTO_TCP, TCP_NODELAY, &v[i], &len) < 0) v[i] = -1;
        }
        PyObject *t = Py_BuildValue("(ii)", v[0] != 0, v[1] != 0);
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            pthread_mutex_unlock(&e->lock);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(t);
    }
    pthread_mutex_unlock(&e->lock);
    return out;
}

static PyObject *Engine_close(Engine *e, PyObject *Py_UNUSED(ignored)) {
    engine_shutdown(e);
    Py_RETURN_NONE;
}

static PyObject *Engine_get_closed(Engine *e, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(e->closed);
}

static PyMethodDef Engine_methods[] = {
    {"accept", (PyCFunction)Engine_accept, METH_O,
     "accept(listen_fd) -> fd, or -1 if none is queued (non-blocking, close-on-exec)"},
    {"reject", (PyCFunction)Engine_reject, METH_O, "reject(fd): count it and reset it (no endpoints)"},
    {"relay", (PyCFunction)Engine_relay, METH_VARARGS,
     "relay(fd, host, port) -> bool: take the client fd (non-blocking, as accept() returns it), connect to "
     "host:port and splice the two "
     "(False: refused at once, the client was reset)"},
    {"share_loads", (PyCFunction)Engine_share_loads, METH_VARARGS,
     "share_loads(counts, index): keep the open-pair count in counts[index] too (shared accept)"},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS, "the counters, as a dict"},
    {"nodelay", (PyCFunction)Engine_nodelay, METH_NOARGS,
     "TCP_NODELAY of (client, pod) for each open pair (for tests)"},
    {"close", (PyCFunction)Engine_close, METH_NOARGS,
     "stop the thread, close every pair's sockets (idempotent)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Engine_getset[] = {
    {"closed", (getter)Engine_get_closed, NULL, "whether close() has run", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lbbench.frontends.dnat._crelay.Engine",
    .tp_doc = "A thread relaying TCP connection pairs (see the module's source).",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Engine_new,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
};

static struct PyModuleDef crelay_module = {
    PyModuleDef_HEAD_INIT, "_crelay", "userspace-dnat's native relay engine (see _crelay.c).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__crelay(void) {
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&crelay_module);
    if (m == NULL) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddIntConstant(m, "PENDING_MAX", PENDING_MAX) < 0 ||
        PyModule_AddIntConstant(m, "READ_SIZE", READ_SIZE) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
