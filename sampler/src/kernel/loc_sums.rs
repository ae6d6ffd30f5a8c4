//! The sums of the location ring's records, per key, in user space.
//!
//! The sample program puts each sample's location in a ring buffer (see
//! [`sampler_common::LOC_RING_MAP`]) rather than adding it to a hash map entry: the
//! records are summed here, as they are drained, and each reading hands the sums
//! over as if they were map entries. A sum is bounded as the map is (its entries):
//! past that, the sums that went longest without a sample are evicted, after a
//! reading, and counted as evictions of their CPU, as the map's are.
//!
//! A sum keeps a number of its own in the key's padding (never 0, which is the
//! map's): a reading's key from the ring is never taken for the same key from the
//! map (a sample goes to one or the other), and a key that comes back after its sum
//! was evicted comes back as a new entry, so that the difference of two readings
//! (`model::snapshot::delta`) counts it once, never again.

use std::collections::HashMap;

use sampler_common::{LocKey, LocRecord, LocStats, LocValue};

/// One key's sum, its number and the reading it last grew in.
#[derive(Debug, Clone, Copy)]
struct Sum {
    value: LocValue,
    number: u32,
    grew: u64,
}

/// The ring's records summed per key.
#[derive(Debug)]
pub struct LocSums {
    sums: HashMap<LocKey, Sum>,
    /// Sums created, per CPU (the key's CPU): inserts, as the map's `inserted`.
    created: Vec<u64>,
    /// Readings handed over so far.
    readings: u64,
    next_number: u32,
    /// The most sums kept past a reading.
    cap: usize,
}

impl LocSums {
    /// Sums for `cpus` possible CPUs, at most `cap` kept past a reading.
    pub fn new(cpus: usize, cap: usize) -> Self {
        Self {
            sums: HashMap::new(),
            created: vec![0; cpus],
            readings: 0,
            next_number: 1,
            cap: cap.max(1),
        }
    }

    /// Adds one record.
    pub fn add(&mut self, record: &LocRecord) {
        let mut key = record.key;
        key._pad = 0;
        let readings = self.readings;
        let sum = self.sums.entry(key).or_insert_with(|| {
            let number = self.next_number;
            // Never 0 (the map's keys): 1 again after u32::MAX sums.
            self.next_number = self.next_number.checked_add(1).unwrap_or(1);
            if let Some(created) = self.created.get_mut(key.cpu as usize) {
                *created += 1;
            }
            Sum {
                value: LocValue::default(),
                number,
                grew: readings,
            }
        });
        sum.value.samples += 1;
        sum.value.period_sum += record.period;
        for (count, delta) in sum.value.counts.iter_mut().zip(&record.deltas) {
            *count += delta;
        }
        sum.grew = readings;
    }

    /// Adds the records in `bytes`, one ring item: `None` when it is not a record
    /// (too short), which the caller counts.
    pub fn add_item(&mut self, bytes: &[u8]) -> Option<()> {
        if bytes.len() < size_of::<LocRecord>() {
            return None;
        }
        // SAFETY: `bytes` holds at least one LocRecord, a plain-old-data struct
        // every bit pattern of which is valid; read_unaligned needs no alignment.
        let record = unsafe { bytes.as_ptr().cast::<LocRecord>().read_unaligned() };
        self.add(&record);
        Some(())
    }

    /// Hands the sums over as entries (appended to `entries`) and their creations
    /// as inserts (added to `stats`, per CPU); then evicts, down to the cap, the
    /// sums that did not grow since the reading before, those idle longest first.
    pub fn reading(&mut self, entries: &mut Vec<(LocKey, LocValue)>, stats: &mut [LocStats]) {
        entries.reserve(self.sums.len());
        entries.extend(self.sums.iter().map(|(key, sum)| {
            let mut key = *key;
            key._pad = sum.number;
            (key, sum.value)
        }));
        for (stats, created) in stats.iter_mut().zip(&self.created) {
            stats.inserted += created;
        }
        if self.sums.len() > self.cap {
            let mut idle: Vec<(u64, LocKey)> = self
                .sums
                .iter()
                .filter(|(_, s)| s.grew < self.readings)
                .map(|(k, s)| (s.grew, *k))
                .collect();
            idle.sort_unstable_by_key(|(grew, _)| *grew);
            let excess = self.sums.len() - self.cap;
            for (_, key) in idle.into_iter().take(excess) {
                self.sums.remove(&key);
            }
        }
        self.readings += 1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(cpu: u32, ip: u64, period: u64) -> LocRecord {
        LocRecord {
            key: LocKey {
                cpu,
                ip,
                tgid: 7,
                ..LocKey::default()
            },
            period,
            deltas: [1, 2, 0, 0],
        }
    }

    pub(crate) fn read(sums: &mut LocSums) -> (Vec<(LocKey, LocValue)>, Vec<LocStats>) {
        let mut entries = Vec::new();
        let mut stats = vec![LocStats::default(); 2];
        sums.reading(&mut entries, &mut stats);
        entries.sort_by_key(|(k, _)| (k.cpu, k.ip, k._pad));
        (entries, stats)
    }

    #[test]
    fn records_sum_per_key_with_a_number_that_is_never_the_maps() {
        let mut sums = LocSums::new(2, 16);
        sums.add(&record(0, 0x10, 100));
        sums.add(&record(0, 0x10, 50));
        sums.add(&record(1, 0x10, 7));
        let (entries, stats) = read(&mut sums);
        assert_eq!(entries.len(), 2);
        let (k, v) = entries[0];
        assert_eq!((k.cpu, k.ip), (0, 0x10));
        assert_ne!(k._pad, 0);
        assert_eq!((v.samples, v.period_sum, v.counts), (2, 150, [2, 4, 0, 0]));
        assert_eq!(entries[1].1.samples, 1);
        assert_ne!(entries[0].0._pad, entries[1].0._pad);
        // Each CPU created one sum: one insert each.
        assert_eq!((stats[0].inserted, stats[1].inserted), (1, 1));
        // A second reading hands the same sums over, grown by what came since.
        sums.add(&record(0, 0x10, 1));
        let (again, _) = read(&mut sums);
        assert_eq!(again[0].0, entries[0].0);
        assert_eq!(again[0].1.samples, 3);
    }

    #[test]
    fn a_short_item_is_not_a_record() {
        let mut sums = LocSums::new(1, 4);
        assert!(sums.add_item(&[0; 8]).is_none());
        let r = record(0, 0x20, 3);
        // SAFETY: a LocRecord's bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const r).cast::<u8>(), size_of::<LocRecord>())
        };
        assert!(sums.add_item(bytes).is_some());
        assert_eq!(sums.sums.len(), 1);
    }

    #[test]
    fn past_the_cap_idle_sums_go_after_a_reading_and_come_back_as_new_entries() {
        let mut sums = LocSums::new(1, 2);
        for ip in [1, 2, 3] {
            sums.add(&record(0, ip, 10));
        }
        // All three grew in this interval: all are handed over, none evicted.
        let (first, stats) = read(&mut sums);
        assert_eq!(first.len(), 3);
        assert_eq!(sums.sums.len(), 3);
        assert_eq!(stats[0].inserted, 3);
        // Only ip 3 grows: ips 1 and 2 are idle; one goes, the cap being 2.
        sums.add(&record(0, 3, 10));
        let (second, _) = read(&mut sums);
        assert_eq!(second.len(), 3, "handed over before the eviction");
        assert_eq!(sums.sums.len(), 2);
        // The evicted ip comes back: a new entry (a new number), counted once in
        // the difference of the readings.
        let kept: Vec<u64> = sums.sums.keys().map(|k| k.ip).collect();
        assert!(kept.contains(&3), "ip 3 grew: kept");
        let evicted = if kept.contains(&1) { 2 } else { 1 };
        for _ in 0..4 {
            sums.add(&record(0, evicted, 1));
        }
        let (third, stats) = read(&mut sums);
        let back: Vec<_> = third.iter().filter(|(k, _)| k.ip == evicted).collect();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].1.samples, 4);
        assert!(
            !second.iter().any(|(k, _)| *k == back[0].0),
            "the same key as its evicted sum"
        );
        assert_eq!(stats[0].inserted, 4);
    }
}
