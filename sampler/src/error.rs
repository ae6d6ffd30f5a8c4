//! sampler's errors: each says what went wrong and what to do about it, in one line
//! (the verifier's log, when there is one, follows on the lines after).

use std::{io, path::PathBuf};

use crate::cpus::{CpuList, CpuListError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid --cpu list `{input}`: {source}")]
    CpuListArg {
        input: String,
        #[source]
        source: CpuListError,
    },

    #[error("CPU {cpu} is not online (online CPUs: {online}); pick CPUs from that list")]
    CpuNotOnline { cpu: u32, online: CpuList },

    #[error("invalid CPU list in {path}: {source}", path = path.display())]
    SysfsCpuList {
        path: PathBuf,
        #[source]
        source: CpuListError,
    },

    #[error("--frequency must be at least 1 Hz (got {0}); perf's default is 4000, sampler's 999")]
    FrequencyZero(u64),

    #[error(
        "--frequency {hz} Hz is above the kernel's limit kernel.perf_event_max_sample_rate = \
         {max}; use --frequency {max} or less, or raise the limit with \
         `sysctl -w kernel.perf_event_max_sample_rate={hz}`"
    )]
    FrequencyTooHigh { hz: u64, max: u64 },

    #[error(
        "--frequency {hz} Hz is beyond what any kernel takes (at most 2147483647); the \
         limit here is kernel.perf_event_max_sample_rate = {max}: use --frequency {max} or less"
    )]
    FrequencyAbsurd { hz: u64, max: u64 },

    #[error("--{flag} must be a positive number of seconds from 0.001 up to {max} (got `{value}`)")]
    BadSeconds {
        flag: &'static str,
        value: String,
        max: u64,
    },

    #[error(
        "sampler needs {missing} to load BPF programs and open system-wide perf events: \
         run it as root (`sudo sampler ...`) or grant {missing} \
         (e.g. `setcap cap_bpf,cap_perfmon+ep sampler`)",
        missing = missing.join(" and ")
    )]
    Privileges { missing: Vec<&'static str> },

    #[error(
        "permission denied opening `{event}` on CPU {cpu} ({source}): run as root or with \
         CAP_PERFMON, or lower kernel.perf_event_paranoid"
    )]
    PerfPermission {
        event: String,
        cpu: u32,
        #[source]
        source: io::Error,
    },

    #[error("cannot open `{event}` on CPU {cpu}: {source}{hint}")]
    PerfOpen {
        event: String,
        cpu: u32,
        #[source]
        source: io::Error,
        hint: &'static str,
    },

    #[error(
        "`{event}` cannot be opened on any selected CPU ({cpus}): the kernel answers \
         {reason}; `sampler plan -e EVENT` shows what was tried"
    )]
    NotSupported {
        event: String,
        cpus: CpuList,
        reason: String,
    },

    #[error("invalid -e/--event: {0}")]
    Event(#[from] crate::event::ParseError),

    #[error("{0}")]
    Plan(#[from] crate::plan::PlanError),

    #[error(
        "cross-check failed: {failed} of {total} values differ by more than {tolerance} % \
         (see the rows above; --tolerance sets the limit)"
    )]
    CheckFailed {
        failed: usize,
        total: usize,
        tolerance: f64,
    },

    #[error("--tolerance must be a percentage above 0 (got `{0}`)")]
    BadTolerance(String),

    #[error("--latency needs at least 1 read per batch (e.g. `--latency 100000`)")]
    BadLatency,

    #[error("--period must be at least 1 event per sample")]
    PeriodZero,

    #[error("--kernel `{0}` is not a kernel release such as 6.1 or 6.12.3")]
    BadKernel(String),

    #[error("cannot {what} the sampling event on CPU {cpu}: {source}")]
    PerfIoctl {
        what: &'static str,
        cpu: u32,
        #[source]
        source: io::Error,
    },

    #[error(
        "the kernel's BPF verifier rejected program `{program}` ({source}); this is a bug \
         in sampler or a kernel it does not support yet, please report it with this \
         output. Verifier log (last lines):\n{log_tail}"
    )]
    Verifier {
        program: &'static str,
        #[source]
        source: io::Error,
        log_tail: String,
    },

    #[error("cannot load the BPF programs: {0}")]
    BpfLoad(String),

    #[error("cannot read BPF map {map}: {source}")]
    MapRead {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },

    #[error("cannot {what} {path}: {source}", path = path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "cannot listen on {addr} ({source}); --listen sets another address, e.g. 127.0.0.1:9465"
    )]
    Listen {
        addr: String,
        #[source]
        source: io::Error,
    },

    #[error("--listen `{0}` is not an address and port such as 127.0.0.1:9464 or [::1]:9464")]
    BadListen(String),

    #[error("--top must be at least 1 series")]
    TopZero,

    #[error(
        "--map-entries {got} is out of range: the task map needs at least one entry per \
         possible CPU ({min}) and at most {max} (about 200 bytes of kernel memory each)"
    )]
    MapEntries { got: u32, min: u32, max: u32 },

    #[error("{0}")]
    Runtime(#[from] io::Error),
}

/// Text read from outside (a sysfs file, a user's argument) for quoting in a message:
/// at most `max` characters, then how much more there was, so a hostile file cannot
/// flood the terminal or a log.
pub fn clip(s: &str, max: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((cut, _)) => format!("{}… ({} bytes in all)", &s[..cut], s.len()),
    }
}

impl Error {
    /// The tail of a verifier log, at most `lines` lines: enough to see the rejected
    /// instruction and the reason without flooding the terminal.
    pub fn log_tail(log: &str, lines: usize) -> String {
        let all: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_problem_and_the_fix() {
        let e = Error::FrequencyTooHigh {
            hz: 1_000_000,
            max: 100_000,
        };
        let s = e.to_string();
        assert!(s.contains("1000000 Hz"), "{s}");
        assert!(s.contains("perf_event_max_sample_rate = 100000"), "{s}");
        assert!(s.contains("sysctl -w"), "{s}");

        let e = Error::Privileges {
            missing: vec!["CAP_BPF", "CAP_PERFMON"],
        };
        let s = e.to_string();
        assert!(s.contains("CAP_BPF and CAP_PERFMON"), "{s}");
        assert!(s.contains("sudo"), "{s}");
        assert!(!s.contains('\n'));

        let e = Error::CpuNotOnline {
            cpu: 7,
            online: CpuList::from_cpus(vec![0, 1]),
        };
        assert_eq!(
            e.to_string(),
            "CPU 7 is not online (online CPUs: 0-1); pick CPUs from that list"
        );
    }

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text() {
        assert_eq!(clip(" config:0-7\n", 80), "config:0-7");
        let long = "a".repeat(100_000);
        let c = clip(&long, 80);
        assert!(c.starts_with(&"a".repeat(80)) && c.ends_with("(100000 bytes in all)"));
        assert!(c.len() < 120);
        // Never splits a character.
        assert_eq!(clip("ééé", 2), "éé… (6 bytes in all)");
    }

    #[test]
    fn log_tail_keeps_last_non_empty_lines() {
        let log = "a\nb\n\nc\nd\n\n";
        assert_eq!(Error::log_tail(log, 2), "c\nd");
        assert_eq!(Error::log_tail(log, 10), "a\nb\nc\nd");
        assert_eq!(Error::log_tail("", 3), "");
    }
}
