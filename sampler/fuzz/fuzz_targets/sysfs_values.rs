//! Values read from sysfs files: CPU lists (`cpus`, `cpumask`, `online`), format
//! ranges (`format/*`, then encoding values into them), numbers. Errors are fine;
//! panics, hangs and huge allocations (a list like `0-4294967295`) are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sampler::{discover::cpus::CpuList, discover::pmu::Format, events::syntax::parse_number};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(list) = CpuList::parse(&text) {
        // What a parsed list must allow: printing it and parsing it back.
        let again = CpuList::parse(&list.to_string()).expect("a printed list parses");
        assert_eq!(again, list);
    }
    if let Ok(f) = Format::parse(&text) {
        let _ = f.width();
        let _ = f.to_string();
        for v in [0, 1, u64::MAX, data.len() as u64] {
            let _ = f.encode("fuzz", v);
        }
    }
    let _ = parse_number(&text);
});
