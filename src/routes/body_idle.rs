//! A request body that stops arriving is answered 408 and its connection closed
//! (`REQUEST_BODY_IDLE_TIMEOUT_S`, CONTRACT.md §1 "Limits").
//!
//! actix-web's `client_request_timeout` bounds the request head only: once the head is in, a
//! handler that reads the body (the JSON extractor, the audio upload's stream) waits as long as
//! the client keeps the connection open without sending. A client that announces a body and
//! sends a few bytes of it would hold a connection, and an upload's partial file, forever.
//!
//! ```text
//!  request with a body ─▶ payload wrapped in IdleTimeout (reset on every chunk)
//!      handler reads ─▶ chunk ─▶ timer reset
//!                     ─▶ nothing for the timeout ─▶ PayloadError::Io(TimedOut) ─▶ AppError::RequestTimeout
//!                                                   ─▶ 408, `Connection: close`, counted body_timeout
//! ```
//!
//! The timer runs only while the handler waits for the body, so a slow handler is never cut
//! short, and a request without a body pays nothing.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::telemetry::metrics::{self, Refusal};

/// The idle bound, as app data for [`bound_body_idle`].
#[derive(Debug, Clone, Copy)]
pub struct BodyIdleTimeout(pub Duration);

/// Middleware: wraps the body of every request that has one in [`IdleTimeout`].
pub async fn bound_body_idle(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    if let Some(BodyIdleTimeout(idle)) = req.app_data::<BodyIdleTimeout>().copied() {
        match req.take_payload() {
            Payload::None => {}
            payload => req.set_payload(Payload::Stream {
                payload: Box::pin(IdleTimeout::new(payload, idle)),
            }),
        }
    }
    next.call(req).await
}

/// A body stream that fails with `TimedOut` once nothing arrived for `idle`.
pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    /// Armed at the first poll, so the time a handler takes before reading counts for nothing.
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            done: false,
        }
    }
}

impl<S> Stream for IdleTimeout<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                match &item {
                    None | Some(Err(_)) => this.done = true,
                    Some(Ok(_)) => {
                        let deadline = Instant::now() + this.idle;
                        if let Some(timer) = &mut this.timer {
                            timer.as_mut().reset(deadline);
                        }
                    }
                }
                Poll::Ready(item)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        this.done = true;
                        metrics::request_refused(Refusal::BodyTimeout);
                        Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the body sent nothing for {} s", idle.as_secs()),
                        )))))
                    }
                }
            }
        }
    }
}
