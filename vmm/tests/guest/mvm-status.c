/* A tiny static guest helper for the VMM's own boot tests: reports events
 * on the status port the way mvm-init does (ioperm + one 32-bit outl), so a
 * busybox initramfs can stand in for init.
 *
 *   mvm-status boot | exit N | signal N | poweroff
 *
 * Built with `cc -static -nostdlib -O2`: no libc, raw syscalls. */

#define STATUS_PORT 0x5e0
#define SYS_ioperm 173
#define SYS_exit 60

static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}

static int eq(const char *a, const char *b) {
    while (*a && *a == *b) { a++; b++; }
    return *a == *b;
}

static unsigned num(const char *s) {
    unsigned v = 0;
    while (s && *s >= '0' && *s <= '9') v = v * 10 + (unsigned)(*s++ - '0');
    return v & 0xffffff;
}

__asm__(".globl _start\n_start:\n  mov %rsp, %rdi\n  and $-16, %rsp\n  call cmain\n  hlt\n");

void cmain(long *sp) {
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    unsigned v;
    if (argc < 2) sys3(SYS_exit, 2, 0, 0);
    if (eq(argv[1], "boot")) v = 0x01u << 24;
    else if (eq(argv[1], "exit") && argc > 2) v = (0x02u << 24) | num(argv[2]);
    else if (eq(argv[1], "signal") && argc > 2) v = (0x03u << 24) | num(argv[2]);
    else if (eq(argv[1], "poweroff")) v = 0x05u << 24;
    else sys3(SYS_exit, 2, 0, 0);
    if (sys3(SYS_ioperm, STATUS_PORT, 4, 1) != 0) sys3(SYS_exit, 1, 0, 0);
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"((unsigned short)STATUS_PORT));
    sys3(SYS_exit, 0, 0, 0);
}
