//! Compiles `fedsx/**/*.proto` in pure Rust (protox), so no protoc is needed, and writes the
//! file descriptor set that server reflection serves.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "fedsx/wire/v1/wire.proto",
    "fedsx/logstore/v1/logstore.proto",
    "fedsx/kernel/v1/kernel.proto",
    "fedsx/kernel/v1/journal.proto",
    "fedsx/delivery/v1/delivery.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("fedsx_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
