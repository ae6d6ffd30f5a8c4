//! `cargo xtask bench`: sampler against perf, side by side in one run.
//!
//! Every figure is measured here, in this run, on this machine, against its peer
//! where one exists (`perf record -a` + `perf report --sort pid`, `perf top --stdio`,
//! or no tool at all), and reported as the median and the spread (min–max) over
//! repeated runs, with the ratio computed per repetition. The workloads are threads
//! of this process: a CPU-bound loop on every CPU, a fixed amount of work for the
//! slowdown, and thousands of short-lived spinning threads for the memory figures.
//!
//! Tool CPU time comes from `wait4` on each tool's process (its own
//! user + system time; work done in sample interrupts on behalf of the tool is
//! charged to the interrupted task, which the slowdown figure catches instead).

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    display, output,
    setup::{ensure_bpftrace, ensure_perf, ensure_tmux, is_root},
    vm,
};

pub struct Options {
    pub quick: bool,
    pub no_vm: bool,
}

/// How much of everything: `--quick` is a smoke run of well under a minute.
struct Plan {
    reps: usize,
    secs: f64,
    rates: Vec<u64>,
    tasks: Vec<usize>,
    /// Wall time the fixed workload takes alone, roughly.
    work_secs: f64,
    latency_reads: u32,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                reps: 1,
                secs: 1.0,
                rates: vec![999],
                tasks: vec![1_000],
                work_secs: 0.5,
                latency_reads: 5_000,
            }
        } else {
            Self {
                reps: 5,
                secs: 5.0,
                rates: vec![999, 10_000],
                tasks: vec![1_000, 10_000],
                work_secs: 3.0,
                latency_reads: 100_000,
            }
        }
    }
}

/// One line of the results: our figure, the peer's, and their ratio.
struct Figure {
    group: &'static str,
    what: String,
    unit: &'static str,
    /// Whose figure `ours` is: sampler, or a tool under test against no tool.
    subject: String,
    ours: Vec<f64>,
    peer_name: String,
    peer: Vec<f64>,
    /// How the ratio reads, e.g. "perf / sampler".
    ratio_label: &'static str,
    /// The ratio is ours / peer (a slowdown against no tool) instead of peer / ours.
    inverted: bool,
    note: String,
}

impl Figure {
    fn new(group: &'static str, what: impl Into<String>, unit: &'static str) -> Self {
        Self {
            group,
            what: what.into(),
            unit,
            subject: "sampler".to_owned(),
            ours: Vec::new(),
            peer_name: String::new(),
            peer: Vec::new(),
            ratio_label: "",
            inverted: false,
            note: String::new(),
        }
    }

    fn peer(mut self, name: impl Into<String>, ratio_label: &'static str) -> Self {
        self.peer_name = name.into();
        self.ratio_label = ratio_label;
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    fn ratios(&self) -> Vec<f64> {
        self.ours
            .iter()
            .zip(&self.peer)
            // An inverted ratio (ours / peer) keeps a figure of ours at or below 0: a
            // breakdown piece's cost can come out negative within the noise, and
            // leaving those repetitions out would bias its share upwards.
            .filter(|(o, p)| o.is_finite() && **p > 0.0 && (self.inverted || **o > 0.0))
            .map(|(o, p)| if self.inverted { o / p } else { p / o })
            .collect()
    }
}

/// Median and spread of `v`: `median (min–max)`, or the one value.
fn summary(v: &[f64], digits: usize) -> String {
    if v.is_empty() {
        return "–".to_owned();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    if s.len() == 1 {
        format!("{median:.digits$}")
    } else {
        format!(
            "{median:.digits$} ({:.digits$}–{:.digits$})",
            s[0],
            s[s.len() - 1]
        )
    }
}

fn digits_for(v: &[f64]) -> usize {
    let m = v.iter().copied().fold(0.0_f64, f64::max);
    if m >= 100.0 {
        0
    } else if m >= 10.0 {
        1
    } else if m >= 1.0 {
        2
    } else {
        3
    }
}

/// What a finished tool process used.
struct Measured {
    cpu_s: f64,
    /// Peak resident size (VmHWM) and the largest VmRSS after start-up, polled.
    peak_kib: u64,
    steady_kib: u64,
    stdout: String,
    stderr: String,
    success: bool,
}

/// A tool process under measurement; its output is drained by threads.
struct Running {
    child: Child,
    rss: RssPoller,
    out: JoinHandle<String>,
    err: JoinHandle<String>,
    what: String,
}

/// `cmd`'s process gets SIGKILL when the bench dies, however it dies (a killed
/// bench left its workloads spinning, and could leave bpftrace attached). The
/// signal follows the thread that spawned the child: every child here is spawned from
/// the bench's main thread, which lives as long as the bench.
fn dies_with_bench(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: getpid is async-signal-safe.
    let bench = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec and makes only
    // async-signal-safe calls (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The bench may have died before the prctl: then nobody will signal.
            if libc::getppid() != bench {
                return Err(std::io::Error::other("the bench exited"));
            }
            Ok(())
        })
    }
}

fn drain(mut r: impl std::io::Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

impl Running {
    fn spawn(cmd: &mut Command) -> Result<Self> {
        let what = display(cmd);
        let mut child = dies_with_bench(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        let out = drain(child.stdout.take().context("stdout")?);
        let err = drain(child.stderr.take().context("stderr")?);
        let rss = RssPoller::start(child.id(), Duration::from_millis(800));
        Ok(Self {
            child,
            rss,
            out,
            err,
            what,
        })
    }

    /// Whether the process has exited (it is not reaped: `finish` still can).
    fn exited(&self) -> bool {
        // SAFETY: an all-zero siginfo is valid to be overwritten.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child with WNOWAIT leaves it to be reaped later.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is set by waitid for a child that changed state.
        r == 0 && unsafe { info.si_pid() } != 0
    }

    /// The process's CPU time so far (user + sys, every thread), from its CPU-time
    /// clock (`clock_getcpuclockid`), in seconds, while it runs.
    fn cpu_so_far(&self) -> Result<f64> {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: our own unreaped child's pid and a valid out-pointer.
        let r = unsafe { libc::clock_getcpuclockid(self.child.id() as libc::pid_t, &mut clock) };
        if r != 0 {
            bail!(
                "clock_getcpuclockid on `{}`: {}",
                self.what,
                std::io::Error::from_raw_os_error(r)
            );
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a clock id the kernel just gave and a valid out-pointer.
        if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
            bail!(
                "the CPU-time clock of `{}`: {}",
                self.what,
                std::io::Error::last_os_error()
            );
        }
        Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
    }

    /// SIGINT, again each second until the process exits (SIGKILL after 60 s).
    /// bpftrace 0.17 can miss one: a SIGINT that lands between its check of the exit
    /// flag and its `epoll_wait` leaves it waiting for output that a map-only script
    /// never prints (seen: 18 minutes asleep in `epoll_wait` after the signal).
    fn interrupt_until_exit(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.exited() {
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                return;
            }
            self.signal(libc::SIGINT);
            for _ in 0..10 {
                if self.exited() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped yet (only
        // `finish` reaps it), so the pid cannot have been reused.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process and returns its rusage and output.
    fn finish(mut self) -> Result<Measured> {
        // Keep stdin open until now (perf top reads keys from it), then close it.
        drop(self.child.stdin.take());
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value to be overwritten.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own unreaped child with valid out-pointers. std's
        // Child is not waited afterwards (dropping it does not wait).
        let pid = unsafe { libc::wait4(self.child.id() as i32, &mut status, 0, &mut usage) };
        if pid < 0 {
            bail!(
                "wait4 on `{}`: {}",
                self.what,
                std::io::Error::last_os_error()
            );
        }
        let (steady_kib, peak_kib) = self.rss.stop();
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        Ok(Measured {
            cpu_s: tv(usage.ru_utime) + tv(usage.ru_stime),
            peak_kib,
            steady_kib,
            stdout: self.out.join().unwrap_or_default(),
            stderr: self.err.join().unwrap_or_default(),
            success,
        })
    }
}

/// The CPU time per second (ms/s) that `cmd` takes while it runs, past its first 2 s
/// (start-up), over `secs` seconds; then it is interrupted and must exit cleanly.
fn steady_cpu(cmd: &mut Command, secs: f64) -> Result<f64> {
    let what = display(cmd);
    let running = Running::spawn(cmd)?;
    thread::sleep(Duration::from_secs(2));
    let (c0, t0) = (running.cpu_so_far()?, Instant::now());
    thread::sleep(Duration::from_secs_f64(secs));
    let (c1, t1) = (running.cpu_so_far()?, Instant::now());
    running.signal(libc::SIGINT);
    let m = running.finish()?;
    if !m.success {
        bail!("`{what}` failed:\n{}", m.stderr.trim_end());
    }
    Ok((c1 - c0) * 1e3 / (t1 - t0).as_secs_f64())
}

fn run_measured(cmd: &mut Command) -> Result<Measured> {
    let what = display(cmd);
    let m = Running::spawn(cmd)?.finish()?;
    if !m.success {
        bail!("`{what}` failed:\n{}", m.stderr.trim_end());
    }
    Ok(m)
}

/// The CPU-bound loop of every workload: an LCG walking a 256 KiB table.
pub(crate) fn work(iterations: u64) -> u64 {
    let mut table = vec![0u64; 32 * 1024];
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..iterations {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let i = (x >> 49) as usize & (table.len() - 1);
        table[i] = table[i].wrapping_add(x);
    }
    std::hint::black_box(table.iter().fold(x, |a, b| a ^ b))
}

/// Instances of the test workload (`tests/workload/main.rs`), killed on drop.
struct Workloads(Vec<Child>);

impl Workloads {
    fn start(bin: &Path, mode: &str, n: usize, secs: f64) -> Result<Self> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(
                dies_with_bench(&mut Command::new(bin))
                    .args([mode, &secs.to_string()])
                    .stdin(Stdio::null())
                    .spawn()
                    .with_context(|| format!("cannot start {}", bin.display()))?,
            );
        }
        Ok(Self(v))
    }
}

impl Drop for Workloads {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Background load: one spinning thread per CPU until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        work(100_000);
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The fixed workload: `threads` threads of `iterations` each; its wall time.
fn fixed_workload(threads: usize, iterations: u64) -> f64 {
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| thread::spawn(move || work(iterations)))
        .collect();
    for h in handles {
        let _ = h.join();
    }
    started.elapsed().as_secs_f64()
}

/// `n` live threads that each spin for `spin` and then sleep until released: every
/// one of them is sampled at least once, and stays alive (a live task) meanwhile.
struct LiveTasks {
    release: Arc<Barrier>,
    threads: Vec<JoinHandle<()>>,
}

impl LiveTasks {
    fn spawn(n: usize, spin: Duration) -> Result<Self> {
        let release = Arc::new(Barrier::new(n + 1));
        let spun = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::with_capacity(n);
        for _ in 0..n {
            let (release, spun) = (Arc::clone(&release), Arc::clone(&spun));
            threads.push(
                thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let t = Instant::now();
                        while t.elapsed() < spin {
                            work(1_000);
                        }
                        spun.fetch_add(1, Ordering::Relaxed);
                        release.wait();
                    })
                    .context("spawning a live task")?,
            );
        }
        while spun.load(Ordering::Relaxed) < n {
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { release, threads })
    }
}

impl Drop for LiveTasks {
    fn drop(&mut self) {
        self.release.wait();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Polls a process's `/proc/PID/status` until stopped: the largest `VmRSS` seen after
/// a start-up delay, and the last `VmHWM` (its peak so far). Polled, because the
/// `ru_maxrss` of a child forked from a large parent counts the parent's pages it
/// held before exec.
struct RssPoller {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, u64)>,
}

impl RssPoller {
    fn start(pid: u32, after: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let started = Instant::now();
            let (mut max, mut hwm) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
                    // Only after exec (the forked copy of this process is not the tool).
                    if !status
                        .lines()
                        .any(|l| l.starts_with("Name:") && l.contains("xtask"))
                    {
                        hwm = hwm.max(status_kib(&status, "VmHWM:").unwrap_or(0));
                        if started.elapsed() >= after {
                            max = max.max(status_kib(&status, "VmRSS:").unwrap_or(0));
                        }
                    }
                }
                thread::sleep(Duration::from_millis(50));
            }
            (max, hwm)
        });
        Self { stop, thread }
    }

    /// (largest VmRSS after the delay, peak VmHWM), in KiB.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}

/// A `Vm...:` field of a `/proc/PID/status` text, in KiB.
pub(crate) fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn nproc() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

/// What this machine samples by default, as sampler decides it.
struct Machine {
    kernel: String,
    cpu_model: String,
    cpus: usize,
    source: String,
    event: String,
    perf_version: String,
}

impl Machine {
    fn probe(sampler: &Path) -> Result<Self> {
        let m = run_measured(Command::new(sampler).args(["stat", "-d", "0.2", "--json"]))?;
        let doc: Value = serde_json::from_str(&m.stdout).context("sampler stat --json")?;
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
        Ok(Self {
            kernel: output(Command::new("uname").arg("-r"))
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpu_model,
            cpus: nproc(),
            source: doc["source"].as_str().unwrap_or("?").to_owned(),
            event: doc["cpus"][0]["event"]
                .as_str()
                .unwrap_or("cpu-clock")
                .to_owned(),
            perf_version: output(Command::new("perf").arg("--version"))
                .unwrap_or_default()
                .trim()
                .to_owned(),
        })
    }

    fn hardware(&self) -> bool {
        self.source == "hardware"
    }
}

struct Bench {
    sampler: PathBuf,
    machine: Machine,
    plan: Plan,
    tmp: PathBuf,
    figures: Vec<Figure>,
}

/// The kernel's run-time statistics of every BPF program (bpftrace's too) on while
/// alive: a `BPF_ENABLE_STATS` descriptor (Linux 5.8+), which the kernel lets go with
/// the process, so a bench that is killed does not leave them on (the sysctl
/// `kernel.bpf_stats_enabled` would stay at 1, and every BPF program on the machine
/// would keep paying two clock reads per run). sampler's own runs use `--bpf-stats`,
/// which holds a descriptor of its own.
struct BpfStatsOn {
    _fd: std::os::fd::OwnedFd,
}

impl BpfStatsOn {
    fn new() -> Result<Self> {
        use std::os::fd::FromRawFd as _;
        // include/uapi/linux/bpf.h: BPF_ENABLE_STATS is command 32; its attribute is
        // `struct { __u32 type; }`, BPF_STATS_RUN_TIME = 0.
        const BPF_ENABLE_STATS: libc::c_long = 32;
        let attr = [0u32; 1];
        // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of `attr`, which lives
        // across the call; it returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                size_of_val(&attr),
            )
        };
        if fd < 0 {
            bail!(
                "turning on the kernel's BPF run-time statistics (BPF_ENABLE_STATS, needs \
                 root and Linux 5.8+): {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: a descriptor the kernel just returned, owned by nothing else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { _fd: fd })
    }
}

/// The run time (ns) and runs of the `perf_event` programs (`BPF_PROG_TYPE_PERF_EVENT`,
/// 7) that process `pid` holds open, summed, from `/proc/PID/fdinfo`.
fn perf_event_prog_stats(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return total;
    };
    for fd in fds.flatten() {
        if fs::read_link(fd.path())
            .ok()
            .and_then(|l| l.to_str().map(str::to_owned))
            != Some("anon_inode:bpf-prog".to_owned())
        {
            continue;
        }
        let Ok(info) = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if field("prog_type:") == Some(7) {
            total.0 += field("run_time_ns:").unwrap_or(0);
            total.1 += field("run_cnt:").unwrap_or(0);
        }
    }
    total
}

/// What keeps every CPU busy while a program's cost is measured: the bench's own
/// threads (built without frame pointers), or the test workload (with them).
enum Busy {
    Threads(#[allow(dead_code)] Load),
    Workload(#[allow(dead_code)] Workloads),
}

impl Busy {
    fn start(cpus: usize, workload: Option<&Path>, secs: f64) -> Result<Self> {
        Ok(match workload {
            None => Self::Threads(Load::start(cpus)),
            Some(bin) => Self::Workload(Workloads::start(bin, "cpu", cpus, secs + 90.0)?),
        })
    }
}

/// What bpftrace's program of `script` costs per run with every CPU busy (the
/// bench's threads, or the test `workload`), over `secs` once it runs, from the
/// kernel's BPF statistics of the programs it holds.
fn bpftrace_cost(script: &str, secs: f64, cpus: usize, workload: Option<&Path>) -> Result<f64> {
    let _load = Busy::start(cpus, workload, secs)?;
    let _stats = BpfStatsOn::new()?;
    // bpftrace prints its maps when it ends: for `@[kstack, ustack, pid]`, every
    // stack symbolized, which can take tens of minutes (it reopens each binary, a
    // debug build of this xtask among them, for each stack). The END probe empties
    // the map first; it is not a perf_event program, so it is not measured.
    let full = format!("{script} END {{ clear(@); }}");
    let running = Running::spawn(Command::new("bpftrace").args(["-e", &full]))?;
    let pid = running.child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut start = perf_event_prog_stats(pid);
    while start.1 == 0 {
        if Instant::now() > deadline || running.exited() {
            running.signal(libc::SIGINT);
            let m = running.finish()?;
            bail!(
                "`bpftrace -e '{script}'` ran no perf_event program within 60 s:\n{}",
                m.stderr.trim_end()
            );
        }
        thread::sleep(Duration::from_millis(100));
        start = perf_event_prog_stats(pid);
    }
    thread::sleep(Duration::from_secs_f64(secs));
    let end = perf_event_prog_stats(pid);
    running.interrupt_until_exit();
    running.finish()?;
    let (time, runs) = (end.0.saturating_sub(start.0), end.1.saturating_sub(start.1));
    if runs == 0 || time == 0 {
        bail!("`bpftrace -e '{script}'`: its program did not run while measured");
    }
    Ok(time as f64 / runs as f64)
}

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text.trim()).with_context(|| format!("not JSON: {text:.200}"))
}

/// `# Total Lost Samples: N` of a perf report's header.
fn perf_lost(report: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix("# Total Lost Samples:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// `SAMPLE events: N` of `perf report --stats` (exact, unlike the report header).
fn perf_samples(stats: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("SAMPLE events:"))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Bench {
    fn perf_data(&self) -> PathBuf {
        self.tmp.join("perf.data")
    }

    fn sampler_cmd(&self) -> Command {
        Command::new(&self.sampler)
    }

    fn perf_record(&self, hz: u64) -> Command {
        let mut c = Command::new("perf");
        c.args(["record", "-a", "-q", "-F", &hz.to_string(), "-e"])
            .arg(&self.machine.event)
            .arg("-o")
            .arg(self.perf_data());
        c
    }

    fn perf_report(&self) -> Command {
        let mut c = Command::new("perf");
        c.args(["report", "--sort", "pid", "--stdio", "-i"])
            .arg(self.perf_data());
        c
    }

    /// Tool CPU time for the same job: per-process attribution system-wide at `hz`
    /// for the plan's seconds under a CPU-bound load; plus samples lost.
    fn tool_cost(&mut self, hz: u64) -> Result<()> {
        let secs = self.plan.secs;
        let s = format!("{secs}");
        let job = format!("{hz} Hz per CPU, {secs} s, all CPUs busy");
        let mut cost = Figure::new("Tool CPU time (user + sys) for the same job", &job, "ms")
            .peer("perf record -a + perf report --sort pid", "perf / sampler");
        let mut top = Figure::new("Tool CPU time (user + sys) for the same job", &job, "ms")
            .peer("perf top --stdio --sort pid", "perf / sampler");
        // Past start-up: what a top that keeps running costs per second (the issue's
        // "per second of running"), one interval-long refresh a second each.
        let steady_job = format!("{hz} Hz per CPU, {secs} s past the first 2 s, all CPUs busy");
        let mut steady = Figure::new("Tool CPU time per second of running", &steady_job, "ms/s")
            .peer("perf top --stdio --sort pid", "perf / sampler")
            .note(
                "sampler top -i 1 --json; both read every second; CPU time (user + sys, \
                 every thread) from each process's CPU-time clock, read 2 s after start \
                 and again after the seconds measured; start-up is in the figures above, \
                 not here; either tool's work in the sample interrupt (sampler's BPF \
                 aggregation, perf's ring-buffer writes) is charged to the interrupted \
                 tasks, as in the slowdown and BPF cost tables",
            );
        steady.subject = "sampler top".to_owned();
        let mut lost = Figure::new("Samples lost at the same rate", &job, "samples")
            .peer("perf record (lost samples)", "");
        let mut share = Figure::new("Samples recorded at the same rate", &job, "samples")
            .peer("perf record", "perf / sampler");
        for _ in 0..self.plan.reps {
            let _load = Load::start(self.machine.cpus);
            let ours = run_measured(self.sampler_cmd().args([
                "stat",
                "-d",
                &s,
                "-F",
                &hz.to_string(),
                "--json",
            ]))?;
            let doc = json(&ours.stdout)?;
            cost.ours.push(ours.cpu_s * 1e3);
            top.ours.push(ours.cpu_s * 1e3);
            lost.ours.push(doc["dropped"].as_f64().unwrap_or(f64::NAN));
            share.ours.push(doc["samples"].as_f64().unwrap_or(f64::NAN));

            let rec = run_measured(self.perf_record(hz).args(["--", "sleep", &s]))?;
            let rep = run_measured(&mut self.perf_report())?;
            cost.peer.push((rec.cpu_s + rep.cpu_s) * 1e3);
            lost.peer.push(perf_lost(&rep.stdout) as f64);
            let stats = run_measured(self.perf_report().arg("--stats"))?;
            share.peer.push(perf_samples(&stats.stdout) as f64);

            let t = Running::spawn(&mut self.perf_top(hz))?;
            thread::sleep(Duration::from_secs_f64(secs));
            t.signal(libc::SIGINT);
            top.peer.push(t.finish()?.cpu_s * 1e3);

            let mut sampler_top = self.sampler_cmd();
            sampler_top.args(["top", "-i", "1", "--json", "-F", &hz.to_string()]);
            steady.ours.push(steady_cpu(&mut sampler_top, secs)?);
            steady.peer.push(steady_cpu(&mut self.perf_top(hz), secs)?);
        }
        self.figures.push(cost);
        self.figures.push(top);
        self.figures.push(steady);
        self.figures
            .push(share.note("perf: `SAMPLE events` of `perf report --stats`"));
        self.figures.push(lost.note(
            "sampler: samples its BPF program could not record (map update failed); \
             perf: `Total Lost Samples`",
        ));
        Ok(())
    }

    /// `perf top --stdio -a --sort pid` at `hz` on the bench's event, refreshing each
    /// second.
    fn perf_top(&self, hz: u64) -> Command {
        let mut cmd = Command::new("perf");
        cmd.args([
            "top",
            "--stdio",
            "-a",
            "--sort",
            "pid",
            "-F",
            &hz.to_string(),
        ])
        .arg("-e")
        .arg(&self.machine.event)
        .args(["-d", "1"]);
        cmd
    }

    /// Slowdown of a fixed CPU-bound workload (one thread per CPU) under each tool.
    fn slowdown(&mut self, hz: u64, iterations: u64) -> Result<()> {
        let hz_s = hz.to_string();
        let what = format!("fixed workload, {} threads, {hz} Hz", self.machine.cpus);
        let mut figs = ["sampler top", "perf record -a", "perf top --stdio"].map(|tool| {
            let mut f = Figure::new("Slowdown of a fixed workload", &what, "s")
                .peer("no tool", "under the tool / alone");
            f.subject = tool.to_owned();
            f.inverted = true;
            f
        });
        for _ in 0..self.plan.reps {
            let alone = fixed_workload(self.machine.cpus, iterations);
            let tools: [Command; 3] = [
                {
                    let mut c = self.sampler_cmd();
                    c.args(["top", "-i", "1", "--json", "-F", &hz_s]);
                    c
                },
                {
                    let mut c = self.perf_record(hz);
                    c.args(["--", "sleep", "3600"]);
                    c
                },
                {
                    let mut c = Command::new("perf");
                    c.args(["top", "--stdio", "-a", "--sort", "pid", "-F", &hz_s, "-e"])
                        .arg(&self.machine.event)
                        .args(["-d", "1"]);
                    c
                },
            ];
            for (fig, mut cmd) in figs.iter_mut().zip(tools) {
                let running = Running::spawn(&mut cmd)?;
                // Past start-up: sampling is under way.
                thread::sleep(Duration::from_millis(700));
                let t = fixed_workload(self.machine.cpus, iterations);
                running.signal(libc::SIGINT);
                running.finish()?;
                fig.ours.push(t);
                fig.peer.push(alone);
            }
        }
        self.figures.extend(figs);
        Ok(())
    }

    /// The BPF program's cost per sample from the kernel's BPF statistics: the floor
    /// (a bench-only program that bumps one per-CPU counter, attached to the same
    /// events by `sampler stat --bench-floor`), sampler without and with counting
    /// members whose deltas are attributed per task, with the sampled function and
    /// with the call stacks, and bpftrace's one-liners that users would type instead,
    /// all measured in the same repetition.
    fn bpf_cost(&mut self, hz: u64, workload: &Path) -> Result<()> {
        /// The whole run a breakdown piece is taken out of.
        enum Whole {
            Alone,
            Members,
            Functions,
        }
        let members = if self.machine.hardware() {
            "{cycles,instructions,cache-misses}"
        } else {
            "{cpu-clock,cpu-clock,context-switches}"
        };
        let secs = self.plan.secs.min(3.0);
        let s = format!("{secs}");
        // Per sample, and the switch program's per context switch, with every CPU
        // busy: the bench's threads, or the test workload.
        let costs_on = |b: &Self, extra: &[&str], workload: Option<&Path>| -> Result<(f64, f64)> {
            let _load = Busy::start(b.machine.cpus, workload, secs)?;
            let mut cmd = b.sampler_cmd();
            cmd.args([
                "stat",
                "-d",
                &s,
                "-F",
                &hz.to_string(),
                "--bpf-stats",
                "--json",
            ])
            .args(extra);
            let doc = json(&run_measured(&mut cmd)?.stdout)?;
            Ok((
                doc["bpf"]["ns_per_sample"].as_f64().unwrap_or(f64::NAN),
                doc["bpf"]["switch_ns_per_run"].as_f64().unwrap_or(f64::NAN),
            ))
        };
        let costs = |b: &Self, extra: &[&str]| costs_on(b, extra, None);
        let cost = |b: &Self, extra: &[&str]| costs(b, extra).map(|(sample, _)| sample);
        let bpftrace = |key: &str| format!("profile:hz:{hz} {{ @[{key}] = count(); }}");
        let group = "BPF program cost per sample (kernel BPF statistics)";
        let source = format!("{} events", self.machine.source);
        let case = |what: &str| format!("{what}, {hz} Hz, all CPUs busy");
        let (floor_goal, located_goal) = if hz >= 10_000 {
            ("goal ≤ 1.5×", "goal ≤ 3×")
        } else {
            ("goal ≤ 2×", "goal ≤ 3×")
        };
        let over_floor = |what: &str, goal: &str| {
            let mut f = Figure::new(group, case(what), "ns")
                .peer("the floor (same repetition)", "sampler / floor")
                .note(format!("{source}; {goal}"));
            f.inverted = true;
            f
        };
        let mut floor = Figure::new(group, case("the floor: one per-CPU counter bumped"), "ns")
            .note(format!(
                "{source}; bench-only program on sampler's events (`stat --bench-floor`)"
            ));
        floor.subject = "floor program".to_owned();
        let task_what = "task + cgroup + CPU attribution";
        let mut task = over_floor(task_what, floor_goal);
        let peer_key = |key: &str, goal: &str| {
            Figure::new(group, case(task_what), "ns")
                .peer(
                    format!("bpftrace `@[{key}] = count()`"),
                    "bpftrace / sampler",
                )
                .note(goal.to_owned())
        };
        let mut vs_cpu = peer_key("cpu", "goal > 1 (cheaper than counting per CPU)");
        let mut vs_pid = peer_key("pid", "");
        let mut vs_task = peer_key("pid, tid, cgroup, comm", "the same keys as sampler's");
        let mut member = over_floor(
            "the same + 2 member deltas",
            "goal: each member read costs one bpf_perf_event_read_value; with locations \
             off the members are read at context switches, not per sample",
        );
        let switch_group = "The switch program's cost per context switch (kernel BPF statistics)";
        let mut switch_members = Figure::new(
            switch_group,
            format!(
                "at each switch: the leader and 2 members read, the pending counts moved, \
                 {hz} Hz, all CPUs busy"
            ),
            "ns",
        )
        .peer("the same without members", "with / without")
        .note(format!(
            "{source}; what carries the counts between samples, so that a sample reads none"
        ));
        switch_members.inverted = true;
        let located = |what: &str| {
            let mut f = Figure::new(group, case(what), "ns")
                .peer("task attribution alone (same repetition)", "with / without");
            f.inverted = true;
            f
        };
        let functions_what = "the same + the sampled function (--functions)";
        let stacks_what = "the same + kernel and user stacks (-g)";
        let mut function = located(functions_what);
        let mut function_floor = over_floor(functions_what, located_goal);
        let mut stacks = located(stacks_what);
        let mut stacks_peer = Figure::new(group, case(stacks_what), "ns")
            .peer(
                "bpftrace `@[kstack, ustack, pid] = count()`",
                "bpftrace / sampler",
            )
            .note("goal ≥ 2");
        let fp_what = "the same + kernel and user stacks (-g), the test workload (built with \
                       frame pointers) on every CPU";
        let mut stacks_fp_peer = Figure::new(group, format!("{fp_what}, {hz} Hz"), "ns")
            .peer(
                "bpftrace `@[kstack, ustack, pid] = count()`",
                "bpftrace / sampler",
            )
            .note("goal ≥ 2; above, the bench's threads, built without frame pointers");
        let mut stacks_own_walk = Figure::new(group, format!("{fp_what}, {hz} Hz"), "ns")
            .peer(
                "the same with the kernel's user stack walk (`bpf_get_stackid`)",
                "kernel's / own",
            )
            .note(format!(
                "{source}; `--bench-skip own-user-walk`: the user stacks as before the \
                 program walked them itself"
            ));
        // Where the time goes: each piece taken out in turn (`stat --bench-skip`), at
        // the last rate only (10 kHz in the full run: ten times the samples in the
        // same seconds, and the steadiest figures on a shared VM); a piece's cost is
        // the whole's minus the program's without it, in the same repetition.
        let breakdown = self.plan.rates.last() == Some(&hz);
        let pieces_group = "Where the BPF program's time goes: each piece taken out in turn";
        let piece = |what: &str, note: &str| {
            let mut f = Figure::new(pieces_group, format!("{what}, {hz} Hz"), "ns")
                .peer("the whole program (same repetition)", "piece / whole")
                .note(format!("{source}; {note}"));
            f.inverted = true;
            f
        };
        // (piece, `--bench-skip` names, the whole run it is taken out of)
        let mut pieces: Vec<(Figure, &str, Whole)> = vec![
            (
                piece(
                    "the leader's count with locations on (one plain load per sample at \
                     its cached event, Linux 6.2+)",
                    "`--bench-skip leader-read` with `--functions`",
                ),
                "leader-read",
                Whole::Functions,
            ),
            (
                piece(
                    "the location's key and its store (a record in the CPU's batch; one \
                     sample in 16 sends the batch to the ring without a wakeup)",
                    "`--bench-skip loc-map` with `--functions`",
                ),
                "loc-map",
                Whole::Functions,
            ),
            (
                piece(
                    "2 member counts with locations off (read at switches only)",
                    "`--bench-skip member-reads` with 2 members",
                ),
                "member-reads",
                Whole::Members,
            ),
            (
                piece(
                    "task attribution (per-CPU pending counts; at the first sample after a \
                     switch the key's helpers, and a hash update when another key's counts \
                     are pending)",
                    "`--bench-skip task-map`",
                ),
                "task-map",
                Whole::Alone,
            ),
            (
                piece(
                    "of which the pid helper (first sample after a switch)",
                    "`--bench-skip pid`",
                ),
                "pid",
                Whole::Alone,
            ),
            (
                piece(
                    "of which the cgroup helper (first sample after a switch)",
                    "`--bench-skip cgroup`",
                ),
                "cgroup",
                Whole::Alone,
            ),
            (
                piece(
                    "of which the process start time (two kernel reads, first sample after a switch)",
                    "`--bench-skip start`",
                ),
                "start",
                Whole::Alone,
            ),
            (
                piece(
                    "the location switch (one array lookup)",
                    "`--bench-skip loc-mode`",
                ),
                "loc-mode",
                Whole::Alone,
            ),
            (
                piece(
                    "the cache of task keys (negative: what it saves at the first sample \
                     after a switch back)",
                    "`--bench-skip key-cache`",
                ),
                "key-cache",
                Whole::Alone,
            ),
        ];
        let mut rest = piece(
            "the rest (per-CPU state lookups, statistics) over the floor",
            "the program with every piece above taken out, minus the floor",
        );
        // Stores weighed against the batch and ring: each one's cost over the program
        // with no store (`loc-map` taken out), against the ring's own.
        let store = |what: &str, skip: &str, note: &str| {
            let mut f = Figure::new(
                pieces_group,
                format!("the location stored as {what} in place of the batch, {hz} Hz"),
                "ns",
            )
            .peer("the batch and ring (same repetition)", "store / batch")
            .note(format!(
                "{source}; `--bench-skip {skip}` with `--functions`, minus `--bench-skip \
                 loc-map`{note}"
            ));
            f.inverted = true;
            f
        };
        let mut stores = [
            (
                store(
                    "a ring buffer record of its own (reserve, write, submit without a \
                     wakeup at every sample, as before the batches)",
                    "loc-batch",
                    "",
                ),
                "loc-batch",
            ),
            (
                store(
                    "the location map's update (a hash lookup and an add to the entry, \
                     as before the ring; now where a sample finds its batch and the ring \
                     full)",
                    "loc-ring",
                    "",
                ),
                "loc-ring",
            ),
            (
                store(
                    "a per-CPU log slot (an array lookup and a write: the least any store \
                     costs)",
                    "loc-map-for-log",
                    "; bench only: nothing reads it",
                ),
                "loc-map-for-log",
            ),
        ];
        let all_pieces = "leader-read,member-reads,pid,cgroup,start,task-map,loc-mode,key-cache";
        for _ in 0..self.plan.reps {
            let base = cost(self, &["--bench-floor"])?;
            floor.ours.push(base);
            let alone = cost(self, &[])?;
            task.ours.push(alone);
            task.peer.push(base);
            for (fig, key) in [
                (&mut vs_cpu, "cpu"),
                (&mut vs_pid, "pid"),
                (&mut vs_task, "pid, tid, cgroup, comm"),
            ] {
                fig.ours.push(alone);
                fig.peer.push(bpftrace_cost(
                    &bpftrace(key),
                    secs,
                    self.machine.cpus,
                    None,
                )?);
            }
            let (with_members, switch_with) = costs(self, &["-e", members])?;
            member.ours.push(with_members);
            member.peer.push(base);
            let (_, switch_without) = costs(self, &[])?;
            switch_members.ours.push(switch_with);
            switch_members.peer.push(switch_without);
            let with_function = cost(self, &["--functions"])?;
            if breakdown {
                // The program with `--functions` and no store, and the map's cost.
                let mut no_store = None;
                for (fig, skip, with) in &mut pieces {
                    let mut args = vec!["--bench-skip", *skip];
                    let whole = match with {
                        Whole::Alone => alone,
                        Whole::Members => {
                            args.extend(["-e", members]);
                            with_members
                        }
                        Whole::Functions => {
                            args.push("--functions");
                            with_function
                        }
                    };
                    let without = cost(self, &args)?;
                    fig.ours.push(whole - without);
                    fig.peer.push(whole);
                    if *skip == "loc-map" {
                        no_store = Some((without, whole - without));
                    }
                }
                if let Some((none, map)) = no_store {
                    for (fig, skip) in &mut stores {
                        let with = cost(self, &["--bench-skip", *skip, "--functions"])?;
                        fig.ours.push(with - none);
                        fig.peer.push(map);
                    }
                }
                let bare = cost(self, &["--bench-skip", all_pieces])?;
                rest.ours.push(bare - base);
                rest.peer.push(alone);
            }
            function.ours.push(with_function);
            function.peer.push(alone);
            function_floor.ours.push(with_function);
            function_floor.peer.push(base);
            let with_stacks = cost(self, &["-g"])?;
            stacks.ours.push(with_stacks);
            stacks.peer.push(alone);
            stacks_peer.ours.push(with_stacks);
            stacks_peer.peer.push(bpftrace_cost(
                &bpftrace("kstack, ustack, pid"),
                secs,
                self.machine.cpus,
                None,
            )?);
            // The same on code built with frame pointers, where the user stacks are
            // walked frame by frame; and the kernel's walk there in place of ours.
            let fp_stacks = costs_on(self, &["-g"], Some(workload))?.0;
            stacks_fp_peer.ours.push(fp_stacks);
            stacks_fp_peer.peer.push(bpftrace_cost(
                &bpftrace("kstack, ustack, pid"),
                secs,
                self.machine.cpus,
                Some(workload),
            )?);
            stacks_own_walk.ours.push(fp_stacks);
            stacks_own_walk.peer.push(
                costs_on(
                    self,
                    &["-g", "--bench-skip", "own-user-walk"],
                    Some(workload),
                )?
                .0,
            );
        }
        // The location pieces from the runs above: the sampled function is
        // --functions minus task attribution alone, the stack walks -g minus
        // --functions.
        let mut breakdown_figures = Vec::new();
        if breakdown {
            let difference = |what: &str, with: &Figure, without: &[f64], note: &str| {
                let mut f = piece(what, note);
                f.ours = with.ours.iter().zip(without).map(|(w, a)| w - a).collect();
                f.peer = with.ours.clone();
                f
            };
            let functions_piece = difference(
                "the sampled function (the leader's count, the key and a record in the CPU's batch)",
                &function,
                &function.peer,
                "`--functions` minus task attribution alone",
            );
            let stacks_piece = difference(
                "the kernel and user stack walks",
                &stacks,
                &function.ours,
                "`-g` minus `--functions`",
            );
            breakdown_figures.extend(pieces.into_iter().map(|(f, _, _)| f));
            breakdown_figures.extend([rest, functions_piece, stacks_piece]);
            breakdown_figures.extend(stores.into_iter().map(|(f, _)| f));
        }
        self.figures.extend([
            floor,
            task,
            vs_cpu,
            vs_pid,
            vs_task,
            member,
            function,
            function_floor,
            stacks,
            stacks_peer,
            stacks_fp_peer,
            stacks_own_walk,
            switch_members,
        ]);
        self.figures.extend(breakdown_figures);
        Ok(())
    }

    /// The function view and call stacks against perf on the same workload and rate
    /// (the test workload on every CPU); then symbolization with about 10,000 distinct
    /// stacks (the workload's `stacks` mode), with the tool's resident memory.
    fn functions(&mut self, hz: u64, workload: &Path) -> Result<()> {
        let secs = self.plan.secs;
        let s = format!("{secs}");
        let hz_s = hz.to_string();
        let group = "Functions and call stacks: tool CPU time (user + sys)";
        let job = format!("{hz} Hz per CPU, {secs} s, the test workload on every CPU");
        let mut view = Figure::new(group, format!("function view, {job}"), "ms")
            .peer("perf top --stdio --sort sym", "perf / sampler");
        let mut graph = Figure::new(group, format!("call stacks (-g), {job}"), "ms").peer(
            "perf record -a -g + perf report --sort sym",
            "perf / sampler",
        );
        let data = self.perf_data();
        for _ in 0..self.plan.reps {
            let _w = Workloads::start(workload, "cpu", self.machine.cpus, secs * 6.0 + 10.0)?;
            let n = format!("{}", secs.round().max(1.0));
            let ours = run_measured(self.sampler_cmd().args([
                "top",
                "--functions",
                "-i",
                "1",
                "-n",
                &n,
                "-F",
                &hz_s,
                "--json",
            ]))?;
            view.ours.push(ours.cpu_s * 1e3);
            let mut cmd = Command::new("perf");
            cmd.args(["top", "--stdio", "-a", "--sort", "sym", "-F", &hz_s, "-e"])
                .arg(&self.machine.event)
                .args(["-d", "1"]);
            let running = Running::spawn(&mut cmd)?;
            thread::sleep(Duration::from_secs_f64(secs));
            running.signal(libc::SIGINT);
            view.peer.push(running.finish()?.cpu_s * 1e3);

            let ours = run_measured(
                self.sampler_cmd()
                    .args(["stat", "-g", "-d", &s, "-F", &hz_s, "--json"]),
            )?;
            graph.ours.push(ours.cpu_s * 1e3);
            let rec = run_measured(self.perf_record(hz).arg("-g").args(["--", "sleep", &s]))?;
            let rep = run_measured(
                Command::new("perf")
                    .args(["report", "--stdio", "--sort", "sym", "-i"])
                    .arg(&data),
            )?;
            graph.peer.push((rec.cpu_s + rep.cpu_s) * 1e3);
        }
        self.figures.extend([view, graph]);

        // Symbolization: the refresh that meets the most new stacks.
        let fast = 4_999u64;
        let fast_s = fast.to_string();
        let window = 4.0f64;
        let mut refresh = Figure::new("Functions and call stacks: symbolization", "", "ms").peer(
            "perf report -g --sort sym of the same job",
            "perf / sampler",
        );
        let mut rss = Figure::new("Functions and call stacks: resident memory", "", "MiB")
            .peer("perf report (peak)", "perf / sampler");
        let mut distinct = Vec::new();
        for _ in 0..self.plan.reps.min(3) {
            let _w = Workloads::start(workload, "stacks", self.machine.cpus, 2.0 * window + 10.0)?;
            let interval = format!("{}", window / 2.0);
            let ours = run_measured(self.sampler_cmd().args([
                "top", "-g", "-F", &fast_s, "-i", &interval, "-n", "2", "--json",
            ]))?;
            let (mut slowest, mut most) = (0.0f64, 0usize);
            for line in ours.stdout.lines() {
                let doc = json(line)?;
                let stacks = doc["stacks"].as_array().map_or(0, Vec::len);
                slowest = slowest.max(doc["refresh_ms"].as_f64().unwrap_or(0.0));
                most = most.max(stacks);
            }
            distinct.push(most as f64);
            refresh.ours.push(slowest);
            rss.ours.push(ours.peak_kib as f64 / 1024.0);
            let rec = run_measured(
                Command::new("perf")
                    .args(["record", "-a", "-q", "-g", "-F", &fast_s, "-e"])
                    .arg(&self.machine.event)
                    .arg("-o")
                    .arg(&data)
                    .args(["--", "sleep", &format!("{window}")]),
            )?;
            drop(rec);
            let rep = run_measured(
                Command::new("perf")
                    .args(["report", "--stdio", "--sort", "sym", "-g", "caller", "-i"])
                    .arg(&data),
            )?;
            refresh.peer.push(rep.cpu_s * 1e3);
            rss.peer.push(rep.peak_kib as f64 / 1024.0);
        }
        let stacks = summary(&distinct, 0);
        refresh.what = format!(
            "slowest refresh of `sampler top -g` (map read, symbolization, roll-up), \
             {stacks} distinct stacks per refresh, {fast} Hz, {window} s"
        );
        refresh.note = "sampler: wall time of its refresh; perf: CPU time of perf report on \
                        a recording of the same job"
            .to_owned();
        rss.what = format!("sampler top -g peak (VmHWM), {stacks} distinct stacks");
        self.figures.extend([refresh, rss]);
        Ok(())
    }

    /// A flame graph of a run: `sampler record -g -o x.svg` against the classic
    /// pipeline, `perf record -g`, `perf script`, inferno's collapse and flame graph
    /// binaries; CPU and wall time, and what each keeps on disk.
    fn profiles(&mut self, hz: u64, workload: &Path, inferno: &Path) -> Result<()> {
        let secs = if self.plan.reps > 1 {
            30.0
        } else {
            self.plan.secs * 2.0
        };
        let s = format!("{secs}");
        let hz_s = hz.to_string();
        let job = format!(
            "flame graph of {secs} s at {hz} Hz per CPU, -g, the test workload on every CPU"
        );
        let group = "Profiles: a flame graph SVG";
        let peer = "perf record -a -g + perf script + inferno-collapse-perf + inferno-flamegraph";
        let mut cpu = Figure::new(group, format!("tool CPU time (user + sys), {job}"), "ms")
            .peer(peer, "perf / sampler");
        let mut wall = Figure::new(group, format!("wall time, {job}"), "s")
            .peer(peer, "perf / sampler")
            .note("both include the sampling window itself");
        let mut size = Figure::new(group, "what is kept: sampler's SVG vs perf.data", "KiB")
            .peer("perf.data", "perf / sampler");
        let data = self.perf_data();
        let svg = self.tmp.join("sampler.svg");
        let folded = self.tmp.join("perf.folded");
        let script = self.tmp.join("perf.script");
        let collapse = inferno.join("inferno-collapse-perf");
        let flamegraph = inferno.join("inferno-flamegraph");
        for _ in 0..self.plan.reps.min(3) {
            let _w = Workloads::start(workload, "cpu", self.machine.cpus, 2.0 * secs + 20.0)?;
            let _ = fs::remove_file(&svg);
            let t = Instant::now();
            let ours = run_measured(
                self.sampler_cmd()
                    .args(["record", "-g", "-d", &s, "-F", &hz_s, "-o"])
                    .arg(&svg),
            )?;
            wall.ours.push(t.elapsed().as_secs_f64());
            cpu.ours.push(ours.cpu_s * 1e3);
            size.ours.push(fs::metadata(&svg)?.len() as f64 / 1024.0);

            let t = Instant::now();
            let rec = run_measured(self.perf_record(hz).arg("-g").args(["--", "sleep", &s]))?;
            let scr = run_measured(Command::new("perf").args(["script", "-i"]).arg(&data))?;
            fs::write(&script, &scr.stdout)?;
            let col = run_measured(Command::new(&collapse).arg(&script))?;
            fs::write(&folded, &col.stdout)?;
            let fg = run_measured(Command::new(&flamegraph).arg(&folded))?;
            wall.peer.push(t.elapsed().as_secs_f64());
            cpu.peer
                .push((rec.cpu_s + scr.cpu_s + col.cpu_s + fg.cpu_s) * 1e3);
            size.peer.push(fs::metadata(&data)?.len() as f64 / 1024.0);
            if !fg.stdout.contains("<svg") {
                bail!("inferno-flamegraph drew no SVG");
            }
        }
        self.figures.extend([cpu, wall, size]);
        Ok(())
    }

    /// Time from starting `sampler top` to its first refresh that holds a sample.
    fn startup(&mut self) -> Result<()> {
        let mut f = Figure::new(
            "Start-up",
            "process start to the first refresh with samples (20 ms refreshes)",
            "ms",
        )
        .note("target: first sample within 200 ms");
        for _ in 0..self.plan.reps.max(3) {
            let started = Instant::now();
            let mut child = dies_with_bench(&mut self.sampler_cmd())
                .args(["top", "-i", "0.02", "-n", "250", "--json"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let stdout = child.stdout.take().context("stdout")?;
            let mut first = None;
            for line in BufReader::new(stdout).lines() {
                let line = line?;
                if json(&line)?["samples"].as_u64().unwrap_or(0) > 0 {
                    first = Some(started.elapsed());
                    break;
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            let first = first.context("sampler top printed no refresh with samples")?;
            f.ours.push(first.as_secs_f64() * 1e3);
        }
        self.figures.push(f);
        Ok(())
    }

    /// Resident memory with `n` live tasks sampled during the run: the largest
    /// resident size seen while running and the peak (`VmHWM`, which
    /// includes start-up), sampler's live view against perf record + report.
    fn memory(&mut self, n: usize) -> Result<()> {
        let hz = 999u64;
        let what = format!("{n} live threads spinning 3 ms each, {hz} Hz");
        let mut steady = Figure::new("Resident memory", format!("{what}: while running"), "MiB")
            .peer("perf record -a", "perf / sampler")
            .note(
                "largest VmRSS polled every 100 ms after start-up; sampler top refreshes \
                 (reads every task from the maps) each second. Target: under 30 MB with \
                 10,000 tasks",
            );
        let mut peak = Figure::new("Resident memory", format!("{what}: peak"), "MiB")
            .peer("perf record -a + perf report --sort pid", "perf / sampler")
            .note("VmHWM, start-up included");
        let mut seen = Figure::new("Tasks attributed", what.clone(), "tasks").note(
            "distinct threads of the benchmark process in sampler's refreshes (a thread \
             that spins between two samples can go unseen)",
        );
        let mut refresh = Figure::new(
            "Live view refresh cost",
            format!("{what}: slowest refresh (map read, roll-up, JSON), 1 s interval"),
            "ms",
        )
        .note("sampler top --json `refresh_ms`");
        let spin = Duration::from_millis(3);
        let me = std::process::id();
        let mib = |kib: u64| kib as f64 / 1024.0;
        for _ in 0..self.plan.reps.min(3) {
            let running = Running::spawn(self.sampler_cmd().args([
                "top",
                "-i",
                "1",
                "-F",
                &hz.to_string(),
                "--top",
                "100000",
                "--json",
            ]))?;
            thread::sleep(Duration::from_millis(500));
            let tasks = LiveTasks::spawn(n, spin)?;
            // One more refresh after the last thread spun: it reads all of them.
            thread::sleep(Duration::from_millis(1_200));
            running.signal(libc::SIGINT);
            let m = running.finish()?;
            drop(tasks);
            let mut tids: Vec<u64> = Vec::new();
            for line in m.stdout.lines() {
                let doc = json(line)?;
                tids.extend(
                    doc["tasks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| {
                            (t["tgid"].as_u64() == Some(u64::from(me)))
                                .then(|| t["tid"].as_u64())
                                .flatten()
                        }),
                );
            }
            tids.sort_unstable();
            tids.dedup();
            // Less the benchmark's main thread and the other threads it runs.
            seen.ours.push(tids.len().min(n) as f64);
            steady.ours.push(mib(m.steady_kib));
            peak.ours.push(mib(m.peak_kib));
            refresh.ours.extend(
                m.stdout
                    .lines()
                    .filter_map(|l| json(l).ok()?["refresh_ms"].as_f64())
                    .reduce(f64::max),
            );

            let running = Running::spawn(self.perf_record(hz).args(["--", "sleep", "3600"]))?;
            thread::sleep(Duration::from_millis(500));
            let tasks = LiveTasks::spawn(n, spin)?;
            thread::sleep(Duration::from_millis(1_200));
            running.signal(libc::SIGINT);
            let rec = running.finish()?;
            drop(tasks);
            let rep = run_measured(&mut self.perf_report())?;
            steady.peer.push(mib(rec.steady_kib));
            peak.peer.push(mib(rec.peak_kib.max(rep.peak_kib)));
        }
        self.figures.push(steady);
        self.figures.push(peak);
        self.figures.push(seen);
        self.figures.push(refresh);
        self.screen_refresh(n, hz, spin)
    }

    /// The full-screen live view in a real terminal (tmux, 200x50) with `n` live
    /// threads: its slowest refresh including drawing the screen, from the summary
    /// `sampler top` writes to its log on quitting.
    fn screen_refresh(&mut self, n: usize, hz: u64, spin: Duration) -> Result<()> {
        ensure_tmux()?;
        let mut fig = Figure::new(
            "Live view refresh cost",
            format!(
                "{n} live threads spinning 3 ms each, {hz} Hz: slowest full-screen refresh \
                 (map read, roll-up, render), 1 s interval"
            ),
            "ms",
        )
        .note("sampler top in tmux (200x50); the summary it logs on quitting");
        let socket = format!("sampler-bench-{}", std::process::id());
        let tmux = |args: &[&str]| {
            Command::new("tmux")
                .args(["-L", &socket])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        let log =
            std::env::temp_dir().join(format!("sampler-bench-top-{}.log", std::process::id()));
        for _ in 0..self.plan.reps.min(3) {
            let _ = fs::remove_file(&log);
            let cmd = format!(
                "{} top -i 1 -F {hz} --log {}",
                self.sampler.display(),
                log.display()
            );
            let started = tmux(&[
                "new-session",
                "-d",
                "-s",
                "top",
                "-x",
                "200",
                "-y",
                "50",
                &cmd,
            ])
            .context("starting tmux")?;
            anyhow::ensure!(started.success(), "tmux new-session failed");
            thread::sleep(Duration::from_millis(500));
            let tasks = LiveTasks::spawn(n, spin)?;
            // Two refreshes with every thread in the maps.
            thread::sleep(Duration::from_millis(2_200));
            tmux(&["send-keys", "-t", "top", "q"])?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while tmux(&["has-session", "-t", "top"])?.success() {
                anyhow::ensure!(Instant::now() < deadline, "sampler top did not quit on q");
                thread::sleep(Duration::from_millis(50));
            }
            drop(tasks);
            let text =
                fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
            let slowest = text
                .lines()
                .filter_map(|l| l.split("slowest ").nth(1)?.split(' ').next()?.parse().ok())
                .next_back()
                .with_context(|| format!("no refresh summary in the log: {text}"))?;
            fig.ours.push(slowest);
        }
        let _ = tmux(&["kill-server"]);
        let _ = fs::remove_file(&log);
        self.figures.push(fig);
        Ok(())
    }

    /// One counter read through the user page vs one `read()`, from `sampler check
    /// --latency` on this machine and in the arm64 guest.
    fn read_latency(&mut self, guest_sampler: Option<&Path>) -> Result<()> {
        let n = self.plan.latency_reads.to_string();
        let m = run_measured(self.sampler_cmd().args([
            "check",
            "-d",
            "0.3",
            "--latency",
            &n,
            "--json",
            // Latency is what is measured here; agreement is the tests' job (in 0.3 s
            // on a VM, host steal time can cost cpu-clock a few samples: > 1 %).
            "--tolerance",
            "100",
        ]))?;
        self.latency_figure(&json(&m.stdout)?, "this machine")?;
        if let Some(bin) = guest_sampler {
            let guest = vm::Guest {
                series: vm::Series::V6_12,
                cpu: vm::CpuModel::Max,
                hetero: false,
                icount: false,
                smp: 4,
                timeout: Duration::from_secs(600),
            };
            let payload = vm::Payload {
                files: vec![(bin.to_path_buf(), "sampler")],
                command: format!(
                    "/sampler check -e cycles -F 200 -d 0.5 --latency {n} --json 2>/dev/null"
                ),
            };
            let run = vm::run(&guest, &payload)?;
            let line = run
                .output
                .lines()
                .find(|l| l.trim_start().starts_with('{'))
                .with_context(|| format!("the guest printed no JSON:\n{}", run.output))?;
            self.latency_figure(
                &json(line)?,
                "arm64 guest (QEMU TCG, Linux 6.12, arm_pmu): the only place here with a \
                 hardware counter; emulated, so the ratio is indicative",
            )?;
        }
        Ok(())
    }

    fn latency_figure(&mut self, doc: &Value, place: &str) -> Result<()> {
        let checks = doc["checks"].as_array().context("no checks")?;
        let method = checks
            .first()
            .and_then(|c| c["method"].as_str())
            .unwrap_or("?")
            .to_owned();
        let mut f = Figure::new(
            "Counter read latency: one read() / one user-page read",
            format!("{place}; per CPU, method `{method}`"),
            "ns",
        )
        .peer("read() syscall", "read() / page");
        for c in checks {
            let l = &c["latency"];
            let Some(read) = l["read_ns"].as_f64() else {
                continue;
            };
            f.peer.push(read);
            match l["userpage_ns"].as_f64() {
                Some(page) => f.ours.push(page),
                None => f.ours.push(read),
            }
        }
        if method == "read" {
            f.note = "software events: no user-page read exists, both columns are read()".into();
        }
        self.figures.push(f);
        Ok(())
    }

    fn markdown(&self, command: &str) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "# Benchmarks\n");
        let _ = writeln!(
            out,
            "Measured by `{command}` in one run: sampler and its peers side by side on the \
             same machine, the same workload and the same seconds. Each figure is the \
             median (min–max) over {} repetition{}; ratios are computed per repetition.\n",
            self.plan.reps,
            if self.plan.reps == 1 { "" } else { "s" }
        );
        let _ = writeln!(out, "| machine | |\n|---|---|");
        let _ = writeln!(out, "| CPU | {} ({} CPUs) |", m.cpu_model, m.cpus);
        let _ = writeln!(out, "| kernel | {} |", m.kernel);
        let _ = writeln!(
            out,
            "| event source | {} (`{}`){} |",
            m.source,
            m.event,
            if m.hardware() {
                ""
            } else {
                ": no hardware PMU here, sampler and perf both sample the software clock"
            }
        );
        let _ = writeln!(out, "| peer | {} |", m.perf_version);
        let mut group = "";
        for f in &self.figures {
            if f.group != group {
                group = f.group;
                let _ = writeln!(out, "\n## {group}\n");
                let _ = writeln!(
                    out,
                    "| case | tool | figure | peer | peer figure | ratio | note |"
                );
                let _ = writeln!(out, "|---|---|---|---|---|---|---|");
            }
            let ratios = f.ratios();
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | {} | {} | {} | {} |",
                f.what,
                f.subject,
                summary(&f.ours, digits_for(&f.ours)),
                f.unit,
                if f.peer_name.is_empty() {
                    "–"
                } else {
                    &f.peer_name
                },
                if f.peer.is_empty() {
                    "–".to_owned()
                } else {
                    format!("{} {}", summary(&f.peer, digits_for(&f.peer)), f.unit)
                },
                if ratios.is_empty() || f.ratio_label.is_empty() {
                    "–".to_owned()
                } else {
                    format!("{}× ({})", summary(&ratios, 2), f.ratio_label)
                },
                f.note
            );
        }
        out
    }
}

/// Runs the benchmarks; writes `BENCHMARKS.md` unless `--quick`.
pub fn run(
    root: &Path,
    sampler: PathBuf,
    guest_sampler: Option<PathBuf>,
    o: &Options,
) -> Result<()> {
    if !is_root() {
        bail!(
            "the benchmarks load BPF programs and run `perf record -a`: run them as root \
             (`sudo -E cargo xtask bench`)"
        );
    }
    ensure_perf()?;
    ensure_bpftrace()?;
    let started = Instant::now();
    let tmp = std::env::temp_dir().join(format!("sampler-bench-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    let machine = Machine::probe(&sampler)?;
    let plan = Plan::new(o.quick);
    // Calibrate the fixed workload to about `work_secs` alone.
    let probe_iters = 2_000_000;
    let t = fixed_workload(machine.cpus, probe_iters).max(1e-3);
    let iterations = ((probe_iters as f64) * plan.work_secs / t) as u64;
    let mut b = Bench {
        sampler,
        machine,
        plan,
        tmp: tmp.clone(),
        figures: Vec::new(),
    };
    let rates = b.plan.rates.clone();
    for &hz in &rates {
        eprintln!("xtask: bench: tool cost at {hz} Hz");
        b.tool_cost(hz)?;
    }
    let fastest = *rates.last().unwrap_or(&999);
    eprintln!("xtask: bench: workload slowdown at {fastest} Hz");
    b.slowdown(fastest, iterations)?;
    let workload = crate::guest::build_workload(None)?;
    for &hz in &rates {
        eprintln!("xtask: bench: BPF cost per sample at {hz} Hz");
        b.bpf_cost(hz, &workload)?;
    }
    eprintln!("xtask: bench: functions and call stacks");
    b.functions(rates[0], &workload)?;
    eprintln!("xtask: bench: profiles (flame graph)");
    let inferno = crate::setup::ensure_inferno(root)?;
    b.profiles(rates[0], &workload, &inferno)?;
    eprintln!("xtask: bench: start-up");
    b.startup()?;
    for n in b.plan.tasks.clone() {
        eprintln!("xtask: bench: memory with {n} live tasks");
        b.memory(n)?;
    }
    eprintln!("xtask: bench: counter read latency");
    b.read_latency(guest_sampler.as_deref())?;
    eprintln!("xtask: bench: the user-space half at scale (simulated)");
    let plots = if o.quick {
        root.join("target/bench-plots")
    } else {
        root.join("xtask/plots")
    };
    let scale = crate::scale::section(o.quick, &plots)?;
    let command = if o.quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let mut md = b.markdown(command);
    md.push_str(&scale);
    let _ = writeln!(
        md,
        "\nTotal benchmark time: {:.0} s. Machines are noisy: compare ratios measured in \
         the same run, not figures across runs.",
        started.elapsed().as_secs_f64()
    );
    if o.no_vm {
        let _ = writeln!(
            md,
            "\n(`--no-vm`: the arm64 guest figures were not measured.)"
        );
    }
    print!("{md}");
    let _ = fs::remove_dir_all(&tmp);
    if o.quick {
        let path = root.join("target/bench-quick.md");
        fs::write(&path, &md)?;
        eprintln!(
            "xtask: bench --quick: every benchmark ran; results in {}",
            path.display()
        );
    } else {
        fs::write(root.join("BENCHMARKS.md"), &md)?;
        eprintln!("xtask: bench: wrote BENCHMARKS.md");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_give_median_and_spread() {
        assert_eq!(summary(&[], 1), "–");
        assert_eq!(summary(&[2.0], 1), "2.0");
        assert_eq!(summary(&[3.0, 1.0, 2.0], 1), "2.0 (1.0–3.0)");
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0], 2), "2.50 (1.00–4.00)");
    }

    #[test]
    fn ratios_are_per_repetition() {
        let mut f = Figure::new("g", "w", "ms");
        f.ours = vec![10.0, 20.0, 0.0];
        f.peer = vec![100.0, 100.0, 5.0];
        assert_eq!(f.ratios(), vec![10.0, 5.0]);
        // Inverted (ours / peer): a figure of ours at or below 0 stays (a breakdown
        // piece within the noise); a failed measurement (NaN) or a peer of 0 does not.
        let mut f = Figure::new("g", "w", "ns");
        f.inverted = true;
        f.ours = vec![50.0, -10.0, f64::NAN, 5.0];
        f.peer = vec![100.0, 100.0, 100.0, 0.0];
        assert_eq!(f.ratios(), vec![0.5, -0.1]);
    }

    #[test]
    fn perf_report_headers_are_parsed() {
        let report = "# Total Lost Samples: 17\n#\n# Samples: 12K of event 'cpu-clock'\n";
        assert_eq!(perf_lost(report), 17);
        assert_eq!(perf_lost("# Samples: 998  of event 'cpu-clock'\n"), 0);
        let stats = "Aggregated stats:\n           TOTAL events:       1241\n          \
                     SAMPLE events:        998  (80.4%)\n";
        assert_eq!(perf_samples(stats), 998);
        assert_eq!(perf_samples(""), 0);
    }

    #[test]
    fn vm_rss_is_read_from_the_status_file() {
        let status = "Name:\tsampler\nVmHWM:\t   22888 kB\nVmRSS:\t    6376 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(6376));
        assert_eq!(status_kib(status, "VmHWM:"), Some(22888));
        assert_eq!(status_kib("Name:\tx\n", "VmRSS:"), None);
    }

    #[test]
    fn the_workload_depends_on_its_iterations() {
        assert_ne!(work(10), work(11));
        assert_eq!(work(1_000), work(1_000));
    }
}
