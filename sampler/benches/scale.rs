//! The user-space half of sampler at sizes this machine does not have: 2 to 512 CPUs
//! with 4 events each (two PMUs, like a hybrid Intel machine), 1,000 to 100,000
//! tasks in the maps. Run by `cargo xtask bench` (`cargo bench -p sampler --bench
//! scale -- [--quick]`), which plots what it prints.
//!
//! Each step of a refresh runs as in `sampler top`, on synthetic inputs:
//! - set-up: the recorded Alder Lake sysfs tree widened to N CPUs is discovered and
//!   the event list planned on every CPU; the groups are opened through a simulated
//!   kernel ([`PerfSys`], as the unit tests replace it: every call answered, fds are
//!   `/dev/null`);
//! - per refresh: the task map's entries (a copy of the previous reading with every
//!   task grown: the kernel's batched map read is not simulated), the group reads of
//!   every CPU through the simulated kernel, the deltas, the snapshot, the roll-ups
//!   and the full screen drawn into a 200x50 ratatui buffer, and the JSON of
//!   `top --json`.
//!
//! Memory is the heap, counted by this binary's allocator: what stays allocated
//! between refreshes (the previous reading, the counts, the drawn snapshot), and the
//! most allocated at once during one. One JSON line per size on stdout.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::RefCell,
    collections::HashMap,
    fs, io,
    os::fd::{AsRawFd as _, BorrowedFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use perf_event_open_sys::bindings::perf_event_attr;
use ratatui::{Terminal, backend::TestBackend};
use sampler::{
    discover::{cpus::CpuList, pmu::PmuSet},
    events::plan::Rate,
    kernel::{
        bpf::MapContents,
        session::{EventCount, Session},
    },
    model::snapshot::{RunInfo, Snapshot, delta, delta_counts},
    present::{report, tui},
    run::sampling_plan,
    sys::PerfSys,
};
use sampler_common::{CpuStats, MAX_MEMBERS, TaskKey, TaskValue};

/// The heap, counted: bytes allocated now and the most since the last reset.
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; the counters are
// only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let now = if new_size >= layout.size() {
                NOW.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size()
            } else {
                NOW.fetch_sub(layout.size() - new_size, Ordering::Relaxed) - layout.size()
                    + new_size
            };
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn heap_now() -> usize {
    NOW.load(Ordering::Relaxed)
}

fn reset_peak() {
    PEAK.store(heap_now(), Ordering::Relaxed);
}

/// The sampling group's events: a leader and three members, on every CPU.
const EVENTS: &str = "{cycles,instructions,cache-misses,branch-misses}";

/// A kernel that accepts every event and answers group reads with growing counts.
#[derive(Default)]
struct SimSys {
    /// fd -> (id, leader fd)
    fds: RefCell<HashMap<RawFd, (u64, RawFd)>>,
    /// leader fd -> its members' ids, leader first
    groups: RefCell<HashMap<RawFd, Vec<u64>>>,
    reads: RefCell<u64>,
}

impl PerfSys for SimSys {
    fn perf_event_open(
        &self,
        _attr: &perf_event_attr,
        _pid: i32,
        _cpu: i32,
        group: Option<BorrowedFd<'_>>,
    ) -> io::Result<OwnedFd> {
        let fd: OwnedFd = fs::File::open("/dev/null")?.into();
        let raw = fd.as_raw_fd();
        let mut fds = self.fds.borrow_mut();
        let id = 1 + fds.len() as u64;
        let leader = group.map_or(raw, |g| g.as_raw_fd());
        fds.insert(raw, (id, leader));
        self.groups.borrow_mut().entry(leader).or_default().push(id);
        Ok(fd)
    }
    fn set_bpf(&self, _: BorrowedFd<'_>, _: BorrowedFd<'_>) -> io::Result<()> {
        Ok(())
    }
    fn enable(&self, _: BorrowedFd<'_>) -> io::Result<()> {
        Ok(())
    }
    fn disable(&self, _: BorrowedFd<'_>) -> io::Result<()> {
        Ok(())
    }
    fn id(&self, e: BorrowedFd<'_>) -> io::Result<u64> {
        self.fds
            .borrow()
            .get(&e.as_raw_fd())
            .map(|f| f.0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }
    fn read(&self, e: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        let mut reads = self.reads.borrow_mut();
        *reads += 1;
        let groups = self.groups.borrow();
        let ids = groups
            .get(&e.as_raw_fd())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        let t = *reads * 1_000_000;
        let mut words = vec![ids.len() as u64, t, t];
        for (k, id) in ids.iter().enumerate() {
            words.extend([t * (k as u64 + 1), *id]);
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(n)
    }
    fn set_map_event(&self, _: BorrowedFd<'_>, _: u32, _: BorrowedFd<'_>) -> io::Result<()> {
        Ok(())
    }
    fn clear_map_event(&self, _: BorrowedFd<'_>, _: u32) -> io::Result<()> {
        Ok(())
    }
}

/// Copies `from` to `to` (a directory tree).
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The recorded Alder Lake tree (`cpu_core` and `cpu_atom`) widened to `cpus` CPUs:
/// the first half on the P-core PMU, the second on the E-core PMU.
fn sysfs_with(cpus: u32, dir: &Path) -> io::Result<PathBuf> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sysfs/adl");
    let root = dir.join(format!("sysfs-{cpus}"));
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    copy_tree(&fixture, &root)?;
    let all = format!("0-{}\n", cpus - 1);
    fs::write(root.join("devices/system/cpu/online"), &all)?;
    fs::write(root.join("devices/system/cpu/possible"), &all)?;
    let half = cpus / 2;
    let pmus = root.join("bus/event_source/devices");
    fs::write(pmus.join("cpu_core/cpus"), format!("0-{}\n", half - 1))?;
    fs::write(pmus.join("cpu_atom/cpus"), format!("{half}-{}\n", cpus - 1))?;
    Ok(root)
}

/// `tasks` map entries on `cpus` CPUs: 8 threads a process, 50 containers; every
/// entry has grown by `round` samples' worth since the first reading.
fn task_map(tasks: usize, cpus: u32, round: u64) -> MapContents {
    let entries = (0..tasks)
        .map(|i| {
            let tgid = 1_000 + (i / 8) as u32;
            let key = TaskKey {
                tgid,
                tid: 1_000 + i as u32,
                cgroup_id: 1 + (i as u64 / 8) % 50,
                start: u64::from(tgid) * 1_000,
                cpu: i as u32 % cpus,
                ..TaskKey::default()
            };
            let samples = 1 + (i as u64 % 97) * round;
            let mut comm = [0u8; 16];
            let name = format!("task-{}", i / 8);
            comm[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
            let value = TaskValue {
                samples,
                period_sum: samples * 1_000_000,
                counts: std::array::from_fn::<u64, MAX_MEMBERS, _>(|m| {
                    samples * [2_000_000, 10_000, 5_000, 0][m % 4]
                }),
                comm: sampler_common::Comm(comm),
            };
            (key, value)
        })
        .collect();
    let cpu_stats = (0..cpus)
        .map(|_| CpuStats {
            samples: tasks as u64 * round,
            period_sum: tasks as u64 * round * 1_000_000,
            inserted: tasks as u64,
            ..CpuStats::default()
        })
        .collect();
    MapContents {
        tasks: entries,
        cpu_stats,
        ..MapContents::default()
    }
}

#[derive(Default)]
struct Steps {
    maps: Duration,
    counts: Duration,
    snapshot: Duration,
    screen: Duration,
    json: Duration,
}

impl Steps {
    fn total(&self) -> Duration {
        self.maps + self.counts + self.snapshot + self.screen + self.json
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One size: set-up once, then `refreshes` refreshes; one JSON line.
fn measure(cpus: u32, tasks: usize, refreshes: usize, dir: &Path) -> Result<String, String> {
    let root = sysfs_with(cpus, dir).map_err(|e| format!("sysfs tree: {e}"))?;
    let base = heap_now();
    let started = Instant::now();
    let pmus = PmuSet::discover(&root).map_err(|e| e.to_string())?;
    let online = CpuList::parse(&format!("0-{}", cpus - 1)).map_err(|e| e.to_string())?;
    let sp = sampling_plan(Some(EVENTS), &pmus, &online, None).map_err(|e| e.to_string())?;
    let planned = started.elapsed();
    let sys = SimSys::default();
    let rate = Rate::Frequency(999);
    let mut session = Session::open(&sys, &sp.plan.plan, rate, sp.cpu_clock_fallback)
        .map_err(|e| e.to_string())?;
    session.enable().map_err(|e| e.to_string())?;
    let opened = started.elapsed() - planned;
    let events = session
        .groups()
        .iter()
        .map(|g| g.events.len())
        .sum::<usize>();
    let info = RunInfo::of(session.leaders(), rate, sp.members.clone());
    let setup_heap = heap_now().saturating_sub(base);

    let mut terminal = Terminal::new(TestBackend::new(200, 50)).map_err(|e| e.to_string())?;
    let mut app = tui::App::new(EVENTS.to_owned(), Duration::from_secs(1), 200);
    let name_of = |id: u64| format!("container-{id}");
    let mut prev = task_map(tasks, cpus, 0);
    let mut prev_counts: Vec<EventCount> = session.read_counts().map_err(|e| e.to_string())?;
    let mut totals = Vec::new();
    let mut steps_ms: [Vec<f64>; 5] = Default::default();
    let mut retained = 0;
    let mut peak = 0;
    let mut json_bytes = 0;
    let mut rows = 0;
    for round in 1..=refreshes as u64 {
        // The "kernel's" map, filled outside the measurement.
        let kernel = task_map(tasks, cpus, round);
        reset_peak();
        let before = heap_now();
        let mut s = Steps::default();
        let t = Instant::now();
        let cur = kernel.clone();
        s.maps = t.elapsed();
        let t = Instant::now();
        let cur_counts = session.read_counts().map_err(|e| e.to_string())?;
        s.counts = t.elapsed();
        let t = Instant::now();
        let interval = delta(&prev, &cur);
        let snapshot = Snapshot::build(
            &interval,
            &delta_counts(&prev_counts, &cur_counts),
            &info,
            1.0,
        );
        rows = snapshot.tasks.len();
        s.snapshot = t.elapsed();
        let t = Instant::now();
        let json = report::json(&snapshot);
        json_bytes = json.len();
        drop(json);
        s.json = t.elapsed();
        let t = Instant::now();
        app.update(snapshot);
        terminal
            .draw(|f| tui::render(f, &app, &name_of))
            .map_err(|e| e.to_string())?;
        s.screen = t.elapsed();
        drop(interval);
        (prev, prev_counts) = (cur, cur_counts);
        peak = peak.max(PEAK.load(Ordering::Relaxed).saturating_sub(before));
        drop(kernel);
        retained = heap_now().saturating_sub(base);
        totals.push(ms(s.total()));
        for (v, d) in steps_ms
            .iter_mut()
            .zip([s.maps, s.counts, s.snapshot, s.screen, s.json])
        {
            v.push(ms(d));
        }
    }
    let [maps, counts, snapshot, screen, json] = steps_ms.map(median);
    Ok(serde_json::json!({
        "cpus": cpus,
        "tasks": tasks,
        "events": events,
        "task_rows": rows,
        "plan_ms": ms(planned),
        "open_ms": ms(opened),
        "refresh_ms": median(totals),
        "steps_ms": {
            "maps": maps, "counts": counts, "snapshot": snapshot,
            "screen": screen, "json": json,
        },
        "setup_heap_bytes": setup_heap,
        "retained_heap_bytes": retained,
        "refresh_peak_heap_bytes": peak,
        "json_bytes": json_bytes,
    })
    .to_string())
}

/// Raises the soft limit on open files to the hard one: 512 CPUs x 4 events are
/// 2,048 descriptors.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `--quick` is the smoke run.
    let quick = args.iter().any(|a| a == "--quick");
    let (cpus, tasks, refreshes): (&[u32], &[usize], usize) = if quick {
        (&[2, 64], &[1_000, 10_000], 2)
    } else {
        (
            &[2, 8, 32, 128, 512],
            &[1_000, 3_000, 10_000, 30_000, 100_000],
            5,
        )
    };
    raise_nofile();
    let dir = std::env::temp_dir().join(format!("sampler-scale-{}", std::process::id()));
    let mut failed = false;
    for &c in cpus {
        for &t in tasks {
            match measure(c, t, refreshes, &dir) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("scale: {c} CPUs, {t} tasks: {e}");
                    failed = true;
                }
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
    if failed {
        std::process::exit(1);
    }
}
