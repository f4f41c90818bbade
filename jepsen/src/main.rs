//! `raftmq-jepsen`: runs the chaos harness once and exits 0 if the history checks out
//! (see `raftmq_jepsen::run` and `docs/chaos.md`).

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    use clap::Parser;
    // `raftmq-jepsen relay …`: the delaying relay the harness runs in each broker's namespace.
    if std::env::args().nth(1).as_deref() == Some("relay") {
        let args = raftmq_jepsen::relay::RelayArgs::parse_from(std::env::args().skip(1));
        return match raftmq_jepsen::relay::main(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("raftmq-jepsen relay: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let args = raftmq_jepsen::run::Args::parse();
    match raftmq_jepsen::run::main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("raftmq-jepsen: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
