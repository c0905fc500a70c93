//! Streams parked behind an event Kafka refused for good: parking one, and
//! publishing the held events of those an operator marked (`parked
//! retry|skip`).

use crate::event::OutboxEvent;
use crate::leader;
use crate::parked;
use crate::publisher::PublishError;

use super::leadership::Leadership;
use super::RelayError;

impl Leadership<'_> {
    /// Parks `event`'s stream: Kafka refused it for good, for `error`.
    pub(super) async fn park(
        &mut self,
        event: &OutboxEvent,
        error: &str,
    ) -> Result<(), RelayError> {
        let name = &self.relay.settings.name;
        leader::within(
            self.lock.deadline(),
            parked::park(self.lock.conn(), name, event, error),
        )
        .await?;
        self.relay.metrics.parked_events.inc();
        tracing::error!(stream = %event.aggregate_id, event_id = %event.event_id,
            position = event.position, %error,
            "Kafka refused an event for good; its stream is parked behind it \
             (outbox-relay parked list, then retry or skip)");
        Ok(())
    }

    /// Publishes the held events of every parked stream an operator marked,
    /// one at a time and in order, up to the checkpoint (later ones are read
    /// as usual once the row is gone); then unparks it. Refused again, the
    /// stream stays parked at the refused event. Called with an empty window,
    /// so nothing of the stream is in flight.
    pub(super) async fn redrive_parked(&mut self) -> Result<(), RelayError> {
        let name = self.relay.settings.name.clone();
        let lock = &mut self.lock;
        let all = leader::within(lock.deadline(), parked::list(lock.conn(), &name)).await?;
        self.relay.metrics.parked_events.set(all.len() as i64);
        let marked: Vec<_> = all.into_iter().filter(|p| p.action.is_some()).collect();
        if !marked.is_empty() {
            // A retry usually follows a raised limit.
            self.relay.publisher.refresh_record_limit().await;
        }
        for stream in marked {
            let acked = self.checkpoints.acked();
            let held = leader::within(
                self.lock.deadline(),
                parked::held_events(self.lock.conn(), &stream, acked),
            )
            .await?;
            let mut refused = None;
            for event in &held {
                self.lock.ensure_leading().await?;
                let one = std::slice::from_ref(event);
                match self.relay.publisher.publish(one).await {
                    Ok(latency) => self.relay.record_success(one, latency),
                    Err(PublishError::Rejected { source, .. }) => {
                        refused = Some((event, source.to_string()));
                        break;
                    }
                    Err(err @ PublishError::TooLarge { .. }) => {
                        refused = Some((event, err.to_string()));
                        break;
                    }
                    Err(err) => {
                        // Transient: the row keeps its action; tried again later.
                        tracing::warn!(error = %err, stream = %stream.aggregate_id,
                            "publishing a parked stream failed; trying again at the next check");
                        return Ok(());
                    }
                }
            }
            match refused {
                Some((event, error)) => self.park(event, &error).await?,
                None => {
                    leader::within(
                        self.lock.deadline(),
                        parked::release(self.lock.conn(), &name, stream.aggregate_id),
                    )
                    .await?;
                    self.relay.metrics.parked_events.dec();
                    tracing::info!(stream = %stream.aggregate_id, events = held.len(),
                        action = ?stream.action, "parked stream published and released");
                }
            }
        }
        Ok(())
    }
}
