//! `cargo xtask soak`: a long run of `sampler top --json` at a fixed rate per CPU
//! under constant task churn, watching what must not grow: the sampler's resident
//! memory and its dropped samples. An hour by default; `cargo xtask test` runs a minute
//! of it with a small task map, so that the map is full and evicting for most of the run.
//!
//! The churn is this process's: every 50 ms one short-lived shell process and two
//! short-lived threads, each spinning a couple of milliseconds (so most are sampled
//! and get a map entry). The sampler binary is copied first, so a rebuild during an
//! hour-long run does not swap it.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{bench::status_kib, setup::is_root};

pub struct Options {
    pub seconds: u64,
    pub hz: u64,
    pub interval: f64,
    pub map_entries: Option<u32>,
    /// Where the report goes (markdown); the per-interval series goes beside it (.csv).
    pub out: PathBuf,
}

/// One refresh of `sampler top --json`, with the sampler's memory at that moment.
#[derive(Debug, Clone, Copy)]
struct Point {
    at_s: f64,
    samples: u64,
    duration_s: f64,
    dropped: u64,
    evicted: u64,
    rss_kib: u64,
}

/// Short-lived processes and threads until dropped.
struct Churn {
    stop: Arc<AtomicBool>,
    processes: Arc<AtomicU64>,
    threads: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Churn {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let processes = Arc::new(AtomicU64::new(0));
        let threads = Arc::new(AtomicU64::new(0));
        let (s, p, t) = (
            Arc::clone(&stop),
            Arc::clone(&processes),
            Arc::clone(&threads),
        );
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let tick = Instant::now();
                let spinners: Vec<_> = (0..2)
                    .map(|_| {
                        thread::spawn(|| {
                            let t = Instant::now();
                            while t.elapsed() < Duration::from_millis(2) {
                                std::hint::black_box(crate::bench::work(1_000));
                            }
                        })
                    })
                    .collect();
                if Command::new("/bin/sh")
                    .args(["-c", "i=0; while [ $i -lt 1500 ]; do i=$((i+1)); done"])
                    .status()
                    .is_ok()
                {
                    p.fetch_add(1, Ordering::Relaxed);
                }
                for h in spinners {
                    if h.join().is_ok() {
                        t.fetch_add(1, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_millis(50).saturating_sub(tick.elapsed()));
            }
        });
        Self {
            stop,
            processes,
            threads,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (
            self.processes.load(Ordering::Relaxed),
            self.threads.load(Ordering::Relaxed),
        )
    }
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| status_kib(&s, "VmRSS:"))
        .unwrap_or(0)
}

pub fn run(sampler: &Path, o: &Options) -> Result<()> {
    if !is_root() {
        bail!("the soak loads BPF programs: run it as root (`sudo -E cargo xtask soak`)");
    }
    let dir = std::env::temp_dir().join(format!("sampler-soak-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let bin = dir.join("sampler");
    fs::copy(sampler, &bin).with_context(|| format!("copy {}", sampler.display()))?;
    let mut cmd = Command::new(&bin);
    cmd.args(["top", "--json", "--top", "5", "-i"])
        .arg(o.interval.to_string())
        .arg("-F")
        .arg(o.hz.to_string());
    if let Some(n) = o.map_entries {
        cmd.arg("--map-entries").arg(n.to_string());
    }
    let what = crate::display(&cmd);
    eprintln!("xtask: soak: {what} for {} s under churn", o.seconds);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    let pid = child.id();
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let n = |k: &str| v[k].as_u64().unwrap_or(0);
            let point = Point {
                at_s: started.elapsed().as_secs_f64(),
                samples: n("samples"),
                duration_s: v["duration_s"].as_f64().unwrap_or(0.0),
                dropped: n("dropped"),
                evicted: n("evicted"),
                rss_kib: rss_kib(pid),
            };
            if tx.send(point).is_err() {
                break;
            }
        }
    });
    let churn = Churn::start();
    let mut points = Vec::new();
    let deadline = started + Duration::from_secs(o.seconds);
    let mut died = None;
    while Instant::now() < deadline {
        while let Ok(p) = rx.try_recv() {
            points.push(p);
        }
        if let Some(status) = child.try_wait()? {
            died = Some(status);
            break;
        }
        thread::sleep(
            Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now())),
        );
    }
    let (processes, threads) = churn.stop();
    // SAFETY: kill(2) on our own unreaped child.
    unsafe {
        libc::kill(pid as i32, libc::SIGINT);
    }
    let status = child.wait()?;
    let _ = reader.join();
    points.extend(rx.try_iter());
    let stderr = err.join().unwrap_or_default();
    let _ = fs::remove_dir_all(&dir);
    if let Some(s) = died {
        bail!("sampler died during the soak ({s}):\n{}", stderr.trim_end());
    }
    if !status.success() {
        bail!(
            "sampler did not exit cleanly on SIGINT ({status}):\n{}",
            stderr.trim_end()
        );
    }
    let verdict = Verdict::of(&points);
    let report = report(&what, o, &points, &verdict, processes, threads);
    fs::create_dir_all(o.out.parent().unwrap_or(Path::new(".")))?;
    fs::write(&o.out, &report)?;
    let mut csv = String::from("seconds,samples,duration_s,dropped,evicted,rss_kib\n");
    for p in &points {
        let _ = writeln!(
            csv,
            "{:.1},{},{:.3},{},{},{}",
            p.at_s, p.samples, p.duration_s, p.dropped, p.evicted, p.rss_kib
        );
    }
    fs::write(o.out.with_extension("csv"), csv)?;
    print!("{report}");
    eprintln!("xtask: soak: report in {}", o.out.display());
    if let Some(why) = verdict.failure {
        bail!("soak failed: {why}");
    }
    Ok(())
}

/// What the series says: memory and drops in the first half (after a warm-up) against
/// the second half.
#[derive(Debug, Default, PartialEq)]
struct Verdict {
    warm_rss_kib: u64,
    first_max_kib: u64,
    second_max_kib: u64,
    last_rss_kib: u64,
    first_dropped: u64,
    second_dropped: u64,
    samples: u64,
    evicted: u64,
    rate_per_cpu: f64,
    failure: Option<String>,
}

/// Memory may grow by at most this much from the first half's peak to the second's:
/// allocator noise, not a leak (a leak of one allocation per refresh or per task
/// churned grows without bound over an hour).
const RSS_SLACK_KIB: u64 = 1024;

impl Verdict {
    fn of(points: &[Point]) -> Self {
        let mut v = Self::default();
        if points.len() < 6 {
            v.failure = Some(format!(
                "only {} refreshes arrived; the run is too short to judge",
                points.len()
            ));
            return v;
        }
        // Warm-up: the first 10 % of refreshes (at least 2): the map fills, caches form.
        let warm = (points.len() / 10).max(2);
        let rest = &points[warm..];
        let (first, second) = rest.split_at(rest.len() / 2);
        v.warm_rss_kib = points[warm - 1].rss_kib;
        v.first_max_kib = first.iter().map(|p| p.rss_kib).max().unwrap_or(0);
        v.second_max_kib = second.iter().map(|p| p.rss_kib).max().unwrap_or(0);
        v.last_rss_kib = points.last().map_or(0, |p| p.rss_kib);
        v.first_dropped = first.iter().map(|p| p.dropped).sum();
        v.second_dropped = second.iter().map(|p| p.dropped).sum();
        v.samples = points.iter().map(|p| p.samples).sum();
        v.evicted = points.iter().map(|p| p.evicted).sum();
        let secs: f64 = points.iter().map(|p| p.duration_s).sum();
        let cpus = thread::available_parallelism().map_or(1, usize::from) as f64;
        v.rate_per_cpu = v.samples as f64 / secs.max(1e-9) / cpus;
        let allowed = v.first_max_kib + v.first_max_kib / 20 + RSS_SLACK_KIB;
        if v.second_max_kib > allowed {
            v.failure = Some(format!(
                "resident memory grew: first half peaked at {} KiB, second half at {} KiB \
                 (allowed {allowed})",
                v.first_max_kib, v.second_max_kib
            ));
        } else if v.second_dropped > v.first_dropped * 2 + 10 {
            v.failure = Some(format!(
                "dropped samples grew: {} in the first half, {} in the second",
                v.first_dropped, v.second_dropped
            ));
        } else if let Some(p) = rest.iter().find(|p| p.samples == 0) {
            v.failure = Some(format!(
                "sampling stalled: the refresh at {:.0} s had no samples",
                p.at_s
            ));
        }
        v
    }
}

fn report(
    what: &str,
    o: &Options,
    points: &[Point],
    v: &Verdict,
    processes: u64,
    threads: u64,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Soak: {} s at {} Hz per CPU\n", o.seconds, o.hz);
    let _ = writeln!(md, "Command: `{what}`, churn alongside.\n");
    let mib = |k: u64| k as f64 / 1024.0;
    let rows = [
        ("refreshes", points.len().to_string()),
        (
            "short-lived tasks churned",
            format!("{processes} processes, {threads} threads"),
        ),
        (
            "samples (all CPUs)",
            format!("{} ({:.0}/s per CPU)", v.samples, v.rate_per_cpu),
        ),
        ("task-map evictions counted", v.evicted.to_string()),
        (
            "dropped samples, first half / second half",
            format!("{} / {}", v.first_dropped, v.second_dropped),
        ),
        (
            "resident memory after warm-up",
            format!("{:.1} MiB", mib(v.warm_rss_kib)),
        ),
        (
            "resident memory peak, first half / second half",
            format!(
                "{:.1} / {:.1} MiB",
                mib(v.first_max_kib),
                mib(v.second_max_kib)
            ),
        ),
        (
            "resident memory at the end",
            format!("{:.1} MiB", mib(v.last_rss_kib)),
        ),
        (
            "verdict",
            v.failure
                .clone()
                .unwrap_or_else(|| "pass: memory flat, no growth in dropped samples".to_owned()),
        ),
    ];
    let _ = writeln!(md, "| what | figure |\n|---|---|");
    for (k, val) in rows {
        let _ = writeln!(md, "| {k} | {val} |");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(rss: impl Fn(usize) -> u64, dropped: impl Fn(usize) -> u64) -> Vec<Point> {
        (0..40)
            .map(|i| Point {
                at_s: i as f64,
                samples: 2000,
                duration_s: 1.0,
                dropped: dropped(i),
                evicted: 0,
                rss_kib: rss(i),
            })
            .collect()
    }

    #[test]
    fn flat_memory_passes_and_growth_fails() {
        let flat = Verdict::of(&series(|i| 7000 + (i as u64 % 3) * 100, |_| 0));
        assert_eq!(flat.failure, None, "{flat:?}");
        // One leaked allocation per refresh adds up.
        let leak = Verdict::of(&series(|i| 7000 + i as u64 * 200, |_| 0));
        assert!(
            leak.failure.as_deref().unwrap().contains("memory grew"),
            "{leak:?}"
        );
        // Start-up growth during the warm-up is not a leak.
        let warm = Verdict::of(&series(|i| if i < 3 { 3000 } else { 7000 }, |_| 0));
        assert_eq!(warm.failure, None, "{warm:?}");
    }

    #[test]
    fn growing_drops_and_a_stall_fail() {
        let drops = Verdict::of(&series(|_| 7000, |i| if i > 25 { 5 } else { 0 }));
        assert!(drops.failure.unwrap().contains("dropped samples grew"));
        let steady = Verdict::of(&series(|_| 7000, |i| u64::from(i % 10 == 0)));
        assert_eq!(steady.failure, None);
        let mut stalled = series(|_| 7000, |_| 0);
        stalled[20].samples = 0;
        let stalled = Verdict::of(&stalled);
        assert!(stalled.failure.unwrap().contains("stalled"));
        assert!(Verdict::of(&[]).failure.is_some());
    }
}
