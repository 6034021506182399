//! What the fuzz targets share: a guest driver for the virtio-over-MMIO
//! devices that does what a hostile guest can do (any register access,
//! any bytes in its memory, notifications at any time), interpreted from
//! the fuzzer's input.
//!
//! The targets live in `fuzz_targets/`; `make fuzz` runs each for a while
//! and `make fuzz-smoke` (part of `make test`) for a few seconds, so they
//! keep building and trivial crashes are caught. `fuzz/README.md` says how
//! to run one and what each covers.

pub mod fence;
pub mod mmio;
