/* Stream transports: SocketTransport (TCP and Unix stream sockets, an
 * asyncio.Transport), ReadPipeTransport (asyncio.ReadTransport) and
 * WritePipeTransport (asyncio.WriteTransport) for pipes, character devices and
 * sockets handed to connect_read_pipe/connect_write_pipe.
 *
 * One C layout (TransportObject, transport.h) and one read/write path; the
 * kinds differ only where asyncio's do: EOF on a read pipe ends the
 * connection, a write pipe watches its fd for the reader going away, and
 * write_eof() on a socket is shutdown(SHUT_WR) while on a pipe it closes.
 *
 * Read path: one read() per readiness event into the loop's read buffer
 * (lent to this read alone: transport_take_read_buffer), then one
 * bytes object for data_received (reused when the protocol kept none), or
 * get_buffer/read/buffer_updated for a BufferedProtocol, or for asyncio's
 * StreamReaderProtocol a copy straight into its StreamReader's buffer
 * (streams_fast.c).  Write path: write() at once when nothing is queued;
 * only the unsent rest is queued (bytes by reference, other buffers copied)
 * and flushed with one sendmsg()/writev() of many entries when the fd is
 * writable.  Lifecycle and ownership: transport_base.c.
 */
#include "transport.h"
#include "tls.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_IOVECS 64

static int
would_block(int error_number)
{
    return error_number == EAGAIN || error_number == EWOULDBLOCK || error_number == EINTR;
}

/* ---- is the socket object still the owner of the fd? ----
 * The transport caches the fd number.  User code may close (or detach) the
 * socket object under an open transport, and the number may then belong to
 * an unrelated socket; asyncio's sock.send()/recv() would fail with EBADF.
 * So before a syscall on the cached fd we check the socket object still
 * holds it.  For _socket.socket (and subclasses) that is one load of the fd
 * field its C object starts with (PyObject_HEAD, then the fd), an offset
 * verified at module init on a real socket; anything else (or a build where
 * the check failed) is asked fileno(). */
static PyObject *socket_base_type;      /* _socket.socket; strong reference, never released */
static Py_ssize_t socket_fd_offset;     /* 0: not verified, call fileno() */

static void
calibrate_socket_fd_offset(void)
{
    PyObject *module = PyImport_ImportModule("_socket");
    PyObject *type = module ? PyObject_GetAttrString(module, "socket") : NULL;
    Py_XDECREF(module);
    PyObject *sock = type ? PyObject_CallNoArgs(type) : NULL;
    if (sock == NULL) {
        Py_XDECREF(type);
        PyErr_Clear();
        return;
    }
    Py_ssize_t offset = (Py_ssize_t)sizeof(PyObject);
    int fd = PyObject_AsFileDescriptor(sock);
    int open_matches = fd >= 0 && Py_TYPE(sock)->tp_basicsize >= offset + (Py_ssize_t)sizeof(int)
                       && *(int *)((char *)sock + offset) == fd;
    PyObject *r = PyObject_CallMethod(sock, "close", NULL);
    Py_XDECREF(r);
    int closed_matches = r != NULL && *(int *)((char *)sock + offset) == -1;
    Py_DECREF(sock);
    PyErr_Clear();
    if (open_matches && closed_matches && socket_base_type == NULL) {
        socket_base_type = type;
        socket_fd_offset = offset;
    }
    else {
        Py_DECREF(type);
    }
}

/* 1 (with errno set to EBADF) when the socket object under a socket
 * transport no longer holds self->fd, else 0.  The fileno() fallback runs
 * Python code: callers re-check the transport's state after it. */
int
transport_socket_gone(TransportObject *self)
{
    if ((self->kind != TRANSPORT_SOCKET_STREAM && self->kind != TRANSPORT_DATAGRAM) || self->sock == NULL) {
        return 0;
    }
    PyObject *sock = self->sock;
    int fd;
    if (socket_fd_offset > 0 && PyObject_TypeCheck(sock, (PyTypeObject *)socket_base_type)) {
        fd = *(int *)((char *)sock + socket_fd_offset);
    }
    else {
        PyObject *exc = compat_fetch_exception();
        Py_INCREF(sock);
        fd = PyObject_AsFileDescriptor(sock);
        Py_DECREF(sock);
        PyErr_Clear();
        if (exc != NULL) {
            compat_restore_exception(exc);
        }
    }
    if (fd == self->fd) {
        return 0;
    }
    errno = EBADF;
    return 1;
}

static const char *
write_error_message(TransportObject *self)
{
    return self->kind == TRANSPORT_SOCKET_STREAM ? "Fatal write error on socket transport"
                                                  : "Fatal write error on pipe transport";
}

static ssize_t
write_some(TransportObject *self, const char *data, Py_ssize_t size)
{
    if (transport_socket_gone(self)) {
        return -1;
    }
    ssize_t sent = self->kind == TRANSPORT_SOCKET_STREAM ? send(self->fd, data, (size_t)size, MSG_NOSIGNAL)
                                                          : write(self->fd, data, (size_t)size);
    stats_bytes(self->loop, 0, sent > 0 ? sent : 0);
    return sent;
}

static void
write_failed(TransportObject *self, int error_number)
{
    PyObject *exc = transport_oserror(error_number);
    if (exc == NULL) {
        transport_handle_error(self, write_error_message(self));
        return;
    }
    write_queue_clear(&self->queue);
    transport_fatal_error(self, exc, write_error_message(self));
    if (self->empty_waiter != NULL) {
        transport_settle_future(self->empty_waiter, self->loop->state->str_set_exception, exc);
    }
    Py_DECREF(exc);
}

/* Writes as much of the queue as the fd takes; then the follow-ups of an
 * emptied queue (empty waiter, close, write_eof).  Errors are handled here. */
static void
stream_flush(TransportObject *self)
{
    if (self->conn_lost || self->queue.count == 0) {
        return;
    }
    struct iovec iov[MAX_IOVECS];
    int count = 0;
    WriteQueue *queue = &self->queue;
    for (Py_ssize_t i = 0; i < queue->count && count < MAX_IOVECS; i++) {
        WriteEntry *entry = &queue->items[(queue->head + i) & (queue->capacity - 1)];
        iov[count].iov_base = PyBytes_AS_STRING(entry->data) + entry->offset;
        iov[count].iov_len = (size_t)(PyBytes_GET_SIZE(entry->data) - entry->offset);
        count++;
    }
    ssize_t sent;
    if (transport_socket_gone(self)) {
        sent = -1;
    }
    else if (self->kind == TRANSPORT_SOCKET_STREAM) {
        struct msghdr message;
        memset(&message, 0, sizeof(message));
        message.msg_iov = iov;
        message.msg_iovlen = (size_t)count;
        sent = sendmsg(self->fd, &message, MSG_NOSIGNAL);
    }
    else {
        sent = writev(self->fd, iov, count);
    }
    if (sent < 0) {
        if (!would_block(errno)) {
            write_failed(self, errno);
        }
        return;
    }
    stats_bytes(self->loop, 0, sent);
    write_queue_consume(queue, sent);
    transport_maybe_resume_protocol(self);  /* may queue more */
    if (queue->count > 0 || self->conn_lost) {
        return;
    }
    if (self->empty_waiter != NULL) {
        transport_settle_future(self->empty_waiter, self->loop->state->str_set_result, Py_None);
    }
    if (self->closing) {
        self->conn_lost++;
        if (transport_schedule_connection_lost(self, NULL) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
    else if (self->eof_written && self->kind == TRANSPORT_SOCKET_STREAM) {
        if ((transport_socket_gone(self) || shutdown(self->fd, SHUT_WR) < 0) && errno != ENOTCONN) {
            write_failed(self, errno);
        }
    }
}

void
stream_on_writable(TransportObject *self)
{
    stream_flush(self);
}

/* ---- reading ---- */

static void
on_eof(TransportObject *self)
{
    ModuleState *state = self->loop->state;
    if (self->kind == TRANSPORT_READ_PIPE) {
        self->closing = 1;
        self->conn_lost++;
        PyObject *protocol = Py_NewRef(self->protocol ? self->protocol : Py_None);
        PyObject *eof_received = PyObject_GetAttr(protocol, state->str_eof_received);
        Py_DECREF(protocol);
        if (eof_received == NULL || transport_schedule_call(self, eof_received, NULL) < 0
            || transport_schedule_connection_lost(self, NULL) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        Py_XDECREF(eof_received);
        return;
    }
    PyObject *keep_open = transport_call_protocol(self, state->str_eof_received, NULL, 0);
    if (keep_open == NULL) {
        transport_handle_error(self, "Fatal error: protocol.eof_received() call failed.");
        return;
    }
    int keep = PyObject_IsTrue(keep_open);
    Py_DECREF(keep_open);
    if (keep < 0) {
        transport_handle_error(self, "Fatal error: protocol.eof_received() call failed.");
        return;
    }
    if (keep) {
        self->read_eof = 1;  /* the protocol may still write; nothing more to read */
        return;
    }
    PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self, state->str_close);
    if (r == NULL) {
        transport_handle_error(self, "Fatal error on transport");
    }
    Py_XDECREF(r);
}

static void
read_failed(TransportObject *self, int error_number)
{
    PyObject *exc = transport_oserror(error_number);
    const char *message = self->kind == TRANSPORT_SOCKET_STREAM ? "Fatal read error on socket transport"
                                                                : "Fatal read error on pipe transport";
    if (exc == NULL) {
        transport_handle_error(self, message);
        return;
    }
    transport_fatal_error(self, exc, message);
    Py_DECREF(exc);
}

/* Our SSLProtocol: C calls instead of get_buffer()/buffer_updated() (tls.h). */
static void
read_into_tls_protocol(TransportObject *self)
{
    char *buffer = transport_take_read_buffer(self->loop);
    ssize_t received = buffer == NULL ? -1
                       : transport_socket_gone(self) ? -1
                       : read(self->fd, buffer, TRANSPORT_READ_BUFFER_SIZE);
    int error_number = errno;
    if (received > 0) {  /* the buffer is given back by the callee */
        if (tls_feed_from_read_buffer(self->protocol, self, buffer, received) < 0) {
            transport_handle_error(self, "Fatal error: protocol.buffer_updated() call failed.");
        }
        return;
    }
    if (buffer == NULL) {
        transport_handle_error(self, "Fatal error: protocol.get_buffer() call failed.");
        return;
    }
    transport_give_back_read_buffer(self->loop, buffer);
    if (received == 0) {
        on_eof(self);
    }
    else if (!would_block(error_number)) {
        read_failed(self, error_number);
    }
}

static void
read_into_protocol_buffer(TransportObject *self)
{
    ModuleState *state = self->loop->state;
    if (tls_is_native_protocol(self->protocol)) {
        read_into_tls_protocol(self);
        return;
    }
    static const char get_buffer_failed[] = "Fatal error: protocol.get_buffer() call failed.";
    PyObject *size_hint = PyLong_FromLong(-1);
    if (size_hint == NULL) {
        transport_handle_error(self, get_buffer_failed);
        return;
    }
    PyObject *buffer = transport_call_protocol(self, state->str_get_buffer, &size_hint, 1);
    Py_DECREF(size_hint);
    if (buffer == NULL) {
        transport_handle_error(self, get_buffer_failed);
        return;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(buffer);
        transport_handle_error(self, get_buffer_failed);
        return;
    }
    if (view.len == 0) {
        PyBuffer_Release(&view);
        Py_DECREF(buffer);
        PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
        transport_handle_error(self, get_buffer_failed);
        return;
    }
    /* get_buffer() (or the buffer's exporter) may have closed the socket
     * object or the whole transport, and the fd number may be reused. */
    ssize_t received = -1;
    int error_number = EBADF;
    if (!transport_socket_gone(self)) {
        received = read(self->fd, view.buf, (size_t)view.len);
        error_number = errno;
    }
    stats_bytes(self->loop, received > 0 ? received : 0, 0);
    PyBuffer_Release(&view);
    Py_DECREF(buffer);
    if (received < 0) {
        if (!would_block(error_number)) {
            read_failed(self, error_number);
        }
        return;
    }
    if (received == 0) {
        on_eof(self);
        return;
    }
    PyObject *count = PyLong_FromSsize_t(received);
    PyObject *r = count ? transport_call_protocol(self, state->str_buffer_updated, &count, 1) : NULL;
    Py_XDECREF(count);
    if (r == NULL) {
        transport_handle_error(self, "Fatal error: protocol.buffer_updated() call failed.");
        return;
    }
    Py_DECREF(r);
}

/* The bytes handed to data_received.  A protocol that does not keep them
 * (an echo, a parser that copies) leaves the object with our reference
 * only; the next read that fits is then copied into that same object
 * instead of a new one (as CPython itself resizes a bytes object in place
 * when it holds the only reference), which saves an allocation and a free
 * per read.  Objects of 2 bytes and fewer may be shared singletons and are
 * never reused. */
#define SPARE_BYTES_MAX (64 * 1024)

static PyObject *
received_bytes(LoopObject *loop, const char *src, Py_ssize_t size, Py_ssize_t *capacity)
{
    PyObject *spare = loop->spare_bytes;
    if (spare != NULL && size <= loop->spare_capacity && size > 2) {
        loop->spare_bytes = NULL;
        *capacity = loop->spare_capacity;
        Py_SET_SIZE(spare, size);
        char *dst = PyBytes_AS_STRING(spare);
        memcpy(dst, src, (size_t)size);
        dst[size] = '\0';
        /* forget the hash of the previous contents */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
        ((PyBytesObject *)spare)->ob_shash = -1;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
        return spare;
    }
    *capacity = size;
    return PyBytes_FromStringAndSize(src, size);
}

/* Drops our reference to data, keeping it as the loop's spare when nobody
 * else holds it (the largest such object up to SPARE_BYTES_MAX). */
static void
release_received_bytes(LoopObject *loop, PyObject *data, Py_ssize_t capacity)
{
    if (Py_REFCNT(data) == 1 && PyBytes_CheckExact(data) && capacity > 2
        && capacity <= SPARE_BYTES_MAX
        && (loop->spare_bytes == NULL || capacity > loop->spare_capacity)) {
        Py_XSETREF(loop->spare_bytes, data);
        loop->spare_capacity = capacity;
        return;
    }
    Py_DECREF(data);
}

void
stream_on_readable(TransportObject *self)
{
    if (self->kind == TRANSPORT_WRITE_PIPE) {
        /* The reading end went away. */
        if (self->queue.count > 0) {
            PyObject *exc = PyObject_CallNoArgs(PyExc_BrokenPipeError);
            transport_force_close(self, exc);
            Py_XDECREF(exc);
        }
        else {
            transport_force_close(self, NULL);
        }
        return;
    }
    if (self->conn_lost || !transport_wants_read(self)) {
        return;
    }
    if (self->buffered_protocol) {
        read_into_protocol_buffer(self);
        return;
    }
    /* The loop's buffer is ours until given back: Python code run meanwhile
     * (the fast path's attribute lookups, a GC pass) cannot reach it. */
    char *buffer = transport_take_read_buffer(self->loop);
    if (buffer == NULL) {
        transport_handle_error(self, "Fatal read error on socket transport");
        return;
    }
    ssize_t received = transport_socket_gone(self) ? -1 : read(self->fd, buffer, TRANSPORT_READ_BUFFER_SIZE);
    int error_number = errno;
    stats_bytes(self->loop, received > 0 ? received : 0, 0);
    if (received <= 0) {
        transport_give_back_read_buffer(self->loop, buffer);
        if (received == 0) {
            on_eof(self);
        }
        else if (!would_block(error_number)) {
            read_failed(self, error_number);
        }
        return;
    }
    int handled = stream_fast_data_received(self, buffer, received);
    if (handled != 0) {
        transport_give_back_read_buffer(self->loop, buffer);
        if (handled < 0) {
            transport_handle_error(self, "Fatal error: protocol.data_received() call failed.");
        }
        return;
    }
    Py_ssize_t capacity;
    PyObject *data = received_bytes(self->loop, buffer, received, &capacity);
    transport_give_back_read_buffer(self->loop, buffer);
    if (data == NULL) {
        transport_handle_error(self, "Fatal error: protocol.data_received() call failed.");
        return;
    }
    PyObject *r = transport_call_protocol(self, self->loop->state->str_data_received, &data, 1);
    release_received_bytes(self->loop, data, capacity);
    if (r == NULL) {
        transport_handle_error(self, "Fatal error: protocol.data_received() call failed.");
        return;
    }
    Py_DECREF(r);
}

/* ---- methods ---- */

static int
check_bytes_like(PyObject *data)
{
    if (PyBytes_Check(data) || PyByteArray_Check(data) || PyMemoryView_Check(data)) {
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not '%.100s'",
                 Py_TYPE(data)->tp_name);
    return -1;
}

/* Queues data[offset:]: bytes by reference, anything else copied (the caller
 * may reuse a bytearray or memoryview as soon as write() returns). */
static int
queue_rest(TransportObject *self, PyObject *data, const Py_buffer *view, Py_ssize_t offset)
{
    if (PyBytes_CheckExact(data)) {
        return write_queue_push(&self->queue, data, offset, NULL);
    }
    PyObject *copy = PyBytes_FromStringAndSize((const char *)view->buf + offset, view->len - offset);
    if (copy == NULL) {
        return -1;
    }
    int rc = write_queue_push(&self->queue, copy, 0, NULL);
    Py_DECREF(copy);
    return rc;
}

/* Common checks of write()/writelines(); 1: go on, 0: silently dropped, -1: error. */
static int
check_can_write(TransportObject *self, const char *what)
{
    if (self->kind == TRANSPORT_SOCKET_STREAM && self->eof_written) {
        PyErr_Format(PyExc_RuntimeError, "Cannot call %s() after write_eof()", what);
        return -1;
    }
    if (self->empty_waiter != NULL) {
        PyErr_Format(PyExc_RuntimeError, "unable to %s; sendfile is in progress", what);
        return -1;
    }
    if (self->conn_lost || (self->kind == TRANSPORT_WRITE_PIPE && self->closing)) {
        transport_warn_write_after_lost(self, self->kind == TRANSPORT_SOCKET_STREAM
            ? "socket.send() raised exception."
            : "pipe closed by peer or os.write(pipe, data) raised exception.");
        return 0;
    }
    return 1;
}

static PyObject *
stream_write(TransportObject *self, PyObject *data)
{
    if (check_bytes_like(data) < 0) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        /* A non-contiguous memoryview passes asyncio's type check and then
         * fails in send(): a fatal write error there, so here too. */
        transport_handle_error(self, write_error_message(self));
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (view.len == 0) {
        PyBuffer_Release(&view);
        if (self->kind == TRANSPORT_SOCKET_STREAM && self->eof_written) {
            PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
            return NULL;
        }
        Py_RETURN_NONE;
    }
    int go_on = check_can_write(self, "write");
    if (go_on <= 0) {
        PyBuffer_Release(&view);
        return go_on < 0 ? NULL : Py_NewRef(Py_None);
    }
    Py_ssize_t sent = 0;
    if (self->queue.count == 0) {
        ssize_t n = write_some(self, view.buf, view.len);
        if (n < 0) {
            if (!would_block(errno)) {
                int error_number = errno;
                PyBuffer_Release(&view);
                write_failed(self, error_number);
                if (PyErr_Occurred()) {
                    return NULL;
                }
                Py_RETURN_NONE;
            }
            n = 0;
        }
        if (n == view.len) {
            PyBuffer_Release(&view);
            Py_RETURN_NONE;
        }
        sent = n;
        /* asyncio's write() adds its writer before it buffers the rest */
        if (transport_check_can_poll(self, UV_WRITABLE) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    int rc = queue_rest(self, data, &view, sent);
    PyBuffer_Release(&view);
    return rc < 0 ? NULL : transport_after_queued(self);
}

/* writelines() as asyncio's WriteTransport (3.11, and pipes on every
 * version): b''.join(list_of_data), then write().  The join runs over a
 * tuple of our own, so a buffer exporter that mutates the caller's list
 * (__buffer__, 3.12+) cannot pull items from under it, and an error queues
 * nothing. */
static PyObject *
writelines_joined(TransportObject *self, PyObject *list_of_data)
{
    PyObject *iterator = PyObject_GetIter(list_of_data);
    if (iterator == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_SetString(PyExc_TypeError, "can only join an iterable");
        }
        return NULL;
    }
    PyObject *items = PySequence_Tuple(iterator);
    Py_DECREF(iterator);
    if (items == NULL) {
        return NULL;
    }
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    PyObject *joined = NULL;
    if (empty != NULL) {
        PyObject *args[2] = {empty, items};
        PyObject *name = PyUnicode_InternFromString("join");
        joined = name ? PyObject_VectorcallMethod(name, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL)
                      : NULL;
        Py_XDECREF(name);
        Py_DECREF(empty);
    }
    Py_DECREF(items);
    if (joined == NULL) {
        return NULL;
    }
    PyObject *result = stream_write(self, joined);
    Py_DECREF(joined);
    return result;
}

#if PY_VERSION_HEX >= 0x030C0000
/* writelines() of a 3.12+ socket transport, as asyncio's: every item
 * through memoryview() first (an error there raises and queues nothing),
 * then all are buffered and sent with one sendmsg().  Items are owned
 * references taken from the iterator: __buffer__ may mutate the argument. */
static PyObject *
writelines_buffers(TransportObject *self, PyObject *list_of_data)
{
    if (self->eof_written) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot call writelines() after write_eof()");
        return NULL;
    }
    if (self->empty_waiter != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "unable to writelines; sendfile is in progress");
        return NULL;
    }
    int truthy = PyObject_IsTrue(list_of_data);  /* an empty (falsy) argument: no-op, even None */
    if (truthy <= 0) {
        return truthy < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *iterator = PyObject_GetIter(list_of_data);
    PyObject *chunks = iterator ? PyList_New(0) : NULL;
    if (chunks == NULL) {
        Py_XDECREF(iterator);
        return NULL;
    }
    int contiguous = 1;
    PyObject *item;
    while ((item = PyIter_Next(iterator)) != NULL) {
        Py_buffer view;
        int rc = -1;
        if (!PyObject_CheckBuffer(item)) {
            PyErr_Format(PyExc_TypeError, "memoryview: a bytes-like object is required, not '%.100s'",
                         Py_TYPE(item)->tp_name);
        }
        else if (PyObject_GetBuffer(item, &view, PyBUF_FULL_RO) == 0) {
            rc = 0;
            if (!PyBuffer_IsContiguous(&view, 'C')) {
                contiguous = 0;  /* accepted by memoryview(), refused by sendmsg() below */
            }
            else if (view.len > 0) {
                /* bytes by reference, anything else copied (it may change after we return) */
                PyObject *chunk = PyBytes_CheckExact(item) ? Py_NewRef(item)
                                  : PyBytes_FromStringAndSize(view.buf, view.len);
                rc = chunk ? PyList_Append(chunks, chunk) : -1;
                Py_XDECREF(chunk);
            }
            PyBuffer_Release(&view);
        }
        Py_DECREF(item);
        if (rc < 0) {
            break;
        }
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred()) {
        Py_DECREF(chunks);
        return NULL;
    }
    if (!contiguous) {
        /* asyncio's sendmsg() fails on the whole buffer: a fatal write error */
        Py_DECREF(chunks);
        write_queue_clear(&self->queue);
        PyErr_SetString(PyExc_BufferError, "memoryview: underlying buffer is not C-contiguous");
        transport_handle_error(self, write_error_message(self));
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    int go_on = check_can_write(self, "writelines");
    for (Py_ssize_t i = 0; go_on > 0 && i < PyList_GET_SIZE(chunks); i++) {
        if (write_queue_push(&self->queue, PyList_GET_ITEM(chunks, i), 0, NULL) < 0) {
            go_on = -1;  /* MemoryError: what was queued is sent */
        }
    }
    Py_DECREF(chunks);
    if (go_on == 0) {
        Py_RETURN_NONE;
    }
    PyObject *error = go_on < 0 ? compat_fetch_exception() : NULL;
    if (!(self->poll_events & UV_WRITABLE)) {
        stream_flush(self);  /* nothing was waiting: try at once */
    }
    PyObject *result = transport_after_queued(self);
    if (error != NULL) {
        Py_XDECREF(result);
        PyErr_Clear();
        compat_restore_exception(error);
        return NULL;
    }
    return result;
}
#endif

static PyObject *
stream_writelines(TransportObject *self, PyObject *list_of_data)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (self->kind == TRANSPORT_SOCKET_STREAM) {
        return writelines_buffers(self, list_of_data);
    }
#endif
    return writelines_joined(self, list_of_data);
}

static PyObject *
stream_can_write_eof(TransportObject *self, PyObject *unused)
{
    Py_RETURN_TRUE;
}

static PyObject *
socket_write_eof(TransportObject *self, PyObject *unused)
{
    if (self->closing || self->eof_written) {
        Py_RETURN_NONE;
    }
    self->eof_written = 1;
    if (self->queue.count == 0 && (transport_socket_gone(self) || shutdown(self->fd, SHUT_WR) < 0)) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *
stream_pause_reading(TransportObject *self, PyObject *unused)
{
    if (self->closing || self->reading_paused) {
        Py_RETURN_NONE;
    }
    self->reading_paused = 1;
    if (transport_update_poll(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
stream_resume_reading(TransportObject *self, PyObject *unused)
{
    if (self->closing || !self->reading_paused) {
        Py_RETURN_NONE;
    }
    self->reading_paused = 0;
    if (transport_update_poll(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
stream_is_reading(TransportObject *self, PyObject *unused)
{
    return PyBool_FromLong(!self->closing && !self->reading_paused);
}

/* ---- construction ---- */

static PyObject *
stream_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"loop", "sock", "protocol", "waiter", "extra", "server", NULL};
    PyObject *loop, *sock, *protocol, *waiter = Py_None, *extra = Py_None, *server = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OOO", keywords, &loop, &sock, &protocol,
                                     &waiter, &extra, &server)) {
        return NULL;
    }
    ModuleState *state;
    TransportObject *self = transport_alloc(type, loop, &state);
    if (self == NULL) {
        return NULL;
    }
    TransportKind kind = type == state->SocketTransportType ? TRANSPORT_SOCKET_STREAM
                         : type == state->ReadPipeTransportType ? TRANSPORT_READ_PIPE
                         : TRANSPORT_WRITE_PIPE;
    if (transport_setup(self, (LoopObject *)loop, sock, protocol, extra,
                        kind == TRANSPORT_SOCKET_STREAM ? server : Py_None, kind) < 0) {
        goto fail;
    }
    if (kind == TRANSPORT_WRITE_PIPE) {
        /* The reader going away shows as readable (or POLLERR) on a socket or
         * FIFO; a character device (a pty) is readable when input arrives. */
        struct stat info;
        if (fstat(self->fd, &info) == 0 && (S_ISSOCK(info.st_mode) || S_ISFIFO(info.st_mode))) {
            self->watch_peer_close = 1;
        }
    }
    if (transport_schedule_start(self, waiter) < 0) {
        goto fail;
    }
    return (PyObject *)self;
fail:
    transport_discard(self);
    return NULL;
}

static PyMethodDef write_methods[] = {
    {"write", (PyCFunction)stream_write, METH_O, "Write data to the transport without blocking."},
    {"writelines", (PyCFunction)stream_writelines, METH_O, "Write every buffer of an iterable."},
    {"can_write_eof", (PyCFunction)stream_can_write_eof, METH_NOARGS, "Return True: write_eof() works."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef read_methods[] = {
    {"pause_reading", (PyCFunction)stream_pause_reading, METH_NOARGS, "Stop calling data_received()."},
    {"resume_reading", (PyCFunction)stream_resume_reading, METH_NOARGS, "Resume data_received() calls."},
    {"is_reading", (PyCFunction)stream_is_reading, METH_NOARGS, "Return True if the transport is receiving."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef socket_methods[] = {
    {"write_eof", (PyCFunction)socket_write_eof, METH_NOARGS,
     "Close the write end after flushing buffered data (shutdown(SHUT_WR))."},
    {"close", (PyCFunction)transport_close, METH_NOARGS,
     "Close after flushing buffered data; connection_lost(None) follows."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef read_pipe_methods[] = {
    {"close", (PyCFunction)transport_close, METH_NOARGS, "Close the transport."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef write_pipe_methods[] = {
    {"write_eof", (PyCFunction)transport_close, METH_NOARGS, "Close the pipe after flushing buffered data."},
    {"close", (PyCFunction)transport_close, METH_NOARGS, "Close the pipe after flushing buffered data."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot socket_slots[] = {
    {Py_tp_new, stream_new},
    {Py_tp_init, transport_init},
    {Py_tp_dealloc, transport_dealloc},
    {Py_tp_finalize, transport_finalize},
    {Py_tp_traverse, transport_traverse},
    {Py_tp_clear, transport_clear},
    {Py_tp_repr, transport_repr},
    {Py_tp_getset, transport_getsets},
    {Py_tp_members, transport_members},
    {Py_tp_methods, NULL},  /* filled in at init */
    {0, NULL},
};

static PyType_Slot read_pipe_slots[sizeof(socket_slots) / sizeof(socket_slots[0])];
static PyType_Slot write_pipe_slots[sizeof(socket_slots) / sizeof(socket_slots[0])];

static PyTypeObject *
make_kind(PyObject *module, const char *name, PyType_Slot *slots, PyObject *base,
          const PyMethodDef *const *tables, int count)
{
    PyMethodDef *methods = transport_join_methods(tables, count);
    if (methods == NULL) {
        return NULL;
    }
    if (slots != socket_slots) {
        memcpy(slots, socket_slots, sizeof(socket_slots));
    }
    for (PyType_Slot *slot = slots; slot->slot != 0; slot++) {
        if (slot->slot == Py_tp_methods) {
            slot->pfunc = methods;
        }
    }
    PyType_Spec spec = {
        .name = name,
        .basicsize = sizeof(TransportObject),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    return transport_make_type(module, &spec, base);
}

int
stream_transports_init(PyObject *module, ModuleState *state)
{
    if (socket_fd_offset == 0) {
        calibrate_socket_fd_offset();
    }
    PyObject *asyncio = PyImport_ImportModule("asyncio.transports");
    if (asyncio == NULL) {
        return -1;
    }
    /* As asyncio's own: socket and write-pipe transports are
     * _FlowControlMixin (a Transport; sendfile's fallback checks it), read
     * pipes only ReadTransport. */
    PyObject *transport = PyObject_GetAttrString(asyncio, "_FlowControlMixin");
    PyObject *read_transport = PyObject_GetAttrString(asyncio, "ReadTransport");
    PyObject *write_transport = transport ? Py_NewRef(transport) : NULL;
    Py_DECREF(asyncio);
    int rc = -1;
    if (transport == NULL || read_transport == NULL || write_transport == NULL) {
        goto done;
    }
    const PyMethodDef *socket_tables[] = {transport_common_methods, transport_write_methods,
                                          write_methods, read_methods, socket_methods};
    const PyMethodDef *read_pipe_tables[] = {transport_common_methods, read_methods, read_pipe_methods};
    const PyMethodDef *write_pipe_tables[] = {transport_common_methods, transport_write_methods,
                                              write_methods, write_pipe_methods};
    state->SocketTransportType = make_kind(module, "pyasync_c._loop.SocketTransport", socket_slots,
                                           transport, socket_tables, 5);
    if (state->SocketTransportType == NULL) {
        goto done;
    }
    state->ReadPipeTransportType = make_kind(module, "pyasync_c._loop.ReadPipeTransport",
                                             read_pipe_slots, read_transport, read_pipe_tables, 3);
    if (state->ReadPipeTransportType == NULL) {
        goto done;
    }
    state->WritePipeTransportType = make_kind(module, "pyasync_c._loop.WritePipeTransport",
                                              write_pipe_slots, write_transport, write_pipe_tables, 4);
    if (state->WritePipeTransportType == NULL) {
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(transport);
    Py_XDECREF(read_transport);
    Py_XDECREF(write_transport);
    return rc;
}
