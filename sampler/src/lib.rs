//! sampler: an eBPF-assisted, system-wide PMU sampler.
//!
//! One folder per step of the data flow; a step uses the steps before it (and `sys`)
//! and never a step after it:
//!
//! ```text
//! discover ──► events ──────► kernel ─────────────────────► symbolize ──► model ─────────► present ──► run ──► cli
//! sysfs PMUs,  -e syntax,     open per CPU, attach BPF,      addresses to  snapshots,       tables,     the     arguments,
//! CPU lists,   the plan       aggregate in BPF maps, read    functions     roll-ups,        JSON, TUI,  shared  one file per
//! BTF, cgroups (event × CPU)  maps, groups and user pages    (blazesym)    functions,       OpenMetrics sampling command
//!                                                                          containers,      and HTTP    loop
//!                                                                          cross-check
//!
//! sys: every system call and bounded file read, under all of them (tests replace it)
//! ```
//!
//! The BPF side of `kernel` (the program that aggregates in the maps) is the
//! `sampler-ebpf` crate; the records both sides share are in `sampler-common`.
//! Each step has its own error type; `cli` composes them, and every message names the
//! problem and the fix.

pub mod sys;

pub mod discover;

pub mod events;

pub mod kernel;

pub mod symbolize;

pub mod model;

pub mod present;

pub mod run;

pub mod cli;
