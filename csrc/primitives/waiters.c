/* Waiter FIFO, the WaitOp awaitable and the shared asyncio references of
 * pyasync_c._primitives (see waiters.h for the contract).
 *
 * Lifecycle: prim_shared is filled once by the first prim_shared_init() (on
 * the first module exec) and kept for the life of the process.  A waitq_t is
 * embedded in its primitive and owns a reference to each queued future until
 * it is removed/popped or the primitive is cleared.  A WaitOp is created per
 * call of acquire()/get()/..., holds its primitive, its current future and
 * argument, and drops them as soon as it finishes (or is closed/finalised).
 */
#include "waiters.h"

#include <string.h>
#if !PRIM_PY312
#include <pthread.h>
#include <unistd.h>
#endif

prim_shared_t prim_shared;

/* ------------------------------------------------------------------ */
/* exceptions                                                          */

PyObject *
prim_exc_fetch(void)
{
#if PRIM_PY312
    return PyErr_GetRaisedException();
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (t == NULL) return NULL;
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(v, tb);
        Py_DECREF(tb);
    }
    Py_DECREF(t);
    return v;
#endif
}

void
prim_exc_restore(PyObject *exc)
{
#if PRIM_PY312
    PyErr_SetRaisedException(exc);
#else
    PyObject *tb = PyException_GetTraceback(exc);
    PyObject *t = (PyObject *)Py_TYPE(exc);
    Py_INCREF(t);
    PyErr_Restore(t, exc, tb);
#endif
}

int
prim_short_tp_name(PyTypeObject *type)
{
    const char *dot = strrchr(type->tp_name, '.');
    if (dot != NULL) type->tp_name = dot + 1;   /* into the type's own name buffer */
    return 0;
}

/* ------------------------------------------------------------------ */
/* futures                                                             */

static int
call_bool(PyObject *obj, PyObject *name)
{
    PyObject *r = PyObject_CallMethodNoArgs(obj, name);
    if (r == NULL) return -1;
    int b;
    if (r == Py_True) b = 1;
    else if (r == Py_False) b = 0;
    else b = PyObject_IsTrue(r);
    Py_DECREF(r);
    return b;
}

/* On an exact _asyncio.Future (an immutable type) its own method
 * descriptor is called directly: what fut.done() would run, minus the
 * lookup.  Any other future gets a real method call. */
static int
fut_predicate(PyObject *fut, PyObject *c_method, PyObject *name)
{
    if (prim_is_cfuture(fut)) {
        PyObject *r = PyObject_Vectorcall(c_method, &fut, 1, NULL);
        if (r == NULL) return -1;
        Py_DECREF(r);
        return r == Py_True;        /* the C method returns a bool */
    }
    return call_bool(fut, name);
}

int prim_fut_done(PyObject *fut) { return fut_predicate(fut, prim_shared.cf_done, prim_shared.s_done); }

int
prim_fut_cancelled(PyObject *fut)
{
    return fut_predicate(fut, prim_shared.cf_cancelled, prim_shared.s_cancelled);
}

int
prim_fut_set_result(PyObject *fut, PyObject *value)
{
    PyObject *r;
    if (prim_is_cfuture(fut)) {
        PyObject *args[2] = {fut, value};
        r = PyObject_Vectorcall(prim_shared.cf_set_result, args, 2, NULL);
    }
    else {
        r = PyObject_CallMethodOneArg(fut, prim_shared.s_set_result, value);
    }
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

int
prim_fut_cancel(PyObject *fut)
{
    PyObject *r = PyObject_CallMethodNoArgs(fut, prim_shared.s_cancel);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

PyObject *
prim_fut_result(PyObject *fut)
{
    if (prim_is_cfuture(fut)) return PyObject_Vectorcall(prim_shared.cf_result, &fut, 1, NULL);
    return PyObject_CallMethodNoArgs(fut, prim_shared.s_result);
}

int
prim_fut_set_blocking(PyObject *fut)
{
    if (prim_is_cfuture(fut)) {
        PyObject *d = prim_shared.cf_blocking;
        return Py_TYPE(d)->tp_descr_set(d, fut, Py_True);
    }
    return PyObject_SetAttr(fut, prim_shared.s_blocking, Py_True);
}

int
prim_method_is(PyObject *obj, PyObject *name, PyObject *function)
{
    if (_PyType_Lookup(Py_TYPE(obj), name) != function) {
        return 0;
    }
    PyObject *found = NULL;   /* _PyObject_GetMethod asserts it starts NULL */
#if PRIM_PY313
    found = PyObject_GetAttr(obj, name);   /* 3.13 keeps _PyObject_GetMethod internal */
    if (found == NULL) return -1;
    int same;
    if (PyMethod_Check(found)) {          /* a Python function, bound */
        same = PyMethod_GET_FUNCTION(found) == function && PyMethod_GET_SELF(found) == obj;
    }
    else {                                /* a C method descriptor, bound */
        same = PyCFunction_Check(found) && PyCFunction_GET_SELF(found) == obj
               && Py_IS_TYPE(function, &PyMethodDescr_Type)
               && ((PyCFunctionObject *)found)->m_ml == ((PyMethodDescrObject *)function)->d_method;
    }
#else
    int unbound = _PyObject_GetMethod(obj, name, &found);  /* no bound method made */
    if (found == NULL) return -1;
    int same = unbound && found == function;
#endif
    Py_DECREF(found);
    return same;
}

int
prim_dict_names(PyObject *dict, PyObject *const *names, int n)
{
    if (dict == NULL || PyDict_GET_SIZE(dict) == 0) return 0;
    int bits = 0;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        if (!PyUnicode_Check(key)) continue;
        /* the names are interned: another interned str equals one only if it is it */
        int interned = PyUnicode_CheckExact(key) && PyUnicode_CHECK_INTERNED(key);
        for (int i = 0; i < n; i++) {
            if (key == names[i] || (!interned && PyUnicode_Compare(key, names[i]) == 0)) {
                bits |= 1 << i;
                break;
            }
        }
    }
    return bits;
}

PyTypeObject *
prim_own_loop_type(void)
{
    prim_shared_t *s = &prim_shared;
    if (s->own_loop_type == NULL) {
        PyObject *module = PyImport_GetModule(s->s_loop_module);
        if (module == NULL) {
            PyErr_Clear();
            return NULL;
        }
        PyObject *core = PyObject_GetAttrString(module, "LoopCore");
        Py_DECREF(module);
        if (core == NULL) {
            PyErr_Clear();
            return NULL;
        }
        if (!PyType_Check(core)) {
            Py_DECREF(core);
            return NULL;
        }
        s->own_loop_type = (PyTypeObject *)core;
    }
    return s->own_loop_type;
}

/* loop.create_future() for the running loop, made here when the loop's
 * method is one whose effect is known, overridden neither by the loop's class
 * nor by the instance:
 * - asyncio's BaseEventLoop.create_future, `futures.Future(loop=self)`:
 *   made here without its Python frame;
 * - from 3.12, pyasync_c's LoopCore.create_future, `_asyncio.Future(loop=self)`.
 * From 3.12 a Future made with no arguments takes the running loop (this
 * one) cheaply, and that also spares the dict a keyword argument costs a type
 * without vectorcall. 3.11 checks the running loop's pid with a getpid()
 * system call there, so the loop is passed instead, and pyasync_c's own
 * create_future (which keeps that dict) is called as it is. */
PyObject *
prim_loop_new_future(PyObject *loop)
{
    prim_shared_t *s = &prim_shared;
    int plain = s->base_create_future != NULL
                ? prim_method_is(loop, s->s_create_future, s->base_create_future) : 0;
    if (plain < 0) return NULL;
    if (plain) {
        PyObject *future_type = PyObject_GetAttr(s->futures_module, s->s_Future);
        if (future_type == NULL) return NULL;
#if PRIM_PY312
        PyObject *fut = PyObject_CallNoArgs(future_type);
#else
        PyObject *args[2] = {NULL, loop};
        PyObject *fut = PyObject_Vectorcall(future_type, args + 1, 0 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            s->kw_loop);
#endif
        Py_DECREF(future_type);
        return fut;
    }
#if PRIM_PY312
    PyTypeObject *own_type = s->CFutureType != NULL ? prim_own_loop_type() : NULL;
    PyObject *own = own_type != NULL ? _PyType_Lookup(own_type, s->s_create_future) : NULL;
    if (own != NULL) {
        plain = prim_method_is(loop, s->s_create_future, own);
        if (plain < 0) return NULL;
        if (plain) return PyObject_CallNoArgs((PyObject *)s->CFutureType);
    }
#endif
    return PyObject_CallMethodNoArgs(loop, s->s_create_future);
}

/* ------------------------------------------------------------------ */
/* the running loop                                                    */

#if !PRIM_PY312
/* On 3.11, asyncio._get_running_loop() reads a small record that
 * _set_running_loop() puts in the thread-state dict under
 * "__asyncio_running_event_loop__" (Modules/_asynciomodule.c,
 * PyRunningLoopHolder: the loop and the pid of the process that set it), and
 * returns the loop only if that pid is getpid(): one system call per lookup
 * (about 175 ns here; without it a contended Semaphore on pyasync_c's loop
 * went from 640k to 810k acquires/s).
 * We read the same record and compare its pid with ours, kept current across
 * fork() by a pthread_atfork child handler.  The record's layout is only
 * trusted once one lookup has agreed with _get_running_loop() (type name,
 * size, loop and pid all checked); until then, and for ever if it never
 * agrees (pure-Python asyncio, another layout), every lookup is the call.
 * 3.12+ keeps the loop in the thread state and makes no system call. */
typedef struct {
    PyObject_HEAD
    PyObject *loop;
    pid_t pid;
} running_loop_record;

static PyTypeObject *running_loop_record_type;   /* set once verified; a static type */
static volatile pid_t this_process;              /* getpid(), refreshed in fork children */

static void
refresh_pid_after_fork(void)
{
    this_process = getpid();
}

/* This thread's record (borrowed) in *record, NULL if it has none: 0.
 * -1 when the thread-state dict could not be read (the caller then asks
 * _get_running_loop()). */
static int
running_loop_record_get(PyObject **record)
{
    PyObject *tstate_dict = PyThreadState_GetDict();   /* borrowed */
    if (tstate_dict == NULL) return -1;
    *record = PyDict_GetItemWithError(tstate_dict, prim_shared.s_running_loop_key);
    if (*record == NULL && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

/* After a lookup by the call returned `loop`: trust the record from now on if
 * it says the same. */
static void
running_loop_record_verify(PyObject *loop)
{
    PyObject *record;
    if (loop == Py_None || running_loop_record_get(&record) < 0 || record == NULL) return;
    PyTypeObject *type = Py_TYPE(record);
    const char *name = strrchr(type->tp_name, '.');
    name = name != NULL ? name + 1 : type->tp_name;
    if (strcmp(name, "_RunningLoopHolder") != 0
        || type->tp_basicsize != (Py_ssize_t)sizeof(running_loop_record)
        || (type->tp_flags & Py_TPFLAGS_HEAPTYPE))
        return;
    running_loop_record *r = (running_loop_record *)record;
    if (r->loop == loop && r->pid == this_process) running_loop_record_type = type;
}
#endif

PyObject *
prim_running_loop(void)
{
#if !PRIM_PY312
    PyObject *record;
    if (running_loop_record_type != NULL && running_loop_record_get(&record) == 0) {
        if (record == NULL) Py_RETURN_NONE;   /* no loop was ever set in this thread */
        if (Py_IS_TYPE(record, running_loop_record_type)) {
            running_loop_record *r = (running_loop_record *)record;
            if (r->pid != this_process) Py_RETURN_NONE;   /* set before a fork */
            return Py_NewRef(r->loop);
        }
    }
    PyObject *loop = PyObject_CallNoArgs(prim_shared.get_running_loop);
    if (loop != NULL && running_loop_record_type == NULL) running_loop_record_verify(loop);
    return loop;
#else
    return PyObject_CallNoArgs(prim_shared.get_running_loop);
#endif
}

PyObject *
prim_new_waiter(PyObject *self, PyObject **loop_slot)
{
    PyObject *loop = prim_running_loop();
    if (loop == NULL) return NULL;
    if (loop == Py_None) {
        Py_DECREF(loop);
        PyErr_SetString(PyExc_RuntimeError, "no running event loop");
        return NULL;
    }
    if (*loop_slot == NULL || *loop_slot == Py_None) {
        Py_XSETREF(*loop_slot, Py_NewRef(loop));
    }
    else if (*loop_slot != loop) {
        Py_DECREF(loop);
        PyErr_Format(PyExc_RuntimeError, "%R is bound to a different event loop", self);
        return NULL;
    }
    PyObject *fut = prim_loop_new_future(loop);
    Py_DECREF(loop);
    return fut;
}

/* ------------------------------------------------------------------ */
/* waitq                                                               */

#define WQ_AT(q, i) ((q)->items[((q)->head + (i)) % (q)->cap])

int
waitq_append(waitq_t *q, PyObject *fut)
{
    if (q->len == q->cap) {
        Py_ssize_t ncap = q->cap ? q->cap * 2 : 4;
        PyObject **n = PyMem_New(PyObject *, ncap);
        if (n == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < q->len; i++) n[i] = WQ_AT(q, i);
        PyMem_Free(q->items);
        q->items = n;
        q->cap = ncap;
        q->head = 0;
    }
    q->items[(q->head + q->len) % q->cap] = Py_NewRef(fut);
    q->len++;
    return 0;
}

int
waitq_remove(waitq_t *q, PyObject *fut)
{
    Py_ssize_t i;
    for (i = 0; i < q->len; i++) {
        if (WQ_AT(q, i) == fut) break;
    }
    if (i == q->len) return 0;
    PyObject *victim = WQ_AT(q, i);
    if (i < q->ndone) q->ndone--;
    if (i < q->len / 2) {
        for (Py_ssize_t j = i; j > 0; j--) WQ_AT(q, j) = WQ_AT(q, j - 1);
        q->head = (q->head + 1) % q->cap;
    }
    else {
        for (Py_ssize_t j = i; j < q->len - 1; j++) WQ_AT(q, j) = WQ_AT(q, j + 1);
    }
    q->len--;
    Py_DECREF(victim);
    return 1;
}

PyObject *
waitq_popleft(waitq_t *q)
{
    if (q->len == 0) return NULL;
    PyObject *f = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    if (q->ndone > 0) q->ndone--;
    return f;
}

PyObject *
waitq_first_pending(waitq_t *q, Py_ssize_t *index)
{
    for (Py_ssize_t i = q->ndone; i < q->len; i++) {
        PyObject *f = Py_NewRef(WQ_AT(q, i));
        int d = prim_fut_done(f);
        if (d < 0) {
            Py_DECREF(f);
            return NULL;
        }
        if (!d) {
            if (index != NULL) *index = i;
            return f;
        }
        waitq_mark_done(q, f, i);
        Py_DECREF(f);
    }
    return NULL;
}

void
waitq_mark_done(waitq_t *q, PyObject *fut, Py_ssize_t index)
{
    /* Entries are only appended at the tail, so if fut is still at `index`
     * the entries before it are the ones scanned (all done) before. */
    if (index == q->ndone && index < q->len && WQ_AT(q, index) == fut && prim_is_cfuture(fut))
        q->ndone = index + 1;
}

int
waitq_pop_wake(waitq_t *q, PyObject *result)
{
    PyObject *f;
    while ((f = waitq_popleft(q)) != NULL) {
        int d = prim_fut_done(f);
        if (d < 0) {
            Py_DECREF(f);
            return -1;
        }
        if (!d) {
            int r = prim_fut_set_result(f, result);
            Py_DECREF(f);
            return r < 0 ? -1 : 1;
        }
        Py_DECREF(f);
    }
    return 0;
}

int
waitq_wake_all(waitq_t *q, PyObject *result, int pop)
{
    Py_ssize_t n = q->len;
    if (n == 0) return 0;
    PyObject **snap = PyMem_New(PyObject *, n);
    if (snap == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) snap[i] = Py_NewRef(WQ_AT(q, i));
    if (pop) waitq_clear(q);
    int rc = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (rc == 0) {
            int d = prim_fut_done(snap[i]);
            if (d < 0 || (!d && prim_fut_set_result(snap[i], result) < 0)) rc = -1;
        }
        Py_DECREF(snap[i]);
    }
    PyMem_Free(snap);
    return rc;
}

int
waitq_any_not_cancelled(waitq_t *q)
{
    for (Py_ssize_t i = 0; i < q->len; i++) {
        PyObject *f = Py_NewRef(WQ_AT(q, i));
        int c = prim_fut_cancelled(f);
        Py_DECREF(f);
        if (c < 0) return -1;
        if (!c) return 1;
    }
    return 0;
}

PyObject *
waitq_snapshot(waitq_t *q)
{
    PyObject *lst = PyList_New(q->len);
    if (lst == NULL) return NULL;
    for (Py_ssize_t i = 0; i < q->len; i++) PyList_SET_ITEM(lst, i, Py_NewRef(WQ_AT(q, i)));
    PyObject *d = PyObject_CallOneArg(prim_shared.deque_type, lst);
    Py_DECREF(lst);
    return d;
}

void
waitq_clear(waitq_t *q)
{
    PyObject **items = q->items;
    Py_ssize_t head = q->head, len = q->len, cap = q->cap;
    q->items = NULL;
    q->head = q->len = q->cap = q->ndone = 0;
    for (Py_ssize_t i = 0; i < len; i++) Py_DECREF(items[(head + i) % cap]);
    PyMem_Free(items);
}

int
waitq_traverse(waitq_t *q, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < q->len; i++) Py_VISIT(WQ_AT(q, i));
    return 0;
}

/* ------------------------------------------------------------------ */
/* coroutine protocol helpers                                          */

PyObject *
prim_coro_throw_exc(PyObject *const *args, Py_ssize_t nargs, int at_future)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected at least 1 argument%s, got %zd",
                     nargs > 3 ? " and at most 3" : "", nargs);
        return NULL;
    }
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 && args[1] != Py_None ? args[1] : NULL;
    PyObject *tb = nargs > 2 && args[2] != Py_None ? args[2] : NULL;
    PyObject *exc;
#if PRIM_PY312
    if (nargs > 1 && PyErr_WarnEx(PyExc_DeprecationWarning,
                                  "the (type, exc, tb) signature of throw() is deprecated, "
                                  "use the single-arg signature instead.", 1) < 0)
        return NULL;
#endif
    if (tb != NULL && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError, at_future
                        ? "throw() third argument must be a traceback"
                        : "throw() third argument must be a traceback object");
        goto bad;
    }
    if (PyExceptionInstance_Check(typ)) {
        if (val != NULL) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            goto bad;
        }
        exc = Py_NewRef(typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        if (val == NULL) PyErr_SetNone(typ);
        else PyErr_SetObject(typ, val);
        exc = prim_exc_fetch();        /* normalised instance (or the error making it) */
        if (exc == NULL) return NULL;
        if (!PyExceptionInstance_Check(exc)) {
            Py_DECREF(exc);
            PyErr_SetString(PyExc_TypeError, "throw() could not build an exception");
            return NULL;
        }
    }
    else {
        if (at_future)
            PyErr_SetString(PyExc_TypeError, "exceptions must be classes deriving BaseException "
                                             "or instances of such a class");
        else
            PyErr_Format(PyExc_TypeError, "exceptions must be classes or instances deriving "
                                          "from BaseException, not %s", Py_TYPE(typ)->tp_name);
        goto bad;
    }
    if (tb != NULL) PyException_SetTraceback(exc, tb);
    return exc;

bad:
    return at_future ? prim_exc_fetch() : NULL;
}

PySendResult
prim_coro_reused(PyObject **out)
{
    *out = NULL;
    PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
    return PYGEN_ERROR;
}

PySendResult
prim_coro_bad_first_send(PyObject **out)
{
    *out = NULL;
    PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
    return PYGEN_ERROR;
}

PyObject *
prim_coro_result(PySendResult r, PyObject *out, int none_is_plain_stop)
{
    if (r == PYGEN_NEXT) return out;
    if (r == PYGEN_RETURN) {
        if (out == Py_None) {
            if (!none_is_plain_stop) PyErr_SetNone(PyExc_StopIteration);
        }
        else {
            PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, out);
            if (e != NULL) {
                PyErr_SetObject(PyExc_StopIteration, e);
                Py_DECREF(e);
            }
        }
        Py_DECREF(out);
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* WaitOp                                                              */

enum { ST_INIT, ST_WAITING, ST_RUNNING, ST_DONE };

PyObject *
waitop_new(const waitop_kind *kind, PyObject *owner, PyObject *arg, int tag)
{
    WaitOp *op = PyObject_GC_New(WaitOp, prim_shared.WaitOpType);
    if (op == NULL) return NULL;
    op->kind = kind;
    op->owner = Py_NewRef(owner);
    op->fut = NULL;
    op->arg = Py_XNewRef(arg);
    op->tag = tag;
    op->state = ST_INIT;
    PyObject_GC_Track(op);
    return (PyObject *)op;
}

void
waitop_set_fut(WaitOp *op, PyObject *fut)
{
    Py_XSETREF(op->fut, fut);
}

static void
waitop_finish(WaitOp *op)
{
    op->state = ST_DONE;
    Py_CLEAR(op->fut);
    Py_CLEAR(op->arg);
    Py_CLEAR(op->owner);
}

/* Run the op until it yields a future, returns or fails.  `exc` (borrowed)
 * is an exception thrown in at the current suspension point. */
static PySendResult
waitop_advance(WaitOp *op, PyObject *exc, PyObject **out)
{
    *out = NULL;
    switch (op->state) {
    case ST_DONE:               /* returned, raised or closed: send and throw alike */
        return prim_coro_reused(out);
    case ST_RUNNING:
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return PYGEN_ERROR;
    case ST_INIT:
        if (exc != NULL) {      /* thrown into a never-started op */
            waitop_finish(op);
            prim_exc_restore(Py_NewRef(exc));
            return PYGEN_ERROR;
        }
        break;
    default:
        break;
    }

    Py_XINCREF(exc);
    if (op->state == ST_WAITING && exc == NULL) {
        /* The future's methods may run Python code (a Future subclass) that
         * sends to, throws into or closes this op: it is running from here on
         * ("already executing"), and the future is ours meanwhile. */
        op->state = ST_RUNNING;
        PyObject *fut = Py_NewRef(op->fut);
        int d = prim_fut_done(fut);
        if (d == 0) {
            /* sent to while the future is pending: answer as `await fut`
             * does -- yield it again if the driver reset its blocking flag
             * (as a Task does), else fail at the await point */
            PyObject *b = PyObject_GetAttr(fut, prim_shared.s_blocking);
            int blocking = b == NULL ? -1 : PyObject_IsTrue(b);
            Py_XDECREF(b);
            if (blocking == 0) {
                if (PyObject_SetAttr(fut, prim_shared.s_blocking, Py_True) < 0) {
                    exc = prim_exc_fetch();
                }
                else {
                    op->state = ST_WAITING;
                    *out = fut;
                    return PYGEN_NEXT;
                }
            }
            else if (blocking < 0) {
                exc = prim_exc_fetch();
            }
            else {
                PyErr_SetString(PyExc_RuntimeError, "await wasn't used with future");
                exc = prim_exc_fetch();
            }
        }
        else if (d < 0) {
            exc = prim_exc_fetch();
        }
        else {
            /* woken up: the outcome of the future is the outcome of the await */
            PyObject *r = prim_fut_result(fut);
            if (r == NULL) exc = prim_exc_fetch();
            else Py_DECREF(r);
        }
        Py_DECREF(fut);
    }
    for (;;) {
        PyObject *res = NULL;
        op->state = ST_RUNNING;
        int st = op->kind->step(op, exc, &res);
        Py_CLEAR(exc);
        if (st == WOP_WAIT) {
            if (prim_fut_set_blocking(op->fut) < 0) {
                /* cannot be awaited by a Task: fail at the await point */
                exc = prim_exc_fetch();
                continue;
            }
            op->state = ST_WAITING;
            *out = Py_NewRef(op->fut);
            return PYGEN_NEXT;
        }
        waitop_finish(op);
        if (st == WOP_DONE) {
            *out = res;
            return PYGEN_RETURN;
        }
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_SystemError, "primitive step failed without an exception");
        }
        return PYGEN_ERROR;
    }
}

static PySendResult
waitop_am_send(PyObject *self, PyObject *arg, PyObject **out)
{
    WaitOp *op = (WaitOp *)self;
    if (op->state == ST_INIT && arg != Py_None) return prim_coro_bad_first_send(out);
    return waitop_advance(op, NULL, out);
}

static PyObject *
waitop_iternext(PyObject *self)
{
    PyObject *out;
    PySendResult r = waitop_advance((WaitOp *)self, NULL, &out);
    return prim_coro_result(r, out, 1);
}

static PyObject *
waitop_send(PyObject *self, PyObject *arg)
{
    PyObject *out;
    PySendResult r = waitop_am_send(self, arg, &out);
    return prim_coro_result(r, out, 0);
}

static PyObject *
waitop_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc = prim_coro_throw_exc(args, nargs, ((WaitOp *)self)->state == ST_WAITING);
    if (exc == NULL) return NULL;
    PyObject *out;
    PySendResult r = waitop_advance((WaitOp *)self, exc, &out);
    Py_DECREF(exc);
    return prim_coro_result(r, out, 0);
}

static PyObject *
waitop_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    WaitOp *op = (WaitOp *)self;
    if (op->state == ST_RUNNING) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return NULL;
    }
    if (op->state != ST_WAITING) {
        if (op->state == ST_INIT) waitop_finish(op);
        Py_RETURN_NONE;
    }
    PyObject *exc = PyObject_CallNoArgs(PyExc_GeneratorExit);
    if (exc == NULL) return NULL;
    PyObject *out;
    PySendResult r = waitop_advance(op, exc, &out);
    Py_DECREF(exc);
    if (r == PYGEN_NEXT) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "coroutine ignored GeneratorExit");
        return NULL;
    }
    if (r == PYGEN_RETURN) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    if (PyErr_ExceptionMatches(PyExc_GeneratorExit) || PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return NULL;
}

static void
waitop_finalize(PyObject *self)
{
    WaitOp *op = (WaitOp *)self;
    if (op->state != ST_WAITING) return;
    PyObject *saved = prim_exc_fetch();
    PyObject *r = waitop_close(self, NULL);
    if (r == NULL) PyErr_WriteUnraisable(self);
    else Py_DECREF(r);
    if (saved != NULL) prim_exc_restore(saved);
}

static int
waitop_traverse(PyObject *self, visitproc visit, void *arg)
{
    WaitOp *op = (WaitOp *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(op->owner);
    Py_VISIT(op->fut);
    Py_VISIT(op->arg);
    return 0;
}

static int
waitop_clear(PyObject *self)
{
    WaitOp *op = (WaitOp *)self;
    Py_CLEAR(op->owner);
    Py_CLEAR(op->fut);
    Py_CLEAR(op->arg);
    return 0;
}

static void
waitop_dealloc(PyObject *self)
{
    WaitOp *op = (WaitOp *)self;
    if (op->state == ST_WAITING) {
        if (PyObject_CallFinalizerFromDealloc(self) < 0) return;  /* resurrected */
    }
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    waitop_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
waitop_await(PyObject *self)
{
    return Py_NewRef(self);
}

static PyObject *
waitop_get_name(PyObject *self, void *closure)
{
    return PyUnicode_FromString(((WaitOp *)self)->kind->qualname);
}

static PyObject *
waitop_repr(PyObject *self)
{
    return PyUnicode_FromFormat("<%s awaitable at %p>", ((WaitOp *)self)->kind->qualname, self);
}

static PyMethodDef waitop_methods[] = {
    {"send", waitop_send, METH_O, "send(value) -> next yielded future or StopIteration."},
    {"throw", (PyCFunction)(void (*)(void))waitop_throw, METH_FASTCALL, "throw(exc) -> raise exc at the suspension point."},
    {"close", waitop_close, METH_NOARGS, "close() -> raise GeneratorExit at the suspension point."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef waitop_getset[] = {
    {"__name__", waitop_get_name, NULL, NULL, NULL},
    {"__qualname__", waitop_get_name, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot waitop_slots[] = {
    {Py_am_await, waitop_await},
    {Py_am_send, waitop_am_send},
    {Py_tp_iter, waitop_await},
    {Py_tp_iternext, waitop_iternext},
    {Py_tp_methods, waitop_methods},
    {Py_tp_getset, waitop_getset},
    {Py_tp_traverse, waitop_traverse},
    {Py_tp_clear, waitop_clear},
    {Py_tp_dealloc, waitop_dealloc},
    {Py_tp_finalize, waitop_finalize},
    {Py_tp_repr, waitop_repr},
    {0, NULL},
};

static PyType_Spec waitop_spec = {
    .name = "pyasync_c._primitives._WaitOp",
    .basicsize = sizeof(WaitOp),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = waitop_slots,
};

/* ------------------------------------------------------------------ */
/* _Done: stateless awaitable finishing at once with None              */

static PyObject *done_self(PyObject *self) { return Py_NewRef(self); }
static PyObject *done_iternext(PyObject *self) { return NULL; }   /* StopIteration(None) */

static PySendResult
done_am_send(PyObject *self, PyObject *arg, PyObject **out)
{
    *out = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

static PyObject *
done_send(PyObject *self, PyObject *arg)
{
    PyErr_SetNone(PyExc_StopIteration);
    return NULL;
}

/* Not started as far as anyone can tell: the thrown exception is raised. */
static PyObject *
done_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc = prim_coro_throw_exc(args, nargs, 0);
    if (exc != NULL) prim_exc_restore(exc);
    return NULL;
}

static PyObject *done_close(PyObject *self, PyObject *Py_UNUSED(a)) { Py_RETURN_NONE; }

static void
done_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef done_methods[] = {
    {"send", done_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))done_throw, METH_FASTCALL, NULL},
    {"close", done_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot done_slots[] = {
    {Py_am_await, done_self},
    {Py_am_send, done_am_send},
    {Py_tp_iter, done_self},
    {Py_tp_iternext, done_iternext},
    {Py_tp_methods, done_methods},
    {Py_tp_dealloc, done_dealloc},
    {0, NULL},
};

static PyType_Spec done_spec = {
    .name = "pyasync_c._primitives._Done",
    .basicsize = sizeof(PyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = done_slots,
};

/* ------------------------------------------------------------------ */
/* shared init                                                         */

static int
intern(PyObject **slot, const char *s)
{
    *slot = PyUnicode_InternFromString(s);
    return *slot ? 0 : -1;
}

PyObject *
prim_import_attr(const char *mod, const char *name)
{
    PyObject *m = PyImport_ImportModule(mod);
    if (m == NULL) return NULL;
    PyObject *a = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return a;
}

int
prim_shared_init(PyObject *module)
{
    prim_shared_t *s = &prim_shared;
    if (s->ready) return 0;
    if (intern(&s->s_done, "done") || intern(&s->s_cancelled, "cancelled")
        || intern(&s->s_set_result, "set_result") || intern(&s->s_cancel, "cancel")
        || intern(&s->s_result, "result") || intern(&s->s_create_future, "create_future")
        || intern(&s->s_blocking, "_asyncio_future_blocking") || intern(&s->s_append, "append")
        || intern(&s->s_popleft, "popleft") || intern(&s->s_pop, "pop")
        || intern(&s->s__init, "_init") || intern(&s->s__get, "_get") || intern(&s->s__put, "_put")
        || intern(&s->s_qsize, "qsize") || intern(&s->s_empty, "empty") || intern(&s->s_full, "full")
        || intern(&s->s__format, "_format") || intern(&s->s_release, "release")
        || intern(&s->s_acquire, "acquire") || intern(&s->s_locked, "locked")
        || intern(&s->s_put_nowait, "put_nowait") || intern(&s->s_get_nowait, "get_nowait")
        || intern(&s->s_Future, "Future") || intern(&s->s_loop_module, "pyasync_c._loop"))
        return -1;
    if ((s->CancelledError = prim_import_attr("asyncio", "CancelledError")) == NULL) return -1;
    if ((s->QueueEmpty = prim_import_attr("asyncio", "QueueEmpty")) == NULL) return -1;
    if ((s->QueueFull = prim_import_attr("asyncio", "QueueFull")) == NULL) return -1;
#if PRIM_PY313
    if ((s->QueueShutDown = prim_import_attr("asyncio", "QueueShutDown")) == NULL) return -1;
#endif
    if ((s->get_running_loop = prim_import_attr("asyncio.events", "_get_running_loop")) == NULL) return -1;
#if !PRIM_PY312
    if (intern(&s->s_running_loop_key, "__asyncio_running_event_loop__")) return -1;
    this_process = getpid();
    if (pthread_atfork(NULL, NULL, refresh_pid_after_fork) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return -1;
    }
#endif
    if ((s->futures_module = PyImport_ImportModule("asyncio.futures")) == NULL) return -1;
    if ((s->kw_loop = Py_BuildValue("(s)", "loop")) == NULL) return -1;
    PyObject *base_loop = prim_import_attr("asyncio.base_events", "BaseEventLoop");
    if (base_loop == NULL) return -1;
    s->base_create_future = PyType_Check(base_loop)
        ? _PyType_Lookup((PyTypeObject *)base_loop, s->s_create_future) : NULL;
    Py_XINCREF(s->base_create_future);   /* NULL: no fast path */
    Py_DECREF(base_loop);
    if ((s->deque_type = prim_import_attr("collections", "deque")) == NULL) return -1;
    if ((s->deque_append = PyObject_GetAttrString(s->deque_type, "append")) == NULL) return -1;
    if ((s->deque_popleft = PyObject_GetAttrString(s->deque_type, "popleft")) == NULL) return -1;
    if ((s->heappush = prim_import_attr("heapq", "heappush")) == NULL) return -1;
    if ((s->heappop = prim_import_attr("heapq", "heappop")) == NULL) return -1;
    PyObject *cf = prim_import_attr("_asyncio", "Future");
    if (cf == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ImportError) && !PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();          /* no accelerator: method calls only */
    }
    else if (!PyType_Check(cf)) {
        Py_DECREF(cf);
    }
    else {
        PyObject *o = (PyObject *)cf;
        if ((s->cf_done = PyObject_GetAttr(o, s->s_done)) == NULL
            || (s->cf_cancelled = PyObject_GetAttr(o, s->s_cancelled)) == NULL
            || (s->cf_result = PyObject_GetAttr(o, s->s_result)) == NULL
            || (s->cf_set_result = PyObject_GetAttr(o, s->s_set_result)) == NULL
            || (s->cf_blocking = PyObject_GetAttr(o, s->s_blocking)) == NULL)
            return -1;
        if (Py_TYPE(s->cf_blocking)->tp_descr_set == NULL) {
            PyErr_SetString(PyExc_TypeError, "_asyncio.Future._asyncio_future_blocking is not settable");
            return -1;
        }
        s->CFutureType = (PyTypeObject *)cf;   /* set last: enables the fast paths */
    }
    s->WaitOpType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &waitop_spec, NULL);
    if (s->WaitOpType == NULL) return -1;
    PyTypeObject *done_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &done_spec, NULL);
    if (done_type == NULL) return -1;
    s->done_none = done_type->tp_alloc(done_type, 0);
    Py_DECREF(done_type);     /* the instance keeps its type alive */
    if (s->done_none == NULL) return -1;
    s->ready = 1;
    return 0;
}
