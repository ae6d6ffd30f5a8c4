//! `sampler pmus`, `plan` and `list` run against the recorded sysfs trees in
//! `tests/data/sysfs` (no privileges, no perf system calls), and against this machine.

mod common;

use common::{sampler, stderr};
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

#[test]
fn pmus_of_each_recorded_machine() {
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
}

#[test]
fn plan_json_puts_each_cpu_on_its_pmu() {
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
}

#[test]
fn plan_and_list_errors_are_one_clear_line() {
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
}

#[test]
fn list_shows_events_by_pmu() {
    let out = sampler(&["list", "armv8_cortex_a57", "--sysfs-root", &fixture("juno")]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("armv8_cortex_a57 (type 10, core, CPUs 1-2)"),
        "{text}"
    );
    assert!(text.contains("  inst_spec"));
    assert!(!text.contains("armv8_cortex_a53"));
}

#[test]
fn this_machine_is_discovered() {
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
}
