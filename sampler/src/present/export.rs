//! The exporter's state and exposition: per-interval snapshots accumulated into
//! monotonic counters per container and core type, bounded to the top N containers
//! plus an `other` series, encoded with `prometheus-client` as OpenMetrics, and as the
//! Prometheus text format for clients that ask for it. Pure: `serve` feeds it.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};

use crate::{
    model::container::Identity,
    model::snapshot::{CHECK_MIN_SAMPLES, Snapshot},
    sys::ProcessStats,
};

/// Label value of the series that sums every container outside the top N.
pub const OTHER: &str = "other";

/// Counts of one container on one core type.
#[derive(Debug, Clone, Default, PartialEq)]
struct Acc {
    samples: u64,
    /// Per event name: the sampling event's count over the samples, each member's.
    events: BTreeMap<String, u64>,
}

impl Acc {
    fn add(&mut self, other: &Acc) {
        self.samples += other.samples;
        for (k, v) in &other.events {
            *self.events.entry(k.clone()).or_default() += v;
        }
    }
}

#[derive(Debug)]
struct Tracked {
    /// Per PMU (core type).
    per_pmu: BTreeMap<String, Acc>,
    /// Samples per refresh, exponentially decayed: what the top N is ranked by.
    activity: f64,
    last_seen: Instant,
    exported: bool,
}

/// Everything the exporter shows, updated once per refresh.
#[derive(Debug)]
pub struct Exporter {
    top_n: usize,
    grace: Duration,
    containers: HashMap<Identity, Tracked>,
    other: BTreeMap<String, Acc>,
    dropped: u64,
    evicted: u64,
    /// BPF program run time (ns) and runs since the start, when statistics are on.
    bpf: Option<(u64, u64)>,
    /// The last refresh, for its per-interval gauges (events, check, CPUs); its task
    /// rows, already folded into the counters, are not kept.
    last: Option<Snapshot>,
    info: Vec<(String, String)>,
    process: ProcessStats,
    refreshes: u64,
}

/// Containers remembered at most (exported or not): beyond it, the least active go.
fn tracked_cap(top_n: usize) -> usize {
    (top_n * 10).max(100)
}

impl Exporter {
    /// `info`: constant labels of `sampler_run_info` (source, events, version).
    pub fn new(top_n: usize, grace: Duration, info: Vec<(String, String)>) -> Self {
        Self {
            top_n,
            grace,
            containers: HashMap::new(),
            other: BTreeMap::new(),
            dropped: 0,
            evicted: 0,
            bpf: None,
            last: None,
            info,
            process: ProcessStats::default(),
            refreshes: 0,
        }
    }

    /// Adds one refresh: `s` holds what happened since the previous one;
    /// `identity_of` names a cgroup id. `bpf_total`: the program's run time and
    /// runs since the start.
    pub fn update(
        &mut self,
        mut s: Snapshot,
        identity_of: &mut dyn FnMut(u64) -> Identity,
        bpf_total: Option<(u64, u64)>,
        process: ProcessStats,
        now: Instant,
    ) {
        let pmu_of: HashMap<u32, (&str, &str)> = s
            .cpus
            .iter()
            .map(|c| (c.cpu, (c.pmu.as_deref().unwrap_or("-"), c.event.as_str())))
            .collect();
        // This refresh per container and core type.
        let mut ids: HashMap<u64, Identity> = HashMap::new();
        let mut fresh: HashMap<Identity, BTreeMap<String, Acc>> = HashMap::new();
        for t in &s.tasks {
            let id = ids
                .entry(t.cgroup_id)
                .or_insert_with(|| identity_of(t.cgroup_id))
                .clone();
            let (pmu, event) = pmu_of.get(&t.cpu).copied().unwrap_or(("-", "?"));
            let acc = fresh
                .entry(id)
                .or_default()
                .entry(pmu.to_owned())
                .or_default();
            acc.samples += t.samples;
            *acc.events.entry(event.to_owned()).or_default() += t.period_sum;
            for (name, v) in &t.counts {
                *acc.events.entry(name.clone()).or_default() += v;
            }
        }
        for tracked in self.containers.values_mut() {
            tracked.activity *= 0.5;
        }
        for (id, per_pmu) in &fresh {
            let samples: u64 = per_pmu.values().map(|a| a.samples).sum();
            let t = self
                .containers
                .entry(id.clone())
                .or_insert_with(|| Tracked {
                    per_pmu: BTreeMap::new(),
                    activity: 0.0,
                    last_seen: now,
                    exported: false,
                });
            t.activity += samples as f64;
            t.last_seen = now;
        }
        // Departed (no samples for the grace period) containers' series go.
        let grace = self.grace;
        self.containers
            .retain(|_, t| now.saturating_duration_since(t.last_seen) < grace);
        // The top N by activity are exported; every count goes to exactly one series.
        let mut ranked: Vec<(&Identity, f64)> = self
            .containers
            .iter()
            .map(|(id, t)| (id, t.activity))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let top: Vec<Identity> = ranked
            .iter()
            .take(self.top_n)
            .map(|(id, _)| (*id).clone())
            .collect();
        let cap = tracked_cap(self.top_n);
        let forget: Vec<Identity> = ranked
            .iter()
            .skip(cap)
            .map(|(id, _)| (*id).clone())
            .collect();
        for (id, t) in &mut self.containers {
            t.exported = top.contains(id);
        }
        for (id, per_pmu) in fresh {
            let target = match self.containers.get_mut(&id) {
                Some(t) if t.exported => &mut t.per_pmu,
                _ => &mut self.other,
            };
            for (pmu, acc) in per_pmu {
                target.entry(pmu).or_default().add(&acc);
            }
        }
        for id in forget {
            self.containers.remove(&id);
        }
        self.dropped += s.dropped;
        self.evicted += s.evicted;
        self.bpf = bpf_total;
        self.process = process;
        self.refreshes += 1;
        s.tasks = Vec::new();
        self.last = Some(s);
    }

    /// The exposition in OpenMetrics text format.
    pub fn openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }

    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("sampler");

        let samples = Family::<ContainerLabels, Counter>::default();
        let events = Family::<EventLabels, Counter>::default();
        let series = |c: ContainerLabels, acc: &Acc| {
            samples.get_or_create(&c).inc_by(acc.samples);
            for (event, v) in &acc.events {
                events
                    .get_or_create(&EventLabels {
                        event: event.clone(),
                        container: c.clone(),
                    })
                    .inc_by(*v);
            }
        };
        for (id, t) in &self.containers {
            if !t.exported {
                continue;
            }
            for (pmu, acc) in &t.per_pmu {
                series(ContainerLabels::of(id, pmu), acc);
            }
        }
        for (pmu, acc) in &self.other {
            series(ContainerLabels::other(pmu), acc);
        }
        r.register(
            "samples",
            "Overflow samples of the sampling event while the container's tasks ran, by \
             container (top N by recent activity, the rest in container=\"other\") and core \
             type (pmu)",
            samples,
        );
        r.register(
            "events",
            "Events counted while the container's tasks ran: the sampling event's count \
             over the samples (cycles; nanoseconds for cpu-clock) and each counting member of \
             its group (instructions, cache-misses, ...), by event, container and core type",
            events,
        );

        let coverage =
            Family::<CpuEventLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let check = Family::<CpuLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let pmu_cpus = Family::<PmuLabels, Gauge>::default();
        if let Some(s) = &self.last {
            for e in &s.events {
                if e.enabled > 0 {
                    coverage
                        .get_or_create(&CpuEventLabels {
                            event: e.name.clone(),
                            cpu: e.cpu.to_string(),
                            pmu: e.pmu.clone().unwrap_or_else(|| "-".to_owned()),
                        })
                        .set(e.running as f64 / e.enabled as f64);
                }
            }
            for c in s.check.iter().filter(|c| c.samples >= CHECK_MIN_SAMPLES) {
                check
                    .get_or_create(&CpuLabels {
                        cpu: c.cpu.to_string(),
                    })
                    .set(c.rel_diff);
            }
            for c in &s.cpus {
                pmu_cpus
                    .get_or_create(&PmuLabels {
                        pmu: c.pmu.clone().unwrap_or_else(|| "-".to_owned()),
                    })
                    .inc();
            }
        }
        r.register(
            "event_coverage_ratio",
            "Share of the last refresh interval each counter was on the PMU (running / \
             enabled; below 1 when events are multiplexed and counts are scaled)",
            coverage,
        );
        r.register(
            "check_relative_difference",
            "Cross-check of the last interval: |BPF sum over the samples - read() of the \
             sampling counter| / read(), per CPU (CPUs with fewer than 100 samples are left \
             out)",
            check,
        );
        r.register(
            "pmu_cpus",
            "CPUs sampled through each PMU (core type)",
            pmu_cpus,
        );

        let tracked = Family::<StateLabels, Gauge>::default();
        let exported = self.containers.values().filter(|t| t.exported).count();
        tracked
            .get_or_create(&StateLabels {
                state: "exported".to_owned(),
            })
            .set(exported as i64);
        tracked
            .get_or_create(&StateLabels {
                state: "in_other".to_owned(),
            })
            .set((self.containers.len() - exported) as i64);
        r.register(
            "containers",
            "Containers (and other cgroups) seen within the grace period: exported as \
             their own series, or summed into container=\"other\"",
            tracked,
        );

        let counter = |v: u64| {
            let c = Counter::<u64>::default();
            c.inc_by(v);
            c
        };
        r.register(
            "dropped_samples",
            "Samples the BPF program could not record per task (map update failed)",
            counter(self.dropped),
        );
        r.register(
            "evicted_entries",
            "Per-task map entries evicted to make room (their later samples start anew)",
            counter(self.evicted),
        );
        r.register(
            "refreshes",
            "Times the maps were read into these metrics",
            counter(self.refreshes),
        );
        if let Some((ns, runs)) = self.bpf {
            let seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
            seconds.inc_by(ns as f64 / 1e9);
            r.register_with_unit(
                "bpf_run_time",
                "Time the kernel spent in sampler's BPF program (the kernel's BPF \
                 statistics); divide by sampler_bpf_runs_total for the cost per sample",
                Unit::Seconds,
                seconds,
            );
            r.register("bpf_runs", "Runs of sampler's BPF program", counter(runs));
        }
        let info = Info::new(self.info.clone());
        r.register("run", "How sampler samples on this machine", info);

        let process = r.sub_registry_with_prefix("process");
        let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        cpu.inc_by(self.process.cpu_seconds);
        process.register_with_unit(
            "cpu",
            "User and system CPU time of the sampler process",
            Unit::Seconds,
            cpu,
        );
        let rss = Gauge::<i64>::default();
        rss.set(i64::try_from(self.process.resident_bytes).unwrap_or(i64::MAX));
        process.register_with_unit(
            "resident_memory",
            "Resident memory of the sampler process",
            Unit::Bytes,
            rss,
        );
        let fds = Gauge::<i64>::default();
        fds.set(i64::try_from(self.process.open_fds).unwrap_or(i64::MAX));
        process.register(
            "open_fds",
            "Open file descriptors of the sampler process",
            fds,
        );
        r
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    container: String,
    runtime: String,
    pod: String,
    pmu: String,
}

impl ContainerLabels {
    fn of(id: &Identity, pmu: &str) -> Self {
        Self {
            container: id.short(),
            runtime: id.runtime.as_str().to_owned(),
            pod: id.pod.clone().unwrap_or_default(),
            pmu: pmu.to_owned(),
        }
    }
    fn other(pmu: &str) -> Self {
        Self {
            container: OTHER.to_owned(),
            runtime: String::new(),
            pod: String::new(),
            pmu: pmu.to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
    #[prometheus(flatten)]
    container: ContainerLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CpuEventLabels {
    event: String,
    cpu: String,
    pmu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CpuLabels {
    cpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PmuLabels {
    pmu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition: counters are
/// typed under their `_total` name, info metrics become `_info` gauges, `# UNIT` and
/// `# EOF` go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // Families whose metadata names change, with the suffix to add.
    let mut rename: HashMap<String, &str> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            match kind {
                "counter" => {
                    rename.insert(name.to_owned(), "_total");
                }
                "info" => {
                    rename.insert(name.to_owned(), "_info");
                }
                _ => {}
            }
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# TYPE ")
            .map(|r| ("# TYPE ", r))
            .or_else(|| line.strip_prefix("# HELP ").map(|r| ("# HELP ", r)));
        if let Some((tag, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = rename.get(name).copied().unwrap_or("");
            let tail = match (tag, tail) {
                ("# TYPE ", "info") => "gauge",
                _ => tail,
            };
            out.push_str(&format!("{tag}{name}{suffix} {tail}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Which format an `Accept` header asks for: OpenMetrics when it ranks
/// `application/openmetrics-text` at least as high as `text/plain` (Prometheus
/// sends both, OpenMetrics first); the Prometheus text format otherwise.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut om: Option<f64> = None;
    let mut text: Option<f64> = None;
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or("").to_ascii_lowercase();
        let q = params
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f64>().ok())
            .filter(|q| q.is_finite())
            .unwrap_or(1.0);
        let slot = match media.as_str() {
            "application/openmetrics-text" => &mut om,
            "text/plain" | "text/*" | "*/*" => &mut text,
            _ => continue,
        };
        *slot = Some(slot.map_or(q, |v: f64| v.max(q)));
    }
    match (om, text) {
        (Some(o), t) => o > 0.0 && o >= t.unwrap_or(0.0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::container::identify, model::rollup::tests::snapshot};

    fn names(id: u64) -> Identity {
        identify(&format!("/system.slice/c{id}.service"))
    }

    fn exporter(top_n: usize) -> Exporter {
        Exporter::new(
            top_n,
            Duration::from_secs(60),
            vec![("source".into(), "hardware".into())],
        )
    }

    #[test]
    fn counters_accumulate_per_container_and_core_type() {
        let mut e = exporter(10);
        let t0 = Instant::now();
        e.update(
            snapshot(),
            &mut names,
            Some((1_000, 10)),
            ProcessStats::default(),
            t0,
        );
        e.update(
            snapshot(),
            &mut names,
            Some((3_000, 20)),
            ProcessStats::default(),
            t0,
        );
        let text = e.openmetrics();
        // db: cgroup 7 (40 on cpu_core, 20 on cpu_atom) and cgroup 8 (5 on cpu_core).
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
                .to_owned()
        };
        assert!(line(r#"sampler_samples_total{container="systemd:c7.service",runtime="systemd",pod="",pmu="cpu_core"}"#).ends_with(" 80"));
        assert!(line(r#"sampler_samples_total{container="systemd:c7.service",runtime="systemd",pod="",pmu="cpu_atom"}"#).ends_with(" 40"));
        assert!(line(r#"sampler_events_total{event="instructions",container="systemd:c9.service",runtime="systemd",pod="",pmu="cpu_atom"}"#).ends_with(&format!(" {}", 2 * 25 * 1500)));
        assert!(
            line(r#"sampler_events_total{event="cycles",container="systemd:c8.service""#)
                .ends_with(&format!(" {}", 2 * 5 * 1000))
        );
        assert!(
            line("sampler_bpf_run_time_seconds_total").ends_with(" 3e-6")
                || line("sampler_bpf_run_time_seconds_total").ends_with(" 0.000003")
        );
        assert!(line("sampler_bpf_runs_total").ends_with(" 20"));
        assert!(line(r#"sampler_run_info{source="hardware"}"#).ends_with(" 1"));
        assert!(line(r#"sampler_pmu_cpus{pmu="cpu_core"}"#).ends_with(" 1"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn top_n_plus_other_keeps_every_count_once_and_departed_series_go() {
        let mut e = exporter(1);
        let t0 = Instant::now();
        e.update(snapshot(), &mut names, None, ProcessStats::default(), t0);
        let text = e.openmetrics();
        let sum = |text: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with("sampler_samples_total{"))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum()
        };
        // All 90 task samples, in db's cgroup 7 (the busiest) and "other".
        assert_eq!(sum(&text), 90);
        assert!(text.contains(r#"container="systemd:c7.service""#));
        assert!(!text.contains(r#"container="systemd:c9.service""#));
        assert!(text.contains(r#"container="other""#));
        assert!(text.contains(r#"sampler_containers{state="exported"} 1"#));
        assert!(text.contains(r#"sampler_containers{state="in_other"} 2"#));
        // After the grace period without samples, a container is forgotten.
        let mut quiet = snapshot();
        quiet.tasks.retain(|t| t.cgroup_id == 9);
        e.update(
            quiet,
            &mut names,
            None,
            ProcessStats::default(),
            t0 + Duration::from_secs(61),
        );
        let text = e.openmetrics();
        assert!(
            !text.contains(r#"container="systemd:c7.service""#),
            "{text}"
        );
        assert!(text.contains(r#"container="systemd:c9.service""#), "{text}");
        assert!(
            text.contains(r#"sampler_containers{state="in_other"} 0"#),
            "{text}"
        );
        // c9's later samples are its own series; "other" keeps what it had (a counter
        // never goes down), and c7's series went with it.
        // Summed over core types.
        let value = |needle: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with("sampler_samples_total{") && l.contains(needle))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum()
        };
        assert_eq!(value(r#"container="systemd:c9.service""#), 25);
        assert_eq!(value(r#"container="other""#), 30);
        assert_eq!(sum(&text), 55);
    }

    #[test]
    fn tracked_containers_are_bounded() {
        let mut e = exporter(2);
        let t0 = Instant::now();
        for round in 0..30u64 {
            let mut s = snapshot();
            for t in &mut s.tasks {
                t.cgroup_id += round * 10;
            }
            e.update(s, &mut names, None, ProcessStats::default(), t0);
        }
        assert!(
            e.containers.len() <= tracked_cap(2),
            "{}",
            e.containers.len()
        );
        let exported = e
            .openmetrics()
            .lines()
            .filter(|l| l.starts_with("sampler_samples_total{") && !l.contains("other"))
            .count();
        assert!(
            exported <= 2 * 2,
            "two containers on at most two core types"
        );
    }

    #[test]
    fn prometheus_text_types_counters_under_total_and_drops_eof() {
        let om = "# HELP sampler_samples Samples.\n# TYPE sampler_samples counter\n\
                  sampler_samples_total{a=\"b\"} 3\n# HELP sampler_run How.\n\
                  # TYPE sampler_run info\nsampler_run_info{s=\"x\"} 1\n\
                  # HELP sampler_process_cpu_seconds CPU.\n# TYPE sampler_process_cpu_seconds counter\n\
                  # UNIT sampler_process_cpu_seconds seconds\nsampler_process_cpu_seconds_total 0.5\n\
                  # HELP sampler_pmu_cpus CPUs.\n# TYPE sampler_pmu_cpus gauge\nsampler_pmu_cpus 2\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP sampler_samples_total Samples.\n# TYPE sampler_samples_total counter\n\
             sampler_samples_total{a=\"b\"} 3\n# HELP sampler_run_info How.\n\
             # TYPE sampler_run_info gauge\nsampler_run_info{s=\"x\"} 1\n\
             # HELP sampler_process_cpu_seconds_total CPU.\n\
             # TYPE sampler_process_cpu_seconds_total counter\n\
             sampler_process_cpu_seconds_total 0.5\n\
             # HELP sampler_pmu_cpus CPUs.\n# TYPE sampler_pmu_cpus gauge\nsampler_pmu_cpus 2\n"
        );
    }

    #[test]
    fn content_negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some(
            "text/plain;q=1, application/openmetrics-text;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(!wants_openmetrics(Some(";;,,q=,garbage/\u{0}")));
    }
}
