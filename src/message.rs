//! The eight messages of SPEC A4 and their framing: 4-byte big-endian length (counting
//! the type byte and payload), 1-byte type, payload.
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
    Piece { index: u32, data: Bytes },
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
        }
    }

    /// Bytes this message takes after the 4-byte length field.
    pub fn body_len(&self) -> usize {
        1 + match self {
            Message::Choke | Message::Unchoke | Message::Interested | Message::NotInterested => 0,
            Message::Have(_) | Message::Request(_) => 4,
            Message::Bitfield(b) => b.len(),
            Message::Piece { data, .. } => 4 + data.len(),
        }
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
}

impl MessageCodec {
    /// `piece_size` and `pieces` define the largest piece and bitfield messages.
    pub fn new(piece_size: u32, pieces: u32) -> MessageCodec {
        let piece = 1u64 + 4 + piece_size as u64;
        let bitfield = 1u64 + (pieces as u64).div_ceil(8);
        MessageCodec {
            max_body: piece.max(bitfield).min(u32::MAX as u64) as u32,
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
        if src.len() >= 5 && src[4] > 7 {
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
        if let Message::Piece { data, .. } = &msg {
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
        ]
    }

    proptest! {
        #[test]
        fn stream_of_messages_round_trips_at_any_split(
            msgs in proptest::collection::vec(any_message(), 0..20),
            split in 0usize..10_000,
        ) {
            let mut wire = BytesMut::new();
            let mut codec = MessageCodec::new(5000, 1600);
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
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut codec = MessageCodec::new(1024, 64);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
