/* gather.c: pyasync_c._primitives.gather() and its outer future type
 * _GatheringFuture, a drop-in for asyncio.gather that works on any loop.
 *
 * Semantics follow the running CPython's asyncio.gather (3.11 vs 3.12+ is
 * chosen at build time through PY_VERSION_HEX).
 *
 * Objects and their lifecycle
 * - GatherState (one per module instance): caches asyncio's Future/Task
 *   types, CancelledError, the asyncio.events/tasks modules, Future method
 *   descriptors and interned names. It is the module state of a private
 *   holder module (pyasync_c._primitives._gather_state, m_size > 0, GC-aware
 *   through m_traverse/m_clear/m_free) that is the `self` of the gather
 *   builtin; every outer future holds a strong reference to the holder.
 * - _GatheringFuture (the "outer"): a heap subclass of _asyncio.Future. Its
 *   own data (GatherData) lives right after the base Future's layout, at an
 *   offset computed from the base's tp_basicsize (the base layout is opaque).
 *   gather() allocates it first, before the loop is known, so the children's
 *   callbacks always have somewhere to point; Future.__init__(loop=...) runs
 *   once the loop is known and only then is the outer "ready". A callback
 *   firing on a non-ready outer behaves like stdlib's `outer is None` case.
 * - child callback: one builtin per gather() call, bound with self=outer
 *   (PyCFunction_NewEx), added to each distinct child with
 *   add_done_callback(). outer -> children -> callbacks -> outer is a cycle
 *   broken when the children complete (futures drop their callbacks) or by
 *   the GC (traverse/clear below).
 * - 3.11 only, batch callback: consecutive children that are already-done C
 *   Futures/Tasks share one loop.call_soon() handle (self = (outer, list))
 *   scheduled where the first of them would have been, instead of one handle
 *   each; the order of everything in the ready queue is unchanged.
 */
#include "primitives.h"
#include "waiters.h"

#include <stddef.h>
#include <stdalign.h>

#define PY312 (PY_VERSION_HEX >= 0x030C0000)

/* ------------------------------------------------------------------ */
/* interned names                                                      */

enum {
    S_cancelled, S_exception, S_result, S_cancel, S_add_done_callback,
    S_done, S_get_loop, S__loop, S__make_cancelled_error, S__cancel_message,
    S__log_destroy_pending, S_create_task, S_close, S_create_future,
    S_set_result, S_call_soon, S_return_exceptions, S__asyncio_future_blocking,
    S_ensure_future, S_get_event_loop, S_loop, S_msg,
    S__check_closed, S__closed, S__task_factory, S__debug, S_Task,
    S__call_soon, S_get_debug, S__ready, S_Handle, S_events, S_context,
    S__COUNT
};

static const char *const name_strs[S__COUNT] = {
    "cancelled", "exception", "result", "cancel", "add_done_callback",
    "done", "get_loop", "_loop", "_make_cancelled_error", "_cancel_message",
    "_log_destroy_pending", "create_task", "close", "create_future",
    "set_result", "call_soon", "return_exceptions", "_asyncio_future_blocking",
#if PY312
    "ensure_future", "get_event_loop",
#else
    "_ensure_future", "_get_event_loop",
#endif
    "loop", "msg",
    "_check_closed", "_closed", "_task_factory", "_debug", "Task",
    "_call_soon", "get_debug", "_ready", "Handle", "events", "context",
};

/* Methods of _asyncio.Future/Task called on children; cached as unbound
 * descriptors per exact type so calls skip the method lookup. */
enum { M_done, M_cancelled, M_exception, M_result, M_get_loop,
       M_add_done_callback, M__make_cancelled_error, M__COUNT };
static const int method_names[M__COUNT] = {
    S_done, S_cancelled, S_exception, S_result, S_get_loop,
    S_add_done_callback, S__make_cancelled_error,
};

typedef struct {
    PyTypeObject *outer_type;
    PyTypeObject *future_type;   /* _asyncio.Future */
    PyTypeObject *task_type;     /* _asyncio.Task */
    PyObject *cancelled_error;   /* asyncio.CancelledError */
    PyObject *events_mod;        /* asyncio.events */
    PyObject *tasks_mod;         /* asyncio.tasks */
    PyObject *base_create_task;  /* BaseEventLoop.create_task (function) */
    PyObject *base_check_closed; /* BaseEventLoop._check_closed (function) */
    PyObject *base_call_soon;    /* BaseEventLoop.call_soon (function) */
    PyObject *base__call_soon;   /* BaseEventLoop._call_soon (function) */
    PyObject *base_get_debug;    /* BaseEventLoop.get_debug (function) */
    PyObject *base_events_mod;   /* asyncio.base_events */
    PyObject *handle_type;       /* asyncio.events.Handle */
    PyObject *deque_type;        /* collections.deque */
    PyObject *m_done;            /* Future.done (method descriptor) */
    PyObject *m_set_result;
    PyObject *m_set_exception;
    PyObject *kw_msg;            /* ("msg",) */
    PyObject *kw_loop;           /* ("loop",) */
    PyObject *kw_context;        /* ("context",) */
    PyObject *empty_tuple;
    PyObject *s[S__COUNT];
    PyObject *fut_m[M__COUNT];   /* _asyncio.Future.<method> */
    PyObject *task_m[M__COUNT];  /* _asyncio.Task.<method> */
} GatherState;

typedef struct {
    PyObject *state;       /* GatherState, strong */
    PyObject *children;    /* list, one entry per argument */
    Py_ssize_t nfuts;      /* distinct children */
    Py_ssize_t nfinished;
    char return_exceptions;
    char cancel_requested;
    char ready;            /* Future.__init__ done */
} GatherData;

#define ALIGN_UP(n, a) (((n) + (a) - 1) / (a) * (a))

static inline Py_ssize_t
data_offset_for_base(PyTypeObject *base)
{
    return ALIGN_UP(base->tp_basicsize, (Py_ssize_t)alignof(max_align_t));
}

static inline Py_ssize_t
data_offset(PyTypeObject *outer_type)
{
    return data_offset_for_base(outer_type->tp_base);
}

static inline GatherData *
GD(PyObject *outer)
{
    return (GatherData *)((char *)outer + data_offset(Py_TYPE(outer)));
}

static inline GatherState *
ST(PyObject *outer)
{
    return (GatherState *)PyModule_GetState(GD(outer)->state);
}

/* ------------------------------------------------------------------ */
/* small helpers                                                       */

static inline PyObject *
call0(PyObject *obj, PyObject *name)
{
    return PyObject_VectorcallMethod(name, &obj, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static inline PyObject *
call1(PyObject *obj, PyObject *name, PyObject *arg)
{
    PyObject *args[2] = {obj, arg};
    return PyObject_VectorcallMethod(name, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static inline int
is_c_future(GatherState *st, PyObject *obj)
{
    PyTypeObject *tp = Py_TYPE(obj);
    return tp == st->future_type || tp == st->task_type;
}

/* obj.<method>(), straight through the cached descriptor for exact C
 * Futures/Tasks. */
static inline PyObject *
mcall0(GatherState *st, PyObject *obj, int m)
{
    PyTypeObject *tp = Py_TYPE(obj);
    if (tp == st->future_type) return PyObject_Vectorcall(st->fut_m[m], &obj, 1, NULL);
    if (tp == st->task_type) return PyObject_Vectorcall(st->task_m[m], &obj, 1, NULL);
    return call0(obj, st->s[method_names[m]]);
}

static inline PyObject *
mcall1(GatherState *st, PyObject *obj, int m, PyObject *arg)
{
    PyTypeObject *tp = Py_TYPE(obj);
    PyObject *args[2] = {obj, arg};
    if (tp == st->future_type) return PyObject_Vectorcall(st->fut_m[m], args, 2, NULL);
    if (tp == st->task_type) return PyObject_Vectorcall(st->task_m[m], args, 2, NULL);
    return call1(obj, st->s[method_names[m]], arg);
}

static int
mcall_truth(GatherState *st, PyObject *obj, int m)
{
    PyObject *r = mcall0(st, obj, m);
    if (r == NULL) return -1;
    int t = (r == Py_True) ? 1 : (r == Py_False) ? 0 : PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

static int
outer_done(GatherState *st, PyObject *outer)
{
    PyObject *r = PyObject_Vectorcall(st->m_done, &outer, 1, NULL);
    if (r == NULL) return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

static int
outer_set(PyObject *meth, PyObject *outer, PyObject *value)
{
    PyObject *args[2] = {outer, value};
    PyObject *r = PyObject_Vectorcall(meth, args, 2, NULL);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}


/* ------------------------------------------------------------------ */
/* the per-child done callback                                         */

static int
set_cancelled_from(GatherState *st, PyObject *outer, PyObject *fut)
{
    PyObject *exc = mcall0(st, fut, M__make_cancelled_error);
    if (exc == NULL) return -1;
    int r = outer_set(st->m_set_exception, outer, exc);
    Py_DECREF(exc);
    return r;
}

static int
child_done_impl(PyObject *outer, PyObject *fut)
{
    GatherData *d = GD(outer);
    GatherState *st = (GatherState *)PyModule_GetState(d->state);
    int c;

    d->nfinished++;

    int odone = 1;
    if (d->ready && d->children != NULL) {
        odone = outer_done(st, outer);
        if (odone < 0) return -1;
    }
    if (odone) {
        /* Outer already finished (or never built): mark exceptions retrieved. */
        c = mcall_truth(st, fut, M_cancelled);
        if (c < 0) return -1;
        if (!c) {
            PyObject *r = mcall0(st, fut, M_exception);
            if (r == NULL) return -1;
            Py_DECREF(r);
        }
        return 0;
    }

    if (!d->return_exceptions) {
        c = mcall_truth(st, fut, M_cancelled);
        if (c < 0) return -1;
        if (c) return set_cancelled_from(st, outer, fut);
        PyObject *exc = mcall0(st, fut, M_exception);
        if (exc == NULL) return -1;
        if (exc != Py_None) {
            int r = outer_set(st->m_set_exception, outer, exc);
            Py_DECREF(exc);
            return r;
        }
        Py_DECREF(exc);
    }

    if (d->nfinished != d->nfuts) return 0;

    /* All children are done: collect the results in argument order. */
    PyObject *children = Py_NewRef(d->children);
    Py_ssize_t n = PyList_GET_SIZE(children);
    PyObject *results = PyList_New(n);
    PyObject *last = NULL;
    if (results == NULL) goto error;
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(children); i++) {
        PyObject *child = Py_NewRef(PyList_GET_ITEM(children, i));
        Py_XSETREF(last, child);
        PyObject *res;
        if (!d->return_exceptions && is_c_future(st, child)) {
            /* Checked as it finished: neither cancelled nor failed (else the
             * outer would be done already), and a done future never changes,
             * so cancelled()/exception() would only repeat the answer. */
            res = mcall0(st, child, M_result);
            if (res == NULL) goto error;
            PyList_SET_ITEM(results, i, res);
            continue;
        }
        c = mcall_truth(st, child, M_cancelled);
        if (c < 0) goto error;
        if (c) {
            PyObject *msg = PyObject_GetAttr(child, st->s[S__cancel_message]);
            if (msg == NULL) goto error;
            if (msg == Py_None) {
                Py_DECREF(msg);
                msg = PyUnicode_FromStringAndSize("", 0);
                if (msg == NULL) goto error;
            }
            res = PyObject_CallOneArg(st->cancelled_error, msg);
            Py_DECREF(msg);
        }
        else {
            res = mcall0(st, child, M_exception);
            if (res == Py_None) {
                Py_DECREF(res);
                res = mcall0(st, child, M_result);
            }
        }
        if (res == NULL) goto error;
        PyList_SET_ITEM(results, i, res);
    }
    /* If the children list shrank meanwhile (only via misuse), pad with None. */
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyList_GET_ITEM(results, i) == NULL)
            PyList_SET_ITEM(results, i, Py_NewRef(Py_None));
    }

    int r;
    if (d->cancel_requested && last != NULL) {
        /* As stdlib: the cancellation error comes from the last child. */
        r = set_cancelled_from(st, outer, last);
    }
    else {
        r = outer_set(st->m_set_result, outer, results);
    }
    Py_DECREF(results);
    Py_XDECREF(last);
    Py_DECREF(children);
    return r;

error:
    Py_XDECREF(results);
    Py_XDECREF(last);
    Py_DECREF(children);
    return -1;
}

static PyObject *
child_done(PyObject *outer, PyObject *fut)
{
    if (child_done_impl(outer, fut) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef child_done_def = {
    "_gather_child_done", (PyCFunction)child_done, METH_O,
    "Done-callback of a gather() child.",
};

#if !PY312
/* self is (outer, [children...]) */
static PyObject *
batch_done(PyObject *pair, PyObject *unused)
{
    PyObject *outer = PyTuple_GET_ITEM(pair, 0);
    PyObject *futs = PyTuple_GET_ITEM(pair, 1);
    PyObject *first_exc = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(futs); i++) {
        PyObject *fut = Py_NewRef(PyList_GET_ITEM(futs, i));
        if (child_done_impl(outer, fut) < 0) {
            PyObject *exc = prim_exc_fetch();
            if (first_exc == NULL) first_exc = exc;
            else Py_XDECREF(exc);
        }
        Py_DECREF(fut);
    }
    PyList_SetSlice(futs, 0, PY_SSIZE_T_MAX, NULL);
    if (first_exc != NULL) {
        prim_exc_restore(first_exc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef batch_done_def = {
    "_gather_children_done", (PyCFunction)batch_done, METH_NOARGS,
    "Done-callback of gather() children that were already done.",
};
#endif

/* ------------------------------------------------------------------ */
/* _GatheringFuture                                                    */

static int
gf_traverse(PyObject *self, visitproc visit, void *arg)
{
    GatherData *d = GD(self);
    PyTypeObject *tp = Py_TYPE(self);
    Py_VISIT(d->state);
    Py_VISIT(d->children);
    /* A heap type is visited by whichever class first is a heap type. */
    if (!(tp->tp_base->tp_flags & Py_TPFLAGS_HEAPTYPE)) Py_VISIT(tp);
    return tp->tp_base->tp_traverse(self, visit, arg);
}

static int
gf_clear(PyObject *self)
{
    GatherData *d = GD(self);
    Py_CLEAR(d->children);
    return Py_TYPE(self)->tp_base->tp_clear(self);
}

static void
gf_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyTypeObject *base = tp->tp_base;
    /* The base only runs the finalizer for exact Futures on 3.11: do it here
     * (it is idempotent), so an unretrieved exception is still logged. */
    if (PyObject_CallFinalizerFromDealloc(self) < 0) return;  /* resurrected */
    PyObject_GC_UnTrack(self);
    GatherData *d = GD(self);
    Py_CLEAR(d->children);
    Py_CLEAR(d->state);
    base->tp_dealloc(self);
    /* A heap-type base drops the reference to our type itself. */
    if (!(base->tp_flags & Py_TPFLAGS_HEAPTYPE)) Py_DECREF(tp);
}

static PyObject *
gf_cancel(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"msg", NULL};
    PyObject *msg = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:cancel", kwlist, &msg))
        return NULL;
    GatherData *d = GD(self);
    GatherState *st = (GatherState *)PyModule_GetState(d->state);
    int done = outer_done(st, self);
    if (done < 0) return NULL;
    if (done || d->children == NULL) Py_RETURN_FALSE;

    int ret = 0;
    PyObject *children = Py_NewRef(d->children);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(children); i++) {
        PyObject *child = Py_NewRef(PyList_GET_ITEM(children, i));
        PyObject *cargs[2] = {child, msg};
        PyObject *r = PyObject_VectorcallMethod(st->s[S_cancel], cargs,
                                                1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                                st->kw_msg);
        Py_DECREF(child);
        if (r == NULL) {
            Py_DECREF(children);
            return NULL;
        }
        int t = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (t < 0) {
            Py_DECREF(children);
            return NULL;
        }
        if (t) ret = 1;
    }
    Py_DECREF(children);
    if (ret) d->cancel_requested = 1;
    return PyBool_FromLong(ret);
}

static PyObject *
gf_get_children(PyObject *self, void *closure)
{
    GatherData *d = GD(self);
    if (d->children == NULL) return PyList_New(0);
    return Py_NewRef(d->children);
}

static PyObject *
gf_get_cancel_requested(PyObject *self, void *closure)
{
    return PyBool_FromLong(GD(self)->cancel_requested);
}

static int
gf_set_cancel_requested(PyObject *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _cancel_requested");
        return -1;
    }
    int t = PyObject_IsTrue(value);
    if (t < 0) return -1;
    GD(self)->cancel_requested = (char)t;
    return 0;
}

static PyMethodDef gf_methods[] = {
    {"cancel", (PyCFunction)(void (*)(void))gf_cancel, METH_VARARGS | METH_KEYWORDS,
     "cancel($self, /, msg=None)\n--\n\n"
     "Cancel all children; True if any child accepted the cancellation."},
    {NULL},
};

static PyGetSetDef gf_getset[] = {
    {"_children", gf_get_children, NULL, "The children, one per argument.", NULL},
    {"_cancel_requested", gf_get_cancel_requested, gf_set_cancel_requested,
     "Whether cancel() cancelled at least one child.", NULL},
    {NULL},
};

static PyType_Slot gf_slots[] = {
    {Py_tp_dealloc, gf_dealloc},
    {Py_tp_traverse, gf_traverse},
    {Py_tp_clear, gf_clear},
    {Py_tp_methods, gf_methods},
    {Py_tp_getset, gf_getset},
    {Py_tp_doc, "Outer future of gather(): cancel() cancels the children."},
    {0, NULL},
};

/* ------------------------------------------------------------------ */
/* ensure_future for one argument                                      */

/* The loop the default get_event_loop path gives (running loop first). */
static PyObject *
default_loop(GatherState *st)
{
    PyObject *loop = prim_running_loop();
    if (loop == NULL || loop != Py_None) return loop;
    Py_DECREF(loop);
    PyObject *fn = PyObject_GetAttr(st->events_mod, st->s[S_get_event_loop]);
    if (fn == NULL) return NULL;
    loop = PyObject_CallNoArgs(fn);
    Py_DECREF(fn);
    return loop;
}

/* futures._get_loop(fut) */
static PyObject *
future_loop(GatherState *st, PyObject *fut)
{
    if (is_c_future(st, fut)) return mcall0(st, fut, M_get_loop);
    PyObject *meth = PyObject_GetAttr(fut, st->s[S_get_loop]);
    if (meth == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return NULL;
        PyErr_Clear();
    }
    else {
        PyObject *r = PyObject_CallNoArgs(meth);
        Py_DECREF(meth);
        return r;
    }
    return PyObject_GetAttr(fut, st->s[S__loop]);
}

/* The attribute `name` of obj is exactly `expected` (False/None); a
 * missing attribute counts as "no". -1 on other errors. */
static int
attr_is(PyObject *obj, PyObject *name, PyObject *expected)
{
    PyObject *value;
#if PY_VERSION_HEX >= 0x030D0000
    if (PyObject_GetOptionalAttr(obj, name, &value) < 0) return -1;
#else
    if (_PyObject_LookupAttr(obj, name, &value) < 0) return -1;
#endif
    int r = value == expected;
    Py_XDECREF(value);
    return r;
}

/* What one gather() call carries from one child to the next.
 *
 * For asyncio's own loops, gather(*coros) would repeat the same checks for
 * every child (is create_task BaseEventLoop's, is the loop open, no task
 * factory, no debug, is tasks.Task the C Task) and copy the same current
 * context for every child's done callback. Both answers can only change
 * when Python code that is not asyncio's own runs, so they are worked out
 * once and reused for as long as none can have run since:
 * - `kw` (with `loop`) is set once loop_cacheable() said yes (or, for
 *   pyasync_c's own loop, own_loop_cacheable(): the same reasoning with
 *   LoopCore's C methods and getsets in place of asyncio's Python ones). From then on
 *   each coroutine child is tasks.Task(coro, loop=loop) made straight from
 *   `kw`. Making that Task runs only asyncio's code: _asyncio.Task.__init__
 *   calls loop.get_debug() and loop.call_soon() (-> _check_closed,
 *   _call_soon, events.Handle, self._ready.append), and loop_cacheable()
 *   checked that each of these is asyncio's unmodified one, that the loop's
 *   attributes are read without user code (generic getattr, no class-level
 *   descriptors) and that the loop is open, without factory and debug.
 * - `ctx` is one copy of the current context shared by the done callbacks
 *   of "trusted" children: exact C Futures/Tasks given as arguments and the
 *   Tasks made from `kw`. Nothing run for them is user code, so the current
 *   context cannot change between their add_done_callback() calls, and the
 *   callback (child_done, our C code) calls only C methods of C futures
 *   until the last child finishes; nothing else ever runs in that context.
 * - Any other argument (a future-like, an awaitable, a subclass instance)
 *   may run user code (its __hash__/__eq__ in arg_to_fut, its methods, a
 *   task factory, an overridden create_task...): it drops both, and since
 *   its key now sits in arg_to_fut, where later lookups may call its
 *   __eq__, `trusted` turns off and nothing is cached for the rest of the
 *   call: every later child is checked again as before.
 * Code that may run at any moment (other threads, signal handlers, GC
 * finalizers) is not ordered against the children: running it after the
 * gather() call is one of the schedules stdlib allows too. Replacing
 * asyncio's own classes' methods (Handle.__init__, Task) is not covered. */
typedef struct {
    PyObject *loop;   /* the loop `kw` was checked for */
    PyObject *kw;     /* {'loop': loop} */
    PyObject *ctx;    /* context copy for the callbacks of trusted children */
    char trusted;     /* no key in arg_to_fut can run Python code */
    char refused;     /* loop_cacheable() said no: not asked again this call */
    char fresh;       /* set by create_task(): the child is a Task made from kw */
} ChildCache;

static void
cache_drop(ChildCache *c)
{
    Py_CLEAR(c->loop);
    Py_CLEAR(c->kw);
    Py_CLEAR(c->ctx);
}

/* The loop is open, has no task factory and no debug mode: the state in
 * which create_task() is nothing but Task(coro, loop=loop). 1/0, -1 on error. */
static int
loop_is_plain(GatherState *st, PyObject *loop)
{
    int r = attr_is(loop, st->s[S__closed], Py_False);
    if (r > 0) r = attr_is(loop, st->s[S__task_factory], Py_None);
    if (r > 0) r = attr_is(loop, st->s[S__debug], Py_False);
    return r;
}

/* Whether tasks.Task(coro, loop=loop) may stand for loop.create_task(coro)
 * for all the coroutine children of one gather() call (see ChildCache). */
static int
loop_cacheable(GatherState *st, PyObject *loop)
{
    PyTypeObject *tp = Py_TYPE(loop);
    if (tp->tp_getattro != PyObject_GenericGetAttr) return 0;
    /* plain instance attributes, no descriptor of the class runs for them */
    static const int data_attrs[] = {S__closed, S__task_factory, S__debug, S__ready};
    for (size_t i = 0; i < sizeof data_attrs / sizeof data_attrs[0]; i++) {
        if (_PyType_Lookup(tp, st->s[data_attrs[i]]) != NULL) return 0;
    }
    int r;
    if ((r = prim_method_is(loop, st->s[S_create_task], st->base_create_task)) <= 0) return r;
    if ((r = prim_method_is(loop, st->s[S__check_closed], st->base_check_closed)) <= 0) return r;
    if ((r = prim_method_is(loop, st->s[S_call_soon], st->base_call_soon)) <= 0) return r;
    if ((r = prim_method_is(loop, st->s[S__call_soon], st->base__call_soon)) <= 0) return r;
    if ((r = prim_method_is(loop, st->s[S_get_debug], st->base_get_debug)) <= 0) return r;
    if ((r = loop_is_plain(st, loop)) <= 0) return r;
    PyObject *v = PyObject_GetAttr(loop, st->s[S__ready]);
    if (v == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
        PyErr_Clear();
        return 0;
    }
    r = (PyObject *)Py_TYPE(v) == st->deque_type;
    Py_DECREF(v);
    if (!r) return 0;
    if ((r = attr_is(st->tasks_mod, st->s[S_Task], (PyObject *)st->task_type)) <= 0) return r;
    if ((r = attr_is(st->base_events_mod, st->s[S_events], st->events_mod)) <= 0) return r;
    return attr_is(st->events_mod, st->s[S_Handle], st->handle_type);
}

/* The same question for pyasync_c's own loop (`own`: its LoopCore type).
 * LoopCore.create_task is _asyncio.Task(coro, loop=self) when the loop is
 * open, has no task factory and no debug mode, and making that Task calls
 * only the loop's get_debug() and call_soon(): LoopCore's C methods unless a
 * subclass or the instance overrides them. _closed, _task_factory and
 * _debug are LoopCore's C getsets. */
static int
own_loop_cacheable(GatherState *st, PyObject *loop, PyTypeObject *own)
{
    PyTypeObject *tp = Py_TYPE(loop);
    if (tp->tp_getattro != PyObject_GenericGetAttr) return 0;
    static const int getsets[] = {S__closed, S__task_factory, S__debug};
    for (size_t i = 0; i < sizeof getsets / sizeof getsets[0]; i++) {
        if (_PyType_Lookup(tp, st->s[getsets[i]]) != _PyType_Lookup(own, st->s[getsets[i]])) return 0;
    }
    static const int methods[] = {S_call_soon, S_get_debug};
    int r;
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        PyObject *ours = _PyType_Lookup(own, st->s[methods[i]]);
        if (ours == NULL) return 0;
        if ((r = prim_method_is(loop, st->s[methods[i]], ours)) <= 0) return r;
    }
    return loop_is_plain(st, loop);
}

/* tasks.Task(coro, loop=loop) with the {'loop': loop} of the cache: calling
 * the type with a ready dict saves building one per child. */
static PyObject *
task_from_cache(GatherState *st, ChildCache *cache, PyObject *coro)
{
    PyObject *args = PyTuple_Pack(1, coro);
    if (args == NULL) return NULL;
    PyObject *task = PyObject_Call((PyObject *)st->task_type, args, cache->kw);
    Py_DECREF(args);
    if (task != NULL) cache->fresh = 1;
    return task;
}

/* The first child of a loop that passed the check: fill the cache. */
static PyObject *
task_starting_cache(GatherState *st, ChildCache *cache, PyObject *loop, PyObject *coro)
{
    PyObject *kw = PyDict_New();
    if (kw == NULL) return NULL;
    if (PyDict_SetItem(kw, st->s[S_loop], loop) < 0) {
        Py_DECREF(kw);
        return NULL;
    }
    cache->kw = kw;
    Py_XSETREF(cache->loop, Py_NewRef(loop));
    return task_from_cache(st, cache, coro);
}

/* loop.create_task(coro). When the loop's create_task is asyncio's
 * BaseEventLoop one (the stdlib loops; not overridden by the class or the
 * instance), its _check_closed too, and the loop is open, has no task
 * factory and no debug mode, that method does nothing but
 * `tasks.Task(coro, loop=loop)`: call that directly and save a Python frame
 * per child. Anything else (closed, factory, debug, overridden methods,
 * other loops) goes through the method itself. The stricter check of
 * loop_cacheable() lets the following children skip the check. */
static PyObject *
create_task(GatherState *st, PyObject *loop, PyObject *coro, ChildCache *cache)
{
    if (cache->kw != NULL && cache->loop == loop) return task_from_cache(st, cache, coro);
    PyObject *found = _PyType_Lookup(Py_TYPE(loop), st->s[S_create_task]);
    if (found != st->base_create_task) {
        PyTypeObject *own = prim_own_loop_type();
        if (own != NULL && found != NULL && found == _PyType_Lookup(own, st->s[S_create_task])
            && cache->trusted && cache->kw == NULL && !cache->refused) {
            int ok = prim_method_is(loop, st->s[S_create_task], found);
            if (ok > 0) ok = own_loop_cacheable(st, loop, own);
            if (ok < 0) return NULL;
            cache->refused = !ok;
            if (ok) return task_starting_cache(st, cache, loop, coro);
        }
        return call1(loop, st->s[S_create_task], coro);  /* another loop (no bound method made) */
    }
    PyObject *meth = PyObject_GetAttr(loop, st->s[S_create_task]);
    if (meth == NULL) return NULL;
    if (PyMethod_Check(meth) && PyMethod_GET_FUNCTION(meth) == st->base_create_task
        && PyMethod_GET_SELF(meth) == loop
        && _PyType_Lookup(Py_TYPE(loop), st->s[S__check_closed]) == st->base_check_closed) {
        int plain = loop_is_plain(st, loop);
        if (plain > 0 && cache->trusted && cache->kw == NULL && !cache->refused) {
            int ok = loop_cacheable(st, loop);
            if (ok < 0) {
                Py_DECREF(meth);
                return NULL;
            }
            cache->refused = !ok;
            if (ok) {
                Py_DECREF(meth);
                return task_starting_cache(st, cache, loop, coro);
            }
        }
        if (plain < 0) {
            Py_DECREF(meth);
            return NULL;
        }
        if (plain) {
            Py_DECREF(meth);
            PyObject *task_cls = PyObject_GetAttr(st->tasks_mod, st->s[S_Task]);
            if (task_cls == NULL) return NULL;
            PyObject *args[2] = {coro, loop};
            PyObject *task = PyObject_Vectorcall(task_cls, args, 1, st->kw_loop);
            Py_DECREF(task_cls);
            return task;
        }
    }
    PyObject *task = PyObject_CallOneArg(meth, coro);
    Py_DECREF(meth);
    return task;
}

/* ensure_future(arg, loop=loop) with asyncio's rules; loop may be NULL.
 * Sets *scheduled when something may have been queued on the loop. */
static PyObject *
ensure_child(GatherState *st, PyObject *arg, PyObject *loop, int *scheduled,
             ChildCache *cache)
{
    if (is_c_future(st, arg)) {
        if (loop != NULL) {
            PyObject *l = mcall0(st, arg, M_get_loop);
            if (l == NULL) return NULL;
            Py_DECREF(l);
            if (l != loop) {
                PyErr_SetString(PyExc_ValueError,
                                "The future belongs to a different loop than "
                                "the one specified as the loop argument");
                return NULL;
            }
        }
        return Py_NewRef(arg);
    }
    *scheduled = 1;
    if (PyCoro_CheckExact(arg)) {
        PyObject *l = loop != NULL ? Py_NewRef(loop) : default_loop(st);
        if (l == NULL) return NULL;
        PyObject *task = create_task(st, l, arg, cache);
        Py_DECREF(l);
        if (task == NULL && PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            PyObject *exc = prim_exc_fetch();
            PyObject *r = call0(arg, st->s[S_close]);
            if (r == NULL) {
                PyObject *exc2 = prim_exc_fetch();
                PyException_SetContext(exc2, exc);
                prim_exc_restore(exc2);
            }
            else {
                Py_DECREF(r);
                prim_exc_restore(exc);
            }
        }
        return task;
    }
    /* Anything else (future-likes, other awaitables, wrong types): the
     * running asyncio's own ensure_future decides and wraps. */
    PyObject *fn = PyObject_GetAttr(st->tasks_mod, st->s[S_ensure_future]);
    if (fn == NULL) return NULL;
    PyObject *args[2] = {arg, loop != NULL ? loop : Py_None};
    PyObject *r = PyObject_Vectorcall(fn, args, 1, st->kw_loop);
    Py_DECREF(fn);
    return r;
}

/* fut.add_done_callback(cb). A trusted child (cache != NULL) gets the
 * cache's context copy, made at the first of them, instead of a copy of
 * its own (see ChildCache). */
static int
add_callback(GatherState *st, PyObject *fut, PyObject *cb, ChildCache *cache)
{
    PyObject *r;
    PyTypeObject *tp = Py_TYPE(fut);
    if (cache != NULL && (tp == st->task_type || tp == st->future_type)) {
        if (cache->ctx == NULL && (cache->ctx = PyContext_CopyCurrent()) == NULL) return -1;
        PyObject *args[3] = {fut, cb, cache->ctx};
        PyObject *m = tp == st->task_type ? st->task_m[M_add_done_callback]
                                          : st->fut_m[M_add_done_callback];
        r = PyObject_Vectorcall(m, args, 2, st->kw_context);
    }
    else {
        r = mcall1(st, fut, M_add_done_callback, cb);
    }
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* ------------------------------------------------------------------ */
/* gather()                                                            */

static PyObject *
gather_empty(GatherState *st)
{
    PyObject *loop = default_loop(st);
    if (loop == NULL) return NULL;
    PyObject *outer = call0(loop, st->s[S_create_future]);
    Py_DECREF(loop);
    if (outer == NULL) return NULL;
    PyObject *empty = PyList_New(0);
    if (empty == NULL) goto error;
    PyObject *r = call1(outer, st->s[S_set_result], empty);
    Py_DECREF(empty);
    if (r == NULL) goto error;
    Py_DECREF(r);
    return outer;
error:
    Py_DECREF(outer);
    return NULL;
}

static PyObject *
gather(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    GatherState *st = (GatherState *)PyModule_GetState(self);
    int return_exceptions = 0;

    if (kwnames != NULL) {
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); k++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, k);
            int eq = PyUnicode_Compare(key, st->s[S_return_exceptions]) == 0;
            if (!eq) {
                if (PyErr_Occurred()) return NULL;
                PyErr_Format(PyExc_TypeError,
                             "gather() got an unexpected keyword argument '%S'", key);
                return NULL;
            }
            return_exceptions = PyObject_IsTrue(args[nargs + k]);
            if (return_exceptions < 0) return NULL;
        }
    }
    if (nargs == 0) return gather_empty(st);

    PyTypeObject *otype = st->outer_type;
    PyObject *outer = otype->tp_alloc(otype, 0);
    if (outer == NULL) return NULL;
    GatherData *d = GD(outer);
    d->state = Py_NewRef(self);
    d->return_exceptions = (char)return_exceptions;
    /* Room for every child up front: the list stays empty (no NULL items
     * visible) and the appends below never reallocate; the same for the
     * dict of distinct arguments. */
    d->children = PyList_New(nargs);
    if (d->children != NULL) Py_SET_SIZE(d->children, 0);
    PyObject *arg_to_fut = _PyDict_NewPresized(nargs);
    PyObject *cb = PyCFunction_NewEx(&child_done_def, outer, NULL);
    PyObject *loop = NULL;
    ChildCache cache = {.trusted = 1};
#if PY312
    PyObject *done_futs = NULL;
#else
    PyObject *batch = NULL;   /* open batch of already-done children */
#endif
    if (d->children == NULL || arg_to_fut == NULL || cb == NULL) goto error;

    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyObject *arg = args[i];
        int c_arg = is_c_future(st, arg);
        if (!c_arg && !PyCoro_CheckExact(arg) && cache.trusted) {
            /* its __hash__/__eq__ may run right below (see ChildCache) */
            cache.trusted = 0;
            cache_drop(&cache);
        }
        PyObject *fut = PyDict_GetItemWithError(arg_to_fut, arg);
        if (fut != NULL) {
            Py_INCREF(fut);
        }
        else {
            if (PyErr_Occurred()) goto error;
            int scheduled = 0;
            cache.fresh = 0;
            fut = ensure_child(st, arg, loop, &scheduled, &cache);
            if (fut == NULL) goto error;
            /* Nothing but C code and asyncio's own ran for this child. */
            int trusted = cache.trusted && (c_arg || cache.fresh);
            if (!trusted) Py_CLEAR(cache.ctx);
#if !PY312
            if (scheduled) Py_CLEAR(batch);
#endif
            if (loop == NULL) {
                loop = future_loop(st, fut);
                if (loop == NULL) goto error_fut;
            }
            if (fut != arg &&
                PyObject_SetAttr(fut, st->s[S__log_destroy_pending], Py_False) < 0)
                goto error_fut;
            d->nfuts++;
            if (PyDict_SetItem(arg_to_fut, arg, fut) < 0) goto error_fut;
#if PY312
            /* a Task just made (not eagerly) is pending */
            int done = cache.fresh ? 0 : mcall_truth(st, fut, M_done);
            if (done < 0) goto error_fut;
            if (done) {
                if (done_futs == NULL && (done_futs = PyList_New(0)) == NULL)
                    goto error_fut;
                if (PyList_Append(done_futs, fut) < 0) goto error_fut;
            }
            else if (add_callback(st, fut, cb, trusted ? &cache : NULL) < 0) {
                goto error_fut;
            }
#else
            int done = 0;
            if (!cache.fresh && is_c_future(st, fut)) {
                done = mcall_truth(st, fut, M_done);
                if (done < 0) goto error_fut;
            }
            if (done) {
                /* A done C future would schedule the callback right now via
                 * loop.call_soon: schedule one handle for this run of them. */
                if (batch == NULL) {
                    PyObject *futs = PyList_New(0);
                    if (futs == NULL) goto error_fut;
                    PyObject *pair = PyTuple_Pack(2, outer, futs);
                    if (pair == NULL) {
                        Py_DECREF(futs);
                        goto error_fut;
                    }
                    PyObject *bcb = PyCFunction_NewEx(&batch_done_def, pair, NULL);
                    Py_DECREF(pair);
                    if (bcb == NULL) {
                        Py_DECREF(futs);
                        goto error_fut;
                    }
                    PyObject *r = call1(loop, st->s[S_call_soon], bcb);
                    Py_DECREF(bcb);
                    /* asyncio's own call_soon if the cache holds (checked) */
                    if (cache.kw == NULL || cache.loop != loop) Py_CLEAR(cache.ctx);
                    if (r == NULL) {
                        Py_DECREF(futs);
                        goto error_fut;
                    }
                    Py_DECREF(r);
                    batch = futs;
                }
                if (PyList_Append(batch, fut) < 0) goto error_fut;
            }
            else {
                Py_CLEAR(batch);
                if (add_callback(st, fut, cb, trusted ? &cache : NULL) < 0) goto error_fut;
            }
#endif
            if (!trusted) Py_CLEAR(cache.ctx);
        }
        int rc = PyList_Append(d->children, fut);
        Py_DECREF(fut);
        if (rc < 0) goto error;
        continue;
    error_fut:
        Py_DECREF(fut);
        goto error;
    }

    /* Future.__init__(outer, loop=loop) */
    {
        PyObject *kw = PyDict_New();
        if (kw == NULL) goto error;
        if (PyDict_SetItem(kw, st->s[S_loop], loop) < 0) {
            Py_DECREF(kw);
            goto error;
        }
        int rc = otype->tp_base->tp_init(outer, st->empty_tuple, kw);
        Py_DECREF(kw);
        if (rc < 0) goto error;
    }
    d->ready = 1;
    cache_drop(&cache);
    Py_DECREF(arg_to_fut);
    Py_DECREF(cb);
    Py_DECREF(loop);
#if PY312
    if (done_futs != NULL) {
        /* Children done at call time complete the outer right here. */
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(done_futs); i++) {
            PyObject *fut = Py_NewRef(PyList_GET_ITEM(done_futs, i));
            int rc = child_done_impl(outer, fut);
            Py_DECREF(fut);
            if (rc < 0) {
                Py_DECREF(done_futs);
                Py_DECREF(outer);
                return NULL;
            }
        }
        Py_DECREF(done_futs);
    }
#else
    Py_XDECREF(batch);
#endif
    return outer;

error:
#if PY312
    Py_XDECREF(done_futs);
#else
    Py_XDECREF(batch);
#endif
    cache_drop(&cache);
    Py_XDECREF(loop);
    Py_XDECREF(cb);
    Py_XDECREF(arg_to_fut);
    Py_DECREF(outer);
    return NULL;
}

static PyMethodDef gather_def = {
    "gather", (PyCFunction)(void (*)(void))gather, METH_FASTCALL | METH_KEYWORDS,
    "gather(*coros_or_futures, return_exceptions=False)\n--\n\n"
    "Return a future aggregating results from the given coroutines/futures\n"
    "(native drop-in for asyncio.gather; works on any event loop).",
};

/* ------------------------------------------------------------------ */
/* GatherState holder                                                  */

static int
state_traverse(PyObject *holder, visitproc visit, void *arg)
{
    GatherState *st = (GatherState *)PyModule_GetState(holder);
    if (st == NULL) return 0;
    Py_VISIT(st->outer_type);
    Py_VISIT(st->future_type);
    Py_VISIT(st->task_type);
    Py_VISIT(st->cancelled_error);
    Py_VISIT(st->events_mod);
    Py_VISIT(st->tasks_mod);
    Py_VISIT(st->base_create_task);
    Py_VISIT(st->base_check_closed);
    Py_VISIT(st->base_call_soon);
    Py_VISIT(st->base__call_soon);
    Py_VISIT(st->base_get_debug);
    Py_VISIT(st->base_events_mod);
    Py_VISIT(st->handle_type);
    Py_VISIT(st->deque_type);
    Py_VISIT(st->m_done);
    Py_VISIT(st->m_set_result);
    Py_VISIT(st->m_set_exception);
    for (int m = 0; m < M__COUNT; m++) {
        Py_VISIT(st->fut_m[m]);
        Py_VISIT(st->task_m[m]);
    }
    return 0;
}

static int
state_clear(PyObject *holder)
{
    GatherState *st = (GatherState *)PyModule_GetState(holder);
    if (st == NULL) return 0;
    Py_CLEAR(st->outer_type);
    Py_CLEAR(st->future_type);
    Py_CLEAR(st->task_type);
    Py_CLEAR(st->cancelled_error);
    Py_CLEAR(st->events_mod);
    Py_CLEAR(st->tasks_mod);
    Py_CLEAR(st->base_create_task);
    Py_CLEAR(st->base_check_closed);
    Py_CLEAR(st->base_call_soon);
    Py_CLEAR(st->base__call_soon);
    Py_CLEAR(st->base_get_debug);
    Py_CLEAR(st->base_events_mod);
    Py_CLEAR(st->handle_type);
    Py_CLEAR(st->deque_type);
    Py_CLEAR(st->m_done);
    Py_CLEAR(st->m_set_result);
    Py_CLEAR(st->m_set_exception);
    for (int m = 0; m < M__COUNT; m++) {
        Py_CLEAR(st->fut_m[m]);
        Py_CLEAR(st->task_m[m]);
    }
    return 0;
}

static void
state_free(void *holder)
{
    GatherState *st = (GatherState *)PyModule_GetState((PyObject *)holder);
    if (st == NULL) return;
    (void)state_clear((PyObject *)holder);
    Py_CLEAR(st->kw_msg);
    Py_CLEAR(st->kw_loop);
    Py_CLEAR(st->kw_context);
    Py_CLEAR(st->empty_tuple);
    for (int i = 0; i < S__COUNT; i++) Py_CLEAR(st->s[i]);
}

/* The state lives in a small private module object (module state proper):
 * it is the `self` of gather(), so gather() is a plain builtin function
 * (repr, __qualname__ and pickling like a module-level function). */
static struct PyModuleDef gather_state_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pyasync_c._primitives._gather_state",
    .m_doc = "State of pyasync_c._primitives.gather.",
    .m_size = sizeof(GatherState),
    .m_traverse = state_traverse,
    .m_clear = state_clear,
    .m_free = state_free,
};


static int
state_fill(GatherState *st, PyObject *module)
{
    for (int i = 0; i < S__COUNT; i++) {
        st->s[i] = PyUnicode_InternFromString(name_strs[i]);
        if (st->s[i] == NULL) return -1;
    }
    if ((st->kw_msg = PyTuple_Pack(1, st->s[S_msg])) == NULL) return -1;
    if ((st->kw_loop = PyTuple_Pack(1, st->s[S_loop])) == NULL) return -1;
    if ((st->kw_context = PyTuple_Pack(1, st->s[S_context])) == NULL) return -1;
    if ((st->empty_tuple = PyTuple_New(0)) == NULL) return -1;

    st->future_type = (PyTypeObject *)prim_import_attr("_asyncio", "Future");
    if (st->future_type == NULL) return -1;
    st->task_type = (PyTypeObject *)prim_import_attr("_asyncio", "Task");
    if (st->task_type == NULL) return -1;
    if (!PyType_Check(st->future_type) || !PyType_Check(st->task_type)) {
        PyErr_SetString(PyExc_TypeError, "_asyncio.Future/Task are not types");
        return -1;
    }
    if ((st->cancelled_error = prim_import_attr("asyncio.exceptions", "CancelledError")) == NULL)
        return -1;
    if ((st->events_mod = PyImport_ImportModule("asyncio.events")) == NULL) return -1;
    if ((st->tasks_mod = PyImport_ImportModule("asyncio.tasks")) == NULL) return -1;
    PyObject *base_loop = prim_import_attr("asyncio.base_events", "BaseEventLoop");
    if (base_loop == NULL) return -1;
    st->base_create_task = PyObject_GetAttr(base_loop, st->s[S_create_task]);
    st->base_check_closed = PyObject_GetAttr(base_loop, st->s[S__check_closed]);
    st->base_call_soon = PyObject_GetAttr(base_loop, st->s[S_call_soon]);
    st->base__call_soon = PyObject_GetAttr(base_loop, st->s[S__call_soon]);
    st->base_get_debug = PyObject_GetAttr(base_loop, st->s[S_get_debug]);
    Py_DECREF(base_loop);
    if (st->base_create_task == NULL || st->base_check_closed == NULL
        || st->base_call_soon == NULL || st->base__call_soon == NULL
        || st->base_get_debug == NULL)
        return -1;
    if ((st->base_events_mod = PyImport_ImportModule("asyncio.base_events")) == NULL)
        return -1;
    if ((st->handle_type = PyObject_GetAttr(st->events_mod, st->s[S_Handle])) == NULL)
        return -1;
    if ((st->deque_type = prim_import_attr("collections", "deque")) == NULL) return -1;
    for (int m = 0; m < M__COUNT; m++) {
        st->fut_m[m] = PyObject_GetAttr((PyObject *)st->future_type, st->s[method_names[m]]);
        if (st->fut_m[m] == NULL) return -1;
        st->task_m[m] = PyObject_GetAttr((PyObject *)st->task_type, st->s[method_names[m]]);
        if (st->task_m[m] == NULL) return -1;
    }
    PyObject *ft = (PyObject *)st->future_type;
    if ((st->m_done = PyObject_GetAttrString(ft, "done")) == NULL) return -1;
    if ((st->m_set_result = PyObject_GetAttrString(ft, "set_result")) == NULL) return -1;
    if ((st->m_set_exception = PyObject_GetAttrString(ft, "set_exception")) == NULL)
        return -1;

    PyTypeObject *base = st->future_type;
    PyType_Spec gf_spec = {
        .name = "pyasync_c._primitives._GatheringFuture",
        .basicsize = (int)(data_offset_for_base(base) + (Py_ssize_t)sizeof(GatherData)),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE
                 | Py_TPFLAGS_DISALLOW_INSTANTIATION,
        .slots = gf_slots,
    };
    st->outer_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &gf_spec, ft);
    if (st->outer_type == NULL) return -1;
    return 0;
}

int
prim_gather_init(PyObject *module)
{
    PyObject *fn = NULL, *modname = NULL;
    PyObject *holder = PyModule_Create(&gather_state_def);  /* zeroed state */
    if (holder == NULL) return -1;
    GatherState *st = (GatherState *)PyModule_GetState(holder);
    if (st == NULL) goto error;
    if (state_fill(st, module) < 0) goto error;
    if ((modname = PyModule_GetNameObject(module)) == NULL) goto error;
    fn = PyCFunction_NewEx(&gather_def, holder, modname);
    if (fn == NULL) goto error;
    if (PyModule_AddObjectRef(module, "gather", fn) < 0) goto error;
    if (PyModule_AddObjectRef(module, "_GatheringFuture", (PyObject *)st->outer_type) < 0)
        goto error;
    Py_DECREF(fn);
    Py_DECREF(modname);
    Py_DECREF(holder);
    return 0;
error:
    Py_XDECREF(fn);
    Py_XDECREF(modname);
    Py_DECREF(holder);
    return -1;
}
