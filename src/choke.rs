//! Choking decisions (SPEC A5.3): who may download from us.
//!
//! Pure logic: the caller supplies each neighbour's interest and the bytes it sent us
//! during the last interval, plus a seeded RNG, and applies the returned decision
//! (messages and log lines). No clock here: the caller decides when an interval ends.

use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeSet;

/// What the swarm knows about one neighbour when deciding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: u32,
    /// The neighbour told us it is interested in our pieces.
    pub interested: bool,
    /// Piece bytes received from it during the last unchoking interval.
    pub rate: u64,
}

/// Messages to send and lines to log after one decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub unchoke: Vec<u32>,
    pub choke: Vec<u32>,
    /// `Some(list)` when the preferred set changed (for the log).
    pub preferred_changed: Option<Vec<u32>>,
    /// `Some(id)` when the optimistic neighbour changed (for the log).
    pub optimistic_changed: Option<u32>,
}

/// The unchoked set: k preferred plus one optimistic neighbour.
#[derive(Clone, Debug, Default)]
pub struct Choker {
    preferred: BTreeSet<u32>,
    optimistic: Option<u32>,
}

/// Picks the k preferred neighbours among the interested: highest rate first with ties
/// broken at random, or uniformly at random when we already have the whole file.
pub fn pick_preferred<R: Rng>(
    cands: &[Candidate],
    k: usize,
    complete: bool,
    rng: &mut R,
) -> Vec<u32> {
    let mut pool: Vec<Candidate> = cands.iter().copied().filter(|c| c.interested).collect();
    // Shuffle first so that the stable sort leaves equal rates in random order.
    pool.shuffle(rng);
    if !complete {
        pool.sort_by_key(|c| std::cmp::Reverse(c.rate));
    }
    pool.truncate(k);
    pool.into_iter().map(|c| c.id).collect()
}

impl Choker {
    pub fn is_unchoked(&self, id: u32) -> bool {
        self.preferred.contains(&id) || self.optimistic == Some(id)
    }

    pub fn preferred(&self) -> impl Iterator<Item = u32> + '_ {
        self.preferred.iter().copied()
    }

    pub fn optimistic(&self) -> Option<u32> {
        self.optimistic
    }

    /// The every-UnchokingInterval decision.
    pub fn rechoke<R: Rng>(
        &mut self,
        cands: &[Candidate],
        k: usize,
        complete: bool,
        rng: &mut R,
    ) -> Decision {
        let picked: BTreeSet<u32> = pick_preferred(cands, k, complete, rng)
            .into_iter()
            .collect();
        self.apply_preferred(picked)
    }

    /// Replaces the preferred set, unchoking only the newly unchoked and choking only
    /// those that lose their slot (the optimistic one keeps its own).
    pub fn apply_preferred(&mut self, picked: BTreeSet<u32>) -> Decision {
        let mut d = Decision::default();
        for &id in &picked {
            if !self.is_unchoked(id) {
                d.unchoke.push(id);
            }
        }
        for &id in &self.preferred {
            if !picked.contains(&id) && self.optimistic != Some(id) {
                d.choke.push(id);
            }
        }
        if picked != self.preferred {
            d.preferred_changed = Some(picked.iter().copied().collect());
        }
        self.preferred = picked;
        d
    }

    /// The every-OptimisticUnchokingInterval decision: one random neighbour among the
    /// choked and interested. With none to pick, the current one stays if still
    /// interested.
    pub fn rotate_optimistic<R: Rng>(&mut self, cands: &[Candidate], rng: &mut R) -> Decision {
        let pool: Vec<u32> = cands
            .iter()
            .filter(|c| c.interested && !self.is_unchoked(c.id))
            .map(|c| c.id)
            .collect();
        let mut d = Decision::default();
        let old = self.optimistic;
        let new = match pool.choose(rng) {
            Some(&id) => Some(id),
            None => old.filter(|o| cands.iter().any(|c| c.id == *o && c.interested)),
        };
        if new == old {
            return d;
        }
        if let Some(o) = old {
            if !self.preferred.contains(&o) {
                d.choke.push(o);
            }
        }
        if let Some(n) = new {
            d.unchoke.push(n);
            d.optimistic_changed = Some(n);
        }
        self.optimistic = new;
        d
    }

    /// Default-mode shortcut: an interested neighbour takes a free preferred slot at
    /// once instead of waiting up to an interval (A5's limit of k still holds).
    pub fn take_free_slot(&mut self, id: u32, k: usize) -> Decision {
        if self.is_unchoked(id) || self.preferred.len() >= k {
            return Decision::default();
        }
        let mut picked = self.preferred.clone();
        picked.insert(id);
        self.apply_preferred(picked)
    }

    /// Forgets a neighbour whose connection closed.
    pub fn remove(&mut self, id: u32) {
        self.preferred.remove(&id);
        if self.optimistic == Some(id) {
            self.optimistic = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn c(id: u32, interested: bool, rate: u64) -> Candidate {
        Candidate {
            id,
            interested,
            rate,
        }
    }

    #[test]
    fn picks_k_fastest_interested() {
        let mut rng = StdRng::seed_from_u64(1);
        let cands = [
            c(1, true, 10),
            c(2, true, 50),
            c(3, false, 999),
            c(4, true, 30),
            c(5, true, 0),
        ];
        let mut got = pick_preferred(&cands, 2, false, &mut rng);
        got.sort();
        assert_eq!(got, vec![2, 4]);
        assert_eq!(
            pick_preferred(&cands, 0, false, &mut rng),
            Vec::<u32>::new()
        );
        let mut all = pick_preferred(&cands, 10, false, &mut rng);
        all.sort();
        assert_eq!(all, vec![1, 2, 4, 5]);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let cands = [c(1, true, 5), c(2, true, 5), c(3, true, 5), c(4, true, 9)];
        let mut seen = BTreeSet::new();
        for seed in 0..64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let got = pick_preferred(&cands, 2, false, &mut rng);
            assert_eq!(got[0], 4, "the fastest always wins");
            seen.insert(got[1]);
        }
        assert_eq!(seen, [1, 2, 3].into_iter().collect());
    }

    #[test]
    fn random_when_complete_ignores_rate() {
        let cands = [
            c(1, true, 1000),
            c(2, true, 0),
            c(3, true, 0),
            c(4, false, 0),
        ];
        let mut seen = BTreeSet::new();
        for seed in 0..64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let got = pick_preferred(&cands, 1, true, &mut rng);
            assert_ne!(got, vec![4]);
            seen.insert(got[0]);
        }
        assert_eq!(seen, [1, 2, 3].into_iter().collect());
    }

    #[test]
    fn rechoke_sends_only_changes() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut ch = Choker::default();
        let d = ch.rechoke(
            &[c(1, true, 9), c(2, true, 5), c(3, true, 1)],
            2,
            false,
            &mut rng,
        );
        assert_eq!(d.unchoke, vec![1, 2]);
        assert!(d.choke.is_empty());
        assert_eq!(d.preferred_changed, Some(vec![1, 2]));
        // Same winners: nothing to send, nothing to log.
        let d = ch.rechoke(
            &[c(1, true, 9), c(2, true, 5), c(3, true, 1)],
            2,
            false,
            &mut rng,
        );
        assert_eq!(d, Decision::default());
        // 3 overtakes 2.
        let d = ch.rechoke(
            &[c(1, true, 9), c(2, true, 1), c(3, true, 5)],
            2,
            false,
            &mut rng,
        );
        assert_eq!(d.unchoke, vec![3]);
        assert_eq!(d.choke, vec![2]);
        assert_eq!(d.preferred_changed, Some(vec![1, 3]));
    }

    #[test]
    fn optimistic_is_chosen_among_choked_interested_and_survives_rechoke() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut ch = Choker::default();
        let cands = [c(1, true, 9), c(2, false, 0), c(3, true, 0)];
        ch.rechoke(&cands, 1, false, &mut rng);
        let d = ch.rotate_optimistic(&cands, &mut rng);
        assert_eq!(d.unchoke, vec![3], "only 3 is choked and interested");
        assert_eq!(d.optimistic_changed, Some(3));
        assert!(ch.is_unchoked(3));
        // 3 becomes preferred and 1 drops out; 3 is not unchoked twice.
        let cands = [c(1, true, 0), c(2, false, 0), c(3, true, 9)];
        let d = ch.rechoke(&cands, 1, false, &mut rng);
        assert!(d.unchoke.is_empty());
        assert_eq!(d.choke, vec![1]);
        // Next round: 1 is the only choked-interested one; 3 stays (preferred).
        let d = ch.rotate_optimistic(&cands, &mut rng);
        assert_eq!(d.unchoke, vec![1]);
        assert!(d.choke.is_empty());
        assert!(ch.is_unchoked(3) && ch.is_unchoked(1) && !ch.is_unchoked(2));
    }

    #[test]
    fn optimistic_stays_when_nobody_else_qualifies_and_goes_when_uninterested() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut ch = Choker::default();
        let d = ch.rotate_optimistic(&[c(5, true, 0)], &mut rng);
        assert_eq!(d.unchoke, vec![5]);
        let d = ch.rotate_optimistic(&[c(5, true, 0)], &mut rng);
        assert_eq!(d, Decision::default());
        let d = ch.rotate_optimistic(&[c(5, false, 0)], &mut rng);
        assert_eq!(d.choke, vec![5]);
        assert_eq!(ch.optimistic(), None);
        ch.remove(5);
    }

    #[test]
    fn free_slots_are_taken_at_once_but_never_beyond_k() {
        let mut ch = Choker::default();
        let d = ch.take_free_slot(1, 2);
        assert_eq!(d.unchoke, vec![1]);
        assert_eq!(d.preferred_changed, Some(vec![1]));
        assert_eq!(ch.take_free_slot(1, 2), Decision::default());
        assert_eq!(ch.take_free_slot(2, 2).unchoke, vec![2]);
        assert_eq!(ch.take_free_slot(3, 2), Decision::default());
        assert!(!ch.is_unchoked(3));
    }

    #[test]
    fn never_more_than_k_plus_one_unchoked() {
        for seed in 0..50u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut ch = Choker::default();
            let mut unchoked = BTreeSet::new();
            for round in 0..30u64 {
                let cands: Vec<Candidate> = (1..=8)
                    .map(|id| c(id, rng.gen_bool(0.7), rng.gen_range(0..100)))
                    .collect();
                let d = if round % 3 == 0 {
                    ch.rotate_optimistic(&cands, &mut rng)
                } else {
                    ch.rechoke(&cands, 3, seed % 2 == 0, &mut rng)
                };
                for id in d.choke {
                    assert!(unchoked.remove(&id), "choke sent to a choked peer");
                }
                for id in d.unchoke {
                    assert!(unchoked.insert(id), "unchoke sent twice");
                }
                assert!(unchoked.len() <= 4);
                let expect: BTreeSet<u32> = (1..=8).filter(|&i| ch.is_unchoked(i)).collect();
                assert_eq!(unchoked, expect);
            }
        }
    }
}
