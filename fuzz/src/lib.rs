//! The fuzz targets of mvm, one for every parser of hostile input, and what
//! they share: a guest driver for the virtio-over-MMIO devices that does
//! what a hostile guest can do (any register access, any bytes in its
//! memory, notifications at any time), interpreted from the input.
//!
//! The bodies are in [`targets`]. `libfuzzer/` wraps each in a libFuzzer
//! binary (`make fuzz`, `make fuzz-smoke`); `tests/replay.rs` runs them
//! over their seeds, stored corpora and pseudo-random inputs in every
//! `make test`. `fuzz/README.md` says how to run one and what each covers.

pub mod fence;
pub mod mmio;
pub mod targets;
