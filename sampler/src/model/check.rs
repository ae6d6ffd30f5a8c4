//! The three-way cross-check: the same counts through the BPF maps, `read()` and the
//! user page.
//!
//! One reader thread is pinned to each CPU. It opens its own (self-monitoring,
//! per-thread) copy of every event of the sampling group through the PMU that covers
//! its CPU, asking for user-space access where the PMU has a `rdpmc` format bit, maps
//! each event's page, and runs for the interval. Meanwhile the BPF programs attribute
//! the system-wide events to every task, the readers included. At the end each reader
//! reads its events through the page and with `read()` back to back (confirming its
//! CPU before and after, retrying when it was migrated), and the check compares, per
//! CPU and event: what BPF attributed to the reader's thread, `read()`, and the page.
//! Per-CPU events cannot be read from user space on arm64, hence per-thread copies.
//!
//! The windows match: BPF charges a task at its samples and context switches, so
//! each reader reads its counters, then sleeps (a switch: BPF has charged it up to
//! there), and the maps are read while every reader sleeps, at the start and at the
//! end. The BPF column is what the maps gained between the two readings; `read()`'s
//! is what the counter gained between the reader's two reads.

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde::Serialize;

use crate::{
    discover::pmu::PmuSet,
    events::plan::{Mode, PlannedEvent},
    kernel::Error,
    kernel::session::is_unsupported_error,
    kernel::userpage::{
        Counts, Method, ReadStats, RseqRead, UserPage, decode, read_event, read_event_rseq,
        read_syscall,
    },
    sys::{self, PerfSys, rseq::Rseq},
};

/// One (CPU, event) of the check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub cpu: u32,
    pub event: String,
    /// How the reader read its counter: `rdpmc`, `mrs`, or `read` when the page did
    /// not allow it.
    pub method: Method,
    /// What the BPF maps attributed to the reader thread on this CPU over the
    /// reader's window.
    pub bpf: u64,
    /// What `read()` of the reader's event gained over its window.
    pub read: u64,
    /// The user-page read of the same event at the end, less `read()` at the start
    /// (`None` when not readable from the page).
    pub userpage: Option<u64>,
    /// The largest relative difference among the values present, against `read`.
    pub rel_diff: f64,
    /// Why a value is missing or differs.
    pub note: Option<String>,
    /// The reader thread (the BPF attribution key).
    pub tid: u32,
    /// Nanoseconds the reader's copy of the event ran over the window (`read()`'s
    /// running time) ...
    pub running_ns: u64,
    /// ... and the CPU time the scheduler gave the reader thread over it
    /// (`CLOCK_THREAD_CPUTIME_ID`), when known. A copy that ran far less than its
    /// thread was not scheduled with it: its `read()` is no reference (a note says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_ns: Option<u64>,
    /// The page's counter index and width (0 when not readable).
    pub page_index: u32,
    pub pmc_width: u16,
    /// The user-page reads the reader made of this event through its window, each in
    /// a restartable sequence (see `kernel::userpage`), by outcome, and how many
    /// read values disagreed with `read()`; `None` where the page was not mapped or
    /// the thread has no rseq area (a note says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_reads: Option<PageReads>,
    /// With `--latency`: nanoseconds per user-page read (when the page allows it) and
    /// per `read()` syscall of this event on this CPU, and how many times faster the
    /// page is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
}

/// The reader's user-page reads of one event over its window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PageReads {
    #[serde(flatten)]
    pub outcomes: ReadStats,
    /// Values read from the page below the one read before them, below `read()` at
    /// the window's start or above `read()` at its end: counters only grow, so each
    /// is a wrong value. Must be 0.
    pub disagree: u64,
}

/// Events a count may differ by at the window's edges, whatever the tolerance: a
/// counter of discrete events (context-switches) gains at a switch after the switch
/// program has read it, so the switches that open and close the window can land on
/// either side of it.
pub const EDGE_EVENTS: u64 = 2;

impl CheckRow {
    /// Within `tolerance_pct` percent, or within [`EDGE_EVENTS`] events, and no
    /// user-page read in the window disagreed with `read()`.
    pub fn passes(&self, tolerance_pct: f64) -> bool {
        let apart = |v: u64| v.abs_diff(self.read);
        let most = apart(self.bpf).max(self.userpage.map_or(0, apart));
        let close = self.rel_diff * 100.0 <= tolerance_pct || most <= EDGE_EVENTS;
        close && self.page_reads.is_none_or(|p| p.disagree == 0)
    }
}

/// The cost of one read of a counter, by method: the median over batches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub userpage_ns: Option<f64>,
    pub read_ns: f64,
    /// `read_ns / userpage_ns`.
    pub speedup: Option<f64>,
}

/// What a reader measured on its CPU.
#[derive(Debug)]
pub struct ReaderResult {
    pub cpu: u32,
    pub tid: u32,
    /// The thread's CPU time over the window, by the scheduler's account.
    pub thread_ns: Option<u64>,
    pub probes: Vec<Probe>,
}

#[derive(Debug)]
pub struct Probe {
    pub event: String,
    /// Position in the sampling group (0: leader).
    pub index: usize,
    pub method: Method,
    /// `read()` at the end of the reader's window, and at its start.
    pub read: Counts,
    pub start: Counts,
    pub userpage: Option<Counts>,
    pub page_index: u32,
    pub pmc_width: u16,
    pub note: Option<String>,
    pub page_reads: Option<PageReads>,
}

/// The `config1` bits asking the PMU for user-space counter access: arm_pmu's
/// `rdpmc`, and `long` for a 64-bit counter; 0 where the PMU has no such format field
/// (x86 grants access through its `rdpmc` sysfs file instead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserBits {
    pub rdpmc: u64,
    pub long: u64,
}

pub fn user_access_bits(pmus: &PmuSet, pmu: Option<&str>) -> UserBits {
    let Some(p) = pmu.and_then(|n| pmus.get(n)) else {
        return UserBits::default();
    };
    let bit = |f: &str| {
        p.formats
            .get(f)
            .and_then(|fmt| fmt.encode(f, 1).ok())
            .unwrap_or(0)
    };
    UserBits {
        rdpmc: bit("rdpmc"),
        long: bit("long"),
    }
}

/// arm64's cycle counter in the page's numbering: natively 64 bits wide. On an event
/// counter, `long` makes the kernel chain two 32-bit counters, which costs a counter
/// and which emulated PMUs get wrong (seen under QEMU: values with bit 63 set), so
/// event counters are read 32 bits wide.
const CYCLE_COUNTER_INDEX: u32 = 32;

/// Why user-space reads may be off on this machine, for the notes.
pub fn user_access_note() -> Option<String> {
    let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/perf_user_access") else {
        // arm64 kernels before 5.17 (5.10 LTS) have no user-space counter access.
        return cfg!(target_arch = "aarch64").then(|| {
            "this kernel has no kernel.perf_user_access (arm64 added it in 5.17): \
             counters cannot be read from user space here, read() is used"
                .to_owned()
        });
    };
    (v.trim() == "0").then(|| {
        "kernel.perf_user_access is 0: user-space counter reads are off; \
         `sysctl -w kernel.perf_user_access=1` turns them on"
            .to_owned()
    })
}

/// Batches in a latency measurement; the median batch is reported.
const LATENCY_BATCHES: usize = 7;

/// Nanoseconds per call of `f`, the median over [`LATENCY_BATCHES`] batches of
/// `per_batch` calls; `None` when `f` fails.
fn time_per_call(per_batch: u32, mut f: impl FnMut() -> Result<u64, Error>) -> Option<f64> {
    let mut batches = Vec::with_capacity(LATENCY_BATCHES);
    for _ in 0..LATENCY_BATCHES {
        let start = std::time::Instant::now();
        for _ in 0..per_batch {
            std::hint::black_box(f().ok()?);
        }
        batches.push(start.elapsed().as_nanos() as f64 / f64::from(per_batch.max(1)));
    }
    batches.sort_by(f64::total_cmp);
    Some(batches[LATENCY_BATCHES / 2])
}

/// Times reading `fd` through `page` (when it allows user reads; in a restartable
/// sequence where the thread has an area, as the check reads) and with `read()`.
fn measure_latency(
    sys: &dyn PerfSys,
    fd: std::os::fd::BorrowedFd<'_>,
    page: Option<&UserPage>,
    rseq: Option<&Rseq>,
    method: Method,
    per_batch: u32,
) -> Option<Latency> {
    let read_ns = time_per_call(per_batch, || Ok(read_syscall(sys, fd)?.value))?;
    let userpage_ns = match (method, page, rseq) {
        (Method::Read, _, _) => None,
        (_, Some(page), Some(rseq)) => {
            let mut stats = ReadStats::default();
            time_per_call(per_batch, || {
                Ok(read_event_rseq(sys, fd, page, rseq, &mut stats)?.0.value)
            })
        }
        _ => time_per_call(per_batch, || Ok(read_event(sys, fd, page)?.0.value)),
    };
    Some(Latency {
        userpage_ns,
        read_ns,
        speedup: userpage_ns.filter(|&u| u > 0.0).map(|u| read_ns / u),
    })
}

/// A reader's own copy of one event: its fd, its mapped page, and why user reads
/// are off for it, if the kernel said so.
type Opened<'a> = (&'a PlannedEvent, OwnedFd, Option<UserPage>, Option<String>);

/// Opens this thread's copies of `events` and maps their pages, following arm_pmu's
/// rules for the `config1` user-access bits (`rdpmc` = user access, `long` = 64 bits):
///
/// - `rdpmc|long`: 64 bits read from user space. Without FEAT_PMUv3p5 (no 64-bit
///   event counters: Cortex-A53/A57/A72, Juno), the kernel allows it for `cycles`
///   only, and only on the cycle counter: when a system-wide sampler holds that
///   counter, the event opens but never runs (index 0, `time_running` 0); any other
///   event is refused (EOPNOTSUPP).
/// - `rdpmc` alone: user access on a 32-bit event counter, anywhere.
///
/// So `rdpmc|long` is asked first, and kept where it landed on the cycle counter, or
/// runs without user access (the sysctl is off) (a 64-bit event counter is `long` on PMUv3p5, but a chained pair without
/// it, and emulated PMUs get chains wrong: values with bit 63 set under QEMU); where
/// the kernel refused it, or the event got no counter, or an event counter, the copy
/// is opened again with `rdpmc` alone. A copy that never got a counter says so in
/// its note: it is never left silently at zero. Without `rdpmc` (kernels before 5.17,
/// x86) no user bits are set.
fn open_events<'a>(
    sys: &dyn PerfSys,
    events: &'a [PlannedEvent],
    user_bits: UserBits,
) -> Result<Vec<Opened<'a>>, Error> {
    let mut opened = Vec::new();
    for p in events {
        if user_bits.rdpmc == 0 || !p.hardware {
            let (fd, note) = open_probe(sys, p, 0)?;
            let page = UserPage::map(fd.as_fd()).ok();
            opened.push((p, fd, page, note));
            continue;
        }
        let mut why_32 = None;
        if user_bits.long != 0 {
            match open_probe(sys, p, user_bits.rdpmc | user_bits.long) {
                Ok((fd, note)) => {
                    let page = UserPage::map(fd.as_fd()).ok();
                    match placement(sys, &fd, page.as_ref()) {
                        // Running and not readable from the page (user access off):
                        // a 32-bit copy would not be readable either.
                        Placement::CycleCounter | Placement::NotReadable => {
                            opened.push((p, fd, page, note));
                            continue;
                        }
                        Placement::NoCounter => {
                            why_32 = Some(
                                "64-bit user access got no counter (without FEAT_PMUv3p5 \
                                 only the cycle counter has 64 bits, and the sampler holds \
                                 it): read 32 bits wide",
                            );
                        }
                        Placement::EventCounter => {}
                    }
                }
                Err(Error::PerfOpen { source, .. })
                    if source.raw_os_error() == Some(libc::EOPNOTSUPP) =>
                {
                    why_32 = Some(
                        "the kernel refused 64-bit user access (EOPNOTSUPP: the PMU has no \
                         64-bit event counters, FEAT_PMUv3p5): read 32 bits wide",
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let (fd, note) = open_probe(sys, p, user_bits.rdpmc)?;
        let page = UserPage::map(fd.as_fd()).ok();
        let note = match placement(sys, &fd, page.as_ref()) {
            Placement::NoCounter => Some(
                "the reader's copy got no counter (time_running 0: the PMU's counters are \
                 all taken): its values are not measurements"
                    .to_owned(),
            ),
            _ => note.or(why_32.map(str::to_owned)),
        };
        opened.push((p, fd, page, note));
    }
    Ok(opened)
}

/// Where a freshly opened (enabled, this-thread) event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// arm64's cycle counter (page index 32).
    CycleCounter,
    /// Another counter the page names.
    EventCounter,
    /// Running, but not readable from the page (index 0: user access off, or the
    /// page could not be mapped).
    NotReadable,
    /// Enabled but never running: the kernel found no counter for it.
    NoCounter,
}

fn placement(sys: &dyn PerfSys, fd: &OwnedFd, page: Option<&UserPage>) -> Placement {
    // The event is scheduled in as it is installed on this (running) thread; spin a
    // little so that its enabled time is measurably above zero.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_micros(200) {
        std::hint::spin_loop();
    }
    let index = page.and_then(UserPage::snapshot).map_or(0, |s| s.0.index);
    match index {
        CYCLE_COUNTER_INDEX => Placement::CycleCounter,
        0 => match read_syscall(sys, fd.as_fd()) {
            Ok(c) if c.enabled > 0 && c.running == 0 => Placement::NoCounter,
            _ => Placement::NotReadable,
        },
        _ => Placement::EventCounter,
    }
}

/// Pins this thread to `cpu`, opens its copies of `events`, and times reading each
/// by each method: `(event index in the group, latency)`.
pub fn measure_reader_latency(
    sys: &dyn PerfSys,
    cpu: u32,
    events: &[PlannedEvent],
    user_bits: UserBits,
    per_batch: u32,
) -> Result<Vec<(usize, Latency)>, Error> {
    sys::pin_to_cpu(0, cpu)?;
    let opened = open_events(sys, events, user_bits)?;
    let rseq = Rseq::current().ok();
    let mut out = Vec::new();
    for (p, fd, page, _) in &opened {
        let (_, method) = read_event(sys, fd.as_fd(), page.as_ref())?;
        if let Some(l) = measure_latency(
            sys,
            fd.as_fd(),
            page.as_ref(),
            rseq.as_ref(),
            method,
            per_batch,
        ) {
            out.push((p.index, l));
        }
    }
    Ok(out)
}

/// Runs one reader: pins itself to `cpu`, opens its copies of `events`, and runs
/// until `stop`, reading each event's page in a restartable sequence between bursts
/// of work (each value checked against the ones before it and `read()` at the
/// window's edges); then reads them through the page and with `read()`.
pub fn run_reader(
    sys: &dyn PerfSys,
    cpu: u32,
    events: &[PlannedEvent],
    user_bits: UserBits,
    window: &Window,
) -> Result<ReaderResult, Error> {
    let tid = sys::gettid();
    let opened = match sys::pin_to_cpu(0, cpu)
        .map_err(Error::from)
        .and_then(|()| open_events(sys, events, user_bits))
    {
        Ok(o) => o,
        Err(e) => {
            window.leave();
            return Err(e);
        }
    };
    // This thread's rseq area (the C library's, or one registered here and
    // unregistered when it is dropped, before the thread ends).
    let rseq = Rseq::current();
    let mut starts = Vec::new();
    for (_, fd, _, _) in &opened {
        starts.push(read_syscall(sys, fd.as_fd()).unwrap_or_default());
    }
    let thread_start = sys::thread_cpu_ns().ok();
    // Hardware events only: a software event's page never names a counter.
    let mut reads: Vec<Option<PageTrack>> = opened
        .iter()
        .zip(&starts)
        .map(|((p, _, page, _), &start)| {
            (p.hardware && page.is_some() && rseq.is_ok()).then(|| PageTrack::new(start.value))
        })
        .collect();
    // A switch: BPF has charged this thread up to here when the maps are read.
    window.pause();
    window.start.wait();
    window.started.wait();
    // Run on this CPU for the interval, so that BPF attributes samples to this thread.
    let mut x = 0u64;
    while !window.stop.load(Ordering::Relaxed) {
        for _ in 0..2_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        if let Ok(rseq) = &rseq {
            for ((_, _, page, _), track) in opened.iter().zip(&mut reads) {
                if let (Some(page), Some(track)) = (page, track) {
                    track.read(page, rseq);
                }
            }
        }
    }
    let result = read_probes(sys, cpu, tid, &opened, &starts, rseq.as_ref().ok(), reads);
    let thread_ns = thread_start
        .zip(sys::thread_cpu_ns().ok())
        .map(|(start, end)| end.saturating_sub(start));
    window.pause();
    window.end.wait();
    let mut result = result?;
    result.thread_ns = thread_ns;
    if let Err(e) = &rseq {
        for p in &mut result.probes {
            if p.method != Method::Read && p.note.is_none() {
                p.note = Some(format!(
                    "no restartable sequence for the page reads ({e}): the seqlock alone"
                ));
            }
        }
    }
    Ok(result)
}

/// One event's page reads in the window: outcomes, and each value against the
/// last one.
struct PageTrack {
    stats: ReadStats,
    last: u64,
    disagree: u64,
}

impl PageTrack {
    fn new(start: u64) -> Self {
        Self {
            stats: ReadStats::default(),
            last: start,
            disagree: 0,
        }
    }

    /// One read in a restartable sequence. An abort or index 0 would fall back to
    /// `read()`; here, in the window's loop, it is only counted.
    fn read(&mut self, page: &UserPage, rseq: &Rseq) {
        match page.read_rseq(rseq) {
            Some(RseqRead::Read(f, counter, timestamp)) => match decode(&f, counter, timestamp) {
                Some(c) => {
                    self.stats.success += 1;
                    if c.value < self.last {
                        self.disagree += 1;
                    }
                    self.last = self.last.max(c.value);
                }
                None => self.stats.zero += 1,
            },
            Some(RseqRead::Abort) => self.stats.abort += 1,
            Some(RseqRead::Zero) | None => self.stats.zero += 1,
        }
    }

    /// With the final read: values above `read()` at the end disagree too.
    fn finish(self, end: u64) -> PageReads {
        PageReads {
            outcomes: self.stats,
            disagree: self.disagree + u64::from(self.last > end),
        }
    }
}

/// The readers' meeting points, and how they are told to stop.
pub struct Window {
    start: Barrier,
    started: Barrier,
    end: Barrier,
    stop: AtomicBool,
}

impl Window {
    /// For `readers` reader threads and the thread that reads the maps.
    fn new(readers: usize) -> Self {
        Self {
            start: Barrier::new(readers + 1),
            started: Barrier::new(readers + 1),
            end: Barrier::new(readers + 1),
            stop: AtomicBool::new(false),
        }
    }

    /// Off the CPU for a moment: the scheduler switches, and BPF's switch program
    /// charges this thread up to now.
    fn pause(&self) {
        std::thread::sleep(Duration::from_micros(50));
    }

    /// A reader that failed still meets the others, so that nobody waits forever.
    fn leave(&self) {
        self.start.wait();
        self.started.wait();
        self.end.wait();
    }
}

fn read_probes(
    sys: &dyn PerfSys,
    cpu: u32,
    tid: u32,
    opened: &[Opened<'_>],
    starts: &[Counts],
    rseq: Option<&Rseq>,
    tracks: Vec<Option<PageTrack>>,
) -> Result<ReaderResult, Error> {
    let mut probes = Vec::new();
    for (((p, fd, page, note), start), track) in opened.iter().zip(starts).zip(tracks) {
        let mut attempt = 0;
        let mut last_reads = ReadStats::default();
        let probe = loop {
            attempt += 1;
            let before = sys::current_cpu();
            let (first, method) = match (page, rseq) {
                (Some(page), Some(rseq)) => {
                    read_event_rseq(sys, fd.as_fd(), page, rseq, &mut last_reads)?
                }
                _ => read_event(sys, fd.as_fd(), page.as_ref())?,
            };
            let read = read_syscall(sys, fd.as_fd())?;
            let after = sys::current_cpu();
            if (before == Some(cpu) && after == Some(cpu)) || attempt >= 10 {
                let snapshot = page.as_ref().and_then(UserPage::snapshot);
                let (page_index, pmc_width) =
                    snapshot.map_or((0, 0), |(f, _, _)| (f.index, f.pmc_width));
                let mut note = note.clone();
                if method == Method::Read && note.is_none() {
                    note = Some(if !p.hardware {
                        "software event: its user page is not kept current (index 0), \
                         read() is the reference"
                            .to_owned()
                    } else if page.is_none() {
                        "the event's page could not be mapped: read() used".to_owned()
                    } else {
                        "the page does not allow user reads here (index 0 or no \
                         cap_user_rdpmc): read() used"
                            .to_owned()
                    });
                }
                let page_reads = track.map(|t| {
                    let mut reads = t.finish(read.value);
                    reads.outcomes.add(&last_reads);
                    if method != Method::Read
                        && (first.value < start.value || first.value > read.value)
                    {
                        reads.disagree += 1;
                    }
                    reads
                });
                break Probe {
                    event: p.event.clone(),
                    index: p.index,
                    method,
                    start: *start,
                    read,
                    userpage: (method != Method::Read).then_some(first),
                    page_index,
                    pmc_width,
                    note,
                    page_reads,
                };
            }
        };
        probes.push(probe);
    }

    Ok(ReaderResult {
        cpu,
        tid,
        thread_ns: None,
        probes,
    })
}

/// Opens the reader's own copy of `p` (this thread, any CPU), walking the plan's
/// encoding chain, with user access bits when the PMU has them (without, and a note,
/// when the kernel refuses them).
fn open_probe(
    sys: &dyn PerfSys,
    p: &PlannedEvent,
    user_bits: u64,
) -> Result<(OwnedFd, Option<String>), Error> {
    let mut last = None;
    for enc in p.encodings() {
        let mut attr = p.attr(enc, Mode::CountLeader);
        attr.set_disabled(0);
        if p.hardware {
            attr.config1 |= user_bits;
        }
        match sys.perf_event_open(&attr, 0, -1, None) {
            Ok(fd) => return Ok((fd, None)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && user_bits != 0 => {
                attr.config1 &= !user_bits;
                let fd =
                    sys.perf_event_open(&attr, 0, -1, None)
                        .map_err(|source| Error::PerfOpen {
                            event: p.event.clone(),
                            cpu: p.cpu,
                            source,
                            hint: " (the reader's own copy)",
                        })?;
                return Ok((
                    fd,
                    Some("the kernel refused user access for this event: read() used".into()),
                ));
            }
            Err(e) if is_unsupported_error(&e) => last = Some(e),
            Err(source) => {
                return Err(Error::PerfOpen {
                    event: p.event.clone(),
                    cpu: p.cpu,
                    source,
                    hint: " (the reader's own copy)",
                });
            }
        }
    }
    Err(Error::PerfOpen {
        event: p.event.clone(),
        cpu: p.cpu,
        source: last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT)),
        hint: " (the reader's own copy)",
    })
}

/// Relative difference of `v` against `reference`.
pub fn rel_diff(v: u64, reference: u64) -> f64 {
    if reference == 0 {
        if v == 0 { 0.0 } else { 1.0 }
    } else {
        (v as f64 - reference as f64).abs() / reference as f64
    }
}

/// Whether a reader's copy that ran `running_ns` over a window in which the
/// scheduler gave its thread `thread_ns` ran with the thread: at least half of that
/// time (the two clocks are read microseconds apart, and a thread that barely ran in
/// a window, under 10 ms, says nothing).
pub fn ran_with_its_thread(running_ns: u64, thread_ns: u64) -> bool {
    thread_ns < 10_000_000 || running_ns.saturating_mul(2) >= thread_ns
}

/// The rows of the check: for each reader probe, BPF's attribution to the reader
/// thread on that CPU (`bpf_of(tid, cpu, index)`) against `read()` and the page.
pub fn rows(readers: &[ReaderResult], bpf_of: impl Fn(u32, u32, usize) -> u64) -> Vec<CheckRow> {
    let mut out = Vec::new();
    for r in readers {
        for p in &r.probes {
            // What each gained over the reader's window.
            let bpf = bpf_of(r.tid, r.cpu, p.index);
            let read = p.read.value.saturating_sub(p.start.value);
            let userpage = p.userpage.map(|c| c.value.saturating_sub(p.start.value));
            let diff = rel_diff(bpf, read).max(userpage.map_or(0.0, |u| rel_diff(u, read)));
            let running_ns = p.read.running.saturating_sub(p.start.running);
            let mut note = p.note.clone();
            if let Some(thread) = r.thread_ns.filter(|&t| !ran_with_its_thread(running_ns, t)) {
                let ms = |ns: u64| ns as f64 / 1e6;
                let why = format!(
                    "the reader's copy ran {:.1} ms of the {:.1} ms its thread ran: the kernel \
                     did not keep it on a counter with its thread (multiplexed, or not \
                     scheduled in), so its read() is no reference here",
                    ms(running_ns),
                    ms(thread)
                );
                note = Some(match note {
                    Some(n) => format!("{n}; {why}"),
                    None => why,
                });
            }
            out.push(CheckRow {
                cpu: r.cpu,
                event: p.event.clone(),
                method: p.method,
                bpf,
                read,
                userpage,
                rel_diff: diff,
                note,
                tid: r.tid,
                running_ns,
                thread_ns: r.thread_ns,
                page_index: p.page_index,
                pmc_width: p.pmc_width,
                page_reads: p.page_reads,
                latency: None,
            });
        }
    }
    out
}

/// The sampling group's events of each CPU of `plan`, with the PMU's user bits.
fn per_cpu(plan: &[PlannedEvent], pmus: &PmuSet) -> Vec<(u32, Vec<PlannedEvent>, UserBits)> {
    let mut cpus: Vec<u32> = plan
        .iter()
        .filter(|p| p.group == 0)
        .map(|p| p.cpu)
        .collect();
    cpus.dedup();
    cpus.into_iter()
        .map(|cpu| {
            let events: Vec<PlannedEvent> = plan
                .iter()
                .filter(|p| p.group == 0 && p.cpu == cpu)
                .cloned()
                .collect();
            let bits = user_access_bits(pmus, events[0].pmu.as_deref());
            (cpu, events, bits)
        })
        .collect()
}

/// Times one read of each event of `plan`'s sampling group by each method, from a
/// reader pinned to each CPU (one CPU at a time, so readers do not compete), and
/// fills in the rows' `latency`. Run it after the check's interval: the timing loops
/// would otherwise add to what BPF attributes to the readers.
pub fn add_latencies(
    rows: &mut [CheckRow],
    plan: &[PlannedEvent],
    pmus: &PmuSet,
    per_batch: u32,
) -> Result<(), Error> {
    for (cpu, events, bits) in per_cpu(plan, pmus) {
        let measured = std::thread::spawn(move || {
            measure_reader_latency(&sys::RealSys, cpu, &events, bits, per_batch)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Runtime(std::io::Error::other("reader panicked"))))?;
        for (index, latency) in measured {
            let names: Vec<&str> = plan
                .iter()
                .filter(|p| p.group == 0 && p.cpu == cpu && p.index == index)
                .map(|p| p.event.as_str())
                .collect();
            for row in rows
                .iter_mut()
                .filter(|r| r.cpu == cpu && names.contains(&r.event.as_str()))
            {
                row.latency = Some(latency);
            }
        }
    }
    Ok(())
}

/// Spawns one reader per CPU of `plan` (its sampling group), waits `duration`, stops
/// them and collects their results.
/// Runs a reader on each CPU of `plan` for `duration`, and calls `snapshot` (a reading
/// of the BPF maps) at the start and at the end of their window, while they sleep.
/// Returns the readers' results and the two snapshots.
pub fn run_readers<T>(
    plan: &[PlannedEvent],
    pmus: &PmuSet,
    duration: Duration,
    mut snapshot: impl FnMut() -> Result<T, Error>,
) -> Result<(Vec<ReaderResult>, T, T), Error> {
    let cpus = per_cpu(plan, pmus);
    let window = Arc::new(Window::new(cpus.len()));
    let mut handles = Vec::new();
    for (cpu, events, bits) in cpus {
        let window = Arc::clone(&window);
        handles.push(std::thread::spawn(move || {
            run_reader(&sys::RealSys, cpu, &events, bits, &window)
        }));
    }
    window.start.wait();
    let first = snapshot();
    window.started.wait();
    std::thread::sleep(duration);
    window.stop.store(true, Ordering::Relaxed);
    window.end.wait();
    let last = snapshot();
    let results = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(Error::Runtime(std::io::Error::other("reader panicked"))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((results, first?, last?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(index: usize, read: u64, page: Option<u64>) -> Probe {
        let c = |value| Counts {
            value,
            enabled: 1,
            running: 1,
        };
        Probe {
            event: format!("e{index}"),
            index,
            method: if page.is_some() {
                Method::Mrs
            } else {
                Method::Read
            },
            read: c(read + 10),
            start: c(10),
            userpage: page.map(|v| c(v + 10)),
            page_index: if page.is_some() { 32 } else { 0 },
            pmc_width: 64,
            note: None,
            page_reads: None,
        }
    }

    #[test]
    fn rows_compare_bpf_and_page_against_read() {
        let readers = [ReaderResult {
            cpu: 2,
            tid: 77,
            thread_ns: None,
            probes: vec![probe(0, 1000, Some(1001)), probe(1, 500, None)],
        }];
        let rows = rows(&readers, |tid, cpu, i| {
            assert_eq!((tid, cpu), (77, 2));
            [990, 500][i]
        });
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].bpf, rows[0].read, rows[0].userpage),
            (990, 1000, Some(1001))
        );
        assert!((rows[0].rel_diff - 0.01).abs() < 1e-12);
        assert!(rows[0].passes(1.0) && !rows[0].passes(0.5));
        // A few events apart at the window's edges pass whatever the ratio.
        let mut few = rows[1].clone();
        (few.bpf, few.read, few.rel_diff) = (72, 70, rel_diff(72, 70));
        assert!(few.passes(1.0));
        (few.bpf, few.rel_diff) = (73, rel_diff(73, 70));
        assert!(!few.passes(1.0));
        assert_eq!(rows[1].userpage, None);
        assert_eq!(rows[1].rel_diff, 0.0);
        assert_eq!(rows[1].method, Method::Read);
    }

    #[test]
    fn a_copy_that_did_not_run_with_its_thread_is_no_reference() {
        let ms = 1_000_000;
        let mut ran = probe(0, 1000, None);
        (ran.start.running, ran.read.running) = (5 * ms, 1_005 * ms);
        let mut stopped = probe(1, 1000, None);
        stopped.note = Some("software event".into());
        (stopped.start.running, stopped.read.running) = (ms, ms + 300_000);
        let readers = [ReaderResult {
            cpu: 0,
            tid: 9,
            thread_ns: Some(1_010 * ms),
            probes: vec![ran, stopped],
        }];
        let rows = rows(&readers, |_, _, _| 1000);
        assert_eq!(
            (rows[0].running_ns, rows[0].thread_ns),
            (1_000 * ms, Some(1_010 * ms))
        );
        assert_eq!(rows[0].note, None);
        assert_eq!(rows[1].running_ns, 300_000);
        let note = rows[1].note.as_deref().unwrap();
        assert!(
            note.starts_with("software event; the reader's copy ran 0.3 ms of the 1010.0 ms"),
            "{note}"
        );
        // Half the thread's time is enough, and a thread that hardly ran says nothing.
        assert!(ran_with_its_thread(500 * ms, 1_000 * ms));
        assert!(!ran_with_its_thread(499 * ms, 1_000 * ms));
        assert!(ran_with_its_thread(0, 9 * ms));
        // Without the thread's time, no judgement.
        let mut alone = readers;
        alone[0].thread_ns = None;
        assert!(rows_of(&alone).iter().all(|r| r.thread_ns.is_none()));
        assert_eq!(rows_of(&alone)[0].note, None);
    }

    fn rows_of(readers: &[ReaderResult]) -> Vec<CheckRow> {
        rows(readers, |_, _, _| 1000)
    }

    #[test]
    fn time_per_call_takes_the_median_batch_and_stops_on_errors() {
        let mut calls = 0u32;
        let ns = time_per_call(100, || {
            calls += 1;
            Ok(u64::from(calls))
        })
        .unwrap();
        assert_eq!(calls, 100 * LATENCY_BATCHES as u32);
        assert!(ns >= 0.0 && ns.is_finite());
        let mut calls = 0;
        let failed = time_per_call(100, || {
            calls += 1;
            if calls == 50 {
                Err(Error::Runtime(std::io::Error::other("gone")))
            } else {
                Ok(0)
            }
        });
        assert_eq!(failed, None);
        assert_eq!(calls, 50);
    }

    #[test]
    fn relative_differences() {
        assert_eq!(rel_diff(0, 0), 0.0);
        assert_eq!(rel_diff(5, 0), 1.0);
        assert!((rel_diff(95, 100) - 0.05).abs() < 1e-12);
    }

    #[test]
    fn user_access_bits_come_from_the_pmu_formats() {
        let juno = crate::discover::pmu::tests::load("juno");
        // long = config1:0, rdpmc = config1:1
        assert_eq!(
            user_access_bits(&juno, Some("armv8_cortex_a53")),
            UserBits {
                rdpmc: 0b10,
                long: 0b01
            }
        );
        let adl = crate::discover::pmu::tests::load("adl");
        assert_eq!(
            user_access_bits(&adl, Some("cpu_core")),
            UserBits::default()
        );
        assert_eq!(user_access_bits(&adl, None), UserBits::default());
    }
}
