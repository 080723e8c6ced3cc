/* streams_fast.c: hands received bytes to asyncio's own StreamReaderProtocol
 * and StreamReader (what asyncio.open_connection/start_server use) without
 * running their Python frames.
 *
 * For each read, StreamReaderProtocol.data_received(data) does
 *     reader = self._stream_reader          # property: weakref call
 *     if reader is not None: reader.feed_data(data)
 * and StreamReader.feed_data / _wakeup_waiter (the same code in 3.11-3.13):
 *     assert not self._eof
 *     if not data: return
 *     self._buffer.extend(data)
 *     waiter = self._waiter
 *     if waiter is not None:
 *         self._waiter = None
 *         if not waiter.cancelled(): waiter.set_result(None)
 *     if self._transport is not None and not self._paused
 *             and len(self._buffer) > 2 * self._limit:
 *         try: self._transport.pause_reading()
 *         except NotImplementedError: self._transport = None
 *         else: self._paused = True
 * stream_fast_data_received() does the same steps in C, through the same
 * attributes (getattr/setattr), so the objects end in the same state; the
 * bytes go from the transport's read buffer straight into reader._buffer,
 * with no bytes object in between.  It
 * only runs when nothing could differ: the protocol is exactly
 * StreamReaderProtocol and the reader exactly StreamReader, neither class
 * nor instance replaces data_received/feed_data, the classes keep
 * _stream_reader/_wakeup_waiter, the reader is not at EOF (asyncio's assert)
 * and its buffer is a bytearray.  Otherwise the transport calls
 * protocol.data_received(data) as usual (or, past the protocol checks,
 * reader.feed_data(data)).
 *
 * Objects: the cached classes, functions and names live in the module state
 * (ModuleState.streams), filled once at import by streams_fast_init() and
 * released with the module; nothing is kept per transport.
 */
#include "transport.h"

static const char *const streams_fast_name_strs[STREAMS_FAST_N] = {
    [SF__stream_reader_wr] = "_stream_reader_wr",
    [SF__stream_reader] = "_stream_reader",
    [SF_feed_data] = "feed_data",
    [SF__wakeup_waiter] = "_wakeup_waiter",
    [SF__eof] = "_eof",
    [SF__buffer] = "_buffer",
    [SF__waiter] = "_waiter",
    [SF__transport] = "_transport",
    [SF__paused] = "_paused",
    [SF__limit] = "_limit",
    [SF_pause_reading] = "pause_reading",
};

int
streams_fast_init(ModuleState *state)
{
    StreamsFast *sf = &state->streams;
    for (int i = 0; i < STREAMS_FAST_N; i++) {
        sf->names[i] = PyUnicode_InternFromString(streams_fast_name_strs[i]);
        if (sf->names[i] == NULL) {
            return -1;
        }
    }
    PyObject *streams = PyImport_ImportModule("asyncio.streams");
    if (streams == NULL) {
        return -1;
    }
    PyObject *protocol_type = PyObject_GetAttrString(streams, "StreamReaderProtocol");
    PyObject *reader_type = PyObject_GetAttrString(streams, "StreamReader");
    Py_DECREF(streams);
    if (protocol_type == NULL || reader_type == NULL || !PyType_Check(protocol_type)
        || !PyType_Check(reader_type)) {
        Py_XDECREF(protocol_type);
        Py_XDECREF(reader_type);
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "asyncio.streams classes are not types");
        }
        return -1;
    }
    sf->protocol_type = (PyTypeObject *)protocol_type;
    sf->reader_type = (PyTypeObject *)reader_type;
    /* Borrowed from the class dicts, kept as strong references. */
    PyObject *found[4] = {
        _PyType_Lookup(sf->protocol_type, state->str_data_received),
        _PyType_Lookup(sf->protocol_type, sf->names[SF__stream_reader]),
        _PyType_Lookup(sf->reader_type, sf->names[SF_feed_data]),
        _PyType_Lookup(sf->reader_type, sf->names[SF__wakeup_waiter]),
    };
    for (int i = 0; i < 4; i++) {
        if (found[i] == NULL) {
            PyErr_SetString(PyExc_AttributeError, "asyncio.streams lacks a method pyasync_c expects");
            return -1;
        }
    }
    sf->data_received = Py_NewRef(found[0]);
    sf->stream_reader_property = Py_NewRef(found[1]);
    sf->feed_data = Py_NewRef(found[2]);
    sf->wakeup_waiter = Py_NewRef(found[3]);
    return 0;
}

int
streams_fast_traverse(ModuleState *state, visitproc visit, void *arg)
{
    StreamsFast *sf = &state->streams;
    Py_VISIT(sf->protocol_type);
    Py_VISIT(sf->reader_type);
    Py_VISIT(sf->data_received);
    Py_VISIT(sf->stream_reader_property);
    Py_VISIT(sf->feed_data);
    Py_VISIT(sf->wakeup_waiter);
    return 0;
}

void
streams_fast_clear(ModuleState *state)
{
    StreamsFast *sf = &state->streams;
    Py_CLEAR(sf->protocol_type);
    Py_CLEAR(sf->reader_type);
    Py_CLEAR(sf->data_received);
    Py_CLEAR(sf->stream_reader_property);
    Py_CLEAR(sf->feed_data);
    Py_CLEAR(sf->wakeup_waiter);
    for (int i = 0; i < STREAMS_FAST_N; i++) {
        Py_CLEAR(sf->names[i]);
    }
}

/* obj.<name> is `function` bound to obj (not replaced on the instance). */
static int
is_own_method(PyObject *obj, PyObject *name, PyObject *function)
{
    PyObject *bound = PyObject_GetAttr(obj, name);
    if (bound == NULL) {
        return -1;
    }
    int same = PyMethod_Check(bound) && PyMethod_GET_FUNCTION(bound) == function
               && PyMethod_GET_SELF(bound) == obj;
    Py_DECREF(bound);
    return same;
}

/* Truth of a new reference (released); -1 on error, also when it is NULL. */
static int
consume_truth(PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* Truth of obj.<name>; -1 on error. */
static int
attr_truth(PyObject *obj, PyObject *name)
{
    return consume_truth(PyObject_GetAttr(obj, name));
}

/* len(buffer) > 2 * reader._limit, with Python's int semantics. */
static int
buffer_over_limit(PyObject *reader, PyObject *limit_name, Py_ssize_t buffered)
{
    PyObject *limit = PyObject_GetAttr(reader, limit_name);
    if (limit == NULL) {
        return -1;
    }
    int over;
    if (PyLong_CheckExact(limit)) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(limit, &overflow);
        if (value == -1 && PyErr_Occurred()) {
            Py_DECREF(limit);
            return -1;
        }
        if (overflow != 0) {
            over = overflow < 0;
        }
        else if (value < 0) {
            over = 1;  /* buffered >= 0 > 2 * value */
        }
        else {
            over = value <= LLONG_MAX / 2 ? (long long)buffered > 2 * value : 0;
        }
    }
    else {
        PyObject *two = PyLong_FromLong(2);
        PyObject *twice = two ? PyNumber_Multiply(two, limit) : NULL;
        PyObject *length = twice ? PyLong_FromSsize_t(buffered) : NULL;
        over = length ? PyObject_RichCompareBool(length, twice, Py_GT) : -1;
        Py_XDECREF(two);
        Py_XDECREF(twice);
        Py_XDECREF(length);
    }
    Py_DECREF(limit);
    return over;
}

/* Truth of obj.<name>(); -1 on error. */
static int
method_truth(PyObject *obj, PyObject *name)
{
    return consume_truth(PyObject_VectorcallMethod(name, &obj, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL));
}

/* StreamReader.feed_data(data) of an exact, unmodified StreamReader, for
 * the `size` > 0 bytes at `bytes`: copied straight into reader._buffer.
 * 1 done, 0 not applicable (nothing changed yet), -1 error (exception set). */
static int
feed_reader(ModuleState *state, PyObject *reader, const char *bytes, Py_ssize_t size)
{
    StreamsFast *sf = &state->streams;
    int at_eof = attr_truth(reader, sf->names[SF__eof]);
    if (at_eof != 0) {
        return at_eof < 0 ? -1 : 0;  /* asyncio's assert (or not, under -O) */
    }
    PyObject *buffer = PyObject_GetAttr(reader, sf->names[SF__buffer]);
    if (buffer == NULL) {
        return -1;
    }
    if (!PyByteArray_CheckExact(buffer)) {
        Py_DECREF(buffer);
        return 0;
    }
    /* self._buffer.extend(data) */
    Py_ssize_t old_size = PyByteArray_GET_SIZE(buffer);
    if (PyByteArray_Resize(buffer, old_size + size) < 0) {  /* BufferError while exported */
        Py_DECREF(buffer);
        return -1;
    }
    memcpy(PyByteArray_AS_STRING(buffer) + old_size, bytes, (size_t)size);
    Py_ssize_t buffered = PyByteArray_GET_SIZE(buffer);
    Py_DECREF(buffer);

    /* self._wakeup_waiter() */
    PyObject *waiter = PyObject_GetAttr(reader, sf->names[SF__waiter]);
    if (waiter == NULL) {
        return -1;
    }
    if (waiter != Py_None) {
        int failed = PyObject_SetAttr(reader, sf->names[SF__waiter], Py_None) < 0;
        int cancelled = failed ? -1 : method_truth(waiter, state->str_cancelled);
        if (cancelled == 0) {
            PyObject *args[2] = {waiter, Py_None};
            PyObject *r = PyObject_VectorcallMethod(state->str_set_result, args,
                                                    2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            cancelled = r == NULL ? -1 : 1;
            Py_XDECREF(r);
        }
        Py_DECREF(waiter);
        if (cancelled < 0) {
            return -1;
        }
    }
    else {
        Py_DECREF(waiter);
    }

    /* flow control: pause the transport past twice the limit */
    PyObject *transport = PyObject_GetAttr(reader, sf->names[SF__transport]);
    if (transport == NULL) {
        return -1;
    }
    int result = 1;
    if (transport != Py_None) {
        int paused = attr_truth(reader, sf->names[SF__paused]);
        int over = paused != 0 ? (paused < 0 ? -1 : 0)
                               : buffer_over_limit(reader, sf->names[SF__limit], buffered);
        if (over < 0) {
            result = -1;
        }
        else if (over) {
            PyObject *r = PyObject_CallMethodNoArgs(transport, sf->names[SF_pause_reading]);
            if (r != NULL) {
                Py_DECREF(r);
                result = PyObject_SetAttr(reader, sf->names[SF__paused], Py_True) < 0 ? -1 : 1;
            }
            else if (PyErr_ExceptionMatches(PyExc_NotImplementedError)) {
                PyErr_Clear();
                result = PyObject_SetAttr(reader, sf->names[SF__transport], Py_None) < 0 ? -1 : 1;
            }
            else {
                result = -1;
            }
        }
    }
    Py_DECREF(transport);
    return result;
}

static int protocol_data_received(ModuleState *state, PyObject *protocol, const char *bytes,
                                  Py_ssize_t size);

int
stream_fast_data_received(TransportObject *self, const char *bytes, Py_ssize_t size)
{
    ModuleState *state = self->loop->state;
    StreamsFast *sf = &state->streams;
    PyObject *protocol = self->protocol;
    if (protocol == NULL || Py_TYPE(protocol) != sf->protocol_type
        || _PyType_Lookup(sf->protocol_type, sf->names[SF__stream_reader]) != sf->stream_reader_property
        || size == 0) {
        return 0;
    }
    /* owned from here: a GC pass during the lookups may run set_protocol() */
    Py_INCREF(protocol);
    int result = protocol_data_received(state, protocol, bytes, size);
    Py_DECREF(protocol);
    return result;
}

/* stream_fast_data_received() for an exact StreamReaderProtocol (owned by the caller). */
static int
protocol_data_received(ModuleState *state, PyObject *protocol, const char *bytes, Py_ssize_t size)
{
    StreamsFast *sf = &state->streams;
    int own = is_own_method(protocol, state->str_data_received, sf->data_received);
    if (own <= 0) {
        return own;
    }
    /* reader = self._stream_reader */
    PyObject *reader_ref = PyObject_GetAttr(protocol, sf->names[SF__stream_reader_wr]);
    if (reader_ref == NULL) {
        return -1;
    }
    if (reader_ref == Py_None) {
        Py_DECREF(reader_ref);
        return 1;
    }
    PyObject *reader = PyObject_CallNoArgs(reader_ref);
    Py_DECREF(reader_ref);
    if (reader == NULL) {
        return -1;
    }
    int result = 1;
    if (reader != Py_None) {
        result = 0;
        if (Py_TYPE(reader) == sf->reader_type
            && _PyType_Lookup(sf->reader_type, sf->names[SF__wakeup_waiter]) == sf->wakeup_waiter) {
            result = is_own_method(reader, sf->names[SF_feed_data], sf->feed_data);
            if (result > 0) {
                result = feed_reader(state, reader, bytes, size);
            }
        }
        if (result == 0) {  /* reader.feed_data(data), asyncio's own code */
            PyObject *data = PyBytes_FromStringAndSize(bytes, size);
            PyObject *args[2] = {reader, data};
            PyObject *r = data == NULL ? NULL
                          : PyObject_VectorcallMethod(sf->names[SF_feed_data], args,
                                                      2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            result = r == NULL ? -1 : 1;
            Py_XDECREF(r);
            Py_XDECREF(data);
        }
    }
    Py_DECREF(reader);
    return result;
}
