//! Opens the plan on every selected CPU as perf event groups, attaches the BPF program
//! to the sampling leaders, and owns the file descriptors: dropping a [`Session`]
//! disables and closes them all, which also detaches the program.
//!
//! Plan group 0 is the sampling group: its leader samples (frequency mode) and runs
//! the BPF program on each overflow; its other events count, and the program reads
//! them through the `MEMBERS` map to attribute their growth per task. Further groups
//! count only and are read per CPU with `read()`. Every event walks its plan's
//! encoding chain on "no such event" errors.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::Mutex,
};

use sampler_common::MAX_MEMBERS;

use crate::{
    discover::cpus::CpuList,
    events::plan::{Encoding, Mode, PlannedEvent, Rate},
    kernel::Error,
    kernel::counter::{group_read_size, parse_group_read},
    sys::{PerfSys, errno_name},
};

/// One event opened on one CPU.
#[derive(Debug)]
pub struct OpenEvent {
    pub cpu: u32,
    /// Plan group (0: the sampling group).
    pub group: usize,
    /// Position in the plan group (0: leader).
    pub index: usize,
    pub event: String,
    pub pmu: Option<String>,
    /// The encoding of the plan's chain the kernel accepted.
    pub encoding: Encoding,
    pub hardware: bool,
    /// Why the planned leader could not be used, when this CPU fell back to cpu-clock.
    pub fallback_reason: Option<io::Error>,
    /// The id `read()` reports it under.
    pub id: u64,
    fd: OwnedFd,
}

/// The events of one plan group on one CPU; `events[0]` is the leader.
#[derive(Debug)]
pub struct CpuGroup {
    pub cpu: u32,
    pub group: usize,
    pub events: Vec<OpenEvent>,
}

impl CpuGroup {
    pub fn leader(&self) -> &OpenEvent {
        &self.events[0]
    }

    pub fn sampling(&self) -> bool {
        self.group == 0
    }
}

/// An event, or a whole group, that could not be opened on a CPU.
#[derive(Debug)]
pub struct Skipped {
    pub cpu: u32,
    pub event: String,
    pub reason: io::Error,
}

/// One event's counts on one CPU, from `read()` of its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCount {
    pub cpu: u32,
    pub group: usize,
    pub index: usize,
    pub event: String,
    pub pmu: Option<String>,
    pub value: u64,
    pub enabled: u64,
    pub running: u64,
}

/// Where the samples of a run come from, as reported to users (`"source"` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Every CPU samples a hardware PMU event.
    Hardware,
    /// Every CPU samples the software event that was asked for.
    Software,
    /// No CPU samples a hardware event, and some fell back to cpu-clock because their
    /// PMU has none (most VMs).
    SoftwareFallback,
    /// Some CPUs sample hardware events, others software ones.
    Mixed,
}

impl Source {
    /// The source of a run from each CPU's (hardware, fell back) pair.
    pub fn of(cpus: impl IntoIterator<Item = (bool, bool)>) -> Self {
        let (mut hw, mut sw, mut fell_back) = (false, false, false);
        for (hardware, fallback) in cpus {
            hw |= hardware;
            sw |= !hardware;
            fell_back |= fallback;
        }
        match (hw, sw) {
            (true, false) => Self::Hardware,
            (true, true) => Self::Mixed,
            (false, _) if fell_back => Self::SoftwareFallback,
            (false, _) => Self::Software,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hardware => "hardware",
            Self::Software => "software",
            Self::SoftwareFallback => "software-fallback",
            Self::Mixed => "mixed",
        }
    }
}

/// Whether an open error means "this PMU has no such event": the errors on which the
/// open step moves along the plan's encoding chain, and perf falls back from cycles to
/// cpu-clock (`evsel__fallback`): ENOENT (no PMU or no such event), ENXIO and ENODEV
/// (no device), EOPNOTSUPP (a PMU without sampling interrupts).
pub fn is_unsupported_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOENT | libc::ENXIO | libc::ENODEV | libc::EOPNOTSUPP)
    )
}

/// The open events of one run.
pub struct Session<'s> {
    sys: &'s dyn PerfSys,
    groups: Vec<CpuGroup>,
    skipped: Vec<Skipped>,
    enabled: bool,
    /// What was opened from, to open a CPU's groups again when it comes back online.
    plan: Vec<PlannedEvent>,
    rate: Rate,
    cpu_clock_fallback: bool,
    /// The program and member maps the sampling leaders were attached to.
    attached: Option<Attached>,
    /// Planned CPUs whose events were closed when they went offline.
    offline: Vec<u32>,
    /// Per (cpu, group, index): the counts of events closed by hotplug, added to what
    /// their reopened successors count, so totals never go backwards.
    carried: Vec<EventCount>,
    /// Per (cpu, group, index): the last counts `read()` gave, before `carried`.
    last: Mutex<HashMap<Slot, (u64, u64, u64)>>,
}

/// An event's place: (cpu, plan group, index in the group).
type Slot = (u32, usize, usize);

/// Our own copies of the program's and member maps' fds, for attaching reopened events.
struct Attached {
    prog: OwnedFd,
    maps: Vec<OwnedFd>,
}

impl<'s> Session<'s> {
    /// Opens every planned group on its CPU, disabled, the sampling leader at
    /// `rate`, walking each event's encoding chain. Where the sampling leader has
    /// no encoding, the CPU samples `cpu-clock` instead when `cpu_clock_fallback`
    /// (perf's rule for `cycles`), else that CPU's group is skipped and reported; so
    /// are members and counting groups a CPU's PMU lacks. It is an error only when no
    /// CPU could open the sampling leader.
    pub fn open(
        sys: &'s dyn PerfSys,
        plan: &[PlannedEvent],
        rate: Rate,
        cpu_clock_fallback: bool,
    ) -> Result<Self, Error> {
        let mut groups = Vec::new();
        let mut skipped = Vec::new();
        open_groups(
            sys,
            plan,
            rate,
            cpu_clock_fallback,
            &mut groups,
            &mut skipped,
        )?;
        if !groups.iter().any(CpuGroup::sampling) {
            let first = skipped.first();
            return Err(Error::NotSupported {
                event: first.map_or_else(|| "the sampling event".to_owned(), |s| s.event.clone()),
                cpus: CpuList::from_cpus(
                    plan.iter()
                        .filter(|p| p.group == 0 && p.is_leader())
                        .map(|p| p.cpu)
                        .collect(),
                ),
                reason: first.map_or_else(|| "nothing".to_owned(), |s| errno_name(&s.reason)),
            });
        }
        Ok(Self {
            sys,
            groups,
            skipped,
            enabled: false,
            plan: plan.to_vec(),
            rate,
            cpu_clock_fallback,
            attached: None,
            offline: Vec::new(),
            carried: Vec::new(),
            last: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `prog` on every overflow of each CPU's sampling leader, and puts the
    /// sampling group's events where the programs read them, by position in the group:
    /// event `i` of CPU `c` (0 the leader, then the members) at index `c` of `maps[i]`.
    pub fn attach(
        &mut self,
        prog: BorrowedFd<'_>,
        maps: [BorrowedFd<'_>; MAX_MEMBERS + 1],
    ) -> Result<(), Error> {
        for g in self.groups.iter().filter(|g| g.sampling()) {
            attach_group(self.sys, g, prog, &maps)?;
        }
        let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().map_err(Error::Runtime);
        self.attached = Some(Attached {
            prog: dup(prog)?,
            maps: maps.iter().map(|m| dup(*m)).collect::<Result<_, _>>()?,
        });
        Ok(())
    }

    /// Follows CPU hotplug: closes the events of CPUs that went offline (keeping their
    /// counts) and opens, attaches and enables again those of planned CPUs that came
    /// back. Returns a line for each change. Called once per refresh with the online
    /// CPUs (`/sys/devices/system/cpu/online`).
    pub fn follow_online(&mut self, online: &CpuList) -> Vec<String> {
        let mut notes = Vec::new();
        let mut gone: Vec<u32> = self
            .groups
            .iter()
            .map(|g| g.cpu)
            .filter(|&c| !online.contains(c))
            .collect();
        // Groups are in plan-group order: a CPU appears once per group.
        gone.sort_unstable();
        gone.dedup();
        for cpu in gone {
            self.close_cpu(cpu);
            notes.push(format!(
                "sampler: CPU {cpu} went offline: its events are closed, its counts so far \
                 kept; they are reopened when it comes back"
            ));
        }
        for cpu in self.offline.clone() {
            if !online.contains(cpu) {
                continue;
            }
            match self.reopen_cpu(cpu) {
                Ok(()) => {
                    self.offline.retain(|&c| c != cpu);
                    notes.push(format!(
                        "sampler: CPU {cpu} is back online: its events are open and sampling again"
                    ));
                }
                Err(e) => notes.push(format!(
                    "sampler: CPU {cpu} is back online but its events cannot be opened yet \
                     ({e}); trying again at the next refresh"
                )),
            }
        }
        notes
    }

    /// Closes `cpu`'s groups; their last counts move to `carried`.
    fn close_cpu(&mut self, cpu: u32) {
        // What the kernel still reports (it detached the events when the CPU went down,
        // which may have split the groups: take the larger of that and the last read).
        let fresh: Vec<EventCount> = self
            .groups
            .iter()
            .filter(|g| g.cpu == cpu)
            .flat_map(|g| self.read_group(g).unwrap_or_default())
            .collect();
        let last = self.last.lock().map(|l| l.clone()).unwrap_or_default();
        for mut c in fresh {
            let key = (c.cpu, c.group, c.index);
            if let Some(&(v, e, r)) = last.get(&key) {
                c.value = c.value.max(v);
                c.enabled = c.enabled.max(e);
                c.running = c.running.max(r);
            }
            match self
                .carried
                .iter_mut()
                .find(|k| (k.cpu, k.group, k.index) == key)
            {
                Some(k) => {
                    k.value += c.value;
                    k.enabled += c.enabled;
                    k.running += c.running;
                }
                None => self.carried.push(c),
            }
        }
        if let Ok(mut l) = self.last.lock() {
            l.retain(|k, _| k.0 != cpu);
        }
        if let Some(a) = &self.attached {
            let slots = self
                .groups
                .iter()
                .filter(|g| g.cpu == cpu && g.sampling())
                .flat_map(|g| g.events.iter())
                .filter(|m| m.index <= MAX_MEMBERS);
            for m in slots {
                // Best effort: the map's reference would keep the closed event alive
                // until the CPU's slot is set again.
                let _ = self.sys.clear_map_event(a.maps[m.index].as_fd(), cpu);
            }
        }
        // Dropping the groups closes their fds (and detaches the program).
        self.groups.retain(|g| g.cpu != cpu);
        if !self.offline.contains(&cpu) {
            self.offline.push(cpu);
        }
    }

    /// Opens `cpu`'s planned groups again, attached and enabled like the others.
    fn reopen_cpu(&mut self, cpu: u32) -> Result<(), Error> {
        let plan: Vec<PlannedEvent> = self.plan.iter().filter(|p| p.cpu == cpu).cloned().collect();
        let (mut groups, mut skipped) = (Vec::new(), Vec::new());
        open_groups(
            self.sys,
            &plan,
            self.rate,
            self.cpu_clock_fallback,
            &mut groups,
            &mut skipped,
        )?;
        if !groups.iter().any(CpuGroup::sampling) {
            let why = skipped.first().map_or_else(
                || "nothing planned".to_owned(),
                |s| format!("`{}`: {}", s.event, errno_name(&s.reason)),
            );
            return Err(Error::Runtime(io::Error::other(why)));
        }
        if let Some(a) = &self.attached {
            let maps: Vec<BorrowedFd<'_>> = a.maps.iter().map(AsFd::as_fd).collect();
            for g in groups.iter().filter(|g| g.sampling()) {
                attach_group(self.sys, g, a.prog.as_fd(), &maps)?;
            }
        }
        if self.enabled {
            for g in &groups {
                self.sys
                    .enable(g.leader().fd.as_fd())
                    .map_err(|source| Error::PerfIoctl {
                        what: "enable",
                        cpu,
                        source,
                    })?;
            }
        }
        for s in skipped {
            if !self
                .skipped
                .iter()
                .any(|k| k.cpu == s.cpu && k.event == s.event)
            {
                self.skipped.push(s);
            }
        }
        self.groups.extend(groups);
        // The order they were opened in: by plan group, then CPU.
        self.groups.sort_by_key(|g| (g.group, g.cpu));
        Ok(())
    }

    /// CPUs whose events are closed because they went offline.
    pub fn offline_cpus(&self) -> &[u32] {
        &self.offline
    }

    pub fn enable(&mut self) -> Result<(), Error> {
        // Marked first: a failure half-way leaves some CPUs enabled, for Drop to undo.
        self.enabled = true;
        self.each_leader("enable", |sys, fd| sys.enable(fd))
    }

    pub fn disable(&mut self) -> Result<(), Error> {
        self.each_leader("disable", |sys, fd| sys.disable(fd))?;
        self.enabled = false;
        Ok(())
    }

    /// Applies one ioctl to every group leader; the error names the step and the CPU.
    fn each_leader(
        &self,
        what: &'static str,
        op: impl Fn(&dyn PerfSys, BorrowedFd<'_>) -> io::Result<()>,
    ) -> Result<(), Error> {
        for g in &self.groups {
            op(self.sys, g.leader().fd.as_fd()).map_err(|source| Error::PerfIoctl {
                what,
                cpu: g.cpu,
                source,
            })?;
        }
        Ok(())
    }

    /// Reads every group: the counts of each event on each CPU, including what
    /// events closed by CPU hotplug counted before (a CPU that is offline keeps its
    /// last counts).
    pub fn read_counts(&self) -> Result<Vec<EventCount>, Error> {
        self.read_counts_reusing(&[])
    }

    /// [`Session::read_counts`], taking the sampling group of each CPU in `reads`
    /// as read there (by [`Session::sampling_read`]) instead of reading it again.
    pub fn read_counts_reusing(&self, reads: &[Vec<EventCount>]) -> Result<Vec<EventCount>, Error> {
        let mut out = Vec::new();
        for g in &self.groups {
            let read = reads
                .iter()
                .find(|r| g.sampling() && r.first().is_some_and(|c| c.cpu == g.cpu));
            match read {
                Some(read) => out.extend(read.iter().cloned()),
                None => out.extend(self.read_group(g)?),
            }
        }
        if let Ok(mut last) = self.last.lock() {
            for c in &out {
                last.insert((c.cpu, c.group, c.index), (c.value, c.enabled, c.running));
            }
        }
        for c in &mut out {
            if let Some(k) = self
                .carried
                .iter()
                .find(|k| (k.cpu, k.group, k.index) == (c.cpu, c.group, c.index))
            {
                c.value += k.value;
                c.enabled += k.enabled;
                c.running += k.running;
            }
        }
        for k in &self.carried {
            if !out
                .iter()
                .any(|c| (c.cpu, c.group, c.index) == (k.cpu, k.group, k.index))
            {
                out.push(k.clone());
            }
        }
        Ok(out)
    }

    /// The sampling group of `cpu` as `read()` gives it now, each event's count
    /// as [`Session::read_counts`] has them, but without what events closed by CPU
    /// hotplug carried: what the BPF program's leader and member slots of the CPU
    /// hold (by position, see [`values_by_position`]). `None` when the CPU has no
    /// sampling group or it cannot be read.
    pub fn sampling_read(&self, cpu: u32) -> Option<Vec<EventCount>> {
        let g = self.groups.iter().find(|g| g.cpu == cpu && g.sampling())?;
        self.read_group(g).ok()
    }

    /// One group's counts, as `read()` gives them now.
    fn read_group(&self, g: &CpuGroup) -> Result<Vec<EventCount>, Error> {
        let mut buf = vec![0u8; group_read_size(g.events.len())];
        let n = self
            .sys
            .read(g.leader().fd.as_fd(), &mut buf)
            .map_err(|source| Error::PerfIoctl {
                what: "read",
                cpu: g.cpu,
                source,
            })?;
        let r = parse_group_read(&buf[..n]).ok_or_else(|| Error::PerfIoctl {
            what: "parse the read() of",
            cpu: g.cpu,
            source: io::Error::new(io::ErrorKind::InvalidData, "short group read"),
        })?;
        Ok(g.events
            .iter()
            .map(|e| EventCount {
                cpu: g.cpu,
                group: g.group,
                index: e.index,
                event: e.event.clone(),
                pmu: e.pmu.clone(),
                value: r
                    .values
                    .iter()
                    .find(|(id, _)| *id == e.id)
                    .map_or(0, |v| v.1),
                enabled: r.enabled,
                running: r.running,
            })
            .collect())
    }

    pub fn groups(&self) -> &[CpuGroup] {
        &self.groups
    }

    /// The sampling leader of each CPU.
    pub fn leaders(&self) -> impl Iterator<Item = &OpenEvent> {
        self.groups
            .iter()
            .filter(|g| g.sampling())
            .map(CpuGroup::leader)
    }

    pub fn source(&self) -> Source {
        Source::of(
            self.leaders()
                .map(|e| (e.hardware, e.fallback_reason.is_some())),
        )
    }

    /// Lines for stderr: CPUs that fell back to `cpu-clock`, and events not opened on
    /// some CPUs, each with the CPUs and the kernel's reason.
    pub fn notices(&self) -> Vec<String> {
        let mut out = Vec::new();
        let fell_back: Vec<&OpenEvent> = self
            .leaders()
            .filter(|e| e.fallback_reason.is_some())
            .collect();
        if let Some(first) = fell_back.first() {
            let cpus = CpuList::from_cpus(fell_back.iter().map(|e| e.cpu).collect());
            let reason = first
                .fallback_reason
                .as_ref()
                .map(errno_name)
                .unwrap_or_default();
            out.push(format!(
                "sampler: no hardware PMU event `cycles` on CPU {cpus} ({reason}): this machine \
                 (e.g. a VM) exposes no hardware PMU there; sampling the software event \
                 `cpu-clock` instead"
            ));
        }
        let mut events: Vec<&str> = Vec::new();
        for s in &self.skipped {
            if !events.contains(&s.event.as_str()) {
                events.push(&s.event);
            }
        }
        for event in events {
            let these: Vec<&Skipped> = self.skipped.iter().filter(|s| s.event == event).collect();
            let cpus = CpuList::from_cpus(these.iter().map(|s| s.cpu).collect());
            let reason = &these[0].reason;
            out.push(if reason.raw_os_error() == Some(libc::EINVAL) {
                format!(
                    "sampler: `{event}` does not fit in its group on CPU {cpus} (EINVAL: the \
                     PMU has fewer counters than the group has events): not counted there; \
                     split the group"
                )
            } else {
                format!(
                    "sampler: `{event}` is not supported on CPU {cpus} ({}): not counted there",
                    errno_name(reason)
                )
            });
        }
        out
    }
}

/// Opens the groups of `plan` (contiguous per CPU and group) into `groups`; what a
/// CPU's PMU lacks goes to `skipped`. See [`Session::open`].
fn open_groups(
    sys: &dyn PerfSys,
    plan: &[PlannedEvent],
    rate: Rate,
    cpu_clock_fallback: bool,
    groups: &mut Vec<CpuGroup>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), Error> {
    let mut i = 0;
    while i < plan.len() {
        let (cpu, group) = (plan[i].cpu, plan[i].group);
        let mut j = i + 1;
        while j < plan.len() && plan[j].cpu == cpu && plan[j].group == group && !plan[j].is_leader()
        {
            j += 1;
        }
        let members = &plan[i..j];
        i = j;
        let leader_plan = &members[0];
        let mode = if group == 0 {
            Mode::Sample { rate }
        } else {
            Mode::CountLeader
        };
        let leader = match open_chain(sys, leader_plan, mode, None)? {
            Ok((fd, encoding)) => opened(sys, leader_plan, fd, encoding, None)?,
            Err(reason) if group == 0 && cpu_clock_fallback => {
                let clock = PlannedEvent::cpu_clock(cpu);
                let (fd, encoding) = open_chain(sys, &clock, mode, None)?
                    .map_err(|e| open_error(&clock.event, cpu, e))?;
                opened(sys, &clock, fd, encoding, Some(reason))?
            }
            Err(reason) => {
                skipped.push(Skipped {
                    cpu,
                    event: leader_plan.event.clone(),
                    reason,
                });
                continue;
            }
        };
        let mut events = vec![leader];
        for m in &members[1..] {
            let leader_fd = events[0].fd.as_fd();
            match open_chain(sys, m, Mode::CountMember, Some(leader_fd)) {
                Ok(Ok((fd, encoding))) => {
                    let e = opened(sys, m, fd, encoding, None)?;
                    events.push(e);
                }
                Ok(Err(reason)) => skipped.push(Skipped {
                    cpu,
                    event: m.event.clone(),
                    reason,
                }),
                // A PMU refuses a member that would make the group need more
                // counters than it has (arm_pmu's validate_group): the rest of the
                // group is still counted.
                Err(Error::PerfOpen { source, .. })
                    if source.raw_os_error() == Some(libc::EINVAL) =>
                {
                    skipped.push(Skipped {
                        cpu,
                        event: m.event.clone(),
                        reason: source,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        groups.push(CpuGroup { cpu, group, events });
    }
    Ok(())
}

/// Runs `prog` on every overflow of `g`'s leader and puts `g`'s events in the maps
/// (by position: the leader's, then the members') at the CPU's index.
fn attach_group(
    sys: &dyn PerfSys,
    g: &CpuGroup,
    prog: BorrowedFd<'_>,
    maps: &[BorrowedFd<'_>],
) -> Result<(), Error> {
    sys.set_bpf(g.leader().fd.as_fd(), prog)
        .map_err(|source| Error::PerfIoctl {
            what: "attach the BPF program to",
            cpu: g.cpu,
            source,
        })?;
    for m in g.events.iter().filter(|m| m.index <= MAX_MEMBERS) {
        sys.set_map_event(maps[m.index], g.cpu, m.fd.as_fd())
            .map_err(|source| Error::PerfIoctl {
                what: "hand the BPF program a member of",
                cpu: g.cpu,
                source,
            })?;
    }
    Ok(())
}

fn opened(
    sys: &dyn PerfSys,
    p: &PlannedEvent,
    fd: OwnedFd,
    encoding: Encoding,
    fallback_reason: Option<io::Error>,
) -> Result<OpenEvent, Error> {
    let id = sys.id(fd.as_fd()).map_err(|source| Error::PerfIoctl {
        what: "get the id of",
        cpu: p.cpu,
        source,
    })?;
    Ok(OpenEvent {
        cpu: p.cpu,
        group: p.group,
        index: p.index,
        event: p.event.clone(),
        pmu: p.pmu.clone(),
        encoding,
        hardware: p.hardware,
        fallback_reason,
        id,
        fd,
    })
}

/// Tries `p`'s encodings in order. `Ok(Err(e))`: none is supported (last error);
/// `Err`: a failure that is not "unsupported" (permissions, limits).
fn open_chain(
    sys: &dyn PerfSys,
    p: &PlannedEvent,
    mode: Mode,
    group: Option<BorrowedFd<'_>>,
) -> Result<Result<(OwnedFd, Encoding), io::Error>, Error> {
    let mut last = io::Error::from_raw_os_error(libc::ENOENT);
    for enc in p.encodings() {
        match open_attr(sys, &p.attr(enc, mode), p.cpu as i32, group) {
            Ok(fd) => return Ok(Ok((fd, enc.encoding))),
            Err(e) if is_unsupported_error(&e) => last = e,
            // arm_pmu refuses exclude_idle with EPERM, which is no lack of privilege.
            Err(e) if p.exclude_idle && e.raw_os_error() == Some(libc::EPERM) => {
                return Err(Error::PerfOpen {
                    event: p.event.clone(),
                    cpu: p.cpu,
                    source: e,
                    hint: " (the PMU cannot leave idle time out: drop the `I` modifier)",
                });
            }
            Err(e) => return Err(open_error(&p.event, p.cpu, e)),
        }
    }
    Ok(Err(last))
}

/// Opens `attr` system-wide on `cpu`. A PMU that cannot tell guests from the host
/// (`PERF_PMU_CAP_NO_EXCLUDE`: msr, uncore PMUs) refuses `exclude_guest` with EINVAL;
/// then, as perf does ("switching off exclude_guest, exclude_host"), it is opened
/// without the two bits: such a PMU counts the host alone anyway.
fn open_attr(
    sys: &dyn PerfSys,
    attr: &perf_event_open_sys::bindings::perf_event_attr,
    cpu: i32,
    group: Option<BorrowedFd<'_>>,
) -> io::Result<OwnedFd> {
    match sys.perf_event_open(attr, -1, cpu, group) {
        Err(e)
            if e.raw_os_error() == Some(libc::EINVAL)
                && (attr.exclude_guest() != 0 || attr.exclude_host() != 0) =>
        {
            let mut without = *attr;
            without.set_exclude_guest(0);
            without.set_exclude_host(0);
            sys.perf_event_open(&without, -1, cpu, group).map_err(|_| e)
        }
        r => r,
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if self.enabled {
            // Best effort: closing the fds below stops the events anyway.
            let _ = self.disable();
        }
    }
}

fn open_error(event: &str, cpu: u32, source: io::Error) -> Error {
    let event = event.to_owned();
    match source.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => Error::PerfPermission { event, cpu, source },
        errno => Error::PerfOpen {
            event,
            cpu,
            source,
            hint: match errno {
                Some(libc::EINVAL) => {
                    " (the kernel rejected the event's settings: the event may not support \
                     sampling (counting-only PMUs such as msr, power, uncore), or --frequency \
                     is too high)"
                }
                Some(libc::EMFILE | libc::ENFILE) => {
                    " (too many open files: raise the limit with `ulimit -n`)"
                }
                Some(libc::ENODEV | libc::ENXIO) => " (is the CPU online?)",
                _ => "",
            },
        },
    }
}

/// A sampling group's counts by position: the leader's value, then each member's.
pub fn values_by_position(counts: &[EventCount]) -> [Option<u64>; 1 + MAX_MEMBERS] {
    let mut out = [None; 1 + MAX_MEMBERS];
    for c in counts {
        if let Some(slot) = out.get_mut(c.index) {
            *slot = Some(c.value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{
        cell::RefCell,
        fs::File,
        os::fd::{AsRawFd, RawFd},
    };

    use perf_event_open_sys::bindings::{PERF_TYPE_HARDWARE, PERF_TYPE_SOFTWARE, perf_event_attr};

    use super::*;
    use crate::events::plan::{Attr, READ_FORMAT};

    /// A kernel that accepts the (cpu, type, config) triples listed (software events
    /// everywhere unless `software_errno`), records every call, and keeps an id and a
    /// group leader per fd so that group reads can be answered.
    #[derive(Default)]
    struct FakeSys {
        accepts: Vec<(u32, u32, u64)>,
        software_errno: Option<i32>,
        calls: RefCell<Vec<String>>,
        /// (fd, id, leader fd, cpu)
        fds: RefCell<Vec<(RawFd, u64, RawFd, u32)>>,
        /// CPUs that are offline: opening there fails with ENODEV, and a group read
        /// there gives the leader only (the kernel detached the group).
        offline: RefCell<Vec<u32>>,
        next_id: std::cell::Cell<u64>,
        /// Refuse exclude_guest/exclude_host with EINVAL, as a PMU with
        /// PERF_PMU_CAP_NO_EXCLUDE does.
        no_exclude: bool,
    }

    impl FakeSys {
        fn new(accepts: Vec<(u32, u32, u64)>) -> Self {
            Self {
                accepts,
                ..Self::default()
            }
        }
        fn id_of(&self, fd: RawFd) -> u64 {
            self.fds.borrow().iter().find(|f| f.0 == fd).unwrap().1
        }
        fn cpu_of(&self, fd: RawFd) -> u32 {
            self.fds.borrow().iter().find(|f| f.0 == fd).unwrap().3
        }
    }

    impl PerfSys for FakeSys {
        fn perf_event_open(
            &self,
            attr: &perf_event_attr,
            pid: i32,
            cpu: i32,
            group: Option<BorrowedFd<'_>>,
        ) -> io::Result<OwnedFd> {
            assert_eq!(pid, -1, "system-wide events only");
            assert_eq!(attr.read_format, READ_FORMAT);
            assert_eq!(
                attr.disabled() == 1,
                group.is_none(),
                "leaders start disabled"
            );
            self.calls.borrow_mut().push(format!(
                "open cpu{cpu} {}:{:#x}{}{}",
                attr.type_,
                attr.config,
                if group.is_some() { " member" } else { "" },
                if attr.exclude_guest() == 1 {
                    ""
                } else {
                    " +guest"
                }
            ));
            if self.no_exclude && (attr.exclude_guest() == 1 || attr.exclude_host() == 1) {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            let ok = if attr.type_ == PERF_TYPE_SOFTWARE {
                match self.software_errno {
                    Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
                    None => true,
                }
            } else {
                self.accepts
                    .contains(&(cpu as u32, attr.type_, attr.config))
            };
            if !ok {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            if self.offline.borrow().contains(&(cpu as u32)) {
                return Err(io::Error::from_raw_os_error(libc::ENODEV));
            }
            let fd: OwnedFd = File::open("/dev/null").unwrap().into();
            let raw = fd.as_raw_fd();
            let id = 100 + self.next_id.get();
            self.next_id.set(self.next_id.get() + 1);
            let leader = group.map_or(raw, |g| g.as_raw_fd());
            // A reused fd number: the event it was is closed, and so is its group
            // (a session closes a CPU's groups whole).
            self.fds.borrow_mut().retain(|f| f.0 != raw && f.2 != raw);
            self.fds.borrow_mut().push((raw, id, leader, cpu as u32));
            Ok(fd)
        }
        fn set_bpf(&self, e: BorrowedFd<'_>, _: BorrowedFd<'_>) -> io::Result<()> {
            let id = self.id_of(e.as_raw_fd());
            self.calls.borrow_mut().push(format!("set_bpf {id}"));
            Ok(())
        }
        fn enable(&self, e: BorrowedFd<'_>) -> io::Result<()> {
            let id = self.id_of(e.as_raw_fd());
            self.calls.borrow_mut().push(format!("enable {id}"));
            Ok(())
        }
        fn disable(&self, e: BorrowedFd<'_>) -> io::Result<()> {
            let id = self.id_of(e.as_raw_fd());
            self.calls.borrow_mut().push(format!("disable {id}"));
            Ok(())
        }
        fn id(&self, e: BorrowedFd<'_>) -> io::Result<u64> {
            Ok(self.id_of(e.as_raw_fd()))
        }
        fn read(&self, e: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
            let leader = e.as_raw_fd();
            let detached = self.offline.borrow().contains(&self.cpu_of(leader));
            let ids: Vec<u64> = self
                .fds
                .borrow()
                .iter()
                .filter(|f| f.2 == leader && (!detached || f.0 == leader))
                .map(|f| f.1)
                .collect();
            let mut words = vec![ids.len() as u64, 1000, 500];
            for id in ids {
                words.extend([id * 10, id]);
            }
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        }
        fn set_map_event(
            &self,
            map: BorrowedFd<'_>,
            index: u32,
            e: BorrowedFd<'_>,
        ) -> io::Result<()> {
            let id = self.id_of(e.as_raw_fd());
            let map = map.as_raw_fd();
            self.calls
                .borrow_mut()
                .push(format!("map fd{map}[{index}] = {id}"));
            Ok(())
        }
        fn clear_map_event(&self, map: BorrowedFd<'_>, index: u32) -> io::Result<()> {
            let map = map.as_raw_fd();
            self.calls
                .borrow_mut()
                .push(format!("clear map fd{map}[{index}]"));
            Ok(())
        }
    }

    fn a(encoding: Encoding, type_: u32, config: u64) -> Attr {
        Attr {
            encoding,
            type_,
            config,
            config1: 0,
            config2: 0,
        }
    }

    /// A hardware event planned on a hybrid CPU: extended, then the PMU's alias, then
    /// legacy.
    fn hw(cpu: u32, name: &str, id: u64, alias: u64, group: usize, index: usize) -> PlannedEvent {
        let mut p = PlannedEvent::cpu_clock(cpu);
        p.event = name.into();
        p.pmu = Some("cpu_core".into());
        p.hardware = true;
        p.group = group;
        p.index = index;
        p.attr = a(Encoding::Extended, PERF_TYPE_HARDWARE, 4 << 32 | id);
        p.fallbacks = vec![
            a(Encoding::PmuAlias, 4, alias),
            a(Encoding::Legacy, PERF_TYPE_HARDWARE, id),
        ];
        p
    }

    fn cycles(cpu: u32) -> PlannedEvent {
        hw(cpu, "cycles", 0, 0x3c, 0, 0)
    }

    fn sw(cpu: u32, name: &str, config: u64, group: usize, index: usize) -> PlannedEvent {
        let mut p = PlannedEvent::cpu_clock(cpu);
        p.event = name.into();
        p.attr.config = config;
        p.group = group;
        p.index = index;
        p
    }

    fn opened_calls(sys: &FakeSys) -> Vec<String> {
        sys.calls
            .borrow()
            .iter()
            .filter(|c| c.starts_with("open"))
            .cloned()
            .collect()
    }

    #[test]
    fn walks_the_encoding_chain_per_cpu() {
        // CPU 0: extended works; CPU 1: only the alias; CPU 2: only legacy.
        let sys = FakeSys::new(vec![
            (0, PERF_TYPE_HARDWARE, 4 << 32),
            (1, 4, 0x3c),
            (2, PERF_TYPE_HARDWARE, 0),
        ]);
        let s = Session::open(
            &sys,
            &[cycles(0), cycles(1), cycles(2)],
            Rate::Frequency(999),
            true,
        )
        .unwrap();
        let got: Vec<_> = s.leaders().map(|e| (e.cpu, e.encoding)).collect();
        assert_eq!(
            got,
            [
                (0, Encoding::Extended),
                (1, Encoding::PmuAlias),
                (2, Encoding::Legacy)
            ]
        );
        assert_eq!(s.source(), Source::Hardware);
        assert!(s.notices().is_empty());
        assert_eq!(
            opened_calls(&sys),
            [
                "open cpu0 0:0x400000000",
                "open cpu1 0:0x400000000",
                "open cpu1 4:0x3c",
                "open cpu2 0:0x400000000",
                "open cpu2 4:0x3c",
                "open cpu2 0:0x0",
            ]
        );
    }

    #[test]
    fn falls_back_to_cpu_clock_per_cpu() {
        let sys = FakeSys::new(vec![(0, PERF_TYPE_HARDWARE, 0)]);
        let s = Session::open(
            &sys,
            &[cycles(0), cycles(1), cycles(2)],
            Rate::Frequency(999),
            true,
        )
        .unwrap();
        assert_eq!(s.source(), Source::Mixed);
        let events: Vec<_> = s
            .leaders()
            .map(|e| (e.cpu, e.event.as_str(), e.hardware))
            .collect();
        assert_eq!(
            events,
            [
                (0, "cycles", true),
                (1, "cpu-clock", false),
                (2, "cpu-clock", false)
            ]
        );
        let notices = s.notices();
        assert_eq!(notices.len(), 1);
        assert!(notices[0].contains("CPU 1-2 (ENOENT)"), "{notices:?}");
        assert!(notices[0].contains("cpu-clock"));
        assert!(!notices[0].contains('\n'));
    }

    #[test]
    fn without_fallback_unsupported_cpus_are_skipped_and_reported() {
        let sys = FakeSys::new(vec![(1, PERF_TYPE_HARDWARE, 0)]);
        let s = Session::open(&sys, &[cycles(0), cycles(1)], Rate::Frequency(99), false).unwrap();
        assert_eq!(s.leaders().count(), 1);
        assert_eq!(s.leaders().next().unwrap().cpu, 1);
        assert_eq!(
            s.notices(),
            ["sampler: `cycles` is not supported on CPU 0 (ENOENT): not counted there"]
        );
        // Nowhere supported: an error naming the event and CPUs.
        let sys = FakeSys::new(vec![]);
        let err = Session::open(&sys, &[cycles(0), cycles(1)], Rate::Frequency(99), false)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "`cycles` cannot be opened on any selected CPU (0-1): the kernel answers ENOENT; \
             `sampler plan -e EVENT` shows what was tried"
        );
    }

    #[test]
    fn groups_members_counting_groups_and_reads() {
        // CPU 0 has instructions, CPU 1 does not: that member is skipped there.
        let sys = FakeSys::new(vec![
            (0, PERF_TYPE_HARDWARE, 4 << 32),
            (1, PERF_TYPE_HARDWARE, 4 << 32),
            (0, PERF_TYPE_HARDWARE, 4 << 32 | 1),
            (0, PERF_TYPE_HARDWARE, 4 << 32 | 3),
            (1, PERF_TYPE_HARDWARE, 4 << 32 | 3),
        ]);
        let mut plan = Vec::new();
        for cpu in [0, 1] {
            plan.push(cycles(cpu));
            plan.push(hw(cpu, "instructions", 1, 0xc0, 0, 1));
            plan.push(hw(cpu, "cache-misses", 3, 0x2e, 0, 2));
        }
        for cpu in [0, 1] {
            plan.push(sw(cpu, "page-faults", 2, 1, 0));
        }
        let mut s = Session::open(&sys, &plan, Rate::Frequency(999), false).unwrap();
        let shape: Vec<(u32, usize, Vec<usize>)> = s
            .groups()
            .iter()
            .map(|g| (g.cpu, g.group, g.events.iter().map(|e| e.index).collect()))
            .collect();
        assert_eq!(
            shape,
            [
                (0, 0, vec![0, 1, 2]),
                (1, 0, vec![0, 2]),
                (0, 1, vec![0]),
                (1, 1, vec![0])
            ]
        );
        assert_eq!(
            s.notices(),
            ["sampler: `instructions` is not supported on CPU 1 (ENOENT): not counted there"]
        );
        let maps: Vec<File> = (0..=MAX_MEMBERS)
            .map(|_| File::open("/dev/null").unwrap())
            .collect();
        let map_fds: [BorrowedFd<'_>; MAX_MEMBERS + 1] = std::array::from_fn(|i| maps[i].as_fd());
        let (l, m0, m1) = (
            maps[0].as_raw_fd(),
            maps[1].as_raw_fd(),
            maps[2].as_raw_fd(),
        );
        let prog = File::open("/dev/null").unwrap();
        sys.calls.borrow_mut().clear();
        s.attach(prog.as_fd(), map_fds).unwrap();
        s.enable().unwrap();
        // ids: cpu0 cycles 100, instructions 101, cache-misses 102; cpu1 cycles 103,
        // cache-misses 104; page-faults 105 (cpu0), 106 (cpu1). Event i of CPU c goes
        // to index c of map i (the leader's map first).
        assert_eq!(
            *sys.calls.borrow(),
            [
                "set_bpf 100".to_owned(),
                format!("map fd{l}[0] = 100"),
                format!("map fd{m0}[0] = 101"),
                format!("map fd{m1}[0] = 102"),
                "set_bpf 103".to_owned(),
                format!("map fd{l}[1] = 103"),
                format!("map fd{m1}[1] = 104"),
                "enable 100".to_owned(),
                "enable 103".to_owned(),
                "enable 105".to_owned(),
                "enable 106".to_owned(),
            ]
        );
        let counts = s.read_counts().unwrap();
        let got: Vec<(u32, usize, &str, u64, u64, u64)> = counts
            .iter()
            .map(|c| {
                (
                    c.cpu,
                    c.group,
                    c.event.as_str(),
                    c.value,
                    c.enabled,
                    c.running,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (0, 0, "cycles", 1000, 1000, 500),
                (0, 0, "instructions", 1010, 1000, 500),
                (0, 0, "cache-misses", 1020, 1000, 500),
                (1, 0, "cycles", 1030, 1000, 500),
                (1, 0, "cache-misses", 1040, 1000, 500),
                (0, 1, "page-faults", 1050, 1000, 500),
                (1, 1, "page-faults", 1060, 1000, 500),
            ]
        );
        sys.calls.borrow_mut().clear();
        drop(s);
        assert_eq!(
            *sys.calls.borrow(),
            ["disable 100", "disable 103", "disable 105", "disable 106"]
        );
    }

    #[test]
    fn a_sampling_group_read_for_the_maps_stands_in_for_its_read_of_the_counts() {
        let sys = FakeSys::new(vec![
            (0, PERF_TYPE_HARDWARE, 4 << 32),
            (1, PERF_TYPE_HARDWARE, 4 << 32),
            (0, PERF_TYPE_HARDWARE, 4 << 32 | 3),
            (1, PERF_TYPE_HARDWARE, 4 << 32 | 3),
        ]);
        let mut plan = Vec::new();
        for cpu in [0, 1] {
            plan.push(cycles(cpu));
            plan.push(hw(cpu, "cache-misses", 3, 0x2e, 0, 1));
            plan.push(sw(cpu, "page-faults", 2, 1, 0));
        }
        let s = Session::open(&sys, &plan, Rate::Frequency(999), false).unwrap();
        // ids: cpu0 cycles 100, cache-misses 101, page-faults 102; cpu1 103, 104,
        // 105. A value is ten times its id.
        let mut read = s.sampling_read(1).unwrap();
        assert_eq!(
            read.iter().map(|c| (c.cpu, c.value)).collect::<Vec<_>>(),
            [(1, 1030), (1, 1040)]
        );
        assert_eq!(
            values_by_position(&read)[..3],
            [Some(1030), Some(1040), None]
        );
        assert!(s.sampling_read(2).is_none(), "no group on CPU 2");
        // As if the counters moved on after the maps' read: CPU 1's sampling group
        // keeps the values the maps took; every other group is read now.
        for c in &mut read {
            c.value += 7;
        }
        let got: Vec<(u32, usize, u64)> = s
            .read_counts_reusing(&[read])
            .unwrap()
            .iter()
            .map(|c| (c.cpu, c.group, c.value))
            .collect();
        assert_eq!(
            got,
            [
                (0, 0, 1000),
                (0, 0, 1010),
                (0, 1, 1020),
                (1, 0, 1037),
                (1, 0, 1047),
                (1, 1, 1050),
            ]
        );
    }

    #[test]
    fn cpus_going_offline_together_are_each_closed_once() {
        let sys = FakeSys::default();
        let mut plan = Vec::new();
        for group in [0, 1] {
            for cpu in 0..3 {
                plan.push(sw(cpu, "page-faults", 2, group, 0));
            }
        }
        let mut s = Session::open(&sys, &plan, Rate::Frequency(999), false).unwrap();
        sys.offline.borrow_mut().extend([1, 2]);
        let notes = s.follow_online(&CpuList::parse("0").unwrap());
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("CPU 1 went offline"), "{notes:?}");
        assert!(notes[1].contains("CPU 2 went offline"), "{notes:?}");
        assert_eq!(s.offline_cpus(), [1, 2]);
        // Each closed CPU's two groups are kept once, not twice.
        assert_eq!(s.read_counts().unwrap().len(), 6);
    }

    #[test]
    fn a_cpu_going_offline_and_back_is_closed_reopened_and_keeps_its_counts() {
        let sys = FakeSys::new(vec![
            (0, PERF_TYPE_HARDWARE, 4 << 32),
            (1, PERF_TYPE_HARDWARE, 4 << 32),
            (0, PERF_TYPE_HARDWARE, 4 << 32 | 1),
            (1, PERF_TYPE_HARDWARE, 4 << 32 | 1),
        ]);
        let mut plan = Vec::new();
        for cpu in [0, 1] {
            plan.push(cycles(cpu));
            plan.push(hw(cpu, "instructions", 1, 0xc0, 0, 1));
        }
        for cpu in [0, 1] {
            plan.push(sw(cpu, "page-faults", 2, 1, 0));
        }
        let mut s = Session::open(&sys, &plan, Rate::Frequency(999), false).unwrap();
        let maps: Vec<File> = (0..=MAX_MEMBERS)
            .map(|_| File::open("/dev/null").unwrap())
            .collect();
        let map_fds: [BorrowedFd<'_>; MAX_MEMBERS + 1] = std::array::from_fn(|i| maps[i].as_fd());
        let prog = File::open("/dev/null").unwrap();
        s.attach(prog.as_fd(), map_fds).unwrap();
        s.enable().unwrap();
        let key = |c: &EventCount| (c.cpu, c.group, c.index, c.value, c.enabled);
        // ids: cpu0 cycles 100, instructions 101; cpu1 cycles 102, instructions 103;
        // page-faults 104 (cpu0), 105 (cpu1). A read gives id * 10.
        let before: Vec<_> = s.read_counts().unwrap().iter().map(key).collect();
        assert_eq!(
            before,
            [
                (0, 0, 0, 1000, 1000),
                (0, 0, 1, 1010, 1000),
                (1, 0, 0, 1020, 1000),
                (1, 0, 1, 1030, 1000),
                (0, 1, 0, 1040, 1000),
                (1, 1, 0, 1050, 1000),
            ]
        );
        let all = CpuList::parse("0-1").unwrap();
        assert!(s.follow_online(&all).is_empty(), "nothing changed");

        // CPU 1 goes down: the kernel detached its groups (a read gives the leader
        // only); its events are closed, its member slot emptied, its counts kept.
        sys.offline.borrow_mut().push(1);
        sys.calls.borrow_mut().clear();
        let notes = s.follow_online(&CpuList::parse("0").unwrap());
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("CPU 1 went offline"), "{notes:?}");
        // Our copies of the leader's and the member's map fds (the session keeps its
        // own).
        let calls = sys.calls.borrow().clone();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(
            calls
                .iter()
                .all(|c| c.starts_with("clear map fd") && c.ends_with("[1]"))
        );
        let l = calls[0]["clear map fd".len()..calls[0].len() - 3].to_owned();
        let m0 = calls[1]["clear map fd".len()..calls[1].len() - 3].to_owned();
        assert_ne!(l, m0);
        assert_eq!(s.offline_cpus(), [1]);
        assert!(s.groups().iter().all(|g| g.cpu == 0));
        let mut offline: Vec<_> = s.read_counts().unwrap().iter().map(key).collect();
        offline.sort_unstable();
        let mut sorted = before.clone();
        sorted.sort_unstable();
        assert_eq!(offline, sorted, "counts of the offline CPU are kept");

        // Still down although listed online (a race): it is tried again later.
        let notes = s.follow_online(&all);
        assert!(notes[0].contains("cannot be opened yet"), "{notes:?}");
        assert_eq!(s.offline_cpus(), [1]);

        // Back: opened (new ids 106-108), attached, enabled; counts continue.
        sys.offline.borrow_mut().clear();
        sys.calls.borrow_mut().clear();
        let notes = s.follow_online(&all);
        assert!(notes[0].contains("CPU 1 is back online"), "{notes:?}");
        assert!(s.offline_cpus().is_empty());
        let calls = sys.calls.borrow().clone();
        for want in [
            "set_bpf 106".to_owned(),
            format!("map fd{l}[1] = 106"),
            format!("map fd{m0}[1] = 107"),
            "enable 106".to_owned(),
            "enable 108".to_owned(),
        ] {
            assert!(calls.contains(&want), "{want} in {calls:?}");
        }
        let after: Vec<_> = s.read_counts().unwrap().iter().map(key).collect();
        assert_eq!(
            after,
            [
                (0, 0, 0, 1000, 1000),
                (0, 0, 1, 1010, 1000),
                (1, 0, 0, 1020 + 1060, 2000),
                (1, 0, 1, 1030 + 1070, 2000),
                (0, 1, 0, 1040, 1000),
                (1, 1, 0, 1050 + 1080, 2000),
            ]
        );
        // Down and back again: the carried counts add up.
        sys.offline.borrow_mut().push(1);
        s.follow_online(&CpuList::parse("0").unwrap());
        sys.offline.borrow_mut().clear();
        s.follow_online(&all);
        let again = s.read_counts().unwrap();
        let cycles1 = again
            .iter()
            .find(|c| (c.cpu, c.group, c.index) == (1, 0, 0));
        assert_eq!(cycles1.unwrap().value, 1020 + 1060 + 1090);
    }

    #[test]
    fn permission_errors_stop_the_chain() {
        let sys = FakeSys {
            software_errno: Some(libc::EACCES),
            ..FakeSys::default()
        };
        let err = Session::open(&sys, &[cycles(0)], Rate::Frequency(99), true)
            .err()
            .unwrap();
        assert!(matches!(err, Error::PerfPermission { cpu: 0, .. }), "{err}");
        assert!(err.to_string().contains("perf_event_paranoid"));
    }

    #[test]
    fn a_pmu_that_cannot_exclude_guests_is_opened_without_the_bits() {
        let sys = FakeSys {
            no_exclude: true,
            ..FakeSys::default()
        };
        let clock = PlannedEvent::cpu_clock(0);
        assert!(clock.exclude_guest, "perf's default");
        let s = Session::open(&sys, &[clock], Rate::Frequency(99), false).unwrap();
        assert_eq!(s.groups().len(), 1);
        assert_eq!(
            opened_calls(&sys),
            ["open cpu0 1:0x0", "open cpu0 1:0x0 +guest"]
        );
    }

    #[test]
    fn einval_hints_at_frequency_and_counting_only_pmus() {
        let sys = FakeSys {
            software_errno: Some(libc::EINVAL),
            ..FakeSys::default()
        };
        let err = Session::open(
            &sys,
            &[PlannedEvent::cpu_clock(0)],
            Rate::Frequency(99),
            false,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("--frequency"), "{err}");
        assert!(err.to_string().contains("counting-only"), "{err}");
    }

    #[test]
    fn source_of_cpu_events() {
        assert_eq!(Source::of([(true, false), (true, false)]), Source::Hardware);
        assert_eq!(Source::of([(false, true)]), Source::SoftwareFallback);
        assert_eq!(Source::of([(false, false)]), Source::Software);
        assert_eq!(Source::of([(true, false), (false, true)]), Source::Mixed);
        assert_eq!(
            serde_json::to_string(&Source::SoftwareFallback).unwrap(),
            "\"software-fallback\""
        );
    }

    #[test]
    fn fallback_errors() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert!(is_unsupported_error(&e(libc::ENOENT)));
        assert!(is_unsupported_error(&e(libc::EOPNOTSUPP)));
        assert!(!is_unsupported_error(&e(libc::EACCES)));
        assert!(!is_unsupported_error(&e(libc::EINVAL)));
        assert!(!is_unsupported_error(&io::Error::other("x")));
    }
}
