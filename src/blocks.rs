//! Blocks: the sub-piece units two p2pshare peers trade once both advertised the
//! BLOCKS extension (SPEC B), and how each block is verified on its own.
//!
//! Why: with whole pieces a downloader can relay nothing until a whole piece has
//! arrived, and the last piece the seeder sends must then go from its one holder to
//! every other peer (N-1 pieces' time at the end of every run). Blocks, spread over
//! downloaders like pieces are, shorten both ends of a run by the ratio of the sizes.
//!
//! The default size ([`auto_block_size`]) trades the tail against CPU. The last block
//! the seeder sends reaches the other D-1 downloaders after about (D-1) x block /
//! upload, so smaller blocks shorten the end of a run in proportion to the swarm's
//! size; but every block costs messages, wake-ups and system calls. Measured at 256
//! KiB pieces (bench/RESULTS.md): N = 16 behind 20 mbit caps, 64 KiB blocks 1.13 x the
//! bound, 128 KiB 1.155, whole pieces 1.19; N = 8, 64 and 128 KiB tie (1.10-1.11);
//! N = 4, blocks gain nothing; loopback (CPU-bound, 1 GiB to 7 peers), 64 KiB 15 s,
//! 128 KiB 9.5 s, whole pieces 8 s.
//!
//! The swarm counts in *units*: unit `u` is block `u % per_piece` of piece
//! `u / per_piece`, numbered contiguously (the short last piece may have fewer
//! blocks). With blocks off, `per_piece` is 1 and a unit is a piece.
//!
//! Verification uses BLAKE3's tree: the manifest's hash of a piece is the root of a
//! tree whose subtrees are the piece's blocks (blocks are a power of two of 1 KiB
//! chunks, so every block is a whole subtree). A block travels with the chaining
//! values (CVs) of all blocks of its piece; the receiver checks that the CVs merge
//! to the manifest's root and that its block hashes to its CV. A block is therefore
//! verified when it arrives, before it is written or relayed.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

/// Smallest block [`auto_block_size`] chooses: reached from 18 downloaders on.
/// At N = 32 behind 5 mbit, 32 KiB blocks gave 1.243 / 1.255 against 1.310 for
/// 64 KiB, alternated (bench/RESULTS.md), at about 1.5 x the CPU. Smaller blocks
/// cost a message per block and neighbour, which is what a peer's CPU goes to.
pub const MIN_AUTO_BLOCK: u32 = 32 * 1024;

/// What the last block's trip to every other downloader may cost, in bytes of one
/// downloader's upload: 1 MiB, 0.4 s at 20 mbit.
const TAIL_BUDGET: u32 = 1 << 20;

/// The block size when `--block-size` is not given: the largest power of two, at
/// least [`MIN_AUTO_BLOCK`], with (downloaders - 1) x block within 1 MiB; 0 (whole pieces) when
/// that is not smaller than a piece. Every peer computes it from the same
/// PeerInfo.cfg and Common.cfg, so they agree on BLOCKS without being told.
pub fn auto_block_size(piece_size: u32, downloaders: usize) -> u32 {
    let others = downloaders.saturating_sub(1).max(1) as u32;
    let budget = TAIL_BUDGET / others;
    let mut block = MIN_AUTO_BLOCK;
    while block.saturating_mul(2) <= budget {
        block *= 2;
    }
    if block >= piece_size {
        0
    } else {
        block
    }
}

/// Chaining value of one block.
pub type Cv = ChainingValue;

/// How a file of `total` bytes in pieces of `piece_size` splits into units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    total: u64,
    piece_size: u32,
    /// Bytes per block; equal to `piece_size` when blocks are off.
    block_size: u32,
    per_piece: u32,
    pieces: u32,
    units: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockSizeError {
    #[error("block size {0} is not a power of two of at least 1024 bytes")]
    NotPowerOfTwo(u32),
}

/// Checks a block size: a power of two, at least one BLAKE3 chunk (1 KiB).
pub fn check_block_size(size: u32) -> Result<(), BlockSizeError> {
    if size >= 1024 && size.is_power_of_two() {
        Ok(())
    } else {
        Err(BlockSizeError::NotPowerOfTwo(size))
    }
}

impl Layout {
    /// Whole pieces only.
    pub fn pieces_only(total: u64, piece_size: u32) -> Layout {
        Layout::new(total, piece_size, 0)
    }

    /// `block_size` 0, or not smaller than a piece: whole pieces. Otherwise it must
    /// pass [`check_block_size`].
    pub fn new(total: u64, piece_size: u32, block_size: u32) -> Layout {
        let piece_size = piece_size.max(1);
        let pieces = total.div_ceil(piece_size as u64).min(u32::MAX as u64) as u32;
        let block_size = if block_size == 0 || block_size >= piece_size {
            piece_size
        } else {
            block_size
        };
        let per_piece = piece_size.div_ceil(block_size);
        let mut l = Layout {
            total,
            piece_size,
            block_size,
            per_piece,
            pieces,
            units: 0,
        };
        l.units = match pieces {
            0 => 0,
            p => ((p - 1) as u64 * per_piece as u64 + l.blocks_in(p - 1) as u64)
                .min(u32::MAX as u64) as u32,
        };
        l
    }

    /// Blocks are in use (more than one unit per piece).
    pub fn has_blocks(&self) -> bool {
        self.per_piece > 1
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn pieces(&self) -> u32 {
        self.pieces
    }

    pub fn units(&self) -> u32 {
        self.units
    }

    /// Bytes of piece `p`.
    pub fn piece_len(&self, p: u32) -> u32 {
        let start = p as u64 * self.piece_size as u64;
        (self.total.saturating_sub(start)).min(self.piece_size as u64) as u32
    }

    /// Blocks of piece `p` (the short last piece may have fewer).
    pub fn blocks_in(&self, p: u32) -> u32 {
        self.piece_len(p).div_ceil(self.block_size)
    }

    /// The units of piece `p`.
    pub fn units_of(&self, p: u32) -> std::ops::Range<u32> {
        let first = p * self.per_piece;
        first..first + self.blocks_in(p)
    }

    /// The piece unit `u` belongs to.
    pub fn piece_of(&self, u: u32) -> u32 {
        u / self.per_piece
    }

    /// Unit `u` as (piece, block).
    pub fn split(&self, u: u32) -> (u32, u32) {
        (u / self.per_piece, u % self.per_piece)
    }

    /// Unit of (piece, block), if both are in range.
    pub fn unit(&self, piece: u32, block: u32) -> Option<u32> {
        (piece < self.pieces && block < self.blocks_in(piece))
            .then(|| piece * self.per_piece + block)
    }

    /// Offset of unit `u` within its piece, and its length.
    pub fn unit_range_in_piece(&self, u: u32) -> (u32, u32) {
        let (p, b) = self.split(u);
        let off = b * self.block_size;
        (off, (self.piece_len(p) - off).min(self.block_size))
    }

    /// Offset of unit `u` in the file.
    pub fn unit_offset(&self, u: u32) -> u64 {
        let (p, _) = self.split(u);
        p as u64 * self.piece_size as u64 + self.unit_range_in_piece(u).0 as u64
    }

    /// Bytes of unit `u`.
    pub fn unit_len(&self, u: u32) -> u32 {
        self.unit_range_in_piece(u).1
    }
}

/// The chaining values of every block of a piece, from the whole piece's bytes.
pub fn piece_cvs(piece: &[u8], block_size: u32) -> Vec<Cv> {
    piece
        .chunks(block_size.max(1) as usize)
        .enumerate()
        .map(|(b, data)| block_cv(data, b as u64 * block_size as u64))
        .collect()
}

/// Chaining value of the block at byte `offset` of its piece.
pub fn block_cv(data: &[u8], offset: u64) -> Cv {
    blake3::Hasher::new()
        .set_input_offset(offset)
        .update(data)
        .finalize_non_root()
}

/// The piece hash (as `blake3::hash` of the whole piece) that the blocks' chaining
/// values merge to. `cvs` must hold at least two CVs, one per block, in order;
/// `piece_len` is the piece's length in bytes.
pub fn root_of(cvs: &[Cv], piece_len: u64, block_size: u32) -> Option<[u8; 32]> {
    if cvs.len() < 2 || piece_len.div_ceil(block_size as u64) != cvs.len() as u64 {
        return None;
    }
    let left = left_subtree_len(piece_len);
    let split = (left / block_size as u64) as usize;
    let l = subtree(&cvs[..split], left, block_size);
    let r = subtree(&cvs[split..], piece_len - left, block_size);
    Some(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes())
}

fn subtree(cvs: &[Cv], len: u64, block_size: u32) -> Cv {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = left_subtree_len(len);
    let split = (left / block_size as u64) as usize;
    merge_subtrees_non_root(
        &subtree(&cvs[..split], left, block_size),
        &subtree(&cvs[split..], len - left, block_size),
        Mode::Hash,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_numbers_units_contiguously_with_a_short_last_piece() {
        // 3 pieces of 256 KiB, the last one 100 KiB: 4 + 4 + 2 units.
        let l = Layout::new(2 * 262144 + 102400, 262144, 65536);
        assert!(l.has_blocks());
        assert_eq!(l.pieces(), 3);
        assert_eq!(l.units(), 10);
        assert_eq!(l.units_of(2), 8..10);
        assert_eq!(l.split(9), (2, 1));
        assert_eq!(l.unit_len(9), 102400 - 65536);
        assert_eq!(l.unit_offset(9), 2 * 262144 + 65536);
        assert_eq!(l.unit(2, 2), None);
        assert_eq!(l.unit(3, 0), None);
        assert_eq!(l.unit(1, 3), Some(7));
        let whole = Layout::pieces_only(1000, 300);
        assert!(!whole.has_blocks());
        assert_eq!(whole.units(), 4);
        assert_eq!(whole.unit_len(3), 100);
        assert_eq!(Layout::new(1000, 300, 4096), whole);
    }

    #[test]
    fn the_default_block_keeps_the_tail_within_a_mebibyte() {
        let k = 1024;
        assert_eq!(auto_block_size(256 * k, 16), 64 * k);
        assert_eq!(auto_block_size(256 * k, 8), 128 * k);
        assert_eq!(auto_block_size(256 * k, 7), 128 * k);
        assert_eq!(auto_block_size(256 * k, 4), 0);
        assert_eq!(auto_block_size(256 * k, 1), 0);
        assert_eq!(auto_block_size(1024 * k, 4), 256 * k);
        assert_eq!(auto_block_size(256 * k, 17), 64 * k);
        assert_eq!(auto_block_size(256 * k, 18), 32 * k);
        assert_eq!(auto_block_size(256 * k, 32), 32 * k);
        assert_eq!(auto_block_size(1024 * k, 100), 32 * k);
        assert_eq!(auto_block_size(64 * k, 16), 0);
        assert_eq!(auto_block_size(16 * k, 6), 0);
    }

    #[test]
    fn block_sizes_must_be_powers_of_two_of_a_chunk_or_more() {
        assert!(check_block_size(65536).is_ok());
        assert!(check_block_size(1024).is_ok());
        assert!(check_block_size(512).is_err());
        assert!(check_block_size(3000).is_err());
    }

    #[test]
    fn a_changed_block_or_cv_no_longer_matches_the_root() {
        let piece: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let want = *blake3::hash(&piece).as_bytes();
        let mut cvs = piece_cvs(&piece, 65536);
        assert_eq!(root_of(&cvs, piece.len() as u64, 65536), Some(want));
        let mut bad = piece[65536..131072].to_vec();
        bad[5] ^= 1;
        assert_ne!(block_cv(&bad, 65536), cvs[1]);
        cvs[3][0] ^= 1;
        assert_ne!(root_of(&cvs, piece.len() as u64, 65536), Some(want));
        assert_eq!(root_of(&cvs[..3], piece.len() as u64, 65536), None);
    }

    proptest! {
        #[test]
        fn block_cvs_merge_to_the_piece_hash(
            len in 1025usize..300_000,
            shift in 10u32..17,
            seed in any::<u8>(),
        ) {
            let bs = 1u32 << shift;
            prop_assume!((len as u64) > bs as u64);
            let piece: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            let cvs = piece_cvs(&piece, bs);
            prop_assert_eq!(root_of(&cvs, len as u64, bs), Some(*blake3::hash(&piece).as_bytes()));
        }
    }
}
