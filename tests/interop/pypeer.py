#!/usr/bin/env python3
"""pypeer: an independent implementation of SPEC Part A, for interoperability tests.

Usage:  python3 pypeer.py <peerID> [--dir DIR] [--reject-reserved]
                         [--corrupt-fraction F [--corrupt-seed N]] [--stall-mid-piece [N]]

Written from /work/shared/SPEC.md alone (Python 3.11, standard library only). It runs
one peer of the classic "peerProcess" protocol: reads Common.cfg and PeerInfo.cfg in
DIR, connects to the peers listed before it, accepts the ones listed after it, shares
the file under DIR/peer_<ID>/ and logs the 11 A6 events to DIR/log_peer_<ID>.log. It
exits 0 once every peer of PeerInfo.cfg (itself included) has the complete file.

It is also a test instrument: everything it receives is validated strictly, and any
protocol violation by a neighbour is printed to stderr ("VIOLATION: ...") and ends the
process with exit status 3, so a test harness notices wire bugs in the other
implementation. Status 1 is a start-up error (bad configuration, missing file).

--reject-reserved makes it behave like the strict implementations SPEC Part B
mentions: a connector whose handshake carries non-zero reserved bytes gets its
connection closed without an answer (it is expected to retry once with zeros).

Hostile modes (fault-injection instrument, off by default; tests/faults.rs uses them).
They only change what this peer uploads; everything it receives is still validated:

--corrupt-fraction F   flip one byte in a fraction F (0..1) of the pieces it uploads.
                       Whether a send is corrupted is a function of (--corrupt-seed,
                       receiving peer, piece, how many times that piece went to that
                       peer), so a run is reproducible whatever the thread timing. Each
                       corrupted send is reported on stderr as
                       "CORRUPT piece=<i> to=<peer> byte=<offset> send=<n>".
--corrupt-seed N       seed of the above [default: random, printed on stderr].
--stall-mid-piece [N]  after N pieces (default 5) were uploaded in total, every
                       connection that is asked for another piece gets that piece's
                       header and half its bytes, then nothing more, ever: the writer
                       stops, the socket stays open and the reader keeps reading.
                       Reported on stderr as "STALL piece=<i> to=<peer> sent=<bytes>".

In a hostile mode a neighbour that closes the connection early (it may drop a peer
that sends bad data) is not a violation, and a peer that connects again replaces its
old connection; this peer then exits 0 only if it sees every peer complete, so a test
usually kills it once the peers under test are done.
"""

import argparse
import collections
import datetime
import hashlib
import os
import random
import socket
import struct
import sys
import threading
import time

HEADER = b"P2PFILESHARINGPROJ"
ZERO_RESERVED = bytes(10)
HANDSHAKE_LEN = 32

CHOKE, UNCHOKE, INTERESTED, NOT_INTERESTED, HAVE, BITFIELD, REQUEST, PIECE = range(8)
TYPE_NAMES = {
    CHOKE: "choke",
    UNCHOKE: "unchoke",
    INTERESTED: "interested",
    NOT_INTERESTED: "not interested",
    HAVE: "have",
    BITFIELD: "bitfield",
    REQUEST: "request",
    PIECE: "piece",
}

EXIT_STARTUP = 1
EXIT_VIOLATION = 3

CONNECT_RETRY_SECS = 120.0
HANDSHAKE_TIMEOUT_SECS = 10.0
DRAIN_SECS = 2.0


def diag(msg):
    """Diagnostics: stderr only, never the event log."""
    stamp = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    sys.stderr.write("[pypeer %s] %s\n" % (stamp, msg))
    sys.stderr.flush()


class ConfigError(Exception):
    pass


# --------------------------------------------------------------------------- config


def _config_lines(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError("%s: cannot read: %s" % (path, e))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("%s: not UTF-8 text" % path)
    # Accept CRLF, blank lines and trailing whitespace.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if line:
            yield number, line.split()


def _parse_int(path, number, what, value, low, high):
    try:
        v = int(value, 10)
    except ValueError:
        raise ConfigError("%s:%d: %s %r is not an integer" % (path, number, what, value))
    if v < low or v > high:
        raise ConfigError("%s:%d: %s %d is out of range %d..%d" % (path, number, what, v, low, high))
    return v


def parse_common(path):
    int_keys = {
        "NumberOfPreferredNeighbors": (0, 1 << 31),
        "UnchokingInterval": (1, 1 << 31),
        "OptimisticUnchokingInterval": (1, 1 << 31),
        "FileSize": (1, 1 << 62),
        "PieceSize": (1, 1 << 31),
    }
    out = {}
    for number, fields in _config_lines(path):
        if len(fields) != 2:
            raise ConfigError("%s:%d: expected 'Key Value', got %d fields" % (path, number, len(fields)))
        key, value = fields
        if key in out:
            raise ConfigError("%s:%d: duplicate key %s" % (path, number, key))
        if key in int_keys:
            low, high = int_keys[key]
            out[key] = _parse_int(path, number, key, value, low, high)
        elif key == "FileName":
            if "/" in value or value in (".", ".."):
                raise ConfigError("%s:%d: FileName %r is not a plain file name" % (path, number, value))
            out[key] = value
        else:
            raise ConfigError("%s:%d: unknown key %r" % (path, number, key))
    for key in list(int_keys) + ["FileName"]:
        if key not in out:
            raise ConfigError("%s: missing key %s" % (path, key))
    return out


PeerEntry = collections.namedtuple("PeerEntry", "peer_id host port has_file")


def parse_peerinfo(path):
    peers = []
    seen = set()
    for number, fields in _config_lines(path):
        if len(fields) != 4:
            raise ConfigError(
                "%s:%d: expected 'peerID host port hasFile', got %d fields" % (path, number, len(fields))
            )
        pid = _parse_int(path, number, "peer ID", fields[0], 1, 0xFFFFFFFF)
        port = _parse_int(path, number, "port", fields[2], 1, 65535)
        if fields[3] not in ("0", "1"):
            raise ConfigError("%s:%d: hasFile must be 0 or 1, got %r" % (path, number, fields[3]))
        if pid in seen:
            raise ConfigError("%s:%d: duplicate peer ID %d" % (path, number, pid))
        seen.add(pid)
        peers.append(PeerEntry(pid, fields[1], port, fields[3] == "1"))
    if not peers:
        raise ConfigError("%s: no peers" % path)
    return peers


# --------------------------------------------------------------------------- log


class EventLog:
    """log_peer_<ID>.log: only the 11 event forms of SPEC A6."""

    def __init__(self, path, me):
        self.me = me
        self.lock = threading.Lock()
        self.f = open(path, "a", encoding="utf-8")

    def _write(self, text):
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        with self.lock:
            self.f.write("%s: Peer %d %s\n" % (stamp, self.me, text))
            self.f.flush()

    def makes_connection(self, other):
        self._write("makes a connection to Peer %d." % other)

    def connected_from(self, other):
        self._write("is connected from Peer %d." % other)

    def preferred(self, ids):
        self._write("has the preferred neighbors %s." % ",".join(str(i) for i in ids))

    def optimistic(self, other):
        self._write("has the optimistically unchoked neighbor %d." % other)

    def unchoked_by(self, other):
        self._write("is unchoked by %d." % other)

    def choked_by(self, other):
        self._write("is choked by %d." % other)

    def got_have(self, other, piece):
        self._write("received the 'have' message from %d for the piece %d." % (other, piece))

    def got_interested(self, other):
        self._write("received the 'interested' message from %d." % other)

    def got_not_interested(self, other):
        self._write("received the 'not interested' message from %d." % other)

    def downloaded(self, piece, other, count):
        self._write(
            "has downloaded the piece %d from %d. Now the number of pieces it has is %d." % (piece, other, count)
        )

    def complete(self):
        self._write("has downloaded the complete file.")

    def close(self):
        with self.lock:
            self.f.flush()
            self.f.close()


# --------------------------------------------------------------------------- wire


class Eof(Exception):
    pass


def recv_exact(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            r = sock.recv_into(view[got:], n - got)
        except (ConnectionResetError, ConnectionAbortedError) as e:
            raise Eof(str(e))
        if r == 0:
            raise Eof("end of stream after %d of %d bytes" % (got, n))
        got += r
    return bytes(buf)


def handshake_bytes(my_id):
    return HEADER + ZERO_RESERVED + struct.pack(">I", my_id)


def message(mtype, payload=b""):
    return struct.pack(">IB", len(payload) + 1, mtype) + payload


# --------------------------------------------------------------------------- peer


class Neighbour:
    """State of one connection, guarded by Peer.lock (except the socket I/O)."""

    def __init__(self, peer, peer_id, sock):
        self.peer = peer
        self.id = peer_id
        self.sock = sock
        self.queue = collections.deque()
        self.cond = threading.Condition(peer.lock)
        self.closed = False  # reader saw the end of the stream
        # What they have (our view, from bitfield and have).
        self.bits = bytearray(peer.n)
        self.count = 0
        self.first_message = True
        # Us towards them.
        self.am_choking = True
        self.am_interested = None  # None: nothing sent yet
        self.upload_pending = None  # piece queued for them, not yet handed to the kernel
        # Them towards us.
        self.they_choking = True
        self.they_interested = False
        self.last_interest_msg = None
        self.outstanding = None  # our one request on this connection
        self.requests_sent = collections.Counter()  # unanswered requests by piece
        self.bytes_down = 0  # piece bytes received during the current interval
        self.writer = threading.Thread(target=self._write_loop, name="writer-%d" % peer_id, daemon=True)
        self.reader = threading.Thread(target=self._read_loop, name="reader-%d" % peer_id, daemon=True)

    # -- sending (callers hold peer.lock) --

    def send(self, mtype, payload=b""):
        if self.peer.shutting_down and mtype != HAVE:
            return
        self.queue.append(("msg", message(mtype, payload)))
        self.cond.notify()

    def send_piece(self, index):
        self.queue.append(("piece", index))
        self.cond.notify()

    def finish(self):
        """Flush what is queued, then shut down the write side."""
        self.queue.append(("eof", None))
        self.cond.notify()

    def _write_loop(self):
        peer = self.peer
        try:
            while True:
                with peer.lock:
                    while not self.queue:
                        self.cond.wait()
                    kind, item = self.queue.popleft()
                    if kind == "piece" and self.upload_pending == item:
                        # Cleared before the bytes leave, so a request sent in answer
                        # to this piece is never mistaken for a pipelined one.
                        self.upload_pending = None
                if kind == "msg":
                    self.sock.sendall(item)
                elif kind == "piece":
                    length = peer.piece_len(item)
                    data = os.pread(peer.fd, length, item * peer.piece_size)
                    if len(data) != length:
                        raise OSError("short read of piece %d" % item)
                    data = peer.maybe_corrupt(self.id, item, data)
                    frame = message(PIECE, struct.pack(">I", item) + data)
                    if peer.stall_now():
                        cut = 9 + length // 2  # length, type, index, half the bytes
                        self.sock.sendall(frame[:cut])
                        diag("STALL piece=%d to=%d sent=%d of %d" % (item, self.id, cut, len(frame)))
                        threading.Event().wait()  # forever; the reader keeps reading
                    self.sock.sendall(frame)
                    peer.uploaded_one()
                else:
                    try:
                        self.sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
        except OSError as e:
            if not peer.shutting_down:
                diag("write to peer %d failed: %s" % (self.id, e))

    # -- receiving --

    def _read_loop(self):
        peer = self.peer
        try:
            while True:
                head = recv_exact(self.sock, 4)
                (length,) = struct.unpack(">I", head)
                if length == 0:
                    peer.violation(self.id, "zero-length message (no keep-alive exists in Part A)")
                if length > 5 + peer.piece_size:
                    peer.violation(self.id, "message length %d exceeds the largest possible message" % length)
                mtype = recv_exact(self.sock, 1)[0]
                payload = recv_exact(self.sock, length - 1) if length > 1 else b""
                with peer.lock:
                    peer.handle(self, mtype, payload)
        except Eof as e:
            with peer.lock:
                peer.on_eof(self, str(e))
        except OSError as e:
            with peer.lock:
                peer.on_eof(self, "read error: %s" % e)


class Peer:
    def __init__(self, me, workdir, reject_reserved, corrupt_fraction=0.0, corrupt_seed=None, stall_after=None):
        self.me = me
        self.workdir = workdir
        self.reject_reserved = reject_reserved
        # Hostile modes (see the module docstring); all off by default.
        self.corrupt_fraction = corrupt_fraction
        self.corrupt_seed = corrupt_seed
        self.stall_after = stall_after
        self.hostile = corrupt_fraction > 0 or stall_after is not None
        self.hostile_lock = threading.Lock()
        self.sends = collections.Counter()  # (peer, piece) -> times sent
        self.uploaded = 0  # whole pieces handed to the kernel
        common = parse_common(os.path.join(workdir, "Common.cfg"))
        self.peers = parse_peerinfo(os.path.join(workdir, "PeerInfo.cfg"))
        ids = [p.peer_id for p in self.peers]
        if me not in ids:
            raise ConfigError("peer %d is not listed in PeerInfo.cfg" % me)
        self.pos = ids.index(me)
        self.entry = self.peers[self.pos]
        self.earlier = self.peers[: self.pos]
        self.later_ids = set(ids[self.pos + 1 :])
        self.others = set(ids) - {me}
        self.k = common["NumberOfPreferredNeighbors"]
        self.p = common["UnchokingInterval"]
        self.m = common["OptimisticUnchokingInterval"]
        self.file_name = common["FileName"]
        self.file_size = common["FileSize"]
        self.piece_size = common["PieceSize"]
        self.n = (self.file_size + self.piece_size - 1) // self.piece_size
        self.bf_len = (self.n + 7) // 8

        self.lock = threading.RLock()
        self.done = threading.Event()
        self.shutting_down = False
        self.neighbours = {}  # id -> Neighbour (kept after the stream ends)
        self.rejected = collections.Counter()  # --reject-reserved refusals by claimed ID
        self.have = bytearray(self.n)
        self.count = 0
        self.requested = set()  # pieces with an outstanding request on some connection
        self.preferred = set()
        self.optimistic = None

        subdir = os.path.join(workdir, "peer_%d" % me)
        os.makedirs(subdir, exist_ok=True)
        path = os.path.join(subdir, self.file_name)
        if self.entry.has_file:
            try:
                self.fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise ConfigError("hasFile is 1 but %s cannot be opened: %s" % (path, e))
            size = os.fstat(self.fd).st_size
            if size != self.file_size:
                raise ConfigError("%s has %d bytes, Common.cfg says FileSize %d" % (path, size, self.file_size))
            self.have = bytearray(b"\x01" * self.n)
            self.count = self.n
        else:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            os.ftruncate(self.fd, self.file_size)
        self.log = EventLog(os.path.join(workdir, "log_peer_%d.log" % me), me)

    # -- helpers --

    def piece_len(self, index):
        if index == self.n - 1:
            return self.file_size - index * self.piece_size
        return self.piece_size

    def complete(self):
        return self.count == self.n

    # -- hostile modes --

    def maybe_corrupt(self, to, index, data):
        """--corrupt-fraction: returns `data`, or a copy with one byte flipped."""
        if self.corrupt_fraction <= 0:
            return data
        with self.hostile_lock:
            self.sends[(to, index)] += 1
            nth = self.sends[(to, index)]
        key = ("%d:%d:%d:%d" % (self.corrupt_seed, to, index, nth)).encode()
        h = hashlib.blake2b(key, digest_size=16).digest()
        if int.from_bytes(h[:8], "big") >= self.corrupt_fraction * 2.0**64:
            return data
        pos = int.from_bytes(h[8:14], "big") % len(data)
        flip = h[14] or 0xFF  # never zero: the byte really changes
        out = bytearray(data)
        out[pos] ^= flip
        diag("CORRUPT piece=%d to=%d byte=%d send=%d" % (index, to, pos, nth))
        return bytes(out)

    def stall_now(self):
        """--stall-mid-piece: true once the threshold of whole uploads is reached."""
        if self.stall_after is None:
            return False
        with self.hostile_lock:
            return self.uploaded >= self.stall_after

    def uploaded_one(self):
        with self.hostile_lock:
            self.uploaded += 1

    def violation(self, who, what):
        diag("VIOLATION by peer %s: %s" % (who, what))
        try:
            self.log.close()
        except Exception:
            pass
        os._exit(EXIT_VIOLATION)

    def bitfield_bytes(self):
        out = bytearray(self.bf_len)
        for i in range(self.n):
            if self.have[i]:
                out[i >> 3] |= 0x80 >> (i & 7)
        return bytes(out)

    # -- connections --

    def register(self, nb, connector):
        """Called with the handshake done; starts the connection's threads."""
        with self.lock:
            if nb.id in self.neighbours and self.hostile:
                self.replace(self.neighbours.pop(nb.id))
            if nb.id in self.neighbours:
                self.violation(nb.id, "a second connection from/to the same peer")
            self.neighbours[nb.id] = nb
            if connector:
                self.log.makes_connection(nb.id)
            else:
                self.log.connected_from(nb.id)
            # Always sent, all zero if we have nothing; always the first message.
            nb.send(BITFIELD, self.bitfield_bytes())
            nb.writer.start()
            nb.reader.start()

    def connect_to(self, entry):
        deadline = time.monotonic() + CONNECT_RETRY_SECS
        while True:
            try:
                sock = socket.create_connection((entry.host, entry.port), timeout=HANDSHAKE_TIMEOUT_SECS)
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    diag("cannot connect to peer %d at %s:%d: %s" % (entry.peer_id, entry.host, entry.port, e))
                    os._exit(EXIT_STARTUP)
                time.sleep(0.1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(handshake_bytes(self.me))
            reply = recv_exact(sock, HANDSHAKE_LEN)
        except (Eof, OSError) as e:
            self.violation(entry.peer_id, "closed or failed during the handshake with a zero-reserved connector: %s" % e)
        if reply[:18] != HEADER:
            self.violation(entry.peer_id, "handshake header is %r, not %r" % (reply[:18], HEADER))
        if reply[18:28] != ZERO_RESERVED:
            self.violation(
                entry.peer_id,
                "acceptor answered our zero-reserved handshake with reserved bytes %s" % reply[18:28].hex(),
            )
        (pid,) = struct.unpack(">I", reply[28:32])
        if pid != entry.peer_id:
            self.violation(entry.peer_id, "handshake from %s:%d carries ID %d" % (entry.host, entry.port, pid))
        sock.settimeout(None)
        self.register(Neighbour(self, pid, sock), connector=True)

    def accept_loop(self, listener):
        while True:
            try:
                sock, addr = listener.accept()
            except OSError:
                return
            threading.Thread(target=self.accept_one, args=(sock, addr), daemon=True).start()

    def accept_one(self, sock, addr):
        sock.settimeout(HANDSHAKE_TIMEOUT_SECS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            hs = recv_exact(sock, HANDSHAKE_LEN)
        except (Eof, OSError) as e:
            diag("connection from %s closed before its handshake: %s" % (addr, e))
            sock.close()
            return
        if hs[:18] != HEADER:
            self.violation(addr, "handshake header is %r, not %r" % (hs[:18], HEADER))
        (pid,) = struct.unpack(">I", hs[28:32])
        if hs[18:28] != ZERO_RESERVED:
            if self.reject_reserved:
                with self.lock:
                    self.rejected[pid] += 1
                    times = self.rejected[pid]
                if times > 1:
                    self.violation(pid, "connected again with non-zero reserved bytes after being refused once")
                diag("refusing peer %d: non-zero reserved bytes %s" % (pid, hs[18:28].hex()))
                sock.close()
                return
            diag("peer %d advertises reserved bytes %s; answering as a plain peer" % (pid, hs[18:28].hex()))
        with self.lock:
            if self.shutting_down:
                # We are leaving: a neighbour that saw our end of stream before it
                # knew the swarm was complete may try to reconnect. Nothing to share.
                diag("peer %d connected while we are exiting; closed" % pid)
                sock.close()
                return
            if pid not in self.later_ids:
                self.violation(pid, "connected to us but is not listed after us in PeerInfo.cfg")
            if pid in self.neighbours and not self.hostile:
                self.violation(pid, "connected twice")
            try:
                sock.sendall(handshake_bytes(self.me))
            except OSError as e:
                self.violation(pid, "closed the connection right after its handshake: %s" % e)
            sock.settimeout(None)
            self.register(Neighbour(self, pid, sock), connector=False)

    # -- message handling (peer.lock held) --

    def handle(self, nb, mtype, payload):
        name = TYPE_NAMES.get(mtype)
        if name is None:
            self.violation(nb.id, "unknown message type %d (length %d)" % (mtype, len(payload) + 1))
        first = nb.first_message
        nb.first_message = False
        if first and mtype != BITFIELD:
            self.violation(nb.id, "first message is %s, not bitfield" % name)
        if not first and mtype == BITFIELD:
            self.violation(nb.id, "bitfield sent after the first message")
        expect = {CHOKE: 0, UNCHOKE: 0, INTERESTED: 0, NOT_INTERESTED: 0, HAVE: 4, REQUEST: 4, BITFIELD: self.bf_len}
        if mtype in expect and len(payload) != expect[mtype]:
            self.violation(nb.id, "%s payload has %d bytes, expected %d" % (name, len(payload), expect[mtype]))
        if mtype in (HAVE, REQUEST, PIECE):
            if len(payload) < 4:
                self.violation(nb.id, "%s payload of %d bytes has no piece index" % (name, len(payload)))
            (index,) = struct.unpack(">I", payload[:4])
            if index >= self.n:
                self.violation(nb.id, "%s for piece %d, but there are %d pieces" % (name, index, self.n))
        if mtype == BITFIELD:
            self.on_bitfield(nb, payload)
        elif mtype == CHOKE:
            self.on_choke(nb)
        elif mtype == UNCHOKE:
            self.on_unchoke(nb)
        elif mtype == INTERESTED:
            self.on_interested(nb)
        elif mtype == NOT_INTERESTED:
            self.on_not_interested(nb)
        elif mtype == HAVE:
            self.on_have(nb, index)
        elif mtype == REQUEST:
            self.on_request(nb, index)
        else:
            self.on_piece(nb, index, payload[4:])

    def on_bitfield(self, nb, payload):
        for i in range(self.n):
            if payload[i >> 3] & (0x80 >> (i & 7)):
                nb.bits[i] = 1
                nb.count += 1
        spare = self.bf_len * 8 - self.n
        if spare and payload[-1] & ((1 << spare) - 1):
            self.violation(nb.id, "bitfield spare bits are not zero (last byte %#04x)" % payload[-1])
        self.update_interest(nb)
        self.try_request(nb)
        self.check_done()

    def on_choke(self, nb):
        if nb.they_choking:
            self.violation(nb.id, "choke while we were already choked by it")
        nb.they_choking = True
        self.log.choked_by(nb.id)
        if nb.outstanding is not None:
            # Unanswered: the piece becomes requestable again, from anyone.
            self.requested.discard(nb.outstanding)
            nb.outstanding = None
            self.request_everywhere()

    def on_unchoke(self, nb):
        if not nb.they_choking:
            self.violation(nb.id, "unchoke while we were already unchoked by it")
        nb.they_choking = False
        self.log.unchoked_by(nb.id)
        self.try_request(nb)

    def on_interested(self, nb):
        if nb.last_interest_msg is True:
            self.violation(nb.id, "'interested' twice in a row")
        nb.last_interest_msg = True
        # Our view of their bitfield is what they had when they sent this, and our
        # pieces only grow, so an honest 'interested' implies this holds.
        if not any(self.have[i] and not nb.bits[i] for i in range(self.n)):
            self.violation(nb.id, "'interested' although we have no piece it lacks")
        nb.they_interested = True
        self.log.got_interested(nb.id)

    def on_not_interested(self, nb):
        if nb.last_interest_msg is False:
            self.violation(nb.id, "'not interested' twice in a row")
        nb.last_interest_msg = False
        nb.they_interested = False
        self.log.got_not_interested(nb.id)

    def on_have(self, nb, index):
        if nb.bits[index]:
            self.violation(nb.id, "'have' for piece %d, which it already announced" % index)
        nb.bits[index] = 1
        nb.count += 1
        self.log.got_have(nb.id, index)
        self.update_interest(nb)
        self.try_request(nb)
        self.check_done()

    def on_request(self, nb, index):
        if not self.have[index]:
            self.violation(nb.id, "request for piece %d, which we never announced" % index)
        if nb.bits[index]:
            self.violation(nb.id, "request for piece %d, which it already has" % index)
        if nb.am_choking:
            # It may have sent this before our choke arrived: left unanswered.
            return
        if nb.upload_pending is not None:
            self.violation(
                nb.id,
                "request for piece %d while its request for piece %d is unanswered "
                "(more than one outstanding request towards a plain peer)" % (index, nb.upload_pending),
            )
        if self.shutting_down:
            return
        nb.upload_pending = index
        nb.send_piece(index)

    def on_piece(self, nb, index, data):
        if len(data) != self.piece_len(index):
            self.violation(nb.id, "piece %d has %d bytes, expected %d" % (index, len(data), self.piece_len(index)))
        if nb.requests_sent[index] == 0:
            self.violation(nb.id, "piece %d that we did not request from it" % index)
        nb.requests_sent[index] -= 1
        nb.bytes_down += len(data)
        if nb.outstanding == index:
            nb.outstanding = None
        self.requested.discard(index)
        if self.have[index]:
            diag("piece %d from peer %d arrived twice; ignored" % (index, nb.id))
        else:
            os.pwrite(self.fd, data, index * self.piece_size)
            self.have[index] = 1
            self.count += 1
            self.log.downloaded(index, nb.id, self.count)
            for other in self.neighbours.values():
                if not other.closed:
                    other.send(HAVE, struct.pack(">I", index))
            for other in self.neighbours.values():
                if not other.closed:
                    self.update_interest(other)
            if self.complete():
                os.fsync(self.fd)
                self.log.complete()
        self.try_request(nb)
        self.check_done()

    def replace(self, old):
        """Hostile modes: a peer connected again; forget its old connection."""
        diag("peer %d connected again; replacing its old connection" % old.id)
        old.closed = True
        if old.outstanding is not None:
            self.requested.discard(old.outstanding)
            old.outstanding = None
        try:
            old.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def on_eof(self, nb, why):
        nb.closed = True
        if self.shutting_down:
            return
        if self.hostile:
            # Being dropped is what a hostile peer expects.
            diag("peer %d closed the connection: %s" % (nb.id, why))
            if nb.outstanding is not None:
                self.requested.discard(nb.outstanding)
                nb.outstanding = None
                self.request_everywhere()
            if self.neighbours.get(nb.id) is nb:
                self.check_done()
            return
        if nb.count == self.n and self.complete():
            # It knows everyone is complete (we told it we are): a normal exit.
            diag("peer %d closed the connection (done): %s" % (nb.id, why))
            self.check_done()
            return
        self.violation(
            nb.id,
            "closed the connection while the swarm is incomplete "
            "(it has %d/%d pieces, we have %d/%d): %s" % (nb.count, self.n, self.count, self.n, why),
        )

    # -- decisions (peer.lock held) --

    def update_interest(self, nb):
        want = any(nb.bits[i] and not self.have[i] for i in range(self.n))
        if nb.am_interested is not want:
            nb.am_interested = want
            nb.send(INTERESTED if want else NOT_INTERESTED)

    def try_request(self, nb):
        if self.shutting_down or nb.closed or nb.they_choking or nb.outstanding is not None:
            return
        wanted = [i for i in range(self.n) if nb.bits[i] and not self.have[i] and i not in self.requested]
        if not wanted:
            return
        index = random.choice(wanted)
        nb.outstanding = index
        nb.requests_sent[index] += 1
        self.requested.add(index)
        nb.send(REQUEST, struct.pack(">I", index))

    def request_everywhere(self):
        for nb in self.neighbours.values():
            self.try_request(nb)

    def check_done(self):
        if not self.complete():
            return
        for pid in self.others:
            nb = self.neighbours.get(pid)
            if nb is None or nb.count != self.n:
                return
        self.done.set()

    def choose_preferred(self):
        with self.lock:
            if self.shutting_down:
                return
            live = [nb for nb in self.neighbours.values() if not nb.closed]
            candidates = [nb for nb in live if nb.they_interested]
            random.shuffle(candidates)  # ties broken at random
            if not self.complete():
                candidates.sort(key=lambda nb: nb.bytes_down, reverse=True)
            picked = {nb.id for nb in candidates[: self.k]}
            for nb in live:
                nb.bytes_down = 0
            for pid in picked:
                nb = self.neighbours[pid]
                if nb.am_choking:
                    nb.am_choking = False
                    nb.send(UNCHOKE)
            for pid in self.preferred - picked:
                nb = self.neighbours[pid]
                if pid != self.optimistic and not nb.am_choking and not nb.closed:
                    nb.am_choking = True
                    nb.upload_pending = None
                    nb.send(CHOKE)
            changed = picked != self.preferred
            self.preferred = picked
            if changed and picked:
                self.log.preferred(sorted(picked))

    def choose_optimistic(self):
        with self.lock:
            if self.shutting_down:
                return
            live = [nb for nb in self.neighbours.values() if not nb.closed]
            candidates = [nb for nb in live if nb.they_interested and nb.am_choking]
            if not candidates:
                return
            new = random.choice(candidates)
            old = self.optimistic
            self.optimistic = new.id
            new.am_choking = False
            new.send(UNCHOKE)
            if old is not None and old not in self.preferred:
                nb = self.neighbours[old]
                if not nb.am_choking and not nb.closed:
                    nb.am_choking = True
                    nb.upload_pending = None
                    nb.send(CHOKE)
            self.log.optimistic(new.id)

    def timer_loop(self):
        now = time.monotonic()
        next_pref = now + self.p
        next_opt = now + self.m
        while not self.done.is_set():
            now = time.monotonic()
            if now >= next_pref:
                self.choose_preferred()
                next_pref += self.p
            if now >= next_opt:
                self.choose_optimistic()
                next_opt += self.m
            self.done.wait(max(0.0, min(next_pref, next_opt) - time.monotonic()))

    # -- main --

    def run(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("", self.entry.port))
        except OSError as e:
            diag("cannot listen on port %d: %s" % (self.entry.port, e))
            return EXIT_STARTUP
        listener.listen(64)
        threading.Thread(target=self.accept_loop, args=(listener,), daemon=True).start()
        for entry in self.earlier:
            threading.Thread(target=self.connect_to, args=(entry,), daemon=True).start()
        threading.Thread(target=self.timer_loop, daemon=True).start()
        with self.lock:
            self.check_done()  # a swarm of one
        self.done.wait()

        with self.lock:
            self.shutting_down = True
            # shutdown() wakes the thread blocked in accept(); close() alone does not.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
            live = [nb for nb in self.neighbours.values() if not nb.closed]
            for nb in live:
                nb.finish()
        # Let the last 'have' messages leave, then read until the others close too,
        # so that closing never resets a connection with data still in flight.
        deadline = time.monotonic() + DRAIN_SECS
        for nb in live:
            nb.writer.join(max(0.0, deadline - time.monotonic()))
        for nb in live:
            nb.reader.join(max(0.0, deadline - time.monotonic()))
        for nb in self.neighbours.values():
            try:
                nb.sock.close()
            except OSError:
                pass
        os.close(self.fd)
        self.log.close()
        diag("peer %d: every peer has the complete file; exiting" % self.me)
        return 0


def main(argv):
    ap = argparse.ArgumentParser(description="Independent SPEC Part A peer (interop test instrument)")
    ap.add_argument("peer_id", type=int)
    ap.add_argument("--dir", default=".")
    ap.add_argument("--reject-reserved", action="store_true")
    ap.add_argument("--corrupt-fraction", type=float, default=0.0, metavar="F",
                    help="flip one byte in this fraction of uploaded pieces (hostile)")
    ap.add_argument("--corrupt-seed", type=int, default=None, metavar="N",
                    help="seed deciding which uploads are corrupted [random]")
    ap.add_argument("--stall-mid-piece", type=int, nargs="?", const=5, default=None, metavar="N",
                    help="after N uploaded pieces [5], send half a piece and stop writing (hostile)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.corrupt_fraction <= 1.0:
        ap.error("--corrupt-fraction must be between 0 and 1")
    if args.stall_mid_piece is not None and args.stall_mid_piece < 0:
        ap.error("--stall-mid-piece must be at least 0")
    if args.corrupt_fraction > 0:
        if args.corrupt_seed is None:
            args.corrupt_seed = random.randrange(1 << 32)
        diag("hostile: corrupting a fraction %g of uploads, seed %d" % (args.corrupt_fraction, args.corrupt_seed))
    if args.stall_mid_piece is not None:
        diag("hostile: stalling mid-piece after %d uploaded pieces" % args.stall_mid_piece)
    try:
        peer = Peer(
            args.peer_id,
            args.dir,
            args.reject_reserved,
            corrupt_fraction=args.corrupt_fraction,
            corrupt_seed=args.corrupt_seed,
            stall_after=args.stall_mid_piece,
        )
    except ConfigError as e:
        diag("error: %s" % e)
        return EXIT_STARTUP
    code = peer.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
