//! Upload pacing: a process-wide byte rate shared by every connection's writer.
//!
//! Each writer reserves the time slot its piece occupies at the configured rate and
//! sleeps until that slot starts, so the total stays at the rate however many
//! connections there are. Only piece data is paced; control messages are tiny.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    next_free: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            bytes_per_sec: bytes_per_sec.max(1),
            next_free: Mutex::new(None),
        }
    }

    /// Reserves `bytes` at the rate and returns when the caller may send them.
    pub async fn acquire(&self, bytes: usize) {
        let start = {
            let now = Instant::now();
            // A poisoned lock only means another writer panicked mid-update; the
            // stored instant is still a valid instant.
            let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let start = next.map_or(now, |n| n.max(now));
            let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            *next = Some(start + cost);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate_across_callers() {
        let rl = std::sync::Arc::new(RateLimiter::new(1000));
        let t0 = Instant::now();
        rl.acquire(500).await; // first slot starts at once
        assert_eq!(t0.elapsed(), Duration::ZERO);
        let a = {
            let rl = rl.clone();
            tokio::spawn(async move { rl.acquire(1000).await })
        };
        let b = {
            let rl = rl.clone();
            tokio::spawn(async move { rl.acquire(1000).await })
        };
        a.await.unwrap();
        b.await.unwrap();
        // 500 + 1000 bytes reserved before the last slot: it starts at 1.5 s.
        assert_eq!(t0.elapsed(), Duration::from_millis(1500));
    }
}
