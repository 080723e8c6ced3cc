/* echo_server_libuv.c: the raw libuv echo server, the reference column of the
 * network benchmarks (what a loop could reach with no Python at all).
 *
 *   echo_server_libuv tcp  [HOST [PORT]]    default 127.0.0.1, port 0 (any)
 *   echo_server_libuv unix PATH
 *   echo_server_libuv udp  [HOST [PORT]]
 *
 * Prints one JSON line when it listens: {"ready": true, "host": ..., "port": ...}
 * (or "path" for unix). Then every line read on stdin makes it print its own
 * CPU time and RSS as one JSON line ({"utime_us", "stime_us", "rss_kb"}); on
 * EOF of stdin, SIGTERM or SIGINT it prints that line once more and exits.
 *
 * One read buffer is shared by every connection: data is echoed from it
 * with uv_try_write first, and only the part the socket did not take is
 * copied into a queued uv_write. Build (benchmarks/net/runner.py does it):
 *   gcc -std=c11 -O2 echo_server_libuv.c $(pkg-config --cflags --libs libuv)
 */
#define _POSIX_C_SOURCE 200809L
#include <uv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define READ_BUF_SIZE (256 * 1024)
#define MAX_QUEUED (4 * 1024 * 1024) /* stop reading a connection past this */

static uv_loop_t *loop;
static char read_buf[READ_BUF_SIZE];
static int stream_mode_is_tcp;

typedef struct {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_stream_t stream;
        uv_handle_t handle;
    } h;
    int reading;
} conn_t;

typedef struct {
    uv_write_t req;
    char data[]; /* the bytes uv_try_write did not take */
} pending_write_t;

typedef struct {
    uv_udp_send_t req;
    char data[];
} pending_send_t;

/* ---- reporting ---------------------------------------------------------- */

static void report_usage(void)
{
    struct rusage ru;
    long rss_pages = 0;
    getrusage(RUSAGE_SELF, &ru);
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        long size_pages;
        if (fscanf(f, "%ld %ld", &size_pages, &rss_pages) != 2)
            rss_pages = 0;
        fclose(f);
    }
    printf("{\"utime_us\": %lld, \"stime_us\": %lld, \"rss_kb\": %ld}\n",
           (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec,
           (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec,
           rss_pages * (sysconf(_SC_PAGESIZE) / 1024));
    fflush(stdout);
}

static void finish(void)
{
    report_usage();
    exit(0);
}

static void die_uv(const char *what, int err)
{
    fprintf(stderr, "echo_server_libuv: %s: %s\n", what, uv_strerror(err));
    exit(2);
}

/* ---- control: stdin lines and signals ------------------------------------ */

static uv_pipe_t ctl_pipe;
static uv_tty_t ctl_tty;
static char ctl_buf[256];

static void ctl_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(ctl_buf, sizeof ctl_buf);
}

static void ctl_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)s;
    if (nread < 0)
        finish();
    for (ssize_t i = 0; i < nread; i++)
        if (buf->base[i] == '\n')
            report_usage();
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    (void)signum;
    finish();
}

static void start_control(void)
{
    static uv_signal_t sigterm, sigint;
    uv_signal_init(loop, &sigterm);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_signal_init(loop, &sigint);
    uv_signal_start(&sigint, on_signal, SIGINT);

    uv_stream_t *in = NULL;
    switch (uv_guess_handle(0)) {
    case UV_NAMED_PIPE:
        if (uv_pipe_init(loop, &ctl_pipe, 0) == 0 && uv_pipe_open(&ctl_pipe, 0) == 0)
            in = (uv_stream_t *)&ctl_pipe;
        break;
    case UV_TTY:
        if (uv_tty_init(loop, &ctl_tty, 0, 1) == 0)
            in = (uv_stream_t *)&ctl_tty;
        break;
    default: /* /dev/null, a file: no control channel, run until a signal */
        break;
    }
    if (in) {
        uv_read_start(in, ctl_alloc, ctl_read);
        uv_unref((uv_handle_t *)in); /* the listener keeps the loop alive */
    }
}

/* ---- stream echo (TCP and Unix socket) ---------------------------------- */

static void shared_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(read_buf, sizeof read_buf);
}

static void conn_closed(uv_handle_t *h)
{
    free(h->data);
}

static void conn_close(conn_t *c)
{
    if (!uv_is_closing(&c->h.handle))
        uv_close(&c->h.handle, conn_closed);
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void write_done(uv_write_t *req, int status)
{
    conn_t *c = req->handle->data;
    free(req);
    if (status < 0) {
        if (status != UV_ECANCELED)
            conn_close(c);
        return;
    }
    if (!c->reading && c->h.stream.write_queue_size < MAX_QUEUED / 2 &&
        !uv_is_closing(&c->h.handle)) {
        c->reading = 1;
        uv_read_start(&c->h.stream, shared_alloc, conn_read);
    }
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    if (nread < 0) { /* EOF or error */
        conn_close(c);
        return;
    }
    if (nread == 0)
        return;

    size_t done = 0;
    if (s->write_queue_size == 0) { /* nothing queued: writing now keeps order */
        uv_buf_t b = uv_buf_init(buf->base, (unsigned int)nread);
        int n = uv_try_write(s, &b, 1);
        if (n >= 0)
            done = (size_t)n;
        else if (n != UV_EAGAIN) {
            conn_close(c);
            return;
        }
    }
    if (done == (size_t)nread)
        return;

    size_t rest = (size_t)nread - done;
    pending_write_t *w = malloc(sizeof *w + rest);
    if (!w) {
        conn_close(c);
        return;
    }
    memcpy(w->data, buf->base + done, rest);
    uv_buf_t b = uv_buf_init(w->data, (unsigned int)rest);
    int err = uv_write(&w->req, s, &b, 1, write_done);
    if (err) {
        free(w);
        conn_close(c);
        return;
    }
    if (s->write_queue_size > MAX_QUEUED) { /* the peer is not reading */
        c->reading = 0;
        uv_read_stop(s);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0) {
        fprintf(stderr, "echo_server_libuv: accept: %s\n", uv_strerror(status));
        return;
    }
    conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    if (stream_mode_is_tcp) {
        uv_tcp_init(loop, &c->h.tcp);
        uv_tcp_nodelay(&c->h.tcp, 1);
    } else {
        uv_pipe_init(loop, &c->h.pipe, 0);
    }
    c->h.handle.data = c;
    if (uv_accept(server, &c->h.stream) != 0) {
        conn_close(c);
        return;
    }
    c->reading = 1;
    uv_read_start(&c->h.stream, shared_alloc, conn_read);
}

/* ---- UDP echo ----------------------------------------------------------- */

static void send_done(uv_udp_send_t *req, int status)
{
    (void)status;
    free(req);
}

static void udp_read(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                     const struct sockaddr *addr, unsigned flags)
{
    (void)flags;
    if (nread <= 0 || addr == NULL)
        return; /* nothing more for now, or an error we cannot pin on a peer */
    uv_buf_t b = uv_buf_init(buf->base, (unsigned int)nread);
    int n = uv_udp_try_send(h, &b, 1, addr);
    if (n != UV_EAGAIN)
        return; /* sent, or failed: dropped, as UDP may */
    pending_send_t *s = malloc(sizeof *s + (size_t)nread);
    if (!s)
        return;
    memcpy(s->data, buf->base, (size_t)nread);
    b = uv_buf_init(s->data, (unsigned int)nread);
    if (uv_udp_send(&s->req, h, &b, 1, addr, send_done) != 0)
        free(s);
}

/* ---- main --------------------------------------------------------------- */

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void print_ready_inet(const struct sockaddr_storage *ss)
{
    char host[64];
    int port;
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, host, sizeof host);
        port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        uv_ip4_name(a, host, sizeof host);
        port = ntohs(a->sin_port);
    }
    printf("{\"ready\": true, \"host\": \"%s\", \"port\": %d}\n", host, port);
    fflush(stdout);
}

static void inet_addr_of(const char *host, int port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) != 0) {
        fprintf(stderr, "echo_server_libuv: bad address %s\n", host);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "unix") == 0 && argc < 3)) {
        fprintf(stderr, "usage: %s tcp|udp [HOST [PORT]] | unix PATH\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    const char *host = argc > 2 ? argv[2] : "127.0.0.1";
    int port = argc > 3 ? atoi(argv[3]) : 0;
    int err;

    raise_nofile();
    loop = uv_default_loop();
    start_control();

    static uv_tcp_t tcp_server;
    static uv_pipe_t pipe_server;
    static uv_udp_t udp_server;
    struct sockaddr_storage ss;
    int len = sizeof ss;

    if (strcmp(mode, "tcp") == 0) {
        stream_mode_is_tcp = 1;
        inet_addr_of(host, port, &ss);
        uv_tcp_init(loop, &tcp_server);
        if ((err = uv_tcp_bind(&tcp_server, (struct sockaddr *)&ss, 0)))
            die_uv("bind", err);
        if ((err = uv_listen((uv_stream_t *)&tcp_server, 4096, on_connection)))
            die_uv("listen", err);
        uv_tcp_getsockname(&tcp_server, (struct sockaddr *)&ss, &len);
        print_ready_inet(&ss);
    } else if (strcmp(mode, "unix") == 0) {
        const char *path = argv[2];
        unlink(path);
        uv_pipe_init(loop, &pipe_server, 0);
        if ((err = uv_pipe_bind(&pipe_server, path)))
            die_uv("bind", err);
        if ((err = uv_listen((uv_stream_t *)&pipe_server, 4096, on_connection)))
            die_uv("listen", err);
        printf("{\"ready\": true, \"path\": \"%s\"}\n", path);
        fflush(stdout);
    } else if (strcmp(mode, "udp") == 0) {
        inet_addr_of(host, port, &ss);
        uv_udp_init(loop, &udp_server);
        if ((err = uv_udp_bind(&udp_server, (struct sockaddr *)&ss, 0)))
            die_uv("bind", err);
        if ((err = uv_udp_recv_start(&udp_server, shared_alloc, udp_read)))
            die_uv("recv_start", err);
        uv_udp_getsockname(&udp_server, (struct sockaddr *)&ss, &len);
        print_ready_inet(&ss);
    } else {
        fprintf(stderr, "echo_server_libuv: unknown mode %s\n", mode);
        return 2;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    finish();
    return 0;
}
