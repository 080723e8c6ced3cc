/* What every transport shares: the poll, the write queue, flow control,
 * protocol calls in the connection's context, error handling, closing and
 * connection_lost, the fd registry of the loop, get/set_protocol, _extra,
 * repr, garbage collection.  The per-kind read/write paths live in
 * stream_transport.c (sockets and pipes) and datagram_transport.c.
 *
 * Lifecycle of a transport:
 *   1. created by loop.py's _make_*_transport with an open, non-blocking
 *      socket or pipe (the Python object keeps owning the fd); the fd is
 *      entered in loop->transports so add_reader/sock_* on it raise, as on
 *      asyncio; `context` is a copy of the creator's contextvars context.
 *   2. a scheduled _connection_made(waiter) calls protocol.connection_made,
 *      starts reading and resolves the waiter, in that order (as asyncio).
 *   3. I/O: one uv_poll_t per fd (a TransportPoll; a read pipe and a write
 *      pipe on one fd share it), level-triggered, started with the events the
 *      transports want (reading unless paused/closing; writable while the
 *      write queue is non-empty).  pause_reading() is lazy: the poll keeps
 *      readable until readiness comes while paused (see keeps_read_armed).  While a transport's poll is started its
 *      loop owns it (polled_transports, visited by the loop's tp_traverse), so
 *      an open connection of a live loop is never collected but an abandoned
 *      loop is; the poll callback enters `context` and calls the protocol directly (no
 *      Handle per event) -- unless callbacks were already ready when the poll
 *      began (or the loop is in debug mode): then it queues `_io_ready(events)`
 *      behind them, which is asyncio's order.  Fds closed under a started poll
 *      are caught before libuv sees them (loop_check_changed_polls).
 *   4. close()/abort()/errors schedule _call_connection_lost(exc) exactly once
 *      (after the queue is flushed for close()): it calls
 *      protocol.connection_lost, detaches the poll (uv_close()d by its last
 *      user; the close callback frees it) before closing the socket, leaves
 *      the registry and the server.
 *   5. a transport collected while its socket is still open gives a
 *      ResourceWarning and closes the socket (tp_finalize).
 * Loop.close() releases the polls of transports still open (their sockets
 * stay open until they are closed or collected, as on asyncio).
 */
#include "transport.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <structmember.h>
#include <sys/socket.h>

#define LOG_THRESHOLD_FOR_CONNLOST_WRITES 5
#define DEFAULT_HIGH_WATER (64 * 1024)

/* ---- write queue ---- */

static int
write_queue_reserve(WriteQueue *queue)
{
    if (queue->count == queue->capacity) {
        Py_ssize_t capacity = queue->capacity ? queue->capacity * 2 : 8;
        WriteEntry *items = PyMem_Malloc(capacity * sizeof(WriteEntry));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < queue->count; i++) {
            items[i] = queue->items[(queue->head + i) & (queue->capacity - 1)];
        }
        PyMem_Free(queue->items);
        queue->items = items;
        queue->head = 0;
        queue->capacity = capacity;
    }
    return 0;
}

int
write_queue_push(WriteQueue *queue, PyObject *data, Py_ssize_t offset, PyObject *address)
{
    if (write_queue_reserve(queue) < 0) {
        return -1;
    }
    WriteEntry *entry = &queue->items[(queue->head + queue->count) & (queue->capacity - 1)];
    entry->data = Py_NewRef(data);
    entry->offset = offset;
    entry->address = Py_XNewRef(address);
    queue->count++;
    queue->bytes += PyBytes_GET_SIZE(data) - offset;
    return 0;
}

/* Puts a datagram taken from the head back there (whole: offset 0). */
int
write_queue_push_front(WriteQueue *queue, PyObject *data, PyObject *address)
{
    if (write_queue_reserve(queue) < 0) {
        return -1;
    }
    queue->head = (queue->head - 1) & (queue->capacity - 1);
    WriteEntry *entry = &queue->items[queue->head];
    entry->data = Py_NewRef(data);
    entry->offset = 0;
    entry->address = Py_XNewRef(address);
    queue->count++;
    queue->bytes += PyBytes_GET_SIZE(data);
    return 0;
}

void
write_queue_pop(WriteQueue *queue)
{
    WriteEntry *entry = &queue->items[queue->head];
    queue->bytes -= PyBytes_GET_SIZE(entry->data) - entry->offset;
    Py_CLEAR(entry->data);
    Py_CLEAR(entry->address);
    queue->head = (queue->head + 1) & (queue->capacity - 1);
    queue->count--;
}

void
write_queue_consume(WriteQueue *queue, Py_ssize_t nbytes)
{
    while (nbytes > 0 && queue->count > 0) {
        WriteEntry *entry = &queue->items[queue->head];
        Py_ssize_t left = PyBytes_GET_SIZE(entry->data) - entry->offset;
        if (left <= nbytes) {
            nbytes -= left;
            write_queue_pop(queue);
        }
        else {
            entry->offset += nbytes;
            queue->bytes -= nbytes;
            nbytes = 0;
        }
    }
}

void
write_queue_clear(WriteQueue *queue)
{
    while (queue->count > 0) {
        write_queue_pop(queue);
    }
    queue->bytes = 0;
}

static void
write_queue_free(WriteQueue *queue)
{
    write_queue_clear(queue);
    PyMem_Free(queue->items);
    queue->items = NULL;
    queue->capacity = 0;
    queue->head = 0;
}

/* ---- helpers ---- */

PyObject *
transport_oserror(int error_number)
{
    PyObject *args = Py_BuildValue("(is)", error_number, strerror(error_number));
    if (args == NULL) {
        return NULL;
    }
    PyObject *exc = PyObject_Call(PyExc_OSError, args, NULL);  /* picks the errno subclass */
    Py_DECREF(args);
    return exc;
}

static ModuleState *
state_of(TransportObject *self)
{
    return self->loop->state;
}

/* ---- the loop's read buffer ---- */

char *
transport_take_read_buffer(LoopObject *loop)
{
    char *buffer = loop->read_buffer;
    if (buffer != NULL) {
        loop->read_buffer = NULL;
        return buffer;
    }
    /* first use, or a read nested in a protocol callback of another read */
    buffer = malloc(TRANSPORT_READ_BUFFER_SIZE);
    if (buffer == NULL) {
        PyErr_NoMemory();
    }
    return buffer;
}

void
transport_give_back_read_buffer(LoopObject *loop, char *buffer)
{
    if (loop->read_buffer == NULL && loop->uv_ready) {
        loop->read_buffer = buffer;
    }
    else {
        free(buffer);
    }
}

/* ---- fd registry ----
 * loop->transports maps fd -> the address of the transport using it.  A read
 * pipe and a write pipe may share an fd: the entry names the first, which
 * links the second as its fd_partner. */

static int
registry_add(TransportObject *self)
{
    PyObject *key = PyLong_FromLong(self->fd);
    PyObject *value = key ? PyLong_FromVoidPtr(self) : NULL;
    int rc = value ? PyDict_SetItem(self->loop->transports, key, value) : -1;
    Py_XDECREF(key);
    Py_XDECREF(value);
    return rc;
}

/* The transport registered for fd (borrowed), or NULL (with an exception on error). */
static TransportObject *
registry_get(LoopObject *loop, int fd)
{
    if (loop->transports == NULL || PyDict_GET_SIZE(loop->transports) == 0) {
        return NULL;
    }
    PyObject *key = PyLong_FromLong(fd);
    if (key == NULL) {
        return NULL;
    }
    PyObject *value = PyDict_GetItemWithError(loop->transports, key);
    Py_DECREF(key);
    return value == NULL ? NULL : PyLong_AsVoidPtr(value);
}

/* loop._transports: a new dict fd -> transport object (asyncio's map holds
 * the transports).  A copy: the registry itself holds addresses and must not
 * be writable from Python (a restored stale entry would be dereferenced). */
PyObject *
registry_snapshot(LoopObject *loop)
{
    PyObject *snapshot = PyDict_New();
    if (snapshot == NULL || loop->transports == NULL) {
        return snapshot;
    }
    PyObject *key, *value;
    Py_ssize_t position = 0;
    while (PyDict_Next(loop->transports, &position, &key, &value)) {
        PyObject *transport = PyLong_AsVoidPtr(value);
        if (transport == NULL || PyDict_SetItem(snapshot, key, transport) < 0) {
            Py_DECREF(snapshot);
            return NULL;
        }
    }
    return snapshot;
}

static void update_poll_quietly(TransportObject *self);

/* The transport lets go of its fd: leaves the registry (its partner, if
 * any, takes the entry over) and unlinks the partner. */
static void
registry_remove(TransportObject *self)
{
    if (self->loop == NULL || self->loop->transports == NULL || self->fd < 0) {
        return;
    }
    PyObject *exc = compat_fetch_exception();
    TransportObject *partner = self->fd_partner;
    if (partner != NULL) {
        partner->fd_partner = NULL;
        self->fd_partner = NULL;
    }
    PyObject *key = PyLong_FromLong(self->fd);
    if (key != NULL) {
        PyObject *value = PyDict_GetItemWithError(self->loop->transports, key);
        if (value != NULL && PyLong_AsVoidPtr(value) == (void *)self) {
            if (partner != NULL) {
                registry_add(partner);
            }
            else {
                PyDict_DelItem(self->loop->transports, key);
            }
        }
        Py_DECREF(key);
    }
    PyErr_Clear();
    if (partner != NULL) {
        update_poll_quietly(partner);  /* a write pipe alone watches for its reader again */
    }
    if (exc != NULL) {
        compat_restore_exception(exc);
    }
}

static int hand_over_fd(TransportObject *self);

int
transport_check_fd_free(LoopObject *loop, int fd)
{
    TransportObject *transport = registry_get(loop, fd);
    if (transport == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (transport->empty_waiter != NULL && transport->fd_partner == NULL) {
        /* A native sendfile is in progress (loop._sendfile_native): asyncio
         * takes the transport out of its map meanwhile, so sock_sendfile may
         * watch the fd. */
        return 0;
    }
    TransportObject *users[2] = {transport, transport->fd_partner};
    for (int i = 0; i < 2; i++) {
        if (users[i] != NULL && !users[i]->closing) {
            PyObject *user = Py_NewRef((PyObject *)users[i]);  /* a Python __repr__ runs */
            PyErr_Format(PyExc_RuntimeError, "File descriptor %d is used by transport %R", fd, user);
            Py_DECREF(user);
            return -1;
        }
    }
    /* Closing transports allow it, as asyncio's: they give their poll up. */
    Py_INCREF(users[0]);
    Py_XINCREF(users[1]);
    int rc = hand_over_fd(users[0]);
    if (rc == 0 && users[1] != NULL) {
        rc = hand_over_fd(users[1]);
    }
    Py_DECREF(users[0]);
    Py_XDECREF(users[1]);
    return rc;
}

/* transport_setup: may `self` (of `kind`) use fd?  A read pipe and a write
 * pipe share an fd as partners. */
static int
registry_enter(TransportObject *self, int fd)
{
    TransportObject *existing = registry_get(self->loop, fd);
    if (existing == NULL) {
        return PyErr_Occurred() ? -1 : registry_add(self);
    }
    int pipes = (existing->kind == TRANSPORT_READ_PIPE && self->kind == TRANSPORT_WRITE_PIPE)
                || (existing->kind == TRANSPORT_WRITE_PIPE && self->kind == TRANSPORT_READ_PIPE);
    if (pipes && existing->fd_partner == NULL && !existing->closing) {
        existing->fd_partner = self;
        self->fd_partner = existing;
        update_poll_quietly(existing);  /* a write pipe stops watching for its reader */
        return 0;
    }
    if (!existing->closing || (existing->fd_partner != NULL && !existing->fd_partner->closing)) {
        PyObject *user = Py_NewRef((PyObject *)(existing->closing ? existing->fd_partner : existing));
        PyErr_Format(PyExc_RuntimeError, "File descriptor %d is used by transport %R", fd, user);
        Py_DECREF(user);
        return -1;
    }
    return registry_add(self);  /* the closing one keeps its poll until it is done */
}

/* ---- the loop's polled transports ----
 * A transport whose poll is started is owned by its loop (a list the loop's
 * tp_traverse visits), as a selector's handle keeps asyncio's transport
 * alive: an open connection of a live loop is never collected, while an
 * abandoned loop and its connections form a cycle the GC frees (loop and
 * transport finalizers then release the polls and close the fds). */

static void
polled_link(TransportObject *self)
{
    if (self->polled) {
        return;
    }
    LoopObject *loop = self->loop;
    self->polled = 1;
    Py_INCREF(self);
    self->polled_prev = NULL;
    self->polled_next = loop->polled_transports;
    if (loop->polled_transports != NULL) {
        loop->polled_transports->polled_prev = self;
    }
    loop->polled_transports = self;
}

/* The caller holds another reference. */
static void
polled_unlink(TransportObject *self)
{
    if (!self->polled) {
        return;
    }
    self->polled = 0;
    if (self->polled_prev != NULL) {
        self->polled_prev->polled_next = self->polled_next;
    }
    else {
        self->loop->polled_transports = self->polled_next;
    }
    if (self->polled_next != NULL) {
        self->polled_next->polled_prev = self->polled_prev;
    }
    self->polled_prev = self->polled_next = NULL;
    Py_DECREF(self);
}

int
transports_traverse(LoopObject *loop, visitproc visit, void *arg)
{
    for (TransportObject *t = loop->polled_transports; t != NULL; t = t->polled_next) {
        Py_VISIT((PyObject *)t);
    }
    return 0;
}

static void transport_release_poll(TransportObject *self);

void
transports_clear(LoopObject *loop)
{
    while (loop->polled_transports != NULL) {
        transport_release_poll(loop->polled_transports);
    }
}

/* ---- poll ---- */

static void
free_poll(uv_handle_t *handle)
{
    free(handle);  /* the TransportPoll it starts */
}

static void on_poll(uv_poll_t *poll, int status, int events);

/* This transport's poll is stopped (the caller holds another reference). */
static void
poll_stopped(TransportObject *self)
{
    if (self->poll_events == 0) {
        return;
    }
    self->poll_events = 0;
    self->loop->active_io--;
    polled_unlink(self);
}

static void transport_bad_fd(void *owner);

/* uv_poll_init of the shared handle; releases a stale watcher of a reused
 * fd number. */
static int
shared_poll_init(TransportPoll *shared)
{
    int err = loop_poll_init(shared->loop, &shared->handle, shared->fd);
    if (err < 0) {
        if (err == UV_EEXIST) {
            PyErr_Format(PyExc_RuntimeError,
                         "File descriptor %d is already watched by add_reader()/add_writer()",
                         shared->fd);
        }
        else {
            errno = -err;
            PyErr_SetFromErrno(PyExc_OSError);
        }
        return -1;
    }
    shared->handle.data = shared;
    shared->initialized = 1;
    return 0;
}

/* Brings the shared handle to what its users poll: made if need be,
 * started, changed or stopped; closed (and freed) once it has no user.
 * Only where libuv may be touched (loop_may_touch_libuv). */
static int
shared_poll_sync_now(TransportPoll *shared)
{
    if (shared->users[0] == NULL && shared->users[1] == NULL) {
        if (!shared->initialized) {
            free(shared);
            return 0;
        }
        shared->handle.data = NULL;
        loop_forget_poll(shared->loop, &shared->handle);
        if (!shared->sync.queued && loop_keep_spare_poll(shared->loop, &shared->handle, shared->fd)) {
            return 0;  /* stopped, for the next transport on this fd number */
        }
        uv_close((uv_handle_t *)&shared->handle, free_poll);  /* stops it too */
        return 0;
    }
    int events = 0;
    for (int i = 0; i < 2; i++) {
        if (shared->users[i] != NULL) {
            events |= shared->users[i]->poll_events;
        }
    }
    if (events == shared->events) {
        return 0;
    }
    if (events == 0) {
        uv_poll_stop(&shared->handle);
        shared->events = 0;
        return 0;
    }
    if (!shared->initialized && shared_poll_init(shared) < 0) {
        return -1;
    }
    if (shared->events == 0 && shared->loop->parked_count > 0) {
        /* a watcher's poll of this fd (add_writer while paused) outlives it */
        loop_release_parked_fd(shared->loop, shared->fd);
    }
    int err = uv_poll_start(&shared->handle, events, on_poll);
    if (err < 0) {
        errno = -err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    shared->events = events;
    return loop_note_poll_change(shared->loop, &shared->handle, shared->fd, transport_bad_fd, shared);
}

/* shared_poll_sync_now, or, from another thread while the loop thread
 * polls, queued for the loop thread (the users' poll_events, the loop's
 * active_io and polled_transports change at once). */
static int
shared_poll_apply(TransportPoll *shared)
{
    if (loop_may_touch_libuv(shared->loop)) {
        return shared_poll_sync_now(shared);
    }
    loop_defer_libuv_change(shared->loop, &shared->sync);
    return 0;
}

/* libuv stopped the handle (an error), or we do: every user is stopped. */
static void
shared_poll_stopped(TransportPoll *shared)
{
    if (shared->events != 0) {
        uv_poll_stop(&shared->handle);
        shared->events = 0;
    }
    for (int i = 0; i < 2; i++) {
        if (shared->users[i] != NULL) {
            poll_stopped(shared->users[i]);
        }
    }
}

/* The poll cannot go on: every user stops polling and gets a fatal error
 * with `exc` (a new reference, NULL: EBADF). */
static void
shared_poll_fail(TransportPoll *shared, PyObject *exc, const char *message)
{
    TransportObject *users[2] = {shared->users[0], shared->users[1]};
    Py_XINCREF(users[0]);
    Py_XINCREF(users[1]);
    shared_poll_stopped(shared);
    for (int i = 0; i < 2; i++) {
        if (users[i] == NULL) {
            continue;
        }
        PyObject *error = exc != NULL ? Py_NewRef(exc) : transport_oserror(EBADF);
        if (error != NULL) {
            transport_fatal_error(users[i], error, message);
            Py_DECREF(error);
        }
        else {
            PyErr_Clear();
        }
    }
    Py_XDECREF(exc);
    Py_XDECREF(users[0]);
    Py_XDECREF(users[1]);
}

/* The fd was closed under the transports (not through them). */
static void
transport_bad_fd(void *owner)
{
    shared_poll_fail(owner, NULL, "Fatal error: the transport's file descriptor was closed");
}

/* The loop thread applies a change another thread queued. */
static void
shared_poll_apply_sync(LibuvChange *change)
{
    TransportPoll *shared = (TransportPoll *)((char *)change - offsetof(TransportPoll, sync));
    if (!shared->loop->uv_ready) {
        /* libuv left alone (a fork child without an epoll of its own) */
        if (shared->users[0] == NULL && shared->users[1] == NULL && !shared->initialized) {
            free(shared);
        }
        return;
    }
    if (shared_poll_sync_now(shared) < 0) {
        /* what transport_update_poll's callers would have reported */
        shared_poll_fail(shared, compat_fetch_exception(),
                         "Fatal error: cannot poll the transport's file descriptor");
    }
}

/* Takes over a poll made for the fd earlier: one a watcher of the fd left
 * started (sock_connect just completed: create_connection's transport; no
 * restart if it already polls the events the transport wants), or a spare
 * (stopped; `file` is the fd's fstat).  Either way no uv_poll_init probe. */
static int
adopt_poll(TransportObject *self, TransportPoll *shared, int started, const struct stat *file)
{
    memset((char *)shared + offsetof(TransportPoll, loop), 0,
           sizeof(TransportPoll) - offsetof(TransportPoll, loop));
    shared->loop = self->loop;
    shared->fd = self->fd;
    shared->sync.apply = shared_poll_apply_sync;
    shared->handle.data = shared;
    shared->initialized = 1;
    shared->events = started;
    /* Started with the events the transport wants, it is not restarted: its
     * callback (uv_poll_s's public poll_cb, which uv_poll_start sets) is ours
     * from now on. */
    shared->handle.poll_cb = on_poll;
    /* the record (the file's identity) now reports to the transport */
    if (loop_note_poll_file(self->loop, &shared->handle, shared->fd, file, transport_bad_fd, shared) < 0) {
        shared->handle.data = NULL;
        loop_forget_poll(self->loop, &shared->handle);
        uv_close((uv_handle_t *)&shared->handle, free_poll);
        return -1;
    }
    shared->users[0] = self;
    self->poll = shared;
    return 0;
}

/* A spare poll skips uv_poll_init's ioctl(FIONBIO): only for a socket that
 * Python made non-blocking. */
static int
socket_is_nonblocking(TransportObject *self)
{
    return (self->kind == TRANSPORT_SOCKET_STREAM || self->kind == TRANSPORT_DATAGRAM) && self->sock != NULL
           && socket_known_nonblocking(self->sock);
}

/* Gives the transport a poll: its partner's, a watcher's parked one, a spare, or a new one. */
static int
attach_poll(TransportObject *self)
{
    TransportObject *partner = self->fd_partner;
    if (partner != NULL && partner->poll != NULL) {
        TransportPoll *shared = partner->poll;
        shared->users[shared->users[0] == NULL ? 0 : 1] = self;
        self->poll = shared;
        return 0;
    }
    if (loop_may_touch_libuv(self->loop)) {
        int started = 0;
        uv_poll_t *parked = loop_poll_take_parked(self->loop, self->fd, &started);
        if (parked != NULL) {
            return adopt_poll(self, (TransportPoll *)parked, started, NULL);
        }
        struct stat file;
        uv_poll_t *spare = loop_has_spare_poll(self->loop, self->fd) && socket_is_nonblocking(self)
                               ? loop_take_spare_poll(self->loop, self->fd, &file)
                               : NULL;
        if (spare != NULL) {
            return adopt_poll(self, (TransportPoll *)spare, 0, &file);
        }
    }
    TransportPoll *shared = calloc(1, sizeof(TransportPoll));
    if (shared == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    shared->loop = self->loop;
    shared->fd = self->fd;
    shared->sync.apply = shared_poll_apply_sync;
    /* else made by the loop thread when it applies the start */
    if (loop_may_touch_libuv(self->loop) && shared_poll_init(shared) < 0) {
        free(shared);
        return -1;
    }
    shared->users[0] = self;
    self->poll = shared;
    return 0;
}

/* Detaches the transport from its poll, closing the poll when nobody else
 * uses it.  No reference counting: dealloc calls it too. */
static void
detach_poll(TransportObject *self)
{
    TransportPoll *shared = self->poll;
    if (shared == NULL) {
        return;
    }
    for (int i = 0; i < 2; i++) {
        if (shared->users[i] == self) {
            shared->users[i] = NULL;
        }
    }
    self->poll = NULL;
    PyObject *exc = compat_fetch_exception();
    /* closes it if nobody else uses it */
    if (shared_poll_apply(shared) < 0) {
        PyErr_Clear();  /* the partner finds out at its next syscall */
    }
    if (exc != NULL) {
        compat_restore_exception(exc);
    }
}

int
transport_wants_read(TransportObject *self)
{
    if (self->kind == TRANSPORT_WRITE_PIPE) {
        /* readable means the reader went away -- unless a read pipe shares the fd */
        return self->started && self->watch_peer_close && !self->conn_lost && self->fd_partner == NULL;
    }
    return self->started && !self->closing && !self->reading_paused && !self->read_eof
           && !self->conn_lost;
}

int
transport_check_can_poll(TransportObject *self, int events)
{
    if ((self->loop->closed || !self->loop->uv_ready) && (events & ~self->want_events)) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    return 0;
}

static int update_watcher_writer(TransportObject *self, int events);
static int keeps_read_armed(TransportObject *self, int events);
static int set_poll_events(TransportObject *self, int events);

int
transport_update_poll(TransportObject *self)
{
    if (self->lost || self->loop == NULL || self->sock == NULL || self->context == NULL) {
        return 0;  /* lost, socket forgotten or finalized, or cleared by the GC */
    }
    int events = (transport_wants_read(self) ? UV_READABLE : 0)
                 | (self->queue.count > 0 && !self->conn_lost ? UV_WRITABLE : 0);
    if (self->loop->closed || !self->loop->uv_ready) {
        int refused = transport_check_can_poll(self, events);
        self->want_events = events;
        return refused;
    }
    self->want_events = events;
    if (self->writes_via_watcher) {
        return update_watcher_writer(self, events);
    }
    int lazy = keeps_read_armed(self, events);
    if (set_poll_events(self, events | (lazy ? UV_READABLE : 0)) < 0) {
        return -1;
    }
    /* The loop owns a transport it polls for the transport's sake, not one
     * it polls only lazily: a paused transport nobody holds is collected, as
     * on asyncio (whose selector then forgets it). */
    if (self->poll_events != 0) {
        if (lazy && events == 0) {
            polled_unlink(self);
        }
        else {
            polled_link(self);
        }
    }
    return 0;
}

/* Lazy pause_reading(): libuv's uv_poll_start()/uv_poll_stop() each remove
 * the fd from epoll (EPOLL_CTL_DEL, failing with ENOENT when it was not in
 * it) and the next poll adds it again, so a pause/resume pair cost three
 * epoll_ctl calls, one failing -- per request under anyio, which pauses
 * after every receive.  A paused stream transport keeps polling readable
 * instead; readiness while paused reads nothing and stops it then
 * (stop_lazy_read), so no data_received() comes between pause and resume,
 * as asyncio's.  The fd stays registered with libuv meanwhile, as it does
 * for a paused transport's stopped (not closed) poll. */
static int
keeps_read_armed(TransportObject *self, int events)
{
    return (self->poll_events & UV_READABLE) && !(events & UV_READABLE)
           && self->kind != TRANSPORT_WRITE_PIPE && self->kind != TRANSPORT_DATAGRAM
           && self->reading_paused && self->started && !self->closing && !self->read_eof
           && !self->conn_lost;
}

/* Readable while paused: stop polling readable for real. */
static int
stop_lazy_read(TransportObject *self)
{
    return set_poll_events(self, self->poll_events & ~UV_READABLE);
}

/* The transport stops polling and will hardly poll again (closing, EOF
 * read, connection lost), and nobody shares its poll: the poll is closed
 * rather than stopped (a later write that must wait attaches a new one). */
static int
poll_is_done(TransportObject *self)
{
    TransportPoll *shared = self->poll;
    return (self->closing || self->read_eof || self->conn_lost)
           && (shared->users[0] == NULL || shared->users[0] == self)
           && (shared->users[1] == NULL || shared->users[1] == self);
}

/* Starts, changes or stops this transport's share of its poll. */
static int
set_poll_events(TransportObject *self, int events)
{
    if (events == self->poll_events) {
        return 0;
    }
    if (self->poll == NULL && attach_poll(self) < 0) {
        return -1;
    }
    if (events == 0 && poll_is_done(self)) {
        /* uv_close() alone: it stops the poll, and a uv_poll_stop() first
         * would be one more EPOLL_CTL_DEL (the second failing, ENOENT) */
        poll_stopped(self);
        detach_poll(self);
        return 0;
    }
    int previous = self->poll_events;
    self->poll_events = events;
    if (shared_poll_apply(self->poll) < 0) {
        self->poll_events = previous;
        PyObject *exc = compat_fetch_exception();
        if (shared_poll_apply(self->poll) < 0) {
            PyErr_Clear();
        }
        compat_restore_exception(exc);
        return -1;
    }
    if (previous == 0) {
        self->loop->active_io++;
        polled_link(self);
    }
    else if (events == 0) {
        self->poll_events = previous;
        poll_stopped(self);
    }
    return 0;
}

/* transport_update_poll for callers that cannot report an error. */
static void
update_poll_quietly(TransportObject *self)
{
    PyObject *exc = compat_fetch_exception();
    Py_INCREF(self);
    if (transport_update_poll(self) < 0) {
        PyErr_Clear();
    }
    Py_DECREF(self);
    if (exc != NULL) {
        compat_restore_exception(exc);
    }
}

/* Closes the poll for good (before the fd is closed). */
static void
transport_release_poll(TransportObject *self)
{
    Py_INCREF(self);
    if (self->watcher_writer) {
        /* our writer is still the fd's (add_writer may have replaced it) */
        self->watcher_writer = 0;
        HandleObject *writer = loop_watcher_handle(self->loop, self->fd, UV_WRITABLE);
        if (writer != NULL && writer->callback == self->watcher_callback && self->loop->uv_ready) {
            PyObject *exc = compat_fetch_exception();
            PyObject *fd = PyLong_FromLong(self->fd);
            PyObject *r = fd ? loop_remove_watcher(self->loop, fd, UV_WRITABLE) : NULL;
            Py_XDECREF(r);
            Py_XDECREF(fd);
            PyErr_Clear();
            if (exc != NULL) {
                compat_restore_exception(exc);
            }
        }
    }
    poll_stopped(self);
    detach_poll(self);
    Py_DECREF(self);
}

/* ---- handing a closing transport's fd over to add_reader & co ----
 * asyncio lets add_reader/add_writer/sock_* use the fd of a closing
 * transport: its selector then holds the user's reader next to the
 * transport's writer.  libuv allows one poll per fd, so the transport gives
 * its own up and flushes the rest of its queue through a writer of the
 * loop's watcher for the fd (run in the transport's context); the user's
 * callbacks join that watcher. */

static int
hand_over_fd(TransportObject *self)
{
    if (self->writes_via_watcher || self->lost) {
        return 0;
    }
    transport_release_poll(self);
    self->writes_via_watcher = 1;
    return transport_update_poll(self);
}

static int
update_watcher_writer(TransportObject *self, int events)
{
    if (events & UV_WRITABLE) {
        if (self->watcher_writer) {
            return 0;
        }
        if (self->watcher_callback == NULL) {
            self->watcher_callback = PyObject_GetAttrString(self->context, "run");
            if (self->watcher_callback == NULL) {
                return -1;
            }
        }
        if (self->io_ready_method == NULL) {
            self->io_ready_method = PyObject_GetAttrString((PyObject *)self, "_io_ready");
            if (self->io_ready_method == NULL) {
                return -1;
            }
        }
        PyObject *fd = PyLong_FromLong(self->fd);
        PyObject *writable = fd ? PyLong_FromLong(UV_WRITABLE) : NULL;
        PyObject *r = NULL;
        if (writable != NULL) {
            PyObject *args[4] = {fd, self->watcher_callback, self->io_ready_method, writable};
            r = loop_add_watcher(self->loop, args, 4, UV_WRITABLE);
        }
        Py_XDECREF(fd);
        Py_XDECREF(writable);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
        self->watcher_writer = 1;
        return 0;
    }
    if (self->watcher_writer) {
        transport_release_poll(self);  /* removes our writer; the transport has no poll */
    }
    return 0;
}

/* Runs the transport's handlers for `events`; the context is entered. */
static void
dispatch_events(TransportObject *self, int events)
{
    int datagram = self->kind == TRANSPORT_DATAGRAM;
    if ((events & UV_READABLE) && !self->lost && self->reading_paused
        && self->kind != TRANSPORT_WRITE_PIPE && !datagram) {
        /* the lazily kept readable of a paused transport */
        events &= ~UV_READABLE;
        if (stop_lazy_read(self) < 0) {
            transport_handle_error(self, "Fatal error: cannot poll the transport's file descriptor");
            return;
        }
    }
    if ((events & UV_READABLE) && !self->lost) {
        if (datagram) {
            datagram_on_readable(self);
        }
        else {
            stream_on_readable(self);
        }
    }
    if ((events & UV_WRITABLE) && !self->lost && self->queue.count > 0) {
        if (datagram) {
            datagram_on_writable(self);
        }
        else {
            stream_on_writable(self);
        }
    }
    if (transport_update_poll(self) < 0) {
        transport_handle_error(self, "Fatal error: cannot poll the transport's file descriptor");
    }
}

/* Queues the events behind the callbacks that were ready before this poll,
 * so they run first, as on asyncio (whose selector queues a handle per
 * event).  When nothing was ready the handlers run at once (no Handle).
 * The transport's one Handle (`_io_ready_deferred`, in its context) is
 * queued again each time: with thousands of busy connections, a Handle and
 * an args tuple per event were most of the GC's work (gen0 collections). */
static int
defer_events(TransportObject *self, int events)
{
    if (self->deferred_events != 0) {  /* queued and not run yet: it takes these too */
        self->deferred_events |= events;
        return 0;
    }
    if (self->loop->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    if (self->io_ready_handle == NULL) {
        PyObject *method = PyObject_GetAttrString((PyObject *)self, "_io_ready_deferred");
        if (method == NULL) {
            return -1;
        }
        self->io_ready_handle = handle_new(self->loop, self->loop->state->HandleType, method, NULL, 0,
                                           self->context);
        Py_DECREF(method);
        if (self->io_ready_handle == NULL) {
            return -1;
        }
    }
    if (loop_schedule_handle(self->loop, self->io_ready_handle) < 0) {
        return -1;
    }
    self->deferred_events = events;
    return 0;
}

/* One user's share of a poll event; the caller holds a reference. */
static void
transport_poll_event(TransportObject *self, int events)
{
    LoopObject *loop = self->loop;
    if (loop->defer_io) {
        if (defer_events(self, events) < 0) {
            loop_defer_error(loop);
        }
        return;
    }
    if (PyContext_Enter(self->context) < 0) {
        transport_handle_error(self, "Fatal error: cannot enter the transport's context");
        return;
    }
    dispatch_events(self, events);
    PyObject *exc = PyErr_Occurred() ? compat_fetch_exception() : NULL;
    if (PyContext_Exit(self->context) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    if (exc != NULL) {
        compat_restore_exception(exc);
        loop_defer_error(loop);
    }
}

static void
on_poll(uv_poll_t *poll, int status, int events)
{
    loop_take_gil(poll->loop->data);  /* first: the changes it applies may close this poll */
    TransportPoll *shared = poll->data;
    if (shared == NULL) {  /* closed (maybe by those changes) */
        return;
    }
    stats_io_event(shared->loop);
    TransportObject *users[2] = {shared->users[0], shared->users[1]};
    int wanted[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        if (users[i] != NULL) {
            Py_INCREF(users[i]);
            wanted[i] = users[i]->poll_events;
        }
    }
    if (status < 0) {
        /* libuv stopped the poll (e.g. POLLERR): each user retries what it
         * wanted; the syscalls report the real error or EOF. */
        shared_poll_stopped(shared);
    }
    for (int i = 0; i < 2; i++) {
        TransportObject *user = users[i];
        int user_events = status < 0 ? wanted[i] : (events & wanted[i]);
        /* the other user's callbacks may have closed this one meanwhile */
        if (user != NULL && user_events != 0 && user->poll == shared && !user->lost) {
            transport_poll_event(user, user_events);
        }
    }
    Py_XDECREF(users[0]);
    Py_XDECREF(users[1]);
}

/* _io_ready(events): the deferred form of on_poll, run by a Handle in the
 * transport's context. */
static PyObject *
transport_io_ready(TransportObject *self, PyObject *events_obj)
{
    int events = (int)PyLong_AsLong(events_obj);
    if (events == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (self->lost || self->loop == NULL || self->sock == NULL) {
        Py_RETURN_NONE;  /* queued before the connection was lost or the socket forgotten */
    }
    dispatch_events(self, events);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _io_ready_deferred(): what defer_events queued, run by the transport's
 * Handle in its context. */
static PyObject *
transport_io_ready_deferred(TransportObject *self, PyObject *unused)
{
    int events = self->deferred_events;
    self->deferred_events = 0;
    if (events == 0 || self->lost || self->loop == NULL || self->sock == NULL) {
        Py_RETURN_NONE;  /* queued before the connection was lost or the socket forgotten */
    }
    dispatch_events(self, events);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- protocol calls and errors ---- */

PyObject *
transport_call_protocol(TransportObject *self, PyObject *name, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *stack[4];
    assert(nargs <= 3);
    if (self->protocol == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "transport has no protocol");
        return NULL;
    }
    /* owned while the method runs: it may set_protocol() another one */
    PyObject *protocol = Py_NewRef(self->protocol);
    stack[0] = protocol;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        stack[i + 1] = args[i];
    }
    PyObject *result = PyObject_VectorcallMethod(name, stack, (nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(protocol);
    return result;
}

void
transport_handle_error(TransportObject *self, const char *message)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        loop_defer_error(self->loop);
        return;
    }
    PyObject *exc = compat_fetch_exception();
    transport_fatal_error(self, exc, message);
    Py_XDECREF(exc);
}

static int
is_quiet_error(TransportObject *self, PyObject *exc)
{
    if (self->kind == TRANSPORT_READ_PIPE) {
        /* A read pipe only keeps quiet about EIO (a pty whose other end closed). */
        if (!PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_OSError)) {
            return 0;
        }
        PyObject *error_number = PyObject_GetAttrString(exc, "errno");
        int quiet = error_number != NULL && PyLong_Check(error_number)
                    && PyLong_AsLong(error_number) == EIO;
        Py_XDECREF(error_number);
        PyErr_Clear();
        return quiet;
    }
    return PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_OSError);
}

void
transport_fatal_error(TransportObject *self, PyObject *exc, const char *message)
{
    if (exc == NULL) {
        return;
    }
    if (!is_quiet_error(self, exc) && self->loop != NULL) {
        PyObject *context = Py_BuildValue("{s:s,s:O,s:O,s:O}", "message", message,
                                          "exception", exc, "transport", (PyObject *)self,
                                          "protocol", self->protocol ? self->protocol : Py_None);
        PyObject *result = context ? PyObject_CallMethodOneArg(
            (PyObject *)self->loop, state_of(self)->str_call_exception_handler, context) : NULL;
        Py_XDECREF(context);
        if (result == NULL) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        Py_XDECREF(result);
    }
    transport_force_close(self, exc);
}

void
transport_settle_future(PyObject *future, PyObject *method, PyObject *value)
{
    Py_INCREF(future);  /* callers pass self->empty_waiter, which Python code may reset */
    Py_INCREF(value);
    PyObject *done = PyObject_CallMethod(future, "done", NULL);
    int is_done = done ? PyObject_IsTrue(done) : 1;
    Py_XDECREF(done);
    if (!is_done) {
        PyObject *r = PyObject_CallMethodOneArg(future, method, value);
        Py_XDECREF(r);
    }
    PyErr_Clear();
    Py_DECREF(value);
    Py_DECREF(future);
}

int
transport_schedule_call(TransportObject *self, PyObject *callable, PyObject *arg)
{
    if (self->loop->closed) {
        /* as asyncio's transports, whose call_soon() refuses a closed loop */
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    PyObject *args[1] = {arg};
    HandleObject *handle = handle_new(self->loop, self->loop->state->HandleType, callable, args,
                                      arg ? 1 : 0, self->context);
    if (handle == NULL) {
        return -1;
    }
    int rc = loop_schedule_handle(self->loop, handle);
    Py_DECREF(handle);
    return rc;
}

int
transport_schedule_connection_lost(TransportObject *self, PyObject *exc)
{
    PyObject *method = PyObject_GetAttr((PyObject *)self, state_of(self)->str_call_connection_lost);
    if (method == NULL) {
        return -1;
    }
    int rc = transport_schedule_call(self, method, exc ? exc : Py_None);
    Py_DECREF(method);
    return rc;
}

void
transport_force_close(TransportObject *self, PyObject *exc)
{
    if (self->conn_lost || self->loop == NULL) {
        return;
    }
    write_queue_clear(&self->queue);
    self->closing = 1;
    self->conn_lost++;
    if (transport_update_poll(self) < 0) {
        PyErr_Clear();
    }
    if (transport_schedule_connection_lost(self, exc) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
}

void
transport_warn_write_after_lost(TransportObject *self, const char *message)
{
    if (self->conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES) {
        PyObject *result = PyObject_CallMethod(state_of(self)->asyncio_logger, "warning", "s", message);
        if (result == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(result);
    }
    self->conn_lost++;
}

/* ---- flow control ---- */

void
transport_report_error(TransportObject *self, const char *message)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        loop_defer_error(self->loop);
        return;
    }
    PyObject *exc = compat_fetch_exception();
    PyObject *context = Py_BuildValue("{s:s,s:O,s:O,s:O}", "message", message, "exception", exc,
                                      "transport", (PyObject *)self,
                                      "protocol", self->protocol ? self->protocol : Py_None);
    PyObject *r = context ? PyObject_CallMethodOneArg(
        (PyObject *)self->loop, state_of(self)->str_call_exception_handler, context) : NULL;
    if (r == NULL) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    Py_XDECREF(r);
    Py_XDECREF(context);
    Py_XDECREF(exc);
}

static void
call_flow_control(TransportObject *self, PyObject *name, const char *message)
{
    PyObject *result = transport_call_protocol(self, name, NULL, 0);
    if (result == NULL) {
        transport_report_error(self, message);
    }
    Py_XDECREF(result);
}

void
transport_maybe_pause_protocol(TransportObject *self)
{
    if (self->queue.bytes <= self->high_water || self->writing_paused) {
        return;
    }
    self->writing_paused = 1;
    call_flow_control(self, state_of(self)->str_pause_writing, "protocol.pause_writing() failed");
}

void
transport_maybe_resume_protocol(TransportObject *self)
{
    if (!self->writing_paused || self->queue.bytes > self->low_water) {
        return;
    }
    self->writing_paused = 0;
    call_flow_control(self, state_of(self)->str_resume_writing, "protocol.resume_writing() failed");
}

/* ---- set-up ---- */

static int
set_protocol_fields(TransportObject *self, PyObject *protocol)
{
    int buffered = PyObject_IsInstance(protocol, state_of(self)->BufferedProtocolType);
    if (buffered < 0) {
        return -1;
    }
    Py_XSETREF(self->protocol, Py_NewRef(protocol));
    self->buffered_protocol = (char)buffered;
    return 0;
}

int
transport_setup(TransportObject *self, LoopObject *loop, PyObject *sock, PyObject *protocol,
                PyObject *extra, PyObject *server, TransportKind kind)
{
    self->fd = -1;
    self->kind = kind;
    self->loop = (LoopObject *)Py_NewRef(loop);
    if (loop->closed || !loop->uv_ready) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    int fd = PyObject_AsFileDescriptor(sock);
    if (fd < 0) {
        return -1;
    }
    self->fd = fd;
    if (registry_enter(self, fd) < 0) {
        self->fd = -1;
        return -1;  /* another live transport uses it: asyncio refuses too */
    }
    if (extra == NULL || extra == Py_None) {
        self->extra = PyDict_New();
    }
    else if (PyDict_Check(extra)) {
        self->extra = Py_NewRef(extra);
    }
    else {
        PyErr_SetString(PyExc_TypeError, "extra must be a dict or None");
        return -1;
    }
    if (self->extra == NULL || set_protocol_fields(self, protocol) < 0) {
        return -1;
    }
    self->context = PyContext_CopyCurrent();
    if (self->context == NULL) {
        return -1;
    }
    self->high_water = DEFAULT_HIGH_WATER;
    self->low_water = DEFAULT_HIGH_WATER / 4;
    self->sock = Py_NewRef(sock);
    if (server != NULL && server != Py_None) {
        self->server = Py_NewRef(server);
        PyObject *args[2] = {server, (PyObject *)self};
#if PY_VERSION_HEX >= 0x030D0000
        PyObject *r = PyObject_VectorcallMethod(state_of(self)->str_attach, args,
                                                2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
#else
        PyObject *r = PyObject_VectorcallMethod(state_of(self)->str_attach, args,
                                                1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
#endif
        if (r == NULL) {
            Py_CLEAR(self->server);
            return -1;
        }
        Py_DECREF(r);
    }
    return 0;
}

int
transport_schedule_start(TransportObject *self, PyObject *waiter)
{
    PyObject *method = PyObject_GetAttr((PyObject *)self, state_of(self)->str_connection_made_cb);
    if (method == NULL) {
        return -1;
    }
    int rc = transport_schedule_call(self, method, waiter ? waiter : Py_None);
    Py_DECREF(method);
    return rc;
}

/* ---- methods every kind has ---- */

static void remember_socket_info(TransportObject *self);

/* _connection_made(waiter): protocol.connection_made(self), then reading
 * starts and the waiter (if any) gets its result.  An exception from
 * connection_made is re-raised at the end, for the Handle to report. */
static PyObject *
transport_connection_made(TransportObject *self, PyObject *waiter)
{
    if (self->lost || self->protocol == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *args[1] = {(PyObject *)self};
    PyObject *result = transport_call_protocol(self, state_of(self)->str_connection_made, args, 1);
    PyObject *exc = NULL;
    if (result == NULL) {
        exc = compat_fetch_exception();
    }
    Py_XDECREF(result);
    self->started = 1;
    if (transport_update_poll(self) < 0) {
        PyObject *poll_exc = compat_fetch_exception();
        transport_fatal_error(self, poll_exc, "Fatal error: cannot poll the transport's file descriptor");
        Py_XDECREF(poll_exc);
    }
    if (waiter != Py_None) {
        PyObject *cancelled = PyObject_CallMethodNoArgs(waiter, state_of(self)->str_cancelled);
        int is_cancelled = cancelled ? PyObject_IsTrue(cancelled) : -1;
        Py_XDECREF(cancelled);
        if (is_cancelled == 0) {
            PyObject *r = PyObject_CallMethodOneArg(waiter, state_of(self)->str_set_result, Py_None);
            Py_XDECREF(r);
            is_cancelled = r ? 0 : -1;
        }
        if (is_cancelled < 0) {
            Py_XDECREF(exc);
            return NULL;
        }
    }
    if (exc != NULL) {
        compat_restore_exception(exc);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _call_connection_lost(exc): connection_lost once, then release everything. */
static PyObject *
transport_call_connection_lost(TransportObject *self, PyObject *exc)
{
    if (self->lost) {
        Py_RETURN_NONE;
    }
    self->lost = 1;
    PyObject *result = NULL;
    if (self->protocol != NULL) {
        PyObject *args[1] = {exc};
        result = transport_call_protocol(self, state_of(self)->str_connection_lost, args, 1);
    }
    else {
        result = Py_NewRef(Py_None);
    }
    PyObject *error = result ? NULL : compat_fetch_exception();
    Py_XDECREF(result);

    transport_release_poll(self);
    write_queue_clear(&self->queue);
    registry_remove(self);
    if (self->sock != NULL) {
        if (self->kind == TRANSPORT_SOCKET_STREAM) {
            remember_socket_info(self);
        }
        PyObject *sock = self->sock;
        self->sock = NULL;
        PyObject *r = PyObject_CallMethodNoArgs(sock, state_of(self)->str_close);
        Py_DECREF(sock);
        if (r == NULL) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        Py_XDECREF(r);
    }
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->io_ready_method);
    Py_CLEAR(self->io_ready_handle);  /* (a queued run finds the connection lost) */
    if (self->server != NULL) {
        PyObject *server = self->server;
        self->server = NULL;
        PyObject *args[2] = {server, (PyObject *)self};
#if PY_VERSION_HEX >= 0x030D0000
        PyObject *r = PyObject_VectorcallMethod(state_of(self)->str_detach, args,
                                                2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
#else
        PyObject *r = PyObject_VectorcallMethod(state_of(self)->str_detach, args,
                                                1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
#endif
        Py_DECREF(server);
        if (r == NULL) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        Py_XDECREF(r);
    }
    if (self->empty_waiter != NULL) {
        PyObject *waiter = self->empty_waiter;
        self->empty_waiter = NULL;
        PyObject *lost = PyObject_CallFunction(PyExc_ConnectionError, "s", "Connection is closed by peer");
        if (lost != NULL) {
            transport_settle_future(waiter, state_of(self)->str_set_exception, lost);
            Py_DECREF(lost);
        }
        PyErr_Clear();
        Py_DECREF(waiter);
    }
    if (error != NULL) {
        compat_restore_exception(error);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The 'socket' of a stream transport.  The transport class's _socket_class
 * (pyasync_c._network.TransportSocket, a subclass of asyncio's) is called as
 * cls(sock, peername): it answers getpeername()/getsockname() from what the
 * transport already knows while the connection is open -- anyio asks for the
 * peer on every attribute lookup (httpcore: every request), one system call
 * each with asyncio's class.  Without _socket_class: asyncio's TransportSocket. */
static PyObject *
make_transport_socket(TransportObject *self, PyObject *extra, PyObject *sock)
{
    PyObject *cls = PyObject_GetAttr((PyObject *)Py_TYPE(self), state_of(self)->str_socket_class);
    if (cls == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return NULL;
        }
        PyErr_Clear();
        return PyObject_CallOneArg(state_of(self)->TransportSocketType, sock);
    }
    /* extra NULL: the connection is closing, nothing to cache */
    PyObject *peername = extra != NULL ? PyDict_GetItemString(extra, "peername") : NULL;
    peername = Py_NewRef(peername != NULL ? peername : Py_None);  /* owned across the call */
    PyObject *args[2] = {sock, peername};
    PyObject *value = PyObject_Vectorcall(cls, args, 2, NULL);
    Py_DECREF(peername);
    Py_DECREF(cls);
    return value;
}


/* get_extra_info(name, default=None).  'socket' (asyncio's TransportSocket)
 * and 'sockname' of stream sockets are made on first use and cached in the
 * extra dict: an idle connection does not carry them. */
static PyObject *
transport_get_extra_info(TransportObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get_extra_info() takes a name and an optional default");
        return NULL;
    }
    PyObject *name = args[0];
    PyObject *fallback = nargs > 1 ? args[1] : Py_None;
    /* owned: name's __eq__/__hash__ may replace _extra meanwhile */
    PyObject *extra = Py_NewRef(self->extra);
    PyObject *value = PyDict_GetItemWithError(extra, name);
    if (value != NULL || PyErr_Occurred()) {
        Py_XINCREF(value);
        Py_DECREF(extra);
        return value;
    }
    PyObject *sock = self->sock != NULL ? self->sock : self->closed_sock;
    if (self->kind != TRANSPORT_SOCKET_STREAM || sock == NULL || !PyUnicode_Check(name)) {
        Py_DECREF(extra);
        return Py_NewRef(fallback);
    }
    Py_INCREF(sock);
    if (PyUnicode_CompareWithASCIIString(name, "socket") == 0) {
        /* after close: no cache, it raises as the closed socket does */
        value = make_transport_socket(self, self->sock != NULL ? extra : NULL, sock);
        if (value != NULL && self->sock == NULL) {
            Py_CLEAR(self->closed_sock);
        }
    }
    else if (self->sock == NULL) {  /* closed: 'sockname' was kept at close if known */
        value = Py_NewRef(fallback);
        Py_DECREF(sock);
        Py_DECREF(extra);
        return value;
    }
    else if (PyUnicode_CompareWithASCIIString(name, "sockname") == 0) {
        value = PyObject_CallMethod(sock, "getsockname", NULL);
        if (value == NULL && PyErr_ExceptionMatches(PyExc_OSError)) {
            PyErr_Clear();
            value = Py_NewRef(Py_None);
        }
    }
    else {
        value = Py_NewRef(fallback);
        Py_DECREF(sock);
        Py_DECREF(extra);
        return value;
    }
    Py_DECREF(sock);
    if (value == NULL || PyDict_SetItem(extra, name, value) < 0) {
        Py_XDECREF(value);
        value = NULL;
    }
    Py_DECREF(extra);
    return value;
}

/* _force_close(exc): asyncio's SSLProtocol calls it on its transport. */
static PyObject *
transport_force_close_method(TransportObject *self, PyObject *exc)
{
    transport_force_close(self, exc == Py_None ? NULL : exc);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* A closed socket cannot be asked any more: keep what get_extra_info()
 * would have answered while it was open.  'sockname': read now (an IP
 * address straight into its tuple, no Python call), unless already known.
 * 'socket': one already handed out stops answering from its cache, so that
 * afterwards it raises as the closed socket does, as asyncio's; if none was
 * asked for, the closed socket object is kept (closed_sock) and the
 * TransportSocket is made only if get_extra_info('socket') is ever called --
 * a connection that nobody asks about makes no Python object at close. */
static void
remember_socket_info(TransportObject *self)
{
    PyObject *extra = Py_NewRef(self->extra);
    ModuleState *state = state_of(self);
    PyObject *known = PyDict_GetItemWithError(extra, state->str_sockname);  /* str: no error */
    if (known == NULL) {
        struct sockaddr_storage address;
        socklen_t length = sizeof address;
        PyObject *value = NULL;
        memset(&address, 0, sizeof address);
        if (self->fd >= 0 && getsockname(self->fd, (struct sockaddr *)&address, &length) == 0
            && (address.ss_family == AF_INET || address.ss_family == AF_INET6)) {
            value = ip_address_tuple(&address);
            if (value != NULL) {
                PyDict_SetItem(extra, state->str_sockname, value);
            }
            Py_XDECREF(value);
        }
        else {  /* another family (or an error): as socket.getsockname() says */
            PyObject *name = PyUnicode_FromString("sockname");
            PyObject *args[1] = {name};
            value = name ? transport_get_extra_info(self, args, 1) : NULL;
            Py_XDECREF(value);
            Py_XDECREF(name);
        }
        PyErr_Clear();
    }

    PyObject *value = PyDict_GetItemWithError(extra, state->str_socket);
    if (value != NULL) {
        Py_INCREF(value);
        PyObject *r = PyObject_CallMethodNoArgs(value, state->str_connection_closed);
        Py_XDECREF(r);  /* AttributeError: not ours (a user's 'socket' extra) */
        Py_DECREF(value);
    }
    else if (self->sock != NULL) {
        Py_XSETREF(self->closed_sock, Py_NewRef(self->sock));
    }
    Py_DECREF(extra);
    PyErr_Clear();
}

static PyObject *
transport_get_protocol(TransportObject *self, PyObject *unused)
{
    return Py_NewRef(self->protocol ? self->protocol : Py_None);
}

static PyObject *
transport_set_protocol(TransportObject *self, PyObject *protocol)
{
    if (set_protocol_fields(self, protocol) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
transport_is_closing(TransportObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->closing);
}

static PyObject *
transport_get_write_buffer_size(TransportObject *self, PyObject *unused)
{
    return PyLong_FromSsize_t(self->queue.bytes);
}

static PyObject *
transport_get_write_buffer_limits(TransportObject *self, PyObject *unused)
{
    return transport_buffer_limits_tuple(self->write_limits, self->high_water, self->low_water);
}

/* ---- flow-control limits (shared with tls_transport.c) ----
 *
 * asyncio keeps the limits as the objects it was given (or computed: 4 * low,
 * high // 4) and compares them with the buffer size on every write; any
 * object passing `high >= low >= 0` is accepted (floats, huge ints, bools).
 * We keep C integers that give the same answers for whole byte counts, and the
 * objects themselves only when they are not plain ints in range, so that
 * get_write_buffer_limits() returns what asyncio's returns. */

/* Integral `value` as a Py_ssize_t, saturated; *exact: it fit. */
static int
saturate_int(PyObject *value, Py_ssize_t *out, int *exact)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow > 0 || v > PY_SSIZE_T_MAX) {
        *out = PY_SSIZE_T_MAX;
    }
    else if (overflow < 0 || v < PY_SSIZE_T_MIN) {
        *out = PY_SSIZE_T_MIN;
    }
    else {
        *out = (Py_ssize_t)v;
        return 0;
    }
    *exact = 0;
    return 0;
}

/* The comparison asyncio makes between a buffer size n and a limit, as the
 * question "has n passed the threshold?" (false for small n, true above):
 * a high mark pauses when n > high (n >= high: round_up), a low mark stops
 * resuming when not n <= low.  1, 0 or -1 (error). */
static int
limit_passed(Py_ssize_t n, PyObject *limit, int is_high, int round_up)
{
    PyObject *size = PyLong_FromSsize_t(n);
    if (size == NULL) {
        return -1;
    }
    int result = PyObject_RichCompareBool(size, limit, is_high ? (round_up ? Py_GE : Py_GT) : Py_LE);
    Py_DECREF(size);
    return result < 0 ? -1 : is_high ? result : !result;
}

/* The C threshold of a limit that only supports comparisons with ints (no
 * floor/ceiling): a binary search over buffer sizes 0..PY_SSIZE_T_MAX for the
 * first size past it (the comparisons are assumed monotonic, as for any
 * ordered value), then the C form of limit_threshold: pause when
 * size > high (size >= high with round_up), resume when size <= low. */
static int
limit_threshold_by_comparison(PyObject *value, int is_high, int round_up, Py_ssize_t *out)
{
    Py_ssize_t lo = 0, hi = PY_SSIZE_T_MAX;
    int passed = limit_passed(hi, value, is_high, round_up);
    if (passed <= 0) {
        *out = PY_SSIZE_T_MAX;  /* never passed: never pauses / always resumes */
        return passed;
    }
    while (lo < hi) {  /* invariant: the first size past it is in [lo, hi] */
        Py_ssize_t mid = lo + (hi - lo) / 2;
        passed = limit_passed(mid, value, is_high, round_up);
        if (passed < 0) {
            return -1;
        }
        if (passed) {
            hi = mid;
        }
        else {
            lo = mid + 1;
        }
    }
    *out = is_high && round_up ? lo : lo - 1;
    return 0;
}

/* The C threshold for one limit.  For a whole byte count n, `n <= x` and
 * `n > x` equal `n <= floor(x)` and `n > floor(x)`; `n >= x` equals
 * `n >= ceil(x)` (round_up).  Beyond Py_ssize_t: saturated (10**30 never
 * pauses, as with asyncio).  NaN compares false with everything: a high mark
 * that never pauses, a low mark that never resumes.  *exact: value is an
 * exact int that fits (no need to keep the object). */
static int
limit_threshold(PyObject *value, int is_high, int round_up, Py_ssize_t *out, int *exact)
{
    *exact = PyLong_CheckExact(value);
    if (PyLong_Check(value)) {
        return saturate_int(value, out, exact);
    }
    if (PyFloat_Check(value)) {
        double d = PyFloat_AS_DOUBLE(value);
        if (isnan(d)) {
            *out = is_high ? PY_SSIZE_T_MAX : PY_SSIZE_T_MIN;
            return 0;
        }
        d = round_up ? ceil(d) : floor(d);
        /* 2**63 is the first double above PY_SSIZE_T_MAX (64-bit) */
        if (d >= -(double)PY_SSIZE_T_MIN) {
            *out = PY_SSIZE_T_MAX;
        }
        else if (d < (double)PY_SSIZE_T_MIN) {
            *out = PY_SSIZE_T_MIN;
        }
        else {
            *out = (Py_ssize_t)d;
        }
        return 0;
    }
    /* Fraction, Decimal, ...: math.floor/ceil give the exact integer */
    PyObject *math = PyImport_ImportModule("math");
    if (math == NULL) {
        return -1;
    }
    PyObject *integer = PyObject_CallMethod(math, round_up ? "ceil" : "floor", "O", value);
    Py_DECREF(math);
    if (integer == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
            return -1;
        }
        /* Not a number, but asyncio only ever compares the limits with the
         * buffer size: find the same threshold by comparisons. */
        PyErr_Clear();
        *exact = 0;
        return limit_threshold_by_comparison(value, is_high, round_up, out);
    }
    int rc;
    if (PyLong_Check(integer)) {
        rc = saturate_int(integer, out, exact);
    }
    else {
        PyErr_Format(PyExc_TypeError, "buffer limit %R has no integer floor/ceiling", value);
        rc = -1;
    }
    Py_DECREF(integer);
    return rc;
}

int
transport_parse_buffer_limits(PyObject *high, PyObject *low, Py_ssize_t default_high,
                              int pause_at_high, Py_ssize_t *out_high, Py_ssize_t *out_low,
                              PyObject **out_values)
{
    *out_values = NULL;
    high = high == NULL ? Py_None : high;
    low = low == NULL ? Py_None : low;
    if (high == Py_None && low == Py_None) {   /* the defaults: no Python arithmetic */
        *out_high = default_high;
        *out_low = default_high / 4;
        return 0;
    }
    /* asyncio's steps on the objects: `high = 4 * low`, `low = high // 4`,
     * `if not high >= low >= 0: raise ValueError(...)` (same exceptions for
     * values that do not support them) */
    PyObject *four = PyLong_FromLong(4), *zero = PyLong_FromLong(0);
    PyObject *hi = NULL, *lo = NULL;
    if (four == NULL || zero == NULL) {
        goto error;
    }
    if (high == Py_None) {
        lo = Py_NewRef(low);
        hi = PyNumber_Multiply(four, lo);
    }
    else {
        hi = Py_NewRef(high);
        lo = low == Py_None ? PyNumber_FloorDivide(hi, four) : Py_NewRef(low);
    }
    if (hi == NULL || lo == NULL) {
        goto error;
    }
    int ok = PyObject_RichCompareBool(hi, lo, Py_GE);
    if (ok > 0) {
        ok = PyObject_RichCompareBool(lo, zero, Py_GE);
    }
    if (ok < 0) {
        goto error;
    }
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "high (%R) must be >= low (%R) must be >= 0", hi, lo);
        goto error;
    }
    int hi_exact, lo_exact;
    Py_ssize_t high_c, low_c;
    if (limit_threshold(hi, 1, pause_at_high, &high_c, &hi_exact) < 0
        || limit_threshold(lo, 0, 0, &low_c, &lo_exact) < 0) {
        goto error;
    }
    if (!(hi_exact && lo_exact) && (*out_values = PyTuple_Pack(2, lo, hi)) == NULL) {
        goto error;
    }
    *out_high = high_c;
    *out_low = low_c;
    Py_DECREF(hi);
    Py_DECREF(lo);
    Py_DECREF(four);
    Py_DECREF(zero);
    return 0;
error:
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(four);
    Py_XDECREF(zero);
    return -1;
}

PyObject *
transport_buffer_limits_tuple(PyObject *values, Py_ssize_t high, Py_ssize_t low)
{
    if (values != NULL) {
        return Py_NewRef(values);
    }
    return Py_BuildValue("(nn)", low, high);
}

static PyObject *
transport_set_write_buffer_limits(TransportObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"high", "low", NULL};
    PyObject *high_obj = Py_None, *low_obj = Py_None, *values;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:set_write_buffer_limits", keywords,
                                     &high_obj, &low_obj)) {
        return NULL;
    }
    /* _FlowControlMixin pauses when size > high: pause_at_high = 0 */
    Py_ssize_t high, low;
    if (transport_parse_buffer_limits(high_obj, low_obj, DEFAULT_HIGH_WATER, 0, &high, &low,
                                      &values) < 0) {
        return NULL;
    }
    self->high_water = high;
    self->low_water = low;
    Py_XSETREF(self->write_limits, values);
    transport_maybe_pause_protocol(self);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
transport_make_empty_waiter(TransportObject *self, PyObject *unused)
{
    if (self->empty_waiter != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Empty waiter is already set");
        return NULL;
    }
    PyObject *waiter = PyObject_CallMethod((PyObject *)self->loop, "create_future", NULL);
    if (waiter == NULL) {
        return NULL;
    }
    if (self->queue.count == 0) {
        PyObject *r = PyObject_CallMethodOneArg(waiter, state_of(self)->str_set_result, Py_None);
        if (r == NULL) {
            Py_DECREF(waiter);
            return NULL;
        }
        Py_DECREF(r);
    }
    self->empty_waiter = Py_NewRef(waiter);
    /* sendfile lends the fd of the paused transport to add_writer: libuv
     * allows one poll per fd, so a lazily kept readable stops now */
    if (!transport_wants_read(self) && (self->poll_events & UV_READABLE)
        && self->kind != TRANSPORT_WRITE_PIPE && stop_lazy_read(self) < 0) {
        Py_DECREF(waiter);
        return NULL;
    }
    return waiter;
}

static PyObject *
transport_reset_empty_waiter(TransportObject *self, PyObject *unused)
{
    Py_CLEAR(self->empty_waiter);
    Py_RETURN_NONE;
}

PyMethodDef transport_common_methods[] = {
    {"get_extra_info", (PyCFunction)(void (*)(void))transport_get_extra_info, METH_FASTCALL,
     "Return optional transport information: 'socket', 'sockname', 'peername', ..."},
    {"get_protocol", (PyCFunction)transport_get_protocol, METH_NOARGS, "Return the current protocol."},
    {"set_protocol", (PyCFunction)transport_set_protocol, METH_O, "Set a new protocol."},
    {"is_closing", (PyCFunction)transport_is_closing, METH_NOARGS,
     "Return True if the transport is closing or closed."},
    {"_connection_made", (PyCFunction)transport_connection_made, METH_O, NULL},
    {"_call_connection_lost", (PyCFunction)transport_call_connection_lost, METH_O, NULL},
    {"_force_close", (PyCFunction)transport_force_close_method, METH_O, NULL},
    {"_io_ready", (PyCFunction)transport_io_ready, METH_O, NULL},
    {"_io_ready_deferred", (PyCFunction)transport_io_ready_deferred, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* Writable kinds also get these (listed by the kinds' tables). */
static PyObject *transport_abort(TransportObject *self, PyObject *unused);

PyMethodDef transport_write_methods[] = {
    /* listed by the kinds that write */
    {"get_write_buffer_size", (PyCFunction)transport_get_write_buffer_size, METH_NOARGS,
     "Return the current size of the write buffer."},
    {"get_write_buffer_limits", (PyCFunction)transport_get_write_buffer_limits, METH_NOARGS,
     "Return (low, high), the write buffer's flow-control limits."},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))transport_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, "Set the high- and low-water limits for write flow control."},
    {"_make_empty_waiter", (PyCFunction)transport_make_empty_waiter, METH_NOARGS, NULL},
    {"_reset_empty_waiter", (PyCFunction)transport_reset_empty_waiter, METH_NOARGS, NULL},
    {"abort", (PyCFunction)transport_abort, METH_NOARGS,
     "Close at once, dropping buffered data; connection_lost(None) follows."},
    {NULL, NULL, 0, NULL},
};

/* ---- shared by the kinds' methods and constructors ---- */

PyObject *
transport_after_queued(TransportObject *self)
{
    if (transport_update_poll(self) < 0) {
        return NULL;
    }
    transport_maybe_pause_protocol(self);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *
transport_close(TransportObject *self, PyObject *unused)
{
    if (self->closing || self->sock == NULL) {
        Py_RETURN_NONE;  /* already closing, or the socket was forgotten (`_sock = None`) */
    }
    self->closing = 1;
    if (self->queue.count == 0 && !self->conn_lost) {
        self->conn_lost++;
        if (transport_schedule_connection_lost(self, NULL) < 0) {
            return NULL;
        }
    }
    if (transport_update_poll(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
transport_abort(TransportObject *self, PyObject *unused)
{
    if (self->loop->closed && !self->conn_lost) {
        /* asyncio gets this far before its call_soon() refuses the closed loop */
        write_queue_clear(&self->queue);
        self->closing = 1;
        self->conn_lost++;
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return NULL;
    }
    transport_force_close(self, NULL);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

TransportObject *
transport_alloc(PyTypeObject *type, PyObject *loop, ModuleState **state_out)
{
    PyObject *module = PyType_GetModuleByDef(type, &loop_module_def);
    if (module == NULL) {
        return NULL;
    }
    ModuleState *state = PyModule_GetState(module);
    if (!PyObject_TypeCheck(loop, state->LoopCoreType)) {
        PyErr_Format(PyExc_TypeError, "loop must be a pyasync_c loop, not %.100s", Py_TYPE(loop)->tp_name);
        return NULL;
    }
    *state_out = state;
    return (TransportObject *)type->tp_alloc(type, 0);
}

void
transport_discard(TransportObject *self)
{
    /* Not handed out yet: the socket stays the caller's (no close, no warning). */
    Py_CLEAR(self->sock);
    Py_DECREF(self);
}

/* ---- getsets ---- */

static PyObject *
get_extra(TransportObject *self, void *closure)
{
    return Py_NewRef(self->extra ? self->extra : Py_None);
}

static int
set_extra(TransportObject *self, PyObject *value, void *closure)
{
    if (value == NULL || !PyDict_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "_extra must be a dict");
        return -1;
    }
    Py_XSETREF(self->extra, Py_NewRef(value));
    return 0;
}

static PyObject *
get_sock(TransportObject *self, void *closure)
{
    return Py_NewRef(self->sock ? self->sock : Py_None);
}

/* Setting _sock/_pipe to None makes the transport forget its socket without
 * closing it (asyncio's own tests do that to silence the ResourceWarning). */
static int
set_sock(TransportObject *self, PyObject *value, void *closure)
{
    if (value == NULL || value != Py_None) {
        PyErr_SetString(PyExc_AttributeError, "only None can be assigned to the transport's socket");
        return -1;
    }
    if (self->sock != NULL) {
        transport_release_poll(self);
        registry_remove(self);
        Py_CLEAR(self->sock);
    }
    return 0;
}

static PyObject *
get_fd(TransportObject *self, void *closure)
{
    return PyLong_FromLong(self->fd);
}

static PyObject *
get_loop(TransportObject *self, void *closure)
{
    if (self->lost || self->loop == NULL) {
        Py_RETURN_NONE;
    }
    return Py_NewRef((PyObject *)self->loop);
}

static PyObject *
get_protocol_attr(TransportObject *self, void *closure)
{
    return Py_NewRef(self->protocol ? self->protocol : Py_None);
}

static PyObject *
get_closing(TransportObject *self, void *closure)
{
    return PyBool_FromLong(self->closing);
}

static PyObject *
get_conn_lost(TransportObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->conn_lost);
}

static PyObject *
get_paused(TransportObject *self, void *closure)
{
    return PyBool_FromLong(self->reading_paused);
}

static PyObject *
get_protocol_paused(TransportObject *self, void *closure)
{
    return PyBool_FromLong(self->writing_paused);
}

static PyObject *
get_high_water(TransportObject *self, void *closure)
{
    if (self->write_limits != NULL) {
        return Py_NewRef(PyTuple_GET_ITEM(self->write_limits, 1));
    }
    return PyLong_FromSsize_t(self->high_water);
}

static PyObject *
get_low_water(TransportObject *self, void *closure)
{
    if (self->write_limits != NULL) {
        return Py_NewRef(PyTuple_GET_ITEM(self->write_limits, 0));
    }
    return PyLong_FromSsize_t(self->low_water);
}

static PyObject *
get_server(TransportObject *self, void *closure)
{
    return Py_NewRef(self->server ? self->server : Py_None);
}

static PyObject *
get_empty_waiter(TransportObject *self, void *closure)
{
    return Py_NewRef(self->empty_waiter ? self->empty_waiter : Py_None);
}

PyGetSetDef transport_getsets[] = {
    {"_extra", (getter)get_extra, (setter)set_extra, NULL, NULL},
    {"_sock", (getter)get_sock, (setter)set_sock, NULL, NULL},
    {"_pipe", (getter)get_sock, (setter)set_sock, NULL, NULL},
    {"_sock_fd", (getter)get_fd, NULL, NULL, NULL},
    {"_fileno", (getter)get_fd, NULL, NULL, NULL},
    {"_loop", (getter)get_loop, NULL, NULL, NULL},
    {"_protocol", (getter)get_protocol_attr, NULL, NULL, NULL},
    {"_closing", (getter)get_closing, NULL, NULL, NULL},
    {"_conn_lost", (getter)get_conn_lost, NULL, NULL, NULL},
    {"_paused", (getter)get_paused, NULL, NULL, NULL},
    {"_protocol_paused", (getter)get_protocol_paused, NULL, NULL, NULL},
    {"_high_water", (getter)get_high_water, NULL, NULL, NULL},
    {"_low_water", (getter)get_low_water, NULL, NULL, NULL},
    {"_server", (getter)get_server, NULL, NULL, NULL},
    {"_empty_waiter", (getter)get_empty_waiter, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyMemberDef transport_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(TransportObject, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(TransportObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* tp_init: everything happens in tp_new; this keeps asyncio's
 * BaseTransport.__init__ from running with our constructor's arguments. */
int
transport_init(PyObject *self, PyObject *args, PyObject *kwargs)
{
    return 0;
}

/* ---- repr / gc ---- */

PyObject *
transport_repr(TransportObject *self)
{
    if (self->kind == TRANSPORT_READ_PIPE || self->kind == TRANSPORT_WRITE_PIPE) {
        /* asyncio's pipe transports on a loop without a selector */
        const char *pipe_state = self->sock == NULL ? " closed" : (self->closing ? " closing" : "");
        if (self->kind == TRANSPORT_WRITE_PIPE && self->sock != NULL) {
            return PyUnicode_FromFormat("<%s%s fd=%d open bufsize=%zd>", _PyType_Name(Py_TYPE(self)),
                                        pipe_state, self->fd, self->queue.bytes);
        }
        return PyUnicode_FromFormat("<%s%s fd=%d %s>", _PyType_Name(Py_TYPE(self)), pipe_state,
                                    self->fd, self->sock == NULL ? "closed" : "open");
    }
    const char *state = self->sock == NULL ? " closed" : (self->closing ? " closing" : "");
    const char *reading = (self->poll_events & UV_READABLE) ? "polling" : "idle";
    const char *writing = (self->poll_events & UV_WRITABLE) ? "polling" : "idle";
    return PyUnicode_FromFormat("<%s%s fd=%d read=%s write=<%s, bufsize=%zd>>",
                                _PyType_Name(Py_TYPE(self)), state, self->fd, reading, writing,
                                self->queue.bytes);
}

int
transport_traverse(TransportObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->dict);
    Py_VISIT((PyObject *)self->loop);
    Py_VISIT(self->sock);
    Py_VISIT(self->closed_sock);
    Py_VISIT(self->protocol);
    Py_VISIT(self->extra);
    Py_VISIT(self->server);
    Py_VISIT(self->context);
    Py_VISIT(self->empty_waiter);
    Py_VISIT(self->address);
    Py_VISIT(self->io_ready_method);
    Py_VISIT(self->io_ready_handle);
    Py_VISIT(self->watcher_callback);
    Py_VISIT(self->write_limits);
    for (Py_ssize_t i = 0; i < self->queue.count; i++) {
        WriteEntry *entry = &self->queue.items[(self->queue.head + i) & (self->queue.capacity - 1)];
        Py_VISIT(entry->address);
    }
    return 0;
}

int
transport_clear(TransportObject *self)
{
    Py_CLEAR(self->io_ready_method);
    Py_CLEAR(self->io_ready_handle);
    Py_CLEAR(self->watcher_callback);
    Py_CLEAR(self->closed_sock);
    Py_CLEAR(self->dict);
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->extra);
    Py_CLEAR(self->server);
    Py_CLEAR(self->context);
    Py_CLEAR(self->empty_waiter);
    Py_CLEAR(self->address);
    Py_CLEAR(self->write_limits);
    write_queue_clear(&self->queue);
    return 0;
}

void
transport_finalize(TransportObject *self)
{
    if (self->sock == NULL) {
        return;
    }
    PyObject *exc = compat_fetch_exception();
    if (PyErr_ResourceWarning((PyObject *)self, 1, "unclosed transport %R", (PyObject *)self) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    transport_release_poll(self);
    registry_remove(self);
    PyObject *sock = self->sock;
    self->sock = NULL;
    PyObject *r = PyObject_CallMethod(sock, "close", NULL);
    if (r == NULL) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    Py_XDECREF(r);
    Py_DECREF(sock);
    if (exc != NULL) {
        compat_restore_exception(exc);
    }
}

void
transport_dealloc(TransportObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    /* Finalize while still tracked: a finalizer that resurrects the transport
     * must leave it where the GC can see it. */
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;  /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    /* A started poll owns a reference: this one is stopped, but may still
     * be a libuv handle (or shared with the fd's other pipe transport). */
    detach_poll(self);
    registry_remove(self);
    transport_clear(self);
    write_queue_free(&self->queue);
    Py_CLEAR(self->sock);
    Py_CLEAR(self->loop);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* ---- loop close ---- */

void
transports_close_all(LoopObject *loop)
{
    PyObject *exc = compat_fetch_exception();
    /* every registered transport (with its fd partner), held while we work */
    PyObject *held = PyList_New(0);
    if (held != NULL && loop->transports != NULL) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(loop->transports, &pos, &key, &value)) {
            TransportObject *transport = PyLong_AsVoidPtr(value);
            if (transport == NULL) {
                continue;
            }
            if (PyList_Append(held, (PyObject *)transport) < 0
                || (transport->fd_partner != NULL
                    && PyList_Append(held, (PyObject *)transport->fd_partner) < 0)) {
                break;
            }
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(held); i++) {
            transport_release_poll((TransportObject *)PyList_GET_ITEM(held, i));
        }
    }
    Py_XDECREF(held);
    /* and any other polled one (e.g. out of the registry during sendfile) */
    transports_clear(loop);
    free(loop->read_buffer);
    loop->read_buffer = NULL;
    PyErr_Clear();
    if (exc != NULL) {
        compat_restore_exception(exc);
    }
}

/* ---- types ---- */

PyMethodDef *
transport_join_methods(const PyMethodDef *const *tables, int count)
{
    Py_ssize_t total = 1;
    for (int i = 0; i < count; i++) {
        for (const PyMethodDef *def = tables[i]; def->ml_name != NULL; def++) {
            total++;
        }
    }
    PyMethodDef *joined = calloc(total, sizeof(PyMethodDef));  /* lives as long as the process */
    if (joined == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    Py_ssize_t at = 0;
    for (int i = 0; i < count; i++) {
        for (const PyMethodDef *def = tables[i]; def->ml_name != NULL; def++) {
            joined[at++] = *def;
        }
    }
    return joined;
}

PyTypeObject *
transport_make_type(PyObject *module, PyType_Spec *spec, PyObject *bases)
{
    return make_type_in_room(module, spec, bases, (Py_ssize_t)offsetof(TransportObject, dict));
}

PyTypeObject *
make_type_in_room(PyObject *module, PyType_Spec *spec, PyObject *bases, Py_ssize_t room)
{
    PyObject *tuple = PyTuple_Check(bases) ? Py_NewRef(bases) : PyTuple_Pack(1, bases);
    if (tuple == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); i++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(tuple, i);
        if (base->tp_basicsize > room) {
            PyErr_Format(PyExc_RuntimeError,
                         "pyasync_c: %s's layout does not fit the space reserved for it; "
                         "this Python version is not supported", base->tp_name);
            Py_DECREF(tuple);
            return NULL;
        }
    }
    PyObject *type = PyType_FromModuleAndSpec(module, spec, tuple);
    Py_DECREF(tuple);
    if (type == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, strrchr(spec->name, '.') + 1, type) < 0) {
        Py_DECREF(type);
        return NULL;
    }
    return (PyTypeObject *)type;
}

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot ? 0 : -1;
}

int
transports_init(PyObject *module, ModuleState *state)
{
    if (intern(&state->str_data_received, "data_received") < 0
        || intern(&state->str_buffer_updated, "buffer_updated") < 0
        || intern(&state->str_get_buffer, "get_buffer") < 0
        || intern(&state->str_eof_received, "eof_received") < 0
        || intern(&state->str_connection_made, "connection_made") < 0
        || intern(&state->str_connection_lost, "connection_lost") < 0
        || intern(&state->str_pause_writing, "pause_writing") < 0
        || intern(&state->str_resume_writing, "resume_writing") < 0
        || intern(&state->str_datagram_received, "datagram_received") < 0
        || intern(&state->str_error_received, "error_received") < 0
        || intern(&state->str_close, "close") < 0
        || intern(&state->str_call_exception_handler, "call_exception_handler") < 0
        || intern(&state->str_attach, "_attach") < 0
        || intern(&state->str_detach, "_detach") < 0
        || intern(&state->str_call_connection_lost, "_call_connection_lost") < 0
        || intern(&state->str_connection_made_cb, "_connection_made") < 0
        || intern(&state->str_set_result, "set_result") < 0
        || intern(&state->str_set_exception, "set_exception") < 0
        || intern(&state->str_cancelled, "cancelled") < 0
        || intern(&state->str_socket_class, "_socket_class") < 0
        || intern(&state->str_connection_closed, "_connection_closed") < 0
        || intern(&state->str_sockname, "sockname") < 0 || intern(&state->str_socket, "socket") < 0) {
        return -1;
    }
    PyObject *protocols = PyImport_ImportModule("asyncio.protocols");
    if (protocols == NULL) {
        return -1;
    }
    state->BufferedProtocolType = PyObject_GetAttrString(protocols, "BufferedProtocol");
    Py_DECREF(protocols);
    if (state->BufferedProtocolType == NULL) {
        return -1;
    }
    PyObject *trsock = PyImport_ImportModule("asyncio.trsock");
    if (trsock == NULL) {
        return -1;
    }
    state->TransportSocketType = PyObject_GetAttrString(trsock, "TransportSocket");
    Py_DECREF(trsock);
    if (state->TransportSocketType == NULL) {
        return -1;
    }
    PyObject *logging = PyImport_ImportModule("logging");
    if (logging == NULL) {
        return -1;
    }
    state->asyncio_logger = PyObject_CallMethod(logging, "getLogger", "s", "asyncio");
    Py_DECREF(logging);
    if (state->asyncio_logger == NULL) {
        return -1;
    }
    if (stream_transports_init(module, state) < 0 || datagram_transport_init(module, state) < 0
        || streams_fast_init(state) < 0) {
        return -1;
    }
    return 0;
}
