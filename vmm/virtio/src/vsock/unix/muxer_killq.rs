//! Deadlines: connections waiting for the guest's answer or for their last
//! bytes to drain, and host clients that have not sent `CONNECT` yet.
//!
//! A min-heap of `(deadline, what)`. Entries are not removed when a
//! deadline changes or its owner goes away; the muxer checks each expired
//! entry against its owner's current deadline and skips stale ones. The heap
//! is rebuilt when stale entries pile up, so it stays bounded by a small
//! multiple of the connection cap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::RawFd;
use std::time::Instant;

use super::muxer_rxq::ConnKey;

/// What a deadline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKey {
    /// A connection.
    Conn(ConnKey),
    /// A host client that has not finished its `CONNECT` line.
    Handshake(RawFd),
    /// The listening socket, paused after running out of descriptors.
    Listener,
}

/// The deadline heap.
#[derive(Debug, Default)]
pub struct KillQ {
    heap: BinaryHeap<Reverse<(Instant, TimerKey)>>,
}

impl KillQ {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a deadline.
    pub fn push(&mut self, when: Instant, key: TimerKey) {
        self.heap.push(Reverse((when, key)));
    }

    /// The earliest deadline (possibly stale).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Removes and returns every entry due at `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Vec<(Instant, TimerKey)> {
        let mut out = Vec::new();
        while let Some(Reverse((t, _))) = self.heap.peek() {
            if *t > now {
                break;
            }
            if let Some(Reverse(e)) = self.heap.pop() {
                out.push(e);
            }
        }
        out
    }

    /// Entries, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Replaces the contents with `live` (the owners' current deadlines).
    pub fn rebuild(&mut self, live: impl IntoIterator<Item = (Instant, TimerKey)>) {
        self.heap = live.into_iter().map(Reverse).collect();
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.heap.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expires_in_deadline_order() {
        let t0 = Instant::now();
        let mut q = KillQ::new();
        q.push(t0 + Duration::from_secs(3), TimerKey::Conn((1, 1)));
        q.push(t0 + Duration::from_secs(1), TimerKey::Handshake(7));
        q.push(t0 + Duration::from_secs(2), TimerKey::Listener);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(1)));
        let due = q.pop_expired(t0 + Duration::from_secs(2));
        assert_eq!(
            due.iter().map(|e| e.1).collect::<Vec<_>>(),
            vec![TimerKey::Handshake(7), TimerKey::Listener]
        );
        assert_eq!(q.len(), 1);
        q.rebuild([]);
        assert!(q.is_empty());
    }
}
