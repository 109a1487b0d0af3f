//! The seccomp section of a container's OCI runtime spec: Kubernetes' `seccompProfile` types.
//!
//! - `RuntimeDefault` is the container runtime's default profile. imc's is Docker's, as published
//!   in moby/profiles tag `seccomp/v0.2.3` (`seccomp/default.json`, May 2026), resolved for the
//!   host's architecture and the container's capability set the way Docker and containerd resolve
//!   it. containerd v2.4's `contrib/seccomp` profile is the same list except that it allows the
//!   three `lsm_*` calls without `CAP_SYS_ADMIN`; imc follows Docker there (the stricter one).
//! - `Unconfined` is no seccomp section at all.
//! - `Localhost` is a Docker-format JSON profile in a directory the node operator owns
//!   (`DIR/seccomp`), named by a path relative to it.
//!
//! runc 1.1.5 (libseccomp 2.5.4) skips syscall names that libseccomp does not know (it logs them
//! at debug level and adds no rule), so the profile can list calls newer than the host's
//! libseccomp or kernel (`getxattrat`, `mseal`, ...); those calls are then refused by the default
//! action. runc 1.1.5 rejects any seccomp `flags`, so a Localhost profile that sets them is
//! refused here with that reason rather than at container start.
//!
//! On x86_64 the reference covers three ABIs: x86_64, x86 (i386) and x32. The filter runc builds
//! grows with each, and so does its cost per container start (libseccomp compiles it anew for
//! every start: some 15 ms for each of the two compat ABIs on this project's 2-core machine).
//! Kernels built without the x32 ABI (`CONFIG_X86_X32_ABI`, off in most distributions' kernels
//! or disabled at boot) run no x32 program at all, so there the default profile leaves x32 out:
//! an x32 call is refused by the kernel either way (by the filter's architecture check instead
//! of the syscall entry). The host is probed once ([`kernel_runs_x32`]).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;

/// Which reference the [`runtime_default`] profile follows.
pub const RUNTIME_DEFAULT_REFERENCE: &str = "moby/profiles seccomp/v0.2.3 seccomp/default.json";

/// The largest Localhost profile file imc reads (Docker's own default profile is ~20 KiB).
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// The longest Localhost profile name accepted (`PATH_MAX`).
const MAX_PROFILE_NAME: usize = 4096;

/// `errno` of calls the profile does not allow.
const EPERM: u32 = libc::EPERM as u32;

/// `errno` of `clone3` without `CAP_SYS_ADMIN`: glibc falls back to `clone` on ENOSYS, which the
/// profile can filter by flags (`clone3` passes its flags in memory, out of seccomp's reach).
const ENOSYS: u32 = libc::ENOSYS as u32;

/// The namespace flags `clone` may not carry without `CAP_SYS_ADMIN` (`0x7E020000`).
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

// The calls every container may make, by concern. Together they are the reference's first,
// unconditional allow rule (361 names).

/// Paths, file descriptors and file metadata.
const FILES: &[&str] = &[
    "_llseek",
    "access",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "flock",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futimesat",
    "getcwd",
    "getdents",
    "getdents64",
    "lchown",
    "lchown32",
    "link",
    "linkat",
    "listmount",
    "lseek",
    "lstat",
    "lstat64",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "name_to_handle_at",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "readahead",
    "readlink",
    "readlinkat",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "truncate",
    "truncate64",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
];

/// Extended attributes.
const XATTRS: &[&str] = &[
    "fgetxattr",
    "flistxattr",
    "fremovexattr",
    "fsetxattr",
    "getxattr",
    "getxattrat",
    "lgetxattr",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "lremovexattr",
    "lsetxattr",
    "removexattr",
    "removexattrat",
    "setxattr",
    "setxattrat",
];

/// Reading, writing and moving data between descriptors; pipes; `ioctl`.
const DATA: &[&str] = &[
    "ioctl",
    "pipe",
    "pipe2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readv",
    "sendfile",
    "sendfile64",
    "splice",
    "tee",
    "vmsplice",
    "write",
    "writev",
];

/// Waiting for events: poll/select/epoll, eventfd, signalfd, timerfd, inotify, fanotify marks.
const EVENTS: &[&str] = &[
    "_newselect",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "fanotify_mark",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "poll",
    "ppoll",
    "ppoll_time64",
    "pselect6",
    "pselect6_time64",
    "select",
    "signalfd",
    "signalfd4",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
];

/// Linux native asynchronous I/O (`io_uring` is not allowed).
const ASYNC_IO: &[&str] = &[
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
];

/// Memory mappings, locking and protection keys.
const MEMORY: &[&str] = &[
    "brk",
    "cachestat",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mremap",
    "mseal",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
];

/// Processes and threads: exec, fork, wait, futexes, limits, self-restriction, system facts.
const PROCESSES: &[&str] = &[
    "capget",
    "capset",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getrlimit",
    "getrusage",
    "getsid",
    "gettid",
    "ioprio_get",
    "ioprio_set",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "pidfd_open",
    "prctl",
    "prlimit64",
    "process_mrelease",
    "restart_syscall",
    "riscv_hwprobe",
    "rseq",
    "seccomp",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setpgid",
    "setpriority",
    "setrlimit",
    "setsid",
    "sysinfo",
    "times",
    "ugetrlimit",
    "uname",
    "uretprobe",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
];

/// Scheduling policy and CPU affinity.
const SCHEDULING: &[&str] = &[
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
];

/// User and group ids (the kernel still checks `CAP_SETUID`/`CAP_SETGID`).
const CREDENTIALS: &[&str] = &[
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getuid",
    "getuid32",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setuid",
    "setuid32",
];

/// Signals.
const SIGNALS: &[&str] = &[
    "alarm",
    "kill",
    "pause",
    "pidfd_send_signal",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sigaltstack",
    "sigprocmask",
    "sigreturn",
    "tgkill",
    "tkill",
];

/// Clocks, sleeps and timers (setting the clock needs `CAP_SYS_TIME`, see below; `adjtimex` and
/// `clock_adjtime` only read it without that capability).
const TIME: &[&str] = &[
    "adjtimex",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "getitimer",
    "gettimeofday",
    "nanosleep",
    "setitimer",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
];

/// System V and POSIX message queues, semaphores and shared memory.
const IPC: &[&str] = &[
    "ipc",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
];

/// Sockets once created (`socket` itself is filtered by address family, see
/// [`socket_rules`]; 32-bit x86's `socketcall` multiplexer cannot be filtered and is allowed).
const NETWORK: &[&str] = &[
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "send",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    "socketcall",
    "socketpair",
];

/// Every group of [`runtime_default`]'s unconditional allow rule.
const ALLOWED_GROUPS: &[&[&str]] = &[
    FILES,
    XATTRS,
    DATA,
    EVENTS,
    ASYNC_IO,
    MEMORY,
    PROCESSES,
    SCHEDULING,
    CREDENTIALS,
    SIGNALS,
    TIME,
    IPC,
    NETWORK,
];

/// Tracing one's own processes. The reference allows these on kernels 4.8 and later (from 4.8
/// on, a traced process cannot use ptrace to slip past its seccomp filter); imc needs a newer
/// kernel than that anyway (EROFS, overlayfs' features), so they are always allowed. Tracing
/// others still needs `CAP_SYS_PTRACE`, which the kernel checks.
const TRACING: &[&str] = &["process_vm_readv", "process_vm_writev", "ptrace"];

/// `personality(2)` values a container may set: the Linux default, `UNAME26`, `ADDR_NO_RANDOMIZE`,
/// both, and `0xffffffff` (query only).
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// Address families `socket(2)` refuses: `AF_ALG` (kernel crypto API) and `AF_VSOCK` (host and
/// VM sockets). Everything below, between and above is allowed.
const AF_ALG: u64 = libc::AF_ALG as u64;
const AF_VSOCK: u64 = libc::AF_VSOCK as u64;

/// Calls a capability in the container's bounding set unlocks, in the reference's order.
const CAPABILITY_GRANTS: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// The host architectures the default profile knows, with what the reference adds for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostArch {
    /// x86_64, which also runs x86 and x32 binaries.
    X86_64,
    /// aarch64, which also runs 32-bit ARM binaries.
    Aarch64,
    /// s390x, which also runs s390 binaries (and passes `clone`'s flags second).
    S390x,
    /// Anything else: the common rules, for the native architecture only.
    Other,
}

impl HostArch {
    /// The architecture imc was built for (and so runs on).
    fn current() -> Self {
        match std::env::consts::ARCH {
            "x86_64" => HostArch::X86_64,
            "aarch64" => HostArch::Aarch64,
            "s390x" => HostArch::S390x,
            _ => HostArch::Other,
        }
    }

    /// The seccomp architectures a filter must cover: native first, then what it also executes
    /// (x32 only when the kernel runs x32 programs).
    fn seccomp_arches(self, x32: bool) -> Vec<Arch> {
        match self {
            HostArch::X86_64 if x32 => {
                vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
            }
            HostArch::X86_64 => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86],
            HostArch::Aarch64 => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
            HostArch::S390x => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
            HostArch::Other => Vec::new(),
        }
    }

    /// Calls only this architecture has that the reference allows.
    fn extra_allowed(self) -> &'static [&'static str] {
        match self {
            HostArch::X86_64 => &["arch_prctl", "modify_ldt"],
            HostArch::Aarch64 => &[
                "arm_fadvise64_64",
                "arm_sync_file_range",
                "sync_file_range2",
                "breakpoint",
                "cacheflush",
                "set_tls",
            ],
            HostArch::S390x => &[
                "s390_pci_mmio_read",
                "s390_pci_mmio_write",
                "s390_runtime_instr",
            ],
            HostArch::Other => &[],
        }
    }

    /// Which argument of `clone(2)` holds its flags.
    fn clone_flags_index(self) -> usize {
        match self {
            HostArch::S390x => 1,
            _ => 0,
        }
    }
}

/// The `RuntimeDefault` profile for a container whose bounding capability set is
/// `capabilities`, for the host's architecture (x86_64 with x86 and x32; aarch64 with arm;
/// s390x with s390; any other: the native architecture and no architecture-specific calls).
/// Calls not listed fail with EPERM; `clone3` without `CAP_SYS_ADMIN` fails with ENOSYS. See
/// [`RUNTIME_DEFAULT_REFERENCE`].
pub fn runtime_default(capabilities: &[Capability]) -> LinuxSeccomp {
    let arch = HostArch::current();
    profile_for(
        arch,
        capabilities,
        arch == HostArch::X86_64 && kernel_runs_x32(),
    )
}

/// Whether the running kernel executes x32 programs: an x32 `getpid` (the syscall number with
/// bit 30 set) answers ENOSYS where it does not. Probed once per process. When imc itself runs
/// under a seccomp filter, the probe is not made (a filter without x32 would kill the process
/// for it) and x32 is assumed, which only costs time.
fn kernel_runs_x32() -> bool {
    static RUNS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RUNS.get_or_init(|| {
        if !cfg!(target_arch = "x86_64") || !unfiltered() {
            return true;
        }
        const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
        // SAFETY: getpid takes no argument and changes nothing; an unknown number answers ENOSYS.
        let rc = unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) };
        rc >= 0
    })
}

/// Whether this process runs without a seccomp filter (`Seccomp: 0` in `/proc/self/status`).
fn unfiltered() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .is_some_and(|v| v.trim() == "0")
    })
}

fn profile_for(arch: HostArch, capabilities: &[Capability], x32: bool) -> LinuxSeccomp {
    let common: Vec<&str> = ALLOWED_GROUPS
        .iter()
        .flat_map(|g| g.iter().copied())
        .collect();
    let mut rules = vec![allow(&common), allow(TRACING)];
    rules.extend(socket_rules());
    rules.extend(
        PERSONALITIES
            .iter()
            .map(|&p| allow_if("personality", 0, p, None, LinuxSeccompOperator::ScmpCmpEq)),
    );
    if !arch.extra_allowed().is_empty() {
        rules.push(allow(arch.extra_allowed()));
    }
    for (capability, names) in CAPABILITY_GRANTS {
        if capabilities.contains(capability) {
            rules.push(allow(names));
        }
    }
    if !capabilities.contains(&Capability::SysAdmin) {
        // Plain fork/thread creation yes, new namespaces no.
        rules.push(allow_if(
            "clone",
            arch.clone_flags_index(),
            CLONE_NAMESPACE_FLAGS,
            Some(0),
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        ));
        let mut clone3 = LinuxSyscall::default();
        clone3.set_names(vec!["clone3".to_string()]);
        clone3.set_action(LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(ENOSYS));
        rules.push(clone3);
    }

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(EPERM));
    let arches = arch.seccomp_arches(x32);
    profile.set_architectures((!arches.is_empty()).then_some(arches));
    profile.set_syscalls(Some(rules));
    profile
}

/// `socket(2)` for every address family but `AF_ALG` and `AF_VSOCK`, as three single-condition
/// rules (below, between, above): runc turns several conditions on one argument into separate
/// rules that OR together, so `!= AF_ALG && != AF_VSOCK` cannot be written as one rule.
fn socket_rules() -> [LinuxSyscall; 3] {
    use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpGt, ScmpCmpLt};
    const _: () = assert!(
        AF_ALG + 2 == AF_VSOCK,
        "one family between AF_ALG and AF_VSOCK"
    );
    [
        allow_if("socket", 0, AF_ALG, None, ScmpCmpLt),
        allow_if("socket", 0, AF_ALG + 1, None, ScmpCmpEq),
        allow_if("socket", 0, AF_VSOCK, None, ScmpCmpGt),
    ]
}

/// An unconditional allow rule for `names`.
fn allow(names: &[&str]) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.iter().map(|n| n.to_string()).collect());
    rule.set_action(LinuxSeccompAction::ScmpActAllow);
    rule
}

/// Allows `name` when its argument `index` compares to `value` (and `value_two`) by `op`.
fn allow_if(
    name: &str,
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> LinuxSyscall {
    let mut arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    if let Some(two) = value_two {
        arg = arg.value_two(two);
    }
    // Every field of the builder has a default, so building cannot fail.
    let arg = arg.build().expect("seccomp argument from constants");
    let mut rule = allow(&[name]);
    rule.set_args(Some(vec![arg]));
    rule
}

/// A pod's `seccompProfile` as the runtime applies it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SeccompProfile {
    /// The runtime's default profile ([`runtime_default`]); what imc applies when the pod names
    /// none, as the kubelet does with `--seccomp-default`.
    #[default]
    RuntimeDefault,
    /// No seccomp filter.
    Unconfined,
    /// A Docker-format profile file under the node's seccomp directory.
    Localhost(LocalhostProfile),
}

impl SeccompProfile {
    /// The spec's seccomp section for a container with bounding capability set `capabilities`
    /// (`None` for `Unconfined`). A Localhost profile is read from under `root`, so this may
    /// block: call it from `spawn_blocking`.
    pub fn resolve(
        &self,
        root: &Path,
        capabilities: &[Capability],
    ) -> Result<Option<LinuxSeccomp>, SeccompError> {
        match self {
            SeccompProfile::RuntimeDefault => Ok(Some(runtime_default(capabilities))),
            SeccompProfile::Unconfined => Ok(None),
            SeccompProfile::Localhost(profile) => {
                from_localhost_file(root, profile, capabilities).map(Some)
            }
        }
    }
}

/// A Kubernetes `localhostProfile`: a path relative to the node's seccomp directory, with no
/// `..` component, not empty, no NUL, at most 4096 bytes. Validated on construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalhostProfile(String);

impl LocalhostProfile {
    /// Validates `name` (Kubernetes' rule for `localhostProfile`: a relative path that does not
    /// climb out with `..`).
    pub fn parse(name: &str) -> Result<Self, SeccompError> {
        validate_profile_name(name)?;
        Ok(LocalhostProfile(name.to_string()))
    }

    /// The name as the pod gave it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LocalhostProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn validate_profile_name(name: &str) -> Result<(), SeccompError> {
    let refuse = |reason| {
        Err(SeccompError::InvalidProfileName {
            name: name.chars().take(256).collect(),
            reason,
        })
    };
    if name.len() > MAX_PROFILE_NAME {
        return refuse("longer than 4096 bytes");
    }
    if name.contains('\0') {
        return refuse("contains a NUL byte");
    }
    if name.starts_with('/') {
        return refuse("must be relative to the node's seccomp directory");
    }
    if name.split('/').any(|c| c == "..") {
        return refuse("must not contain '..'");
    }
    if !name.split('/').any(|c| !c.is_empty() && c != ".") {
        return refuse("names no file");
    }
    Ok(())
}

/// Reads the Docker-format profile `profile` under `root` (Kubernetes' `Localhost` type) and
/// resolves it for a container with bounding capability set `capabilities` and for this host
/// (its architecture and kernel version), as Docker and containerd do: `archMap`, and rules'
/// `includes`/`excludes` on `caps`, `arches` and `minKernel`.
///
/// Only a regular file of at most [`MAX_PROFILE_BYTES`] is read; a FIFO or device is refused
/// without being waited on. A profile that would disable seccomp (no `defaultAction`), needs a
/// seccomp agent (`SCMP_ACT_NOTIFY`, `listenerPath`), sets `flags` (runc 1.1 rejects them) or has
/// a field imc does not know is refused with the reason. Reads the file: call it from
/// `spawn_blocking`.
pub fn from_localhost_file(
    root: &Path,
    profile: &LocalhostProfile,
    capabilities: &[Capability],
) -> Result<LinuxSeccomp, SeccompError> {
    // Checked again where it becomes a path, whatever the caller did.
    validate_profile_name(profile.as_str())?;
    let path = root.join(profile.as_str());
    let escapes = path
        .strip_prefix(root)
        .map(|rel| {
            rel.components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        })
        .unwrap_or(true);
    if escapes {
        return Err(SeccompError::InvalidProfileName {
            name: profile.as_str().chars().take(256).collect(),
            reason: "resolves outside the node's seccomp directory",
        });
    }
    let bytes = read_profile(&path)?;
    resolve_docker_profile(&bytes, capabilities, &HostInfo::current(), &path)
}

/// Reads `path` if it is a regular file of at most [`MAX_PROFILE_BYTES`].
fn read_profile(path: &Path) -> Result<Vec<u8>, SeccompError> {
    let io = |cause| SeccompError::Read {
        path: path.to_path_buf(),
        cause,
    };
    // stat first, so a device is never opened; O_NONBLOCK and fstat again, so a file swapped for
    // a FIFO in between is neither waited on nor read.
    check_regular(path, &std::fs::metadata(path).map_err(io)?)?;
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    check_regular(path, &meta)?;
    let too_large = |size| SeccompError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit: MAX_PROFILE_BYTES,
    };
    if meta.len() > MAX_PROFILE_BYTES {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_PROFILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<(), SeccompError> {
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a file"
    };
    Err(SeccompError::NotRegularFile {
        path: path.to_path_buf(),
        kind,
    })
}

/// What a Docker-format profile's conditions are evaluated against.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostInfo {
    /// Docker's name for the architecture (`amd64`, `arm64`, ...), used by `arches` filters.
    arch_name: &'static str,
    /// The native seccomp architecture, used to pick the `archMap` entry.
    seccomp_arch: Option<Arch>,
    /// The running kernel's `(version, major revision)`, e.g. `(6, 1)`.
    kernel: (u64, u64),
}

impl HostInfo {
    fn current() -> Self {
        let (arch_name, seccomp_arch) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", Some(Arch::ScmpArchX86_64)),
            "aarch64" => ("arm64", Some(Arch::ScmpArchAarch64)),
            "x86" => ("x86", Some(Arch::ScmpArchX86)),
            "arm" => ("arm", Some(Arch::ScmpArchArm)),
            "riscv64" => ("riscv64", Some(Arch::ScmpArchRiscv64)),
            "s390x" => ("s390x", Some(Arch::ScmpArchS390x)),
            "powerpc64" if cfg!(target_endian = "little") => {
                ("ppc64le", Some(Arch::ScmpArchPpc64le))
            }
            "powerpc64" => ("ppc64", Some(Arch::ScmpArchPpc64)),
            "loongarch64" => ("loongarch64", Some(Arch::ScmpArchLoongarch64)),
            other => (other, None),
        };
        let uname = rustix::system::uname();
        let release = uname.release().to_string_lossy();
        HostInfo {
            arch_name,
            seccomp_arch,
            kernel: parse_kernel_release(&release).unwrap_or((0, 0)),
        }
    }
}

/// `(version, major revision)` of a kernel release such as `6.1.0-18-amd64` or `3.12-rc5`.
fn parse_kernel_release(release: &str) -> Option<(u64, u64)> {
    let mut parts = release.split('.');
    let version = parts.next()?.parse().ok()?;
    let major: String = parts
        .next()?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Some((version, major.parse().ok()?))
}

/// A Docker-format profile: the OCI seccomp section plus `archMap` and conditional rules.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DockerProfile {
    default_action: Option<LinuxSeccompAction>,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<Arch>>,
    arch_map: Option<Vec<ArchMapEntry>>,
    flags: Option<Vec<LinuxSeccompFilterFlag>>,
    listener_path: Option<PathBuf>,
    listener_metadata: Option<String>,
    syscalls: Option<Vec<DockerRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ArchMapEntry {
    architecture: Arch,
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DockerRule {
    names: Option<Vec<String>>,
    /// The older single-name form.
    name: Option<String>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(rename = "comment")]
    _comment: Option<String>,
    includes: Option<RuleFilter>,
    excludes: Option<RuleFilter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleFilter {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

/// The conditions of a rule's `includes` or `excludes`, evaluated.
struct FilterFacts {
    /// Some listed capability is in the bounding set (`None`: the filter lists none).
    any_cap: Option<bool>,
    /// Every listed capability is in the bounding set.
    all_caps: Option<bool>,
    /// The host's architecture is listed.
    arch: Option<bool>,
    /// The host's kernel is at least `minKernel`.
    kernel: Option<bool>,
}

impl RuleFilter {
    fn facts(&self, held: &[String], host: &HostInfo) -> Result<FilterFacts, String> {
        let caps = self.caps.as_deref().filter(|c| !c.is_empty());
        let kernel = match self.min_kernel.as_deref().filter(|k| !k.is_empty()) {
            None => None,
            Some(k) => Some(host.kernel >= parse_min_kernel(k)?),
        };
        Ok(FilterFacts {
            any_cap: caps.map(|c| c.iter().any(|c| held.contains(c))),
            all_caps: caps.map(|c| c.iter().all(|c| held.contains(c))),
            arch: self
                .arches
                .as_deref()
                .filter(|a| !a.is_empty())
                .map(|a| a.iter().any(|a| a == host.arch_name)),
            kernel,
        })
    }
}

/// `"<version>.<major>"`, not `0.0` (Docker's `minKernel` format).
fn parse_min_kernel(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("minKernel {text:?} is not \"<version>.<major>\"");
    let (v, m) = text.split_once('.').ok_or_else(bad)?;
    let parsed = (
        v.parse::<u8>().map_err(|_| bad())?,
        m.parse::<u8>().map_err(|_| bad())?,
    );
    if parsed == (0, 0) {
        return Err(bad());
    }
    Ok((u64::from(parsed.0), u64::from(parsed.1)))
}

/// Resolves a Docker-format profile (`bytes`, read from `path`) for a container and host.
fn resolve_docker_profile(
    bytes: &[u8],
    capabilities: &[Capability],
    host: &HostInfo,
    path: &Path,
) -> Result<LinuxSeccomp, SeccompError> {
    let invalid = |reason: String| SeccompError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let docker: DockerProfile =
        serde_json::from_slice(bytes).map_err(|cause| SeccompError::Parse {
            path: path.to_path_buf(),
            cause,
        })?;
    let Some(default_action) = docker.default_action else {
        return Err(invalid(
            "no defaultAction; a profile must confine (use the Unconfined type for no seccomp)"
                .into(),
        ));
    };
    if docker.flags.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(invalid(
            "sets flags, which runc 1.1 does not support".into(),
        ));
    }
    let no_agent = "needs a seccomp agent (SCMP_ACT_NOTIFY, listenerPath), which imc does not run";
    if docker.listener_path.is_some()
        || docker.listener_metadata.is_some()
        || default_action == LinuxSeccompAction::ScmpActNotify
    {
        return Err(invalid(no_agent.into()));
    }
    let architectures = match (docker.architectures, docker.arch_map) {
        (Some(a), Some(m)) if !a.is_empty() && !m.is_empty() => {
            return Err(invalid(
                "sets both architectures and archMap; use one".into(),
            ));
        }
        (Some(a), _) if !a.is_empty() => a,
        (_, Some(map)) => map
            .into_iter()
            .find(|e| Some(e.architecture) == host.seccomp_arch)
            .map(|e| {
                std::iter::once(e.architecture)
                    .chain(e.sub_architectures.unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    // Docker compares capability names as strings against the bounding set.
    let held: Vec<String> = capabilities.iter().map(|c| format!("CAP_{c}")).collect();
    let mut rules = Vec::new();
    for (i, rule) in docker.syscalls.unwrap_or_default().into_iter().enumerate() {
        let at = |reason: String| invalid(format!("syscalls[{i}]: {reason}"));
        let names = match (rule.name, rule.names) {
            (Some(_), Some(names)) if !names.is_empty() => {
                return Err(at("sets both name and names; use one".into()));
            }
            (Some(name), _) => vec![name],
            (None, Some(names)) if !names.is_empty() => names,
            _ => return Err(at("names no syscall".into())),
        };
        if let Some(bad) = names.iter().find(|n| !is_syscall_name(n)) {
            return Err(at(format!("{bad:?} is not a syscall name")));
        }
        if rule.action == LinuxSeccompAction::ScmpActNotify {
            return Err(at(no_agent.into()));
        }
        if let Some(arg) = rule.args.iter().flatten().find(|a| a.index() > 5) {
            return Err(at(format!(
                "argument index {} is out of range (0-5)",
                arg.index()
            )));
        }
        if let Some(excludes) = &rule.excludes {
            let f = excludes.facts(&held, host).map_err(&at)?;
            // Excluded when any one listed condition holds.
            if f.arch == Some(true) || f.any_cap == Some(true) || f.kernel == Some(true) {
                continue;
            }
        }
        if let Some(includes) = &rule.includes {
            let f = includes.facts(&held, host).map_err(&at)?;
            // Included only when every listed condition holds.
            if f.arch == Some(false) || f.all_caps == Some(false) || f.kernel == Some(false) {
                continue;
            }
        }
        let mut out = LinuxSyscall::default();
        out.set_names(names);
        out.set_action(rule.action);
        out.set_errno_ret(rule.errno_ret);
        out.set_args(rule.args);
        rules.push(out);
    }

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(default_action);
    profile.set_default_errno_ret(docker.default_errno_ret);
    profile.set_architectures((!architectures.is_empty()).then_some(architectures));
    profile.set_syscalls(Some(rules));
    Ok(profile)
}

/// A syscall name as libseccomp spells them: lower-case letters, digits and `_`, at most 64.
fn is_syscall_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Why a seccomp profile could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The pod's `localhostProfile` is not a plain relative path under the seccomp directory.
    #[error("seccomp localhost profile {name:?} is refused: {reason}")]
    InvalidProfileName {
        /// The name as given (at most 256 characters of it).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The profile file could not be read.
    #[error("reading seccomp profile {}: {cause}", path.display())]
    Read {
        /// The profile file.
        path: PathBuf,
        /// The error.
        cause: std::io::Error,
    },
    /// The profile path is not a regular file.
    #[error("seccomp profile {} is {kind}, not a regular file", path.display())]
    NotRegularFile {
        /// The profile path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The profile file is over [`MAX_PROFILE_BYTES`].
    #[error("seccomp profile {} is {size} bytes, over the {limit}-byte limit", path.display())]
    TooLarge {
        /// The profile file.
        path: PathBuf,
        /// Its size (or how much was read before stopping).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The profile file is not JSON of the Docker profile format.
    #[error("seccomp profile {} is not a valid Docker-format profile: {cause}", path.display())]
    Parse {
        /// The profile file.
        path: PathBuf,
        /// The JSON error (line and column).
        cause: serde_json::Error,
    },
    /// The profile is well-formed but asks for something imc does not do.
    #[error("seccomp profile {}: {reason}", path.display())]
    Invalid {
        /// The profile file.
        path: PathBuf,
        /// What it asks for and why it is refused.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::DEFAULT_CAPABILITIES;

    /// How the profile treats a call with no argument conditions: allowed, an errno, or not
    /// listed unconditionally (default action or argument-conditioned rules only).
    fn verdict(profile: &LinuxSeccomp, name: &str) -> Option<(LinuxSeccompAction, Option<u32>)> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|r| r.args().as_ref().is_none_or(|a| a.is_empty()))
            .find(|r| r.names().iter().any(|n| n == name))
            .map(|r| (r.action(), r.errno_ret()))
    }

    fn allowed(profile: &LinuxSeccomp, name: &str) -> bool {
        verdict(profile, name).is_some_and(|(a, _)| a == LinuxSeccompAction::ScmpActAllow)
    }

    fn conditional_rules<'a>(profile: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|r| r.names().iter().any(|n| n == name))
            .filter(|r| r.args().as_ref().is_some_and(|a| !a.is_empty()))
            .collect()
    }

    fn with(extra: &[Capability]) -> Vec<Capability> {
        DEFAULT_CAPABILITIES.iter().chain(extra).copied().collect()
    }

    #[test]
    fn default_action_is_errno_eperm_on_the_host_architectures() {
        let p = runtime_default(&DEFAULT_CAPABILITIES);
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        assert_eq!(
            profile_for(HostArch::X86_64, &[], true)
                .architectures()
                .as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        assert_eq!(
            profile_for(HostArch::X86_64, &[], false)
                .architectures()
                .as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86][..])
        );
        assert_eq!(
            profile_for(HostArch::Aarch64, &[], true)
                .architectures()
                .as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
        // The JSON runc reads.
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
    }

    #[test]
    fn the_unconditional_allow_list_is_the_references_361_calls() {
        let all: Vec<&str> = ALLOWED_GROUPS
            .iter()
            .flat_map(|g| g.iter().copied())
            .collect();
        let distinct: HashSet<&str> = all.iter().copied().collect();
        assert_eq!(all.len(), 361);
        assert_eq!(distinct.len(), 361, "no call listed in two groups");
        let p = runtime_default(&[]);
        for name in [
            "read",
            "execve",
            "openat",
            "futex",
            "clock_gettime",
            "accept4",
        ] {
            assert!(allowed(&p, name), "{name}");
        }
        for name in [
            "io_uring_setup",
            "keyctl",
            "add_key",
            "kexec_load",
            "userfaultfd",
        ] {
            assert_eq!(
                verdict(&p, name),
                None,
                "{name} falls to the default action"
            );
        }
    }

    /// Each row: a call, the capability that unlocks it in the reference.
    #[test]
    fn capability_conditioned_calls_follow_the_bounding_set() {
        let cases: &[(&str, Capability)] = &[
            ("mount", Capability::SysAdmin),
            ("umount2", Capability::SysAdmin),
            ("unshare", Capability::SysAdmin),
            ("setns", Capability::SysAdmin),
            ("sethostname", Capability::SysAdmin),
            ("lsm_list_modules", Capability::SysAdmin),
            ("reboot", Capability::SysBoot),
            ("kcmp", Capability::SysPtrace),
            ("pidfd_getfd", Capability::SysPtrace),
            ("process_madvise", Capability::SysPtrace),
            ("init_module", Capability::SysModule),
            ("finit_module", Capability::SysModule),
            ("acct", Capability::SysPacct),
            ("iopl", Capability::SysRawio),
            ("settimeofday", Capability::SysTime),
            ("clock_settime", Capability::SysTime),
            ("vhangup", Capability::SysTtyConfig),
            ("mbind", Capability::SysNice),
            ("syslog", Capability::Syslog),
            ("bpf", Capability::Bpf),
            ("perf_event_open", Capability::Perfmon),
            ("open_by_handle_at", Capability::DacReadSearch),
        ];
        let docker = runtime_default(&DEFAULT_CAPABILITIES);
        for (name, cap) in cases {
            assert!(!allowed(&docker, name), "{name} without {cap:?}");
            assert!(
                allowed(&runtime_default(&with(&[*cap])), name),
                "{name} with {cap:?}"
            );
        }
        // CAP_SYS_CHROOT is in Docker's set, so chroot is allowed by default and not without it.
        assert!(allowed(&docker, "chroot"));
        assert!(!allowed(&runtime_default(&[]), "chroot"));
        // The reference grants nothing for CAP_SYS_RESOURCE.
        assert_eq!(
            runtime_default(&with(&[Capability::SysResource])),
            runtime_default(&DEFAULT_CAPABILITIES)
        );
    }

    #[test]
    fn ptrace_of_own_processes_is_allowed_as_on_kernels_from_4_8() {
        let p = runtime_default(&DEFAULT_CAPABILITIES);
        for name in TRACING {
            assert!(allowed(&p, name), "{name}");
        }
    }

    #[test]
    fn clone_without_cap_sys_admin_may_not_create_namespaces_and_clone3_is_enosys() {
        let p = runtime_default(&DEFAULT_CAPABILITIES);
        assert!(!allowed(&p, "clone"));
        let clone = conditional_rules(&p, "clone");
        assert_eq!(clone.len(), 1);
        let arg = clone[0].args().as_ref().unwrap()[0];
        assert_eq!(arg.index(), 0);
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(arg.value(), 0x7E02_0000);
        assert_eq!(arg.value_two(), Some(0));
        assert_eq!(
            verdict(&p, "clone3"),
            Some((LinuxSeccompAction::ScmpActErrno, Some(38)))
        );

        let admin = runtime_default(&with(&[Capability::SysAdmin]));
        assert!(allowed(&admin, "clone"));
        assert!(allowed(&admin, "clone3"));
        assert!(conditional_rules(&admin, "clone").is_empty());
    }

    #[test]
    fn socket_refuses_af_alg_and_af_vsock_only() {
        let p = runtime_default(&DEFAULT_CAPABILITIES);
        assert!(!allowed(&p, "socket"));
        let rules = conditional_rules(&p, "socket");
        let admits = |family: u64| {
            rules.iter().any(|r| {
                let a = r.args().as_ref().unwrap()[0];
                match a.op() {
                    LinuxSeccompOperator::ScmpCmpLt => family < a.value(),
                    LinuxSeccompOperator::ScmpCmpEq => family == a.value(),
                    LinuxSeccompOperator::ScmpCmpGt => family > a.value(),
                    op => panic!("unexpected {op:?}"),
                }
            })
        };
        let cases = [
            (libc::AF_UNIX, true),
            (libc::AF_INET, true),
            (libc::AF_INET6, true),
            (libc::AF_NETLINK, true),
            (libc::AF_PACKET, true),
            (libc::AF_ALG, false),
            (libc::AF_NFC, true),
            (libc::AF_VSOCK, false),
            (libc::AF_XDP, true),
        ];
        for (family, want) in cases {
            assert_eq!(admits(family as u64), want, "family {family}");
        }
    }

    #[test]
    fn personality_is_limited_to_the_references_values() {
        let p = runtime_default(&[]);
        let values: Vec<u64> = conditional_rules(&p, "personality")
            .iter()
            .map(|r| r.args().as_ref().unwrap()[0].value())
            .collect();
        assert_eq!(values, vec![0, 8, 0x20000, 0x20008, 0xffff_ffff]);
    }

    /// The probe agrees with the running kernel's build configuration (`/proc/config.gz`, which
    /// this project's machines have): x32 is covered exactly when the kernel runs it.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn x32_is_covered_only_when_the_kernel_runs_it() {
        let out = std::process::Command::new("zcat")
            .arg("/proc/config.gz")
            .output()
            .expect("zcat /proc/config.gz");
        assert!(out.status.success(), "this test needs /proc/config.gz");
        let config = String::from_utf8_lossy(&out.stdout);
        let built = config.lines().any(|l| l == "CONFIG_X86_X32_ABI=y");
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap();
        let disabled = cmdline
            .split_whitespace()
            .any(|w| w == "syscall.x32=n" || w == "syscall.x32=N");
        assert_eq!(kernel_runs_x32(), built && !disabled);
        let covered = runtime_default(&DEFAULT_CAPABILITIES)
            .architectures()
            .clone()
            .unwrap()
            .contains(&Arch::ScmpArchX32);
        assert_eq!(covered, kernel_runs_x32());
    }

    #[test]
    fn architecture_specific_calls() {
        let x86 = profile_for(HostArch::X86_64, &[], true);
        assert!(allowed(&x86, "arch_prctl") && allowed(&x86, "modify_ldt"));
        assert!(!allowed(&x86, "set_tls"));
        let arm = profile_for(HostArch::Aarch64, &[], true);
        assert!(allowed(&arm, "set_tls") && allowed(&arm, "cacheflush"));
        assert!(!allowed(&arm, "arch_prctl"));
        let s390 = profile_for(HostArch::S390x, &[], true);
        assert!(allowed(&s390, "s390_runtime_instr"));
        let clone = conditional_rules(&s390, "clone");
        assert_eq!(clone[0].args().as_ref().unwrap()[0].index(), 1);
    }

    #[test]
    fn localhost_profile_names_follow_the_kubernetes_rule() {
        let cases: &[(&str, bool)] = &[
            ("audit.json", true),
            ("profiles/strict.json", true),
            ("./profiles/strict.json", true),
            ("a..b.json", true),
            ("", false),
            (".", false),
            ("./", false),
            ("/etc/seccomp.json", false),
            ("..", false),
            ("../x.json", false),
            ("profiles/../../x.json", false),
            ("profiles/..", false),
            ("a\0b", false),
        ];
        for (name, ok) in cases {
            assert_eq!(LocalhostProfile::parse(name).is_ok(), *ok, "{name:?}");
        }
        assert!(LocalhostProfile::parse(&"a".repeat(5000)).is_err());
        let err = LocalhostProfile::parse("../../etc/x").unwrap_err();
        assert!(err.to_string().contains("'..'"), "{err}");
    }

    #[test]
    fn localhost_name_is_checked_again_where_it_becomes_a_path() {
        let dir = tempfile::tempdir().unwrap();
        // A value that bypassed `parse` (the field is private; only this module can do this).
        let sneaky = LocalhostProfile("../outside.json".into());
        let err = from_localhost_file(dir.path(), &sneaky, &[]).unwrap_err();
        assert!(
            matches!(err, SeccompError::InvalidProfileName { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_fifo_profile_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fifo.json"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let name = LocalhostProfile::parse("fifo.json").unwrap();
        // No writer ever opens the FIFO: a blocking open or read would hang this test.
        let err = from_localhost_file(dir.path(), &name, &[]).unwrap_err();
        assert!(
            matches!(err, SeccompError::NotRegularFile { kind: "a FIFO", .. }),
            "{err}"
        );
        std::fs::create_dir(dir.path().join("d.json")).unwrap();
        let err = from_localhost_file(dir.path(), &LocalhostProfile::parse("d.json").unwrap(), &[])
            .unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
    }

    #[test]
    fn an_oversized_profile_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("big.json")).unwrap();
        f.set_len(MAX_PROFILE_BYTES + 1).unwrap();
        let err = from_localhost_file(
            dir.path(),
            &LocalhostProfile::parse("big.json").unwrap(),
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, SeccompError::TooLarge { .. }), "{err}");
    }

    fn host() -> HostInfo {
        HostInfo {
            arch_name: "amd64",
            seccomp_arch: Some(Arch::ScmpArchX86_64),
            kernel: (5, 10),
        }
    }

    fn resolve(json: &str, caps: &[Capability]) -> Result<LinuxSeccomp, SeccompError> {
        resolve_docker_profile(json.as_bytes(), caps, &host(), Path::new("/p.json"))
    }

    #[test]
    fn docker_format_conditions_are_resolved_for_the_container_and_host() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "archMap": [
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
                {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}
            ],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "io"},
                {"name": "getpid", "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
                {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
                {"names": ["newcall"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "6.13"}},
                {"names": ["oldcall"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.4"}},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
            ]
        }"#;
        let p = resolve(json, &DEFAULT_CAPABILITIES).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86][..])
        );
        let names = |p: &LinuxSeccomp| -> Vec<String> {
            p.syscalls()
                .iter()
                .flatten()
                .flat_map(|r| r.names().clone())
                .collect()
        };
        assert_eq!(
            names(&p),
            vec![
                "read",
                "write",
                "getpid",
                "arch_prctl",
                "ptrace",
                "clone",
                "mkdir"
            ]
        );
        assert_eq!(
            verdict(&p, "mkdir"),
            Some((LinuxSeccompAction::ScmpActErrno, Some(13)))
        );
        let admin = resolve(json, &with(&[Capability::SysAdmin])).unwrap();
        assert_eq!(
            names(&admin),
            vec![
                "read",
                "write",
                "getpid",
                "mount",
                "arch_prctl",
                "ptrace",
                "mkdir"
            ]
        );
    }

    #[test]
    fn docker_format_profiles_asking_for_what_imc_cannot_do_are_refused() {
        let cases: &[(&str, &str)] = &[
            (r#"{"syscalls": []}"#, "no defaultAction"),
            (r#"{}"#, "no defaultAction"),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}"#,
                "flags",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/agent.sock"}"#,
                "seccomp agent",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}"#,
                "seccomp agent",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": null}]}"#,
                "both architectures and archMap",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_ALLOW"}]}"#,
                "both name and names",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#,
                "names no syscall",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["../x"], "action": "SCMP_ACT_ALLOW"}]}"#,
                "not a syscall name",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#,
                "argument index 6",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                    "includes": {"minKernel": "4"}}]}"#,
                "minKernel",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultActon": "SCMP_ACT_ALLOW"}"#,
                "unknown field `defaultActon`",
            ),
            (r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#, "SCMP_ACT_MAYBE"),
            ("not json", "not a valid Docker-format profile"),
        ];
        for (json, want) in cases {
            let err = resolve(json, &[]).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
            assert!(err.contains("/p.json"), "names the file: {err}");
        }
    }

    #[test]
    fn capability_names_compare_as_docker_spells_them() {
        let held: Vec<String> = [
            Capability::SysAdmin,
            Capability::Syslog,
            Capability::NetBindService,
        ]
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
        assert_eq!(
            held,
            ["CAP_SYS_ADMIN", "CAP_SYSLOG", "CAP_NET_BIND_SERVICE"]
        );
    }

    #[test]
    fn kernel_releases_parse_to_version_and_major() {
        let cases = [
            ("6.18.44-fc-v669", Some((6, 18))),
            ("3.12-rc5", Some((3, 12))),
            ("5.10.0-28-amd64", Some((5, 10))),
            ("4.8", Some((4, 8))),
            ("garbage", None),
        ];
        for (release, want) in cases {
            assert_eq!(parse_kernel_release(release), want, "{release}");
        }
    }

    #[test]
    fn resolve_maps_each_kubernetes_type() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("allow.json"),
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let caps = DEFAULT_CAPABILITIES;
        assert_eq!(
            SeccompProfile::RuntimeDefault
                .resolve(dir.path(), &caps)
                .unwrap(),
            Some(runtime_default(&caps))
        );
        assert_eq!(
            SeccompProfile::Unconfined
                .resolve(dir.path(), &caps)
                .unwrap(),
            None
        );
        let local = SeccompProfile::Localhost(LocalhostProfile::parse("allow.json").unwrap())
            .resolve(dir.path(), &caps)
            .unwrap()
            .unwrap();
        assert_eq!(local.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(
            verdict(&local, "mkdir"),
            Some((LinuxSeccompAction::ScmpActErrno, None))
        );
        let missing = SeccompProfile::Localhost(LocalhostProfile::parse("nope.json").unwrap())
            .resolve(dir.path(), &caps)
            .unwrap_err();
        assert!(matches!(missing, SeccompError::Read { .. }), "{missing}");
    }
}
