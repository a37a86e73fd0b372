//! eskrun: pull OCI images into a verified, content-addressed rootfs cache and run them
//! rootless through youki's libcontainer.
//!
//! The modules follow the data: [`reference`] -> [`registry`] -> [`store`] (the rootfs
//! cache) -> [`unpack`] -> [`spec`] -> [`runtime`]. [`pull`] drives the first four; the
//! [`cli`] layer only parses arguments and calls them. ARCHITECTURE.md explains the
//! whole design.

pub mod cli;
pub mod config;
pub mod digest;
pub mod dirs;
pub mod network;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod runtime;
pub mod spec;
pub mod store;
pub mod unpack;
