/*
 * echoload: a bounded TCP/UDP echo load generator in C, for bench/.
 *
 *   echoload tcp|udp --port P [--host 127.0.0.1] [--connections N] [--duration S]
 *                    [--requests N] [--timeout S]
 *
 * The same load and the same JSON result as `python -m bench.loadgen tcp|udp` (see
 * bench/loadgen.py): one epoll loop over N non-blocking sockets, each with exactly one
 * 64-byte message in flight; latency from the write to the last byte read, in a histogram
 * of logarithmic buckets 1 % wide (bucket i holds [1.01^i, 1.01^(i+1)) microseconds).
 * It exists because the Python generator needs as much CPU per round trip as the echo
 * servers it loads: on a 2-core machine it held one core, and an engine whose workers
 * could use both cores had only one left.  This one needs a fraction of that.
 *
 * Bounded in time (--duration) and count (--requests); loopback or any address given.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MESSAGE_SIZE 64
#define MAX_BUCKETS 4096 /* 1.01^4096 us is far beyond any timeout */
#define MAX_SLOTS 65536

enum error_kind { ERR_CONNECT, ERR_READ, ERR_WRITE, ERR_TIMEOUT, ERR_STATUS, ERR_KINDS };
static const char *error_names[ERR_KINDS] = {"connect", "read", "write", "timeout", "status"};

struct slot {
    int fd;           /* -1: closed, waiting for reopen_at */
    int connecting;   /* TCP connect in progress */
    int got;          /* bytes of the answer read so far */
    double sent_at;   /* 0: nothing in flight */
    double reopen_at; /* when a closed slot opens again */
    char buf[MESSAGE_SIZE];
};

static char message[MESSAGE_SIZE];
static int udp_mode;
static struct sockaddr_in address;
static int poller;
static struct slot *slots;
static int nslots;
static long long hist[MAX_BUCKETS];
static long long errors[ERR_KINDS];
static long long answered;
static double timeout_s = 5.0;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int bucket(double seconds)
{
    double us = seconds * 1e6;
    int index;
    if (us < 1.0)
        us = 1.0;
    index = (int)(log(us) / log(1.01));
    return index < MAX_BUCKETS ? index : MAX_BUCKETS - 1;
}

static void close_slot(struct slot *slot, int error, double reopen_after)
{
    if (error >= 0)
        errors[error]++;
    epoll_ctl(poller, EPOLL_CTL_DEL, slot->fd, NULL);
    close(slot->fd);
    slot->fd = -1;
    slot->sent_at = 0.0;
    slot->reopen_at = now() + reopen_after;
}

static void send_message(struct slot *slot)
{
    ssize_t sent;
    slot->got = 0;
    slot->sent_at = now();
    sent = send(slot->fd, message, MESSAGE_SIZE, MSG_NOSIGNAL);
    if (sent == MESSAGE_SIZE)
        return;
    if (udp_mode) {
        errors[ERR_WRITE]++;
        slot->sent_at = 0.0; /* sent again by the sweep */
    } else {
        close_slot(slot, ERR_WRITE, 0.01);
    }
}

static void open_slot(struct slot *slot)
{
    struct epoll_event event = {0};
    int one = 1;
    int fd = socket(AF_INET, (udp_mode ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        errors[ERR_CONNECT]++;
        slot->fd = -1;
        slot->reopen_at = now() + 0.01;
        return;
    }
    slot->fd = fd;
    slot->sent_at = 0.0;
    event.data.ptr = slot;
    if (udp_mode) {
        connect(fd, (struct sockaddr *)&address, sizeof address);
        slot->connecting = 0;
        event.events = EPOLLIN;
        epoll_ctl(poller, EPOLL_CTL_ADD, fd, &event);
        send_message(slot);
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&address, sizeof address) < 0 && errno != EINPROGRESS) {
        errors[ERR_CONNECT]++;
        close(fd);
        slot->fd = -1;
        slot->reopen_at = now() + 0.01;
        return;
    }
    slot->connecting = 1;
    event.events = EPOLLOUT;
    epoll_ctl(poller, EPOLL_CTL_ADD, fd, &event);
}

static void on_writable(struct slot *slot)
{
    struct epoll_event event = {0};
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(slot->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        close_slot(slot, ERR_CONNECT, 0.01);
        return;
    }
    slot->connecting = 0;
    event.events = EPOLLIN;
    event.data.ptr = slot;
    epoll_ctl(poller, EPOLL_CTL_MOD, slot->fd, &event);
    send_message(slot);
}

static void record(struct slot *slot, double at, int ok)
{
    answered++;
    hist[bucket(at - slot->sent_at)]++;
    slot->sent_at = 0.0;
    if (!ok)
        errors[ERR_STATUS]++;
}

static void on_readable(struct slot *slot)
{
    char data[65536];
    ssize_t got = recv(slot->fd, data, sizeof data, 0);
    if (got < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (udp_mode) {
        if (got < 0) { /* ICMP port unreachable: the server is not there (yet) */
            errors[ERR_READ]++;
            slot->sent_at = 0.0;
            return;
        }
        if (slot->sent_at > 0.0)
            record(slot, now(), got == MESSAGE_SIZE && memcmp(data, message, MESSAGE_SIZE) == 0);
        send_message(slot);
        return;
    }
    if (got <= 0) {
        close_slot(slot, ERR_READ, 0.01);
        return;
    }
    if (slot->got + got > MESSAGE_SIZE) { /* more than was sent: a wrong answer */
        record(slot, now(), 0);
        close_slot(slot, -1, 0.0);
        return;
    }
    memcpy(slot->buf + slot->got, data, (size_t)got);
    slot->got += (int)got;
    if (slot->got == MESSAGE_SIZE) {
        record(slot, now(), memcmp(slot->buf, message, MESSAGE_SIZE) == 0);
        send_message(slot);
    }
}

static void sweep(double at)
{
    for (int i = 0; i < nslots; i++) {
        struct slot *slot = &slots[i];
        if (slot->fd < 0) {
            if (slot->reopen_at <= at)
                open_slot(slot);
            continue;
        }
        if (slot->connecting)
            continue;
        if (udp_mode && slot->sent_at == 0.0) {
            send_message(slot);
        } else if (slot->sent_at > 0.0 && at - slot->sent_at > timeout_s) {
            errors[ERR_TIMEOUT]++;
            if (udp_mode)
                send_message(slot);
            else
                close_slot(slot, -1, 0.0);
        }
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: echoload tcp|udp --port P [--host H] [--connections N] "
                    "[--duration S] [--requests N] [--timeout S]\n");
    exit(2);
}

static void print_result(double elapsed)
{
    int first = 1;
    printf("{\"requests\": %lld, \"elapsed\": %.6f, \"errors\": {", answered, elapsed);
    for (int i = 0; i < ERR_KINDS; i++) {
        if (!errors[i])
            continue;
        printf("%s\"%s\": %lld", first ? "" : ", ", error_names[i], errors[i]);
        first = 0;
    }
    printf("}, \"hist\": {");
    first = 1;
    for (int i = 0; i < MAX_BUCKETS; i++) {
        if (!hist[i])
            continue;
        printf("%s\"%d\": %lld", first ? "" : ", ", i, hist[i]);
        first = 0;
    }
    printf("}}\n");
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0;
    double duration = 5.0;
    long long max_requests = 0;
    struct epoll_event events[256];
    double start, end, last_sweep;

    if (argc < 2)
        usage();
    if (strcmp(argv[1], "udp") == 0)
        udp_mode = 1;
    else if (strcmp(argv[1], "tcp") != 0)
        usage();
    nslots = 16;
    for (int i = 2; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value)
            usage();
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(value);
        else if (strcmp(argv[i], "--host") == 0)
            host = value;
        else if (strcmp(argv[i], "--connections") == 0)
            nslots = atoi(value);
        else if (strcmp(argv[i], "--duration") == 0)
            duration = atof(value);
        else if (strcmp(argv[i], "--requests") == 0)
            max_requests = atoll(value);
        else if (strcmp(argv[i], "--timeout") == 0)
            timeout_s = atof(value);
        else
            usage();
        i++;
    }
    if (port <= 0 || port > 65535 || nslots < 1 || nslots > MAX_SLOTS || duration <= 0)
        usage();
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &address.sin_addr) != 1) {
        fprintf(stderr, "echoload: not an IPv4 address: %s\n", host);
        return 2;
    }
    memset(message, 'x', MESSAGE_SIZE - 1);
    message[MESSAGE_SIZE - 1] = '\n';
    slots = calloc((size_t)nslots, sizeof *slots);
    poller = epoll_create1(0);
    if (!slots || poller < 0) {
        perror("echoload");
        return 1;
    }
    start = now();
    end = start + duration;
    last_sweep = start;
    for (int i = 0; i < nslots; i++)
        open_slot(&slots[i]);
    for (;;) {
        double at = now();
        int ready, wait_ms;
        if (at >= end || (max_requests && answered >= max_requests))
            break;
        wait_ms = (int)((end - at) * 1000.0);
        ready = epoll_wait(poller, events, 256, wait_ms < 50 ? wait_ms : 50);
        for (int i = 0; i < ready; i++) {
            struct slot *slot = events[i].data.ptr;
            if (slot->fd < 0)
                continue;
            if (slot->connecting)
                on_writable(slot);
            else if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(slot);
        }
        at = now();
        if (at - last_sweep >= 0.05) {
            sweep(at);
            last_sweep = at;
        }
    }
    print_result(now() - start);
    for (int i = 0; i < nslots; i++)
        if (slots[i].fd >= 0)
            close(slots[i].fd);
    return 0;
}
