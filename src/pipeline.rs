//! Request pipelining: how many requests a downloader keeps outstanding at one
//! neighbour (default mode, PIPELINE negotiated).
//!
//! Why it follows what the neighbour sends us: every request we keep there waits in
//! its upload queue, and that queue is what every neighbour of it asks at once. With
//! a fixed depth, the queue at an uplink grows with the swarm and shrinks with the
//! link: 31 requesters x 256 KiB at 5 mbit held 13 s of a downloader's upload, and
//! twice that at the seeder. A request then waits that long, so the holders it was
//! tied to seconds earlier still owe it while other uplinks sit idle at the end, and
//! two downloaders' requests for the same block pile up at the seeder. Asking each
//! neighbour for about [`HORIZON_SECS`] of what it has been sending us keeps every
//! uplink's queue near that many seconds whatever the swarm's size and rates.
//!
//! Measured (bench/RESULTS.md, alternated with `bench/ab.sh`): N = 32 behind 5 mbit
//! with 32 KiB blocks, fixed depths 8 / 4 / 2 / 1 gave 1.220 / 1.192 / 1.183 / 1.166
//! of the bound; N = 16 behind 20 mbit with 64 KiB blocks, 4 / 2 gave 1.137 / 1.121.
//! Below 2 the swarms of 8 lost (1.138 against 1.108; 1.21-1.31 against 1.144 with 5
//! and 20 mbit downloaders), so 2 is the floor. This rule against the fixed depth:
//! N = 16 1.123-1.133 against 1.134-1.148 (4 rounds), N = 32 1.182 / 1.193 against
//! 1.212 / 1.238. At N <= 8 the ceiling is 2 blocks or 1 piece already, so nothing
//! changes there. The peer uses it only where it was measured to win ([`follows_rate`]):
//! every neighbour can be unchoked at once (k + 1 >= the other peers; at 4
//! preferred of 16 it lost), and units are blocks (with 16 KiB whole pieces at N = 16
//! it lost, see there).

/// How much of a neighbour's recent sending we keep asked of it.
pub const HORIZON_SECS: f64 = 1.0;

/// Fewest requests kept at a neighbour (when the cap allows). One alone cost 0.03
/// of the bound at N = 8 with equal caps and 0.07-0.16 with 5 and 20 mbit
/// downloaders, with more duplicates from the seeder: our reading is that a holder's
/// queue then runs dry while the next request is on its way.
pub const FLOOR: usize = 2;

/// Whether a peer's pipeline depth follows [`depth`] rather than staying fixed at the
/// cap: not when the user fixed it (`--pipeline-depth`), not when fewer than all the
/// other peers fit in k preferred + 1 optimistic unchoke slots, and not when units
/// are whole pieces (no BLOCKS layout).
///
/// Why whole pieces keep the fixed depth: where the rule won (N = 16 with 64 KiB
/// blocks, N = 32 with 32 KiB blocks) it sat at its floor of 2: a neighbour sends us
/// fewer than 3 blocks a second there. With 16 KiB pieces at N = 16 it works
/// above the floor (about 9 of 16). Our reading, not traced: there the depth follows
/// a rate that the depth itself bounds once requests wait as long as the horizon.
/// Alternated with the fixed
/// depth over six rounds it measured 1.127-1.186 (median 1.150) against 1.127-1.148
/// (1.142), with more seeder duplicates (bench/RESULTS.md, fifteenth session); a
/// fixed 9 measured 1.148 / 1.159, so the loss is not the shallower depth alone.
pub fn follows_rate(
    fixed_by_user: bool,
    preferred_neighbors: usize,
    other_peers: usize,
    blocks: bool,
) -> bool {
    !fixed_by_user && blocks && preferred_neighbors.saturating_add(1) >= other_peers
}

/// Requests to keep outstanding at a neighbour that sent us `bytes_per_sec` over the
/// last unchoking interval, in units of `unit` bytes: [`HORIZON_SECS`] of that,
/// rounded down, at least [`FLOOR`] and at most `cap` (the fixed depth, 256 KiB's
/// worth; the cap wins where it is below the floor).
pub fn depth(cap: usize, bytes_per_sec: u64, unit: u64) -> usize {
    let cap = cap.max(1);
    let want = (bytes_per_sec as f64 * HORIZON_SECS / unit.max(1) as f64).floor();
    let floor = FLOOR.min(cap);
    if want >= cap as f64 {
        cap
    } else {
        (want as usize).max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;

    #[test]
    fn nothing_measured_yet_asks_the_floor() {
        assert_eq!(depth(4, 0, 64 * K), 2);
        assert_eq!(depth(8, 0, 32 * K), 2);
        // Whole 256 KiB pieces: the cap is one.
        assert_eq!(depth(1, 0, 256 * K), 1);
        assert_eq!(depth(0, 0, 64 * K), 1);
    }

    #[test]
    fn follows_a_second_of_the_neighbours_rate() {
        // N = 16 behind 20 mbit: we take in about 2.4 MB/s of payload from 16
        // senders, 150 kB/s each; a much busier second asks one more.
        assert_eq!(depth(4, 150_000, 64 * K), 2);
        assert_eq!(depth(4, 200_000, 64 * K), 3);
        // N = 32 behind 5 mbit, 32 KiB blocks: 1/31 of 625 kB/s; the floor.
        assert_eq!(depth(8, 625_000 / 31, 32 * K), 2);
        // 16 KiB pieces at N = 8: 300 kB/s is 18 of them, capped.
        assert_eq!(depth(16, 300_000, 16 * K), 16);
        assert_eq!(depth(16, 100_000, 16 * K), 6);
    }

    #[test]
    fn never_deeper_than_the_cap() {
        // Loopback: gigabytes a second.
        assert_eq!(depth(2, 1_000_000_000, 128 * K), 2);
        assert_eq!(depth(16, u64::MAX, 16 * K), 16);
        assert_eq!(depth(3, 10_000_000, 0), 3);
    }

    #[test]
    fn follows_the_rate_only_where_it_was_measured() {
        // The cluster setting with blocks: 16 preferred of 16 others.
        assert!(follows_rate(false, 16, 16, true));
        assert!(follows_rate(false, 15, 16, true));
        // --pipeline-depth given.
        assert!(!follows_rate(true, 16, 16, true));
        // 4 preferred + 1 optimistic of 16.
        assert!(!follows_rate(false, 4, 16, true));
        // Whole pieces (16 KiB pieces, or blocks off).
        assert!(!follows_rate(false, 16, 16, false));
        // A two-peer swarm.
        assert!(follows_rate(false, 0, 1, true));
    }
}
