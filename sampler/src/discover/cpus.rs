//! CPU lists in the kernel's notation (`0-3,8,10-11`), as found in
//! `/sys/devices/system/cpu/online` and in PMUs' `cpus`/`cpumask` files, and typed by
//! users in `--cpu`.

use std::{fmt, path::Path};

/// The largest CPU number accepted (the kernel's `NR_CPUS` ceiling is 8192): a bound
/// so that a hostile or mistyped list such as `0-4294967295` cannot allocate gigabytes.
pub const MAX_CPU: u32 = 8191;

/// Why a CPU list could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    #[error("empty CPU list")]
    Empty,
    #[error("`{0}` is not a CPU number or range (expected e.g. `0-3,6`)")]
    BadItem(String),
    #[error("range `{0}` runs backwards (write it low-high)")]
    Backwards(String),
    #[error("CPU {0} is above the largest CPU number supported ({MAX_CPU})")]
    TooLarge(u64),
}

/// A sorted, duplicate-free set of CPU numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuList(Vec<u32>);

impl CpuList {
    /// Parses `0-3,8` style lists. Whitespace around items and a trailing newline are
    /// accepted (sysfs files end with one); an empty list is an error.
    pub fn parse(s: &str) -> Result<Self, CpuListError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(CpuListError::Empty);
        }
        let mut cpus = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            let (lo, hi) = match item.split_once('-') {
                Some((lo, hi)) => (parse_cpu(lo, item)?, parse_cpu(hi, item)?),
                None => {
                    let cpu = parse_cpu(item, item)?;
                    (cpu, cpu)
                }
            };
            if lo > hi {
                return Err(CpuListError::Backwards(item.to_owned()));
            }
            cpus.extend(lo..=hi);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(Self(cpus))
    }

    /// Reads and parses a CPU-list file such as `<sysfs>/devices/system/cpu/online`.
    pub fn read(path: &Path) -> Result<Self, super::Error> {
        let text = crate::sys::read_sysfs_file(path).map_err(|source| super::Error::Io {
            what: "read the CPU list",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| super::Error::SysfsCpuList {
            path: path.to_owned(),
            source,
        })
    }

    pub fn from_cpus(mut cpus: Vec<u32>) -> Self {
        cpus.sort_unstable();
        cpus.dedup();
        Self(cpus)
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0.binary_search(&cpu).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }
}

fn parse_cpu(s: &str, item: &str) -> Result<u32, CpuListError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CpuListError::BadItem(item.to_owned()));
    }
    // All digits: the only possible parse failure is overflow.
    let n: u64 = s.parse().unwrap_or(u64::MAX);
    if n > u64::from(MAX_CPU) {
        return Err(CpuListError::TooLarge(n));
    }
    Ok(n as u32)
}

/// Formats in the kernel's compact notation, e.g. `0-3,8`.
impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end = self.0[i];
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_singles_and_newline() {
        let l = CpuList::parse("0-3,8,10-11\n").unwrap();
        assert_eq!(l.as_slice(), &[0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(l.to_string(), "0-3,8,10-11");
    }

    #[test]
    fn sorts_and_dedups() {
        let l = CpuList::parse("3, 1,1-2").unwrap();
        assert_eq!(l.as_slice(), &[1, 2, 3]);
        assert_eq!(l.to_string(), "1-3");
        assert!(l.contains(2));
        assert!(!l.contains(0));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(CpuList::parse(""), Err(CpuListError::Empty));
        assert_eq!(CpuList::parse(" \n"), Err(CpuListError::Empty));
        assert_eq!(
            CpuList::parse("a"),
            Err(CpuListError::BadItem("a".to_owned()))
        );
        assert_eq!(
            CpuList::parse("1,,2"),
            Err(CpuListError::BadItem(String::new()))
        );
        assert_eq!(
            CpuList::parse("-1"),
            Err(CpuListError::BadItem("-1".to_owned()))
        );
        assert_eq!(
            CpuList::parse("3-1"),
            Err(CpuListError::Backwards("3-1".to_owned()))
        );
        assert_eq!(
            CpuList::parse("0-99999999999999999999999"),
            Err(CpuListError::TooLarge(u64::MAX))
        );
        assert_eq!(CpuList::parse("8192"), Err(CpuListError::TooLarge(8192)));
        assert!(CpuList::parse("8191").is_ok());
    }

    #[test]
    fn display_of_single_and_empty() {
        assert_eq!(CpuList::from_cpus(vec![5]).to_string(), "5");
        assert_eq!(CpuList::from_cpus(vec![]).to_string(), "");
        assert_eq!(CpuList::from_cpus(vec![0, 2, 4]).to_string(), "0,2,4");
    }
}
