//! `sampler serve`: samples like `top`, and every interval folds what changed into
//! the exporter's per-container counters (`present::export`); the HTTP server
//! (`present::http`) hands out the latest encoding. Capabilities are dropped once
//! everything is open.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use clap::Args;

use crate::{
    cli::{Error, SamplingArgs, parse_seconds},
    discover::cgroup::CgroupNames,
    kernel::{bpf, session},
    model::container,
    present::{export::Exporter, http},
    run::{Refresh, Sampling, Stop, wait},
    sys,
};

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
    let options = args.sampling.options();
    let mut sampling = Sampling::start(&options)?;
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
    let server = tokio::spawn(http::run(
        listener,
        Arc::clone(&shared),
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
