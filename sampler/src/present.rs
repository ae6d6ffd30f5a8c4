//! Rendering a [`Snapshot`]: a plain table for terminals and pipes, and JSON.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::{
    event,
    model::Snapshot,
    plan::{Attr, Plan},
    pmu::PmuSet,
};

/// The snapshot as a table: a summary line, the `limit` busiest tasks (all with
/// `None`), then idle.
pub fn table(s: &Snapshot, limit: Option<usize>) -> String {
    let mut out = String::new();
    let events = event_summary(s);
    let _ = writeln!(
        out,
        "{} samples on {} CPU{} in {:.2} s ({events} at {} Hz, {}); dropped {}, evicted {}",
        s.samples,
        s.cpus.len(),
        if s.cpus.len() == 1 { "" } else { "s" },
        s.duration_s,
        s.frequency_hz,
        s.source.as_str(),
        s.dropped,
        s.evicted,
    );
    let _ = writeln!(
        out,
        "{:>8} {:>8} {:<16} {:>4} {:>9} {:>7}",
        "PID", "TID", "COMM", "CPU", "SAMPLES", "SHARE"
    );
    let shown = limit.unwrap_or(usize::MAX);
    for t in s.tasks.iter().take(shown) {
        let _ = writeln!(
            out,
            "{:>8} {:>8} {:<16} {:>4} {:>9} {:>6.1}%",
            t.tgid, t.tid, t.comm, t.cpu, t.samples, t.share
        );
    }
    if s.tasks.len() > shown {
        let rest = &s.tasks[shown..];
        let samples: u64 = rest.iter().map(|t| t.samples).sum();
        let share: f64 = rest.iter().map(|t| t.share).sum();
        let _ = writeln!(
            out,
            "{:>8} {:>8} {:<16} {:>4} {:>9} {:>6.1}%",
            "",
            "",
            format!("({} more)", rest.len()),
            "",
            samples,
            share
        );
    }
    let idle_share = if s.samples == 0 {
        0.0
    } else {
        s.idle_samples as f64 * 100.0 / s.samples as f64
    };
    let _ = writeln!(
        out,
        "{:>8} {:>8} {:<16} {:>4} {:>9} {:>6.1}%",
        "-", "-", "[idle]", "*", s.idle_samples, idle_share
    );
    out
}

/// `cycles` or `cpu-clock`, or both with their CPU counts when CPUs differ.
fn event_summary(s: &Snapshot) -> String {
    let mut names: Vec<(&str, usize)> = Vec::new();
    for c in &s.cpus {
        match names.iter_mut().find(|(n, _)| *n == c.event) {
            Some((_, k)) => *k += 1,
            None => names.push((&c.event, 1)),
        }
    }
    match names.as_slice() {
        [] => "no event".to_owned(),
        [(name, _)] => (*name).to_owned(),
        many => many
            .iter()
            .map(|(n, k)| format!("{n} on {k} CPUs"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The snapshot as one JSON document; `tasks` limited to the `limit` busiest.
pub fn json(s: &Snapshot, limit: Option<usize>) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    if let (Some(limit), Some(Value::Array(tasks))) = (limit, v.get_mut("tasks")) {
        tasks.truncate(limit);
    }
    v
}

fn attr_text(a: &Attr) -> String {
    let mut s = format!("{}:{:#x}", a.type_, a.config);
    if a.config1 != 0 || a.config2 != 0 {
        let _ = write!(s, ",{:#x}", a.config1);
    }
    if a.config2 != 0 {
        let _ = write!(s, ",{:#x}", a.config2);
    }
    s
}

/// The plan as a table, one row per (event, CPU), then its notes.
pub fn plan_table(p: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>4} {:<24} {:<18} {:<10} {:<22} {:<8} FALLBACKS",
        "CPU", "EVENT", "PMU", "ENCODING", "TYPE:CONFIG[,CONFIG1]", "EXCLUDE"
    );
    for e in &p.plan {
        let excl: String = [
            (e.exclude_user, 'u'),
            (e.exclude_kernel, 'k'),
            (e.exclude_hv, 'h'),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|&(_, c)| c)
        .collect();
        let fallbacks = e
            .fallbacks
            .iter()
            .map(|a| format!("{} {}", a.encoding.as_str(), attr_text(a)))
            .collect::<Vec<_>>()
            .join(" > ");
        let _ = writeln!(
            out,
            "{:>4} {:<24} {:<18} {:<10} {:<22} {:<8} {}",
            e.cpu,
            e.event,
            e.pmu.as_deref().unwrap_or("(kernel)"),
            e.attr.encoding.as_str(),
            attr_text(&e.attr),
            if excl.is_empty() { "-" } else { &excl },
            if fallbacks.is_empty() {
                "-"
            } else {
                &fallbacks
            },
        );
    }
    for n in &p.notes {
        let _ = writeln!(out, "note: {n}");
    }
    if p.no_core_pmu {
        let _ = writeln!(out, "note: {}", crate::plan::NO_CORE_PMU);
    }
    out
}

/// The PMUs as a table: name, type, core or not, CPUs, counts of events and formats.
pub fn pmus_table(s: &PmuSet) -> String {
    let mut out = String::new();
    let cores = s.core_pmus().count();
    let _ = writeln!(
        out,
        "online CPUs: {}{}; {}",
        s.online,
        s.possible
            .as_ref()
            .map(|p| format!(" (possible {p})"))
            .unwrap_or_default(),
        match cores {
            0 => "no core PMU (no hardware counters: most VMs)".to_owned(),
            1 => "one core PMU (homogeneous)".to_owned(),
            n => format!("{n} core PMUs (heterogeneous)"),
        }
    );
    let _ = writeln!(
        out,
        "{:<28} {:>5} {:<5} {:<12} {:>6} FORMATS",
        "PMU", "TYPE", "CORE", "CPUS", "EVENTS"
    );
    for p in &s.pmus {
        let _ = writeln!(
            out,
            "{:<28} {:>5} {:<5} {:<12} {:>6} {}",
            p.name,
            p.type_,
            if p.core { "yes" } else { "no" },
            p.cpus.as_ref().map_or("-".to_owned(), ToString::to_string),
            p.events.len(),
            p.formats.keys().cloned().collect::<Vec<_>>().join(","),
        );
    }
    for w in &s.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// The PMUs as JSON: `{online_cpus, possible_cpus, heterogeneous, pmus: [...]}`.
pub fn pmus_json(s: &PmuSet) -> Value {
    json!({
        "online_cpus": s.online.as_slice(),
        "possible_cpus": s.possible.as_ref().map(|p| p.as_slice().to_vec()),
        "heterogeneous": s.heterogeneous(),
        "core_pmus": s.core_pmus().map(|p| p.name.clone()).collect::<Vec<_>>(),
        "pmus": s.pmus.iter().map(|p| json!({
            "name": p.name,
            "type": p.type_,
            "core": p.core,
            "cpus": p.covered_cpus(&s.online).as_slice(),
            "cpus_file": p.cpus.is_some(),
            "events": p.events.keys().collect::<Vec<_>>(),
            "formats": p.formats.iter().map(|(k, f)| (k.clone(), f.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
            "caps": p.caps,
        })).collect::<Vec<_>>(),
        "warnings": s.warnings,
    })
}

/// The events offered, grouped by PMU (`only`: one PMU's).
pub fn event_list(s: &PmuSet, only: Option<&str>) -> String {
    let mut out = String::new();
    if only.is_none() {
        let _ = writeln!(out, "generic hardware events (on each core PMU):");
        for &(n, _) in event::HARDWARE {
            let _ = writeln!(out, "  {n}");
        }
        let _ = writeln!(out, "hardware cache events (on each core PMU):");
        for n in event::cache_names() {
            let _ = writeln!(out, "  {n}");
        }
        let _ = writeln!(out, "software events:");
        for &(n, _) in event::SOFTWARE {
            let _ = writeln!(out, "  {n}");
        }
        let _ = writeln!(out, "raw events: rNNNN (hex config for the core PMU)");
    }
    for p in s.pmus.iter().filter(|p| only.is_none_or(|o| o == p.name)) {
        if p.events.is_empty() && only.is_none() {
            continue;
        }
        let cpus = p.covered_cpus(&s.online);
        let _ = writeln!(
            out,
            "{} (type {}{}, CPUs {cpus}): use as `{}/EVENT/` or by name",
            p.name,
            p.type_,
            if p.core { ", core" } else { "" },
            p.name
        );
        for (name, alias) in &p.events {
            let unit = match (&alias.scale, &alias.unit) {
                (Some(sc), Some(u)) => format!("  [{sc:e} {u}]"),
                (None, Some(u)) => format!("  [{u}]"),
                _ => String::new(),
            };
            let _ = writeln!(out, "  {name:<32} {}{unit}", alias.terms);
        }
        if only.is_some() {
            let _ = writeln!(out, "format fields:");
            for (k, f) in &p.formats {
                let _ = writeln!(out, "  {k:<32} {f}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::example;

    fn snapshot() -> Snapshot {
        let (maps, run) = example();
        Snapshot::build(&maps, &run, 2.0)
    }

    #[test]
    fn table_has_summary_rows_and_idle() {
        let t = table(&snapshot(), None);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "192 samples on 2 CPUs in 2.00 s (cpu-clock at 50 Hz, software-fallback); dropped 2, evicted 3"
        );
        assert_eq!(
            lines[1],
            "     PID      TID COMM              CPU   SAMPLES   SHARE"
        );
        assert_eq!(
            lines[2],
            "     100      100 busy                1        95   49.5%"
        );
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines[5],
            "       -        - [idle]              *        52   27.1%"
        );
    }

    #[test]
    fn table_limit_folds_the_rest() {
        let t = table(&snapshot(), Some(1));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[3].contains("(2 more)"), "{}", lines[3]);
        assert!(lines[3].contains("43"), "{}", lines[3]);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v = json(&snapshot(), Some(2));
        assert_eq!(v["source"], "software-fallback");
        assert_eq!(v["duration_s"], 2.0);
        assert_eq!(v["cpus"][1]["cpu"], 1);
        assert_eq!(v["cpus"][1]["samples"], 100);
        assert_eq!(v["cpus"][1]["event"], "cpu-clock");
        let tasks = v["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0]["tgid"], 100);
        assert_eq!(tasks[0]["tid"], 100);
        assert_eq!(tasks[0]["comm"], "busy");
        assert_eq!(tasks[0]["samples"], 95);
        assert!(tasks.iter().all(|t| t["tgid"] != 0), "idle is not a task");
        assert_eq!(v["idle_samples"], 52);
    }

    #[test]
    fn plan_table_rows_and_notes() {
        let pmus = crate::pmu::tests::load("juno");
        let list = event::parse("cycles:u,inst_spec").unwrap();
        let p = crate::plan::plan(
            &list,
            &pmus,
            &pmus.online,
            Some(crate::plan::KernelVersion(6, 1)),
        )
        .unwrap();
        let t = plan_table(&p);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with(" CPU EVENT"), "{t}");
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "0",
                "cycles:u",
                "armv8_cortex_a53",
                "pmu-alias",
                "11:0x11",
                "kh",
                "legacy",
                "0:0x0"
            ]
        );
        assert!(
            t.contains("note: `inst_spec` is planned on CPUs 1-2 only"),
            "{t}"
        );
    }

    #[test]
    fn pmus_views() {
        let s = crate::pmu::tests::load("adl");
        let t = pmus_table(&s);
        assert!(
            t.starts_with("online CPUs: 0-23 (possible 0-23); 2 core PMUs (heterogeneous)"),
            "{t}"
        );
        assert!(
            t.lines().any(|l| l
                .split_whitespace()
                .take(4)
                .eq(["cpu_core", "4", "yes", "0-15"])),
            "{t}"
        );
        let j = pmus_json(&s);
        assert_eq!(j["heterogeneous"], true);
        let atom = j["pmus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "cpu_atom")
            .unwrap();
        assert_eq!(atom["type"], 10);
        assert_eq!(atom["core"], true);
        assert_eq!(atom["cpus"].as_array().unwrap().len(), 8);
        assert_eq!(atom["formats"]["event"], "config:0-7");
        let vm = pmus_json(&crate::pmu::tests::load("vm"));
        assert_eq!(vm["heterogeneous"], false);
        assert_eq!(vm["core_pmus"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn event_listing() {
        let s = crate::pmu::tests::load("adl");
        let all = event_list(&s, None);
        assert!(all.contains("generic hardware events"));
        assert!(all.contains("  L1-dcache-load-misses"));
        assert!(all.contains("cpu_atom (type 10, core, CPUs 16-23)"));
        assert!(all.contains("energy-pkg"));
        assert!(all.contains("[6.103515625e-5 MiB]"), "{all}");
        let one = event_list(&s, Some("cpu_core"));
        assert!(!one.contains("generic hardware"));
        assert!(!one.contains("cpu_atom"));
        assert!(one.contains("  topdown-retiring"));
        assert!(one.contains("format fields:"));
        assert!(
            one.contains("  ldlat                            config1:0-15"),
            "{one}"
        );
    }
}
