//! `sampler report`: the function table of a saved pprof profile (as `stat` prints
//! it), or with `--diff BASE` each function's change in share and IPC against
//! another profile, the functions that grew most first.

use std::{fmt::Write as _, path::PathBuf};

use clap::Args;

use crate::{
    cli::{Error, emit},
    model::snapshot::Snapshot,
    present::{
        profile::{self, diff, pprof},
        report,
    },
};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The profile (`.pb.gz` or `.pprof`, from `sampler record` or `serve`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Compare with this profile: each function's change in share and IPC from BASE
    /// to FILE, the functions that grew most first.
    #[arg(long, value_name = "BASE")]
    pub diff: Option<PathBuf>,
    /// Show the N busiest functions (or changes).
    #[arg(long, value_name = "N", default_value_t = 25)]
    pub top: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn load(path: &PathBuf) -> Result<Snapshot, Error> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| profile::Error::Unreadable {
        path: shown.clone(),
        source,
    })?;
    let p = pprof::decode(&bytes).map_err(|why| profile::Error::NotPprof { path: shown, why })?;
    Ok(pprof::snapshot(&p))
}

pub fn run(args: &ReportArgs) -> Result<(), Error> {
    if args.top == 0 {
        return Err(Error::TopZero);
    }
    let new = load(&args.file)?;
    let text = match &args.diff {
        Some(base_path) => {
            let base = load(base_path)?;
            let rows = diff::diff(&base, &new);
            if args.json {
                let mut s = serde_json::json!({
                    "base": base_path.display().to_string(),
                    "profile": args.file.display().to_string(),
                    "functions": rows.iter().take(args.top).collect::<Vec<_>>(),
                })
                .to_string();
                s.push('\n');
                s
            } else {
                diff::table(
                    &rows,
                    &describe(base_path, &base),
                    &describe(&args.file, &new),
                    args.top,
                )
            }
        }
        None if args.json => {
            let mut s = serde_json::json!({
                "profile": args.file.display().to_string(),
                "duration_s": new.duration_s,
                "samples": new.samples,
                "event": profile::sampling_event(&new),
                "members": new.members,
                "functions": new.functions.iter().flatten().take(args.top).collect::<Vec<_>>(),
            })
            .to_string();
            s.push('\n');
            s
        }
        None => {
            let mut out = describe(&args.file, &new);
            out.push('\n');
            let functions = new.functions.clone().unwrap_or_default();
            report::function_table(&mut out, &new, &functions, args.top);
            if functions.len() > args.top {
                let _ = writeln!(
                    out,
                    "({} more functions; --top shows more)",
                    functions.len() - args.top
                );
            }
            out
        }
    };
    emit(&text).map(drop)
}

/// One line on what a profile holds.
fn describe(path: &std::path::Path, s: &Snapshot) -> String {
    let mut counted = vec![profile::sampling_event(s)];
    counted.extend(s.members.iter().cloned());
    format!(
        "{}: {} samples over {:.1} s on {} CPUs, counting {} (shares of the profile's \
         samples; idle is not recorded)",
        path.display(),
        s.samples,
        s.duration_s,
        s.cpus.len(),
        counted.join(", ")
    )
}
