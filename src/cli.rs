//! Command-line arguments shared by the two binaries (`peerProcess`, `p2pshare`).

use crate::peer::PeerOptions;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Options of one peer: `peerProcess <peerID> [OPTIONS]` or `p2pshare peer <peerID>`.
#[derive(Args, Debug, Clone)]
pub struct PeerArgs {
    /// This peer's ID, as listed in PeerInfo.cfg.
    pub peer_id: u32,

    /// Working directory holding Common.cfg and PeerInfo.cfg; the log and
    /// peer_<ID>/ are written there.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,

    /// Follow SPEC Part A to the letter: no extensions advertised in the handshake,
    /// one outstanding request per connection, random piece choice.
    #[arg(long)]
    pub strict: bool,

    /// Seconds to keep retrying a peer listed earlier that is not up yet.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub connect_timeout: u64,

    /// Seconds a new connection has to complete its handshake.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub handshake_timeout: u64,

    /// Outstanding requests per connection with peers that negotiated pipelining
    /// (ignored with --strict and towards plain peers, which get exactly one)
    /// [default: about a second of what that neighbour sent us lately, at least 2 and
    /// at most 256 KiB's worth (1 to 64), when NumberOfPreferredNeighbors + 1 covers
    /// every other peer and units are blocks, else 256 KiB's worth; twice that towards
    /// a lone seeder].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub pipeline_depth: Option<u16>,

    /// Exit with an error after this many seconds without progress while the swarm
    /// cannot finish (a listed peer is gone, or a missing piece has no holder).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub give_up_after: u64,

    /// Close a connection that delivers none of the pieces we requested for this many
    /// seconds (plus the time a piece takes at 32 KiB/s); its requests go elsewhere.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub request_timeout: u64,

    /// Manifest of piece hashes [default: <dir>/<FileName>.p2pmanifest if present;
    /// without one, pieces are not verified].
    #[arg(long, value_name = "PATH")]
    pub manifest: Option<PathBuf>,

    /// Refuse to start unless the manifest's BLAKE3 digest (printed by
    /// `p2pshare manifest`) is this one.
    #[arg(long, value_name = "HEX")]
    pub manifest_digest: Option<String>,

    /// Cap on upload (piece data, all connections together), in bytes per second.
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_limit: Option<u64>,

    /// Pieces uploaded at the same time, to all neighbours together (0: no limit).
    /// Few at full speed reach their receivers sooner than many at a fraction of it,
    /// so they travel on through the swarm sooner; the rarest requested piece goes
    /// first. Default: a peer that starts with the whole file uses pieces worth about
    /// 768 KiB (3 of 256 KiB) when at least twice as many peers download, otherwise no
    /// limit; a downloader uses about 256 KiB worth (at least 2), raised to what it
    /// uploads in 0.1 s, measured over each second (at most 16); `--strict`: no limit.
    #[arg(long, value_name = "N")]
    pub upload_slots: Option<usize>,

    /// Upload slots until we have sent one piece per other peer (0: none). At the
    /// start every downloader is idle until its first piece arrives; served a few at
    /// a time, the first ones arrive (and are relayed) sooner. Off by default: it
    /// made no difference measurable above run-to-run noise (bench/RESULTS.md).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub warmup_slots: usize,

    /// TCP congestion control of our connections: a name the kernel offers
    /// (net.ipv4.tcp_available_congestion_control), or `system` for the default.
    /// The default, `cubic` (falling back to `reno`), keeps full speed towards peers
    /// whose uplink is busy relaying, where BBR stalls (see bench/RESULTS.md).
    #[arg(long, default_value = "cubic", value_name = "NAME")]
    pub congestion: String,

    /// Block size for pieces traded with other p2pshare peers (SPEC B, BLOCKS): a
    /// power of two from 1024; 0 trades whole pieces only. Blocks are relayed as soon
    /// as each is verified, so a piece spreads before all of it has arrived anywhere.
    /// Ignored with --strict, towards plain peers and when a piece is not larger.
    /// [default: the largest power of two from 64 KiB with (downloaders - 1) x block
    /// within 1 MiB, e.g. 64 KiB for 16 downloaders, 128 KiB for 8; whole pieces when
    /// that is not smaller than a piece]
    #[arg(long, value_name = "BYTES", value_parser = parse_block_size)]
    pub block_size: Option<u32>,

    /// Testing only: flip one byte in this fraction (0..=1) of the pieces and blocks we
    /// upload, to exercise our peers' verification with a peer that lies.
    #[arg(long, hide = true, default_value_t = 0.0, value_name = "FRACTION")]
    pub test_corrupt_uploads: f64,

    /// Seed for this peer's random choices (pieces, neighbours), for reproducible runs.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Threads running the connections and the swarm (disk work and hashing have
    /// their own pool): 1 runs them all on one thread, 0 one per core. One is the
    /// default because handing every message between threads costs more than it
    /// gains when several peers share the cores, as in the benchmarks: 0.9 of the
    /// CPU and 0.83 of the time on loopback (1 GiB, 1 + 7 on 2 cores). A peer alone
    /// on a many-core host relaying well over 1 GB/s may want more (1 + 1 on
    /// loopback: 1.03 s with one thread, 0.88 s with two; see bench/RESULTS.md).
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub threads: u16,
}

impl PeerArgs {
    pub fn options(&self) -> PeerOptions {
        PeerOptions {
            id: self.peer_id,
            dir: self.dir.clone(),
            strict: self.strict,
            connect_timeout: Duration::from_secs(self.connect_timeout),
            handshake_timeout: Duration::from_secs(self.handshake_timeout),
            pipeline_depth: self.pipeline_depth.map(usize::from),
            seed: self.seed,
            give_up_after: Duration::from_secs(self.give_up_after),
            manifest: self.manifest.clone(),
            manifest_digest: self.manifest_digest.clone(),
            upload_limit: self.upload_limit,
            request_timeout: Duration::from_secs(self.request_timeout),
            upload_slots: self.upload_slots,
            warmup_slots: self.warmup_slots,
            test_corrupt_uploads: self.test_corrupt_uploads.clamp(0.0, 1.0),
            block_size: self.block_size,
            congestion: match self.congestion.as_str() {
                "system" => Vec::new(),
                "cubic" => vec!["cubic".into(), "reno".into()],
                other => vec![other.to_string()],
            },
        }
    }
}

/// Diagnostics go to stderr, never into the event log; `RUST_LOG` overrides the level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs one peer on a fresh runtime; the exit status for the process.
pub fn run_peer(args: &PeerArgs) -> std::process::ExitCode {
    bound_allocator_caches();
    let mut builder = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if args.threads > 1 {
            b.worker_threads(usize::from(args.threads));
        }
        b
    };
    // Disk work is a few positional reads/writes at a time; a small blocking pool keeps
    // per-thread allocator caches (and so resident memory) small.
    let rt = match builder.max_blocking_threads(8).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::peer::run(args.options())) {
        Ok(()) => {
            // Blocking disk tasks are finished by now; don't wait on idle threads.
            rt.shutdown_timeout(Duration::from_secs(1));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            rt.shutdown_timeout(Duration::from_secs(1));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Piece buffers are large, short-lived and freed on other threads than they were
/// allocated on; with glibc's default of one arena per thread, each thread parks its
/// own freed pieces. Two arenas keep that small. (A fixed, low mmap threshold also
/// bounded RSS but cost a page fault per 4 KiB of every piece: kernel time dominated
/// the loopback profile.)
fn bound_allocator_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if v != 0 {
        crate::blocks::check_block_size(v).map_err(|e| e.to_string())?;
    }
    Ok(v)
}
