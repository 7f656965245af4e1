//! Fault injection with real processes (our `peerProcess`, and `pypeer.py` as a
//! hostile uploader):
//!
//! * `downloaders_killed_mid_transfer_resume_and_finish`: SIGKILL of `FAULT_KILLS`
//!   downloaders at random points of their download (the seeder paced with
//!   `--upload-limit` so the transfer lasts seconds), each restarted 0-400 ms later with
//!   the same command. With the manifest, every piece the log showed before the kill
//!   must be found verified at restart (stderr `resuming: N of M ...`), the log must be
//!   appended (the pre-kill log is a prefix), the first "downloaded" count after a
//!   restart is the resumed count + 1, no piece is downloaded again, and all finish.
//! * `seeder_killed_after_every_piece_left_it_the_rest_finish`: the seeder is killed
//!   as soon as the downloaders' logs together hold every piece; they must finish.
//! * `seeder_killed_early_downloaders_give_up_with_a_clear_message`: the seeder is
//!   killed while most pieces are still only on it; the downloaders (`--give-up-after
//!   5`) must exit 1 with an `error: ... cannot finish ...` line, each within the
//!   give-up delay (+ 8 s slack) after the last progress the logs show.
//! * `corrupting_python_seeder_is_caught_and_dropped`: pypeer `--corrupt-fraction 0.3`
//!   seeds next to our paced seeder; with the manifest our peers end with exact copies,
//!   every rejected piece is one pypeer really corrupted, each receiver names pypeer on
//!   stderr, and one that caught 3 drops it.
//! * `stalling_python_seeder_*`: pypeer `--stall-mid-piece N` seeds next to our paced
//!   seeder (sends half of a piece, then nothing, socket open); our peers must finish
//!   anyway, with 3 downloaders, with 1 (the stuck piece is then held only by seeders),
//!   and with `--strict`.
//! * ignored (root, `ip netns`): `netns_host_crash_and_reboot` is the kill test with each
//!   peer in its own network namespace, where a kill is a host crash (link down,
//!   SIGKILL, namespace deleted so not a packet leaves) and the restart a reboot with
//!   the same address: peers must replace or time out the stale connections.
//!   `netns_partition_longer_than_user_timeout_heals` unplugs a downloader for
//!   `FAULT_PARTITION_SECS` (40) > TCP_USER_TIMEOUT, then plugs it back.
//!
//! Every surviving peer must end with a byte-identical copy or exit non-zero with a
//! clear message; every log line (ours and pypeer's) must be one of the 11 forms of
//! SPEC A6. The moments of the faults are drawn from one RNG whose seed is printed at
//! the start of each test and in every failure message; `FAULT_SEED=N` replays the
//! plan (not the exact thread timing). A failed swarm's directory is kept and named.
//!
//! Sizes are small so the suite takes seconds; `bench/faults.sh` runs the same
//! scenarios bigger through these variables (all optional):
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `FAULT_SEED` | RNG seed of the fault plan (and of the peers' `--seed`) | random |
//! | `FAULT_SIZE` | FileSize, bytes or `4MiB` | 3 MiB + 1234 |
//! | `FAULT_PIECE` | PieceSize | 16 KiB |
//! | `FAULT_PEERS` | downloaders | 4 (3 with a pypeer) |
//! | `FAULT_KILLS` | SIGKILL + restart of downloaders (kill tests) | 3 |
//! | `FAULT_SECS` | seconds the seeder's paced upload of one copy takes | 3 |
//! | `FAULT_DEADLINE` | seconds before a hung swarm is killed and the test fails | 120 |
//! | `FAULT_TMPDIR` | where swarm directories go | the system temp dir |
//! | `FAULT_RUST_LOG` | `RUST_LOG` of our peers | unset |
//! | `FAULT_KEEP` | keep every swarm directory | unset |
//!
//! Each test prints one `FAULTS scenario=... injected=N survived=N
//! corrupt_bytes_accepted=N verified_pieces_lost=N ...` line (stdout; see it with
//! `--nocapture`); bench/faults.sh sums them.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PEER_EXE: &str = env!("CARGO_BIN_EXE_peerProcess");
const P2PSHARE_EXE: &str = env!("CARGO_BIN_EXE_p2pshare");
const POLL: Duration = Duration::from_millis(10);
const FILE_NAME: &str = "thefile.bin";
/// Pause between starts, as the classic launcher does.
const START_GAP: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------
// Parameters

#[derive(Clone, Debug)]
struct Params {
    name: &'static str,
    /// What FAULT_SEED replays (printed).
    base_seed: u64,
    /// This test's own seed (base seed mixed with the test name).
    seed: u64,
    size: u64,
    piece: u32,
    downloaders: usize,
    kills: usize,
    secs: f64,
    deadline: Duration,
}

fn env_var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

fn env_parse<T: std::str::FromStr>(key: &str, default: T) -> T {
    match env_var(key) {
        Some(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not valid")),
        None => default,
    }
}

/// `4MiB`, `4m`, `512KiB`, `1234` -> bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let unit = s[digits..].trim();
    let unit = unit
        .strip_suffix("ib")
        .or(unit.strip_suffix('b'))
        .unwrap_or(unit);
    let mult = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    Some(n * mult)
}

fn env_size(key: &str, default: u64) -> u64 {
    match env_var(key) {
        Some(v) => parse_size(&v).unwrap_or_else(|| panic!("{key}={v:?} is not a size")),
        None => default,
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Params {
    fn new(name: &'static str, default_downloaders: usize) -> Params {
        Params::build(name, env_parse("FAULT_PEERS", default_downloaders))
    }

    /// A scenario whose number of downloaders is part of its point (not FAULT_PEERS).
    fn with_downloaders(name: &'static str, downloaders: usize) -> Params {
        Params::build(name, downloaders)
    }

    fn build(name: &'static str, downloaders: usize) -> Params {
        let base_seed = match env_var("FAULT_SEED") {
            Some(v) => v
                .trim()
                .parse()
                .expect("FAULT_SEED must be an unsigned integer"),
            None => rand::random::<u32>() as u64,
        };
        let p = Params {
            name,
            base_seed,
            seed: base_seed ^ fnv1a(name),
            size: env_size("FAULT_SIZE", 3 * 1024 * 1024 + 1234),
            piece: env_size("FAULT_PIECE", 16 * 1024) as u32,
            downloaders: downloaders.max(1),
            kills: env_parse("FAULT_KILLS", 3),
            secs: env_parse("FAULT_SECS", 3.0f64).max(0.1),
            deadline: Duration::from_secs(env_parse("FAULT_DEADLINE", 120u64)),
        };
        // Shown with the failure, and with --nocapture.
        eprintln!(
            "[faults] {name}: FAULT_SEED={base_seed} (set it to replay), size {} B, piece {} B, {} downloaders",
            p.size, p.piece, p.downloaders
        );
        p
    }

    fn rng(&self) -> StdRng {
        StdRng::seed_from_u64(self.seed)
    }

    fn pieces(&self) -> u32 {
        self.size.div_ceil(self.piece as u64) as u32
    }

    /// Upload cap of a paced seeder: one copy in `secs` seconds.
    fn upload_limit(&self) -> u64 {
        ((self.size as f64 / self.secs) as u64).max(1)
    }
}

// ---------------------------------------------------------------------------------
// Ports (outside the ephemeral range, so no outgoing connection can take one)

fn free_ports(n: usize) -> Vec<u16> {
    let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    let (low, span) = if eph_lo >= 12_000 {
        (10_000, eph_lo - 10_000)
    } else {
        (eph_hi + 1, 65_535 - eph_hi)
    };
    let mut rng = rand::thread_rng();
    let mut out: Vec<u16> = Vec::new();
    let mut tries = 0;
    while out.len() < n {
        tries += 1;
        assert!(tries < 100_000, "no free port found");
        let port = (low + rng.gen_range(0..span)) as u16;
        if !out.contains(&port) && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            out.push(port);
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// A swarm directory and its processes

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ours,
    /// tests/interop/pypeer.py with the given extra arguments.
    Python,
}

#[derive(Clone, Debug)]
struct Member {
    id: u32,
    port: u16,
    seeder: bool,
    kind: Kind,
    host: String,
}

struct Net {
    tmp: std::cell::RefCell<Option<tempfile::TempDir>>,
    dir: PathBuf,
    members: Vec<Member>,
    content: Vec<u8>,
    p: Params,
}

fn python_ok() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
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
    })
}

fn pypeer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pypeer.py")
}

impl Net {
    /// `layout`: (kind, hasFile) in PeerInfo.cfg order; IDs 1001, 1002, ...
    fn create(p: &Params, layout: &[(Kind, bool)], k: usize) -> Net {
        let hosts = vec!["127.0.0.1".to_string(); layout.len()];
        Net::create_on(p, layout, k, &hosts, None)
    }

    /// Like `create`, with a host per peer and optionally one port for all.
    fn create_on(
        p: &Params,
        layout: &[(Kind, bool)],
        k: usize,
        hosts: &[String],
        same_port: Option<u16>,
    ) -> Net {
        let base = env_var("FAULT_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("p2pshare-faults-{}-", p.name))
            .tempdir_in(base)
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let ports = match same_port {
            Some(port) => vec![port; layout.len()],
            None => free_ports(layout.len()),
        };
        let members: Vec<Member> = layout
            .iter()
            .enumerate()
            .map(|(i, &(kind, seeder))| Member {
                id: 1001 + i as u32,
                port: ports[i],
                seeder,
                kind,
                host: hosts[i].clone(),
            })
            .collect();
        let common = format!(
            "NumberOfPreferredNeighbors {k}\nUnchokingInterval 1\nOptimisticUnchokingInterval 1\n\
             FileName {FILE_NAME}\nFileSize {}\nPieceSize {}\n",
            p.size, p.piece
        );
        std::fs::write(dir.join("Common.cfg"), common).unwrap();
        let mut info = String::new();
        for m in &members {
            writeln!(
                info,
                "{} {} {} {}",
                m.id,
                m.host,
                m.port,
                u8::from(m.seeder)
            )
            .unwrap();
        }
        std::fs::write(dir.join("PeerInfo.cfg"), info).unwrap();
        let mut content = vec![0u8; p.size as usize];
        StdRng::seed_from_u64(p.seed ^ 0x5eed).fill_bytes(&mut content);
        for m in members.iter().filter(|m| m.seeder) {
            let sub = dir.join(format!("peer_{}", m.id));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join(FILE_NAME), &content).unwrap();
        }
        let keep = env_var("FAULT_KEEP").is_some();
        let net = Net {
            tmp: std::cell::RefCell::new(Some(tmp)),
            dir,
            members,
            content,
            p: p.clone(),
        };
        if keep {
            net.keep();
            eprintln!("[faults] {}: swarm in {}", p.name, net.dir.display());
        }
        net
    }

    fn keep(&self) {
        if let Some(t) = self.tmp.borrow_mut().take() {
            let _ = t.keep();
        }
    }

    /// `p2pshare manifest --dir DIR` (hashes of the first seeder's copy).
    fn write_manifest(&self) {
        let out = Command::new(P2PSHARE_EXE)
            .arg("manifest")
            .arg("--dir")
            .arg(&self.dir)
            .env_remove("RUST_LOG")
            .output()
            .expect("run p2pshare manifest");
        assert!(
            out.status.success(),
            "p2pshare manifest failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn member(&self, id: u32) -> &Member {
        self.members.iter().find(|m| m.id == id).unwrap()
    }

    fn ids(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.id).collect()
    }

    fn downloaders(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter(|m| !m.seeder)
            .map(|m| m.id)
            .collect()
    }

    fn ours(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter(|m| m.kind == Kind::Ours)
            .map(|m| m.id)
            .collect()
    }

    fn log_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("log_peer_{id}.log"))
    }

    fn copy_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("peer_{id}")).join(FILE_NAME)
    }

    fn stderr_path(&self, id: u32, run: u32) -> PathBuf {
        self.dir.join(format!("stderr_{id}.run{run}.txt"))
    }

    fn stderr(&self, id: u32, run: u32) -> String {
        std::fs::read_to_string(self.stderr_path(id, run)).unwrap_or_default()
    }

    /// Every run's stderr of `id`, in order.
    fn all_stderr(&self, id: u32) -> String {
        let mut s = String::new();
        for run in 0.. {
            let path = self.stderr_path(id, run);
            if !path.exists() {
                break;
            }
            s += &std::fs::read_to_string(path).unwrap_or_default();
        }
        s
    }

    fn command(&self, id: u32, run: u32, extra: &[String]) -> Command {
        let m = self.member(id);
        let mut cmd = match m.kind {
            Kind::Ours => {
                let mut c = Command::new(PEER_EXE);
                c.arg(id.to_string()).arg("--dir").arg(&self.dir);
                // Reproducible piece and neighbour choices; a restart runs the very
                // same command.
                let seed = self.p.seed ^ ((id as u64) << 20);
                c.arg("--seed").arg(seed.to_string());
                match env_var("FAULT_RUST_LOG") {
                    Some(level) => c.env("RUST_LOG", level),
                    None => c.env_remove("RUST_LOG"),
                };
                c
            }
            Kind::Python => {
                let mut c = Command::new("python3");
                c.arg(pypeer_script())
                    .arg(id.to_string())
                    .arg("--dir")
                    .arg(&self.dir);
                c
            }
        };
        cmd.args(extra);
        let err = std::fs::File::create(self.stderr_path(id, run)).unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
        cmd
    }

    fn spawn(&self, id: u32, run: u32, extra: &[String]) -> Proc {
        let child = self
            .command(id, run, extra)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start peer {id}: {e}"));
        Proc {
            id,
            run,
            child,
            status: None,
            exited_at: None,
        }
    }

    /// Starts every peer in file order; `extra(id)` are its arguments.
    fn start_all(&self, extra: impl Fn(u32) -> Vec<String>) -> BTreeMap<u32, Proc> {
        let mut procs = BTreeMap::new();
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(START_GAP);
            }
            procs.insert(m.id, self.spawn(m.id, 0, &extra(m.id)));
        }
        procs
    }

    /// Differing bytes between `id`'s copy and the original (missing or short: all).
    fn corrupt_bytes(&self, id: u32) -> u64 {
        match std::fs::read(self.copy_path(id)) {
            Ok(got) => {
                let common = got.len().min(self.content.len());
                let diff = got[..common]
                    .iter()
                    .zip(&self.content[..common])
                    .filter(|(a, b)| a != b)
                    .count();
                (diff + got.len().abs_diff(self.content.len())) as u64
            }
            Err(_) => self.content.len() as u64,
        }
    }

    /// Panics with the seed, the directory (kept) and the tails of every peer's
    /// stderr and log.
    fn fail(&self, what: &str) -> ! {
        self.keep();
        let mut s = format!(
            "{}: {what}\n[replay with FAULT_SEED={}; swarm kept in {}]\n",
            self.p.name,
            self.p.base_seed,
            self.dir.display()
        );
        for m in &self.members {
            for run in 0.. {
                let path = self.stderr_path(m.id, run);
                if !path.exists() {
                    break;
                }
                let err = std::fs::read_to_string(&path).unwrap_or_default();
                writeln!(
                    s,
                    "--- peer {} ({:?}) stderr run {run} (tail):",
                    m.id, m.kind
                )
                .unwrap();
                for l in tail(&err, 12) {
                    writeln!(s, "    {l}").unwrap();
                }
            }
            let log = std::fs::read_to_string(self.log_path(m.id)).unwrap_or_default();
            writeln!(s, "--- peer {} log (tail):", m.id).unwrap();
            for l in tail(&log, 6) {
                writeln!(s, "    | {l}").unwrap();
            }
        }
        panic!("{s}");
    }

    fn check(&self, problems: &[String]) {
        if !problems.is_empty() {
            self.fail(&format!(
                "{} problem(s):\n  {}",
                problems.len(),
                problems.join("\n  ")
            ));
        }
    }

    /// Waits until every process in `ids` exited (killing all after the deadline).
    fn wait_exit(&self, procs: &mut BTreeMap<u32, Proc>, ids: &[u32], within: Duration) {
        let end = Instant::now() + within;
        loop {
            let running: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|id| procs.get_mut(id).is_some_and(|p| p.try_wait().is_none()))
                .collect();
            if running.is_empty() {
                return;
            }
            if Instant::now() >= end {
                for p in procs.values_mut() {
                    p.kill();
                }
                self.fail(&format!(
                    "peers {running:?} still running after {within:?}; killed"
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Every process in `ids` exited 0 and its copy is the original, byte for byte.
    fn check_success(&self, procs: &mut BTreeMap<u32, Proc>, ids: &[u32]) -> Vec<String> {
        let mut problems = Vec::new();
        for &id in ids {
            let p = procs.get_mut(&id).unwrap();
            match p.try_wait() {
                Some(s) if s.success() => {}
                other => problems.push(format!("peer {id} (run {}): exit {other:?}", p.run)),
            }
            let bad = self.corrupt_bytes(id);
            if bad != 0 {
                problems.push(format!(
                    "peer {id}: copy differs from the original in {bad} bytes"
                ));
            }
            let err = self.all_stderr(id);
            if err.contains("panicked") {
                problems.push(format!("peer {id} panicked"));
            }
        }
        problems
    }
}

fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// A running peer, SIGKILLed on drop if still running.
struct Proc {
    id: u32,
    run: u32,
    child: Child,
    status: Option<ExitStatus>,
    /// When `try_wait` first saw the exit (polled every few ms).
    exited_at: Option<Instant>,
}

impl Proc {
    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
            if self.status.is_some() {
                self.exited_at = Some(Instant::now());
            }
        }
        self.status
    }

    /// SIGKILL (std's `Child::kill` on Unix) and reap.
    fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
            self.exited_at = Some(Instant::now());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------
// Logs

fn downloaded_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^.+?: Peer \d+ has downloaded the piece (\d+) from (\d+)\. Now the number of pieces it has is (\d+)\.$")
            .unwrap()
    })
}

fn complete_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^.+?: Peer \d+ has downloaded the complete file\.$").unwrap())
}

/// One "downloaded" line: (piece, from, count).
fn parse_downloaded(line: &str) -> Option<(u32, u32, u32)> {
    let c = downloaded_re().captures(line)?;
    Some((c[1].parse().ok()?, c[2].parse().ok()?, c[3].parse().ok()?))
}

/// Follows a growing log file: what was downloaded so far.
#[derive(Default, Debug)]
struct Progress {
    offset: u64,
    partial: Vec<u8>,
    /// Count of the last "downloaded" line (includes resumed pieces).
    last_count: u32,
    pieces: BTreeSet<u32>,
    complete: bool,
    /// "downloaded" lines since `mark()`.
    since_mark: u32,
}

impl Progress {
    fn update(&mut self, path: &Path) {
        let Ok(mut f) = std::fs::File::open(path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            if let Some((piece, _, count)) = parse_downloaded(&line) {
                self.pieces.insert(piece);
                self.last_count = count;
                self.since_mark += 1;
            } else if complete_re().is_match(&line) {
                self.complete = true;
            }
        }
    }

    fn mark(&mut self) {
        self.since_mark = 0;
    }
}

const ID: &str = r"([1-9][0-9]*)";
const NUM: &str = r"(0|[1-9][0-9]*)";

/// The 11 forms of SPEC A6 (copied from tests/common): (timestamp, own ID, rest).
fn forms() -> &'static [Regex] {
    static FORMS: OnceLock<Vec<Regex>> = OnceLock::new();
    FORMS.get_or_init(|| {
        let tails = [
            format!(r"makes a connection to Peer {ID}\."),
            format!(r"is connected from Peer {ID}\."),
            format!(r"has the preferred neighbors ({ID}(?:,{ID})*)\."),
            format!(r"has the optimistically unchoked neighbor {ID}\."),
            format!(r"is unchoked by {ID}\."),
            format!(r"is choked by {ID}\."),
            format!(r"received the 'have' message from {ID} for the piece {NUM}\."),
            format!(r"received the 'interested' message from {ID}\."),
            format!(r"received the 'not interested' message from {ID}\."),
            format!(
                r"has downloaded the piece {NUM} from {ID}\. Now the number of pieces it has is {NUM}\."
            ),
            r"has downloaded the complete file\.".to_string(),
        ];
        tails
            .iter()
            .map(|t| Regex::new(&format!(r"^(.+?): Peer {ID} {t}$")).unwrap())
            .collect()
    })
}

fn timestamp_ok(t: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\d{4}-\d{2}-\d{2}.*\b\d{1,2}:\d{2}:\d{2}\b").unwrap())
        .is_match(t)
}

/// Every line of every log is exactly one of the 11 forms, names the log's own peer
/// first, only listed peers otherwise, and pieces in range; the file ends with a
/// newline (a kill never leaves half a line).
fn check_log_forms(net: &Net) -> Vec<String> {
    let ids: BTreeSet<u32> = net.ids().into_iter().collect();
    let n = net.p.pieces();
    let mut problems = Vec::new();
    for &me in &ids {
        let text = match std::fs::read_to_string(net.log_path(me)) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("peer {me}: no log: {e}"));
                continue;
            }
        };
        if !text.is_empty() && !text.ends_with('\n') {
            problems.push(format!("log_peer_{me}.log does not end with a newline"));
        }
        for (i, line) in text.lines().enumerate() {
            let at = format!("log_peer_{me}.log:{}", i + 1);
            let matches: Vec<regex::Captures> =
                forms().iter().filter_map(|re| re.captures(line)).collect();
            if matches.len() != 1 {
                problems.push(format!(
                    "{at}: matches {} of the 11 forms: {line:?}",
                    matches.len()
                ));
                continue;
            }
            let c = &matches[0];
            if !timestamp_ok(&c[1]) {
                problems.push(format!("{at}: bad timestamp: {line:?}"));
            }
            let nums: Vec<u64> = c
                .iter()
                .skip(2)
                .flatten()
                .filter_map(|m| m.as_str().parse().ok())
                .collect();
            if nums.first() != Some(&(me as u64)) {
                problems.push(format!("{at}: not peer {me}'s line: {line:?}"));
            }
            if let Some((piece, from, _)) = parse_downloaded(line) {
                if piece >= n || !ids.contains(&from) || from == me {
                    problems.push(format!("{at}: bad piece or source: {line:?}"));
                }
            } else if line.contains("for the piece") {
                let piece: u32 = c[c.len() - 1].parse().unwrap_or(u32::MAX);
                if piece >= n {
                    problems.push(format!("{at}: piece out of range: {line:?}"));
                }
            } else {
                for id in nums.iter().skip(1) {
                    if !ids.contains(&(*id as u32)) || *id == me as u64 {
                        problems.push(format!("{at}: names peer {id}: {line:?}"));
                    }
                }
            }
        }
    }
    problems
}

/// A SIGKILL of a downloader and what its log showed at that moment.
#[derive(Clone, Debug)]
struct KillRecord {
    /// The run that was killed (0 = first start).
    run: u32,
    /// The log at the moment of the kill (the process is dead, so it is final).
    log_before: Vec<u8>,
    /// Distinct pieces the log showed as downloaded, every run so far.
    logged_before: BTreeSet<u32>,
    complete_before: bool,
}

fn resumed_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"resuming: (\d+) of (\d+) pieces already on disk verified").unwrap()
    })
}

/// What the restarts of one downloader show.
#[derive(Default, Debug)]
struct ResumeTally {
    restarts: u32,
    /// Pieces the log showed before a kill that the next run did not find verified.
    verified_lost: u64,
    /// Pieces downloaded again after a restart although logged before it.
    refetched: u64,
    /// Most "makes a connection" lines towards one peer in one run.
    max_connects: usize,
}

/// Bound on "makes a connection to Peer X" lines per run (reconnects after drops
/// included); a reconnect loop shows hundreds.
const MAX_CONNECTS_PER_RUN: usize = 10;

/// Checks the log and stderr of a downloader killed at `kills` (in order) and finally
/// run to completion: the log is appended (each pre-kill log is a prefix of the final
/// one), each run's "downloaded" counts start right after what it resumed and go up by
/// one, no piece logged before a kill is downloaded again or missing from the next
/// run's resume, and the file is completed exactly once.
fn check_resumes(
    net: &Net,
    id: u32,
    kills: &[KillRecord],
    problems: &mut Vec<String>,
) -> ResumeTally {
    let n = net.p.pieces();
    let log = std::fs::read(net.log_path(id)).unwrap_or_default();
    let mut tally = ResumeTally::default();
    let mut cuts = vec![0usize];
    for k in kills {
        if !log.starts_with(&k.log_before) {
            problems.push(format!(
                "peer {id}: the log after restart does not continue the log killed at run {} (not appended?)",
                k.run
            ));
            return tally;
        }
        cuts.push(k.log_before.len());
    }
    cuts.push(log.len());
    let mut earlier: BTreeSet<u32> = BTreeSet::new();
    let mut completes = 0;
    for run in 0..cuts.len() - 1 {
        let seg = String::from_utf8_lossy(&log[cuts[run]..cuts[run + 1]]).into_owned();
        let resumed = if run == 0 {
            0
        } else {
            let err = net.stderr(id, run as u32);
            match resumed_re().captures(&err) {
                Some(c) => {
                    if c[2].parse::<u32>().ok() != Some(n) {
                        problems.push(format!(
                            "peer {id} run {run}: resume line names {} pieces, not {n}",
                            &c[2]
                        ));
                    }
                    c[1].parse::<u32>().unwrap()
                }
                None => 0,
            }
        };
        if run > 0 {
            tally.restarts += 1;
            let before = &kills[run - 1].logged_before;
            eprintln!(
                "[faults] peer {id}: killed at {} logged pieces, restart {run} resumed {resumed} verified",
                before.len()
            );
            if (resumed as usize) < before.len() {
                tally.verified_lost += (before.len() - resumed as usize) as u64;
                problems.push(format!(
                    "peer {id} run {run}: resumed {resumed} verified pieces, but {} were logged as downloaded before the kill",
                    before.len()
                ));
            }
        }
        // A (re)started peer connects once to each earlier peer, again only after a
        // drop: a handful per run, not a reconnect loop.
        let mut connects: BTreeMap<&str, usize> = BTreeMap::new();
        for line in seg.lines() {
            if let Some(i) = line.find(" makes a connection to Peer ") {
                *connects.entry(&line[i + 28..]).or_default() += 1;
            }
        }
        for (to, count) in connects {
            tally.max_connects = tally.max_connects.max(count);
            if count > MAX_CONNECTS_PER_RUN {
                problems.push(format!(
                    "peer {id} run {run}: \"makes a connection to Peer {to}\" {count} times (reconnect loop?)"
                ));
            }
        }
        let mut expect = resumed + 1;
        let mut this_run = BTreeSet::new();
        for line in seg.lines() {
            if complete_re().is_match(line) {
                completes += 1;
                continue;
            }
            let Some((piece, _from, count)) = parse_downloaded(line) else {
                continue;
            };
            if count != expect {
                problems.push(format!(
                    "peer {id} run {run}: {line:?}: count {count}, expected {expect} (resumed {resumed})"
                ));
            }
            expect = count + 1;
            if earlier.contains(&piece) {
                tally.refetched += 1;
                problems.push(format!(
                    "peer {id} run {run}: piece {piece} downloaded again although logged before a kill"
                ));
            }
            if !this_run.insert(piece) {
                problems.push(format!(
                    "peer {id} run {run}: piece {piece} downloaded twice"
                ));
            }
        }
        earlier.extend(this_run);
    }
    if completes != 1 {
        problems.push(format!(
            "peer {id}: \"has downloaded the complete file.\" {completes} times over {} runs, expected once",
            cuts.len() - 1
        ));
    }
    tally
}

/// Prints the summary line bench/faults.sh collects.
fn summary(p: &Params, started: Instant, fields: &[(&str, String)]) {
    let mut line = format!(
        "FAULTS scenario={} seed={} size={} piece={} downloaders={}",
        p.name, p.base_seed, p.size, p.piece, p.downloaders
    );
    for (k, v) in fields {
        write!(line, " {k}={v}").unwrap();
    }
    write!(line, " secs={:.1}", started.elapsed().as_secs_f64()).unwrap();
    println!("{line}");
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn layout(seeders: &[Kind], downloaders: usize) -> Vec<(Kind, bool)> {
    let mut l: Vec<(Kind, bool)> = seeders.iter().map(|&k| (k, true)).collect();
    l.extend(std::iter::repeat_n((Kind::Ours, false), downloaders));
    l
}

// ---------------------------------------------------------------------------------
// (a) downloaders SIGKILLed at random moments and restarted with the same command

/// One planned kill: when the victim's log shows `at_count` pieces.
struct PlannedKill {
    id: u32,
    at_count: u32,
}

/// How the kill test kills and restarts (plain processes, or inside namespaces).
struct KillOps<'a> {
    /// Starts run `run` of peer `id` with the same command as the first.
    spawn: &'a dyn Fn(u32, u32) -> Proc,
    /// Kills (SIGKILL, after taking the link down in the netns test).
    kill: &'a dyn Fn(&mut Proc),
    /// Just before a restart (link up again in the netns test).
    before_restart: &'a dyn Fn(u32),
    /// Milliseconds between the kill and the restart, drawn per kill.
    restart_delay_ms: std::ops::RangeInclusive<u64>,
}

/// Runs a swarm in which downloaders are killed and restarted per `plan`. Returns the
/// kill records per victim.
fn run_kill_plan(
    net: &Net,
    procs: &mut BTreeMap<u32, Proc>,
    plan: &mut Vec<PlannedKill>,
    rng: &mut StdRng,
    ops: &KillOps,
) -> BTreeMap<u32, Vec<KillRecord>> {
    let mut progress: BTreeMap<u32, Progress> = net
        .ids()
        .into_iter()
        .map(|id| (id, Progress::default()))
        .collect();
    let mut records: BTreeMap<u32, Vec<KillRecord>> = BTreeMap::new();
    let mut restarts: Vec<(Instant, u32)> = Vec::new();
    let end = Instant::now() + net.p.deadline;
    let mut skipped = 0;
    while !plan.is_empty() || !restarts.is_empty() {
        if Instant::now() >= end {
            net.fail(&format!("kill plan not done within {:?}", net.p.deadline));
        }
        for (id, pr) in progress.iter_mut() {
            pr.update(&net.log_path(*id));
        }
        // Restarts that are due.
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = restarts.into_iter().partition(|(t, _)| *t <= now);
        restarts = later;
        for (_, id) in due {
            (ops.before_restart)(id);
            let run = procs[&id].run + 1;
            progress.get_mut(&id).unwrap().mark();
            procs.insert(id, (ops.spawn)(id, run));
        }
        // Kills whose moment came: the victim is running, and a restarted victim has
        // logged progress in this run (so its resume is done and measured).
        let mut i = 0;
        while i < plan.len() {
            let id = plan[i].id;
            let first_for_victim = plan.iter().position(|k| k.id == id) == Some(i);
            let pr = &progress[&id];
            let proc_ = procs.get_mut(&id).unwrap();
            let pending_restart = restarts.iter().any(|(_, r)| *r == id);
            if !first_for_victim || pending_restart || proc_.try_wait().is_some() {
                i += 1;
                continue;
            }
            if pr.complete {
                eprintln!("[faults] peer {id} finished before its planned kill; skipped");
                plan.remove(i);
                skipped += 1;
                continue;
            }
            let ready = pr.last_count >= plan[i].at_count && (proc_.run == 0 || pr.since_mark > 0);
            if !ready {
                i += 1;
                continue;
            }
            (ops.kill)(proc_);
            assert!(proc_.try_wait().is_some(), "peer {id} survived SIGKILL");
            let pr = progress.get_mut(&id).unwrap();
            pr.update(&net.log_path(id));
            let log_before = std::fs::read(net.log_path(id)).unwrap_or_default();
            eprintln!(
                "[faults] SIGKILL peer {id} (run {}) at {} pieces logged",
                proc_.run,
                pr.pieces.len()
            );
            records.entry(id).or_default().push(KillRecord {
                run: proc_.run,
                log_before,
                logged_before: pr.pieces.clone(),
                complete_before: pr.complete,
            });
            let delay = Duration::from_millis(rng.gen_range(ops.restart_delay_ms.clone()));
            restarts.push((Instant::now() + delay, id));
            plan.remove(i);
        }
        // Nobody else may die meanwhile.
        for (id, p) in procs.iter_mut() {
            if let Some(s) = p.try_wait() {
                let killed = records
                    .get(id)
                    .is_some_and(|r| r.last().unwrap().run == p.run);
                if !killed && !s.success() {
                    net.fail(&format!(
                        "peer {id} (run {}) exited with {s} during the kill plan",
                        p.run
                    ));
                }
            }
        }
        std::thread::sleep(POLL);
    }
    if skipped > 0 {
        eprintln!("[faults] {skipped} planned kill(s) skipped (victim finished first)");
    }
    records
}

/// Draws `kills` kills over the downloaders (each one at most once while there are
/// more downloaders than kills), each at a random point between 5% and 75% of the
/// pieces; a victim's later kills come at later points.
fn plan_kills(net: &Net, rng: &mut StdRng, kills: usize) -> Vec<PlannedKill> {
    let n = net.p.pieces();
    let mut victims = net.downloaders();
    victims.shuffle(rng);
    let mut by_victim: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for k in 0..kills {
        let id = victims[k % victims.len()];
        let at = ((n as f64) * rng.gen_range(0.05..0.75)).ceil() as u32;
        by_victim
            .entry(id)
            .or_default()
            .push(at.clamp(1, n.saturating_sub(1).max(1)));
    }
    let mut plan = Vec::new();
    for (id, mut ats) in by_victim {
        ats.sort_unstable();
        for at in ats {
            plan.push(PlannedKill { id, at_count: at });
        }
    }
    // Interleave victims by their first threshold so the list reads in time order.
    plan.sort_by_key(|k| k.at_count);
    plan
}

fn kill_restart_checks(
    net: &Net,
    procs: &mut BTreeMap<u32, Proc>,
    records: &BTreeMap<u32, Vec<KillRecord>>,
    started: Instant,
    extra_fields: &[(&str, String)],
) {
    let all = net.ids();
    let mut problems = net.check_success(procs, &all);
    problems.extend(check_log_forms(net));
    let mut lost = 0;
    let mut refetched = 0;
    let mut max_connects = 0;
    let mut injected = 0;
    let mut survived = 0;
    let mut resumed_pieces = 0u64;
    for id in net.downloaders() {
        let kills = records.get(&id).cloned().unwrap_or_default();
        let t = check_resumes(net, id, &kills, &mut problems);
        lost += t.verified_lost;
        refetched += t.refetched;
        max_connects = max_connects.max(t.max_connects);
        injected += kills.len();
        if !kills.is_empty()
            && net.corrupt_bytes(id) == 0
            && procs[&id].status.is_some_and(|s| s.success())
        {
            survived += kills.len();
        }
        for k in &kills {
            if k.complete_before {
                eprintln!(
                    "[faults] note: peer {id} was complete when killed (run {})",
                    k.run
                );
            }
        }
        for run in 1..=kills.len() as u32 {
            if let Some(c) = resumed_re().captures(&net.stderr(id, run)) {
                resumed_pieces += c[1].parse::<u64>().unwrap();
            }
        }
    }
    let corrupt: u64 = all.iter().map(|&id| net.corrupt_bytes(id)).sum();
    let mut fields = vec![
        ("injected", injected.to_string()),
        ("survived", survived.to_string()),
        ("corrupt_bytes_accepted", corrupt.to_string()),
        ("verified_pieces_lost", lost.to_string()),
        ("refetched", refetched.to_string()),
        ("resumed_pieces", resumed_pieces.to_string()),
        ("max_connects_per_run", max_connects.to_string()),
    ];
    fields.extend(extra_fields.iter().cloned());
    summary(&net.p, started, &fields);
    net.check(&problems);
    assert!(injected > 0, "no kill was injected");
}

#[test]
fn downloaders_killed_mid_transfer_resume_and_finish() {
    let p = Params::new("kill_restart", 4);
    let started = Instant::now();
    let mut rng = p.rng();
    let net = Net::create(&p, &layout(&[Kind::Ours], p.downloaders), 2);
    net.write_manifest();
    let limit = p.upload_limit().to_string();
    let extra = |id: u32| {
        if id == 1001 {
            args(&["--upload-limit", &limit])
        } else {
            Vec::new()
        }
    };
    let mut plan = plan_kills(&net, &mut rng, p.kills.max(1));
    let mut procs = net.start_all(extra);
    let spawn = |id: u32, run: u32| net.spawn(id, run, &extra(id));
    let ops = KillOps {
        spawn: &spawn,
        kill: &|p: &mut Proc| p.kill(),
        before_restart: &|_| {},
        restart_delay_ms: 0..=400,
    };
    let records = run_kill_plan(&net, &mut procs, &mut plan, &mut rng, &ops);
    let all = net.ids();
    net.wait_exit(&mut procs, &all, p.deadline);
    kill_restart_checks(&net, &mut procs, &records, started, &[]);
}

// ---------------------------------------------------------------------------------
// (b) the seeder SIGKILLed once every piece has left it

/// Reads the downloaders' logs on; how many distinct pieces they hold together.
fn pieces_out(net: &Net, downloaders: &[u32], progress: &mut BTreeMap<u32, Progress>) -> usize {
    for &id in downloaders {
        progress.entry(id).or_default().update(&net.log_path(id));
    }
    progress
        .values()
        .flat_map(|p| p.pieces.iter().copied())
        .collect::<BTreeSet<u32>>()
        .len()
}

#[test]
fn seeder_killed_after_every_piece_left_it_the_rest_finish() {
    let p = Params::new("seeder_gone_after", 4);
    let started = Instant::now();
    let mut rng = p.rng();
    let net = Net::create(&p, &layout(&[Kind::Ours], p.downloaders), 2);
    net.write_manifest();
    // The downloaders are paced too, so that once the seeder has sent every piece
    // they still need seconds to trade the rest among themselves.
    let limit = p.upload_limit().to_string();
    let down_limit = (p.upload_limit() / 2).max(1).to_string();
    let mut procs = net.start_all(|id| {
        if id == 1001 {
            args(&["--upload-limit", &limit])
        } else {
            args(&["--upload-limit", &down_limit])
        }
    });
    let n = p.pieces();
    let downloaders = net.downloaders();
    let mut progress: BTreeMap<u32, Progress> = BTreeMap::new();
    let end = Instant::now() + p.deadline;
    let delay = Duration::from_millis(rng.gen_range(0..=200));
    let mut out_since: Option<Instant> = None;
    loop {
        let out = pieces_out(&net, &downloaders, &mut progress);
        if out as u32 == n {
            let t = *out_since.get_or_insert_with(Instant::now);
            if t.elapsed() >= delay {
                break;
            }
        }
        if let Some(s) = procs.get_mut(&1001).unwrap().try_wait() {
            net.fail(&format!(
                "the seeder exited ({s}) before the test saw every piece out ({out} of {n})"
            ));
        }
        if Instant::now() >= end {
            net.fail("the downloaders never held every piece together");
        }
        std::thread::sleep(POLL);
    }
    let held: Vec<(u32, usize)> = progress
        .iter()
        .map(|(id, p)| (*id, p.pieces.len()))
        .collect();
    procs.get_mut(&1001).unwrap().kill();
    eprintln!("[faults] SIGKILL seeder 1001; downloaders hold {held:?} of {n}");
    net.wait_exit(&mut procs, &downloaders, p.deadline);
    let mut problems = net.check_success(&mut procs, &downloaders);
    problems.extend(check_log_forms(&net));
    for &id in &downloaders {
        check_resumes(&net, id, &[], &mut problems);
    }
    let peers_ok = downloaders
        .iter()
        .filter(|&&id| net.corrupt_bytes(id) == 0 && procs[&id].status.is_some_and(|s| s.success()))
        .count();
    let corrupt: u64 = downloaders.iter().map(|&id| net.corrupt_bytes(id)).sum();
    summary(
        &p,
        started,
        &[
            ("injected", "1".into()),
            ("survived", usize::from(problems.is_empty()).to_string()),
            ("peers_ok", peers_ok.to_string()),
            ("corrupt_bytes_accepted", corrupt.to_string()),
            ("verified_pieces_lost", "0".into()),
        ],
    );
    net.check(&problems);
}

// ---------------------------------------------------------------------------------
// (b') the seeder SIGKILLed mid-swarm and started again with the same command

#[test]
fn seeder_restarted_mid_swarm_the_swarm_finishes() {
    let p = Params::new("seeder_restart", 4);
    let started = Instant::now();
    let mut rng = p.rng();
    let net = Net::create(&p, &layout(&[Kind::Ours], p.downloaders), 2);
    net.write_manifest();
    let limit = p.upload_limit().to_string();
    let down_limit = (p.upload_limit() / 2).max(1).to_string();
    let seeder_args = args(&["--upload-limit", &limit]);
    let mut procs = net.start_all(|id| {
        if id == 1001 {
            seeder_args.clone()
        } else {
            args(&["--upload-limit", &down_limit])
        }
    });
    let n = p.pieces();
    let downloaders = net.downloaders();
    // Kill the seeder once a random third to two thirds of the pieces are out.
    let target = (n as f64 * rng.gen_range(0.33..0.66)) as usize;
    let mut progress: BTreeMap<u32, Progress> = BTreeMap::new();
    let end = Instant::now() + p.deadline;
    loop {
        if pieces_out(&net, &downloaders, &mut progress) >= target {
            break;
        }
        if Instant::now() >= end {
            net.fail("the downloaders never got a third of the pieces");
        }
        std::thread::sleep(POLL);
    }
    procs.get_mut(&1001).unwrap().kill();
    let down = Duration::from_millis(rng.gen_range(200..=1500));
    eprintln!("[faults] SIGKILL seeder 1001 at {target} of {n} pieces out; restart in {down:?}");
    std::thread::sleep(down);
    procs.insert(1001, net.spawn(1001, 1, &seeder_args));
    let mut everyone = downloaders.clone();
    everyone.push(1001);
    net.wait_exit(&mut procs, &everyone, p.deadline);
    let mut problems = net.check_success(&mut procs, &everyone);
    problems.extend(check_log_forms(&net));
    let corrupt: u64 = downloaders.iter().map(|&id| net.corrupt_bytes(id)).sum();
    summary(
        &p,
        started,
        &[
            ("injected", "1".into()),
            ("survived", usize::from(problems.is_empty()).to_string()),
            ("corrupt_bytes_accepted", corrupt.to_string()),
            ("verified_pieces_lost", "0".into()),
        ],
    );
    net.check(&problems);
}

// ---------------------------------------------------------------------------------
// (e) every copy of some piece gone: the seeder SIGKILLed before its pieces are out

#[test]
fn seeder_killed_early_downloaders_give_up_with_a_clear_message() {
    let p = Params::new("seeder_gone_early", 4);
    let started = Instant::now();
    let mut rng = p.rng();
    let net = Net::create(&p, &layout(&[Kind::Ours], p.downloaders), 2);
    net.write_manifest();
    let limit = p.upload_limit().to_string();
    let give_up = 5u64;
    let mut procs = net.start_all(|id| {
        if id == 1001 {
            args(&["--upload-limit", &limit])
        } else {
            args(&["--give-up-after", &give_up.to_string()])
        }
    });
    let n = p.pieces();
    let at = ((n as f64 * rng.gen_range(0.02..0.3)).ceil() as usize).max(1);
    let downloaders = net.downloaders();
    let mut progress: BTreeMap<u32, Progress> = BTreeMap::new();
    let end = Instant::now() + p.deadline;
    loop {
        for &id in &downloaders {
            progress.entry(id).or_default().update(&net.log_path(id));
        }
        let union: BTreeSet<u32> = progress
            .values()
            .flat_map(|p| p.pieces.iter().copied())
            .collect();
        if union.len() >= at {
            break;
        }
        if Instant::now() >= end {
            net.fail("no piece ever left the seeder");
        }
        std::thread::sleep(POLL);
    }
    procs.get_mut(&1001).unwrap().kill();
    let killed_at = Instant::now();
    eprintln!("[faults] SIGKILL seeder 1001 after {at}+ of {n} pieces were out");
    // Follow the logs until everyone exited: the last moment a downloader got a
    // piece is the last progress; each must exit within the give-up delay after it,
    // plus slack for the 1 s check, the shutdown's grace for neighbours to close
    // (up to 5 s) and a loaded machine.
    let slack = Duration::from_secs(8);
    let mut last_progress = killed_at;
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    let hard_end = killed_at + Duration::from_secs(give_up * (downloaders.len() as u64 + 1) + 30);
    loop {
        for &id in &downloaders {
            let pr = progress.get_mut(&id).unwrap();
            pr.update(&net.log_path(id));
            if counts.insert(id, pr.pieces.len()) != Some(pr.pieces.len()) {
                last_progress = Instant::now();
            }
        }
        let running = downloaders
            .iter()
            .filter(|id| procs.get_mut(id).unwrap().try_wait().is_none())
            .count();
        if running == 0 {
            break;
        }
        if Instant::now() >= hard_end {
            net.wait_exit(&mut procs, &downloaders, Duration::ZERO);
        }
        std::thread::sleep(POLL);
    }
    let bound = last_progress + Duration::from_secs(give_up) + slack;
    eprintln!(
        "[faults] last progress {:.1}s after the kill",
        (last_progress - killed_at).as_secs_f64()
    );
    let mut problems = check_log_forms(&net);
    let mut gave_up = 0;
    let mut slowest = Duration::ZERO;
    for &id in &downloaders {
        let status = procs.get_mut(&id).unwrap().try_wait().unwrap();
        let err = net.stderr(id, 0);
        let last = err.lines().last().unwrap_or("");
        if status.success() {
            problems.push(format!("peer {id} exited 0 although pieces have no holder"));
            continue;
        }
        if status.code() != Some(1) {
            problems.push(format!("peer {id}: exit {status}, expected 1"));
        }
        // "error: peer N: no progress for 5s and the swarm cannot finish: K pieces we
        // lack are held by no connected peer; ..."
        let clear = last.starts_with("error: ")
            && last.contains("cannot finish")
            && last.contains("pieces");
        if !clear {
            problems.push(format!(
                "peer {id}: last stderr line is not a clear give-up message: {last:?}"
            ));
        } else {
            gave_up += 1;
        }
        if err.contains("panicked") {
            problems.push(format!("peer {id} panicked"));
        }
        if progress[&id].complete {
            problems.push(format!("peer {id} logged a complete file"));
        }
        let exited = procs[&id].exited_at.unwrap();
        eprintln!(
            "[faults] peer {id} exited {status} {:.1}s after the kill",
            (exited - killed_at).as_secs_f64()
        );
        slowest = slowest.max(exited - killed_at);
        if exited > bound {
            problems.push(format!(
                "peer {id} gave up {:.1}s after the last progress (--give-up-after {give_up}, allowed {:.1}s)",
                (exited - last_progress).as_secs_f64(),
                (bound - last_progress).as_secs_f64()
            ));
        }
    }
    summary(
        &p,
        started,
        &[
            ("injected", "1".into()),
            ("survived", usize::from(problems.is_empty()).to_string()),
            ("gave_up_cleanly", gave_up.to_string()),
            ("exit_within_s", format!("{:.1}", slowest.as_secs_f64())),
            ("corrupt_bytes_accepted", "0".into()),
            ("verified_pieces_lost", "0".into()),
        ],
    );
    net.check(&problems);
}

/// Starts a swarm laid out as [pypeer seeder, downloaders..., our seeder]: everyone
/// but our seeder at once, then our seeder (paced) once `ready()` holds or after
/// `3 * secs + 5` seconds. So the hostile pypeer is the only source at first and is
/// used whatever our piece choice prefers; our seeder then supplies what is left.
fn start_hostile_first(
    net: &Net,
    py_args: Vec<String>,
    ours_args: &dyn Fn(u32) -> Vec<String>,
    ready: &dyn Fn() -> bool,
) -> BTreeMap<u32, Proc> {
    let ours_seeder = *net.ids().last().unwrap();
    let mut procs: BTreeMap<u32, Proc> = BTreeMap::new();
    for id in net.ids().into_iter().filter(|&id| id != ours_seeder) {
        let extra = if id == 1001 {
            py_args.clone()
        } else {
            ours_args(id)
        };
        procs.insert(id, net.spawn(id, 0, &extra));
        std::thread::sleep(START_GAP);
    }
    let wait_until = Instant::now() + Duration::from_secs_f64(3.0 * net.p.secs + 5.0);
    while !ready() && Instant::now() < wait_until {
        for (id, pr) in procs.iter_mut() {
            if let Some(s) = pr.try_wait() {
                net.fail(&format!("peer {id} exited ({s}) before our seeder started"));
            }
        }
        std::thread::sleep(POLL);
    }
    let mut extra = args(&["--upload-limit", &net.p.upload_limit().to_string()]);
    extra.extend(ours_args(ours_seeder));
    procs.insert(ours_seeder, net.spawn(ours_seeder, 0, &extra));
    procs
}

fn hostile_layout(downloaders: usize) -> Vec<(Kind, bool)> {
    let mut plan = vec![(Kind::Python, true)];
    plan.extend(std::iter::repeat_n((Kind::Ours, false), downloaders));
    plan.push((Kind::Ours, true));
    plan
}

// ---------------------------------------------------------------------------------
// (c) a seeder that corrupts a fraction of what it uploads

fn corrupt_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"CORRUPT piece=(\d+) to=(\d+) byte=(\d+) send=(\d+)").unwrap())
}

#[test]
fn corrupting_python_seeder_is_caught_and_dropped() {
    if !python_ok() {
        eprintln!("SKIPPED: python3 (>= 3.8) not found");
        return;
    }
    let p = Params::new("corrupt_uploader", 3);
    let started = Instant::now();
    let py = 1001;
    // pypeer first (our downloaders connect to it, and reconnect after dropping it);
    // our seeder starts once every downloader dropped pypeer or finished.
    let net = Net::create(&p, &hostile_layout(p.downloaders), 2);
    net.write_manifest();
    let fraction = 0.3;
    let py_seed = (p.seed % 1_000_000).to_string();
    let downloaders = net.downloaders();
    let ready = || {
        downloaders.iter().all(|&id| {
            net.stderr(id, 0)
                .contains(&format!("peer {py} sent 3 corrupt pieces"))
                || std::fs::read_to_string(net.log_path(id))
                    .unwrap_or_default()
                    .contains("has downloaded the complete file.")
        })
    };
    let mut procs = start_hostile_first(
        &net,
        args(&[
            "--corrupt-fraction",
            &fraction.to_string(),
            "--corrupt-seed",
            &py_seed,
        ]),
        &|_| Vec::new(),
        &ready,
    );
    let ours = net.ours();
    net.wait_exit(&mut procs, &ours, p.deadline);
    procs.get_mut(&py).unwrap().kill();
    let mut problems = net.check_success(&mut procs, &ours);
    problems.extend(check_log_forms(&net));
    for &id in &net.downloaders() {
        check_resumes(&net, id, &[], &mut problems);
    }
    // What pypeer corrupted, per receiver, against what each receiver reported.
    let py_err = net.stderr(py, 0);
    let mut sent: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for c in corrupt_re().captures_iter(&py_err) {
        sent.entry(c[2].parse().unwrap())
            .or_default()
            .push(c[1].parse().unwrap());
    }
    let total_sent: usize = sent.values().map(Vec::len).sum();
    let bad_re = Regex::new(r"piece (\d+) from peer (\d+) does not match the manifest").unwrap();
    let mut detected = 0;
    let mut banned = Vec::new();
    for &id in &net.downloaders() {
        let err = net.all_stderr(id);
        let mut caught = 0;
        for c in bad_re.captures_iter(&err) {
            let (piece, from): (u32, u32) = (c[1].parse().unwrap(), c[2].parse().unwrap());
            if from != py {
                problems.push(format!(
                    "peer {id} blames peer {from} for piece {piece}, which was sound"
                ));
            } else if !sent.get(&id).is_some_and(|v| v.contains(&piece)) {
                problems.push(format!(
                    "peer {id} rejected piece {piece} from {py}, which pypeer sent intact"
                ));
            }
            caught += 1;
        }
        detected += caught;
        let got = sent.get(&id).map_or(0, Vec::len);
        // Each corrupt copy is caught unless it was in flight when the connection was
        // dropped for an earlier one, or arrived after a choke as a copy of a piece
        // fetched elsewhere meanwhile (then it is dropped unverified): rare, so two.
        if got >= 2 && caught == 0 {
            problems.push(format!(
                "peer {id} received {got} corrupt piece(s) from {py} and its stderr names none"
            ));
        }
        let dropped = err.contains(&format!("peer {py} sent 3 corrupt pieces: dropping it"));
        if dropped {
            banned.push(id);
        }
        if caught >= 3 && !dropped {
            problems.push(format!(
                "peer {id} caught {caught} corrupt pieces from {py} but did not drop it"
            ));
        }
        if dropped && caught < 3 {
            problems.push(format!(
                "peer {id} dropped {py} after only {caught} corrupt pieces"
            ));
        }
    }
    if py_err.contains("VIOLATION") {
        problems.push(format!(
            "pypeer saw a protocol violation: {}",
            tail(&py_err, 3).join(" / ")
        ));
    }
    if total_sent > 0 && detected == 0 {
        problems.push(format!(
            "pypeer sent {total_sent} corrupt pieces and no stderr names it"
        ));
    }
    if total_sent == 0 {
        problems.push("pypeer corrupted nothing: the test proved nothing (instrument)".into());
    }
    let corrupt: u64 = ours.iter().map(|&id| net.corrupt_bytes(id)).sum();
    summary(
        &p,
        started,
        &[
            ("injected", total_sent.to_string()),
            ("detected", detected.to_string()),
            ("dropped_by", format!("{banned:?}").replace(' ', "")),
            (
                "survived",
                if problems.is_empty() { total_sent } else { 0 }.to_string(),
            ),
            ("corrupt_bytes_accepted", corrupt.to_string()),
            ("verified_pieces_lost", "0".into()),
        ],
    );
    net.check(&problems);
}

// ---------------------------------------------------------------------------------
// (d) a seeder that stops writing in the middle of a piece, socket left open

fn stall_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"STALL piece=(\d+) to=(\d+)").unwrap())
}

/// A pypeer seeder that stalls mid-piece next to our (paced) seeder; our peers must
/// still finish. `strict`: our peers run with `--strict`.
fn stall_scenario(p: Params, strict: bool) {
    if !python_ok() {
        eprintln!("SKIPPED: python3 (>= 3.8) not found");
        return;
    }
    let started = Instant::now();
    let mut rng = p.rng();
    let py = 1001;
    let net = Net::create(&p, &hostile_layout(p.downloaders), 2);
    net.write_manifest();
    let after = rng.gen_range(0..8u32).to_string();
    // Our seeder starts once pypeer stalled on every downloader (or after a while).
    let downloaders = net.downloaders();
    let ready = || {
        let err = net.stderr(py, 0);
        let stalled: BTreeSet<u32> = stall_re()
            .captures_iter(&err)
            .filter_map(|c| c[2].parse().ok())
            .collect();
        downloaders.iter().all(|id| stalled.contains(id))
    };
    // A short request timeout so that the stalled connection is given up in seconds.
    let ours_args = |_| {
        if strict {
            args(&["--strict", "--request-timeout", "3"])
        } else {
            args(&["--request-timeout", "3"])
        }
    };
    let mut procs = start_hostile_first(
        &net,
        args(&["--stall-mid-piece", &after]),
        &ours_args,
        &ready,
    );
    let ours = net.ours();
    // A hang here is the failure: report who still waits for what.
    let deadline = p.deadline.min(Duration::from_secs_f64(90.0 + 3.0 * p.secs));
    let end = Instant::now() + deadline;
    loop {
        let running: Vec<u32> = ours
            .iter()
            .copied()
            .filter(|id| procs.get_mut(id).unwrap().try_wait().is_none())
            .collect();
        if running.is_empty() {
            break;
        }
        if Instant::now() >= end {
            let stalls: Vec<String> = stall_re()
                .captures_iter(&net.stderr(py, 0))
                .map(|c| format!("piece {} to {}", &c[1], &c[2]))
                .collect();
            let mut missing = String::new();
            for &id in &running {
                let mut pr = Progress::default();
                pr.update(&net.log_path(id));
                if !net.member(id).seeder {
                    let lacking: Vec<u32> =
                        (0..p.pieces()).filter(|i| !pr.pieces.contains(i)).collect();
                    write!(missing, " peer {id} lacks {lacking:?};").unwrap();
                }
            }
            for pr in procs.values_mut() {
                pr.kill();
            }
            summary(
                &p,
                started,
                &[
                    ("injected", stalls.len().to_string()),
                    ("survived", "0".into()),
                    ("hung", running.len().to_string()),
                    ("corrupt_bytes_accepted", "0".into()),
                    ("verified_pieces_lost", "0".into()),
                ],
            );
            net.fail(&format!(
                "BUG: our peers {running:?} did not finish within {deadline:?} after pypeer {py} stalled mid-piece ({}); {missing}",
                stalls.join(", ")
            ));
        }
        std::thread::sleep(POLL);
    }
    let py_exit = procs.get_mut(&py).unwrap().try_wait();
    procs.get_mut(&py).unwrap().kill();
    let mut problems = net.check_success(&mut procs, &ours);
    problems.extend(check_log_forms(&net));
    for &id in &net.downloaders() {
        check_resumes(&net, id, &[], &mut problems);
    }
    let py_err = net.stderr(py, 0);
    if py_err.contains("VIOLATION") {
        problems.push(format!(
            "pypeer saw a protocol violation: {}",
            tail(&py_err, 3).join(" / ")
        ));
    }
    let stalls = stall_re().captures_iter(&py_err).count();
    if stalls == 0 {
        problems.push("pypeer never stalled: the test proved nothing (instrument)".into());
    }
    let corrupt: u64 = ours.iter().map(|&id| net.corrupt_bytes(id)).sum();
    summary(
        &p,
        started,
        &[
            ("injected", stalls.to_string()),
            (
                "survived",
                if problems.is_empty() { stalls } else { 0 }.to_string(),
            ),
            ("corrupt_bytes_accepted", corrupt.to_string()),
            ("verified_pieces_lost", "0".into()),
            ("pypeer_exit", format!("{py_exit:?}").replace(' ', "")),
        ],
    );
    net.check(&problems);
}

#[test]
fn stalling_python_seeder_does_not_hang_the_swarm() {
    stall_scenario(Params::new("stall_mid_piece", 3), false);
}

/// The stalled piece can only come from a seeder (no other downloader), where the
/// default mode's endgame never asks.
#[test]
fn stalling_python_seeder_single_downloader() {
    stall_scenario(
        Params::with_downloaders("stall_mid_piece_one_downloader", 1),
        false,
    );
}

/// Part A to the letter: one outstanding request per connection, no endgame.
#[test]
fn stalling_python_seeder_strict() {
    stall_scenario(Params::new("stall_mid_piece_strict", 3), true);
}

// ---------------------------------------------------------------------------------
// Across network namespaces (root): real links, real TCP timeouts

/// One namespace per peer, each with a veth to a bridge in a hub namespace.
struct Netns {
    prefix: String,
    subnet: String,
    hub: String,
    peers: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Peer `i` gets `<subnet>.<10+i>/24`.
    fn create(peers: usize, subnet: &str) -> Result<Netns, String> {
        let prefix = format!("pf{}", std::process::id() % 100_000);
        let hub = format!("{prefix}hub");
        ip(&["netns", "add", &hub])?;
        let mut ns = Netns {
            prefix,
            subnet: subnet.to_string(),
            hub: hub.clone(),
            peers: 0,
        };
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..peers {
            ns.peers = i + 1;
            ns.add_peer(i)?;
        }
        Ok(ns)
    }

    fn host(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }

    fn peer_ns(&self, i: usize) -> String {
        format!("{}p{i}", self.prefix)
    }

    /// (Re)creates peer `i`'s namespace, its link to the bridge and its address.
    fn add_peer(&self, i: usize) -> Result<(), String> {
        let name = self.peer_ns(i);
        let (a, b) = (
            format!("{}a{i}", self.prefix),
            format!("{}b{i}", self.prefix),
        );
        ip(&["netns", "add", &name])?;
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        ip(&["link", "set", &a, "netns", &self.hub])?;
        ip(&["link", "set", &b, "netns", &name])?;
        ip(&["-n", &self.hub, "link", "set", &a, "master", "br0"])?;
        ip(&["-n", &self.hub, "link", "set", &a, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        let addr = format!("{}/24", self.host(i));
        ip(&["-n", &name, "addr", "add", &addr, "dev", &b])?;
        ip(&["-n", &name, "link", "set", &b, "up"])?;
        Ok(())
    }

    /// The hub side of peer `i`'s link: down = unplugged, nothing gets through.
    fn set_link(&self, i: usize, up: bool) {
        let a = format!("{}a{i}", self.prefix);
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.hub, "link", "set", &a, state]).expect("ip link set");
    }

    /// Peer `i`'s host crashes: unplugged first, then its namespace (and every socket
    /// in it, FIN_WAIT ones included) disappears without a packet leaving.
    fn crash(&self, i: usize) {
        self.set_link(i, false);
        // Deleting a namespace frees its devices lazily; delete the veth pair now so
        // the reboot can reuse its names.
        let a = format!("{}a{i}", self.prefix);
        ip(&["-n", &self.hub, "link", "del", &a]).expect("ip link del");
        ip(&["netns", "del", &self.peer_ns(i)]).expect("ip netns del");
    }

    /// `ip netns exec <peer i's namespace> <cmd>`, same arguments, environment and
    /// stderr file.
    fn wrap(&self, i: usize, inner: &Command, stderr: std::fs::File) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.peer_ns(i)])
            .arg(inner.get_program())
            .args(inner.get_args());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for i in 0..self.peers {
            let _ = ip(&["netns", "del", &self.peer_ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.hub]);
    }
}

/// A swarm with every peer in its own namespace; the seeder paced.
fn netns_swarm(p: &Params, rng: &mut StdRng) -> (Netns, Net) {
    let peers = 1 + p.downloaders;
    let subnet = format!(
        "10.{}.{}",
        200 + rng.gen_range(0..50),
        rng.gen_range(0..250)
    );
    let ns = Netns::create(peers, &subnet)
        .unwrap_or_else(|e| panic!("cannot build network namespaces (root needed): {e}"));
    let hosts: Vec<String> = (0..peers).map(|i| ns.host(i)).collect();
    let net = Net::create_on(
        p,
        &layout(&[Kind::Ours], p.downloaders),
        2,
        &hosts,
        Some(6008),
    );
    net.write_manifest();
    (ns, net)
}

fn spawn_in_ns(ns: &Netns, net: &Net, id: u32, run: u32, extra: &[String]) -> Proc {
    let inner = net.command(id, run, extra);
    let err = std::fs::OpenOptions::new()
        .append(true)
        .open(net.stderr_path(id, run))
        .unwrap();
    let mut cmd = ns.wrap((id - 1001) as usize, &inner, err);
    Proc {
        id,
        run,
        child: cmd.spawn().expect("ip netns exec"),
        status: None,
        exited_at: None,
    }
}

/// The kill test with real hosts: each victim's host crashes (unplugged, SIGKILL,
/// namespace deleted, so no FIN or RST ever reaches anyone) and reboots 1-4 s later
/// with the same address. The earlier peers still hold a connection they think is
/// alive when the restarted peer connects again (it must replace it); the later ones
/// only learn that theirs is dead from TCP (a RST from the rebooted host when they
/// send, or keepalive), then reconnect.
#[test]
#[ignore = "needs root and `ip netns`; run with --ignored (bench/faults.sh does)"]
fn netns_host_crash_and_reboot() {
    let p = Params::new("netns_crash_reboot", 4);
    let started = Instant::now();
    let mut rng = p.rng();
    let (ns, net) = netns_swarm(&p, &mut rng);
    let limit = p.upload_limit().to_string();
    let extra = |id: u32| {
        if id == 1001 {
            args(&["--upload-limit", &limit])
        } else {
            Vec::new()
        }
    };
    let mut procs: BTreeMap<u32, Proc> = BTreeMap::new();
    for id in net.ids() {
        procs.insert(id, spawn_in_ns(&ns, &net, id, 0, &extra(id)));
        std::thread::sleep(START_GAP);
    }
    let mut plan = plan_kills(&net, &mut rng, p.kills.max(1));
    let spawn = |id: u32, run: u32| spawn_in_ns(&ns, &net, id, run, &extra(id));
    let ops = KillOps {
        spawn: &spawn,
        kill: &|pr: &mut Proc| {
            let i = (pr.id - 1001) as usize;
            ns.set_link(i, false);
            pr.kill();
            ns.crash(i);
        },
        before_restart: &|id| ns.add_peer((id - 1001) as usize).expect("reboot namespace"),
        restart_delay_ms: 1000..=4000,
    };
    let records = run_kill_plan(&net, &mut procs, &mut plan, &mut rng, &ops);
    let all = net.ids();
    net.wait_exit(&mut procs, &all, p.deadline);
    let replaced: usize = all
        .iter()
        .map(|&id| {
            net.all_stderr(id)
                .matches("connected again; replacing")
                .count()
        })
        .sum();
    kill_restart_checks(
        &net,
        &mut procs,
        &records,
        started,
        &[
            ("netns", "1".into()),
            ("stale_replaced", replaced.to_string()),
        ],
    );
}

/// A downloader's link goes down for longer than TCP_USER_TIMEOUT (30 s) while the
/// others send to it (FAULT_PARTITION_SECS, default 40), then comes back: both sides
/// must notice the dead connections, reconnect once the link is back, and finish.
#[test]
#[ignore = "needs root and `ip netns`, takes about a minute; run with --ignored"]
fn netns_partition_longer_than_user_timeout_heals() {
    let p = Params::new("netns_partition", 3);
    let started = Instant::now();
    let mut rng = p.rng();
    let down_for = Duration::from_secs(env_parse("FAULT_PARTITION_SECS", 40u64));
    let (ns, net) = netns_swarm(&p, &mut rng);
    // Slow enough that the partition starts well before the end.
    let limit = p.upload_limit().to_string();
    let down_limit = (p.upload_limit() / 2).max(1).to_string();
    let extra = |id: u32| {
        if id == 1001 {
            args(&["--upload-limit", &limit])
        } else {
            args(&["--upload-limit", &down_limit])
        }
    };
    let mut procs: BTreeMap<u32, Proc> = BTreeMap::new();
    for id in net.ids() {
        procs.insert(id, spawn_in_ns(&ns, &net, id, 0, &extra(id)));
        std::thread::sleep(START_GAP);
    }
    let victims = net.downloaders();
    let victim = victims[rng.gen_range(0..victims.len())];
    let at = ((p.pieces() as f64) * rng.gen_range(0.1..0.4)).ceil() as u32;
    let mut pr = Progress::default();
    let end = Instant::now() + p.deadline;
    while pr.last_count < at {
        pr.update(&net.log_path(victim));
        if Instant::now() >= end || pr.complete {
            net.fail(&format!(
                "peer {victim} never reached {at} pieces before the partition"
            ));
        }
        std::thread::sleep(POLL);
    }
    let i = (victim - 1001) as usize;
    ns.set_link(i, false);
    eprintln!(
        "[faults] link of peer {victim} down at {} pieces for {down_for:?}",
        pr.last_count
    );
    std::thread::sleep(down_for);
    ns.set_link(i, true);
    eprintln!("[faults] link of peer {victim} up again");
    let all = net.ids();
    net.wait_exit(&mut procs, &all, p.deadline + down_for);
    let mut problems = net.check_success(&mut procs, &all);
    problems.extend(check_log_forms(&net));
    let corrupt: u64 = all.iter().map(|&id| net.corrupt_bytes(id)).sum();
    summary(
        &p,
        started,
        &[
            ("injected", "1".into()),
            ("survived", usize::from(problems.is_empty()).to_string()),
            ("corrupt_bytes_accepted", corrupt.to_string()),
            ("verified_pieces_lost", "0".into()),
            ("partition_s", down_for.as_secs().to_string()),
            ("netns", "1".into()),
        ],
    );
    net.check(&problems);
}
