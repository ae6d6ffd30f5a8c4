//! Profiles out, for real, read by consumers that are not ours: `sampler record` to
//! pprof (read by `go tool pprof`), folded stacks and a flame graph SVG (parsed as
//! XML), `sampler report` and `--diff` on two recorded builds of the test workload,
//! and `serve`'s `/debug/pprof/profile` fetched by `go tool pprof` over HTTP, one at
//! a time, with `/metrics` served meanwhile. Bad destinations fail before sampling
//! (no root needed); Ctrl-C still writes; kill -9 leaves no profile.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;
use common::{
    TestResult, require_root, sampler, sampler_bin, skip, stderr,
    workload::{Running, workload},
};

const ALPHA: &str = "workload::work::alpha_hot";
const BETA: &str = "workload::work::beta_hot";

fn out(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// `go tool pprof` when Go is installed (Debian's golang-go).
fn go() -> Result<Command, common::Skip> {
    if Command::new("go").arg("version").output().is_err() {
        return Err(skip(
            "Go is not installed (Debian's golang-go, for `go tool pprof`); `cargo xtask test` \
             installs it",
        ));
    }
    let mut c = Command::new("go");
    c.args(["tool", "pprof"])
        .env(
            "PPROF_TMPDIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("pprof"),
        )
        .env("HOME", env!("CARGO_TARGET_TMPDIR"))
        .stdin(Stdio::null());
    Ok(c)
}

/// `sampler record ARGS -o FILE` while the workload runs.
fn record(args: &[&str], file: &Path) -> Output {
    let o = Command::new(sampler_bin())
        .arg("record")
        .args(args)
        .arg("-o")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run sampler record");
    assert!(
        o.status.success(),
        "sampler record {args:?}: {}",
        stderr(&o)
    );
    o
}

/// `go tool pprof -top` of `source` (a file or a URL), flat value per function.
fn pprof_top(source: &str, index: &str) -> Vec<(String, f64)> {
    let o = go()
        .unwrap()
        .args([
            "-top",
            "-nodecount=50",
            &format!("-sample_index={index}"),
            source,
        ])
        .output()
        .expect("go tool pprof");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "go tool pprof -top {source}: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let flat = w.first()?.trim_end_matches(|c: char| c.is_alphabetic());
            Some((w.get(5..)?.join(" "), flat.parse().ok()?))
        })
        .collect()
}

/// alpha's percent of alpha + beta, from per-function values.
fn alpha_pct(rows: &[(String, f64)]) -> (f64, f64) {
    let get = |f: &str| {
        rows.iter()
            .filter(|(g, _)| g == f)
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    let (a, b) = (get(ALPHA), get(BETA));
    (a * 100.0 / (a + b).max(1e-9), a + b)
}

fn assert_two_to_one(what: &str, rows: &[(String, f64)]) {
    let (pct, total) = alpha_pct(rows);
    assert!(total > 0.0, "{what}: neither hot function in {rows:?}");
    assert!(
        (pct - 200.0 / 3.0).abs() < 5.0,
        "{what}: alpha_hot has {pct:.1}% of the hot functions, not 66.7 ± 5 ({rows:?})"
    );
}

fn pprof_recorded_is_read_by_go_tool_pprof() -> TestResult {
    let _root = require_root()?;
    go()?;
    let bin = workload("workload", false)?;
    let _w = Running::start(&bin, "cpu", 5.0);
    let file = out("record.pb.gz");
    record(&["-g", "-d", "3", "-e", "{cpu-clock,page-faults}"], &file);
    let source = file.display().to_string();
    let by_samples = pprof_top(&source, "samples");
    assert_two_to_one("samples", &by_samples);
    // The two hot functions are the busiest on the machine, in this order.
    let names: Vec<&str> = by_samples.iter().take(2).map(|(f, _)| f.as_str()).collect();
    assert_eq!(names, vec![ALPHA, BETA], "{by_samples:?}");
    assert_two_to_one("cpu-clock", &pprof_top(&source, "cpu-clock"));
    // Every counted quantity is a sample type.
    let raw = go().unwrap().args(["-raw", &source]).output().unwrap();
    let raw = String::from_utf8_lossy(&raw.stdout);
    let types = raw
        .lines()
        .skip_while(|l| !l.starts_with("Samples:"))
        .nth(1)
        .unwrap_or("");
    for t in [
        "samples/count",
        "cpu-clock/nanoseconds",
        "page-faults/count",
    ] {
        assert!(types.contains(t), "sample types `{types}` lack {t}");
    }
    // Mappings carry the build id of the workload; samples the labels.
    let mappings: Vec<&str> = raw.lines().skip_while(|l| *l != "Mappings").collect();
    let workload_mapping = mappings
        .iter()
        .find(|l| l.contains(&format!("{} ", bin.display())))
        .unwrap_or_else(|| panic!("no mapping of {} in {mappings:?}", bin.display()));
    // `N: start/limit/offset path build-id [FN]`
    let build_id = workload_mapping.split_whitespace().nth(3).unwrap_or("");
    assert!(
        build_id.len() >= 16 && build_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "the workload's mapping has no build id: {workload_mapping}"
    );
    let tags = go().unwrap().args(["-tags", &source]).output().unwrap();
    let tags = String::from_utf8_lossy(&tags.stdout);
    for label in ["pid", "tid", "comm", "container", "cpu", "pmu"] {
        assert!(
            tags.lines()
                .any(|l| l.trim_start().starts_with(&format!("{label}:"))),
            "label {label} missing from:\n{tags}"
        );
    }
    assert!(tags.contains("workload"), "comm workload missing:\n{tags}");
    // Our own reading of the file: the same two functions.
    let o = sampler(&["report", &source, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows: Vec<(String, f64)> = doc["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap().to_owned(),
                f["samples"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_two_to_one("sampler report", &rows);
    let text = sampler(&["report", &source]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(ALPHA) && text.contains("page-faults"),
        "{text}"
    );
    Ok(())
}

fn folded_stacks_and_the_flame_graph_hold_the_hot_functions() -> TestResult {
    let _root = require_root()?;
    let bin = workload("workload", false)?;
    let _w = Running::start(&bin, "cpu", 6.0);
    let folded = out("record.folded");
    record(&["-g", "-d", "2"], &folded);
    let text = std::fs::read_to_string(&folded).unwrap();
    let mut leaves: Vec<(String, f64)> = Vec::new();
    for line in text.lines() {
        // Collapsed format: frames joined by ';', a space, the weight.
        let (stack, n) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line `{line}`"));
        let n: f64 = n
            .parse()
            .unwrap_or_else(|_| panic!("bad weight in `{line}`"));
        let frames: Vec<&str> = stack.split(';').collect();
        assert!(
            frames.iter().all(|f| !f.is_empty()),
            "empty frame in `{line}`"
        );
        leaves.push((frames.last().unwrap().to_string(), n));
    }
    assert_two_to_one("folded", &leaves);
    assert!(
        text.lines()
            .any(|l| l.starts_with("workload;") && l.contains(";workload::via_alpha;")),
        "no stack through via_alpha:\n{}",
        &text[..text.len().min(1500)]
    );

    let svg = out("record.svg");
    record(&["-g", "-d", "2"], &svg);
    let doc_text = std::fs::read_to_string(&svg).unwrap();
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc =
        roxmltree::Document::parse_with_options(&doc_text, options).expect("the SVG parses as XML");
    let title = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("title"))
        .and_then(|n| n.text())
        .unwrap_or("");
    assert!(
        title.contains("cpu-clock") && title.contains("weight samples") && title.contains(" s"),
        "title `{title}`"
    );
    let mut widths: Vec<(String, f64)> = Vec::new();
    for g in doc.descendants().filter(|n| n.has_tag_name("g")) {
        let Some(t) = g
            .children()
            .find(|c| c.has_tag_name("title"))
            .and_then(|t| t.text())
        else {
            continue;
        };
        let Some(rect) = g.children().find(|c| c.has_tag_name("rect")) else {
            continue;
        };
        let w: f64 = rect
            .attribute("width")
            .and_then(|w| w.trim_end_matches('%').parse().ok())
            .unwrap_or(0.0);
        let name = t.split(" (").next().unwrap_or(t).to_owned();
        widths.push((name, w));
    }
    assert_two_to_one("flame graph widths", &widths);
    Ok(())
}

fn report_diff_puts_the_regressed_function_first() -> TestResult {
    let _root = require_root()?;
    let bin = workload("workload", false)?;
    let base = out("base.pb.gz");
    let new = out("new.pb.gz");
    {
        let _w = Running::start(&bin, "cpu", 4.0);
        record(&["-d", "2.5"], &base);
    }
    {
        let _w = Running::start(&bin, "regressed", 4.0);
        record(&["-d", "2.5"], &new);
    }
    let o = sampler(&[
        "report",
        &new.display().to_string(),
        "--diff",
        &base.display().to_string(),
        "--json",
        "--top",
        "100000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = doc["functions"].as_array().unwrap();
    assert_eq!(rows[0]["function"], BETA, "{rows:?}");
    assert!(rows[0]["delta"].as_f64().unwrap() > 10.0, "{}", rows[0]);
    let alpha = rows.iter().find(|r| r["function"] == ALPHA).unwrap();
    assert!(alpha["delta"].as_f64().unwrap() < 0.0, "{alpha}");
    let table = sampler(&[
        "report",
        &new.display().to_string(),
        "--diff",
        &base.display().to_string(),
    ]);
    let table = String::from_utf8_lossy(&table.stdout);
    let first = table.lines().nth(4).unwrap_or("");
    assert!(first.contains(BETA) && first.contains("pp"), "{table}");
    Ok(())
}

fn bad_destinations_fail_before_sampling() -> TestResult {
    // No root needed: these are refused before anything is opened.
    let existing = out("exists.svg");
    std::fs::write(&existing, "mine").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["-o".into(), out("x.txt").display().to_string()],
            ".pb.gz or .pprof",
        ),
        (vec!["-o".into(), existing.display().to_string()], "--force"),
        (
            vec!["-o".into(), "/nonexistent-dir/x.pb.gz".into()],
            "writable directory",
        ),
        (
            vec![
                "-o".into(),
                out("w.folded").display().to_string(),
                "--weight".into(),
                "x".into(),
            ],
            "--weight `x`",
        ),
    ];
    for (args, want) in cases {
        let started = Instant::now();
        let o = Command::new(sampler_bin())
            .arg("record")
            .args(["-d", "30"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = stderr(&o);
        // A --weight needs the run's events: it is checked right after they are open
        // (as root), or the privilege check fails first.
        if want.starts_with("--weight") && !common::is_root() {
            continue;
        }
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: `{err}` lacks `{want}`");
        assert!(
            !err.contains("recording"),
            "{args:?} started sampling: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} sampled"
        );
    }
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "mine");
    Ok(())
}

fn spawn_record(file: &Path) -> Child {
    Command::new(sampler_bin())
        .args(["record", "-g", "-d", "60", "-o"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sampler record")
}

fn ctrl_c_still_writes_and_kill_leaves_no_profile() -> TestResult {
    let _root = require_root()?;
    let bin = workload("workload", false)?;
    let _w = Running::start(&bin, "cpu", 8.0);
    let file = out("interrupted.pb.gz");
    let child = spawn_record(&file);
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let report = sampler(&["report", &file.display().to_string(), "--json"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let doc: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert!(doc["samples"].as_u64().unwrap() > 500, "{doc}");

    let killed = out("killed.pb.gz");
    let mut child = spawn_record(&killed);
    std::thread::sleep(Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!killed.exists(), "a killed run left {}", killed.display());
    Ok(())
}

/// A raw HTTP/1.1 GET: status code, headers and body.
fn get(port: u16, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head, buf[(split + 4).min(buf.len())..].to_vec())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_pprof_endpoint_is_read_by_go_tool_pprof() -> TestResult {
    let _root = require_root()?;
    go()?;
    let bin = workload("workload", false)?;
    let port = free_port();
    let serve = Serve(
        Command::new(sampler_bin())
            .args(["serve", "--profiles", "stacks", "-i", "1", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The socket listens from the start; the server answers once set-up is done.
    let (code, _, _) = get(port, "/healthz");
    assert_eq!(code, 200, "/healthz");
    // Set-up done, it keeps only what naming other processes' functions needs:
    // CAP_SYS_PTRACE (19) and CAP_CHECKPOINT_RESTORE (40).
    let status = std::fs::read_to_string(format!("/proc/{}/status", serve.0.id())).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or("");
    let want = (1u64 << 19) | (1u64 << 40);
    let have = u64::from_str_radix(cap_eff, 16).unwrap();
    assert_eq!(
        have & !want,
        0,
        "serve kept more than it needs: CapEff {cap_eff}"
    );
    assert_ne!(
        have & (1 << 19),
        0,
        "serve dropped CAP_SYS_PTRACE: CapEff {cap_eff}"
    );
    let _w = Running::start(&bin, "cpu", 12.0);
    // The way a scraper pulls it: go tool pprof fetches the URL itself.
    let url = format!("http://127.0.0.1:{port}/debug/pprof/profile?seconds=4");
    let fetch = std::thread::spawn(move || pprof_top(&url, "samples"));
    std::thread::sleep(Duration::from_secs(1));
    // One at a time: a second request is told when to come back.
    let (code, head, _) = get(port, "/debug/pprof/profile?seconds=2");
    assert_eq!(code, 429, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    // The metrics keep being served meanwhile.
    let (code, _, body) = get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("sampler_"));
    let rows = fetch.join().expect("go tool pprof over HTTP");
    assert_two_to_one("/debug/pprof/profile", &rows);
    // Bounds: more than a minute is refused, and nothing is taken.
    let (code, _, body) = get(port, "/debug/pprof/profile?seconds=61");
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    // After the profile the next one may start.
    let (code, head, body) = get(port, "/debug/pprof/profile?seconds=1");
    assert_eq!(code, 200, "{head}");
    assert_eq!(&body[..2], &[0x1f, 0x8b], "not gzip");
    drop(serve);
    Ok(())
}

crate::test_main!(
    bad_destinations_fail_before_sampling,
    pprof_recorded_is_read_by_go_tool_pprof,
    folded_stacks_and_the_flame_graph_hold_the_hot_functions,
    report_diff_puts_the_regressed_function_first,
    ctrl_c_still_writes_and_kill_leaves_no_profile,
    serve_pprof_endpoint_is_read_by_go_tool_pprof,
);
