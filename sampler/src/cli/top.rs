//! `sampler top`: the live view. Full screen on a terminal (the event loop and the
//! terminal are here; state, keys and drawing are `present::tui`), plain or JSON
//! snapshots otherwise.

use std::{
    collections::HashMap,
    io::{self, IsTerminal},
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::Args;

use crate::{
    cli::{Error, LocationArgs, SamplingArgs, emit, parse_seconds},
    discover::cgroup::CgroupNames,
    kernel::bpf::Locations,
    model::snapshot::Snapshot,
    present::{report, tui},
    run::{Refresh, SYMBOLIZE_EVERY, Sampling, Sleeper, Stop},
    sys,
};

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub locations: LocationArgs,
    /// Refresh interval in seconds.
    #[arg(short, long, value_name = "SECS", default_value = "1")]
    pub interval: String,
    /// Stop after N refreshes [default: run until interrupted].
    #[arg(short = 'n', long, value_name = "N")]
    pub iterations: Option<u64>,
    /// Plain text snapshots instead of the full-screen view (like `top -b`); the
    /// default without a terminal.
    #[arg(short, long)]
    pub batch: bool,
    /// One JSON document per refresh (JSON lines) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Show only the N busiest tasks.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Where the full-screen view writes its log (whatever would go to standard
    /// error while the screen is up) [default: ~/.local/state/sampler/top.log].
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

pub async fn top(args: TopArgs) -> Result<(), Error> {
    let interval = parse_seconds("interval", &args.interval)?;
    if !args.json && !args.batch && io::stdout().is_terminal() && io::stdin().is_terminal() {
        return top_screen(args, interval).await;
    }
    let options = options(&args);
    let mut sampling = Sampling::start(&options)?;
    let events = options.events();
    let mut app = tui::App::new(events, interval, args.top);
    let mut names = CgroupNames::new();
    let mut refresh = Refresh::new(&sampling)?;
    let mut done = 0u64;
    let sleeper = Sleeper::new();
    'refreshes: while args.iterations.is_none_or(|n| done < n) {
        // With locations, symbolize what is new every quarter second in between.
        let due = Instant::now() + interval;
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let step = if options.locations == Locations::Off {
                left
            } else {
                left.min(SYMBOLIZE_EVERY)
            };
            if sleeper.wait(Some(step)).await? == Stop::Signal {
                break 'refreshes;
            }
            sampling.poll_symbols()?;
        }
        let started = Instant::now();
        let mut snapshot = refresh.next(&mut sampling)?;
        let text = if args.json {
            snapshot.tasks.truncate(args.top);
            let mut doc = report::json(&snapshot);
            // The refresh: the maps read, the model built and its JSON written.
            report::append_field(
                &mut doc,
                "refresh_ms",
                started.elapsed().as_secs_f64() * 1e3,
            );
            doc.push('\n');
            doc
        } else {
            app.update(snapshot);
            let cache = cgroup_cache(&mut names, app.snapshot.as_ref());
            let name_of = |id: u64| cache.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
            format!("{}\n", tui::batch_text(&app, &name_of))
        };
        if !emit(&text)? {
            break;
        }
        done += 1;
    }
    Ok(())
}

/// The run's options: locations as asked, and room to turn them on later with `f`.
fn options(args: &TopArgs) -> crate::run::Options {
    let mut options = args.sampling.options();
    options.locations = args.locations.locations();
    options.max_locations = if args.locations.call_graph {
        Locations::Stacks
    } else {
        Locations::Ip
    };
    options.inlined = args.locations.inlined;
    options
}

/// Names of the cgroups in `s`, resolved once per refresh.
fn cgroup_cache(names: &mut CgroupNames, s: Option<&Snapshot>) -> HashMap<u64, String> {
    let mut cache = HashMap::new();
    for t in s.map_or(&[][..], |s| &s.tasks[..]) {
        cache
            .entry(t.cgroup_id)
            .or_insert_with(|| names.name(t.cgroup_id));
    }
    cache
}

/// `~/.local/state/sampler/top.log` (XDG_STATE_HOME when set).
fn default_log() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("sampler/top.log")
}

/// The full-screen live view. Sampling starts before the screen comes up, so that
/// start-up errors print normally; while it is up, standard error goes to the log
/// file; the terminal is restored on quit, on SIGINT/SIGTERM/SIGHUP and on panic.
async fn top_screen(args: TopArgs, interval: Duration) -> Result<(), Error> {
    use ratatui::crossterm::event::{self as ct, Event, KeyEventKind};
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    let mut sampling_args = options(&args);
    let mut sampling = Sampling::start(&sampling_args)?;
    let events = sampling_args.events();
    let mut app = tui::App::new(events, interval, args.top);
    let mut names = CgroupNames::new();
    let mut refresh = Refresh::new(&sampling)?;
    let log = args.log.unwrap_or_else(default_log);
    let redirect = sys::StderrRedirect::to_file(&log).map_err(|e| {
        Error::Runtime(io::Error::new(
            e.kind(),
            format!(
                "cannot open the log file {} ({e}); --log FILE sets another",
                log.display()
            ),
        ))
    })?;
    let mut terminal = ratatui::try_init()?;

    let (tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // A terminal that went away (hang-up) ends the reader.
                let Ok(ready) = ct::poll(Duration::from_millis(100)) else {
                    break;
                };
                if ready {
                    match ct::read() {
                        Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                            if tx.send(k).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        })
    };
    let mut next = tokio::time::Instant::now() + app.interval;
    let mut cache = HashMap::new();
    let mut done = 0u64;
    // When the refresh being drawn started (map read, roll-up, then this draw).
    let mut refresh_started: Option<Instant> = None;
    let mut costs = tui::RefreshCosts::default();
    let mut symbolize = tokio::time::interval(SYMBOLIZE_EVERY);
    symbolize.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result: Result<(), Error> = loop {
        let name_of = |id: u64| cache.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        if let Err(e) = terminal.draw(|f| tui::render(f, &app, &name_of)) {
            break Err(e.into());
        }
        if let Some(t) = refresh_started.take() {
            let ms = t.elapsed().as_secs_f64() * 1e3;
            costs.record(ms, app.snapshot.as_ref().map_or(0, |s| s.tasks.len()));
            app.refresh_ms = Some(ms);
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                next = tokio::time::Instant::now() + app.interval;
                refresh_started = Some(Instant::now());
                match refresh.next(&mut sampling) {
                    Ok(s) => app.update(s),
                    Err(e) => break Err(e.into()),
                }
                cache = cgroup_cache(&mut names, app.snapshot.as_ref());
                done += 1;
                if args.iterations.is_some_and(|n| done >= n) {
                    break Ok(());
                }
            }
            Some(key) = keys.recv() => match app.on_key(key) {
                tui::Action::Quit => break Ok(()),
                tui::Action::Interval => next = tokio::time::Instant::now() + app.interval,
                tui::Action::Events(events) => {
                    // Close the old events and programs first: counters are scarce.
                    let old = sampling_args.event.replace(events.clone());
                    drop(sampling);
                    sampling = match Sampling::start(&sampling_args) {
                        Ok(s) => {
                            app.status = None;
                            app.events = events;
                            s
                        }
                        Err(e) => {
                            app.status = Some(format!("cannot sample `{events}`: {e}"));
                            sampling_args.event = old;
                            match Sampling::start(&sampling_args) {
                                Ok(s) => s,
                                Err(e) => break Err(e.into()),
                            }
                        }
                    };
                    refresh = match Refresh::new(&sampling) {
                        Ok(r) => r,
                        Err(e) => break Err(e.into()),
                    };
                    app.snapshot = None;
                    next = tokio::time::Instant::now() + app.interval;
                }
                tui::Action::Functions => {
                    if sampling.bpf.locations() == Locations::Off {
                        if let Err(e) = sampling.set_locations(Locations::Ip) {
                            break Err(e.into());
                        }
                        // Kept when the events change.
                        sampling_args.locations = Locations::Ip;
                    }
                }
                tui::Action::None => {}
            },
            _ = symbolize.tick() => {
                if let Err(e) = sampling.poll_symbols() {
                    break Err(e.into());
                }
            }
            r = crate::run::stop_signal() => break r.map_err(Error::from),
        }
    };
    stop.store(true, Ordering::Relaxed);
    // Into the log: standard error is still redirected.
    if let Some(line) = costs.summary() {
        eprintln!("sampler top: {line}");
    }
    ratatui::restore();
    // After leaving the alternate screen: some terminals keep the cursor mode
    // per screen (tmux does).
    let _ = terminal.show_cursor();
    drop(redirect);
    // Not joined: with the terminal gone, the reader can be stuck inside crossterm;
    // it ends with the process.
    drop(reader);
    result
}
