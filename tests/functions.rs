//! Where the samples land: the function view and call stacks, for real, on a test
//! workload these tests build with frame pointers (`tests/workload/main.rs`): its two
//! hot functions split 2:1 through different callers, a system-call loop, a process
//! that exits before the run ends, a stripped copy, a deleted one, JIT code with and
//! without a perf map, a C++ program, and `perf record` + `perf report` on the same
//! workload as the peer.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

mod common;
use common::{
    TestResult, require_root, sampler_bin, skip,
    workload::{Running, workload},
};

const ALPHA: &str = "workload::work::alpha_hot";
const BETA: &str = "workload::work::beta_hot";

/// `sampler stat --json` with `args`, parsed.
fn stat_json(args: &[&str]) -> Value {
    let out = Command::new(sampler_bin())
        .arg("stat")
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("run sampler");
    assert!(
        out.status.success(),
        "sampler stat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stat --json is JSON")
}

fn functions(doc: &Value) -> &Vec<Value> {
    doc["functions"].as_array().expect("functions in the JSON")
}

fn samples_of(doc: &Value, function: &str) -> u64 {
    functions(doc)
        .iter()
        .filter(|f| f["function"] == function)
        .map(|f| f["samples"].as_u64().unwrap())
        .sum()
}

/// Per leaf function, the samples of process `pid`'s stacks.
fn leaf_shares(doc: &Value, pid: u32) -> Vec<(String, f64)> {
    let mut by_leaf: std::collections::BTreeMap<String, u64> = Default::default();
    let mut total = 0u64;
    for s in doc["stacks"].as_array().expect("stacks in the JSON") {
        if s["tgid"] != pid {
            continue;
        }
        let n = s["samples"].as_u64().unwrap();
        total += n;
        let leaf = s["frames"][0]["function"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        *by_leaf.entry(leaf).or_default() += n;
    }
    let mut v: Vec<(String, f64)> = by_leaf
        .into_iter()
        .map(|(f, n)| (f, n as f64 * 100.0 / total.max(1) as f64))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn hot_functions_split_two_to_one_with_their_call_chains() -> TestResult {
    let _root = require_root()?;
    let bin = workload("workload", false)?;
    let w = Running::start(&bin, "cpu", 4.0);
    let doc = stat_json(&["-d", "3", "-g"]);
    let (a, b) = (samples_of(&doc, ALPHA), samples_of(&doc, BETA));
    assert!(a + b > 1000, "few samples in the hot functions: {a} + {b}");
    let alpha_pct = a as f64 * 100.0 / (a + b) as f64;
    assert!(
        (alpha_pct - 200.0 / 3.0).abs() < 5.0,
        "alpha_hot has {alpha_pct:.1}% of the hot samples, not 66.7 ± 5"
    );
    let row = functions(&doc)
        .iter()
        .find(|f| f["function"] == ALPHA)
        .unwrap();
    assert_eq!(row["module"], "workload");
    assert_eq!(row["kernel"], false);
    // The call chains: each hot function through its own caller, up to main.
    let stacks = doc["stacks"].as_array().unwrap();
    for (leaf, caller) in [(ALPHA, "workload::via_alpha"), (BETA, "workload::via_beta")] {
        let chain = stacks
            .iter()
            .filter(|s| s["tgid"] == w.pid() && s["frames"][0]["function"] == leaf)
            .max_by_key(|s| s["samples"].as_u64())
            .unwrap_or_else(|| panic!("no stack of {leaf}"));
        let names: Vec<&str> = chain["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["function"].as_str().unwrap())
            .collect();
        assert_eq!(names.get(1), Some(&caller), "{names:?}");
        assert_eq!(names.get(2), Some(&"workload::main"), "{names:?}");
    }
    // With stacks, main's total holds both chains.
    let main = functions(&doc)
        .iter()
        .find(|f| f["function"] == "workload::main")
        .map_or(0, |f| f["total_samples"].as_u64().unwrap());
    assert!(main >= (a + b) * 95 / 100, "main total {main} < {a} + {b}");
    assert_eq!(doc["locations"]["stacks"], true);
    Ok(())
}

/// The frames of process `pid`'s most sampled stack under each leaf of `leaves`.
fn top_chains(doc: &Value, pid: u32, leaves: &[&str]) -> Vec<Vec<String>> {
    let stacks = doc["stacks"].as_array().expect("stacks in the JSON");
    leaves
        .iter()
        .map(|leaf| {
            let chain = stacks
                .iter()
                .filter(|s| s["tgid"] == pid && s["frames"][0]["function"] == *leaf)
                .max_by_key(|s| s["samples"].as_u64())
                .unwrap_or_else(|| panic!("no stack of {leaf}"));
            chain["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["function"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

/// The user frames most of process `pid`'s samples have, by the samples of each
/// user chain (whatever the kernel frames above it).
fn top_user_chain(doc: &Value, pid: u32) -> Vec<String> {
    let mut by_chain: std::collections::HashMap<Vec<String>, u64> = Default::default();
    for s in doc["stacks"].as_array().expect("stacks in the JSON") {
        if s["tgid"] != pid {
            continue;
        }
        let user = s["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kernel"] == false)
            .map(|f| f["function"].as_str().unwrap().to_owned())
            .collect();
        *by_chain.entry(user).or_default() += s["samples"].as_u64().unwrap();
    }
    by_chain
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(chain, _)| chain)
        .unwrap_or_default()
}

/// On x86-64 the program walks user stacks itself, from the sample's registers or,
/// in the kernel, from those the task entered it with; the kernel's walk of the same
/// frames (`--bench-skip own-user-walk`) must give the same chains, to the
/// outermost frame.
fn the_own_user_stack_walk_records_what_the_kernel_walk_does() -> TestResult {
    let _root = require_root()?;
    let bin = workload("workload", false)?;
    let w = Running::start(&bin, "cpu", 6.0);
    let sys = Running::start(&bin, "sys", 6.0);
    let args = |own: bool| {
        let mut a = vec!["-d", "2", "-g", "--bpf-stats"];
        if !own {
            a.extend(["--bench-skip", "own-user-walk"]);
        }
        a
    };
    let (own, kernel) = (stat_json(&args(true)), stat_json(&args(false)));
    let (own_chains, kernel_chains) = (
        top_chains(&own, w.pid(), &[ALPHA, BETA]),
        top_chains(&kernel, w.pid(), &[ALPHA, BETA]),
    );
    assert_eq!(own_chains, kernel_chains, "own walk vs the kernel's");
    // Samples in system calls: their user chains, through the workload's loop.
    let sys_chain = top_user_chain(&own, sys.pid());
    assert_eq!(sys_chain, top_user_chain(&kernel, sys.pid()));
    assert!(
        sys_chain.iter().any(|f| f == "workload::syscalls"),
        "{sys_chain:?}"
    );
    for chain in &own_chains {
        assert!(
            chain.len() >= 3 && chain.iter().any(|f| f == "workload::main"),
            "{chain:?}"
        );
    }
    // (A few stacks may be lost to the kernel's stack map's bucket collisions.)
    for doc in [&own, &kernel] {
        let lost = &doc["locations"];
        assert_eq!(lost["stack_full"], 0, "{lost}");
        assert_eq!(lost["stack_errors"], 0, "{lost}");
    }
    Ok(())
}

fn a_process_that_exits_before_the_run_ends_is_still_named() -> TestResult {
    let _root = require_root()?;
    let bin = workload("workload", false)?;
    // Starts with the run and is gone a second and a half before it ends.
    let mut w = Running::start(&bin, "cpu", 1.5);
    let doc = stat_json(&["-d", "3", "--functions"]);
    assert!(w.0.try_wait().unwrap().is_some(), "the workload still runs");
    let a = samples_of(&doc, ALPHA);
    assert!(
        a > 300,
        "alpha_hot has {a} samples: the exited process was not named"
    );
    assert!(doc.get("stacks").is_none(), "no stacks without -g");
    Ok(())
}

fn a_stripped_binary_shows_module_plus_offset() -> TestResult {
    let _root = require_root()?;
    let bin = workload("workload-stripped", true)?;
    let _w = Running::start(&bin, "cpu", 3.0);
    let doc = stat_json(&["-d", "2", "--functions"]);
    let rows: Vec<&Value> = functions(&doc)
        .iter()
        .filter(|f| f["module"] == "workload-stripped")
        .collect();
    let samples: u64 = rows.iter().map(|f| f["samples"].as_u64().unwrap()).sum();
    assert!(samples > 500, "stripped module rows: {rows:?}");
    for r in &rows {
        let name = r["function"].as_str().unwrap();
        assert!(
            name.starts_with("workload-stripped+0x"),
            "a stripped address is named {name}"
        );
    }
    assert!(doc["locations"]["unnamed"]["stripped"].as_u64().unwrap() > 0);
    Ok(())
}

fn a_system_call_loop_lands_in_kernel_functions() -> TestResult {
    let _root = require_root()?;
    let bin = workload("workload", false)?;
    let w = Running::start(&bin, "sys", 4.0);
    let doc = stat_json(&["-d", "3", "-g"]);
    let stacks = doc["stacks"].as_array().unwrap();
    let mine: Vec<&Value> = stacks.iter().filter(|s| s["tgid"] == w.pid()).collect();
    let total: u64 = mine.iter().map(|s| s["samples"].as_u64().unwrap()).sum();
    let in_kernel: u64 = mine
        .iter()
        .filter(|s| s["frames"][0]["kernel"] == true)
        .map(|s| s["samples"].as_u64().unwrap())
        .sum();
    assert!(total > 500, "the loop has {total} samples");
    assert!(
        in_kernel * 100 > total * 30,
        "{in_kernel} of {total} samples in the kernel"
    );
    // A kernel chain climbs to the user caller of the system call.
    assert!(
        mine.iter().any(|s| s["frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["function"] == "workload::syscalls")),
        "no kernel stack reaches workload::syscalls"
    );
    let kernel_fn = functions(&doc)
        .iter()
        .find(|f| f["kernel"] == true && f["samples"].as_u64() > Some(0))
        .expect("a kernel function row");
    assert!(!kernel_fn["function"].as_str().unwrap().starts_with('['));
    Ok(())
}

fn jit_code_is_named_from_its_perf_map_or_marked_without_one() -> TestResult {
    let _root = require_root()?;
    let bin = workload("workload", false)?;
    let _named = Running::start_args(&bin, &["jit", "4"]);
    let _unnamed = Running::start_args(&bin, &["jit", "4", "nomap"]);
    let doc = stat_json(&["-d", "2", "--functions"]);
    let jit = functions(&doc)
        .iter()
        .find(|f| f["function"] == "jitted_spin_loop")
        .expect("the JIT map's name");
    assert_eq!(jit["module"], "[jit]");
    assert!(jit["samples"].as_u64().unwrap() > 500, "{jit}");
    let anon: u64 = functions(&doc)
        .iter()
        .filter(|f| f["module"] == "[anon]")
        .map(|f| f["samples"].as_u64().unwrap())
        .sum();
    assert!(
        anon > 500,
        "code without a JIT map: {anon} samples in [anon]"
    );
    assert!(doc["locations"]["unnamed"]["anonymous"].as_u64().unwrap() > 0);
    Ok(())
}

/// Functions the hot loops inline (the workload's `beta_step` and std's arithmetic).
const INLINED: [&str; 5] = [
    "workload::work::beta_step",
    "core::hint::black_box",
    "<u64>::wrapping_mul",
    "<u64>::wrapping_add",
    "<u64>::unchecked_add",
];

fn inlined_functions_are_named_with_inlined() -> TestResult {
    let _root = require_root()?;
    let bin = workload("workload", false)?;
    let _w = Running::start(&bin, "cpu", 4.0);
    let inlined = |doc: &Value| -> u64 { INLINED.iter().map(|f| samples_of(doc, f)).sum() };
    let doc = stat_json(&["-d", "2", "--inlined"]);
    let (inner, outer) = (
        inlined(&doc),
        samples_of(&doc, ALPHA) + samples_of(&doc, BETA),
    );
    assert!(
        inner > 500 && inner > outer,
        "--inlined: {inner} samples in inlined functions, {outer} in alpha_hot/beta_hot: {:?}",
        &functions(&doc)[..functions(&doc).len().min(6)]
    );
    // Without it, the functions the code was inlined into.
    let doc = stat_json(&["-d", "1", "--functions"]);
    assert_eq!(inlined(&doc), 0);
    assert!(samples_of(&doc, ALPHA) + samples_of(&doc, BETA) > 500);
    Ok(())
}

fn cpp_names_are_demangled() -> TestResult {
    let _root = require_root()?;
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("workload-cpp");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workload/cpp.cpp");
    match Command::new("g++")
        .args(["-O2", "-fno-omit-frame-pointer", "-g", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("g++ failed: {s}"),
        Err(e) => {
            return Err(skip(format!(
                "g++ is not installed ({e}): apt-get install g++"
            )));
        }
    }
    let _w = Running::start_args(&out, &["3"]);
    let doc = stat_json(&["-d", "2", "--functions"]);
    let row = functions(&doc)
        .iter()
        .find(|f| f["module"] == "workload-cpp" && f["samples"].as_u64() > Some(500))
        .unwrap_or_else(|| panic!("no busy row in workload-cpp: {:?}", functions(&doc)));
    assert_eq!(
        row["function"],
        "workload_cpp::Spinner::spin(unsigned long)"
    );
    Ok(())
}

fn a_deleted_binary_is_still_named_and_marked() -> TestResult {
    let _root = require_root()?;
    let built = workload("workload", false)?;
    let copy = Path::new(env!("CARGO_TARGET_TMPDIR")).join("workload-deleted");
    std::fs::copy(&built, &copy).unwrap();
    let _w = Running::start(&copy, "cpu", 4.0);
    std::thread::sleep(Duration::from_millis(200));
    std::fs::remove_file(&copy).unwrap();
    let doc = stat_json(&["-d", "2", "--functions"]);
    let row = functions(&doc)
        .iter()
        .find(|f| f["function"] == ALPHA)
        .expect("alpha_hot named from the deleted binary");
    let module = row["module"].as_str().unwrap();
    assert!(module.contains("(deleted)"), "module {module}");
    Ok(())
}

/// `perf report --sort sym` of process `pid`: (function, percent), busiest first.
fn perf_shares(data: &Path) -> Vec<(String, f64)> {
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "sym",
            "-q",
            "-g",
            "none",
            "-i",
        ])
        .arg(data)
        .env("DEBUGINFOD_URLS", "")
        .output()
        .expect("perf report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "    66.52%  [.] workload::work::alpha_hot"
            let l = l.trim();
            let (pct, rest) = l.split_once('%')?;
            let name = rest.trim().split_once(']')?.1.trim();
            Some((name.to_owned(), pct.trim().parse().ok()?))
        })
        .collect()
}

fn perf_report_agrees_on_the_top_functions_and_shares() -> TestResult {
    let _root = require_root()?;
    if Command::new("perf").arg("--version").output().is_err() {
        return Err(skip(
            "perf is not installed (Debian's linux-perf); `cargo xtask test` installs it",
        ));
    }
    let bin = workload("workload", false)?;
    let w = Running::start(&bin, "cpu", 6.0);
    let data = Path::new(env!("CARGO_TARGET_TMPDIR")).join("functions-perf.data");
    let mut perf = Command::new("perf")
        .args([
            "record",
            "-q",
            "-N",
            "-e",
            "cpu-clock",
            "-F",
            "999",
            "-g",
            "-o",
        ])
        .arg(&data)
        .args(["-p", &w.pid().to_string(), "--", "sleep", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("perf record");
    std::thread::sleep(Duration::from_millis(300));
    let doc = stat_json(&["-d", "3", "-g"]);
    assert!(perf.wait().unwrap().success(), "perf record failed");
    let ours = leaf_shares(&doc, w.pid());
    let theirs = perf_shares(&data);
    let top =
        |v: &[(String, f64)]| -> Vec<String> { v.iter().take(2).map(|(f, _)| f.clone()).collect() };
    assert_eq!(top(&ours), top(&theirs), "ours {ours:?}\nperf {theirs:?}");
    for (f, pct) in theirs.iter().take(2) {
        let mine = ours.iter().find(|(g, _)| g == f).map_or(0.0, |(_, p)| *p);
        assert!(
            (mine - pct).abs() < 5.0,
            "{f}: sampler {mine:.1}% vs perf {pct:.1}%"
        );
    }
    Ok(())
}

/// `sampler top --functions --json` for 8 refreshes of 0.3 s at `hz`, with the
/// location ring of `ring_bytes` (the default when `None`) and `extra` arguments,
/// on the test workload: each refresh's documents.
fn function_refreshes(
    hz: &str,
    ring_bytes: Option<&str>,
    extra: &[&str],
) -> Result<Vec<Value>, String> {
    let bin = workload("workload", false).map_err(|e| format!("{e:?}"))?;
    let _w = Running::start(&bin, "cpu", 5.0);
    let mut cmd = Command::new(sampler_bin());
    cmd.args([
        "top",
        "-i",
        "0.3",
        "-n",
        "8",
        "-F",
        hz,
        "--functions",
        "--json",
    ])
    .args(extra)
    .stdin(Stdio::null());
    if let Some(bytes) = ring_bytes {
        cmd.env("SAMPLER_LOC_RING_BYTES", bytes);
    }
    let out = cmd.output().expect("run sampler");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document a line"))
        .collect())
}

/// No refresh says the location map evicted entries while it cannot have: each
/// location entry (in the map, or a sum of the ring's records) is created by a
/// sample on its CPU, in that CPU's LRU list (`room` entries each), and the ring's
/// sums are capped at all the CPUs' room together; so up to the refresh in which
/// one CPU's samples so far pass `room`, no entry can have been evicted. Inserts
/// counted after a read once made the entries created while the maps were read
/// look evicted (in most refreshes, in CI). At least the first refresh is checked
/// (a debug build under CI's load took 3.7 s to its first, 73,327 samples on 2
/// CPUs: that is why the count is per CPU).
fn assert_no_evictions_with_room(docs: &[Value], room: u64) {
    let mut per_cpu = std::collections::BTreeMap::<u64, u64>::new();
    let mut checked = 0;
    for doc in docs {
        for row in doc["cpus"].as_array().unwrap() {
            *per_cpu.entry(row["cpu"].as_u64().unwrap()).or_default() +=
                row["samples"].as_u64().unwrap();
        }
        if per_cpu.values().any(|&n| n > room) {
            break;
        }
        checked += 1;
        assert_eq!(
            doc["locations"]["evicted"].as_u64(),
            Some(0),
            "location evictions with {per_cpu:?} samples per CPU so far, room for {room} per CPU: {}",
            doc["locations"]
        );
    }
    assert!(
        checked > 0,
        "samples per CPU in the first refresh {per_cpu:?}, past the room for {room}"
    );
}

/// Each refresh's function rows hold its samples once: the locations the ring
/// took (and, when it was full, the location map) add up to the CPUs' samples
/// outside the idle task, within the few that fall between the readings' edges
/// (the locations are read first; CI saw 83 there, in a debug build under load).
/// Up to `room` samples per CPU, nothing is evicted (see
/// [`assert_no_evictions_with_room`]); past that, a refresh in which the location
/// map evicted entries is left out: an LRU eviction loses what the entry gained
/// since the last reading (the map's documented limit, shown as `evicted`), and at
/// least half the refreshes must have none. Returns the samples that found the
/// ring full.
fn assert_functions_hold_every_sample_once(docs: &[Value], room: u64) -> u64 {
    assert!(docs.len() >= 6, "{} refreshes", docs.len());
    assert_no_evictions_with_room(docs, room);
    let mut ring_full = 0;
    let mut checked = 0;
    let mut last_refresh_ms = 0.0;
    for doc in docs {
        ring_full += doc["locations"]["ring_full"].as_u64().unwrap();
        // The samples between a reading's locations and its CPUs' counters (the
        // edge) are in the CPUs' count of one refresh and the locations of the next:
        // at most what the refreshes' readings took, at the refresh's sample rate.
        let refresh_ms = doc["refresh_ms"].as_f64().unwrap();
        let edges_ms = refresh_ms + last_refresh_ms;
        last_refresh_ms = refresh_ms;
        if doc["locations"]["evicted"].as_u64().unwrap() > 0 {
            continue;
        }
        checked += 1;
        // The idle task's samples have no function row.
        let samples = doc["samples"].as_u64().unwrap() - doc["idle_samples"].as_u64().unwrap();
        let located: u64 = functions(doc)
            .iter()
            .map(|f| f["samples"].as_u64().unwrap())
            .sum();
        let per_ms = samples as f64 / (doc["duration_s"].as_f64().unwrap() * 1000.0);
        let slack = 8 + samples / 50 + (per_ms * edges_ms) as u64;
        assert!(samples >= 100, "{samples} samples in 0.3 s");
        assert!(
            located <= samples + slack && located + slack >= samples,
            "functions hold {located} samples of a refresh's {samples}: {}",
            doc["locations"]
        );
    }
    assert!(
        checked * 2 >= docs.len(),
        "location evictions in {} of {} refreshes",
        docs.len() - checked,
        docs.len()
    );
    ring_full
}

fn every_refresh_of_the_function_view_holds_each_sample_once() -> TestResult {
    let _root = require_root()?;
    let docs = function_refreshes("999", None, &[]).expect("sampler top");
    // The default maps have room for at least 4,096 entries per CPU.
    assert_functions_hold_every_sample_once(&docs, 4096);
    Ok(())
}

/// Two shells that start `/bin/true` over and over (new processes, and so new task
/// and location entries, all the time), killed on drop.
struct Churn(Vec<std::process::Child>);

impl Churn {
    fn start() -> Self {
        Self(
            (0..2)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do /bin/true; done"])
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("spawn sh")
                })
                .collect(),
        )
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A one-page ring at 10 kHz fills between drains: the samples that find it full go
/// to the location map, and each still counts once. The location map gets room for
/// 65,536 entries per possible CPU. Then again with processes starting all the
/// time, so that entries are created while each reading reads the maps: no refresh
/// may say an entry was evicted while there was room. (The sums are not checked in
/// that run: the maps fill with the exited processes' entries and take longer to
/// read, and the samples between the locations' reading and the CPUs' outgrow the
/// check's slack.)
fn a_full_location_ring_passes_its_samples_to_the_map() -> TestResult {
    let _root = require_root()?;
    let err = function_refreshes("999", Some("12288"), &[]).unwrap_err();
    assert!(
        err.contains("SAMPLER_LOC_RING_BYTES") && err.contains("power of two"),
        "{err}"
    );
    // The LRU lists are per possible CPU ("0-1", or ranges such as "0-3,8").
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    let cpus: u64 = possible
        .trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum();
    const ROOM: u64 = 65_536;
    let entries = (ROOM * cpus).to_string();
    let args = ["--map-entries", entries.as_str()];
    let docs = function_refreshes("10000", Some("4096"), &args).expect("sampler top");
    let full = assert_functions_hold_every_sample_once(&docs, ROOM);
    assert!(full > 0, "no sample found a one-page ring full at 10 kHz");
    let churn = Churn::start();
    let docs = function_refreshes("10000", Some("4096"), &args).expect("sampler top");
    drop(churn);
    assert!(docs.len() >= 6, "{} refreshes", docs.len());
    assert_no_evictions_with_room(&docs, ROOM);
    Ok(())
}

crate::test_main!(
    every_refresh_of_the_function_view_holds_each_sample_once,
    a_full_location_ring_passes_its_samples_to_the_map,
    hot_functions_split_two_to_one_with_their_call_chains,
    the_own_user_stack_walk_records_what_the_kernel_walk_does,
    a_process_that_exits_before_the_run_ends_is_still_named,
    a_stripped_binary_shows_module_plus_offset,
    a_system_call_loop_lands_in_kernel_functions,
    perf_report_agrees_on_the_top_functions_and_shares,
    jit_code_is_named_from_its_perf_map_or_marked_without_one,
    cpp_names_are_demangled,
    inlined_functions_are_named_with_inlined,
    a_deleted_binary_is_still_named_and_marked,
);
