//! Present: how the model is shown. `report` renders snapshots, plans, PMU lists and
//! the cross-check as tables and JSON; `tui` is the live view (state, keys, drawing);
//! `export` accumulates snapshots into per-container counters and encodes them as
//! OpenMetrics / Prometheus text; `http` serves that exposition.
//!
//! Pure over the model (tested without a kernel), except `http`'s socket. Uses the
//! steps below it (`model`, `kernel`'s record types, `events`, `discover`, `sys`).

pub mod export;
pub mod http;
pub mod profile;
pub mod report;
pub mod tui;
