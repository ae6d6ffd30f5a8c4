//! Functions and call stacks: where the samples landed, per function, with the
//! sampling group's counters per function (cycles, instructions, IPC, cache-miss %),
//! and per call chain with `-g`. Pure: built from symbolized location entries.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use sampler_common::{LocKey, LocStats, LocValue, MAX_MEMBERS};

use crate::{
    model::{
        locations::{FunctionRow, LocationStats, Site, StackRow},
        rollup::{Ratios, heterogeneous},
        snapshot::{RunInfo, Snapshot},
    },
    symbolize::{Frame, Place},
};

/// The sites of `locations` on the CPUs of `run`, idle (pid 0) left out, framed by
/// `frames`.
pub fn sites(
    locations: &[(LocKey, LocValue)],
    run: &RunInfo,
    located: impl Fn(&LocKey) -> (Vec<Arc<Frame>>, Vec<Place>),
) -> Vec<Site> {
    locations
        .iter()
        .filter(|(k, _)| k.tgid != 0 && run.cpus.iter().any(|c| c.cpu == k.cpu))
        .map(|(k, v)| {
            let (frames, places) = located(k);
            Site {
                tgid: k.tgid,
                tid: k.tid,
                start_ns: k.start,
                cpu: k.cpu,
                cgroup_id: k.cgroup_id,
                frames,
                places,
                user_stack: k.user_stack >= 0,
                samples: v.samples,
                period_sum: v.period_sum,
                counts: v.counts,
            }
        })
        .collect()
}

/// The interval's location counters from the per-CPU statistics of the CPUs of `run`.
pub fn location_stats(
    stats: &[LocStats],
    run: &RunInfo,
    stacks: bool,
    evicted: u64,
) -> LocationStats {
    let mut out = LocationStats {
        stacks,
        evicted,
        ..LocationStats::default()
    };
    for c in &run.cpus {
        if let Some(s) = stats.get(c.cpu as usize) {
            out.dropped += s.dropped;
            out.ring_full += s.ring_full;
            out.stack_collisions += s.stack_collisions;
            out.stack_full += s.stack_full;
            out.no_user_stack += s.no_user_stack;
            out.stack_errors += s.stack_errors;
        }
    }
    out
}

/// Which sites a view takes: all, or one process's (pid, start time).
pub type ProcessFilter = Option<(u32, u64)>;

fn keep(filter: ProcessFilter, site: &Site) -> bool {
    filter.is_none_or(|(tgid, start)| site.tgid == tgid && site.start_ns == start)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn named_counts(s: &Snapshot, counts: &[u64; MAX_MEMBERS]) -> BTreeMap<String, u64> {
    s.members
        .iter()
        .cloned()
        .zip(counts.iter().copied())
        .collect()
}

#[derive(Default)]
struct Acc {
    samples: u64,
    total: u64,
    period: u64,
    counts: [u64; MAX_MEMBERS],
    per_pmu: BTreeMap<String, (u64, [u64; MAX_MEMBERS])>,
}

impl Acc {
    fn add(&mut self, site: &Site, pmu: Option<&str>) {
        self.samples += site.samples;
        self.period += site.period_sum;
        for (sum, c) in self.counts.iter_mut().zip(site.counts) {
            *sum += c;
        }
        if let Some(pmu) = pmu {
            let e = self.per_pmu.entry(pmu.to_owned()).or_default();
            e.0 += site.period_sum;
            for (sum, c) in e.1.iter_mut().zip(site.counts) {
                *sum += c;
            }
        }
    }
}

/// Per function (self samples: where the samples landed), busiest first; with
/// stacks, `total_samples` counts each stack through the function once.
pub fn functions(s: &Snapshot, filter: ProcessFilter) -> Vec<FunctionRow> {
    let ratios = Ratios::of(s);
    let hetero = heterogeneous(s);
    let pmu_of: HashMap<u32, &str> = s
        .cpus
        .iter()
        .map(|c| (c.cpu, c.pmu.as_deref().unwrap_or("-")))
        .collect();
    let mut acc: HashMap<&Frame, Acc> = HashMap::new();
    for site in s.sites.iter().filter(|site| keep(filter, site)) {
        let Some(leaf) = site.frames.first() else {
            continue;
        };
        let pmu = hetero.then(|| pmu_of.get(&site.cpu).copied().unwrap_or("-"));
        acc.entry(leaf.as_ref()).or_default().add(site, pmu);
        // Each function on the stack once, however often it recurses.
        let mut seen: Vec<&Frame> = Vec::with_capacity(site.frames.len());
        for f in &site.frames {
            if !seen.contains(&f.as_ref()) {
                seen.push(f);
                acc.entry(f.as_ref()).or_default().total += site.samples;
            }
        }
    }
    let mut rows: Vec<FunctionRow> = acc
        .into_iter()
        .filter(|(_, a)| a.samples > 0 || a.total > 0)
        .map(|(f, a)| FunctionRow {
            function: f.function.clone(),
            module: f.module.clone(),
            kernel: f.kernel,
            samples: a.samples,
            share: percent(a.samples, s.samples),
            total_samples: a.total,
            period_sum: a.period,
            counts: named_counts(s, &a.counts),
            ipc: ratios.ipc(a.period, &a.counts),
            miss_pct: ratios.miss_pct(&a.counts),
            ipc_by_pmu: a
                .per_pmu
                .iter()
                .map(|(pmu, (period, counts))| (pmu.clone(), ratios.ipc(*period, counts)))
                .collect(),
        })
        .collect();
    rows.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then(b.total_samples.cmp(&a.total_samples))
            .then_with(|| a.function.cmp(&b.function))
            .then_with(|| a.module.cmp(&b.module))
    });
    rows
}

/// Per (process, call chain), busiest first (with `-g`).
pub fn stacks(s: &Snapshot, filter: ProcessFilter) -> Vec<StackRow> {
    let ratios = Ratios::of(s);
    let comm = process_names(s);
    let mut acc: HashMap<(u32, u64, Vec<&Frame>), Acc> = HashMap::new();
    for site in s.sites.iter().filter(|site| keep(filter, site)) {
        let chain: Vec<&Frame> = site.frames.iter().map(AsRef::as_ref).collect();
        acc.entry((site.tgid, site.start_ns, chain))
            .or_default()
            .add(site, None);
    }
    let mut rows: Vec<StackRow> = acc
        .into_iter()
        .map(|((tgid, start, chain), a)| StackRow {
            tgid,
            comm: comm.get(&(tgid, start)).cloned().unwrap_or_default(),
            frames: chain.into_iter().cloned().collect(),
            samples: a.samples,
            share: percent(a.samples, s.samples),
            period_sum: a.period,
            counts: named_counts(s, &a.counts),
            ipc: ratios.ipc(a.period, &a.counts),
        })
        .collect();
    rows.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then(a.tgid.cmp(&b.tgid))
            .then_with(|| a.frames.cmp(&b.frames))
    });
    rows
}

/// The call chains that reach `function` (in `module`): each stack through it cut at
/// its innermost occurrence, outermost caller first, busiest first.
pub fn callers(s: &Snapshot, function: &str, module: &str) -> Vec<(Vec<Frame>, u64)> {
    let mut acc: HashMap<Vec<&Frame>, u64> = HashMap::new();
    for site in &s.sites {
        let Some(at) = site
            .frames
            .iter()
            .position(|f| f.function == function && f.module == module)
        else {
            continue;
        };
        let chain: Vec<&Frame> = site.frames[at..].iter().rev().map(AsRef::as_ref).collect();
        *acc.entry(chain).or_default() += site.samples;
    }
    let mut rows: Vec<(Vec<Frame>, u64)> = acc
        .into_iter()
        .map(|(chain, n)| (chain.into_iter().cloned().collect(), n))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows
}

/// Process names by (pid, start time), from the task rows (the busiest thread's
/// name, as the process view names it).
pub fn process_names(s: &Snapshot) -> HashMap<(u32, u64), String> {
    let mut best: HashMap<(u32, u64), (u64, String)> = HashMap::new();
    for t in &s.tasks {
        let main = u64::from(t.tid == t.tgid);
        let e = best
            .entry((t.tgid, t.start_ns))
            .or_insert((0, String::new()));
        let rank = main << 62 | t.samples;
        if rank > e.0 || e.1.is_empty() {
            *e = (rank, t.comm.clone());
        }
    }
    best.into_iter().map(|(k, (_, n))| (k, n)).collect()
}

/// Samples whose recorded user stack has at most one frame (see
/// [`LocationStats::short_user_stacks`]).
pub fn short_user_stacks(sites: &[Site]) -> u64 {
    sites
        .iter()
        .filter(|s| s.user_stack && s.frames.iter().filter(|f| !f.kernel).count() == 1)
        .map(|s| s.samples)
        .sum()
}

/// The warning for short stacks, once most user stacks are a single frame.
pub fn short_stack_warning(stats: &LocationStats, sites: &[Site]) -> Option<String> {
    let with_user: u64 = sites
        .iter()
        .filter(|s| s.user_stack && s.frames.iter().any(|f| !f.kernel))
        .map(|s| s.samples)
        .sum();
    (stats.stacks && with_user > 0 && stats.short_user_stacks * 2 > with_user).then(|| {
        format!(
            "{} of {with_user} user stacks have a single frame: the code was likely built \
             without frame pointers (build with -fno-omit-frame-pointer, or \
             RUSTFLAGS=\"-C force-frame-pointers=yes\"), so callers are missing",
            stats.short_user_stacks
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::tests as snap;

    fn frame(function: &str, module: &str) -> Arc<Frame> {
        Arc::new(Frame {
            function: function.to_owned(),
            module: module.to_owned(),
            kernel: module == "[kernel]",
        })
    }

    fn site(tgid: u32, cpu: u32, frames: &[(&str, &str)], samples: u64, instr: u64) -> Site {
        Site {
            tgid,
            tid: tgid,
            start_ns: 0,
            cpu,
            cgroup_id: 0,
            frames: frames.iter().map(|(f, m)| frame(f, m)).collect(),
            places: Vec::new(),
            user_stack: true,
            samples,
            period_sum: samples * 1000,
            counts: [instr, 0, 0, 0],
        }
    }

    fn snapshot(sites: Vec<Site>) -> Snapshot {
        let mut s = crate::model::rollup::tests::snapshot();
        s.members = vec!["instructions".to_owned()];
        for c in &mut s.cpus {
            c.event = "cycles".to_owned();
        }
        s.samples = 200;
        s.sites = sites;
        s
    }

    #[test]
    fn self_and_total_samples_with_ipc_per_function() {
        let s = snapshot(vec![
            site(
                10,
                0,
                &[("hot", "w"), ("a", "w"), ("main", "w")],
                60,
                60_000,
            ),
            site(
                10,
                1,
                &[("hot", "w"), ("a", "w"), ("main", "w")],
                20,
                40_000,
            ),
            site(
                10,
                0,
                &[("warm", "w"), ("b", "w"), ("main", "w")],
                40,
                20_000,
            ),
            site(11, 0, &[("schedule", "[kernel]"), ("other", "x")], 10, 0),
        ]);
        let rows = functions(&s, None);
        let hot = &rows[0];
        assert_eq!((hot.function.as_str(), hot.samples), ("hot", 80));
        assert_eq!(hot.total_samples, 80);
        assert!((hot.share - 40.0).abs() < 1e-9);
        assert_eq!(hot.period_sum, 80_000);
        assert_eq!(hot.counts["instructions"], 100_000);
        assert_eq!(hot.ipc, Some(1.25));
        let main = rows.iter().find(|r| r.function == "main").unwrap();
        assert_eq!((main.samples, main.total_samples), (0, 120));
        assert_eq!(rows[1].function, "warm");
        assert_eq!(rows[1].ipc, Some(0.5));
        let k = rows.iter().find(|r| r.function == "schedule").unwrap();
        assert!(k.kernel);
        // One process's functions.
        let only = functions(&s, Some((11, 0)));
        assert_eq!(only[0].function, "schedule");
        assert!(only.iter().all(|r| r.function != "hot"));
    }

    #[test]
    fn recursion_counts_once_in_total() {
        let s = snapshot(vec![site(
            10,
            0,
            &[("fib", "w"), ("fib", "w"), ("fib", "w"), ("main", "w")],
            5,
            0,
        )]);
        let rows = functions(&s, None);
        let fib = rows.iter().find(|r| r.function == "fib").unwrap();
        assert_eq!((fib.samples, fib.total_samples), (5, 5));
    }

    #[test]
    fn stacks_and_callers() {
        let s = snapshot(vec![
            site(10, 0, &[("hot", "w"), ("a", "w"), ("main", "w")], 60, 0),
            site(10, 1, &[("hot", "w"), ("a", "w"), ("main", "w")], 20, 0),
            site(10, 0, &[("hot", "w"), ("b", "w"), ("main", "w")], 5, 0),
        ]);
        let st = stacks(&s, None);
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].samples, 80);
        assert_eq!(st[0].frames[1].function, "a");
        let c = callers(&s, "hot", "w");
        assert_eq!(c.len(), 2);
        let names: Vec<&str> = c[0].0.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(names, ["main", "a", "hot"]);
        assert_eq!(c[0].1, 80);
        assert_eq!(c[1].1, 5);
    }

    #[test]
    fn short_stacks_are_said_once_most_are_single_frames() {
        let sites = vec![
            site(10, 0, &[("hot", "w")], 80, 0),
            site(
                10,
                0,
                &[("x", "[kernel]"), ("hot", "w"), ("main", "w")],
                20,
                0,
            ),
        ];
        let mut stats = LocationStats {
            stacks: true,
            ..LocationStats::default()
        };
        stats.short_user_stacks = short_user_stacks(&sites);
        assert_eq!(stats.short_user_stacks, 80);
        // A user stack lost to a collision leaves the sampled instruction alone: not
        // a short stack.
        let mut lost = sites.clone();
        lost[0].user_stack = false;
        assert_eq!(short_user_stacks(&lost), 0);
        let w = short_stack_warning(&stats, &sites).expect("warning");
        assert!(w.contains("frame pointers"), "{w}");
        stats.short_user_stacks = 10;
        assert_eq!(short_stack_warning(&stats, &sites), None);
    }

    #[test]
    fn sites_leave_out_idle_and_unselected_cpus() {
        let (_, run) = snap::example();
        let key = |tgid, cpu| LocKey {
            tgid,
            cpu,
            ip: 0x1000,
            ..LocKey::default()
        };
        let v = LocValue {
            samples: 3,
            ..LocValue::default()
        };
        let locs = vec![(key(0, 0), v), (key(7, 0), v), (key(7, 99), v)];
        let got = sites(&locs, &run, |_| (vec![frame("f", "m")], Vec::new()));
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].tgid, got[0].samples), (7, 3));
    }
}
