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
    /// For `cargo xtask bench`'s breakdown: take these pieces out of sampler's
    /// program (comma-separated: leader-read, member-reads, pid, cgroup, start,
    /// task-map, loc-mode, key-cache, loc-map; loc-ring puts every location in the
    /// location map, loc-batch each in a ring record of its own, loc-map-for-log in
    /// a per-CPU log that nothing reads); what it attributes is then wrong.
    #[arg(long, hide = true, value_name = "PIECES", value_parser = parse_skip, requires = "bpf_stats", conflicts_with = "bench_floor")]
    pub bench_skip: Option<u32>,
}

/// The `SKIP_*` mask of a `--bench-skip` list.
fn parse_skip(text: &str) -> Result<u32, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .try_fold(0, |mask, piece| {
            sampler_common::SKIP_NAMES
                .iter()
                .find(|(name, _)| *name == piece)
                .map(|(_, bit)| mask | bit)
                .ok_or_else(|| {
                    let names: Vec<_> =
                        sampler_common::SKIP_NAMES.iter().map(|(n, _)| *n).collect();
                    format!(
                        "unknown piece `{piece}`; the pieces are {}",
                        names.join(", ")
                    )
                })
        })
}

pub async fn stat(args: StatArgs) -> Result<(), Error> {
    let duration = parse_seconds("duration", &args.duration)?;
    let mut options = args.sampling.options();
    options.locations = args.locations.locations();
    options.max_locations = options.locations;
    options.inlined = args.locations.inlined;
    options.bench_floor = args.bench_floor;
    options.bench_skip = args.bench_skip.unwrap_or(0);
    let mut sampling = Sampling::start(&options)?;
    let mut snapshot = sampling.run_for(duration).await?;
    let text = if args.json {
        if let Some(top) = args.top {
            snapshot.tasks.truncate(top);
        }
        let mut s = report::json(&snapshot);
        s.push('\n');
        s
    } else {
        report::table(&snapshot, Some(args.top.unwrap_or(20)))
    };
    emit(&text).map(drop)
}
