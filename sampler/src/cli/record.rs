//! `sampler record`: sample like `stat` with locations on, then write what was
//! aggregated as a profile (pprof, folded stacks, flame graph SVG or JSON, by the
//! extension of `-o`). The destination is checked before sampling starts and the
//! file written whole at the end (also after Ctrl-C).

use std::path::PathBuf;

use clap::Args;

use crate::{
    cli::{Error, SamplingArgs, parse_seconds},
    discover::cgroup::CgroupNames,
    kernel::bpf::Locations,
    model::container,
    present::{
        profile::{self, Destination, Format, Weight, flame, pprof},
        report,
    },
    run::Sampling,
};

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Record the call stacks (kernel and user, frame-pointer unwinding); without
    /// it each sample is its function alone.
    #[arg(short = 'g', long = "call-graph")]
    pub call_graph: bool,
    /// Name the inlined function at each address (from DWARF), with its source line.
    #[arg(long)]
    pub inlined: bool,
    /// How long to sample, in seconds (fractions allowed); Ctrl-C stops early and
    /// still writes the profile.
    #[arg(short, long, value_name = "SECS", default_value = "10")]
    pub duration: String,
    /// The profile to write; its extension picks the format: `.pb.gz` or `.pprof`
    /// (pprof), `.folded` (folded stacks), `.svg` (flame graph), `.json` (snapshot).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
    /// What folded stacks and flame graphs weigh: `samples`, the sampling event
    /// (e.g. `cycles`) or a member of the sampling group (e.g. `instructions`).
    #[arg(long, value_name = "WHAT", default_value = "samples")]
    pub weight: String,
}

pub async fn record(args: RecordArgs) -> Result<(), Error> {
    let duration = parse_seconds("duration", &args.duration)?;
    // Before sampling: a bad name, an existing file or an unwritable place loses
    // nothing yet.
    let destination = Destination::prepare(&args.output, args.force)?;
    let mut options = args.sampling.options();
    options.locations = if args.call_graph {
        Locations::Stacks
    } else {
        Locations::Ip
    };
    options.max_locations = options.locations;
    options.inlined = args.inlined;
    let mut sampling = Sampling::start(&options)?;
    let time_ns = pprof::now_ns();
    let members = sampling.info.members.clone();
    let event = profile::event_name(sampling.info.cpus.iter().map(|c| c.event.as_str()));
    let weight = Weight::parse(&args.weight, &event, &members)?;
    eprintln!(
        "sampler: recording {} for {:.1} s into {} (Ctrl-C stops early and writes it)",
        if args.call_graph {
            "call stacks"
        } else {
            "sampled functions"
        },
        duration.as_secs_f64(),
        destination.path().display()
    );
    let snapshot = sampling.run_for(duration).await?;
    let elapsed = snapshot.duration_s;
    drop(sampling);

    let bytes = match destination.format() {
        Format::Pprof => {
            let mut names = CgroupNames::new();
            let mut container = |id| container::identify(&names.name(id)).short();
            let p = pprof::encode(
                &snapshot,
                pprof::Meta {
                    time_ns,
                    comment: command_line(),
                    container: &mut container,
                },
            );
            pprof::to_gzip(&p)
        }
        Format::Folded => flame::folded(&snapshot, &weight).into_bytes(),
        Format::Svg => {
            let folded = flame::folded(&snapshot, &weight);
            flame::svg(&folded, &flame::title(&snapshot, &weight), &weight)?
        }
        Format::Json => {
            let mut s = report::json(&snapshot);
            s.push('\n');
            s.into_bytes()
        }
    };
    let path = destination.path().display().to_string();
    destination.commit(&bytes)?;
    for w in &snapshot.warnings {
        eprintln!("sampler: warning: {w}");
    }
    let functions = snapshot.functions.as_ref().map_or(0, Vec::len);
    eprintln!(
        "sampler: wrote {path} ({} bytes): {} samples in {functions} functions over {elapsed:.1} s",
        bytes.len(),
        snapshot.samples - snapshot.idle_samples,
    );
    Ok(())
}

/// The command line, for the profile's comment.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}
