/* coroutine_function.c: _CoroutineFunction and _CoroutineMethod, C
 * callables seen as `async def` functions/methods (see the header).
 *
 * What the checks read, and how these objects show it:
 * - inspect treats "function-like" objects (Cython's functions are some) by
 *   their code: with __name__, __code__, __defaults__, __kwdefaults__ and
 *   __annotations__ present, inspect.iscoroutinefunction() reads
 *   __code__.co_flags (CO_COROUTINE: enough on 3.11) and inspect.signature()
 *   reads the parameters.  __code__ is the code object of a never-run
 *   `async def <name><params>: pass` stub compiled at start-up.
 * - a __dict__ holds asyncio's `_is_coroutine` mark (asyncio's
 *   iscoroutinefunction accepts it) and, on 3.12+, the mark
 *   inspect.markcoroutinefunction() sets (it is called on the object).
 * - for a method, `instance.meth` is a types.MethodType whose __func__ is
 *   the descriptor: inspect.ismethod() unwraps it, mock sees __func__.
 *
 * Both types share one struct and its GC functions; the method flavour
 * fills the last fields.  The types and every descriptor are process-wide,
 * as the classes they belong to (module.c's definition has m_size 0).
 */
#include "coroutine_function.h"

#include <stddef.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *name;          /* str */
    PyObject *qualname;      /* str: "sleep", "Queue.get" */
    PyObject *module;        /* str */
    PyObject *doc;           /* str or None */
    PyObject *code;          /* the stub's code object */
    PyObject *defaults;      /* tuple or None */
    PyObject *kwdefaults;    /* dict or None */
    PyObject *annotations;   /* dict */
    PyObject *dict;
    PyObject *weakreflist;
    /* method flavour only */
    PyTypeObject *objclass;  /* the class whose instances it applies to */
    PyObject *params;        /* tuple: the parameter names after self (keywords) */
    prim_coro_impl impl;
    Py_ssize_t nparams;      /* len(params) */
} CoroFunction;

static PyTypeObject *CoroFunctionType, *CoroMethodType;   /* process-wide */

/* ------------------------------------------------------------------ */
/* shared: GC, attributes                                              */

static int
corofunc_traverse(PyObject *op, visitproc visit, void *arg)
{
    CoroFunction *self = (CoroFunction *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->name);
    Py_VISIT(self->qualname);
    Py_VISIT(self->module);
    Py_VISIT(self->doc);
    Py_VISIT(self->code);
    Py_VISIT(self->defaults);
    Py_VISIT(self->kwdefaults);
    Py_VISIT(self->annotations);
    Py_VISIT(self->dict);
    Py_VISIT(self->objclass);
    Py_VISIT(self->params);
    return 0;
}

static int
corofunc_clear(PyObject *op)
{
    CoroFunction *self = (CoroFunction *)op;
    Py_CLEAR(self->name);
    Py_CLEAR(self->qualname);
    Py_CLEAR(self->module);
    Py_CLEAR(self->doc);
    Py_CLEAR(self->code);
    Py_CLEAR(self->defaults);
    Py_CLEAR(self->kwdefaults);
    Py_CLEAR(self->annotations);
    Py_CLEAR(self->dict);
    Py_CLEAR(self->objclass);
    Py_CLEAR(self->params);
    return 0;
}

static void
corofunc_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (((CoroFunction *)op)->weakreflist != NULL) PyObject_ClearWeakRefs(op);
    corofunc_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
corofunc_get(PyObject *op, void *offset)
{
    PyObject *value = *(PyObject **)((char *)op + (Py_ssize_t)offset);
    return Py_NewRef(value != NULL ? value : Py_None);
}

#define COROFUNC_FIELD(field) ((void *)offsetof(CoroFunction, field))

/* the attributes both flavours have (the arrays add their own and the end) */
#define COROFUNC_COMMON_GETSET                                                     \
    {"__name__", corofunc_get, NULL, NULL, COROFUNC_FIELD(name)},                  \
    {"__qualname__", corofunc_get, NULL, NULL, COROFUNC_FIELD(qualname)},          \
    {"__module__", corofunc_get, NULL, NULL, COROFUNC_FIELD(module)},              \
    {"__doc__", corofunc_get, NULL, NULL, COROFUNC_FIELD(doc)},                    \
    {"__code__", corofunc_get, NULL, NULL, COROFUNC_FIELD(code)},                  \
    {"__defaults__", corofunc_get, NULL, NULL, COROFUNC_FIELD(defaults)},          \
    {"__kwdefaults__", corofunc_get, NULL, NULL, COROFUNC_FIELD(kwdefaults)},      \
    {"__annotations__", corofunc_get, NULL, NULL, COROFUNC_FIELD(annotations)},    \
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},

static PyMemberDef corofunc_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CoroFunction, vectorcall), READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(CoroFunction, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(CoroFunction, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* ------------------------------------------------------------------ */
/* _CoroutineFunction                                                  */

static PyObject *
corofunc_repr(PyObject *op)
{
    CoroFunction *self = (CoroFunction *)op;
    return PyUnicode_FromFormat("<built-in coroutine function %U.%U>", self->module, self->qualname);
}

/* Not a method: a class attribute stays unbound, as a builtin function does. */
static PyObject *
corofunc_descr_get(PyObject *op, PyObject *obj, PyObject *type)
{
    return Py_NewRef(op);
}

/* pickle and copy use the global name (module + qualified name). */
static PyObject *
corofunc_reduce(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(((CoroFunction *)op)->qualname);
}

static PyGetSetDef corofunc_getset[] = {
    COROFUNC_COMMON_GETSET
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef corofunc_methods[] = {
    {"__reduce__", corofunc_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot corofunc_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, corofunc_descr_get},
    {Py_tp_repr, corofunc_repr},
    {Py_tp_getset, corofunc_getset},
    {Py_tp_methods, corofunc_methods},
    {Py_tp_members, corofunc_members},
    {Py_tp_traverse, corofunc_traverse},
    {Py_tp_clear, corofunc_clear},
    {Py_tp_dealloc, corofunc_dealloc},
    /* no Py_tp_doc: PyType_FromSpec would store it as __doc__ over our getset */
    {0, NULL},
};

static PyType_Spec corofunc_spec = {
    .name = "pyasync_c._primitives._CoroutineFunction",
    .basicsize = sizeof(CoroFunction),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = corofunc_slots,
};

/* ------------------------------------------------------------------ */
/* _CoroutineMethod                                                    */

static PyObject *
objclass_name(CoroFunction *self)
{
    return PyType_GetName(self->objclass);
}

/* The TypeError a method descriptor gives for a self of another class;
 * returns NULL. */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static PyObject *
wrong_self(CoroFunction *self, PyObject *obj)
{
    PyObject *cls = objclass_name(self);
    if (cls == NULL) return NULL;
    PyErr_Format(PyExc_TypeError, "descriptor '%U' for '%U' objects doesn't apply to a '%.100s' object",
                 self->name, cls, Py_TYPE(obj)->tp_name);
    Py_DECREF(cls);
    return NULL;
}

/* Keywords, or a wrong argument count: bind args[1:] + keywords to the
 * parameters as a Python function would, then call the body.  Kept out of
 * line so the common call stays a few instructions and a tail call. */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static PyObject *
coromethod_call_slow(CoroFunction *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *bound[PRIM_CORO_MAX_PARAMS] = {NULL};
    Py_ssize_t npos = nargs - 1;
    if (npos > self->nparams) {
        PyErr_Format(PyExc_TypeError, "%U() takes %zd positional argument%s but %zd were given",
                     self->qualname, self->nparams + 1, self->nparams == 0 ? "" : "s", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < npos; i++) bound[i] = args[1 + i];
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t at = -1;
        for (Py_ssize_t i = 0; i < self->nparams && at < 0; i++) {
            PyObject *param = PyTuple_GET_ITEM(self->params, i);
            int eq = key == param ? 1 : PyObject_RichCompareBool(key, param, Py_EQ);
            if (eq < 0) return NULL;
            if (eq) at = i;
        }
        if (at < 0) {
            PyErr_Format(PyExc_TypeError, "%U() got an unexpected keyword argument '%S'", self->qualname, key);
            return NULL;
        }
        if (bound[at] != NULL) {
            PyErr_Format(PyExc_TypeError, "%U() got multiple values for argument '%S'", self->qualname, key);
            return NULL;
        }
        bound[at] = args[nargs + k];
    }
    for (Py_ssize_t i = 0; i < self->nparams; i++) {
        if (bound[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%U() missing required argument '%S'", self->qualname,
                         PyTuple_GET_ITEM(self->params, i));
            return NULL;
        }
    }
    return self->impl(args[0], bound);
}

/* The call: descr(self, *args).  The interpreter's method calls
 * (`q.get()`) come here with self first and no bound object. */
static PyObject *
coromethod_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    CoroFunction *self = (CoroFunction *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "unbound method %U() needs an argument", self->qualname);
        return NULL;
    }
    if (!Py_IS_TYPE(args[0], self->objclass) && !PyObject_TypeCheck(args[0], self->objclass))
        return wrong_self(self, args[0]);
    if (kwnames == NULL && nargs == self->nparams + 1) return self->impl(args[0], args + 1);
    return coromethod_call_slow(self, args, nargs, kwnames);
}

/* Class access gives the descriptor; instance access a bound
 * types.MethodType (what inspect and mock unwrap through __func__). */
static PyObject *
coromethod_descr_get(PyObject *op, PyObject *obj, PyObject *type)
{
    if (obj == NULL) return Py_NewRef(op);
    CoroFunction *self = (CoroFunction *)op;
    if (!PyObject_TypeCheck(obj, self->objclass)) return wrong_self(self, obj);
    return PyMethod_New(op, obj);
}

static PyObject *
coromethod_repr(PyObject *op)
{
    CoroFunction *self = (CoroFunction *)op;
    PyObject *cls = objclass_name(self);
    if (cls == NULL) return NULL;
    PyObject *r = PyUnicode_FromFormat("<coroutine method '%U' of '%U' objects>", self->name, cls);
    Py_DECREF(cls);
    return r;
}

/* pickle and copy: getattr(objclass, name), as for a method descriptor. */
static PyObject *
coromethod_reduce(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CoroFunction *self = (CoroFunction *)op;
    PyObject *getattr = PyDict_GetItemString(PyEval_GetBuiltins(), "getattr");   /* borrowed */
    if (getattr == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "builtins.getattr is missing");
        return NULL;
    }
    return Py_BuildValue("O(OO)", getattr, (PyObject *)self->objclass, self->name);
}

static PyGetSetDef coromethod_getset[] = {
    COROFUNC_COMMON_GETSET
    {"__objclass__", corofunc_get, NULL, NULL, COROFUNC_FIELD(objclass)},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef coromethod_methods[] = {
    {"__reduce__", coromethod_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot coromethod_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, coromethod_descr_get},
    {Py_tp_repr, coromethod_repr},
    {Py_tp_getset, coromethod_getset},
    {Py_tp_methods, coromethod_methods},
    {Py_tp_members, corofunc_members},
    {Py_tp_traverse, corofunc_traverse},
    {Py_tp_clear, corofunc_clear},
    {Py_tp_dealloc, corofunc_dealloc},
    {0, NULL},
};

static PyType_Spec coromethod_spec = {
    .name = "pyasync_c._primitives._CoroutineMethod",
    .basicsize = sizeof(CoroFunction),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_VECTORCALL
             | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = coromethod_slots,
};

/* ------------------------------------------------------------------ */
/* construction                                                        */

/* The code object of `async def <name><params>: pass`, compiled from Python
 * source (the stub is never run; only its flags and parameters are read),
 * and its __defaults__ in *defaults. */
static PyObject *
coroutine_stub_code(const char *name, const char *params, PyObject **defaults)
{
    PyObject *src = PyUnicode_FromFormat("async def %s%s:\n    pass\n", name, params);
    if (src == NULL) return NULL;
    const char *text = PyUnicode_AsUTF8(src);
    PyObject *code = text ? Py_CompileString(text, "<pyasync_c._primitives>", Py_file_input) : NULL;
    Py_DECREF(src);
    if (code == NULL) return NULL;
    PyObject *globals = PyDict_New();
    PyObject *r = NULL, *stub = NULL, *stub_code = NULL;
    if (globals != NULL && PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins()) == 0)
        r = PyEval_EvalCode(code, globals, globals);
    if (r != NULL) stub = PyDict_GetItemString(globals, name);      /* borrowed */
    if (stub != NULL) {
        stub_code = PyObject_GetAttrString(stub, "__code__");
        if (stub_code != NULL && (*defaults = PyObject_GetAttrString(stub, "__defaults__")) == NULL)
            Py_CLEAR(stub_code);
    }
    Py_XDECREF(r);
    Py_XDECREF(globals);
    Py_DECREF(code);
    return stub_code;
}

/* Set `attr` = `module_name`.`mark_name` in the object's __dict__ (when
 * that mark exists in this Python). */
static int
set_mark(PyObject *func, const char *attr, const char *module_name, const char *mark_name)
{
    PyObject *module = PyImport_ImportModule(module_name);
    if (module == NULL) return -1;
    PyObject *mark = PyObject_GetAttrString(module, mark_name);
    Py_DECREF(module);
    if (mark == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
        PyErr_Clear();
        return 0;
    }
    int r = PyObject_SetAttrString(func, attr, mark);
    Py_DECREF(mark);
    return r;
}

/* inspect.markcoroutinefunction(func) where it exists (3.12+): it stores
 * inspect's private mark (whose name varies between versions) in __dict__. */
static int
mark_coroutine_function(PyObject *func)
{
    PyObject *inspect = PyImport_ImportModule("inspect");
    if (inspect == NULL) return -1;
    PyObject *mark = PyObject_GetAttrString(inspect, "markcoroutinefunction");
    Py_DECREF(inspect);
    if (mark == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
        PyErr_Clear();          /* 3.11: co_flags of __code__ are enough */
        return 0;
    }
    PyObject *r = PyObject_CallOneArg(mark, func);
    Py_DECREF(mark);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

static PyTypeObject *
ensure_type(PyObject *module, PyTypeObject **slot, PyType_Spec *spec)
{
    if (*slot == NULL) *slot = (PyTypeObject *)PyType_FromModuleAndSpec(module, spec, NULL);
    return *slot;
}

/* A new object of `type` with the parts both flavours have (marks set). */
static CoroFunction *
coro_new(PyTypeObject *type, const char *name, const char *params, const char *doc,
         PyObject *module_name, PyObject *qualname, vectorcallfunc vectorcall)
{
    CoroFunction *self = PyObject_GC_New(CoroFunction, type);
    if (self == NULL) {
        Py_DECREF(qualname);
        return NULL;
    }
    self->vectorcall = vectorcall;
    self->name = PyUnicode_InternFromString(name);
    self->qualname = qualname;
    self->module = Py_XNewRef(module_name);
    self->doc = doc != NULL ? PyUnicode_FromString(doc) : Py_NewRef(Py_None);
    self->defaults = NULL;
    self->code = coroutine_stub_code(name, params, &self->defaults);
    self->kwdefaults = Py_NewRef(Py_None);
    self->annotations = PyDict_New();
    self->dict = PyDict_New();
    self->weakreflist = NULL;
    self->objclass = NULL;
    self->params = NULL;
    self->impl = NULL;
    self->nparams = 0;
    PyObject_GC_Track(self);
    PyObject *op = (PyObject *)self;
    if (self->name == NULL || self->module == NULL || self->doc == NULL || self->code == NULL
        || self->annotations == NULL || self->dict == NULL
        || set_mark(op, "_is_coroutine", "asyncio.coroutines", "_is_coroutine") < 0
        || mark_coroutine_function(op) < 0) {
        Py_DECREF(op);
        return NULL;
    }
    return self;
}

PyObject *
prim_coroutine_function_new(PyObject *module, const char *name, const char *params, const char *doc,
                            vectorcallfunc vectorcall)
{
    if (ensure_type(module, &CoroFunctionType, &corofunc_spec) == NULL) return NULL;
    PyObject *qualname = PyUnicode_InternFromString(name);
    if (qualname == NULL) return NULL;
    PyObject *module_name = PyUnicode_FromString("pyasync_c._primitives");
    if (module_name == NULL) {
        Py_DECREF(qualname);
        return NULL;
    }
    CoroFunction *self = coro_new(CoroFunctionType, name, params, doc, module_name, qualname, vectorcall);
    Py_DECREF(module_name);
    return (PyObject *)self;
}

/* The parameter names after self, from the stub's code (co_varnames starts
 * with the parameters).  Only plain positional-or-keyword ones are used. */
static int
method_params(CoroFunction *self)
{
    PyObject *argcount = PyObject_GetAttrString(self->code, "co_argcount");
    PyObject *varnames = argcount ? PyObject_GetAttrString(self->code, "co_varnames") : NULL;
    Py_ssize_t n = argcount ? PyLong_AsSsize_t(argcount) : -1;
    Py_XDECREF(argcount);
    if (varnames == NULL || n < 0) {
        Py_XDECREF(varnames);
        return -1;
    }
    if (n < 1 || n - 1 > PRIM_CORO_MAX_PARAMS || !PyTuple_Check(varnames) || PyTuple_GET_SIZE(varnames) < n) {
        Py_DECREF(varnames);
        PyErr_Format(PyExc_SystemError, "bad coroutine method parameters for %U", self->qualname);
        return -1;
    }
    self->params = PyTuple_GetSlice(varnames, 1, n);
    Py_DECREF(varnames);
    self->nparams = n - 1;
    return self->params != NULL ? 0 : -1;
}

int
prim_add_coroutine_methods(PyObject *module, PyTypeObject *type, const prim_coro_method_def *defs)
{
    if (ensure_type(module, &CoroMethodType, &coromethod_spec) == NULL) return -1;
    PyObject *module_name = PyObject_GetAttrString((PyObject *)type, "__module__");
    PyObject *type_qualname = module_name ? PyType_GetQualName(type) : NULL;
    if (type_qualname == NULL) {
        Py_XDECREF(module_name);
        return -1;
    }
    int rc = 0;
    for (const prim_coro_method_def *def = defs; def->name != NULL && rc == 0; def++) {
        PyObject *qualname = PyUnicode_FromFormat("%U.%s", type_qualname, def->name);
        CoroFunction *self = qualname == NULL ? NULL
            : coro_new(CoroMethodType, def->name, def->params, def->doc, module_name, qualname,
                       coromethod_vectorcall);
        if (self == NULL) {
            rc = -1;
            break;
        }
        self->objclass = (PyTypeObject *)Py_NewRef((PyObject *)type);
        self->impl = def->impl;
        if (method_params(self) < 0 || PyDict_SetItem(type->tp_dict, self->name, (PyObject *)self) < 0)
            rc = -1;
        Py_DECREF(self);
    }
    Py_DECREF(type_qualname);
    Py_DECREF(module_name);
    PyType_Modified(type);
    return rc;
}

prim_coro_impl
prim_coroutine_method_impl(PyObject *obj)
{
    if (obj == NULL || CoroMethodType == NULL || !Py_IS_TYPE(obj, CoroMethodType)) return NULL;
    return ((CoroFunction *)obj)->impl;
}
