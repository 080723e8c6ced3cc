/* add_reader / add_writer / remove_reader / remove_writer, and the guard,
 * shared with transports, against fds closed or reused under a started poll.
 *
 * One Watcher object per watched fd, kept in LoopObject.watchers (dict fd ->
 * Watcher); it owns the reader and writer Handles.  The libuv side is a
 * malloc'ed uv_poll_t: whenever the set of watched events changes the old
 * poll is closed (its close callback frees it) and a fresh one is created for
 * the file the fd refers to now, so libuv re-validates the fd (a bad, closed
 * or regular-file fd gives OSError, as asyncio's epoll selector raises).
 * Level-triggered, like the stdlib's selectors: a ready fd queues its handle
 * on every iteration, and an error condition (POLLERR, after which libuv stops
 * the poll) is reported to both sides and the poll re-armed.
 *
 * Other threads (misuse asyncio survives): while the loop thread runs uv_run
 * without the GIL, another thread's add_reader/remove_reader changes the
 * Watcher (its handles, loop.watchers) at once, as asyncio's selector map
 * does, and queues the libuv side (the poll restart) for the loop thread,
 * which applies it as soon as it takes the GIL (before it looks at any poll)
 * and polls again; the fd is checked at once (probe_pollable), so the call
 * raises what asyncio's epoll_ctl() would.  The queue (LibuvChange) is
 * shared with the transports' polls.
 */
#include "loop.h"
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

/* getpid() of this process, refreshed in a fork() child (pthread_atfork). */
static long current_pid;

static void
refresh_current_pid(void)
{
    current_pid = (long)getpid();
}

static int
loop_in_other_process(LoopObject *loop)
{
    if (loop->pid == current_pid) {
        return 0;
    }
    refresh_current_pid();  /* a child made without the atfork handlers running */
    return loop->pid != current_pid;
}

/* A fork() child shares the epoll instance of its parent's libuv loops:
 * uv_poll_init's probe and uv_poll_stop's EPOLL_CTL_DEL on an inherited loop
 * would remove the parent's registrations.  Before a child touches the polls
 * of a loop created by its parent, the loop gets kernel state of its own
 * (loop_after_fork, loop_core.c; normally already done by the at-fork hook).
 * 0, or -1 if that failed: then leave libuv alone. */
int
loop_own_epoll_after_fork(LoopObject *loop)
{
    if (!loop_in_other_process(loop)) {
        return 0;
    }
    if (loop_after_fork(loop) < 0) {
        PyErr_WriteUnraisable((PyObject *)loop);
    }
    return loop_in_other_process(loop) ? -1 : 0;
}

static void
free_watcher_poll(uv_handle_t *handle)
{
    LoopObject *loop = handle->loop->data;
    loop->closing_polls--;
    free(handle);
}

/* A watcher's poll is allocated as large as a transport's, so that once the
 * watcher is done with it (sock_connect completed) the transport made next on
 * the same fd can take it over (loop_poll_take_parked) instead of a fresh
 * uv_poll_init (epoll ADD + DEL + ioctl) and uv_poll_start (a failing DEL). */
_Static_assert(offsetof(TransportPoll, handle) == 0, "a transport's poll starts with its uv_poll_t");
#define POLL_BLOCK_SIZE sizeof(TransportPoll)

/* uv_close()s a watcher poll (freed by its close callback), its record gone. */
static void
close_watcher_poll(LoopObject *loop, uv_poll_t *poll)
{
    loop_forget_poll(loop, poll);
    poll->data = NULL;  /* on_poll: closed (maybe in this very poll phase) */
    if (loop_own_epoll_after_fork(loop) == 0) {
        loop->closing_polls++;
        uv_close((uv_handle_t *)poll, free_watcher_poll);  /* stops it too */
    }
}

/* ---- parked polls ----
 * A watcher that goes idle (sock_connect/sock_recv done, remove_reader) where
 * libuv may be touched leaves its started poll "parked" rather than closed:
 * nobody is called for it (data NULL), and the next poll wanted for the same
 * fd soon -- the transport create_connection makes after sock_connect (it
 * starts reading one iteration later, as asyncio's), the next sock_recv's
 * watcher, a watcher whose events change -- takes it if the fd is still the
 * same file (the record's identity, fstat), so libuv's probe and the
 * close/re-add are saved.  What is not taken is closed at the poll phase after
 * the next one, or before any blocking uv_run (a parked writable poll would
 * keep waking it), so a parked poll is only ever reported to nobody by a
 * non-blocking uv_run.  Parked polls stay under the guard: a record listed as
 * changed is checked before uv_run like any other (on_bad_fd releases it),
 * one registered earlier is dropped by the kernel with its file.  They count
 * in closing_polls meanwhile (a busy loop that skips the poll still gets to
 * close them). */

/* Removes slot from the table (the last entry moves into it). */
static void
unpark_slot(LoopObject *loop, int slot)
{
    struct ParkedPoll *parked = loop->parked_polls;
    loop->parked_slot_by_fd[parked[slot].fd] = 0;
    if (slot != --loop->parked_count) {
        parked[slot] = parked[loop->parked_count];
        loop->parked_slot_by_fd[parked[slot].fd] = slot + 1;
    }
    loop->closing_polls--;
}

static void
release_parked(LoopObject *loop, int slot)
{
    uv_poll_t *poll = loop->parked_polls[slot].poll;
    unpark_slot(loop, slot);
    close_watcher_poll(loop, poll);
}

static int
parked_slot(LoopObject *loop, int fd)
{
    return fd >= 0 && fd < loop->parked_slot_by_fd_size ? loop->parked_slot_by_fd[fd] - 1 : -1;
}

void
loop_release_parked_polls(LoopObject *loop)
{
    while (loop->parked_count > 0) {
        release_parked(loop, loop->parked_count - 1);
    }
}

void
loop_release_parked_fd(LoopObject *loop, int fd)
{
    int slot = parked_slot(loop, fd);
    if (slot >= 0) {
        release_parked(loop, slot);
    }
}

static void
free_parked_tables(LoopObject *loop)
{
    PyMem_Free(loop->parked_polls);
    PyMem_Free(loop->parked_slot_by_fd);
    loop->parked_polls = NULL;
    loop->parked_slot_by_fd = NULL;
    loop->parked_capacity = loop->parked_slot_by_fd_size = 0;
}

/* At a poll phase: closes those parked before the previous one, ages the rest. */
static void
age_parked(LoopObject *loop)
{
    for (int i = loop->parked_count - 1; i >= 0; i--) {
        if (loop->parked_polls[i].age++ > 0) {
            release_parked(loop, i);  /* moves the last one, already aged, into i */
        }
    }
}

/* The record's owner while parked: the poll.  Its on_bad_fd (a parked poll
 * started in this phase is checked like any other before uv_run). */
static void
parked_bad_fd(void *owner)
{
    uv_poll_t *poll = owner;
    LoopObject *loop = poll->loop->data;
    for (int slot = 0; slot < loop->parked_count; slot++) {
        if (loop->parked_polls[slot].poll == poll) {
            release_parked(loop, slot);
            return;
        }
    }
}

static PollRecord *record_find(LoopObject *loop, uv_poll_t *poll);
static int record_file_unchanged(PollRecord *record);

/* Room for one more parked poll, of fd; -1 if none (no memory). */
static int
parked_make_room(LoopObject *loop, int fd)
{
    if (loop->parked_count == loop->parked_capacity) {
        int capacity = loop->parked_capacity ? loop->parked_capacity * 2 : 16;
        struct ParkedPoll *items = PyMem_Realloc(loop->parked_polls, (size_t)capacity * sizeof *items);
        if (items == NULL) {
            return -1;
        }
        loop->parked_polls = items;
        loop->parked_capacity = capacity;
    }
    if (fd >= loop->parked_slot_by_fd_size) {
        int size = loop->parked_slot_by_fd_size ? loop->parked_slot_by_fd_size : 64;
        while (size <= fd) {
            size *= 2;
        }
        int *index = PyMem_Realloc(loop->parked_slot_by_fd, (size_t)size * sizeof *index);
        if (index == NULL) {
            return -1;
        }
        memset(index + loop->parked_slot_by_fd_size, 0,
               (size_t)(size - loop->parked_slot_by_fd_size) * sizeof *index);
        loop->parked_slot_by_fd = index;
        loop->parked_slot_by_fd_size = size;
    }
    return 0;
}

/* Parks a started, noted watcher poll; 0 if it cannot be (then close it). */
static int
park_poll(LoopObject *loop, uv_poll_t *poll, int fd, int events)
{
    PollRecord *record = record_find(loop, poll);
    /* only while running: a stopped loop would keep them until it runs again */
    if (loop->thread_id == Py_None || record == NULL || fd < 0 || !uv_is_active((uv_handle_t *)poll)
        || uv_is_closing((uv_handle_t *)poll) || loop_in_other_process(loop)
        || parked_make_room(loop, fd) < 0) {
        return 0;
    }
    loop_release_parked_fd(loop, fd);  /* (libuv allows one poll per fd: none) */
    record->on_bad_fd = parked_bad_fd;
    record->owner = poll;
    poll->data = NULL;
    struct ParkedPoll *parked = &loop->parked_polls[loop->parked_count];
    parked->poll = poll;
    parked->fd = fd;
    parked->events = events;
    parked->age = 0;
    loop->parked_slot_by_fd[fd] = ++loop->parked_count;
    loop->closing_polls++;
    return 1;
}

uv_poll_t *
loop_poll_take_parked(LoopObject *loop, int fd, int *events)
{
    int slot = parked_slot(loop, fd);
    if (slot < 0) {
        return NULL;
    }
    uv_poll_t *poll = loop->parked_polls[slot].poll;
    PollRecord *record = record_find(loop, poll);
    if (record == NULL || !record_file_unchanged(record)) {
        release_parked(loop, slot);  /* closed or reused meanwhile: a fresh poll checks it */
        return NULL;
    }
    /* libuv stops a poll on POLLERR (its callback found nobody): restart */
    *events = uv_is_active((uv_handle_t *)poll) ? loop->parked_polls[slot].events : 0;
    unpark_slot(loop, slot);
    return poll;
}

typedef struct {
    PyObject_HEAD
    LoopObject *loop;
    HandleObject *reader;
    HandleObject *writer;
    uv_poll_t *poll;  /* NULL when nothing is watched */
    int poll_events;  /* what poll was started with */
    LibuvChange restart;  /* a restart another thread queued (owns a reference while queued) */
    int fd;
} WatcherObject;

/* ---- libuv changes queued by other threads (see loop.h) ---- */

int
loop_defer_libuv_change(LoopObject *loop, LibuvChange *change)
{
    if (change->queued) {
        return 0;
    }
    change->queued = 1;
    change->next = NULL;
    if (loop->libuv_changes_tail != NULL) {
        loop->libuv_changes_tail->next = change;
    }
    else {
        loop->libuv_changes = change;
    }
    loop->libuv_changes_tail = change;
    if (loop->polling) {
        uv_async_send(&loop->async_handle);  /* thread-safe: uv_run returns, the change applies */
    }
    return 1;
}

/* On the loop thread, holding the GIL, not inside libuv: applies the queued
 * changes in order.  An owner's changes are applied in the order its
 * Python-level state changed, e.g. a poll closed before another poll of the
 * same fd is made.  Applying may run Python code (a reference dropped);
 * what is queued meanwhile (by this thread or another) joins the line. */
void
loop_apply_libuv_changes(LoopObject *loop)
{
    PyObject *exc = compat_fetch_exception();
    loop->defer_libuv = 1;
    while (loop->libuv_changes != NULL) {
        LibuvChange *change = loop->libuv_changes;
        loop->libuv_changes = change->next;
        if (loop->libuv_changes == NULL) {
            loop->libuv_changes_tail = NULL;
        }
        change->next = NULL;
        change->queued = 0;
        change->apply(change);
    }
    loop->defer_libuv = 0;
    if (exc != NULL) {
        compat_restore_exception(exc);
    }
}

/* Would epoll watch fd?  0, or -errno: EBADF for a closed fd, EPERM for a
 * regular file or a directory -- what asyncio's selector raises at
 * add_reader.  Asked of a throwaway epoll instance by a thread that must not
 * touch libuv (uv_poll_init, which checks the same on the loop's epoll, runs
 * later on the loop thread).  Made per call (a few microseconds, on the
 * cross-thread path only): a long-lived one could be closed behind our back
 * (os.closerange) and its number reused by another file, even another epoll
 * whose registrations our EPOLL_CTL_DEL would then remove. */
static int
probe_pollable(int fd)
{
#ifdef __linux__
    int probe_fd = epoll_create1(EPOLL_CLOEXEC);
    if (probe_fd >= 0) {
        struct epoll_event event;
        memset(&event, 0, sizeof event);
        event.events = EPOLLIN;
        int rc = epoll_ctl(probe_fd, EPOLL_CTL_ADD, fd, &event) < 0 ? -errno : 0;
        close(probe_fd);
        return rc;
    }
#endif
    return fcntl(fd, F_GETFD) < 0 ? -EBADF : 0;
}

/* asyncio's rule for a file object: an int, or int(obj.fileno()); anything
 * else is ValueError('Invalid file object: ...'). */
int
loop_fileobj_to_fd(PyObject *fileobj)
{
    int fd = PyObject_AsFileDescriptor(fileobj);
    if (fd >= 0) {
        return fd;
    }
    if (PyLong_Check(fileobj)) {
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %S", fileobj);
        }
        return -1;
    }
    if (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_ValueError)
        || PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "Invalid file object: %R", fileobj);
    }
    return -1;
}


/* Stops watching; with `park`, the poll may be left started for the next
 * poll of the fd in this callback phase (see "parked polls"). */
static void
watcher_release_poll(WatcherObject *self, int park)
{
    if (self->poll != NULL) {
        LoopObject *loop = self->loop;
        if (!park || !park_poll(loop, self->poll, self->fd, self->poll_events)) {
            close_watcher_poll(loop, self->poll);
        }
        self->poll = NULL;
        self->poll_events = 0;
        loop->active_io--;
    }
}

static void
watcher_stop_poll(WatcherObject *self)
{
    watcher_release_poll(self, 0);
}

static void on_poll(uv_poll_t *poll, int status, int events);

static void
watcher_bad_fd(void *owner)
{
    /* Closed (or its number reused) under us: like a selector, whose epoll
     * registration the kernel dropped with the file, never report it again.
     * The handles stay until removed or replaced. */
    watcher_stop_poll((WatcherObject *)owner);
}

static int
watcher_events(WatcherObject *self)
{
    return (self->reader ? UV_READABLE : 0) | (self->writer ? UV_WRITABLE : 0);
}

/* Starts watching for whichever of reader/writer is set, on the file the fd
 * refers to now (or stops when neither is).  Only where libuv may be touched. */
static int
watcher_restart_now(WatcherObject *self)
{
    int events = watcher_events(self);
    /* parked, then taken back below if the fd is still the file it polled
     * (else closed, and a fresh poll re-validates the fd) */
    watcher_release_poll(self, 1);
    if (events == 0) {
        return 0;
    }
    int started = 0;
    uv_poll_t *poll = loop_poll_take_parked(self->loop, self->fd, &started);
    if (poll == NULL) {
        poll = malloc(POLL_BLOCK_SIZE);
        if (poll == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        int err = loop_poll_init(self->loop, poll, self->fd);
        if (err < 0) {
            free(poll);
            errno = -err;  /* e.g. EPERM for a regular file, as asyncio's epoll_ctl() */
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    poll->data = self;
    if (events != started) {  /* each uv_poll_start costs an EPOLL_CTL_DEL and a new ADD */
        int err = uv_poll_start(poll, events, on_poll);
        if (err < 0) {
            close_watcher_poll(self->loop, poll);
            errno = -err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    self->poll = poll;
    self->poll_events = events;
    self->loop->active_io++;
    if (loop_note_poll_change(self->loop, poll, self->fd, watcher_bad_fd, self) < 0) {
        watcher_stop_poll(self);  /* unguarded, uv_run could abort on it */
        return -1;
    }
    return 0;
}

/* The loop thread applies a restart another thread queued. */
static void
watcher_apply_restart(LibuvChange *change)
{
    WatcherObject *self = (WatcherObject *)((char *)change - offsetof(WatcherObject, restart));
    if (self->loop->uv_ready && watcher_restart_now(self) < 0) {
        /* The fd was closed (or became another file) since the call checked
         * it: as with a selector, whose registration went with the file, the
         * watcher sees nothing; its handles stay until removed. */
        PyErr_Clear();
    }
    Py_DECREF(self);  /* the queue's reference */
}

/* watcher_restart_now where libuv may be touched; otherwise (another thread
 * while the loop thread polls) the restart is queued for the loop thread and
 * only the fd is checked now, so the caller gets asyncio's OSError. */
static int
watcher_restart(WatcherObject *self)
{
    if (loop_may_touch_libuv(self->loop)) {
        return watcher_restart_now(self);
    }
    if (loop_defer_libuv_change(self->loop, &self->restart)) {
        Py_INCREF(self);
    }
    if (watcher_events(self) == 0) {
        return 0;
    }
    int err = probe_pollable(self->fd);
    if (err < 0) {
        errno = -err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

/* Detaches reader or writer; drops the watcher from the loop when idle. */
static int
watcher_drop(WatcherObject *self, int events)
{
    HandleObject **slot = (events == UV_READABLE) ? &self->reader : &self->writer;
    HandleObject *handle = *slot;
    if (handle == NULL) {
        return 0;
    }
    *slot = NULL;
    PyObject *result = PyObject_CallMethod((PyObject *)handle, "cancel", NULL);
    Py_XDECREF(result);
    Py_DECREF(handle);
    if (result == NULL) {
        return -1;
    }
    if (self->reader == NULL && self->writer == NULL) {
        watcher_restart(self);  /* stops the poll (cannot fail) */
        PyObject *key = PyLong_FromLong(self->fd);
        if (key == NULL || PyDict_DelItem(self->loop->watchers, key) < 0) {
            Py_XDECREF(key);
            return -1;
        }
        Py_DECREF(key);
        return 1;
    }
    return watcher_restart(self) < 0 ? -1 : 1;
}

static int
queue_if_ready(WatcherObject *self, HandleObject *handle, int events)
{
    if (handle == NULL) {
        return 0;
    }
    if (handle->cancelled) {
        return watcher_drop(self, events) < 0 ? -1 : 0;
    }
    return ready_push(&self->loop->ready, handle);
}

static void
on_poll(uv_poll_t *poll, int status, int events)
{
    LoopObject *loop = poll->loop->data;
    loop_take_gil(loop);  /* first: the changes it applies may close this very poll */
    WatcherObject *self = poll->data;
    if (self == NULL) {
        return;
    }
    stats_io_event(loop);
    if (status < 0) {
        /* An error condition (POLLERR: a reset peer, an ICMP error on a UDP
         * socket...) wakes both sides, as select() does; the callbacks' own
         * syscalls report (and clear) the error. */
        events = UV_READABLE | UV_WRITABLE;
    }
    Py_INCREF(self);
    if (((events & UV_READABLE) && queue_if_ready(self, self->reader, UV_READABLE) < 0)
        || ((events & UV_WRITABLE) && queue_if_ready(self, self->writer, UV_WRITABLE) < 0)) {
        loop_defer_error(loop);
    }
    if (self->poll == poll && !uv_is_active((uv_handle_t *)poll)) {
        /* libuv stops a poll after POLLERR; a selector keeps reporting the fd
         * for as long as it is registered, so re-arm (checked like any start
         * before the next uv_run, in case a callback closes the fd). */
        int err = uv_poll_start(poll, watcher_events(self), on_poll);
        if (err < 0 || loop_note_poll_change(loop, poll, self->fd, watcher_bad_fd, self) < 0) {
            PyErr_Clear();
            watcher_stop_poll(self);
        }
    }
    Py_DECREF(self);
}

static WatcherObject *
watcher_for_fd(LoopObject *loop, int fd, int create)
{
    PyObject *key = PyLong_FromLong(fd);
    if (key == NULL) {
        return NULL;
    }
    WatcherObject *watcher = (WatcherObject *)PyDict_GetItemWithError(loop->watchers, key);
    if (watcher != NULL || PyErr_Occurred() || !create) {
        Py_DECREF(key);
        return (WatcherObject *)Py_XNewRef(watcher);
    }
    watcher = PyObject_GC_New(WatcherObject, loop->state->WatcherType);
    if (watcher == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    watcher->loop = (LoopObject *)Py_NewRef(loop);
    watcher->reader = watcher->writer = NULL;
    watcher->poll = NULL;
    watcher->poll_events = 0;
    watcher->restart = (LibuvChange){.next = NULL, .apply = watcher_apply_restart, .queued = 0};
    watcher->fd = fd;
    PyObject_GC_Track(watcher);
    if (PyDict_SetItem(loop->watchers, key, (PyObject *)watcher) < 0) {
        Py_CLEAR(watcher);
    }
    Py_DECREF(key);
    return watcher;
}

PyObject *
loop_add_watcher(LoopObject *loop, PyObject *const *args, Py_ssize_t nargs, int events)
{
    const char *name = events == UV_READABLE ? "add_reader" : "add_writer";
    if (nargs < 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at least 2 arguments (fd, callback)", name);
        return NULL;
    }
    int fd = loop_fileobj_to_fd(args[0]);
    if (fd < 0) {
        return NULL;
    }
    if (loop->closed || !loop->uv_ready) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return NULL;
    }
    if (loop_own_epoll_after_fork(loop) < 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot watch a file descriptor: this fork() child's copy of the loop "
                        "could not get an epoll instance of its own");
        return NULL;
    }
    HandleObject *handle = handle_new(loop, loop->state->HandleType, args[1], args + 2, nargs - 2, NULL);
    if (handle == NULL) {
        return NULL;
    }
    WatcherObject *watcher = watcher_for_fd(loop, fd, 1);
    if (watcher == NULL) {
        Py_DECREF(handle);
        return NULL;
    }
    HandleObject **slot = (events == UV_READABLE) ? &watcher->reader : &watcher->writer;
    HandleObject *previous = *slot;
    *slot = handle;
    if (watcher_restart(watcher) < 0) {
        PyObject *exc = compat_fetch_exception();
        *slot = previous;
        previous = NULL;
        Py_DECREF(handle);
        if (watcher->reader == NULL && watcher->writer == NULL) {
            PyObject *key = PyLong_FromLong(fd);
            if (key == NULL || PyDict_DelItem(loop->watchers, key) < 0) {
                PyErr_Clear();
            }
            Py_XDECREF(key);
        }
        else if (watcher_restart(watcher) < 0) {
            /* The fd went bad: the earlier callback cannot be watched either. */
            PyErr_Clear();
        }
        Py_DECREF(watcher);
        compat_restore_exception(exc);
        return NULL;
    }
    Py_DECREF(watcher);
    if (previous != NULL) {
        /* Replacing a callback cancels the old one, as asyncio does. */
        PyObject *result = PyObject_CallMethod((PyObject *)previous, "cancel", NULL);
        Py_DECREF(previous);
        if (result == NULL) {
            return NULL;
        }
        Py_DECREF(result);
    }
    Py_RETURN_NONE;
}

PyObject *
loop_remove_watcher(LoopObject *loop, PyObject *fileobj, int events)
{
    int fd = loop_fileobj_to_fd(fileobj);
    if (fd < 0) {
        return NULL;
    }
    if (loop->closed) {
        Py_RETURN_FALSE;
    }
    WatcherObject *watcher = watcher_for_fd(loop, fd, 0);
    if (watcher == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_FALSE;
    }
    int removed = watcher_drop(watcher, events);
    Py_DECREF(watcher);
    if (removed < 0) {
        return NULL;
    }
    return PyBool_FromLong(removed);
}

HandleObject *
loop_watcher_handle(LoopObject *loop, int fd, int events)
{
    WatcherObject *watcher = watcher_for_fd(loop, fd, 0);
    if (watcher == NULL) {
        PyErr_Clear();
        return NULL;
    }
    HandleObject *handle = events == UV_READABLE ? watcher->reader : watcher->writer;
    Py_DECREF(watcher);  /* still owned by loop->watchers */
    return handle;
}

static void free_records_if_closed(LoopObject *loop);

void
loop_close_watchers(LoopObject *loop)
{
    if (loop->watchers == NULL) {
        return;
    }
    loop_release_parked_polls(loop);
    free_parked_tables(loop);  /* closing: nothing parks any more */
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(loop->watchers, &pos, &key, &value)) {
        WatcherObject *watcher = (WatcherObject *)value;
        watcher_stop_poll(watcher);
        Py_CLEAR(watcher->reader);
        Py_CLEAR(watcher->writer);
    }
    PyDict_Clear(loop->watchers);
    free_records_if_closed(loop);  /* else when the transports forget theirs */
}

static int
watcher_traverse(WatcherObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop);
    Py_VISIT(self->reader);
    Py_VISIT(self->writer);
    return 0;
}

static int
watcher_clear(WatcherObject *self)
{
    Py_CLEAR(self->reader);
    Py_CLEAR(self->writer);
    return 0;
}

static void
watcher_dealloc(WatcherObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* Never while the loop thread polls: loop.watchers (or a queued restart)
     * holds a watcher whose poll is open until the loop thread closed it. */
    if (self->poll != NULL && self->loop != NULL && self->loop->uv_ready) {
        watcher_stop_poll(self);
    }
    watcher_clear(self);
    Py_CLEAR(self->loop);
    PyObject_GC_Del(self);
    Py_DECREF(type);
}

static PyType_Slot watcher_slots[] = {
    {Py_tp_doc, "The callbacks watching one fd (internal)."},
    {Py_tp_traverse, watcher_traverse},
    {Py_tp_clear, watcher_clear},
    {Py_tp_dealloc, watcher_dealloc},
    {0, NULL},
};

static PyType_Spec watcher_spec = {
    .name = "pyasync_c._loop.Watcher",
    .basicsize = sizeof(WatcherObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = watcher_slots,
};

int
watchers_init_type(PyObject *module, ModuleState *state)
{
    static int atfork_registered;
    if (!atfork_registered) {
        refresh_current_pid();
        if (pthread_atfork(NULL, NULL, refresh_current_pid) != 0) {
            PyErr_SetString(PyExc_RuntimeError, "pthread_atfork() failed");
            return -1;
        }
        atfork_registered = 1;
    }
    state->WatcherType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &watcher_spec, NULL);
    return state->WatcherType ? 0 : -1;
}

/* ---- the guard against fds closed or reused under a started poll ----
 * libuv registers a started poll's fd with epoll only in the next uv_run,
 * and abort()s if epoll_ctl fails there: EBADF when the fd was closed
 * meanwhile, EPERM when its number now belongs to a regular file or a
 * directory (a user closing a socket with a pending sock_recv, then opening a
 * file).  Reused by another pollable file, the fd would be registered
 * silently and report a file nobody asked about (asyncio registers at
 * add_reader time, and the kernel drops that registration with the old
 * file).  So every poll noted as started gets a record (a hash table keyed by
 * the poll, until it is forgotten) of which file its fd was at its first
 * start (st_dev, st_ino: a socket or pipe has an inode of its own); polls
 * started since the last uv_run are listed (at most once each: the record
 * keeps the slot, O(1) to add and remove), and before uv_run every active
 * one whose fd is closed or now another file goes to its owner's on_bad_fd,
 * which stops it. */

#define RECORD_DELETED ((uv_poll_t *)1)

static size_t
record_hash(uv_poll_t *poll)
{
    uint64_t h = (uint64_t)(uintptr_t)poll * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h ^ (h >> 29));
}

static PollRecord *
record_find(LoopObject *loop, uv_poll_t *poll)
{
    if (loop->poll_records_capacity == 0) {
        return NULL;
    }
    size_t mask = (size_t)loop->poll_records_capacity - 1;
    for (size_t i = record_hash(poll) & mask;; i = (i + 1) & mask) {
        PollRecord *record = &loop->poll_records[i];
        if (record->poll == poll) {
            return record;
        }
        if (record->poll == NULL) {
            return NULL;
        }
    }
}

/* A new record for poll (not in the table), its fields but `poll` unset. */
static PollRecord *
record_insert(LoopObject *loop, uv_poll_t *poll)
{
    if ((loop->poll_records_used + 1) * 3 > loop->poll_records_capacity * 2) {
        /* Rehash without the deleted slots, doubling when half full. */
        Py_ssize_t capacity = 16;
        while (capacity < (loop->poll_records_count + 1) * 2) {
            capacity *= 2;
        }
        PollRecord *old = loop->poll_records;
        Py_ssize_t old_capacity = loop->poll_records_capacity;
        PollRecord *table = PyMem_Calloc((size_t)capacity, sizeof(PollRecord));
        if (table == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        loop->poll_records = table;
        loop->poll_records_capacity = capacity;
        loop->poll_records_used = loop->poll_records_count;
        for (Py_ssize_t i = 0; i < old_capacity; i++) {
            if (old[i].poll != NULL && old[i].poll != RECORD_DELETED) {
                size_t mask = (size_t)capacity - 1;
                size_t j = record_hash(old[i].poll) & mask;
                while (table[j].poll != NULL) {
                    j = (j + 1) & mask;
                }
                table[j] = old[i];
            }
        }
        PyMem_Free(old);
    }
    size_t mask = (size_t)loop->poll_records_capacity - 1;
    size_t i = record_hash(poll) & mask;
    while (loop->poll_records[i].poll != NULL && loop->poll_records[i].poll != RECORD_DELETED) {
        i = (i + 1) & mask;
    }
    PollRecord *record = &loop->poll_records[i];
    if (record->poll == NULL) {
        loop->poll_records_used++;
    }
    loop->poll_records_count++;
    record->poll = poll;
    return record;
}

static int
record_is_listed(LoopObject *loop, PollRecord *record)
{
    Py_ssize_t slot = record->changed_slot;
    return slot >= 0 && slot < loop->changed_polls_count && loop->changed_polls[slot] == record->poll;
}

static void
record_unlist(LoopObject *loop, PollRecord *record)
{
    if (record_is_listed(loop, record)) {
        uv_poll_t *last = loop->changed_polls[--loop->changed_polls_count];
        if (last != record->poll) {
            loop->changed_polls[record->changed_slot] = last;
            record_find(loop, last)->changed_slot = record->changed_slot;
        }
    }
    record->changed_slot = -1;
}

static int
record_file_unchanged(PollRecord *record)
{
    struct stat st;
    return record->identity_known && fstat(record->fd, &st) == 0 && st.st_dev == record->dev
           && st.st_ino == record->ino;
}

int
loop_note_poll_change(LoopObject *loop, uv_poll_t *poll, int fd, void (*on_bad_fd)(void *), void *owner)
{
    return loop_note_poll_file(loop, poll, fd, NULL, on_bad_fd, owner);
}

int
loop_note_poll_file(LoopObject *loop, uv_poll_t *poll, int fd, const struct stat *file,
                    void (*on_bad_fd)(void *), void *owner)
{
    PollRecord *record = record_find(loop, poll);
    if (record == NULL) {
        record = record_insert(loop, poll);
        if (record == NULL) {
            return -1;
        }
        record->changed_slot = -1;
        record->fd = -1;
    }
    if (record->fd != fd) {  /* a new record (a poll's fd never changes) */
        struct stat st;
        if (file == NULL && fstat(fd, &st) == 0) {
            file = &st;
        }
        /* Unknown (fd already closed): the check before uv_run stops it. */
        record->identity_known = file != NULL;
        record->dev = file != NULL ? file->st_dev : 0;
        record->ino = file != NULL ? file->st_ino : 0;
    }
    record->fd = fd;
    record->on_bad_fd = on_bad_fd;
    record->owner = owner;
    if (record_is_listed(loop, record)) {
        return 0;
    }
    if (loop->changed_polls_count == loop->changed_polls_capacity) {
        Py_ssize_t capacity = loop->changed_polls_capacity ? loop->changed_polls_capacity * 2 : 16;
        uv_poll_t **items = PyMem_Realloc(loop->changed_polls, capacity * sizeof(uv_poll_t *));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        loop->changed_polls = items;
        loop->changed_polls_capacity = capacity;
    }
    record->changed_slot = loop->changed_polls_count;
    loop->changed_polls[loop->changed_polls_count++] = poll;
    return 0;
}

static void
free_records_if_closed(LoopObject *loop)
{
    if (loop->poll_records_count == 0 && !loop->uv_ready) {
        PyMem_Free(loop->poll_records);
        loop->poll_records = NULL;
        loop->poll_records_capacity = loop->poll_records_used = 0;
    }
}

void
loop_forget_poll(LoopObject *loop, uv_poll_t *poll)
{
    PollRecord *record = record_find(loop, poll);
    if (record == NULL) {
        return;
    }
    record_unlist(loop, record);
    record->poll = RECORD_DELETED;
    loop->poll_records_count--;
    free_records_if_closed(loop);
}

void
loop_check_changed_polls(LoopObject *loop)
{
    age_parked(loop);
    /* One at a time from the end, so owners may note or forget polls (and run
     * Python code) from on_bad_fd; polls they start are checked too. */
    while (loop->changed_polls_count > 0) {
        uv_poll_t *poll = loop->changed_polls[--loop->changed_polls_count];
        PollRecord *record = record_find(loop, poll);
        if (record == NULL) {
            continue;
        }
        record->changed_slot = -1;
        if (uv_is_active((uv_handle_t *)poll) && !uv_is_closing((uv_handle_t *)poll)
            && !record_file_unchanged(record)) {
            record->on_bad_fd(record->owner);
        }
    }
}

/* A watcher still polls fd, but the file it watched is gone (fd closed, the
 * number reused): it can see nothing any more; let the new file be polled.
 * Returns 1 if it released one. */
static int
release_stale_watcher(LoopObject *loop, int fd)
{
    PyObject *key = PyLong_FromLong(fd);
    if (key == NULL) {
        PyErr_Clear();
        return 0;
    }
    WatcherObject *watcher = (WatcherObject *)PyDict_GetItemWithError(loop->watchers, key);
    Py_DECREF(key);
    if (watcher == NULL) {
        PyErr_Clear();
        return 0;
    }
    PollRecord *record = watcher->poll ? record_find(loop, watcher->poll) : NULL;
    if (record == NULL || record_file_unchanged(record)) {
        return 0;
    }
    watcher_stop_poll(watcher);
    return 1;
}

int
loop_poll_init(LoopObject *loop, uv_poll_t *poll, int fd)
{
    if (loop_own_epoll_after_fork(loop) < 0) {
        return UV_EBUSY;
    }
    loop_release_parked_fd(loop, fd);
    if (loop->spare_polls_count > 0) {
        loop_drop_spare_poll(loop, fd);
    }
    int err = uv_poll_init(&loop->uv, poll, fd);
    if (err == UV_EEXIST && release_stale_watcher(loop, fd)) {
        loop_drop_spare_poll(loop, fd);
        err = uv_poll_init(&loop->uv, poll, fd);
    }
    return err;
}
