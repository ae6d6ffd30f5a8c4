//! Counter values as `read()` returns them for a group leader opened with
//! [`READ_FORMAT`], and the multiplexing arithmetic on them. Pure.

#[cfg(doc)]
use crate::events::plan::READ_FORMAT;

/// One `read()` of a group: `{ nr, time_enabled, time_running, { value, id }[nr] }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRead {
    /// Nanoseconds the group was enabled.
    pub enabled: u64,
    /// Nanoseconds it was on the PMU (less than `enabled` when multiplexed).
    pub running: u64,
    /// (id, value) per event, leader first.
    pub values: Vec<(u64, u64)>,
}

/// The size of the `read()` buffer for a group of `n` events.
pub fn group_read_size(n: usize) -> usize {
    8 * (3 + 2 * n)
}

/// Parses one group read; `None` when the buffer is shorter than it says.
pub fn parse_group_read(buf: &[u8]) -> Option<GroupRead> {
    let word = |i: usize| -> Option<u64> {
        let b = buf.get(i * 8..i * 8 + 8)?;
        Some(u64::from_ne_bytes(b.try_into().ok()?))
    };
    let nr = usize::try_from(word(0)?).ok()?;
    if nr > (buf.len() / 16) {
        return None;
    }
    let (enabled, running) = (word(1)?, word(2)?);
    let values = (0..nr)
        .map(|k| Some((word(3 + 2 * k + 1)?, word(3 + 2 * k)?)))
        .collect::<Option<Vec<_>>>()?;
    Some(GroupRead {
        enabled,
        running,
        values,
    })
}

/// `value` scaled to the whole enabled time (perf's `value * enabled / running`);
/// `None` when the event never ran.
pub fn scaled(value: u64, enabled: u64, running: u64) -> Option<u64> {
    if running == 0 {
        return None;
    }
    let v = u128::from(value) * u128::from(enabled) / u128::from(running);
    Some(u64::try_from(v).unwrap_or(u64::MAX))
}

/// `running / enabled`, the share of time the event was counted; 1 when not enabled.
pub fn coverage(enabled: u64, running: u64) -> f64 {
    if enabled == 0 {
        1.0
    } else {
        running as f64 / enabled as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    #[test]
    fn parses_a_group_read() {
        let b = buf(&[2, 1000, 500, 111, 7, 222, 8]);
        let r = parse_group_read(&b).unwrap();
        assert_eq!(r.enabled, 1000);
        assert_eq!(r.running, 500);
        assert_eq!(r.values, [(7, 111), (8, 222)]);
        assert_eq!(group_read_size(2), b.len());
    }

    #[test]
    fn short_or_lying_buffers_are_rejected() {
        assert_eq!(parse_group_read(&[]), None);
        assert_eq!(parse_group_read(&buf(&[2, 1, 1, 5, 6])), None);
        assert_eq!(parse_group_read(&buf(&[u64::MAX, 1, 1])), None);
        assert_eq!(
            parse_group_read(&buf(&[0, 1, 1])).unwrap().values,
            Vec::<(u64, u64)>::new()
        );
    }

    #[test]
    fn scaling_and_coverage() {
        assert_eq!(scaled(100, 1000, 500), Some(200));
        assert_eq!(scaled(100, 1000, 1000), Some(100));
        assert_eq!(scaled(100, 1000, 0), None);
        assert_eq!(scaled(u64::MAX, u64::MAX, 1), Some(u64::MAX));
        assert!((coverage(1000, 250) - 0.25).abs() < 1e-12);
        assert_eq!(coverage(0, 0), 1.0);
    }
}
