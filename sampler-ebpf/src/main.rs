//! The in-kernel half of sampler: a `perf_event` program that runs on every overflow
//! of the sampling group's leader (a hardware counter, or the software clock), and
//! aggregates per interrupted task and CPU: one sample, and the growth of the leader
//! and of each counting member of the group since the previous sample on this CPU (so
//! IPC and miss ratios come per task, from the kernel). The leader's growth, not the
//! nominal sample period, is what the sample stands for: an overflow interrupt that
//! comes late (an emulated PMU, a virtual CPU that was not running) or an hrtimer
//! tick that was skipped leaves the counter further along than one period, and those
//! counts belong to the sample too, or the sums fall short of what `read()` says.
//!
//! A second program runs at every context switch (`sched_switch`): it charges the
//! growth since the last sample or switch on this CPU to the task that is leaving, so
//! that what a task ran is its own, not the next sampled task's. Without it, the counts
//! between a task's last sample and its switch-out went to whichever task the next
//! sample interrupted (a 1-5 % error per task on a busy CPU, measured). A kprobe
//! where the switch ends gives the switch itself to the idle row, as perf's per-task
//! counters count it for neither task.
//!
//! Cost per sample is a product metric, and the program is built around its common
//! case: the task that the previous sample on this CPU interrupted is interrupted
//! again. Each CPU keeps the samples of the task it runs since it was switched in
//! (`PENDING`, a per-CPU array); such a sample adds one there, with no hash lookup,
//! no helper and no counter read, and counts the CPU's samples there too: one
//! per-CPU value, and the path's few instructions together at the program's start
//! (the rest is a function of its own), for the least cache lines a sample touches
//! (1.1-1.2x cheaper at 10 kHz than with a second per-CPU value and the path's
//! instructions spread through the program's, measured). The counters are read
//! where a task's counts end: the switch program reads them when the task leaves
//! the CPU and moves the pending counts, with what the counters gained since the
//! last move, into the task map.
//! What the counters gained in between is the running task's, and user space adds
//! it when it reads (see `Pending`): exact at every reading, with no read per sample.
//! The first sample after a switch, and every 64th, fetch the task's key (pid and
//! tid, cgroup, two kernel reads for the process's start time, which keeps a reused
//! pid apart) and name; a key that changed (a cgroup move, an exec() by a thread)
//! ends the old key's counts there, with a read of the counters. `cargo xtask bench`
//! measures each piece by taking it out (`BENCH_SKIP`).
//!
//! Where the sample landed (the sampled instruction, and with `-g` the kernel and user
//! call stacks: on x86-64 the program walks the user stack itself, see `user_walk`)
//! goes to the CPU's batch (`LOC_STAGE`), which goes to a ring buffer
//! (`LOC_RING_*`, one per CPU up to 8) every LOC_BATCH_FLUSH samples; user space
//! drains the rings, sums the records, and at each reading takes what the batches
//! hold but have not sent. A sample that finds its batch and the ring full goes to
//! a map of its own (`LOCATIONS`). All this only when the loader asks for it
//! (`LOC_MODE`): with locations off, that half costs one load and one branch. With
//! locations on, each location gets what the counters gained since the previous
//! sample, so they are read at every sample then: the leader's count is one plain
//! load at the event the last sample found in its context (cached until the next
//! switch; the overflow has already brought the count up to date), through a BTF
//! pointer (`bpf_rdonly_cast`, Linux 6.2+; before, a kernel read), and one
//! `bpf_perf_event_read_value` per member.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

use core::ffi::c_void;

use aya_ebpf::{
    Global,
    bindings::{
        BPF_F_CURRENT_CPU, BPF_F_FAST_STACK_CMP, BPF_F_NO_COMMON_LRU, BPF_F_USER_STACK,
        BPF_NOEXIST, BPF_RB_NO_WAKEUP, bpf_perf_event_value,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task,
            bpf_get_smp_processor_id, bpf_perf_event_read_value, bpf_perf_prog_read_value,
            bpf_ringbuf_output,
        },
    },
    macros::{kprobe, map, perf_event, raw_tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, PerfEventArray, RingBuf, StackTrace},
    programs::{
        PerfEventContext, ProbeContext, RawTracePointContext, tracing::StackIdContext as _,
    },
};
use sampler_common::{
    COMM_LEN, COMM_REFRESH, Comm, CpuStats, DEFAULT_LOC_ENTRIES, DEFAULT_TASK_ENTRIES,
    LOC_BATCH_FLUSH, LOC_BATCH_RECORDS, LOC_LOG_SLOTS, LOCATIONS_IP, LOCATIONS_OFF,
    LOCATIONS_STACKS, LastValues, LocBatchHead, LocKey, LocLog, LocRecord, LocSingle, LocStage,
    LocStats, LocValue, MAX_MEMBERS, NO_STACK, Pending, RDONLY_CAST_CALL, SKIP_CGROUP,
    SKIP_KEY_CACHE, SKIP_LEADER_READ, SKIP_LOC_BATCH, SKIP_LOC_MAP, SKIP_LOC_MAP_FOR_LOG,
    SKIP_LOC_MODE, SKIP_LOC_RING, SKIP_MEMBER_READS, SKIP_PID, SKIP_START, SKIP_TASK_MAP, TaskKey,
    TaskValue,
};

#[cfg(bpf_target_arch = "x86_64")]
mod user_walk;

/// Per (tgid, tid, cgroup, cpu) aggregates. Per-CPU LRU lists: every key carries the
/// CPU it is updated on, so CPUs never contend for the same list. The loader resizes
/// it to the host's CPU count.
#[map(name = "TASKS")]
static TASKS: LruHashMap<TaskKey, TaskValue> =
    LruHashMap::with_max_entries(DEFAULT_TASK_ENTRIES, BPF_F_NO_COMMON_LRU);

/// Per (process, CPU, sampled instruction, kernel stack, user stack) aggregates of the
/// samples that found their batch and LOC_RING_* full. Per-CPU LRU lists, as TASKS;
/// sized by the loader.
#[map(name = "LOCATIONS")]
static LOCATIONS: LruHashMap<LocKey, LocValue> =
    LruHashMap::with_max_entries(DEFAULT_LOC_ENTRIES, BPF_F_NO_COMMON_LRU);

/// The samples' locations while there is room, in batches of LOC_BATCH_FLUSH
/// records (`LocBatch`, from LOC_STAGE), CPU `c`'s in ring `c % 8`; user space
/// drains them and sums the records per key. Cheaper than the LOCATIONS update when
/// the samples are far apart and the hash's buckets and entries have left the
/// caches; one ring per CPU, as no CPU then takes a line another one wrote. The
/// loader sizes them.
#[map(name = "LOC_RING_0")]
static LOC_RING_0: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map(name = "LOC_RING_1")]
static LOC_RING_1: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map(name = "LOC_RING_2")]
static LOC_RING_2: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map(name = "LOC_RING_3")]
static LOC_RING_3: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map(name = "LOC_RING_4")]
static LOC_RING_4: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map(name = "LOC_RING_5")]
static LOC_RING_5: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map(name = "LOC_RING_6")]
static LOC_RING_6: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map(name = "LOC_RING_7")]
static LOC_RING_7: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Each CPU's batch of locations not yet sent to its ring: a sample writes its
/// record here, and one sample in LOC_BATCH_FLUSH sends the batch, so that the
/// ring's lock, positions and record header are paid once per batch, not once per
/// sample. User space reads what a batch holds at each reading (see `LocStage`).
#[map(name = "LOC_STAGE")]
static LOC_STAGE: PerCpuArray<LocStage> = PerCpuArray::with_max_entries(1, 0);

/// The location ring of CPU `cpu`.
#[inline(always)]
fn loc_ring(cpu: u32) -> &'static RingBuf {
    match cpu % 8 {
        0 => &LOC_RING_0,
        1 => &LOC_RING_1,
        2 => &LOC_RING_2,
        3 => &LOC_RING_3,
        4 => &LOC_RING_4,
        5 => &LOC_RING_5,
        6 => &LOC_RING_6,
        _ => &LOC_RING_7,
    }
}

/// Bench only (`SKIP_LOC_MAP_FOR_LOG`): a per-CPU log in place of LOCATIONS, what
/// any store costs at the least.
#[map(name = "LOC_LOG")]
static LOC_LOG: PerCpuArray<LocLog> = PerCpuArray::with_max_entries(1, 0);

/// The call stacks (with `-g`); the loader sizes it, and to one entry without `-g`.
#[map(name = "STACKS")]
static STACKS: StackTrace = StackTrace::with_max_entries(1, 0);

/// The location half's counters, one slot per CPU.
#[map(name = "LOC_STATS")]
static LOC_STATS: PerCpuArray<LocStats> = PerCpuArray::with_max_entries(1, 0);

/// What to record of a sample's location (`LOCATIONS_OFF`, `_IP`, `_STACKS`), in
/// slot 0: a map, not a global, so that user space can turn locations on and off
/// while sampling runs (the live view's function key).
#[map(name = "LOC_MODE")]
static LOC_MODE: Array<u32> = Array::with_max_entries(1, 0);

/// The program's own counters, one slot per CPU.
#[map(name = "CPU_STATS")]
static CPU_STATS: PerCpuArray<CpuStats> = PerCpuArray::with_max_entries(1, 0);

/// The sampling leader of each CPU, indexed by CPU: what the switch program reads.
#[map(name = "LEADER")]
static LEADER: PerfEventArray<u32> = PerfEventArray::new(0);

/// The sampling group's counting members, one array per position, indexed by CPU.
#[map(name = "MEMBER0")]
static MEMBER0: PerfEventArray<u32> = PerfEventArray::new(0);
#[map(name = "MEMBER1")]
static MEMBER1: PerfEventArray<u32> = PerfEventArray::new(0);
#[map(name = "MEMBER2")]
static MEMBER2: PerfEventArray<u32> = PerfEventArray::new(0);
#[map(name = "MEMBER3")]
static MEMBER3: PerfEventArray<u32> = PerfEventArray::new(0);

/// The samples of the task running on each CPU since it was switched in, not yet in
/// TASKS (see [`Pending`]).
#[map(name = "PENDING")]
static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// Slots per CPU in KEY_CACHE (a power of two).
const KEY_CACHE_SLOTS: usize = 4;

/// A task's key as the helpers last gave it on this CPU.
#[derive(Clone, Copy)]
#[repr(C)]
struct CachedKey {
    /// The task's address (`struct task_struct`); 0: an empty slot.
    task: u64,
    /// The thread's own `start_time`: a task_struct reused by a new task, or a
    /// thread whose exec() made it the leader, has another.
    thread_start: u64,
    key: TaskKey,
    comm: Comm,
    /// Times the slot answered since the helpers filled it.
    uses: u64,
}

/// The keys of the tasks that ran on this CPU lately, by their address: the first
/// sample after a switch back to one of them (a busy task that a kernel thread
/// preempted) takes its key from here, checked with one kernel read and the name
/// helper, instead of fetching it with five helpers.
#[repr(C)]
struct KeyCache {
    slots: [CachedKey; KEY_CACHE_SLOTS],
}

#[map(name = "KEY_CACHE")]
static KEY_CACHE: PerCpuArray<KeyCache> = PerCpuArray::with_max_entries(1, 0);

/// The leader's and the members' counter values at the previous sample, per CPU.
#[map(name = "LAST")]
static LAST: PerCpuArray<LastValues> = PerCpuArray::with_max_entries(1, 0);

/// How many members the sampling group has (set by the loader, at most MAX_MEMBERS).
#[unsafe(no_mangle)]
static NR_MEMBERS: Global<u32> = Global::new(0);

/// Byte offsets of `task_struct.group_leader` and `.start_time` (from the kernel's
/// BTF, set by the loader); 0: unknown, the key's start time stays 0.
#[unsafe(no_mangle)]
static LEADER_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static START_OFFSET: Global<u32> = Global::new(0);

/// Byte offsets of `bpf_perf_event_data_kern.event` (the context's event) and of
/// `perf_event.count` (from the kernel's BTF, set by the loader); 0: unknown, the
/// leader's count is read through `bpf_perf_prog_read_value`.
#[unsafe(no_mangle)]
static CTX_EVENT_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static EVENT_COUNT_OFFSET: Global<u32> = Global::new(0);

/// The BTF id of `struct perf_event` (from the kernel's BTF, set by the loader): the
/// type `bpf_rdonly_cast` gives the leader (see `as_perf_event`).
#[unsafe(no_mangle)]
static PERF_EVENT_TYPE: Global<u32> = Global::new(0);

/// `task_struct`'s `flags` offset where the kernel has `bpf_task_pt_regs` (set by the
/// loader with `bpf_rdonly_cast`, Linux 6.2+); 0 elsewhere, and then a sample taken
/// in the kernel leaves its user stack to the kernel's walk.
#[unsafe(no_mangle)]
static TASK_FLAGS_OFFSET: Global<u32> = Global::new(0);

/// The most the loader lets LOC_MODE ask for (`LOCATIONS_OFF`, `_IP`, `_STACKS`):
/// what the location map and stack map were sized for.
#[unsafe(no_mangle)]
static MAX_LOC_MODE: Global<u32> = Global::new(LOCATIONS_STACKS);

/// For the benchmarks' breakdown only: the `SKIP_*` pieces the sample program leaves
/// out (0 in every real run). Read-only data, so the verifier prunes the skipped code.
#[unsafe(no_mangle)]
static BENCH_SKIP: Global<u32> = Global::new(0);

/// Whether the benchmarks' breakdown takes `piece` out of this run.
#[inline(always)]
fn skip(piece: u32) -> bool {
    BENCH_SKIP.load() & piece != 0
}

#[perf_event]
pub fn on_sample(ctx: PerfEventContext) -> u32 {
    try_on_sample(&ctx);
    // 0: the sample is consumed here; the kernel writes no record to a ring buffer.
    0
}

#[inline(always)]
fn try_on_sample(ctx: &PerfEventContext) {
    let Some(pending) = PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot. The only program that can be running on this
    // CPU underneath this one is a switch program (this one interrupted it); it owns
    // `pending` (and `LAST`) while `switching` is set, so this one then leaves them
    // alone, but for `samples`, which only this program changes.
    let pending = unsafe { &mut *pending };
    pending.samples += 1;
    // The fast path: the task's counters are read when its pending counts move (see
    // `Pending`), not at each of its samples. It touches PENDING alone (and, where
    // locations can be turned on, LOC_MODE).
    if pending.switching == 0
        && location_mode() == LOCATIONS_OFF
        && !skip(SKIP_TASK_MAP)
        && pending.valid != 0
        && !(pending.value.samples + 1).is_multiple_of(COMM_REFRESH)
    {
        pending.value.samples += 1;
        return;
    }
    slow_path(ctx, pending);
}

/// Each sample past the fast path, in a function of its own (a BPF-to-BPF call):
/// the fast path's instructions then come one after the other at the program's
/// start, in as few cache lines as they take (measured: 1.2x cheaper at 10 kHz
/// than with this inlined, where the fast path's few instructions were spread
/// through the program's).
#[inline(never)]
fn slow_path(ctx: &PerfEventContext, pending: &mut Pending) {
    let Some(stats) = CPU_STATS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot, as `pending` in try_on_sample.
    let stats = unsafe { &mut *stats };
    let nested = pending.switching != 0;
    if nested {
        // The sample itself still counts, straight into the task map.
        let key = current_key();
        if !skip(SKIP_TASK_MAP) {
            match charge(&key, 1, 0, &[0; MAX_MEMBERS], None) {
                Charged::Updated => {}
                Charged::Inserted => stats.inserted += 1,
                Charged::Dropped => stats.dropped += 1,
            }
        }
        locations(ctx, &key, 0, &[0; MAX_MEMBERS]);
        return;
    }
    let mode = location_mode();
    if mode == LOCATIONS_OFF {
        if skip(SKIP_TASK_MAP) {
            return;
        }
        let Some(last) = LAST.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: as above.
        add_sample(ctx, pending, stats, unsafe { &mut *last });
        return;
    }
    let Some(last) = LAST.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as above.
    let last = unsafe { &mut *last };
    // Where the sample landed gets the counters' growth since the previous sample,
    // so they are read at every sample, and the pending counts take it at once.
    pending.seq += 1;
    let (period, deltas) = read_growth(ctx, last);
    stats.period_sum += period;
    let key = if skip(SKIP_TASK_MAP) {
        TaskKey {
            // SAFETY: helper without arguments.
            cpu: unsafe { bpf_get_smp_processor_id() },
            ..TaskKey::default()
        }
    } else if pending.valid != 0 && !(pending.value.samples + 1).is_multiple_of(COMM_REFRESH) {
        add(&mut pending.value, 1, period, &deltas);
        pending.key
    } else {
        add_sample_read(pending, stats, period, &deltas)
    };
    pending.seq += 1;
    record_location(ctx, mode, &key, period, &deltas);
}

/// The leader's and the members' growth since `last` (which this moves on).
#[inline(always)]
fn read_growth(ctx: &PerfEventContext, last: &mut LastValues) -> (u64, [u64; MAX_MEMBERS]) {
    let period = if skip(SKIP_LEADER_READ) {
        // SAFETY: as in leader_growth.
        unsafe { (*ctx.ctx).sample_period }
    } else {
        leader_growth(ctx, last)
    };
    let deltas = if skip(SKIP_MEMBER_READS) {
        [0; MAX_MEMBERS]
    } else {
        member_deltas(&mut last.members)
    };
    (period, deltas)
}

/// The sample path with locations off, past the fast path: the first sample since a
/// switch, or every COMM_REFRESH samples to see a new name, tid or cgroup. The
/// task's key comes from the helpers. The counters are read only where counts must
/// end here: a sample of the task that is leaving the CPU (between a switch's
/// tracepoint and its end, an NMI) goes straight to the task map with what the
/// counters gained since the switch's tracepoint; pending counts whose key changed
/// go to the task map with what the counters gained since the last move.
///
/// Valid pending counts are the current task's: the switch program moves them at
/// every switch on this CPU (a task that exits leaves its CPU by a switch too), and
/// they are only started by the task the last switch switched to (`pending.task`).
#[inline(always)]
fn add_sample(
    ctx: &PerfEventContext,
    pending: &mut Pending,
    stats: &mut CpuStats,
    last: &mut LastValues,
) {
    // SAFETY: helper without arguments; the current task's address.
    let task = unsafe { bpf_get_current_task() };
    if pending.task != 0 && pending.task != task {
        let key = key_of(task);
        pending.seq += 1;
        let (period, deltas) = read_growth(ctx, last);
        stats.period_sum += period;
        match charge(&key, 1, period, &deltas, None) {
            Charged::Updated => {}
            Charged::Inserted => stats.inserted += 1,
            Charged::Dropped => stats.dropped += 1,
        }
        pending.seq += 1;
        return;
    }
    let cached = if pending.valid == 0 {
        cached_key(task)
    } else {
        // Every COMM_REFRESH samples: from the helpers, fresh.
        None
    };
    let (key, comm) = match cached {
        Some(found) => found,
        None => {
            let key = key_of(task);
            let comm = current_comm();
            remember(task, &key, &comm);
            (key, comm)
        }
    };
    if pending.valid != 0 && pending.key == key {
        pending.value.samples += 1;
        pending.value.comm = comm;
        return;
    }
    pending.seq += 1;
    if pending.valid != 0 {
        let (period, deltas) = read_growth(ctx, last);
        stats.period_sum += period;
        flush(pending, stats, period, &deltas, false);
    }
    pending.key = key;
    pending.value = TaskValue {
        samples: 1,
        period_sum: 0,
        counts: [0; MAX_MEMBERS],
        comm,
    };
    pending.valid = 1;
    pending.seq += 1;
}

/// The slot of KEY_CACHE for the task at `task`.
#[inline(always)]
fn slot_of(task: u64) -> usize {
    // task_structs are slab objects of several KB: mix the bits above a cache line.
    ((task >> 6) ^ (task >> 13)) as usize & (KEY_CACHE_SLOTS - 1)
}

/// The current task's key and name from KEY_CACHE, when its slot holds them and
/// they still hold: the same task (its thread start time), the same name (an
/// exec() changes it), and fewer than COMM_REFRESH answers since the helpers gave
/// them (a task moved to another cgroup shows within that many). `task` is the
/// current task's address.
#[inline(always)]
fn cached_key(task: u64) -> Option<(TaskKey, Comm)> {
    let start_off = START_OFFSET.load();
    if skip(SKIP_KEY_CACHE) || start_off == 0 {
        return None;
    }
    let cache = KEY_CACHE.get_ptr_mut(0)?;
    // SAFETY: a per-CPU array slot; only the sample program uses it, and it does
    // not nest on one CPU.
    let slot = unsafe { &mut (*cache).slots[slot_of(task)] };
    if slot.task != task || slot.uses >= COMM_REFRESH {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling path:
    // a bad address yields an error, never a fault.
    let start =
        unsafe { bpf_probe_read_kernel((task as usize + start_off as usize) as *const u64) }
            .ok()?;
    if start != slot.thread_start {
        return None;
    }
    let comm = current_comm();
    if comm != slot.comm {
        return None;
    }
    slot.uses += 1;
    Some((slot.key, comm))
}

/// Puts the current task's key and name, fresh from the helpers, in its slot of
/// KEY_CACHE.
#[inline(always)]
fn remember(task: u64, key: &TaskKey, comm: &Comm) {
    let start_off = START_OFFSET.load();
    if skip(SKIP_KEY_CACHE) || start_off == 0 {
        return;
    }
    let Some(cache) = KEY_CACHE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in cached_key.
    let Ok(thread_start) =
        (unsafe { bpf_probe_read_kernel((task as usize + start_off as usize) as *const u64) })
    else {
        return;
    };
    // SAFETY: as in cached_key.
    let slot = unsafe { &mut (*cache).slots[slot_of(task)] };
    *slot = CachedKey {
        task,
        thread_start,
        key: *key,
        comm: *comm,
        uses: 0,
    };
}

/// [`add_sample`] with locations on, where the counters were read at this sample
/// already (`period` and `deltas`): returns the task's key. The caller has made
/// `seq` odd.
#[inline(always)]
fn add_sample_read(
    pending: &mut Pending,
    stats: &mut CpuStats,
    period: u64,
    deltas: &[u64; MAX_MEMBERS],
) -> TaskKey {
    // SAFETY: helper without arguments; the current task's address.
    let task = unsafe { bpf_get_current_task() };
    let key = key_of(task);
    if pending.task != 0 && pending.task != task {
        match charge(&key, 1, period, deltas, None) {
            Charged::Updated => {}
            Charged::Inserted => stats.inserted += 1,
            Charged::Dropped => stats.dropped += 1,
        }
        return key;
    }
    let comm = current_comm();
    if pending.valid != 0 {
        if pending.key == key {
            add(&mut pending.value, 1, period, deltas);
            pending.value.comm = comm;
            return key;
        }
        flush(pending, stats, 0, &[0; MAX_MEMBERS], false);
    }
    pending.key = key;
    pending.value = TaskValue {
        samples: 1,
        period_sum: period,
        counts: *deltas,
        comm,
    };
    pending.valid = 1;
    key
}

/// Adds counts to a task's value.
#[inline(always)]
fn add(value: &mut TaskValue, samples: u64, period: u64, deltas: &[u64; MAX_MEMBERS]) {
    value.samples += samples;
    value.period_sum += period;
    for (count, delta) in value.counts.iter_mut().zip(deltas) {
        *count += *delta;
    }
}

/// Moves this CPU's pending counts, plus `period` and `deltas` (what the counters
/// gained since the last move or sample), into the task map, and empties it. The
/// caller has made `seq` odd, which tells user space not to add what it read of it.
#[inline(always)]
fn flush(
    pending: &mut Pending,
    stats: &mut CpuStats,
    period: u64,
    deltas: &[u64; MAX_MEMBERS],
    at_switch: bool,
) {
    add(&mut pending.value, 0, period, deltas);
    let value = &pending.value;
    match charge(
        &pending.key,
        value.samples,
        value.period_sum,
        &value.counts,
        Some(&value.comm),
    ) {
        Charged::Updated => {}
        Charged::Inserted => stats.inserted += 1,
        Charged::Dropped => {
            stats.dropped += pending.value.samples;
            if at_switch {
                stats.switch_dropped += 1;
            }
        }
    }
    pending.valid = 0;
    pending.value = TaskValue::default();
}

/// The location half, when the loader turned it on.
#[inline(always)]
fn locations(ctx: &PerfEventContext, key: &TaskKey, period: u64, deltas: &[u64; MAX_MEMBERS]) {
    let mode = location_mode();
    if mode != LOCATIONS_OFF {
        record_location(ctx, mode, key, period, deltas);
    }
}

/// What to record of this sample's location: LOC_MODE, at most MAX_LOC_MODE. The
/// latter is read-only data, so when the loader sets it to LOCATIONS_OFF (or
/// LOCATIONS_IP) the verifier prunes the location half (or the stack walks)
/// without walking it: that is most of a plain run's load time.
#[inline(always)]
fn location_mode() -> u32 {
    let max = MAX_LOC_MODE.load();
    if skip(SKIP_LOC_MODE) || max == LOCATIONS_OFF {
        return LOCATIONS_OFF;
    }
    match LOC_MODE.get(0).copied().unwrap_or(LOCATIONS_OFF) {
        LOCATIONS_OFF => LOCATIONS_OFF,
        LOCATIONS_STACKS if max == LOCATIONS_STACKS => LOCATIONS_STACKS,
        _ => LOCATIONS_IP,
    }
}

/// The current task's name (all zeros should the helper fail, as the kernel leaves
/// it then).
#[inline(always)]
fn current_comm() -> Comm {
    let mut comm = Comm::default();
    // SAFETY: the helper writes at most the COMM_LEN bytes it is given.
    unsafe { bpf_get_current_comm(comm.0.as_mut_ptr().cast(), COMM_LEN as u32) };
    comm
}

/// The current task's key on this CPU.
#[inline(always)]
fn current_key() -> TaskKey {
    // SAFETY: helper without arguments; the current task's address.
    key_of(unsafe { bpf_get_current_task() })
}

/// The key of `task`, the current task (its address, from `bpf_get_current_task`).
#[inline(always)]
fn key_of(task: u64) -> TaskKey {
    let pid_tgid = if skip(SKIP_PID) {
        0
    } else {
        bpf_get_current_pid_tgid()
    };
    TaskKey {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        cgroup_id: if skip(SKIP_CGROUP) {
            0
        } else {
            // SAFETY: helper without arguments.
            unsafe { bpf_get_current_cgroup_id() }
        },
        start: if skip(SKIP_START) {
            0
        } else {
            process_start(task)
        },
        // SAFETY: helper without arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        _pad: 0,
    }
}

/// What [`charge`] did.
enum Charged {
    Updated,
    Inserted,
    Dropped,
}

/// Adds `samples`, the leader's growth `period` and the members' `deltas` to the
/// entry of `key`, creating it when needed. Its name is `comm` when given (the
/// pending counts' own, fetched while their task ran); otherwise the current task's,
/// fetched when the entry is created.
#[inline(always)]
fn charge(
    key: &TaskKey,
    samples: u64,
    period: u64,
    deltas: &[u64; MAX_MEMBERS],
    comm: Option<&Comm>,
) -> Charged {
    for _ in 0..2 {
        if let Some(value) = TASKS.get_ptr_mut(key) {
            // SAFETY: the entry's key holds this CPU, so only this CPU updates it.
            let value = unsafe { &mut *value };
            add(value, samples, period, deltas);
            if let Some(comm) = comm {
                value.comm = *comm;
            }
            return Charged::Updated;
        }
        let value = TaskValue {
            samples,
            period_sum: period,
            counts: *deltas,
            comm: match comm {
                Some(comm) => *comm,
                None => current_comm(),
            },
        };
        match TASKS.insert(key, value, u64::from(BPF_NOEXIST)) {
            Ok(()) => return Charged::Inserted,
            // EEXIST: a sample interrupted this insert with its own (the switch
            // program's case): add to that entry instead.
            Err(-17) => {}
            Err(_) => break,
        }
    }
    Charged::Dropped
}

/// At every context switch, the growth of the sampling leader and members since the
/// last sample or switch on this CPU goes to the task that leaves the CPU (still
/// `current` when the tracepoint fires), with no sample.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn on_switch(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next, ...)
    let next: u64 = ctx.arg(2);
    charge_switch(Some(next));
    0
}

/// Where the switch ends (`finish_task_switch`, entered on the new task just before
/// perf starts its per-task events): what the counters gained since the tracepoint,
/// the switch itself, goes to the idle row (pid 0), as perf counts it for neither
/// task. The loader attaches it when the kernel has the symbol.
#[kprobe]
pub fn on_switch_end(_ctx: ProbeContext) -> u32 {
    charge_switch(None);
    0
}

/// The switch programs' common half: the growth since the last sample or switch on
/// this CPU, to the current task, or without `next` (the switch's end) to the idle
/// row. At the switch to `next`, the leaving task's pending counts go to the task
/// map with it, and `next` is the task whose samples may start new ones.
#[inline(always)]
fn charge_switch(next: Option<u64>) {
    let (Some(stats), Some(last), Some(pending)) = (
        CPU_STATS.get_ptr_mut(0),
        LAST.get_ptr_mut(0),
        PENDING.get_ptr_mut(0),
    ) else {
        return;
    };
    // SAFETY: per-CPU array slots; both switch programs run with interrupts off, so
    // only a sample's NMI can run on this CPU meanwhile, and it keeps off `last` and
    // `pending` while `switching` is set.
    let (stats, last, pending) = unsafe { (&mut *stats, &mut *last, &mut *pending) };
    pending.switching = 1;
    // Odd while the counters' last values and the pending counts change (user space
    // adds what the counters gained since `last` to the pending counts).
    pending.seq += 1;
    last.event = 0;
    // A CPU without a sampling leader fails the read: only pending counts move.
    let (period, deltas) = match read_counter((&raw const LEADER).cast_mut().cast()) {
        Ok(counter) => (
            growth(counter, &mut last.leader),
            member_deltas(&mut last.members),
        ),
        Err(ENOENT) => {
            // An empty slot: the CPU's events were closed (it went offline; user
            // space reopens them when it is back, and this runs in between, as the
            // CPU switches before user space sees it). The events put in the slot
            // count from 0: so do the last values, or the first read of a new event
            // that has already passed the old one's last value would lose that much.
            last.leader = 0;
            last.members = [0; MAX_MEMBERS];
            (0, [0; MAX_MEMBERS])
        }
        Err(_) => (0, [0; MAX_MEMBERS]),
    };
    let grew = period != 0 || deltas.iter().any(|d| *d != 0);
    if grew {
        stats.period_sum += period;
        stats.switches += 1;
    }
    match next {
        None => {
            if grew {
                let key = TaskKey {
                    tgid: 0,
                    tid: 0,
                    cgroup_id: 0,
                    start: 0,
                    // SAFETY: helper without arguments.
                    cpu: unsafe { bpf_get_smp_processor_id() },
                    _pad: 0,
                };
                match charge(&key, 0, period, &deltas, None) {
                    Charged::Updated => {}
                    Charged::Inserted => stats.inserted += 1,
                    Charged::Dropped => stats.switch_dropped += 1,
                }
            }
        }
        Some(next) => {
            if pending.valid != 0 {
                flush(pending, stats, period, &deltas, true);
            } else if grew {
                match charge(&current_key(), 0, period, &deltas, None) {
                    Charged::Updated => {}
                    Charged::Inserted => stats.inserted += 1,
                    Charged::Dropped => stats.switch_dropped += 1,
                }
            }
            pending.task = next;
        }
    }
    pending.seq += 1;
    pending.switching = 0;
}

/// Adds the sample to its location's entry: the sampled instruction and, with
/// `LOCATIONS_STACKS`, the kernel and user call stacks.
#[inline(always)]
fn record_location(
    ctx: &PerfEventContext,
    mode: u32,
    task: &TaskKey,
    period: u64,
    deltas: &[u64; MAX_MEMBERS],
) {
    let mut key = LocKey {
        tgid: task.tgid,
        cpu: task.cpu,
        start: task.start,
        ip: sampled_ip(ctx),
        kernel_stack: NO_STACK,
        user_stack: NO_STACK,
        tid: task.tid,
        _pad: 0,
        cgroup_id: task.cgroup_id,
    };
    if mode == LOCATIONS_STACKS {
        // A sample taken in user mode has no kernel stack: only ask when the
        // interrupted instruction is a kernel one (the upper half).
        if key.ip >> 63 == 1 {
            key.kernel_stack = stack_id(ctx, u64::from(BPF_F_FAST_STACK_CMP), false);
        }
        key.user_stack = user_stack_id(ctx);
    }
    if skip(SKIP_LOC_MAP) {
        return;
    }
    if skip(SKIP_LOC_MAP_FOR_LOG) {
        bench_log(key, period, deltas);
        return;
    }
    if !skip(SKIP_LOC_RING) {
        let record = LocRecord {
            key,
            period,
            deltas: *deltas,
        };
        if skip(SKIP_LOC_BATCH) {
            // Bench only: a ring record per sample, a batch of one.
            if let Some(mut entry) = loc_ring(key.cpu).reserve::<LocSingle>(0) {
                entry.write(LocSingle {
                    head: LocBatchHead {
                        cpu: key.cpu,
                        len: 1,
                        number: u64::MAX,
                    },
                    record,
                });
                entry.submit(u64::from(BPF_RB_NO_WAKEUP));
                return;
            }
        } else if batch_location(&record) {
            return;
        }
        // The batch and the ring full (or, in an NMI, the ring's lock taken on
        // another CPU): the map takes it.
        count_location(|s| s.ring_full += 1);
    }
    match LOCATIONS.get_ptr_mut(key) {
        Some(value) => {
            // SAFETY: the entry's key holds this CPU, so only this CPU updates it.
            let value = unsafe { &mut *value };
            value.samples += 1;
            value.period_sum += period;
            for (count, delta) in value.counts.iter_mut().zip(deltas) {
                *count += delta;
            }
        }
        None => {
            let value = LocValue {
                samples: 1,
                period_sum: period,
                counts: *deltas,
            };
            if LOCATIONS.insert(key, value, u64::from(BPF_NOEXIST)).is_ok() {
                count_location(|s| s.inserted += 1);
            } else {
                count_location(|s| s.dropped += 1);
            }
        }
    }
}

/// Adds `record` to this CPU's batch (LOC_STAGE), and sends the batch to the CPU's
/// ring when it holds LOC_BATCH_FLUSH records; false when there was no room, the
/// batch full and the ring too (the caller puts the record in the map).
///
/// The batch's sequence number is odd while this changes it, as user space reads
/// the batch at each reading: the records a copy with an even number, unchanged by
/// the next copy, holds are that batch's first records for good (a batch only grows
/// until it is sent, and a sent batch comes with its number in the ring), so user
/// space adds them once and skips them when the batch comes through the ring.
/// Volatile writes keep the compiler from moving the number's writes past the
/// batch's (or merging them).
#[inline(always)]
fn batch_location(record: &LocRecord) -> bool {
    let Some(stage) = LOC_STAGE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU array slot; the sample program does not nest on one CPU, and
    // no other program touches LOC_STAGE.
    let stage = unsafe { &mut *stage };
    let seq = stage.seq;
    // SAFETY: writes to a valid, aligned field of the slot.
    unsafe { core::ptr::write_volatile(&raw mut stage.seq, seq + 1) };
    let mut len = stage.batch.head.len as usize;
    if len >= LOC_BATCH_RECORDS && send_batch(stage, LOC_BATCH_RECORDS) {
        len = 0;
    }
    let stored = match stage.batch.records.get_mut(len) {
        Some(slot) => {
            // SAFETY: as above.
            unsafe {
                core::ptr::write_volatile(slot, *record);
                core::ptr::write_volatile(&raw mut stage.batch.head.cpu, record.key.cpu);
                core::ptr::write_volatile(&raw mut stage.batch.head.len, len as u32 + 1);
            }
            if len + 1 >= LOC_BATCH_FLUSH {
                // A ring without room keeps the batch, which is sent by a later
                // sample: nothing is lost.
                send_batch(stage, len + 1);
            }
            true
        }
        None => false,
    };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&raw mut stage.seq, seq + 2) };
    stored
}

/// Sends the batch's head and first `len` records (its length) to this CPU's ring,
/// and starts the next batch; false when the ring has no room for it.
#[inline(always)]
fn send_batch(stage: &mut LocStage, len: usize) -> bool {
    if len > LOC_BATCH_RECORDS {
        return false;
    }
    let size = size_of::<LocBatchHead>() + len * size_of::<LocRecord>();
    let ring: *const RingBuf = loc_ring(stage.batch.head.cpu);
    // SAFETY: `ring` is one of the RINGBUF maps above (RingBuf is its map
    // definition, `repr(transparent)`); the data is `size` bytes of the slot's batch
    // (its head and at most LOC_BATCH_RECORDS records).
    let sent = unsafe {
        bpf_ringbuf_output(
            ring.cast_mut().cast(),
            (&raw mut stage.batch).cast(),
            size as u64,
            // Not woken: user space drains the ring on its own clock.
            u64::from(BPF_RB_NO_WAKEUP),
        )
    } == 0;
    if sent {
        // SAFETY: writes to valid, aligned fields of the slot.
        unsafe {
            core::ptr::write_volatile(&raw mut stage.batch.head.len, 0);
            core::ptr::write_volatile(
                &raw mut stage.batch.head.number,
                stage.batch.head.number + 1,
            );
        }
    }
    sent
}

/// Counts an event of the location half in this CPU's LOC_STATS: looked up only
/// then, as a sample whose location goes to the ring counts none.
#[inline(always)]
pub(crate) fn count_location(event: impl FnOnce(&mut LocStats)) {
    if let Some(stats) = LOC_STATS.get_ptr_mut(0) {
        // SAFETY: a per-CPU array slot; programs do not nest on one CPU.
        event(unsafe { &mut *stats });
    }
}

/// Bench only (`SKIP_LOC_MAP_FOR_LOG`): the location in a per-CPU log slot that
/// nothing reads, in place of the ring and the map.
#[inline(always)]
fn bench_log(key: LocKey, period: u64, deltas: &[u64; MAX_MEMBERS]) {
    let Some(log) = LOC_LOG.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot; the sample program does not nest on one CPU.
    let log = unsafe { &mut *log };
    if let Some(slot) = log.slots.get_mut(log.head as usize % LOC_LOG_SLOTS) {
        *slot = LocRecord {
            key,
            period,
            deltas: *deltas,
        };
    }
    log.head += 1;
}

/// The interrupted instruction's address, from the sample's registers.
#[inline(always)]
fn sampled_ip(ctx: &PerfEventContext) -> u64 {
    // SAFETY: the kernel passes a valid `bpf_perf_event_data`, whose registers the
    // verifier lets a perf_event program read.
    let regs = unsafe { &(*ctx.ctx).regs };
    #[cfg(bpf_target_arch = "x86_64")]
    let ip = regs.rip;
    #[cfg(bpf_target_arch = "aarch64")]
    let ip = regs.pc;
    #[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
    let ip = {
        let _ = regs;
        0u64
    };
    ip
}

/// The id of the current user stack: in USER_STACKS where the program walks it
/// itself (x86-64: from a sample in 64-bit user code, or on 6.2+ from the user
/// registers a task entered the kernel with), else in STACKS.
#[inline(always)]
fn user_stack_id(ctx: &PerfEventContext) -> i32 {
    #[cfg(bpf_target_arch = "x86_64")]
    if !skip(sampler_common::SKIP_OWN_USER_WALK) {
        // SAFETY: as in `sampled_ip`.
        let regs = unsafe { &(*ctx.ctx).regs };
        // `__USER_CS`: the registers are 64-bit user code's (a 32-bit task's frames
        // are 4 bytes: the kernel's walk).
        const USER_CS: u64 = 0x33;
        if regs.cs == USER_CS {
            return user_walk::walk_user_stack(regs.rip, regs.rsp, regs.rbp, 1);
        }
        let flags_offset = TASK_FLAGS_OFFSET.load();
        if flags_offset != 0 {
            // A sample in the kernel: the user registers its task entered with, as
            // the kernel's walk takes them, and not for a kernel thread or a user
            // worker (`PF_KTHREAD`, `PF_USER_WORKER`, `PF_IO_WORKER`), whose saved
            // registers are not its own, as the kernel's walk skips them.
            // SAFETY: helpers of the current task; its `flags` and registers are
            // read with plain loads the verifier checks against the kernel's BTF.
            let (flags, user) = unsafe {
                let task = aya_ebpf::helpers::generated::bpf_get_current_task_btf();
                let flags = *task.cast::<u8>().add(flags_offset as usize).cast::<u32>();
                let user = aya_ebpf::helpers::generated::bpf_task_pt_regs(task)
                    as *const aya_ebpf::bindings::pt_regs;
                (flags, user)
            };
            const NOT_OWN_REGS: u32 = 0x0020_0000 | 0x0000_4000 | 0x0000_0010;
            if flags & NOT_OWN_REGS == 0 {
                // SAFETY: as above.
                let (cs, ip, sp, bp) =
                    unsafe { ((*user).cs, (*user).rip, (*user).rsp, (*user).rbp) };
                if cs == USER_CS {
                    return user_walk::walk_user_stack(ip, sp, bp, 0);
                }
            }
        }
    }
    stack_id(
        ctx,
        u64::from(BPF_F_USER_STACK | BPF_F_FAST_STACK_CMP),
        true,
    )
}

/// The id of the current kernel (or, with `user`, user) stack in STACKS; a negative
/// errno when it could not be recorded, counted in LOC_STATS.
#[inline(always)]
fn stack_id(ctx: &PerfEventContext, flags: u64, user: bool) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(err) => {
            count_location(|stats| match err {
                -17 => stats.stack_collisions += 1,      // EEXIST
                -12 => stats.stack_full += 1,            // ENOMEM
                -14 if user => stats.no_user_stack += 1, // EFAULT
                _ => stats.stack_errors += 1,
            });
            err
        }
    }
}

/// The current process's start time: `current->group_leader->start_time`, read at
/// the offsets the loader found in the kernel's BTF; 0 when they are unknown or a
/// read fails.
#[inline(always)]
fn process_start(task: u64) -> u64 {
    let (leader_off, start_off) = (LEADER_OFFSET.load(), START_OFFSET.load());
    if start_off == 0 {
        return 0;
    }
    let task = task as usize;
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling path:
    // a bad address yields an error, never a fault.
    let Ok(leader) =
        (unsafe { bpf_probe_read_kernel((task + leader_off as usize) as *const usize) })
    else {
        return 0;
    };
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((leader + start_off as usize) as *const u64) }.unwrap_or(0)
}

/// How much the sampling leader counted since the previous sample on this CPU (from
/// its value at `last`, which this updates); the nominal sample period when its value
/// cannot be read.
///
/// The count is read where the event keeps it (`ctx->event->count`): every overflow
/// path brings it up to date before the program runs (the PMU interrupt handlers
/// update the overflowed counter, the software clocks' timer reads its clock, the
/// other software events add before they overflow), so it is what
/// `bpf_perf_prog_read_value` would return, without that helper's second reading of
/// the counter and of the enabled and running times (half the program's cost on this
/// VM): a kernel read of the event's address in the context, cached until the next
/// switch, then at each sample one plain load of its count through a BTF pointer
/// (see [`as_perf_event`], Linux 6.2+), or a kernel read before 6.2. Without the
/// offsets, the helper.
#[inline(always)]
fn leader_growth(ctx: &PerfEventContext, last: &mut LastValues) -> u64 {
    let (event_off, count_off) = (CTX_EVENT_OFFSET.load(), EVENT_COUNT_OFFSET.load());
    if event_off != 0 && count_off != 0 {
        if last.event == 0 {
            // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling
            // path: a bad address yields an error, never a fault. The context is the
            // kernel's `bpf_perf_event_data_kern`, whose event is the one sampled.
            last.event = unsafe {
                bpf_probe_read_kernel((ctx.ctx as usize + event_off as usize) as *const u64)
            }
            .unwrap_or(0);
        }
        if last.event != 0 {
            let event = as_perf_event(last.event);
            if event != 0 {
                // SAFETY: `event` is this CPU's leader as a BTF pointer and the offset
                // is its `count`'s, from the kernel's BTF; the verifier checks the
                // load against that type and makes it fault-safe (a fault reads 0).
                let count =
                    unsafe { core::ptr::read_volatile((event + count_off as usize) as *const u64) };
                return growth(count, &mut last.leader);
            }
        }
        // SAFETY: as above; `last.event` is this CPU's leader, read from a context
        // since the last context switch on this CPU.
        let count = unsafe {
            bpf_probe_read_kernel((last.event as usize + count_off as usize) as *const u64)
        };
        return match count {
            Ok(count) if last.event != 0 => growth(count, &mut last.leader),
            // SAFETY: as below.
            _ => unsafe { (*ctx.ctx).sample_period },
        };
    }
    let mut value = bpf_perf_event_value {
        counter: 0,
        enabled: 0,
        running: 0,
    };
    // SAFETY: the kernel passes a valid `bpf_perf_event_data` context; `value` is a
    // valid, writable buffer of the size passed.
    let ret = unsafe {
        bpf_perf_prog_read_value(
            ctx.ctx,
            &mut value,
            size_of::<bpf_perf_event_value>() as u32,
        )
    };
    if ret != 0 {
        // SAFETY: the kernel passes a valid `bpf_perf_event_data` context; the
        // verifier rewrites this read of `sample_period` into a read of the real
        // sample data.
        return unsafe { (*ctx.ctx).sample_period };
    }
    growth(value.counter, &mut last.leader)
}

/// `event` (a kernel address) as a BTF pointer to `struct perf_event`, from
/// `bpf_rdonly_cast(event, PERF_EVENT_TYPE)`, a kernel function the verifier turns
/// into a register move; 0 on a kernel without it. The call is written as one raw
/// instruction ([`RDONLY_CAST_CALL`]) whose function id the loader fills in (or turns
/// into `r0 = 0`), as aya links no kernel functions.
///
/// The verifier lets the program load the event's fields through the result with
/// plain loads (a fault reads 0) instead of `bpf_probe_read_kernel` calls, checking
/// each against the kernel's type. It is an untrusted pointer, which costs the
/// verifier nothing more (a trusted one, as `bpf_cast_to_kern_ctx` gives the context,
/// has each pointer loaded through it checked against the kernel's BTF by name).
#[inline(always)]
fn as_perf_event(event: u64) -> usize {
    let typed: usize;
    // SAFETY: the instruction is a call of `bpf_rdonly_cast(r1, r2)` (it returns its
    // first argument, retyped) or `r0 = 0`; r2 holds the type's id, a constant of
    // the read-only data, as the function wants; r0 to r5 are marked clobbered, as
    // a call clobbers them. It touches no memory and no stack.
    unsafe {
        core::arch::asm!(
            ".quad {insn}",
            insn = const RDONLY_CAST_CALL,
            inout("r1") event => _,
            inout("r2") u64::from(PERF_EVENT_TYPE.load()) => _,
            lateout("r0") typed,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(nostack, nomem, preserves_flags),
        );
    }
    typed
}

/// How much each member counted since the previous sample on this CPU.
#[inline(always)]
fn member_deltas(last: &mut [u64; MAX_MEMBERS]) -> [u64; MAX_MEMBERS] {
    let mut deltas = [0u64; MAX_MEMBERS];
    let n = NR_MEMBERS.load();
    if n == 0 {
        return deltas;
    }
    // Written out per member: the verifier needs a constant map at each call.
    deltas[0] = read_member((&raw const MEMBER0).cast_mut().cast(), &mut last[0]);
    if n > 1 {
        deltas[1] = read_member((&raw const MEMBER1).cast_mut().cast(), &mut last[1]);
    }
    if n > 2 {
        deltas[2] = read_member((&raw const MEMBER2).cast_mut().cast(), &mut last[2]);
    }
    if n > 3 {
        deltas[3] = read_member((&raw const MEMBER3).cast_mut().cast(), &mut last[3]);
    }
    deltas
}

/// A counter's growth from `last` to `now`, with `last` moved to `now`. A counter
/// below its last value was opened again (its CPU went offline and came back) and
/// counts from 0: all of `now` is growth.
#[inline(always)]
fn growth(now: u64, last: &mut u64) -> u64 {
    let d = if now >= *last { now - *last } else { now };
    *last = now;
    d
}

/// The growth of this CPU's event in `map` since `last`, which it then updates; 0 when
/// the CPU has no event there.
#[inline(always)]
fn read_member(map: *mut c_void, last: &mut u64) -> u64 {
    match read_counter(map) {
        Ok(now) => growth(now, last),
        Err(ENOENT) => {
            // An empty slot: a reopened event counts from 0 (see charge_switch).
            *last = 0;
            0
        }
        Err(_) => 0,
    }
}

/// `bpf_perf_event_read_value`'s error for an empty slot.
const ENOENT: i64 = -2;

/// The value of this CPU's event in the PERF_EVENT_ARRAY `map`; the helper's error
/// (`ENOENT`: the slot is empty) when the read fails.
#[inline(always)]
fn read_counter(map: *mut c_void) -> Result<u64, i64> {
    let mut value = bpf_perf_event_value {
        counter: 0,
        enabled: 0,
        running: 0,
    };
    // SAFETY: `map` is one of the PERF_EVENT_ARRAYs above; `value` is a valid,
    // writable buffer of the size passed.
    let ret = unsafe {
        bpf_perf_event_read_value(
            map,
            BPF_F_CURRENT_CPU,
            &mut value,
            size_of::<bpf_perf_event_value>() as u32,
        )
    };
    if ret == 0 {
        Ok(value.counter)
    } else {
        Err(ret)
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
