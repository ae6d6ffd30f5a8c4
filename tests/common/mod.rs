//! Helpers shared by the end-to-end tests: running the built `sampler` binary, busy
//! child processes, and skipping with a printed reason.
#![allow(
    dead_code,
    reason = "each test target uses a different subset of these helpers"
)]

use std::{
    io::Write as _,
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, MutexGuard, PoisonError},
};

/// The binary under test: `SAMPLER_BIN` when set (the arm64 guest, where the binary
/// sits at `/sampler`), else the one cargo built.
pub fn sampler_bin() -> String {
    std::env::var("SAMPLER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sampler").to_owned())
}

/// Runs sampler with `args`, no standard input, and collects its output.
pub fn sampler(args: &[&str]) -> Output {
    Command::new(sampler_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sampler")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn is_root() -> bool {
    sampler::sys::effective_capabilities().is_ok_and(|caps| {
        sampler::sys::missing_capabilities(caps).is_empty()
            && std::fs::read_to_string("/proc/self/status")
                .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
    })
}

/// Prints why a test is skipped, past the test harness's output capture.
pub fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Tests that pin busy loops to CPUs and read system-wide shares run one at a time.
static SYSTEM_WIDE: Mutex<()> = Mutex::new(());

/// `Some(guard)` when the test can run: root, and no other system-wide test running.
pub fn require_root(test: &str) -> Option<MutexGuard<'static, ()>> {
    if is_root() {
        return Some(SYSTEM_WIDE.lock().unwrap_or_else(PoisonError::into_inner));
    }
    skip(
        test,
        "needs root (loads BPF programs, opens system-wide perf events); \
         run `sudo -E cargo xtask test`",
    );
    None
}

/// A CPU-bound child (`sh` busy loop) pinned to one CPU, killed on drop.
pub struct Busy(Child);

impl Busy {
    pub fn pinned_to(cpu: u32) -> Self {
        let child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn busy loop");
        let busy = Self(child);
        sampler::sys::pin_to_cpu(busy.pid() as i32, cpu).expect("pin busy loop");
        busy
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
