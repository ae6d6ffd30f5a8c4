//! Records that the BPF programs (`sampler-ebpf`) and the loader (`sampler`) agree on.
//!
//! Every type is `#[repr(C)]`, made of fixed-width integers, with no implicit padding
//! (checked by the size asserts at the bottom), so the kernel side and user side read
//! the same bytes. With the `user` feature the types implement `aya::Pod` so they can be
//! read from maps.
#![no_std]

/// Name of the BPF `perf_event` program in the object.
pub const PROGRAM_NAME: &str = "on_sample";
/// Name of the `raw_tracepoint` program on `sched_switch` that charges each task that
/// leaves a CPU with the counters' growth since the last sample or switch there.
pub const SWITCH_PROGRAM_NAME: &str = "on_switch";
/// Name of the `kprobe` program for where a context switch ends
/// (`finish_task_switch`): the switch's own counts go to the idle row.
pub const SWITCH_END_PROGRAM_NAME: &str = "on_switch_end";
/// Name of the `PERF_EVENT_ARRAY` of each CPU's sampling leader, indexed by CPU (the
/// switch program reads it).
pub const LEADER_MAP: &str = "LEADER";
/// Name of the per-task aggregation map (`LRU_HASH`, [`TaskKey`] -> [`TaskValue`]).
pub const TASKS_MAP: &str = "TASKS";
/// Name of the per-CPU statistics map (`PERCPU_ARRAY` of one [`CpuStats`]).
pub const CPU_STATS_MAP: &str = "CPU_STATS";
/// Names of the `PERF_EVENT_ARRAY`s of the sampling group's counting members, one per
/// member position, indexed by CPU: member `i` of CPU `c` sits at `MEMBER_MAPS[i][c]`.
/// (One array per member because loaders clamp a perf event array to the CPU count.)
pub const MEMBER_MAPS: [&str; MAX_MEMBERS] = ["MEMBER0", "MEMBER1", "MEMBER2", "MEMBER3"];
/// Name of the per-CPU array of the last seen counter values ([`LastValues`]).
pub const LAST_MAP: &str = "LAST";
/// Name of the global holding how many members the sampling group has (at most
/// [`MAX_MEMBERS`]); set by the loader.
pub const NR_MEMBERS_GLOBAL: &str = "NR_MEMBERS";
/// Names of the globals holding the byte offsets of `task_struct.group_leader` and
/// `task_struct.start_time` (from the kernel's BTF, set by the loader); 0 when unknown,
/// and then [`TaskKey::start`] is 0.
pub const LEADER_OFFSET_GLOBAL: &str = "LEADER_OFFSET";
pub const START_OFFSET_GLOBAL: &str = "START_OFFSET";
/// Names of the globals holding the byte offsets of `bpf_perf_event_data_kern.event`
/// and `perf_event.count` (from the kernel's BTF, set by the loader); 0 when unknown,
/// and then the program reads the leader's count through a helper.
pub const CTX_EVENT_OFFSET_GLOBAL: &str = "CTX_EVENT_OFFSET";
pub const EVENT_COUNT_OFFSET_GLOBAL: &str = "EVENT_COUNT_OFFSET";

/// Name of the global holding the BTF id of `struct perf_event` in the kernel's BTF
/// (set by the loader; 0 when unknown), the type [`RDONLY_CAST_CALL`] gives the event.
pub const PERF_EVENT_TYPE_GLOBAL: &str = "PERF_EVENT_TYPE";
/// Name of the global with `task_struct`'s `flags` offset, set where the kernel gives
/// a task's user registers to the program (`bpf_task_pt_regs`, with
/// `bpf_rdonly_cast`): a sample in the kernel then walks its task's user stack from
/// them (x86-64); 0 leaves those to the kernel's walk.
pub const TASK_FLAGS_OFFSET_GLOBAL: &str = "TASK_FLAGS_OFFSET";

/// The instruction the sample program is built with where it calls the kernel
/// function `bpf_rdonly_cast` (Linux 6.2+): a kernel-function call (`BPF_JMP |
/// BPF_CALL`, source register `BPF_PSEUDO_KFUNC_CALL`) whose immediate is a
/// placeholder, [`RDONLY_CAST_PLACEHOLDER`]. aya links no kernel functions, so the
/// loader puts the function's BTF id from the running kernel's BTF in its place, or,
/// on a kernel without the function, [`RDONLY_CAST_NONE`]. As one little-endian word.
pub const RDONLY_CAST_CALL: u64 = (RDONLY_CAST_PLACEHOLDER as u64) << 32 | 0x2085;
/// The placeholder immediate of [`RDONLY_CAST_CALL`].
pub const RDONLY_CAST_PLACEHOLDER: u32 = 0x726f_6361;
/// `r0 = 0` (`BPF_ALU64 | BPF_MOV | BPF_K`): what a [`RDONLY_CAST_CALL`] becomes on a
/// kernel without the function; the program then reads the count as before 6.2.
pub const RDONLY_CAST_NONE: u64 = 0xb7;

/// Name of the global holding the most that [`LOC_MODE_MAP`] may ask for (one of the
/// `LOCATIONS_*` values, set by the loader): the verifier prunes what it rules out.
pub const MAX_LOC_MODE_GLOBAL: &str = "MAX_LOC_MODE";

/// Name of the global that takes pieces out of the sample program, for the
/// benchmarks' breakdown only (`sampler stat --bench-skip`): a mask of `SKIP_*` bits,
/// 0 in every real run. It is read-only data, so the verifier prunes what a run skips.
pub const BENCH_SKIP_GLOBAL: &str = "BENCH_SKIP";
/// Skip the leader's counter read (`bpf_perf_prog_read_value`).
pub const SKIP_LEADER_READ: u32 = 1 << 0;
/// Skip the members' counter reads (`bpf_perf_event_read_value` each).
pub const SKIP_MEMBER_READS: u32 = 1 << 1;
/// Skip the pid and tid helper (`bpf_get_current_pid_tgid`).
pub const SKIP_PID: u32 = 1 << 2;
/// Skip the cgroup helper (`bpf_get_current_cgroup_id`).
pub const SKIP_CGROUP: u32 = 1 << 3;
/// Skip the process start time (the task pointer and two kernel reads).
pub const SKIP_START: u32 = 1 << 4;
/// Skip the task attribution (the pending counts, and through them the task map).
pub const SKIP_TASK_MAP: u32 = 1 << 5;
/// Skip the location mode's lookup (and so the location half).
pub const SKIP_LOC_MODE: u32 = 1 << 6;
/// Skip the per-CPU cache of task keys (every first sample after a switch fetches
/// the key with the helpers).
pub const SKIP_KEY_CACHE: u32 = 1 << 7;
/// Skip the location's store, the ring and the map (and, unless the stacks are
/// walked for it, the location's key).
pub const SKIP_LOC_MAP: u32 = 1 << 8;
/// Take the ring buffer out of the location store: every location goes to the
/// location map, as when the ring is full.
pub const SKIP_LOC_RING: u32 = 1 << 9;
/// Write each sample's location to a per-CPU log slot (an array lookup and a write)
/// in place of the location map's update: what any store costs at the least.
/// Nothing reads the log ([`LOC_LOG_MAP`]), so the run's locations are lost.
pub const SKIP_LOC_MAP_FOR_LOG: u32 = 1 << 10;
/// Take the per-CPU batch out of the ring's path: each location is a ring record
/// of its own (a batch of one), reserved and submitted at its sample.
pub const SKIP_LOC_BATCH: u32 = 1 << 11;
/// Leave the user stacks to the kernel's walk (`bpf_get_stackid`) where the program
/// walks them itself (x86-64), as before it did.
pub const SKIP_OWN_USER_WALK: u32 = 1 << 12;
/// The names `--bench-skip` takes, with their bits.
pub const SKIP_NAMES: [(&str, u32); 13] = [
    ("leader-read", SKIP_LEADER_READ),
    ("member-reads", SKIP_MEMBER_READS),
    ("pid", SKIP_PID),
    ("cgroup", SKIP_CGROUP),
    ("start", SKIP_START),
    ("task-map", SKIP_TASK_MAP),
    ("loc-mode", SKIP_LOC_MODE),
    ("key-cache", SKIP_KEY_CACHE),
    ("loc-map", SKIP_LOC_MAP),
    ("loc-ring", SKIP_LOC_RING),
    ("loc-map-for-log", SKIP_LOC_MAP_FOR_LOG),
    ("loc-batch", SKIP_LOC_BATCH),
    ("own-user-walk", SKIP_OWN_USER_WALK),
];

/// Name of the per-location aggregation map (`LRU_HASH`, [`LocKey`] -> [`LocValue`]):
/// where in the code each sample landed, filled only when locations are asked for.
pub const LOCATIONS_MAP: &str = "LOCATIONS";
/// Names of the `RINGBUF`s that take the samples' locations, in batches ([`LocBatch`]
/// items: each CPU's [`LocStage`] when it holds [`LOC_BATCH_FLUSH`] records), CPU
/// `c`'s in ring `c % LOC_RINGS`, so that CPUs share a ring's lock and positions only
/// beyond 8 CPUs; user space drains them every few tens of milliseconds and sums the
/// records per key, and at a reading adds what the CPUs' batches hold but have not
/// sent yet. A sample that finds its batch full and the ring too goes to
/// [`LOCATIONS_MAP`], so none is lost ([`LocStats::ring_full`] counts them). The
/// loader sizes them: one page for a ring no CPU uses, or while locations cannot be
/// turned on.
pub const LOC_RING_MAPS: [&str; LOC_RINGS] = [
    "LOC_RING_0",
    "LOC_RING_1",
    "LOC_RING_2",
    "LOC_RING_3",
    "LOC_RING_4",
    "LOC_RING_5",
    "LOC_RING_6",
    "LOC_RING_7",
];
/// How many location rings there are.
pub const LOC_RINGS: usize = 8;
/// Name of the bench-only per-CPU array of one [`LocLog`] ([`SKIP_LOC_MAP_FOR_LOG`]).
pub const LOC_LOG_MAP: &str = "LOC_LOG";
/// Slots of a [`LocLog`].
pub const LOC_LOG_SLOTS: usize = 32;

/// One sample's location, as the ring (and the bench-only log) holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocRecord {
    pub key: LocKey,
    pub period: u64,
    pub deltas: [u64; MAX_MEMBERS],
}

/// Name of the per-CPU array of one [`LocStage`]: each CPU's batch of locations not
/// yet sent to its ring.
pub const LOC_STAGE_MAP: &str = "LOC_STAGE";
/// Records a batch holds at most: twice [`LOC_BATCH_FLUSH`], so that a batch whose
/// ring was full keeps taking samples while the ring drains.
pub const LOC_BATCH_RECORDS: usize = 32;
/// A CPU sends its batch to the ring when it holds this many records (or more, when
/// the ring was full at the last try).
pub const LOC_BATCH_FLUSH: usize = 16;

/// A batch's header, as a ring item starts: whose it is, how many records follow,
/// and its number (per CPU, from 0, one more for each batch sent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocBatchHead {
    pub cpu: u32,
    pub len: u32,
    pub number: u64,
}

/// A CPU's batch of locations: the head and up to [`LOC_BATCH_RECORDS`] records;
/// a ring item holds the head and the `len` records in use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LocBatch {
    pub head: LocBatchHead,
    pub records: [LocRecord; LOC_BATCH_RECORDS],
}

/// A CPU's batch as it fills ([`LOC_STAGE_MAP`]), with a sequence number that is
/// odd while the program changes the batch, so that user space can tell a copy it
/// read whole from one read in the middle of a change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LocStage {
    pub seq: u64,
    pub batch: LocBatch,
}

/// A ring item of one location ([`SKIP_LOC_BATCH`], bench only): a batch of one,
/// numbered `u64::MAX`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LocSingle {
    pub head: LocBatchHead,
    pub record: LocRecord,
}

/// A per-CPU log of the last [`LOC_LOG_SLOTS`] samples' locations (bench only).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LocLog {
    /// Samples written so far; the next goes to slot `head % LOC_LOG_SLOTS`.
    pub head: u64,
    pub slots: [LocRecord; LOC_LOG_SLOTS],
}

/// Name of the `STACK_TRACE` map of the call stacks (with `-g`).
pub const STACKS_MAP: &str = "STACKS";
/// Name of the per-CPU array of one [`LocStats`].
pub const LOC_STATS_MAP: &str = "LOC_STATS";
/// Name of the one-slot `ARRAY` that says what the program records of a sample's
/// location (one of the `LOCATIONS_*` values); user space may change it while the
/// program runs.
pub const LOC_MODE_MAP: &str = "LOC_MODE";
/// Locations off: the program costs what the task view costs.
pub const LOCATIONS_OFF: u32 = 0;
/// The sampled instruction only.
pub const LOCATIONS_IP: u32 = 1;
/// The sampled instruction and the kernel and user call stacks.
pub const LOCATIONS_STACKS: u32 = 2;
/// [`LocKey`]'s stack id when there is no stack (not asked for, or none recorded).
pub const NO_STACK: i32 = -1;
/// Default capacity of [`LOCATIONS_MAP`] (the loader sizes it per CPU).
pub const DEFAULT_LOC_ENTRIES: u32 = 16_384;
/// Frames kept per stack in [`STACKS_MAP`] (the kernel's `PERF_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 127;
/// Name of the `HASH` of the user stacks the program walks itself (x86-64, samples
/// taken in 64-bit user code), by [`UserStack`] id.
pub const USER_STACKS_MAP: &str = "USER_STACKS";
/// Name of the per-CPU array of one [`UserStack`] where the program builds a walk.
pub const USER_WALK_MAP: &str = "USER_WALK";
/// The bit set in every [`USER_STACKS_MAP`] id ([`STACKS_MAP`]'s ids are bucket
/// indices, below it), so that one `i32` in [`LocKey`] names a stack of either map.
///
/// The stack of such an id, for a location whose `ip` is a user address (a sample
/// taken in user code), holds 0 for its innermost frame: that is the location's
/// `ip` (see [`user_stack_frames`]), so the samples of one call path share a stack
/// whatever instruction each landed on.
pub const USER_STACK_ID_BIT: u32 = 1 << 30;

/// The user frames of a location, innermost first, from its `user_stack` id, its
/// `ip` (`ip_is_user`: a user address) and the frames stored under the id: the
/// stored frames, with the location's `ip` first where the program's own walk left
/// it out ([`USER_STACK_ID_BIT`]).
pub fn user_stack_frames(
    user_stack: i32,
    ip: u64,
    ip_is_user: bool,
    stored: &[u64],
) -> impl Iterator<Item = u64> + '_ {
    let at_ip = user_stack >= 0 && user_stack as u32 & USER_STACK_ID_BIT != 0 && ip_is_user;
    let (first, rest) = match stored.split_first() {
        Some((&first, rest)) => (Some(if at_ip { ip } else { first }), rest),
        None => (None, stored),
    };
    first.into_iter().chain(rest.iter().copied())
}

/// The farthest above the stack pointer that the first frame pointer of a walk may
/// be (a frame of 8 MiB, the default stack limit): past it, the register holds
/// something else, and the stack is the sampled instruction alone.
pub const FIRST_FRAME_MAX: u64 = 8 << 20;

/// A user stack the program walked: `frames[..len]`, innermost (the sampled
/// instruction) first, as `bpf_get_stackid` would have recorded it but for a sample
/// taken in user code, whose sampled instruction is 0 here (see
/// [`USER_STACK_ID_BIT`]), with the 64-bit hash of the frames that its id is folded
/// from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserStack {
    pub hash: u64,
    pub len: u32,
    pub _pad: u32,
    pub frames: [u64; MAX_STACK_DEPTH],
}
const _: () = assert!(size_of::<UserStack>() == 1032);

/// Counting members of the sampling group whose deltas are attributed per task.
pub const MAX_MEMBERS: usize = 4;

/// Default capacity of [`TASKS_MAP`]. The map is an LRU hash: when full, the kernel
/// evicts the least recently updated entries instead of failing the insert, so a host
/// with many short-lived tasks cannot exhaust it; evictions are counted as
/// `CpuStats::inserted - live entries`.
pub const DEFAULT_TASK_ENTRIES: u32 = 16_384;

/// Length of a task's command name (`TASK_COMM_LEN` in the kernel).
pub const COMM_LEN: usize = 16;

/// A task's command name, NUL padded. Aligned to 8 bytes, so that the sample
/// program copies, zeroes and compares it as two words: as a plain byte array
/// (alignment 1) each copy took 16 byte loads and stores, on every path the
/// verifier walks (measured: about half of the instructions it walked in the
/// sample program).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Comm(pub [u8; COMM_LEN]);

impl Comm {
    /// The name up to its first NUL, as bytes.
    pub fn bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.0[..end]
    }
}

/// Which task was interrupted by a sample, and where.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    /// Process id (kernel `tgid`); 0 is the idle task.
    pub tgid: u32,
    /// Thread id (kernel `pid`).
    pub tid: u32,
    /// cgroup v2 id of the task at the time of the sample.
    pub cgroup_id: u64,
    /// Start time of the process (its group leader's `start_time`, CLOCK_MONOTONIC
    /// nanoseconds): with `tgid`, it tells a process apart from an earlier one that had
    /// the same pid. 0 when the kernel's layout is unknown.
    pub start: u64,
    /// CPU the sample was taken on.
    pub cpu: u32,
    /// Explicit padding: 0 in the kernel (the key is hashed byte by byte). User
    /// space numbers the ring's sums here (see `LocRing`), so that a key read from
    /// the ring is never taken for the same key from the map, nor for an earlier
    /// sum of the same key that was evicted.
    pub _pad: u32,
}

/// What the kernel aggregated for one [`TaskKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskValue {
    /// Number of overflow samples.
    pub samples: u64,
    /// Sum over the samples of the sampling counter's growth since the previous sample
    /// on this CPU (nanoseconds for `cpu-clock`, cycles for `cycles`): what each sample
    /// stands for. The nominal sample period where the counter cannot be read.
    pub period_sum: u64,
    /// Per member of the sampling group: the counter's growth since the previous
    /// sample on this CPU, summed over this task's samples.
    pub counts: [u64; MAX_MEMBERS],
    /// The task's command name, NUL padded: fetched when the entry is created and every
    /// 64th sample after (so a name changed by exec() shows). Recorded in the kernel so
    /// that tasks that exit before user space reads the map keep their name.
    pub comm: Comm,
}

/// Where one sample landed, and for which process: the key of [`LOCATIONS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocKey {
    /// Process id (kernel `tgid`); 0 is the idle task.
    pub tgid: u32,
    /// CPU the sample was taken on (so that each CPU updates its own entries).
    pub cpu: u32,
    /// The process's start time, as [`TaskKey::start`].
    pub start: u64,
    /// The sampled instruction's address: a kernel address when the sample
    /// interrupted the kernel, else an address in the process.
    pub ip: u64,
    /// Id of the kernel call stack in [`STACKS_MAP`], or [`NO_STACK`], or a negative
    /// errno from `bpf_get_stackid` (counted in [`LocStats`]).
    pub kernel_stack: i32,
    /// Id of the user call stack, as `kernel_stack`.
    pub user_stack: i32,
    /// Thread id (kernel `pid`): profiles label each sample with its thread.
    pub tid: u32,
    /// Explicit padding: 0 in the kernel (the key is hashed byte by byte). User
    /// space numbers the ring's sums here (see `LocRing`), so that a key read from
    /// the ring is never taken for the same key from the map, nor for an earlier
    /// sum of the same key that was evicted.
    pub _pad: u32,
    /// cgroup v2 id of the task at the time of the sample (its container).
    pub cgroup_id: u64,
}

/// What the kernel aggregated for one [`LocKey`]: as [`TaskValue`] without the name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocValue {
    pub samples: u64,
    pub period_sum: u64,
    pub counts: [u64; MAX_MEMBERS],
}

/// Per-CPU counters of the location half of the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocStats {
    /// New [`LOCATIONS_MAP`] entries this CPU created (to count LRU evictions).
    pub inserted: u64,
    /// Samples whose location could not be recorded (map update failed).
    pub dropped: u64,
    /// Stacks not recorded because another stack had the same hash (`EEXIST`), in
    /// [`STACKS_MAP`] or [`USER_STACKS_MAP`].
    pub stack_collisions: u64,
    /// Stacks not recorded because the stack map was full (`ENOMEM`; `E2BIG` from
    /// [`USER_STACKS_MAP`]).
    pub stack_full: u64,
    /// User stacks with no frames (`EFAULT`: kernel threads, or the unwinder found
    /// nothing to walk).
    pub no_user_stack: u64,
    /// Other `bpf_get_stackid` failures.
    pub stack_errors: u64,
    /// Samples whose location went to the location map because the ring was full.
    pub ring_full: u64,
}

/// Per-CPU counters of the BPF program itself (one entry of a `PERCPU_ARRAY`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Samples the program saw on this CPU (including dropped ones): 0 in the map,
    /// where the program counts them in [`Pending::samples`]; user space puts them
    /// here when it reads the map.
    pub samples: u64,
    /// Sum of the sampling counter's growth between samples on this CPU (as
    /// [`TaskValue::period_sum`]): up to the last sample, what `read()` of the
    /// sampling event counted.
    pub period_sum: u64,
    /// New [`TASKS_MAP`] entries this CPU created (to count LRU evictions).
    pub inserted: u64,
    /// Samples that could not be recorded per task (map update failed).
    pub dropped: u64,
    /// Context switches at which the switch program charged the leaving task with
    /// the counters' growth since the last sample or switch.
    pub switches: u64,
    /// Such charges that could not be recorded (map update failed): their counts
    /// are missing from the task view, not from the CPU's sums.
    pub switch_dropped: u64,
}

/// What the samples of the task now running on one CPU added since it was switched
/// in (one entry of the `PERCPU_ARRAY` [`PENDING_MAP`]): the sample program's fast
/// path adds here, with no hash lookup, no helper for the task's identity and no
/// counter read; the switch program moves it into [`TASKS_MAP`] when the task leaves
/// the CPU, with what the counters gained since the last move (as the sample program
/// does when the task's key changed while it ran). With locations off, the counts
/// here are the samples only, and what the counters gained since [`LAST_MAP`]'s
/// values is the task's too. User space adds both to the task map's entry when
/// `seq` is even and the same before and after its reads of the task map, of
/// [`LAST_MAP`] and of the counters: no move, and no change of the last values, ran
/// meanwhile, so the task map holds none of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// 1 while the switch program runs on this CPU: a sample whose interrupt comes
    /// in the middle of it (an NMI on x86) counts the sample and leaves the pending
    /// counts and the last values to the switch program. (First, with `valid`,
    /// `samples` and `value.samples`: the fields every sample reads, in one cache
    /// line.)
    pub switching: u64,
    /// 1 while `key` and `value` hold samples not yet moved.
    pub valid: u64,
    /// Samples the program saw on this CPU (including dropped ones): counted here,
    /// not in [`CpuStats`], so that the fast path touches this value alone. User
    /// space reads it into [`CpuStats::samples`].
    pub samples: u64,
    /// The counts so far, and the task's name (at the first sample, and every
    /// [`COMM_REFRESH`] samples).
    pub value: TaskValue,
    pub key: TaskKey,
    /// The kernel's address of the task (`struct task_struct`) the last context
    /// switch on this CPU switched to (0 before the first): only its samples start
    /// pending counts.
    pub task: u64,
    /// Bumped before and after each move into the task map and each change of
    /// [`LAST_MAP`]'s values (odd meanwhile).
    pub seq: u64,
}

/// How often (in samples of one task on one CPU) the sample program fetches the
/// task's name and identity again: a process that calls exec() gets its new name, a
/// task moved to another cgroup (or an exec() by a thread, which takes the leader's
/// tid) its new key, within this many samples, even when it never leaves the CPU.
/// The first sample after a switch takes the key from the program's per-CPU cache
/// of recent tasks' keys when the task's thread start time and name still match
/// (so an exec() and a new task at a reused address miss it), and at most this many
/// times after the helpers gave it: a cgroup move shows within this many of the
/// task's switches back onto the CPU.
pub const COMM_REFRESH: u64 = 64;

/// Name of the per-CPU array of one [`Pending`].
pub const PENDING_MAP: &str = "PENDING";

/// The counter values where the program last read them on one CPU (a switch, a
/// key change, or with locations on, a sample): the sampling leader's and each
/// member's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastValues {
    pub leader: u64,
    pub members: [u64; MAX_MEMBERS],
    /// The kernel's address of this CPU's sampling leader (`struct perf_event`), as
    /// the last sample read it from its context; 0 after every context switch, so
    /// that an event reopened after CPU hotplug (the CPU switches on its way down
    /// and up) is never read at its old address.
    pub event: u64,
}

impl TaskValue {
    /// The command name up to its first NUL, as bytes.
    pub fn comm_bytes(&self) -> &[u8] {
        self.comm.bytes()
    }
}

const _: () = assert!(size_of::<TaskKey>() == 32);
const _: () = assert!(size_of::<TaskValue>() == 64);
const _: () = assert!(size_of::<LastValues>() == 8 * (2 + MAX_MEMBERS));
const _: () = assert!(size_of::<CpuStats>() == 48);
const _: () = assert!(size_of::<Pending>() == 136);
const _: () = assert!(size_of::<LocKey>() == 48);
const _: () = assert!(size_of::<LocValue>() == 48);
const _: () = assert!(size_of::<LocStats>() == 56);
const _: () = assert!(size_of::<LocRecord>() == 48 + 8 * (1 + MAX_MEMBERS));
const _: () = assert!(size_of::<LocBatchHead>() == 16);
const _: () = assert!(
    size_of::<LocBatch>() == size_of::<LocBatchHead>() + LOC_BATCH_RECORDS * size_of::<LocRecord>()
);
const _: () = assert!(size_of::<LocStage>() == 8 + size_of::<LocBatch>());
const _: () = assert!(LOC_BATCH_FLUSH < LOC_BATCH_RECORDS);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, only integer fields, no implicit padding (size asserted
    // above); every bit pattern is a valid value.
    unsafe impl aya::Pod for super::TaskKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CpuStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LastValues {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Pending {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocStage {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UserStack {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn comm_stops_at_first_nul() {
        let mut v = TaskValue::default();
        v.comm.0[..4].copy_from_slice(b"bash");
        assert_eq!(v.comm_bytes(), b"bash");
        v.comm = Comm([b'x'; COMM_LEN]);
        assert_eq!(v.comm_bytes().len(), COMM_LEN);
    }

    #[test]
    fn names_compare_whole_and_start_empty() {
        let name = |text: &[u8]| {
            let mut c = Comm::default();
            c.0[..text.len()].copy_from_slice(text);
            c
        };
        assert_eq!(Comm::default().0, [0; COMM_LEN]);
        assert!(name(b"bash") == name(b"bash"));
        assert!(name(b"bash") != name(b"bas"));
        // A difference in the second word, and in the last byte, counts too.
        assert!(name(b"kworker/0:1-ev1") != name(b"kworker/0:1-ev2"));
        let full = Comm([b'x'; COMM_LEN]);
        let mut last = full;
        last.0[COMM_LEN - 1] = b'y';
        assert!(full != last);
        assert!(full == full);
        assert_eq!(size_of::<Comm>(), COMM_LEN);
        assert_eq!(align_of::<Comm>(), 8);
    }

    #[test]
    fn an_own_user_stack_of_a_user_sample_starts_at_its_ip() {
        let frames = |id: i32, ip: u64, user: bool, stored: &[u64]| -> std::vec::Vec<u64> {
            user_stack_frames(id, ip, user, stored).collect()
        };
        let own = (USER_STACK_ID_BIT | 7) as i32;
        // A sample in user code: its ip, then the stored return addresses.
        assert_eq!(
            frames(own, 0x10, true, &[0, 0x20, 0x30]),
            [0x10, 0x20, 0x30]
        );
        assert_eq!(frames(own, 0x10, true, &[0]), [0x10]);
        // A sample in the kernel: the stored frames begin at the user registers' ip.
        let kernel_ip = 0xffff_ffff_8100_0000;
        assert_eq!(frames(own, kernel_ip, false, &[0x18, 0x20]), [0x18, 0x20]);
        // The kernel's stack map records the ip itself.
        assert_eq!(frames(7, 0x10, true, &[0x10, 0x20]), [0x10, 0x20]);
        assert_eq!(frames(-14, 0x10, true, &[0x10, 0x20]), [0x10, 0x20]);
        assert_eq!(frames(own, 0x10, true, &[]), [0u64; 0]);
    }
}
