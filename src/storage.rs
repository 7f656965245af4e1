//! The shared file on disk: pieces read and written at their offsets, never the whole
//! file in memory.
//!
//! Positional I/O (`pread`/`pwrite`) needs no seek state, so one `Storage` is shared by
//! every blocking task that reads or writes a piece, without a lock.

use crate::config::Common;
use bytes::{Bytes, BytesMut};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: is {actual} bytes but Common.cfg says FileSize {expected}")]
    WrongSize {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("{path}: not found, but PeerInfo.cfg says this peer starts with the file")]
    Missing { path: PathBuf },
}

#[derive(Debug)]
pub struct Storage {
    file: File,
    path: PathBuf,
    common: Common,
}

impl Storage {
    /// Opens the complete file of a peer that starts with it, checking its size.
    pub fn open_seed(path: &Path, common: &Common) -> Result<Storage, StorageError> {
        let file = match OpenOptions::new().read(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::Missing {
                    path: path.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(StorageError::Io {
                    path: path.to_path_buf(),
                    what: "cannot open",
                    source,
                })
            }
        };
        let actual = file
            .metadata()
            .map_err(|source| StorageError::Io {
                path: path.to_path_buf(),
                what: "cannot stat",
                source,
            })?
            .len();
        if actual != common.file_size {
            return Err(StorageError::WrongSize {
                path: path.to_path_buf(),
                actual,
                expected: common.file_size,
            });
        }
        Ok(Storage {
            file,
            path: path.to_path_buf(),
            common: common.clone(),
        })
    }

    /// Creates (or reuses) the file a downloader fills, sized to FileSize so that every
    /// piece can be written at its offset in any order.
    pub fn create(path: &Path, common: &Common) -> Result<Storage, StorageError> {
        let io = |what: &'static str| {
            move |source| StorageError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create directory"))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("cannot open for writing"))?;
        let existing = file.metadata().map_err(io("cannot stat"))?.len();
        if existing != common.file_size {
            file.set_len(common.file_size)
                .map_err(io("cannot size the file"))?;
        }
        preallocate(&file, common.file_size).map_err(io("cannot reserve disk space"))?;
        Ok(Storage {
            file,
            path: path.to_path_buf(),
            common: common.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read_piece(&self, index: u32) -> Result<Bytes, StorageError> {
        self.read_at(
            self.common.piece_offset(index),
            self.common.piece_len(index),
        )
    }

    pub fn write_piece(&self, index: u32, data: &[u8]) -> Result<(), StorageError> {
        self.write_at(self.common.piece_offset(index), data)
    }

    /// `len` bytes at `offset`: a piece, or a block (see `blocks.rs`).
    pub fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, StorageError> {
        let mut buf = BytesMut::zeroed(len as usize);
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| self.read_error(source))?;
        Ok(buf.freeze())
    }

    /// Sends up to `len` bytes of the file from `offset` to the socket `out` with
    /// `sendfile(2)`: the kernel hands page-cache pages to the socket, so upload data
    /// never passes through our memory (a `pread` and a `write` copied it twice, after
    /// zeroing the buffer). Returns the bytes sent, 0 at the end of the file;
    /// `WouldBlock` when the non-blocking socket is full.
    #[cfg(target_os = "linux")]
    pub fn send_to(
        &self,
        out: std::os::fd::RawFd,
        offset: u64,
        len: usize,
    ) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let mut off = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: both descriptors are open for the call (the file by `self`, the
        // socket by the caller's borrow), and `off` is a valid, exclusive pointer.
        let n = unsafe { libc::sendfile(out, self.file.as_raw_fd(), &mut off, len) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Elsewhere uploads are read (see `Swarm::pump_uploads`); this is never called.
    #[cfg(not(target_os = "linux"))]
    pub fn send_to(
        &self,
        _out: std::os::fd::RawFd,
        _offset: u64,
        _len: usize,
    ) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    /// A read of file data that failed, as the error a `pread` would have given.
    pub fn read_error(&self, source: std::io::Error) -> StorageError {
        StorageError::Io {
            path: self.path.clone(),
            what: "cannot read file data",
            source,
        }
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.file
            .write_all_at(data, offset)
            .map_err(|source| StorageError::Io {
                path: self.path.clone(),
                what: "cannot write file data",
                source,
            })
    }

    /// Pieces of the file on disk whose hash matches the manifest: what a restarted
    /// peer keeps. A piece torn by a crash mid-write fails its hash and is fetched again.
    pub fn verified_pieces(
        &self,
        manifest: &crate::manifest::Manifest,
    ) -> Result<crate::bitfield::Bitfield, StorageError> {
        let n = self.common.num_pieces();
        let mut have = crate::bitfield::Bitfield::new(n);
        for i in 0..n {
            if manifest.verify(i, &self.read_piece(i)?) {
                have.set(i);
            }
        }
        Ok(have)
    }

    /// BLAKE3 of the whole file, streamed.
    pub fn file_hash(&self) -> Result<crate::manifest::Hash, StorageError> {
        let mut h = blake3::Hasher::new();
        for i in 0..self.common.num_pieces() {
            h.update(&self.read_piece(i)?);
        }
        Ok(*h.finalize().as_bytes())
    }

    /// Flushes the file and compares its BLAKE3 with `expected` (when there is a
    /// manifest): the last line of defence against a disk that changed what we wrote.
    pub fn check_whole_file(&self, expected: Option<&crate::manifest::Hash>) -> Result<(), String> {
        self.sync().map_err(|e| e.to_string())?;
        let Some(want) = expected else {
            return Ok(());
        };
        let got = self.file_hash().map_err(|e| e.to_string())?;
        if &got == want {
            Ok(())
        } else {
            Err(format!(
                "{}: BLAKE3 {} differs from the manifest's {}",
                self.path.display(),
                crate::manifest::hex(&got),
                crate::manifest::hex(want)
            ))
        }
    }

    pub fn sync(&self) -> Result<(), StorageError> {
        self.file.sync_data().map_err(|source| StorageError::Io {
            path: self.path.clone(),
            what: "cannot flush to disk",
            source,
        })
    }
}

/// Reserves the file's blocks up front so a full disk is reported at start, naming the
/// file, rather than as a failed write halfway through the download.
fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: plain syscall on a valid, owned file descriptor.
        let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
        // Filesystems without fallocate support (EOPNOTSUPP/EINVAL) fall back to sparse.
        if r != 0 && r != libc::EOPNOTSUPP && r != libc::EINVAL {
            return Err(std::io::Error::from_raw_os_error(r));
        }
    }
    let _ = (file, len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(size: u64, piece: u32) -> Common {
        Common {
            preferred_neighbors: 1,
            unchoking_interval: 1,
            optimistic_unchoking_interval: 1,
            file_name: "f".into(),
            file_size: size,
            piece_size: piece,
        }
    }

    #[test]
    fn writes_and_reads_pieces_at_offsets_including_the_short_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let c = common(10, 4);
        let s = Storage::create(&dir.path().join("sub/f"), &c).unwrap();
        s.write_piece(2, b"ij").unwrap();
        s.write_piece(0, b"abcd").unwrap();
        s.write_piece(1, b"efgh").unwrap();
        assert_eq!(&s.read_piece(2).unwrap()[..], b"ij");
        assert_eq!(
            std::fs::read(dir.path().join("sub/f")).unwrap(),
            b"abcdefghij"
        );
        let seed = Storage::open_seed(&dir.path().join("sub/f"), &c).unwrap();
        assert_eq!(&seed.read_piece(1).unwrap()[..], b"efgh");
    }

    #[test]
    fn the_whole_file_check_compares_with_the_manifest_digest_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = common(10, 4);
        let path = dir.path().join("f");
        let s = Storage::create(&path, &c).unwrap();
        for (i, p) in [&b"abcd"[..], b"efgh", b"ij"].iter().enumerate() {
            s.write_piece(i as u32, p).unwrap();
        }
        let right = *blake3::hash(b"abcdefghij").as_bytes();
        assert_eq!(s.check_whole_file(Some(&right)), Ok(()));
        assert_eq!(s.check_whole_file(None), Ok(()));
        // The disk changed a byte after it was written and verified.
        s.write_piece(1, b"efgX").unwrap();
        let e = s.check_whole_file(Some(&right)).unwrap_err();
        assert!(e.contains("differs from the manifest's"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn seed_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = Storage::open_seed(&dir.path().join("nope"), &common(10, 4)).unwrap_err();
        assert!(matches!(e, StorageError::Missing { .. }));
        assert!(e.to_string().contains("nope"));
        std::fs::write(dir.path().join("short"), b"abc").unwrap();
        let e = Storage::open_seed(&dir.path().join("short"), &common(10, 4)).unwrap_err();
        assert!(e.to_string().contains("is 3 bytes"), "{e}");
    }
}
