//! Builds the eBPF programs (`tracer-ebpf`) for the BPF target and leaves the object in OUT_DIR,
//! where `collector::ebpf` embeds it, so the one `tracer` binary carries its kernel side.
//!
//! Uses the pinned stable toolchain (rust-toolchain.toml) with `core` built from source:
//! RUSTC_BOOTSTRAP is set for this nested build only, never for the userspace crates.
use std::env;

fn main() -> anyhow::Result<()> {
    let toolchain = env::var("TRACER_EBPF_TOOLCHAIN").unwrap_or_else(|_| "1.95.0".into());
    println!("cargo:rerun-if-env-changed=TRACER_EBPF_TOOLCHAIN");
    // SAFETY: the build script is single-threaded here; the variable reaches only the child
    // cargo that aya-build spawns for the eBPF crate.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let package = aya_build::Package {
        name: "tracer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
}
