//! `log_peer_<ID>.log` (SPEC A6): exactly the 11 event line forms, nothing else.
//!
//! Formatting is pure ([`Event::render`]) so tests can pin every form; [`EventLog`]
//! appends one whole line per `write` call on an `O_APPEND` file, so a peer killed at
//! any moment leaves only complete lines and a restart continues the same file.
//! Diagnostics never come here: they go to stderr through `tracing`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One loggable event of SPEC A6. `me` (peer_ID 1) is supplied by the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    MakesConnection(u32),
    ConnectedFrom(u32),
    PreferredNeighbors(Vec<u32>),
    OptimisticNeighbor(u32),
    UnchokedBy(u32),
    ChokedBy(u32),
    ReceivedHave { from: u32, piece: u32 },
    ReceivedInterested(u32),
    ReceivedNotInterested(u32),
    Downloaded { piece: u32, from: u32, count: u32 },
    Complete,
}

impl Event {
    /// The line without its trailing newline.
    pub fn render(&self, time: &str, me: u32) -> String {
        match self {
            Event::MakesConnection(p) => format!("{time}: Peer {me} makes a connection to Peer {p}."),
            Event::ConnectedFrom(p) => format!("{time}: Peer {me} is connected from Peer {p}."),
            Event::PreferredNeighbors(list) => {
                let list: Vec<String> = list.iter().map(u32::to_string).collect();
                format!("{time}: Peer {me} has the preferred neighbors {}.", list.join(","))
            }
            Event::OptimisticNeighbor(p) => {
                format!("{time}: Peer {me} has the optimistically unchoked neighbor {p}.")
            }
            Event::UnchokedBy(p) => format!("{time}: Peer {me} is unchoked by {p}."),
            Event::ChokedBy(p) => format!("{time}: Peer {me} is choked by {p}."),
            Event::ReceivedHave { from, piece } => format!(
                "{time}: Peer {me} received the 'have' message from {from} for the piece {piece}."
            ),
            Event::ReceivedInterested(p) => {
                format!("{time}: Peer {me} received the 'interested' message from {p}.")
            }
            Event::ReceivedNotInterested(p) => {
                format!("{time}: Peer {me} received the 'not interested' message from {p}.")
            }
            Event::Downloaded { piece, from, count } => format!(
                "{time}: Peer {me} has downloaded the piece {piece} from {from}. Now the number of pieces it has is {count}."
            ),
            Event::Complete => format!("{time}: Peer {me} has downloaded the complete file."),
        }
    }
}

/// Local wall-clock time of `t` as `YYYY-MM-DD HH:MM:SS`.
fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// The appending log file of one peer.
pub struct EventLog {
    me: u32,
    path: PathBuf,
    file: File,
    /// The last time stamp and its second: a busy peer logs hundreds of lines a
    /// second (one per `have` received), and formatting the local time for each was
    /// a few per cent of its CPU with 16 KiB pieces (bench/RESULTS.md).
    stamp: (i64, String),
}

impl EventLog {
    pub fn open(dir: &Path, me: u32) -> std::io::Result<EventLog> {
        let path = dir.join(format!("log_peer_{me}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(EventLog {
            me,
            path,
            file,
            stamp: (i64::MIN, String::new()),
        })
    }

    /// The time stamp for `t`, formatted once per second. Key and text come from the
    /// same instant, so a stamp is never ahead of the second it stands for.
    fn stamp_for(&mut self, t: chrono::DateTime<chrono::Utc>) -> &str {
        let second = t.timestamp();
        if self.stamp.0 != second {
            self.stamp = (second, stamp(t));
        }
        &self.stamp.1
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line. A failing log write is reported on stderr but never stops
    /// the transfer: the file matters more than its log.
    pub fn write(&mut self, event: &Event) {
        let me = self.me;
        let mut line = event.render(self.stamp_for(chrono::Utc::now()), me);
        line.push('\n');
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            tracing::error!("cannot write {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_eleven_forms() {
        let t = "2026-11-24 22:45:39";
        let me = 1002;
        let lines: Vec<String> = [
            Event::MakesConnection(1001),
            Event::ConnectedFrom(1003),
            Event::PreferredNeighbors(vec![1001, 1003]),
            Event::OptimisticNeighbor(1004),
            Event::UnchokedBy(1001),
            Event::ChokedBy(1001),
            Event::ReceivedHave {
                from: 1001,
                piece: 3,
            },
            Event::ReceivedInterested(1003),
            Event::ReceivedNotInterested(1003),
            Event::Downloaded {
                piece: 17,
                from: 1001,
                count: 5,
            },
            Event::Complete,
        ]
        .iter()
        .map(|e| e.render(t, me))
        .collect();
        assert_eq!(
            lines,
            vec![
                "2026-11-24 22:45:39: Peer 1002 makes a connection to Peer 1001.",
                "2026-11-24 22:45:39: Peer 1002 is connected from Peer 1003.",
                "2026-11-24 22:45:39: Peer 1002 has the preferred neighbors 1001,1003.",
                "2026-11-24 22:45:39: Peer 1002 has the optimistically unchoked neighbor 1004.",
                "2026-11-24 22:45:39: Peer 1002 is unchoked by 1001.",
                "2026-11-24 22:45:39: Peer 1002 is choked by 1001.",
                "2026-11-24 22:45:39: Peer 1002 received the 'have' message from 1001 for the piece 3.",
                "2026-11-24 22:45:39: Peer 1002 received the 'interested' message from 1003.",
                "2026-11-24 22:45:39: Peer 1002 received the 'not interested' message from 1003.",
                "2026-11-24 22:45:39: Peer 1002 has downloaded the piece 17 from 1001. Now the number of pieces it has is 5.",
                "2026-11-24 22:45:39: Peer 1002 has downloaded the complete file.",
            ]
        );
    }

    #[test]
    fn appends_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = EventLog::open(dir.path(), 9).unwrap();
            log.write(&Event::Complete);
        }
        let mut log = EventLog::open(dir.path(), 9).unwrap();
        log.write(&Event::ChokedBy(1));
        let text = std::fs::read_to_string(dir.path().join("log_peer_9.log")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(": Peer 9 has downloaded the complete file."));
        assert!(lines[1].ends_with(": Peer 9 is choked by 1."));
        assert_eq!(stamp(chrono::Utc::now()).len(), 19);
        let stamped = &lines[1][..19];
        assert!(
            chrono::NaiveDateTime::parse_from_str(stamped, "%Y-%m-%d %H:%M:%S").is_ok(),
            "line does not start with a local time stamp: {}",
            lines[1]
        );
    }

    #[test]
    fn time_stamps_follow_the_clock_second_by_second() {
        use chrono::TimeZone;
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(dir.path(), 1).unwrap();
        let t = chrono::Utc.with_ymd_and_hms(2026, 12, 7, 20, 0, 5).unwrap();
        let a = log.stamp_for(t).to_string();
        assert_eq!(a, stamp(t));
        let later_same_second = t + chrono::Duration::milliseconds(999);
        assert_eq!(log.stamp_for(later_same_second), a);
        let next = t + chrono::Duration::seconds(1);
        assert_eq!(log.stamp_for(next), stamp(next));
        assert_ne!(log.stamp_for(next), a);
        // The clock may step back; the stamp follows it.
        assert_eq!(log.stamp_for(t), a);
    }
}
