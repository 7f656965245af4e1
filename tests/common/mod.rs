//! Shared helpers of the integration tests: a swarm directory (Common.cfg,
//! PeerInfo.cfg, a random file for the seeders) on free loopback ports, real
//! `peerProcess` / `p2pshare peer` processes with their stderr in files, waiting with
//! a generous deadline (then killing), and a validator of the event logs against the
//! 11 line forms of SPEC A6 plus the protocol invariants they must show.
//!
//! Every test binary uses only part of this module.
#![allow(dead_code)]

use rand::{Rng, RngCore, SeedableRng};
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Deadline for a whole swarm to finish. Runs take seconds; this only bounds a hang
/// on a loaded machine.
pub const SWARM_DEADLINE: Duration = Duration::from_secs(90);

/// Deadline for a process that must fail at start-up (bad config) to exit.
pub const STARTUP_FAILURE_DEADLINE: Duration = Duration::from_secs(30);

pub const PEER_EXE: &str = env!("CARGO_BIN_EXE_peerProcess");
pub const P2PSHARE_EXE: &str = env!("CARGO_BIN_EXE_p2pshare");

// ---------------------------------------------------------------------------------
// Ports and files

/// Listening ports outside the kernel's ephemeral range, so that no outgoing
/// connection of a running peer can take the port of a peer that has not started yet.
/// Each candidate is checked by binding it first.
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static RANGE: OnceLock<(u32, u32)> = OnceLock::new();
    let &(low, span) = RANGE.get_or_init(|| {
        let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|t| {
                let mut it = t.split_whitespace().map(|x| x.parse::<u32>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((32768, 60999));
        if eph_lo >= 12_000 {
            (10_000, eph_lo - 10_000)
        } else {
            (eph_hi + 1, 65_535 - eph_hi)
        }
    });
    if NEXT.load(Ordering::Relaxed) == 0 {
        let start = rand::thread_rng().gen_range(1..span);
        let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut out = Vec::new();
    let mut tries = 0;
    while out.len() < n {
        tries += 1;
        assert!(tries < 10 * span, "no free port found");
        let port = (low + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        // Peers listen on 0.0.0.0; that bind fails if anything holds the port.
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            out.push(port);
        }
    }
    out
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

// ---------------------------------------------------------------------------------
// The swarm directory

/// What swarm to write.
#[derive(Clone, Debug)]
pub struct SwarmSpec {
    pub peers: usize,
    /// Positions (0-based, in PeerInfo.cfg order) of the peers with hasFile 1.
    pub seeders: Vec<usize>,
    pub file_size: usize,
    pub piece_size: u32,
    pub k: usize,
    pub unchoking_interval: u64,
    pub optimistic_interval: u64,
    pub first_id: u32,
    /// Gap between consecutive peer IDs (IDs need not be consecutive).
    pub id_step: u32,
    pub host: String,
    /// Write both files with CRLF line ends, blank lines and trailing spaces, as
    /// real files have (SPEC A1 says to accept them).
    pub messy_files: bool,
}

impl Default for SwarmSpec {
    fn default() -> Self {
        SwarmSpec {
            peers: 6,
            seeders: vec![0],
            file_size: 3_000_000,
            piece_size: 16_384,
            k: 2,
            unchoking_interval: 1,
            optimistic_interval: 2,
            first_id: 1001,
            id_step: 1,
            host: "localhost".into(),
            messy_files: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PeerEntry {
    pub id: u32,
    pub port: u16,
    pub has_file: bool,
}

/// A swarm directory in a fresh temporary directory (removed on drop unless
/// `P2PSHARE_KEEP_TEST_DIRS` is set).
pub struct Swarm {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    pub spec: SwarmSpec,
    pub peers: Vec<PeerEntry>,
    pub file_name: String,
    pub content: Vec<u8>,
}

impl Swarm {
    pub fn create(spec: SwarmSpec) -> Swarm {
        let dir = tempfile::Builder::new()
            .prefix("p2pshare-test-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_path_buf();
        let seed: u64 = rand::random();
        let content = random_bytes(spec.file_size, seed);
        let file_name = "thefile.dat".to_string();
        let ports = free_ports(spec.peers);
        let peers: Vec<PeerEntry> = (0..spec.peers)
            .map(|i| PeerEntry {
                id: spec.first_id + i as u32 * spec.id_step,
                port: ports[i],
                has_file: spec.seeders.contains(&i),
            })
            .collect();

        let eol = if spec.messy_files { "  \r\n" } else { "\n" };
        let blank = if spec.messy_files { "\r\n \r\n" } else { "" };
        let mut common = String::new();
        for (k, v) in [
            ("NumberOfPreferredNeighbors", spec.k.to_string()),
            ("UnchokingInterval", spec.unchoking_interval.to_string()),
            (
                "OptimisticUnchokingInterval",
                spec.optimistic_interval.to_string(),
            ),
            ("FileName", file_name.clone()),
            ("FileSize", spec.file_size.to_string()),
            ("PieceSize", spec.piece_size.to_string()),
        ] {
            write!(common, "{k} {v}{eol}{blank}").unwrap();
        }
        std::fs::write(path.join("Common.cfg"), common).unwrap();
        let mut info = String::new();
        for p in &peers {
            write!(
                info,
                "{blank}{} {} {} {}{eol}",
                p.id,
                spec.host,
                p.port,
                u8::from(p.has_file)
            )
            .unwrap();
        }
        std::fs::write(path.join("PeerInfo.cfg"), info).unwrap();
        for p in peers.iter().filter(|p| p.has_file) {
            let d = path.join(format!("peer_{}", p.id));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(&file_name), &content).unwrap();
        }
        let dir = if std::env::var_os("P2PSHARE_KEEP_TEST_DIRS").is_some() {
            eprintln!("keeping test dir {}", path.display());
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        Swarm {
            dir,
            path,
            spec,
            peers,
            file_name,
            content,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn ids(&self) -> Vec<u32> {
        self.peers.iter().map(|p| p.id).collect()
    }

    pub fn peer(&self, id: u32) -> &PeerEntry {
        self.peers
            .iter()
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("peer {id} is not in the swarm"))
    }

    /// Listed with hasFile 1 (false for an ID that is not listed).
    pub fn is_seeder(&self, id: u32) -> bool {
        self.peers.iter().any(|p| p.id == id && p.has_file)
    }

    pub fn num_pieces(&self) -> u32 {
        self.spec.file_size.div_ceil(self.spec.piece_size as usize) as u32
    }

    /// Length of piece `i` (the last one is shorter when FileSize is not a multiple).
    pub fn piece_len(&self, i: u32) -> usize {
        let start = i as usize * self.spec.piece_size as usize;
        (self.spec.file_size - start).min(self.spec.piece_size as usize)
    }

    pub fn copy_path(&self, id: u32) -> PathBuf {
        self.path.join(format!("peer_{id}")).join(&self.file_name)
    }

    pub fn log_path(&self, id: u32) -> PathBuf {
        self.path.join(format!("log_peer_{id}.log"))
    }

    pub fn stderr_path(&self, id: u32) -> PathBuf {
        self.path.join(format!("test_stderr_{id}.txt"))
    }

    pub fn read_log(&self, id: u32) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Starts peer `id` in the swarm directory.
    pub fn spawn(&self, id: u32, opts: &PeerOpts) -> PeerProc {
        let mut cmd = if opts.via_p2pshare {
            let mut c = Command::new(P2PSHARE_EXE);
            c.arg("peer");
            c
        } else {
            Command::new(PEER_EXE)
        };
        cmd.arg(id.to_string());
        if opts.dir_flag {
            cmd.arg("--dir").arg(&self.path);
            cmd.current_dir(std::env::temp_dir());
        } else {
            cmd.current_dir(&self.path);
        }
        if opts.strict {
            cmd.arg("--strict");
        }
        cmd.args(&opts.extra);
        // P2PSHARE_TEST_RUST_LOG sets the peers' RUST_LOG when debugging a test.
        match std::env::var("P2PSHARE_TEST_RUST_LOG") {
            Ok(level) => cmd.env("RUST_LOG", level),
            Err(_) => cmd.env_remove("RUST_LOG"),
        };
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let stderr_path = self.stderr_path(id);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start peer {id}: {e}"));
        PeerProc {
            id,
            child,
            status: None,
            stderr_path,
        }
    }

    /// Starts every peer in file order, `stagger` apart; `opts(position)` per peer.
    pub fn spawn_all(&self, stagger: Duration, opts: impl Fn(usize) -> PeerOpts) -> Vec<PeerProc> {
        let mut procs = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(stagger);
            }
            procs.push(self.spawn(p.id, &opts(i)));
        }
        procs
    }

    /// Waits for every process to exit (killing all of them after `deadline`) and
    /// asserts each exited 0.
    pub fn wait_all_success(&self, procs: &mut [PeerProc], deadline: Duration) {
        let end = Instant::now() + deadline;
        loop {
            let mut running = 0;
            for p in procs.iter_mut() {
                if p.try_wait().is_none() {
                    running += 1;
                }
            }
            if running == 0 {
                break;
            }
            if Instant::now() >= end {
                let running: Vec<u32> = procs
                    .iter_mut()
                    .filter_map(|p| p.try_wait().is_none().then_some(p.id))
                    .collect();
                for p in procs.iter_mut() {
                    p.kill();
                }
                panic!(
                    "swarm did not finish within {deadline:?}; still running: {running:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let failed: Vec<String> = procs
            .iter()
            .filter(|p| !p.status.unwrap().success())
            .map(|p| format!("peer {}: {}", p.id, p.status.unwrap()))
            .collect();
        assert!(
            failed.is_empty(),
            "peers failed: {failed:?}\n{}",
            self.diagnostics()
        );
        for p in procs.iter() {
            let err = p.stderr();
            assert!(!err.contains("panicked"), "peer {} panicked:\n{err}", p.id);
        }
    }

    /// Asserts that every peer's copy is byte-identical to the original.
    pub fn check_copies(&self) {
        for p in &self.peers {
            let path = self.copy_path(p.id);
            let got = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("peer {}: cannot read {}: {e}", p.id, path.display()));
            assert_eq!(
                got.len(),
                self.content.len(),
                "peer {}: copy has the wrong size",
                p.id
            );
            if got != self.content {
                let first = got
                    .iter()
                    .zip(&self.content)
                    .position(|(a, b)| a != b)
                    .unwrap();
                panic!(
                    "peer {}: copy differs from the original at byte {first} (piece {})",
                    p.id,
                    first / self.spec.piece_size as usize
                );
            }
        }
    }

    /// The tail of every peer's stderr and event log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for p in &self.peers {
            let err = std::fs::read_to_string(self.stderr_path(p.id)).unwrap_or_default();
            let log = self.read_log(p.id);
            let _ = writeln!(
                out,
                "--- peer {} stderr (last lines):\n{}\n--- peer {} log (last lines):\n{}",
                p.id,
                tail(&err, 15),
                p.id,
                tail(&log, 8)
            );
        }
        out
    }

    /// Validates every peer's log; panics listing the problems.
    pub fn validate_logs(&self, check: &LogCheck) -> BTreeMap<u32, Vec<LogLine>> {
        let (logs, problems) = validate_logs(self, check);
        if !problems.is_empty() {
            let shown: Vec<&String> = problems.iter().take(40).collect();
            panic!(
                "{} log problem(s) in {}:\n{}",
                problems.len(),
                self.path.display(),
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        logs
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                if std::env::var_os("P2PSHARE_KEEP_FAILED_TEST_DIRS").is_some() {
                    eprintln!("keeping failed test dir {}", dir.keep().display());
                }
            }
        }
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------
// Processes

/// How to start one peer.
#[derive(Clone, Debug, Default)]
pub struct PeerOpts {
    pub strict: bool,
    /// `p2pshare peer <ID>` instead of `peerProcess <ID>`.
    pub via_p2pshare: bool,
    /// Run from another directory and pass `--dir`.
    pub dir_flag: bool,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl PeerOpts {
    pub fn strict(strict: bool) -> PeerOpts {
        PeerOpts {
            strict,
            ..PeerOpts::default()
        }
    }
}

/// A running peer process, killed on drop if still running.
pub struct PeerProc {
    pub id: u32,
    child: Child,
    status: Option<ExitStatus>,
    pub stderr_path: PathBuf,
}

impl PeerProc {
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a command run with [`run_with_deadline`] did.
pub struct Ran {
    pub what: String,
    /// `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Its exit status; panics (with its output) if it had to be killed.
    pub fn exited(&self) -> ExitStatus {
        self.status.unwrap_or_else(|| {
            panic!(
                "{} did not exit before its deadline; killed.\nstdout:\n{}\nstderr:\n{}",
                self.what,
                self.stdout,
                tail(&self.stderr, 30)
            )
        })
    }
}

/// Runs a command with a deadline. It runs in its own process group, and at the
/// deadline that whole group is killed, so that the peers `p2pshare local` started
/// do not outlive it.
pub fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Ran {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0);
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().expect("spawn");
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= end {
            // The group's ID is the child's PID (process_group(0)).
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ran {
        what,
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------
// The log

/// One parsed event (SPEC A6); the peer IDs are the "other" peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    MakesConnection(u32),
    ConnectedFrom(u32),
    Preferred(Vec<u32>),
    Optimistic(u32),
    UnchokedBy(u32),
    ChokedBy(u32),
    Have { from: u32, piece: u32 },
    Interested(u32),
    NotInterested(u32),
    Downloaded { piece: u32, from: u32, count: u32 },
    Complete,
}

impl Ev {
    /// Every other peer ID the line names.
    pub fn others(&self) -> Vec<u32> {
        match self {
            Ev::MakesConnection(p)
            | Ev::ConnectedFrom(p)
            | Ev::Optimistic(p)
            | Ev::UnchokedBy(p)
            | Ev::ChokedBy(p)
            | Ev::Interested(p)
            | Ev::NotInterested(p) => vec![*p],
            Ev::Have { from, .. } | Ev::Downloaded { from, .. } => vec![*from],
            Ev::Preferred(l) => l.clone(),
            Ev::Complete => vec![],
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogLine {
    pub line_no: usize,
    pub time: String,
    pub me: u32,
    pub ev: Ev,
}

const ID: &str = r"([1-9][0-9]*)";
const NUM: &str = r"(0|[1-9][0-9]*)";

/// The 11 forms of SPEC A6, each anchored, with `(.+?)` for the timestamp and the
/// first peer ID.
fn forms() -> &'static [(&'static str, Regex)] {
    static FORMS: OnceLock<Vec<(&'static str, Regex)>> = OnceLock::new();
    FORMS.get_or_init(|| {
        let head = format!(r"^(.+?): Peer {ID} ");
        let f = |name: &'static str, tail: String| {
            (name, Regex::new(&format!("{head}{tail}$")).unwrap())
        };
        vec![
            f("makes", format!(r"makes a connection to Peer {ID}\.")),
            f("connected", format!(r"is connected from Peer {ID}\.")),
            f(
                "preferred",
                format!(r"has the preferred neighbors ({ID}(?:,{ID})*)\."),
            ),
            f(
                "optimistic",
                format!(r"has the optimistically unchoked neighbor {ID}\."),
            ),
            f("unchoked", format!(r"is unchoked by {ID}\.")),
            f("choked", format!(r"is choked by {ID}\.")),
            f(
                "have",
                format!(r"received the 'have' message from {ID} for the piece {NUM}\."),
            ),
            f(
                "interested",
                format!(r"received the 'interested' message from {ID}\."),
            ),
            f(
                "not interested",
                format!(r"received the 'not interested' message from {ID}\."),
            ),
            f(
                "downloaded",
                format!(
                    r"has downloaded the piece {NUM} from {ID}\. Now the number of pieces it has is {NUM}\."
                ),
            ),
            f("complete", r"has downloaded the complete file\.".to_string()),
        ]
    })
}

/// A timestamp must show a date and the hour, minute and second.
pub fn timestamp_ok(t: &str) -> bool {
    static DATE: OnceLock<Regex> = OnceLock::new();
    static TIME: OnceLock<Regex> = OnceLock::new();
    let date = DATE.get_or_init(|| {
        Regex::new(concat!(
            r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b",    // 2026-11-24
            r"|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b", // 11/24/2026
            r"|\b\d{1,2} [A-Z][a-z]{2,8},? \d{4}\b", // 24 Nov 2026
            r"|\b[A-Z][a-z]{2,8} \d{1,2},? \d{4}\b", // Nov 24, 2026
            r"|\b[A-Z][a-z]{2} \d{1,2} \d{1,2}:\d{2}:\d{2}( [A-Z]{2,5})? \d{4}\b", // ctime
        ))
        .unwrap()
    });
    let time = TIME.get_or_init(|| Regex::new(r"\b\d{1,2}:\d{2}:\d{2}\b").unwrap());
    date.is_match(t) && time.is_match(t) && !t.contains(": Peer ")
}

fn num(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("number `{s}` does not fit in 4 bytes"))
}

/// Parses one log line; it must match exactly one of the 11 forms.
pub fn parse_line(line: &str) -> Result<(String, u32, Ev), String> {
    let matching: Vec<(&str, regex::Captures)> = forms()
        .iter()
        .filter_map(|(name, re)| re.captures(line).map(|c| (*name, c)))
        .collect();
    let (name, c) = match matching.len() {
        0 => return Err("matches none of the 11 forms of SPEC A6".into()),
        1 => matching.into_iter().next().unwrap(),
        _ => {
            return Err(format!(
                "matches several forms: {:?}",
                matching.iter().map(|(n, _)| *n).collect::<Vec<_>>()
            ))
        }
    };
    let time = c[1].to_string();
    if !timestamp_ok(&time) {
        return Err(format!(
            "timestamp `{time}` does not show date, hour, minute and second"
        ));
    }
    let me = num(&c[2])?;
    let ev = match name {
        "makes" => Ev::MakesConnection(num(&c[3])?),
        "connected" => Ev::ConnectedFrom(num(&c[3])?),
        "preferred" => Ev::Preferred(
            c[3].split(',')
                .map(num)
                .collect::<Result<Vec<u32>, String>>()?,
        ),
        "optimistic" => Ev::Optimistic(num(&c[3])?),
        "unchoked" => Ev::UnchokedBy(num(&c[3])?),
        "choked" => Ev::ChokedBy(num(&c[3])?),
        "have" => Ev::Have {
            from: num(&c[3])?,
            piece: num(&c[4])?,
        },
        "interested" => Ev::Interested(num(&c[3])?),
        "not interested" => Ev::NotInterested(num(&c[3])?),
        "downloaded" => Ev::Downloaded {
            piece: num(&c[3])?,
            from: num(&c[4])?,
            count: num(&c[5])?,
        },
        "complete" => Ev::Complete,
        _ => unreachable!(),
    };
    Ok((time, me, ev))
}

/// What the logs are checked against beyond the swarm itself.
#[derive(Clone, Debug, Default)]
pub struct LogCheck {
    /// Extra "is connected from" lines expected in the log of `.0` for peer `.1`
    /// (hostile connections that used a listed peer's ID).
    pub extra_connected_from: HashMap<(u32, u32), usize>,
}

/// Checks every peer's log; returns the parsed logs and every problem found.
pub fn validate_logs(
    swarm: &Swarm,
    check: &LogCheck,
) -> (BTreeMap<u32, Vec<LogLine>>, Vec<String>) {
    let ids: BTreeSet<u32> = swarm.ids().into_iter().collect();
    let n = swarm.num_pieces();
    let k = swarm.spec.k;
    let mut problems = Vec::new();
    let mut logs: BTreeMap<u32, Vec<LogLine>> = BTreeMap::new();

    // 1. Form, own ID first, other IDs listed and not own, numbers in range.
    for &me in &ids {
        let text = match std::fs::read_to_string(swarm.log_path(me)) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!(
                    "peer {me}: no log {}: {e}",
                    swarm.log_path(me).display()
                ));
                continue;
            }
        };
        if !text.is_empty() && !text.ends_with('\n') {
            problems.push(format!("peer {me}: log does not end with a newline"));
        }
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let no = i + 1;
            let mut bad =
                |why: String| problems.push(format!("log_peer_{me}.log:{no}: {why}: {raw:?}"));
            match parse_line(raw) {
                Err(why) => bad(why),
                Ok((time, who, ev)) => {
                    if who != me {
                        bad(format!("first peer is {who}, not the log's own ID {me}"));
                        continue;
                    }
                    let others = ev.others();
                    if let Some(o) = others.iter().find(|o| !ids.contains(o)) {
                        bad(format!("names peer {o}, which is not in PeerInfo.cfg"));
                    }
                    if others.contains(&me) {
                        bad("names its own ID as the other peer".into());
                    }
                    match &ev {
                        Ev::Preferred(list) => {
                            if list.len() > k {
                                bad(format!(
                                    "{} preferred neighbours, more than k={k}",
                                    list.len()
                                ));
                            }
                            let set: BTreeSet<&u32> = list.iter().collect();
                            if set.len() != list.len() {
                                bad("a preferred neighbour is listed twice".into());
                            }
                        }
                        Ev::Have { piece, .. } | Ev::Downloaded { piece, .. } if *piece >= n => {
                            bad(format!("piece {piece} out of range (0..{n})"));
                        }
                        _ => {}
                    }
                    lines.push(LogLine {
                        line_no: no,
                        time,
                        me,
                        ev,
                    });
                }
            }
        }
        logs.insert(me, lines);
    }

    // 2. Connections: for i listed before j, j "makes a connection to" i and i "is
    // connected from" j, exactly once each; nothing else.
    let order: Vec<u32> = swarm.ids();
    for (pi, &i) in order.iter().enumerate() {
        for &j in &order[pi + 1..] {
            let count = |me: u32, f: &dyn Fn(&Ev) -> bool| {
                logs.get(&me)
                    .map_or(0, |l| l.iter().filter(|x| f(&x.ev)).count())
            };
            let makes = count(j, &|e| *e == Ev::MakesConnection(i));
            if makes != 1 {
                problems.push(format!(
                    "peer {j}: \"makes a connection to Peer {i}\" {makes} times, expected once"
                ));
            }
            let from = count(i, &|e| *e == Ev::ConnectedFrom(j));
            let want = 1 + check
                .extra_connected_from
                .get(&(i, j))
                .copied()
                .unwrap_or(0);
            if from != want {
                problems.push(format!(
                    "peer {i}: \"is connected from Peer {j}\" {from} times, expected {want}"
                ));
            }
            if count(i, &|e| *e == Ev::MakesConnection(j)) != 0 {
                problems.push(format!("peer {i} connected to the later peer {j}"));
            }
            if count(j, &|e| *e == Ev::ConnectedFrom(i)) != 0 {
                problems.push(format!(
                    "peer {j} accepted a connection from the earlier peer {i}"
                ));
            }
        }
    }

    // 3. Downloads.
    let downloaded: HashMap<u32, BTreeSet<u32>> = logs
        .iter()
        .map(|(&me, l)| {
            let set = l
                .iter()
                .filter_map(|x| match x.ev {
                    Ev::Downloaded { piece, .. } => Some(piece),
                    _ => None,
                })
                .collect();
            (me, set)
        })
        .collect();
    for (&me, lines) in &logs {
        let seeder = swarm.is_seeder(me);
        let mut expect_count = 1u32;
        let mut seen = BTreeSet::new();
        let mut complete_at = None;
        let mut unchoked_by = BTreeSet::new();
        for x in lines {
            let at = format!("log_peer_{me}.log:{}", x.line_no);
            match &x.ev {
                Ev::UnchokedBy(p) => {
                    unchoked_by.insert(*p);
                }
                Ev::Downloaded { piece, from, count } => {
                    if seeder {
                        problems.push(format!("{at}: seeder {me} downloaded a piece"));
                    }
                    if complete_at.is_some() {
                        problems.push(format!(
                            "{at}: download after \"has downloaded the complete file.\""
                        ));
                    }
                    if *count != expect_count {
                        problems.push(format!(
                            "{at}: piece count {count}, expected {expect_count}"
                        ));
                    }
                    expect_count = count + 1;
                    if !seen.insert(*piece) {
                        problems.push(format!("{at}: piece {piece} downloaded twice"));
                    }
                    let source_has = swarm.is_seeder(*from)
                        || downloaded.get(from).is_some_and(|s| s.contains(piece));
                    if !source_has {
                        problems.push(format!(
                            "{at}: piece {piece} from {from}, which never had it"
                        ));
                    }
                    if !unchoked_by.contains(from) {
                        problems.push(format!(
                            "{at}: piece {piece} from {from}, which never unchoked {me}"
                        ));
                    }
                }
                Ev::Complete => {
                    if seeder {
                        problems.push(format!("{at}: seeder {me} logs a complete download"));
                    }
                    if complete_at.is_some() {
                        problems.push(format!(
                            "{at}: second \"has downloaded the complete file.\""
                        ));
                    }
                    complete_at = Some(x.line_no);
                    if seen.len() as u32 != n {
                        problems.push(format!("{at}: complete after {} of {n} pieces", seen.len()));
                    }
                }
                _ => {}
            }
        }
        if !seeder {
            if seen.len() as u32 != n {
                problems.push(format!(
                    "peer {me}: downloaded {} distinct pieces, expected {n}",
                    seen.len()
                ));
            }
            if complete_at.is_none() {
                problems.push(format!(
                    "peer {me}: no \"has downloaded the complete file.\""
                ));
            }
        }
    }

    // 4. Interest, choking and 'have' as A5 says.
    for (&me, lines) in &logs {
        let mut interest: HashMap<u32, bool> = HashMap::new();
        let mut unchoked: HashMap<u32, bool> = HashMap::new();
        let mut haves: BTreeSet<(u32, u32)> = BTreeSet::new();
        for x in lines {
            let at = format!("log_peer_{me}.log:{}", x.line_no);
            match &x.ev {
                // A new connection starts over: not interested, choked.
                Ev::MakesConnection(p) | Ev::ConnectedFrom(p) => {
                    interest.remove(p);
                    unchoked.remove(p);
                }
                Ev::Interested(p) | Ev::NotInterested(p) => {
                    let now = matches!(x.ev, Ev::Interested(_));
                    if swarm.is_seeder(*p) && now {
                        problems.push(format!("{at}: seeder {p} cannot be interested"));
                    }
                    // Sent "once, until that changes" (A5.2): never the same twice.
                    if interest.insert(*p, now) == Some(now) {
                        problems.push(format!("{at}: repeated interest message from {p}"));
                    }
                }
                Ev::UnchokedBy(p) | Ev::ChokedBy(p) => {
                    let now = matches!(x.ev, Ev::UnchokedBy(_));
                    // Unchoke goes to the newly picked only, choke to the previously
                    // unchoked only (A5.3): they alternate, starting with unchoke.
                    let before = unchoked.insert(*p, now).unwrap_or(false);
                    if before == now {
                        problems.push(format!(
                            "{at}: {} by {p} while already {}",
                            if now { "unchoked" } else { "choked" },
                            if now { "unchoked" } else { "choked" }
                        ));
                    }
                    if swarm.is_seeder(me) && now {
                        problems.push(format!(
                            "{at}: seeder {me} was unchoked although it is never interested"
                        ));
                    }
                }
                Ev::Have { from, piece } => {
                    if swarm.is_seeder(*from) {
                        problems.push(format!("{at}: 'have' from seeder {from}"));
                    } else if !downloaded.get(from).is_some_and(|s| s.contains(piece)) {
                        problems.push(format!(
                            "{at}: 'have' {piece} from {from}, which never downloaded it"
                        ));
                    }
                    if !haves.insert((*from, *piece)) {
                        problems.push(format!("{at}: 'have' {piece} from {from} twice"));
                    }
                }
                Ev::Preferred(list) => {
                    for p in list {
                        if swarm.is_seeder(*p) {
                            problems.push(format!(
                                "{at}: seeder {p} preferred, but it is never interested"
                            ));
                        }
                    }
                }
                Ev::Optimistic(p) if swarm.is_seeder(*p) => {
                    problems.push(format!(
                        "{at}: seeder {p} optimistically unchoked, but it is never interested"
                    ));
                }
                _ => {}
            }
        }
    }

    // 5. Whoever unchoked a peer had picked it, as a preferred or the optimistic
    // neighbour, and logged that pick.
    for (&me, lines) in &logs {
        for x in lines {
            if let Ev::UnchokedBy(by) = x.ev {
                let picked = logs.get(&by).is_some_and(|l| {
                    l.iter().any(|y| match &y.ev {
                        Ev::Preferred(list) => list.contains(&me),
                        Ev::Optimistic(o) => *o == me,
                        _ => false,
                    })
                });
                if !picked {
                    problems.push(format!(
                        "log_peer_{me}.log:{}: unchoked by {by}, whose log never lists {me} as preferred or optimistic",
                        x.line_no
                    ));
                }
            }
        }
    }
    (logs, problems)
}

/// Polls `path` until its text matches `re` (or `within` passes).
pub fn wait_for_text(path: &Path, re: &Regex, within: Duration) -> Result<(), String> {
    let end = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if re.is_match(&text) {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(format!(
                "{} has no line matching /{re}/ within {within:?}; last lines:\n{}",
                path.display(),
                tail(&text, 10)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
