//! Replays every fuzz corpus file and every regression input through the
//! same functions the cargo-fuzz targets call (`jwtgate::fuzz`), on stable,
//! in the normal `cargo test`.
//!
//! `fuzz/corpus/<target>/` holds the seed corpus (real samples),
//! `fuzz/regressions/<target>/` the inputs that once found a bug. A
//! target's directories may be missing or empty; a target with neither
//! file would go untested, so each must have at least one seed.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

// Counts heap per thread, so `mqtt_session` holds each replayed run to its
// limits here as it does under cargo-fuzz.
#[global_allocator]
static ALLOCATOR: jwtgate::fuzz::CountingAllocator = jwtgate::fuzz::CountingAllocator;

/// Every panic in the process since the first replay began: the thread it
/// happened on and what it said. Under libFuzzer every panic aborts, even
/// one in a task tokio catches (the `mqtt_session` connection spawns a
/// task for a will); here such a panic would only print, and the target
/// never awaits that task, so the hook records it and `replay` fails the
/// input it happened under.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Replays run one at a time, so that every panic recorded while an input
/// runs, on whatever thread, is that input's: a panic in another target's
/// thread cannot be blamed on it, nor can one of its own go unseen.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn panics() -> MutexGuard<'static, Vec<String>> {
    PANICS.lock().unwrap_or_else(PoisonError::into_inner)
}

fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("<unnamed>").to_owned();
            panics().push(format!("thread {name:?}: {info}"));
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
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    for path in files {
        let data = std::fs::read(&path).expect("read a corpus file");
        let before = panics().len();
        // Name the file before a panic in the target hides which it was.
        let outcome = std::panic::catch_unwind(|| run(&data));
        // A panic in a task the run spawned was caught by tokio: it shows
        // only here.
        let during: Vec<String> = panics()[before..].to_vec();
        assert!(
            outcome.is_ok() && during.is_empty(),
            "fuzz target {target} failed on {}: {} panic(s) during the run:\n{}",
            path.display(),
            during.len(),
            during.join("\n")
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

/// The replay's own check: a target whose spawned task panics, as a will
/// task could, while the target itself returns normally (tokio catches the
/// panic; `catch_unwind` never sees it), fails the replay.
#[test]
fn a_panic_in_a_spawned_task_fails_the_replay() {
    fn spawns_a_panicking_task(_: &[u8]) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let task = tokio::spawn(async { panic!("a spawned task panics on purpose") });
            assert!(task.await.is_err_and(|e| e.is_panic()));
        });
    }
    let replayed = std::panic::catch_unwind(|| replay("topic", spawns_a_panicking_task));
    let payload = replayed.expect_err("the replay passed a target whose task panicked");
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .unwrap_or_default();
    assert!(
        message.contains("a spawned task panics on purpose")
            && message.contains("fuzz target topic failed on"),
        "{message}"
    );
}
