//! The command line: the arguments (clap), and one file per command, each reading as
//! its steps: check its own arguments, start the shared sampling loop (`run`), hand
//! the snapshots to a presenter (`present`). `inspect` holds the commands that only
//! look (`plan`, `pmus`, `list`: no privileges, no perf calls).
//!
//! Uses every step below it. [`Error`] composes the steps' errors with the command
//! line's own, their messages unchanged.

use std::{
    io::{self, Write},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};

use crate::{
    discover,
    events::{plan::PlanError, syntax::ParseError},
    kernel::{self, bpf::Locations},
    present::profile,
    run,
};

pub mod check;
pub mod inspect;
pub mod record;
pub mod report;
pub mod serve;
pub mod stat;
pub mod top;

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
    Stat(stat::StatArgs),
    /// Print the busiest tasks of each interval until interrupted (Ctrl-C).
    Top(top::TopArgs),
    /// Show which PMU and attr each event would use on each CPU (no perf calls).
    Plan(inspect::PlanArgs),
    /// List the PMUs, the CPUs each covers, and whether the system is heterogeneous.
    Pmus(inspect::PmusArgs),
    /// List the events each PMU offers (all PMUs, or one).
    List(inspect::ListArgs),
    /// Cross-check the counts three ways: BPF maps, read() and the mmapped user page.
    Check(check::CheckArgs),
    /// Export per-container counters for Prometheus (OpenMetrics) over HTTP, and
    /// pprof profiles at /debug/pprof/profile.
    Serve(serve::ServeArgs),
    /// Sample for a while and write a profile: pprof (.pb.gz), folded stacks
    /// (.folded), a flame graph (.svg) or the snapshot (.json).
    Record(record::RecordArgs),
    /// Print the function table of a saved pprof profile, or compare two (--diff).
    Report(report::ReportArgs),
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
    /// The run's options, as the shared sampling loop takes them.
    pub fn options(&self) -> run::Options {
        run::Options {
            event: self.event.clone(),
            frequency: self.frequency,
            period: self.period,
            cpu: self.cpu.clone(),
            kernel: self.kernel.clone(),
            bpf_stats: self.bpf_stats,
            map_entries: self.map_entries,
            sysfs_root: self.sysfs.sysfs_root.clone(),
            locations: Locations::Off,
            max_locations: Locations::Off,
            inlined: false,
            bench_floor: false,
            bench_skip: 0,
        }
    }
}

/// Where the samples landed: the options `stat` and `top` add.
#[derive(Debug, Args)]
pub struct LocationArgs {
    /// Record the call stacks too (kernel and user, frame-pointer unwinding): a
    /// `stacks` table, each function's total samples, and its callers.
    #[arg(short = 'g', long = "call-graph")]
    pub call_graph: bool,
    /// Record where each sample landed (the sampled function), for a `functions`
    /// table with each function's counters.
    #[arg(long)]
    pub functions: bool,
    /// Name the inlined function at each address (from DWARF debug information),
    /// not the function it was inlined into.
    #[arg(long)]
    pub inlined: bool,
}

impl LocationArgs {
    /// What to record from the start: stacks with `-g`, the sampled instruction with
    /// `--functions`, else nothing.
    pub fn locations(&self) -> Locations {
        if self.call_graph {
            Locations::Stacks
        } else if self.functions || self.inlined {
            Locations::Ip
        } else {
            Locations::Off
        }
    }
}

/// What a command can fail on: its own arguments, and the sampling run's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--{flag} must be a positive number of seconds from 0.001 up to {max} (got `{value}`)")]
    BadSeconds {
        flag: &'static str,
        value: String,
        max: u64,
    },

    #[error(
        "cross-check failed: {failed} of {total} values differ by more than {tolerance} % \
         (see the rows above; --tolerance sets the limit)"
    )]
    CheckFailed {
        failed: usize,
        total: usize,
        tolerance: f64,
    },

    #[error("--tolerance must be a percentage above 0 (got `{0}`)")]
    BadTolerance(String),

    #[error("--latency needs at least 1 read per batch (e.g. `--latency 100000`)")]
    BadLatency,

    #[error(
        "cannot listen on {addr} ({source}); --listen sets another address, e.g. 127.0.0.1:9465"
    )]
    Listen {
        addr: String,
        #[source]
        source: io::Error,
    },

    #[error("--listen `{0}` is not an address and port such as 127.0.0.1:9464 or [::1]:9464")]
    BadListen(String),

    #[error("--top must be at least 1 series")]
    TopZero,

    #[error(transparent)]
    Run(#[from] run::Error),

    #[error(transparent)]
    Profile(#[from] profile::Error),

    #[error("{0}")]
    Runtime(#[from] io::Error),
}

/// The steps' errors reach the command line through the run's (which keeps their
/// messages), so that each has one way up.
macro_rules! through_run {
    ($($from:ty),+) => {
        $(impl From<$from> for Error {
            fn from(e: $from) -> Self {
                Self::Run(e.into())
            }
        })+
    };
}
through_run!(discover::Error, kernel::Error, ParseError, PlanError);

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), Error> {
    // The commands that run until a signal listen for it before any set-up, so that one
    // that comes while the programs load still stops them cleanly. (The others keep
    // the default: a signal ends them.)
    if matches!(
        cli.command,
        Command::Stat(_) | Command::Top(_) | Command::Serve(_) | Command::Record(_)
    ) {
        run::install_stop_signals().await?;
    }
    match cli.command {
        Command::Stat(args) => stat::stat(args).await,
        Command::Top(args) => top::top(args).await,
        Command::Plan(args) => inspect::plan(&args),
        Command::Pmus(args) => inspect::pmus(&args),
        Command::List(args) => inspect::list(&args),
        Command::Check(args) => check::check(args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Record(args) => record::record(args).await,
        Command::Report(args) => report::run(&args),
    }
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

/// Writes to stdout; `Ok(false)` when the reader went away (e.g. `| head`).
pub(crate) fn emit(text: &str) -> Result<bool, Error> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
