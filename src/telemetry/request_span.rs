//! The request span, opened when a line is written inside it (issue 23).
//!
//! Every request has a span, `request{method=… uri=… request_id=…}`, so
//! that each line written while it is served says which request it was.
//! tracing-subscriber opens a span by formatting its fields into a string
//! and storing it in its registry, then enters and leaves it on every poll:
//! about 7,000 instructions per request at the default level (info), where
//! nearly every request writes no line at all.
//!
//! So a request keeps only what its span would say ([`RequestContext`]).
//! While the request is polled, that sits in a thread-local ([`enter`]);
//! [`LazySpans`], wrapped around the subscriber, opens the span when the
//! first line of the request is written, enters it around each line, and
//! the context closes it when the request ends. A line reads as it did
//! with the span opened up front, in either log format.

use std::cell::RefCell;

use axum::http::{HeaderValue, Method};
use tracing::callsite::{DefaultCallsite, Identifier};
use tracing::field::{FieldSet, Value, display};
use tracing::level_filters::LevelFilter;
use tracing::metadata::Kind;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::{Interest, Subscriber};
use tracing::{Dispatch, Event, Level, Metadata};
use tracing_core::span::Current;

/// Where the span says it comes from, as when `trace.rs` opened it.
const TARGET: &str = "progressd::http::trace";

static CALLSITE: DefaultCallsite = DefaultCallsite::new(&META);
static META: Metadata<'static> = Metadata::new(
    "request",
    TARGET,
    Level::INFO,
    Some(file!()),
    Some(line!()),
    Some(TARGET),
    FieldSet::new(&["method", "uri", "request_id"], Identifier(&CALLSITE)),
    Kind::SPAN,
);

thread_local! {
    /// The request being polled on this thread, if its span is on.
    static CURRENT: RefCell<Option<Box<RequestContext>>> = const { RefCell::new(None) };
}

/// Whether the filter lets request spans through (info or finer for `progressd::http::trace`).
/// Asked as tracing's own macros ask: the callsite's cached interest
/// decides when it can (`always`, `never`), the subscriber only when it is
/// `sometimes`.
pub fn enabled() -> bool {
    if Level::INFO > LevelFilter::current() {
        return false;
    }
    let interest = CALLSITE.interest();
    !interest.is_never()
        && (interest.is_always() || tracing::dispatcher::get_default(|dispatch| dispatch.enabled(&META)))
}

/// What a request's span says, and the span once a line opened it.
pub struct RequestContext {
    method: Method,
    /// The request's path, copied: the request's `Uri` is a slice of
    /// hyper's read buffer, and a context holding it kept that buffer
    /// shared when the connection read the next request, so hyper copied
    /// it into a new one (about 550 instructions and an allocation a
    /// request at `info`, issue 23).
    path: Box<str>,
    request_id: HeaderValue,
    span: Option<Id>,
}

impl RequestContext {
    /// The context of a request, boxed: it moves in and out of the
    /// thread-local on every poll, and 170 bytes cost more to move each
    /// time than the one allocation.
    pub fn new(method: Method, path: &str, request_id: HeaderValue) -> Box<Self> {
        Box::new(Self { method, path: path.into(), request_id, span: None })
    }

    /// The request's span, opened now if no line has opened it yet; `None`
    /// when the subscriber does not want it.
    fn open(&mut self, subscriber: &impl Subscriber) -> Option<Id> {
        if self.span.is_none() && subscriber.enabled(&META) {
            let fields = META.fields();
            let (method, uri, request_id) =
                (fields.field("method")?, fields.field("uri")?, fields.field("request_id")?);
            let method_value = display(&self.method);
            let uri_value = display(&self.path);
            let request_id_value = display(self.request_id.to_str().unwrap_or(""));
            let values: [(&_, Option<&dyn Value>); 3] =
                [(&method, Some(&method_value)), (&uri, Some(&uri_value)), (&request_id, Some(&request_id_value))];
            let values = fields.value_set(&values);
            self.span = Some(subscriber.new_span(&Attributes::new(&META, &values)));
        }
        self.span.clone()
    }
}

impl Drop for RequestContext {
    fn drop(&mut self) {
        if let Some(span) = self.span.take() {
            tracing::dispatcher::get_default(|dispatch| dispatch.try_close(span.clone()));
        }
    }
}

/// Makes `slot`'s request the current one on this thread until the guard
/// is dropped; nothing when `slot` is empty (spans off).
pub fn enter(slot: &mut Option<Box<RequestContext>>) -> Option<Entered<'_>> {
    slot.as_ref()?;
    let previous = CURRENT.with(|current| current.replace(slot.take()));
    Some(Entered { slot, previous })
}

/// The guard of [`enter`]: gives the context back to its request (a
/// panicking poll included) and restores what was current before.
pub struct Entered<'a> {
    slot: &'a mut Option<Box<RequestContext>>,
    previous: Option<Box<RequestContext>>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        *self.slot = CURRENT.with(|current| current.replace(self.previous.take()));
    }
}

/// A subscriber that opens the current request's span for the first line
/// written inside it (see the module documentation); everything else goes
/// to `inner` as it is.
pub struct LazySpans<S> {
    inner: S,
}

impl<S: Subscriber> LazySpans<S> {
    /// `inner`, with request spans opened when needed.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: Subscriber> Subscriber for LazySpans<S> {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.inner.max_level_hint()
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner.record(span, values);
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner.record_follows_from(span, follows);
    }

    fn event_enabled(&self, event: &Event<'_>) -> bool {
        self.inner.event_enabled(event)
    }

    fn event(&self, event: &Event<'_>) {
        let span = CURRENT.with(|current| current.borrow_mut().as_mut().and_then(|request| request.open(&self.inner)));
        match span {
            Some(span) => {
                self.inner.enter(&span);
                self.inner.event(event);
                self.inner.exit(&span);
            }
            None => self.inner.event(event),
        }
    }

    fn enter(&self, span: &Id) {
        self.inner.enter(span);
    }

    fn exit(&self, span: &Id) {
        self.inner.exit(span);
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: Id) -> bool {
        self.inner.try_close(id)
    }

    fn current_span(&self) -> Current {
        self.inner.current_span()
    }
}
