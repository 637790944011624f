//! A cap on the requests in flight to one upstream, over every worker: a request waits a
//! bounded time for a free slot, then is refused, so a slow upstream cannot pile up
//! unbounded work in the gateway.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most requests in flight at once, and how long one may wait for a slot.
#[derive(Debug)]
pub struct InFlightLimit {
    slots: Arc<Semaphore>,
    max: usize,
    queue_timeout: Duration,
}

/// No slot became free within the queue timeout.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{max} requests already in flight; none finished within {queue_timeout:?}")]
pub struct Busy {
    max: usize,
    queue_timeout: Duration,
}

impl InFlightLimit {
    /// At most `max` requests in flight (capped at [`Semaphore::MAX_PERMITS`]); others wait
    /// up to `queue_timeout`.
    pub fn new(max: usize, queue_timeout: Duration) -> Arc<Self> {
        let max = max.min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            queue_timeout,
        })
    }

    /// A slot, held until the permit is dropped.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Busy> {
        let busy = Busy {
            max: self.max,
            queue_timeout: self.queue_timeout,
        };
        match tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(busy),
        }
    }
}
