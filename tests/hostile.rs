//! Hostile and broken connections against real peers of a running swarm (SPEC A3,
//! A4, A5): each must cost only that connection (closed, or ignored harmlessly),
//! leave a diagnostic on stderr, never a line in the event log for an unknown peer,
//! and the swarm must still finish with correct files, exit 0 and clean logs.
//!
//! The swarm: 1001 (downloader, first), 1002 (seeder), 1003 (downloader). 1001 runs
//! alone at first, with nothing to download and nobody to finish with, so it can be
//! attacked at leisure, also as 1002 and 1003, which are listed after it and not
//! started yet. Then 1002 starts and is attacked (as 1003), then 1003 starts and the
//! swarm finishes.

mod common;

use common::*;
use regex::Regex;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const HANDSHAKE_TIMEOUT_SECS: u64 = 2;
/// How long a target may take to close a bad connection (it is immediate in practice).
const CLOSE_WITHIN: Duration = Duration::from_secs(15);
const DIAG_WITHIN: Duration = Duration::from_secs(10);
/// How long a newly started peer may take to connect (it is well under a second).
const STARTUP_WITHIN: Duration = Duration::from_secs(60);

fn handshake(id: u32) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..18].copy_from_slice(b"P2PFILESHARINGPROJ");
    b[28..].copy_from_slice(&id.to_be_bytes());
    b
}

/// One message: 4-byte length (type + payload), type, payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(payload);
    v
}

fn connect(port: u16) -> TcpStream {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                s.set_nodelay(true).unwrap();
                return s;
            }
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("cannot connect to port {port}: {e}"),
        }
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Reads exactly `n` bytes; `Err(None)` when the peer closed first.
fn read_n(s: &mut TcpStream, n: usize, within: Duration) -> Result<Vec<u8>, Option<String>> {
    let end = Instant::now() + within;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(None),
            Ok(k) => got += k,
            Err(e) if is_reset(&e) => return Err(None),
            Err(e) if is_timeout(&e) => {
                if Instant::now() >= end {
                    return Err(Some(format!("only {got} of {n} bytes within {within:?}")));
                }
            }
            Err(e) => return Err(Some(e.to_string())),
        }
    }
    Ok(buf)
}

/// Reads one message: (type, payload).
fn read_message(s: &mut TcpStream, within: Duration) -> Result<(u8, Vec<u8>), Option<String>> {
    let len = read_n(s, 4, within)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len == 0 || len > 64 << 20 {
        return Err(Some(format!("peer sent a message of length {len}")));
    }
    let body = read_n(s, len, within)?;
    Ok((body[0], body[1..].to_vec()))
}

/// Waits until the other side closes (EOF or reset), discarding what it sends.
fn expect_closed(s: &mut TcpStream, within: Duration) -> Result<(), String> {
    let end = Instant::now() + within;
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if is_reset(&e) => return Ok(()),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(format!("read error: {e}")),
        }
        if Instant::now() >= end {
            return Err(format!("connection still open after {within:?}"));
        }
    }
}

/// Expects the connection to stay open for `d`; returns the bytes received meanwhile.
fn expect_open(s: &mut TcpStream, d: Duration) -> Result<Vec<u8>, String> {
    let end = Instant::now() + d;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return Err("closed (EOF)".into()),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if is_reset(&e) => return Err("closed (reset)".into()),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(format!("read error: {e}")),
        }
    }
    Ok(got)
}

/// The types of the whole messages in `bytes`.
fn message_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        kinds.push(bytes[4]);
        bytes = &bytes[(4 + len).min(bytes.len())..];
    }
    kinds
}

/// Watches a stderr file for new lines from now on.
struct Watch {
    path: std::path::PathBuf,
    offset: usize,
}

impl Watch {
    fn new(path: &std::path::Path) -> Watch {
        let offset = std::fs::read(path).map(|b| b.len()).unwrap_or(0);
        Watch {
            path: path.to_path_buf(),
            offset,
        }
    }

    fn expect(&self, pattern: &str, within: Duration) -> Result<(), String> {
        let re = Regex::new(pattern).unwrap();
        let end = Instant::now() + within;
        loop {
            let bytes = std::fs::read(&self.path).unwrap_or_default();
            let new = String::from_utf8_lossy(&bytes[self.offset.min(bytes.len())..]).into_owned();
            if re.is_match(&new) {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(format!(
                    "no new stderr line matching /{pattern}/ within {within:?}; new stderr:\n{}",
                    tail(&new, 10)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running peer under attack.
struct Target {
    proc: PeerProc,
    port: u16,
    id: u32,
    pieces: u32,
    /// Sessions it registered per claimed ID (each logs "is connected from").
    sessions: HashMap<u32, usize>,
}

impl Target {
    fn new(swarm: &Swarm, proc: PeerProc) -> Target {
        Target {
            port: swarm.peer(proc.id).port,
            id: proc.id,
            pieces: swarm.num_pieces(),
            proc,
            sessions: HashMap::new(),
        }
    }

    /// A handshake as `as_id` that the target accepts: its handshake back, then its
    /// bitfield (p2pshare always sends one, A5.1). Retries while the target still
    /// holds an earlier session under the same ID.
    fn session(&mut self, as_id: u32) -> (TcpStream, Vec<u8>) {
        let mut last = String::new();
        for _ in 0..50 {
            let mut s = connect(self.port);
            s.write_all(&handshake(as_id)).unwrap();
            match read_n(&mut s, 32, CLOSE_WITHIN) {
                Ok(reply) => {
                    assert_eq!(&reply[..18], b"P2PFILESHARINGPROJ", "reply header");
                    assert_eq!(
                        &reply[18..28],
                        &[0u8; 10],
                        "reply to a plain peer must have zero reserved bytes"
                    );
                    assert_eq!(
                        u32::from_be_bytes([reply[28], reply[29], reply[30], reply[31]]),
                        self.id
                    );
                }
                Err(e) => {
                    last = format!("handshake reply: {e:?}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            match read_message(&mut s, CLOSE_WITHIN) {
                Ok((5, bf)) => {
                    assert_eq!(
                        bf.len(),
                        self.pieces.div_ceil(8) as usize,
                        "bitfield length"
                    );
                    *self.sessions.entry(as_id).or_default() += 1;
                    return (s, bf);
                }
                Ok((t, _)) => panic!("peer {}: first message has type {t}, not bitfield", self.id),
                Err(e) => {
                    last = format!("first message: {e:?}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!(
            "peer {} never accepted a session as {as_id}: {last}",
            self.id
        );
    }

    /// Runs one hostile case: writes `bytes` on `s`; the target must close the
    /// connection, stay alive and write a diagnostic matching `diag` to stderr.
    fn must_close(&mut self, what: &str, mut s: TcpStream, bytes: &[u8], diag: &str) {
        let watch = Watch::new(&self.proc.stderr_path);
        let _ = s.write_all(bytes);
        let _ = s.flush();
        if let Err(e) = expect_closed(&mut s, CLOSE_WITHIN) {
            panic!("peer {}, {what}: {e}", self.id);
        }
        self.alive(what);
        if let Err(e) = watch.expect(diag, DIAG_WITHIN) {
            panic!("peer {}, {what}: {e}", self.id);
        }
    }

    /// A message after a session as `as_id`; the target must close the connection.
    fn session_must_close(&mut self, what: &str, as_id: u32, bytes: &[u8], diag: &str) {
        let (s, _) = self.session(as_id);
        self.must_close(what, s, bytes, diag);
    }

    /// A raw handshake the target must refuse.
    fn handshake_must_close(&mut self, what: &str, hs: &[u8], diag: &str) {
        let mut s = connect(self.port);
        let watch = Watch::new(&self.proc.stderr_path);
        let _ = s.write_all(hs);
        // The target must not register this connection: no bitfield may follow even
        // if it answered the handshake.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let end = Instant::now() + CLOSE_WITHIN;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if is_reset(&e) => break,
                Err(e) if is_timeout(&e) => {}
                Err(e) => panic!("peer {}, {what}: read error {e}", self.id),
            }
            assert!(
                Instant::now() < end,
                "peer {}, {what}: connection still open after {CLOSE_WITHIN:?}",
                self.id
            );
        }
        assert!(
            got.len() <= 32,
            "peer {}, {what}: sent {} bytes (more than a handshake) on a refused connection",
            self.id,
            got.len()
        );
        self.alive(what);
        if let Err(e) = watch.expect(diag, DIAG_WITHIN) {
            panic!("peer {}, {what}: {e}", self.id);
        }
    }

    fn alive(&mut self, what: &str) {
        // Give a crash a moment to show.
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            self.proc.is_running(),
            "peer {} died after {what}: {:?}\n{}",
            self.id,
            self.proc.status(),
            tail(&self.proc.stderr(), 20)
        );
    }
}

fn hostile_swarm() -> Swarm {
    Swarm::create(SwarmSpec {
        peers: 3,
        seeders: vec![1],
        // 123 pieces: not a multiple of 8 (spare bitfield bits) nor of the piece size.
        file_size: 2_000_000 + 1_234,
        piece_size: 16_384,
        k: 1,
        unchoking_interval: 1,
        optimistic_interval: 1,
        host: "127.0.0.1".into(),
        ..SwarmSpec::default()
    })
}

fn target_opts() -> PeerOpts {
    PeerOpts {
        extra: vec![
            "--handshake-timeout".into(),
            HANDSHAKE_TIMEOUT_SECS.to_string(),
        ],
        // Debug level so that ignored messages leave a diagnostic too.
        env: vec![("RUST_LOG".into(), "p2pshare=debug".into())],
        ..PeerOpts::default()
    }
}

#[test]
fn hostile_connections_cost_only_themselves() {
    let started = Instant::now();
    let swarm = hostile_swarm();
    let [a, b, c] = [swarm.peers[0].id, swarm.peers[1].id, swarm.peers[2].id];
    let n = swarm.num_pieces();
    let piece = swarm.spec.piece_size as usize;
    assert_ne!(n % 8, 0);
    assert_ne!(swarm.piece_len(n - 1), piece);
    let bitfield_len = n.div_ceil(8) as usize;

    // ---- Phase 1: only `a` (a downloader with no piece) runs.
    let mut ta = Target::new(&swarm, swarm.spawn(a, &target_opts()));

    // Connections that never complete their handshake: nothing, or half of it.
    let opened = Instant::now();
    let mut silent = connect(ta.port);
    let mut half = connect(ta.port);
    half.write_all(&handshake(b)[..20]).unwrap();
    let watch_timeouts = Watch::new(&ta.proc.stderr_path);
    if let Err(e) = expect_open(&mut silent, Duration::from_millis(500)) {
        panic!("a silent connection was dropped before the handshake timeout: {e}");
    }

    // Handshakes that must be refused.
    let mut wrong_header = handshake(b);
    wrong_header[..18].copy_from_slice(b"P2PFILESHARINGPROX");
    ta.handshake_must_close(
        "wrong handshake header",
        &wrong_header,
        r"(?i)header|P2PFILESHARINGPRO",
    );
    ta.handshake_must_close(
        "ASCII garbage instead of a handshake",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n_____",
        r"(?i)header|P2PFILESHARINGPRO",
    );
    ta.handshake_must_close("unknown peer ID 4242", &handshake(4242), r"\b4242\b");
    ta.handshake_must_close(
        "peer ID 0",
        &handshake(0),
        r"(?i)reject|refus|unexpected|expected",
    );
    ta.handshake_must_close("its own ID", &handshake(a), &format!(r"\b{a}\b"));

    // Valid handshakes as the later peers b and c (not started yet), then bad
    // messages. Each closes only that connection.
    let too_long = (piece as u32 + 6).to_be_bytes();
    ta.session_must_close(
        "length just above the largest legal message",
        b,
        &[&too_long[..], &[7]].concat(),
        r"(?i)length|too (long|large|big)|exceed",
    );
    ta.session_must_close(
        "length 0xFFFFFFFF",
        c,
        &[0xff, 0xff, 0xff, 0xff],
        r"(?i)length|too (long|large|big)|exceed",
    );
    ta.session_must_close("length 0", b, &[0, 0, 0, 0], r"(?i)length|empty|no type");
    ta.session_must_close(
        "unknown message type 9",
        c,
        &frame(9, &[]),
        r"(?i)(unknown|invalid|unexpected).*type",
    );
    ta.session_must_close(
        "unknown message type 200 with a payload",
        b,
        &frame(200, &[1, 2, 3, 4]),
        r"(?i)(unknown|invalid|unexpected).*type",
    );
    ta.session_must_close(
        "'have' for piece index = number of pieces",
        c,
        &frame(4, &n.to_be_bytes()),
        &format!(r"(?i)have.*\b{n}\b"),
    );
    ta.session_must_close(
        "'have' for piece 0xFFFFFFFF",
        b,
        &frame(4, &u32::MAX.to_be_bytes()),
        r"(?i)have.*4294967295",
    );
    ta.session_must_close(
        "'have' with a 2-byte payload",
        c,
        &frame(4, &[0, 1]),
        r"(?i)have",
    );
    ta.session_must_close(
        "request out of range",
        b,
        &frame(6, &n.to_be_bytes()),
        &format!(r"(?i)request.*\b{n}\b"),
    );
    ta.session_must_close(
        "request for a piece it lacks",
        c,
        &frame(6, &0u32.to_be_bytes()),
        r"(?i)request.*\b0\b",
    );
    let mut short = 0u32.to_be_bytes().to_vec();
    short.extend(vec![0xab; piece - 1]);
    ta.session_must_close(
        "piece 0 one byte short",
        b,
        &frame(7, &short),
        r"(?i)piece 0\b.*(bytes|length)|(bytes|length).*piece 0\b",
    );
    let mut long_last = (n - 1).to_be_bytes().to_vec();
    long_last.extend(vec![0xab; piece]);
    ta.session_must_close(
        "last (short) piece with a full piece's bytes",
        c,
        &frame(7, &long_last),
        &format!(
            r"(?i)piece {}\b.*(bytes|length)|(bytes|length).*piece {}\b",
            n - 1,
            n - 1
        ),
    );
    let mut out_of_range = n.to_be_bytes().to_vec();
    out_of_range.extend(vec![0xab; swarm.piece_len(0)]);
    ta.session_must_close(
        "piece index out of range",
        b,
        &frame(7, &out_of_range),
        &format!(r"(?i)piece.*\b{n}\b"),
    );
    ta.session_must_close(
        "piece message without a full index",
        c,
        &frame(7, &[0, 0]),
        r"(?i)piece",
    );
    let zero = vec![0u8; bitfield_len];
    ta.session_must_close(
        "second bitfield",
        b,
        &[frame(5, &zero), frame(5, &zero)].concat(),
        r"(?i)bitfield",
    );
    ta.session_must_close(
        "bitfield one byte too long",
        c,
        &frame(5, &vec![0u8; bitfield_len + 1]),
        r"(?i)bitfield",
    );
    let mut spare = zero.clone();
    *spare.last_mut().unwrap() = 0x01;
    ta.session_must_close(
        "bitfield with a spare bit set",
        b,
        &frame(5, &spare),
        r"(?i)bitfield|spare",
    );

    // The connections that never finished their handshake are dropped after the
    // handshake timeout.
    for (what, s) in [
        ("silent connection", &mut silent),
        ("half handshake", &mut half),
    ] {
        if let Err(e) = expect_closed(
            s,
            Duration::from_secs(HANDSHAKE_TIMEOUT_SECS) + CLOSE_WITHIN,
        ) {
            panic!("{what}: {e}");
        }
        assert!(
            opened.elapsed() >= Duration::from_millis(HANDSHAKE_TIMEOUT_SECS * 1000 - 500),
            "{what} was closed before the handshake timeout"
        );
    }
    watch_timeouts
        .expect(r"(?i)handshake.*(within|time)|timed? ?out", DIAG_WITHIN)
        .unwrap();
    ta.alive("the handshake timeouts");

    // ---- Phase 2: the seeder `b` starts and connects to `a`; attack it as `c`.
    let mut tb = Target::new(&swarm, swarm.spawn(b, &target_opts()));
    wait_for_text(
        &swarm.log_path(b),
        &Regex::new(&format!("makes a connection to Peer {a}\\.")).unwrap(),
        STARTUP_WITHIN,
    )
    .unwrap();
    {
        // A request while choked is ignored: the connection stays, no piece comes.
        let watch = Watch::new(&tb.proc.stderr_path);
        let (mut s, bf) = tb.session(c);
        assert!(
            bf[..bitfield_len - 1].iter().all(|&x| x == 0xff),
            "the seeder's bitfield should be full: {bf:?}"
        );
        s.write_all(&[frame(5, &zero), frame(6, &0u32.to_be_bytes())].concat())
            .unwrap();
        match expect_open(&mut s, Duration::from_millis(1500)) {
            Ok(got) => {
                let kinds = message_types(&got);
                assert!(
                    !kinds.contains(&7),
                    "a choked, not interested peer got a piece for its request (types {kinds:?})"
                );
            }
            Err(e) => {
                panic!("a request while choked should be ignored, but the connection was {e}")
            }
        }
        tb.alive("a request while choked");
        watch.expect(r"(?i)choked", DIAG_WITHIN).unwrap();
    }
    tb.handshake_must_close(
        "wrong handshake header",
        &wrong_header,
        r"(?i)header|P2PFILESHARINGPRO",
    );
    tb.handshake_must_close(
        &format!("peer {a}, listed before the target"),
        &handshake(a),
        &format!(r"\b{a}\b"),
    );
    tb.handshake_must_close("its own ID", &handshake(b), &format!(r"\b{b}\b"));
    tb.handshake_must_close("unknown peer ID 99999", &handshake(99_999), r"\b99999\b");
    tb.session_must_close(
        "request out of range",
        c,
        &frame(6, &(n + 1).to_be_bytes()),
        &format!(r"(?i)request.*\b{}\b", n + 1),
    );
    tb.session_must_close(
        "unknown message type 8",
        c,
        &[frame(5, &zero), frame(8, &[0; 4])].concat(),
        r"(?i)(unknown|invalid|unexpected).*type",
    );
    tb.session_must_close(
        "message length just above the largest legal one",
        c,
        &(piece as u32 + 6).to_be_bytes(),
        r"(?i)length|too (long|large|big)|exceed",
    );
    ta.alive("the attacks on the seeder");

    // ---- Phase 3: the real `c` starts; the whole swarm must finish cleanly.
    let pc = swarm.spawn(c, &PeerOpts::default());
    let mut procs = vec![ta.proc, tb.proc, pc];
    swarm.wait_all_success(&mut procs, SWARM_DEADLINE);
    swarm.check_copies();
    // Every session under a listed later ID was a real connection and is logged as
    // one; nothing else may be.
    let mut check = LogCheck::default();
    for (target, sessions) in [(a, &ta.sessions), (b, &tb.sessions)] {
        for (&id, &count) in sessions {
            check.extra_connected_from.insert((target, id), count);
        }
    }
    swarm.validate_logs(&check);
    eprintln!(
        "hostile test finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// SPEC A3: the acceptor accepts only a listed later peer that is "not yet
/// connected". A second connection claiming the ID of a connected peer (an impostor,
/// or the same peer started twice by mistake) must be closed without disturbing the
/// existing connection: no bitfield to it, and no second connection line in either
/// real peer's log.
fn duplicate_of_connected_peer_is_refused(strict: bool) {
    let swarm = Swarm::create(SwarmSpec {
        peers: 3,
        seeders: vec![0],
        file_size: 500_000 + 5,
        piece_size: 16_384,
        k: 1,
        host: "127.0.0.1".into(),
        ..SwarmSpec::default()
    });
    let [a, b, c] = [swarm.peers[0].id, swarm.peers[1].id, swarm.peers[2].id];
    let opts = || PeerOpts {
        strict,
        ..PeerOpts::default()
    };
    let pa = swarm.spawn(a, &opts());
    std::thread::sleep(Duration::from_millis(150));
    let pb = swarm.spawn(b, &opts());
    wait_for_text(
        &swarm.log_path(b),
        &Regex::new(&format!("makes a connection to Peer {a}\\.")).unwrap(),
        STARTUP_WITHIN,
    )
    .unwrap();
    let mut ta = Target::new(&swarm, pa);
    let watch = Watch::new(&ta.proc.stderr_path);
    let mut s = connect(ta.port);
    s.write_all(&handshake(b)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + CLOSE_WITHIN;
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if is_reset(&e) => break true,
            Err(e) if is_timeout(&e) => {}
            Err(e) => panic!("read error {e}"),
        }
        if Instant::now() >= end || got.len() > 32 {
            break false;
        }
    };
    drop(s);
    ta.alive("a duplicate connection");
    assert!(
        closed && got.len() <= 32,
        "peer {a} accepted a second connection claiming to be the connected peer {b} \
         (it sent {} bytes: handshake and bitfield) instead of closing it (SPEC A3: \
         \"a peer ... listed after it and not yet connected\")",
        got.len()
    );
    watch.expect(&format!(r"\b{b}\b"), DIAG_WITHIN).unwrap();
    let pc = swarm.spawn(c, &opts());
    let mut procs = vec![ta.proc, pb, pc];
    swarm.wait_all_success(&mut procs, SWARM_DEADLINE);
    swarm.check_copies();
    swarm.validate_logs(&LogCheck::default());
}

#[test]
fn duplicate_of_connected_peer_is_refused_strict() {
    duplicate_of_connected_peer_is_refused(true);
}

#[test]
fn duplicate_of_connected_peer_is_refused_default() {
    duplicate_of_connected_peer_is_refused(false);
}

/// A connector may send its bitfield in the same segment as its handshake (many
/// implementations write them back to back, and nothing in SPEC A3/A5.1 asks for a
/// pause). The target must process that bitfield: a downloader with nothing that sees
/// a full bitfield must answer `interested` (A5.2). Repeated with a fresh listed ID
/// each time, since losing it depends on thread timing inside the target.
#[test]
fn bitfield_sent_with_the_handshake_is_not_lost() {
    const TRIES: usize = 60;
    let swarm = Swarm::create(SwarmSpec {
        peers: TRIES + 1,
        seeders: vec![],
        file_size: 100_000,
        piece_size: 16_384,
        host: "127.0.0.1".into(),
        ..SwarmSpec::default()
    });
    let n = swarm.num_pieces();
    let mut full = vec![0xffu8; n.div_ceil(8) as usize];
    *full.last_mut().unwrap() = 0xffu8 << (n.div_ceil(8) * 8 - n);
    let target = swarm.peers[0].id;
    let mut t = Target::new(&swarm, swarm.spawn(target, &PeerOpts::default()));
    let mut lost = Vec::new();
    for p in &swarm.peers[1..] {
        let mut s = connect(t.port);
        s.write_all(&[&handshake(p.id)[..], &frame(5, &full)].concat())
            .unwrap();
        read_n(&mut s, 32, CLOSE_WITHIN).expect("handshake reply");
        let mut types = Vec::new();
        loop {
            match read_message(&mut s, Duration::from_secs(2)) {
                Ok((kind, _)) => {
                    types.push(kind);
                    if kind == 2 {
                        break;
                    }
                }
                Err(e) => {
                    lost.push(format!("as peer {}: got types {types:?}, then {e:?}", p.id));
                    break;
                }
            }
        }
        drop(s);
        if lost.len() >= 2 {
            break;
        }
    }
    t.alive("the connections");
    assert!(
        lost.is_empty(),
        "peer {target} ignored a bitfield that arrived together with the handshake \
         (no 'interested' although it has no piece):\n{}",
        lost.join("\n")
    );
}

/// An advertising handshake (SPEC B): `p2ps`, `flags`, log2 of the block size.
fn extended_handshake(id: u32, flags: u8, block_size: u32) -> [u8; 32] {
    let mut b = handshake(id);
    b[18..22].copy_from_slice(b"p2ps");
    b[22] = flags;
    b[23] = block_size.trailing_zeros() as u8;
    b
}

/// `cancel-block` (type 11) exists only where both sides advertised CANCEL (flag 4)
/// with BLOCKS: elsewhere it is an unknown type and closes the connection. Where it
/// was agreed, it withdraws a request still waiting for an upload slot, and only
/// that one: the seeder sends one 4 KiB block a second (`--upload-limit 4096`,
/// one upload slot), so the cancels, written together with the requests, reach it
/// seconds before a slot could take those requests.
#[test]
fn cancel_block_is_negotiated_and_withdraws_a_waiting_request() {
    const BLOCK: u32 = 4096;
    let swarm = Swarm::create(SwarmSpec {
        peers: 2,
        seeders: vec![0],
        file_size: 100_000,
        piece_size: 16_384,
        k: 1,
        host: "127.0.0.1".into(),
        ..SwarmSpec::default()
    });
    let (seed, me) = (swarm.peers[0].id, swarm.peers[1].id);
    let mut opts = target_opts();
    for a in [
        "--block-size",
        "4096",
        "--upload-slots",
        "1",
        "--upload-limit",
        "4096",
    ] {
        opts.extra.push(a.into());
    }
    let mut t = Target::new(&swarm, swarm.spawn(seed, &opts));
    let port = t.port;
    let open = |flags: u8| {
        let mut s = connect(port);
        s.write_all(&extended_handshake(me, flags, BLOCK)).unwrap();
        let reply = read_n(&mut s, 32, CLOSE_WITHIN).expect("handshake reply");
        assert_eq!(&reply[18..22], b"p2ps", "the seeder did not advertise");
        let (kind, _) = read_message(&mut s, CLOSE_WITHIN).expect("bitfield");
        assert_eq!(kind, 5, "first message");
        (s, reply[22])
    };
    let block_id = |piece: u32, block: u32| [piece.to_be_bytes(), block.to_be_bytes()].concat();

    // PIPELINE + BLOCKS, no CANCEL: type 11 is unknown here.
    let (s, flags) = open(1 | 2);
    assert_eq!(
        flags & 4,
        4,
        "the seeder must advertise CANCEL (flags {flags})"
    );
    t.must_close(
        "cancel-block without CANCEL negotiated",
        s,
        &frame(11, &block_id(1, 0)),
        r"unknown message type 11",
    );

    // With CANCEL: ask for every block of pieces 0 and 1, withdraw piece 1's.
    let (mut s, _) = open(1 | 2 | 4);
    s.write_all(&frame(2, &[])).unwrap();
    loop {
        match read_message(&mut s, Duration::from_secs(20)) {
            Ok((1, _)) => break,
            Ok(_) => {}
            Err(e) => panic!("no unchoke from seeder {seed}: {e:?}"),
        }
    }
    let mut batch = Vec::new();
    for piece in 0..2 {
        for block in 0..4 {
            batch.extend(frame(9, &block_id(piece, block)));
        }
    }
    for block in 0..4 {
        batch.extend(frame(11, &block_id(1, block)));
    }
    s.write_all(&batch).unwrap();
    let block_of = |body: &[u8]| {
        let word = |k: usize| u32::from_be_bytes([body[k], body[k + 1], body[k + 2], body[k + 3]]);
        (word(0), word(4))
    };
    let mut got = Vec::new();
    // Piece 0's four blocks take about 3 s.
    while got.len() < 4 {
        match read_message(&mut s, Duration::from_secs(20)) {
            Ok((10, body)) => got.push(block_of(&body)),
            Ok(_) => {}
            Err(e) => panic!("waiting for blocks (got {got:?}): {e:?}"),
        }
    }
    // A cancelled block would follow within a second; wait three.
    let quiet = Instant::now() + Duration::from_secs(3);
    while Instant::now() < quiet {
        match read_message(&mut s, quiet - Instant::now()) {
            Ok((10, body)) => got.push(block_of(&body)),
            Ok(_) => {}
            Err(Some(_)) => break, // nothing more: what we expect
            Err(None) => panic!("seeder {seed} closed the connection after the cancels"),
        }
    }
    t.alive("the cancels");
    assert_eq!(
        got,
        vec![(0, 0), (0, 1), (0, 2), (0, 3)],
        "expected piece 0's blocks and none of piece 1's (cancelled)"
    );
}
