//! p2pshare: peer-to-peer file distribution compatible with the classic
//! `peerProcess` protocol (see `SPEC.md`).
//!
//! Pure protocol logic (no sockets, no clocks): [`config`], [`bitfield`],
//! [`handshake`], [`message`], [`choke`], [`picker`], [`pipeline`] depth, [`upload`]
//! order, [`eventlog`] formatting.
//! I/O at the edges: [`storage`] (the file), [`connection`] (one TCP link),
//! [`swarm`] (the actor owning a peer's state), [`peer`] (one process start to
//! exit), [`local`] (a whole swarm on one machine), [`cli`].

pub mod bitfield;
pub mod blocks;
pub mod choke;
pub mod cli;
pub mod config;
pub mod connection;
pub mod eventlog;
pub mod handshake;
pub mod local;
pub mod manifest;
pub mod message;
pub mod peer;
pub mod picker;
pub mod pipeline;
pub mod ratelimit;
pub mod storage;
pub mod swarm;
pub mod upload;
