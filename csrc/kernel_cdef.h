/*
 * cffi-only declarations of the kernel's own audit types: cffi reads this file
 * as cdef (csrc/build_ffi.py) and the `...;` lets the compiler fill in the real
 * layout from <linux/audit.h>, so no field offset or constant is re-typed.
 */
#define AUDIT_GET ...
#define AUDIT_FAIL_SILENT ...
#define AUDIT_FAIL_PRINTK ...
#define AUDIT_FAIL_PANIC ...

struct audit_status {
    uint32_t enabled;
    uint32_t failure;
    uint32_t pid;
    uint32_t rate_limit;
    uint32_t backlog_limit;
    uint32_t lost;
    uint32_t backlog;
    uint32_t backlog_wait_time;
    ...;
};
