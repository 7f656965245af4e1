//! Upload scheduling: which accepted request a peer serves next, and how many pieces
//! it sends at once.
//!
//! A peer's upload link is shared by every neighbour it serves. Sending to all of
//! them at once (one TCP flow each) makes every piece arrive late: with 15 requests
//! queued, each piece takes 15 piece-times to arrive, and a neighbour can relay a
//! piece only once it has all of it. Serving a few pieces at a time at full speed
//! delivers the first one after one piece-time instead, so pieces start travelling
//! on through the swarm sooner -- which is what shortens the end of a distribution.
//!
//! Among waiting requests the rarest piece (fewest neighbours have it) goes first:
//! a piece just injected by a seeder has to reach everyone, one that most already
//! hold does not hold anybody up. A request that has waited `max_wait` is served
//! before any fresher one, so common pieces are never starved. Above both: a piece
//! we have never sent goes before any we have sent before. One we sent is already
//! on its way into the swarm even if nobody announced it yet; for a seeder, whose
//! upload is the swarm's bottleneck, it is a duplicate, and serving it first (as the
//! age rule did when every request had waited seconds) delayed the last new pieces.
//!
//! [`UploadQueue`] is pure logic (no clock of its own, no I/O); [`UploadSlot`] is the
//! token that travels with a piece to the connection's writer and gives the slot
//! back when it is dropped, however that happens (sent, connection gone, choked).

use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Slots follow the link: enough for this long of uploading at the measured speed.
const SLOT_HORIZON_SECS: f64 = 0.1;

/// ... within [floor, this].
const MAX_FOLLOWED_SLOTS: usize = 16;

/// A downloader's upload slots for `rate` (bytes/s it uploads, see [`UploadRate`])
/// and units of `unit` bytes: what the link sends in 0.1 s, at least `floor`, at most
/// 16 (or `floor` if larger).
///
/// Why: few slots keep a slow uplink's sockets short, so the downloader's own requests
/// are not stuck behind its uploads (see `peer::downloader_upload_slots`); on a fast
/// link the same few leave receivers idle. Loopback, 1 GiB, 1 + 7, single runs on a
/// noisy machine: 2 slots 9.4 and 10.6 s; no limit 8.4 s; 16 slots 7.9 s; as many as
/// the rate asks for without a cap (hundreds) 10.5 and 10.9 s.
pub fn slots_for_rate(rate: u64, unit: u64, floor: usize) -> usize {
    let by_rate = (rate as f64 * SLOT_HORIZON_SECS / unit.max(1) as f64) as usize;
    by_rate.clamp(floor, MAX_FOLLOWED_SLOTS.max(floor))
}

/// What we upload per second, measured over windows of at least a second: the bytes
/// handed to connections under upload slots. Slots bound what is in flight, so over a
/// second this is the speed of the link (or of the receivers), not of copying into
/// socket buffers -- one upload's own write time measures the latter (a 20 mbit link
/// looked like gigabytes a second, and slots "followed" it to 16).
#[derive(Debug)]
pub struct UploadRate {
    start: Instant,
    bytes: u64,
    rate: u64,
}

impl UploadRate {
    pub fn new(now: Instant) -> UploadRate {
        UploadRate {
            start: now,
            bytes: 0,
            rate: 0,
        }
    }

    /// Counts `bytes` handed out at `now`; closes the window after a second.
    pub fn add(&mut self, now: Instant, bytes: u64) {
        self.bytes += bytes;
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= Duration::from_secs(1) {
            self.rate = (self.bytes as f64 / elapsed.as_secs_f64()) as u64;
            self.start = now;
            self.bytes = 0;
        }
    }

    /// Bytes per second over the last closed window (0 before the first).
    pub fn rate(&self) -> u64 {
        self.rate
    }
}

/// An accepted request waiting for a free upload slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub peer: u32,
    pub conn: u64,
    /// The unit asked for (a BLOCKS `request-block`), or the first unit of the piece
    /// asked for (a Part A `request`); see `blocks.rs`.
    pub index: u32,
    pub block: bool,
    pub since: Instant,
}

#[derive(Debug)]
pub struct UploadQueue {
    waiting: Vec<Waiting>,
    busy: usize,
    slots: usize,
    max_wait: Duration,
}

impl UploadQueue {
    /// `slots` pieces in flight at once (0: no limit, every request is served at once).
    pub fn new(slots: usize, max_wait: Duration) -> UploadQueue {
        UploadQueue {
            waiting: Vec::new(),
            busy: 0,
            slots,
            max_wait,
        }
    }

    pub fn push(&mut self, w: Waiting) {
        self.waiting.push(w);
    }

    /// Forgets the waiting requests of `peer` (choked or gone); returns how many.
    pub fn cancel(&mut self, peer: u32) -> usize {
        let before = self.waiting.len();
        self.waiting.retain(|w| w.peer != peer);
        before - self.waiting.len()
    }

    /// Forgets `peer`'s waiting request for block `index`, if it is still waiting
    /// (a `cancel-block`); returns whether it was.
    pub fn withdraw(&mut self, peer: u32, index: u32) -> bool {
        match self
            .waiting
            .iter()
            .position(|w| w.peer == peer && w.index == index && w.block)
        {
            Some(pos) => {
                self.waiting.remove(pos);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Changes the number of slots (0: no limit); pieces in flight keep theirs.
    pub fn set_slots(&mut self, slots: usize) {
        self.slots = slots;
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn busy(&self) -> usize {
        self.busy
    }

    /// The request to serve now, if a slot is free: the oldest one that has waited
    /// `max_wait`, else the rarest (`rarity`: how many neighbours have the piece),
    /// then the requester with the least `load` (what it still has to relay, see
    /// `Swarm::pump_uploads`), oldest first among equals. Takes a slot; give it back
    /// with [`Self::done`].
    pub fn next(
        &mut self,
        now: Instant,
        rarity: impl Fn(u32) -> u32,
        sent_before: impl Fn(u32) -> bool,
        load: impl Fn(u32) -> u64,
    ) -> Option<Waiting> {
        if self.waiting.is_empty() || (self.slots > 0 && self.busy >= self.slots) {
            return None;
        }
        let new_first = self.waiting.iter().any(|w| !sent_before(w.index));
        let eligible = |w: &Waiting| !new_first || !sent_before(w.index);
        let overdue = |w: &Waiting| now.saturating_duration_since(w.since) >= self.max_wait;
        let pos = match self
            .waiting
            .iter()
            .enumerate()
            .filter(|(_, w)| eligible(w) && overdue(w))
            .min_by_key(|(_, w)| w.since)
        {
            Some((pos, _)) => pos,
            None => self
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, w)| eligible(w))
                .min_by_key(|(_, w)| (rarity(w.index), load(w.peer), w.since))
                .map(|(pos, _)| pos)?,
        };
        self.busy += 1;
        Some(self.waiting.remove(pos))
    }

    /// A slot taken by [`Self::next`] is free again.
    pub fn done(&mut self) {
        self.busy = self.busy.saturating_sub(1);
    }
}

/// Holds one upload slot; dropping it hands the slot back to the swarm actor.
pub struct UploadSlot {
    returns: mpsc::UnboundedSender<()>,
}

impl UploadSlot {
    pub fn new(returns: mpsc::UnboundedSender<()>) -> UploadSlot {
        UploadSlot { returns }
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        // The actor may be gone (shutting down); then nobody needs the slot.
        let _ = self.returns.send(());
    }
}

impl std::fmt::Debug for UploadSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UploadSlot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(peer: u32, index: u32, since: Instant) -> Waiting {
        Waiting {
            peer,
            block: false,
            conn: 1,
            index,
            since,
        }
    }

    #[test]
    fn slots_follow_the_link_between_the_floor_and_sixteen() {
        let unit = 128 * 1024;
        // 20 mbit and 5 mbit: the floor.
        assert_eq!(slots_for_rate(2_500_000, unit, 2), 2);
        assert_eq!(slots_for_rate(625_000, unit, 2), 2);
        assert_eq!(slots_for_rate(0, unit, 2), 2);
        // 100 mbit: 1.25 MB in 0.1 s, 9 units.
        assert_eq!(slots_for_rate(12_500_000, unit, 2), 9);
        // Loopback: capped.
        assert_eq!(slots_for_rate(1_300_000_000, unit, 2), 16);
        assert_eq!(slots_for_rate(1_300_000_000, unit, 20), 20);
        assert_eq!(slots_for_rate(u64::MAX, 0, 2), 16);
    }

    #[test]
    fn upload_rate_is_measured_over_whole_seconds() {
        let t0 = Instant::now();
        let mut r = UploadRate::new(t0);
        r.add(t0 + Duration::from_millis(100), 4_000_000);
        assert_eq!(r.rate(), 0, "no window closed yet: a burst is not a rate");
        r.add(t0 + Duration::from_millis(1900), 1_000_000);
        r.add(t0 + Duration::from_millis(2000), 0);
        assert_eq!(r.rate(), 5_000_000 * 10 / 19);
        // An idle second counts as idle.
        r.add(t0 + Duration::from_millis(4000), 0);
        assert_eq!(r.rate(), 0);
    }

    #[test]
    fn among_equally_rare_pieces_the_least_loaded_requester_goes_first() {
        let t0 = Instant::now();
        let mut q = UploadQueue::new(1, Duration::from_secs(5));
        q.push(w(1, 10, t0));
        q.push(w(2, 11, t0 + Duration::from_millis(1)));
        q.push(w(3, 12, t0 + Duration::from_millis(2)));
        let load = |peer: u32| match peer {
            1 => 30,
            2 => 0,
            _ => 15,
        };
        let order: Vec<u32> = (0..3)
            .filter_map(|_| {
                let w = q.next(t0, |_| 0, never, load)?;
                q.done();
                Some(w.peer)
            })
            .collect();
        assert_eq!(order, [2, 3, 1]);
        // Rarity still comes first: a rarer piece for the busiest requester wins.
        q.push(w(1, 20, t0));
        q.push(w(2, 21, t0));
        let rarity = |i: u32| if i == 20 { 0 } else { 1 };
        assert_eq!(q.next(t0, rarity, never, load).map(|w| w.peer), Some(1));
    }

    #[test]
    fn serves_the_rarest_piece_first_and_oldest_among_equals() {
        let t0 = Instant::now();
        let mut q = UploadQueue::new(1, Duration::from_secs(5));
        q.push(w(1, 10, t0));
        q.push(w(2, 20, t0 + Duration::from_millis(1)));
        q.push(w(3, 30, t0 + Duration::from_millis(2)));
        q.push(w(4, 31, t0 + Duration::from_millis(3)));
        let rarity = |i: u32| if i >= 30 { 0 } else { 3 };
        let now = t0 + Duration::from_secs(1);
        assert_eq!(q.next(now, rarity, never, |_| 0).map(|w| w.index), Some(30));
        // One slot: nothing more until it is given back.
        assert_eq!(q.next(now, rarity, never, |_| 0), None);
        q.done();
        assert_eq!(q.next(now, rarity, never, |_| 0).map(|w| w.index), Some(31));
        q.done();
        assert_eq!(q.next(now, rarity, never, |_| 0).map(|w| w.index), Some(10));
        q.done();
        assert_eq!(q.next(now, rarity, never, |_| 0).map(|w| w.index), Some(20));
        q.done();
        assert_eq!(q.next(now, rarity, never, |_| 0), None);
        assert!(q.is_empty());
    }

    #[test]
    fn a_request_that_waited_too_long_goes_before_rarer_ones() {
        let t0 = Instant::now();
        let mut q = UploadQueue::new(2, Duration::from_secs(5));
        q.push(w(1, 7, t0));
        q.push(w(2, 8, t0 + Duration::from_secs(4)));
        let rarity = |i: u32| if i == 8 { 0 } else { 9 };
        assert_eq!(
            q.next(t0 + Duration::from_secs(5), rarity, never, |_| 0)
                .map(|w| w.index),
            Some(7)
        );
        assert_eq!(
            q.next(t0 + Duration::from_secs(5), rarity, never, |_| 0)
                .map(|w| w.index),
            Some(8)
        );
        assert_eq!(q.busy(), 2);
    }

    fn never(_: u32) -> bool {
        false
    }

    #[test]
    fn a_piece_never_sent_goes_before_any_sent_before_however_old() {
        let t0 = Instant::now();
        let mut q = UploadQueue::new(1, Duration::from_secs(1));
        q.push(w(1, 5, t0));
        q.push(w(2, 6, t0 + Duration::from_secs(8)));
        let sent = |i: u32| i == 5;
        let now = t0 + Duration::from_secs(9);
        assert_eq!(q.next(now, |_| 0, sent, |_| 0).map(|w| w.index), Some(6));
        q.done();
        assert_eq!(q.next(now, |_| 0, sent, |_| 0).map(|w| w.index), Some(5));
    }

    #[test]
    fn cancel_forgets_only_that_peers_requests() {
        let t0 = Instant::now();
        let mut q = UploadQueue::new(0, Duration::from_secs(5));
        q.push(w(1, 1, t0));
        q.push(w(2, 2, t0));
        q.push(w(1, 3, t0));
        assert_eq!(q.cancel(1), 2);
        assert_eq!(q.len(), 1);
        // slots = 0: no limit.
        assert_eq!(q.next(t0, |_| 0, never, |_| 0).map(|w| w.peer), Some(2));
        assert_eq!(q.busy(), 1);
    }

    #[test]
    fn withdraw_forgets_one_waiting_block_request_of_that_peer() {
        let t0 = Instant::now();
        let mut q = UploadQueue::new(1, Duration::from_secs(5));
        let block = |peer, index| Waiting {
            block: true,
            ..w(peer, index, t0)
        };
        q.push(block(1, 7));
        q.push(block(2, 7));
        q.push(w(1, 8, t0)); // a whole piece: not withdrawn by cancel-block
        assert!(!q.withdraw(1, 8));
        assert!(!q.withdraw(3, 7));
        assert!(q.withdraw(1, 7));
        assert!(!q.withdraw(1, 7));
        assert_eq!(q.len(), 2);
        let next = q.next(t0, |_| 0, never, |_| 0).map(|w| (w.peer, w.index));
        assert_eq!(next, Some((2, 7)));
        // Once taken for sending it is no longer waiting.
        assert!(!q.withdraw(2, 7));
    }

    #[test]
    fn a_dropped_slot_is_returned() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let slot = UploadSlot::new(tx);
        assert!(rx.try_recv().is_err());
        drop(slot);
        assert!(rx.try_recv().is_ok());
    }
}
