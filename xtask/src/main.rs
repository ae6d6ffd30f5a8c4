//! `cargo xtask`: the chores around sampler.
//!
//! - `setup`: installs what building the BPF programs needs, when missing: the nightly
//!   toolchain's `rust-src` (for `-Z build-std=core`), LLVM 22 (`llvm-22-dev`) and
//!   `bpf-linker` 0.13 built against it. Idempotent; a second run takes well under a
//!   second.
//! - `run [-- ARGS]`: setup, release build, then `sampler ARGS` (default: `top`, the
//!   live view) as root, through sudo when not root.
//! - `test`: setup, then formatting, clippy (host and BPF target) and every test.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
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
    Test,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = env::set_current_dir(&root)
        .with_context(|| format!("cd {}", root.display()))
        .and_then(|()| match cli.command {
            Cmd::Setup => setup(),
            Cmd::Run { args } => run(&root, args),
            Cmd::Test => test(),
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
            status(privileged("apt-get").arg("update").arg("-q"))?;
            status(
                privileged("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends", &package])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
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

fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new("cargo");
    c.args(args);
    c
}

fn test() -> Result<()> {
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
    status(&mut cargo([
        "test",
        "--workspace",
        "--exclude",
        "sampler-ebpf",
        "--no-fail-fast",
    ]))?;
    if !is_root() {
        eprintln!(
            "xtask: not root: the tests that load BPF and open perf events were skipped \
             (each printed SKIPPED with its reason); run `sudo -E cargo xtask test` to run them"
        );
    }
    eprintln!(
        "xtask: all checks passed ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
