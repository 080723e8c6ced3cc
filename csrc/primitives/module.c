/* pyasync_c._primitives module definition: calls each concern's init
 * function (see primitives.h), which adds its types and functions, then
 * gives the classes copy/pickle support (below). */
#include "primitives.h"

/* ------------------------------------------------------------------ */
/* copy.copy / copy.deepcopy / pickle                                  */

/* asyncio's classes are plain Python objects, so copy, deepcopy and pickle
 * work on them through their __dict__.  Ours get a __reduce__ that rebuilds
 * the same observable state with the public API:
 *   __reduce__() -> (_reconstruct, (type, kind, state, __dict__ or None))
 * kind/state: "Lock" locked, "Event" is_set, "Semaphore" value,
 * "BoundedSemaphore" (value, bound), "Queue" (maxsize, storage, unfinished).
 * As with asyncio's, a shallow copy of a queue shares its storage (deque or
 * list) and a deep copy copies it; waiters and the loop binding are not
 * copied (asyncio's copy would share its waiter deque).  Python subclasses
 * inherit it (their __dict__ goes along); the class is called with the
 * constructor argument (value/maxsize), so a subclass whose __init__ takes
 * other arguments should define its own __reduce__. */
enum { K_LOCK, K_EVENT, K_SEM, K_BSEM, K_QUEUE, K_COUNT };
static const char *const kind_names[K_COUNT] = {"Lock", "Event", "Semaphore", "BoundedSemaphore", "Queue"};
static PyTypeObject *kind_types[K_COUNT];   /* process-wide, as the types are */
static PyObject *reconstruct_func;

static int
kind_of(PyObject *obj)
{
    /* most derived first: BoundedSemaphore is a Semaphore */
    static const int order[K_COUNT] = {K_BSEM, K_SEM, K_LOCK, K_EVENT, K_QUEUE};
    for (int i = 0; i < K_COUNT; i++)
        if (PyObject_TypeCheck(obj, kind_types[order[i]])) return order[i];
    return -1;
}

/* Drive an uncontended acquire() to completion without a loop (it needs
 * none: the fast path completes at the first send). */
static int
acquire_now(PyObject *obj)
{
    PyObject *op = PyObject_CallMethod(obj, "acquire", NULL);
    if (op == NULL) return -1;
    PyObject *res = NULL;
    PySendResult r = PyIter_Send(op, Py_None, &res);
    if (r == PYGEN_NEXT) {      /* it would block: not a state we saved */
        PyObject *close = PyObject_CallMethod(op, "close", NULL);
        Py_XDECREF(close);
        PyErr_SetString(PyExc_RuntimeError, "cannot restore the acquired state");
        r = PYGEN_ERROR;
    }
    Py_DECREF(op);
    Py_XDECREF(res);
    return r == PYGEN_RETURN ? 0 : -1;
}

static PyObject *
prim_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    int kind = kind_of(self);
    if (kind < 0) {
        PyErr_Format(PyExc_TypeError, "cannot pickle '%.100s' object", Py_TYPE(self)->tp_name);
        return NULL;
    }
    PyObject *state = NULL;
    switch (kind) {
    case K_LOCK: state = PyObject_CallMethod(self, "locked", NULL); break;
    case K_EVENT: state = PyObject_CallMethod(self, "is_set", NULL); break;
    case K_SEM: state = PyObject_GetAttrString(self, "_value"); break;
    case K_BSEM: {
        PyObject *value = PyObject_GetAttrString(self, "_value");
        PyObject *bound = value ? PyObject_GetAttrString(self, "_bound_value") : NULL;
        if (bound != NULL) state = PyTuple_Pack(2, value, bound);
        Py_XDECREF(value);
        Py_XDECREF(bound);
        break;
    }
    default: {
        PyObject *maxsize = PyObject_GetAttrString(self, "maxsize");
        PyObject *storage = maxsize ? PyObject_GetAttrString(self, "_queue") : NULL;
        PyObject *unfinished = storage ? PyObject_GetAttrString(self, "_unfinished_tasks") : NULL;
        if (unfinished != NULL) state = PyTuple_Pack(3, maxsize, storage, unfinished);
        Py_XDECREF(maxsize);
        Py_XDECREF(storage);
        Py_XDECREF(unfinished);
    }
    }
    if (state == NULL) return NULL;
    /* the instance __dict__ (every class here and its subclasses keep it at
     * the base's tp_dictoffset), None while it was never made: read without
     * making one, so copying leaves the original as it was */
    Py_ssize_t offset = Py_TYPE(self)->tp_dictoffset;
    PyObject *dict = offset > 0 ? *(PyObject **)((char *)self + offset) : NULL;
    dict = Py_NewRef(dict != NULL ? dict : Py_None);
    PyObject *r = Py_BuildValue("(O(OsNN))", reconstruct_func, (PyObject *)Py_TYPE(self),
                                kind_names[kind], state, dict);
    return r;
}

/* _reconstruct(cls, kind, state, dict): the inverse of prim_reduce. */
static PyObject *
prim_reconstruct(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyType_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "_reconstruct(cls, kind, state, dict)");
        return NULL;
    }
    PyObject *cls = args[0], *state = args[2], *dict = args[3];
    int kind = -1;
    for (int i = 0; i < K_COUNT; i++)
        if (PyUnicode_CompareWithASCIIString(args[1], kind_names[i]) == 0) kind = i;
    if (kind < 0 || !PyType_IsSubtype((PyTypeObject *)cls, kind_types[kind])) {
        PyErr_SetString(PyExc_TypeError, "_reconstruct: class and kind do not match");
        return NULL;
    }
    PyObject *obj = NULL;
    int ok = 0;
    switch (kind) {
    case K_LOCK:
    case K_EVENT: {
        int flag = PyObject_IsTrue(state);
        if (flag < 0 || (obj = PyObject_CallNoArgs(cls)) == NULL) break;
        if (!flag) ok = 1;
        else if (kind == K_LOCK) ok = acquire_now(obj) == 0;
        else {
            PyObject *r = PyObject_CallMethod(obj, "set", NULL);
            ok = r != NULL;
            Py_XDECREF(r);
        }
        break;
    }
    case K_SEM:
        obj = PyObject_CallOneArg(cls, state);
        ok = obj != NULL;
        break;
    case K_BSEM: {
        Py_ssize_t value, bound;
        if (!PyTuple_Check(state) || PyTuple_GET_SIZE(state) != 2) {
            PyErr_SetString(PyExc_TypeError, "_reconstruct: bad BoundedSemaphore state");
            break;
        }
        if ((value = PyLong_AsSsize_t(PyTuple_GET_ITEM(state, 0))) == -1 && PyErr_Occurred()) break;
        if ((bound = PyLong_AsSsize_t(PyTuple_GET_ITEM(state, 1))) == -1 && PyErr_Occurred()) break;
        if (value < 0 || value > bound) {
            PyErr_SetString(PyExc_ValueError, "_reconstruct: bad BoundedSemaphore state");
            break;
        }
        if ((obj = PyObject_CallOneArg(cls, PyTuple_GET_ITEM(state, 1))) == NULL) break;
        ok = 1;
        for (Py_ssize_t i = value; ok && i < bound; i++) ok = acquire_now(obj) == 0;
        break;
    }
    default:
        if (!PyTuple_Check(state) || PyTuple_GET_SIZE(state) != 3) {
            PyErr_SetString(PyExc_TypeError, "_reconstruct: bad Queue state");
            break;
        }
        if ((obj = PyObject_CallOneArg(cls, PyTuple_GET_ITEM(state, 0))) == NULL) break;
        ok = PyObject_SetAttrString(obj, "_queue", PyTuple_GET_ITEM(state, 1)) == 0
             && PyObject_SetAttrString(obj, "_unfinished_tasks", PyTuple_GET_ITEM(state, 2)) == 0;
    }
    if (ok && dict != Py_None) {
        PyObject *own = PyObject_GenericGetDict(obj, NULL);
        ok = own != NULL && PyDict_Update(own, dict) == 0;
        Py_XDECREF(own);
    }
    if (!ok) {
        Py_XDECREF(obj);
        return NULL;
    }
    return obj;
}

static PyMethodDef reduce_def = {"__reduce__", prim_reduce, METH_NOARGS,
                                 "Rebuild this object's state (copy, deepcopy, pickle)."};
static PyMethodDef reconstruct_def = {"_reconstruct", (PyCFunction)(void (*)(void))prim_reconstruct,
                                      METH_FASTCALL, "Inverse of the primitives' __reduce__."};

/* Add __reduce__ to each class (they are immutable to Python code). */
static int
prim_copy_init(PyObject *module)
{
    if (reconstruct_func == NULL) {
        reconstruct_func = PyCFunction_NewEx(&reconstruct_def, NULL, NULL);
        if (reconstruct_func == NULL) return -1;
        PyObject *name = PyUnicode_FromString("pyasync_c._primitives");
        if (name == NULL) return -1;
        /* pickled by reference: pyasync_c._primitives._reconstruct */
        int r = PyObject_SetAttrString(reconstruct_func, "__module__", name);
        Py_DECREF(name);
        if (r < 0) return -1;
        for (int i = 0; i < K_COUNT; i++) {
            PyObject *type = PyObject_GetAttrString(module, kind_names[i]);
            if (type == NULL) return -1;
            kind_types[i] = (PyTypeObject *)type;      /* kept for the process */
            PyObject *descr = PyDescr_NewMethod(kind_types[i], &reduce_def);
            if (descr == NULL) return -1;
            r = PyDict_SetItemString(kind_types[i]->tp_dict, "__reduce__", descr);
            Py_DECREF(descr);
            if (r < 0) return -1;
            PyType_Modified(kind_types[i]);
        }
    }
    return PyModule_AddObjectRef(module, "_reconstruct", reconstruct_func);
}

static int
primitives_exec(PyObject *module)
{
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        /* The cached asyncio objects (waiters.c) are process-wide: a second
         * interpreter would call into the first one's objects. */
        PyErr_SetString(PyExc_ImportError,
                        "pyasync_c._primitives cannot be imported in a subinterpreter");
        return -1;
    }
    if (prim_locks_init(module) < 0) return -1;
    if (prim_queue_init(module) < 0) return -1;
    if (prim_gather_init(module) < 0) return -1;
    if (prim_sleep_init(module) < 0) return -1;
    if (prim_copy_init(module) < 0) return -1;
    return 0;
}

static PyModuleDef_Slot primitives_slots[] = {
    {Py_mod_exec, primitives_exec},
    {0, NULL},
};

static struct PyModuleDef primitives_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pyasync_c._primitives",
    .m_doc = "Native asyncio Semaphore, Lock, Event, Queue and gather that work on any loop.",
    .m_size = 0,
    .m_slots = primitives_slots,
};

PyMODINIT_FUNC
PyInit__primitives(void)
{
    return PyModuleDef_Init(&primitives_module);
}
