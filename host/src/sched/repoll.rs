//! A task that wakes itself while it runs is polled again at once, not requeued.
//!
//! hyper serves an HTTP connection as one future: its dispatcher and the request's handler run
//! in one task and hand the request's body and the response over to each other, so the task
//! wakes itself during its own poll. tokio then requeues it as a yield, at the back of the
//! worker's queue, and wakes a parked worker to steal it: with two workers, a turn woke the
//! other worker 1.3 times for its HTTP connections alone, and each wake-up of a parked thread
//! costs tens of microseconds on a virtual machine (BENCHMARKS.md, "Round eighteen").
//! [`Repoll`] notes a wake that comes while the future is being polled and polls it again in
//! the same turn of the task instead, so the handler runs on without the hop ("Round nineteen").
//!
//! Fairness is kept: it polls again at most [`MAX_REPOLLS`] times and not once the task has
//! spent its cooperative budget (tokio's; every socket read and write draws on it), and then
//! yields as the task would have.

use futures::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// Polls of one turn of the task after the first; hyper's own loop reads and writes up to 16
/// times in a poll, so this is generous without letting one connection keep a worker.
pub const MAX_REPOLLS: usize = 16;

/// The inner future is being polled.
const POLLING: u8 = 1;
/// ... and was woken during that poll.
const WOKEN: u8 = 2;

/// A future polled again at once when it wakes itself during its poll (see the module's doc).
pub struct Repoll<F> {
    shared: Arc<Shared>,
    /// The waker the inner future sees: [`Shared`], created once per future.
    waker: Waker,
    inner: Pin<Box<F>>,
}

struct Shared {
    state: AtomicU8,
    /// The task's own waker, woken for a wake that comes between polls.
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & POLLING == 0 {
                // Not being polled: the task must be scheduled, as without the wrapper.
                self.task.wake();
                return;
            }
            // Being polled (by this thread or, for a wake from another task, by a worker):
            // the poll that is running sees the mark before it returns and polls again.
            match self.state.compare_exchange_weak(
                state,
                state | WOKEN,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => state = now,
            }
        }
    }
}

impl<F: Future> Repoll<F> {
    pub fn new(inner: F) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(0),
            task: AtomicWaker::new(),
        });
        Self {
            waker: Waker::from(shared.clone()),
            shared,
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Before the poll is marked: a wake from here on either finds the mark or wakes this
        // waker.
        this.shared.task.register(cx.waker());
        let mut inner_cx = Context::from_waker(&this.waker);
        let mut repolls = 0;
        loop {
            this.shared.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(out) = this.inner.as_mut().poll(&mut inner_cx) {
                this.shared.state.store(0, Ordering::Release);
                return Poll::Ready(out);
            }
            // Not woken while polled: done until a wake comes.
            if this
                .shared
                .state
                .compare_exchange(POLLING, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
            // Woken while polled: again, unless that would keep the worker from other tasks.
            if repolls == MAX_REPOLLS || !tokio::task::coop::has_budget_remaining() {
                this.shared.state.store(0, Ordering::Release);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            repolls += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts how often the task's own waker is woken.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Wakes itself during its first `n` polls, then is ready; counts its polls.
    struct SelfWaking {
        n: usize,
        polls: Arc<AtomicUsize>,
    }
    impl Future for SelfWaking {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            let polls = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            if self.n == 0 {
                return Poll::Ready(polls);
            }
            self.n -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn count_waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn a_wake_during_the_poll_is_a_poll_again_not_a_wake_of_the_task() {
        let (count, waker) = count_waker();
        let polls = Arc::new(AtomicUsize::new(0));
        let mut f = Box::pin(Repoll::new(SelfWaking {
            n: 3,
            polls: polls.clone(),
        }));
        let out = f.as_mut().poll(&mut Context::from_waker(&waker));
        assert_eq!(out, Poll::Ready(4));
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "the task was never woken"
        );
    }

    #[test]
    fn past_the_bound_the_task_yields_and_nothing_is_lost() {
        let (count, waker) = count_waker();
        let polls = Arc::new(AtomicUsize::new(0));
        let mut f = Box::pin(Repoll::new(SelfWaking {
            n: MAX_REPOLLS + 5,
            polls: polls.clone(),
        }));
        let mut cx = Context::from_waker(&waker);
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), MAX_REPOLLS + 1);
        // The yield: the task is woken to be polled again later.
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Ready(MAX_REPOLLS + 6));
    }

    #[test]
    fn a_wake_between_polls_wakes_the_task() {
        let (count, waker) = count_waker();
        let stash: Arc<std::sync::Mutex<Option<Waker>>> = Default::default();
        let s = stash.clone();
        let mut f = Box::pin(Repoll::new(std::future::poll_fn(move |cx| {
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::<()>::Pending
        })));
        assert!(
            f.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        // Later, from elsewhere (another task, the I/O driver).
        stash.lock().unwrap().take().unwrap().wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }
}
