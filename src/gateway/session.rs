//! A connected client's loop: the socket, the timers and the deadlines.
//!
//! One task per client runs [`run`], a loop over one `select!` that hands
//! what happens to the client's protocol state ([`super::client`]) and
//! writes out what it answers:
//!
//! - the socket, driven by [`Wire::progress`] in both directions at once,
//!   never by a bare write: a client that stops reading cannot park its
//!   task, every other arm stays live;
//! - the session's mailbox (deliveries to write) and the pending
//!   publication (a full subscriber the client's publish waits for);
//! - the control arms, each able to end the session at any time, a write
//!   pending or not: shutdown, takeover, the token's `exp`, keep-alive,
//!   the write deadline (`[limits] write_timeout_secs`: the client must
//!   read all its output, or another 64 KiB of it, within it), and
//!   re-verification of the token after every reload of keys or deny list;
//! - MQTT 5 re-authentication: an AUTH's token is verified here, between
//!   packets, and its `exp` becomes the session's new deadline.
//!
//! Outbound data is bounded per connection: deliveries stay in the mailbox
//! while 64 KiB wait for the socket, and past [`MAX_UNWRITTEN`] the
//! client's own packets are not read either.
//!
//! [`finish`] ends the connection: the client is told why (within
//! [`LAST_WORDS`], and not at all when it stopped reading), and the session
//! goes back to the routing core.

use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep, sleep_until};
use tracing::info;

use super::authenticate::{FailureKind, authenticate};
use super::client::{Client, Ending, WRITE_BATCH};
use super::codec::auth;
use super::quiet::Kind;
use super::shared::Shared;
use super::takeover::{Claim, Kicked};
use super::wire::{Progress, Wire};
use crate::broker::{Broker, Pending};
use crate::metrics::{ConnectOutcome, Metrics};
use crate::token;

/// Output past which the client's own packets are not read either: a
/// client that never reads its acks is paced too.
pub(crate) const MAX_UNWRITTEN: usize = 4 * WRITE_BATCH;
/// Output a client must read, at least, within `[limits]
/// write_timeout_secs` (unless it reads all there is): reading a byte now
/// and then does not keep a stalled connection alive.
const WRITE_PROGRESS: u64 = WRITE_BATCH as u64;
/// How long a closing connection may take to write its last packets.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// What a session's timers start from.
pub(super) struct Timers {
    /// The client's keep-alive, with MQTT's grace of one half.
    pub keep_alive: Option<Duration>,
    /// The token's `exp` (plus leeway), when it has one the clock can hold.
    pub expires_at: Option<Instant>,
}

/// Runs the session until something ends it.
pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client,
    wire: &mut Wire<S>,
    shared: &Shared,
    claim: &mut Claim,
    reloads: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
    timers: Timers,
) -> Ending {
    let Timers {
        keep_alive,
        expires_at,
    } = timers;
    let far = far_future();
    let expiry = sleep_until(deadline_or_far(expires_at));
    let idle = sleep_until(keep_alive.map_or(far, |k| Instant::now() + k));
    let stalled = sleep_until(far);
    tokio::pin!(expiry, idle, stalled);
    // While output waits: the byte count that, once written, renews the
    // write deadline, and that deadline. The timer is re-armed lazily: a
    // renewal only moves `stall_at`, and a timer that goes off before it
    // is set again, so a steady stream of deliveries does not touch the
    // timer wheel for each.
    let mut renew_at: Option<u64> = None;
    let mut stall_at = far;
    let session = client.session();
    // The futures that wait for a wake-up are kept across the loop's turns
    // rather than made anew for each: each new one joins (and each dropped
    // one leaves) a list of waiters behind a lock, the shutdown's and the
    // reloads' shared with every other connection.
    let ready = session.mailbox().ready();
    let shutting_down = shutdown.changed();
    let reload = next_reload(reloads);
    tokio::pin!(ready, shutting_down, reload);
    if let Some(ending) = client.start(&mut wire.input, &mut wire.output) {
        return ending;
    }
    loop {
        if let Some(ending) = reauthenticate(client, wire, shared, claim, expiry.as_mut()) {
            return ending;
        }
        if let Some(ending) = client.pump(&mut wire.output) {
            return ending;
        }
        match (wire.wants_write(), renew_at) {
            (false, _) => renew_at = None,
            (true, Some(at)) if wire.written() < at => {}
            (true, _) => {
                renew_at = Some(wire.written() + WRITE_PROGRESS);
                stall_at = Instant::now() + shared.limits.write_timeout;
                if stalled.deadline() > stall_at {
                    stalled.as_mut().reset(stall_at);
                }
            }
        }
        let read = client.reads_input() && wire.output.len() < MAX_UNWRITTEN;
        if let (false, Some(k)) = (read, keep_alive) {
            // Keep-alive measures the client's silence, which cannot be
            // told while the gateway is not reading it.
            idle.as_mut().reset(Instant::now() + k);
        }
        let (pending, owed) = client.waits();
        tokio::select! {
            biased;
            _ = &mut shutting_down => return Ending::Shutdown,
            kicked = claim.kicked() => return match kicked {
                Kicked::TakenOver => Ending::TakenOver,
                Kicked::Administrative { discard_session } => Ending::Administrative { discard_session },
            },
            () = &mut expiry => return Ending::TokenExpired,
            () = &mut idle => return Ending::KeepAliveTimeout,
            () = &mut stalled, if renew_at.is_some() => {
                if Instant::now() >= stall_at {
                    return Ending::WriteStalled;
                }
                stalled.as_mut().reset(stall_at);
            }
            reloads = &mut reload => {
                reload.set(next_reload(reloads));
                let keys = shared.keys.snapshot();
                if let Err(e) = token::verify(&client.id().credential, &keys, &shared.policy) {
                    return Ending::Revoked(e.to_string());
                }
            }
            () = &mut ready => ready.set(session.mailbox().ready()),
            () = owed.settled() => {
                if let Some(ending) = client.release_owed(&mut wire.output) {
                    return ending;
                }
            }
            () = advance(pending, &shared.broker) => {
                if let Some(ending) = client.publication_done(&mut wire.input, &mut wire.output) {
                    return ending;
                }
            }
            progress = wire.progress(read) => match progress {
                Progress::Read => {
                    if let Some(k) = keep_alive {
                        idle.as_mut().reset(Instant::now() + k);
                    }
                    if let Some(ending) = client.take_input(&mut wire.input, &mut wire.output) {
                        return ending;
                    }
                }
                Progress::Wrote => {}
                Progress::Closed | Progress::Failed(_) => return Ending::Vanished,
            },
        }
    }
}

/// Ends the connection: the client is told why, its socket closed, and the
/// session handed back to the routing core.
pub(super) async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    client: Client,
    wire: &mut Wire<S>,
    ending: Ending,
    metrics: &Metrics,
) {
    metrics.session_ended(ending.counted_as());
    client.say_goodbye(&ending, &mut wire.output);
    // A client that stopped reading would not read its last words either.
    if !matches!(ending, Ending::WriteStalled) {
        wire.close(LAST_WORDS).await;
    }
    client.hand_back(&ending);
}

/// Verifies the token of each re-authentication the client asked for, as
/// a CONNECT's would be, and puts it into force (new grants, the expiry
/// re-armed to the new `exp`) or ends the session; then takes the packets
/// that waited behind it.
fn reauthenticate<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client,
    wire: &mut Wire<S>,
    shared: &Shared,
    claim: &Claim,
    mut expiry: Pin<&mut Sleep>,
) -> Option<Ending> {
    while let Some(token) = client.take_reauth() {
        let (client_id, username) = (client.id().client_id.clone(), client.id().username.clone());
        let certificate = client.id().certificate;
        let verified = authenticate(
            shared,
            &client_id,
            username.as_deref(),
            certificate,
            token,
            Some(client.quiet()),
        );
        let id = client.id();
        let authenticated = match verified {
            Ok(authenticated) => authenticated,
            Err(failure) => {
                shared.metrics.reauthentication(failure.outcome);
                return Some(Ending::ReauthRefused {
                    code: match failure.kind {
                        FailureKind::BadCredentials => auth::BAD_USER_NAME_OR_PASSWORD,
                        // DISCONNECT has no "client identifier not valid";
                        // a token for another client is, like one for
                        // another subject below, not authorized here.
                        FailureKind::NotAuthorized | FailureKind::ClientIdMismatch => {
                            auth::NOT_AUTHORIZED
                        }
                    },
                    detail: failure.reason,
                    signed: failure.kid.map(|kid| (failure.subject, kid)),
                });
            }
        };
        // The session is keyed by subject: a token for someone else must
        // not take it over.
        if authenticated.token.subject != id.subject {
            shared
                .metrics
                .reauthentication(ConnectOutcome::NotAuthorized);
            return Some(Ending::ReauthRefused {
                code: auth::NOT_AUTHORIZED,
                detail: "the new token names another subject".to_owned(),
                signed: Some((
                    authenticated.token.subject.clone(),
                    authenticated.token.key_id.clone(),
                )),
            });
        }
        let remote = id.remote;
        client.log_limited(Kind::Reauthentication, |client_id| {
            info!(
                remote = %remote,
                client_id,
                sub = authenticated.token.subject.as_deref().unwrap_or(""),
                kid = authenticated.token.key_id,
                exp = authenticated.token.expires_at,
                outcome = "accepted",
                reason = "",
                code = "0x00",
                "client re-authenticated"
            );
        });
        shared.metrics.reauthentication(ConnectOutcome::Accepted);
        expiry
            .as_mut()
            .reset(deadline_or_far(authenticated.deadline(shared.leeway)));
        claim.renewed(authenticated.token.expires_at);
        client.reauthenticated(
            authenticated.grants,
            authenticated.credential,
            &mut wire.output,
        );
        if let Some(ending) = client.take_input(&mut wire.input, &mut wire.output) {
            return Some(ending);
        }
    }
    None
}

/// A deadline that never comes: a hundred years on.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// The token's deadline, no later than [`far_future`]; none never comes.
fn deadline_or_far(deadline: Option<Instant>) -> Instant {
    let far = far_future();
    deadline.map_or(far, |at| at.min(far))
}

/// Resolves, handing the receiver back, once keys or deny list were
/// reloaded; never once the reloader is gone.
async fn next_reload(mut reloads: watch::Receiver<u64>) -> watch::Receiver<u64> {
    if reloads.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    reloads
}

/// Advances the pending publication, if there is one.
async fn advance(pending: Option<&mut Pending>, broker: &Broker) {
    match pending {
        Some(pending) => pending.advance(broker).await,
        None => std::future::pending().await,
    }
}
