//! `raftmq-jepsen`: runs the chaos harness once and exits 0 if the history checks out
//! (see `raftmq_jepsen::run` and `docs/chaos.md`).

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    use clap::Parser;
    let args = raftmq_jepsen::run::Args::parse();
    match raftmq_jepsen::run::main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("raftmq-jepsen: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
