/* Native asyncio Lock, Event, Semaphore and BoundedSemaphore.
 *
 * Semantics follow the running Python's asyncio.locks (3.11/3.12; 3.13's
 * Semaphore wake-up rules, gh-111694, are selected with PRIM_PY313).
 * Each object is a GC-tracked heap type instance holding: the loop it got
 * bound to on its first wait (the mixin's _get_loop rule, NULL until then),
 * a waitq_t of waiter futures (waiters.c) and its counter/flag.  acquire(),
 * wait(), __aenter__ and __aexit__ return a WaitOp (waiters.c) whose step
 * function below implements the coroutine body: the uncontended path
 * finishes on the first step without creating a future; the contended path
 * creates one with loop.create_future(), queues it, and on wake-up or
 * exception removes it and does the version-specific bookkeeping.
 * Objects live as long as Python references them; tp_clear drops the loop
 * and the queued futures.
 */
#include "waiters.h"
#include "coroutine_function.h"

#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *loop;
    PyObject *weakreflist;
    PyObject *dict;          /* instance __dict__ (prim_instance_dict_init) */
    waitq_t waiters;
    unsigned int type_tag;   /* see hooks_of() */
    int hooks;
    uint64_t dict_stamp;
    int inst_hooks;
    int waiters_made;        /* stdlib creates _waiters lazily: None until first wait */
    char locked;
} LockObject;

typedef struct {
    PyObject_HEAD
    PyObject *loop;
    PyObject *weakreflist;
    PyObject *dict;          /* instance __dict__ (prim_instance_dict_init) */
    waitq_t waiters;
    char value;
} EventObject;

/* A Semaphore counter.  asyncio keeps whatever value it was given and updates
 * it with `-= 1`, `+= 1`, `== 0`, `> 0`, `>=`: a float, a bool, a huge int or
 * a number-like object all work there.  Here an exact int that fits is a C
 * integer (`obj` NULL: the fast paths); anything else is kept as the object
 * and goes through the same Python operations (which may run Python code and
 * fail).  A result that is again a small exact int goes back to `n`. */
typedef struct {
    Py_ssize_t n;
    PyObject *obj;
} semval_t;

typedef struct {
    PyObject_HEAD
    PyObject *loop;
    PyObject *weakreflist;
    PyObject *dict;          /* instance __dict__ (prim_instance_dict_init) */
    waitq_t waiters;
    unsigned int type_tag;   /* see hooks_of() */
    int hooks;
    uint64_t dict_stamp;
    int inst_hooks;
    int waiters_made;
    semval_t value;
    semval_t bound_value;
} SemObject;

static PyTypeObject *EventType;

#define TAG_RESULT_NONE 1

static inline PyObject *
op_result(WaitOp *op)
{
    return Py_NewRef(op->tag == TAG_RESULT_NONE ? Py_None : Py_True);
}

static inline int
is_cancelled_error(PyObject *exc)
{
    return PyErr_GivenExceptionMatches(exc, prim_shared.CancelledError);
}

/* ------------------------------------------------------------------ */
/* shared bits: loop attribute, repr, GC                               */

/* All three structs start with HEAD, loop, weakreflist, dict, waiters. */
typedef struct {
    PyObject_HEAD
    PyObject *loop;
    PyObject *weakreflist;
    PyObject *dict;          /* instance __dict__ (prim_instance_dict_init) */
    waitq_t waiters;
} BoundObject;

static PyObject *
bound_get_loop(PyObject *self, void *c)
{
    PyObject *l = ((BoundObject *)self)->loop;
    return Py_NewRef(l ? l : Py_None);
}

static int
bound_set_loop(PyObject *self, PyObject *value, void *c)
{
    BoundObject *b = (BoundObject *)self;
    Py_XSETREF(b->loop, (value == NULL || value == Py_None) ? NULL : Py_NewRef(value));
    return 0;
}

static int
bound_traverse(PyObject *self, visitproc visit, void *arg)
{
    BoundObject *b = (BoundObject *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(b->loop);
    Py_VISIT(b->dict);
    return waitq_traverse(&b->waiters, visit, arg);
}

static int
bound_clear(PyObject *self)
{
    BoundObject *b = (BoundObject *)self;
    Py_CLEAR(b->loop);
    Py_CLEAR(b->dict);
    waitq_clear(&b->waiters);
    return 0;
}

static void
bound_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (((BoundObject *)self)->weakreflist != NULL) PyObject_ClearWeakRefs(self);
    bound_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* "<{object.__repr__(self)[1:-1]} [extra]>" like the stdlib classes */
static PyObject *
bound_repr(PyObject *self, PyObject *extra)
{
    if (extra == NULL) return NULL;
    PyObject *base = PyBaseObject_Type.tp_repr(self);
    if (base == NULL) {
        Py_DECREF(extra);
        return NULL;
    }
    PyObject *inner = PyUnicode_Substring(base, 1, PyUnicode_GET_LENGTH(base) - 1);
    Py_DECREF(base);
    if (inner == NULL) {
        Py_DECREF(extra);
        return NULL;
    }
    PyObject *r = PyUnicode_FromFormat("<%U [%U]>", inner, extra);
    Py_DECREF(inner);
    Py_DECREF(extra);
    return r;
}

static PyObject *
with_waiters(PyObject *extra, waitq_t *q)
{
    if (extra == NULL || waitq_len(q) == 0) return extra;
    PyObject *r = PyUnicode_FromFormat("%U, waiters:%zd", extra, waitq_len(q));
    Py_DECREF(extra);
    return r;
}

/* ---- Python code overriding acquire/release/locked ----
 *
 * asyncio's locks call each other through self: `async with` awaits
 * self.acquire() and calls self.release(), Semaphore.acquire() and its repr
 * ask self.locked().  The C paths do the same whenever Python code has
 * replaced one of them: a Python subclass defining it, a patch on the class
 * (mock.patch.object(asyncio.Lock, "acquire"), the classes being mutable as
 * asyncio's are) or on the instance (its __dict__).  The class part is
 * looked up once per class version: an object remembers the class's
 * tp_version_tag it last checked (CPython gives a class a new tag whenever
 * it or a base is modified; 0 means none assigned: check again), the
 * instance dict once per change of its stamp (prim_dict_stamp).  Our own
 * classes are recognised by their tp_methods array, which subclasses do not
 * inherit (and which survives a re-import of the module, unlike a type
 * pointer); their C functions are compared with what the lookup finds. */
enum { HOOK_ACQUIRE = 1, HOOK_RELEASE = 2, HOOK_LOCKED = 4 };

/* The prefix of LockObject and SemObject. */
typedef struct {
    PyObject_HEAD
    PyObject *loop;
    PyObject *weakreflist;
    PyObject *dict;
    waitq_t waiters;
    unsigned int type_tag;   /* the class's version when `hooks` was found */
    int hooks;               /* the class's HOOK_* bits */
    uint64_t dict_stamp;     /* the instance dict's stamp when `inst_hooks` was found */
    int inst_hooks;          /* the instance dict's HOOK_* bits */
} HookedObject;

static int detect_class_hooks(PyTypeObject *type);   /* after the method tables */

static inline int
class_hooks(PyObject *self)
{
    HookedObject *h = (HookedObject *)self;
    unsigned int tag = Py_TYPE(self)->tp_version_tag;
    if (tag == 0 || tag != h->type_tag) {
        h->hooks = detect_class_hooks(Py_TYPE(self));
        h->type_tag = Py_TYPE(self)->tp_version_tag;   /* the lookups assigned one */
    }
    return h->hooks;
}

#if defined(__GNUC__)
__attribute__((noinline))
#endif
static int
instance_hooks(PyObject *dict)
{
    PyObject *names[3] = {prim_shared.s_acquire, prim_shared.s_release, prim_shared.s_locked};
    return prim_dict_names(dict, names, 3);
}

/* HOOK_* bits for self: its class's, and names in its instance __dict__
 * (looked at again when its stamp changes, see prim_dict_stamp).  Cannot fail. */
static inline int
hooks_of(PyObject *self)
{
    HookedObject *h = (HookedObject *)self;
    int hooks = class_hooks(self);
    uint64_t stamp = prim_dict_stamp(h->dict);
    if (stamp != h->dict_stamp || stamp == PRIM_DICT_UNKNOWN) {
        h->inst_hooks = stamp != 0 ? instance_hooks(h->dict) : 0;
        h->dict_stamp = stamp;
    }
    return hooks | h->inst_hooks;
}

/* __aexit__(exc_type, exc, tb): `async with` awaits it immediately, so the
 * release happens on the call (no per-call awaitable); the result is the
 * shared awaitable that completes at once with None. */
static PyObject *call_release(PyObject *self);   /* after the method tables */

static PyObject *
generic_aexit(PyObject *self, PyObject *const *Py_UNUSED(exc_info))
{
    PyObject *r = call_release(self);
    if (r == NULL) return NULL;
    Py_DECREF(r);
    return prim_done_none();
}

/* asyncio's __aenter__ is `await self.acquire()`: when acquire() is
 * overridden, this returns the coroutine of a two-line Python __aenter__
 * with that body (made once, by prim_locks_init).  Returns 0 when the C
 * path applies, 1 with *result set, -1 on error. */
static PyObject *aenter_via_acquire;          /* async def __aenter__(self): await self.acquire() */

static int
aenter_override(PyObject *self, int hooks, PyObject **result)
{
    if (!(hooks & HOOK_ACQUIRE)) return 0;
    *result = PyObject_CallOneArg(aenter_via_acquire, self);
    return *result != NULL ? 1 : -1;
}

/* weakref.ref() and an instance __dict__ (mock.patch.object(lock, ...),
 * attributes set by user code), as asyncio's Python objects have */
#define MEMBERS_WEAKREF_DICT(T) \
    {"__weaklistoffset__", T_PYSSIZET, offsetof(T, weakreflist), READONLY, NULL}, \
    {"__dictoffset__", T_PYSSIZET, offsetof(T, dict), READONLY, NULL}
#define GETSET_DICT {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL}

/* ------------------------------------------------------------------ */
/* Lock                                                                */

static PyObject *
lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    LockObject *self = (LockObject *)type->tp_alloc(type, 0);
    if (self != NULL && prim_instance_dict_init(&self->dict) < 0) Py_CLEAR(self);
    return (PyObject *)self;
}

/* Lock() / Event() take no arguments: reject them with the message the
 * stdlib's Python __init__ gives (tests match "Lock.__init__() got an
 * unexpected keyword argument 'loop'"). */
static int
noargs_init(const char *cls, PyObject *args, PyObject *kwds)
{
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyObject *key = NULL, *val;
        Py_ssize_t pos = 0;
        PyDict_Next(kwds, &pos, &key, &val);
        PyErr_Format(PyExc_TypeError, "%s.__init__() got an unexpected keyword argument '%S'", cls, key);
        return -1;
    }
    if (PyTuple_GET_SIZE(args) > 0) {
        PyErr_Format(PyExc_TypeError, "%s.__init__() takes 1 positional argument but %zd were given",
                     cls, PyTuple_GET_SIZE(args) + 1);
        return -1;
    }
    return 0;
}

static int
lock_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    return noargs_init("Lock", args, kwds);
}

/* Wake the first waiter if it isn't done (Lock._wake_up_first). */
static int
lock_wake_first(LockObject *self)
{
    if (waitq_len(&self->waiters) == 0) return 0;
    PyObject *fut = Py_NewRef(waitq_peek(&self->waiters, 0));
    int d = prim_fut_done(fut);
    int rc = d < 0 ? -1 : (d ? 0 : prim_fut_set_result(fut, Py_True));
    Py_DECREF(fut);
    return rc;
}

static int
lock_acquire_step(WaitOp *op, PyObject *exc, PyObject **res)
{
    LockObject *self = (LockObject *)op->owner;
    if (op->fut == NULL) {
        if (!self->locked) {
            int any = waitq_len(&self->waiters) ? waitq_any_not_cancelled(&self->waiters) : 0;
            if (any < 0) return WOP_ERROR;
            if (!any) {
                self->locked = 1;
                *res = op_result(op);
                return WOP_DONE;
            }
        }
        PyObject *fut = prim_new_waiter(op->owner, &self->loop);
        if (fut == NULL) return WOP_ERROR;
        if (waitq_append(&self->waiters, fut) < 0) {
            Py_DECREF(fut);
            return WOP_ERROR;
        }
        self->waiters_made = 1;
        waitop_set_fut(op, fut);
        return WOP_WAIT;
    }
    waitq_remove(&self->waiters, op->fut);
    if (exc != NULL) {
        if (is_cancelled_error(exc) && !self->locked) {
            if (lock_wake_first(self) < 0) return WOP_ERROR;
        }
        return waitop_reraise(exc);
    }
    self->locked = 1;
    *res = op_result(op);
    return WOP_DONE;
}
static const waitop_kind lock_acquire_kind = {lock_acquire_step, "Lock.acquire"};

static PyObject *
lock_acquire(PyObject *self, PyObject *const *Py_UNUSED(args))
{
    return waitop_new(&lock_acquire_kind, self, NULL, 0);
}

/* __aenter__: `async with` awaits it immediately, so an uncontended lock is
 * taken on the call and the shared done awaitable returned; otherwise the
 * acquire awaitable (which re-checks when first awaited). */
static PyObject *
lock_aenter(PyObject *op, PyObject *const *Py_UNUSED(args))
{
    LockObject *self = (LockObject *)op;
    PyObject *via_acquire;
    int overridden = aenter_override(op, hooks_of(op), &via_acquire);
    if (overridden != 0) return overridden > 0 ? via_acquire : NULL;
    if (!self->locked && waitq_len(&self->waiters) == 0) {
        self->locked = 1;
        return prim_done_none();
    }
    return waitop_new(&lock_acquire_kind, op, NULL, TAG_RESULT_NONE);
}


static PyObject *
lock_release(PyObject *op, PyObject *Py_UNUSED(a))
{
    LockObject *self = (LockObject *)op;
    if (!self->locked) {
        PyErr_SetString(PyExc_RuntimeError, "Lock is not acquired.");
        return NULL;
    }
    self->locked = 0;
    if (lock_wake_first(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *
lock_locked(PyObject *self, PyObject *Py_UNUSED(a))
{
    return PyBool_FromLong(((LockObject *)self)->locked);
}

static PyObject *
lock_repr(PyObject *op)
{
    LockObject *self = (LockObject *)op;
    PyObject *extra = PyUnicode_FromString(self->locked ? "locked" : "unlocked");
    return bound_repr(op, with_waiters(extra, &self->waiters));
}

static PyObject *
lock_get_waiters(PyObject *op, void *c)
{
    LockObject *self = (LockObject *)op;
    if (!self->waiters_made) Py_RETURN_NONE;
    return waitq_snapshot(&self->waiters);
}

static PyObject *
lock_get_locked(PyObject *op, void *c)
{
    return PyBool_FromLong(((LockObject *)op)->locked);
}

static PyMethodDef lock_methods[] = {
    {"locked", lock_locked, METH_NOARGS, "Return True if lock is acquired."},
    {"release", lock_release, METH_NOARGS, "Release the lock; RuntimeError if not locked."},
    {NULL, NULL, 0, NULL},
};

/* asyncio's `async def` methods: coroutine methods (coroutine_function.h) */
static const prim_coro_method_def lock_coro_methods[] = {
    {"acquire", "(self)", lock_acquire, "Acquire the lock (awaitable); returns True."},
    {"__aenter__", "(self)", lock_aenter, NULL},
    {"__aexit__", "(self, exc_type, exc, tb)", generic_aexit, NULL},
    {NULL, NULL, NULL, NULL},
};

static PyGetSetDef lock_getset[] = {
    GETSET_DICT,
    {"_loop", bound_get_loop, bound_set_loop, NULL, NULL},
    {"_waiters", lock_get_waiters, NULL, "Snapshot of the waiter futures (None before the first wait).", NULL},
    {"_locked", lock_get_locked, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef lock_members[] = {
    MEMBERS_WEAKREF_DICT(LockObject),
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot lock_slots[] = {
    {Py_tp_new, lock_new},
    {Py_tp_init, lock_init},
    {Py_tp_repr, lock_repr},
    {Py_tp_methods, lock_methods},
    {Py_tp_getset, lock_getset},
    {Py_tp_members, lock_members},
    {Py_tp_traverse, bound_traverse},
    {Py_tp_clear, bound_clear},
    {Py_tp_dealloc, bound_dealloc},
    {Py_tp_doc, (void *)"Lock()\n--\n\nasyncio.Lock implemented in C; works on any event loop."},
    {0, NULL},
};

static PyType_Spec lock_spec = {
    .name = "pyasync_c._primitives.Lock",
    .basicsize = sizeof(LockObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = lock_slots,
};

/* ------------------------------------------------------------------ */
/* Event                                                               */

static PyObject *
event_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    EventObject *self = (EventObject *)type->tp_alloc(type, 0);
    if (self != NULL && prim_instance_dict_init(&self->dict) < 0) Py_CLEAR(self);
    return (PyObject *)self;
}

static int
event_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    return noargs_init("Event", args, kwds);
}

static int
event_wait_step(WaitOp *op, PyObject *exc, PyObject **res)
{
    EventObject *self = (EventObject *)op->owner;
    if (op->fut == NULL) {
        if (self->value) {
            *res = op_result(op);
            return WOP_DONE;
        }
        PyObject *fut = prim_new_waiter(op->owner, &self->loop);
        if (fut == NULL) return WOP_ERROR;
        if (waitq_append(&self->waiters, fut) < 0) {
            Py_DECREF(fut);
            return WOP_ERROR;
        }
        waitop_set_fut(op, fut);
        return WOP_WAIT;
    }
    waitq_remove(&self->waiters, op->fut);
    if (exc != NULL) return waitop_reraise(exc);
    *res = op_result(op);
    return WOP_DONE;
}
static const waitop_kind event_wait_kind = {event_wait_step, "Event.wait"};

static PyObject *
event_wait(PyObject *self, PyObject *const *Py_UNUSED(args))
{
    return waitop_new(&event_wait_kind, self, NULL, 0);
}

int
prim_event_set(PyObject *op)
{
    EventObject *self = (EventObject *)op;
    if (self->value) return 0;
    self->value = 1;
    return waitq_wake_all(&self->waiters, Py_True, 0);
}

void
prim_event_clear(PyObject *op)
{
    ((EventObject *)op)->value = 0;
}

/* A queue's internal `_finished` event: its methods are called from C, so
 * 3.11's instance dict made up front (prim_instance_dict_init) would not
 * pay; one is made on first use, as on 3.12+. */
PyObject *
prim_event_new(void)
{
    return EventType->tp_alloc(EventType, 0);
}

PyObject *
prim_event_wait(PyObject *ev, int result_none)
{
    return waitop_new(&event_wait_kind, ev, NULL, result_none ? TAG_RESULT_NONE : 0);
}

static PyObject *
event_set(PyObject *self, PyObject *Py_UNUSED(a))
{
    if (prim_event_set(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *
event_clear(PyObject *self, PyObject *Py_UNUSED(a))
{
    prim_event_clear(self);
    Py_RETURN_NONE;
}

static PyObject *
event_is_set(PyObject *self, PyObject *Py_UNUSED(a))
{
    return PyBool_FromLong(((EventObject *)self)->value);
}

static PyObject *
event_repr(PyObject *op)
{
    EventObject *self = (EventObject *)op;
    PyObject *extra = PyUnicode_FromString(self->value ? "set" : "unset");
    return bound_repr(op, with_waiters(extra, &self->waiters));
}

static PyObject *
event_get_waiters(PyObject *op, void *c)
{
    return waitq_snapshot(&((EventObject *)op)->waiters);
}

static PyObject *
event_get_value(PyObject *self, void *c)
{
    return PyBool_FromLong(((EventObject *)self)->value);
}

static PyMethodDef event_methods[] = {
    {"is_set", event_is_set, METH_NOARGS, "Return True if and only if the internal flag is true."},
    {"set", event_set, METH_NOARGS, "Set the flag and wake every waiter."},
    {"clear", event_clear, METH_NOARGS, "Reset the flag."},
    {NULL, NULL, 0, NULL},
};

static const prim_coro_method_def event_coro_methods[] = {
    {"wait", "(self)", event_wait, "Wait until the flag is true (awaitable); returns True."},
    {NULL, NULL, NULL, NULL},
};

static PyGetSetDef event_getset[] = {
    GETSET_DICT,
    {"_loop", bound_get_loop, bound_set_loop, NULL, NULL},
    {"_waiters", event_get_waiters, NULL, "Snapshot of the waiter futures.", NULL},
    {"_value", event_get_value, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef event_members[] = {
    MEMBERS_WEAKREF_DICT(EventObject),
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot event_slots[] = {
    {Py_tp_new, event_new},
    {Py_tp_init, event_init},
    {Py_tp_repr, event_repr},
    {Py_tp_methods, event_methods},
    {Py_tp_getset, event_getset},
    {Py_tp_members, event_members},
    {Py_tp_traverse, bound_traverse},
    {Py_tp_clear, bound_clear},
    {Py_tp_dealloc, bound_dealloc},
    {Py_tp_doc, (void *)"Event()\n--\n\nasyncio.Event implemented in C; works on any event loop."},
    {0, NULL},
};

static PyType_Spec event_spec = {
    .name = "pyasync_c._primitives.Event",
    .basicsize = sizeof(EventObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = event_slots,
};

/* ------------------------------------------------------------------ */
/* Semaphore / BoundedSemaphore                                        */

/* ---- the counter (semval_t) ---- */

/* Stores v (borrowed) into *val. */
static void
semval_store(semval_t *val, PyObject *v)
{
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
        /* +-1 must not overflow n: keep one step of margin on both sides */
        if (!overflow && n > -(long long)PY_SSIZE_T_MAX && n < (long long)PY_SSIZE_T_MAX) {
            val->n = (Py_ssize_t)n;
            Py_CLEAR(val->obj);
            return;
        }
        PyErr_Clear();
    }
    Py_XSETREF(val->obj, Py_NewRef(v));
}

/* The counter as asyncio's `_value` (new reference). */
static PyObject *
semval_get(const semval_t *val)
{
    return val->obj ? Py_NewRef(val->obj) : PyLong_FromSsize_t(val->n);
}

/* `value += delta` (delta is +1 or -1): 0, or -1 with an exception. */
static int
semval_add(semval_t *val, int delta)
{
    if (val->obj == NULL) {
        val->n += delta;  /* semval_store keeps a step of margin */
        if (val->n > -PY_SSIZE_T_MAX && val->n < PY_SSIZE_T_MAX) return 0;
        val->obj = PyLong_FromSsize_t(val->n);  /* leave the C range */
        if (val->obj == NULL) {
            val->n -= delta;
            return -1;
        }
        return 0;
    }
    /* The old value is ours during the call: Python code may store another. */
    PyObject *old = Py_NewRef(val->obj);
    PyObject *one = PyLong_FromLong(1);
    PyObject *r = one == NULL ? NULL
                  : delta > 0 ? PyNumber_InPlaceAdd(old, one) : PyNumber_InPlaceSubtract(old, one);
    Py_XDECREF(one);
    Py_DECREF(old);
    if (r == NULL) return -1;
    semval_store(val, r);
    Py_DECREF(r);
    return 0;
}

/* `value <op> 0` for op Py_EQ or Py_GT: 1/0/-1. */
static int
semval_cmp_zero(const semval_t *val, int op)
{
    if (val->obj == NULL) return op == Py_EQ ? val->n == 0 : val->n > 0;
    PyObject *v = Py_NewRef(val->obj);
    PyObject *zero = PyLong_FromLong(0);
    int r = zero ? PyObject_RichCompareBool(v, zero, op) : -1;
    Py_XDECREF(zero);
    Py_DECREF(v);
    return r;
}

/* `a >= b`: 1/0/-1. */
static int
semval_ge(const semval_t *a, const semval_t *b)
{
    if (a->obj == NULL && b->obj == NULL) return a->n >= b->n;
    PyObject *x = semval_get(a), *y = semval_get(b);
    int r = (x && y) ? PyObject_RichCompareBool(x, y, Py_GE) : -1;
    Py_XDECREF(x);
    Py_XDECREF(y);
    return r;
}

static PyObject *
sem_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    SemObject *self = (SemObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    if (prim_instance_dict_init(&self->dict) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->value.n = self->bound_value.n = 1;
    return (PyObject *)self;
}

/* __init__(self, value=1): the argument (borrowed; NULL: the default). */
static int
parse_value(PyObject *args, PyObject *kwds, const char *cls, PyObject **out)
{
    PyObject *v = NULL;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "%s.__init__() takes from 1 to 2 positional arguments but %zd were given",
                     cls, nargs + 1);
        return -1;
    }
    if (nargs == 1) v = PyTuple_GET_ITEM(args, 0);
    if (kwds != NULL) {
        PyObject *key, *val;
        Py_ssize_t pos = 0;
        while (PyDict_Next(kwds, &pos, &key, &val)) {
            if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "value") == 0) {
                if (v != NULL) {
                    PyErr_Format(PyExc_TypeError, "%s.__init__() got multiple values for argument 'value'", cls);
                    return -1;
                }
                v = val;
            }
            else {
                PyErr_Format(PyExc_TypeError, "%s.__init__() got an unexpected keyword argument '%S'", cls, key);
                return -1;
            }
        }
    }
    *out = v;
    return 0;
}

/* asyncio's `if value < 0: raise ValueError(...)`, then `self._value = value`
 * (BoundedSemaphore stores _bound_value first). */
static int
sem_init_value(PyObject *op, PyObject *args, PyObject *kwds, const char *cls, int bounded)
{
    SemObject *self = (SemObject *)op;
    PyObject *v;
    if (parse_value(args, kwds, cls, &v) < 0) return -1;
    if (v == NULL) {
        v = PyLong_FromLong(1);
        if (v == NULL) return -1;
    }
    else {
        Py_INCREF(v);  /* ours while the comparison runs Python */
    }
    if (bounded) semval_store(&self->bound_value, v);
    PyObject *zero = PyLong_FromLong(0);
    int negative = zero ? PyObject_RichCompareBool(v, zero, Py_LT) : -1;
    Py_XDECREF(zero);
    if (negative == 0) semval_store(&self->value, v);
    Py_DECREF(v);
    if (negative < 0) return -1;
    if (negative) {
        PyErr_SetString(PyExc_ValueError, "Semaphore initial value must be >= 0");
        return -1;
    }
    return 0;
}

static int
sem_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    return sem_init_value(op, args, kwds, "Semaphore", 0);
}

static int
bsem_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    return sem_init_value(op, args, kwds, "BoundedSemaphore", 1);
}

/* locked(): value == 0 or any waiter not cancelled */
static int
sem_is_locked(SemObject *self)
{
    int zero = semval_cmp_zero(&self->value, Py_EQ);
    if (zero != 0) return zero;
    if (waitq_len(&self->waiters) == 0) return 0;
    return waitq_any_not_cancelled(&self->waiters);
}

/* self.locked(): the C test, or an override (see hooks_of) */
static int
sem_call_locked(SemObject *self)
{
    if (!(hooks_of((PyObject *)self) & HOOK_LOCKED)) return sem_is_locked(self);
    PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self, prim_shared.s_locked);
    if (r == NULL) return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

/* _wake_up_next(): hand a permit to the first pending waiter: 1/0/-1 */
static int
sem_wake_next(SemObject *self)
{
    if (waitq_len(&self->waiters) == 0) return 0;
    Py_ssize_t at;
    PyObject *fut = waitq_first_pending(&self->waiters, &at);
    if (fut == NULL) return PyErr_Occurred() ? -1 : 0;
    if (semval_add(&self->value, -1) < 0) {
        Py_DECREF(fut);
        return -1;
    }
    int r = prim_fut_set_result(fut, Py_True);
    if (r == 0) waitq_mark_done(&self->waiters, fut, at);  /* checks `at` still holds fut */
    Py_DECREF(fut);
    return r < 0 ? -1 : 1;
}

static int
sem_acquire_step(WaitOp *op, PyObject *exc, PyObject **res)
{
    SemObject *self = (SemObject *)op->owner;
    if (op->fut == NULL) {
        int locked = sem_call_locked(self);
        if (locked < 0) return WOP_ERROR;
        if (!locked) {
            if (semval_add(&self->value, -1) < 0) return WOP_ERROR;
            *res = op_result(op);
            return WOP_DONE;
        }
        PyObject *fut = prim_new_waiter(op->owner, &self->loop);
        if (fut == NULL) return WOP_ERROR;
        if (waitq_append(&self->waiters, fut) < 0) {
            Py_DECREF(fut);
            return WOP_ERROR;
        }
        self->waiters_made = 1;
        waitop_set_fut(op, fut);
        return WOP_WAIT;
    }
    PyObject *fut = op->fut;
    waitq_remove(&self->waiters, fut);
#if PRIM_PY313
    /* except CancelledError: give back a permit we were handed; finally: wake
     * as many waiters as the value allows (gh-111694). */
    if (exc != NULL && is_cancelled_error(exc)) {
        int d = prim_fut_done(fut);
        if (d < 0) return WOP_ERROR;
        if (d) {
            int c = prim_fut_cancelled(fut);
            if (c < 0) return WOP_ERROR;
            if (!c && semval_add(&self->value, 1) < 0) return WOP_ERROR;
        }
    }
    for (;;) {
        int positive = semval_cmp_zero(&self->value, Py_GT);
        if (positive < 0) return WOP_ERROR;
        if (!positive) break;
        int r = sem_wake_next(self);
        if (r < 0) return WOP_ERROR;
        if (r == 0) break;
    }
    if (exc != NULL) return waitop_reraise(exc);
#else
    if (exc != NULL) {
        if (is_cancelled_error(exc)) {
            int c = prim_fut_cancelled(fut);
            if (c < 0) return WOP_ERROR;
            if (!c) {
                if (semval_add(&self->value, 1) < 0) return WOP_ERROR;
                if (sem_wake_next(self) < 0) return WOP_ERROR;
            }
        }
        return waitop_reraise(exc);
    }
    int positive = semval_cmp_zero(&self->value, Py_GT);
    if (positive < 0) return WOP_ERROR;
    if (positive && sem_wake_next(self) < 0) return WOP_ERROR;
#endif
    *res = op_result(op);
    return WOP_DONE;
}
static const waitop_kind sem_acquire_kind = {sem_acquire_step, "Semaphore.acquire"};

static PyObject *
sem_acquire(PyObject *self, PyObject *const *Py_UNUSED(args))
{
    return waitop_new(&sem_acquire_kind, self, NULL, 0);
}

static PyObject *
sem_aenter(PyObject *op, PyObject *const *Py_UNUSED(args))
{
    SemObject *self = (SemObject *)op;
    PyObject *via_acquire;
    int hooks = hooks_of(op);
    int overridden = aenter_override(op, hooks, &via_acquire);
    if (overridden != 0) return overridden > 0 ? via_acquire : NULL;
    if (self->value.obj == NULL && self->value.n > 0 && waitq_len(&self->waiters) == 0
        && !(hooks & HOOK_LOCKED)) {   /* see lock_aenter */
        self->value.n--;
        return prim_done_none();
    }
    return waitop_new(&sem_acquire_kind, op, NULL, TAG_RESULT_NONE);
}


static PyObject *
sem_release(PyObject *op, PyObject *Py_UNUSED(a))
{
    SemObject *self = (SemObject *)op;
    if (semval_add(&self->value, 1) < 0 || sem_wake_next(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *
bsem_release(PyObject *op, PyObject *a)
{
    SemObject *self = (SemObject *)op;
    int full = semval_ge(&self->value, &self->bound_value);
    if (full < 0) return NULL;
    if (full) {
        PyErr_SetString(PyExc_ValueError, "BoundedSemaphore released too many times");
        return NULL;
    }
    return sem_release(op, a);
}

static PyObject *
sem_locked(PyObject *self, PyObject *Py_UNUSED(a))
{
    int l = sem_is_locked((SemObject *)self);
    if (l < 0) return NULL;
    return PyBool_FromLong(l);
}

static PyObject *
sem_repr(PyObject *op)
{
    SemObject *self = (SemObject *)op;
    int l = sem_call_locked(self);
    if (l < 0) return NULL;
    PyObject *extra;
    if (l) {
        extra = PyUnicode_FromString("locked");
    }
    else if (self->value.obj == NULL) {
        extra = PyUnicode_FromFormat("unlocked, value:%zd", self->value.n);
    }
    else {  /* f'{self._value}' */
        PyObject *v = Py_NewRef(self->value.obj);
        PyObject *text = PyObject_Format(v, NULL);
        Py_DECREF(v);
        extra = text ? PyUnicode_FromFormat("unlocked, value:%U", text) : NULL;
        Py_XDECREF(text);
    }
    return bound_repr(op, with_waiters(extra, &self->waiters));
}

static PyObject *
sem_get_waiters(PyObject *op, void *c)
{
    SemObject *self = (SemObject *)op;
    if (!self->waiters_made) Py_RETURN_NONE;
    return waitq_snapshot(&self->waiters);
}

static PyMethodDef sem_methods[] = {
    {"locked", sem_locked, METH_NOARGS, "Returns True if semaphore cannot be acquired immediately."},
    {"release", sem_release, METH_NOARGS, "Release a permit, waking the next waiter."},
    {NULL, NULL, 0, NULL},
};

static const prim_coro_method_def sem_coro_methods[] = {
    {"acquire", "(self)", sem_acquire, "Acquire a permit (awaitable); returns True."},
    {"__aenter__", "(self)", sem_aenter, NULL},
    {"__aexit__", "(self, exc_type, exc, tb)", generic_aexit, NULL},
    {NULL, NULL, NULL, NULL},
};

static PyMethodDef bsem_methods[] = {
    {"release", bsem_release, METH_NOARGS,
     "Release a permit; ValueError if released more than acquired."},
    {NULL, NULL, 0, NULL},
};

/* _value / _bound_value: plain attributes in asyncio, so settable here too. */
static PyObject *
sem_get_counter(PyObject *op, void *which)
{
    SemObject *self = (SemObject *)op;
    return semval_get(which ? &self->bound_value : &self->value);
}

static int
sem_set_counter(PyObject *op, PyObject *v, void *which)
{
    SemObject *self = (SemObject *)op;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete a Semaphore's counter");
        return -1;
    }
    semval_store(which ? &self->bound_value : &self->value, v);
    return 0;
}

static PyGetSetDef sem_getset[] = {
    GETSET_DICT,
    {"_loop", bound_get_loop, bound_set_loop, NULL, NULL},
    {"_waiters", sem_get_waiters, NULL, "Snapshot of the waiter futures (None before the first wait).", NULL},
    {"_value", sem_get_counter, sem_set_counter, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyGetSetDef bsem_getset[] = {
    {"_bound_value", sem_get_counter, sem_set_counter, NULL, (void *)1},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef sem_members[] = {
    MEMBERS_WEAKREF_DICT(SemObject),
    {NULL, 0, 0, 0, NULL},
};

static int
sem_traverse(PyObject *op, visitproc visit, void *arg)
{
    SemObject *self = (SemObject *)op;
    Py_VISIT(self->value.obj);
    Py_VISIT(self->bound_value.obj);
    return bound_traverse(op, visit, arg);
}

static int
sem_clear(PyObject *op)
{
    SemObject *self = (SemObject *)op;
    Py_CLEAR(self->value.obj);
    Py_CLEAR(self->bound_value.obj);
    return bound_clear(op);
}

static void
sem_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (((SemObject *)op)->weakreflist != NULL) PyObject_ClearWeakRefs(op);
    sem_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyType_Slot sem_slots[] = {
    {Py_tp_new, sem_new},
    {Py_tp_init, sem_init},
    {Py_tp_repr, sem_repr},
    {Py_tp_methods, sem_methods},
    {Py_tp_getset, sem_getset},
    {Py_tp_members, sem_members},
    {Py_tp_traverse, sem_traverse},
    {Py_tp_clear, sem_clear},
    {Py_tp_dealloc, sem_dealloc},
    {Py_tp_doc, (void *)"Semaphore(value=1)\n--\n\nasyncio.Semaphore implemented in C; works on any event loop."},
    {0, NULL},
};

static PyType_Spec sem_spec = {
    .name = "pyasync_c._primitives.Semaphore",
    .basicsize = sizeof(SemObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = sem_slots,
};

static PyType_Slot bsem_slots[] = {
    {Py_tp_init, bsem_init},
    {Py_tp_methods, bsem_methods},
    {Py_tp_getset, bsem_getset},
    {Py_tp_traverse, sem_traverse},
    {Py_tp_clear, sem_clear},
    {Py_tp_dealloc, sem_dealloc},
    {Py_tp_doc, (void *)"BoundedSemaphore(value=1)\n--\n\nasyncio.BoundedSemaphore implemented in C."},
    {0, NULL},
};

static PyType_Spec bsem_spec = {
    .name = "pyasync_c._primitives.BoundedSemaphore",
    .basicsize = sizeof(SemObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = bsem_slots,
};

/* Our own classes' C acquire/release/locked, found by their tp_methods. */
typedef struct {
    PyMethodDef *methods;
    prim_coro_impl acquire;
    PyCFunction release, locked;
} own_impls;

static const own_impls own_classes[] = {
    {lock_methods, lock_acquire, lock_release, lock_locked},
    {sem_methods, sem_acquire, sem_release, sem_locked},
    {bsem_methods, sem_acquire, bsem_release, sem_locked},
};

/* The C functions of the nearest of our own classes among type's bases
 * (type itself included); NULL if none (not a lock type). */
static const own_impls *
own_impls_of(PyTypeObject *type)
{
    for (; type != NULL; type = type->tp_base)
        for (size_t i = 0; i < sizeof own_classes / sizeof own_classes[0]; i++)
            if (type->tp_methods == own_classes[i].methods) return &own_classes[i];
    return NULL;
}

static int
is_c_method(PyObject *found, PyCFunction fn)
{
    return found != NULL && Py_IS_TYPE(found, &PyMethodDescr_Type)
           && ((PyMethodDescrObject *)found)->d_method->ml_meth == fn;
}

/* HOOK_* bits for what type's acquire/release/locked are not our C ones.
 * Out of line: class_hooks() stays a few inlined instructions. */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static int
detect_class_hooks(PyTypeObject *type)
{
    const own_impls *own = own_impls_of(type);
    if (own == NULL) return HOOK_ACQUIRE | HOOK_RELEASE | HOOK_LOCKED;
    int hooks = 0;
    if (prim_coroutine_method_impl(_PyType_Lookup(type, prim_shared.s_acquire)) != own->acquire)
        hooks |= HOOK_ACQUIRE;
    if (!is_c_method(_PyType_Lookup(type, prim_shared.s_release), own->release)) hooks |= HOOK_RELEASE;
    if (!is_c_method(_PyType_Lookup(type, prim_shared.s_locked), own->locked)) hooks |= HOOK_LOCKED;
    return hooks;
}

/* self.release() for __aexit__: the C release unless overridden */
static PyObject *
call_release(PyObject *self)
{
    if (!(hooks_of(self) & HOOK_RELEASE)) return own_impls_of(Py_TYPE(self))->release(self, NULL);
    return PyObject_CallMethodNoArgs(self, prim_shared.s_release);
}

/* asyncio's _ContextManagerMixin.__aenter__, for aenter_override() */
static PyObject *
make_aenter_via_acquire(void)
{
    static const char source[] =
        "async def __aenter__(self):\n"
        "    await self.acquire()\n";
    PyObject *globals = PyDict_New();
    if (globals == NULL) return NULL;
    PyObject *fn = NULL;
    if (PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins()) == 0) {
        PyObject *code = Py_CompileString(source, "<pyasync_c._primitives>", Py_file_input);
        PyObject *done = code != NULL ? PyEval_EvalCode(code, globals, globals) : NULL;
        Py_XDECREF(code);
        Py_XDECREF(done);
        if (done != NULL) fn = Py_XNewRef(PyDict_GetItemString(globals, "__aenter__"));
    }
    Py_DECREF(globals);
    return fn;
}

/* ------------------------------------------------------------------ */

/* Create the class from spec, add its coroutine methods (coro: NULL for
 * none) and register it on the module. */
static int
add_type(PyObject *module, PyType_Spec *spec, PyObject *base, const prim_coro_method_def *coro,
         PyTypeObject **out)
{
    PyObject *t = PyType_FromModuleAndSpec(module, spec, base);
    if (t == NULL) return -1;
    if (prim_short_tp_name((PyTypeObject *)t) < 0
        || (coro != NULL && prim_add_coroutine_methods(module, (PyTypeObject *)t, coro) < 0)
        || PyModule_AddType(module, (PyTypeObject *)t) < 0) {
        Py_DECREF(t);
        return -1;
    }
    if (out != NULL) *out = (PyTypeObject *)t;   /* keeps our reference */
    else Py_DECREF(t);
    return 0;
}

int
prim_locks_init(PyObject *module)
{
    PyTypeObject *sem_type = NULL;
    if (prim_shared_init(module) < 0) return -1;
    if (aenter_via_acquire == NULL && (aenter_via_acquire = make_aenter_via_acquire()) == NULL)
        return -1;
    if (add_type(module, &lock_spec, NULL, lock_coro_methods, NULL) < 0) return -1;
    if (EventType == NULL) {
        if (add_type(module, &event_spec, NULL, event_coro_methods, &EventType) < 0) return -1;
    }
    else if (add_type(module, &event_spec, NULL, event_coro_methods, NULL) < 0) return -1;
    if (add_type(module, &sem_spec, NULL, sem_coro_methods, &sem_type) < 0) return -1;
    int rc = add_type(module, &bsem_spec, (PyObject *)sem_type, NULL, NULL);
    Py_DECREF(sem_type);
    return rc;
}
