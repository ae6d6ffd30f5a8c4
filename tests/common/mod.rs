//! Helpers shared by the end-to-end tests: running the built `sampler` binary.

use std::process::{Command, Output, Stdio};

pub const SAMPLER: &str = env!("CARGO_BIN_EXE_sampler");

/// Runs sampler with `args`, no standard input, and collects its output.
pub fn sampler(args: &[&str]) -> Output {
    Command::new(SAMPLER)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sampler")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
