/* getaddrinfo / getnameinfo off the loop thread: the module functions
 * _loop.getaddrinfo(loop, host, port, family=0, type=0, proto=0, flags=0) and
 * _loop.getnameinfo(loop, sockaddr, flags=0), each returning a Future of the
 * loop; loop.py's Loop.getaddrinfo/getnameinfo coroutines await them.
 * Arguments, results and errors are those of socket.getaddrinfo /
 * socket.getnameinfo of the running Python (the same libc calls, made with
 * the same converted arguments).
 *
 * Why our own threads rather than libuv's pool: a libuv request must not
 * outlive its uv_loop_t (the pool thread posts the result into the loop), so
 * a loop with a lookup in flight could only close by waiting for the
 * resolver, holding the GIL, for as long as the resolver takes (seconds).
 * Here a request only reaches its loop through a DnsChannel under the pool
 * mutex, so close() just detaches it and returns at once, as asyncio's does.
 *
 * Owns: the resolver pool (process-wide: up to DNS_POOL_MAX_THREADS detached
 * threads started on demand, a FIFO of queued requests, one mutex + condvar),
 * each loop's DnsChannel (loop->dns, made at its first lookup), and the
 * process-wide cache of socket objects below (the module refuses
 * subinterpreters, as sock_ops.c's names do).
 *
 * Request lifecycle:
 *   1. the arguments are checked and converted on the calling (loop) thread
 *      exactly as the socket module does; getnameinfo also turns the numeric
 *      (host, port) into a sockaddr there (AI_NUMERICHOST: no lookup);
 *   2. a DnsRequest is malloc'd with copies of the arguments and a strong
 *      reference to the Future, linked into its channel's `requests` (GIL),
 *      counted in loop->active_io (so the loop polls while it is pending) and
 *      queued for the pool (DNS_QUEUED);
 *   3. a pool thread takes it (DNS_RUNNING), calls getaddrinfo/getnameinfo
 *      without any lock, then, under the pool mutex, stores the outcome,
 *      appends it to its channel's `done` list (DNS_DONE) and wakes the loop
 *      with the channel's uv_async;
 *   4. on the loop thread (GIL first: the loop may have released it to poll)
 *      the channel takes its whole `done` list and, unless the Future is
 *      already done (cancelled) or the loop closed, sets its result or
 *      exception; then drops the reference and frees the request.
 * Closing (dns_close, from loop_core.c's close/dealloc): under the pool mutex
 * every request of the loop is detached (channel = NULL); the closer frees
 * those it holds (DNS_DONE, DNS_ORPHANED); a queued or running one is freed
 * by the pool thread that meets it detached (without a lookup if it had not
 * started).  The closer drops the Futures' references; the pool never touches
 * a Python object or a loop's memory after the detach.  Nothing waits.
 * Fork: a pthread_atfork handler holds the pool mutex across fork() and
 * resets the pool in the child (no threads, empty queue).  The child's copy of
 * a loop (loop_core.c: loop_after_fork) gets a new uv_async, its queued or
 * running requests become DNS_ORPHANED (no thread will finish them), results
 * already posted are delivered as usual; dns_resume() (when the child runs
 * that loop) queues the orphans again if their Future still waits and frees
 * the others.
 */
#include "loop.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#define DNS_POOL_MAX_THREADS 8

typedef struct DnsChannel DnsChannel;
typedef struct DnsRequest DnsRequest;

typedef enum { DNS_QUEUED, DNS_RUNNING, DNS_DONE, DNS_ORPHANED } DnsState;

struct DnsRequest {
    /* the call: written before the request is queued, read-only afterwards */
    char is_nameinfo;
    char *host;                        /* getaddrinfo: malloc'd copies, NULL for None */
    char *port;
    struct addrinfo hints;
    struct sockaddr_storage address;   /* getnameinfo */
    socklen_t address_length;
    int flags;
    /* the outcome: stored under the pool mutex together with DNS_DONE */
    int status;                        /* 0 or the EAI_* code */
    int error_number;                  /* errno, for EAI_SYSTEM */
    struct addrinfo *result;           /* getaddrinfo */
    char hostname[NI_MAXHOST];         /* getnameinfo */
    char service[NI_MAXSERV];
    /* pool mutex */
    DnsState state;
    DnsChannel *channel;               /* NULL once detached by close */
    DnsRequest *queue_next;            /* the pool's queue or the channel's done list */
    /* GIL (loop thread) */
    PyObject *future;                  /* strong */
    DnsRequest *prev, *next;           /* the channel's requests */
};

/* One per loop that resolved something: how results reach that loop. */
struct DnsChannel {
    LoopObject *loop;                  /* borrowed: the loop owns its channel */
    uv_async_t *async;                 /* malloc'd: freed by its close callback */
    DnsRequest *requests;              /* GIL: every request not yet delivered */
    Py_ssize_t orphans;                /* GIL: requests in DNS_ORPHANED (after fork) */
    DnsRequest *done_head, *done_tail; /* pool mutex: results waiting for the loop */
};

static struct {
    pthread_mutex_t mutex;
    pthread_cond_t wakeup;             /* a request was queued */
    DnsRequest *head, *tail;           /* DNS_QUEUED requests, FIFO */
    int queued;                        /* how many */
    int threads, idle;
    int atfork_registered;             /* GIL */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0, 0, 0};

/* Process-wide, like sock_ops.c's names: the module refuses subinterpreters. */
static PyObject *gaierror_type;      /* socket.gaierror */
static PyObject *address_family;     /* socket.AddressFamily */
static PyObject *socket_kind;        /* socket.SocketKind */
static PyObject *family_members;     /* int -> AddressFamily member, or the int */
static PyObject *kind_members;       /* int -> SocketKind member, or the int */
static PyObject *s_done, *s_set_result, *s_set_exception;

/* ---- errors ---- */

/* The exception socket.getaddrinfo/getnameinfo raise for an EAI_* code:
 * gaierror(code, gai_strerror(code)), or OSError(errno) for EAI_SYSTEM. */
static PyObject *
resolve_error(int code, int error_number)
{
#ifdef EAI_SYSTEM
    if (code == EAI_SYSTEM) {
        return PyObject_CallFunction(PyExc_OSError, "is", error_number, strerror(error_number));
    }
#endif
    return PyObject_CallFunction(gaierror_type, "is", code, gai_strerror(code));
}

/* fut.set_exception(exc) / fut.set_result(value); steals `value`, which may
 * be NULL with a Python exception set (that exception is set instead).
 * Returns -1 with an exception set if the future refused. */
static int
complete_future(PyObject *future, PyObject *value, int is_exception)
{
    if (value == NULL) {
        value = compat_fetch_exception();
        is_exception = 1;
    }
    PyObject *r = PyObject_CallMethodOneArg(future, is_exception ? s_set_exception : s_set_result,
                                            value);
    Py_DECREF(value);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* ---- results ---- */

/* socket's _intenum_converter: the enum member for value, else the int. */
static PyObject *
enum_member(PyObject *enum_type, PyObject *cache, int value)
{
    PyObject *key = PyLong_FromLong(value);
    if (key == NULL) {
        return NULL;
    }
    PyObject *member = PyDict_GetItemWithError(cache, key);
    if (member != NULL) {
        Py_DECREF(key);
        return Py_NewRef(member);
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    member = PyObject_CallOneArg(enum_type, key);
    if (member == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
            Py_DECREF(key);
            return NULL;
        }
        PyErr_Clear();
        member = Py_NewRef(key);
    }
    if (PyDict_SetItem(cache, key, member) < 0) {
        Py_CLEAR(member);
    }
    Py_DECREF(key);
    return member;
}

static PyObject *
ip_text(int family, const void *address)
{
    char text[INET6_ADDRSTRLEN];
    if (inet_ntop(family, address, text, sizeof(text)) == NULL) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyUnicode_FromString(text);
}

/* A sockaddr as the socket module formats it: (host, port) for IPv4,
 * (host, port, flowinfo, scope_id) for IPv6, the path for AF_UNIX (bytes in
 * the abstract namespace), (family, sa_data) for anything else. */
static PyObject *
sockaddr_to_object(const struct sockaddr *addr, socklen_t length)
{
    if (length == 0) {
        Py_RETURN_NONE;
    }
    switch (addr->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)addr;
        PyObject *host = ip_text(AF_INET, &in4->sin_addr);
        return host ? Py_BuildValue("(Ni)", host, (int)ntohs(in4->sin_port)) : NULL;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        PyObject *host = ip_text(AF_INET6, &in6->sin6_addr);
        return host ? Py_BuildValue("(NiII)", host, (int)ntohs(in6->sin6_port),
                                    (unsigned int)ntohl(in6->sin6_flowinfo),
                                    (unsigned int)in6->sin6_scope_id)
                    : NULL;
    }
    case AF_UNIX: {
        const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
        size_t header = offsetof(struct sockaddr_un, sun_path);
        size_t path_length = length > header ? (size_t)length - header : 0;
        if (path_length > sizeof(un->sun_path)) {
            path_length = sizeof(un->sun_path);
        }
        if (path_length > 0 && un->sun_path[0] == '\0') {  /* Linux abstract namespace */
            return PyBytes_FromStringAndSize(un->sun_path, (Py_ssize_t)path_length);
        }
        return PyUnicode_DecodeFSDefaultAndSize(un->sun_path,
                                                (Py_ssize_t)strnlen(un->sun_path, path_length));
    }
    default:
        return Py_BuildValue("(iy#)", (int)addr->sa_family, addr->sa_data,
                             (Py_ssize_t)sizeof(addr->sa_data));
    }
}

/* socket.getaddrinfo's list of (family, type, proto, canonname, sockaddr). */
static PyObject *
addrinfo_to_list(const struct addrinfo *first)
{
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    for (const struct addrinfo *ai = first; ai != NULL; ai = ai->ai_next) {
        PyObject *address = sockaddr_to_object(ai->ai_addr, ai->ai_addrlen);
        PyObject *canonname = address ? PyUnicode_FromString(ai->ai_canonname ? ai->ai_canonname : "")
                                      : NULL;
        PyObject *family = canonname ? enum_member(address_family, family_members, ai->ai_family)
                                     : NULL;
        PyObject *kind = family ? enum_member(socket_kind, kind_members, ai->ai_socktype) : NULL;
        PyObject *proto = kind ? PyLong_FromLong(ai->ai_protocol) : NULL;
        PyObject *entry = proto ? PyTuple_Pack(5, family, kind, proto, canonname, address) : NULL;
        Py_XDECREF(address);
        Py_XDECREF(canonname);
        Py_XDECREF(family);
        Py_XDECREF(kind);
        Py_XDECREF(proto);
        if (entry == NULL || PyList_Append(list, entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(entry);
    }
    return list;
}

/* ---- the resolver pool ---- */

/* Frees what the C side of a request holds; its Future reference is gone. */
static void
request_free_c(DnsRequest *req)
{
    if (req->result != NULL) {
        freeaddrinfo(req->result);
    }
    free(req->host);
    free(req->port);
    free(req);
}

/* Pool mutex held. */
static void
queue_push(DnsRequest *req)
{
    req->state = DNS_QUEUED;
    req->queue_next = NULL;
    if (pool.tail != NULL) {
        pool.tail->queue_next = req;
    }
    else {
        pool.head = req;
    }
    pool.tail = req;
    pool.queued++;
}

static void *
pool_worker(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&pool.mutex);
    for (;;) {
        while (pool.head == NULL) {
            pool.idle++;
            pthread_cond_wait(&pool.wakeup, &pool.mutex);
            pool.idle--;
        }
        DnsRequest *req = pool.head;
        pool.head = req->queue_next;
        pool.queued--;
        if (pool.head == NULL) {
            pool.tail = NULL;
        }
        req->queue_next = NULL;
        if (req->channel == NULL) {  /* its loop closed before the lookup started */
            pthread_mutex_unlock(&pool.mutex);
            request_free_c(req);
            pthread_mutex_lock(&pool.mutex);
            continue;
        }
        req->state = DNS_RUNNING;
        pthread_mutex_unlock(&pool.mutex);

        struct addrinfo *result = NULL;
        int status;
        if (req->is_nameinfo) {
            status = getnameinfo((struct sockaddr *)&req->address, req->address_length, req->hostname,
                                 sizeof(req->hostname), req->service, sizeof(req->service), req->flags);
        }
        else {
            status = getaddrinfo(req->host, req->port, &req->hints, &result);
        }
        int error_number = errno;

        pthread_mutex_lock(&pool.mutex);
        if (req->channel == NULL) {  /* its loop closed meanwhile: nobody wants this */
            pthread_mutex_unlock(&pool.mutex);
            if (result != NULL) {
                freeaddrinfo(result);
            }
            request_free_c(req);
            pthread_mutex_lock(&pool.mutex);
            continue;
        }
        req->status = status;
        req->error_number = error_number;
        req->result = result;
        req->state = DNS_DONE;
        DnsChannel *channel = req->channel;
        if (channel->done_tail != NULL) {
            channel->done_tail->queue_next = req;
        }
        else {
            channel->done_head = req;
        }
        channel->done_tail = req;
        uv_async_send(channel->async);  /* thread-safe; the channel lives while attached */
    }
    return NULL;
}

/* A new detached pool thread with every signal blocked (signals are for
 * the interpreter's threads).  Returns 0 or an errno value. */
static int
pool_start_thread(void)
{
    sigset_t all, previous;
    sigfillset(&all);
    pthread_attr_t attr;
    int err = pthread_attr_init(&attr);
    if (err != 0) {
        return err;
    }
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pthread_t thread;
    err = pthread_create(&thread, &attr, pool_worker, NULL);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    pthread_attr_destroy(&attr);
    return err;
}

/* Queues a request (its channel is set) and starts a thread when every
 * thread is busy.  -1 with OSError if no thread at all could be started. */
static int
pool_submit(DnsRequest *req)
{
    pthread_mutex_lock(&pool.mutex);
    queue_push(req);
    /* idle threads already signalled still count as idle until they run */
    int start = pool.queued > pool.idle && pool.threads < DNS_POOL_MAX_THREADS;
    if (start) {
        pool.threads++;
    }
    pthread_cond_signal(&pool.wakeup);
    pthread_mutex_unlock(&pool.mutex);
    if (!start) {
        return 0;
    }
    int err = pool_start_thread();
    if (err == 0) {
        return 0;
    }
    pthread_mutex_lock(&pool.mutex);
    pool.threads--;
    int stranded = pool.threads == 0;
    if (stranded) {
        /* Nobody can run it: take it back (with no thread, the queue holds
         * only this request: earlier ones were taken back the same way). */
        pool.head = pool.tail = NULL;
        pool.queued = 0;
    }
    pthread_mutex_unlock(&pool.mutex);
    if (!stranded) {
        return 0;  /* the running threads will get to it */
    }
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* fork(): the pool mutex is held across it, so the child's copy of the pool
 * is consistent; the child has none of the threads. */
static void
pool_before_fork(void)
{
    pthread_mutex_lock(&pool.mutex);
}

static void
pool_after_fork_parent(void)
{
    pthread_mutex_unlock(&pool.mutex);
}

static void
pool_after_fork_child(void)
{
    /* Queued requests stay on their loops' lists: loop_after_fork() marks
     * them orphaned in the child's copy of each loop. */
    pool.head = pool.tail = NULL;
    pool.queued = pool.threads = pool.idle = 0;
    pthread_cond_init(&pool.wakeup, NULL);  /* its waiters were the parent's threads */
    pthread_mutex_unlock(&pool.mutex);
}

/* ---- channels: results back to the loop thread ---- */

static void deliver_results(uv_async_t *async);

static void
on_async_closed(uv_handle_t *handle)
{
    free(handle);
}

/* A new uv_async for the channel; on failure the old one (if any) stays. */
static int
channel_new_async(DnsChannel *channel)
{
    uv_async_t *async = malloc(sizeof(*async));
    if (async == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int err = uv_async_init(&channel->loop->uv, async, deliver_results);
    if (err < 0) {
        free(async);
        PyErr_Format(PyExc_OSError, "cannot create the resolver's wakeup: %s", uv_strerror(err));
        return -1;
    }
    async->data = channel;
    if (channel->async != NULL) {
        uv_close((uv_handle_t *)channel->async, on_async_closed);
    }
    channel->async = async;
    return 0;
}

static DnsChannel *
channel_of(LoopObject *loop)
{
    if (loop->dns != NULL) {
        return loop->dns;
    }
    DnsChannel *channel = calloc(1, sizeof(*channel));
    if (channel == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    channel->loop = loop;
    if (channel_new_async(channel) < 0) {
        free(channel);
        return NULL;
    }
    loop->dns = channel;
    return channel;
}

static void
channel_unlink(DnsChannel *channel, DnsRequest *req)
{
    if (req->prev != NULL) {
        req->prev->next = req->next;
    }
    else {
        channel->requests = req->next;
    }
    if (req->next != NULL) {
        req->next->prev = req->prev;
    }
    req->prev = req->next = NULL;
    channel->loop->active_io--;
}

/* Links a new request (arguments filled in) to the loop and queues it. */
static int
request_submit(LoopObject *loop, DnsRequest *req)
{
    DnsChannel *channel = channel_of(loop);
    if (channel == NULL) {
        return -1;
    }
    req->channel = channel;
    req->next = channel->requests;
    if (channel->requests != NULL) {
        channel->requests->prev = req;
    }
    channel->requests = req;
    loop->active_io++;
    if (pool_submit(req) < 0) {
        channel_unlink(channel, req);
        return -1;
    }
    return 0;
}

static DnsRequest *
request_new(PyObject *future)
{
    DnsRequest *req = calloc(1, sizeof(*req));
    if (req == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    req->future = Py_NewRef(future);
    return req;
}

/* Drops a request that is on no pool list (GIL). */
static void
request_drop(DnsRequest *req)
{
    Py_CLEAR(req->future);
    request_free_c(req);
}

/* 1 if the request's Future still waits for the outcome. */
static int
future_waits(DnsRequest *req)
{
    PyObject *done = PyObject_CallMethodNoArgs(req->future, s_done);
    if (done == NULL) {
        PyErr_WriteUnraisable(req->future);
        return 0;
    }
    int waits = done == Py_False;
    Py_DECREF(done);
    return waits;
}

/* The outcome (a DNS_DONE request) into the Future. */
static void
complete_request(DnsRequest *req)
{
    PyObject *value;
    if (req->status != 0) {
        value = resolve_error(req->status, req->error_number);
    }
    else if (req->is_nameinfo) {
        PyObject *host = PyUnicode_DecodeFSDefault(req->hostname);
        value = host ? Py_BuildValue("(Ns)", host, req->service) : NULL;
    }
    else {
        value = addrinfo_to_list(req->result);
    }
    if (complete_future(req->future, value, req->status != 0) < 0) {
        /* Nobody awaits this error, and raising it from the loop could stop
         * a close() half way. */
        PyErr_WriteUnraisable(req->future);
    }
}

/* The channel's uv_async: runs on the loop thread inside uv_run. */
static void
deliver_results(uv_async_t *async)
{
    DnsChannel *channel = async->data;
    LoopObject *loop = channel->loop;
    loop_take_gil(loop);
    pthread_mutex_lock(&pool.mutex);
    DnsRequest *req = channel->done_head;
    channel->done_head = channel->done_tail = NULL;
    pthread_mutex_unlock(&pool.mutex);
    while (req != NULL) {
        DnsRequest *next = req->queue_next;
        channel_unlink(channel, req);
        if (!loop->closed && future_waits(req)) {
            complete_request(req);
        }
        request_drop(req);
        req = next;
    }
}

void
dns_close(LoopObject *loop)
{
    DnsChannel *channel = loop->dns;
    if (channel == NULL) {
        return;
    }
    loop->dns = NULL;
    Py_ssize_t count = 0;
    for (DnsRequest *req = channel->requests; req != NULL; req = req->next) {
        count++;
    }
    /* The Futures are released after the pool lock (a release can run
     * Python code); out of memory here, they are leaked instead. */
    PyObject **futures = count > 0 ? PyMem_Malloc((size_t)count * sizeof(PyObject *)) : NULL;
    Py_ssize_t held = 0;
    DnsRequest *ours = NULL;  /* not on any pool list: freed here */
    pthread_mutex_lock(&pool.mutex);
    for (DnsRequest *req = channel->requests, *next; req != NULL; req = next) {
        next = req->next;
        if (futures != NULL) {
            futures[held++] = req->future;
        }
        req->future = NULL;
        req->channel = NULL;  /* from now on the pool frees it and never touches the loop */
        if (req->state == DNS_DONE || req->state == DNS_ORPHANED) {
            req->next = ours;
            ours = req;
        }
    }
    pthread_mutex_unlock(&pool.mutex);
    loop->active_io -= count;
    while (ours != NULL) {
        DnsRequest *next = ours->next;
        request_free_c(ours);
        ours = next;
    }
    uv_close((uv_handle_t *)channel->async, on_async_closed);
    free(channel);
    for (Py_ssize_t i = 0; i < held; i++) {
        Py_DECREF(futures[i]);
    }
    PyMem_Free(futures);
}

int
dns_after_fork(LoopObject *loop)
{
    DnsChannel *channel = loop->dns;
    if (channel == NULL) {
        return 0;
    }
    /* The parent's pool thread may have left the old uv_async marked as
     * pending: sends to it would then never reach the child's new eventfd. */
    int status = channel_new_async(channel);
    pthread_mutex_lock(&pool.mutex);
    for (DnsRequest *req = channel->requests; req != NULL; req = req->next) {
        if (req->state == DNS_QUEUED || req->state == DNS_RUNNING) {
            req->state = DNS_ORPHANED;  /* no thread of this process will finish it */
            channel->orphans++;
        }
    }
    int posted = channel->done_head != NULL;
    pthread_mutex_unlock(&pool.mutex);
    if (posted) {
        uv_async_send(channel->async);  /* results the parent's threads posted */
    }
    return status;
}

void
dns_resume(LoopObject *loop)
{
    DnsChannel *channel = loop->dns;
    if (channel == NULL || channel->orphans == 0) {
        return;
    }
    for (DnsRequest *req = channel->requests, *next; req != NULL; req = next) {
        next = req->next;
        if (req->state != DNS_ORPHANED) {
            continue;
        }
        channel->orphans--;
        if (future_waits(req)) {
            if (pool_submit(req) == 0) {
                continue;  /* resolved again by this process */
            }
            if (complete_future(req->future, NULL, 1) < 0) {
                PyErr_WriteUnraisable(req->future);
            }
        }
        channel_unlink(channel, req);
        request_drop(req);
    }
}

/* ---- the module functions ---- */

/* Same refusals as run_in_executor (closed loop), and requests are submitted
 * from the loop's own thread only (the channel is GIL-and-loop-thread state).
 * A loop inherited through fork() gets its own kernel state first. */
static LoopObject *
check_loop(PyObject *module, PyObject *obj)
{
    ModuleState *state = PyModule_GetState(module);
    if (!PyObject_TypeCheck(obj, state->LoopCoreType)) {
        PyErr_Format(PyExc_TypeError, "expected a pyasync_c loop, got %.100s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    LoopObject *loop = (LoopObject *)obj;
    if (loop->closed || !loop->uv_ready) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return NULL;
    }
    if (loop_after_fork(loop) < 0) {
        return NULL;
    }
    if (loop->thread_id != Py_None) {
        unsigned long running = PyLong_AsUnsignedLong(loop->thread_id);
        if (running == (unsigned long)-1 && PyErr_Occurred()) {
            return NULL;
        }
        if (running != PyThread_get_thread_ident()) {
            PyErr_SetString(PyExc_RuntimeError,
                             "Non-thread-safe operation invoked on an event loop other than the current one");
            return NULL;
        }
    }
    return loop;
}

/* The host as socket.getaddrinfo passes it: None -> NULL, str -> its 'idna'
 * encoding, bytes as they are.  *owner receives the bytes (new reference). */
static int
convert_host(PyObject *host, const char **text, PyObject **owner)
{
    *owner = NULL;
    *text = NULL;
    if (host == Py_None) {
        return 0;
    }
    if (PyUnicode_Check(host)) {
        /* The 'idna' codec returns an ASCII name unchanged when every label
         * but the last is 1-63 characters and the last is under 64; anything
         * else goes through the codec itself (its result or its error). */
        if (PyUnicode_IS_ASCII(host)) {
            const char *start = (const char *)PyUnicode_DATA(host);
            Py_ssize_t length = PyUnicode_GET_LENGTH(host), label = 0;
            int plain = 1;
            for (Py_ssize_t i = 0; i < length && plain; i++) {
                if (start[i] == '.') {
                    plain = label > 0 && label < 64;
                    label = 0;
                }
                else {
                    label++;
                }
            }
            if (plain && label < 64) {
                *text = start;
                return 0;
            }
        }
        *owner = PyUnicode_AsEncodedString(host, "idna", NULL);
        if (*owner == NULL) {
            return -1;
        }
        *text = PyBytes_AS_STRING(*owner);
        return 0;
    }
    if (PyBytes_Check(host)) {
        *text = PyBytes_AS_STRING(host);
        return 0;
    }
    PyErr_SetString(PyExc_TypeError, "getaddrinfo() argument 1 must be string or None");
    return -1;
}

/* The port as socket.getaddrinfo passes it: an exact int in decimal, str as
 * UTF-8, bytes as they are, None -> NULL; anything else is an OSError. */
static int
convert_port(PyObject *port, char *buffer, size_t size, const char **text, PyObject **owner)
{
    *owner = NULL;
    *text = NULL;
    if (PyLong_CheckExact(port)) {
        int overflow;
        long value = PyLong_AsLongAndOverflow(port, &overflow);
        if (value == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow) {
#if PY_VERSION_HEX < 0x030C0000
            (void)PyLong_AsLong(port);  /* 3.11 raises its OverflowError */
            return -1;
#else
            *owner = PyObject_Str(port);  /* 3.12+ pass the digits (EAI_SERVICE) */
            *text = *owner ? PyUnicode_AsUTF8(*owner) : NULL;
            return *text ? 0 : -1;
#endif
        }
        PyOS_snprintf(buffer, size, "%ld", value);
        *text = buffer;
        return 0;
    }
    if (PyUnicode_Check(port)) {
        Py_ssize_t length;
        *text = PyUnicode_AsUTF8AndSize(port, &length);
        return *text ? 0 : -1;
    }
    if (PyBytes_Check(port)) {
        *text = PyBytes_AS_STRING(port);
        return 0;
    }
    if (port == Py_None) {
        return 0;
    }
    PyErr_SetString(PyExc_OSError, "Int or String expected");
    return -1;
}

static PyObject *
dns_getaddrinfo(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"loop", "host", "port", "family", "type", "proto", "flags", NULL};
    PyObject *loop_obj, *host, *port;
    int family = 0, socktype = 0, proto = 0, flags = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|iiii:getaddrinfo", keywords, &loop_obj, &host,
                                     &port, &family, &socktype, &proto, &flags)) {
        return NULL;
    }
    LoopObject *loop = check_loop(module, loop_obj);
    if (loop == NULL) {
        return NULL;
    }
    const char *host_text, *port_text;
    char port_buffer[32];
    PyObject *host_owner, *port_owner = NULL;
    if (convert_host(host, &host_text, &host_owner) < 0) {
        return NULL;
    }
    if (convert_port(port, port_buffer, sizeof(port_buffer), &port_text, &port_owner) < 0) {
        Py_XDECREF(host_owner);
        return NULL;
    }
    PyObject *future = loop_new_future(loop);
    DnsRequest *req = future ? request_new(future) : NULL;
    int failed = req == NULL;
    if (!failed) {
        /* socket.getaddrinfo's call: the system answers None/None itself */
        req->host = host_text ? strdup(host_text) : NULL;
        req->port = port_text ? strdup(port_text) : NULL;
        req->hints.ai_family = family;
        req->hints.ai_socktype = socktype;
        req->hints.ai_protocol = proto;
        req->hints.ai_flags = flags;
        if ((host_text != NULL && req->host == NULL) || (port_text != NULL && req->port == NULL)) {
            PyErr_NoMemory();
            failed = 1;
        }
    }
    Py_XDECREF(host_owner);
    Py_XDECREF(port_owner);
    if (!failed && request_submit(loop, req) == 0) {
        return future;
    }
    if (req != NULL) {
        request_drop(req);
    }
    Py_XDECREF(future);
    return NULL;
}

/* socket.getnameinfo's checks and its numeric (AI_NUMERICHOST) resolution of
 * the sockaddr; on success *out / *out_length hold the sockaddr to resolve.
 * Returns 0, or -1 with the exception the future should carry set. */
static int
nameinfo_sockaddr(PyObject *sockaddr, const char *host, int port, unsigned int flowinfo,
                  unsigned int scope_id, struct sockaddr_storage *out, socklen_t *out_length)
{
    char port_text[16];
    PyOS_snprintf(port_text, sizeof(port_text), "%d", port);
    struct addrinfo hints, *result = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;  /* a numeric port needs a socket type */
    hints.ai_flags = AI_NUMERICHOST;  /* never a lookup on the loop thread */
    int err = getaddrinfo(host, port_text, &hints, &result);
    if (err != 0) {
        PyObject *exc = resolve_error(err, errno);
        if (exc != NULL) {
            compat_restore_exception(exc);
        }
        return -1;
    }
    int status = -1;
    if (result->ai_next != NULL) {
        PyErr_SetString(PyExc_OSError, "sockaddr resolved to multiple addresses");
    }
    else if (result->ai_family == AF_INET && PyTuple_GET_SIZE(sockaddr) != 2) {
        PyErr_SetString(PyExc_OSError, "IPv4 sockaddr must be 2 tuple");
    }
    else if (result->ai_addrlen > sizeof(*out)) {
        PyErr_SetString(PyExc_OSError, "sockaddr too long");
    }
    else {
        memset(out, 0, sizeof(*out));
        memcpy(out, result->ai_addr, result->ai_addrlen);
        *out_length = result->ai_addrlen;
        if (result->ai_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
            in6->sin6_flowinfo = htonl(flowinfo);
            in6->sin6_scope_id = scope_id;
        }
        status = 0;
    }
    freeaddrinfo(result);
    return status;
}

static PyObject *
dns_getnameinfo(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"loop", "sockaddr", "flags", NULL};
    PyObject *loop_obj, *sockaddr;
    int flags = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|i:getnameinfo", keywords, &loop_obj, &sockaddr,
                                     &flags)) {
        return NULL;
    }
    LoopObject *loop = check_loop(module, loop_obj);
    if (loop == NULL) {
        return NULL;
    }
    if (!PyTuple_Check(sockaddr)) {
        PyErr_SetString(PyExc_TypeError, "getnameinfo() argument 1 must be a tuple");
        return NULL;
    }
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;
    if (!PyArg_ParseTuple(sockaddr, "si|II;getnameinfo(): illegal sockaddr argument", &host, &port,
                          &flowinfo, &scope_id)) {
        return NULL;
    }
    if (flowinfo > 0xfffff) {
        PyErr_SetString(PyExc_OverflowError, "getnameinfo(): flowinfo must be 0-1048575.");
        return NULL;
    }
    PyObject *future = loop_new_future(loop);
    if (future == NULL) {
        return NULL;
    }
    DnsRequest *req = request_new(future);
    if (req == NULL) {
        Py_DECREF(future);
        return NULL;
    }
    req->is_nameinfo = 1;
    req->flags = flags;
    if (nameinfo_sockaddr(sockaddr, host, port, flowinfo, scope_id, &req->address,
                          &req->address_length) < 0) {
        request_drop(req);
        if (complete_future(future, NULL, 1) < 0) {
            Py_CLEAR(future);
        }
        return future;
    }
    if (request_submit(loop, req) < 0) {
        request_drop(req);
        Py_CLEAR(future);
    }
    return future;
}

static PyMethodDef dns_functions[] = {
    {"getaddrinfo", (PyCFunction)(void (*)(void))dns_getaddrinfo, METH_VARARGS | METH_KEYWORDS,
     "getaddrinfo(loop, host, port, family=0, type=0, proto=0, flags=0)\n--\n\n"
     "A Future of loop with socket.getaddrinfo(host, port, family, type, proto, flags),\n"
     "resolved on pyasync_c's resolver threads."},
    {"getnameinfo", (PyCFunction)(void (*)(void))dns_getnameinfo, METH_VARARGS | METH_KEYWORDS,
     "getnameinfo(loop, sockaddr, flags=0)\n--\n\n"
     "A Future of loop with socket.getnameinfo(sockaddr, flags), resolved on pyasync_c's resolver threads."},
    {NULL, NULL, 0, NULL},
};

static int
set_global(PyObject **slot, PyObject *value)
{
    Py_XSETREF(*slot, value);
    return value ? 0 : -1;
}

int
dns_init(PyObject *module, ModuleState *state)
{
    (void)state;
    if (!pool.atfork_registered) {
        if (pthread_atfork(pool_before_fork, pool_after_fork_parent, pool_after_fork_child) != 0) {
            PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
            return -1;
        }
        pool.atfork_registered = 1;
    }
    PyObject *socket_module = PyImport_ImportModule("socket");
    if (socket_module == NULL) {
        return -1;
    }
    int status = set_global(&gaierror_type, PyObject_GetAttrString(socket_module, "gaierror"));
    if (status == 0) {
        status = set_global(&address_family, PyObject_GetAttrString(socket_module, "AddressFamily"));
    }
    if (status == 0) {
        status = set_global(&socket_kind, PyObject_GetAttrString(socket_module, "SocketKind"));
    }
    Py_DECREF(socket_module);
    if (status < 0
        || set_global(&family_members, PyDict_New()) < 0
        || set_global(&kind_members, PyDict_New()) < 0
        || set_global(&s_done, PyUnicode_InternFromString("done")) < 0
        || set_global(&s_set_result, PyUnicode_InternFromString("set_result")) < 0
        || set_global(&s_set_exception, PyUnicode_InternFromString("set_exception")) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, dns_functions);
}
