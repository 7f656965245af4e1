//! `p2pshare local [DIR]`: a whole swarm on this machine, one process per peer.
//!
//! Starts every peer of DIR's PeerInfo.cfg in file order (each as `p2pshare peer <ID>`
//! with its stderr in `DIR/stderr_peer_<ID>.log`), shows each peer's progress read from
//! its event log, and at the end checks every copy against the seeder's. With no DIR it
//! first writes an example swarm (random file, free ports) into a new temporary
//! directory, which is kept so its logs can be read afterwards.

use crate::config::{Config, PeerInfo};
use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rand::{RngCore, SeedableRng};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Options of `p2pshare local`.
#[derive(clap::Args, Debug, Clone)]
pub struct LocalArgs {
    /// Directory with Common.cfg, PeerInfo.cfg and the seeders' peer_<ID>/ files.
    /// Omitted: generate an example swarm in a new temporary directory.
    pub dir: Option<PathBuf>,

    /// Example swarm only: number of downloading peers (besides 1 seeder).
    #[arg(long, default_value_t = 5)]
    pub peers: u32,

    /// Example swarm only: file size in bytes.
    #[arg(long, default_value_t = 32 * 1024 * 1024 + 12_345)]
    pub size: u64,

    /// Example swarm only: piece size in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub piece_size: u32,

    /// Run every peer with --strict (SPEC Part A to the letter).
    #[arg(long)]
    pub strict: bool,

    /// Milliseconds between starting one peer and the next.
    #[arg(long, default_value_t = 200)]
    pub stagger_ms: u64,

    /// Extra arguments passed to every peer (e.g. --peer-arg=--pipeline-depth=16).
    #[arg(long = "peer-arg", allow_hyphen_values = true)]
    pub peer_args: Vec<String>,
}

/// Writes an example swarm into `dir`: one seeder with a random file and its
/// manifest, `downloaders` peers without, all on free loopback ports.
pub fn write_example(dir: &Path, downloaders: u32, size: u64, piece_size: u32) -> Result<()> {
    let name = "example.bin";
    std::fs::write(
        dir.join("Common.cfg"),
        format!(
            "NumberOfPreferredNeighbors 2\nUnchokingInterval 1\nOptimisticUnchokingInterval 2\nFileName {name}\nFileSize {size}\nPieceSize {piece_size}\n"
        ),
    )?;
    let mut peers = String::new();
    for i in 0..=downloaders {
        let port = free_port()?;
        peers.push_str(&format!(
            "{} localhost {port} {}\n",
            1001 + i,
            u8::from(i == 0)
        ));
    }
    std::fs::write(dir.join("PeerInfo.cfg"), peers)?;
    let seed_dir = dir.join("peer_1001");
    std::fs::create_dir_all(&seed_dir)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(seed_dir.join(name))?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(size);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    drop(f);
    let config = Config::load(dir)?;
    let m = crate::manifest::Manifest::build(&seed_dir.join(name), &config.common)?;
    std::fs::write(
        crate::manifest::path_for(dir, &config.common.file_name),
        m.render(),
    )?;
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// BLAKE3 of a whole file, streamed (the same digest as a manifest's `file-blake3`).
pub fn blake3_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::manifest::hex(h.finalize().as_bytes()))
}

/// Reads the highest "Now the number of pieces it has is N" from a log, incrementally.
struct LogTail {
    path: PathBuf,
    offset: u64,
    pieces: u64,
    complete: bool,
}

impl LogTail {
    fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        use std::io::Seek;
        if f.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut text = String::new();
        if f.read_to_string(&mut text).is_err() {
            return;
        }
        // Only consume whole lines; a partial last line is read again next time.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        for line in text[..whole].lines() {
            if let Some(n) = line
                .rsplit("it has is ")
                .next()
                .filter(|_| line.contains("it has is "))
            {
                if let Ok(n) = n.trim_end_matches('.').parse::<u64>() {
                    self.pieces = self.pieces.max(n);
                }
            }
            if line.ends_with("has downloaded the complete file.") {
                self.complete = true;
            }
        }
        self.offset += whole as u64;
    }
}

pub async fn run(args: LocalArgs) -> Result<bool> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            let d = tempfile::Builder::new()
                .prefix("p2pshare-local-")
                .tempdir()?
                .keep();
            write_example(&d, args.peers, args.size, args.piece_size)?;
            println!(
                "example swarm in {}: 1 seeder + {} peers, {} bytes",
                d.display(),
                args.peers,
                args.size
            );
            d
        }
    };
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("{}", dir.display()))?;
    let config = Config::load(&dir)?;
    let Some(seeder) = config.peers.peers.iter().find(|p| p.has_file) else {
        bail!(
            "{}: no peer has hasFile 1",
            dir.join("PeerInfo.cfg").display()
        );
    };
    let seed_path = dir
        .join(format!("peer_{}", seeder.id))
        .join(&config.common.file_name);
    let expected = blake3_file(&seed_path)
        .with_context(|| format!("hashing the seeder's copy {}", seed_path.display()))?;
    let exe = std::env::current_exe().context("locating the p2pshare binary")?;
    let pieces = config.common.num_pieces() as u64;

    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} pieces {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    // Listen for Ctrl+C / SIGTERM before the first peer starts, so an early signal
    // stops the peers instead of killing only this launcher.
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let started = Instant::now();
    let mut running: Vec<(PeerInfo, Child, ProgressBar, LogTail)> = Vec::new();
    let mut interrupted_early = false;
    for p in &config.peers.peers {
        let log_path = dir.join(format!("log_peer_{}.log", p.id));
        let offset = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let stderr = std::fs::File::create(dir.join(format!("stderr_peer_{}.log", p.id)))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("peer")
            .arg(p.id.to_string())
            .arg("--dir")
            .arg(&dir)
            .args(args.strict.then_some("--strict"))
            .args(&args.peer_args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting peer {}", p.id))?;
        let bar = multi.add(ProgressBar::new(pieces));
        bar.set_style(style.clone());
        bar.set_prefix(format!("peer {}", p.id));
        if p.has_file {
            bar.set_position(pieces);
            bar.set_message("seeder");
        }
        running.push((
            p.clone(),
            child,
            bar,
            LogTail {
                path: log_path,
                offset,
                pieces: if p.has_file { pieces } else { 0 },
                complete: p.has_file,
            },
        ));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(args.stagger_ms)) => {}
            _ = sigint.recv() => interrupted_early = true,
            _ = sigterm.recv() => interrupted_early = true,
        }
        if interrupted_early {
            break;
        }
    }

    let mut statuses: Vec<Option<std::process::ExitStatus>> = vec![None; running.len()];
    let interrupted = interrupted_early
        || loop {
            for (i, (_, child, bar, tail)) in running.iter_mut().enumerate() {
                tail.poll();
                bar.set_position(tail.pieces);
                if statuses[i].is_none() {
                    if let Ok(Some(st)) = child.try_wait() {
                        statuses[i] = Some(st);
                        bar.set_message(if st.success() {
                            "exited ok".to_string()
                        } else {
                            format!("FAILED ({st})")
                        });
                        bar.finish();
                    } else if tail.complete {
                        bar.set_message("complete, seeding");
                    }
                }
            }
            if statuses.iter().all(Option::is_some) {
                break false;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = sigint.recv() => break true,
                _ = sigterm.recv() => break true,
            }
        };
    if interrupted {
        multi.println("interrupted: stopping every peer").ok();
        for (i, (_, child, _, _)) in running.iter_mut().enumerate() {
            if statuses[i].is_none() {
                let _ = child.start_kill();
                statuses[i] = child.wait().await.ok();
            }
        }
    }
    let elapsed = started.elapsed();
    drop(multi);

    println!();
    println!(
        "{} in {:.1} s ({} peers, {} bytes, {} pieces)",
        if interrupted { "stopped" } else { "finished" },
        elapsed.as_secs_f64(),
        running.len(),
        config.common.file_size,
        pieces
    );
    let mut all_ok = !interrupted;
    for (i, (p, _, _, tail)) in running.iter().enumerate() {
        let copy = dir
            .join(format!("peer_{}", p.id))
            .join(&config.common.file_name);
        let verdict = match blake3_file(&copy) {
            Ok(h) if h == expected => "copy matches the seeder's".to_string(),
            Ok(_) if interrupted => format!("incomplete: {}/{pieces} pieces", tail.pieces),
            Ok(_) => "copy DIFFERS from the seeder's".to_string(),
            Err(e) => format!("no copy: {e}"),
        };
        let status = match statuses[i] {
            Some(s) if s.success() => "exit 0".to_string(),
            Some(s) => format!("{s}"),
            None => "not stopped".to_string(),
        };
        let ok = verdict.starts_with("copy matches") && status == "exit 0";
        all_ok &= ok;
        println!(
            "  peer {:>6}: {status:<12} {verdict}{}",
            p.id,
            if ok { "" } else { "  <-- problem" }
        );
    }
    println!("blake3 {expected}");
    if interrupted {
        let manifest = crate::manifest::path_for(&dir, &config.common.file_name);
        if manifest.exists() {
            println!(
                "run `p2pshare local {}` again to resume: verified pieces are kept",
                dir.display()
            );
        }
    }
    println!(
        "logs: {}/log_peer_<ID>.log (events), {}/stderr_peer_<ID>.log (diagnostics)",
        dir.display(),
        dir.display()
    );
    Ok(all_ok)
}
