//! Compiles `proto/raftmq/v1/*.proto` (and the vendored `proto/apache/rocketmq/v2/*.proto`) with protox (pure Rust: no system `protoc`) into a
//! file descriptor set, then generates prost messages and tonic services from that set with
//! madsim-tonic-build (which also emits the simulated variant used under `--cfg madsim`).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/raftmq/v1/common.proto",
        "proto/raftmq/v1/namesrv.proto",
        "proto/raftmq/v1/messaging.proto",
        "proto/raftmq/v1/admin.proto",
        "proto/raftmq/raft/v1/raft.proto",
        // Vendored unchanged (but for a source line) from apache/rocketmq-apis v2.1.2: the API
        // the official RocketMQ 5 clients speak, served by `raftmq proxy`.
        "proto/apache/rocketmq/v2/definition.proto",
        "proto/apache/rocketmq/v2/service.proto",
    ];
    let includes = ["proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, includes)?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds_path = out_dir.join("raftmq_descriptor.bin");
    std::fs::write(&fds_path, fds.encode_to_vec())?;
    madsim_tonic_build::configure()
        .file_descriptor_set_path(&fds_path)
        .skip_protoc_run()
        .emit_rerun_if_changed(false)
        .compile_protos(&protos, &includes)?;
    Ok(())
}
