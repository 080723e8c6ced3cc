/* Native TLS: SSLProtocol and SSLTransport, the C counterparts of asyncio's
 * sslproto.SSLProtocol / _SSLProtocolTransport, with the running Python
 * version's semantics (state machine, flow control, shutdown, errors).
 *
 * SSLProtocol is the protocol of the underlying (TCP) transport: a
 * BufferedProtocol whose get_buffer/buffer_updated feed the incoming
 * MemoryBIO.  SSLTransport is what the application protocol sees (an
 * asyncio.Transport); it forwards to its SSLProtocol without Python calls.
 *
 * The TLS work itself is done by Python's own ssl objects, so every
 * SSLContext setting (sslobject_class, sni_callback, keylog, sessions,
 * post-handshake auth, ciphers...) applies exactly as with asyncio: the
 * SSLObject is made once per connection by `sslcontext.wrap_bio(...)`.  When
 * it is exactly ssl.SSLObject over an `_ssl._SSLSocket`, the hot path calls
 * that `_sslobj`'s C methods (read/write/do_handshake/shutdown) and the
 * MemoryBIOs' C methods through cached method descriptors (vectorcall, no
 * Python frame, no attribute lookup); otherwise (a subclass from
 * sslobject_class) it calls the SSLObject's own methods by name.
 *
 * Differences from asyncio's Python code that are not observable through the
 * API: decrypted data is read straight into the bytes object handed to
 * data_received (no join of 16 KiB chunks), a read that can only fail with
 * SSLWantReadError (empty incoming BIO and nothing buffered in OpenSSL) is
 * skipped instead of raised and caught, and on our own socket transport the
 * ciphertext is received into one buffer per loop (loop->tls_read_buffer)
 * instead of a 256 KiB bytearray per connection.
 */
#include "tls.h"
#include "transport.h"

#include <structmember.h>

#define TLS_MAX_SIZE (256 * 1024)       /* asyncio's SSLProtocol.max_size */
#define TLS_RECORD_PLAINTEXT (16 * 1024)
/* asyncio's _FlowControlMixin (our base, as _SSLProtocolTransport's; the
 * sendfile fallback checks for it) has __slots__ '_extra', '_loop',
 * '_protocol_paused', '_high_water', '_low_water': their storage sits unused
 * here; our getsets shadow the names that matter. */
#define TLS_RESERVED_SLOTS 5

typedef enum { ST_UNWRAPPED, ST_DO_HANDSHAKE, ST_WRAPPED, ST_FLUSHING, ST_SHUTDOWN } TLSState;
typedef enum { APP_INIT, APP_CON_MADE, APP_EOF, APP_CON_LOST } AppState;
static const char *const state_names[] = {"UNWRAPPED", "DO_HANDSHAKE", "WRAPPED", "FLUSHING",
                                          "SHUTDOWN"};

/* Operations on the SSL object: the _ssl._SSLSocket method, and the
 * ssl.SSLObject method a subclass may override. */
enum { OP_DO_HANDSHAKE, OP_READ, OP_WRITE, OP_UNWRAP, OP_PENDING, OP_GETPEERCERT, OP_CIPHER,
       OP_COMPRESSION, OP_VERSION, OP_COUNT };
static const char *const op_sock_names[OP_COUNT] = {
    "do_handshake", "read", "write", "shutdown", "pending", "getpeercert", "cipher", "compression",
    "version"};
static const char *const op_object_names[OP_COUNT] = {
    "do_handshake", "read", "write", "unwrap", "pending", "getpeercert", "cipher", "compression",
    "version"};

typedef struct SSLTransportObject SSLTransportObject;

/* What OpenSSL may hold of decrypted data: nothing (a read with an empty
 * incoming BIO could only raise SSLWantReadError), perhaps something (just
 * after the handshake: one read finds out), or the rest of a record whose
 * start filled the last read's buffer (up to TLS_RECORD_PLAINTEXT bytes). */
enum { PLAINTEXT_NONE, PLAINTEXT_MAYBE, PLAINTEXT_PARTIAL };

typedef struct {
    PyObject_HEAD
    PyObject *dict;
    PyObject *weakreflist;
    PyObject *loop;
    PyObject *app_protocol;         /* NULL once the connection is lost */
    PyObject *app_get_buffer;       /* bound methods of a BufferedProtocol app */
    PyObject *app_buffer_updated;
    SSLTransportObject *app_transport;  /* NULL once the connection is lost */
    PyObject *transport;            /* the underlying transport (NULL before/after) */
    PyObject *sslcontext;
    PyObject *sslobject;            /* ssl.SSLObject (or sslobject_class instance) */
    PyObject *sslobj;               /* its _sslobj when `fast` */
    PyObject *incoming;             /* ssl.MemoryBIO */
    PyObject *outgoing;
    /* asyncio's _extra dict as fields: 'sslcontext' and 'ssl_object' are the
     * fields above; these three are NULL until the handshake completes
     * (extra_lookup) */
    PyObject *peercert;
    PyObject *cipher;
    PyObject *compression;
    PyObject *waiter;
    PyObject *handshake_timer;
    PyObject *shutdown_timer;
    PyObject *handshake_timeout;    /* numbers, as given (or asyncio's defaults) */
    PyObject *shutdown_timeout;
    PyObject *backlog;              /* list of app data not yet given to the SSL object;
                                     * NULL until first needed (backlog_list) */
    PyObject *own_buffer;           /* bytearray for get_buffer() of foreign transports */
    double handshake_start;
    Py_ssize_t write_buffer_size;   /* bytes in backlog */
    Py_ssize_t incoming_known;      /* bytes in the incoming BIO when known, else -1
                                     * (incoming_pending) */
    Py_ssize_t conn_lost;
    Py_ssize_t incoming_high, incoming_low, outgoing_high, outgoing_low;
    PyObject *incoming_limits, *outgoing_limits; /* (low, high) objects, or NULL: see
                                                  * transport_parse_buffer_limits */
    int state;
    int app_state;
    char server_side;
    char fast;                      /* call sslobj's C methods directly */
    char app_is_buffer;
    char app_transport_created;
    char ssl_writing_paused;
    char app_reading_paused;
    char ssl_reading_paused;
    char eof_received;
    char app_writing_paused;
    char may_have_plaintext;        /* OpenSSL may hold decrypted bytes not yet read:
                                     * PLAINTEXT_* */
    char outgoing_empty;            /* the outgoing BIO is empty: process_outgoing
                                     * drained it and no SSL operation ran since */
    char write_reads_nothing;       /* TLS 1.3 on the fast path: SSL_write never
                                     * reads the incoming BIO (no renegotiation) */
    char handshake_extra;           /* peercert/cipher/compression are known */
    char peercert_lazy;             /* peercert made on first use (extra_peercert) */
} SSLProtocolObject;

struct SSLTransportObject {
    PyObject_HEAD
    PyObject *asyncio_slot_storage[TLS_RESERVED_SLOTS];
    PyObject *dict;
    PyObject *weakreflist;
    SSLProtocolObject *proto;
    PyObject *loop;
    char closed;
};

/* A bytes-like view of memory we own, lent to _ssl's C methods for the
 * duration of one call (MemoryBIO.write(window), _SSLSocket.read(n, window)),
 * which release it before returning.  Unlike a memoryview it is not tracked
 * by the GC and one instance is reused while nobody else holds it. */
typedef struct {
    PyObject_HEAD
    char *buf;
    Py_ssize_t len;
    Py_ssize_t exports;
    int readonly;
} WindowObject;

/* Process-wide state (the module refuses subinterpreters).  The ssl part is
 * filled on first use, so that importing pyasync_c does not import ssl. */
static struct {
    ModuleState *module_state;
    PyTypeObject *ProtocolType;
    PyTypeObject *TransportType;
    int ssl_ready;
    PyObject *SSLObjectType;
    PyObject *SSLSocketType;
    PyObject *MemoryBIOType;
    PyObject *SSLError;
    PyObject *CertificateError;
    PyObject *again_errors;        /* (SSLWantReadError, SSLSyscallError) */
    PyObject *sock_ops[OP_COUNT];  /* method descriptors of _ssl._SSLSocket */
    PyObject *op_names[OP_COUNT];  /* interned SSLObject method names */
    PyObject *bio_write;           /* MemoryBIO.write / read descriptors */
    PyObject *bio_read;
    PyObject *bio_pending;         /* MemoryBIO.pending getset descriptor */
    PyObject *socket_write;        /* our SocketTransport.write method descriptor */
    PyObject *create_transport_context;
    PyObject *CancelledError;
    PyObject *default_handshake_timeout;
    PyObject *default_shutdown_timeout;
    Py_ssize_t high_water_read_kb;
    Py_ssize_t high_water_write_kb;
    Py_ssize_t log_threshold;
    PyTypeObject *WindowType;
    WindowObject *window;          /* the reusable window */
    PyObject *last_cipher;         /* the last handshake's cipher() tuple (shared_cipher) */
    PyObject *str_write, *str_close, *str_abort, *str_force_close, *str_pause_reading,
        *str_resume_reading, *str_get_extra_info, *str_call_later, *str_call_soon, *str_cancel,
        *str_get_debug, *str_time, *str_debug, *str_warning, *str_wrap_bio, *str_server_side,
        *str_server_hostname, *str_sslobj, *str_check_handshake,
        *str_check_shutdown, *str_resume_cb, *str_exc_info, *str_sslcontext, *str_ssl_object,
        *str_peercert, *str_cipher, *str_compression;
} G;

static int
intern_name(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot ? 0 : -1;
}

static PyObject *
get_attr_string(PyObject *owner, const char *name)
{
    return owner ? PyObject_GetAttrString(owner, name) : NULL;
}

static Py_ssize_t
module_int(PyObject *module, const char *name)
{
    PyObject *value = PyObject_GetAttrString(module, name);
    if (value == NULL) {
        return -1;
    }
    Py_ssize_t result = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return result;
}

/* Imports what the TLS layer needs from ssl/_ssl/asyncio, once. */
static int
ssl_lazy_init(void)
{
    if (G.ssl_ready) {
        return 0;
    }
    PyObject *ssl = PyImport_ImportModule("ssl");
    PyObject *c_ssl = ssl ? PyImport_ImportModule("_ssl") : NULL;
    PyObject *sslproto = c_ssl ? PyImport_ImportModule("asyncio.sslproto") : NULL;
    PyObject *constants = sslproto ? PyImport_ImportModule("asyncio.constants") : NULL;
    PyObject *exceptions = constants ? PyImport_ImportModule("asyncio.exceptions") : NULL;
    int rc = -1;
    if (exceptions == NULL) {
        goto done;
    }
    PyObject *want_read = NULL, *syscall = NULL;
    G.SSLObjectType = get_attr_string(ssl, "SSLObject");
    G.SSLSocketType = get_attr_string(c_ssl, "_SSLSocket");
    G.MemoryBIOType = get_attr_string(c_ssl, "MemoryBIO");
    G.SSLError = get_attr_string(ssl, "SSLError");
    G.CertificateError = get_attr_string(ssl, "CertificateError");
    want_read = get_attr_string(ssl, "SSLWantReadError");
    syscall = get_attr_string(ssl, "SSLSyscallError");
    G.create_transport_context = get_attr_string(sslproto, "_create_transport_context");
    G.CancelledError = get_attr_string(exceptions, "CancelledError");
    G.default_handshake_timeout = get_attr_string(constants, "SSL_HANDSHAKE_TIMEOUT");
    G.default_shutdown_timeout = get_attr_string(constants, "SSL_SHUTDOWN_TIMEOUT");
    if (!G.SSLObjectType || !G.SSLSocketType || !G.MemoryBIOType || !G.SSLError
        || !G.CertificateError || !want_read || !syscall || !G.create_transport_context
        || !G.CancelledError || !G.default_handshake_timeout || !G.default_shutdown_timeout) {
        Py_XDECREF(want_read);
        Py_XDECREF(syscall);
        goto done;
    }
    G.again_errors = PyTuple_Pack(2, want_read, syscall);
    Py_DECREF(want_read);
    Py_DECREF(syscall);
    if (G.again_errors == NULL) {
        goto done;
    }
    G.high_water_read_kb = module_int(constants, "FLOW_CONTROL_HIGH_WATER_SSL_READ");
    G.high_water_write_kb = module_int(constants, "FLOW_CONTROL_HIGH_WATER_SSL_WRITE");
    G.log_threshold = module_int(constants, "LOG_THRESHOLD_FOR_CONNLOST_WRITES");
    if (PyErr_Occurred()) {
        goto done;
    }
    for (int op = 0; op < OP_COUNT; op++) {
        G.sock_ops[op] = PyObject_GetAttrString(G.SSLSocketType, op_sock_names[op]);
        if (G.sock_ops[op] == NULL || intern_name(&G.op_names[op], op_object_names[op]) < 0) {
            goto done;
        }
    }
    G.bio_write = PyObject_GetAttrString(G.MemoryBIOType, "write");
    G.bio_read = G.bio_write ? PyObject_GetAttrString(G.MemoryBIOType, "read") : NULL;
    G.bio_pending = G.bio_read ? PyObject_GetAttrString(G.MemoryBIOType, "pending") : NULL;
    if (G.bio_pending == NULL || Py_TYPE(G.bio_pending)->tp_descr_get == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pyasync_c: unexpected ssl.MemoryBIO layout");
        goto done;
    }
    G.socket_write = PyObject_GetAttrString((PyObject *)G.module_state->SocketTransportType,
                                            "write");
    if (G.socket_write == NULL) {
        goto done;
    }
    G.ssl_ready = 1;
    rc = 0;
done:
    Py_XDECREF(ssl);
    Py_XDECREF(c_ssl);
    Py_XDECREF(sslproto);
    Py_XDECREF(constants);
    Py_XDECREF(exceptions);
    return rc;
}

/* ---- windows ---- */

static int
window_getbuffer(WindowObject *self, Py_buffer *view, int flags)
{
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->buf, self->len, self->readonly, flags) < 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

static void
window_releasebuffer(WindowObject *self, Py_buffer *view)
{
    self->exports--;
}

static void
window_dealloc(WindowObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* A window on buf[0:len]; NULL on error.  Give it back with window_done(). */
static WindowObject *
window_open(char *buf, Py_ssize_t len, int readonly)
{
    WindowObject *window = G.window;
    if (window == NULL || Py_REFCNT(window) != 1 || window->exports != 0) {
        window = PyObject_New(WindowObject, G.WindowType);
        if (window == NULL) {
            return NULL;
        }
        window->exports = 0;
        Py_XSETREF(G.window, (WindowObject *)Py_NewRef(window));
    }
    else {
        Py_INCREF(window);
    }
    window->buf = buf;
    window->len = len;
    window->readonly = readonly;
    return window;
}

static void
window_done(WindowObject *window)
{
    /* whoever may still hold it sees nothing from now on */
    window->buf = NULL;
    window->len = 0;
    Py_DECREF(window);
}

/* ---- small helpers ---- */

static Py_ssize_t
bio_pending(PyObject *bio)
{
    PyObject *value = Py_TYPE(G.bio_pending)->tp_descr_get(G.bio_pending, bio,
                                                           (PyObject *)Py_TYPE(bio));
    if (value == NULL) {
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return n;
}

/* The incoming BIO's size.  Each MemoryBIO.pending is a C call making an int;
 * instead the size is remembered from the last one, grown by what bio_feed
 * writes and forgotten by any SSL operation, the only thing that reads the
 * BIO (user code reading the SSL object behind our back can only make it
 * smaller than remembered: then a read finds nothing).  -1 on error. */
static Py_ssize_t
incoming_pending(SSLProtocolObject *self)
{
    if (self->incoming_known < 0) {
        self->incoming_known = bio_pending(self->incoming);
    }
    return self->incoming_known;
}

/* Calls op on the SSL object.  Returns the result, or NULL with *again set
 * (and no exception) for SSLWantReadError/SSLSyscallError, or NULL with the
 * exception set. */
static PyObject *
ssl_op(SSLProtocolObject *self, int op, PyObject *const *args, Py_ssize_t nargs, int *again)
{
    PyObject *stack[3];
    stack[0] = self->fast ? self->sslobj : self->sslobject;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        stack[i + 1] = args[i];
    }
    PyObject *result;
    if (self->fast) {
        result = PyObject_Vectorcall(G.sock_ops[op], stack, (size_t)nargs + 1, NULL);
    }
    else {
        result = PyObject_VectorcallMethod(G.op_names[op], stack, (size_t)nargs + 1, NULL);
    }
    /* any operation may have consumed ciphertext (as may Python code it ran)
     * and produced some */
    if (op != OP_WRITE || !self->write_reads_nothing) {
        self->incoming_known = -1;
    }
    self->outgoing_empty = 0;
    *again = 0;
    if (result == NULL && PyErr_ExceptionMatches(G.again_errors)) {
        PyErr_Clear();
        *again = 1;
    }
    return result;
}

/* Calls callable() / callable(arg) later on the loop: loop.call_soon. */
static int
call_soon(SSLProtocolObject *self, PyObject *callable, PyObject *arg)
{
    PyObject *args[3] = {self->loop, callable, arg};
    PyObject *r = PyObject_VectorcallMethod(G.str_call_soon, args, arg ? 3 : 2, NULL);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static PyObject *
call_later(SSLProtocolObject *self, PyObject *delay, PyObject *callback_name)
{
    PyObject *callback = PyObject_GetAttr((PyObject *)self, callback_name);
    if (callback == NULL) {
        return NULL;
    }
    PyObject *args[3] = {self->loop, delay, callback};
    PyObject *timer = PyObject_VectorcallMethod(G.str_call_later, args, 3, NULL);
    Py_DECREF(callback);
    return timer;
}

static void
cancel_timer(PyObject **slot)
{
    PyObject *timer = *slot;
    if (timer == NULL) {
        return;
    }
    *slot = NULL;
    PyObject *r = PyObject_CallMethodNoArgs(timer, G.str_cancel);
    if (r == NULL) {
        PyErr_WriteUnraisable(timer);
    }
    Py_XDECREF(r);
    Py_DECREF(timer);
}

static int
loop_debug(SSLProtocolObject *self)
{
    PyObject *r = PyObject_CallMethodNoArgs(self->loop, G.str_get_debug);
    if (r == NULL) {
        PyErr_Clear();
        return 0;
    }
    int debug = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (debug < 0) {
        PyErr_Clear();
        return 0;
    }
    return debug;
}

static double
loop_time(SSLProtocolObject *self)
{
    PyObject *r = PyObject_CallMethodNoArgs(self->loop, G.str_time);
    double t = r ? PyFloat_AsDouble(r) : 0.0;
    Py_XDECREF(r);
    PyErr_Clear();
    return t;
}

/* logger.<level>(format, *args[, exc_info=exc]); logging failures are dropped. */
static void
log_message(PyObject *level, PyObject *exc_info, const char *format, PyObject *arg1,
            PyObject *arg2)
{
    PyObject *fmt = PyUnicode_FromString(format);
    if (fmt == NULL) {
        PyErr_Clear();
        return;
    }
    PyObject *stack[5] = {G.module_state->asyncio_logger, fmt, arg1, arg2, NULL};
    size_t nargs = 2 + (arg1 != NULL) + (arg2 != NULL);
    PyObject *r;
    if (exc_info != NULL) {
        stack[nargs] = exc_info;
        PyObject *kwnames = PyTuple_Pack(1, G.str_exc_info);
        r = kwnames ? PyObject_VectorcallMethod(level, stack, nargs, kwnames) : NULL;
        Py_XDECREF(kwnames);
    }
    else {
        r = PyObject_VectorcallMethod(level, stack, nargs, NULL);
    }
    Py_DECREF(fmt);
    if (r == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(r);
}


/* ---- state ---- */

static int
set_state(SSLProtocolObject *self, int new_state)
{
    int allowed = new_state == ST_UNWRAPPED
        || (self->state == ST_UNWRAPPED && new_state == ST_DO_HANDSHAKE)
        || (self->state == ST_DO_HANDSHAKE && new_state == ST_WRAPPED)
        || (self->state == ST_WRAPPED && new_state == ST_FLUSHING)
        || (self->state == ST_FLUSHING && new_state == ST_SHUTDOWN);
    if (!allowed) {
        PyErr_Format(PyExc_RuntimeError,
                     "cannot switch state from SSLProtocolState.%s to SSLProtocolState.%s",
                     state_names[self->state], state_names[new_state]);
        return -1;
    }
    self->state = new_state;
    return 0;
}

static void
wakeup_waiter(SSLProtocolObject *self, PyObject *exc)
{
    PyObject *waiter = self->waiter;
    if (waiter == NULL) {
        return;
    }
    self->waiter = NULL;
    PyObject *cancelled = PyObject_CallMethodNoArgs(waiter, G.module_state->str_cancelled);
    int is_cancelled = cancelled ? PyObject_IsTrue(cancelled) : -1;
    Py_XDECREF(cancelled);
    if (is_cancelled == 0) {
        PyObject *r = exc ? PyObject_CallMethodOneArg(waiter, G.module_state->str_set_exception, exc)
                          : PyObject_CallMethodOneArg(waiter, G.module_state->str_set_result, Py_None);
        if (r == NULL) {
            PyErr_WriteUnraisable(waiter);
        }
        Py_XDECREF(r);
    }
    else if (is_cancelled < 0) {
        PyErr_WriteUnraisable(waiter);
    }
    Py_DECREF(waiter);
}

/* asyncio's _fatal_error: force-close the transport, report the error. */
static void
fatal_error(SSLProtocolObject *self, PyObject *exc, const char *message)
{
    Py_INCREF(exc);
    PyObject *transport = Py_XNewRef(self->transport);
    if (transport != NULL) {
        PyObject *args[2] = {transport, exc};
        PyObject *r = PyObject_VectorcallMethod(G.str_force_close, args, 2, NULL);
        if (r == NULL) {
            PyErr_WriteUnraisable(transport);
        }
        Py_XDECREF(r);
    }
    if (PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_OSError)) {
        if (loop_debug(self)) {
            PyObject *msg = PyUnicode_FromString(message);
            if (msg != NULL) {
                log_message(G.str_debug, exc, "%r: %s", (PyObject *)self, msg);
                Py_DECREF(msg);
            }
            PyErr_Clear();
        }
    }
    else if (!PyObject_TypeCheck(exc, (PyTypeObject *)G.CancelledError)) {
        PyObject *context = Py_BuildValue("{s:s,s:O,s:O,s:O}", "message", message, "exception",
                                          exc, "transport", transport ? transport : Py_None,
                                          "protocol", (PyObject *)self);
        PyObject *r = context ? PyObject_CallMethodOneArg(
            self->loop, G.module_state->str_call_exception_handler, context) : NULL;
        if (r == NULL) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        Py_XDECREF(r);
        Py_XDECREF(context);
    }
    Py_XDECREF(transport);
    Py_DECREF(exc);
}

/* `except Exception as ex: self._fatal_error(ex, message)`: 0 when the
 * pending exception was such an error and was handled, -1 to propagate it. */
static int
catch_fatal(SSLProtocolObject *self, const char *message)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *exc = compat_fetch_exception();
    fatal_error(self, exc, message);
    Py_DECREF(exc);
    return 0;
}

/* Calls transport.<name>() on the underlying transport, if any. */
static int
call_transport(SSLProtocolObject *self, PyObject *name, PyObject *arg)
{
    if (self->transport == NULL) {
        return 0;
    }
    PyObject *transport = Py_NewRef(self->transport);
    PyObject *args[2] = {transport, arg};
    PyObject *r = PyObject_VectorcallMethod(name, args, arg ? 2 : 1, NULL);
    Py_DECREF(transport);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* transport.write(data): our socket transport's C method through its cached
 * descriptor unless the instance replaced it (1), else by name (0); -1 on error. */
static int
transport_write(SSLProtocolObject *self, PyObject *data)
{
    PyObject *transport = self->transport;
    if (transport == NULL) {
        return 0;
    }
    if (G.socket_write != NULL && Py_IS_TYPE(transport, G.module_state->SocketTransportType)) {
        PyObject *dict = ((TransportObject *)transport)->dict;
        PyObject *own = dict != NULL && PyDict_GET_SIZE(dict) > 0
                            ? PyDict_GetItemWithError(dict, G.str_write) : NULL;
        if (own == NULL && !PyErr_Occurred()) {
            Py_INCREF(transport);
            PyObject *args[2] = {transport, data};
            PyObject *r = PyObject_Vectorcall(G.socket_write, args, 2, NULL);
            Py_DECREF(transport);
            if (r == NULL) {
                return -1;
            }
            Py_DECREF(r);
            return 1;
        }
        if (own == NULL) {
            return -1;
        }
    }
    return call_transport(self, G.str_write, data);
}

/* ---- flow control ---- */

static Py_ssize_t
write_buffer_size(SSLProtocolObject *self)
{
    Py_ssize_t pending = bio_pending(self->outgoing);
    return pending < 0 ? -1 : pending + self->write_buffer_size;
}

static void
call_app_flow(SSLProtocolObject *self, PyObject *name, const char *message)
{
    if (self->app_protocol == NULL) {
        return;
    }
    PyObject *app = Py_NewRef(self->app_protocol);
    PyObject *r = PyObject_CallMethodNoArgs(app, name);
    Py_DECREF(app);
    if (r != NULL) {
        Py_DECREF(r);
        return;
    }
    if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt) || PyErr_ExceptionMatches(PyExc_SystemExit)) {
        return;  /* propagates */
    }
    PyObject *exc = compat_fetch_exception();
    PyObject *context = Py_BuildValue("{s:s,s:O,s:O,s:O}", "message", message, "exception", exc,
                                      "transport", self->app_transport
                                          ? (PyObject *)self->app_transport : Py_None,
                                      "protocol", (PyObject *)self);
    PyObject *res = context ? PyObject_CallMethodOneArg(
        self->loop, G.module_state->str_call_exception_handler, context) : NULL;
    Py_XDECREF(context);
    Py_DECREF(exc);
    Py_XDECREF(res);
}

/* outgoing_pending: the outgoing BIO's size when known, else -1. */
static int
control_app_writing(SSLProtocolObject *self, Py_ssize_t outgoing_pending)
{
    Py_ssize_t size = outgoing_pending >= 0 ? outgoing_pending + self->write_buffer_size
                                            : write_buffer_size(self);
    if (size < 0) {
        return -1;
    }
    if (size >= self->outgoing_high && !self->app_writing_paused) {
        self->app_writing_paused = 1;
        call_app_flow(self, G.module_state->str_pause_writing, "protocol.pause_writing() failed");
    }
    else if (size <= self->outgoing_low && self->app_writing_paused) {
        self->app_writing_paused = 0;
        call_app_flow(self, G.module_state->str_resume_writing, "protocol.resume_writing() failed");
    }
    return PyErr_Occurred() ? -1 : 0;
}

static int
control_ssl_reading(SSLProtocolObject *self)
{
    Py_ssize_t size = incoming_pending(self);
    if (size < 0) {
        return -1;
    }
    if (size >= self->incoming_high && !self->ssl_reading_paused) {
        self->ssl_reading_paused = 1;
        return call_transport(self, G.str_pause_reading, NULL);
    }
    if (size <= self->incoming_low && self->ssl_reading_paused) {
        self->ssl_reading_paused = 0;
        return call_transport(self, G.str_resume_reading, NULL);
    }
    return 0;
}

/* ---- outgoing ---- */

/* asyncio's _process_outgoing: hand the outgoing BIO to the transport in one
 * write, then app write flow control. */
static int
process_outgoing(SSLProtocolObject *self)
{
    if (self->ssl_writing_paused) {
        return control_app_writing(self, -1);
    }
    if (self->outgoing_empty) {
        /* e.g. after a read whose data_received() wrote (and so flushed) */
        return control_app_writing(self, 0);
    }
    /* read() of an empty BIO is b'' (a singleton): no pending() call first */
    PyObject *data = PyObject_CallOneArg(G.bio_read, self->outgoing);
    if (data == NULL) {
        return -1;
    }
    int rc = 1;
    if (!PyBytes_Check(data) || PyBytes_GET_SIZE(data) > 0) {
        rc = transport_write(self, data);
    }
    Py_DECREF(data);
    if (rc < 0) {
        return -1;
    }
    /* The BIO is empty now, unless a foreign transport's write() ran code
     * that wrote to the SSL object: then ask it. */
    self->outgoing_empty = rc == 1;
    return control_app_writing(self, rc == 1 ? 0 : -1);
}

/* Byte length of a bytes-like object (-1 with TypeError otherwise). */
static Py_ssize_t
buffer_length(PyObject *data)
{
    if (PyBytes_CheckExact(data)) {
        return PyBytes_GET_SIZE(data);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    Py_ssize_t n = view.len;
    PyBuffer_Release(&view);
    return n;
}

/* Gives `data` to the SSL object: 1 all written, 0 SSL wants I/O first (rest
 * kept in *rest when partially written), -1 error. */
static int
ssl_write_one(SSLProtocolObject *self, PyObject *data, Py_ssize_t length, PyObject **rest)
{
    int again;
    *rest = NULL;
    PyObject *r = ssl_op(self, OP_WRITE, &data, 1, &again);
    if (r == NULL) {
        return again ? 0 : -1;
    }
    Py_ssize_t count = PyLong_AsSsize_t(r);
    Py_DECREF(r);
    if (count == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (count >= length) {
        return 1;
    }
    /* partial write (not done by _ssl, which writes everything): keep the rest */
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    /* data[count:] as asyncio slices it: an sslobject_class's write() may
     * return any int, and a negative one counts from the end (never read
     * outside the buffer). */
    Py_ssize_t start = count < 0 ? count + view.len : count;
    start = start < 0 ? 0 : start > view.len ? view.len : start;
    *rest = PyBytes_FromStringAndSize((const char *)view.buf + start, view.len - start);
    PyBuffer_Release(&view);
    if (*rest == NULL) {
        return -1;
    }
    self->write_buffer_size -= count;
    return 2;
}

/* The write backlog is made on first use: most connections never need one. */
static inline Py_ssize_t
backlog_len(SSLProtocolObject *self)
{
    return self->backlog != NULL ? PyList_GET_SIZE(self->backlog) : 0;
}

static PyObject *
backlog_list(SSLProtocolObject *self)
{
    if (self->backlog == NULL) {
        self->backlog = PyList_New(0);
    }
    return self->backlog;
}

/* asyncio's _do_write: the backlog into the SSL object, then the outgoing BIO
 * to the transport. */
static int
do_write(SSLProtocolObject *self)
{
    while (backlog_len(self) > 0) {
        PyObject *data = Py_NewRef(PyList_GET_ITEM(self->backlog, 0));
        Py_ssize_t length = buffer_length(data);
        if (length < 0) {
            Py_DECREF(data);
            return -1;
        }
        PyObject *rest;
        int rc = ssl_write_one(self, data, length, &rest);
        Py_DECREF(data);
        if (rc < 0) {
            return -1;
        }
        if (rc == 2) {
            /* no progress (a write() that returned <= 0): the rest waits for
             * the next event, where asyncio's loop would spin forever */
            int stuck = PyBytes_GET_SIZE(rest) >= length;
            if (PyList_SetItem(self->backlog, 0, rest) < 0) {
                return -1;
            }
            if (stuck) {
                break;
            }
            continue;
        }
        if (rc == 0) {
            break;
        }
        if (PySequence_DelItem(self->backlog, 0) < 0) {
            return -1;
        }
        self->write_buffer_size -= length;
    }
    return process_outgoing(self);
}

static int
backlog_append(SSLProtocolObject *self, PyObject *data)
{
    Py_ssize_t length = buffer_length(data);
    PyObject *backlog = length < 0 ? NULL : backlog_list(self);
    if (backlog == NULL || PyList_Append(backlog, data) < 0) {
        return -1;
    }
    self->write_buffer_size += length;
    return 0;
}

static void
warn_closed_write(SSLProtocolObject *self)
{
    if (self->conn_lost >= G.log_threshold) {
        log_message(G.str_warning, NULL, "SSL connection is closed", NULL, NULL);
    }
    self->conn_lost++;
}

/* write(data) of the app transport (data already checked bytes-like). */
static PyObject *
write_appdata_one(SSLProtocolObject *self, PyObject *data)
{
    if (self->state == ST_FLUSHING || self->state == ST_SHUTDOWN || self->state == ST_UNWRAPPED) {
        warn_closed_write(self);
        Py_RETURN_NONE;
    }
    int rc;
    if (self->state == ST_WRAPPED && backlog_len(self) == 0) {
        /* the common case: straight into the SSL object */
        Py_ssize_t length = buffer_length(data);
        if (length < 0) {
            return NULL;
        }
        self->write_buffer_size += length;
        PyObject *rest;
        rc = ssl_write_one(self, data, length, &rest);
        if (rc == 1) {
            self->write_buffer_size -= length;
        }
        else if (rc == 0) {
            rc = backlog_list(self) ? PyList_Append(self->backlog, data) : -1;
        }
        else if (rc == 2) {
            /* partial write: the rest goes on now, as asyncio's _do_write loops */
            rc = backlog_list(self) ? PyList_Append(self->backlog, rest) : -1;
            Py_DECREF(rest);
            rc = rc < 0 ? -1 : do_write(self);
            goto written;
        }
        else {
            self->write_buffer_size -= length;
        }
        if (rc >= 0) {
            rc = process_outgoing(self);
        }
    }
    else {
        rc = backlog_append(self, data);
        if (rc == 0 && self->state == ST_WRAPPED) {
            rc = do_write(self);
        }
    }
written:
    if (rc < 0 && catch_fatal(self, "Fatal error on SSL protocol") < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- incoming ---- */

static int call_eof_received(SSLProtocolObject *self);
static int start_shutdown(SSLProtocolObject *self);

/* A failed _SSLSocket.read: -2 when SSL wants more input (no plaintext is
 * waiting until more ciphertext is fed), else -1 (an exception is set). */
static Py_ssize_t
read_failed(SSLProtocolObject *self, int again)
{
    if (again) {
        self->may_have_plaintext = PLAINTEXT_NONE;
        return -2;
    }
    return -1;
}

/* The fast path's read: _SSLSocket.read(capacity, window on buf[0:capacity]).
 * count >= 0, or -2 for "SSL wants more input", or -1 on error. */
static Py_ssize_t
ssl_read_into(SSLProtocolObject *self, char *buf, Py_ssize_t capacity)
{
    if (capacity > INT_MAX) {
        capacity = INT_MAX;  /* read()'s length is a C int; the caller loops */
    }
    PyObject *size = PyLong_FromSsize_t(capacity);
    if (size == NULL) {
        return -1;
    }
    WindowObject *window = window_open(buf, capacity, 0);
    if (window == NULL) {
        Py_DECREF(size);
        return -1;
    }
    int again;
    PyObject *args[2] = {size, (PyObject *)window};
    PyObject *r = ssl_op(self, OP_READ, args, 2, &again);
    window_done(window);
    Py_DECREF(size);
    if (r == NULL) {
        return read_failed(self, again);
    }
    Py_ssize_t count = PyLong_AsSsize_t(r);
    Py_DECREF(r);
    if (count < 0) {
        return PyErr_Occurred() ? -1 : 0;
    }
    /* a read that filled the window may have left bytes of the record in OpenSSL */
    self->may_have_plaintext = count >= capacity ? PLAINTEXT_PARTIAL : PLAINTEXT_NONE;
    return count;
}

/* An SSLObject subclass's read(n) or read(n, target), called as asyncio
 * does: the result, or NULL with *again set (no exception) for
 * SSLWantReadError/SSLSyscallError, or NULL with the exception set. */
static PyObject *
ssl_read_object(SSLProtocolObject *self, Py_ssize_t n, PyObject *target, int *again)
{
    if (n > INT_MAX) {
        n = INT_MAX;  /* read()'s length is a C int: a shorter read, as _ssl clamps to the buffer */
    }
    PyObject *size = PyLong_FromSsize_t(n);
    if (size == NULL) {
        *again = 0;
        return NULL;
    }
    PyObject *args[2] = {size, target};
    PyObject *r = ssl_op(self, OP_READ, args, target ? 2 : 1, again);
    Py_DECREF(size);
    return r;
}

/* True when a read could return something: ciphertext waits in the incoming
 * BIO or OpenSSL may hold decrypted bytes (else read() would only raise
 * SSLWantReadError). -1 on error.  Only the fast path skips reads this way:
 * a subclass's read() is called until it raises, as asyncio does. */
static int
readable(SSLProtocolObject *self, Py_ssize_t *bio_out)
{
    Py_ssize_t bio = incoming_pending(self);
    if (bio < 0) {
        return -1;
    }
    *bio_out = bio;
    return bio > 0 || self->may_have_plaintext != PLAINTEXT_NONE;
}

/* Makes room for `want` more bytes after data[0:total] (data NULL: a new
 * bytes object); *capacity is its size. */
static int
reserve_bytes(PyObject **data, Py_ssize_t total, Py_ssize_t want, Py_ssize_t *capacity)
{
    if (*data == NULL) {
        *data = PyBytes_FromStringAndSize(NULL, want);
        if (*data == NULL) {
            return -1;
        }
        *capacity = want;
    }
    else if (*capacity - total < want) {
        if (_PyBytes_Resize(data, total + want) < 0) {
            return -1;
        }
        *capacity = total + want;
    }
    return 0;
}

/* The first read of the copied path on the fast path: _SSLSocket.read(want)
 * makes a bytes object of the record's size, which becomes *data (a single
 * record, the common case, is then handed over as it is: no window, no
 * resize of ours).  Results as read_copied_once. */
static Py_ssize_t
read_first_bytes(SSLProtocolObject *self, Py_ssize_t want, PyObject **data, Py_ssize_t *capacity)
{
    PyObject *size = PyLong_FromSsize_t(want);
    if (size == NULL) {
        return -1;
    }
    int again;
    PyObject *r = ssl_op(self, OP_READ, &size, 1, &again);
    Py_DECREF(size);
    if (r == NULL) {
        return read_failed(self, again);
    }
    if (!PyBytes_CheckExact(r)) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_TypeError, "_SSLSocket.read() did not return bytes");
        return -1;
    }
    Py_ssize_t count = PyBytes_GET_SIZE(r);
    self->may_have_plaintext = count >= want ? PLAINTEXT_PARTIAL : PLAINTEXT_NONE;
    if (count == 0) {
        Py_DECREF(r);  /* close_notify */
        return 0;
    }
    if (Py_REFCNT(r) != 1) {
        /* not ours alone (never seen): more reads must not resize it in place */
        Py_SETREF(r, PyBytes_FromStringAndSize(PyBytes_AS_STRING(r), count));
        if (r == NULL) {
            return -1;
        }
    }
    *data = r;
    *capacity = count;
    return count;
}

/* One read of the copied path: appended to *data; count, 0 at close_notify,
 * -2 when SSL wants more input, -1 on error. */
static Py_ssize_t
read_copied_once(SSLProtocolObject *self, PyObject **data, Py_ssize_t total,
                 Py_ssize_t *capacity)
{
    if (self->fast) {
        Py_ssize_t bio;
        int can = readable(self, &bio);
        if (can <= 0) {
            return can < 0 ? -1 : -2;
        }
        /* Decrypted data is at most the ciphertext, plus the rest of a record
         * OpenSSL has begun; a read that fills the window loops. */
        Py_ssize_t want = bio + 1024
            + (self->may_have_plaintext == PLAINTEXT_PARTIAL ? TLS_RECORD_PLAINTEXT : 0);
        if (want > TLS_MAX_SIZE) {
            want = TLS_MAX_SIZE;
        }
        if (*data == NULL && want <= TLS_RECORD_PLAINTEXT + 2048) {
            /* at most one record waits: read() sizes the bytes object itself
             * (more records would each shrink and regrow it) */
            return read_first_bytes(self, want, data, capacity);
        }
        if (reserve_bytes(data, total, want, capacity) < 0) {
            return -1;
        }
        return ssl_read_into(self, PyBytes_AS_STRING(*data) + total, *capacity - total);
    }
    /* asyncio's read(max_size): all it returns (a subclass may return more) */
    int again;
    PyObject *chunk = ssl_read_object(self, TLS_MAX_SIZE, NULL, &again);
    if (chunk == NULL) {
        return again ? -2 : -1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(chunk, &view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(chunk);
        return -1;
    }
    Py_ssize_t count = view.len;
    int rc = count > 0 ? reserve_bytes(data, total, count, capacity) : 0;
    if (rc == 0 && count > 0) {
        memcpy(PyBytes_AS_STRING(*data) + total, view.buf, (size_t)count);
    }
    PyBuffer_Release(&view);
    Py_DECREF(chunk);
    return rc < 0 ? -1 : count;
}

/* asyncio's _do_read__copied: everything decryptable now in one
 * data_received() call. */
static int
read_copied(SSLProtocolObject *self)
{
    PyObject *data = NULL;
    Py_ssize_t total = 0, capacity = 0;
    int eof = 0;
    for (;;) {
        Py_ssize_t count = read_copied_once(self, &data, total, &capacity);
        if (count == -2) {
            break;
        }
        if (count < 0) {
            goto error;
        }
        if (count == 0) {
            eof = 1;  /* close_notify */
            break;
        }
        total += count;
    }
    /* an sslobject_class's read() may have run connection_lost(), which drops
     * the app protocol: nobody to give the data to */
    if (total > 0 && self->app_protocol != NULL) {
        if (total != capacity && _PyBytes_Resize(&data, total) < 0) {
            goto error;
        }
        PyObject *app = Py_NewRef(self->app_protocol);
        /* slot 0 is scratch space for the callee (ARGUMENTS_OFFSET) */
        PyObject *args[3] = {NULL, app, data};
        PyObject *r = PyObject_VectorcallMethod(G.module_state->str_data_received, args + 1,
                                                2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(app);
        Py_CLEAR(data);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    Py_XDECREF(data);
    if (eof) {
        if (call_eof_received(self) < 0 || start_shutdown(self) < 0) {
            return -1;
        }
    }
    return 0;
error:
    Py_XDECREF(data);
    return -1;
}

/* The reads of one get_buffer() on the fast path: into buf[0:wants] through
 * windows.  *count: the last read's result (0 = close_notify, 1 when none
 * said so).  Bytes read, or -1 on error. */
static Py_ssize_t
read_buffered_fast(SSLProtocolObject *self, char *buf, Py_ssize_t wants, Py_ssize_t *count)
{
    Py_ssize_t offset = 0;
    while (offset < wants) {
        Py_ssize_t n = ssl_read_into(self, buf + offset, wants - offset);
        if (n == -2) {
            break;
        }
        if (n < 0) {
            return -1;
        }
        if (n == 0) {
            *count = 0;
            break;
        }
        offset += n;
        if (offset < wants) {
            Py_ssize_t bio;
            int can = readable(self, &bio);
            if (can < 0) {
                return -1;
            }
            if (!can) {
                break;
            }
        }
    }
    return offset;
}

/* The same through an SSLObject subclass, called as asyncio does: read(wants,
 * buffer), then read(wants - offset, <the rest of the buffer>) until it is
 * full or read() returns <= 0 or raises SSLWantReadError.  The rest of the
 * buffer is a slice of a memoryview on it (asyncio's buffer[offset:] would
 * copy a bytearray: the bytes read into the copy would be lost). */
static Py_ssize_t
read_buffered_object(SSLProtocolObject *self, PyObject *buffer, PyObject *whole,
                     Py_ssize_t wants, Py_ssize_t *count)
{
    Py_ssize_t offset = 0;
    PyObject *target = Py_NewRef(buffer);
    for (;;) {
        int again;
        PyObject *r = ssl_read_object(self, wants - offset, target, &again);
        Py_DECREF(target);
        if (r == NULL) {
            return again ? offset : -1;
        }
        Py_ssize_t n = PyLong_AsSsize_t(r);
        Py_DECREF(r);
        if (n == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (n <= 0) {
            *count = n;
            return offset;
        }
        offset += n;
        if (offset >= wants) {
            return offset;
        }
        target = PySequence_GetSlice(whole, offset, PY_SSIZE_T_MAX);
        if (target == NULL) {
            return -1;
        }
    }
}

static PyObject *protocol_do_read_cb(SSLProtocolObject *self, PyObject *unused);

static Py_ssize_t
empty_buffer_error(void)
{
    /* asyncio's read(0, buffer) returns 0, which it takes for close_notify;
     * our socket transport's error instead */
    PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
    return -1;
}

/* asyncio's _do_read__buffered: into the app's get_buffer(), buffer_updated(n). */
static int
read_buffered(SSLProtocolObject *self)
{
    Py_ssize_t bio = 0;
    if (self->fast) {
        int can = readable(self, &bio);
        if (can <= 0) {
            return can;
        }
    }
    else if ((bio = incoming_pending(self)) < 0) {
        return -1;
    }
    PyObject *hint = PyLong_FromSsize_t(bio);
    if (hint == NULL) {
        return -1;
    }
    /* Both bound methods of this read, taken now: get_buffer() may switch the
     * transport to another protocol (set_protocol), and the bytes read into its
     * buffer are still reported to the buffer_updated() of its protocol, as
     * asyncio does. */
    PyObject *get_buffer = Py_NewRef(self->app_get_buffer);
    PyObject *updated = Py_NewRef(self->app_buffer_updated);
    PyObject *buffer = PyObject_CallOneArg(get_buffer, hint);
    Py_DECREF(get_buffer);
    Py_DECREF(hint);
    if (buffer == NULL) {
        Py_DECREF(updated);
        return -1;
    }
    /* One export of the buffer held across all the reads: its memory and size
     * stay put whatever they run (a resize raises BufferError). */
    Py_ssize_t wants = 0, offset = -1, count = 1;
    if (self->fast) {
        Py_buffer view;
        if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE) == 0) {
            wants = view.len;
            offset = wants > 0 ? read_buffered_fast(self, view.buf, wants, &count)
                               : empty_buffer_error();
            PyBuffer_Release(&view);
        }
    }
    else {
        PyObject *whole = PyMemoryView_FromObject(buffer);
        if (whole != NULL) {
            wants = PyMemoryView_GET_BUFFER(whole)->len;
            offset = wants > 0 ? read_buffered_object(self, buffer, whole, wants, &count)
                               : empty_buffer_error();
            Py_DECREF(whole);
        }
    }
    Py_DECREF(buffer);
    if (offset < 0) {
        Py_DECREF(updated);
        return -1;
    }
    if (offset > 0 && offset >= wants) {
        /* the buffer is full: the rest on the next iteration, as asyncio */
        static PyMethodDef def = {"_do_read", (PyCFunction)protocol_do_read_cb, METH_NOARGS, NULL};
        PyObject *cb = PyCFunction_New(&def, (PyObject *)self);
        if (cb == NULL || call_soon(self, cb, NULL) < 0) {
            Py_XDECREF(cb);
            Py_DECREF(updated);
            return -1;
        }
        Py_DECREF(cb);
    }
    if (offset > 0) {
        PyObject *n = PyLong_FromSsize_t(offset);
        PyObject *r = n ? PyObject_CallOneArg(updated, n) : NULL;
        Py_XDECREF(n);
        if (r == NULL) {
            Py_DECREF(updated);
            return -1;
        }
        Py_DECREF(r);
    }
    Py_DECREF(updated);
    if (count == 0) {
        if (call_eof_received(self) < 0 || start_shutdown(self) < 0) {
            return -1;
        }
    }
    return 0;
}

/* asyncio's _do_read (errors: fatal, 'Fatal error on SSL protocol'). */
static int
do_read(SSLProtocolObject *self)
{
    if (self->state != ST_WRAPPED && self->state != ST_FLUSHING) {
        return 0;
    }
    int rc = 0;
    if (!self->app_reading_paused) {
        if (self->app_protocol == NULL) {
            rc = 0;
        }
        else if (self->app_is_buffer) {
            rc = read_buffered(self);
        }
        else {
            rc = read_copied(self);
        }
        if (rc == 0) {
            rc = backlog_len(self) ? do_write(self) : process_outgoing(self);
        }
    }
    if (rc == 0) {
        rc = control_ssl_reading(self);
    }
    if (rc < 0) {
        return catch_fatal(self, "Fatal error on SSL protocol");
    }
    return 0;
}

static PyObject *
protocol_do_read_cb(SSLProtocolObject *self, PyObject *unused)
{
    if (do_read(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
call_eof_received(SSLProtocolObject *self)
{
    if (self->app_state != APP_CON_MADE || self->app_protocol == NULL) {
        return 0;
    }
    self->app_state = APP_EOF;
    PyObject *app = Py_NewRef(self->app_protocol);
    PyObject *keep_open = PyObject_CallMethodNoArgs(app, G.module_state->str_eof_received);
    Py_DECREF(app);
    int keep = keep_open ? PyObject_IsTrue(keep_open) : -1;
    Py_XDECREF(keep_open);
    if (keep > 0) {
        log_message(G.str_warning, NULL,
                    "returning true from eof_received() has no effect when using ssl", NULL, NULL);
    }
    if (keep < 0) {
        if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)
            || PyErr_ExceptionMatches(PyExc_SystemExit)) {
            return -1;
        }
        PyObject *exc = compat_fetch_exception();
        fatal_error(self, exc, "Error calling eof_received()");
        Py_DECREF(exc);
    }
    return 0;
}

/* ---- handshake ---- */

/* True for a tuple of str/int/None (exactly those types): comparing two runs
 * no Python code, and sharing one between connections cannot be observed. */
static int
is_plain_tuple(PyObject *value)
{
    if (!PyTuple_CheckExact(value)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(value); i++) {
        PyObject *item = PyTuple_GET_ITEM(value, i);
        if (!PyUnicode_CheckExact(item) && !PyLong_CheckExact(item) && item != Py_None) {
            return 0;
        }
    }
    return 1;
}

/* cipher() gives a new ('TLS_AES_256_GCM_SHA384', 'TLSv1.3', 256) per
 * connection (~190 bytes of objects kept in the extra info): equal tuples are
 * shared instead.  Takes the reference to cipher, returns a new one. */
static PyObject *
shared_cipher(PyObject *cipher)
{
    if (!is_plain_tuple(cipher)) {
        return cipher;
    }
    if (G.last_cipher != NULL) {
        int same = PyObject_RichCompareBool(cipher, G.last_cipher, Py_EQ);
        if (same < 0) {
            PyErr_Clear();  /* cannot happen with these types; keep the new one */
        }
        if (same > 0) {
            Py_DECREF(cipher);
            return Py_NewRef(G.last_cipher);
        }
    }
    Py_XSETREF(G.last_cipher, Py_NewRef(cipher));
    return cipher;
}

/* write_reads_nothing from version() (fast path only: a subclass's write()
 * may do anything). */
static void
note_protocol_version(SSLProtocolObject *self)
{
    if (!self->fast) {
        return;
    }
    int again;
    PyObject *version = ssl_op(self, OP_VERSION, NULL, 0, &again);
    if (version == NULL) {
        PyErr_Clear();
        return;
    }
    self->write_reads_nothing = PyUnicode_Check(version)
        && PyUnicode_CompareWithASCIIString(version, "TLSv1.3") == 0;
    Py_DECREF(version);
}

static int
on_handshake_complete(SSLProtocolObject *self, PyObject *handshake_exc)
{
    cancel_timer(&self->handshake_timer);
    PyObject *peercert = NULL;
    PyObject *exc = NULL;
    int lazy_peercert = 0;
    if (handshake_exc == NULL) {
        if (set_state(self, ST_WRAPPED) == 0) {
            note_protocol_version(self);
            /* A TLS 1.3 client's view of the server certificate cannot change
             * after the handshake (no renegotiation; post-handshake auth is a
             * server asking for the client's): its getpeercert() dict (~1 KiB
             * per connection, rarely asked for) is made on first use, giving
             * what asyncio stores now. */
            lazy_peercert = self->write_reads_nothing && !self->server_side;
            if (!lazy_peercert) {
                int again;
                peercert = ssl_op(self, OP_GETPEERCERT, NULL, 0, &again);
                if (peercert == NULL && again) {
                    PyErr_SetString(PyExc_RuntimeError, "getpeercert() wants I/O");
                }
            }
        }
        if (peercert == NULL && !lazy_peercert) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                return -1;
            }
            exc = compat_fetch_exception();
        }
    }
    else {
        exc = Py_NewRef(handshake_exc);
    }
    if (exc != NULL) {
        self->state = ST_UNWRAPPED;
        int cert = PyObject_TypeCheck(exc, (PyTypeObject *)G.CertificateError);
        fatal_error(self, exc, cert ? "SSL handshake failed on verifying the certificate"
                                    : "SSL handshake failed");
        wakeup_waiter(self, exc);
        Py_DECREF(exc);
        return 0;
    }
    if (self->handshake_start >= 0 && loop_debug(self)) {
        double dt = loop_time(self) - self->handshake_start;
        PyObject *ms = PyFloat_FromDouble(dt * 1e3);
        PyObject *text = ms ? PyObject_CallMethod(ms, "__format__", "s", ".1f") : NULL;
        if (text) {
            log_message(G.str_debug, NULL, "%r: SSL handshake took %s ms", (PyObject *)self, text);
        }
        PyErr_Clear();
        Py_XDECREF(text);
        Py_XDECREF(ms);
    }
    int again;
    PyObject *cipher = ssl_op(self, OP_CIPHER, NULL, 0, &again);
    PyObject *compression = cipher ? ssl_op(self, OP_COMPRESSION, NULL, 0, &again) : NULL;
    int rc = -1;
    if (compression != NULL) {
        /* extra_lookup: the handshake's keys are there from now on */
        Py_XSETREF(self->peercert, peercert);
        Py_XSETREF(self->cipher, shared_cipher(cipher));
        Py_XSETREF(self->compression, compression);
        self->peercert_lazy = (char)lazy_peercert;
        self->handshake_extra = 1;
        rc = 0;
    }
    else {
        Py_XDECREF(peercert);
        Py_XDECREF(cipher);
    }
    if (rc < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "cipher()/compression() wants I/O");
        }
        return -1;
    }
    self->may_have_plaintext = PLAINTEXT_MAYBE;  /* checked by the first read */
    if (self->app_state == APP_INIT && self->app_protocol != NULL) {
        self->app_state = APP_CON_MADE;
        if (self->app_transport == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "Creating _SSLProtocolTransport twice");
            return -1;
        }
        PyObject *app = Py_NewRef(self->app_protocol);
        PyObject *r = PyObject_CallMethodOneArg(app, G.module_state->str_connection_made,
                                                (PyObject *)self->app_transport);
        Py_DECREF(app);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    wakeup_waiter(self, NULL);
    return do_read(self);
}

static int
do_handshake(SSLProtocolObject *self)
{
    int again;
    PyObject *r = ssl_op(self, OP_DO_HANDSHAKE, NULL, 0, &again);
    if (r != NULL) {
        Py_DECREF(r);
        return on_handshake_complete(self, NULL);
    }
    if (again) {
        return process_outgoing(self);
    }
    if (!PyErr_ExceptionMatches(G.SSLError)) {
        return -1;
    }
    PyObject *exc = compat_fetch_exception();
    int rc = on_handshake_complete(self, exc);
    Py_DECREF(exc);
    return rc;
}

static int
start_handshake(SSLProtocolObject *self)
{
    if (loop_debug(self)) {
        log_message(G.str_debug, NULL, "%r starts SSL handshake", (PyObject *)self, NULL);
        self->handshake_start = loop_time(self);
    }
    else {
        self->handshake_start = -1.0;
    }
    if (set_state(self, ST_DO_HANDSHAKE) < 0) {
        return -1;
    }
    PyObject *timer = call_later(self, self->handshake_timeout, G.str_check_handshake);
    if (timer == NULL) {
        return -1;
    }
    Py_XSETREF(self->handshake_timer, timer);
    return do_handshake(self);
}

/* ---- shutdown ---- */

static int
abort_connection(SSLProtocolObject *self, PyObject *exc)
{
    self->state = ST_UNWRAPPED;
#if PY_VERSION_HEX < 0x030C0000
    if (exc == NULL) {
        return call_transport(self, G.str_abort, NULL);
    }
#endif
    return call_transport(self, G.str_force_close, exc ? exc : Py_None);
}

static int
on_shutdown_complete(SSLProtocolObject *self, PyObject *shutdown_exc)
{
    cancel_timer(&self->shutdown_timer);
    if (shutdown_exc != NULL) {
        fatal_error(self, shutdown_exc, "Fatal error on transport");
        return 0;
    }
    if (self->transport == NULL) {
        return 0;
    }
    PyObject *close = PyObject_GetAttr(self->transport, G.str_close);
    if (close == NULL) {
        return -1;
    }
    int rc = call_soon(self, close, NULL);
    Py_DECREF(close);
    return rc;
}

static int
do_shutdown(SSLProtocolObject *self)
{
    if (!self->eof_received) {
        int again;
        PyObject *r = ssl_op(self, OP_UNWRAP, NULL, 0, &again);
        if (r == NULL) {
            if (again) {
                return process_outgoing(self);
            }
            if (!PyErr_ExceptionMatches(G.SSLError)) {
                return -1;
            }
            PyObject *exc = compat_fetch_exception();
            int rc = on_shutdown_complete(self, exc);
            Py_DECREF(exc);
            return rc;
        }
        Py_DECREF(r);
    }
    if (process_outgoing(self) < 0 || call_eof_received(self) < 0) {
        return -1;
    }
    return on_shutdown_complete(self, NULL);
}

static int
do_flush(SSLProtocolObject *self)
{
    if (do_read(self) < 0 || set_state(self, ST_SHUTDOWN) < 0) {
        return -1;
    }
    return do_shutdown(self);
}

static int
start_shutdown(SSLProtocolObject *self)
{
    if (self->state == ST_FLUSHING || self->state == ST_SHUTDOWN || self->state == ST_UNWRAPPED) {
        return 0;
    }
    if (self->app_transport != NULL) {
        self->app_transport->closed = 1;
    }
    if (self->state == ST_DO_HANDSHAKE) {
        return abort_connection(self, NULL);
    }
    if (set_state(self, ST_FLUSHING) < 0) {
        return -1;
    }
    PyObject *timer = call_later(self, self->shutdown_timeout, G.str_check_shutdown);
    if (timer == NULL) {
        return -1;
    }
    Py_XSETREF(self->shutdown_timer, timer);
    return do_flush(self);
}

/* ---- SSLProtocol: the underlying transport's protocol ---- */

static PyObject *
protocol_connection_made(SSLProtocolObject *self, PyObject *transport)
{
    Py_XSETREF(self->transport, Py_NewRef(transport));
    if (start_handshake(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
protocol_connection_lost(SSLProtocolObject *self, PyObject *exc)
{
    PyObject *arg = exc == Py_None ? NULL : exc;
    if (backlog_len(self) > 0
        && PyList_SetSlice(self->backlog, 0, PyList_GET_SIZE(self->backlog), NULL) < 0) {
        return NULL;
    }
    self->write_buffer_size = 0;
    PyObject *drained = PyObject_CallOneArg(G.bio_read, self->outgoing);
    if (drained == NULL) {
        return NULL;
    }
    Py_DECREF(drained);
    self->conn_lost++;
    if (self->app_transport != NULL) {
        self->app_transport->closed = 1;
    }
    int rc = 0;
    if (self->state != ST_DO_HANDSHAKE && self->app_protocol != NULL
        && (self->app_state == APP_CON_MADE || self->app_state == APP_EOF)) {
        self->app_state = APP_CON_LOST;
        PyObject *lost = PyObject_GetAttr(self->app_protocol, G.module_state->str_connection_lost);
        rc = lost ? call_soon(self, lost, exc) : -1;
        Py_XDECREF(lost);
    }
    self->state = ST_UNWRAPPED;
    Py_CLEAR(self->transport);
    Py_CLEAR(self->app_transport);
    Py_CLEAR(self->app_protocol);
    Py_CLEAR(self->app_get_buffer);
    Py_CLEAR(self->app_buffer_updated);
    if (rc == 0) {
        wakeup_waiter(self, arg);
    }
    cancel_timer(&self->shutdown_timer);
    cancel_timer(&self->handshake_timer);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The buffer our socket transport reads ciphertext into: one per loop.  The
 * transport reads into it and calls buffer_updated, which copies it into the
 * incoming MemoryBIO first, all with the GIL held and no Python code in
 * between, so the loop's connections can share it; loops in other threads
 * read at the same time, so it is per loop, never per process.  NULL if the
 * transport is not ours (then own_buffer serves). */
static LoopObject *
socket_transport_loop(SSLProtocolObject *self)
{
    if (self->transport != NULL
        && Py_IS_TYPE(self->transport, G.module_state->SocketTransportType)) {
        return ((TransportObject *)self->transport)->loop;
    }
    return NULL;
}

static PyObject *
protocol_get_buffer(SSLProtocolObject *self, PyObject *n)
{
    LoopObject *loop = socket_transport_loop(self);
    if (loop != NULL) {
        /* whoever got it before may have resized it: then it is not ours */
        if (loop->tls_read_buffer == NULL
            || PyByteArray_GET_SIZE(loop->tls_read_buffer) != TLS_MAX_SIZE) {
            Py_XSETREF(loop->tls_read_buffer, PyByteArray_FromStringAndSize(NULL, TLS_MAX_SIZE));
            if (loop->tls_read_buffer == NULL) {
                return NULL;
            }
        }
        return Py_NewRef(loop->tls_read_buffer);
    }
    Py_ssize_t want = PyLong_AsSsize_t(n);
    if (want == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (want <= 0 || want > TLS_MAX_SIZE) {
        want = TLS_MAX_SIZE;
    }
    if (self->own_buffer == NULL || PyByteArray_GET_SIZE(self->own_buffer) < want) {
        PyObject *buffer = PyByteArray_FromStringAndSize(NULL, want);
        if (buffer == NULL) {
            return NULL;
        }
        Py_XSETREF(self->own_buffer, buffer);
    }
    return PyMemoryView_FromObject(self->own_buffer);
}

/* Copies n bytes of ciphertext into the incoming BIO. */
static int
bio_feed(SSLProtocolObject *self, const char *bytes, Py_ssize_t n)
{
    WindowObject *chunk = window_open((char *)bytes, n, 1);
    if (chunk == NULL) {
        return -1;
    }
    PyObject *args[2] = {self->incoming, (PyObject *)chunk};
    PyObject *r = PyObject_Vectorcall(G.bio_write, args, 2, NULL);
    window_done(chunk);
    if (r == NULL) {
        self->incoming_known = -1;
        return -1;
    }
    Py_DECREF(r);
    if (self->incoming_known >= 0) {
        self->incoming_known += n;
    }
    return 0;
}

/* Runs the state machine after ciphertext arrived. */
static int
process_incoming(SSLProtocolObject *self)
{
    switch (self->state) {
    case ST_DO_HANDSHAKE:
        return do_handshake(self);
    case ST_WRAPPED:
        return do_read(self);
    case ST_FLUSHING:
        return do_flush(self);
    case ST_SHUTDOWN:
        return do_shutdown(self);
    default:
        return 0;
    }
}

/* Feeds n bytes of ciphertext and runs the state machine. */
static int
feed_incoming(SSLProtocolObject *self, const char *bytes, Py_ssize_t n)
{
    if (bio_feed(self, bytes, n) < 0) {
        return -1;
    }
    return process_incoming(self);
}

/* The read hook of our socket transport (tls.h): the instance must not
 * replace get_buffer/buffer_updated (the type cannot be subclassed). */
int
tls_is_native_protocol(PyObject *protocol)
{
    if (protocol == NULL || G.ProtocolType == NULL || !Py_IS_TYPE(protocol, G.ProtocolType)) {
        return 0;
    }
    PyObject *dict = ((SSLProtocolObject *)protocol)->dict;
    if (dict == NULL || PyDict_GET_SIZE(dict) == 0) {
        return 1;
    }
    ModuleState *state = G.module_state;
    PyObject *found = PyDict_GetItemWithError(dict, state->str_get_buffer);
    if (found == NULL && !PyErr_Occurred()) {
        found = PyDict_GetItemWithError(dict, state->str_buffer_updated);
    }
    if (PyErr_Occurred()) {
        PyErr_Clear();  /* the method-call path then reports what is wrong */
        return 0;
    }
    return found == NULL;
}

int
tls_feed_from_read_buffer(PyObject *protocol, TransportObject *transport, char *buffer,
                          Py_ssize_t n)
{
    SSLProtocolObject *self = (SSLProtocolObject *)Py_NewRef(protocol);
    int rc = bio_feed(self, buffer, n);
    /* copied: the buffer goes back before any Python code of the state machine */
    transport_give_back_read_buffer(transport->loop, buffer);
    if (rc == 0) {
        rc = process_incoming(self);
    }
    Py_DECREF(self);
    return rc;
}

static PyObject *
protocol_buffer_updated(SSLProtocolObject *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    LoopObject *loop = socket_transport_loop(self);
    PyObject *source = loop != NULL ? loop->tls_read_buffer : self->own_buffer;
    if (source == NULL || n < 0 || n > PyByteArray_GET_SIZE(source)) {
        PyErr_SetString(PyExc_ValueError, "buffer_updated(): bad byte count");
        return NULL;
    }
    /* keep the buffer alive across the state machine (it may run Python) */
    Py_INCREF(source);
    int rc = feed_incoming(self, PyByteArray_AS_STRING(source), n);
    Py_DECREF(source);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
protocol_data_received(SSLProtocolObject *self, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *copy = PyBytes_FromStringAndSize(view.buf, view.len);
    PyBuffer_Release(&view);
    if (copy == NULL) {
        return NULL;
    }
    int rc = feed_incoming(self, PyBytes_AS_STRING(copy), PyBytes_GET_SIZE(copy));
    Py_DECREF(copy);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
protocol_eof_received(SSLProtocolObject *self, PyObject *unused)
{
    self->eof_received = 1;
    if (loop_debug(self)) {
        log_message(G.str_debug, NULL, "%r received EOF", (PyObject *)self, NULL);
    }
    int rc = 0;
    switch (self->state) {
    case ST_DO_HANDSHAKE: {
        PyObject *exc = PyObject_CallNoArgs(PyExc_ConnectionResetError);
        rc = exc ? on_handshake_complete(self, exc) : -1;
        Py_XDECREF(exc);
        break;
    }
    case ST_WRAPPED:
        if (set_state(self, ST_FLUSHING) < 0) {
            rc = -1;
            break;
        }
        if (self->app_reading_paused) {
            Py_RETURN_TRUE;
        }
        rc = do_flush(self);
        break;
    case ST_FLUSHING:
        rc = do_write(self);
        if (rc == 0) {
            rc = set_state(self, ST_SHUTDOWN);
        }
        if (rc == 0) {
            rc = do_shutdown(self);
        }
        break;
    case ST_SHUTDOWN:
        rc = do_shutdown(self);
        break;
    default:
        break;
    }
    if (rc < 0) {
        PyObject *exc = compat_fetch_exception();
        if (call_transport(self, G.str_close, NULL) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        compat_restore_exception(exc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
protocol_pause_writing(SSLProtocolObject *self, PyObject *unused)
{
    self->ssl_writing_paused = 1;
    Py_RETURN_NONE;
}

static PyObject *
protocol_resume_writing(SSLProtocolObject *self, PyObject *unused)
{
    self->ssl_writing_paused = 0;
    if (process_outgoing(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
protocol_check_handshake_timeout(SSLProtocolObject *self, PyObject *unused)
{
    if (self->state != ST_DO_HANDSHAKE) {
        Py_RETURN_NONE;
    }
    PyObject *msg = PyUnicode_FromFormat(
        "SSL handshake is taking longer than %S seconds: aborting the connection",
        self->handshake_timeout);
    PyObject *exc = msg ? PyObject_CallOneArg(PyExc_ConnectionAbortedError, msg) : NULL;
    Py_XDECREF(msg);
    if (exc == NULL) {
        return NULL;
    }
    fatal_error(self, exc, "Fatal error on transport");
    Py_DECREF(exc);
    Py_RETURN_NONE;
}

static PyObject *
protocol_check_shutdown_timeout(SSLProtocolObject *self, PyObject *unused)
{
    if (self->state != ST_FLUSHING && self->state != ST_SHUTDOWN) {
        Py_RETURN_NONE;
    }
    PyObject *exc = PyObject_CallFunction(PyExc_TimeoutError, "s", "SSL shutdown timed out");
    if (exc == NULL) {
        return NULL;
    }
    int rc = call_transport(self, G.str_force_close, exc);
    Py_DECREF(exc);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The callback resume_reading() schedules. */
static PyObject *
protocol_resume_cb(SSLProtocolObject *self, PyObject *unused)
{
    int rc = 0;
    if (self->state == ST_WRAPPED) {
        rc = do_read(self);
    }
    else if (self->state == ST_FLUSHING) {
        rc = do_flush(self);
    }
    else if (self->state == ST_SHUTDOWN) {
        rc = do_shutdown(self);
    }
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
set_app_protocol(SSLProtocolObject *self, PyObject *app_protocol)
{
    PyObject *get_buffer = NULL, *buffer_updated = NULL;
    int has = PyObject_HasAttrString(app_protocol, "get_buffer");
    int is_buffer = 0;
    if (has) {
        is_buffer = PyObject_IsInstance(app_protocol, G.module_state->BufferedProtocolType);
        if (is_buffer < 0) {
            return -1;
        }
    }
    if (is_buffer) {
        get_buffer = PyObject_GetAttr(app_protocol, G.module_state->str_get_buffer);
        buffer_updated = get_buffer
            ? PyObject_GetAttr(app_protocol, G.module_state->str_buffer_updated) : NULL;
        if (buffer_updated == NULL) {
            Py_XDECREF(get_buffer);
            return -1;
        }
    }
    Py_XSETREF(self->app_protocol, Py_NewRef(app_protocol));
    Py_XSETREF(self->app_get_buffer, get_buffer);
    Py_XSETREF(self->app_buffer_updated, buffer_updated);
    self->app_is_buffer = (char)is_buffer;
    return 0;
}

static int
check_timeout(PyObject **slot, PyObject *value, PyObject *fallback, const char *name)
{
    if (value == NULL || value == Py_None) {
        *slot = Py_NewRef(fallback);
        return 0;
    }
    PyObject *zero = PyLong_FromLong(0);
    int bad = zero ? PyObject_RichCompareBool(value, zero, Py_LE) : -1;
    Py_XDECREF(zero);
    if (bad < 0) {
        return -1;
    }
    if (bad) {
        PyObject *text = PyObject_Str(value);
        if (text != NULL) {
            PyErr_Format(PyExc_ValueError, "%s should be a positive number, got %U", name, text);
            Py_DECREF(text);
        }
        return -1;
    }
    *slot = Py_NewRef(value);
    return 0;
}

static PyObject *
protocol_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"loop", "app_protocol", "sslcontext", "waiter", "server_side",
                               "server_hostname", "call_connection_made", "ssl_handshake_timeout",
                               "ssl_shutdown_timeout", NULL};
    PyObject *loop, *app_protocol, *sslcontext, *waiter, *server_hostname = Py_None;
    PyObject *handshake_timeout = Py_None, *shutdown_timeout = Py_None;
    int server_side = 0, call_connection_made = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|pOpOO:SSLProtocol", keywords, &loop,
                                     &app_protocol, &sslcontext, &waiter, &server_side,
                                     &server_hostname, &call_connection_made, &handshake_timeout,
                                     &shutdown_timeout)) {
        return NULL;
    }
    if (ssl_lazy_init() < 0) {
        return NULL;
    }
    SSLProtocolObject *self = (SSLProtocolObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->handshake_start = -1.0;
    self->incoming_known = -1;
    if (check_timeout(&self->handshake_timeout, handshake_timeout, G.default_handshake_timeout,
                      "ssl_handshake_timeout") < 0
        || check_timeout(&self->shutdown_timeout, shutdown_timeout, G.default_shutdown_timeout,
                         "ssl_shutdown_timeout") < 0) {
        goto error;
    }
    int truthy = PyObject_IsTrue(sslcontext);
    if (truthy < 0) {
        goto error;
    }
    if (truthy) {
        self->sslcontext = Py_NewRef(sslcontext);
    }
    else {
        self->sslcontext = PyObject_CallFunction(G.create_transport_context, "OO",
                                                 server_side ? Py_True : Py_False, server_hostname);
        if (self->sslcontext == NULL) {
            goto error;
        }
    }
    self->server_side = (char)server_side;
    int has_hostname = PyObject_IsTrue(server_hostname);
    if (has_hostname < 0) {
        goto error;
    }
    /* wrap_bio's server_hostname: None unless a client with a hostname */
    PyObject *hostname = has_hostname && !server_side ? server_hostname : Py_None;
    self->waiter = waiter == Py_None ? NULL : Py_NewRef(waiter);
    self->loop = Py_NewRef(loop);
    if (set_app_protocol(self, app_protocol) < 0) {
        goto error;
    }
    self->incoming = PyObject_CallNoArgs(G.MemoryBIOType);
    self->outgoing = self->incoming ? PyObject_CallNoArgs(G.MemoryBIOType) : NULL;
    if (self->outgoing == NULL) {
        goto error;
    }
    self->state = ST_UNWRAPPED;
    self->app_state = call_connection_made ? APP_INIT : APP_CON_MADE;
    /* sslcontext.wrap_bio(): sslobject_class, SNI owner, session... as asyncio */
    PyObject *wrap_args[5] = {self->sslcontext, self->incoming, self->outgoing,
                              server_side ? Py_True : Py_False,
                              hostname};
    PyObject *kwnames = PyTuple_Pack(2, G.str_server_side, G.str_server_hostname);
    if (kwnames == NULL) {
        goto error;
    }
    self->sslobject = PyObject_VectorcallMethod(G.str_wrap_bio, wrap_args, 3, kwnames);
    Py_DECREF(kwnames);
    if (self->sslobject == NULL) {
        goto error;
    }
    if (Py_IS_TYPE(self->sslobject, (PyTypeObject *)G.SSLObjectType)) {
        PyObject *inner = PyObject_GetAttr(self->sslobject, G.str_sslobj);
        if (inner == NULL) {
            PyErr_Clear();
        }
        else if (Py_IS_TYPE(inner, (PyTypeObject *)G.SSLSocketType)) {
            self->sslobj = inner;
            self->fast = 1;
        }
        else {
            Py_DECREF(inner);
        }
    }
    if (transport_parse_buffer_limits(NULL, NULL, G.high_water_read_kb * 1024, 1,
                                      &self->incoming_high, &self->incoming_low,
                                      &self->incoming_limits) < 0
        || transport_parse_buffer_limits(NULL, NULL, G.high_water_write_kb * 1024, 1,
                                         &self->outgoing_high, &self->outgoing_low,
                                         &self->outgoing_limits) < 0) {
        goto error;
    }
    SSLTransportObject *tr = (SSLTransportObject *)G.TransportType->tp_alloc(G.TransportType, 0);
    if (tr == NULL) {
        goto error;
    }
    tr->proto = (SSLProtocolObject *)Py_NewRef(self);
    tr->loop = Py_NewRef(loop);
    self->app_transport = tr;
    self->app_transport_created = 1;
    return (PyObject *)self;
error:
    Py_DECREF(self);
    return NULL;
}

static int
protocol_traverse(SSLProtocolObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->dict);
    Py_VISIT(self->loop);
    Py_VISIT(self->app_protocol);
    Py_VISIT(self->app_get_buffer);
    Py_VISIT(self->app_buffer_updated);
    Py_VISIT(self->app_transport);
    Py_VISIT(self->transport);
    Py_VISIT(self->sslcontext);
    Py_VISIT(self->sslobject);
    Py_VISIT(self->sslobj);
    Py_VISIT(self->incoming);
    Py_VISIT(self->outgoing);
    Py_VISIT(self->peercert);
    Py_VISIT(self->cipher);
    Py_VISIT(self->compression);
    Py_VISIT(self->waiter);
    Py_VISIT(self->handshake_timer);
    Py_VISIT(self->shutdown_timer);
    Py_VISIT(self->handshake_timeout);
    Py_VISIT(self->shutdown_timeout);
    Py_VISIT(self->backlog);
    Py_VISIT(self->own_buffer);
    Py_VISIT(self->incoming_limits);
    Py_VISIT(self->outgoing_limits);
    return 0;
}

static int
protocol_clear(SSLProtocolObject *self)
{
    Py_CLEAR(self->dict);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->app_protocol);
    Py_CLEAR(self->app_get_buffer);
    Py_CLEAR(self->app_buffer_updated);
    Py_CLEAR(self->app_transport);
    Py_CLEAR(self->transport);
    Py_CLEAR(self->sslcontext);
    Py_CLEAR(self->sslobject);
    Py_CLEAR(self->sslobj);
    Py_CLEAR(self->incoming);
    Py_CLEAR(self->outgoing);
    Py_CLEAR(self->peercert);
    Py_CLEAR(self->cipher);
    Py_CLEAR(self->compression);
    Py_CLEAR(self->waiter);
    Py_CLEAR(self->handshake_timer);
    Py_CLEAR(self->shutdown_timer);
    Py_CLEAR(self->handshake_timeout);
    Py_CLEAR(self->shutdown_timeout);
    Py_CLEAR(self->backlog);
    Py_CLEAR(self->own_buffer);
    Py_CLEAR(self->incoming_limits);
    Py_CLEAR(self->outgoing_limits);
    return 0;
}

static void
protocol_dealloc(SSLProtocolObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    protocol_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *
protocol_get_app_transport(SSLProtocolObject *self, void *closure)
{
    return Py_NewRef(self->app_transport ? (PyObject *)self->app_transport : Py_None);
}

static PyObject *
protocol_get_app_protocol(SSLProtocolObject *self, void *closure)
{
    return Py_NewRef(self->app_protocol ? self->app_protocol : Py_None);
}

static PyObject *
protocol_get_transport(SSLProtocolObject *self, void *closure)
{
    return Py_NewRef(self->transport ? self->transport : Py_None);
}

static PyObject *
protocol_get_sslobj(SSLProtocolObject *self, void *closure)
{
    return Py_NewRef(self->sslobject ? self->sslobject : Py_None);
}

static PyObject *
protocol_get_state(SSLProtocolObject *self, void *closure)
{
    return PyUnicode_FromString(state_names[self->state]);
}

static PyObject *
protocol_get_loop(SSLProtocolObject *self, void *closure)
{
    return Py_NewRef(self->loop ? self->loop : Py_None);
}

static PyObject *
protocol_get_backlog(SSLProtocolObject *self, void *closure)
{
    /* asyncio's always exists */
    return Py_XNewRef(backlog_list(self));
}

static PyObject *
protocol_get_write_size(SSLProtocolObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->write_buffer_size);
}

static int
protocol_set_write_size(SSLProtocolObject *self, PyObject *value, void *closure)
{
    Py_ssize_t n = value ? PyLong_AsSsize_t(value) : -1;
    if (n == -1 && (value == NULL || PyErr_Occurred())) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "cannot delete _write_buffer_size");
        }
        return -1;
    }
    self->write_buffer_size = n;
    return 0;
}

static PyMethodDef protocol_methods[] = {
    {"connection_made", (PyCFunction)protocol_connection_made, METH_O, NULL},
    {"connection_lost", (PyCFunction)protocol_connection_lost, METH_O, NULL},
    {"get_buffer", (PyCFunction)protocol_get_buffer, METH_O, NULL},
    {"buffer_updated", (PyCFunction)protocol_buffer_updated, METH_O, NULL},
    {"data_received", (PyCFunction)protocol_data_received, METH_O, NULL},
    {"eof_received", (PyCFunction)protocol_eof_received, METH_NOARGS, NULL},
    {"pause_writing", (PyCFunction)protocol_pause_writing, METH_NOARGS, NULL},
    {"resume_writing", (PyCFunction)protocol_resume_writing, METH_NOARGS, NULL},
    {"_check_handshake_timeout", (PyCFunction)protocol_check_handshake_timeout, METH_NOARGS, NULL},
    {"_check_shutdown_timeout", (PyCFunction)protocol_check_shutdown_timeout, METH_NOARGS, NULL},
    {"_resume_reading_cb", (PyCFunction)protocol_resume_cb, METH_NOARGS, NULL},
    {"_do_read", (PyCFunction)protocol_do_read_cb, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef protocol_getsets[] = {
    {"_app_transport", (getter)protocol_get_app_transport, NULL, NULL, NULL},
    {"_app_protocol", (getter)protocol_get_app_protocol, NULL, NULL, NULL},
    {"_transport", (getter)protocol_get_transport, NULL, NULL, NULL},
    {"_sslobj", (getter)protocol_get_sslobj, NULL, NULL, NULL},
    {"_state", (getter)protocol_get_state, NULL, NULL, NULL},
    {"_loop", (getter)protocol_get_loop, NULL, NULL, NULL},
    {"_write_backlog", (getter)protocol_get_backlog, NULL, NULL, NULL},
    {"_write_buffer_size", (getter)protocol_get_write_size, (setter)protocol_set_write_size,
     NULL, NULL},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef protocol_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SSLProtocolObject, weakreflist), READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(SSLProtocolObject, dict), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot protocol_slots[] = {
    {Py_tp_new, protocol_new},
    {Py_tp_dealloc, protocol_dealloc},
    {Py_tp_traverse, protocol_traverse},
    {Py_tp_clear, protocol_clear},
    {Py_tp_methods, protocol_methods},
    {Py_tp_getset, protocol_getsets},
    {Py_tp_members, protocol_members},
    {Py_tp_doc, "asyncio's SSLProtocol in C: the TLS state machine, protocol of the "
                "underlying transport."},
    {0, NULL},
};

static PyType_Spec protocol_spec = {
    .name = "pyasync_c._loop.SSLProtocol",
    .basicsize = sizeof(SSLProtocolObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = protocol_slots,
};

/* ---- SSLTransport: what the application sees ---- */

static SSLProtocolObject *
transport_proto(SSLTransportObject *self)
{
    if (self->proto == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the SSL transport was closed twice: it has no "
                        "SSL protocol any more");
    }
    return self->proto;
}

/* transport_proto() as a new reference, for methods that run Python code
 * (hash, arithmetic, attribute lookups, app callbacks): that code may close
 * the transport a second time, which drops self->proto. */
static SSLProtocolObject *
transport_proto_ref(SSLTransportObject *self)
{
    SSLProtocolObject *proto = transport_proto(self);
    Py_XINCREF(proto);
    return proto;
}

/* asyncio's `name in self._extra` and `self._extra[name]`: a new reference, or
 * NULL without an exception when name is not a key.  An exact str is compared
 * here; any other object gets the dict lookup (its own __hash__/__eq__). */
static int
extra_peercert(SSLProtocolObject *self)
{
    if (!self->peercert_lazy || self->peercert != NULL) {
        return 0;
    }
    int again;
    PyObject *peercert = ssl_op(self, OP_GETPEERCERT, NULL, 0, &again);
    if (peercert == NULL) {
        if (again) {
            PyErr_SetString(PyExc_RuntimeError, "getpeercert() wants I/O");
        }
        return -1;
    }
    Py_XSETREF(self->peercert, peercert);  /* (ssl_op ran no Python code here: fast path) */
    return 0;
}

static PyObject *
extra_lookup(SSLProtocolObject *self, PyObject *name)
{
    int done = self->handshake_extra;  /* the handshake's keys */
    PyObject *keys[5] = {G.str_sslcontext, G.str_ssl_object, G.str_peercert, G.str_cipher,
                         G.str_compression};
    PyObject *values[5] = {self->sslcontext, self->sslobject, self->peercert, self->cipher,
                           self->compression};
    int count = done ? 5 : 1;
    if (PyUnicode_CheckExact(name)) {
        for (int i = 0; i < count; i++) {
            if (name == keys[i] || PyUnicode_Compare(name, keys[i]) == 0) {
                if (i == 2 && extra_peercert(self) < 0) {
                    return NULL;
                }
                return Py_XNewRef(i == 2 ? self->peercert : values[i]);
            }
        }
        return NULL;
    }
    if (done && extra_peercert(self) < 0) {
        return NULL;
    }
    values[2] = self->peercert;
    PyObject *extra = PyDict_New();
    if (extra == NULL) {
        return NULL;
    }
    for (int i = 0; i < count; i++) {
        if (values[i] != NULL && PyDict_SetItem(extra, keys[i], values[i]) < 0) {
            Py_DECREF(extra);
            return NULL;
        }
    }
    PyObject *result = PyDict_GetItemWithError(extra, name);
    Py_XINCREF(result);
    Py_DECREF(extra);
    return result;
}

static PyObject *
tls_get_extra_info(SSLTransportObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"name", "default", NULL};
    PyObject *name, *fallback = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:get_extra_info", kwlist, &name,
                                     &fallback)) {
        return NULL;
    }
    if (self->proto == NULL) {
        return Py_NewRef(fallback);  /* released by a second close() */
    }
    /* name's __hash__/__eq__ may close the transport again */
    SSLProtocolObject *proto = (SSLProtocolObject *)Py_NewRef(self->proto);
    PyObject *result = extra_lookup(proto, name);
    if (result == NULL && !PyErr_Occurred()) {
        if (proto->transport != NULL) {
            PyObject *lower = Py_NewRef(proto->transport);
            PyObject *call_args[3] = {lower, name, fallback};
            result = PyObject_VectorcallMethod(G.str_get_extra_info, call_args, 3, NULL);
            Py_DECREF(lower);
        }
        else {
            result = Py_NewRef(fallback);
        }
    }
    Py_DECREF(proto);
    return result;
}

static PyObject *
tls_set_protocol(SSLTransportObject *self, PyObject *protocol)
{
    SSLProtocolObject *proto = transport_proto_ref(self);
    if (proto == NULL) {
        return NULL;
    }
    int rc = set_app_protocol(proto, protocol);
    Py_DECREF(proto);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
tls_get_protocol(SSLTransportObject *self, PyObject *unused)
{
    SSLProtocolObject *proto = self->proto;
    if (proto == NULL) {
        Py_RETURN_NONE;
    }
    return Py_NewRef(proto->app_protocol ? proto->app_protocol : Py_None);
}

static PyObject *
tls_is_closing(SSLTransportObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->closed);
}

static PyObject *
tls_close(SSLTransportObject *self, PyObject *unused)
{
    if (self->closed) {
        /* asyncio drops its SSLProtocol on a second close(): an app protocol
         * keeping its closed transport does not keep the TLS state (context,
         * SSL object, buffers) alive */
        Py_CLEAR(self->proto);
        Py_RETURN_NONE;
    }
    if (self->proto == NULL) {
        Py_RETURN_NONE;
    }
    self->closed = 1;
    SSLProtocolObject *proto = (SSLProtocolObject *)Py_NewRef(self->proto);
    int rc = start_shutdown(proto);
    Py_DECREF(proto);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
tls_is_reading(SSLTransportObject *self, PyObject *unused)
{
    SSLProtocolObject *proto = transport_proto(self);
    return proto ? PyBool_FromLong(!proto->app_reading_paused) : NULL;
}

static PyObject *
tls_pause_reading(SSLTransportObject *self, PyObject *unused)
{
    SSLProtocolObject *proto = transport_proto(self);
    if (proto == NULL) {
        return NULL;
    }
    proto->app_reading_paused = 1;
    Py_RETURN_NONE;
}

static PyObject *
tls_resume_reading(SSLTransportObject *self, PyObject *unused)
{
    SSLProtocolObject *proto = transport_proto_ref(self);
    if (proto == NULL) {
        return NULL;
    }
    int rc = 0;
    if (proto->app_reading_paused) {
        proto->app_reading_paused = 0;
        PyObject *cb = PyObject_GetAttr((PyObject *)proto, G.str_resume_cb);
        rc = cb ? call_soon(proto, cb, NULL) : -1;
        Py_XDECREF(cb);
    }
    Py_DECREF(proto);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static int
parse_limits(PyObject *args, PyObject *kwargs, const char *fmt, PyObject **high, PyObject **low)
{
    static char *kwlist[] = {"high", "low", NULL};
    *high = *low = Py_None;
    return PyArg_ParseTupleAndKeywords(args, kwargs, fmt, kwlist, high, low) ? 0 : -1;
}

static PyObject *
tls_set_write_buffer_limits(SSLTransportObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *high, *low;
    PyObject *values;
    Py_ssize_t hi, lo;
    if (parse_limits(args, kwargs, "|OO:set_write_buffer_limits", &high, &low) < 0) {
        return NULL;
    }
    /* the limits' arithmetic may close the transport again */
    SSLProtocolObject *proto = transport_proto_ref(self);
    if (proto == NULL) {
        return NULL;
    }
    int rc = transport_parse_buffer_limits(high, low, G.high_water_write_kb * 1024, 1, &hi, &lo, &values);
    if (rc == 0) {
        proto->outgoing_high = hi;
        proto->outgoing_low = lo;
        Py_XSETREF(proto->outgoing_limits, values);
        rc = control_app_writing(proto, -1);
    }
    Py_DECREF(proto);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
tls_get_write_buffer_limits(SSLTransportObject *self, PyObject *unused)
{
    SSLProtocolObject *proto = transport_proto(self);
    return proto ? transport_buffer_limits_tuple(proto->outgoing_limits, proto->outgoing_high,
                                                 proto->outgoing_low)
                 : NULL;
}

static PyObject *
tls_get_write_buffer_size(SSLTransportObject *self, PyObject *unused)
{
    SSLProtocolObject *proto = transport_proto(self);
    if (proto == NULL) {
        return NULL;
    }
    Py_ssize_t size = write_buffer_size(proto);
    return size < 0 ? NULL : PyLong_FromSsize_t(size);
}

static PyObject *
tls_set_read_buffer_limits(SSLTransportObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *high, *low;
    PyObject *values;
    Py_ssize_t hi, lo;
    if (parse_limits(args, kwargs, "|OO:set_read_buffer_limits", &high, &low) < 0) {
        return NULL;
    }
    /* the limits' arithmetic may close the transport again */
    SSLProtocolObject *proto = transport_proto_ref(self);
    if (proto == NULL) {
        return NULL;
    }
    int rc = transport_parse_buffer_limits(high, low, G.high_water_read_kb * 1024, 1, &hi, &lo, &values);
    if (rc == 0) {
        proto->incoming_high = hi;
        proto->incoming_low = lo;
        Py_XSETREF(proto->incoming_limits, values);
        rc = control_ssl_reading(proto);
    }
    Py_DECREF(proto);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
tls_get_read_buffer_limits(SSLTransportObject *self, PyObject *unused)
{
    SSLProtocolObject *proto = transport_proto(self);
    return proto ? transport_buffer_limits_tuple(proto->incoming_limits, proto->incoming_high,
                                                 proto->incoming_low)
                 : NULL;
}

static PyObject *
tls_get_read_buffer_size(SSLTransportObject *self, PyObject *unused)
{
    SSLProtocolObject *proto = transport_proto(self);
    if (proto == NULL) {
        return NULL;
    }
    Py_ssize_t size = incoming_pending(proto);
    return size < 0 ? NULL : PyLong_FromSsize_t(size);
}

static PyObject *
tls_write(SSLTransportObject *self, PyObject *data)
{
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        PyErr_Format(PyExc_TypeError, "data: expecting a bytes-like instance, got %.200s",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    Py_ssize_t length = buffer_length(data);
    if (length <= 0) {
        return length < 0 ? NULL : Py_NewRef(Py_None);
    }
    SSLProtocolObject *proto = transport_proto_ref(self);
    if (proto == NULL) {
        return NULL;
    }
    PyObject *r = write_appdata_one(proto, data);
    Py_DECREF(proto);
    return r;
}

static PyObject *
tls_writelines(SSLTransportObject *self, PyObject *list_of_data)
{
    SSLProtocolObject *proto = transport_proto_ref(self);
    if (proto == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    if (proto->state == ST_FLUSHING || proto->state == ST_SHUTDOWN
        || proto->state == ST_UNWRAPPED) {
        warn_closed_write(proto);
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *iterator = PyObject_GetIter(list_of_data);
    if (iterator == NULL) {
        goto done;
    }
    PyObject *item;
    while ((item = PyIter_Next(iterator)) != NULL) {
        int rc = backlog_append(proto, item);
        Py_DECREF(item);
        if (rc < 0) {
            break;
        }
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred()) {
        goto done;
    }
    if (proto->state == ST_WRAPPED && do_write(proto) < 0
        && catch_fatal(proto, "Fatal error on SSL protocol") < 0) {
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(proto);
    return result;
}

static PyObject *
tls_write_eof(SSLTransportObject *self, PyObject *unused)
{
    PyErr_SetNone(PyExc_NotImplementedError);
    return NULL;
}

static PyObject *
tls_can_write_eof(SSLTransportObject *self, PyObject *unused)
{
    Py_RETURN_FALSE;
}

static PyObject *
tls_force_close(SSLTransportObject *self, PyObject *exc)
{
    self->closed = 1;
    if (self->proto != NULL) {
        SSLProtocolObject *proto = (SSLProtocolObject *)Py_NewRef(self->proto);
        int rc = abort_connection(proto, exc == Py_None ? NULL : exc);
        Py_DECREF(proto);
        if (rc < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
tls_abort(SSLTransportObject *self, PyObject *unused)
{
    return tls_force_close(self, Py_None);
}

static PyObject *
tls_append_write_backlog(SSLTransportObject *self, PyObject *data)
{
    /* data's buffer protocol (__buffer__) may close the transport again */
    SSLProtocolObject *proto = transport_proto_ref(self);
    if (proto == NULL) {
        return NULL;
    }
    int rc = backlog_append(proto, data);
    Py_DECREF(proto);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
tls_get_protocol_paused(SSLTransportObject *self, void *closure)
{
    SSLProtocolObject *proto = transport_proto(self);
    return proto ? PyBool_FromLong(proto->app_writing_paused) : NULL;
}

static PyObject *
tls_get_ssl_protocol(SSLTransportObject *self, void *closure)
{
    return Py_NewRef(self->proto ? (PyObject *)self->proto : Py_None);
}

static PyObject *
tls_get_closed(SSLTransportObject *self, void *closure)
{
    return PyBool_FromLong(self->closed);
}

static int
tls_set_closed(SSLTransportObject *self, PyObject *value, void *closure)
{
    int truth = value ? PyObject_IsTrue(value) : -1;
    if (truth < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "cannot delete _closed");
        }
        return -1;
    }
    self->closed = (char)truth;
    return 0;
}

static PyObject *
tls_get_loop(SSLTransportObject *self, void *closure)
{
    return Py_NewRef(self->loop ? self->loop : Py_None);
}

static int
tls_traverse(SSLTransportObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->dict);
    Py_VISIT(self->proto);
    Py_VISIT(self->loop);
    for (int i = 0; i < TLS_RESERVED_SLOTS; i++) {
        Py_VISIT(self->asyncio_slot_storage[i]);
    }
    return 0;
}

static int
tls_clear(SSLTransportObject *self)
{
    Py_CLEAR(self->dict);
    Py_CLEAR(self->proto);
    Py_CLEAR(self->loop);
    for (int i = 0; i < TLS_RESERVED_SLOTS; i++) {
        Py_CLEAR(self->asyncio_slot_storage[i]);
    }
    return 0;
}

static void
tls_finalize(SSLTransportObject *self)
{
    if (self->closed) {
        return;
    }
    self->closed = 1;
    PyObject *saved = compat_fetch_exception();
    if (PyErr_WarnEx(PyExc_ResourceWarning,
                     "unclosed transport <asyncio._SSLProtocolTransport object>", 1) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    if (saved != NULL) {
        compat_restore_exception(saved);
    }
}

static void
tls_dealloc(SSLTransportObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;  /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    tls_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *
tls_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyErr_SetString(PyExc_TypeError,
                    "SSLTransport objects are made by SSLProtocol (its _app_transport)");
    return NULL;
}

static PyMethodDef tls_methods[] = {
    {"get_extra_info", (PyCFunction)(void (*)(void))tls_get_extra_info,
     METH_VARARGS | METH_KEYWORDS, "Get optional transport information."},
    {"set_protocol", (PyCFunction)tls_set_protocol, METH_O, "Set a new protocol."},
    {"get_protocol", (PyCFunction)tls_get_protocol, METH_NOARGS, "Return the current protocol."},
    {"is_closing", (PyCFunction)tls_is_closing, METH_NOARGS,
     "Return True if the transport is closing or closed."},
    {"close", (PyCFunction)tls_close, METH_NOARGS,
     "Flush buffered data, send close_notify; connection_lost(None) follows."},
    {"is_reading", (PyCFunction)tls_is_reading, METH_NOARGS, NULL},
    {"pause_reading", (PyCFunction)tls_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", (PyCFunction)tls_resume_reading, METH_NOARGS, NULL},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))tls_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_write_buffer_limits", (PyCFunction)tls_get_write_buffer_limits, METH_NOARGS, NULL},
    {"get_write_buffer_size", (PyCFunction)tls_get_write_buffer_size, METH_NOARGS, NULL},
    {"set_read_buffer_limits", (PyCFunction)(void (*)(void))tls_set_read_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_read_buffer_limits", (PyCFunction)tls_get_read_buffer_limits, METH_NOARGS, NULL},
    {"get_read_buffer_size", (PyCFunction)tls_get_read_buffer_size, METH_NOARGS, NULL},
    {"write", (PyCFunction)tls_write, METH_O, "Write data (encrypted) without blocking."},
    {"writelines", (PyCFunction)tls_writelines, METH_O, NULL},
    {"write_eof", (PyCFunction)tls_write_eof, METH_NOARGS, "Not supported by TLS."},
    {"can_write_eof", (PyCFunction)tls_can_write_eof, METH_NOARGS, NULL},
    {"abort", (PyCFunction)tls_abort, METH_NOARGS, "Close at once, dropping buffered data."},
    {"_force_close", (PyCFunction)tls_force_close, METH_O, NULL},
    {"_test__append_write_backlog", (PyCFunction)tls_append_write_backlog, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tls_getsets[] = {
    {"_protocol_paused", (getter)tls_get_protocol_paused, NULL, NULL, NULL},
    {"_ssl_protocol", (getter)tls_get_ssl_protocol, NULL, NULL, NULL},
    {"_closed", (getter)tls_get_closed, (setter)tls_set_closed, NULL, NULL},
    {"_loop", (getter)tls_get_loop, NULL, NULL, NULL},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef tls_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SSLTransportObject, weakreflist), READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(SSLTransportObject, dict), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot tls_slots[] = {
    {Py_tp_new, tls_new},
    {Py_tp_dealloc, tls_dealloc},
    {Py_tp_finalize, tls_finalize},
    {Py_tp_traverse, tls_traverse},
    {Py_tp_clear, tls_clear},
    {Py_tp_methods, tls_methods},
    {Py_tp_getset, tls_getsets},
    {Py_tp_members, tls_members},
    {Py_tp_doc, "The application's transport of a TLS connection (asyncio's "
                "_SSLProtocolTransport in C)."},
    {0, NULL},
};

static PyType_Spec tls_spec = {
    .name = "pyasync_c._loop.SSLTransport",
    .basicsize = sizeof(SSLTransportObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = tls_slots,
};

static PyType_Slot window_slots[] = {
    {Py_tp_dealloc, window_dealloc},
    {Py_bf_getbuffer, window_getbuffer},
    {Py_bf_releasebuffer, window_releasebuffer},
    {0, NULL},
};

static PyType_Spec window_spec = {
    .name = "pyasync_c._loop._TLSWindow",
    .basicsize = sizeof(WindowObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = window_slots,
};

static PyTypeObject *
make_type(PyObject *module, PyType_Spec *spec, const char *base_module, const char *base_name,
          Py_ssize_t room)
{
    PyObject *mod = PyImport_ImportModule(base_module);
    PyObject *base = mod ? PyObject_GetAttrString(mod, base_name) : NULL;
    Py_XDECREF(mod);
    if (base == NULL) {
        return NULL;
    }
    PyTypeObject *type = make_type_in_room(module, spec, base, room);
    Py_DECREF(base);
    return type;
}

int
tls_transport_init(PyObject *module, ModuleState *state)
{
    G.module_state = state;
    struct { PyObject **slot; const char *text; } names[] = {
        {&G.str_write, "write"}, {&G.str_close, "close"}, {&G.str_abort, "abort"},
        {&G.str_force_close, "_force_close"}, {&G.str_pause_reading, "pause_reading"},
        {&G.str_resume_reading, "resume_reading"}, {&G.str_get_extra_info, "get_extra_info"},
        {&G.str_call_later, "call_later"}, {&G.str_call_soon, "call_soon"},
        {&G.str_cancel, "cancel"}, {&G.str_get_debug, "get_debug"}, {&G.str_time, "time"},
        {&G.str_debug, "debug"}, {&G.str_warning, "warning"}, {&G.str_wrap_bio, "wrap_bio"},
        {&G.str_server_side, "server_side"}, {&G.str_server_hostname, "server_hostname"},
        {&G.str_sslobj, "_sslobj"},
        {&G.str_check_handshake, "_check_handshake_timeout"},
        {&G.str_check_shutdown, "_check_shutdown_timeout"},
        {&G.str_resume_cb, "_resume_reading_cb"}, {&G.str_exc_info, "exc_info"},
        {&G.str_sslcontext, "sslcontext"}, {&G.str_ssl_object, "ssl_object"},
        {&G.str_peercert, "peercert"}, {&G.str_cipher, "cipher"},
        {&G.str_compression, "compression"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (intern_name(names[i].slot, names[i].text) < 0) {
            return -1;
        }
    }
    G.WindowType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &window_spec, NULL);
    if (G.WindowType == NULL) {
        return -1;
    }
    G.ProtocolType = make_type(module, &protocol_spec, "asyncio.protocols", "BufferedProtocol",
                               (Py_ssize_t)offsetof(SSLProtocolObject, dict));
    if (G.ProtocolType == NULL) {
        return -1;
    }
    /* max_size: a class attribute, as on asyncio's SSLProtocol */
    PyObject *max_size = PyLong_FromLong(TLS_MAX_SIZE);
    if (max_size == NULL || PyObject_SetAttrString((PyObject *)G.ProtocolType, "max_size",
                                                   max_size) < 0) {
        Py_XDECREF(max_size);
        return -1;
    }
    Py_DECREF(max_size);
    G.TransportType = make_type(module, &tls_spec, "asyncio.transports", "_FlowControlMixin",
                                (Py_ssize_t)offsetof(SSLTransportObject, dict));
    return G.TransportType ? 0 : -1;
}
