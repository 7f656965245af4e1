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
    /// Write the manifest of piece hashes (`<FileName>.p2pmanifest`) next to
    /// Common.cfg, so that peers verify every piece; prints its digest to pin.
    Manifest(ManifestArgs),
}

#[derive(clap::Args, Debug)]
struct ManifestArgs {
    /// Working directory with Common.cfg (and PeerInfo.cfg).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// The complete file [default: the first seeder's peer_<ID>/<FileName>].
    file: Option<std::path::PathBuf>,
}

fn manifest(args: ManifestArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let config = p2pshare::config::Config::load(&args.dir)?;
    let file = match args.file {
        Some(f) => f,
        None => {
            let seeder = config
                .peers
                .peers
                .iter()
                .find(|p| p.has_file)
                .context("no FILE given and no peer in PeerInfo.cfg has hasFile 1")?;
            args.dir
                .join(format!("peer_{}", seeder.id))
                .join(&config.common.file_name)
        }
    };
    let m = p2pshare::manifest::Manifest::build(&file, &config.common)
        .with_context(|| format!("hashing {}", file.display()))?;
    let text = m.render();
    let out = p2pshare::manifest::path_for(&args.dir, &config.common.file_name);
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} ({} pieces)", out.display(), m.pieces.len());
    println!(
        "manifest digest (pin with --manifest-digest): {}",
        p2pshare::manifest::Manifest::digest(text.as_bytes())
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Peer(args) => run_peer(&args),
        Command::Manifest(args) => match manifest(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
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
