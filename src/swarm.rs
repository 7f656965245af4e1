//! The swarm actor: the one owner of a peer's state (our pieces, every neighbour's
//! bitfield, interest, choking, outstanding requests) fed by a channel of events from
//! connection tasks, disk tasks and its own timers.
//!
//! Every SPEC A5 rule is applied here, in one task, so there are no locks and no
//! ordering races between, say, a choke and the piece read it cancels. Disk reads and
//! writes run on blocking threads and report back as events, so the actor never waits
//! on a socket or a disk.

use crate::bitfield::Bitfield;
use crate::choke::{Candidate, Choker, Decision};
use crate::config::Config;
use crate::connection::{Link, Outgoing};
use crate::eventlog::{Event as Log, EventLog};
use crate::handshake::Extensions;
use crate::manifest::Manifest;
use crate::message::Message;
use crate::picker::{Picker, Strategy};
use crate::storage::{Storage, StorageError};
use crate::upload::{UploadQueue, UploadSlot, Waiting};
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
    PieceWritten {
        index: u32,
        from: u32,
        result: Result<(), PieceError>,
    },
    /// The whole-file check after the last piece.
    FileChecked(Result<(), String>),
    PieceRead {
        peer: u32,
        conn: u64,
        index: u32,
        result: Result<Bytes, StorageError>,
        /// The upload slot the piece is sent under.
        slot: UploadSlot,
    },
    /// A connector gave up on an earlier peer.
    ConnectFailed {
        peer: u32,
        reason: String,
    },
}

/// Why a received piece was not stored.
#[derive(Debug)]
pub enum PieceError {
    /// Its hash differs from the manifest's.
    Corrupt,
    Disk(StorageError),
}

/// A neighbour that sends this many corrupt pieces is dropped and not accepted again.
pub const MAX_CORRUPT: u32 = 3;

/// Tunables of the actor; `strict` = SPEC Part A to the letter.
#[derive(Clone, Debug)]
pub struct SwarmOptions {
    pub strict: bool,
    /// Outstanding requests per connection when both sides negotiated PIPELINE.
    pub pipeline_depth: usize,
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
    /// Slots while warming up: until we have sent as many pieces as there are other
    /// peers (0: no warm-up).
    pub warmup_slots: usize,
}

/// A request waiting this long for an upload slot goes before rarer pieces.
const UPLOAD_MAX_WAIT: Duration = Duration::from_secs(3);

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
    /// Pieces requested from this neighbour and not yet arrived.
    outstanding: Vec<u32>,
    /// Requests of theirs we are reading from disk.
    reading: u32,
    bytes_this_interval: u64,
    corrupt: u32,
    /// When it last announced a piece nobody else we know had (so it came from a
    /// seeder), and the smoothed gap between such pieces: tells whether a seeder is
    /// serving it now (see `Swarm::served`).
    last_fresh: Option<tokio::time::Instant>,
    fresh_gap: Option<Duration>,
    last_heard: tokio::time::Instant,
    connected_at: tokio::time::Instant,
    /// Pieces this neighbour sent us corrupt: fetched from someone else if possible.
    bad_pieces: Vec<u32>,
    /// Since when we have been waiting on this neighbour for a requested piece
    /// (`None` when nothing is outstanding).
    waiting_since: Option<tokio::time::Instant>,
}

pub struct Swarm {
    me: u32,
    config: Config,
    opts: SwarmOptions,
    log: EventLog,
    storage: Arc<Storage>,
    picker: Picker,
    neighbours: BTreeMap<u32, Neighbour>,
    known_complete: HashSet<u32>,
    /// Pieces received and being written; they count as pending in the picker.
    writing: HashSet<u32>,
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
        let mut known_complete = HashSet::new();
        if complete_at_start {
            // Complete at start: the seed's own pieces were verified (when there is a
            // manifest) before we got here.
            known_complete.insert(me);
        }
        let mut picker = Picker::new(have, strategy);
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
                UPLOAD_MAX_WAIT,
            ),
            uploads_started: 0,
            slot_returns_tx,
            slot_returns,
            me,
            rng: StdRng::seed_from_u64(opts.seed),
            config,
            opts,
            log,
            storage,
            picker,
            neighbours: BTreeMap::new(),
            known_complete,
            writing: HashSet::new(),
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
                _ = shares.tick() => self.update_share_floors(),
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
        let n = self.pieces();
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
        let mut frontier = share;
        while frontier < n && owner.bitfield.has(frontier) {
            frontier += of;
        }
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
            .filter(|&i| !have.has(i) && !self.neighbours.values().any(|n| n.bitfield.has(i)))
            .count();
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
        why += &format!(" we have {}/{} pieces", have.count(), have.len());
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
            SwarmEvent::PieceWritten {
                index,
                from,
                result,
            } => {
                let was_full = self.writing.len() >= self.max_writing();
                self.writing.remove(&index);
                match result {
                    Ok(()) => self.on_piece_stored(index, from),
                    Err(PieceError::Disk(e)) => return Err(format!("disk error: {e}")),
                    Err(PieceError::Corrupt) => self.on_corrupt(index, from),
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
                result,
                slot,
            } => {
                let data = result.map_err(|e| format!("disk error: {e}"))?;
                let choker = &self.choker;
                if let Some(n) = self.neighbours.get_mut(&peer) {
                    if n.link.conn != conn {
                        return Ok(());
                    }
                    n.reading = n.reading.saturating_sub(1);
                    // A choke sent meanwhile cancels the answer (SPEC A5.4).
                    if choker.is_unchoked(peer) {
                        n.link
                            .queued_bytes
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        let _ = n.link.tx.send(Outgoing {
                            msg: Message::Piece { index, data },
                            slot: Some(slot),
                        });
                    }
                }
            }
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

    fn on_corrupt(&mut self, index: u32, from: u32) {
        self.release(index);
        let strikes = match self.neighbours.get_mut(&from) {
            Some(n) => {
                n.corrupt += 1;
                n.bad_pieces.push(index);
                n.corrupt
            }
            None => MAX_CORRUPT,
        };
        tracing::warn!(
            "piece {index} from peer {from} does not match the manifest; discarded ({strikes} bad from it)"
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
            .send(Message::Bitfield(Bytes::copy_from_slice(self.picker.have().as_bytes())).into());
        self.neighbours.insert(
            peer,
            Neighbour {
                link,
                bitfield: Bitfield::new(self.config.common.num_pieces()),
                extensions,
                seen_message: false,
                am_interested: false,
                peer_interested: false,
                peer_choking: true,
                outstanding: Vec::new(),
                reading: 0,
                bytes_this_interval: 0,
                corrupt: 0,
                last_fresh: None,
                fresh_gap: None,
                last_heard: tokio::time::Instant::now(),
                connected_at: tokio::time::Instant::now(),
                bad_pieces: Vec::new(),
                waiting_since: None,
            },
        );
    }

    /// Starts serving waiting requests while upload slots are free.
    fn pump_uploads(&mut self) {
        let now = tokio::time::Instant::now().into_std();
        loop {
            let picker = &self.picker;
            let Some(w) = self.uploads.next(now, |i| picker.availability(i)) else {
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
            tokio::task::spawn_blocking(move || {
                let result = storage.read_piece(w.index);
                let _ = tx.blocking_send(SwarmEvent::PieceRead {
                    peer: w.peer,
                    conn: w.conn,
                    index: w.index,
                    result,
                    slot,
                });
            });
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
        self.config.common.num_pieces()
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
                self.picker.add_peer(&bf);
                if bf.is_complete() {
                    self.known_complete.insert(peer);
                }
                self.neighbour(peer)?.bitfield = bf;
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
                // A piece nobody else we know had came from a seeder: that is what
                // tells us a seeder serves this downloader now (see `served`). Pieces
                // that helpers fetched and relayed to an owner must not count: they
                // kept an owner the seeder had choked "active" for ever, so nobody
                // fetched the bottom of its share (seconds of stall in the demo swarm).
                let owns = self.downloaders.len() as u32;
                let slot = self.downloaders.iter().position(|&d| d == peer);
                // Complete neighbours are counted only for a piece we lack, the one
                // case where the answer matters (this runs for every `have`).
                let fresh = slot.is_some()
                    && !self.picker.have().has(i)
                    && self.picker.availability(i)
                        <= self
                            .neighbours
                            .values()
                            .filter(|o| o.bitfield.is_complete())
                            .count() as u32;
                let n = self.neighbour(peer)?;
                if fresh {
                    let now = tokio::time::Instant::now();
                    if let Some(last) = n.last_fresh {
                        let gap = now - last;
                        n.fresh_gap = Some(n.fresh_gap.map_or(gap, |g| (g * 4 + gap) / 5));
                    }
                    n.last_fresh = Some(now);
                }
                if n.bitfield.set(i) {
                    let complete = n.bitfield.is_complete();
                    self.picker.peer_has(i);
                    if complete {
                        self.known_complete.insert(peer);
                    }
                    self.last_progress = tokio::time::Instant::now();
                }
                if let Some(share) = slot.map(|s| s as u32) {
                    if fresh {
                        self.picker.set_active_of(share, true);
                    }
                    if fresh || i % owns == share {
                        let floor = self.share_floor(share);
                        self.picker.set_share_floor_of(share, floor);
                    }
                }
                self.update_interest(peer);
                self.fill_requests(peer);
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
                // Unanswered requests become requestable again, from anyone.
                n.waiting_since = None;
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
                if !self.picker.have().has(i) {
                    return Err(format!("request for piece {i}, which we do not have"));
                }
                if !self.choker.is_unchoked(peer) {
                    tracing::debug!("peer {peer} requested piece {i} while choked; ignored");
                    return Ok(());
                }
                let limit = self.opts.max_queued_bytes;
                let piece = self.config.common.piece_size as u64;
                let n = self.neighbour(peer)?;
                let queued = n.link.queued_bytes.load(Ordering::Relaxed);
                if queued + (n.reading as u64 + 1) * piece > limit {
                    tracing::warn!("peer {peer} has too many requests queued; ignoring piece {i}");
                    return Ok(());
                }
                n.reading += 1;
                let conn = n.link.conn;
                self.uploads.push(Waiting {
                    peer,
                    conn,
                    index: i,
                    since: tokio::time::Instant::now().into_std(),
                });
                self.pump_uploads();
            }
            Message::Piece { index, data } => {
                if index >= pieces {
                    return Err(format!("piece {index} of {pieces}"));
                }
                let want = self.config.common.piece_len(index) as usize;
                if data.len() != want {
                    return Err(format!(
                        "piece {index} is {} bytes, expected {want}",
                        data.len()
                    ));
                }
                let n = self.neighbour(peer)?;
                let was_requested = match n.outstanding.iter().position(|&p| p == index) {
                    Some(pos) => {
                        n.outstanding.swap_remove(pos);
                        true
                    }
                    None => false,
                };
                n.bytes_this_interval += data.len() as u64;
                n.waiting_since = (!n.outstanding.is_empty()).then(tokio::time::Instant::now);
                if self.picker.have().has(index) || self.writing.contains(&index) {
                    tracing::debug!("peer {peer} sent piece {index}, which we already have");
                } else if !was_requested && self.writing.len() >= self.max_writing() {
                    // Unrequested data must not grow the disk queue without bound.
                    tracing::debug!("dropping unrequested piece {index} from peer {peer}");
                } else {
                    if !was_requested && self.picker.is_pending(index) {
                        // Requested from someone else after a choke; this copy wins and
                        // the other request is left to arrive as a duplicate.
                        tracing::debug!("piece {index} arrived from {peer} unrequested");
                    }
                    self.picker.mark_pending(index);
                    self.writing.insert(index);
                    let storage = self.storage.clone();
                    let tx = self.events_tx.clone();
                    let manifest = self.manifest.clone();
                    tokio::task::spawn_blocking(move || {
                        // Verify before writing: a bad copy never touches the file.
                        let result = if manifest.is_some_and(|m| !m.verify(index, &data)) {
                            Err(PieceError::Corrupt)
                        } else {
                            storage.write_piece(index, &data).map_err(PieceError::Disk)
                        };
                        let _ = tx.blocking_send(SwarmEvent::PieceWritten {
                            index,
                            from: peer,
                            result,
                        });
                    });
                }
                self.fill_requests(peer);
            }
        }
        Ok(())
    }

    fn neighbour(&mut self, peer: u32) -> Result<&mut Neighbour, String> {
        self.neighbours
            .get_mut(&peer)
            .ok_or_else(|| format!("peer {peer} is not connected"))
    }

    fn on_piece_stored(&mut self, index: u32, from: u32) {
        if !self.picker.complete(index) {
            return;
        }
        self.last_progress = tokio::time::Instant::now();
        tracing::trace!("stored {index} from {from}");
        let count = self.picker.have().count();
        self.log.write(&Log::Downloaded {
            piece: index,
            from,
            count,
        });
        let ids: Vec<u32> = self.neighbours.keys().copied().collect();
        for &id in &ids {
            if let Some(n) = self.neighbours.get(&id) {
                let _ = n.link.tx.send(Message::Have(index).into());
            }
            self.update_interest(id);
        }
        if self.picker.have().is_complete() {
            self.log.write(&Log::Complete);
            self.known_complete.insert(self.me);
            tracing::info!(
                "downloaded the complete file: {}",
                self.storage.path().display()
            );
            let storage = self.storage.clone();
            let tx = self.events_tx.clone();
            let expected = self.manifest.as_ref().map(|m| m.file_hash);
            tokio::task::spawn_blocking(move || {
                let result =
                    storage
                        .sync()
                        .map_err(|e| e.to_string())
                        .and_then(|()| match expected {
                            Some(want) => match storage.file_hash() {
                                Ok(got) if got == want => Ok(()),
                                Ok(got) => Err(format!(
                                    "{}: BLAKE3 {} differs from the manifest's {}",
                                    storage.path().display(),
                                    crate::manifest::hex(&got),
                                    crate::manifest::hex(&want)
                                )),
                                Err(e) => Err(e.to_string()),
                            },
                            None => Ok(()),
                        });
                let _ = tx.blocking_send(SwarmEvent::FileChecked(result));
            });
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
        // Pieces we can get from a downloader that unchokes us now: not asked of a
        // seeder. One that chokes us does not count (small k: waiting for it to
        // unchoke us stalled a loopback swarm for seconds).
        let mut elsewhere = Vec::new();
        let mut complete = 0;
        if seeder {
            elsewhere = vec![0u8; self.pieces().div_ceil(8) as usize];
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
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        if n.peer_choking {
            return;
        }
        let depth = if n.extensions.contains(Extensions::PIPELINE) {
            // Twice as deep towards a seeder: only our own share is asked of it, so
            // depth costs no duplicates there, and at the end of a run its flow to us
            // must fill its whole upload alone.
            self.opts.pipeline_depth.max(1) * if seeder { 2 } else { 1 }
        } else {
            1
        };
        while n.outstanding.len() < depth {
            let choice = if seeder {
                self.picker
                    .pick_from_seeder(&n.bitfield, &elsewhere, complete, &mut self.rng)
            } else {
                self.picker.pick(&n.bitfield, &mut self.rng)
            };
            let Some(i) = choice else {
                break;
            };
            self.picker.mark_pending(i);
            n.outstanding.push(i);
            tracing::trace!("request {i} from {peer}");
            let _ = n.link.tx.send(Message::Request(i).into());
        }
        if !n.outstanding.is_empty() && n.waiting_since.is_none() {
            n.waiting_since = Some(tokio::time::Instant::now());
        }
        // Endgame (default mode): every missing piece is requested somewhere and this
        // connection is idle, so ask it for one of them too rather than wait on the
        // slowest neighbour. One extra copy per idle connection at most; duplicates
        // are dropped on arrival.
        // Never from a peer listed with the file: its upload is the swarm's bottleneck.
        if !self.opts.strict
            && !seeder
            && n.outstanding.is_empty()
            && self.picker.unrequested_missing() == 0
        {
            let writing = &self.writing;
            if let Some(i) = self.picker.pick_endgame(
                &n.bitfield,
                |i| writing.contains(&i) || hidden.contains(&i),
                &mut self.rng,
            ) {
                n.outstanding.push(i);
                let _ = n.link.tx.send(Message::Request(i).into());
                n.waiting_since
                    .get_or_insert_with(tokio::time::Instant::now);
            }
        }
    }

    /// Pieces received and not yet stored that we allow before asking for more:
    /// about 16 MiB, at least 4.
    fn max_writing(&self) -> usize {
        ((16 << 20) / self.config.common.piece_size as usize).max(4)
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
            n.bytes_this_interval = 0;
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
