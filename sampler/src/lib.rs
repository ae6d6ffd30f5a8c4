//! sampler: an eBPF-assisted, system-wide PMU sampler.
//!
//! The modules follow the data flow, one step each:
//!
//! ```text
//! pmu ──────► event ──► plan ────────► session (sys) ──► sampler-ebpf ──► bpf ──► model ──► rollup ──► present / tui
//! sysfs PMUs,  -e list   (event × CPU)    open per CPU,     aggregate per    read     snapshot   per process,  table, JSON,
//! CPUs (cpus)  parsed    -> PMU + attrs   attach, enable    task in maps     maps     per run    thread, cgroup live view
//! ```
//!
//! `cli` drives the steps for each command; `sys` holds every system call; `error`
//! gives each failure a message that names the problem and the fix. `userpage` and
//! `check` read the counters from user space and cross-check them with the maps;
//! `cgroup` names cgroup ids.

pub mod bpf;
pub mod btf;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod container;
pub mod counter;
pub mod cpus;
pub mod error;
pub mod event;
pub mod export;
pub mod model;
pub mod plan;
pub mod pmu;
pub mod present;
pub mod rollup;
pub mod serve;
pub mod session;
pub mod sys;
pub mod tui;
pub mod userpage;

pub use error::Error;
