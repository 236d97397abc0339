//! The integration tests, one binary (linking the crate and starting a PostgreSQL
//! cluster once, not once per file): each module is what one file tested before, against
//! real parts: a throwaway PostgreSQL cluster (`common::store`), the fake upstreams over
//! real HTTP, the `chatvault` binary, and headless Chromium for the browser tests.

mod common;

mod access_log;
mod api;
mod as_of;
mod attachments;
mod attachments_e2e;
mod attachments_export;
mod attachments_tsdd;
mod attachments_web;
mod attachments_yunhu;
mod attachments_yunxin;
mod blob_s3;
mod browser;
mod charts;
mod cli;
mod completions;
mod coverage;
mod daemon;
mod demo;
mod doctor;
mod ediscovery;
mod files;
mod heads;
mod monitoring;
mod pg;
mod realtime;
mod retention;
mod runs;
mod search;
mod search_api;
mod search_cli;
mod security;
mod sim_tangsengdaodao;
mod sim_yunhu;
mod sim_yunxin;
mod store;
mod tsdd_failures;
mod tsdd_push;
mod tsdd_sync;
mod upstream_proof;
mod web;
mod yunhu_failures;
mod yunhu_push;
mod yunhu_sync;
mod yunxin_failures;
mod yunxin_sync;
