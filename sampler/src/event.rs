//! The event that drives sampling and its `perf_event_attr` encoding.
//!
//! Hardware `cycles` where the CPU's PMU offers it, the software `cpu-clock` where it
//! does not (most VMs): the same fall-back perf makes, on the same errors.

use perf_event_open_sys::bindings::{
    PERF_COUNT_HW_CPU_CYCLES, PERF_COUNT_SW_CPU_CLOCK, PERF_TYPE_HARDWARE, PERF_TYPE_SOFTWARE,
    perf_event_attr,
};

/// The sampling (leader) event opened on each CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingEvent {
    /// `PERF_TYPE_HARDWARE` / `PERF_COUNT_HW_CPU_CYCLES`.
    #[doc(alias = "PERF_COUNT_HW_CPU_CYCLES")]
    Cycles,
    /// `PERF_TYPE_SOFTWARE` / `PERF_COUNT_SW_CPU_CLOCK`: an hrtimer, always available.
    #[doc(alias = "PERF_COUNT_SW_CPU_CLOCK")]
    CpuClock,
}

impl SamplingEvent {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cycles => "cycles",
            Self::CpuClock => "cpu-clock",
        }
    }

    pub fn is_hardware(self) -> bool {
        matches!(self, Self::Cycles)
    }

    /// The attr of a disabled, per-CPU, frequency-mode sampling event at `freq_hz`.
    pub fn sampling_attr(self, freq_hz: u64) -> perf_event_attr {
        let mut attr = perf_event_attr::default();
        let (type_, config) = match self {
            Self::Cycles => (PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES),
            Self::CpuClock => (PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK),
        };
        attr.type_ = type_;
        attr.config = u64::from(config);
        attr.size = size_of::<perf_event_attr>() as u32;
        attr.sample_freq = freq_hz;
        attr.set_freq(1);
        // Opened disabled: enabled only once the BPF program is attached on every CPU.
        attr.set_disabled(1);
        attr
    }
}

/// Whether an open error of a hardware event means "this PMU has no such event", the
/// cases in which perf falls back to `cpu-clock` (`evsel__fallback`): ENOENT (no PMU or
/// no such event), ENXIO and ENODEV (no device), EOPNOTSUPP (a PMU without sampling
/// interrupts).
pub fn is_unsupported_error(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOENT | libc::ENXIO | libc::ENODEV | libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_encode_type_config_and_frequency() {
        let a = SamplingEvent::Cycles.sampling_attr(999);
        assert_eq!(a.type_, PERF_TYPE_HARDWARE);
        assert_eq!(a.config, 0);
        assert_eq!(a.freq(), 1);
        assert_eq!(a.disabled(), 1);
        assert_eq!(a.sample_freq, 999);
        let s = SamplingEvent::CpuClock.sampling_attr(4000);
        assert_eq!(s.type_, PERF_TYPE_SOFTWARE);
        assert_eq!(s.config, u64::from(PERF_COUNT_SW_CPU_CLOCK));
        assert_eq!(s.sample_freq, 4000);
    }

    #[test]
    fn fallback_errors() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert!(is_unsupported_error(&e(libc::ENOENT)));
        assert!(is_unsupported_error(&e(libc::EOPNOTSUPP)));
        assert!(!is_unsupported_error(&e(libc::EACCES)));
        assert!(!is_unsupported_error(&e(libc::EINVAL)));
        assert!(!is_unsupported_error(&std::io::Error::other("x")));
    }
}

/// Where the samples of a run come from, as reported to users (`"source"` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Every CPU samples a hardware PMU event.
    Hardware,
    /// No CPU has a hardware PMU event; every CPU samples `cpu-clock`.
    SoftwareFallback,
    /// Some CPUs sample hardware events, others fell back to `cpu-clock`.
    Mixed,
}

impl Source {
    /// The source of a run whose CPUs sample `events`.
    pub fn of(events: impl IntoIterator<Item = SamplingEvent>) -> Self {
        let (mut hw, mut sw) = (false, false);
        for e in events {
            if e.is_hardware() {
                hw = true;
            } else {
                sw = true;
            }
        }
        match (hw, sw) {
            (true, false) => Self::Hardware,
            (true, true) => Self::Mixed,
            (false, _) => Self::SoftwareFallback,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hardware => "hardware",
            Self::SoftwareFallback => "software-fallback",
            Self::Mixed => "mixed",
        }
    }
}

#[cfg(test)]
mod source_tests {
    use super::{SamplingEvent::*, *};

    #[test]
    fn source_of_cpu_events() {
        assert_eq!(Source::of([Cycles, Cycles]), Source::Hardware);
        assert_eq!(Source::of([CpuClock, CpuClock]), Source::SoftwareFallback);
        assert_eq!(Source::of([Cycles, CpuClock]), Source::Mixed);
        assert_eq!(
            serde_json::to_string(&Source::SoftwareFallback).unwrap(),
            "\"software-fallback\""
        );
    }
}
