//! Fake upstreams of the supported platforms, for tests, benchmarks and the demo.

pub mod faults;
mod serve;
pub mod tangsengdaodao;
pub mod text;
pub mod yunhu;
pub mod yunxin;
