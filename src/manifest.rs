//! The manifest: the expected BLAKE3 hash of every piece and of the whole file, so
//! that a peer never reports a piece it has not verified (see `docs/INTEGRITY.md`).
//!
//! Text, one item per line, written by `p2pshare manifest` next to Common.cfg as
//! `<FileName>.p2pmanifest`:
//!
//! ```text
//! p2pshare-manifest 1
//! file <FileName>
//! size <FileSize>
//! piece-size <PieceSize>
//! file-blake3 <64 hex>
//! <64 hex>            one line per piece, in index order
//! ```
//!
//! The BLAKE3 of the manifest's own bytes is its digest, which an operator can pin
//! with `--manifest-digest`. Parsing is pure and bounded: the piece count must match
//! the sizes before any hash line is stored.

use crate::config::Common;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

pub type Hash = [u8; 32];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub file_name: String,
    pub size: u64,
    pub piece_size: u32,
    pub file_hash: Hash,
    pub pieces: Vec<Hash>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {reason}")]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// Largest manifest accepted: 2^24 pieces (a 256 GiB file at 16 KiB pieces).
pub const MAX_PIECES: u64 = 1 << 24;

pub fn path_for(dir: &Path, file_name: &str) -> PathBuf {
    dir.join(format!("{file_name}.p2pmanifest"))
}

pub fn hex(h: &[u8]) -> String {
    h.iter()
        .fold(String::with_capacity(h.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn hash_piece(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

impl Manifest {
    /// Hashes `path` piece by piece (bounded memory) for the swarm described by `common`.
    pub fn build(path: &Path, common: &Common) -> std::io::Result<Manifest> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        if len != common.file_size {
            return Err(std::io::Error::other(format!(
                "{} is {len} bytes but Common.cfg says FileSize {}",
                path.display(),
                common.file_size
            )));
        }
        let mut whole = blake3::Hasher::new();
        let mut pieces = Vec::with_capacity(common.num_pieces() as usize);
        let mut buf = vec![0u8; common.piece_size as usize];
        for i in 0..common.num_pieces() {
            let n = common.piece_len(i) as usize;
            f.read_exact(&mut buf[..n])?;
            whole.update(&buf[..n]);
            pieces.push(hash_piece(&buf[..n]));
        }
        Ok(Manifest {
            file_name: common.file_name.clone(),
            size: common.file_size,
            piece_size: common.piece_size,
            file_hash: *whole.finalize().as_bytes(),
            pieces,
        })
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "p2pshare-manifest 1\nfile {}\nsize {}\npiece-size {}\nfile-blake3 {}\n",
            self.file_name,
            self.size,
            self.piece_size,
            hex(&self.file_hash)
        );
        for p in &self.pieces {
            s.push_str(&hex(p));
            s.push('\n');
        }
        s
    }

    /// BLAKE3 of the manifest's bytes, for pinning.
    pub fn digest(text: &[u8]) -> String {
        hex(blake3::hash(text).as_bytes())
    }

    pub fn parse(file: &str, text: &str) -> Result<Manifest, ManifestError> {
        let err = |line: usize, reason: String| ManifestError {
            file: file.to_string(),
            line,
            reason,
        };
        let mut lines = text
            .split('\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r').trim_end()))
            .filter(|(_, l)| !l.is_empty());
        let mut field = |key: &str| -> Result<(usize, String), ManifestError> {
            match lines.next() {
                Some((no, l)) => match l.split_once(' ') {
                    Some((k, v)) if k == key => Ok((no, v.trim().to_string())),
                    _ => Err(err(no, format!("expected `{key} ...`, found `{l}`"))),
                },
                None => Err(err(0, format!("ends before `{key}`"))),
            }
        };
        let (no, version) = field("p2pshare-manifest")?;
        if version != "1" {
            return Err(err(no, format!("unsupported manifest version `{version}`")));
        }
        let (_, file_name) = field("file")?;
        let (no, size) = field("size")?;
        let size: u64 = size
            .parse()
            .map_err(|_| err(no, format!("size `{size}` is not a number")))?;
        let (no, piece) = field("piece-size")?;
        let piece_size: u32 = piece
            .parse()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| err(no, format!("piece-size `{piece}` is not a positive number")))?;
        let count = size.div_ceil(piece_size as u64);
        if count > MAX_PIECES {
            return Err(err(no, format!("{count} pieces is more than {MAX_PIECES}")));
        }
        let (no, fh) = field("file-blake3")?;
        let file_hash =
            unhex(&fh).ok_or_else(|| err(no, "file-blake3 is not 64 hex digits".into()))?;
        let mut pieces = Vec::with_capacity(count as usize);
        for (no, l) in lines {
            if pieces.len() as u64 == count {
                return Err(err(
                    no,
                    format!("more than the {count} piece hashes expected"),
                ));
            }
            pieces.push(unhex(l).ok_or_else(|| err(no, "piece hash is not 64 hex digits".into()))?);
        }
        if pieces.len() as u64 != count {
            return Err(err(
                0,
                format!("{} piece hashes, expected {count}", pieces.len()),
            ));
        }
        Ok(Manifest {
            file_name,
            size,
            piece_size,
            file_hash,
            pieces,
        })
    }

    /// Checks that this manifest describes the swarm of Common.cfg.
    pub fn matches(&self, common: &Common) -> Result<(), String> {
        if self.file_name != common.file_name
            || self.size != common.file_size
            || self.piece_size != common.piece_size
        {
            return Err(format!(
                "manifest is for {} ({} bytes, pieces of {}), Common.cfg says {} ({} bytes, pieces of {})",
                self.file_name,
                self.size,
                self.piece_size,
                common.file_name,
                common.file_size,
                common.piece_size
            ));
        }
        Ok(())
    }

    /// The expected hash of piece `index`.
    pub fn piece_hash(&self, index: u32) -> Option<Hash> {
        self.pieces.get(index as usize).copied()
    }

    pub fn verify(&self, index: u32, data: &[u8]) -> bool {
        self.pieces
            .get(index as usize)
            .is_some_and(|h| *h == hash_piece(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(size: u64) -> Common {
        Common {
            preferred_neighbors: 1,
            unchoking_interval: 1,
            optimistic_unchoking_interval: 1,
            file_name: "f.bin".into(),
            file_size: size,
            piece_size: 4,
        }
    }

    #[test]
    fn build_render_parse_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"abcdefghij").unwrap();
        let m = Manifest::build(&path, &common(10)).unwrap();
        assert_eq!(m.pieces.len(), 3);
        assert!(m.verify(2, b"ij"));
        assert!(!m.verify(2, b"iJ"));
        assert!(!m.verify(3, b""));
        assert_eq!(m.file_hash, *blake3::hash(b"abcdefghij").as_bytes());
        let text = m.render();
        assert_eq!(Manifest::parse("m", &text), Ok(m.clone()));
        assert_eq!(
            Manifest::parse("m", &text.replace('\n', "\r\n")),
            Ok(m.clone())
        );
        assert!(m.matches(&common(10)).is_ok());
        assert!(m.matches(&common(11)).is_err());
        assert_eq!(Manifest::digest(text.as_bytes()).len(), 64);
        assert!(Manifest::build(&path, &common(11)).is_err());
    }

    #[test]
    fn malformed_manifests_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"abcdefghij").unwrap();
        let good = Manifest::build(&path, &common(10)).unwrap().render();
        let lines: Vec<&str> = good.lines().collect();
        let cases = [
            (
                good.replace("p2pshare-manifest 1", "p2pshare-manifest 2"),
                1,
            ),
            (good.replace("size 10", "size ten"), 3),
            (good.replace("piece-size 4", "piece-size 0"), 4),
            (good.replace(lines[4], "file-blake3 xyz"), 5),
            (good.replace(lines[6], "zz"), 7),
            (format!("{good}{}\n", lines[5]), 9),
            (good.replace(&format!("{}\n", lines[7]), ""), 0),
            (good.replace("piece-size 4", "piece-size 1\n"), 0),
            (String::new(), 0),
        ];
        for (text, line) in cases {
            let e = Manifest::parse("m", &text).unwrap_err();
            assert_eq!(e.line, line, "{e}");
        }
        let huge = "p2pshare-manifest 1\nfile x\nsize 18446744073709551615\npiece-size 1\n";
        assert_eq!(Manifest::parse("m", huge).unwrap_err().line, 4);
    }
}
