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
 * - delay > 0, an int or a float: returns a _SleepFor object, a
 *   coroutine-like awaitable running asyncio.sleep's body in C: on the first
 *   send it finds the running loop, makes a future, arms
 *   loop.call_later(delay, _set_result_unless_cancelled, future, result) and
 *   yields the future (as `await future` does); when resumed it returns the
 *   future's result; on resume, throw or close the timer is cancelled (the
 *   coroutine's `finally: h.cancel()`).  3.13's NaN check is made first.
 * - any other delay > 0: the coroutine of asyncio.tasks.sleep as it was when
 *   this module was first executed (not asyncio.sleep, which may have been
 *   patched to us).
 * - the comparison raises (wrong type): the same stdlib coroutine is
 *   returned, so the TypeError surfaces at the await, as with stdlib.
 * - sleep itself is not a builtin function but a _CoroutineFunction
 *   (coroutine_function.c): called through vectorcall as a builtin is, and seen as a
 *   coroutine function by inspect, asyncio and unittest.mock, as
 *   asyncio.sleep (an `async def`) is.
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
 * - _SleepFor: one per sleep(>0) call.  INIT owns delay and result; after
 *   the first send, SUSPENDED owns the future and the timer handle (result
 *   was handed to call_later); DONE owns only delay (for the repr).  Its
 *   steps call back into Python (call_later, cancel, result), so a
 *   `running` flag refuses re-entry ("coroutine already executing").  One
 *   dropped in INIT warns "never awaited"; one dropped while SUSPENDED
 *   cancels its timer in the finalizer, as a coroutine's close() would run
 *   its `finally`.
 */
#include "waiters.h"
#include "coroutine_function.h"

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
static PyTypeObject *SleepForType;    /* process-wide, see above */
static PyObject *set_result_unless_cancelled;   /* our _set_result_unless_cancelled */
static PyObject *s_call_later, *s_cancel;

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
/* _SleepFor: sleep(delay > 0)                                         */

typedef struct {
    PyObject_HEAD
    PyObject *delay;
    PyObject *result;            /* INIT only */
    PyObject *future;            /* SUSPENDED only */
    PyObject *timer;             /* SUSPENDED only: the call_later handle */
    PyObject *weakreflist;
    int state;
    int running;
} SleepFor;

/* futures._set_result_unless_cancelled(fut, result), the timer's callback */
static PyObject *
sleep_set_result_unless_cancelled(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "_set_result_unless_cancelled() takes 2 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    int cancelled = prim_fut_cancelled(args[0]);
    if (cancelled < 0) return NULL;
    if (!cancelled && prim_fut_set_result(args[0], args[1]) < 0) return NULL;
    Py_RETURN_NONE;
}

/* The first send: `loop = get_running_loop(); future = loop.create_future();
 * h = loop.call_later(...)`, then yield the future. */
static PySendResult
sleep_for_start(SleepFor *self, PyObject **out)
{
#if PRIM_PY313
    double d = PyFloat_AsDouble(self->delay);   /* an int or a float: cannot fail */
    if (d == -1.0 && PyErr_Occurred()) return PYGEN_ERROR;
    if (Py_IS_NAN(d)) {
        PyErr_SetString(PyExc_ValueError, "Invalid delay: NaN (not a number)");
        return PYGEN_ERROR;
    }
#endif
    PyObject *loop = prim_running_loop();
    if (loop == NULL) return PYGEN_ERROR;
    if (loop == Py_None) {
        Py_DECREF(loop);
        PyErr_SetString(PyExc_RuntimeError, "no running event loop");
        return PYGEN_ERROR;
    }
    PyObject *future = prim_loop_new_future(loop);
    if (future == NULL) {
        Py_DECREF(loop);
        return PYGEN_ERROR;
    }
    PyObject *args[5] = {loop, self->delay, set_result_unless_cancelled, future, self->result};
    PyObject *timer = PyObject_VectorcallMethod(s_call_later, args, 5, NULL);
    Py_DECREF(loop);
    if (timer == NULL || prim_fut_set_blocking(future) < 0) {
        Py_XDECREF(timer);
        Py_DECREF(future);
        return PYGEN_ERROR;
    }
    Py_CLEAR(self->result);
    self->future = future;
    self->timer = timer;
    self->state = SL_SUSPENDED;
    *out = Py_NewRef(future);
    return PYGEN_NEXT;
}

/* `finally: h.cancel()`: 0, or -1 with the error set */
static int
sleep_for_cancel_timer(SleepFor *self)
{
    PyObject *timer = self->timer;
    self->timer = NULL;
    Py_CLEAR(self->future);
    self->state = SL_DONE;
    if (timer == NULL) return 0;
    PyObject *r = PyObject_CallMethodNoArgs(timer, s_cancel);
    Py_DECREF(timer);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* Resumed at the await: send -> the future's result (asyncio's "await
 * wasn't used with future" if it is not done); throw -> re-raise.  The
 * timer is cancelled either way; an error from that replaces the outcome,
 * as one raised in a `finally` does. */
static PySendResult
sleep_for_resume(SleepFor *self, PyObject *exc, PyObject **out)
{
    PyObject *value = NULL;
    if (exc == NULL) {
        int done = prim_fut_done(self->future);
        if (done > 0) value = prim_fut_result(self->future);
        else if (done == 0) PyErr_SetString(PyExc_RuntimeError, "await wasn't used with future");
    }
    PyObject *pending = value == NULL ? (exc != NULL ? Py_NewRef(exc) : prim_exc_fetch()) : NULL;
    if (sleep_for_cancel_timer(self) < 0) {
        Py_XDECREF(value);
        Py_XDECREF(pending);
        return PYGEN_ERROR;
    }
    if (value == NULL) {
        prim_exc_restore(pending);
        return PYGEN_ERROR;
    }
    *out = value;
    return PYGEN_RETURN;
}

static PySendResult
sleep_for_step(SleepFor *self, PyObject *exc, PyObject **out)
{
    *out = NULL;
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return PYGEN_ERROR;
    }
    PySendResult r;
    switch (self->state) {
    case SL_INIT:
        if (exc != NULL) {      /* thrown in before the first send: nothing ran */
            self->state = SL_DONE;
            Py_CLEAR(self->result);
            prim_exc_restore(Py_NewRef(exc));
            return PYGEN_ERROR;
        }
        self->running = 1;
        r = sleep_for_start(self, out);
        self->running = 0;
        if (r == PYGEN_ERROR) {
            self->state = SL_DONE;
            Py_CLEAR(self->result);
        }
        return r;
    case SL_SUSPENDED:
        self->running = 1;
        r = sleep_for_resume(self, exc, out);
        self->running = 0;
        return r;
    default:
        return prim_coro_reused(out);
    }
}

static PySendResult
sleep_for_am_send(PyObject *op, PyObject *arg, PyObject **out)
{
    SleepFor *self = (SleepFor *)op;
    if (self->state == SL_INIT && arg != Py_None && !self->running)
        return prim_coro_bad_first_send(out);
    return sleep_for_step(self, NULL, out);
}

static PyObject *
sleep_for_iternext(PyObject *op)
{
    PyObject *out;
    PySendResult r = sleep_for_step((SleepFor *)op, NULL, &out);
    return prim_coro_result(r, out, 1);
}

static PyObject *
sleep_for_send(PyObject *op, PyObject *arg)
{
    PyObject *out;
    PySendResult r = sleep_for_am_send(op, arg, &out);
    return prim_coro_result(r, out, 0);
}

static PyObject *
sleep_for_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    SleepFor *self = (SleepFor *)op;
    PyObject *exc = prim_coro_throw_exc(args, nargs, self->state == SL_SUSPENDED);
    if (exc == NULL) return NULL;
    PyObject *out;
    PySendResult r = sleep_for_step(self, exc, &out);
    Py_DECREF(exc);
    return prim_coro_result(r, out, 0);
}

/* GeneratorExit at the await propagates out after `finally: h.cancel()`. */
static PyObject *
sleep_for_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    SleepFor *self = (SleepFor *)op;
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return NULL;
    }
    Py_CLEAR(self->result);
    if (sleep_for_cancel_timer(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static void
sleep_for_finalize(PyObject *op)
{
    SleepFor *self = (SleepFor *)op;
    if (self->state == SL_DONE) return;
    PyObject *saved = prim_exc_fetch();
    if (self->state == SL_INIT) {
        if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                             "coroutine '%U' was never awaited", s_name) < 0)
            PyErr_WriteUnraisable(op);
    }
    else if (!self->running && sleep_for_cancel_timer(self) < 0) {
        PyErr_WriteUnraisable(op);
    }
    if (saved != NULL) prim_exc_restore(saved);
}

static int
sleep_for_traverse(PyObject *op, visitproc visit, void *arg)
{
    SleepFor *self = (SleepFor *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->delay);
    Py_VISIT(self->result);
    Py_VISIT(self->future);
    Py_VISIT(self->timer);
    return 0;
}

static int
sleep_for_clear(PyObject *op)
{
    SleepFor *self = (SleepFor *)op;
    Py_CLEAR(self->delay);
    Py_CLEAR(self->result);
    Py_CLEAR(self->future);
    Py_CLEAR(self->timer);
    return 0;
}

static void
sleep_for_dealloc(PyObject *op)
{
    if (((SleepFor *)op)->state != SL_DONE) {
        if (PyObject_CallFinalizerFromDealloc(op) < 0) return;   /* resurrected */
    }
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (((SleepFor *)op)->weakreflist != NULL) PyObject_ClearWeakRefs(op);
    sleep_for_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
sleep_for_get_running(PyObject *op, void *closure)
{
    return PyBool_FromLong(((SleepFor *)op)->running);
}

static PyObject *
sleep_for_repr(PyObject *op)
{
    SleepFor *self = (SleepFor *)op;
    if (self->delay == NULL) return PyUnicode_FromFormat("<coroutine-like object %U at %p>", s_name, op);
    return PyUnicode_FromFormat("<coroutine-like object %U(%R) at %p>", s_name, self->delay, op);
}


static PyMethodDef sleep_for_methods[] = {
    {"send", sleep_for_send, METH_O, "send(value): start the sleep, or finish it."},
    {"throw", (PyCFunction)(void (*)(void))sleep_for_throw, METH_FASTCALL,
     "throw(exc) -> raise exc at the suspension point (the timer is cancelled)."},
    {"close", sleep_for_close, METH_NOARGS, "close() -> cancel the timer and finish."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sleep_for_getset[] = {
    {"__name__", sleep0_get_name, NULL, NULL, NULL},
    {"__qualname__", sleep0_get_name, NULL, NULL, NULL},
    {"cr_running", sleep_for_get_running, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef sleep_for_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SleepFor, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};


static PyType_Slot sleep_for_slots[] = {
    {Py_am_await, sleep0_await},
    {Py_am_send, sleep_for_am_send},
    {Py_tp_iter, sleep0_await},
    {Py_tp_iternext, sleep_for_iternext},
    {Py_tp_methods, sleep_for_methods},
    {Py_tp_getset, sleep_for_getset},
    {Py_tp_members, sleep_for_members},
    {Py_tp_traverse, sleep_for_traverse},
    {Py_tp_clear, sleep_for_clear},
    {Py_tp_dealloc, sleep_for_dealloc},
    {Py_tp_finalize, sleep_for_finalize},
    {Py_tp_repr, sleep_for_repr},
    {0, NULL},
};

static PyType_Spec sleep_for_spec = {
    .name = "pyasync_c._primitives._SleepFor",
    .basicsize = sizeof(SleepFor),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = sleep_for_slots,
};

static PyObject *
sleep_for_new(PyObject *delay, PyObject *result)
{
    SleepFor *self = PyObject_GC_New(SleepFor, SleepForType);
    if (self == NULL) return NULL;
    self->delay = Py_NewRef(delay);
    self->result = Py_NewRef(result != NULL ? result : Py_None);
    self->future = self->timer = self->weakreflist = NULL;
    self->state = SL_INIT;
    self->running = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

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
prim_sleep(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
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
    if (!le) {
        if (PyFloat_CheckExact(delay) || PyLong_CheckExact(delay)) return sleep_for_new(delay, result);
        return PyObject_Vectorcall(stdlib_sleep, args, nargsf, kwnames);
    }

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

static PyObject *sleep_function;      /* process-wide: the `sleep` object */

static PyMethodDef sleep_functions[] = {
    {"_set_result_unless_cancelled",
     (PyCFunction)(void (*)(void))sleep_set_result_unless_cancelled, METH_FASTCALL,
     "_set_result_unless_cancelled(fut, result): sleep()'s timer callback (as asyncio.futures')."},
    {NULL, NULL, 0, NULL},
};

static const char sleep_doc[] =
    "Coroutine that completes after a given time (in seconds); same as asyncio.sleep.\n"
    "sleep(0) (any delay <= 0) yields to the event loop once without creating a\n"
    "Python coroutine; an int or float delay > 0 waits on a future and a\n"
    "call_later timer driven from C.";

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
        if ((s_call_later = PyUnicode_InternFromString("call_later")) == NULL) return -1;
        if ((s_cancel = PyUnicode_InternFromString("cancel")) == NULL) return -1;
        Sleep0Type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &sleep0_spec, NULL);
        if (Sleep0Type == NULL) {
            Py_CLEAR(stdlib_sleep);
            return -1;
        }
        SleepForType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &sleep_for_spec, NULL);
        if (SleepForType == NULL) return -1;
        sleep_function = prim_coroutine_function_new(module, "sleep", "(delay, result=None)", sleep_doc,
                                                     prim_sleep);
        if (sleep_function == NULL) return -1;
    }
    if (PyModule_AddObjectRef(module, "sleep", sleep_function) < 0) return -1;
    if (PyModule_AddFunctions(module, sleep_functions) < 0) return -1;
    if (set_result_unless_cancelled == NULL) {
        set_result_unless_cancelled = PyObject_GetAttrString(module, "_set_result_unless_cancelled");
        if (set_result_unless_cancelled == NULL) return -1;
    }
    return 0;
}
