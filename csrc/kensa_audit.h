/*
 * kensa_audit.h: the C surface of kensa's audit emitter.
 *
 * This file is both the C header and, with its preprocessor lines removed, the
 * cffi cdef (csrc/build_ffi.py reads it). Keep it to plain declarations.
 *
 * An emitter writes one kernel audit record per call. In async mode the caller
 * only copies the record into a bounded byte ring and a sender thread talks to
 * the kernel; in sync mode the caller sends. Counters satisfy, once flushed:
 *     emitted == sent + dropped + failed
 * (gap records announcing drops are counted in `gaps`, not in the others).
 */
#ifndef KENSA_AUDIT_H
#define KENSA_AUDIT_H

#include <stddef.h>
#include <stdint.h>

enum kensa_mode {
    KENSA_MODE_ASYNC = 0,
    KENSA_MODE_SYNC = 1
};

/* Why emission is off; KENSA_ON when it is on. */
enum kensa_reason {
    KENSA_ON = 0,
    KENSA_OFF_NO_CAPABILITY = 1,      /* CAP_AUDIT_WRITE not in the effective set */
    KENSA_OFF_USER_NAMESPACE = 2,     /* not the initial user namespace */
    KENSA_OFF_NO_KERNEL_AUDIT = 3,    /* socket(NETLINK_AUDIT): EPROTONOSUPPORT */
    KENSA_OFF_REFUSED_EPERM = 4,      /* the kernel answered a record with EPERM */
    KENSA_OFF_REFUSED_ECONNREFUSED = 5, /* ... with ECONNREFUSED */
    KENSA_OFF_SOCKET_ERROR = 6,       /* the socket could not be opened (errno kept) */
    KENSA_OFF_CLOSED = 7,             /* close() was called */
    KENSA_OFF_NO_MEMORY = 8,
    KENSA_OFF_THREAD_ERROR = 9        /* the sender thread could not be started */
};

/* Largest record body: the kernel copies at most AUDIT_MESSAGE_TEXT_MAX (8560)
 * bytes of it, the last being overwritten with NUL, so a body is at most 8559
 * characters followed by the NUL that kensa sends. */
/* KENSA_SEQ_ROOM: what `seq=N ` takes at most (20 digits), inside
 * KENSA_MAX_BODY. KENSA_MIN_CAPACITY holds a gap record and the largest
 * record at any ring offset (checked by a static assertion in the .c file). */
enum kensa_limits {
    KENSA_MAX_BODY = 8559,
    KENSA_SEQ_ROOM = 25,
    KENSA_MIN_CAPACITY = 32768,
    KENSA_STALL_NS = 10000000,
    /* How stale the sender's view of the kernel's audit state may get. */
    KENSA_RECHECK_NS = 100000000,
    /* How long an AUDIT_GET waits for the kernel's reply. */
    KENSA_STATUS_WAIT_MS = 500
};

/* The kernel's `enabled` values (its AUDIT_OFF/ON/LOCKED are not in the uapi
 * headers), and KENSA_KERNEL_UNKNOWN when it could not be asked. */
enum kensa_kernel_state {
    KENSA_KERNEL_UNKNOWN = -1,
    KENSA_KERNEL_DISABLED = 0,
    KENSA_KERNEL_ENABLED = 1,
    KENSA_KERNEL_LOCKED = 2
};

typedef struct kensa_emitter kensa_emitter;

typedef struct {
    uint64_t emitted;       /* records offered to emit() */
    uint64_t sent;          /* accepted by the kernel */
    uint64_t dropped;       /* ring full, the emitter off or closed, or discarded */
    uint64_t discarded;     /* part of dropped: kernel audit was disabled (enabled 0) */
    uint64_t failed;        /* send failed or the kernel refused the record */
    uint64_t gaps;          /* gap records sent to announce drops */
    uint64_t stalls;        /* sends slower than KENSA_STALL_NS */
    uint64_t worst_send_ns;
    uint64_t queued;        /* records in the ring, not yet sent */
    uint64_t seq;           /* the last sequence number used */
    int last_errno;
    int reason;             /* enum kensa_reason */
    int reason_errno;       /* errno that switched the emitter off, if any */
    int mode;
    int kernel_enabled;     /* enum kensa_kernel_state, as last read by this emitter */
    int kernel_errno;       /* why the last AUDIT_GET failed, 0 when it did not */
    uint32_t kernel_pid;    /* the audit daemon's pid the kernel reported, 0: none */
} kensa_stats;

/* The kernel's own struct, from <linux/audit.h>; csrc/kernel_cdef.h gives
 * cffi its fields so its layout comes from the kernel headers. */
struct audit_status;

/* Checks capability, user namespace and kernel audit; returns a kensa_reason
 * and stores the errno behind it in *err (0 when none). */
int kensa_probe(int *err);

/* Returns a new emitter, or NULL with *reason and *err set. */
kensa_emitter *kensa_emitter_new(int mode, int msg_type, size_t capacity, int *reason, int *err);

/* Asks the kernel for its audit status (AUDIT_GET, needs CAP_AUDIT_CONTROL).
 * Returns 0 with *out filled, or an errno: EPERM without the capability,
 * ECONNREFUSED outside the initial user namespace, ETIMEDOUT with no reply. */
int kensa_kernel_status(struct audit_status *out);

/* Emits head + "seq=N " + mid + tail (NUL-terminated; kensa's encoder never
 * puts a NUL in a record) as one record body. Returns the record's sequence
 * number (>= 1) when it was queued (async) or sent (sync); 0 when it was
 * dropped (ring full, emitter off or closed: the stats say why); -errno when
 * it is too long (-EMSGSIZE) or a sync send failed or was refused. Never
 * blocks on the ring in async mode. */
long long kensa_emit(kensa_emitter *k, const char *head, const char *mid, const char *tail);

/* Waits up to timeout_ms (< 0: forever) until every queued record was handed to
 * the kernel. Returns 1 when drained, 0 on timeout. */
int kensa_flush(kensa_emitter *k, long timeout_ms);

/* Waits, within one deadline of timeout_ms in total, until the queues of all
 * this process's emitters are drained, including those whose handle was freed
 * while records were still queued. Stores the number of records still queued
 * at the deadline in *abandoned; returns 1 when there are none. */
int kensa_flush_all(long timeout_ms, uint64_t *abandoned);

/* Flushes up to timeout_ms, then stops the sender: records still queued are
 * abandoned (counted as dropped), later emits count as dropped, and the
 * socket is closed once no send is in flight. A sender the kernel holds in a
 * send past a short grace is left to finish that one send and exit; it sends
 * nothing else. Returns 1 when everything was sent, 0 otherwise. */
int kensa_close(kensa_emitter *k, long timeout_ms);

/* Releases the handle; no call may use it afterwards. Never waits: records
 * still queued are sent by the sender, which then exits (kensa_flush_all
 * waits for them at interpreter exit). */
void kensa_emitter_free(kensa_emitter *k);

void kensa_get_stats(kensa_emitter *k, kensa_stats *out);

/* Whether the socket came from libaudit's audit_open (1) or socket() (0). */
int kensa_uses_libaudit(void);

#endif
