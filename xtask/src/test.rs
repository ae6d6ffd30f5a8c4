//! `cargo xtask test`: what CI runs. Set-up, formatting, a smoke boot of the arm64
//! test bed (so that a machine that cannot run it fails in minutes), the lints, the host
//! tests, the fuzz targets and the soak briefly, the guest test matrix, and
//! `bench --quick`.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    Arch, bench, cargo, fuzz,
    guest::{self, GuestBinaries},
    setup::{
        ensure_go, ensure_perf, ensure_prometheus, ensure_target, ensure_tmux, is_root,
        plus_nightly, setup,
    },
    soak, status, vm, workspace_root,
};

pub fn test(no_vm: bool) -> Result<()> {
    setup()?;
    let started = Instant::now();
    status(&mut cargo(["fmt", "--all", "--", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    // The test bed first, briefly: a machine that cannot boot the guest (a missing QEMU
    // piece, no arm64 package lists, no kernel package) fails here, after the arm64
    // build, not after the lints, the host tests, the fuzz runs and the soak.
    let guest_bins = if no_vm {
        None
    } else {
        let bins = guest::binaries()?;
        smoke_boot(&bins)?;
        Some(bins)
    };
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
        plus_nightly().as_str(),
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
    // The live view's end-to-end test drives it in a real terminal; the exporter's
    // is scraped by a real Prometheus and checked with promtool.
    ensure_tmux()?;
    ensure_prometheus()?;
    // The function view's test compares with `perf report` on the same workload; the
    // profile tests hand their pprof files to `go tool pprof`.
    ensure_perf()?;
    ensure_go()?;
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
        for (series, cpu, hetero, icount) in GUEST_MATRIX {
            let guest = vm::Guest {
                series,
                cpu,
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
            guest::run_tests(&guest, bins, &filters)?;
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

/// The guest runs of `cargo xtask test`: the 6.1 and 6.12 series with one PMU and with
/// two, all tests, on QEMU's `max` CPU (FEAT_PMUv3p5: 64-bit event counters); 6.1 and
/// the 5.10 LTS (Debian 11's) on a Cortex-A57 (PMUv3 without 64-bit event counters, as
/// most deployed arm64 cores); then QEMU counting instructions (`-icount`:
/// single-threaded TCG, much slower) on two CPUs for the instruction tests only.
pub const GUEST_MATRIX: [(vm::Series, vm::CpuModel, bool, bool); 7] = [
    (vm::Series::V6_1, vm::CpuModel::Max, false, false),
    (vm::Series::V6_1, vm::CpuModel::Max, true, false),
    (vm::Series::V6_1, vm::CpuModel::CortexA57, false, false),
    (vm::Series::V5_10, vm::CpuModel::CortexA57, false, false),
    (vm::Series::V6_12, vm::CpuModel::Max, false, false),
    (vm::Series::V6_12, vm::CpuModel::Max, true, false),
    (vm::Series::V6_12, vm::CpuModel::Max, false, true),
];

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
        cpu: vm::CpuModel::Max,
        hetero: false,
        icount: false,
        smp: 4,
        timeout: Duration::from_secs(300),
    };
    let output = guest::run_tests(&guest, bins, &[test.to_owned()])
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
