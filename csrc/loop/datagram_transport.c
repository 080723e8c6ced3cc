/* DatagramTransport: UDP (and datagram Unix) sockets for
 * create_datagram_endpoint; a subclass of asyncio.DatagramTransport.
 *
 * Shares TransportObject and its lifecycle with the stream transports
 * (transport_base.c).  Receiving: one recvfrom() per readiness event into the
 * loop's read buffer, then datagram_received(data, addr).  IPv4/IPv6
 * addresses are converted here, to the socket module's tuples; other families
 * go through the socket object's recvfrom()/sendto() (it formats every
 * family as Python users expect), and so does any address the fast path does
 * not parse (host names, out-of-range ports: the socket module then resolves
 * or raises exactly as usual).  Sending: at once when nothing is queued; a
 * datagram that would block is queued whole, with its address, and sent when
 * the fd is writable.  OSErrors of sends and receives
 * go to protocol.error_received() and the transport stays open, as asyncio's;
 * an exception raised by the protocol's callbacks is reported to the loop's
 * exception handler and the transport goes on.
 */
#include "transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#if PY_VERSION_HEX >= 0x030D0000
#define SEND_EMPTY_DATAGRAMS 1
#define DATAGRAM_HEADER_BYTES 8   /* 3.13 counts 8 bytes of header per queued datagram */
#else
#define SEND_EMPTY_DATAGRAMS 0
#define DATAGRAM_HEADER_BYTES 0
#endif

static PyObject *str_recvfrom, *str_sendto, *str_send;  /* interned, immutable */

/* The socket module's address tuple for an IPv4/IPv6 sockaddr, or NULL
 * without an exception for other families. */
static PyObject *
address_to_python(const struct sockaddr_storage *address, socklen_t length)
{
    char host[NI_MAXHOST];
    if (address->ss_family == AF_INET && length >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)address;
        if (inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host)) == NULL) {
            return NULL;
        }
        return Py_BuildValue("(si)", host, ntohs(in4->sin_port));
    }
    if (address->ss_family == AF_INET6 && length >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)address;
        if (getnameinfo((const struct sockaddr *)address, length, host, sizeof(host), NULL, 0,
                        NI_NUMERICHOST) != 0) {
            return NULL;
        }
        return Py_BuildValue("(siII)", host, ntohs(in6->sin6_port),
                             (unsigned int)ntohl(in6->sin6_flowinfo), (unsigned int)in6->sin6_scope_id);
    }
    return NULL;
}

/* Parses a numeric IPv4/IPv6 address tuple; 0 when it is not one (the
 * caller then lets the socket object handle it). */
static int
address_from_python(PyObject *address, int family, struct sockaddr_storage *out, socklen_t *length)
{
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) < 2) {
        return 0;
    }
    PyObject *host = PyTuple_GET_ITEM(address, 0);
    PyObject *port_obj = PyTuple_GET_ITEM(address, 1);
    if (!PyUnicode_Check(host) || !PyLong_CheckExact(port_obj) || !PyUnicode_IS_ASCII(host)) {
        return 0;
    }
    long port = PyLong_AsLong(port_obj);
    if (port < 0 || port > 65535) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t text_size;
    const char *text = PyUnicode_AsUTF8AndSize(host, &text_size);
    if (text == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (strlen(text) != (size_t)text_size) {
        return 0;  /* an embedded NUL: inet_pton would stop there; the socket module refuses it */
    }
    memset(out, 0, sizeof(*out));
    if (family == AF_INET && PyTuple_GET_SIZE(address) == 2) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)out;
        if (inet_pton(AF_INET, text, &in4->sin_addr) != 1) {
            return 0;
        }
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        *length = sizeof(*in4);
        return 1;
    }
    if (family == AF_INET6 && PyTuple_GET_SIZE(address) <= 4) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
        if (inet_pton(AF_INET6, text, &in6->sin6_addr) != 1) {
            return 0;  /* includes scoped "fe80::1%eth0": the socket module resolves those */
        }
        unsigned long flowinfo = 0, scope_id = 0;
        if (PyTuple_GET_SIZE(address) > 2) {
            flowinfo = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(address, 2));
        }
        if (PyTuple_GET_SIZE(address) > 3) {
            scope_id = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(address, 3));
        }
        if (PyErr_Occurred() || flowinfo > 0xfffff || scope_id > 0xffffffffUL) {
            PyErr_Clear();
            return 0;
        }
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        in6->sin6_flowinfo = htonl((uint32_t)flowinfo);
        in6->sin6_scope_id = (uint32_t)scope_id;
        *length = sizeof(*in6);
        return 1;
    }
    return 0;
}

static int
socket_family(TransportObject *self)
{
    int family = 0;
    socklen_t length = sizeof(family);
    if (getsockopt(self->fd, SOL_SOCKET, SO_DOMAIN, &family, &length) < 0) {
        return -1;
    }
    return family;
}

static int
is_would_block(void)
{
    return PyErr_ExceptionMatches(PyExc_BlockingIOError) || PyErr_ExceptionMatches(PyExc_InterruptedError);
}

/* Passes the current OSError to protocol.error_received(). */
static void
error_received(TransportObject *self)
{
    PyObject *exc = compat_fetch_exception();
    PyObject *r = transport_call_protocol(self, self->loop->state->str_error_received, &exc, 1);
    Py_DECREF(exc);
    if (r == NULL) {
        transport_report_error(self, "Exception in protocol.error_received()");
        return;
    }
    Py_DECREF(r);
}

static int
is_connected(TransportObject *self)
{
    PyObject *peer = PyDict_GetItemString(self->extra, "peername");
    if (peer == NULL) {
        return 0;
    }
    Py_INCREF(peer);  /* its __bool__ may change _extra */
    int connected = PyObject_IsTrue(peer) == 1;
    Py_DECREF(peer);
    PyErr_Clear();
    return connected;
}

/* One send; 0 sent, 1 would block, -1 error set. */
static int
send_one(TransportObject *self, PyObject *data, PyObject *address)
{
    int connected = is_connected(self) || address == NULL || address == Py_None;
    struct sockaddr_storage target;
    socklen_t target_length = 0;
    if (connected || address_from_python(address, self->family, &target, &target_length)) {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            return -1;
        }
        ssize_t sent = transport_socket_gone(self) ? -1  /* asyncio: EBADF from the closed socket */
                       : connected ? send(self->fd, view.buf, (size_t)view.len, 0)
                                 : sendto(self->fd, view.buf, (size_t)view.len, 0,
                                          (struct sockaddr *)&target, target_length);
        int error_number = errno;
        PyBuffer_Release(&view);
        if (sent >= 0) {
            stats_bytes(self->loop, 0, sent);
            return 0;
        }
        if (error_number == EAGAIN || error_number == EWOULDBLOCK || error_number == EINTR) {
            return 1;
        }
        PyObject *exc = transport_oserror(error_number);
        if (exc != NULL) {
            compat_restore_exception(exc);
        }
        return -1;
    }
    PyObject *r;
    PyObject *sock = Py_NewRef(self->sock);  /* `_sock = None` may drop ours meanwhile */
    if (is_connected(self) || address == NULL || address == Py_None) {
        PyObject *args[2] = {sock, data};
        r = PyObject_VectorcallMethod(str_send, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    else {
        PyObject *args[3] = {sock, data, address};
        r = PyObject_VectorcallMethod(str_sendto, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_DECREF(sock);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    if (is_would_block()) {
        PyErr_Clear();
        return 1;
    }
    return -1;
}

/* An error of send_one(): OSError to error_received, anything else fatal. */
static void
send_failed(TransportObject *self)
{
    if (PyErr_ExceptionMatches(PyExc_OSError)) {
        error_received(self);
    }
    else {
        transport_handle_error(self, "Fatal write error on datagram transport");
    }
}

/* Receives through the socket object (families we do not format):
 * recvfrom() returns a fresh bytes object, so no buffer of ours is exposed
 * to Python code or written while the socket module releases the GIL. */
static PyObject *
receive_via_socket(TransportObject *self)
{
    PyObject *size = PyLong_FromLong(TRANSPORT_READ_BUFFER_SIZE);
    if (size == NULL) {
        return NULL;
    }
    PyObject *sock = Py_NewRef(self->sock);
    PyObject *args[2] = {sock, size};
    PyObject *pair = PyObject_VectorcallMethod(str_recvfrom, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(sock);
    Py_DECREF(size);
    if (pair != NULL && (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2)) {
        Py_DECREF(pair);
        PyErr_SetString(PyExc_TypeError, "recvfrom() did not return (data, address)");
        return NULL;
    }
    return pair;
}

static PyObject *
receive_datagram(TransportObject *self)
{
    if (self->family != AF_INET && self->family != AF_INET6) {
        return receive_via_socket(self);
    }
    char *buffer = transport_take_read_buffer(self->loop);
    if (buffer == NULL) {
        return NULL;
    }
    struct sockaddr_storage source;
    socklen_t length = sizeof(source);
    ssize_t received = transport_socket_gone(self) ? -1 : recvfrom(self->fd, buffer, TRANSPORT_READ_BUFFER_SIZE, 0,
                                (struct sockaddr *)&source, &length);
    if (received < 0) {
        int error_number = errno;
        transport_give_back_read_buffer(self->loop, buffer);
        PyObject *exc = transport_oserror(error_number);
        if (exc != NULL) {
            compat_restore_exception(exc);
        }
        return NULL;
    }
    stats_bytes(self->loop, received, 0);
    PyObject *data = PyBytes_FromStringAndSize(buffer, received);
    transport_give_back_read_buffer(self->loop, buffer);
    PyObject *address = data ? address_to_python(&source, length) : NULL;
    if (data != NULL && address == NULL && !PyErr_Occurred()) {
        address = Py_NewRef(Py_None);  /* e.g. no source address */
    }
    PyObject *pair = address ? PyTuple_Pack(2, data, address) : NULL;
    Py_XDECREF(data);
    Py_XDECREF(address);
    return pair;
}

/* Up to this many datagrams per readiness event (like libuv's own UDP
 * handles): fewer loop iterations under load, same order of delivery. */
#define DATAGRAMS_PER_EVENT 32

void
datagram_on_readable(TransportObject *self)
{
    for (int i = 0; i < DATAGRAMS_PER_EVENT && !self->conn_lost && !self->closing; i++) {
        PyObject *pair = receive_datagram(self);
        if (pair == NULL) {
            if (is_would_block()) {
                PyErr_Clear();
            }
            else if (PyErr_ExceptionMatches(PyExc_OSError)) {
                error_received(self);
            }
            else {
                transport_handle_error(self, "Fatal read error on datagram transport");
            }
            return;
        }
        PyObject *r = transport_call_protocol(self, self->loop->state->str_datagram_received,
                                              &PyTuple_GET_ITEM(pair, 0), 2);
        Py_DECREF(pair);
        if (r == NULL) {
            transport_report_error(self, "Exception in protocol.datagram_received()");
            return;
        }
        Py_DECREF(r);
        if (self->loop->pending_error != NULL) {
            return;  /* KeyboardInterrupt/SystemExit on its way out of run_forever */
        }
    }
}

void
datagram_on_writable(TransportObject *self)
{
    WriteQueue *queue = &self->queue;
    while (queue->count > 0) {
        WriteEntry *entry = &queue->items[queue->head];
        PyObject *data = Py_NewRef(entry->data);
        PyObject *address = Py_XNewRef(entry->address);
        write_queue_pop(queue);
        queue->bytes -= DATAGRAM_HEADER_BYTES;
        int rc = send_one(self, data, address);  /* a socket subclass may run Python */
        if (rc == 1) {
            /* put it back at the head, unless the transport was aborted meanwhile */
            int failed = !self->conn_lost && write_queue_push_front(queue, data, address) < 0;
            if (!self->conn_lost && !failed) {
                queue->bytes += DATAGRAM_HEADER_BYTES;
            }
            Py_DECREF(data);
            Py_XDECREF(address);
            if (failed) {
                transport_handle_error(self, "Fatal write error on datagram transport");
                return;
            }
            break;
        }
        Py_DECREF(data);
        Py_XDECREF(address);
        if (rc < 0) {
            send_failed(self);
            return;
        }
    }
    transport_maybe_resume_protocol(self);  /* may queue more */
    if (queue->count == 0 && self->closing && !self->conn_lost) {
        self->conn_lost++;
        if (transport_schedule_connection_lost(self, NULL) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
}

static PyObject *
datagram_sendto(TransportObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *data = nargs > 0 ? args[0] : NULL;
    PyObject *address = nargs > 1 ? args[1] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        PyObject **slot = PyUnicode_CompareWithASCIIString(key, "data") == 0 ? &data
                          : PyUnicode_CompareWithASCIIString(key, "addr") == 0 ? &address : NULL;
        if (slot == NULL || *slot != NULL) {
            PyErr_Format(PyExc_TypeError, "sendto() got an unexpected or repeated keyword argument %R", key);
            return NULL;
        }
        *slot = args[nargs + i];
    }
    if (data == NULL || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "sendto() takes data and an optional addr");
        return NULL;
    }
    if (address == NULL) {
        address = Py_None;
    }
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not '%.100s'",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    Py_ssize_t size = PyObject_Length(data);
    if (size < 0) {
        return NULL;
    }
    if (size == 0 && !SEND_EMPTY_DATAGRAMS) {
        Py_RETURN_NONE;
    }
    if (self->address != NULL && self->address != Py_None) {
        if (address != Py_None) {
            PyObject *own = Py_NewRef(self->address);  /* __eq__ runs Python */
            int same = PyObject_RichCompareBool(address, own, Py_EQ);
            if (same == 0) {
                PyErr_Format(PyExc_ValueError, "Invalid address: must be None or %R", own);
            }
            Py_DECREF(own);
            if (same <= 0) {
                return NULL;
            }
        }
        address = self->address;
        if (self->conn_lost) {
            transport_warn_write_after_lost(self, "socket.send() raised exception.");
            Py_RETURN_NONE;
        }
    }
    if (self->lost || self->sock == NULL) {
        /* Socket closed (or forgotten), protocol and loop dropped: asyncio's sendto() raises
         * (an AttributeError from its _fatal_error) instead of calling the
         * protocol, so this raises the same type. */
        PyErr_SetString(PyExc_AttributeError, "sendto() on a closed transport: it has no loop any more");
        return NULL;
    }
    if (self->queue.count == 0) {
        int rc = send_one(self, data, address);
        if (rc == 0) {
            Py_RETURN_NONE;
        }
        if (rc < 0) {
            send_failed(self);
            if (PyErr_Occurred()) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
        /* asyncio's sendto() adds its writer before it buffers */
        if (transport_check_can_poll(self, UV_WRITABLE) < 0) {
            return NULL;
        }
    }
    PyObject *copy = PyBytes_CheckExact(data) ? Py_NewRef(data) : PyBytes_FromObject(data);
    if (copy == NULL) {
        return NULL;
    }
    int rc = write_queue_push(&self->queue, copy, 0, address == Py_None ? NULL : address);
    Py_DECREF(copy);
    if (rc < 0) {
        return NULL;
    }
    self->queue.bytes += DATAGRAM_HEADER_BYTES;
    return transport_after_queued(self);
}

static PyObject *
datagram_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"loop", "sock", "protocol", "address", "waiter", "extra", NULL};
    PyObject *loop, *sock, *protocol, *address = Py_None, *waiter = Py_None, *extra = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OOO", keywords, &loop, &sock, &protocol,
                                     &address, &waiter, &extra)) {
        return NULL;
    }
    ModuleState *state;
    TransportObject *self = transport_alloc(type, loop, &state);
    if (self == NULL) {
        return NULL;
    }
    if (transport_setup(self, (LoopObject *)loop, sock, protocol, extra, Py_None, TRANSPORT_DATAGRAM) < 0) {
        goto fail;
    }
    self->address = Py_NewRef(address);
    self->family = socket_family(self);
    if (transport_schedule_start(self, waiter) < 0) {
        goto fail;
    }
    return (PyObject *)self;
fail:
    transport_discard(self);
    return NULL;
}

static PyObject *
get_address(TransportObject *self, void *closure)
{
    return Py_NewRef(self->address ? self->address : Py_None);
}

static PyMethodDef datagram_methods[] = {
    {"sendto", (PyCFunction)(void (*)(void))datagram_sendto, METH_FASTCALL | METH_KEYWORDS,
     "Send data to addr (or to the connected peer when addr is None) without blocking."},
    {"close", (PyCFunction)transport_close, METH_NOARGS,
     "Close after sending queued datagrams; connection_lost(None) follows."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef datagram_getsets[] = {
    {"_address", (getter)get_address, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

int
datagram_transport_init(PyObject *module, ModuleState *state)
{
    if ((str_recvfrom = PyUnicode_InternFromString("recvfrom")) == NULL
        || (str_sendto = PyUnicode_InternFromString("sendto")) == NULL
        || (str_send = PyUnicode_InternFromString("send")) == NULL) {
        return -1;
    }
    const PyMethodDef *tables[] = {transport_common_methods, transport_write_methods, datagram_methods};
    PyMethodDef *methods = transport_join_methods(tables, 3);
    if (methods == NULL) {
        return -1;
    }
    /* transport_getsets plus ours */
    Py_ssize_t common = 0;
    while (transport_getsets[common].name != NULL) {
        common++;
    }
    PyGetSetDef *getsets = calloc((size_t)common + 2, sizeof(PyGetSetDef));
    if (getsets == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(getsets, transport_getsets, (size_t)common * sizeof(PyGetSetDef));
    getsets[common] = datagram_getsets[0];
    PyType_Slot slots[] = {
        {Py_tp_new, datagram_new},
        {Py_tp_init, transport_init},
        {Py_tp_dealloc, transport_dealloc},
        {Py_tp_finalize, transport_finalize},
        {Py_tp_traverse, transport_traverse},
        {Py_tp_clear, transport_clear},
        {Py_tp_repr, transport_repr},
        {Py_tp_getset, getsets},
        {Py_tp_members, transport_members},
        {Py_tp_methods, methods},
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = "pyasync_c._loop.DatagramTransport",
        .basicsize = sizeof(TransportObject),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    PyObject *transports = PyImport_ImportModule("asyncio.transports");
    if (transports == NULL) {
        return -1;
    }
    /* (_FlowControlMixin, DatagramTransport), like asyncio's selector one. */
    PyObject *flow_control = PyObject_GetAttrString(transports, "_FlowControlMixin");
    PyObject *datagram = flow_control ? PyObject_GetAttrString(transports, "DatagramTransport") : NULL;
    Py_DECREF(transports);
    PyObject *bases = datagram ? PyTuple_Pack(2, flow_control, datagram) : NULL;
    Py_XDECREF(flow_control);
    Py_XDECREF(datagram);
    if (bases == NULL) {
        return -1;
    }
    state->DatagramTransportType = transport_make_type(module, &spec, bases);
    Py_DECREF(bases);
    return state->DatagramTransportType ? 0 : -1;
}
