//! The test workload (`tests/workload/main.rs`), built with rustc by the tests that
//! need it, and a running instance that is killed when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// Builds the workload (once per name) with rustc: optimized, frame pointers, debug
/// information; `strip` drops its symbols.
pub fn workload(name: &str, strip: bool) -> Result<PathBuf, super::Skip> {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workload/main.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let mut cmd = Command::new(&rustc);
    cmd.args([
        "--edition",
        "2021",
        "--crate-name",
        "workload",
        "-C",
        "opt-level=2",
        "-C",
        "force-frame-pointers=yes",
    ]);
    if strip {
        cmd.args(["-C", "strip=symbols"]);
    } else {
        cmd.arg("-g");
    }
    let status = cmd.arg("-o").arg(&out).arg(&src).status();
    match status {
        Ok(s) if s.success() => Ok(out),
        Ok(s) => panic!("building the workload with {rustc} failed: {s}"),
        Err(e) => Err(super::skip(format!(
            "cannot run {rustc} to build the test workload ({e}); run under cargo"
        ))),
    }
}

pub struct Running(pub Child);

impl Running {
    pub fn start(bin: &Path, mode: &str, secs: f64) -> Self {
        Self(
            Command::new(bin)
                .args([mode, &secs.to_string()])
                .stdin(Stdio::null())
                .spawn()
                .expect("start the workload"),
        )
    }

    pub fn start_args(bin: &Path, args: &[&str]) -> Self {
        Self(
            Command::new(bin)
                .args(args)
                .stdin(Stdio::null())
                .spawn()
                .expect("start the workload"),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
