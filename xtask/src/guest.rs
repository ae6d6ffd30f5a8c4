//! The guest test runs: the arm64 binaries they boot with (the static `sampler` and
//! the `tests/guest.rs` binary), and one run of those tests in a guest (`vm`).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{Arch, build, cargo, display, vm};

/// Builds a test binary of sampler for `arch` (`which`: `--test guest`, or `--lib`
/// for the unit tests); returns its path.
fn build_tests(arch: Arch, which: &[&str], name: &str) -> Result<PathBuf> {
    let mut cmd = cargo(["test", "--release", "--package", "sampler"]);
    cmd.args(which).args([
        "--no-run",
        "--message-format=json-render-diagnostics",
        "--target",
        arch.target(),
    ]);
    eprintln!("xtask: {}", display(&cmd));
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("building the {name} tests failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo reported no {name} test executable"))
}

/// The unit tests of arm64-only code (the `mrs` table, restartable sequences with
/// musl's own rseq registration), run in every guest before the guest tests; the
/// others read the source tree's data and run on the host.
const GUEST_UNIT_TESTS: &[&str] = &["rseq", "evcnt"];

/// Builds the function view's test workload (`tests/workload/main.rs`) for `arch`
/// (`None`: this machine) with rustc, as the host tests do: optimized, frame
/// pointers, debug information.
pub fn build_workload(arch: Option<Arch>) -> Result<PathBuf> {
    let root = crate::workspace_root();
    let dir = root.join("target").join(arch.map_or("host", Arch::target));
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("workload");
    let mut cmd = Command::new("rustc");
    cmd.args(["--edition", "2021", "--crate-name", "workload"])
        .args(["-C", "opt-level=2", "-C", "force-frame-pointers=yes", "-g"]);
    if let Some(arch) = arch {
        // Linked as .cargo/config.toml links the other arm64 binaries.
        cmd.args(["--target", arch.target(), "-C", "linker=rust-lld"]);
    }
    cmd.arg("-o")
        .arg(&out)
        .arg(root.join("tests/workload/main.rs"));
    eprintln!("xtask: {}", display(&cmd));
    if !cmd.status()?.success() {
        bail!("building the test workload ({}) failed", display(&cmd));
    }
    Ok(out)
}

/// What a guest run boots with: the static sampler, the guest test binary, the
/// library's unit tests and the function view's workload.
pub struct GuestBinaries {
    pub sampler: PathBuf,
    pub tests: PathBuf,
    pub unit_tests: PathBuf,
    pub workload: PathBuf,
}

/// Builds the guest binaries and checks the host tools, once for any number of runs.
pub fn binaries() -> Result<GuestBinaries> {
    let sampler = build(Arch::Aarch64)?;
    let tests = build_tests(Arch::Aarch64, &["--test", "guest"], "guest")?;
    let unit_tests = build_tests(Arch::Aarch64, &["--lib"], "sampler")?;
    let workload = build_workload(Some(Arch::Aarch64))?;
    vm::ensure_host_tools()?;
    Ok(GuestBinaries {
        sampler,
        tests,
        unit_tests,
        workload,
    })
}

/// Runs the guest tests (those matching `filters`) in `guest`; returns what they
/// printed.
pub fn run_tests(guest: &vm::Guest, bins: &GuestBinaries, filters: &[String]) -> Result<String> {
    let mut command = format!(
        "/unit-tests --test-threads=1 --color=never {} && {} /guest-tests --test-threads=1 \
         --color=never",
        GUEST_UNIT_TESTS.join(" "),
        guest_env(guest)
    );
    for f in filters {
        if !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("test filter `{f}`: only letters, digits and _ are allowed");
        }
        command.push(' ');
        command.push_str(f);
    }
    let started = Instant::now();
    let run = vm::run(guest, &payload(bins, command))?;
    print!("{}", without_profile(&run.output));
    let what = format!(
        "guest tests on {} (-cpu {}, {}{})",
        guest.series.name(),
        guest.cpu.name(),
        if guest.hetero { "two PMUs" } else { "one PMU" },
        if guest.icount { ", icount" } else { "" }
    );
    if run.rc != 0 {
        bail!("{what} failed (exit status {})", run.rc);
    }
    read_guest_profile(&run.output, guest, &what)?;
    eprintln!(
        "xtask: {what} passed ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(run.output)
}

/// The environment the guest tests read their configuration from.
fn guest_env(guest: &vm::Guest) -> String {
    format!(
        "SAMPLER_BIN=/sampler SAMPLER_WORKLOAD=/workload SAMPLER_GUEST=1 \
         SAMPLER_GUEST_PMUS={} SAMPLER_GUEST_ICOUNT={} SAMPLER_GUEST_KERNEL={} \
         SAMPLER_GUEST_CPU={}",
        if guest.hetero { 2 } else { 1 },
        u8::from(guest.icount),
        guest.series.name(),
        guest.cpu.name(),
    )
}

fn payload(bins: &GuestBinaries, command: String) -> vm::Payload {
    vm::Payload {
        files: vec![
            (bins.sampler.clone(), "sampler"),
            (bins.tests.clone(), "guest-tests"),
            (bins.unit_tests.clone(), "unit-tests"),
            (bins.workload.clone(), "workload"),
        ],
        command,
    }
}

/// Runs the shell `command` in `guest` (with the guest tests' environment exported)
/// and prints what it printed; fails when it exits non-zero.
pub fn run_command(guest: &vm::Guest, bins: &GuestBinaries, command: &str) -> Result<()> {
    let command = format!("export {}; {command}", guest_env(guest));
    let run = vm::run(guest, &payload(bins, command))?;
    print!("{}", run.output);
    if run.rc != 0 {
        bail!("the guest command exited with status {}", run.rc);
    }
    Ok(())
}

/// The guest's pprof profile (printed base64 between markers by the guest test
/// `record_writes_a_pprof_of_hardware_cycles`), written under target/guest and read
/// on the host by `go tool pprof`: both hot functions of the workload must be there.
fn read_guest_profile(output: &str, guest: &vm::Guest, what: &str) -> Result<()> {
    use base64::Engine as _;
    let Some(start) = output.find("SAMPLER-GUEST-PPROF-BEGIN") else {
        // Filtered out, or skipped in this configuration (icount).
        return Ok(());
    };
    let Some(len) = output[start..].find("SAMPLER-GUEST-PPROF-END") else {
        bail!("{what}: the guest's profile was cut off on the console");
    };
    let body: String = output[start..start + len]
        .lines()
        .skip(1)
        .flat_map(|l| l.trim().chars())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .with_context(|| format!("{what}: decoding the guest's profile"))?;
    let dir = crate::workspace_root().join("target/guest");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!(
        "profile-{}-{}.pb.gz",
        guest.series.name(),
        if guest.hetero { "two-pmus" } else { "one-pmu" }
    ));
    std::fs::write(&file, &bytes)?;
    crate::setup::ensure_go()?;
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-sample_index=cycles"])
        .arg(&file)
        .env("PPROF_TMPDIR", &dir)
        .stdin(Stdio::null())
        .output()
        .context("running go tool pprof")?;
    let top = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what}: go tool pprof cannot read the guest's profile {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for f in ["workload::work::alpha_hot", "workload::work::beta_hot"] {
        if !top.lines().any(|l| l.trim_end().ends_with(f)) {
            bail!(
                "{what}: go tool pprof on the host does not find {f} in the guest's \
                 profile {}:\n{top}",
                file.display()
            );
        }
    }
    eprintln!(
        "xtask: go tool pprof on the host read the guest's hardware-cycles profile ({} bytes, {})",
        bytes.len(),
        file.display()
    );
    Ok(())
}

/// The console output with the guest's base64 profile folded into one line.
fn without_profile(output: &str) -> String {
    let (Some(a), Some(b)) = (
        output.find("SAMPLER-GUEST-PPROF-BEGIN"),
        output.find("SAMPLER-GUEST-PPROF-END"),
    ) else {
        return output.to_owned();
    };
    if b < a {
        return output.to_owned();
    }
    let lines = output[a..b].lines().count().saturating_sub(1);
    format!(
        "{}[the guest's pprof profile: {lines} lines of base64]\n{}",
        &output[..a],
        &output[b + "SAMPLER-GUEST-PPROF-END".len()..].trim_start_matches(['\r', '\n'])
    )
}
