//! `cargo xtask fuzz`: the libFuzzer targets of `sampler/fuzz` (cargo-fuzz, nightly),
//! each for a fixed time, from the committed seeds plus the corpus earlier runs grew
//! (`target/fuzz/corpus/<target>`). A crash fails the run and names the input that
//! caused it (`target/fuzz/artifacts/<target>/`); a fixed crash becomes a unit test
//! next to the code it broke.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    display,
    setup::{has_command, plus_nightly},
    status,
};

pub const TARGETS: [&str; 3] = ["event_syntax", "sysfs_values", "userpage"];

/// cargo-fuzz, installed when missing.
fn ensure_cargo_fuzz() -> Result<()> {
    if has_command("cargo-fuzz", "--version") {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (runs the libFuzzer targets)");
    status(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))
}

/// One target's figures.
pub struct Ran {
    pub target: String,
    pub executions: u64,
    pub corpus: usize,
    pub seconds: f64,
}

/// Runs each of `targets` for `seconds`; returns executions per target.
pub fn run(root: &Path, targets: &[String], seconds: u64) -> Result<Vec<Ran>> {
    ensure_cargo_fuzz()?;
    let mut out = Vec::new();
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "no fuzz target `{t}`; the targets are {}",
                TARGETS.join(", ")
            );
        }
        let corpus = root.join("target/fuzz/corpus").join(t);
        let artifacts = root.join("target/fuzz/artifacts").join(t);
        fs::create_dir_all(&corpus)?;
        fs::create_dir_all(&artifacts)?;
        let seeds = root.join("sampler/fuzz/seeds").join(t);
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root.join("sampler"))
            .args([&plus_nightly(), "fuzz", "run", "--fuzz-dir", "fuzz", t])
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-max_len=4096")
            .arg("-rss_limit_mb=1024")
            .arg("-print_final_stats=1")
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped());
        eprintln!("xtask: {}", display(&cmd));
        let started = Instant::now();
        let output = cmd
            .spawn()
            .and_then(|c| c.wait_with_output())
            .with_context(|| format!("cannot run cargo fuzz for `{t}`"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target `{t}` failed ({}): the input is in {}; reproduce with `cd \
                 sampler && cargo {} fuzz run --fuzz-dir fuzz {t} <input>`, fix it and \
                 add the input as a unit test\n{}",
                output.status,
                artifacts.display(),
                plus_nightly(),
                tail.join("\n")
            );
        }
        let executions = stderr
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let ran = Ran {
            target: t.clone(),
            executions,
            corpus: fs::read_dir(&corpus).map_or(0, Iterator::count),
            seconds: started.elapsed().as_secs_f64(),
        };
        eprintln!(
            "xtask: fuzz: {t}: {executions} executions in {seconds} s, no crash; corpus {} inputs",
            ran.corpus
        );
        out.push(ran);
    }
    Ok(out)
}
