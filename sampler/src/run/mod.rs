//! Run: the sampling loop `stat`, `top`, `check` and `serve` share. [`Sampling`]
//! discovers the PMUs, plans the events, checks the arguments and privileges, loads
//! the BPF object, opens, attaches and enables every CPU's events, and keeps them
//! while it lives; [`Refresh`] turns successive readings into per-interval
//! snapshots; [`wait`] sleeps until the next one or a signal.
//!
//! Uses every step below it: `discover`, `events`, `kernel`, `model`, `sys`. Takes
//! plain [`Options`], not command-line types: `cli` builds them.

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use sampler_common::MAX_MEMBERS;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    discover::{self, cpus::CpuList, cpus::CpuListError, pmu::PmuSet},
    events::{
        plan::{self, KernelVersion, Plan, PlanError, Rate},
        syntax::{self, EventKind, EventList, ParseError},
    },
    kernel::{
        self,
        bpf::{self, Bpf, KERNEL_BTF, Locations},
        session::{self, Session},
    },
    model::{
        functions,
        snapshot::{self, RunInfo, Snapshot, delta, delta_counts},
    },
    symbolize::Symbols,
    sys::{self, RealSys},
};

/// The event sampled when no `-e` is given: hardware cycles, or cpu-clock where the
/// CPU's PMU has none.
pub const DEFAULT_EVENT: &str = "cycles";
/// The kernel's ceiling on sampling frequency.
const MAX_SAMPLE_RATE: &str = "/proc/sys/kernel/perf_event_max_sample_rate";
/// The online CPU list, under the sysfs root.
const ONLINE_CPUS: &str = "devices/system/cpu/online";

/// What to sample and how: the options `stat`, `top`, `check` and `serve` share.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events in perf's syntax (`-e`); `None` for [`DEFAULT_EVENT`].
    pub event: Option<String>,
    /// Samples per second on each CPU (unless `period` is set).
    pub frequency: u64,
    /// One sample every N events instead.
    pub period: Option<u64>,
    /// `--cpu` as typed; `None` for every online CPU.
    pub cpu: Option<String>,
    /// `--kernel` as typed: plan for that release instead of the running one.
    pub kernel: Option<String>,
    /// Keep the kernel's BPF run-time statistics on while sampling.
    pub bpf_stats: bool,
    /// The task map's capacity (`--map-entries`).
    pub map_entries: Option<u32>,
    /// Where sysfs is.
    pub sysfs_root: PathBuf,
    /// What to record of the samples' locations from the start ...
    pub locations: Locations,
    /// ... and the most that may be turned on later (the live view's function key).
    pub max_locations: Locations,
    /// Name inlined functions (from DWARF) instead of the functions they are in.
    pub inlined: bool,
    /// Attach the benchmarks' floor program instead of sampler's ([`Bpf::use_floor`]).
    pub bench_floor: bool,
    /// Take these `SKIP_*` pieces out of sampler's program ([`Bpf::load_skipping`]).
    pub bench_skip: u32,
}

impl Options {
    /// The `-e` text as given, or the default event list.
    pub fn events(&self) -> String {
        self.event
            .clone()
            .unwrap_or_else(|| DEFAULT_EVENT.to_owned())
    }
}

/// What starting or running a sampling run can fail on: the arguments, the
/// privileges, and the steps below (their messages unchanged).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid --cpu list `{input}`: {source}")]
    CpuListArg {
        input: String,
        #[source]
        source: CpuListError,
    },

    #[error("CPU {cpu} is not online (online CPUs: {online}); pick CPUs from that list")]
    CpuNotOnline { cpu: u32, online: CpuList },

    #[error("--frequency must be at least 1 Hz (got {0}); perf's default is 4000, sampler's 999")]
    FrequencyZero(u64),

    #[error(
        "--frequency {hz} Hz is above the kernel's limit kernel.perf_event_max_sample_rate = \
         {max}; use --frequency {max} or less, or raise the limit with \
         `sysctl -w kernel.perf_event_max_sample_rate={hz}`"
    )]
    FrequencyTooHigh { hz: u64, max: u64 },

    #[error(
        "--frequency {hz} Hz is beyond what any kernel takes (at most 2147483647); the \
         limit here is kernel.perf_event_max_sample_rate = {max}: use --frequency {max} or less"
    )]
    FrequencyAbsurd { hz: u64, max: u64 },

    #[error("--period must be at least 1 event per sample")]
    PeriodZero,

    #[error("--kernel `{0}` is not a kernel release such as 6.1 or 6.12.3")]
    BadKernel(String),

    #[error(
        "sampler needs {missing} to load BPF programs and open system-wide perf events: \
         run it as root (`sudo sampler ...`) or grant {missing} \
         (e.g. `setcap cap_bpf,cap_perfmon+ep sampler`)",
        missing = missing.join(" and ")
    )]
    Privileges { missing: Vec<&'static str> },

    #[error("invalid -e/--event: {0}")]
    Event(#[from] ParseError),

    #[error(transparent)]
    Plan(#[from] PlanError),

    #[error(transparent)]
    Discover(#[from] discover::Error),

    #[error(transparent)]
    Kernel(#[from] kernel::Error),

    #[error("{0}")]
    Runtime(#[from] io::Error),
}

/// How often a run with locations symbolizes the addresses seen since the last time.
pub const SYMBOLIZE_EVERY: Duration = Duration::from_millis(250);

/// Loaded programs and enabled events: sampling is under way while this lives.
pub struct Sampling {
    // Field order is drop order: close the events before unloading the program.
    pub session: Session<'static>,
    pub bpf: Bpf,
    pub info: RunInfo,
    /// `kernel.perf_event_max_sample_rate` when sampling started.
    max_rate_at_start: Option<u64>,
    /// That sysctl and the online CPU list, kept open: both are read at each refresh.
    max_rate_file: Option<sys::KeptFile>,
    online_file: Option<sys::KeptFile>,
    /// The online CPUs as the file last listed them, while the thread's active
    /// affinity (see [`sys::active_affinity`]) said the same: then a refresh that
    /// finds the affinity unchanged skips the file.
    online_seen: Option<Vec<u32>>,
    /// The plan opened, and the PMUs it was made from.
    pub plan: Vec<plan::PlannedEvent>,
    pub pmus: PmuSet,
    /// Keeps the kernel's BPF run-time statistics on (`--bpf-stats`).
    _stats: Option<std::os::fd::OwnedFd>,
    /// Names of the addresses the samples landed on, cached over the run.
    pub symbols: Symbols,
    /// Whether readings carry the programs' run statistics: only when the command
    /// asked for them (`--bpf-stats`, or `serve`'s default), not whenever they
    /// happen to be on host-wide (`kernel.bpf_stats_enabled=1`, e.g. while bpftop
    /// runs), so that output does not depend on another tool.
    pub report_bpf_cost: bool,
}

static REAL_SYS: RealSys = RealSys;

impl Sampling {
    pub fn start(args: &Options) -> Result<Self, Error> {
        let pmus = PmuSet::discover(&args.sysfs_root)?;
        let cpus = select_cpus(args.cpu.as_deref(), &pmus.online)?;
        let rate = match args.period {
            Some(0) => return Err(Error::PeriodZero),
            Some(n) => Rate::Period(n),
            None => Rate::Frequency(check_frequency(args.frequency, Path::new(MAX_SAMPLE_RATE))?),
        };
        let kernel = kernel_version(args.kernel.as_deref())?;
        let sp = sampling_plan(args.event.as_deref(), &pmus, &cpus, kernel)?;
        let possible = aya::util::nr_cpus().map_or(cpus.len(), |n| n) as u32;
        let entries = bpf::task_entries(args.map_entries, possible)?;
        check_privileges()?;
        for note in &sp.plan.notes {
            eprintln!("sampler: {note}");
        }
        // With the cpu-clock fall-back, the session's own notice says it better.
        if sp.plan.no_core_pmu && !sp.cpu_clock_fallback {
            eprintln!("sampler: {}", plan::NO_CORE_PMU);
        }
        if sp.members.len() > MAX_MEMBERS {
            eprintln!(
                "sampler: the sampling group has {} counting members; the first {MAX_MEMBERS} \
                 are attributed per task, the others are counted per CPU only",
                sp.members.len()
            );
        }
        let bpf = Bpf::load_skipping(
            Path::new(KERNEL_BTF),
            entries,
            sp.members.len() as u32,
            args.max_locations.max(args.locations),
            args.bench_skip,
        )?;
        let stats = if args.bpf_stats {
            Some(bpf::enable_run_stats()?)
        } else {
            None
        };
        for notice in &bpf.notices {
            eprintln!("{notice}");
        }
        // Before the events are opened: the kernel may throttle at the first samples,
        // as soon as they are enabled (the interrupts' running average of time is
        // per CPU and outlives earlier runs), and read after that, it would seem to
        // have been the rate all along.
        let max_rate_file = sys::KeptFile::open(Path::new(MAX_SAMPLE_RATE)).ok();
        let max_rate_at_start = max_rate_file
            .as_ref()
            .and_then(|f| f.read_u64(Path::new(MAX_SAMPLE_RATE)).ok());
        let mut session = Session::open(&REAL_SYS, &sp.plan.plan, rate, sp.cpu_clock_fallback)?;
        for notice in session.notices() {
            eprintln!("{notice}");
        }
        let mut bpf = bpf;
        bpf.set_locations(args.locations)?;
        if args.bench_floor {
            // The floor alone: no switch program either, so the run's BPF cost is
            // the floor's.
            eprintln!(
                "sampler: --bench-floor: the benchmarks' floor program runs instead of \
                 sampler's; no task is attributed"
            );
            bpf.use_floor()?;
            bpf.with_fds(|prog, maps| session.attach(prog, maps))?;
        } else {
            bpf.with_fds(|prog, maps| session.attach(prog, maps))?;
            bpf.attach_switch()?;
        }
        session.enable()?;
        let info = RunInfo::of(
            session.leaders(),
            rate,
            sp.members.into_iter().take(MAX_MEMBERS).collect(),
        );
        Ok(Self {
            session,
            bpf,
            info,
            max_rate_at_start,
            max_rate_file,
            online_file: sys::KeptFile::open(&pmus.root.join(ONLINE_CPUS)).ok(),
            online_seen: None,
            plan: sp.plan.plan,
            pmus,
            _stats: stats,
            report_bpf_cost: args.bpf_stats,
            symbols: Symbols::new(args.inlined),
        })
    }

    /// What the program records of the samples' locations from now on.
    pub fn set_locations(&mut self, want: Locations) -> Result<(), Error> {
        Ok(self.bpf.set_locations(want)?)
    }

    /// Reads the maps, with what each CPU's counters gained since the program last
    /// read them added to the task running there (see [`Bpf::read_with`]), then
    /// every group's counts: a CPU's sampling group as read for the maps where they
    /// took it (so the two agree, and it is not read twice), else read now, after
    /// the maps (a sample between the two readings is then in the counts, not in a
    /// row only).
    pub fn read(&self) -> Result<(bpf::MapContents, Vec<session::EventCount>), Error> {
        let mut reads = Vec::new();
        let (mut maps, live) = self.bpf.read_with(|cpu| {
            let read = self.session.sampling_read(cpu)?;
            let values = session::values_by_position(&read);
            reads.push(read);
            Some(values)
        })?;
        if self.report_bpf_cost {
            (maps.bpf, maps.switch_bpf) = (self.bpf.run_stats(), self.bpf.switch_run_stats());
        }
        let counts = self
            .session
            .read_counts_reusing(&reads_the_maps_took(reads, &live))?;
        Ok((maps, counts))
    }

    /// Symbolizes the addresses of `maps` not seen before (while their processes
    /// still run).
    pub fn resolve(&mut self, maps: &bpf::MapContents) -> Result<(), Error> {
        if !maps.locations.is_empty() {
            self.symbols.resolve(&maps.locations, &self.bpf)?;
        }
        Ok(())
    }

    /// Reads the location map alone and symbolizes what is new: called between
    /// refreshes, so that a process that exits before the next one is still named.
    pub fn poll_symbols(&mut self) -> Result<(), Error> {
        if self.bpf.locations() == Locations::Off {
            return Ok(());
        }
        let (locations, _) = self.bpf.read_locations()?;
        self.symbols.resolve(&locations, &self.bpf)?;
        Ok(())
    }

    /// Adds where the samples of `maps` (an interval's, or a whole run's) landed to
    /// `snapshot`: the symbolized sites, the function and stack rows and what was lost.
    pub fn locate(&self, snapshot: &mut Snapshot, maps: &bpf::MapContents) {
        if self.bpf.locations() == Locations::Off && maps.locations.is_empty() {
            return;
        }
        let stacks = self.bpf.locations() == Locations::Stacks;
        snapshot.sites = functions::sites(&maps.locations, &self.info, |k| self.symbols.located(k));
        let mut stats = functions::location_stats(
            &maps.loc_stats,
            &self.info,
            stacks,
            maps.location_evictions(),
        );
        stats.short_user_stacks = functions::short_user_stacks(&snapshot.sites);
        stats.unnamed = self.symbols.stats;
        snapshot.warnings.extend(self.symbols.notes());
        snapshot
            .warnings
            .extend(functions::short_stack_warning(&stats, &snapshot.sites));
        let lost = stats.stack_collisions + stats.stack_full;
        if stacks && lost * 10 > snapshot.samples {
            snapshot.warnings.push(format!(
                "{lost} of {} samples lost their stack (stack map of {} stacks: {} hash \
                 collisions, {} full); their functions are counted, their callers are not",
                snapshot.samples,
                bpf::STACK_ENTRIES,
                stats.stack_collisions,
                stats.stack_full
            ));
        }
        snapshot.functions = Some(functions::functions(snapshot, None));
        snapshot.stacks = stacks.then(|| functions::stacks(snapshot, None));
        snapshot.locations = Some(stats);
    }

    /// Samples for `duration` or until a signal, in steps of at most a second
    /// (following CPU hotplug in between) or, with locations, of
    /// [`SYMBOLIZE_EVERY`] (naming new addresses while their processes still run);
    /// then stops the events and returns the whole run's snapshot.
    pub async fn run_for(&mut self, duration: Duration) -> Result<Snapshot, Error> {
        let started = Instant::now();
        let step = if self.bpf.locations() == Locations::Off {
            Duration::from_secs(1)
        } else {
            SYMBOLIZE_EVERY
        };
        let mut warnings = Vec::new();
        let sleeper = Sleeper::new();
        while let Some(left) = duration
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
        {
            if sleeper.wait(Some(left.min(step))).await? == Stop::Signal {
                break;
            }
            warnings.extend(self.follow_hotplug());
            self.poll_symbols()?;
        }
        self.session.disable()?;
        let elapsed = started.elapsed().as_secs_f64();
        let (maps, counts) = self.read()?;
        self.resolve(&maps)?;
        let mut snapshot = Snapshot::build(&maps, &counts, &self.info, elapsed);
        self.locate(&mut snapshot, &maps);
        snapshot.warnings.extend(self.throttled());
        snapshot.warnings.extend(warnings);
        Ok(snapshot)
    }

    /// Follows CPU hotplug (see [`Session::follow_online`]); each change is also
    /// printed to standard error.
    pub fn follow_hotplug(&mut self) -> Vec<String> {
        // On the real sysfs, a thread allowed on every CPU sees a CPU go offline or
        // come online in its active affinity, a system call that is a fraction of
        // the file's read (a tenth of a refresh): while it is what the file last
        // said, nothing changed. A CPU leaves the active set before it goes offline
        // and joins it after it comes online, so the file is read until it agrees;
        // and while a CPU that came back waits for its events to reopen.
        let active = (self.pmus.root == Path::new("/sys")
            && self.session.offline_cpus().is_empty())
        .then(sys::active_affinity)
        .and_then(Result::ok);
        if active.is_some() && active == self.online_seen {
            return Vec::new();
        }
        let online = match &self.online_file {
            Some(file) => file.read().ok().and_then(|text| CpuList::parse(&text).ok()),
            None => CpuList::read(&self.pmus.root.join(ONLINE_CPUS)).ok(),
        };
        let Some(online) = online else {
            return Vec::new();
        };
        self.online_seen = active.filter(|a| a == online.as_slice());
        let notes = self.session.follow_online(&online);
        for n in &notes {
            eprintln!("{n}");
        }
        notes
    }

    /// Whether the kernel throttled sampling since the start (it lowers the maximum
    /// sample rate when sampling interrupts take too long).
    pub fn throttled(&self) -> Option<String> {
        let now = match &self.max_rate_file {
            Some(file) => file.read_u64(Path::new(MAX_SAMPLE_RATE)),
            None => sys::read_sysctl_u64(Path::new(MAX_SAMPLE_RATE)),
        }
        .ok();
        snapshot::throttle_warning(
            self.max_rate_at_start,
            now,
            self.info.rate.frequency().unwrap_or(0),
        )
    }
}

/// Of the sampling groups' reads made for the maps (in order), the last of each CPU
/// whose counts the maps took (`live`, per CPU): the others may be older than what
/// the maps hold.
fn reads_the_maps_took(
    reads: Vec<Vec<session::EventCount>>,
    live: &[bool],
) -> Vec<Vec<session::EventCount>> {
    let mut taken: Vec<Vec<session::EventCount>> = Vec::new();
    for read in reads {
        let Some(cpu) = read.first().map(|c| c.cpu) else {
            continue;
        };
        if live.get(cpu as usize).copied().unwrap_or(false) {
            taken.retain(|r| r[0].cpu != cpu);
            taken.push(read);
        }
    }
    taken
}

/// The per-interval deltas of a running sampler: each call reads the maps and the
/// counters and returns what changed since the previous one.
pub struct Refresh {
    prev: bpf::MapContents,
    prev_counts: Vec<session::EventCount>,
    last: Instant,
    /// When [`Sampling::throttled`] was last asked, and its answer.
    throttle: Option<(Instant, Option<String>)>,
}

/// How often a refresh asks again whether the kernel throttled sampling: a sysctl
/// read, which a refresh each second need not make each time (the kernel lowers the
/// rate; a warning then shows from the next check on).
const THROTTLE_CHECK_EVERY: Duration = Duration::from_secs(5);

impl Refresh {
    pub fn new(sampling: &Sampling) -> Result<Self, Error> {
        let (prev, prev_counts) = sampling.read()?;
        Ok(Self {
            prev,
            prev_counts,
            last: Instant::now(),
            throttle: None,
        })
    }

    pub fn next(&mut self, sampling: &mut Sampling) -> Result<Snapshot, Error> {
        let hotplug = sampling.follow_hotplug();
        let (cur, cur_counts) = sampling.read()?;
        sampling.resolve(&cur)?;
        let now = Instant::now();
        let interval = delta(&self.prev, &cur);
        let mut snapshot = Snapshot::build(
            &interval,
            &delta_counts(&self.prev_counts, &cur_counts),
            &sampling.info,
            (now - self.last).as_secs_f64(),
        );
        sampling.locate(&mut snapshot, &interval);
        sampling.symbols.retain_processes(&cur.locations);
        if self
            .throttle
            .as_ref()
            .is_none_or(|(at, _)| now.duration_since(*at) >= THROTTLE_CHECK_EVERY)
        {
            self.throttle = Some((now, sampling.throttled()));
        }
        snapshot
            .warnings
            .extend(self.throttle.as_ref().and_then(|(_, w)| w.clone()));
        snapshot.warnings.extend(hotplug);
        (self.prev, self.prev_counts, self.last) = (cur, cur_counts, now);
        Ok(snapshot)
    }
}

/// What a sampling run opens: the plan (group 0 samples, the others count), whether
/// CPUs without the sampling event may sample cpu-clock instead (perf's rule: only
/// for `cycles`), and the names of the sampling group's counting members.
#[derive(Debug)]
pub struct SamplingPlan {
    pub plan: Plan,
    pub cpu_clock_fallback: bool,
    pub members: Vec<String>,
}

pub fn sampling_plan(
    event_arg: Option<&str>,
    pmus: &PmuSet,
    cpus: &CpuList,
    kernel: Option<KernelVersion>,
) -> Result<SamplingPlan, Error> {
    let list: EventList = syntax::parse(event_arg.unwrap_or(DEFAULT_EVENT))?;
    let sampling = &list.groups[0].events;
    let cpu_clock_fallback = sampling[0].kind == EventKind::Hardware(0);
    let members = sampling[1..].iter().map(|e| e.display()).collect();
    let plan = plan::plan(&list, pmus, cpus, kernel)?;
    Ok(SamplingPlan {
        plan,
        cpu_clock_fallback,
        members,
    })
}

/// The CPUs of `--cpu`, which must all be online, or every online CPU.
pub fn select_cpus(arg: Option<&str>, online: &CpuList) -> Result<CpuList, Error> {
    let Some(arg) = arg else {
        return Ok(online.clone());
    };
    let wanted = CpuList::parse(arg).map_err(|source| Error::CpuListArg {
        input: arg.to_owned(),
        source,
    })?;
    if let Some(cpu) = wanted.iter().find(|&c| !online.contains(c)) {
        return Err(Error::CpuNotOnline {
            cpu,
            online: online.clone(),
        });
    }
    Ok(wanted)
}

/// Checks `--frequency` against 0 and the kernel's `perf_event_max_sample_rate` (when
/// readable).
pub fn check_frequency(hz: u64, max_rate_path: &Path) -> Result<u64, Error> {
    if hz == 0 {
        return Err(Error::FrequencyZero(hz));
    }
    if let Ok(max) = sys::read_sysctl_u64(max_rate_path)
        && hz > max
    {
        // The sysctl is an int: suggesting it be raised past that would be absurd.
        if hz > i32::MAX as u64 {
            return Err(Error::FrequencyAbsurd { hz, max });
        }
        return Err(Error::FrequencyTooHigh { hz, max });
    }
    Ok(hz)
}

/// `--kernel RELEASE`, or the running kernel's release.
pub fn kernel_version(arg: Option<&str>) -> Result<Option<KernelVersion>, Error> {
    match arg {
        Some(k) => KernelVersion::parse(k)
            .map(Some)
            .ok_or_else(|| Error::BadKernel(k.to_owned())),
        None => Ok(KernelVersion::running()),
    }
}

fn check_privileges() -> Result<(), Error> {
    // If the status file cannot be read, let the system calls themselves report.
    let Ok(caps) = sys::effective_capabilities() else {
        return Ok(());
    };
    let missing = sys::missing_capabilities(caps);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Privileges { missing })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    Elapsed,
    Signal,
}

/// The stop signals' streams. Installed once, before any set-up
/// ([`install_stop_signals`]): a signal that comes while the programs load and the
/// events open is kept for the first wait, not lost (a stream only sees the signals
/// that come after it exists), and the run stops as cleanly as any other.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

static STOP_SIGNALS: tokio::sync::Mutex<Option<StopSignals>> = tokio::sync::Mutex::const_new(None);

/// Starts listening for SIGINT, SIGTERM and SIGHUP (within the runtime).
pub async fn install_stop_signals() -> Result<(), Error> {
    let mut slot = STOP_SIGNALS.lock().await;
    if slot.is_none() {
        *slot = Some(StopSignals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        });
    }
    Ok(())
}

/// Resolves at the next stop signal (one that came since the last, if any).
pub async fn stop_signal() -> Result<(), Error> {
    install_stop_signals().await?;
    let mut slot = STOP_SIGNALS.lock().await;
    let s = slot.as_mut().expect("installed above");
    tokio::select! {
        _ = s.int.recv() => {}
        _ = s.term.recv() => {}
        _ = s.hup.recv() => {}
    }
    Ok(())
}

/// [`wait`] for a loop that waits again and again: on a timer descriptor kept in the
/// runtime's poll set (a [`sys::TimerFd`]), which wakes the process once per wait,
/// where tokio's sleep of a second wakes it twice. Falls back to [`wait`] where the
/// timer cannot be made or armed.
pub struct Sleeper {
    timer: Option<tokio::io::unix::AsyncFd<sys::TimerFd>>,
}

impl Default for Sleeper {
    fn default() -> Self {
        Self::new()
    }
}

impl Sleeper {
    /// The timer registers with the current tokio runtime; outside of one, there is
    /// none, and [`Sleeper::wait`] is [`wait`].
    pub fn new() -> Self {
        let timer = tokio::runtime::Handle::try_current()
            .ok()
            .and_then(|_| sys::TimerFd::new().and_then(sys::TimerFd::into_async).ok());
        Self { timer }
    }

    /// Waits for `duration` or until SIGINT, SIGTERM or SIGHUP.
    pub async fn wait(&self, duration: Option<Duration>) -> Result<Stop, Error> {
        let (Some(timer), Some(d)) = (&self.timer, duration) else {
            return wait(duration).await;
        };
        if timer.get_ref().arm(d).is_err() {
            return wait(duration).await;
        }
        stop_or(async {
            loop {
                let Ok(mut ready) = timer.readable().await else {
                    // The poll set refused the timer: sleep as tokio does.
                    return tokio::time::sleep(d).await;
                };
                // Not fired yet (a readiness left from an earlier arming): the
                // guard clears it, and the loop waits for the next.
                match ready.try_io(|t| t.get_ref().take()) {
                    Ok(Ok(())) => return,
                    Ok(Err(_)) => return tokio::time::sleep(d).await,
                    Err(_would_block) => {}
                }
            }
        })
        .await
    }
}

/// Waits for `duration` or until SIGINT, SIGTERM or SIGHUP.
pub async fn wait(duration: Option<Duration>) -> Result<Stop, Error> {
    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    stop_or(sleep).await
}

/// Waits for `elapsed` or until SIGINT, SIGTERM or SIGHUP.
async fn stop_or(elapsed: impl Future<Output = ()>) -> Result<Stop, Error> {
    tokio::select! {
        () = elapsed => Ok(Stop::Elapsed),
        r = stop_signal() => r.map(|()| Stop::Signal),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn tmpfile(name: &str, content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sampler-run-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn the_counts_take_the_last_read_of_each_cpu_whose_counts_the_maps_took() {
        let read = |cpu, value| {
            vec![session::EventCount {
                cpu,
                group: 0,
                index: 0,
                event: "cpu-clock".to_owned(),
                pmu: None,
                value,
                enabled: value,
                running: value,
            }]
        };
        let reads = || vec![read(0, 10), read(1, 20), read(1, 21), read(3, 40)];
        let values = |taken: Vec<Vec<session::EventCount>>| -> Vec<(u32, u64)> {
            taken.iter().map(|r| (r[0].cpu, r[0].value)).collect()
        };
        // CPU 1 was read again (a later try of the settling): that read is the one.
        assert_eq!(
            values(reads_the_maps_took(reads(), &[true, true])),
            [(0, 10), (1, 21)]
        );
        // CPU 0's counts went to no task (it is read again, after the maps); CPU 3
        // is past what the maps report.
        assert_eq!(
            values(reads_the_maps_took(reads(), &[false, true, false])),
            [(1, 21)]
        );
        assert!(reads_the_maps_took(vec![Vec::new()], &[true]).is_empty());
    }

    #[test]
    fn a_sleeper_waits_each_time_it_is_asked() {
        assert!(
            Sleeper::new().timer.is_none(),
            "outside a runtime, no timer"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Sleeper::new();
            assert!(s.timer.is_some());
            for ms in [30, 10, 0, 30] {
                let t = Instant::now();
                assert_eq!(
                    s.wait(Some(Duration::from_millis(ms))).await.unwrap(),
                    Stop::Elapsed
                );
                let took = t.elapsed();
                assert!(took >= Duration::from_millis(ms), "{ms} ms: {took:?}");
                assert!(took < Duration::from_millis(ms + 500), "{ms} ms: {took:?}");
            }
            // A wait cut short (as by a signal) leaves its arming behind, which
            // fires unwatched: the next wait still takes its own time.
            let cut = tokio::time::timeout(
                Duration::from_millis(5),
                s.wait(Some(Duration::from_millis(200))),
            )
            .await;
            assert!(cut.is_err());
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t = Instant::now();
            s.wait(Some(Duration::from_millis(40))).await.unwrap();
            assert!(
                t.elapsed() >= Duration::from_millis(40),
                "{:?}",
                t.elapsed()
            );
        });
    }

    #[test]
    fn cpu_selection() {
        let online = CpuList::parse("0-1,3").unwrap();
        assert_eq!(select_cpus(None, &online).unwrap().to_string(), "0-1,3");
        assert_eq!(
            select_cpus(Some("1,3"), &online).unwrap().to_string(),
            "1,3"
        );
        let e = select_cpus(Some("2"), &online).unwrap_err();
        assert_eq!(
            e.to_string(),
            "CPU 2 is not online (online CPUs: 0-1,3); pick CPUs from that list"
        );
        let e = select_cpus(Some("x-1"), &online).unwrap_err();
        assert!(e.to_string().starts_with("invalid --cpu list `x-1`"), "{e}");
    }

    #[test]
    fn sampling_plan_defaults_to_cycles_with_fallback() {
        let pmus = discover::pmu::tests::load("vm");
        let sp = sampling_plan(None, &pmus, &pmus.online, None).unwrap();
        assert!(sp.cpu_clock_fallback);
        assert_eq!(sp.plan.plan.len(), 2);
        assert!(sp.plan.plan.iter().all(|p| p.event == "cycles"));
        assert!(sp.members.is_empty());
        let sp = sampling_plan(Some("page-faults"), &pmus, &pmus.online, None).unwrap();
        assert!(!sp.cpu_clock_fallback);
        let sp = sampling_plan(
            Some("{cycles,instructions:u,cache-misses},page-faults"),
            &pmus,
            &pmus.online,
            None,
        )
        .unwrap();
        assert!(sp.cpu_clock_fallback);
        assert_eq!(sp.members, ["instructions:u", "cache-misses"]);
        assert_eq!(sp.plan.plan.len(), 8);
        let e = sampling_plan(Some("{cycles"), &pmus, &pmus.online, None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid -e/--event: `{` has no matching `}`"),
            "{e}"
        );
    }

    #[test]
    fn frequency_checks() {
        let max = tmpfile("max_rate", "100000\n");
        assert_eq!(check_frequency(999, &max).unwrap(), 999);
        assert_eq!(check_frequency(100_000, &max).unwrap(), 100_000);
        assert!(matches!(
            check_frequency(0, &max),
            Err(Error::FrequencyZero(0))
        ));
        assert!(matches!(
            check_frequency(100_001, &max),
            Err(Error::FrequencyTooHigh {
                hz: 100_001,
                max: 100_000
            })
        ));
        // Unknown limit: left to the kernel.
        assert!(check_frequency(5_000_000, Path::new("/nonexistent")).is_ok());
    }

    #[test]
    fn messages_name_the_problem_and_the_fix() {
        let e = Error::FrequencyTooHigh {
            hz: 1_000_000,
            max: 100_000,
        };
        let s = e.to_string();
        assert!(s.contains("1000000 Hz"), "{s}");
        assert!(s.contains("perf_event_max_sample_rate = 100000"), "{s}");
        assert!(s.contains("sysctl -w"), "{s}");

        let e = Error::Privileges {
            missing: vec!["CAP_BPF", "CAP_PERFMON"],
        };
        let s = e.to_string();
        assert!(s.contains("CAP_BPF and CAP_PERFMON"), "{s}");
        assert!(s.contains("sudo"), "{s}");
        assert!(!s.contains('\n'));

        let e = Error::CpuNotOnline {
            cpu: 7,
            online: CpuList::from_cpus(vec![0, 1]),
        };
        assert_eq!(
            e.to_string(),
            "CPU 7 is not online (online CPUs: 0-1); pick CPUs from that list"
        );
    }
}
