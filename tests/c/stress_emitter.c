/*
 * Stress driver for csrc/kensa_audit.c, built with sanitizers or run under
 * valgrind by tests/c/run_sanitizers.sh. It checks the counters' invariant
 * (emitted == sent + dropped + failed once flushed) in every scenario:
 * concurrent async emitters, sync emits, a ring too small for the burst,
 * close while the sender is busy, and a fork storm.
 *
 * usage: stress_emitter [records-per-scenario]
 */
#include "kensa_audit.h"

#include <linux/audit.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static long records = 20000;
static const char head[] = "op=kensa_transaction phase=apply ";
static const char mid[] = "txn=\"stress\" rule=\"stress\" host=\"stress\"";
static const char tail[] = " res=success";

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

static kensa_emitter *make(int mode, size_t cap)
{
    int reason, err;
    kensa_emitter *k = kensa_emitter_new(mode, 1005, cap, &reason, &err);
    CHECK(k != NULL, "kensa_emitter_new: reason %d, %s", reason, strerror(err));
    return k;
}

static void emit_n(kensa_emitter *k, long n)
{
    for (long i = 0; i < n; i++)
        kensa_emit(k, head, mid, tail);
}

static void check_accounted(kensa_emitter *k, uint64_t expect, const char *what)
{
    kensa_stats s;
    kensa_get_stats(k, &s);
    CHECK(s.emitted == expect, "%s: emitted %llu, expected %llu", what,
          (unsigned long long)s.emitted, (unsigned long long)expect);
    CHECK(s.sent + s.dropped + s.failed == s.emitted && s.queued == 0,
          "%s: sent %llu + dropped %llu + failed %llu != emitted %llu (queued %llu)", what,
          (unsigned long long)s.sent, (unsigned long long)s.dropped, (unsigned long long)s.failed,
          (unsigned long long)s.emitted, (unsigned long long)s.queued);
    printf("%-24s emitted %8llu sent %8llu dropped %8llu failed %llu gaps %llu worst %.3f ms\n", what,
           (unsigned long long)s.emitted, (unsigned long long)s.sent, (unsigned long long)s.dropped,
           (unsigned long long)s.failed, (unsigned long long)s.gaps, s.worst_send_ns / 1e6);
}

static void *thread_emit(void *arg)
{
    emit_n(arg, records / 4);
    return NULL;
}

static void concurrent_async(void)
{
    kensa_emitter *k = make(KENSA_MODE_ASYNC, 64 << 10);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        CHECK(pthread_create(&t[i], NULL, thread_emit, k) == 0, "pthread_create");
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK(kensa_flush(k, 60000), "flush timed out");
    check_accounted(k, (uint64_t)(records / 4) * 4, "async, 4 threads");
    kensa_emitter_free(k);
}

static void sync_mode(void)
{
    kensa_emitter *k = make(KENSA_MODE_SYNC, 0);
    emit_n(k, records / 10);
    check_accounted(k, (uint64_t)(records / 10), "sync");
    kensa_emitter_free(k);
}

static void tiny_ring(void)
{
    kensa_emitter *k = make(KENSA_MODE_ASYNC, KENSA_MIN_CAPACITY);
    emit_n(k, records);
    CHECK(kensa_flush(k, 60000), "flush timed out");
    check_accounted(k, (uint64_t)records, "async, tiny ring");
    kensa_emitter_free(k);
}

/* The smallest ring (capacity 1 asks for the minimum) still carries the
 * largest record, and one more byte is refused. */
static void oversized(void)
{
    static char big[KENSA_MAX_BODY + 2];
    size_t max = KENSA_MAX_BODY - KENSA_SEQ_ROOM;
    kensa_emitter *k = make(KENSA_MODE_ASYNC, 1);
    kensa_stats s;
    memset(big, 'x', sizeof big - 1);
    big[max] = '\0';
    CHECK(kensa_emit(k, big, "", "") == 1, "max body refused");
    CHECK(kensa_flush(k, 10000), "flush timed out");
    kensa_get_stats(k, &s);
    CHECK(s.sent == 1, "max body not sent from the smallest ring");
    big[max] = 'x';
    CHECK(kensa_emit(k, big, "", "") == -EMSGSIZE, "oversize accepted");
    check_accounted(k, 2, "max and oversize body");
    kensa_emitter_free(k);
}

/* Handles freed with records still queued: flush_all waits for them all
 * within one deadline, and the senders then exit and free their states. */
static void freed_while_draining(void)
{
    uint64_t abandoned = 1;
    for (int i = 0; i < 4; i++) {
        kensa_emitter *k = make(KENSA_MODE_ASYNC, 1 << 20);
        emit_n(k, records / 4);
        kensa_emitter_free(k);
    }
    CHECK(kensa_flush_all(60000, &abandoned) == 1 && abandoned == 0,
          "flush_all left %llu records", (unsigned long long)abandoned);
    printf("%-24s 4 emitters\n", "freed while draining");
}

static void close_while_busy(void)
{
    for (int round = 0; round < 20; round++) {
        kensa_emitter *k = make(KENSA_MODE_ASYNC, 256 << 10);
        kensa_stats s;
        emit_n(k, records / 20);
        kensa_close(k, 0);
        emit_n(k, 10); /* after close: dropped, never a crash */
        kensa_get_stats(k, &s);
        CHECK(s.sent + s.dropped + s.failed == s.emitted, "close left records unaccounted");
        kensa_emitter_free(k);
    }
    printf("%-24s 20 rounds\n", "close while busy");
}

static void fork_storm(void)
{
    kensa_emitter *k = make(KENSA_MODE_ASYNC, 64 << 10);
    pid_t kids[16];
    emit_n(k, 100);
    fflush(stdout);
    for (int i = 0; i < 16; i++) {
        kids[i] = fork();
        CHECK(kids[i] >= 0, "fork: %s", strerror(errno));
        if (kids[i] == 0) {
            kensa_stats s;
            emit_n(k, 200);
            if (!kensa_flush(k, 30000))
                _exit(2);
            kensa_get_stats(k, &s);
            _exit(s.emitted == 200 && s.sent + s.dropped + s.failed == 200 ? 0 : 3);
        }
        emit_n(k, 10);
    }
    for (int i = 0; i < 16; i++) {
        int status;
        CHECK(waitpid(kids[i], &status, 0) == kids[i], "waitpid");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d failed: status %d", i, status);
    }
    CHECK(kensa_flush(k, 60000), "flush timed out");
    check_accounted(k, 100 + 16 * 10, "fork storm (parent)");
    kensa_emitter_free(k);
}

/* AUDIT_GET through kensa_kernel_status, many times: the reply parsing and
 * the poll loop must be clean, and the answer plausible. */
static void kernel_status(void)
{
    struct audit_status st;
    for (int i = 0; i < 50; i++) {
        int err = kensa_kernel_status(&st);
        CHECK(err == 0, "kensa_kernel_status: %s", strerror(err));
        CHECK(st.enabled <= 2, "enabled %u", st.enabled);
    }
    printf("%-24s enabled %u pid %u backlog_limit %u lost %u\n", "kernel status", st.enabled, st.pid,
           st.backlog_limit, st.lost);
}

int main(int argc, char **argv)
{
    int err;
    if (argc > 1)
        records = strtol(argv[1], NULL, 10);
    if (kensa_probe(&err) != KENSA_ON) {
        fprintf(stderr, "emission is off here (probe %d): run as root on a kernel with audit\n", kensa_probe(&err));
        return 77;
    }
    kernel_status();
    concurrent_async();
    sync_mode();
    tiny_ring();
    oversized();
    freed_while_draining();
    close_while_busy();
    fork_storm();
    printf("ok\n");
    return 0;
}
