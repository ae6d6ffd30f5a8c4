//! Builds the BPF object (`sampler-ebpf`) with nightly + `-Z build-std=core` and
//! bpf-linker, into `OUT_DIR`, where `src/bpf.rs` embeds it.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir).parent().unwrap_or(Path::new(".."));
    let ebpf_dir = root.join("sampler-ebpf");
    let common_dir = root.join("sampler-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!("cargo:rerun-if-env-changed=PATH");

    if let Err(err) = which::which("bpf-linker") {
        anyhow::bail!(
            "bpf-linker is not installed ({err}): the BPF programs cannot be linked. \
             Run `cargo xtask setup` (it installs nightly rust-src, llvm-22-dev and bpf-linker)."
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
        aya_build::Toolchain::default(),
    )
}
