//! `p2pshare`: the command-line front end (peer, local swarm).

use clap::{Parser, Subcommand};
use p2pshare::cli::{init_tracing, run_peer, PeerArgs};
use p2pshare::local::LocalArgs;
use std::process::ExitCode;

/// Peer-to-peer file distribution, compatible with the classic peerProcess protocol.
#[derive(Parser, Debug)]
#[command(name = "p2pshare", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one peer; the same as `peerProcess <ID>`.
    Peer(PeerArgs),
    /// Run a whole swarm on this machine, one process per peer, with progress and a
    /// final check of every copy. Without DIR, runs a generated example swarm.
    Local(LocalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Peer(args) => run_peer(&args),
        Command::Local(args) => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(p2pshare::local::run(args)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
