//! Piece choice (SPEC A5.4): which piece to request next from a neighbour.
//!
//! Pure logic over bitfields. It tracks the pieces we have, the pieces requested from
//! anyone and not yet arrived (never requested twice), and how many neighbours have
//! each piece. `Random` is A5.4 to the letter; `RarestFirst` (default mode) picks at
//! random among the candidates fewest neighbours have, so the seeder's upload goes to
//! pieces nobody else can supply. With a partition `(d, D)` (downloader d of the D
//! listed in PeerInfo.cfg), equally rare pieces with `index % D == d` come first, so
//! downloaders asking the seeder at the same moment ask for different pieces and the
//! seeder sends each piece about once.

use crate::bitfield::Bitfield;
use rand::Rng;
use std::time::Duration;

/// Endgame (default mode): neighbours a missing unit is asked of at once, the first
/// request and one spare, so a slow or dead holder costs one extra copy, not one per
/// idle connection.
pub const ENDGAME_COPIES: usize = 2;

/// A holder is late once it has delivered nothing for twice its usual gap between
/// deliveries, and never before this: a spare asked of a busy neighbour is one more
/// block on its upload, which the whole swarm is short of at the end.
pub const LATE_AT_LEAST: Duration = Duration::from_millis(500);

/// How long a holder with no delivery yet may take before it is late.
pub const LATE_UNKNOWN: Duration = Duration::from_secs(2);

/// One neighbour a unit is asked of: how long it has delivered nothing while we
/// waited, and its smoothed gap between deliveries (`None` before the first).
#[derive(Clone, Copy, Debug)]
pub struct Holder {
    pub waited: Duration,
    pub gap: Option<Duration>,
}

impl Holder {
    pub fn is_late(&self) -> bool {
        let after = self
            .gap
            .map_or(LATE_UNKNOWN, |g| (g * 2).max(LATE_AT_LEAST));
        self.waited >= after
    }
}

/// Whether the endgame may ask one more neighbour for a unit already asked of
/// `holders`: fewer than [`ENDGAME_COPIES`] and every one of them late. Without the
/// rule every idle connection asked for a spare, again each time it fell idle: at
/// N = 32 behind 5 mbit one peer got the same block 20 times and duplicates came to
/// 4.6 copies of the file (bench/RESULTS.md).
pub fn spare_due(holders: &[Holder]) -> bool {
    holders.len() < ENDGAME_COPIES && holders.iter().all(Holder::is_late)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Random,
    RarestFirst,
}

/// The piece with the lowest key seen so far, chosen uniformly among equal keys
/// (reservoir sampling), without materialising the candidate list.
struct Lowest<K> {
    best: Option<(K, u32)>,
    ties: u32,
}

impl<K> Default for Lowest<K> {
    fn default() -> Self {
        Lowest {
            best: None,
            ties: 0,
        }
    }
}

/// Calls `f` with every set bit (as an index) of the bytes `byte(0..bytes)`, in
/// order, until it returns false. Whole bytes without a candidate are skipped, which
/// is what keeps picks cheap when most pieces are had or pending.
fn for_each_set(bytes: usize, byte: impl Fn(usize) -> u8, mut f: impl FnMut(u32) -> bool) {
    for b in 0..bytes {
        let mut m = byte(b);
        while m != 0 {
            let bit = m.leading_zeros();
            m &= !(0x80 >> bit);
            if !f(b as u32 * 8 + bit) {
                return;
            }
        }
    }
}

/// Rarest first looks at most this many candidates, from a random start: with tens of
/// thousands of blocks an exact minimum on every request cost a loopback swarm a
/// sixth of its CPU, and a random window of this size finds one of the rarest all the
/// same when rarity varies (the rarest are a sizeable share of what one lacks).
const MAX_EXAMINED: u32 = 256;

impl<K: Ord + Copy> Lowest<K> {
    fn offer<R: Rng>(&mut self, key: K, i: u32, rng: &mut R) {
        match self.best {
            Some((k, _)) if key > k => {}
            Some((k, _)) if key == k => {
                self.ties += 1;
                if rng.gen_range(0..self.ties) == 0 {
                    self.best = Some((key, i));
                }
            }
            _ => {
                self.best = Some((key, i));
                self.ties = 1;
            }
        }
    }

    fn index(&self) -> Option<u32> {
        self.best.map(|(_, i)| i)
    }
}

#[derive(Clone, Debug)]
pub struct Picker {
    have: Bitfield,
    pending: Bitfield,
    availability: Vec<u32>,
    strategy: Strategy,
    partition: Option<(u32, u32)>,
    /// Per share: the lowest index of it we may take from a seeder. The owner fetches
    /// its share in ascending order, so pieces far above its next few are safe to
    /// take without racing it.
    share_floor: Vec<u32>,
    /// Per downloader (PeerInfo.cfg order): whether a seeder serves it now, so that it
    /// takes its part of the helper positions (empty: all are).
    active: Vec<bool>,
}

impl Picker {
    pub fn new(have: Bitfield, strategy: Strategy) -> Picker {
        let n = have.len();
        Picker {
            have,
            pending: Bitfield::new(n),
            availability: vec![0; n as usize],
            strategy,
            partition: None,
            share_floor: Vec::new(),
            active: Vec::new(),
        }
    }

    /// Prefers pieces `i` with `i % of == slot` among equally rare ones (RarestFirst).
    pub fn set_partition(&mut self, slot: u32, of: u32) {
        if of > 1 && slot < of {
            self.partition = Some((slot, of));
        }
    }

    /// Sets, per share, the lowest piece index we may fetch from a seeder (missing
    /// shares: no limit). Pieces below it are left to the owner and fetched from it
    /// once it has them; the swarm puts it a few requests above the owner's progress,
    /// or at 0 when the owner is gone or idle.
    pub fn set_share_floor(&mut self, floor: Vec<u32>) {
        self.share_floor = floor;
    }

    /// Sets the floor of one share (see [`Picker::set_share_floor`]).
    pub fn set_share_floor_of(&mut self, share: u32, floor: u32) {
        if let Some(f) = self.share_floor.get_mut(share as usize) {
            *f = floor;
        }
    }

    /// Which downloaders a seeder serves now (see [`Picker::pick_from_seeder`]).
    pub fn set_active(&mut self, active: Vec<bool>) {
        self.active = active;
    }

    /// Marks one downloader as served by a seeder now, or not.
    pub fn set_active_of(&mut self, slot: u32, active: bool) {
        if let Some(a) = self.active.get_mut(slot as usize) {
            *a = active;
        }
    }

    /// Rarity key: lower is picked first.
    fn key(&self, i: u32) -> (u32, bool) {
        let foreign = self.partition.is_some_and(|(slot, of)| i % of != slot);
        (self.availability[i as usize], foreign)
    }

    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// How many neighbours have piece `i`.
    pub fn availability(&self, i: u32) -> u32 {
        self.availability.get(i as usize).copied().unwrap_or(0)
    }

    pub fn is_pending(&self, i: u32) -> bool {
        self.pending.has(i)
    }

    /// Chooses a piece `theirs` has that we neither have nor have requested.
    pub fn pick<R: Rng>(&self, theirs: &Bitfield, rng: &mut R) -> Option<u32> {
        let n = self.have.len();
        let bytes = theirs.as_bytes().len();
        if bytes == 0 || theirs.len() != n {
            return None;
        }
        let candidates = |b: usize| {
            theirs.as_bytes()[b] & !self.have.as_bytes()[b] & !self.pending.as_bytes()[b]
        };
        // Start at a random byte and wrap, so that equal choices are spread at random
        // without materialising the candidate list.
        let start = rng.gen_range(0..bytes);
        match self.strategy {
            Strategy::Random => {
                let total: u32 = (0..bytes).map(|b| candidates(b).count_ones()).sum();
                if total == 0 {
                    return None;
                }
                let mut target = rng.gen_range(0..total);
                for b in 0..bytes {
                    let mut m = candidates(b);
                    let c = m.count_ones();
                    if target >= c {
                        target -= c;
                        continue;
                    }
                    loop {
                        let bit = m.leading_zeros();
                        if target == 0 {
                            return Some(b as u32 * 8 + bit);
                        }
                        target -= 1;
                        m &= !(0x80 >> bit);
                    }
                }
                None
            }
            Strategy::RarestFirst => {
                let mut best = Lowest::default();
                let mut examined = 0;
                let word = |s: &Bitfield, b: usize| {
                    s.as_bytes()
                        .get(b..b + 8)
                        .and_then(|w| <[u8; 8]>::try_from(w).ok())
                        .map(u64::from_ne_bytes)
                };
                // The bytes from `start` to the end, then from 0 to `start`, skipping 8
                // bytes without a candidate at once. Why not `(start + k) % bytes` byte
                // by byte: that division and the per-byte masks were most of this
                // function's time with 16 KiB pieces (4 096 of them), and this function
                // was the peers' busiest of their own (a perf profile, bench/RESULTS.md).
                // The bytes are examined in the same order as then, so the choice is the
                // same for the same random numbers (`tests::rarest_first_scan_*`).
                'scan: for (lo, hi) in [(start, bytes), (0, start)] {
                    let mut b = lo;
                    while b < hi {
                        if hi - b >= 8 {
                            let none = match (
                                word(theirs, b),
                                word(&self.have, b),
                                word(&self.pending, b),
                            ) {
                                (Some(t), Some(h), Some(p)) => t & !h & !p == 0,
                                _ => false,
                            };
                            if none {
                                b += 8;
                                continue;
                            }
                        }
                        let mut m = candidates(b);
                        while m != 0 {
                            let bit = m.leading_zeros();
                            m &= !(0x80 >> bit);
                            let i = b as u32 * 8 + bit;
                            best.offer(self.key(i), i, rng);
                            examined += 1;
                        }
                        // Only this neighbour has it: nothing can be rarer.
                        if matches!(best.best, Some(((a, false), _)) if a <= 1) && best.ties >= 8 {
                            break 'scan;
                        }
                        if examined >= MAX_EXAMINED {
                            break 'scan;
                        }
                        b += 1;
                    }
                }
                best.index()
            }
        }
    }

    /// Choice when asking a peer that has every piece (default mode with shares);
    /// falls back to [`Picker::pick`] without shares. `elsewhere` (wire bit order) marks
    /// pieces a downloader that unchokes us holds: those are fetched from it instead
    /// (the seeder's upload is the swarm's bottleneck; it should send each piece once).
    /// `complete` is how many connected neighbours have every piece.
    ///
    /// Our own share comes first, in ascending order. Once all of it is had or asked
    /// for, we help the owner furthest behind: pieces of its share at or above its
    /// floor (see [`Picker::set_share_floor`]), taken from the top down while the
    /// owner works upwards, so the two do not meet. Helpers of the same share take
    /// disjoint sets of its pieces, since they cannot see each other's requests.
    /// Once every piece has left the seeder, the rarest piece downloaders hold.
    pub fn pick_from_seeder<R: Rng>(
        &self,
        theirs: &Bitfield,
        elsewhere: &[u8],
        complete: u32,
        rng: &mut R,
    ) -> Option<u32> {
        let n = self.have.len();
        let held = |i: u32| {
            elsewhere
                .get((i / 8) as usize)
                .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
        };
        let Some((slot, of)) = self
            .partition
            .filter(|_| self.strategy == Strategy::RarestFirst)
        else {
            return self.pick(theirs, rng);
        };
        if theirs.len() != n {
            return None;
        }
        let wanted =
            |i: u32| theirs.has(i) && !self.have.has(i) && !self.pending.has(i) && !held(i);
        let mut i = slot;
        while i < n {
            if wanted(i) {
                return Some(i);
            }
            i += of;
        }
        let floor = |s: u32| self.share_floor.get(s as usize).copied().unwrap_or(0);
        let mut count = vec![0u32; of as usize];
        let wanted_byte = |b: usize| {
            theirs.as_bytes()[b]
                & !self.have.as_bytes()[b]
                & !self.pending.as_bytes()[b]
                & !elsewhere.get(b).copied().unwrap_or(0)
        };
        let bytes = theirs.as_bytes().len();
        for_each_set(bytes, wanted_byte, |i| {
            let s = i % of;
            if s != slot && i >= floor(s) {
                count[s as usize] += 1;
            }
            true
        });
        // The share with the most pieces left first; among equals the one after ours
        // in PeerInfo.cfg order. Helpers cannot see each other's requests, so each
        // takes only its own positions in the share: counted from the top, those
        // congruent to its rank r among the helpers a seeder serves now (ordered by
        // their distance from the owner) modulo their number h. Two helpers that agree
        // on who is served never ask for the same piece; one the seeder chokes leaves
        // its positions to the others instead of holding them.
        let distance = |s: u32| (s + of - slot) % of;
        let mut shares: Vec<u32> = (0..of).filter(|&s| count[s as usize] > 0).collect();
        shares.sort_by_key(|&s| (std::cmp::Reverse(count[s as usize]), distance(s)));
        let active = |t: u32| t == slot || self.active.get(t as usize).copied().unwrap_or(true);
        let of64 = u64::from(of);
        let rank = |share: u32| {
            let mine = (slot + of - share) % of; // 1..=D-1
            let (mut r, mut h) = (0u64, 0u64);
            for q in 1..of {
                if active((share + q) % of) {
                    h += 1;
                    if q < mine {
                        r += 1;
                    }
                }
            }
            (r, h.max(1))
        };
        for &share in &shares {
            let (r, helpers) = rank(share);
            let top = u64::from(share + (n - 1 - share) / of * of);
            let mut pos = r;
            while let Some(i) = top.checked_sub(pos * of64) {
                if i < u64::from(floor(share)) {
                    break;
                }
                if wanted(i as u32) {
                    return Some(i as u32);
                }
                pos += helpers;
            }
        }
        // Our positions are all taken: the next helper's may not be (it is slower, or
        // a seeder just choked it). Take them from the bottom up while it works from
        // the top down, so the two meet once; each set of positions has at most these
        // two takers.
        for &share in &shares {
            let (r, helpers) = rank(share);
            if helpers < 2 {
                continue;
            }
            let next = (r + 1) % helpers; // the next helper's first position
            let top = u64::from(share + (n - 1 - share) / of * of);
            let lowest = u64::from(floor(share).max(share));
            if top < lowest {
                continue;
            }
            let highest = (top - lowest) / of64;
            let Some(mut pos) = highest.checked_sub((highest + helpers - next) % helpers) else {
                continue;
            };
            loop {
                let i = top - pos * of64;
                if wanted(i as u32) {
                    return Some(i as u32);
                }
                match pos.checked_sub(helpers) {
                    Some(p) => pos = p,
                    None => break,
                }
            }
        }
        // Once every piece has left the seeder (we have it or a downloader does), its
        // upload would idle while downloaders relay -- for seconds at the end of a
        // run, or for most of it when the seeder is faster than the swarm needs. Ask
        // it then, like anyone, for the rarest pieces downloaders hold. Not before:
        // those requests would compete with the unique pieces still going out.
        let mut unsent = false;
        let lacking = |b: usize| !self.have.as_bytes()[b];
        for_each_set(bytes, lacking, |i| {
            unsent = i < n && self.availability(i) <= complete;
            !unsent
        });
        if unsent {
            return None;
        }
        let mut best = Lowest::default();
        let candidate = |b: usize| {
            theirs.as_bytes()[b] & !self.have.as_bytes()[b] & !self.pending.as_bytes()[b]
        };
        for_each_set(bytes, candidate, |i| {
            if self.availability(i) > complete {
                best.offer(self.availability(i), i, rng);
            }
            true
        });
        best.index()
    }

    /// Endgame: a piece `theirs` has that we lack and that is already requested from
    /// someone else (and not in `exclude`), to ask for a second copy.
    pub fn pick_endgame<R: Rng>(
        &self,
        theirs: &Bitfield,
        exclude: impl Fn(u32) -> bool,
        rng: &mut R,
    ) -> Option<u32> {
        if theirs.len() != self.have.len() {
            return None;
        }
        let mut chosen = None;
        let mut seen = 0u32;
        for (b, &t) in theirs.as_bytes().iter().enumerate() {
            let mut m = t & !self.have.as_bytes()[b] & self.pending.as_bytes()[b];
            while m != 0 {
                let bit = m.leading_zeros();
                m &= !(0x80 >> bit);
                let i = b as u32 * 8 + bit;
                if exclude(i) {
                    continue;
                }
                seen += 1;
                if rng.gen_range(0..seen) == 0 {
                    chosen = Some(i);
                }
            }
        }
        chosen
    }

    /// Pieces we lack and nobody has been asked for.
    pub fn unrequested_missing(&self) -> u32 {
        self.have
            .as_bytes()
            .iter()
            .zip(self.pending.as_bytes())
            .map(|(h, p)| (!h & !p).count_ones())
            .sum::<u32>()
            - (self.have.as_bytes().len() as u32 * 8 - self.have.len())
    }

    pub fn mark_pending(&mut self, i: u32) {
        self.pending.set(i);
    }

    /// A request went unanswered (choke, disconnect): the piece is requestable again.
    pub fn unmark_pending(&mut self, i: u32) {
        self.pending.clear(i);
    }

    /// Records a completed piece; false if we already had it.
    pub fn complete(&mut self, i: u32) -> bool {
        self.pending.clear(i);
        self.have.set(i)
    }

    pub fn peer_has(&mut self, i: u32) {
        if let Some(a) = self.availability.get_mut(i as usize) {
            *a += 1;
        }
    }

    pub fn add_peer(&mut self, bf: &Bitfield) {
        for i in bf.iter_set() {
            self.peer_has(i);
        }
    }

    pub fn remove_peer(&mut self, bf: &Bitfield) {
        for i in bf.iter_set() {
            if let Some(a) = self.availability.get_mut(i as usize) {
                *a = a.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::BTreeSet;

    /// Rarest first as it was written before the word-skipping scan: one byte at a
    /// time from a random start, wrapping with `%`.
    fn reference_rarest_first<R: Rng>(p: &Picker, theirs: &Bitfield, rng: &mut R) -> Option<u32> {
        let bytes = theirs.as_bytes().len();
        if bytes == 0 || theirs.len() != p.have.len() {
            return None;
        }
        let candidates =
            |b: usize| theirs.as_bytes()[b] & !p.have.as_bytes()[b] & !p.pending.as_bytes()[b];
        let start = rng.gen_range(0..bytes);
        let mut best = Lowest::default();
        let mut examined = 0;
        for k in 0..bytes {
            let b = (start + k) % bytes;
            let mut m = candidates(b);
            while m != 0 {
                let bit = m.leading_zeros();
                m &= !(0x80 >> bit);
                let i = b as u32 * 8 + bit;
                best.offer(p.key(i), i, rng);
                examined += 1;
            }
            if matches!(best.best, Some(((a, false), _)) if a <= 1) && best.ties >= 8 {
                break;
            }
            if examined >= MAX_EXAMINED {
                break;
            }
        }
        best.index()
    }

    proptest::proptest! {
        /// The word-skipping scan picks exactly what the byte-by-byte one did, given
        /// the same random numbers, over sparse and dense bitfields, partitions and
        /// rarities.
        #[test]
        fn rarest_first_scan_picks_as_the_byte_scan_did(
            n in 1u32..700,
            density in 0u32..100,
            seed: u64,
            partition in proptest::option::of((0u32..8, 2u32..9)),
        ) {
            let mut gen = StdRng::seed_from_u64(seed);
            let mut mk = |pct: u32| {
                let mut b = Bitfield::new(n);
                for i in 0..n {
                    if gen.gen_range(0..100) < pct {
                        b.set(i);
                    }
                }
                b
            };
            let have = mk(density);
            let theirs = mk(100 - density / 2);
            let pending = mk(density / 3);
            let mut p = Picker::new(have, Strategy::RarestFirst);
            if let Some((slot, of)) = partition {
                p.set_partition(slot, of);
            }
            for i in 0..n {
                if pending.has(i) {
                    p.mark_pending(i);
                }
                for _ in 0..gen.gen_range(0..4) {
                    p.peer_has(i);
                }
            }
            for k in 0..4u64 {
                let mut a = StdRng::seed_from_u64(seed ^ k);
                let mut b = StdRng::seed_from_u64(seed ^ k);
                proptest::prop_assert_eq!(p.pick(&theirs, &mut a), reference_rarest_first(&p, &theirs, &mut b));
            }
        }
    }

    fn bf(n: u32, set: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for &i in set {
            b.set(i);
        }
        b
    }

    #[test]
    fn picks_only_pieces_they_have_we_lack_and_nobody_was_asked_for() {
        for strategy in [Strategy::Random, Strategy::RarestFirst] {
            let mut p = Picker::new(bf(20, &[0, 1, 2]), strategy);
            p.mark_pending(5);
            let theirs = bf(20, &[1, 2, 5, 9, 19]);
            let mut seen = BTreeSet::new();
            for seed in 0..200 {
                let mut rng = StdRng::seed_from_u64(seed);
                seen.insert(p.pick(&theirs, &mut rng).unwrap());
            }
            assert_eq!(seen, [9, 19].into_iter().collect(), "{strategy:?}");
            p.mark_pending(9);
            p.mark_pending(19);
            let mut rng = StdRng::seed_from_u64(0);
            assert_eq!(p.pick(&theirs, &mut rng), None);
            p.unmark_pending(19);
            assert_eq!(p.pick(&theirs, &mut rng), Some(19));
            assert!(p.complete(19));
            assert!(!p.complete(19));
            assert_eq!(p.pick(&theirs, &mut rng), None);
        }
    }

    #[test]
    fn rarest_first_prefers_the_rarest() {
        let mut p = Picker::new(Bitfield::new(16), Strategy::RarestFirst);
        p.add_peer(&Bitfield::full(16));
        p.add_peer(&bf(16, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]));
        let mut seen = BTreeSet::new();
        for seed in 0..100 {
            let mut rng = StdRng::seed_from_u64(seed);
            seen.insert(p.pick(&Bitfield::full(16), &mut rng).unwrap());
        }
        assert_eq!(seen, [14, 15].into_iter().collect());
        p.remove_peer(&Bitfield::full(16));
        let mut rng = StdRng::seed_from_u64(1);
        assert!(p.pick(&bf(16, &[3]), &mut rng) == Some(3));
    }

    #[test]
    fn partition_splits_equally_rare_pieces() {
        let mut p = Picker::new(Bitfield::new(40), Strategy::RarestFirst);
        p.set_partition(1, 4);
        p.add_peer(&Bitfield::full(40));
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..10 {
            let i = p.pick(&Bitfield::full(40), &mut rng).unwrap();
            assert_eq!(i % 4, 1, "{i}");
            p.mark_pending(i);
        }
        // Own share exhausted: the others' shares are next, never nothing.
        let i = p.pick(&Bitfield::full(40), &mut rng).unwrap();
        assert_ne!(i % 4, 1);
        // Rarity still beats the partition.
        p.add_peer(&bf(40, &[0, 2, 3]));
        let mut q = Picker::new(Bitfield::new(8), Strategy::RarestFirst);
        q.set_partition(0, 2);
        q.add_peer(&Bitfield::full(8));
        q.add_peer(&bf(8, &[0, 2, 4, 6]));
        assert_eq!(q.pick(&Bitfield::full(8), &mut rng).map(|i| i % 2), Some(1));
    }

    /// Everything `p` would request from a seeder, in order (one seeder connected;
    /// every neighbour unchokes us, so what downloaders hold is `p`'s availability
    /// above 1).
    fn drain_from_seeder(p: &mut Picker) -> Vec<u32> {
        let mut rng = StdRng::seed_from_u64(9);
        let n = p.have().len();
        let mut held = vec![0u8; n.div_ceil(8) as usize];
        for i in (0..n).filter(|&i| p.availability(i) > 1) {
            held[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
        let mut order = Vec::new();
        while let Some(i) = p.pick_from_seeder(&Bitfield::full(p.have().len()), &held, 1, &mut rng)
        {
            p.mark_pending(i);
            order.push(i);
        }
        order
    }

    fn sharer(slot: u32, of: u32, n: u32) -> Picker {
        let mut p = Picker::new(Bitfield::new(n), Strategy::RarestFirst);
        p.set_partition(slot, of);
        p.set_share_floor(vec![0; of as usize]);
        p.add_peer(&Bitfield::full(n));
        p
    }

    #[test]
    fn from_a_seeder_own_share_comes_first_in_order() {
        let mut p = sharer(0, 3, 12);
        let order = drain_from_seeder(&mut p);
        assert_eq!(order[..4], [0, 3, 6, 9]);
        // Then its positions in the other shares (the other helper has the rest),
        // from the top, alternating between the shares with the most left.
        assert_eq!(order[4..8], [7, 11, 1, 5]);
        // Then the other helper's positions, from the bottom up (it works down).
        assert_eq!(order[8..], [4, 2, 10, 8]);
        let mut q = sharer(2, 3, 12);
        let theirs = drain_from_seeder(&mut q);
        assert_eq!(theirs[..4], [2, 5, 8, 11]);
        // The two helpers of share 1 (pieces 1, 4, 7, 10) split it between them.
        let mut share1: Vec<u32> = order[4..8]
            .iter()
            .chain(&theirs[4..8])
            .copied()
            .filter(|i| i % 3 == 1)
            .collect();
        share1.sort();
        assert_eq!(share1, vec![1, 4, 7, 10], "helpers overlap or leave gaps");
    }

    #[test]
    fn a_helper_no_seeder_serves_leaves_its_positions_to_the_others() {
        // Downloader 2 is choked by the seeder: downloader 0 is the only helper of
        // share 1 and takes all of it from the top, then all of share 2 after its own.
        let mut p = sharer(0, 3, 12);
        p.set_active(vec![true, true, false]);
        let order = drain_from_seeder(&mut p);
        assert_eq!(order[..4], [0, 3, 6, 9]);
        let share1: Vec<u32> = order.iter().copied().filter(|i| i % 3 == 1).collect();
        assert_eq!(share1, [10, 7, 4, 1]);
        // Served again: back to its half.
        let mut p = sharer(0, 3, 12);
        p.set_active(vec![true, true, false]);
        p.set_active_of(2, true);
        assert_eq!(drain_from_seeder(&mut p)[4..8], [7, 11, 1, 5]);
    }

    #[test]
    fn helpers_take_others_shares_from_the_top_and_not_the_same_piece() {
        // Share 1 (pieces 1, 4, 7, 10) is the furthest behind. Its helpers are the
        // owners of shares 0 and 2; each takes a different piece from its top.
        let mut firsts = Vec::new();
        for slot in [0, 2] {
            let mut p = sharer(slot, 3, 12);
            for i in (0..12).filter(|i| i % 3 != 1) {
                p.complete(i);
            }
            let mut rng = StdRng::seed_from_u64(1);
            firsts.push(p.pick_from_seeder(&Bitfield::full(12), &[0, 0], 1, &mut rng));
        }
        assert_eq!(firsts, vec![Some(7), Some(10)]);
        // The owner of share 1 is at work below piece 7: only 7 and 10 may be taken
        // (10 after our own positions, as the other helper's), all of share 2.
        let mut p = sharer(0, 3, 12);
        p.set_share_floor(vec![0, 7, 0]);
        let mut order = drain_from_seeder(&mut p);
        order.sort();
        assert_eq!(order, vec![0, 2, 3, 5, 6, 7, 8, 9, 10, 11]);
        // Of two shares, the one with more pieces left is helped first.
        let mut p = sharer(0, 3, 12);
        for i in [0, 3, 6, 9, 2, 5] {
            p.complete(i);
        }
        assert_eq!(drain_from_seeder(&mut p)[0] % 3, 1);
    }

    #[test]
    fn from_a_seeder_skips_pieces_a_downloader_has() {
        let mut p = sharer(0, 3, 12);
        // A downloader (not complete) has pieces 3 and 4: fetch them from it.
        p.add_peer(&bf(12, &[3, 4]));
        let order = drain_from_seeder(&mut p);
        assert_eq!(order, [0, 6, 9, 11, 7, 5, 1, 2, 10, 8]);
        // Once every piece has left the seeder, the rarest ones downloaders hold.
        let mut p = sharer(0, 3, 12);
        p.add_peer(&bf(12, &[1, 2, 3, 4, 5, 7, 8, 10, 11]));
        p.add_peer(&bf(12, &[1, 2, 4]));
        for i in [0, 6, 9] {
            p.complete(i);
        }
        let order = drain_from_seeder(&mut p);
        assert_eq!(order.len(), 9);
        let mut rarest = order[..6].to_vec();
        rarest.sort();
        assert_eq!(rarest, vec![3, 5, 7, 8, 10, 11]);
        // Counted as complete (a second seeder), it does not hide them.
        let mut rng = StdRng::seed_from_u64(0);
        let mut q = sharer(0, 3, 12);
        q.add_peer(&Bitfield::full(12));
        assert_eq!(
            q.pick_from_seeder(&Bitfield::full(12), &[0, 0], 2, &mut rng),
            Some(0)
        );
    }

    #[test]
    fn a_finished_downloader_is_asked_for_any_piece() {
        // A downloader that finished is not a seeder: its shares are all open to us
        // (regression: treating it as one left share pieces unrequestable forever).
        let mut rng = StdRng::seed_from_u64(3);
        let mut q = sharer(0, 3, 12);
        q.set_share_floor(vec![12, 12, 12]);
        let mut got = Vec::new();
        while let Some(i) = q.pick(&Bitfield::full(12), &mut rng) {
            q.mark_pending(i);
            got.push(i);
        }
        got.sort();
        assert_eq!(got, (0..12).collect::<Vec<_>>());
        assert_eq!(
            q.pick_from_seeder(&Bitfield::full(12), &[0, 0], 1, &mut rng),
            None
        );
    }

    #[test]
    fn a_spare_only_for_a_late_single_holder() {
        let ms = Duration::from_millis;
        let h = |waited, gap: Option<u64>| Holder {
            waited: ms(waited),
            gap: gap.map(ms),
        };
        // Never while a holder is on time, however idle the asking connection.
        assert!(!spare_due(&[h(100, Some(400))]));
        assert!(!spare_due(&[h(799, Some(400))]));
        assert!(spare_due(&[h(800, Some(400))]));
        // A fast holder is still given LATE_AT_LEAST.
        assert!(!spare_due(&[h(300, Some(10))]));
        assert!(spare_due(&[h(500, Some(10))]));
        // No delivery yet: LATE_UNKNOWN.
        assert!(!spare_due(&[h(1999, None)]));
        assert!(spare_due(&[h(2000, None)]));
        // Already a spare out: no third copy, late or not.
        assert!(!spare_due(&[h(9000, Some(10)), h(9000, Some(10))]));
        // A unit pending with no holder (asked of a neighbour since gone) may go.
        assert!(spare_due(&[]));
    }

    #[test]
    fn endgame_picks_pending_pieces_only() {
        let mut p = Picker::new(bf(8, &[0]), Strategy::RarestFirst);
        assert_eq!(p.unrequested_missing(), 7);
        for i in 1..8 {
            p.mark_pending(i);
        }
        assert_eq!(p.unrequested_missing(), 0);
        let mut rng = StdRng::seed_from_u64(1);
        let theirs = bf(8, &[0, 3, 4]);
        assert_eq!(p.pick(&theirs, &mut rng), None);
        assert_eq!(p.pick_endgame(&theirs, |i| i == 3, &mut rng), Some(4));
        assert_eq!(p.pick_endgame(&theirs, |i| i >= 3, &mut rng), None);
    }

    #[test]
    fn random_pick_is_uniform_enough() {
        let p = Picker::new(Bitfield::new(64), Strategy::Random);
        let theirs = Bitfield::full(64);
        let mut counts = [0u32; 64];
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..64_000 {
            counts[p.pick(&theirs, &mut rng).unwrap() as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (700..1300).contains(&c)),
            "{counts:?}"
        );
    }
}
