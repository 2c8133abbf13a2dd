//! ferrotron: runs test tasks in disposable virtual machines. See ARCHITECTURE.md for the map.

pub mod outcome;
pub mod results;
pub mod task;
