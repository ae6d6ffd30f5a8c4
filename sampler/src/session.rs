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
    event::{SamplingEvent, Source, is_unsupported_error},
    sys::PerfSys,
};

/// The event opened on one CPU.
#[derive(Debug)]
pub struct CpuEvent {
    pub cpu: u32,
    pub event: SamplingEvent,
    /// Why the hardware event could not be used, when this CPU fell back.
    pub fallback_reason: Option<io::Error>,
    fd: OwnedFd,
}

/// The open events of one run.
pub struct Session<'s> {
    sys: &'s dyn PerfSys,
    events: Vec<CpuEvent>,
    enabled: bool,
}

impl<'s> Session<'s> {
    /// Opens a disabled sampling event at `freq_hz` on every CPU of `cpus`: hardware
    /// cycles, or `cpu-clock` on CPUs whose PMU has no cycles event.
    pub fn open(sys: &'s dyn PerfSys, cpus: &CpuList, freq_hz: u64) -> Result<Self, Error> {
        let mut events = Vec::with_capacity(cpus.len());
        for cpu in cpus.iter() {
            let cycles = SamplingEvent::Cycles;
            let opened = match sys.perf_event_open(&cycles.sampling_attr(freq_hz), -1, cpu as i32) {
                Ok(fd) => CpuEvent {
                    cpu,
                    event: cycles,
                    fallback_reason: None,
                    fd,
                },
                Err(err) if is_unsupported_error(&err) => {
                    let clock = SamplingEvent::CpuClock;
                    let fd = sys
                        .perf_event_open(&clock.sampling_attr(freq_hz), -1, cpu as i32)
                        .map_err(|e| open_error(clock, cpu, e))?;
                    CpuEvent {
                        cpu,
                        event: clock,
                        fallback_reason: Some(err),
                        fd,
                    }
                }
                Err(err) => return Err(open_error(cycles, cpu, err)),
            };
            events.push(opened);
        }
        Ok(Self {
            sys,
            events,
            enabled: false,
        })
    }

    /// Runs `prog` on every sample of every CPU's event.
    pub fn attach(&self, prog: BorrowedFd<'_>) -> Result<(), Error> {
        for e in &self.events {
            self.sys
                .set_bpf(e.fd.as_fd(), prog)
                .map_err(|source| Error::PerfIoctl {
                    what: "attach the BPF program to",
                    cpu: e.cpu,
                    source,
                })?;
        }
        Ok(())
    }

    pub fn enable(&mut self) -> Result<(), Error> {
        for e in &self.events {
            self.sys
                .enable(e.fd.as_fd())
                .map_err(|source| Error::PerfIoctl {
                    what: "enable",
                    cpu: e.cpu,
                    source,
                })?;
            self.enabled = true;
        }
        Ok(())
    }

    pub fn disable(&mut self) -> Result<(), Error> {
        for e in &self.events {
            self.sys
                .disable(e.fd.as_fd())
                .map_err(|source| Error::PerfIoctl {
                    what: "disable",
                    cpu: e.cpu,
                    source,
                })?;
        }
        self.enabled = false;
        Ok(())
    }

    pub fn events(&self) -> &[CpuEvent] {
        &self.events
    }

    pub fn source(&self) -> Source {
        Source::of(self.events.iter().map(|e| e.event))
    }

    /// One line for stderr when some CPUs fell back to `cpu-clock`, naming them and why.
    pub fn fallback_notice(&self) -> Option<String> {
        let fell_back: Vec<&CpuEvent> = self
            .events
            .iter()
            .filter(|e| e.fallback_reason.is_some())
            .collect();
        let first = fell_back.first()?;
        let cpus = CpuList::from_cpus(fell_back.iter().map(|e| e.cpu).collect());
        let reason = first
            .fallback_reason
            .as_ref()
            .map(crate::sys::errno_name)
            .unwrap_or_default();
        Some(format!(
            "sampler: no hardware PMU event `cycles` on CPU {cpus} ({reason}): this machine \
             (e.g. a VM) exposes no hardware PMU there; sampling the software event \
             `cpu-clock` instead"
        ))
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

fn open_error(event: SamplingEvent, cpu: u32, source: io::Error) -> Error {
    let event = event.name();
    match source.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => Error::PerfPermission { event, cpu, source },
        errno => Error::PerfOpen {
            event,
            cpu,
            source,
            hint: match errno {
                Some(libc::EINVAL) => {
                    " (the kernel rejected the event's settings: try a lower --frequency)"
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

    use perf_event_open_sys::bindings::{PERF_TYPE_HARDWARE, perf_event_attr};

    use super::*;

    /// A kernel without a hardware PMU on some CPUs; records every call.
    struct FakeSys {
        no_pmu_cpus: Vec<u32>,
        software_errno: Option<i32>,
        calls: RefCell<Vec<String>>,
    }

    impl FakeSys {
        fn fd() -> OwnedFd {
            File::open("/dev/null").unwrap().into()
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
            let hw = attr.type_ == PERF_TYPE_HARDWARE;
            self.calls
                .borrow_mut()
                .push(format!("open {} cpu{cpu}", if hw { "hw" } else { "sw" }));
            if hw && self.no_pmu_cpus.contains(&(cpu as u32)) {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            if !hw && let Some(errno) = self.software_errno {
                return Err(io::Error::from_raw_os_error(errno));
            }
            Ok(Self::fd())
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

    fn fake(no_pmu_cpus: Vec<u32>) -> FakeSys {
        FakeSys {
            no_pmu_cpus,
            software_errno: None,
            calls: RefCell::new(Vec::new()),
        }
    }

    #[test]
    fn hardware_everywhere() {
        let sys = fake(vec![]);
        let s = Session::open(&sys, &CpuList::from_cpus(vec![0, 1]), 999).unwrap();
        assert_eq!(s.source(), Source::Hardware);
        assert!(s.fallback_notice().is_none());
        assert_eq!(*sys.calls.borrow(), ["open hw cpu0", "open hw cpu1"]);
    }

    #[test]
    fn falls_back_per_cpu_on_enoent() {
        let sys = fake(vec![1, 2]);
        let s = Session::open(&sys, &CpuList::from_cpus(vec![0, 1, 2]), 999).unwrap();
        assert_eq!(s.source(), Source::Mixed);
        let events: Vec<_> = s.events().iter().map(|e| (e.cpu, e.event)).collect();
        assert_eq!(
            events,
            [
                (0, SamplingEvent::Cycles),
                (1, SamplingEvent::CpuClock),
                (2, SamplingEvent::CpuClock)
            ]
        );
        let notice = s.fallback_notice().unwrap();
        assert!(notice.contains("CPU 1-2 (ENOENT)"), "{notice}");
        assert!(notice.contains("cpu-clock"), "{notice}");
        assert!(!notice.contains('\n'));
    }

    #[test]
    fn enable_disable_and_drop() {
        let sys = fake(vec![0]);
        {
            let mut s = Session::open(&sys, &CpuList::from_cpus(vec![0]), 99).unwrap();
            assert_eq!(s.source(), Source::SoftwareFallback);
            let devnull = File::open("/dev/null").unwrap();
            s.attach(devnull.as_fd()).unwrap();
            s.enable().unwrap();
        }
        assert_eq!(
            *sys.calls.borrow(),
            [
                "open hw cpu0",
                "open sw cpu0",
                "set_bpf",
                "enable",
                "disable"
            ]
        );
    }

    #[test]
    fn permission_errors_are_not_fallen_back_from() {
        let sys = FakeSys {
            no_pmu_cpus: vec![0],
            software_errno: Some(libc::EACCES),
            calls: RefCell::new(Vec::new()),
        };
        let err = Session::open(&sys, &CpuList::from_cpus(vec![0]), 99)
            .err()
            .unwrap();
        assert!(matches!(err, Error::PerfPermission { cpu: 0, .. }), "{err}");
        assert!(err.to_string().contains("perf_event_paranoid"));
    }

    #[test]
    fn einval_hints_at_frequency() {
        let sys = FakeSys {
            no_pmu_cpus: vec![0],
            software_errno: Some(libc::EINVAL),
            calls: RefCell::new(Vec::new()),
        };
        let err = Session::open(&sys, &CpuList::from_cpus(vec![0]), 99)
            .err()
            .unwrap();
        assert!(err.to_string().contains("--frequency"), "{err}");
    }
}
