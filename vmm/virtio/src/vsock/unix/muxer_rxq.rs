//! What the muxer owes the guest, in order: connections with something to
//! send, and RSTs that belong to no connection.
//!
//! Each connection is queued at most once (its pending packets are flags on
//! the connection), so this queue is bounded by the connection cap. Stray
//! RSTs are queued once per `(local, peer)` pair and at most
//! [`MAX_PENDING_RSTS`] of them: past that they are dropped, never waited
//! for (see [`MuxerRxQ::push_rst`]). Taking turns in FIFO order keeps one
//! busy connection from starving the others.

use std::collections::{HashSet, VecDeque};

use crate::vsock::MAX_PENDING_RSTS;

/// `(local port, peer port)`.
pub type ConnKey = (u32, u32);

/// The muxer's rx queue.
#[derive(Debug, Default)]
pub struct MuxerRxQ {
    conns: VecDeque<ConnKey>,
    queued: HashSet<ConnKey>,
    rsts: VecDeque<ConnKey>,
    rsts_queued: HashSet<ConnKey>,
}

impl MuxerRxQ {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `key` unless it is queued already.
    pub fn push_conn(&mut self, key: ConnKey) {
        if self.queued.insert(key) {
            self.conns.push_back(key);
        }
    }

    /// The next connection to serve.
    pub fn pop_conn(&mut self) -> Option<ConnKey> {
        let key = self.conns.pop_front()?;
        self.queued.remove(&key);
        Some(key)
    }

    /// Queues a RST for a connection the muxer does not know, unless one for
    /// the same pair is queued already. Returns false, and queues nothing,
    /// when the RST queue is full: the RST is dropped.
    ///
    /// Dropping is deliberate. These RSTs can only leave through the guest's
    /// rx buffers, and Linux's driver stops handing out rx buffers while its
    /// own replies wait for the tx queue; waiting for room here (holding the
    /// tx queue) is a circular wait that freezes every connection. A lost
    /// RST costs only its guest socket a timeout.
    pub fn push_rst(&mut self, key: ConnKey) -> bool {
        if self.rsts_queued.contains(&key) {
            return true;
        }
        if self.rsts.len() >= MAX_PENDING_RSTS {
            return false;
        }
        self.rsts_queued.insert(key);
        self.rsts.push_back(key);
        true
    }

    /// The next stray RST.
    pub fn pop_rst(&mut self) -> Option<ConnKey> {
        let key = self.rsts.pop_front()?;
        self.rsts_queued.remove(&key);
        Some(key)
    }

    /// Stray RSTs queued.
    pub fn rst_len(&self) -> usize {
        self.rsts.len()
    }

    /// Whether anything is queued (connections may turn out to have
    /// nothing after all).
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.rsts.is_empty()
    }

    /// Connections queued.
    pub fn conn_len(&self) -> usize {
        self.conns.len()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.conns.clear();
        self.queued.clear();
        self.rsts.clear();
        self.rsts_queued.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_queued_once_in_fifo_order() {
        let mut q = MuxerRxQ::new();
        q.push_conn((1, 10));
        q.push_conn((2, 20));
        q.push_conn((1, 10));
        assert_eq!(q.conn_len(), 2);
        assert_eq!(q.pop_conn(), Some((1, 10)));
        q.push_conn((1, 10));
        assert_eq!(q.pop_conn(), Some((2, 20)));
        assert_eq!(q.pop_conn(), Some((1, 10)));
        assert_eq!(q.pop_conn(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn stray_rsts_are_bounded_and_queued_once_per_pair() {
        let mut q = MuxerRxQ::new();
        for i in 0..MAX_PENDING_RSTS as u32 {
            assert!(q.push_rst((i, i)));
            assert!(q.push_rst((i, i)), "a duplicate is not a drop");
        }
        assert_eq!(q.rst_len(), MAX_PENDING_RSTS);
        assert!(!q.push_rst((9999, 9999)), "dropped when full");
        assert_eq!(q.rst_len(), MAX_PENDING_RSTS);
        assert_eq!(q.pop_rst(), Some((0, 0)));
        assert!(q.push_rst((0, 0)), "popped pairs may be queued again");
        assert!(!q.push_rst((9999, 9999)));
        q.clear();
        assert!(q.is_empty());
        assert!(q.push_rst((1, 1)));
    }
}
