//! sampler: an eBPF-assisted, system-wide PMU sampler.
//!
//! The modules follow the data flow, one step each:
//!
//! ```text
//! pmu ──────► event ──► plan ────────► session (sys) ──► sampler-ebpf ──► bpf ──► model ──► present
//! sysfs PMUs,  -e list   (event × CPU)    open per CPU,     aggregate per    read     snapshot   table,
//! CPUs (cpus)  parsed    -> PMU + attrs   attach, enable    task in maps     maps     per run    JSON
//! ```
//!
//! `cli` drives the steps for each command; `sys` holds every system call; `error`
//! gives each failure a message that names the problem and the fix.

pub mod bpf;
pub mod check;
pub mod cli;
pub mod counter;
pub mod cpus;
pub mod error;
pub mod event;
pub mod model;
pub mod plan;
pub mod pmu;
pub mod present;
pub mod session;
pub mod sys;
pub mod userpage;

pub use error::Error;
