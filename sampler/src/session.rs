//! Opens the sampling event on every selected CPU, attaches the BPF program to each,
//! and owns the file descriptors: dropping a [`Session`] disables and closes them all,
//! which also detaches the program.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use crate::{
    Error,
    cpus::CpuList,
    plan::{Encoding, PlannedEvent},
    sys::{PerfSys, errno_name},
};

/// The event opened on one CPU.
#[derive(Debug)]
pub struct CpuEvent {
    pub cpu: u32,
    pub event: String,
    pub pmu: Option<String>,
    /// The encoding of the plan's chain the kernel accepted.
    pub encoding: Encoding,
    pub hardware: bool,
    /// Why the planned event could not be used, when this CPU fell back to cpu-clock.
    pub fallback_reason: Option<io::Error>,
    fd: OwnedFd,
}

/// A CPU on which the planned event could not be opened at all.
#[derive(Debug)]
pub struct Skipped {
    pub cpu: u32,
    pub event: String,
    pub reason: io::Error,
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
    events: Vec<CpuEvent>,
    skipped: Vec<Skipped>,
    enabled: bool,
}

impl<'s> Session<'s> {
    /// Opens each planned sampling event (one per CPU), disabled, at `freq_hz`,
    /// trying the plan's encodings in order. Where none is supported, the CPU samples
    /// `cpu-clock` instead when `cpu_clock_fallback` (perf's rule for `cycles`), else
    /// it is skipped and reported; it is an error only when no CPU could be opened.
    pub fn open(
        sys: &'s dyn PerfSys,
        planned: &[PlannedEvent],
        freq_hz: u64,
        cpu_clock_fallback: bool,
    ) -> Result<Self, Error> {
        let mut events = Vec::with_capacity(planned.len());
        let mut skipped = Vec::new();
        for p in planned {
            match open_chain(sys, p, freq_hz)? {
                Ok((fd, encoding)) => events.push(CpuEvent {
                    cpu: p.cpu,
                    event: p.event.clone(),
                    pmu: p.pmu.clone(),
                    encoding,
                    hardware: p.hardware,
                    fallback_reason: None,
                    fd,
                }),
                Err(reason) if cpu_clock_fallback => {
                    let clock = PlannedEvent::cpu_clock(p.cpu);
                    let (fd, encoding) = open_chain(sys, &clock, freq_hz)?
                        .map_err(|e| open_error(&clock.event, clock.cpu, e))?;
                    events.push(CpuEvent {
                        cpu: p.cpu,
                        event: clock.event,
                        pmu: clock.pmu,
                        encoding,
                        hardware: false,
                        fallback_reason: Some(reason),
                        fd,
                    });
                }
                Err(reason) => skipped.push(Skipped {
                    cpu: p.cpu,
                    event: p.event.clone(),
                    reason,
                }),
            }
        }
        if events.is_empty()
            && let Some(first) = skipped.first()
        {
            return Err(Error::NotSupported {
                event: first.event.clone(),
                cpus: CpuList::from_cpus(skipped.iter().map(|s| s.cpu).collect()),
                reason: errno_name(&first.reason),
            });
        }
        Ok(Self {
            sys,
            events,
            skipped,
            enabled: false,
        })
    }

    /// Runs `prog` on every sample of every CPU's event.
    pub fn attach(&self, prog: BorrowedFd<'_>) -> Result<(), Error> {
        self.each("attach the BPF program to", |sys, fd| sys.set_bpf(fd, prog))
    }

    pub fn enable(&mut self) -> Result<(), Error> {
        // Marked first: a failure half-way leaves some CPUs enabled, for Drop to undo.
        self.enabled = true;
        self.each("enable", |sys, fd| sys.enable(fd))
    }

    pub fn disable(&mut self) -> Result<(), Error> {
        self.each("disable", |sys, fd| sys.disable(fd))?;
        self.enabled = false;
        Ok(())
    }

    /// Applies one ioctl to every CPU's event; the error names the step and the CPU.
    fn each(
        &self,
        what: &'static str,
        op: impl Fn(&dyn PerfSys, BorrowedFd<'_>) -> io::Result<()>,
    ) -> Result<(), Error> {
        for e in &self.events {
            op(self.sys, e.fd.as_fd()).map_err(|source| Error::PerfIoctl {
                what,
                cpu: e.cpu,
                source,
            })?;
        }
        Ok(())
    }

    pub fn events(&self) -> &[CpuEvent] {
        &self.events
    }

    pub fn source(&self) -> Source {
        Source::of(
            self.events
                .iter()
                .map(|e| (e.hardware, e.fallback_reason.is_some())),
        )
    }

    /// Lines for stderr: CPUs that fell back to `cpu-clock`, CPUs skipped, each with
    /// the CPUs and the kernel's reason.
    pub fn notices(&self) -> Vec<String> {
        let mut out = Vec::new();
        let fell_back: Vec<&CpuEvent> = self
            .events
            .iter()
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
        if let Some(first) = self.skipped.first() {
            let cpus = CpuList::from_cpus(self.skipped.iter().map(|s| s.cpu).collect());
            out.push(format!(
                "sampler: `{}` is not supported on CPU {cpus} ({}): not sampled there",
                first.event,
                errno_name(&first.reason)
            ));
        }
        out
    }
}

/// Tries `p`'s encodings in order. `Ok(Err(e))`: none is supported (last error);
/// `Err`: a failure that is not "unsupported" (permissions, limits).
fn open_chain(
    sys: &dyn PerfSys,
    p: &PlannedEvent,
    freq_hz: u64,
) -> Result<Result<(OwnedFd, Encoding), io::Error>, Error> {
    let mut last = io::Error::from_raw_os_error(libc::ENOENT);
    for enc in p.encodings() {
        match sys.perf_event_open(&p.sampling_attr(enc, freq_hz), -1, p.cpu as i32) {
            Ok(fd) => return Ok(Ok((fd, enc.encoding))),
            Err(e) if is_unsupported_error(&e) => last = e,
            Err(e) => return Err(open_error(&p.event, p.cpu, e)),
        }
    }
    Ok(Err(last))
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

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, fs::File};

    use perf_event_open_sys::bindings::{PERF_TYPE_HARDWARE, PERF_TYPE_SOFTWARE, perf_event_attr};

    use super::*;
    use crate::plan::Attr;

    /// A kernel that accepts the (type, config) pairs listed per CPU (software events
    /// everywhere unless `software_errno`), and records every call.
    struct FakeSys {
        accepts: Vec<(u32, u32, u64)>,
        software_errno: Option<i32>,
        calls: RefCell<Vec<String>>,
    }

    impl FakeSys {
        fn new(accepts: Vec<(u32, u32, u64)>) -> Self {
            Self {
                accepts,
                software_errno: None,
                calls: RefCell::new(Vec::new()),
            }
        }
    }

    impl PerfSys for FakeSys {
        fn perf_event_open(
            &self,
            attr: &perf_event_attr,
            pid: i32,
            cpu: i32,
        ) -> io::Result<OwnedFd> {
            assert_eq!(pid, -1, "system-wide events only");
            assert_eq!(attr.disabled(), 1, "opened disabled");
            self.calls
                .borrow_mut()
                .push(format!("open cpu{cpu} {}:{:#x}", attr.type_, attr.config));
            let ok = if attr.type_ == PERF_TYPE_SOFTWARE {
                match self.software_errno {
                    Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
                    None => true,
                }
            } else {
                self.accepts
                    .contains(&(cpu as u32, attr.type_, attr.config))
            };
            if ok {
                Ok(File::open("/dev/null").unwrap().into())
            } else {
                Err(io::Error::from_raw_os_error(libc::ENOENT))
            }
        }
        fn set_bpf(&self, _: BorrowedFd<'_>, _: BorrowedFd<'_>) -> io::Result<()> {
            self.calls.borrow_mut().push("set_bpf".into());
            Ok(())
        }
        fn enable(&self, _: BorrowedFd<'_>) -> io::Result<()> {
            self.calls.borrow_mut().push("enable".into());
            Ok(())
        }
        fn disable(&self, _: BorrowedFd<'_>) -> io::Result<()> {
            self.calls.borrow_mut().push("disable".into());
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

    /// `cycles` on a hybrid CPU: extended, then the PMU's alias, then legacy.
    fn cycles(cpu: u32) -> PlannedEvent {
        let mut p = PlannedEvent::cpu_clock(cpu);
        p.event = "cycles".into();
        p.pmu = Some("cpu_core".into());
        p.hardware = true;
        p.attr = a(Encoding::Extended, PERF_TYPE_HARDWARE, 4 << 32);
        p.fallbacks = vec![
            a(Encoding::PmuAlias, 4, 0x3c),
            a(Encoding::Legacy, PERF_TYPE_HARDWARE, 0),
        ];
        p
    }

    #[test]
    fn walks_the_encoding_chain_per_cpu() {
        // CPU 0: extended works; CPU 1: only the alias; CPU 2: only legacy.
        let sys = FakeSys::new(vec![
            (0, PERF_TYPE_HARDWARE, 4 << 32),
            (1, 4, 0x3c),
            (2, PERF_TYPE_HARDWARE, 0),
        ]);
        let s = Session::open(&sys, &[cycles(0), cycles(1), cycles(2)], 999, true).unwrap();
        let got: Vec<_> = s.events().iter().map(|e| (e.cpu, e.encoding)).collect();
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
            *sys.calls.borrow(),
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
        let s = Session::open(&sys, &[cycles(0), cycles(1), cycles(2)], 999, true).unwrap();
        assert_eq!(s.source(), Source::Mixed);
        let events: Vec<_> = s
            .events()
            .iter()
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
        let s = Session::open(&sys, &[cycles(0), cycles(1)], 99, false).unwrap();
        assert_eq!(s.events().len(), 1);
        assert_eq!(s.events()[0].cpu, 1);
        let n = s.notices();
        assert_eq!(
            n,
            ["sampler: `cycles` is not supported on CPU 0 (ENOENT): not sampled there"]
        );
        // Nowhere supported: an error naming the event and CPUs.
        let sys = FakeSys::new(vec![]);
        let err = Session::open(&sys, &[cycles(0), cycles(1)], 99, false)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "`cycles` cannot be opened on any selected CPU (0-1): the kernel answers ENOENT; \
             `sampler plan -e EVENT` shows what was tried"
        );
    }

    #[test]
    fn enable_disable_and_drop() {
        let sys = FakeSys::new(vec![]);
        {
            let mut s = Session::open(&sys, &[cycles(0)], 99, true).unwrap();
            assert_eq!(s.source(), Source::SoftwareFallback);
            let devnull = File::open("/dev/null").unwrap();
            s.attach(devnull.as_fd()).unwrap();
            s.enable().unwrap();
            sys.calls.borrow_mut().clear();
        }
        assert_eq!(*sys.calls.borrow(), ["disable"]);
    }

    #[test]
    fn permission_errors_stop_the_chain() {
        let sys = FakeSys {
            software_errno: Some(libc::EACCES),
            ..FakeSys::new(vec![])
        };
        let err = Session::open(&sys, &[cycles(0)], 99, true).err().unwrap();
        assert!(matches!(err, Error::PerfPermission { cpu: 0, .. }), "{err}");
        assert!(err.to_string().contains("perf_event_paranoid"));
    }

    #[test]
    fn einval_hints_at_frequency() {
        let sys = FakeSys {
            software_errno: Some(libc::EINVAL),
            ..FakeSys::new(vec![])
        };
        let err = Session::open(&sys, &[PlannedEvent::cpu_clock(0)], 99, false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("--frequency"), "{err}");
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
