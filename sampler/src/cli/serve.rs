//! `sampler serve`: samples like `top`, and every interval folds what changed into
//! the exporter's per-container counters (`present::export`); the HTTP server
//! (`present::http`) hands out the latest encoding. `/debug/pprof/profile` asks the
//! loop for a profile: it turns locations on for that window (when they were off)
//! and answers with the window's pprof. Capabilities are dropped once everything is
//! open, after the kernel's symbols have been read.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use clap::Args;

use crate::{
    cli::{Error, SamplingArgs, parse_seconds},
    discover::cgroup::CgroupNames,
    kernel::{
        bpf::{self, Locations},
        session,
    },
    model::{
        container,
        snapshot::{self, Snapshot},
    },
    present::{export::Exporter, http, profile::pprof},
    run::{Refresh, SYMBOLIZE_EVERY, Sampling, Stop, wait},
    sys,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileMode {
    Off,
    Functions,
    Stacks,
}

impl ProfileMode {
    fn locations(self) -> Locations {
        match self {
            Self::Off => Locations::Off,
            Self::Functions => Locations::Ip,
            Self::Stacks => Locations::Stacks,
        }
    }
}

/// A profile being taken: the maps and counts at its start, when it ends, where the
/// answer goes.
struct Window {
    start: bpf::MapContents,
    start_counts: Vec<session::EventCount>,
    started: Instant,
    ends: Instant,
    time_ns: i64,
    reply: tokio::sync::oneshot::Sender<Result<hyper::body::Bytes, String>>,
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
    pub cgroup_root: Option<PathBuf>,
    /// Serve pprof profiles at `/debug/pprof/profile?seconds=N`, recording `stacks`
    /// (call stacks; a stack map of 16,384 stacks is allocated at start) or
    /// `functions` (the sampled function only) while one is taken; `off`: no
    /// endpoint. Naming other processes' functions needs CAP_SYS_PTRACE and
    /// CAP_CHECKPOINT_RESTORE, so with profiles on, serve keeps those two and drops
    /// the rest; off, it drops every capability.
    #[arg(long, value_name = "WHAT", default_value = "off")]
    pub profiles: ProfileMode,
    /// Keep the kernel's BPF statistics off (they cost two clock reads per sample; on
    /// by default to export the program's cost; needs CAP_SYS_ADMIN, or
    /// kernel.bpf_stats_enabled=1 set on the host).
    #[arg(long)]
    pub no_bpf_stats: bool,
}

/// `sampler serve`: samples like `top`, and every interval folds what changed into
/// the exporter's counters; the HTTP server hands out the latest encoding.
pub async fn serve(args: ServeArgs) -> Result<(), Error> {
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
    let mut options = args.sampling.options();
    options.max_locations = args.profiles.locations();
    let mut sampling = Sampling::start(&options)?;
    // The program's cost: statistics on for this run (CAP_SYS_ADMIN), or already on
    // host-wide (kernel.bpf_stats_enabled=1).
    sampling.report_bpf_cost = !args.no_bpf_stats;
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
    if args.profiles != ProfileMode::Off
        && let Some(why) = sampling.symbols.preload_kernel()
    {
        eprintln!("sampler: serve: {why}");
    }
    // Everything is open: the capabilities are not needed any more, but for reading
    // other processes' maps and binaries when profiles name their functions.
    let keep: &[caps::Capability] = if args.profiles == ProfileMode::Off {
        &[]
    } else {
        &[
            caps::Capability::CAP_SYS_PTRACE,
            caps::Capability::CAP_CHECKPOINT_RESTORE,
        ]
    };
    match sys::drop_capabilities_except(keep) {
        Ok(0) => eprintln!("sampler: serve: all capabilities dropped"),
        Ok(left) if !keep.is_empty() => eprintln!(
            "sampler: serve: capabilities dropped but CAP_SYS_PTRACE and \
             CAP_CHECKPOINT_RESTORE (effective {left:#x}), which name other processes' \
             functions in profiles; kernel symbols were read at start"
        ),
        Ok(left) => eprintln!("sampler: serve: capabilities left after dropping: {left:#x}"),
        Err(e) => eprintln!("sampler: serve: cannot drop capabilities: {e}"),
    }
    if args.profiles != ProfileMode::Off && !sys::map_files_readable() {
        // Before Linux 5.9 map_files needs CAP_SYS_ADMIN: binaries by their paths.
        sampling.symbols.without_map_files();
        eprintln!(
            "sampler: serve: /proc/PID/map_files is not readable here: profiles open \
             binaries by their paths (binaries deleted since they started, or outside this \
             mount namespace, show as unreadable)"
        );
    }
    let mut names = match &args.cgroup_root {
        Some(root) => CgroupNames::at(Some(root.clone())),
        None => CgroupNames::new(),
    };
    let events = options.events();
    let source = session::Source::of(sampling.info.cpus.iter().map(|c| (c.hardware, c.fell_back)));
    let mut sampled: Vec<&str> = sampling
        .info
        .cpus
        .iter()
        .map(|c| c.event.as_str())
        .collect();
    sampled.sort_unstable();
    sampled.dedup();
    let mut exporter = Exporter::new(
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
    let shared: http::Shared = Arc::new(RwLock::new(Arc::new(http::Exposition::new(
        exporter.openmetrics(),
        Ok(()),
    ))));
    let (profiles, mut requests) = http::Profiles::new();
    let busy = Arc::clone(&profiles.busy);
    let server = tokio::spawn(http::run(
        listener,
        Arc::clone(&shared),
        interval * 3 + Duration::from_secs(1),
        (args.profiles != ProfileMode::Off).then_some(profiles),
    ));
    eprintln!(
        "sampler: serving http://{addr}/metrics (OpenMetrics or Prometheus text), \
         /healthz{}; refreshing every {:.1} s",
        if args.profiles == ProfileMode::Off {
            ""
        } else {
            " and /debug/pprof/profile?seconds=N"
        },
        interval.as_secs_f64()
    );
    let mut window: Option<Window> = None;
    let mut next_refresh = Instant::now() + interval;
    let result = loop {
        // Wake for the next refresh, the end of a profile's window, and while one is
        // taken, to name new addresses while their processes run.
        let now = Instant::now();
        let mut wake = next_refresh;
        if let Some(w) = &window {
            wake = wake.min(w.ends).min(now + SYMBOLIZE_EVERY);
        }
        tokio::select! {
            stop = wait(Some(wake.saturating_duration_since(now))) => {
                if stop? == Stop::Signal {
                    break Ok(());
                }
            }
            Some(req) = requests.recv(), if window.is_none() => {
                match open_window(&mut sampling, args.profiles, req) {
                    Ok(w) => window = Some(w),
                    Err(()) => http::Profiles::done(&busy),
                }
                continue;
            }
        }
        if let Some(w) = window.take_if(|w| Instant::now() >= w.ends) {
            close_window(&mut sampling, w, &mut names);
            http::Profiles::done(&busy);
        } else if window.is_some()
            && let Err(e) = sampling.poll_symbols()
        {
            eprintln!("sampler: serve: symbolizing: {e}");
        }
        if Instant::now() < next_refresh {
            continue;
        }
        next_refresh += interval;
        if next_refresh < Instant::now() {
            next_refresh = Instant::now() + interval;
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
                    &mut |id| container::identify(&names.name(id)),
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
        let x = http::Exposition::new(exporter.openmetrics(), health);
        match shared.write() {
            Ok(mut slot) => *slot = Arc::new(x),
            Err(p) => *p.into_inner() = Arc::new(x),
        }
    };
    server.abort();
    result
}

/// Starts a profile's window: locations on (when they were off), the maps read.
/// `Err` when it cannot start (the reason went to the requester).
fn open_window(
    sampling: &mut Sampling,
    mode: ProfileMode,
    req: http::ProfileRequest,
) -> Result<Window, ()> {
    let start = (|| -> Result<_, crate::run::Error> {
        if sampling.bpf.locations() == Locations::Off {
            sampling.set_locations(mode.locations())?;
        }
        sampling.read()
    })();
    match start {
        Ok((start, start_counts)) => {
            let now = Instant::now();
            Ok(Window {
                start,
                start_counts,
                started: now,
                ends: now + req.seconds,
                time_ns: pprof::now_ns(),
                reply: req.reply,
            })
        }
        Err(e) => {
            let _ = req.reply.send(Err(e.to_string()));
            Err(())
        }
    }
}

/// Ends a profile's window: what changed since its start, as a gzipped pprof, to
/// the requester; locations off again.
fn close_window(sampling: &mut Sampling, w: Window, names: &mut CgroupNames) {
    let answer = (|| -> Result<_, crate::run::Error> {
        let (cur, counts) = sampling.read()?;
        sampling.resolve(&cur)?;
        let interval = snapshot::delta(&w.start, &cur);
        let mut s = Snapshot::build(
            &interval,
            &snapshot::delta_counts(&w.start_counts, &counts),
            &sampling.info,
            w.started.elapsed().as_secs_f64(),
        );
        sampling.locate(&mut s, &interval);
        let mut container = |id| container::identify(&names.name(id)).short();
        let p = pprof::encode(
            &s,
            pprof::Meta {
                time_ns: w.time_ns,
                comment: format!(
                    "sampler serve: /debug/pprof/profile ({:.0} s)",
                    s.duration_s
                ),
                container: &mut container,
            },
        );
        Ok(hyper::body::Bytes::from(pprof::to_gzip(&p)))
    })();
    if let Err(e) = sampling.set_locations(Locations::Off) {
        eprintln!("sampler: serve: cannot turn locations off: {e}");
    }
    let _ = w.reply.send(answer.map_err(|e| e.to_string()));
}
