//! Property checks shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`, through the
//! `p2pshare_fuzz` lib) and the stable regression test `tests/fuzz_corpus.rs` (through
//! `#[path]`), so the corpus is replayed with exactly the checks the fuzzer runs.
//!
//! Each check takes raw bytes, must never panic on any input, and panics (assert) when
//! an invariant of the parser under test is broken.
//!
//! Adding a target (e.g. a manifest parser): write `pub fn manifest(data: &[u8])` here,
//! add it to [`TARGETS`], copy `fuzz_targets/config.rs` to `fuzz_targets/manifest.rs`
//! calling it, add the `[[bin]]` to `fuzz/Cargo.toml` and seed `fuzz/corpus/manifest/`.
//!
//! This file may only depend on `p2pshare`, `bytes` and `tokio_util`: the main crate's
//! tests compile it too.

use bytes::BytesMut;
use p2pshare::bitfield::Bitfield;
use p2pshare::config::{Common, ConfigError, Peers, MAX_PIECES, MAX_PIECE_SIZE};
use p2pshare::handshake::{self, Handshake};
use p2pshare::message::{DecodeError, Message, MessageCodec};
use tokio_util::codec::{Decoder, Encoder};

/// A check: panics if `data` breaks an invariant of the parser under test.
pub type Check = fn(data: &[u8]);

/// Every target: its name (= `fuzz_targets/<name>.rs` and `corpus/<name>/`) and check.
pub const TARGETS: &[(&str, Check)] = &[
    ("frame", frame),
    ("handshake", handshake),
    ("bitfield", bitfield),
    ("config", config),
    ("manifest", manifest),
];

// ---------------------------------------------------------------------------- frame

/// `(piece_size, pieces, blocks)` swarms the codec is run with: a tiny one (largest
/// legal body 6 bytes: a piece of one byte), one where the bitfield is the largest
/// legal message, and the SPEC A1 example; then connections that negotiated BLOCKS
/// (`(block_size, blocks per piece, CANCEL too)`, message types 8-10 legal, and 11
/// with CANCEL).
const SWARMS: &[(u32, u32, Option<Blocks>)] = &[
    (1, 1, None),
    (4, 1000, None),
    (16384, 133, None),
    (16384, 133, Some((4096, 4, false))),
    (2048, 10, Some((1024, 2, false))),
    (2048, 10, Some((1024, 2, true))),
];

/// `(block_size, blocks per piece, CANCEL)` of a connection that negotiated BLOCKS.
type Blocks = (u32, u32, bool);

fn codec_for(piece_size: u32, pieces: u32, blocks: Option<Blocks>) -> MessageCodec {
    let codec = MessageCodec::new(piece_size, pieces);
    match blocks {
        Some((size, per_piece, false)) => codec.with_blocks(size, per_piece),
        Some((size, per_piece, true)) => codec.with_blocks(size, per_piece).with_cancel(),
        None => codec,
    }
}

/// The highest message type legal on such a connection.
fn last_type(blocks: Option<Blocks>) -> u8 {
    match blocks {
        None => 7,
        Some((_, _, false)) => 10,
        Some((_, _, true)) => 11,
    }
}

/// What decoding a byte stream produced: the messages, then how it stopped.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    messages: Vec<Message>,
    /// `Display` of the error that ended decoding, if any.
    error: Option<String>,
}

/// The input is a byte stream from a remote peer. For each swarm: decode it whole,
/// checking each message re-encodes to exactly the bytes it consumed; then feed it in
/// chunks of several sizes and check the outcome does not depend on the split.
pub fn frame(data: &[u8]) {
    for &(piece_size, pieces, blocks) in SWARMS {
        let whole = decode_whole(
            data,
            codec_for(piece_size, pieces, blocks),
            last_type(blocks),
        );
        let odd = data.len() % 13 + 1;
        for chunk in [1, 5, odd] {
            let split = decode_chunked(data, chunk, codec_for(piece_size, pieces, blocks));
            assert_eq!(
                split, whole,
                "chunks of {chunk} decode differently from the whole stream \
                 (piece size {piece_size}, {pieces} pieces)"
            );
        }
    }
}

fn decode_whole(data: &[u8], mut codec: MessageCodec, last_type: u8) -> Decoded {
    let max_body = codec.max_body();
    assert!(
        max_body >= 5,
        "a have/request must always fit (max {max_body})"
    );
    let mut buf = BytesMut::from(data);
    let mut offset = 0;
    let mut messages = Vec::new();
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(msg)) => {
                let consumed = before - buf.len();
                let wire = &data[offset..offset + consumed];
                offset += consumed;
                assert_eq!(consumed, 4 + msg.body_len(), "{msg:?} consumed {consumed}");
                assert!(
                    msg.body_len() as u64 <= max_body as u64,
                    "{msg:?} > {max_body}"
                );
                let mut again = BytesMut::new();
                codec.encode(msg.clone(), &mut again).expect("encode");
                assert_eq!(&again[..], wire, "{msg:?} re-encodes differently");
                messages.push(msg);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                assert_eq!(&buf[..], &data[offset..], "Ok(None) changed the buffer");
                // Only a frame still being received may be left over.
                if buf.len() >= 4 {
                    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    assert!(len >= 1 && len <= max_body, "waits on bad length {len}");
                    assert!(buf.len() < 4 + len as usize, "waits on a complete frame");
                }
                return Decoded {
                    messages,
                    error: None,
                };
            }
            Err(e) => {
                check_decode_error(&e, &data[offset..], max_body, last_type);
                return Decoded {
                    messages,
                    error: Some(e.to_string()),
                };
            }
        }
    }
}

/// The error names a real fault of the frame at the head of `rest`.
fn check_decode_error(e: &DecodeError, rest: &[u8], max_body: u32, last_type: u8) {
    assert!(rest.len() >= 4, "{e} before a whole length field");
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    match e {
        DecodeError::Empty => assert_eq!(len, 0),
        DecodeError::TooLong { len: l, max } => {
            assert_eq!((*l, *max), (len, max_body));
            assert!(len > max_body);
        }
        DecodeError::UnknownType(t) => {
            assert_eq!(rest.get(4), Some(t));
            assert!(*t > last_type);
        }
        DecodeError::BadPayload { .. } => {
            assert!(rest.len() >= 4 + len as usize, "{e} on an incomplete frame");
            let payload = len as usize - 1;
            match rest[4] {
                0..=3 => assert_ne!(payload, 0, "{e}"),
                4 | 6 => assert_ne!(payload, 4, "{e}"),
                7 => assert!(payload < 4, "{e}"),
                8 | 9 if last_type >= 10 => assert_ne!(payload, 8, "{e}"),
                11 if last_type >= 11 => assert_ne!(payload, 8, "{e}"),
                10 if last_type >= 10 => assert!(
                    payload < 10
                        || payload - 10 < 32 * u16::from_be_bytes([rest[13], rest[14]]) as usize,
                    "{e}"
                ),
                t => panic!("{e} for type {t}"),
            }
        }
        DecodeError::Io(_) => panic!("decoder made up an i/o error: {e}"),
    }
}

fn decode_chunked(data: &[u8], chunk: usize, mut codec: MessageCodec) -> Decoded {
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for part in data.chunks(chunk) {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => messages.push(msg),
                Ok(None) => break,
                Err(e) => {
                    return Decoded {
                        messages,
                        error: Some(e.to_string()),
                    }
                }
            }
        }
    }
    Decoded {
        messages,
        error: None,
    }
}

// ------------------------------------------------------------------------ handshake

/// The first 32 bytes of the input (zero-padded) as a received handshake.
pub fn handshake(data: &[u8]) {
    let mut raw = [0u8; handshake::LEN];
    let n = data.len().min(handshake::LEN);
    raw[..n].copy_from_slice(&data[..n]);
    match Handshake::parse(&raw) {
        Err(_) => assert_ne!(&raw[..18], handshake::HEADER, "good header refused"),
        Ok(h) => {
            assert_eq!(&raw[..18], handshake::HEADER, "bad header accepted");
            let enc = h.encode();
            assert_eq!(&enc[..18], &raw[..18], "header changed");
            assert_eq!(&enc[28..], &raw[28..], "peer id bytes changed");
            assert_eq!(h.peer_id.to_be_bytes(), raw[28..32], "peer id misread");
            assert_eq!(Handshake::parse(&enc), Ok(h), "parse(encode(h)) != h");
            // Reserved bytes survive exactly when they carried extensions; a plain
            // handshake (all-zero reserved bytes) round-trips byte for byte.
            if !h.extensions.is_none() || raw[18..28].iter().all(|&b| b == 0) {
                assert_eq!(enc, raw, "{h:?} does not re-encode to its bytes");
            } else {
                assert_eq!(enc[18..28], [0; 10], "unknown reserved bytes echoed");
            }
        }
    }
}

// ------------------------------------------------------------------------- bitfield

/// Byte 0 picks the piece count, the rest is the received payload: with the high bit
/// clear, `8 * payload bytes - (byte0 & 7)` (right length, spare bits vary); with it
/// set, a length off by up to ±63 pieces (mostly wrong lengths).
pub fn bitfield(data: &[u8]) {
    let Some((&ctl, payload)) = data.split_first() else {
        return;
    };
    let bits = payload.len() as i64 * 8;
    let len = if ctl & 0x80 == 0 {
        bits - (ctl & 7) as i64
    } else {
        bits + (ctl & 0x7f) as i64 - 64
    };
    let len = len.clamp(0, u32::MAX as i64) as u32;
    check_bitfield(payload, len);
    // Any piece count at all (mostly refused as the wrong length), read from the
    // payload's first 4 bytes.
    if let Some(head) = payload.first_chunk::<4>() {
        check_bitfield(payload, u32::from_be_bytes(*head));
    }
}

fn check_bitfield(payload: &[u8], len: u32) {
    let Ok(b) = Bitfield::from_bytes(payload, len) else {
        // Refused: either the length is wrong or a spare bit is set.
        let right_len = payload.len() == Bitfield::byte_len(len);
        if right_len {
            let spare = payload.len() as u64 * 8 - len as u64;
            assert!(
                spare > 0,
                "a right-length bitfield without spare bits refused"
            );
            let mask = ((1u16 << spare) - 1) as u8;
            assert_ne!(
                payload[payload.len() - 1] & mask,
                0,
                "refused without cause"
            );
        }
        return;
    };
    assert_eq!(b.len(), len);
    assert_eq!(b.as_bytes(), payload);
    let set: Vec<u32> = b.iter_set().collect();
    assert_eq!(
        b.count() as usize,
        set.len(),
        "count() != iter_set().count()"
    );
    assert!(
        set.windows(2).all(|w| w[0] < w[1]),
        "iter_set not ascending"
    );
    assert!(set.iter().all(|&i| i < len), "a bit >= len is set: {set:?}");
    assert!(set.iter().all(|&i| b.has(i)));
    assert!(!b.has(len), "has(len)");
    assert_eq!(b.is_complete(), b.count() == len);
    // Rebuilding from the set indices gives the same bitfield, bytes and all.
    let mut rebuilt = Bitfield::new(len);
    for &i in &set {
        assert!(rebuilt.set(i));
    }
    assert_eq!(rebuilt, b, "rebuilt from iter_set differs");
    if b.is_complete() {
        assert_eq!(b, Bitfield::full(len));
    }
}

// --------------------------------------------------------------------------- config

/// The input as the text of a config file, given to both parsers (invalid UTF-8 is
/// replaced, as a lossy reader would): no panic, and whatever is accepted obeys
/// SPEC A1 and the limits in `p2pshare::config`.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let line_count = text.split('\n').count();
    match Common::parse("Common.cfg", &text) {
        Ok(c) => check_common(&c),
        Err(e) => check_config_error(&e, "Common.cfg", line_count),
    }
    match Peers::parse("PeerInfo.cfg", &text) {
        Ok(p) => check_peers(&p),
        Err(e) => check_config_error(&e, "PeerInfo.cfg", line_count),
    }
}

fn check_common(c: &Common) {
    assert!(c.piece_size >= 1, "{c:?}");
    assert!(c.piece_size as u64 <= MAX_PIECE_SIZE, "{c:?}");
    assert!(c.file_size >= 1, "{c:?}");
    assert!(c.unchoking_interval >= 1, "{c:?}");
    assert!(c.optimistic_unchoking_interval >= 1, "{c:?}");
    assert!(is_word(&c.file_name), "{c:?}");
    assert!(!c.file_name.contains('/') && c.file_name != "." && c.file_name != "..");
    let pieces = c.num_pieces();
    assert!(pieces >= 1 && pieces as u64 <= MAX_PIECES, "{c:?}");
    assert_eq!(pieces as u64, c.file_size.div_ceil(c.piece_size as u64));
    let last = pieces - 1;
    let first = (c.piece_size as u64).min(c.file_size);
    assert_eq!(c.piece_len(0) as u64, first, "{c:?}");
    let last_len = c.piece_len(last);
    assert!(last_len >= 1 && last_len <= c.piece_size, "{c:?}");
    assert_eq!(c.piece_offset(last) + last_len as u64, c.file_size, "{c:?}");
    assert_eq!(c.piece_len(pieces), 0, "piece past the end has bytes");
}

fn check_peers(p: &Peers) {
    assert!(!p.peers.is_empty());
    for (i, peer) in p.peers.iter().enumerate() {
        assert!(peer.id >= 1, "{peer:?}");
        assert!(peer.port >= 1, "{peer:?}");
        assert!(is_word(&peer.host), "{peer:?}");
        assert_eq!(
            p.position(peer.id),
            Some(i),
            "peer id {} not unique",
            peer.id
        );
        assert_eq!(p.get(peer.id), Some(peer));
        let same_endpoint = p
            .peers
            .iter()
            .filter(|q| q.port == peer.port && q.host.eq_ignore_ascii_case(&peer.host));
        assert_eq!(same_endpoint.count(), 1, "{peer:?} endpoint not unique");
    }
}

fn check_config_error(e: &ConfigError, file: &str, line_count: usize) {
    assert_eq!(e.file, file);
    assert!(!e.reason.is_empty());
    if let Some(line) = e.line {
        assert!(
            line >= 1 && line <= line_count,
            "line {line} of {line_count}: {e}"
        );
    }
    assert!(e.to_string().starts_with(file), "{e}");
}

/// Non-empty with no whitespace: what one whitespace-separated field can be.
fn is_word(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_whitespace)
}

/// The manifest parser: any text either parses into a manifest whose piece count
/// matches its sizes and which re-renders to text that parses to the same manifest,
/// or is refused with an error naming the file and a line that exists (0 = the end).
pub fn manifest(data: &[u8]) {
    use p2pshare::manifest::Manifest;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::parse("m.p2pmanifest", text) {
        Ok(m) => {
            assert!(m.piece_size >= 1);
            assert_eq!(
                m.pieces.len() as u64,
                m.size.div_ceil(m.piece_size as u64),
                "piece count must match the sizes"
            );
            let again =
                Manifest::parse("m.p2pmanifest", &m.render()).expect("a rendered manifest parses");
            assert_eq!(again, m);
        }
        Err(e) => {
            assert_eq!(e.file, "m.p2pmanifest");
            assert!(
                e.line <= text.split('\n').count(),
                "line {} of {text:?}",
                e.line
            );
        }
    }
}
