/* add_reader / add_writer / remove_reader / remove_writer.
 *
 * One Watcher object per watched fd, kept in LoopObject.watchers (dict fd ->
 * Watcher); it owns the reader and writer Handles.  The libuv side is a
 * uv_poll_t allocated with malloc: whenever the set of watched events changes
 * the old poll is stopped and uv_close()d (its close callback frees it) and a
 * fresh one is started, so libuv re-validates the fd (a bad or closed fd gives
 * OSError instead of a libuv abort on epoll_ctl).  Level-triggered, like the
 * stdlib's selectors: a ready fd queues its handle on every iteration.
 */
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    LoopObject *loop;
    HandleObject *reader;
    HandleObject *writer;
    uv_poll_t *poll;  /* NULL when nothing is watched */
    int fd;
} WatcherObject;

static void
free_poll(uv_handle_t *handle)
{
    free(handle);
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


static void
watcher_stop_poll(WatcherObject *self)
{
    if (self->poll != NULL) {
        uv_poll_stop(self->poll);
        loop_forget_poll(self->loop, self->poll);
        uv_close((uv_handle_t *)self->poll, free_poll);
        self->poll = NULL;
        self->loop->active_io--;
    }
}

static void on_poll(uv_poll_t *poll, int status, int events);

static void
watcher_bad_fd(void *owner)
{
    /* Closed under us: like a selector, just never report it again. */
    watcher_stop_poll((WatcherObject *)owner);
}

/* Starts watching for whichever of reader/writer is set. */
static int
watcher_restart(WatcherObject *self)
{
    int events = (self->reader ? UV_READABLE : 0) | (self->writer ? UV_WRITABLE : 0);
    watcher_stop_poll(self);
    if (events == 0) {
        return 0;
    }
    uv_poll_t *poll = malloc(sizeof(uv_poll_t));
    if (poll == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int err = uv_poll_init(&self->loop->uv, poll, self->fd);
    if (err < 0) {
        free(poll);
        errno = -err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    poll->data = self;
    err = uv_poll_start(poll, events, on_poll);
    if (err < 0) {
        uv_close((uv_handle_t *)poll, free_poll);
        errno = -err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->poll = poll;
    self->loop->active_io++;
    return loop_note_poll_change(self->loop, poll, self->fd, watcher_bad_fd, self);
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
        watcher_stop_poll(self);
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
    WatcherObject *self = poll->data;
    LoopObject *loop = self->loop;
    loop_take_gil(loop);
    if (status < 0) {
        /* Errors (e.g. a reset peer) wake both sides, as select() does. */
        events = UV_READABLE | UV_WRITABLE;
    }
    Py_INCREF(self);
    if (((events & UV_READABLE) && queue_if_ready(self, self->reader, UV_READABLE) < 0)
        || ((events & UV_WRITABLE) && queue_if_ready(self, self->writer, UV_WRITABLE) < 0)) {
        loop_defer_error(loop);
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

void
loop_close_watchers(LoopObject *loop)
{
    if (loop->watchers == NULL) {
        return;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(loop->watchers, &pos, &key, &value)) {
        WatcherObject *watcher = (WatcherObject *)value;
        watcher_stop_poll(watcher);
        Py_CLEAR(watcher->reader);
        Py_CLEAR(watcher->writer);
    }
    PyDict_Clear(loop->watchers);
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
    state->WatcherType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &watcher_spec, NULL);
    return state->WatcherType ? 0 : -1;
}

/* ---- guard against fds closed under a started poll ----
 * libuv registers a started poll's fd with epoll only in the next uv_run,
 * and abort()s if epoll_ctl fails, e.g. because the fd was closed meanwhile
 * (a user closing a socket with a pending sock_recv, say).  Every poll
 * started or changed is noted here; just before uv_run each noted fd is
 * checked, and a closed one is handed to its owner, which stops the poll. */

int
loop_note_poll_change(LoopObject *loop, uv_poll_t *poll, int fd, void (*on_bad_fd)(void *), void *owner)
{
    if (loop->changed_polls_count == loop->changed_polls_capacity) {
        Py_ssize_t capacity = loop->changed_polls_capacity ? loop->changed_polls_capacity * 2 : 16;
        ChangedPoll *items = PyMem_Realloc(loop->changed_polls, capacity * sizeof(ChangedPoll));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        loop->changed_polls = items;
        loop->changed_polls_capacity = capacity;
    }
    ChangedPoll *entry = &loop->changed_polls[loop->changed_polls_count++];
    entry->poll = poll;
    entry->fd = fd;
    entry->on_bad_fd = on_bad_fd;
    entry->owner = owner;
    return 0;
}

void
loop_forget_poll(LoopObject *loop, uv_poll_t *poll)
{
    for (Py_ssize_t i = 0; i < loop->changed_polls_count; i++) {
        if (loop->changed_polls[i].poll == poll) {
            loop->changed_polls[i].poll = NULL;
        }
    }
}

void
loop_check_changed_polls(LoopObject *loop)
{
    /* Owners may note or forget polls while we walk: take the list first. */
    Py_ssize_t count = loop->changed_polls_count;
    for (Py_ssize_t i = 0; i < count; i++) {
        ChangedPoll entry = loop->changed_polls[i];
        if (entry.poll == NULL || !uv_is_active((uv_handle_t *)entry.poll)
            || uv_is_closing((uv_handle_t *)entry.poll)) {
            continue;
        }
        if (fcntl(entry.fd, F_GETFD) < 0 && errno == EBADF) {
            entry.on_bad_fd(entry.owner);
        }
    }
    /* Entries noted by the owners above are checked next time. */
    Py_ssize_t added = loop->changed_polls_count - count;
    if (added > 0) {
        memmove(loop->changed_polls, loop->changed_polls + count, added * sizeof(ChangedPoll));
    }
    loop->changed_polls_count = added;
}
