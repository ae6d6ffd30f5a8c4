//! Tests that run inside the arm64 QEMU guest (`cargo xtask vm-test`), where the
//! kernel's real `arm_pmu` driver gives hardware events: the PMU is discovered
//! whatever its name, every CPU is planned and opened on its own PMU (one PMU, or two
//! on disjoint CPU halves), and overflow samples arrive and are attributed.
//!
//! The harness sets `SAMPLER_GUEST=1`, `SAMPLER_GUEST_PMUS` (1 or 2),
//! `SAMPLER_GUEST_ICOUNT` (QEMU counts instructions), `SAMPLER_GUEST_KERNEL` (5.10,
//! 6.1 or 6.12) and `SAMPLER_GUEST_CPU` (max or cortex-a57). Elsewhere these tests are
//! reported as ignored, with the command that runs them.

mod common;

use common::{Busy, Skip, TestResult, sampler, skip, stderr};
use serde_json::Value;
use std::io::Write as _;

struct GuestEnv {
    pmus: u32,
    icount: bool,
    kernel: String,
    /// QEMU's CPU model: `max` (FEAT_PMUv3p5, 64-bit event counters) or
    /// `cortex-a57` (PMUv3: only the cycle counter has 64 bits).
    cpu: String,
}

impl GuestEnv {
    /// arm64 gained `kernel.perf_user_access` (user-space counter reads) in 5.17.
    fn user_access(&self) -> bool {
        self.kernel != "5.10"
    }
}

fn guest() -> Result<GuestEnv, Skip> {
    if std::env::var("SAMPLER_GUEST").as_deref() != Ok("1") {
        return Err(skip(
            "runs inside the arm64 guest with a real PMU driver: `cargo xtask vm-test`",
        ));
    }
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    Ok(GuestEnv {
        pmus: var("SAMPLER_GUEST_PMUS").parse().unwrap_or(1),
        icount: var("SAMPLER_GUEST_ICOUNT") == "1",
        kernel: var("SAMPLER_GUEST_KERNEL"),
        cpu: var("SAMPLER_GUEST_CPU"),
    })
}

/// [`guest`], except under `-icount`, whose run covers instruction counts only.
fn guest_without_icount() -> Result<GuestEnv, Skip> {
    let g = guest()?;
    if g.icount {
        return Err(skip(
            "not run under QEMU -icount (the icount run covers instruction counts only)",
        ));
    }
    Ok(g)
}

fn json(args: &[&str]) -> Value {
    let out = sampler(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// A PMU's `type` from sysfs.
fn pmu_type(name: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/bus/event_source/devices/{name}/type"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A JSON array of strings.
fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// The core PMU of each CPU, from `sampler pmus --json`.
fn pmu_of_cpu() -> Vec<(u64, String)> {
    let doc = json(&["pmus", "--json"]);
    let mut v = Vec::new();
    for p in doc["pmus"].as_array().unwrap() {
        if p["core"] == true {
            for c in p["cpus"].as_array().unwrap() {
                v.push((c.as_u64().unwrap(), p["name"].as_str().unwrap().to_owned()));
            }
        }
    }
    v.sort();
    v
}

fn core_pmus_are_found_whatever_their_names() -> TestResult {
    let g = guest()?;
    let doc = json(&["pmus", "--json"]);
    let core = strings(&doc["core_pmus"]);
    let cpus = pmu_of_cpu();
    if g.pmus == 1 {
        assert_eq!(core.len(), 1, "{doc}");
        assert!(core[0].starts_with("armv8_pmuv3"), "{core:?}");
        assert_eq!(doc["heterogeneous"], false);
        assert_eq!(cpus.len(), 4, "one PMU covers all 4 CPUs: {cpus:?}");
    } else {
        assert_eq!(core, ["armv8_cortex_a53", "armv8_cortex_a57"]);
        assert_eq!(doc["heterogeneous"], true);
        let names: Vec<&str> = cpus.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "armv8_cortex_a53",
                "armv8_cortex_a53",
                "armv8_cortex_a57",
                "armv8_cortex_a57"
            ]
        );
    }
    Ok(())
}

fn plan_puts_each_cpu_on_its_own_pmu() -> TestResult {
    let g = guest()?;
    let owners = pmu_of_cpu();
    let doc = json(&["plan", "-e", "cycles", "--json"]);
    let plan = doc["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 4);
    for e in plan {
        let cpu = e["cpu"].as_u64().unwrap();
        let owner = &owners.iter().find(|(c, _)| *c == cpu).unwrap().1;
        assert_eq!(e["pmu"].as_str(), Some(owner.as_str()), "{e}");
        let expected = match (g.pmus, g.kernel.as_str()) {
            (1, _) => "legacy",
            (_, "6.1") => "pmu-alias",
            _ => "extended",
        };
        assert_eq!(e["encoding"], expected, "{e}");
    }
    // The armv8 event number behind each generic event, on every PMU, one or two.
    let doc = json(&[
        "plan",
        "-e",
        "cycles,instructions,cache-references,cache-misses,branch-misses",
        "--json",
    ]);
    let plan = doc["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 5 * 4);
    for e in plan {
        let expected = match e["event"].as_str().unwrap() {
            "cycles" => 0x11,
            "instructions" => 0x08,
            "cache-references" => 0x04,
            "cache-misses" => 0x03,
            _ => 0x10,
        };
        assert_eq!(e["pmu_event"], expected, "{e}");
    }
    Ok(())
}

fn cycles_samples_arrive_on_every_cpu_through_its_pmu() -> TestResult {
    let g = guest()?;
    let owners = pmu_of_cpu();
    // The emulated cycle counter stands still while a CPU waits for interrupts (WFI),
    // so every CPU gets a busy loop.
    let _busy: Vec<Busy> = owners
        .iter()
        .map(|&(cpu, _)| Busy::pinned_to(cpu as u32))
        .collect();
    let (freq, secs) = (200.0, 2.0);
    let out = sampler(&["stat", "-e", "cycles", "-F", "200", "-d", "2", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("cpu-clock"),
        "no software fall-back with a PMU: {}",
        stderr(&out)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["source"], "hardware", "{doc}");
    for c in doc["cpus"].as_array().unwrap() {
        let cpu = c["cpu"].as_u64().unwrap();
        let owner = &owners.iter().find(|(o, _)| *o == cpu).unwrap().1;
        assert_eq!(c["event"], "cycles");
        assert_eq!(c["pmu"].as_str(), Some(owner.as_str()), "{c}");
        // The open went through the fall-back chain where needed: 6.1's arm_pmu has
        // no extended type, so two PMUs open through their own alias there.
        if g.pmus == 2 {
            let expected = if g.kernel == "6.1" {
                "pmu-alias"
            } else {
                "extended"
            };
            assert_eq!(c["encoding"], expected, "{c}");
        }
        let samples = c["samples"].as_f64().unwrap();
        let expected = freq * secs;
        assert!(
            samples >= 0.5 * expected && samples <= 1.5 * expected,
            "CPU {cpu}: {samples} samples, expected about {expected}"
        );
    }
    let _ = g.icount;
    Ok(())
}

fn busy_task_gets_its_cpus_samples_and_cycles() -> TestResult {
    let _g = guest()?;
    let busy = Busy::pinned_to(1);
    let doc = json(&["stat", "-e", "cycles", "-F", "200", "-d", "2", "--json"]);
    let cpu1 = doc["cpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cpu"] == 1)
        .unwrap()
        .clone();
    let on_cpu1: Vec<&Value> = doc["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["cpu"] == 1)
        .collect();
    let busy_rows: Vec<&&Value> = on_cpu1.iter().filter(|t| t["tgid"] == busy.pid()).collect();
    let busy_samples: f64 = busy_rows
        .iter()
        .map(|t| t["samples"].as_f64().unwrap())
        .sum();
    let busy_cycles: f64 = busy_rows
        .iter()
        .map(|t| t["period_sum"].as_f64().unwrap())
        .sum();
    let all_cycles: f64 = on_cpu1
        .iter()
        .map(|t| t["period_sum"].as_f64().unwrap())
        .sum();
    let cpu1_samples = cpu1["samples"].as_f64().unwrap();
    assert!(
        busy_samples >= 0.9 * cpu1_samples,
        "busy task: {busy_samples} of CPU 1's {cpu1_samples} samples"
    );
    assert!(
        busy_cycles >= 0.9 * all_cycles && busy_cycles > 0.0,
        "busy task: {busy_cycles} of CPU 1's {all_cycles} task cycles"
    );
    Ok(())
}

fn icount_instructions_per_task_give_ipc_one() -> TestResult {
    let g = guest()?;
    if !g.icount {
        return Err(skip(
            "QEMU counts instructions only with -icount: `cargo xtask vm-test --icount`",
        ));
    }
    let busy = Busy::pinned_to(1);
    let doc = json(&[
        "stat",
        "-e",
        "{cycles,instructions}",
        "-F",
        "100",
        "-d",
        "2",
        "--json",
    ]);
    assert_eq!(doc["members"], serde_json::json!(["instructions"]));
    let row = doc["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tgid"] == busy.pid() && t["cpu"] == 1)
        .expect("busy task sampled on CPU 1")
        .clone();
    let cycles = row["period_sum"].as_f64().unwrap();
    let instructions = row["counts"]["instructions"].as_f64().unwrap();
    // Under -icount shift=0 one instruction is one cycle: the per-task deltas the
    // kernel attributed must give an IPC of 1.
    assert!(cycles > 0.0);
    let ipc = instructions / cycles;
    assert!(
        (0.9..=1.1).contains(&ipc),
        "IPC {ipc} ({instructions} / {cycles})"
    );
    Ok(())
}

/// The function view's workload (`tests/workload/main.rs`), which `cargo xtask
/// vm-test` builds for arm64 and puts at `SAMPLER_WORKLOAD`.
struct Workload(std::process::Child);

impl Workload {
    fn pinned_to(cpu: u32, mode: &str, secs: f64) -> Result<Self, Skip> {
        let bin = std::env::var("SAMPLER_WORKLOAD").map_err(|_| {
            skip("needs the test workload at SAMPLER_WORKLOAD: `cargo xtask vm-test` puts it there")
        })?;
        let child = std::process::Command::new(bin)
            .args([mode, &secs.to_string()])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start the workload");
        let w = Self(child);
        sampler::sys::pin_to_cpu(w.pid() as i32, cpu).expect("pin the workload");
        Ok(w)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const ALPHA: &str = "workload::work::alpha_hot";
const BETA: &str = "workload::work::beta_hot";

/// Samples of process `pid`'s stacks whose innermost frame is `leaf`, and the
/// second frame of its busiest such stack.
fn leaf_of(doc: &Value, pid: u32, leaf: &str) -> (u64, String) {
    let mine: Vec<&Value> = doc["stacks"]
        .as_array()
        .expect("stacks with -g")
        .iter()
        .filter(|s| s["tgid"] == pid && s["frames"][0]["function"] == leaf)
        .collect();
    let n = mine.iter().map(|s| s["samples"].as_u64().unwrap()).sum();
    let caller = mine
        .iter()
        .max_by_key(|s| s["samples"].as_u64())
        .and_then(|s| s["frames"][1]["function"].as_str())
        .unwrap_or("")
        .to_owned();
    (n, caller)
}

fn functions_and_stacks_on_hardware_cycles_on_every_cpu() -> TestResult {
    let g = guest_without_icount()?;
    let owners = pmu_of_cpu();
    let workloads = owners
        .iter()
        .map(|&(cpu, _)| Workload::pinned_to(cpu as u32, "cpu", 60.0))
        .collect::<Result<Vec<_>, _>>()?;
    let doc = json(&[
        "stat",
        "-e",
        "{cycles,instructions}",
        "-F",
        "200",
        "-d",
        "3",
        "-g",
        "--json",
    ]);
    assert_eq!(doc["source"], "hardware", "{doc}");
    for (w, (cpu, pmu)) in workloads.iter().zip(&owners) {
        let (a, via_a) = leaf_of(&doc, w.pid(), ALPHA);
        let (b, via_b) = leaf_of(&doc, w.pid(), BETA);
        let mine: Vec<&Value> = doc["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["tgid"] == w.pid())
            .take(3)
            .collect();
        assert!(
            a > 0 && b > 0,
            "CPU {cpu} ({pmu}): alpha {a}, beta {b} samples; its busiest stacks {mine:?}; \
             functions {:?}; locations {}; warnings {}",
            doc["functions"].as_array().map(|f| &f[..f.len().min(5)]),
            doc["locations"],
            doc["warnings"]
        );
        assert_eq!(via_a, "workload::via_alpha", "CPU {cpu}");
        assert_eq!(via_b, "workload::via_beta", "CPU {cpu}");
    }
    let alpha = doc["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == ALPHA)
        .expect("alpha_hot row")
        .clone();
    assert_eq!(alpha["module"], "workload");
    assert!(alpha["period_sum"].as_u64().unwrap() > 0, "{alpha}");
    assert!(alpha["ipc"].as_f64().is_some(), "{alpha}");
    // Two core types: the function's IPC on each.
    if g.pmus == 2 {
        let by_pmu = alpha["ipc_by_pmu"].as_object().expect("ipc_by_pmu");
        let mut pmus: Vec<&str> = owners.iter().map(|(_, p)| p.as_str()).collect();
        pmus.sort_unstable();
        pmus.dedup();
        assert_eq!(by_pmu.len(), pmus.len(), "{alpha}");
        // (QEMU counts instructions only under -icount, whose run checks the value.)
        assert!(by_pmu.values().all(|v| v.as_f64().is_some()), "{alpha}");
    }
    Ok(())
}

/// Where the guest's profile goes on the serial console, for the host to read with
/// `go tool pprof` (`cargo xtask vm-test` decodes it).
const PROFILE_BEGIN: &str = "SAMPLER-GUEST-PPROF-BEGIN";
const PROFILE_END: &str = "SAMPLER-GUEST-PPROF-END";

fn record_writes_a_pprof_of_hardware_cycles() -> TestResult {
    let _g = guest_without_icount()?;
    let owners = pmu_of_cpu();
    let _workloads = owners
        .iter()
        .map(|&(cpu, _)| Workload::pinned_to(cpu as u32, "cpu", 60.0))
        .collect::<Result<Vec<_>, _>>()?;
    let file = "/tmp/guest.pb.gz";
    let _ = std::fs::remove_file(file);
    let out = sampler(&[
        "record",
        "-e",
        "{cycles,instructions}",
        "-F",
        "200",
        "-g",
        "-d",
        "3",
        "-o",
        file,
    ]);
    assert!(out.status.success(), "record: {}", stderr(&out));
    // Read back here first: both hot functions, cycles as the sampling event.
    let doc = json(&["report", file, "--json", "--top", "1000"]);
    assert_eq!(doc["event"], "cycles", "{doc}");
    for f in [ALPHA, BETA] {
        assert!(
            doc["functions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["function"] == f && r["samples"].as_u64() > Some(0)),
            "{f} not in the guest's profile: {doc}"
        );
    }
    // Then to the host, which hands it to go tool pprof.
    use base64::Engine as _;
    let bytes = std::fs::read(file).unwrap();
    let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
    println!("{PROFILE_BEGIN}");
    for chunk in text.as_bytes().chunks(76) {
        println!("{}", String::from_utf8_lossy(chunk));
    }
    println!("{PROFILE_END}");
    Ok(())
}

fn icount_functions_give_ipc_one() -> TestResult {
    let g = guest()?;
    if !g.icount {
        return Err(skip(
            "QEMU counts instructions only with -icount: `cargo xtask vm-test --icount`",
        ));
    }
    let _w = Workload::pinned_to(1, "cpu", 60.0)?;
    let doc = json(&[
        "stat",
        "-e",
        "{cycles,instructions}",
        "-F",
        "100",
        "-d",
        "2",
        "--functions",
        "--json",
    ]);
    for name in [ALPHA, BETA] {
        let row = doc["functions"]
            .as_array()
            .expect("functions with --functions")
            .iter()
            .find(|f| f["function"] == name)
            .unwrap_or_else(|| panic!("no row for {name}: {doc}"))
            .clone();
        // Under -icount shift=0 one instruction is one cycle, per function too.
        let ipc = row["ipc"].as_f64().expect("IPC per function");
        assert!((0.9..=1.1).contains(&ipc), "{name}: IPC {ipc} ({row})");
        assert!(row["samples"].as_u64().unwrap() >= 20, "{row}");
    }
    Ok(())
}

fn a_member_the_pmu_lacks_is_reported_not_fatal() -> TestResult {
    let _g = guest_without_icount()?;
    let out = sampler(&[
        "stat",
        "-e",
        "{cycles,instructions}",
        "-F",
        "100",
        "-d",
        "0.5",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`instructions` is not supported on CPU 0-3 (ENOENT): not counted there"),
        "{err}"
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["source"], "hardware");
    assert!(doc["samples"].as_u64().unwrap() > 0, "cycles still sampled");
    assert!(
        doc["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] == "cycles")
    );
    Ok(())
}

fn more_events_than_counters_are_multiplexed_and_scaled() -> TestResult {
    let _g = guest_without_icount()?;
    let _busy: Vec<Busy> = pmu_of_cpu()
        .iter()
        .map(|&(c, _)| Busy::pinned_to(c as u32))
        .collect();
    // The sampling cycles plus nine counting groups of the cycles event (0x11): more
    // than the PMU's counters, so the kernel rotates them.
    let events = format!("cycles{}", ",r11".repeat(9));
    let out = sampler(&["stat", "-e", &events, "-F", "100", "-d", "2", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counted: Vec<&Value> = doc["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "r11")
        .collect();
    assert_eq!(counted.len(), 9 * 4, "nine groups on four CPUs");
    let multiplexed: Vec<&&Value> = counted
        .iter()
        .filter(|e| e["coverage"].as_f64().unwrap() < 0.99)
        .collect();
    assert!(
        !multiplexed.is_empty(),
        "no event was multiplexed: {counted:?}"
    );
    for e in multiplexed {
        let (value, scaled) = (e["value"].as_f64().unwrap(), e["scaled"].as_f64().unwrap());
        let coverage = e["coverage"].as_f64().unwrap();
        assert!(coverage > 0.0, "{e}");
        assert!(
            (scaled - value / coverage).abs() <= 0.01 * scaled + 1.0,
            "scaled {scaled} != value {value} / coverage {coverage}"
        );
    }
    let out = sampler(&["stat", "-e", &events, "-F", "100", "-d", "0.5"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("COVERAGE"), "{table}");
    Ok(())
}

fn a_group_larger_than_the_pmu_is_reported_and_the_rest_counted() -> TestResult {
    let _g = guest_without_icount()?;
    // cpu-clock samples; a counting group of eight cycles events (0x11) asks for more
    // counters than the PMU has (7). Kernels either refuse the member that does not fit
    // at open (EINVAL: the group is cut, the rest counted) or accept the group, which
    // then never gets on the PMU. Either way it is reported and sampling goes on.
    let events = format!("cpu-clock,{{r11{}}}", ",r11".repeat(7));
    let out = sampler(&["stat", "-e", &events, "-F", "100", "-d", "1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["samples"].as_u64().unwrap() > 0, "sampling went on");
    let r11: Vec<&Value> = doc["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "r11")
        .collect();
    if err.contains("`r11` does not fit in its group on CPU 0-3 (EINVAL") {
        assert!(r11.len() < 8 * 4);
        assert!(
            r11.iter().all(|e| e["running"].as_u64().unwrap() > 0),
            "what fits is counted"
        );
    } else {
        assert_eq!(r11.len(), 8 * 4, "{err}");
        assert!(
            r11.iter()
                .all(|e| e["running"] == 0 && e["scaled"].is_null())
        );
        let warnings = doc["warnings"].as_array().unwrap();
        assert!(
            warnings.iter().any(|w| w
                .as_str()
                .unwrap()
                .starts_with("the group of `r11` never ran on CPU 0-3")),
            "{warnings:?}"
        );
        let table = sampler(&["stat", "-e", &events, "-F", "100", "-d", "0.3"]);
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(
            text.contains("warning: the group of `r11` never ran"),
            "{text}"
        );
    }
    Ok(())
}

/// Restores the test bed's sysctls when a test changed them.
struct Sysctls(Vec<(&'static str, String)>);

impl Sysctls {
    fn set(values: &[(&'static str, &str)]) -> Self {
        let mut saved = Vec::new();
        for (path, value) in values {
            saved.push((*path, std::fs::read_to_string(path).unwrap()));
            std::fs::write(path, value).unwrap();
        }
        Self(saved)
    }
}

impl Drop for Sysctls {
    /// Restores in the reverse order of setting: the kernel refuses a new
    /// `perf_event_max_sample_rate` while `perf_cpu_time_max_percent` is 0 (EINVAL),
    /// so the rate must be put back before the percentage is.
    fn drop(&mut self) {
        for (path, value) in self.0.iter().rev() {
            let restored = std::fs::write(path, value.trim());
            assert!(
                restored.is_ok() || std::thread::panicking(),
                "cannot restore {path} to {}: {restored:?}",
                value.trim()
            );
        }
    }
}

fn kernel_throttling_is_reported() -> TestResult {
    let _g = guest_without_icount()?;
    // Let the kernel police sampling time (1 % of the CPU): emulated interrupts are slow,
    // so at 20 kHz it lowers the maximum sample rate, i.e. throttles.
    let _restore = Sysctls::set(&[
        ("/proc/sys/kernel/perf_cpu_time_max_percent", "1"),
        ("/proc/sys/kernel/perf_event_max_sample_rate", "100000"),
    ]);
    let _busy = Busy::pinned_to(0);
    let out = sampler(&[
        "stat", "-e", "cycles", "-C", "0", "-F", "20000", "-d", "2", "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = strings(&doc["warnings"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("the kernel throttled sampling")),
        "{warnings:?}"
    );
    assert!(doc["samples"].as_u64().unwrap() > 0);
    Ok(())
}

fn opening_walks_the_encoding_chain_on_the_real_kernel() -> TestResult {
    let g = guest()?;
    if g.pmus != 2 || g.icount {
        return Err(skip(
            "needs two PMUs without -icount: the one-PMU chain is only the legacy encoding",
        ));
    }
    // Plan as if for 6.12, so the extended type comes first on every CPU: 6.1's
    // arm_pmu answers ENOENT and the open moves on to the PMU's own alias.
    let doc = json(&[
        "stat", "-e", "cycles", "--kernel", "6.12", "-F", "100", "-d", "0.5", "--json",
    ]);
    let expected = if g.kernel == "6.1" {
        "pmu-alias"
    } else {
        "extended"
    };
    for c in doc["cpus"].as_array().unwrap() {
        assert_eq!(c["encoding"], expected, "{c}");
        assert!(c["samples"].as_u64().unwrap() > 0 || c["cpu"] != 0, "{c}");
    }
    assert_eq!(doc["source"], "hardware");
    Ok(())
}

fn period_mode_samples_every_n_cycles() -> TestResult {
    let _g = guest_without_icount()?;
    let busy = Busy::pinned_to(1);
    // Cycles run at an emulated 1 GHz: one sample every 10^7 cycles is ~100 a second,
    // and every sample's period is exactly the one asked for.
    let doc = json(&[
        "stat", "-e", "cycles", "-C", "1", "-c", "10000000", "-d", "1", "--json",
    ]);
    assert_eq!(doc["period"], 10_000_000);
    assert!(doc["frequency_hz"].is_null());
    let samples = doc["cpus"][0]["samples"].as_f64().unwrap();
    assert!((50.0..=150.0).contains(&samples), "{samples} samples");
    let row = doc["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tgid"] == busy.pid())
        .unwrap()
        .clone();
    // Each sample stands for one period between two overflows, give or take how late
    // each interrupt came. The row's count also holds what the counter counted after
    // its last sample, up to the end of the run (the counters are read at the end,
    // not at each sample): at most what the CPU counted beyond its own samples'
    // periods.
    let (period_sum, samples) = (
        row["period_sum"].as_f64().unwrap(),
        row["samples"].as_f64().unwrap(),
    );
    let nominal = samples * 10_000_000.0;
    let cpu_read = doc["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cpu"] == 1 && e["index"] == 0)
        .unwrap()["value"]
        .as_f64()
        .unwrap();
    let tail = (cpu_read - doc["samples"].as_f64().unwrap() * 10_000_000.0).max(0.0);
    assert!(
        period_sum >= 0.98 * nominal && period_sum - nominal <= 0.02 * nominal + tail,
        "{period_sum} cycles in {samples} samples of 10,000,000 (the CPU counted \
         {cpu_read}, {tail} beyond its samples' periods)"
    );
    Ok(())
}

/// Whether the reader's own copy of a check row's event ran with its thread (at least
/// half of the thread's CPU time, as the scheduler gave it). CI saw, twice in many
/// runs, a reader's copy count a fraction of a millisecond (or nothing) through a
/// window its thread ran for seconds (BPF had the thread's full time): the kernel
/// had not kept the copy scheduled with the thread. Such a row's read() is no
/// reference, so it decides nothing; the row says so in its note.
fn copy_ran_with_its_thread(row: &Value) -> bool {
    let ran = sampler::model::check::ran_with_its_thread(
        row["running_ns"].as_u64().unwrap(),
        row["thread_ns"].as_u64().unwrap(),
    );
    if !ran {
        eprintln!("the reader's copy did not run with its thread, another run decides: {row}");
    }
    ran
}

/// `sampler check --json` with `args`, as a document.
fn check_doc(args: &[&str]) -> Value {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = sampler(&all);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            stderr(&out),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn the_cross_check_holds_at_one_percent() -> TestResult {
    guest_without_icount()?;
    // The software clock at the default rate: BPF (samples, and the switch programs
    // at each context switch), read() and the window agree within the default 1 %.
    // TCG's slow context switches leave up to 1.6 % in a 1 s run now and then
    // (measured): each CPU must pass in one of up to five 2 s runs, 2 s apart (the
    // host's preemptions, below, come in stretches).
    let mut passed = std::collections::BTreeSet::new();
    for run in 0..5 {
        if run > 0 {
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        let doc = check_doc(&["-e", "cpu-clock", "-d", "2"]);
        let checks = doc["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 4, "{doc}");
        for c in checks {
            if !copy_ran_with_its_thread(c) {
                continue;
            }
            let diff = c["rel_diff"].as_f64().unwrap();
            assert!(diff <= 0.03, "{c}");
            if diff <= 0.01 {
                passed.insert(c["cpu"].as_u64().unwrap());
            } else {
                eprintln!("cpu-clock check above 1 %: {c}");
            }
        }
        if passed.len() == 4 {
            break;
        }
    }
    assert_eq!(passed.len(), 4, "CPUs within 1 %: {passed:?}");
    // Hardware cycles, sampled every 1e8 (10 Hz), with the task clock in the group.
    // QEMU's TCG PMU has a race: its overflow timer callback can run while
    // exception_return has dropped the big lock between pmu_op_start and
    // pmu_op_finish, and the counter it lands on gains a random amount (QEMU 7.2 and
    // 10.0 alike, target/arm/helper-a64.c). At 100 Hz and more, most readers' own
    // counters show 2-13e9 cycles in one second of a 1 GHz virtual CPU (measured); at
    // 10 Hz a row is hit now and then. Without the race, QEMU's cycles are its virtual
    // nanoseconds (1 GHz), and the race only ever adds to a counter. The reader's
    // task clock, a member of the same sampling group, is the witness: software, it is
    // never hit, so its rows agree within 1 % (but for the host's preemptions, below),
    // and how far BPF's side and read()'s side stand apart for the clock is how far
    // they may stand apart for cycles. On a side the race hit, cycles / task clock moves away
    // from the other side's: apart by more than 0.4 % (clean rows: 0.3 % at most,
    // measured under CI load; cycles themselves lag the clock by 0.1-1 % there, so
    // comparing cycles with the clock on one side alone flags clean rows), the CPU's
    // cycles row is reported and left out. Every other CPU's cycles must agree across
    // BPF, read() and the page within 1 %. Up to six runs, 2 s apart, until every CPU
    // has had a run the race and the host left alone (a CI run under load once had
    // every CPU's task clock 1.1-2.9 % apart in four runs back to back).
    let mut valid = std::collections::BTreeSet::new();
    for run in 0..6 {
        if run > 0 {
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        let doc = check_doc(&["-e", "{cycles,task-clock}", "-c", "100000000", "-d", "2"]);
        let checks = doc["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 8, "{doc}");
        for cpu in 0..4u64 {
            let row = |event: &str| {
                checks
                    .iter()
                    .find(|c| c["cpu"] == cpu && c["event"] == event)
                    .unwrap_or_else(|| panic!("no {event} row for CPU {cpu}: {doc}"))
            };
            let (cycles, clock) = (row("cycles"), row("task-clock"));
            if !copy_ran_with_its_thread(cycles) || !copy_ran_with_its_thread(clock) {
                continue;
            }
            assert!(clock["read"].as_f64().unwrap() > 1e9, "{clock}");
            // Both sides' windows end at context switches, a few microseconds apart
            // (BPF at the switch's tracepoint and end, perf's per-task events in
            // between). The guest's 4 virtual CPUs share this machine's 2 cores: when
            // the host preempts a virtual CPU inside that gap, milliseconds of virtual
            // time land in one side's window only, and the clock and cycles move
            // together by that much. That comes to -0.6 to +1.3 % on a 2 s row now and
            // then (measured on 5.10, 9 runs: one row in 20 above 0.8 %; the same runs
            // with 2 virtual CPUs, one per host core, stay within 0.16 %), and CI saw
            // +1.13 % on 6.1's task clock too: the host's scheduling, not the guest's
            // kernel. So a run whose clock or cycles row is 1-3 % apart does not
            // validate the CPU, and another run must; more than 3 % fails at once.
            let agrees = |what: &str, diff: f64, rows: String| {
                assert!(diff <= 0.03, "{rows}");
                if diff > 0.01 {
                    eprintln!("{what} check above 1 % on CPU {cpu} this run: {rows}");
                    return false;
                }
                true
            };
            if !agrees(
                "task-clock",
                clock["rel_diff"].as_f64().unwrap(),
                clock.to_string(),
            ) {
                continue;
            }
            let ratio = |side: &str| cycles[side].as_f64().unwrap() / clock[side].as_f64().unwrap();
            if (ratio("bpf") - ratio("read")).abs() > 0.004 {
                eprintln!("QEMU's PMU race hit CPU {cpu}: {cycles} {clock}");
                continue;
            }
            // Cycles / clock agree on both sides here: the clock vouches for the window.
            let diff = cycles["rel_diff"].as_f64().unwrap();
            if !agrees("cycles", diff, format!("{cycles} {clock}")) {
                continue;
            }
            valid.insert(cpu);
        }
        if valid.len() == 4 {
            break;
        }
    }
    assert_eq!(
        valid.len(),
        4,
        "CPUs with a run that validated them (QEMU's race and the host's preemptions left them alone): {valid:?}"
    );
    Ok(())
}

fn check_reads_counters_from_user_space_with_mrs() -> TestResult {
    let g = guest_without_icount()?;
    // Page against read(): the same event, two ways, back to back (the BPF column is
    // the test above's). The page is read first, then read(): a syscall, whose
    // exception returns are where QEMU's PMU race (see the test above) adds a random
    // amount to a counter. At 200 Hz it lands inside that pair now and then (CI saw
    // read() 25 % above the page read just before it). The race only ever adds, so a
    // page above read() by more than 1 % fails at once; one below it by more than
    // 1 % asks for another run, and each CPU must agree within 1 % in one of up to
    // five runs. A row whose reader's copy did not run with its thread decides
    // nothing (its page has no counter then, and read() is used, with the reason).
    // Without user access (5.10) a CPU counts as agreed when its reader's copy ran
    // with its thread and read() counted.
    let mut agreed = std::collections::BTreeSet::new();
    for run in 0..5 {
        if run > 0 {
            // The copies that got no counter came in stretches of a few seconds.
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        check_mrs_run(&g, &mut agreed);
        if agreed.len() == 4 {
            break;
        }
    }
    assert_eq!(
        agreed.len(),
        4,
        "CPUs whose page and read() agreed (without user access: whose read() copy ran \
         with its thread): {agreed:?}"
    );
    Ok(())
}

/// One `sampler check` run of [`check_reads_counters_from_user_space_with_mrs`]: the
/// CPUs whose page and `read()` agreed within 1 % go into `agreed` (without user
/// access, those whose `read()` copy ran with its thread).
fn check_mrs_run(g: &GuestEnv, agreed: &mut std::collections::BTreeSet<u64>) {
    let out = sampler(&[
        "check",
        "-e",
        "cycles",
        "-F",
        "200",
        "-d",
        "1",
        "--latency",
        "5000",
        "--json",
    ]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            stderr(&out),
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let checks = doc["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 4);
    if !g.user_access() {
        // 5.10: no user-space counter access at all; read() is used, and said why.
        for c in checks {
            assert_eq!(c["method"], "read", "{c}");
            if copy_ran_with_its_thread(c) {
                assert!(c["read"].as_f64().unwrap() > 1e8, "{c}");
                agreed.insert(c["cpu"].as_u64().unwrap());
            }
        }
        let notes = strings(&doc["notes"]);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("no kernel.perf_user_access")),
            "{notes:?}"
        );
        return;
    }
    for c in checks {
        if !copy_ran_with_its_thread(c) {
            // A copy the kernel kept off the counters has no counter in its page
            // (index 0) when it is read: read() is used then, and said why.
            let note = c["note"].as_str().unwrap_or_default();
            assert!(
                c["method"] == "mrs" || note.contains("did not keep it on a counter"),
                "{c}"
            );
            continue;
        }
        // perf_user_access=1 and the PMU's rdpmc bit: read with mrs. The system-wide
        // sampling event holds the cycle counter, so the reader's copy gets an event
        // counter, PMEVCNTR<n>_EL0, read 32 bits wide (long only on the cycle counter).
        assert_eq!(c["method"], "mrs", "{c}");
        // Without FEAT_PMUv3p5 (Cortex-A57) the 64-bit copy gets no counter (or is
        // refused): the reader says so and reads 32 bits, never silently zero.
        let note = c["note"].as_str().unwrap_or_default();
        if g.cpu == "cortex-a57" {
            assert!(
                note.contains("FEAT_PMUv3p5") && note.contains("32 bits"),
                "{c}"
            );
            assert_eq!(c["pmc_width"], 32, "{c}");
        } else {
            assert!(!note.contains("FEAT_PMUv3p5"), "{c}");
        }
        let index = c["page_index"].as_u64().unwrap();
        assert!((1..=32).contains(&index), "{c}");
        assert_eq!(c["pmc_width"], if index == 32 { 64 } else { 32 }, "{c}");
        let (page, read) = (c["userpage"].as_f64().unwrap(), c["read"].as_f64().unwrap());
        assert!(read > 1e8, "{c}");
        assert!(page <= 1.01 * read, "the page read above read(): {c}");
        if read - page <= 0.01 * read {
            agreed.insert(c["cpu"].as_u64().unwrap());
        } else {
            eprintln!("read() above the page read by more than 1 % (QEMU's race?): {c}");
        }
        // Both methods were timed: the page read and the read() syscall.
        let l = &c["latency"];
        assert!(l["userpage_ns"].as_f64().unwrap() > 0.0, "{c}");
        assert!(l["read_ns"].as_f64().unwrap() > 0.0, "{c}");
        assert!(l["speedup"].as_f64().unwrap() > 0.0, "{c}");
        eprintln!("latency cpu {}: {l}", c["cpu"]);
    }
}

/// A per-thread event on this thread with `config1` user-access bits, mapped.
fn self_event(
    type_: u32,
    config: u64,
    config1: u64,
) -> (std::os::fd::OwnedFd, sampler::kernel::userpage::UserPage) {
    use sampler::sys::PerfSys as _;
    use std::os::fd::AsFd as _;
    let mut attr = perf_event_open_sys::bindings::perf_event_attr {
        type_,
        size: size_of::<perf_event_open_sys::bindings::perf_event_attr>() as u32,
        config,
        read_format: sampler::events::plan::READ_FORMAT,
        ..Default::default()
    };
    attr.config1 = config1;
    let fd = sampler::sys::RealSys
        .perf_event_open(&attr, 0, -1, None)
        .expect("open a self-monitoring event");
    let page = sampler::kernel::userpage::UserPage::map(fd.as_fd()).expect("map its page");
    (fd, page)
}

fn user_page_reads_32_and_64_bit_counters_and_event_counters() -> TestResult {
    let g = guest_without_icount()?;
    if !g.user_access() {
        return Err(skip(
            "no user-space counter access before arm64's 5.17 (kernel.perf_user_access); \
             check_reads_counters_from_user_space_with_mrs covers the read() fallback",
        ));
    }
    use std::os::fd::AsFd as _;
    let cpu = 0;
    sampler::sys::pin_to_cpu(0, cpu).unwrap();
    let owners = pmu_of_cpu();
    let pmu = &owners.iter().find(|(c, _)| *c == u64::from(cpu)).unwrap().1;
    let pmu_type = pmu_type(pmu);
    // The cycle counter (PMCCNTR_EL0) with rdpmc and long (config1 bits 1 and 0): 64
    // bits; then, with the cycle counter taken, an event counter (PMEVCNTR<n>_EL0)
    // with rdpmc only: 32 bits.
    let (fd64, page64) = self_event(pmu_type, 0x11, 0b11);
    let (fd32, page32) = self_event(pmu_type, 0x11, 0b10);
    let mut x = 0u64;
    for _ in 0..2_000_000 {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    let sys = sampler::sys::RealSys;
    let mut indexes = Vec::new();
    for (fd, page, width) in [(&fd64, &page64, 64), (&fd32, &page32, 32)] {
        let (fields, _, _) = page.snapshot().unwrap();
        assert_eq!(fields.pmc_width, width, "{fields:?}");
        assert_ne!(fields.index, 0, "readable on its own PMU's CPU");
        indexes.push(fields.index);
        // page, read(), page: the syscall's value lies between the two user reads.
        let (before, method) =
            sampler::kernel::userpage::read_event(&sys, fd.as_fd(), Some(page)).unwrap();
        let via_read = sampler::kernel::userpage::read_syscall(&sys, fd.as_fd()).unwrap();
        let (after, _) =
            sampler::kernel::userpage::read_event(&sys, fd.as_fd(), Some(page)).unwrap();
        assert_eq!(method, sampler::kernel::userpage::Method::Mrs);
        assert!(before.value > 1_000_000, "{before:?}");
        assert!(
            before.value <= via_read.value && via_read.value <= after.value,
            "{before:?} <= {via_read:?} <= {after:?}"
        );
    }
    assert_eq!(indexes[0], 32, "the cycle counter first: {indexes:?}");
    assert!(
        (1..=31).contains(&indexes[1]),
        "then PMEVCNTR<n>: {indexes:?}"
    );
    let _ = g;
    Ok(())
}

fn a_reader_on_the_other_pmus_cpus_sees_index_0_and_falls_back() -> TestResult {
    let g = guest_without_icount()?;
    if g.pmus != 2 {
        return Err(skip("needs two PMUs: `cargo xtask vm-test --hetero`"));
    }
    if !g.user_access() {
        return Err(skip(
            "no user-space counter access before arm64's 5.17 (kernel.perf_user_access); \
             check_reads_counters_from_user_space_with_mrs covers the read() fallback",
        ));
    }
    use std::os::fd::AsFd as _;
    let a53 = pmu_type("armv8_cortex_a53");
    // This thread runs on CPU 2 (the a57 half) with an a53 event.
    sampler::sys::pin_to_cpu(0, 2).unwrap();
    let (fd, page) = self_event(a53, 0x11, 0b11);
    let (fields, _, _) = page.snapshot().unwrap();
    assert_eq!(fields.index, 0, "{fields:?}");
    let sys = sampler::sys::RealSys;
    let (_, method) = sampler::kernel::userpage::read_event(&sys, fd.as_fd(), Some(&page)).unwrap();
    assert_eq!(method, sampler::kernel::userpage::Method::Read);
    Ok(())
}

/// A reader whose event belongs to one PMU (the a53 half), moved between the CPUs of
/// both PMUs every few hundred microseconds while it reads its counter through the
/// page in restartable sequences, with the other PMU's counters busy with counts of
/// their own. Every value read from the page lies between the `read()`s around it
/// (none comes from the other PMU's counter at the same index), and reads on the
/// other PMU's CPUs find index 0.
fn rseq_page_reads_never_use_the_other_pmus_counter() -> TestResult {
    let g = guest_without_icount()?;
    if g.pmus != 2 {
        return Err(skip("needs two PMUs: `cargo xtask vm-test --hetero`"));
    }
    if !g.user_access() {
        return Err(skip(
            "no user-space counter access before arm64's 5.17 (kernel.perf_user_access)",
        ));
    }
    use sampler::kernel::userpage::{ReadStats, RseqRead, decode, read_syscall};
    use sampler::sys::PerfSys as _;
    use std::os::fd::AsFd as _;
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    };
    let (a53, a57) = (pmu_type("armv8_cortex_a53"), pmu_type("armv8_cortex_a57"));
    // The a57 half's counters count cycles for the whole run: the cycle counter and
    // event counters hold values unrelated to the reader's.
    let mut busy = Vec::new();
    for cpu in [2, 3] {
        for _ in 0..3 {
            let attr = perf_event_open_sys::bindings::perf_event_attr {
                type_: a57,
                size: size_of::<perf_event_open_sys::bindings::perf_event_attr>() as u32,
                config: 0x11,
                read_format: sampler::events::plan::READ_FORMAT,
                ..Default::default()
            };
            busy.push(
                sampler::sys::RealSys
                    .perf_event_open(&attr, -1, cpu, None)
                    .expect("a per-CPU a57 cycles counter"),
            );
        }
    }
    let tid = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mover = std::thread::spawn({
        let (tid, stop) = (Arc::clone(&tid), Arc::clone(&stop));
        move || {
            let mut moves = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = tid.load(Ordering::Relaxed);
                if t != 0 {
                    let cpu = [0, 2, 1, 3][moves as usize % 4];
                    sampler::sys::pin_to_cpu(t as i32, cpu).expect("move the reader");
                    moves += 1;
                }
                std::thread::yield_now();
            }
            moves
        }
    });
    let sys = sampler::sys::RealSys;
    let (fd, page) = self_event(a53, 0x11, 0b10);
    let rseq = sampler::sys::rseq::Rseq::current().expect("an rseq area");
    tid.store(sampler::sys::gettid(), Ordering::Relaxed);
    let mut stats = ReadStats::default();
    let mut disagree = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(4) {
        let before = read_syscall(&sys, fd.as_fd()).unwrap().value;
        let mut values = Vec::with_capacity(256);
        for _ in 0..256 {
            match page.read_rseq(&rseq) {
                Some(RseqRead::Read(f, counter, ts)) => match decode(&f, counter, ts) {
                    Some(c) => {
                        stats.success += 1;
                        values.push((c.value, f.index));
                    }
                    None => stats.zero += 1,
                },
                Some(RseqRead::Abort) => stats.abort += 1,
                Some(RseqRead::Zero) | None => stats.zero += 1,
            }
        }
        let after = read_syscall(&sys, fd.as_fd()).unwrap().value;
        let mut last = before;
        for (v, index) in values {
            if v < last || v > after {
                disagree.push((before, v, after, index));
            }
            last = last.max(v);
        }
    }
    tid.store(0, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let moves = mover.join().unwrap();
    drop(busy);
    eprintln!(
        "{moves} moves; page reads {stats:?}; disagreeing {}",
        disagree.len()
    );
    assert!(
        disagree.is_empty(),
        "page values outside the read()s around them (before, value, after, index): {:?}",
        &disagree[..disagree.len().min(10)]
    );
    assert!(moves > 1000, "{moves}");
    // On the a53 CPUs the counter is read; on the a57 CPUs the page says index 0.
    assert!(stats.success > 1000 && stats.zero > 1000, "{stats:?}");
    // Migrations that land inside a sequence restart it (counted as aborts). Under
    // QEMU they are rare: an interrupt is taken only between translated blocks, and
    // the sequence's blocks are short next to the `mrs` that ends it. The kernel's
    // restart itself is tested deterministically by the unit test
    // rseq_sequence_restarts_when_the_thread_sleeps_inside_it, in every guest.
    Ok(())
}

/// Writes a CPU's `online` file; brought back online when dropped.
struct Offline(u32);

impl Offline {
    fn set(cpu: u32, online: bool) {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/online");
        std::fs::write(&path, if online { "1" } else { "0" })
            .unwrap_or_else(|e| panic!("write {path}: {e}"));
    }

    fn take(cpu: u32) -> Self {
        Self::set(cpu, false);
        Self(cpu)
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        Self::set(self.0, true);
    }
}

fn cpu_hotplug_closes_and_reopens_events_and_keeps_counts() -> TestResult {
    let _g = guest_without_icount()?;
    use std::{
        process::{Command, Stdio},
        thread::sleep,
        time::Duration,
    };
    let cpu = pmu_of_cpu().iter().map(|c| c.0 as u32).max().unwrap();
    assert!(cpu > 0, "needs a second CPU to take offline");
    let busy = Busy::pinned_to(cpu);
    let _other = Busy::pinned_to(0);
    let spawn = |args: &[&str]| {
        Command::new(common::sampler_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A whole run (counts across the gap) and a live one (what each interval saw).
    let stat = spawn(&["stat", "-e", "cycles", "-F", "500", "-d", "6", "--json"]);
    let mut top = spawn(&[
        "top", "--json", "-e", "cycles", "-F", "500", "-i", "0.5", "-n", "12",
    ]);
    // Both are sampling once top has printed its first interval (start-up is slow
    // under emulation); most of stat's run is then still ahead.
    let mut top_out = std::io::BufReader::new(top.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut top_out, &mut first).unwrap();
    sleep(Duration::from_millis(2000));
    let down = Offline::take(cpu);
    sleep(Duration::from_millis(1200));
    drop(down);
    sleep(Duration::from_millis(300));
    sampler::sys::pin_to_cpu(busy.pid() as i32, cpu).unwrap();
    let stat = stat.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut top_out, &mut rest).unwrap();
    let top = top.wait_with_output().unwrap();
    for out in [&stat, &top] {
        let err = stderr(out);
        assert!(out.status.success(), "{err}");
        assert!(err.contains(&format!("CPU {cpu} went offline")), "{err}");
        assert!(err.contains(&format!("CPU {cpu} is back online")), "{err}");
    }

    // Counts before the gap are kept: on that CPU, the sampling event's read() total
    // stands to what the BPF program summed over the whole run as it does on the
    // other CPUs. About half the run was counted before the CPU went down: losing that
    // would put the CPU's ratio some 40 % below the others'.
    let doc: Value = serde_json::from_slice(&stat.stdout).unwrap();
    let checks = doc["check"].as_array().unwrap();
    let ratio = |c: &Value| c["read"].as_f64().unwrap() / c["bpf"].as_f64().unwrap();
    let check = checks
        .iter()
        .find(|c| c["cpu"] == cpu)
        .unwrap_or_else(|| panic!("no check row for CPU {cpu}: {doc}"));
    let mut others: Vec<f64> = checks
        .iter()
        .filter(|c| c["cpu"] != cpu)
        .map(ratio)
        .collect();
    others.sort_by(f64::total_cmp);
    let baseline = others[others.len() / 2];
    let _ = writeln!(
        std::io::stderr(),
        "hotplugged CPU {cpu}: read/bpf {:.3} vs {baseline:.3} on the others; checks {}",
        ratio(check),
        doc["check"]
    );
    assert!(check["bpf"].as_f64().unwrap() > 0.0, "{check}");
    // And BPF agrees with read() on every CPU, the hotplugged one included: each sample
    // stands for the counter's growth since the previous one (a reopened counter's
    // from 0), so only the counts after a CPU's last sample are missing. (Measured:
    // at most 0.73 % over 16 CPUs in four guest runs, 0.1-0.2 % typically; with the
    // nominal periods read() ran 6-16 % above.)
    for c in checks {
        assert!(
            (ratio(c) - 1.0).abs() <= 0.02,
            "BPF against read() on CPU {}: {c}",
            c["cpu"]
        );
    }
    assert!(
        (ratio(check) / baseline - 1.0).abs() <= 0.15,
        "CPU {cpu}'s counts do not add up across the gap: {check} (others' read/bpf {others:?})"
    );
    let warnings = strings(&doc["warnings"]);
    assert!(
        warnings.iter().any(|w| w.contains("went offline")),
        "{warnings:?}"
    );

    // Per interval: CPU 0 sampled throughout; the hotplugged CPU sampled before, had
    // nothing while down, and sampled again after.
    let lines: Vec<Value> = format!("{first}{rest}")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12);
    let samples = |doc: &Value, c: u32| {
        doc["cpus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["cpu"] == c)
            .map_or(0, |r| r["samples"].as_u64().unwrap())
    };
    let on_cpu: Vec<u64> = lines.iter().map(|d| samples(d, cpu)).collect();
    let _ = writeln!(
        std::io::stderr(),
        "samples on CPU {cpu} per interval: {on_cpu:?}"
    );
    for (i, d) in lines.iter().enumerate() {
        assert!(samples(d, 0) > 0, "interval {i}: CPU 0 stopped: {d}");
    }
    let gap = on_cpu
        .iter()
        .position(|&n| n == 0)
        .expect("an interval without samples");
    assert!(gap >= 2, "{on_cpu:?}");
    assert!(on_cpu[..gap].iter().all(|&n| n > 0), "{on_cpu:?}");
    assert!(*on_cpu.last().unwrap() > 0, "sampling resumed: {on_cpu:?}");
    Ok(())
}

fn perf_user_access_off_falls_back_to_read_and_says_why() -> TestResult {
    let g = guest_without_icount()?;
    if !g.user_access() {
        return Err(skip(
            "no user-space counter access before arm64's 5.17 (kernel.perf_user_access); \
             check_reads_counters_from_user_space_with_mrs covers the read() fallback",
        ));
    }
    // With user-space counter access off, the page shows index 0 (or no rdpmc bit):
    // every row is read with read(), and the document says why and how to turn it on.
    // A row whose reader's copy did not run with its thread (CI saw one count nothing
    // through its thread's 502 ms; a later run saw the copies of all four CPUs do
    // so in two runs in a row) says nothing of read(): each CPU's read() must count
    // in one of up to five runs.
    let _off = Sysctls::set(&[("/proc/sys/kernel/perf_user_access", "0")]);
    let mut counted = std::collections::BTreeSet::new();
    for run in 0..5 {
        if run > 0 {
            // The copies that got no counter came in stretches of a few seconds.
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        let out = sampler(&["check", "-e", "cycles", "-F", "200", "-d", "0.5", "--json"]);
        let doc: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        let checks = doc["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 4, "{doc}");
        for c in checks {
            assert_eq!(c["method"], "read", "{c}");
            assert!(c["userpage"].is_null(), "{c}");
            if copy_ran_with_its_thread(c) {
                assert!(c["read"].as_f64().unwrap() > 0.0, "{c}");
                counted.insert(c["cpu"].as_u64().unwrap());
            }
        }
        let notes = strings(&doc["notes"]);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("perf_user_access is 0") && n.contains("sysctl -w")),
            "{notes:?}"
        );
        if counted.len() == 4 {
            break;
        }
    }
    assert_eq!(
        counted.len(),
        4,
        "CPUs whose read() copy ran with its thread and counted: {counted:?}"
    );
    Ok(())
}

crate::test_main!(
    functions_and_stacks_on_hardware_cycles_on_every_cpu,
    record_writes_a_pprof_of_hardware_cycles,
    icount_functions_give_ipc_one,
    core_pmus_are_found_whatever_their_names,
    plan_puts_each_cpu_on_its_own_pmu,
    cycles_samples_arrive_on_every_cpu_through_its_pmu,
    busy_task_gets_its_cpus_samples_and_cycles,
    icount_instructions_per_task_give_ipc_one,
    a_member_the_pmu_lacks_is_reported_not_fatal,
    more_events_than_counters_are_multiplexed_and_scaled,
    a_group_larger_than_the_pmu_is_reported_and_the_rest_counted,
    kernel_throttling_is_reported,
    opening_walks_the_encoding_chain_on_the_real_kernel,
    period_mode_samples_every_n_cycles,
    check_reads_counters_from_user_space_with_mrs,
    the_cross_check_holds_at_one_percent,
    user_page_reads_32_and_64_bit_counters_and_event_counters,
    a_reader_on_the_other_pmus_cpus_sees_index_0_and_falls_back,
    rseq_page_reads_never_use_the_other_pmus_counter,
    cpu_hotplug_closes_and_reopens_events_and_keeps_counts,
    perf_user_access_off_falls_back_to_read_and_says_why,
);
