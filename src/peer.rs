//! One peer process from start to exit: load the configs, open the file and the log,
//! listen, connect to every earlier peer (SPEC A2), accept every later one, and run the
//! swarm actor until all peers have the file.

use crate::bitfield::Bitfield;
use crate::blocks::Layout;
use crate::config::{Config, ConfigError};
use crate::connection::{self, HandshakeFailure, Wiring};
use crate::eventlog::EventLog;
use crate::handshake::Extensions;
use crate::manifest::Manifest;
use crate::message::MessageCodec;
use crate::ratelimit::RateLimiter;
use crate::storage::{Storage, StorageError};
use crate::swarm::{Outcome, Swarm, SwarmEvent, SwarmOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Everything a peer needs besides the two config files.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    pub id: u32,
    /// Working directory holding Common.cfg and PeerInfo.cfg.
    pub dir: PathBuf,
    pub strict: bool,
    /// How long to keep retrying an earlier peer that refuses connections.
    pub connect_timeout: Duration,
    /// How long a new connection may take to complete its handshake.
    pub handshake_timeout: Duration,
    /// `None`: sized to keep about 256 KiB in flight per connection.
    pub pipeline_depth: Option<usize>,
    /// Seed of the peer's RNG (piece and neighbour choice); random when `None`.
    pub seed: Option<u64>,
    /// Exit non-zero after this long without progress when the swarm cannot finish.
    pub give_up_after: Duration,
    /// Manifest file; default `<dir>/<FileName>.p2pmanifest` if it exists.
    pub manifest: Option<PathBuf>,
    /// BLAKE3 the manifest's bytes must have (pinned by the operator).
    pub manifest_digest: Option<String>,
    /// Cap on piece bytes sent per second, all connections together.
    pub upload_limit: Option<u64>,
    /// See [`SwarmOptions::request_timeout`].
    pub request_timeout: Duration,
    /// See [`SwarmOptions::upload_slots`]; `None`: see [`seeder_upload_slots`].
    pub upload_slots: Option<usize>,
    /// See [`SwarmOptions::warmup_slots`].
    pub warmup_slots: usize,
    /// See [`SwarmOptions::test_corrupt_uploads`].
    pub test_corrupt_uploads: f64,
    /// TCP congestion controls to try, in order; empty: the system's.
    pub congestion: Vec<String>,
    /// BLOCKS block size (0: whole pieces only); `None`: see
    /// [`crate::blocks::auto_block_size`].
    pub block_size: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{file}: peer ID {id} is not listed")]
    NotListed { file: String, id: u32 },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{path}: cannot open the log: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on port {port} (PeerInfo.cfg, peer {id}): {source}")]
    Listen {
        id: u32,
        port: u16,
        source: std::io::Error,
    },
    #[error("peer {id}: {reason}")]
    Failed { id: u32, reason: String },
    #[error("{path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
}

/// Loads and checks the manifest, if any. `None` means this peer runs unverified.
fn load_manifest(
    opts: &PeerOptions,
    common: &crate::config::Common,
) -> Result<Option<Manifest>, PeerError> {
    let path = opts
        .manifest
        .clone()
        .unwrap_or_else(|| crate::manifest::path_for(&opts.dir, &common.file_name));
    let err = |reason: String| PeerError::Manifest {
        path: path.clone(),
        reason,
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && opts.manifest.is_none() => {
            if opts.manifest_digest.is_some() {
                return Err(err("not found, but --manifest-digest was given".into()));
            }
            tracing::warn!(
                "no manifest ({} not found): pieces cannot be verified; create one with `p2pshare manifest`",
                path.display()
            );
            return Ok(None);
        }
        Err(e) => return Err(err(format!("cannot read: {e}"))),
    };
    let digest = Manifest::digest(&bytes);
    if let Some(want) = &opts.manifest_digest {
        if !want.eq_ignore_ascii_case(&digest) {
            return Err(err(format!(
                "digest is {digest}, but --manifest-digest pins {want}"
            )));
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
    let m =
        Manifest::parse(&path.display().to_string(), &text).map_err(|e| PeerError::Manifest {
            path: path.clone(),
            reason: e.reason.clone() + &format!(" (line {})", e.line),
        })?;
    m.matches(common).map_err(err)?;
    tracing::info!(
        "verifying pieces against manifest {} (digest {digest})",
        path.display()
    );
    Ok(Some(m))
}

/// Runs a peer to completion. `Ok(())` means every peer of PeerInfo.cfg has the file.
pub async fn run(opts: PeerOptions) -> Result<(), PeerError> {
    let config = Config::load(&opts.dir)?;
    let me = opts.id;
    let my_pos = config
        .peers
        .position(me)
        .ok_or_else(|| PeerError::NotListed {
            file: opts.dir.join("PeerInfo.cfg").display().to_string(),
            id: me,
        })?;
    let info = config.peers.peers[my_pos].clone();
    let common = config.common.clone();
    let pieces = common.num_pieces();

    let path = opts.dir.join(format!("peer_{me}")).join(&common.file_name);
    let manifest = load_manifest(&opts, &common)?;
    let (storage, have) = if info.has_file {
        let storage = Storage::open_seed(&path, &common)?;
        let have = match &manifest {
            Some(m) => {
                let have = storage.verified_pieces(m)?;
                if !have.is_complete() {
                    tracing::error!(
                        "{}: {} of {pieces} pieces do not match the manifest; fetching them from others",
                        path.display(),
                        pieces - have.count()
                    );
                }
                have
            }
            None => Bitfield::full(pieces),
        };
        (storage, have)
    } else {
        let existed = path.exists();
        let storage = Storage::create(&path, &common)?;
        let have = match (&manifest, existed) {
            // Resume: keep every piece already on disk that verifies.
            (Some(m), true) => {
                let have = storage.verified_pieces(m)?;
                if have.count() > 0 {
                    tracing::warn!(
                        "resuming: {} of {pieces} pieces already on disk verified",
                        have.count()
                    );
                }
                have
            }
            _ => Bitfield::new(pieces),
        };
        (storage, have)
    };
    let storage = Arc::new(storage);
    let layout = if opts.strict {
        Layout::pieces_only(common.file_size, common.piece_size)
    } else {
        let downloaders = config.peers.peers.iter().filter(|p| !p.has_file).count();
        let block = opts
            .block_size
            .unwrap_or_else(|| crate::blocks::auto_block_size(common.piece_size, downloaders));
        Layout::new(common.file_size, common.piece_size, block)
    };
    // Slots and pipeline depth are about bytes in flight: count them in units.
    let unit = u64::from(layout.block_size());
    // A downloader's default is a floor that follows its measured upload.
    let (upload_slots, slots_follow_rate) = match opts.upload_slots {
        Some(n) => (n, false),
        None if opts.strict => (0, false),
        None if !have.is_complete() => (downloader_upload_slots(unit), true),
        None => {
            let downloaders = config.peers.peers.iter().filter(|p| !p.has_file).count();
            (seeder_upload_slots(unit, downloaders), false)
        }
    };
    let log = EventLog::open(&opts.dir, me).map_err(|source| PeerError::Log {
        path: opts.dir.join(format!("log_peer_{me}.log")),
        source,
    })?;

    let listener = TcpListener::bind(("0.0.0.0", info.port))
        .await
        .map_err(|source| PeerError::Listen {
            id: me,
            port: info.port,
            source,
        })?;
    tracing::info!(
        "peer {me} listening on port {}, {} pieces",
        info.port,
        pieces
    );

    let ours = if opts.strict {
        Extensions::NONE
    } else if layout.has_blocks() {
        Extensions::PIPELINE
            .with(Extensions::blocks(layout.block_size()))
            .with(Extensions::CANCEL)
    } else {
        Extensions::PIPELINE
    };
    let codec = MessageCodec::new(common.piece_size, pieces);
    let block_codec = codec.with_blocks(layout.block_size(), layout.blocks_in(0));
    let (tx, rx) = mpsc::channel(1024);
    let limiter = opts.upload_limit.map(|r| Arc::new(RateLimiter::new(r)));

    let wiring = Wiring {
        codec,
        block_codec,
        events: tx.clone(),
        limiter,
        upload_rate: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        congestion: opts.congestion.clone(),
        serialized_uploads: upload_slots > 0 || opts.warmup_slots > 0,
    };
    let later: Vec<u32> = config.peers.peers[my_pos + 1..]
        .iter()
        .map(|p| p.id)
        .collect();
    let local = Local {
        me,
        ours,
        handshake_timeout: opts.handshake_timeout,
        connect_timeout: opts.connect_timeout,
        wiring,
    };
    let accepting = tokio::spawn(accept_loop(listener, later, local.clone())).abort_handle();
    let connector = {
        let (peers, local) = (config.peers.clone(), local.clone());
        move |id: u32, delay: Duration| {
            if let Some(p) = peers.get(id) {
                let (host, port, local) = (p.host.clone(), p.port, local.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    connect_to(id, host, port, local).await;
                });
            }
        }
    };
    for earlier in &config.peers.peers[..my_pos] {
        connector(earlier.id, Duration::ZERO);
    }

    // Deep enough to cover the bandwidth-delay product, shallow enough that requests
    // do not queue up at a neighbour that serves many: a piece asked for waits behind
    // every request queued there, and relayed pieces should travel on at once.
    // Measured at 256 KiB pieces behind 20 mbit caps (bench/RESULTS.md): 1 (2 towards
    // seeders) beat 2 at N = 8 and 16 and tied at N = 4; under BBR 2 had beaten 4 and 8.
    // By default that is only the ceiling when every neighbour can be unchoked at
    // once (k + 1 >= the other peers, the cluster setting): below it the depth
    // follows what each neighbour sends us (`pipeline::depth`), so that large swarms
    // and slow links do not queue many seconds of requests at every uplink. With
    // fewer unchoke slots a holder serves k + 1 requesters, often newly unchoked and
    // not yet measured, and the fixed depth is what keeps its queue full: the rate rule measured 1.15-1.40
    // (median 1.205) against 1.155-1.178 at 4 of 16 (bench/RESULTS.md). Whole-piece
    // layouts keep the fixed depth too (`pipeline::follows_rate` says why).
    let depth = opts
        .pipeline_depth
        .unwrap_or_else(|| ((256 * 1024) / unit as usize).clamp(1, 64));
    let swarm_opts = SwarmOptions {
        strict: opts.strict,
        pipeline_depth: depth,
        adaptive_depth: crate::pipeline::follows_rate(
            opts.pipeline_depth.is_some(),
            common.preferred_neighbors,
            config.peers.peers.len().saturating_sub(1),
            layout.has_blocks(),
        ),
        max_queued_bytes: (common.piece_size as u64 * (depth as u64 + 2)).max(4 << 20),
        seed: opts.seed.unwrap_or_else(rand::random),
        give_up_after: opts.give_up_after,
        request_timeout: opts.request_timeout,
        upload_slots,
        slots_follow_rate,
        warmup_slots: opts.warmup_slots,
        test_corrupt_uploads: opts.test_corrupt_uploads,
    };
    let mut swarm = Swarm::new(
        me,
        config,
        swarm_opts,
        log,
        storage,
        layout,
        have,
        tx,
        rx,
        Box::new(connector),
        manifest.map(Arc::new),
    );
    swarm.set_listener(accepting);
    match swarm.run().await {
        Outcome::AllComplete => Ok(()),
        Outcome::Failed(reason) => Err(PeerError::Failed { id: me, reason }),
    }
}

/// This peer's side of every connection: who we are, what we advertise, time limits.
#[derive(Clone, Debug)]
struct Local {
    me: u32,
    ours: Extensions,
    handshake_timeout: Duration,
    connect_timeout: Duration,
    wiring: Wiring,
}

async fn accept_loop(listener: TcpListener, later: Vec<u32>, local: Local) {
    let later = Arc::new(later);
    loop {
        let (mut stream, addr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let later = later.clone();
        let local = local.clone();
        tokio::spawn(async move {
            let allowed = |id: u32| {
                if later.contains(&id) {
                    Ok(())
                } else {
                    Err("a peer listed after us in PeerInfo.cfg".to_string())
                }
            };
            let hs = connection::handshake_as_acceptor(
                &mut stream,
                local.me,
                local.ours,
                local.handshake_timeout,
                allowed,
            )
            .await;
            match hs {
                Ok((peer, extensions)) => {
                    connection::start(stream, peer, extensions, false, &local.wiring);
                }
                Err(e) => tracing::error!("rejected connection from {addr}: {e}"),
            }
        });
    }
}

/// Connects to an earlier peer, retrying while it is not up yet. Advertises our
/// extensions; a peer that closes on seeing them is retried once with zero bytes.
async fn connect_to(peer: u32, host: String, port: u16, local: Local) {
    let deadline = tokio::time::Instant::now() + local.connect_timeout;
    let mut advertise = local.ours;
    let mut last_error = String::new();
    while tokio::time::Instant::now() < deadline {
        match TcpStream::connect((host.as_str(), port)).await {
            Ok(mut stream) => {
                match connection::handshake_as_connector(
                    &mut stream,
                    local.me,
                    peer,
                    advertise,
                    local.handshake_timeout,
                )
                .await
                {
                    Ok(extensions) => {
                        connection::start(stream, peer, extensions, true, &local.wiring);
                        return;
                    }
                    Err(HandshakeFailure::ClosedEarly) if !advertise.is_none() => {
                        tracing::warn!(
                            "peer {peer} closed on our extended handshake; retrying as a plain peer"
                        );
                        advertise = Extensions::NONE;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!("handshake with peer {peer} at {host}:{port} failed: {e}");
                        last_error = e.to_string();
                    }
                }
            }
            Err(e) => {
                tracing::debug!("connect to peer {peer} at {host}:{port}: {e}; retrying");
                last_error = e.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = local
        .wiring
        .events
        .send(SwarmEvent::ConnectFailed {
            peer,
            reason: format!(
                "no connection to {host}:{port} within {:?} ({last_error})",
                local.connect_timeout
            ),
        })
        .await;
}

/// Upload slots of a peer that starts with the whole file, serving `downloaders`:
/// units (pieces, or blocks with BLOCKS) worth about 768 KiB at a time (at least 3),
/// or no limit (0) with fewer than 6 downloaders (twice the 3 slots of 256 KiB
/// pieces, where that threshold was measured; blocks get more slots, 6 of 128 KiB
/// or 12 of 64 KiB, measured at N = 8 and 16).
///
/// Why a seeder limits itself: sixteen flows that start together into a FIFO
/// bottleneck lose packets, and the ones that do not grab most of the link, so the
/// first pieces reached most downloaders only after 3 s (256 KiB pieces, 20 mbit)
/// and their uplinks idled until then. A few pieces at a time at full speed arrive
/// from 0.1 s on and are relayed at once. Why not always: a flow that idled between
/// pieces restarts from its initial window, which costs more than it saves when few
/// flows start together. Measured (bench/RESULTS.md, 256 KiB pieces, 20 mbit): N = 16,
/// 3 slots 1.20 (4 runs) against 1.25-1.27 unlimited; N = 8, 1.11 against 1.12;
/// N = 4, 1.09 against 1.07.
pub fn seeder_upload_slots(piece_size: u64, downloaders: usize) -> usize {
    let slots = (768 * 1024u64).div_ceil(piece_size.max(1)).max(3) as usize;
    if downloaders >= 6 {
        slots
    } else {
        0
    }
}

/// Upload slots of a downloader (default mode): units worth about 256 KiB, at least 2.
///
/// Why a downloader needs them at all: served all at once, its relays fill one socket
/// buffer per neighbour, and its own `request`s to a neighbour queue behind the
/// pieces it is sending that neighbour. On a slow uplink that is seconds, the
/// requests arrive late and the downloader gets less than its share: with 5 and
/// 20 mbit downloaders (N = 8) the slow ones finished 11 s after the fast ones
/// (ratio 1.29). A few slots at full speed, with little unsent data per socket (see
/// `connection.rs`), keep most connections idle so requests leave at once: 1.135
/// (median of 3; aria2 1.53). On a fast link they are raised (`upload::slots_for_rate`).
/// Measured with 1, 2, 3 and 4 slots of 128 KiB (1.19, 1.14-1.16, 1.19, 1.22) and,
/// at N = 16, 2 and 4 slots of 64 KiB (1.16, 1.14). bench/RESULTS.md has the runs.
pub fn downloader_upload_slots(unit: u64) -> usize {
    (256 * 1024u64).div_ceil(unit.max(1)).max(2) as usize
}

#[cfg(test)]
mod tests {
    use super::{downloader_upload_slots, seeder_upload_slots};

    #[test]
    fn downloader_slots_hold_about_256_kib() {
        assert_eq!(downloader_upload_slots(64 * 1024), 4);
        assert_eq!(downloader_upload_slots(128 * 1024), 2);
        assert_eq!(downloader_upload_slots(256 * 1024), 2);
        assert_eq!(downloader_upload_slots(1 << 20), 2);
        assert_eq!(downloader_upload_slots(16 * 1024), 16);
    }

    #[test]
    fn seeder_slots_cover_about_768_kib_when_many_download() {
        assert_eq!(seeder_upload_slots(256 * 1024, 16), 3);
        assert_eq!(seeder_upload_slots(256 * 1024, 6), 3);
        assert_eq!(seeder_upload_slots(256 * 1024, 5), 0);
        assert_eq!(seeder_upload_slots(1 << 20, 8), 3);
        assert_eq!(seeder_upload_slots(64 * 1024, 16), 12);
        assert_eq!(seeder_upload_slots(64 * 1024, 5), 0);
        assert_eq!(seeder_upload_slots(16 * 1024, 100), 48);
        assert_eq!(seeder_upload_slots(0, 1), 0);
    }
}
