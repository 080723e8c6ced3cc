/* Shared waiter machinery of pyasync_c._primitives (used by locks.c and queue.c).
 *
 * - waitq_t: a FIFO ring of asyncio futures (strong references) with the
 *   operations asyncio's primitives need: append, remove by identity,
 *   wake the first pending one, pop-and-wake, wake all, "any not cancelled".
 *   Every operation that calls back into Python (fut.done(), set_result...)
 *   holds its own reference to the future and re-checks bounds afterwards,
 *   so a re-entrant mutation of the queue cannot make it touch freed memory.
 * - WaitOp: the awaitable returned by acquire()/wait()/put()/get()/join()/
 *   __aenter__/__aexit__.  It is a small coroutine-like object (send, throw,
 *   close, __await__, am_send) driven by a per-primitive step function:
 *   the step is called once when first awaited (fast path: finish at once,
 *   no future, no suspension), then once per wake-up or thrown exception,
 *   and either finishes, fails, or asks to wait on a new future.
 *   An op abandoned while suspended is closed by its finalizer, so its
 *   future is always removed from the primitive's queue (as a coroutine's
 *   `finally` would).
 * - prim_shared: references to asyncio's own objects (exceptions, the
 *   running-loop getter, deque/heapq helpers) and the interned names we call.
 *   module.c's definition has no per-module state (m_size 0, not ours), so
 *   these process-wide caches of asyncio's objects live here, initialised
 *   once on the first module exec.
 */
#ifndef PYASYNC_C_WAITERS_H
#define PYASYNC_C_WAITERS_H

#include "primitives.h"

#define PRIM_PY312 (PY_VERSION_HEX >= 0x030C0000)
#define PRIM_PY313 (PY_VERSION_HEX >= 0x030D0000)

typedef struct {
    int ready;
    PyObject *CancelledError;
    PyObject *QueueEmpty;
    PyObject *QueueFull;
    PyObject *QueueShutDown;      /* NULL before 3.13 */
    PyObject *get_running_loop;   /* asyncio.events._get_running_loop */
    PyObject *base_create_future; /* asyncio.BaseEventLoop.create_future (the function) */
    PyObject *futures_module;     /* asyncio.futures */
    PyObject *kw_loop;            /* ("loop",) */
    PyTypeObject *own_loop_type;  /* pyasync_c._loop.LoopCore, looked up once that module
                                   * is loaded (prim_own_loop_type); NULL before */
    PyObject *deque_type;         /* collections.deque */
    PyObject *deque_append;       /* deque.append (method descriptor) */
    PyObject *deque_popleft;      /* deque.popleft */
    PyObject *heappush;           /* heapq.heappush */
    PyObject *heappop;            /* heapq.heappop */
    PyTypeObject *WaitOpType;
    PyObject *done_none;          /* shared awaitable that completes at once with None */
    /* _asyncio.Future and its own methods, for calling them on futures of
     * exactly that (immutable) type without a method lookup; NULL when the
     * _asyncio accelerator is missing (then every call is a method call) */
    PyTypeObject *CFutureType;
    PyObject *cf_done, *cf_cancelled, *cf_result, *cf_set_result;
    PyObject *cf_blocking;        /* the _asyncio_future_blocking getset descriptor */
    /* interned method/attribute names */
    PyObject *s_done, *s_cancelled, *s_set_result, *s_cancel, *s_result,
             *s_create_future, *s_blocking, *s_append, *s_popleft, *s_pop,
             *s__init, *s__get, *s__put, *s_qsize, *s_empty, *s_full,
             *s__format, *s_release, *s_acquire, *s_locked, *s_put_nowait, *s_get_nowait,
             *s_Future, *s_loop_module;
    PyObject *s_running_loop_key; /* 3.11: "__asyncio_running_event_loop__" (prim_running_loop) */
} prim_shared_t;

extern prim_shared_t prim_shared;

/* Idempotent: imports asyncio pieces and creates the WaitOp type. */
int prim_shared_init(PyObject *module);

/* Point a new type's tp_name (used by interpreter error messages such as
 * "object Lock can't be used in 'await' expression") at its bare name, as
 * asyncio's Python classes read; __name__/__module__ are unaffected. */
int prim_short_tp_name(PyTypeObject *type);

/* ---- exceptions held as objects (normalised, traceback attached) ---- */
PyObject *prim_import_attr(const char *mod, const char *name);  /* new ref to mod.name */
/* 1 when obj.name is `function` bound to obj: neither obj's class nor obj
 * itself overrides it; 0 otherwise; -1 with an exception set. */
int prim_method_is(PyObject *obj, PyObject *name, PyObject *function);
/* pyasync_c's own loop type (pyasync_c._loop.LoopCore, borrowed) once that
 * module is loaded (no pyasync_c loop can exist before); NULL until then. */
PyTypeObject *prim_own_loop_type(void);
PyObject *prim_exc_fetch(void);          /* takes the raised exception, NULL if none */
void prim_exc_restore(PyObject *exc);    /* steals exc and raises it */

/* ---- futures ---- */
int prim_fut_done(PyObject *fut);        /* 1/0, -1 on error */
int prim_fut_cancelled(PyObject *fut);
int prim_fut_set_result(PyObject *fut, PyObject *value);
int prim_fut_cancel(PyObject *fut);
/* fut.result(): new reference, or NULL with the future's exception raised */
PyObject *prim_fut_result(PyObject *fut);
/* fut._asyncio_future_blocking = True */
int prim_fut_set_blocking(PyObject *fut);
static inline int prim_is_cfuture(PyObject *fut)
{
    return prim_shared.CFutureType != NULL && Py_IS_TYPE(fut, prim_shared.CFutureType);
}

/* loop.create_future(), made directly when that method is asyncio's or
 * pyasync_c's own and not overridden (see waiters.c). */
PyObject *prim_loop_new_future(PyObject *loop);

/* asyncio._get_running_loop(): the running loop or None (new reference),
 * NULL on error.  On 3.11 without its getpid() system call (see waiters.c). */
PyObject *prim_running_loop(void);

/* The mixin's _get_loop(): bind *slot to the running loop on first use and
 * raise RuntimeError when used from another loop.  Returns a new future
 * made by loop.create_future(). */
PyObject *prim_new_waiter(PyObject *self, PyObject **loop_slot);

/* ---- the waiter FIFO ---- */
typedef struct {
    PyObject **items;
    Py_ssize_t head, len, cap;
    /* The first ndone futures are known to be done (a future stays done), so
     * waitq_first_pending() need not ask them again.  Kept by every
     * mutation: popping or removing inside the prefix shrinks it. */
    Py_ssize_t ndone;
} waitq_t;

static inline Py_ssize_t waitq_len(const waitq_t *q) { return q->len; }
static inline PyObject *waitq_peek(const waitq_t *q, Py_ssize_t i)
{   /* borrowed, 0 <= i < len */
    return q->items[(q->head + i) % q->cap];
}
int waitq_append(waitq_t *q, PyObject *fut);            /* -1 + MemoryError */
int waitq_remove(waitq_t *q, PyObject *fut);            /* 1 removed, 0 absent */
PyObject *waitq_popleft(waitq_t *q);                    /* new ref, NULL if empty (no error) */
/* First future that is not done, new reference; NULL + no error when none.
 * *index (may be NULL) receives its position, for waitq_mark_done(). */
PyObject *waitq_first_pending(waitq_t *q, Py_ssize_t *index);
/* The caller just completed fut, found at `index` by waitq_first_pending():
 * grow the known-done prefix over it if it is still there (the queue may
 * have changed meanwhile) and is an _asyncio.Future (whose done() cannot
 * be overridden to say otherwise). */
void waitq_mark_done(waitq_t *q, PyObject *fut, Py_ssize_t index);
/* Pop futures from the head until one is not done, set its result: 1 woke, 0 none, -1 error. */
int waitq_pop_wake(waitq_t *q, PyObject *result);
/* Set result on every pending future (queue untouched); pop=1 also empties the queue. */
int waitq_wake_all(waitq_t *q, PyObject *result, int pop);
/* 1 if any future is not cancelled, 0 if none, -1 on error. */
int waitq_any_not_cancelled(waitq_t *q);
/* A collections.deque snapshot (for the private _waiters/_getters/_putters views). */
PyObject *waitq_snapshot(waitq_t *q);
void waitq_clear(waitq_t *q);
int waitq_traverse(waitq_t *q, visitproc visit, void *arg);

/* ---- coroutine protocol helpers (shared by _WaitOp here and sleep.c's _Sleep0) ---- */

/* Build the exception of throw(exc) or the legacy throw(type[, value[, tb]])
 * (DeprecationWarning on 3.12+, as coroutines do).  New reference to a
 * normalised instance, or NULL with TypeError/... set.
 * at_future: the coroutine is suspended in `await fut`, where a coroutine
 * hands the arguments to the future's iterator: a bad exception argument
 * then fails *at the await point* (with the iterator's wording), so the
 * TypeError is returned as the exception to throw in instead of raised.
 * A wrong argument count or an error from the warning is raised either way. */
PyObject *prim_coro_throw_exc(PyObject *const *args, Py_ssize_t nargs, int at_future);

/* send/throw on a finished (returned, raised or closed) coroutine:
 * RuntimeError("cannot reuse already awaited coroutine"); returns PYGEN_ERROR. */
PySendResult prim_coro_reused(PyObject **out);

/* send(non-None) on a coroutine not started yet: TypeError; returns PYGEN_ERROR. */
PySendResult prim_coro_bad_first_send(PyObject **out);

/* Turn a step outcome into the Python-level send/throw/__next__ result:
 * the yielded value, or NULL with StopIteration(value) set (an instance, so
 * a tuple/exception value is not unpacked) or the error left set.  With
 * none_is_plain_stop a None return sets no exception (tp_iternext). */
PyObject *prim_coro_result(PySendResult r, PyObject *out, int none_is_plain_stop);

/* ---- the awaitable ---- */
typedef struct WaitOp WaitOp;

enum { WOP_ERROR = -1, WOP_DONE = 0, WOP_WAIT = 1 };

/* Step function.  `exc` is NULL on the first step (op->fut == NULL) and
 * after a normal wake-up (op->fut is the future that completed); otherwise
 * it is the exception raised at the await point (borrowed).  Return
 * WOP_DONE with *result set, WOP_ERROR with an exception set, or WOP_WAIT
 * after storing a new pending future with waitop_set_fut(). */
typedef int (*waitop_step_fn)(WaitOp *op, PyObject *exc, PyObject **result);

typedef struct {
    waitop_step_fn step;
    const char *qualname;       /* e.g. "Semaphore.acquire" */
} waitop_kind;

struct WaitOp {
    PyObject_HEAD
    const waitop_kind *kind;
    PyObject *owner;            /* the primitive */
    PyObject *fut;              /* future being waited on */
    PyObject *arg;              /* extra argument (the item of put()) */
    int tag;                    /* kind-specific flag (e.g. result None) */
    int state;
};

PyObject *waitop_new(const waitop_kind *kind, PyObject *owner, PyObject *arg, int tag);
void waitop_set_fut(WaitOp *op, PyObject *fut);   /* steals fut */

/* Re-raise the exception given to a step (returns WOP_ERROR). */
static inline int waitop_reraise(PyObject *exc)
{
    Py_INCREF(exc);
    prim_exc_restore(exc);
    return WOP_ERROR;
}

/* A new reference to the shared, stateless awaitable that finishes at once
 * with None (used by uncontended __aenter__ and by __aexit__). */
static inline PyObject *prim_done_none(void) { return Py_NewRef(prim_shared.done_none); }

/* ---- the instance __dict__ of Lock, Event, Semaphore, Queue... ---- */

/* Called by tp_new on the object's `dict` field (its tp_dictoffset slot).
 * 3.11's method-call specialisation (LOAD_METHOD) gives up on an object
 * whose dict slot is NULL, so `q.get()` would take the generic lookup every
 * time; there the dict is made with the object (empty dicts share one key
 * table, so LOAD_METHOD_WITH_DICT then holds for all of them).  3.12+
 * specialise a NULL slot (LOAD_ATTR_METHOD_LAZY_DICT): the dict is made on
 * first use.  0, or -1 with MemoryError. */
static inline int prim_instance_dict_init(PyObject **slot)
{
#if PRIM_PY312
    (void)slot;
#else
    if (*slot == NULL && (*slot = PyDict_New()) == NULL) return -1;
#endif
    return 0;
}

/* A stamp of an instance __dict__'s contents, to know when a look at it
 * (prim_dict_names) must be made again: 0 when the dict is NULL or empty,
 * else CPython's dict version (3.11-3.13: globally unique and changed by
 * every modification; deprecated from 3.12, hence the pragma), or
 * PRIM_DICT_UNKNOWN where there is none (look every time). */
#define PRIM_DICT_UNKNOWN UINT64_MAX
static inline uint64_t prim_dict_stamp(PyObject *dict)
{
    if (dict == NULL || PyDict_GET_SIZE(dict) == 0) return 0;
#if PY_VERSION_HEX < 0x030E0000
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    uint64_t version = ((PyDictObject *)dict)->ma_version_tag;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    return version != 0 && version != PRIM_DICT_UNKNOWN ? version : PRIM_DICT_UNKNOWN;
#else
    return PRIM_DICT_UNKNOWN;
#endif
}

/* Bit i set when `dict` (an instance __dict__, may be NULL) has the str
 * names[i] (n <= 16) as a key.  Runs no Python code (str keys are compared
 * in C, others skipped): cheap for the few attributes an instance holds. */
int prim_dict_names(PyObject *dict, PyObject *const *names, int n);

/* ---- Event hooks used by Queue (implemented in locks.c) ---- */
PyObject *prim_event_new(void);
int prim_event_set(PyObject *ev);
void prim_event_clear(PyObject *ev);
PyObject *prim_event_wait(PyObject *ev, int result_none);

#endif
