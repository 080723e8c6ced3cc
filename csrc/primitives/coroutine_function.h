/* C callables that introspection sees as `async def` functions and methods
 * (coroutine_function.c).
 *
 * asyncio's sleep, Queue.get/put/join, Lock/Semaphore.acquire, Event.wait
 * and the locks' __aenter__/__aexit__ are `async def`: inspect's and
 * asyncio's iscoroutinefunction() are True for them, inspect.signature()
 * reads their parameters, and unittest.mock replaces them with an
 * AsyncMock.  Ours are C functions returning awaitables; these two small
 * types give them the marks those checks read while keeping a plain
 * vectorcall on the call path:
 * - a _CoroutineFunction (prim_coroutine_function_new) is a module-level
 *   function (sleep): it does not bind as a method, as a builtin does not;
 * - a _CoroutineMethod (prim_add_coroutine_methods) is a method descriptor:
 *   `obj.meth(...)` calls go through the interpreter's method-call path
 *   (Py_TPFLAGS_METHOD_DESCRIPTOR: no bound object is made), the descriptor
 *   checks that self is an instance of its class and calls the C
 *   implementation; `obj.meth` (attribute access) gives a types.MethodType
 *   bound to obj, as for a Python method, so inspect finds the function
 *   through __func__.
 */
#ifndef PYASYNC_C_COROUTINE_FUNCTION_H
#define PYASYNC_C_COROUTINE_FUNCTION_H

#include "primitives.h"

/* The most parameters (after self) a coroutine method takes: __aexit__'s 3. */
#define PRIM_CORO_MAX_PARAMS 3

/* A method body: self (an instance of the class, checked) and exactly the
 * declared parameters, positionally (keywords already matched by name). */
typedef PyObject *(*prim_coro_impl)(PyObject *self, PyObject *const *args);

typedef struct {
    const char *name;       /* "get" */
    const char *params;     /* the Python parameter list, "(self, item)": the
                             * signature and the keyword names */
    prim_coro_impl impl;
    const char *doc;
} prim_coro_method_def;

/* A new _CoroutineFunction named `name` (__module__ "pyasync_c._primitives"),
 * calling `vectorcall`, with the signature `params` ("(delay, result=None)"). */
PyObject *prim_coroutine_function_new(PyObject *module, const char *name, const char *params,
                                      const char *doc, vectorcallfunc vectorcall);

/* Put a _CoroutineMethod for each def (NULL-name terminated) into type's
 * dict.  Called while creating the type, before any subclass exists. */
int prim_add_coroutine_methods(PyObject *module, PyTypeObject *type,
                               const prim_coro_method_def *defs);

/* The body of a _CoroutineMethod, NULL when obj is none (borrowed obj, may be NULL):
 * tells whether a class attribute is still one of ours. */
prim_coro_impl prim_coroutine_method_impl(PyObject *obj);

#endif
