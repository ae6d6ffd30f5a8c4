//! Helpers shared by the end-to-end tests: running the built `sampler` binary, busy
//! child processes, and the harness that reports a test that cannot run here as
//! ignored, with its reason.
#![allow(
    dead_code,
    reason = "each test target uses a different subset of these helpers"
)]

pub mod workload;

use std::{
    process::{Child, Command, ExitCode, Output, Stdio},
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

/// Why a test did not run here. The harness ([`run`]) reports such a test as
/// ignored, with the reason, never as passed.
#[derive(Debug)]
pub struct Skip(String);

/// What a test returns: `Ok` when it ran and passed (a failure panics), `Err` when it
/// could not run here.
pub type TestResult = Result<(), Skip>;

/// A test: its name and its function.
pub type Test = (&'static str, fn() -> TestResult);

pub fn skip(reason: impl Into<String>) -> Skip {
    Skip(reason.into())
}

/// Runs the tests like the standard harness (same arguments: filters, `--exact`,
/// `--test-threads`, `--list`), except that a test that could not run here is
/// counted and shown as ignored with its reason.
pub fn run(tests: &[Test]) -> ExitCode {
    use libtest_mimic::{Arguments, Completion, Trial};
    // In name order, as the standard harness runs them (one at a time in the guest).
    let mut tests = tests.to_vec();
    tests.sort_unstable_by_key(|&(name, _)| name);
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            Trial::ignorable_test(name, move || match test() {
                Ok(()) => Ok(Completion::Completed),
                Err(Skip(reason)) => Ok(Completion::ignored_with(reason)),
            })
        })
        .collect();
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

/// The `main` of a test target: `crate::test_main!(test_a, test_b);` runs those
/// functions (each `fn() -> TestResult`) through [`run`].
#[macro_export]
macro_rules! test_main {
    ($($test:ident),+ $(,)?) => {
        fn main() -> std::process::ExitCode {
            $crate::common::run(&[
                $((stringify!($test), $test as fn() -> $crate::common::TestResult)),+
            ])
        }
    };
}

/// Tests that pin busy loops to CPUs and read system-wide shares run one at a time.
static SYSTEM_WIDE: Mutex<()> = Mutex::new(());

/// The guard that runs the test alone among the system-wide tests, when it can run:
/// as root.
pub fn require_root() -> Result<MutexGuard<'static, ()>, Skip> {
    if is_root() {
        return Ok(SYSTEM_WIDE.lock().unwrap_or_else(PoisonError::into_inner));
    }
    Err(skip(
        "needs root (loads BPF programs, opens system-wide perf events); \
         run `sudo -E cargo xtask test`",
    ))
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
