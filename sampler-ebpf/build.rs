//! The BPF object is linked by `bpf-linker`; rebuild when that binary changes. The
//! `bpf_target_arch` cfg (which kernel's register layout the samples carry) comes from
//! the loader's target through aya-build, or from the host when built on its own.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
    // bpf-linker asks LLVM to expand memcpy in order by default, and that turns every
    // memset (zeroing a struct of three or more words) and memmove into a call to a
    // byte-by-byte loop: a loop for the verifier to walk, and for the sample
    // interrupt to run. Without it, LLVM stores the words inline.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
    }
    if let Err(err) = aya_build::emit_bpf_target_arch_cfg() {
        println!("cargo:warning=bpf_target_arch: {err}");
    }
}
