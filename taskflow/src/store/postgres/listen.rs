//! Wake-ups from other hosts: one connection of the store's own that
//! `LISTEN`s on the store's channel and turns each notification into a
//! [`Notify`](tokio::sync::Notify) the claimer waits on.
//!
//! Statements notify at commit: `ready` when a task became PENDING (an
//! insert, a requeue, a resumed queue), `changed` when tasks finished,
//! each followed by the notifying store's token: a store passes over its
//! own, whose changes its instance knows of already. A notification only
//! wakes; the claimer and the follower read the store to learn what
//! changed, so a lost one costs a poll interval, never a task. The
//! connection makes no query after its `LISTEN`. When it drops it is
//! opened again with backoff, and both wake-ups fire, since notifications
//! sent meanwhile were lost.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{AsyncMessage, NoTls};

use super::sql::quote;
use crate::store::Notifications;

/// The channel of the store in `schema`. Channel names are cut at 63
/// bytes; two long schema names sharing a prefix share a channel, which
/// costs only a spurious wake-up.
pub(super) fn channel(schema: &str) -> String {
    let mut channel = format!("taskflow.{schema}");
    channel.truncate(63);
    channel
}

/// Listens on `channel` until the store's runtime stops, passing over the
/// notifications marked with the store's own `token`.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    (channel, token): (String, String),
    wake: Arc<Notifications>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let statement = format!("LISTEN {}", quote(&channel));
                let listening = client.batch_execute(&statement);
                tokio::pin!(listening);
                let mut listened = false;
                loop {
                    tokio::select! {
                        outcome = &mut listening, if !listened => match outcome {
                            Ok(()) => {
                                listened = true;
                                backoff = Duration::from_millis(100);
                                // What was sent while nobody listened is lost.
                                wake.ready.notify_one();
                                wake.changed.notify_one();
                            }
                            Err(error) => {
                                tracing::warn!("cannot listen for task store changes: {error}");
                                break;
                            }
                        },
                        message = std::future::poll_fn(|cx| connection.poll_message(cx)) => {
                            match message {
                                Some(Ok(AsyncMessage::Notification(note))) => {
                                    deliver(note.payload(), &token, &wake);
                                }
                                Some(Ok(_)) => {}
                                Some(Err(error)) => {
                                    tracing::debug!(
                                        "the task store's listening connection closed: {error}"
                                    );
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                }
            }
            Err(error) => {
                tracing::debug!("cannot open the task store's listening connection: {error}");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Wakes the claimer for a notification `what from`, unless this store
/// (`token`) sent it.
fn deliver(payload: &str, token: &str, wake: &Notifications) {
    let (what, from) = payload.split_once(' ').unwrap_or((payload, ""));
    if from == token {
        return;
    }
    match what {
        "ready" => wake.ready.notify_one(),
        _ => wake.changed.notify_one(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_passes_over_its_own_notifications() {
        let wake = Notifications::default();
        deliver("ready me", "me", &wake);
        deliver("changed me", "me", &wake);
        deliver("changed other", "me", &wake);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let ready = std::pin::pin!(wake.ready.notified());
        assert!(
            ready.poll(&mut cx).is_pending(),
            "its own insert wakes nobody"
        );
        let changed = std::pin::pin!(wake.changed.notified());
        assert!(changed.poll(&mut cx).is_ready(), "another's change wakes");
    }

    #[test]
    fn channels_fit_postgres_names() {
        assert_eq!(channel("taskflow"), "taskflow.taskflow");
        assert_eq!(channel(&"s".repeat(63)).len(), 63);
    }
}
