/* Spare polls: stopped transport polls kept by fd number for the next
 * transport on that number.
 *
 * A connection's transport gets a uv_poll_t with uv_poll_init, which probes
 * the fd (epoll ADD + DEL) and sets it non-blocking (an ioctl): three system
 * calls per connection end that uvloop's uv_tcp_t does not make.  accept()
 * and socket() hand out the lowest free fd number, so a server or client
 * with connections coming and going reuses a small set of numbers.  When a
 * transport's poll has no user left, it is stopped (its EPOLL_CTL_DEL, made
 * before the transport closes the fd, as uv_close would) and kept here under
 * its fd number instead of being closed; the next socket transport on that
 * number takes it over and only starts it.
 *
 * A stopped uv_poll_t has no kernel registration and no slot in libuv's
 * watcher table: only its fd number.  So a spare is safe whatever became of
 * the file meanwhile; the taker checks what uv_poll_init would have:
 *   - the fd is non-blocking: the caller knows (its socket's timeout is 0);
 *   - the fd can be polled: it is a socket (fstat; the same fstat gives the
 *     closed/reused-fd guard its identity, loop_note_poll_file);
 *   - libuv watches no other poll of that fd (uv__fd_exists: the loop's
 *     watcher table, public fields of uv_loop_t).
 *
 * Owned by the loop (LoopObject.spare_polls, indexed by fd); at most
 * MAX_SPARE_POLLS, fds below MAX_SPARE_FD.  Kept and taken only where libuv
 * may be touched (the loop thread, or no thread polling), never by a fork
 * child that still shares its parent's epoll.  All are uv_close()d (and
 * freed by their close callback) when the loop closes.
 */
#include "loop.h"
#include "transport.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_SPARE_POLLS 16384
#define MAX_SPARE_FD (1 << 20)

static void
free_spare(uv_handle_t *handle)
{
    free(handle);
}

static int
make_room(LoopObject *loop, int fd)
{
    if (fd < loop->spare_polls_size) {
        return 0;
    }
    int size = loop->spare_polls_size ? loop->spare_polls_size : 256;
    while (size <= fd) {
        size *= 2;
    }
    uv_poll_t **table = PyMem_Realloc(loop->spare_polls, (size_t)size * sizeof *table);
    if (table == NULL) {
        return -1;
    }
    memset(table + loop->spare_polls_size, 0, (size_t)(size - loop->spare_polls_size) * sizeof *table);
    loop->spare_polls = table;
    loop->spare_polls_size = size;
    return 0;
}

/* uv__fd_exists: a started poll of fd holds its slot in libuv's watcher table. */
static int
libuv_watches(LoopObject *loop, int fd)
{
    return (unsigned)fd < loop->uv.nwatchers && loop->uv.watchers[fd] != NULL;
}

/* Takes the spare of fd out of the table (the caller checked there is one). */
static uv_poll_t *
unkeep(LoopObject *loop, int fd)
{
    uv_poll_t *poll = loop->spare_polls[fd];
    loop->spare_polls[fd] = NULL;
    loop->spare_polls_count--;
    return poll;
}

int
loop_keep_spare_poll(LoopObject *loop, uv_poll_t *poll, int fd)
{
    if (!loop->uv_ready || loop->closed || fd < 0 || fd >= MAX_SPARE_FD
        || loop->spare_polls_count >= MAX_SPARE_POLLS || uv_is_closing((uv_handle_t *)poll)
        || !loop_may_touch_libuv(loop) || loop_own_epoll_after_fork(loop) < 0
        || make_room(loop, fd) < 0 || loop->spare_polls[fd] != NULL) {
        return 0;
    }
    if (uv_is_active((uv_handle_t *)poll)) {
        uv_poll_stop(poll);  /* EPOLL_CTL_DEL; a stopped one has none left */
    }
    poll->data = NULL;
    loop->spare_polls[fd] = poll;
    loop->spare_polls_count++;
    return 1;
}

uv_poll_t *
loop_take_spare_poll(LoopObject *loop, int fd, struct stat *file)
{
    if (!loop_has_spare_poll(loop, fd) || !loop_may_touch_libuv(loop) || loop_own_epoll_after_fork(loop) < 0
        || libuv_watches(loop, fd)) {  /* what uv_poll_init refuses with EEXIST */
        return NULL;
    }
    if (fstat(fd, file) != 0 || !S_ISSOCK(file->st_mode)) {
        return NULL;  /* the usual uv_poll_init reports it */
    }
    return unkeep(loop, fd);
}

void
loop_drop_spare_poll(LoopObject *loop, int fd)
{
    if (loop_has_spare_poll(loop, fd) && !libuv_watches(loop, fd)) {
        /* (closing it while another poll of fd is started would EPOLL_CTL_DEL
         * that poll's registration) */
        uv_close((uv_handle_t *)unkeep(loop, fd), free_spare);
    }
}

void
loop_release_spare_polls(LoopObject *loop)
{
    for (int fd = 0; fd < loop->spare_polls_size && loop->spare_polls_count > 0; fd++) {
        if (loop->spare_polls[fd] != NULL) {
            uv_close((uv_handle_t *)unkeep(loop, fd), free_spare);
        }
    }
    PyMem_Free(loop->spare_polls);
    loop->spare_polls = NULL;
    loop->spare_polls_size = 0;
}
