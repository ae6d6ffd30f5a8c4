//! The live view of `sampler top`: state, keys and rendering (ratatui). The terminal
//! and the event loop are in `cli/top.rs`; everything here is pure over a [`Snapshot`]
//! and tested with ratatui's `TestBackend`.

use std::{collections::VecDeque, fmt::Write as _, time::Duration};

use ratatui::{
    Frame,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row as TableRow, Sparkline, Table, Wrap},
};

use crate::{
    model::functions::{self, ProcessFilter},
    model::locations::FunctionRow,
    model::rollup::{self, Ratios, Row},
    model::snapshot::Snapshot,
};

/// What the table shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Processes,
    Threads,
    Cgroups,
    Cpus,
    Events,
    /// Where the samples landed, per function (of one process after Enter on it).
    Functions,
    /// The call chains that reach one function (Enter on it, with `-g`).
    Callers,
}

impl View {
    const ALL: [Self; 6] = [
        Self::Processes,
        Self::Threads,
        Self::Cgroups,
        Self::Cpus,
        Self::Events,
        Self::Functions,
    ];

    fn title(self) -> &'static str {
        match self {
            Self::Processes => "[p]rocesses",
            Self::Threads => "[t]hreads",
            Self::Cgroups => "c[g]roups",
            Self::Cpus => "[c]pus",
            Self::Events => "e[v]ents",
            Self::Functions => "[f]unctions",
            Self::Callers => "callers",
        }
    }
}

/// What the function views are narrowed to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Focus {
    /// One process's functions: (pid, start time, name).
    pub process: Option<(u32, u64, String)>,
    /// The callers of one function: (function, module).
    pub function: Option<(String, String)>,
}

/// Sort orders of the task views, cycled with `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Samples,
    Period,
    Ipc,
    Id,
    Name,
}

impl Sort {
    const ALL: [Self; 5] = [Self::Period, Self::Samples, Self::Ipc, Self::Id, Self::Name];

    fn name(self) -> &'static str {
        match self {
            Self::Samples => "samples",
            Self::Period => "cycles/time",
            Self::Ipc => "IPC",
            Self::Id => "id",
            Self::Name => "name",
        }
    }
}

/// A line being typed: the filter, or a new event list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Filter(String),
    Events(String),
}

/// What the event loop must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// The interval changed: reschedule the next refresh.
    Interval,
    /// Restart sampling with these events.
    Events(String),
    /// The function view is up: locations must be recorded.
    Functions,
}

/// Refreshes of history kept for the sparkline.
const HISTORY: usize = 120;
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

pub struct App {
    pub view: View,
    pub sort: Sort,
    pub reverse: bool,
    pub filter: String,
    pub input: Option<Input>,
    pub paused: bool,
    pub interval: Duration,
    pub help: bool,
    /// Samples per second of each refresh, oldest first.
    pub history: VecDeque<u64>,
    pub snapshot: Option<Snapshot>,
    /// The `-e` argument in use.
    pub events: String,
    /// A message for the status line (e.g. why new events were refused).
    pub status: Option<String>,
    /// Rows shown at most.
    pub limit: usize,
    /// What the last refresh cost: map read, roll-up and drawing the screen.
    pub refresh_ms: Option<f64>,
    /// The highlighted row of the table (Up/Down), for Enter.
    pub selected: usize,
    /// What the function views are narrowed to.
    pub focus: Focus,
}

/// What the live view's refreshes cost (map read, roll-up, drawing), for the log.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RefreshCosts {
    pub count: u64,
    pub total_ms: f64,
    pub slowest_ms: f64,
    /// Task rows of the largest snapshot drawn.
    pub most_tasks: usize,
}

impl RefreshCosts {
    pub fn record(&mut self, ms: f64, tasks: usize) {
        self.count += 1;
        self.total_ms += ms;
        self.slowest_ms = self.slowest_ms.max(ms);
        self.most_tasks = self.most_tasks.max(tasks);
    }

    /// One line: `N refreshes (map read, roll-up, render): mean X ms, slowest Y ms,
    /// up to T task rows`; `None` before the first refresh.
    pub fn summary(&self) -> Option<String> {
        (self.count > 0).then(|| {
            format!(
                "{} refreshes (map read, roll-up, render): mean {:.2} ms, slowest {:.2} ms, \
                 up to {} task rows",
                self.count,
                self.total_ms / self.count as f64,
                self.slowest_ms,
                self.most_tasks
            )
        })
    }
}

impl App {
    pub fn new(events: String, interval: Duration, limit: usize) -> Self {
        Self {
            view: View::Processes,
            // By cycles (the sampling event's count), or time under cpu-clock.
            sort: Sort::Period,
            reverse: false,
            filter: String::new(),
            input: None,
            paused: false,
            interval,
            help: false,
            history: VecDeque::new(),
            snapshot: None,
            events,
            status: None,
            limit,
            refresh_ms: None,
            selected: 0,
            focus: Focus::default(),
        }
    }

    /// A new refresh (ignored while paused, so the screen holds still).
    pub fn update(&mut self, s: Snapshot) {
        if self.paused {
            return;
        }
        let rate = if s.duration_s > 0.0 {
            (s.samples as f64 / s.duration_s).round() as u64
        } else {
            0
        };
        self.history.push_back(rate);
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.snapshot = Some(s);
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(input) = &mut self.input {
            let text = match input {
                Input::Filter(t) | Input::Events(t) => t,
            };
            match key.code {
                KeyCode::Esc => {
                    if matches!(input, Input::Filter(_)) {
                        self.filter.clear();
                    }
                    self.input = None;
                }
                KeyCode::Enter => {
                    let done = self.input.take();
                    match done {
                        Some(Input::Filter(t)) => self.filter = t,
                        Some(Input::Events(t)) if !t.trim().is_empty() => {
                            return Action::Events(t.trim().to_owned());
                        }
                        _ => {}
                    }
                }
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if text.len() < 256 && !c.is_control() => text.push(c),
                _ => {}
            }
            if let Some(Input::Filter(t)) = &self.input {
                self.filter = t.clone();
            }
            return Action::None;
        }
        if self.help {
            self.help = false;
            if !matches!(key.code, KeyCode::Char('q')) {
                return Action::None;
            }
        }
        let before = self.view;
        let action = self.on_view_key(key);
        if before != self.view {
            self.selected = 0;
        }
        if action == Action::None && matches!(self.view, View::Functions | View::Callers) {
            return Action::Functions;
        }
        action
    }

    fn on_view_key(&mut self, key: KeyEvent) -> Action {
        match key.code {
            // Esc backs out of a narrowed view first.
            KeyCode::Esc if self.view == View::Callers => {
                self.focus.function = None;
                self.view = View::Functions;
            }
            KeyCode::Esc if self.view == View::Functions && self.focus.process.is_some() => {
                self.focus.process = None;
                self.view = View::Processes;
            }
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down => self.selected = self.selected.saturating_add(1),
            KeyCode::Enter => self.enter(),
            KeyCode::Char('f') => {
                self.focus = Focus::default();
                self.view = View::Functions;
            }
            KeyCode::Char('h' | '?') => self.help = true,
            KeyCode::Char('p') => self.view = View::Processes,
            KeyCode::Char('t') => self.view = View::Threads,
            KeyCode::Char('g') => self.view = View::Cgroups,
            KeyCode::Char('c') => self.view = View::Cpus,
            KeyCode::Char('v') => self.view = View::Events,
            KeyCode::Tab => {
                let i = View::ALL.iter().position(|v| *v == self.view).unwrap_or(0);
                self.view = View::ALL[(i + 1) % View::ALL.len()];
                self.focus = Focus::default();
            }
            KeyCode::Char('s') => {
                let i = Sort::ALL.iter().position(|s| *s == self.sort).unwrap_or(0);
                self.sort = Sort::ALL[(i + 1) % Sort::ALL.len()];
            }
            KeyCode::Char('r') => self.reverse = !self.reverse,
            KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Char('/') => self.input = Some(Input::Filter(self.filter.clone())),
            KeyCode::Char('e') => self.input = Some(Input::Events(self.events.clone())),
            KeyCode::Char('+') => {
                self.interval = (self.interval * 2).min(MAX_INTERVAL);
                return Action::Interval;
            }
            KeyCode::Char('-') => {
                self.interval = (self.interval / 2).max(MIN_INTERVAL);
                return Action::Interval;
            }
            _ => {}
        }
        Action::None
    }

    /// Enter: a process's functions, or a function's callers (with stacks).
    fn enter(&mut self) {
        let Some(s) = self.snapshot.as_ref() else {
            return;
        };
        match self.view {
            View::Processes => {
                let rows = self.rows(s, &|id| format!("#{id}"));
                if let Some(r) = rows.get(self.selected) {
                    self.focus = Focus {
                        process: Some((r.tgid, r.start_ns, r.name.clone())),
                        function: None,
                    };
                    self.view = View::Functions;
                }
            }
            View::Functions if s.stacks.is_some() => {
                let rows = self.function_rows(s);
                if let Some(r) = rows.get(self.selected) {
                    self.focus.function = Some((r.function.clone(), r.module.clone()));
                    self.view = View::Callers;
                }
            }
            _ => {}
        }
    }

    fn process_filter(&self) -> ProcessFilter {
        self.focus
            .process
            .as_ref()
            .map(|(tgid, start, _)| (*tgid, *start))
    }

    /// The rows of the function view, filtered and sorted.
    pub fn function_rows(&self, s: &Snapshot) -> Vec<FunctionRow> {
        let mut rows = functions::functions(s, self.process_filter());
        let needle = self.filter.to_lowercase();
        if !needle.is_empty() {
            rows.retain(|r| {
                r.function.to_lowercase().contains(&needle)
                    || r.module.to_lowercase().contains(&needle)
            });
        }
        let ipc = |r: &FunctionRow| r.ipc.unwrap_or(-1.0);
        rows.sort_by(|a, b| match self.sort {
            Sort::Samples | Sort::Id => b.samples.cmp(&a.samples),
            Sort::Period => b.period_sum.cmp(&a.period_sum),
            Sort::Ipc => ipc(b).total_cmp(&ipc(a)),
            Sort::Name => a.function.cmp(&b.function),
        });
        if self.reverse {
            rows.reverse();
        }
        rows
    }

    /// The rows of a task view, filtered and sorted.
    pub fn rows(&self, s: &Snapshot, name_of: &dyn Fn(u64) -> String) -> Vec<Row> {
        let mut rows = match self.view {
            View::Threads => rollup::threads(s),
            View::Cgroups => rollup::cgroups(s, name_of),
            _ => rollup::processes(s),
        };
        let needle = self.filter.to_lowercase();
        if !needle.is_empty() {
            rows.retain(|r| {
                r.name.to_lowercase().contains(&needle)
                    || r.id.to_string() == needle
                    || r.tgid.to_string() == needle
                    || name_of(r.cgroup_id).to_lowercase().contains(&needle)
            });
        }
        let ratios = Ratios::of(s);
        let ipc = |r: &Row| ratios.ipc(r.period_sum, &r.counts).unwrap_or(-1.0);
        rows.sort_by(|a, b| match self.sort {
            Sort::Samples => b.samples.cmp(&a.samples),
            Sort::Period => b.period_sum.cmp(&a.period_sum),
            Sort::Ipc => ipc(b).total_cmp(&ipc(a)),
            Sort::Id => a.id.cmp(&b.id),
            Sort::Name => a.name.cmp(&b.name),
        });
        if self.reverse {
            rows.reverse();
        }
        rows
    }
}

/// 1234567 -> "1.23M".
pub fn human(v: u64) -> String {
    const UNITS: [(f64, &str); 4] = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")];
    let f = v as f64;
    for (scale, unit) in UNITS {
        if f >= scale {
            return format!("{:.2}{unit}", f / scale);
        }
    }
    v.to_string()
}

fn header_lines(app: &App, s: Option<&Snapshot>) -> Vec<Line<'static>> {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut first = vec![Span::styled("sampler top", bold)];
    let Some(s) = s else {
        first.push(Span::raw("  waiting for the first refresh..."));
        return vec![Line::from(first)];
    };
    let events: Vec<&str> = {
        let mut e: Vec<&str> = s.cpus.iter().map(|c| c.event.as_str()).collect();
        e.dedup();
        e
    };
    let rate = match (s.frequency_hz, s.period) {
        (Some(hz), _) => format!("{hz} Hz"),
        (None, Some(p)) => format!("every {p} events"),
        _ => String::new(),
    };
    first.push(Span::raw(format!(
        "  {} ({})  {rate}  every {:.1} s",
        events.join(","),
        s.source.as_str(),
        app.interval.as_secs_f64()
    )));
    if app.paused {
        first.push(Span::styled(
            "  [PAUSED]",
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    let pmus = rollup::pmu_cpus(s)
        .into_iter()
        .map(|(p, c)| format!("{p}: {c}"))
        .collect::<Vec<_>>()
        .join("  ");
    let mut load = String::from("busy:");
    for c in rollup::cpus(s) {
        let _ = write!(load, " {}:{:.0}%", c.cpu, c.busy_pct);
    }
    let check = match s.check_summary() {
        Some((d, true)) => Span::styled(
            format!("check BPF vs read(): ok (max {:.2}%)", d * 100.0),
            Style::default().fg(Color::Green),
        ),
        Some((d, false)) => Span::styled(
            format!("check BPF vs read(): DIFFER by up to {:.2}%", d * 100.0),
            Style::default().fg(Color::Red),
        ),
        None => Span::raw("check BPF vs read(): too few samples"),
    };
    let mut status = vec![
        check,
        Span::raw(format!("  dropped {}  evicted {}", s.dropped, s.evicted)),
    ];
    if s.dropped > 0 {
        status[1].style = Style::default().fg(Color::Red);
    }
    if let Some(b) = s.bpf {
        status.push(Span::raw(format!("  BPF {:.0} ns/sample", b.ns_per_sample)));
    }
    if let Some(ms) = app.refresh_ms {
        status.push(Span::raw(format!("  refresh {ms:.1} ms")));
    }
    let mut lines = vec![
        Line::from(first),
        Line::from(format!("PMUs  {pmus}")),
        Line::from(load),
        Line::from(status),
    ];
    for w in s.warnings.iter().take(2) {
        lines.push(Line::styled(
            format!("warning: {w}"),
            Style::default().fg(Color::Yellow),
        ));
    }
    if let Some(m) = &app.status {
        lines.push(Line::styled(m.clone(), Style::default().fg(Color::Red)));
    }
    lines
}

fn pct(v: f64) -> String {
    format!("{v:.1}")
}

/// Table of a task view: header cells, rows, widths.
fn task_table(
    app: &App,
    s: &Snapshot,
    name_of: &dyn Fn(u64) -> String,
) -> (Vec<String>, Vec<Vec<String>>, Vec<Constraint>) {
    let ratios = Ratios::of(s);
    let hetero = rollup::heterogeneous(s);
    let period_name = period_name(&ratios);
    let mut head: Vec<String> = match app.view {
        View::Threads => vec!["TID".into(), "PID".into(), "COMM".into(), "CGROUP".into()],
        View::Cgroups => vec!["CGROUP".into()],
        _ => vec!["PID".into(), "COMM".into(), "CGROUP".into()],
    };
    let mut widths: Vec<Constraint> = match app.view {
        View::Threads => vec![
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(16),
            Constraint::Min(10),
        ],
        View::Cgroups => vec![Constraint::Min(20)],
        _ => vec![
            Constraint::Length(8),
            Constraint::Length(16),
            Constraint::Min(10),
        ],
    };
    head.extend(["SAMPLES".into(), "SHARE%".into(), period_name.into()]);
    widths.extend([
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(9),
    ]);
    for m in &s.members {
        head.push(m.to_uppercase().chars().take(12).collect());
        widths.push(Constraint::Length(12));
    }
    if ratios.instructions.is_some() {
        head.push("IPC".into());
        widths.push(Constraint::Length(5));
        if hetero {
            head.push("IPC BY CORE TYPE".into());
            widths.push(Constraint::Length(28));
        }
    }
    if ratios.cache_misses.is_some() && ratios.cache_references.is_some() {
        head.push("MISS%".into());
        widths.push(Constraint::Length(6));
    }
    let rows = app
        .rows(s, name_of)
        .into_iter()
        .take(app.limit)
        .map(|r| {
            let mut cells: Vec<String> = match app.view {
                View::Threads => vec![
                    r.id.to_string(),
                    r.tgid.to_string(),
                    r.name.clone(),
                    name_of(r.cgroup_id),
                ],
                View::Cgroups => vec![r.name.clone()],
                _ => vec![r.id.to_string(), r.name.clone(), name_of(r.cgroup_id)],
            };
            let period = period_text(&ratios, r.period_sum);
            cells.extend([r.samples.to_string(), pct(r.share), period]);
            cells.extend(r.counts.iter().map(|&c| human(c)));
            if ratios.instructions.is_some() {
                cells.push(
                    ratios
                        .ipc(r.period_sum, &r.counts)
                        .map_or("-".into(), |v| format!("{v:.2}")),
                );
                if hetero {
                    cells.push(
                        r.per_pmu
                            .iter()
                            .filter_map(|(pmu, (p, c))| {
                                ratios.ipc(*p, c).map(|v| format!("{pmu} {v:.2}"))
                            })
                            .collect::<Vec<_>>()
                            .join(" / "),
                    );
                }
            }
            if ratios.cache_misses.is_some() && ratios.cache_references.is_some() {
                cells.push(
                    ratios
                        .miss_pct(&r.counts)
                        .map_or("-".into(), |v| format!("{v:.1}")),
                );
            }
            cells
        })
        .collect();
    (head, rows, widths)
}

/// Table of the function view: where the samples landed, with each function's
/// counters.
fn function_table(app: &App, s: &Snapshot) -> (Vec<String>, Vec<Vec<String>>, Vec<Constraint>) {
    let ratios = Ratios::of(s);
    let hetero = rollup::heterogeneous(s);
    let stacks = s.stacks.is_some();
    let mut head: Vec<String> = vec!["FUNCTION".into(), "MODULE".into()];
    let mut widths = vec![Constraint::Min(24), Constraint::Length(14)];
    head.extend(["SAMPLES".into(), "SHARE%".into()]);
    widths.extend([Constraint::Length(8), Constraint::Length(7)]);
    if stacks {
        head.push("TOTAL%".into());
        widths.push(Constraint::Length(7));
    }
    head.push(period_name(&ratios).into());
    widths.push(Constraint::Length(9));
    for m in &s.members {
        head.push(m.to_uppercase().chars().take(12).collect());
        widths.push(Constraint::Length(12));
    }
    if ratios.instructions.is_some() {
        head.push("IPC".into());
        widths.push(Constraint::Length(5));
        if hetero {
            head.push("IPC BY CORE TYPE".into());
            widths.push(Constraint::Length(28));
        }
    }
    let misses = ratios.cache_misses.is_some() && ratios.cache_references.is_some();
    if misses {
        head.push("MISS%".into());
        widths.push(Constraint::Length(6));
    }
    let rows = app
        .function_rows(s)
        .into_iter()
        .take(app.limit)
        .map(|r| {
            let mut cells = vec![
                r.function.clone(),
                r.module.clone(),
                r.samples.to_string(),
                pct(r.share),
            ];
            if stacks {
                cells.push(pct(percent(r.total_samples, s.samples)));
            }
            cells.push(period_text(&ratios, r.period_sum));
            cells.extend(
                s.members
                    .iter()
                    .map(|m| human(r.counts.get(m).copied().unwrap_or(0))),
            );
            if ratios.instructions.is_some() {
                cells.push(r.ipc.map_or("-".into(), |v| format!("{v:.2}")));
                if hetero {
                    cells.push(
                        r.ipc_by_pmu
                            .iter()
                            .filter_map(|(pmu, v)| v.map(|v| format!("{pmu} {v:.2}")))
                            .collect::<Vec<_>>()
                            .join(" / "),
                    );
                }
            }
            if misses {
                cells.push(r.miss_pct.map_or("-".into(), |v| format!("{v:.1}")));
            }
            cells
        })
        .collect();
    (head, rows, widths)
}

/// Table of the callers view: the call chains that reach the focused function.
fn callers_table(app: &App, s: &Snapshot) -> (Vec<String>, Vec<Vec<String>>, Vec<Constraint>) {
    let head = ["CALL CHAIN (outermost first)", "SAMPLES", "SHARE%"]
        .map(String::from)
        .to_vec();
    let widths = vec![
        Constraint::Min(30),
        Constraint::Length(8),
        Constraint::Length(7),
    ];
    let Some((function, module)) = &app.focus.function else {
        return (head, Vec::new(), widths);
    };
    let rows = functions::callers(s, function, module)
        .into_iter()
        .take(app.limit)
        .map(|(chain, n)| {
            vec![
                chain
                    .iter()
                    .map(|f| f.function.as_str())
                    .collect::<Vec<_>>()
                    .join(" > "),
                n.to_string(),
                pct(percent(n, s.samples)),
            ]
        })
        .collect();
    (head, rows, widths)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn period_name(ratios: &Ratios) -> &'static str {
    if ratios.cycles {
        "CYCLES"
    } else if ratios.clock {
        "TIME ms"
    } else {
        "PERIOD"
    }
}

fn period_text(ratios: &Ratios, period: u64) -> String {
    if ratios.clock {
        format!("{:.1}", period as f64 / 1e6)
    } else {
        human(period)
    }
}

fn cpu_table(s: &Snapshot) -> (Vec<String>, Vec<Vec<String>>, Vec<Constraint>) {
    let head = [
        "CPU",
        "PMU / CORE TYPE",
        "EVENT",
        "SAMPLES",
        "BUSY%",
        "BPF",
        "READ",
        "DIFF%",
    ]
    .map(String::from)
    .to_vec();
    let widths = vec![
        Constraint::Length(4),
        Constraint::Min(16),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(6),
    ];
    let rows = rollup::cpus(s)
        .into_iter()
        .map(|c| {
            let check = s.check.iter().find(|k| k.cpu == c.cpu);
            vec![
                c.cpu.to_string(),
                c.pmu,
                c.event,
                c.samples.to_string(),
                pct(c.busy_pct),
                check.map_or("-".into(), |k| human(k.bpf)),
                check.map_or("-".into(), |k| human(k.read)),
                check.map_or("-".into(), |k| {
                    if k.samples < crate::model::snapshot::CHECK_MIN_SAMPLES {
                        "idle".into()
                    } else {
                        format!("{:.2}{}", k.rel_diff * 100.0, if k.ok() { "" } else { "!" })
                    }
                }),
            ]
        })
        .collect();
    (head, rows, widths)
}

fn event_table(s: &Snapshot) -> (Vec<String>, Vec<Vec<String>>, Vec<Constraint>) {
    let head = ["EVENT", "GROUP", "CPUS", "COUNT", "SCALED", "COVERAGE%"]
        .map(String::from)
        .to_vec();
    let widths = vec![
        Constraint::Min(20),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(9),
    ];
    let rows = rollup::events(s)
        .into_iter()
        .map(|e| {
            vec![
                e.name,
                e.group.to_string(),
                e.cpus.to_string(),
                human(e.value),
                human(e.scaled),
                pct(e.coverage * 100.0),
            ]
        })
        .collect();
    (head, rows, widths)
}

/// The current view's table: header cells, rows, widths.
fn table(
    app: &App,
    s: &Snapshot,
    name_of: &dyn Fn(u64) -> String,
) -> (Vec<String>, Vec<Vec<String>>, Vec<Constraint>) {
    match app.view {
        View::Cpus => cpu_table(s),
        View::Events => event_table(s),
        View::Functions => function_table(app, s),
        View::Callers => callers_table(app, s),
        _ => task_table(app, s, name_of),
    }
}

/// What a narrowed function view shows, and what the function view lacks.
fn focus_title(app: &App) -> Option<String> {
    let s = app.snapshot.as_ref()?;
    match app.view {
        View::Callers => app
            .focus
            .function
            .as_ref()
            .map(|(f, m)| format!("callers of {f} ({m})  Esc: back")),
        View::Functions if s.functions.is_none() => Some(
            "functions: recording where samples land from now on; rows come with the next refresh"
                .to_owned(),
        ),
        View::Functions => app.focus.process.as_ref().map_or_else(
            || {
                Some(if s.stacks.is_some() {
                    "functions of all processes  Enter: callers".to_owned()
                } else {
                    "functions of all processes  (sampler top -g: callers)".to_owned()
                })
            },
            |(pid, _, name)| Some(format!("functions of {name} ({pid})  Esc: back")),
        ),
        _ => None,
    }
}

const HELP: &str = "\
p t g c v f processes, threads, cgroups, CPUs, events, functions (Tab: next view)
Up Down     move the selection; Enter: that process's functions, that
            function's callers (with -g); Esc: back
s           next sort order (cycles/time, samples, IPC, id, name)
r           reverse the order
/           filter by name, pid or cgroup (Enter keeps it, Esc clears)
e           sample other events (perf syntax, e.g. {cycles,instructions})
space       pause / resume
+ -         slower / faster refresh
h ?         this help (any key closes it)
q Esc       quit";

/// Draws the whole screen for `app`; `name_of` names cgroup ids.
pub fn render(f: &mut Frame<'_>, app: &App, name_of: &dyn Fn(u64) -> String) {
    let area = f.area();
    let s = app.snapshot.as_ref();
    let header = header_lines(app, s);
    let spark_height = if area.height >= 20 { 3 } else { 0 };
    let [head_area, spark_area, tabs_area, table_area, foot_area] = Layout::vertical([
        Constraint::Length(header.len() as u16),
        Constraint::Length(spark_height),
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(header), head_area);
    if spark_height > 0 {
        let data: Vec<u64> = app.history.iter().copied().collect();
        let last = data.last().copied().unwrap_or(0);
        let width = spark_area.width.saturating_sub(2) as usize;
        let shown = &data[data.len().saturating_sub(width)..];
        f.render_widget(
            Sparkline::default()
                .block(
                    Block::default()
                        .borders(Borders::TOP)
                        .title(format!("samples/s {last} (last {} refreshes)", shown.len())),
                )
                .data(shown)
                .style(Style::default().fg(Color::Cyan)),
            spark_area,
        );
    }
    let mut tabs: Vec<Span<'_>> = Vec::new();
    for v in View::ALL {
        let style = if v == app.view {
            Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else {
            Style::default()
        };
        tabs.push(Span::styled(v.title(), style));
        tabs.push(Span::raw(" "));
    }
    tabs.push(Span::raw(format!(
        " sort: {}{}",
        app.sort.name(),
        if app.reverse { " (reversed)" } else { "" }
    )));
    if !app.filter.is_empty() {
        tabs.push(Span::raw(format!("  filter: {}", app.filter)));
    }
    if let Some(title) = focus_title(app) {
        tabs.push(Span::raw(format!("  {title}")));
    }
    f.render_widget(Paragraph::new(Line::from(tabs)), tabs_area);

    if let Some(s) = s {
        let (head, rows, mut widths) = table(app, s, name_of);
        let shown = rows.len();
        // Fixed columns grow to fit what they hold; the Min column takes the rest.
        for (i, w) in widths.iter_mut().enumerate() {
            if let Constraint::Length(n) = *w {
                let widest = rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0);
                *w = Constraint::Length(n.max(u16::try_from(widest).unwrap_or(u16::MAX)));
            }
        }
        let table = Table::new(
            rows.into_iter()
                .map(|r| TableRow::new(r.into_iter().map(Cell::from))),
            widths,
        )
        .header(
            TableRow::new(head.into_iter().map(Cell::from))
                .style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED)),
        )
        .column_spacing(1)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
        let mut state = ratatui::widgets::TableState::default();
        state.select(Some(app.selected.min(shown.saturating_sub(1))));
        f.render_stateful_widget(table, table_area, &mut state);
    }

    let foot = match &app.input {
        Some(Input::Filter(t)) => format!("filter: {t}_"),
        Some(Input::Events(t)) => format!("events: {t}_   (Enter: restart sampling, Esc: cancel)"),
        None => "q quit  h help  / filter  s sort  r reverse  space pause  +/- interval  e events"
            .to_owned(),
    };
    f.render_widget(
        Paragraph::new(foot).style(Style::default().add_modifier(Modifier::REVERSED)),
        foot_area,
    );

    if app.help {
        let w = area.width.min(78);
        let h = area.height.min(14);
        let popup = Rect {
            x: area.x + (area.width - w) / 2,
            y: area.y + (area.height - h) / 2,
            width: w,
            height: h,
        };
        f.render_widget(Clear, popup);
        f.render_widget(
            Paragraph::new(HELP)
                .wrap(Wrap { trim: false })
                .block(Block::default().borders(Borders::ALL).title("keys")),
            popup,
        );
    }
}

/// One refresh as plain text (batch mode, no TTY): the table of the current view.
pub fn batch_text(app: &App, name_of: &dyn Fn(u64) -> String) -> String {
    let Some(s) = &app.snapshot else {
        return String::new();
    };
    let mut out = String::new();
    for l in header_lines(app, Some(s)) {
        let _ = writeln!(out, "{l}");
    }
    if let Some(title) = focus_title(app) {
        let _ = writeln!(out, "{title}");
    }
    let (head, rows, _) = table(app, s, name_of);
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join(" ")
            .trim_end()
            .to_owned()
    };
    let _ = writeln!(out, "{}", line(&head));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend, buffer::Buffer};

    use super::*;

    fn snapshot() -> Snapshot {
        rollup::tests::snapshot()
    }

    fn name_of(id: u64) -> String {
        format!("/kubepods/pod{id}")
    }

    fn screen(app: &App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| render(f, app, &name_of)).unwrap();
        text(t.backend().buffer())
    }

    fn text(b: &Buffer) -> String {
        let mut s = String::new();
        for y in 0..b.area.height {
            for x in 0..b.area.width {
                s.push_str(b[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }

    fn app() -> App {
        let mut a = App::new("cycles".into(), Duration::from_secs(1), 50);
        a.update(snapshot());
        a
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    #[test]
    fn process_view_shows_header_rows_and_ipc_by_core_type() {
        let s = screen(&app(), 160, 30);
        assert!(s.contains("sampler top  cycles (hardware)  100 Hz"), "{s}");
        assert!(s.contains("PMUs  cpu_atom: 0  cpu_core: 1"), "{s}");
        assert!(s.contains("busy: 0:40% 1:50%"), "{s}");
        assert!(s.contains("PID"), "{s}");
        assert!(s.contains("IPC BY CORE TYPE"), "{s}");
        let db = s.lines().find(|l| l.contains(" db ")).expect("db row");
        assert!(db.contains("/kubepods/pod7"), "{db}");
        assert!(db.contains("65"), "{db}");
        assert!(db.contains("1.50"), "{db}");
        assert!(db.contains("cpu_atom 1.50 / cpu_core 1.50"), "{db}");
        // Busiest first: db above web.
        assert!(s.find(" db ").unwrap() < s.find(" web ").unwrap());
    }

    #[test]
    fn refresh_cost_in_the_header_and_the_log_summary() {
        let mut a = app();
        assert!(!screen(&a, 160, 30).contains("refresh "));
        a.refresh_ms = Some(3.25);
        let s = screen(&a, 160, 30);
        assert!(
            s.contains("refresh 3.2 ms") || s.contains("refresh 3.3 ms"),
            "{s}"
        );

        let mut c = RefreshCosts::default();
        assert_eq!(c.summary(), None);
        c.record(2.0, 10);
        c.record(6.0, 10_000);
        c.record(1.0, 50);
        assert_eq!(
            c.summary().unwrap(),
            "3 refreshes (map read, roll-up, render): mean 3.00 ms, slowest 6.00 ms, \
             up to 10000 task rows"
        );
    }

    #[test]
    fn every_view_renders_and_narrow_terminals_do_not_break() {
        let mut a = app();
        for (k, marker) in [
            ('t', "TID"),
            ('g', "CGROUP"),
            ('c', "PMU / CORE TYPE"),
            ('v', "COVERAGE%"),
            ('p', "COMM"),
        ] {
            assert_eq!(a.on_key(key(k)), Action::None);
            let s = screen(&a, 120, 30);
            assert!(s.contains(marker), "view {k}: {s}");
            for (w, h) in [(40, 10), (20, 5), (1, 1), (200, 3)] {
                screen(&a, w, h);
            }
        }
        a.help = true;
        assert!(screen(&a, 100, 30).contains("this help"));
        screen(&a, 10, 4);
    }

    /// The rollup example with two processes' sites: db (pid 10) in `scan` and
    /// `parse`, web in `serve`, all through `main`.
    fn with_sites(stacks: bool) -> App {
        use std::sync::Arc;
        let mut a = app();
        let s = a.snapshot.as_mut().unwrap();
        let frame = |f: &str| {
            Arc::new(crate::symbolize::Frame {
                function: f.to_owned(),
                module: "bin".to_owned(),
                kernel: false,
            })
        };
        let site = |tgid: u32, leaf: &str, samples: u64| crate::model::locations::Site {
            tgid,
            tid: tgid,
            start_ns: s.tasks.iter().find(|t| t.tgid == tgid).unwrap().start_ns,
            cpu: 0,
            cgroup_id: 0,
            frames: vec![frame(leaf), frame("main")],
            places: Vec::new(),
            user_stack: true,
            samples,
            period_sum: samples * 1_000,
            counts: [samples * 1_500, 0, 0, 0],
        };
        let tgids: Vec<u32> = s.tasks.iter().map(|t| t.tgid).collect();
        let (db, web) = (tgids[0], *tgids.iter().find(|&&t| t != tgids[0]).unwrap());
        s.sites = vec![
            site(db, "scan", 30),
            site(db, "parse", 10),
            site(web, "serve", 20),
        ];
        s.functions = Some(functions::functions(s, None));
        s.stacks = stacks.then(|| functions::stacks(s, None));
        a
    }

    #[test]
    fn function_view_process_focus_and_callers() {
        let mut a = with_sites(true);
        assert_eq!(a.on_key(key('f')), Action::Functions);
        let s = screen(&a, 140, 30);
        assert!(s.contains("FUNCTION") && s.contains("scan"), "{s}");
        assert!(s.contains("TOTAL%"), "{s}");
        let names = |a: &App| -> Vec<String> {
            a.function_rows(a.snapshot.as_ref().unwrap())
                .into_iter()
                .map(|r| r.function)
                .collect()
        };
        assert_eq!(names(&a), ["scan", "serve", "parse", "main"]);
        // Enter on a function: its callers.
        a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert_eq!(a.view, View::Callers);
        assert!(screen(&a, 140, 30).contains("main > scan"));
        a.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
        assert_eq!(a.view, View::Functions);
        // Enter on a process (the second row): its functions only; Esc goes back.
        a.on_key(key('p'));
        let second = a.rows(a.snapshot.as_ref().unwrap(), &name_of)[1].clone();
        a.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        assert_eq!(
            a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
            Action::Functions
        );
        assert_eq!(a.view, View::Functions);
        let only = names(&a);
        assert!(!only.is_empty());
        let all_sites = &a.snapshot.as_ref().unwrap().sites;
        for f in &only {
            assert!(
                all_sites
                    .iter()
                    .any(|s| s.tgid == second.tgid && s.frames.iter().any(|x| &x.function == f)),
                "{f} is not {}'s",
                second.name
            );
        }
        assert!(screen(&a, 140, 30).contains(&format!("functions of {}", second.name)));
        assert_eq!(
            a.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)),
            Action::None
        );
        assert_eq!(a.view, View::Processes);
        // Filter by function name; without stacks, Enter stays.
        let mut a = with_sites(false);
        a.on_key(key('f'));
        a.filter = "par".into();
        assert_eq!(names(&a), ["parse"]);
        a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert_eq!(a.view, View::Functions);
        assert!(batch_text(&a, &name_of).contains("parse"));
    }

    #[test]
    fn function_view_before_locations_says_rows_come_next() {
        let mut a = app();
        assert_eq!(a.on_key(key('f')), Action::Functions);
        assert!(screen(&a, 140, 30).contains("recording where samples land"));
    }

    #[test]
    fn keys_sort_reverse_filter_pause_interval_and_quit() {
        let mut a = app();
        let names = |a: &App| -> Vec<String> {
            a.rows(a.snapshot.as_ref().unwrap(), &name_of)
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        assert_eq!(names(&a), ["db", "web"]);
        a.on_key(key('r'));
        assert_eq!(names(&a), ["web", "db"]);
        a.on_key(key('r'));
        // Filter as you type; Enter keeps it, Esc clears it.
        a.on_key(key('/'));
        for c in "we".chars() {
            a.on_key(key(c));
        }
        assert_eq!(names(&a), ["web"]);
        a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert_eq!(a.filter, "we");
        assert!(screen(&a, 100, 30).contains("filter: we"));
        a.on_key(key('/'));
        a.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
        assert_eq!(names(&a).len(), 2);
        // By cgroup path or pid too.
        a.filter = "pod9".into();
        assert_eq!(names(&a), ["web"]);
        a.filter = "10".into();
        assert_eq!(names(&a), ["db"]);
        a.filter.clear();
        // Sort orders cycle.
        a.on_key(key('s'));
        assert_eq!(a.sort, Sort::Samples);
        for _ in 0..3 {
            a.on_key(key('s'));
        }
        assert_eq!(a.sort, Sort::Name);
        assert_eq!(names(&a), ["db", "web"]);
        // Pause holds the screen: a refresh is ignored.
        a.on_key(key(' '));
        let mut quiet = snapshot();
        quiet.tasks.clear();
        a.update(quiet.clone());
        assert_eq!(names(&a).len(), 2);
        a.on_key(key(' '));
        a.update(quiet);
        assert!(names(&a).is_empty());
        assert_eq!(a.history.len(), 2);
        // Interval within bounds.
        assert_eq!(a.on_key(key('+')), Action::Interval);
        assert_eq!(a.interval, Duration::from_secs(2));
        for _ in 0..10 {
            a.on_key(key('-'));
        }
        assert_eq!(a.interval, MIN_INTERVAL);
        // New events.
        a.on_key(key('e'));
        for _ in 0.."cycles".len() {
            a.on_key(KeyEvent::new(KeyCode::Backspace, KeyModifiers::NONE));
        }
        for c in "cpu-clock".chars() {
            a.on_key(key(c));
        }
        assert_eq!(
            a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
            Action::Events("cpu-clock".into())
        );
        assert_eq!(a.on_key(key('q')), Action::Quit);
        assert_eq!(
            a.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
    }

    #[test]
    fn batch_text_is_a_plain_table() {
        let t = batch_text(&app(), &name_of);
        assert!(t.contains("PID"), "{t}");
        assert!(!t.contains('\x1b'), "no escapes: {t}");
        assert!(
            t.lines()
                .any(|l| l.contains(" db ") && l.contains("/kubepods/pod7"))
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human(999), "999");
        assert_eq!(human(1_234_567), "1.23M");
        assert_eq!(human(2_500_000_000), "2.50G");
    }
}
