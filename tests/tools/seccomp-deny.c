/* seccomp-deny ERRNO NR[,NR...] -- PROGRAM [ARGS...]
 *
 * Installs a seccomp filter under which the listed syscall numbers fail with ERRNO (a
 * number, e.g. 38 for ENOSYS or 1 for EPERM) and every other syscall runs, then execs
 * PROGRAM. The tests use it to make a modern kernel look like an old one (no openat2) or
 * like a container whose seccomp profile refuses a syscall. */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define MAX_NRS 32

int main(int argc, char **argv) {
    if (argc < 5 || strcmp(argv[3], "--") != 0) {
        fprintf(stderr, "usage: %s ERRNO NR[,NR...] -- PROGRAM [ARGS...]\n", argv[0]);
        return 2;
    }
    unsigned err = (unsigned)strtoul(argv[1], NULL, 10);
    unsigned nrs[MAX_NRS];
    int n = 0;
    for (char *s = strtok(argv[2], ","); s && n < MAX_NRS; s = strtok(NULL, ","))
        nrs[n++] = (unsigned)strtoul(s, NULL, 10);

    struct sock_filter f[4 + 2 * MAX_NRS + 1];
    int i = 0;
    f[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                          offsetof(struct seccomp_data, arch));
    /* Another architecture's syscall numbers mean something else: let them through. */
    f[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    f[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                          offsetof(struct seccomp_data, nr));
    for (int k = 0; k < n; k++) {
        f[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nrs[k], 0, 1);
        f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K,
                                              SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA));
    }
    f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {.len = (unsigned short)i, .filter = f};

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        perror("prctl(PR_SET_NO_NEW_PRIVS)");
        return 2;
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("prctl(PR_SET_SECCOMP)");
        return 2;
    }
    execvp(argv[4], argv + 4);
    fprintf(stderr, "cannot exec %s: %s\n", argv[4], strerror(errno));
    return 127;
}
