/* Always-on loop statistics and the C half of the blocking-call detector.
 *
 * Counters (LoopStats in loop.h) are plain integers kept by the loop thread
 * with the GIL held; loop.stats() snapshots them into a dict.
 *
 * Clock readings and why they are rare.  A clock_gettime() costs 20-80 ns
 * (more on a VM) while a call_soon round trip costs ~150-250 ns, so reading
 * the clock per callback, or even per iteration (call_soon_chain runs one
 * callback per iteration), would cost 10-30%.  The loop reads the clock:
 *   - around each blocking poll (the GIL is released there; a blocking
 *     poll is a syscall that sleeps, so two readings are noise);
 *   - at the timer check, which already needed the time;
 *   - every `window_size` units of work (callbacks run + I/O events), the
 *     window size adapting so that a window lasts about WINDOW_TARGET_NS of
 *     busy time (1 when units are slow, up to WINDOW_MAX when they are fast).
 * Between two readings the loop's "now" is the last reading (`now_ns`).
 *
 * What that gives:
 *   - poll_ns (blocked in poll) is exact; busy_ns is running time minus it.
 *   - lag (ready -> ran) of a callback is now_ns at its run minus now_ns when
 *     it was queued (ready_push stamps the handle); both readings are at most
 *     one window old, so the error is at most one window (~WINDOW_TARGET_NS
 *     of work) and lags below that mostly land in bucket 0.  A callback queued
 *     by another thread while the loop slept is ready from the wake-up.  For
 *     a timer the ready time is its deadline, so lateness includes a poll that
 *     overslept.
 *   - longest_ns is the longest window holding at least one unit: exactly one
 *     callback once callbacks take >= WINDOW_TARGET_NS (then windows hold one
 *     unit each), otherwise an upper bound that includes the short callbacks
 *     timed with it (about WINDOW_TARGET_NS).  Right after a sudden slowdown
 *     the first window may still count up to WINDOW_MAX slow callbacks as one.
 *
 * Blocking-call detector (pyasync_c/_observe.py runs the thread): the loop
 * publishes a heartbeat (callbacks + io_events, bumped before each unit) and
 * whether it is running and whether it sleeps in poll, as relaxed atomics.
 * _watch_wait() polls them every `period` with the GIL released and returns
 * when one unit has held the loop longer than the threshold: the start of a
 * unit is known to within one period without any clock reading in the loop.
 */
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sys/socket.h>
#include <sched.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WINDOW_TARGET_NS 20000  /* 20 us of busy time per clock reading */
#define WINDOW_MAX 64

int64_t
stats_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void
set_now(LoopObject *loop, int64_t now)
{
    loop->stats.now_ns = now;
    loop->ready.stamp = now;
}

static void
start_window(LoopStats *stats, int64_t now, int32_t size)
{
    stats->window_start_ns = now;
    stats->window_size = size;
    stats->window_left = size;
}

/* Closes the clock window at `now`: its time was busy; a window that held
 * work is a candidate for the longest callback; the next window's size is
 * chosen from this one's average unit. */
void
stats_tick(LoopObject *loop, int64_t now)
{
#if PYASYNC_C_STATS
    LoopStats *stats = &loop->stats;
    int64_t span = now - stats->window_start_ns;
    int32_t units = stats->window_size - (stats->window_left > 0 ? stats->window_left : 0);
    int32_t size = stats->window_size;
    if (span > 0) {
        stats->busy_ns += span;
    }
    if (units > 0 && span > 0) {
        if (span > stats->longest_ns) {
            stats->longest_ns = span;
        }
        int64_t average = span / units;
        int64_t wanted = average > 0 ? WINDOW_TARGET_NS / average : WINDOW_MAX;
        size = wanted < 1 ? 1 : wanted > WINDOW_MAX ? WINDOW_MAX : (int32_t)wanted;
    }
    set_now(loop, now);
    start_window(stats, now, size > 0 ? size : 1);
#endif
}

void
stats_poll_begin(LoopObject *loop)
{
#if PYASYNC_C_STATS
    stats_tick(loop, stats_clock_ns());
    atomic_store_explicit(&loop->stats.idle, 1, memory_order_relaxed);
#endif
}

void
stats_poll_end_slow(LoopObject *loop)
{
    LoopStats *stats = &loop->stats;
    int64_t now = stats_clock_ns();
    int64_t slept = now - stats->window_start_ns;  /* the window was closed when the poll began */
    if (slept > 0) {
        stats->poll_ns += slept;
    }
    atomic_store_explicit(&stats->idle, 0, memory_order_relaxed);
    stats->wake_ns = now;
    set_now(loop, now);
    start_window(stats, now, stats->window_size);
}

void
stats_run_begin(LoopObject *loop)
{
#if PYASYNC_C_STATS
    int64_t now = stats_clock_ns();
    if (loop->stats.reset_ns == 0) {
        loop->stats.reset_ns = now;
    }
    loop->stats.wake_ns = now;  /* callbacks queued before the run are ready from its start */
    set_now(loop, now);
    start_window(&loop->stats, now, loop->stats.window_size > 0 ? loop->stats.window_size : 1);
    atomic_store_explicit(&loop->stats.running, 1, memory_order_relaxed);
#endif
}

void
stats_run_end(LoopObject *loop)
{
#if PYASYNC_C_STATS
    stats_tick(loop, stats_clock_ns());
    atomic_store_explicit(&loop->stats.running, 0, memory_order_relaxed);
#endif
}

static inline int
lag_bucket(int64_t lag)
{
    if (lag < 1024) {
        return 0;
    }
    int bucket = 64 - __builtin_clzll((unsigned long long)(lag >> 10));
    return bucket < STATS_LAG_BUCKETS ? bucket : STATS_LAG_BUCKETS - 1;
}

/* Out of line: timers, and callbacks that waited past the current window. */
void
stats_record_lag(LoopStats *stats, HandleObject *handle, int64_t lag)
{
    if (lag < 0) {
        lag = 0;  /* a timer run up to one clock resolution before its deadline */
    }
    if (handle->is_timer) {
        stats->timers_fired++;
        stats->timer_hist[lag_bucket(lag)]++;
        if (lag > stats->timer_max_ns) {
            stats->timer_max_ns = lag;
        }
    }
    else {
        stats->lag_hist[lag_bucket(lag)]++;
        if (lag > stats->lag_max_ns) {
            stats->lag_max_ns = lag;
        }
    }
}

/* ---- the hook pyasync_c._observe installs: called at each _run entry ---- */

static PyObject *run_hook;  /* process-wide, like the handle freelist (no subinterpreters) */

int
stats_call_run_hook(LoopObject *loop)
{
    if (run_hook == NULL) {
        return 0;
    }
    PyObject *hook = Py_NewRef(run_hook);  /* the hook may replace itself */
    PyObject *result = PyObject_CallOneArg(hook, (PyObject *)loop);
    if (result == NULL) {
        PyErr_WriteUnraisable(hook);
    }
    Py_XDECREF(result);
    Py_DECREF(hook);
    return 0;
}

static PyObject *
set_run_hook(PyObject *cls, PyObject *hook)
{
    if (hook != Py_None && !PyCallable_Check(hook)) {
        PyErr_SetString(PyExc_TypeError, "the run hook must be callable or None");
        return NULL;
    }
    Py_XSETREF(run_hook, hook == Py_None ? NULL : Py_NewRef(hook));
    Py_RETURN_NONE;
}

/* ---- stats() ---- */

/* Upper bound in seconds of the bucket holding quantile q of the counts. */
static double
bucket_upper_seconds(int bucket)
{
    return ldexp(1024e-9, bucket);
}

static double
hist_quantile(const uint64_t *counts, int n, double q)
{
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        total += counts[i];
    }
    if (total == 0) {
        return 0.0;
    }
    double rank = q * (double)total;
    uint64_t seen = 0;
    for (int i = 0; i < n; i++) {
        seen += counts[i];
        if ((double)seen >= rank && counts[i] > 0) {
            return bucket_upper_seconds(i);
        }
    }
    return bucket_upper_seconds(n - 1);
}

/* _histogram_quantile(counts, q): the same quantile over a list of bucket
 * counts (the periodic log computes windows from differences of snapshots). */
static PyObject *
histogram_quantile(PyObject *unused, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_histogram_quantile(counts, q)");
        return NULL;
    }
    double q = PyFloat_AsDouble(args[1]);
    if (q == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!(q >= 0.0 && q <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "q must be between 0 and 1");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "counts must be a sequence of ints");
    if (seq == NULL) {
        return NULL;
    }
    uint64_t counts[STATS_LAG_BUCKETS] = {0};
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > STATS_LAG_BUCKETS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d buckets", STATS_LAG_BUCKETS);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long value = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (value == (unsigned long long)-1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        counts[i] = value;
    }
    Py_DECREF(seq);
    return PyFloat_FromDouble(hist_quantile(counts, (int)n, q));
}

/* A quantile is reported as its bucket's upper bound, but never above the
 * exact maximum. */
static double
quantile_upto(const uint64_t *counts, double q, int64_t max_ns)
{
    double bound = hist_quantile(counts, STATS_LAG_BUCKETS, q);
    double max = (double)max_ns / 1e9;
    return bound < max ? bound : max;
}

static int
add_item(PyObject *dict, const char *key, PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    int rc = PyDict_SetItemString(dict, key, value);
    Py_DECREF(value);
    return rc;
}

static PyObject *
hist_list(const uint64_t *counts)
{
    PyObject *list = PyList_New(STATS_LAG_BUCKETS);
    for (int i = 0; list != NULL && i < STATS_LAG_BUCKETS; i++) {
        PyObject *value = PyLong_FromUnsignedLongLong(counts[i]);
        if (value == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, value);
    }
    return list;
}

/* Listening sockets the loop serves: watched fds with SO_ACCEPTCONN set
 * (asyncio.Server's accept loop is a reader on each of its sockets). */
static Py_ssize_t
count_listening(LoopObject *self)
{
    Py_ssize_t count = 0, pos = 0;
    PyObject *key, *value;
    while (self->watchers != NULL && PyDict_Next(self->watchers, &pos, &key, &value)) {
        int fd = (int)PyLong_AsLong(key);
        int listening = 0;
        socklen_t length = sizeof(listening);
        if (fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0 && listening) {
            count++;
        }
    }
    PyErr_Clear();
    return count;
}

static void
reset_stats(LoopObject *self)
{
    LoopStats *stats = &self->stats;
    stats->callbacks_base = atomic_load_explicit(&stats->callbacks, memory_order_relaxed);
    stats->io_events_base = atomic_load_explicit(&stats->io_events, memory_order_relaxed);
    stats->iterations = 0;
    stats->timers_scheduled = stats->timers_fired = stats->timers_cancelled = 0;
    stats->bytes_received = stats->bytes_sent = 0;
    stats->blocking_events = 0;
    stats->blocked_ns = stats->poll_ns = stats->busy_ns = stats->longest_ns = 0;
    stats->lag_max_ns = stats->timer_max_ns = 0;
    memset(stats->lag_hist, 0, sizeof(stats->lag_hist));
    memset(stats->timer_hist, 0, sizeof(stats->timer_hist));
    int64_t now = stats_clock_ns();
    stats->reset_ns = now;
    if (atomic_load_explicit(&stats->running, memory_order_relaxed)) {
        start_window(stats, now, stats->window_size);  /* time before the reset is not counted */
        set_now(self, now);
    }
}

static PyObject *
build_stats(LoopObject *self)
{
    LoopStats *stats = &self->stats;
    int64_t now = stats_clock_ns();
    int64_t busy = stats->busy_ns;
    int running = atomic_load_explicit(&stats->running, memory_order_relaxed);
    if (running && !atomic_load_explicit(&stats->idle, memory_order_relaxed)) {
        busy += now - stats->window_start_ns;  /* the open window, when asked from the loop itself */
    }
    double poll_s = (double)stats->poll_ns / 1e9, busy_s = (double)busy / 1e9;
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
#define U64(key, value) add_item(d, key, PyLong_FromUnsignedLongLong(value))
#define F64(key, value) add_item(d, key, PyFloat_FromDouble(value))
    if (U64("iterations_total", stats->iterations) < 0
        || U64("callbacks_total", atomic_load_explicit(&stats->callbacks, memory_order_relaxed) - stats->callbacks_base) < 0
        || U64("io_events_total", atomic_load_explicit(&stats->io_events, memory_order_relaxed) - stats->io_events_base) < 0
        || U64("timers_scheduled_total", stats->timers_scheduled) < 0
        || U64("timers_fired_total", stats->timers_fired) < 0
        || U64("timers_cancelled_total", stats->timers_cancelled) < 0
        || add_item(d, "timers_pending", PyLong_FromSsize_t(self->timers.count)) < 0
        || add_item(d, "callbacks_ready", PyLong_FromSsize_t(self->ready.count)) < 0
        || add_item(d, "transports_open", PyLong_FromSsize_t(self->transports ? PyDict_GET_SIZE(self->transports) : 0)) < 0
        || add_item(d, "servers_open", PyLong_FromSsize_t(count_listening(self))) < 0
        || U64("bytes_received_total", stats->bytes_received) < 0
        || U64("bytes_sent_total", stats->bytes_sent) < 0
        || F64("poll_seconds_total", poll_s) < 0
        || F64("busy_seconds_total", busy_s) < 0
        || F64("busy_ratio", poll_s + busy_s > 0 ? busy_s / (poll_s + busy_s) : 0.0) < 0
        || F64("longest_callback_seconds", (double)stats->longest_ns / 1e9) < 0
        || F64("callback_lag_p50_seconds", quantile_upto(stats->lag_hist, 0.5, stats->lag_max_ns)) < 0
        || F64("callback_lag_p99_seconds", quantile_upto(stats->lag_hist, 0.99, stats->lag_max_ns)) < 0
        || F64("callback_lag_max_seconds", (double)stats->lag_max_ns / 1e9) < 0
        || F64("timer_lateness_p50_seconds", quantile_upto(stats->timer_hist, 0.5, stats->timer_max_ns)) < 0
        || F64("timer_lateness_p99_seconds", quantile_upto(stats->timer_hist, 0.99, stats->timer_max_ns)) < 0
        || F64("timer_lateness_max_seconds", (double)stats->timer_max_ns / 1e9) < 0
        || add_item(d, "callback_lag_buckets", hist_list(stats->lag_hist)) < 0
        || add_item(d, "timer_lateness_buckets", hist_list(stats->timer_hist)) < 0
        || U64("blocking_events_total", stats->blocking_events) < 0
        || F64("blocked_seconds_total", (double)stats->blocked_ns / 1e9) < 0
        || F64("window_seconds", stats->reset_ns ? (double)(now - stats->reset_ns) / 1e9 : 0.0) < 0
        || add_item(d, "running", PyBool_FromLong(running)) < 0
        || add_item(d, "enabled", PyBool_FromLong(PYASYNC_C_STATS)) < 0) {
        Py_DECREF(d);
        return NULL;
    }
#undef U64
#undef F64
    return d;
}

static PyObject *
loop_stats(LoopObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"reset"};
    PyObject *reset_arg = Py_False;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 1 || nargs + nkw > 1) {
        PyErr_SetString(PyExc_TypeError, "stats() takes at most one argument (reset)");
        return NULL;
    }
    if (nargs == 1) {
        reset_arg = args[0];
    }
    else if (nkw == 1) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0))
            || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), names[0]) != 0) {
            PyErr_Format(PyExc_TypeError, "stats() got an unexpected keyword argument %R", PyTuple_GET_ITEM(kwnames, 0));
            return NULL;
        }
        reset_arg = args[0];
    }
    int reset = PyObject_IsTrue(reset_arg);
    if (reset < 0) {
        return NULL;
    }
    PyObject *result = build_stats(self);
    if (result != NULL && reset) {
        reset_stats(self);
    }
    return result;
}

static PyObject *
loop_reset_stats(LoopObject *self, PyObject *unused)
{
    reset_stats(self);
    Py_RETURN_NONE;
}

/* ---- the blocking watchdog's C half ---- */

static uint64_t
heartbeat(LoopStats *stats)
{
    return atomic_load_explicit(&stats->callbacks, memory_order_relaxed)
         + atomic_load_explicit(&stats->io_events, memory_order_relaxed);
}

/* _watch_state() -> (running, idle, heartbeat) */
static PyObject *
loop_watch_state(LoopObject *self, PyObject *unused)
{
    LoopStats *stats = &self->stats;
    return Py_BuildValue("(iiK)", atomic_load_explicit(&stats->running, memory_order_relaxed),
                         atomic_load_explicit(&stats->idle, memory_order_relaxed),
                         (unsigned long long)heartbeat(stats));
}

/* _watch_token(new: bool) -> int: the current token; new=True changes it,
 * which makes any _watch_wait given the old one return ("stop",). */
static PyObject *
loop_watch_token(LoopObject *self, PyObject *change)
{
    int truth = PyObject_IsTrue(change);
    if (truth < 0) {
        return NULL;
    }
    uint64_t token = atomic_load_explicit(&self->stats.watch_token, memory_order_relaxed);
    if (truth) {
        atomic_store_explicit(&self->stats.watch_token, ++token, memory_order_relaxed);
    }
    return PyLong_FromUnsignedLongLong(token);
}

static double
monotonic_seconds(void)
{
    return (double)stats_clock_ns() / 1e9;
}

/* ---- the watchdog's handle on a loop: WatchPulse ----
 * The watchdog thread must not keep its loop alive (an abandoned, unclosed
 * loop sits in a reference cycle: any strong reference held by the thread
 * makes every GC pass find it reachable).  So the thread holds a WatchPulse:
 * a small object with a weak reference to the loop and a pointer to its
 * LoopStats, which it reads without the GIL.  The weak reference's callback
 * is the pulse itself: when the loop goes (before its memory is freed) the
 * pointer is cleared, after waiting for a read in progress to finish, and
 * every later wait returns ("stop",).  The pulse may outlive the loop. */
typedef struct {
    PyObject_HEAD
    _Atomic(LoopStats *) stats;   /* NULL once the loop is gone */
    _Atomic int readers;          /* watchdog samples in progress (GIL released) */
    PyObject *loop_ref;           /* weakref to the loop, callback: this pulse */
    pid_t pid;                    /* in a fork child no reader can be in progress */
} WatchPulse;

static PyTypeObject WatchPulseType;

/* The loop's stats for one sample, or NULL (loop gone): pair with pulse_leave. */
static LoopStats *
pulse_enter(WatchPulse *pulse)
{
    atomic_fetch_add(&pulse->readers, 1);
    LoopStats *stats = atomic_load(&pulse->stats);
    if (stats == NULL) {
        atomic_fetch_sub(&pulse->readers, 1);
    }
    return stats;
}

static void
pulse_leave(WatchPulse *pulse)
{
    atomic_fetch_sub(&pulse->readers, 1);
}

/* Called with the GIL (weakref callback, or the pulse going away). */
static void
pulse_detach(WatchPulse *pulse)
{
    if (atomic_exchange(&pulse->stats, NULL) == NULL) {
        return;
    }
    if (pulse->pid != getpid()) {
        return;  /* fork child: the watchdog thread does not exist here */
    }
    while (atomic_load(&pulse->readers) != 0) {
        sched_yield();  /* a sample is a few atomic loads: at most microseconds */
    }
}

static PyObject *
pulse_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    pulse_detach((WatchPulse *)self);
    Py_RETURN_NONE;
}

static int
pulse_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(((WatchPulse *)self)->loop_ref);
    return 0;
}

static int
pulse_clear(PyObject *self)
{
    Py_CLEAR(((WatchPulse *)self)->loop_ref);
    return 0;
}

static void
pulse_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    pulse_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyObject *
pulse_new_for(LoopObject *loop)
{
    WatchPulse *pulse = PyObject_GC_New(WatchPulse, &WatchPulseType);
    if (pulse == NULL) {
        return NULL;
    }
    atomic_init(&pulse->stats, &loop->stats);
    atomic_init(&pulse->readers, 0);
    pulse->pid = getpid();
    pulse->loop_ref = PyWeakref_NewRef((PyObject *)loop, (PyObject *)pulse);
    if (pulse->loop_ref == NULL) {
        atomic_store(&pulse->stats, NULL);
        Py_DECREF(pulse);
        return NULL;
    }
    PyObject_GC_Track(pulse);
    return (PyObject *)pulse;
}

/* loop._watch_pulse() -> a new WatchPulse on this loop */
static PyObject *
loop_watch_pulse(LoopObject *self, PyObject *unused)
{
    return pulse_new_for(self);
}

/* pulse.wait(token, period, timeout, threshold, beat, since, until)
 * Polls the loop's heartbeat every `period` seconds with the GIL released.
 *   beat < 0 (looking): returns ("stall", beat, start) once the loop has been
 *     busy on one unit of work for `threshold` seconds; start is the first
 *     sample that saw that heartbeat (at most one period after the real
 *     start, so a stall is never reported before the threshold).
 *   beat >= 0 (a stall started at `since` is being followed): returns
 *     ("end", end) when that unit is over (end: the sample that saw it, at
 *     most one period late, like start), or ("still", now) once now >= until.
 * Either way ("timeout",) after `timeout` seconds (not while a possible
 * stall is being timed) and ("stop",) when the token changed or the loop
 * is gone (the pulse never keeps it alive). */
static PyObject *
pulse_wait(WatchPulse *pulse, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long token;
    double period, timeout, threshold, since, until;
    long long beat_arg;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "_watch_wait(token, period, timeout, threshold, beat, since, until)");
        return NULL;
    }
    token = PyLong_AsUnsignedLongLong(args[0]);
    period = PyFloat_AsDouble(args[1]);
    timeout = PyFloat_AsDouble(args[2]);
    threshold = PyFloat_AsDouble(args[3]);
    beat_arg = PyLong_AsLongLong(args[4]);
    since = PyFloat_AsDouble(args[5]);
    until = PyFloat_AsDouble(args[6]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!(period > 0.0 && period <= 1.0) || !(threshold > 0.0) || !(timeout >= 0.0 && timeout <= 3600.0)) {
        PyErr_SetString(PyExc_ValueError, "need 0 < period <= 1, threshold > 0, 0 <= timeout <= 3600");
        return NULL;
    }
    struct timespec nap = {(time_t)period, (long)(fmod(period, 1.0) * 1e9)};
    enum { STOP, TIMEOUT, STALL, END, STILL } outcome = TIMEOUT;
    double result_time = 0.0;
    uint64_t seen_beat = 0;
    int seen = 0;
    double seen_at = 0.0;
    Py_BEGIN_ALLOW_THREADS
    double deadline = monotonic_seconds() + timeout;
    for (;;) {
        double now = monotonic_seconds();
        LoopStats *stats = pulse_enter(pulse);
        if (stats == NULL) {
            outcome = STOP;  /* the loop is gone */
            break;
        }
        int busy = atomic_load_explicit(&stats->running, memory_order_relaxed)
                   && !atomic_load_explicit(&stats->idle, memory_order_relaxed);
        uint64_t beat = heartbeat(stats);
        uint64_t current_token = atomic_load_explicit(&stats->watch_token, memory_order_relaxed);
        pulse_leave(pulse);
        if (beat_arg >= 0 && (!busy || beat != (uint64_t)beat_arg)) {
            outcome = END;  /* before the token: a stopping watchdog still reports the end */
            result_time = now;
            break;
        }
        if (current_token != token) {
            outcome = STOP;
            break;
        }
        if (beat_arg >= 0) {
            if (now >= until) {
                outcome = STILL;
                result_time = now;
                break;
            }
        }
        else if (!busy) {
            seen = 0;
        }
        else if (!seen || beat != seen_beat) {
            seen = 1;
            seen_beat = beat;
            seen_at = now;  /* the unit began before: never reported early */
        }
        else if (now - seen_at >= threshold) {
            outcome = STALL;
            result_time = seen_at;
            break;
        }
        if (now >= deadline && !seen) {
            break;  /* (never while a candidate is being timed: its start would be lost) */
        }
        /* Wake exactly at the moment to report rather than up to a period
         * (plus each nap's timer slack) after it. */
        double due = beat_arg >= 0 ? until : (seen ? seen_at + threshold : INFINITY);
        struct timespec this_nap = nap;
        if (due - now < period) {
            double left = due - now > 0.0 ? due - now : 0.0;
            this_nap.tv_sec = (time_t)left;
            this_nap.tv_nsec = (long)(fmod(left, 1.0) * 1e9);
        }
        nanosleep(&this_nap, NULL);
    }
    Py_END_ALLOW_THREADS
    /* With the GIL held the loop cannot be freed under us: stats is either
     * still the live loop's or NULL. */
    LoopStats *stats = atomic_load(&pulse->stats);
    switch (outcome) {
    case STOP:
        return Py_BuildValue("(s)", "stop");
    case TIMEOUT:
        return Py_BuildValue("(s)", "timeout");
    case STALL:
        if (stats != NULL) {
            stats->blocking_events++;
        }
        return Py_BuildValue("(sKd)", "stall", (unsigned long long)seen_beat, result_time);
    case END:
        if (stats != NULL && result_time > since) {
            stats->blocked_ns += (int64_t)((result_time - since) * 1e9);
        }
        return Py_BuildValue("(sd)", "end", result_time);
    default:
        return Py_BuildValue("(sd)", "still", result_time);
    }
}

/* _read_source(path) -> bytes or None: a source file read WITHOUT releasing
 * the GIL, for the watchdog's report.  Once the watchdog holds the GIL over a
 * CPU-bound loop thread, any call that releases it (os.stat, open, read:
 * what linecache does) hands the GIL back to that thread for a whole switch
 * interval (5 ms, more on a busy machine) before the report is out.  Local
 * source files are read in microseconds; None for anything but a regular
 * file under 4 MiB, or on any error. */
static PyObject *
read_source_holding_gil(PyObject *unused, PyObject *path)
{
    PyObject *encoded = NULL;
    if (!PyUnicode_FSConverter(path, &encoded)) {
        return NULL;
    }
    PyObject *result = NULL;
    int fd = open(PyBytes_AS_STRING(encoded), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    Py_DECREF(encoded);
    struct stat info;
    if (fd >= 0 && fstat(fd, &info) == 0 && S_ISREG(info.st_mode) && info.st_size <= (4 << 20)) {
        result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)info.st_size);
        Py_ssize_t got = 0;
        while (result != NULL && got < (Py_ssize_t)info.st_size) {
            ssize_t n = read(fd, PyBytes_AS_STRING(result) + got, (size_t)(info.st_size - got));
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                break;
            }
            got += n;
        }
        if (result != NULL && got < (Py_ssize_t)info.st_size) {
            _PyBytes_Resize(&result, got);  /* the file shrank meanwhile: what was read */
        }
    }
    if (fd >= 0) {
        close(fd);
    }
    if (result == NULL && PyErr_Occurred()) {
        return NULL;  /* MemoryError */
    }
    return result != NULL ? result : Py_NewRef(Py_None);
}

/* loop._watch_wait(...): pulse.wait on a pulse of its own (the caller's
 * reference keeps the loop alive meanwhile). */
static PyObject *
loop_watch_wait(LoopObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *pulse = pulse_new_for(self);
    if (pulse == NULL) {
        return NULL;
    }
    PyObject *result = pulse_wait((WatchPulse *)pulse, args, nargs);
    Py_DECREF(pulse);
    return result;
}

static PyObject *
pulse_alive(WatchPulse *pulse, PyObject *unused)
{
    return PyBool_FromLong(atomic_load(&pulse->stats) != NULL);
}

static PyMethodDef pulse_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))pulse_wait, METH_FASTCALL,
     "Wait, without the GIL, for a callback holding the loop (see stats.c)."},
    {"alive", (PyCFunction)pulse_alive, METH_NOARGS, "False once the loop is gone."},
    {NULL},
};

static PyTypeObject WatchPulseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyasync_c._loop.WatchPulse",
    .tp_basicsize = sizeof(WatchPulse),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The blocking watchdog's weak handle on a loop's heartbeat.",
    .tp_dealloc = pulse_dealloc,
    .tp_traverse = pulse_traverse,
    .tp_clear = pulse_clear,
    .tp_call = pulse_call,
    .tp_methods = pulse_methods,
};

static PyMethodDef stats_loop_methods[] = {
    {"stats", (PyCFunction)(void (*)(void))loop_stats, METH_FASTCALL | METH_KEYWORDS,
     "stats(reset=False)\n--\n\nA snapshot of the loop's counters as a dict (see README, "
     "\"Seeing inside the loop\"); reset=True zeroes them after the snapshot."},
    {"reset_stats", (PyCFunction)loop_reset_stats, METH_NOARGS, "Zero the loop's counters."},
    {"_watch_state", (PyCFunction)loop_watch_state, METH_NOARGS, "(running, idle, heartbeat) of the loop."},
    {"_watch_token", (PyCFunction)loop_watch_token, METH_O, "The blocking watchdog's token; True: a new one."},
    {"_watch_pulse", (PyCFunction)loop_watch_pulse, METH_NOARGS,
     "A WatchPulse on this loop: the watchdog's handle that does not keep it alive."},
    {"_watch_wait", (PyCFunction)(void (*)(void))loop_watch_wait, METH_FASTCALL,
     "Wait, without the GIL, for a callback holding the loop (the blocking watchdog)."},
    {"_set_run_hook", (PyCFunction)set_run_hook, METH_O | METH_CLASS, "hook(loop) called at each _run entry."},
    {"_read_source", (PyCFunction)read_source_holding_gil, METH_O | METH_STATIC,
     "_read_source(path) -> bytes or None: a source file read without releasing the GIL (the watchdog's report)."},
    {"_histogram_quantile", (PyCFunction)(void (*)(void))histogram_quantile, METH_FASTCALL | METH_STATIC,
     "Upper bound (seconds) of the lag bucket holding quantile q of counts."},
    {NULL},
};

/* Adds stats_loop_methods to LoopCore (called once the type exists). */
int
stats_add_methods(PyTypeObject *type)
{
    PyObject *dict = type->tp_dict;
    if (PyType_Ready(&WatchPulseType) < 0) {
        return -1;
    }
    for (PyMethodDef *def = stats_loop_methods; def->ml_name != NULL; def++) {
        PyObject *descr;
        if (def->ml_flags & METH_CLASS) {
            descr = PyDescr_NewClassMethod(type, def);
        }
        else if (def->ml_flags & METH_STATIC) {
            PyObject *function = PyCFunction_NewEx(def, NULL, NULL);
            descr = function ? PyStaticMethod_New(function) : NULL;
            Py_XDECREF(function);
        }
        else {
            descr = PyDescr_NewMethod(type, def);
        }
        if (descr == NULL || PyDict_SetItemString(dict, def->ml_name, descr) < 0) {
            Py_XDECREF(descr);
            return -1;
        }
        Py_DECREF(descr);
    }
    PyType_Modified(type);
    return 0;
}
