//! The swarm actor: the one owner of a peer's state (our pieces, every neighbour's
//! bitfield, interest, choking, outstanding requests) fed by a channel of events from
//! connection tasks, disk tasks and its own timers.
//!
//! Every SPEC A5 rule is applied here, in one task, so there are no locks and no
//! ordering races between, say, a choke and the piece read it cancels. Disk reads and
//! writes run on blocking threads and report back as events, so the actor never waits
//! on a socket or a disk.
//!
//! The actor counts in *units* (see `blocks.rs`): a unit is a piece, or with BLOCKS
//! a block of one. Bitfields, the picker, requests and uploads are per unit; pieces
//! appear only at the Part A edges: the `bitfield`, `have`, `request` and `piece`
//! messages (a plain neighbour trades whole pieces, i.e. all units of one) and the
//! event log.

use crate::bitfield::Bitfield;
use crate::blocks::{self, Cv, Layout};
use crate::choke::{Candidate, Choker, Decision};
use crate::config::Config;
use crate::connection::{FileRegion, Link, Outgoing};
use crate::eventlog::{Event as Log, EventLog};
use crate::handshake::Extensions;
use crate::manifest::Manifest;
use crate::message::Message;
use crate::picker::{self, Holder, Picker, Strategy};
use crate::storage::{Storage, StorageError};
use crate::upload::{UploadQueue, UploadRate, UploadSlot, Waiting};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Everything that reaches the actor.
#[derive(Debug)]
pub enum SwarmEvent {
    /// A connection finished its handshake.
    Connected {
        peer: u32,
        link: Link,
        extensions: Extensions,
        /// We connected (true) or accepted (false).
        initiated: bool,
    },
    Message {
        peer: u32,
        conn: u64,
        msg: Message,
    },
    /// The reader saw EOF (`reason: None`) or a protocol/I-O error.
    Closed {
        peer: u32,
        conn: u64,
        reason: Option<String>,
    },
    /// Units `units` of piece `piece` (all of them for a whole piece, one for a
    /// block) were verified and written, or not.
    Written {
        piece: u32,
        units: std::ops::Range<u32>,
        from: u32,
        result: Result<(), PieceError>,
    },
    /// The whole-file check after the last piece.
    FileChecked(Result<(), String>),
    /// Data read for a request: unit `index` when `block`, else the piece whose
    /// first unit is `index`. A block comes with its piece's chaining values when
    /// they had to be computed from the whole piece (the actor caches them).
    PieceRead {
        peer: u32,
        conn: u64,
        index: u32,
        block: bool,
        result: Result<ReadData, StorageError>,
        /// The upload slot the piece is sent under.
        slot: UploadSlot,
    },
    /// A connection's writer could not read piece data it was sending from the file.
    UploadFailed {
        error: StorageError,
    },
    /// A connector gave up on an earlier peer.
    ConnectFailed {
        peer: u32,
        reason: String,
    },
}

/// An upload request taken from the queue, with the slot it is sent under.
struct Upload {
    peer: u32,
    conn: u64,
    index: u32,
    block: bool,
    slot: UploadSlot,
}

/// Data read for an upload, and the chaining values computed to send it (if any).
pub type ReadData = (Bytes, Option<Arc<[Cv]>>);

/// Why a received piece was not stored.
#[derive(Debug)]
pub enum PieceError {
    /// Its hash differs from the manifest's (for a block: from its chaining value).
    Corrupt,
    Disk(StorageError),
}

/// A neighbour that sends this many corrupt pieces is dropped and not accepted again.
pub const MAX_CORRUPT: u32 = 3;

/// Tunables of the actor; `strict` = SPEC Part A to the letter.
#[derive(Clone, Debug)]
pub struct SwarmOptions {
    pub strict: bool,
    /// Outstanding requests per connection when both sides negotiated PIPELINE:
    /// this many, or at most this many when `adaptive_depth`.
    pub pipeline_depth: usize,
    /// Keep about a second of what each neighbour sends us asked of it
    /// ([`crate::pipeline::depth`]) instead of `pipeline_depth` everywhere.
    pub adaptive_depth: bool,
    /// Most piece bytes we queue for one neighbour before ignoring its requests.
    pub max_queued_bytes: u64,
    pub seed: u64,
    /// Give up (exit non-zero) after this long without progress while the swarm
    /// cannot finish: a peer of PeerInfo.cfg is gone or a missing piece has no holder.
    pub give_up_after: Duration,
    /// A neighbour that sends no requested piece for this long (plus the time a piece
    /// takes at 32 KiB/s) is stalled: its connection is closed and its requests go
    /// elsewhere.
    pub request_timeout: Duration,
    /// Pieces uploaded at once (0: no limit); see `upload.rs`.
    pub upload_slots: usize,
    /// `upload_slots` is a floor, raised with what we upload per second (a
    /// downloader's default; see [`crate::upload::slots_for_rate`]).
    pub slots_follow_rate: bool,
    /// Slots while warming up: until we have sent as many pieces as there are other
    /// peers (0: no warm-up).
    pub warmup_slots: usize,
    /// Testing only (hidden `--test-corrupt-uploads`): the fraction of uploaded pieces
    /// and blocks sent with one byte flipped, so tests can run a lying p2pshare peer.
    pub test_corrupt_uploads: f64,
}

/// A request waiting this long for an upload slot goes before rarer pieces.
const UPLOAD_MAX_WAIT: Duration = Duration::from_secs(3);

/// The same for a seeder (default mode). Its queue holds seconds of requests (every
/// downloader asks it for its share), so with 3 s nearly every request was overdue
/// and served by age, which defeats the order of `pump_uploads`. 10 s still comes
/// well before a requester gives up on us (`request_timeout`).
const SEEDER_MAX_WAIT: Duration = Duration::from_secs(10);

/// How a swarm run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every peer of PeerInfo.cfg has the whole file.
    AllComplete,
    Failed(String),
}

struct Neighbour {
    link: Link,
    bitfield: Bitfield,
    extensions: Extensions,
    seen_message: bool,
    am_interested: bool,
    peer_interested: bool,
    peer_choking: bool,
    /// Units requested from this neighbour and not yet arrived (every unit of a piece
    /// asked for with a Part A `request`).
    outstanding: Vec<u32>,
    /// Whole pieces asked of this seeder that we asked of a relay instead (see
    /// `reroute_from_seeders`): no longer ours to wait for, but still queued at the
    /// seeder until it sends them. Bounded, so that the seeder's queue for us stays
    /// within what it accepts (`max_queued_bytes`).
    forgotten: usize,
    /// BLOCKS negotiated: we trade blocks with it; otherwise whole pieces.
    blocks: bool,
    /// For a downloader: the lowest unit of its own share (see `share_floor`) it has
    /// not announced, advanced as it announces (its bitfield only grows). Kept
    /// rather than searched for: a search on every announcement cost time quadratic
    /// in the number of units.
    frontier: u32,
    /// Requests of theirs we are reading from disk.
    reading: u32,
    bytes_this_interval: u64,
    /// Bytes it sent us during the last whole unchoking interval.
    last_interval_bytes: u64,
    corrupt: u32,
    /// When it last announced a piece nobody else we know had (so it came from a
    /// seeder), and the smoothed gap between such pieces: tells whether a seeder is
    /// serving it now (see `Swarm::served`).
    last_fresh: Option<tokio::time::Instant>,
    fresh_gap: Option<Duration>,
    last_heard: tokio::time::Instant,
    connected_at: tokio::time::Instant,
    /// Units this neighbour sent us corrupt: fetched from someone else if possible.
    bad_pieces: Vec<u32>,
    /// Since when we have been waiting on this neighbour for a requested piece
    /// (`None` when nothing is outstanding).
    waiting_since: Option<tokio::time::Instant>,
    /// Smoothed time between its deliveries of requested units while we waited:
    /// what "late" means for this neighbour (see `picker::spare_due`).
    delivery_gap: Option<Duration>,
}

impl Neighbour {
    /// Forgets our requests for `units` and sends `cancel-block` for each (the
    /// caller checked that CANCEL was agreed).
    fn withdraw(&mut self, layout: &Layout, units: &[u32]) {
        self.outstanding.retain(|u| !units.contains(u));
        for &u in units {
            let (piece, block) = layout.split(u);
            let _ = self
                .link
                .tx
                .send(Message::CancelBlock { piece, block }.into());
        }
        if self.outstanding.is_empty() {
            self.waiting_since = None;
        }
    }
}

pub struct Swarm {
    me: u32,
    config: Config,
    opts: SwarmOptions,
    log: EventLog,
    storage: Arc<Storage>,
    /// Units per piece (one when BLOCKS is off).
    layout: Layout,
    /// Pieces whose every unit we hold: what Part A's `bitfield` and `have` announce.
    done_pieces: Bitfield,
    /// Chaining values of pieces we trade blocks of (checked against the manifest
    /// when there is one); bounded, recomputed from disk for a complete piece.
    cvs: HashMap<u32, Arc<[Cv]>>,
    picker: Picker,
    neighbours: BTreeMap<u32, Neighbour>,
    known_complete: HashSet<u32>,
    /// Units received and being written; they count as pending in the picker.
    writing: HashSet<u32>,
    /// Units we have started uploading at least once (upload order, see
    /// `pump_uploads`).
    sent: Bitfield,
    /// The seeder, when PeerInfo.cfg lists exactly one peer with the file.
    lone_seeder: Option<u32>,
    /// We started with the file and PeerInfo.cfg lists other peers that did.
    seeder_among_seeders: bool,
    /// A seeder's (default mode): per neighbour, the units we sent it first and that
    /// not every neighbour holds yet, i.e. what it still has to relay (see
    /// `pump_uploads`).
    fanout: Option<HashMap<u32, Vec<u32>>>,
    choker: Choker,
    rng: StdRng,
    events_tx: mpsc::Sender<SwarmEvent>,
    events: mpsc::Receiver<SwarmEvent>,
    /// Peers we gave up connecting to, so the run cannot finish.
    unreachable: Vec<String>,
    /// Asks the peer to connect again to an earlier-listed peer that dropped.
    reconnect: Box<dyn Fn(u32, Duration) + Send>,
    /// Consecutive connections to a peer that closed soon after opening: the delay
    /// before the next reconnect doubles with each (a peer that refuses us because
    /// it still holds our old connection must not see a tight loop).
    short_lived: HashMap<u32, u32>,
    last_progress: tokio::time::Instant,
    manifest: Option<Arc<Manifest>>,
    /// With a manifest: the finished file's digest was checked.
    file_checked: bool,
    /// Peers dropped for sending corrupt data; their new connections are refused.
    banned: HashSet<u32>,
    /// Downloaders (hasFile 0) in PeerInfo.cfg order: owners of the picker's shares
    /// (empty in strict mode).
    downloaders: Vec<u32>,
    /// The accept loop, stopped when we shut down so that no late connection is
    /// accepted (and logged) by a peer that is leaving.
    listener: Option<tokio::task::AbortHandle>,
    /// Accepted requests waiting for an upload slot.
    uploads: UploadQueue,
    /// Pieces we have started uploading (ends the warm-up).
    uploads_started: usize,
    upload_rate: UploadRate,
    slot_returns_tx: mpsc::UnboundedSender<()>,
    slot_returns: mpsc::UnboundedReceiver<()>,
}

impl Swarm {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: u32,
        config: Config,
        opts: SwarmOptions,
        log: EventLog,
        storage: Arc<Storage>,
        layout: Layout,
        have: Bitfield,
        events_tx: mpsc::Sender<SwarmEvent>,
        events: mpsc::Receiver<SwarmEvent>,
        reconnect: Box<dyn Fn(u32, Duration) + Send>,
        manifest: Option<Arc<Manifest>>,
    ) -> Swarm {
        let strategy = if opts.strict {
            Strategy::Random
        } else {
            Strategy::RarestFirst
        };
        let complete_at_start = have.is_complete();
        let seeding = complete_at_start && !opts.strict;
        let lone_seeder = {
            let mut listed = config.peers.peers.iter().filter(|p| p.has_file);
            match (listed.next(), listed.next()) {
                (Some(p), None) => Some(p.id),
                _ => None,
            }
        };
        let seeder_among_seeders =
            config.peers.get(me).is_some_and(|p| p.has_file) && lone_seeder.is_none();
        // `have` is per piece; the picker counts units.
        let mut units = Bitfield::new(layout.units());
        for p in have.iter_set() {
            for u in layout.units_of(p) {
                units.set(u);
            }
        }
        let done_pieces = have;
        let mut known_complete = HashSet::new();
        if complete_at_start {
            // Complete at start: the seed's own pieces were verified (when there is a
            // manifest) before we got here.
            known_complete.insert(me);
        }
        let mut picker = Picker::new(units, strategy);
        let downloaders = if !opts.strict {
            // Every peer knows the whole swarm from PeerInfo.cfg, so downloaders can
            // split the seeder's pieces among themselves without talking.
            let downloaders: Vec<u32> = config
                .peers
                .peers
                .iter()
                .filter(|p| !p.has_file)
                .map(|p| p.id)
                .collect();
            if let Some(slot) = downloaders.iter().position(|&id| id == me) {
                picker.set_partition(slot as u32, downloaders.len() as u32);
            }
            downloaders
        } else {
            Vec::new()
        };
        let (slot_returns_tx, slot_returns) = mpsc::unbounded_channel();
        Swarm {
            uploads: UploadQueue::new(
                if opts.warmup_slots > 0 {
                    opts.warmup_slots
                } else {
                    opts.upload_slots
                },
                if seeding {
                    SEEDER_MAX_WAIT
                } else {
                    UPLOAD_MAX_WAIT
                },
            ),
            uploads_started: 0,
            upload_rate: UploadRate::new(std::time::Instant::now()),
            slot_returns_tx,
            slot_returns,
            me,
            rng: StdRng::seed_from_u64(opts.seed),
            config,
            opts,
            log,
            storage,
            layout,
            done_pieces,
            cvs: HashMap::new(),
            picker,
            neighbours: BTreeMap::new(),
            known_complete,
            writing: HashSet::new(),
            sent: Bitfield::new(layout.units()),
            lone_seeder,
            seeder_among_seeders,
            fanout: seeding.then(HashMap::new),
            choker: Choker::default(),
            events_tx,
            events,
            unreachable: Vec::new(),
            reconnect,
            short_lived: HashMap::new(),
            last_progress: tokio::time::Instant::now(),
            file_checked: manifest.is_none() || complete_at_start,
            manifest,
            banned: HashSet::new(),
            downloaders,
            listener: None,
        }
    }

    /// Hands over the accept loop, so shutting down stops accepting first.
    pub fn set_listener(&mut self, listener: tokio::task::AbortHandle) {
        self.listener = Some(listener);
    }

    /// Runs until every peer has the file, then closes connections gracefully.
    pub async fn run(mut self) -> Outcome {
        let c = &self.config.common;
        let mut unchoke = tokio::time::interval(Duration::from_secs(c.unchoking_interval));
        let mut optimistic =
            tokio::time::interval(Duration::from_secs(c.optimistic_unchoking_interval));
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        // Who a seeder serves changes with every rechoke; a helper must notice an
        // owner the seeder dropped well within a second (see update_share_floors).
        let mut shares = tokio::time::interval(Duration::from_millis(250));
        let outcome = loop {
            if self.all_complete() {
                break Outcome::AllComplete;
            }
            if !self.unreachable.is_empty() {
                break Outcome::Failed(format!("cannot finish: {}", self.unreachable.join("; ")));
            }
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(ev) => {
                        if let Err(fatal) = self.handle(ev) {
                            break Outcome::Failed(fatal);
                        }
                    }
                    None => break Outcome::Failed("event channel closed".into()),
                },
                Some(()) = self.slot_returns.recv() => {
                    self.uploads.done();
                    self.pump_uploads();
                }
                _ = unchoke.tick() => self.rechoke(),
                _ = optimistic.tick() => self.rotate_optimistic(),
                _ = housekeeping.tick() => {
                    if let Some(why) = self.stalled() {
                        break Outcome::Failed(why);
                    }
                    self.drop_stalled();
                }
                _ = shares.tick() => {
                    self.update_share_floors();
                    self.offer_spares();
                }
            }
        };
        self.shutdown().await;
        outcome
    }

    fn all_complete(&self) -> bool {
        self.picker.have().is_complete()
            && self.file_checked
            && self
                .config
                .peers
                .peers
                .iter()
                .all(|p| self.known_complete.contains(&p.id))
    }

    /// For each downloader's share, from which piece up we may fetch it from a seeder
    /// (see [`Picker::pick_from_seeder`]): anything when its owner is not connected to
    /// us or no seeder is serving it (one that keeps it choked, say); otherwise only
    /// pieces a few requests above the owner's lowest missing one, so that helping
    /// never races the owner for the same piece. Also tells the picker which
    /// downloaders are fetching from a seeder now, to share helper positions among.
    fn update_share_floors(&mut self) {
        let floors = (0..self.downloaders.len())
            .map(|s| self.share_floor(s as u32))
            .collect();
        self.picker.set_share_floor(floors);
        let active = self
            .downloaders
            .iter()
            .map(|&id| id == self.me || self.served(id))
            .collect();
        self.picker.set_active(active);
        // A share whose owner went quiet or moved on may now be fetched from a seeder.
        let ids: Vec<u32> = self.neighbours.keys().copied().collect();
        for id in ids {
            self.fill_requests(id);
        }
    }

    /// Whether a seeder is serving downloader `id` now, judged by how recently it
    /// announced a piece nobody else had, against its usual gap between such pieces.
    fn served(&self, id: u32) -> bool {
        let Some(o) = self.neighbours.get(&id) else {
            return false;
        };
        if o.bitfield.is_complete() {
            return false;
        }
        // Without a measured gap: an owner gets about 1/D of the seeder's upload, so
        // its gap grows with D; judge it idle only after several such gaps.
        let of = self.downloaders.len() as u64;
        let slowest = Duration::from_millis(500 * of).max(Duration::from_secs(3));
        let recent = o.fresh_gap.map_or(slowest, |g| {
            (g * 6).clamp(Duration::from_millis(250), slowest)
        });
        o.last_fresh.is_some_and(|t| t.elapsed() < recent)
    }

    fn share_floor(&self, share: u32) -> u32 {
        let n = self.layout.units();
        let of = self.downloaders.len() as u32;
        let Some((&id, owner)) = self
            .downloaders
            .get(share as usize)
            .and_then(|id| self.neighbours.get_key_value(id))
        else {
            return 0;
        };
        if owner.bitfield.is_complete() {
            return n;
        }
        if !self.served(id) {
            return 0;
        }
        // The owner asks a seeder for its share in ascending order, at most
        // `2 * pipeline_depth` requests ahead of its lowest missing piece.
        let frontier = owner.frontier.max(share);
        let margin = 2 * self.opts.pipeline_depth.max(1) as u32 + 2;
        frontier.saturating_add(margin.saturating_mul(of)).min(n)
    }

    /// Closes connections that hold requested pieces without delivering them (a peer
    /// that stops mid-piece but keeps its socket open defeats every TCP timeout).
    fn drop_stalled(&mut self) {
        let piece_time = Duration::from_secs_f64(self.config.common.piece_size as f64 / 32768.0);
        let limit = self.opts.request_timeout + piece_time;
        let stalled: Vec<u32> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.waiting_since.is_some_and(|t| t.elapsed() > limit))
            .map(|(&id, _)| id)
            .collect();
        for id in stalled {
            tracing::warn!(
                "peer {id} delivered none of its requested pieces for {limit:?}; closing the connection"
            );
            self.drop_neighbour(id);
        }
    }

    /// `Some(reason)` when nothing progressed for `give_up_after` and the swarm cannot
    /// finish as things stand.
    fn stalled(&self) -> Option<String> {
        if self.last_progress.elapsed() < self.opts.give_up_after {
            return None;
        }
        let absent: Vec<String> = self
            .config
            .peers
            .peers
            .iter()
            .filter(|p| {
                p.id != self.me
                    && !self.known_complete.contains(&p.id)
                    && !self.neighbours.contains_key(&p.id)
            })
            .map(|p| p.id.to_string())
            .collect();
        let have = self.picker.have();
        let orphans = (0..have.len())
            .filter(|&u| !have.has(u) && !self.neighbours.values().any(|n| n.bitfield.has(u)))
            .map(|u| self.layout.piece_of(u))
            .collect::<HashSet<u32>>()
            .len();
        if absent.is_empty() && orphans == 0 {
            return None;
        }
        let mut why = format!(
            "no progress for {:?} and the swarm cannot finish:",
            self.opts.give_up_after
        );
        if !absent.is_empty() {
            why += &format!(
                " peers {} are not connected and not known to be complete;",
                absent.join(",")
            );
        }
        if orphans > 0 {
            why += &format!(" {orphans} pieces we lack are held by no connected peer;");
        }
        why += &format!(
            " we have {}/{} pieces",
            self.done_pieces.count(),
            self.done_pieces.len()
        );
        Some(why)
    }

    /// Stops sending, then reads until every neighbour closed (or a grace period
    /// passes) so that no byte a neighbour still sends is met with a reset.
    async fn shutdown(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        let mut open: HashSet<u64> = self.neighbours.values().map(|n| n.link.conn).collect();
        self.neighbours.clear();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !open.is_empty() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(SwarmEvent::Closed { conn, .. })) => {
                    open.remove(&conn);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if let Err(e) = self.storage.sync() {
            tracing::error!("{e}");
        }
    }

    fn handle(&mut self, ev: SwarmEvent) -> Result<(), String> {
        match ev {
            SwarmEvent::Connected {
                peer,
                link,
                extensions,
                initiated,
            } => self.on_connected(peer, link, extensions, initiated),
            SwarmEvent::Message { peer, conn, msg } => {
                match self.neighbours.get_mut(&peer) {
                    Some(n) if n.link.conn == conn => n.last_heard = tokio::time::Instant::now(),
                    _ => return Ok(()), // a connection we already dropped
                }
                if let Err(why) = self.on_message(peer, msg) {
                    tracing::warn!("closing connection to peer {peer}: {why}");
                    self.drop_neighbour(peer);
                }
            }
            SwarmEvent::Closed { peer, conn, reason } => {
                if self.neighbours.get(&peer).map(|n| n.link.conn) == Some(conn) {
                    match reason {
                        Some(r) => tracing::warn!("connection to peer {peer} failed: {r}"),
                        None => tracing::info!("peer {peer} closed the connection"),
                    }
                    self.drop_neighbour(peer);
                }
            }
            SwarmEvent::Written {
                piece,
                units,
                from,
                result,
            } => {
                let was_full = self.writing.len() >= self.max_writing();
                for u in units.clone() {
                    self.writing.remove(&u);
                }
                match result {
                    Ok(()) => self.on_stored(piece, units, from),
                    Err(PieceError::Disk(e)) => return Err(format!("disk error: {e}")),
                    Err(PieceError::Corrupt) => self.on_corrupt(piece, units, from),
                }
                if was_full {
                    let ids: Vec<u32> = self.neighbours.keys().copied().collect();
                    for id in ids {
                        self.fill_requests(id);
                    }
                }
            }
            SwarmEvent::FileChecked(result) => {
                result.map_err(|e| format!("whole-file check failed: {e}"))?;
                self.file_checked = true;
                tracing::info!("whole file matches the manifest's digest");
            }
            SwarmEvent::PieceRead {
                peer,
                conn,
                index,
                block,
                result,
                slot,
            } => {
                let (mut data, computed) = result.map_err(|e| format!("disk error: {e}"))?;
                if self.opts.test_corrupt_uploads > 0.0
                    && !data.is_empty()
                    && rand::Rng::gen_bool(&mut self.rng, self.opts.test_corrupt_uploads)
                {
                    let mut bad = data.to_vec();
                    bad[0] ^= 0xff;
                    data = Bytes::from(bad);
                    tracing::warn!("testing: corrupted unit {index} sent to peer {peer}");
                }
                let (piece, _) = self.layout.split(index);
                if let Some(c) = computed {
                    self.cache_cvs(piece, c);
                }
                let upload = Upload {
                    peer,
                    conn,
                    index,
                    block,
                    slot,
                };
                self.send_upload(upload, data, None);
            }
            SwarmEvent::UploadFailed { error } => return Err(format!("disk error: {error}")),
            SwarmEvent::ConnectFailed { peer, reason } => {
                if self.neighbours.contains_key(&peer) {
                    return Ok(()); // it connected to us meanwhile
                }
                if !self.known_complete.contains(&peer) {
                    self.unreachable.push(format!("peer {peer}: {reason}"));
                }
            }
        }
        Ok(())
    }

    fn on_corrupt(&mut self, piece: u32, units: std::ops::Range<u32>, from: u32) {
        for u in units.clone() {
            self.release(u);
        }
        let strikes = match self.neighbours.get_mut(&from) {
            Some(n) => {
                n.corrupt += 1;
                n.bad_pieces.extend(units.clone());
                n.corrupt
            }
            None => MAX_CORRUPT,
        };
        let what = if units.len() == 1 && self.layout.has_blocks() {
            format!(
                "block {} of piece {piece}",
                self.layout.split(units.start).1
            )
        } else {
            format!("piece {piece}")
        };
        tracing::warn!(
            "{what} from peer {from} does not match the manifest; discarded ({strikes} bad from it)"
        );
        if strikes >= MAX_CORRUPT {
            tracing::error!(
                "peer {from} sent {strikes} corrupt pieces: dropping it for the rest of the run"
            );
            self.banned.insert(from);
            self.drop_neighbour(from);
        } else {
            let ids: Vec<u32> = self.neighbours.keys().copied().collect();
            for id in ids {
                self.fill_requests(id);
            }
        }
    }

    fn on_connected(&mut self, peer: u32, link: Link, extensions: Extensions, initiated: bool) {
        if self.banned.contains(&peer) {
            tracing::warn!("refusing peer {peer}: it sent corrupt pieces earlier");
            return;
        }
        if let Some(old) = self.neighbours.get(&peer) {
            // SPEC A3 accepts only a peer "not yet connected". Default mode makes one
            // exception: a peer whose old connection has been silent for a while is
            // probably a restart after a crash we have not noticed yet (a host that
            // died without closing its sockets), so the new connection replaces it.
            let silent = old.last_heard.elapsed() >= Duration::from_secs(5);
            if self.opts.strict || !silent {
                tracing::warn!(
                    "rejected a second connection from peer {peer}: it is already connected"
                );
                return; // dropping `link` closes it
            }
            tracing::warn!("peer {peer} connected again; replacing its silent old connection");
            self.drop_neighbour(peer);
        }
        self.last_progress = tokio::time::Instant::now();
        self.log.write(&if initiated {
            Log::MakesConnection(peer)
        } else {
            Log::ConnectedFrom(peer)
        });
        if !extensions.is_none() {
            tracing::debug!("peer {peer}: extensions {:?}", extensions);
        }
        // Always send the bitfield, all zero if we have nothing (SPEC A5.1).
        let _ = link
            .tx
            .send(Message::Bitfield(Bytes::copy_from_slice(self.done_pieces.as_bytes())).into());
        let blocks = self.layout.has_blocks() && extensions.block_size().is_some();
        if blocks {
            // Blocks of pieces we hold only in part: Part A's bitfield cannot say.
            for u in self.picker.have().iter_set() {
                let (piece, block) = self.layout.split(u);
                if !self.done_pieces.has(piece) {
                    let _ = link.tx.send(Message::HaveBlock { piece, block }.into());
                }
            }
        }
        self.neighbours.insert(
            peer,
            Neighbour {
                link,
                bitfield: Bitfield::new(self.layout.units()),
                extensions,
                blocks,
                frontier: 0,
                seen_message: false,
                am_interested: false,
                peer_interested: false,
                peer_choking: true,
                outstanding: Vec::new(),
                forgotten: 0,
                reading: 0,
                bytes_this_interval: 0,
                last_interval_bytes: 0,
                corrupt: 0,
                last_fresh: None,
                fresh_gap: None,
                last_heard: tokio::time::Instant::now(),
                connected_at: tokio::time::Instant::now(),
                bad_pieces: Vec::new(),
                waiting_since: None,
                delivery_gap: None,
            },
        );
    }

    /// Starts serving waiting requests while upload slots are free.
    fn pump_uploads(&mut self) {
        let now = tokio::time::Instant::now().into_std();
        if self.opts.slots_follow_rate
            && self.uploads_started >= self.config.peers.peers.len().saturating_sub(1)
        {
            self.upload_rate.add(now, 0);
            let rate = self.upload_rate.rate();
            let slots = crate::upload::slots_for_rate(
                rate,
                u64::from(self.layout.block_size()),
                self.opts.upload_slots,
            );
            if slots != self.uploads.slots() {
                tracing::debug!(target: "p2pshare::slots", "upload slots {slots} (uploading {rate} B/s)");
                self.uploads.set_slots(slots);
            }
        }
        // A seeder serves first the downloaders with the least relaying left to do:
        // for each, the holders still missing the units we sent it first. The last
        // new units then go to relays that can pass them on at once instead of
        // queueing behind the ones they got before. Traced at 16 downloaders, FIFO
        // order gave one relay four of the last units, and it needed 1.5 s to pass
        // them to the 15 others; this order spread them one per relay.
        let mut loads: HashMap<u32, u64> = HashMap::new();
        let everyone = self.neighbours.len() as u32;
        if let Some(fanout) = &mut self.fanout {
            let picker = &self.picker;
            fanout.retain(|&peer, units| {
                units.retain(|&u| picker.availability(u) < everyone);
                let left = units
                    .iter()
                    .map(|&u| u64::from(everyone.saturating_sub(picker.availability(u))))
                    .sum();
                loads.insert(peer, left);
                !units.is_empty()
            });
        }
        loop {
            // Rarest first, and anything we have sent before after everything we
            // have not (see `upload.rs`): measured, a seeder's duplicates served by
            // age delayed the last new units of a 16-downloader swarm by 0.8 s.
            //
            // Not for a seeder listed with other seeders: their uploads together
            // exceed one copy's pace, our sends are not the swarm's only source, and
            // a repeat request kept waiting until we had nothing new left was what
            // the last downloaders waited for (3 seeders + 14 at 20 mbit, alternated
            // with bench/ab.sh: 25.27-25.66 s against 25.58-25.80 s; 2 + 7 a tie).
            let (picker, sent) = (&self.picker, &self.sent);
            let load = |peer: u32| loads.get(&peer).copied().unwrap_or(0);
            let repeats_last = !self.seeder_among_seeders;
            let Some(w) = self.uploads.next(
                now,
                |i| picker.availability(i),
                |i| repeats_last && sent.has(i),
                load,
            ) else {
                return;
            };
            let live = self
                .neighbours
                .get(&w.peer)
                .is_some_and(|n| n.link.conn == w.conn);
            if !live {
                self.uploads.done();
                continue;
            }
            // Warm-up: at the start every downloader is idle until its first piece
            // arrives. Sent to all at once (one flow each) the first pieces arrive
            // together, late, after a burst of losses as every flow starts up at
            // once; a few at a time at full speed, the first downloaders can relay
            // almost at once. Measured in bench/RESULTS.md.
            self.uploads_started += 1;
            if self.uploads_started == self.config.peers.peers.len().saturating_sub(1) {
                self.uploads.set_slots(self.opts.upload_slots);
            }
            let slot = UploadSlot::new(self.slot_returns_tx.clone());
            let storage = self.storage.clone();
            let tx = self.events_tx.clone();
            let layout = self.layout;
            let (piece, _) = layout.split(w.index);
            let bytes = if w.block {
                layout.unit_len(w.index) as u64
            } else {
                layout.piece_len(piece) as u64
            };
            self.upload_rate.add(now, bytes);
            if let Some(fanout) = &mut self.fanout {
                if !self.sent.has(w.index) {
                    fanout.entry(w.peer).or_default().push(w.index);
                    *loads.entry(w.peer).or_default() += u64::from(everyone);
                }
            }
            if w.block {
                self.sent.set(w.index);
            } else {
                for u in layout.units_of(piece) {
                    self.sent.set(u);
                }
            }
            // A block needs its piece's chaining values; without them cached (a piece
            // we hold whole), they are computed from the whole piece once. Only from a
            // whole piece: over a piece held in part they would be wrong and receivers
            // would blame us (a piece held in part has them cached from its blocks).
            let need_cvs = w.block
                && layout.blocks_in(piece) > 1
                && !self.cvs.contains_key(&piece)
                && self.done_pieces.has(piece);
            // Everything else goes from the file to the socket without passing
            // through our memory (`Storage::send_to`); a piece whose chaining values
            // must be computed is read anyway, and test corruption needs the bytes.
            if cfg!(target_os = "linux") && !need_cvs && self.opts.test_corrupt_uploads == 0.0 {
                let region = FileRegion {
                    storage,
                    offset: layout.unit_offset(w.index),
                    len: bytes as u32,
                };
                let upload = Upload {
                    peer: w.peer,
                    conn: w.conn,
                    index: w.index,
                    block: w.block,
                    slot,
                };
                self.send_upload(upload, Bytes::new(), Some(region));
                continue;
            }
            tokio::task::spawn_blocking(move || {
                let result = if !w.block {
                    storage.read_piece(piece).map(|d| (d, None))
                } else if need_cvs {
                    storage.read_piece(piece).map(|whole| {
                        let cvs: Arc<[Cv]> = blocks::piece_cvs(&whole, layout.block_size()).into();
                        let (off, len) = layout.unit_range_in_piece(w.index);
                        (whole.slice(off as usize..(off + len) as usize), Some(cvs))
                    })
                } else {
                    storage
                        .read_at(layout.unit_offset(w.index), layout.unit_len(w.index))
                        .map(|d| (d, None))
                };
                let _ = tx.blocking_send(SwarmEvent::PieceRead {
                    peer: w.peer,
                    conn: w.conn,
                    index: w.index,
                    block: w.block,
                    result,
                    slot,
                });
            });
        }
    }

    /// Queues the answer to an upload request on its connection: `data`, or when
    /// `region` is given, the file's bytes sent from the page cache by the writer.
    fn send_upload(&mut self, up: Upload, data: Bytes, region: Option<FileRegion>) {
        let (piece, b) = self.layout.split(up.index);
        let msg = if up.block {
            let cvs = self
                .cvs
                .get(&piece)
                .map(|c| Bytes::from(c.concat()))
                .unwrap_or_default();
            Message::Block {
                piece,
                block: b,
                cvs,
                data,
            }
        } else {
            Message::Piece { index: piece, data }
        };
        let choker = &self.choker;
        if let Some(n) = self.neighbours.get_mut(&up.peer) {
            if n.link.conn != up.conn {
                return;
            }
            n.reading = n.reading.saturating_sub(1);
            // A choke sent meanwhile cancels the answer (SPEC A5.4).
            if choker.is_unchoked(up.peer) {
                let len = region
                    .as_ref()
                    .map_or(msg.file_data().map_or(0, |d| d.len()), |r| r.len as usize);
                n.link.queued_bytes.fetch_add(len as u64, Ordering::Relaxed);
                let _ = n.link.tx.send(Outgoing {
                    msg,
                    slot: Some(up.slot),
                    region,
                });
            }
        }
    }

    /// Forgets the requests of `peer` still waiting for an upload slot (choked: SPEC
    /// A5.4 discards them; gone: nobody to send to).
    fn cancel_uploads(&mut self, peer: u32) {
        let cancelled = self.uploads.cancel(peer) as u32;
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.reading = n.reading.saturating_sub(cancelled);
        }
    }

    fn drop_neighbour(&mut self, peer: u32) {
        self.cancel_uploads(peer);
        if let Some(n) = self.neighbours.remove(&peer) {
            for i in n.outstanding {
                self.release(i);
            }
            self.picker.remove_peer(&n.bitfield);
            self.choker.remove(peer);
            // Pieces it held that nobody else asked for may now be wanted elsewhere.
            let ids: Vec<u32> = self.neighbours.keys().copied().collect();
            for id in ids {
                self.fill_requests(id);
            }
            // We connect to peers listed before us (SPEC A2); later ones reconnect to us.
            let earlier = self.config.peers.position(peer) < self.config.peers.position(self.me);
            let needed = !self.known_complete.contains(&peer) || !self.picker.have().is_complete();
            if earlier && needed {
                let attempts = self.short_lived.entry(peer).or_insert(0);
                if n.connected_at.elapsed() < Duration::from_secs(10) {
                    *attempts += 1;
                } else {
                    *attempts = 0;
                }
                let delay = Duration::from_millis(250 << (*attempts).min(6));
                (self.reconnect)(peer, delay);
            }
        }
    }

    /// A request to some neighbour will not be answered: make the piece requestable
    /// again unless another neighbour (endgame) or the disk still has it in hand.
    fn release(&mut self, i: u32) {
        let elsewhere = self.writing.contains(&i)
            || self.neighbours.values().any(|n| n.outstanding.contains(&i));
        if !elsewhere {
            self.picker.unmark_pending(i);
        }
    }

    fn pieces(&self) -> u32 {
        self.layout.pieces()
    }

    /// Remembers a piece's chaining values. Bounded: past the bound those of complete
    /// pieces are dropped (they can be recomputed from disk); partial pieces' stay,
    /// as they cannot be.
    fn cache_cvs(&mut self, piece: u32, cvs: Arc<[Cv]>) {
        const MAX_CACHED: usize = 1 << 16;
        if self.cvs.len() >= MAX_CACHED {
            let done = &self.done_pieces;
            self.cvs.retain(|p, _| !done.has(*p));
        }
        self.cvs.insert(piece, cvs);
    }

    /// Applies one message; an `Err` closes this connection only.
    fn on_message(&mut self, peer: u32, msg: Message) -> Result<(), String> {
        let pieces = self.pieces();
        let first = {
            let n = self.neighbour(peer)?;
            let first = !n.seen_message;
            n.seen_message = true;
            first
        };
        match msg {
            Message::Bitfield(bytes) => {
                if !first {
                    return Err("bitfield sent after other messages".into());
                }
                let bf = Bitfield::from_bytes(&bytes, pieces).map_err(|e| e.to_string())?;
                let mut units = Bitfield::new(self.layout.units());
                for p in bf.iter_set() {
                    for u in self.layout.units_of(p) {
                        units.set(u);
                    }
                }
                self.picker.add_peer(&units);
                if units.is_complete() {
                    self.known_complete.insert(peer);
                }
                let share = self.downloaders.iter().position(|&d| d == peer);
                let owns = self.downloaders.len() as u32;
                let n = self.neighbour(peer)?;
                n.bitfield = units;
                if let Some(share) = share {
                    advance_frontier(n, share as u32, owns);
                }
                self.update_interest(peer);
            }
            Message::Have(i) => {
                if i >= pieces {
                    return Err(format!("'have' for piece {i} of {pieces}"));
                }
                self.log.write(&Log::ReceivedHave {
                    from: peer,
                    piece: i,
                });
                self.announced(peer, self.layout.units_of(i))?;
            }
            Message::HaveBlock { piece, block } => {
                let u = self.block_unit(peer, piece, block)?;
                self.announced(peer, u..u + 1)?;
            }
            Message::Interested => {
                self.log.write(&Log::ReceivedInterested(peer));
                self.neighbour(peer)?.peer_interested = true;
                if !self.opts.strict {
                    let k = self.config.common.preferred_neighbors;
                    let d = self.choker.take_free_slot(peer, k);
                    self.apply(d);
                }
            }
            Message::NotInterested => {
                self.log.write(&Log::ReceivedNotInterested(peer));
                self.neighbour(peer)?.peer_interested = false;
            }
            Message::Choke => {
                self.log.write(&Log::ChokedBy(peer));
                let n = self.neighbour(peer)?;
                n.peer_choking = true;
                // Unanswered requests become requestable again, from anyone; the
                // choker forgets ours too (A5.4), the ones we forgot included.
                n.waiting_since = None;
                n.forgotten = 0;
                let lost = std::mem::take(&mut n.outstanding);
                for i in lost {
                    self.release(i);
                }
                let ids: Vec<u32> = self.neighbours.keys().copied().collect();
                for id in ids {
                    self.fill_requests(id);
                }
            }
            Message::Unchoke => {
                self.log.write(&Log::UnchokedBy(peer));
                self.neighbour(peer)?.peer_choking = false;
                self.fill_requests(peer);
            }
            Message::Request(i) => {
                if i >= pieces {
                    return Err(format!("request for piece {i} of {pieces}"));
                }
                if !self.done_pieces.has(i) {
                    return Err(format!("request for piece {i}, which we do not have"));
                }
                let first_unit = self.layout.units_of(i).start;
                self.accept_request(peer, first_unit, false)?;
            }
            Message::CancelBlock { piece, block } => {
                // The codec lets it through only where CANCEL was negotiated. A
                // request already being read or sent goes on (it may still be of use).
                let u = self.block_unit(peer, piece, block)?;
                if self.uploads.withdraw(peer, u) {
                    let n = self.neighbour(peer)?;
                    n.reading = n.reading.saturating_sub(1);
                }
            }
            Message::RequestBlock { piece, block } => {
                let u = self.block_unit(peer, piece, block)?;
                if !self.picker.have().has(u) {
                    return Err(format!(
                        "request for block {block} of piece {piece}, which we do not have"
                    ));
                }
                self.accept_request(peer, u, true)?;
            }
            Message::Piece { index, data } => {
                if index >= pieces {
                    return Err(format!("piece {index} of {pieces}"));
                }
                let want = self.layout.piece_len(index) as usize;
                if data.len() != want {
                    return Err(format!(
                        "piece {index} is {} bytes, expected {want}",
                        data.len()
                    ));
                }
                let units = self.layout.units_of(index);
                if self.receive(peer, units.clone(), data.len())? {
                    let manifest = self.manifest.clone();
                    self.store(peer, index, units, data, move |data| {
                        manifest.is_none_or(|m| m.verify(index, data))
                    });
                }
                self.fill_requests(peer);
            }
            Message::Block {
                piece,
                block,
                cvs,
                data,
            } => {
                let u = self.block_unit(peer, piece, block)?;
                let want = self.layout.unit_len(u) as usize;
                if data.len() != want {
                    return Err(format!(
                        "block {block} of piece {piece} is {} bytes, expected {want}",
                        data.len()
                    ));
                }
                if self.receive(peer, u..u + 1, data.len())? {
                    // The chaining values must merge to the manifest's hash of the
                    // piece (cheap: one merge per block) before the block's own hash
                    // is checked against its value, off this task.
                    let blocks_in = self.layout.blocks_in(piece);
                    let bs = self.layout.block_size();
                    let piece_len = self.layout.piece_len(piece) as u64;
                    let known: Option<Arc<[Cv]>> = if blocks_in == 1 {
                        None
                    } else if let Some(c) = self.cvs.get(&piece) {
                        Some(c.clone())
                    } else {
                        let parsed: Vec<Cv> = cvs
                            .chunks_exact(32)
                            .filter_map(|c| <[u8; 32]>::try_from(c).ok())
                            .collect();
                        let proven = parsed.len() == blocks_in as usize
                            && self.manifest.as_ref().is_none_or(|m| {
                                m.piece_hash(piece).is_some_and(|h| {
                                    blocks::root_of(&parsed, piece_len, bs) == Some(h)
                                })
                            });
                        proven.then(|| {
                            let c: Arc<[Cv]> = parsed.into();
                            self.cache_cvs(piece, c.clone());
                            c
                        })
                    };
                    let manifest = self.manifest.clone();
                    let offset = u64::from(self.layout.unit_range_in_piece(u).0);
                    self.store(peer, piece, u..u + 1, data, move |data| {
                        if blocks_in == 1 {
                            return manifest.is_none_or(|m| m.verify(piece, data));
                        }
                        if manifest.is_none() {
                            return true;
                        }
                        known.is_some_and(|c| {
                            c.get(block as usize) == Some(&blocks::block_cv(data, offset))
                        })
                    });
                }
                self.fill_requests(peer);
            }
        }
        Ok(())
    }

    /// The unit of a block a neighbour named, if it exists (and BLOCKS is on).
    fn block_unit(&self, peer: u32, piece: u32, block: u32) -> Result<u32, String> {
        if !self.neighbours.get(&peer).is_some_and(|n| n.blocks) {
            return Err("block message without BLOCKS".into());
        }
        self.layout
            .unit(piece, block)
            .ok_or_else(|| format!("block {block} of piece {piece} does not exist"))
    }

    /// A neighbour announced it holds `units` (a `have`, or a `have-block`).
    fn announced(&mut self, peer: u32, units: std::ops::Range<u32>) -> Result<(), String> {
        // A unit nobody else we know had came from a seeder: that is what tells us
        // a seeder serves this downloader now (see `served`). Units that helpers
        // fetched and relayed to an owner must not count: they kept an owner the
        // seeder had choked "active" for ever, so nobody fetched the bottom of its
        // share (seconds of stall in the demo swarm).
        let owns = self.downloaders.len() as u32;
        let slot = self.downloaders.iter().position(|&d| d == peer);
        // Only units it had not announced yet (a `have` may follow `have-block`s).
        let new: Vec<u32> = {
            let n = self.neighbour(peer)?;
            units.clone().filter(|&u| !n.bitfield.has(u)).collect()
        };
        // Complete neighbours are counted only for a unit we lack, the one case
        // where the answer matters (this runs for every `have`).
        let fresh = slot.is_some()
            && new.iter().any(|&u| {
                !self.picker.have().has(u)
                    && self.picker.availability(u)
                        <= self
                            .neighbours
                            .values()
                            .filter(|o| o.bitfield.is_complete())
                            .count() as u32
            });
        let n = self.neighbour(peer)?;
        if fresh {
            let now = tokio::time::Instant::now();
            if let Some(last) = n.last_fresh {
                let gap = now - last;
                n.fresh_gap = Some(n.fresh_gap.map_or(gap, |g| (g * 4 + gap) / 5));
            }
            n.last_fresh = Some(now);
        }
        for &u in &new {
            n.bitfield.set(u);
        }
        if let Some(share) = slot {
            advance_frontier(n, share as u32, owns);
        }
        let complete = n.bitfield.is_complete();
        if !new.is_empty() {
            for &u in &new {
                self.picker.peer_has(u);
            }
            if complete {
                self.known_complete.insert(peer);
            }
            self.last_progress = tokio::time::Instant::now();
        }
        if let Some(share) = slot.map(|s| s as u32) {
            if fresh {
                self.picker.set_active_of(share, true);
            }
            if fresh || new.iter().any(|&u| u % owns == share) {
                let floor = self.share_floor(share);
                self.picker.set_share_floor_of(share, floor);
            }
        }
        // Their bitfield only grew: interest can only begin, and only if we lack one of
        // the new units (our own gains update it in `on_stored`). Saves a scan of the
        // whole bitfield per `have`.
        let was_interested = self.neighbours.get(&peer).is_some_and(|n| n.am_interested);
        if !was_interested && new.iter().any(|&u| !self.picker.have().has(u)) {
            self.update_interest(peer);
        }
        self.reroute_from_seeders(peer, &new);
        // Only a unit we still need changes what we can ask of it: every other change
        // (a request answered or given up, the disk catching up) refills on its own.
        // In the endgame every missing unit is pending, and whether a spare is due
        // changes with time, so there it is asked again on every announcement.
        // Why skip: with 16 KiB pieces a peer hears thousands of `have`s a second,
        // mostly of pieces it already has, and each refill scanned the bitfield.
        let have = self.picker.have();
        let wanted = new
            .iter()
            .any(|&u| !have.has(u) && !self.picker.is_pending(u));
        if wanted || (!have.is_complete() && self.picker.unrequested_missing() == 0) {
            self.fill_requests(peer);
        }
        Ok(())
    }

    /// `peer`, a downloader that unchokes us, just announced `units`: those we are
    /// still waiting for from a seeder are asked of it instead, and withdrawn from the
    /// seeder with `cancel-block` (CANCEL negotiated).
    ///
    /// Why: two downloaders sometimes ask a seeder for the same block (helpers of a
    /// share cannot see each other's requests). The seeder sends what it never sent
    /// first, so the second request waits until nothing new is left: traced at 16
    /// downloaders, 52 blocks came from the seeder at the end of the run, 6-7 s
    /// after they were asked for, when 14-15 downloaders already held them. Their
    /// requesters finished last, and the seeder spent a second of its upload -- the
    /// swarm's bottleneck -- on them while new blocks waited.
    ///
    /// With whole pieces (pieces no larger than a block) there is no `cancel-block`:
    /// the unit is asked of `peer` instead and the seeder's request is only forgotten
    /// here, so that it stops holding one of our places in the seeder's pipeline (kept
    /// there, they starved the seeder of new requests at the end). Its copy still
    /// comes, when the seeder has nothing new left to send, and is dropped as a
    /// duplicate; but we no longer wait for it. Traced with 16 KiB
    /// pieces at N = 8: a downloader got its last 25 pieces from the seeder in the
    /// run's last second, 6-8 s after asking and after all 7 others held them, and
    /// finished 1.2 s after the seeder's last new piece.
    fn reroute_from_seeders(&mut self, peer: u32, units: &[u32]) {
        // Only with one seeder, whose upload is the swarm's bottleneck. With two, the
        // seeders have upload to spare and the relays are the bottleneck: moving
        // requests onto relays made N = 8 with 2 seeders slower (1.163 against 1.123
        // of the bound, bench/RESULTS.md).
        let Some(seeder) = self.lone_seeder else {
            return;
        };
        if self.opts.strict || seeder == peer {
            return;
        }
        let waiting = |u: &u32| !self.picker.have().has(*u) && !self.writing.contains(u);
        let whole = !self.layout.has_blocks();
        // Forgotten requests stay queued at the seeder beside the 2 x depth we keep
        // there; with one more they must fit what it accepts from us (`accept_request`,
        // the same bound on both sides by default), or it would ignore new ones. A
        // tighter bound, 2 x depth, made 16 KiB pieces slower again in one A/B
        // (1.134-1.152 against 1.097-1.112): that many were often waiting there.
        let kept = 2 * self.opts.pipeline_depth.max(1);
        let room =
            (self.opts.max_queued_bytes / u64::from(self.config.common.piece_size).max(1)) as usize;
        let most_forgotten = room.saturating_sub(kept + 1);
        let moving: Vec<u32> = match self.neighbours.get(&seeder) {
            Some(n) if n.blocks && n.extensions.contains(Extensions::CANCEL) => units
                .iter()
                .copied()
                .filter(|u| n.outstanding.contains(u) && waiting(u))
                .collect(),
            Some(n) if whole && n.extensions.contains(Extensions::PIPELINE) => units
                .iter()
                .copied()
                .filter(|u| n.outstanding.contains(u) && waiting(u))
                .take(most_forgotten.saturating_sub(n.forgotten))
                .collect(),
            _ => return,
        };
        if moving.is_empty() {
            return;
        }
        // Only to a downloader that has been sending us at least the average of our
        // downloaders: moved to a slow uplink (5 of 20 mbit), a request waited longer
        // there than at the seeder (bench/RESULTS.md). A faster holder's announcement
        // comes soon enough.
        let (sum, count) = self
            .neighbours
            .iter()
            .filter(|(&id, n)| id != seeder && n.blocks && !n.peer_choking)
            .fold((0u64, 0u64), |(s, c), (_, n)| {
                (s + n.last_interval_bytes, c + 1)
            });
        let fair = sum / count.max(1);
        let relay = self.neighbours.get(&peer).is_some_and(|n| {
            (n.blocks || (whole && n.extensions.contains(Extensions::PIPELINE)))
                && !n.peer_choking
                && n.last_interval_bytes >= fair
        });
        if !relay {
            return;
        }
        for &u in &moving {
            if let Some(n) = self.neighbours.get_mut(&seeder) {
                if whole {
                    n.outstanding.retain(|&o| o != u);
                    n.forgotten += 1;
                    if n.outstanding.is_empty() {
                        n.waiting_since = None;
                    }
                } else {
                    n.withdraw(&self.layout, &[u]);
                }
            }
            tracing::trace!("request {u} moved from {seeder} to {peer}");
            if let Some(r) = self.neighbours.get_mut(&peer) {
                r.outstanding.push(u);
                let _ = r
                    .link
                    .tx
                    .send(unit_request(&self.layout, r.blocks, u).into());
                r.waiting_since
                    .get_or_insert_with(tokio::time::Instant::now);
            }
        }
        self.fill_requests(seeder);
    }

    /// Queues an upload of unit `index` (`block`) or of the piece starting there.
    fn accept_request(&mut self, peer: u32, index: u32, block: bool) -> Result<(), String> {
        if !self.choker.is_unchoked(peer) {
            tracing::debug!("peer {peer} requested unit {index} while choked; ignored");
            return Ok(());
        }
        let limit = self.opts.max_queued_bytes;
        let size = if block {
            self.layout.block_size()
        } else {
            self.config.common.piece_size
        } as u64;
        let n = self.neighbour(peer)?;
        let queued = n.link.queued_bytes.load(Ordering::Relaxed);
        if queued + (n.reading as u64 + 1) * size > limit {
            tracing::warn!("peer {peer} has too many requests queued; ignoring unit {index}");
            return Ok(());
        }
        n.reading += 1;
        let conn = n.link.conn;
        self.uploads.push(Waiting {
            peer,
            conn,
            index,
            block,
            since: tokio::time::Instant::now().into_std(),
        });
        self.pump_uploads();
        Ok(())
    }

    /// Book-keeping for arriving data of `units`; `Ok(true)` when it should be
    /// verified and stored.
    fn receive(
        &mut self,
        peer: u32,
        units: std::ops::Range<u32>,
        len: usize,
    ) -> Result<bool, String> {
        let max_writing = self.max_writing();
        let writing_full = self.writing.len() >= max_writing;
        let n = self.neighbour(peer)?;
        let before = n.outstanding.len();
        n.outstanding.retain(|u| !units.contains(u));
        let was_requested = n.outstanding.len() < before;
        if !was_requested {
            n.forgotten = n.forgotten.saturating_sub(1);
        }
        if let (true, Some(t)) = (was_requested, n.waiting_since) {
            let sample = t.elapsed();
            n.delivery_gap = Some(n.delivery_gap.map_or(sample, |g| (g * 3 + sample) / 4));
        }
        n.bytes_this_interval += len as u64;
        n.waiting_since = (!n.outstanding.is_empty()).then(tokio::time::Instant::now);
        let have = self.picker.have();
        if units
            .clone()
            .all(|u| have.has(u) || self.writing.contains(&u))
        {
            tracing::debug!("peer {peer} sent units {units:?}, which we already have");
            return Ok(false);
        }
        if !was_requested && writing_full {
            // Unrequested data must not grow the disk queue without bound.
            tracing::debug!("dropping unrequested units {units:?} from peer {peer}");
            return Ok(false);
        }
        if !was_requested {
            // Requested from someone else after a choke; this copy wins and the
            // other request is cancelled where CANCEL was agreed, else left to
            // arrive as a duplicate.
            tracing::debug!("units {units:?} arrived from {peer} unrequested");
        }
        for u in units.clone() {
            self.picker.mark_pending(u);
            self.writing.insert(u);
        }
        self.cancel_elsewhere(peer, units);
        Ok(true)
    }

    /// Withdraws the other requests for `units`, which `from` has just delivered
    /// (endgame spares, requests moved after a choke), from neighbours that
    /// negotiated CANCEL, and lets those connections ask for something else. A copy
    /// still coming would cost its sender's upload, which the rest of the swarm
    /// needs most at the end, when the endgame runs.
    fn cancel_elsewhere(&mut self, from: u32, units: std::ops::Range<u32>) {
        let mut freed = Vec::new();
        for (&id, n) in self.neighbours.iter_mut() {
            if id == from || !n.blocks || !n.extensions.contains(Extensions::CANCEL) {
                continue;
            }
            let withdrawn: Vec<u32> = n
                .outstanding
                .iter()
                .copied()
                .filter(|u| units.contains(u))
                .collect();
            if withdrawn.is_empty() {
                continue;
            }
            n.withdraw(&self.layout, &withdrawn);
            freed.push(id);
        }
        for id in freed {
            tracing::debug!("cancelled {units:?} at {id}: arrived from {from}");
            self.fill_requests(id);
        }
    }

    /// Verifies (`check`, off this task: a bad copy never touches the file) and
    /// writes `units` of `piece`, reporting [`SwarmEvent::Written`].
    fn store(
        &self,
        from: u32,
        piece: u32,
        units: std::ops::Range<u32>,
        data: Bytes,
        check: impl FnOnce(&[u8]) -> bool + Send + 'static,
    ) {
        let storage = self.storage.clone();
        let tx = self.events_tx.clone();
        let offset = self.layout.unit_offset(units.start);
        tokio::task::spawn_blocking(move || {
            let result = if !check(&data) {
                Err(PieceError::Corrupt)
            } else {
                storage.write_at(offset, &data).map_err(PieceError::Disk)
            };
            let _ = tx.blocking_send(SwarmEvent::Written {
                piece,
                units,
                from,
                result,
            });
        });
    }

    fn neighbour(&mut self, peer: u32) -> Result<&mut Neighbour, String> {
        self.neighbours
            .get_mut(&peer)
            .ok_or_else(|| format!("peer {peer} is not connected"))
    }

    fn on_stored(&mut self, piece: u32, units: std::ops::Range<u32>, from: u32) {
        let new: Vec<u32> = units.filter(|&u| self.picker.complete(u)).collect();
        if new.is_empty() {
            return;
        }
        self.last_progress = tokio::time::Instant::now();
        tracing::trace!("stored {new:?} of piece {piece} from {from}");
        let whole = self
            .layout
            .units_of(piece)
            .all(|u| self.picker.have().has(u));
        let ids: Vec<u32> = self.neighbours.keys().copied().collect();
        if whole && self.done_pieces.set(piece) {
            let count = self.done_pieces.count();
            self.log.write(&Log::Downloaded { piece, from, count });
            for &id in &ids {
                if let Some(n) = self.neighbours.get(&id) {
                    let _ = n.link.tx.send(Message::Have(piece).into());
                }
            }
        } else if !whole {
            // Blocks travel on at once to neighbours that trade blocks and lack
            // them (every announcement is a packet of its own); the others hear of
            // the piece when it is whole.
            for n in self.neighbours.values().filter(|n| n.blocks) {
                for &u in new.iter().filter(|&&u| !n.bitfield.has(u)) {
                    let (piece, block) = self.layout.split(u);
                    let _ = n.link.tx.send(Message::HaveBlock { piece, block }.into());
                }
            }
        }
        for &id in &ids {
            self.update_interest(id);
        }
        if self.picker.have().is_complete() {
            self.log.write(&Log::Complete);
            self.known_complete.insert(self.me);
            tracing::info!(
                "downloaded the complete file: {}",
                self.storage.path().display()
            );
            let expected = self.manifest.as_ref().map(|m| m.file_hash);
            let check = |storage: Arc<Storage>, tx: mpsc::Sender<SwarmEvent>| {
                move || {
                    let result = storage.check_whole_file(expected.as_ref());
                    let _ = tx.blocking_send(SwarmEvent::FileChecked(result));
                }
            };
            // The check re-reads the whole file while our neighbours still need our
            // upload: on its own thread at idle priority it takes only CPU that the
            // relaying (and anything else on the host) leaves over.
            let job = check(self.storage.clone(), self.events_tx.clone());
            let spawned = std::thread::Builder::new()
                .name("p2p-filecheck".into())
                .spawn(move || {
                    lower_this_thread_priority();
                    job()
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a thread for the whole-file check ({e})");
                tokio::task::spawn_blocking(check(self.storage.clone(), self.events_tx.clone()));
            }
        }
    }

    /// Sends `interested` / `not interested` when our view of `peer` changes (A5.2).
    fn update_interest(&mut self, peer: u32) {
        let have = self.picker.have();
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        let want = have.lacks_any_of(&n.bitfield);
        if want != n.am_interested {
            n.am_interested = want;
            let _ = n.link.tx.send(
                if want {
                    Message::Interested
                } else {
                    Message::NotInterested
                }
                .into(),
            );
        }
    }

    /// Issues requests to `peer` up to the connection's depth (1 unless negotiated).
    fn fill_requests(&mut self, peer: u32) {
        let seeder = self.config.peers.get(peer).is_some_and(|p| p.has_file);
        // Back-pressure from the disk: a piece leaves `outstanding` when it arrives,
        // not when it is stored, so without this bound a network faster than hashing
        // and writing queues pieces in memory without limit.
        if self.writing.len() >= self.max_writing() {
            return;
        }
        // Pieces this neighbour sent corrupt are hidden from the picker while another
        // connected neighbour has them, so the retry goes to someone else.
        let hidden: Vec<u32> = match self.neighbours.get(&peer) {
            Some(n) => n
                .bad_pieces
                .iter()
                .copied()
                .filter(|&i| {
                    !self.picker.is_pending(i)
                        && self
                            .neighbours
                            .iter()
                            .any(|(&id, o)| id != peer && o.bitfield.has(i))
                })
                .collect(),
            None => return,
        };
        for &i in &hidden {
            self.picker.mark_pending(i);
        }
        self.request_more(peer, seeder, &hidden);
        for i in hidden {
            self.picker.unmark_pending(i);
        }
    }

    fn request_more(&mut self, peer: u32, seeder: bool, hidden: &[u32]) {
        // Units we can get from a downloader that unchokes us now: not asked of a
        // seeder. One that chokes us does not count (small k: waiting for it to
        // unchoke us stalled a loopback swarm for seconds).
        let mut elsewhere = Vec::new();
        let mut complete = 0;
        if seeder {
            elsewhere = vec![0u8; self.layout.units().div_ceil(8) as usize];
            for (&id, o) in &self.neighbours {
                if o.bitfield.is_complete() {
                    complete += 1;
                } else if id != peer && !o.peer_choking {
                    for (e, b) in elsewhere.iter_mut().zip(o.bitfield.as_bytes()) {
                        *e |= b;
                    }
                }
            }
        }
        // A neighbour without BLOCKS sends whole pieces: offer the picker only the
        // units of pieces none of whose units we hold or asked for.
        let whole =
            self.layout.has_blocks() && !self.neighbours.get(&peer).is_some_and(|n| n.blocks);
        let masked = whole.then(|| self.whole_pieces_of(peer));
        // Endgame: who each outstanding unit is asked of, for `picker::spare_due`.
        let endgame =
            !self.opts.strict && !seeder && !whole && self.picker.unrequested_missing() == 0;
        let holders = if endgame {
            self.holders()
        } else {
            HashMap::new()
        };
        let layout = self.layout;
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        if n.peer_choking {
            return;
        }
        let theirs = masked.as_ref().unwrap_or(&n.bitfield);
        let depth = if n.extensions.contains(Extensions::PIPELINE) {
            // Twice as deep towards a lone seeder: only our own share is asked of it,
            // so depth costs no duplicates there, and at the end of a run its flow to
            // us must fill its whole upload alone. Not when several are listed: each
            // then holds our requests from every downloader at twice the depth, and
            // the last ones waited 1-2 s in those queues (3 seeders + 14, alternated
            // with bench/ab.sh: 24.79 s three times against 25.27-25.92 s; 2 + 7 with
            // 1 MiB pieces: 22.94-23.26 s against 23.75-23.76 s). `pipeline_depth`
            // counts units; whole pieces are asked for as many bytes' worth.
            let doubled = seeder && self.lone_seeder.is_some();
            let per = if self.opts.adaptive_depth {
                let rate = n.last_interval_bytes / self.config.common.unchoking_interval.max(1);
                crate::pipeline::depth(
                    self.opts.pipeline_depth,
                    rate,
                    u64::from(layout.block_size()),
                )
            } else {
                self.opts.pipeline_depth.max(1)
            };
            let units = per * if doubled { 2 } else { 1 };
            if whole {
                (units / layout.units_of(0).len()).max(1)
            } else {
                units
            }
        } else {
            1
        };
        let requests = |o: &[u32]| {
            if whole {
                o.iter()
                    .map(|&u| layout.piece_of(u))
                    .collect::<HashSet<u32>>()
                    .len()
            } else {
                o.len()
            }
        };
        while requests(&n.outstanding) < depth {
            let choice = if seeder {
                self.picker
                    .pick_from_seeder(theirs, &elsewhere, complete, &mut self.rng)
            } else {
                self.picker.pick(theirs, &mut self.rng)
            };
            let Some(u) = choice else {
                break;
            };
            tracing::trace!("request {u} from {peer}");
            if whole {
                let piece = layout.piece_of(u);
                for v in layout.units_of(piece) {
                    self.picker.mark_pending(v);
                    n.outstanding.push(v);
                }
                let _ = n.link.tx.send(Message::Request(piece).into());
            } else {
                self.picker.mark_pending(u);
                n.outstanding.push(u);
                let _ = n.link.tx.send(unit_request(&layout, n.blocks, u).into());
            }
        }
        if !n.outstanding.is_empty() && n.waiting_since.is_none() {
            n.waiting_since = Some(tokio::time::Instant::now());
        }
        // Endgame (default mode): every missing unit is requested somewhere and this
        // connection is idle, so ask it for one whose holder is late rather than wait
        // on it (`picker::spare_due`: one spare per unit at most). The first copy to
        // arrive cancels the other (`cancel_elsewhere`); a copy already on its way is
        // dropped on arrival.
        // Never from a peer listed with the file: its upload is the swarm's bottleneck.
        if endgame && n.outstanding.is_empty() {
            let writing = &self.writing;
            if let Some(u) = self.picker.pick_endgame(
                &n.bitfield,
                |i| {
                    writing.contains(&i)
                        || hidden.contains(&i)
                        || !picker::spare_due(holders.get(&i).map_or(&[], Vec::as_slice))
                },
                &mut self.rng,
            ) {
                n.outstanding.push(u);
                let _ = n.link.tx.send(unit_request(&layout, n.blocks, u).into());
                n.waiting_since
                    .get_or_insert_with(tokio::time::Instant::now);
            }
        }
    }

    /// Endgame: a holder becomes late while the connections that could ask for a
    /// spare sit idle, with nothing arriving to wake them; give them the chance.
    fn offer_spares(&mut self) {
        if self.opts.strict
            || self.picker.have().is_complete()
            || self.picker.unrequested_missing() != 0
        {
            return;
        }
        let idle: Vec<u32> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.outstanding.is_empty() && !n.peer_choking)
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            self.fill_requests(id);
        }
    }

    /// The neighbours each outstanding unit is asked of, as the endgame sees them.
    fn holders(&self) -> HashMap<u32, Vec<Holder>> {
        let mut out: HashMap<u32, Vec<Holder>> = HashMap::new();
        for n in self.neighbours.values() {
            let holder = Holder {
                waited: n.waiting_since.map_or(Duration::ZERO, |t| t.elapsed()),
                gap: n.delivery_gap,
            };
            for &u in &n.outstanding {
                out.entry(u).or_default().push(holder);
            }
        }
        out
    }

    /// The units of `peer`'s bitfield that belong to pieces we lack some unit of and
    /// have asked nobody for any unit of: what may be asked of it with a whole-piece
    /// request. Units of the piece we already hold come again (and are rewritten with
    /// the same verified bytes): without that, a piece we hold in part could never be
    /// completed from a peer that trades whole pieces (found by
    /// `tests/swarm.rs::blocks_whole_pieces_and_strict_peers_mix`, which deadlocked).
    fn whole_pieces_of(&self, peer: u32) -> Bitfield {
        let mut out = Bitfield::new(self.layout.units());
        let Some(n) = self.neighbours.get(&peer) else {
            return out;
        };
        let have = self.picker.have();
        for p in 0..self.layout.pieces() {
            let units = self.layout.units_of(p);
            if n.bitfield.has(units.start)
                && units.clone().any(|u| !have.has(u))
                && units.clone().all(|u| !self.picker.is_pending(u))
            {
                for u in units {
                    out.set(u);
                }
            }
        }
        out
    }

    /// Units received and not yet stored that we allow before asking for more:
    /// about 16 MiB, at least 4 pieces' worth.
    fn max_writing(&self) -> usize {
        let unit = self.layout.block_size() as usize;
        ((16 << 20) / unit).max(4 * self.layout.units_of(0).len())
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.neighbours
            .iter()
            .map(|(&id, n)| Candidate {
                id,
                interested: n.peer_interested,
                rate: n.bytes_this_interval,
            })
            .collect()
    }

    fn rechoke(&mut self) {
        let cands = self.candidates();
        let k = self.config.common.preferred_neighbors;
        let complete = self.picker.have().is_complete();
        let d = self.choker.rechoke(&cands, k, complete, &mut self.rng);
        for n in self.neighbours.values_mut() {
            n.last_interval_bytes = std::mem::take(&mut n.bytes_this_interval);
        }
        self.apply(d);
    }

    fn rotate_optimistic(&mut self) {
        let cands = self.candidates();
        let d = self.choker.rotate_optimistic(&cands, &mut self.rng);
        self.apply(d);
    }

    fn apply(&mut self, d: Decision) {
        if let Some(list) = &d.preferred_changed {
            if !list.is_empty() {
                self.log.write(&Log::PreferredNeighbors(list.clone()));
            }
        }
        if let Some(id) = d.optimistic_changed {
            self.log.write(&Log::OptimisticNeighbor(id));
        }
        for id in d.choke {
            self.cancel_uploads(id);
            if let Some(n) = self.neighbours.get(&id) {
                let _ = n.link.tx.send(Message::Choke.into());
            }
        }
        for id in d.unchoke {
            if let Some(n) = self.neighbours.get(&id) {
                let _ = n.link.tx.send(Message::Unchoke.into());
            }
        }
    }
}

/// The request for unit `u`: a block, or (blocks off) the piece it is.
fn unit_request(layout: &Layout, blocks: bool, u: u32) -> Message {
    if blocks {
        let (piece, block) = layout.split(u);
        Message::RequestBlock { piece, block }
    } else {
        Message::Request(layout.piece_of(u))
    }
}

/// Moves a downloader's `frontier` past the units of its share (`share`, `share +
/// of`, ...) that it has announced.
fn advance_frontier(n: &mut Neighbour, share: u32, of: u32) {
    let units = n.bitfield.len();
    let mut f = n.frontier.max(share);
    while f < units && n.bitfield.has(f) {
        f += of.max(1);
    }
    n.frontier = f;
}

/// Puts the calling thread in `SCHED_IDLE` (Linux): it gets the smallest share of a
/// busy CPU (not none, so it still finishes, slowly, on a host kept saturated; the
/// peer's exit waits for it). Elsewhere, or if refused, it keeps its priority.
fn lower_this_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter.
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if r != 0 {
            tracing::debug!("SCHED_IDLE refused: {}", std::io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn the_whole_file_check_thread_runs_at_idle_priority() {
        let policy = std::thread::spawn(|| {
            super::lower_this_thread_priority();
            // SAFETY: plain syscall on the calling thread.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        // Only that thread: the caller's policy is untouched.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
