//! `sampler top` end to end: the full-screen view in a real terminal (tmux), and the
//! batch modes. Root only (BPF and system-wide perf events); the terminal test also
//! needs tmux, which `cargo xtask test` installs.

mod common;

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{Busy, Skip, TestResult, require_root, sampler, sampler_bin, skip, stderr};
use serde_json::Value;

fn tmux(socket: &str, args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(["-L", socket])
        .args(args)
        .output()
        .expect("run tmux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls the pane until `pred` holds (or the deadline passes); returns the last text.
fn wait_pane(socket: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let pane = tmux(socket, &["capture-pane", "-p", "-t", "top"]);
        if pred(&pane) || Instant::now() > deadline {
            return pane;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The pane's terminal is back to normal: main screen, cursor shown.
fn assert_restored(socket: &str) {
    assert_eq!(
        tmux(socket, &["display", "-p", "-t", "top", "#{alternate_on}"]).trim(),
        "0",
        "left the alternate screen"
    );
    assert_eq!(
        tmux(socket, &["display", "-p", "-t", "top", "#{cursor_flag}"]).trim(),
        "1",
        "cursor shown again"
    );
}

/// `sampler top` running in a detached tmux session of its own (socket `socket`),
/// inside a shell that stays after it exits so the terminal can be inspected; killed
/// with its log file on drop.
struct Session {
    socket: String,
    log: std::path::PathBuf,
}

impl Session {
    /// Root, tmux, and the session started at `width`x`height`; why not when the
    /// test cannot run here.
    fn start(
        test: &str,
        width: u16,
        height: u16,
    ) -> Result<(std::sync::MutexGuard<'static, ()>, Self), Skip> {
        if Command::new("tmux").arg("-V").output().is_err() {
            return Err(skip("tmux is not installed (`apt-get install tmux`)"));
        }
        let serial = require_root()?;
        let id = format!("{test}-{}", std::process::id());
        let session = Self {
            socket: format!("sampler-{id}"),
            log: std::env::temp_dir().join(format!("sampler-{id}.log")),
        };
        let cmd = format!("{}; echo EXITED $?; sleep 60", session.command());
        let (w, h) = (width.to_string(), height.to_string());
        tmux(
            &session.socket,
            &["new-session", "-d", "-s", "top", "-x", &w, "-y", &h, &cmd],
        );
        Ok((serial, session))
    }

    /// The sampler command line, as `pgrep -f` sees it.
    fn command(&self) -> String {
        format!(
            "{} top -i 0.5 --log {}",
            sampler_bin(),
            self.log.to_string_lossy()
        )
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        tmux(&self.socket, &["kill-server"]);
        let _ = std::fs::remove_file(&self.log);
    }
}

fn full_screen_view_in_a_real_terminal() -> TestResult {
    let (_serial, session) = Session::start("full_screen_view_in_a_real_terminal", 160, 40)?;
    let socket = &session.socket;
    let busy = Busy::pinned_to(0);
    // The view comes up on the alternate screen with the busy process on top.
    let pid = busy.pid().to_string();
    let pane = wait_pane(socket, 20, |p| {
        p.contains("sampler top") && p.lines().any(|l| l.trim_start().starts_with(&pid))
    });
    assert!(pane.contains("sampler top"), "{pane}");
    let first_row = pane
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("PID"))
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(
        first_row.trim_start().starts_with(&pid),
        "the busy process {pid} leads: {first_row}\n{pane}"
    );
    assert_eq!(
        tmux(socket, &["display", "-p", "-t", "top", "#{alternate_on}"]).trim(),
        "1"
    );
    // Views by key: threads, then CPUs.
    tmux(socket, &["send-keys", "-t", "top", "t"]);
    let pane = wait_pane(socket, 5, |p| p.contains("TID"));
    assert!(pane.contains("TID"), "{pane}");
    tmux(socket, &["send-keys", "-t", "top", "c"]);
    let pane = wait_pane(socket, 5, |p| p.contains("PMU / CORE TYPE"));
    assert!(pane.contains("PMU / CORE TYPE"), "{pane}");
    // Help, then quit with q: the terminal is restored (alternate screen off).
    tmux(socket, &["send-keys", "-t", "top", "h"]);
    let pane = wait_pane(socket, 5, |p| p.contains("this help"));
    assert!(pane.contains("this help"), "{pane}");
    tmux(socket, &["send-keys", "-t", "top", "h", "q"]);
    let pane = wait_pane(socket, 10, |p| p.contains("EXITED"));
    assert!(
        pane.contains("EXITED 0"),
        "sampler top did not quit on q: {pane}"
    );
    assert_restored(socket);
    Ok(())
}

fn sigterm_restores_the_terminal_too() -> TestResult {
    // What a service manager (TERM), a user (INT, from another terminal) and a closed
    // terminal or ssh session (HUP) send: each stops the view cleanly.
    for sig in ["TERM", "INT", "HUP"] {
        let (_serial, session) = Session::start("sigterm_restores_the_terminal_too", 120, 30)?;
        let socket = &session.socket;
        let pane = wait_pane(socket, 20, |p| p.contains("PID"));
        assert!(pane.contains("sampler top"), "{pane}");
        let pids = Command::new("pgrep")
            // Anchored: the shell around it has the same words after `sh -c`.
            .args(["-f", &format!("^{}$", session.command())])
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&pids.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(!pid.is_empty(), "sampler's pid");
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let pane = wait_pane(socket, 10, |p| p.contains("EXITED"));
        assert!(
            pane.contains("EXITED 0"),
            "did not stop on SIG{sig}: {pane}"
        );
        assert_restored(socket);
    }
    Ok(())
}

fn batch_iterations_json_and_text() -> TestResult {
    let _serial = require_root()?;
    let busy = Busy::pinned_to(0);
    let out = sampler(&["top", "--batch", "--iterations", "2", "--json", "-i", "0.3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect();
    assert_eq!(docs.len(), 2);
    for d in &docs {
        assert!(d["refresh_ms"].as_f64().unwrap() >= 0.0, "{d}");
        assert!(
            d["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["tgid"] == busy.pid())
        );
        assert!(d["tasks"][0]["cgroup_id"].is_u64(), "{d}");
    }
    // Plain text like `top -b`: a header and the process table, no escapes.
    let out = sampler(&["top", "-b", "-n", "2", "-i", "0.3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("sampler top").count(), 2, "{text}");
    assert!(!text.contains('\x1b'), "{text}");
    let pid = busy.pid().to_string();
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with(&pid) && l.contains("sh")),
        "{text}"
    );
    Ok(())
}

crate::test_main!(
    full_screen_view_in_a_real_terminal,
    sigterm_restores_the_terminal_too,
    batch_iterations_json_and_text,
);
