/* echo_client.c: the load driver of the network benchmarks. Cheap per
 * message: plain epoll on non-blocking sockets, one request in flight per
 * connection, every echo checked byte for byte.
 *
 * Echo load (tcp, unix, udp):
 *   echo_client --mode tcp|udp --host H --port P | --mode unix --path PATH
 *               [--conns N] [--size BYTES] [--warmup S] [--duration S]
 *               [--windows R] [--control]
 *   N connections (or connected UDP sockets) each send SIZE bytes, read the
 *   whole echo back, then send the next message. After a warm-up it runs R
 *   timed windows of S seconds and prints one JSON line per window:
 *   round trips, messages/s, latency percentiles in microseconds (from a
 *   log-linear histogram, about 1.5 % resolution). Between windows and after
 *   the warm-up it stops sending and lets the messages in flight come back,
 *   so the server is idle at window edges. With --control it prints
 *   {"ready": true, ...} after the warm-up and then runs one window per line
 *   read on stdin, exiting on EOF: the caller samples the server's CPU time
 *   between windows. A UDP request unanswered for 200 ms counts as lost and
 *   is sent again.
 *
 * Idle connections:
 *   echo_client --mode idle --host H --port P --conns K
 *   opens K TCP connections (at most 64 being set up at once, so the
 *   server's accept backlog never overflows), sends one byte on each and
 *   waits for its echo, prints {"ready": true, "connections": K, ...}, then
 *   holds them until stdin closes or SIGTERM/SIGINT. They are closed with
 *   SO_LINGER 0 (a reset), leaving no TIME_WAIT behind.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum mode { M_TCP, M_UNIX, M_UDP, M_IDLE };

static struct {
    enum mode mode;
    const char *host, *path;
    int port, conns, windows, control;
    size_t size;
    double warmup, duration;
} opt = {M_TCP, "127.0.0.1", NULL, 0, 1, 1, 0, 1024, 0.5, 2.0};

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "echo_client: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "%s%s\n", errno ? ": " : "", errno ? strerror(errno) : "");
    exit(2);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- latency histogram: 64 sub-buckets per power of two ------------------ */

#define SUB_BITS 6
#define SUB (1 << SUB_BITS)
#define NBUCKETS (2 * SUB + SUB * 64)

static uint64_t hist[NBUCKETS];
static uint64_t hist_count, hist_max, hist_sum;

static int bucket_of(uint64_t v)
{
    if (v < 2 * SUB)
        return (int)v;
    int top = 63 - __builtin_clzll(v);
    int shift = top - SUB_BITS; /* v >> shift lies in [SUB, 2*SUB) */
    return 2 * SUB + (shift - 1) * SUB + (int)((v >> shift) - SUB);
}

static double bucket_mid(int i)
{
    if (i < 2 * SUB)
        return i;
    int shift = (i - 2 * SUB) / SUB + 1;
    uint64_t low = (uint64_t)((i - 2 * SUB) % SUB + SUB) << shift;
    return (double)low + (double)((uint64_t)1 << shift) / 2.0;
}

static void hist_add(uint64_t ns)
{
    hist[bucket_of(ns)]++;
    hist_count++;
    hist_sum += ns;
    if (ns > hist_max)
        hist_max = ns;
}

static double hist_quantile_us(double q)
{
    if (hist_count == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(q * (double)hist_count + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < NBUCKETS; i++) {
        seen += hist[i];
        if (seen >= rank)
            return bucket_mid(i) / 1000.0;
    }
    return (double)hist_max / 1000.0;
}

static void hist_reset(void)
{
    memset(hist, 0, sizeof hist);
    hist_count = hist_max = hist_sum = 0;
}

/* ---- connections ---------------------------------------------------------- */

typedef struct {
    int fd;
    int active;    /* a request is in flight */
    size_t sent, recvd;
    uint64_t t0;   /* when the request's first byte was handed to the kernel */
} conn_t;

static conn_t *conns;
static char *msg, *rbuf;
static int epfd;
static int issuing;    /* start a new request when one completes */
static int measuring;  /* completed round trips go into the histogram */
static int inflight;
static uint64_t lost;
static uint64_t warm_round_trips;

static void set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        die("fcntl%s", "");
}

static int open_socket(void)
{
    int fd;
    if (opt.mode == M_UNIX) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (strlen(opt.path) >= sizeof a.sun_path)
            die("path too long: %s", opt.path);
        strcpy(a.sun_path, opt.path);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
            die("connect %s", opt.path);
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
        if (inet_pton(AF_INET, opt.host, &a.sin_addr) != 1)
            die("not an IPv4 address: %s", opt.host);
        fd = socket(AF_INET, opt.mode == M_UDP ? SOCK_DGRAM : SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
            die("connect %s", opt.host);
        if (opt.mode != M_UDP) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        if (opt.mode == M_IDLE) {
            struct linger lg = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
    }
    set_nonblocking(fd);
    return fd;
}

static void watch(conn_t *c)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl%s", "");
}

static void start_request(conn_t *c, uint64_t now)
{
    c->active = 1;
    c->sent = c->recvd = 0;
    c->t0 = now;
    inflight++;
}

/* Move one connection forward as far as the socket allows (edge-triggered:
 * until EAGAIN). */
static void progress(conn_t *c)
{
    size_t size = opt.mode == M_IDLE ? 1 : opt.size;
    while (c->active) {
        if (c->sent < size) {
            ssize_t n = send(c->fd, msg + c->sent, size - c->sent, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    return;
                die("send%s", "");
            }
            c->sent += (size_t)n;
            continue;
        }
        ssize_t n = recv(c->fd, rbuf, opt.mode == M_UDP ? size + 1 : size - c->recvd, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            die("recv%s", "");
        }
        if (n == 0) {
            errno = 0;
            die("the server closed a connection%s", "");
        }
        if (opt.mode == M_UDP && (size_t)n != size) {
            errno = 0;
            die("a datagram of the wrong size came back%s", "");
        }
        if (memcmp(rbuf, msg + c->recvd, (size_t)n) != 0) {
            errno = 0;
            die("the echo differs from what was sent%s", "");
        }
        c->recvd += (size_t)n;
        if (c->recvd < size)
            continue;
        uint64_t now = now_ns();
        c->active = 0;
        inflight--;
        if (measuring)
            hist_add(now - c->t0);
        else
            warm_round_trips++;
        if (issuing)
            start_request(c, now);
    }
}

/* UDP: a request with no answer after 200 ms is lost; send it again. */
static void resend_lost(uint64_t now)
{
    for (int i = 0; i < opt.conns; i++) {
        conn_t *c = &conns[i];
        if (c->active && c->sent == opt.size && now - c->t0 > 200000000u) {
            lost++;
            inflight--;
            c->active = 0;
            if (issuing) {
                start_request(c, now);
                progress(c);
            }
        }
    }
}

/* Run the event loop until `until` (ns), or if until == 0 until no request is
 * in flight. */
static void run_until(uint64_t until)
{
    struct epoll_event evs[256];
    uint64_t drain_deadline = now_ns() + 10000000000u;
    uint64_t next_scan = now_ns() + 50000000u;
    for (;;) {
        uint64_t now = now_ns();
        if (until ? now >= until : inflight == 0)
            return;
        if (!until && now > drain_deadline) {
            errno = 0;
            die("echoes still missing 10 s after the load stopped%s", "");
        }
        if (opt.mode == M_UDP && now >= next_scan) {
            resend_lost(now);
            next_scan = now + 50000000u;
        }
        int timeout_ms = 10;
        if (until && until - now < 10000000u)
            timeout_ms = (int)((until - now + 999999) / 1000000);
        int n = epoll_wait(epfd, evs, 256, timeout_ms);
        if (n < 0 && errno != EINTR)
            die("epoll_wait%s", "");
        for (int i = 0; i < n; i++)
            progress(evs[i].data.ptr);
    }
}

static void start_all(void)
{
    uint64_t now = now_ns();
    issuing = 1;
    for (int i = 0; i < opt.conns; i++) {
        start_request(&conns[i], now);
        progress(&conns[i]);
    }
}

static void stop_and_drain(void)
{
    issuing = 0;
    run_until(0);
}

static void print_window(uint64_t started, uint64_t stopped)
{
    double secs = (double)(stopped - started) / 1e9;
    double rate = (double)hist_count / secs;
    printf("{\"round_trips\": %llu, \"seconds\": %.6f, \"msgs_per_s\": %.1f, "
           "\"mbytes_per_s\": %.2f, \"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, "
           "\"p999_us\": %.2f, \"max_us\": %.2f, \"mean_us\": %.2f, \"lost\": %llu, "
           "\"conns\": %d, \"size\": %zu}\n",
           (unsigned long long)hist_count, secs, rate, rate * (double)opt.size / 1e6,
           hist_quantile_us(0.50), hist_quantile_us(0.90), hist_quantile_us(0.99),
           hist_quantile_us(0.999), (double)hist_max / 1000.0,
           hist_count ? (double)hist_sum / (double)hist_count / 1000.0 : 0.0,
           (unsigned long long)lost, opt.conns, opt.size);
    fflush(stdout);
}

/* One line on stdin (or EOF: 0). */
static int wait_for_line(void)
{
    char c;
    for (;;) {
        ssize_t n = read(0, &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        if (c == '\n')
            return 1;
    }
}

static void run_echo(void)
{
    for (int i = 0; i < opt.conns; i++) {
        conns[i].fd = open_socket();
        watch(&conns[i]);
    }
    start_all();
    run_until(now_ns() + (uint64_t)(opt.warmup * 1e9));
    stop_and_drain();
    if (opt.control) {
        printf("{\"ready\": true, \"warmup_round_trips\": %llu}\n",
               (unsigned long long)warm_round_trips);
        fflush(stdout);
    }
    for (int w = 0; opt.control ? wait_for_line() : w < opt.windows; w++) {
        hist_reset();
        lost = 0;
        measuring = 1;
        uint64_t started = now_ns();
        start_all();
        run_until(started + (uint64_t)(opt.duration * 1e9));
        uint64_t stopped = now_ns();
        measuring = 0; /* what is still in flight is not counted */
        stop_and_drain();
        print_window(started, stopped);
    }
}

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

static void run_idle(void)
{
    const int max_setting_up = 64;
    uint64_t started = now_ns();
    issuing = 0;
    int opened = 0;
    struct epoll_event evs[256];
    while (opened < opt.conns || inflight > 0) {
        while (opened < opt.conns && inflight < max_setting_up) {
            conn_t *c = &conns[opened++];
            c->fd = open_socket();
            watch(c);
            start_request(c, now_ns());
            progress(c);
        }
        int n = epoll_wait(epfd, evs, 256, 1000);
        if (n < 0 && errno != EINTR)
            die("epoll_wait%s", "");
        for (int i = 0; i < n; i++)
            progress(evs[i].data.ptr);
    }
    printf("{\"ready\": true, \"connections\": %d, \"seconds\": %.3f}\n", opt.conns,
           (double)(now_ns() - started) / 1e9);
    fflush(stdout);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    char buf[256];
    while (!stop_signal) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EINTR))
            break;
    }
    for (int i = 0; i < opt.conns; i++)
        close(conns[i].fd); /* SO_LINGER 0: a reset */
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s --mode tcp|udp|unix|idle [--host H --port P | --path PATH]\n"
            "          [--conns N] [--size BYTES] [--warmup S] [--duration S]\n"
            "          [--windows R] [--control]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"mode", required_argument, 0, 'm'},     {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},     {"path", required_argument, 0, 'u'},
        {"conns", required_argument, 0, 'c'},    {"size", required_argument, 0, 's'},
        {"warmup", required_argument, 0, 'w'},   {"duration", required_argument, 0, 'd'},
        {"windows", required_argument, 0, 'r'},  {"control", no_argument, 0, 'C'},
        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'm':
            if (!strcmp(optarg, "tcp")) opt.mode = M_TCP;
            else if (!strcmp(optarg, "unix")) opt.mode = M_UNIX;
            else if (!strcmp(optarg, "udp")) opt.mode = M_UDP;
            else if (!strcmp(optarg, "idle")) opt.mode = M_IDLE;
            else usage(argv[0]);
            break;
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'u': opt.path = optarg; break;
        case 'c': opt.conns = atoi(optarg); break;
        case 's': opt.size = (size_t)atol(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'r': opt.windows = atoi(optarg); break;
        case 'C': opt.control = 1; break;
        default: usage(argv[0]);
        }
    }
    if (opt.conns < 1 || opt.size < 1 || (opt.mode == M_UNIX && !opt.path) ||
        (opt.mode != M_UNIX && opt.port <= 0) || (opt.mode == M_UDP && opt.size > 65507))
        usage(argv[0]);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if ((rlim_t)opt.conns + 16 > rl.rlim_cur) {
        errno = 0;
        die("RLIMIT_NOFILE is too low for the connections asked for%s", "");
    }

    size_t size = opt.size;
    msg = malloc(size);
    rbuf = malloc(size + 1);
    conns = calloc((size_t)opt.conns, sizeof *conns);
    if (!msg || !rbuf || !conns)
        die("out of memory%s", "");
    uint32_t x = 2463534242u; /* xorshift: no two nearby offsets look alike */
    for (size_t i = 0; i < size; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        msg[i] = (char)(x >> 24);
    }
    epfd = epoll_create1(0);
    if (epfd < 0)
        die("epoll_create1%s", "");
    signal(SIGPIPE, SIG_IGN);
    if (opt.mode == M_IDLE)
        run_idle();
    else
        run_echo();
    return 0;
}
