/* Native asyncio Queue, LifoQueue and PriorityQueue.
 *
 * Semantics follow the running Python's asyncio.queues (3.11 = 3.12; 3.13
 * adds shutdown()/QueueShutDown, selected with PRIM_PY313).  A queue object
 * holds: its storage object `_queue` (a collections.deque for Queue, a list
 * for LifoQueue/PriorityQueue, exactly as asyncio's, so private access and
 * subclasses see the real thing), the getters/putters waitq_t FIFOs
 * (waiters.c), the unfinished-task count, a native Event (`_finished`) and
 * the loop it got bound to on its first wait.
 *
 * Storage hooks: the mode is chosen per instance from its type (and again
 * whenever the type or the instance dict changes, see queue_refresh).  If
 * the type's _init/_get/_put are all the C ones of Queue,
 * LifoQueue or PriorityQueue, storage is manipulated directly in C (deque
 * descriptors, list API, heapq functions); otherwise (a Python subclass
 * overriding any of them) every storage access calls the Python methods, as
 * asyncio does.  Likewise qsize/empty/full overrides are honoured by calling
 * them, and put()/get() end with an overridden put_nowait()/get_nowait().
 * put()/get() return a WaitOp (waiters.c) whose step functions below are
 * the coroutine bodies; join() is the `_finished` Event's wait.
 * Objects are GC-tracked; tp_clear drops storage, waiters, event and loop.
 */
#include "waiters.h"
#include "coroutine_function.h"

#include <structmember.h>

enum { QM_FIFO, QM_LIFO, QM_HEAP, QM_PY };

typedef struct {
    PyObject_HEAD
    PyObject *loop;
    PyObject *weakreflist;
    PyObject *dict;           /* instance __dict__ (prim_instance_dict_init) */
    PyObject *queue;          /* `_queue` */
    PyObject *finished;       /* native Event */
    PyObject *maxsize_obj;
    Py_ssize_t maxsize;       /* when maxsize_obj is an int (else compared as objects) */
    Py_ssize_t unfinished;
    char maxsize_generic;
    waitq_t getters;
    waitq_t putters;
    int mode;
    int size_hooks;           /* qsize/empty/full overridden in Python */
    int nowait_hooks;         /* put_nowait (NOWAIT_PUT) / get_nowait (NOWAIT_GET) overridden:
                               * put()/get() then end with them, as asyncio's do */
    /* mode/size_hooks/nowait_hooks above are what applies now (see
     * queue_refresh): the class's, found at its version type_tag and kept
     * in class_*, plus what the instance __dict__ overrides, looked at when
     * its stamp was dict_stamp */
    unsigned int type_tag;
    int class_mode, class_size_hooks, class_nowait_hooks;
    uint64_t dict_stamp;
    char is_shutdown;
} QueueObject;

static PyTypeObject *QueueType, *LifoType, *PrioType;
/* C method descriptors for override detection: [class][_init,_get,_put] */
static PyObject *hook_desc[3][3];
static PyObject *size_desc[3];   /* Queue.qsize, empty, full */
static PyObject *nowait_desc[2]; /* Queue.put_nowait, get_nowait */
static const char *const size_names[3] = {"qsize", "empty", "full"};
static const char *const nowait_names[2] = {"put_nowait", "get_nowait"};
enum { NOWAIT_PUT = 1, NOWAIT_GET = 2 };

/* ------------------------------------------------------------------ */
/* storage                                                              */

static int
no_storage(PyObject *self)
{
    PyErr_Format(PyExc_AttributeError, "'%s' object has no attribute '_queue'", Py_TYPE(self)->tp_name);
    return -1;
}

static inline int
is_deque(PyObject *o)
{
    return o != NULL && Py_TYPE(o) == (PyTypeObject *)prim_shared.deque_type;
}

static PyObject *
vcall2(PyObject *fn, PyObject *a, PyObject *b)
{
    PyObject *args[2] = {a, b};
    return PyObject_Vectorcall(fn, args, b ? 2 : 1, NULL);
}

static int
set_storage(QueueObject *self, PyObject *obj)
{
    if (obj == NULL) return -1;
    Py_XSETREF(self->queue, obj);
    return 0;
}

/* The storage with a reference of our own.  Every operation below may run
 * Python code (an item's __lt__/__eq__/__del__, a storage subclass's
 * methods, the GC) that can replace `_queue`; holding the container keeps
 * it alive until the C function working on it returns, as asyncio's
 * `self._queue` on the Python stack does. */
static PyObject *
storage_ref(QueueObject *self)
{
    PyObject *q = self->queue;
    if (q == NULL) return no_storage((PyObject *)self), NULL;
    return Py_NewRef(q);
}

/* Queue._init/_put/_get */
static int
fifo_init(QueueObject *self)
{
    return set_storage(self, PyObject_CallNoArgs(prim_shared.deque_type));
}

static int
fifo_put(QueueObject *self, PyObject *item)
{
    PyObject *q = storage_ref(self), *r;
    if (q == NULL) return -1;
    /* a maxlen deque drops its oldest item here: its __del__ may run */
    if (is_deque(q)) r = vcall2(prim_shared.deque_append, q, item);
    else r = PyObject_CallMethodOneArg(q, prim_shared.s_append, item);
    Py_DECREF(q);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *
fifo_get(QueueObject *self)
{
    PyObject *q = storage_ref(self), *r;
    if (q == NULL) return NULL;
    if (is_deque(q)) r = vcall2(prim_shared.deque_popleft, q, NULL);
    else r = PyObject_CallMethodNoArgs(q, prim_shared.s_popleft);
    Py_DECREF(q);
    return r;
}

/* LifoQueue._init/_put/_get, PriorityQueue._init */
static int
list_init(QueueObject *self)
{
    return set_storage(self, PyList_New(0));
}

static int
lifo_put(QueueObject *self, PyObject *item)
{
    PyObject *q = storage_ref(self);
    if (q == NULL) return -1;
    int rc;
    if (PyList_CheckExact(q)) rc = PyList_Append(q, item);
    else {
        PyObject *r = PyObject_CallMethodOneArg(q, prim_shared.s_append, item);
        rc = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    Py_DECREF(q);
    return rc;
}

static PyObject *
lifo_get(QueueObject *self)
{
    PyObject *q = storage_ref(self), *item;
    if (q == NULL) return NULL;
    if (PyList_CheckExact(q)) {
        Py_ssize_t n = PyList_GET_SIZE(q);
        if (n == 0) {
            PyErr_SetString(PyExc_IndexError, "pop from empty list");
            item = NULL;
        }
        else {
            item = Py_NewRef(PyList_GET_ITEM(q, n - 1));
            if (PyList_SetSlice(q, n - 1, n, NULL) < 0) Py_CLEAR(item);
        }
    }
    else item = PyObject_CallMethodNoArgs(q, prim_shared.s_pop);
    Py_DECREF(q);
    return item;
}

/* PriorityQueue._put/_get: heapq on the list (its comparisons run the items' __lt__) */
static int
heap_put(QueueObject *self, PyObject *item)
{
    PyObject *q = storage_ref(self);
    if (q == NULL) return -1;
    PyObject *r = vcall2(prim_shared.heappush, q, item);
    Py_DECREF(q);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *
heap_get(QueueObject *self)
{
    PyObject *q = storage_ref(self);
    if (q == NULL) return NULL;
    PyObject *r = vcall2(prim_shared.heappop, q, NULL);
    Py_DECREF(q);
    return r;
}

/* the instance's storage operations (fast C path or Python hooks) */
static int
q_init_storage(QueueObject *self)
{
    switch (self->mode) {
    case QM_FIFO: return fifo_init(self);
    case QM_LIFO:
    case QM_HEAP: return list_init(self);
    default: {
        PyObject *r = PyObject_CallMethodOneArg((PyObject *)self, prim_shared.s__init, self->maxsize_obj);
        if (r == NULL) return -1;
        Py_DECREF(r);
        return 0;
    }
    }
}

static int
q_put_item(QueueObject *self, PyObject *item)
{
    switch (self->mode) {
    case QM_FIFO: return fifo_put(self, item);
    case QM_LIFO: return lifo_put(self, item);
    case QM_HEAP: return heap_put(self, item);
    default: {
        PyObject *r = PyObject_CallMethodOneArg((PyObject *)self, prim_shared.s__put, item);
        if (r == NULL) return -1;
        Py_DECREF(r);
        return 0;
    }
    }
}

static PyObject *
q_get_item(QueueObject *self)
{
    switch (self->mode) {
    case QM_FIFO: return fifo_get(self);
    case QM_LIFO: return lifo_get(self);
    case QM_HEAP: return heap_get(self);
    default: return PyObject_CallMethodNoArgs((PyObject *)self, prim_shared.s__get);
    }
}

/* len(self._queue) */
static Py_ssize_t
storage_len(QueueObject *self)
{
    PyObject *q = self->queue;
    if (q == NULL) return no_storage((PyObject *)self);
    if (PyList_CheckExact(q)) return PyList_GET_SIZE(q);
    if (is_deque(q)) return PyObject_Size(q);   /* runs no Python code */
    Py_INCREF(q);                       /* a subclass's __len__ may replace `_queue` */
    Py_ssize_t n = PyObject_Size(q);
    Py_DECREF(q);
    return n;
}

/* not self._queue */
static int
storage_empty(QueueObject *self)
{
    PyObject *q = self->queue;
    if (q == NULL) return no_storage((PyObject *)self);
    if (PyList_CheckExact(q)) return PyList_GET_SIZE(q) == 0;
    if (is_deque(q)) return PyObject_Size(q) == 0;
    Py_INCREF(q);
    int t = PyObject_IsTrue(q);
    Py_DECREF(q);
    return t < 0 ? -1 : !t;
}

static int
call_truth(PyObject *self, PyObject *name)
{
    PyObject *r = PyObject_CallMethodNoArgs(self, name);
    if (r == NULL) return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

/* Queue.full() as asyncio's: `False if maxsize <= 0 else self.qsize() >= maxsize`,
 * where both comparisons are made on the objects (a subclass's qsize() may return
 * a float or a huge int; maxsize may be any object comparable with ints).  New
 * reference to the result (the comparison's own object, as asyncio returns it). */
static PyObject *
full_result(QueueObject *self)
{
    if (self->maxsize_generic) {
        PyObject *maxsize = Py_NewRef(self->maxsize_obj), *zero = PyLong_FromLong(0);
        int le = zero == NULL ? -1 : PyObject_RichCompareBool(maxsize, zero, Py_LE);
        Py_XDECREF(zero);
        Py_DECREF(maxsize);
        if (le < 0) return NULL;
        if (le) Py_RETURN_FALSE;
    }
    else if (self->maxsize <= 0) {
        Py_RETURN_FALSE;
    }
    PyObject *size;
    if (self->size_hooks) {
        size = PyObject_CallMethodNoArgs((PyObject *)self, prim_shared.s_qsize);
    }
    else {
        Py_ssize_t n = storage_len(self);
        size = n < 0 ? NULL : PyLong_FromSsize_t(n);
    }
    if (size == NULL) return NULL;
    PyObject *maxsize = Py_NewRef(self->maxsize_obj);   /* qsize() may have re-run __init__ */
    PyObject *r = PyObject_RichCompare(size, maxsize, Py_GE);
    Py_DECREF(maxsize);
    Py_DECREF(size);
    return r;
}

/* Queue.full() body as a truth value; C integers for our own types */
static int
full_body(QueueObject *self)
{
    if (!self->maxsize_generic && !self->size_hooks) {
        if (self->maxsize <= 0) return 0;
        Py_ssize_t n = storage_len(self);
        if (n < 0) return -1;
        return n >= self->maxsize;
    }
    PyObject *r = full_result(self);
    if (r == NULL) return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

/* self.full() / self.empty() */
static int
q_full(QueueObject *self)
{
    if (self->size_hooks) return call_truth((PyObject *)self, prim_shared.s_full);
    return full_body(self);
}

static int
q_empty(QueueObject *self)
{
    if (self->size_hooks) return call_truth((PyObject *)self, prim_shared.s_empty);
    return storage_empty(self);
}

/* ------------------------------------------------------------------ */
/* construction                                                         */

/* Bit i set when type's names[i] is not Queue's own descs[i] (a Python override). */
static int
overrides(PyTypeObject *type, const char *const *names, PyObject **descs, int n)
{
    int bits = 0;
    for (int i = 0; i < n; i++) {
        PyObject *f = PyObject_GetAttrString((PyObject *)type, names[i]);
        if (f == NULL) PyErr_Clear();
        if (f != descs[i]) bits |= 1 << i;
        Py_XDECREF(f);
    }
    return bits;
}

/* Per own class (QM_FIFO/QM_LIFO/QM_HEAP index): the version tag at which
 * it was last found free of Python overrides, so that Queue() skips the
 * lookups while nobody patched the class (0: not known). */
static unsigned int pristine_tag[3];

static int
own_class_index(PyTypeObject *type)
{
    return type == QueueType ? QM_FIFO : type == LifoType ? QM_LIFO : type == PrioType ? QM_HEAP : -1;
}

/* The class's storage mode and hooks, into self->class_* and type_tag. */
static void
detect_mode(QueueObject *self, PyTypeObject *type)
{
    int own = own_class_index(type);
    unsigned int tag = type->tp_version_tag;
    self->class_size_hooks = 0;
    self->class_nowait_hooks = 0;
    if (own >= 0 && tag != 0 && tag == pristine_tag[own]) {
        self->class_mode = own;
        self->type_tag = tag;
        return;
    }
    static const char *hooks[3] = {"_init", "_get", "_put"};
    PyObject *found[3] = {NULL, NULL, NULL};
    self->class_mode = QM_PY;
    for (int i = 0; i < 3; i++) {
        found[i] = PyObject_GetAttrString((PyObject *)type, hooks[i]);
        if (found[i] == NULL) PyErr_Clear();
    }
    for (int c = 0; c < 3; c++) {
        if (found[0] == hook_desc[c][0] && found[1] == hook_desc[c][1] && found[2] == hook_desc[c][2]) {
            self->class_mode = c;   /* QM_FIFO/QM_LIFO/QM_HEAP match the class index */
            break;
        }
    }
    for (int i = 0; i < 3; i++) Py_XDECREF(found[i]);
    self->class_size_hooks = overrides(type, size_names, size_desc, 3) != 0;
    self->class_nowait_hooks = overrides(type, nowait_names, nowait_desc, 2);
    self->type_tag = type->tp_version_tag;      /* the lookups assigned one */
    if (own >= 0 && self->class_mode == own && !self->class_size_hooks && !self->class_nowait_hooks)
        pristine_tag[own] = self->type_tag;
}

/* Python code may override the storage hooks and qsize/empty/full/
 * put_nowait/get_nowait, which asyncio's methods call through self: in a
 * subclass, by patching the class (mutable, as asyncio's are:
 * mock.patch.object(asyncio.Queue, "put_nowait")) or on the instance (its
 * __dict__).  Called before each operation: the class is looked at again
 * only when its version tag moved (CPython gives a class a new tag whenever
 * it or a base changes; 0: none assigned, look again), the instance dict
 * only when its stamp changed (prim_dict_stamp). */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void
queue_refresh_slow(QueueObject *self, int stale, uint64_t stamp)
{
    if (stale) detect_mode(self, Py_TYPE(self));
    self->mode = self->class_mode;
    self->size_hooks = self->class_size_hooks;
    self->nowait_hooks = self->class_nowait_hooks;
    self->dict_stamp = stamp;
    if (stamp != 0) {
        PyObject *names[8] = {prim_shared.s__init, prim_shared.s__get, prim_shared.s__put,
                              prim_shared.s_qsize, prim_shared.s_empty, prim_shared.s_full,
                              prim_shared.s_put_nowait, prim_shared.s_get_nowait};
        int bits = prim_dict_names(self->dict, names, 8);
        if (bits & 7) self->mode = QM_PY;
        if (bits & (7 << 3)) self->size_hooks = 1;
        self->nowait_hooks |= bits >> 6;           /* NOWAIT_PUT, NOWAIT_GET */
    }
}

static inline void
queue_refresh(QueueObject *self)
{
    unsigned int tag = Py_TYPE(self)->tp_version_tag;
    int stale = tag == 0 || tag != self->type_tag;
    uint64_t stamp = prim_dict_stamp(self->dict);
    if (stale || stamp != self->dict_stamp || stamp == PRIM_DICT_UNKNOWN)
        queue_refresh_slow(self, stale, stamp);
}

static PyObject *
queue_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    QueueObject *self = (QueueObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    if (prim_instance_dict_init(&self->dict) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    queue_refresh(self);
    self->maxsize_obj = PyLong_FromLong(0);
    self->finished = prim_event_new();
    if (self->maxsize_obj == NULL || self->finished == NULL || prim_event_set(self->finished) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
queue_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    QueueObject *self = (QueueObject *)op;
    const char *cls = "Queue";
    PyObject *m = NULL;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "%s.__init__() takes from 1 to 2 positional arguments but %zd were given",
                     cls, nargs + 1);
        return -1;
    }
    if (nargs == 1) m = PyTuple_GET_ITEM(args, 0);
    if (kwds != NULL) {
        PyObject *key, *val;
        Py_ssize_t pos = 0;
        while (PyDict_Next(kwds, &pos, &key, &val)) {
            if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "maxsize") == 0 && m == NULL) {
                m = val;
            }
            else {
                PyErr_Format(PyExc_TypeError, "%s.__init__() got an unexpected keyword argument '%S'", cls, key);
                return -1;
            }
        }
    }
    Py_ssize_t maxsize = 0;
    self->maxsize_generic = 0;
    if (m != NULL) {
        if (PyIndex_Check(m)) {
            maxsize = PyNumber_AsSsize_t(m, NULL);     /* clamps huge ints */
            if (maxsize == -1 && PyErr_Occurred()) return -1;
        }
        else {
            self->maxsize_generic = 1;   /* as asyncio: any object comparable with ints */
        }
    }
    else {
        m = Py_False;  /* placeholder, replaced below */
    }
    PyObject *mobj = (m == Py_False) ? PyLong_FromLong(0) : Py_NewRef(m);
    if (mobj == NULL) return -1;
    Py_XSETREF(self->maxsize_obj, mobj);
    self->maxsize = maxsize;
    self->unfinished = 0;
    self->is_shutdown = 0;
    queue_refresh(self);
    if (prim_event_set(self->finished) < 0) return -1;
    return q_init_storage(self);
}

static int
queue_traverse(PyObject *op, visitproc visit, void *arg)
{
    QueueObject *self = (QueueObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->loop);
    Py_VISIT(self->dict);
    Py_VISIT(self->queue);
    Py_VISIT(self->finished);
    Py_VISIT(self->maxsize_obj);
    if (waitq_traverse(&self->getters, visit, arg)) return -1;
    return waitq_traverse(&self->putters, visit, arg);
}

static int
queue_clear(PyObject *op)
{
    QueueObject *self = (QueueObject *)op;
    Py_CLEAR(self->loop);
    Py_CLEAR(self->dict);
    Py_CLEAR(self->queue);
    Py_CLEAR(self->finished);
    Py_CLEAR(self->maxsize_obj);
    waitq_clear(&self->getters);
    waitq_clear(&self->putters);
    return 0;
}

static void
queue_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (((QueueObject *)op)->weakreflist != NULL) PyObject_ClearWeakRefs(op);
    queue_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* ------------------------------------------------------------------ */
/* operations                                                           */

#if PRIM_PY313
static int
raise_shutdown(void)
{
    PyErr_SetNone(prim_shared.QueueShutDown);
    return -1;
}
#endif

static int
do_put_nowait(QueueObject *self, PyObject *item)
{
#if PRIM_PY313
    if (self->is_shutdown) return raise_shutdown();
#endif
    int full = q_full(self);
    if (full < 0) return -1;
    if (full) {
        PyErr_SetNone(prim_shared.QueueFull);
        return -1;
    }
    if (q_put_item(self, item) < 0) return -1;
    self->unfinished++;
    prim_event_clear(self->finished);
    return waitq_pop_wake(&self->getters, Py_None) < 0 ? -1 : 0;
}

static PyObject *
do_get_nowait(QueueObject *self)
{
    int empty = q_empty(self);
    if (empty < 0) return NULL;
    if (empty) {
#if PRIM_PY313
        if (self->is_shutdown) return raise_shutdown(), NULL;
#endif
        PyErr_SetNone(prim_shared.QueueEmpty);
        return NULL;
    }
    PyObject *item = q_get_item(self);
    if (item == NULL) return NULL;
    if (waitq_pop_wake(&self->putters, Py_None) < 0) {
        Py_DECREF(item);
        return NULL;
    }
    return item;
}

/* `except: fut.cancel(); remove; if <ready> and not fut.cancelled(): wake next; raise` */
static int
abandon_wait(QueueObject *self, waitq_t *q, PyObject *fut, PyObject *exc, int is_put)
{
    if (prim_fut_cancel(fut) < 0) return WOP_ERROR;
    waitq_remove(q, fut);
    int blocked = is_put ? q_full(self) : q_empty(self);
    if (blocked < 0) return WOP_ERROR;
    if (!blocked) {
        int c = prim_fut_cancelled(fut);
        if (c < 0) return WOP_ERROR;
        if (!c && waitq_pop_wake(q, Py_None) < 0) return WOP_ERROR;
    }
    return waitop_reraise(exc);
}

static int
put_step(WaitOp *op, PyObject *exc, PyObject **res)
{
    QueueObject *self = (QueueObject *)op->owner;
    queue_refresh(self);
    if (exc != NULL) return abandon_wait(self, &self->putters, op->fut, exc, 1);
    for (;;) {
        int full = q_full(self);
        if (full < 0) return WOP_ERROR;
        if (!full) break;
#if PRIM_PY313
        if (self->is_shutdown) return raise_shutdown();
#endif
        PyObject *fut = prim_new_waiter(op->owner, &self->loop);
        if (fut == NULL) return WOP_ERROR;
        if (waitq_append(&self->putters, fut) < 0) {
            Py_DECREF(fut);
            return WOP_ERROR;
        }
        waitop_set_fut(op, fut);
        return WOP_WAIT;
    }
    if (self->nowait_hooks & NOWAIT_PUT) {   /* `return self.put_nowait(item)` */
        *res = PyObject_CallMethodOneArg(op->owner, prim_shared.s_put_nowait, op->arg);
        return *res ? WOP_DONE : WOP_ERROR;
    }
    if (do_put_nowait(self, op->arg) < 0) return WOP_ERROR;
    *res = Py_NewRef(Py_None);
    return WOP_DONE;
}
static const waitop_kind put_kind = {put_step, "Queue.put"};

static int
get_step(WaitOp *op, PyObject *exc, PyObject **res)
{
    QueueObject *self = (QueueObject *)op->owner;
    queue_refresh(self);
    if (exc != NULL) return abandon_wait(self, &self->getters, op->fut, exc, 0);
    for (;;) {
        int empty = q_empty(self);
        if (empty < 0) return WOP_ERROR;
        if (!empty) break;
#if PRIM_PY313
        if (self->is_shutdown) return raise_shutdown();
#endif
        PyObject *fut = prim_new_waiter(op->owner, &self->loop);
        if (fut == NULL) return WOP_ERROR;
        if (waitq_append(&self->getters, fut) < 0) {
            Py_DECREF(fut);
            return WOP_ERROR;
        }
        waitop_set_fut(op, fut);
        return WOP_WAIT;
    }
    if (self->nowait_hooks & NOWAIT_GET)    /* `return self.get_nowait()` */
        *res = PyObject_CallMethodNoArgs(op->owner, prim_shared.s_get_nowait);
    else
        *res = do_get_nowait(self);
    return *res ? WOP_DONE : WOP_ERROR;
}
static const waitop_kind get_kind = {get_step, "Queue.get"};

static PyObject *
queue_put(PyObject *self, PyObject *const *args)
{
    return waitop_new(&put_kind, self, args[0], 0);
}

static PyObject *
queue_get(PyObject *self, PyObject *const *Py_UNUSED(args))
{
    return waitop_new(&get_kind, self, NULL, 0);
}

static PyObject *
queue_put_nowait(PyObject *self, PyObject *item)
{
    queue_refresh((QueueObject *)self);
    if (do_put_nowait((QueueObject *)self, item) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *
queue_get_nowait(PyObject *self, PyObject *Py_UNUSED(a))
{
    queue_refresh((QueueObject *)self);
    return do_get_nowait((QueueObject *)self);
}

static PyObject *
queue_task_done(PyObject *op, PyObject *Py_UNUSED(a))
{
    QueueObject *self = (QueueObject *)op;
    if (self->unfinished <= 0) {
        PyErr_SetString(PyExc_ValueError, "task_done() called too many times");
        return NULL;
    }
    self->unfinished--;
    if (self->unfinished == 0 && prim_event_set(self->finished) < 0) return NULL;
    Py_RETURN_NONE;
}

/* join() == `if unfinished: await self._finished.wait()`; the event is set
 * exactly when the count is 0, so waiting on it is the same test. */
static PyObject *
queue_join(PyObject *op, PyObject *const *Py_UNUSED(args))
{
    return prim_event_wait(((QueueObject *)op)->finished, 1);
}

#if PRIM_PY313
static PyObject *
queue_shutdown(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"immediate", NULL};
    QueueObject *self = (QueueObject *)op;
    int immediate = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p:shutdown", kwlist, &immediate)) return NULL;
    queue_refresh(self);
    self->is_shutdown = 1;
    if (immediate) {
        for (;;) {
            int empty = q_empty(self);
            if (empty < 0) return NULL;
            if (empty) break;
            PyObject *item = q_get_item(self);
            if (item == NULL) return NULL;
            Py_DECREF(item);
            if (self->unfinished > 0) self->unfinished--;
        }
        if (self->unfinished == 0 && prim_event_set(self->finished) < 0) return NULL;
    }
    if (waitq_wake_all(&self->getters, Py_None, 1) < 0) return NULL;
    if (waitq_wake_all(&self->putters, Py_None, 1) < 0) return NULL;
    Py_RETURN_NONE;
}
#endif

static PyObject *
queue_qsize(PyObject *op, PyObject *Py_UNUSED(a))
{
    Py_ssize_t n = storage_len((QueueObject *)op);
    if (n < 0) return NULL;
    return PyLong_FromSsize_t(n);
}

static PyObject *
queue_empty(PyObject *op, PyObject *Py_UNUSED(a))
{
    int e = storage_empty((QueueObject *)op);
    if (e < 0) return NULL;
    return PyBool_FromLong(e);
}

static PyObject *
queue_full(PyObject *op, PyObject *Py_UNUSED(a))
{
    QueueObject *self = (QueueObject *)op;
    queue_refresh(self);
    if (!self->maxsize_generic && !self->size_hooks) {
        int f = full_body(self);
        if (f < 0) return NULL;
        return PyBool_FromLong(f);
    }
    return full_result(self);
}

/* the overridable hooks, callable from Python subclasses via super() */
static PyObject *
q_init_meth(QueueObject *self, PyObject *maxsize, int (*init)(QueueObject *))
{
    if (init(self) < 0) return NULL;
    Py_RETURN_NONE;
}
static PyObject *fifo_init_meth(PyObject *s, PyObject *m) { return q_init_meth((QueueObject *)s, m, fifo_init); }
static PyObject *list_init_meth(PyObject *s, PyObject *m) { return q_init_meth((QueueObject *)s, m, list_init); }

static PyObject *
put_result(int rc)
{
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}
static PyObject *fifo_put_meth(PyObject *s, PyObject *i) { return put_result(fifo_put((QueueObject *)s, i)); }
static PyObject *lifo_put_meth(PyObject *s, PyObject *i) { return put_result(lifo_put((QueueObject *)s, i)); }
static PyObject *heap_put_meth(PyObject *s, PyObject *i) { return put_result(heap_put((QueueObject *)s, i)); }
static PyObject *fifo_get_meth(PyObject *s, PyObject *Py_UNUSED(a)) { return fifo_get((QueueObject *)s); }
static PyObject *lifo_get_meth(PyObject *s, PyObject *Py_UNUSED(a)) { return lifo_get((QueueObject *)s); }
static PyObject *heap_get_meth(PyObject *s, PyObject *Py_UNUSED(a)) { return heap_get((QueueObject *)s); }

static PyObject *
queue_format(PyObject *op, PyObject *Py_UNUSED(a))
{
    QueueObject *self = (QueueObject *)op;
    /* repr(), truth and list() run Python code: hold what they work on */
    PyObject *maxsize = Py_NewRef(self->maxsize_obj ? self->maxsize_obj : Py_None);
    PyObject *res = PyUnicode_FromFormat("maxsize=%R", maxsize);
    Py_DECREF(maxsize);
    if (res == NULL) return NULL;
    PyObject *more = NULL;
    if (self->queue != NULL) {
        /* `if getattr(self, '_queue', None): ... list(self._queue)`: read twice */
        PyObject *q = Py_NewRef(self->queue);
        int t = PyObject_IsTrue(q);
        Py_DECREF(q);
        if (t < 0) goto error;
        if (t) {
            if ((q = storage_ref(self)) == NULL) goto error;
            PyObject *lst = PySequence_List(q);
            Py_DECREF(q);
            if (lst == NULL) goto error;
            more = PyUnicode_FromFormat("%U _queue=%R", res, lst);
            Py_DECREF(lst);
            if (more == NULL) goto error;
            Py_SETREF(res, more);
        }
    }
    if (waitq_len(&self->getters)) {
        if ((more = PyUnicode_FromFormat("%U _getters[%zd]", res, waitq_len(&self->getters))) == NULL) goto error;
        Py_SETREF(res, more);
    }
    if (waitq_len(&self->putters)) {
        if ((more = PyUnicode_FromFormat("%U _putters[%zd]", res, waitq_len(&self->putters))) == NULL) goto error;
        Py_SETREF(res, more);
    }
    if (self->unfinished) {
        if ((more = PyUnicode_FromFormat("%U tasks=%zd", res, self->unfinished)) == NULL) goto error;
        Py_SETREF(res, more);
    }
#if PRIM_PY313
    if (self->is_shutdown) {
        if ((more = PyUnicode_FromFormat("%U shutdown", res)) == NULL) goto error;
        Py_SETREF(res, more);
    }
#endif
    return res;
error:
    Py_DECREF(res);
    return NULL;
}

static PyObject *
queue_repr_impl(PyObject *op, int with_id)
{
    PyObject *fmt = PyObject_CallMethodNoArgs(op, prim_shared.s__format);
    if (fmt == NULL) return NULL;
    PyObject *name = PyType_GetName(Py_TYPE(op));
    if (name == NULL) {
        Py_DECREF(fmt);
        return NULL;
    }
    PyObject *r = with_id ? PyUnicode_FromFormat("<%U at %p %U>", name, op, fmt)
                          : PyUnicode_FromFormat("<%U %U>", name, fmt);
    Py_DECREF(name);
    Py_DECREF(fmt);
    return r;
}
static PyObject *queue_repr(PyObject *op) { return queue_repr_impl(op, 1); }
static PyObject *queue_str(PyObject *op) { return queue_repr_impl(op, 0); }

/* private attribute views */
static PyObject *
get_queue(PyObject *op, void *c)
{
    QueueObject *self = (QueueObject *)op;
    if (self->queue == NULL) return no_storage(op), NULL;
    return Py_NewRef(self->queue);
}

static int
set_queue(PyObject *op, PyObject *value, void *c)
{
    QueueObject *self = (QueueObject *)op;
    Py_XSETREF(self->queue, Py_XNewRef(value));
    return 0;
}

static PyObject *get_maxsize(PyObject *op, void *c) { return Py_NewRef(((QueueObject *)op)->maxsize_obj); }
static PyObject *get_getters(PyObject *op, void *c) { return waitq_snapshot(&((QueueObject *)op)->getters); }
static PyObject *get_putters(PyObject *op, void *c) { return waitq_snapshot(&((QueueObject *)op)->putters); }
static PyObject *get_finished(PyObject *op, void *c) { return Py_NewRef(((QueueObject *)op)->finished); }
static PyObject *get_unfinished(PyObject *op, void *c) { return PyLong_FromSsize_t(((QueueObject *)op)->unfinished); }

static int
set_unfinished(PyObject *op, PyObject *value, void *c)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _unfinished_tasks");
        return -1;
    }
    Py_ssize_t n = PyNumber_AsSsize_t(value, PyExc_OverflowError);
    if (n == -1 && PyErr_Occurred()) return -1;
    ((QueueObject *)op)->unfinished = n;
    return 0;
}
static PyObject *get_is_shutdown(PyObject *op, void *c) { return PyBool_FromLong(((QueueObject *)op)->is_shutdown); }

static PyObject *
get_loop(PyObject *op, void *c)
{
    PyObject *l = ((QueueObject *)op)->loop;
    return Py_NewRef(l ? l : Py_None);
}

static int
set_loop(PyObject *op, PyObject *value, void *c)
{
    QueueObject *self = (QueueObject *)op;
    Py_XSETREF(self->loop, (value == NULL || value == Py_None) ? NULL : Py_NewRef(value));
    return 0;
}

static PyMethodDef queue_methods[] = {
    {"qsize", queue_qsize, METH_NOARGS, "Number of items in the queue."},
    {"empty", queue_empty, METH_NOARGS, "Return True if the queue is empty."},
    {"full", queue_full, METH_NOARGS, "Return True if there are maxsize items in the queue."},
    {"put_nowait", queue_put_nowait, METH_O, "Put an item; QueueFull if full."},
    {"get_nowait", queue_get_nowait, METH_NOARGS, "Remove and return an item; QueueEmpty if empty."},
    {"task_done", queue_task_done, METH_NOARGS, "Indicate that a formerly enqueued task is complete."},
#if PRIM_PY313
    {"shutdown", (PyCFunction)(void (*)(void))queue_shutdown, METH_VARARGS | METH_KEYWORDS,
     "Shut down the queue: puts raise QueueShutDown, gets too once empty (at once if immediate)."},
#endif
    {"_init", fifo_init_meth, METH_O, NULL},
    {"_get", fifo_get_meth, METH_NOARGS, NULL},
    {"_put", fifo_put_meth, METH_O, NULL},
    {"_format", queue_format, METH_NOARGS, NULL},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

/* asyncio's `async def` methods: coroutine methods (coroutine_function.h);
 * LifoQueue and PriorityQueue inherit them, as asyncio's subclasses do */
static const prim_coro_method_def queue_coro_methods[] = {
    {"put", "(self, item)", queue_put, "Put an item, waiting while the queue is full (awaitable)."},
    {"get", "(self)", queue_get, "Remove and return an item, waiting while empty (awaitable)."},
    {"join", "(self)", queue_join, "Wait until every item put has been marked done (awaitable)."},
    {NULL, NULL, NULL, NULL},
};

static PyGetSetDef queue_getset[] = {
    /* an instance __dict__ (mock.patch.object(q, ...), attributes set by
     * user code), as asyncio's Python objects have */
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {"maxsize", get_maxsize, NULL, "Number of items allowed in the queue.", NULL},
    {"_maxsize", get_maxsize, NULL, NULL, NULL},
    {"_queue", get_queue, set_queue, "The storage (deque for Queue, list for Lifo/PriorityQueue).", NULL},
    {"_getters", get_getters, NULL, "Snapshot of the waiting getters' futures.", NULL},
    {"_putters", get_putters, NULL, "Snapshot of the waiting putters' futures.", NULL},
    {"_finished", get_finished, NULL, NULL, NULL},
    {"_unfinished_tasks", get_unfinished, set_unfinished, NULL, NULL},
    {"_is_shutdown", get_is_shutdown, NULL, NULL, NULL},
    {"_loop", get_loop, set_loop, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef queue_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(QueueObject, weakreflist), READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(QueueObject, dict), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot queue_slots[] = {
    {Py_tp_new, queue_new},
    {Py_tp_init, queue_init},
    {Py_tp_repr, queue_repr},
    {Py_tp_str, queue_str},
    {Py_tp_methods, queue_methods},
    {Py_tp_getset, queue_getset},
    {Py_tp_members, queue_members},
    {Py_tp_traverse, queue_traverse},
    {Py_tp_clear, queue_clear},
    {Py_tp_dealloc, queue_dealloc},
    {Py_tp_doc, (void *)"Queue(maxsize=0)\n--\n\nasyncio.Queue implemented in C; works on any event loop."},
    {0, NULL},
};

static PyType_Spec queue_spec = {
    .name = "pyasync_c._primitives.Queue",
    .basicsize = sizeof(QueueObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = queue_slots,
};

static PyMethodDef lifo_methods[] = {
    {"_init", list_init_meth, METH_O, NULL},
    {"_get", lifo_get_meth, METH_NOARGS, NULL},
    {"_put", lifo_put_meth, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef heap_methods[] = {
    {"_init", list_init_meth, METH_O, NULL},
    {"_get", heap_get_meth, METH_NOARGS, NULL},
    {"_put", heap_put_meth, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot lifo_slots[] = {
    {Py_tp_methods, lifo_methods},
    {Py_tp_traverse, queue_traverse},
    {Py_tp_clear, queue_clear},
    {Py_tp_dealloc, queue_dealloc},
    {Py_tp_doc, (void *)"LifoQueue(maxsize=0)\n--\n\nasyncio.LifoQueue implemented in C."},
    {0, NULL},
};

static PyType_Slot heap_slots[] = {
    {Py_tp_methods, heap_methods},
    {Py_tp_traverse, queue_traverse},
    {Py_tp_clear, queue_clear},
    {Py_tp_dealloc, queue_dealloc},
    {Py_tp_doc, (void *)"PriorityQueue(maxsize=0)\n--\n\nasyncio.PriorityQueue implemented in C (heapq order)."},
    {0, NULL},
};

static PyType_Spec lifo_spec = {
    .name = "pyasync_c._primitives.LifoQueue",
    .basicsize = sizeof(QueueObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = lifo_slots,
};

static PyType_Spec heap_spec = {
    .name = "pyasync_c._primitives.PriorityQueue",
    .basicsize = sizeof(QueueObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = heap_slots,
};

/* ------------------------------------------------------------------ */

static PyTypeObject *
make_type(PyObject *module, PyType_Spec *spec, PyTypeObject *base)
{
    PyObject *t = PyType_FromModuleAndSpec(module, spec, (PyObject *)base);
    if (t == NULL) return NULL;
    if (prim_short_tp_name((PyTypeObject *)t) < 0 || PyModule_AddType(module, (PyTypeObject *)t) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    return (PyTypeObject *)t;   /* new reference, kept in our statics */
}

int
prim_queue_init(PyObject *module)
{
    if (prim_shared_init(module) < 0) return -1;
    if (QueueType != NULL) {
        /* a later exec (another module object): expose the same types */
        if (PyModule_AddType(module, QueueType) < 0 || PyModule_AddType(module, LifoType) < 0
            || PyModule_AddType(module, PrioType) < 0)
            return -1;
        return 0;
    }
    if ((QueueType = make_type(module, &queue_spec, NULL)) == NULL) return -1;
    if (prim_add_coroutine_methods(module, QueueType, queue_coro_methods) < 0) return -1;
    if ((LifoType = make_type(module, &lifo_spec, QueueType)) == NULL) return -1;
    if ((PrioType = make_type(module, &heap_spec, QueueType)) == NULL) return -1;
    PyTypeObject *classes[3] = {QueueType, LifoType, PrioType};
    static const char *hooks[3] = {"_init", "_get", "_put"};
    for (int c = 0; c < 3; c++) {
        for (int i = 0; i < 3; i++) {
            hook_desc[c][i] = PyObject_GetAttrString((PyObject *)classes[c], hooks[i]);
            if (hook_desc[c][i] == NULL) return -1;
        }
    }
    for (int i = 0; i < 3; i++) {
        size_desc[i] = PyObject_GetAttrString((PyObject *)QueueType, size_names[i]);
        if (size_desc[i] == NULL) return -1;
    }
    for (int i = 0; i < 2; i++) {
        nowait_desc[i] = PyObject_GetAttrString((PyObject *)QueueType, nowait_names[i]);
        if (nowait_desc[i] == NULL) return -1;
    }
    return 0;
}
