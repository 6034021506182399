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
}
