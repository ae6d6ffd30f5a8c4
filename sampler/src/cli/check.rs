//! `sampler check`: the three-way cross-check (BPF maps, `read()`, user page) per CPU;
//! fails when a difference exceeds the tolerance.

use std::io;

use clap::Args;
use sampler_common::MAX_MEMBERS;

use crate::{
    cli::{Error, SamplingArgs, emit, parse_seconds},
    events::plan,
    model::check,
    present::report,
    run::Sampling,
};

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

pub async fn check(args: CheckArgs) -> Result<(), Error> {
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
    let mut sampling = Sampling::start(&args.sampling.options())?;
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
    // The readers' window is short and the maps are read on this thread while they
    // sleep (see `model::check`), so this blocks the runtime for the duration.
    let bpf = &sampling.bpf;
    let (readers, first, last) = check::run_readers(&probes, &pmus, duration, || bpf.read())?;
    sampling.session.disable()?;
    let gained = |maps: &crate::kernel::bpf::MapContents, tid: u32, cpu: u32, index: usize| {
        maps.tasks
            .iter()
            .filter(|(k, _)| k.tid == tid && k.cpu == cpu)
            .map(|(_, v)| match index {
                0 => v.period_sum,
                i => v.counts[i - 1],
            })
            .sum::<u64>()
    };
    let mut rows = check::rows(&readers, |tid, cpu, index| {
        gained(&last, tid, cpu, index).saturating_sub(gained(&first, tid, cpu, index))
    });
    if let Some((probes, pmus)) = latency_plan {
        rows = tokio::task::spawn_blocking(move || {
            check::add_latencies(&mut rows, &probes, &pmus, latency).map(|()| rows)
        })
        .await
        .map_err(|e| Error::Runtime(io::Error::other(e.to_string())))??;
    }
    let failed = rows.iter().filter(|r| !r.passes(tolerance)).count();
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
        report::check_table(&rows, tolerance, &notes)
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
