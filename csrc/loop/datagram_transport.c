/* DatagramTransport: UDP (and datagram Unix) sockets for
 * create_datagram_endpoint; a subclass of asyncio.DatagramTransport.
 *
 * Shares TransportObject and its lifecycle with the stream transports
 * (transport_base.c).  Receiving: one recvfrom() per readiness event through
 * the socket object (it formats addresses of every family exactly as asyncio
 * users expect), then datagram_received(data, addr).  Sending: at once when
 * nothing is queued; a datagram that would block is queued whole, with its
 * address, and sent when the fd is writable.  OSErrors of sends and receives
 * go to protocol.error_received() and the transport stays open, as asyncio's;
 * an exception raised by the protocol's callbacks is reported to the loop's
 * exception handler and the transport goes on.
 */
#include "transport.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#if PY_VERSION_HEX >= 0x030D0000
#define SEND_EMPTY_DATAGRAMS 1
#define DATAGRAM_HEADER_BYTES 8   /* 3.13 counts 8 bytes of header per queued datagram */
#else
#define SEND_EMPTY_DATAGRAMS 0
#define DATAGRAM_HEADER_BYTES 0
#endif

static PyObject *str_recvfrom, *str_sendto, *str_send;

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
    return peer != NULL && PyObject_IsTrue(peer) == 1;
}

/* One send; 0 sent, 1 would block, -1 error set. */
static int
send_one(TransportObject *self, PyObject *data, PyObject *address)
{
    PyObject *r;
    if (is_connected(self) || address == NULL || address == Py_None) {
        PyObject *args[2] = {self->sock, data};
        r = PyObject_VectorcallMethod(str_send, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    else {
        PyObject *args[3] = {self->sock, data, address};
        r = PyObject_VectorcallMethod(str_sendto, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
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

void
datagram_on_readable(TransportObject *self)
{
    if (self->conn_lost) {
        return;
    }
    PyObject *size = PyLong_FromLong(TRANSPORT_READ_BUFFER_SIZE);
    if (size == NULL) {
        transport_handle_error(self, "Fatal read error on datagram transport");
        return;
    }
    PyObject *args[2] = {self->sock, size};
    PyObject *pair = PyObject_VectorcallMethod(str_recvfrom, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(size);
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
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
        Py_DECREF(pair);
        PyErr_SetString(PyExc_TypeError, "recvfrom() did not return (data, address)");
        transport_handle_error(self, "Fatal read error on datagram transport");
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
        int rc = send_one(self, data, address);
        if (rc == 1) {
            /* put it back at the head */
            queue->head = (queue->head - 1) & (queue->capacity - 1);
            queue->count++;
            queue->items[queue->head].data = data;
            queue->items[queue->head].offset = 0;
            queue->items[queue->head].address = address;
            queue->bytes += PyBytes_GET_SIZE(data) + DATAGRAM_HEADER_BYTES;
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
datagram_sendto(TransportObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "sendto() takes data and an optional address");
        return NULL;
    }
    PyObject *data = args[0];
    PyObject *address = nargs > 1 ? args[1] : Py_None;
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
            int same = PyObject_RichCompareBool(address, self->address, Py_EQ);
            if (same < 0) {
                return NULL;
            }
            if (!same) {
                PyErr_Format(PyExc_ValueError, "Invalid address: must be None or %R", self->address);
                return NULL;
            }
        }
        address = self->address;
        if (self->conn_lost) {
            transport_warn_write_after_lost(self, "socket.send() raised exception.");
            Py_RETURN_NONE;
        }
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
    if (transport_update_poll(self) < 0) {
        return NULL;
    }
    transport_maybe_pause_protocol(self);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
datagram_close(TransportObject *self, PyObject *unused)
{
    if (self->closing) {
        Py_RETURN_NONE;
    }
    self->closing = 1;
    if (self->queue.count == 0) {
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
datagram_abort(TransportObject *self, PyObject *unused)
{
    transport_force_close(self, NULL);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
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
    PyObject *module = PyType_GetModuleByDef(type, &loop_module_def);
    if (module == NULL) {
        return NULL;
    }
    ModuleState *state = PyModule_GetState(module);
    if (!PyObject_TypeCheck(loop, state->LoopCoreType)) {
        PyErr_Format(PyExc_TypeError, "loop must be a pyasync_c loop, not %.100s", Py_TYPE(loop)->tp_name);
        return NULL;
    }
    TransportObject *self = (TransportObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (transport_setup(self, (LoopObject *)loop, sock, protocol, extra, Py_None, TRANSPORT_DATAGRAM) < 0) {
        goto fail;
    }
    self->address = Py_NewRef(address);
    if (transport_schedule_start(self, waiter) < 0) {
        goto fail;
    }
    return (PyObject *)self;
fail:
    Py_CLEAR(self->sock);
    Py_DECREF(self);
    return NULL;
}

static PyObject *
get_address(TransportObject *self, void *closure)
{
    return Py_NewRef(self->address ? self->address : Py_None);
}

static PyMethodDef datagram_methods[] = {
    {"sendto", (PyCFunction)(void (*)(void))datagram_sendto, METH_FASTCALL,
     "Send data to addr (or to the connected peer when addr is None) without blocking."},
    {"close", (PyCFunction)datagram_close, METH_NOARGS,
     "Close after sending queued datagrams; connection_lost(None) follows."},
    {"abort", (PyCFunction)datagram_abort, METH_NOARGS, "Close at once, dropping queued datagrams."},
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
    PyObject *base = PyObject_GetAttrString(transports, "DatagramTransport");
    Py_DECREF(transports);
    if (base == NULL) {
        return -1;
    }
    state->DatagramTransportType = transport_make_type(module, &spec, base);
    Py_DECREF(base);
    return state->DatagramTransportType ? 0 : -1;
}
