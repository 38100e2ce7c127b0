//! The spool against the memory backend as the broker, behind a switch
//! that turns it off and on (a broker outage) and records, at each
//! confirm, what the spool still held.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use async_trait::async_trait;

use super::{Spool, SpoolConfig, SpoolWhen};
use crate::{
    embedded::EmbeddedBackend, memory::memory_backend, Admin as _, Backend as _, OutgoingMessage, Producer,
    QueueError, QueueSpec,
};

/// The broker, switchable: down, every send fails as a broker outage does.
struct Switch {
    inner: Arc<dyn Producer>,
    down: AtomicBool,
    /// Messages with this ordering key are refused (retryable), one by one.
    refuse_key: Mutex<Option<String>>,
    /// Ids in the order the broker confirmed them.
    confirmed: Mutex<Vec<String>>,
    /// At each confirm: how many messages the spool still held.
    held_at_confirm: Mutex<Vec<u64>>,
    spool: Mutex<Option<(EmbeddedBackend, String)>>,
}

impl Switch {
    fn new(inner: Arc<dyn Producer>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            down: AtomicBool::new(true),
            refuse_key: Mutex::default(),
            confirmed: Mutex::default(),
            held_at_confirm: Mutex::default(),
            spool: Mutex::default(),
        })
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn confirmed(&self) -> Vec<String> {
        self.confirmed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait]
impl Producer for Switch {
    async fn send_batch(
        &self,
        msgs: Vec<OutgoingMessage>,
    ) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(QueueError::unavailable_msg("broker down (test switch)"));
        }
        let refused = self.refuse_key.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if refused.is_some() {
            let mut outcomes = Vec::new();
            for m in msgs {
                if m.ordering_key == refused {
                    outcomes
                        .push(Err(QueueError::unavailable_msg("this key's partition is down (test switch)")));
                } else {
                    let id = m.id.clone();
                    let sent = self.inner.send(m).await;
                    if sent.is_ok() {
                        self.confirmed.lock().unwrap_or_else(PoisonError::into_inner).push(id);
                    }
                    outcomes.push(sent);
                }
            }
            return Ok(outcomes);
        }
        let ids: Vec<String> = msgs.iter().map(|m| m.id.clone()).collect();
        let outcomes = self.inner.send_batch(msgs).await?;
        let spool = self.spool.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some((local, queue)) = spool {
            let s = local.stats(&queue).await.expect("spool stats");
            self.held_at_confirm.lock().unwrap_or_else(PoisonError::into_inner).push(s.visible + s.in_flight);
        }
        self.confirmed.lock().unwrap_or_else(PoisonError::into_inner).extend(ids);
        Ok(outcomes)
    }

    fn max_message_bytes(&self) -> usize {
        self.inner.max_message_bytes()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    cfg: SpoolConfig,
    broker: EmbeddedBackend,
    switch: Arc<Switch>,
}

async fn setup(max_bytes: u64) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = SpoolConfig { path: dir.path().join("spool"), max_bytes, ..SpoolConfig::default() };
    let broker = memory_backend().expect("memory broker");
    broker.ensure(&QueueSpec::new("q")).await.expect("ensure");
    let switch = Switch::new(broker.producer("q").await.expect("producer"));
    Setup { _dir: dir, cfg, broker, switch }
}

fn keyed(id: &str, key: &str) -> OutgoingMessage {
    let mut m = OutgoingMessage::new(id, format!("body of {id}"));
    m.ordering_key = Some(key.to_owned());
    m
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "not within 20 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The route's logic (ingest's `Store`): the spool when the gate says so,
/// else the broker, and the spool for what the broker does not take.
/// Says where the message went.
async fn store(
    gate: Arc<super::Gate>,
    switch: Arc<Switch>,
    m: OutgoingMessage,
) -> Result<&'static str, QueueError> {
    if gate.spools(&m) {
        return gate.spool(m, None).await.map(|()| "spool");
    }
    match switch.send(m.clone()).await {
        Err(e) if e.is_retryable() => gate.spool(m, Some(&e)).await.map(|()| "spool"),
        other => other.map(|()| "broker"),
    }
}

/// A message leaves the spool only once the broker confirmed it: at every
/// confirm the spool still held what was being forwarded.
#[tokio::test]
async fn a_message_is_deleted_from_the_spool_only_after_the_broker_confirmed_it() {
    let s = setup(1 << 20).await;
    let spool = Spool::open(&s.cfg).await.expect("spool");
    *s.switch.spool.lock().unwrap_or_else(PoisonError::into_inner) =
        Some((spool.local().clone(), "q".into()));
    let gate = spool.gate("q", s.switch.clone()).await.expect("gate");
    for i in 0..5 {
        gate.spool(OutgoingMessage::new(format!("m{i}"), "x"), None).await.expect("spooled");
    }
    assert_eq!(gate.fill().0, 5);
    s.switch.set_down(false);
    until("every spooled message confirmed by the broker (one deleted before its confirm is lost)", || {
        s.switch.confirmed().len() == 5
    })
    .await;
    let held = s.switch.held_at_confirm.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert!(!held.is_empty() && held.iter().all(|&n| n > 0), "deleted before the broker confirmed: {held:?}");
    until("every forwarded message deleted from the spool", || gate.fill().0 == 0).await;
    let got = s.broker.stats("q").await.expect("stats").visible;
    assert_eq!(got, 5, "every spooled message is on the broker");
    assert!(!gate.broker_down(), "spooling stops once the spool is empty");
    spool.shutdown().await;
}

/// Per-key order across an outage: what a client sent before, during and
/// after it reaches the broker in send order, including a message sent
/// after the broker came back while the spool was still draining, and a
/// message the broker refused once.
#[tokio::test]
async fn per_key_order_holds_across_a_spool_episode() {
    let s = setup(1 << 20).await;
    let spool = Spool::open(&s.cfg).await.expect("spool");
    let gate = spool.gate("q", s.switch.clone()).await.expect("gate");
    let send = |m: OutgoingMessage| store(gate.clone(), s.switch.clone(), m);
    s.switch.set_down(false);
    send(keyed("k1", "a")).await.expect("direct");
    s.switch.set_down(true);
    for id in ["k2", "k3", "k4"] {
        send(keyed(id, "a")).await.expect("spooled");
    }
    assert!(gate.broker_down());
    // Back, but the spool is not empty yet: k5 must queue behind it.
    s.switch.set_down(false);
    send(keyed("k5", "a")).await.expect("stored");
    until("the spool drained", || gate.fill().0 == 0).await;
    send(keyed("k6", "a")).await.expect("direct again");
    let order = s.switch.confirmed();
    assert_eq!(order, ["k1", "k2", "k3", "k4", "k5", "k6"], "the broker got the key out of order");
    spool.shutdown().await;
}

/// Once the broker confirms forwards again, a message whose key has
/// nothing spooled goes straight to it while the spool drains; a key with
/// spooled messages stays behind them until they are forwarded.
#[tokio::test]
async fn after_the_broker_is_back_only_keys_with_spooled_messages_stay_behind_the_spool() {
    let s = setup(1 << 20).await;
    let spool = Spool::open(&s.cfg).await.expect("spool");
    let gate = spool.gate("q", s.switch.clone()).await.expect("gate");
    let send = |m: OutgoingMessage| store(gate.clone(), s.switch.clone(), m);
    for m in [keyed("a1", "a"), OutgoingMessage::new("u1", "x"), keyed("a2", "a")] {
        assert_eq!(send(m).await.expect("stored"), "spool");
    }
    assert!(gate.broker_down());
    // The broker is back, but key `a` (its partition, say) is not yet.
    *s.switch.refuse_key.lock().unwrap_or_else(PoisonError::into_inner) = Some("a".into());
    s.switch.set_down(false);
    until("the forwarder saw the broker confirm", || !gate.broker_down()).await;
    assert_eq!(gate.fill().0, 2, "a1 and a2 are still spooled");
    assert_eq!(send(OutgoingMessage::new("u2", "x")).await.expect("u2"), "broker", "no key: straight in");
    assert_eq!(
        send(keyed("b1", "b")).await.expect("b1"),
        "broker",
        "a key with nothing spooled: straight in"
    );
    assert!(
        gate.spools(&keyed("a3", "a")),
        "key `a` has spooled messages: a3 goes behind them, not to the broker"
    );
    assert_eq!(send(keyed("a3", "a")).await.expect("a3"), "spool");
    *s.switch.refuse_key.lock().unwrap_or_else(PoisonError::into_inner) = None;
    until("the spool drained", || gate.fill().0 == 0).await;
    let order = s.switch.confirmed();
    let of_a: Vec<&String> = order.iter().filter(|id| id.starts_with('a')).collect();
    assert_eq!(of_a, ["a1", "a2", "a3"], "key `a` out of order: {order:?}");
    assert!(
        !gate.spools(&keyed("a4", "a")),
        "key `a` goes straight in once its spooled messages are forwarded"
    );
    spool.shutdown().await;
}

/// A full spool refuses with a retryable error (503 with `Retry-After`),
/// and everything it accepted is forwarded.
#[tokio::test]
async fn a_full_spool_refuses_and_keeps_everything_it_accepted() {
    let s = setup(100).await;
    let spool = Spool::open(&s.cfg).await.expect("spool");
    let gate = spool.gate("q", s.switch.clone()).await.expect("gate");
    let mut accepted = 0;
    let refusal = loop {
        match gate.spool(OutgoingMessage::new(format!("m{accepted}"), "0123456789"), None).await {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "the spool never filled");
    };
    assert_eq!(accepted, 10, "100 bytes hold ten messages of 10 bytes");
    assert!(refusal.is_retryable() && refusal.to_string().contains("full"), "{refusal}");
    assert!(!gate.has_room());
    s.switch.set_down(false);
    until("the spool drained", || gate.fill() == (0, 0)).await;
    assert_eq!(s.broker.stats("q").await.expect("stats").visible, accepted);
    gate.spool(OutgoingMessage::new("after", "x"), None).await.expect("room again once drained");
    spool.shutdown().await;
}

/// A process that stops with messages in its spool: the next one forwards
/// them, and spools new messages behind them until it has.
#[tokio::test]
async fn a_restart_forwards_what_the_spool_kept() {
    let s = setup(1 << 20).await;
    {
        let spool = Spool::open(&s.cfg).await.expect("spool");
        let gate = spool.gate("q", s.switch.clone()).await.expect("gate");
        for id in ["r1", "r2", "r3"] {
            gate.spool(keyed(id, "k"), None).await.expect("spooled");
        }
        gate.spool(OutgoingMessage::new("u0", "x"), None).await.expect("spooled");
        spool.shutdown().await;
    }
    let spool = Spool::open(&s.cfg).await.expect("spool again");
    let gate = spool.gate("q", s.switch.clone()).await.expect("gate");
    assert_eq!(gate.fill().0, 4, "the spool's content is found again");
    assert!(gate.broker_down(), "new messages queue behind what an earlier run left");
    assert!(gate.spools(&OutgoingMessage::new("new", "x")));
    // The broker takes u0 but not key `k` yet: the key's spooled messages,
    // found again, still hold its new ones behind them.
    *s.switch.refuse_key.lock().unwrap_or_else(PoisonError::into_inner) = Some("k".into());
    s.switch.set_down(false);
    until("the forwarder saw the broker confirm", || !gate.broker_down()).await;
    assert!(gate.spools(&keyed("r4", "k")), "key `k` has spooled messages from the earlier run");
    assert!(!gate.spools(&keyed("z1", "z")));
    *s.switch.refuse_key.lock().unwrap_or_else(PoisonError::into_inner) = None;
    until("forwarded after the restart", || gate.fill().0 == 0).await;
    assert_eq!(s.switch.confirmed(), ["u0", "r1", "r2", "r3"]);
    // A dedup key travels through the spool and back to the broker.
    s.switch.set_down(true);
    let mut m = OutgoingMessage::new("d1", "x");
    m.dedup_key = Some("webhook-7".into());
    gate.spool(m, None).await.expect("spooled");
    s.switch.set_down(false);
    until("forwarded", || gate.fill().0 == 0).await;
    let c = s.broker.consumer("q").await.expect("consumer");
    let got = c.receive(10, Duration::from_millis(100)).await.expect("receive");
    assert!(got.iter().all(|d| !d.message.attributes.contains_key(super::DEDUP_ATTRIBUTE)), "{got:?}");
    spool.shutdown().await;
}

/// `on = "always"`: every message goes through the spool, broker up or
/// not, and is forwarded.
#[tokio::test]
async fn always_spools_every_message_and_forwards_it() {
    let mut s = setup(1 << 20).await;
    s.cfg.on = SpoolWhen::Always;
    s.switch.set_down(false);
    let spool = Spool::open(&s.cfg).await.expect("spool");
    let gate = spool.gate("q", s.switch.clone()).await.expect("gate");
    assert!(gate.spools(&OutgoingMessage::new("x", "x")), "always: the spool is the way in");
    gate.spool(OutgoingMessage::new("a1", "x"), None).await.expect("spooled");
    until("forwarded", || gate.fill().0 == 0).await;
    assert!(gate.spools(&OutgoingMessage::new("x", "x")), "still the way in with the spool empty");
    assert_eq!(s.switch.confirmed(), ["a1"]);
    spool.shutdown().await;
}

/// A broker that takes messages but slowly while the spool drains is
/// treated as down for a while: new messages spooled, whatever the
/// forwarder's confirms say, until the hold ends.
#[tokio::test]
async fn a_slow_broker_while_the_spool_drains_sends_new_messages_to_the_spool_for_a_while() {
    let s = setup(1 << 20).await;
    let spool = Spool::open(&s.cfg).await.expect("spool");
    // The broker refuses key `a`, so the spool keeps something to drain.
    *s.switch.refuse_key.lock().unwrap_or_else(PoisonError::into_inner) = Some("a".into());
    let gate = spool.gate("q", s.switch.clone()).await.expect("gate");
    gate.spool(keyed("a1", "a"), Some(&QueueError::unavailable_msg("down"))).await.expect("spooled");
    gate.spool(OutgoingMessage::new("u1", "x"), None).await.expect("spooled");
    s.switch.set_down(false);
    until("the forwarder saw the broker confirm", || !gate.broker_down()).await;
    let unkeyed = OutgoingMessage::new("u2", "x");
    assert!(!gate.spools(&unkeyed), "the broker is back: straight in");
    let t0 = std::time::Instant::now();
    gate.published_in_at(super::gate::SLOW / 2, t0);
    assert!(!gate.spools(&unkeyed), "a fast publish changes nothing");
    gate.published_in_at(super::gate::SLOW * 4, t0);
    assert!(gate.spools(&unkeyed), "a slow publish while the spool drains: spool again");
    gate.broker_took_at(t0 + super::gate::SLOW_HOLD / 2);
    assert!(gate.spools(&unkeyed), "a confirm within the hold does not end it");
    gate.broker_took_at(t0 + super::gate::SLOW_HOLD + Duration::from_millis(1));
    assert!(!gate.spools(&unkeyed), "after the hold, the next confirm sends messages straight in again");
    *s.switch.refuse_key.lock().unwrap_or_else(PoisonError::into_inner) = None;
    until("the spool drained", || gate.fill().0 == 0).await;
    gate.published_in_at(super::gate::SLOW * 4, t0 + super::gate::SLOW_HOLD * 2);
    assert!(
        !gate.spools(&unkeyed),
        "slow with nothing spooled: the broker's own latency, not the spool's doing"
    );
    spool.shutdown().await;
}
