//! The 32-byte handshake (SPEC A3) and the extension bits p2pshare hides in its
//! reserved bytes (SPEC B).
//!
//! Layout: `P2PFILESHARINGPROJ` (18 bytes), 10 reserved bytes, 4-byte big-endian peer ID.
//! A plain peer sends zeros in the reserved bytes. p2pshare advertises extensions as
//! `b"p2ps"` followed by a flags byte; anything else non-zero (an unknown
//! implementation's private use) is read as "no extensions we know".

pub const HEADER: &[u8; 18] = b"P2PFILESHARINGPROJ";
pub const LEN: usize = 32;
const MAGIC: &[u8; 4] = b"p2ps";

/// Extensions a peer advertises. Used on a connection only when both sides have it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extensions(pub u8);

impl Extensions {
    pub const NONE: Extensions = Extensions(0);
    /// Several outstanding requests per connection (SPEC B, "pipeline").
    pub const PIPELINE: Extensions = Extensions(1);

    pub fn contains(self, other: Extensions) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
    pub fn intersect(self, other: Extensions) -> Extensions {
        Extensions(self.0 & other.0)
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
        let extensions = if &reserved[..4] == MAGIC && reserved[5..].iter().all(|&b| b == 0) {
            Extensions(reserved[4])
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
    fn unknown_reserved_bytes_mean_no_extensions() {
        let mut b = Handshake::plain(7).encode();
        b[20] = 0xaa;
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
