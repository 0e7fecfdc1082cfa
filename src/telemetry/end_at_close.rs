//! The OpenTelemetry layer without its per-poll callbacks: the bench-only peer pipeline
//! (`peer`), which records through `tracing-opentelemetry` as the service did before it recorded
//! its own spans (`record`, which does nothing on enter and exit to begin with).
//!
//! `tracing-opentelemetry` does two things when a span is entered or exited: with context
//! activation or inactivity tracking (both off here) it attaches a context or counts time, and
//! on every exit it looks the span up, locks its data and reads the clock to set the end time to
//! the latest exit. Actix and tokio poll a request's future, and so enter and exit its spans,
//! several times per request (the root span on every poll of the handler and of the body, a
//! Redis span on every poll of its command), and a per-layer filter adds its own lookup on each.
//!
//! [`EndAtClose`] forwards every callback but those two, so a span's end time is when it closes
//! (the last handle dropped) instead of its last exit. For our spans the two are the same point
//! or microseconds apart: a root span closes when its response body has been written, which
//! is also its last exit; a Redis span closes as its command returns; a query span is never
//! entered at all.

use std::any::TypeId;

use tracing::level_filters::LevelFilter;
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Wraps a layer and drops its `on_enter` / `on_exit` (see the module documentation).
pub struct EndAtClose<L>(pub L);

impl<S: Subscriber, L: Layer<S>> Layer<S> for EndAtClose<L> {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        self.0.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.0.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.0.enabled(metadata, ctx)
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, ctx);
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_record(&self, span: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.0.on_record(span, values, ctx);
    }

    fn on_follows_from(&self, span: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.0.on_follows_from(span, follows, ctx);
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.0.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.0.on_event(event, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.0.on_id_change(old, new, ctx);
    }

    // SAFETY: returns a pointer to `self` for its own type, and otherwise what the wrapped layer
    // returns (`OpenTelemetrySpanExt` finds the OpenTelemetry layer's `WithContext` this way,
    // and the registry the per-layer filter).
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            Some(self as *const Self as *const ())
        } else {
            // SAFETY: forwarded unchanged; the wrapped layer upholds the same contract.
            unsafe { self.0.downcast_raw(id) }
        }
    }
}
