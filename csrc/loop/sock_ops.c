/* The low-level socket operations: sock_recv, sock_recv_into, sock_recvfrom,
 * sock_recvfrom_into, sock_sendto, sock_sendall, sock_connect, sock_accept
 * (the C halves `_sock_*` of the coroutines that
 * pyasync_c/loop.py defines; semantics of asyncio's selector loop).
 *
 * Each `_sock_*` method first tries the operation at once.  It always
 * returns a Future of the loop: already done when the call completed (or
 * failed with something other than "would block"), pending otherwise.
 *
 * Lifecycle of a pending operation: a SockWaiter (this file's only type) is
 * created; it is both
 *   - the reader/writer callback, registered with loop_add_watcher
 *     (io_watchers.c) on the socket's fd: called with no argument when the fd
 *     is ready, it retries the syscall and completes the future; and
 *   - the future's done-callback: called with the future once it is done
 *     (completed, failed or cancelled), it removes the reader/writer unless
 *     its Handle was cancelled meanwhile (replaced by a later add_reader /
 *     add_writer on the same fd, as asyncio does), then drops everything it
 *     holds, so the waiter is inert afterwards.
 * Most operations are one socket method called with the operation's
 * arguments (`ops[]`: recv(n), recv_into(buf), recvfrom(n),
 * recvfrom_into(buf, nbytes), sendto(data, address), connect(address),
 * accept()); sendall and accept post-process it, connect's retry reads
 * SO_ERROR.  sock_sendto, like asyncio's, sends its datagram once: no
 * partial-send continuation.
 * References: Watcher -> Handle -> SockWaiter -> (future, socket, arguments,
 * Handle); future -> its callbacks -> SockWaiter.  The cycles are broken by
 * the done-callback; the type is GC-tracked for loops closed with operations
 * pending.
 * sock_sendall keeps a byte memoryview of the data (like asyncio's
 * memoryview): the first send() gets the data itself, later ones a slice of
 * that view from `pos`, so whatever send() keeps holds its own export.
 * `pos` follows asyncio's arithmetic on send()'s return values (a negative
 * count moves it back; slices clamp as Python's do), so a buggy socket
 * subclass gets asyncio's outcome, and never memory outside the data.
 * connect: a socket whose connect() is the socket module's own is connected
 * with connect_ex() (errno instead of a BlockingIOError per connection), and
 * an EINPROGRESS connect is probed once with poll(2) before any watcher is
 * made (connect_finished_already).
 * _accept_ready(fd) is the serving side's accept (pyasync_c/_network.py's
 * accept loop on IP listening sockets): accept4() with SOCK_NONBLOCK and
 * SOCK_CLOEXEC, so the new fd needs no fcntl/ioctl, and "nothing more to
 * accept" is a None rather than a raised BlockingIOError.
 * Values from the socket object (a subclass's methods) are checked before use;
 * the waiter's fields are passed to such calls as references of our own, as
 * the done-callback may run meanwhile and drop the waiter's.
 */
#include "loop.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include "transport.h"

#include <errno.h>
#include <sys/socket.h>

enum {
    OP_RECV, OP_RECV_INTO, OP_RECVFROM, OP_RECVFROM_INTO, OP_SENDTO, OP_SENDALL, OP_CONNECT,
    OP_ACCEPT, OP_COUNT
};

#define MAX_ARGS 2

typedef struct {
    PyObject_HEAD
    LoopObject *loop;
    PyObject *fut;          /* NULL once the done-callback ran */
    PyObject *sock;
    PyObject *args[MAX_ARGS];  /* the socket method's arguments (ops[op]); unused: NULL */
    Py_ssize_t nargs;
    HandleObject *handle;   /* the reader/writer Handle we registered */
    Py_ssize_t pos;         /* sendall: asyncio's position in args[0]; may be < 0 */
    int fd;
    int op;
} SockWaiter;

/* Process-wide, like the handle freelist: the module refuses subinterpreters. */
static PyObject *s_recv, *s_recv_into, *s_recvfrom, *s_recvfrom_into, *s_sendto, *s_send,
    *s_accept, *s_connect, *s_connect_ex, *s_setblocking, *s_getsockopt, *s_gettimeout, *s_done, *s_set_result,
    *s_set_exception, *s_add_done_callback;
static PyObject *check_ssl_socket;  /* asyncio.base_events._check_ssl_socket */

/* Per operation: the socket method it calls and the fd event it waits for. */
static const struct {
    PyObject **method;
    int events;
} ops[OP_COUNT] = {
    [OP_RECV] = {&s_recv, UV_READABLE},
    [OP_RECV_INTO] = {&s_recv_into, UV_READABLE},
    [OP_RECVFROM] = {&s_recvfrom, UV_READABLE},
    [OP_RECVFROM_INTO] = {&s_recvfrom_into, UV_READABLE},
    [OP_SENDTO] = {&s_sendto, UV_WRITABLE},
    [OP_SENDALL] = {&s_send, UV_WRITABLE},
    [OP_CONNECT] = {&s_connect, UV_WRITABLE},
    [OP_ACCEPT] = {&s_accept, UV_READABLE},
};

/* obj.name(*args), nargs <= MAX_ARGS. */
static PyObject *
call_method_args(PyObject *obj, PyObject *name, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *argv[1 + MAX_ARGS] = {obj};
    assert(nargs >= 0 && nargs <= MAX_ARGS);
    for (Py_ssize_t i = 0; i < nargs; i++) {
        argv[1 + i] = args[i];
    }
    return PyObject_VectorcallMethod(name, argv, (size_t)(1 + nargs) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

static PyObject *
call_method(PyObject *obj, PyObject *name, PyObject *arg)
{
    return call_method_args(obj, name, &arg, arg ? 1 : 0);
}

/* 1: the pending exception means "try again later" (cleared); 0: a real error. */
static int
would_block(void)
{
    if (PyErr_ExceptionMatches(PyExc_BlockingIOError)
        || PyErr_ExceptionMatches(PyExc_InterruptedError)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

/* sendall: a C-contiguous buffer's bytes as a 1-D byte memoryview. */
static PyObject *
byte_view(PyObject *data)
{
    PyObject *view = PyMemoryView_FromObject(data);
    if (view == NULL) {
        return NULL;
    }
    Py_buffer *buffer = PyMemoryView_GET_BUFFER(view);
    if (!PyBuffer_IsContiguous(buffer, 'C')) {
        Py_DECREF(view);
        PyErr_SetString(PyExc_BufferError, "memoryview: underlying buffer is not C-contiguous");
        return NULL;
    }
    if (buffer->ndim == 1 && buffer->itemsize == 1) {
        return view;
    }
    PyObject *bytes = PyObject_CallMethod(view, "cast", "s", "B");
    Py_DECREF(view);
    return bytes;
}

/* sendall: asyncio's `view[pos:]` start, clamped as a Python slice. */
static Py_ssize_t
slice_start(Py_ssize_t pos, Py_ssize_t len)
{
    if (pos < 0) {
        return pos + len < 0 ? 0 : pos + len;
    }
    return pos > len ? len : pos;
}

/* sendall: the byte length of a C-contiguous buffer; -1 with BufferError/TypeError. */
static Py_ssize_t
byte_length(PyObject *data)
{
    if (PyBytes_CheckExact(data)) {
        return PyBytes_GET_SIZE(data);
    }
    Py_buffer buffer;
    if (PyObject_GetBuffer(data, &buffer, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    Py_ssize_t len = buffer.len;
    PyBuffer_Release(&buffer);
    return len;
}

/* sendall: one send() of `data` itself (view NULL: the first attempt, as
 * asyncio's) or of view[pos:] (the byte view, made only for a partial send).
 * Returns 1 when all was sent, 0 if not yet, -1 with an exception.  Only an
 * int is a count; asyncio adds it to pos whatever it is.  A pos past the end
 * (or out of range) is an OSError here: asyncio would send empty slices
 * forever.  The lengths only bound the arithmetic: the slice is always
 * clamped to the view's own length. */
static int
send_some(PyObject *sock, PyObject *view, PyObject *data, Py_ssize_t *pos)
{
    Py_ssize_t len = view != NULL ? PyMemoryView_GET_BUFFER(view)->len : byte_length(data);
    if (len < 0) {
        return -1;
    }
    PyObject *chunk = view == NULL
        ? Py_NewRef(data)
        : PySequence_GetSlice(view, slice_start(*pos, len), len);
    if (chunk == NULL) {
        return -1;
    }
    PyObject *r = call_method(sock, s_send, chunk);
    Py_DECREF(chunk);
    if (r == NULL) {
        return would_block() ? 0 : -1;
    }
    if (!PyLong_Check(r)) {
        PyErr_Format(PyExc_TypeError, "sock.send() returned %.100s, not int", Py_TYPE(r)->tp_name);
        Py_DECREF(r);
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(r);
    Py_ssize_t next;
    if ((n == -1 && PyErr_Occurred()) || __builtin_add_overflow(*pos, n, &next) || next > len) {
        PyErr_Clear();
        PyErr_Format(PyExc_OSError, "sock.send() returned an invalid length: %R (it was given %zd bytes)",
                     r, view == NULL ? len : len - slice_start(*pos, len));
        Py_DECREF(r);
        return -1;
    }
    Py_DECREF(r);
    *pos = next;
    return next == len;
}

/* accept: asyncio's `conn, address = sock.accept()` (any iterable of two). */
static PyObject *
unpack_pair(PyObject *r)
{
    if (PyTuple_CheckExact(r) && PyTuple_GET_SIZE(r) == 2) {
        return Py_NewRef(r);
    }
    PyObject *iter = PyObject_GetIter(r);
    if (iter == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Format(PyExc_TypeError, "cannot unpack non-iterable %.100s object", Py_TYPE(r)->tp_name);
        }
        return NULL;
    }
    PyObject *items[3] = {NULL, NULL, NULL};
    Py_ssize_t got = 0;
    while (got < 3) {
        items[got] = PyIter_Next(iter);
        if (items[got] == NULL) {
            break;
        }
        got++;
    }
    Py_DECREF(iter);
    PyObject *pair = NULL;
    if (!PyErr_Occurred()) {
        if (got == 2) {
            pair = PyTuple_Pack(2, items[0], items[1]);
        }
        else if (got < 2) {
            PyErr_Format(PyExc_ValueError, "not enough values to unpack (expected 2, got %zd)", got);
        }
        else {
            PyErr_SetString(PyExc_ValueError, "too many values to unpack (expected 2)");
        }
    }
    for (Py_ssize_t i = 0; i < got; i++) {
        Py_DECREF(items[i]);
    }
    return pair;
}

/* One attempt of the operation: sock.<ops[op].method>(*args), except for
 * sendall (see send_some: args = (byte view or NULL, data)).  Returns 1 with
 * *result (new reference) when finished, 0 when it would block, -1 with an
 * exception set. */

/* connect(address) on a socket whose connect() is the socket module's own:
 * connect_ex() gives the errno instead of raising BlockingIOError for the
 * usual EINPROGRESS (an exception made and dropped per connection); any
 * other errno raises the OSError connect() would (PyErr_SetFromErrno picks
 * the same subclass and arguments).  Address errors raise from connect_ex as
 * from connect. */
static PyObject *plain_connect;  /* _socket.socket.connect (its method descriptor) */
static PyObject *plain_getsockopt;  /* _socket.socket.getsockopt */
static PyObject *plain_gettimeout;  /* _socket.socket.gettimeout */

/* Python made sock non-blocking (setblocking(False), SOCK_NONBLOCK: timeout
 * 0), asked only through the socket module's own gettimeout(): no Python
 * code runs here.  0 when unknown. */
int
socket_known_nonblocking(PyObject *sock)
{
    if (plain_gettimeout == NULL || _PyType_Lookup(Py_TYPE(sock), s_gettimeout) != plain_gettimeout) {
        return 0;
    }
    PyObject *timeout = PyObject_CallMethodNoArgs(sock, s_gettimeout);
    int nonblocking = timeout != NULL && PyFloat_CheckExact(timeout) && PyFloat_AS_DOUBLE(timeout) == 0.0;
    if (timeout == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(timeout);
    return nonblocking;
}

static int
connect_plain(PyObject *sock, PyObject *address, PyObject **result)
{
    PyObject *r = PyObject_CallMethodOneArg(sock, s_connect_ex, address);
    if (r == NULL) {
        return would_block() ? 0 : -1;
    }
    long err = PyLong_AsLong(r);
    Py_DECREF(r);
    if (err == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (err == 0) {
        *result = Py_NewRef(Py_None);
        return 1;
    }
    if (err == EINPROGRESS || err == EAGAIN || err == EWOULDBLOCK || err == EALREADY || err == EINTR) {
        return 0;  /* asyncio: BlockingIOError / InterruptedError -> wait for writable */
    }
    errno = (int)err;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

static int
attempt(int op, PyObject *sock, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t *pos,
        PyObject **result)
{
    PyObject *r;
    switch (op) {
    case OP_SENDALL: {
        int rc = send_some(sock, args[0], args[1], pos);
        if (rc == 1) {
            *result = Py_NewRef(Py_None);
        }
        return rc;
    }
    case OP_ACCEPT: {
        r = call_method(sock, s_accept, NULL);
        if (r == NULL) {
            break;
        }
        PyObject *pair = unpack_pair(r);
        Py_DECREF(r);
        if (pair == NULL) {
            return -1;
        }
        PyObject *done = call_method(PyTuple_GET_ITEM(pair, 0), s_setblocking, Py_False);
        if (done == NULL) {
            Py_DECREF(pair);
            return -1;
        }
        Py_DECREF(done);
        *result = pair;
        return 1;
    }
    case OP_CONNECT:
        if (plain_connect != NULL && _PyType_Lookup(Py_TYPE(sock), s_connect) == plain_connect) {
            return connect_plain(sock, args[0], result);
        }
        r = call_method_args(sock, s_connect, args, nargs);
        break;
    default:  /* recv, recv_into, recvfrom, recvfrom_into, sendto */
        r = call_method_args(sock, *ops[op].method, args, nargs);
        break;
    }
    if (r == NULL) {
        return would_block() ? 0 : -1;
    }
    *result = r;
    return 1;
}

/* The writer callback of a pending connect: the outcome is in SO_ERROR;
 * as asyncio, any value != 0 is OSError(value, message), and one that makes
 * a BlockingIOError/InterruptedError means "wait again". */
static int
connect_outcome(PyObject *sock, PyObject *address, PyObject **result)
{
    PyObject *level = PyLong_FromLong(SOL_SOCKET), *name = PyLong_FromLong(SO_ERROR);
    PyObject *err = NULL;
    if (level != NULL && name != NULL) {
        PyObject *args[3] = {sock, level, name};
        err = PyObject_VectorcallMethod(s_getsockopt, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_XDECREF(level);
    Py_XDECREF(name);
    if (err == NULL) {
        return would_block() ? 0 : -1;
    }
    PyObject *zero = PyLong_FromLong(0);
    int failed = zero ? PyObject_RichCompareBool(err, zero, Py_NE) : -1;
    Py_XDECREF(zero);
    if (failed <= 0) {
        Py_DECREF(err);
        if (failed == 0) {
            *result = Py_NewRef(Py_None);
            return 1;
        }
        return -1;
    }
    PyObject *message = PyUnicode_FromFormat("Connect call failed %S", address);
    if (message == NULL) {
        Py_DECREF(err);
        return -1;
    }
    /* OSError(errno, msg) picks the subclass (ConnectionRefusedError...). */
    PyObject *exc = PyObject_CallFunctionObjArgs(PyExc_OSError, err, message, NULL);
    Py_DECREF(message);
    Py_DECREF(err);
    if (exc == NULL) {
        return -1;
    }
    if (PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_BlockingIOError)
        || PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_InterruptedError)) {
        Py_DECREF(exc);
        return 0;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return -1;
}

static PyObject *
future_call(PyObject *fut, PyObject *name, PyObject *arg)
{
    return call_method(fut, name, arg);
}

/* For a failed attempt (rc < 0): moves the exception into *exc, unless it
 * must propagate (SystemExit, KeyboardInterrupt: returns -1, still raised).
 * asyncio stores every other exception in the future. */
static int
take_exception(PyObject **exc)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        return -1;
    }
    *exc = compat_fetch_exception();
    return 0;
}

/* Completes fut: rc == 1 sets outcome as the result, rc < 0 as the
 * exception (from take_exception).  Steals outcome; -1 if that failed. */
static int
complete(PyObject *fut, int rc, PyObject *outcome)
{
    PyObject *r = future_call(fut, rc == 1 ? s_set_result : s_set_exception, outcome);
    Py_DECREF(outcome);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static void
waiter_release(SockWaiter *self)
{
    Py_CLEAR(self->fut);
    Py_CLEAR(self->sock);
    for (Py_ssize_t i = 0; i < MAX_ARGS; i++) {
        Py_CLEAR(self->args[i]);
    }
    self->nargs = 0;
    Py_CLEAR(self->handle);
}

static int
waiter_events(SockWaiter *self)
{
    return ops[self->op].events;
}

/* Called by the loop with no argument (fd ready) or by the future with
 * itself (done). */
static PyObject *
waiter_call(SockWaiter *self, PyObject *args, PyObject *kwargs)
{
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if ((kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) || nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "SockWaiter takes at most one positional argument");
        return NULL;
    }
    if (nargs == 1) {  /* the future is done: stop watching, unless replaced */
        if (self->fut == NULL) {
            Py_RETURN_NONE;
        }
        int ok = 0;
        if (self->handle != NULL && !self->handle->cancelled) {
            PyObject *fd = PyLong_FromLong(self->fd);
            PyObject *r = fd ? loop_remove_watcher(self->loop, fd, waiter_events(self)) : NULL;
            Py_XDECREF(fd);
            Py_XDECREF(r);
            ok = r == NULL ? -1 : 0;
        }
        waiter_release(self);
        if (ok < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (self->fut == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *fut = Py_NewRef(self->fut);
    PyObject *done = future_call(fut, s_done, NULL);
    if (done == NULL) {
        Py_DECREF(fut);
        return NULL;
    }
    int is_done = PyObject_IsTrue(done);
    Py_DECREF(done);
    if (is_done != 0) {
        Py_DECREF(fut);
        return is_done < 0 ? NULL : Py_NewRef(Py_None);
    }
    /* References of our own: the socket's methods run Python, which may run
     * the done-callback (dropping the waiter's). */
    PyObject *sock = Py_NewRef(self->sock);
    PyObject *call_args[MAX_ARGS];
    Py_ssize_t call_nargs = self->nargs;
    for (Py_ssize_t i = 0; i < call_nargs; i++) {
        call_args[i] = Py_NewRef(self->args[i]);
    }
    PyObject *result = NULL;
    int rc = self->op == OP_CONNECT
        ? connect_outcome(sock, call_args[0], &result)
        : attempt(self->op, sock, call_args, call_nargs, &self->pos, &result);
    int status = 0;
    if (rc < 0 && take_exception(&result) < 0) {
        status = -1;
    }
    else if (rc != 0 && complete(fut, rc, result) < 0) {
        status = -1;
    }
    for (Py_ssize_t i = 0; i < call_nargs; i++) {
        Py_DECREF(call_args[i]);
    }
    Py_DECREF(sock);
    Py_DECREF(fut);
    if (status < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
waiter_traverse(SockWaiter *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop);
    Py_VISIT(self->fut);
    Py_VISIT(self->sock);
    for (Py_ssize_t i = 0; i < MAX_ARGS; i++) {
        Py_VISIT(self->args[i]);
    }
    Py_VISIT(self->handle);
    return 0;
}

static int
waiter_clear(SockWaiter *self)
{
    waiter_release(self);
    return 0;
}

static void
waiter_dealloc(SockWaiter *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    waiter_release(self);
    Py_CLEAR(self->loop);
    PyObject_GC_Del(self);
    Py_DECREF(type);
}

static PyType_Slot waiter_slots[] = {
    {Py_tp_doc, "A pending sock_* operation: fd callback and future done-callback (internal)."},
    {Py_tp_call, waiter_call},
    {Py_tp_traverse, waiter_traverse},
    {Py_tp_clear, waiter_clear},
    {Py_tp_dealloc, waiter_dealloc},
    {0, NULL},
};

static PyType_Spec waiter_spec = {
    .name = "pyasync_c._loop.SockWaiter",
    .basicsize = sizeof(SockWaiter),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = waiter_slots,
};

/* asyncio's checks: no SSL socket; in debug mode, a non-blocking socket.
 * (A transport on the fd matters only to an operation that must wait: start.) */
static int
check_socket(LoopObject *loop, PyObject *sock)
{
    if (check_ssl_socket == NULL) {
        PyObject *base_events = PyImport_ImportModule("asyncio.base_events");
        if (base_events == NULL) {
            return -1;
        }
        check_ssl_socket = PyObject_GetAttrString(base_events, "_check_ssl_socket");
        Py_DECREF(base_events);
        if (check_ssl_socket == NULL) {
            return -1;
        }
    }
    PyObject *r = PyObject_CallOneArg(check_ssl_socket, sock);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    if (!loop->debug) {
        return 0;
    }
    PyObject *timeout = call_method(sock, s_gettimeout, NULL);
    if (timeout == NULL) {
        return -1;
    }
    PyObject *zero = PyLong_FromLong(0);
    int blocking = zero ? PyObject_RichCompareBool(timeout, zero, Py_NE) : -1;
    Py_XDECREF(zero);
    Py_DECREF(timeout);
    if (blocking < 0) {
        return -1;
    }
    if (blocking) {
        PyErr_SetString(PyExc_ValueError, "the socket must be non-blocking");
        return -1;
    }
    return 0;
}

/* A connect() that said EINPROGRESS has often finished by the time it
 * returned (a loopback peer answers within the call): that is checked once,
 * with no wait, and the outcome read at once -- the future done, as when
 * connect() itself succeeds -- instead of watching the fd for one iteration
 * (a poll started and stopped: several epoll_ctl calls).  A socket whose
 * connect() and getsockopt() are the socket module's own is asked
 * getpeername(): a peer means connected with no error pending (*result: None,
 * or with want_peer the peer's address, for the transport's 'peername');
 * otherwise, and for other sockets, one poll(2), then connect_outcome() as
 * asyncio reads it (SO_ERROR through the socket's getsockopt()).  0 if still
 * in progress. */
static int
connect_finished_already(PyObject *sock, PyObject *address, PyObject **result, int want_peer)
{
    int fd = PyObject_AsFileDescriptor(sock);
    if (fd < 0) {
        PyErr_Clear();  /* start() raises it where asyncio would */
        return 0;
    }
    if (plain_connect != NULL && _PyType_Lookup(Py_TYPE(sock), s_connect) == plain_connect
        && _PyType_Lookup(Py_TYPE(sock), s_getsockopt) == plain_getsockopt) {
        /* a reset connection has no peer any more */
        struct sockaddr_storage peer;
        socklen_t length = sizeof peer;
        memset(&peer, 0, sizeof peer);
        if (getpeername(fd, (struct sockaddr *)&peer, &length) == 0) {
            *result = want_peer && (peer.ss_family == AF_INET || peer.ss_family == AF_INET6)
                          ? ip_address_tuple(&peer) : Py_NewRef(Py_None);
            return *result != NULL ? 1 : -1;
        }
    }
    struct pollfd probe = {.fd = fd, .events = POLLOUT};
    if (poll(&probe, 1, 0) != 1 || !(probe.revents & (POLLOUT | POLLERR | POLLHUP))) {
        return 0;
    }
    return connect_outcome(sock, address, result);
}

/* Starts operation op on sock with the socket method's arguments (borrowed;
 * sendall: (NULL, data); a waiter gets (byte view, NULL)). */
static PyObject *
start(LoopObject *loop, int op, PyObject *sock, PyObject *const *args, Py_ssize_t nargs,
      int want_peer)
{
    Py_ssize_t pos = 0;
    PyObject *result = NULL;
    int rc = attempt(op, sock, args, nargs, &pos, &result);
    if (rc == 0 && op == OP_CONNECT) {
        rc = connect_finished_already(sock, args[0], &result, want_peer);
    }
    if (rc < 0 && (op != OP_CONNECT || take_exception(&result) < 0)) {
        return NULL;  /* raised by the coroutine at once, as asyncio does */
    }
    /* connect: asyncio stores the failure in the future (same for the user) */
    PyObject *fut = loop_new_future(loop);
    if (fut == NULL) {
        Py_XDECREF(result);
        return NULL;
    }
    if (rc != 0) {
        if (complete(fut, rc, result) < 0) {
            Py_DECREF(fut);
            return NULL;
        }
        return fut;
    }
    /* Only now, as asyncio: a closed socket failed above, and an operation
     * that completes at once does not care about a transport on the fd. */
    int fd = PyObject_AsFileDescriptor(sock);
    if (fd < 0 || transport_check_fd_free(loop, fd) < 0) {
        Py_DECREF(fut);
        return NULL;
    }
    PyObject *sendall_args[MAX_ARGS] = {NULL, NULL};
    if (op == OP_SENDALL) {  /* later sends slice a byte view of the data */
        sendall_args[0] = byte_view(args[1]);
        if (sendall_args[0] == NULL) {
            Py_DECREF(fut);
            return NULL;
        }
        args = sendall_args;
        nargs = 1;
    }
    SockWaiter *waiter = PyObject_GC_New(SockWaiter, loop->state->SockWaiterType);
    if (waiter == NULL) {
        Py_XDECREF(sendall_args[0]);
        Py_DECREF(fut);
        return NULL;
    }
    waiter->loop = (LoopObject *)Py_NewRef(loop);
    waiter->fut = Py_NewRef(fut);
    waiter->sock = Py_NewRef(sock);
    for (Py_ssize_t i = 0; i < MAX_ARGS; i++) {
        waiter->args[i] = i < nargs ? Py_NewRef(args[i]) : NULL;
    }
    Py_XDECREF(sendall_args[0]);
    waiter->nargs = nargs;
    waiter->handle = NULL;
    waiter->pos = pos;
    waiter->fd = fd;
    waiter->op = op;
    PyObject_GC_Track(waiter);

    int events = waiter_events(waiter);
    PyObject *watch_args[2] = {PyLong_FromLong(fd), (PyObject *)waiter};
    PyObject *r = watch_args[0] ? loop_add_watcher(loop, watch_args, 2, events) : NULL;
    Py_XDECREF(watch_args[0]);
    if (r == NULL) {
        goto error;
    }
    Py_DECREF(r);
    waiter->handle = (HandleObject *)Py_XNewRef(loop_watcher_handle(loop, fd, events));
    r = future_call(fut, s_add_done_callback, (PyObject *)waiter);
    if (r == NULL) {
        PyObject *exc = compat_fetch_exception();
        PyObject *fdobj = PyLong_FromLong(fd);
        PyObject *removed = fdobj ? loop_remove_watcher(loop, fdobj, events) : NULL;
        Py_XDECREF(fdobj);
        Py_XDECREF(removed);
        PyErr_Clear();
        compat_restore_exception(exc);
        goto error;
    }
    Py_DECREF(r);
    Py_DECREF(waiter);
    return fut;

error:
    waiter_release(waiter);
    Py_DECREF(waiter);
    Py_DECREF(fut);
    return NULL;
}

static int
check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)",
                     name, expected, nargs);
        return -1;
    }
    return 0;
}

/* sock_<name>(sock, *args): the checks, then operation op with the socket
 * method's arguments args[1:]. */
static PyObject *
sock_op(LoopObject *self, const char *name, int op, PyObject *const *args, Py_ssize_t nargs,
        Py_ssize_t expected)
{
    if (check_nargs(name, nargs, expected) < 0 || check_socket(self, args[0]) < 0) {
        return NULL;
    }
    return start(self, op, args[0], args + 1, nargs - 1, 0);
}

PyObject *
loop_sock_recv(LoopObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return sock_op(self, "_sock_recv", OP_RECV, args, nargs, 2);
}

PyObject *
loop_sock_recv_into(LoopObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return sock_op(self, "_sock_recv_into", OP_RECV_INTO, args, nargs, 2);
}

PyObject *
loop_sock_recvfrom(LoopObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return sock_op(self, "_sock_recvfrom", OP_RECVFROM, args, nargs, 2);
}

/* (sock, buf, nbytes): a false nbytes means len(buf), as asyncio; nbytes >
 * len(buf) is sock.recvfrom_into's ValueError. */
PyObject *
loop_sock_recvfrom_into(LoopObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("_sock_recvfrom_into", nargs, 3) < 0 || check_socket(self, args[0]) < 0) {
        return NULL;
    }
    int given = PyObject_IsTrue(args[2]);
    if (given < 0) {
        return NULL;
    }
    PyObject *nbytes;
    if (given) {
        nbytes = Py_NewRef(args[2]);
    }
    else {
        Py_ssize_t len = PyObject_Size(args[1]);
        nbytes = len < 0 ? NULL : PyLong_FromSsize_t(len);
        if (nbytes == NULL) {
            return NULL;
        }
    }
    PyObject *call_args[2] = {args[1], nbytes};
    PyObject *fut = start(self, OP_RECVFROM_INTO, args[0], call_args, 2, 0);
    Py_DECREF(nbytes);
    return fut;
}

PyObject *
loop_sock_sendto(LoopObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return sock_op(self, "_sock_sendto", OP_SENDTO, args, nargs, 3);
}

PyObject *
loop_sock_sendall(LoopObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("_sock_sendall", nargs, 2) < 0 || check_socket(self, args[0]) < 0) {
        return NULL;
    }
    PyObject *call_args[2] = {NULL, args[1]};
    return start(self, OP_SENDALL, args[0], call_args, 2, 0);
}

/* The address is already resolved (loop.py); the checks ran there too. */
PyObject *
loop_sock_connect(LoopObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* (sock, address[, want_peer]): with want_peer, the future's result is
     * the peer address when the connect was seen finished within the call
     * (create_connection's short path gives it to the transport), else None */
    if (nargs == 3) {
        int want_peer = PyObject_IsTrue(args[2]);
        return want_peer < 0 ? NULL : start(self, OP_CONNECT, args[0], args + 1, 1, want_peer);
    }
    if (check_nargs("_sock_connect", nargs, 2) < 0) {
        return NULL;
    }
    return start(self, OP_CONNECT, args[0], args + 1, 1, 0);
}

PyObject *
loop_sock_accept(LoopObject *self, PyObject *sock)
{
    if (check_socket(self, sock) < 0) {
        return NULL;
    }
    return start(self, OP_ACCEPT, sock, NULL, 0, 0);
}

/* Dotted decimal, as inet_ntop writes it (which goes through sprintf: ~1,600
 * instructions, a tenth of a connection's loop-side cost). */
static Py_ssize_t
format_ipv4(const unsigned char *bytes, char *text)
{
    char *end = text;
    for (int i = 0; i < 4; i++) {
        unsigned int value = bytes[i];
        if (value >= 100) {
            *end++ = (char)('0' + value / 100);
            value %= 100;
            *end++ = (char)('0' + value / 10);
        }
        else if (value >= 10) {
            *end++ = (char)('0' + value / 10);
        }
        *end++ = (char)('0' + value % 10);
        if (i < 3) {
            *end++ = '.';
        }
    }
    return end - text;
}

/* The address tuple the socket module gives for an IPv4/IPv6 address
 * (accept(), getsockname()): (host, port) or (host, port, flowinfo, scope_id). */
PyObject *
ip_address_tuple(const struct sockaddr_storage *address)
{
    char text[INET6_ADDRSTRLEN];
    if (address->ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)address;
        Py_ssize_t length = format_ipv4((const unsigned char *)&in4->sin_addr, text);
        PyObject *host = PyUnicode_DecodeASCII(text, length, NULL);
        PyObject *port = host ? PyLong_FromLong((long)ntohs(in4->sin_port)) : NULL;
        PyObject *pair = port ? PyTuple_New(2) : NULL;
        if (pair == NULL) {
            Py_XDECREF(host);
            Py_XDECREF(port);
            return NULL;
        }
        PyTuple_SET_ITEM(pair, 0, host);
        PyTuple_SET_ITEM(pair, 1, port);
        return pair;
    }
    if (address->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)address;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(siII)", text, (int)ntohs(in6->sin6_port),
                             (unsigned int)ntohl(in6->sin6_flowinfo), (unsigned int)in6->sin6_scope_id);
    }
    PyErr_Format(PyExc_ValueError, "address family %d is not IPv4/IPv6",
                 (int)address->ss_family);
    return NULL;
}

/* _accept_ready(fd): (new_fd, address) of one pending connection on the
 * listening IPv4/IPv6 socket fd, the new fd non-blocking and close-on-exec;
 * None when there is none now (EAGAIN, or the peer gave up: ECONNABORTED, as
 * asyncio's accept loop stops on ConnectionAbortedError).  Other errors raise
 * OSError with errno, as socket.accept() would. */
PyObject *
loop_accept_ready(PyObject *cls, PyObject *fd_object)
{
    (void)cls;
    long fd_value = PyLong_AsLong(fd_object);
    if (fd_value == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (fd_value < INT_MIN || fd_value > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "_accept_ready: invalid file descriptor %ld", fd_value);
        return NULL;
    }
    int fd = (int)fd_value;
    struct sockaddr_storage address;
    for (;;) {
        socklen_t length = sizeof address;
        memset(&address, 0, sizeof address);
        int conn = accept4(fd, (struct sockaddr *)&address, &length, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (conn >= 0) {
            PyObject *peer = ip_address_tuple(&address);
            if (peer == NULL) {
                close(conn);
                return NULL;
            }
            PyObject *result = Py_BuildValue("(iN)", conn, peer);
            if (result == NULL) {
                close(conn);
            }
            return result;
        }
        if (errno == EINTR) {  /* PEP 475, as socket.accept() */
            if (PyErr_CheckSignals() < 0) {
                return NULL;
            }
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) {
            Py_RETURN_NONE;
        }
        return PyErr_SetFromErrno(PyExc_OSError);
    }
}

/* _peer_address(fd): getpeername() of a connected IPv4/IPv6 socket as the
 * socket module gives it, made in C; None for another family (ask the
 * socket); OSError with errno (ENOTCONN...) as socket.getpeername(). */
PyObject *
loop_peer_address(PyObject *cls, PyObject *fd_object)
{
    (void)cls;
    int fd = PyObject_AsFileDescriptor(fd_object);
    if (fd < 0) {
        return NULL;
    }
    struct sockaddr_storage address;
    socklen_t length = sizeof address;
    memset(&address, 0, sizeof address);
    if (getpeername(fd, (struct sockaddr *)&address, &length) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (address.ss_family != AF_INET && address.ss_family != AF_INET6) {
        Py_RETURN_NONE;
    }
    return ip_address_tuple(&address);
}

PyObject *
loop_sock_check(LoopObject *self, PyObject *sock)
{
    if (check_socket(self, sock) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
intern_once(PyObject **slot, const char *text)
{
    if (*slot == NULL) {
        *slot = PyUnicode_InternFromString(text);
    }
    return *slot ? 0 : -1;
}

int
sock_ops_init_type(PyObject *module, ModuleState *state)
{
    if (intern_once(&s_recv, "recv") < 0 || intern_once(&s_recv_into, "recv_into") < 0
        || intern_once(&s_recvfrom, "recvfrom") < 0
        || intern_once(&s_recvfrom_into, "recvfrom_into") < 0
        || intern_once(&s_sendto, "sendto") < 0
        || intern_once(&s_send, "send") < 0 || intern_once(&s_accept, "accept") < 0
        || intern_once(&s_connect, "connect") < 0 || intern_once(&s_connect_ex, "connect_ex") < 0
        || intern_once(&s_setblocking, "setblocking") < 0
        || intern_once(&s_getsockopt, "getsockopt") < 0 || intern_once(&s_gettimeout, "gettimeout") < 0
        || intern_once(&s_done, "done") < 0 || intern_once(&s_set_result, "set_result") < 0
        || intern_once(&s_set_exception, "set_exception") < 0
        || intern_once(&s_add_done_callback, "add_done_callback") < 0) {
        return -1;
    }
    if (plain_connect == NULL) {  /* _socket.socket's connect/getsockopt/gettimeout: kept for the process */
        PyObject *socket_module = PyImport_ImportModule("_socket");
        PyObject *socket_type = socket_module ? PyObject_GetAttrString(socket_module, "socket") : NULL;
        Py_XDECREF(socket_module);
        int is_type = socket_type && PyType_Check(socket_type);
        plain_connect = is_type ? _PyType_Lookup((PyTypeObject *)socket_type, s_connect) : NULL;
        plain_getsockopt = is_type ? _PyType_Lookup((PyTypeObject *)socket_type, s_getsockopt) : NULL;
        plain_gettimeout = is_type ? _PyType_Lookup((PyTypeObject *)socket_type, s_gettimeout) : NULL;
        Py_XINCREF(plain_connect);
        Py_XINCREF(plain_getsockopt);
        Py_XINCREF(plain_gettimeout);
        Py_XDECREF(socket_type);
        if (plain_connect == NULL || plain_getsockopt == NULL || plain_gettimeout == NULL) {
            return -1;
        }
    }
    state->SockWaiterType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &waiter_spec, NULL);
    return state->SockWaiterType ? 0 : -1;
}
