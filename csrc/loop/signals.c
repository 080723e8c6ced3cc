/* Signal delivery into the loop.
 *
 * Each loop owns a non-blocking socketpair.  Loop.run_forever (main thread)
 * and add_signal_handler give the write end to signal.set_wakeup_fd(), so
 * CPython's C-level handler writes the signal number there; the read end is
 * watched by a uv_poll.  When it becomes readable while the loop blocks in
 * poll, we take the GIL, queue the add_signal_handler callbacks for the
 * signals received (Loop._handle_signal) and run the Python-level handlers
 * with PyErr_CheckSignals() — so Ctrl-C (KeyboardInterrupt, or asyncio.Runner's
 * SIGINT handler) and signal.signal handlers run promptly.  An exception from
 * a handler stops libuv and is raised out of run_forever.
 * Lifecycle: opened with the loop, closed (uv_close + close fds) with it.
 * Fork: the child's copy of the loop gets a new socketpair under the same fd
 * numbers (signals_after_fork), so the parent's and the child's signal bytes
 * never meet, the uv_poll keeps its fd, and a wakeup fd the child inherited
 * from the parent (signal.set_wakeup_fd) now reaches the child's loop.
 */
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

static void
on_signal_readable(uv_poll_t *poll, int status, int events)
{
    LoopObject *self = poll->data;
    unsigned char buffer[128];
    loop_take_gil(self);
    for (;;) {
        ssize_t got = read(self->signal_fds[0], buffer, sizeof buffer);
        if (got <= 0) {
            break;
        }
        for (ssize_t i = 0; i < got; i++) {
            PyObject *signum = PyLong_FromLong(buffer[i]);
            PyObject *result = signum == NULL ? NULL
                : PyObject_CallMethodOneArg((PyObject *)self, self->state->str_handle_signal, signum);
            Py_XDECREF(signum);
            if (result == NULL) {
                loop_defer_error(self);
                return;
            }
            Py_DECREF(result);
        }
    }
    if (PyErr_CheckSignals() < 0) {
        loop_defer_error(self);
    }
}

static int
set_nonblocking_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        return -1;
    }
    flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) {
        return -1;
    }
    return 0;
}

int
signals_open(LoopObject *loop)
{
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, loop->signal_fds) < 0
        || set_nonblocking_cloexec(loop->signal_fds[0]) < 0
        || set_nonblocking_cloexec(loop->signal_fds[1]) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    int err = uv_poll_init(&loop->uv, &loop->signal_poll, loop->signal_fds[0]);
    if (err == 0) {
        loop->signal_poll.data = loop;
        err = uv_poll_start(&loop->signal_poll, UV_READABLE, on_signal_readable);
    }
    if (err < 0) {
        PyErr_Format(PyExc_OSError, "cannot watch the signal socket: %s", uv_strerror(err));
        return -1;
    }
    return 0;
}

void
signals_close(LoopObject *loop)
{
    if (loop->signal_fds[0] < 0) {
        return;
    }
    if (uv_is_active((uv_handle_t *)&loop->signal_poll) || loop->signal_poll.data == loop) {
        uv_close((uv_handle_t *)&loop->signal_poll, NULL);
    }
    close(loop->signal_fds[0]);
    close(loop->signal_fds[1]);
    loop->signal_fds[0] = loop->signal_fds[1] = -1;
}

int
signals_after_fork(LoopObject *loop)
{
    if (loop->signal_fds[0] < 0) {
        return 0;
    }
    int fresh[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fresh) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    int status = 0;
    /* dup3 replaces only this process's reference: the parent's epoll
     * registration and socketpair are untouched. */
    if (dup3(fresh[0], loop->signal_fds[0], O_CLOEXEC) < 0
        || dup3(fresh[1], loop->signal_fds[1], O_CLOEXEC) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        status = -1;
    }
    close(fresh[0]);
    close(fresh[1]);
    return status;
}
