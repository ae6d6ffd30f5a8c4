//! The records of where samples landed, as the model keeps them: symbolized location
//! entries ([`Site`]), what recording them lost ([`LocationStats`]), and the rows the
//! views show ([`FunctionRow`], [`StackRow`]), built by `functions`.

use std::{collections::BTreeMap, sync::Arc};

use sampler_common::MAX_MEMBERS;
use serde::Serialize;

use crate::symbolize::{Frame, Place, SymbolStats};

/// One location entry of an interval, symbolized: a process, a CPU and its frames
/// (innermost first), with what its samples counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub tgid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub cpu: u32,
    /// The cgroup v2 id the samples were taken in.
    pub cgroup_id: u64,
    pub frames: Vec<Arc<Frame>>,
    /// Where each frame's address is (binary, file offset, line), in the order of
    /// `frames`; empty where not known (tests).
    pub places: Vec<Place>,
    /// Whether the user stack was recorded (with `-g`; not lost to a collision or
    /// a full stack map).
    pub user_stack: bool,
    pub samples: u64,
    pub period_sum: u64,
    pub counts: [u64; MAX_MEMBERS],
}

/// What the location half recorded and lost over the interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LocationStats {
    /// Whether call stacks were recorded (`-g`).
    pub stacks: bool,
    /// Samples whose location could not be recorded (the map update failed).
    pub dropped: u64,
    /// Samples whose location went to the location map because the location ring
    /// was full (recorded all the same).
    pub ring_full: u64,
    /// Location entries the LRU map evicted to make room.
    pub evicted: u64,
    /// Stacks lost to a hash collision in the stack map.
    pub stack_collisions: u64,
    /// Stacks lost because the stack map was full.
    pub stack_full: u64,
    /// Samples without a user stack (kernel threads, or nothing to unwind).
    pub no_user_stack: u64,
    /// Other stack-recording failures.
    pub stack_errors: u64,
    /// Samples whose user stack had at most one frame: code built without frame
    /// pointers gives such short stacks.
    pub short_user_stacks: u64,
    /// Distinct addresses that could not be named, by reason (over the run).
    pub unnamed: SymbolStats,
}

/// One function's row: samples that landed in it (self), with `-g` the samples of
/// stacks through it (total), and the group's counters over its samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionRow {
    pub function: String,
    pub module: String,
    pub kernel: bool,
    /// Samples that landed in this function.
    pub samples: u64,
    /// Percent of all samples on the selected CPUs (idle included).
    pub share: f64,
    /// Samples whose stack has this function anywhere (equals `samples` without
    /// stacks).
    pub total_samples: u64,
    /// The sampling counter's growth over this function's samples.
    pub period_sum: u64,
    /// Per member of the sampling group, by name.
    pub counts: BTreeMap<String, u64>,
    /// Instructions per cycle, when the group samples cycles and counts instructions.
    pub ipc: Option<f64>,
    /// Cache misses per 100 references, when the group counts both.
    pub miss_pct: Option<f64>,
    /// IPC per PMU (core type), on heterogeneous systems.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ipc_by_pmu: BTreeMap<String, Option<f64>>,
}

/// One call chain: a process's stack (innermost frame first), with its counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackRow {
    pub tgid: u32,
    pub comm: String,
    pub frames: Vec<Frame>,
    pub samples: u64,
    pub share: f64,
    pub period_sum: u64,
    pub counts: BTreeMap<String, u64>,
    pub ipc: Option<f64>,
}
