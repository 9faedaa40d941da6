/*
 * container-compute's sandbox maker: the system calls of launch.SANDBOX_SETUP, without a
 * shell and a dozen busybox processes (about 1 ms instead of about 10 on a busy host).
 *
 * Usage (in a warm worker, by the sandbox wrapper): cc-sandbox COMMAND
 *   environment: CC_SANDBOX_SIZE (the size cap of the sandbox's tmpfs), CC_HOSTNAME,
 *   CC_CGROUP (optional: where the worker's cgroup2 tree is, or is to be, mounted: the task
 *   gets its own cgroup there, whose cpu.stat is kept in /run/cc/cpu.stat; where the worker
 *   delegates the memory and pids controllers (launch.DELEGATE_CONTROLLERS), the task cgroup
 *   gets the worker's own limits less a margin for the worker's processes (CC_MEMORY_MARGIN
 *   bytes, CC_PIDS_MARGIN processes, at most a quarter of each), and memory.oom.group, so that
 *   a task's OOM ends the task, not the worker); fd 3: how far the sandbox got
 *   ("ready" just before the command; else why it failed), then, once the command ended,
 *   "peak-rss-kib N": the largest resident set of the task's processes (its rusage, as
 *   sacct's MaxRSS), "cpu-user-usec N" and "cpu-system-usec N": their CPU times, and from the
 *   task's own cgroup where it had limits: "task-memory-max N", "task-pids-max N",
 *   "memory-peak-bytes N", "oom-kills N" (memory.events), "forks-refused N" (pids.events).
 *   The exit status is COMMAND's, or 128 + the signal that ended it.
 *
 * Usage (started once per warm worker, in the background): cc-sandbox --serve DIR
 *   the worker's resident launcher (backends/lxd/runner.py): the host writes a request into
 *   the runner's empty DIR/request-N (NUL-separated: an id, a shell script, then NAME=VALUE
 *   entries added to the runner's own environment) and a byte into the FIFO DIR/doorbell; the
 *   runner claims it (renames it to DIR/taken, so only one side can still remove it), runs the
 *   script with /bin/sh, waits for it, makes an empty DIR/request-<N+1> for the next one and
 *   writes "ID STATUS" to DIR/reply. A task's launcher then costs no LXD exec. The runner
 *   makes every file of DIR: where the worker's root is an idmapped mount, the host's root may
 *   write, rename and remove a file there, but not make a new name (EOVERFLOW). The next
 *   request's name is new, so the host never takes it for the one it sent. DIR/pid holds the
 *   runner's pid once it listens.
 *
 * Built static by the host (backends/lxd/helper.py) and copied into each warm worker; a
 * worker without it makes its sandboxes with the shell recipe, to the same effect, and gets
 * each task's launcher through LXD's exec.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define SANDBOX_DIR "/run/cc-sandbox"
#define ROOT SANDBOX_DIR "/root"
#define REQUEST_MAX (4 << 20)  /* bytes: a launcher script and a job's environment */

static long long usec(struct timeval time) {
    return (long long)time.tv_sec * 1000000 + time.tv_usec;
}

static void fail(const char *why) {
    dprintf(3, "%s\n", why);
    _exit(1);
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void bind(const char *from, const char *to, unsigned long flags, const char *why) {
    if (mount(from, to, NULL, MS_BIND | flags, NULL) != 0) fail(why);
}

static void make_sandbox(const char *size, const char *hostname) {
    char options[512];
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        fail("mount --make-rprivate / was refused");
    if (mkdir(SANDBOX_DIR, 0700) != 0 && errno != EEXIST) fail("mkdir " SANDBOX_DIR " failed");
    snprintf(options, sizeof options, "size=%s,mode=0700", size);
    if (mount("cc-sandbox", SANDBOX_DIR, "tmpfs", 0, options) != 0)
        fail("a tmpfs mount was refused");
    if (mkdir(SANDBOX_DIR "/upper", 0755) || mkdir(SANDBOX_DIR "/work", 0755) ||
        mkdir(ROOT, 0755))
        fail("the sandbox tmpfs is not writable");
    if (mount("cc-sandbox", ROOT, "overlay", 0,
              "lowerdir=/,upperdir=" SANDBOX_DIR "/upper,workdir=" SANDBOX_DIR "/work") != 0)
        fail("an overlay mount was refused (it needs kernel 5.11 or later in a container)");
    bind("/dev", ROOT "/dev", MS_REC, "binding /dev was refused");
    if (is_dir(ROOT "/dev/shm")) {
        snprintf(options, sizeof options, "size=%s", size);
        if (mount("cc-shm", ROOT "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, options) != 0)
            fail("a tmpfs on /dev/shm was refused");
    }
    if (mount("proc", ROOT "/proc", "proc", 0, NULL) != 0) fail("mounting /proc was refused");
    if (is_dir("/sys/class")) bind("/sys", ROOT "/sys", MS_REC, "binding /sys");
    bind("/results", ROOT "/results", 0, "binding /results was refused");
    if (is_dir("/input")) bind("/input", ROOT "/input", MS_REC, "binding /input");
    if (is_dir("/tmp")) bind("/tmp", ROOT "/tmp", 0, "binding /tmp");
    if (chdir(ROOT) != 0 || (mkdir(".cc-old", 0700) != 0 && errno != EEXIST) ||
        syscall(SYS_pivot_root, ".", ".cc-old") != 0)
        fail("pivot_root was refused");
    if (umount2("/.cc-old", MNT_DETACH) != 0) fail("the old root could not be detached");
    rmdir("/.cc-old");
    if (sethostname(hostname, strlen(hostname)) != 0)
        fail("setting the host name was refused");
    int adj = open("/proc/self/oom_score_adj", O_WRONLY);  // the task goes before the wrapper
    if (adj >= 0) {
        (void)!write(adj, "500", 3);
        close(adj);
    }
    if (chdir("/") != 0) fail("chdir / failed");
}

/* The task's own cgroup, opened before the sandbox is made: pivot_root moves this process's
 * root too, so it is reached through these descriptors afterwards. */
struct task_cgroup {
    int root;  // the worker's cgroup2 tree (a directory)
    int stat;  // the task cgroup's cpu.stat
    int kept;  // /run/cc/cpu.stat, where its figures are kept
    int procs;  // the task cgroup's cgroup.procs: the sandbox's init moves itself in
    int limited;  // the task cgroup has limits of its own (memory, pids or both)
};

/* Read the small cgroup file NAME under ROOT into TEXT, ended by a NUL; 0 if it cannot be read. */
static int read_small(int root, const char *name, char *text, size_t size) {
    int fd = openat(root, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t got = read(fd, text, size - 1);
    close(fd);
    if (got <= 0) return 0;
    text[got] = '\0';
    return 1;
}

/* The number in a cgroup file of ROOT (as "memory.max"), or -1 ("max", missing, unreadable). */
static long long read_number(int root, const char *name) {
    char text[64];
    if (!read_small(root, name, text, sizeof text)) return -1;
    char *end;
    long long number = strtoll(text, &end, 10);
    return end == text || number < 0 ? -1 : number;
}

static int write_number(int root, const char *name, long long number) {
    char text[32];
    int fd = openat(root, name, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    int length = snprintf(text, sizeof text, "%lld", number);
    int written = write(fd, text, (size_t)length) == length;
    close(fd);
    return written;
}

/* The task's share of a worker limit: all of it but a margin (CAP, at most a quarter of it)
 * for the worker's own processes, so the task meets its limit before the worker does. */
static long long task_share(long long limit, long long cap) {
    long long margin = limit / 4 < cap ? limit / 4 : cap;
    return limit - margin;
}

/* A margin from the environment (CC_MEMORY_MARGIN, CC_PIDS_MARGIN), or -1. */
static long long margin_of(const char *name) {
    const char *text = getenv(name);
    char *end;
    long long number = text && *text ? strtoll(text, &end, 10) : -1;
    return number < 0 || *end ? -1 : number;
}

/* Give the task cgroup the worker's memory and pids limits, less the margins, where the worker
 * delegates those controllers (their files exist in the task cgroup); true if it got any. */
static int limit_task_cgroup(int root) {
    int limited = 0;
    long long memory = read_number(root, "memory.max"), margin = margin_of("CC_MEMORY_MARGIN");
    if (memory > 0 && margin >= 0 && faccessat(root, "task/memory.max", W_OK, 0) == 0 &&
        write_number(root, "task/memory.max", task_share(memory, margin))) {
        write_number(root, "task/memory.oom.group", 1);  // one OOM kill ends the whole task
        limited = 1;
    }
    long long pids = read_number(root, "pids.max");
    margin = margin_of("CC_PIDS_MARGIN");
    if (pids > 0 && margin >= 0 && faccessat(root, "task/pids.max", W_OK, 0) == 0 &&
        write_number(root, "task/pids.max", task_share(pids, margin)))
        limited = 1;
    return limited;
}

/* The "KEY N" line of a cgroup file (as "oom_kill" in memory.events), or -1. */
static long long event_count(int root, const char *name, const char *key) {
    char text[1024];
    if (!read_small(root, name, text, sizeof text)) return -1;
    size_t length = strlen(key);
    for (char *line = text; *line;) {
        if (strncmp(line, key, length) == 0 && line[length] == ' ')
            return strtoll(line + length + 1, NULL, 10);
        char *next = strchr(line, '\n');
        if (!next) break;
        line = next + 1;
    }
    return -1;
}

/* Say on fd 3 the task cgroup's limits and what they did: its peak, OOM kills, refused forks. */
static void report_task_cgroup(int root) {
    static const struct { const char *file, *key, *said; } events[] = {
        {"task/memory.events", "oom_kill", "oom-kills"},
        {"task/pids.events", "max", "forks-refused"},
    };
    long long number;
    if ((number = read_number(root, "task/memory.max")) >= 0)
        dprintf(3, "task-memory-max %lld\n", number);
    if ((number = read_number(root, "task/pids.max")) >= 0)
        dprintf(3, "task-pids-max %lld\n", number);
    if ((number = read_number(root, "task/memory.peak")) >= 0)
        dprintf(3, "memory-peak-bytes %lld\n", number);
    for (size_t i = 0; i < sizeof events / sizeof events[0]; i++)
        if ((number = event_count(root, events[i].file, events[i].key)) >= 0)
            dprintf(3, "%s %lld\n", events[i].said, number);
}

/* Make the task's own cgroup ("task") in the worker's cgroup2 tree mounted at ROOT (mounted
 * now if need be), with its limits; false when that cannot be done (no cgroup then). The
 * sandbox's init moves itself in (enter_task_cgroup): this program stays out of the task's
 * OOM and process count. */
static int make_task_cgroup(const char *root, struct task_cgroup *cg) {
    char path[320];
    cg->root = cg->stat = cg->kept = cg->procs = -1;
    cg->limited = 0;
    snprintf(path, sizeof path, "%s/cgroup.procs", root);
    if (access(path, F_OK) != 0) {
        mkdir(root, 0755);
        if (mount("cc-cgroup", root, "cgroup2", 0, NULL) != 0) return 0;
    }
    cg->root = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cg->root < 0) return 0;
    unlinkat(cg->root, "task", AT_REMOVEDIR);  // a task's left over from before
    if (mkdirat(cg->root, "task", 0755) != 0 ||
        (cg->procs = openat(cg->root, "task/cgroup.procs", O_WRONLY | O_CLOEXEC)) < 0) {
        unlinkat(cg->root, "task", AT_REMOVEDIR);
        close(cg->root);
        cg->root = -1;
        return 0;
    }
    cg->limited = limit_task_cgroup(cg->root);
    cg->stat = openat(cg->root, "task/cpu.stat", O_RDONLY | O_CLOEXEC);
    cg->kept = open("/run/cc/cpu.stat", O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    return 1;
}

/* In the sandbox's init, before anything else: move into the task's cgroup. */
static void enter_task_cgroup(struct task_cgroup *cg) {
    if (cg->procs >= 0 && write(cg->procs, "0", 1) != 1) fail("moving into the task's cgroup failed");
}

/* Once the task ended: keep its cgroup's cpu.stat, report its limits, remove the cgroup. */
static void leave_task_cgroup(struct task_cgroup *cg) {
    char stat[1024];
    if (cg->stat >= 0 && cg->kept >= 0) {
        ssize_t got = pread(cg->stat, stat, sizeof stat, 0);
        if (got > 0) (void)!write(cg->kept, stat, (size_t)got);
    }
    if (cg->limited) report_task_cgroup(cg->root);
    for (int i = 0; i < 50 && unlinkat(cg->root, "task", AT_REMOVEDIR) != 0 && errno == EBUSY; i++)
        usleep(10000);  // its last processes may still be exiting
}

/* Read a whole request (at most REQUEST_MAX bytes); its length, or -1. */
static ssize_t read_request(const char *path, char *buf) {
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -1;
    struct stat st;
    ssize_t total = 0, got = 0;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        while (total < REQUEST_MAX && (got = read(fd, buf + total, REQUEST_MAX - total)) > 0)
            total += got;
    } else {
        got = -1;
    }
    close(fd);
    return got < 0 ? -1 : total;
}

/* Run one request: /bin/sh -c SCRIPT with the entries added to the environment. */
static int run_request(char *buf, ssize_t length, const char **id) {
    if (length <= 0 || buf[length - 1] != '\0') return 126;  // not NUL-terminated: refused
    char *end = buf + length;
    *id = buf;
    char *script = buf + strlen(buf) + 1;
    if (script >= end) return 126;
    pid_t child = fork();
    if (child < 0) return 125;
    if (child == 0) {
        setenv("CC_RUNNER", "1", 1);  // the launcher needs no session of its own
        for (char *entry = script + strlen(script) + 1; entry < end; entry += strlen(entry) + 1)
            if (strchr(entry, '=')) putenv(entry);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
            if (null > 2) close(null);
        }
        signal(SIGHUP, SIG_DFL);
        execl("/bin/sh", "sh", "-c", script, (char *)NULL);
        _exit(127);
    }
    int status;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR) return 125;
    }
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

#define REQUEST_PREFIX "request-"

/* The empty DIR/request-N where the host writes the next request (N counts them). */
static int make_request_file(char *name, size_t size, unsigned long count) {
    snprintf(name, size, REQUEST_PREFIX "%lu", count);
    int fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return 0;
    close(fd);
    return 1;
}

/* Remove what an earlier runner left in DIR: the host must find one request file only. */
static void remove_leftovers(void) {
    DIR *dir = opendir(".");
    struct dirent *entry;
    while (dir && (entry = readdir(dir)))
        if (strncmp(entry->d_name, REQUEST_PREFIX, strlen(REQUEST_PREFIX)) == 0)
            unlinkat(dirfd(dir), entry->d_name, 0);
    if (dir) closedir(dir);
    unlink("taken");
    unlink("doorbell");
}

static int serve(const char *dir) {
    static char buf[REQUEST_MAX + 1];
    char rings[256], request[64];
    unsigned long count = 1;
    setsid();
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    if ((mkdir(dir, 0700) != 0 && errno != EEXIST) || chdir(dir) != 0) return 1;
    remove_leftovers();
    // Opened for reading and writing: it never reads an end of file, and the host's
    // non-blocking open for writing finds a reader as long as the runner lives.
    int bell = mkfifo("doorbell", 0600) == 0 ? open("doorbell", O_RDWR | O_CLOEXEC) : -1;
    if (bell < 0 || !make_request_file(request, sizeof request, count)) return 1;
    FILE *pid = fopen("pid.tmp", "w");
    if (!pid || fprintf(pid, "%d\n", (int)getpid()) < 0 || fclose(pid) != 0 ||
        rename("pid.tmp", "pid") != 0)
        return 1;
    for (;;) {
        if (read(bell, rings, sizeof rings) < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        struct stat st;  // rung for nothing (still empty), or taken back by the host: wait on
        if (stat(request, &st) != 0 || st.st_size == 0 || rename(request, "taken") != 0)
            continue;
        ssize_t length = read_request("taken", buf);
        unlink("taken");
        const char *id = "?";
        int status = length < 0 ? 126 : run_request(buf, length, &id);
        // The next request's file before the reply: the host sends the next once it has read.
        if (!make_request_file(request, sizeof request, ++count)) return 1;
        FILE *reply = fopen("reply.tmp", "w");
        if (!reply) return 1;
        fprintf(reply, "%s %d\n", id, status);
        if (fclose(reply) != 0 || rename("reply.tmp", "reply") != 0) return 1;
    }
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--serve") == 0) return serve(argv[2]);
    if (argc != 2) {
        dprintf(2, "usage: cc-sandbox COMMAND | cc-sandbox --serve DIR\n");
        return 2;
    }
    const char *size = getenv("CC_SANDBOX_SIZE");
    const char *hostname = getenv("CC_HOSTNAME");
    const char *cgroup = getenv("CC_CGROUP");
    if (!size || !hostname) fail("CC_SANDBOX_SIZE and CC_HOSTNAME are needed");
    struct task_cgroup cg = {-1, -1, -1, -1, 0};
    int in_cgroup = cgroup && *cgroup && strlen(cgroup) < 256 && make_task_cgroup(cgroup, &cg);
    if (unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS) != 0)
        fail("unshare of the mount, pid, ipc and uts namespaces was refused");
    pid_t child = fork();
    if (child < 0) fail("fork failed");
    if (child == 0) {  // PID 1 of the new pid namespace: nothing it starts outlives it
        enter_task_cgroup(&cg);
        make_sandbox(size, hostname);
        unsetenv("CC_SANDBOX_SIZE");
        unsetenv("CC_HOSTNAME");
        unsetenv("CC_CGROUP");
        unsetenv("CC_MEMORY_MARGIN");
        unsetenv("CC_PIDS_MARGIN");
        unsetenv("CC_SANDBOX");
        dprintf(3, "ready\n");
        close(3);
        execl("/bin/sh", "sh", "-c", argv[1], (char *)NULL);
        dprintf(2, "cc-sandbox: /bin/sh: %s\n", strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR) return 1;
    }
    struct rusage usage;
    if (getrusage(RUSAGE_CHILDREN, &usage) == 0)
        dprintf(3, "peak-rss-kib %ld\ncpu-user-usec %lld\ncpu-system-usec %lld\n",
                usage.ru_maxrss, usec(usage.ru_utime), usec(usage.ru_stime));
    if (in_cgroup) leave_task_cgroup(&cg);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
