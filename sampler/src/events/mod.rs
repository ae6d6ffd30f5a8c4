//! Events: what the user asked for, and how to open it on each CPU. `syntax` parses
//! perf's event syntax (`-e`) into groups of events; `plan` turns (events × CPUs)
//! into the PMU and `perf_event_attr` encodings for each CPU, through the PMU that
//! covers that CPU. Pure: no perf system calls.
//!
//! Uses: `discover` (the PMUs, their formats and aliases, CPU lists). Errors:
//! [`syntax::ParseError`] and [`plan::PlanError`].

pub mod plan;
pub mod syntax;
