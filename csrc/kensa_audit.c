/*
 * kensa_audit.c: non-blocking kernel audit emission.
 *
 * Why a ring and a thread: the kernel builds an audit record inside sendto()
 * and sleeps the sender when its backlog is full, MSG_DONTWAIT or not (up to
 * backlog_wait_time; 625 ms per call was seen with auditd stopped). So in async
 * mode the calling thread only copies the record into a bounded byte ring under
 * a mutex and returns; one sender thread per emitter drains the ring into the
 * kernel. A full ring drops the record and counts it; the next record that gets
 * through is preceded by a gap record so a SIEM can see the hole.
 *
 * Fork: a child never touches its parent's ring, socket or (absent) sender
 * thread. A pthread_atfork child handler bumps a generation counter; every
 * entry point compares it with the emitter's and, in a child, abandons the
 * inherited state and starts afresh.
 */
#define _GNU_SOURCE
#include "kensa_audit.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/netlink.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* A ring entry is this header, the body, its NUL, padding to 8. The netlink
 * header sits right before the body so the sender sends in place. */
#define ENTRY_HDR (sizeof(struct entry_hdr))
#define ENTRY_WRAP 1u
#define ENTRY_GAP 2u
/* The sender polls the ring this often for a while after it ran dry, so that
 * callers in a busy batch never pay for waking it; then it sleeps until woken. */
#define LINGER_NS 1000000L
#define LINGER_ROUNDS 20
#define SEND_BUF (NLMSG_HDRLEN + KENSA_MAX_BODY + 1)
/* Records the sender handles per lock round trip; replies are drained once
 * per batch. */
#define SEND_BATCH 256
/* Longest wait any deadline is computed for (about 31 years): keeps the
 * nanosecond arithmetic far from overflow whatever the caller asks. */
#define MAX_WAIT_MS (1000LL * 1000 * 1000 * 1000)

struct entry_hdr {
    uint32_t len;
    uint32_t flags;
    struct nlmsghdr nl;
};

#define GAP_BODY_MAX 96
#define NEED(len) (ENTRY_HDR + (((uint64_t)(len) + 1 + 7) & ~(uint64_t)7))
/* A ring of KENSA_MIN_CAPACITY holds a gap record followed by the largest
 * record even when the first must wrap: an entry that does not fit before the
 * end goes to offset 0, so twice the pair always has room once drained. */
_Static_assert(KENSA_MIN_CAPACITY >= 2 * (NEED(KENSA_MAX_BODY) + NEED(GAP_BODY_MAX)),
               "KENSA_MIN_CAPACITY cannot hold the largest record");
_Static_assert(KENSA_MIN_CAPACITY % 8 == 0, "KENSA_MIN_CAPACITY must be a multiple of 8");
/* The kernel keeps AUDIT_MESSAGE_TEXT_MAX bytes of a body, the last one NUL. */
_Static_assert(KENSA_MAX_BODY == AUDIT_MESSAGE_TEXT_MAX - 1, "KENSA_MAX_BODY must follow the kernel's limit");

/* Everything a process generation owns. Shared by the handle, the sender
 * thread and kensa_flush_all; freed when all have let go (refs). Linked into
 * `states` from creation until freed. */
struct kstate {
    struct kstate *next;
    unsigned long gen;  /* fork generation it belongs to */
    pthread_mutex_t lock;
    pthread_cond_t work;    /* sender waits for records */
    pthread_cond_t drained; /* flushers and close wait for an empty ring */
    int refs;
    int fd;
    int mode;
    int msg_type;
    int closing;        /* close() asked the sender to stop */
    int stop;           /* atomic: the sender must not start another send */
    int orphaned;       /* the handle was freed: exit once drained */
    int in_send;        /* sync sends in flight, which use fd without the lock */
    int sender_exited;
    int sender_asleep;  /* callers must signal `work` */
    int flushers;
    int reason;
    int reason_errno;
    pthread_t sender;
    int has_sender;
    unsigned char *ring;
    uint64_t cap;
    uint64_t head;      /* read offset, monotonic */
    uint64_t tail;      /* write offset, monotonic */
    uint64_t pending_gap;
    uint64_t next_seq;  /* the last sequence number handed out */
    kensa_stats stats;
    /* The kernel's audit state as last read, under lock. */
    int status_pending; /* an AUDIT_GET is on its way */
    int status_refused; /* the kernel refuses AUDIT_GET here for good: stop asking */
    uint64_t checked_ns;
    int kernel_enabled;
    int kernel_errno;
    uint32_t kernel_pid;
};

struct kensa_emitter {
    int mode;
    int msg_type;
    size_t capacity;
    unsigned long gen;
    struct kstate *st;
    int closed;         /* atomic */
    uint64_t no_state;  /* atomic: records emitted in a child that got no state */
};

/* Process-wide state. fork_gen changes only in the atfork child handler (one
 * thread exists then), or in generation() when the handlers are missing. reinit_lock is held across fork by the prepare handler
 * so a child never inherits it locked by a thread that no longer exists. */
static unsigned long fork_gen;
static pthread_mutex_t reinit_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t process_once = PTHREAD_ONCE_INIT;
static int (*libaudit_open)(void);
/* Whether the atfork handlers are in place; when pthread_atfork failed, every
 * entry point falls back to comparing the pid. */
static int atfork_ok;
static pid_t init_pid;
/* Every state of every generation, linked through next, guarded by
 * reinit_lock: kensa_flush_all finds the ones whose handle was freed while
 * they still drain. A forked child keeps its parent's entries reachable and
 * never touches them (their locks may be held by threads that do not exist
 * there; their copy-on-write pages are best left alone). */
static struct kstate *states;

static void atfork_prepare(void) { pthread_mutex_lock(&reinit_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&reinit_lock); }
static void atfork_child(void)
{
    __atomic_add_fetch(&fork_gen, 1, __ATOMIC_SEQ_CST);
    init_pid = getpid();
    pthread_mutex_unlock(&reinit_lock);
}

static void process_init(void)
{
    void *h = dlopen("libaudit.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h != NULL)
        *(void **)(&libaudit_open) = dlsym(h, "audit_open");
    init_pid = getpid();
    /* Only fails with ENOMEM; then the pid check below notices forks. */
    atfork_ok = pthread_atfork(atfork_prepare, atfork_parent, atfork_child) == 0;
}

/* The current fork generation. Without atfork handlers a changed pid means a
 * fork happened: the first caller to see it bumps the generation. */
static unsigned long generation(void)
{
    if (!__atomic_load_n(&atfork_ok, __ATOMIC_ACQUIRE)) {
        pid_t now = getpid();
        pid_t seen = __atomic_load_n(&init_pid, __ATOMIC_ACQUIRE);
        if (seen != now &&
            __atomic_compare_exchange_n(&init_pid, &seen, now, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            __atomic_add_fetch(&fork_gen, 1, __ATOMIC_SEQ_CST);
    }
    return __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE);
}

int kensa_uses_libaudit(void)
{
    pthread_once(&process_once, process_init);
    return libaudit_open != NULL;
}

/* CLOCK_MONOTONIC cannot fail on Linux; should it, times read as zero, which
 * only makes waits time out at once and send timings meaningless. */
static uint64_t now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The CLOCK_MONOTONIC time ms milliseconds from now, for timed waits; ms is
 * clamped to [0, MAX_WAIT_MS] so the nanoseconds cannot overflow. */
static void deadline_in(struct timespec *ts, long long ms)
{
    uint64_t t;
    if (ms < 0)
        ms = 0;
    if (ms > MAX_WAIT_MS)
        ms = MAX_WAIT_MS;
    t = now_ns() + (uint64_t)ms * 1000000u;
    ts->tv_sec = (time_t)(t / 1000000000u);
    ts->tv_nsec = (long)(t % 1000000000u);
}

static int open_socket(int *err)
{
    int fd;
    pthread_once(&process_once, process_init);
    if (libaudit_open != NULL)
        fd = libaudit_open();
    else
        fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_AUDIT);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    /* Older libaudit opens without SOCK_CLOEXEC. */
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        *err = errno;
        close(fd);
        return -1;
    }
    *err = 0;
    return fd;
}

static int reason_for_errno(int e)
{
    switch (e) {
    case EPERM: return KENSA_OFF_REFUSED_EPERM;
    case ECONNREFUSED: return KENSA_OFF_REFUSED_ECONNREFUSED;
    case EPROTONOSUPPORT:
    case EAFNOSUPPORT: return KENSA_OFF_NO_KERNEL_AUDIT;
    default: return KENSA_ON;
    }
}

static int in_initial_userns(void)
{
    char buf[128];
    unsigned long a, b, c;
    ssize_t n;
    int fd = open("/proc/self/uid_map", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1; /* unknown: a refusal by the kernel will tell */
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    if (sscanf(buf, "%lu %lu %lu", &a, &b, &c) != 3)
        return -1;
    /* The initial namespace maps the whole range onto itself, in one line. */
    return a == 0 && b == 0 && c == 4294967295UL && strchr(buf, '\n') == buf + n - 1;
}

int kensa_probe(int *err)
{
    struct __user_cap_header_struct hdr;
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    int fd;

    *err = 0;
    memset(&hdr, 0, sizeof hdr);
    memset(data, 0, sizeof data);
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    hdr.pid = 0;
    if (syscall(SYS_capget, &hdr, data) != 0) {
        *err = errno;
        return KENSA_OFF_NO_CAPABILITY;
    }
    if (!(data[CAP_TO_INDEX(CAP_AUDIT_WRITE)].effective & CAP_TO_MASK(CAP_AUDIT_WRITE)))
        return KENSA_OFF_NO_CAPABILITY;
    if (in_initial_userns() == 0)
        return KENSA_OFF_USER_NAMESPACE;
    fd = open_socket(err);
    if (fd < 0) {
        int r = reason_for_errno(*err);
        return r == KENSA_ON ? KENSA_OFF_SOCKET_ERROR : r;
    }
    close(fd);
    return KENSA_ON;
}

/* What the replies queued on a socket said. */
struct replies {
    int refused;         /* records the kernel refused */
    int refusal;         /* errno of the last refusal */
    int status_seen;     /* an AUDIT_GET reply or its error arrived */
    int status_errno;    /* the error it got, 0 when *status is filled */
    struct audit_status status;
};

/* Reads queued replies without blocking and sorts them: the kernel answers a
 * refused record with an NLMSG_ERROR even without NLM_F_ACK, and an AUDIT_GET
 * with its status (or an error naming AUDIT_GET). */
static void drain_replies(int fd, struct replies *r)
{
    union {
        struct nlmsghdr h;
        char b[8192];
    } buf;
    for (;;) {
        ssize_t n = recv(fd, &buf, sizeof buf, MSG_DONTWAIT);
        struct nlmsghdr *h;
        size_t left;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* EAGAIN: nothing queued. ENOBUFS: replies were lost; the next
             * send that is refused will be seen again. */
            return;
        }
        left = (size_t)n;
        for (h = &buf.h; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_type == NLMSG_ERROR &&
                h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct nlmsgerr))) {
                const struct nlmsgerr *e = NLMSG_DATA(h);
                if (e->error == 0)
                    continue;
                if (e->msg.nlmsg_type == AUDIT_GET) {
                    r->status_seen = 1;
                    r->status_errno = -e->error;
                } else {
                    r->refused++;
                    r->refusal = -e->error;
                }
            } else if (h->nlmsg_type == AUDIT_GET) {
                size_t got = h->nlmsg_len - NLMSG_HDRLEN;
                /* Older kernels send a shorter struct: missing fields read 0. */
                memset(&r->status, 0, sizeof r->status);
                memcpy(&r->status, NLMSG_DATA(h), got < sizeof r->status ? got : sizeof r->status);
                r->status_seen = 1;
                r->status_errno = 0;
            }
        }
    }
}

/* Sends AUDIT_GET on fd; 0 or an errno. */
static int request_status(int fd)
{
    struct nlmsghdr h;
    struct sockaddr_nl addr;
    ssize_t n;
    memset(&addr, 0, sizeof addr);
    addr.nl_family = AF_NETLINK;
    memset(&h, 0, sizeof h);
    h.nlmsg_len = NLMSG_LENGTH(0);
    h.nlmsg_type = AUDIT_GET;
    h.nlmsg_flags = NLM_F_REQUEST;
    do {
        n = sendto(fd, &h, h.nlmsg_len, 0, (struct sockaddr *)&addr, sizeof addr);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? errno : 0;
}

/* Waits up to KENSA_STATUS_WAIT_MS for the answer to an AUDIT_GET sent on fd
 * (the kernel sends it from a thread of its own, so it may come after sendto
 * returned). Refusals of records that arrive meanwhile are kept in *r.
 * Returns 0 with r->status filled, or an errno. */
static int await_status(int fd, struct replies *r)
{
    uint64_t deadline = now_ns() + (uint64_t)KENSA_STATUS_WAIT_MS * 1000000u;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        uint64_t now;
        int rc;
        drain_replies(fd, r);
        if (r->status_seen)
            return r->status_errno;
        now = now_ns();
        if (now >= deadline)
            return ETIMEDOUT;
        rc = poll(&p, 1, (int)((deadline - now) / 1000000u) + 1);
        if (rc < 0 && errno != EINTR)
            return errno;
    }
}

/* Asks the kernel on fd and waits for the answer; 0 or an errno. */
static int query_status(int fd, struct replies *r)
{
    int err = request_status(fd);
    r->status_seen = 0;
    return err != 0 ? err : await_status(fd, r);
}

int kensa_kernel_status(struct audit_status *out)
{
    struct replies r;
    int err;
    int fd = open_socket(&err);
    if (fd < 0)
        return err;
    memset(&r, 0, sizeof r);
    err = query_status(fd, &r);
    close(fd);
    if (err == 0)
        memcpy(out, &r.status, sizeof r.status);
    return err;
}

/* Unlinks and frees a state nobody refers to any more. */
static void state_destroy(struct kstate *st)
{
    if (st->fd >= 0)
        close(st->fd);
    pthread_cond_destroy(&st->work);
    pthread_cond_destroy(&st->drained);
    pthread_mutex_destroy(&st->lock);
    free(st->ring);
    free(st);
}

static void unlink_state(struct kstate *st)
{
    for (struct kstate **p = &states; *p != NULL; p = &(*p)->next) {
        if (*p == st) {
            *p = st->next;
            break;
        }
    }
}

/* Drops one reference; callers hold no lock. kensa_flush_all takes
 * references only under reinit_lock and only while refs > 0, so a state
 * whose count reached 0 is unlinked before anyone else can find it. */
static void state_release(struct kstate *st)
{
    int last;
    pthread_mutex_lock(&st->lock);
    last = --st->refs == 0;
    pthread_mutex_unlock(&st->lock);
    if (!last)
        return;
    pthread_mutex_lock(&reinit_lock);
    unlink_state(st);
    pthread_mutex_unlock(&reinit_lock);
    state_destroy(st);
}

/* Switches the emitter off for good; callers hold st->lock. */
static void switch_off(struct kstate *st, int reason, int err)
{
    if (st->reason == KENSA_ON) {
        st->reason = reason;
        st->reason_errno = err;
    }
}

/* Closes the socket once nothing can use it any more: close() was called,
 * the sender has exited (or never existed) and no sync send is in flight.
 * Callers hold st->lock. */
static void maybe_close_fd(struct kstate *st)
{
    if (st->closing && st->fd >= 0 && st->in_send == 0 && (!st->has_sender || st->sender_exited)) {
        close(st->fd);
        st->fd = -1;
    }
}

/* Outcomes of sends made without the lock, booked later under it. */
struct tally {
    uint64_t sent, failed, gaps, stalls, worst_ns, discarded;
    uint64_t refused;
    int last_errno;
    int off_reason, off_errno;
};

/* Books what an AUDIT_GET said (err: why it failed); callers hold st->lock. */
static void set_kernel_state(struct kstate *st, int err, const struct audit_status *status)
{
    st->kernel_errno = err;
    st->kernel_enabled = err == 0 ? (int)status->enabled : KENSA_KERNEL_UNKNOWN;
    st->kernel_pid = err == 0 ? status->pid : 0;
    st->status_pending = 0;
    st->checked_ns = now_ns();
    /* No capability or a foreign user namespace does not change while the
     * process runs: asking again every 100 ms would only cost syscalls. */
    st->status_refused = err == EPERM || err == ECONNREFUSED;
}

/* Asks the kernel for its audit state again when the last answer is older
 * than KENSA_RECHECK_NS; returns 1 when a request went out, whose answer the
 * caller collects after its sends with settle_kernel_state. Called with no
 * lock held by a thread that may use st->fd. */
static int refresh_kernel_state(struct kstate *st)
{
    uint64_t now = now_ns();
    int due, err;
    pthread_mutex_lock(&st->lock);
    due = !st->status_pending && !st->status_refused && now - st->checked_ns >= KENSA_RECHECK_NS;
    if (due)
        st->status_pending = 1;
    pthread_mutex_unlock(&st->lock);
    if (!due)
        return 0;
    err = request_status(st->fd);
    if (err != 0) {
        pthread_mutex_lock(&st->lock);
        set_kernel_state(st, err, NULL);
        pthread_mutex_unlock(&st->lock);
        return 0;
    }
    return 1;
}

/* Books the kernel state found among the replies; when this thread asked
 * before its sends (asked), it waits for the answer first, unless another
 * sync caller already read and booked it. An answer of "disabled" covers the
 * records just sent: the kernel dropped them, so they move from sent to
 * discarded. */
static void settle_kernel_state(struct kstate *st, int asked, struct replies *r, struct tally *t)
{
    int err = 0;
    if (asked && !r->status_seen) {
        int booked;
        pthread_mutex_lock(&st->lock);
        booked = !st->status_pending;
        pthread_mutex_unlock(&st->lock);
        if (booked)
            return;
        err = await_status(st->fd, r);
    }
    if (!r->status_seen && !asked)
        return;
    pthread_mutex_lock(&st->lock);
    if (r->status_seen)
        set_kernel_state(st, r->status_errno, &r->status);
    else
        set_kernel_state(st, err, NULL);
    pthread_mutex_unlock(&st->lock);
    if (r->status_seen && r->status_errno == 0 && r->status.enabled == KENSA_KERNEL_DISABLED) {
        t->discarded += t->sent;
        t->sent = 0;
    }
}

/* Whether the kernel is known to discard user records (enabled 0). */
static int kernel_discards(struct kstate *st)
{
    int off;
    pthread_mutex_lock(&st->lock);
    off = st->kernel_enabled == KENSA_KERNEL_DISABLED;
    pthread_mutex_unlock(&st->lock);
    return off;
}

/* Before sending: asks the kernel again when due and, while it is known to
 * discard records, waits for the answer so records flow again as soon as
 * audit is back on. Sets *discarding (send nothing, count the records
 * discarded); returns 1 when an answer is still to be collected after the
 * sends (settle_kernel_state). */
static int check_before_sending(struct kstate *st, struct replies *r, struct tally *t, int *discarding)
{
    int asked = refresh_kernel_state(st);
    if (asked && kernel_discards(st)) {
        settle_kernel_state(st, 1, r, t);
        asked = 0;
    }
    *discarding = kernel_discards(st);
    return asked;
}

/* Sends one message: h is followed by body_len bytes of body and a NUL.
 * Called with no lock held. Returns 0 or an errno. */
static int send_record(struct kstate *st, struct nlmsghdr *h, uint32_t body_len, uint64_t *elapsed)
{
    struct sockaddr_nl addr;
    uint64_t t0 = now_ns();
    ssize_t n;
    int err = 0;

    memset(&addr, 0, sizeof addr);
    addr.nl_family = AF_NETLINK;
    /* The kernel overwrites the last payload byte with NUL: count ours. */
    h->nlmsg_len = NLMSG_LENGTH(body_len + 1);
    h->nlmsg_type = (uint16_t)st->msg_type;
    h->nlmsg_flags = NLM_F_REQUEST;
    h->nlmsg_seq = 0;
    h->nlmsg_pid = 0;
    do {
        n = sendto(st->fd, h, h->nlmsg_len, MSG_DONTWAIT, (struct sockaddr *)&addr, sizeof addr);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        err = errno;
    *elapsed = now_ns() - t0;
    return err;
}

static void tally_off(struct tally *t, int err)
{
    if (reason_for_errno(err) != KENSA_ON && t->off_reason == KENSA_ON) {
        t->off_reason = reason_for_errno(err);
        t->off_errno = err;
    }
}

static void tally_send(struct tally *t, int err, uint64_t elapsed, int gap)
{
    if (elapsed > t->worst_ns)
        t->worst_ns = elapsed;
    if (elapsed > KENSA_STALL_NS)
        t->stalls++;
    if (err != 0) {
        t->last_errno = err;
        if (!gap)
            t->failed++;
        tally_off(t, err);
        return;
    }
    if (gap)
        t->gaps++;
    else
        t->sent++;
}

static void tally_replies(struct tally *t, const struct replies *r)
{
    if (r->refused > 0) {
        t->refused += (uint64_t)r->refused;
        t->last_errno = r->refusal;
        tally_off(t, r->refusal);
    }
}

/* Adds a tally to the counters; callers hold st->lock. */
static void book(struct kstate *st, const struct tally *t)
{
    kensa_stats *s = &st->stats;
    uint64_t r = t->refused;
    s->sent += t->sent;
    s->failed += t->failed;
    s->gaps += t->gaps;
    s->stalls += t->stalls;
    s->dropped += t->discarded;
    s->discarded += t->discarded;
    if (t->worst_ns > s->worst_send_ns)
        s->worst_send_ns = t->worst_ns;
    if (t->last_errno)
        s->last_errno = t->last_errno;
    /* Refusals answer records already counted as sent: move them. */
    if (r > s->sent)
        r = s->sent;
    s->sent -= r;
    s->failed += r;
    if (t->off_reason != KENSA_ON)
        switch_off(st, t->off_reason, t->off_errno);
}

static uint64_t align8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

/* Reserves room for a body of len bytes; returns the body pointer or NULL
 * when the ring is full. Callers hold st->lock. */
static unsigned char *ring_reserve(struct kstate *st, uint32_t len, uint32_t flags)
{
    uint64_t need = NEED(len);
    uint64_t off = st->tail % st->cap;
    uint64_t used = st->tail - st->head;
    uint64_t waste = 0;
    struct entry_hdr *e;

    if (off + need > st->cap)
        waste = st->cap - off; /* a wrap marker fills the end */
    if (used + waste + need > st->cap)
        return NULL;
    if (waste) {
        e = (struct entry_hdr *)(st->ring + off);
        e->len = 0;
        e->flags = ENTRY_WRAP;
        st->tail += waste;
        off = 0;
    }
    e = (struct entry_hdr *)(st->ring + off);
    e->len = len;
    e->flags = flags;
    st->tail += need;
    return st->ring + off + ENTRY_HDR;
}

/* Removes every queued record, counting each as failed (the kernel refused
 * emission for good) or dropped (close() abandoned it); callers hold
 * st->lock. */
static void discard_queue(struct kstate *st, int as_failed)
{
    while (st->head != st->tail) {
        struct entry_hdr *e = (struct entry_hdr *)(st->ring + st->head % st->cap);
        if (e->flags & ENTRY_WRAP) {
            st->head += st->cap - st->head % st->cap;
            continue;
        }
        if (!(e->flags & ENTRY_GAP)) {
            if (as_failed)
                st->stats.failed++;
            else
                st->stats.dropped++;
        }
        st->head += NEED(e->len);
    }
}

/* Writes "seq=N " at dst; returns its length (at most KENSA_SEQ_ROOM). */
static size_t put_seq(unsigned char *dst, uint64_t seq)
{
    char digits[20];
    size_t n = 0, i;
    do {
        digits[n++] = (char)('0' + seq % 10);
        seq /= 10;
    } while (seq != 0);
    memcpy(dst, "seq=", 4);
    for (i = 0; i < n; i++)
        dst[4 + i] = (unsigned char)digits[n - 1 - i];
    dst[4 + n] = ' ';
    return 5 + n;
}

static size_t seq_len(uint64_t seq)
{
    size_t n = 1;
    while (seq >= 10) {
        seq /= 10;
        n++;
    }
    return 5 + n;
}

/* The sender reads [head, tail) in place without the lock: callers write only
 * at or beyond tail and count [head, tail) as used, and head moves only when
 * the sender retakes the lock after sending. */
static void *sender_main(void *arg)
{
    struct kstate *st = arg;
    int idle_rounds = 0;

    pthread_mutex_lock(&st->lock);
    for (;;) {
        struct tally t;
        struct replies r;
        uint64_t pos, end;
        int n, discarding, asked;

        if (st->reason != KENSA_ON && st->reason != KENSA_OFF_CLOSED)
            discard_queue(st, 1);
        if (__atomic_load_n(&st->stop, __ATOMIC_ACQUIRE))
            discard_queue(st, 0);
        if (st->head == st->tail) {
            if (st->flushers)
                pthread_cond_broadcast(&st->drained);
            if (st->closing || st->orphaned)
                break;
            if (idle_rounds < LINGER_ROUNDS) {
                struct timespec ts;
                uint64_t t_ns = now_ns() + LINGER_NS;
                ts.tv_sec = (time_t)(t_ns / 1000000000u);
                ts.tv_nsec = (long)(t_ns % 1000000000u);
                idle_rounds++;
                pthread_cond_timedwait(&st->work, &st->lock, &ts);
            } else {
                st->sender_asleep = 1;
                pthread_cond_wait(&st->work, &st->lock);
                st->sender_asleep = 0;
            }
            continue;
        }
        idle_rounds = 0;
        pos = st->head;
        end = st->tail;
        pthread_mutex_unlock(&st->lock);

        memset(&t, 0, sizeof t);
        memset(&r, 0, sizeof r);
        /* With audit disabled the kernel drops user records without a word:
         * count them as discarded rather than pretend they were logged. */
        asked = check_before_sending(st, &r, &t, &discarding);
        for (n = 0; pos != end && n < SEND_BATCH && t.off_reason == KENSA_ON; n++) {
            struct entry_hdr *e = (struct entry_hdr *)(st->ring + pos % st->cap);
            uint64_t elapsed;
            int err;
            if (e->flags & ENTRY_WRAP) {
                pos += st->cap - pos % st->cap;
                continue;
            }
            if (__atomic_load_n(&st->stop, __ATOMIC_ACQUIRE))
                break;
            if (discarding) {
                if (!(e->flags & ENTRY_GAP))
                    t.discarded++;
            } else {
                err = send_record(st, &e->nl, e->len, &elapsed);
                tally_send(&t, err, elapsed, (e->flags & ENTRY_GAP) != 0);
            }
            pos += NEED(e->len);
        }
        drain_replies(st->fd, &r);
        settle_kernel_state(st, asked, &r, &t);
        tally_replies(&t, &r);

        pthread_mutex_lock(&st->lock);
        st->head = pos;
        book(st, &t);
    }
    st->sender_exited = 1;
    maybe_close_fd(st);
    pthread_cond_broadcast(&st->drained);
    pthread_mutex_unlock(&st->lock);
    state_release(st);
    return NULL;
}

/* Initializes the lock and condition variables; returns 0 or an error number. */
static int init_sync(struct kstate *st)
{
    pthread_condattr_t ca;
    int rc = pthread_mutex_init(&st->lock, NULL);
    if (rc != 0)
        return rc;
    rc = pthread_condattr_init(&ca);
    if (rc == 0) {
        rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        if (rc == 0)
            rc = pthread_cond_init(&st->work, &ca);
        if (rc == 0) {
            rc = pthread_cond_init(&st->drained, &ca);
            if (rc != 0)
                pthread_cond_destroy(&st->work);
        }
        pthread_condattr_destroy(&ca);
    }
    if (rc != 0)
        pthread_mutex_destroy(&st->lock);
    return rc;
}

/* A state that only says why emission is off, so emits count as dropped. */
static struct kstate *state_off(int mode, int reason, int err)
{
    struct kstate *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    if (init_sync(st) != 0) {
        free(st);
        return NULL;
    }
    st->fd = -1;
    st->refs = 1;
    st->mode = mode;
    st->stats.mode = mode;
    st->reason = reason;
    st->reason_errno = err;
    st->kernel_enabled = KENSA_KERNEL_UNKNOWN;
    st->sender_exited = 1;
    return st;
}

/* Callers hold reinit_lock; the new state is linked into `states`. */
static struct kstate *state_new(int mode, int msg_type, size_t capacity, unsigned long gen, int *reason, int *err)
{
    struct kstate *st = calloc(1, sizeof *st);
    sigset_t all, old;
    int rc;

    *reason = KENSA_OFF_NO_MEMORY;
    *err = ENOMEM;
    if (st == NULL)
        return NULL;
    st->fd = -1;
    st->mode = mode;
    st->msg_type = msg_type;
    st->refs = 1;
    st->gen = gen;
    st->stats.mode = mode;
    st->kernel_enabled = KENSA_KERNEL_UNKNOWN;
    rc = init_sync(st);
    if (rc != 0) {
        *err = rc;
        free(st);
        return NULL;
    }

    st->fd = open_socket(err);
    if (st->fd < 0) {
        *reason = reason_for_errno(*err);
        if (*reason == KENSA_ON)
            *reason = KENSA_OFF_SOCKET_ERROR;
        state_destroy(st);
        return NULL;
    }
    {
        /* Know the kernel's state before the first record; later reads do
         * not wait. Refusals cannot be queued yet: nothing was sent. */
        struct replies r;
        memset(&r, 0, sizeof r);
        set_kernel_state(st, query_status(st->fd, &r), &r.status);
    }
    if (mode == KENSA_MODE_ASYNC) {
        st->cap = align8(capacity < KENSA_MIN_CAPACITY ? KENSA_MIN_CAPACITY : capacity);
        st->ring = malloc(st->cap);
        if (st->ring == NULL) {
            *reason = KENSA_OFF_NO_MEMORY;
            *err = ENOMEM;
            state_destroy(st);
            return NULL;
        }
        /* Fault the pages in now, not on a caller's emit. Not zeroes: the
         * compiler may turn malloc + memset(0) into calloc, which touches
         * nothing on a fresh mapping. */
        memset(st->ring, 0xa5, st->cap);
        /* The sender must never run Python's signal handlers' C side: it
         * starts with every signal blocked, or not at all. */
        sigfillset(&all);
        rc = pthread_sigmask(SIG_SETMASK, &all, &old);
        if (rc == 0) {
            st->refs = 2;
            rc = pthread_create(&st->sender, NULL, sender_main, st);
            if (pthread_sigmask(SIG_SETMASK, &old, NULL) != 0 && rc == 0) {
                /* Cannot happen with a mask we just read back; should it,
                 * the caller's thread keeps every signal blocked, which is
                 * worse than no emission: stop the sender and give up. */
                pthread_mutex_lock(&st->lock);
                st->closing = 1;
                switch_off(st, KENSA_OFF_THREAD_ERROR, EINVAL);
                pthread_cond_signal(&st->work);
                pthread_mutex_unlock(&st->lock);
                pthread_join(st->sender, NULL);
                *reason = KENSA_OFF_THREAD_ERROR;
                *err = EINVAL;
                state_destroy(st);
                return NULL;
            }
        }
        if (rc != 0) {
            *reason = KENSA_OFF_THREAD_ERROR;
            *err = rc;
            state_destroy(st);
            return NULL;
        }
        st->has_sender = 1;
    }
    st->next = states;
    states = st;
    *reason = KENSA_ON;
    *err = 0;
    return st;
}

kensa_emitter *kensa_emitter_new(int mode, int msg_type, size_t capacity, int *reason, int *err)
{
    kensa_emitter *k;
    if (mode != KENSA_MODE_ASYNC && mode != KENSA_MODE_SYNC) {
        *reason = KENSA_OFF_SOCKET_ERROR;
        *err = EINVAL;
        return NULL;
    }
    k = calloc(1, sizeof *k);
    if (k == NULL) {
        *reason = KENSA_OFF_NO_MEMORY;
        *err = ENOMEM;
        return NULL;
    }
    pthread_once(&process_once, process_init);
    k->mode = mode;
    k->msg_type = msg_type;
    k->capacity = capacity;
    pthread_mutex_lock(&reinit_lock);
    k->gen = generation();
    k->st = state_new(mode, msg_type, capacity, k->gen, reason, err);
    pthread_mutex_unlock(&reinit_lock);
    if (k->st == NULL) {
        free(k);
        return NULL;
    }
    return k;
}

/* Returns the state of the current process generation. In a forked child the
 * inherited state belongs to the parent: its sender thread does not exist
 * here and its lock may be held forever, so it is never locked or destroyed.
 * A state whose handle was still live is reachable only through this handle
 * here: its memory is unlinked and freed and a fresh state is made. */
static struct kstate *current(kensa_emitter *k)
{
    unsigned long g = generation();
    struct kstate *st;
    int reason, err;

    if (__atomic_load_n(&k->gen, __ATOMIC_ACQUIRE) == g)
        return __atomic_load_n(&k->st, __ATOMIC_ACQUIRE);
    pthread_mutex_lock(&reinit_lock);
    g = generation();
    if (k->gen != g) {
        struct kstate *old = k->st;
        if (old != NULL) {
            unlink_state(old);
            if (old->fd >= 0)
                close(old->fd); /* our copy of the descriptor only */
            free(old->ring);
            free(old);
        }
        st = NULL;
        if (__atomic_load_n(&k->closed, __ATOMIC_ACQUIRE)) {
            reason = KENSA_OFF_CLOSED;
            err = 0;
        } else {
            st = state_new(k->mode, k->msg_type, k->capacity, g, &reason, &err);
        }
        if (st == NULL)
            st = state_off(k->mode, reason, err);
        __atomic_store_n(&k->st, st, __ATOMIC_RELEASE);
        __atomic_store_n(&k->gen, g, __ATOMIC_RELEASE);
    }
    st = k->st;
    pthread_mutex_unlock(&reinit_lock);
    return st;
}

/* The state of this process generation, or NULL in a child that has not
 * emitted yet: flush, close and stats need not start a sender there. */
static struct kstate *peek(kensa_emitter *k)
{
    if (__atomic_load_n(&k->gen, __ATOMIC_ACQUIRE) != generation())
        return NULL;
    return __atomic_load_n(&k->st, __ATOMIC_ACQUIRE);
}

/* Sends one record on the caller's thread; the caller counted it emitted and
 * took in_send under st->lock. */
static long long emit_sync(struct kstate *st, uint64_t seq, const char *head, size_t head_len,
                           const char *mid, size_t mid_len, const char *tail, size_t tail_len)
{
    union {
        struct nlmsghdr h;
        unsigned char b[SEND_BUF];
    } msg;
    unsigned char *body = msg.b + NLMSG_HDRLEN;
    size_t len = head_len;
    struct tally t;
    struct replies r;
    uint64_t elapsed = 0;
    int err = 0, discarding, asked;
    long long ret;

    memcpy(body, head, head_len);
    len += put_seq(body + len, seq);
    memcpy(body + len, mid, mid_len);
    len += mid_len;
    memcpy(body + len, tail, tail_len);
    len += tail_len;
    body[len] = '\0';
    memset(&t, 0, sizeof t);
    memset(&r, 0, sizeof r);
    asked = check_before_sending(st, &r, &t, &discarding);
    if (discarding) {
        t.discarded++;
    } else {
        err = send_record(st, &msg.h, (uint32_t)len, &elapsed);
        tally_send(&t, err, elapsed, 0);
    }
    drain_replies(st->fd, &r);
    settle_kernel_state(st, asked, &r, &t);
    discarding = t.discarded > 0;
    tally_replies(&t, &r);
    pthread_mutex_lock(&st->lock);
    book(st, &t);
    st->in_send--;
    maybe_close_fd(st);
    if (st->closing && st->in_send == 0)
        pthread_cond_broadcast(&st->drained);
    pthread_mutex_unlock(&st->lock);
    if (err != 0)
        ret = -err;
    else if (r.refused > 0)
        ret = -r.refusal;
    else
        ret = discarding ? 0 : (long long)seq;
    return ret;
}

long long kensa_emit(kensa_emitter *k, const char *head, const char *mid, const char *tail)
{
    struct kstate *st = current(k);
    size_t head_len = strlen(head), mid_len = strlen(mid), tail_len = strlen(tail);
    size_t total = head_len + mid_len + tail_len;
    unsigned char *dst;
    uint64_t saved_tail, saved_seq, seq;
    int wake;

    if (st == NULL) {
        /* No memory for even an "off" state: still counted, as dropped. */
        __atomic_add_fetch(&k->no_state, 1, __ATOMIC_RELAXED);
        return 0;
    }
    pthread_mutex_lock(&st->lock);
    st->stats.emitted++;
    if (total + seq_len(st->next_seq + 2) > KENSA_MAX_BODY) {
        st->stats.failed++;
        st->stats.last_errno = EMSGSIZE;
        pthread_mutex_unlock(&st->lock);
        return -EMSGSIZE;
    }
    if (st->reason != KENSA_ON) {
        st->stats.dropped++;
        pthread_mutex_unlock(&st->lock);
        return 0;
    }
    if (st->mode == KENSA_MODE_SYNC) {
        seq = ++st->next_seq;
        st->in_send++;
        pthread_mutex_unlock(&st->lock);
        return emit_sync(st, seq, head, head_len, mid, mid_len, tail, tail_len);
    }
    saved_tail = st->tail;
    saved_seq = st->next_seq;
    if (st->pending_gap) {
        char gap[GAP_BODY_MAX];
        int n = snprintf(gap, sizeof gap, "op=kensa_audit_gap seq=%llu dropped=%llu res=failed",
                         (unsigned long long)(st->next_seq + 1), (unsigned long long)st->pending_gap);
        dst = (n > 0 && n < (int)sizeof gap) ? ring_reserve(st, (uint32_t)n, ENTRY_GAP) : NULL;
        if (dst != NULL) {
            memcpy(dst, gap, (size_t)n + 1);
            st->next_seq++;
        }
    }
    seq = st->next_seq + 1;
    dst = (st->pending_gap && st->tail == saved_tail) ? NULL
                                                      : ring_reserve(st, (uint32_t)(total + seq_len(seq)), 0);
    if (dst == NULL) {
        /* Neither goes in: a gap record must never announce a hole that is
         * still open. The sender reads only below tail, so rewinding is safe. */
        st->tail = saved_tail;
        st->next_seq = saved_seq;
        st->stats.dropped++;
        st->pending_gap++;
        pthread_mutex_unlock(&st->lock);
        return 0;
    }
    st->next_seq = seq;
    st->pending_gap = 0;
    memcpy(dst, head, head_len);
    dst += head_len;
    dst += put_seq(dst, seq);
    memcpy(dst, mid, mid_len);
    memcpy(dst + mid_len, tail, tail_len + 1);
    wake = st->sender_asleep;
    st->sender_asleep = 0;
    pthread_mutex_unlock(&st->lock);
    if (wake)
        pthread_cond_signal(&st->work);
    return (long long)seq;
}

/* Waits until the ring is empty with nothing in flight, or the deadline
 * (NULL: none) passes; callers hold st->lock. Returns 1 when drained. */
static int wait_drained(struct kstate *st, const struct timespec *deadline)
{
    int rc = 0;
    st->flushers++;
    pthread_cond_signal(&st->work);
    while (st->head != st->tail && !st->sender_exited && rc != ETIMEDOUT) {
        if (deadline == NULL)
            pthread_cond_wait(&st->drained, &st->lock);
        else
            rc = pthread_cond_timedwait(&st->drained, &st->lock, deadline);
    }
    st->flushers--;
    return st->head == st->tail;
}

int kensa_flush(kensa_emitter *k, long timeout_ms)
{
    struct kstate *st = peek(k);
    struct timespec ts;
    int done;
    if (st == NULL)
        return 1;
    if (timeout_ms >= 0)
        deadline_in(&ts, timeout_ms);
    pthread_mutex_lock(&st->lock);
    done = st->mode == KENSA_MODE_SYNC || wait_drained(st, timeout_ms >= 0 ? &ts : NULL);
    pthread_mutex_unlock(&st->lock);
    return done;
}

/* Records still in the ring (gap records not counted); callers hold st->lock. */
static uint64_t queued_records(const struct kstate *st)
{
    uint64_t done = st->stats.sent + st->stats.dropped + st->stats.failed;
    return done < st->stats.emitted ? st->stats.emitted - done : 0;
}

int kensa_flush_all(long timeout_ms, uint64_t *abandoned)
{
    struct timespec ts;
    struct kstate **held = NULL;
    size_t n = 0, cap = 0, i;
    unsigned long g = generation();

    *abandoned = 0;
    deadline_in(&ts, timeout_ms);
    pthread_mutex_lock(&reinit_lock);
    for (struct kstate *st = states; st != NULL; st = st->next)
        cap++;
    if (cap != 0)
        held = calloc(cap, sizeof *held);
    for (struct kstate *st = states; held != NULL && st != NULL; st = st->next) {
        if (st->gen != g || !st->has_sender)
            continue; /* a parent's state, or a sync one with nothing queued */
        pthread_mutex_lock(&st->lock);
        if (st->refs > 0) {
            st->refs++;
            held[n++] = st;
        }
        pthread_mutex_unlock(&st->lock);
    }
    pthread_mutex_unlock(&reinit_lock);
    if (cap != 0 && held == NULL)
        return 0; /* out of memory: nothing could be waited for */
    for (i = 0; i < n; i++) {
        struct kstate *st = held[i];
        pthread_mutex_lock(&st->lock);
        wait_drained(st, &ts);
        *abandoned += queued_records(st);
        pthread_mutex_unlock(&st->lock);
        state_release(st);
    }
    free(held);
    return *abandoned == 0;
}

/* Flushes up to timeout_ms, then stops the sender and gives it grace_ms to
 * leave. A sender the kernel holds in sendto is detached: it sends nothing
 * after that call and closes the socket when it exits. */
static int close_state(kensa_emitter *k, long timeout_ms, long grace_ms)
{
    struct kstate *st = peek(k);
    struct timespec ts;
    int done = 1, joinable;
    __atomic_store_n(&k->closed, 1, __ATOMIC_RELEASE);
    if (st == NULL)
        return 1;
    deadline_in(&ts, timeout_ms < 0 ? MAX_WAIT_MS : timeout_ms);
    pthread_mutex_lock(&st->lock);
    if (st->closing) {
        done = st->head == st->tail;
        pthread_mutex_unlock(&st->lock);
        return done;
    }
    if (st->has_sender)
        done = wait_drained(st, &ts);
    st->closing = 1;
    __atomic_store_n(&st->stop, 1, __ATOMIC_RELEASE);
    switch_off(st, KENSA_OFF_CLOSED, 0);
    pthread_cond_signal(&st->work);
    deadline_in(&ts, grace_ms);
    while ((st->has_sender ? !st->sender_exited : st->in_send > 0) &&
           pthread_cond_timedwait(&st->drained, &st->lock, &ts) != ETIMEDOUT)
        ;
    joinable = st->has_sender && st->sender_exited;
    maybe_close_fd(st);
    pthread_mutex_unlock(&st->lock);
    if (st->has_sender) {
        if (joinable)
            pthread_join(st->sender, NULL);
        else
            pthread_detach(st->sender);
    }
    return done;
}

int kensa_close(kensa_emitter *k, long timeout_ms)
{
    return close_state(k, timeout_ms, 50);
}

void kensa_emitter_free(kensa_emitter *k)
{
    struct kstate *st;
    if (k == NULL)
        return;
    /* Runs from Python's garbage collector, on whatever thread: never wait.
     * A sender still draining finishes on its own, then exits. In a child
     * the inherited state is the parent's: leave it alone. */
    st = peek(k);
    if (st != NULL) {
        pthread_mutex_lock(&st->lock);
        st->orphaned = 1;
        if (st->sender_asleep) {
            st->sender_asleep = 0;
            pthread_cond_signal(&st->work);
        }
        pthread_mutex_unlock(&st->lock);
        /* close() joined or detached it already. */
        if (st->has_sender && !__atomic_load_n(&k->closed, __ATOMIC_ACQUIRE))
            pthread_detach(st->sender);
        state_release(st);
    }
    free(k);
}

void kensa_get_stats(kensa_emitter *k, kensa_stats *out)
{
    struct kstate *st = peek(k);
    uint64_t lost = __atomic_load_n(&k->no_state, __ATOMIC_RELAXED);
    memset(out, 0, sizeof *out);
    out->mode = k->mode;
    out->kernel_enabled = KENSA_KERNEL_UNKNOWN;
    if (st == NULL) {
        out->reason = __atomic_load_n(&k->closed, __ATOMIC_ACQUIRE) ? KENSA_OFF_CLOSED : KENSA_ON;
    } else {
        pthread_mutex_lock(&st->lock);
        *out = st->stats;
        out->queued = queued_records(st);
        out->seq = st->next_seq;
        out->reason = st->reason;
        out->reason_errno = st->reason_errno;
        out->kernel_enabled = st->kernel_enabled;
        out->kernel_errno = st->kernel_errno;
        out->kernel_pid = st->kernel_pid;
        pthread_mutex_unlock(&st->lock);
    }
    out->emitted += lost;
    out->dropped += lost;
}
