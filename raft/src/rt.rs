//! openraft's [`AsyncRuntime`] on the workspace `tokio` (which is `madsim-tokio`): real tokio
//! in a normal build, madsim's deterministic executor under `--cfg madsim`.
//!
//! What keeps a simulated run deterministic (see docs/simulation.md):
//! - tasks, sleeps and timeouts come from `tokio::task` / `tokio::time`, which madsim
//!   replaces; [`Timeout`] polls its future before its timer (biased);
//! - [`RaftRuntime::thread_rng`] is seeded from madsim's RNG under `cfg(madsim)` (a
//!   thread-local RNG seeded once per OS thread would carry state from one seed to the next);
//! - [`RaftRuntime::spawn_blocking`] runs the closure inline under madsim (which forbids OS
//!   threads) and on tokio's blocking pool otherwise;
//! - the watch channel is [`watch`], a small channel of our own whose wake order is FIFO
//!   (tokio's `watch` spreads waiters over several notifiers chosen by a process-wide RNG).
//!
//! Channels and the mutex are tokio's `sync` types (real in both builds, and deterministic:
//! FIFO, no randomness), wrapped because openraft's traits are foreign.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::async_runtime::{
    Mpsc, MpscReceiver, MpscSender, MpscWeakSender, Oneshot, OneshotSender, SendError, TryRecvError,
};
use rand::SeedableRng;

pub mod watch;

/// The runtime marker type; see the module docs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RaftRuntime;

/// A time instant (virtual under madsim, which intercepts the clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(std::time::Instant);

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0 + d)
    }
}

impl std::ops::AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d;
    }
}

impl std::ops::Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant(self.0 - d)
    }
}

impl std::ops::Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, o: Instant) -> Duration {
        self.0.saturating_duration_since(o.0)
    }
}

impl std::ops::SubAssign<Duration> for Instant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 -= d;
    }
}

impl openraft::async_runtime::Instant for Instant {
    fn now() -> Self {
        Instant(now_std())
    }
}

fn now_std() -> std::time::Instant {
    #[cfg(madsim)]
    {
        tokio::time::Instant::now()
    }
    #[cfg(not(madsim))]
    {
        tokio::time::Instant::now().into_std()
    }
}

fn sleep_until_std(deadline: std::time::Instant) -> tokio::time::Sleep {
    #[cfg(madsim)]
    {
        tokio::time::sleep_until(deadline)
    }
    #[cfg(not(madsim))]
    {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline))
    }
}

/// A future with a deadline: polls the future first, then the timer.
pub struct Timeout<T> {
    future: Pin<Box<T>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

/// The deadline of a [`Timeout`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct Elapsed;

impl<R, T: Future<Output = R>> Future for Timeout<T> {
    type Output = Result<R, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A task handle.
pub struct JoinHandle<T>(tokio::task::JoinHandle<T>);

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// The RNG openraft draws election timeouts from, seeded per call (see the module docs).
pub fn seeded_rng() -> rand::rngs::StdRng {
    #[cfg(madsim)]
    let seed: u64 = madsim::rand::random();
    #[cfg(not(madsim))]
    let seed: u64 = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(now_std().elapsed().as_nanos());
        h.finish()
    };
    rand::rngs::StdRng::seed_from_u64(seed)
}

impl AsyncRuntime for RaftRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: Send + 'static> = JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = Instant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + Send> = Timeout<T>;
    type ThreadLocalRng = rand::rngs::StdRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + Send + 'static,
        T::Output: Send + 'static,
    {
        JoinHandle(tokio::spawn(future))
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        sleep_until_std(deadline.0)
    }

    fn timeout<R, F: Future<Output = R> + Send>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Box::pin(tokio::time::sleep(duration)),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + Send>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Box::pin(sleep_until_std(deadline.0)),
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        seeded_rng()
    }

    type Mpsc = TokioMpsc;
    type Watch = watch::SimWatch;
    type Oneshot = TokioOneshot;
    type Mutex<T: Send + 'static> = TokioMutex<T>;

    fn new(_threads: usize) -> Self {
        RaftRuntime
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        #[cfg(madsim)]
        {
            madsim::runtime::Runtime::new().block_on(future)
        }
        #[cfg(not(madsim))]
        {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread tokio runtime builds")
                .block_on(future)
        }
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, std::io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        #[cfg(madsim)]
        {
            // madsim forbids OS threads: run inline, deterministically.
            let out = f();
            async move { Ok(out) }
        }
        #[cfg(not(madsim))]
        {
            let h = tokio::task::spawn_blocking(f);
            async move { h.await.map_err(std::io::Error::other) }
        }
    }
}

/// tokio's bounded mpsc.
pub struct TokioMpsc;

/// Sending half of [`TokioMpsc`].
pub struct MpscTx<T>(tokio::sync::mpsc::Sender<T>);
/// Receiving half of [`TokioMpsc`].
pub struct MpscRx<T>(tokio::sync::mpsc::Receiver<T>);
/// Weak sending half of [`TokioMpsc`].
pub struct MpscWeakTx<T>(tokio::sync::mpsc::WeakSender<T>);

impl<T> Clone for MpscTx<T> {
    fn clone(&self) -> Self {
        MpscTx(self.0.clone())
    }
}

impl<T> Clone for MpscWeakTx<T> {
    fn clone(&self) -> Self {
        MpscWeakTx(self.0.clone())
    }
}

impl Mpsc for TokioMpsc {
    type Sender<T: Send> = MpscTx<T>;
    type Receiver<T: Send> = MpscRx<T>;
    type WeakSender<T: Send> = MpscWeakTx<T>;

    fn channel<T: Send>(buffer: usize) -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = tokio::sync::mpsc::channel(buffer);
        (MpscTx(tx), MpscRx(rx))
    }
}

impl<T: Send> MpscSender<TokioMpsc, T> for MpscTx<T> {
    fn send(&self, msg: T) -> impl Future<Output = Result<(), SendError<T>>> + Send {
        let tx = self.0.clone();
        async move { tx.send(msg).await.map_err(|e| SendError(e.0)) }
    }

    fn downgrade(&self) -> MpscWeakTx<T> {
        MpscWeakTx(self.0.downgrade())
    }
}

impl<T: Send> MpscReceiver<T> for MpscRx<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send {
        self.0.recv()
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map_err(|e| match e {
            tokio::sync::mpsc::error::TryRecvError::Empty => TryRecvError::Empty,
            tokio::sync::mpsc::error::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })
    }
}

impl<T: Send> MpscWeakSender<TokioMpsc, T> for MpscWeakTx<T> {
    fn upgrade(&self) -> Option<MpscTx<T>> {
        self.0.upgrade().map(MpscTx)
    }
}

/// tokio's oneshot.
pub struct TokioOneshot;

/// Sending half of [`TokioOneshot`].
pub struct OneshotTx<T>(tokio::sync::oneshot::Sender<T>);

impl Oneshot for TokioOneshot {
    type Sender<T: Send> = OneshotTx<T>;
    type Receiver<T: Send> = tokio::sync::oneshot::Receiver<T>;
    type ReceiverError = tokio::sync::oneshot::error::RecvError;

    fn channel<T: Send>() -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (OneshotTx(tx), rx)
    }
}

impl<T: Send> OneshotSender<T> for OneshotTx<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

/// tokio's async mutex (FIFO).
pub struct TokioMutex<T>(tokio::sync::Mutex<T>);

impl<T: Send + 'static> openraft::async_runtime::Mutex<T> for TokioMutex<T> {
    type Guard<'a> = tokio::sync::MutexGuard<'a, T>;

    fn new(value: T) -> Self {
        TokioMutex(tokio::sync::Mutex::new(value))
    }

    fn lock(&self) -> impl Future<Output = Self::Guard<'_>> + Send {
        self.0.lock()
    }
}

// Keep `Arc` in scope for the docs of `watch`.
#[allow(dead_code)]
type _Shared = Arc<()>;
