//! The eight messages of SPEC A4 and their framing: 4-byte big-endian length (counting
//! the type byte and payload), 1-byte type, payload. Types 8-10 exist only on a
//! connection where both peers advertised BLOCKS (SPEC B, see `blocks.rs`), type 11
//! only where both also advertised CANCEL; anywhere else they are unknown types, as
//! for any Part A peer.
//!
//! [`MessageCodec`] is a `tokio_util` decoder that refuses any length above the largest
//! legal message for this swarm before allocating, so a remote cannot make us buffer
//! more than one piece. Piece payloads are split out of the read buffer as `Bytes`,
//! without copying.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(Bytes),
    Request(u32),
    Piece {
        index: u32,
        data: Bytes,
    },
    /// BLOCKS: the sender holds (verified) block `block` of piece `piece`.
    HaveBlock {
        piece: u32,
        block: u32,
    },
    /// BLOCKS: please send block `block` of piece `piece`.
    RequestBlock {
        piece: u32,
        block: u32,
    },
    /// BLOCKS: one block, with the chaining values of every block of its piece
    /// (32 bytes each) that prove it against the piece's hash.
    Block {
        piece: u32,
        block: u32,
        cvs: Bytes,
        data: Bytes,
    },
    /// BLOCKS + CANCEL: forget my `request-block` for block `block` of piece `piece`
    /// if you have not started sending it (it is on its way to me from elsewhere).
    CancelBlock {
        piece: u32,
        block: u32,
    },
}

impl Message {
    pub fn type_id(&self) -> u8 {
        match self {
            Message::Choke => 0,
            Message::Unchoke => 1,
            Message::Interested => 2,
            Message::NotInterested => 3,
            Message::Have(_) => 4,
            Message::Bitfield(_) => 5,
            Message::Request(_) => 6,
            Message::Piece { .. } => 7,
            Message::HaveBlock { .. } => 8,
            Message::RequestBlock { .. } => 9,
            Message::Block { .. } => 10,
            Message::CancelBlock { .. } => 11,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Message::Choke => "choke",
            Message::Unchoke => "unchoke",
            Message::Interested => "interested",
            Message::NotInterested => "not interested",
            Message::Have(_) => "have",
            Message::Bitfield(_) => "bitfield",
            Message::Request(_) => "request",
            Message::Piece { .. } => "piece",
            Message::HaveBlock { .. } => "have-block",
            Message::RequestBlock { .. } => "request-block",
            Message::Block { .. } => "block",
            Message::CancelBlock { .. } => "cancel-block",
        }
    }

    /// Bytes this message takes after the 4-byte length field.
    pub fn body_len(&self) -> usize {
        1 + match self {
            Message::Choke | Message::Unchoke | Message::Interested | Message::NotInterested => 0,
            Message::Have(_) | Message::Request(_) => 4,
            Message::Bitfield(b) => b.len(),
            Message::Piece { data, .. } => 4 + data.len(),
            Message::HaveBlock { .. }
            | Message::RequestBlock { .. }
            | Message::CancelBlock { .. } => 8,
            Message::Block { cvs, data, .. } => 10 + cvs.len() + data.len(),
        }
    }

    /// The file data this message carries (piece or block), written to the socket
    /// from its own buffer after [`Message::encode_head`].
    pub fn file_data(&self) -> Option<&Bytes> {
        match self {
            Message::Piece { data, .. } | Message::Block { data, .. } => Some(data),
            _ => None,
        }
    }

    /// [`Message::encode_head`] of a piece or block whose `data_len` bytes of data are
    /// not in the message (it holds none) but go to the socket straight from the file
    /// (`sendfile`, see `connection.rs`).
    pub fn encode_head_for(&self, data_len: usize, dst: &mut BytesMut) {
        let start = dst.len();
        self.encode_head(dst);
        let own = self.file_data().map_or(0, |d| d.len());
        let len = (self.body_len() - own + data_len) as u32;
        dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Writes everything except a piece's data: the length, type and fixed fields.
    /// Callers append `data` themselves so it can go to the socket without a copy.
    pub fn encode_head(&self, dst: &mut BytesMut) {
        dst.put_u32(self.body_len() as u32);
        dst.put_u8(self.type_id());
        match self {
            Message::Have(i) | Message::Request(i) => dst.put_u32(*i),
            Message::Bitfield(b) => dst.extend_from_slice(b),
            Message::Piece { index, .. } => dst.put_u32(*index),
            Message::HaveBlock { piece, block }
            | Message::RequestBlock { piece, block }
            | Message::CancelBlock { piece, block } => {
                dst.put_u32(*piece);
                dst.put_u32(*block);
            }
            Message::Block {
                piece, block, cvs, ..
            } => {
                dst.put_u32(*piece);
                dst.put_u32(*block);
                dst.put_u16((cvs.len() / 32) as u16);
                dst.extend_from_slice(cvs);
            }
            _ => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message length {len} exceeds the largest legal message ({max})")]
    TooLong { len: u32, max: u32 },
    #[error("message length 0 (no type byte)")]
    Empty,
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("{name} message with {got}-byte payload (expected {expected})")]
    BadPayload {
        name: &'static str,
        got: usize,
        expected: &'static str,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Frame codec for one connection. `max_body` is the largest legal length field.
#[derive(Clone, Debug)]
pub struct MessageCodec {
    max_body: u32,
    /// The highest legal type: 7, 10 with BLOCKS negotiated on this connection, 11
    /// with CANCEL too.
    last_type: u8,
}

impl MessageCodec {
    /// `piece_size` and `pieces` define the largest piece and bitfield messages.
    pub fn new(piece_size: u32, pieces: u32) -> MessageCodec {
        let piece = 1u64 + 4 + piece_size as u64;
        let bitfield = 1u64 + (pieces as u64).div_ceil(8);
        MessageCodec {
            max_body: piece.max(bitfield).min(u32::MAX as u64) as u32,
            last_type: 7,
        }
    }

    /// The codec of a connection that negotiated BLOCKS of `block_size` bytes, with
    /// pieces of at most `per_piece` blocks.
    pub fn with_blocks(&self, block_size: u32, per_piece: u32) -> MessageCodec {
        let block = 1u64 + 10 + 32 * per_piece as u64 + block_size as u64;
        MessageCodec {
            max_body: (self.max_body as u64).max(block).min(u32::MAX as u64) as u32,
            last_type: 10,
        }
    }

    /// This codec with `cancel-block` legal too (CANCEL negotiated); only meaningful
    /// on a BLOCKS codec, a plain one is returned unchanged.
    pub fn with_cancel(&self) -> MessageCodec {
        MessageCodec {
            max_body: self.max_body,
            last_type: if self.last_type >= 10 {
                11
            } else {
                self.last_type
            },
        }
    }

    pub fn max_body(&self) -> u32 {
        self.max_body
    }
}

impl Decoder for MessageCodec {
    type Item = Message;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if len == 0 {
            return Err(DecodeError::Empty);
        }
        if len > self.max_body {
            return Err(DecodeError::TooLong {
                len,
                max: self.max_body,
            });
        }
        // Reject an unknown type as soon as it is visible, not after buffering the body.
        if src.len() >= 5 && src[4] > self.last_type {
            return Err(DecodeError::UnknownType(src[4]));
        }
        let total = 4 + len as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(4);
        let mut body = src.split_to(len as usize);
        let kind = body.get_u8();
        let payload = body.len();
        let fixed = |name: &'static str, want: usize, expected: &'static str| {
            if payload == want {
                Ok(())
            } else {
                Err(DecodeError::BadPayload {
                    name,
                    got: payload,
                    expected,
                })
            }
        };
        let msg = match kind {
            0 => fixed("choke", 0, "0").map(|_| Message::Choke)?,
            1 => fixed("unchoke", 0, "0").map(|_| Message::Unchoke)?,
            2 => fixed("interested", 0, "0").map(|_| Message::Interested)?,
            3 => fixed("not interested", 0, "0").map(|_| Message::NotInterested)?,
            4 => {
                fixed("have", 4, "4")?;
                Message::Have(body.get_u32())
            }
            5 => Message::Bitfield(body.freeze()),
            6 => {
                fixed("request", 4, "4")?;
                Message::Request(body.get_u32())
            }
            7 => {
                if payload < 4 {
                    return Err(DecodeError::BadPayload {
                        name: "piece",
                        got: payload,
                        expected: "at least 4",
                    });
                }
                let index = body.get_u32();
                Message::Piece {
                    index,
                    data: body.freeze(),
                }
            }
            8 | 9 | 11 if kind <= self.last_type => {
                let name = match kind {
                    8 => "have-block",
                    9 => "request-block",
                    _ => "cancel-block",
                };
                fixed(name, 8, "8")?;
                let piece = body.get_u32();
                let block = body.get_u32();
                match kind {
                    8 => Message::HaveBlock { piece, block },
                    9 => Message::RequestBlock { piece, block },
                    _ => Message::CancelBlock { piece, block },
                }
            }
            10 if kind <= self.last_type => {
                let bad = |expected| DecodeError::BadPayload {
                    name: "block",
                    got: payload,
                    expected,
                };
                if payload < 10 {
                    return Err(bad("at least 10"));
                }
                let piece = body.get_u32();
                let block = body.get_u32();
                let n = body.get_u16() as usize * 32;
                if body.len() < n {
                    return Err(bad("10 + 32 per chaining value, then data"));
                }
                let cvs = body.split_to(n).freeze();
                Message::Block {
                    piece,
                    block,
                    cvs,
                    data: body.freeze(),
                }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(Some(msg))
    }
}

impl Encoder<Message> for MessageCodec {
    type Error = std::io::Error;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        dst.reserve(4 + msg.body_len());
        msg.encode_head(dst);
        if let Some(data) = msg.file_data() {
            dst.extend_from_slice(data);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(m: &Message) -> BytesMut {
        let mut b = BytesMut::new();
        MessageCodec::new(1 << 20, 1000)
            .encode(m.clone(), &mut b)
            .unwrap();
        b
    }

    #[test]
    fn every_type_round_trips_with_exact_bytes() {
        let cases: Vec<(Message, Vec<u8>)> = vec![
            (Message::Choke, vec![0, 0, 0, 1, 0]),
            (Message::Unchoke, vec![0, 0, 0, 1, 1]),
            (Message::Interested, vec![0, 0, 0, 1, 2]),
            (Message::NotInterested, vec![0, 0, 0, 1, 3]),
            (Message::Have(258), vec![0, 0, 0, 5, 4, 0, 0, 1, 2]),
            (
                Message::Bitfield(Bytes::from_static(&[0xa0, 0x80])),
                vec![0, 0, 0, 3, 5, 0xa0, 0x80],
            ),
            (Message::Request(7), vec![0, 0, 0, 5, 6, 0, 0, 0, 7]),
            (
                Message::Piece {
                    index: 1,
                    data: Bytes::from_static(b"xyz"),
                },
                vec![0, 0, 0, 8, 7, 0, 0, 0, 1, b'x', b'y', b'z'],
            ),
        ];
        for (m, wire) in cases {
            let mut b = encode(&m);
            assert_eq!(&b[..], &wire[..], "{m:?}");
            let got = MessageCodec::new(1 << 20, 1000).decode(&mut b).unwrap();
            assert_eq!(got, Some(m));
            assert!(b.is_empty());
        }
    }

    #[test]
    fn block_messages_exist_only_with_blocks_negotiated() {
        let plain = MessageCodec::new(1 << 20, 1000);
        let mut c = plain.with_blocks(65536, 16);
        let cases: Vec<(Message, Vec<u8>)> = vec![
            (
                Message::HaveBlock { piece: 2, block: 3 },
                vec![0, 0, 0, 9, 8, 0, 0, 0, 2, 0, 0, 0, 3],
            ),
            (
                Message::RequestBlock { piece: 1, block: 0 },
                vec![0, 0, 0, 9, 9, 0, 0, 0, 1, 0, 0, 0, 0],
            ),
        ];
        for (m, wire) in cases {
            let mut b = BytesMut::new();
            c.encode(m.clone(), &mut b).unwrap();
            assert_eq!(&b[..], &wire[..], "{m:?}");
            assert_eq!(c.decode(&mut b).unwrap(), Some(m));
            let mut b = BytesMut::from(&wire[..]);
            assert!(matches!(
                plain.clone().decode(&mut b),
                Err(DecodeError::UnknownType(8 | 9))
            ));
        }
        let m = Message::Block {
            piece: 1,
            block: 1,
            cvs: Bytes::from(vec![7u8; 64]),
            data: Bytes::from_static(b"ab"),
        };
        let mut b = BytesMut::new();
        c.encode(m.clone(), &mut b).unwrap();
        assert_eq!(b.len(), 4 + 1 + 10 + 64 + 2);
        assert_eq!(&b[13..15], &[0, 2]);
        assert_eq!(c.decode(&mut b).unwrap(), Some(m));
        // cancel-block needs CANCEL as well.
        let wire = [0, 0, 0, 9, 11, 0, 0, 0, 4, 0, 0, 0, 2];
        let mut b = BytesMut::from(&wire[..]);
        assert!(matches!(
            c.clone().decode(&mut b),
            Err(DecodeError::UnknownType(11))
        ));
        let mut b = BytesMut::from(&wire[..]);
        assert!(matches!(
            plain.with_cancel().decode(&mut b),
            Err(DecodeError::UnknownType(11))
        ));
        let m = Message::CancelBlock { piece: 4, block: 2 };
        let mut cancel = c.with_cancel();
        let mut b = BytesMut::new();
        cancel.encode(m.clone(), &mut b).unwrap();
        assert_eq!(&b[..], &wire[..]);
        assert_eq!(cancel.decode(&mut b).unwrap(), Some(m));
        // A CV count larger than the payload.
        let mut b = BytesMut::from(&[0, 0, 0, 11, 10, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1][..]);
        assert!(matches!(
            c.decode(&mut b),
            Err(DecodeError::BadPayload { .. })
        ));
    }

    #[test]
    fn refuses_oversized_length_before_buffering() {
        let mut c = MessageCodec::new(16384, 100);
        assert_eq!(c.max_body(), 1 + 4 + 16384);
        let mut b = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(c.decode(&mut b), Err(DecodeError::TooLong { .. })));
        let mut b = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(matches!(c.decode(&mut b), Err(DecodeError::Empty)));
    }

    #[test]
    fn refuses_unknown_type_and_bad_payloads() {
        let mut c = MessageCodec::new(16384, 100);
        let mut b = BytesMut::from(&[0, 0, 0, 9, 8][..]);
        assert!(matches!(c.decode(&mut b), Err(DecodeError::UnknownType(8))));
        let mut b = BytesMut::from(&[0, 0, 0, 2, 0, 0][..]);
        assert!(matches!(
            c.decode(&mut b),
            Err(DecodeError::BadPayload { .. })
        ));
        let mut b = BytesMut::from(&[0, 0, 0, 3, 4, 0, 0][..]);
        assert!(matches!(
            c.decode(&mut b),
            Err(DecodeError::BadPayload { .. })
        ));
        let mut b = BytesMut::from(&[0, 0, 0, 3, 7, 0, 0][..]);
        assert!(matches!(
            c.decode(&mut b),
            Err(DecodeError::BadPayload { .. })
        ));
    }

    #[test]
    fn waits_for_partial_frames() {
        let mut c = MessageCodec::new(16384, 100);
        let full = encode(&Message::Have(3));
        for cut in 0..full.len() {
            let mut b = BytesMut::from(&full[..cut]);
            assert_eq!(c.decode(&mut b).unwrap(), None);
        }
    }

    fn any_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            Just(Message::Choke),
            Just(Message::Unchoke),
            Just(Message::Interested),
            Just(Message::NotInterested),
            any::<u32>().prop_map(Message::Have),
            any::<u32>().prop_map(Message::Request),
            proptest::collection::vec(any::<u8>(), 0..200)
                .prop_map(|v| Message::Bitfield(Bytes::from(v))),
            (
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..5000)
            )
                .prop_map(|(i, v)| {
                    Message::Piece {
                        index: i,
                        data: Bytes::from(v),
                    }
                }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(piece, block)| Message::HaveBlock { piece, block }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(piece, block)| Message::RequestBlock { piece, block }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(piece, block)| Message::CancelBlock { piece, block }),
            (
                any::<u32>(),
                any::<u32>(),
                0usize..5,
                proptest::collection::vec(any::<u8>(), 0..1000)
            )
                .prop_map(|(piece, block, n, v)| Message::Block {
                    piece,
                    block,
                    cvs: Bytes::from(vec![n as u8; 32 * n]),
                    data: Bytes::from(v),
                }),
        ]
    }

    proptest! {
        #[test]
        fn stream_of_messages_round_trips_at_any_split(
            msgs in proptest::collection::vec(any_message(), 0..20),
            split in 0usize..10_000,
        ) {
            let mut wire = BytesMut::new();
            let mut codec = MessageCodec::new(5000, 1600).with_blocks(1024, 4).with_cancel();
            for m in &msgs {
                codec.encode(m.clone(), &mut wire).unwrap();
            }
            let split = split.min(wire.len());
            let mut buf = BytesMut::from(&wire[..split]);
            let mut out = Vec::new();
            while let Some(m) = codec.decode(&mut buf).unwrap() { out.push(m); }
            buf.extend_from_slice(&wire[split..]);
            while let Some(m) = codec.decode(&mut buf).unwrap() { out.push(m); }
            prop_assert_eq!(out, msgs);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn a_head_for_data_sent_from_the_file_is_the_head_of_the_message_with_it(
            m in any_message(),
        ) {
            // Any message: the writer sends pieces and blocks with their data taken
            // out and sent from the file after this head.
            let mut whole = BytesMut::new();
            m.encode_head(&mut whole);
            let data = m.file_data().cloned().unwrap_or_default();
            whole.extend_from_slice(&data);
            let hollow = match m.clone() {
                Message::Piece { index, .. } => Message::Piece { index, data: Bytes::new() },
                Message::Block { piece, block, cvs, .. } => {
                    Message::Block { piece, block, cvs, data: Bytes::new() }
                }
                other => other,
            };
            let mut split = BytesMut::from(&b"queued"[..]);
            hollow.encode_head_for(data.len(), &mut split);
            split.extend_from_slice(&data);
            prop_assert_eq!(&split[..6], b"queued");
            prop_assert_eq!(&split[6..], &whole[..]);
        }

        #[test]
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let blocks = MessageCodec::new(1024, 64).with_blocks(256, 4);
            for mut codec in [MessageCodec::new(1024, 64), blocks.clone(), blocks.with_cancel()] {
                let mut buf = BytesMut::from(&bytes[..]);
                while let Ok(Some(_)) = codec.decode(&mut buf) {}
            }
        }
    }
}
