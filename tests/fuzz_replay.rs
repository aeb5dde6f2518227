//! Replays every fuzz corpus file and every regression input through the
//! same functions the cargo-fuzz targets call (`jwtgate::fuzz`), on stable,
//! in the normal `cargo test`.
//!
//! `fuzz/corpus/<target>/` holds the seed corpus (real samples),
//! `fuzz/regressions/<target>/` the inputs that once found a bug. A
//! target's directories may be missing or empty; a target with neither
//! file would go untested, so each must have at least one seed.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

// Counts heap per thread, so `mqtt_session` holds each replayed run to its
// limits here as it does under cargo-fuzz.
#[global_allocator]
static ALLOCATOR: jwtgate::fuzz::CountingAllocator = jwtgate::fuzz::CountingAllocator;

/// Set by any panic in the process. Under libFuzzer every panic aborts, even
/// one in a task tokio catches (the `mqtt_session` connection spawns a
/// task for a will); here such a panic would only print, so the hook
/// records it and `replay` fails the target.
static PANICKED: AtomicBool = AtomicBool::new(false);

fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("read the corpus directory").path();
            if path.is_file()
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for fuzz target {target}");
    watch_panics();
    for path in files {
        let data = std::fs::read(&path).expect("read a corpus file");
        // Name the file before a panic in the target hides which it was.
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(
            outcome.is_ok(),
            "fuzz target {target} failed on {}",
            path.display()
        );
    }
}

#[test]
fn verify_token() {
    replay("verify_token", jwtgate::fuzz::verify_token);
}

#[test]
fn token_signed() {
    replay("token_signed", jwtgate::fuzz::token_signed);
}

#[test]
fn jwks_parse() {
    replay("jwks_parse", jwtgate::fuzz::jwks_parse);
}

#[test]
fn keys_dir() {
    replay("keys_dir", jwtgate::fuzz::keys_dir);
}

#[test]
fn config() {
    replay("config", jwtgate::fuzz::config);
}

#[test]
fn topic() {
    replay("topic", jwtgate::fuzz::topic);
}

#[test]
fn mqtt_session() {
    replay("mqtt_session", jwtgate::fuzz::mqtt_session);
}

/// The accounting `mqtt_session`'s memory assertion rests on: a block held
/// during the closure is counted, one freed before it is not.
#[test]
fn heap_is_counted_per_run() {
    let earlier = vec![0u8; 4 << 20];
    drop(earlier);
    let (len, peak) = jwtgate::fuzz::peak_during(|| std::hint::black_box(vec![1u8; 1 << 20]).len());
    let peak = peak.expect("the counting allocator is installed");
    assert!(
        (1 << 20..2 << 20).contains(&peak),
        "peak {peak} for a {len}-byte block"
    );
}
