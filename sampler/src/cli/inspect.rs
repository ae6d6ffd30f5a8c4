//! The commands that only look, with no privileges and no perf calls: `plan` (which
//! PMU and attr each event would use on each CPU), `pmus`, `list`.

use clap::Args;

use crate::{
    cli::{Error, SysfsArgs, emit},
    discover::pmu::PmuSet,
    events::{plan, syntax},
    present::report,
    run,
};

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

pub fn plan(args: &PlanArgs) -> Result<(), Error> {
    let pmus = PmuSet::discover(&args.sysfs.sysfs_root)?;
    let cpus = run::select_cpus(args.cpu.as_deref(), &pmus.online)?;
    let kernel = run::kernel_version(args.kernel.as_deref())?;
    let plan = plan::plan(&syntax::parse(&args.event)?, &pmus, &cpus, kernel)?;
    let text = if args.json {
        format!("{}\n", serde_json::to_string(&plan).unwrap_or_default())
    } else {
        report::plan_table(&plan)
    };
    emit(&text).map(drop)
}

pub fn pmus(args: &PmusArgs) -> Result<(), Error> {
    let pmus = PmuSet::discover(&args.sysfs.sysfs_root)?;
    let text = if args.json {
        format!("{}\n", report::pmus_json(&pmus))
    } else {
        report::pmus_table(&pmus)
    };
    emit(&text).map(drop)
}

pub fn list(args: &ListArgs) -> Result<(), Error> {
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
    emit(&report::event_list(&pmus, args.pmu.as_deref())).map(drop)
}
