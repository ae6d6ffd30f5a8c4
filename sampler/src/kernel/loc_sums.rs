//! The sums of the location ring's records, per key, in user space.
//!
//! The sample program puts each sample's location in its CPU's batch, and the batch
//! in a ring buffer (see [`sampler_common::LOC_RING_MAPS`]) rather than adding it
//! to a hash map entry: the records are summed here, as they are drained, with, at
//! each reading, those the CPUs' batches hold but have not sent yet (taken once:
//! see [`LocSums::add_stages`]); each reading hands the sums over as if they were
//! map entries. A sum is bounded as the map is (its entries):
//! past that, the sums that went longest without a sample are evicted, after a
//! reading, and counted as evictions of their CPU, as the map's are.
//!
//! A sum keeps a number of its own in the key's padding (never 0, which is the
//! map's): a reading's key from the ring is never taken for the same key from the
//! map (a sample goes to one or the other), and a key that comes back after its sum
//! was evicted comes back as a new entry, so that the difference of two readings
//! (`model::snapshot::delta`) counts it once, never again.

use std::collections::HashMap;

use sampler_common::{
    LOC_BATCH_RECORDS, LocBatch, LocBatchHead, LocKey, LocRecord, LocStage, LocStats, LocValue,
};

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
    /// Per CPU, the batches (by number) whose first records were taken from the
    /// CPU's batch before it was sent, and how many: skipped when it comes through
    /// the ring.
    taken: Vec<Vec<(u64, usize)>>,
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
            taken: vec![Vec::new(); cpus],
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

    /// Adds the records of `bytes`, one ring item (a [`LocBatchHead`] and its
    /// records), but those a reading already took from the CPU's batch: `None` when
    /// it is not a batch (too short for its length), which adds nothing.
    pub fn add_item(&mut self, bytes: &[u8]) -> Option<()> {
        let head_size = size_of::<LocBatchHead>();
        if bytes.len() < head_size {
            return None;
        }
        // SAFETY: `bytes` holds at least a LocBatchHead, a plain-old-data struct
        // every bit pattern of which is valid; read_unaligned needs no alignment.
        let head = unsafe { bytes.as_ptr().cast::<LocBatchHead>().read_unaligned() };
        let len = head.len as usize;
        if len > LOC_BATCH_RECORDS || bytes.len() < head_size + len * size_of::<LocRecord>() {
            return None;
        }
        let skip = self.sent(head.cpu as usize, head.number);
        for i in skip..len {
            let at = head_size + i * size_of::<LocRecord>();
            // SAFETY: `bytes` holds a LocRecord at `at` (the length is checked above),
            // plain old data as the head.
            let record = unsafe { bytes.as_ptr().add(at).cast::<LocRecord>().read_unaligned() };
            self.add(&record);
        }
        Some(())
    }

    /// How many records of CPU `cpu`'s batch `number`, now sent, were taken before,
    /// forgetting them (and any older batch's, which were all sent before it). A
    /// batch of one (numbered `u64::MAX`, bench only) was never in a CPU's batch.
    fn sent(&mut self, cpu: usize, number: u64) -> usize {
        let Some(taken) = self.taken.get_mut(cpu) else {
            return 0;
        };
        if number == u64::MAX {
            return 0;
        }
        let skip = taken
            .iter()
            .find(|(n, _)| *n == number)
            .map_or(0, |(_, k)| *k);
        taken.retain(|(n, _)| *n > number);
        skip
    }

    /// Adds the records CPU `cpu`'s batch holds that no reading took yet, and notes
    /// them taken (its records stay until the batch is sent, and come with its
    /// number through the ring).
    fn add_batch(&mut self, cpu: usize, batch: &LocBatch) {
        let len = (batch.head.len as usize).min(LOC_BATCH_RECORDS);
        let number = batch.head.number;
        let Some(taken) = self.taken.get_mut(cpu) else {
            return;
        };
        let skip = match taken.iter_mut().find(|(n, _)| *n == number) {
            Some((_, k)) => std::mem::replace(k, len.max(*k)),
            None => {
                taken.push((number, len));
                0
            }
        };
        for record in batch.records.get(skip..len).unwrap_or_default() {
            self.add(record);
        }
    }

    /// At a reading, after the rings were drained: adds what each CPU's batch holds
    /// and no reading took yet. `first` is a copy of every CPU's batch, and
    /// `read_again` copies them again (`None`: the read failed): a copy is whole
    /// when its sequence number is even and the next copy has the same (the
    /// program changed nothing in between; the number leads the copy). A CPU whose
    /// batch changes through `tries` copies adds nothing now: its records come in
    /// the next reading, or with the batch through the ring.
    pub fn add_stages(
        &mut self,
        mut first: Vec<LocStage>,
        tries: usize,
        mut read_again: impl FnMut() -> Option<Vec<LocStage>>,
    ) {
        let mut done = vec![false; first.len()];
        for _ in 0..tries {
            let Some(second) = read_again() else { return };
            for (cpu, (a, b)) in first.iter().zip(&second).enumerate() {
                if !done[cpu] && a.seq == b.seq && a.seq.is_multiple_of(2) {
                    self.add_batch(cpu, &a.batch);
                    done[cpu] = true;
                }
            }
            if done.iter().all(|d| *d) {
                return;
            }
            first = second;
        }
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

    /// The bytes of a ring item: `batch`'s head and its first `len` records.
    fn item(batch: &LocBatch) -> Vec<u8> {
        let len = batch.head.len as usize;
        let size = size_of::<LocBatchHead>() + len * size_of::<LocRecord>();
        // SAFETY: a LocBatch's first `size` bytes (len is at most its records).
        unsafe { std::slice::from_raw_parts((&raw const *batch).cast::<u8>(), size) }.to_vec()
    }

    fn batch(cpu: u32, number: u64, ips: &[u64]) -> LocBatch {
        let mut b = LocBatch {
            head: LocBatchHead {
                cpu,
                len: ips.len() as u32,
                number,
            },
            ..LocBatch::default()
        };
        for (slot, ip) in b.records.iter_mut().zip(ips) {
            *slot = record(cpu, *ip, 1);
        }
        b
    }

    fn stage(seq: u64, batch: LocBatch) -> LocStage {
        LocStage { seq, batch }
    }

    fn samples(sums: &LocSums) -> u64 {
        sums.sums.values().map(|s| s.value.samples).sum()
    }

    #[test]
    fn an_item_shorter_than_its_length_is_not_a_batch() {
        let mut sums = LocSums::new(1, 4);
        assert!(sums.add_item(&[0; 8]).is_none());
        let b = batch(0, 0, &[0x20, 0x30]);
        let bytes = item(&b);
        assert!(sums.add_item(&bytes[..bytes.len() - 1]).is_none());
        assert!(sums.add_item(&bytes).is_some());
        // A length past a batch's records.
        let mut long = bytes.clone();
        long[4..8].copy_from_slice(&(LOC_BATCH_RECORDS as u32 + 1).to_ne_bytes());
        assert!(sums.add_item(&long).is_none());
        assert_eq!(samples(&sums), 2);
    }

    #[test]
    fn records_taken_from_a_cpus_batch_are_skipped_when_it_comes_through_the_ring() {
        let mut sums = LocSums::new(2, 64);
        // A reading takes CPU 0's batch 0 with two records, CPU 1's batch 4 with one.
        sums.add_stages(
            vec![stage(2, batch(0, 0, &[1, 2])), stage(6, batch(1, 4, &[9]))],
            8,
            || {
                Some(vec![
                    stage(2, batch(0, 0, &[1, 2])),
                    stage(6, batch(1, 4, &[9])),
                ])
            },
        );
        assert_eq!(samples(&sums), 3);
        // The next reading: CPU 0's batch grew by one (taken: one more); CPU 1's
        // did not (nothing more).
        sums.add_stages(
            vec![
                stage(4, batch(0, 0, &[1, 2, 3])),
                stage(6, batch(1, 4, &[9])),
            ],
            8,
            || {
                Some(vec![
                    stage(4, batch(0, 0, &[1, 2, 3])),
                    stage(6, batch(1, 4, &[9])),
                ])
            },
        );
        assert_eq!(samples(&sums), 4);
        // Batch 0 of CPU 0 is sent with four records: only the fourth is new.
        sums.add_item(&item(&batch(0, 0, &[1, 2, 3, 4]))).unwrap();
        assert_eq!(samples(&sums), 5);
        // A batch no reading took adds all its records; so does CPU 1's next one.
        sums.add_item(&item(&batch(0, 1, &[5, 6]))).unwrap();
        sums.add_item(&item(&batch(1, 4, &[9, 10]))).unwrap();
        assert_eq!(samples(&sums), 8);
        sums.add_item(&item(&batch(1, 5, &[11]))).unwrap();
        assert_eq!(samples(&sums), 9);
        // Nothing is remembered for sent batches.
        assert!(sums.taken.iter().all(Vec::is_empty), "{:?}", sums.taken);
        // Each ip once, with its count.
        let (entries, _) = read(&mut sums);
        let ips: Vec<(u32, u64, u64)> = entries
            .iter()
            .map(|(k, v)| (k.cpu, k.ip, v.samples))
            .collect();
        let want: Vec<(u32, u64, u64)> = [1, 2, 3, 4, 5, 6]
            .iter()
            .map(|ip| (0, *ip, 1))
            .chain([(1, 9, 1), (1, 10, 1), (1, 11, 1)])
            .collect();
        assert_eq!(ips, want);
    }

    #[test]
    fn a_batch_sent_after_the_drain_is_taken_from_the_ring_next_time() {
        let mut sums = LocSums::new(1, 64);
        // Batch 3 was taken with two records; then sent (not yet drained), and the
        // reading sees batch 4 with one.
        sums.add_stages(vec![stage(2, batch(0, 3, &[1, 2]))], 8, || {
            Some(vec![stage(2, batch(0, 3, &[1, 2]))])
        });
        sums.add_stages(vec![stage(8, batch(0, 4, &[7]))], 8, || {
            Some(vec![stage(8, batch(0, 4, &[7]))])
        });
        assert_eq!(samples(&sums), 3);
        sums.add_item(&item(&batch(0, 3, &[1, 2, 5]))).unwrap();
        sums.add_item(&item(&batch(0, 4, &[7, 8]))).unwrap();
        assert_eq!(samples(&sums), 5);
        // Bench-only batches of one (number u64::MAX) are all new.
        sums.add_item(&item(&batch(0, u64::MAX, &[9]))).unwrap();
        assert_eq!(samples(&sums), 6);
    }

    #[test]
    fn a_batch_copied_in_the_middle_of_a_change_is_not_taken() {
        let mut sums = LocSums::new(2, 64);
        let mut copies = vec![
            // CPU 0 odd (a change under way), CPU 1 moved on: neither whole.
            vec![stage(5, batch(0, 0, &[1, 2])), stage(8, batch(1, 0, &[3]))],
            // CPU 0 still odd; CPU 1 still: the previous copy of CPU 1 is whole.
            vec![
                stage(7, batch(0, 0, &[1, 2, 4])),
                stage(8, batch(1, 0, &[3])),
            ],
        ]
        .into_iter();
        sums.add_stages(
            vec![stage(5, batch(0, 0, &[1])), stage(6, batch(1, 0, &[]))],
            2,
            || copies.next(),
        );
        // CPU 1's whole copy holds one record; CPU 0 never stood still: none.
        assert_eq!(samples(&sums), 1);
        assert_eq!(sums.taken[0], vec![]);
        // A failed read adds nothing more.
        sums.add_stages(vec![stage(2, batch(0, 0, &[1]))], 2, || None);
        assert_eq!(samples(&sums), 1);
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
