//! The poll loop on a clock that only moves when it sleeps: the interval,
//! `slow_down`, the floor, and giving up when the code expires.

#![allow(clippy::unwrap_used)]

use std::cell::{Cell, RefCell};

use super::*;

struct FakeClock {
    now: Cell<Instant>,
    sleeps: RefCell<Vec<u64>>,
}

impl FakeClock {
    fn new() -> FakeClock {
        FakeClock {
            now: Cell::new(Instant::now()),
            sleeps: RefCell::new(Vec::new()),
        }
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.now.get()
    }

    fn sleep(&self, duration: Duration) {
        self.now.set(self.now.get() + duration);
        self.sleeps.borrow_mut().push(duration.as_secs());
    }
}

/// Polls with answers from `script` (then pending forever).
fn run(
    interval: u64,
    expires_in: u64,
    script: Vec<Poll<&'static str>>,
) -> (Result<&'static str, Error>, Vec<u64>) {
    let mut script = script.into_iter();
    run_with(interval, expires_in, |_| {
        Ok(script.next().unwrap_or(Poll::Pending))
    })
}

/// Polls with `answer(n)` for the n-th poll (from 1).
fn run_with(
    interval: u64,
    expires_in: u64,
    mut answer: impl FnMut(u32) -> Result<Poll<&'static str>, Error>,
) -> (Result<&'static str, Error>, Vec<u64>) {
    let clock = FakeClock::new();
    let mut polls = 0;
    let result = poll(
        &clock,
        clock.now(),
        Duration::from_secs(interval),
        Duration::from_secs(expires_in),
        || {
            polls += 1;
            answer(polls)
        },
    );
    (result, clock.sleeps.into_inner())
}

fn unreachable_provider() -> Error {
    Error::Unreachable {
        url: "https://idp.example/oauth/token".to_owned(),
        reason: "connection refused".to_owned(),
    }
}

#[test]
fn polls_at_the_interval_and_slows_down_by_5_s_for_good() {
    let (result, sleeps) = run(
        2,
        600,
        vec![
            Poll::Pending,
            Poll::SlowDown,
            Poll::Pending,
            Poll::SlowDown,
            Poll::Approved("token"),
        ],
    );
    assert_eq!(result.unwrap(), "token");
    assert_eq!(sleeps, [2, 2, 7, 7, 12]);
}

#[test]
fn an_interval_below_one_second_is_one_second() {
    let (result, sleeps) = run(0, 600, vec![Poll::Pending, Poll::Approved("token")]);
    assert_eq!(result.unwrap(), "token");
    assert_eq!(sleeps, [1, 1]);
}

#[test]
fn gives_up_when_the_next_poll_would_come_after_the_code_expires() {
    let (result, sleeps) = run(5, 12, vec![]);
    assert!(matches!(result, Err(Error::DeviceCodeExpired { .. })));
    assert_eq!(sleeps, [5, 5]);
    let (result, sleeps) = run(5, 100, vec![Poll::SlowDown]);
    assert!(matches!(result, Err(Error::DeviceCodeExpired { .. })));
    // 5, then 10 each: 5 + 9 * 10 = 95, and one more would pass 100.
    assert_eq!(sleeps.len(), 10);
}

#[test]
fn a_refusal_ends_the_loop() {
    let mut polls = 0;
    let (result, _) = run_with(5, 600, |n| {
        polls = n;
        if n == 3 {
            Err(Error::DeviceDenied {
                description: "no".into(),
            })
        } else {
            Ok(Poll::Pending)
        }
    });
    assert!(matches!(result, Err(Error::DeviceDenied { .. })));
    assert_eq!(polls, 3);
}

#[test]
fn a_network_failure_doubles_the_interval_and_polling_goes_on() {
    let (result, sleeps) = run_with(5, 600, |n| match n {
        1 => Ok(Poll::Pending),
        2 => Err(unreachable_provider()),
        3 => Err(Error::Timeout {
            url: "https://idp.example/oauth/token".to_owned(),
            what: "read".to_owned(),
        }),
        _ => Ok(Poll::Approved("tokens")),
    });
    assert_eq!(result.unwrap(), "tokens");
    assert_eq!(sleeps, vec![5, 5, 10, 20]);
}

#[test]
fn a_network_that_stays_down_ends_with_the_code() {
    let (result, sleeps) = run_with(5, 100, |_| Err(unreachable_provider()));
    assert!(matches!(result, Err(Error::DeviceCodeExpired { .. })));
    // 5, 10, 20, 40: the next (80 s) would come after the code expired.
    assert_eq!(sleeps, vec![5, 10, 20, 40]);
}
