//! The piece bitfield (SPEC A4): which pieces a peer has, in wire bit order.
//!
//! Byte 0 holds pieces 0..7 from the high bit to the low bit; spare bits at the end
//! must be zero. The same type is used for our own pieces and for each neighbour's.

/// A fixed-length set of piece indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    count: u32,
}

/// Why a received bitfield payload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BitfieldError {
    #[error("bitfield is {got} bytes, expected {expected} for {pieces} pieces")]
    WrongLength {
        got: usize,
        expected: usize,
        pieces: u32,
    },
    #[error("bitfield has spare bits set after piece {pieces}")]
    SpareBits { pieces: u32 },
}

impl Bitfield {
    /// All-zero bitfield for `len` pieces.
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            bytes: vec![0; Self::byte_len(len)],
            len,
            count: 0,
        }
    }

    /// Bitfield with every piece set.
    pub fn full(len: u32) -> Bitfield {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    pub fn byte_len(len: u32) -> usize {
        (len as usize).div_ceil(8)
    }

    /// Parses a payload received on the wire, checking length and spare bits.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Bitfield, BitfieldError> {
        let expected = Self::byte_len(len);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength {
                got: bytes.len(),
                expected,
                pieces: len,
            });
        }
        let spare = (expected as u64 * 8 - len as u64) as u32;
        if spare > 0 {
            let mask = (1u8 << spare) - 1;
            if bytes[expected - 1] & mask != 0 {
                return Err(BitfieldError::SpareBits { pieces: len });
            }
        }
        let count = bytes.iter().map(|b| b.count_ones()).sum();
        Ok(Bitfield {
            bytes: bytes.to_vec(),
            len,
            count,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pieces set.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_complete(&self) -> bool {
        self.count == self.len
    }

    pub fn has(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Sets piece `i`; returns true if it was not set before. Out of range is a no-op.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.has(i) {
            return false;
        }
        self.bytes[(i / 8) as usize] |= 0x80 >> (i % 8);
        self.count += 1;
        true
    }

    /// Clears piece `i`; returns true if it was set.
    pub fn clear(&mut self, i: u32) -> bool {
        if !self.has(i) {
            return false;
        }
        self.bytes[(i / 8) as usize] &= !(0x80 >> (i % 8));
        self.count -= 1;
        true
    }

    /// Whether `other` has at least one piece that `self` lacks.
    pub fn lacks_any_of(&self, other: &Bitfield) -> bool {
        self.bytes
            .iter()
            .zip(other.bytes.iter())
            .any(|(mine, theirs)| theirs & !mine != 0)
    }

    /// Indices set in this bitfield.
    pub fn iter_set(&self) -> impl Iterator<Item = u32> + '_ {
        self.bytes.iter().enumerate().flat_map(move |(bi, &b)| {
            (0..8u32).filter_map(move |bit| {
                let i = bi as u32 * 8 + bit;
                (b & (0x80 >> bit) != 0 && i < self.len).then_some(i)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_order_is_high_bit_first() {
        let mut b = Bitfield::new(10);
        b.set(0);
        b.set(7);
        b.set(8);
        assert_eq!(b.as_bytes(), &[0b1000_0001, 0b1000_0000]);
        assert_eq!(b.count(), 3);
        assert!(b.has(7) && !b.has(6) && !b.has(10));
        assert_eq!(b.iter_set().collect::<Vec<_>>(), vec![0, 7, 8]);
    }

    #[test]
    fn full_has_zero_spare_bits() {
        assert_eq!(Bitfield::full(10).as_bytes(), &[0xff, 0xc0]);
        assert_eq!(Bitfield::full(8).as_bytes(), &[0xff]);
        assert!(Bitfield::full(13).is_complete());
    }

    #[test]
    fn from_bytes_checks_length_and_spare_bits() {
        assert!(Bitfield::from_bytes(&[0xff, 0xc0], 10).is_ok());
        assert_eq!(
            Bitfield::from_bytes(&[0xff, 0xe0], 10),
            Err(BitfieldError::SpareBits { pieces: 10 })
        );
        assert!(matches!(
            Bitfield::from_bytes(&[0xff], 10),
            Err(BitfieldError::WrongLength { .. })
        ));
        let b = Bitfield::from_bytes(&[0x40, 0x40], 10).unwrap();
        assert_eq!(b.iter_set().collect::<Vec<_>>(), vec![1, 9]);
        assert_eq!(b.count(), 2);
    }

    #[test]
    fn interest() {
        let mut mine = Bitfield::new(10);
        let mut theirs = Bitfield::new(10);
        assert!(!mine.lacks_any_of(&theirs));
        theirs.set(9);
        assert!(mine.lacks_any_of(&theirs));
        mine.set(9);
        assert!(!mine.lacks_any_of(&theirs));
        assert!(mine.clear(9));
        assert!(!mine.clear(9));
        assert_eq!(mine.count(), 0);
    }
}
