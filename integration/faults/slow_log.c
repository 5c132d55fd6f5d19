/* Preloaded into a MariaDB server (LD_PRELOAD) by the suite's
 * faults::visible_before_durable case: while the file SLOW_LOG_TRIGGER
 * names exists, each write or sync of InnoDB's redo log (ib_logfile*)
 * first sleeps SLOW_LOG_MS milliseconds. InnoDB shows a commit to other
 * sessions before it writes the commit's redo, so this holds a commit
 * visible and not yet durable for that long, long enough to kill the
 * server in between. Everything else passes straight through. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static void hold(int fd) {
    const char *trigger = getenv("SLOW_LOG_TRIGGER");
    if (trigger == NULL || access(trigger, F_OK) != 0)
        return;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return;
    path[n] = '\0';
    if (strstr(path, "ib_logfile") == NULL)
        return;
    const char *ms = getenv("SLOW_LOG_MS");
    long wait = ms ? atol(ms) : 3000;
    struct timespec t = {wait / 1000, (wait % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    hold(fd);
    return NEXT(pwrite)(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    hold(fd);
    return NEXT(pwrite64)(fd, buf, count, offset);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t offset) {
    hold(fd);
    return NEXT(pwritev)(fd, iov, n, offset);
}

ssize_t write(int fd, const void *buf, size_t count) {
    hold(fd);
    return NEXT(write)(fd, buf, count);
}

int fsync(int fd) {
    hold(fd);
    return NEXT(fsync)(fd);
}

int fdatasync(int fd) {
    hold(fd);
    return NEXT(fdatasync)(fd);
}
