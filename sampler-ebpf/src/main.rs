//! The in-kernel half of sampler: a `perf_event` program that runs on every counter
//! overflow (or software-clock tick) of the events the loader opens, and aggregates
//! the sample per interrupted task and CPU in maps that user space reads.
//!
//! Cost per sample is a product metric: the path below is one per-CPU array lookup,
//! three cheap helpers and one hash lookup; the task's name is only fetched when its
//! entry is created.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_cgroup_id, bpf_get_smp_processor_id},
    },
    macros::{map, perf_event},
    maps::{LruHashMap, PerCpuArray},
    programs::PerfEventContext,
};
use sampler_common::{COMM_LEN, CpuStats, DEFAULT_TASK_ENTRIES, TaskKey, TaskValue};

/// Per (tgid, tid, cgroup, cpu) aggregates. Per-CPU LRU lists: every key carries the
/// CPU it is updated on, so CPUs never contend for the same list. The loader resizes
/// it to the host's CPU count.
#[map(name = "TASKS")]
static TASKS: LruHashMap<TaskKey, TaskValue> =
    LruHashMap::with_max_entries(DEFAULT_TASK_ENTRIES, BPF_F_NO_COMMON_LRU);

/// The program's own counters, one slot per CPU.
#[map(name = "CPU_STATS")]
static CPU_STATS: PerCpuArray<CpuStats> = PerCpuArray::with_max_entries(1, 0);

#[perf_event]
pub fn on_sample(ctx: PerfEventContext) -> u32 {
    try_on_sample(&ctx);
    // 0: the sample is consumed here; the kernel writes no record to a ring buffer.
    0
}

#[inline(always)]
fn try_on_sample(ctx: &PerfEventContext) {
    // SAFETY: the kernel passes a valid `bpf_perf_event_data` context; the verifier
    // rewrites this read of `sample_period` into a read of the real sample data.
    let period = unsafe { (*ctx.ctx).sample_period };
    let Some(stats) = CPU_STATS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot; programs do not nest on one CPU, so nothing else
    // writes it while this runs.
    let stats = unsafe { &mut *stats };
    stats.samples += 1;
    stats.period_sum += period;

    let pid_tgid = bpf_get_current_pid_tgid();
    let key = TaskKey {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        // SAFETY: helpers without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        // SAFETY: as above.
        cpu: unsafe { bpf_get_smp_processor_id() },
        _pad: 0,
    };
    match TASKS.get_ptr_mut(key) {
        Some(value) => {
            // SAFETY: the entry's key holds this CPU, so only this CPU updates it.
            let value = unsafe { &mut *value };
            value.samples += 1;
            value.period_sum += period;
        }
        None => {
            let value = TaskValue {
                samples: 1,
                period_sum: period,
                comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
            };
            if TASKS.insert(key, value, u64::from(BPF_NOEXIST)).is_ok() {
                stats.inserted += 1;
            } else {
                stats.dropped += 1;
            }
        }
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: BPF programs cannot unwind or abort; the verifier only accepts programs
    // whose every path returns, so code that could reach a panic is never loaded.
    unsafe { core::hint::unreachable_unchecked() }
}

/// GPL-compatible licence, required for the tracing helpers used above.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
