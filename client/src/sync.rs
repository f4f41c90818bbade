//! The crate's one lock helper.
//!
//! Every `std::sync::Mutex` in the SDK guards a small map or struct edited in a few lines, with
//! no I/O and nothing awaited while it is held. A poisoned lock means a panic broke that state
//! half-way: a bug, not a condition to recover from (release builds abort on panic anyway, see
//! `[profile.release]`), so it is not handled, it fails loudly.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`; a poisoned lock is a bug (see the module docs).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
        .expect("lock poisoned: a panic broke this state; see [profile.release]")
}
