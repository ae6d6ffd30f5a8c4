//! The scale part of `cargo xtask bench`: runs `sampler/benches/scale.rs` (the user-space
//! half simulated at 2 to 512 CPUs and 1,000 to 100,000 tasks), fits how the refresh
//! cost and the heap grow, says where they would cross one second and 100 MB, and
//! draws both as SVG plots (plotters) for BENCHMARKS.md.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use plotters::prelude::*;
use serde_json::Value;

use crate::{display, workspace_root};

/// One size's figures, as the bench binary prints them.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub cpus: u32,
    pub tasks: u64,
    pub events: u64,
    pub refresh_ms: f64,
    pub steps: [f64; 5],
    pub plan_ms: f64,
    pub open_ms: f64,
    pub retained_mb: f64,
    pub peak_mb: f64,
}

const STEPS: [&str; 5] = ["maps", "counts", "snapshot", "screen", "json"];

fn parse(line: &str) -> Result<Point> {
    let v: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
    let f = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("`{k}` missing in {line}"))
    };
    let mut steps = [0.0; 5];
    for (s, name) in steps.iter_mut().zip(STEPS) {
        *s = v["steps_ms"][name]
            .as_f64()
            .with_context(|| format!("`steps_ms.{name}` missing in {line}"))?;
    }
    Ok(Point {
        cpus: f("cpus")? as u32,
        tasks: f("tasks")? as u64,
        events: f("events")? as u64,
        refresh_ms: f("refresh_ms")?,
        steps,
        plan_ms: f("plan_ms")?,
        open_ms: f("open_ms")?,
        retained_mb: f("retained_heap_bytes")? / 1e6,
        peak_mb: f("refresh_peak_heap_bytes")? / 1e6,
    })
}

/// Least-squares line `y = a + b x`.
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let b = sxy / sxx;
    Some((my - b * mx, b))
}

/// The log-log slope between the two ends of `points` (x ascending): 1 for linear
/// growth, 2 for quadratic.
pub fn growth_exponent(points: &[(f64, f64)]) -> Option<f64> {
    let (first, last) = (points.first()?, points.last()?);
    (first.0 > 0.0 && first.1 > 0.0 && last.0 > first.0 && last.1 > 0.0)
        .then(|| (last.1 / first.1).ln() / (last.0 / first.0).ln())
}

/// Where the line `(a, b)` reaches `y`, when it rises.
pub fn crossing(line: (f64, f64), y: f64) -> Option<f64> {
    (line.1 > 0.0).then(|| (y - line.0) / line.1)
}

/// Runs the simulation; its points.
fn simulate(quick: bool) -> Result<Vec<Point>> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).args([
        "bench",
        "--package",
        "sampler",
        "--bench",
        "scale",
        "--",
    ]);
    if quick {
        cmd.arg("--quick");
    }
    eprintln!("xtask: {}", display(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{}`", display(&cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed:\n{}",
            display(&cmd),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(parse)
        .collect()
}

fn cpu_counts(points: &[Point]) -> Vec<u32> {
    let mut c: Vec<u32> = points.iter().map(|p| p.cpus).collect();
    c.sort_unstable();
    c.dedup();
    c
}

fn series(points: &[Point], cpus: u32, y: impl Fn(&Point) -> f64) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.cpus == cpus)
        .map(|p| (p.tasks as f64, y(p)))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// A log-log plot of `y` against tasks, one line per CPU count, into `path`.
fn plot(
    path: &Path,
    title: &str,
    y_label: &str,
    points: &[Point],
    y: impl Fn(&Point) -> f64,
) -> Result<()> {
    let (xmin, xmax) = points.iter().fold((f64::MAX, 0f64), |(lo, hi), p| {
        (lo.min(p.tasks as f64), hi.max(p.tasks as f64))
    });
    let (ymin, ymax) = points
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), p| (lo.min(y(p)), hi.max(y(p))));
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("plotting {}: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (xmin * 0.9..xmax * 1.1).log_scale(),
            ((ymin * 0.8).max(1e-4)..ymax * 1.25).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("tasks in the map")
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()
        .map_err(err)?;
    for (i, cpus) in cpu_counts(points).into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line = series(points, cpus, &y);
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(format!("{cpus} CPUs"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart
            .draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Runs the simulation and returns BENCHMARKS.md's section; the plots go to
/// `plots` (named in the section relative to the workspace root).
pub fn section(quick: bool, plots: &Path) -> Result<String> {
    let points = simulate(quick)?;
    if points.is_empty() {
        bail!("the scale bench printed no figures");
    }
    std::fs::create_dir_all(plots)?;
    let refresh_svg = plots.join("scale-refresh.svg");
    let heap_svg = plots.join("scale-heap.svg");
    plot(
        &refresh_svg,
        "One refresh of the user-space half (median)",
        "ms",
        &points,
        |p| p.refresh_ms,
    )?;
    plot(
        &heap_svg,
        "Heap kept between refreshes",
        "MB",
        &points,
        |p| p.retained_mb,
    )?;
    let rel = |p: &Path| {
        p.strip_prefix(workspace_root())
            .unwrap_or(p)
            .display()
            .to_string()
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## Scale: the user-space half at 2 to 512 CPUs, 1,000 to 100,000 tasks (simulated)\n\n\
         `sampler/benches/scale.rs` runs what a refresh of `sampler top` runs, on inputs this \
         machine cannot have: the recorded Alder Lake sysfs tree widened to N CPUs (half on \
         each PMU), the sampling group `{{cycles,instructions,cache-misses,branch-misses}}` \
         planned and opened on every CPU through a simulated kernel (the `PerfSys` layer the \
         unit tests replace), N task-map entries grown between two readings; then the group \
         reads, the deltas, the snapshot and roll-ups, the screen drawn into a 200x50 \
         buffer, and the JSON of `top --json`. Not simulated: the kernel's batched map read \
         (here a copy of the entries) and the syscalls' own cost. Heap: counted by the \
         bench's allocator (what stays allocated between refreshes: two readings, the counts, \
         the drawn snapshot; and the most allocated at once during a refresh).\n\n\
         ![refresh cost]({})\n\n![heap]({})\n",
        rel(&refresh_svg),
        rel(&heap_svg)
    );
    let _ = writeln!(
        md,
        "| CPUs | events | tasks | refresh ms | maps / counts / snapshot / screen / json ms | \
         plan + open ms | heap kept MB | refresh peak MB |\n|---|---|---|---|---|---|---|---|"
    );
    let mut sorted = points.clone();
    sorted.sort_by_key(|p| (p.cpus, p.tasks));
    for p in &sorted {
        let steps: Vec<String> = p.steps.iter().map(|s| format!("{s:.2}")).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {} | {:.1} | {:.1} | {:.1} |",
            p.cpus,
            p.events,
            p.tasks,
            p.refresh_ms,
            steps.join(" / "),
            p.plan_ms + p.open_ms,
            p.retained_mb,
            p.peak_mb
        );
    }
    let _ = writeln!(
        md,
        "\n| CPUs | growth exponent of the refresh with tasks (1 = linear) | of the heap | \
         refresh would reach 1 s at | heap would reach 100 MB at |\n|---|---|---|---|---|"
    );
    let tasks_at = |v: Option<f64>| {
        v.filter(|t| t.is_finite() && *t > 0.0)
            .map_or("–".to_owned(), |t| format!("{:.0}k tasks", t / 1e3))
    };
    for cpus in cpu_counts(&points) {
        let refresh = series(&points, cpus, |p| p.refresh_ms);
        let heap = series(&points, cpus, |p| p.retained_mb);
        let exp =
            |s: &[(f64, f64)]| growth_exponent(s).map_or("–".to_owned(), |e| format!("{e:.2}"));
        let _ = writeln!(
            md,
            "| {cpus} | {} | {} | {} | {} |",
            exp(&refresh),
            exp(&heap),
            tasks_at(fit(&refresh).and_then(|l| crossing(l, 1_000.0))),
            tasks_at(fit(&heap).and_then(|l| crossing(l, 100.0))),
        );
    }
    let most = *sorted.iter().map(|p| &p.tasks).max().unwrap_or(&0);
    let by_cpus: Vec<(f64, f64)> = sorted
        .iter()
        .filter(|p| p.tasks == most)
        .map(|p| (f64::from(p.cpus), p.refresh_ms))
        .collect();
    if let Some(e) = growth_exponent(&by_cpus) {
        let _ = writeln!(
            md,
            "\nWith {most} tasks, the refresh grows with the CPU count with exponent {e:.2} \
             (from {} to {} CPUs).",
            by_cpus.first().map_or(0.0, |p| p.0),
            by_cpus.last().map_or(0.0, |p| p.0)
        );
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_exponents_and_crossings() {
        let (a, b) = fit(&[(1.0, 3.0), (2.0, 5.0), (3.0, 7.0)]).unwrap();
        assert!((a - 1.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-9);
        assert_eq!(fit(&[(1.0, 1.0)]), None);
        let linear = growth_exponent(&[(1e3, 2.0), (1e5, 200.0)]).unwrap();
        assert!((linear - 1.0).abs() < 1e-9);
        let quadratic = growth_exponent(&[(1e3, 1.0), (1e4, 100.0)]).unwrap();
        assert!((quadratic - 2.0).abs() < 1e-9);
        assert_eq!(crossing((10.0, 2.0), 1_000.0), Some(495.0));
        assert_eq!(crossing((10.0, 0.0), 1_000.0), None);
    }

    #[test]
    fn the_plot_is_an_svg_with_a_line_per_cpu_count() {
        let point = |cpus, tasks, ms| Point {
            cpus,
            tasks,
            events: u64::from(cpus) * 4,
            refresh_ms: ms,
            steps: [0.0; 5],
            plan_ms: 0.0,
            open_ms: 0.0,
            retained_mb: 1.0,
            peak_mb: 2.0,
        };
        let points = [
            point(2, 1_000, 5.0),
            point(2, 100_000, 500.0),
            point(512, 1_000, 10.0),
            point(512, 100_000, 600.0),
        ];
        let path = std::env::temp_dir().join(format!("scale-plot-{}.svg", std::process::id()));
        plot(&path, "title", "ms", &points, |p| p.refresh_ms).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        for text in ["2 CPUs", "512 CPUs", "tasks in the map", "title"] {
            assert!(svg.contains(text), "{text} missing from the plot");
        }
        assert_eq!(
            svg.matches("<circle").count(),
            points.len(),
            "a mark per point"
        );
    }

    #[test]
    fn a_bench_line_is_parsed() {
        let line = r#"{"cpus":8,"tasks":1000,"events":32,"task_rows":1000,"plan_ms":1.5,
            "open_ms":0.5,"refresh_ms":4.0,"steps_ms":{"maps":0.1,"counts":0.2,
            "snapshot":1.0,"screen":2.0,"json":0.7},"setup_heap_bytes":1,
            "retained_heap_bytes":2000000,"refresh_peak_heap_bytes":3000000,"json_bytes":9}"#
            .replace('\n', "");
        let p = parse(&line).unwrap();
        assert_eq!((p.cpus, p.tasks, p.events), (8, 1000, 32));
        assert_eq!(p.steps, [0.1, 0.2, 1.0, 2.0, 0.7]);
        assert!((p.retained_mb - 2.0).abs() < 1e-9 && (p.peak_mb - 3.0).abs() < 1e-9);
        assert!(parse(r#"{"cpus":8}"#).is_err());
    }
}
