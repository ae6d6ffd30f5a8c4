//! The command line: argument definitions and the commands that drive the data flow
//! (validate -> load BPF -> open and attach -> sample -> read maps -> present).

use std::{
    io::{self, IsTerminal, Write},
    path::Path,
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand};
use sampler_common::MAX_MEMBERS;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    Error,
    bpf::{self, Bpf, KERNEL_BTF},
    cgroup::CgroupNames,
    check,
    cpus::CpuList,
    event::{self, EventKind, EventList},
    model::{self, CpuRun, RunInfo, Snapshot, delta, delta_counts},
    plan::{self, KernelVersion, Plan, Rate},
    pmu::PmuSet,
    present,
    session::{self, Session},
    sys::{self, RealSys},
    tui,
};

/// The event sampled when no `-e` is given: hardware cycles, or cpu-clock where the
/// CPU's PMU has none.
const DEFAULT_EVENT: &str = "cycles";
/// The kernel's ceiling on sampling frequency.
const MAX_SAMPLE_RATE: &str = "/proc/sys/kernel/perf_event_max_sample_rate";
/// The longest accepted `--duration`/`--interval`: one year.
const MAX_SECONDS: u64 = 365 * 24 * 3600;

#[derive(Debug, Parser)]
#[command(
    name = "sampler",
    version,
    about = "System-wide PMU sampler: per-task hardware counter attribution, aggregated in the kernel with eBPF",
    override_usage = "sudo sampler <COMMAND> [OPTIONS]",
    after_help = "Needs root, or CAP_BPF and CAP_PERFMON. Without a hardware PMU (most VMs) \
                  it samples the software event cpu-clock and says so."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sample all (or the selected) CPUs for a while, then print the busiest tasks.
    Stat(StatArgs),
    /// Print the busiest tasks of each interval until interrupted (Ctrl-C).
    Top(TopArgs),
    /// Show which PMU and attr each event would use on each CPU (no perf calls).
    Plan(PlanArgs),
    /// List the PMUs, the CPUs each covers, and whether the system is heterogeneous.
    Pmus(PmusArgs),
    /// List the events each PMU offers (all PMUs, or one).
    List(ListArgs),
    /// Cross-check the counts three ways: BPF maps, read() and the mmapped user page.
    Check(CheckArgs),
    /// Export per-container counters for Prometheus (OpenMetrics) over HTTP.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Address and port to serve /metrics and /healthz on. Loopback by default: a
    /// wider address (e.g. 0.0.0.0:9464 in a pod) only when given.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub listen: String,
    /// Seconds between map reads (the metrics' resolution; scrapes in between get
    /// the latest).
    #[arg(short, long, value_name = "SECS", default_value = "5")]
    pub interval: String,
    /// Containers exported as their own series (by recent activity); the rest are
    /// summed into container="other".
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Seconds without samples after which a container's series are dropped.
    #[arg(long, value_name = "SECS", default_value = "300")]
    pub grace: String,
    /// The cgroup v2 hierarchy to name cgroup ids from [default: the v2 mount in
    /// /proc/self/mountinfo]. In a container, mount the host's and point here.
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Keep the kernel's BPF statistics off (they cost two clock reads per sample; on
    /// by default to export the program's cost; needs CAP_SYS_ADMIN, or
    /// kernel.bpf_stats_enabled=1 set on the host).
    #[arg(long)]
    pub no_bpf_stats: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// How long the readers run, in seconds.
    #[arg(short, long, value_name = "SECS", default_value = "1")]
    pub duration: String,
    /// Largest accepted relative difference, in percent.
    #[arg(long, value_name = "PCT", default_value = "1")]
    pub tolerance: String,
    /// Also time one read of each counter by each method (user page, `read()`):
    /// the median over batches of N reads per CPU and event.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "100000")]
    pub latency: Option<u32>,
    /// One JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SysfsArgs {
    /// Where sysfs is: a recorded tree can stand in for this machine's.
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs_root: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Events in perf's syntax. The first group samples: `{cycles,instructions}`
    /// samples cycles and attributes instructions per task; further events are
    /// counted per CPU [default: cycles, or cpu-clock where there is no hardware PMU].
    #[arg(short, long, value_name = "EVENTS")]
    pub event: Option<String>,
    /// Samples per second on each CPU.
    #[arg(short = 'F', long, value_name = "HZ", default_value_t = 999)]
    pub frequency: u64,
    /// Sample every N occurrences of the sampling event instead (perf's -c; N
    /// nanoseconds for cpu-clock).
    #[arg(short = 'c', long, value_name = "N", conflicts_with = "frequency")]
    pub period: Option<u64>,
    /// CPUs to sample, e.g. `0-3,6` [default: all online CPUs].
    #[arg(short = 'C', long, value_name = "LIST")]
    pub cpu: Option<String>,
    /// Plan for this kernel release instead of the running one (e.g. `6.12`): decides
    /// the first encoding tried; opening still falls back along the chain.
    #[arg(long, value_name = "RELEASE")]
    pub kernel: Option<String>,
    /// Turn on the kernel's BPF run-time statistics while sampling and report the
    /// BPF program's cost per sample (adds two clock reads to every sample).
    #[arg(long)]
    pub bpf_stats: bool,
    /// Capacity of the kernel's per-task map [default: 4096 per possible CPU, at least
    /// 16384]. When it is full the least recently sampled tasks are evicted (counted
    /// as `evicted`; their samples stay in the per-CPU totals).
    #[arg(long, value_name = "N")]
    pub map_entries: Option<u32>,
    #[command(flatten)]
    pub sysfs: SysfsArgs,
}

impl SamplingArgs {
    /// The `-e` text as given, or the default event list.
    fn events(&self) -> String {
        self.event
            .clone()
            .unwrap_or_else(|| DEFAULT_EVENT.to_owned())
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Events in perf's syntax: names, `pmu/terms/`, `rNNNN`, `:u`/`:k`/`:h`,
    /// groups `{a,b}`, comma-separated.
    #[arg(short, long, value_name = "EVENTS")]
    pub event: String,
    /// CPUs to plan for [default: all online CPUs].
    #[arg(short = 'C', long, value_name = "LIST")]
    pub cpu: Option<String>,
    /// Plan for this kernel release instead of the running one (e.g. `6.1`): it
    /// decides whether the extended hardware type is used.
    #[arg(long, value_name = "RELEASE")]
    pub kernel: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sysfs: SysfsArgs,
}

#[derive(Debug, Args)]
pub struct PmusArgs {
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sysfs: SysfsArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this PMU's events.
    pub pmu: Option<String>,
    #[command(flatten)]
    pub sysfs: SysfsArgs,
}

#[derive(Debug, Args)]
pub struct StatArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// How long to sample, in seconds (fractions allowed); Ctrl-C stops early.
    #[arg(short, long, value_name = "SECS", default_value = "5")]
    pub duration: String,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Show only the N busiest tasks [default: 20 in the table, all in JSON].
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Refresh interval in seconds.
    #[arg(short, long, value_name = "SECS", default_value = "1")]
    pub interval: String,
    /// Stop after N refreshes [default: run until interrupted].
    #[arg(short = 'n', long, value_name = "N")]
    pub iterations: Option<u64>,
    /// Plain text snapshots instead of the full-screen view (like `top -b`); the
    /// default without a terminal.
    #[arg(short, long)]
    pub batch: bool,
    /// One JSON document per refresh (JSON lines) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Show only the N busiest tasks.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Where the full-screen view writes its log (whatever would go to standard
    /// error while the screen is up) [default: ~/.local/state/sampler/top.log].
    #[arg(long, value_name = "FILE")]
    pub log: Option<std::path::PathBuf>,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Stat(args) => stat(args).await,
        Command::Top(args) => top(args).await,
        Command::Plan(args) => plan_cmd(&args),
        Command::Pmus(args) => pmus_cmd(&args),
        Command::List(args) => list_cmd(&args),
        Command::Check(args) => check_cmd(args).await,
        Command::Serve(args) => serve_cmd(args).await,
    }
}

/// `sampler serve`: samples like `top`, and every interval folds what changed into
/// the exporter's counters; the HTTP server hands out the latest encoding.
async fn serve_cmd(args: ServeArgs) -> Result<(), Error> {
    let interval = parse_seconds("interval", &args.interval)?;
    let grace = parse_seconds("grace", &args.grace)?;
    if args.top == 0 {
        return Err(Error::TopZero);
    }
    let addr: std::net::SocketAddr = args
        .listen
        .parse()
        .map_err(|_| Error::BadListen(args.listen.clone()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen {
            addr: args.listen.clone(),
            source,
        })?;
    let mut sampling = Sampling::start(&args.sampling)?;
    // The program's cost: statistics on for this run (CAP_SYS_ADMIN), or already on
    // host-wide (kernel.bpf_stats_enabled=1).
    let _stats = if args.no_bpf_stats {
        None
    } else {
        match bpf::enable_run_stats() {
            Ok(fd) => Some(fd),
            Err(e) => {
                let on = sys::read_sysctl_u64(Path::new("/proc/sys/kernel/bpf_stats_enabled"))
                    .is_ok_and(|v| v == 1);
                if !on {
                    eprintln!(
                        "sampler: serve: BPF run-time statistics are off ({e}); \
                         sampler_bpf_run_time_seconds_total is not exported. Grant \
                         CAP_SYS_ADMIN or set kernel.bpf_stats_enabled=1 to export it."
                    );
                }
                None
            }
        }
    };
    // Everything is open: the capabilities are not needed any more.
    match sys::drop_all_capabilities() {
        Ok(0) => eprintln!("sampler: serve: all capabilities dropped"),
        Ok(left) => eprintln!("sampler: serve: capabilities left after dropping: {left:#x}"),
        Err(e) => eprintln!("sampler: serve: cannot drop capabilities: {e}"),
    }
    let mut names = match &args.cgroup_root {
        Some(root) => CgroupNames::at(Some(root.clone())),
        None => CgroupNames::new(),
    };
    let events = args.sampling.events();
    let source = session::Source::of(sampling.info.cpus.iter().map(|c| (c.hardware, c.fell_back)));
    let mut sampled: Vec<&str> = sampling
        .info
        .cpus
        .iter()
        .map(|c| c.event.as_str())
        .collect();
    sampled.sort_unstable();
    sampled.dedup();
    let mut exporter = crate::export::Exporter::new(
        args.top,
        grace,
        vec![
            ("source".to_owned(), source.as_str().to_owned()),
            ("events".to_owned(), events),
            ("sampling".to_owned(), sampled.join(",")),
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ],
    );
    let bpf_start = sampling.bpf.run_stats();
    let mut refresh = Refresh::new(&sampling)?;
    let shared: crate::serve::Shared =
        std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(
            crate::serve::Exposition::new(exporter.openmetrics(), Ok(())),
        )));
    let server = tokio::spawn(crate::serve::run(
        listener,
        std::sync::Arc::clone(&shared),
        interval * 3 + Duration::from_secs(1),
    ));
    eprintln!(
        "sampler: serving http://{addr}/metrics (OpenMetrics or Prometheus text) and \
         /healthz; refreshing every {:.1} s",
        interval.as_secs_f64()
    );
    let result = loop {
        if wait(Some(interval)).await? == Stop::Signal {
            break Ok(());
        }
        let health = match refresh.next(&mut sampling) {
            Ok(snapshot) => {
                let bpf_total = sampling
                    .bpf
                    .run_stats()
                    .zip(bpf_start)
                    .map(|(now, start)| now.since(start))
                    .filter(|r| r.run_time_ns > 0)
                    .map(|r| (r.run_time_ns, r.run_count));
                exporter.update(
                    snapshot,
                    &mut |id| crate::container::identify(&names.name(id)),
                    bpf_total,
                    sys::process_stats(),
                    Instant::now(),
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("sampler: serve: refresh failed: {e}");
                Err(e.to_string())
            }
        };
        let x = crate::serve::Exposition::new(exporter.openmetrics(), health);
        match shared.write() {
            Ok(mut slot) => *slot = std::sync::Arc::new(x),
            Err(p) => *p.into_inner() = std::sync::Arc::new(x),
        }
    };
    server.abort();
    result
}

async fn check_cmd(args: CheckArgs) -> Result<(), Error> {
    let duration = parse_seconds("duration", &args.duration)?;
    let tolerance: f64 = args
        .tolerance
        .trim()
        .parse()
        .ok()
        .filter(|t: &f64| t.is_finite() && *t > 0.0)
        .ok_or_else(|| Error::BadTolerance(args.tolerance.clone()))?;
    let latency = match args.latency {
        Some(0) => return Err(Error::BadLatency),
        Some(n) => n,
        None => 0,
    };
    let mut sampling = Sampling::start(&args.sampling)?;
    // The readers' events: what each CPU really samples (cpu-clock where it fell
    // back) and the members it opened, up to those BPF attributes per task.
    let mut probes = Vec::new();
    for g in sampling.session.groups().iter().filter(|g| g.sampling()) {
        for e in g.events.iter().filter(|e| e.index <= MAX_MEMBERS) {
            let planned = if e.fallback_reason.is_some() {
                Some(plan::PlannedEvent::cpu_clock(g.cpu))
            } else {
                sampling
                    .plan
                    .iter()
                    .find(|p| p.group == 0 && p.cpu == g.cpu && p.index == e.index)
                    .cloned()
            };
            probes.extend(planned);
        }
    }
    let pmus = sampling.pmus.clone();
    let latency_plan = (latency > 0).then(|| (probes.clone(), pmus.clone()));
    let readers = tokio::task::spawn_blocking(move || check::run_readers(&probes, &pmus, duration))
        .await
        .map_err(|e| Error::Runtime(io::Error::other(e.to_string())))??;
    sampling.session.disable()?;
    let maps = sampling.bpf.read()?;
    let mut rows = check::rows(&readers, |tid, cpu, index| {
        maps.tasks
            .iter()
            .filter(|(k, _)| k.tid == tid && k.cpu == cpu)
            .map(|(_, v)| match index {
                0 => v.period_sum,
                i => v.counts[i - 1],
            })
            .sum()
    });
    if let Some((probes, pmus)) = latency_plan {
        rows = tokio::task::spawn_blocking(move || {
            check::add_latencies(&mut rows, &probes, &pmus, latency).map(|()| rows)
        })
        .await
        .map_err(|e| Error::Runtime(io::Error::other(e.to_string())))??;
    }
    let failed = rows
        .iter()
        .filter(|r| r.rel_diff * 100.0 > tolerance)
        .count();
    let notes: Vec<String> = check::user_access_note().into_iter().collect();
    let text = if args.json {
        let doc = serde_json::json!({
            "tolerance_pct": tolerance,
            "passed": failed == 0,
            "checks": rows,
            "notes": notes,
        });
        format!("{doc}\n")
    } else {
        present::check_table(&rows, tolerance, &notes)
    };
    emit(&text)?;
    if failed > 0 {
        return Err(Error::CheckFailed {
            failed,
            total: rows.len(),
            tolerance,
        });
    }
    Ok(())
}

fn plan_cmd(args: &PlanArgs) -> Result<(), Error> {
    let pmus = PmuSet::discover(&args.sysfs.sysfs_root)?;
    let cpus = select_cpus(args.cpu.as_deref(), &pmus.online)?;
    let kernel = kernel_version(args.kernel.as_deref())?;
    let plan = plan::plan(&event::parse(&args.event)?, &pmus, &cpus, kernel)?;
    let text = if args.json {
        format!("{}\n", serde_json::to_string(&plan).unwrap_or_default())
    } else {
        present::plan_table(&plan)
    };
    emit(&text).map(drop)
}

/// `--kernel RELEASE`, or the running kernel's release.
fn kernel_version(arg: Option<&str>) -> Result<Option<KernelVersion>, Error> {
    match arg {
        Some(k) => KernelVersion::parse(k)
            .map(Some)
            .ok_or_else(|| Error::BadKernel(k.to_owned())),
        None => Ok(KernelVersion::running()),
    }
}

fn pmus_cmd(args: &PmusArgs) -> Result<(), Error> {
    let pmus = PmuSet::discover(&args.sysfs.sysfs_root)?;
    let text = if args.json {
        format!("{}\n", present::pmus_json(&pmus))
    } else {
        present::pmus_table(&pmus)
    };
    emit(&text).map(drop)
}

fn list_cmd(args: &ListArgs) -> Result<(), Error> {
    let pmus = PmuSet::discover(&args.sysfs.sysfs_root)?;
    if let Some(name) = &args.pmu
        && pmus.get(name).is_none()
    {
        return Err(plan::PlanError::UnknownPmu {
            pmu: name.clone(),
            event: format!("sampler list {name}"),
            suggestions: plan::closest(name, pmus.pmus.iter().map(|p| p.name.as_str())),
        }
        .into());
    }
    emit(&present::event_list(&pmus, args.pmu.as_deref())).map(drop)
}

async fn stat(args: StatArgs) -> Result<(), Error> {
    let duration = parse_seconds("duration", &args.duration)?;
    let mut sampling = Sampling::start(&args.sampling)?;
    let started = Instant::now();
    // In steps of at most a second, following CPU hotplug in between.
    let mut warnings = Vec::new();
    while let Some(left) = duration
        .checked_sub(started.elapsed())
        .filter(|d| !d.is_zero())
    {
        if wait(Some(left.min(Duration::from_secs(1)))).await? == Stop::Signal {
            break;
        }
        warnings.extend(sampling.follow_hotplug());
    }
    sampling.session.disable()?;
    let elapsed = started.elapsed().as_secs_f64();
    let maps = sampling.bpf.read()?;
    let counts = sampling.session.read_counts()?;
    let mut snapshot = Snapshot::build(&maps, &counts, &sampling.info, elapsed);
    snapshot.warnings.extend(sampling.throttled());
    snapshot.warnings.extend(warnings);
    let text = if args.json {
        let mut s = present::json(&snapshot, args.top).to_string();
        s.push('\n');
        s
    } else {
        present::table(&snapshot, Some(args.top.unwrap_or(20)))
    };
    emit(&text).map(drop)
}

async fn top(args: TopArgs) -> Result<(), Error> {
    let interval = parse_seconds("interval", &args.interval)?;
    if !args.json && !args.batch && io::stdout().is_terminal() && io::stdin().is_terminal() {
        return top_screen(args, interval).await;
    }
    let mut sampling = Sampling::start(&args.sampling)?;
    let events = args.sampling.events();
    let mut app = tui::App::new(events, interval, args.top);
    let mut names = CgroupNames::new();
    let mut refresh = Refresh::new(&sampling)?;
    let mut done = 0u64;
    while args.iterations.is_none_or(|n| done < n) {
        if wait(Some(interval)).await? == Stop::Signal {
            break;
        }
        let started = Instant::now();
        let snapshot = refresh.next(&mut sampling)?;
        let text = if args.json {
            let mut doc = present::json(&snapshot, Some(args.top));
            doc["refresh_ms"] = serde_json::json!(started.elapsed().as_secs_f64() * 1e3);
            format!("{doc}\n")
        } else {
            app.update(snapshot);
            let cache = cgroup_cache(&mut names, app.snapshot.as_ref());
            let name_of = |id: u64| cache.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
            format!("{}\n", tui::batch_text(&app, &name_of))
        };
        if !emit(&text)? {
            break;
        }
        done += 1;
    }
    Ok(())
}

/// The per-interval deltas of a running sampler: each call reads the maps and the
/// counters and returns what changed since the previous one.
struct Refresh {
    prev: bpf::MapContents,
    prev_counts: Vec<session::EventCount>,
    last: Instant,
}

impl Refresh {
    fn new(sampling: &Sampling) -> Result<Self, Error> {
        Ok(Self {
            prev: sampling.bpf.read()?,
            prev_counts: sampling.session.read_counts()?,
            last: Instant::now(),
        })
    }

    fn next(&mut self, sampling: &mut Sampling) -> Result<Snapshot, Error> {
        let hotplug = sampling.follow_hotplug();
        let cur = sampling.bpf.read()?;
        let cur_counts = sampling.session.read_counts()?;
        let now = Instant::now();
        let mut snapshot = Snapshot::build(
            &delta(&self.prev, &cur),
            &delta_counts(&self.prev_counts, &cur_counts),
            &sampling.info,
            (now - self.last).as_secs_f64(),
        );
        snapshot.warnings.extend(sampling.throttled());
        snapshot.warnings.extend(hotplug);
        (self.prev, self.prev_counts, self.last) = (cur, cur_counts, now);
        Ok(snapshot)
    }
}

/// Names of the cgroups in `s`, resolved once per refresh.
fn cgroup_cache(
    names: &mut CgroupNames,
    s: Option<&Snapshot>,
) -> std::collections::HashMap<u64, String> {
    let mut cache = std::collections::HashMap::new();
    for t in s.map_or(&[][..], |s| &s.tasks[..]) {
        cache
            .entry(t.cgroup_id)
            .or_insert_with(|| names.name(t.cgroup_id));
    }
    cache
}

/// `~/.local/state/sampler/top.log` (XDG_STATE_HOME when set).
fn default_log() -> std::path::PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/state"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    base.join("sampler/top.log")
}

/// The full-screen live view. Sampling starts before the screen comes up, so that
/// start-up errors print normally; while it is up, standard error goes to the log
/// file; the terminal is restored on quit, on SIGINT/SIGTERM/SIGHUP and on panic.
async fn top_screen(args: TopArgs, interval: Duration) -> Result<(), Error> {
    use ratatui::crossterm::event::{self as ct, Event, KeyEventKind};
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    let mut sampling_args = args.sampling;
    let mut sampling = Sampling::start(&sampling_args)?;
    let events = sampling_args.events();
    let mut app = tui::App::new(events, interval, args.top);
    let mut names = CgroupNames::new();
    let mut refresh = Refresh::new(&sampling)?;
    let log = args.log.unwrap_or_else(default_log);
    let redirect = sys::StderrRedirect::to_file(&log).map_err(|e| {
        Error::Runtime(io::Error::new(
            e.kind(),
            format!(
                "cannot open the log file {} ({e}); --log FILE sets another",
                log.display()
            ),
        ))
    })?;
    let mut terminal = ratatui::try_init()?;

    let (tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // A terminal that went away (hang-up) ends the reader.
                let Ok(ready) = ct::poll(Duration::from_millis(100)) else {
                    break;
                };
                if ready {
                    match ct::read() {
                        Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                            if tx.send(k).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        })
    };
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut next = tokio::time::Instant::now() + app.interval;
    let mut cache = std::collections::HashMap::new();
    let mut done = 0u64;
    // When the refresh being drawn started (map read, roll-up, then this draw).
    let mut refresh_started: Option<Instant> = None;
    let mut costs = tui::RefreshCosts::default();
    let result: Result<(), Error> = loop {
        let name_of = |id: u64| cache.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        if let Err(e) = terminal.draw(|f| tui::render(f, &app, &name_of)) {
            break Err(e.into());
        }
        if let Some(t) = refresh_started.take() {
            let ms = t.elapsed().as_secs_f64() * 1e3;
            costs.record(ms, app.snapshot.as_ref().map_or(0, |s| s.tasks.len()));
            app.refresh_ms = Some(ms);
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                next = tokio::time::Instant::now() + app.interval;
                refresh_started = Some(Instant::now());
                match refresh.next(&mut sampling) {
                    Ok(s) => app.update(s),
                    Err(e) => break Err(e),
                }
                cache = cgroup_cache(&mut names, app.snapshot.as_ref());
                done += 1;
                if args.iterations.is_some_and(|n| done >= n) {
                    break Ok(());
                }
            }
            Some(key) = keys.recv() => match app.on_key(key) {
                tui::Action::Quit => break Ok(()),
                tui::Action::Interval => next = tokio::time::Instant::now() + app.interval,
                tui::Action::Events(events) => {
                    // Close the old events and programs first: counters are scarce.
                    let old = sampling_args.event.replace(events.clone());
                    drop(sampling);
                    sampling = match Sampling::start(&sampling_args) {
                        Ok(s) => {
                            app.status = None;
                            app.events = events;
                            s
                        }
                        Err(e) => {
                            app.status = Some(format!("cannot sample `{events}`: {e}"));
                            sampling_args.event = old;
                            match Sampling::start(&sampling_args) {
                                Ok(s) => s,
                                Err(e) => break Err(e),
                            }
                        }
                    };
                    refresh = match Refresh::new(&sampling) {
                        Ok(r) => r,
                        Err(e) => break Err(e),
                    };
                    app.snapshot = None;
                    next = tokio::time::Instant::now() + app.interval;
                }
                tui::Action::None => {}
            },
            _ = int.recv() => break Ok(()),
            _ = term.recv() => break Ok(()),
            _ = hup.recv() => break Ok(()),
        }
    };
    stop.store(true, Ordering::Relaxed);
    // Into the log: standard error is still redirected.
    if let Some(line) = costs.summary() {
        eprintln!("sampler top: {line}");
    }
    ratatui::restore();
    // After leaving the alternate screen: some terminals keep the cursor mode
    // per screen (tmux does).
    let _ = terminal.show_cursor();
    drop(redirect);
    // Not joined: with the terminal gone, the reader can be stuck inside crossterm;
    // it ends with the process.
    drop(reader);
    result
}

/// Loaded programs and enabled events: sampling is under way while this lives.
struct Sampling {
    // Field order is drop order: close the events before unloading the program.
    session: Session<'static>,
    bpf: Bpf,
    info: RunInfo,
    /// `kernel.perf_event_max_sample_rate` when sampling started.
    max_rate_at_start: Option<u64>,
    /// The plan opened, and the PMUs it was made from.
    plan: Vec<plan::PlannedEvent>,
    pmus: PmuSet,
    /// Keeps the kernel's BPF run-time statistics on (`--bpf-stats`).
    _stats: Option<std::os::fd::OwnedFd>,
}

static REAL_SYS: RealSys = RealSys;

impl Sampling {
    fn start(args: &SamplingArgs) -> Result<Self, Error> {
        let pmus = PmuSet::discover(&args.sysfs.sysfs_root)?;
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
        let bpf = Bpf::load(Path::new(KERNEL_BTF), entries, sp.members.len() as u32)?;
        let stats = if args.bpf_stats {
            Some(bpf::enable_run_stats()?)
        } else {
            None
        };
        if let Some(notice) = &bpf.btf_notice {
            eprintln!("{notice}");
        }
        let mut session = Session::open(&REAL_SYS, &sp.plan.plan, rate, sp.cpu_clock_fallback)?;
        for notice in session.notices() {
            eprintln!("{notice}");
        }
        bpf.with_fds(|prog, members| session.attach(prog, members))?;
        session.enable()?;
        let info = RunInfo {
            cpus: session
                .leaders()
                .map(|e| CpuRun {
                    cpu: e.cpu,
                    event: e.event.clone(),
                    pmu: e.pmu.clone(),
                    encoding: e.encoding,
                    hardware: e.hardware,
                    fell_back: e.fallback_reason.is_some(),
                })
                .collect(),
            rate,
            members: sp.members.into_iter().take(MAX_MEMBERS).collect(),
        };
        Ok(Self {
            session,
            bpf,
            info,
            max_rate_at_start: sys::read_sysctl_u64(Path::new(MAX_SAMPLE_RATE)).ok(),
            plan: sp.plan.plan,
            pmus,
            _stats: stats,
        })
    }

    /// Follows CPU hotplug (see [`Session::follow_online`]); each change is also
    /// printed to standard error.
    fn follow_hotplug(&mut self) -> Vec<String> {
        let Ok(online) = CpuList::read(&self.pmus.root.join("devices/system/cpu/online")) else {
            return Vec::new();
        };
        let notes = self.session.follow_online(&online);
        for n in &notes {
            eprintln!("{n}");
        }
        notes
    }

    /// Whether the kernel throttled sampling since the start (it lowers the maximum
    /// sample rate when sampling interrupts take too long).
    fn throttled(&self) -> Option<String> {
        let now = sys::read_sysctl_u64(Path::new(MAX_SAMPLE_RATE)).ok();
        model::throttle_warning(
            self.max_rate_at_start,
            now,
            self.info.rate.frequency().unwrap_or(0),
        )
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
    let list: EventList = event::parse(event_arg.unwrap_or(DEFAULT_EVENT))?;
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

/// Parses a positive number of seconds, at most [`MAX_SECONDS`].
pub fn parse_seconds(flag: &'static str, value: &str) -> Result<Duration, Error> {
    let bad = || Error::BadSeconds {
        flag,
        value: value.to_owned(),
        max: MAX_SECONDS,
    };
    let secs: f64 = value.trim().parse().map_err(|_| bad())?;
    // Below a millisecond a refresh loop would only spin.
    if !(secs >= 0.001 && secs <= MAX_SECONDS as f64) {
        return Err(bad());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
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
enum Stop {
    Elapsed,
    Signal,
}

/// Waits for `duration` or until SIGINT, SIGTERM or SIGHUP.
async fn wait(duration: Option<Duration>) -> Result<Stop, Error> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = sleep => Ok(Stop::Elapsed),
        _ = int.recv() => Ok(Stop::Signal),
        _ = term.recv() => Ok(Stop::Signal),
        _ = hup.recv() => Ok(Stop::Signal),
    }
}

/// Writes to stdout; `Ok(false)` when the reader went away (e.g. `| head`).
fn emit(text: &str) -> Result<bool, Error> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn tmpfile(name: &str, content: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sampler-cli-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        fs::write(&p, content).unwrap();
        p
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
        let pmus = crate::pmu::tests::load("vm");
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
    fn seconds_parsing() {
        assert_eq!(
            parse_seconds("duration", "2").unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(
            parse_seconds("duration", "0.25").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_seconds("interval", "0.001").unwrap(),
            Duration::from_millis(1)
        );
        for bad in [
            "0", "-1", "abc", "", "NaN", "inf", "1e300", "31536001", "1e-300", "0.0009",
        ] {
            let e = parse_seconds("duration", bad).unwrap_err();
            assert!(
                e.to_string().starts_with("--duration must be a positive"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn command_line_parses() {
        let cli = Cli::try_parse_from([
            "sampler", "stat", "-d", "2", "--json", "-F", "99", "-C", "1",
        ])
        .unwrap();
        let Command::Stat(a) = cli.command else {
            panic!("not stat")
        };
        assert_eq!(a.duration, "2");
        assert!(a.json);
        assert_eq!(a.sampling.frequency, 99);
        assert_eq!(a.sampling.cpu.as_deref(), Some("1"));
        assert!(Cli::try_parse_from(["sampler", "stat", "-F", "-5"]).is_err());
        assert!(Cli::try_parse_from(["sampler", "bogus"]).is_err());
    }
}
