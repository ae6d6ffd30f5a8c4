//! Model: what the numbers mean. `snapshot` turns map contents and counter reads into
//! one run's (or one interval's) rows per task and CPU with shares and deltas;
//! `rollup` groups them per process, thread, cgroup, CPU and event with the derived
//! ratios (IPC, cache-miss %); `container` names containers and pods from cgroup
//! paths; `locations` and `functions` give where the samples landed per function and
//! call chain, with the counters per function; `check` is the three-way cross-check (BPF maps, `read()`, user page).
//!
//! Pure except `check`'s reader threads, which open their own events through
//! `kernel`. Uses: `discover`, `events`, `kernel`, `sys`.

pub mod check;
pub mod container;
pub mod functions;
pub mod locations;
pub mod rollup;
pub mod snapshot;
