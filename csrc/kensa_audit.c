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
/* Records the sender handles per lock round trip. */
#define SEND_BATCH 256

struct entry_hdr {
    uint32_t len;
    uint32_t flags;
    struct nlmsghdr nl;
};

/* Everything a process generation owns. Shared by the handle and the sender
 * thread; freed when both have let go (refs). */
struct kstate {
    struct kstate *next_orphan;
    pthread_mutex_t lock;
    pthread_cond_t work;    /* sender waits for records */
    pthread_cond_t drained; /* flushers wait for an empty ring */
    int refs;
    int fd;
    int mode;
    int msg_type;
    int closing;        /* close() asked the sender to stop */
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
    kensa_stats stats;
    uint32_t seq;
};

struct kensa_emitter {
    int mode;
    int msg_type;
    size_t capacity;
    unsigned long gen;
    struct kstate *st;
    int closed;
};

/* Process-wide state. fork_gen changes only in the atfork child handler (one
 * thread exists then). reinit_lock is held across fork by the prepare handler
 * so a child never inherits it locked by a thread that no longer exists. */
static unsigned long fork_gen;
static pthread_mutex_t reinit_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t process_once = PTHREAD_ONCE_INIT;
static int (*libaudit_open)(void);
/* States whose handle was freed while their sender still drains, linked
 * through next_orphan, guarded by reinit_lock. The list keeps them reachable
 * in a forked child, where no sender will ever free them; the child never
 * frees them either: its copy-on-write pages are best left untouched. */
static struct kstate *orphans;

static void atfork_prepare(void) { pthread_mutex_lock(&reinit_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&reinit_lock); }
static void atfork_child(void)
{
    __atomic_add_fetch(&fork_gen, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&reinit_lock);
}

static void process_init(void)
{
    void *h = dlopen("libaudit.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h != NULL)
        *(void **)(&libaudit_open) = dlsym(h, "audit_open");
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
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

/* The CLOCK_MONOTONIC time ns nanoseconds from now, for timed waits. */
static void deadline_in(struct timespec *ts, long long ns)
{
    uint64_t t = now_ns() + (uint64_t)(ns < 0 ? 0 : ns);
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

static void state_release(struct kstate *st)
{
    int last;
    pthread_mutex_lock(&st->lock);
    last = --st->refs == 0;
    pthread_mutex_unlock(&st->lock);
    if (!last)
        return;
    if (st->fd >= 0)
        close(st->fd);
    pthread_cond_destroy(&st->work);
    pthread_cond_destroy(&st->drained);
    pthread_mutex_destroy(&st->lock);
    free(st->ring);
    free(st);
}

/* Switches the emitter off for good; callers hold st->lock. */
static void switch_off(struct kstate *st, int reason, int err)
{
    if (st->reason == KENSA_ON) {
        st->reason = reason;
        st->reason_errno = err;
    }
}

/* Reads queued replies without blocking. The kernel answers a refused record
 * with an NLMSG_ERROR even without NLM_F_ACK; returns the number of refused
 * records and the errno of the last one in *refusal. */
static int drain_replies(int fd, int *refusal)
{
    union {
        struct nlmsghdr h;
        char b[8192];
    } buf;
    int refused = 0;
    for (;;) {
        ssize_t n = recv(fd, &buf, sizeof buf, MSG_DONTWAIT);
        struct nlmsghdr *h;
        size_t left;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* EAGAIN: nothing queued. ENOBUFS: replies were lost; the next
             * send that is refused will be seen again. */
            return refused;
        }
        left = (size_t)n;
        for (h = &buf.h; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_type == NLMSG_ERROR &&
                h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct nlmsgerr))) {
                const struct nlmsgerr *e = NLMSG_DATA(h);
                if (e->error != 0) {
                    refused++;
                    *refusal = -e->error;
                }
            }
        }
    }
}

/* Sends one message: h is followed by body_len bytes of body and a NUL.
 * Called with no lock held. Returns 0 or an errno; *refused counts the
 * kernel's refusals seen in the replies. */
static int send_record(struct kstate *st, struct nlmsghdr *h, uint32_t body_len, uint32_t seq,
                       uint64_t *elapsed, int *refused, int *refusal)
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
    h->nlmsg_seq = seq;
    h->nlmsg_pid = 0;
    do {
        n = sendto(st->fd, h, h->nlmsg_len, MSG_DONTWAIT, (struct sockaddr *)&addr, sizeof addr);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        err = errno;
    *refused = drain_replies(st->fd, refusal);
    *elapsed = now_ns() - t0;
    return err;
}

/* Outcomes of sends made without the lock, booked later under it. */
struct tally {
    uint64_t sent, failed, gaps, stalls, worst_ns;
    uint64_t refused;
    int last_errno;
    int off_reason, off_errno;
};

static void tally_send(struct tally *t, int err, uint64_t elapsed, int refused, int refusal, int gap)
{
    if (elapsed > t->worst_ns)
        t->worst_ns = elapsed;
    if (elapsed > KENSA_STALL_NS)
        t->stalls++;
    if (err != 0) {
        t->last_errno = err;
        if (!gap)
            t->failed++;
        if (reason_for_errno(err) != KENSA_ON && t->off_reason == KENSA_ON) {
            t->off_reason = reason_for_errno(err);
            t->off_errno = err;
        }
        return;
    }
    if (gap)
        t->gaps++;
    else
        t->sent++;
    if (refused > 0) {
        t->refused += (uint64_t)refused;
        t->last_errno = refusal;
        if (reason_for_errno(refusal) != KENSA_ON && t->off_reason == KENSA_ON) {
            t->off_reason = reason_for_errno(refusal);
            t->off_errno = refusal;
        }
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
    uint64_t need = ENTRY_HDR + align8((uint64_t)len + 1);
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

/* Drops every queued record once the kernel refused emission for good;
 * callers hold st->lock. */
static void discard_queue(struct kstate *st)
{
    while (st->head != st->tail) {
        struct entry_hdr *e = (struct entry_hdr *)(st->ring + st->head % st->cap);
        if (e->flags & ENTRY_WRAP) {
            st->head += st->cap - st->head % st->cap;
            continue;
        }
        if (!(e->flags & ENTRY_GAP))
            st->stats.failed++;
        st->head += ENTRY_HDR + align8((uint64_t)e->len + 1);
    }
}

/* The sender reads [head, tail) in place without the lock: callers write only
 * at or beyond tail and count [head, tail) as used, and head moves only when
 * the sender retakes the lock after sending. */
static void *sender_main(void *arg)
{
    struct kstate *st = arg;
    int idle_rounds = 0;
    uint32_t seq = 0; /* kept here: a shared counter would bounce between cores */

    pthread_mutex_lock(&st->lock);
    for (;;) {
        struct tally t;
        uint64_t pos, end;
        int n;

        if (st->reason != KENSA_ON && st->reason != KENSA_OFF_CLOSED)
            discard_queue(st);
        if (st->head == st->tail) {
            if (st->flushers)
                pthread_cond_broadcast(&st->drained);
            if (st->closing)
                break;
            if (idle_rounds < LINGER_ROUNDS) {
                struct timespec ts;
                deadline_in(&ts, LINGER_NS);
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
        for (n = 0; pos != end && n < SEND_BATCH && t.off_reason == KENSA_ON; n++) {
            struct entry_hdr *e = (struct entry_hdr *)(st->ring + pos % st->cap);
            uint64_t elapsed;
            int err, refused = 0, refusal = 0;
            if (e->flags & ENTRY_WRAP) {
                pos += st->cap - pos % st->cap;
                continue;
            }
            err = send_record(st, &e->nl, e->len, ++seq, &elapsed, &refused, &refusal);
            tally_send(&t, err, elapsed, refused, refusal, (e->flags & ENTRY_GAP) != 0);
            pos += ENTRY_HDR + align8((uint64_t)e->len + 1);
        }

        pthread_mutex_lock(&st->lock);
        st->head = pos;
        book(st, &t);
    }
    st->sender_exited = 1;
    pthread_cond_broadcast(&st->drained);
    pthread_mutex_unlock(&st->lock);
    /* Set exited before unlinking: kensa_emitter_free links a state only
     * while its sender has not exited, under reinit_lock, so this finds it. */
    pthread_mutex_lock(&reinit_lock);
    for (struct kstate **p = &orphans; *p != NULL; p = &(*p)->next_orphan) {
        if (*p == st) {
            *p = st->next_orphan;
            break;
        }
    }
    pthread_mutex_unlock(&reinit_lock);
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

static struct kstate *state_new(int mode, int msg_type, size_t capacity, int *reason, int *err)
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
    st->stats.mode = mode;
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
        state_release(st);
        return NULL;
    }
    if (mode == KENSA_MODE_ASYNC) {
        st->cap = align8(capacity < KENSA_MIN_CAPACITY ? KENSA_MIN_CAPACITY : capacity);
        st->ring = malloc(st->cap);
        if (st->ring == NULL) {
            *reason = KENSA_OFF_NO_MEMORY;
            *err = ENOMEM;
            state_release(st);
            return NULL;
        }
        /* Fault the pages in now, not on a caller's emit. Not zeroes: the
         * compiler may turn malloc + memset(0) into calloc, which touches
         * nothing on a fresh mapping. */
        memset(st->ring, 0xa5, st->cap);
        /* The sender must never run Python's signal handlers' C side. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        st->refs = 2;
        rc = pthread_create(&st->sender, NULL, sender_main, st);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc != 0) {
            st->refs = 1;
            *reason = KENSA_OFF_THREAD_ERROR;
            *err = rc;
            state_release(st);
            return NULL;
        }
        st->has_sender = 1;
    }
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
    k->gen = __atomic_load_n(&fork_gen, __ATOMIC_SEQ_CST);
    k->st = state_new(mode, msg_type, capacity, reason, err);
    pthread_mutex_unlock(&reinit_lock);
    if (k->st == NULL) {
        free(k);
        return NULL;
    }
    return k;
}

/* Returns the state of the current process generation. In a forked child the
 * inherited state belongs to the parent: its sender thread does not exist
 * here and its lock may be held forever, so it is never locked or destroyed:
 * its memory, this child's copy that nothing else here can reach, is freed
 * and a fresh state is made. */
static struct kstate *current(kensa_emitter *k)
{
    unsigned long g = __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE);
    struct kstate *st;
    int reason, err;

    if (__atomic_load_n(&k->gen, __ATOMIC_ACQUIRE) == g)
        return __atomic_load_n(&k->st, __ATOMIC_ACQUIRE);
    pthread_mutex_lock(&reinit_lock);
    g = __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE);
    if (k->gen != g) {
        struct kstate *old = k->st;
        if (old != NULL) {
            if (old->fd >= 0)
                close(old->fd); /* our copy of the descriptor only */
            free(old->ring);
            free(old);
        }
        if (k->closed) {
            st = NULL;
            reason = KENSA_OFF_CLOSED;
            err = 0;
        } else {
            st = state_new(k->mode, k->msg_type, k->capacity, &reason, &err);
        }
        if (st == NULL) {
            /* Keep a state that says why, so emits count as dropped. */
            st = calloc(1, sizeof *st);
            if (st != NULL && init_sync(st) != 0) {
                free(st);
                st = NULL;
            }
            if (st != NULL) {
                st->fd = -1;
                st->refs = 1;
                st->mode = k->mode;
                st->stats.mode = k->mode;
                st->reason = reason;
                st->reason_errno = err;
                st->sender_exited = 1;
            }
        }
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
    if (__atomic_load_n(&k->gen, __ATOMIC_ACQUIRE) != __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE))
        return NULL;
    return __atomic_load_n(&k->st, __ATOMIC_ACQUIRE);
}

static int emit_sync(struct kstate *st, const char *head, size_t head_len,
                     const char *mid, size_t mid_len, const char *tail, size_t tail_len)
{
    union {
        struct nlmsghdr h;
        unsigned char b[SEND_BUF];
    } msg;
    unsigned char *body = msg.b + NLMSG_HDRLEN;
    uint32_t len = (uint32_t)(head_len + mid_len + tail_len);
    struct tally t;
    uint64_t elapsed;
    int err, refused, refusal = 0, reason;

    memcpy(body, head, head_len);
    memcpy(body + head_len, mid, mid_len);
    memcpy(body + head_len + mid_len, tail, tail_len);
    body[len] = '\0';
    err = send_record(st, &msg.h, len, __atomic_add_fetch(&st->seq, 1, __ATOMIC_RELAXED),
                      &elapsed, &refused, &refusal);
    memset(&t, 0, sizeof t);
    tally_send(&t, err, elapsed, refused, refusal, 0);
    pthread_mutex_lock(&st->lock);
    book(st, &t);
    reason = st->reason;
    pthread_mutex_unlock(&st->lock);
    if (err != 0)
        return -err;
    if (refused > 0)
        return -refusal;
    return reason;
}

int kensa_emit(kensa_emitter *k, const char *head, const char *mid, const char *tail)
{
    struct kstate *st = current(k);
    size_t head_len = strlen(head), mid_len = strlen(mid), tail_len = strlen(tail);
    size_t total = head_len + mid_len + tail_len;
    unsigned char *dst;
    uint64_t saved_tail;
    int wake, reason;

    if (st == NULL)
        return KENSA_OFF_NO_MEMORY;
    pthread_mutex_lock(&st->lock);
    st->stats.emitted++;
    reason = st->reason;
    if (total > KENSA_MAX_BODY) {
        st->stats.failed++;
        st->stats.last_errno = EMSGSIZE;
        pthread_mutex_unlock(&st->lock);
        return -EMSGSIZE;
    }
    if (reason != KENSA_ON) {
        st->stats.dropped++;
        pthread_mutex_unlock(&st->lock);
        return reason;
    }
    if (st->mode == KENSA_MODE_SYNC) {
        pthread_mutex_unlock(&st->lock);
        return emit_sync(st, head, head_len, mid, mid_len, tail, tail_len);
    }
    saved_tail = st->tail;
    if (st->pending_gap) {
        char gap[64];
        int n = snprintf(gap, sizeof gap, "op=kensa_audit_gap dropped=%llu res=failed",
                         (unsigned long long)st->pending_gap);
        dst = ring_reserve(st, (uint32_t)n, ENTRY_GAP);
        if (dst != NULL)
            memcpy(dst, gap, (size_t)n + 1);
    }
    dst = (st->pending_gap && st->tail == saved_tail) ? NULL : ring_reserve(st, (uint32_t)total, 0);
    if (dst == NULL) {
        /* Neither goes in: a gap record must never announce a hole that is
         * still open. The sender reads only below tail, so rewinding is safe. */
        st->tail = saved_tail;
        st->stats.dropped++;
        st->pending_gap++;
        pthread_mutex_unlock(&st->lock);
        return KENSA_ON;
    }
    st->pending_gap = 0;
    memcpy(dst, head, head_len);
    memcpy(dst + head_len, mid, mid_len);
    memcpy(dst + head_len + mid_len, tail, tail_len + 1);
    wake = st->sender_asleep;
    st->sender_asleep = 0;
    pthread_mutex_unlock(&st->lock);
    if (wake)
        pthread_cond_signal(&st->work);
    return KENSA_ON;
}

/* Waits for an empty ring with nothing in flight; callers hold st->lock. */
static int wait_drained(struct kstate *st, long timeout_ms)
{
    struct timespec ts;
    int rc = 0;
    if (timeout_ms >= 0)
        deadline_in(&ts, (long long)timeout_ms * 1000000);
    st->flushers++;
    pthread_cond_signal(&st->work);
    while (st->head != st->tail && !st->sender_exited && rc != ETIMEDOUT) {
        if (timeout_ms < 0)
            pthread_cond_wait(&st->drained, &st->lock);
        else
            rc = pthread_cond_timedwait(&st->drained, &st->lock, &ts);
    }
    st->flushers--;
    return st->head == st->tail;
}

int kensa_flush(kensa_emitter *k, long timeout_ms)
{
    struct kstate *st = peek(k);
    int done;
    if (st == NULL)
        return 1;
    pthread_mutex_lock(&st->lock);
    done = st->mode == KENSA_MODE_SYNC || wait_drained(st, timeout_ms);
    pthread_mutex_unlock(&st->lock);
    return done;
}

/* Flushes up to timeout_ms, then gives the sender grace_ms to leave; a sender
 * stuck in the kernel is detached and frees the state when it returns. */
static int close_state(kensa_emitter *k, long timeout_ms, long grace_ms)
{
    struct kstate *st = peek(k);
    int done = 1, joinable = 0;
    k->closed = 1;
    if (st == NULL)
        return 1;
    pthread_mutex_lock(&st->lock);
    if (st->closing) {
        done = st->head == st->tail;
        pthread_mutex_unlock(&st->lock);
        return done;
    }
    if (st->has_sender)
        done = wait_drained(st, timeout_ms);
    st->closing = 1;
    switch_off(st, KENSA_OFF_CLOSED, 0);
    pthread_cond_signal(&st->work);
    joinable = st->has_sender && st->sender_exited;
    if (st->has_sender && !joinable) {
        struct timespec ts;
        deadline_in(&ts, (long long)grace_ms * 1000000);
        while (!st->sender_exited &&
               pthread_cond_timedwait(&st->drained, &st->lock, &ts) != ETIMEDOUT)
            ;
        joinable = st->sender_exited;
    }
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
    /* Runs from Python's garbage collector, on whatever thread: never wait. */
    close_state(k, 0, 0);
    /* In a child the inherited state is the parent's: leave it alone. */
    st = peek(k);
    if (st != NULL) {
        pthread_mutex_lock(&reinit_lock);
        pthread_mutex_lock(&st->lock);
        if (st->has_sender && !st->sender_exited) {
            st->next_orphan = orphans;
            orphans = st;
        }
        pthread_mutex_unlock(&st->lock);
        pthread_mutex_unlock(&reinit_lock);
        state_release(st);
    }
    free(k);
}

void kensa_get_stats(kensa_emitter *k, kensa_stats *out)
{
    struct kstate *st = peek(k);
    uint64_t done;
    memset(out, 0, sizeof *out);
    out->mode = k->mode;
    if (st == NULL) {
        out->reason = k->closed ? KENSA_OFF_CLOSED : KENSA_ON;
        return;
    }
    pthread_mutex_lock(&st->lock);
    *out = st->stats;
    done = out->sent + out->dropped + out->failed;
    out->queued = done < out->emitted ? out->emitted - done : 0;
    out->reason = st->reason;
    out->reason_errno = st->reason_errno;
    pthread_mutex_unlock(&st->lock);
}
