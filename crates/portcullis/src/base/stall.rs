//! How long something has waited without progress: a response body on its upstream, a
//! connection's writes on its client. Each wait counts from its first `Pending`; any
//! progress ends it.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A wait without progress, ended by a limit. Its timer is made the first time something
/// waits, and moved rather than made again after that.
pub struct Stall {
    limit: Duration,
    /// While waiting: when the limit is reached.
    due: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    /// A wait that may last at most `limit`.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            due: None,
            sleep: None,
        }
    }

    /// Something moved: the next wait counts from its own start.
    pub fn progressed(&mut self) {
        self.due = None;
    }

    /// Whether the wait going on now (it starts at the first call after progress) has
    /// reached the limit; if not, `cx` is woken when it does.
    pub fn over(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let due = *self.due.get_or_insert_with(|| Instant::now() + limit);
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if sleep.deadline() != due {
            sleep.as_mut().reset(due);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_limit_and_progress_starts_it_again() {
        let mut stall = Stall::new(Duration::from_secs(2));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(!stall.over(&mut cx));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(!stall.over(&mut cx));
        stall.progressed();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(!stall.over(&mut cx), "counted from the progress");
        tokio::time::advance(Duration::from_millis(2100)).await;
        assert!(stall.over(&mut cx));
    }
}
