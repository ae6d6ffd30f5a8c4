//! Loading the embedded BPF object and reading what its maps aggregated.

use std::{
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::{
    Btf, Ebpf, EbpfLoader, Endianness,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{KProbe, PerfEvent, ProgramError, RawTracePoint},
};
use sampler_common::{
    BENCH_SKIP_GLOBAL, CPU_STATS_MAP, CTX_EVENT_OFFSET_GLOBAL, CpuStats, DEFAULT_TASK_ENTRIES,
    EVENT_COUNT_OFFSET_GLOBAL, LAST_MAP, LEADER_MAP, LEADER_OFFSET_GLOBAL, LOC_MODE_MAP,
    LOC_RING_MAPS, LOC_RINGS, LOC_STAGE_MAP, LOC_STATS_MAP, LOCATIONS_IP, LOCATIONS_MAP,
    LOCATIONS_OFF, LOCATIONS_STACKS, LastValues, LocKey, LocStage, LocStats, LocValue,
    MAX_LOC_MODE_GLOBAL, MAX_MEMBERS, MEMBER_MAPS, NR_MEMBERS_GLOBAL, PENDING_MAP,
    PERF_EVENT_TYPE_GLOBAL, PROGRAM_NAME, Pending, RDONLY_CAST_CALL, RDONLY_CAST_NONE, STACKS_MAP,
    START_OFFSET_GLOBAL, SWITCH_END_PROGRAM_NAME, SWITCH_PROGRAM_NAME, TASK_FLAGS_OFFSET_GLOBAL,
    TASKS_MAP, TaskKey, TaskValue, USER_STACK_ID_BIT, USER_STACKS_MAP, UserStack,
};

use crate::kernel::{Error, loc_sums::LocSums};

/// The BPF object built by `build.rs` from `sampler-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sampler-ebpf"));

/// Whether [`OBJECT`] has BTF (CO-RE) relocations, which aya resolves against its full
/// parse of the kernel's BTF (tens of MB at its peak). It has none: the kernel field
/// offsets it needs come as globals from [`crate::discover::btf`]. A unit test checks
/// this against the object, so that the object need not be parsed an extra time at
/// each start to find out.
const OBJECT_NEEDS_BTF: bool = false;

/// The floor program's object (`sampler-ebpf/src/floor.rs`): loaded only for
/// `--bench-floor`, which `cargo xtask bench` measures sampler's program against.
static FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sampler-floor"));
const FLOOR_PROGRAM_NAME: &str = "on_sample_floor";

/// The kernel's `finish_task_switch` in `/proc/kallsyms` text: its own name, or a
/// compiler's clone of it (`finish_task_switch.isra.0`).
pub fn switch_end_symbol(kallsyms: &str) -> Option<&str> {
    let names = kallsyms.lines().filter_map(|l| l.split_whitespace().nth(2));
    let mut clone = None;
    for name in names {
        if name == "finish_task_switch" {
            return Some(name);
        }
        if clone.is_none()
            && name
                .strip_prefix("finish_task_switch.")
                .is_some_and(|rest| !rest.contains('.') || rest.starts_with("isra."))
        {
            clone = Some(name);
        }
    }
    clone
}

/// Where the kernel publishes its own BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Task-map entries per possible CPU: the map has per-CPU LRU lists, so each CPU gets
/// this many before it starts evicting its least recently sampled tasks.
pub const TASK_ENTRIES_PER_CPU: u32 = 4096;

/// The largest `--map-entries`: 4 Mi entries, about 800 MiB of kernel memory.
pub const MAX_TASK_ENTRIES: u32 = 1 << 22;

/// The task map's capacity on a machine with `possible_cpus`: [`TASK_ENTRIES_PER_CPU`]
/// each, at least [`DEFAULT_TASK_ENTRIES`].
pub fn default_task_entries(possible_cpus: u32) -> u32 {
    TASK_ENTRIES_PER_CPU
        .saturating_mul(possible_cpus.max(1))
        .max(DEFAULT_TASK_ENTRIES)
}

/// A `--map-entries` value checked against the machine: the LRU map keeps a list per
/// CPU, so it needs at least one entry per possible CPU.
pub fn task_entries(asked: Option<u32>, possible_cpus: u32) -> Result<u32, Error> {
    match asked {
        None => Ok(default_task_entries(possible_cpus)),
        Some(n) if n >= possible_cpus.max(1) && n <= MAX_TASK_ENTRIES => Ok(n),
        Some(got) => Err(Error::MapEntries {
            got,
            min: possible_cpus.max(1),
            max: MAX_TASK_ENTRIES,
        }),
    }
}

/// Stack-map entries with `-g`: distinct (kernel or user) stacks the run can keep;
/// about 1 KiB of kernel memory each. A full map is counted (`stack_full`).
pub const STACK_ENTRIES: u32 = 16_384;

/// What the program records of where each sample landed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Locations {
    /// Nothing: the task view costs what it always did.
    #[default]
    Off,
    /// The sampled instruction (a function view).
    Ip,
    /// The sampled instruction and the kernel and user call stacks (`-g`).
    Stacks,
}

impl Locations {
    fn mode(self) -> u32 {
        match self {
            Self::Off => LOCATIONS_OFF,
            Self::Ip => LOCATIONS_IP,
            Self::Stacks => LOCATIONS_STACKS,
        }
    }
}

/// The loaded BPF programs and maps.
pub struct Bpf {
    ebpf: Ebpf,
    /// What loading worked around, a line each: a kernel without usable BTF
    /// (loading continued without it, and without telling reused pids apart), a
    /// verifier that refused `bpf_rdonly_cast`.
    pub notices: Vec<String>,
    /// What the program records now, and the most it can (the stack map is sized at
    /// load time).
    locations: Locations,
    max_locations: Locations,
    /// With [`Bpf::use_floor`]: the floor program, attached instead of `on_sample`.
    floor: Option<Ebpf>,
    /// The sampling group's members that the program attributes.
    members: u32,
    /// The buffers of the task map's and the location map's batched reads, kept
    /// from one reading to the next.
    task_batch: Mutex<Batch<TaskKey, TaskValue>>,
    loc_batch: Mutex<Batch<LocKey, LocValue>>,
    /// The location ring and its sums (while locations can be turned on), and
    /// whether its drainer thread runs (from the first time they are).
    ring: Option<Arc<Mutex<LocRing>>>,
    draining: bool,
    /// How many entries the task map and the location map evicted so far, at least
    /// (see [`Evictions`]).
    task_evictions: Evictions,
    loc_evictions: Evictions,
}

/// An LRU map's evictions so far, as readings bound them from below: the inserts
/// counted before the map was read, minus the entries the read found (each entry
/// inserted before then is found unless it was evicted). Inserts counted after the
/// map was read would count the entries created while it was read, which the read
/// may have passed, as evicted ones; and the bound of one reading can be below the
/// last one's by the entries created while the map was read, so the bound kept
/// is the highest yet: the evictions of an interval are never more than it had.
#[derive(Debug, Default)]
struct Evictions(AtomicU64);

impl Evictions {
    /// The bound after a reading that found `live` entries, with `inserted_before`
    /// inserts counted before it.
    fn bound(&self, inserted_before: u64, live: usize) -> u64 {
        let bound = inserted_before.saturating_sub(live as u64);
        self.0.fetch_max(bound, Ordering::Relaxed).max(bound)
    }
}

/// A copy of the BPF `object` (in a mapping, aligned as the ELF parser wants) whose
/// calls of `bpf_rdonly_cast` ([`RDONLY_CAST_CALL`]) call the kernel function of BTF
/// id `func`, or are `r0 = 0` without one (`None`).
fn with_rdonly_cast(object: &[u8], func: Option<u32>) -> std::io::Result<memmap2::MmapMut> {
    let mut copy = memmap2::MmapMut::map_anon(object.len().max(1))?;
    copy[..object.len()].copy_from_slice(object);
    let to = match func {
        Some(id) => (u64::from(id) << 32 | RDONLY_CAST_CALL & 0xffff_ffff).to_le_bytes(),
        None => RDONLY_CAST_NONE.to_le_bytes(),
    };
    let from = RDONLY_CAST_CALL.to_le_bytes();
    // Instructions are 8-byte aligned in their sections, which are in the file.
    for insn in copy.chunks_exact_mut(8) {
        if *insn == from {
            insn.copy_from_slice(&to);
        }
    }
    Ok(copy)
}

/// How often the drainer thread empties the location rings: a ring holds at least
/// some 2,700 records, 270 ms of 10 kHz on one CPU (and a full ring loses
/// nothing: the samples then go to the location map).
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Location ring `ring`'s size: 64 KiB per possible CPU that uses it (CPU `c` uses
/// ring `c % LOC_RINGS`), 256 KiB to 64 MiB (a power of two, as the kernel
/// wants); one page for a ring no CPU uses, or while locations cannot be turned on.
fn ring_bytes(max_locations: Locations, cpus: usize, ring: usize) -> u32 {
    let users = (0..cpus).filter(|c| c % LOC_RINGS == ring).count() as u64;
    if max_locations == Locations::Off || users == 0 {
        return crate::sys::page_size();
    }
    (users * (64 << 10))
        .next_power_of_two()
        .clamp(256 << 10, 64 << 20) as u32
}

/// For tests: the location rings' size in bytes (of those CPUs use), in place of
/// [`ring_bytes`]'s (a small ring fills, and the samples that find it full go to
/// the location map).
pub const RING_BYTES_ENV: &str = "SAMPLER_LOC_RING_BYTES";

/// [`RING_BYTES_ENV`]'s value: a power of two, at least a page.
fn ring_bytes_from(text: &str) -> Result<u32, Error> {
    match text.trim().parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n >= crate::sys::page_size() => Ok(n),
        _ => Err(Error::BpfLoad(format!(
            "{RING_BYTES_ENV}={text:?}: the location ring's size must be a power of two \
             of at least a page ({} bytes); unset it for the default",
            crate::sys::page_size()
        ))),
    }
}

/// The location rings and the sums of what was drained from them.
struct LocRing {
    rings: Vec<RingBuf<MapData>>,
    sums: LocSums,
}

impl LocRing {
    /// Sums every record the rings hold now.
    fn drain(&mut self) {
        for ring in &mut self.rings {
            while let Some(item) = ring.next() {
                // Every item is a batch: its head and as many records as it says
                // (shared types, and the object is built with this binary).
                let _ = self.sums.add_item(&item);
            }
        }
    }
}

/// Empties the ring every [`DRAIN_EVERY`] until the [`Bpf`] that holds it is gone.
fn spawn_drainer(ring: &Arc<Mutex<LocRing>>) -> std::io::Result<()> {
    let ring = Arc::downgrade(ring);
    std::thread::Builder::new()
        .name("sampler-locations".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(DRAIN_EVERY);
                let Some(ring) = ring.upgrade() else { return };
                ring.lock().unwrap_or_else(PoisonError::into_inner).drain();
            }
        })
        .map(drop)
}

/// The buffers one batched map read copies into: allocated at the first reading
/// and kept, as a refresh would otherwise allocate and zero some 400 KB for each
/// map (a tenth of a `sampler top` refresh's CPU, measured).
#[derive(Default)]
struct Batch<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

/// The location map's entries and its per-CPU counters.
pub type LocationContents = (Vec<(LocKey, LocValue)>, Vec<LocStats>);

/// What the maps held at one moment.
#[derive(Debug, Clone, Default)]
pub struct MapContents {
    pub tasks: Vec<(TaskKey, TaskValue)>,
    /// Per possible CPU, indexed by CPU number.
    pub cpu_stats: Vec<CpuStats>,
    /// Where the samples landed (empty while locations were never on).
    pub locations: Vec<(LocKey, LocValue)>,
    /// The location half's counters per possible CPU (empty as `locations`).
    pub loc_stats: Vec<LocStats>,
    /// The program's run statistics at the time of the read ([`Bpf::read`] gives
    /// them, [`Bpf::read_with`] does not).
    pub bpf: Option<RunStats>,
    /// The switch programs' (summed), likewise.
    pub switch_bpf: Option<RunStats>,
    /// Task entries the LRU map evicted: over the interval of the model's `delta`;
    /// so far, for a reading (at least, see [`Evictions`]); `None` for contents
    /// whose evictions are their inserts minus their live entries.
    pub evicted: Option<u64>,
    /// Location entries evicted, as `evicted`.
    pub loc_evicted: Option<u64>,
}

impl MapContents {
    /// Location entries the LRU map evicted: over the interval of a delta, or up to
    /// a reading (`loc_evicted`, else its inserts minus its live entries).
    pub fn location_evictions(&self) -> u64 {
        self.loc_evicted.unwrap_or_else(|| {
            self.loc_stats
                .iter()
                .map(|s| s.inserted)
                .sum::<u64>()
                .saturating_sub(self.locations.len() as u64)
        })
    }
}

impl Bpf {
    /// Loads the object and the `perf_event` program (not yet attached to anything),
    /// for a sampling group with `members` counting members (at most
    /// [`MAX_MEMBERS`] are attributed per task). `btf_path` is the kernel's BTF
    /// ([`KERNEL_BTF`]); the program needs no CO-RE relocation, so a kernel without BTF
    /// is reported, not fatal. The task map holds `task_entries` (see [`task_entries`]),
    /// and so does the location map; `max_locations` is the most that
    /// [`Bpf::set_locations`] may turn on later ([`Locations::Stacks`] sizes the stack
    /// map to [`STACK_ENTRIES`]). Locations start off.
    pub fn load(
        btf_path: &Path,
        task_entries: u32,
        members: u32,
        max_locations: Locations,
    ) -> Result<Self, Error> {
        Self::load_skipping(btf_path, task_entries, members, max_locations, 0)
    }

    /// [`Bpf::load`], with the sample program's `SKIP_*` pieces in `bench_skip` taken
    /// out: for the benchmarks' breakdown of its cost only, since a run that skips a
    /// piece attributes nothing correctly.
    pub fn load_skipping(
        btf_path: &Path,
        task_entries: u32,
        members: u32,
        max_locations: Locations,
        bench_skip: u32,
    ) -> Result<Self, Error> {
        let notice = |why: String| {
            format!(
                "sampler: kernel BTF not usable at {} ({why}); loading the BPF programs \
                 without it (they need no BTF relocations), but a process that reuses \
                 the pid of one that exited during the run will share its row. Kernels \
                 built with CONFIG_DEBUG_INFO_BTF=y provide it.",
                btf_path.display()
            )
        };
        // What the program does read from the BTF: two offsets that give the process
        // start time keeping reused pids apart (0, and a notice, when unusable). This
        // read is also what tells whether the kernel has usable BTF at all.
        let (offsets, mut btf_notice) = match crate::discover::btf::task_offsets_from(btf_path) {
            Ok(o) => (o, None),
            Err(why) => (
                crate::discover::btf::KernelOffsets::default(),
                Some(notice(why)),
            ),
        };
        // aya's full parse of the BTF only serves CO-RE relocations, so it runs only
        // when the object has relocations to resolve; ours has none today.
        let btf = if OBJECT_NEEDS_BTF {
            match Btf::parse_file(btf_path, Endianness::default()) {
                Ok(btf) => Some(btf),
                Err(err) => {
                    btf_notice.get_or_insert_with(|| notice(err.to_string()));
                    None
                }
            }
        } else {
            None
        };
        let members = members.min(MAX_MEMBERS as u32);
        // Without locations, the location map gets the least the per-CPU LRU takes.
        let loc_entries = if max_locations == Locations::Off {
            aya::util::nr_cpus().map_or(1, |n| n as u32).max(1)
        } else {
            task_entries
        };
        let stack_entries = if max_locations == Locations::Stacks {
            STACK_ENTRIES
        } else {
            1
        };
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        let forced = match std::env::var(RING_BYTES_ENV) {
            Ok(text) if max_locations != Locations::Off => Some(ring_bytes_from(&text)?),
            _ => None,
        };
        let load_object = |object: &[u8], task_flags: u32| -> Result<Ebpf, Error> {
            let mut loader = EbpfLoader::new();
            for (ring, name) in LOC_RING_MAPS.iter().enumerate() {
                let mut bytes = ring_bytes(max_locations, cpus, ring);
                if let Some(forced) = forced
                    && bytes > crate::sys::page_size()
                {
                    bytes = forced;
                }
                loader.map_max_entries(name, bytes);
            }
            let mut ebpf = loader
                .btf(btf.as_ref())
                .map_max_entries(TASKS_MAP, task_entries)
                .map_max_entries(LOCATIONS_MAP, loc_entries)
                .map_max_entries(STACKS_MAP, stack_entries)
                .map_max_entries(USER_STACKS_MAP, stack_entries)
                .override_global(NR_MEMBERS_GLOBAL, &members, true)
                .override_global(LEADER_OFFSET_GLOBAL, &offsets.group_leader, true)
                .override_global(START_OFFSET_GLOBAL, &offsets.start_time, true)
                .override_global(CTX_EVENT_OFFSET_GLOBAL, &offsets.ctx_event, true)
                .override_global(EVENT_COUNT_OFFSET_GLOBAL, &offsets.event_count, true)
                .override_global(PERF_EVENT_TYPE_GLOBAL, &offsets.perf_event_type, true)
                .override_global(TASK_FLAGS_OFFSET_GLOBAL, &task_flags, true)
                .override_global(BENCH_SKIP_GLOBAL, &bench_skip, true)
                .override_global(MAX_LOC_MODE_GLOBAL, &max_locations.mode(), true)
                .load(object)
                .map_err(|e| Error::BpfLoad(format!("{e}")))?;
            let program: &mut PerfEvent = ebpf
                .program_mut(PROGRAM_NAME)
                .ok_or_else(|| {
                    Error::BpfLoad(format!("program {PROGRAM_NAME} missing from object"))
                })?
                .try_into()
                .map_err(|e: ProgramError| Error::BpfLoad(e.to_string()))?;
            program.load().map_err(program_load_error)?;
            let switch: &mut RawTracePoint = ebpf
                .program_mut(SWITCH_PROGRAM_NAME)
                .ok_or_else(|| {
                    Error::BpfLoad(format!("program {SWITCH_PROGRAM_NAME} missing from object"))
                })?
                .try_into()
                .map_err(|e: ProgramError| Error::BpfLoad(e.to_string()))?;
            switch.load().map_err(program_load_error)?;
            Ok(ebpf)
        };
        // The leader's count through `bpf_rdonly_cast` where the kernel has it (and
        // the offsets and the type to read there); should its verifier still refuse
        // the call, the object without it.
        let cast = Some(offsets.rdonly_cast_func).filter(|&id| {
            id != 0
                && offsets.perf_event_type != 0
                && offsets.ctx_event != 0
                && offsets.event_count != 0
        });
        let object = |func| {
            with_rdonly_cast(OBJECT, func).map_err(|e| Error::BpfLoad(format!("the object: {e}")))
        };
        let mut notices: Vec<String> = btf_notice.into_iter().collect();
        // With the cast, kernel-mode samples' user registers (`bpf_task_pt_regs`,
        // 5.15) for the program's own user stack walk.
        let task_flags = if cast.is_some() {
            offsets.task_flags
        } else {
            0
        };
        let mut ebpf = match load_object(&object(cast)?, task_flags) {
            Err(e) if cast.is_some() => {
                notices.push(format!(
                    "sampler: notice: the kernel refused the sample program's call of \
                     bpf_rdonly_cast ({e}); it reads the leader's count with \
                     bpf_probe_read_kernel instead (dearer)"
                ));
                load_object(&object(None)?, 0)?
            }
            loaded => loaded?,
        };
        let ring = if max_locations == Locations::Off {
            None
        } else {
            let mut rings = Vec::new();
            // The rings CPUs use (the first `cpus`).
            for name in LOC_RING_MAPS.iter().take(cpus.min(LOC_RINGS)) {
                let map = ebpf
                    .take_map(name)
                    .ok_or_else(|| Error::BpfLoad(format!("map {name} missing")))?;
                rings.push(
                    RingBuf::try_from(map)
                        .map_err(|source| Error::MapRead { map: name, source })?,
                );
            }
            Some(Arc::new(Mutex::new(LocRing {
                rings,
                sums: LocSums::new(cpus, loc_entries as usize),
            })))
        };
        // The switch end's kprobe is loaded by attach_switch, where it can attach.
        Ok(Self {
            ebpf,
            notices,
            locations: Locations::Off,
            max_locations,
            floor: None,
            members,
            task_batch: Mutex::default(),
            loc_batch: Mutex::default(),
            ring,
            draining: false,
            task_evictions: Evictions::default(),
            loc_evictions: Evictions::default(),
        })
    }

    /// For benchmarks only: loads the floor program (one per-CPU counter bumped per
    /// sample), which [`Bpf::with_fds`] then hands out instead of `on_sample` and whose
    /// statistics [`Bpf::run_stats`] reports. The maps stay sampler's (nothing is
    /// attributed to tasks then).
    pub fn use_floor(&mut self) -> Result<(), Error> {
        let mut floor = EbpfLoader::new()
            .load(FLOOR_OBJECT)
            .map_err(|e| Error::BpfLoad(format!("the floor object: {e}")))?;
        let program: &mut PerfEvent = floor
            .program_mut(FLOOR_PROGRAM_NAME)
            .ok_or_else(|| Error::BpfLoad(format!("program {FLOOR_PROGRAM_NAME} missing")))?
            .try_into()
            .map_err(|e: ProgramError| Error::BpfLoad(e.to_string()))?;
        program.load().map_err(program_load_error)?;
        self.floor = Some(floor);
        Ok(())
    }

    /// The `perf_event` program samples are attached to: `on_sample`, or the floor.
    fn sample_program(&self) -> Result<&PerfEvent, Error> {
        let (ebpf, name) = match &self.floor {
            Some(floor) => (floor, FLOOR_PROGRAM_NAME),
            None => (&self.ebpf, PROGRAM_NAME),
        };
        ebpf.program(name)
            .ok_or_else(|| Error::BpfLoad(format!("program {name} missing")))?
            .try_into()
            .map_err(|e: ProgramError| Error::BpfLoad(e.to_string()))
    }

    /// What the program records of the samples' locations from now on; at most what
    /// it was loaded for.
    pub fn set_locations(&mut self, want: Locations) -> Result<(), Error> {
        let want = want.min(self.max_locations);
        let map = self
            .ebpf
            .map_mut(LOC_MODE_MAP)
            .ok_or_else(|| Error::BpfLoad(format!("map {LOC_MODE_MAP} missing")))?;
        let mut mode: Array<&mut MapData, u32> =
            Array::try_from(map).map_err(|source| Error::MapRead {
                map: LOC_MODE_MAP,
                source,
            })?;
        mode.set(0, want.mode(), 0)
            .map_err(|source| Error::MapRead {
                map: LOC_MODE_MAP,
                source,
            })?;
        self.locations = want;
        if want != Locations::Off
            && !self.draining
            && let Some(ring) = &self.ring
        {
            spawn_drainer(ring).map_err(|e| {
                Error::BpfLoad(format!("cannot start the location ring's drainer: {e}"))
            })?;
            self.draining = true;
        }
        Ok(())
    }

    /// What the program records of the samples' locations now.
    pub fn locations(&self) -> Locations {
        self.locations
    }

    /// The addresses of stack `id` of the stack map, innermost frame first; `None`
    /// when the map has no such stack.
    pub fn stack(&self, id: u32) -> Result<Option<Vec<u64>>, Error> {
        if id & USER_STACK_ID_BIT != 0 {
            return self.user_stack(id);
        }
        let map = self
            .ebpf
            .map(STACKS_MAP)
            .ok_or_else(|| Error::BpfLoad(format!("map {STACKS_MAP} missing")))?;
        let stacks: StackTraceMap<&MapData> =
            StackTraceMap::try_from(map).map_err(|source| Error::MapRead {
                map: STACKS_MAP,
                source,
            })?;
        match stacks.get(&id, 0) {
            Ok(trace) => Ok(Some(trace.frames().iter().map(|f| f.ip).collect())),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(Error::MapRead {
                map: STACKS_MAP,
                source,
            }),
        }
    }

    /// The frames of user stack `id` of the program's own walks (USER_STACKS).
    fn user_stack(&self, id: u32) -> Result<Option<Vec<u64>>, Error> {
        let map = self
            .ebpf
            .map(USER_STACKS_MAP)
            .ok_or_else(|| Error::BpfLoad(format!("map {USER_STACKS_MAP} missing")))?;
        let stacks: HashMap<&MapData, u32, UserStack> =
            HashMap::try_from(map).map_err(|source| Error::MapRead {
                map: USER_STACKS_MAP,
                source,
            })?;
        match stacks.get(&id, 0) {
            Ok(stack) => {
                let len = (stack.len as usize).min(stack.frames.len());
                Ok(Some(stack.frames[..len].to_vec()))
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(Error::MapRead {
                map: USER_STACKS_MAP,
                source,
            }),
        }
    }

    /// Starts the switch program: from now on every context switch charges the task
    /// that leaves a CPU with the sampling group's growth since the last sample or
    /// switch there (read from the maps [`Bpf::with_fds`] hands out, so attach the
    /// session first). It stays attached as long as `self`.
    pub fn attach_switch(&mut self) -> Result<(), Error> {
        let switch: &mut RawTracePoint = self
            .ebpf
            .program_mut(SWITCH_PROGRAM_NAME)
            .ok_or_else(|| Error::BpfLoad(format!("program {SWITCH_PROGRAM_NAME} missing")))?
            .try_into()
            .map_err(|e: ProgramError| Error::BpfLoad(e.to_string()))?;
        switch.attach("sched_switch").map_err(|e| {
            Error::BpfLoad(format!(
                "attaching {SWITCH_PROGRAM_NAME} to the sched_switch raw tracepoint: {e}"
            ))
        })?;
        // Where the switch ends: `finish_task_switch`, or the compiler's copy of it.
        // Without it the switch's own counts go to the task switched to, as before
        // this probe existed: a small excess on tasks that switch often, not an error.
        let notice = |why: &str| {
            eprintln!(
                "sampler: notice: no kprobe where context switches end ({why}): each \
                 switch's own counts go to the task switched to"
            );
        };
        if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
            notice("this kernel has no kprobe PMU");
            return Ok(());
        }
        let end: &mut KProbe = self
            .ebpf
            .program_mut(SWITCH_END_PROGRAM_NAME)
            .ok_or_else(|| Error::BpfLoad(format!("program {SWITCH_END_PROGRAM_NAME} missing")))?
            .try_into()
            .map_err(|e: ProgramError| Error::BpfLoad(e.to_string()))?;
        // Loaded (verified) only here, where a kprobe can attach: the verifier's time
        // is a good part of the start-up.
        end.load().map_err(program_load_error)?;
        // The usual names first; the symbol table (tens of milliseconds to read) only
        // when neither is there.
        for name in ["finish_task_switch", "finish_task_switch.isra.0"] {
            if end.attach(name, 0).is_ok() {
                return Ok(());
            }
        }
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        match switch_end_symbol(&kallsyms) {
            Some(symbol) => {
                if let Err(e) = end.attach(symbol, 0) {
                    notice(&format!("{symbol}: {e}"));
                }
            }
            None => notice("no finish_task_switch in /proc/kallsyms"),
        }
        Ok(())
    }

    /// Calls `f` with the sampling program's fd (to attach it to perf events) and the
    /// fds of the maps where the sampling group's events go by position, each indexed
    /// by CPU: `LEADER`, then `MEMBER0`...
    pub fn with_fds<T>(
        &self,
        f: impl FnOnce(BorrowedFd<'_>, [BorrowedFd<'_>; MAX_MEMBERS + 1]) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let program = self.sample_program()?;
        let fd = program
            .fd()
            .map_err(|e| Error::BpfLoad(format!("program {PROGRAM_NAME} has no fd: {e}")))?;
        let mut maps = Vec::with_capacity(MAX_MEMBERS + 1);
        for name in std::iter::once(LEADER_MAP).chain(MEMBER_MAPS) {
            let Some(Map::PerfEventArray(m)) = self.ebpf.map(name) else {
                return Err(Error::BpfLoad(format!(
                    "map {name} missing or not a PERF_EVENT_ARRAY"
                )));
            };
            maps.push(m.fd().as_fd());
        }
        let maps: [BorrowedFd<'_>; MAX_MEMBERS + 1] = maps
            .try_into()
            .map_err(|_| Error::BpfLoad("event maps".to_owned()))?;
        f(fd.as_fd(), maps)
    }

    /// The program's run time and run count from the kernel's BPF statistics; they
    /// only grow while statistics are on ([`enable_run_stats`] or the
    /// `kernel.bpf_stats_enabled` sysctl).
    pub fn run_stats(&self) -> Option<RunStats> {
        let program = self.sample_program().ok()?;
        let info = program.info().ok()?;
        Some(RunStats {
            run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            run_count: info.run_count(),
        })
    }

    /// The switch programs' run statistics, summed (the tracepoint's runs are the
    /// context switches; the kprobe's, where attached, as many again).
    pub fn switch_run_stats(&self) -> Option<RunStats> {
        let raw: &RawTracePoint = self.ebpf.program(SWITCH_PROGRAM_NAME)?.try_into().ok()?;
        // The switch end's kprobe is loaded only where it can attach.
        let end = self
            .ebpf
            .program(SWITCH_END_PROGRAM_NAME)
            .and_then(|p| <&KProbe>::try_from(p).ok())
            .and_then(|p| p.info().ok());
        let mut total = RunStats::default();
        for info in std::iter::once(raw.info().ok()?).chain(end) {
            total.run_time_ns += u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            total.run_count += info.run_count();
        }
        Some(total)
    }

    /// Reads the task map, the per-CPU statistics and, when locations were ever on,
    /// the location map and its counters, without what the counters gained since
    /// the last move of each CPU's pending counts (see [`Bpf::read_with`]): enough
    /// for the rows of tasks that are not running.
    /// With the programs' run statistics (which [`Bpf::read_with`] leaves out).
    pub fn read(&self) -> Result<MapContents, Error> {
        let (mut maps, _) = self.read_with(|_| None)?;
        (maps.bpf, maps.switch_bpf) = (self.run_stats(), self.switch_run_stats());
        Ok(maps)
    }

    /// [`Bpf::read`], with what each CPU's sampling leader and members gained since
    /// the program last read them added to the task that runs there (the program
    /// reads them when a task's pending counts move, not at its every sample, see
    /// [`Pending`]) and to the CPU's `period_sum`. `values(cpu)` reads the CPU's
    /// sampling group as `read()` gives it now: the leader's value, then each
    /// member's (`None` where the CPU has none). The programs' run statistics are
    /// left out (`None`): reading them takes a system call per program, which a
    /// refresh that does not show them need not make.
    ///
    /// Also returns, per CPU, whether its `period_sum` and its running task took
    /// what its counters gained up to the last values `values` gave for it: those
    /// values are then the CPU's counts at this reading, as the maps hold them.
    pub fn read_with(
        &self,
        mut values: impl FnMut(u32) -> Option<CounterValues>,
    ) -> Result<(MapContents, Vec<bool>), Error> {
        let (locations, loc_stats) = if self.locations == Locations::Off {
            (Vec::new(), Vec::new())
        } else {
            self.read_locations()?
        };
        let inserted_before = self
            .read_per_cpu::<CpuStats>(CPU_STATS_MAP)?
            .iter()
            .map(|s| s.inserted)
            .sum();
        // The CPUs' counters after the tasks, as always: a sample that lands
        // between the two readings is then in the CPU's total, not in a row only.
        let mut pending_only = Vec::new();
        let (tasks, period_sums) = self.read_tasks(&mut pending_only, &mut values)?;
        let mut cpu_stats: Vec<CpuStats> = self.read_per_cpu(CPU_STATS_MAP)?;
        // The program counts each CPU's samples in its pending counts' value.
        let pending: Vec<Pending> = self.read_per_cpu(PENDING_MAP)?;
        for (stats, pending) in cpu_stats.iter_mut().zip(&pending) {
            stats.samples = pending.samples;
        }
        for cpu in pending_only {
            if let Some(stats) = cpu_stats.get_mut(cpu as usize) {
                stats.inserted += 1;
            }
        }
        let live = period_sums.iter().map(Option::is_some).collect();
        for (stats, sum) in cpu_stats.iter_mut().zip(period_sums) {
            if let Some(sum) = sum {
                stats.period_sum = sum;
            }
        }
        let evicted = self.task_evictions.bound(inserted_before, tasks.len());
        let loc_evicted = self
            .loc_evictions
            .bound(loc_stats.iter().map(|s| s.inserted).sum(), locations.len());
        let maps = MapContents {
            tasks,
            cpu_stats,
            locations,
            loc_stats,
            bpf: None,
            switch_bpf: None,
            evicted: Some(evicted),
            loc_evicted: Some(loc_evicted),
        };
        Ok((maps, live))
    }

    /// What the counters of the CPUs in `want` gained since the program last read
    /// them (the `LAST` map), with each CPU's `period_sum`: read together, inside
    /// a window that [`settle`] checks no move crossed.
    fn read_live(
        &self,
        want: &[bool],
        values: &mut impl FnMut(u32) -> Option<CounterValues>,
    ) -> Result<Vec<Option<Live>>, Error> {
        let last: Vec<LastValues> = self.read_per_cpu(LAST_MAP)?;
        let stats: Vec<CpuStats> = self.read_per_cpu(CPU_STATS_MAP)?;
        Ok(last
            .iter()
            .zip(&stats)
            .enumerate()
            .map(|(cpu, (last, stats))| {
                if !want.get(cpu).copied().unwrap_or(false) {
                    return None;
                }
                let now = values(cpu as u32)?;
                Some(Live::of(last, &now, self.members, stats.period_sum))
            })
            .collect())
    }

    /// The task map with each CPU's pending counts (see [`Pending`]) and what its
    /// counters gained since (see [`Bpf::read_with`]) added to their task's entry,
    /// never counted twice and never going back between readings; and, per CPU,
    /// its `period_sum` with that gain where it was added.
    ///
    /// A CPU whose pending counts moved into the task map during the bulk read
    /// (`seq` changed) may have had its task's entry read before or after the move:
    /// its pending tasks' entries are looked up again, between two reads of the
    /// pending counts that see no move; then the pending counts are added. A CPU
    /// that keeps moving through [`SETTLE_TRIES`] such tries adds none (they show
    /// in the next reading). `pending_only` gets the CPU of each pending task
    /// without an entry yet, whose entry the move will insert: the caller counts it
    /// as an insert, so that evictions stay inserts minus live entries.
    #[allow(clippy::type_complexity)]
    fn read_tasks(
        &self,
        pending_only: &mut Vec<u32>,
        values: &mut impl FnMut(u32) -> Option<CounterValues>,
    ) -> Result<(Vec<(TaskKey, TaskValue)>, Vec<Option<u64>>), Error> {
        let before: Vec<Pending> = self.read_per_cpu(PENDING_MAP)?;
        let live = self.read_live(&vec![true; before.len()], values)?;
        let mut tasks = self.read_hash(TASKS_MAP, &self.task_batch)?;
        let after: Vec<Pending> = self.read_per_cpu(PENDING_MAP)?;
        let map = self
            .ebpf
            .map(TASKS_MAP)
            .ok_or_else(|| Error::BpfLoad(format!("map {TASKS_MAP} missing")))?;
        let hash: HashMap<&MapData, TaskKey, TaskValue> =
            HashMap::try_from(map).map_err(|source| Error::MapRead {
                map: TASKS_MAP,
                source,
            })?;
        let failed = std::cell::RefCell::new(None);
        let sums = settle(
            &mut tasks,
            pending_only,
            &before,
            after,
            live,
            || {
                self.read_per_cpu(PENDING_MAP)
                    .map_err(|e| *failed.borrow_mut() = Some(e))
                    .ok()
            },
            |want| {
                self.read_live(want, values)
                    .map_err(|e| *failed.borrow_mut() = Some(e))
                    .ok()
            },
            |key| hash.get(key, 0).ok(),
        );
        match failed.into_inner() {
            Some(e) => Err(e),
            None => Ok((tasks, sums)),
        }
    }

    /// Reads the location map and its counters, with the sums of the location rings
    /// (drained first) and of what the CPUs' batches hold as entries of their own
    /// (see [`LocSums`]). The counters are read first: their inserts are then all
    /// in the map as the read finds it, but for evicted ones (see [`Evictions`]).
    pub fn read_locations(&self) -> Result<LocationContents, Error> {
        let mut stats: Vec<LocStats> = self.read_per_cpu(LOC_STATS_MAP)?;
        let mut entries = self.read_hash(LOCATIONS_MAP, &self.loc_batch)?;
        if let Some(ring) = &self.ring {
            let mut ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
            ring.drain();
            // After the drain: a batch sent since is in the ring, taken next time.
            let first: Vec<LocStage> = self.read_per_cpu(LOC_STAGE_MAP)?;
            let failed = std::cell::RefCell::new(None);
            ring.sums.add_stages(first, SETTLE_TRIES, || {
                self.read_per_cpu(LOC_STAGE_MAP)
                    .map_err(|e| *failed.borrow_mut() = Some(e))
                    .ok()
            });
            if let Some(e) = failed.into_inner() {
                return Err(e);
            }
            ring.sums.reading(&mut entries, &mut stats);
        }
        Ok((entries, stats))
    }

    /// Every entry of the LRU hash map `name`: batched where the kernel can, else one
    /// entry at a time (kernels before 5.6 have no batch lookups).
    fn read_hash<K: aya::Pod + Default, V: aya::Pod + Default>(
        &self,
        name: &'static str,
        batch: &Mutex<Batch<K, V>>,
    ) -> Result<Vec<(K, V)>, Error> {
        let map_err = |source| Error::MapRead { map: name, source };
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| Error::BpfLoad(format!("map {name} missing")))?;
        let Map::LruHashMap(data) = map else {
            return Err(Error::BpfLoad(format!("map {name} is not an LRU hash")));
        };
        // A reading that panicked while holding the buffers left nothing in them
        // that the next one needs: it overwrites what it uses.
        let mut batch = batch.lock().unwrap_or_else(PoisonError::into_inner);
        let mut entries = match read_batched(data.fd().as_fd(), &mut batch) {
            Ok(entries) => entries,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let hash: HashMap<&MapData, K, V> = HashMap::try_from(map).map_err(map_err)?;
                iterate(&hash).map_err(map_err)?
            }
            Err(source) => {
                return Err(map_err(aya::maps::MapError::SyscallError(
                    aya::sys::SyscallError {
                        call: "bpf_map_lookup_batch",
                        io_error: source,
                    },
                )));
            }
        };
        entries.shrink_to_fit();
        Ok(entries)
    }

    /// Slot 0 of the per-CPU array `name`, one value per possible CPU.
    fn read_per_cpu<V: aya::Pod>(&self, name: &'static str) -> Result<Vec<V>, Error> {
        let map_err = |source| Error::MapRead { map: name, source };
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| Error::BpfLoad(format!("map {name} missing")))?;
        let array: PerCpuArray<&MapData, V> = PerCpuArray::try_from(map).map_err(map_err)?;
        Ok(array.get(&0, 0).map_err(map_err)?.iter().copied().collect())
    }
}

/// Tries per reading to find a moment when a CPU's pending counts do not move.
pub const SETTLE_TRIES: usize = 8;

/// One CPU's sampling group as `read()` gives it: the leader's value, then each
/// member's (`None` where the CPU has none).
pub type CounterValues = [Option<u64>; 1 + MAX_MEMBERS];

/// What one CPU's counters gained since the program last read them, and the CPU's
/// `period_sum` (which that read brought up to date), read in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    /// The leader's growth, then each member's.
    pub growth: [u64; 1 + MAX_MEMBERS],
    pub period_sum: u64,
}

impl Live {
    /// From the program's last values and the counters' values now, for a group
    /// whose first `members` members the program attributes. A value below the
    /// last one (a counter read just before the program's own later read) adds
    /// nothing.
    pub fn of(last: &LastValues, now: &CounterValues, members: u32, period_sum: u64) -> Self {
        let mut growth = [0; 1 + MAX_MEMBERS];
        growth[0] = now[0].map_or(0, |v| v.saturating_sub(last.leader));
        for (i, last) in last.members.iter().enumerate().take(members as usize) {
            growth[i + 1] = now[i + 1].map_or(0, |v| v.saturating_sub(*last));
        }
        Self { growth, period_sum }
    }
}

/// Whether a CPU's pending counts stood still from `a` to `b`: no move began or ran.
fn still(a: &Pending, b: &Pending) -> bool {
    a.seq == b.seq && a.seq.is_multiple_of(2)
}

/// [`Bpf::read_tasks`]'s logic, over the task map's bulk reading `tasks`, the
/// pending counts read `before` and `after` it and the counters' gain `live`, read
/// between `before` and the bulk read: `read_pending` reads the pending counts
/// again and `read_live` the gain of the CPUs it is given (`None`: the read failed,
/// and settling stops), `lookup` one task entry; the CPU of each pending task that
/// got a row of its own goes to `pending_only`. Returns each CPU's `period_sum`
/// with its leader's gain, where that gain went to a task.
#[allow(clippy::too_many_arguments)]
pub fn settle(
    tasks: &mut Vec<(TaskKey, TaskValue)>,
    pending_only: &mut Vec<u32>,
    before: &[Pending],
    mut after: Vec<Pending>,
    mut live: Vec<Option<Live>>,
    mut read_pending: impl FnMut() -> Option<Vec<Pending>>,
    mut read_live: impl FnMut(&[bool]) -> Option<Vec<Option<Live>>>,
    mut lookup: impl FnMut(&TaskKey) -> Option<TaskValue>,
) -> Vec<Option<u64>> {
    let cpus = before.len().min(after.len());
    live.resize(cpus, None);
    let mut settled: Vec<bool> = (0..cpus).map(|c| still(&before[c], &after[c])).collect();
    // The keys of every pending task seen on an unsettled CPU so far.
    let mut seen: Vec<TaskKey> = Vec::new();
    fn note(p: &Pending, seen: &mut Vec<TaskKey>) {
        if p.valid != 0 && !seen.contains(&p.key) {
            seen.push(p.key);
        }
    }
    for c in (0..cpus).filter(|&c| !settled[c]) {
        note(&before[c], &mut seen);
        note(&after[c], &mut seen);
    }
    for _ in 0..SETTLE_TRIES {
        if settled.iter().all(|s| *s) {
            break;
        }
        let Some(x) = read_pending() else { break };
        for c in (0..cpus.min(x.len())).filter(|&c| !settled[c]) {
            note(&x[c], &mut seen);
        }
        let want: Vec<bool> = settled.iter().map(|s| !s).collect();
        let Some(mut gained) = read_live(&want) else {
            break;
        };
        gained.resize(cpus, None);
        let fresh: Vec<(TaskKey, Option<TaskValue>)> =
            seen.iter().map(|k| (*k, lookup(k))).collect();
        let Some(y) = read_pending() else { break };
        let mut took = false;
        for c in 0..cpus.min(x.len()).min(y.len()) {
            if settled[c] {
                continue;
            }
            if still(&x[c], &y[c]) {
                settled[c] = true;
                after[c] = y[c];
                live[c] = gained[c];
                took = true;
            } else {
                note(&y[c], &mut seen);
            }
        }
        if took {
            // The entries of the settled CPUs' keys as looked up (a key's CPU is
            // in it, so a key belongs to one CPU).
            let mut fresh: std::collections::HashMap<TaskKey, TaskValue> = fresh
                .into_iter()
                .filter(|(k, _)| (k.cpu as usize) < cpus && settled[k.cpu as usize])
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
            // One pass over the entries (a task map can hold 100,000).
            for (key, value) in tasks.iter_mut() {
                if let Some(v) = fresh.remove(key) {
                    *value = v;
                }
            }
            tasks.extend(fresh);
            seen.retain(|k| (k.cpu as usize) < cpus && !settled[k.cpu as usize]);
        }
    }
    // Add each settled CPU's pending counts, and what its counters gained since,
    // to its task's entry.
    let mut sums = vec![None; cpus];
    let mut pending: std::collections::HashMap<TaskKey, TaskValue> =
        std::collections::HashMap::new();
    for c in (0..cpus).filter(|&c| settled[c] && after[c].valid != 0 && after[c].value.samples > 0)
    {
        let mut value = after[c].value;
        if let Some(l) = live[c] {
            value.period_sum += l.growth[0];
            for (count, add) in value.counts.iter_mut().zip(&l.growth[1..]) {
                *count += add;
            }
            sums[c] = Some(l.period_sum + l.growth[0]);
        }
        pending.insert(after[c].key, value);
    }
    for (key, value) in tasks.iter_mut() {
        if let Some(p) = pending.remove(key) {
            value.samples += p.samples;
            value.period_sum += p.period_sum;
            for (count, add) in value.counts.iter_mut().zip(p.counts) {
                *count += add;
            }
            value.comm = p.comm;
        }
    }
    for (key, value) in pending {
        tasks.push((key, value));
        pending_only.push(key.cpu);
    }
    sums
}

/// Entries read per batch.
const BATCH: usize = 4096;

/// Reads a whole hash map with `BPF_MAP_LOOKUP_BATCH`: a few system calls for
/// thousands of entries instead of two per entry.
fn read_batched<K: aya::Pod + Default, V: aya::Pod + Default>(
    fd: BorrowedFd<'_>,
    batch: &mut Batch<K, V>,
) -> std::io::Result<Vec<(K, V)>> {
    batch.keys.resize(BATCH, K::default());
    batch.values.resize(BATCH, V::default());
    let Batch { keys, values } = batch;
    let mut token = [0u64; 4];
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let (n, done) = crate::sys::map_lookup_batch(fd, &mut token, first, keys, values)?;
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        if done {
            return Ok(out);
        }
        first = false;
    }
}

/// Reads a hash map one entry at a time (kernels without batch lookups).
fn iterate<K: aya::Pod, V: aya::Pod>(
    tasks: &HashMap<&MapData, K, V>,
) -> Result<Vec<(K, V)>, aya::maps::MapError> {
    let mut entries = Vec::new();
    for item in tasks.iter() {
        match item {
            Ok(kv) => entries.push(kv),
            // An LRU entry evicted between "next key" and "lookup": skip it.
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(entries)
}

/// The kernel's statistics of one BPF program: total run time and number of runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunStats {
    pub run_time_ns: u64,
    pub run_count: u64,
}

impl RunStats {
    /// Growth since `earlier` (a later reading of the same program).
    pub fn since(self, earlier: Self) -> Self {
        Self {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_count: self.run_count.saturating_sub(earlier.run_count),
        }
    }

    /// Mean nanoseconds per run, when the program ran with statistics on.
    pub fn ns_per_run(self) -> Option<f64> {
        (self.run_count > 0 && self.run_time_ns > 0)
            .then(|| self.run_time_ns as f64 / self.run_count as f64)
    }
}

/// Turns the kernel's BPF run-time statistics on for as long as the returned fd lives
/// (`BPF_ENABLE_STATS`, Linux 5.8+). They cost two clock reads per program run, so
/// they are off unless asked for.
pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd, Error> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| Error::BpfLoad(format!("turning on BPF run-time statistics: {e}")))
}

/// A verifier rejection keeps the end of the verifier's log (where the reason is).
fn program_load_error(e: ProgramError) -> Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => Error::Verifier {
            program: PROGRAM_NAME,
            source: io_error,
            log_tail: Error::log_tail(&verifier_log.to_string(), 20),
        },
        other => Error::BpfLoad(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_needs_the_kernels_btf_exactly_when_the_loader_thinks_so() {
        let object = aya_obj::Object::parse(OBJECT).expect("the built BPF object parses");
        assert_eq!(
            object.has_btf_relocations(),
            OBJECT_NEEDS_BTF,
            "the BPF object's BTF relocations changed: set OBJECT_NEEDS_BTF to match, \
             or the loader skips (or needlessly parses) the kernel's BTF"
        );
    }

    #[test]
    fn evictions_count_inserts_before_the_read_and_never_go_back() {
        let evictions = Evictions::default();
        // 10 inserts before the read; it found 10 entries and 3 created since.
        assert_eq!(evictions.bound(10, 13), 0);
        // 20 before, 16 found: at least 4 evicted.
        assert_eq!(evictions.bound(20, 16), 4);
        // Entries created during the next read make the found ones more than the
        // inserts before it allow: the bound stays, never an interval below 0.
        assert_eq!(evictions.bound(25, 24), 4);
        // 40 before, 30 found: 10.
        assert_eq!(evictions.bound(40, 30), 10);
    }

    #[test]
    fn rdonly_cast_calls_get_the_kernels_function_id_or_become_r0_0() {
        let call = RDONLY_CAST_CALL.to_le_bytes();
        // A call, an unrelated instruction, a call, and the call's bytes off the
        // 8-byte grid (not an instruction: left alone).
        let mut object = Vec::new();
        object.extend(call);
        object.extend(0x95u64.to_le_bytes());
        object.extend(call);
        object.extend([0, 0, 0]);
        object.extend(call);
        let words = |b: &[u8]| -> Vec<u64> {
            b.chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
                .collect()
        };
        let patched = with_rdonly_cast(&object, Some(62986)).unwrap();
        assert_eq!(patched.len(), object.len());
        // code 0x85 (call), src register 2 (kernel function), dst 0, off 0, imm id.
        let call_62986 = 62986u64 << 32 | 0x2085;
        assert_eq!(words(&patched[..24]), [call_62986, 0x95, call_62986]);
        assert_eq!(patched[24..], object[24..]);
        let none = with_rdonly_cast(&object, None).unwrap();
        assert_eq!(words(&none[..24]), [0xb7, 0x95, 0xb7]);
        assert_eq!(none[24..], object[24..]);

        // The built object has the call on the grid, so the loader fills it in.
        let built = with_rdonly_cast(OBJECT, None).unwrap();
        let calls = |b: &[u8]| words(b).iter().filter(|&&w| w == RDONLY_CAST_CALL).count();
        assert!(calls(OBJECT) > 0, "no bpf_rdonly_cast call in the object");
        assert_eq!(calls(&built), 0);
    }

    #[test]
    fn the_location_ring_is_a_power_of_two_per_cpu_within_bounds() {
        let page = crate::sys::page_size();
        assert_eq!(ring_bytes(Locations::Off, 64, 0), page);
        // Two CPUs: rings 0 and 1, one CPU each; the others unused.
        assert_eq!(ring_bytes(Locations::Ip, 2, 0), 256 << 10);
        assert_eq!(ring_bytes(Locations::Ip, 2, 1), 256 << 10);
        assert_eq!(ring_bytes(Locations::Ip, 2, 2), page);
        // 20 CPUs: rings 0-3 have 3 (0, 8, 16; ...), rings 4-7 have 2.
        assert_eq!(ring_bytes(Locations::Ip, 20, 3), 256 << 10);
        assert_eq!(ring_bytes(Locations::Ip, 80, 7), 1 << 20);
        assert_eq!(ring_bytes(Locations::Stacks, 65536, 5), 64 << 20);
        assert_eq!(ring_bytes_from(" 8192 ").unwrap(), 8192);
        for bad in ["12288", "0", "x", "-4096"] {
            let err = ring_bytes_from(bad).unwrap_err().to_string();
            assert!(
                err.contains(RING_BYTES_ENV) && err.contains("power of two"),
                "{err}"
            );
        }
        assert!(ring_bytes_from(&(page / 2).to_string()).is_err());
    }

    fn key(tid: u32, cpu: u32) -> TaskKey {
        TaskKey {
            tgid: tid,
            tid,
            cpu,
            ..TaskKey::default()
        }
    }

    fn value(samples: u64) -> TaskValue {
        TaskValue {
            samples,
            period_sum: samples * 1_000,
            counts: [samples * 7, 0, 0, 0],
            comm: sampler_common::Comm(*b"task\0\0\0\0\0\0\0\0\0\0\0\0"),
        }
    }

    fn pending(k: Option<TaskKey>, samples: u64, seq: u64) -> Pending {
        Pending {
            key: k.unwrap_or_default(),
            value: if k.is_some() {
                value(samples)
            } else {
                TaskValue::default()
            },
            task: 0xffff_8880_0000_0000,
            seq,
            valid: u64::from(k.is_some()),
            switching: 0,
            samples: 0,
        }
    }

    fn samples_of(tasks: &[(TaskKey, TaskValue)], k: TaskKey) -> Vec<u64> {
        tasks
            .iter()
            .filter(|(t, _)| *t == k)
            .map(|(_, v)| v.samples)
            .collect()
    }

    #[test]
    fn still_pending_counts_are_added_once_and_new_tasks_counted_as_inserts() {
        let (a, b) = (key(10, 0), key(20, 1));
        let mut tasks = vec![(a, value(5))];
        let mut pending_only = Vec::new();
        let before = [pending(Some(a), 2, 4), pending(Some(b), 1, 6)];
        let after = vec![pending(Some(a), 3, 4), pending(Some(b), 2, 6)];
        let mut reads = 0;
        settle(
            &mut tasks,
            &mut pending_only,
            &before,
            after,
            Vec::new(),
            || {
                reads += 1;
                None
            },
            |_| panic!("nothing to read again"),
            |_| panic!("nothing to look up"),
        );
        assert_eq!(reads, 0, "every CPU stood still");
        // The later reading of the pending counts, added to the entry.
        assert_eq!(samples_of(&tasks, a), [8]);
        assert_eq!(tasks[0].1.period_sum, 8_000);
        assert_eq!(tasks[0].1.counts[0], 5 * 7 + 3 * 7);
        // A task with pending counts only: a row of its own, counted as an insert.
        assert_eq!(samples_of(&tasks, b), [2]);
        assert_eq!(pending_only, [1]);
    }

    #[test]
    fn counts_moved_during_the_read_are_looked_up_again_not_counted_twice() {
        let a = key(10, 0);
        // The bulk read may have found the entry before the move (5) or after it
        // (5 + 3): either way the result is the entry after the move, once.
        for bulk in [5, 8] {
            let mut tasks = vec![(a, value(bulk))];
            let mut pending_only = Vec::new();
            let before = [pending(Some(a), 3, 2)];
            let after = vec![pending(None, 0, 4)];
            let mut looked = Vec::new();
            settle(
                &mut tasks,
                &mut pending_only,
                &before,
                after,
                Vec::new(),
                || Some(vec![pending(None, 0, 4)]),
                |_| Some(Vec::new()),
                |k| {
                    looked.push(*k);
                    Some(value(8))
                },
            );
            assert_eq!(looked, [a]);
            assert_eq!(samples_of(&tasks, a), [8], "bulk read {bulk}");
        }
    }

    #[test]
    fn a_cpu_that_keeps_moving_adds_nothing_and_stops_trying() {
        let a = key(10, 0);
        let mut tasks = vec![(a, value(5))];
        let mut pending_only = Vec::new();
        let mut seq = 2;
        let mut reads = 0;
        settle(
            &mut tasks,
            &mut pending_only,
            &[pending(Some(a), 3, 1)],
            vec![pending(Some(a), 4, 3)],
            Vec::new(),
            || {
                reads += 1;
                seq += 2;
                Some(vec![pending(Some(a), 4, seq)])
            },
            |_| Some(Vec::new()),
            |_| Some(value(6)),
        );
        assert_eq!(reads, 2 * SETTLE_TRIES);
        // Neither the pending counts nor a lookup between moving reads.
        assert_eq!(samples_of(&tasks, a), [5]);
        assert!(pending_only.is_empty());
    }

    #[test]
    fn an_odd_sequence_is_a_move_in_progress() {
        let a = key(10, 0);
        let mut tasks = vec![(a, value(5))];
        let mut pending_only = Vec::new();
        // The same odd value before and after: a move began and has not ended.
        let mut answers = vec![pending(None, 0, 4), pending(None, 0, 4)];
        settle(
            &mut tasks,
            &mut pending_only,
            &[pending(Some(a), 3, 3)],
            vec![pending(Some(a), 3, 3)],
            Vec::new(),
            || answers.pop().map(|p| vec![p]),
            |_| Some(Vec::new()),
            |_| Some(value(8)),
        );
        assert_eq!(samples_of(&tasks, a), [8]);
    }

    fn live(leader: u64, member: u64, period_sum: u64) -> Live {
        Live {
            growth: [leader, member, 0, 0, 0],
            period_sum,
        }
    }

    #[test]
    fn the_counters_gain_since_the_last_move_goes_to_the_pending_task_and_its_cpu() {
        let a = key(10, 0);
        let mut tasks = vec![(a, value(5))];
        let mut pending_only = Vec::new();
        let before = [pending(Some(a), 2, 4), pending(None, 0, 6)];
        let after = vec![pending(Some(a), 2, 4), pending(None, 0, 6)];
        let sums = settle(
            &mut tasks,
            &mut pending_only,
            &before,
            after,
            vec![Some(live(50, 3, 9_000)), Some(live(70, 1, 4_000))],
            || None,
            |_| None,
            |_| None,
        );
        // The entry, the pending counts and the gain since the last move, once.
        assert_eq!(tasks[0].1.period_sum, 5_000 + 2_000 + 50);
        assert_eq!(tasks[0].1.counts[0], 5 * 7 + 2 * 7 + 3);
        // The CPU's sum with the gain that went to its task; CPU 1 runs a task
        // with no pending row, whose gain is in no row, so its sum stays as read.
        assert_eq!(sums, [Some(9_050), None]);
        assert_eq!(tasks.len(), 1);
    }

    #[test]
    fn a_cpu_settled_on_a_later_try_takes_the_gain_read_in_that_try() {
        let a = key(10, 0);
        let mut tasks = vec![(a, value(5))];
        let mut pending_only = Vec::new();
        let mut asked = Vec::new();
        let sums = settle(
            &mut tasks,
            &mut pending_only,
            &[pending(Some(a), 3, 2)],
            vec![pending(Some(a), 1, 4)],
            vec![Some(live(500, 0, 1_000))],
            || Some(vec![pending(Some(a), 1, 4)]),
            |want| {
                asked.push(want.to_vec());
                Some(vec![Some(live(20, 0, 6_000))])
            },
            |_| Some(value(8)),
        );
        assert_eq!(asked, [vec![true]]);
        // The entry looked up again (8 samples), the pending sample, the later gain.
        assert_eq!(samples_of(&tasks, a), [9]);
        assert_eq!(tasks[0].1.period_sum, 8_000 + 1_000 + 20);
        assert_eq!(sums, [Some(6_020)]);
    }

    #[test]
    fn the_gain_counts_only_attributed_members_and_never_goes_below_zero() {
        let last = LastValues {
            leader: 1_000,
            members: [10, 20, 30, 40],
            event: 0,
        };
        let now = [Some(1_500), Some(15), Some(19), Some(100), None];
        let l = Live::of(&last, &now, 2, 77);
        // Member 1 read below its last value (the program read it after us): 0;
        // members 2 and 3 are not attributed by the program.
        assert_eq!(l.growth, [500, 5, 0, 0, 0]);
        assert_eq!(l.period_sum, 77);
        assert_eq!(Live::of(&last, &[None; 5], 4, 0).growth, [0; 5]);
    }

    #[test]
    fn the_switch_end_symbol_is_found_under_its_names() {
        let k = "ffffffff813ae3c0 t finish_task_switch.isra.0\nffffffff81000000 T _stext\n";
        assert_eq!(switch_end_symbol(k), Some("finish_task_switch.isra.0"));
        let k = "0 t finish_task_switch.isra.0\n1 T finish_task_switch\n";
        assert_eq!(switch_end_symbol(k), Some("finish_task_switch"));
        assert_eq!(switch_end_symbol("0 T finish_task_switched\n"), None);
        assert_eq!(switch_end_symbol(""), None);
    }

    #[test]
    fn task_entries_default_per_cpu_and_checked_range() {
        assert_eq!(task_entries(None, 2).unwrap(), DEFAULT_TASK_ENTRIES);
        assert_eq!(task_entries(None, 64).unwrap(), 64 * TASK_ENTRIES_PER_CPU);
        assert_eq!(task_entries(Some(8), 2).unwrap(), 8);
        let e = task_entries(Some(1), 2).unwrap_err().to_string();
        assert!(e.contains("--map-entries 1 is out of range"), "{e}");
        assert!(e.contains("(2)"), "{e}");
        assert!(task_entries(Some(MAX_TASK_ENTRIES + 1), 2).is_err());
        assert!(task_entries(Some(0), 0).is_err());
    }

    /// Root only: the batched read returns exactly what reading entry by entry does,
    /// across several batches. (Entries inserted from one CPU fill that CPU's share
    /// of the per-CPU LRU lists, max_entries / possible CPUs, so stay below it.)
    /// (Ignored by default: the standard harness cannot tell at run time that a test
    /// could not run. `cargo xtask test` adds `--include-ignored` when it is root.)
    #[test]
    #[ignore = "needs root (loads BPF); `sudo -E cargo xtask test` runs it"]
    fn batched_map_read_matches_entry_by_entry() {
        let mut bpf = Bpf::load(
            Path::new(KERNEL_BTF),
            default_task_entries(4),
            0,
            Locations::Off,
        )
        .expect("load");
        {
            let mut tasks: HashMap<&mut MapData, TaskKey, TaskValue> =
                HashMap::try_from(bpf.ebpf.map_mut(TASKS_MAP).unwrap()).unwrap();
            for i in 0..6_000u32 {
                let key = TaskKey {
                    tgid: i,
                    tid: i + 1,
                    cgroup_id: u64::from(i) * 7,
                    start: u64::from(i) << 20,
                    cpu: i % 4,
                    _pad: 0,
                };
                let value = TaskValue {
                    samples: u64::from(i) + 1,
                    ..TaskValue::default()
                };
                tasks.insert(key, value, 0).unwrap();
            }
        }
        let mut batched = bpf.read().unwrap().tasks;
        let tasks: HashMap<&MapData, TaskKey, TaskValue> =
            HashMap::try_from(bpf.ebpf.map(TASKS_MAP).unwrap()).unwrap();
        let mut one_by_one = iterate(&tasks).unwrap();
        batched.sort_by_key(|(k, _)| *k);
        one_by_one.sort_by_key(|(k, _)| *k);
        assert_eq!(batched.len(), 6_000);
        assert_eq!(batched, one_by_one);
        assert!(
            batched
                .iter()
                .all(|(k, v)| v.samples == u64::from(k.tgid) + 1)
        );
    }

    #[test]
    fn run_stats_growth_and_mean() {
        let a = RunStats {
            run_time_ns: 1_000,
            run_count: 10,
        };
        let b = RunStats {
            run_time_ns: 4_000,
            run_count: 30,
        };
        assert_eq!(
            b.since(a),
            RunStats {
                run_time_ns: 3_000,
                run_count: 20
            }
        );
        assert_eq!(b.since(a).ns_per_run(), Some(150.0));
        // Counting without timing (statistics off): no mean.
        assert_eq!(
            RunStats {
                run_time_ns: 0,
                run_count: 5
            }
            .ns_per_run(),
            None
        );
        assert_eq!(RunStats::default().ns_per_run(), None);
        // A reading from another program (counts went down) saturates to 0.
        assert_eq!(a.since(b), RunStats::default());
    }

    #[test]
    fn verifier_rejection_shows_program_errno_and_log_tail() {
        let mut log: String = (0..40)
            .map(|i| format!("{i}: (85) call helper\n"))
            .collect();
        log.push_str("R1 invalid mem access 'scalar'\nprocessed 41 insns\n");
        let e = program_load_error(ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: aya_obj::VerifierLog::new(log),
        });
        let msg = e.to_string();
        let first = msg.lines().next().unwrap();
        assert!(
            first.contains("verifier rejected program `on_sample`"),
            "{first}"
        );
        assert!(first.contains("os error 13"), "{first}");
        assert!(msg.contains("R1 invalid mem access"), "{msg}");
        assert_eq!(msg.lines().count(), 21, "one line + the last 20 of the log");
        assert!(!msg.contains("\n0: (85)"), "early log lines are cut: {msg}");
    }
}
