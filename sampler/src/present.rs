//! Rendering a [`Snapshot`]: a plain table for terminals and pipes, and JSON.

use std::fmt::Write as _;

use serde_json::Value;

use crate::model::Snapshot;

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
            None => names.push((c.event, 1)),
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
}
