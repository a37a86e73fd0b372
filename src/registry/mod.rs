//! The registry client.
