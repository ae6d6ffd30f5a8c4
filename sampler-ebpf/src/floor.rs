//! The floor, for `cargo xtask bench` only: a `perf_event` program that does the least
//! a sampler can do, one per-CPU counter bumped per sample. What the kernel spends
//! around any program on this event (the overflow, the program's dispatch, the
//! statistics' own clock reads) is in its cost too, so sampler's program is measured
//! against it in the same run: what sampler adds on top is the difference.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{map, perf_event},
    maps::PerCpuArray,
    programs::PerfEventContext,
};

/// Samples seen, one slot per CPU.
#[map(name = "FLOOR")]
static FLOOR: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[perf_event]
pub fn on_sample_floor(_ctx: PerfEventContext) -> u32 {
    if let Some(count) = FLOOR.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs on one perf event do not nest on a CPU.
        unsafe { *count += 1 };
    }
    0
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: as in main.rs: code that could reach a panic is never loaded.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
