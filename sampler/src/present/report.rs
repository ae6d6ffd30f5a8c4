//! Rendering a [`Snapshot`]: a plain table for terminals and pipes, and JSON.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::{
    discover::pmu::PmuSet,
    events::plan::{Attr, Plan, Rate},
    events::syntax,
    model::snapshot::Snapshot,
};

/// Width of a member count column.
const COUNT_WIDTH: usize = 16;

/// The snapshot as a table: a summary line, the `limit` busiest tasks (all with
/// `None`) with their member counts (and IPC when `cycles` samples and
/// `instructions` counts), idle, then each counted event per CPU when the run counts
/// more than its sampling event.
pub fn table(s: &Snapshot, limit: Option<usize>) -> String {
    let mut out = String::new();
    let events = event_summary(s);
    let _ = writeln!(
        out,
        "{} samples on {} CPU{} in {:.2} s ({events} {}, {}); dropped {}, evicted {}",
        s.samples,
        s.cpus.len(),
        if s.cpus.len() == 1 { "" } else { "s" },
        s.duration_s,
        match (s.frequency_hz, s.period) {
            (Some(hz), _) => Rate::Frequency(hz),
            (None, p) => Rate::Period(p.unwrap_or(0)),
        },
        s.source.as_str(),
        s.dropped,
        s.evicted,
    );
    if let Some(b) = s.bpf {
        let _ = writeln!(
            out,
            "BPF program: {:.0} ns per sample ({} runs, kernel BPF statistics)",
            b.ns_per_sample, b.run_count
        );
        if let Some(ns) = b.switch_ns_per_run {
            let _ = writeln!(
                out,
                "BPF switch programs: {ns:.0} ns per run ({} runs at context switches)",
                b.switch_run_count
            );
        }
    }
    let members: Vec<&String> = s.members.iter().collect();
    let ipc_of = ipc_member(s);
    let mut header = format!(
        "{:>8} {:>8} {:<16} {:>4} {:>9} {:>7}",
        "PID", "TID", "COMM", "CPU", "SAMPLES", "SHARE"
    );
    for m in &members {
        let name: String = m.chars().take(COUNT_WIDTH).collect();
        let _ = write!(header, " {name:>COUNT_WIDTH$}");
    }
    if ipc_of.is_some() {
        let _ = write!(header, " {:>5}", "IPC");
    }
    let _ = writeln!(out, "{header}");
    let row = |out: &mut String,
               c: [&dyn std::fmt::Display; 4],
               samples: u64,
               share: f64,
               counts: Vec<Option<u64>>,
               ipc: Option<f64>| {
        let _ = write!(
            out,
            "{:>8} {:>8} {:<16} {:>4} {:>9} {:>6.1}%",
            c[0], c[1], c[2], c[3], samples, share
        );
        for v in counts {
            match v {
                Some(v) => {
                    let _ = write!(out, " {v:>COUNT_WIDTH$}");
                }
                None => {
                    let _ = write!(out, " {:>COUNT_WIDTH$}", "-");
                }
            }
        }
        match (ipc_of.is_some(), ipc) {
            (false, _) => {}
            (true, Some(ipc)) => {
                let _ = write!(out, " {ipc:>5.2}");
            }
            (true, None) => {
                let _ = write!(out, " {:>5}", "-");
            }
        }
        out.push('\n');
    };
    let ipc =
        |instructions: u64, cycles: u64| (cycles > 0).then(|| instructions as f64 / cycles as f64);
    let shown = limit.unwrap_or(usize::MAX);
    for t in s.tasks.iter().take(shown) {
        let counts = members.iter().map(|m| t.counts.get(*m).copied()).collect();
        let i = ipc_of.and_then(|m| ipc(t.counts.get(m).copied().unwrap_or(0), t.period_sum));
        row(
            &mut out,
            [&t.tgid, &t.tid, &t.comm, &t.cpu],
            t.samples,
            t.share,
            counts,
            i,
        );
    }
    if s.tasks.len() > shown {
        let rest = &s.tasks[shown..];
        let samples: u64 = rest.iter().map(|t| t.samples).sum();
        let share: f64 = rest.iter().map(|t| t.share).sum();
        let sum = |m: &str| rest.iter().filter_map(|t| t.counts.get(m)).sum::<u64>();
        let counts = members.iter().map(|m| Some(sum(m))).collect();
        let cycles: u64 = rest.iter().map(|t| t.period_sum).sum();
        let i = ipc_of.and_then(|m| ipc(sum(m), cycles));
        let more = format!("({} more)", rest.len());
        row(&mut out, [&"", &"", &more, &""], samples, share, counts, i);
    }
    let idle_share = if s.samples == 0 {
        0.0
    } else {
        s.idle_samples as f64 * 100.0 / s.samples as f64
    };
    let idle = vec![None; members.len()];
    row(
        &mut out,
        [&"-", &"-", &"[idle]", &"*"],
        s.idle_samples,
        idle_share,
        idle,
        None,
    );

    if let Some(functions) = &s.functions {
        function_table(&mut out, s, functions, shown);
    }
    if let Some(stacks) = &s.stacks {
        let _ = writeln!(
            out,
            "\n{:>9} {:>7} {:>8} {:<16} STACK (innermost first)",
            "SAMPLES", "SHARE", "PID", "COMM"
        );
        for st in stacks.iter().take(shown.min(10)) {
            let frames: Vec<&str> = st.frames.iter().map(|f| f.function.as_str()).collect();
            let _ = writeln!(
                out,
                "{:>9} {:>6.1}% {:>8} {:<16} {}",
                st.samples,
                st.share,
                st.tgid,
                st.comm,
                frames.join(" < ")
            );
        }
    }
    if let Some(l) = &s.locations {
        let lost = [
            ("dropped", l.dropped),
            ("evicted", l.evicted),
            ("stack collisions", l.stack_collisions),
            ("stack map full", l.stack_full),
            ("other stack errors", l.stack_errors),
            ("addresses of exited processes", l.unnamed.exited),
            ("addresses in stripped binaries", l.unnamed.stripped),
            ("anonymous addresses", l.unnamed.anonymous),
            ("unnamed kernel addresses", l.unnamed.kernel_unknown),
        ];
        let said: Vec<String> = lost
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(what, n)| format!("{what} {n}"))
            .collect();
        if !said.is_empty() {
            let _ = writeln!(out, "locations: {}", said.join(", "));
        }
    }

    if s.events.iter().any(|e| e.group > 0 || e.index > 0) {
        let _ = writeln!(
            out,
            "\n{:<28} {:>4} {:<18} {:>16} {:>16} {:>9}",
            "EVENT", "CPU", "PMU", "COUNT", "SCALED", "COVERAGE"
        );
        for e in &s.events {
            let _ = writeln!(
                out,
                "{:<28} {:>4} {:<18} {:>16} {:>16} {:>8.1}%",
                e.name,
                e.cpu,
                e.pmu.as_deref().unwrap_or("(kernel)"),
                e.value,
                e.scaled.map_or("-".to_owned(), |v| v.to_string()),
                e.coverage * 100.0
            );
        }
    }
    for w in &s.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// The function table of a run that recorded locations: the `limit` busiest functions
/// with their module, samples, share (and total share with stacks), members and IPC.
pub(crate) fn function_table(
    out: &mut String,
    s: &Snapshot,
    functions: &[crate::model::locations::FunctionRow],
    limit: usize,
) {
    let stacks = s.stacks.is_some();
    let _ = write!(
        out,
        "\n{:>9} {:>7}{} {:<40} {:<20}",
        "SAMPLES",
        "SHARE",
        if stacks { "   TOTAL" } else { "" },
        "FUNCTION",
        "MODULE"
    );
    for m in &s.members {
        let name: String = m.chars().take(COUNT_WIDTH).collect();
        let _ = write!(out, " {name:>COUNT_WIDTH$}");
    }
    let ipc = ipc_member(s).is_some();
    if ipc {
        let _ = write!(out, " {:>5}", "IPC");
    }
    out.push('\n');
    for f in functions.iter().filter(|f| f.samples > 0).take(limit) {
        let total = if stacks {
            let pct = if s.samples == 0 {
                0.0
            } else {
                f.total_samples as f64 * 100.0 / s.samples as f64
            };
            format!(" {pct:>6.1}%")
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "{:>9} {:>6.1}%{total} {:<40} {:<20}",
            f.samples, f.share, f.function, f.module
        );
        for m in &s.members {
            let _ = write!(
                out,
                " {:>COUNT_WIDTH$}",
                f.counts.get(m).copied().unwrap_or(0)
            );
        }
        if ipc {
            match f.ipc {
                Some(v) => {
                    let _ = write!(out, " {v:>5.2}");
                }
                None => {
                    let _ = write!(out, " {:>5}", "-");
                }
            }
        }
        out.push('\n');
    }
}

/// The member whose count over the sampled cycles is the IPC: `instructions` (with
/// any modifiers) when every CPU samples `cycles`.
fn ipc_member(s: &Snapshot) -> Option<&str> {
    let i = crate::model::rollup::Ratios::of(s).instructions?;
    s.members.get(i).map(String::as_str)
}

/// The cross-check as a table: one row per CPU and event, then the notes.
pub fn check_table(
    rows: &[crate::model::check::CheckRow],
    tolerance_pct: f64,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let latency = rows.iter().any(|r| r.latency.is_some());
    let page_reads = rows.iter().any(|r| r.page_reads.is_some());
    let _ = write!(
        out,
        "{:>4} {:<20} {:<6} {:>16} {:>16} {:>16} {:>8} {:<4}",
        "CPU", "EVENT", "METHOD", "BPF", "READ", "USERPAGE", "DIFF", ""
    );
    if page_reads {
        let _ = write!(out, " {:>24}", "PAGE READS ok/abort/idx0");
    }
    if latency {
        let _ = write!(out, " {:>9} {:>9} {:>7}", "PAGE ns", "READ ns", "GAIN");
    }
    out.push('\n');
    for r in rows {
        let method = match r.method {
            crate::kernel::userpage::Method::Rdpmc => "rdpmc",
            crate::kernel::userpage::Method::Mrs => "mrs",
            crate::kernel::userpage::Method::Read => "read",
        };
        let ok = r.passes(tolerance_pct);
        let _ = write!(
            out,
            "{:>4} {:<20} {:<6} {:>16} {:>16} {:>16} {:>7.3}% {:<4}",
            r.cpu,
            r.event,
            method,
            r.bpf,
            r.read,
            r.userpage.map_or("-".to_owned(), |v| v.to_string()),
            r.rel_diff * 100.0,
            if ok { "ok" } else { "FAIL" }
        );
        if page_reads {
            let cell = r.page_reads.map_or("-".to_owned(), |p| {
                let o = p.outcomes;
                format!("{}/{}/{}", o.success, o.abort, o.zero)
            });
            let _ = write!(out, " {cell:>24}");
        }
        if let Some(l) = r.latency {
            let _ = write!(
                out,
                " {:>9} {:>9.1} {:>7}",
                l.userpage_ns.map_or("-".to_owned(), |n| format!("{n:.1}")),
                l.read_ns,
                l.speedup.map_or("-".to_owned(), |x| format!("{x:.1}x")),
            );
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    }
    let mut seen: Vec<&str> = Vec::new();
    for n in rows
        .iter()
        .filter_map(|r| r.note.as_deref())
        .chain(notes.iter().map(String::as_str))
    {
        if !seen.contains(&n) {
            seen.push(n);
            let _ = writeln!(out, "note: {n}");
        }
    }
    for r in rows {
        if let Some(p) = r.page_reads.filter(|p| p.disagree > 0) {
            let _ = writeln!(
                out,
                "error: CPU {} {}: {} of {} user-page reads disagreed with read() (below \
                 an earlier value, or outside read()'s window)",
                r.cpu, r.event, p.disagree, p.outcomes.success
            );
        }
    }
    if page_reads {
        let _ = writeln!(
            out,
            "note: PAGE READS: the reader's user-page reads through the window, each in a \
             restartable sequence: read from the counter / restarted (preempted or \
             migrated: read() instead) / index 0 (no counter to read here: read() instead)"
        );
    }
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

/// The snapshot as one JSON document on one line, written straight from the model
/// (building a `serde_json::Value` tree first cost a tenth of a live refresh). A
/// view that shows fewer tasks truncates `s.tasks` first.
pub fn json(s: &Snapshot) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "null".to_owned())
}

/// Adds `"key": value` as the last field of the JSON object `doc`, which [`json`]
/// wrote: for a figure measured after the document was written (`refresh_ms` covers
/// writing it).
pub fn append_field(doc: &mut String, key: &str, value: f64) {
    if doc.ends_with('}') {
        doc.pop();
        let sep = if doc.ends_with('{') { "" } else { "," };
        let value =
            serde_json::Number::from_f64(value).map_or("null".to_owned(), |n| n.to_string());
        let _ = write!(doc, "{sep}{}:{value}}}", Value::from(key));
    }
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
        "{:>4} {:<24} {:<18} {:<8} {:<10} {:<22} {:<8} FALLBACKS",
        "CPU", "EVENT", "PMU", "PMU-EVT", "ENCODING", "TYPE:CONFIG[,CONFIG1]", "EXCLUDE"
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
            "{:>4} {:<24} {:<18} {:<8} {:<10} {:<22} {:<8} {}",
            e.cpu,
            e.event,
            e.pmu.as_deref().unwrap_or("(kernel)"),
            e.pmu_event
                .map_or_else(|| "-".to_owned(), |n| format!("{n:#04x}")),
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
        let _ = writeln!(out, "note: {}", crate::events::plan::NO_CORE_PMU);
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
        for &(n, _) in syntax::HARDWARE {
            let _ = writeln!(out, "  {n}");
        }
        let _ = writeln!(out, "hardware cache events (on each core PMU):");
        for n in syntax::cache_names() {
            let _ = writeln!(out, "  {n}");
        }
        let _ = writeln!(out, "software events:");
        for &(n, _) in syntax::SOFTWARE {
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
    use crate::{kernel::session::EventCount, model::snapshot::tests::example};

    fn snapshot() -> Snapshot {
        let (maps, run) = example();
        Snapshot::build(&maps, &[], &run, 2.0)
    }

    #[test]
    fn table_has_summary_rows_members_and_idle() {
        let t = table(&snapshot(), None);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "192 samples on 2 CPUs in 2.00 s (cpu-clock at 50 Hz, software-fallback); dropped 2, evicted 3"
        );
        assert_eq!(
            lines[1],
            "     PID      TID COMM              CPU   SAMPLES   SHARE context-switches      page-faults"
        );
        assert_eq!(
            lines[2],
            "     100      100 busy                1        95   49.5%              285              475"
        );
        assert_eq!(
            lines.len(),
            6,
            "no event section without counted events: {t}"
        );
        assert_eq!(
            lines[5],
            "       -        - [idle]              *        52   27.1%                -                -"
        );
    }

    #[test]
    fn table_limit_folds_the_rest() {
        let t = table(&snapshot(), Some(1));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5);
        let more: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(more, ["(2", "more)", "43", "22.4%", "129", "215"]);
    }

    #[test]
    fn ipc_and_event_section_when_cycles_sample_and_instructions_count() {
        let (maps, mut run) = example();
        for c in &mut run.cpus {
            c.event = "cycles:u".into();
            c.hardware = true;
        }
        run.members = vec!["instructions:u".into()];
        let counts = [EventCount {
            cpu: 0,
            group: 0,
            index: 1,
            event: "instructions:u".into(),
            pmu: Some("cpu_core".into()),
            value: 500,
            enabled: 1000,
            running: 500,
        }];
        let t = table(&Snapshot::build(&maps, &counts, &run, 2.0), None);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].ends_with(" instructions:u   IPC"), "{t}");
        // busy: 95 samples, instructions 95*3 over cycles 95*1_001_001.
        let ipc = format!("{:.2}", 3.0 / 1_001_001.0);
        assert!(
            lines[2].ends_with(&format!("             285  {ipc}")),
            "{t}"
        );
        assert!(lines[5].ends_with("    -"), "idle has no IPC: {t}");
        assert_eq!(lines[6], "");
        assert!(lines[7].starts_with("EVENT"), "{t}");
        let ev: Vec<&str> = lines[8].split_whitespace().collect();
        assert_eq!(
            ev,
            ["instructions:u", "0", "cpu_core", "500", "1000", "50.0%"]
        );
    }

    #[test]
    fn json_has_the_documented_fields() {
        let mut s = snapshot();
        s.tasks.truncate(2);
        let mut text = json(&s);
        assert!(!text.contains('\n'), "one line: {text}");
        append_field(&mut text, "refresh_ms", 0.25);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["refresh_ms"], 0.25);
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
        // The same fields as the model's own serialization, and the added one.
        let model = serde_json::to_value(&s).unwrap();
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        keys.retain(|k| *k != "refresh_ms");
        assert_eq!(keys, model.as_object().unwrap().keys().collect::<Vec<_>>());
        assert_eq!(v["tasks"], model["tasks"]);
    }

    #[test]
    fn fields_are_appended_to_any_object() {
        let mut empty = "{}".to_owned();
        append_field(&mut empty, "a\"b", 1.5);
        assert_eq!(empty, r#"{"a\"b":1.5}"#);
        append_field(&mut empty, "nan", f64::NAN);
        assert_eq!(empty, r#"{"a\"b":1.5,"nan":null}"#);
        let mut not_an_object = "null".to_owned();
        append_field(&mut not_an_object, "x", 1.0);
        assert_eq!(not_an_object, "null");
    }

    #[test]
    fn plan_table_rows_and_notes() {
        let pmus = crate::discover::pmu::tests::load("juno");
        let list = syntax::parse("cycles:u,inst_spec").unwrap();
        let p = crate::events::plan::plan(
            &list,
            &pmus,
            &pmus.online,
            Some(crate::events::plan::KernelVersion(6, 1)),
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
                "0x11",
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
        let s = crate::discover::pmu::tests::load("adl");
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
        let vm = pmus_json(&crate::discover::pmu::tests::load("vm"));
        assert_eq!(vm["heterogeneous"], false);
        assert_eq!(vm["core_pmus"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn event_listing() {
        let s = crate::discover::pmu::tests::load("adl");
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
