//! `sampler stat`: sample for a while, then print the busiest tasks (table or JSON).

use clap::Args;

use crate::{
    cli::{Error, LocationArgs, SamplingArgs, emit, parse_seconds},
    present::report,
    run::Sampling,
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
    /// For `cargo xtask bench`: attach the floor program (one per-CPU counter bumped
    /// per sample) instead of sampler's and, with --bpf-stats, report its cost per
    /// sample; no task is attributed.
    #[arg(long, hide = true, requires = "bpf_stats", conflicts_with_all = ["functions", "call_graph"])]
    pub bench_floor: bool,
}

pub async fn stat(args: StatArgs) -> Result<(), Error> {
    let duration = parse_seconds("duration", &args.duration)?;
    let mut options = args.sampling.options();
    options.locations = args.locations.locations();
    options.max_locations = options.locations;
    options.inlined = args.locations.inlined;
    options.bench_floor = args.bench_floor;
    let mut sampling = Sampling::start(&options)?;
    let snapshot = sampling.run_for(duration).await?;
    let text = if args.json {
        let mut s = report::json(&snapshot, args.top).to_string();
        s.push('\n');
        s
    } else {
        report::table(&snapshot, Some(args.top.unwrap_or(20)))
    };
    emit(&text).map(drop)
}
