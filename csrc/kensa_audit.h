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
enum kensa_limits {
    KENSA_MAX_BODY = 8559,
    KENSA_MIN_CAPACITY = 1024,
    KENSA_STALL_NS = 10000000
};

typedef struct kensa_emitter kensa_emitter;

typedef struct {
    uint64_t emitted;       /* records offered to emit() */
    uint64_t sent;          /* accepted by the kernel */
    uint64_t dropped;       /* ring full, or the emitter off */
    uint64_t failed;        /* send failed or the kernel refused the record */
    uint64_t gaps;          /* gap records sent to announce drops */
    uint64_t stalls;        /* sends slower than KENSA_STALL_NS */
    uint64_t worst_send_ns;
    uint64_t queued;        /* records in the ring, not yet sent */
    int last_errno;
    int reason;             /* enum kensa_reason */
    int reason_errno;       /* errno that switched the emitter off, if any */
    int mode;
} kensa_stats;

/* Checks capability, user namespace and kernel audit; returns a kensa_reason
 * and stores the errno behind it in *err (0 when none). */
int kensa_probe(int *err);

/* Returns a new emitter, or NULL with *reason and *err set. */
kensa_emitter *kensa_emitter_new(int mode, int msg_type, size_t capacity, int *reason, int *err);

/* Emits head + mid + tail (NUL-terminated; kensa's encoder never puts a NUL
 * in a record) as one record body. Returns KENSA_ON when the record was queued
 * (async) or sent (sync), otherwise the kensa_reason or -errno of the failure;
 * never blocks on the ring in async mode. */
int kensa_emit(kensa_emitter *k, const char *head, const char *mid, const char *tail);

/* Waits up to timeout_ms (< 0: forever) until every queued record was handed to
 * the kernel. Returns 1 when drained, 0 on timeout. */
int kensa_flush(kensa_emitter *k, long timeout_ms);

/* Flushes up to timeout_ms, stops the sender and closes the socket. Later
 * emits count as dropped. Returns 1 when everything was sent, 0 otherwise. */
int kensa_close(kensa_emitter *k, long timeout_ms);

/* Releases the emitter; no call may use it afterwards. */
void kensa_emitter_free(kensa_emitter *k);

void kensa_get_stats(kensa_emitter *k, kensa_stats *out);

/* Whether the socket came from libaudit's audit_open (1) or socket() (0). */
int kensa_uses_libaudit(void);

#endif
