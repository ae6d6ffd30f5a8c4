//! Builds the BPF objects (`sampler-ebpf`: sampler's programs and the benchmarks'
//! floor) with the pinned nightly (`sampler-ebpf/nightly-toolchain`) + `-Z
//! build-std=core` and bpf-linker, into `OUT_DIR`, where `src/kernel/bpf.rs` embeds
//! them.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir).parent().unwrap_or(Path::new(".."));
    let ebpf_dir = root.join("sampler-ebpf");
    let common_dir = root.join("sampler-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let pin = ebpf_dir.join("nightly-toolchain");
    println!("cargo:rerun-if-changed={}", pin.display());
    let nightly =
        std::fs::read_to_string(&pin).map_err(|e| anyhow::anyhow!("{}: {e}", pin.display()))?;
    let nightly = nightly.trim();
    println!("cargo:rerun-if-env-changed=PATH");

    if let Err(err) = which::which("bpf-linker") {
        anyhow::bail!(
            "bpf-linker is not installed ({err}): the BPF programs cannot be linked. \
             Run `cargo xtask setup` (it installs the pinned nightly with rust-src, llvm-22-dev and bpf-linker)."
        );
    }
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sampler-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(nightly),
    )
}
