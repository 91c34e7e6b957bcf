//! Signed webhooks when a job ends or stalls (Standard Webhooks format).
//!
//! - **Recording** ([`Webhooks::record`]): a write that causes an event
//!   (`domain::events_of_write`) records one delivery per target that wants
//!   it in the store's outbox (`store/outbox/`) before the write is
//!   acknowledged. Writes that cause none pay one check of a bit set.
//! - **Delivering** (`deliver.rs`): a task per instance claims due
//!   deliveries (a lease: one instance at a time each), sends them beside
//!   the request path with a timeout and a bound on those in flight, and
//!   settles them: delivered, retried with backoff, or given up.
//! - **Stalls** (`stalls.rs`): a task pages through running records and
//!   records `progress.stalled` once per silence.
//!
//! Targets: the operator's `PROGRESS_WEBHOOK_URL` (its events from
//! `PROGRESS_WEBHOOK_EVENTS`) and a record's own `webhook` field, whose
//! host must be in `PROGRESS_WEBHOOK_ALLOWED_HOSTS` when it is written and
//! again when it is sent.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{Notify, watch};

use crate::domain::{
    EventSet, HookEvent, ProgressId, StoredRecord, Timestamp, ValidationError, parse_webhook_url, require_webhook_url,
    url_host, webhook_target,
};
use crate::settings::Settings;
use crate::store::{Delivery, DeliveryState, Outbox};

mod deliver;
mod schedule;
mod stalls;

pub use deliver::Outcome;
pub use schedule::{MAX_INTERVAL, retry_delay};

/// Deliveries held in memory because no store could record them, at most.
const MAX_UNRECORDED: usize = 10_000;

/// A stored event name as a static metric label.
fn event_label(event: &str) -> &'static str {
    HookEvent::parse(event).map_or("other", HookEvent::as_str)
}

/// Which hosts a record's own `webhook.url` may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    /// Any host (`*`).
    Any,
    /// These (lower case; IPv6 without brackets).
    Only(HashSet<String>),
}

impl AllowedHosts {
    /// From `PROGRESS_WEBHOOK_ALLOWED_HOSTS`'s entries.
    pub fn from_list(entries: &[String]) -> Self {
        if entries.iter().any(|e| e == "*") {
            return AllowedHosts::Any;
        }
        let hosts = entries
            .iter()
            .map(|e| e.trim().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        AllowedHosts::Only(hosts)
    }

    /// Whether a record's webhook may be sent to `url`; else why not.
    pub fn check(&self, url: &str) -> Result<(), String> {
        let parsed = parse_webhook_url(url)?;
        let host = url_host(&parsed);
        match self {
            AllowedHosts::Any => Ok(()),
            AllowedHosts::Only(hosts) if hosts.contains(&host) => Ok(()),
            AllowedHosts::Only(hosts) if hosts.is_empty() => Err(format!(
                "names host {host:?}, but PROGRESS_WEBHOOK_ALLOWED_HOSTS is empty: records may not name a webhook"
            )),
            AllowedHosts::Only(_) => {
                Err(format!("names host {host:?}, which is not in PROGRESS_WEBHOOK_ALLOWED_HOSTS"))
            }
        }
    }
}

/// A secret the Standard Webhooks libraries take: `whsec_` and the base64
/// of 24 to 64 bytes.
pub fn check_secret(secret: &str) -> Result<(), String> {
    use base64::Engine;
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return Err("must start with whsec_ (Standard Webhooks), then base64 of 24 to 64 random bytes".into());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "after whsec_ must come standard base64 (A-Z, a-z, 0-9, +, /, = padding)".to_owned())?;
    if !(24..=64).contains(&bytes.len()) {
        return Err(format!("holds {} bytes after whsec_; it must hold 24 to 64", bytes.len()));
    }
    Ok(())
}

/// What webhooks are set up to do.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `PROGRESS_WEBHOOK_URL`.
    pub operator_url: Option<String>,
    /// `PROGRESS_WEBHOOK_EVENTS`.
    pub operator_events: EventSet,
    /// `PROGRESS_WEBHOOK_ALLOWED_HOSTS`.
    pub allowed: AllowedHosts,
    /// `PROGRESS_WEBHOOK_SECRET`.
    pub secret: String,
    /// How long a delivery is retried.
    pub retry_for: Duration,
    /// Longest a receiver may take.
    pub timeout: Duration,
    /// Most deliveries in flight on this instance.
    pub concurrency: usize,
    /// `PROGRESS_HEARTBEAT_SECONDS` in ms: how often stalls are looked for.
    pub heartbeat_ms: i64,
}

impl WebhookConfig {
    /// From the settings; `None` when no webhook can be sent (no secret).
    pub fn from_settings(settings: &Settings) -> Option<Self> {
        let secret = settings.webhook_secret.clone()?;
        Some(Self {
            operator_url: settings.webhook_url.clone(),
            operator_events: EventSet::parse_list(&settings.webhook_events).unwrap_or_default(),
            allowed: AllowedHosts::from_list(&settings.webhook_allowed_hosts),
            secret,
            retry_for: Duration::from_secs(settings.webhook_retry_hours.saturating_mul(3600)),
            timeout: Duration::from_secs(settings.webhook_timeout_seconds),
            concurrency: settings.webhook_concurrency,
            heartbeat_ms: i64::try_from(settings.heartbeat_seconds).unwrap_or(i64::MAX / 1000) * 1000,
        })
    }

    /// Whether any target may want `event`: the operator's, or (when some
    /// host is allowed) a record's own.
    fn may_want(&self, event: HookEvent) -> bool {
        let operator = self.operator_url.is_some() && self.operator_events.contains(event);
        operator || self.allowed != AllowedHosts::Only(HashSet::new())
    }
}

/// Webhooks of one instance: the configuration, the outbox, the signer and
/// what could not be recorded yet.
pub struct Webhooks {
    config: WebhookConfig,
    outbox: Arc<dyn Outbox>,
    signer: standardwebhooks::Webhook,
    /// Deliveries no store could take when their write was acknowledged
    /// (the write went through, so this is rare: the store failed between
    /// the two); recorded by the delivery task when one can.
    unrecorded: Mutex<VecDeque<Delivery>>,
    /// Wakes the delivery task when this instance records a delivery.
    recorded: Notify,
    stop: watch::Sender<bool>,
}

impl Webhooks {
    /// Webhooks over `outbox`; nothing runs until [`Webhooks::spawn`].
    pub fn new(config: WebhookConfig, outbox: Arc<dyn Outbox>) -> Result<Self, String> {
        let signer = standardwebhooks::Webhook::new(&config.secret).map_err(|e| e.to_string())?;
        Ok(Self {
            config,
            outbox,
            signer,
            unrecorded: Mutex::new(VecDeque::new()),
            recorded: Notify::new(),
            stop: watch::Sender::new(false),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// The outbox (for the admin routes and the metrics).
    pub fn outbox(&self) -> &Arc<dyn Outbox> {
        &self.outbox
    }

    /// Pending deliveries (soonest due first), then those given up; at most `limit`.
    pub async fn deliveries(&self, limit: usize) -> Result<Vec<Delivery>, crate::store::StoreError> {
        self.outbox.list(limit).await
    }

    /// Makes a pending or given-up delivery due now, with a new retry
    /// window; `false` when there is none with that id.
    pub async fn retry(&self, id: &str) -> Result<bool, crate::store::StoreError> {
        let now = Timestamp::now().millis();
        let until = now.saturating_add(i64::try_from(self.config.retry_for.as_millis()).unwrap_or(i64::MAX));
        let found = self.outbox.retry(id, now, until).await?;
        if found {
            self.recorded.notify_one();
        }
        Ok(found)
    }

    /// Stops the delivery and stall tasks (attempts in flight finish; what
    /// they leave unsettled is claimed again when its lease ends).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Checks a record's `webhook` as written: its host must be allowed.
    pub fn check_record_target(&self, webhook: &Map<String, Value>) -> Result<(), ValidationError> {
        let url = require_webhook_url(webhook).map_err(|(path, message)| ValidationError::new(path, message))?;
        self.config.allowed.check(url).map_err(|message| ValidationError::new("webhook.url", message))
    }

    /// The events of `caused` that some target of the record wants.
    pub fn wanted(&self, caused: EventSet, own: Option<&Map<String, Value>>) -> EventSet {
        if caused.is_empty() {
            return caused;
        }
        let mut wanted = EventSet::EMPTY;
        if self.config.operator_url.is_some() {
            wanted = wanted.union(self.config.operator_events);
        }
        if let Some((_, events)) = own.and_then(webhook_target) {
            wanted = wanted.union(events);
        }
        caused.intersection(wanted)
    }

    /// Records the deliveries of `events` for `record` (just written, or
    /// found stalled) in the outbox; whatever no store can take is kept in
    /// memory and recorded later. `keep_until_ms`: how long a delivered
    /// one keeps the same delivery from being recorded again.
    pub async fn record(
        &self,
        id: &ProgressId,
        record: &StoredRecord,
        events: EventSet,
        own: Option<&Map<String, Value>>,
        keep_until_ms: i64,
    ) {
        let now = Timestamp::now();
        let data = record.render(now.millis());
        let mut deliveries = Vec::new();
        for event in events.iter() {
            let targets = self.targets(event, own);
            for (url, operator) in targets {
                deliveries.push(self.delivery(id, record, event, &url, operator, &data, now, keep_until_ms));
            }
        }
        for delivery in deliveries {
            crate::metrics::webhook_recorded(event_label(&delivery.event));
            match self.outbox.enqueue(&delivery).await {
                Ok(_) => self.recorded.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, webhook_id = %delivery.id, "cannot record a webhook delivery yet; holding it in memory");
                    let mut held = self.unrecorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if held.len() >= MAX_UNRECORDED {
                        held.pop_front();
                        tracing::error!("too many webhook deliveries waiting to be recorded; dropped the oldest");
                    }
                    held.push_back(delivery);
                }
            }
        }
    }

    /// Records what [`Webhooks::record`] had to hold in memory, while a
    /// store takes it; what still cannot be recorded stays held.
    async fn record_held(&self) {
        loop {
            let next = self.unrecorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop_front();
            let Some(delivery) = next else { return };
            if let Err(e) = self.outbox.enqueue(&delivery).await {
                tracing::debug!(error = %e, "still cannot record a held webhook delivery");
                self.unrecorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_front(delivery);
                return;
            }
        }
    }

    /// Where `event` goes: `(url, whether it is the operator's)`.
    fn targets(&self, event: HookEvent, own: Option<&Map<String, Value>>) -> Vec<(String, bool)> {
        let mut targets = Vec::new();
        if let Some(url) = &self.config.operator_url
            && self.config.operator_events.contains(event)
        {
            targets.push((url.clone(), true));
        }
        if let Some((url, events)) = own.and_then(webhook_target)
            && events.contains(event)
            && !targets.iter().any(|(u, _)| *u == url)
        {
            targets.push((url, false));
        }
        targets
    }

    /// One delivery. Its id is a hash of the record's incarnation, version,
    /// the event and the URL, so the same event is recorded once however
    /// often (or by however many instances) it is found.
    #[allow(clippy::too_many_arguments)]
    fn delivery(
        &self,
        id: &ProgressId,
        record: &StoredRecord,
        event: HookEvent,
        url: &str,
        operator: bool,
        data: &[u8],
        now: Timestamp,
        keep_until_ms: i64,
    ) -> Delivery {
        let meta = record.meta();
        let key = format!("{}\n{}\n{}\n{}\n{url}", id.as_str(), meta.c, meta.v, event.as_str());
        let hash = hmac_sha256::Hash::hash(key.as_bytes());
        let hex: String = hash.iter().take(16).map(|b| format!("{b:02x}")).collect();
        let mut body = Vec::with_capacity(data.len() + 80);
        body.extend_from_slice(br#"{"type":""#);
        body.extend_from_slice(event.as_str().as_bytes());
        body.extend_from_slice(br#"","timestamp":""#);
        body.extend_from_slice(now.to_rfc3339().as_bytes());
        body.extend_from_slice(br#"","data":"#);
        body.extend_from_slice(data);
        body.push(b'}');
        Delivery {
            id: format!("msg_{hex}"),
            event: event.as_str().to_owned(),
            record: id.as_str().to_owned(),
            url: url.to_owned(),
            operator,
            body: String::from_utf8(body).unwrap_or_default(),
            created_ms: now.millis(),
            deadline_ms: now
                .millis()
                .saturating_add(i64::try_from(self.config.retry_for.as_millis()).unwrap_or(i64::MAX)),
            attempts: 0,
            next_ms: now.millis(),
            state: DeliveryState::Pending,
            keep_until_ms,
            last_error: None,
        }
    }

    /// Starts the delivery task and, when some target may want stalls, the
    /// stall task (over `service`'s listing); both stop with [`Webhooks::stop`].
    pub fn spawn(self: &Arc<Self>, service: crate::service::ProgressService) {
        tokio::spawn(deliver::run(self.clone()));
        if self.config.may_want(HookEvent::Stalled) {
            tokio::spawn(stalls::run(self.clone(), service));
        }
    }
}

#[cfg(test)]
mod tests;
