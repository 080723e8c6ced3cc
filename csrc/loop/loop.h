/* Shared declarations of pyasync_c._loop: the objects, the module state and
 * the functions each file exports to the others.  See csrc/README.md for the
 * map of files and one loop iteration.
 *
 * Threading rule: every field below is only touched with the GIL held, except
 * while the loop thread has released the GIL to block in libuv's poll (see
 * loop_core.c: `polling` / `released_tstate`).  Other Python threads that call
 * call_soon_threadsafe hold the GIL, so the ready queue needs no lock.
 * libuv's own state is the loop thread's while it runs uv_run without the
 * GIL: other threads then queue their libuv changes (`defer_libuv`,
 * LibuvChange below) instead of making them.
 */
#ifndef PYASYNC_C_LOOP_H
#define PYASYNC_C_LOOP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <uv.h>

#ifdef Py_GIL_DISABLED
#error "pyasync_c relies on the GIL to guard the ready queue; free-threaded builds are not supported"
#endif

/* True when the keyword name `key` equals `expected`, an interned ASCII str:
 * identity first, then length and bytes. CPython's Future/Task pass keyword
 * names they built themselves (not interned: "context" on every callback they
 * schedule), and PyUnicode_CompareWithASCIIString walks those char by char. */
static inline int
keyword_is(PyObject *key, PyObject *expected)
{
    if (key == expected) {
        return 1;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(expected);
    return PyUnicode_Check(key) && PyUnicode_IS_ASCII(key) && PyUnicode_GET_LENGTH(key) == length
        && memcmp(PyUnicode_DATA(key), PyUnicode_DATA(expected), (size_t)length) == 0;
}

/* Python 3.11 lacks the single-object exception API; these cover both. */
static inline PyObject *
compat_fetch_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
#endif
}

static inline void
compat_restore_exception(PyObject *exc)  /* steals the reference */
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef(Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

typedef struct LoopObject LoopObject;
typedef struct HandleObject HandleObject;
struct TransportObject;

/* asyncio.streams objects behind the StreamReaderProtocol fast path
 * (streams_fast.c). */
enum {
    SF__stream_reader_wr, SF__stream_reader, SF_feed_data, SF__wakeup_waiter, SF__eof,
    SF__buffer, SF__waiter, SF__transport, SF__paused, SF__limit, SF_pause_reading,
    STREAMS_FAST_N
};
typedef struct {
    PyTypeObject *protocol_type;      /* asyncio.StreamReaderProtocol */
    PyTypeObject *reader_type;        /* asyncio.StreamReader */
    PyObject *data_received;          /* StreamReaderProtocol.data_received (function) */
    PyObject *stream_reader_property; /* StreamReaderProtocol._stream_reader */
    PyObject *feed_data;              /* StreamReader.feed_data (function) */
    PyObject *wakeup_waiter;          /* StreamReader._wakeup_waiter (function) */
    PyObject *names[STREAMS_FAST_N];  /* interned attribute names */
} StreamsFast;

/* ---- module state (module.c) ---- */
typedef struct {
    PyTypeObject *LoopCoreType;
    PyTypeObject *HandleType;       /* subclass of asyncio.Handle */
    PyTypeObject *TimerHandleType;  /* subclass of asyncio.TimerHandle */
    PyTypeObject *WatcherType;      /* one per fd watched by add_reader/add_writer */
    PyTypeObject *SockWaiterType;   /* a pending sock_* operation (sock_ops.c) */
    PyObject *FutureType;           /* _asyncio.Future */
    PyObject *TaskType;             /* _asyncio.Task */
    PyObject *base_create_task;     /* asyncio.BaseEventLoop.create_task (task factories, debug) */
    PyObject *kwnames_loop;         /* ("loop",) */
    PyObject *empty_tuple;          /* () */
    PyObject *kwnames_task;         /* ("loop", "name", "context") */
    PyObject *str_context;          /* "context" */
    PyObject *str_name;             /* "name" */
    PyObject *str_report_error;     /* "_report_callback_error" */
    PyObject *str_slow_callback;    /* "_warn_slow_callback" */
    PyObject *str_slow_duration;    /* "slow_callback_duration" */
    PyObject *str_handle_signal;    /* "_handle_signal" */
    PyObject *str_check_thread;     /* "_check_thread" */
    PyObject *str_check_callback;   /* "_check_callback" */
    PyObject *str_extract_stack;    /* "_debug_source_traceback" */
    /* transports (transport_base.c, stream_transport.c, datagram_transport.c) */
    PyTypeObject *SocketTransportType;     /* subclass of asyncio.Transport */
    PyTypeObject *ReadPipeTransportType;   /* subclass of asyncio.ReadTransport */
    PyTypeObject *WritePipeTransportType;  /* subclass of asyncio.WriteTransport */
    PyTypeObject *DatagramTransportType;   /* subclass of asyncio.DatagramTransport */
    PyObject *BufferedProtocolType;        /* asyncio.BufferedProtocol */
    PyObject *TransportSocketType;         /* asyncio.trsock.TransportSocket */
    PyObject *asyncio_logger;              /* logging.getLogger("asyncio") */
    PyObject *str_data_received, *str_buffer_updated, *str_get_buffer, *str_eof_received;
    PyObject *str_connection_made, *str_connection_lost, *str_pause_writing, *str_resume_writing;
    PyObject *str_datagram_received, *str_error_received, *str_close;
    PyObject *str_call_exception_handler, *str_attach, *str_detach, *str_call_connection_lost;
    PyObject *str_connection_made_cb, *str_set_result, *str_set_exception, *str_cancelled;
    PyObject *str_socket_class, *str_connection_closed, *str_sockname, *str_socket;
    StreamsFast streams;
    double clock_resolution;
} ModuleState;

extern PyModuleDef loop_module_def;

/* ---- handles (handles.c) ----
 * Our Handle and TimerHandle are C subclasses of asyncio.Handle and
 * asyncio.TimerHandle, so isinstance() holds and asyncio's Python __repr__,
 * comparisons and hashing work.  asyncio's __slots__ storage sits, unused but
 * for __weakref__, in `asyncio_slot_storage`; our getsets shadow the slot
 * names (_callback, _args, ...) so everything lives in the C fields.
 * module.c checks at import that asyncio's layout fits in that space. */
#define ASYNCIO_HANDLE_RESERVED_SLOTS 10
#define HANDLE_INLINE_ARGS 2

struct HandleObject {
    PyObject_HEAD
    PyObject *asyncio_slot_storage[ASYNCIO_HANDLE_RESERVED_SLOTS];
    PyObject *callback;          /* NULL once cancelled */
    /* The arguments: up to HANDLE_INLINE_ARGS in inline_args, more in the
     * tuple args (else NULL).  No tuple per call_soon: a burst of wake-ups
     * would be a burst of GC allocations, each counting toward a collection.
     * All NULL once cancelled. */
    PyObject *args;
    PyObject *inline_args[HANDLE_INLINE_ARGS];
    Py_ssize_t nargs;
    PyObject *context;           /* contextvars.Context the callback runs in */
    LoopObject *loop;
    PyObject *source_traceback;  /* debug mode only */
    PyObject *repr;              /* debug mode: repr saved at cancel() */
    double when;                 /* TimerHandle: deadline on loop.time()'s clock */
    uint64_t sequence;           /* TimerHandle: tie-break so equal deadlines keep call order */
    int64_t ready_ns;            /* the loop's clock (stats.c) when last put on the ready queue */
    Py_ssize_t heap_index;       /* TimerHandle: position in the loop's heap, -1 when not scheduled */
    char cancelled;
    char is_timer;
};

HandleObject *handle_new(LoopObject *loop, PyTypeObject *type, PyObject *callback,
                         PyObject *const *args, Py_ssize_t nargs, PyObject *context);
/* Runs the callback in its context.  Exceptions go to the loop's exception
 * handler; returns -1 only for SystemExit/KeyboardInterrupt, which propagate. */
int handle_run(HandleObject *handle);
int handles_init_types(PyObject *module, ModuleState *state);
/* Frees the handle freelist down to its idle size (a loop closed). */
void handle_freelist_trim(void);

/* ---- ready queue (ready_queue.c): FIFO ring of owned HandleObject* ---- */
typedef struct {
    HandleObject **items;
    Py_ssize_t head;      /* index of the oldest item */
    Py_ssize_t count;
    Py_ssize_t capacity;  /* power of two */
    int64_t stamp;        /* the loop's last clock reading (stats.c), copied into each pushed handle */
} ReadyQueue;

int ready_push(ReadyQueue *queue, HandleObject *handle);  /* takes a new reference */
static inline HandleObject *
ready_pop(ReadyQueue *queue)  /* returns the owned reference; queue must be non-empty */
{
    HandleObject *handle = queue->items[queue->head];
    queue->head = (queue->head + 1) & (queue->capacity - 1);
    queue->count--;
    return handle;
}
void ready_clear(ReadyQueue *queue);
int ready_traverse(ReadyQueue *queue, visitproc visit, void *arg);

/* ---- timer heap (timer_heap.c): binary min-heap on (when, sequence) ---- */
typedef struct {
    HandleObject **items;  /* owned references */
    Py_ssize_t count;
    Py_ssize_t capacity;
} TimerHeap;

int timer_heap_push(TimerHeap *heap, HandleObject *timer);       /* takes a new reference */
HandleObject *timer_heap_pop(TimerHeap *heap);                   /* returns the owned reference */
void timer_heap_remove(TimerHeap *heap, HandleObject *timer);    /* drops the heap's reference */
void timer_heap_clear(TimerHeap *heap);
int timer_heap_traverse(TimerHeap *heap, visitproc visit, void *arg);

/* An idle watcher's poll kept for the next poll of its fd (io_watchers.c). */
struct ParkedPoll {
    uv_poll_t *poll;
    int fd;
    int events;                  /* what it is started with */
    int age;                     /* poll phases it has been parked across */
};

/* The closed/reused-fd guard's record of a started poll (io_watchers.c). */
typedef struct {
    uv_poll_t *poll;             /* NULL: empty slot (a deleted one holds a marker) */
    void (*on_bad_fd)(void *owner);
    void *owner;
    Py_ssize_t changed_slot;     /* index in LoopObject.changed_polls, -1 when not listed */
    dev_t dev;                   /* the file fd referred to when the poll was first noted */
    ino_t ino;
    int fd;
    int identity_known;          /* 0: fd was already closed then */
} PollRecord;

/* ---- always-on counters (stats.c) ----
 * Kept by the loop thread with the GIL held.  The few fields a watchdog
 * thread reads without the GIL (blocking detector) are atomics, written with
 * relaxed load+store (plain moves, no locked instruction: one writer).
 * Build with -DPYASYNC_C_STATS=0 to compile every hook out (to measure their cost). */
#ifndef PYASYNC_C_STATS
#define PYASYNC_C_STATS 1
#endif
#define STATS_LAG_BUCKETS 32     /* bucket 0: < 1024 ns; bucket b: [512 << b, 1024 << b) ns */
typedef struct {
    _Atomic uint64_t callbacks;  /* handles run; with io_events, the watchdog's heartbeat */
    _Atomic uint64_t io_events;  /* fd readiness events dispatched (transports, watchers) */
    _Atomic int running;         /* inside _run/_run_once */
    _Atomic int idle;            /* blocked in poll with the GIL released */
    _Atomic uint64_t watch_token;  /* changed to stop the blocking watchdog (stats.c) */
    uint64_t callbacks_base, io_events_base;  /* values at the last reset */
    uint64_t iterations;
    uint64_t timers_scheduled, timers_fired, timers_cancelled;
    uint64_t bytes_received, bytes_sent;
    uint64_t blocking_events;    /* callbacks the watchdog caught */
    int64_t blocked_ns;          /* their total duration */
    int64_t poll_ns;             /* blocked in poll (GIL released) */
    int64_t busy_ns;             /* running and not blocked in poll */
    int64_t longest_ns;          /* longest clock window holding one unit of work or more */
    int64_t now_ns;              /* last clock reading: the loop's cheap "now" */
    int64_t wake_ns;             /* end of the last blocking poll (or run start) */
    int64_t window_start_ns;     /* start of the current clock window (see stats.c) */
    int64_t reset_ns;            /* clock at the last reset */
    int32_t window_left;         /* units of work before the next clock reading */
    int32_t window_size;         /* units in the current window when it started */
    int64_t lag_max_ns, timer_max_ns;
    uint64_t lag_hist[STATS_LAG_BUCKETS];    /* callbacks: ready -> ran */
    uint64_t timer_hist[STATS_LAG_BUCKETS];  /* timers: deadline -> ran */
} LoopStats;

/* A change of libuv state (a poll to init, start, stop or close) asked for by
 * a thread that must not touch libuv now: queued on the loop, applied by the
 * loop thread as soon as it holds the GIL again (loop_apply_libuv_changes,
 * io_watchers.c).  Embedded in its owner (a Watcher, a TransportPoll), so
 * queueing never allocates; `apply` brings libuv to the owner's state at
 * that time and drops whatever keeps the owner alive while it is queued. */
typedef struct LibuvChange {
    struct LibuvChange *next;
    void (*apply)(struct LibuvChange *change);
    char queued;
} LibuvChange;

/* ---- the loop (loop_core.c) ---- */
struct LoopObject {
    PyObject_HEAD
    ModuleState *state;
    uv_loop_t uv;
    uv_prepare_t prepare_handle;  /* releases the GIL just before a blocking poll */
    uv_timer_t wake_timer;        /* armed to the earliest deadline of `timers` */
    uv_async_t async_handle;      /* call_soon_threadsafe wakes a blocked poll */
    uv_poll_t signal_poll;        /* read end of the signal wakeup socket */
    int signal_fds[2];            /* [0] polled by us, [1] given to signal.set_wakeup_fd */
    ReadyQueue ready;
    TimerHeap timers;
    uint64_t timer_sequence;
    PyThreadState *released_tstate;  /* non-NULL while the GIL is released in poll */
    PyObject *pending_error;     /* raised inside a libuv callback, re-raised after uv_run */
    PyObject *thread_id;         /* None, or the running thread's ident */
    PyObject *task_factory;      /* NULL means None */
    PyObject *loop_kwargs;       /* {"loop": self}, the keywords of Future()/Task() calls made
                                  * here: types without vectorcall turn keyword names into a
                                  * fresh dict per call (NULL once cleared by the GC) */
    PyObject *watchers;          /* dict fd -> WatcherObject (add_reader/add_writer) */
    PyObject *transports;        /* dict fd -> int address of the TransportObject using fd
                                  * (borrowed: a transport removes itself when it lets go of fd) */
    long active_io;              /* user I/O sources: while 0, a busy loop may skip the poll */
    struct TransportObject *polled_transports;  /* transports whose poll is started: owned
                                  * references, visited by tp_traverse (transport_base.c) */
    char *read_buffer;           /* the transports' reusable read buffer; NULL while lent out
                                  * or not allocated yet (transport_base.c) */
    PyObject *spare_bytes;       /* a received bytes object nobody kept, reused for the next
                                  * read that fits (stream_transport.c); NULL if none */
    Py_ssize_t spare_capacity;   /* the size spare_bytes was allocated with */
    PyObject *tls_read_buffer;   /* bytearray our socket transports read TLS ciphertext into
                                  * (tls_transport.c: get_buffer); NULL until the first */
    PollRecord *poll_records;    /* hash table poll -> record: each poll noted and not yet
                                  * forgotten (io_watchers.c); freed once empty after close */
    Py_ssize_t poll_records_capacity;  /* power of two, or 0 */
    Py_ssize_t poll_records_count;     /* records in use */
    Py_ssize_t poll_records_used;      /* records in use + deleted slots */
    uv_poll_t **changed_polls;   /* polls started since the last uv_run: their fds are checked
                                  * before the next one (io_watchers.c); each at most once */
    Py_ssize_t changed_polls_count;
    Py_ssize_t changed_polls_capacity;
    Py_ssize_t closing_polls;    /* watcher polls uv_close()d whose close callback has not run,
                                  * and parked ones (below) */
    struct ParkedPoll *parked_polls;  /* started watcher polls whose watcher went idle,
                                  * kept for the next poll of their fd (a transport after
                                  * sock_connect, the next sock_recv) until the next poll
                                  * phase but one, or a blocking one (io_watchers.c) */
    int parked_count;
    int parked_capacity;
    int *parked_slot_by_fd;      /* fd -> index in parked_polls + 1; 0: none */
    int parked_slot_by_fd_size;
    uv_poll_t **spare_polls;     /* fd -> a stopped poll made for that fd number, kept
                                  * for the next transport on it (spare_polls.c); owned */
    int spare_polls_size;
    int spare_polls_count;
    LoopStats stats;             /* always-on counters (stats.c) */
    long pid;                    /* process whose kernel state (epoll, eventfd, signal socket) the
                                  * loop uses: the creator's, or the child's after loop_after_fork */
    struct DnsChannel *dns;      /* results of this loop's lookups (dns.c); NULL before the first */
    LibuvChange *libuv_changes;  /* FIFO of changes other threads queued while defer_libuv */
    LibuvChange *libuv_changes_tail;
    LoopObject *live_prev;       /* every loop with libuv state, for the fork hook (loop_core.c) */
    LoopObject *live_next;
    char uv_ready;               /* uv loop and our handles are initialised */
    char closed;
    char stopping;
    char debug;
    char may_block;              /* this uv_run may block: prepare releases the GIL */
    char polling;                /* the GIL is released in poll: threadsafe callers must wake us */
    char defer_libuv;            /* the loop thread runs libuv without the GIL (set with
                                  * `polling`), or is applying the changes queued meanwhile:
                                  * libuv changes are queued, not made (loop_may_touch_libuv) */
    char defer_io;               /* callbacks were ready before this poll: transports queue
                                  * their I/O behind them (transport_base.c) */
    char io_first;               /* `_io_first` (measurement switch, off by default): I/O runs
                                  * at once, before the callbacks that were ready (uvloop's
                                  * order), unless in debug mode */
};

/* ---- stats hooks (stats.c) ----
 * Clock readings: around each blocking poll, at the timer check, and every
 * `window_size` units of work (adaptive, see stats.c), never per callback. */
int64_t stats_clock_ns(void);                  /* CLOCK_MONOTONIC, ns */
void stats_tick(LoopObject *loop, int64_t now);  /* closes the clock window at `now` */
void stats_poll_begin(LoopObject *loop);       /* the GIL is about to be released in poll */
void stats_poll_end_slow(LoopObject *loop);
void stats_run_begin(LoopObject *loop);        /* _run / _run_once entry and exit */
void stats_run_end(LoopObject *loop);
void stats_record_lag(LoopStats *stats, HandleObject *handle, int64_t lag);
int stats_call_run_hook(LoopObject *loop);     /* pyasync_c._observe's hook at _run entry */
int stats_add_methods(PyTypeObject *type);     /* stats(), reset_stats(), watchdog helpers on LoopCore */

static inline void
stats_relaxed_inc(_Atomic uint64_t *counter)
{
    atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static inline void
stats_poll_end(LoopObject *loop)
{
#if PYASYNC_C_STATS
    stats_poll_end_slow(loop);
#endif
}

/* One unit of work (a transport's poll event). */
static inline void
stats_io_event(LoopObject *loop)
{
#if PYASYNC_C_STATS
    stats_relaxed_inc(&loop->stats.io_events);
    if (loop->stats.window_left <= 0) {
        stats_tick(loop, stats_clock_ns());  /* this unit starts the next window */
    }
    loop->stats.window_left--;
#endif
}

/* Before running a handle from the ready queue: counts it and records its
 * lag (ready -> now) with the loop's last clock reading. */
static inline void
stats_before_callback(LoopObject *loop, HandleObject *handle)
{
#if PYASYNC_C_STATS
    LoopStats *stats = &loop->stats;
    stats_relaxed_inc(&stats->callbacks);
    if (stats->window_left <= 0) {
        stats_tick(loop, stats_clock_ns());  /* this callback starts the next window */
    }
    stats->window_left--;
    int64_t ready = handle->ready_ns;
    if (!handle->is_timer && ready < stats->wake_ns) {
        ready = stats->wake_ns;  /* queued by another thread while we slept: ready at wake-up */
    }
    int64_t lag = stats->now_ns - ready;
    if (lag < 1024 && !handle->is_timer) {
        stats->lag_hist[0]++;  /* the common case: same clock window */
    }
    else {
        stats_record_lag(stats, handle, lag);
    }
#endif
}

/* A timer's deadline (loop.time() seconds) on the stats clock; clamped so that
 * call_at(-inf) or call_at(-1e300) convert without overflow. */
static inline int64_t
stats_deadline_ns(double when)
{
    double ns = when * 1e9;
    return ns > -4e18 ? (int64_t)ns : (int64_t)-4e18;
}

static inline void
stats_bytes(LoopObject *loop, Py_ssize_t received, Py_ssize_t sent)
{
#if PYASYNC_C_STATS
    loop->stats.bytes_received += (uint64_t)received;
    loop->stats.bytes_sent += (uint64_t)sent;
#endif
}


void loop_apply_libuv_changes(LoopObject *loop);

/* Called by every libuv callback that needs the GIL, and after uv_run: the
 * GIL back, then the libuv changes other threads queued meanwhile, before
 * anything else looks at the polls. */
static inline void
loop_take_gil(LoopObject *loop)
{
    if (loop->released_tstate != NULL) {
        PyThreadState *tstate = loop->released_tstate;
        loop->released_tstate = NULL;
        PyEval_RestoreThread(tstate);
        if (loop->libuv_changes != NULL) {
            loop_apply_libuv_changes(loop);
        }
        loop->defer_libuv = 0;
        loop->polling = 0;
        stats_poll_end(loop);
    }
}

/* May the calling thread (holding the GIL) call into this loop's libuv now
 * (uv_poll_*, uv_close, uv_walk...)?  Not while the loop thread runs uv_run
 * without the GIL: libuv is not thread-safe.  Every other time is safe: the
 * loop is not running, or the caller is the loop thread, or the loop thread
 * is stopped in Python code (a libuv callback's, at most: the change is then
 * one that callback could have made itself).  When not, queue the change
 * (loop_defer_libuv_change). */
static inline int
loop_may_touch_libuv(LoopObject *loop)
{
    return !loop->defer_libuv;
}

/* Queues `change` (once: a queued change is applied at its first position)
 * and wakes the loop thread.  Returns 1 if it was newly queued (the caller
 * then keeps its owner alive until `apply` runs), 0 if already queued. */
int loop_defer_libuv_change(LoopObject *loop, LibuvChange *change);

/* Stores the current Python exception to be raised when uv_run returns, and
 * stops libuv.  Must hold the GIL. */
void loop_defer_error(LoopObject *loop);
int loop_schedule_handle(LoopObject *loop, HandleObject *handle);  /* ready queue + wake */
PyObject *loop_new_future(LoopObject *loop);  /* _asyncio.Future(loop=loop) */
double loop_monotonic(void);
int loop_core_init_type(PyObject *module, ModuleState *state);
/* In a forked child (pid != loop->pid): give the loop its own epoll, eventfd
 * and signal socket before anything touches the ones shared with the parent
 * (uv_loop_fork), and orphan its lookups.  0 in the creating process; -1
 * with an exception if part of it failed (the loop is still usable). */
int loop_after_fork(LoopObject *loop);

/* ---- fd watchers (io_watchers.c) ---- */
int watchers_init_type(PyObject *module, ModuleState *state);
PyObject *loop_add_watcher(LoopObject *loop, PyObject *const *args, Py_ssize_t nargs, int events);
PyObject *loop_remove_watcher(LoopObject *loop, PyObject *fileobj, int events);
void loop_close_watchers(LoopObject *loop);
/* asyncio's file object rule: int or fileno(); ValueError otherwise. */
int loop_fileobj_to_fd(PyObject *fileobj);
/* The guard of polls of watchers and transports (io_watchers.c).  libuv
 * registers a started poll's fd with epoll only in the next uv_run and
 * abort()s if epoll_ctl fails there (fd closed, or its number reused by a
 * regular file meanwhile), so:
 *   loop_poll_init: uv_poll_init; if a watcher whose file is gone (fd number
 *     reused) still holds fd in libuv, that watcher goes quiet first.
 *   loop_note_poll_change: after every successful uv_poll_start; the first
 *     time for a poll, records which file fd is (-1: MemoryError).
 *   loop_forget_poll: before uv_close()ing a noted poll.
 *   loop_check_changed_polls: before uv_run; a poll started since the last
 *     one whose fd is closed or now another file goes to on_bad_fd(owner),
 *     which must stop it. */
int loop_poll_init(LoopObject *loop, uv_poll_t *poll, int fd);
/*   loop_poll_take_parked: where libuv may be touched, the poll a watcher of
 *     fd left started when it went idle lately, if the fd is
 *     still the same file (else that poll is closed): NULL if none.  The
 *     poll is started with *events, its memory is sizeof(TransportPoll)
 *     malloc'ed bytes (the poll first) that its close callback must free(),
 *     and its record keeps the identity: the taker must note it with its own
 *     on_bad_fd/owner (loop_note_poll_change), even with unchanged events. */
uv_poll_t *loop_poll_take_parked(LoopObject *loop, int fd, int *events);
/*   loop_release_parked_polls: closes them all (before a blocking uv_run:
 *     a parked poll is reported to nobody, and could keep waking it). */
void loop_release_parked_polls(LoopObject *loop);
/*   loop_release_parked_fd: closes the one of fd, if any: before starting
 *     another poll of fd (libuv refuses two polls of an fd: EEXIST). */
void loop_release_parked_fd(LoopObject *loop, int fd);
int loop_note_poll_change(LoopObject *loop, uv_poll_t *poll, int fd, void (*on_bad_fd)(void *), void *owner);
/*   loop_note_poll_file: the same, with the file fd is already fstat()ed
 *     (NULL: fstat it). */
int loop_note_poll_file(LoopObject *loop, uv_poll_t *poll, int fd, const struct stat *file,
                        void (*on_bad_fd)(void *), void *owner);
void loop_forget_poll(LoopObject *loop, uv_poll_t *poll);
void loop_check_changed_polls(LoopObject *loop);
/* In a fork() child, before touching the libuv handles of a loop its parent
 * created: loop_after_fork() if the at-fork hook has not run it, so stopping
 * polls does not remove the parent's registrations.  -1 if the loop still
 * shares the parent's epoll (then leave libuv alone); 0 otherwise. */
int loop_own_epoll_after_fork(LoopObject *loop);
/* ---- spare polls (spare_polls.c): stopped transport polls kept by fd number ----
 *   loop_keep_spare_poll: a transport poll nobody uses any more, of fd,
 *     initialised and not closing, where libuv may be touched: stops it
 *     (EPOLL_CTL_DEL, before the fd may close) and keeps it; 1 if kept, 0 if
 *     the caller must close it as usual.  Its memory is sizeof(TransportPoll)
 *     malloc'ed bytes (the poll first), freed by free() after uv_close.
 *   loop_take_spare_poll: the spare of fd, for a new transport on a socket
 *     that is non-blocking (the caller knows): NULL if none, or if fd is not
 *     a socket now or libuv watches it already.  *file is fd's fstat (for
 *     loop_note_poll_file).  Stopped: the taker starts it (uv_poll_start).
 *   loop_release_spare_polls: closes them all (loop close). */
int loop_keep_spare_poll(LoopObject *loop, uv_poll_t *poll, int fd);
static inline int
loop_has_spare_poll(LoopObject *loop, int fd)
{
    return loop->spare_polls_count > 0 && fd >= 0 && fd < loop->spare_polls_size && loop->spare_polls[fd] != NULL;
}
uv_poll_t *loop_take_spare_poll(LoopObject *loop, int fd, struct stat *file);
void loop_release_spare_polls(LoopObject *loop);
/*   loop_drop_spare_poll: closes the spare of fd, if any, unless libuv
 *     watches fd (its close would EPOLL_CTL_DEL that registration): before a
 *     new poll of fd is made, so that a poll and a spare never share an fd. */
void loop_drop_spare_poll(LoopObject *loop, int fd);

/* The reader (UV_READABLE) or writer Handle watching fd; borrowed, NULL if none. */
HandleObject *loop_watcher_handle(LoopObject *loop, int fd, int events);

/* ---- socket operations (sock_ops.c): C halves of loop.py's sock_* coroutines;
 * each returns a Future of the loop (done when the call did not block) ---- */
int sock_ops_init_type(PyObject *module, ModuleState *state);
PyObject *loop_sock_recv(LoopObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *loop_sock_recv_into(LoopObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *loop_sock_recvfrom(LoopObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *loop_sock_recvfrom_into(LoopObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *loop_sock_sendto(LoopObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *loop_sock_sendall(LoopObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *loop_sock_connect(LoopObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *loop_sock_accept(LoopObject *self, PyObject *sock);
PyObject *loop_sock_check(LoopObject *self, PyObject *sock);
PyObject *loop_accept_ready(PyObject *cls, PyObject *fd_object);
/* sock's gettimeout() is the socket module's own and says 0 (non-blocking). */
int socket_known_nonblocking(PyObject *sock);
/* LoopCore._peer_address(fd): getpeername() of an IP socket (C), None for another family. */
PyObject *loop_peer_address(PyObject *cls, PyObject *fd_object);
struct sockaddr_storage;
PyObject *ip_address_tuple(const struct sockaddr_storage *address);

/* ---- DNS (dns.c): getaddrinfo/getnameinfo on pyasync_c's resolver threads,
 * as module functions _loop.getaddrinfo(loop, ...) / _loop.getnameinfo(loop, ...)
 * returning Futures of the loop; loop.py's coroutines await them ---- */
int dns_init(PyObject *module, ModuleState *state);
/* Loop close: detach the loop's requests (a resolver thread frees one it
 * finishes later) and close the channel's uv_async.  Never waits. */
void dns_close(LoopObject *loop);
/* Forked child, after uv_loop_fork: a new uv_async; queued/running requests
 * become orphans (the child has no resolver thread yet). */
int dns_after_fork(LoopObject *loop);
/* Orphans whose Future still waits are queued again, the others dropped;
 * called when the child runs the loop. */
void dns_resume(LoopObject *loop);

/* ---- signals (signals.c) ---- */
int signals_open(LoopObject *loop);   /* socketpair + uv_poll on the read end */
void signals_close(LoopObject *loop);
/* Forked child: a fresh socketpair under the same fd numbers (the old one
 * is shared with the parent). */
int signals_after_fork(LoopObject *loop);

#endif
