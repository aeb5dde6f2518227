//! Per-thread heap accounting, so that `mqtt_session` can assert that no
//! input makes a connection hold more memory than its limits allow.
//!
//! libFuzzer's own guard (`-rss_limit_mb`, 2 GB by default) only catches a
//! runaway process; a connection that takes 50 MB because a packet header
//! claimed it would pass. [`CountingAllocator`] wraps the system allocator
//! and keeps, per thread, the bytes live and the highest they reached;
//! [`peak_during`] reports that high-water mark for one closure. Counting
//! per thread is exact here because the session runs on a current-thread
//! tokio runtime inside the closure, and it keeps test threads running in
//! parallel (the replay test) out of each other's figures.
//!
//! A binary opts in with
//! `#[global_allocator] static A: CountingAllocator = CountingAllocator;`
//! (the cargo-fuzz target and `tests/fuzz_replay.rs` do); without it
//! [`peak_during`] reports nothing and the assertion is skipped.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// The system allocator, counting.
pub struct CountingAllocator;

/// Set on the first allocation counted: the allocator is installed.
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Signed: a block freed on another thread than the one that took it
    // is subtracted here. Const-initialised cells without destructors, so
    // reaching them never allocates and works during thread teardown.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(delta);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn signed(size: usize) -> isize {
    isize::try_from(size).unwrap_or(isize::MAX)
}

// SAFETY: every call is passed to `System` unchanged; the counting around
// it never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System.alloc`'s.
        let block = unsafe { System.alloc(layout) };
        if !block.is_null() {
            INSTALLED.store(true, Ordering::Relaxed);
            count(signed(layout.size()));
        }
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let block = unsafe { System.alloc_zeroed(layout) };
        if !block.is_null() {
            INSTALLED.store(true, Ordering::Relaxed);
            count(signed(layout.size()));
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: as `alloc`.
        unsafe { System.dealloc(block, layout) };
        count(-signed(layout.size()));
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `alloc`.
        let moved = unsafe { System.realloc(block, layout, new_size) };
        if !moved.is_null() {
            count(signed(new_size) - signed(layout.size()));
        }
        moved
    }
}

/// Runs `f` and returns its result with the most heap memory, in bytes,
/// that this thread held during it beyond what it held before; `None`
/// when [`CountingAllocator`] is not the global allocator.
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, Option<usize>) {
    let before = LIVE.try_with(Cell::get).unwrap_or(0);
    let _ = PEAK.try_with(|peak| peak.set(before));
    let result = f();
    let peak = PEAK.try_with(Cell::get).unwrap_or(before);
    let installed = INSTALLED.load(Ordering::Relaxed);
    let grown = usize::try_from(peak.saturating_sub(before)).unwrap_or(0);
    (result, installed.then_some(grown))
}
