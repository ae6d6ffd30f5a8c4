//! The user-page decoder on arbitrary page contents and raw counter/timestamp
//! values: a hostile or torn page must decode to a value or to "not readable",
//! never panic (no shift overflow, no division by zero).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sampler::kernel::userpage::{PageFields, decode};

fuzz_target!(|data: &[u8]| {
    let mut words = data
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .chain(std::iter::repeat(0));
    let mut next = || words.next().unwrap_or(0);
    let f = PageFields {
        index: next() as u32,
        offset: next() as i64,
        time_enabled: next(),
        time_running: next(),
        capabilities: next(),
        pmc_width: next() as u16,
        time_shift: next() as u16,
        time_mult: next() as u32,
        time_offset: next(),
        time_cycles: next(),
        time_mask: next(),
    };
    let (counter, timestamp) = (next(), next());
    if let Some(c) = decode(&f, counter, timestamp) {
        assert!(f.readable());
        let _ = c.value;
    }
});
