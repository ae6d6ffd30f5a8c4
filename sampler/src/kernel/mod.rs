//! Kernel: everything that opens, attaches, loads and reads, through `sys`.
//!
//! - `session`: opens the plan per CPU as perf event groups along each event's
//!   encoding chain, attaches the BPF program to the sampling leaders, enables,
//!   follows CPU hotplug, reads the groups; owns the file descriptors.
//! - `bpf`: loads the embedded BPF object (`sampler-ebpf`, which aggregates each
//!   sample per task in the maps), reads its maps and its run-time statistics.
//! - `counter`: decoding group reads and the multiplexing arithmetic (pure).
//! - `userpage`: counter reads from user space through the mmapped
//!   `perf_event_mmap_page` (`rdpmc` on x86, `mrs` on arm64), with `read()` beside.
//!
//! Uses: `sys`, `discover`, `events`.

use std::io;

use crate::discover::cpus::CpuList;

pub mod bpf;
pub mod counter;
pub mod loc_sums;
pub mod session;
pub mod userpage;

/// What opening, attaching, loading and reading can fail on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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

    #[error(
        "--map-entries {got} is out of range: the task map needs at least one entry per \
         possible CPU ({min}) and at most {max} (about 200 bytes of kernel memory each)"
    )]
    MapEntries { got: u32, min: u32, max: u32 },

    #[error("{0}")]
    Runtime(#[from] io::Error),
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
    fn log_tail_keeps_last_non_empty_lines() {
        let log = "a\nb\n\nc\nd\n\n";
        assert_eq!(Error::log_tail(log, 2), "c\nd");
        assert_eq!(Error::log_tail(log, 10), "a\nb\nc\nd");
        assert_eq!(Error::log_tail("", 3), "");
    }
}
