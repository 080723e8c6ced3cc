/* Handle and TimerHandle: the objects call_soon/call_later/call_at return.
 *
 * They are C subclasses of asyncio.Handle / asyncio.TimerHandle (isinstance
 * holds; asyncio's __repr__, ordering and hashing work through our getsets).
 * Lifecycle: created by the loop with a copied (or given) context; the loop's
 * ready queue or timer heap holds a reference until the handle runs or is
 * cancelled; a cancelled TimerHandle leaves the heap at once; cancel() drops
 * the callback and its arguments like asyncio does.  Handles reference their
 * loop, so both are GC-tracked.
 */
#include "loop.h"

#include <string.h>

/* Freelist of dead handles' memory: call_soon allocates one handle per
 * callback, so reusing them saves an allocation and a large memset.  Both
 * handle types share one C layout; the type is set again on reuse.  Process-
 * wide on purpose (it is only touched with the GIL held).
 *
 * It is sized for bursts: every GC object the interpreter allocates counts
 * toward the next collection, a reused one does not.  One readiness pass
 * over thousands of connections wakes thousands of tasks at once; with 256
 * kept, each of those call_soon()s counted, collections came ~1.6x as often
 * as with 8192 and handles waiting in the ready queue were promoted to the
 * old generation, pulling full collections forward (10,000 connections
 * exchanging lines: 660 collections, 0.7 s, against 411, 0.2 s).  At most
 * HANDLE_FREELIST_MAX handles (240 bytes each: 2 MiB) are kept while a loop
 * runs; closing a loop gives back all but HANDLE_FREELIST_IDLE. */
#define HANDLE_FREELIST_MAX 8192
#define HANDLE_FREELIST_IDLE 256
/* Sanitizer and debug-interpreter builds keep no freelist: ASan then sees a
 * use of a dead handle, and getallocatedblocks() leak checks see no cache. */
#if defined(__SANITIZE_ADDRESS__) || defined(Py_DEBUG)
#define HANDLE_FREELIST_ENABLED 0
#else
#define HANDLE_FREELIST_ENABLED 1
#endif
static HandleObject *handle_freelist[HANDLE_FREELIST_MAX];
static int handle_freelist_size;

void
handle_freelist_trim(void)
{
    while (handle_freelist_size > HANDLE_FREELIST_IDLE) {
        PyObject_GC_Del(handle_freelist[--handle_freelist_size]);
    }
}

static HandleObject *
handle_alloc(PyTypeObject *type)
{
    if (handle_freelist_size == 0) {
        return (HandleObject *)PyType_GenericAlloc(type, 0);
    }
    HandleObject *handle = handle_freelist[--handle_freelist_size];
    memset(&handle->asyncio_slot_storage, 0, sizeof(HandleObject) - offsetof(HandleObject, asyncio_slot_storage));
    PyObject_Init((PyObject *)handle, type);  /* new reference, owns a type reference */
    PyObject_GC_Track(handle);
    return handle;
}

HandleObject *
handle_new(LoopObject *loop, PyTypeObject *type, PyObject *callback,
           PyObject *const *args, Py_ssize_t nargs, PyObject *context)
{
    if (!PyCallable_Check(callback)) {
        PyErr_Format(PyExc_TypeError, "a callable object was expected, got %R", callback);
        return NULL;
    }
    if (context == NULL || context == Py_None) {
        context = PyContext_CopyCurrent();
        if (context == NULL) {
            return NULL;
        }
    }
    else if (!PyContext_CheckExact(context)) {
        PyErr_Format(PyExc_TypeError, "context must be a contextvars.Context, not %.100s",
                     Py_TYPE(context)->tp_name);
        return NULL;
    }
    else {
        Py_INCREF(context);
    }
    PyObject *arg_tuple = NULL;
    if (nargs > HANDLE_INLINE_ARGS) {
        arg_tuple = PyTuple_New(nargs);
        if (arg_tuple == NULL) {
            Py_DECREF(context);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < nargs; i++) {
            PyTuple_SET_ITEM(arg_tuple, i, Py_NewRef(args[i]));
        }
    }
    HandleObject *handle = handle_alloc(type);
    if (handle == NULL) {
        Py_DECREF(context);
        Py_XDECREF(arg_tuple);
        return NULL;
    }
    handle->callback = Py_NewRef(callback);
    handle->args = arg_tuple;
    if (arg_tuple == NULL) {
        for (Py_ssize_t i = 0; i < nargs; i++) {
            handle->inline_args[i] = Py_NewRef(args[i]);
        }
    }
    handle->nargs = nargs;
    handle->context = context;
    handle->loop = (LoopObject *)Py_NewRef(loop);
    handle->heap_index = -1;
    handle->is_timer = (type == loop->state->TimerHandleType);
#if PYASYNC_C_STATS
    loop->stats.timers_scheduled += (uint64_t)handle->is_timer;
#endif
    if (loop->debug) {
        handle->source_traceback = PyObject_CallMethodNoArgs((PyObject *)loop, loop->state->str_extract_stack);
        if (handle->source_traceback == NULL) {
            Py_DECREF(handle);
            return NULL;
        }
    }
    return handle;
}

/* Hands the exception being raised to loop._report_callback_error, which
 * builds asyncio's context dict and calls the exception handler. */
static int
handle_report_error(HandleObject *handle)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        return -1;
    }
    PyObject *exc = compat_fetch_exception();
    PyObject *result = PyObject_CallMethodObjArgs((PyObject *)handle->loop, handle->loop->state->str_report_error,
                                                  (PyObject *)handle, exc, NULL);
    Py_DECREF(exc);
    if (result == NULL) {
        if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
            return -1;
        }
        PyErr_WriteUnraisable((PyObject *)handle);
        return 0;
    }
    Py_DECREF(result);
    return 0;
}

int
handle_run(HandleObject *handle)
{
    if (handle->callback == NULL) {
        return 0;
    }
    /* The callback may cancel this very handle, which drops these fields. */
    PyObject *callback = Py_NewRef(handle->callback);
    PyObject *arg_tuple = Py_XNewRef(handle->args);
    PyObject *stack[HANDLE_INLINE_ARGS];
    Py_ssize_t nargs = handle->nargs;
    PyObject *const *argv = stack;
    if (arg_tuple != NULL) {
        argv = &PyTuple_GET_ITEM(arg_tuple, 0);
    }
    else {
        for (Py_ssize_t i = 0; i < nargs; i++) {
            stack[i] = Py_NewRef(handle->inline_args[i]);
        }
    }
    PyObject *context = Py_NewRef(handle->context);
    int status = 0;
    if (PyContext_Enter(context) < 0) {
        status = handle_report_error(handle);
    }
    else {
        PyObject *result = PyObject_Vectorcall(callback, argv, (size_t)nargs, NULL);
        if (PyContext_Exit(context) < 0 && result != NULL) {
            Py_CLEAR(result);
        }
        if (result == NULL) {
            status = handle_report_error(handle);
        }
        else {
            Py_DECREF(result);
        }
    }
    Py_DECREF(callback);
    if (arg_tuple != NULL) {
        Py_DECREF(arg_tuple);
    }
    else {
        for (Py_ssize_t i = 0; i < nargs; i++) {
            Py_DECREF(stack[i]);
        }
    }
    Py_DECREF(context);
    return status;
}

/* cancel() and clearing drop the callback's arguments. */
static void
handle_drop_arguments(HandleObject *handle)
{
    Py_CLEAR(handle->args);
    for (int i = 0; i < HANDLE_INLINE_ARGS; i++) {
        Py_CLEAR(handle->inline_args[i]);
    }
    handle->nargs = 0;
}

/* ---- methods ---- */

static PyObject *
handle_cancel(HandleObject *self, PyObject *unused)
{
    if (self->cancelled) {
        Py_RETURN_NONE;
    }
    if (self->is_timer && self->heap_index >= 0) {
#if PYASYNC_C_STATS
        self->loop->stats.timers_cancelled++;
#endif
        Py_INCREF(self);
        timer_heap_remove(&self->loop->timers, self);
        Py_DECREF(self);
    }
    self->cancelled = 1;
    if (self->loop->debug && self->repr == NULL) {
        /* Keep a description of what the handle was, as asyncio does. */
        PyObject *repr = PyObject_Repr((PyObject *)self);
        if (repr == NULL) {
            return NULL;
        }
        self->repr = repr;
    }
    Py_CLEAR(self->callback);
    handle_drop_arguments(self);
    Py_RETURN_NONE;
}

static PyObject *
handle_cancelled(HandleObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->cancelled);
}

static PyObject *
handle_get_context(HandleObject *self, PyObject *unused)
{
    return Py_NewRef(self->context);
}

static PyObject *
handle_run_method(HandleObject *self, PyObject *unused)
{
    if (handle_run(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
handle_when(HandleObject *self, PyObject *unused)
{
    return PyFloat_FromDouble(self->when);
}

/* ---- attributes asyncio's Python code (repr, eq) and users read ---- */

static PyObject *
optional(PyObject *value)
{
    return Py_NewRef(value ? value : Py_None);
}

static PyObject *get_callback(HandleObject *self, void *c) { return optional(self->callback); }
static PyObject *
get_args(HandleObject *self, void *c)
{
    if (self->callback == NULL) {
        Py_RETURN_NONE;  /* cancelled */
    }
    if (self->args != NULL) {
        return Py_NewRef(self->args);
    }
    PyObject *tuple = PyTuple_New(self->nargs);
    for (Py_ssize_t i = 0; tuple != NULL && i < self->nargs; i++) {
        PyTuple_SET_ITEM(tuple, i, Py_NewRef(self->inline_args[i]));
    }
    return tuple;
}
static PyObject *get_loop(HandleObject *self, void *c) { return optional((PyObject *)self->loop); }
static PyObject *get_context(HandleObject *self, void *c) { return optional(self->context); }
static PyObject *get_cancelled(HandleObject *self, void *c) { return PyBool_FromLong(self->cancelled); }
static PyObject *get_when(HandleObject *self, void *c) { return PyFloat_FromDouble(self->when); }
static PyObject *get_scheduled(HandleObject *self, void *c) { return PyBool_FromLong(self->heap_index >= 0); }
static PyObject *get_source_traceback(HandleObject *self, void *c) { return optional(self->source_traceback); }
static PyObject *get_repr(HandleObject *self, void *c) { return optional(self->repr); }

static int
set_optional_field(PyObject **field, PyObject *value)
{
    Py_XSETREF(*field, (value == NULL || value == Py_None) ? NULL : Py_NewRef(value));
    return 0;
}

static int set_source_traceback(HandleObject *self, PyObject *v, void *c) { return set_optional_field(&self->source_traceback, v); }
static int set_repr(HandleObject *self, PyObject *v, void *c) { return set_optional_field(&self->repr, v); }

#define HANDLE_COMMON_GETSETS \
    {"_callback", (getter)get_callback, NULL, NULL, NULL}, \
    {"_args", (getter)get_args, NULL, NULL, NULL}, \
    {"_loop", (getter)get_loop, NULL, NULL, NULL}, \
    {"_context", (getter)get_context, NULL, NULL, NULL}, \
    {"_cancelled", (getter)get_cancelled, NULL, NULL, NULL}, \
    {"_source_traceback", (getter)get_source_traceback, (setter)set_source_traceback, NULL, NULL}, \
    {"_repr", (getter)get_repr, (setter)set_repr, NULL, NULL}

static PyGetSetDef handle_getsets[] = {
    HANDLE_COMMON_GETSETS,
    {NULL},
};

static PyGetSetDef timer_handle_getsets[] = {
    HANDLE_COMMON_GETSETS,
    {"_when", (getter)get_when, NULL, NULL, NULL},
    {"_scheduled", (getter)get_scheduled, NULL, NULL, NULL},
    {NULL},
};

#define HANDLE_COMMON_METHODS \
    {"cancel", (PyCFunction)handle_cancel, METH_NOARGS, "Cancel the callback; a no-op if it already ran or was cancelled."}, \
    {"cancelled", (PyCFunction)handle_cancelled, METH_NOARGS, "Return True if the handle was cancelled."}, \
    {"get_context", (PyCFunction)handle_get_context, METH_NOARGS, "Return the contextvars.Context the callback runs in."}, \
    {"_run", (PyCFunction)handle_run_method, METH_NOARGS, NULL}

static PyMethodDef handle_methods[] = {
    HANDLE_COMMON_METHODS,
    {NULL},
};

static PyMethodDef timer_handle_methods[] = {
    HANDLE_COMMON_METHODS,
    {"when", (PyCFunction)handle_when, METH_NOARGS, "Return the scheduled time, on loop.time()'s clock."},
    {NULL},
};

/* ---- GC ---- */

static int
handle_traverse(HandleObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->callback);
    Py_VISIT(self->args);
    for (int i = 0; i < HANDLE_INLINE_ARGS; i++) {
        Py_VISIT(self->inline_args[i]);
    }
    Py_VISIT(self->context);
    Py_VISIT(self->loop);
    Py_VISIT(self->source_traceback);
    Py_VISIT(self->repr);
    return 0;
}

static int
handle_clear(HandleObject *self)
{
    Py_CLEAR(self->callback);
    handle_drop_arguments(self);
    Py_CLEAR(self->context);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->source_traceback);
    Py_CLEAR(self->repr);
    return 0;
}

static void
handle_dealloc(HandleObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (type->tp_weaklistoffset && *(PyObject **)((char *)self + type->tp_weaklistoffset) != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    handle_clear(self);
    if (HANDLE_FREELIST_ENABLED && handle_freelist_size < HANDLE_FREELIST_MAX
        && type->tp_free == PyObject_GC_Del) {
        handle_freelist[handle_freelist_size++] = self;
    }
    else {
        type->tp_free((PyObject *)self);
    }
    Py_DECREF(type);
}

static PyType_Slot handle_slots[] = {
    {Py_tp_doc, "A callback scheduled by pyasync_c's loop (an asyncio.Handle)."},
    {Py_tp_methods, handle_methods},
    {Py_tp_getset, handle_getsets},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_dealloc, handle_dealloc},
    {0, NULL},
};

static PyType_Slot timer_handle_slots[] = {
    {Py_tp_doc, "A timed callback scheduled by pyasync_c's loop (an asyncio.TimerHandle)."},
    {Py_tp_methods, timer_handle_methods},
    {Py_tp_getset, timer_handle_getsets},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_dealloc, handle_dealloc},
    {0, NULL},
};

#define HANDLE_FLAGS (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION)

static PyType_Spec handle_spec = {
    .name = "pyasync_c._loop.Handle",
    .basicsize = sizeof(HandleObject),
    .flags = HANDLE_FLAGS,
    .slots = handle_slots,
};

static PyType_Spec timer_handle_spec = {
    .name = "pyasync_c._loop.TimerHandle",
    .basicsize = sizeof(HandleObject),
    .flags = HANDLE_FLAGS,
    .slots = timer_handle_slots,
};

static PyTypeObject *
make_handle_type(PyObject *module, PyObject *events, const char *base_name, PyType_Spec *spec)
{
    PyObject *base = PyObject_GetAttrString(events, base_name);
    if (base == NULL) {
        return NULL;
    }
    if (!PyType_Check(base)
        || ((PyTypeObject *)base)->tp_basicsize > (Py_ssize_t)offsetof(HandleObject, callback)) {
        PyErr_Format(PyExc_ImportError,
                     "pyasync_c: asyncio.%s's layout does not fit the space reserved for it; "
                     "this Python version is not supported", base_name);
        Py_DECREF(base);
        return NULL;
    }
    PyObject *type = PyType_FromModuleAndSpec(module, spec, base);
    Py_DECREF(base);
    if (type == NULL || PyModule_AddObjectRef(module, strrchr(spec->name, '.') + 1, type) < 0) {
        Py_XDECREF(type);
        return NULL;
    }
    return (PyTypeObject *)type;
}

int
handles_init_types(PyObject *module, ModuleState *state)
{
    PyObject *events = PyImport_ImportModule("asyncio.events");
    if (events == NULL) {
        return -1;
    }
    state->HandleType = make_handle_type(module, events, "Handle", &handle_spec);
    state->TimerHandleType = state->HandleType
        ? make_handle_type(module, events, "TimerHandle", &timer_handle_spec) : NULL;
    Py_DECREF(events);
    if (state->TimerHandleType == NULL) {
        return -1;
    }
    /* For tests: 0 in sanitizer and debug builds, which keep no freelist. */
    return PyModule_AddIntConstant(module, "_handle_freelist_max",
                                   HANDLE_FREELIST_ENABLED ? HANDLE_FREELIST_MAX : 0);
}
