//! How long a client connection lives: until it ends, until the worker drains, or until it
//! has been idle too long.
//!
//! hyper bounds the HTTP/1 states itself (`header_read_timeout` covers a request head and the
//! wait for the next one), but not the HTTP/2 ones: a client can stop half-way through the
//! connection preface, open a connection (plain or TLS) and never send a request, or keep a
//! connection with no stream open forever, answering PINGs. Each holds a connection slot
//! and a socket. So every connection is watched here, from outside the protocol:
//!
//! - **first request**: a connection that has not started a request within
//!   `limits.header_read_timeout` of being accepted (preface, TLS, or an HTTP/2 session that
//!   never opens a stream) is dropped;
//! - **idle**: a connection with no request in flight for `limits.http2_idle_timeout` is
//!   closed gracefully (a GOAWAY for HTTP/2, so the client reconnects without losing a
//!   call), and dropped if it has not closed `header_read_timeout` later;
//! - **drain**: when the worker drains, every connection is told to finish (GOAWAY, or
//!   `Connection: close` on the next answer) and the worker waits, up to its grace period,
//!   for them to end.
//!
//! A request counts as in flight from the moment the pipeline starts it until its answer has
//! been sent or abandoned (the request record holds a permit on the connection's count), so
//! a long download or an SSE stream is never idle. The watch wakes a few times per period
//! (a quarter of the shorter timeout), so a connection closes between one period and a
//! quarter more after it went quiet.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::spec::LimitsSpec;
use crate::state::ConnInfo;

/// The worker's drain signal, and the count of connections it waits for.
#[derive(Debug)]
pub(super) struct Drain {
    tx: watch::Sender<()>,
}

impl Drain {
    pub fn new() -> Drain {
        Drain {
            tx: watch::channel(()).0,
        }
    }

    /// A connection's side: changes when the drain begins; the drain waits until every
    /// one is dropped.
    pub fn watcher(&self) -> watch::Receiver<()> {
        self.tx.subscribe()
    }

    /// Tells every connection to finish, then waits until all have ended.
    pub async fn drain(self) {
        let _ = self.tx.send(());
        self.tx.closed().await;
    }
}

/// What the watch decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Keep serving.
    Serve,
    /// Ask the connection to finish (GOAWAY, or close once idle).
    Finish,
    /// Drop it now.
    Drop,
}

/// The first-request, idle and closing deadlines of one connection.
#[derive(Debug)]
pub(super) struct IdleWatch {
    info: Arc<ConnInfo>,
    accepted: Instant,
    first_request: Duration,
    idle: Option<Duration>,
    pub tick: Duration,
    /// Consecutive ticks with nothing in flight and no new request.
    quiet_ticks: u32,
    quiet_needed: u32,
    last_started: u64,
    /// When the connection was asked to finish, and whether for being idle (then it is
    /// dropped if it lingers; the drain has its own grace period).
    finishing: Option<(Instant, bool)>,
}

impl IdleWatch {
    pub fn new(info: Arc<ConnInfo>, limits: &LimitsSpec) -> IdleWatch {
        let first_request = limits.header_read_timeout;
        let idle = limits.http2_idle_timeout;
        let shortest = idle.map_or(first_request, |i| i.min(first_request));
        let tick = (shortest / 4).max(Duration::from_millis(10));
        let quiet_needed = idle.map_or(u32::MAX, |i| {
            u32::try_from(i.as_nanos().div_ceil(tick.as_nanos().max(1))).unwrap_or(u32::MAX)
        });
        IdleWatch {
            info,
            accepted: Instant::now(),
            first_request,
            idle,
            tick,
            quiet_ticks: 0,
            quiet_needed,
            last_started: 0,
            finishing: None,
        }
    }

    /// The connection was asked to finish by the drain.
    pub fn draining(&mut self) {
        self.finishing.get_or_insert_with(|| (Instant::now(), false));
    }

    /// Called every [`IdleWatch::tick`]: what to do with the connection now.
    pub fn check(&mut self, now: Instant) -> Verdict {
        if let Some((since, idle)) = self.finishing {
            // A client that does not close after being asked to (it stopped reading) is
            // dropped; the drain has its own grace period and is not cut here.
            return match idle && now.saturating_duration_since(since) >= self.first_request {
                true => Verdict::Drop,
                false => Verdict::Serve,
            };
        }
        let started = self.info.started.load(Ordering::Relaxed);
        if started == 0 {
            return match now.saturating_duration_since(self.accepted) >= self.first_request {
                true => Verdict::Drop,
                false => Verdict::Serve,
            };
        }
        let in_flight = self.info.in_flight.load(Ordering::Relaxed);
        if in_flight > 0 || started != self.last_started {
            self.quiet_ticks = 0;
            self.last_started = started;
            return Verdict::Serve;
        }
        self.quiet_ticks = self.quiet_ticks.saturating_add(1);
        if self.idle.is_some() && self.quiet_ticks >= self.quiet_needed {
            self.finishing = Some((now, true));
            return Verdict::Finish;
        }
        Verdict::Serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(header_read_timeout: u64, idle: Option<u64>) -> LimitsSpec {
        LimitsSpec {
            max_inflight: 10,
            max_connections: 10,
            max_header_bytes: 65536,
            max_body_bytes: 1024,
            header_read_timeout: Duration::from_millis(header_read_timeout),
            http2_keepalive_interval: None,
            http2_keepalive_timeout: Duration::from_secs(1),
            http2_idle_timeout: idle.map(Duration::from_millis),
        }
    }

    fn info() -> Arc<ConnInfo> {
        Arc::new(ConnInfo::new(
            "127.0.0.1:1".parse().unwrap(),
            Arc::from("public"),
            false,
        ))
    }

    /// Runs the watch tick by tick on the paused clock until it says something other than
    /// `Serve`, for at most `ticks`; returns that verdict and the time it took.
    async fn run(watch: &mut IdleWatch, ticks: u32) -> (Verdict, Duration) {
        let start = Instant::now();
        for _ in 0..ticks {
            tokio::time::advance(watch.tick).await;
            let verdict = watch.check(Instant::now());
            if verdict != Verdict::Serve {
                return (verdict, start.elapsed());
            }
        }
        (Verdict::Serve, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_dropped_at_the_header_timeout() {
        let mut watch = IdleWatch::new(info(), &limits(400, Some(60_000)));
        let (verdict, after) = run(&mut watch, 100).await;
        assert_eq!(verdict, Verdict::Drop);
        assert_eq!(after, Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_finished_after_the_idle_timeout_but_a_busy_one_is_not() {
        let info = info();
        let mut watch = IdleWatch::new(info.clone(), &limits(10_000, Some(1_000)));
        info.started.fetch_add(1, Ordering::Relaxed);
        info.in_flight.fetch_add(1, Ordering::Relaxed);
        // A request in flight for far longer than the idle timeout keeps the connection.
        let (verdict, _) = run(&mut watch, 40).await;
        assert_eq!(verdict, Verdict::Serve);
        info.in_flight.fetch_sub(1, Ordering::Relaxed);
        let (verdict, after) = run(&mut watch, 40).await;
        assert_eq!(verdict, Verdict::Finish);
        assert!(
            after >= Duration::from_millis(1_000) && after <= Duration::from_millis(1_250),
            "{after:?}"
        );
        // Asked to finish and still open a header timeout later: dropped.
        let (verdict, after) = run(&mut watch, 1_000).await;
        assert_eq!(verdict, Verdict::Drop);
        assert!(after >= Duration::from_millis(10_000), "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_only_the_first_request_is_awaited() {
        let info = info();
        let mut watch = IdleWatch::new(info.clone(), &limits(400, None));
        info.started.fetch_add(1, Ordering::Relaxed);
        let (verdict, _) = run(&mut watch, 1_000).await;
        assert_eq!(verdict, Verdict::Serve);
    }
}
