//! placeholder

pub mod console;
pub mod exchange;
pub mod head;
