//! One TCP connection to a neighbour: the handshake (both roles), then a reader task
//! that turns frames into [`SwarmEvent`]s and a writer task that sends what the swarm
//! queues.
//!
//! The connection knows nothing about pieces or choking; every decision is the swarm
//! actor's. Reader-to-swarm traffic is bounded (back-pressure on a fast sender); the
//! swarm-to-writer queue is unbounded because the swarm must never wait on a socket,
//! and its size is bounded by the swarm itself (one piece per accepted request).

use crate::handshake::{self, Extensions, Handshake};
use crate::message::{Message, MessageCodec};
use crate::ratelimit::RateLimiter;
use crate::storage::Storage;
use crate::swarm::SwarmEvent;
use crate::upload::UploadSlot;
use bytes::BytesMut;
use futures::StreamExt;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    #[error("i/o during handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Bad(#[from] handshake::HandshakeError),
    #[error("handshake names peer {got}, expected {expected}")]
    WrongPeer { got: u32, expected: String },
    #[error("connection closed before the handshake reply")]
    ClosedEarly,
}

async fn read_handshake(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Handshake, HandshakeFailure> {
    let mut buf = [0u8; handshake::LEN];
    match tokio::time::timeout(timeout, stream.read_exact(&mut buf)).await {
        Err(_) => Err(HandshakeFailure::Timeout(timeout)),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(HandshakeFailure::ClosedEarly)
        }
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(_)) => Ok(Handshake::parse(&buf)?),
    }
}

/// Connector side (SPEC A3): send our handshake first, then check the reply names
/// `expected`.
pub async fn handshake_as_connector(
    stream: &mut TcpStream,
    me: u32,
    expected: u32,
    ours: Extensions,
    timeout: Duration,
) -> Result<Extensions, HandshakeFailure> {
    let hs = Handshake {
        peer_id: me,
        extensions: ours,
    };
    stream.write_all(&hs.encode()).await?;
    let theirs = read_handshake(stream, timeout).await?;
    if theirs.peer_id != expected {
        return Err(HandshakeFailure::WrongPeer {
            got: theirs.peer_id,
            expected: expected.to_string(),
        });
    }
    Ok(ours.intersect(theirs.extensions))
}

/// Acceptor side: read the connector's handshake, check it with `allowed`, then answer.
/// A connector that sent zero reserved bytes gets zero reserved bytes back (SPEC B).
pub async fn handshake_as_acceptor(
    stream: &mut TcpStream,
    me: u32,
    ours: Extensions,
    timeout: Duration,
    allowed: impl Fn(u32) -> Result<(), String>,
) -> Result<(u32, Extensions), HandshakeFailure> {
    let theirs = read_handshake(stream, timeout).await?;
    allowed(theirs.peer_id).map_err(|expected| HandshakeFailure::WrongPeer {
        got: theirs.peer_id,
        expected,
    })?;
    let agreed = ours.intersect(theirs.extensions);
    let reply = Handshake {
        peer_id: me,
        extensions: if theirs.extensions.is_none() {
            Extensions::NONE
        } else {
            ours
        },
    };
    stream.write_all(&reply.encode()).await?;
    Ok((theirs.peer_id, agreed))
}

/// A message for the writer; a piece may carry the upload slot it was sent under.
#[derive(Debug)]
pub struct Outgoing {
    pub msg: Message,
    pub slot: Option<UploadSlot>,
    /// The piece's or block's data, to be sent from the file: `msg` then holds none.
    pub region: Option<FileRegion>,
}

impl From<Message> for Outgoing {
    fn from(msg: Message) -> Outgoing {
        Outgoing {
            msg,
            slot: None,
            region: None,
        }
    }
}

/// `len` bytes of the shared file at `offset`, sent with `sendfile` (see
/// [`Storage::send_to`]).
#[derive(Debug)]
pub struct FileRegion {
    pub storage: Arc<Storage>,
    pub offset: u64,
    pub len: u32,
}

/// Why a piece could not be sent: the connection failed (the reader reports it), or
/// the file could not be read (the whole peer stops, SPEC-INTEGRITY I5).
enum SendError {
    Socket,
    Disk(std::io::Error),
}

/// Handle the swarm keeps for a live connection.
#[derive(Clone, Debug)]
pub struct Link {
    /// Distinguishes this connection from an earlier one to the same peer.
    pub conn: u64,
    pub tx: mpsc::UnboundedSender<Outgoing>,
    /// Piece bytes queued for the writer and not yet on the socket.
    pub queued_bytes: Arc<AtomicU64>,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// What every connection of a peer shares: framing, the swarm's inbox, upload pacing.
#[derive(Clone, Debug)]
pub struct Wiring {
    pub codec: MessageCodec,
    /// The codec of connections that negotiated BLOCKS (block messages legal).
    pub block_codec: MessageCodec,
    pub events: mpsc::Sender<SwarmEvent>,
    pub limiter: Option<Arc<RateLimiter>>,
    /// TCP congestion control for every connection, in order of preference; empty:
    /// the system's default.
    pub congestion: Vec<String>,
    /// Uploads go one slot at a time (see `upload.rs`): bound unsent socket data.
    pub serialized_uploads: bool,
    /// Best recent upload speed of one piece sent under a slot, bytes/s, shared by
    /// all connections: bounds how long one slow receiver may hold a slot.
    pub upload_rate: Arc<AtomicU64>,
}

/// Unsent bytes a socket may hold. Without a bound the kernel accepts megabytes per
/// socket, a "sent" piece is still queued behind others, and the upload order the
/// swarm chose (see `upload.rs`) is lost inside the kernel.
const NOTSENT_LOWAT: libc::c_int = 128 * 1024;

/// Starts the reader and writer tasks of an established connection. The reader
/// announces the connection to the swarm before its first message, so the swarm
/// never sees a message from a connection it does not know yet.
pub fn start(stream: TcpStream, peer: u32, extensions: Extensions, initiated: bool, w: &Wiring) {
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    detect_dead_peers(&stream);
    if w.serialized_uploads {
        limit_unsent(&stream);
    }
    choose_congestion_control(&stream, &w.congestion);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let queued_bytes = Arc::new(AtomicU64::new(0));
    tokio::spawn(write_loop(
        wr,
        rx,
        queued_bytes.clone(),
        w.limiter.clone(),
        w.upload_rate.clone(),
        w.events.clone(),
    ));
    let link = Link {
        conn,
        tx,
        queued_bytes,
    };
    let hello = SwarmEvent::Connected {
        peer,
        link,
        extensions,
        initiated,
    };
    let codec = if extensions.block_size().is_some() {
        if extensions.contains(Extensions::CANCEL) {
            w.block_codec.with_cancel()
        } else {
            w.block_codec.clone()
        }
    } else {
        w.codec.clone()
    };
    tokio::spawn(read_loop(rd, peer, conn, codec, w.events.clone(), hello));
}

/// Sets the first congestion control of `names` the kernel lets us use.
///
/// Why not the system default when it is BBR: BBR bounds a flow's window by its
/// estimate of bandwidth times the *minimum* RTT seen. In a swarm every host's uplink
/// is kept full by relays, so the ACKs a downloader returns wait in that queue and
/// the real RTT is many times the minimum: BBR flows towards busy downloaders stall
/// on their window (measured: a seeder sending one piece a second to a downloader
/// that relays at full speed). Loss-based control (CUBIC, Reno) grows its window
/// until the path is full whatever the ACKs' delay; see bench/RESULTS.md.
fn choose_congestion_control(stream: &TcpStream, names: &[String]) {
    let sock = socket2::SockRef::from(stream);
    for name in names {
        match sock.set_tcp_congestion(name.as_bytes()) {
            Ok(()) => return,
            Err(e) => tracing::debug!("congestion control {name} not available: {e}"),
        }
    }
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !names.is_empty() && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "none of the congestion controls {} is available; using the system's",
            names.join(", ")
        );
    }
}

/// Part A has no keep-alive message and idle connections are normal (a peer waits for
/// others to finish), so a vanished host is detected by TCP itself: keepalive probes
/// on an idle connection, and a bound on how long sent data may stay unacknowledged.
fn detect_dead_peers(stream: &TcpStream) {
    let sock = socket2::SockRef::from(stream);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!("cannot enable TCP keepalive: {e}");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = sock.set_tcp_user_timeout(Some(Duration::from_secs(30))) {
        tracing::debug!("cannot set TCP_USER_TIMEOUT: {e}");
    }
}

#[cfg(target_os = "linux")]
fn limit_unsent(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let v = NOTSENT_LOWAT;
    // SAFETY: setsockopt on a socket we own, with a c_int value and its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "cannot set TCP_NOTSENT_LOWAT: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn limit_unsent(_stream: &TcpStream) {}

/// How long a piece may hold its upload slot: four times what it takes at the best
/// speed seen lately, within [1 s, 10 s]. The slot is a scheduling aid, not a limit:
/// letting go of it early only lets one more piece share the link.
fn slot_hold(len: usize, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::from_secs(1);
    }
    Duration::from_secs_f64(4.0 * len as f64 / rate as f64)
        .clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Writes `parts` in order. While `slot` is held it is given up at `deadline`: a
/// receiver slower than our link must not keep others' pieces waiting.
async fn write_parts(
    wr: &mut OwnedWriteHalf,
    parts: [&[u8]; 2],
    slot: &mut Option<UploadSlot>,
    deadline: tokio::time::Instant,
) -> std::io::Result<()> {
    for part in parts {
        let mut off = 0;
        while off < part.len() {
            // `write` is cancel safe: when the deadline wins, nothing was written.
            let n = if slot.is_some() {
                tokio::select! {
                    r = wr.write(&part[off..]) => r?,
                    _ = tokio::time::sleep_until(deadline) => {
                        *slot = None;
                        continue;
                    }
                }
            } else {
                wr.write(&part[off..]).await?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            off += n;
        }
    }
    Ok(())
}

/// Writes `head`, then the region's bytes straight from the file, giving `slot` up
/// at `deadline` as [`write_parts`] does.
async fn send_region(
    wr: &mut OwnedWriteHalf,
    head: &[u8],
    region: &FileRegion,
    slot: &mut Option<UploadSlot>,
    deadline: tokio::time::Instant,
) -> Result<(), SendError> {
    write_parts(wr, [head, &[]], slot, deadline)
        .await
        .map_err(|_| SendError::Socket)?;
    let sock: &TcpStream = wr.as_ref();
    let fd = sock.as_raw_fd();
    let len = region.len as usize;
    let mut sent = 0;
    while sent < len {
        let ready = if slot.is_some() {
            tokio::select! {
                r = sock.writable() => r,
                _ = tokio::time::sleep_until(deadline) => {
                    *slot = None;
                    continue;
                }
            }
        } else {
            sock.writable().await
        };
        ready.map_err(|_| SendError::Socket)?;
        let at = region.offset + sent as u64;
        match sock.try_io(Interest::WRITABLE, || {
            region.storage.send_to(fd, at, len - sent)
        }) {
            Ok(0) => {
                return Err(SendError::Disk(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("file ends before byte {}", at + 1),
                )))
            }
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if socket_error(&e) => return Err(SendError::Socket),
            Err(e) => return Err(SendError::Disk(e)),
        }
    }
    Ok(())
}

/// Errors of `sendfile` that come from the socket side (the peer went away), as
/// opposed to the file's.
fn socket_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EPIPE
                | libc::ECONNRESET
                | libc::ENOTCONN
                | libc::ETIMEDOUT
                | libc::ECONNABORTED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::ENETDOWN
        )
    )
}

async fn read_loop(
    rd: OwnedReadHalf,
    peer: u32,
    conn: u64,
    codec: MessageCodec,
    events: mpsc::Sender<SwarmEvent>,
    hello: SwarmEvent,
) {
    if events.send(hello).await.is_err() {
        return;
    }
    let mut frames = FramedRead::with_capacity(rd, codec, 256 * 1024);
    let reason = loop {
        match frames.next().await {
            Some(Ok(msg)) => {
                if events
                    .send(SwarmEvent::Message { peer, conn, msg })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(Err(e)) => break Some(e.to_string()),
            None => break None,
        }
    };
    let _ = events.send(SwarmEvent::Closed { peer, conn, reason }).await;
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    queued_bytes: Arc<AtomicU64>,
    limiter: Option<Arc<RateLimiter>>,
    upload_rate: Arc<AtomicU64>,
    events: mpsc::Sender<SwarmEvent>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Batch whatever is queued into as few writes as possible; piece data goes
        // to the socket from the file (`region`) or from its own `Bytes`, never
        // through `buf`.
        while let Some(Outgoing {
            msg,
            mut slot,
            region,
        }) = next.take()
        {
            if let Some(data) = msg.file_data() {
                let len = region.as_ref().map_or(data.len(), |r| r.len as usize);
                msg.encode_head_for(len, &mut buf);
                if let Some(l) = &limiter {
                    l.acquire(len).await;
                }
                let start = tokio::time::Instant::now();
                let rate = upload_rate.load(Ordering::Relaxed);
                let deadline = start + slot_hold(len, rate);
                let timed = slot.is_some();
                let sent = match &region {
                    Some(r) => send_region(&mut wr, &buf, r, &mut slot, deadline).await,
                    None => write_parts(&mut wr, [&buf, data], &mut slot, deadline)
                        .await
                        .map_err(|_| SendError::Socket),
                };
                match (sent, region) {
                    (Ok(()), _) => {}
                    (Err(SendError::Disk(e)), Some(r)) => {
                        let error = r.storage.read_error(e);
                        let _ = events.send(SwarmEvent::UploadFailed { error }).await;
                        return;
                    }
                    // The reader sees the connection end and reports it.
                    (Err(_), _) => return,
                }
                if timed && slot.is_some() {
                    // Sent under a slot the whole way: a sample of our link's speed.
                    // The estimate decays so that a link that got slower is noticed.
                    let secs = start.elapsed().as_secs_f64().max(1e-4);
                    let sample = (len as f64 / secs) as u64;
                    let decayed = rate - rate / 8;
                    upload_rate.store(sample.max(decayed), Ordering::Relaxed);
                } else if timed {
                    upload_rate.store(rate - rate / 8, Ordering::Relaxed);
                }
                tracing::debug!(
                    "{} {} written in {:?} (slot {})",
                    msg.name(),
                    match &msg {
                        Message::Piece { index, .. } => format!("{index}"),
                        Message::Block { piece, block, .. } => format!("{piece}/{block}"),
                        _ => String::new(),
                    },
                    start.elapsed(),
                    if !timed {
                        "none"
                    } else if slot.is_some() {
                        "kept"
                    } else {
                        "released"
                    }
                );
                drop(slot);
                buf.clear();
                queued_bytes.fetch_sub(len as u64, Ordering::Relaxed);
            } else {
                msg.encode_head(&mut buf);
            }
            if buf.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
    }
    // The swarm dropped its sender: everything queued is written; tell the peer we are
    // done sending but keep reading (the reader half) so nothing it sent is lost.
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Common;
    use bytes::Bytes;
    use tokio::net::TcpListener;

    fn seed_file(dir: &std::path::Path, len: usize) -> (Arc<Storage>, Vec<u8>) {
        let content: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let path = dir.join("f");
        std::fs::write(&path, &content).unwrap();
        let common = Common {
            preferred_neighbors: 1,
            unchoking_interval: 1,
            optimistic_unchoking_interval: 1,
            file_name: "f".into(),
            file_size: len as u64,
            piece_size: 256 * 1024,
        };
        (
            Arc::new(Storage::open_seed(&path, &common).unwrap()),
            content,
        )
    }

    /// `msg` (holding no data) with `len` bytes of the file at `offset` as its data.
    fn from_file(msg: Message, storage: &Arc<Storage>, offset: u64, len: u32) -> Outgoing {
        Outgoing {
            msg,
            slot: None,
            region: Some(FileRegion {
                storage: storage.clone(),
                offset,
                len,
            }),
        }
    }

    fn hollow_piece() -> Message {
        Message::Piece {
            index: 0,
            data: Bytes::new(),
        }
    }

    /// A writer on one end of a loopback connection; the other end and the swarm's
    /// inbox are returned.
    async fn writer() -> (
        mpsc::UnboundedSender<Outgoing>,
        TcpStream,
        mpsc::Receiver<SwarmEvent>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_rd, wr) = ours.unwrap().into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::channel(4);
        let rate = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop(
            wr,
            rx,
            Arc::new(AtomicU64::new(0)),
            None,
            rate,
            events_tx,
        ));
        (tx, accepted.unwrap().0, events)
    }

    #[tokio::test]
    async fn data_sent_from_the_file_is_on_the_wire_as_if_sent_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, content) = seed_file(dir.path(), 300 * 1024);
        let (tx, mut theirs, _events) = writer().await;
        let cvs = Bytes::from(vec![9u8; 4 * 32]);
        let (offset, len) = (256 * 1024 + 1000, 40 * 1024);
        let block = |data: Bytes| Message::Block {
            piece: 1,
            block: 0,
            cvs: cvs.clone(),
            data,
        };
        tx.send(from_file(block(Bytes::new()), &storage, offset, len))
            .unwrap();
        tx.send(Message::Have(3).into()).unwrap();
        tx.send(from_file(hollow_piece(), &storage, 0, 256 * 1024))
            .unwrap();
        drop(tx);

        let mut want = BytesMut::new();
        let data = Bytes::copy_from_slice(&content[offset as usize..][..len as usize]);
        block(data.clone()).encode_head(&mut want);
        want.extend_from_slice(&data);
        Message::Have(3).encode_head(&mut want);
        let piece = Bytes::copy_from_slice(&content[..256 * 1024]);
        Message::Piece {
            index: 0,
            data: piece.clone(),
        }
        .encode_head(&mut want);
        want.extend_from_slice(&piece);
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want[..], "bytes on the wire differ");
    }

    #[tokio::test]
    async fn a_file_shorter_than_the_data_to_send_stops_the_peer_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _) = seed_file(dir.path(), 100 * 1024);
        let (tx, _theirs, mut events) = writer().await;
        // The file was truncated after the peer started: 100 KiB of a 256 KiB piece.
        tx.send(from_file(hollow_piece(), &storage, 0, 256 * 1024))
            .unwrap();
        match events.recv().await {
            Some(SwarmEvent::UploadFailed { error }) => {
                let e = error.to_string();
                assert!(e.contains("cannot read file data"), "{e}");
                assert!(
                    e.contains(&dir.path().join("f").display().to_string()),
                    "{e}"
                );
            }
            other => panic!("expected UploadFailed, got {other:?}"),
        }
    }
}
