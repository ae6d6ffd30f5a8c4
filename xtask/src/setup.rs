//! Installing what the chores need, only when it is missing (idempotent, fast when
//! everything is there): the BPF toolchain (`setup`), rustup targets, Debian packages
//! (through sudo when not root, refreshing the package lists when an install fails).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::{output, status};

/// The bpf-linker release the build recipe is measured with.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// The LLVM major bpf-linker is built against; must match the nightly's LLVM.
pub const LLVM_MAJOR: u32 = 22;

/// The nightly toolchain the BPF crate is built (and linted, and the fuzz targets run)
/// with, pinned in `sampler-ebpf/nightly-toolchain` where `sampler/build.rs` reads it
/// too: rustup's plain `nightly` moves on to a newer LLVM (23 since the autumn of
/// 2026), whose bitcode bpf-linker built against Debian's LLVM 22 cannot read.
pub const NIGHTLY: &str = trim_line(include_str!("../../sampler-ebpf/nightly-toolchain"));

/// `s` without its trailing newline (a `const fn`, for [`NIGHTLY`]).
const fn trim_line(s: &str) -> &str {
    match s.as_bytes() {
        [rest @ .., b'\n'] => match std::str::from_utf8(rest) {
            Ok(t) => t,
            Err(_) => s,
        },
        _ => s,
    }
}

/// `cargo +NIGHTLY`'s first argument.
pub fn plus_nightly() -> String {
    format!("+{NIGHTLY}")
}

pub fn is_root() -> bool {
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
pub fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

/// Whether `program` runs (`program arg`, e.g. `--version`).
pub fn has_command(program: &str, arg: &str) -> bool {
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
pub fn apt_install(packages: &[&str], why: &str) -> Result<()> {
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

pub fn setup() -> Result<()> {
    let started = Instant::now();
    // 1. The pinned nightly toolchain with rust-src (build-std=core for
    //    bpfel-unknown-none) and clippy (lints of the BPF crate).
    let installed = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with(NIGHTLY)) {
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
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
                NIGHTLY,
            ]))?;
        }
    }
    let nightly_llvm = output(Command::new("rustc").args([&plus_nightly(), "-vV"]))
        .and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("LLVM version: "))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    if !nightly_llvm.starts_with(&format!("{LLVM_MAJOR}.")) {
        anyhow::bail!(
            "{NIGHTLY} uses LLVM {nightly_llvm}, but bpf-linker is built against LLVM \
             {LLVM_MAJOR}: pin a nightly with LLVM {LLVM_MAJOR} in \
             sampler-ebpf/nightly-toolchain"
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
        "xtask: setup complete ({:.1} s): {NIGHTLY} rust-src, LLVM {LLVM_MAJOR}, bpf-linker {BPF_LINKER_VERSION}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn ensure_target(target: &str) -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == target) {
        status(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

/// Installs Debian's perf when missing: the peer of the benchmarks and of the function
/// view's test (`perf record` + `perf report` on the same workload).
pub fn ensure_perf() -> Result<()> {
    if has_command("perf", "--version") {
        return Ok(());
    }
    apt_install(
        &["linux-perf"],
        "the peer of the benchmarks and of the function view's test",
    )
}

/// Installs Debian's Go when missing: `go tool pprof`, the consumer the profile tests
/// hand sampler's pprof files to (none of ours).
pub fn ensure_go() -> Result<()> {
    if has_command("go", "version") {
        return Ok(());
    }
    apt_install(
        &["golang-go"],
        "go tool pprof, the consumer of the profile tests",
    )
}

/// inferno's own binaries (`inferno-collapse-perf`, `inferno-flamegraph`), the classic
/// flame-graph pipeline the profile benchmark compares with: installed with cargo
/// under `target/bench-tools` when missing; returns their folder.
pub fn ensure_inferno(root: &Path) -> Result<PathBuf> {
    let tools = root.join("target/bench-tools");
    let bin = tools.join("bin");
    if bin.join("inferno-flamegraph").exists() && bin.join("inferno-collapse-perf").exists() {
        return Ok(bin);
    }
    eprintln!("xtask: installing inferno's binaries (the flame-graph benchmark's peer)");
    status(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "--version",
                "0.12.8",
                "inferno",
                "--root",
            ])
            .arg(&tools),
    )?;
    Ok(bin)
}

/// Installs tmux when missing: the live view's terminal test and its benchmark run
/// `sampler top` in a real terminal.
pub fn ensure_tmux() -> Result<()> {
    if has_command("tmux", "-V") {
        return Ok(());
    }
    apt_install(&["tmux"], "for the live view in a real terminal")
}

/// Installs Debian's Prometheus server and promtool when missing: the exporter's
/// end-to-end test runs them on loopback.
pub fn ensure_prometheus() -> Result<()> {
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

/// Installs Debian's bpftrace when missing: the peer of the BPF cost benchmark (the
/// one-liners users would type instead of sampler).
pub fn ensure_bpftrace() -> Result<()> {
    if has_command("bpftrace", "--version") {
        return Ok(());
    }
    apt_install(&["bpftrace"], "the peer of the BPF cost benchmark")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_nightly_is_one_dated_toolchain_name() {
        assert!(
            NIGHTLY.starts_with("nightly-20") && NIGHTLY.len() == "nightly-2026-05-01".len(),
            "sampler-ebpf/nightly-toolchain holds {NIGHTLY:?}"
        );
        assert!(!NIGHTLY.contains(char::is_whitespace));
        assert_eq!(trim_line("a\n"), "a");
        assert_eq!(trim_line("a"), "a");
    }
}
