//! Interoperability with an independent implementation of SPEC Part A.
//!
//! `tests/interop/pypeer.py` is a Python (standard library only) peer written from
//! the SPEC alone. It validates everything it receives and exits with status 3 on a
//! protocol violation, so these swarms catch wire bugs of ours that a swarm of our
//! own peers would not notice (both sides of a bug agree with each other).
//!
//! Each test builds a swarm in a temporary directory that mixes our `peerProcess`
//! with `pypeer.py` processes, starts them in PeerInfo.cfg order (like the classic
//! launcher), and checks that every process exits 0 within a generous deadline, that
//! every copy of the file is byte-identical to the original, and that every line of
//! every log (both implementations) is one of the 11 forms of SPEC A6 and tells a
//! consistent story. Those tests are skipped (with a message) when `python3` is
//! missing.
//!
//! Also here: a self-test of pypeer (it must refuse reserved bytes with
//! `--reject-reserved` and must catch a bad bitfield, or a pass above would mean
//! nothing), and two wire races that mixed swarms hit only now and then, provoked
//! with a hand-written peer on a raw socket (no Python needed). When a test fails
//! its swarm directory is kept and named in the message. `INTEROP_PEER_EXE=path`
//! runs everything against another build of `peerProcess`.

use regex::Regex;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PEER_EXE: &str = env!("CARGO_BIN_EXE_peerProcess");

/// Our binary; `INTEROP_PEER_EXE` runs the swarms against another build of it.
fn peer_exe() -> PathBuf {
    std::env::var_os("INTEROP_PEER_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PEER_EXE))
}

/// Bounds a hang; a swarm normally finishes in a few seconds.
const DEADLINE: Duration = Duration::from_secs(90);
/// Pause between starts, as the classic launcher does.
const START_GAP: Duration = Duration::from_millis(150);

const PIECE_SIZE: u64 = 16384;
/// About 1.5 MB, deliberately not a multiple of the piece size (92 pieces, the last
/// one short, and 92 is not a multiple of 8 so the bitfield has spare bits).
const FILE_SIZE: u64 = 91 * PIECE_SIZE + 5_000;
const FILE_NAME: &str = "TheFile.dat";
const K: usize = 2;

fn pypeer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pypeer.py")
}

/// `true` when `python3` (3.8 or later) runs; otherwise prints why the test is skipped.
fn have_python() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    let found = *FOUND.get_or_init(|| {
        Command::new("python3")
            .args([
                "-c",
                "import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    if !found {
        // Straight to stderr, past the test harness's capture, so the skip is seen.
        let _ = std::io::stderr()
            .write_all(b"SKIPPED: python3 (>= 3.8) not found; the pypeer interop tests need it\n");
    }
    found
}

// ---------------------------------------------------------------------------------
// Ports

/// Listening ports taken outside the kernel's ephemeral range, so that an outgoing
/// connection of a running peer never holds the port of a peer that has not started
/// yet; each one is checked by binding it.
fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    static RANGE: OnceLock<(u16, u16)> = OnceLock::new();
    let &(low, high) = RANGE.get_or_init(|| {
        let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|t| {
                let v: Vec<u32> = t
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                (v.len() == 2).then(|| (v[0], v[1]))
            })
            .unwrap_or((32768, 60999));
        if eph_lo >= 12_000 {
            (10_000, (eph_lo - 1) as u16)
        } else {
            ((eph_hi + 1).min(65_000) as u16, 65_535)
        }
    });
    // Start somewhere depending on the process so concurrent test binaries differ.
    let span = high - low;
    let _ = NEXT.compare_exchange(
        0,
        low + (std::process::id() as u16).wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let mut out = Vec::new();
    let mut tries = 0;
    while out.len() < n {
        tries += 1;
        assert!(tries < 10_000, "no free loopback ports");
        let mut port = NEXT.fetch_add(1, Ordering::Relaxed);
        if port < low || port >= high {
            NEXT.store(low + 1, Ordering::Relaxed);
            port = low;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            out.push(port);
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Swarms

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Our peerProcess, default mode (advertises extensions).
    Ours,
    /// Our peerProcess with --strict.
    OursStrict,
    /// pypeer.py.
    Py,
    /// pypeer.py --reject-reserved.
    PyReject,
}

impl Kind {
    fn is_python(self) -> bool {
        matches!(self, Kind::Py | Kind::PyReject)
    }
}

struct PeerSpec {
    id: u32,
    kind: Kind,
    has_file: bool,
    port: u16,
}

struct Swarm {
    /// Taken and kept (not deleted) when a test fails, for a post-mortem.
    tmp: RefCell<Option<tempfile::TempDir>>,
    dir: PathBuf,
    peers: Vec<PeerSpec>,
    original: Vec<u8>,
}

/// Deterministic, incompressible-looking bytes (xorshift64*).
fn file_bytes(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn num_pieces() -> u64 {
    FILE_SIZE.div_ceil(PIECE_SIZE)
}

impl Swarm {
    /// `layout`: the peers in PeerInfo.cfg order, with whether each starts with the file.
    fn new(layout: &[(Kind, bool)]) -> Swarm {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let ports = free_ports(layout.len());
        let peers: Vec<PeerSpec> = layout
            .iter()
            .zip(ports)
            .enumerate()
            .map(|(i, (&(kind, has_file), port))| PeerSpec {
                id: 1001 + i as u32,
                kind,
                has_file,
                port,
            })
            .collect();
        let common = format!(
            "NumberOfPreferredNeighbors {K}\nUnchokingInterval 1\nOptimisticUnchokingInterval 2\n\
             FileName {FILE_NAME}\nFileSize {FILE_SIZE}\nPieceSize {PIECE_SIZE}\n"
        );
        std::fs::write(dir.join("Common.cfg"), common).unwrap();
        let mut info = String::new();
        for p in &peers {
            writeln!(
                info,
                "{} 127.0.0.1 {} {}",
                p.id,
                p.port,
                u8::from(p.has_file)
            )
            .unwrap();
        }
        std::fs::write(dir.join("PeerInfo.cfg"), info).unwrap();
        let original = file_bytes(FILE_SIZE, 0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64);
        for p in peers.iter().filter(|p| p.has_file) {
            let sub = dir.join(format!("peer_{}", p.id));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join(FILE_NAME), &original).unwrap();
        }
        Swarm {
            tmp: RefCell::new(Some(tmp)),
            dir,
            peers,
            original,
        }
    }

    fn stderr_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("stderr_{id}.txt"))
    }

    fn stderr_of(&self, id: u32) -> String {
        std::fs::read_to_string(self.stderr_path(id)).unwrap_or_default()
    }

    fn command(&self, p: &PeerSpec) -> Command {
        let mut cmd = if p.kind.is_python() {
            let mut c = Command::new("python3");
            c.arg(pypeer_script()).arg(p.id.to_string());
            if p.kind == Kind::PyReject {
                c.arg("--reject-reserved");
            }
            c
        } else {
            let mut c = Command::new(peer_exe());
            c.arg(p.id.to_string());
            if p.kind == Kind::OursStrict {
                c.arg("--strict");
            }
            c
        };
        cmd.arg("--dir").arg(&self.dir);
        let err = std::fs::File::create(self.stderr_path(p.id)).unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
        cmd
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for p in &self.peers {
            writeln!(
                s,
                "  {} {:?}{}",
                p.id,
                p.kind,
                if p.has_file { " (seeder)" } else { "" }
            )
            .unwrap();
        }
        s
    }

    /// Everything useful when a test fails: layout, statuses, stderr tails, log
    /// tails. The directory is kept.
    fn report(&self, statuses: &BTreeMap<u32, String>) -> String {
        if let Some(tmp) = self.tmp.borrow_mut().take() {
            let _ = tmp.keep();
        }
        let mut s = format!("swarm kept in {}:\n{}", self.dir.display(), self.describe());
        for p in &self.peers {
            let status = statuses.get(&p.id).map(String::as_str).unwrap_or("?");
            writeln!(
                s,
                "--- peer {} ({:?}): {status}; stderr (tail):",
                p.id, p.kind
            )
            .unwrap();
            let err = self.stderr_of(p.id);
            for line in tail(&err, 25) {
                writeln!(s, "    {line}").unwrap();
            }
            let log = std::fs::read_to_string(self.dir.join(format!("log_peer_{}.log", p.id)))
                .unwrap_or_default();
            writeln!(s, "    log (tail):").unwrap();
            for line in tail(&log, 8) {
                writeln!(s, "    | {line}").unwrap();
            }
        }
        s
    }

    /// Starts every peer in file order and waits for all of them. Panics (after
    /// killing the rest) as soon as one exits non-zero or the deadline passes.
    fn run(&self) -> Duration {
        let started = Instant::now();
        let mut children: Vec<(u32, Child)> = Vec::new();
        let mut statuses: BTreeMap<u32, String> = BTreeMap::new();
        let mut failure: Option<String> = None;
        for p in &self.peers {
            match self.command(p).spawn() {
                Ok(c) => children.push((p.id, c)),
                Err(e) => {
                    failure = Some(format!("cannot start peer {}: {e}", p.id));
                    break;
                }
            }
            std::thread::sleep(START_GAP);
            if let Some(f) = poll(&mut children, &mut statuses) {
                failure = Some(f);
                break;
            }
        }
        while failure.is_none() && !children.is_empty() {
            if started.elapsed() > DEADLINE {
                let left: Vec<String> = children.iter().map(|(id, _)| id.to_string()).collect();
                failure = Some(format!(
                    "deadline of {DEADLINE:?} passed; still running: {}",
                    left.join(",")
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            failure = poll(&mut children, &mut statuses);
        }
        for (id, mut child) in children {
            let _ = child.kill();
            let _ = child.wait();
            statuses.entry(id).or_insert_with(|| "killed".to_string());
        }
        if let Some(f) = failure {
            panic!("{f}\n{}", self.report(&statuses));
        }
        started.elapsed()
    }

    /// The files and the logs, once every process exited 0.
    fn check(&self) {
        let statuses = BTreeMap::new();
        for p in &self.peers {
            let path = self.dir.join(format!("peer_{}", p.id)).join(FILE_NAME);
            let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                got == self.original,
                "peer {} ({:?}): {} differs from the original ({} vs {} bytes)\n{}",
                p.id,
                p.kind,
                path.display(),
                got.len(),
                self.original.len(),
                self.report(&statuses)
            );
        }
        let mut problems = Vec::new();
        for p in &self.peers {
            let path = self.dir.join(format!("log_peer_{}.log", p.id));
            match std::fs::read_to_string(&path) {
                Ok(text) => problems.extend(
                    validate_log(p, &self.peers, &text)
                        .into_iter()
                        .map(|e| format!("log_peer_{} ({:?}): {e}", p.id, p.kind)),
                ),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        assert!(
            problems.is_empty(),
            "log problems:\n  {}\n{}",
            problems.join("\n  "),
            self.report(&statuses)
        );
    }

    /// Our default-mode peers advertise extensions in the handshake; --strict ones
    /// must not. A plain pypeer reports every advertising connector on stderr.
    fn check_advertising(&self) {
        for py in self.peers.iter().filter(|p| p.kind == Kind::Py) {
            let err = self.stderr_of(py.id);
            for ours in self.peers.iter().filter(|o| o.id > py.id) {
                let advertised =
                    err.contains(&format!("peer {} advertises reserved bytes", ours.id));
                match ours.kind {
                    Kind::Ours => assert!(
                        advertised,
                        "peer {} (ours, default mode) did not advertise extensions to pypeer {}",
                        ours.id, py.id
                    ),
                    Kind::OursStrict => assert!(
                        !advertised,
                        "peer {} (ours, --strict) sent non-zero reserved bytes to pypeer {}",
                        ours.id, py.id
                    ),
                    _ => {}
                }
            }
        }
    }

    /// Every default-mode peer of ours listed after a --reject-reserved pypeer was
    /// refused once (its extended handshake) and got in with the plain one.
    fn check_fallback(&self) {
        let mut exercised = 0;
        for py in self.peers.iter().filter(|p| p.kind == Kind::PyReject) {
            let err = self.stderr_of(py.id);
            for ours in self
                .peers
                .iter()
                .filter(|o| o.id > py.id && o.kind == Kind::Ours)
            {
                assert!(
                    err.contains(&format!(
                        "refusing peer {}: non-zero reserved bytes",
                        ours.id
                    )),
                    "pypeer {} never refused our peer {}: the fallback was not exercised",
                    py.id,
                    ours.id
                );
                exercised += 1;
            }
        }
        assert!(exercised > 0, "the layout does not exercise the fallback");
    }
}

fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Reaps the children that exited; `Some(reason)` when one failed.
fn poll(children: &mut Vec<(u32, Child)>, statuses: &mut BTreeMap<u32, String>) -> Option<String> {
    let mut failure = None;
    children.retain_mut(|(id, child)| match child.try_wait() {
        Ok(Some(status)) => {
            statuses.insert(*id, describe_status(status));
            if !status.success() && failure.is_none() {
                failure = Some(format!("peer {id} exited with {}", describe_status(status)));
            }
            false
        }
        Ok(None) => true,
        Err(e) => {
            failure = Some(format!("waiting for peer {id}: {e}"));
            true
        }
    });
    failure
}

fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(0) => "exit 0".to_string(),
        Some(3) => "exit 3 (pypeer saw a protocol violation)".to_string(),
        Some(c) => format!("exit {c}"),
        None => format!("{status}"),
    }
}

// ---------------------------------------------------------------------------------
// Logs

struct Forms {
    line: Regex,
    time_date: Regex,
    time_clock: Regex,
    makes: Regex,
    from: Regex,
    preferred: Regex,
    optimistic: Regex,
    unchoked: Regex,
    choked: Regex,
    have: Regex,
    interested: Regex,
    not_interested: Regex,
    downloaded: Regex,
    complete: Regex,
}

fn forms() -> &'static Forms {
    static FORMS: OnceLock<Forms> = OnceLock::new();
    FORMS.get_or_init(|| {
        let r = |s: &str| Regex::new(s).unwrap();
        Forms {
            line: r(r"^(.+?): (Peer .*)$"),
            time_date: r(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4}"),
            time_clock: r(r"\d{1,2}:\d{2}:\d{2}"),
            makes: r(r"^Peer (\d+) makes a connection to Peer (\d+)\.$"),
            from: r(r"^Peer (\d+) is connected from Peer (\d+)\.$"),
            preferred: r(r"^Peer (\d+) has the preferred neighbors (\d+(?:,\d+)*)\.$"),
            optimistic: r(r"^Peer (\d+) has the optimistically unchoked neighbor (\d+)\.$"),
            unchoked: r(r"^Peer (\d+) is unchoked by (\d+)\.$"),
            choked: r(r"^Peer (\d+) is choked by (\d+)\.$"),
            have: r(r"^Peer (\d+) received the 'have' message from (\d+) for the piece (\d+)\.$"),
            interested: r(r"^Peer (\d+) received the 'interested' message from (\d+)\.$"),
            not_interested: r(r"^Peer (\d+) received the 'not interested' message from (\d+)\.$"),
            downloaded: r(
                r"^Peer (\d+) has downloaded the piece (\d+) from (\d+)\. Now the number of pieces it has is (\d+)\.$",
            ),
            complete: r(r"^Peer (\d+) has downloaded the complete file\.$"),
        }
    })
}

fn num(s: &str) -> u64 {
    s.parse().unwrap_or(u64::MAX)
}

/// Every line is one of the 11 forms, about this peer and its neighbours, and the
/// whole log is consistent: one connection line per neighbour (the right direction),
/// each piece downloaded once with the count going up by one, the completion line
/// exactly once for a peer that started without the file.
fn validate_log(me: &PeerSpec, peers: &[PeerSpec], text: &str) -> Vec<String> {
    let f = forms();
    let n = num_pieces();
    let pos = peers.iter().position(|p| p.id == me.id).unwrap();
    let others: BTreeSet<u64> = peers
        .iter()
        .filter(|p| p.id != me.id)
        .map(|p| p.id as u64)
        .collect();
    let earlier: BTreeSet<u64> = peers[..pos].iter().map(|p| p.id as u64).collect();
    let later: BTreeSet<u64> = peers[pos + 1..].iter().map(|p| p.id as u64).collect();
    let mut errs = Vec::new();
    let mut made = Vec::new();
    let mut accepted = Vec::new();
    let mut downloaded = BTreeSet::new();
    let mut count = 0u64;
    let mut completes = 0;
    for (i, line) in text.lines().enumerate() {
        let at = i + 1;
        let Some(c) = f.line.captures(line) else {
            errs.push(format!("line {at} is not '[Time]: Peer ...': {line:?}"));
            continue;
        };
        let time = &c[1];
        if !f.time_date.is_match(time) || !f.time_clock.is_match(time) {
            errs.push(format!("line {at}: time {time:?} lacks a date or h:m:s"));
        }
        let body = &c[2];
        let neighbour = |id: &str, errs: &mut Vec<String>| {
            if !others.contains(&num(id)) {
                errs.push(format!("line {at}: {id} is not a neighbour: {line:?}"));
            }
        };
        let subject = if let Some(c) = f.makes.captures(body) {
            neighbour(&c[2], &mut errs);
            made.push(num(&c[2]));
            c[1].to_string()
        } else if let Some(c) = f.from.captures(body) {
            neighbour(&c[2], &mut errs);
            accepted.push(num(&c[2]));
            c[1].to_string()
        } else if let Some(c) = f.preferred.captures(body) {
            let ids: Vec<&str> = c[2].split(',').collect();
            let distinct: BTreeSet<&str> = ids.iter().copied().collect();
            if ids.len() > K || distinct.len() != ids.len() {
                errs.push(format!(
                    "line {at}: more than k={K} or repeated preferred neighbours: {line:?}"
                ));
            }
            for id in ids {
                neighbour(id, &mut errs);
            }
            c[1].to_string()
        } else if let Some(c) = f
            .optimistic
            .captures(body)
            .or_else(|| f.unchoked.captures(body))
            .or_else(|| f.choked.captures(body))
            .or_else(|| f.interested.captures(body))
            .or_else(|| f.not_interested.captures(body))
        {
            neighbour(&c[2], &mut errs);
            c[1].to_string()
        } else if let Some(c) = f.have.captures(body) {
            neighbour(&c[2], &mut errs);
            if num(&c[3]) >= n {
                errs.push(format!("line {at}: piece {} out of range: {line:?}", &c[3]));
            }
            c[1].to_string()
        } else if let Some(c) = f.downloaded.captures(body) {
            neighbour(&c[3], &mut errs);
            let piece = num(&c[2]);
            if piece >= n {
                errs.push(format!("line {at}: piece {piece} out of range"));
            }
            if !downloaded.insert(piece) {
                errs.push(format!("line {at}: piece {piece} downloaded twice"));
            }
            count += 1;
            if num(&c[4]) != count {
                errs.push(format!(
                    "line {at}: says it has {} pieces, but this is download number {count}",
                    &c[4]
                ));
            }
            c[1].to_string()
        } else if let Some(c) = f.complete.captures(body) {
            completes += 1;
            if count != n {
                errs.push(format!(
                    "line {at}: complete after only {count}/{n} downloads"
                ));
            }
            c[1].to_string()
        } else {
            errs.push(format!("line {at} is none of the 11 A6 forms: {line:?}"));
            continue;
        };
        if num(&subject) != me.id as u64 {
            errs.push(format!(
                "line {at}: written by {} but names peer {subject}",
                me.id
            ));
        }
    }
    let made_set: BTreeSet<u64> = made.iter().copied().collect();
    let accepted_set: BTreeSet<u64> = accepted.iter().copied().collect();
    if made.len() != made_set.len() || made_set != earlier {
        errs.push(format!(
            "'makes a connection' lines name {made:?}; expected each of {earlier:?} once"
        ));
    }
    if accepted.len() != accepted_set.len() || accepted_set != later {
        errs.push(format!(
            "'is connected from' lines name {accepted:?}; expected each of {later:?} once"
        ));
    }
    if me.has_file {
        if count != 0 || completes != 0 {
            errs.push(format!(
                "a seeder logged {count} downloads and {completes} completions"
            ));
        }
    } else if count != n || completes != 1 {
        errs.push(format!(
            "{count}/{n} pieces downloaded and {completes} completion lines"
        ));
    }
    errs
}

// ---------------------------------------------------------------------------------
// The swarms

fn run_swarm(name: &str, layout: &[(Kind, bool)]) -> Swarm {
    let swarm = Swarm::new(layout);
    let took = swarm.run();
    eprintln!(
        "{name}: {} peers finished in {:.1}s",
        layout.len(),
        took.as_secs_f64()
    );
    swarm.check();
    swarm.check_advertising();
    swarm
}

/// (a) A Python seeder listed first, four of our peers in default mode, and a Python
/// downloader listed last.
#[test]
fn python_seeder_our_peers_python_downloader() {
    if !have_python() {
        return;
    }
    use Kind::*;
    run_swarm(
        "python seeder",
        &[
            (Py, true),
            (Ours, false),
            (Ours, false),
            (Ours, false),
            (Ours, false),
            (Py, false),
        ],
    );
}

/// (b) Our seeder, Python peers interleaved with ours, some of ours --strict.
#[test]
fn our_seeder_interleaved_with_python_some_strict() {
    if !have_python() {
        return;
    }
    use Kind::*;
    run_swarm(
        "our seeder, interleaved",
        &[
            (Ours, true),
            (Py, false),
            (OursStrict, false),
            (Py, false),
            (Ours, false),
            (OursStrict, false),
            (Py, false),
        ],
    );
}

/// (c) Python peers that close on non-zero reserved bytes, listed before our
/// default-mode peers: every one of ours must fall back to a plain handshake
/// (SPEC Part B) and the swarm must still finish.
#[test]
fn reject_reserved_python_peers_force_plain_fallback() {
    if !have_python() {
        return;
    }
    use Kind::*;
    let swarm = run_swarm(
        "reject-reserved",
        &[
            (PyReject, true),
            (Ours, false),
            (Ours, false),
            (PyReject, false),
            (Ours, false),
            (Py, false),
            (Ours, false),
        ],
    );
    swarm.check_fallback();
}

// ---------------------------------------------------------------------------------
// The instrument itself: a pass above means nothing unless pypeer does notice a
// violation and does refuse reserved bytes.

fn handshake(id: u32, reserved: [u8; 10]) -> Vec<u8> {
    let mut h = b"P2PFILESHARINGPROJ".to_vec();
    h.extend_from_slice(&reserved);
    h.extend_from_slice(&id.to_be_bytes());
    h
}

fn connect_retrying(port: u16) -> TcpStream {
    let start = Instant::now();
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("pypeer never listened on {port}: {e}"),
        }
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A hand-written client listed after a pypeer seeder: `--reject-reserved` closes
/// on its advertising handshake and accepts the plain retry; then a bitfield with a
/// spare bit set makes pypeer exit 3 with a VIOLATION on stderr.
#[test]
fn pypeer_refuses_reserved_bytes_and_catches_bad_bitfield() {
    if !have_python() {
        return;
    }
    let swarm = Swarm::new(&[(Kind::PyReject, true), (Kind::Ours, false)]);
    let (seeder, client) = (&swarm.peers[0], &swarm.peers[1]);
    let mut child = swarm.command(seeder).spawn().expect("start pypeer");
    let timeout = Some(Duration::from_secs(10));

    // Advertising handshake: closed without an answer.
    let mut s = connect_retrying(seeder.port);
    s.set_read_timeout(timeout).unwrap();
    let mut reserved = [0u8; 10];
    reserved[..5].copy_from_slice(b"p2ps\x01");
    s.write_all(&handshake(client.id, reserved)).unwrap();
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n, 0,
        "pypeer --reject-reserved answered an advertising handshake"
    );
    drop(s);

    // Plain handshake: answered with zero reserved bytes and the seeder's ID, then
    // the seeder's bitfield (all ones, spare bits zero).
    let mut s = connect_retrying(seeder.port);
    s.set_read_timeout(timeout).unwrap();
    s.write_all(&handshake(client.id, [0; 10])).unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf.to_vec(), handshake(seeder.id, [0; 10]));
    let bf_len = num_pieces().div_ceil(8) as usize;
    let mut msg = vec![0u8; 5 + bf_len];
    s.read_exact(&mut msg).unwrap();
    assert_eq!(
        &msg[..5],
        &[0, 0, 0, 1 + bf_len as u8, 5][..],
        "bitfield header"
    );
    let spare = bf_len * 8 - num_pieces() as usize;
    assert!(spare > 0, "the test file must leave spare bits");
    assert_eq!(
        msg[5 + bf_len - 1],
        0xffu8 << spare,
        "pypeer's own spare bits"
    );
    assert!(msg[5..5 + bf_len - 1].iter().all(|&b| b == 0xff));

    // Our bitfield with the lowest spare bit set: a violation.
    let mut bad = vec![0u8; bf_len];
    bad[bf_len - 1] = 1;
    let mut out = (1 + bf_len as u32).to_be_bytes().to_vec();
    out.push(5);
    out.extend_from_slice(&bad);
    s.write_all(&out).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let _ = s.shutdown(Shutdown::Both);
    let err = swarm.stderr_of(seeder.id);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "pypeer should exit 3 on a bad bitfield; stderr:\n{err}"
    );
    assert!(
        err.contains("VIOLATION") && err.contains("spare bits"),
        "stderr:\n{err}"
    );
    assert!(
        err.contains(&format!("refusing peer {}", client.id)),
        "stderr:\n{err}"
    );
}

// ---------------------------------------------------------------------------------
// Wire races that mixed swarms hit only now and then, made (nearly) deterministic
// with a hand-written peer.

/// Reads one message (type, payload); `None` on timeout or end of stream.
fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; len.checked_sub(1)?];
    s.read_exact(&mut payload).ok()?;
    Some((head[4], payload))
}

/// Many implementations write their handshake reply and their bitfield back to back,
/// so both arrive in one segment. Our connector must still see the bitfield: an
/// acceptor that has every piece must get `interested`. (A lost bitfield also means
/// never learning that a seeder is complete, so the peer never exits.)
#[test]
fn bitfield_arriving_with_the_handshake_reply_is_not_lost() {
    let swarm = Swarm::new(&[(Kind::Py, true), (Kind::Ours, false)]);
    let (fake, ours) = (&swarm.peers[0], &swarm.peers[1]);
    let listener = TcpListener::bind(("127.0.0.1", fake.port)).expect("bind the fake acceptor");
    let pieces = num_pieces() as usize;
    let bf_len = pieces.div_ceil(8);
    let mut reply = handshake(fake.id, [0; 10]);
    reply.extend_from_slice(&(1 + bf_len as u32).to_be_bytes());
    reply.push(5);
    reply.extend(vec![0xffu8; bf_len - 1]);
    reply.push(0xffu8 << (bf_len * 8 - pieces));
    const RUNS: usize = 30;
    let mut lost = Vec::new();
    for run in 0..RUNS {
        let mut child = swarm.command(ours).spawn().expect("start peerProcess");
        let (mut s, _) = listener.accept().expect("accept our connector");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut hs = [0u8; 32];
        s.read_exact(&mut hs).expect("our handshake");
        assert_eq!(&hs[..18], b"P2PFILESHARINGPROJ");
        assert_eq!(&hs[28..], &ours.id.to_be_bytes());
        s.write_all(&reply).unwrap(); // one write: handshake reply + full bitfield
        let mut seen = Vec::new();
        while let Some((t, _)) = read_message(&mut s) {
            seen.push(t);
            if t == 2 {
                break;
            }
        }
        if !seen.contains(&2) {
            lost.push(format!("run {run}: message types received {seen:?}"));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        lost.is_empty(),
        "our connector ignored a full bitfield that arrived with the handshake reply \
         (no 'interested') in {} of {RUNS} runs:\n  {}",
        lost.len(),
        lost.join("\n  ")
    );
}

/// An earlier peer that has the whole file and closes its connection has left for
/// good (it exits once it knows every peer is complete). Connecting to it again makes
/// a second connection for the pair and a second "makes a connection" line.
#[test]
fn no_reconnection_to_a_complete_peer_that_closed() {
    // 1003 never starts, so ours cannot finish; it knows 1001 is complete.
    let swarm = Swarm::new(&[(Kind::Py, true), (Kind::Ours, true), (Kind::Py, false)]);
    let (fake, ours) = (&swarm.peers[0], &swarm.peers[1]);
    let listener = TcpListener::bind(("127.0.0.1", fake.port)).expect("bind the fake peer");
    let mut child = swarm.command(ours).spawn().expect("start peerProcess");
    let (mut s, _) = listener.accept().expect("accept our connector");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hs = [0u8; 32];
    s.read_exact(&mut hs).expect("our handshake");
    let pieces = num_pieces() as usize;
    let bf_len = pieces.div_ceil(8);
    let mut bitfield = (1 + bf_len as u32).to_be_bytes().to_vec();
    bitfield.push(5);
    bitfield.extend(vec![0xffu8; bf_len - 1]);
    bitfield.push(0xffu8 << (bf_len * 8 - pieces));
    // Our bitfield is sent once the connection is registered; answering only then
    // keeps this test clear of the race of the test above.
    s.write_all(&handshake(fake.id, [0; 10])).unwrap();
    let first = read_message(&mut s).map(|(t, _)| t);
    assert_eq!(first, Some(5), "first message from our peer");
    s.write_all(&bitfield).unwrap(); // complete
    std::thread::sleep(Duration::from_millis(500));
    s.shutdown(Shutdown::Write).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    drop(s);
    listener.set_nonblocking(true).unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    let mut again = false;
    while Instant::now() < until && !again {
        again = listener.accept().is_ok();
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(swarm.dir.join(format!("log_peer_{}.log", ours.id)))
        .unwrap_or_default();
    assert!(
        !again,
        "our peer reconnected to peer {} which has the whole file and had closed; log:\n{log}",
        fake.id
    );
}
