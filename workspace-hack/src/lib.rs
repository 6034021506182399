//! Intentionally empty: this package exists for its `Cargo.toml`, whose
//! dependencies' features make every workspace build resolve the same
//! features as the end-to-end tests' build (see that file for why).
