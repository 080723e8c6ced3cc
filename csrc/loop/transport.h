/* Shared declarations of the transports: stream transports over sockets and
 * pipes (stream_transport.c), datagram transports (datagram_transport.c) and
 * the machinery they share (transport_base.c).  See transport_base.c for the
 * lifecycle. */
#ifndef PYASYNC_C_TRANSPORT_H
#define PYASYNC_C_TRANSPORT_H

#include "loop.h"

#include <structmember.h>

/* asyncio's transport classes have __slots__: BaseTransport ('_extra',) and
 * _FlowControlMixin ('_loop', '_protocol_paused', '_high_water',
 * '_low_water').  Their storage sits, unused, in asyncio_slot_storage; our
 * getsets of the same names shadow them (module init checks the layout
 * fits). */
#define TRANSPORT_RESERVED_SLOTS 5

typedef enum {
    TRANSPORT_SOCKET_STREAM,  /* TCP / Unix stream socket: asyncio.Transport */
    TRANSPORT_READ_PIPE,      /* asyncio.ReadTransport over a pipe/char device/socket */
    TRANSPORT_WRITE_PIPE,     /* asyncio.WriteTransport over a pipe/char device/socket */
    TRANSPORT_DATAGRAM,       /* asyncio.DatagramTransport */
} TransportKind;

/* One pending write: the unsent part of `data` starts at `offset`. */
typedef struct {
    PyObject *data;      /* bytes, owned */
    Py_ssize_t offset;
    PyObject *address;   /* datagram destination; NULL for streams or a connected socket */
} WriteEntry;

/* FIFO ring of pending writes. */
typedef struct {
    WriteEntry *items;
    Py_ssize_t head;
    Py_ssize_t count;
    Py_ssize_t capacity;  /* power of two */
    Py_ssize_t bytes;     /* unsent bytes over all entries */
} WriteQueue;

/* The libuv poll of an fd that transports use.  libuv allows one poll per
 * fd, so a read pipe and a write pipe on the same fd (a pty master driven
 * both ways) share one: it is started with the union of its users' events
 * and each user gets the events it asked for.  malloc'd; when its last user
 * detaches it is stopped and kept as the loop's spare for its fd number
 * (spare_polls.c), or uv_close()d and freed by the close callback. */
typedef struct TransportPoll {
    uv_poll_t handle;                  /* first: the close callback frees the struct */
    LoopObject *loop;                  /* borrowed: every user holds the loop; the loop
                                        * applies `sync` before it goes */
    struct TransportObject *users[2];  /* borrowed: a user detaches before it lets go */
    LibuvChange sync;                  /* queued by a thread that must not touch libuv: the
                                        * loop thread brings the handle to what the users
                                        * poll (and closes it once they are gone) */
    int events;                        /* the events the handle is started with */
    int fd;
    char initialized;                  /* uv_poll_init done (later when asked from another
                                        * thread while the loop polls) */
} TransportPoll;

typedef struct TransportObject {
    PyObject_HEAD
    PyObject *asyncio_slot_storage[TRANSPORT_RESERVED_SLOTS];
    PyObject *dict;           /* __dict__ (stdlib transports have one) */
    PyObject *weakreflist;
    LoopObject *loop;
    PyObject *sock;           /* socket or pipe file object owning fd; NULL once closed */
    PyObject *closed_sock;    /* stream socket after close, until get_extra_info('socket')
                               * makes its TransportSocket (made only if asked) */
    PyObject *protocol;
    PyObject *extra;          /* dict behind get_extra_info() */
    PyObject *server;         /* asyncio.Server or NULL */
    PyObject *context;        /* contextvars.Context the protocol callbacks run in */
    PyObject *empty_waiter;   /* sendfile: Future done when the write queue empties */
    PyObject *address;        /* datagram: the connected peer address, or NULL */
    PyObject *io_ready_method;/* bound _io_ready: the watcher writer that flushes a closing
                               * transport's queue (writes_via_watcher) calls it */
    HandleObject *io_ready_handle; /* the Handle deferred poll events queue (reused:
                                * none allocated per event); made on first use */
    int deferred_events;      /* events it dispatches when it runs; nonzero: queued */
    TransportPoll *poll;      /* attached on first use (shared with fd_partner) */
    struct TransportObject *fd_partner; /* the other pipe transport on this fd (borrowed,
                                         * both ways; cleared when either lets go of it) */
    struct TransportObject *polled_prev, *polled_next; /* loop->polled_transports list */
    PyObject *watcher_callback; /* context.run given to a loop watcher writer (see
                                 * transport_check_fd_free), or NULL */
    PyObject *write_limits;   /* (low, high) as set_write_buffer_limits got/computed them,
                               * when not both exact ints in range; else NULL (see
                               * transport_parse_buffer_limits) */
    WriteQueue queue;
    Py_ssize_t conn_lost;     /* >0 once connection_lost is scheduled; counts writes after */
    Py_ssize_t high_water;
    Py_ssize_t low_water;
    int fd;
    int family;               /* datagram: the socket's address family */
    int poll_events;          /* the events this transport polls (0: stopped) */
    int want_events;          /* the events last asked for, kept when the loop closes:
                               * asking for more then raises, as asyncio's _add_reader */
    TransportKind kind;
    char closing;
    char reading_paused;      /* pause_reading() */
    char read_eof;            /* EOF seen and eof_received() kept the connection open */
    char started;             /* connection_made() ran: reading may start */
    char writing_paused;      /* protocol.pause_writing() was called */
    char eof_written;         /* write_eof() called */
    char buffered_protocol;   /* protocol is an asyncio.BufferedProtocol */
    char lost;                /* _call_connection_lost ran */
    char watch_peer_close;    /* write pipe: poll readable to see the reader go away */
    char polled;              /* in loop->polled_transports (owns a reference) */
    char writes_via_watcher;  /* closing, its fd handed over to add_reader & co: the
                               * rest of the queue is flushed by a loop watcher writer */
    char watcher_writer;      /* that writer is registered (by us) */
} TransportObject;

/* ---- transport_base.c ---- */
int transports_init(PyObject *module, ModuleState *state);
/* Creates one of our transport types with `bases` (an asyncio class or a tuple of them). */
PyTypeObject *transport_make_type(PyObject *module, PyType_Spec *spec, PyObject *bases);
/* The same for any C type laid out over Python base classes whose instance
 * fields must fit in the first `room` bytes of the C struct. */
PyTypeObject *make_type_in_room(PyObject *module, PyType_Spec *spec, PyObject *bases,
                                Py_ssize_t room);
/* Fills the fields every kind shares; registers fd with the loop. */
int transport_setup(TransportObject *self, LoopObject *loop, PyObject *sock, PyObject *protocol,
                    PyObject *extra, PyObject *server, TransportKind kind);
/* Schedules _connection_made(waiter) on the loop (connection_made, start reading, waiter). */
int transport_schedule_start(TransportObject *self, PyObject *waiter);
/* Starts/stops/changes the poll to what the transport wants now. */
int transport_update_poll(TransportObject *self);
int transport_wants_read(TransportObject *self);
/* Calls protocol.<name>(*args) on the protocol; new reference or NULL. */
PyObject *transport_call_protocol(TransportObject *self, PyObject *name, PyObject *const *args,
                                  Py_ssize_t nargs);
/* Handles the exception set by a failed protocol/syscall step: SystemExit and
 * KeyboardInterrupt stop the loop and propagate from run_forever; anything
 * else goes through fatal_error(message). */
void transport_handle_error(TransportObject *self, const char *message);
/* Reports the current exception to the exception handler; the transport goes on. */
void transport_report_error(TransportObject *self, const char *message);
void transport_fatal_error(TransportObject *self, PyObject *exc, const char *message);
void transport_force_close(TransportObject *self, PyObject *exc);
/* Schedules _call_connection_lost(exc) (exc may be NULL for None).
 * transport_schedule_call: callable(arg), or callable() when arg is NULL. */
int transport_schedule_connection_lost(TransportObject *self, PyObject *exc);
/* future.<method>(value) unless the future is done; errors are dropped. */
void transport_settle_future(PyObject *future, PyObject *method, PyObject *value);
int transport_schedule_call(TransportObject *self, PyObject *callable, PyObject *arg);
void transport_maybe_pause_protocol(TransportObject *self);
void transport_maybe_resume_protocol(TransportObject *self);
/* Flow-control limits as asyncio computes them (_FlowControlMixin.
 * _set_write_buffer_limits, sslproto.add_flowcontrol_defaults): high/low
 * (NULL or None: the default, default_high bytes, or 4 * low; low defaults to
 * high // 4), computed and checked (`high >= low >= 0`, same ValueError text)
 * on the objects.  On success *out_high and *out_low are C thresholds giving the
 * same answers as asyncio's comparisons with a byte count (pause_at_high: the
 * caller pauses when size >= high, else when size > high; resume when size <=
 * low), saturated to Py_ssize_t; *out_values is NULL, or (when a value is not
 * an exact int in range: float, bool, huge int, ...) a new reference to the
 * tuple (low, high) of the objects asyncio would store.  -1 with an exception. */
int transport_parse_buffer_limits(PyObject *high, PyObject *low, Py_ssize_t default_high,
                                  int pause_at_high, Py_ssize_t *out_high, Py_ssize_t *out_low,
                                  PyObject **out_values);
/* get_*_buffer_limits(): `values` if not NULL, else (low, high) as ints. */
PyObject *transport_buffer_limits_tuple(PyObject *values, Py_ssize_t high, Py_ssize_t low);
/* After data was queued: poll for writable, pause the protocol if over the
 * high-water mark; None or NULL. */
PyObject *transport_after_queued(TransportObject *self);
/* close() (and a write pipe's write_eof()): closing now, connection_lost(None)
 * once the queue is flushed; a no-op when already closing.  METH_NOARGS. */
PyObject *transport_close(TransportObject *self, PyObject *unused);
/* tp_new helpers: checks `loop` is ours and allocates; discard drops a
 * transport that failed set-up without touching its socket. */
TransportObject *transport_alloc(PyTypeObject *type, PyObject *loop, ModuleState **state_out);
void transport_discard(TransportObject *self);
/* Logs asyncio's warning for writes after the connection was lost. */
void transport_warn_write_after_lost(TransportObject *self, const char *message);
/* add_reader/add_writer/sock_* on fd: RuntimeError if a transport that is
 * not closing uses it (as asyncio); a closing one hands the fd over. */
int transport_check_fd_free(LoopObject *loop, int fd);
/* loop._transports: a new dict fd -> transport, a copy of the registry. */
PyObject *registry_snapshot(LoopObject *loop);
void transports_close_all(LoopObject *loop);            /* loop close: release every poll */
/* The loop's tp_traverse / tp_clear: its polled transports. */
int transports_traverse(LoopObject *loop, visitproc visit, void *arg);
void transports_clear(LoopObject *loop);
/* The loop's read buffer, lent to one read at a time (a nested read gets a
 * fresh one): nothing else can reach it while the kernel or a protocol
 * callback has it.  NULL with MemoryError. */
char *transport_take_read_buffer(LoopObject *loop);
void transport_give_back_read_buffer(LoopObject *loop, char *buffer);
/* RuntimeError('Event loop is closed') when the loop is closed and the
 * transport would start polling for `events` anew (asyncio's transports call
 * _add_reader/_add_writer then, which refuse a closed loop). */
int transport_check_can_poll(TransportObject *self, int events);
PyObject *transport_oserror(int error_number);          /* new OSError subclass instance */
/* Shared methods and getsets, listed in each type's tables. */
extern PyMethodDef transport_common_methods[];
extern PyMethodDef transport_write_methods[];
/* Concatenates method tables into one (allocated once per type, never freed). */
PyMethodDef *transport_join_methods(const PyMethodDef *const *tables, int count);
extern PyGetSetDef transport_getsets[];
extern PyMemberDef transport_members[];
int transport_init(PyObject *self, PyObject *args, PyObject *kwargs);
int transport_traverse(TransportObject *self, visitproc visit, void *arg);
int transport_clear(TransportObject *self);
void transport_dealloc(TransportObject *self);
void transport_finalize(TransportObject *self);
PyObject *transport_repr(TransportObject *self);

/* Per-kind I/O readiness handlers, called by the poll callback with the
 * transport's context entered. */
void stream_on_readable(TransportObject *self);
void stream_on_writable(TransportObject *self);
void datagram_on_readable(TransportObject *self);
void datagram_on_writable(TransportObject *self);

/* ---- write queue (transport_base.c) ---- */
int write_queue_push(WriteQueue *queue, PyObject *data, Py_ssize_t offset, PyObject *address);
int write_queue_push_front(WriteQueue *queue, PyObject *data, PyObject *address);
void write_queue_consume(WriteQueue *queue, Py_ssize_t nbytes);  /* stream: drop sent bytes */
void write_queue_pop(WriteQueue *queue);                          /* drop the head entry */
void write_queue_clear(WriteQueue *queue);

/* ---- stream_transport.c / datagram_transport.c ---- */
int stream_transports_init(PyObject *module, ModuleState *state);
/* 1 (errno EBADF) when user code closed/detached the socket object under a
 * socket or datagram transport: its cached fd must not be used. */
int transport_socket_gone(TransportObject *self);

/* streams_fast.c: hands `size` received bytes to asyncio's
 * StreamReaderProtocol/StreamReader without their Python frames.
 * 1 handled, 0 not applicable (call data_received), -1 error. */
int stream_fast_data_received(TransportObject *self, const char *bytes, Py_ssize_t size);
int streams_fast_init(ModuleState *state);
int streams_fast_traverse(ModuleState *state, visitproc visit, void *arg);
void streams_fast_clear(ModuleState *state);
int datagram_transport_init(PyObject *module, ModuleState *state);

/* Size of a loop's read buffer (transport_take_read_buffer). */
#define TRANSPORT_READ_BUFFER_SIZE (256 * 1024)

#endif
