//! Fake upstreams of the supported platforms, for tests, benchmarks and the demo.

pub mod faults;
pub mod serve;
pub mod tangsengdaodao;
pub mod text;
pub mod yunhu;
pub mod yunxin;
