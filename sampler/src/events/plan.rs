//! The per-CPU event plan: (event list × selected CPUs) -> (PMU, attr) for each CPU,
//! through the PMU that really covers that CPU. Pure: no perf system calls.
//!
//! # Encoding strategy
//!
//! Each planned event carries an ordered chain of encodings; the open step uses the
//! first and moves to the next only when the kernel answers "no such event" (ENOENT
//! and kin, see `session`):
//!
//! 1. **extended hardware type** — `type = PERF_TYPE_HARDWARE` (or `HW_CACHE`),
//!    `config = pmu_type << 32 | id`: names the PMU explicitly. Only on heterogeneous
//!    systems, and only where the kernel has it: x86 hybrid since 5.13, `arm_pmu`
//!    since 6.6.
//! 2. **the PMU's own type with its sysfs alias** — e.g. `armv8_cortex_a53`'s
//!    `cpu_cycles = event=0x11`: works on any kernel, on that PMU's CPUs.
//! 3. **legacy** — `type = PERF_TYPE_HARDWARE`, `config = id`: the kernel picks the
//!    PMU of the CPU the event is opened on.
//!
//! Homogeneous systems use the legacy encoding directly. Raw `rNNNN` events go to each
//! core PMU's own type on heterogeneous systems (legacy `PERF_TYPE_RAW` after that);
//! `pmu/terms/` events are encoded through the PMU's `format/` fields.

use std::collections::BTreeSet;

use perf_event_open_sys::bindings::{
    PERF_COUNT_SW_CPU_CLOCK, PERF_FORMAT_GROUP, PERF_FORMAT_ID, PERF_FORMAT_TOTAL_TIME_ENABLED,
    PERF_FORMAT_TOTAL_TIME_RUNNING, PERF_TYPE_HARDWARE, PERF_TYPE_HW_CACHE, PERF_TYPE_RAW,
    PERF_TYPE_SOFTWARE, perf_event_attr,
};
use serde::Serialize;

use crate::{
    discover::cpus::CpuList,
    discover::pmu::{ConfigWord, FormatError, Pmu, PmuSet},
    events::syntax::{self, EventKind, EventList, EventSpec, Term},
};

/// Every event is opened with this `read_format`: the whole group in one `read()` of
/// the leader, each value with its id, and the times for multiplexing
/// ([`crate::kernel::counter`] decodes it).
pub const READ_FORMAT: u64 = (PERF_FORMAT_TOTAL_TIME_ENABLED
    | PERF_FORMAT_TOTAL_TIME_RUNNING
    | PERF_FORMAT_ID
    | PERF_FORMAT_GROUP) as u64;

/// Names under which PMUs publish the generic hardware events, by `PERF_COUNT_HW_*`
/// id: x86 spellings first, then arm_pmu's (`armv8_pmuv3_perf_map`).
const HW_ALIASES: [&[&str]; 10] = [
    &["cpu-cycles", "cycles", "cpu_cycles"],
    &["instructions", "inst_retired"],
    &["cache-references", "l1d_cache"],
    &["cache-misses", "l1d_cache_refill"],
    &["branch-instructions", "branches", "pc_write_retired"],
    &["branch-misses", "br_mis_pred"],
    &["bus-cycles", "bus_cycles"],
    &["stalled-cycles-frontend", "stall_frontend"],
    &["stalled-cycles-backend", "stall_backend"],
    &["ref-cycles"],
];

/// How an attr names its event (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    Extended,
    PmuAlias,
    Legacy,
    /// A `pmu/terms/` or raw event on the PMU's own type.
    Pmu,
    Software,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Extended => "extended",
            Self::PmuAlias => "pmu-alias",
            Self::Legacy => "legacy",
            Self::Pmu => "pmu",
            Self::Software => "software",
        }
    }
}

/// The event-identifying part of a `perf_event_attr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Attr {
    pub encoding: Encoding,
    #[serde(rename = "type")]
    pub type_: u32,
    pub config: u64,
    pub config1: u64,
    pub config2: u64,
}

/// One event on one CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedEvent {
    pub cpu: u32,
    /// Index of the group in the event list.
    pub group: usize,
    /// Position in the group: 0 is the leader (it samples in the sampling group);
    /// the others count.
    pub index: usize,
    /// The event as the user wrote it, with modifiers.
    pub event: String,
    /// The PMU that covers this CPU for this event (`None`: left to the kernel).
    pub pmu: Option<String>,
    /// Not a software event.
    pub hardware: bool,
    pub exclude_user: bool,
    pub exclude_kernel: bool,
    pub exclude_hv: bool,
    /// perf's default for every event, and `u`, `p`, `H`: guests are not counted.
    pub exclude_guest: bool,
    /// `G`: only guests are counted.
    pub exclude_host: bool,
    /// `I`.
    pub exclude_idle: bool,
    /// `p`, `pp`, `ppp`, or `P` resolved to the PMU's highest level; used when the
    /// event samples (precision is a property of sampling).
    pub precise_ip: u8,
    /// `D` and `e`, on group leaders only (as perf).
    pub pinned: bool,
    pub exclusive: bool,
    /// For a generic hardware event, the PMU's own event number behind it: on arm_pmu
    /// the kernel's `armv8_pmuv3_perf_map` (cycles 0x11, instructions 0x08, ...), which
    /// KVM's PMU emulation uses too; elsewhere the PMU's sysfs alias, when it has one.
    pub pmu_event: Option<u64>,
    /// The preferred encoding.
    #[serde(flatten)]
    pub attr: Attr,
    /// What to try next, in order, when the kernel has no such event.
    pub fallbacks: Vec<Attr>,
}

impl PlannedEvent {
    /// The software `cpu-clock` event on `cpu`: the stand-in where no hardware PMU
    /// event can be opened.
    pub fn cpu_clock(cpu: u32) -> Self {
        Self {
            cpu,
            group: 0,
            index: 0,
            event: "cpu-clock".to_owned(),
            pmu: Some("software".to_owned()),
            hardware: false,
            exclude_user: false,
            exclude_kernel: false,
            exclude_hv: false,
            exclude_guest: true,
            exclude_host: false,
            exclude_idle: false,
            precise_ip: 0,
            pinned: false,
            exclusive: false,
            pmu_event: None,
            attr: Attr {
                encoding: Encoding::Software,
                type_: PERF_TYPE_SOFTWARE,
                config: u64::from(PERF_COUNT_SW_CPU_CLOCK),
                config1: 0,
                config2: 0,
            },
            fallbacks: Vec::new(),
        }
    }

    /// The group's first event.
    pub fn is_leader(&self) -> bool {
        self.index == 0
    }

    /// Every encoding, preferred first.
    pub fn encodings(&self) -> impl Iterator<Item = &Attr> {
        std::iter::once(&self.attr).chain(&self.fallbacks)
    }

    /// The attr for `encoding` in `mode`, with the group [`READ_FORMAT`].
    pub fn attr(&self, encoding: &Attr, mode: Mode) -> perf_event_attr {
        let mut attr = perf_event_attr {
            type_: encoding.type_,
            size: size_of::<perf_event_attr>() as u32,
            config: encoding.config,
            read_format: READ_FORMAT,
            ..Default::default()
        };
        // The union-backed fields are reached through perf-event-open-sys' derefs.
        attr.config1 = encoding.config1;
        attr.config2 = encoding.config2;
        match mode {
            Mode::Sample {
                rate: Rate::Frequency(hz),
            } => {
                attr.sample_freq = hz;
                attr.set_freq(1);
                // Enabled only once the BPF program is attached on every CPU.
                attr.set_disabled(1);
            }
            Mode::Sample {
                rate: Rate::Period(n),
            } => {
                attr.sample_period = n;
                // Enabled only once the BPF program is attached on every CPU.
                attr.set_disabled(1);
            }
            // A group leader starts disabled; members follow their leader.
            Mode::CountLeader => attr.set_disabled(1),
            Mode::CountMember => {}
        }
        attr.set_exclude_user(u64::from(self.exclude_user));
        attr.set_exclude_kernel(u64::from(self.exclude_kernel));
        attr.set_exclude_hv(u64::from(self.exclude_hv));
        attr.set_exclude_guest(u64::from(self.exclude_guest));
        attr.set_exclude_host(u64::from(self.exclude_host));
        attr.set_exclude_idle(u64::from(self.exclude_idle));
        if matches!(mode, Mode::Sample { .. }) {
            attr.set_precise_ip(u64::from(self.precise_ip));
        }
        if self.is_leader() {
            attr.set_pinned(u64::from(self.pinned));
            attr.set_exclusive(u64::from(self.exclusive));
        }
        attr
    }
}

/// How often the sampling leader overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// About this many samples per second (the kernel adapts the period).
    Frequency(u64),
    /// One sample every this many events (nanoseconds for the clock events).
    Period(u64),
}

impl Rate {
    pub fn frequency(self) -> Option<u64> {
        match self {
            Self::Frequency(hz) => Some(hz),
            Self::Period(_) => None,
        }
    }

    pub fn period(self) -> Option<u64> {
        match self {
            Self::Frequency(_) => None,
            Self::Period(n) => Some(n),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Frequency(hz) => write!(f, "at {hz} Hz"),
            Self::Period(n) => write!(f, "every {n} events"),
        }
    }
}

/// How an event is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The sampling group's leader: its overflows run the BPF program.
    Sample { rate: Rate },
    /// The leader of a counting-only group.
    CountLeader,
    /// A group member: counts while its group is on the PMU.
    CountMember,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub plan: Vec<PlannedEvent>,
    /// Things the user should know: partial coverage, offline CPUs.
    pub notes: Vec<String>,
    /// Hardware events were asked for, but sysfs shows no core PMU (most VMs).
    pub no_core_pmu: bool,
}

/// The note for [`Plan::no_core_pmu`].
pub const NO_CORE_PMU: &str = "no core PMU in sysfs (most VMs): hardware events are left \
    to the kernel (legacy encoding), which may have none; `cycles` then falls back to \
    cpu-clock";

/// The running kernel's `major.minor`, for features that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32);

impl KernelVersion {
    /// Parses a release such as `6.18.44-fc-v595`.
    pub fn parse(release: &str) -> Option<Self> {
        let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self(major, minor))
    }

    pub fn running() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
    }
}

/// Whether the kernel accepts `config = pmu_type << 32 | id` for this PMU.
pub fn extended_type_supported(pmu: &Pmu, kernel: Option<KernelVersion>) -> bool {
    let Some(k) = kernel else {
        return false;
    };
    let x86 = matches!(pmu.name.as_str(), "cpu" | "cpu_core" | "cpu_atom");
    let arm = pmu.name.starts_with("armv8") || pmu.name.starts_with("armv7");
    (x86 && k >= KernelVersion(5, 13)) || (arm && k >= KernelVersion(6, 6))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("unknown event `{name}`{hint}; `sampler list` shows the events of each PMU", hint = suggest(.suggestions))]
    UnknownEvent {
        name: String,
        suggestions: Vec<String>,
    },
    #[error("unknown PMU `{pmu}` in `{event}`{hint}; `sampler pmus` lists them", hint = suggest(.suggestions))]
    UnknownPmu {
        pmu: String,
        event: String,
        suggestions: Vec<String>,
    },
    #[error("`{term}` in `{event}` is neither a format field nor an event of PMU {pmu} (fields: {fields}){hint}", hint = suggest(.suggestions))]
    UnknownTerm {
        term: String,
        event: String,
        pmu: String,
        fields: String,
        suggestions: Vec<String>,
    },
    #[error(
        "in `{event}`: the event alias {pmu}/events/{alias} reads `{terms}`, which is not a \
         list of term=value (is the sysfs tree damaged? `sampler list {pmu}` shows it)"
    )]
    BadAlias {
        event: String,
        pmu: String,
        alias: String,
        terms: String,
    },
    #[error("in `{event}`: {source}")]
    Field {
        event: String,
        #[source]
        source: FormatError,
    },
    #[error(
        "`{event}` asks for precise sampling, but {why}: drop the `p`s, or use `P` for the highest level the PMU has"
    )]
    NotPrecise { event: String, why: String },
    #[error("no PMU of the selected CPUs {selected} supports `{event}` ({coverage})")]
    NotCovered {
        event: String,
        selected: CpuList,
        coverage: String,
    },
}

fn suggest(s: &[String]) -> String {
    match s {
        [] => String::new(),
        [one] => format!(" (did you mean `{one}`?)"),
        many => format!(
            " (did you mean {}?)",
            many.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Up to three names close to `wanted`, closest first.
pub fn closest<'a>(wanted: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let wanted_l = wanted.to_ascii_lowercase();
    let mut scored: Vec<(f64, &str)> = names
        .into_iter()
        .map(|n| (strsim::jaro_winkler(&wanted_l, &n.to_ascii_lowercase()), n))
        .filter(|&(s, _)| s >= 0.8)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    let mut out: Vec<String> = Vec::new();
    for (_, n) in scored {
        if !out.iter().any(|o| o == n) {
            out.push(n.to_owned());
        }
        if out.len() == 3 {
            break;
        }
    }
    out
}

/// Plans `list` on each CPU of `cpus` (all of which must be online).
pub fn plan(
    list: &EventList,
    pmus: &PmuSet,
    cpus: &CpuList,
    kernel: Option<KernelVersion>,
) -> Result<Plan, PlanError> {
    let mut entries = Vec::new();
    let mut notes = Vec::new();
    let hetero = pmus.heterogeneous();
    for (gi, group) in list.groups.iter().enumerate() {
        // Name errors first, whatever the CPUs.
        for e in &group.events {
            check_names(e, pmus)?;
        }
        let mut planned_cpus = Vec::new();
        for cpu in cpus.iter() {
            let mut members = Vec::new();
            for (i, e) in group.events.iter().enumerate() {
                let mut r = resolve(e, cpu, pmus, hetero, kernel)?;
                for p in &mut r {
                    p.group = gi;
                    p.index = i;
                    // Only the first group's leader samples.
                    if gi == 0 && i == 0 {
                        check_precise(e, p, pmus)?;
                    }
                }
                members.push(r);
            }
            let single = group.events.len() == 1;
            // A group is opened together on one PMU: every member must resolve once.
            if single && !members[0].is_empty() {
                entries.extend(members.remove(0));
                planned_cpus.push(cpu);
            } else if !single && members.iter().all(|m| m.len() == 1) {
                entries.extend(members.into_iter().flatten());
                planned_cpus.push(cpu);
            }
        }
        let name = group_name(&group.events);
        if planned_cpus.is_empty() {
            return Err(PlanError::NotCovered {
                event: name,
                selected: cpus.clone(),
                coverage: coverage(group, pmus),
            });
        }
        if planned_cpus.len() < cpus.len() {
            let planned = CpuList::from_cpus(planned_cpus.clone());
            let rest = CpuList::from_cpus(cpus.iter().filter(|c| !planned.contains(*c)).collect());
            notes.push(format!(
                "`{name}` is planned on CPUs {planned} only ({}); not on CPUs {rest}",
                coverage(group, pmus)
            ));
        }
    }
    if let Some(possible) = &pmus.possible {
        let offline: Vec<u32> = possible
            .iter()
            .filter(|c| !pmus.online.contains(*c))
            .collect();
        if !offline.is_empty() {
            notes.push(format!(
                "CPUs {} are offline and skipped",
                CpuList::from_cpus(offline)
            ));
        }
    }
    let wants_core = list.events().any(|e| {
        matches!(
            e.kind,
            EventKind::Hardware(_) | EventKind::Cache(_) | EventKind::Raw(_)
        )
    });
    let no_core_pmu = wants_core && pmus.core_pmus().count() == 0;
    entries.sort_by_key(|e| (e.group, e.cpu));
    Ok(Plan {
        plan: entries,
        notes,
        no_core_pmu,
    })
}

fn group_name(events: &[EventSpec]) -> String {
    if events.len() == 1 {
        events[0].display()
    } else {
        format!(
            "{{{}}}",
            events
                .iter()
                .map(EventSpec::display)
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

/// Which PMUs could carry the group's events, and their CPUs, for messages.
fn coverage(group: &Group, pmus: &PmuSet) -> String {
    let mut parts = BTreeSet::new();
    for e in &group.events {
        for p in candidate_pmus(e, pmus) {
            parts.insert(format!(
                "{} covers CPUs {}",
                p.name,
                p.covered_cpus(&pmus.online)
            ));
        }
    }
    if parts.is_empty() {
        "no PMU offers it".to_owned()
    } else {
        parts.into_iter().collect::<Vec<_>>().join("; ")
    }
}

use crate::events::syntax::Group;

/// The PMUs an event can be opened through, whatever the CPU.
fn candidate_pmus<'a>(e: &EventSpec, pmus: &'a PmuSet) -> Vec<&'a Pmu> {
    match &e.kind {
        EventKind::Pmu { pmu, .. } => pmus.get(pmu).into_iter().collect(),
        EventKind::Symbol(name) => alias_holders(name, pmus),
        EventKind::Software(_) => pmus.get("software").into_iter().collect(),
        EventKind::Hardware(_) | EventKind::Cache(_) | EventKind::Raw(_) => {
            pmus.core_pmus().collect()
        }
    }
}

/// The PMUs with an alias `name`: core PMUs if any has it, else the others.
fn alias_holders<'a>(name: &str, pmus: &'a PmuSet) -> Vec<&'a Pmu> {
    let all: Vec<&Pmu> = pmus
        .pmus
        .iter()
        .filter(|p| p.events.contains_key(name))
        .collect();
    if all.iter().any(|p| p.core) {
        all.into_iter().filter(|p| p.core).collect()
    } else {
        all
    }
}

/// Errors that do not depend on the CPU: unknown events, PMUs, terms, bad values.
fn check_names(e: &EventSpec, pmus: &PmuSet) -> Result<(), PlanError> {
    match &e.kind {
        EventKind::Symbol(name) => {
            if alias_holders(name, pmus).is_empty() {
                let caches = syntax::cache_names();
                let mut names: Vec<&str> = syntax::generic_names().collect();
                names.extend(
                    pmus.pmus
                        .iter()
                        .flat_map(|p| p.events.keys().map(String::as_str)),
                );
                names.extend(caches.iter().map(String::as_str));
                return Err(PlanError::UnknownEvent {
                    name: name.clone(),
                    suggestions: closest(name, names),
                });
            }
            Ok(())
        }
        EventKind::Pmu { pmu, terms } => {
            let Some(p) = pmus.get(pmu) else {
                return Err(PlanError::UnknownPmu {
                    pmu: pmu.clone(),
                    event: e.name.clone(),
                    suggestions: closest(pmu, pmus.pmus.iter().map(|p| p.name.as_str())),
                });
            };
            encode_terms(p, terms, &e.name).map(drop)
        }
        _ => Ok(()),
    }
}

/// Encodes `pmu/terms/`: format fields, `config*` words, and aliases.
fn encode_terms(p: &Pmu, terms: &[Term], event: &str) -> Result<[u64; 4], PlanError> {
    let mut words = [0u64; 4];
    encode_into(p, terms, event, &mut words, 0)?;
    Ok(words)
}

fn word_index(w: ConfigWord) -> usize {
    match w {
        ConfigWord::Config => 0,
        ConfigWord::Config1 => 1,
        ConfigWord::Config2 => 2,
        ConfigWord::Config3 => 3,
    }
}

fn encode_into(
    p: &Pmu,
    terms: &[Term],
    event: &str,
    words: &mut [u64; 4],
    depth: u32,
) -> Result<(), PlanError> {
    for t in terms {
        if let Some(f) = p.formats.get(&t.key) {
            let bits =
                f.encode(&t.key, t.value.unwrap_or(1))
                    .map_err(|source| PlanError::Field {
                        event: event.to_owned(),
                        source,
                    })?;
            words[word_index(f.word)] |= bits;
            continue;
        }
        let direct = match t.key.as_str() {
            "config" => Some(0),
            "config1" => Some(1),
            "config2" => Some(2),
            "config3" => Some(3),
            _ => None,
        };
        if let (Some(i), Some(v)) = (direct, t.value) {
            words[i] |= v;
            continue;
        }
        if t.value.is_none()
            && depth == 0
            && let Some(alias) = p.events.get(&t.key)
        {
            let alias_terms =
                parse_alias_terms(&alias.terms).ok_or_else(|| PlanError::BadAlias {
                    event: event.to_owned(),
                    pmu: p.name.clone(),
                    alias: t.key.clone(),
                    terms: crate::discover::clip(&alias.terms, 80),
                })?;
            encode_into(p, &alias_terms, event, words, depth + 1)?;
            continue;
        }
        let names = p.formats.keys().chain(p.events.keys()).map(String::as_str);
        return Err(PlanError::UnknownTerm {
            term: crate::discover::clip(&t.key, 80),
            event: event.to_owned(),
            pmu: p.name.clone(),
            fields: p.formats.keys().cloned().collect::<Vec<_>>().join(", "),
            suggestions: closest(&t.key, names),
        });
    }
    Ok(())
}

/// `event=0x3c,umask=0x01` -> terms.
fn parse_alias_terms(s: &str) -> Option<Vec<Term>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('=') {
            Some((k, v)) => Some(Term {
                key: k.trim().to_owned(),
                value: Some(syntax::parse_number(v)?),
            }),
            None => Some(Term {
                key: t.to_owned(),
                value: None,
            }),
        })
        .collect()
}

fn attr(encoding: Encoding, type_: u32, words: [u64; 4]) -> Attr {
    Attr {
        encoding,
        type_,
        config: words[0],
        config1: words[1],
        config2: words[2],
    }
}

fn entry(
    e: &EventSpec,
    cpu: u32,
    pmu: Option<&Pmu>,
    chain: Vec<Attr>,
    hardware: bool,
) -> PlannedEvent {
    let mut chain = chain.into_iter();
    let first = chain.next().expect("a chain has at least one encoding");
    let m = &e.modifiers;
    PlannedEvent {
        cpu,
        group: 0,
        index: 0,
        event: e.display(),
        pmu: pmu.map(|p| p.name.clone()),
        hardware,
        exclude_user: m.exclude_user,
        exclude_kernel: m.exclude_kernel,
        exclude_hv: m.exclude_hv,
        exclude_guest: m.exclude_guest,
        exclude_host: m.exclude_host,
        exclude_idle: m.exclude_idle,
        precise_ip: if m.precise_max {
            max_precise(pmu)
        } else {
            m.precise
        },
        pinned: m.pinned,
        exclusive: m.exclusive,
        pmu_event: None,
        attr: first,
        fallbacks: chain.collect(),
    }
}

/// The highest precise sampling level of `pmu` (x86's `caps/max_precise`); 0 for
/// PMUs without precise sampling (arm_pmu, software, or none known).
fn max_precise(pmu: Option<&Pmu>) -> u8 {
    pmu.and_then(|p| p.caps.get("max_precise"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Refuses precise sampling (`p`) that the sampling event's PMU cannot do: the kernel
/// would refuse it (x86 without PEBS: EOPNOTSUPP) or ignore it (arm_pmu, software).
fn check_precise(e: &EventSpec, planned: &PlannedEvent, pmus: &PmuSet) -> Result<(), PlanError> {
    let wanted = e.modifiers.precise;
    if wanted == 0 {
        return Ok(());
    }
    let pmu = planned.pmu.as_deref().and_then(|n| pmus.get(n));
    let name = pmu.map_or("of the kernel's choice (none in sysfs)", |p| {
        p.name.as_str()
    });
    let max = max_precise(pmu);
    let why = if !planned.hardware {
        format!("software events ({name}) have no precise sampling")
    } else if max == 0 {
        format!(
            "PMU {name} has no precise sampling (no caps/max_precise; precise sampling is \
             PEBS or IBS on x86)"
        )
    } else if wanted > max {
        format!("PMU {name} samples at most at precise level {max} (caps/max_precise)")
    } else {
        return Ok(());
    };
    Err(PlanError::NotPrecise {
        event: e.display(),
        why,
    })
}

/// The planned events of `e` on `cpu`: none when no PMU of `e` covers the CPU, one per
/// covering PMU otherwise.
fn resolve(
    e: &EventSpec,
    cpu: u32,
    pmus: &PmuSet,
    hetero: bool,
    kernel: Option<KernelVersion>,
) -> Result<Vec<PlannedEvent>, PlanError> {
    let covering = |p: &&Pmu| p.covered_cpus(&pmus.online).contains(cpu);
    let core: Vec<&Pmu> = pmus.core_pmus_of(cpu).collect();
    let out = match &e.kind {
        EventKind::Software(id) => {
            let sw = pmus.get("software");
            vec![entry(
                e,
                cpu,
                sw,
                vec![attr(Encoding::Software, PERF_TYPE_SOFTWARE, [*id, 0, 0, 0])],
                false,
            )]
        }
        EventKind::Hardware(id) | EventKind::Cache(id) => {
            let type_ = if matches!(e.kind, EventKind::Hardware(_)) {
                PERF_TYPE_HARDWARE
            } else {
                PERF_TYPE_HW_CACHE
            };
            let legacy = attr(Encoding::Legacy, type_, [*id, 0, 0, 0]);
            if core.is_empty() {
                // No core PMU known for this CPU: the kernel decides.
                vec![entry(e, cpu, None, vec![legacy], true)]
            } else {
                core.into_iter()
                    .map(|p| {
                        let mut chain = Vec::new();
                        if hetero {
                            if extended_type_supported(p, kernel) {
                                let cfg = u64::from(p.type_) << 32 | id;
                                chain.push(attr(Encoding::Extended, type_, [cfg, 0, 0, 0]));
                            }
                            if type_ == PERF_TYPE_HARDWARE
                                && let Some(words) = hw_alias(p, *id)
                            {
                                chain.push(attr(Encoding::PmuAlias, p.type_, words));
                            }
                        }
                        chain.push(legacy);
                        let mut planned = entry(e, cpu, Some(p), chain, true);
                        if type_ == PERF_TYPE_HARDWARE {
                            planned.pmu_event = pmu_event(p, *id);
                        }
                        planned
                    })
                    .collect()
            }
        }
        EventKind::Raw(cfg) => {
            let legacy = attr(Encoding::Legacy, PERF_TYPE_RAW, [*cfg, 0, 0, 0]);
            if core.is_empty() || !hetero {
                vec![entry(e, cpu, core.first().copied(), vec![legacy], true)]
            } else {
                core.into_iter()
                    .map(|p| {
                        let own = attr(Encoding::Pmu, p.type_, [*cfg, 0, 0, 0]);
                        entry(e, cpu, Some(p), vec![own, legacy], true)
                    })
                    .collect()
            }
        }
        EventKind::Pmu { pmu, terms } => match pmus.get(pmu) {
            Some(p) if covering(&p) => {
                let words = encode_terms(p, terms, &e.name)?;
                let sw = p.type_ == PERF_TYPE_SOFTWARE;
                let enc = if sw {
                    Encoding::Software
                } else {
                    Encoding::Pmu
                };
                vec![entry(e, cpu, Some(p), vec![attr(enc, p.type_, words)], !sw)]
            }
            _ => Vec::new(),
        },
        EventKind::Symbol(name) => alias_holders(name, pmus)
            .into_iter()
            .filter(covering)
            .map(|p| {
                let term = Term {
                    key: name.clone(),
                    value: None,
                };
                encode_terms(p, std::slice::from_ref(&term), &e.name).map(|words| {
                    entry(
                        e,
                        cpu,
                        Some(p),
                        vec![attr(Encoding::Pmu, p.type_, words)],
                        true,
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(out)
}

/// The sysfs alias encoding of generic hardware event `id` on PMU `p`, if it has one.
/// arm_pmu's `armv8_pmuv3_perf_map`, by `PERF_COUNT_HW_*` id: the architected event
/// numbers (Arm ARM, D17.11) that the kernel, and KVM's emulated PMU, count for the
/// generic events. Branch instructions is left out: kernels differ (PC_WRITE_RETIRED
/// 0x0c, or BR_RETIRED 0x21 since 6.x, depending on PMCEID0), so only the kernel's
/// own alias, when the PMU publishes one, says which.
const ARMV8_GENERIC: [Option<u64>; 10] = [
    Some(0x11), // cycles: CPU_CYCLES
    Some(0x08), // instructions: INST_RETIRED
    Some(0x04), // cache-references: L1D_CACHE
    Some(0x03), // cache-misses: L1D_CACHE_REFILL
    None,       // branch-instructions: kernel-dependent
    Some(0x10), // branch-misses: BR_MIS_PRED
    Some(0x1d), // bus-cycles: BUS_CYCLES
    Some(0x23), // stalled-cycles-frontend: STALL_FRONTEND
    Some(0x24), // stalled-cycles-backend: STALL_BACKEND
    None,       // ref-cycles: none on arm64
];

/// The PMU's own event number behind the generic hardware event `id`: the armv8
/// table on arm_pmu, else the PMU's alias for it (its `event=` field, the config
/// value's low bits as the alias encodes them).
fn pmu_event(p: &Pmu, id: u64) -> Option<u64> {
    let armv8 = p
        .name
        .starts_with("armv8")
        .then(|| {
            ARMV8_GENERIC
                .get(usize::try_from(id).ok()?)
                .copied()
                .flatten()
        })
        .flatten();
    armv8.or_else(|| hw_alias(p, id).map(|w| w[0]))
}

fn hw_alias(p: &Pmu, id: u64) -> Option<[u64; 4]> {
    let names = HW_ALIASES.get(usize::try_from(id).ok()?)?;
    let alias = names.iter().find_map(|n| p.events.get(*n))?;
    let terms = parse_alias_terms(&alias.terms)?;
    let mut words = [0u64; 4];
    encode_into(p, &terms, names[0], &mut words, 1).ok()?;
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{discover::pmu::tests::load, events::syntax::parse};

    const K6_1: Option<KernelVersion> = Some(KernelVersion(6, 1));
    const K6_12: Option<KernelVersion> = Some(KernelVersion(6, 12));

    fn plan_on(
        machine: &str,
        events: &str,
        cpus: Option<&str>,
        k: Option<KernelVersion>,
    ) -> Result<Plan, PlanError> {
        let pmus = load(machine);
        let cpus = cpus.map_or(pmus.online.clone(), |c| CpuList::parse(c).unwrap());
        plan(&parse(events).unwrap(), &pmus, &cpus, k)
    }

    #[test]
    fn generic_events_show_the_pmu_event_number_behind_them() {
        // arm_pmu's table on both Juno PMUs, whatever the encoding; x86 from the
        // PMU's alias (cpu_core/events/cpu-cycles is event=0x3c); software: none.
        let p = plan_on(
            "juno",
            "cycles,instructions,cache-references,cache-misses,branch-misses,\
             branch-instructions,L1-dcache-loads,cpu-clock",
            None,
            K6_12,
        )
        .unwrap();
        for (pmu, cpu, branches) in [
            ("armv8_cortex_a53", 0, Some(0x0c)),
            ("armv8_cortex_a57", 1, None),
        ] {
            let numbers: Vec<(String, Option<u64>)> = p
                .plan
                .iter()
                .filter(|e| e.cpu == cpu && e.pmu.as_deref() == Some(pmu))
                .map(|e| (e.event.clone(), e.pmu_event))
                .collect();
            assert_eq!(
                numbers,
                [
                    ("cycles".to_owned(), Some(0x11)),
                    ("instructions".to_owned(), Some(0x08)),
                    ("cache-references".to_owned(), Some(0x04)),
                    ("cache-misses".to_owned(), Some(0x03)),
                    ("branch-misses".to_owned(), Some(0x10)),
                    // Kernels differ: only the PMU's own alias says (the A53
                    // publishes pc_write_retired, the A57 nothing).
                    ("branch-instructions".to_owned(), branches),
                    ("L1-dcache-loads".to_owned(), None),
                ],
                "{pmu}"
            );
        }
        assert!(
            p.plan
                .iter()
                .filter(|e| e.event == "cpu-clock")
                .all(|e| e.pmu_event.is_none())
        );
        let x = plan_on("adl", "cycles,instructions", Some("0,16"), K6_12).unwrap();
        let n: Vec<_> = x.plan.iter().map(|e| (e.cpu, e.pmu_event)).collect();
        assert_eq!(
            n,
            [
                (0, Some(0x3c)),
                (16, Some(0x3c)),
                (0, Some(0xc0)),
                (16, Some(0xc0))
            ]
        );
    }

    fn pmu_cpus(p: &Plan, event: &str) -> Vec<(String, String)> {
        let mut by_pmu: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        for e in p.plan.iter().filter(|e| e.event == event) {
            by_pmu
                .entry(e.pmu.clone().unwrap_or_default())
                .or_default()
                .push(e.cpu);
        }
        by_pmu
            .into_iter()
            .map(|(k, v)| (k, CpuList::from_cpus(v).to_string()))
            .collect()
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v595"),
            Some(KernelVersion(6, 18))
        );
        assert_eq!(KernelVersion::parse("5.13.0"), Some(KernelVersion(5, 13)));
        assert_eq!(KernelVersion::parse("6.1"), Some(KernelVersion(6, 1)));
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert!(KernelVersion(6, 6) > KernelVersion(5, 13));
    }

    #[test]
    fn adl_cycles_expands_to_both_core_pmus_with_extended_type() {
        let p = plan_on("adl", "cycles", None, K6_12).unwrap();
        assert_eq!(
            pmu_cpus(&p, "cycles"),
            [
                ("cpu_atom".into(), "16-23".into()),
                ("cpu_core".into(), "0-15".into())
            ]
        );
        let c0 = p.plan.iter().find(|e| e.cpu == 0).unwrap();
        assert_eq!(c0.attr.encoding, Encoding::Extended);
        assert_eq!(c0.attr.type_, PERF_TYPE_HARDWARE);
        assert_eq!(c0.attr.config, 4 << 32);
        // Then cpu_core's own cpu-cycles alias (event=0x3c), then legacy.
        assert_eq!(c0.fallbacks[0].encoding, Encoding::PmuAlias);
        assert_eq!((c0.fallbacks[0].type_, c0.fallbacks[0].config), (4, 0x3c));
        assert_eq!(
            c0.fallbacks[1],
            attr(Encoding::Legacy, PERF_TYPE_HARDWARE, [0; 4])
        );
        let c16 = p.plan.iter().find(|e| e.cpu == 16).unwrap();
        assert_eq!(c16.attr.config, 10 << 32);
        assert_eq!(p.plan.len(), 24, "one entry per online CPU");
    }

    #[test]
    fn old_kernel_uses_the_alias_first() {
        let p = plan_on(
            "adl",
            "instructions",
            Some("20"),
            Some(KernelVersion(5, 10)),
        )
        .unwrap();
        let e = &p.plan[0];
        assert_eq!(e.pmu.as_deref(), Some("cpu_atom"));
        assert_eq!(
            (e.attr.encoding, e.attr.type_, e.attr.config),
            (Encoding::PmuAlias, 10, 0xc0)
        );
        assert_eq!(
            e.fallbacks,
            [attr(Encoding::Legacy, PERF_TYPE_HARDWARE, [1, 0, 0, 0])]
        );
    }

    #[test]
    fn juno_cycles_on_both_cortex_pmus() {
        for (k, first) in [(K6_1, Encoding::PmuAlias), (K6_12, Encoding::Extended)] {
            let p = plan_on("juno", "cycles", None, k).unwrap();
            assert_eq!(
                pmu_cpus(&p, "cycles"),
                [
                    ("armv8_cortex_a53".into(), "0,3-5".into()),
                    ("armv8_cortex_a57".into(), "1-2".into())
                ]
            );
            let a57 = p.plan.iter().find(|e| e.cpu == 1).unwrap();
            assert_eq!(a57.attr.encoding, first);
            let alias = a57
                .encodings()
                .find(|a| a.encoding == Encoding::PmuAlias)
                .unwrap();
            assert_eq!((alias.type_, alias.config), (10, 0x11));
            assert_eq!(a57.encodings().last().unwrap().encoding, Encoding::Legacy);
        }
    }

    #[test]
    fn homogeneous_and_vm_use_legacy() {
        let p = plan_on("vm", "cycles,cpu-clock", None, K6_12).unwrap();
        let cycles: Vec<&PlannedEvent> = p.plan.iter().filter(|e| e.event == "cycles").collect();
        assert_eq!(cycles.len(), 2);
        assert!(cycles.iter().all(|e| e.pmu.is_none()
            && e.attr.encoding == Encoding::Legacy
            && e.fallbacks.is_empty()));
        let clock = p.plan.iter().find(|e| e.event == "cpu-clock").unwrap();
        assert_eq!(clock.pmu.as_deref(), Some("software"));
        assert!(!clock.hardware);
        assert!(p.no_core_pmu);
        assert!(!plan_on("adl", "cycles", None, K6_12).unwrap().no_core_pmu);
        assert!(!plan_on("vm", "cpu-clock", None, K6_12).unwrap().no_core_pmu);
    }

    #[test]
    fn pmu_terms_through_format_bits_and_aliases() {
        let p = plan_on(
            "adl",
            "cpu_core/event=0xd0,umask=0x5,ldlat=3/",
            Some("0"),
            K6_12,
        )
        .unwrap();
        let e = &p.plan[0];
        assert_eq!(
            (e.attr.type_, e.attr.config, e.attr.config1),
            (4, 0x05d0, 3)
        );
        // An alias inside the slashes, with a config1 field.
        let p = plan_on("adl", "cpu_core/mem-loads/", Some("1"), K6_12).unwrap();
        assert_eq!((p.plan[0].attr.config, p.plan[0].attr.config1), (0x01cd, 3));
        // Juno: config1 fields (long, rdpmc, threshold).
        let p = plan_on(
            "juno",
            "armv8_cortex_a53/event=0x11,long,rdpmc,threshold=5/",
            Some("0"),
            K6_12,
        )
        .unwrap();
        assert_eq!(
            (p.plan[0].attr.config, p.plan[0].attr.config1),
            (0x11, 0b11 | 5 << 5)
        );
        // Direct config words.
        let p = plan_on(
            "adl",
            "cpu_atom/config=0x1234,config1=7/",
            Some("16"),
            K6_12,
        )
        .unwrap();
        assert_eq!((p.plan[0].attr.config, p.plan[0].attr.config1), (0x1234, 7));
    }

    #[test]
    fn bare_alias_and_uncore_events() {
        let p = plan_on("juno", "inst_spec", None, K6_12).unwrap();
        assert_eq!(
            pmu_cpus(&p, "inst_spec"),
            [("armv8_cortex_a57".into(), "1-2".into())]
        );
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("`inst_spec` is planned on CPUs 1-2 only")),
            "{:?}",
            p.notes
        );
        let p = plan_on("adl", "data_read", None, K6_12).unwrap();
        // Two free-running IMC PMUs, both on CPU 0 (their cpumask).
        assert_eq!(p.plan.len(), 2);
        assert!(p.plan.iter().all(|e| e.cpu == 0 && e.attr.config == 0x20ff));
    }

    #[test]
    fn raw_events_and_modifiers() {
        let p = plan_on("adl", "r01c2:u", Some("0,16"), K6_12).unwrap();
        assert_eq!(p.plan.len(), 2);
        assert_eq!((p.plan[0].attr.type_, p.plan[0].attr.config), (4, 0x1c2));
        assert_eq!((p.plan[1].attr.type_, p.plan[1].attr.config), (10, 0x1c2));
        assert_eq!(p.plan[1].fallbacks[0].type_, PERF_TYPE_RAW);
        assert!(
            p.plan
                .iter()
                .all(|e| !e.exclude_user && e.exclude_kernel && e.exclude_hv)
        );
        let p = plan_on("vm", "r1a8", None, None).unwrap();
        assert_eq!(p.plan[0].attr.type_, PERF_TYPE_RAW);
    }

    #[test]
    fn precise_sampling_follows_the_pmus_caps() {
        // Alder Lake: both core PMUs have caps/max_precise 3.
        let p = plan_on("adl", "cycles:pp", None, K6_12).unwrap();
        assert!(p.plan.iter().all(|e| e.precise_ip == 2 && e.exclude_guest));
        let p = plan_on("adl", "cycles:P", None, K6_12).unwrap();
        assert!(p.plan.iter().all(|e| e.precise_ip == 3 && !e.exclude_guest));
        let a = p.plan[0].attr(
            &p.plan[0].attr,
            Mode::Sample {
                rate: Rate::Period(1),
            },
        );
        assert_eq!(a.precise_ip(), 3);
        // Precision is a property of sampling: a counting copy does not ask for it.
        assert_eq!(
            p.plan[0]
                .attr(&p.plan[0].attr, Mode::CountLeader)
                .precise_ip(),
            0
        );
        // Arm PMUs and software events have none; P is then level 0, not an error.
        let e = plan_on("juno", "cycles:p", None, K6_12).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "`cycles:p` asks for precise sampling, but PMU armv8_cortex_a53 has no \
                 precise sampling"
            ),
            "{e}"
        );
        assert!(plan_on("juno", "cycles:P", None, K6_12).unwrap().plan[0].precise_ip == 0);
        let e = plan_on("vm", "cpu-clock:ppp", None, K6_12).unwrap_err();
        assert!(
            e.to_string().contains("software events (software) have no"),
            "{e}"
        );
        // Only the sampling event is held to it: a counting member's p is dropped.
        assert!(plan_on("adl", "{cycles,instructions:p}", None, K6_12).is_ok());
        assert!(plan_on("vm", "cpu-clock,cycles:p", None, K6_12).is_ok());
    }

    #[test]
    fn leader_only_pinned_and_exclusive_and_the_guest_bits() {
        let p = plan_on("adl", "{cycles,instructions}:DeI", Some("0"), K6_12).unwrap();
        let (l, m) = (&p.plan[0], &p.plan[1]);
        assert!(l.pinned && l.exclusive && l.exclude_idle && m.exclude_idle);
        let (la, ma) = (
            l.attr(
                &l.attr,
                Mode::Sample {
                    rate: Rate::Frequency(99),
                },
            ),
            m.attr(&m.attr, Mode::CountMember),
        );
        assert_eq!((la.pinned(), la.exclusive(), la.exclude_idle()), (1, 1, 1));
        assert_eq!((ma.pinned(), ma.exclusive(), ma.exclude_idle()), (0, 0, 1));
        // perf's default: guests excluded; `G` counts guests only.
        let p = plan_on("vm", "cpu-clock,page-faults:G", None, K6_12).unwrap();
        let a = |e: &PlannedEvent| e.attr(&e.attr, Mode::CountLeader);
        let find = |name: &str| p.plan.iter().find(|e| e.event == name).unwrap();
        let (clock, faults) = (a(find("cpu-clock")), a(find("page-faults:G")));
        assert_eq!((clock.exclude_guest(), clock.exclude_host()), (1, 0));
        assert_eq!((faults.exclude_guest(), faults.exclude_host()), (0, 1));
    }

    #[test]
    fn cache_events_use_extended_hw_cache() {
        let p = plan_on("adl", "LLC-load-misses", Some("0"), K6_12).unwrap();
        assert_eq!(p.plan[0].attr.type_, PERF_TYPE_HW_CACHE);
        assert_eq!(p.plan[0].attr.config, 4 << 32 | 0x10002);
        assert_eq!(
            p.plan[0].fallbacks,
            [attr(
                Encoding::Legacy,
                PERF_TYPE_HW_CACHE,
                [0x10002, 0, 0, 0]
            )]
        );
    }

    #[test]
    fn groups_stay_on_one_pmu_per_cpu() {
        let p = plan_on("juno", "{cycles,instructions}", None, K6_12).unwrap();
        assert_eq!(p.plan.len(), 12);
        for cpu in 0..6 {
            let members: Vec<&PlannedEvent> = p.plan.iter().filter(|e| e.cpu == cpu).collect();
            assert_eq!(members.len(), 2);
            assert!(members[0].is_leader() && !members[1].is_leader());
            assert_eq!(members[0].pmu, members[1].pmu);
        }
        // A group naming one Cortex PMU's event is planned on that PMU's CPUs only.
        let p = plan_on("juno", "{cycles,inst_spec}", None, K6_12).unwrap();
        let cpus: BTreeSet<u32> = p.plan.iter().map(|e| e.cpu).collect();
        assert_eq!(cpus.into_iter().collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = plan_on("adl", "cycels", None, K6_12).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown event `cycels` (did you mean `cycles`?); `sampler list` shows the events of each PMU"
        );
        let e = plan_on("juno", "cpu_cycle", None, K6_12).unwrap_err();
        assert!(e.to_string().contains("`cpu_cycles`"), "{e}");
        let e = plan_on("adl", "cpu_cor/event=0x3c/", None, K6_12).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "unknown PMU `cpu_cor` in `cpu_cor/event=0x3c/` (did you mean `cpu_core`"
            ),
            "{e}"
        );
        let e = plan_on("adl", "cpu_core/evnt=0x3c/", None, K6_12).unwrap_err();
        assert!(
            e.to_string()
                .contains("`evnt` in `cpu_core/evnt=0x3c/` is neither a format field"),
            "{e}"
        );
        assert!(e.to_string().contains("did you mean `event`"), "{e}");
        let e = plan_on("adl", "cpu_core/event=0x1ff/", None, K6_12).unwrap_err();
        assert_eq!(
            e.to_string(),
            "in `cpu_core/event=0x1ff/`: value 0x1ff does not fit field `event` (config:0-7, 8 bits)"
        );
        let e = plan_on("adl", "cpu_core/event=0x3c/", Some("16-23"), K6_12).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no PMU of the selected CPUs 16-23 supports `cpu_core/event=0x3c/` (cpu_core covers CPUs 0-15)"
        );
        let e = plan_on("juno", "inst_spec", Some("0,3"), K6_12).unwrap_err();
        assert!(
            e.to_string().contains("armv8_cortex_a57 covers CPUs 1-2"),
            "{e}"
        );
        // A name error is reported even when no CPU would have been covered.
        let e = plan_on("adl", "cpu_core/bogus/", Some("16"), K6_12).unwrap_err();
        assert!(matches!(e, PlanError::UnknownTerm { .. }), "{e}");
    }

    #[test]
    fn attrs_carry_encoding_mode_and_modifiers() {
        let p = plan_on("adl", "cycles:k", Some("16"), K6_12).unwrap();
        let e = &p.plan[0];
        let a = e.attr(
            &e.fallbacks[0],
            Mode::Sample {
                rate: Rate::Frequency(999),
            },
        );
        assert_eq!((a.type_, a.config), (10, 0x3c));
        assert_eq!(
            (a.exclude_user(), a.exclude_kernel(), a.exclude_hv()),
            (1, 0, 1)
        );
        assert_eq!((a.freq(), a.sample_freq, a.disabled()), (1, 999, 1));
        assert_eq!(a.read_format, READ_FORMAT);
        let m = e.attr(&e.attr, Mode::CountMember);
        assert_eq!((m.freq(), m.sample_period, m.disabled()), (0, 0, 0));
        let l = e.attr(&e.attr, Mode::CountLeader);
        assert_eq!((l.freq(), l.sample_period, l.disabled()), (0, 0, 1));
        let c = PlannedEvent::cpu_clock(3);
        let a = c.attr(
            &c.attr,
            Mode::Sample {
                rate: Rate::Period(100_000),
            },
        );
        assert_eq!((a.freq(), a.sample_period, a.disabled()), (0, 100_000, 1));
        assert_eq!(
            (a.type_, a.config),
            (PERF_TYPE_SOFTWARE, u64::from(PERF_COUNT_SW_CPU_CLOCK))
        );
    }

    #[test]
    fn members_know_their_position() {
        let p = plan_on(
            "adl",
            "{cycles,instructions,cache-misses},page-faults",
            Some("0"),
            K6_12,
        )
        .unwrap();
        let pos: Vec<(usize, usize, bool)> = p
            .plan
            .iter()
            .map(|e| (e.group, e.index, e.is_leader()))
            .collect();
        assert_eq!(
            pos,
            [(0, 0, true), (0, 1, false), (0, 2, false), (1, 0, true)]
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Any text: the parser answers, it never panics.
            #[test]
            fn parser_is_total(s in "\\PC{0,80}") {
                let _ = parse(&s);
            }

            /// Text made of the syntax's own characters reaches deep into the parser,
            /// and whatever parses is planned without panicking on every fixture.
            #[test]
            fn parser_and_planner_are_total_on_syntax_soup(
                s in "[{}/,:=ukhr0-9a-fx_ .-]{0,40}|(cycles|cpu_core|armv8_cortex_a53|event|umask|0x3c|inst_spec|LLC|-|load|misses|[{}/,:=ukh]){0,12}"
            ) {
                if let Ok(list) = parse(&s) {
                    for machine in ["adl", "juno", "vm"] {
                        let pmus = load(machine);
                        let _ = plan(&list, &pmus, &pmus.online, K6_12);
                    }
                }
            }

            /// Lists built from valid events always parse, with one event per item.
            #[test]
            fn valid_lists_parse(items in proptest::collection::vec(
                prop_oneof![
                    Just("cycles"), Just("instructions:u"), Just("cpu-clock"),
                    Just("cpu_core/event=0x3c,umask=0x0/k"), Just("r1a8"),
                    Just("{cycles,instructions}"), Just("L1-dcache-load-misses"),
                ], 1..8)
            ) {
                let text = items.join(",");
                let list = parse(&text).unwrap();
                let expected: usize = items.iter().map(|i| if i.starts_with('{') { 2 } else { 1 }).sum();
                prop_assert_eq!(list.events().count(), expected);
            }

            /// Format encoding puts every bit of a fitting value in the field's ranges.
            #[test]
            fn format_encoding_round_trips(value in any::<u64>()) {
                let f = crate::discover::pmu::Format::parse("config:0-7,32-35,60-63").unwrap();
                let fitting = value & 0xffff;
                let enc = f.encode("event", fitting).unwrap();
                let back = (enc & 0xff) | ((enc >> 32) & 0xf) << 8 | ((enc >> 60) & 0xf) << 12;
                prop_assert_eq!(back, fitting);
                prop_assert_eq!(f.encode("event", value).is_ok(), value >> 16 == 0);
            }

            /// CPU lists: parse never panics, and what parses prints and re-parses the same.
            #[test]
            fn cpu_lists_round_trip(s in "[0-9,\\- ]{0,24}") {
                if let Ok(l) = CpuList::parse(&s) {
                    prop_assert_eq!(CpuList::parse(&l.to_string()).unwrap(), l);
                }
            }
        }
    }
}
