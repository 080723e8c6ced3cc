/* pyasync_c._loop module definition.  Owns the module state (loop.h): the
 * types of every file in csrc/loop/ and the asyncio objects the hot paths
 * call (Future, Task, BaseEventLoop.create_task), imported once here. */
#include "loop.h"
#include "transport.h"
#include "tls.h"

#include <time.h>

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot ? 0 : -1;
}

static int
import_asyncio_objects(ModuleState *state)
{
    PyObject *c_asyncio = PyImport_ImportModule("_asyncio");
    if (c_asyncio == NULL) {
        return -1;
    }
    state->FutureType = PyObject_GetAttrString(c_asyncio, "Future");
    state->TaskType = state->FutureType ? PyObject_GetAttrString(c_asyncio, "Task") : NULL;
    Py_DECREF(c_asyncio);
    if (state->TaskType == NULL) {
        return -1;
    }
    PyObject *base_events = PyImport_ImportModule("asyncio.base_events");
    if (base_events == NULL) {
        return -1;
    }
    PyObject *base_loop = PyObject_GetAttrString(base_events, "BaseEventLoop");
    Py_DECREF(base_events);
    if (base_loop == NULL) {
        return -1;
    }
    state->base_create_task = PyObject_GetAttrString(base_loop, "create_task");
    Py_DECREF(base_loop);
    return state->base_create_task ? 0 : -1;
}

/* libuv creates a process-wide pipe (its signal lock) the first time any
 * loop is initialised, and keeps it for the life of the process.  Do that
 * here, once, with a throwaway loop: otherwise the first Loop() appears to
 * leak two fds, and an fd count taken before it (a leak check, a test)
 * never comes back to where it was. */
static int
init_libuv_process_state(void)
{
    uv_loop_t probe;
    int err = uv_loop_init(&probe);
    if (err == 0) {
        err = uv_loop_close(&probe);
    }
    if (err < 0) {
        PyErr_Format(PyExc_OSError, "libuv could not initialise a loop: %s", uv_strerror(err));
        return -1;
    }
    return 0;
}

static int
loop_module_exec(PyObject *module)
{
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        /* The handle freelist is process-wide and libuv callbacks assume the
         * main interpreter's GIL: refuse cleanly rather than misbehave. */
        PyErr_SetString(PyExc_ImportError,
                        "pyasync_c._loop cannot be imported in a subinterpreter");
        return -1;
    }
    if (init_libuv_process_state() < 0) {
        return -1;
    }
    ModuleState *state = PyModule_GetState(module);
    struct timespec resolution;
    state->clock_resolution = clock_getres(CLOCK_MONOTONIC, &resolution) == 0
        ? resolution.tv_sec + resolution.tv_nsec * 1e-9 : 1e-9;
    if (import_asyncio_objects(state) < 0
        || intern(&state->str_context, "context") < 0
        || intern(&state->str_name, "name") < 0
        || intern(&state->str_report_error, "_report_callback_error") < 0
        || intern(&state->str_slow_callback, "_warn_slow_callback") < 0
        || intern(&state->str_slow_duration, "slow_callback_duration") < 0
        || intern(&state->str_handle_signal, "_handle_signal") < 0
        || intern(&state->str_check_thread, "_check_thread") < 0
        || intern(&state->str_check_callback, "_check_callback") < 0
        || intern(&state->str_extract_stack, "_debug_source_traceback") < 0) {
        return -1;
    }
    state->kwnames_loop = Py_BuildValue("(s)", "loop");
    state->kwnames_task = Py_BuildValue("(sss)", "loop", "name", "context");
    state->empty_tuple = PyTuple_New(0);
    if (state->kwnames_loop == NULL || state->kwnames_task == NULL || state->empty_tuple == NULL) {
        return -1;
    }
    if (handles_init_types(module, state) < 0
        || watchers_init_type(module, state) < 0
        || sock_ops_init_type(module, state) < 0
        || dns_init(module, state) < 0
        || transports_init(module, state) < 0
        || tls_transport_init(module, state) < 0
        || loop_core_init_type(module, state) < 0) {
        return -1;
    }
    return PyModule_AddStringConstant(module, "libuv_version", uv_version_string());
}

static int
loop_module_traverse(PyObject *module, visitproc visit, void *arg)
{
    ModuleState *state = PyModule_GetState(module);
    Py_VISIT(state->LoopCoreType);
    Py_VISIT(state->HandleType);
    Py_VISIT(state->TimerHandleType);
    Py_VISIT(state->WatcherType);
    Py_VISIT(state->SockWaiterType);
    Py_VISIT(state->FutureType);
    Py_VISIT(state->TaskType);
    Py_VISIT(state->base_create_task);
    Py_VISIT(state->SocketTransportType);
    Py_VISIT(state->ReadPipeTransportType);
    Py_VISIT(state->WritePipeTransportType);
    Py_VISIT(state->DatagramTransportType);
    Py_VISIT(state->BufferedProtocolType);
    Py_VISIT(state->TransportSocketType);
    Py_VISIT(state->asyncio_logger);
    return streams_fast_traverse(state, visit, arg);
}

static int
loop_module_clear(PyObject *module)
{
    ModuleState *state = PyModule_GetState(module);
    Py_CLEAR(state->LoopCoreType);
    Py_CLEAR(state->HandleType);
    Py_CLEAR(state->TimerHandleType);
    Py_CLEAR(state->WatcherType);
    Py_CLEAR(state->SockWaiterType);
    Py_CLEAR(state->FutureType);
    Py_CLEAR(state->TaskType);
    Py_CLEAR(state->base_create_task);
    Py_CLEAR(state->kwnames_loop);
    Py_CLEAR(state->kwnames_task);
    Py_CLEAR(state->empty_tuple);
    Py_CLEAR(state->str_context);
    Py_CLEAR(state->str_name);
    Py_CLEAR(state->str_report_error);
    Py_CLEAR(state->str_slow_callback);
    Py_CLEAR(state->str_slow_duration);
    Py_CLEAR(state->str_handle_signal);
    Py_CLEAR(state->str_check_thread);
    Py_CLEAR(state->str_check_callback);
    Py_CLEAR(state->str_extract_stack);
    Py_CLEAR(state->SocketTransportType);
    Py_CLEAR(state->ReadPipeTransportType);
    Py_CLEAR(state->WritePipeTransportType);
    Py_CLEAR(state->DatagramTransportType);
    Py_CLEAR(state->BufferedProtocolType);
    Py_CLEAR(state->TransportSocketType);
    Py_CLEAR(state->asyncio_logger);
    streams_fast_clear(state);
    PyObject **interned[] = {
        &state->str_data_received, &state->str_buffer_updated, &state->str_get_buffer,
        &state->str_eof_received, &state->str_connection_made, &state->str_connection_lost,
        &state->str_pause_writing, &state->str_resume_writing, &state->str_datagram_received,
        &state->str_error_received, &state->str_close, &state->str_call_exception_handler,
        &state->str_attach, &state->str_detach, &state->str_call_connection_lost,
        &state->str_connection_made_cb, &state->str_set_result, &state->str_set_exception,
        &state->str_cancelled, &state->str_socket_class, &state->str_connection_closed,
        &state->str_sockname, &state->str_socket,
    };
    for (size_t i = 0; i < sizeof(interned) / sizeof(interned[0]); i++) {
        Py_CLEAR(*interned[i]);
    }
    return 0;
}

static void
loop_module_free(void *module)
{
    loop_module_clear((PyObject *)module);
}

static PyModuleDef_Slot loop_module_slots[] = {
    {Py_mod_exec, loop_module_exec},
    {0, NULL},
};

PyModuleDef loop_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pyasync_c._loop",
    .m_doc = "The C core of pyasync_c's libuv event loop.",
    .m_size = sizeof(ModuleState),
    .m_slots = loop_module_slots,
    .m_traverse = loop_module_traverse,
    .m_clear = loop_module_clear,
    .m_free = loop_module_free,
};

PyMODINIT_FUNC
PyInit__loop(void)
{
    return PyModuleDef_Init(&loop_module_def);
}
