//! Change notices from Redis, for everything in this instance that must
//! hear about writes made through any instance.
//!
//! Every write and delete in Redis publishes `{version}:{id}` (version 0:
//! deleted) on `{prefix}progress:changes` from inside its Lua script, so the
//! notice leaves Redis in the same atomic step as the change. One task per
//! instance holds the subscription ([`ChangeNotices::listen`]) and hands each
//! notice to the attached [`ChangeSink`]s: the read cache drops its entry,
//! the live-update hub (`crate::live`) re-reads records that someone watches.
//! It pings to catch a connection that died silently and resubscribes with
//! backoff; sinks hear when notices stop and when they flow again (when they
//! may have missed some).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;

/// Something that acts on change notices.
pub trait ChangeSink: Send + Sync + 'static {
    /// Record `id` changed to `version` (0: deleted).
    fn changed(&self, id: &str, version: u64);

    /// Notices stopped (`false`) or flow again (`true`); anything may have
    /// changed in between. Also called with `true` for a notice that cannot
    /// be read.
    fn listening(&self, live: bool);
}

/// The subscription's state and the sinks it feeds.
pub struct ChangeNotices {
    sinks: Mutex<Vec<Weak<dyn ChangeSink>>>,
    live: AtomicBool,
}

impl ChangeNotices {
    /// Subscribes to `channel` in the background. The task ends once the
    /// returned value is dropped.
    pub fn listen(client: redis::Client, channel: String, ping_every: Duration) -> Arc<Self> {
        let notices = Arc::new(Self { sinks: Mutex::new(Vec::new()), live: AtomicBool::new(false) });
        tokio::spawn(listen(client, channel, Arc::downgrade(&notices), ping_every));
        notices
    }

    /// Feeds notices to `sink` from now on; it first hears whether they flow.
    pub fn attach(&self, sink: Weak<dyn ChangeSink>) {
        if let Some(s) = sink.upgrade() {
            s.listening(self.is_live());
        }
        self.lock().push(sink);
    }

    /// Whether the subscription is up and answering pings.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn ChangeSink>>> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn each(&self, f: impl Fn(&dyn ChangeSink)) {
        let sinks: Vec<_> = {
            let mut sinks = self.lock();
            sinks.retain(|s| s.strong_count() > 0);
            sinks.iter().filter_map(Weak::upgrade).collect()
        };
        for sink in sinks {
            f(sink.as_ref());
        }
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
        self.each(|s| s.listening(live));
    }

    /// A notice as published: `{version}:{id}`.
    fn deliver(&self, payload: &[u8]) {
        let parsed = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.split_once(':'))
            .and_then(|(v, id)| Some((v.parse::<u64>().ok()?, id)));
        match parsed {
            Some((version, id)) => self.each(|s| s.changed(id, version)),
            // Not a notice of ours: the safe answer is to assume anything changed.
            None => self.each(|s| s.listening(true)),
        }
    }
}

async fn listen(client: redis::Client, channel: String, notices: Weak<ChangeNotices>, ping_every: Duration) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if notices.strong_count() == 0 {
            return;
        }
        let connected = tokio::time::timeout(ping_every, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let Ok(Ok(pubsub)) = connected else {
            tracing::debug!("cannot subscribe to change notices yet; read cache off, live updates local only");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        backoff = Duration::from_millis(100);
        let (mut sink, mut messages) = pubsub.split();
        match notices.upgrade() {
            Some(n) => n.set_live(true),
            None => return,
        }
        tracing::debug!(%channel, "change notices flowing");
        let mut ping = tokio::time::interval(ping_every);
        ping.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let Some(n) = notices.upgrade() else { return };
                    n.deliver(message.get_payload_bytes());
                }
                _ = ping.tick() => {
                    if notices.strong_count() == 0 {
                        return;
                    }
                    let pong = tokio::time::timeout(ping_every, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        if let Some(n) = notices.upgrade() {
            n.set_live(false);
            tracing::warn!("change notices stopped; read cache off and live updates local until they resume");
        }
    }
}
