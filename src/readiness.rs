//! Talks to systemd (`Type=notify` units): readiness, reloads, a status
//! line and the watchdog.
//!
//! systemd passes a datagram socket in `NOTIFY_SOCKET`. The gateway sends
//! `READY=1` once it accepts TLS connections, `RELOADING=1` (with the
//! monotonic time systemd wants beside it) then `READY=1` around a reload,
//! `STOPPING=1` when it begins to shut down, a `STATUS=` line (keys loaded,
//! connections, messages per second), and, when the unit sets
//! `WatchdogSec=` (systemd passes `WATCHDOG_USEC`), `WATCHDOG=1` at half
//! that interval for as long as the gateway is healthy ([`supervise`]).
//! Healthy means the routing core answers (its subscription index can be
//! read) and the runtime that runs the accept loop still runs this task: a
//! wedged routing core or a starved runtime stops the pings, and systemd
//! restarts the service. The protocol is a few lines of text on a socket,
//! so it is done here rather than through a crate. Outside systemd
//! `NOTIFY_SOCKET` is unset and nothing is sent.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::warn;

use crate::broker::Broker;
use crate::keys::KeyStore;

/// How often the status line is refreshed when no watchdog is asked for.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Sends `state` (e.g. `"READY=1"`) to systemd's notification socket, if
/// the process was started with one.
pub fn notify(state: &str) -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    // A leading '@' names a socket in Linux's abstract namespace.
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), &path)?;
    }
    Ok(())
}

/// Says a reload begins; `READY=1` says it is over. systemd (253 and
/// later, `Type=notify-reload` or a reload job) matches them by the
/// monotonic clock.
pub fn reloading() -> io::Result<()> {
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd reads.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec).unwrap_or(0) / 1000;
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

/// The interval systemd wants `WATCHDOG=1` within, halved, when the
/// service has a watchdog meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// What the watchdog and the status line look at.
pub struct Health {
    broker: Arc<Broker>,
    keys: Arc<KeyStore>,
    /// The places for authenticated connections: what is taken is the
    /// number of connections.
    places: Arc<Semaphore>,
    max_connections: usize,
}

impl Health {
    pub fn new(
        broker: Arc<Broker>,
        keys: Arc<KeyStore>,
        places: Arc<Semaphore>,
        max_connections: usize,
    ) -> Health {
        Health {
            broker,
            keys,
            places,
            max_connections,
        }
    }

    /// Whether the routing core answers within `within`: a writer holds
    /// its index for microseconds, so failing for that long means stuck.
    pub async fn routing_core_responds(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.broker.responds() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `keys 3, connections 120, 350 msgs/s`.
    fn status(&self, per_second: f64) -> String {
        let connections = self
            .max_connections
            .saturating_sub(self.places.available_permits());
        format!(
            "keys {}, connections {connections}, {per_second:.0} msgs/s",
            self.keys.snapshot().len()
        )
    }
}

/// Pings the watchdog while the gateway is healthy and keeps the status
/// line current; runs until the process ends. Without `NOTIFY_SOCKET` it
/// only costs a timer.
pub async fn supervise(health: Health) {
    let watchdog = watchdog_interval();
    let every = watchdog.unwrap_or(STATUS_EVERY);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (Instant::now(), health.broker.stats().published());
    let mut complained = false;
    loop {
        ticks.tick().await;
        let now = (Instant::now(), health.broker.stats().published());
        let secs = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
        let rate = now.1.saturating_sub(last.1) as f64 / secs;
        last = now;
        let status = format!("STATUS={}", health.status(rate));
        let state = match watchdog {
            None => status,
            Some(interval) => {
                if health.routing_core_responds(interval / 2).await {
                    complained = false;
                    format!("WATCHDOG=1\n{status}")
                } else {
                    if !complained {
                        warn!(
                            "the routing core does not answer: no watchdog ping (systemd restarts the service past WatchdogSec)"
                        );
                        complained = true;
                    }
                    continue;
                }
            }
        };
        let _ = notify(&state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_the_state_to_the_socket_named_in_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        // SAFETY: this is the only test in the crate that touches
        // NOTIFY_SOCKET, and it sets it before any thread reads it.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        notify("READY=1").unwrap();
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
