/* getaddrinfo / getnameinfo on libuv's thread pool: the module functions
 * _loop.getaddrinfo(loop, host, port, family=0, type=0, proto=0, flags=0) and
 * _loop.getnameinfo(loop, sockaddr, flags=0), each returning a Future of the
 * loop; loop.py's Loop.getaddrinfo/getnameinfo coroutines await them.
 * Arguments, results and errors are those of socket.getaddrinfo /
 * socket.getnameinfo of the running Python.
 *
 * Owns: the in-flight DnsRequests (a GIL-guarded list of every loop's) and
 * the process-wide cache of socket objects below (the module refuses
 * subinterpreters, as sock_ops.c's names do).
 *
 * Request lifecycle:
 *   1. the arguments are checked and converted on the calling (loop) thread
 *      exactly as the socket module does; getnameinfo also turns the numeric
 *      (host, port) into a sockaddr there (AI_NUMERICHOST: no lookup);
 *   2. a DnsRequest is malloc'd holding strong references to the Future and
 *      the loop, linked into `in_flight`, counted in loop->active_io (so the
 *      loop polls while it is pending), and handed to uv_getaddrinfo /
 *      uv_getnameinfo; a synchronous libuv failure becomes the Future's
 *      exception at once;
 *   3. libuv calls back on the loop thread, possibly while the loop released
 *      the GIL to poll: the callback takes the GIL first (loop_take_gil),
 *      unlinks and uncounts the request, and, unless the Future is already
 *      done (cancelled) or the loop closed, sets its result or exception
 *      (libuv's UV_EAI_* mapped back to the system's EAI_* in
 *      socket.gaierror; EAI_SYSTEM's errno as OSError); it always frees the
 *      addrinfo list, drops both references and frees the request.
 * Closing: loop_core.c's close calls dns_cancel_requests() before running
 * libuv to completion; requests still queued are cancelled, those a pool
 * thread is already resolving are waited for (close blocks that long); their
 * callbacks see the loop closed and only clean up.  A request keeps its loop
 * alive, so a loop is never deallocated with requests in flight.
 */
#include "loop.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

typedef struct DnsRequest DnsRequest;
struct DnsRequest {
    union {
        uv_req_t base;
        uv_getaddrinfo_t addrinfo;
        uv_getnameinfo_t nameinfo;
    } uv;
    LoopObject *loop;   /* strong */
    PyObject *future;   /* strong */
    DnsRequest *prev;
    DnsRequest *next;
};

static DnsRequest *in_flight;  /* every loop's pending requests; GIL-guarded */

/* Process-wide, like sock_ops.c's names: the module refuses subinterpreters. */
static PyObject *gaierror_type;      /* socket.gaierror */
static PyObject *address_family;     /* socket.AddressFamily */
static PyObject *socket_kind;        /* socket.SocketKind */
static PyObject *family_members;     /* int -> AddressFamily member, or the int */
static PyObject *kind_members;       /* int -> SocketKind member, or the int */
static PyObject *s_done, *s_set_result, *s_set_exception;

/* ---- errors ---- */

/* The exception socket.getaddrinfo/getnameinfo raise for libuv's status. */
static PyObject *
resolve_error(int status)
{
    int code;
    switch (status) {
#ifdef EAI_ADDRFAMILY
    case UV_EAI_ADDRFAMILY: code = EAI_ADDRFAMILY; break;
#endif
    case UV_EAI_AGAIN: code = EAI_AGAIN; break;
    case UV_EAI_BADFLAGS: code = EAI_BADFLAGS; break;
#ifdef EAI_BADHINTS
    case UV_EAI_BADHINTS: code = EAI_BADHINTS; break;
#endif
#ifdef EAI_CANCELED
    case UV_EAI_CANCELED: code = EAI_CANCELED; break;
#endif
    case UV_EAI_FAIL: code = EAI_FAIL; break;
    case UV_EAI_FAMILY: code = EAI_FAMILY; break;
    case UV_EAI_MEMORY: code = EAI_MEMORY; break;
#ifdef EAI_NODATA
    case UV_EAI_NODATA: code = EAI_NODATA; break;
#endif
    case UV_EAI_NONAME: code = EAI_NONAME; break;
#ifdef EAI_OVERFLOW
    case UV_EAI_OVERFLOW: code = EAI_OVERFLOW; break;
#endif
#ifdef EAI_PROTOCOL
    case UV_EAI_PROTOCOL: code = EAI_PROTOCOL; break;
#endif
    case UV_EAI_SERVICE: code = EAI_SERVICE; break;
    case UV_EAI_SOCKTYPE: code = EAI_SOCKTYPE; break;
    default:
        if (status <= UV_EAI_ADDRFAMILY && status > UV_EAI_ADDRFAMILY - 100) {
            /* A libuv EAI code this system has no EAI_* for. */
            return PyObject_CallFunction(gaierror_type, "is", status, uv_strerror(status));
        }
        /* EAI_SYSTEM: libuv reports the errno, socket raises OSError(errno). */
        return PyObject_CallFunction(PyExc_OSError, "is", -status, strerror(-status));
    }
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

/* ---- requests ---- */

static DnsRequest *
request_new(LoopObject *loop, PyObject *future)
{
    DnsRequest *req = calloc(1, sizeof(*req));
    if (req == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    req->uv.base.data = req;
    req->loop = (LoopObject *)Py_NewRef((PyObject *)loop);
    req->future = Py_NewRef(future);
    return req;
}

static void
request_free(DnsRequest *req)
{
    Py_DECREF(req->future);
    Py_DECREF((PyObject *)req->loop);
    free(req);
}

/* After uv_getaddrinfo/uv_getnameinfo accepted the request. */
static void
request_start(DnsRequest *req)
{
    req->next = in_flight;
    if (in_flight != NULL) {
        in_flight->prev = req;
    }
    in_flight = req;
    req->loop->active_io++;
}

/* First thing in a libuv callback: the GIL, then the request leaves the
 * list.  Returns 1 if the future still wants the outcome. */
static int
request_finish(DnsRequest *req)
{
    LoopObject *loop = req->loop;
    loop_take_gil(loop);
    if (req->prev != NULL) {
        req->prev->next = req->next;
    }
    else {
        in_flight = req->next;
    }
    if (req->next != NULL) {
        req->next->prev = req->prev;
    }
    loop->active_io--;
    if (loop->closed) {
        return 0;
    }
    PyObject *done = PyObject_CallMethodNoArgs(req->future, s_done);
    if (done == NULL) {
        PyErr_WriteUnraisable(req->future);
        return 0;
    }
    int wanted = done == Py_False;
    Py_DECREF(done);
    return wanted;
}

void
dns_cancel_requests(LoopObject *loop)
{
    for (DnsRequest *req = in_flight; req != NULL; req = req->next) {
        if (req->loop == loop) {
            /* Fails (UV_EBUSY) once a pool thread runs it: then close waits. */
            (void)uv_cancel(&req->uv.base);
        }
    }
}

/* The future's outcome could not be set (out of memory...): nobody awaits
 * this error, and raising it from the loop could stop a close() half way. */
static void
report_unraisable(DnsRequest *req)
{
    PyErr_WriteUnraisable(req->future);
}

static void
on_addrinfo(uv_getaddrinfo_t *uvreq, int status, struct addrinfo *result)
{
    DnsRequest *req = uvreq->data;
    if (request_finish(req)) {
        int failed = status == 0 ? complete_future(req->future, addrinfo_to_list(result), 0)
                                 : complete_future(req->future, resolve_error(status), 1);
        if (failed < 0) {
            report_unraisable(req);
        }
    }
    uv_freeaddrinfo(result);
    request_free(req);
}

static void
on_nameinfo(uv_getnameinfo_t *uvreq, int status, const char *hostname, const char *service)
{
    DnsRequest *req = uvreq->data;
    if (request_finish(req)) {
        PyObject *value;
        if (status == 0) {
            PyObject *host = PyUnicode_DecodeFSDefault(hostname);
            value = host ? Py_BuildValue("(Ns)", host, service) : NULL;
        }
        else {
            value = resolve_error(status);
        }
        if (complete_future(req->future, value, status != 0) < 0) {
            report_unraisable(req);
        }
    }
    request_free(req);
}

/* ---- the module functions ---- */

/* Same refusals as run_in_executor (closed loop) plus libuv's: requests are
 * submitted from the loop's own thread only. */
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
    DnsRequest *req = future ? request_new(loop, future) : NULL;
    int err;
    if (req == NULL) {
        err = 0;
    }
    else if (host_text == NULL && port_text == NULL) {
        /* libuv refuses this; the system answers EAI_NONAME. */
        err = UV_EAI_NONAME;
    }
    else {
        struct addrinfo hints;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = family;
        hints.ai_socktype = socktype;
        hints.ai_protocol = proto;
        hints.ai_flags = flags;
        /* libuv copies the strings and hints. */
        err = uv_getaddrinfo(&loop->uv, &req->uv.addrinfo, on_addrinfo, host_text, port_text, &hints);
        if (err == UV_EINVAL) {
            /* libuv's own IDNA step refused the name (not UTF-8, too long):
             * the system resolver does not know such a name either. */
            err = UV_EAI_NONAME;
        }
    }
    Py_XDECREF(host_owner);
    Py_XDECREF(port_owner);
    if (req == NULL) {
        Py_XDECREF(future);
        return NULL;
    }
    if (err == 0) {
        request_start(req);
        return future;
    }
    request_free(req);
    if (complete_future(future, resolve_error(err), 1) < 0) {
        Py_DECREF(future);
        return NULL;
    }
    return future;
}

/* socket.getnameinfo's checks and its numeric (AI_NUMERICHOST) resolution of
 * the sockaddr; on success *out holds the sockaddr for uv_getnameinfo.
 * Returns 0, or -1 with the exception the future should carry set. */
static int
nameinfo_sockaddr(PyObject *sockaddr, const char *host, int port, unsigned int flowinfo,
                  unsigned int scope_id, struct sockaddr_storage *out)
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
        PyObject *exc = err == EAI_SYSTEM
            ? PyObject_CallFunction(PyExc_OSError, "is", errno, strerror(errno))
            : PyObject_CallFunction(gaierror_type, "is", err, gai_strerror(err));
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
    struct sockaddr_storage address;
    if (nameinfo_sockaddr(sockaddr, host, port, flowinfo, scope_id, &address) < 0) {
        if (complete_future(future, NULL, 1) < 0) {
            Py_CLEAR(future);
        }
        return future;
    }
    DnsRequest *req = request_new(loop, future);
    if (req == NULL) {
        Py_DECREF(future);
        return NULL;
    }
    int err = uv_getnameinfo(&loop->uv, &req->uv.nameinfo, on_nameinfo, (struct sockaddr *)&address,
                             flags);
    if (err == 0) {
        request_start(req);
        return future;
    }
    request_free(req);
    if (complete_future(future, resolve_error(err), 1) < 0) {
        Py_CLEAR(future);
    }
    return future;
}

static PyMethodDef dns_functions[] = {
    {"getaddrinfo", (PyCFunction)(void (*)(void))dns_getaddrinfo, METH_VARARGS | METH_KEYWORDS,
     "getaddrinfo(loop, host, port, family=0, type=0, proto=0, flags=0)\n--\n\n"
     "A Future of loop with socket.getaddrinfo(host, port, family, type, proto, flags),\n"
     "resolved on libuv's thread pool."},
    {"getnameinfo", (PyCFunction)(void (*)(void))dns_getnameinfo, METH_VARARGS | METH_KEYWORDS,
     "getnameinfo(loop, sockaddr, flags=0)\n--\n\n"
     "A Future of loop with socket.getnameinfo(sockaddr, flags), resolved on libuv's thread pool."},
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
