//! `sampler pmus`, `plan` and `list` run against the recorded sysfs trees in
//! `tests/data/sysfs` (no privileges, no perf system calls), and against this machine.

mod common;

use common::{TestResult, sampler, skip, stderr};
use serde_json::Value;

fn fixture(machine: &str) -> String {
    format!(
        "{}/../tests/data/sysfs/{machine}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn json(args: &[&str]) -> Value {
    let out = sampler(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn error(args: &[&str]) -> String {
    let out = sampler(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("sampler: error: "), "{err}");
    err
}

fn pmus_of_each_recorded_machine() -> TestResult {
    let adl = json(&["pmus", "--json", "--sysfs-root", &fixture("adl")]);
    assert_eq!(adl["heterogeneous"], true);
    assert_eq!(adl["online_cpus"].as_array().unwrap().len(), 24);
    let core: Vec<(String, usize)> = adl["pmus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["core"] == true)
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["cpus"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        core,
        [("cpu_atom".to_owned(), 8), ("cpu_core".to_owned(), 16)]
    );

    let juno = json(&["pmus", "--json", "--sysfs-root", &fixture("juno")]);
    assert_eq!(juno["heterogeneous"], true);
    let a53 = juno["pmus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "armv8_cortex_a53")
        .unwrap();
    assert_eq!(a53["cpus"], serde_json::json!([0, 3, 4, 5]));
    assert_eq!(a53["type"], 11);

    let vm = json(&["pmus", "--json", "--sysfs-root", &fixture("vm")]);
    assert_eq!(vm["heterogeneous"], false);
    assert!(
        vm["pmus"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["core"] == false)
    );
    Ok(())
}

fn plan_json_puts_each_cpu_on_its_pmu() -> TestResult {
    let doc = json(&[
        "plan",
        "-e",
        "cycles:u",
        "--json",
        "--kernel",
        "6.12",
        "--sysfs-root",
        &fixture("juno"),
    ]);
    let plan = doc["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 6);
    for e in plan {
        let cpu = e["cpu"].as_u64().unwrap();
        let pmu = if [1, 2].contains(&cpu) {
            "armv8_cortex_a57"
        } else {
            "armv8_cortex_a53"
        };
        assert_eq!(e["pmu"], pmu, "{e}");
        assert_eq!(e["event"], "cycles:u");
        let pmu_type = if pmu == "armv8_cortex_a57" { 10u64 } else { 11 };
        assert_eq!(e["type"], 0);
        assert_eq!(e["config"].as_u64().unwrap(), pmu_type << 32);
        assert_eq!(e["config1"], 0);
        assert_eq!(e["config2"], 0);
        assert_eq!(e["exclude_user"], false);
        assert_eq!(e["exclude_kernel"], true);
        assert_eq!(e["encoding"], "extended");
    }
    // On 6.1 arm_pmu has no extended type: the PMU's own alias comes first.
    let doc = json(&[
        "plan",
        "-e",
        "cycles",
        "--json",
        "--kernel",
        "6.1",
        "-C",
        "1",
        "--sysfs-root",
        &fixture("juno"),
    ]);
    assert_eq!(doc["plan"][0]["encoding"], "pmu-alias");
    assert_eq!(doc["plan"][0]["type"], 10);
    assert_eq!(doc["plan"][0]["config"], 0x11);
    Ok(())
}

fn plan_and_list_errors_are_one_clear_line() -> TestResult {
    let adl = fixture("adl");
    let cases: &[(&[&str], &str)] = &[
        (&["plan", "-e", "cyles"], "did you mean `cycles`"),
        (
            &["plan", "-e", "nosuchpmu/event=1/"],
            "unknown PMU `nosuchpmu`",
        ),
        (
            &["plan", "-e", "cpu_core/event=0x100/"],
            "does not fit field `event` (config:0-7, 8 bits)",
        ),
        (&["plan", "-e", "{cycles", ""], "`{` has no matching `}`"),
        (&["plan", "-e", "cpu_core/event=1"], "has no closing `/`"),
        (
            &["plan", "-e", "cpu_atom/event=0x3c/", "-C", "0-15"],
            "cpu_atom covers CPUs 16-23",
        ),
        (
            &["plan", "-e", "cycles", "-C", "24"],
            "CPU 24 is not online (online CPUs: 0-23)",
        ),
        (
            &["plan", "-e", "cycles", "--kernel", "six"],
            "--kernel `six` is not a kernel release",
        ),
        (&["list", "cpu_cor"], "did you mean `cpu_core`"),
    ];
    for (args, expected) in cases {
        let mut full: Vec<&str> = args.iter().copied().filter(|a| !a.is_empty()).collect();
        full.extend(["--sysfs-root", &adl]);
        let err = error(&full);
        assert!(
            err.contains(expected),
            "{args:?}: expected `{expected}` in {err}"
        );
    }
    let err = error(&["pmus", "--sysfs-root", "/nonexistent/root"]);
    assert!(err.contains("/nonexistent/root"), "{err}");
    Ok(())
}

fn list_shows_events_by_pmu() -> TestResult {
    let out = sampler(&["list", "armv8_cortex_a57", "--sysfs-root", &fixture("juno")]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("armv8_cortex_a57 (type 10, core, CPUs 1-2)"),
        "{text}"
    );
    assert!(text.contains("  inst_spec"));
    assert!(!text.contains("armv8_cortex_a53"));
    Ok(())
}

fn this_machine_is_discovered() -> TestResult {
    let doc = json(&["pmus", "--json"]);
    assert!(!doc["online_cpus"].as_array().unwrap().is_empty());
    assert!(
        doc["pmus"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "software")
    );
    let plan = json(&["plan", "-e", "cycles,cpu-clock", "--json"]);
    assert_eq!(
        plan["plan"].as_array().unwrap().len(),
        2 * doc["online_cpus"].as_array().unwrap().len()
    );
    Ok(())
}

/// A sysfs tree built on the fly; removed when dropped.
struct Tree(std::path::PathBuf);

impl Tree {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sampler-sysfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, rel: &str, content: &[u8]) -> &Self {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        self
    }

    fn root(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs sampler with a deadline: a hostile file must not make it hang.
fn bounded(args: &[&str]) -> std::process::Output {
    use std::{
        process::{Command, Stdio},
        time::{Duration, Instant},
    };
    let mut child = Command::new(common::sampler_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sampler {args:?} hung on a hostile sysfs tree");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn hostile_sysfs_roots_get_clear_errors_and_warnings() -> TestResult {
    // No tree at all, garbage and absurd CPU lists: one error line naming the file.
    let empty = Tree::new("empty");
    let e = error(&["pmus", "--sysfs-root", empty.root()]);
    assert!(e.contains("devices/system/cpu/online"), "{e}");
    let garbage = Tree::new("garbage");
    garbage.file("devices/system/cpu/online", b"zzz\n");
    let e = error(&["pmus", "--sysfs-root", garbage.root()]);
    assert!(e.contains("`zzz` is not a CPU number or range"), "{e}");
    let huge = Tree::new("huge");
    huge.file("devices/system/cpu/online", b"0-4294967295\n");
    let e = error(&["plan", "-e", "cycles", "--sysfs-root", huge.root()]);
    assert!(e.contains("above the largest CPU number supported"), "{e}");
    // A file that never ends (a device behind a symlink) and a FIFO that never
    // answers: refused, no hang, no huge read.
    let odd = Tree::new("odd");
    odd.file("bus/event_source/devices/.keep", b"");
    std::fs::create_dir_all(odd.0.join("devices/system/cpu")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", odd.0.join("devices/system/cpu/online")).unwrap();
    let out = bounded(&["pmus", "--sysfs-root", odd.root()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(odd.0.join("devices/system/cpu/online")).unwrap();
    odd.file("devices/system/cpu/online", b"0-1\n");
    let cpu = odd.0.join("bus/event_source/devices/cpu");
    std::fs::create_dir_all(cpu.join("events")).unwrap();
    std::fs::write(cpu.join("type"), "4\n").unwrap();
    let fifo = std::ffi::CString::new(cpu.join("events/fifo").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let out = bounded(&["pmus", "--sysfs-root", odd.root()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // `pmus` reports what it could not read with its table.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("events/fifo: ignored: not a regular file"),
        "{text}"
    );

    // A PMU directory full of damage: every bad file is a warning naming it; the
    // rest is still usable.
    let t = Tree::new("damaged");
    t.file("devices/system/cpu/online", b"0-1\n")
        .file("bus/event_source/devices/cpu/type", b"4\n")
        .file("bus/event_source/devices/cpu/format/event", b"config:0-7\n")
        .file("bus/event_source/devices/cpu/format/umask", b"config:7-0\n")
        .file(
            "bus/event_source/devices/cpu/format/wide",
            b"config:0-99999\n",
        )
        .file("bus/event_source/devices/cpu/format/bin", b"\xff\xfe")
        .file(
            "bus/event_source/devices/cpu/events/cycles",
            b"event=0x3c\n",
        )
        .file(
            "bus/event_source/devices/cpu/events/broken",
            b"event=0xzz\n",
        )
        .file(
            "bus/event_source/devices/cpu/events/flood",
            &vec![b'a'; 200_000],
        )
        .file("bus/event_source/devices/bad/type", b"garbage\n")
        .file("bus/event_source/devices/cpu_atom/type", b"10\n")
        .file("bus/event_source/devices/cpu_atom/cpus", b"0-4294967295\n");
    let out = bounded(&["pmus", "--sysfs-root", t.root()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = String::from_utf8_lossy(&out.stdout);
    for want in [
        "bad/type: skipped: `garbage` is not a PMU type",
        "cpu_atom/cpus: ignored: CPU 4294967295 is above the largest CPU number",
        "format/umask: ignored: format `config:7-0` is not of the form",
        "format/wide: ignored: format `config:0-99999`",
        "format/bin: ignored: stream did not contain valid UTF-8",
        "events/flood: ignored: 65536 bytes, too long for an event alias",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    assert!(
        err.len() < 4096,
        "warnings must stay short: {} bytes",
        err.len()
    );
    // The good parts plan; the damaged alias is a clear error about the alias.
    let plan = json(&[
        "plan",
        "-e",
        "cpu/cycles/",
        "--json",
        "--sysfs-root",
        t.root(),
    ]);
    assert_eq!(plan["plan"].as_array().unwrap().len(), 2, "{plan}");
    let e = error(&["plan", "-e", "cpu/broken/", "--sysfs-root", t.root()]);
    assert!(
        e.contains("the event alias cpu/events/broken reads `event=0xzz`"),
        "{e}"
    );
    let out = bounded(&["list", "--sysfs-root", t.root()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.len() < 64 * 1024, "{} bytes", out.stdout.len());
    Ok(())
}

/// The running kernel's BTF, when it has one: both `task_struct` fields found, inside
/// the structure, distinct. (That they are the right fields is checked end to end by
/// the pid-reuse test in `sampling.rs`, against /proc/PID/stat.)
fn this_kernels_btf_gives_task_struct_offsets() -> TestResult {
    let path = std::path::Path::new(sampler::kernel::bpf::KERNEL_BTF);
    if !path.exists() {
        return Err(skip(format!(
            "this kernel has no BTF ({} missing)",
            path.display()
        )));
    }
    let got = sampler::discover::btf::task_offsets_from(path).unwrap();
    assert_ne!(got.group_leader, got.start_time);
    assert!(got.group_leader > 0 && got.group_leader < 16384, "{got:?}");
    assert!(got.start_time > 0 && got.start_time < 16384, "{got:?}");
    Ok(())
}

/// The event strings compared with perf: generic, cache, raw, `pmu/…/` and software
/// events, each modifier perf 6.1 has (`P` aside: perf finds that level by opening and
/// retrying, sampler reads the PMU's `caps/max_precise`), and groups with modifiers.
/// Hardware groups are left out: on a machine without a PMU perf stops at the group's
/// first event. Precise levels sit behind a software leader, where sampler plans them
/// without refusing (a sampling leader without PEBS is refused, as it must be).
const PERF_CORPUS: &[&str] = &[
    "cycles",
    "instructions",
    "cache-references",
    "cache-misses",
    "branches",
    "branch-instructions",
    "branch-misses",
    "bus-cycles",
    "ref-cycles",
    "stalled-cycles-frontend",
    "stalled-cycles-backend",
    "L1-dcache-loads",
    "L1-dcache-load-misses",
    "L1-dcache-stores",
    "L1-icache-load-misses",
    "LLC-loads",
    "LLC-store-misses",
    "LLC-prefetches",
    "dTLB-load-misses",
    "iTLB-loads",
    "branch-loads",
    "node-loads",
    "r1a8",
    "r0c0",
    "rff",
    "msr/tsc/",
    "cpu-clock",
    "task-clock",
    "page-faults",
    "faults",
    "minor-faults",
    "major-faults",
    "context-switches",
    "cs",
    "cpu-migrations",
    "alignment-faults",
    "emulation-faults",
    "dummy",
    "bpf-output",
    "cgroup-switches",
    "cycles:u",
    "cycles:k",
    "cycles:h",
    "cycles:uk",
    "cycles:kh",
    "cycles:G",
    "cycles:H",
    "cycles:uG",
    "cycles:kH",
    "cycles:I",
    "cycles:D",
    "cycles:e",
    "cycles:S",
    "cycles:W",
    "instructions:uD",
    "r1a8:k",
    "L1-dcache-load-misses:G",
    "cpu-clock:u",
    "cpu-clock:I",
    "page-faults:k",
    "cpu-clock,cycles:p",
    "cpu-clock,cycles:pp",
    "cpu-clock,cycles:ppp",
    "cpu-clock,cycles:up",
    "cpu-clock,cycles:pk",
    "cpu-clock,cycles:Gp",
    "{cpu-clock,page-faults}",
    "{cpu-clock,page-faults}:u",
    "{cpu-clock,page-faults}:k",
    "{cpu-clock,page-faults}:De",
    "{cpu-clock:k,page-faults:u}:u",
    "{task-clock,context-switches,cpu-migrations}:H",
];

/// perf's attrs for `event`, from `perf stat -vv -e EVENT true`: each
/// `perf_event_attr:` block as (field, value); perf prints only the non-zero fields.
fn perf_attrs(event: &str) -> Vec<Vec<(String, u64)>> {
    let out = std::process::Command::new("perf")
        .args(["stat", "-vv", "-e", event, "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run perf");
    let text = String::from_utf8_lossy(&out.stderr);
    let mut blocks = Vec::new();
    let mut current: Option<Vec<(String, u64)>> = None;
    for line in text.lines() {
        if line.starts_with("perf_event_attr:") {
            current = Some(Vec::new());
        } else if line.starts_with("---") {
            blocks.extend(current.take());
        } else if let Some(fields) = current.as_mut() {
            let mut words = line.split_whitespace();
            if let (Some(name), Some(value)) = (words.next(), words.next()) {
                let value = value
                    .strip_prefix("0x")
                    .map_or_else(|| value.parse().ok(), |h| u64::from_str_radix(h, 16).ok());
                // Fields perf prints by name (sample_type, read_format) are not compared.
                if let Some(v) = value {
                    fields.push((name.to_owned(), v));
                }
            }
        }
    }
    assert!(
        !blocks.is_empty(),
        "perf printed no attr for `{event}`:\n{text}"
    );
    blocks
}

/// The attr fields that the event syntax decides, as sampler builds them for a counting
/// open on CPU 0 of this machine: (name as perf prints it, value).
fn sampler_attrs(event: &str) -> Vec<Vec<(&'static str, u64)>> {
    use sampler::{
        discover::{cpus::CpuList, pmu::PmuSet},
        events::{plan, syntax},
    };
    let pmus = PmuSet::discover(std::path::Path::new("/sys")).expect("this machine's PMUs");
    let list = syntax::parse(event).unwrap_or_else(|e| panic!("`{event}`: {e}"));
    let p = plan::plan(
        &list,
        &pmus,
        &CpuList::parse("0").unwrap(),
        plan::KernelVersion::running(),
    )
    .unwrap_or_else(|e| panic!("`{event}`: {e}"));
    p.plan
        .iter()
        .map(|e| {
            let mode = if e.index == 0 {
                plan::Mode::CountLeader
            } else {
                plan::Mode::CountMember
            };
            let a = e.attr(&e.attr, mode);
            vec![
                ("type", u64::from(a.type_)),
                ("config", a.config),
                ("config1", a.config1),
                ("config2", a.config2),
                ("pinned", a.pinned()),
                ("exclusive", a.exclusive()),
                ("exclude_user", a.exclude_user()),
                ("exclude_kernel", a.exclude_kernel()),
                ("exclude_hv", a.exclude_hv()),
                ("exclude_idle", a.exclude_idle()),
                ("exclude_host", a.exclude_host()),
                ("exclude_guest", a.exclude_guest()),
                // A counting open carries no precision (x86 refuses it there): what
                // sampler sets when the event samples is the plan's level.
                ("precise_ip", u64::from(e.precise_ip)),
            ]
        })
        .collect()
}

fn event_attrs_match_perf_stat_vv() -> TestResult {
    if std::process::Command::new("perf")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(skip(
            "perf is not installed (`cargo xtask test` installs Debian's linux-perf)",
        ));
    }
    let mut differences = Vec::new();
    for event in PERF_CORPUS {
        let ours = sampler_attrs(event);
        let theirs = perf_attrs(event);
        // perf prints an event again when it retries it (without exclude_guest on a
        // PMU that refuses it): the first attempt of each is what its syntax built.
        assert!(theirs.len() >= ours.len(), "`{event}`: {theirs:?}");
        for (i, fields) in ours.iter().enumerate() {
            for (name, value) in fields {
                let perf = theirs[i]
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0, |(_, v)| *v);
                if perf != *value {
                    differences.push(format!(
                        "`{event}` event {i}: {name} perf {perf:#x}, sampler {value:#x}"
                    ));
                }
            }
        }
    }
    assert!(
        differences.is_empty(),
        "sampler's attrs differ from perf's:\n{}",
        differences.join("\n")
    );
    eprintln!(
        "{} event strings agree with perf stat -vv",
        PERF_CORPUS.len()
    );
    Ok(())
}

crate::test_main!(
    pmus_of_each_recorded_machine,
    plan_json_puts_each_cpu_on_its_pmu,
    plan_and_list_errors_are_one_clear_line,
    list_shows_events_by_pmu,
    this_machine_is_discovered,
    hostile_sysfs_roots_get_clear_errors_and_warnings,
    this_kernels_btf_gives_task_struct_offsets,
    event_attrs_match_perf_stat_vv,
);
