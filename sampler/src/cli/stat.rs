//! `sampler stat`: sample for a while, then print the busiest tasks (table or JSON).

use std::time::{Duration, Instant};

use clap::Args;

use crate::{
    cli::{Error, LocationArgs, SamplingArgs, emit, parse_seconds},
    kernel::bpf::Locations,
    model::snapshot::Snapshot,
    present::report,
    run::{Sampling, Stop, wait},
};

#[derive(Debug, Args)]
pub struct StatArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub locations: LocationArgs,
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

/// How often a run with locations symbolizes the addresses seen since the last time.
pub const SYMBOLIZE_EVERY: Duration = Duration::from_millis(250);

pub async fn stat(args: StatArgs) -> Result<(), Error> {
    let duration = parse_seconds("duration", &args.duration)?;
    let mut options = args.sampling.options();
    options.locations = args.locations.locations();
    options.max_locations = options.locations;
    options.inlined = args.locations.inlined;
    let mut sampling = Sampling::start(&options)?;
    let started = Instant::now();
    // In steps of at most a second, following CPU hotplug in between; with
    // locations, a quarter second, symbolizing new addresses while their processes
    // still run.
    let step = if options.locations == Locations::Off {
        Duration::from_secs(1)
    } else {
        SYMBOLIZE_EVERY
    };
    let mut warnings = Vec::new();
    while let Some(left) = duration
        .checked_sub(started.elapsed())
        .filter(|d| !d.is_zero())
    {
        if wait(Some(left.min(step))).await? == Stop::Signal {
            break;
        }
        warnings.extend(sampling.follow_hotplug());
        sampling.poll_symbols()?;
    }
    sampling.session.disable()?;
    let elapsed = started.elapsed().as_secs_f64();
    let maps = sampling.bpf.read()?;
    sampling.resolve(&maps)?;
    let counts = sampling.session.read_counts()?;
    let mut snapshot = Snapshot::build(&maps, &counts, &sampling.info, elapsed);
    sampling.locate(&mut snapshot, &maps);
    snapshot.warnings.extend(sampling.throttled());
    snapshot.warnings.extend(warnings);
    let text = if args.json {
        let mut s = report::json(&snapshot, args.top).to_string();
        s.push('\n');
        s
    } else {
        report::table(&snapshot, Some(args.top.unwrap_or(20)))
    };
    emit(&text).map(drop)
}
