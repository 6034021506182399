//! x86_64 specifics: the guest memory layout and everything that puts a
//! vCPU into the state the Linux PVH entry expects.

pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod pvh;
pub mod regs;
