//! Static membership and a heartbeat failure detector.
//!
//! Every member is named in the configuration. Each node sends every peer a heartbeat on
//! an interval; a peer is up while it has answered anything (a heartbeat or any other
//! RPC) within the failure timeout. It is a plain timeout detector, not phi-accrual: the
//! timeout is a config field, and coordinators never trust it for correctness (a write
//! counts acknowledgements, not beliefs), only to refuse early with `Unavailable` and to
//! skip peers that are likely gone.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use quorumkv_client::NodeId;
use tokio::time::Instant;

pub struct Membership {
    me: NodeId,
    failure_timeout: Duration,
    /// When each peer last answered; absent until it first does.
    last_heard: Mutex<BTreeMap<NodeId, Instant>>,
}

impl Membership {
    pub fn new(me: NodeId, failure_timeout: Duration) -> Self {
        Membership {
            me,
            failure_timeout,
            last_heard: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// This node is always up to itself; a peer is up if heard within the timeout.
    pub fn is_up(&self, node: &NodeId, now: Instant) -> bool {
        if *node == self.me {
            return true;
        }
        let last_heard = self.last_heard.lock().expect("membership lock");
        last_heard
            .get(node)
            .is_some_and(|heard| now.saturating_duration_since(*heard) < self.failure_timeout)
    }

    pub fn heard_from(&self, node: &NodeId, now: Instant) {
        if *node == self.me {
            return;
        }
        let mut last_heard = self.last_heard.lock().expect("membership lock");
        let entry = last_heard.entry(node.clone()).or_insert(now);
        if *entry < now {
            *entry = now;
        }
    }

    /// Marks a peer down at once, e.g. when dialling it was refused.
    pub fn lost(&self, node: &NodeId) {
        self.last_heard
            .lock()
            .expect("membership lock")
            .remove(node);
    }

    /// How many of `nodes` are up.
    pub fn count_up(&self, nodes: &[NodeId], now: Instant) -> usize {
        nodes.iter().filter(|node| self.is_up(node, now)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_down_once_silent_for_the_failure_timeout() {
        // Goal: liveness follows the last answer, and this node is always up to itself.
        let me = NodeId::from("n1");
        let peer = NodeId::from("n2");
        let membership = Membership::new(me.clone(), Duration::from_secs(2));
        let start = Instant::now();

        assert!(membership.is_up(&me, start));
        assert!(!membership.is_up(&peer, start), "unknown peers start down");

        membership.heard_from(&peer, start);
        assert!(membership.is_up(&peer, start + Duration::from_millis(1_999)));
        assert!(!membership.is_up(&peer, start + Duration::from_secs(2)));

        membership.heard_from(&peer, start + Duration::from_secs(3));
        assert!(membership.is_up(&peer, start + Duration::from_secs(4)));
        membership.lost(&peer);
        assert!(!membership.is_up(&peer, start + Duration::from_secs(4)));
    }
}
