//! The 32-byte handshake (SPEC A3) and the extension bits p2pshare hides in its
//! reserved bytes (SPEC B).
//!
//! Layout: `P2PFILESHARINGPROJ` (18 bytes), 10 reserved bytes, 4-byte big-endian peer ID.
//! A plain peer sends zeros in the reserved bytes. p2pshare advertises extensions as
//! `b"p2ps"`, a flags byte (1 PIPELINE, 2 BLOCKS, 4 CANCEL), then (with BLOCKS) the
//! block size as a power of two, then zeros; anything else non-zero (an unknown
//! implementation's private use) is read as "no extensions we know".

pub const HEADER: &[u8; 18] = b"P2PFILESHARINGPROJ";
pub const LEN: usize = 32;
const MAGIC: &[u8; 4] = b"p2ps";

/// Extensions a peer advertises. Used on a connection only when both sides have it.
/// `.0` holds the flags; `.1` is log2 of the block size when BLOCKS is set (0
/// otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extensions(pub u8, pub u8);

impl Extensions {
    pub const NONE: Extensions = Extensions(0, 0);
    /// Several outstanding requests per connection (SPEC B, "pipeline").
    pub const PIPELINE: Extensions = Extensions(1, 0);
    const BLOCKS_FLAG: u8 = 2;
    /// `cancel-block`: a request for a block may be withdrawn. Only with BLOCKS.
    pub const CANCEL: Extensions = Extensions(4, 0);

    /// Sub-piece blocks of `size` bytes (a power of two, see `blocks.rs`): the
    /// `have-block`, `request-block` and `block` messages.
    pub fn blocks(size: u32) -> Extensions {
        Extensions(Self::BLOCKS_FLAG, size.trailing_zeros() as u8)
    }

    /// The block size, when BLOCKS is among these extensions.
    pub fn block_size(self) -> Option<u32> {
        (self.0 & Self::BLOCKS_FLAG != 0 && self.1 < 32).then(|| 1u32 << self.1)
    }

    pub fn with(self, other: Extensions) -> Extensions {
        Extensions(self.0 | other.0, self.1 | other.1)
    }

    /// Flags of `other` all present (the block size is not compared).
    pub fn contains(self, other: Extensions) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// What both sides can use: BLOCKS only when both chose the same block size,
    /// CANCEL only with BLOCKS.
    pub fn intersect(self, other: Extensions) -> Extensions {
        let mut flags = self.0 & other.0;
        if self.1 != other.1 {
            flags &= !Self::BLOCKS_FLAG;
        }
        if flags & Self::BLOCKS_FLAG == 0 {
            flags &= !Self::CANCEL.0;
        }
        let shift = if flags & Self::BLOCKS_FLAG != 0 {
            self.1
        } else {
            0
        };
        Extensions(flags, shift)
    }

    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub peer_id: u32,
    pub extensions: Extensions,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("wrong handshake header {0:?} (expected \"P2PFILESHARINGPROJ\")")]
    WrongHeader(String),
}

impl Handshake {
    pub fn plain(peer_id: u32) -> Handshake {
        Handshake {
            peer_id,
            extensions: Extensions::NONE,
        }
    }

    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..18].copy_from_slice(HEADER);
        if !self.extensions.is_none() {
            out[18..22].copy_from_slice(MAGIC);
            out[22] = self.extensions.0;
            out[23] = self.extensions.1;
        }
        out[28..].copy_from_slice(&self.peer_id.to_be_bytes());
        out
    }

    pub fn parse(bytes: &[u8; LEN]) -> Result<Handshake, HandshakeError> {
        if &bytes[..18] != HEADER {
            return Err(HandshakeError::WrongHeader(
                String::from_utf8_lossy(&bytes[..18]).into_owned(),
            ));
        }
        let reserved = &bytes[18..28];
        // The block-size byte is set exactly when BLOCKS is; anything else is not
        // ours.
        let (flags, shift) = (reserved[4], reserved[5]);
        let ours = &reserved[..4] == MAGIC
            && reserved[6..].iter().all(|&b| b == 0)
            && flags != 0
            && (flags & Extensions::BLOCKS_FLAG != 0) == (shift != 0);
        let extensions = if ours {
            Extensions(flags, shift)
        } else {
            Extensions::NONE
        };
        let peer_id = u32::from_be_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]);
        Ok(Handshake {
            peer_id,
            extensions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_handshake_is_header_zeros_and_id() {
        let b = Handshake::plain(1001).encode();
        assert_eq!(&b[..18], b"P2PFILESHARINGPROJ");
        assert_eq!(&b[18..28], &[0u8; 10]);
        assert_eq!(&b[28..], &[0, 0, 0x03, 0xe9]);
        assert_eq!(Handshake::parse(&b), Ok(Handshake::plain(1001)));
    }

    #[test]
    fn extensions_round_trip() {
        let h = Handshake {
            peer_id: u32::MAX,
            extensions: Extensions::PIPELINE,
        };
        let b = h.encode();
        assert_eq!(&b[18..22], b"p2ps");
        assert_eq!(Handshake::parse(&b), Ok(h));
    }

    #[test]
    fn blocks_are_agreed_only_on_the_same_block_size() {
        let a = Extensions::PIPELINE.with(Extensions::blocks(65536));
        let h = Handshake {
            peer_id: 9,
            extensions: a,
        };
        assert_eq!(Handshake::parse(&h.encode()), Ok(h));
        assert_eq!(a.intersect(a).block_size(), Some(65536));
        let b = Extensions::PIPELINE.with(Extensions::blocks(32768));
        assert_eq!(a.intersect(b), Extensions::PIPELINE);
        assert_eq!(a.intersect(Extensions::PIPELINE), Extensions::PIPELINE);
        assert_eq!(Extensions::PIPELINE.block_size(), None);
    }

    #[test]
    fn cancel_is_agreed_only_with_blocks_on_both_sides() {
        let a = Extensions::PIPELINE.with(Extensions::blocks(65536));
        let ac = a.with(Extensions::CANCEL);
        let h = Handshake {
            peer_id: 9,
            extensions: ac,
        };
        assert_eq!(Handshake::parse(&h.encode()), Ok(h));
        assert!(ac.intersect(ac).contains(Extensions::CANCEL));
        assert_eq!(ac.intersect(ac).block_size(), Some(65536));
        // The other side lacks CANCEL (an older p2pshare): BLOCKS without it.
        assert_eq!(ac.intersect(a), a);
        assert_eq!(a.intersect(ac), a);
        // A different block size: no BLOCKS, so no CANCEL either.
        let bc = Extensions::PIPELINE
            .with(Extensions::blocks(32768))
            .with(Extensions::CANCEL);
        assert_eq!(ac.intersect(bc), Extensions::PIPELINE);
        // CANCEL advertised without BLOCKS is never agreed.
        let pc = Extensions::PIPELINE.with(Extensions::CANCEL);
        assert_eq!(pc.intersect(pc), Extensions::PIPELINE);
        assert_eq!(ac.intersect(Extensions::NONE), Extensions::NONE);
    }

    #[test]
    fn unknown_reserved_bytes_mean_no_extensions() {
        let mut b = Handshake::plain(7).encode();
        b[20] = 0xaa;
        assert_eq!(Handshake::parse(&b), Ok(Handshake::plain(7)));
        // A block size without BLOCKS, or BLOCKS without a size: not ours.
        let mut b = Handshake {
            peer_id: 7,
            extensions: Extensions::PIPELINE,
        }
        .encode();
        b[23] = 16;
        assert_eq!(Handshake::parse(&b), Ok(Handshake::plain(7)));
        b[22] = 2;
        b[23] = 0;
        assert_eq!(Handshake::parse(&b), Ok(Handshake::plain(7)));
    }

    #[test]
    fn wrong_header_is_rejected() {
        let mut b = Handshake::plain(7).encode();
        b[0] = b'Q';
        assert!(matches!(
            Handshake::parse(&b),
            Err(HandshakeError::WrongHeader(_))
        ));
    }
}
