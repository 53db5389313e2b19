//! The Python binding: the only module that knows about PyO3. It converts arguments, calls the
//! plain-Rust core and turns its errors into Python exceptions (`errors.rs`).

pub mod actor;
pub mod convert;
pub mod costmap;
pub mod errors;
pub mod meter;
pub mod persistence;
pub mod service;
