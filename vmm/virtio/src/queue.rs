//! Draining a virtqueue: the loop every device runs when its queue is
//! notified, written once so that each device only says what to do with one
//! descriptor chain.
//!
//! The ring is guest memory and the guest is hostile: the available index can
//! be garbage, heads can point past the table, and a vCPU can keep adding
//! chains forever. `virtio-queue` bounds each chain (at most queue-size
//! descriptors, 4 GiB total) and refuses an available index more than
//! queue-size ahead; this loop adds a bound on the work done per call and
//! never spins on a ring that makes no progress.

use tracing::warn;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::common::LogThrottle;
use crate::interrupt::Interrupt;

/// Rounds of "pop everything, re-enable notifications, look again" per call
/// before yielding to the event loop (so one busy queue cannot starve other
/// devices sharing the thread).
pub const MAX_ROUNDS: usize = 4;

/// What one [`drain_queue`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Chains put in the used ring.
    pub completed: usize,
    /// Whether the guest was interrupted.
    pub interrupted: bool,
    /// Whether work was left and the queue EventFd was re-armed.
    pub rescheduled: bool,
}

/// Processes every available chain of `queue` with `handle`, which returns
/// the number of bytes it wrote into the chain's device-writable buffers
/// (the used length). Interrupts the guest if the ring asks for it.
///
/// `queue_evt` is written when work is left after [`MAX_ROUNDS`] rounds, so
/// the event loop calls back later instead of this call running unbounded.
pub fn drain_queue<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    queue_evt: &EventFd,
    throttle: &mut LogThrottle,
    mut handle: F,
) -> DrainOutcome
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    let mut outcome = DrainOutcome::default();
    if !queue.ready() {
        return outcome;
    }
    let mut round = 0;
    loop {
        round += 1;
        if let Err(e) = queue.disable_notification(mem) {
            crate::common::throttled_warn(throttle, "virtio: cannot disable notifications", &e);
            break;
        }
        let mut popped = 0usize;
        // `iter` checks the available index once; it yields at most
        // queue-size heads.
        match queue.iter(mem) {
            Ok(iter) => {
                let chains: Vec<_> = iter.collect();
                for chain in chains {
                    popped += 1;
                    let head = chain.head_index();
                    let len = handle(chain);
                    match queue.add_used(mem, head, len) {
                        Ok(()) => outcome.completed += 1,
                        Err(e) => crate::common::throttled_warn(
                            throttle,
                            "virtio: cannot return a descriptor chain to the used ring",
                            &format_args!("head {head}: {e}"),
                        ),
                    }
                }
            }
            Err(e) => {
                crate::common::throttled_warn(throttle, "virtio: unusable available ring", &e);
                break;
            }
        }
        match queue.enable_notification(mem) {
            Ok(false) => break,
            // More arrived while notifications were off. Without progress
            // this round the index is bogus: stop rather than spin.
            Ok(true) if popped == 0 => break,
            Ok(true) if round >= MAX_ROUNDS => {
                outcome.rescheduled = queue_evt.write(1).is_ok();
                break;
            }
            Ok(true) => continue,
            Err(e) => {
                crate::common::throttled_warn(throttle, "virtio: cannot enable notifications", &e);
                break;
            }
        }
    }
    if outcome.completed > 0 {
        // On a memory error reading used_event, interrupt anyway: a spurious
        // interrupt is harmless, a missing one hangs the driver.
        let needed = queue.needs_notification(mem).unwrap_or(true);
        if needed {
            match interrupt.signal_used_queue() {
                Ok(()) => outcome.interrupted = true,
                Err(e) => warn!("virtio: {e}"),
            }
        }
    }
    outcome
}

/// Puts `entries` (head index, used length) in the used ring and makes them
/// visible to the driver with **one** index update, and tells whether the
/// driver asked to be interrupted for them.
///
/// `virtio-queue`'s `add_used` publishes each element on its own. That is
/// wrong for a virtio-net frame spread over several mergeable receive
/// buffers: the driver reads `num_buffers` from the first one and expects
/// the rest to be there already (Linux counts a missing one as a length
/// error and drops the frame). So the elements are written first and the
/// index is stored once, with release ordering, after them.
///
/// The interrupt decision is made here too (`add_used`'s bookkeeping for
/// `needs_notification` is private to the queue): with `EVENT_IDX`, the
/// driver is interrupted iff its `used_event` lies in the range just
/// published (Linux's `vring_need_event`); without it, always. Heads at or
/// past the queue size are refused before anything is written.
pub fn publish_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    entries: &[(u16, u32)],
) -> Result<bool, PublishError> {
    use std::sync::atomic::{fence, Ordering};
    use vm_memory::{Bytes, GuestAddress};
    if entries.is_empty() {
        return Ok(false);
    }
    let size = queue.size();
    if size == 0 {
        return Err(PublishError::NotReady);
    }
    if let Some(&(head, _)) = entries.iter().find(|(h, _)| *h >= size) {
        return Err(PublishError::BadHead(head));
    }
    let used = queue.used_ring();
    let old = queue.next_used();
    let mut idx = old;
    for &(head, len) in entries {
        let slot = u64::from(idx % size);
        let at = used.checked_add(4 + 8 * slot).ok_or(PublishError::Memory)?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, GuestAddress(at))
            .map_err(|_| PublishError::Memory)?;
        idx = idx.wrapping_add(1);
    }
    let idx_addr = used.checked_add(2).ok_or(PublishError::Memory)?;
    mem.store(idx.to_le(), GuestAddress(idx_addr), Ordering::Release)
        .map_err(|_| PublishError::Memory)?;
    queue.set_next_used(idx);
    if !queue.event_idx_enabled() {
        return Ok(true);
    }
    // The index store must be visible before used_event is read, or an
    // update of it by the driver in between could be missed.
    fence(Ordering::SeqCst);
    let event_addr = queue
        .avail_ring()
        .checked_add(4 + 2 * u64::from(size))
        .ok_or(PublishError::Memory)?;
    let used_event = match mem.load::<u16>(GuestAddress(event_addr), Ordering::Acquire) {
        Ok(v) => u16::from_le(v),
        // Interrupt anyway: a spurious interrupt is harmless.
        Err(_) => return Ok(true),
    };
    Ok(idx.wrapping_sub(used_event).wrapping_sub(1) < idx.wrapping_sub(old))
}

/// Why [`publish_used`] could not publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The queue has no size (not configured).
    #[error("the queue is not configured")]
    NotReady,
    /// A head index is not in the descriptor table.
    #[error("head index {0} is outside the descriptor table")]
    BadHead(u16),
    /// The used ring is not in guest memory.
    #[error("the used ring is outside guest memory")]
    Memory,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{GuestQueue, WRITE};
    use vm_memory::GuestAddress;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn completes_every_chain_and_interrupts_once() {
        let mem = mem();
        let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 8);
        let mut q = gq.queue();
        for i in 0..3u64 {
            gq.add_chain(&[(0x8000 + i * 0x100, 0x10, WRITE)]);
        }
        let irq = Interrupt::new().unwrap();
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut t = LogThrottle::default();
        let mut seen = Vec::new();
        let out = drain_queue(&mut q, &mem, &irq, &evt, &mut t, |c| {
            seen.push(c.head_index());
            7
        });
        assert_eq!(out.completed, 3);
        assert!(out.interrupted);
        assert_eq!(seen, vec![0, 1, 2]);
        assert_eq!(gq.used_idx(), 3);
        for i in 0..3 {
            assert_eq!(gq.used_elem(i), (i as u32, 7));
        }
        assert_eq!(irq.evt().read().unwrap(), 1);
    }

    #[test]
    fn bogus_avail_index_is_refused_without_spinning() {
        let mem = mem();
        let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 8);
        let mut q = gq.queue();
        // 200 entries "available" in an 8-entry ring.
        gq.set_avail_idx(200);
        let irq = Interrupt::new().unwrap();
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut t = LogThrottle::default();
        let out = drain_queue(&mut q, &mem, &irq, &evt, &mut t, |_| 0);
        assert_eq!(out.completed, 0);
        assert!(!out.interrupted);
        assert_eq!(t.count(), 1);
    }

    #[test]
    fn head_index_past_the_table_is_not_completed() {
        let mem = mem();
        let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 8);
        let mut q = gq.queue();
        gq.push_avail(1000);
        let irq = Interrupt::new().unwrap();
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut t = LogThrottle::default();
        let mut descs = 0;
        let out = drain_queue(&mut q, &mem, &irq, &evt, &mut t, |c| {
            descs += c.count();
            0
        });
        assert_eq!(descs, 0, "a head past the table yields no descriptor");
        assert_eq!(out.completed, 0);
        assert_eq!(gq.used_idx(), 0);
    }

    #[test]
    fn endless_producer_is_cut_off_and_rescheduled() {
        let mem = mem();
        let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 8);
        let mut q = gq.queue();
        gq.add_chain(&[(0x8000, 0x10, WRITE)]);
        let irq = Interrupt::new().unwrap();
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut t = LogThrottle::default();
        // A vCPU that adds a new chain for every one completed.
        let out = drain_queue(&mut q, &mem, &irq, &evt, &mut t, |_| {
            gq.add_chain(&[(0x8000, 0x10, WRITE)]);
            0
        });
        assert_eq!(out.completed, MAX_ROUNDS, "one chain per round");
        assert!(out.rescheduled);
        assert!(out.interrupted);
        assert_eq!(evt.read().unwrap(), 1, "the event loop will come back");
    }

    #[test]
    fn not_ready_queue_is_left_alone() {
        let mem = mem();
        let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 8);
        let mut q = gq.queue();
        q.set_ready(false);
        gq.add_chain(&[(0x8000, 0x10, WRITE)]);
        let irq = Interrupt::new().unwrap();
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut t = LogThrottle::default();
        let out = drain_queue(&mut q, &mem, &irq, &evt, &mut t, |_| 0);
        assert_eq!(out, DrainOutcome::default());
    }

    #[test]
    fn event_idx_suppresses_interrupts_the_driver_did_not_ask_for() {
        let mem = mem();
        let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 8);
        let mut q = gq.queue();
        q.set_event_idx(true);
        // The driver wants an interrupt only once used idx passes 2.
        gq.set_used_event(2);
        gq.add_chain(&[(0x8000, 0x10, WRITE)]);
        let irq = Interrupt::new().unwrap();
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut t = LogThrottle::default();
        let out = drain_queue(&mut q, &mem, &irq, &evt, &mut t, |_| 1);
        assert_eq!(out.completed, 1);
        assert!(!out.interrupted, "used idx 1 has not passed used_event 2");
        gq.add_chain(&[(0x8000, 0x10, WRITE)]);
        gq.add_chain(&[(0x8000, 0x10, WRITE)]);
        let out = drain_queue(&mut q, &mem, &irq, &evt, &mut t, |_| 1);
        assert_eq!(out.completed, 2);
        assert!(out.interrupted, "used idx 3 passed used_event 2");
        // The device published avail_event = next_avail for the driver.
        assert_eq!(gq.avail_event(), 3);
    }

    #[test]
    fn publish_used_writes_all_elements_then_the_index_once() {
        let mem = mem();
        let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 8);
        let mut q = gq.queue();
        let notify = publish_used(&mut q, &mem, &[(3, 100), (5, 200), (1, 7)]).unwrap();
        assert!(notify, "no EVENT_IDX: always interrupt");
        assert_eq!(gq.used_idx(), 3);
        assert_eq!(gq.used_elem(0), (3, 100));
        assert_eq!(gq.used_elem(1), (5, 200));
        assert_eq!(gq.used_elem(2), (1, 7));
        assert_eq!(q.next_used(), 3);
        // Wraps around the ring.
        for _ in 0..3 {
            publish_used(&mut q, &mem, &[(0, 1), (1, 1), (2, 1)]).unwrap();
        }
        assert_eq!(gq.used_idx(), 12);
        assert_eq!(gq.used_elem(11), (2, 1));
    }

    #[test]
    fn publish_used_refuses_bad_heads_without_writing() {
        let mem = mem();
        let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 8);
        let mut q = gq.queue();
        let e = publish_used(&mut q, &mem, &[(1, 1), (8, 1)]).unwrap_err();
        assert_eq!(e, PublishError::BadHead(8));
        assert_eq!(gq.used_idx(), 0);
        assert_eq!(q.next_used(), 0);
        assert!(!publish_used(&mut q, &mem, &[]).unwrap());
    }

    #[test]
    fn publish_used_honours_used_event() {
        let mem = mem();
        let gq = GuestQueue::new(&mem, GuestAddress(0x1000), 8);
        let mut q = gq.queue();
        q.set_event_idx(true);
        gq.set_used_event(2);
        // idx 0 -> 2: used_event 2 not passed (needs idx 3).
        assert!(!publish_used(&mut q, &mem, &[(0, 1), (1, 1)]).unwrap());
        // idx 2 -> 4: passes 2.
        assert!(publish_used(&mut q, &mem, &[(2, 1), (3, 1)]).unwrap());
        // idx 4 -> 5: already past, no new interrupt.
        assert!(!publish_used(&mut q, &mem, &[(4, 1)]).unwrap());
    }
}
