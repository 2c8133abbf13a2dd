//! ferrotron: runs test tasks in disposable virtual machines. See ARCHITECTURE.md for the map.

pub mod access;
pub mod base_image;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod compare;
pub mod config;
pub mod guest;
pub mod image;
pub mod junit;
pub mod metrics;
pub mod outcome;
pub mod provider;
pub mod reaper;
pub mod results;
pub mod retention;
pub mod runner;
pub mod scheduler;
pub mod serve;
pub mod store;
pub mod task;
pub mod trigger;
pub mod util;
pub mod web;
