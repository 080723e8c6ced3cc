/* LoopCore: the C half of pyasync_c.Loop (the Python class in
 * pyasync_c/loop.py adds asyncio.BaseEventLoop's orchestration on top).
 *
 * Owns: the libuv loop embedded in the object, the ready queue, the timer
 * heap, and three internal libuv handles (a prepare handle that releases the
 * GIL just before a blocking poll, one timer armed to the earliest deadline,
 * an async handle that call_soon_threadsafe uses to wake a blocked poll) plus
 * the signal wakeup socket (signals.c) and fd watchers (io_watchers.c).
 *
 * Lifecycle: tp_new initialises libuv; _close() (from Loop.close) or tp_dealloc
 * uv_close()s every handle, detaches in-flight lookups (dns.c), runs libuv
 * until the close callbacks ran, then uv_loop_close()s.  Nothing there waits
 * for outside work: once every handle is closed and no libuv request exists
 * (lookups are not libuv requests), that uv_run only runs close callbacks.
 * Handles queued or scheduled are owned references.
 *
 * Fork: every loop with libuv state is on the `live_loops` list; in a forked
 * child (os.register_at_fork hook in loop.py, and before close/run/lookups
 * for forks Python did not see) loop_after_fork() gives the child's copy its
 * own epoll instance, eventfd and signal socket (uv_loop_fork) before
 * anything could touch the ones shared with the parent: closing or running
 * the inherited loop in the child then never changes the parent's epoll
 * registrations.
 *
 * One iteration (_run_once), same contract as asyncio's BaseEventLoop:
 *   1. poll I/O: block until the next deadline if nothing is ready, else a
 *      non-blocking poll; skipped altogether when callbacks are ready and no
 *      user I/O source exists (nothing could be reported);
 *   2. move expired timers to the ready queue;
 *   3. run exactly the callbacks that were ready at that point.
 */
#include "loop.h"
#include "transport.h"

#include <math.h>
#include <time.h>
#include <unistd.h>

#define MAX_POLL_MS (86400 * 1000)  /* as asyncio: never block longer than a day */

double
loop_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    /* Same arithmetic as time.monotonic(), so the two agree exactly. */
    int64_t ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    return (double)ns / 1e9;
}

void
loop_defer_error(LoopObject *loop)
{
    PyObject *exc = compat_fetch_exception();
    if (loop->pending_error == NULL) {
        loop->pending_error = exc;
    }
    else {
        Py_XDECREF(exc);
    }
    uv_stop(&loop->uv);
}

int
loop_schedule_handle(LoopObject *loop, HandleObject *handle)
{
    if (ready_push(&loop->ready, handle) < 0) {
        return -1;
    }
    if (loop->polling) {
        /* Another thread holds the GIL while the loop thread blocks in poll. */
        uv_async_send(&loop->async_handle);
    }
    return 0;
}

/* ---- libuv callbacks ---- */

static void
on_prepare(uv_prepare_t *prepare)
{
    LoopObject *self = prepare->data;
    if (!self->may_block) {
        return;
    }
    if (self->ready.count > 0) {
        /* A callback run earlier in this uv_run scheduled work: don't block. */
        uv_stop(&self->uv);
        return;
    }
    stats_poll_begin(self);
    self->polling = 1;
    self->defer_libuv = 1;  /* libuv is ours until loop_take_gil: others queue their changes */
    self->released_tstate = PyEval_SaveThread();
}

static void
on_wake_timer(uv_timer_t *timer)
{
    /* The deadline is reached: make sure this uv_run returns promptly. */
    uv_stop(timer->loop);
}

static void
on_async(uv_async_t *async)
{
    /* Nothing to do: the handle is already in the ready queue. */
}

/* ---- construction and teardown ---- */

static LoopObject *live_loops;  /* GIL-guarded: loops whose uv_ready is set */

static void
live_link(LoopObject *self)
{
    self->live_prev = NULL;
    self->live_next = live_loops;
    if (live_loops != NULL) {
        live_loops->live_prev = self;
    }
    live_loops = self;
}

static void
live_unlink(LoopObject *self)
{
    if (self->live_prev != NULL) {
        self->live_prev->live_next = self->live_next;
    }
    else if (live_loops == self) {
        live_loops = self->live_next;
    }
    if (self->live_next != NULL) {
        self->live_next->live_prev = self->live_prev;
    }
    self->live_prev = self->live_next = NULL;
}

int
loop_after_fork(LoopObject *self)
{
    long pid = (long)getpid();
    if (self->pid == pid || !self->uv_ready) {
        return 0;
    }
    /* A fork in another thread while this loop blocked in poll: the thread
     * that released the GIL does not exist here. */
    self->released_tstate = NULL;
    self->polling = 0;
    /* changes queued by then stay first in line (poll_io or close applies them) */
    self->defer_libuv = self->libuv_changes != NULL;
    int err = uv_loop_fork(&self->uv);  /* new epoll + eventfd; watchers re-registered lazily */
    if (err < 0) {
        /* pid unchanged: the loop still shares the parent's epoll, and the
         * guards (io_watchers.c) keep their hands off libuv. */
        PyErr_Format(PyExc_OSError, "uv_loop_fork: %s", uv_strerror(err));
        return -1;
    }
    self->pid = pid;
    int status = signals_after_fork(self);
    if (dns_after_fork(self) < 0) {
        status = -1;
    }
    return status;
}

static int
loop_init_uv(LoopObject *self)
{
    int err = uv_loop_init(&self->uv);
    if (err < 0) {
        goto fail;
    }
    self->uv.data = self;
    uv_prepare_init(&self->uv, &self->prepare_handle);
    self->prepare_handle.data = self;
    uv_prepare_start(&self->prepare_handle, on_prepare);
    uv_timer_init(&self->uv, &self->wake_timer);
    self->wake_timer.data = self;
    err = uv_async_init(&self->uv, &self->async_handle, on_async);
    if (err < 0) {
        uv_close((uv_handle_t *)&self->prepare_handle, NULL);
        uv_close((uv_handle_t *)&self->wake_timer, NULL);
        uv_run(&self->uv, UV_RUN_DEFAULT);
        uv_loop_close(&self->uv);
        goto fail;
    }
    self->async_handle.data = self;
    self->uv_ready = 1;
    live_link(self);
    if (signals_open(self) < 0) {
        return -1;
    }
    return 0;
fail:
    PyErr_Format(PyExc_OSError, "cannot initialise libuv loop: %s", uv_strerror(err));
    return -1;
}

static void
loop_close_uv(LoopObject *self)
{
    if (!self->uv_ready) {
        return;
    }
    if (loop_after_fork(self) < 0) {
        /* Without its own epoll the child must not close a single poll (that
         * would remove the parent's registration): leak the libuv side. */
        PyErr_WriteUnraisable((PyObject *)self);
        self->uv_ready = 0;
        loop_apply_libuv_changes(self);  /* releases their owners; libuv is left alone */
        live_unlink(self);
        dns_close(self);  /* touches no kernel state */
        return;
    }
    loop_apply_libuv_changes(self);  /* queued by another thread in the last poll */
    self->uv_ready = 0;
    live_unlink(self);
    loop_close_watchers(self);
    transports_close_all(self);
    loop_release_spare_polls(self);  /* none is kept any more: uv_ready is 0 */
    signals_close(self);
    dns_close(self);  /* lookups in flight are detached, not waited for */
    uv_close((uv_handle_t *)&self->prepare_handle, NULL);
    uv_close((uv_handle_t *)&self->wake_timer, NULL);
    uv_close((uv_handle_t *)&self->async_handle, NULL);
    self->may_block = 0;
    self->changed_polls_count = 0;  /* every poll is closing now */
    uv_run(&self->uv, UV_RUN_DEFAULT);  /* runs the close callbacks */
    uv_loop_close(&self->uv);
}

static PyObject *
loop_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    LoopObject *self = (LoopObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    /* Works for pyasync_c.Loop too: the lookup walks the MRO to LoopCore. */
    PyObject *module = PyType_GetModuleByDef(type, &loop_module_def);
    if (module == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->state = PyModule_GetState(module);
    self->signal_fds[0] = self->signal_fds[1] = -1;
    self->thread_id = Py_NewRef(Py_None);
    self->pid = (long)getpid();
    self->watchers = PyDict_New();
    self->transports = PyDict_New();
    self->loop_kwargs = PyDict_New();
    if (self->watchers == NULL || self->transports == NULL || self->loop_kwargs == NULL
        || PyDict_SetItemString(self->loop_kwargs, "loop", (PyObject *)self) < 0 || loop_init_uv(self) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
loop_traverse(LoopObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->pending_error);
    Py_VISIT(self->thread_id);
    Py_VISIT(self->task_factory);
    Py_VISIT(self->loop_kwargs);
    Py_VISIT(self->watchers);
    ready_traverse(&self->ready, visit, arg);
    timer_heap_traverse(&self->timers, visit, arg);
    return transports_traverse(self, visit, arg);
}

static int
loop_clear(LoopObject *self)
{
    Py_CLEAR(self->pending_error);
    Py_CLEAR(self->task_factory);
    Py_CLEAR(self->loop_kwargs);
    ready_clear(&self->ready);
    timer_heap_clear(&self->timers);
    transports_clear(self);
    return 0;
}

static void
loop_dealloc(LoopObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    loop_close_uv(self);
    loop_clear(self);
    Py_CLEAR(self->thread_id);
    Py_CLEAR(self->watchers);
    Py_CLEAR(self->transports);
    Py_CLEAR(self->spare_bytes);
    Py_CLEAR(self->tls_read_buffer);
    PyMem_Free(self->changed_polls);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* ---- scheduling API ---- */

static int
check_open(LoopObject *self)
{
    if (self->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    return 0;
}

/* Parses (callback, *args, context=None) of the call_* methods. */
static int
parse_callback_call(LoopObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                    Py_ssize_t leading, const char *name, PyObject **context)
{
    *context = NULL;
    if (nargs < leading + 1) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument 'callback'", name);
        return -1;
    }
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, i);
            if (!keyword_is(key, self->state->str_context)) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'", name, key);
                return -1;
            }
            *context = args[nargs + i];
        }
    }
    return 0;
}

/* Debug mode runs asyncio's own checks (thread, coroutine callbacks). */
static int
debug_checks(LoopObject *self, PyObject *callback, const char *method, int check_thread)
{
    PyObject *result;
    if (check_thread) {
        result = PyObject_CallMethodNoArgs((PyObject *)self, self->state->str_check_thread);
        if (result == NULL) {
            return -1;
        }
        Py_DECREF(result);
    }
    PyObject *method_name = PyUnicode_FromString(method);
    if (method_name == NULL) {
        return -1;
    }
    result = PyObject_CallMethodObjArgs((PyObject *)self, self->state->str_check_callback,
                                       callback, method_name, NULL);
    Py_DECREF(method_name);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static PyObject *
schedule_soon(LoopObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
              const char *name, int threadsafe)
{
    PyObject *context;
    if (parse_callback_call(self, args, nargs, kwnames, 0, name, &context) < 0 || check_open(self) < 0) {
        return NULL;
    }
    if (self->debug && debug_checks(self, args[0], name, !threadsafe) < 0) {
        return NULL;
    }
    HandleObject *handle = handle_new(self, self->state->HandleType, args[0], args + 1, nargs - 1, context);
    if (handle == NULL) {
        return NULL;
    }
    int status = threadsafe ? loop_schedule_handle(self, handle) : ready_push(&self->ready, handle);
    if (status < 0) {
        Py_DECREF(handle);
        return NULL;
    }
    return (PyObject *)handle;
}

static PyObject *
loop_call_soon(LoopObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return schedule_soon(self, args, PyVectorcall_NARGS(nargs), kwnames, "call_soon", 0);
}

static PyObject *
loop_call_soon_threadsafe(LoopObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return schedule_soon(self, args, PyVectorcall_NARGS(nargs), kwnames, "call_soon_threadsafe", 1);
}

static PyObject *
schedule_at(LoopObject *self, double when, PyObject *const *args, Py_ssize_t nargs,
            PyObject *context, const char *name)
{
    if (check_open(self) < 0 || (self->debug && debug_checks(self, args[0], name, 1) < 0)) {
        return NULL;
    }
    HandleObject *timer = handle_new(self, self->state->TimerHandleType, args[0], args + 1, nargs - 1, context);
    if (timer == NULL) {
        return NULL;
    }
    timer->when = when;
    timer->sequence = self->timer_sequence++;
    if (timer_heap_push(&self->timers, timer) < 0) {
        Py_DECREF(timer);
        return NULL;
    }
    return (PyObject *)timer;
}

/* A time argument as a double.  int and float (and their subclasses) are
 * converted directly: an int too large for a float raises OverflowError, as
 * asyncio's `self.time() + delay` does.  For call_later, anything else is
 * added to the clock as asyncio does (Fraction works, Decimal or str raise
 * asyncio's TypeError) and the sum converted; call_at takes any real number.
 * NaN is refused (ValueError): it would break the heap's order. */
static int
parse_time(PyObject *value, double now, const char *name, const char *what, int relative, double *out)
{
    if (value == Py_None) {
        PyErr_Format(PyExc_TypeError, relative ? "%s must not be None" : "%s cannot be None", what);
        return -1;
    }
    PyObject *sum = NULL;
    if (relative && !PyFloat_Check(value) && !PyLong_Check(value)) {
        PyObject *clock = PyFloat_FromDouble(now);
        sum = clock ? PyNumber_Add(clock, value) : NULL;
        Py_XDECREF(clock);
        if (sum == NULL) {
            return -1;
        }
        value = sum;
        now = 0.0;
    }
    double number = PyFloat_AsDouble(value);
    if (number == -1.0 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Format(PyExc_TypeError, "%s(): %s must be a real number, not %.100s",
                         name, what, Py_TYPE(value)->tp_name);
        }
        Py_XDECREF(sum);
        return -1;
    }
    Py_XDECREF(sum);
    *out = relative ? now + number : number;
    if (isnan(*out)) {
        PyErr_Format(PyExc_ValueError, "%s(): the time must be a number, not NaN", name);
        return -1;
    }
    return 0;
}

/* call_later(delay, ...) and call_at(when, ...): the first argument is a
 * delay from now or an absolute time on loop.time()'s clock. */
static PyObject *
schedule_timer_call(LoopObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                    const char *name, const char *what, int relative)
{
    PyObject *context;
    double when;
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", name, what);
        return NULL;
    }
    if (parse_callback_call(self, args, nargs, kwnames, 1, name, &context) < 0
        || parse_time(args[0], relative ? loop_monotonic() : 0.0, name, what, relative, &when) < 0) {
        return NULL;
    }
    return schedule_at(self, when, args + 1, nargs - 1, context, name);
}

static PyObject *
loop_call_later(LoopObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return schedule_timer_call(self, args, PyVectorcall_NARGS(nargs), kwnames, "call_later", "delay", 1);
}

static PyObject *
loop_call_at(LoopObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return schedule_timer_call(self, args, PyVectorcall_NARGS(nargs), kwnames, "call_at", "when", 0);
}

static PyObject *
loop_time(LoopObject *self, PyObject *unused)
{
    return PyFloat_FromDouble(loop_monotonic());
}

/* Puts an existing handle (a signal handler's) on the ready queue. */
static PyObject *
loop_schedule_existing(LoopObject *self, PyObject *handle)
{
    if (!PyObject_TypeCheck(handle, self->state->HandleType)) {
        PyErr_SetString(PyExc_TypeError, "expected a pyasync_c Handle");
        return NULL;
    }
    if (loop_schedule_handle(self, (HandleObject *)handle) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
loop_make_handle(LoopObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "_make_handle(callback, args_tuple)");
        return NULL;
    }
    return (PyObject *)handle_new(self, self->state->HandleType, args[0], &PyTuple_GET_ITEM(args[1], 0),
                                  PyTuple_GET_SIZE(args[1]), NULL);
}

/* ---- futures and tasks ---- */

/* A new _asyncio.Future(loop=loop). */
PyObject *
loop_new_future(LoopObject *loop)
{
    if (loop->loop_kwargs != NULL) {
        return PyObject_Call(loop->state->FutureType, loop->state->empty_tuple, loop->loop_kwargs);
    }
    PyObject *argv[2] = {NULL, (PyObject *)loop};
    return PyObject_Vectorcall(loop->state->FutureType, argv + 1,
                               0 | PY_VECTORCALL_ARGUMENTS_OFFSET, loop->state->kwnames_loop);
}

static PyObject *
loop_create_future(LoopObject *self, PyObject *unused)
{
    return loop_new_future(self);
}

static PyObject *
loop_create_task(LoopObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    nargs = PyVectorcall_NARGS(nargs);
    PyObject *name = Py_None, *context = Py_None;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "create_task() takes exactly 1 positional argument (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        if (keyword_is(key, self->state->str_name)) {
            name = args[1 + i];
        }
        else if (keyword_is(key, self->state->str_context)) {
            context = args[1 + i];
        }
        else {
            /* Unknown keywords (e.g. newer Pythons' eager_start): asyncio's own code decides. */
            nkw = -1;
            break;
        }
    }
    if (self->task_factory != NULL || self->debug || nkw < 0) {
        /* Task factories and debug source tracebacks: asyncio's own orchestration. */
        PyObject *stack[8];
        Py_ssize_t total = 1 + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
        if (total + 1 > 8) {
            PyErr_SetString(PyExc_TypeError, "create_task() got too many keyword arguments");
            return NULL;
        }
        stack[0] = (PyObject *)self;
        for (Py_ssize_t i = 0; i < total; i++) {
            stack[1 + i] = args[i];
        }
        return PyObject_Vectorcall(self->state->base_create_task, stack, 2, kwnames);
    }
    if (check_open(self) < 0) {
        return NULL;
    }
    if (name == Py_None && context == Py_None && self->loop_kwargs != NULL) {
        PyObject *task_args = PyTuple_Pack(1, args[0]);
        if (task_args == NULL) {
            return NULL;
        }
        PyObject *task = PyObject_Call(self->state->TaskType, task_args, self->loop_kwargs);
        Py_DECREF(task_args);
        return task;
    }
    PyObject *argv[5] = {NULL, args[0], (PyObject *)self, name, context};
    return PyObject_Vectorcall(self->state->TaskType, argv + 1,
                               1 | PY_VECTORCALL_ARGUMENTS_OFFSET, self->state->kwnames_task);
}

/* ---- running ---- */

static void
arm_wake_timer(LoopObject *self, double delay)
{
    double ms = ceil(delay * 1000.0);
    uv_update_time(&self->uv);
    uv_timer_start(&self->wake_timer, on_wake_timer, ms > MAX_POLL_MS ? MAX_POLL_MS : (uint64_t)ms, 0);
}

static int
poll_io(LoopObject *self)
{
    if (self->libuv_changes != NULL) {
        loop_apply_libuv_changes(self);  /* left queued by a fork (loop_take_gil applies the rest) */
    }
    if (self->changed_polls_count > 0 || self->parked_count > 0) {
        loop_check_changed_polls(self);  /* may schedule callbacks: before deciding to block */
    }
    int block = self->ready.count == 0 && !self->stopping;
    if (block && self->timers.count > 0) {
        double delay = self->timers.items[0]->when - loop_monotonic();
        if (delay <= self->state->clock_resolution) {
            block = 0;
        }
        else {
            arm_wake_timer(self, delay);
        }
    }
    else if (block) {
        uv_timer_stop(&self->wake_timer);
    }
    if (block && self->parked_count > 0) {
        loop_release_parked_polls(self);  /* nobody is waiting for them */
    }
    self->may_block = (char)block;
    /* debug mode: every transport event runs as a Handle, so slow protocol
     * callbacks get asyncio's slow-callback warning */
    self->defer_io = (self->ready.count > 0 && !self->io_first) || self->debug;
    uv_run(&self->uv, block ? UV_RUN_ONCE : UV_RUN_NOWAIT);
    self->may_block = 0;
    self->defer_io = 0;
    loop_take_gil(self);
    if (self->pending_error != NULL) {
        PyObject *exc = self->pending_error;
        self->pending_error = NULL;
        compat_restore_exception(exc);
        return -1;
    }
    return 0;
}

static int
run_ready_debug(LoopObject *self, HandleObject *handle)
{
    double started = loop_monotonic();
    if (handle_run(handle) < 0) {
        return -1;
    }
    double took = loop_monotonic() - started;
    PyObject *limit = PyObject_GetAttr((PyObject *)self, self->state->str_slow_duration);
    if (limit == NULL) {
        return -1;
    }
    double slow = PyFloat_AsDouble(limit);
    Py_DECREF(limit);
    if (slow == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (took >= slow) {
        PyObject *seconds = PyFloat_FromDouble(took);
        if (seconds == NULL) {
            return -1;
        }
        PyObject *result = PyObject_CallMethodObjArgs((PyObject *)self, self->state->str_slow_callback,
                                                      (PyObject *)handle, seconds, NULL);
        Py_DECREF(seconds);
        if (result == NULL) {
            return -1;
        }
        Py_DECREF(result);
    }
    return 0;
}

static int
run_once(LoopObject *self)
{
    /* Closed polls are freed by libuv's close callbacks, which only run inside
     * uv_run: a loop that never needs to poll (callbacks always ready, no I/O
     * source) still polls (without blocking) while some wait, so watcher churn
     * there keeps its memory bounded. */
    if (self->ready.count == 0 || self->active_io > 0 || self->closing_polls > 0) {
        if (poll_io(self) < 0) {
            return -1;
        }
    }
    else if (PyErr_CheckSignals() < 0) {
        return -1;
    }
#if PYASYNC_C_STATS
    self->stats.iterations++;
#endif
    if (self->timers.count > 0) {
        int64_t now = stats_clock_ns();  /* the same reading as loop_monotonic() */
        stats_tick(self, now);
        double end = (double)now / 1e9 + self->state->clock_resolution;
        while (self->timers.count > 0 && self->timers.items[0]->when < end) {
            HandleObject *timer = timer_heap_pop(&self->timers);
            int status = ready_push(&self->ready, timer);
            timer->ready_ns = stats_deadline_ns(timer->when);  /* a timer is ready at its deadline */
            Py_DECREF(timer);
            if (status < 0) {
                return -1;
            }
        }
    }
    for (Py_ssize_t todo = self->ready.count; todo > 0 && self->ready.count > 0; todo--) {
        HandleObject *handle = ready_pop(&self->ready);
        int status = 0;
        if (!handle->cancelled) {
            stats_before_callback(self, handle);
            status = self->debug ? run_ready_debug(self, handle) : handle_run(handle);
        }
#if PYASYNC_C_STATS
        else if (handle->is_timer) {
            self->stats.timers_cancelled++;  /* cancelled after it left the heap */
        }
#endif
        Py_DECREF(handle);
        if (status < 0) {
            return -1;
        }
    }
    return 0;
}

static PyObject *
loop_run_once(LoopObject *self, PyObject *unused)
{
    stats_run_begin(self);
    int status = run_once(self);
    stats_run_end(self);
    if (status < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The body of run_forever: iterate until stop() (Loop.run_forever does the
 * asyncio bookkeeping around it). */
static PyObject *
loop_run(LoopObject *self, PyObject *unused)
{
    int status;
    stats_call_run_hook(self);  /* pyasync_c._observe: PYASYNC_C_BLOCKING & co. */
    stats_run_begin(self);
    do {
        status = run_once(self);
    } while (status == 0 && !self->stopping);
    if (self->parked_count > 0) {
        loop_release_parked_polls(self);  /* nothing takes them while the loop is stopped */
    }
    stats_run_end(self);
    self->stopping = 0;
    if (status < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
loop_stop(LoopObject *self, PyObject *unused)
{
    self->stopping = 1;
    Py_RETURN_NONE;
}

static PyObject *
loop_is_running(LoopObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->thread_id != Py_None);
}

static PyObject *
loop_is_closed(LoopObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->closed);
}

static PyObject *
loop_get_debug(LoopObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->debug);
}

/* Releases libuv and every queued callback; Loop.close() does the checks. */
static PyObject *
loop_close_core(LoopObject *self, PyObject *unused)
{
    self->closed = 1;
    ready_clear(&self->ready);
    timer_heap_clear(&self->timers);
    loop_close_uv(self);
    handle_freelist_trim();
    Py_RETURN_NONE;
}

/* _adopt_after_fork(resume=True): in a forked child, the loop's own kernel
 * state (if the fork hook did not run: a fork Python did not see), then, with
 * resume, its orphaned lookups queued again.  Loop.close() calls it first
 * (without resume), run_forever's setup with. */
static PyObject *
loop_adopt_after_fork(LoopObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int resume = 1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "_adopt_after_fork(resume=True)");
        return NULL;
    }
    if (nargs == 1 && (resume = PyObject_IsTrue(args[0])) < 0) {
        return NULL;
    }
    if (loop_after_fork(self) < 0) {
        return NULL;
    }
    if (resume) {
        dns_resume(self);
    }
    Py_RETURN_NONE;
}

/* os.register_at_fork(after_in_child=...) (loop.py): every live loop gets
 * its own kernel state at once, before the child's code can close a poll of
 * it.  A loop this thread was running (the fork happened in one of its
 * callbacks) goes on running in the child: its next iteration resumes its
 * lookups (a child that never returns to it, as multiprocessing's, repeats
 * none). */
static PyObject *
loop_forked_child(PyObject *cls, PyObject *unused)
{
    /* First the kernel state of every loop, with no Python code running in
     * between (none can close or free a loop while the list is walked). */
    Py_ssize_t count = 0, failed = 0;
    for (LoopObject *loop = live_loops; loop != NULL; loop = loop->live_next) {
        count++;
        if (loop_after_fork(loop) < 0) {
            failed++;  /* reported below */
            PyErr_Clear();
        }
    }
    if (failed > 0) {
        PyErr_Format(PyExc_OSError, "pyasync_c: %zd loop(s) could not fully renew their kernel state "
                     "after fork()", failed);
        PyErr_WriteUnraisable(NULL);
    }
    if (count == 0) {
        Py_RETURN_NONE;
    }
    /* Then, on a snapshot (strong references), what may run Python code. */
    PyObject *loops = PyList_New(count);
    if (loops == NULL) {
        return NULL;
    }
    Py_ssize_t i = 0;
    for (LoopObject *loop = live_loops; loop != NULL && i < count; loop = loop->live_next) {
        PyList_SET_ITEM(loops, i++, Py_NewRef((PyObject *)loop));
    }
    unsigned long me = PyThread_get_thread_ident();
    for (Py_ssize_t j = 0; j < i; j++) {
        LoopObject *loop = (LoopObject *)PyList_GET_ITEM(loops, j);
        if (loop->thread_id == Py_None) {
            continue;
        }
        unsigned long ident = PyLong_AsUnsignedLong(loop->thread_id);
        if (ident == (unsigned long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            continue;
        }
        if (ident != me) {
            continue;
        }
        /* The fork happened in one of this loop's callbacks: the child goes on
         * running it, and its next iteration resumes the lookups. */
        PyObject *resume = PyObject_GetAttrString((PyObject *)loop, "_adopt_after_fork");
        HandleObject *handle = resume == NULL ? NULL
            : handle_new(loop, loop->state->HandleType, resume, NULL, 0, NULL);
        if (handle == NULL || ready_push(&loop->ready, handle) < 0) {
            PyErr_WriteUnraisable((PyObject *)loop);
        }
        Py_XDECREF(handle);
        Py_XDECREF(resume);
    }
    Py_DECREF(loops);
    Py_RETURN_NONE;
}

/* The public add/remove_reader/writer refuse an fd a transport uses, as
 * asyncio does (sock_ops.c calls the watcher functions directly). */
static int
check_fd_not_transport(LoopObject *self, PyObject *fileobj)
{
    int fd = loop_fileobj_to_fd(fileobj);
    return fd < 0 ? -1 : transport_check_fd_free(self, fd);
}

static PyObject *
loop_add_reader(LoopObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 0 && check_fd_not_transport(self, args[0]) < 0) {
        return NULL;
    }
    return loop_add_watcher(self, args, nargs, UV_READABLE);
}

static PyObject *
loop_add_writer(LoopObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 0 && check_fd_not_transport(self, args[0]) < 0) {
        return NULL;
    }
    return loop_add_watcher(self, args, nargs, UV_WRITABLE);
}

static PyObject *
loop_remove_reader(LoopObject *self, PyObject *fileobj)
{
    if (check_fd_not_transport(self, fileobj) < 0) {
        return NULL;
    }
    return loop_remove_watcher(self, fileobj, UV_READABLE);
}

static PyObject *
loop_remove_writer(LoopObject *self, PyObject *fileobj)
{
    if (check_fd_not_transport(self, fileobj) < 0) {
        return NULL;
    }
    return loop_remove_watcher(self, fileobj, UV_WRITABLE);
}

/* Signal handlers registered with add_signal_handler need the wakeup socket
 * polled even when callbacks are ready. */
static PyObject *
loop_set_signal_handlers_active(LoopObject *self, PyObject *delta)
{
    long change = PyLong_AsLong(delta);
    if (change == -1 && PyErr_Occurred()) {
        return NULL;
    }
    self->active_io += change;
    Py_RETURN_NONE;
}

/* ---- attributes shared with asyncio.BaseEventLoop's Python code ---- */

static PyObject *get_closed(LoopObject *self, void *c) { return PyBool_FromLong(self->closed); }
static PyObject *get_transports(LoopObject *self, void *c) { return registry_snapshot(self); }
static PyObject *get_stopping(LoopObject *self, void *c) { return PyBool_FromLong(self->stopping); }
static PyObject *get_debug_attr(LoopObject *self, void *c) { return PyBool_FromLong(self->debug); }
static PyObject *get_thread_id(LoopObject *self, void *c) { return Py_NewRef(self->thread_id); }
static PyObject *get_pid(LoopObject *self, void *c) { return PyLong_FromLong(self->pid); }
static PyObject *get_wakeup_fd(LoopObject *self, void *c) { return PyLong_FromLong(self->signal_fds[1]); }

/* Snapshots of the queues for code that inspects BaseEventLoop's _ready
 * deque or _scheduled heap (tests, debugging tools).  Assigning an empty
 * container is accepted (BaseEventLoop.__init__ does); anything else is an
 * error rather than silently ignored. */
static PyObject *
get_ready(LoopObject *self, void *c)
{
    PyObject *list = PyList_New(self->ready.count);
    for (Py_ssize_t i = 0; list != NULL && i < self->ready.count; i++) {
        PyObject *handle = (PyObject *)self->ready.items[(self->ready.head + i) & (self->ready.capacity - 1)];
        PyList_SET_ITEM(list, i, Py_NewRef(handle));
    }
    return list;
}

static PyObject *
get_scheduled(LoopObject *self, void *c)
{
    PyObject *list = PyList_New(self->timers.count);
    for (Py_ssize_t i = 0; list != NULL && i < self->timers.count; i++) {
        PyList_SET_ITEM(list, i, Py_NewRef((PyObject *)self->timers.items[i]));
    }
    return list;
}

static int
set_queue_view(LoopObject *self, PyObject *value, void *c)
{
    Py_ssize_t size = value ? PyObject_Size(value) : -1;
    if (size != 0) {
        if (!PyErr_Occurred() || size > 0) {
            PyErr_Clear();
            PyErr_SetString(PyExc_AttributeError,
                            "pyasync_c keeps its ready queue and timers in C: only an empty container can be assigned");
        }
        return -1;
    }
    return 0;
}

static PyObject *
get_task_factory(LoopObject *self, void *c)
{
    return Py_NewRef(self->task_factory ? self->task_factory : Py_None);
}

static int
set_flag(char *flag, PyObject *value)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete this attribute");
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    if (truth < 0) {
        return -1;
    }
    *flag = (char)truth;
    return 0;
}

static int set_closed(LoopObject *self, PyObject *v, void *c) { return set_flag(&self->closed, v); }
static int set_stopping(LoopObject *self, PyObject *v, void *c) { return set_flag(&self->stopping, v); }
static int set_debug_attr(LoopObject *self, PyObject *v, void *c) { return set_flag(&self->debug, v); }
static PyObject *get_io_first(LoopObject *self, void *c) { return PyBool_FromLong(self->io_first); }
static int set_io_first(LoopObject *self, PyObject *v, void *c) { return set_flag(&self->io_first, v); }

static int
set_thread_id(LoopObject *self, PyObject *value, void *c)
{
    Py_XSETREF(self->thread_id, Py_NewRef(value ? value : Py_None));
    return 0;
}

static int
set_task_factory(LoopObject *self, PyObject *value, void *c)
{
    Py_XSETREF(self->task_factory, (value == NULL || value == Py_None) ? NULL : Py_NewRef(value));
    return 0;
}

static void
count_handle(uv_handle_t *handle, void *arg)
{
    (*(Py_ssize_t *)arg)++;
}

/* Debugging counters of the poll bookkeeping (tests/test_watchers_hardening.py). */
static PyObject *
get_poll_stats(LoopObject *self, void *c)
{
    Py_ssize_t uv_handles = 0;
    if (self->uv_ready && loop_may_touch_libuv(self)) {
        uv_walk(&self->uv, count_handle, &uv_handles);  /* closing handles too, until freed */
    }
    else if (self->uv_ready) {
        uv_handles = -1;  /* asked from another thread while the loop thread runs libuv */
    }
    return Py_BuildValue("{snsnsnsnsi}", "noted_polls", self->poll_records_count, "closing_polls",
                         self->closing_polls, "changed_polls", self->changed_polls_count, "uv_handles", uv_handles,
                         "spare_polls", self->spare_polls_count);
}

static PyGetSetDef loop_getsets[] = {
    {"_closed", (getter)get_closed, (setter)set_closed, NULL, NULL},
    {"_transports", (getter)get_transports, NULL, "a new dict fd -> transport (a copy of the C registry)", NULL},
    {"_stopping", (getter)get_stopping, (setter)set_stopping, NULL, NULL},
    {"_debug", (getter)get_debug_attr, (setter)set_debug_attr, NULL, NULL},
    {"_io_first", (getter)get_io_first, (setter)set_io_first,
     "Measurement switch, not API: True runs a poll's transport I/O before the callbacks that "
     "were ready (uvloop's order) instead of after them (asyncio's, the default).", NULL},
    {"_thread_id", (getter)get_thread_id, (setter)set_thread_id, NULL, NULL},
    {"_task_factory", (getter)get_task_factory, (setter)set_task_factory, NULL, NULL},
    {"_ready", (getter)get_ready, (setter)set_queue_view, "Snapshot of the ready handles (a list).", NULL},
    {"_scheduled", (getter)get_scheduled, (setter)set_queue_view, "Snapshot of the timer heap (a list).", NULL},
    {"_pid", (getter)get_pid, NULL, "Process id that created the loop.", NULL},
    {"_signal_wakeup_fd", (getter)get_wakeup_fd, NULL, "fd to give signal.set_wakeup_fd().", NULL},
    {"_poll_stats", (getter)get_poll_stats, NULL, "Counters of libuv handles and polls (debugging).", NULL},
    {NULL},
};

#define FASTCALL_KW (METH_FASTCALL | METH_KEYWORDS)

static PyMethodDef loop_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))loop_call_soon, FASTCALL_KW,
     "call_soon(callback, *args, context=None)\n--\n\nArrange for callback(*args) to run on the next iteration."},
    {"call_soon_threadsafe", (PyCFunction)(void (*)(void))loop_call_soon_threadsafe, FASTCALL_KW,
     "call_soon_threadsafe(callback, *args, context=None)\n--\n\nLike call_soon(), callable from any thread; wakes the loop."},
    {"call_later", (PyCFunction)(void (*)(void))loop_call_later, FASTCALL_KW,
     "call_later(delay, callback, *args, context=None)\n--\n\nArrange for callback(*args) to run after delay seconds."},
    {"call_at", (PyCFunction)(void (*)(void))loop_call_at, FASTCALL_KW,
     "call_at(when, callback, *args, context=None)\n--\n\nArrange for callback(*args) to run at loop.time() == when."},
    {"time", (PyCFunction)loop_time, METH_NOARGS, "The loop's clock: time.monotonic()."},
    {"create_future", (PyCFunction)loop_create_future, METH_NOARGS, "Create an asyncio.Future attached to the loop."},
    {"create_task", (PyCFunction)(void (*)(void))loop_create_task, FASTCALL_KW,
     "create_task(coro, *, name=None, context=None)\n--\n\nSchedule a coroutine as an asyncio.Task."},
    {"stop", (PyCFunction)loop_stop, METH_NOARGS, "Stop running after the current iteration."},
    {"is_running", (PyCFunction)loop_is_running, METH_NOARGS, "Return True if the loop is running."},
    {"is_closed", (PyCFunction)loop_is_closed, METH_NOARGS, "Return True if the loop was closed."},
    {"get_debug", (PyCFunction)loop_get_debug, METH_NOARGS, "Return the debug mode flag."},
    {"add_reader", (PyCFunction)(void (*)(void))loop_add_reader, METH_FASTCALL,
     "add_reader(fd, callback, *args)\n--\n\nCall callback(*args) whenever fd is readable."},
    {"add_writer", (PyCFunction)(void (*)(void))loop_add_writer, METH_FASTCALL,
     "add_writer(fd, callback, *args)\n--\n\nCall callback(*args) whenever fd is writable."},
    {"remove_reader", (PyCFunction)loop_remove_reader, METH_O, "Stop watching fd for reading; True if it was."},
    {"remove_writer", (PyCFunction)loop_remove_writer, METH_O, "Stop watching fd for writing; True if it was."},
    {"_sock_recv", (PyCFunction)(void (*)(void))loop_sock_recv, METH_FASTCALL, "C half of sock_recv(sock, n): a Future."},
    {"_sock_recv_into", (PyCFunction)(void (*)(void))loop_sock_recv_into, METH_FASTCALL, "C half of sock_recv_into(sock, buf): a Future."},
    {"_sock_recvfrom", (PyCFunction)(void (*)(void))loop_sock_recvfrom, METH_FASTCALL, "C half of sock_recvfrom(sock, bufsize): a Future."},
    {"_sock_recvfrom_into", (PyCFunction)(void (*)(void))loop_sock_recvfrom_into, METH_FASTCALL, "C half of sock_recvfrom_into(sock, buf, nbytes): a Future."},
    {"_sock_sendto", (PyCFunction)(void (*)(void))loop_sock_sendto, METH_FASTCALL, "C half of sock_sendto(sock, data, address): a Future."},
    {"_sock_sendall", (PyCFunction)(void (*)(void))loop_sock_sendall, METH_FASTCALL, "C half of sock_sendall(sock, data): a Future."},
    {"_sock_connect", (PyCFunction)(void (*)(void))loop_sock_connect, METH_FASTCALL, "C half of sock_connect(sock, resolved_address): a Future."},
    {"_sock_accept", (PyCFunction)loop_sock_accept, METH_O, "C half of sock_accept(sock): a Future."},
    {"_sock_check", (PyCFunction)loop_sock_check, METH_O, "asyncio's checks of a socket given to sock_* (SSL; non-blocking in debug mode)."},
    {"_accept_ready", (PyCFunction)loop_accept_ready, METH_O | METH_STATIC,
     "_accept_ready(fd): (conn_fd, address) of a pending connection on a listening IP socket (conn_fd non-blocking, close-on-exec), or None."},
    {"_peer_address", (PyCFunction)loop_peer_address, METH_O | METH_STATIC,
     "_peer_address(fd): getpeername() of a connected IPv4/IPv6 socket fd, as socket.getpeername() gives it; None for another family."},
    {"_run_once", (PyCFunction)loop_run_once, METH_NOARGS, "Run one iteration."},
    {"_run", (PyCFunction)loop_run, METH_NOARGS, "Iterate until stop(); the core of run_forever()."},
    {"_close", (PyCFunction)loop_close_core, METH_NOARGS, "Drop queued callbacks and release libuv."},
    {"_adopt_after_fork", (PyCFunction)(void (*)(void))loop_adopt_after_fork, METH_FASTCALL,
     "In a forked child: the loop's own epoll/eventfd/signal socket; with resume, lookups in flight at fork resolved again."},
    {"_forked_child", (PyCFunction)loop_forked_child, METH_NOARGS | METH_CLASS,
     "os.register_at_fork(after_in_child=...) hook: every live loop adopted by the child."},
    {"_schedule_handle", (PyCFunction)loop_schedule_existing, METH_O, "Queue an existing Handle."},
    {"_make_handle", (PyCFunction)(void (*)(void))loop_make_handle, METH_FASTCALL, "Make a Handle without queueing it."},
    {"_signal_handlers_changed", (PyCFunction)loop_set_signal_handlers_active, METH_O, NULL},
    {NULL},
};

static PyType_Slot loop_slots[] = {
    {Py_tp_doc, "The C core of pyasync_c.Loop: scheduling, timers and the libuv poll."},
    {Py_tp_new, loop_new},
    {Py_tp_methods, loop_methods},
    {Py_tp_getset, loop_getsets},
    {Py_tp_traverse, loop_traverse},
    {Py_tp_clear, loop_clear},
    {Py_tp_dealloc, loop_dealloc},
    {0, NULL},
};

static PyType_Spec loop_spec = {
    .name = "pyasync_c._loop.LoopCore",
    .basicsize = sizeof(LoopObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = loop_slots,
};

int
loop_core_init_type(PyObject *module, ModuleState *state)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &loop_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    state->LoopCoreType = (PyTypeObject *)type;
    if (stats_add_methods(state->LoopCoreType) < 0) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "LoopCore", type);
}
