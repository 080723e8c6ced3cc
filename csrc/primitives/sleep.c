/* sleep.c: pyasync_c._primitives.sleep(delay, result=None), a drop-in for
 * asyncio.sleep that makes the sleep(0) "yield to the loop" idiom cheap.
 *
 * - delay <= 0 (Python comparison with 0): returns a _Sleep0 object, a tiny
 *   coroutine-like awaitable (send, throw, close, __await__, am_send).  When
 *   driven it yields None once -- a bare yield, which a Task answers by
 *   rescheduling its step with call_soon -- and then returns `result`.  It
 *   has the four methods collections.abc.Coroutine's subclass hook looks
 *   for, so asyncio.iscoroutine()/create_task()/ensure_future() accept it
 *   (the same way waiters.c's _WaitOp is accepted).
 * - delay > 0: returns the coroutine of asyncio.tasks.sleep as it was when
 *   this module was first executed (not asyncio.sleep, which may have been
 *   patched to us).
 * - the comparison raises (wrong type): the same stdlib coroutine is
 *   returned, so the TypeError surfaces at the await, as with stdlib.
 *
 * Objects and their lifecycle
 * - process-wide, set by the first prim_sleep_init() and kept for the life
 *   of the process (module.c's definition has m_size 0, as in waiters.c):
 *   the _Sleep0 heap type, the saved stdlib sleep, interned argument names.
 * - _Sleep0: one per sleep(<=0) call.  It owns `result` (GC-tracked, since
 *   result may be anything) until it returns it, is closed or is thrown
 *   into.  States: INIT -> SUSPENDED (after the yield) -> DONE; throw/close
 *   go straight to DONE.  send/throw on a DONE object raise "cannot reuse
 *   already awaited coroutine" (close is a no-op), as on a coroutine.
 *   Nothing it does calls back into Python, so it needs no "running" state.  Suspended or closed objects need no
 *   cleanup; one dropped in INIT emits the "coroutine 'sleep' was never
 *   awaited" RuntimeWarning from its finalizer, like a native coroutine.
 *   Dead objects' memory goes to a small process-wide freelist (as the
 *   loop's handles do), since a busy program makes one per task switch.
 */
#include "waiters.h"

#include <stddef.h>
#include <structmember.h>

enum { SL_INIT, SL_SUSPENDED, SL_DONE };

typedef struct {
    PyObject_HEAD
    PyObject *result;
    PyObject *weakreflist;       /* weakref.ref() works, as on coroutines */
    int state;
} Sleep0;

static PyTypeObject *Sleep0Type;      /* process-wide, see above */
static PyObject *stdlib_sleep;        /* asyncio.tasks.sleep as first seen */
static PyObject *s_delay, *s_result;  /* interned keyword names */
static PyObject *s_name;              /* "sleep" */
static PyObject *s_zero;              /* the cached small int 0 */

/* Freelist of dead _Sleep0 memory (GC header intact, untracked, no type
 * reference).  Only touched with the GIL held.  Off under sanitizers and
 * debug interpreters, so they see every allocation. */
#define SLEEP0_FREELIST_MAX 64
#if defined(__SANITIZE_ADDRESS__) || defined(Py_DEBUG)
#define SLEEP0_FREELIST_ENABLED 0
#else
#define SLEEP0_FREELIST_ENABLED 1
#endif
static Sleep0 *sleep0_freelist[SLEEP0_FREELIST_MAX];
static int sleep0_freelist_size;

/* ------------------------------------------------------------------ */
/* the coroutine protocol                                              */

/* One step.  `exc` (borrowed) is an exception thrown in, NULL for a send. */
static PySendResult
sleep0_step(Sleep0 *self, PyObject *exc, PyObject **out)
{
    *out = NULL;
    if (exc != NULL && self->state != SL_DONE) {  /* no try/except in sleep(): re-raise */
        self->state = SL_DONE;
        Py_CLEAR(self->result);
        prim_exc_restore(Py_NewRef(exc));
        return PYGEN_ERROR;
    }
    switch (self->state) {
    case SL_INIT:
        self->state = SL_SUSPENDED;
        *out = Py_NewRef(Py_None);     /* the bare yield */
        return PYGEN_NEXT;
    case SL_SUSPENDED:
        self->state = SL_DONE;
        *out = self->result;           /* hand over our reference */
        self->result = NULL;
        return PYGEN_RETURN;
    default:
        return prim_coro_reused(out);
    }
}

static PySendResult
sleep0_am_send(PyObject *op, PyObject *arg, PyObject **out)
{
    Sleep0 *self = (Sleep0 *)op;
    if (self->state == SL_INIT && arg != Py_None) return prim_coro_bad_first_send(out);
    return sleep0_step(self, NULL, out);
}

static PyObject *
sleep0_iternext(PyObject *op)
{
    PyObject *out;
    PySendResult r = sleep0_step((Sleep0 *)op, NULL, &out);
    return prim_coro_result(r, out, 1);
}

static PyObject *
sleep0_send(PyObject *op, PyObject *arg)
{
    PyObject *out;
    PySendResult r = sleep0_am_send(op, arg, &out);
    return prim_coro_result(r, out, 0);
}

/* throw(exc) or the legacy throw(type[, value[, tb]]): raise it at the
 * suspension point (argument handling shared with _WaitOp, waiters.c). */
static PyObject *
sleep0_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc = prim_coro_throw_exc(args, nargs, 0);   /* yields None, not a future */
    if (exc == NULL) return NULL;
    PyObject *out;
    PySendResult r = sleep0_step((Sleep0 *)op, exc, &out);
    Py_DECREF(exc);
    return prim_coro_result(r, out, 0);
}

/* GeneratorExit at the yield propagates out of sleep(): close() succeeds. */
static PyObject *
sleep0_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    Sleep0 *self = (Sleep0 *)op;
    self->state = SL_DONE;
    Py_CLEAR(self->result);
    Py_RETURN_NONE;
}

static PyObject *
sleep0_await(PyObject *op)
{
    return Py_NewRef(op);
}

/* ------------------------------------------------------------------ */
/* object lifecycle                                                    */

static void
sleep0_finalize(PyObject *op)
{
    if (((Sleep0 *)op)->state != SL_INIT) return;
    PyObject *saved = prim_exc_fetch();
    if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                         "coroutine '%U' was never awaited", s_name) < 0)
        PyErr_WriteUnraisable(op);
    if (saved != NULL) prim_exc_restore(saved);
}

static int
sleep0_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((Sleep0 *)op)->result);
    return 0;
}

static int
sleep0_clear(PyObject *op)
{
    Py_CLEAR(((Sleep0 *)op)->result);
    return 0;
}

static void
sleep0_dealloc(PyObject *op)
{
    if (((Sleep0 *)op)->state == SL_INIT) {
        if (PyObject_CallFinalizerFromDealloc(op) < 0) return;   /* resurrected */
    }
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (((Sleep0 *)op)->weakreflist != NULL) PyObject_ClearWeakRefs(op);
    sleep0_clear(op);
    /* a finalized object keeps its "finalized" GC bit: never recycle it,
     * or its successor's never-awaited warning would be skipped */
    if (SLEEP0_FREELIST_ENABLED && sleep0_freelist_size < SLEEP0_FREELIST_MAX
        && !PyObject_GC_IsFinalized(op))
        sleep0_freelist[sleep0_freelist_size++] = (Sleep0 *)op;
    else
        tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
sleep0_get_name(PyObject *op, void *closure)
{
    return Py_NewRef(s_name);
}

static PyObject *
sleep0_get_running(PyObject *op, void *closure)
{
    Py_RETURN_FALSE;       /* never observable while running: no Python code runs */
}

static PyObject *
sleep0_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<coroutine-like object %U(0) at %p>", s_name, op);
}

static PyMethodDef sleep0_methods[] = {
    {"send", sleep0_send, METH_O, "send(value) -> None once, then StopIteration(result)."},
    {"throw", (PyCFunction)(void (*)(void))sleep0_throw, METH_FASTCALL,
     "throw(exc) -> raise exc at the suspension point."},
    {"close", sleep0_close, METH_NOARGS, "close() -> finish without running further."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sleep0_getset[] = {
    {"__name__", sleep0_get_name, NULL, NULL, NULL},
    {"__qualname__", sleep0_get_name, NULL, NULL, NULL},
    {"cr_running", sleep0_get_running, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef sleep0_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Sleep0, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot sleep0_slots[] = {
    {Py_am_await, sleep0_await},
    {Py_am_send, sleep0_am_send},
    {Py_tp_iter, sleep0_await},
    {Py_tp_iternext, sleep0_iternext},
    {Py_tp_methods, sleep0_methods},
    {Py_tp_getset, sleep0_getset},
    {Py_tp_members, sleep0_members},
    {Py_tp_traverse, sleep0_traverse},
    {Py_tp_clear, sleep0_clear},
    {Py_tp_dealloc, sleep0_dealloc},
    {Py_tp_finalize, sleep0_finalize},
    {Py_tp_repr, sleep0_repr},
    {0, NULL},
};

static PyType_Spec sleep0_spec = {
    .name = "pyasync_c._primitives._Sleep0",
    .basicsize = sizeof(Sleep0),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = sleep0_slots,
};

/* ------------------------------------------------------------------ */
/* sleep()                                                             */

/* 1 if delay <= 0, 0 if not, -1 with an exception set. */
static int
delay_le_zero(PyObject *delay)
{
    if (delay == s_zero) return 1;      /* sleep(0): the literal is the cached 0 */
    if (PyFloat_CheckExact(delay)) return PyFloat_AS_DOUBLE(delay) <= 0.0;  /* NaN: 0 */
    if (PyLong_CheckExact(delay)) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(delay, &overflow);
        if (overflow != 0) return overflow < 0;
        if (v == -1 && PyErr_Occurred()) return -1;
        return v <= 0;
    }
    return PyObject_RichCompareBool(delay, s_zero, Py_LE);
}

static int
same_name(PyObject *a, PyObject *interned)
{
    return a == interned || PyUnicode_Compare(a, interned) == 0;
}

static PyObject *
prim_sleep(PyObject *module, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *delay = nargs > 0 ? args[0] : NULL;
    PyObject *result = nargs > 1 ? args[1] : NULL;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     "sleep() takes from 1 to 2 positional arguments but %zd were given", nargs);
        return NULL;
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        PyObject **slot;
        if (same_name(k, s_delay)) slot = &delay;
        else if (same_name(k, s_result)) slot = &result;
        else {
            PyErr_Format(PyExc_TypeError, "sleep() got an unexpected keyword argument '%U'", k);
            return NULL;
        }
        if (*slot != NULL) {
            PyErr_Format(PyExc_TypeError, "sleep() got multiple values for argument '%U'", k);
            return NULL;
        }
        *slot = args[nargs + i];
    }
    if (delay == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "sleep() missing 1 required positional argument: 'delay'");
        return NULL;
    }

    int le = delay_le_zero(delay);
    if (le < 0) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
        PyErr_Clear();          /* stdlib's coroutine raises it again when awaited */
        le = 0;
    }
    if (!le) return PyObject_Vectorcall(stdlib_sleep, args, nargsf, kwnames);

    Sleep0 *self;
    if (sleep0_freelist_size > 0) {
        self = sleep0_freelist[--sleep0_freelist_size];
        PyObject_Init((PyObject *)self, Sleep0Type);   /* new reference, owns a type reference */
    }
    else if ((self = PyObject_GC_New(Sleep0, Sleep0Type)) == NULL) {
        return NULL;
    }
    self->result = Py_NewRef(result != NULL ? result : Py_None);
    self->weakreflist = NULL;
    self->state = SL_INIT;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyMethodDef sleep_functions[] = {
    {"sleep", (PyCFunction)(void (*)(void))prim_sleep, METH_FASTCALL | METH_KEYWORDS,
     "sleep(delay, result=None)\n--\n\n"
     "Coroutine that completes after a given time (in seconds); same as asyncio.sleep.\n"
     "sleep(0) (any delay <= 0) yields to the event loop once without creating a\n"
     "Python coroutine."},
    {NULL, NULL, 0, NULL},
};

int
prim_sleep_init(PyObject *module)
{
    if (Sleep0Type == NULL) {
        if ((s_delay = PyUnicode_InternFromString("delay")) == NULL) return -1;
        if ((s_result = PyUnicode_InternFromString("result")) == NULL) return -1;
        if ((s_name = PyUnicode_InternFromString("sleep")) == NULL) return -1;
        if ((s_zero = PyLong_FromLong(0)) == NULL) return -1;
        PyObject *tasks = PyImport_ImportModule("asyncio.tasks");
        if (tasks == NULL) return -1;
        stdlib_sleep = PyObject_GetAttr(tasks, s_name);
        Py_DECREF(tasks);
        if (stdlib_sleep == NULL) return -1;
        Sleep0Type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &sleep0_spec, NULL);
        if (Sleep0Type == NULL) {
            Py_CLEAR(stdlib_sleep);
            return -1;
        }
    }
    return PyModule_AddFunctions(module, sleep_functions);
}
