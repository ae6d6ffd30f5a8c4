//! Two profiles compared per function: the change in share of the samples and in
//! IPC, the functions that grew most first (a regression between two builds is the
//! top rows).

use std::{collections::HashMap, fmt::Write as _};

use serde::Serialize;

use crate::model::{locations::FunctionRow, snapshot::Snapshot};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffRow {
    pub function: String,
    pub module: String,
    /// Percent of each profile's samples that landed in the function.
    pub base_share: f64,
    pub share: f64,
    /// `share - base_share`, in percentage points.
    pub delta: f64,
    pub base_ipc: Option<f64>,
    pub ipc: Option<f64>,
}

impl DiffRow {
    pub fn ipc_delta(&self) -> Option<f64> {
        Some(self.ipc? - self.base_ipc?)
    }
}

/// Each function of either profile, the ones whose share grew most first; ties by
/// the larger IPC drop, then by name.
pub fn diff(base: &Snapshot, new: &Snapshot) -> Vec<DiffRow> {
    let rows = |s: &Snapshot| -> HashMap<(String, String), FunctionRow> {
        s.functions
            .iter()
            .flatten()
            .filter(|f| f.samples > 0)
            .map(|f| ((f.function.clone(), f.module.clone()), f.clone()))
            .collect()
    };
    let (old, cur) = (rows(base), rows(new));
    let mut keys: Vec<&(String, String)> = old.keys().chain(cur.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out: Vec<DiffRow> = keys
        .into_iter()
        .map(|k| {
            let (b, n) = (old.get(k), cur.get(k));
            let base_share = b.map_or(0.0, |f| f.share);
            let share = n.map_or(0.0, |f| f.share);
            DiffRow {
                function: k.0.clone(),
                module: k.1.clone(),
                base_share,
                share,
                delta: share - base_share,
                base_ipc: b.and_then(|f| f.ipc),
                ipc: n.and_then(|f| f.ipc),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.delta
            .total_cmp(&a.delta)
            .then_with(|| {
                let drop = |r: &DiffRow| r.ipc_delta().unwrap_or(0.0);
                drop(a).total_cmp(&drop(b))
            })
            .then_with(|| a.function.cmp(&b.function))
    });
    out
}

/// The comparison as a table: at most `limit` rows.
pub fn table(rows: &[DiffRow], base: &str, new: &str, limit: usize) -> String {
    let mut out = format!("base {base}\n new {new}\n\n");
    let _ = writeln!(
        out,
        "{:>7} {:>7} {:>8} {:>8} {:>8} {:>7}  {:<40} MODULE",
        "BASE", "NEW", "DELTA", "BASE IPC", "NEW IPC", "ΔIPC", "FUNCTION"
    );
    let ipc = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    for r in rows.iter().take(limit) {
        let _ = writeln!(
            out,
            "{:>6.1}% {:>6.1}% {:>+7.1}pp {:>8} {:>8} {:>7}  {:<40} {}",
            r.base_share,
            r.share,
            r.delta,
            ipc(r.base_ipc),
            ipc(r.ipc),
            r.ipc_delta().map_or("-".to_owned(), |d| format!("{d:+.2}")),
            r.function,
            r.module
        );
    }
    if rows.len() > limit {
        let _ = writeln!(
            out,
            "({} more functions; --top shows more)",
            rows.len() - limit
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(rows: &[(&str, f64, Option<f64>)]) -> Snapshot {
        let mut s = crate::present::profile::pprof::tests::example();
        s.functions = Some(
            rows.iter()
                .map(|&(f, share, ipc)| FunctionRow {
                    function: f.into(),
                    module: "m".into(),
                    kernel: false,
                    samples: 1,
                    share,
                    total_samples: 1,
                    period_sum: 0,
                    counts: Default::default(),
                    ipc,
                    miss_pct: None,
                    ipc_by_pmu: Default::default(),
                })
                .collect(),
        );
        s
    }

    #[test]
    fn the_function_that_grew_comes_first() {
        let base = with(&[
            ("a", 50.0, Some(2.0)),
            ("b", 30.0, Some(1.0)),
            ("gone", 20.0, None),
        ]);
        let new = with(&[
            ("a", 30.0, Some(2.1)),
            ("b", 60.0, Some(0.5)),
            ("new", 10.0, None),
        ]);
        let rows = diff(&base, &new);
        let names: Vec<&str> = rows.iter().map(|r| r.function.as_str()).collect();
        assert_eq!(names, vec!["b", "new", "gone", "a"]);
        assert!((rows[0].delta - 30.0).abs() < 1e-9);
        assert!((rows[0].ipc_delta().unwrap() + 0.5).abs() < 1e-9);
        assert_eq!(rows[1].base_share, 0.0);
        let t = table(&rows, "old.pb.gz", "new.pb.gz", 2);
        assert!(t.contains("+30.0pp") && t.contains("-0.50"), "{t}");
        assert!(t.contains("2 more functions"), "{t}");
    }

    #[test]
    fn equal_shares_rank_by_the_ipc_drop() {
        let base = with(&[("x", 10.0, Some(2.0)), ("y", 10.0, Some(2.0))]);
        let new = with(&[("x", 10.0, Some(1.9)), ("y", 10.0, Some(1.0))]);
        let names: Vec<String> = diff(&base, &new).into_iter().map(|r| r.function).collect();
        assert_eq!(names, vec!["y", "x"]);
    }
}
