//! Every system call sampler makes about perf events, behind one small safe surface.
//!
//! [`PerfSys`] is what the open/attach code (`session`) is written against: the real
//! implementation is [`RealSys`]; tests substitute a fake that answers with the errors a
//! machine without a PMU gives, so the fall-back logic is tested without a kernel.
//! The few other calls (capabilities, CPU affinity, sysctls) are plain functions here.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use perf_event_open_sys::{self as sys, bindings::perf_event_attr};

pub mod rseq;

/// The perf-event system calls, so tests can replace the kernel.
pub trait PerfSys {
    /// `perf_event_open(attr, pid, cpu, group, PERF_FLAG_FD_CLOEXEC)`; `group` is the
    /// leader's fd for a group member.
    fn perf_event_open(
        &self,
        attr: &perf_event_attr,
        pid: i32,
        cpu: i32,
        group: Option<BorrowedFd<'_>>,
    ) -> io::Result<OwnedFd>;
    /// `ioctl(PERF_EVENT_IOC_SET_BPF)`: run `prog` on every overflow of `event`.
    fn set_bpf(&self, event: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()>;
    /// `ioctl(PERF_EVENT_IOC_ENABLE)`.
    fn enable(&self, event: BorrowedFd<'_>) -> io::Result<()>;
    /// `ioctl(PERF_EVENT_IOC_DISABLE)`.
    fn disable(&self, event: BorrowedFd<'_>) -> io::Result<()>;
    /// `ioctl(PERF_EVENT_IOC_ID)`: the id `read()` reports the event under.
    fn id(&self, event: BorrowedFd<'_>) -> io::Result<u64>;
    /// `read()` of an event: its counts in the layout of its `read_format`.
    fn read(&self, event: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize>;
    /// `bpf(BPF_MAP_UPDATE_ELEM)`: puts perf event `event` at `index` of the
    /// `PERF_EVENT_ARRAY` map `map`, where BPF programs read it.
    fn set_map_event(
        &self,
        map: BorrowedFd<'_>,
        index: u32,
        event: BorrowedFd<'_>,
    ) -> io::Result<()>;
    /// `bpf(BPF_MAP_DELETE_ELEM)`: empties `index` of the `PERF_EVENT_ARRAY` map `map`
    /// (the map holds a reference to the event it had there until then).
    fn clear_map_event(&self, map: BorrowedFd<'_>, index: u32) -> io::Result<()>;
}

/// The running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSys;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl PerfSys for RealSys {
    fn perf_event_open(
        &self,
        attr: &perf_event_attr,
        pid: i32,
        cpu: i32,
        group: Option<BorrowedFd<'_>>,
    ) -> io::Result<OwnedFd> {
        let mut attr = *attr;
        attr.size = size_of::<perf_event_attr>() as u32;
        let group_fd = group.map_or(-1, |g| g.as_raw_fd());
        // SAFETY: `attr` is a valid, fully initialised perf_event_attr with its `size`
        // set; the kernel only reads it (and may write the size back on E2BIG).
        // `group_fd` is -1 or a borrowed, open perf event fd.
        let fd = check(unsafe {
            sys::perf_event_open(
                &mut attr,
                pid,
                cpu,
                group_fd,
                libc::c_ulong::from(sys::bindings::PERF_FLAG_FD_CLOEXEC),
            )
        })?;
        // SAFETY: a successful perf_event_open returns a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn set_bpf(&self, event: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: both fds are open for the duration of the call (borrowed); the ioctl
        // takes the program fd by value.
        check(unsafe { sys::ioctls::SET_BPF(event.as_raw_fd(), prog.as_raw_fd() as u32) }).map(drop)
    }

    fn enable(&self, event: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: `event` is an open perf-event fd; the argument is unused (0 = this
        // event only).
        check(unsafe { sys::ioctls::ENABLE(event.as_raw_fd(), 0) }).map(drop)
    }

    fn disable(&self, event: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: as for `enable`.
        check(unsafe { sys::ioctls::DISABLE(event.as_raw_fd(), 0) }).map(drop)
    }

    fn id(&self, event: BorrowedFd<'_>) -> io::Result<u64> {
        let mut id = 0u64;
        // SAFETY: `event` is an open perf-event fd and `id` a valid u64 to write.
        check(unsafe { sys::ioctls::ID(event.as_raw_fd(), &mut id) })?;
        Ok(id)
    }

    fn read(&self, event: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length; `event` is open.
        let n = unsafe { libc::read(event.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn set_map_event(
        &self,
        map: BorrowedFd<'_>,
        index: u32,
        event: BorrowedFd<'_>,
    ) -> io::Result<()> {
        const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
        let value = event.as_raw_fd() as u32;
        map_elem(BPF_MAP_UPDATE_ELEM, map, index, Some(&value))
    }

    fn clear_map_event(&self, map: BorrowedFd<'_>, index: u32) -> io::Result<()> {
        const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
        map_elem(BPF_MAP_DELETE_ELEM, map, index, None)
    }
}

/// One `BPF_MAP_*_ELEM` call on an array map with a `u32` key (and value).
fn map_elem(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    index: u32,
    value: Option<&u32>,
) -> io::Result<()> {
    /// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
    #[repr(C)]
    struct MapElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_ANY: u64 = 0;
    let key = index;
    let attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: (&raw const key) as u64,
        value: value.map_or(0, |v| std::ptr::from_ref(v) as u64),
        flags: BPF_ANY,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_MAP_{UPDATE,DELETE}_ELEM of the
    // size passed; `key` and `value` outlive the call; the kernel only reads them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &raw const attr,
            size_of::<MapElemAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The most read of one sysfs file: attribute files are at most a page.
pub const SYSFS_FILE_MAX: u64 = 64 * 1024;

/// Reads a sysfs attribute file: a regular file, at most [`SYSFS_FILE_MAX`] bytes of
/// it, as text.
/// Anything else under a (possibly hostile or damaged) `--sysfs-root` is an error, not
/// a hang or a huge allocation: a FIFO (opened without blocking, then refused), a
/// device such as `/dev/zero` behind a symlink, a directory.
pub fn read_sysfs_file(path: &Path) -> io::Result<String> {
    KeptFile::open(path)?.read()
}

/// A one-shot monotonic timer as a file descriptor (`timerfd`): readable once it has
/// fired, so an event loop waits for it among its other descriptors and wakes once,
/// at the deadline. (A tokio sleep of a second wakes twice: its timer wheel fires the
/// coarse slot that holds the deadline, then the fine one.)
#[derive(Debug)]
pub struct TimerFd(OwnedFd);

impl TimerFd {
    /// A new, disarmed timer, non-blocking.
    pub fn new() -> io::Result<Self> {
        // SAFETY: no pointers; returns a new descriptor or -1.
        let fd = check(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just created, and nothing else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The timer in the current tokio runtime's poll set, for reading only.
    pub fn into_async(self) -> io::Result<tokio::io::unix::AsyncFd<Self>> {
        // SAFETY: the descriptor is the `OwnedFd` inside, which stays open and the
        // same for as long as the `AsyncFd` owns the timer, and `as_raw_fd` always
        // gives it.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)
    }

    /// Arms the timer to fire once, `after` from now (a zero `after` fires at once,
    /// as a zero value would disarm it). Expirations not yet taken are dropped.
    pub fn arm(&self, after: std::time::Duration) -> io::Result<()> {
        let after = after.max(std::time::Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                // At most 68 years, which fits a 32-bit time_t too.
                tv_sec: after.as_secs().min(i32::MAX as u64) as _,
                tv_nsec: after.subsec_nanos() as _,
            },
        };
        // SAFETY: `spec` is a valid itimerspec for the call; the old value is not
        // asked for (null).
        check(unsafe {
            libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        })?;
        Ok(())
    }

    /// Takes the timer's expirations: `Ok` once it fired since it was armed, an
    /// error of kind `WouldBlock` before.
    pub fn take(&self) -> io::Result<()> {
        let mut expirations = 0u64;
        // SAFETY: reads at most 8 bytes into `expirations`, which has 8.
        let n = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&raw mut expirations).cast(),
                size_of::<u64>(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// A sysfs attribute or `/proc/sys` file kept open, for a value polled at every
/// refresh: each [`KeptFile::read`] reads it again from its start (`pread` at offset
/// 0, for which the kernel generates the text anew), without the path walk and
/// permission checks of opening it again (an eighth of a live view's refresh).
pub struct KeptFile {
    file: std::fs::File,
}

impl KeptFile {
    /// Opens `path` as [`read_sysfs_file`] does: without blocking, and only a regular
    /// file.
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(Self { file })
    }

    /// The file's text now: at most [`SYSFS_FILE_MAX`] bytes of it, from its start.
    /// A read that fills less than its buffer has reached the end (sysfs and procfs
    /// hand out a whole attribute in one read), so a short file takes one `pread`.
    pub fn read(&self) -> io::Result<String> {
        use std::os::unix::fs::FileExt as _;
        let mut text = Vec::new();
        let mut chunk = [0u8; 4096];
        while (text.len() as u64) < SYSFS_FILE_MAX {
            let n = match self.file.read_at(&mut chunk, text.len() as u64) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            text.extend_from_slice(&chunk[..n]);
            if n < chunk.len() {
                break;
            }
        }
        text.truncate(SYSFS_FILE_MAX as usize);
        // The words std's read_to_string uses.
        String::from_utf8(text).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )
        })
    }

    /// The file's text as an integer (a sysctl's value).
    pub fn read_u64(&self, path: &Path) -> io::Result<u64> {
        parse_u64(&self.read()?, path)
    }
}

/// A sysctl file's text as an integer; errors name `path`.
fn parse_u64(text: &str, path: &Path) -> io::Result<u64> {
    text.trim().parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// One `BPF_MAP_LOOKUP_BATCH` call on a hash map: copies up to `keys.len()` entries
/// into `keys` and `values` and returns how many, and whether the map is exhausted.
/// `token` carries the position between calls (`first` for the first one). `K` and
/// `V` must be the map's key and value types (their sizes are what the kernel
/// writes per entry). Linux 5.6+; older kernels answer EINVAL.
pub fn map_lookup_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    token: &mut [u64; 4],
    first: bool,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<(usize, bool)> {
    /// The `BPF_MAP_*_BATCH` part of `union bpf_attr`.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let count = keys.len().min(values.len());
    let mut out_token = [0u64; 4];
    let mut attr = BatchAttr {
        in_batch: if first { 0 } else { token.as_ptr() as u64 },
        out_batch: out_token.as_mut_ptr() as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: u32::try_from(count).unwrap_or(u32::MAX),
        map_fd: map.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_MAP_LOOKUP_BATCH of the size
    // passed. The kernel writes at most `count` keys and values of the map's sizes,
    // which are `K` and `V` (the caller's contract), into buffers that hold `count`
    // of each, and a batch token of at most the key size into `out_token` (32 bytes,
    // larger than a hash map's 4-byte bucket token); all outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &raw mut attr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    let copied = (attr.count as usize).min(count);
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOENT) {
            return Ok((copied, true));
        }
        return Err(err);
    }
    *token = out_token;
    Ok((copied, false))
}

/// The symbolic name of an errno perf users know (`ENOENT`), else the io::Error text.
pub fn errno_name(err: &io::Error) -> String {
    let name = match err.raw_os_error() {
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ENODEV) => "ENODEV",
        Some(libc::ENXIO) => "ENXIO",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EPERM) => "EPERM",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::EMFILE) => "EMFILE",
        _ => return err.to_string(),
    };
    name.to_owned()
}

/// Linux capability numbers sampler cares about.
pub mod cap {
    pub const SYS_ADMIN: u32 = 21;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;
}

/// The effective capability set of this process (`CapEff` of `/proc/self/status`).
pub fn effective_capabilities() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_cap_eff(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no CapEff line in /proc/self/status",
        )
    })
}

/// Parses the `CapEff:` hex mask out of a `/proc/<pid>/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Which of the capabilities needed to load BPF and open system-wide perf events are
/// missing from `caps`. `CAP_SYS_ADMIN` stands in for both (kernels before 5.8 only
/// know it).
pub fn missing_capabilities(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(cap::SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(cap::BPF) {
        missing.push("CAP_BPF");
    }
    if !has(cap::PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Pins process or thread `pid` (0: the caller) to one CPU.
pub fn pin_to_cpu(pid: i32, cpu: u32) -> io::Result<()> {
    if cpu as usize >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so CPU_SET stays in bounds.
    unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    check(unsafe { libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) }).map(drop)
}

/// The CPUs the calling thread may run on that are active now, in order: the
/// kernel's answer to `sched_getaffinity` is the thread's allowed CPUs among the
/// active ones. A cheap call (no text, no allocation in the kernel) that changes
/// when a CPU goes offline (it leaves the active set first) or comes online (it
/// joins just after), for a thread allowed on every CPU.
pub fn active_affinity() -> io::Result<Vec<u32>> {
    // 8,192 CPUs; the kernel copies its mask's size (a multiple of 8 bytes).
    let mut mask = [0u64; 128];
    // SAFETY: the kernel writes at most `size_of_val(&mask)` bytes into `mask`.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            0,
            size_of_val(&mask),
            mask.as_mut_ptr(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let words = (n as usize / size_of::<u64>()).min(mask.len());
    Ok(mask[..words]
        .iter()
        .enumerate()
        .flat_map(|(w, bits)| {
            (0..64u32)
                .filter(move |b| bits >> b & 1 == 1)
                .map(move |b| w as u32 * 64 + b)
        })
        .collect())
}

/// The calling thread's id.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// The CPU time the calling thread has used, in nanoseconds, by the scheduler's own
/// account (`CLOCK_THREAD_CPUTIME_ID`), independent of perf.
pub fn thread_cpu_ns() -> io::Result<u64> {
    // SAFETY: timespec is plain integers; all zeroes is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable timespec.
    check(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) })?;
    Ok((ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64))
}

/// The CPU the calling thread runs on now (`sched_getcpu`).
pub fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).ok()
}

/// Reads an integer sysctl file such as `/proc/sys/kernel/perf_event_max_sample_rate`.
pub fn read_sysctl_u64(path: &Path) -> io::Result<u64> {
    parse_u64(&std::fs::read_to_string(path)?, path)
}

/// Drops every capability for good once programs are loaded and events are open:
/// what is already open (map, program and perf event fds) keeps working without
/// them. Sets `no_new_privs` (nothing regained through executing a setuid or
/// file-capability binary), empties the bounding set where allowed (CAP_SETPCAP),
/// then the ambient, inheritable, permitted and effective sets. Returns the
/// effective set afterwards (0).
pub fn drop_all_capabilities() -> io::Result<u64> {
    drop_capabilities_except(&[])
}

/// As [`drop_all_capabilities`], keeping `keep` (those of them the process has) in
/// the permitted and effective sets and nothing else. Returns the effective set.
pub fn drop_capabilities_except(keep: &[caps::Capability]) -> io::Result<u64> {
    use caps::CapSet;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let err = |e: caps::errors::CapsError| io::Error::other(e.to_string());
    let have = caps::read(None, CapSet::Permitted).map_err(err)?;
    let kept: caps::CapsHashSet = keep.iter().copied().filter(|c| have.contains(c)).collect();
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).map_err(err)? {
        for c in caps::all().into_iter().filter(|c| !kept.contains(c)) {
            // A capability the bounding set no longer has is fine.
            let _ = caps::drop(None, CapSet::Bounding, c);
        }
    }
    for set in [CapSet::Ambient, CapSet::Inheritable] {
        caps::clear(None, set).map_err(err)?;
    }
    // Effective before permitted: the effective set must stay within the permitted.
    caps::set(None, CapSet::Effective, &kept).map_err(err)?;
    caps::set(None, CapSet::Permitted, &kept).map_err(err)?;
    effective_capabilities()
}

/// Whether this process may open other processes' `/proc/PID/map_files` entries
/// (CAP_SYS_ADMIN, or CAP_CHECKPOINT_RESTORE from Linux 5.9): tried on its own.
pub fn map_files_readable() -> bool {
    std::fs::read_dir("/proc/self/map_files")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(Result::ok)
        .is_some_and(|e| std::fs::File::open(e.path()).is_ok())
}

/// What the process itself costs (`serve` exports it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
}

/// The kernel's page size.
pub fn page_size() -> u32 {
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(page).unwrap_or(4096)
}

/// What this process costs: CPU time, resident memory, open descriptors (from /proc).
pub fn process_stats() -> ProcessStats {
    // SAFETY: sysconf has no memory effects.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th.
    let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_seconds = (ticks(11) + ticks(12)) as f64 / tick.max(1) as f64;
    let resident_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    ProcessStats {
        cpu_seconds,
        resident_bytes: resident_pages * page.max(0) as u64,
        open_fds,
    }
}

/// Standard error redirected to a file while a full-screen view is up, so that
/// nothing written to it lands on the screen; dropping it puts the original back.
pub struct StderrRedirect {
    saved: OwnedFd,
}

impl StderrRedirect {
    /// Appends standard error to `path` (created 0600, never following a symlink).
    pub fn to_file(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        // SAFETY: dup of the process's own fd 2; the result is checked.
        let saved = unsafe { libc::dup(2) };
        if saved < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `saved` is a new fd that nothing else owns.
        let saved = unsafe { OwnedFd::from_raw_fd(saved) };
        // SAFETY: dup2 onto fd 2 from a file we hold open; checked.
        if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { saved })
    }
}

impl Drop for StderrRedirect {
    fn drop(&mut self) {
        // SAFETY: puts the saved original back on fd 2; `saved` is still open.
        unsafe {
            libc::dup2(self.saved.as_raw_fd(), 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_time_grows_while_running_not_while_sleeping() {
        use std::time::{Duration, Instant};
        let wall = Instant::now();
        let start = thread_cpu_ns().unwrap();
        let mut now = start;
        while now - start < 20_000_000 && wall.elapsed() < Duration::from_secs(10) {
            std::hint::black_box((0..1000u64).sum::<u64>());
            now = thread_cpu_ns().unwrap();
        }
        // One thread cannot run longer than the time that passed.
        assert!(now - start >= 20_000_000, "{} ns in 10 s", now - start);
        assert!(wall.elapsed() >= Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(100));
        let slept = thread_cpu_ns().unwrap() - now;
        assert!(
            slept < 50_000_000,
            "{slept} ns of CPU time in a 100 ms sleep"
        );
    }

    #[test]
    fn the_active_affinity_is_where_the_thread_may_run() {
        let cpus = active_affinity().unwrap();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
        // A thread of its own, pinned to the highest of those CPUs (so that bits
        // past the first are decoded where there are several), sees that one only.
        let last = *cpus.last().unwrap();
        let pinned = std::thread::spawn(move || {
            pin_to_cpu(gettid() as i32, last).unwrap();
            active_affinity().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(pinned, [last]);
    }

    #[test]
    fn a_timer_fires_once_per_arming() {
        let t = TimerFd::new().unwrap();
        // Disarmed, or armed but not due: nothing to take.
        assert_eq!(t.take().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        t.arm(std::time::Duration::from_secs(60)).unwrap();
        assert_eq!(t.take().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        t.arm(std::time::Duration::from_millis(20)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(40));
        t.take().unwrap();
        assert_eq!(t.take().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        // Zero fires at once instead of disarming; arming again drops an
        // expiration not taken.
        t.arm(std::time::Duration::ZERO).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        t.arm(std::time::Duration::from_secs(60)).unwrap();
        assert_eq!(t.take().unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_kept_file_is_read_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("online");
        std::fs::write(&path, "0-1\n").unwrap();
        let kept = KeptFile::open(&path).unwrap();
        assert_eq!(kept.read().unwrap(), "0-1\n");
        // Rewritten in place (as the kernel regenerates an attribute's text): the
        // same descriptor sees the new text, all of it, not what follows the old.
        std::fs::write(&path, "0-3,5\n").unwrap();
        assert_eq!(kept.read().unwrap(), "0-3,5\n");
        assert_eq!(kept.read().unwrap(), "0-3,5\n");
        std::fs::write(&path, "7\n").unwrap();
        assert_eq!(kept.read_u64(&path).unwrap(), 7);
        std::fs::write(&path, "x\n").unwrap();
        let err = kept.read_u64(&path).unwrap_err().to_string();
        assert!(err.contains("online"), "{err}");
        // A file longer than one read's buffer is read to its end.
        std::fs::write(&path, vec![b'2'; 9000]).unwrap();
        assert_eq!(kept.read().unwrap(), "2".repeat(9000));
        // At most SYSFS_FILE_MAX bytes, as read_sysfs_file.
        std::fs::write(&path, vec![b'1'; SYSFS_FILE_MAX as usize + 10]).unwrap();
        assert_eq!(kept.read().unwrap().len(), SYSFS_FILE_MAX as usize);
        // Only regular files are kept: a directory is refused at the open.
        assert!(KeptFile::open(dir.path()).is_err());
    }

    #[test]
    fn errno_names() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(errno_name(&e(libc::ENOENT)), "ENOENT");
        assert_eq!(errno_name(&e(libc::EOPNOTSUPP)), "EOPNOTSUPP");
        assert_eq!(errno_name(&io::Error::other("boom")), "boom");
    }

    #[test]
    fn cap_eff_is_parsed() {
        let status = "Name:\tbash\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn missing_capabilities_are_named() {
        assert!(missing_capabilities(u64::MAX).is_empty());
        assert!(missing_capabilities(1 << cap::SYS_ADMIN).is_empty());
        assert!(missing_capabilities((1 << cap::BPF) | (1 << cap::PERFMON)).is_empty());
        assert_eq!(missing_capabilities(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_capabilities(1 << cap::BPF), vec!["CAP_PERFMON"]);
    }
}
