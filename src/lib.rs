//! stalld: finds tasks starving on a CPU's run queue and boosts them briefly.
//! The library holds every module so that tests reach them; `main.rs` is a thin wrapper.

pub mod backend;
pub mod boost;
pub mod boost_budget;
pub mod cli;
pub mod config;
pub mod cpuset;
pub mod daemon;
pub mod detect;
pub mod handover;
pub mod ignore;
pub mod journal;
pub mod log;
pub mod monitor;
pub mod protect;
pub mod selftest;
pub mod sys;
pub mod task;
pub mod throttlectl;
