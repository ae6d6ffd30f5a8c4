//! One snapshot of a run: what the BPF maps aggregated, turned into rows per task and
//! per CPU with shares. Pure: built from map contents, unit tested without a kernel.

use std::collections::{BTreeMap, HashMap};

use sampler_common::{CpuStats, LocStats, LocValue, MAX_MEMBERS, TaskValue};
use serde::Serialize;

use crate::{
    events::plan::{Encoding, Rate},
    kernel::bpf::{MapContents, RunStats},
    kernel::counter,
    kernel::session::{EventCount, OpenEvent, Source},
    model::locations::{FunctionRow, LocationStats, Site, StackRow},
};

/// What one CPU of a run samples: the event it ended up with, through which PMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuRun {
    pub cpu: u32,
    pub event: String,
    pub pmu: Option<String>,
    pub encoding: Encoding,
    pub hardware: bool,
    /// Samples cpu-clock because the planned hardware event does not exist here.
    pub fell_back: bool,
}

/// The CPUs a run samples and the event each one ended up with.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub cpus: Vec<CpuRun>,
    pub rate: Rate,
    /// The sampling group's counting members, in the order the BPF program counts
    /// them (at most `MAX_MEMBERS` are attributed per task).
    pub members: Vec<String>,
}

impl RunInfo {
    /// The run of an opened session: its sampling leaders (`Session::leaders`), the
    /// rate and the sampling group's counting members.
    pub fn of<'a>(
        leaders: impl Iterator<Item = &'a OpenEvent>,
        rate: Rate,
        members: Vec<String>,
    ) -> Self {
        Self {
            cpus: leaders
                .map(|e| CpuRun {
                    cpu: e.cpu,
                    event: e.event.clone(),
                    pmu: e.pmu.clone(),
                    encoding: e.encoding,
                    hardware: e.hardware,
                    fell_back: e.fallback_reason.is_some(),
                })
                .collect(),
            rate,
            members,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub source: Source,
    pub duration_s: f64,
    /// Samples per second per CPU asked for (frequency mode) ...
    pub frequency_hz: Option<u64>,
    /// ... or events per sample (period mode).
    pub period: Option<u64>,
    /// Samples on the selected CPUs, idle included.
    pub samples: u64,
    /// Samples that landed in the idle task (tgid 0).
    pub idle_samples: u64,
    /// Samples the kernel side could not record per task.
    pub dropped: u64,
    /// Task entries the LRU map evicted to make room (their samples stay in `cpus`).
    pub evicted: u64,
    pub cpus: Vec<CpuRow>,
    /// Busiest first; idle is not a task.
    pub tasks: Vec<TaskRow>,
    /// The sampling group's members attributed per task (`tasks[].counts`), in group
    /// order.
    pub members: Vec<String>,
    /// Every opened event's count on every CPU, from `read()`.
    pub events: Vec<EventRow>,
    /// What went wrong during the run that the numbers alone do not say (groups that
    /// never ran, kernel throttling).
    pub warnings: Vec<String>,
    /// The BPF program's cost over the interval, from the kernel's BPF statistics
    /// (`--bpf-stats`); `None` when they were off.
    pub bpf: Option<BpfCost>,
    /// Per CPU: the sampling event's count as the BPF program summed it (sample
    /// periods) against `read()` of the same event, over the same interval.
    pub check: Vec<CpuCheck>,
    /// Where the interval's samples landed, symbolized (for the function views;
    /// empty unless locations were recorded).
    #[serde(skip)]
    pub sites: Vec<Site>,
    /// Per function, busiest first: when locations were recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub functions: Option<Vec<FunctionRow>>,
    /// Per process and call chain, busiest first: with `-g`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacks: Option<Vec<StackRow>>,
    /// What recording locations lost: when they were recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locations: Option<LocationStats>,
}

/// The live cross-check of one CPU: BPF's sum over the samples vs `read()`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuCheck {
    pub cpu: u32,
    pub samples: u64,
    pub bpf: u64,
    pub read: u64,
    pub rel_diff: f64,
}

/// Samples a CPU needs in an interval for its live check to mean something: the sum
/// of periods misses up to one period at each end of the interval, and an idle CPU
/// sampling `cpu-clock` takes (almost) no samples while its clock runs on.
pub const CHECK_MIN_SAMPLES: u64 = 100;

impl CpuCheck {
    /// Whether the difference is within what sampling explains: 1 %, or two periods
    /// of the interval's samples, whichever is larger.
    pub fn ok(&self) -> bool {
        self.rel_diff <= 0.01_f64.max(2.0 / self.samples.max(1) as f64)
    }
}

impl Snapshot {
    /// The live cross-check over the CPUs with enough samples: the largest relative
    /// difference and whether every one of them is within bounds.
    pub fn check_summary(&self) -> Option<(f64, bool)> {
        let judged: Vec<&CpuCheck> = self
            .check
            .iter()
            .filter(|c| c.samples >= CHECK_MIN_SAMPLES)
            .collect();
        let max = judged.iter().map(|c| c.rel_diff).reduce(f64::max)?;
        Some((max, judged.iter().all(|c| c.ok())))
    }
}

/// What the BPF program cost: total run time, runs (one per sample) and the mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BpfCost {
    pub run_time_ns: u64,
    pub run_count: u64,
    pub ns_per_sample: f64,
    /// The switch programs: their runs (context switches, twice where the kprobe
    /// at the switch's end is attached) and the mean per run.
    pub switch_run_time_ns: u64,
    pub switch_run_count: u64,
    pub switch_ns_per_run: Option<f64>,
}

impl BpfCost {
    pub fn of(stats: RunStats, switch: Option<RunStats>) -> Option<Self> {
        let switch = switch.unwrap_or_default();
        stats.ns_per_run().map(|ns| Self {
            run_time_ns: stats.run_time_ns,
            run_count: stats.run_count,
            ns_per_sample: ns,
            switch_run_time_ns: switch.run_time_ns,
            switch_run_count: switch.run_count,
            switch_ns_per_run: switch.ns_per_run(),
        })
    }
}

/// One event's count on one CPU over the snapshot's interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub name: String,
    pub cpu: u32,
    /// Event group (0: the sampling group) and position in it (0: its leader).
    pub group: usize,
    pub index: usize,
    pub pmu: Option<String>,
    /// The raw count (while the event was on the PMU).
    pub value: u64,
    /// Nanoseconds enabled and running: less running than enabled means multiplexed.
    pub enabled: u64,
    pub running: u64,
    /// `value * enabled / running`; `None` when it never ran.
    pub scaled: Option<u64>,
    /// `running / enabled`.
    pub coverage: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuRow {
    pub cpu: u32,
    pub event: String,
    /// The PMU (core type) the event was opened on; `None`: left to the kernel.
    pub pmu: Option<String>,
    pub encoding: &'static str,
    pub samples: u64,
    pub idle_samples: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    pub tgid: u32,
    pub tid: u32,
    /// The process's start time (CLOCK_MONOTONIC ns, 0: unknown): two processes that
    /// had the same pid during the run are two rows.
    pub start_ns: u64,
    pub comm: String,
    pub cpu: u32,
    /// The cgroup v2 id the task was sampled in (the one with most samples).
    pub cgroup_id: u64,
    pub samples: u64,
    /// The sampling counter's growth over the samples (see `TaskValue::period_sum`):
    /// nanoseconds under `cpu-clock`, cycles under `cycles`.
    pub period_sum: u64,
    /// Percent of all samples on the selected CPUs.
    pub share: f64,
    /// Per member of the sampling group: how much it counted during this task's
    /// sampling intervals.
    pub counts: BTreeMap<String, u64>,
}

impl Snapshot {
    /// Builds the snapshot of `maps` and `counts` for the CPUs of `run`, over
    /// `duration_s`.
    pub fn build(
        maps: &MapContents,
        counts: &[EventCount],
        run: &RunInfo,
        duration_s: f64,
    ) -> Self {
        // A lookup table, not a search of the run's CPUs for each of the (up to
        // hundreds of thousands of) entries.
        let mut is_selected = Vec::new();
        for c in &run.cpus {
            let i = c.cpu as usize;
            if is_selected.len() <= i {
                is_selected.resize(i + 1, false);
            }
            is_selected[i] = true;
        }
        let selected = |cpu: u32| is_selected.get(cpu as usize).copied().unwrap_or(false);

        // One row per (tgid, process start, tid, cpu): a task that moved between
        // cgroups is summed, under the cgroup where it had most samples.
        type Acc<'a> = (u64, u64, [u64; MAX_MEMBERS], &'a TaskValue, u64);
        let mut per_task: HashMap<(u32, u64, u32, u32), Acc<'_>> = HashMap::new();
        let mut idle_per_cpu: HashMap<u32, u64> = HashMap::new();
        for (key, value) in &maps.tasks {
            if !selected(key.cpu) {
                continue;
            }
            if key.tgid == 0 {
                *idle_per_cpu.entry(key.cpu).or_default() += value.samples;
                continue;
            }
            let e = per_task
                .entry((key.tgid, key.start, key.tid, key.cpu))
                .or_insert((0, 0, [0; MAX_MEMBERS], value, key.cgroup_id));
            e.0 += value.samples;
            e.1 += value.period_sum;
            for (sum, c) in e.2.iter_mut().zip(value.counts) {
                *sum += c;
            }
            if value.samples > e.3.samples {
                e.3 = value;
                e.4 = key.cgroup_id;
            }
        }

        let cpus: Vec<CpuRow> = run
            .cpus
            .iter()
            .map(|c| CpuRow {
                cpu: c.cpu,
                event: c.event.clone(),
                pmu: c.pmu.clone(),
                encoding: c.encoding.as_str(),
                samples: maps.cpu_stats.get(c.cpu as usize).map_or(0, |s| s.samples),
                idle_samples: idle_per_cpu.get(&c.cpu).copied().unwrap_or(0),
            })
            .collect();
        let samples: u64 = cpus.iter().map(|c| c.samples).sum();
        let idle_samples = cpus.iter().map(|c| c.idle_samples).sum();
        let stat_sum = |f: fn(&CpuStats) -> u64| -> u64 {
            run.cpus
                .iter()
                .filter_map(|c| maps.cpu_stats.get(c.cpu as usize))
                .map(f)
                .sum()
        };
        let dropped = stat_sum(|s| s.dropped);
        let inserted = stat_sum(|s| s.inserted);
        let live = maps.tasks.iter().filter(|(k, _)| selected(k.cpu)).count() as u64;

        let mut tasks: Vec<TaskRow> = per_task
            .into_iter()
            .map(
                |((tgid, start_ns, tid, cpu), (n, period_sum, member_sums, value, cgroup_id))| {
                    TaskRow {
                        tgid,
                        tid,
                        start_ns,
                        comm: printable_comm(value.comm_bytes()),
                        cpu,
                        cgroup_id,
                        samples: n,
                        period_sum,
                        share: percent(n, samples),
                        counts: run
                            .members
                            .iter()
                            .zip(member_sums)
                            .map(|(name, v)| (name.clone(), v))
                            .collect(),
                    }
                },
            )
            .collect();
        tasks.sort_by(|a, b| {
            b.samples
                .cmp(&a.samples)
                .then(a.tgid.cmp(&b.tgid))
                .then(a.start_ns.cmp(&b.start_ns))
                .then(a.tid.cmp(&b.tid))
                .then(a.cpu.cmp(&b.cpu))
        });

        Self {
            source: Source::of(run.cpus.iter().map(|c| (c.hardware, c.fell_back))),
            duration_s,
            frequency_hz: run.rate.frequency(),
            period: run.rate.period(),
            samples,
            idle_samples,
            dropped,
            evicted: maps.evicted.unwrap_or(inserted.saturating_sub(live)),
            cpus,
            tasks,
            members: run.members.clone(),
            warnings: run_warnings(counts),
            bpf: maps.bpf.and_then(|b| BpfCost::of(b, maps.switch_bpf)),
            check: run
                .cpus
                .iter()
                .filter_map(|c| {
                    let stats = maps.cpu_stats.get(c.cpu as usize)?;
                    let bpf = stats.period_sum;
                    let read = counts
                        .iter()
                        .find(|e| e.cpu == c.cpu && e.group == 0 && e.index == 0)?
                        .value;
                    Some(CpuCheck {
                        cpu: c.cpu,
                        samples: stats.samples,
                        bpf,
                        read,
                        rel_diff: crate::model::check::rel_diff(bpf, read),
                    })
                })
                .collect(),
            events: counts
                .iter()
                .map(|c| EventRow {
                    name: c.event.clone(),
                    cpu: c.cpu,
                    group: c.group,
                    index: c.index,
                    pmu: c.pmu.clone(),
                    value: c.value,
                    enabled: c.enabled,
                    running: c.running,
                    scaled: counter::scaled(c.value, c.enabled, c.running),
                    coverage: counter::coverage(c.enabled, c.running),
                })
                .collect(),
            sites: Vec::new(),
            functions: None,
            stacks: None,
            locations: None,
        }
    }
}

/// Groups that were enabled but never got on the PMU: more events than counters, or
/// a PMU that refuses them.
pub fn run_warnings(counts: &[EventCount]) -> Vec<String> {
    let mut by_event: Vec<(String, Vec<u32>)> = Vec::new();
    for c in counts
        .iter()
        .filter(|c| c.index == 0 && c.enabled > 0 && c.running == 0)
    {
        match by_event.iter_mut().find(|(e, _)| *e == c.event) {
            Some((_, cpus)) => cpus.push(c.cpu),
            None => by_event.push((c.event.clone(), vec![c.cpu])),
        }
    }
    by_event
        .into_iter()
        .map(|(event, cpus)| {
            format!(
                "the group of `{event}` never ran on CPU {} (other events held the \
                 counters, or the group needs more counters than the PMU has): its counts \
                 are 0",
                crate::discover::cpus::CpuList::from_cpus(cpus)
            )
        })
        .collect()
}

/// A warning when the kernel lowered `kernel.perf_event_max_sample_rate` during the
/// run (sampling interrupts took too long), i.e. it throttled the samples.
pub fn throttle_warning(
    rate_before: Option<u64>,
    rate_after: Option<u64>,
    freq_hz: u64,
) -> Option<String> {
    let (before, after) = (rate_before?, rate_after?);
    (after < before).then(|| {
        format!(
            "the kernel throttled sampling: it lowered kernel.perf_event_max_sample_rate from \
             {before} to {after} during the run (sampling interrupts took too long){}",
            if after < freq_hz {
                format!("; fewer than {freq_hz} samples per second were taken: lower --frequency")
            } else {
                String::new()
            }
        )
    })
}

/// The counts of an interval: `cur - prev` per (CPU, group, event).
pub fn delta_counts(prev: &[EventCount], cur: &[EventCount]) -> Vec<EventCount> {
    cur.iter()
        .map(|c| {
            let p = prev
                .iter()
                .find(|p| (p.cpu, p.group, p.index) == (c.cpu, c.group, c.index));
            let mut d = c.clone();
            if let Some(p) = p {
                d.value = c.value.saturating_sub(p.value);
                d.enabled = c.enabled.saturating_sub(p.enabled);
                d.running = c.running.saturating_sub(p.running);
            }
            d
        })
        .collect()
}

/// A map value that sums samples: what [`delta`] subtracts.
trait Sums: Copy {
    fn samples(&self) -> u64;
    /// The sampling counter's growth: it grows without samples too (the switch
    /// programs charge a task at each context switch).
    fn period(&self) -> u64;
    /// `self - earlier`, field by field (an earlier reading of the same entry).
    fn minus(&mut self, earlier: &Self);
}

/// Both map values sum samples, the sampling counter's growth and member deltas.
macro_rules! impl_sums {
    ($($value:ty),+) => {
        $(
            impl Sums for $value {
                fn samples(&self) -> u64 {
                    self.samples
                }
                fn period(&self) -> u64 {
                    self.period_sum
                }
                fn minus(&mut self, p: &Self) {
                    self.samples -= p.samples;
                    self.period_sum = self.period_sum.saturating_sub(p.period_sum);
                    for (c, before) in self.counts.iter_mut().zip(p.counts) {
                        *c = c.saturating_sub(before);
                    }
                }
            }
        )+
    };
}
impl_sums!(TaskValue, LocValue);

/// The entries of `cur` that grew since `prev`, with their growth. An entry whose
/// samples or period went down was evicted and re-created in between: all of it is
/// new.
fn grown<K: Copy + Eq + std::hash::Hash, V: Sums>(prev: &[(K, V)], cur: &[(K, V)]) -> Vec<(K, V)> {
    let before: HashMap<&K, &V> = prev.iter().map(|(k, v)| (k, v)).collect();
    cur.iter()
        .filter_map(|(k, v)| {
            let mut d = *v;
            if let Some(p) = before.get(k)
                && p.samples() <= v.samples()
                && p.period() <= v.period()
            {
                d.minus(p);
            }
            (d.samples() > 0 || d.period() > 0).then_some((*k, d))
        })
        .collect()
}

/// What happened between two readings of the maps (for refreshing views).
pub fn delta(prev: &MapContents, cur: &MapContents) -> MapContents {
    let tasks = grown(&prev.tasks, &cur.tasks);
    let locations = grown(&prev.locations, &cur.locations);
    let loc_stats = cur
        .loc_stats
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = prev.loc_stats.get(i).copied().unwrap_or_default();
            LocStats {
                inserted: c.inserted.saturating_sub(p.inserted),
                dropped: c.dropped.saturating_sub(p.dropped),
                stack_collisions: c.stack_collisions.saturating_sub(p.stack_collisions),
                stack_full: c.stack_full.saturating_sub(p.stack_full),
                no_user_stack: c.no_user_stack.saturating_sub(p.no_user_stack),
                stack_errors: c.stack_errors.saturating_sub(p.stack_errors),
                ring_full: c.ring_full.saturating_sub(p.ring_full),
            }
        })
        .collect();
    let cpu_stats = cur
        .cpu_stats
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = prev.cpu_stats.get(i).copied().unwrap_or_default();
            CpuStats {
                samples: c.samples.saturating_sub(p.samples),
                period_sum: c.period_sum.saturating_sub(p.period_sum),
                inserted: c.inserted.saturating_sub(p.inserted),
                dropped: c.dropped.saturating_sub(p.dropped),
                switches: c.switches.saturating_sub(p.switches),
                switch_dropped: c.switch_dropped.saturating_sub(p.switch_dropped),
            }
        })
        .collect();
    // Evictions so far are what each full reading says (else its inserts minus its
    // live entries); those of the interval are the difference. (The interval's own
    // inserts minus its changed entries would miss every eviction of an entry older
    // than the interval.)
    let evicted_so_far = |m: &MapContents| {
        m.evicted.unwrap_or_else(|| {
            m.cpu_stats
                .iter()
                .map(|c| c.inserted)
                .sum::<u64>()
                .saturating_sub(m.tasks.len() as u64)
        })
    };
    MapContents {
        tasks,
        cpu_stats,
        locations,
        loc_stats,
        bpf: cur.bpf.map(|c| prev.bpf.map_or(c, |p| c.since(p))),
        switch_bpf: cur
            .switch_bpf
            .map(|c| prev.switch_bpf.map_or(c, |p| c.since(p))),
        evicted: Some(evicted_so_far(cur).saturating_sub(evicted_so_far(prev))),
        loc_evicted: Some(
            cur.location_evictions()
                .saturating_sub(prev.location_evictions()),
        ),
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A task name safe to print: any process can name itself with terminal escape
/// sequences, so control characters become `?`.
pub fn printable_comm(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use sampler_common::{COMM_LEN, LocKey};

    use super::*;

    pub fn key(tgid: u32, tid: u32, cpu: u32, cgroup_id: u64) -> sampler_common::TaskKey {
        sampler_common::TaskKey {
            tgid,
            tid,
            cgroup_id,
            start: 0,
            cpu,
            _pad: 0,
        }
    }

    pub fn value(samples: u64, comm: &str) -> TaskValue {
        let mut c = [0u8; COMM_LEN];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        TaskValue {
            samples,
            period_sum: samples * 1_001_001,
            counts: [samples * 3, samples * 5, 0, 0],
            comm: sampler_common::Comm(c),
        }
    }

    pub fn cpu_clock(cpu: u32) -> CpuRun {
        CpuRun {
            cpu,
            event: "cpu-clock".into(),
            pmu: Some("software".into()),
            encoding: Encoding::Software,
            hardware: false,
            fell_back: true,
        }
    }

    pub fn loc(tgid: u32, ip: u64) -> LocKey {
        LocKey {
            tgid,
            ip,
            kernel_stack: -1,
            user_stack: -1,
            ..LocKey::default()
        }
    }

    pub fn loc_value(samples: u64) -> LocValue {
        LocValue {
            samples,
            period_sum: samples * 1_000,
            counts: [samples; MAX_MEMBERS],
        }
    }

    pub fn stats(samples: u64, inserted: u64, dropped: u64) -> CpuStats {
        CpuStats {
            samples,
            period_sum: samples * 1_001_001,
            inserted,
            dropped,
            switches: 0,
            switch_dropped: 0,
        }
    }

    pub fn example() -> (MapContents, RunInfo) {
        let maps = MapContents {
            tasks: vec![
                (key(0, 0, 0, 1), value(50, "swapper/0")),
                (key(0, 0, 1, 1), value(2, "swapper/1")),
                (key(100, 100, 1, 7), value(90, "busy")),
                (key(100, 100, 1, 8), value(5, "busy")),
                (key(200, 201, 0, 7), value(40, "worker")),
                (key(200, 201, 1, 7), value(3, "worker")),
                (key(300, 300, 2, 7), value(9, "not-selected")),
            ],
            cpu_stats: vec![stats(92, 4, 2), stats(100, 5, 0), stats(9, 1, 0)],
            bpf: None,
            evicted: None,
            ..MapContents::default()
        };
        let run = RunInfo {
            cpus: vec![cpu_clock(0), cpu_clock(1)],
            rate: Rate::Frequency(50),
            members: vec!["context-switches".into(), "page-faults".into()],
        };
        (maps, run)
    }

    #[test]
    fn builds_rows_per_task_and_cpu() {
        let (maps, run) = example();
        let s = Snapshot::build(&maps, &[], &run, 2.0);
        assert_eq!(s.source, Source::SoftwareFallback);
        assert_eq!(s.samples, 192);
        assert_eq!(s.idle_samples, 52);
        assert_eq!(s.dropped, 2);
        // 9 inserted on CPUs 0-1, 6 entries live there.
        assert_eq!(s.evicted, 3);
        assert_eq!(
            s.cpus,
            vec![
                CpuRow {
                    cpu: 0,
                    event: "cpu-clock".into(),
                    pmu: Some("software".into()),
                    encoding: "software",
                    samples: 92,
                    idle_samples: 50
                },
                CpuRow {
                    cpu: 1,
                    event: "cpu-clock".into(),
                    pmu: Some("software".into()),
                    encoding: "software",
                    samples: 100,
                    idle_samples: 2
                },
            ]
        );
        let rows: Vec<_> = s
            .tasks
            .iter()
            .map(|t| (t.tgid, t.tid, t.cpu, t.samples, t.comm.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                (100, 100, 1, 95, "busy"),
                (200, 201, 0, 40, "worker"),
                (200, 201, 1, 3, "worker"),
            ]
        );
        assert!((s.tasks[0].share - 95.0 * 100.0 / 192.0).abs() < 1e-9);
        assert_eq!(s.tasks[0].period_sum, 95 * 1_001_001);
        // Member counts, summed over the task's two cgroups.
        let counts: Vec<(&str, u64)> = s.tasks[0]
            .counts
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            counts,
            [("context-switches", 95 * 3), ("page-faults", 95 * 5)]
        );
    }

    /// A pid reused during the run: the map has one entry per process start time, and
    /// the snapshot keeps them as separate rows with their own names and counts.
    #[test]
    fn reused_pid_gives_separate_rows() {
        let (mut maps, run) = example();
        let mut first = key(400, 400, 0, 7);
        first.start = 5_000;
        let mut second = first;
        second.start = 9_000;
        maps.tasks
            .extend([(first, value(4, "first")), (second, value(6, "second"))]);
        let s = Snapshot::build(&maps, &[], &run, 2.0);
        let rows: Vec<_> = s
            .tasks
            .iter()
            .filter(|t| t.tgid == 400)
            .map(|t| (t.start_ns, t.samples, t.comm.as_str()))
            .collect();
        assert_eq!(rows, [(9_000, 6, "second"), (5_000, 4, "first")]);
    }

    #[test]
    fn warnings_for_groups_that_never_ran_and_throttling() {
        let c = |cpu, index, enabled, running| EventCount {
            cpu,
            group: 1,
            index,
            event: "r11".into(),
            pmu: None,
            value: 0,
            enabled,
            running,
        };
        let w = run_warnings(&[
            c(0, 0, 10, 0),
            c(0, 1, 10, 0),
            c(1, 0, 10, 0),
            c(2, 0, 10, 5),
            c(3, 0, 0, 0),
        ]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("the group of `r11` never ran on CPU 0-1 "),
            "{w:?}"
        );
        assert_eq!(throttle_warning(Some(100_000), Some(100_000), 999), None);
        assert_eq!(throttle_warning(None, Some(1), 999), None);
        let t = throttle_warning(Some(100_000), Some(500), 999).unwrap();
        assert!(
            t.contains("from 100000 to 500") && t.contains("lower --frequency"),
            "{t}"
        );
        let t = throttle_warning(Some(100_000), Some(50_000), 999).unwrap();
        assert!(!t.contains("lower --frequency"), "{t}");
    }

    #[test]
    fn event_rows_scale_and_report_coverage() {
        let (maps, run) = example();
        let count = |cpu, value, enabled, running| EventCount {
            cpu,
            group: 1,
            index: 0,
            event: "instructions".into(),
            pmu: Some("armv8_pmuv3_0".into()),
            value,
            enabled,
            running,
        };
        let s = Snapshot::build(
            &maps,
            &[count(0, 100, 1000, 250), count(1, 7, 1000, 0)],
            &run,
            2.0,
        );
        assert_eq!(s.events[0].scaled, Some(400));
        assert!((s.events[0].coverage - 0.25).abs() < 1e-12);
        assert_eq!(s.events[1].scaled, None);
        assert_eq!(s.events[1].coverage, 0.0);
        let d = delta_counts(
            &[count(0, 40, 400, 100)],
            &[count(0, 100, 1000, 250), count(1, 7, 9, 9)],
        );
        assert_eq!((d[0].value, d[0].enabled, d[0].running), (60, 600, 150));
        assert_eq!(
            (d[1].value, d[1].enabled),
            (7, 9),
            "new events count from zero"
        );
    }

    #[test]
    fn empty_maps_give_zero_shares() {
        let run = RunInfo {
            cpus: vec![CpuRun {
                cpu: 0,
                event: "cycles".into(),
                pmu: Some("cpu_core".into()),
                encoding: Encoding::Extended,
                hardware: true,
                fell_back: false,
            }],
            rate: Rate::Frequency(1),
            members: vec![],
        };
        let s = Snapshot::build(&MapContents::default(), &[], &run, 1.0);
        assert_eq!(s.samples, 0);
        assert!(s.tasks.is_empty());
        assert_eq!(s.cpus[0].samples, 0);
        assert_eq!(s.source, Source::Hardware);
    }

    #[test]
    fn delta_keeps_growth_charged_at_switches_without_samples() {
        let mut switched = value(3, "w");
        let prev = MapContents {
            tasks: vec![(key(6, 6, 0, 0), switched)],
            ..MapContents::default()
        };
        switched.period_sum += 500;
        switched.counts[0] += 7;
        let cur = MapContents {
            tasks: vec![
                (key(6, 6, 0, 0), switched),
                (key(7, 7, 0, 0), value(0, "z")),
            ],
            ..MapContents::default()
        };
        let d = delta(&prev, &cur);
        assert_eq!(d.tasks.len(), 1, "{:?}", d.tasks);
        let (k, v) = d.tasks[0];
        assert_eq!(
            (k.tgid, v.samples, v.period_sum, v.counts[0]),
            (6, 0, 500, 7)
        );
    }

    #[test]
    fn delta_subtracts_and_handles_recreated_entries() {
        let prev = MapContents {
            tasks: vec![
                (key(1, 1, 0, 0), value(10, "a")),
                (key(2, 2, 0, 0), value(50, "b")),
                (key(3, 3, 0, 0), value(5, "gone")),
            ],
            cpu_stats: vec![stats(65, 3, 1)],
            bpf: Some(RunStats {
                run_time_ns: 1_000,
                run_count: 10,
            }),
            switch_bpf: Some(RunStats {
                run_time_ns: 500,
                run_count: 5,
            }),
            evicted: None,
            locations: vec![(loc(1, 0x10), loc_value(8)), (loc(1, 0x20), loc_value(30))],
            loc_stats: vec![LocStats {
                inserted: 2,
                stack_full: 1,
                ..LocStats::default()
            }],
            loc_evicted: None,
        };
        let cur = MapContents {
            tasks: vec![
                (key(1, 1, 0, 0), value(15, "a")),
                // Evicted and re-created: fewer than before, all new.
                (key(2, 2, 0, 0), value(4, "b")),
                (key(4, 4, 0, 0), value(7, "new")),
                (key(5, 5, 0, 0), value(0, "none")),
            ],
            cpu_stats: vec![stats(90, 5, 1)],
            bpf: Some(RunStats {
                run_time_ns: 4_750,
                run_count: 35,
            }),
            switch_bpf: Some(RunStats {
                run_time_ns: 2_500,
                run_count: 25,
            }),
            evicted: None,
            // 0x20 evicted and re-created (3 < 30), 0x30 new, 0x40 evicted since.
            locations: vec![
                (loc(1, 0x10), loc_value(12)),
                (loc(1, 0x20), loc_value(3)),
                (loc(1, 0x30), loc_value(6)),
            ],
            loc_stats: vec![LocStats {
                inserted: 5,
                stack_full: 4,
                ..LocStats::default()
            }],
            loc_evicted: None,
        };
        let d = delta(&prev, &cur);
        let mut locs: Vec<(u64, u64)> =
            d.locations.iter().map(|(k, v)| (k.ip, v.samples)).collect();
        locs.sort_unstable();
        assert_eq!(locs, [(0x10, 4), (0x20, 3), (0x30, 6)]);
        assert_eq!(d.loc_stats[0].stack_full, 3);
        // Inserted 5 - 3 live = 2 evicted so far, 0 before: 2 in the interval.
        assert_eq!(d.location_evictions(), 2);
        assert_eq!(cur.location_evictions(), 2);
        let got: Vec<_> = d.tasks.iter().map(|(k, v)| (k.tgid, v.samples)).collect();
        assert_eq!(got, [(1, 5), (2, 4), (4, 7)]);
        assert_eq!(d.tasks[0].1.period_sum, 5 * 1_001_001);
        // Member counts are per interval too; a re-created entry keeps its own.
        assert_eq!(d.tasks[0].1.counts, [15, 25, 0, 0]);
        assert_eq!(d.tasks[1].1.counts, [12, 20, 0, 0]);
        assert_eq!(d.cpu_stats, vec![stats(25, 2, 0)]);
        // The program's cost over the interval: 3750 ns over 25 runs.
        let cost = BpfCost::of(d.bpf.unwrap(), d.switch_bpf).unwrap();
        assert_eq!((cost.run_time_ns, cost.run_count), (3_750, 25));
        assert_eq!(cost.ns_per_sample, 150.0);
        assert_eq!(cost.switch_run_count, 20);
        assert_eq!(cost.switch_ns_per_run, Some(100.0));
        // 3 of 3 inserted entries live before, 5 inserted and 4 live after: one
        // eviction in the interval.
        assert_eq!(d.evicted, Some(1));
    }

    #[test]
    fn evictions_of_entries_older_than_the_interval_are_counted() {
        // A full map of 4: two old entries make room for two new ones. The interval's
        // changed entries are just the two new ones, as many as its inserts.
        let full = |tgids: [u32; 4], inserted| MapContents {
            tasks: tgids
                .iter()
                .map(|&t| (key(t, t, 0, 0), value(3, "t")))
                .collect(),
            cpu_stats: vec![stats(12, inserted, 0)],
            bpf: None,
            evicted: None,
            ..MapContents::default()
        };
        let prev = full([1, 2, 3, 4], 6);
        let cur = full([3, 4, 5, 6], 8);
        let d = delta(&prev, &cur);
        assert_eq!(d.evicted, Some(2));
        let run = RunInfo {
            cpus: vec![cpu_clock(0)],
            rate: Rate::Frequency(999),
            members: vec![],
        };
        assert_eq!(Snapshot::build(&d, &[], &run, 1.0).evicted, 2);
        // A whole-run reading: inserts minus live entries.
        assert_eq!(Snapshot::build(&cur, &[], &run, 1.0).evicted, 4);
    }

    #[test]
    fn comm_control_characters_are_neutralised() {
        assert_eq!(printable_comm(b"ok"), "ok");
        assert_eq!(printable_comm(b"\x1b[2Jevil\n"), "?[2Jevil?");
        assert_eq!(printable_comm(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn a_ring_sum_evicted_and_back_counts_once_in_the_interval() {
        use crate::kernel::loc_sums::{
            LocSums,
            tests::{read, record},
        };
        let mut sums = LocSums::new(2, 1);
        sums.add(&record(0, 0x10, 5));
        sums.add(&record(0, 0x20, 5));
        let (first, _) = read(&mut sums);
        // 0x20 grows, 0x10 is idle and goes (the cap is 1) ...
        sums.add(&record(0, 0x20, 5));
        let (second, _) = read(&mut sums);
        // ... and comes back with 2 samples, next to its old sum of 1 in `second`.
        sums.add(&record(0, 0x10, 5));
        sums.add(&record(0, 0x10, 5));
        // From the map, the same key: a sample that found the ring full.
        let mut third_map = vec![(
            LocKey {
                tgid: 7,
                cpu: 0,
                ip: 0x10,
                ..LocKey::default()
            },
            LocValue {
                samples: 1,
                ..LocValue::default()
            },
        )];
        let (third, _) = read(&mut sums);
        third_map.extend(third);
        let contents = |locations: Vec<(LocKey, LocValue)>| MapContents {
            locations,
            ..MapContents::default()
        };
        let d = delta(&contents(first.clone()), &contents(second.clone()));
        let samples = |d: &MapContents, ip: u64| -> u64 {
            d.locations
                .iter()
                .filter(|(k, _)| k.ip == ip)
                .map(|(_, v)| v.samples)
                .sum()
        };
        assert_eq!((samples(&d, 0x10), samples(&d, 0x20)), (0, 1));
        let d = delta(&contents(second), &contents(third_map));
        assert_eq!(
            samples(&d, 0x10),
            3,
            "2 from the ring, 1 from the map, once"
        );
        assert_eq!(samples(&d, 0x20), 0);
    }
}
