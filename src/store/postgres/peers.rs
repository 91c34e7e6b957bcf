//! [`Peers`] for PostgreSQL: the heartbeat rows of `progress_instances`
//! (`migrations/V5__instances.sql`) and the `progress_peers` channel, which
//! one connection of each instance listens to (`LISTEN`), apart from the
//! pool, reconnecting with backoff.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_postgres::AsyncMessage;

use super::PostgresStore;
use super::queries::{CONFIRM_FLUSH, FLUSH_STATE, HEARTBEAT, LEAVE, NOTIFY_FLUSHED, PEER_CHANNEL, REQUEST_FLUSH};
use super::session::describe;
use crate::domain::Timestamp;
use crate::metrics::store_op;
use crate::store::{FlushState, PeerNotice, Peers, StoreError};

/// How often the listening connection is checked with a query.
const LISTEN_CHECK: Duration = Duration::from_secs(5);

/// The listening connection's side: where notices go.
pub(super) struct PeerChannel {
    notices: broadcast::Sender<PeerNotice>,
    started: std::sync::Once,
}

impl Default for PeerChannel {
    fn default() -> Self {
        Self { notices: broadcast::Sender::new(64), started: std::sync::Once::new() }
    }
}

impl Peers for PostgresStore {
    async fn heartbeat(&self, me: &str) -> Result<(), StoreError> {
        self.query_counted(store_op!("postgres", "heartbeat"), HEARTBEAT, &[&me]).await.map(drop)
    }

    async fn request_flush(&self, at: Option<Timestamp>) -> Result<Timestamp, StoreError> {
        let at = at.map(Timestamp::millis);
        let rows = self.query_counted(store_op!("postgres", "request_flush"), REQUEST_FLUSH, &[&at]).await?;
        let at = rows.first().map(|row| row.get::<_, i64>(0)).ok_or_else(|| pg_unavailable("no request time"))?;
        Ok(Timestamp(at))
    }

    async fn confirm_flush(&self, me: &str, at: Timestamp, redis_up: bool) -> Result<(), StoreError> {
        let op = store_op!("postgres", "confirm_flush");
        self.query_counted(op, CONFIRM_FLUSH, &[&me, &at.millis(), &redis_up]).await?;
        self.query_counted(op, NOTIFY_FLUSHED, &[]).await.map(drop)
    }

    async fn flush_state(&self, at: Timestamp, live_ms: i64) -> Result<FlushState, StoreError> {
        let op = store_op!("postgres", "flush_state");
        let rows = self.query_counted(op, FLUSH_STATE, &[&at.millis(), &live_ms]).await?;
        let row = rows.first().ok_or_else(|| pg_unavailable("no answer to the flush state"))?;
        let (waiting, redis_up) = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        Ok(match (waiting, redis_up) {
            (_, 1..) => FlushState::RedisUpElsewhere,
            (1.., _) => FlushState::Waiting,
            _ => FlushState::Flushed,
        })
    }

    async fn leave(&self, me: &str) -> Result<(), StoreError> {
        self.query_counted(store_op!("postgres", "leave"), LEAVE, &[&me]).await.map(drop)
    }

    fn peer_notices(&self) -> broadcast::Receiver<PeerNotice> {
        let receiver = self.peers.notices.subscribe();
        self.peers.started.call_once(|| {
            let (config, tls, notices) = (self.pg_config.clone(), self.tls.clone(), self.peers.notices.clone());
            tokio::spawn(listen(config, tls, notices, self.timeout));
        });
        receiver
    }
}

fn pg_unavailable(reason: &str) -> StoreError {
    StoreError::Unavailable { tier: "postgres", reason: reason.to_owned() }
}

/// What a notification on the channel says; `None` for anything else.
fn parse_notice(payload: &str) -> Option<PeerNotice> {
    match payload.split_once(':') {
        Some(("flush", at)) => at.parse().ok().map(|at| PeerNotice::FlushRequested(Timestamp(at))),
        None if payload == "flushed" => Some(PeerNotice::Flushed),
        _ => None,
    }
}

/// Listens on the channel for as long as anyone holds a receiver: connects,
/// `LISTEN`s, passes each notice on, checks the connection every
/// [`LISTEN_CHECK`], and reconnects with backoff when it is lost (sending
/// [`PeerNotice::Resumed`], since notices may have been missed).
async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    notices: broadcast::Sender<PeerNotice>,
    timeout: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    let mut lost = false;
    while notices.receiver_count() > 0 {
        match tokio::time::timeout(timeout, config.connect(tls.clone())).await {
            Ok(Ok((client, mut connection))) => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let AsyncMessage::Notification(n) = message
                            && tx.send(n.payload().to_owned()).is_err()
                        {
                            return;
                        }
                    }
                });
                let sql = format!("LISTEN {PEER_CHANNEL}");
                if let Ok(Ok(())) = tokio::time::timeout(timeout, client.batch_execute(&sql)).await {
                    backoff = Duration::from_millis(100);
                    if std::mem::take(&mut lost) {
                        let _ = notices.send(PeerNotice::Resumed);
                    }
                    loop {
                        tokio::select! {
                            payload = rx.recv() => match payload {
                                Some(payload) => {
                                    if let Some(notice) = parse_notice(&payload) {
                                        let _ = notices.send(notice);
                                    }
                                }
                                None => break,
                            },
                            () = tokio::time::sleep(LISTEN_CHECK) => {
                                if notices.receiver_count() == 0 {
                                    driver.abort();
                                    return;
                                }
                                let check = tokio::time::timeout(timeout, client.simple_query("SELECT 1")).await;
                                if !matches!(check, Ok(Ok(_))) {
                                    break;
                                }
                            }
                        }
                    }
                }
                driver.abort();
                tracing::debug!("the connection listening for other instances' notices was lost; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(error = %describe(&e), "cannot listen for other instances' notices yet"),
            Err(_) => tracing::debug!("cannot listen for other instances' notices yet: no answer"),
        }
        lost = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_read_and_anything_else_is_ignored() {
        assert_eq!(parse_notice("flush:1700000000123"), Some(PeerNotice::FlushRequested(Timestamp(1_700_000_000_123))));
        assert_eq!(parse_notice("flushed"), Some(PeerNotice::Flushed));
        assert_eq!(parse_notice("flush:soon"), None);
        assert_eq!(parse_notice("hello"), None);
        assert_eq!(parse_notice(""), None);
    }
}
