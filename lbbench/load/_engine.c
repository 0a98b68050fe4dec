/* lbbench.load._engine: the load generator's native client (open and closed loop), one epoll thread.
 *
 * Python (lbbench/load/native.py) hands the engine the worker's schedule (absolute CLOCK_MONOTONIC
 * intended times, the clock of time.monotonic()) and starts it; from then on the engine's thread owns
 * every connection and request and never touches a Python object, so it runs without the GIL. Python
 * drains the finished requests every few tens of milliseconds as one bytes object of packed records
 * (RECORD_SIZE bytes each, numpy views them: lbbench.load.native.RECORD), and the interned pod and
 * pod_ip strings as they appear.
 *
 * Behaviour is lbbench.load.client.HttpClient's, event for event, in keepalive:K mode and in close mode
 * (pool 0: every request opens its own connection, which ends with its request; the rules below
 * about the pool do not apply):
 * - the first K requests open the K connections (a request's conn_id, new_conn and sent are set when
 *   its connection is opened: the SYN is its first byte out); later ones take an idle connection,
 *   least recently used first; a request that finds none waits, first come first served;
 * - a connection whose connect fails, that breaks, that answers "Connection: close" or that times
 *   out is dropped, and the next request opens a new one (conn_id base + step * n);
 * - errors: refused, reset (closed or reset before any response byte), timeout (from the intended
 *   time), connect_timeout (from the connect attempt), unreachable, truncated (ended mid-response),
 *   http_5xx, http_4xx, other (a malformed response, an Upgrade: the connection is aborted); a pool
 *   connection still connecting survives its request's timeout; bytes nobody asked for abort the
 *   connection;
 * - responses: one whole plain response in one read is taken by the strict scan shared with
 *   lbbench.load._scan (_http.h); anything else goes through the framer below: a head split over
 *   reads, Content-Length split over reads, chunked (extensions, trailers), bodies delimited by the
 *   connection's end, 1xx interim responses skipped, 204/304 without a body, HTTP/1.0.
 * Open loop: a request never leaves before its intended time (the last microseconds are spun);
 * everything due at a wake-up goes out in one batch; sleeps are epoll_pwait2 timeouts (ns precision),
 * aimed ahead of the send by the tracked median wake-up latency (at most SPIN_BUDGET of the mean gap
 * between sends), and a send due within POLL_NS is waited for by polling epoll instead (on this
 * 2-core VM a timer expiry costs ~20 us: sleeping to each send at 100k req/s took 0.93 of a core, and
 * the engine's thread spent a third of its time in the sleep itself).
 * Whose wait: every connection asks the kernel to stamp what it receives (SO_TIMESTAMPNS), so a request
 * that waited for a busy connection carries `freed`, when the answer that freed that connection had
 * reached the socket. The wait after it is the client's own (it had not read the answer yet); the
 * wait before it is the target's (it had not answered). NaN where unknown (no stamp, a new
 * connection), and the whole wait then counts as the client's.
 * Differences from HttpClient, deliberate: bytes after a complete response in the same read (a server
 * answering twice) end that connection after the request completes (HttpClient's parser would read
 * them as the next response of the same request); a request's lateness reaches the recorder with its
 * record (at its end, or at abort), not when it is issued.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE (64 * 1024) /* one recv */
#define READS_PER_EVENT 16    /* level-triggered: more is read at the next turn */
#define EVENTS 256            /* per epoll wait */
#define HEAD_MAX (64 * 1024)  /* a longer response head is "other" (llhttp's default limit is 80k) */
#define LINE_MAX_ 4096        /* a chunk-size or trailer line */
#define POLL_NS 50000         /* a send due within this is polled for: a timer expiry costs ~20 us here */
#define SPIN_BUDGET 0.05      /* aim ahead of a send by at most this fraction of the mean gap */
#define AIM_STEP_S 1e-6       /* the median wake-up latency's tracking step */
#define RATE_WINDOW 32        /* sends over which the mean gap is taken */
#define USER_SPIN_MAX 2e-5    /* closed loop: spin at most this long for a user's send (worker.py's) */

/* lbbench.load.recorder.ERROR_CODE; ABORTED: dropped by abort() (counted as issued, never done) */
enum { E_OK, E_REFUSED, E_RESET, E_TIMEOUT, E_CONNECT_TIMEOUT, E_UNREACHABLE, E_TRUNCATED, E_5XX, E_4XX, E_OTHER };
#define E_ABORTED (-1)

/* one finished request, as Python reads it (lbbench.load.native.RECORD: the same layout) */
typedef struct {
    double intended, issued, sent, done;
    double freed; /* the answer that freed this request's connection reached the socket (NaN: unknown) */
    double num[HF_NUMS]; /* queue_ms, service_ms, proxy_queue_ms, proxy_upstream_ms; NaN: absent */
    int64_t conn_id;
    int32_t pod, pod_ip, tag; /* pod, pod_ip: interned codes, 0 = "" */
    int16_t status;
    int8_t error, new_conn;
} rec_t;

struct conn;

typedef struct req {
    rec_t r;
    struct conn *conn;
    struct req *prev, *next;   /* outstanding, in issue order = deadline order */
    struct req *wprev, *wnext; /* waiting for a connection */
    uint8_t waiting;
} req_t;

enum { P_HEAD, P_BODY, P_CHUNK_SIZE, P_CHUNK_DATA, P_CHUNK_CRLF, P_TRAILERS, P_EOF_BODY };

typedef struct conn {
    int fd;
    int64_t id;
    uint64_t served;
    uint8_t connecting, idle, dead, got_bytes, length_known, keep_alive;
    uint8_t interim_ended; /* an interim response without keep-alive ("HTTP/1.0 100"): nothing may follow */
    int connect_errno; /* connect() failed at once: reported at the next turn, as asyncio would */
    int phase;
    uint64_t remaining;
    char *buf; /* a head or a line gathered over reads */
    size_t len, cap;
    size_t wsent; /* of the request, when a send took only part of it */
    double connect_deadline;
    double arrived; /* the kernel's receive stamp of the last bytes read, on CLOCK_MONOTONIC (NaN: none) */
    req_t *req;
    struct conn *prev, *next;   /* every open or connecting connection */
    struct conn *iprev, *inext; /* idle, least recently used first */
    struct conn *cprev, *cnext; /* connecting, in open order: connect deadline order */
    struct conn *dnext;         /* dead: freed after the batch of events that killed it */
} conn_t;

typedef struct {
    char **strs; /* code -> string (its own allocation, never moved) */
    uint32_t *lens;
    uint32_t n, cap;
    uint32_t *slots; /* open addressing: code + 1, 0 empty */
    uint32_t nslots;
} interner_t;

typedef struct {
    PyObject_HEAD
    /* configuration */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *request;
    size_t request_len;
    int pool; /* 0: close mode, a new connection per request */
    double connect_timeout, timeout;
    int64_t conn_next, conn_step;
    double *times;
    size_t ntimes;
    /* closed loop: users waiting for their next send, a min-heap on the time (user = tag) */
    int closed_loop;
    double end, think;
    double *heap_at;
    int32_t *heap_user;
    size_t nheap;
    /* the thread */
    int ep, evfd;
    pthread_t thread;
    int started, closed, aborted;
    int stopping;      /* atomic: the thread ends */
    int stop_sending;  /* atomic: no more requests are issued */
    /* the thread's own state (Python's after the thread has ended) */
    size_t next;
    int sending;
    req_t *out_head, *out_tail;
    req_t *w_head, *w_tail;
    conn_t *conns, *i_head, *i_tail, *dead;
    int nconns, nconnecting, nfailed;
    struct conn *c_head, *c_tail; /* the connecting ones (close mode: every request's, so never walk them all) */
    req_t *free_reqs;
    char *rbuf;
    double median_lead, aim_lead, aimed_at;
    int timed_wait;
    int no_pwait2; /* epoll_pwait2 is ENOSYS (a kernel before 5.11, valgrind 3.19): epoll_wait in ms */
    double polling_s; /* spent spinning or polling for the next send with nothing else to do */
    interner_t str[2]; /* pods, pod IPs */
    rec_t *pend;       /* finished in this turn, published at its end */
    size_t npend, cappend;
    int64_t issued_n, outstanding_n;
    double first_issue, last_issue;
    /* shared with Python, under lock */
    pthread_mutex_t lock;
    rec_t *recs, *spare; /* Python copies one while the thread fills the other */
    size_t nrecs, caprecs, capspare;
    int64_t pub_issued, pub_outstanding;
    double pub_first, pub_last, pub_polling;
    int pub_sending_done, failed_errno;
} Engine;

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A kernel receive stamp (CLOCK_REALTIME) on CLOCK_MONOTONIC: both clocks read now, so an NTP step
   between runs does not matter. */
static double stamp_to_mono(const struct timespec *stamp) {
    struct timespec real;
    clock_gettime(CLOCK_REALTIME, &real);
    double ago = (double)(real.tv_sec - stamp->tv_sec) + (double)(real.tv_nsec - stamp->tv_nsec) * 1e-9;
    return mono() - ago;
}

static double thread_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- float(): Python's grammar for the timing values, without Python ------------------------ */

/* 1 and *out set if float(v) accepts v (decimal, underscores between digits, inf/nan, blanks
   around), else 0 */
static int parse_pyfloat(const unsigned char *v, ssize_t n, double *out) {
    char tmp[128];
    size_t k = 0;
    ssize_t i = 0, end = n;
    int digits = 0, prev_digit = 0;
    while (i < end && (v[i] == ' ' || v[i] == '\t'))
        i++;
    while (end > i && (v[end - 1] == ' ' || v[end - 1] == '\t'))
        end--;
    if (end - i <= 0 || end - i >= (ssize_t)sizeof tmp)
        return 0;
    if (v[i] == '+' || v[i] == '-')
        tmp[k++] = (char)v[i++];
    {
        ssize_t rest = end - i;
        const char *words[] = {"inf", "infinity", "nan"};
        for (int w = 0; w < 3; w++) {
            if ((size_t)rest == strlen(words[w]) && http_name_is(v + i, rest, words[w])) {
                double x = w == 2 ? NAN : INFINITY;
                *out = tmp[0] == '-' ? -x : x;
                return 1;
            }
        }
    }
    /* digits [. digits] [e [+-] digits], "_" only between two digits */
    int seen_dot = 0, seen_exp = 0;
    for (; i < end; i++) {
        unsigned char c = v[i];
        if (c >= '0' && c <= '9') {
            tmp[k++] = (char)c;
            digits = 1;
            prev_digit = 1;
        } else if (c == '_') {
            if (!prev_digit || i + 1 >= end || v[i + 1] < '0' || v[i + 1] > '9')
                return 0;
            prev_digit = 0;
        } else if (c == '.' && !seen_dot && !seen_exp) {
            tmp[k++] = '.';
            seen_dot = 1;
            prev_digit = 0;
        } else if ((c == 'e' || c == 'E') && !seen_exp && digits) {
            tmp[k++] = 'e';
            seen_exp = 1;
            digits = 0;
            prev_digit = 0;
            if (i + 1 < end && (v[i + 1] == '+' || v[i + 1] == '-'))
                tmp[k++] = (char)v[++i];
        } else {
            return 0;
        }
    }
    if (!digits)
        return 0;
    tmp[k] = '\0';
    *out = strtod(tmp, NULL);
    return 1;
}

static int num_into(void *ctx, int which, const unsigned char *v, ssize_t n) {
    double x;
    if (parse_pyfloat(v, n, &x))
        ((double *)ctx)[which] = x; /* a rejected value leaves an earlier good one, as float() would */
    return 0;
}

/* ---- interning ------------------------------------------------------------------------------ */

static uint32_t hash_bytes(const unsigned char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 16777619u;
    return h;
}

static int interner_init(interner_t *t) {
    t->cap = 16;
    t->nslots = 64;
    t->strs = calloc(t->cap, sizeof *t->strs);
    t->lens = calloc(t->cap, sizeof *t->lens);
    t->slots = calloc(t->nslots, sizeof *t->slots);
    if (t->strs == NULL || t->lens == NULL || t->slots == NULL)
        return -1;
    t->strs[0] = calloc(1, 1); /* code 0: "" */
    t->n = 1;
    return t->strs[0] == NULL ? -1 : 0;
}

static void interner_free(interner_t *t) {
    for (uint32_t i = 0; i < t->n; i++)
        free(t->strs[i]);
    free(t->strs);
    free(t->lens);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

/* The code of s[0:n]; a new string is added under the lock (Python reads the table). 0 if out of memory. */
static int32_t intern(Engine *e, interner_t *t, const unsigned char *s, size_t n) {
    if (n == 0)
        return 0;
    uint32_t mask = t->nslots - 1, h = hash_bytes(s, n), i = h & mask;
    while (t->slots[i] != 0) {
        uint32_t c = t->slots[i] - 1;
        if (t->lens[c] == n && memcmp(t->strs[c], s, n) == 0)
            return (int32_t)c;
        i = (i + 1) & mask;
    }
    char *copy = malloc(n + 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, s, n);
    copy[n] = '\0';
    pthread_mutex_lock(&e->lock);
    if (t->n == t->cap) {
        char **strs = realloc(t->strs, 2 * t->cap * sizeof *strs);
        if (strs != NULL)
            t->strs = strs;
        uint32_t *lens = realloc(t->lens, 2 * t->cap * sizeof *lens);
        if (lens != NULL)
            t->lens = lens;
        if (strs == NULL || lens == NULL) {
            pthread_mutex_unlock(&e->lock);
            free(copy);
            return 0;
        }
        t->cap *= 2;
    }
    uint32_t code = t->n;
    t->strs[code] = copy;
    t->lens[code] = (uint32_t)n;
    t->n++;
    pthread_mutex_unlock(&e->lock);
    t->slots[i] = code + 1;
    if (2 * t->n > t->nslots) { /* rehash at half full */
        uint32_t ns = t->nslots * 2, *slots = calloc(ns, sizeof *slots);
        if (slots != NULL) {
            for (uint32_t c = 1; c < t->n; c++) {
                uint32_t j = hash_bytes((unsigned char *)t->strs[c], t->lens[c]) & (ns - 1);
                while (slots[j] != 0)
                    j = (j + 1) & (ns - 1);
                slots[j] = c + 1;
            }
            free(t->slots);
            t->slots = slots;
            t->nslots = ns;
        }
    }
    return (int32_t)code;
}

/* ---- requests and connections (the engine thread) ------------------------------------------- */

static void pump(Engine *e);
static void user_done(Engine *e, const rec_t *r);
static void release(Engine *e, conn_t *c);
static void conn_send(Engine *e, conn_t *c, req_t *q);

static int classify(int err, int connecting) {
    switch (err) {
    case ECONNREFUSED:
        return E_REFUSED;
    case ECONNRESET:
    case EPIPE:
    case ECONNABORTED:
        return E_RESET;
    case ETIMEDOUT:
        return connecting ? E_CONNECT_TIMEOUT : E_TIMEOUT;
    case EHOSTUNREACH:
    case ENETUNREACH:
        return E_UNREACHABLE;
    default:
        return E_OTHER;
    }
}

static void push_record(Engine *e, const rec_t *r) {
    if (e->npend == e->cappend) {
        size_t cap = e->cappend ? 2 * e->cappend : 1024;
        rec_t *p = realloc(e->pend, cap * sizeof *p);
        if (p == NULL)
            abort(); /* a lost request would be a dishonest measurement */
        e->pend = p;
        e->cappend = cap;
    }
    e->pend[e->npend++] = *r;
}

/* The turn's records and counters go to Python. */
static void publish(Engine *e) {
    pthread_mutex_lock(&e->lock);
    if (e->npend > 0) {
        if (e->nrecs + e->npend > e->caprecs) {
            size_t cap = e->caprecs ? e->caprecs : 4096;
            while (cap < e->nrecs + e->npend)
                cap *= 2;
            rec_t *p = realloc(e->recs, cap * sizeof *p);
            if (p == NULL)
                abort();
            e->recs = p;
            e->caprecs = cap;
        }
        memcpy(e->recs + e->nrecs, e->pend, e->npend * sizeof *e->pend);
        e->nrecs += e->npend;
        e->npend = 0;
    }
    e->pub_issued = e->issued_n;
    e->pub_outstanding = e->outstanding_n;
    e->pub_first = e->first_issue;
    e->pub_last = e->last_issue;
    e->pub_polling = e->polling_s;
    e->pub_sending_done = !e->sending;
    pthread_mutex_unlock(&e->lock);
}

/* Intrusive doubly linked lists, each through its own pair of fields (a request sits on the outstanding
   list and perhaps the waiting one; a connection on the idle one). */
#define DL_PUSH(head, tail, n, prev, next)                                                                   \
    do {                                                                                                     \
        (n)->next = NULL;                                                                                    \
        (n)->prev = (tail);                                                                                  \
        if (tail) (tail)->next = (n); else (head) = (n);                                                     \
        (tail) = (n);                                                                                        \
    } while (0)
#define DL_UNLINK(head, tail, n, prev, next)                                                                 \
    do {                                                                                                     \
        if ((n)->prev) (n)->prev->next = (n)->next; else (head) = (n)->next;                                 \
        if ((n)->next) (n)->next->prev = (n)->prev; else (tail) = (n)->prev;                                 \
        (n)->prev = (n)->next = NULL;                                                                        \
    } while (0)

static req_t *req_new(Engine *e) {
    req_t *q = e->free_reqs;
    if (q != NULL)
        e->free_reqs = q->next;
    else if ((q = malloc(sizeof *q)) == NULL)
        abort();
    memset(q, 0, sizeof *q);
    return q;
}

static void wait_unlink(Engine *e, req_t *q) {
    if (!q->waiting)
        return;
    q->waiting = 0;
    DL_UNLINK(e->w_head, e->w_tail, q, wprev, wnext);
}

static void wait_push(Engine *e, req_t *q) {
    q->waiting = 1;
    DL_PUSH(e->w_head, e->w_tail, q, wprev, wnext);
}

static req_t *wait_pop(Engine *e) {
    req_t *q = e->w_head;
    wait_unlink(e, q);
    return q;
}

/* A request ends: its record goes out (error E_ABORTED: dropped, done stays NaN). */
static void finish(Engine *e, req_t *q, int error) {
    q->r.error = (int8_t)error;
    if (error != E_ABORTED)
        q->r.done = mono();
    if (q->conn != NULL && q->conn->req == q)
        q->conn->req = NULL;
    wait_unlink(e, q);
    DL_UNLINK(e->out_head, e->out_tail, q, prev, next);
    e->outstanding_n--;
    push_record(e, &q->r);
    q->next = e->free_reqs;
    e->free_reqs = q;
    if (e->closed_loop && error != E_ABORTED)
        user_done(e, &e->pend[e->npend - 1]);
}

static void idle_unlink(Engine *e, conn_t *c) {
    if (!c->idle)
        return;
    c->idle = 0;
    DL_UNLINK(e->i_head, e->i_tail, c, iprev, inext);
}

static void idle_push(Engine *e, conn_t *c) {
    c->idle = 1;
    DL_PUSH(e->i_head, e->i_tail, c, iprev, inext);
}

/* Close a connection for good (its request, if any, is settled or is the caller's to settle). */
static void conn_kill(Engine *e, conn_t *c) {
    if (c->dead)
        return;
    c->dead = 1;
    idle_unlink(e, c);
    if (c->prev) c->prev->next = c->next; else e->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    e->nconns--;
    if (c->connecting) {
        e->nconnecting--;
        DL_UNLINK(e->c_head, e->c_tail, c, cprev, cnext);
        if (c->connect_errno)
            e->nfailed--;
    }
    if (c->req != NULL && c->req->conn == c)
        c->req->conn = NULL;
    c->req = NULL;
    if (c->fd >= 0)
        close(c->fd); /* unread bytes make it a reset, as the transport's abort() */
    c->fd = -1;
    c->dnext = e->dead;
    e->dead = c;
}

static void conn_open(Engine *e, req_t *q) {
    conn_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        abort();
    c->id = e->conn_next;
    e->conn_next += e->conn_step;
    c->next = e->conns;
    if (e->conns) e->conns->prev = c;
    e->conns = c;
    e->nconns++;
    c->connecting = 1;
    e->nconnecting++;
    DL_PUSH(e->c_head, e->c_tail, c, cprev, cnext);
    c->req = q;
    if (q != NULL) {
        q->conn = c;
        q->r.conn_id = c->id;
        q->r.new_conn = 1; /* also when the connect fails */
        if (isnan(q->r.sent))
            q->r.sent = mono(); /* the SYN is this request's first byte out */
    }
    c->connect_deadline = mono() + e->connect_timeout;
    c->arrived = NAN;
    c->fd = socket(e->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd >= 0) {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as uvloop's transports */
        /* whose wait: `freed`. Only for a pool: close mode has no wait for a connection, and each of its
           sockets turning stamps on and off flipped the kernel's netstamp static key (a text patch with
           IPIs to every CPU) so often that its sends stalled for 15-50 ms (perf: kworker in
           static_key_enable/disable). A pool's connections keep it on for the run. */
        if (e->pool > 0)
            setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&e->addr, e->addrlen) == 0 || errno == EINPROGRESS) {
            struct epoll_event ev = {EPOLLOUT, {.ptr = c}};
            if (epoll_ctl(e->ep, EPOLL_CTL_ADD, c->fd, &ev) == 0)
                return;
        }
    }
    c->connect_errno = errno ? errno : EIO; /* failed at once: settled at the next turn */
    e->nfailed++;
}

static void connect_failed(Engine *e, conn_t *c, int error) {
    req_t *q = c->req;
    conn_kill(e, c);
    if (q != NULL)
        finish(e, q, error);
    pump(e);
}

static void connected(Engine *e, conn_t *c) {
    c->connecting = 0;
    e->nconnecting--;
    DL_UNLINK(e->c_head, e->c_tail, c, cprev, cnext);
    struct epoll_event ev = {EPOLLIN | EPOLLRDHUP, {.ptr = c}};
    epoll_ctl(e->ep, EPOLL_CTL_MOD, c->fd, &ev);
    req_t *q = c->req;
    c->req = NULL;
    if (q != NULL)
        conn_send(e, c, q);
    else if (e->pool == 0)
        conn_kill(e, c); /* close mode: its request timed out while it came up */
    else
        release(e, c);
}

/* The connection ended or broke (err 0: an orderly end) while it was ours. */
static void conn_lost(Engine *e, conn_t *c, int err) {
    req_t *q = c->req;
    int got = c->got_bytes;
    conn_kill(e, c);
    if (q != NULL)
        finish(e, q, got ? E_TRUNCATED : err == 0 ? E_RESET : classify(err, 0));
    pump(e);
}

static void conn_send(Engine *e, conn_t *c, req_t *q) {
    c->req = q;
    q->conn = c;
    q->r.conn_id = c->id;
    q->r.new_conn = c->served == 0;
    if (isnan(q->r.sent))
        q->r.sent = mono();
    c->served++;
    c->got_bytes = c->length_known = c->interim_ended = 0;
    c->keep_alive = 1;
    c->phase = P_HEAD;
    c->len = 0;
    c->wsent = 0;
    ssize_t n = send(c->fd, e->request, e->request_len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n == (ssize_t)e->request_len)
        return;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        conn_lost(e, c, errno);
        return;
    }
    c->wsent = n > 0 ? (size_t)n : 0; /* the rest when it is writable */
    struct epoll_event ev = {EPOLLIN | EPOLLRDHUP | EPOLLOUT, {.ptr = c}};
    epoll_ctl(e->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void flush_request(Engine *e, conn_t *c) {
    while (c->wsent > 0 && c->wsent < e->request_len) {
        ssize_t n = send(c->fd, e->request + c->wsent, e->request_len - c->wsent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            conn_lost(e, c, errno);
            return;
        }
        c->wsent += (size_t)n;
    }
    c->wsent = 0;
    struct epoll_event ev = {EPOLLIN | EPOLLRDHUP, {.ptr = c}};
    epoll_ctl(e->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* A keep-alive connection is free again: serve the next waiting request, or go idle. */
static void release(Engine *e, conn_t *c) {
    if (e->w_head != NULL) {
        req_t *q = wait_pop(e);
        q->r.sent = mono();
        q->r.freed = c->arrived;
        conn_send(e, c, q);
        return;
    }
    idle_push(e, c);
}

/* Waiting requests go to new connections until the pool is full, then to idle ones. */
static void pump(Engine *e) {
    while (e->w_head != NULL) {
        if (e->nconns < e->pool)
            conn_open(e, wait_pop(e));
        else if (e->i_head != NULL) {
            conn_t *c = e->i_head;
            idle_unlink(e, c);
            release(e, c);
        } else
            return;
    }
}

static void issue(Engine *e, double intended, double now, int32_t tag) {
    req_t *q = req_new(e);
    rec_t *r = &q->r;
    r->intended = intended;
    r->issued = now;
    r->sent = r->done = r->freed = NAN;
    for (int i = 0; i < HF_NUMS; i++)
        r->num[i] = NAN;
    r->conn_id = -1;
    r->tag = tag;
    DL_PUSH(e->out_head, e->out_tail, q, prev, next);
    e->outstanding_n++;
    if (e->issued_n++ == 0)
        e->first_issue = now;
    e->last_issue = now;
    if (e->pool == 0) {
        conn_open(e, q); /* close mode: its own connection */
    } else if (e->i_head != NULL && e->w_head == NULL && e->nconns >= e->pool) {
        conn_t *c = e->i_head; /* a free pooled connection: it leaves at once */
        idle_unlink(e, c);
        r->sent = now;
        conn_send(e, c, q);
    } else {
        wait_push(e, q);
        pump(e);
    }
}

/* ---- closed loop: users ----------------------------------------------------------------------- */

static void heap_push(Engine *e, double at, int32_t user) {
    size_t i = e->nheap++; /* never more than the users: the heap was sized for them */
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (e->heap_at[parent] <= at)
            break;
        e->heap_at[i] = e->heap_at[parent];
        e->heap_user[i] = e->heap_user[parent];
        i = parent;
    }
    e->heap_at[i] = at;
    e->heap_user[i] = user;
}

static void heap_pop(Engine *e) {
    double at = e->heap_at[--e->nheap];
    int32_t user = e->heap_user[e->nheap];
    size_t i = 0, n = e->nheap;
    for (;;) {
        size_t k = 2 * i + 1;
        if (k >= n)
            break;
        if (k + 1 < n && e->heap_at[k + 1] < e->heap_at[k])
            k++;
        if (e->heap_at[k] >= at)
            break;
        e->heap_at[i] = e->heap_at[k];
        e->heap_user[i] = e->heap_user[k];
        i = k;
    }
    if (n > 0) {
        e->heap_at[i] = at;
        e->heap_user[i] = user;
    }
}

/* A user's request ended (not aborted): it thinks, then sends again, before the end. With no think
   time the next request is issued at once (its intended time, the answer's, has passed), so it takes
   the connection that answer frees, as worker.Users does. */
static void user_done(Engine *e, const rec_t *r) {
    double at = r->done + e->think;
    if (!e->sending || LOAD(e->stop_sending) || !(at < e->end))
        return;
    if (e->think <= 0.0)
        issue(e, at, mono(), r->tag);
    else
        heap_push(e, at, r->tag);
}

static void response_complete(Engine *e, conn_t *c) {
    req_t *q = c->req;
    if (q == NULL)
        return;
    int status = q->r.status;
    int reuse = c->keep_alive && e->pool > 0;
    finish(e, q, status >= 500 ? E_5XX : status >= 400 ? E_4XX : E_OK);
    if (reuse) {
        release(e, c);
    } else {
        conn_kill(e, c); /* "Connection: close": its end; nothing is unread, so a FIN */
        pump(e);
    }
}

/* A malformed response: "other", the connection aborted. */
static void bad_response(Engine *e, conn_t *c) {
    req_t *q = c->req;
    conn_kill(e, c);
    if (q != NULL)
        finish(e, q, E_OTHER);
    pump(e);
}

static void timed_out(Engine *e, req_t *q) {
    conn_t *c = q->conn;
    int on_conn = c != NULL && c->req == q, connecting = c != NULL && c->connecting;
    finish(e, q, E_TIMEOUT);
    if (on_conn) {
        if (!connecting || e->pool == 0)
            conn_kill(e, c); /* a pool connection still coming up stays useful */
        pump(e);
    }
}

/* ---- the response framer ------------------------------------------------------------------- */

typedef struct {
    int status, minor, keep_alive, chunked, te, upgrade;
    long long length;
    const unsigned char *text[HF_TEXTS];
    ssize_t text_len[HF_TEXTS];
    double num[HF_NUMS];
} head_t;

static int token_is(const unsigned char *v, ssize_t n, const char *lower) {
    return (size_t)n == strlen(lower) && http_name_is(v, n, lower);
}

/* Parse a whole head d[0:n] (ending in the empty line) as llhttp would take it: 0 ok, -1 malformed. */
static int parse_head(const unsigned char *d, ssize_t n, head_t *h) {
    ssize_t p, i;
    memset(h, 0, sizeof *h);
    h->length = -1;
    for (i = 0; i < HF_NUMS; i++)
        h->num[i] = NAN;
    if (n < 14 || memcmp(d, "HTTP/", 5) != 0 || d[5] < '0' || d[5] > '9' || d[6] != '.' || d[7] < '0' ||
        d[7] > '9' || d[8] != ' ')
        return -1;
    if (d[5] != '1')
        return -1;
    h->minor = d[7] - '0';
    for (i = 9; i < 12; i++)
        if (d[i] < '0' || d[i] > '9')
            return -1;
    h->status = (d[9] - '0') * 100 + (d[10] - '0') * 10 + (d[11] - '0');
    if (d[12] != ' ' && d[12] != '\r')
        return -1;
    for (p = 12; p < n && d[p] != '\r'; p++)
        if ((d[p] < 0x20 && d[p] != '\t') || d[p] == 0x7f)
            return -1;
    p += 2; /* CRLF: the caller checked every LF follows a CR */
    int conn_close = 0, conn_ka = 0;
    while (p + 1 < n && d[p] != '\r') {
        ssize_t name = p, v, ve;
        while (p < n && HTTP_TCHAR[d[p]])
            p++;
        if (p == name || p >= n || d[p] != ':')
            return -1; /* also obs-fold (a line starting with a blank) */
        ssize_t name_len = p - name;
        p++;
        while (p < n && (d[p] == ' ' || d[p] == '\t'))
            p++;
        v = p;
        while (p < n && d[p] != '\r') {
            if ((d[p] < 0x20 && d[p] != '\t') || d[p] == 0x7f)
                return -1;
            p++;
        }
        ve = p;
        while (ve > v && (d[ve - 1] == ' ' || d[ve - 1] == '\t'))
            ve--;
        p += 2;
        int k = http_kind(d + name, name_len);
        if (k >= 0 && k < HF_TEXTS) {
            h->text[k] = d + v;
            h->text_len[k] = ve - v;
        } else if (k >= HF_TEXTS && k < HF_N) {
            num_into(h->num, k - HF_TEXTS, d + v, ve - v);
        } else if (k == HK_LENGTH) {
            if (h->length >= 0 || ve == v || ve - v > 18)
                return -1; /* "Duplicate Content-Length" */
            h->length = 0;
            for (i = v; i < ve; i++) {
                if (d[i] < '0' || d[i] > '9')
                    return -1;
                h->length = h->length * 10 + (d[i] - '0');
            }
        } else if (k == HK_TRANSFER_ENCODING || k == HK_CONNECTION) {
            /* comma-separated tokens; for Transfer-Encoding the last one decides "chunked" */
            ssize_t t = v;
            if (k == HK_TRANSFER_ENCODING)
                h->te = 1, h->chunked = 0;
            while (t < ve) {
                ssize_t ts, te;
                while (t < ve && (d[t] == ' ' || d[t] == '\t' || d[t] == ','))
                    t++;
                ts = t;
                while (t < ve && d[t] != ',')
                    t++;
                te = t;
                while (te > ts && (d[te - 1] == ' ' || d[te - 1] == '\t'))
                    te--;
                if (te == ts)
                    continue;
                if (k == HK_TRANSFER_ENCODING) {
                    h->chunked = token_is(d + ts, te - ts, "chunked");
                } else if (token_is(d + ts, te - ts, "close")) {
                    conn_close = 1;
                } else if (token_is(d + ts, te - ts, "keep-alive")) {
                    conn_ka = 1;
                } else if (token_is(d + ts, te - ts, "upgrade")) {
                    h->upgrade = 1;
                }
            }
        }
    }
    if (h->te && h->length >= 0)
        return -1; /* "Content-Length can't be present with Transfer-Encoding" */
    h->keep_alive = h->minor >= 1 ? !conn_close : conn_ka && !conn_close;
    return 0;
}

/* Gather bytes up to and including the next LF into c->buf; the number of bytes taken from d, or -1
   for a malformed line (a bare LF, too long). *line_done says whether the line is complete. */
static ssize_t gather_line(conn_t *c, const unsigned char *d, size_t n, size_t max, int *line_done) {
    size_t i = 0;
    *line_done = 0;
    while (i < n) {
        unsigned char ch = d[i++];
        if (c->len == c->cap) {
            size_t cap = c->cap ? 2 * c->cap : 256;
            char *b = realloc(c->buf, cap);
            if (b == NULL)
                return -1;
            c->buf = b;
            c->cap = cap;
        }
        c->buf[c->len++] = (char)ch;
        if (ch == '\n') {
            if (c->len < 2 || c->buf[c->len - 2] != '\r')
                return -1; /* httptools: "Missing expected CR" */
            *line_done = 1;
            return (ssize_t)i;
        }
        if (c->len >= max)
            return -1;
    }
    return (ssize_t)i;
}

static void take_head_fields(Engine *e, req_t *q, const unsigned char *const *text, const ssize_t *text_len,
                             const double *num) {
    q->r.pod = text[HF_POD] ? intern(e, &e->str[0], text[HF_POD], (size_t)text_len[HF_POD]) : 0;
    q->r.pod_ip = text[HF_POD_IP] ? intern(e, &e->str[1], text[HF_POD_IP], (size_t)text_len[HF_POD_IP]) : 0;
    memcpy(q->r.num, num, sizeof q->r.num);
}

/* The head in c->buf[0:len] is complete: 1 the response is complete, 0 read on, -1 malformed, 2 an
   interim response that ends the connection (llhttp takes nothing after it: httptools then fails). */
static int on_head(Engine *e, conn_t *c) {
    head_t h;
    if (parse_head((unsigned char *)c->buf, (ssize_t)c->len, &h) < 0)
        return -1;
    c->len = 0;
    if (h.status >= 100 && h.status < 200 && h.status != 101)
        return h.keep_alive ? 0 : 2; /* an interim response: the real one follows */
    req_t *q = c->req;
    q->r.status = (int16_t)h.status;
    take_head_fields(e, q, h.text, h.text_len, h.num);
    if (h.status == 101)
        return -1; /* a protocol switch nobody asked for (httptools: HttpParserUpgrade) */
    c->keep_alive = (uint8_t)h.keep_alive;
    if (h.status == 204 || h.status == 304)
        return 1;
    if (h.te) {
        c->length_known = 1;
        c->phase = h.chunked ? P_CHUNK_SIZE : P_EOF_BODY; /* not chunked: until the end, which the
                                                             client calls truncated, as it does */
        return 0;
    }
    if (h.length >= 0) {
        c->length_known = 1;
        if (h.length == 0)
            return 1;
        c->phase = P_BODY;
        c->remaining = (uint64_t)h.length;
        return 0;
    }
    c->keep_alive = 0;
    c->phase = P_EOF_BODY; /* delimited by the connection's end */
    return 0;
}

/* 1 the response is complete, 0 read on, -1 malformed */
static int on_line(conn_t *c) {
    const unsigned char *l = (unsigned char *)c->buf;
    size_t n = c->len - 2, i = 0;
    c->len = 0;
    if (c->phase == P_CHUNK_CRLF) {
        if (n != 0)
            return -1;
        c->phase = P_CHUNK_SIZE;
        return 0;
    }
    if (c->phase == P_TRAILERS)
        return n == 0 ? 1 : 0;
    uint64_t size = 0;
    for (; i < n; i++) {
        unsigned char ch = l[i];
        int dgt = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                  : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
        if (dgt < 0)
            break;
        if (i >= 15)
            return -1;
        size = size * 16 + (uint64_t)dgt;
    }
    if (i == 0 || (i < n && l[i] != ';' && l[i] != ' ' && l[i] != '\t'))
        return -1;
    if (size == 0) {
        c->phase = P_TRAILERS;
    } else {
        c->phase = P_CHUNK_DATA;
        c->remaining = size;
    }
    return 0;
}

/* Bytes for connection c. */
static void feed(Engine *e, conn_t *c, const unsigned char *d, size_t n) {
    req_t *q = c->req;
    if (q == NULL) {
        conn_kill(e, c); /* bytes nobody asked for: the connection is out of step */
        pump(e);
        return;
    }
    if (c->interim_ended) {
        bad_response(e, c);
        return;
    }
    if (!c->got_bytes && c->phase == P_HEAD && c->len == 0) {
        http_head h;
        double num[HF_NUMS] = {NAN, NAN, NAN, NAN};
        c->got_bytes = 1;
        if (http_scan_whole(d, (ssize_t)n, &h, num_into, num) == 1) { /* the common case: all here */
            q->r.status = (int16_t)h.status;
            take_head_fields(e, q, h.text, h.text_len, num);
            c->keep_alive = h.keep_alive != 0;
            response_complete(e, c);
            return;
        }
    }
    c->got_bytes = 1;
    while (n > 0) {
        int done = 0;
        if (c->phase == P_HEAD) {
            /* lines until the empty one; "HTTP/" first, or it is no response at all (httptools fails
               at the first odd byte) */
            size_t i = 0;
            int line_done = 1, whole = 0;
            while (line_done && !whole && i < n) {
                ssize_t took = gather_line(c, d + i, n - i, HEAD_MAX, &line_done);
                if (took < 0 || (line_done && c->len == 2)) { /* malformed, or an empty line first */
                    bad_response(e, c);
                    return;
                }
                i += (size_t)took;
                whole = line_done && c->len > 4 && memcmp(c->buf + c->len - 4, "\r\n\r\n", 4) == 0;
            }
            if (memcmp(c->buf, "HTTP/", c->len < 5 ? c->len : 5) != 0) {
                bad_response(e, c);
                return;
            }
            d += i;
            n -= i;
            if (!whole)
                return; /* the head is not all here yet */
            done = on_head(e, c);
        } else if (c->phase == P_BODY || c->phase == P_CHUNK_DATA) {
            size_t take = n < c->remaining ? n : (size_t)c->remaining;
            c->remaining -= take;
            d += take;
            n -= take;
            if (c->remaining == 0) {
                if (c->phase == P_BODY)
                    done = 1;
                else
                    c->phase = P_CHUNK_CRLF;
            }
        } else if (c->phase == P_EOF_BODY) {
            return; /* discarded until the end */
        } else { /* P_CHUNK_SIZE, P_CHUNK_CRLF, P_TRAILERS: lines */
            int line_done;
            ssize_t took = gather_line(c, d, n, LINE_MAX_, &line_done);
            if (took < 0) {
                bad_response(e, c);
                return;
            }
            d += took;
            n -= (size_t)took;
            if (line_done)
                done = on_line(c);
        }
        if (done == 2) {
            if (n > 0) {
                bad_response(e, c);
                return;
            }
            c->interim_ended = 1;
            return;
        }
        if (done < 0) {
            bad_response(e, c);
            return;
        }
        if (done > 0) {
            if (n > 0)
                c->keep_alive = 0; /* more than the response: out of step, not reused */
            response_complete(e, c);
            return;
        }
    }
}

static void on_eof(Engine *e, conn_t *c) {
    if (c->req != NULL && c->phase == P_EOF_BODY && !c->length_known) {
        c->keep_alive = 0; /* a body delimited by the connection's end: that end completes it */
        response_complete(e, c);
        return;
    }
    conn_lost(e, c, 0);
}

/* recv, and the kernel's receive stamp of the last bytes read into c->arrived */
static ssize_t recv_stamped(Engine *e, conn_t *c) {
    struct iovec iov = {e->rbuf, READ_SIZE};
    union {
        char buf[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    ssize_t n = recvmsg(c->fd, &msg, 0);
    if (n <= 0)
        return n;
    c->arrived = NAN; /* timestamps are turned on lazily by the kernel: the first reads may lack one */
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec stamp;
            memcpy(&stamp, CMSG_DATA(cm), sizeof stamp);
            c->arrived = stamp_to_mono(&stamp);
        }
    }
    return n;
}

static void on_readable(Engine *e, conn_t *c) {
    for (int i = 0; i < READS_PER_EVENT; i++) {
        ssize_t n = recv_stamped(e, c);
        if (n > 0) {
            feed(e, c, (unsigned char *)e->rbuf, (size_t)n);
            if (c->dead || n < READ_SIZE)
                return;
        } else if (n == 0) {
            on_eof(e, c);
            return;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;
        } else {
            conn_lost(e, c, errno);
            return;
        }
    }
}

static void on_event(Engine *e, conn_t *c, uint32_t ev) {
    if (c->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err != 0)
            connect_failed(e, c, classify(err, 1));
        else if (ev & EPOLLOUT)
            connected(e, c);
        return;
    }
    if ((ev & EPOLLOUT) && c->wsent > 0) {
        flush_request(e, c);
        if (c->dead)
            return;
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        on_readable(e, c);
}

/* Timeouts (from the intended time, in issue order) and connect timeouts and failures. */
static void sweep(Engine *e, double now) {
    while (e->out_head != NULL && e->out_head->r.intended + e->timeout <= now)
        timed_out(e, e->out_head);
    if (e->nfailed > 0) { /* connects that failed at once (rare): settled now, a turn later */
        conn_t *c = e->c_head, *last = e->c_tail; /* those opened meanwhile wait for the next turn */
        while (c != NULL) {
            conn_t *next = c->cnext;
            int at_end = c == last;
            if (c->connect_errno)
                connect_failed(e, c, classify(c->connect_errno, 1));
            if (at_end)
                break;
            c = next;
        }
    }
    while (e->c_head != NULL && e->c_head->connect_deadline <= now) /* in deadline order */
        connect_failed(e, e->c_head, E_CONNECT_TIMEOUT);
}

static void free_dead(Engine *e) {
    while (e->dead != NULL) {
        conn_t *c = e->dead;
        e->dead = c->dnext;
        free(c->buf);
        free(c);
    }
}

/* Issue every request due now (spinning to one due within aim_lead); the time after. */
static double send_due_users(Engine *e, double now) {
    if (now >= e->end) {
        e->sending = 0;
        return now;
    }
    while (e->nheap > 0) {
        double t = e->heap_at[0];
        if (t > now) {
            if (t - now > e->aim_lead)
                break;
            double spin0 = now;
            while ((now = mono()) < t) /* never before the intended time */
                ;
            e->polling_s += now - spin0;
        }
        int32_t user = e->heap_user[0];
        heap_pop(e);
        issue(e, t, now, user);
        now = mono();
    }
    return now;
}

static double send_due(Engine *e, double now) {
    if (!e->sending)
        return now;
    if (LOAD(e->stop_sending)) {
        e->sending = 0;
        return now;
    }
    if (e->closed_loop)
        return send_due_users(e, now);
    const double *times = e->times;
    size_t i = e->next, n = e->ntimes;
    while (i < n) {
        double t = times[i];
        if (t > now) {
            if (t - now > e->aim_lead)
                break;
            double spin0 = now;
            while ((now = mono()) < t) /* never before the intended time */
                ;
            e->polling_s += now - spin0;
        }
        issue(e, t, now, -1);
        now = mono();
        i++;
    }
    e->next = i;
    if (i >= n)
        e->sending = 0;
    return now;
}

/* How long the next wait may be, in ns (-1: until an event). */
static long long next_wait_ns(Engine *e, double now) {
    double until = INFINITY;
    e->timed_wait = 0;
    if (e->sending && e->closed_loop) {
        until = e->end; /* sending ends then */
        if (e->nheap > 0 && e->heap_at[0] < until) {
            double t = e->heap_at[0];
            if (t - now < POLL_NS * 1e-9)
                return 0;
            e->aim_lead = e->median_lead < USER_SPIN_MAX ? e->median_lead : USER_SPIN_MAX;
            until = e->aimed_at = t - e->aim_lead;
            e->timed_wait = 1;
        }
    } else if (e->sending) {
        size_t i = e->next, n = e->ntimes;
        double t = e->times[i];
        if (t - now < POLL_NS * 1e-9)
            return 0;
        double ahead = e->times[i + RATE_WINDOW < n ? i + RATE_WINDOW : n - 1] - e->times[i ? i - 1 : 0];
        double budget = SPIN_BUDGET * ahead / RATE_WINDOW;
        e->aim_lead = e->median_lead < budget ? e->median_lead : budget;
        until = e->aimed_at = t - e->aim_lead;
        e->timed_wait = 1;
    }
    if (e->out_head != NULL && e->out_head->r.intended + e->timeout < until) {
        until = e->out_head->r.intended + e->timeout;
        e->timed_wait = 0;
    }
    if (e->nfailed > 0)
        return 0;
    if (e->c_head != NULL && e->c_head->connect_deadline < until) { /* the earliest connect deadline */
        until = e->c_head->connect_deadline;
        e->timed_wait = 0;
    }
    if (isinf(until))
        return -1;
    double wait = until - now;
    if (wait <= 0)
        return 0;
    return (long long)(wait * 1e9);
}

/* Wait for events at most `ns` (< 0: no limit). epoll_pwait2 has ns precision; where the kernel (or
   valgrind) lacks it, epoll_wait's timeout is rounded up to whole milliseconds: a wake-up never
   early, but up to 1 ms late, which shows as lateness (recorded, and judged like any other). */
static int wait_events(Engine *e, struct epoll_event *evs, long long ns) {
    if (!e->no_pwait2) {
        struct timespec ts = {ns / 1000000000LL, ns % 1000000000LL};
        int n = epoll_pwait2(e->ep, evs, EVENTS, ns < 0 ? NULL : &ts, NULL);
        if (n >= 0 || errno != ENOSYS)
            return n;
        e->no_pwait2 = 1;
    }
    long long ms = ns < 0 ? -1 : (ns + 999999LL) / 1000000LL;
    return epoll_wait(e->ep, evs, EVENTS, ms > INT_MAX ? INT_MAX : (int)ms);
}

static void *engine_main(void *arg) {
    Engine *e = arg;
    struct epoll_event evs[EVENTS];
    /* epoll timeouts are hrtimers with the thread's timer slack (50 us by default): 1 ns, so a
       wake-up aimed at a send comes when asked (timerfd, the Python dispatcher's, has no slack) */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    int polled = 0; /* the last turn only polled: this one is likely to, its CPU time is taken */
    while (!LOAD(e->stopping)) {
        double cpu0 = polled ? thread_cpu() : 0.0;
        int64_t issued0 = e->issued_n;
        double now = send_due(e, mono());
        sweep(e, now);
        free_dead(e);
        publish(e);
        long long ns = next_wait_ns(e, now);
        int n = wait_events(e, evs, ns);
        if (n < 0 && errno != EINTR) {
            pthread_mutex_lock(&e->lock);
            e->failed_errno = errno;
            pthread_mutex_unlock(&e->lock);
            break;
        }
        int idle = ns == 0 && n == 0 && e->issued_n == issued0; /* it only polled for the next send */
        if (idle && polled)
            e->polling_s += thread_cpu() - cpu0; /* CPU time: a preemption meanwhile is no polling */
        polled = idle;
        if (e->timed_wait && n == 0) { /* track the median wake-up latency: a step toward it */
            double lead = e->median_lead + (mono() > e->aimed_at ? AIM_STEP_S : -AIM_STEP_S);
            e->median_lead = lead > 0.0 ? lead : 0.0;
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c == NULL) {
                uint64_t v;
                ssize_t r = read(e->evfd, &v, sizeof v);
                (void)r;
            } else if (!c->dead) {
                on_event(e, c, evs[i].events);
            }
        }
        free_dead(e);
    }
    publish(e);
    return NULL;
}

/* ---- Python side --------------------------------------------------------------------------- */

static void stop_thread(Engine *e) {
    if (!e->started)
        return;
    __atomic_store_n(&e->stopping, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    ssize_t r = write(e->evfd, &one, sizeof one);
    (void)r;
    Py_BEGIN_ALLOW_THREADS
    pthread_join(e->thread, NULL);
    Py_END_ALLOW_THREADS
    e->started = 0;
}

/* The thread is gone: drop every outstanding request (records with E_ABORTED), close everything. */
static int64_t drop_all(Engine *e) {
    int64_t dropped = 0;
    while (e->out_head != NULL) {
        finish(e, e->out_head, E_ABORTED);
        dropped++;
    }
    while (e->conns != NULL)
        conn_kill(e, e->conns);
    free_dead(e);
    e->sending = 0;
    publish(e);
    return dropped;
}

static void engine_free(Engine *e) {
    stop_thread(e);
    if (!e->aborted) {
        e->aborted = 1;
        drop_all(e);
    }
    while (e->free_reqs != NULL) {
        req_t *q = e->free_reqs;
        e->free_reqs = q->next;
        free(q);
    }
    if (e->ep >= 0)
        close(e->ep);
    if (e->evfd >= 0)
        close(e->evfd);
    e->ep = e->evfd = -1;
    free(e->rbuf);
    free(e->times);
    free(e->heap_at);
    free(e->heap_user);
    e->heap_at = NULL;
    e->heap_user = NULL;
    free(e->request);
    free(e->pend);
    free(e->recs);
    free(e->spare);
    e->spare = NULL;
    e->rbuf = NULL;
    e->times = NULL;
    e->request = NULL;
    e->pend = NULL;
    e->recs = NULL;
    e->npend = e->nrecs = e->cappend = e->caprecs = e->capspare = 0;
    interner_free(&e->str[0]);
    interner_free(&e->str[1]);
    e->closed = 1;
}

static void Engine_dealloc(Engine *e) {
    if (!e->closed)
        engine_free(e);
    pthread_mutex_destroy(&e->lock);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"host", "port", "request", "pool", "connect_timeout_s", "timeout_s", "conn_id_base",
                             "conn_id_step", NULL};
    const char *host, *request;
    Py_ssize_t request_len;
    int port, pool;
    double connect_timeout, timeout;
    long long base, step;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "siy#iddLL:Engine", kwlist, &host, &port, &request, &request_len,
                                     &pool, &connect_timeout, &timeout, &base, &step))
        return NULL;
    if (pool < 0 || request_len < 1 || port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "the engine needs a pool size (0: close mode), a request and a port");
        return NULL;
    }
    Engine *e = (Engine *)type->tp_alloc(type, 0);
    if (e == NULL)
        return NULL;
    pthread_mutex_init(&e->lock, NULL);
    e->ep = e->evfd = -1;
    e->closed = 1; /* until set up: dealloc then only frees */
    struct sockaddr_in *a4 = (struct sockaddr_in *)&e->addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&e->addr;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        e->addrlen = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        e->addrlen = sizeof *a6;
    } else {
        PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
        goto fail;
    }
    e->closed = 0;
    e->request = malloc((size_t)request_len);
    e->rbuf = malloc(READ_SIZE);
    if (e->request == NULL || e->rbuf == NULL || interner_init(&e->str[0]) < 0 || interner_init(&e->str[1]) < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    memcpy(e->request, request, (size_t)request_len);
    e->request_len = (size_t)request_len;
    e->pool = pool;
    e->connect_timeout = connect_timeout;
    e->timeout = timeout;
    e->conn_next = base;
    e->conn_step = step;
    e->first_issue = e->last_issue = e->pub_first = e->pub_last = NAN;
    /* LBBENCH_ENGINE_MS_WAITS=1: the fallback for kernels without epoll_pwait2, so tests run it here */
    const char *ms_waits = getenv("LBBENCH_ENGINE_MS_WAITS");
    e->no_pwait2 = ms_waits != NULL && strcmp(ms_waits, "1") == 0;
    e->ep = epoll_create1(EPOLL_CLOEXEC);
    e->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = {EPOLLIN, {.ptr = NULL}}; /* data NULL: the wake-up */
    if (e->ep < 0 || e->evfd < 0 || epoll_ctl(e->ep, EPOLL_CTL_ADD, e->evfd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    return (PyObject *)e;
fail:
    Py_DECREF(e);
    return NULL;
}

static int check_open(Engine *e) {
    if (e->closed || e->aborted) {
        PyErr_SetString(PyExc_ValueError, "the engine is closed");
        return -1;
    }
    return 0;
}

static PyObject *start_thread(Engine *e);

static PyObject *Engine_start_open(Engine *e, PyObject *arg) {
    Py_buffer b;
    if (check_open(e) < 0)
        return NULL;
    if (e->started || e->times != NULL) {
        PyErr_SetString(PyExc_ValueError, "the engine has been started");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (b.len % sizeof(double) != 0) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "times: a buffer of float64");
        return NULL;
    }
    e->ntimes = (size_t)b.len / sizeof(double);
    e->times = malloc(b.len > 0 ? (size_t)b.len : 1);
    if (e->times == NULL) {
        PyBuffer_Release(&b);
        return PyErr_NoMemory();
    }
    memcpy(e->times, b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    for (size_t i = 1; i < e->ntimes; i++)
        if (!(e->times[i] >= e->times[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "times must be sorted");
            return NULL;
        }
    e->sending = e->ntimes > 0;
    return start_thread(e);
}

static PyObject *start_thread(Engine *e) {
    e->pub_sending_done = !e->sending;
    /* The thread takes no signals: Python's handlers run in the main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&e->thread, NULL, engine_main, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    e->started = 1;
    Py_RETURN_NONE;
}

static PyObject *Engine_start_closed(Engine *e, PyObject *args) {
    Py_buffer b;
    double end, think;
    if (check_open(e) < 0)
        return NULL;
    if (e->started || e->times != NULL || e->heap_at != NULL) {
        PyErr_SetString(PyExc_ValueError, "the engine has been started");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*dd:start_closed", &b, &end, &think))
        return NULL;
    size_t n = (size_t)b.len / sizeof(double);
    if (b.len % sizeof(double) != 0 || n > INT32_MAX) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "starts: a buffer of float64");
        return NULL;
    }
    e->heap_at = malloc((n ? n : 1) * sizeof *e->heap_at);
    e->heap_user = malloc((n ? n : 1) * sizeof *e->heap_user);
    if (e->heap_at == NULL || e->heap_user == NULL) {
        PyBuffer_Release(&b);
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < n; i++)
        heap_push(e, ((double *)b.buf)[i], (int32_t)i);
    PyBuffer_Release(&b);
    e->closed_loop = 1;
    e->end = end;
    e->think = think;
    e->sending = 1;
    return start_thread(e);
}

static PyObject *wake(Engine *e) {
    if (e->started) {
        uint64_t one = 1;
        ssize_t r = write(e->evfd, &one, sizeof one);
        (void)r;
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_stop_sending(Engine *e, PyObject *Py_UNUSED(ignored)) {
    __atomic_store_n(&e->stop_sending, 1, __ATOMIC_RELEASE);
    return wake(e);
}

/* (records, issued, outstanding, sending_done, first_issue, last_issue), one snapshot: a request not
   counted as outstanding has its record in this drain or an earlier one. The records' buffer is
   swapped for the spare under the lock and copied outside it: the thread never waits for the copy
   (a drain of 20 ms at 150k req/s is 260 kB, and this thread may be preempted while it copies). */
static PyObject *Engine_drain(Engine *e, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&e->lock);
    long long issued = e->pub_issued, outstanding = e->pub_outstanding;
    double first = e->pub_first, last = e->pub_last;
    int done = e->pub_sending_done, failed = e->failed_errno;
    rec_t *taken = e->recs;
    size_t n = e->nrecs, cap = e->caprecs;
    e->recs = e->spare;
    e->caprecs = e->capspare;
    e->nrecs = 0;
    e->spare = NULL;
    e->capspare = 0;
    pthread_mutex_unlock(&e->lock);
    PyObject *recs = PyBytes_FromStringAndSize((const char *)taken, (Py_ssize_t)(n * sizeof(rec_t)));
    pthread_mutex_lock(&e->lock);
    if (e->spare == NULL) { /* the next drain's buffer for the thread */
        e->spare = taken;
        e->capspare = cap;
    } else {
        free(taken);
    }
    pthread_mutex_unlock(&e->lock);
    if (recs == NULL)
        return NULL;
    if (failed && n == 0) { /* the records finished before the failure are handed over first */
        Py_DECREF(recs);
        errno = failed;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(NLLNdd)", recs, issued, outstanding, PyBool_FromLong(done), first, last);
}

static PyObject *Engine_polling_seconds(Engine *e, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&e->lock);
    double polling = e->pub_polling;
    pthread_mutex_unlock(&e->lock);
    return PyFloat_FromDouble(polling);
}

static PyObject *Engine_strings(Engine *e, PyObject *args) {
    int which;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "in:strings", &which, &start))
        return NULL;
    if (which < 0 || which > 1 || start < 0) {
        PyErr_SetString(PyExc_ValueError, "strings(0 for pods or 1 for pod IPs, start >= 0)");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL || e->closed)
        return out;
    interner_t *t = &e->str[which];
    pthread_mutex_lock(&e->lock);
    for (uint32_t i = (uint32_t)start; i < t->n; i++) {
        PyObject *s = PyUnicode_DecodeLatin1(t->strs[i], t->lens[i], NULL);
        if (s == NULL || PyList_Append(out, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(out);
            out = NULL;
            break;
        }
        Py_DECREF(s);
    }
    pthread_mutex_unlock(&e->lock);
    return out;
}

static PyObject *Engine_abort(Engine *e, PyObject *Py_UNUSED(ignored)) {
    if (e->closed || e->aborted)
        return PyLong_FromLong(0);
    stop_thread(e);
    e->aborted = 1;
    return PyLong_FromLongLong(drop_all(e));
}

static PyObject *Engine_close(Engine *e, PyObject *Py_UNUSED(ignored)) {
    if (!e->closed)
        engine_free(e);
    Py_RETURN_NONE;
}

static PyObject *Engine_get_closed(Engine *e, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(e->closed);
}

static PyObject *Engine_get_running(Engine *e, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(e->started);
}

static PyMethodDef Engine_methods[] = {
    {"start_open", (PyCFunction)Engine_start_open, METH_O,
     "start_open(times): start the thread, issuing one request at each time (float64 buffer, sorted, "
     "CLOCK_MONOTONIC seconds)"},
    {"start_closed", (PyCFunction)Engine_start_closed, METH_VARARGS,
     "start_closed(starts, end, think_s): start the thread, user i first sending at starts[i] (float64 "
     "buffer); each user sends, waits for the answer, thinks think_s and sends again, until end"},
    {"stop_sending", (PyCFunction)Engine_stop_sending, METH_NOARGS,
     "issue no more requests (those in flight go on)"},
    {"drain", (PyCFunction)Engine_drain, METH_NOARGS,
     "(records finished since the last drain, packed; issued, outstanding, sending_done, first_issue, "
     "last_issue), as of the thread's last turn; OSError once the thread has stopped on an error and "
     "every record it made has been handed over"},
    {"polling_seconds", (PyCFunction)Engine_polling_seconds, METH_NOARGS,
     "the thread's time spent spinning or polling for the next send with nothing else to do (CPU time "
     "a cheap timer would have slept through)"},
    {"strings", (PyCFunction)Engine_strings, METH_VARARGS,
     "strings(which, start): the interned pods (0) or pod IPs (1) from code `start` on"},
    {"abort", (PyCFunction)Engine_abort, METH_NOARGS,
     "stop the thread; every outstanding request becomes a record with error -1; close all connections; "
     "the number dropped"},
    {"close", (PyCFunction)Engine_close, METH_NOARGS, "abort and free everything (idempotent)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Engine_getset[] = {
    {"closed", (getter)Engine_get_closed, NULL, "whether close() has run", NULL},
    {"running", (getter)Engine_get_running, NULL, "whether the thread runs", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lbbench.load._engine.Engine",
    .tp_doc = "The native load client: a thread issuing a schedule or running users (see the module's source).",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Engine_new,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
};

static struct PyModuleDef engine_module = {
    PyModuleDef_HEAD_INIT, "_engine", "The load generator's native client (see _engine.c).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__engine(void) {
    http_init();
    if (PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&engine_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddIntConstant(m, "RECORD_SIZE", (long)sizeof(rec_t)) < 0 ||
        PyModule_AddIntConstant(m, "ABORTED", E_ABORTED) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
