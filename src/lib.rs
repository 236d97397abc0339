//! chatvault: a complete, append-only, searchable archive of chat accounts in PostgreSQL.
//!
//! See `ARCHITECTURE.md` for the data flow and the invariants, and which module keeps each.

pub mod attachments;
pub mod commands;
pub mod config;
pub mod connector;
pub mod files;
pub mod http;
pub mod index;
pub mod integrity;
pub mod mail;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod pg;
pub mod push;
pub mod realtime;
pub mod retention;
pub mod scheduler;
pub mod sim;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod terminal;
pub mod upstream_proof;
