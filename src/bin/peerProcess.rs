//! `peerProcess <peerID> [OPTIONS]`: the classic entry point (SPEC A1).
#![allow(non_snake_case)]

use clap::Parser;
use p2pshare::cli::{init_tracing, run_peer, PeerArgs};

/// Runs one peer of the swarm described by Common.cfg and PeerInfo.cfg in the
/// working directory, and exits 0 once every peer has the whole file.
#[derive(Parser, Debug)]
#[command(name = "peerProcess", version)]
struct Cli {
    #[command(flatten)]
    peer: PeerArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    run_peer(&cli.peer)
}
