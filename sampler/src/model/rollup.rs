//! Roll-ups of a [`Snapshot`]: per process, thread, cgroup, CPU and event, with the
//! derived ratios (IPC, cache-miss %) and the per-core-type split on heterogeneous
//! systems. Pure: what the live view and the exporters show, unit tested here.

use std::collections::{BTreeMap, HashMap};

use crate::model::snapshot::Snapshot;

/// One row of a roll-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Process id, thread id, cgroup id or CPU number, as the view keys it.
    pub id: u64,
    /// Process id of a thread row (0 otherwise).
    pub tgid: u32,
    /// Start time of the process of a process or thread row (0 otherwise, or when
    /// unknown): rows of an exited process and of a later one with its pid differ.
    pub start_ns: u64,
    pub name: String,
    pub cgroup_id: u64,
    pub samples: u64,
    /// Percent of all samples on the selected CPUs (idle included).
    pub share: f64,
    /// The sampling counter's growth over the samples: cycles under `cycles`,
    /// nanoseconds under `cpu-clock`.
    pub period_sum: u64,
    /// Per member of the sampling group, in group order.
    pub counts: Vec<u64>,
    /// Per PMU (core type) the task ran on: (period sum, member counts).
    pub per_pmu: BTreeMap<String, (u64, Vec<u64>)>,
}

impl Row {
    fn new(id: u64, name: String, members: usize) -> Self {
        Self {
            id,
            tgid: 0,
            start_ns: 0,
            name,
            cgroup_id: 0,
            samples: 0,
            share: 0.0,
            period_sum: 0,
            counts: vec![0; members],
            per_pmu: BTreeMap::new(),
        }
    }
}

/// Which derived ratios a snapshot allows, from the sampling event and its members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ratios {
    /// The sampling event counts cycles and this member counts instructions.
    pub instructions: Option<usize>,
    /// Members counting cache misses and references.
    pub cache_misses: Option<usize>,
    pub cache_references: Option<usize>,
    /// Every CPU samples `cycles` (the period sum is cycles).
    pub cycles: bool,
    /// Every CPU samples the software clock (the period sum is nanoseconds).
    pub clock: bool,
}

/// An event name without its modifiers (`cycles:u` -> `cycles`), perf's aliases
/// folded (`cpu-cycles` -> `cycles`).
fn base_name(name: &str) -> &str {
    match name.split(':').next().unwrap_or(name) {
        "cpu-cycles" => "cycles",
        base => base,
    }
}

impl Ratios {
    pub fn of(s: &Snapshot) -> Self {
        let pos = |name: &str| s.members.iter().position(|m| base_name(m) == name);
        let all = |names: &[&str]| {
            !s.cpus.is_empty() && s.cpus.iter().all(|c| names.contains(&base_name(&c.event)))
        };
        let cycles = all(&["cycles"]);
        Self {
            instructions: pos("instructions").filter(|_| cycles),
            cache_misses: pos("cache-misses"),
            cache_references: pos("cache-references"),
            cycles,
            clock: all(&["cpu-clock", "task-clock"]),
        }
    }

    /// Instructions per cycle of `period` cycles and member `counts`.
    pub fn ipc(&self, period: u64, counts: &[u64]) -> Option<f64> {
        let i = self.instructions?;
        (period > 0).then(|| counts[i] as f64 / period as f64)
    }

    /// Cache misses per 100 references.
    pub fn miss_pct(&self, counts: &[u64]) -> Option<f64> {
        let (m, r) = (self.cache_misses?, self.cache_references?);
        (counts[r] > 0).then(|| 100.0 * counts[m] as f64 / counts[r] as f64)
    }
}

fn pmu_of_cpu(s: &Snapshot) -> HashMap<u32, String> {
    s.cpus
        .iter()
        .map(|c| (c.cpu, c.pmu.clone().unwrap_or_else(|| "-".to_owned())))
        .collect()
}

/// Whether the sampled CPUs span more than one PMU (core type).
pub fn heterogeneous(s: &Snapshot) -> bool {
    let mut pmus: Vec<&Option<String>> = s.cpus.iter().map(|c| &c.pmu).collect();
    pmus.sort();
    pmus.dedup();
    pmus.len() > 1
}

/// Rows keyed by `key(task)` = (id, process start, process id, name), busiest first.
fn roll(
    s: &Snapshot,
    key: impl Fn(&crate::model::snapshot::TaskRow) -> (u64, u64, u32, String),
) -> Vec<Row> {
    let pmus = pmu_of_cpu(s);
    let members = s.members.len();
    let mut rows: HashMap<(u64, u64), Row> = HashMap::new();
    // The cgroup of a row: where most of its samples were.
    let mut cgroup_samples: HashMap<((u64, u64), u64), u64> = HashMap::new();
    // Samples of the main-thread row a process row is named after.
    let mut named_by: HashMap<(u64, u64), u64> = HashMap::new();
    for t in &s.tasks {
        let (id, start, tgid, name) = key(t);
        let row = rows
            .entry((id, start))
            .or_insert_with(|| Row::new(id, name.clone(), members));
        row.tgid = tgid;
        row.start_ns = start;
        // A process is named after its main thread when that thread was sampled, by
        // the CPU row with most samples (a name changed by exec() wins once the new
        // program has run longer).
        if u64::from(t.tid) == id && t.tid == t.tgid {
            let best = named_by.entry((id, start)).or_default();
            if t.samples > *best {
                *best = t.samples;
                row.name = name;
            }
        }
        row.samples += t.samples;
        row.share += t.share;
        row.period_sum += t.period_sum;
        let counts: Vec<u64> = s
            .members
            .iter()
            .map(|m| t.counts.get(m).copied().unwrap_or(0))
            .collect();
        for (sum, c) in row.counts.iter_mut().zip(&counts) {
            *sum += c;
        }
        let pmu = pmus.get(&t.cpu).cloned().unwrap_or_else(|| "-".to_owned());
        let split = row
            .per_pmu
            .entry(pmu)
            .or_insert_with(|| (0, vec![0; members]));
        split.0 += t.period_sum;
        for (sum, c) in split.1.iter_mut().zip(&counts) {
            *sum += c;
        }
        *cgroup_samples
            .entry(((id, start), t.cgroup_id))
            .or_default() += t.samples;
    }
    for ((id, cgroup), n) in &cgroup_samples {
        if let Some(row) = rows.get_mut(id) {
            let best = cgroup_samples
                .get(&(*id, row.cgroup_id))
                .copied()
                .unwrap_or(0);
            if *n > best || (*n == best && *cgroup < row.cgroup_id) {
                row.cgroup_id = *cgroup;
            }
        }
    }
    let mut out: Vec<Row> = rows.into_values().collect();
    out.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then(a.id.cmp(&b.id))
            .then(a.start_ns.cmp(&b.start_ns))
    });
    out
}

/// Per process (all its threads on all CPUs).
pub fn processes(s: &Snapshot) -> Vec<Row> {
    roll(s, |t| {
        (u64::from(t.tgid), t.start_ns, t.tgid, t.comm.clone())
    })
}

/// Per thread (all CPUs).
pub fn threads(s: &Snapshot) -> Vec<Row> {
    roll(s, |t| {
        (u64::from(t.tid), t.start_ns, t.tgid, t.comm.clone())
    })
}

/// Per cgroup, named by `name_of(cgroup id)`.
pub fn cgroups(s: &Snapshot, name_of: impl Fn(u64) -> String) -> Vec<Row> {
    let mut rows = roll(s, |t| (t.cgroup_id, 0, 0, String::new()));
    for r in &mut rows {
        r.cgroup_id = r.id;
        r.name = name_of(r.id);
    }
    rows
}

/// One CPU: its PMU, how busy it was (non-idle share of its samples).
#[derive(Debug, Clone, PartialEq)]
pub struct CpuLoad {
    pub cpu: u32,
    pub pmu: String,
    pub event: String,
    pub samples: u64,
    pub busy_pct: f64,
}

/// How busy each CPU was: for the software clock, the time its non-idle samples
/// stand for over the interval; for hardware events in frequency mode, its non-idle
/// samples against the samples asked for (the counter stops while the CPU idles).
pub fn cpus(s: &Snapshot) -> Vec<CpuLoad> {
    s.cpus
        .iter()
        .map(|c| {
            let busy_samples = c.samples.saturating_sub(c.idle_samples);
            let busy_period: u64 = s
                .tasks
                .iter()
                .filter(|t| t.cpu == c.cpu)
                .map(|t| t.period_sum)
                .sum();
            let busy = if c.event == "cpu-clock" || c.event == "task-clock" {
                busy_period as f64 / (s.duration_s * 1e9)
            } else if let Some(hz) = s.frequency_hz {
                busy_samples as f64 / (hz as f64 * s.duration_s)
            } else if c.samples > 0 {
                busy_samples as f64 / c.samples as f64
            } else {
                0.0
            };
            CpuLoad {
                cpu: c.cpu,
                pmu: c.pmu.clone().unwrap_or_else(|| "-".to_owned()),
                event: c.event.clone(),
                samples: c.samples,
                busy_pct: if busy.is_finite() {
                    (100.0 * busy).clamp(0.0, 100.0)
                } else {
                    0.0
                },
            }
        })
        .collect()
}

/// One event summed over its CPUs, with the lowest coverage among them.
#[derive(Debug, Clone, PartialEq)]
pub struct EventTotal {
    pub name: String,
    pub group: usize,
    pub cpus: usize,
    pub value: u64,
    pub scaled: u64,
    /// running / enabled, the lowest of its CPUs (1.0: never multiplexed).
    pub coverage: f64,
}

pub fn events(s: &Snapshot) -> Vec<EventTotal> {
    let mut out: Vec<EventTotal> = Vec::new();
    for e in &s.events {
        let pos = out
            .iter()
            .position(|t| t.name == e.name && t.group == e.group);
        let t = match pos {
            Some(i) => &mut out[i],
            None => {
                out.push(EventTotal {
                    name: e.name.clone(),
                    group: e.group,
                    cpus: 0,
                    value: 0,
                    scaled: 0,
                    coverage: 1.0,
                });
                out.last_mut().expect("just pushed")
            }
        };
        t.cpus += 1;
        t.value += e.value;
        t.scaled += e.scaled.unwrap_or(0);
        t.coverage = t.coverage.min(e.coverage);
    }
    out
}

/// The PMUs of the sampled CPUs and which CPUs each covers, as `pmu: 0-3`.
pub fn pmu_cpus(s: &Snapshot) -> Vec<(String, String)> {
    let mut by: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for c in &s.cpus {
        by.entry(c.pmu.clone().unwrap_or_else(|| "-".to_owned()))
            .or_default()
            .push(c.cpu);
    }
    by.into_iter()
        .map(|(pmu, cpus)| {
            (
                pmu,
                crate::discover::cpus::CpuList::from_cpus(cpus).to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::snapshot::{CpuRow, TaskRow};

    fn task(tgid: u32, tid: u32, cpu: u32, cgroup: u64, samples: u64, comm: &str) -> TaskRow {
        TaskRow {
            tgid,
            tid,
            start_ns: 0,
            comm: comm.into(),
            cpu,
            cgroup_id: cgroup,
            samples,
            period_sum: samples * 1000,
            share: samples as f64,
            counts: [("instructions".to_owned(), samples * 1500)].into(),
        }
    }

    fn cpu(cpu: u32, pmu: &str, samples: u64, idle: u64) -> CpuRow {
        CpuRow {
            cpu,
            event: "cycles".into(),
            pmu: Some(pmu.into()),
            encoding: "extended",
            samples,
            idle_samples: idle,
        }
    }

    pub fn snapshot() -> Snapshot {
        Snapshot {
            source: crate::kernel::session::Source::Hardware,
            duration_s: 1.0,
            frequency_hz: Some(100),
            period: None,
            samples: 100,
            idle_samples: 10,
            dropped: 0,
            evicted: 0,
            cpus: vec![cpu(0, "cpu_atom", 50, 10), cpu(1, "cpu_core", 50, 0)],
            tasks: vec![
                task(10, 10, 1, 7, 40, "db"),
                task(10, 11, 0, 7, 20, "db-worker"),
                task(10, 11, 1, 8, 5, "db-worker"),
                task(20, 20, 0, 9, 25, "web"),
            ],
            members: vec!["instructions".into()],
            events: vec![],
            warnings: vec![],
            bpf: None,
            check: vec![],
            sites: Vec::new(),
            functions: None,
            stacks: None,
            locations: None,
        }
    }

    #[test]
    fn processes_sum_threads_and_cpus_under_the_main_threads_name() {
        let rows = processes(&snapshot());
        assert_eq!(rows.len(), 2);
        let db = &rows[0];
        assert_eq!((db.id, db.name.as_str(), db.samples), (10, "db", 65));
        assert_eq!(db.period_sum, 65_000);
        assert_eq!(db.counts, vec![65 * 1500]);
        assert_eq!(db.cgroup_id, 7, "where most samples were");
        // Per core type: the same process on both PMUs.
        assert_eq!(db.per_pmu["cpu_core"].0, 45_000);
        assert_eq!(db.per_pmu["cpu_atom"].0, 20_000);
        let r = Ratios::of(&snapshot());
        assert_eq!(r.ipc(db.period_sum, &db.counts), Some(1.5));
    }

    /// Two processes that had pid 30 one after the other (different start times) are
    /// two rows with their own names and counts; a process whose main thread's name
    /// changed with exec() is named by the CPU row with most samples.
    #[test]
    fn reused_pid_stays_apart_and_exec_renames() {
        let mut s = snapshot();
        let mut old = task(30, 30, 0, 9, 7, "first");
        old.start_ns = 1_000;
        let mut new = task(30, 30, 0, 9, 11, "second");
        new.start_ns = 2_000;
        let mut new_thread = task(30, 31, 1, 9, 3, "second-t");
        new_thread.start_ns = 2_000;
        s.tasks.extend([old, new, new_thread]);
        // db's main thread: exec()'d into "db2", sampled more under the new name on
        // another CPU than under the old one.
        s.tasks.push(task(10, 10, 0, 7, 45, "db2"));
        let rows = processes(&s);
        let of = |start| {
            rows.iter()
                .find(|r| r.id == 30 && r.start_ns == start)
                .map(|r| (r.name.as_str(), r.samples, r.counts[0]))
        };
        assert_eq!(of(1_000), Some(("first", 7, 7 * 1500)));
        assert_eq!(of(2_000), Some(("second", 14, 14 * 1500)));
        let db = rows.iter().find(|r| r.id == 10).unwrap();
        assert_eq!((db.name.as_str(), db.samples), ("db2", 110));
        let threads = threads(&s);
        assert_eq!(threads.iter().filter(|r| r.id == 30).count(), 2);
    }

    #[test]
    fn threads_and_cgroups() {
        let t = threads(&snapshot());
        assert_eq!(
            t.iter().map(|r| (r.id, r.samples)).collect::<Vec<_>>(),
            [(10, 40), (11, 25), (20, 25)]
        );
        assert_eq!(t[1].tgid, 10);
        let g = cgroups(&snapshot(), |id| format!("/cg{id}"));
        assert_eq!(
            g.iter()
                .map(|r| (r.name.as_str(), r.samples))
                .collect::<Vec<_>>(),
            [("/cg7", 60), ("/cg9", 25), ("/cg8", 5)]
        );
    }

    #[test]
    fn cpu_load_pmus_and_ratios() {
        let s = snapshot();
        // cycles at 100 Hz over 1 s: CPU 0 had 40 non-idle samples, CPU 1 50.
        let c = cpus(&s);
        assert_eq!(c[0].busy_pct, 40.0);
        assert_eq!(c[1].busy_pct, 50.0);
        // cpu-clock: the non-idle time its samples stand for (periods in ns).
        let mut clock = s.clone();
        for c in &mut clock.cpus {
            c.event = "cpu-clock".into();
        }
        clock.tasks[0].period_sum = 250_000_000; // db on CPU 1
        let c = cpus(&clock);
        assert_eq!(c[1].busy_pct, 25.0 + 0.5e-3);
        assert!(heterogeneous(&s));
        assert_eq!(
            pmu_cpus(&s),
            [
                ("cpu_atom".to_owned(), "0".to_owned()),
                ("cpu_core".to_owned(), "1".to_owned())
            ]
        );
        let mut s2 = s.clone();
        s2.members = vec!["cache-misses".into(), "cache-references".into()];
        let r = Ratios::of(&s2);
        assert_eq!(r.miss_pct(&[5, 50]), Some(10.0));
        assert_eq!(r.miss_pct(&[5, 0]), None);
        assert_eq!(r.ipc(10, &[1, 2]), None, "no instructions member");
        // Modifiers and perf's alias: still cycles and instructions.
        let mut s3 = s.clone();
        s3.members = vec!["instructions:u".into()];
        for c in &mut s3.cpus {
            c.event = "cpu-cycles:u".into();
        }
        assert_eq!(Ratios::of(&s3).ipc(10, &[15]), Some(1.5));
        // Not every CPU samples cycles (some fell back to cpu-clock): no IPC.
        s3.cpus[0].event = "cpu-clock".into();
        let r = Ratios::of(&s3);
        assert_eq!((r.cycles, r.clock, r.instructions), (false, false, None));
    }

    #[test]
    fn events_sum_cpus_with_the_lowest_coverage() {
        let mut s = snapshot();
        let ev = |cpu, value, coverage| crate::model::snapshot::EventRow {
            name: "instructions".into(),
            cpu,
            group: 0,
            index: 1,
            pmu: None,
            value,
            enabled: 10,
            running: 5,
            scaled: Some(value * 2),
            coverage,
        };
        s.events = vec![ev(0, 10, 0.5), ev(1, 20, 0.25)];
        let e = events(&s);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].cpus, e[0].value, e[0].scaled), (2, 30, 60));
        assert_eq!(e[0].coverage, 0.25);
    }
}
