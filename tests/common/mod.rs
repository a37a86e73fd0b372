//! Helpers shared by the integration tests. Each test binary uses a part of them, so unused
//! items in one binary are expected.
#![allow(dead_code)]

pub mod eskrun;
pub mod layers;
pub mod netns;
pub mod registry;
pub mod users;
