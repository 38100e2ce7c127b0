//! Publishing with confirms: each batch on a confirm channel of its own,
//! every returned message paired with the publish it belongs to.
//!
//! # Why a channel per batch
//!
//! Every publish is `mandatory`: a message no queue takes (its queue was
//! deleted) is returned with `basic.return` and **then acked**, so an ack
//! alone does not say "stored". lapin hands a return to whichever confirm
//! on the channel completes next, and completes the confirms of a multiple
//! ack in no set order. On a channel that concurrent batches shared, a
//! returned message was reported stored (a 2xx for a message that went
//! nowhere) while a stored one was failed; 5 of 200 in a test with one
//! queue deleted. And a channel error (a 406) closed the channel under
//! every batch on it.
//!
//! So a batch leases a channel for itself ([`Lease`]): every confirm and
//! every return on it is the batch's own. Each returned message is matched
//! to its publish by queue and message id. The return comes before its
//! message's ack, and is handed to a confirm that completes no later than
//! that ack; so when a message's confirm is in, every return that could be
//! its own is too, in this or another confirm of the batch already
//! completed, and those are all read before the message is called stored.
//! A channel goes back to the pool only when the batch saw every confirm
//! and no error: one with confirms outstanding or a broken state is closed.

use std::{collections::HashMap, time::Duration};

use futures::FutureExt as _;
use lapin::{
    options::BasicPublishOptions, types::ShortString, BasicProperties, Channel, Confirmation,
    PublisherConfirm,
};
use tokio::{sync::OwnedSemaphorePermit, time::Instant};

use super::{bounded, close_channel, queue_error, short, Link};
use crate::QueueError;

/// A confirm channel leased to one batch. Dropped, it goes back to its
/// link's pool if [`Lease::keep`] was called, and is closed otherwise.
pub(super) struct Lease<'a> {
    pub(super) link: &'a Link,
    pub(super) channel: Channel,
    pub(super) keep: bool,
    pub(super) _permit: OwnedSemaphorePermit,
}

impl Lease<'_> {
    /// The channel is in a known, clean state: no confirm outstanding.
    pub(super) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.keep && self.channel.status().connected() {
            self.link.give_back(self.channel.clone());
        } else {
            close_channel(&self.channel, self.link.timeout, "spillway: publish failed or cut short");
        }
    }
}

/// One message of a batch: where it goes, or why it never reached the wire.
pub(super) type Item<'b> = Result<(String, &'b [u8], BasicProperties), QueueError>;

/// Which publish a returned message belongs to: its queue and message id.
type Key = (String, String);

fn key(route: &str, props: &BasicProperties) -> Key {
    (route.to_owned(), props.message_id().as_ref().map(|id| id.to_string()).unwrap_or_default())
}

enum Slot {
    /// Never reached the wire.
    Refused(QueueError),
    /// Published; its confirm not read yet.
    Waiting(Key, PublisherConfirm),
    /// Its confirm is in, its outcome not reported yet.
    Confirmed(Key, Box<Result<Confirmation, lapin::Error>>),
    Reported,
}

/// Publishes `items` in order on the lease's channel, then reports each
/// outcome in order as its confirm arrives: `Ok` only for an ack of a
/// message that was not returned. Every outcome is due by `deadline`
/// (`Timeout` past it: the broker may or may not have the message).
pub(super) async fn publish_batch(
    mut lease: Lease<'_>,
    items: Vec<Item<'_>>,
    deadline: Instant,
    report: &mut (dyn FnMut(usize, Result<(), QueueError>) + Send),
) {
    let left = || deadline.saturating_duration_since(Instant::now());
    let budget = left();
    let mut clean = true;
    let mut slots = Vec::with_capacity(items.len());
    for item in items {
        slots.push(match item {
            Err(e) => Slot::Refused(e),
            Ok((route, body, props)) => {
                let k = key(&route, &props);
                match bounded(left(), start(&lease.channel, &route, body, props)).await {
                    Ok(confirm) => Slot::Waiting(k, confirm),
                    Err(e) => {
                        clean = false;
                        Slot::Refused(e)
                    }
                }
            }
        });
    }
    let mut returned: HashMap<Key, usize> = HashMap::new();
    for i in 0..slots.len() {
        let outcome = match std::mem::replace(&mut slots[i], Slot::Reported) {
            Slot::Refused(e) => Err(e),
            Slot::Waiting(k, confirm) => match tokio::time::timeout(left(), confirm).await {
                Err(_) => {
                    clean = false;
                    Err(QueueError::Timeout { after: budget })
                }
                Ok(confirmed) => {
                    collect_returns(&mut slots[i + 1..], &mut returned);
                    decide(&k, confirmed, &mut returned, &mut clean)
                }
            },
            Slot::Confirmed(k, confirmed) => decide(&k, *confirmed, &mut returned, &mut clean),
            Slot::Reported => continue,
        };
        report(i, outcome);
    }
    if clean {
        lease.keep();
    }
}

/// Reads every confirm of `later` that is already in, and takes the
/// returned message any of them carries.
fn collect_returns(later: &mut [Slot], returned: &mut HashMap<Key, usize>) {
    for slot in later {
        if let Slot::Waiting(k, confirm) = slot {
            if let Some(mut confirmed) = confirm.now_or_never() {
                take_return(&mut confirmed, returned);
                *slot = Slot::Confirmed(std::mem::take(k), Box::new(confirmed));
            }
        }
    }
}

/// Moves the returned message a confirm carries (whoever's it is) to `returned`.
fn take_return(confirmed: &mut Result<Confirmation, lapin::Error>, returned: &mut HashMap<Key, usize>) {
    if let Ok(Confirmation::Ack(r) | Confirmation::Nack(r)) = confirmed {
        if let Some(r) = r.take() {
            *returned.entry(key(r.delivery.routing_key.as_str(), &r.delivery.properties)).or_default() += 1;
        }
    }
}

/// The outcome of the publish keyed `k` whose confirm is `confirmed`.
fn decide(
    k: &Key,
    mut confirmed: Result<Confirmation, lapin::Error>,
    returned: &mut HashMap<Key, usize>,
    clean: &mut bool,
) -> Result<(), QueueError> {
    take_return(&mut confirmed, returned);
    let queue = k.0.as_str();
    match confirmed {
        Err(e) => {
            *clean = false;
            Err(queue_error("publish confirm", queue, &e))
        }
        Ok(Confirmation::Ack(_)) => match returned.get_mut(k) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(QueueError::NotFound(queue.to_owned()))
            }
            _ => Ok(()),
        },
        Ok(Confirmation::Nack(_)) => {
            // Retired: a channel keeps client state for each quorum queue it
            // published to, and one opened while a queue's leader was being
            // elected again had every later publish nacked.
            *clean = false;
            Err(QueueError::unavailable_msg(format!(
                "rabbitmq: the broker did not store the message for `{queue}` (nack)"
            )))
        }
        Ok(Confirmation::NotRequested) => {
            *clean = false;
            Err(QueueError::unavailable_msg("rabbitmq: confirms are not enabled"))
        }
    }
}

async fn start(
    ch: &Channel,
    queue: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<PublisherConfirm, QueueError> {
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    ch.basic_publish(ShortString::from(""), short(queue)?, options, body, props)
        .await
        .map_err(|e| queue_error("publish", queue, &e))
}

/// Publishes one message on a channel of its own and waits for its
/// confirm, at most `timeout`.
pub(super) async fn publish_one(
    link: &Link,
    queue: &str,
    body: &[u8],
    props: BasicProperties,
    timeout: Duration,
) -> Result<(), QueueError> {
    let deadline = Instant::now() + timeout;
    let lease = link.publisher().await?;
    let mut outcome = None;
    publish_batch(lease, vec![Ok((queue.to_owned(), body, props))], deadline, &mut |_, o| outcome = Some(o))
        .await;
    outcome.unwrap_or_else(|| Err(QueueError::unavailable_msg("rabbitmq: no confirm outcome")))
}
