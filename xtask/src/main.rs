//! `cargo xtask`: the chores around sampler.
//!
//! - `setup`: installs what building the BPF programs needs, when missing: the nightly
//!   toolchain's `rust-src` (for `-Z build-std=core`), LLVM 22 (`llvm-22-dev`) and
//!   `bpf-linker` 0.13 built against it. Idempotent; a second run takes well under a
//!   second.
//! - `run [-- ARGS]`: setup, release build, then `sampler ARGS` (default: `top`, the
//!   live view) as root, through sudo when not root.
//! - `test`: setup, then formatting, clippy (host and BPF target), a smoke boot of the
//!   arm64 test bed, every host test (as root with the root-only unit tests), the fuzz
//!   targets and the soak briefly, the guest tests on the test bed (both kernel series,
//!   one and two PMUs), and `bench --quick`.
//! - `bench [--quick] [--no-vm]`: sampler against perf in one run (`bench.rs`); writes
//!   BENCHMARKS.md; `--quick` is the smoke run `test` ends with.
//! - `build --arch aarch64`: a static arm64 `sampler` with the BPF object built for it.
//! - `vm-test [--kernel 6.1|6.12] [--hetero] [--icount]`: boots the arm64 guest (a real
//!   `arm_pmu` driver under QEMU) and runs the in-guest tests there (`vm.rs`).

mod bench;
mod dts;
mod fuzz;
mod soak;
mod vm;

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// The bpf-linker release the build recipe is measured with.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major bpf-linker is built against; must match the nightly's LLVM.
const LLVM_MAJOR: u32 = 22;

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
        /// Two PMUs on disjoint CPU halves (like big.LITTLE).
        #[arg(long)]
        hetero: bool,
        /// Run QEMU with `-icount shift=0` so instructions are counted.
        #[arg(long)]
        icount: bool,
        /// Guest CPUs.
        #[arg(long, default_value_t = 4)]
        smp: u32,
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
            Cmd::Setup => setup(),
            Cmd::Run { args } => run(&root, args),
            Cmd::Test { no_vm } => test(no_vm),
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
                hetero,
                icount,
                smp,
                filters,
            } => guest_binaries().and_then(|bins| {
                vm_test(
                    &vm::Guest {
                        series: kernel,
                        hetero,
                        icount,
                        smp,
                        timeout: Duration::from_secs(600),
                    },
                    &bins,
                    &filters,
                )
                .map(drop)
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

fn is_root() -> bool {
    // The effective uid is the 3rd field of `Uid:` in /proc/self/status.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `cmd` as root: unchanged when we are root, else through sudo.
fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
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

/// Whether `program` runs (`program arg`, e.g. `--version`).
fn has_command(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs Debian packages (non-interactive, without recommends; sudo when not
/// root), refreshing the package lists and trying again when the first install fails
/// (a fresh machine may have none).
fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    let install = || {
        let mut c = privileged("apt-get");
        c.args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    status(&mut install())
        .or_else(|_| {
            status(privileged("apt-get").args(["update", "-q"]))?;
            status(&mut install())
        })
        .with_context(|| format!("installing {} ({why})", packages.join(" ")))
}

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn setup() -> Result<()> {
    let started = Instant::now();
    // 1. The nightly toolchain with rust-src (build-std=core for bpfel-unknown-none)
    //    and clippy (lints of the BPF crate).
    let installed = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("nightly")) {
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    for component in ["rust-src", "clippy"] {
        if !components.lines().any(|l| l.starts_with(component)) {
            status(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
    }
    let nightly_llvm = output(Command::new("rustc").args(["+nightly", "-vV"]))
        .and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("LLVM version: "))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    if !nightly_llvm.starts_with(&format!("{LLVM_MAJOR}.")) {
        eprintln!(
            "xtask: warning: the nightly toolchain uses LLVM {nightly_llvm}, bpf-linker is \
             built against LLVM {LLVM_MAJOR}; if linking the BPF object fails, install a \
             nightly with LLVM {LLVM_MAJOR}"
        );
    }

    // 2. bpf-linker, built against LLVM 22 from Debian.
    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        let prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
        // `llvm-22` alone has llvm-config; linking needs the dev package's libLLVM.so.
        let dev_files = ["bin/llvm-config", "lib/libLLVM.so"];
        if !dev_files
            .iter()
            .all(|f| Path::new(&prefix).join(f).exists())
        {
            let package = format!("llvm-{LLVM_MAJOR}-dev");
            apt_install(&[&package], "bpf-linker links against libLLVM")?;
        }
        status(
            Command::new("cargo")
                .args([
                    "install",
                    "--locked",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{LLVM_MAJOR}"),
                ])
                .env("LLVM_PREFIX", &prefix),
        )?;
    }
    eprintln!(
        "xtask: setup complete ({:.1} s): nightly rust-src, LLVM {LLVM_MAJOR}, bpf-linker {BPF_LINKER_VERSION}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run(root: &Path, args: Vec<String>) -> Result<()> {
    setup()?;
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
    setup()?;
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
    setup()?;
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
    setup()?;
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

fn test(no_vm: bool) -> Result<()> {
    setup()?;
    let started = Instant::now();
    status(&mut cargo(["fmt", "--all", "--", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    status(&mut cargo([
        "clippy",
        "--workspace",
        "--exclude",
        "sampler-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The BPF crate, linted for the only target it is built for (on the host, feature
    // unification would link std into it through sampler-common's `user` feature).
    status(&mut cargo([
        "+nightly",
        "clippy",
        "--package",
        "sampler-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The arm64-only code (user-page `mrs` reads) is linted for its target too.
    ensure_target(Arch::Aarch64.target())?;
    status(&mut cargo([
        "clippy",
        "--package",
        "sampler",
        "--all-targets",
        "--target",
        Arch::Aarch64.target(),
        "--",
        "-D",
        "warnings",
    ]))?;
    // The test bed next, briefly: a machine that cannot boot the guest (a missing QEMU
    // piece, no arm64 package lists, no kernel package) fails here, in minutes, not
    // after the host tests, the fuzz runs and the soak.
    let guest_bins = if no_vm {
        None
    } else {
        let bins = guest_binaries()?;
        smoke_boot(&bins)?;
        Some(bins)
    };
    // The live view's end-to-end test drives it in a real terminal; the exporter's
    // is scraped by a real Prometheus and checked with promtool.
    ensure_tmux()?;
    ensure_prometheus()?;
    // Unit tests that need root are `#[ignore]`d (the standard harness cannot skip at
    // run time); as root they run too. The integration tests decide for themselves
    // and report what could not run here as ignored, with the reason.
    let mut test = cargo([
        "test",
        "--workspace",
        "--exclude",
        "sampler-ebpf",
        "--no-fail-fast",
    ]);
    if is_root() {
        test.args(["--", "--include-ignored"]);
    }
    status(&mut test)?;
    if !is_root() {
        eprintln!(
            "xtask: not root: the tests that load BPF and open perf events did not run \
             (reported as ignored, with the reason); run `sudo -E cargo xtask test` to run them"
        );
    }
    // The fuzz targets briefly (`cargo xtask fuzz` runs them for long), and a minute
    // of the soak (`cargo xtask soak` runs an hour) with a small task map, so that it
    // is full and evicting for most of the minute.
    let root = workspace_root();
    let targets: Vec<String> = fuzz::TARGETS.iter().map(|t| (*t).to_owned()).collect();
    fuzz::run(&root, &targets, 15).context("cargo xtask fuzz --seconds 15")?;
    if is_root() {
        status(Command::new("cargo").args(["build", "--release", "--package", "sampler"]))?;
        soak::run(
            &root.join("target/release/sampler"),
            &soak::Options {
                seconds: 60,
                hz: 1000,
                interval: 2.0,
                map_entries: Some(256),
                out: root.join("target/soak-60s.md"),
            },
        )
        .context("cargo xtask soak --seconds 60 --interval 2 --map-entries 256")?;
    } else {
        eprintln!("xtask: not root: the one-minute soak was not run (it needs root)");
    }
    let guest_sampler = guest_bins.as_ref().map(|b| b.sampler.clone());
    if let Some(bins) = &guest_bins {
        for (series, hetero, icount) in GUEST_MATRIX {
            let guest = vm::Guest {
                series,
                hetero,
                icount,
                smp: if icount { 2 } else { 4 },
                timeout: Duration::from_secs(600),
            };
            let filters = if icount {
                vec!["icount".to_owned()]
            } else {
                vec![]
            };
            vm_test(&guest, bins, &filters)?;
        }
    } else {
        eprintln!("xtask: --no-vm: the arm64 guest tests were not run");
    }
    // Every benchmark once, briefly: fails only when one cannot run, never on a figure.
    if is_root() {
        status(Command::new("cargo").args(["build", "--release", "--package", "sampler"]))?;
        let root = workspace_root();
        bench::run(
            &root,
            root.join("target/release/sampler"),
            guest_sampler,
            &bench::Options { quick: true, no_vm },
        )
        .context("cargo xtask bench --quick")?;
    } else {
        eprintln!("xtask: not root: `cargo xtask bench --quick` was not run (it needs root)");
    }
    eprintln!(
        "xtask: all checks passed ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The guest runs of `cargo xtask test`: both kernel series with one PMU and with two,
/// all tests; then QEMU counting instructions (`-icount`: single-threaded TCG, much
/// slower) on two CPUs for the instruction tests only.
const GUEST_MATRIX: [(vm::Series, bool, bool); 5] = [
    (vm::Series::V6_1, false, false),
    (vm::Series::V6_1, true, false),
    (vm::Series::V6_12, false, false),
    (vm::Series::V6_12, true, false),
    (vm::Series::V6_12, false, true),
];

fn ensure_target(target: &str) -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == target) {
        status(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

/// Builds the release sampler for `arch`; returns the binary's path.
fn build(arch: Arch) -> Result<PathBuf> {
    setup()?;
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

/// Builds the guest test binary (`tests/guest.rs`) for `arch`; returns its path.
fn build_guest_tests(arch: Arch) -> Result<PathBuf> {
    let mut cmd = cargo([
        "test",
        "--release",
        "--package",
        "sampler",
        "--test",
        "guest",
        "--no-run",
        "--message-format=json-render-diagnostics",
        "--target",
        arch.target(),
    ]);
    eprintln!("xtask: {}", display(&cmd));
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("building the guest tests failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "guest")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo reported no guest test executable")
}

/// What a guest run boots with: the static sampler and the guest test binary.
struct GuestBinaries {
    sampler: PathBuf,
    tests: PathBuf,
}

/// Builds the guest binaries and checks the host tools, once for any number of runs.
fn guest_binaries() -> Result<GuestBinaries> {
    let sampler = build(Arch::Aarch64)?;
    let tests = build_guest_tests(Arch::Aarch64)?;
    vm::ensure_host_tools()?;
    Ok(GuestBinaries { sampler, tests })
}

/// The test bed's smoke test: fetches both kernel series (so that a missing package
/// fails now), then boots the 6.1 guest and runs one guest test, which must really run
/// there (the PMU driver came up and sampler found it).
fn smoke_boot(bins: &GuestBinaries) -> Result<()> {
    let started = Instant::now();
    for (series, ..) in GUEST_MATRIX {
        vm::assets(series)?;
    }
    let test = "core_pmus_are_found_whatever_their_names";
    let guest = vm::Guest {
        series: vm::Series::V6_1,
        hetero: false,
        icount: false,
        smp: 4,
        timeout: Duration::from_secs(300),
    };
    let output = vm_test(&guest, bins, &[test.to_owned()])
        .context("the arm64 test bed's smoke test failed")?;
    if !output.contains("1 passed; 0 failed; 0 ignored") {
        bail!("the arm64 test bed's smoke test did not run `{test}`:\n{output}");
    }
    eprintln!(
        "xtask: test bed smoke test passed ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs the guest tests (those matching `filters`) in `guest`; returns what they
/// printed.
fn vm_test(guest: &vm::Guest, bins: &GuestBinaries, filters: &[String]) -> Result<String> {
    let mut command = format!(
        "SAMPLER_BIN=/sampler SAMPLER_GUEST=1 SAMPLER_GUEST_PMUS={} SAMPLER_GUEST_ICOUNT={} \
         SAMPLER_GUEST_KERNEL={} /guest-tests --test-threads=1",
        if guest.hetero { 2 } else { 1 },
        u8::from(guest.icount),
        guest.series.name(),
    );
    for f in filters {
        if !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("test filter `{f}`: only letters, digits and _ are allowed");
        }
        command.push(' ');
        command.push_str(f);
    }
    let payload = vm::Payload {
        files: vec![
            (bins.sampler.clone(), "sampler"),
            (bins.tests.clone(), "guest-tests"),
        ],
        command,
    };
    let started = Instant::now();
    let run = vm::run(guest, &payload)?;
    print!("{}", run.output);
    let what = format!(
        "guest tests on {} ({}{})",
        guest.series.name(),
        if guest.hetero { "two PMUs" } else { "one PMU" },
        if guest.icount { ", icount" } else { "" }
    );
    if run.rc != 0 {
        bail!("{what} failed (exit status {})", run.rc);
    }
    eprintln!(
        "xtask: {what} passed ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(run.output)
}

/// Installs tmux when missing: the live view's terminal test and its benchmark run
/// `sampler top` in a real terminal.
pub(crate) fn ensure_tmux() -> Result<()> {
    if has_command("tmux", "-V") {
        return Ok(());
    }
    apt_install(&["tmux"], "for the live view in a real terminal")
}

/// Installs Debian's Prometheus server and promtool when missing: the exporter's
/// end-to-end test runs them on loopback.
pub(crate) fn ensure_prometheus() -> Result<()> {
    if has_command("prometheus", "--version") && has_command("promtool", "--version") {
        return Ok(());
    }
    apt_install(&["prometheus"], "for the exporter's end-to-end test")?;
    // Debian starts the service on install; the test runs its own.
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "prometheus"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    Ok(())
}
