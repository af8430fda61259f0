//! placeholder

pub mod console;
