//! Discover: what this machine (or a recorded sysfs tree) has. The PMUs and the CPUs
//! each covers (`pmu`), CPU lists (`cpus`), the kernel's BTF offsets the BPF program
//! needs (`btf`), and the cgroup v2 hierarchy that names cgroup ids (`cgroup`).
//!
//! Uses: `sys` (bounded sysfs reads). Pure parsing otherwise, tested on the recorded
//! trees in `tests/data/sysfs`.

use std::{io, path::PathBuf};

pub mod btf;
pub mod cgroup;
pub mod cpus;
pub mod pmu;

use cpus::CpuListError;

/// What discovery can fail on: a file or directory that cannot be read, or one whose
/// contents are not what the kernel writes there.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid CPU list in {path}: {source}", path = path.display())]
    SysfsCpuList {
        path: PathBuf,
        #[source]
        source: CpuListError,
    },

    #[error("cannot {what} {path}: {source}", path = path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
