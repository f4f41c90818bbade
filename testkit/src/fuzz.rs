//! Fuzz-style tests of decoders on stable Rust: every decoder of bytes from the wire or the
//! disk is fed arbitrary bytes and mutations of valid encodings, and must answer each with a
//! value or an error — never a panic, never an allocation past its bound, never a hang.
//!
//! ```no_run
//! use raftmq_testkit::fuzz::{self, Tracking};
//! #[global_allocator]
//! static ALLOC: Tracking = Tracking;
//!
//! #[test]
//! fn lengths_decode_or_fail() {
//!     let valid = vec![vec![0, 0, 0, 3, b'a', b'b', b'c']];
//!     fuzz::decoder("length-prefixed", &valid, fuzz::alloc_bound(64 << 10), |b| {
//!         let n = b.get(..4).ok_or("short")?;
//!         let n = u32::from_be_bytes(n.try_into().unwrap()) as usize;
//!         b.get(4..4 + n).map(|_| ()).ok_or("truncated")
//!     });
//! }
//! ```
//!
//! - **Cases**: `RAFTMQ_FUZZ_CASES` per decoder (default [`CASES_DEFAULT`], what CI runs);
//!   `RAFTMQ_FUZZ_CASES=1000000 cargo test --release … fuzz` for millions on demand.
//! - **Reproducible**: the cases come from `RAFTMQ_FUZZ_SEED` (default 1) and the decoder's
//!   name; a failure prints the seed, the case number and the input in hex.
//! - **Allocations**: the test binary installs [`Tracking`] as its global allocator; each
//!   call is measured on its own thread, and its largest single allocation must stay within
//!   the bound the test gives (a function of the input's length), so a length field read
//!   from the input can never size an allocation by itself.
//! - **Hangs**: a watchdog aborts the process, printing the input, if one call runs past
//!   [`HANG_LIMIT`] (a hang detector, not a speed check: decoders take microseconds).
//!
//! Mutations of valid encodings (the inputs a decoder's checks are least likely to have been
//! written for): bit flips, truncation, extension with random bytes, a byte run deleted or
//! duplicated, and a 1, 2, 4 or 8-byte field at a random offset set to 0, 1, its maximum or a
//! random value (lengths and counts claiming the world).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cases per decoder unless `RAFTMQ_FUZZ_CASES` says.
pub const CASES_DEFAULT: u64 = 4000;
/// A call running longer than this is a hang.
pub const HANG_LIMIT: Duration = Duration::from_secs(20);

thread_local! {
    /// Whether this thread's allocations are being measured, and the largest one seen.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// Counts allocations to report a fuzzed call's largest one. Install it in the test binary:
/// `#[global_allocator] static ALLOC: Tracking = Tracking;`.
pub struct Tracking;

/// Calls through [`Tracking`] since the process started: proof it is installed.
static TRACKED: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    // `try_with`: no tracking while a thread's locals are being torn down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping touches
// only thread-local cells and an atomic, and never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        TRACKED.fetch_add(1, Ordering::Relaxed);
        note(layout.size());
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        TRACKED.fetch_add(1, Ordering::Relaxed);
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        TRACKED.fetch_add(1, Ordering::Relaxed);
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// The largest single allocation `f` makes on this thread.
pub fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, PEAK.with(Cell::get))
}

/// An allocation bound: `fixed` bytes, plus 8 per input byte (a decoder may copy its input
/// into owned strings and vectors, and grow them by doubling).
pub fn alloc_bound(fixed: usize) -> impl Fn(usize) -> usize {
    move |len| fixed + 8 * len
}

/// The number of cases each decoder runs.
pub fn cases() -> u64 {
    std::env::var("RAFTMQ_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES_DEFAULT)
}

/// The seed every fuzzer mixes into its inputs: `RAFTMQ_FUZZ_SEED`, default 1.
pub fn seed() -> u64 {
    std::env::var("RAFTMQ_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One input: random bytes (a fifth of the cases, or when there is no valid sample), else a
/// valid sample with one to three mutations.
pub fn input(rng: &mut Rng, valid: &[Vec<u8>]) -> Vec<u8> {
    if valid.is_empty() || rng.below(5) == 0 {
        let n = match rng.below(4) {
            0 => rng.below(16),
            1 => rng.below(64),
            _ => rng.below(1024),
        };
        return rng.bytes(n);
    }
    let mut b = valid[rng.below(valid.len())].clone();
    for _ in 0..=rng.below(3) {
        mutate(rng, &mut b);
    }
    b
}

fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    match rng.below(6) {
        // Bit flips.
        0 if !b.is_empty() => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
        }
        // Truncation.
        1 if !b.is_empty() => b.truncate(rng.below(b.len())),
        // Extension.
        2 => {
            let n = 1 + rng.below(64);
            b.extend(rng.bytes(n));
        }
        // A run deleted.
        3 if !b.is_empty() => {
            let at = rng.below(b.len());
            let n = 1 + rng.below((b.len() - at).min(32));
            b.drain(at..at + n);
        }
        // A run duplicated.
        4 if !b.is_empty() => {
            let at = rng.below(b.len());
            let n = 1 + rng.below((b.len() - at).min(32));
            let run: Vec<u8> = b[at..at + n].to_vec();
            b.splice(at..at, run);
        }
        // A field set to an edge value, either byte order.
        _ if !b.is_empty() => {
            let width = [1usize, 2, 4, 8][rng.below(4)];
            if b.len() < width {
                b.push(0xff);
                return;
            }
            let at = rng.below(b.len() - width + 1);
            let v: u64 = match rng.below(4) {
                0 => 0,
                1 => 1,
                2 => u64::MAX,
                _ => rng.next_u64(),
            };
            let bytes = if rng.below(2) == 0 {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            b[at..at + width].copy_from_slice(&bytes[..width]);
        }
        _ => b.push(rng.next_u64() as u8),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fuzzes `decode` named `name`: [`cases`] inputs from `valid` samples and random bytes.
/// Each must return (`Ok` or `Err`, either is fine) without a panic, within `max_alloc(len)`
/// bytes for its largest allocation, and within [`HANG_LIMIT`]. Every valid sample must
/// decode (`Ok`) — the samples are proven valid, so mutations start from real encodings.
///
/// # Panics
/// On the first input that breaks a rule, with the seed, the case and the input.
pub fn decoder<T, E: Debug>(
    name: &str,
    valid: &[Vec<u8>],
    max_alloc: impl Fn(usize) -> usize,
    decode: impl Fn(&[u8]) -> Result<T, E>,
) {
    assert_tracking_installed();
    for (i, v) in valid.iter().enumerate() {
        if let Err(e) = decode(v) {
            panic!(
                "{name}: valid sample {i} does not decode: {e:?} (input {})",
                hex(v)
            );
        }
    }
    let seed = seed();
    let mut rng = Rng::new(seed ^ name_hash(name));
    let watchdog = Watchdog::start(name);
    let mut errors = 0u64;
    for case in 0..cases() {
        let b = input(&mut rng, valid);
        watchdog.enter(case, &b);
        let (outcome, peak) = peak_allocation(|| catch_unwind(AssertUnwindSafe(|| decode(&b))));
        watchdog.leave();
        let context = || {
            format!(
                "{name}: RAFTMQ_FUZZ_SEED={seed}, case {case}, {} bytes: {}",
                b.len(),
                hex(&b)
            )
        };
        match outcome {
            Err(_) => panic!("panicked — {}", context()),
            Ok(r) => errors += u64::from(r.is_err()),
        }
        let bound = max_alloc(b.len());
        assert!(
            peak <= bound,
            "allocated {peak} bytes at once (bound {bound}) — {}",
            context()
        );
    }
    eprintln!(
        "fuzz {name}: {} cases (seed {seed}), {errors} refused",
        cases()
    );
}

/// Fails if [`Tracking`] is not the global allocator: the allocation checks would pass
/// vacuously.
fn assert_tracking_installed() {
    let before = TRACKED.load(Ordering::Relaxed);
    let (v, peak) = peak_allocation(|| std::hint::black_box(vec![0u8; 4096]));
    drop(v);
    assert!(
        TRACKED.load(Ordering::Relaxed) > before && peak >= 4096,
        "install raftmq_testkit::fuzz::Tracking as the test binary's #[global_allocator]"
    );
}

/// The call under way: its case and input.
type Current = Arc<Mutex<Option<(u64, Vec<u8>)>>>;

/// Aborts the process if one call runs past [`HANG_LIMIT`].
struct Watchdog {
    current: Current,
    /// When the call under way started, in ms after `origin`, plus one (0: none under way).
    entered: Arc<AtomicU64>,
    origin: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(name: &str) -> Self {
        let current: Current = Arc::default();
        let entered = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        let thread = {
            let (current, entered, stop, name) = (
                current.clone(),
                entered.clone(),
                stop.clone(),
                name.to_string(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let at = entered.load(Ordering::Relaxed);
                    if at == 0 {
                        continue;
                    }
                    let running = origin
                        .elapsed()
                        .saturating_sub(Duration::from_millis(at - 1));
                    if running > HANG_LIMIT {
                        let held = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        if let Some((case, b)) = held {
                            eprintln!(
                                "{name}: case {case} ran past {HANG_LIMIT:?} (a hang): {}",
                                hex(&b)
                            );
                            std::process::abort();
                        }
                    }
                }
            })
        };
        Watchdog {
            current,
            entered,
            origin,
            stop,
            thread: Some(thread),
        }
    }

    fn enter(&self, case: u64, b: &[u8]) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((case, b.to_vec()));
        self.entered.store(
            self.origin.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
    }

    fn leave(&self) {
        self.entered.store(0, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: Tracking = Tracking;

    /// The message `decoder` panics with on `decode`, if it does.
    fn failure(decode: impl Fn(&[u8]) -> Result<(), String>) -> Option<String> {
        let valid = vec![vec![0, 0, 0, 4, 1, 2, 3, 4]];
        catch_unwind(AssertUnwindSafe(|| {
            decoder("checked", &valid, alloc_bound(1024), decode)
        }))
        .err()
        .map(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "a non-string panic".into())
        })
    }

    #[test]
    fn the_checks_fire_on_a_panic_and_on_an_allocation_sized_by_the_input() {
        // Sound: a length prefix checked against what is there.
        let sound = |b: &[u8]| {
            let n = b.get(..4).ok_or("short")?;
            let n = u32::from_be_bytes(n.try_into().expect("4 bytes")) as usize;
            b.get(4..).filter(|r| r.len() >= n).ok_or("truncated")?;
            Ok(())
        };
        assert_eq!(failure(sound), None);
        // Indexes past the end of a short input.
        let panics = |b: &[u8]| {
            let n = usize::from(b[3]);
            if b.len() < 4 + n {
                return Err("truncated".to_string());
            }
            Ok(())
        };
        let m = failure(panics).expect("caught");
        assert!(
            m.contains("panicked") && m.contains("RAFTMQ_FUZZ_SEED=1"),
            "{m}"
        );
        // Trusts the length prefix to size a buffer.
        let greedy = |b: &[u8]| {
            let n = b.get(..4).ok_or("short")?;
            let n = u32::from_be_bytes(n.try_into().expect("4 bytes")) as usize;
            let mut out = Vec::with_capacity(n.min(1 << 28));
            out.extend_from_slice(b.get(4..4 + n).ok_or("truncated")?);
            Ok(())
        };
        let m = failure(greedy).expect("caught");
        assert!(m.contains("allocated"), "{m}");
    }

    #[test]
    fn mutations_stay_close_to_the_sample_and_are_reproducible() {
        let valid = vec![b"hello, world".to_vec()];
        let a: Vec<Vec<u8>> = {
            let mut r = Rng::new(7);
            (0..100).map(|_| input(&mut r, &valid)).collect()
        };
        let b: Vec<Vec<u8>> = {
            let mut r = Rng::new(7);
            (0..100).map(|_| input(&mut r, &valid)).collect()
        };
        assert_eq!(a, b, "same seed, same inputs");
        assert!(a.iter().any(|x| x != &valid[0]), "inputs are mutated");
        assert!(a.iter().all(|x| x.len() <= 1024 + 12 + 3 * 64));
    }
}
