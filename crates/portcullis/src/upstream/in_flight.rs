//! A cap on the requests in flight to one upstream, over every worker: a request waits a
//! bounded time for a free slot, then is refused, so a slow upstream cannot pile up
//! unbounded work in the gateway.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::base::body::{BoxError, ResponseBody};

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

/// A response body that keeps its request's slot until the body ends or is dropped.
pub struct HoldSlot {
    body: ResponseBody,
    _slot: OwnedSemaphorePermit,
}

impl HoldSlot {
    /// `body`, holding `slot`.
    pub fn new(body: ResponseBody, slot: OwnedSemaphorePermit) -> Self {
        Self { body, _slot: slot }
    }
}

impl Body for HoldSlot {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
