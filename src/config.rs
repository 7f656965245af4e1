//! `Common.cfg` and `PeerInfo.cfg` (SPEC A1): parsing and validation.
//!
//! Parsing is pure (text in, struct or error out) so every malformed case is unit
//! tested and fuzzed without touching the disk. Real files carry blank lines, trailing
//! spaces and CRLF line ends; those are accepted. Everything else is refused with the
//! file name, the 1-based line number and the reason.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration problem, always pointing at the file and (when there is one) line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

impl ConfigError {
    fn at(file: &str, line: usize, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            line: Some(line),
            reason: reason.into(),
        }
    }
    fn whole(file: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            line: None,
            reason: reason.into(),
        }
    }
}

/// The contents of `Common.cfg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    pub preferred_neighbors: usize,
    pub unchoking_interval: u64,
    pub optimistic_unchoking_interval: u64,
    pub file_name: String,
    pub file_size: u64,
    pub piece_size: u32,
}

/// Largest piece we accept: a piece travels in one message and is held in memory
/// while in flight, so this bounds per-connection memory.
pub const MAX_PIECE_SIZE: u64 = 64 * 1024 * 1024;

/// Largest piece count: the bitfield is `ceil(pieces/8)` bytes and must stay sane.
pub const MAX_PIECES: u64 = 1 << 31;

impl Common {
    /// Number of pieces: `ceil(FileSize / PieceSize)`.
    pub fn num_pieces(&self) -> u32 {
        self.file_size.div_ceil(self.piece_size as u64) as u32
    }

    /// Length in bytes of piece `index` (the last one may be shorter).
    pub fn piece_len(&self, index: u32) -> u32 {
        let start = index as u64 * self.piece_size as u64;
        let end = (start + self.piece_size as u64).min(self.file_size);
        end.saturating_sub(start) as u32
    }

    /// Byte offset of piece `index` in the file.
    pub fn piece_offset(&self, index: u32) -> u64 {
        index as u64 * self.piece_size as u64
    }

    pub fn parse(file: &str, text: &str) -> Result<Common, ConfigError> {
        let mut pn = None;
        let mut ui = None;
        let mut oi = None;
        let mut name = None;
        let mut size = None;
        let mut piece = None;
        for (no, line) in lines(text) {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                return Err(ConfigError::at(
                    file,
                    no,
                    format!("expected `Key Value`, found `{line}`"),
                ));
            };
            if let Some(extra) = parts.next() {
                return Err(ConfigError::at(
                    file,
                    no,
                    format!("unexpected `{extra}` after the value of {key}"),
                ));
            }
            let slot_taken = |taken: bool| {
                if taken {
                    Err(ConfigError::at(file, no, format!("{key} given twice")))
                } else {
                    Ok(())
                }
            };
            match key {
                "NumberOfPreferredNeighbors" => {
                    slot_taken(pn.is_some())?;
                    pn = Some(number::<u32>(file, no, key, value, 0)? as usize);
                }
                "UnchokingInterval" => {
                    slot_taken(ui.is_some())?;
                    ui = Some(number::<u64>(file, no, key, value, 1)?);
                }
                "OptimisticUnchokingInterval" => {
                    slot_taken(oi.is_some())?;
                    oi = Some(number::<u64>(file, no, key, value, 1)?);
                }
                "FileName" => {
                    slot_taken(name.is_some())?;
                    if value.contains('/') || value == "." || value == ".." {
                        return Err(ConfigError::at(
                            file,
                            no,
                            format!("FileName `{value}` must be a plain file name, not a path"),
                        ));
                    }
                    name = Some(value.to_string());
                }
                "FileSize" => {
                    slot_taken(size.is_some())?;
                    size = Some(number::<u64>(file, no, key, value, 1)?);
                }
                "PieceSize" => {
                    slot_taken(piece.is_some())?;
                    let p = number::<u64>(file, no, key, value, 1)?;
                    if p > MAX_PIECE_SIZE {
                        return Err(ConfigError::at(
                            file,
                            no,
                            format!("PieceSize {p} is larger than the supported {MAX_PIECE_SIZE}"),
                        ));
                    }
                    piece = Some(p as u32);
                }
                other => return Err(ConfigError::at(file, no, format!("unknown key `{other}`"))),
            }
        }
        let missing = |what: &str| ConfigError::whole(file, format!("missing key {what}"));
        let c = Common {
            preferred_neighbors: pn.ok_or_else(|| missing("NumberOfPreferredNeighbors"))?,
            unchoking_interval: ui.ok_or_else(|| missing("UnchokingInterval"))?,
            optimistic_unchoking_interval: oi
                .ok_or_else(|| missing("OptimisticUnchokingInterval"))?,
            file_name: name.ok_or_else(|| missing("FileName"))?,
            file_size: size.ok_or_else(|| missing("FileSize"))?,
            piece_size: piece.ok_or_else(|| missing("PieceSize"))?,
        };
        if c.file_size.div_ceil(c.piece_size as u64) > MAX_PIECES {
            return Err(ConfigError::whole(
                file,
                format!(
                    "FileSize {} / PieceSize {} gives more than {MAX_PIECES} pieces",
                    c.file_size, c.piece_size
                ),
            ));
        }
        Ok(c)
    }
}

/// One line of `PeerInfo.cfg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: u32,
    pub host: String,
    pub port: u16,
    pub has_file: bool,
}

/// The whole of `PeerInfo.cfg`, in file (= start) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    pub peers: Vec<PeerInfo>,
}

impl Peers {
    pub fn parse(file: &str, text: &str) -> Result<Peers, ConfigError> {
        let mut peers: Vec<PeerInfo> = Vec::new();
        let mut ids = HashSet::new();
        let mut endpoints = HashSet::new();
        for (no, line) in lines(text) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() != 4 {
                return Err(ConfigError::at(
                    file,
                    no,
                    format!(
                        "expected `peerID host port hasFile` (4 fields), found {} in `{line}`",
                        fields.len()
                    ),
                ));
            }
            let id = number::<u32>(file, no, "peerID", fields[0], 1)?;
            let host = fields[1].to_string();
            let port = number::<u16>(file, no, "listeningPort", fields[2], 1)?;
            let has_file = match fields[3] {
                "1" => true,
                "0" => false,
                other => {
                    return Err(ConfigError::at(
                        file,
                        no,
                        format!("hasFile must be 0 or 1, found `{other}`"),
                    ))
                }
            };
            if !ids.insert(id) {
                return Err(ConfigError::at(
                    file,
                    no,
                    format!("peer ID {id} is listed twice"),
                ));
            }
            if !endpoints.insert((host.to_ascii_lowercase(), port)) {
                return Err(ConfigError::at(
                    file,
                    no,
                    format!("{host}:{port} is already used by another peer"),
                ));
            }
            peers.push(PeerInfo {
                id,
                host,
                port,
                has_file,
            });
        }
        if peers.is_empty() {
            return Err(ConfigError::whole(file, "no peers listed"));
        }
        Ok(Peers { peers })
    }

    /// Position of `id` in the file, if listed.
    pub fn position(&self, id: u32) -> Option<usize> {
        self.peers.iter().position(|p| p.id == id)
    }

    pub fn get(&self, id: u32) -> Option<&PeerInfo> {
        self.peers.iter().find(|p| p.id == id)
    }
}

/// Both files, read from a working directory.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    pub peers: Peers,
    pub dir: PathBuf,
}

impl Config {
    pub fn load(dir: &Path) -> Result<Config, ConfigError> {
        let read = |name: &str| {
            let path = dir.join(name);
            let shown = path.display().to_string();
            let bytes = std::fs::read(&path)
                .map_err(|e| ConfigError::whole(&shown, format!("cannot read: {e}")))?;
            let text = String::from_utf8(bytes)
                .map_err(|e| ConfigError::whole(&shown, format!("not UTF-8 text: {e}")))?;
            Ok::<_, ConfigError>((shown, text))
        };
        let (cf, ct) = read("Common.cfg")?;
        let (pf, pt) = read("PeerInfo.cfg")?;
        Ok(Config {
            common: Common::parse(&cf, &ct)?,
            peers: Peers::parse(&pf, &pt)?,
            dir: dir.to_path_buf(),
        })
    }
}

/// Non-blank lines with their 1-based numbers, CR and surrounding whitespace trimmed.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
}

fn number<T: std::str::FromStr + PartialOrd + From<u8> + fmt::Display>(
    file: &str,
    no: usize,
    key: &str,
    value: &str,
    min: u8,
) -> Result<T, ConfigError> {
    let v: T = value.parse().map_err(|_| {
        ConfigError::at(
            file,
            no,
            format!("{key} must be a non-negative integer that fits, found `{value}`"),
        )
    })?;
    if v < T::from(min) {
        return Err(ConfigError::at(
            file,
            no,
            format!("{key} must be at least {min}, found {v}"),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMON: &str = "NumberOfPreferredNeighbors 3\nUnchokingInterval 5\nOptimisticUnchokingInterval 10\nFileName thefile\nFileSize 2167705\nPieceSize 16384\n";

    #[test]
    fn parses_the_spec_example() {
        let c = Common::parse("Common.cfg", COMMON).unwrap();
        assert_eq!(c.preferred_neighbors, 3);
        assert_eq!(c.unchoking_interval, 5);
        assert_eq!(c.optimistic_unchoking_interval, 10);
        assert_eq!(c.file_name, "thefile");
        assert_eq!(c.num_pieces(), 133);
        assert_eq!(c.piece_len(132), 2167705 - 132 * 16384);
        assert_eq!(c.piece_len(0), 16384);
    }

    #[test]
    fn accepts_crlf_blank_lines_and_trailing_spaces() {
        let text = "\r\nNumberOfPreferredNeighbors 3   \r\n\r\n  UnchokingInterval\t5\r\nOptimisticUnchokingInterval 10 \r\nFileName thefile\r\nFileSize 100\r\nPieceSize 16384\r\n\r\n";
        let c = Common::parse("Common.cfg", text).unwrap();
        assert_eq!(c.num_pieces(), 1);
        assert_eq!(c.piece_len(0), 100);
        let p = Peers::parse(
            "PeerInfo.cfg",
            "1001 localhost 6008 1  \r\n\r\n1002 localhost 6009 0\r\n",
        )
        .unwrap();
        assert_eq!(p.peers.len(), 2);
        assert!(p.peers[0].has_file);
        assert!(!p.peers[1].has_file);
        assert_eq!(p.position(1002), Some(1));
    }

    fn common_err(text: &str) -> ConfigError {
        Common::parse("Common.cfg", text).unwrap_err()
    }

    #[test]
    fn refuses_malformed_common_with_line() {
        let e = common_err(&COMMON.replace("FileSize 2167705", "FileSize lots"));
        assert_eq!(e.line, Some(5));
        assert!(e.reason.contains("FileSize"), "{e}");
        let e = common_err(&COMMON.replace("PieceSize 16384", "PieceSize 0"));
        assert_eq!(e.line, Some(6));
        let e = common_err(&format!("{COMMON}Colour blue\n"));
        assert_eq!(e.line, Some(7));
        assert!(e.reason.contains("unknown key"));
        let e = common_err(&format!("{COMMON}FileSize 3\n"));
        assert!(e.reason.contains("twice"));
        let e = common_err(&COMMON.replace("FileName thefile", "FileName"));
        assert_eq!(e.line, Some(4));
        let e = common_err(&COMMON.replace("FileName thefile", "FileName a b"));
        assert_eq!(e.line, Some(4));
        let e = common_err(&COMMON.replace("FileName thefile", "FileName ../x"));
        assert!(e.reason.contains("plain file name"));
        let e = common_err(&COMMON.replace("UnchokingInterval 5\n", ""));
        assert_eq!(e.line, None);
        assert!(e.reason.contains("UnchokingInterval"));
        let e = common_err(&COMMON.replace("UnchokingInterval 5", "UnchokingInterval -5"));
        assert_eq!(e.line, Some(2));
        let e = common_err(&COMMON.replace("PieceSize 16384", "PieceSize 999999999999"));
        assert_eq!(e.line, Some(6));
        assert_eq!(e.to_string().split(':').next(), Some("Common.cfg"));
    }

    #[test]
    fn refuses_malformed_peerinfo_with_line() {
        let bad = [
            ("1001 localhost 6008\n", 1, "4 fields"),
            ("1001 localhost 6008 1\n1001 localhost 6009 0\n", 2, "twice"),
            (
                "1001 localhost 6008 1\n1002 localhost 6008 0\n",
                2,
                "already used",
            ),
            ("1001 localhost 6008 2\n", 1, "hasFile"),
            ("0 localhost 6008 1\n", 1, "at least"),
            ("4294967296 localhost 6008 1\n", 1, "peerID"),
            ("1001 localhost 70000 1\n", 1, "listeningPort"),
            ("1001 localhost 6008 1 extra\n", 1, "4 fields"),
        ];
        for (text, line, why) in bad {
            let e = Peers::parse("PeerInfo.cfg", text).unwrap_err();
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
            assert!(e.reason.contains(why), "{text:?}: {e}");
        }
        let e = Peers::parse("PeerInfo.cfg", "\n \r\n").unwrap_err();
        assert!(e.reason.contains("no peers"));
    }
}
