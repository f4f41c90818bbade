//! A watch channel with a deterministic wake order, for openraft's `Watch`.
//!
//! The value sits behind a `std::sync::RwLock` with a version number; receivers remember the
//! version they saw. Waiters are woken by a `tokio::sync::Notify` (`notify_waiters` wakes
//! them in FIFO order and draws no random numbers). The lock is held only to read or replace
//! the value, never across an await.
//!
//! Closing: when the last sender is dropped, receivers' `changed` returns `RecvError`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::async_runtime::watch::{RecvError, SendError};
use openraft::async_runtime::{Watch, WatchReceiver, WatchSender};
use tokio::sync::Notify;

/// The channel family; see the module docs.
pub struct SimWatch;

struct Shared<T> {
    value: RwLock<T>,
    version: AtomicU64,
    senders: AtomicUsize,
    closed: AtomicBool,
    notify: Notify,
}

impl<T> Shared<T> {
    fn read(&self) -> RwLockReadGuard<'_, T> {
        // A poisoned lock means a writer panicked mid-update: the process is already failing.
        self.value.read().expect("watch lock poisoned")
    }
}

/// Sending half.
pub struct Sender<T>(Arc<Shared<T>>);

/// Receiving half.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::AcqRel);
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.store(true, Ordering::Release);
            self.0.notify.notify_waiters();
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver {
            shared: self.shared.clone(),
            seen: self.seen,
        }
    }
}

impl Watch for SimWatch {
    type Sender<T: Send + Sync> = Sender<T>;
    type Receiver<T: Send + Sync> = Receiver<T>;
    type Ref<'a, T: Send + 'a> = RwLockReadGuard<'a, T>;

    fn channel<T: Send + Sync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let shared = Arc::new(Shared {
            value: RwLock::new(init),
            version: AtomicU64::new(0),
            senders: AtomicUsize::new(1),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
        });
        let rx = Receiver {
            shared: shared.clone(),
            seen: 0,
        };
        (Sender(shared), rx)
    }
}

impl<T: Send + Sync> WatchSender<SimWatch, T> for Sender<T> {
    fn send(&self, value: T) -> Result<(), SendError<T>> {
        *self.0.value.write().expect("watch lock poisoned") = value;
        self.0.version.fetch_add(1, Ordering::AcqRel);
        self.0.notify.notify_waiters();
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        let modified = {
            let mut v = self.0.value.write().expect("watch lock poisoned");
            modify(&mut v)
        };
        if modified {
            self.0.version.fetch_add(1, Ordering::AcqRel);
            self.0.notify.notify_waiters();
        }
        modified
    }

    fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
        self.0.read()
    }

    fn subscribe(&self) -> Receiver<T> {
        Receiver {
            shared: self.0.clone(),
            seen: self.0.version.load(Ordering::Acquire),
        }
    }
}

impl<T: Send + Sync> WatchReceiver<SimWatch, T> for Receiver<T> {
    async fn changed(&mut self) -> Result<(), RecvError> {
        loop {
            // Register interest before checking, so a send between the check and the await
            // is not missed.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.shared.version.load(Ordering::Acquire);
            if now != self.seen {
                self.seen = now;
                return Ok(());
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(RecvError(()));
            }
            notified.await;
        }
    }

    fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
        self.shared.read()
    }

    fn borrow_and_update(&mut self) -> RwLockReadGuard<'_, T> {
        let guard = self.shared.read();
        self.seen = self.shared.version.load(Ordering::Acquire);
        guard
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changed_sees_every_send_and_close() {
        let (tx, mut rx) = SimWatch::channel(1u32);
        let mut rx2 = tx.subscribe();
        tx.send(2).expect("open");
        rx.changed().await.expect("changed");
        assert_eq!(*rx.borrow_watched(), 2);
        assert!(!tx.send_if_modified(|v| *v == 3));
        assert!(tx.send_if_modified(|v| {
            *v = 3;
            true
        }));
        rx2.changed().await.expect("changed");
        assert_eq!(*rx2.borrow_and_update(), 3);
        let waiter = tokio::spawn(async move { rx2.changed().await });
        tokio::task::yield_now().await;
        drop(tx);
        assert!(waiter.await.expect("joined").is_err());
    }
}
