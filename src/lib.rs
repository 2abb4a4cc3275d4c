//! RTDS: a real-time data server for industrial edge gateways.
//!
//! Data flows one way through the modules, and their names say so:
//!
//! 1. [`connector`]s poll sources (Modbus TCP PLCs), each in its own thread,
//!    and send [`model::Sample`]s to the central loop by channel.
//! 2. [`server`] is the central loop: it holds every tag's value, status and
//!    time stamp, and each cycle runs the due [`script`]s, sends the values
//!    scripts set on writable tags back to their connectors, and hands the
//!    cycle's samples to [`storage`].
//! 3. [`storage`] keeps the SQLite buffer the Historian reads, on its own
//!    thread so the cycle never waits for the disk.
//!
//! [`config`] turns the RON file into validated typed settings before any of
//! this starts; [`tag`] is a tag as written there; [`model`] is the plain
//! data they all exchange. [`commission`] is the command line's read and
//! write tools.

#![warn(missing_docs)]

pub mod commission;
pub mod config;
pub mod connector;
pub mod diagnostics;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod json;
pub mod located;
pub mod model;
pub mod output;
pub mod script;
pub mod server;
pub mod status;
pub mod storage;
pub mod tag;
#[cfg(test)]
mod testrand;
