//! `cargo xtask`: the chores around sampler.
//!
//! - `setup`: installs what building the BPF programs needs, when missing: the nightly
//!   toolchain's `rust-src` (for `-Z build-std=core`), LLVM 22 (`llvm-22-dev`) and
//!   `bpf-linker` 0.13 built against it. Idempotent; a second run takes well under a
//!   second.
//! - `run [-- ARGS]`: setup, release build, then `sampler ARGS` (default: `top`, the
//!   live view) as root, through sudo when not root.
//! - `test`: setup, then formatting, a smoke boot of the arm64 test bed, clippy (host,
//!   BPF and arm64 targets), every host test (as root with the root-only unit tests), the fuzz
//!   targets and the soak briefly, the guest tests on the test bed (both kernel series,
//!   one and two PMUs), and `bench --quick`.
//! - `bench [--quick] [--no-vm]`: sampler against perf in one run (`bench.rs`); writes
//!   BENCHMARKS.md; `--quick` is the smoke run `test` ends with.
//! - `build --arch aarch64`: a static arm64 `sampler` with the BPF object built for it.
//! - `vm-test [--kernel 6.1|6.12] [--hetero] [--icount]`: boots the arm64 guest (a real
//!   `arm_pmu` driver under QEMU) and runs the in-guest tests there (`vm.rs`).
//!
//! Where things are: this file parses the command line and runs commands; `setup.rs`
//! installs what is missing; `test.rs` is the `test` sequence; `guest.rs` builds the
//! guest binaries and runs the guest tests in a `vm.rs` guest (device tree: `dts.rs`);
//! `bench.rs`, `soak.rs` and `fuzz.rs` are those commands.

mod bench;
mod dts;
mod fuzz;
mod guest;
mod scale;
mod setup;
mod soak;
mod test;
mod vm;

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::setup::{ensure_target, is_root, privileged};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sampler's chores: setup, run, test")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the BPF toolchain pieces that are missing.
    Setup,
    /// Set up, build in release mode and run sampler as root (default: `top`).
    Run {
        /// Arguments for sampler, after `--` [default: top].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then check formatting and lints and run the whole test suite.
    Test {
        /// Skip the arm64 guest tests.
        #[arg(long)]
        no_vm: bool,
    },
    /// Benchmark sampler against perf in one run; writes BENCHMARKS.md (needs root).
    Bench {
        /// A smoke run of well under a minute: every benchmark once, short; the
        /// results go to target/bench-quick.md instead of BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
        /// Skip the figures only the arm64 guest can give.
        #[arg(long)]
        no_vm: bool,
    },
    /// Run sampler for a long time under task churn and check that its memory and
    /// its dropped samples do not grow; the report goes to target/soak-SECONDSs.md
    /// (needs root).
    Soak {
        /// How long, in seconds.
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
        /// Samples per second per CPU.
        #[arg(long, default_value_t = 1000)]
        frequency: u64,
        /// Refresh interval of `sampler top --json`, in seconds.
        #[arg(long, default_value_t = 10.0)]
        interval: f64,
        /// Task-map capacity (`--map-entries`); small values make it evict early.
        #[arg(long)]
        map_entries: Option<u32>,
    },
    /// Run the fuzz targets (cargo-fuzz, nightly) for a while each; a crash fails.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Targets to run [default: all].
        targets: Vec<String>,
    },
    /// Build a release sampler for another architecture (static, musl).
    Build {
        #[arg(long, value_enum, default_value = "aarch64")]
        arch: Arch,
    },
    /// Boot the arm64 guest (QEMU, real arm_pmu driver) and run the in-guest tests.
    VmTest {
        /// Debian kernel series to boot.
        #[arg(long, value_enum, default_value = "6.12")]
        kernel: vm::Series,
        /// The CPU QEMU emulates: `max` (FEAT_PMUv3p5, 64-bit event counters) or
        /// `cortex-a57` (PMUv3 with 32-bit event counters).
        #[arg(long, value_enum, default_value = "max")]
        cpu: vm::CpuModel,
        /// Two PMUs on disjoint CPU halves (like big.LITTLE).
        #[arg(long)]
        hetero: bool,
        /// Run QEMU with `-icount shift=0` so instructions are counted.
        #[arg(long)]
        icount: bool,
        /// Guest CPUs.
        #[arg(long, default_value_t = 4)]
        smp: u32,
        /// Run this shell command in the guest instead of the tests (the guest's
        /// `/sampler`, `/workload` and `/guest-tests` are there), for investigations.
        #[arg(long, value_name = "SH")]
        command: Option<String>,
        /// Test-name filters passed to the guest test binary.
        filters: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Arch {
    Aarch64,
}

impl Arch {
    fn target(self) -> &'static str {
        match self {
            Self::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = env::set_current_dir(&root)
        .with_context(|| format!("cd {}", root.display()))
        .and_then(|()| match cli.command {
            Cmd::Setup => setup::setup(),
            Cmd::Run { args } => run(&root, args),
            Cmd::Test { no_vm } => test::test(no_vm),
            Cmd::Build { arch } => build(arch).map(drop),
            Cmd::Bench { quick, no_vm } => bench(&root, quick, no_vm),
            Cmd::Fuzz { seconds, targets } => fuzz_cmd(&root, seconds, targets),
            Cmd::Soak {
                seconds,
                frequency,
                interval,
                map_entries,
            } => soak(
                &root,
                &soak::Options {
                    seconds,
                    hz: frequency,
                    interval,
                    map_entries,
                    out: root.join(format!("target/soak-{seconds}s.md")),
                },
            ),
            Cmd::VmTest {
                kernel,
                cpu,
                hetero,
                icount,
                smp,
                command,
                filters,
            } => guest::binaries().and_then(|bins| {
                let guest = vm::Guest {
                    series: kernel,
                    cpu,
                    hetero,
                    icount,
                    smp,
                    timeout: Duration::from_secs(600),
                };
                match command {
                    Some(command) => guest::run_command(&guest, &bins, &command),
                    None => guest::run_tests(&guest, &bins, &filters).map(drop),
                }
            }),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

fn status(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {}", display(cmd));
    let st = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    if !st.success() {
        bail!("`{}` failed ({st})", display(cmd));
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn run(root: &Path, args: Vec<String>) -> Result<()> {
    setup::setup()?;
    status(Command::new("cargo").args(["build", "--release", "--package", "sampler"]))?;
    let bin = root.join("target/release/sampler");
    let args = if args.is_empty() {
        vec!["top".to_owned()]
    } else {
        args
    };
    let mut cmd = privileged(bin.to_str().context("non-UTF-8 path")?);
    cmd.args(&args);
    if !is_root() {
        eprintln!("xtask: sampler needs root (BPF and system-wide perf events): using sudo");
    }
    status(&mut cmd)
}

fn bench(root: &Path, quick: bool, no_vm: bool) -> Result<()> {
    setup::setup()?;
    status(Command::new("cargo").args(["build", "--release", "--package", "sampler"]))?;
    let guest = if no_vm {
        None
    } else {
        vm::ensure_host_tools()?;
        Some(build(Arch::Aarch64)?)
    };
    bench::run(
        root,
        root.join("target/release/sampler"),
        guest,
        &bench::Options { quick, no_vm },
    )
}

fn fuzz_cmd(root: &Path, seconds: u64, targets: Vec<String>) -> Result<()> {
    setup::setup()?;
    let targets = if targets.is_empty() {
        fuzz::TARGETS.iter().map(|t| (*t).to_owned()).collect()
    } else {
        targets
    };
    let ran = fuzz::run(root, &targets, seconds)?;
    let total: u64 = ran.iter().map(|r| r.executions).sum();
    for r in &ran {
        eprintln!(
            "xtask: fuzz: {:<14} {:>12} executions {:>6.0} s  corpus {}",
            r.target, r.executions, r.seconds, r.corpus
        );
    }
    eprintln!("xtask: fuzz: {total} executions in all, no crash");
    Ok(())
}

fn soak(root: &Path, o: &soak::Options) -> Result<()> {
    setup::setup()?;
    status(Command::new("cargo").args(["build", "--release", "--package", "sampler"]))?;
    soak::run(&root.join("target/release/sampler"), o)
}

fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new("cargo");
    c.args(args);
    c
}

/// Builds the release sampler for `arch`; returns the binary's path.
fn build(arch: Arch) -> Result<PathBuf> {
    setup::setup()?;
    ensure_target(arch.target())?;
    status(&mut cargo([
        "build",
        "--release",
        "--package",
        "sampler",
        "--target",
        arch.target(),
    ]))?;
    Ok(workspace_root()
        .join("target")
        .join(arch.target())
        .join("release/sampler"))
}
