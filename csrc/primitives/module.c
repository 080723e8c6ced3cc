/* pyasync_c._primitives module definition: calls each concern's init
 * function (see primitives.h), which adds its types and functions. */
#include "primitives.h"

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
